//! The blue round: the attacked probe retrained on its training data plus the red round's
//! successful evasions (adversarial training), each attack's evasions weighing as much as an
//! average attack family of the data; its threshold recalibrated on benign texts the scoring
//! probe never saw; and a deployment file written that serves it. It never reads the held-out
//! set: the caller commits that to the audit log before this runs and reveals it after.
//!
//! A probe of a hook's activations ([`defend`]) learns the evasions as attack texts; a sentence
//! probe ([`defend_sentences`]) gains one head, `evasion`, trained on them against the benign
//! texts and sentences, beside its heads per kind of attack (all retrained).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use glassbox_analysis::redteam::Attack;
use glassbox_dictionary::probe::{
    self, mean_rows, Aggregation, Calibration, Probe, ProbeTraining, Sample,
};
use glassbox_dictionary::roc::{Scored, Summary};
use glassbox_dictionary::sentence_probe::{self, Example, SentenceProbe};
use glassbox_model::{Model, Reader};
use glassbox_serve::config::Config;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::commands::families::{sentence_readings, Background, BenignSplit};
use crate::commands::probe::Labelled;

/// The weight, in texts, that each attack's evasions carry together. A handful of evasions of a
/// new kind of attack would vanish among thousands of attack texts (61 of 3,500 move the
/// shipped probe hardly at all), so they weigh as much as an average attack family of the data;
/// but never, all attacks together, more than the data's own attacks (data of one family would
/// otherwise let each attack's evasions outweigh all of it).
fn evasion_weight(attack_texts: usize, attack_families: usize, attacks: usize) -> f32 {
    let family = attack_texts as f32 / attack_families.max(1) as f32;
    family.min(attack_texts as f32 / attacks.max(1) as f32)
}

/// What the blue round trained on and produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Defence {
    pub probe: PathBuf,
    pub deploy: PathBuf,
    pub rule: String,
    pub training_texts: usize,
    pub evasions_added: usize,
    /// The weight, in texts, that each attack's evasions carry together: the mean size of the
    /// data's attack families, or less where the evasions would outweigh all its attacks.
    pub evasion_family_weight: f32,
    /// Texts left out because they are (or repeat) held-out payloads or round benign texts.
    pub excluded: usize,
    pub threshold: f32,
    /// The threshold's false-positive rate on the held-out benign texts it was set on.
    pub calibration_fpr: f64,
    /// How those benign texts were held out: by "family" or by "random part".
    pub calibrated_by: &'static str,
}

/// What a blue round works from: the deployment, the monitor and probe it defends, the data,
/// the texts it must not train on (by SHA-256), the red round's evasions, and where it writes.
pub struct Inputs<'a> {
    pub cfg: &'a Config,
    pub monitor: &'a str,
    pub probe_name: &'a str,
    pub data: &'a [Labelled],
    pub withheld: &'a HashSet<[u8; 32]>,
    pub evasions: &'a [(Attack, &'a str)],
    pub out: &'a Path,
}

