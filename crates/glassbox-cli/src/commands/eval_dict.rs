use std::path::PathBuf;

use anyhow::{bail, Result};
use glassbox_dictionary::{eval, saelens};
use glassbox_store::activations::ActivationStore;
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    /// A dictionary directory (cfg.json + sae_weights.safetensors; SAELens format).
    #[arg(long)]
    dict: PathBuf,
    /// Activations to evaluate on (a `glassbox harvest` store of the same hook).
    #[arg(long)]
    acts: PathBuf,
    /// Tokens to evaluate.
    #[arg(long, default_value_t = 200_000)]
    tokens: usize,
    /// Batch stream seed (choose one the training did not use to get unseen order).
    #[arg(long, default_value_t = 12345)]
    seed: u64,
}

pub fn run(args: Args, json_out: bool) -> Result<()> {
    let sae = saelens::load(&args.dict)?;
    let store = ActivationStore::open(&args.acts)?;
    let m = &store.manifest;
    if sae.d_in() != m.d {
        bail!(
            "the dictionary reads {} dimensions but {} holds {}-dimensional activations of {}",
            sae.d_in(),
            args.acts.display(),
            m.d,
            m.hook
        );
    }
    if !sae.cfg.hook.is_empty() && sae.cfg.hook != m.hook {
        bail!(
            "the dictionary was trained on {} but {} holds {}",
            sae.cfg.hook,
            args.acts.display(),
            m.hook
        );
    }
    let batches = store
        .batches(1024, 4, args.seed)?
        .map(|b| b.map_err(anyhow::Error::from));
    let r = eval::evaluate(&sae, batches, args.tokens)?;
    if json_out {
        println!(
            "{}",
            json!({"dict": args.dict, "acts": args.acts, "report": r})
        );
        return Ok(());
    }
    println!(
        "{} on {} ({} tokens)",
        args.dict.display(),
        m.hook,
        r.tokens
    );
    println!("  FVE        {:.4}   (1 − E‖x−x̂‖² / E‖x−mean‖²)", r.fve);
    println!("  MSE        {:.5}", r.mse);
    println!("  L0         {:.1}", r.l0);
    println!(
        "  dead       {:.2} %   (never fired)",
        100.0 * r.dead_fraction
    );
    println!(
        "  dense      {:.2} %   (fire on > {:.0} % of tokens)",
        100.0 * r.dense_fraction,
        100.0 * eval::DENSE_ABOVE
    );
    println!("  latent density (fraction of tokens a latent fires on):");
    let max = r
        .density_histogram
        .iter()
        .map(|h| h.2)
        .max()
        .unwrap_or(1)
        .max(1);
    for (lo, hi, c) in &r.density_histogram {
        println!(
            "    1e{lo:<3}..1e{hi:<3} {:>6}  {}",
            c,
            "█".repeat((40 * c).div_ceil(max))
        );
    }
    Ok(())
}
