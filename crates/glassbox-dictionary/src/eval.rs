//! Dictionary quality on held-out activations: reconstruction (MSE, fraction of variance
//! explained as SAELens defines it: 1 − E‖x − x̂‖² / E‖x − mean(x)‖², with the target hook's
//! activations in place of x for a transcoder), sparsity (L0), and the distribution of latent
//! densities (dead, dense, histogram). Behaviour under splicing is in [`crate::splice`].

use serde::Serialize;

use crate::error::Result;
use crate::sae::Sae;

/// A latent firing on more than this fraction of tokens counts as dense.
pub const DENSE_ABOVE: f64 = 0.1;

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub tokens: usize,
    pub mse: f64,
    pub fve: f64,
    pub l0: f64,
    pub dead_fraction: f64,
    pub dense_fraction: f64,
    /// Latents per decade of density: `(log10 low, log10 high, count)`, dead latents excluded.
    pub density_histogram: Vec<(i32, i32, usize)>,
    /// Per-latent firing frequency.
    #[serde(skip)]
    pub density: Vec<f64>,
}

/// Evaluates `sae` on batches of raw inputs (with their targets, for a transcoder) until
/// `max_tokens` rows are seen.
pub fn evaluate<E>(
    sae: &Sae,
    batches: impl Iterator<Item = Result<(Vec<f32>, Option<Vec<f32>>), E>>,
    max_tokens: usize,
) -> Result<EvalReport, E>
where
    E: From<crate::error::DictError>,
{
    let d = sae.d_in();
    let (mut n, mut sq_err, mut active) = (0usize, 0f64, 0usize);
    let (mut sum, mut sum_sq) = (vec![0f64; d], vec![0f64; d]);
    let mut fired = vec![0usize; sae.d_sae()];
    for batch in batches {
        let (x, y) = batch?;
        let (codes, xhat) = sae.reconstruct(&x)?;
        let target = match (sae.cfg.is_transcoder(), &y) {
            (false, _) => &x,
            (true, Some(y)) if y.len() == x.len() => y,
            (true, _) => {
                return Err(crate::error::DictError::Config(
                    "a transcoder is evaluated on a store with its target hook".into(),
                )
                .into())
            }
        };
        for (row, rec) in target.chunks(d).zip(xhat.chunks(d)) {
            for i in 0..d {
                let v = row[i] as f64;
                sum[i] += v;
                sum_sq[i] += v * v;
                sq_err += (v - rec[i] as f64).powi(2);
            }
        }
        for row in &codes.rows {
            active += row.len();
            row.iter().for_each(|(j, _)| fired[*j as usize] += 1);
        }
        n += codes.rows.len();
        if n >= max_tokens {
            break;
        }
    }
    let nf = n.max(1) as f64;
    let variance: f64 = sum.iter().zip(&sum_sq).map(|(s, q)| q - s * s / nf).sum();
    let density: Vec<f64> = fired.iter().map(|&c| c as f64 / nf).collect();
    let mut histogram = Vec::new();
    for decade in -8..0 {
        let (lo, hi) = (10f64.powi(decade), 10f64.powi(decade + 1));
        let count = density
            .iter()
            .filter(|&&p| p > 0.0 && p >= lo && (p < hi || decade == -1))
            .count();
        histogram.push((decade, decade + 1, count));
    }
    let m = density.len().max(1) as f64;
    Ok(EvalReport {
        tokens: n,
        mse: sq_err / (nf * d as f64),
        fve: 1.0 - sq_err / variance.max(f64::MIN_POSITIVE),
        l0: active as f64 / nf,
        dead_fraction: density.iter().filter(|&&p| p == 0.0).count() as f64 / m,
        dense_fraction: density.iter().filter(|&&p| p > DENSE_ABOVE).count() as f64 / m,
        density_histogram: histogram,
        density,
    })
}