/// Retrains the probe of `inputs`, a probe of a hook's activations read by `model` at most
/// `max_tokens` at a time (see the module documentation).
pub fn defend(model: &Model, inputs: &Inputs, max_tokens: usize) -> Result<Defence> {
    let old = Probe::load(&probe_path(inputs)?)?;
    if old.dictionary.is_some() {
        bail!(
            "probe `{}` reads a dictionary's latents; the blue round retrains probes on a hook's activations (defend a monitor whose probe reads the hook itself)",
            inputs.probe_name
        );
    }
    let aggregation = old
        .calibration
        .as_ref()
        .map_or(Aggregation::MeanLogit, |c| c.aggregation);
    let target_fpr = old.calibration.as_ref().map_or(0.01, |c| c.target_fpr);
    // The served monitor reads at most `max_tokens` of a prompt; training reads the same.
    let reader = Reader::new(model, &old.hook)?.passes(Some(max_tokens), true);
    let d = model.config.d_model;
    let set = TrainingSet::new(inputs)?;
    let texts = &set.texts;
    let folds = calibration_folds(texts)?;
    let bar = crate::report::progress(texts.len() as u64, "blue: reading training texts");
    let mut acts = Vec::with_capacity(texts.len());
    let mut training = Vec::with_capacity(texts.len());
    for t in texts {
        let x = reader.activations(t.text)?;
        // Trained per text on the mean activation (a pooled probe) or per token on a sample
        // of each text's tokens, the span's tokens its only positives where one is known.
        let mut sample = if aggregation == Aggregation::MeanLogit {
            Sample::new(mean_rows(&x, d), t.label)
        } else {
            let labels = match t.span {
                Some(s) if t.label => Some(reader.span_labels(t.text, s)?)
                    .filter(|l| l.iter().any(|&v| v) && l.len() * d == x.len()),
                _ => None,
            };
            Sample::subsampled(&x, d, t.label, labels.as_deref(), 32)
        };
        sample.weight = t.weight;
        training.push(sample);
        acts.push(x);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let cfg_train = ProbeTraining::default();
    let fitted = |keep: &(dyn Fn(usize) -> bool + Sync)| {
        let refs: Vec<&Sample> = (0..training.len())
            .filter(|&i| keep(i))
            .map(|i| &training[i])
            .collect();
        let (weights, bias) = probe::fit(&refs, d, &cfg_train);
        Probe {
            weights,
            bias,
            metrics: None,
            calibration: None,
            ..old.clone()
        }
    };
    let read =
        |p: &Probe, i: usize| aggregation.of(&p.text_scores(&acts[i], window_of(aggregation)));
    let (mut new, cut) = train_and_calibrate(texts, &folds, target_fpr, fitted, read)?;
    let calibration = set.calibration(aggregation, &cut, target_fpr, &folds);
    new.calibration = Some(calibration.clone());
    let dir = inputs.out.join("defended-probe");
    new.save(&dir)?;
    let file = dir.join(probe::FILE);
    set.defence(inputs, &calibration, folds.by, file)
}

/// Retrains the sentence probe of `inputs`, read by `embedder`: its heads per kind of attack
/// on the data, and a head `evasion` on the red round's evasions (see the module documentation).
pub fn defend_sentences(embedder: &Model, inputs: &Inputs) -> Result<Defence> {
    let old = SentenceProbe::load(&probe_path(inputs)?)?;
    let target_fpr = old.calibration.as_ref().map_or(0.01, |c| c.target_fpr);
    let set = TrainingSet::new(inputs)?;
    let texts = &set.texts;
    let folds = calibration_folds(texts)?;
    let spans: Vec<_> = texts
        .iter()
        .map(|t| (t.text, t.span.filter(|_| t.label)))
        .collect();
    let readings = sentence_readings(
        embedder,
        &spans,
        "the blue round's training texts",
        "blue: embedding training texts",
    )?;
    // The background prose the probe was trained on, if any, stays among the negatives.
    let background = match &old.background {
        Some(source) => Background::again(embedder, source)?,
        None => Background::default(),
    };
    let cfg_train = ProbeTraining::default();
    let fitted = |keep: &(dyn Fn(usize) -> bool + Sync)| {
        let examples: Vec<Example> = (0..texts.len())
            .filter(|&i| keep(i))
            .map(|i| Example {
                reading: &readings[i],
                label: texts[i].label,
                kind: texts[i].kind,
                weight: texts[i].weight,
            })
            .chain(background.texts.iter().map(|b| Example::benign(&b.reading)))
            .collect();
        let new = SentenceProbe {
            heads: sentence_probe::fit_heads(
                &examples,
                &cfg_train,
                old.penalty.unwrap_or(sentence_probe::L2),
                old.whole_only_if_fits,
            ),
            calibration: None,
            piece_scale: None,
            ..old.clone()
        };
        // A discounted probe's tail scale is estimated anew on the benign texts it trained on.
        let benign = examples.iter().filter(|e| !e.label).map(|e| e.reading);
        SentenceProbe {
            piece_scale: old.piece_scale.and_then(|_| new.tail_scale(benign)),
            ..new
        }
    };
    let read = |p: &SentenceProbe, i: usize| readings[i].score(p);
    let (mut new, cut) = train_and_calibrate(texts, &folds, target_fpr, fitted, read)?;
    let calibration = set.calibration(Aggregation::Sentences, &cut, target_fpr, &folds);
    new.calibration = Some(calibration.clone());
    let dir = inputs.out.join("defended-probe");
    new.save(&dir)?;
    let file = dir.join(sentence_probe::FILE);
    set.defence(inputs, &calibration, folds.by, file)
}

/// The path of the defended probe.
fn probe_path(inputs: &Inputs) -> Result<PathBuf> {
    let name = inputs.probe_name;
    inputs
        .cfg
        .probes
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.path.clone())
        .with_context(|| format!("no [[probe]] `{name}`"))
}

