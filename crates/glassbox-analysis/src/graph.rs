//! Feature attribution graphs: which dictionary features, at which positions, carry a prompt
//! to a target (a logit, a logit difference or a probe's logit), and through which features
//! of earlier layers they were themselves written.
//!
//! The model runs once with every dictionary's hook point replaced by its decomposition,
//! `x = f·W_dec + b_dec + ε`: the features `f` and the error `ε = x − x̂` are leaves of the
//! autograd graph (the value is unchanged), attention patterns and norm scales are frozen
//! ([`Hooks::freeze_attention_and_norms`]), and the first residual stream is a leaf too (the
//! token nodes, embeddings included). Between two dictionary layers the path is then linear
//! apart from the MLPs, which gradients linearise at this prompt.
//!
//! - A node's **influence** is its effect on the target in target units: for the last
//!   dictionary layer `f · ∂target/∂f` (gradient × activation); for earlier nodes the sum over
//!   kept downstream nodes of edge weight × the downstream node's gradient.
//! - An **edge** `n → c` weighs `value_n · ∂pre_c/∂n`, gradient × activation into `c`'s
//!   pre-activation; its **effect** is that times `∂target/∂a_c`, in target units. Where the
//!   path is linear (no MLP between), a feature's incoming edges plus its constant terms sum
//!   to its pre-activation exactly.
//! - Pruning: from the target backwards, each dictionary layer keeps its `nodes_per_layer`
//!   features of largest |influence| and every error node; one backward pass per kept feature
//!   gives its incoming edges. Edges under `edge_threshold` × the largest |effect| are dropped,
//!   and nodes left without a path to the target with them.
//!
//! Dictionaries must be SAEs on the residual stream (or any hook whose value they replace);
//! transcoders are refused.

use std::collections::{BTreeMap, HashMap};

use glassbox_dictionary::fit::Use;
use glassbox_dictionary::probe::Probe;
use glassbox_dictionary::Sae;
use glassbox_model::candle::{DType, Device, Tensor, Var};
use glassbox_model::{BlockHook, HookPoint, Hooks, Intervention, InterventionError, Model};
use serde::Serialize;

use crate::error::{AnalysisError, Result};
use crate::lens::LogitTarget;

/// What the graph explains, at one position.
pub enum GraphTarget<'a> {
    Logit(LogitTarget),
    /// The probe's logit `w · x + b` at its hook.
    Probe(&'a Probe),
}

#[derive(Debug, Clone)]
pub struct GraphConfig {
    pub nodes_per_layer: usize,
    /// Fraction of the largest |edge effect| under which edges are dropped.
    pub edge_threshold: f32,
    /// Position of the target (`None` = the last token).
    pub position: Option<usize>,
}

