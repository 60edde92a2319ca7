//! `glassbox probe train`: a linear probe on a hook from labelled texts, for monitors
//! (`probe NAME > 0.9`) and analyses.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use glassbox_analysis::catalog::taxonomy::Taxonomy;
use glassbox_dictionary::probe::{self, Probe, ProbeTraining, Sample};
use glassbox_model::Hooks;
use serde_json::{json, Value};

use crate::input;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Train a logistic-regression probe on a hook's per-token activations from labelled texts;
    /// reports cross-validated (held-out) accuracy and saves DIR/probe.json.
    Train(TrainArgs),
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
    let Command::Train(a) = cmd;
    let (texts, default_name) = labelled_texts(&a)?;
    let model = input::load_model(&a.model, device)?;
    let hook = model.hook_point(&a.hook)?;
    let (prefix, suffix) = model.tokenizer.special_affixes()?;
    let mut samples = Vec::with_capacity(texts.len());
    for (i, (text, label)) in texts.iter().enumerate() {
        let content = model.tokenizer.encode_plain(text)?;
        let max = model.config.max_positions - prefix.len() - suffix.len();
        if content.is_empty() || content.len() > max {
            bail!(
                "text {} has {} tokens; a probe text needs 1 to {max}",
                i + 1,
                content.len()
            );
        }
        let ids = [prefix.as_slice(), &content, suffix.as_slice()].concat();
        let mut hooks = Hooks::none().record(hook).stop_at(hook);
        model.forward(&model.batch_ids(&[ids])?, &mut hooks, None)?;
        let act = hooks.cache().get(&hook).context("the hook did not fire")?;
        let x: Vec<f32> = act
            .narrow(1, prefix.len(), content.len())?
            .flatten_all()?
            .to_vec1()?;
        samples.push(Sample { x, label: *label });
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
            Value::Bool(b) => *b,
            Value::Number(n) if n.as_f64() == Some(1.0) => true,
            Value::Number(n) if n.as_f64() == Some(0.0) => false,
            other => bail!("{}: \"label\" must be true/false or 1/0, not {other}", at()),
        };
        out.push((t.to_string(), label));
    }
    let stem = path
        .file_stem()
        .map_or("probe".into(), |s| s.to_string_lossy().into_owned());
    Ok((out, stem))
}
