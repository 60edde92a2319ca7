//! Activation patching: which components carry the difference between a clean and a
//! corrupted prompt. Each component's activation is copied from one run (the source) into the
//! other (the base) and the change of a metric is normalised:
//! `effect = (m(patched) − m(base)) / (m(source) − m(base))` — 0 the patch changes nothing,
//! 1 it moves the metric all the way to the source's value.
//!
//! Components: per layer and position, `hook_resid_pre`, `hook_attn_out`, `hook_mlp_out`; per
//! layer and head, `attn.hook_z` (all positions of the head). Sweeps are batched: one forward
//! pass per layer and component, whose batch row r patches position (or head) r alone.
//!
//! **Attribution patching** ([`attribute`]) estimates every one of those effects at once, to
//! first order: `(a_source − a_base) · ∂m/∂a` at the base run, from one forward and one
//! backward pass (plus the source run for its activations). Cheap and good at ranking where the
//! metric is near-linear in a component; it misjudges components with saturated nonlinearities
//! downstream (the first residual stream is the classic case), which activation patching then
//! checks.
//!
//! Metrics (the metric language):
//! - `logit-diff A B` (decoders): logit of token A minus logit of token B at the last position;
//!   A and B are single tokens as the tokenizer writes them in running text (`" Paris"`).
//! - `cosine` (any model): cosine similarity of the pooled sentence embedding (mean of the last
//!   hidden state, as sentence-transformers pools MiniLM) with the clean run's embedding; the
//!   clean run scores 1.

use std::collections::HashMap;

use glassbox_model::candle::{DType, Tensor, Var};
use glassbox_model::{
    ActivationCache, BlockHook, HookPoint, Hooks, Intervention, InterventionError, Model,
};
use serde::Serialize;

use crate::error::{AnalysisError, Result};
use crate::lens::{single_token, LogitTarget};

#[derive(Debug, Clone, PartialEq)]
pub enum Metric {
    LogitDiff { good: u32, bad: u32 },
    Cosine,
}

