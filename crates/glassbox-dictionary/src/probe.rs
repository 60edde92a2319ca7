//! Linear probes: logistic regression on one hook's per-token activations, trained from
//! labelled texts (every token of a text carries the text's label), read per token at serving
//! time as a probability. A text's score is the mean of its tokens' probabilities.
//!
//! Held-out accuracy comes from k-fold cross-validation over texts (each text is scored by a
//! probe that never saw it), so it is honest on the small example sets policies are written
//! with; the saved probe is then trained on every text. Balanced accuracy is reported beside
//! plain accuracy because such sets are rarely balanced.

use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{DictError, Result};
use crate::linalg;
use crate::sae::{CodeRow, Sae};

/// One labelled text's activations, `[tokens, d_in]`.
#[derive(Clone)]
pub struct Sample {
    pub x: Vec<f32>,
    pub label: bool,
    /// Per-token labels where they are known (e.g. the tokens of an instruction buried in a
    /// document); otherwise every token carries `label`.
    pub token_labels: Option<Vec<bool>>,
    /// How much the text counts in training, relative to 1 (e.g. less for a text of a large
    /// family, so one family's style does not become the probe).
    pub weight: f32,
}

impl Sample {
    pub fn new(x: Vec<f32>, label: bool) -> Self {
        Self {
            x,
            label,
            token_labels: None,
            weight: 1.0,
        }
    }

    /// The same sample counted `weight` times as much.
    pub fn weighted(self, weight: f32) -> Self {
        Self { weight, ..self }
    }

    /// A text's training tokens from its `[tokens, d]` activations: at most `keep` evenly
    /// spaced ones, plus every labelled-positive token (a short span would otherwise fall
    /// between the picks).
    pub fn subsampled(
        x: &[f32],
        d: usize,
        label: bool,
        token_labels: Option<&[bool]>,
        keep: usize,
    ) -> Sample {
        let n = x.len() / d;
        let keep = keep.max(1);
        let mut picks: Vec<usize> = if n <= keep {
            (0..n).collect()
        } else {
            (0..keep).map(|j| j * n / keep).collect()
        };
        if let Some(l) = token_labels {
            picks.extend((0..n).filter(|&i| l[i]));
            picks.sort_unstable();
            picks.dedup();
        }
        Sample {
            x: picks
                .iter()
                .flat_map(|&i| x[i * d..(i + 1) * d].iter().copied())
                .collect(),
            label,
            token_labels: token_labels.map(|l| picks.iter().map(|&i| l[i]).collect()),
            weight: 1.0,
        }
    }
}

/// The mean of the rows of `[n, d]` (a text's pooled activation).
pub fn mean_rows(x: &[f32], d: usize) -> Vec<f32> {
    let n = (x.len() / d).max(1) as f32;
    let mut m = vec![0f32; d];
    for row in x.chunks(d) {
        m.iter_mut().zip(row).for_each(|(m, v)| *m += v / n);
    }
    m
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProbeMetrics {
    pub texts: usize,
    pub positives: usize,
    pub folds: usize,
    /// Cross-validated, text level.
    pub heldout_accuracy: f32,
    pub heldout_balanced_accuracy: f32,
    /// The final probe on its own training texts.
    pub train_accuracy: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Probe {
    pub name: String,
    pub model: String,
    pub hook: String,
    pub weights: Vec<f32>,
    pub bias: f32,
    pub metrics: Option<ProbeMetrics>,
    /// A calibrated decision rule (`glassbox probe eval --calibrate FPR`): flag a text when its
    /// `aggregation` score is above `threshold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    /// Set for a probe on a dictionary's latents: it reads that dictionary's codes of the
    /// hook's activations (one weight per latent), not the activations themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dictionary: Option<ProbeDictionary>,
}

/// The dictionary a probe on latents reads, pinned by the SHA-256 of its weights file (a
/// retrained dictionary's latents mean other things).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProbeDictionary {
    pub sha256: String,
    /// Where it was when the probe was trained (a hint for error messages).
    pub path: String,
}

/// How a text's per-token probabilities become one score: a probability, except
/// [`Aggregation::MeanLogit`]'s logit (see [`Scale`]).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    Mean,
    Max,
    /// The highest mean over `tokens` consecutive tokens: evidence that persists, not a
    /// one-token spike (the whole text when it is shorter).
    Window {
        tokens: usize,
    },
    /// The mean token logit, i.e. the probe's logit of the text's mean activation (how a probe
    /// trained on mean-pooled activations reads a text).
    MeanLogit,
    /// A sentence probe's reading ([`crate::sentence_probe`]): the highest logit over the text
    /// and each of its sentences read alone.
    Sentences,
}

/// The units of a text's score and of the threshold on it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Scale {
    Probability,
    /// Kept as a logit because a well-separated pooled probe's probabilities saturate: an f32
    /// sigmoid is exactly 1 above a logit of about 16.6, where no threshold can be told apart.
    Logit,
}

impl Scale {
    pub fn name(self) -> &'static str {
        match self {
            Self::Probability => "probability",
            Self::Logit => "logit",
        }
    }

    /// What a keyword hit adds to a score in a union with the keyword filter: more than the
    /// spread of scores without one, so every hit ranks above every text without one.
    pub fn keyword_hit(self) -> f32 {
        match self {
            Self::Probability => KEYWORD_HIT,
            Self::Logit => LOGIT_KEYWORD_HIT,
        }
    }
}

impl Aggregation {
    pub fn of(self, s: &TextScores) -> f32 {
        match self {
            Self::Mean => s.mean,
            Self::Max => s.max,
            Self::Window { .. } => s.window,
            Self::MeanLogit => s.mean_logit,
            Self::Sentences => s.max_logit,
        }
    }

    pub fn scale(self) -> Scale {
        match self {
            Self::MeanLogit | Self::Sentences => Scale::Logit,
            _ => Scale::Probability,
        }
    }

    /// The score raised above every threshold by a keyword hit: the union with the keyword
    /// filter as one score.
    pub fn of_or_keywords(self, s: &TextScores, keywords: f32) -> f32 {
        self.or_keywords(self.of(s), keywords)
    }

    /// A score of this reading's [`Scale`] in a union with the keyword filter: a hit adds
    /// [`Scale::keyword_hit`], so one threshold below the hit flags either.
    pub fn or_keywords(self, score: f32, keywords: f32) -> f32 {
        score
            + if keywords > 0.0 {
                self.scale().keyword_hit()
            } else {
                0.0
            }
    }