/// The detector trained on every text, and the operating point its threshold takes from benign
/// texts scored by detectors that never saw them, each fold held out in turn, as `probe
/// families` calibrates the probe it ships: an in-sample threshold sits among scores the
/// detector was fitted to push down, and lets more false alarms through on new traffic. Attack
/// texts are read by the final detector (in-sample).
fn train_and_calibrate<P: Sync>(
    texts: &[Training],
    folds: &Folds,
    target_fpr: f64,
    fitted: impl Fn(&(dyn Fn(usize) -> bool + Sync)) -> P + Sync,
    read: impl Fn(&P, usize) -> f32 + Sync,
) -> Result<(P, Summary)> {
    let bar = crate::report::progress(
        folds.members.len() as u64 + 1,
        "blue: training (the detector, then one per calibration fold)",
    );
    let new = fitted(&|_| true);
    bar.inc(1);
    let mut scores: Vec<f32> = (0..texts.len()).map(|i| read(&new, i)).collect();
    let held_out: Vec<Vec<(usize, f32)>> = folds
        .members
        .par_iter()
        .map(|members| {
            let keep = trained_without(texts, members);
            let p = fitted(&|i| keep[i]);
            bar.inc(1);
            members.iter().map(|&i| (i, read(&p, i))).collect()
        })
        .collect();
    bar.finish_and_clear();
    for (i, s) in held_out.into_iter().flatten() {
        scores[i] = s;
    }
    let labels: Vec<bool> = texts.iter().map(|t| t.label).collect();
    Ok((
        new,
        Summary::of(&Scored::new(&scores, &labels)?, target_fpr),
    ))
}

/// What the blue round trains on: the data but the withheld texts, and the evasions.
struct TrainingSet<'a> {
    texts: Vec<Training<'a>>,
    evasions: usize,
    /// The weight, in texts, of each attack's evasions together.
    family_weight: f32,
    excluded: usize,
}

impl<'a> TrainingSet<'a> {
    fn new(inputs: &Inputs<'a>) -> Result<Self> {
        let (data, withheld, evasions) = (inputs.data, inputs.withheld, inputs.evasions);
        let hash = |t: &str| -> [u8; 32] { Sha256::digest(t.as_bytes()).into() };
        let mut texts: Vec<Training> = Vec::new();
        let mut excluded = 0;
        for l in data {
            let h = hash(&l.text);
            if withheld.contains(&h) {
                excluded += 1;
            } else {
                texts.push(Training {
                    text: &l.text,
                    hash: h,
                    label: l.label,
                    family: &l.family,
                    kind: if l.label {
                        l.kind.as_deref().unwrap_or("attack")
                    } else {
                        "benign"
                    },
                    span: l.span,
                    weight: 1.0,
                });
            }
        }
        let attack_families: HashSet<&str> =
            texts.iter().filter(|t| t.label).map(|t| t.family).collect();
        let mut per_attack: BTreeMap<Attack, usize> = BTreeMap::new();
        for (attack, _) in evasions {
            *per_attack.entry(*attack).or_default() += 1;
        }
        let family_weight = evasion_weight(
            texts.iter().filter(|t| t.label).count(),
            attack_families.len(),
            per_attack.len(),
        );
        texts.extend(evasions.iter().map(|&(attack, text)| Training {
            text,
            hash: hash(text),
            label: true,
            family: attack.name(),
            kind: EVASION,
            span: None,
            weight: family_weight / per_attack[&attack] as f32,
        }));
        if !texts.iter().any(|t| !t.label) || !texts.iter().any(|t| t.label) {
            bail!(
                "the blue round has no {} text left to train on: the round's own texts are withheld from training (lower the suite's `benign` or `payloads`, or add data)",
                if texts.iter().any(|t| t.label) { "benign" } else { "attack" }
            );
        }
        Ok(Self {
            texts,
            evasions: evasions.len(),
            family_weight,
            excluded,
        })
    }

