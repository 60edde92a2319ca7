//! `glassbox graph`: a feature attribution graph from a prompt to a target, as JSON and as a
//! static HTML page whose SVG lays the graph out by layer (left to right) and position (top
//! to bottom), so a reviewer can follow a path from the input tokens to the output.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use glassbox_analysis::graph::{attribution_graph, Graph, GraphConfig, GraphTarget, NodeKind};
use glassbox_analysis::lens::LogitTarget;
use glassbox_dictionary::{probe::Probe, saelens};
use serde_json::json;

use crate::input;

#[derive(clap::Args)]
#[command(
    after_help = "Attention patterns and norm scales are frozen; features and dictionary \
    errors are nodes; edges are gradient × activation. See crates/glassbox-analysis/src/graph.rs.\n\n\
    Examples:\n  \
    glassbox graph path/to/gpt2 \"The capital of France is\" --dict saes/l4 --dict saes/l8 --target \\\\sParis --html graph.html\n  \
    glassbox graph minilm \"my password is hunter2\" --dict glassbox-work/dict --probe probes/credentials --out graph.json"
)]
pub struct Args {
    #[command(flatten)]
    input: input::ModelText,
    /// Read the prompt from a file (`-` for standard input).
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// A dictionary directory (SAE); repeat for several layers.
    #[arg(long = "dict", value_name = "DIR", required = true)]
    dicts: Vec<PathBuf>,
    /// Target: this token's logit (decoders; a leading space as \s).
    #[arg(long, conflicts_with = "probe")]
    target: Option<String>,
    /// With --target: explain the logit difference target − this token.
    #[arg(long, requires = "target")]
    minus: Option<String>,
    /// Target: a probe's logit (any model; the probe must read a hook after the dictionaries).
    #[arg(long, value_name = "DIR")]
    probe: Option<PathBuf>,
    /// The target's position (default: the last token).
    #[arg(long)]
    pos: Option<usize>,
    /// Features kept per dictionary layer (largest |influence|).
    #[arg(long, default_value_t = 12)]
    nodes: usize,
    /// Drop edges under this fraction of the largest |effect|.
    #[arg(long, default_value_t = 0.02)]
    threshold: f32,
    /// Write the graph as JSON here.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Write the HTML/SVG view here.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
}