    /// The score a threshold applies to: this reading, or its union with the keyword filter.
    pub fn flag_score(self, s: &TextScores, keywords: f32, with_keywords: bool) -> f32 {
        if with_keywords {
            self.of_or_keywords(s, keywords)
        } else {
            self.of(s)
        }
    }

    pub fn label(self) -> String {
        match self {
            Self::Mean => "mean".into(),
            Self::Max => "max".into(),
            Self::Window { tokens } => format!("window{tokens}"),
            Self::MeanLogit => "mean_logit".into(),
            Self::Sentences => "sentences".into(),
        }
    }
}

impl std::str::FromStr for Aggregation {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "mean" => Ok(Self::Mean),
            "max" => Ok(Self::Max),
            "mean_logit" => Ok(Self::MeanLogit),
            "sentences" => Ok(Self::Sentences),
            _ => s
                .strip_prefix("window")
                .and_then(|n| n.parse().ok())
                .filter(|&n: &usize| n > 0)
                .map(|tokens| Self::Window { tokens })
                .ok_or_else(|| {
                    format!("`{s}` is not an aggregation; use mean, max, mean_logit or windowN (e.g. window4); a sentence probe reads `sentences`")
                }),
        }
    }
}

/// What a keyword hit adds to a probability score in a union (see [`Calibration::union_score`]).
pub const KEYWORD_HIT: f32 = 2.0;

/// What a keyword hit adds to a logit score: a probe whose text logits spread over thousands is
/// broken, and f32 still tells logits 0.001 apart here.
pub const LOGIT_KEYWORD_HIT: f32 = 1e4;

/// A threshold chosen on labelled data for a target false-positive rate, in its aggregation's
/// [`Scale`] (written to `probe.json` beside it as `threshold_scale`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(try_from = "CalibrationFile", into = "CalibrationFile")]
pub struct Calibration {
    pub aggregation: Aggregation,
    pub threshold: f32,
    pub target_fpr: f64,
    /// What the threshold gave on the data it was chosen on (chosen on benign traffic alone:
    /// no positives, `tpr` 0).
    pub fpr: f64,
    pub tpr: f64,
    /// That data: file name and SHA-256, texts of each label.
    pub data: String,
    pub data_sha256: String,
    pub positives: usize,
    pub negatives: usize,
    /// Also flag every text the keyword filter ([`crate::keywords`]) matches: served as a
    /// second monitor, `keywords > 0`. Set where the union held out better than the probe.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub or_keywords: bool,
}

/// [`Calibration`] as `probe.json` holds it: the threshold's scale named, so a file from before
/// `mean_logit` thresholds were logits (no `threshold_scale`: a probability) still reads right.
#[derive(Serialize, Deserialize)]
struct CalibrationFile {
    aggregation: Aggregation,
    threshold: f32,
    #[serde(default)]
    threshold_scale: Option<Scale>,
    target_fpr: f64,
    fpr: f64,
    tpr: f64,
    data: String,
    data_sha256: String,
    positives: usize,
    negatives: usize,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    or_keywords: bool,
}

impl TryFrom<CalibrationFile> for Calibration {
    type Error = String;

    fn try_from(f: CalibrationFile) -> std::result::Result<Self, String> {
        let scale = f.aggregation.scale();
        let threshold = match (f.threshold_scale.unwrap_or(Scale::Probability), scale) {
            (given, wanted) if given == wanted => f.threshold,
            (Scale::Probability, Scale::Logit) => probability_to_logit(f.threshold, f.or_keywords),
            (given, _) => {
                return Err(format!(
                    "a {} threshold is a {}, but this one says it is a {}",
                    f.aggregation.label(),
                    scale.name(),
                    given.name()
                ))
            }
        };
        Ok(Self {
            aggregation: f.aggregation,
            threshold,
            target_fpr: f.target_fpr,
            fpr: f.fpr,
            tpr: f.tpr,
            data: f.data,
            data_sha256: f.data_sha256,
            positives: f.positives,
            negatives: f.negatives,
            or_keywords: f.or_keywords,
        })
    }
}

impl From<Calibration> for CalibrationFile {
    fn from(c: Calibration) -> Self {
        Self {
            threshold_scale: Some(c.aggregation.scale()),
            aggregation: c.aggregation,
            threshold: c.threshold,
            target_fpr: c.target_fpr,
            fpr: c.fpr,
            tpr: c.tpr,
            data: c.data,
            data_sha256: c.data_sha256,
            positives: c.positives,
            negatives: c.negatives,
            or_keywords: c.or_keywords,
        }
    }
}

/// An old `mean_logit` threshold (a probability, or in a keyword union one plus
/// [`KEYWORD_HIT`]) as the logit it stood for.
fn probability_to_logit(threshold: f32, or_keywords: bool) -> f32 {
    let (p, hit) = match f64::from(threshold) {
        t if or_keywords && t >= f64::from(KEYWORD_HIT) => (t - f64::from(KEYWORD_HIT), true),
        t => (t, false),
    };
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    let z = (p / (1.0 - p)).ln() as f32;
    if hit {
        z + LOGIT_KEYWORD_HIT
    } else {
        z
    }
}

impl Calibration {
    /// Whether a text with these probe scores and keyword count is flagged.
    pub fn flags(&self, scores: &TextScores, keywords: f32) -> bool {
        self.union_score(scores, keywords) > self.threshold
    }

    /// The score the threshold applies to: the aggregation's, or its union with the keyword
    /// filter ([`Aggregation::of_or_keywords`]) when the calibration takes the union.
    pub fn union_score(&self, scores: &TextScores, keywords: f32) -> f32 {
        self.aggregation
            .flag_score(scores, keywords, self.or_keywords)
    }

    /// The served monitor rules that together flag what this calibration flags (see
    /// [`Self::rule`]). A union's threshold below a keyword hit's worth flags every hit: the
    /// rule and `keywords > 0`. One above it (a union held to a small share of a budget) flags
    /// only hits whose probe reading passes the rest: `… > t − hit and keywords > 0` (the
    /// probe alone never reaches a hit's worth: see [`Scale::keyword_hit`]).
    pub fn rules(&self, name: &str) -> Vec<String> {
        match self.hit_needs_probe() {
            _ if !self.or_keywords => vec![self.rule(name)],
            None => vec![self.rule(name), "keywords > 0".into()],
            Some(rest) => vec![format!("{} and keywords > 0", self.rule_at(name, rest))],
        }
    }

