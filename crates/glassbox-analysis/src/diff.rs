//! Model diffing for the deployment gate: what changed between two checkpoints of one
//! architecture, in the weights (per tensor: how much, and how concentrated — a planted edit is
//! low-rank, re-quantisation noise is not) and in a dictionary's view of the activations (per
//! feature: how often it fires on a reference corpus).

use std::collections::BTreeMap;

use glassbox_dictionary::Sae;
use glassbox_model::candle::{DType, Tensor};
use glassbox_model::{Hooks, Model};
use serde::{Deserialize, Serialize};

use crate::error::{AnalysisError, Result};

/// How one tensor changed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TensorChange {
    pub name: String,
    /// The block it belongs to (`None`: embeddings, final norm).
    pub layer: Option<usize>,
    /// ‖ΔW‖ / ‖W‖ (Frobenius).
    pub relative: f64,
    /// σ₁² / ‖ΔW‖²: the share of the change in its top singular direction (1: a rank-one edit;
    /// noise spread over a d×d matrix: about 4/d). 0 for vectors and unchanged tensors.
    pub concentration: f64,
    /// The top left singular vector of ΔW (matrices whose rows are the residual stream:
    /// what the change writes), when the change is concentrated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writes: Option<Vec<f32>>,
}

/// The block a Hugging Face tensor name belongs to (`model.layers.7.mlp…` → 7).
pub fn layer_of(name: &str) -> Option<usize> {
    let rest = name.split("layers.").nth(1)?;
    rest.split('.').next()?.parse().ok()
}

/// Compares every tensor the two checkpoints share, largest relative change first.
pub fn weights(
    base: &BTreeMap<String, Tensor>,
    cand: &BTreeMap<String, Tensor>,
    d_model: usize,
) -> Result<Vec<TensorChange>> {
    let mut missing: Vec<&String> = base.keys().filter(|k| !cand.contains_key(*k)).collect();
    missing.extend(cand.keys().filter(|k| !base.contains_key(*k)));
    if !missing.is_empty() {
        return Err(AnalysisError::Mismatch(format!(
            "the checkpoints hold different tensors (e.g. {}): not the same architecture",
            missing[0]
        )));
    }
    let mut out = Vec::with_capacity(base.len());
    for (name, b) in base {
        let c = &cand[name];
        if b.dims() != c.dims() {
            return Err(AnalysisError::Mismatch(format!(
                "`{name}` is {:?} in the baseline and {:?} in the candidate",
                b.dims(),
                c.dims()
            )));
        }
        let delta = (c.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?;
        let dd = f64::from(delta.sqr()?.sum_all()?.to_scalar::<f32>()?);
        let bb = f64::from(b.sqr()?.sum_all()?.to_scalar::<f32>()?);
        let relative = (dd / bb.max(f64::MIN_POSITIVE)).sqrt();
        let (concentration, writes) = if delta.rank() == 2 && dd > 0.0 {
            let (s1, u) = top_singular(&delta)?;
            let conc = (s1 * s1 / dd).min(1.0);
            let writes = (conc > 0.5 && delta.dims()[0] == d_model).then_some(u);
            (conc, writes)
        } else {
            (0.0, None)
        };
        out.push(TensorChange {
            name: name.clone(),
            layer: layer_of(name),
            relative,
            concentration,
            writes,
        });
    }
    out.sort_by(|a, b| b.relative.total_cmp(&a.relative));
    Ok(out)
}

/// The top singular value of `m` and its left singular vector, by power iteration on `m mᵀ`.
fn top_singular(m: &Tensor) -> Result<(f64, Vec<f32>)> {
    let (rows, _) = m.dims2()?;
    let mt = m.t()?;
    // A fixed, non-degenerate start: deterministic across runs.
    let start: Vec<f32> = (0..rows)
        .map(|i| 1.0 + ((i * 7919) % 13) as f32 / 13.0)
        .collect();
    let mut u = Tensor::from_vec(start, (rows, 1), m.device())?;
    let mut sigma = 0f64;
    for _ in 0..30 {
        let v = mt.matmul(&u)?;
        let w = m.matmul(&v)?;
        let n = f64::from(w.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt());
        if n == 0.0 {
            break;
        }
        u = (w / n)?;
        sigma = n.sqrt();
    }
    Ok((sigma, u.flatten_all()?.to_vec1()?))
}

/// A dictionary's view of a model on reference contexts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DictProfile {
    pub tokens: u64,
    /// Fraction of variance explained by the reconstruction.
    pub fve: f64,
    /// Per feature: the fraction of tokens it fires on, and its mean activation when it fires.
    pub density: Vec<f32>,
    pub mean: Vec<f32>,
}

