//! `glassbox probe train | score | eval`: a linear probe on a hook from labelled texts, for
//! monitors (`probe NAME > 0.9`) and analyses; its scores on any JSONL of texts; and how well
//! it separates labelled texts (AUROC, TPR at fixed FPR, per family), with the threshold for a
//! target false-positive rate written back into the probe.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use glassbox_analysis::catalog::taxonomy::Taxonomy;
use glassbox_dictionary::keywords::KeywordFilter;
use glassbox_dictionary::probe::{
    self, Aggregation, Calibration, Probe, ProbeTraining, Sample, TextScores,
};
use glassbox_dictionary::roc::{rate_interval, Scored, Summary};
use glassbox_dictionary::sentence_probe::{self, PieceScore, SentenceProbe};
use glassbox_model::Reader;
use glassbox_serve::config::InputConfig;
use glassbox_serve::input::TextSignals;
use glassbox_store::fsutil::sha256_file;
use serde_json::{json, Value};

use crate::input;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Train a logistic-regression probe on a hook's per-token activations from labelled texts;
    /// reports cross-validated (held-out) accuracy and saves DIR/probe.json.
    Train(TrainArgs),
    /// Score texts (JSON lines `{"text": …}`) with a probe: per text the mean, max and
    /// windowed token probability and the mean and max logit (a sentence probe: the same over
    /// the text's pieces, its whole and each sentence; its score is the max logit, less
    /// piece_scale·ln(pieces) for a probe saved with `--discount-pieces`).
    Score(ScoreArgs),
    /// Evaluate a probe on labelled texts (`{"text": …, "label": 0|1, "family": …}`): AUROC
    /// with a 95 % bootstrap interval, TPR at 1 % and 5 % FPR for each aggregation, the
    /// threshold for a target FPR and detection per family; `--calibrate FPR` saves that
    /// threshold in the probe.
    Eval(EvalArgs),
    /// Leave-one-family-out: train a probe without each family of labelled texts and score
    /// that family, with a keyword filter and logistic regression on MiniLM's sentence
    /// embedding as baselines in the same run; `--out` saves the probe trained on all of them.
    Families(super::families::FamiliesArgs),
}

/// A probe and the texts it reads (score and eval).
#[derive(clap::Args)]
pub struct ProbeOnTexts {
    /// The probe directory (or its probe.json): a token probe, or a sentence probe
    /// (sentence_probe.json, from `probe families --segments --out`), read on sentences.
    #[arg(long)]
    probe: PathBuf,
    /// Texts: JSON lines `{"text": …}`, with `"label": 0|1` (eval needs it) and optionally
    /// `"family": …`.
    #[arg(long)]
    data: PathBuf,
    /// Tokens per window of the windowed score.
    #[arg(long, default_value_t = 4)]
    window: usize,
    /// Fold lookalike characters (homoglyphs, fullwidth and mathematical letters, zero-width
    /// characters inside words) before reading, as a deployment with `[input]
    /// fold_lookalikes = true` does; says how many texts it changed.
    #[arg(long)]
    fold_lookalikes: bool,
    /// The dictionary a probe on latents reads (the one `probe families --dict` trained it
    /// on, checked by the SHA-256 the probe records).
    #[arg(long, value_name = "DIR")]
    dict: Option<PathBuf>,
    #[command(flatten)]
    long: LongTexts,
}

/// How texts longer than one forward pass are read (probe score, eval and families).
#[derive(clap::Args, Clone, Copy)]
pub struct LongTexts {
    /// Tokens per forward pass (default and most: the model's context). A longer text is read
    /// whole in passes that overlap by a quarter, so an injection at the end of a long
    /// document is read too.
    #[arg(long, value_name = "TOKENS")]
    pub max_tokens: Option<usize>,
    /// Read only a long text's first pass instead of all of it (faster; misses what follows).
    #[arg(long)]
    pub truncate: bool,
}

#[derive(clap::Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    on: ProbeOnTexts,
    /// A sentence probe: show which pieces of each text scored (the table: its 3 highest,
    /// with their logits and kinds; --json: every piece in reading order, with its number — 0
    /// the whole, n the n-th sentence — and byte offsets), i.e. which sentence made a text
    /// flag. A probe that reads wholes only where they fit shows no whole for a text MiniLM cuts.
    #[arg(long)]
    pieces: bool,
}

/// Pieces the table shows per text with --pieces.
const TOP_PIECES: usize = 3;

#[derive(clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    on: ProbeOnTexts,
    /// The aggregation whose threshold and per-family detection are reported (mean, max or
    /// windowN; default: the probe's calibrated one, else window; a sentence probe reads
    /// `sentences`, its highest logit over the text and each sentence).
    #[arg(long)]
    aggregate: Option<Aggregation>,
    /// The false-positive rate the reported threshold keeps to.
    #[arg(long, default_value_t = 0.01)]
    target_fpr: f64,
    /// Save the threshold for this false-positive rate in the probe (its monitors' rule).
    #[arg(long, value_name = "FPR")]
    calibrate: Option<f64>,
    /// Every text is benign traffic (no label, or label 0), e.g. a sample of a deployment's
    /// own requests: report the share the probe's rule flags and, with `--calibrate FPR`, set
    /// the threshold from these texts alone (no AUROC or TPR without attacks). A probe
    /// calibrated on the traffic it will serve keeps its false alarms where they were measured.
    #[arg(long)]
    benign: bool,
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// A packaged model name (`minilm`) or a model directory.
    #[arg(long)]
    model: String,
    /// The hook point read, e.g. blocks.3.hook_resid_pre.
    #[arg(long)]
    hook: String,
    /// Labelled texts: JSON lines `{"text": "...", "label": true}` (label true/false or 1/0).
    #[arg(long, conflicts_with = "concept")]
    data: Option<PathBuf>,
    /// Or a taxonomy concept: its examples are positive, the taxonomy's controls and the
    /// other concepts' examples negative.
    #[arg(long, requires = "taxonomy")]
    concept: Option<String>,
    /// The taxonomy for --concept (e.g. taxonomy/default.toml).
    #[arg(long)]
    taxonomy: Option<PathBuf>,
    /// The probe's name in monitor rules (default: the concept or the data file's stem).
    #[arg(long)]
    name: Option<String>,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Cross-validation folds.
    #[arg(long, default_value_t = 5)]
    folds: usize,
}