impl Metric {
    pub fn parse(spec: &str, model: &Model) -> Result<Metric> {
        let words: Vec<&str> = spec.split_whitespace().collect();
        let token = |t: &str| single_token(model, t);
        match words.as_slice() {
            ["cosine"] => Ok(Metric::Cosine),
            ["logit-diff", a, b] if model.config.is_decoder() => Ok(Metric::LogitDiff {
                good: token(a)?,
                bad: token(b)?,
            }),
            ["logit-diff", ..] if !model.config.is_decoder() => Err(AnalysisError::Mismatch(
                "logit-diff needs a decoder; for an encoder use `cosine`".into(),
            )),
            _ => Err(AnalysisError::Mismatch(format!(
                "unknown metric `{spec}`; use `logit-diff A B` (decoders) or `cosine`"
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    ResidPre,
    AttnOut,
    MlpOut,
    /// Per head, all positions.
    HeadZ,
}

impl Component {
    pub const ALL: [Component; 4] = [
        Component::ResidPre,
        Component::AttnOut,
        Component::MlpOut,
        Component::HeadZ,
    ];

    fn hook(self) -> BlockHook {
        match self {
            Component::ResidPre => BlockHook::ResidPre,
            Component::AttnOut => BlockHook::AttnOut,
            Component::MlpOut => BlockHook::MlpOut,
            Component::HeadZ => BlockHook::AttnZ,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Component::ResidPre => "resid_pre",
            Component::AttnOut => "attn_out",
            Component::MlpOut => "mlp_out",
            Component::HeadZ => "head z",
        }
    }
}

/// Which way activations are copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Clean activations into the corrupted run (which components restore the behaviour).
    Denoise,
    /// Corrupted activations into the clean run (which components are needed for it).
    Noise,
}

/// One component's results, `[layer][position or head]`.
#[derive(Debug, Clone, Serialize)]
pub struct Sweep {
    pub component: Component,
    /// Normalised effects.
    pub effects: Vec<Vec<f32>>,
    /// The metric of each patched run.
    pub metrics: Vec<Vec<f32>>,
}

/// How effects were computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Each component patched in its own (batched) forward pass: exact.
    Activation,
    /// First-order estimate from one backward pass.
    Attribution,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub method: Method,
    pub tokens: Vec<String>,
    pub direction: Direction,
    pub clean_metric: f32,
    pub corrupt_metric: f32,
    pub sweeps: Vec<Sweep>,
    /// Forward passes run (batched), for the record.
    pub forward_passes: usize,
}

struct Run {
    ids: Vec<u32>,
    cache: ActivationCache,
    metric: f32,
}

/// Evaluates the metric on each row of a forward pass over `rows` copies of one input.
fn metrics(
    model: &Model,
    out: &glassbox_model::Output,
    batch: &glassbox_model::Batch,
    metric: &Metric,
    clean_embedding: Option<&Tensor>,
) -> Result<Vec<f32>> {
    match metric {
        Metric::LogitDiff { good, bad } => {
            let logits = out
                .logits
                .as_ref()
                .ok_or_else(|| AnalysisError::Mismatch("the model has no unembedding".into()))?;
            let t = logits.dim(1)?;
            let last = logits
                .narrow(1, t - 1, 1)?
                .squeeze(1)?
                .to_dtype(DType::F32)?;
            let rows: Vec<Vec<f32>> = last.to_vec2()?;
            Ok(rows
                .iter()
                .map(|r| r[*good as usize] - r[*bad as usize])
                .collect())
        }
        Metric::Cosine => {
            let e = model.sentence_embedding(batch, &out.hidden)?;
            let rows: Vec<Vec<f32>> = e.to_vec2()?;
            let c: Vec<f32> = match clean_embedding {
                Some(c) => c.to_vec1()?,
                None => rows[0].clone(),
            };
            // Embeddings are L2-normalised: the dot product is the cosine.
            Ok(rows
                .iter()
                .map(|r| r.iter().zip(&c).map(|(a, b)| a * b).sum())
                .collect())
        }
    }
}

fn run(
    model: &Model,
    ids: &[u32],
    metric: &Metric,
    points: &[HookPoint],
    clean_embedding: Option<&Tensor>,
) -> Result<(Run, Tensor)> {
    let batch = model.batch_ids(&[ids.to_vec()])?;
    let mut hooks = Hooks::none().record_all(points.iter().copied());
    let out = model.forward(&batch, &mut hooks, None)?;
    let embedding = model.sentence_embedding(&batch, &out.hidden)?.squeeze(0)?;
    let m = metrics(
        model,
        &out,
        &batch,
        metric,
        clean_embedding.or(Some(&embedding)),
    )?[0];
    Ok((
        Run {
            ids: ids.to_vec(),
            cache: hooks.into_cache(),
            metric: m,
        },
        embedding,
    ))
}

/// The hook points of `components` at every layer, once the prompts are checked to align.
fn component_points(
    model: &Model,
    clean: &[u32],
    corrupt: &[u32],
    components: &[Component],
) -> Result<Vec<HookPoint>> {
    if clean.len() != corrupt.len() {
        return Err(AnalysisError::Mismatch(format!(
            "the clean and corrupted prompts must have the same number of tokens to patch position by position ({} ≠ {}); reword one of them",
            clean.len(),
            corrupt.len()
        )));
    }
    Ok((0..model.config.n_layers)
        .flat_map(|l| {
            components
                .iter()
                .map(move |c| HookPoint::Block(l, c.hook()))
        })
        .collect())
}

/// The clean and corrupted runs with every component recorded: where activation and
/// attribution patching both start.
struct Pair {
    points: Vec<HookPoint>,
    clean: Run,
    corrupt: Run,
    clean_embedding: Tensor,
}

impl Pair {
    fn record(
        model: &Model,
        clean: &[u32],
        corrupt: &[u32],
        metric: &Metric,
        components: &[Component],
    ) -> Result<Pair> {
        let points = component_points(model, clean, corrupt, components)?;
        let (clean, clean_embedding) = run(model, clean, metric, &points, None)?;
        let (corrupt, _) = run(model, corrupt, metric, &points, Some(&clean_embedding))?;
        Ok(Pair {
            points,
            clean,
            corrupt,
            clean_embedding,
        })
    }

    /// The run patched into (base) and the run patched from (source).
    fn base_and_source(&self, direction: Direction) -> (&Run, &Run) {
        match direction {
            Direction::Denoise => (&self.corrupt, &self.clean),
            Direction::Noise => (&self.clean, &self.corrupt),
        }
    }
}

/// Patches every component of every layer; see the module documentation.
pub fn sweep(
    model: &Model,
    clean: &[u32],
    corrupt: &[u32],
    metric: &Metric,
    direction: Direction,
    components: &[Component],
) -> Result<Report> {
    let pair = Pair::record(model, clean, corrupt, metric, components)?;
    let layers = model.config.n_layers;
    let (base, source) = pair.base_and_source(direction);
    let span = source.metric - base.metric;
    let mut sweeps = Vec::new();
    let mut passes = 2;
    for &c in components {
        let (mut effects, mut raw) = (Vec::with_capacity(layers), Vec::with_capacity(layers));
        for l in 0..layers {
            let point = HookPoint::Block(l, c.hook());
            let from = source
                .cache
                .get(&point)
                .ok_or_else(|| AnalysisError::Mismatch(format!("{point} was not recorded")))?;
            let values = patch_rows(
                model,
                &base.ids,
                point,
                from,
                c,
                metric,
                &pair.clean_embedding,
            )?;
            passes += 1;
            effects.push(values.iter().map(|m| (m - base.metric) / span).collect());
            raw.push(values);
        }
        sweeps.push(Sweep {
            component: c,
            effects,
            metrics: raw,
        });
    }
    Ok(Report {
        method: Method::Activation,
        tokens: clean.iter().map(|&t| model.tokenizer.piece(t)).collect(),
        direction,
        clean_metric: pair.clean.metric,
        corrupt_metric: pair.corrupt.metric,
        sweeps,
        forward_passes: passes,
    })
}

/// One batched forward pass over copies of `ids`: row r has position r (or head r) of
/// `point` replaced by `from`'s value. Returns the metric of each row.
fn patch_rows(
    model: &Model,
    ids: &[u32],
    point: HookPoint,
    from: &Tensor,
    c: Component,
    metric: &Metric,
    clean_embedding: &Tensor,
) -> Result<Vec<f32>> {
    let dims = from.dims().to_vec();
    // Rows: positions (dimension 1) or heads (dimension 2 of hook_z [b, t, head, d_head]).
    let (axis, rows) = if c == Component::HeadZ {
        (2, dims[2])
    } else {
        (1, dims[1])
    };
    let mut shape = vec![rows];
    shape.extend(&dims[1..]);
    let mut mask = vec![0f32; rows * dims[axis]];
    for r in 0..rows {
        mask[r * dims[axis] + r] = 1.0;
    }
    // [rows, axis] → broadcastable over the other dimensions.
    let mut mask_shape = vec![rows, 1, 1, 1][..dims.len()].to_vec();
    mask_shape[axis] = dims[axis];
    let mask = Tensor::from_vec(mask, mask_shape, from.device())?.broadcast_as(shape.clone())?;
    let source = from.broadcast_as(shape.clone())?;
    let batch = model.batch_ids(&vec![ids.to_vec(); rows])?;
    let mut hooks = Hooks::none().replace(point, move |x| {
        // x + mask·(source − x): the masked entries become the source's.
        x.add(&mask.mul(&source.sub(x)?)?)
    });
    let out = model.forward(&batch, &mut hooks, None)?;
    metrics(model, &out, &batch, metric, Some(clean_embedding))
}

/// Runs the model with every position of `point` patched from `from` (a check: patching
/// everything at the first residual reproduces the source run).
pub fn patch_all(
    model: &Model,
    ids: &[u32],
    point: HookPoint,
    from: &Tensor,
    metric: &Metric,
    clean_embedding: &Tensor,
) -> Result<f32> {
    let batch = model.batch_ids(&[ids.to_vec()])?;
    let value = from.clone();
    let mut hooks = Hooks::none().patch(point, value);
    let out = model.forward(&batch, &mut hooks, None)?;
    Ok(metrics(model, &out, &batch, metric, Some(clean_embedding))?[0])
}

/// The metric of a single-row forward pass as a scalar tensor, differentiable where the
/// forward pass was.
fn metric_tensor(
    model: &Model,
    out: &glassbox_model::Output,
    batch: &glassbox_model::Batch,
    metric: &Metric,
    clean_embedding: &Tensor,
) -> Result<Tensor> {
    match metric {
        Metric::LogitDiff { good, bad } => {
            let logits = out
                .logits
                .as_ref()
                .ok_or_else(|| AnalysisError::Mismatch("the model has no unembedding".into()))?;
            let last = logits.get(0)?.get(logits.dim(1)? - 1)?;
            LogitTarget::Diff(*good, *bad).of(&last)
        }
        Metric::Cosine => {
            let e = model.sentence_embedding(batch, &out.hidden)?.squeeze(0)?;
            Ok(e.mul(clean_embedding)?.sum_all()?)
        }
    }
}

/// Adds a zero-valued variable to the activation at each point it is attached to: the
/// gradient with respect to that variable is the gradient at the point.
#[derive(Default)]
pub(crate) struct ZeroProbes(pub HashMap<HookPoint, Var>);

impl Intervention for ZeroProbes {
    fn apply(&mut self, point: HookPoint, x: &Tensor) -> Result<Tensor, InterventionError> {
        let v = Var::zeros(x.shape(), x.dtype(), x.device())?;
        let out = x.add(v.as_tensor())?;
        self.0.insert(point, v);
        Ok(out)
    }
}

/// Attribution patching over the same components as [`sweep`]: every effect estimated from the
/// base run's gradient (see the module documentation). `metrics` holds the predicted metric of
/// each patch, `base + estimate`.
pub fn attribute(
    model: &Model,
    clean: &[u32],
    corrupt: &[u32],
    metric: &Metric,
    direction: Direction,
    components: &[Component],
) -> Result<Report> {
    let pair = Pair::record(model, clean, corrupt, metric, components)?;
    let (base_run, source_run) = pair.base_and_source(direction);
    // Each component's value gets a zero-valued variable added: the gradient with respect to
    // that variable is the gradient at the component, and the graph upstream stays intact.
    let mut probes = ZeroProbes::default();
    let batch = model.batch_ids(std::slice::from_ref(&base_run.ids))?;
    let mut hooks = Hooks::none().intervene_at(pair.points.iter().copied(), &mut probes);
    let out = model.forward(&batch, &mut hooks, None)?;
    drop(hooks);
    let m = metric_tensor(model, &out, &batch, metric, &pair.clean_embedding)?;
    let base_metric = m.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    let grads = m.backward()?;
    let probes = probes.0;
    let span = source_run.metric - base_metric;
    let layers = model.config.n_layers;
    let mut sweeps = Vec::new();
    for &c in components {
        let (mut effects, mut predicted) = (Vec::with_capacity(layers), Vec::with_capacity(layers));
        for l in 0..layers {
            let p = HookPoint::Block(l, c.hook());
            let missing = || AnalysisError::Mismatch(format!("{p} was not reached"));
            let grad = probes
                .get(&p)
                .and_then(|v| grads.get(v.as_tensor()))
                .ok_or_else(missing)?;
            let delta = (source_run.cache.get(&p).ok_or_else(missing)?
                - base_run.cache.get(&p).ok_or_else(missing)?)?;
            let product = delta.mul(grad)?.squeeze(0)?.to_dtype(DType::F32)?;
            // resid/attn/mlp: [pos, d] → per position; z: [pos, head, d_head] → per head.
            let per: Vec<f32> = match c {
                Component::HeadZ => product.sum(2)?.sum(0)?.to_vec1()?,
                _ => product.sum(1)?.to_vec1()?,
            };
            effects.push(per.iter().map(|a| a / span).collect());
            predicted.push(per.iter().map(|a| base_metric + a).collect());
        }
        sweeps.push(Sweep {
            component: c,
            effects,
            metrics: predicted,
        });
    }
    Ok(Report {
        method: Method::Attribution,
        tokens: clean.iter().map(|&t| model.tokenizer.piece(t)).collect(),
        direction,
        clean_metric: pair.clean.metric,
        corrupt_metric: pair.corrupt.metric,
        sweeps,
        // Clean and corrupted runs, and the base run with gradients (plus one backward).
        forward_passes: 3,
    })
}
