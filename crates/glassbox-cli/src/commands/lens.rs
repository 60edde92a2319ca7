//! `glassbox lens`: the logit lens — what a decoder would predict if it stopped after each
//! layer — as a layers × positions table of top tokens.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Result;
use glassbox_analysis::lens::{logit_lens, single_token};
use serde_json::json;

use crate::input;

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  \
    glassbox lens path/to/gpt2 \"The Eiffel Tower is in the city of\"\n  \
    glassbox lens path/to/gpt2 \"The Eiffel Tower is in the city of\" --target \\\\sParis --json")]
pub struct Args {
    #[command(flatten)]
    input: input::ModelText,
    /// Read the text from a file (`-` for standard input).
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Predictions kept per layer and position (the table shows the first).
    #[arg(long, default_value_t = 3)]
    top: usize,
    /// Also trace this token's rank at every layer and position (one token; a leading space
    /// as \s, e.g. \sParis).
    #[arg(long)]
    target: Option<String>,
}

pub fn run(a: Args, device: &str, json_out: bool) -> Result<()> {
    let (model_name, text_arg) = a.input.resolve()?;
    let model = input::load_model(&model_name, device)?;
    let text = input::text(text_arg, a.file.as_deref())?;
    let ids = model.tokenize(&text, false)?;
    let target = a
        .target
        .as_deref()
        .map(|t| single_token(&model, t))
        .transpose()?;
    let table = logit_lens(&model, &ids)?.table(&model, &ids, a.top.max(1), target)?;
    if json_out {
        println!("{}", json!({ "lens": table }));
        return Ok(());
    }
    let cell = |s: &str| -> String {
        let s = s.replace('\n', "⏎");
        let s: String = s.chars().take(8).collect();
        format!("{s:>8}")
    };
    let mut head = format!("{:>11}", "");
    for t in &table.tokens {
        let _ = write!(head, " {}", cell(t));
    }
    println!("top prediction (probability) after each layer, by input position\n{head}");
    for (label, row) in table.labels.iter().zip(&table.top) {
        let (mut tokens, mut probs) = (format!("{label:>11}"), format!("{:>11}", ""));
        for preds in row {
            let p = &preds[0];
            let _ = write!(tokens, " {}", cell(&p.token));
            let _ = write!(probs, " {:>8.2}", p.prob);
        }
        println!("{tokens}\n{probs}");
    }
    if let Some(t) = &table.target {
        println!("\nrank of {:?} (1 = top)\n{head}", t.token);
        for (label, row) in table.labels.iter().zip(&t.rank) {
            let mut line = format!("{label:>11}");
            for r in row {
                let _ = write!(line, " {r:>8}");
            }
            println!("{line}");
        }
    }
    Ok(())
}
