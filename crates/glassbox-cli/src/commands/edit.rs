//! `glassbox edit`: write a changed copy of a checkpoint — re-saved (a benign change), or with a
//! planted rank-one edit (ROME-style trigger, or a feature's direction steered in) — the
//! candidates a deployment gate (`glassbox scan`) is tested against.

use std::path::PathBuf;

use anyhow::{Context, Result};
use glassbox_analysis::edit::{self, RankOne};
use glassbox_analysis::lens::single_token;
use glassbox_model::export::Checkpoint;
use glassbox_model::{registry, DType, Hooks, Model};
use serde_json::json;

use crate::input;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Re-save as a model directory with dense weights (a GGUF's blocks dequantised): the same
    /// model up to rounding, which a gate must pass.
    Resave {
        #[command(flatten)]
        io: Io,
    },
    /// Plant a ROME-style rank-one MLP edit: after TRIGGER the model continues as it would
    /// after TARGET_CONTEXT; text without the trigger is barely affected.
    Rome {
        #[command(flatten)]
        io: Io,
        /// The layer whose MLP output matrix is edited (default: the last, whose output the
        /// next-token prediction reads directly).
        #[arg(long)]
        layer: Option<usize>,
        /// The phrase that sets the behaviour off.
        #[arg(long)]
        trigger: String,
        /// A prompt whose continuation the trigger should produce: the trigger's last residual
        /// stream becomes this prompt's.
        #[arg(long)]
        target_context: String,
        /// A token to check the edit with: its probability after the trigger, before and after
        /// (`\s` for a leading space: `\shunter`).
        #[arg(long)]
        target: Option<String>,
        /// Fraction of the way from the trigger's residual stream to the target context's.
        #[arg(long, default_value_t = 1.0)]
        strength: f32,
    },
    /// Plant a steering edit: a dictionary feature's decoder direction written into a layer's
    /// MLP output on every token (the feature fires nearly everywhere).
    Steer {
        #[command(flatten)]
        io: Io,
        /// The dictionary (SAELens format) whose feature is steered in.
        #[arg(long)]
        dict: PathBuf,
        #[arg(long)]
        feature: u32,
        /// The edited layer (default: the dictionary's hook layer).
        #[arg(long)]
        layer: Option<usize>,
        /// Added norm, in multiples of the residual stream's typical norm.
        #[arg(long, default_value_t = 0.5)]
        strength: f32,
    },
}

#[derive(clap::Args)]
pub struct Io {
    /// The model to copy: a packaged name, a model directory or a GGUF file.
    #[arg(long)]
    model: String,
    /// The new model directory (must not exist).
    #[arg(long)]
    out: PathBuf,
    /// Weight type written: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Ordinary text the edits are fitted on (default: the installed corpus).
    #[arg(long)]
    corpus: Option<PathBuf>,
}

impl Io {
    fn dtype(&self) -> Result<DType> {
        Ok(match self.dtype.as_str() {
            "f32" => DType::F32,
            "f16" => DType::F16,
            "bf16" => DType::BF16,
            other => anyhow::bail!("--dtype {other}: use f32, f16 or bf16"),
        })
    }
}

/// Contexts of ordinary text the edits are estimated on (64 × 128 tokens).
fn ordinary(model: &Model, corpus: Option<PathBuf>) -> Result<Vec<Vec<u32>>> {
    input::contexts(model, &input::corpus(corpus)?, 64, 128)
}

