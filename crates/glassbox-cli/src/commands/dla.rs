//! `glassbox dla`: direct logit attribution — how much each head, MLP and embedding writes
//! the target logit (or logit difference) straight into the final residual stream.

use std::path::PathBuf;

use anyhow::Result;
use glassbox_analysis::lens::{direct_logit_attribution, LogitTarget};
use serde_json::json;

use crate::input;

#[derive(clap::Args)]
#[command(
    after_help = "The final norm's scale is the one of the real run (TransformerLens's \
    cached ln_final.hook_scale), so the pieces plus the bias add up to the logit.\n\n\
    Examples:\n  \
    glassbox dla path/to/gpt2 \"When Mary and John went to the store, John gave a drink to\" --target \\\\sMary --minus \\\\sJohn\n  \
    glassbox dla path/to/gpt2 \"The capital of France is\" --target \\\\sParis --json"
)]
pub struct Args {
    #[command(flatten)]
    input: input::ModelText,
    /// Read the text from a file (`-` for standard input).
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// The token whose logit is explained (one token; a leading space as \s). Default: the
    /// model's top prediction.
    #[arg(long)]
    target: Option<String>,
    /// Explain the logit difference target − this token instead.
    #[arg(long)]
    minus: Option<String>,
    /// The position to explain (default: the last token).
    #[arg(long)]
    pos: Option<usize>,
    /// Pieces listed, largest magnitude first.
    #[arg(long, default_value_t = 15)]
    top: usize,
}

pub fn run(a: Args, device: &str, json_out: bool) -> Result<()> {
    let (model_name, text_arg) = a.input.resolve()?;
    let model = input::load_model(&model_name, device)?;
    let text = input::text(text_arg, a.file.as_deref())?;
    let ids = model.tokenize(&text, false)?;
    let target =
        LogitTarget::parse_or_top(&model, &ids, a.pos, a.target.as_deref(), a.minus.as_deref())?;
    let dla = direct_logit_attribution(&model, &ids, a.pos, target)?;
    if json_out {
        println!("{}", json!({ "dla": dla, "sum": dla.total() }));
        return Ok(());
    }
    println!(
        "{} at position {} ({:?}): model {:.4} = Σ pieces {:.4} + bias {:.4} (final-norm scale {:.4})",
        dla.target,
        dla.position,
        dla.token,
        dla.logit,
        dla.total() - dla.bias,
        dla.bias,
        dla.scale
    );
    let mut order: Vec<&_> = dla.pieces.iter().collect();
    order.sort_by(|x, y| y.value.abs().total_cmp(&x.value.abs()));
    let widest = order.first().map_or(1.0, |p| p.value.abs()).max(1e-9);
    println!("\n{:<14} {:>9}", "piece", "logit");
    for p in order.iter().take(a.top) {
        let n = ((p.value.abs() / widest) * 30.0).round() as usize;
        let bar = if p.value >= 0.0 { "█" } else { "░" }.repeat(n);
        println!("{:<14} {:>9.4}  {bar}", p.label, p.value);
    }
    println!("\n{:>5} {:>9} {:>9}", "layer", "attn", "mlp");
    for (l, (attn, mlp)) in dla.per_layer(model.config.n_layers).iter().enumerate() {
        println!("{l:>5} {attn:>9.4} {mlp:>9.4}");
    }
    println!("(█ raises the target, ░ lowers it)");
    Ok(())
}