    /// For a union whose threshold lies above a keyword hit's worth: what the probe's reading
    /// must pass beside a hit.
    pub fn hit_needs_probe(&self) -> Option<f32> {
        let hit = self.aggregation.scale().keyword_hit();
        (self.or_keywords && self.threshold >= hit).then_some(self.threshold - hit)
    }

    /// How a union reads, after its threshold: "" for a probe alone.
    pub fn keyword_clause(&self) -> String {
        match self.hit_needs_probe() {
            _ if !self.or_keywords => String::new(),
            None => ", or any keyword pattern".into(),
            Some(rest) => format!(
                " on the union (a keyword hit adds {}): a keyword hit with {} > {rest:.4}",
                self.aggregation.scale().keyword_hit(),
                self.aggregation.label()
            ),
        }
    }

    /// The served monitor rule (see `glassbox_serve::rules`) that flags what this calibration
    /// flags, for a probe registered as `name`: the window and max rules fire on the token where
    /// the text's score first passes the threshold; the mean rules decide on the whole prompt
    /// (then again at each generated token).
    pub fn rule(&self, name: &str) -> String {
        self.rule_at(name, self.threshold)
    }

    /// [`Self::rule`] with another threshold.
    fn rule_at(&self, name: &str, t: f32) -> String {
        match self.aggregation {
            Aggregation::Mean => format!("mean(probe {name}) > {t}"),
            Aggregation::Max => format!("probe {name} > {t}"),
            Aggregation::Window { tokens } => format!("mean(probe {name}, {tokens}) > {t}"),
            Aggregation::MeanLogit => format!("mean(logit {name}) > {t}"),
            Aggregation::Sentences => format!("sentences {name} > {t}"),
        }
    }
}

/// A probe's scores over one text's tokens.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct TextScores {
    pub tokens: usize,
    /// Mean and max token probability.
    pub mean: f32,
    pub max: f32,
    /// The best window's mean probability (see [`Aggregation::Window`]).
    pub window: f32,
    /// Mean and max token logit (`w·x + b`), which keep their spread where probabilities
    /// saturate at 0 or 1.
    pub mean_logit: f32,
    pub max_logit: f32,
}

pub const FILE: &str = "probe.json";

#[derive(Debug, Clone)]
pub struct ProbeTraining {
    pub epochs: usize,
    pub lr: f32,
    pub l2: f32,
    pub folds: usize,
    pub seed: u64,
}

impl Default for ProbeTraining {
    fn default() -> Self {
        Self {
            epochs: 300,
            lr: 0.05,
            l2: 1e-3,
            folds: 5,
            seed: 0,
        }
    }
}

impl Probe {
    /// P(label) for one token's activation.
    pub fn score(&self, x: &[f32]) -> f32 {
        sigmoid(linalg::dot(&self.weights, x) + self.bias)
    }

    /// The logit `w·x + b` of one token's activation.
    pub fn logit(&self, x: &[f32]) -> f32 {
        linear_logit(&self.weights, self.bias, x)
    }

    /// The logit `w·f + b` of one token's codes (a probe on latents).
    pub fn codes_logit(&self, row: &CodeRow) -> f32 {
        self.bias
            + row
                .iter()
                .map(|&(j, v)| self.weights.get(j as usize).map_or(0.0, |w| w * v))
                .sum::<f32>()
    }

    /// Every aggregation of a text's token scores, `x` `[tokens, d]`, windows of `window`.
    pub fn text_scores(&self, x: &[f32], window: usize) -> TextScores {
        scores_of_logits(&self.dense_logits(x), window)
    }

    /// The logit of every token of `[tokens, d]` activations.
    fn dense_logits(&self, x: &[f32]) -> Vec<f32> {
        x.chunks(self.weights.len())
            .map(|t| self.logit(t))
            .collect()
    }

    /// The logit of every token of a text's activations at the probe's hook, `[tokens, d_in]`;
    /// a probe on latents reads them through `sae`, the dictionary it names (see
    /// [`Probe::check_dictionary`]).
    pub fn token_logits(&self, x: &[f32], sae: Option<&Sae>) -> Result<Vec<f32>> {
        match (&self.dictionary, sae) {
            (None, _) => Ok(self.dense_logits(x)),
            (Some(_), Some(sae)) => Ok(self.codes_logits(&sae.encode(x)?.rows)),
            (Some(d), None) => Err(DictError::Config(format!(
                "probe `{}` reads the latents of the dictionary at {}; give that dictionary",
                self.name, d.path
            ))),
        }
    }

    /// The logit of every token's codes (a probe on latents).
    pub fn codes_logits(&self, rows: &[CodeRow]) -> Vec<f32> {
        rows.iter().map(|r| self.codes_logit(r)).collect()
    }

    /// [`Probe::text_scores`] of a text read as [`Probe::token_logits`] reads it.
    pub fn read_text(&self, x: &[f32], sae: Option<&Sae>, window: usize) -> Result<TextScores> {
        Ok(scores_of_logits(&self.token_logits(x, sae)?, window))
    }

    /// Checks that `sae`, whose weights file hashes to `sha256`, is the dictionary this probe
    /// on latents was trained on (`what` names it in the error).
    pub fn check_dictionary(
        &self,
        sae: &Sae,
        sha256: &str,
        what: &str,
    ) -> std::result::Result<(), String> {
        let Some(d) = &self.dictionary else {
            return Err(format!(
                "probe `{}` reads {} itself, not a dictionary's latents; {what} is not for it",
                self.name, self.hook
            ));
        };
        if d.sha256 != sha256 {
            return Err(format!(
                "probe `{}` was trained on the latents of the dictionary at {} (weights SHA-256 {}…), but {what} is another one ({}…)",
                self.name,
                d.path,
                d.sha256.get(..12).unwrap_or(&d.sha256),
                sha256.get(..12).unwrap_or(sha256)
            ));
        }
        if sae.d_sae() != self.weights.len() || sae.cfg.hook != self.hook {
            return Err(format!(
                "probe `{}` has {} weights at {}, but {what} has {} latents at {}",
                self.name,
                self.weights.len(),
                self.hook,
                sae.d_sae(),
                sae.cfg.hook
            ));
        }
        Ok(())
    }

