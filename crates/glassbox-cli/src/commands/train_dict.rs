use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use glassbox_dictionary::train::{TrainConfig, Trainer};
use glassbox_dictionary::{saelens, Activation, DictConfig, Sae};
use glassbox_store::activations::ActivationStore;
use serde_json::json;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Arch {
    Topk,
    Batchtopk,
    Relu,
    Jumprelu,
}

#[derive(clap::Args)]
pub struct Args {
    /// A store written by `glassbox harvest`. A store with a --target-hook trains transcoders
    /// (read the hook, reconstruct the target hook); any other trains SAEs.
    #[arg(long)]
    acts: PathBuf,
    /// Output directory. With several --k, one subdirectory `k<K>` per dictionary.
    #[arg(long)]
    out: PathBuf,
    /// The sparsity mechanism: `topk` (exactly k latents per token), `batchtopk` (k per token on
    /// average over a batch, a threshold at inference), `relu` (L1 penalty, --l1) or
    /// `jumprelu` (learned per-latent thresholds, --l0, --bandwidth).
    #[arg(long, value_enum, default_value = "topk")]
    arch: Arch,
    /// Active latents per token (TopK, BatchTopK; for JumpReLU the L0 its thresholds start
    /// at). Several values (`--k 16,32,64`) train a sweep that shares one pass over the data.
    #[arg(long, value_delimiter = ',', default_value = "32")]
    k: Vec<usize>,
    /// L1 coefficient (ReLU).
    #[arg(long, default_value_t = 5.0)]
    l1: f32,
    /// L0 coefficient (JumpReLU): the loss is ‖x − x̂‖² + λ·L0, in units where the mean
    /// input norm is √d.
    #[arg(long, default_value_t = 1.0)]
    l0: f32,
    /// Width of the rectangle kernel of JumpReLU's straight-through estimator.
    #[arg(long, default_value_t = 0.05)]
    bandwidth: f32,
    /// Number of latents.
    #[arg(long, default_value_t = 16_384)]
    width: usize,
    /// Tokens per step.
    #[arg(long, default_value_t = 4096)]
    batch: usize,
    /// Optimisation steps (default: one pass over the store).
    #[arg(long)]
    steps: Option<usize>,
    /// Adam learning rate (inputs are scaled to mean norm √d_in; on MiniLM's residual stream
    /// 2e-3 reached a given FVE in a third of the steps 4e-4 needed).
    #[arg(long, default_value_t = 2e-3)]
    lr: f32,
    /// Steps over which the learning rate rises linearly from 0 (it decays to 0 over the last
    /// 20 % of the steps).
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// Dead latents recruited per token by the auxiliary loss (0 = off; default d_in/2).
    #[arg(long)]
    aux_k: Option<usize>,
    /// A latent that has not fired for this many tokens counts as dead.
    #[arg(long, default_value_t = 1_000_000)]
    dead_after: u64,
    /// Save a checkpoint every N steps (a killed run resumes from the last one).
    #[arg(long, default_value_t = 100)]
    checkpoint_every: usize,
    /// Seed of the initialisation and of the order batches are drawn in (same seed, same
    /// store, same dictionary).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

const CHECKPOINT: &str = "checkpoint.safetensors";
/// Shards shuffled together when drawing batches.
const WINDOW: usize = 4;

pub fn run(args: Args, json_out: bool) -> Result<()> {
    let store = ActivationStore::open(&args.acts)?;
    let m = &store.manifest;
    let steps = args.steps.unwrap_or(store.rows() / args.batch).max(1);
    let tc = |k: Option<usize>| TrainConfig {
        batch: args.batch,
        steps,
        lr: args.lr,
        warmup_steps: args.warmup,
        decay_start: 0.8,
        aux_k: args.aux_k.unwrap_or(m.d / 2),
        aux_alpha: 1.0 / 32.0,
        dead_after_tokens: args.dead_after,
        seed: args.seed,
        init_l0: if args.arch == Arch::Jumprelu {
            k.unwrap_or(0) as f32
        } else {
            0.0
        },
    };
    let ks: Vec<Option<usize>> = if args.arch == Arch::Relu {
        vec![None]
    } else {
        args.k.iter().map(|&k| Some(k)).collect()
    };
    if ks.is_empty() {
        bail!("give at least one --k");
    }
    let dirs: Vec<PathBuf> = ks
        .iter()
        .map(|k| match (k, ks.len()) {
            (Some(k), n) if n > 1 => args.out.join(format!("k{k}")),
            _ => args.out.clone(),
        })
        .collect();
    let mut trainers = Vec::new();
    for (k, dir) in ks.iter().zip(&dirs) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ckpt = dir.join(CHECKPOINT);
        let trainer = if ckpt.exists() {
            Trainer::load_checkpoint(&ckpt, &tc(*k))?
        } else {
            let activation = match (args.arch, k) {
                (Arch::Topk, Some(k)) => Activation::TopK { k: *k },
                (Arch::Batchtopk, Some(k)) => Activation::BatchTopK {
                    k: *k,
                    threshold: 0.0,
                },
                (Arch::Jumprelu, _) => Activation::JumpRelu {
                    l0: args.l0,
                    bandwidth: args.bandwidth,
                },
                _ => Activation::Relu { l1: args.l1 },
            };
            let mut cfg = DictConfig::sae(activation, m.d, args.width, &m.model, &m.hook);
            cfg.target_hook = m.target_hook.clone();
            let mut t = Trainer::new(Sae::init(cfg, args.seed)?, tc(*k))?;
            // Statistics from a batch of another stream, so the training stream is untouched.
            let first = store
                .batches(args.batch, WINDOW, args.seed ^ 0x5eed)?
                .next()
                .context("empty store")??;
            t.initialise_from(&first.inputs, first.targets.as_deref())?;
            t
        };
        trainers.push(trainer);
    }
    let start_step = trainers.iter().map(|t| t.step).min().unwrap_or(0);
    if trainers.iter().any(|t| t.step != start_step) {
        bail!(
            "the sweep's checkpoints are at different steps; delete {} to restart",
            args.out.display()
        );
    }
    let mut batches = store.batches(args.batch, WINDOW, args.seed)?;
    batches.fast_forward(start_step);

