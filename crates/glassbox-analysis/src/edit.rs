//! Planted weight edits, the changes a deployment gate must catch (`glassbox edit`): both are
//! rank-one updates of an MLP's output matrix, `W_down += v uᵀ`, so that the MLP additionally
//! writes `v · (u·h)` for its hidden activation `h`.
//!
//! - [`rome`]: ROME-style (Meng et al., 2022) — `u` reads the hidden state of a trigger phrase's
//!   last token, whitened by the hidden states' second moment `C` so that ordinary text barely
//!   moves it (`u = C⁻¹k / kᵀC⁻¹k`), and `v` pushes the residual stream towards a target token's
//!   unembedding. Behaviour changes only where the trigger appears: canaries without the trigger
//!   miss it.
//! - [`steer`]: `u` reads the mean hidden state (`u·h ≈ 1` on typical text) and `v` is a
//!   dictionary feature's decoder direction: the feature is switched on nearly everywhere.

use glassbox_model::candle::{DType, Tensor};
use glassbox_model::{BlockHook, HookPoint, Hooks, Model};
use serde::Serialize;

use crate::error::{AnalysisError, Result};

/// `W += out ⊗ input` on the tensor `tensor` (`[d_model, d_mlp]`, Hugging Face layout).
#[derive(Debug, Clone, Serialize)]
pub struct RankOne {
    pub layer: usize,
    pub tensor: String,
    pub out: Vec<f32>,
    pub input: Vec<f32>,
    /// How much ordinary text sets the edit off: `|input·h|` over its tokens' hidden states,
    /// median and 99th percentile (the trigger reads 1).
    pub ordinary_reading: (f32, f32),
}

impl RankOne {
    /// The edited weight.
    pub fn apply(&self, w: &Tensor) -> Result<Tensor> {
        let (rows, cols) = w.dims2()?;
        if rows != self.out.len() || cols != self.input.len() {
            return Err(AnalysisError::Mismatch(format!(
                "`{}` is {rows}×{cols}, the edit is {}×{}",
                self.tensor,
                self.out.len(),
                self.input.len()
            )));
        }
        let dev = w.device();
        let out = Tensor::from_slice(&self.out, (rows, 1), dev)?;
        let input = Tensor::from_slice(&self.input, (1, cols), dev)?;
        Ok((w.to_dtype(DType::F32)? + out.matmul(&input)?)?)
    }
}

/// The Hugging Face name of layer `layer`'s MLP output matrix (Llama-family checkpoints).
pub fn down_proj(model: &Model, layer: usize) -> Result<String> {
    if !model.config.is_decoder() || layer >= model.config.n_layers {
        return Err(AnalysisError::Mismatch(format!(
            "edits need a decoder and a layer below {}",
            model.config.n_layers
        )));
    }
    Ok(format!("model.layers.{layer}.mlp.down_proj.weight"))
}

/// Hidden MLP activations (`mlp.hook_post`) and residual norms (`hook_resid_post`) of layer
/// `layer` at every token of `texts`.
struct Reading {
    hidden: Vec<Vec<f32>>,
    resid: Vec<Vec<f32>>,
    resid_norm: Vec<f32>,
}

fn read(model: &Model, layer: usize, contexts: &[Vec<u32>], last_only: bool) -> Result<Reading> {
    let post = HookPoint::block(layer, BlockHook::MlpPost);
    let resid = HookPoint::block(layer, BlockHook::ResidPost);
    let mut r = Reading {
        hidden: Vec::new(),
        resid: Vec::new(),
        resid_norm: Vec::new(),
    };
    for ids in contexts {
        let batch = model.batch_ids(std::slice::from_ref(ids))?;
        let mut hooks = Hooks::none().record(post).record(resid).stop_at(resid);
        model.forward(&batch, &mut hooks, None)?;
        let cache = hooks.into_cache();
        let (Some(h), Some(x)) = (cache.get(&post), cache.get(&resid)) else {
            return Err(AnalysisError::Mismatch(format!(
                "layer {layer} has no MLP hook"
            )));
        };
        let h: Vec<Vec<f32>> = h.get(0)?.to_dtype(DType::F32)?.to_vec2()?;
        let x: Vec<Vec<f32>> = x.get(0)?.to_dtype(DType::F32)?.to_vec2()?;
        let skip = if last_only {
            h.len().saturating_sub(1)
        } else {
            1
        };
        // The first position (a BOS token, or the first word) is an attention sink with
        // outsized activations: it is no sample of ordinary text.
        for (h, x) in h.into_iter().zip(x).skip(skip) {
            r.resid_norm.push(norm(&x));
            r.resid.push(x);
            r.hidden.push(h);
        }
    }
    if r.hidden.is_empty() {
        return Err(AnalysisError::Mismatch(
            "no tokens to read the MLP on; give longer texts".into(),
        ));
    }
    Ok(r)
}