    /// Mean token probability of a text, `[tokens, d]`.
    pub fn score_text(&self, x: &[f32]) -> f32 {
        let d = self.weights.len();
        let n = (x.len() / d).max(1);
        x.chunks(d).map(|t| self.score(t)).sum::<f32>() / n as f32
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        save_json(self, dir, FILE)
    }

    pub fn load(dir: &Path) -> Result<Probe> {
        let (p, path): (Probe, _) = load_json(dir, FILE, "a probe file")?;
        if p.weights.is_empty() || !p.bias.is_finite() || p.weights.iter().any(|w| !w.is_finite()) {
            return Err(DictError::format(
                &path,
                "the probe has no weights or non-finite ones",
            ));
        }
        Ok(p)
    }
}

/// Writes `value` as JSON to `dir/file` (the folder made if missing): whole or not at all.
pub(crate) fn save_json<T: Serialize>(value: &T, dir: &Path, file: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| DictError::io(dir, e))?;
    let path = dir.join(file);
    let json = serde_json::to_vec_pretty(value)
        .map_err(|e| DictError::format(&path, format!("cannot encode: {e}")))?;
    glassbox_model::fsutil::atomic_write(&path, &json).map_err(|e| DictError::io(&path, e))
}

/// Reads the JSON `file` of a folder (or `path` itself, a file), `what` naming it in errors;
/// returns it with the file's path.
pub(crate) fn load_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    file: &str,
    what: &str,
) -> Result<(T, std::path::PathBuf)> {
    let path = if path.is_dir() {
        path.join(file)
    } else {
        path.to_path_buf()
    };
    let bytes = std::fs::read(&path).map_err(|e| DictError::io(&path, e))?;
    let value = serde_json::from_slice(&bytes)
        .map_err(|e| DictError::format(&path, format!("not {what}: {e}")))?;
    Ok((value, path))
}

/// Every aggregation of a text's token logits, windows of `window` tokens.
fn scores_of_logits(logits: &[f32], window: usize) -> TextScores {
    let probs: Vec<f32> = logits.iter().map(|&z| sigmoid(z)).collect();
    let n = probs.len().max(1) as f32;
    let w = window.clamp(1, probs.len().max(1));
    let window = probs
        .windows(w)
        .map(|c| c.iter().sum::<f32>() / w as f32)
        .fold(f32::NEG_INFINITY, f32::max);
    TextScores {
        tokens: probs.len(),
        mean: probs.iter().sum::<f32>() / n,
        max: probs.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        window: if probs.is_empty() { 0.0 } else { window },
        mean_logit: logits.iter().sum::<f32>() / n,
        max_logit: logits.iter().copied().fold(f32::NEG_INFINITY, f32::max),
    }
}

/// The logit `w·x + b` of logistic-regression weights `w`, bias `b` on a vector `x`.
pub fn linear_logit(w: &[f32], b: f32, x: &[f32]) -> f32 {
    linalg::dot(w, x) + b
}

/// A logit as a probability.
pub fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// Trains a probe on every sample and cross-validates it; `d` is the hook's width.
pub fn train(
    samples: &[Sample],
    d: usize,
    cfg: &ProbeTraining,
) -> Result<(Vec<f32>, f32, ProbeMetrics)> {
    let positives = samples.iter().filter(|s| s.label).count();
    if positives == 0 || positives == samples.len() {
        return Err(DictError::Config(format!(
            "a probe needs texts of both labels; got {positives} positive of {}",
            samples.len()
        )));
    }
    if let Some(s) = samples
        .iter()
        .find(|s| s.x.is_empty() || s.x.len() % d != 0)
    {
        return Err(DictError::Width {
            got: s.x.len() % d,
            expected: d,
        });
    }
    // Stratified folds: positives and negatives dealt round-robin after a seeded shuffle.
    let folds = cfg
        .folds
        .clamp(2, positives.min(samples.len() - positives).max(2));
    let mut order: Vec<usize> = (0..samples.len()).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(cfg.seed));
    let mut fold = vec![0; samples.len()];
    let (mut np, mut nn) = (0, 0);
    for &i in &order {
        let c = if samples[i].label { &mut np } else { &mut nn };
        fold[i] = *c % folds;
        *c += 1;
    }
    let mut predicted = vec![false; samples.len()];
    for k in 0..folds {
        let train: Vec<&Sample> = (0..samples.len())
            .filter(|&i| fold[i] != k)
            .map(|i| &samples[i])
            .collect();
        let (w, b) = fit(&train, d, cfg);
        for i in (0..samples.len()).filter(|&i| fold[i] == k) {
            predicted[i] = text_score(&w, b, &samples[i].x) > 0.5;
        }
    }
    let all: Vec<&Sample> = samples.iter().collect();
    let (w, b) = fit(&all, d, cfg);
    let fitted: Vec<bool> = samples
        .iter()
        .map(|s| text_score(&w, b, &s.x) > 0.5)
        .collect();
    let labels: Vec<bool> = samples.iter().map(|s| s.label).collect();
    let metrics = ProbeMetrics {
        texts: samples.len(),
        positives,
        folds,
        heldout_accuracy: accuracy(&labels, &predicted),
        heldout_balanced_accuracy: balanced_accuracy(&labels, &predicted),
        train_accuracy: accuracy(&labels, &fitted),
    };
    Ok((w, b, metrics))
}

fn text_score(w: &[f32], b: f32, x: &[f32]) -> f32 {
    let n = x.len() / w.len();
    x.chunks(w.len())
        .map(|t| sigmoid(linalg::dot(w, t) + b))
        .sum::<f32>()
        / n as f32
}

/// Full-batch Adam on the class- and length-balanced logistic loss: each text weighs the
/// same whatever its length, each class half. Inputs are standardised for conditioning and
/// the scaling folded back into the weights.
/// Weights and bias of a probe fitted on every sample (no cross-validation).
pub fn fit(samples: &[&Sample], d: usize, cfg: &ProbeTraining) -> (Vec<f32>, f32) {
    fit_penalties(samples, d, cfg, &[cfg.l2])
        .pop()
        .unwrap_or_default()
}

