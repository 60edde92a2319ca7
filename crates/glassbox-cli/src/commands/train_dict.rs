use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::Result;
use glassbox_dictionary::sweep::{self, Sweep, SweepConfig};
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

pub fn run(args: Args, json_out: bool) -> Result<()> {
    let store = ActivationStore::open(&args.acts)?;
    let cfg = SweepConfig {
        arch: match args.arch {
            Arch::Topk => sweep::Arch::TopK,
            Arch::Batchtopk => sweep::Arch::BatchTopK,
            Arch::Relu => sweep::Arch::Relu { l1: args.l1 },
            Arch::Jumprelu => sweep::Arch::JumpRelu {
                l0: args.l0,
                bandwidth: args.bandwidth,
            },
        },
        ks: args.k,
        width: args.width,
        batch: args.batch,
        steps: args.steps,
        lr: args.lr,
        warmup: args.warmup,
        aux_k: args.aux_k,
        dead_after: args.dead_after,
        checkpoint_every: args.checkpoint_every,
        seed: args.seed,
    };
    let mut sweep = Sweep::open(&args.out, &store, &cfg)?;
    let bar = crate::report::progress(sweep.steps() as u64, "train (steps)");
    bar.set_position(sweep.start_step() as u64);
    let report = sweep.run(&store, |p| {
        let s = p.stats;
        bar.set_message(format!(
            "FVE {:.3} L0 {:.1} dead {:.1}%",
            s.fve,
            s.l0,
            100.0 * s.dead_fraction
        ));
        bar.set_position(p.step as u64);
        ControlFlow::Continue(())
    })?;
    bar.finish_and_clear();
    if json_out {
        let mut value = serde_json::to_value(&report)?;
        value["dictionaries_trained"] = json!(report.dictionaries.len());
        value["peak_rss_mb"] = json!(peak_rss_mb());
        println!("{value}");
        return Ok(());
    }
    for d in &report.dictionaries {
        if let Some(s) = d.last {
            println!(
                "{}: step {} · FVE {:.3} · L0 {:.1} · dead {:.2}% (training batch)",
                d.dir.display(),
                s.step + 1,
                s.fve,
                s.l0,
                100.0 * s.dead_fraction
            );
        }
    }
    println!(
        "{} tokens × {} dictionaries in {:.1} s ({:.0} tokens/s per pass)",
        report.tokens,
        report.dictionaries.len(),
        report.seconds,
        report.tokens_per_second
    );
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