pub fn run(a: Args, device: &str, json_out: bool) -> Result<()> {
    let (model_name, text_arg) = a.input.resolve()?;
    let model = input::load_model(&model_name, device)?;
    let text = input::text(text_arg, a.file.as_deref())?;
    let ids = model.tokenize(&text, false)?;
    let dicts = a
        .dicts
        .iter()
        .map(|d| {
            saelens::load(d).with_context(|| format!("loading the dictionary {}", d.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let probe;
    let target = match (&a.target, &a.probe) {
        (Some(t), _) => GraphTarget::Logit(LogitTarget::parse(&model, t, a.minus.as_deref())?),
        (None, Some(p)) => {
            probe = Probe::load(p)?;
            GraphTarget::Probe(&probe)
        }
        (None, None) => {
            bail!("say what the graph explains: --target TOKEN (decoders) or --probe DIR")
        }
    };
    let cfg = GraphConfig {
        nodes_per_layer: a.nodes.max(1),
        edge_threshold: a.threshold.max(0.0),
        position: a.pos,
    };
    let started = Instant::now();
    let g = attribution_graph(&model, &ids, &dicts, &target, &cfg)?;
    let secs = started.elapsed().as_secs_f64();
    if let Some(path) = &a.out {
        let bytes = serde_json::to_vec_pretty(&g)?;
        glassbox_store::fsutil::atomic_write(path, &bytes)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &a.html {
        glassbox_store::fsutil::atomic_write(path, page(&g, &model_name).as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if json_out {
        println!("{}", json!({ "graph": g, "seconds": secs }));
        return Ok(());
    }
    let features = g
        .nodes
        .iter()
        .filter(|n| n.kind == NodeKind::Feature)
        .count();
    println!(
        "{} = {:.4} · {} features, {} edges · {} backward passes in {:.2} s",
        g.target,
        g.target_value,
        features,
        g.edges.len(),
        g.backward_passes,
        secs
    );
    println!("\nstrongest paths (effect on the target):");
    for p in &g.paths {
        let names: Vec<&str> = p.nodes.iter().map(|&i| g.nodes[i].label.as_str()).collect();
        println!("  {:>9.4}  {}", p.effect, names.join(" → "));
    }
    for (what, path) in [("graph", &a.out), ("view", &a.html)] {
        if let Some(p) = path {
            println!("{what}: {}", p.display());
        }
    }
    Ok(())
}

fn esc(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&#39;")
        .replace('"', "&quot;")
}

/// The HTML page: a header, the SVG, and the strongest paths as a list.
fn page(g: &Graph, model: &str) -> String {
    let mut html = format!(
        "<!doctype html><html><head><meta charset='utf-8'><title>attribution graph · {}</title>\
         <style>body{{font-family:sans-serif;margin:1.5em}} li{{margin:.2em 0}} .pos{{color:#b2182b}} .neg{{color:#2166ac}}</style>\
         </head><body><h1>{}</h1><p>{} · model <code>{}</code> · dictionaries: {} · {} backward passes</p>",
        esc(&g.target),
        esc(&g.target),
        format_args!("value {:.4}", g.target_value),
        esc(model),
        esc(&g.dictionaries.join(", ")),
        g.backward_passes
    );
    html.push_str(&svg(g));
    html.push_str("<p>Columns: input tokens, each dictionary in forward order, the target. Rows: positions. \
        Red edges raise the target, blue lower it; width ∝ |effect|. Hover a node or edge for its numbers.</p>\
        <h2>Strongest paths</h2><ol>");
    for p in &g.paths {
        let names: Vec<String> = p.nodes.iter().map(|&i| esc(&g.nodes[i].label)).collect();
        let class = if p.effect >= 0.0 { "pos" } else { "neg" };
        let _ = write!(
            html,
            "<li><span class='{class}'>{:+.4}</span> {}</li>",
            p.effect,
            names.join(" → ")
        );
    }
    html.push_str("</ol></body></html>\n");
    html
}

fn svg(g: &Graph) -> String {
    let columns = g.dictionaries.len() + 2;
    let rows = g.tokens.len();
    let (col_w, row_h, left, top) = (230.0, 26.0, 150.0, 40.0);
    // Features sharing a cell sit side by side.
    let mut in_cell: std::collections::HashMap<(usize, usize), usize> = Default::default();
    let mut xy = Vec::with_capacity(g.nodes.len());
    for n in &g.nodes {
        let slot = in_cell.entry((n.column, n.position)).or_insert(0);
        let x = left + n.column as f64 * col_w + *slot as f64 * 16.0;
        *slot += 1;
        xy.push((x, top + n.position as f64 * row_h));
    }
    let width = left + columns as f64 * col_w;
    let height = top + rows as f64 * row_h + 20.0;
    let mut s = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{width:.0}' height='{height:.0}' font-size='11'>"
    );
    let mut headers = vec!["tokens".to_string()];
    headers.extend(g.dictionaries.iter().cloned());
    headers.push("target".into());
    for (c, h) in headers.iter().enumerate() {
        let _ = write!(
            s,
            "<text x='{:.0}' y='18' font-weight='bold'>{}</text>",
            left + c as f64 * col_w - 10.0,
            esc(h)
        );
    }
    for (p, t) in g.tokens.iter().enumerate() {
        let _ = write!(
            s,
            "<text x='{:.0}' y='{:.0}' text-anchor='end'>{p}: {}</text>",
            left - 20.0,
            top + p as f64 * row_h + 4.0,
            esc(&format!("{t:?}"))
        );
    }
    let max = g.edges.iter().map(|e| e.effect.abs()).fold(1e-9, f32::max);
    for e in &g.edges {
        let ((x1, y1), (x2, y2)) = (xy[e.source], xy[e.target]);
        let color = if e.effect >= 0.0 {
            "#b2182b"
        } else {
            "#2166ac"
        };
        let w = 0.5 + 6.0 * (e.effect.abs() / max);
        let _ = write!(
            s,
            "<line x1='{x1:.1}' y1='{y1:.1}' x2='{x2:.1}' y2='{y2:.1}' stroke='{color}' stroke-width='{w:.2}' stroke-opacity='0.6'>\
             <title>{} → {}: effect {:.4}, weight {:.4}</title></line>",
            esc(&g.nodes[e.source].label),
            esc(&g.nodes[e.target].label),
            e.effect,
            e.weight
        );
    }
    for (n, (x, y)) in g.nodes.iter().zip(&xy) {
        let (fill, r) = match n.kind {
            NodeKind::Token => ("#dddddd", 5.0),
            NodeKind::Feature => ("#fdae61", 7.0),
            NodeKind::Error => ("#999999", 5.0),
            NodeKind::Target => ("#1a9641", 9.0),
        };
        let _ = write!(
            s,
            "<circle cx='{x:.1}' cy='{y:.1}' r='{r}' fill='{fill}' stroke='#333'>\
             <title>{}: activation {:.4}, influence {:.4}</title></circle>",
            esc(&n.label),
            n.activation,
            n.influence
        );
        if matches!(n.kind, NodeKind::Feature | NodeKind::Target) {
            let text = match n.feature {
                Some(f) => format!("f{f}"),
                None => "target".into(),
            };
            let _ = write!(
                s,
                "<text x='{:.1}' y='{:.1}'>{}</text>",
                x + r + 2.0,
                y - r,
                esc(&text)
            );
        }
    }
    s.push_str("</svg>");
    s
}