/// [`fit`] at each L2 penalty of `l2s` (in their order; `cfg.l2` unused), in one pass over
/// the rows per epoch: each row is read from memory once for every penalty. Each probe is
/// bitwise the one [`fit`] gives at its penalty.
pub fn fit_penalties(
    samples: &[&Sample],
    d: usize,
    cfg: &ProbeTraining,
    l2s: &[f32],
) -> Vec<(Vec<f32>, f32)> {
    if l2s.is_empty() {
        return Vec::new();
    }
    if d == 0 {
        // No weights to learn: the class-balanced loss is least at bias 0 (each class weighs half).
        return vec![(Vec::new(), 0.0); l2s.len()];
    }
    let (mean, scale) = standardisation(samples.iter().map(|s| s.x.as_slice()), d);
    let (z, targets) = standardised_rows(samples, d, &mean, scale);
    // Per penalty: the parameters (d weights, then the bias) and Adam.
    let mut fits: Vec<(Vec<f32>, Adam)> = l2s
        .iter()
        .map(|&l2| (vec![0.0; d + 1], Adam::new(d + 1, d, l2)))
        .collect();
    for step in 1..=cfg.epochs {
        let params: Vec<&[f32]> = fits.iter().map(|(p, _)| p.as_slice()).collect();
        let grads = epoch_gradients(&z, &targets, &params);
        for ((p, adam), mut g) in fits.iter_mut().zip(grads) {
            adam.step(p, &mut g, step, cfg.lr);
        }
    }
    // w·((x − μ)·s) + b = (s·w)·x + (b − s·w·μ)
    fits.into_iter()
        .map(|(p, _)| {
            let w_raw: Vec<f32> = p[..d].iter().map(|w| w * scale).collect();
            let b_raw = p[d] - linalg::dot(&w_raw, &mean);
            (w_raw, b_raw)
        })
        .collect()
}

/// Rows per parallel task of an epoch's gradient: a fixed split, so the order of the sum, and
/// so the fit, does not depend on the number of threads.
const TASK_ROWS: usize = 2048;

/// The weighted logistic loss's gradient over every row of `z` (`[rows, d]`, with `targets`'
/// (label, weight) per row) for several probes at once, each `params` entry `d` weights then a
/// bias: one gradient per probe, laid out alike. Each row, while in L1, gives its logit under
/// every probe and takes its error back into every gradient.
fn epoch_gradients(z: &[f32], targets: &[(f32, f32)], params: &[&[f32]]) -> Vec<Vec<f32>> {
    let Some(d) = params.first().map(|p| p.len() - 1) else {
        return Vec::new();
    };
    let partials: Vec<Vec<Vec<f32>>> = z
        .par_chunks(TASK_ROWS * d)
        .zip(targets.par_chunks(TASK_ROWS))
        .map(|(z, targets)| {
            let mut grads = vec![vec![0f32; d + 1]; params.len()];
            pulp::Arch::new().dispatch(RowGradients {
                z,
                targets,
                params,
                grads: &mut grads,
            });
            grads
        })
        .collect();
    let mut total = vec![vec![0f32; d + 1]; params.len()];
    for part in partials {
        for (sum, g) in total.iter_mut().zip(&part) {
            linalg::axpy(1.0, g, sum);
        }
    }
    total
}

/// [`epoch_gradients`] over one task's rows, in the widest SIMD the CPU has.
struct RowGradients<'a> {
    z: &'a [f32],
    targets: &'a [(f32, f32)],
    params: &'a [&'a [f32]],
    grads: &'a mut [Vec<f32>],
}

impl pulp::WithSimd for RowGradients<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let d = self.z.len() / self.targets.len().max(1);
        // Four rows at a time: each weight and gradient chunk is loaded once for the four.
        let quads = self.z.chunks_exact(4 * d).zip(self.targets.chunks_exact(4));
        let rest = (quads.clone().count() * 4)..self.targets.len();
        for (z, t) in quads {
            let rows = [&z[..d], &z[d..2 * d], &z[2 * d..3 * d], &z[3 * d..]];
            for (p, g) in self.params.iter().zip(self.grads.iter_mut()) {
                let (w, b) = p.split_at(d);
                let z = linalg::dot4_simd(simd, w, rows);
                let errs = [
                    (sigmoid(z[0] + b[0]) - t[0].0) * t[0].1,
                    (sigmoid(z[1] + b[0]) - t[1].0) * t[1].1,
                    (sigmoid(z[2] + b[0]) - t[2].0) * t[2].1,
                    (sigmoid(z[3] + b[0]) - t[3].0) * t[3].1,
                ];
                let (g, g_bias) = g.split_at_mut(d);
                linalg::axpy4_simd(simd, errs, rows, g);
                g_bias[0] += errs[0];
                g_bias[0] += errs[1];
                g_bias[0] += errs[2];
                g_bias[0] += errs[3];
            }
        }
        for i in rest {
            let (row, (y, weight)) = (&self.z[i * d..(i + 1) * d], self.targets[i]);
            for (p, g) in self.params.iter().zip(self.grads.iter_mut()) {
                let err = (sigmoid(linalg::dot_simd(simd, &p[..d], row) + p[d]) - y) * weight;
                linalg::axpy_simd(simd, err, row, &mut g[..d]);
                g[d] += err;
            }
        }
    }
}

