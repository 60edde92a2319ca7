//! `glassbox probe families`: how a probe generalises to attack families it never saw.
//!
//! Leave-one-family-out: for every family of the labelled data (attack families and benign
//! ones alike), a probe is trained on all other families and scores the held-out one, so every
//! text's score comes from a probe that saw neither it nor anything of its family. The pooled
//! held-out scores give AUROC and TPR at 1 % / 5 % FPR, and per family the share flagged at the
//! pooled 1 %-FPR threshold. Probes come two ways: trained per token (every token carries its
//! text's label; read as the mean, max or windowed token probability) and trained per text on
//! the mean activation over its tokens ("pooled"). Two baselines run in the same protocol, side
//! by side: logistic regression on MiniLM's sentence embedding, and a fixed keyword filter.
//! With `--out`, the best probe (by held-out TPR at 1 % FPR), trained on every family, is saved
//! with the threshold those held-out scores give.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use glassbox_analysis::keywords::KeywordFilter;
use glassbox_dictionary::probe::{
    self, mean_rows, Aggregation, Calibration, Probe, ProbeTraining, Sample, TextScores,
};
use glassbox_dictionary::roc::{Scored, Summary};
use glassbox_model::{Hooks, Model};
use rayon::prelude::*;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::probe::{read_records, Reader};
use crate::input;

#[derive(clap::Args)]
pub struct FamiliesArgs {
    /// The model the probe reads (a packaged name, GGUF file or directory).
    #[arg(long)]
    model: String,
    /// The hook point read, e.g. blocks.3.hook_resid_pre; repeat it to compare layers in one
    /// run (the texts are read once).
    #[arg(long = "hook", required = true)]
    hooks: Vec<String>,
    /// Labelled texts with families: JSON lines `{"text", "label": 0|1, "family"}` (e.g. the
    /// set `glassbox setup --data redteam` builds).
    #[arg(long)]
    data: PathBuf,
    /// Tokens per window of the windowed score.
    #[arg(long, default_value_t = 4)]
    window: usize,
    /// Tokens of each text used for training (evenly spaced; all are scored).
    #[arg(long, default_value_t = 64)]
    train_tokens: usize,
    /// Read at most this many tokens of each text (default: the model's context).
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Also train the best probe (hook and aggregation by held-out TPR at 1 % FPR) on every
    /// family and save it here, calibrated for 1 % FPR on the held-out scores.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The saved probe's name in monitor rules (default: the data file's stem).
    #[arg(long)]
    name: Option<String>,
    /// Save the probe read this way (mean, max, mean_logit or windowN with N = --window)
    /// instead of the best by held-out TPR at 1 % FPR: e.g. a windowed rule, which appended
    /// text cannot dilute.
    #[arg(long, requires = "out")]
    aggregation: Option<Aggregation>,
}

/// One labelled text, read once.
struct Text {
    label: bool,
    family: String,
    hash: [u8; 32],
    /// Per hook: `[tokens, d]` and its mean over tokens, `[d]`.
    layers: Vec<(Vec<f32>, Vec<f32>)>,
    /// Which tokens are the positive part, where the data says (a buried injection's span).
    token_labels: Option<Vec<bool>>,
    /// MiniLM's sentence embedding.
    embedding: Vec<f32>,
    keywords: f32,
}

/// Held-out scores of one family's texts, per detector.
struct HeldOut {
    probe: Vec<TextScores>,
    pooled: Vec<f32>,
    embedding: Vec<f32>,
}

const DETECTORS: [&str; 6] = [
    "probe mean",
    "probe max",
    "probe window",
    "pooled probe",
    "embedding LR",
    "keywords",
];
const N: usize = DETECTORS.len();

/// The protocol's result at one hook.
struct HookReport {
    hook: String,
    summaries: Vec<Summary>,
    per_family: BTreeMap<(bool, String), (usize, [usize; N])>,
    dropped: usize,
}

