//! `glassbox patch`: activation patching between a clean and a corrupted prompt, as tables,
//! JSON and an SVG heat map.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use glassbox_analysis::patching::{attribute, sweep, Component, Direction, Method, Metric, Report};
use serde_json::json;

use crate::input;

#[derive(clap::Args)]
pub struct Args {
    /// A packaged model name (`minilm`) or a model directory.
    #[arg(long)]
    model: String,
    /// The prompt whose behaviour is studied.
    #[arg(long)]
    clean: String,
    /// The same prompt with the detail that matters changed (same number of tokens).
    #[arg(long)]
    corrupt: String,
    /// `logit-diff A B` (decoders: logit of token A minus B at the last position; a leading
    /// space as \s, e.g. `logit-diff \sParis \sRome`) or `cosine` (cosine of the pooled
    /// embedding with the clean run's).
    #[arg(long, default_value = "cosine")]
    metric: String,
    /// Patch corrupted activations into the clean run (noising) instead of the reverse.
    #[arg(long)]
    reverse: bool,
    /// Attribution patching: estimate every effect from one backward pass (first order)
    /// instead of patching each component in its own run.
    #[arg(long)]
    attribution: bool,
    /// Also write the heat maps (layer × position, layer × head) as an SVG image.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
}

pub fn run(a: Args, device: &str, json_out: bool) -> Result<()> {
    let model = input::load_model(&a.model, device)?;
    let metric = Metric::parse(&a.metric, &model)?;
    let clean = model.tokenize(&a.clean, false)?;
    let corrupt = model.tokenize(&a.corrupt, false)?;
    let direction = if a.reverse {
        Direction::Noise
    } else {
        Direction::Denoise
    };
    let started = Instant::now();
    let patch = if a.attribution { attribute } else { sweep };
    let r = patch(
        &model,
        &clean,
        &corrupt,
        &metric,
        direction,
        &Component::ALL,
    )?;
    let secs = started.elapsed().as_secs_f64();
    if let Some(path) = &a.svg {
        glassbox_store::fsutil::atomic_write(path, heat_map(&r).as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if json_out {
        println!(
            "{}",
            json!({"report": r, "seconds": secs, "metric": a.metric})
        );
        return Ok(());
    }
    println!(
        "{} · {} · metric `{}`: clean {:.4}, corrupted {:.4} · {} · {} forward passes{} in {:.2} s",
        match r.method {
            Method::Activation => "activation patching",
            Method::Attribution => "attribution patching (first-order estimate)",
        },
        a.model,
        a.metric,
        r.clean_metric,
        r.corrupt_metric,
        match direction {
            Direction::Denoise => "clean → corrupted (1 = the patch restores the clean metric)",
            Direction::Noise => "corrupted → clean (1 = the patch gives the corrupted metric)",
        },
        r.forward_passes,
        if r.method == Method::Attribution {
            " + 1 backward"
        } else {
            ""
        },
        secs
    );
    for s in &r.sweeps {
        let cols: Vec<String> = if s.component == Component::HeadZ {
            (0..s.effects[0].len()).map(|h| format!("h{h}")).collect()
        } else {
            r.tokens
                .iter()
                .map(|t| t.trim().chars().take(7).collect())
                .collect()
        };
        println!("\n{}", s.component.name());
        let mut line = format!("{:>6}", "layer");
        for c in &cols {
            let _ = write!(line, " {c:>7}");
        }
        println!("{line}");
        for (l, row) in s.effects.iter().enumerate() {
            let mut line = format!("{l:>6}");
            for e in row {
                let _ = write!(line, " {e:>7.3}");
            }
            println!("{line}");
        }
    }
    if let Some(path) = &a.svg {
        println!("\nheat map: {}", path.display());
    }
    Ok(())
}

/// One heat map per component: layers down, positions (or heads) across; red for positive
/// effects, blue for negative, white for none.
fn heat_map(r: &Report) -> String {
    let (cell, label, gap) = (34.0, 60.0, 40.0);
    let width = r
        .sweeps
        .iter()
        .map(|s| s.effects[0].len())
        .max()
        .unwrap_or(1) as f64
        * cell
        + label
        + 20.0;
    let height: f64 = r
        .sweeps
        .iter()
        .map(|s| s.effects.len() as f64 * cell + gap + 30.0)
        .sum();
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{width:.0}' height='{height:.0}' font-family='sans-serif' font-size='11'>"
    );
    let esc = |t: &str| {
        t.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut y = 20.0;
    for s in &r.sweeps {
        let _ = write!(
            svg,
            "<text x='0' y='{y:.0}' font-weight='bold'>{}</text>",
            s.component.name()
        );
        y += 8.0;
        for (l, row) in s.effects.iter().enumerate() {
            let _ = write!(
                svg,
                "<text x='0' y='{:.0}'>layer {l}</text>",
                y + cell * 0.6
            );
            for (i, &e) in row.iter().enumerate() {
                let v = if e.is_finite() {
                    e.clamp(-1.0, 1.0)
                } else {
                    0.0
                };
                let fade = (255.0 * (1.0 - v.abs())) as u8;
                let fill = if v >= 0.0 {
                    format!("rgb(255,{fade},{fade})")
                } else {
                    format!("rgb({fade},{fade},255)")
                };
                let _ = write!(
                    svg,
                    "<rect x='{:.0}' y='{y:.0}' width='{:.0}' height='{:.0}' fill='{fill}' stroke='#eee'><title>{e:.4}</title></rect>",
                    label + i as f64 * cell,
                    cell - 1.0,
                    cell - 1.0
                );
            }
            y += cell;
        }
        let cols: Vec<String> = if s.component == Component::HeadZ {
            (0..s.effects[0].len()).map(|h| format!("h{h}")).collect()
        } else {
            r.tokens.iter().map(|t| esc(t.trim())).collect()
        };
        for (i, c) in cols.iter().enumerate() {
            let _ = write!(
                svg,
                "<text x='{:.0}' y='{:.0}' text-anchor='middle'>{c}</text>",
                label + (i as f64 + 0.5) * cell,
                y + 12.0
            );
        }
        y += gap;
    }
    svg.push_str("</svg>");
    svg
}