pub fn run(cmd: Command, device: &str, json_out: bool) -> Result<()> {
    match cmd {
        Command::Train(a) => train(a, device, json_out),
        Command::Score(a) => score(a, device, json_out),
        Command::Eval(a) => eval(a, device, json_out),
        Command::Families(a) => super::families::run(a, device, json_out),
    }
}

fn train(a: TrainArgs, device: &str, json_out: bool) -> Result<()> {
    let (texts, default_name) = labelled_texts(&a)?;
    let model = input::load_model(&a.model, device)?;
    let reader = Reader::new(&model, &a.hook)?;
    let mut samples = Vec::with_capacity(texts.len());
    for (i, (text, label)) in texts.iter().enumerate() {
        let x = reader
            .activations(text)
            .with_context(|| format!("text {}", i + 1))?;
        samples.push(Sample::new(x, *label));
    }
    let cfg = ProbeTraining {
        folds: a.folds,
        ..Default::default()
    };
    let (weights, bias, metrics) = probe::train(&samples, model.config.d_model, &cfg)?;
    let p = Probe {
        name: a.name.clone().unwrap_or(default_name),
        model: a.model.clone(),
        hook: a.hook.clone(),
        weights,
        bias,
        metrics: Some(metrics.clone()),
        calibration: None,
        dictionary: None,
    };
    p.save(&a.out)?;
    if json_out {
        println!(
            "{}",
            json!({"probe": p.name, "out": a.out, "metrics": metrics})
        );
    } else {
        println!(
            "probe `{}` on {} at {}: {} texts ({} positive); held-out ({}-fold) accuracy {:.3}, balanced {:.3}; train accuracy {:.3}\nsaved {}",
            p.name,
            a.model,
            a.hook,
            metrics.texts,
            metrics.positives,
            metrics.folds,
            metrics.heldout_accuracy,
            metrics.heldout_balanced_accuracy,
            metrics.train_accuracy,
            a.out.join(probe::FILE).display()
        );
    }
    Ok(())
}

fn labelled_texts(a: &TrainArgs) -> Result<(Vec<(String, bool)>, String)> {
    if let (Some(concept), Some(path)) = (&a.concept, &a.taxonomy) {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let t = Taxonomy::parse(&text, &path.display().to_string())?;
        if !t.concepts.iter().any(|c| &c.name == concept) {
            let names: Vec<&str> = t.concepts.iter().map(|c| c.name.as_str()).collect();
            bail!(
                "{} has no concept `{concept}`; it has {}",
                path.display(),
                names.join(", ")
            );
        }
        let mut out: Vec<(String, bool)> = t.controls.iter().map(|s| (s.clone(), false)).collect();
        for c in &t.concepts {
            out.extend(c.examples.iter().map(|s| (s.clone(), &c.name == concept)));
        }
        return Ok((out, concept.clone()));
    }
    let Some(path) = &a.data else {
        bail!("give labelled texts with --data FILE.jsonl, or --taxonomy T --concept C");
    };
    let out = read_records(path)?
        .into_iter()
        .map(|r| r.labelled(path))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .map(|l| (l.text, l.label))
        .collect();
    let stem = path
        .file_stem()
        .map_or("probe".into(), |s| s.to_string_lossy().into_owned());
    Ok((out, stem))
}

/// One line of a JSONL text file.
pub(crate) struct Record {
    line: usize,
    text: String,
    label: Option<bool>,
    family: Option<String>,
    kind: Option<String>,
    span: Option<(usize, usize)>,
}

/// A record whose label is known.
pub(crate) struct Labelled {
    pub text: String,
    pub label: bool,
    /// The record's family, else "positive" / "negative".
    pub family: String,
    /// What kind of attack it is, where the record says ("jailbreak", "injection", …).
    pub kind: Option<String>,
    /// The part of the text that makes it positive, `[start, end)` in bytes, where known.
    pub span: Option<(usize, usize)>,
}

impl Record {
    pub(crate) fn labelled(&self, path: &Path) -> Result<Labelled> {
        let label = self.label.with_context(|| {
            format!(
                "{}, line {}: no \"label\" (0 or 1) to evaluate against",
                path.display(),
                self.line
            )
        })?;
        let family = self
            .family
            .clone()
            .unwrap_or_else(|| if label { "positive" } else { "negative" }.into());
        Ok(Labelled {
            text: self.text.clone(),
            label,
            family,
            kind: self.kind.clone(),
            span: self.span,
        })
    }

    /// The record as benign traffic (no label, or 0) in family "traffic" unless it names one;
    /// a text labelled 1 is an error naming `option`, the flag that reads benign traffic only,
    /// and saying how to fix it (`fix`).
    pub(crate) fn traffic(&self, path: &Path, option: &str, fix: &str) -> Result<Labelled> {
        if self.label == Some(true) {
            bail!(
                "{}, line {}: {option} reads benign traffic only, and this text is labelled 1; {fix}",
                path.display(),
                self.line
            );
        }
        Ok(Labelled {
            text: self.text.clone(),
            label: false,
            family: self.family.clone().unwrap_or_else(|| "traffic".into()),
            kind: None,
            span: None,
        })
    }

    /// The record as a deployment is sent it: labelled where it says, else benign traffic
    /// (family "traffic" unless it names one; a labelled one's default is "positive" /
    /// "negative").
    pub(crate) fn sent(&self) -> Labelled {
        let family = self.family.clone().unwrap_or_else(|| {
            match self.label {
                Some(true) => "positive",
                Some(false) => "negative",
                None => "traffic",
            }
            .into()
        });
        Labelled {
            text: self.text.clone(),
            label: self.label.unwrap_or(false),
            family,
            kind: self.kind.clone(),
            span: self.span,
        }
    }
}

