use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use glassbox_model::{BlockHook, HookPoint, Hooks, Model, Tensor};
use serde_json::{json, Value};

use crate::input;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    input: input::ModelText,
    /// Read the input text from a file (`-` for standard input).
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Hook points to record; repeatable, `*` matches any run of characters
    /// (e.g. `blocks.*.hook_resid_post`). See --list-hooks.
    #[arg(long = "hook", value_name = "NAME")]
    hooks: Vec<String>,
    /// List the model's hook points and exit.
    #[arg(long)]
    list_hooks: bool,
    /// How many top dimensions / next tokens to show.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Keep the first tokens of an input longer than the model's context instead of refusing it.
    #[arg(long)]
    truncate: bool,
    /// Write the recorded activations in full: `.safetensors` (every --hook, by name; NumPy,
    /// PyTorch and safetensors readers open it) or `.npy` (one --hook).
    #[arg(long, value_name = "FILE")]
    save: Option<PathBuf>,
}

/// Entries of `t` (indexed from dimension 0) with the largest magnitude.
fn top_entries(t: &Tensor, k: usize) -> Result<Vec<(Vec<usize>, f32)>> {
    let dims = t.dims().to_vec();
    let values = t.flatten_all()?.to_vec1::<f32>()?;
    let mut order: Vec<usize> = (0..values.len()).collect();
    let k = k.min(values.len());
    if k == 0 {
        return Ok(Vec::new());
    }
    order.select_nth_unstable_by(k - 1, |&a, &b| values[b].abs().total_cmp(&values[a].abs()));
    order.truncate(k);
    order.sort_by(|&a, &b| values[b].abs().total_cmp(&values[a].abs()));
    Ok(order
        .into_iter()
        .map(|flat| {
            let mut idx = vec![0; dims.len()];
            let mut rem = flat;
            for (d, size) in dims.iter().enumerate().rev() {
                idx[d] = rem % size;
                rem /= size;
            }
            (idx, values[flat])
        })
        .collect())
}

/// The slice that describes the last token: `[pos-1, ...]`, or for attention patterns
/// `[head, key]` of the last query.
fn last_token_slice(point: &HookPoint, t: &Tensor) -> Result<Tensor> {
    let t = t.get(0)?;
    Ok(match point {
        HookPoint::Block(_, BlockHook::AttnPattern | BlockHook::AttnScores) => {
            let q = t.dims()[1];
            t.narrow(1, q.saturating_sub(1), 1)?.squeeze(1)?
        }
        _ => t.get(t.dims()[0].saturating_sub(1))?,
    })
}

fn describe(point: &HookPoint, t: &Tensor, top: usize) -> Result<Value> {
    let norm = t.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
    let per_token: Vec<f32> = match point {
        HookPoint::Block(_, BlockHook::AttnPattern | BlockHook::AttnScores) => Vec::new(),
        _ => {
            let x = t.get(0)?;
            let pos = x.dims()[0];
            x.reshape((pos, ()))?.sqr()?.sum(1)?.sqrt()?.to_vec1()?
        }
    };
    let top = if t.dims().get(1).copied().unwrap_or(0) == 0 {
        Vec::new()
    } else {
        top_entries(&last_token_slice(point, t)?, top)?
    };
    Ok(json!({
        "hook": point.to_string(),
        "shape": t.dims(),
        "norm": norm,
        "per_token_norm": per_token,
        "top_last_token": top.iter().map(|(i, v)| json!({"index": i, "value": v})).collect::<Vec<_>>(),
    }))
}