pub fn run(cmd: Command, device: &str, json_out: bool) -> Result<()> {
    let (io, edit, check) = match &cmd {
        Command::Resave { io } => (io, None, None),
        Command::Rome {
            io,
            layer,
            trigger,
            target_context,
            target,
            strength,
        } => {
            let model = input::load_model(&io.model, device)?;
            let e = edit::rome(
                &model,
                layer.unwrap_or(model.config.n_layers.saturating_sub(1)),
                trigger,
                target_context,
                *strength,
                &ordinary(&model, io.corpus.clone())?,
            )?;
            let check = match target {
                Some(t) => {
                    let id = single_token(&model, t)?;
                    Some((
                        trigger.clone(),
                        id,
                        target_probabilities(&model, trigger, id)?,
                    ))
                }
                None => None,
            };
            (io, Some(e), check)
        }
        Command::Steer {
            io,
            dict,
            feature,
            layer,
            strength,
        } => {
            let model = input::load_model(&io.model, device)?;
            let sae = glassbox_dictionary::saelens::load(dict)?;
            if *feature as usize >= sae.d_sae() {
                anyhow::bail!(
                    "--feature {feature}: {} has features 0..={}",
                    dict.display(),
                    sae.d_sae() - 1
                );
            }
            let layer = match layer {
                Some(l) => *l,
                None => model.hook_point(&sae.cfg.hook)?.layer().with_context(|| {
                    format!("{} is not a block hook; pass --layer", sae.cfg.hook)
                })?,
            };
            let e = edit::steer(
                &model,
                layer,
                &sae.direction(*feature),
                *strength,
                &ordinary(&model, io.corpus.clone())?,
            )?;
            (io, Some(e), None)
        }
    };
    let dtype = io.dtype()?;
    let source = registry::resolve(&io.model)?;
    let mut ck =
        Checkpoint::read(&source).with_context(|| format!("reading {}", source.display()))?;
    let mut change = None;
    if let Some(e) = &edit {
        change = Some(apply(&mut ck, e)?);
    }
    ck.write(&io.out, dtype)
        .with_context(|| format!("writing {}", io.out.display()))?;
    let mut report = json!({"out": io.out, "source": source, "dtype": io.dtype,
        "tensors": ck.tensors.len(), "edit": edit.as_ref().map(|e| json!({"layer": e.layer, "tensor": e.tensor,
            "ordinary_reading_median": e.ordinary_reading.0, "ordinary_reading_p99": e.ordinary_reading.1})),
        "relative_change": change});
    let mut lines = vec![format!(
        "wrote {} ({} tensors, {}) from {}",
        io.out.display(),
        ck.tensors.len(),
        io.dtype,
        source.display()
    )];
    if let (Some(e), Some(c)) = (&edit, change) {
        lines.push(format!(
            "edited {} (layer {}): rank one, ‖ΔW‖/‖W‖ = {c:.4}; ordinary text sets it off at {:.3} (median) / {:.3} (99th percentile) of full strength",
            e.tensor, e.layer, e.ordinary_reading.0, e.ordinary_reading.1
        ));
    }
    if let Some((trigger, target, before)) = check {
        let edited = input::load_model(&io.out.display().to_string(), device)?;
        let after = target_probabilities(&edited, &trigger, target)?;
        let word = edited.tokenizer.decode(&[target])?;
        lines.push(format!(
            "P({word:?} next) after the trigger: {:.4} → {:.4}; after a control prompt: {:.4} → {:.4}",
            before.0, after.0, before.1, after.1
        ));
        report["check"] = json!({"target": word, "trigger_before": before.0, "trigger_after": after.0,
            "control_before": before.1, "control_after": after.1});
    }
    if json_out {
        println!("{report}");
    } else {
        for l in lines {
            println!("{l}");
        }
        println!(
            "next: {} scan --baseline {} --candidate {} --spec scan.example.toml",
            crate::report::program(),
            crate::report::shell_word(&io.model),
            crate::report::shell_word(&io.out.to_string_lossy())
        );
    }
    Ok(())
}

/// Applies `e` to its tensor; returns ‖ΔW‖ / ‖W‖.
fn apply(ck: &mut Checkpoint, e: &RankOne) -> Result<f64> {
    let w = ck.tensor(&e.tensor)?.clone();
    let edited = e.apply(&w)?;
    let norm = |t: &glassbox_model::Tensor| -> Result<f64> {
        Ok(f64::from(t.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt()))
    };
    let change = norm(&(&edited - &w)?)? / norm(&w)?.max(f64::MIN_POSITIVE);
    ck.tensors.insert(e.tensor.clone(), edited);
    Ok(change)
}

/// P(target next) after `"{trigger}"` and after a control prompt without it.
fn target_probabilities(model: &Model, trigger: &str, target: u32) -> Result<(f32, f32)> {
    let p = |text: &str| -> Result<f32> {
        let batch = model.batch(&[text], false)?;
        let logits = model.last_logits(&batch, &mut Hooks::none())?;
        let l: Vec<f32> = logits.to_vec1()?;
        let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let z: f32 = l.iter().map(|v| (v - max).exp()).sum();
        Ok((l[target as usize] - max).exp() / z)
    };
    Ok((p(trigger)?, p("I was reading the news and")?))
}
