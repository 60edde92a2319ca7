use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use glassbox_store::harvest::{harvest, HarvestConfig};
use serde_json::json;

use crate::input;

#[derive(clap::Args)]
pub struct Args {
    /// A packaged model name (`minilm`) or a model directory.
    #[arg(long)]
    model: String,
    /// The hook point to record (residual-width hooks, e.g. blocks.3.hook_resid_pre).
    #[arg(long)]
    hook: String,
    /// Also store this hook's activations as targets, for training a transcoder that reads
    /// --hook and reconstructs this one (e.g. blocks.3.hook_resid_mid → blocks.3.hook_mlp_out).
    #[arg(long)]
    target_hook: Option<String>,
    /// A corpus file or directory (.txt, .jsonl, optionally .gz); default: the corpus
    /// installed by `glassbox setup`.
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// How many tokens' activations to store.
    #[arg(long, default_value_t = 1_000_000)]
    tokens: usize,
    /// The store directory. Rerunning with the same directory resumes.
    #[arg(long)]
    out: PathBuf,
    /// Tokens per context, the model's special tokens included.
    #[arg(long, default_value_t = 128)]
    context: usize,
    /// Contexts per forward pass.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Rows per shard file.
    #[arg(long, default_value_t = 32_768)]
    shard_rows: usize,
}

pub fn run(args: Args, device: &str, json_out: bool) -> Result<()> {
    let model = input::load_model(&args.model, device)?;
    let hook = model.hook_point(&args.hook)?;
    let corpus = input::corpus(args.corpus)?;
    let target = args
        .target_hook
        .as_deref()
        .map(|t| model.hook_point(t))
        .transpose()?;
    let cfg = HarvestConfig {
        hook,
        target,
        tokens: args.tokens,
        context_len: args.context,
        batch: args.batch,
        shard_rows: args.shard_rows,
    };
    let bar = crate::report::progress(args.tokens as u64, "harvest (tokens)");
    let start = Instant::now();
    let mut first = None;
    let manifest = harvest(
        &model,
        &args.model,
        &corpus,
        &args.out,
        &cfg,
        &mut |done, _| {
            first.get_or_insert(done);
            bar.set_position(done as u64);
        },
    )
    .with_context(|| format!("harvesting into {}", args.out.display()))?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let new_tokens = manifest.tokens - first.unwrap_or(0);
    let report = json!({
        "out": args.out, "hook": manifest.hook, "target_hook": manifest.target_hook, "tokens": manifest.tokens, "new_tokens": new_tokens,
        "shards": manifest.shards.len(), "seconds": secs, "tokens_per_second": new_tokens as f64 / secs.max(1e-9),
        "complete": manifest.complete, "model_sha256": manifest.model_sha256, "corpus_sha256": manifest.corpus_sha256,
    });
    if json_out {
        println!("{report}");
    } else {
        println!(
            "stored {} tokens of {} in {} shards at {} ({} new, {:.0} tokens/s)",
            manifest.tokens,
            manifest.hook,
            manifest.shards.len(),
            args.out.display(),
            new_tokens,
            new_tokens as f64 / secs.max(1e-9)
        );
    }
    Ok(())
}