    fn calibration(
        &self,
        aggregation: Aggregation,
        cut: &Summary,
        target_fpr: f64,
        folds: &Folds,
    ) -> Calibration {
        Calibration {
            aggregation,
            threshold: cut.threshold,
            target_fpr,
            fpr: cut.fpr,
            tpr: cut.tpr,
            data: format!(
                "the red-team data's training families plus the red round's evasions; threshold on benign texts held out by {} ({} folds), TPR in-sample",
                folds.by,
                folds.members.len()
            ),
            data_sha256: String::new(),
            positives: cut.positives,
            negatives: cut.negatives,
            // The keyword monitor, if any, stays in the deployment beside the probe's rule.
            or_keywords: false,
        }
    }

    /// Writes `OUT/deploy.defended.toml`: the deployment with the probe read from `file`'s
    /// directory and the monitor on its new rule.
    fn defence(
        &self,
        inputs: &Inputs,
        calibration: &Calibration,
        calibrated_by: &'static str,
        file: PathBuf,
    ) -> Result<Defence> {
        let (cfg, probe_name, out) = (inputs.cfg, inputs.probe_name, inputs.out);
        let rule = calibration.rule(probe_name);
        let dir = file.parent().unwrap_or(out);
        let mut defended = cfg.clone();
        for p in defended.probes.iter_mut().filter(|p| p.name == probe_name) {
            p.path = std::path::absolute(dir)?;
        }
        for m in defended
            .monitors
            .iter_mut()
            .filter(|m| m.name == inputs.monitor)
        {
            m.when = rule.clone();
        }
        defended.audit.path = std::path::absolute(&cfg.audit.path)?;
        let deploy = out.join("deploy.defended.toml");
        let text = toml::to_string(&defended).context("writing the defended deployment")?;
        glassbox_store::fsutil::atomic_write(&deploy, text.as_bytes())?;
        Ok(Defence {
            probe: file,
            deploy,
            rule,
            training_texts: self.texts.len(),
            evasions_added: self.evasions,
            evasion_family_weight: self.family_weight,
            excluded: self.excluded,
            threshold: calibration.threshold,
            calibration_fpr: calibration.fpr,
            calibrated_by,
        })
    }
}

/// The kind a sentence probe learns the red round's evasions as: a head of their own.
const EVASION: &str = "evasion";

/// One text the blue round trains on.
struct Training<'a> {
    text: &'a str,
    /// SHA-256 of `text`.
    hash: [u8; 32],
    label: bool,
    family: &'a str,
    /// Its kind of attack (a sentence probe's head), or "benign".
    kind: &'a str,
    /// The part of the text that makes it positive, where known.
    span: Option<(usize, usize)>,
    /// How much it counts in training (1 for the data's texts).
    weight: f32,
}

/// The benign texts the calibration holds out together, as indices into the training texts:
/// by family where there are two or more benign families, else by part of their hash.
struct Folds {
    by: &'static str,
    members: Vec<Vec<usize>>,
}