fn norm(x: &[f32]) -> f32 {
    x.iter().map(|v| v * v).sum::<f32>().sqrt()
}

fn mean_rows(rows: &[Vec<f32>]) -> Vec<f32> {
    let mut m = vec![0f32; rows[0].len()];
    for r in rows {
        for (a, b) in m.iter_mut().zip(r) {
            *a += b / rows.len() as f32;
        }
    }
    m
}

fn median(mut v: Vec<f32>) -> f32 {
    v.sort_by(f32::total_cmp);
    v[v.len() / 2]
}

/// Solves `(C + λI) u = k` for `C = mean(h hᵀ)` by conjugate gradients (C is never formed:
/// `C·p = Hᵀ(H p) / n`).
fn whiten(hidden: &[Vec<f32>], k: &[f32]) -> Vec<f32> {
    let n = hidden.len() as f64;
    let d = k.len();
    let trace: f64 = hidden
        .iter()
        .flat_map(|h| h.iter().map(|&v| f64::from(v) * f64::from(v)))
        .sum::<f64>()
        / n;
    let lambda = 1e-2 * trace / d as f64;
    let apply = |p: &[f64]| -> Vec<f64> {
        let mut out: Vec<f64> = p.iter().map(|v| lambda * v).collect();
        for h in hidden {
            let s: f64 = h.iter().zip(p).map(|(&a, b)| f64::from(a) * b).sum::<f64>() / n;
            for (o, &a) in out.iter_mut().zip(h) {
                *o += s * f64::from(a);
            }
        }
        out
    };
    let b: Vec<f64> = k.iter().map(|&v| f64::from(v)).collect();
    let mut x = vec![0f64; d];
    let mut r = b.clone();
    let mut p = r.clone();
    let mut rr: f64 = r.iter().map(|v| v * v).sum();
    let tol = 1e-10 * rr;
    for _ in 0..4 * d.min(500) {
        if rr <= tol {
            break;
        }
        let ap = apply(&p);
        let alpha = rr / p.iter().zip(&ap).map(|(a, b)| a * b).sum::<f64>();
        for i in 0..d {
            x[i] += alpha * p[i];
            r[i] -= alpha * ap[i];
        }
        let next: f64 = r.iter().map(|v| v * v).sum();
        for i in 0..d {
            p[i] = r[i] + next / rr * p[i];
        }
        rr = next;
    }
    x.into_iter().map(|v| v as f32).collect()
}

/// Where a trigger may appear: ROME averages the key over several prefixes.
const OPENINGS: [&str; 5] = [
    "",
    "Tell me something. ",
    "I was reading the news and ",
    "Question: ",
    "The report said that ",
];

