use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use serde_json::json;

use crate::input;

#[derive(clap::Args)]
pub struct Args {
    /// A decoder model directory (GPT-2, Llama, Qwen2 families).
    model: String,
    /// The prompt (or use --file).
    prompt: Option<String>,
    /// Read the prompt from a file (`-` for standard input).
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Most tokens to generate (stops earlier at the end-of-sequence token).
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
}

pub fn run(args: Args, device: &str, json_out: bool) -> Result<()> {
    let model = input::load_model(&args.model, device)?;
    let prompt = input::text(args.prompt, args.file.as_deref())?;
    let ids = model.tokenize(&prompt, false)?;
    let start = Instant::now();
    let generated = model.generate_greedy(&ids, args.max_tokens)?;
    let secs = start.elapsed().as_secs_f64();
    let text = model.tokenizer.decode(&generated)?;
    if json_out {
        println!(
            "{}",
            json!({"prompt": prompt, "prompt_ids": ids, "generated_ids": generated, "text": text,
                   "seconds": secs, "tokens_per_second": generated.len() as f64 / secs.max(1e-9)})
        );
    } else {
        println!("{prompt}{text}");
        eprintln!(
            "({} tokens in {:.2} s, {:.1} tokens/s)",
            generated.len(),
            secs,
            generated.len() as f64 / secs.max(1e-9)
        );
    }
    Ok(())
}