pub fn run(args: Args, device: &str, json_out: bool) -> Result<()> {
    let (model_name, text_arg) = args.input.resolve()?;
    let model = input::load_model(&model_name, device)?;
    if args.list_hooks {
        let names: Vec<String> = model
            .hook_points()
            .iter()
            .map(ToString::to_string)
            .collect();
        if json_out {
            println!("{}", json!({ "hooks": names }));
        } else {
            names.iter().for_each(|n| println!("{n}"));
        }
        return Ok(());
    }
    let text = input::text(text_arg, args.file.as_deref())?;
    let points = model.resolve_hooks(&args.hooks)?;
    if args.save.is_some() && points.is_empty() {
        bail!("--save writes recorded activations: name them with --hook (see --list-hooks)");
    }
    let ids = model.tokenize(&text, args.truncate)?;
    let batch = model.batch_ids(std::slice::from_ref(&ids))?;
    let mut hooks = Hooks::none().record_all(points.iter().copied());
    let start = Instant::now();
    let out = model.forward(&batch, &mut hooks, None)?;
    let elapsed_ms = start.elapsed().as_secs_f64() * 1e3;
    let cache = hooks.into_cache();
    if let Some(path) = &args.save {
        cache.save(path)?;
    }

    // Readable pieces (` capital`), not vocabulary strings (`Ġcapital`).
    let tokens: Vec<String> = ids.iter().map(|&i| model.tokenizer.piece(i)).collect();
    let activations = points
        .iter()
        .filter_map(|p| cache.get(p).map(|t| describe(p, t, args.top)))
        .collect::<Result<Vec<_>>>()?;
    let mut report = json!({
        "model": model_name,
        "architecture": model.config.arch,
        "tokens": tokens,
        "token_ids": ids,
        "forward_ms": elapsed_ms,
        "activations": activations,
        "saved": args.save,
    });
    if let Some(logits) = &out.logits {
        report["next_tokens"] = next_tokens(&model, logits, args.top)?;
    } else if !ids.is_empty() {
        let emb = model.sentence_embedding(&batch, &out.hidden)?.get(0)?;
        report["sentence_embedding"] = json!(emb.to_vec1::<f32>()?);
    }
    if json_out {
        println!("{report}");
    } else {
        print_report(&model, &report);
        if let Some(path) = &args.save {
            println!(
                "\nsaved {} activation tensors to {}",
                points.len(),
                path.display()
            );
        }
    }
    Ok(())
}

fn next_tokens(model: &Model, logits: &Tensor, k: usize) -> Result<Value> {
    let t = logits.dims()[1];
    if t == 0 {
        return Ok(json!([]));
    }
    let last = logits.get(0)?.get(t - 1)?;
    let probs = glassbox_model::ops::softmax_last_dim(&last.unsqueeze(0)?)?
        .squeeze(0)?
        .to_vec1::<f32>()?;
    let logit_values = last.to_vec1::<f32>()?;
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    Ok(order
        .into_iter()
        .take(k)
        .map(|i| {
            json!({"id": i, "token": model.tokenizer.piece(i as u32), "vocab": model.tokenizer.token(i as u32), "logit": logit_values[i], "prob": probs[i]})
        })
        .collect())
}

fn print_report(model: &Model, r: &Value) {
    let c = &model.config;
    let tokens: Vec<&str> = r["tokens"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|t| t.trim_start_matches(' '))
                .collect()
        })
        .unwrap_or_default();
    println!(
        "{} ({}, {} layers, d_model {}) · {} tokens · forward {:.1} ms",
        r["model"].as_str().unwrap_or(""),
        c.model_type,
        c.n_layers,
        c.d_model,
        tokens.len(),
        r["forward_ms"].as_f64().unwrap_or(0.0)
    );
    println!("tokens: {}", tokens.join(" │ "));
    if let Some(acts) = r["activations"].as_array().filter(|a| !a.is_empty()) {
        println!(
            "\n{:<34} {:<18} {:>9}  top entries at the last token (index: value)",
            "HOOK", "SHAPE", "NORM"
        );
        for a in acts {
            let top: Vec<String> = a["top_last_token"]
                .as_array()
                .map(|v| {
                    v.iter()
                        .map(|e| {
                            format!("{}: {:+.3}", e["index"], e["value"].as_f64().unwrap_or(0.0))
                        })
                        .collect()
                })
                .unwrap_or_default();
            println!(
                "{:<34} {:<18} {:>9.3}  {}",
                a["hook"].as_str().unwrap_or(""),
                a["shape"].to_string(),
                a["norm"].as_f64().unwrap_or(0.0),
                top.join("  ")
            );
        }
    } else {
        println!("(no hooks recorded; add --hook NAME, see --list-hooks)");
    }
    if let Some(next) = r["next_tokens"].as_array() {
        println!("\nnext token   prob     logit");
        for n in next {
            println!(
                "{:<12} {:>6.2}%  {:>7.3}",
                format!("{:?}", n["token"].as_str().unwrap_or("?")),
                100.0 * n["prob"].as_f64().unwrap_or(0.0),
                n["logit"].as_f64().unwrap_or(0.0)
            );
        }
    }
    if let Some(e) = r["sentence_embedding"].as_array() {
        let head: Vec<String> = e
            .iter()
            .take(6)
            .map(|v| format!("{:+.4}", v.as_f64().unwrap_or(0.0)))
            .collect();
        println!(
            "\nsentence embedding ({} dims, mean-pooled, L2-normalised): [{}, …]",
            e.len(),
            head.join(", ")
        );
    }
}