/// Adam's moments for a flat parameter vector whose first `penalised` entries carry an L2
/// penalty (the weights, not the bias): the one optimiser of the linear and attention probes.
pub(crate) struct Adam {
    penalised: usize,
    l2: f32,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Adam {
    pub(crate) fn new(n: usize, penalised: usize, l2: f32) -> Self {
        Self {
            penalised,
            l2,
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }

    /// Adds the L2 penalty's gradient to `g` and takes step `step` (from 1) of `params`.
    pub(crate) fn step(&mut self, params: &mut [f32], g: &mut [f32], step: usize, lr: f32) {
        let k = self.penalised;
        for (gi, pi) in g[..k].iter_mut().zip(&params[..k]) {
            *gi += self.l2 * pi;
        }
        let (b1, b2) = (0.9f32, 0.999f32);
        let (c1, c2) = (1.0 - b1.powi(step as i32), 1.0 - b2.powi(step as i32));
        for ((p, g), (m, v)) in params
            .iter_mut()
            .zip(g.iter())
            .zip(self.m.iter_mut().zip(self.v.iter_mut()))
        {
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            *p -= lr * (*m / c1) / ((*v / c2).sqrt() + 1e-8);
        }
    }
}

/// Every token of `samples` standardised, `(x − μ)·s`, one row each, with its target and loss
/// weight: made once, since neither changes between epochs. Each class weighs half, whatever
/// its size (class-balanced), shared by sample weight; each text the same whatever its length.
fn standardised_rows(
    samples: &[&Sample],
    d: usize,
    mean: &[f32],
    scale: f32,
) -> (Vec<f32>, Vec<(f32, f32)>) {
    let (pos, neg) = class_totals(samples.iter().map(|s| (s.label, s.weight)));
    let tokens: usize = samples.iter().map(|s| s.x.len() / d).sum();
    let (mut z, mut targets) = (Vec::with_capacity(tokens * d), Vec::with_capacity(tokens));
    for s in samples {
        let n = s.x.len() / d;
        let weight = 0.5 * s.weight / if s.label { pos } else { neg } / n as f32;
        // With token labels, the labelled-positive tokens weigh as one positive text and
        // the rest as one negative text.
        let split = s.token_labels.as_ref().map(|l| {
            let p = l.iter().filter(|&&v| v).count().max(1) as f32;
            let q = (l.len() as f32 - p).max(1.0);
            (0.5 * s.weight / pos / p, 0.5 * s.weight / neg / q)
        });
        for (i, t) in s.x.chunks(d).enumerate() {
            z.extend(t.iter().zip(mean).map(|(x, mu)| (x - mu) * scale));
            targets.push(match (&s.token_labels, split) {
                (Some(l), Some((wp, _))) if l[i] => (1.0, wp),
                (Some(_), Some((_, wn))) => (0.0, wn),
                _ => (f32::from(u8::from(s.label)), weight),
            });
        }
    }
    (z, targets)
}

/// The mean token of `texts` (each `[tokens, d]`) and one scale for every dimension, 1 / the
/// pooled standard deviation: probes train on `(x − μ)·s`, where one learning rate suits any
/// model's activation scale.
pub(crate) fn standardisation<'a>(
    texts: impl Iterator<Item = &'a [f32]> + Clone,
    d: usize,
) -> (Vec<f32>, f32) {
    let tokens: usize = texts.clone().map(|x| x.len() / d).sum();
    let mut mean = vec![0f32; d];
    for t in texts.clone().flat_map(|x| x.chunks(d)) {
        linalg::axpy(1.0 / tokens.max(1) as f32, t, &mut mean);
    }
    let var: f32 = texts
        .flat_map(|x| x.chunks(d))
        .map(|t| {
            t.iter()
                .zip(&mean)
                .map(|(x, m)| (x - m) * (x - m))
                .sum::<f32>()
        })
        .sum::<f32>()
        / (tokens * d).max(1) as f32;
    (mean, 1.0 / var.sqrt().max(1e-6))
}

/// The total sample weight of each class, (positive, negative), never zero: a class-balanced
/// loss divides each sample's weight by its class's.
pub(crate) fn class_totals(samples: impl Iterator<Item = (bool, f32)>) -> (f32, f32) {
    let (pos, neg) = samples.fold(
        (0f32, 0f32),
        |(p, n), (label, w)| {
            if label {
                (p + w, n)
            } else {
                (p, n + w)
            }
        },
    );
    (pos.max(f32::MIN_POSITIVE), neg.max(f32::MIN_POSITIVE))
}

fn accuracy(labels: &[bool], predicted: &[bool]) -> f32 {
    labels.iter().zip(predicted).filter(|(a, b)| a == b).count() as f32 / labels.len().max(1) as f32
}

/// ½·(true-positive rate + true-negative rate): 0.5 is chance whatever the class balance.
/// With one class present, that class's accuracy.
pub fn balanced_accuracy(truth: &[bool], predicted: &[bool]) -> f32 {
    let rate = |class: bool| {
        let n = truth.iter().filter(|&&t| t == class).count();
        let hit = truth
            .iter()
            .zip(predicted)
            .filter(|(&t, &p)| t == class && p == class)
            .count();
        (n > 0).then(|| hit as f32 / n as f32)
    };
    match (rate(true), rate(false)) {
        (Some(a), Some(b)) => (a + b) / 2.0,
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Texts whose tokens are noise plus, for positives, a shift along one axis.
    fn samples(shift: f32) -> Vec<Sample> {
        let d = 6;
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        (0..40)
            .map(|i| {
                let label = i % 3 == 0;
                let x = (0..3 * d)
                    .map(|j| {
                        let noise: f32 = rand::Rng::random_range(&mut rng, -1.0..1.0);
                        noise + if j % d == 2 && label { shift } else { 0.0 }
                    })
                    .collect();
                Sample::new(x, label)
            })
            .collect()
    }

    /// A grid of penalties fitted together gives, penalty by penalty, the very probe a fit
    /// at that penalty alone gives (they share the pass over the rows, nothing else).
    #[test]
    fn penalties_fitted_together_are_each_the_fit_alone() {
        let mut data = samples(1.5);
        data[4].token_labels = Some(vec![true, false, true]);
        data[7] = data[7].clone().weighted(3.0);
        let refs: Vec<&Sample> = data.iter().collect();
        let l2s = [0.001, 0.5, 2.0];
        let together = fit_penalties(&refs, 6, &ProbeTraining::default(), &l2s);
        assert_eq!(together.len(), 3);
        for (&l2, (w, b)) in l2s.iter().zip(&together) {
            let cfg = ProbeTraining {
                l2,
                ..ProbeTraining::default()
            };
            let (w_alone, b_alone) = fit(&refs, 6, &cfg);
            assert_eq!(b.to_bits(), b_alone.to_bits(), "l2 {l2}");
            assert!(w
                .iter()
                .zip(&w_alone)
                .all(|(x, y)| x.to_bits() == y.to_bits()));
        }
        // The penalty does something: the weights shrink as it grows.
        let norm = |w: &[f32]| w.iter().map(|x| x * x).sum::<f32>();
        assert!(norm(&together[0].0) > norm(&together[1].0));
        assert!(norm(&together[1].0) > norm(&together[2].0));
        assert!(fit_penalties(&refs, 6, &ProbeTraining::default(), &[]).is_empty());
    }

    /// With no weights to learn (d = 0) the fit is its balanced bias, 0, and does not panic.
    #[test]
    fn a_fit_without_features_is_its_balanced_bias() {
        let data: Vec<Sample> = (0..9)
            .map(|i| Sample::new(Vec::new(), i % 3 == 0))
            .collect();
        let refs: Vec<&Sample> = data.iter().collect();
        assert_eq!(fit(&refs, 0, &ProbeTraining::default()), (Vec::new(), 0.0));
        let two = fit_penalties(&refs, 0, &ProbeTraining::default(), &[0.1, 1.0]);
        assert_eq!(two, vec![(Vec::new(), 0.0); 2]);
    }

    #[test]
    fn text_scores_aggregate_tokens_three_ways() {
        // One feature, weight 1, bias 0: token logits are the values themselves.
        let p = Probe {
            calibration: None,
            dictionary: None,
            name: "p".into(),
            model: "m".into(),
            hook: "h".into(),
            weights: vec![1.0],
            bias: 0.0,
            metrics: None,
        };
        // A one-token spike against two persistent tokens.
        let spike = p.text_scores(&[-4.0, 6.0, -4.0, -4.0], 2);
        let steady = p.text_scores(&[-4.0, 2.0, 2.0, -4.0], 2);
        assert!(spike.max > steady.max);
        assert!(steady.window > spike.window);
        assert!((steady.window - sigmoid(2.0)).abs() < 1e-6);
        assert!((spike.mean_logit - (-1.5)).abs() < 1e-6 && spike.max_logit == 6.0);
        // A window longer than the text is the whole text.
        let short = p.text_scores(&[1.0], 8);
        assert_eq!((short.tokens, short.window), (1, sigmoid(1.0)));
        assert_eq!("window4".parse(), Ok(Aggregation::Window { tokens: 4 }));
        assert!("window0".parse::<Aggregation>().is_err());
    }

    fn calibration(aggregation: Aggregation, threshold: f32, or_keywords: bool) -> Calibration {
        Calibration {
            aggregation,
            threshold,
            target_fpr: 0.01,
            fpr: 0.01,
            tpr: 0.5,
            data: "d".into(),
            data_sha256: String::new(),
            positives: 1,
            negatives: 1,
            or_keywords,
        }
    }

    #[test]
    fn a_mean_logit_threshold_is_a_logit_beyond_where_probabilities_saturate() {
        // A text at logit 20 and one at 25: their f32 probabilities are both exactly 1.
        let scores = |z: f32| scores_of_logits(&[z, z], 2);
        assert_eq!(sigmoid(20.0), sigmoid(25.0));
        let c = calibration(Aggregation::MeanLogit, 22.0, false);
        assert!(!c.flags(&scores(20.0), 0.0) && c.flags(&scores(25.0), 0.0));
        assert_eq!(c.rule("inj"), "mean(logit inj) > 22");
        // The file names the scale, and reads back the same.
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["threshold_scale"], "logit");
        assert_eq!(serde_json::from_value::<Calibration>(json).unwrap(), c);
        let window = calibration(Aggregation::Window { tokens: 4 }, 0.9, false);
        let json = serde_json::to_value(&window).unwrap();
        assert_eq!(json["threshold_scale"], "probability");
        // A union with the keyword filter: a hit flags a text far below the threshold.
        let union = calibration(Aggregation::MeanLogit, 22.0, true);
        assert!(union.flags(&scores(-500.0), 1.0) && !union.flags(&scores(-500.0), 0.0));
        assert_eq!(union.rules("inj"), ["mean(logit inj) > 22", "keywords > 0"]);
        assert_eq!(union.keyword_clause(), ", or any keyword pattern");
        // Held to a share of the budget, the union's threshold can lie above a hit's worth:
        // only a hit whose probe reading passes the rest flags, as one rule says.
        let above = calibration(Aggregation::MeanLogit, LOGIT_KEYWORD_HIT + 3.25, true);
        assert!(above.flags(&scores(3.5), 1.0) && !above.flags(&scores(3.0), 1.0));
        assert!(!above.flags(&scores(50.0), 0.0));
        assert_eq!(
            above.rules("inj"),
            ["mean(logit inj) > 3.25 and keywords > 0"]
        );
        assert!(above
            .keyword_clause()
            .contains("a keyword hit with mean_logit > 3.2500"));
        assert!(c.rules("inj").len() == 1 && c.keyword_clause().is_empty());
    }

    #[test]
    fn an_old_mean_logit_threshold_reads_as_the_logit_it_stood_for() {
        // Written before thresholds named their scale: a `mean_logit` one was a probability.
        let old = |threshold: f32, or_keywords: bool| {
            let mut json =
                serde_json::to_value(calibration(Aggregation::MeanLogit, threshold, or_keywords))
                    .unwrap();
            json.as_object_mut().unwrap().remove("threshold_scale");
            serde_json::from_value::<Calibration>(json)
                .unwrap()
                .threshold
        };
        // The shipped SmolLM2 probe's, and its rule's printed logit.
        assert!((old(0.999_990_46, true) - 11.560_349).abs() < 1e-4);
        assert!((old(0.5, false)).abs() < 1e-6);
        // Above a keyword hit in a union: a hit plus the probability's logit.
        assert!((old(2.5, true) - LOGIT_KEYWORD_HIT).abs() < 1e-2);
        // A probability reading keeps its threshold; a scale that contradicts it is an error.
        let mut json = serde_json::to_value(calibration(Aggregation::Max, 0.9, false)).unwrap();
        json["threshold_scale"] = "logit".into();
        let err = serde_json::from_value::<Calibration>(json).unwrap_err();
        assert!(
            err.to_string()
                .contains("a max threshold is a probability, but this one says it is a logit"),
            "{err}"
        );
    }

    /// A probe on latents reads a text's codes, each token's logit `w·f + b` (so its mean logit
    /// is the probe on the mean code), and only with the dictionary it names.
    #[test]
    fn a_probe_on_latents_reads_codes_through_its_own_dictionary() {
        let cfg = crate::DictConfig::sae(crate::Activation::TopK { k: 2 }, 4, 8, "m", "h");
        let sae = Sae::init(cfg, 3).unwrap();
        let p = Probe {
            calibration: None,
            dictionary: Some(ProbeDictionary {
                sha256: "ab".repeat(32),
                path: "dicts/l3".into(),
            }),
            name: "p".into(),
            model: "m".into(),
            hook: "h".into(),
            weights: (0..8).map(|j| j as f32 - 3.5).collect(),
            bias: -0.25,
            metrics: None,
        };
        let x: Vec<f32> = (0..12).map(|i| ((i * 7) % 5) as f32 - 2.0).collect();
        let codes = sae.encode(&x).unwrap();
        let dense: Vec<f32> = codes
            .rows
            .iter()
            .flat_map(|r| {
                let mut row = vec![0.0; 8];
                r.iter().for_each(|&(j, v)| row[j as usize] = v);
                row
            })
            .collect();
        let read = p.read_text(&x, Some(&sae), 2).unwrap();
        assert_eq!(read, p.text_scores(&dense, 2));
        assert!(codes.rows.iter().any(|r| !r.is_empty()));
        let missing = p.read_text(&x, None, 2).unwrap_err().to_string();
        assert!(missing.contains("dicts/l3"), "{missing}");
        assert!(p.check_dictionary(&sae, &"ab".repeat(32), "d").is_ok());
        let other = p.check_dictionary(&sae, &"cd".repeat(32), "d").unwrap_err();
        assert!(other.to_string().contains("another one"), "{other}");
        let plain = Probe {
            dictionary: None,
            ..p
        };
        assert!(plain.check_dictionary(&sae, &"ab".repeat(32), "d").is_err());
    }

    /// The probe finds a separating axis held-out, and nothing where there is only noise.
    #[test]
    fn separates_what_is_separable_and_not_noise() {
        let samples = samples(1.5);
        let (w, b, m) = train(&samples, 6, &ProbeTraining::default()).unwrap();
        assert!(m.heldout_balanced_accuracy >= 0.9, "{m:?}");
        assert!(w[2] > 0.0 && w[2].abs() > 3.0 * w[0].abs(), "{w:?}");
        let p = Probe {
            calibration: None,
            dictionary: None,
            name: "p".into(),
            model: "m".into(),
            hook: "h".into(),
            weights: w,
            bias: b,
            metrics: None,
        };
        assert!(p.score_text(&samples[0].x) > 0.5 && p.score_text(&samples[1].x) < 0.5);
        let (_, _, noise) = train(&self::samples(0.0), 6, &ProbeTraining::default()).unwrap();
        assert!(noise.heldout_balanced_accuracy < 0.7, "{noise:?}");
    }

    /// A positive text whose signal sits in two of its eight tokens (a buried instruction):
    /// with token labels the probe learns that axis, not the document around it.
    #[test]
    fn sample_weights_shift_the_fit_toward_the_small_family() {
        // Thirty attacks signal on axis 0; three on axis 1, where benign texts sit close by.
        let d = 3;
        let mut samples = Vec::new();
        for i in 0..30 {
            let j = i as f32 * 0.01;
            samples.push((Sample::new(vec![1.0 + j, 0.6 + j, j], true), 30));
            samples.push((Sample::new(vec![0.0, 0.6 + j, j - 0.1], false), 30));
        }
        let small = [
            vec![0.0, 1.0, 0.0],
            vec![0.0, 1.05, 0.01],
            vec![0.0, 1.1, 0.02],
        ];
        for x in &small {
            samples.push((Sample::new(x.clone(), true), 3));
        }
        // The mean probability the fit gives the small family's attacks.
        let recall = |weigh: bool| {
            let weighted: Vec<Sample> = samples
                .iter()
                .map(|(s, n)| {
                    let w = if weigh { 1.0 / *n as f32 } else { 1.0 };
                    Sample::new(s.x.clone(), s.label).weighted(w)
                })
                .collect();
            let refs: Vec<&Sample> = weighted.iter().collect();
            let (w, b) = fit(&refs, d, &ProbeTraining::default());
            small
                .iter()
                .map(|x| sigmoid(linalg::dot(&w, x) + b))
                .sum::<f32>()
                / 3.0
        };
        let (plain, balanced) = (recall(false), recall(true));
        assert!(
            balanced > plain + 0.1,
            "small family's mean probability {plain} -> {balanced}"
        );
    }

    #[test]
    fn token_labels_teach_the_span_not_the_document() {
        let d = 4;
        let token = |signal: f32, doc: f32| vec![doc, 0.1, signal, -0.1];
        let mut samples = Vec::new();
        for i in 0..20 {
            let jitter = i as f32 * 0.01;
            // Attack: a document (axis 0 = 1) with a two-token instruction (axis 2).
            let x: Vec<f32> = (0..8)
                .flat_map(|t| token(if (3..5).contains(&t) { 2.0 } else { 0.0 }, 1.0 + jitter))
                .collect();
            let labels = (0..8).map(|t| (3..5).contains(&t)).collect();
            samples.push(Sample {
                x,
                label: true,
                token_labels: Some(labels),
                weight: 1.0,
            });
            // Benign: plain questions (no document, no instruction).
            samples.push(Sample::new(
                (0..8).flat_map(|_| token(0.0, jitter)).collect(),
                false,
            ));
        }
        let refs: Vec<&Sample> = samples.iter().collect();
        let (w, _) = fit(&refs, d, &ProbeTraining::default());
        // The instruction axis carries the weight; the document axis does not flag.
        assert!(w[2] > 2.0 * w[0].abs(), "{w:?}");
        // Without token labels, the document axis is as good a separator and gets weight.
        let plain: Vec<Sample> = samples
            .iter()
            .map(|s| Sample::new(s.x.clone(), s.label))
            .collect();
        let refs: Vec<&Sample> = plain.iter().collect();
        let (w_plain, _) = fit(&refs, d, &ProbeTraining::default());
        assert!(w_plain[0] > w[0], "{w_plain:?} vs {w:?}");
    }

    #[test]
    fn balanced_accuracy_weighs_both_classes() {
        let t = [true, true, false, false, false, false];
        assert_eq!(balanced_accuracy(&t, &t), 1.0);
        assert_eq!(balanced_accuracy(&t, &[true; 6]), 0.5);
        assert_eq!(
            balanced_accuracy(&t, &[true, false, false, false, false, false]),
            0.75
        );
        assert_eq!(balanced_accuracy(&[false, false], &[false, true]), 0.5);
    }

    #[test]
    fn one_class_is_refused() {
        let s = vec![Sample::new(vec![0.0; 4], true); 3];
        assert!(train(&s, 4, &ProbeTraining::default())
            .unwrap_err()
            .to_string()
            .contains("both labels"));
    }
}