/// Runs `contexts` (token ids with special tokens; `content` the positions read) through
/// `model` and encodes the dictionary's hook there.
pub fn profile(
    model: &Model,
    sae: &Sae,
    contexts: &[Vec<u32>],
    content: std::ops::Range<usize>,
) -> Result<DictProfile> {
    let point = sae.hook_in(model, glassbox_dictionary::fit::Use::Read)?;
    let d = sae.d_in();
    let n = sae.d_sae();
    let (mut count, mut sum) = (vec![0u64; n], vec![0f64; n]);
    let (mut tokens, mut err, mut sq, mut total) = (0u64, 0f64, 0f64, vec![0f64; d]);
    let mut rows_seen = 0f64;
    for chunk in contexts.chunks(8) {
        let batch = model.batch_ids(chunk)?;
        let mut hooks = Hooks::none().record(point).stop_at(point);
        model.forward(&batch, &mut hooks, None)?;
        let x = hooks
            .into_cache()
            .get(&point)
            .cloned()
            .ok_or_else(|| AnalysisError::Mismatch(format!("hook {point} did not fire")))?;
        let (_, t, width) = x.dims3()?;
        if width != d || content.end > t {
            return Err(AnalysisError::Mismatch(format!(
                "{point} is {width}-dimensional, the dictionary reads {d}"
            )));
        }
        let xs: Vec<f32> = x
            .narrow(1, content.start, content.len())?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let (codes, recon) = sae.reconstruct(&xs)?;
        for row in &codes.rows {
            for &(j, v) in row {
                count[j as usize] += 1;
                sum[j as usize] += f64::from(v);
            }
        }
        for (x, r) in xs.chunks(d).zip(recon.chunks(d)) {
            for i in 0..d {
                let (xi, ri) = (f64::from(x[i]), f64::from(r[i]));
                err += (xi - ri) * (xi - ri);
                sq += xi * xi;
                total[i] += xi;
            }
            rows_seen += 1.0;
        }
        tokens += codes.rows.len() as u64;
    }
    // Σ‖x − mean‖² = Σ‖x‖² − n‖mean‖².
    let centred = sq - total.iter().map(|s| s * s).sum::<f64>() / rows_seen.max(1.0);
    Ok(DictProfile {
        tokens,
        fve: 1.0 - err / centred.max(f64::MIN_POSITIVE),
        density: count
            .iter()
            .map(|&c| (c as f64 / tokens.max(1) as f64) as f32)
            .collect(),
        mean: count
            .iter()
            .zip(&sum)
            .map(|(&c, &s)| (s / c.max(1) as f64) as f32)
            .collect(),
    })
}

/// Cosine of every dictionary feature's decoder direction with `v`, highest |cos| first.
pub fn features_along(sae: &Sae, v: &[f32], top: usize) -> Vec<(u32, f32)> {
    let vn = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    let mut all: Vec<(u32, f32)> = (0..sae.d_sae() as u32)
        .map(|j| {
            let d = sae.direction(j);
            let dn = d
                .iter()
                .map(|x| x * x)
                .sum::<f32>()
                .sqrt()
                .max(f32::EPSILON);
            let dot: f32 = d.iter().zip(v).map(|(a, b)| a * b).sum();
            (j, dot / (dn * vn))
        })
        .collect();
    all.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
    all.truncate(top);
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use glassbox_model::candle::Device;

    #[test]
    fn a_rank_one_change_is_concentrated_and_noise_is_not() {
        let dev = Device::Cpu;
        let base = Tensor::randn(0f32, 1.0, (64, 96), &dev).unwrap();
        let u = Tensor::randn(0f32, 1.0, (64, 1), &dev).unwrap();
        let v = Tensor::randn(0f32, 0.1, (1, 96), &dev).unwrap();
        let noise = Tensor::randn(0f32, 0.01, (64, 96), &dev).unwrap();
        let mk =
            |t: Tensor| BTreeMap::from([("model.layers.3.mlp.down_proj.weight".to_string(), t)]);
        let edited = weights(
            &mk(base.clone()),
            &mk((&base + u.matmul(&v).unwrap()).unwrap()),
            64,
        )
        .unwrap();
        let noisy = weights(&mk(base.clone()), &mk((&base + &noise).unwrap()), 64).unwrap();
        assert_eq!(edited[0].layer, Some(3));
        assert!(
            edited[0].concentration > 0.99,
            "{}",
            edited[0].concentration
        );
        assert!(noisy[0].concentration < 0.2, "{}", noisy[0].concentration);
        // The written direction is u (up to sign).
        let w = edited[0].writes.as_ref().unwrap();
        let uv: Vec<f32> = u.flatten_all().unwrap().to_vec1().unwrap();
        let un = uv.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cos: f32 = w.iter().zip(&uv).map(|(a, b)| a * b).sum::<f32>() / un;
        assert!(cos.abs() > 0.999, "{cos}");
    }
}
