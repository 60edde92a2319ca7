//! Decoding speed of a GGUF chat model (default: the packaged SmolLM2): prefill tokens/s on a
//! 512-token prompt and decode tokens/s for 128 new tokens at batch 1, with no hooks or with
//! the residual stream recorded at every layer, and the process's peak RSS. One case per
//! process, so the RSS is the case's own. Run through `bench/decode.sh`, which puts llama.cpp
//! beside it on the same file.
//!
//! `cargo bench -p glassbox-model --bench decode -- [--model NAME|PATH] [--hooks none|resid]
//!  [--prompt-tokens 512] [--new-tokens 128] [--repeats 3] [--device cpu|cuda]
//!  [--write-prompt IDS.json]` (`--device cuda` in a `--features cuda` build)

use std::time::Instant;

use glassbox_model::{registry, BlockHook, HookPoint, Hooks, Model};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn hooks(model: &Model, kind: &str) -> Hooks<'static> {
    match kind {
        "none" => Hooks::none(),
        "resid" => Hooks::none().record_all(
            (0..model.config.n_layers).map(|l| HookPoint::block(l, BlockHook::ResidPost)),
        ),
        other => panic!("unknown hook set {other}: none or resid"),
    }
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    // As the glassbox binary does.
    glassbox_model::join_thread_pool();
    let name = arg("--model", "smollm2");
    let kind = arg("--hooks", "none");
    let n_prompt: usize = arg("--prompt-tokens", "512")
        .parse()
        .expect("--prompt-tokens");
    let n_new: usize = arg("--new-tokens", "128").parse().expect("--new-tokens");
    let repeats: usize = arg("--repeats", "3").parse().expect("--repeats");
    let path = registry::resolve(&name).expect("model (run `cargo glassbox setup`)");
    let started = Instant::now();
    let device = glassbox_model::device(&arg("--device", "cpu")).expect("--device");
    let model = Model::load(&path, &device).expect("load");
    let load_s = started.elapsed().as_secs_f64();
    let readme = include_str!("../../../README.md").repeat(4);
    let mut prompt = model.tokenizer.encode_plain(&readme).expect("tokenize");
    prompt.truncate(n_prompt);
    assert_eq!(
        prompt.len(),
        n_prompt,
        "the README is too short for the prompt"
    );
    let out = arg("--write-prompt", "");
    if !out.is_empty() {
        // For the reference runtime: the same token ids.
        std::fs::write(&out, serde_json::to_string(&prompt).expect("json")).expect("write");
        return;
    }

    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    let run = |prefill: &mut Vec<f64>, decode: &mut Vec<f64>| {
        for _ in 0..repeats {
            let mut cache = model.new_cache();
            let batch = model
                .batch_ids(std::slice::from_ref(&prompt))
                .expect("batch");
            let t = Instant::now();
            let mut logits = model
                .forward_last(&batch, &mut hooks(&model, &kind), &mut cache)
                .expect("prefill");
            device.synchronize().expect("synchronize"); // a GPU returns before it is done
            prefill.push(n_prompt as f64 / t.elapsed().as_secs_f64());
            let t = Instant::now();
            for _ in 0..n_new {
                let next = logits
                    .argmax(0)
                    .and_then(|i| i.to_scalar::<u32>())
                    .expect("argmax");
                let step = model.batch_ids(&[vec![next]]).expect("batch");
                let mut h = hooks(&model, &kind);
                logits = model
                    .forward_last(&step, &mut h, &mut cache)
                    .expect("decode");
                std::hint::black_box(h.cache().len());
            }
            decode.push(n_new as f64 / t.elapsed().as_secs_f64());
        }
    };
    run(&mut prefill, &mut decode);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "{}",
        serde_json::json!({
            "runtime": "glassbox", "device": arg("--device", "cpu"), "model": name, "hooks": kind, "threads": rayon::current_num_threads(),
            "prompt_tokens": n_prompt, "new_tokens": n_new, "load_s": load_s,
            "prefill_tok_s": median(&mut prefill), "decode_tok_s": median(&mut decode),
            "peak_rss_mb": peak_rss_mb(),
        })
    );
}
