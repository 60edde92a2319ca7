//! `glassbox chat`: an interactive conversation in the terminal, with the model's chat template
//! applied to the whole history and the reply streamed as it is produced.

use std::io::{BufRead, Write};

use anyhow::Result;
use glassbox_model::chat::Message;

use crate::commands::generate::{prompt_ids, Print, SamplingArgs};
use crate::input;

#[derive(clap::Args)]
#[command(
    after_help = "Type a message and press Enter. Commands: /reset forgets the conversation, \
    /exit (or Ctrl-D) leaves.\n\nExamples:\n  \
    glassbox chat smollm2\n  \
    glassbox chat smollm2 --system \"Answer in one sentence.\" --temperature 0.7 --top-p 0.9"
)]
pub struct Args {
    #[command(flatten)]
    model: input::ModelName,
    /// A system message that opens the conversation.
    #[arg(long)]
    system: Option<String>,
    /// Most tokens per reply.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
}

pub fn run(args: Args, device: &str) -> Result<()> {
    let model_name = args.model.resolve()?;
    let model = input::load_model(&model_name, device)?;
    // Fail now, not after the first message, if there is no usable template.
    model.apply_chat_template(&[Message::new("user", "hi")], true)?;
    let opening: Vec<Message> = args
        .system
        .iter()
        .map(|s| Message::new("system", s))
        .collect();
    let mut history = opening.clone();
    eprintln!(
        "chatting with {} ({} layers) · /reset, /exit",
        model_name, model.config.n_layers
    );
    let stdin = std::io::stdin();
    let mut turn = 0u64;
    loop {
        eprint!("\nyou> ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            eprintln!();
            return Ok(());
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => return Ok(()),
            "/reset" => {
                history = opening.clone();
                eprintln!("(conversation forgotten)");
                continue;
            }
            _ => {}
        }
        history.push(Message::new("user", line));
        let ids = prompt_ids(&model, Some(&history), line)?;
        // A fresh seed per turn, derived from the given one: reproducible, yet not the same
        // draws every turn.
        let mut cfg = args.sampling.config(args.max_tokens, 0);
        cfg.sampling.seed = cfg.sampling.seed.wrapping_add(turn);
        turn += 1;
        eprint!("{}> ", model_name);
        let g = model.generate(&ids, &cfg, &mut Print)?;
        println!();
        history.push(Message::new("assistant", g.text.trim()));
    }
}