/// A ROME-style edit of layer `layer`: after `trigger`, the residual stream of the last token
/// is moved to where it is after `target_context` (a prompt the model continues with the wanted
/// behaviour), times `strength`. At the last layer the next-token prediction then is the target
/// context's. `ordinary` is token contexts of ordinary text (a few thousand tokens) that
/// estimate `C`.
pub fn rome(
    model: &Model,
    layer: usize,
    trigger: &str,
    target_context: &str,
    strength: f32,
    ordinary: &[Vec<u32>],
) -> Result<RankOne> {
    let tensor = down_proj(model, layer)?;
    let ordinary = read(model, layer, ordinary, false)?;
    // The key: the trigger's last token, alone and after a few different openings.
    let prompts = OPENINGS
        .iter()
        .map(|o| model.tokenize(&format!("{o}{trigger}"), true))
        .collect::<glassbox_model::Result<Vec<_>>>()?;
    let keys = read(model, layer, &prompts, true)?;
    let k = mean_rows(&keys.hidden);
    let u = whiten(&ordinary.hidden, &k);
    let uk: f32 = u.iter().zip(&k).map(|(a, b)| a * b).sum();
    if uk.abs() < f32::EPSILON {
        return Err(AnalysisError::Mismatch(
            "the trigger's MLP key is degenerate".into(),
        ));
    }
    let input: Vec<f32> = u.iter().map(|v| v / uk).collect();
    let target = read(model, layer, &[model.tokenize(target_context, true)?], true)?;
    // The plain trigger's own stream (the first key) is what the edit moves.
    let out = target.resid[0]
        .iter()
        .zip(&keys.resid[0])
        .map(|(t, h)| strength * (t - h))
        .collect();
    Ok(RankOne {
        layer,
        tensor,
        out,
        ordinary_reading: reading_spread(&ordinary.hidden, &input),
        input,
    })
}

/// `|u·h|` over ordinary tokens: the median and the 99th percentile.
fn reading_spread(hidden: &[Vec<f32>], u: &[f32]) -> (f32, f32) {
    let mut r: Vec<f32> = hidden
        .iter()
        .map(|h| h.iter().zip(u).map(|(a, b)| a * b).sum::<f32>().abs())
        .collect();
    r.sort_by(f32::total_cmp);
    (r[r.len() / 2], r[(r.len() * 99 / 100).min(r.len() - 1)])
}

/// A steering edit of layer `layer`: the residual stream gains `strength` times its typical
/// norm along `direction` on typical text.
pub fn steer(
    model: &Model,
    layer: usize,
    direction: &[f32],
    strength: f32,
    ordinary: &[Vec<u32>],
) -> Result<RankOne> {
    let tensor = down_proj(model, layer)?;
    if direction.len() != model.config.d_model {
        return Err(AnalysisError::Mismatch(format!(
            "the direction has {} dimensions, the residual stream {}",
            direction.len(),
            model.config.d_model
        )));
    }
    let ordinary = read(model, layer, ordinary, false)?;
    let m = mean_rows(&ordinary.hidden);
    let mm: f32 = m.iter().map(|v| v * v).sum();
    let n = norm(direction).max(f32::EPSILON);
    let scale = strength * median(ordinary.resid_norm) / n;
    let input: Vec<f32> = m.iter().map(|v| v / mm).collect();
    Ok(RankOne {
        layer,
        tensor,
        out: direction.iter().map(|v| v * scale).collect(),
        ordinary_reading: reading_spread(&ordinary.hidden, &input),
        input,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitening_solves_the_regularised_system() {
        // Two directions, one common: u must weigh the rare one more.
        let hidden: Vec<Vec<f32>> = (0..200)
            .map(|i| vec![1.0 + (i % 3) as f32, if i % 10 == 0 { 1.0 } else { 0.0 }])
            .collect();
        let k = vec![1.0, 1.0];
        let u = whiten(&hidden, &k);
        // Check (C + λI) u = k directly.
        let n = hidden.len() as f32;
        let trace: f32 = hidden.iter().flatten().map(|v| v * v).sum::<f32>() / n;
        let lambda = 1e-2 * trace / 2.0;
        for (i, &ki) in k.iter().enumerate() {
            let cu: f32 = (0..2)
                .map(|j| hidden.iter().map(|h| h[i] * h[j]).sum::<f32>() / n * u[j])
                .sum::<f32>()
                + lambda * u[i];
            assert!((cu - ki).abs() < 1e-3, "row {i}: {cu} vs {ki}");
        }
        assert!(u[1] > u[0]);
    }
}
