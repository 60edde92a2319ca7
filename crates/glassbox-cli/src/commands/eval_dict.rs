use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use glassbox_dictionary::sweep::BatchSource;
use glassbox_dictionary::{eval, saelens, splice};
use glassbox_store::activations::ActivationStore;
use serde_json::json;

use crate::input;

#[derive(clap::Args)]
pub struct Args {
    /// A dictionary directory (cfg.json + sae_weights.safetensors; SAELens format).
    #[arg(long)]
    dict: PathBuf,
    /// Activations to evaluate on (a `glassbox harvest` store of the same hook).
    #[arg(long)]
    acts: PathBuf,
    /// Tokens to evaluate (at most the store's).
    #[arg(long, default_value_t = 200_000)]
    tokens: usize,
    /// Batch stream seed (choose one the training did not use to get unseen order).
    #[arg(long, default_value_t = 12345)]
    seed: u64,
    /// Contexts of the store to rerun with the reconstruction spliced into the model, for
    /// "loss recovered" (0 skips it). Decoders: next-token cross-entropy; encoders: cosine of
    /// the sentence embedding to the clean one. Both relative to zero-ablating the hook.
    #[arg(long, default_value_t = 64)]
    splice: usize,
    /// The model to splice into (default: the one the store names; its hash must match).
    #[arg(long)]
    model: Option<String>,
}

pub fn run(args: Args, device: &str, json_out: bool) -> Result<()> {
    let sae = saelens::load(&args.dict)?;
    let store = ActivationStore::open(&args.acts)?;
    let m = &store.manifest;
    sae.check_source(&store.info())?;
    let batches = store.batches(1024, 4, args.seed)?.map(|b| {
        b.map(|b| (b.inputs, b.targets))
            .map_err(anyhow::Error::from)
    });
    // One pass at most: the batch stream cycles, and a smaller store would be counted again.
    let r = eval::evaluate(&sae, batches, args.tokens.min(store.rows()))?;
    let spliced = if args.splice > 0 {
        let name = args.model.as_deref().unwrap_or(&m.model);
        let model = input::load_model(name, device).with_context(|| {
            format!("loading {name} to splice the dictionary into (--splice 0 skips this)")
        })?;
        let sha = glassbox_store::harvest::model_sha256(&model)?;
        if sha != m.model_sha256 {
            bail!("{name} is not the model {} was harvested from (its weights' SHA-256 differ); pass --model", args.acts.display());
        }
        let (prefix, suffix) = model.tokenizer.special_affixes()?;
        let contexts: Vec<Vec<u32>> = store
            .contexts(args.splice)?
            .into_iter()
            .map(|c| [prefix.as_slice(), &c, suffix.as_slice()].concat())
            .collect();
        let len = contexts
            .first()
            .map_or(0, |c| c.len() - prefix.len() - suffix.len());
        Some(splice::loss_recovered(
            &model,
            &sae,
            &contexts,
            prefix.len()..prefix.len() + len,
        )?)
    } else {
        None
    };
    if json_out {
        println!(
            "{}",
            json!({"dict": args.dict, "acts": args.acts, "report": r, "splice": spliced})
        );
        return Ok(());
    }
    println!(
        "{} on {} ({} tokens)",
        args.dict.display(),
        m.target_hook.as_deref().unwrap_or(&m.hook),
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
    if let Some(s) = &spliced {
        println!(
            "  spliced    loss recovered {}   ({} contexts, L = {}: clean {:.4}, with the dictionary {:.4}, {} zeroed {:.4}{})",
            s.loss_recovered.map_or("n/a".into(), |r| format!("{r:.4}")),
            s.contexts,
            s.metric,
            s.clean,
            s.spliced,
            s.hook,
            s.zero_ablated,
            s.kl.map(|k| format!("; KL {k:.4}")).unwrap_or_default()
        );
    }
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