impl Default for GraphConfig {
    fn default() -> Self {
        Self {
            nodes_per_layer: 12,
            edge_threshold: 0.02,
            position: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    Token,
    Feature,
    Error,
    Target,
}

#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub kind: NodeKind,
    /// Column: 0 = tokens, 1.. = dictionaries in forward order, last = the target.
    pub column: usize,
    pub position: usize,
    pub feature: Option<u32>,
    /// The feature's activation (features), the vector's norm (tokens, errors) or the target's value.
    pub activation: f32,
    /// Effect on the target through the kept graph, in target units.
    pub influence: f32,
    pub label: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Edge {
    pub source: usize,
    pub target: usize,
    /// Gradient × activation into the target node's pre-activation (for the target node: its
    /// units).
    pub weight: f32,
    /// The same in target units.
    pub effect: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Path {
    pub nodes: Vec<usize>,
    /// The path's share of the target, in target units.
    pub effect: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Graph {
    pub tokens: Vec<String>,
    /// Hook of each dictionary column.
    pub dictionaries: Vec<String>,
    pub target: String,
    pub target_value: f32,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    /// The strongest token-to-target paths, strongest first.
    pub paths: Vec<Path>,
    pub backward_passes: usize,
}

/// One dictionary's part of the replacement forward pass.
struct Site {
    point: HookPoint,
    /// Raw-unit SAE (input scale folded in).
    sae: Sae,
    w_enc_t: Tensor,
    b_enc: Tensor,
    b_dec: Tensor,
    w_dec: Tensor,
}

/// What the forward pass left at one site.
struct Leaves {
    /// The input before replacement (tracked), `[t, d]`.
    input: Tensor,
    /// Dense features `[t, d_sae]` and the zero error probe `[t, d]`.
    features: Var,
    error_probe: Var,
    /// Feature values, `[t][(feature, value)]`, and the error vectors `[t, d]`.
    active: Vec<Vec<(u32, f32)>>,
    error: Tensor,
}

/// The replacement forward pass's intervention: at each dictionary's hook the activation
/// becomes `f·W_dec + b_dec + ε` with the features `f` and a zero error probe as gradient
/// leaves (kept in `leaves`), and the first residual stream gets a zero probe of its own.
struct Replacement<'s> {
    sites: &'s [Site],
    token_point: HookPoint,
    /// The first residual stream's value and its probe.
    token_probe: Option<(Tensor, Var)>,
    leaves: HashMap<HookPoint, Leaves>,
}

impl Intervention for Replacement<'_> {
    fn apply(&mut self, point: HookPoint, x: &Tensor) -> Result<Tensor, InterventionError> {
        let mut x = x.clone();
        if point == self.token_point {
            let v = Var::zeros(x.shape(), x.dtype(), x.device())?;
            let value = x.detach();
            x = x.add(v.as_tensor())?;
            self.token_probe = Some((value, v));
        }
        let Some(site) = self.sites.iter().find(|s| s.point == point) else {
            return Ok(x);
        };
        let input = x.squeeze(0)?;
        let flat: Vec<f32> = input.flatten_all()?.to_vec1()?;
        let codes = site.sae.encode(&flat)?;
        let n = site.sae.d_sae();
        let mut dense = vec![0f32; codes.rows.len() * n];
        for (r, row) in codes.rows.iter().enumerate() {
            for &(j, v) in row {
                dense[r * n + j as usize] = v;
            }
        }
        let features =
            Var::from_tensor(&Tensor::from_vec(dense, (codes.rows.len(), n), x.device())?)?;
        let recon = features
            .as_tensor()
            .matmul(&site.w_dec)?
            .broadcast_add(&site.b_dec)?;
        let error = input.detach().sub(&recon.detach())?;
        let error_probe = Var::zeros(error.shape(), error.dtype(), error.device())?;
        let out = recon.add(&error)?.add(error_probe.as_tensor())?;
        self.leaves.insert(
            point,
            Leaves {
                input,
                features,
                error_probe,
                active: codes.rows,
                error,
            },
        );
        Ok(out.unsqueeze(0)?)
    }
}

/// `v` as a tensor on the model's device (the pass's activations live there).
fn tensor(v: &[f32], shape: &[usize], device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(v.to_vec(), shape, device)?)
}

pub fn attribution_graph(
    model: &Model,
    ids: &[u32],
    dictionaries: &[Sae],
    target: &GraphTarget,
    cfg: &GraphConfig,
) -> Result<Graph> {
    let t = ids.len();
    if t == 0 {
        return Err(AnalysisError::Mismatch("the text has no tokens".into()));
    }
    let pos = cfg.position.unwrap_or(t - 1);
    if pos >= t {
        return Err(AnalysisError::Mismatch(format!(
            "position {pos} is past the text's {t} tokens"
        )));
    }
    let mut sites = Vec::new();
    for sae in dictionaries {
        let point = sae.hook_in(model, Use::Replace)?;
        let mut sae = sae.clone();
        sae.fold_input_scale();
        let (d, n) = (sae.d_in(), sae.d_sae());
        sites.push(Site {
            point,
            w_enc_t: tensor(&sae.w_enc_t, &[n, d], model.device())?,
            b_enc: tensor(&sae.b_enc, &[n], model.device())?,
            b_dec: tensor(&sae.b_dec, &[d], model.device())?,
            w_dec: tensor(&sae.w_dec, &[n, d], model.device())?,
            sae,
        });
    }
    let order = model.hook_points();
    let rank = |p: &HookPoint| order.iter().position(|q| q == p).unwrap_or(usize::MAX);
    sites.sort_by_key(|s| rank(&s.point));
    if sites.windows(2).any(|w| w[0].point == w[1].point) {
        return Err(AnalysisError::Mismatch(
            "two dictionaries read the same hook point".into(),
        ));
    }
    let token_point = HookPoint::Block(0, BlockHook::ResidPre);
    let target_point = match target {
        GraphTarget::Probe(p) => Some(model.hook_point(&p.hook)?),
        GraphTarget::Logit(_) => {
            if model.unembed().is_none() {
                return Err(AnalysisError::Mismatch(
                    "a logit target needs a decoder; for an encoder use a probe".into(),
                ));
            }
            None
        }
    };
    if let (Some(tp), Some(last)) = (target_point, sites.last()) {
        if rank(&tp) < rank(&last.point) {
            return Err(AnalysisError::Mismatch(format!(
                "the probe reads {tp}, before the dictionary at {}; dictionaries must come before the target",
                last.point
            )));
        }
    }

    // The replacement forward pass.
    let mut replacement = Replacement {
        sites: &sites,
        token_point,
        token_probe: None,
        leaves: HashMap::new(),
    };
    let batch = model.batch_ids(&[ids.to_vec()])?;
    let mut points: Vec<HookPoint> = sites.iter().map(|s| s.point).collect();
    if !points.contains(&token_point) {
        points.push(token_point);
    }
    let mut hooks = Hooks::none()
        .freeze_attention_and_norms()
        .intervene_at(points, &mut replacement);
    if let Some(tp) = target_point {
        hooks = hooks.record(tp);
    }
    let out = model.forward(&batch, &mut hooks, None)?;
    let (target_value, target_label) = match target {
        GraphTarget::Logit(lt) => {
            let logits = out
                .logits
                .as_ref()
                .ok_or_else(|| AnalysisError::Mismatch("the model returned no logits".into()))?
                .get(0)?
                .get(pos)?;
            let v = lt.of(&logits)?;
            let label = lt.describe(model);
            (v, label)
        }
        GraphTarget::Probe(probe) => {
            let tp = target_point.ok_or_else(|| AnalysisError::Mismatch("no probe hook".into()))?;
            let x = hooks
                .cache()
                .get(&tp)
                .ok_or_else(|| AnalysisError::Mismatch(format!("{tp} was not reached")))?
                .get(0)?
                .get(pos)?;
            if probe.dictionary.is_some() {
                return Err(AnalysisError::Mismatch(format!(
                    "probe `{}` reads a dictionary's latents, not a linear read-out of {tp}; graph a probe of the activations",
                    probe.name
                )));
            }
            if probe.weights.len() != x.dim(0)? {
                return Err(AnalysisError::Mismatch(format!(
                    "the probe has {} weights; {tp} has {} dimensions",
                    probe.weights.len(),
                    x.dim(0)?
                )));
            }
            let w = tensor(&probe.weights, &[probe.weights.len()], model.device())?;
            (
                (x.mul(&w)?.sum_all()? + probe.bias as f64)?,
                format!("probe {} logit", probe.name),
            )
        }
    };
    drop(hooks);
    let Replacement {
        leaves,
        token_probe,
        ..
    } = replacement;
    let (token_value, token_var) = token_probe.ok_or_else(|| {
        AnalysisError::Mismatch("the first residual stream was not reached".into())
    })?;
    let token_value = token_value.squeeze(0)?;

    let tokens: Vec<String> = ids.iter().map(|&i| model.tokenizer.piece(i)).collect();
    let mut b = Builder {
        nodes: Vec::new(),
        keys: Vec::new(),
        edges: Vec::new(),
        index: HashMap::new(),
        tokens: tokens.clone(),
    };
    let columns = sites.len() + 1;
    let target_node = b.node(Node {
        kind: NodeKind::Target,
        column: columns,
        position: pos,
        feature: None,
        activation: target_value.to_dtype(DType::F32)?.to_scalar::<f32>()?,
        influence: target_value.to_dtype(DType::F32)?.to_scalar::<f32>()?,
        label: target_label.clone(),
    });
    let site_leaves: Vec<&Leaves> = sites
        .iter()
        .map(|s| {
            leaves
                .get(&s.point)
                .ok_or_else(|| AnalysisError::Mismatch(format!("{} was not reached", s.point)))
        })
        .collect::<Result<_>>()?;

    // Sources of a column: the tokens (column 0) or one dictionary's features and errors.
    // `grads` are the gradients of some scalar; returns (node key, value × gradient, value).
    let sources = |column: usize,
                   grads: &glassbox_model::candle::backprop::GradStore|
     -> Result<Vec<(Key, f32, f32)>> {
        let mut out = Vec::new();
        if column == 0 {
            let g = match grads.get(token_var.as_tensor()) {
                Some(g) => g.squeeze(0)?,
                None => return Ok(out),
            };
            let w: Vec<f32> = token_value.mul(&g)?.sum(1)?.to_vec1()?;
            let norms: Vec<f32> = token_value.sqr()?.sum(1)?.sqrt()?.to_vec1()?;
            for p in 0..t {
                out.push((Key::Token(p), w[p], norms[p]));
            }
            return Ok(out);
        }
        let l = site_leaves[column - 1];
        if let Some(g) = grads.get(l.features.as_tensor()) {
            let g: Vec<f32> = g.flatten_all()?.to_vec1()?;
            let n = l.features.dim(1)?;
            for (p, row) in l.active.iter().enumerate() {
                for &(j, v) in row {
                    out.push((Key::Feature(column, p, j), v * g[p * n + j as usize], v));
                }
            }
        }
        if let Some(g) = grads.get(l.error_probe.as_tensor()) {
            let w: Vec<f32> = l.error.mul(g)?.sum(1)?.to_vec1()?;
            let norms: Vec<f32> = l.error.sqr()?.sum(1)?.sqrt()?.to_vec1()?;
            for p in 0..t {
                out.push((Key::Error(column, p), w[p], norms[p]));
            }
        }
        Ok(out)
    };

    // Backwards from the target, one column at a time.
    let mut backward_passes = 1;
    let grads = target_value.backward()?;
    // (node, ∂target/∂activation) of the kept nodes of the column below.
    let mut frontier: Vec<(usize, f32)> = Vec::new();
    let last = columns - 1;
    let first = sources(last, &grads)?;
    let kept = b.keep(&first, cfg.nodes_per_layer, &sites);
    for (key, w, v) in &first {
        if let Some(&id) = b.index.get(key) {
            b.nodes[id].influence = *w;
            b.edges.push(Edge {
                source: id,
                target: target_node,
                weight: *w,
                effect: *w,
            });
            if kept.contains(&id) && matches!(key, Key::Feature(..)) {
                frontier.push((id, w / v));
            }
        }
    }
    for column in (1..columns).rev() {
        let site = &sites[column - 1];
        let l = site_leaves[column - 1];
        // Ordered, so nodes are added in the same order on every run (a HashMap's order
        // changed the graph's node numbering from run to run).
        let mut influence: BTreeMap<Key, (f32, f32)> = BTreeMap::new();
        let mut incoming: Vec<(Key, usize, f32, f32)> = Vec::new();
        for &(c, grad_c) in &frontier {
            let (p, j) = match b.keys[c] {
                Some(Key::Feature(_, p, j)) => (p, j),
                _ => continue,
            };
            // pre_c = (x − b_dec) · w_enc[j] + b_enc[j]
            let x = l.input.get(p)?;
            let pre = (x
                .sub(&site.b_dec)?
                .mul(&site.w_enc_t.get(j as usize)?)?
                .sum_all()?
                + site.b_enc.get(j as usize)?)?;
            let grads = pre.backward()?;
            backward_passes += 1;
            for (key, w, v) in sources(column - 1, &grads)? {
                if w == 0.0 {
                    continue;
                }
                let e = influence.entry(key).or_insert((0.0, v));
                e.0 += w * grad_c;
                incoming.push((key, c, w, w * grad_c));
            }
        }
        let below: Vec<(Key, f32, f32)> =
            influence.iter().map(|(k, (i, v))| (*k, *i, *v)).collect();
        let kept = b.keep(&below, cfg.nodes_per_layer, &sites);
        frontier.clear();
        for (key, i, v) in &below {
            if let Some(&id) = b.index.get(key) {
                b.nodes[id].influence = *i;
                if kept.contains(&id) && matches!(key, Key::Feature(..)) {
                    frontier.push((id, i / v));
                }
            }
        }
        for (key, c, w, e) in incoming {
            if let Some(&id) = b.index.get(&key) {
                b.edges.push(Edge {
                    source: id,
                    target: c,
                    weight: w,
                    effect: e,
                });
            }
        }
    }
    let mut graph = Graph {
        tokens,
        dictionaries: sites.iter().map(|s| s.point.to_string()).collect(),
        target: target_label,
        target_value: b.nodes[target_node].activation,
        nodes: b.nodes,
        edges: b.edges,
        paths: Vec::new(),
        backward_passes,
    };
    prune(&mut graph, target_node, cfg.edge_threshold);
    graph.paths = strongest_paths(&graph, 8);
    Ok(graph)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Key {
    Token(usize),
    Feature(usize, usize, u32),
    Error(usize, usize),
}

struct Builder {
    nodes: Vec<Node>,
    /// The key of each node (`None` for the target).
    keys: Vec<Option<Key>>,
    edges: Vec<Edge>,
    index: HashMap<Key, usize>,
    tokens: Vec<String>,
}

impl Builder {
    fn node(&mut self, n: Node) -> usize {
        self.nodes.push(n);
        self.keys.push(None);
        self.nodes.len() - 1
    }

    /// Adds the `k` features of largest |influence|, every error node and every token from
    /// `candidates` (key, influence, value); returns the ids of the features kept.
    fn keep(&mut self, candidates: &[(Key, f32, f32)], k: usize, sites: &[Site]) -> Vec<usize> {
        let mut features: Vec<&(Key, f32, f32)> = candidates
            .iter()
            .filter(|c| matches!(c.0, Key::Feature(..)))
            .collect();
        features.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
        let mut kept = Vec::new();
        let others = candidates
            .iter()
            .filter(|c| !matches!(c.0, Key::Feature(..)));
        for &(key, influence, value) in features.into_iter().take(k).chain(others) {
            if self.index.contains_key(&key) {
                continue;
            }
            let (kind, column, position, feature, label) = match key {
                Key::Token(p) => (
                    NodeKind::Token,
                    0,
                    p,
                    None,
                    format!("{:?} @{p}", self.tokens[p]),
                ),
                Key::Feature(c, p, j) => (
                    NodeKind::Feature,
                    c,
                    p,
                    Some(j),
                    format!("{} f{j} @{p}", short_hook(&sites[c - 1].point)),
                ),
                Key::Error(c, p) => (
                    NodeKind::Error,
                    c,
                    p,
                    None,
                    format!("{} error @{p}", short_hook(&sites[c - 1].point)),
                ),
            };
            let id = self.node(Node {
                kind,
                column,
                position,
                feature,
                activation: value,
                influence,
                label,
            });
            self.index.insert(key, id);
            self.keys[id] = Some(key);
            if kind == NodeKind::Feature {
                kept.push(id);
            }
        }
        kept
    }
}

/// `L3 resid_pre` for `blocks.3.hook_resid_pre`.
fn short_hook(p: &HookPoint) -> String {
    p.to_string()
        .replace("blocks.", "L")
        .replace(".hook_", " ")
        .replace(".attn.hook_", " attn ")
}

/// Drops weak edges, then every node (tokens excepted) without a path to the target.
fn prune(g: &mut Graph, target: usize, threshold: f32) {
    let max = g.edges.iter().map(|e| e.effect.abs()).fold(0.0, f32::max);
    g.edges
        .retain(|e| e.effect.abs() >= threshold * max && e.effect != 0.0);
    let mut reaches = vec![false; g.nodes.len()];
    reaches[target] = true;
    // Edges only run from a lower column to a higher one: sweep columns downwards.
    let mut by_column: Vec<usize> = (0..g.nodes.len()).collect();
    by_column.sort_by_key(|&i| std::cmp::Reverse(g.nodes[i].column));
    for i in by_column {
        if !reaches[i] {
            reaches[i] = g.edges.iter().any(|e| e.source == i && reaches[e.target]);
        }
    }
    let keep: Vec<bool> = g
        .nodes
        .iter()
        .zip(&reaches)
        .map(|(n, &r)| r || n.kind == NodeKind::Token)
        .collect();
    let mut new_id = vec![usize::MAX; g.nodes.len()];
    let mut nodes = Vec::new();
    for (i, n) in g.nodes.drain(..).enumerate() {
        if keep[i] {
            new_id[i] = nodes.len();
            nodes.push(n);
        }
    }
    g.nodes = nodes;
    g.edges.retain(|e| keep[e.source] && keep[e.target]);
    for e in &mut g.edges {
        e.source = new_id[e.source];
        e.target = new_id[e.target];
    }
}

/// The `n` strongest paths from a source (token or error) to the target. A path's effect is
/// its first edge's weight times, at each feature it passes, the next edge's weight over the
/// feature's activation (the last edge's weight being the feature's effect on the target):
/// the paths out of a source then add up to its influence.
fn strongest_paths(g: &Graph, n: usize) -> Vec<Path> {
    let Some(target) = g.nodes.iter().position(|x| x.kind == NodeKind::Target) else {
        return Vec::new();
    };
    let mut out_edges: Vec<Vec<&Edge>> = vec![Vec::new(); g.nodes.len()];
    for e in &g.edges {
        out_edges[e.source].push(e);
    }
    let mut paths = Vec::new();
    // Depth-first, carrying the path and its effect so far (before the next edge).
    let mut stack: Vec<(Vec<usize>, f32)> = g
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, x)| matches!(x.kind, NodeKind::Token | NodeKind::Error))
        .map(|(i, _)| (vec![i], 1.0))
        .collect();
    while let Some((path, factor)) = stack.pop() {
        let &at = path.last().unwrap_or(&target);
        if at == target {
            paths.push(Path {
                nodes: path,
                effect: factor,
            });
            if paths.len() > 100_000 {
                break;
            }
            continue;
        }
        let divisor = if path.len() == 1 {
            1.0
        } else {
            g.nodes[at].activation
        };
        for e in &out_edges[at] {
            let mut next = path.clone();
            next.push(e.target);
            stack.push((next, factor * e.weight / divisor));
        }
    }
    paths.sort_by(|a, b| b.effect.abs().total_cmp(&a.effect.abs()));
    paths.truncate(n);
    paths
}