/// `probe eval --benign`: benign traffic only. The share the probe's rule flags, per family,
/// and with `--calibrate` the threshold that keeps it at the target, saved in the probe.
fn eval_traffic(a: &EvalArgs, records: &[Record], device: &str, json_out: bool) -> Result<()> {
    let traffic = records
        .iter()
        .map(|r| {
            r.traffic(
                &a.on.data,
                "--benign",
                "drop --benign to evaluate against attacks",
            )
        })
        .collect::<Result<Vec<_>>>()?;
    // The rule is checked before the (long) scoring.
    let mut probe = AnyProbe::load(&a.on.probe)?;
    let before = probe.calibration().cloned();
    if before.is_none() && a.calibrate.is_none() {
        bail!(
            "probe {} has no threshold to check; add --calibrate FPR (e.g. 0.01) to set one from these texts",
            a.on.probe.display()
        );
    }
    let aggregation = probe.judged_by(a.aggregate, a.on.window)?;
    if let (Some(c), None) = (&before, a.calibrate) {
        if c.aggregation != aggregation {
            bail!(
                "probe {} reads its rule as {}; checking it as {} needs a threshold for that: add --calibrate FPR",
                a.on.probe.display(),
                c.aggregation.label(),
                aggregation.label()
            );
        }
    }
    let (scores, _) = score_records(&a.on, &probe, records, device)?;
    let or_keywords = before.as_ref().is_some_and(|c| c.or_keywords);
    let judged: Vec<f32> = scores
        .iter()
        .map(|(s, k, _)| aggregation.flag_score(s, *k, or_keywords))
        .collect();
    let share = |t: f32| judged.iter().filter(|&&v| v > t).count() as f64 / judged.len() as f64;
    // The rule as it stood, where it reads these scores the same way.
    let flagged_before = before
        .as_ref()
        .filter(|c| c.aggregation == aggregation)
        .map(|c| share(c.threshold));
    if let Some(fpr) = a.calibrate {
        let threshold = glassbox_dictionary::roc::threshold_for_fpr(&judged, fpr);
        let c = Calibration {
            aggregation,
            threshold,
            target_fpr: fpr,
            fpr: share(threshold),
            tpr: 0.0,
            data: format!("{} (benign traffic)", a.on.data.display()),
            data_sha256: sha256_file(&a.on.data)?,
            positives: 0,
            negatives: judged.len(),
            or_keywords,
        };
        probe.calibrate(c, &a.on.probe)?;
    }
    let c = probe
        .calibration()
        .cloned()
        .context("a threshold was set or loaded above")?;
    let mut families: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (t, v) in traffic.into_iter().zip(&judged) {
        let e = families.entry(t.family).or_default();
        e.0 += usize::from(*v > c.threshold);
        e.1 += 1;
    }
    let by_length = flagged_by_length(&lengths(records), &judged, c.threshold);
    if json_out {
        let families: Vec<Value> = families
            .iter()
            .map(|(f, (hit, n))| {
                json!({"family": f, "flagged": hit, "texts": n, "rate": *hit as f64 / *n as f64})
            })
            .collect();
        println!(
            "{}",
            json!({"probe": probe.name(), "texts": judged.len(), "threshold": c.threshold,
                "flagged": share(c.threshold), "flagged_before": flagged_before,
                "threshold_before": before.as_ref().map(|b| b.threshold),
                "calibrated": a.calibrate.is_some(), "families": families,
                "by_length": by_length, "rules": c.rules(probe.name())})
        );
        return Ok(());
    }
    println!(
        "probe `{}` on {} benign texts from {}",
        probe.name(),
        judged.len(),
        a.on.data.display()
    );
    if let (Some(b), Some(f), Some(_)) = (&before, flagged_before, a.calibrate) {
        println!(
            "its rule before: {} > {:.4} flags {:.2} % of them",
            aggregation.label(),
            b.threshold,
            100.0 * f
        );
    }
    println!(
        "{}{} > {:.4} flags {:.2} %{}",
        if a.calibrate.is_some() {
            "calibrated: "
        } else {
            ""
        },
        aggregation.label(),
        c.threshold,
        100.0 * share(c.threshold),
        c.keyword_clause()
    );
    println!("\n{:<28} {:>8} {:>8}", "family", "texts", "flagged");
    for (f, (hit, n)) in &families {
        println!(
            "{:<28} {:>8} {:>7.1}%",
            f,
            n,
            100.0 * *hit as f64 / *n as f64
        );
    }
    // False alarms by length: a reading that takes the highest of a text's pieces or tokens
    // gets more chances to cross its threshold on a long text.
    println!("\n{:<28} {:>8} {:>8}", "characters", "texts", "flagged");
    for b in by_length.iter().filter(|b| b.texts > 0) {
        println!(
            "{:<28} {:>8} {:>7.1}%",
            band_name(b.chars),
            b.texts,
            100.0 * b.flagged as f64 / b.texts as f64
        );
    }
    if a.calibrate.is_some() {
        print_saved(&a.on.probe, &c, probe.name());
    }
    Ok(())
}

/// A probe of either kind, as `score` and `eval` read it: per token at a hook, or on sentences
/// read alone.
enum AnyProbe {
    Tokens(Probe),
    Sentences(SentenceProbe),
}

impl AnyProbe {
    fn load(path: &Path) -> Result<Self> {
        Ok(if SentenceProbe::is_at(path) {
            Self::Sentences(SentenceProbe::load(path)?)
        } else {
            Self::Tokens(Probe::load(path)?)
        })
    }

    fn name(&self) -> &str {
        match self {
            Self::Tokens(p) => &p.name,
            Self::Sentences(p) => &p.name,
        }
    }

    fn calibration(&self) -> Option<&Calibration> {
        match self {
            Self::Tokens(p) => p.calibration.as_ref(),
            Self::Sentences(p) => p.calibration.as_ref(),
        }
    }

    /// Sets the flag rule and saves the probe where it was read from.
    fn calibrate(&mut self, c: Calibration, path: &Path) -> Result<()> {
        let dir = probe_dir(path);
        match self {
            Self::Tokens(p) => {
                p.calibration = Some(c);
                p.save(&dir)?
            }
            Self::Sentences(p) => {
                p.calibration = Some(c);
                p.save(&dir)?
            }
        }
        Ok(())
    }

    /// The readings reported side by side: a token probe's mean, max and window; a sentence
    /// probe's one.
    fn aggregations(&self, window: usize) -> Vec<Aggregation> {
        match self {
            Self::Tokens(_) => vec![
                Aggregation::Mean,
                Aggregation::Max,
                Aggregation::Window { tokens: window },
            ],
            Self::Sentences(_) => vec![Aggregation::Sentences],
        }
    }

    /// The reading judged: `asked`, else the calibrated one, else the window (a token probe)
    /// or `sentences` (a sentence probe); a reading the probe cannot give is an error.
    fn judged_by(&self, asked: Option<Aggregation>, window: usize) -> Result<Aggregation> {
        let fallback = match self {
            Self::Tokens(_) => Aggregation::Window { tokens: window },
            Self::Sentences(_) => Aggregation::Sentences,
        };
        let chosen = asked
            .or(self.calibration().map(|c| c.aggregation))
            .unwrap_or(fallback);
        match (self, chosen) {
            (Self::Tokens(_), Aggregation::Sentences) => bail!(
                "probe `{}` reads tokens at a hook; `sentences` is a sentence probe's reading (use mean, max, mean_logit or windowN)",
                self.name()
            ),
            (Self::Sentences(_), a) if a != Aggregation::Sentences => bail!(
                "`{}` is a sentence probe: it reads `sentences` (its highest logit over the text and each sentence), not {}",
                self.name(),
                a.label()
            ),
            _ => Ok(chosen),
        }
    }
}