pub fn run(a: FamiliesArgs, device: &str, json_out: bool) -> Result<()> {
    if let Some(Aggregation::Window { tokens }) = a.aggregation {
        if tokens != a.window {
            bail!(
                "--aggregation window{tokens} needs --window {tokens} (the windows scored are --window {} tokens long)",
                a.window
            );
        }
    }
    let records = read_records(&a.data)?;
    let labelled = records
        .into_iter()
        .map(|r| r.labelled(&a.data))
        .collect::<Result<Vec<_>>>()?;
    let model = input::load_model(&a.model, device)?;
    let hooks: Vec<&str> = a.hooks.iter().map(String::as_str).collect();
    let reader = Reader::with_hooks(&model, &hooks)?;
    let minilm_owned;
    let minilm: &Model = if model.config.arch == glassbox_model::Architecture::Bert {
        &model
    } else {
        minilm_owned = input::load_model("minilm", device)?;
        &minilm_owned
    };
    let keywords = KeywordFilter::default();
    let d = model.config.d_model;
    let bar = crate::report::progress(labelled.len() as u64, "reading texts", json_out);
    let mut texts = Vec::with_capacity(labelled.len());
    for (i, l) in labelled.iter().enumerate() {
        let text = &l.text;
        let layers: Vec<(Vec<f32>, Vec<f32>)> = reader
            .activations_at(text, a.max_tokens)
            .with_context(|| format!("{}, text {}", a.data.display(), i + 1))?
            .into_iter()
            .map(|acts| (mean_rows(&acts, d), acts))
            .map(|(pooled, acts)| (acts, pooled))
            .collect();
        let token_labels = match l.span {
            Some(span) if l.label => {
                let labels = reader.span_labels(text, span, a.max_tokens)?;
                if labels.len() * d != layers[0].0.len() {
                    bail!(
                        "{}, text {}: {} token labels for {} tokens",
                        a.data.display(),
                        i + 1,
                        labels.len(),
                        layers[0].0.len() / d
                    );
                }
                // A span cut off by --max-tokens labels nothing: the text counts whole.
                labels.iter().any(|&v| v).then_some(labels)
            }
            _ => None,
        };
        texts.push(Text {
            label: l.label,
            family: l.family.clone(),
            hash: Sha256::digest(text.as_bytes()).into(),
            token_labels,
            layers,
            embedding: sentence_embedding(minilm, text)?,
            keywords: keywords.score(text),
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    let families: Vec<(bool, String)> = texts
        .iter()
        .map(|t| (t.label, t.family.clone()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let attack_families = families.iter().filter(|f| f.0).count();
    if attack_families < 2 || families.len() - attack_families < 1 {
        bail!(
            "leave-one-family-out needs at least two attack families and one benign one; {} has {} and {}",
            a.data.display(),
            attack_families,
            families.len() - attack_families
        );
    }
    let cfg = ProbeTraining::default();
    let mut reports = Vec::new();
    for (h, hook) in a.hooks.iter().enumerate() {
        reports.push(evaluate(&a, &texts, h, hook, &families, d, &cfg, json_out)?);
    }
    let saved = match &a.out {
        Some(dir) => Some(save_final(&a, &texts, &reports, d, dir, &cfg)?),
        None => None,
    };
    if json_out {
        let hooks: Vec<_> = reports.iter().map(report_json).collect();
        println!(
            "{}",
            json!({"model": a.model, "data": a.data, "texts": texts.len(),
                "families": families.len(), "window": a.window, "hooks": hooks,
                "saved": saved.as_ref().map(|s| &s.0), "rule": saved.as_ref().map(|s| &s.1)})
        );
        return Ok(());
    }
    println!(
        "leave-one-family-out on {} ({} texts, {} attack and {} benign families), {}",
        a.data.display(),
        texts.len(),
        attack_families,
        families.len() - attack_families,
        a.model
    );
    for r in &reports {
        print_report(r, a.window);
    }
    if let Some((path, rule)) = saved {
        println!(
            "\nsaved {path}: trained on every family, flag rule calibrated on the held-out scores;\na monitor in deploy.toml reads it as\n  when = \"{rule}\""
        );
    }
    Ok(())
}

/// Leave-one-family-out at hook `h`: each family scored by detectors trained without it
/// (families in parallel), the scores pooled.
#[allow(clippy::too_many_arguments)]
fn evaluate(
    a: &FamiliesArgs,
    texts: &[Text],
    h: usize,
    hook: &str,
    families: &[(bool, String)],
    d: usize,
    cfg: &ProbeTraining,
    quiet: bool,
) -> Result<HookReport> {
    let bar = crate::report::progress(
        families.len() as u64,
        &format!("{hook}: training without each family"),
        quiet,
    );
    let folds: Vec<(Vec<usize>, HeldOut, usize)> = families
        .par_iter()
        .map(|(label, family)| {
            let held: Vec<usize> = (0..texts.len())
                .filter(|&i| texts[i].label == *label && &texts[i].family == family)
                .collect();
            let held_hashes: HashSet<[u8; 32]> = held.iter().map(|&i| texts[i].hash).collect();
            // A text identical to a held-out one stays out of training even under another
            // family's name.
            let train: Vec<usize> = (0..texts.len())
                .filter(|&i| !held_hashes.contains(&texts[i].hash))
                .collect();
            let dropped = texts.len() - held.len() - train.len();
            let (w, b) = fit_tokens(texts, h, &train, d, a.train_tokens, cfg);
            let (we, be) = fit_vectors(texts, &train, |t| &t.embedding, cfg);
            let (wp, bp) = fit_vectors(texts, &train, |t| &t.layers[h].1, cfg);
            let p = Probe {
                name: String::new(),
                model: String::new(),
                hook: String::new(),
                weights: w,
                bias: b,
                metrics: None,
                calibration: None,
            };
            let scores = HeldOut {
                probe: held
                    .iter()
                    .map(|&i| p.text_scores(&texts[i].layers[h].0, a.window))
                    .collect(),
                pooled: held
                    .iter()
                    .map(|&i| sigmoid(dot(&wp, &texts[i].layers[h].1) + bp))
                    .collect(),
                embedding: held
                    .iter()
                    .map(|&i| sigmoid(dot(&we, &texts[i].embedding) + be))
                    .collect(),
            };
            bar.inc(1);
            (held, scores, dropped)
        })
        .collect();
    bar.finish_and_clear();
    let mut pooled: Vec<[f32; N]> = vec![[0.0; N]; texts.len()];
    let mut dropped = 0;
    for (held, s, drop) in &folds {
        dropped += drop;
        for (j, &i) in held.iter().enumerate() {
            let p = &s.probe[j];
            pooled[i] = [
                p.mean,
                p.max,
                p.window,
                s.pooled[j],
                s.embedding[j],
                texts[i].keywords,
            ];
        }
    }
    let labels: Vec<bool> = texts.iter().map(|t| t.label).collect();
    let mut summaries = Vec::new();
    for k in 0..N {
        let s: Vec<f32> = pooled.iter().map(|p| p[k]).collect();
        summaries.push(Summary::of(&Scored::new(&s, &labels)?, 0.01));
    }
    // Per family: share flagged at each detector's pooled 1 %-FPR threshold.
    let mut per_family: BTreeMap<(bool, String), (usize, [usize; N])> = BTreeMap::new();
    for (i, t) in texts.iter().enumerate() {
        let e = per_family
            .entry((t.label, t.family.clone()))
            .or_insert((0, [0; N]));
        e.0 += 1;
        for k in 0..N {
            e.1[k] += usize::from(pooled[i][k] > summaries[k].threshold);
        }
    }
    Ok(HookReport {
        hook: hook.to_string(),
        summaries,
        per_family,
        dropped,
    })
}

fn report_json(r: &HookReport) -> serde_json::Value {
    let detectors: Vec<_> = DETECTORS
        .iter()
        .zip(&r.summaries)
        .map(|(name, s)| json!({"detector": name, "summary": s}))
        .collect();
    let fam: Vec<_> = r
        .per_family
        .iter()
        .map(|((label, f), (count, hit))| {
            let rates: serde_json::Map<String, serde_json::Value> = DETECTORS
                .iter()
                .zip(hit)
                .map(|(d, h)| (d.to_string(), json!(*h as f64 / *count as f64)))
                .collect();
            json!({"family": f, "label": label, "texts": count, "flagged": rates})
        })
        .collect();
    json!({"hook": r.hook, "detectors": detectors, "per_family": fam,
        "dropped_duplicates": r.dropped})
}

fn print_report(r: &HookReport, window: usize) {
    println!(
        "\n{}\n{:<14} {:>7} {:>17} {:>10} {:>10}",
        r.hook, "detector", "AUROC", "95 % interval", "TPR@1%FPR", "TPR@5%FPR"
    );
    for (name, s) in DETECTORS.iter().zip(&r.summaries) {
        let label = if *name == "probe window" {
            format!("probe window{window}")
        } else {
            name.to_string()
        };
        println!(
            "{:<14} {:>7.4} {:>17} {:>10.3} {:>10.3}",
            label,
            s.auroc,
            format!("[{:.4}, {:.4}]", s.auroc_ci95.0, s.auroc_ci95.1),
            s.tpr_at_1pct_fpr,
            s.tpr_at_5pct_fpr
        );
    }
    println!("flagged at each detector's 1 %-FPR threshold (held-out family):");
    println!(
        "{:<34} {:>5} {:>6} {:>7} {:>7} {:>7} {:>7} {:>9} {:>8}",
        "family", "label", "texts", "mean", "max", "window", "pooled", "embedding", "keywords"
    );
    for ((label, f), (count, hit)) in &r.per_family {
        let pct = |k: usize| format!("{:.1}%", 100.0 * hit[k] as f64 / *count as f64);
        println!(
            "{:<34} {:>5} {:>6} {:>7} {:>7} {:>7} {:>7} {:>9} {:>8}",
            f,
            u8::from(*label),
            count,
            pct(0),
            pct(1),
            pct(2),
            pct(3),
            pct(4),
            pct(5)
        );
    }
    if r.dropped > 0 {
        println!(
            "({} training texts left out because they repeat a held-out text)",
            r.dropped
        );
    }
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// MiniLM's mean-pooled, normalised final hidden state of a text (its first 512 tokens).
fn sentence_embedding(m: &Model, text: &str) -> Result<Vec<f32>> {
    let batch = m.batch(&[text], true)?;
    let out = m.forward(&batch, &mut Hooks::none(), None)?;
    Ok(m.sentence_embedding(&batch, &out.hidden)?
        .get(0)?
        .to_vec1()?)
}

fn fit_tokens(
    texts: &[Text],
    h: usize,
    train: &[usize],
    d: usize,
    keep: usize,
    cfg: &ProbeTraining,
) -> (Vec<f32>, f32) {
    let samples: Vec<Sample> = train
        .iter()
        .map(|&i| {
            let t = &texts[i];
            Sample::subsampled(&t.layers[h].0, d, t.label, t.token_labels.as_deref(), keep)
        })
        .collect();
    let refs: Vec<&Sample> = samples.iter().collect();
    probe::fit(&refs, d, cfg)
}

/// Logistic regression on one vector per text (`which` picks it).
fn fit_vectors(
    texts: &[Text],
    train: &[usize],
    which: impl Fn(&Text) -> &Vec<f32>,
    cfg: &ProbeTraining,
) -> (Vec<f32>, f32) {
    let d = which(&texts[0]).len();
    let samples: Vec<Sample> = train
        .iter()
        .map(|&i| Sample::new(which(&texts[i]).clone(), texts[i].label))
        .collect();
    let refs: Vec<&Sample> = samples.iter().collect();
    probe::fit(&refs, d, cfg)
}

/// The best probe (hook and aggregation by held-out TPR at 1 % FPR) trained on every family,
/// with that aggregation as its flag rule and the threshold from the held-out scores.
fn save_final(
    a: &FamiliesArgs,
    texts: &[Text],
    reports: &[HookReport],
    d: usize,
    dir: &std::path::Path,
    cfg: &ProbeTraining,
) -> Result<(String, String)> {
    let all: Vec<usize> = (0..texts.len()).collect();
    let aggs = [
        Aggregation::Mean,
        Aggregation::Max,
        Aggregation::Window { tokens: a.window },
        Aggregation::MeanLogit,
    ];
    let (h, best) = (0..reports.len())
        .flat_map(|h| (0..aggs.len()).map(move |k| (h, k)))
        .filter(|&(_, k)| a.aggregation.is_none_or(|x| x == aggs[k]))
        .max_by(|&(h1, k1), &(h2, k2)| {
            let t = |h: usize, k: usize| reports[h].summaries[k].tpr_at_1pct_fpr;
            t(h1, k1).total_cmp(&t(h2, k2))
        })
        .unwrap_or((0, 2));
    let s = &reports[h].summaries[best];
    // The pooled probe, applied to each token, averages to its text-level logit.
    let (weights, bias) = if aggs[best] == Aggregation::MeanLogit {
        fit_vectors(texts, &all, |t| &t.layers[h].1, cfg)
    } else {
        fit_tokens(texts, h, &all, d, a.train_tokens, cfg)
    };
    let bytes = std::fs::read(&a.data)?;
    let name = a.name.clone().unwrap_or_else(|| {
        a.data
            .file_stem()
            .map_or("probe".into(), |s| s.to_string_lossy().into_owned())
    });
    let p = Probe {
        name,
        model: a.model.clone(),
        hook: a.hooks[h].clone(),
        weights,
        bias,
        metrics: None,
        calibration: Some(Calibration {
            aggregation: aggs[best],
            threshold: s.threshold,
            target_fpr: 0.01,
            fpr: s.fpr,
            tpr: s.tpr,
            data: format!("{} (held-out families)", a.data.display()),
            data_sha256: format!("{:x}", Sha256::digest(&bytes)),
            positives: s.positives,
            negatives: s.negatives,
        }),
    };
    p.save(dir)?;
    let rule = p
        .calibration
        .as_ref()
        .map_or(String::new(), |c| c.rule(&p.name));
    Ok((dir.join(probe::FILE).display().to_string(), rule))
}
