//! Attribution graphs from `glassbox graph --out` in the browser: layer (column) × position
//! (row) layout, edges coloured by sign and sized by effect, the strongest paths highlighted,
//! a threshold that prunes weak edges, and a click on a node for its numbers and feature page.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use serde::Deserialize;

use super::page;
use crate::server::AppState;

/// Largest graph file the viewer opens.
const MAX_BYTES: u64 = 32 << 20;

#[derive(Deserialize)]
struct Graph {
    tokens: Vec<String>,
    dictionaries: Vec<String>,
    target: String,
    target_value: f32,
    nodes: Vec<Node>,
    edges: Vec<Edge>,
    #[serde(default)]
    paths: Vec<GraphPath>,
}

#[derive(Deserialize)]
struct Node {
    kind: String,
    column: usize,
    position: usize,
    feature: Option<u32>,
    activation: f32,
    influence: f32,
    label: String,
}

#[derive(Deserialize)]
struct Edge {
    source: usize,
    target: usize,
    effect: f32,
}

#[derive(Deserialize)]
struct GraphPath {
    nodes: Vec<usize>,
    effect: f32,
}

impl Graph {
    /// Every index in range and the layout bounded, or what is wrong.
    fn check(&self) -> Result<(), String> {
        let n = self.nodes.len();
        if n > 100_000 || self.edges.len() > 1_000_000 || self.tokens.len() > 4096 {
            return Err(format!(
                "{n} nodes, {} edges, {} tokens is more than the viewer draws",
                self.edges.len(),
                self.tokens.len()
            ));
        }
        let cols = self.dictionaries.len() + 2;
        for (i, node) in self.nodes.iter().enumerate() {
            if node.column >= cols || node.position >= self.tokens.len().max(1) {
                return Err(format!(
                    "node {i} sits at column {}, position {} outside the graph",
                    node.column, node.position
                ));
            }
        }
        for (i, e) in self.edges.iter().enumerate() {
            if e.source >= n || e.target >= n {
                return Err(format!(
                    "edge {i} joins node {} to node {}, but there are {n} nodes",
                    e.source, e.target
                ));
            }
        }
        for (i, p) in self.paths.iter().enumerate() {
            if p.nodes.iter().any(|&j| j >= n) {
                return Err(format!("path {i} names a node beyond the {n} nodes"));
            }
        }
        Ok(())
    }
}

fn graph_dir(state: &AppState) -> Option<&Path> {
    state.cfg.console.graphs.as_deref()
}

/// A graph file's name, if it is a plain `*.json` name in the directory (no paths).
fn graph_file(dir: &Path, name: &str) -> Option<PathBuf> {
    let plain = !name.is_empty()
        && name.len() <= 200
        && name.ends_with(".json")
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    plain.then(|| dir.join(name))
}

pub async fn list(State(state): State<Arc<AppState>>, who: page::Who) -> Response {
    let mut files: Vec<String> = graph_dir(&state)
        .and_then(|d| std::fs::read_dir(d).ok())
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| graph_dir(&state).and_then(|d| graph_file(d, n)).is_some())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let body = html! {
        h1 { "Attribution graphs" }
        @match graph_dir(&state) {
            None => p { "No graph directory: set " code { "[console] graphs = \"graphs\"" } " in deploy.toml and write graphs there with " code { "glassbox graph … --out graphs/NAME.json" } "." },
            Some(d) => {
                p.small { "From " code { (d.display().to_string()) } " — write more with " code { "glassbox graph MODEL PROMPT --dict DIR --target TOKEN --out " (d.display().to_string()) "/NAME.json" } "." }
                @if files.is_empty() { p { "No graphs yet." } }
                ul { @for f in &files { li { a href=(format!("/console/graphs/{f}")) { (f) } } } }
            }
        }
    };
    page::shell("Graphs", Some(&who), "Graphs", body).into_response()
}