/// The directory a probe path names (the probe.json's folder, or the folder itself).
fn probe_dir(probe: &Path) -> std::path::PathBuf {
    if probe.is_dir() {
        probe.to_path_buf()
    } else {
        probe.parent().map(Path::to_path_buf).unwrap_or_default()
    }
}

/// A record's optional string field (absent or null: none); `at` names the line.
fn optional_string(v: &Value, key: &str, at: &dyn Fn() -> String) -> Result<Option<String>> {
    match &v[key] {
        Value::Null => Ok(None),
        Value::String(f) => Ok(Some(f.clone())),
        other => bail!("{}: \"{key}\" must be a string, not {other}", at()),
    }
}

/// Reads JSON lines `{"text": …, "label": true|false|1|0, "family": …}`; errors name the line.
pub(crate) fn read_records(path: &Path) -> Result<Vec<Record>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = || format!("{}, line {}", path.display(), i + 1);
        let v: Value = serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        let t = v["text"]
            .as_str()
            .with_context(|| format!("{}: no \"text\" string", at()))?;
        let label = match &v["label"] {
            Value::Null => None,
            Value::Bool(b) => Some(*b),
            Value::Number(n) if n.as_f64() == Some(1.0) => Some(true),
            Value::Number(n) if n.as_f64() == Some(0.0) => Some(false),
            other => bail!("{}: \"label\" must be true/false or 1/0, not {other}", at()),
        };
        let family = optional_string(&v, "family", &at)?;
        let kind = optional_string(&v, "kind", &at)?;
        let span = match &v["span"] {
            Value::Null => None,
            Value::Array(a) => match (a.first().and_then(Value::as_u64), a.get(1).and_then(Value::as_u64)) {
                (Some(s), Some(e)) if a.len() == 2 && s < e && e as usize <= t.len()
                    && t.is_char_boundary(s as usize) && t.is_char_boundary(e as usize) =>
                {
                    Some((s as usize, e as usize))
                }
                _ => bail!(
                    "{}: \"span\" must be [start, end) byte offsets inside the text ({} bytes), not {}",
                    at(),
                    t.len(),
                    v["span"]
                ),
            },
            other => bail!("{}: \"span\" must be [start, end], not {other}", at()),
        };
        out.push(Record {
            line: i + 1,
            text: t.to_string(),
            label,
            family,
            kind,
            span,
        });
    }
    if out.is_empty() {
        bail!("{} holds no texts", path.display());
    }
    Ok(out)
}

/// A record's probe scores, keyword-filter count and text signals.
type Scores = (TextScores, f32, TextSignals);

/// Every record scored by the probe (with progress on long files), and for a sentence probe
/// each record's pieces (none for a token probe).
fn score_records(
    on: &ProbeOnTexts,
    probe: &AnyProbe,
    records: &[Record],
    device: &str,
) -> Result<(Vec<Scores>, Vec<Vec<PieceScore>>)> {
    let input = InputConfig {
        fold_lookalikes: on.fold_lookalikes,
    };
    let prepared: Vec<_> = records.iter().map(|r| input.prepare(&r.text)).collect();
    // How many texts (and labelled attacks) hold a text signal: what the `lookalikes` and
    // `encoded` rules would see.
    let holding = |signal: fn(&TextSignals) -> usize| {
        let with = |attacks: bool| {
            records
                .iter()
                .zip(&prepared)
                .filter(|(r, p)| signal(&p.signals) > 0 && (!attacks || r.label == Some(true)))
                .count()
        };
        (with(false), with(true))
    };
    let attacks = records.iter().filter(|r| r.label == Some(true)).count();
    let (lookalikes, encoded) = (holding(|t| t.lookalikes), holding(|t| t.encoded));
    if on.fold_lookalikes {
        eprintln!(
            "folded lookalikes in {} of {} texts ({} of {attacks} labelled attacks)",
            lookalikes.0,
            records.len(),
            lookalikes.1,
        );
    }
    eprintln!(
        "text signals: lookalikes in {} of {} texts ({} of {attacks} labelled attacks), encoded words in {} ({} of {attacks})",
        lookalikes.0,
        records.len(),
        lookalikes.1,
        encoded.0,
        encoded.1
    );
    let texts: Vec<(&str, usize)> = prepared
        .iter()
        .zip(records)
        .map(|(p, r)| (p.text.as_ref(), r.line))
        .collect();
    let (read, pieces) = match probe {
        AnyProbe::Tokens(p) => (read_tokens(on, p, &texts, device)?, Vec::new()),
        AnyProbe::Sentences(p) => {
            let model = input::load_model(&p.model, device)?;
            // Many at a time: their pieces share batches (`SentenceProbe::read_texts`).
            scoring(&texts, &on.data, sentence_probe::READ_TOGETHER, |batch| {
                Ok(p.read_pieces_many(&model, batch)?)
            })?
            .into_iter()
            .unzip()
        }
    };
    let keywords = KeywordFilter::default();
    let scores = read
        .into_iter()
        .zip(&prepared)
        .map(|(s, p)| (s, keywords.score(&p.text), p.signals))
        .collect();
    Ok((scores, pieces))
}