fn calibration_folds(texts: &[Training]) -> Result<Folds> {
    let group = |split: BenignSplit| {
        let mut folds: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, t) in texts.iter().enumerate().filter(|(_, t)| !t.label) {
            folds
                .entry(split.fold(false, t.family, &t.hash))
                .or_default()
                .push(i);
        }
        folds.into_values().collect::<Vec<_>>()
    };
    let by_family = group(BenignSplit::Family);
    let (by, members) = if by_family.len() >= 2 {
        ("family", by_family)
    } else {
        ("random part", group(BenignSplit::Random))
    };
    if members.len() < 2 {
        bail!(
            "the blue round calibrates on benign texts its probe never saw, and {} benign training text(s) make one fold: add benign texts (or benign families) to the data",
            members.iter().map(Vec::len).sum::<usize>()
        );
    }
    Ok(Folds { by, members })
}

/// Which texts a calibration fold's probe trains on: all but the fold's `members`, and but any
/// text identical to one of them under another family's name, as in `probe families`.
fn trained_without(texts: &[Training], members: &[usize]) -> Vec<bool> {
    let held: HashSet<[u8; 32]> = members.iter().map(|&i| texts[i].hash).collect();
    texts.iter().map(|t| !held.contains(&t.hash)).collect()
}

fn window_of(a: Aggregation) -> usize {
    match a {
        Aggregation::Window { tokens } => tokens,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evasions_weigh_a_family_but_never_more_than_the_attacks() {
        // The red-team set: 2,450 attacks in 14 families, evasions of 9 attacks.
        assert_eq!(evasion_weight(2450, 14, 9), 175.0);
        // One family of 900 attacks: 9 attacks' evasions weigh 100 each, 900 together.
        assert_eq!(evasion_weight(900, 1, 9), 100.0);
        assert_eq!(evasion_weight(900, 1, 1), 900.0);
        assert_eq!(evasion_weight(0, 0, 0), 0.0);
    }

    fn text<'a>(text: &'a str, label: bool, family: &'a str) -> Training<'a> {
        Training {
            text,
            hash: Sha256::digest(text.as_bytes()).into(),
            label,
            family,
            kind: if label { "attack" } else { "benign" },
            span: None,
            weight: 1.0,
        }
    }

    #[test]
    fn benign_texts_are_held_out_by_family_else_by_hash_with_their_repeats() {
        let two = [
            text("a", false, "news"),
            text("b", true, "jailbreak"),
            text("c", false, "code"),
            text("d", false, "news"),
        ];
        let f = calibration_folds(&two).unwrap();
        assert_eq!(f.by, "family");
        assert_eq!(f.members, vec![vec![2], vec![0, 3]]);

        let words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta"];
        let one: Vec<Training> = words
            .iter()
            .map(|w| text(w, false, "news"))
            .chain([text("attack", true, "jailbreak")])
            .collect();
        let f = calibration_folds(&one).unwrap();
        assert_eq!(f.by, "random part");
        assert!(f.members.len() >= 2, "{:?}", f.members);
        let mut all: Vec<usize> = f.members.concat();
        all.sort_unstable();
        assert_eq!(all, (0..words.len()).collect::<Vec<_>>());

        // A benign text repeated under another family stays out of the fold's training.
        let repeated = [
            text("same", false, "news"),
            text("other", false, "code"),
            text("same", false, "code"),
            text("attack", true, "jailbreak"),
        ];
        let f = calibration_folds(&repeated).unwrap();
        assert_eq!(f.members, vec![vec![1, 2], vec![0]]);
        assert_eq!(
            trained_without(&repeated, &f.members[1]),
            [false, true, false, true]
        );
        assert_eq!(
            trained_without(&repeated, &f.members[0]),
            [false, false, false, true]
        );

        let lone = [text("a", false, "news"), text("b", true, "jailbreak")];
        let err = calibration_folds(&lone).err().unwrap().to_string();
        assert!(
            err.contains("1 benign training text(s) make one fold"),
            "{err}"
        );
    }
}
