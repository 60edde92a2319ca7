//! `glassbox heads`: score every attention head by what its pattern does on probe inputs.

use std::time::Instant;

use anyhow::Result;
use glassbox_analysis::heads::induction_scores;
use serde_json::json;

use crate::input;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Induction heads: every head's attention on repeated random tokens. The induction score
    /// is the mean attention from each token of the second copy to the token after its first
    /// occurrence; the previous-token score, the mean attention to the position before.
    #[command(after_help = "Examples:\n  \
        glassbox heads induction path/to/gpt2\n  \
        glassbox heads induction minilm --seq-len 100 --batch 16 --json")]
    Induction(InductionArgs),
}

#[derive(clap::Args)]
pub struct InductionArgs {
    #[command(flatten)]
    model: input::ModelName,
    /// Random tokens per copy (the input is 2 × this, plus BOS where the model has one).
    #[arg(long, default_value_t = 50)]
    seq_len: usize,
    /// Random sequences averaged over.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Heads listed, highest induction score first.
    #[arg(long, default_value_t = 10)]
    top: usize,
}

pub fn run(cmd: Command, device: &str, json_out: bool) -> Result<()> {
    let Command::Induction(a) = cmd;
    let model_name = a.model.resolve()?;
    let model = input::load_model(&model_name, device)?;
    let started = Instant::now();
    let scores = induction_scores(&model, a.seq_len, a.batch, a.seed)?;
    let secs = started.elapsed().as_secs_f64();
    if json_out {
        println!("{}", json!({ "scores": scores, "seconds": secs }));
        return Ok(());
    }
    println!(
        "{}: {} sequences of 2 × {} random tokens, {:.2} s\n",
        model_name, a.batch, a.seq_len, secs
    );
    println!(
        "{:>5} {:>4} {:>9} {:>9}",
        "layer", "head", "induction", "prev-tok"
    );
    for (l, h, ind, prev) in scores.ranking().into_iter().take(a.top) {
        let bar = "█".repeat((ind * 20.0).round().max(0.0) as usize);
        println!("{l:>5} {h:>4} {ind:>9.3} {prev:>9.3}  {bar}");
    }
    Ok(())
}