pub async fn view(
    State(state): State<Arc<AppState>>,
    who: page::Who,
    UrlPath(name): UrlPath<String>,
) -> Response {
    let Some(path) = graph_dir(&state).and_then(|d| graph_file(d, &name)) else {
        return page::error(
            StatusCode::NOT_FOUND,
            "No such graph",
            "Graph names are plain `NAME.json` files of the graph directory.",
        );
    };
    let read = match std::fs::metadata(&path) {
        Ok(m) if m.len() > MAX_BYTES => Err(format!(
            "the file is {} MB; the viewer opens up to {} MB",
            m.len() >> 20,
            MAX_BYTES >> 20
        )),
        Ok(_) => std::fs::read(&path).map_err(|e| e.to_string()),
        Err(_) => {
            return page::error(
                StatusCode::NOT_FOUND,
                "No such graph",
                &format!("There is no `{name}` in the graph directory."),
            )
        }
    };
    let graph = read
        .and_then(|b| {
            serde_json::from_slice::<Graph>(&b)
                .map_err(|e| format!("not a graph from `glassbox graph --out`: {e}"))
        })
        .and_then(|g| g.check().map(|_| g));
    let g = match graph {
        Ok(g) => g,
        Err(e) => {
            return page::error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Cannot show this graph",
                &format!("{name}: {e}"),
            )
        }
    };
    let links: Vec<Option<String>> = g
        .dictionaries
        .iter()
        .map(|hook| {
            state
                .catalogs
                .by_hook(hook)
                .map(|c| format!("/console/catalog/{c}/features/"))
        })
        .collect();
    let body = html! {
        p { a href="/console/graphs" { "← graphs" } }
        h1 { (g.target) " = " (format!("{:.4}", g.target_value)) }
        p.small { (g.nodes.len()) " nodes, " (g.edges.len()) " edges · dictionaries: " (g.dictionaries.join(", ")) }
        div.filters {
            label { "Hide edges below |effect| " input #threshold type="range" min="0" max="1" step="0.01" value="0"; output #threshold-value { "0" } }
            label { input #paths-only type="checkbox"; " strongest paths only" }
        }
        div.graph { (svg(&g, &links)) }
        section #node-detail aria-live="polite" { p.small { "Click (or focus and press Enter on) a node for its numbers." } }
        h2 { "Strongest paths" }
        ol { @for p in &g.paths {
            li { span class=(if p.effect >= 0.0 { "pos" } else { "neg" }) { (format!("{:+.4}", p.effect)) } " "
                (p.nodes.iter().map(|&i| g.nodes[i].label.as_str()).collect::<Vec<_>>().join(" → ")) }
        } }
    };
    page::shell(&format!("Graph {name}"), Some(&who), "Graphs", body).into_response()
}

fn svg(g: &Graph, links: &[Option<String>]) -> Markup {
    let (col_w, row_h, left, top) = (220.0, 28.0, 150.0, 40.0);
    let mut in_cell: std::collections::HashMap<(usize, usize), usize> = Default::default();
    let xy: Vec<(f64, f64)> = g
        .nodes
        .iter()
        .map(|n| {
            let slot = in_cell.entry((n.column, n.position)).or_insert(0);
            let x = left + n.column as f64 * col_w + *slot as f64 * 16.0;
            *slot += 1;
            (x, top + n.position as f64 * row_h)
        })
        .collect();
    let on_path: std::collections::HashSet<(usize, usize)> = g
        .paths
        .iter()
        .flat_map(|p| p.nodes.windows(2).map(|w| (w[0], w[1])))
        .collect();
    let max = g
        .edges
        .iter()
        .map(|e| e.effect.abs())
        .fold(1e-12f32, f32::max);
    let width = left + (g.dictionaries.len() + 2) as f64 * col_w;
    let height = top + g.tokens.len() as f64 * row_h + 20.0;
    let mut headers = vec!["tokens".to_string()];
    headers.extend(g.dictionaries.iter().cloned());
    headers.push("target".into());
    html! {
        svg #graph width=(format!("{width:.0}")) height=(format!("{height:.0}")) viewBox=(format!("0 0 {width:.0} {height:.0}")) role="img" aria-label="attribution graph" {
            @for (c, h) in headers.iter().enumerate() { text.head x=(format!("{:.0}", left + c as f64 * col_w)) y="18" { (h) } }
            @for (p, t) in g.tokens.iter().enumerate() { text.tok x="8" y=(format!("{:.0}", top + p as f64 * row_h + 4.0)) { (format!("{p}: {t}")) } }
            @for e in &g.edges {
                @let (a, b) = (xy[e.source], xy[e.target]);
                @let rel = e.effect.abs() / max;
                line class=(format!("edge {}{}", if e.effect >= 0.0 { "pos" } else { "neg" }, if on_path.contains(&(e.source, e.target)) { " path" } else { "" }))
                    x1=(format!("{:.1}", a.0)) y1=(format!("{:.1}", a.1)) x2=(format!("{:.1}", b.0)) y2=(format!("{:.1}", b.1))
                    stroke-width=(format!("{:.2}", 0.5 + 4.0 * rel)) data-rel=(format!("{rel:.4}")) data-source=(e.source) data-target=(e.target) {
                    title { (format!("{} → {}: effect {:+.4}", g.nodes[e.source].label, g.nodes[e.target].label, e.effect)) }
                }
            }
            @for (i, n) in g.nodes.iter().enumerate() {
                @let link = (n.kind == "feature").then(|| n.column.checked_sub(1).and_then(|c| links.get(c).cloned().flatten()).zip(n.feature).map(|(l, f)| format!("{l}{f}"))).flatten();
                circle class=(format!("node {}", n.kind)) cx=(format!("{:.1}", xy[i].0)) cy=(format!("{:.1}", xy[i].1)) r="6" tabindex="0"
                    data-node=(i) data-label=(n.label) data-kind=(n.kind) data-activation=(format!("{:.4}", n.activation)) data-influence=(format!("{:.4}", n.influence))
                    data-link=[link] {
                    title { (n.label) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_names_cannot_leave_the_directory() {
        let d = Path::new("/srv/graphs");
        assert!(graph_file(d, "paris.json").is_some());
        for bad in [
            "../etc/passwd.json",
            "a/b.json",
            ".hidden.json",
            "x.html",
            "",
            "%2e%2e.json",
        ] {
            assert!(graph_file(d, bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_graph_with_dangling_edges_is_refused() {
        let g: Graph = serde_json::from_str(r#"{"tokens":["a"],"dictionaries":["h"],"target":"t","target_value":1,
            "nodes":[{"kind":"token","column":0,"position":0,"feature":null,"activation":1,"influence":1,"label":"a"}],
            "edges":[{"source":0,"target":3,"effect":1}]}"#).unwrap();
        assert!(g.check().unwrap_err().contains("edge 0"));
    }
}
