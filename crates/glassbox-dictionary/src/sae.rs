//! The sparse autoencoder: parameters, encoding to sparse codes, decoding.

use glassbox_model::fastmath::vectorised;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::config::{Activation, DictConfig};
use crate::error::{DictError, Result};
use crate::{linalg, select};

/// Sparse codes of a batch: per token, the active latents and their values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Codes {
    pub rows: Vec<CodeRow>,
}

/// One token's active latents and values.
pub type CodeRow = Vec<(u32, f32)>;

impl Codes {
    /// Mean number of active latents per token.
    pub fn l0(&self) -> f64 {
        self.rows.iter().map(Vec::len).sum::<usize>() as f64 / self.rows.len().max(1) as f64
    }
}

thread_local! {
    /// [`Sae::encode_scaled`]'s pre-activation buffer, kept between calls (taken out while in
    /// use, so a nested call on the same thread simply starts a fresh one).
    static PRE_ACTIVATIONS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Parameters in the input-scaled space (see [`DictConfig::input_scale`]).
#[derive(Debug, Clone)]
pub struct Sae {
    pub cfg: DictConfig,
    /// Encoder, one row per latent: `[d_sae, d_in]` (SAELens's `W_enc` transposed).
    pub w_enc_t: Vec<f32>,
    pub b_enc: Vec<f32>,
    /// Decoder, one unit-norm row per latent: `[d_sae, d_in]`.
    pub w_dec: Vec<f32>,
    pub b_dec: Vec<f32>,
    /// JumpReLU thresholds `[d_sae]` (empty for other activations).
    pub threshold: Vec<f32>,
}

impl Sae {
    /// Random unit decoder directions, encoder = decoderᵀ, zero biases.
    pub fn init(cfg: DictConfig, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let (d_in, d_sae) = (cfg.d_in, cfg.d_sae);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut w_dec: Vec<f32> = (0..d_in * d_sae)
            .map(|_| {
                // Box-Muller: a Gaussian direction is uniform on the sphere once normalised.
                let (u, v): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random());
                (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
            })
            .collect();
        normalize_rows(&mut w_dec, d_in);
        let threshold = match cfg.activation {
            Activation::JumpRelu { .. } => vec![1e-3; d_sae],
            _ => Vec::new(),
        };
        Ok(Self {
            w_enc_t: w_dec.clone(),
            b_enc: vec![0.0; d_sae],
            w_dec,
            b_dec: vec![0.0; d_in],
            threshold,
            cfg,
        })
    }

    pub fn d_in(&self) -> usize {
        self.cfg.d_in
    }

    pub fn d_sae(&self) -> usize {
        self.cfg.d_sae
    }

    fn check_width(&self, x: &[f32]) -> Result<usize> {
        if !x.len().is_multiple_of(self.d_in()) {
            return Err(DictError::Width {
                got: x.len() % self.d_in(),
                expected: self.d_in(),
            });
        }
        Ok(x.len() / self.d_in())
    }

    /// The encoder's input: an SAE subtracts b_dec from `xs`; a transcoder, whose b_dec lives
    /// in the target space, reads `xs` as is.
    pub fn encoder_input(&self, xs: &[f32]) -> Vec<f32> {
        if self.cfg.is_transcoder() {
            return xs.to_vec();
        }
        xs.chunks(self.d_in())
            .flat_map(|r| r.iter().zip(&self.b_dec).map(|(x, b)| x - b))
            .collect()
    }

    /// Pre-activations `[n, d_sae]` of scaled inputs `xs` (`[n, d_in]`): `(xs − b_dec)·W_enc + b_enc`
    /// (without `− b_dec` for a transcoder).
    pub fn pre_activations(&self, xs: &[f32]) -> Vec<f32> {
        let (d_in, d_sae) = (self.d_in(), self.d_sae());
        let n = xs.len() / d_in;
        let centred = self.encoder_input(xs);
        linalg::matmul_bt_bias(&centred, &self.w_enc_t, &self.b_enc, n, d_in, d_sae)
    }

    /// The sparse code of each row of `pre` (`[n, d_sae]`). `batch_level` selects BatchTopK's
    /// training rule (top k·n over the batch) instead of its inference threshold.
    pub fn select(&self, pre: &[f32], batch_level: bool) -> Codes {
        let rows: Vec<Vec<(u32, f32)>> = pre
            .par_chunks(self.d_sae())
            .map(|r| self.select_row(r, batch_level))
            .collect();
        self.finish_selection(rows, batch_level)
    }

    /// Per-token selection. In training (`batch_level`), BatchTopK returns the token's
    /// candidates (top 4k) and JumpReLU every latent above `threshold − bandwidth/2`: the
    /// active ones and those in the band where the threshold's pseudo-gradient lives.
    fn select_row(&self, r: &[f32], batch_level: bool) -> Vec<(u32, f32)> {
        match self.cfg.activation {
            Activation::TopK { k } => top_k(r, k),
            // A token keeps at most 4k latents under BatchTopK.
            Activation::BatchTopK { k, .. } if batch_level => top_k(r, 4 * k),
            Activation::BatchTopK { threshold, .. } => above(r, |_| threshold),
            Activation::Relu { .. } => above(r, |_| 0.0),
            Activation::JumpRelu { bandwidth, .. } if batch_level => r
                .iter()
                .enumerate()
                .filter(|(j, v)| **v > self.threshold[*j] - 0.5 * bandwidth)
                .map(|(j, v)| (j as u32, *v))
                .collect(),
            Activation::JumpRelu { .. } => above(r, |j| self.threshold[j]),
        }
    }

    /// BatchTopK in training: keep the k·n largest candidates of the batch.
    fn finish_selection(&self, rows: Vec<Vec<(u32, f32)>>, batch_level: bool) -> Codes {
        let Activation::BatchTopK { k, .. } = self.cfg.activation else {
            return Codes { rows };
        };
        if !batch_level {
            return Codes { rows };
        }
        let mut all: Vec<f32> = rows.iter().flatten().map(|e| e.1).collect();
        let keep = (k * rows.len()).min(all.len());
        if keep == 0 {
            return Codes {
                rows: vec![Vec::new(); rows.len()],
            };
        }
        let (_, t, _) = all.select_nth_unstable_by(keep - 1, |a, b| b.total_cmp(a));
        let t = *t;
        Codes {
            rows: rows
                .into_iter()
                .map(|r| r.into_iter().filter(|e| e.1 >= t).collect())
                .collect(),
        }
    }

    /// Encodes scaled inputs block by block (GEMM, then selection while the block is in
    /// cache), never holding the full `[n, d_sae]` pre-activations. Also returns the
    /// pre-activations of the `watch` latents, `[n, watch.len()]` (AuxK's dead latents).
    pub fn encode_scaled(&self, xs: &[f32], batch_level: bool, watch: &[u32]) -> (Codes, Vec<f32>) {
        const BLOCK: usize = 1024;
        let (d_in, d_sae) = (self.d_in(), self.d_sae());
        let mut rows = Vec::with_capacity(xs.len() / d_in);
        let mut watched = Vec::with_capacity(xs.len() / d_in * watch.len());
        // A block's pre-activations are 64 MB at 16k latents; a fresh buffer per call costs a
        // page fault per 4 KB (16 % of a training step), so each thread keeps its last one.
        let mut pre = PRE_ACTIVATIONS.take();
        for block in xs.chunks(BLOCK * d_in) {
            let centred = self.encoder_input(block);
            linalg::matmul_bt_bias_into(
                &mut pre,
                &centred,
                &self.w_enc_t,
                &self.b_enc,
                centred.len() / d_in,
                d_in,
                d_sae,
            );
            let picked: Vec<(CodeRow, Vec<f32>)> = pre
                .par_chunks(d_sae)
                .map(|r| {
                    (
                        self.select_row(r, batch_level),
                        watch.iter().map(|&j| r[j as usize]).collect(),
                    )
                })
                .collect();
            for (row, w) in picked {
                rows.push(row);
                watched.extend(w);
            }
        }
        PRE_ACTIVATIONS.set(pre);
        (self.finish_selection(rows, batch_level), watched)
    }

    /// `x̂ = f·W_dec + b_dec` in the scaled space, `[n, d_in]`.
    pub fn decode(&self, codes: &Codes) -> Vec<f32> {
        let d_in = self.d_in();
        let mut out = vec![0f32; codes.rows.len() * d_in];
        out.par_chunks_mut(d_in)
            .zip(&codes.rows)
            .for_each(|(o, row)| {
                o.copy_from_slice(&self.b_dec);
                vectorised(|| {
                    for &(j, v) in row {
                        linalg::axpy(v, &self.w_dec[j as usize * d_in..][..d_in], o);
                    }
                })
            });
        out
    }

    /// Codes of raw activations `x` (`[n, d_in]`).
    pub fn encode(&self, x: &[f32]) -> Result<Codes> {
        self.check_width(x)?;
        // Any number of rows, served request or catalog batch: the blocked encoder reads W_enc
        // in place, so small batches no longer need a path of their own.
        let xs: Vec<f32> = x.iter().map(|v| v * self.cfg.input_scale).collect();
        Ok(self.encode_scaled(&xs, false, &[]).0)
    }

    /// Whether one latent's activation follows from its own encoder row (a threshold rule),
    /// so [`Sae::latent`] is exact; TopK needs every latent to know the k largest.
    pub fn reads_latents_alone(&self) -> bool {
        !matches!(self.cfg.activation, Activation::TopK { .. })
    }

    /// Latent `j`'s activation on one row of raw activations from its encoder row alone
    /// (exact when [`Sae::reads_latents_alone`]).
    pub fn latent(&self, x: &[f32], j: u32) -> f32 {
        let (d, j) = (self.d_in(), j as usize);
        let w = &self.w_enc_t[j * d..(j + 1) * d];
        let s = self.cfg.input_scale;
        let shift = !self.cfg.is_transcoder();
        let pre = self.b_enc[j]
            + x.iter()
                .zip(w)
                .zip(&self.b_dec)
                .map(|((x, w), b)| (x * s - if shift { *b } else { 0.0 }) * w)
                .sum::<f32>();
        let threshold = match self.cfg.activation {
            Activation::JumpRelu { .. } => self.threshold[j],
            Activation::BatchTopK { threshold, .. } => threshold,
            _ => 0.0,
        };
        if pre > threshold && pre > 0.0 {
            pre
        } else {
            0.0
        }
    }

    /// Latent `j`'s pre-activation as a linear function of a raw activation, `(w, b)` with
    /// `pre = w·x + b`, and the threshold it must pass (`None` for a transcoder, whose input is
    /// another hook).
    pub fn linear_reading(&self, j: u32) -> Option<(Vec<f32>, f32, f32)> {
        if self.cfg.is_transcoder() {
            return None;
        }
        let (d, j) = (self.d_in(), j as usize);
        let w = &self.w_enc_t[j * d..(j + 1) * d];
        let s = self.cfg.input_scale;
        let b = self.b_enc[j] - w.iter().zip(&self.b_dec).map(|(w, b)| w * b).sum::<f32>();
        let threshold = match self.cfg.activation {
            Activation::JumpRelu { .. } => self.threshold[j],
            Activation::BatchTopK { threshold, .. } => threshold,
            _ => 0.0,
        };
        Some((w.iter().map(|w| w * s).collect(), b, threshold.max(0.0)))
    }

    /// Latent `j`'s decoder row in raw units of the output space: what adding 1 to its
    /// activation adds to the reconstruction.
    pub fn direction(&self, j: u32) -> Vec<f32> {
        let d = self.d_in();
        let inv = 1.0 / self.cfg.output_scale;
        self.w_dec[j as usize * d..(j as usize + 1) * d]
            .iter()
            .map(|v| v * inv)
            .collect()
    }

    /// The gradient of `Σ_j weights[j]·f_j(x)` with respect to one raw activation `x` whose
    /// code is `row`: the active latents' encoder rows, weighted, in raw units. Every
    /// activation here passes its pre-activation through unchanged once it is active, so the
    /// gradient is exact until the active set changes.
    pub fn code_gradient(&self, row: &CodeRow, weights: &[f32]) -> Vec<f32> {
        let d = self.d_in();
        let mut g = vec![0f32; d];
        for &(j, _) in row {
            let w = weights.get(j as usize).copied().unwrap_or(0.0) * self.cfg.input_scale;
            linalg::axpy(w, &self.w_enc_t[j as usize * d..][..d], &mut g);
        }
        g
    }

    /// Reconstruction (of the target hook, for a transcoder) from raw activations, in raw units.
    pub fn reconstruct(&self, x: &[f32]) -> Result<(Codes, Vec<f32>)> {
        let codes = self.encode(x)?;
        let inv = 1.0 / self.cfg.output_scale;
        let xhat = self.decode(&codes).into_iter().map(|v| v * inv).collect();
        Ok((codes, xhat))
    }

    /// Folds the input scale into the weights, so the dictionary takes raw activations.
    pub fn fold_input_scale(&mut self) {
        let (s_in, s_out) = (self.cfg.input_scale, self.cfg.output_scale);
        self.w_enc_t.iter_mut().for_each(|w| *w *= s_in);
        self.w_dec.iter_mut().for_each(|w| *w /= s_out);
        self.b_dec.iter_mut().for_each(|b| *b /= s_out);
        // Pre-activations are unchanged by folding, so thresholds stay.
        self.cfg.input_scale = 1.0;
        self.cfg.output_scale = 1.0;
    }
}

/// The `k` largest positive entries of `row`, in index order.
fn top_k(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    select::largest(row, k, 0.0)
}

fn above(row: &[f32], threshold: impl Fn(usize) -> f32) -> Vec<(u32, f32)> {
    row.iter()
        .enumerate()
        .filter(|(j, v)| **v > threshold(*j) && **v > 0.0)
        .map(|(j, v)| (j as u32, *v))
        .collect()
}

/// Scales each row of `[rows, d]` to unit L2 norm (zero rows stay zero).
pub fn normalize_rows(w: &mut [f32], d: usize) {
    w.par_chunks_mut(d).for_each(|r| {
        vectorised(|| {
            let n = linalg::dot(r, r).sqrt();
            if n > 0.0 {
                r.iter_mut().for_each(|v| *v /= n);
            }
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_the_largest_positive() {
        let row = [0.5, -1.0, 3.0, 2.0, 0.1, 2.5];
        assert_eq!(top_k(&row, 3), vec![(2, 3.0), (3, 2.0), (5, 2.5)]);
        assert_eq!(top_k(&[-1.0, 0.0, 0.2], 2), vec![(2, 0.2)]);
        assert_eq!(top_k(&row, 0), vec![]);
    }

    #[test]
    fn one_latent_read_alone_equals_the_full_code() {
        for activation in [
            Activation::Relu { l1: 0.0 },
            Activation::JumpRelu {
                l0: 4.0,
                bandwidth: 0.01,
            },
            Activation::BatchTopK {
                k: 4,
                threshold: 0.05,
            },
        ] {
            let mut cfg = DictConfig::sae(activation, 8, 32, "m", "h");
            (cfg.input_scale, cfg.output_scale) = (1.7, 1.7);
            let mut sae = Sae::init(cfg, 3).unwrap();
            sae.b_enc
                .iter_mut()
                .enumerate()
                .for_each(|(j, b)| *b = 0.02 * j as f32 - 0.3);
            sae.b_dec
                .iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = 0.1 * i as f32);
            assert!(sae.reads_latents_alone());
            let x: Vec<f32> = (0..8).map(|i| ((i * 7 % 5) as f32 - 2.0) * 0.4).collect();
            let code = &sae.encode(&x).unwrap().rows[0];
            assert!(!code.is_empty());
            for j in 0..32u32 {
                let want = code.iter().find(|e| e.0 == j).map_or(0.0, |e| e.1);
                assert!(
                    (sae.latent(&x, j) - want).abs() < 1e-5,
                    "{activation:?} latent {j}"
                );
            }
        }
    }

    #[test]
    fn the_code_gradient_matches_finite_differences_while_the_active_set_holds() {
        let mut cfg = DictConfig::sae(Activation::TopK { k: 3 }, 6, 16, "m", "h");
        (cfg.input_scale, cfg.output_scale) = (1.3, 1.3);
        let mut sae = Sae::init(cfg, 5).unwrap();
        sae.b_dec
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = 0.05 * i as f32);
        let weights: Vec<f32> = (0..16).map(|j| (j as f32 - 7.5) * 0.3).collect();
        let read = |x: &[f32]| -> f32 {
            let code = &sae.encode(x).unwrap().rows[0];
            code.iter().map(|&(j, v)| weights[j as usize] * v).sum()
        };
        let x: Vec<f32> = (0..6).map(|i| ((i * 5 % 7) as f32 - 3.0) * 0.5).collect();
        let row = &sae.encode(&x).unwrap().rows[0];
        assert_eq!(row.len(), 3);
        let g = sae.code_gradient(row, &weights);
        let h = 1e-3;
        for i in 0..6 {
            let (mut up, mut down) = (x.clone(), x.clone());
            up[i] += h;
            down[i] -= h;
            let fd = (read(&up) - read(&down)) / (2.0 * h);
            assert!((fd - g[i]).abs() < 1e-2, "input {i}: {fd} vs {}", g[i]);
        }
        // A weight on an inactive latent moves nothing.
        let mut only_inactive = vec![0.0; 16];
        let idle = (0..16u32).find(|j| !row.iter().any(|e| e.0 == *j)).unwrap();
        only_inactive[idle as usize] = 1.0;
        assert!(sae
            .code_gradient(row, &only_inactive)
            .iter()
            .all(|v| *v == 0.0));
    }
}