/// The texts read by `read`, `chunk` at a time, with a progress bar; errors name the data
/// file's line (or the chunk's lines).
fn scoring<T>(
    texts: &[(&str, usize)],
    data: &Path,
    chunk: usize,
    read: impl Fn(&[&str]) -> Result<Vec<T>>,
) -> Result<Vec<T>> {
    let bar = crate::report::progress(texts.len() as u64, "scoring texts");
    let mut out = Vec::with_capacity(texts.len());
    for part in texts.chunks(chunk) {
        let batch: Vec<&str> = part.iter().map(|(t, _)| *t).collect();
        let (first, last) = (part[0].1, part[part.len() - 1].1);
        out.extend(read(&batch).with_context(|| {
            if first == last {
                format!("{}, line {first}", data.display())
            } else {
                format!("{}, lines {first}–{last}", data.display())
            }
        })?);
        bar.inc(part.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// A token probe's readings of `texts`: its model's activations at its hook (or, for a probe
/// on latents, the codes of the dictionary it was trained on).
fn read_tokens(
    on: &ProbeOnTexts,
    probe: &Probe,
    texts: &[(&str, usize)],
    device: &str,
) -> Result<Vec<TextScores>> {
    let model = input::load_model(&probe.model, device)?;
    let sae = match (&on.dict, &probe.dictionary) {
        (Some(dir), _) => {
            let sae = glassbox_dictionary::saelens::load(dir)?;
            let sha = glassbox_store::fsutil::dictionary_sha256(dir)?;
            probe
                .check_dictionary(&sae, &sha, &format!("--dict {}", dir.display()))
                .map_err(anyhow::Error::msg)?;
            Some(sae)
        }
        (None, Some(d)) => bail!(
            "probe `{}` reads a dictionary's latents; add --dict {} (the dictionary it was trained on)",
            probe.name,
            d.path
        ),
        (None, None) => None,
    };
    let width = sae.as_ref().map_or(probe.weights.len(), |s| s.d_in());
    if model.config.d_model != width {
        bail!(
            "the probe reads {} features but {}'s residual stream has {}",
            width,
            probe.model,
            model.config.d_model
        );
    }
    let reader = Reader::new(&model, &probe.hook)?.passes(on.long.max_tokens, on.long.truncate);
    scoring(texts, &on.data, 1, |batch| {
        let x = reader.activations(batch[0])?;
        Ok(vec![probe.read_text(&x, sae.as_ref(), on.window)?])
    })
}

fn score(a: ScoreArgs, device: &str, json_out: bool) -> Result<()> {
    let records = read_records(&a.on.data)?;
    let probe = AnyProbe::load(&a.on.probe)?;
    if let (true, AnyProbe::Tokens(p)) = (a.pieces, &probe) {
        bail!(
            "--pieces shows a sentence probe's pieces (its text's whole and each sentence); `{}` reads tokens at {} — leave --pieces out",
            p.name,
            p.hook
        );
    }
    let (scores, pieces) = score_records(&a.on, &probe, &records, device)?;
    let rule = probe.calibration();
    // A sentence probe reads a text's whole and its sentences where a token probe reads tokens.
    let unit = match probe {
        AnyProbe::Tokens(_) => "tokens",
        AnyProbe::Sentences(_) => "pieces",
    };
    if json_out {
        let rows: Vec<Value> = records
            .iter()
            .zip(&scores)
            .enumerate()
            .map(|(i, (r, (s, k, t)))| {
                let mut row = json!({"line": r.line, "label": r.label, "family": r.family,
                    "scores": s, "keywords": k, "lookalikes": t.lookalikes, "encoded": t.encoded,
                    "window_tokens": a.on.window});
                if let (true, Some(ps)) = (a.pieces, pieces.get(i)) {
                    row["pieces"] = ps
                        .iter()
                        .map(|p| {
                            json!({"piece": p.piece, "start": p.start, "end": p.end, "kind": p.kind,
                            "logit": p.logit, "text": &r.text[p.start..p.end]})
                        })
                        .collect();
                }
                if let Some(c) = rule {
                    row["rule"] = json!({"aggregation": c.aggregation, "score": c.aggregation.of(s),
                        "or_keywords": c.or_keywords, "threshold": c.threshold,
                        "flagged": c.flags(s, *k)});
                }
                row
            })
            .collect();
        let families = rule
            .map(|c| flagged_by_family(&records, &scores, c))
            .unwrap_or_default();
        let as_json = |fs: &[FamilyFlags]| -> Vec<Value> {
            fs.iter()
                .map(|f| {
                    json!({"family": f.family, "label": f.label, "texts": f.texts,
                        "flagged": f.flagged, "rate": f.rate(), "interval95": f.interval()})
                })
                .collect()
        };
        println!(
            "{}",
            json!({"probe": probe.name(), "texts": rows, "families": as_json(&families),
                "totals": as_json(&label_totals(&families))})
        );
        return Ok(());
    }
    println!(
        "{:>5} {:>5} {:<30} {:>6} {:>7} {:>7} {:>8} {:>9} {:>8} {:>8} {:>5}  text",
        "line",
        "label",
        "family",
        unit,
        "mean",
        "max",
        format!("window{}", a.on.window),
        "mean z",
        "max z",
        "keywords",
        "flag"
    );
    for (i, (r, (s, k, _))) in records.iter().zip(&scores).enumerate() {
        let flag = match rule {
            Some(c) if c.flags(s, *k) => "yes",
            Some(_) => "no",
            None => "-",
        };
        println!(
            "{:>5} {:>5} {:<30} {:>6} {:>7.4} {:>7.4} {:>8.4} {:>9.3} {:>8.3} {:>8} {:>5}  {preview}",
            r.line,
            r.label.map_or("-".into(), |l| u8::from(l).to_string()),
            r.family.as_deref().unwrap_or("-"),
            s.tokens,
            s.mean,
            s.max,
            s.window,
            s.mean_logit,
            s.max_logit,
            k,
            flag,
            preview = preview(&r.text, 50)
        );
        if let (true, Some(ps)) = (a.pieces, pieces.get(i)) {
            let mut top: Vec<_> = ps.iter().collect();
            top.sort_by(|x, y| y.logit.total_cmp(&x.logit));
            for p in top.into_iter().take(TOP_PIECES) {
                let which = match p.piece {
                    0 => "(whole)".to_string(),
                    n => format!("sentence {n}"),
                };
                println!(
                    "{:>18} {:>8.3}  {:<12} {:<24} {}",
                    "",
                    p.logit,
                    which,
                    p.kind,
                    preview(&r.text[p.start..p.end], 70)
                );
            }
        }
    }
    if let Some(c) = rule {
        let families = flagged_by_family(&records, &scores, c);
        if families.len() > 1 || families.iter().any(|f| f.family != "-") {
            println!(
                "flagged by family (95 % Wilson interval):\n  {:<30} {:>5} {:>6} {:>7} {:>7}  interval",
                "family", "label", "texts", "flagged", "rate"
            );
            let totals = label_totals(&families);
            for f in families.iter().chain(&totals) {
                let (lo, hi) = f.interval();
                println!(
                    "  {:<30} {:>5} {:>6} {:>7} {:>6.1}%  [{:.1}, {:.1}]",
                    f.family,
                    f.label.map_or("-".into(), |l| u8::from(l).to_string()),
                    f.texts,
                    f.flagged,
                    100.0 * f.rate(),
                    100.0 * lo,
                    100.0 * hi
                );
            }
        }
    }
    match rule {
        Some(c) => println!(
            "flag: {} > {:.4}{} (calibrated for {:.1} % FPR on {})",
            c.aggregation.label(),
            c.threshold,
            c.keyword_clause(),
            100.0 * c.target_fpr,
            c.data
        ),
        None => println!(
            "no calibrated threshold; `glassbox probe eval --probe {} --data LABELLED.jsonl --calibrate 0.01` sets one (on unlabelled traffic of your own: add --benign)",
            a.on.probe.display()
        ),
    }
    Ok(())
}

/// A text's first `chars` characters on one line, with "…" where it goes on.
fn preview(text: &str, chars: usize) -> String {
    let short: String = text.chars().take(chars).collect();
    let more = if short.len() < text.len() { "…" } else { "" };
    format!("{}{more}", short.replace('\n', " "))
}

/// How many texts of one family (and label) a rule flags.
struct FamilyFlags {
    family: String,
    label: Option<bool>,
    texts: usize,
    flagged: usize,
}

impl FamilyFlags {
    fn rate(&self) -> f64 {
        self.flagged as f64 / self.texts.max(1) as f64
    }

    fn interval(&self) -> (f64, f64) {
        rate_interval(self.flagged, self.texts)
    }
}

/// Per family (and label) of `records`, in family order; records without a family count as
/// "-".
fn flagged_by_family(
    records: &[Record],
    scores: &[Scores],
    rule: &Calibration,
) -> Vec<FamilyFlags> {
    let mut by: BTreeMap<(String, Option<bool>), (usize, usize)> = BTreeMap::new();
    for (r, (s, k, _)) in records.iter().zip(scores) {
        let family = r.family.clone().unwrap_or_else(|| "-".into());
        let e = by.entry((family, r.label)).or_default();
        e.0 += 1;
        e.1 += usize::from(rule.flags(s, *k));
    }
    by.into_iter()
        .map(|((family, label), (texts, flagged))| FamilyFlags {
            family,
            label,
            texts,
            flagged,
        })
        .collect()
}

/// Each label spread over several families, all of them together as family "(all)".
fn label_totals(families: &[FamilyFlags]) -> Vec<FamilyFlags> {
    let mut by: BTreeMap<Option<bool>, (usize, usize, usize)> = BTreeMap::new();
    for f in families {
        let e = by.entry(f.label).or_default();
        *e = (e.0 + 1, e.1 + f.texts, e.2 + f.flagged);
    }
    by.into_iter()
        .filter(|(_, (families, ..))| *families > 1)
        .map(|(label, (_, texts, flagged))| FamilyFlags {
            family: "(all)".into(),
            label,
            texts,
            flagged,
        })
        .collect()
}

fn eval(a: EvalArgs, device: &str, json_out: bool) -> Result<()> {
    if let Some(f) = a.calibrate {
        if !(0.0..1.0).contains(&f) {
            bail!("--calibrate takes a false-positive rate in [0, 1), e.g. 0.01; got {f}");
        }
    }
    let target = a.calibrate.unwrap_or(a.target_fpr);
    let records = read_records(&a.on.data)?;
    if a.benign {
        return eval_traffic(&a, &records, device, json_out);
    }
    // Labels checked before the (long) scoring.
    let labelled = records
        .iter()
        .map(|r| r.labelled(&a.on.data))
        .collect::<Result<Vec<_>>>()?;
    let attacks = labelled.iter().filter(|l| l.label).count();
    if attacks == 0 || attacks == labelled.len() {
        bail!(
            "probe eval ranks attacks (label 1) against benign texts (label 0), and {} has {attacks} attack{} and {} benign text{}; \
             for the share of one kind the probe's own rule flags (per family, with 95 % intervals) run `glassbox probe score --probe {} --data {}`{}",
            a.on.data.display(),
            if attacks == 1 { "" } else { "s" },
            labelled.len() - attacks,
            if labelled.len() - attacks == 1 { "" } else { "s" },
            a.on.probe.display(),
            a.on.data.display(),
            if attacks == 0 { ", or add --benign to calibrate on benign traffic alone" } else { "" }
        );
    }
    let mut probe = AnyProbe::load(&a.on.probe)?;
    let chosen = probe.judged_by(a.aggregate, a.on.window)?;
    let (scores, _) = score_records(&a.on, &probe, &records, device)?;
    let labels: Vec<bool> = labelled.iter().map(|l| l.label).collect();
    let aggregations = probe.aggregations(a.on.window);
    // A probe calibrated as a union with the keyword filter is judged as one (the chosen
    // aggregation or any keyword hit), beside its aggregations alone.
    let union = probe.calibration().is_some_and(|c| c.or_keywords);
    let judged = |s: &TextScores, k: f32| chosen.flag_score(s, k, union);
    let mut summaries = Vec::new();
    for agg in aggregations
        .iter()
        .copied()
        .chain((!aggregations.contains(&chosen)).then_some(chosen))
    {
        let s: Vec<f32> = scores.iter().map(|(s, ..)| agg.of(s)).collect();
        summaries.push((agg.label(), Summary::of(&Scored::new(&s, &labels)?, target)));
    }
    if union {
        let s: Vec<f32> = scores.iter().map(|(s, k, _)| judged(s, *k)).collect();
        summaries.push((
            format!("{} or keywords", chosen.label()),
            Summary::of(&Scored::new(&s, &labels)?, target),
        ));
    }
    let (chosen_label, best) = if union {
        summaries.last()
    } else {
        summaries.iter().find(|(label, _)| *label == chosen.label())
    }
    .context("the chosen aggregation was scored")?;
    let lengths = lengths(&records);
    let baselines = baselines(&lengths, &scores, &labels, target)?;
    let judged_scores: Vec<f32> = scores.iter().map(|(s, k, _)| judged(s, *k)).collect();
    let by_length = by_length(&lengths, &judged_scores, &labels);
    // Detection per family at the chosen threshold: positives caught, negatives flagged.
    let mut families: BTreeMap<(bool, String), (usize, usize)> = BTreeMap::new();
    for (l, (s, k, _)) in labelled.iter().zip(&scores) {
        let e = families.entry((l.label, l.family.clone())).or_default();
        e.0 += usize::from(judged(s, *k) > best.threshold);
        e.1 += 1;
    }
    if let Some(fpr) = a.calibrate {
        let c = Calibration {
            aggregation: chosen,
            threshold: best.threshold,
            target_fpr: fpr,
            fpr: best.fpr,
            tpr: best.tpr,
            data: a.on.data.display().to_string(),
            data_sha256: sha256_file(&a.on.data)?,
            positives: best.positives,
            negatives: best.negatives,
            or_keywords: union,
        };
        probe.calibrate(c, &a.on.probe)?;
    }
    if json_out {
        let summaries: Vec<Value> = summaries
            .iter()
            .map(|(label, s)| json!({"aggregation": label, "summary": s}))
            .collect();
        let families: Vec<Value> = families
            .iter()
            .map(|((label, f), (hit, n))| {
                json!({"family": f, "label": label, "flagged": hit,
                "texts": n, "rate": *hit as f64 / *n as f64})
            })
            .collect();
        let baselines: Vec<Value> = baselines
            .iter()
            .map(|(label, s)| json!({"baseline": label, "summary": s}))
            .collect();
        println!(
            "{}",
            json!({"probe": probe.name(), "aggregations": summaries, "chosen": chosen_label,
                "baselines": baselines, "by_length": by_length,
                "threshold": best.threshold, "target_fpr": target, "families": families,
                "calibrated": a.calibrate.is_some(),
                "rule": probe.calibration().map(|c| c.rule(probe.name())),
                "rules": probe.calibration().map(|c| c.rules(probe.name()))})
        );
        return Ok(());
    }
    println!(
        "probe `{}` on {} texts ({} positive, {} negative) from {}",
        probe.name(),
        labels.len(),
        best.positives,
        best.negatives,
        a.on.data.display()
    );
    println!(
        "\n{:<24} {:>7} {:>17} {:>10} {:>15} {:>10}",
        "score", "AUROC", "95 % interval", "TPR@1%FPR", "95 % interval", "TPR@5%FPR"
    );
    let baseline_rows = baselines.iter().map(|(l, s)| (format!("  {l}"), s));
    let rows = summaries.iter().map(|(l, s)| (l.clone(), s));
    for (i, (label, s)) in rows.chain(baseline_rows).enumerate() {
        if i == summaries.len() {
            println!("baselines, same texts:");
        }
        println!(
            "{:<24} {:>7.4} {:>17} {:>10.3} {:>15} {:>10.3}",
            label,
            s.auroc,
            format!("[{:.4}, {:.4}]", s.auroc_ci95.0, s.auroc_ci95.1),
            s.tpr_at_1pct_fpr,
            format!(
                "[{:.3}, {:.3}]",
                s.tpr_at_1pct_fpr_ci95.0, s.tpr_at_1pct_fpr_ci95.1
            ),
            s.tpr_at_5pct_fpr
        );
    }
    if let Some((label, s)) = baselines.last().filter(|(_, s)| s.auroc >= LENGTH_WARNING) {
        println!(
            "\nnote: {label} alone ranks these labels at AUROC {:.3}: here a detector can score by length; compare within lengths (below)",
            s.auroc
        );
    }
    println!(
        "\n{:<24} {:>9} {:>9} {:>7}",
        "characters", "positive", "negative", "AUROC"
    );
    for b in &by_length {
        let band = band_name(b.chars);
        let auroc = b.auroc.map_or("-".to_string(), |x| format!("{x:.3}"));
        println!(
            "{band:<24} {:>9} {:>9} {auroc:>7}",
            b.positives, b.negatives
        );
    }
    println!(
        "\n{} > {:.4} keeps false positives at {:.2} % (target {:.2} %) and catches {:.1} % of positives",
        chosen_label,
        best.threshold,
        100.0 * best.fpr,
        100.0 * target,
        100.0 * best.tpr
    );
    println!(
        "\n{:<28} {:>6} {:>8} {:>8}",
        "family", "label", "texts", "flagged"
    );
    for ((label, f), (hit, n)) in &families {
        println!(
            "{:<28} {:>6} {:>8} {:>7.1}%",
            f,
            u8::from(*label),
            n,
            100.0 * *hit as f64 / *n as f64
        );
    }
    if let Some(c) = probe.calibration().filter(|_| a.calibrate.is_some()) {
        print_saved(&a.on.probe, c, probe.name());
    }
    Ok(())
}

/// A text-length baseline at or above this AUROC gets a note: the labels follow length.
const LENGTH_WARNING: f64 = 0.75;

/// Simple baselines scored on the same texts as the probe: the keyword filter, and text length
/// alone (ln characters, in the direction that ranks these labels better — chosen on them, so
/// an upper bound), which shows how far length alone separates the set.
fn baselines(
    lengths: &[usize],
    scores: &[Scores],
    labels: &[bool],
    target: f64,
) -> Result<Vec<(String, Summary)>> {
    let keywords: Vec<f32> = scores.iter().map(|(_, k, _)| *k).collect();
    let longer: Vec<f32> = lengths.iter().map(|&n| (1.0 + n as f32).ln()).collect();
    let mut length = Summary::of(&Scored::new(&longer, labels)?, target);
    let mut direction = "longer";
    if length.auroc < 0.5 {
        let shorter: Vec<f32> = longer.iter().map(|x| -x).collect();
        length = Summary::of(&Scored::new(&shorter, labels)?, target);
        direction = "shorter";
    }
    Ok(vec![
        (
            "keywords".to_string(),
            Summary::of(&Scored::new(&keywords, labels)?, target),
        ),
        (format!("text length ({direction})"), length),
    ])
}

/// One band of text lengths and how the judged score ranks the texts in it.
#[derive(serde::Serialize)]
struct LengthBand {
    /// Characters, from and (none: no limit) below.
    chars: (usize, Option<usize>),
    positives: usize,
    negatives: usize,
    /// None where the band lacks one of the labels.
    auroc: Option<f64>,
}

/// Benign texts of one band of length, and how many a rule flags.
#[derive(serde::Serialize)]
struct FlaggedBand {
    chars: (usize, Option<usize>),
    texts: usize,
    flagged: usize,
}

/// How many texts (of these `lengths`) in each band of length score above `threshold`.
fn flagged_by_length(lengths: &[usize], judged: &[f32], threshold: f32) -> Vec<FlaggedBand> {
    let mut bands: Vec<FlaggedBand> = length_bands()
        .map(|chars| FlaggedBand {
            chars,
            texts: 0,
            flagged: 0,
        })
        .collect();
    for (&n, &v) in lengths.iter().zip(judged) {
        let b = &mut bands[band_of(n)];
        b.texts += 1;
        b.flagged += usize::from(v > threshold);
    }
    bands
}

/// Each record's text length in characters (what the length baseline and the bands read).
fn lengths(records: &[Record]) -> Vec<usize> {
    records.iter().map(|r| r.text.chars().count()).collect()
}

/// The band of [`LENGTH_BANDS`] a text of `chars` characters falls in.
fn band_of(chars: usize) -> usize {
    // The first band starts at 0, so every length is at or past it.
    LENGTH_BANDS.partition_point(|&lo| lo <= chars) - 1
}

/// Each band of [`LENGTH_BANDS`] as (from, below; none: no limit).
fn length_bands() -> impl Iterator<Item = (usize, Option<usize>)> {
    LENGTH_BANDS
        .iter()
        .enumerate()
        .map(|(i, &lo)| (lo, LENGTH_BANDS.get(i + 1).copied()))
}

/// A band of characters as a table shows it: "200–999", "4000+".
fn band_name((lo, hi): (usize, Option<usize>)) -> String {
    match hi {
        Some(hi) => format!("{lo}–{}", hi - 1),
        None => format!("{lo}+"),
    }
}

/// Where bands of text length start, in characters: a question, a paragraph, a page, more.
const LENGTH_BANDS: [usize; 4] = [0, 200, 1000, 4000];

/// The judged score's AUROC within each band of text length: a set whose attacks are short and
/// whose benign texts long (or the reverse) rewards a score that tracks length, which the
/// pooled AUROC cannot tell from detection.
fn by_length(lengths: &[usize], judged: &[f32], labels: &[bool]) -> Vec<LengthBand> {
    let mut bands: Vec<(Vec<f32>, Vec<bool>)> = vec![Default::default(); LENGTH_BANDS.len()];
    for ((&n, &x), &y) in lengths.iter().zip(judged).zip(labels) {
        let (s, l) = &mut bands[band_of(n)];
        s.push(x);
        l.push(y);
    }
    length_bands()
        .zip(bands)
        .map(|(chars, (s, l))| {
            let positives = l.iter().filter(|&&y| y).count();
            LengthBand {
                chars,
                positives,
                negatives: l.len() - positives,
                auroc: Scored::new(&s, &l).ok().map(|x| x.auroc()),
            }
        })
        .collect()
}

/// Where a new threshold went, and the deploy.toml rules that read it.
fn print_saved(path: &Path, c: &Calibration, name: &str) {
    let rules = c.rules(name);
    let whens: String = rules
        .iter()
        .map(|r| format!("\n  when = \"{r}\""))
        .collect();
    println!(
        "\nsaved the threshold in {}; `glassbox probe score` uses it, and {} in deploy.toml read{} it as{whens}",
        path.display(),
        if rules.len() > 1 { "two blocking monitors" } else { "a monitor" },
        if rules.len() > 1 { "" } else { "s" },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(chars: usize, label: bool) -> Record {
        Record {
            line: 1,
            text: "x".repeat(chars),
            label: Some(label),
            family: None,
            kind: None,
            span: None,
        }
    }

    fn scores(keywords: &[f32]) -> Vec<Scores> {
        let s = TextScores {
            tokens: 1,
            mean: 0.0,
            max: 0.0,
            window: 0.0,
            mean_logit: 0.0,
            max_logit: 0.0,
        };
        keywords
            .iter()
            .map(|&k| (s, k, TextSignals::default()))
            .collect()
    }

    /// Short attacks against long benign texts: length alone ranks them perfectly (shorter
    /// first), and no band of length holds both labels, so none has an AUROC.
    #[test]
    fn text_length_is_a_baseline_and_bands_compare_like_lengths() {
        let mut records: Vec<Record> = (0..4).map(|i| record(50 + i, true)).collect();
        records.extend((0..4).map(|i| record(300 + i, false)));
        let labels: Vec<bool> = records.iter().map(|r| r.label == Some(true)).collect();
        let keywords = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let b = baselines(&lengths(&records), &scores(&keywords), &labels, 0.01).unwrap();
        assert_eq!(b[0].0, "keywords");
        assert_eq!(b[0].1.auroc, 0.625);
        assert_eq!(b[1].0, "text length (shorter)");
        assert_eq!(b[1].1.auroc, 1.0);
        let bands = by_length(&lengths(&records), &[0.0; 8], &labels);
        let counts: Vec<_> = bands.iter().map(|b| (b.positives, b.negatives)).collect();
        assert_eq!(counts, [(4, 0), (0, 4), (0, 0), (0, 0)]);
        assert!(bands.iter().all(|b| b.auroc.is_none()));
        assert_eq!(bands[3].chars, (4000, None));
        // Two long attacks: the 200–999 band compares them with the long benign texts alone,
        // where the score ranks them first while length ranks them last.
        records.extend([record(900, true), record(950, true)]);
        let labels: Vec<bool> = records.iter().map(|r| r.label == Some(true)).collect();
        let judged = [0.0, 0.0, 0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.9, 0.8];
        let bands = by_length(&lengths(&records), &judged, &labels);
        assert_eq!((bands[1].positives, bands[1].negatives), (2, 4));
        assert_eq!(bands[1].auroc, Some(1.0));
        let b = baselines(&lengths(&records), &scores(&[0.0; 10]), &labels, 0.01).unwrap();
        assert_eq!(b[1].0, "text length (shorter)");
        // 16 of the 24 attack–benign pairs have the attack shorter.
        assert!(
            (b[1].1.auroc - 16.0 / 24.0).abs() < 1e-9,
            "{}",
            b[1].1.auroc
        );
        // Read as benign traffic: the false alarms by band (above 0.25: the four long texts
        // scored 0.3 or more).
        let flagged = flagged_by_length(&lengths(&records), &judged, 0.25);
        let got: Vec<_> = flagged.iter().map(|b| (b.texts, b.flagged)).collect();
        assert_eq!(got, [(4, 0), (6, 4), (0, 0), (0, 0)]);
        assert_eq!(band_name(flagged[1].chars), "200–999");
        assert_eq!(band_name(flagged[3].chars), "4000+");
        let edges = [0, 199, 200, 999, 1000, 3999, 4000, 100_000].map(band_of);
        assert_eq!(edges, [0, 0, 1, 1, 2, 2, 3, 3]);
    }
}
