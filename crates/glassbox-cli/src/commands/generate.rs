//! `glassbox generate`: continue a prompt (or answer one chat message) with greedy decoding or
//! sampling, streaming the text as it is produced.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use glassbox_model::chat::Message;
use glassbox_model::generate::{GenerateConfig, Steps};
use glassbox_model::sampling::{Choice, Sampling};
use glassbox_model::{Hooks, Model};
use serde_json::json;

use crate::input;

/// How the next token is chosen (shared by `generate` and `chat`).
#[derive(clap::Args, Clone)]
pub struct SamplingArgs {
    /// Softmax temperature; 0 is greedy (always the most likely token).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sample only among the k most likely tokens (0: no limit).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sample only among the most likely tokens whose probabilities add up to p (nucleus).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one.
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Penalise tokens already in the text (1: none; 1.1–1.3 curbs loops).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Random seed: the same seed and settings give the same text.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// End the text before this string (repeatable).
    #[arg(long, value_name = "TEXT")]
    stop: Vec<String>,
}

impl SamplingArgs {
    pub fn config(&self, max_new: usize, top_logprobs: usize) -> GenerateConfig {
        GenerateConfig {
            max_new,
            sampling: Sampling {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repetition_penalty: self.repetition_penalty,
                seed: self.seed,
            },
            stop: self.stop.iter().map(|s| unescape(s)).collect(),
            top_logprobs,
        }
    }
}

/// `\n` and `\t` typed on a command line mean a newline and a tab.
fn unescape(s: &str) -> String {
    s.replace("\\n", "\n").replace("\\t", "\t")
}

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  \
    glassbox generate smollm2 \"The capital of France is\" --max-tokens 20\n  \
    glassbox generate smollm2 \"Write a haiku about rust.\" --chat --temperature 0.8 --top-p 0.9 --seed 7\n  \
    glassbox generate smollm2 \"1, 2, 3,\" --stop '\\n' --logprobs 3 --json")]
pub struct Args {
    #[command(flatten)]
    input: input::ModelText,
    /// Read the prompt from a file (`-` for standard input).
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Most tokens to generate (stops earlier at the end-of-sequence token or a stop string).
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    /// Treat the prompt as a user message and apply the model's chat template.
    #[arg(long)]
    chat: bool,
    /// With --chat: a system message.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Report each generated token's log-probability and this many alternatives.
    #[arg(long, value_name = "N", default_value_t = 0)]
    logprobs: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
}

/// Streams each piece of final text to stdout.
pub struct Print;

impl Steps for Print {
    fn hooks(&mut self) -> Hooks<'_> {
        Hooks::none()
    }

    fn token(&mut self, _: &Choice, text: &str) -> bool {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
        true
    }
}

/// The prompt's token ids: plain text with the model's special tokens, or a rendered chat.
pub fn prompt_ids(model: &Model, messages: Option<&[Message]>, text: &str) -> Result<Vec<u32>> {
    Ok(match messages {
        Some(m) => model
            .tokenizer
            .encode_plain(&model.apply_chat_template(m, true)?)?,
        None => model.tokenize(text, false)?,
    })
}

pub fn run(args: Args, device: &str, json_out: bool) -> Result<()> {
    let (model_name, prompt_arg) = args.input.resolve()?;
    let model = input::load_model(&model_name, device)?;
    let prompt = input::text(prompt_arg, args.file.as_deref())?;
    let messages: Option<Vec<Message>> = args.chat.then(|| {
        args.system
            .iter()
            .map(|s| Message::new("system", s))
            .chain([Message::new("user", &prompt)])
            .collect()
    });
    let ids = prompt_ids(&model, messages.as_deref(), &prompt)?;
    let cfg = args.sampling.config(args.max_tokens, args.logprobs);
    let start = Instant::now();
    let g = if json_out {
        model.generate(&ids, &cfg, &mut glassbox_model::generate::Plain)?
    } else {
        if !args.chat {
            print!("{prompt}");
        }
        let g = model.generate(&ids, &cfg, &mut Print)?;
        println!();
        g
    };
    let secs = start.elapsed().as_secs_f64();
    let rate = g.tokens.len() as f64 / secs.max(1e-9);
    if json_out {
        let tokens: Vec<_> = g
            .tokens
            .iter()
            .map(|c| {
                json!({"id": c.id, "token": model.tokenizer.piece(c.id), "logprob": c.logprob,
                       "top_logprobs": c.top.iter().map(|(t, l)| json!({"id": t, "token": model.tokenizer.piece(*t), "logprob": l})).collect::<Vec<_>>()})
            })
            .collect();
        println!(
            "{}",
            json!({"prompt": prompt, "prompt_ids": ids, "generated_ids": g.tokens.iter().map(|c| c.id).collect::<Vec<_>>(),
                   "text": g.text, "finish_reason": g.finish.as_str(), "tokens": tokens,
                   "seconds": secs, "tokens_per_second": rate})
        );
    } else {
        if args.logprobs > 0 {
            eprintln!("\ntoken              logprob  alternatives");
            for c in &g.tokens {
                let alts: Vec<String> = c
                    .top
                    .iter()
                    .map(|(t, l)| format!("{:?} {l:.2}", model.tokenizer.piece(*t)))
                    .collect();
                eprintln!(
                    "{:<18} {:>7.3}  {}",
                    format!("{:?}", model.tokenizer.piece(c.id)),
                    c.logprob,
                    alts.join("  ")
                );
            }
        }
        eprintln!(
            "({} tokens in {:.2} s, {:.1} tokens/s, finished: {})",
            g.tokens.len(),
            secs,
            rate,
            g.finish.as_str()
        );
    }
    Ok(())
}
