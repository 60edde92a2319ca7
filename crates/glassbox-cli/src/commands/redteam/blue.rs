//! The blue round: the attacked probe retrained on its training data plus the red round's
//! successful evasions (adversarial training), its threshold recalibrated, and a deployment
//! file written that serves it. It never reads the held-out set: the caller commits that to
//! the audit log before this runs and reveals it after.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use glassbox_dictionary::probe::{
    self, mean_rows, Aggregation, Calibration, Probe, ProbeTraining, Sample,
};
use glassbox_dictionary::roc::{Scored, Summary};
use glassbox_model::Model;
use glassbox_serve::config::Config;
use sha2::{Digest, Sha256};

use crate::commands::probe::Labelled;
use crate::commands::reader::Reader;

/// What the blue round trained on and produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Defence {
    pub probe: PathBuf,
    pub deploy: PathBuf,
    pub rule: String,
    pub training_texts: usize,
    pub evasions_added: usize,
    /// Texts left out because they are (or repeat) held-out payloads or round benign texts.
    pub excluded: usize,
    pub threshold: f32,
    /// The calibration's false-positive rate on the benign training texts.
    pub fpr_on_training: f64,
}

/// Retrains probe `probe_name` of `cfg` (see the module documentation).
#[allow(clippy::too_many_arguments)]
pub fn defend(
    model: &Model,
    cfg: &Config,
    monitor: &str,
    probe_name: &str,
    data: &[Labelled],
    withheld: &HashSet<[u8; 32]>,
    evasions: &[&str],
    max_tokens: usize,
    out: &Path,
    quiet: bool,
) -> Result<Defence> {
    let entry = cfg
        .probes
        .iter()
        .find(|p| p.name == probe_name)
        .with_context(|| format!("no [[probe]] `{probe_name}`"))?;
    let old = Probe::load(&entry.path)?;
    let aggregation = old
        .calibration
        .as_ref()
        .map_or(Aggregation::MeanLogit, |c| c.aggregation);
    let target_fpr = old.calibration.as_ref().map_or(0.01, |c| c.target_fpr);
    // The served monitor reads at most `max_tokens` of a prompt; training reads the same.
    let reader = Reader::new(model, &old.hook)?.passes(Some(max_tokens), true);
    let d = model.config.d_model;
    let hash = |t: &str| -> [u8; 32] { Sha256::digest(t.as_bytes()).into() };
    // (text, label, the span that makes it positive)
    type Training<'a> = (&'a str, bool, Option<(usize, usize)>);
    let mut texts: Vec<Training> = Vec::new();
    let mut excluded = 0;
    for l in data {
        if withheld.contains(&hash(&l.text)) {
            excluded += 1;
        } else {
            texts.push((&l.text, l.label, l.span));
        }
    }
    texts.extend(evasions.iter().map(|t| (*t, true, None)));
    if !texts.iter().any(|t| !t.1) || !texts.iter().any(|t| t.1) {
        anyhow::bail!(
            "the blue round has no {} text left to train on: the round's own texts are withheld from training (lower the suite's `benign` or `payloads`, or add data)",
            if texts.iter().any(|t| t.1) { "benign" } else { "attack" }
        );
    }
    let bar = crate::report::progress(texts.len() as u64, "blue: reading training texts", quiet);
    let mut samples = Vec::with_capacity(texts.len());
    let mut pooled = Vec::with_capacity(texts.len());
    for (text, label, span) in &texts {
        let acts = reader.activations(text)?;
        let labels = match span {
            Some(s) if *label => Some(reader.span_labels(text, *s)?)
                .filter(|l| l.iter().any(|&v| v) && l.len() * d == acts.len()),
            _ => None,
        };
        pooled.push(Sample::new(mean_rows(&acts, d), *label));
        samples.push((acts, *label, labels));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let cfg_train = ProbeTraining::default();
    let (weights, bias) = if aggregation == Aggregation::MeanLogit {
        let refs: Vec<&Sample> = pooled.iter().collect();
        probe::fit(&refs, d, &cfg_train)
    } else {
        let token_samples: Vec<Sample> = samples
            .iter()
            .map(|(x, l, tl)| Sample::subsampled(x, d, *l, tl.as_deref(), 32))
            .collect();
        let refs: Vec<&Sample> = token_samples.iter().collect();
        probe::fit(&refs, d, &cfg_train)
    };
    let mut new = Probe {
        name: old.name.clone(),
        model: old.model.clone(),
        hook: old.hook.clone(),
        weights,
        bias,
        metrics: None,
        calibration: None,
    };
    let scores: Vec<f32> = samples
        .iter()
        .map(|(x, ..)| aggregation.of(&new.text_scores(x, window_of(aggregation))))
        .collect();
    let labels: Vec<bool> = samples.iter().map(|s| s.1).collect();
    let cut = Summary::of(&Scored::new(&scores, &labels)?, target_fpr);
    new.calibration = Some(Calibration {
        aggregation,
        threshold: cut.threshold,
        target_fpr,
        fpr: cut.fpr,
        tpr: cut.tpr,
        data: "the red-team data's training families plus the red round's evasions (in-sample)"
            .into(),
        data_sha256: String::new(),
        positives: cut.positives,
        negatives: cut.negatives,
        // The keyword monitor, if any, stays in the deployment beside the probe's rule.
        or_keywords: false,
    });
    let dir = out.join("defended-probe");
    new.save(&dir)?;
    let rule = new
        .calibration
        .as_ref()
        .map_or(String::new(), |c| c.rule(probe_name));
    let mut defended = cfg.clone();
    for p in defended.probes.iter_mut().filter(|p| p.name == probe_name) {
        p.path = std::path::absolute(&dir)?;
    }
    for m in defended.monitors.iter_mut().filter(|m| m.name == monitor) {
        m.when = rule.clone();
    }
    defended.audit.path = std::path::absolute(&cfg.audit.path)?;
    let deploy = out.join("deploy.defended.toml");
    let text = toml::to_string(&defended).context("writing the defended deployment")?;
    glassbox_store::fsutil::atomic_write(&deploy, text.as_bytes())?;
    Ok(Defence {
        probe: dir.join(probe::FILE),
        deploy,
        rule,
        training_texts: texts.len(),
        evasions_added: evasions.len(),
        excluded,
        threshold: cut.threshold,
        fpr_on_training: cut.fpr,
    })
}

fn window_of(a: Aggregation) -> usize {
    match a {
        Aggregation::Window { tokens } => tokens,
        _ => 4,
    }
}