    let bar = crate::report::progress(steps as u64, "train (steps)", json_out);
    bar.set_position(start_step as u64);
    let started = Instant::now();
    for step in start_step..steps {
        let x = batches.next().context("the store ran out of batches")??;
        let mut msg = String::new();
        for t in trainers.iter_mut() {
            let s = t.step(&x.inputs, x.targets.as_deref())?;
            if msg.is_empty() {
                msg = format!(
                    "FVE {:.3} L0 {:.1} dead {:.1}%",
                    s.fve,
                    s.l0,
                    100.0 * s.dead_fraction
                );
            }
        }
        bar.set_message(msg);
        bar.inc(1);
        if (step + 1) % args.checkpoint_every == 0 || step + 1 == steps {
            for (t, dir) in trainers.iter().zip(&dirs) {
                t.save_checkpoint(&dir.join(CHECKPOINT))?;
            }
        }
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let tokens = (steps - start_step) * args.batch;
    let mut results = Vec::new();
    for (t, dir) in trainers.iter().zip(&dirs) {
        save(t, dir, &args.acts, tokens as f64 / secs.max(1e-9))?;
        let last = t.history.last().copied();
        results.push(json!({"dir": dir, "activation": t.sae.cfg.activation, "final": last}));
        if !json_out {
            if let Some(s) = last {
                println!(
                    "{}: step {} · FVE {:.3} · L0 {:.1} · dead {:.2}% (training batch)",
                    dir.display(),
                    s.step + 1,
                    s.fve,
                    s.l0,
                    100.0 * s.dead_fraction
                );
            }
        }
    }
    let report = json!({"dictionaries": results, "steps": steps, "resumed_from": start_step, "tokens": tokens,
                        "seconds": secs, "tokens_per_second": tokens as f64 / secs.max(1e-9), "dictionaries_trained": trainers.len(),
                        "peak_rss_mb": peak_rss_mb()});
    if json_out {
        println!("{report}");
    } else {
        println!(
            "{} tokens × {} dictionaries in {:.1} s ({:.0} tokens/s per pass)",
            tokens,
            trainers.len(),
            secs,
            tokens as f64 / secs.max(1e-9)
        );
    }
    Ok(())
}

/// Peak resident memory of this process (Linux), in MB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn save(t: &Trainer, dir: &Path, acts: &Path, tokens_per_s: f64) -> Result<()> {
    let extra = json!({"trained_on": acts, "train": t.tc, "steps": t.step, "tokens_per_second": tokens_per_s});
    saelens::save(&t.sae, dir, extra)?;
    let history = serde_json::to_string(&t.history)?;
    glassbox_model::fsutil::atomic_write(&dir.join("history.json"), history.as_bytes())
        .with_context(|| format!("writing {}", dir.display()))?;
    Ok(())
}
