//! Training: one step = encoder GEMM, sparse selection, decode, and a hand-written backward
//! pass over active latents only; Adam with warm-up and linear decay; decoder rows kept at
//! unit norm; AuxK for dead latents (TopK family). Gradients are accumulated per latent in
//! token order, so a step is bitwise deterministic and a resumed run repeats the same curve.

use std::collections::HashMap;
use std::path::Path;

use glassbox_model::fastmath::vectorised;
use rayon::prelude::*;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::config::{Activation, DictConfig};
use crate::error::{DictError, Result};
use crate::linalg;
use crate::sae::{normalize_rows, Codes, Sae};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Tokens per step.
    pub batch: usize,
    pub steps: usize,
    pub lr: f32,
    pub warmup_steps: usize,
    /// Fraction of the run after which the learning rate decays linearly to 0.
    pub decay_start: f32,
    /// Dead latents recruited per token by the auxiliary loss (TopK family); 0 disables it.
    pub aux_k: usize,
    pub aux_alpha: f32,
    /// A latent that has not fired for this many tokens is dead.
    pub dead_after_tokens: u64,
    pub seed: u64,
    /// JumpReLU: thresholds start where each latent fires on `init_l0 / d_sae` of the first
    /// batch's tokens, so the initial L0 is about `init_l0`; the L0 penalty moves it from there.
    #[serde(default)]
    pub init_l0: f32,
}

impl TrainConfig {
    pub fn lr_at(&self, step: usize) -> f32 {
        let warm = if step < self.warmup_steps {
            (step + 1) as f32 / self.warmup_steps as f32
        } else {
            1.0
        };
        let start = (self.decay_start * self.steps as f32) as usize;
        let decay = if step >= start && self.steps > start {
            1.0 - (step - start) as f32 / (self.steps - start) as f32
        } else {
            1.0
        };
        self.lr * warm * decay
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    pub step: usize,
    /// Mean squared error per element, in the scaled space.
    pub mse: f32,
    /// Fraction of variance explained on this batch.
    pub fve: f32,
    pub l0: f32,
    pub aux_loss: f32,
    pub dead_fraction: f32,
    pub lr: f32,
}

#[derive(Debug, Clone)]
struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Adam {
    fn new(n: usize) -> Self {
        Self {
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }

    fn update(&mut self, w: &mut [f32], g: &[f32], lr: f32, t: i32) {
        const B1: f32 = 0.9;
        const B2: f32 = 0.999;
        const EPS: f32 = 1e-8;
        let (c1, c2) = (1.0 - B1.powi(t), 1.0 - B2.powi(t));
        w.par_chunks_mut(4096)
            .zip(g.par_chunks(4096))
            .zip(self.m.par_chunks_mut(4096).zip(self.v.par_chunks_mut(4096)))
            .for_each(|((w, g), (m, v))| {
                vectorised(|| {
                    for i in 0..w.len() {
                        m[i] = B1 * m[i] + (1.0 - B1) * g[i];
                        v[i] = B2 * v[i] + (1.0 - B2) * g[i] * g[i];
                        w[i] -= lr * (m[i] / c1) / ((v[i] / c2).sqrt() + EPS);
                    }
                })
            });
    }
}

pub struct Trainer {
    pub sae: Sae,
    pub tc: TrainConfig,
    pub step: usize,
    pub history: Vec<StepStats>,
    since_fired: Vec<u64>,
    /// Moments of W_enc, b_enc, W_dec, b_dec and (JumpReLU) log-thresholds.
    adam: Vec<Adam>,
    /// The last step's W_enc and W_dec gradient buffers, reused: two fresh 25 MB buffers per
    /// step page-fault on every 4 KB.
    spare: [Vec<f32>; 2],
}

/// Gradients of one batch, and what the step reports.
pub struct Gradients {
    pub w_enc_t: Vec<f32>,
    pub b_enc: Vec<f32>,
    pub w_dec: Vec<f32>,
    pub b_dec: Vec<f32>,
    /// JumpReLU: straight-through pseudo-gradient of the thresholds (not their logs).
    pub threshold: Vec<f32>,
    pub codes: Codes,
    sq_err: f64,
    var: f64,
    aux_loss: f32,
    n: usize,
}

/// One latent's contribution from one token.
#[derive(Clone, Copy)]
struct Entry {
    latent: u32,
    token: u32,
    value: f32,
    /// ∂loss/∂pre-activation.
    dpre: f32,
    aux: bool,
}

impl Trainer {
    pub fn new(sae: Sae, tc: TrainConfig) -> Result<Self> {
        if tc.batch == 0 || tc.steps == 0 || tc.lr.is_nan() || tc.lr <= 0.0 {
            return Err(DictError::Config(format!(
                "batch ({}), steps ({}) and lr ({}) must be positive",
                tc.batch, tc.steps, tc.lr
            )));
        }
        let (d_in, d_sae) = (sae.d_in(), sae.d_sae());
        let mut adam = vec![
            Adam::new(d_sae * d_in),
            Adam::new(d_sae),
            Adam::new(d_sae * d_in),
            Adam::new(d_in),
        ];
        if matches!(sae.cfg.activation, Activation::JumpRelu { .. }) {
            adam.push(Adam::new(d_sae));
        }
        Ok(Self {
            since_fired: vec![0; d_sae],
            sae,
            tc,
            step: 0,
            history: Vec::new(),
            adam,
            spare: Default::default(),
        })
    }

    /// Sets the input scale (mean norm → √d_in) and b_dec (the mean) from a first batch of
    /// inputs `x` and, for a transcoder, targets `y` (and the encoder and decoder, see
    /// `data_init`). JumpReLU thresholds start as [`TrainConfig::init_l0`] says.
    pub fn initialise_from(&mut self, x: &[f32], y: Option<&[f32]>) -> Result<()> {
        let d = self.sae.d_in();
        let s_in = norm_scale(x, d)?;
        let s_out = match y {
            Some(y) if self.sae.cfg.is_transcoder() => {
                if y.len() != x.len() {
                    return Err(DictError::Config(format!(
                        "{} targets for {} inputs",
                        y.len() / d,
                        x.len() / d
                    )));
                }
                norm_scale(y, d)?
            }
            _ => s_in,
        };
        self.sae.cfg.input_scale = s_in;
        self.sae.cfg.output_scale = s_out;
        self.sae.b_dec = column_means(y.unwrap_or(x), d)
            .into_iter()
            .map(|m| (m * s_out as f64) as f32)
            .collect();
        if let (true, Some(y)) = (self.sae.cfg.is_transcoder(), y) {
            self.data_init(x, y);
        }
        if matches!(self.sae.cfg.activation, Activation::JumpRelu { .. }) {
            let xs: Vec<f32> = x.iter().map(|v| v * s_in).collect();
            let pre = self.sae.pre_activations(&xs);
            let density = (self.tc.init_l0 as f64 / self.sae.d_sae() as f64).clamp(1e-6, 1.0);
            self.sae.threshold = initial_thresholds(&pre, self.sae.d_sae(), density);
        }
        Ok(())
    }

    /// Transcoders: latent j starts as a detector of a centred input row of the batch and
    /// writes the matching centred target row (unit norms), since an encoder tied to the
    /// decoder means nothing when they live at different hooks.
    fn data_init(&mut self, x: &[f32], y: &[f32]) {
        let d = self.sae.d_in();
        let n = x.len() / d;
        let (mx, my) = (column_means(x, d), column_means(y, d));
        let centred = |v: &[f32], m: &[f64], r: usize| -> Vec<f32> {
            v[r * d..][..d]
                .iter()
                .zip(m)
                .map(|(a, b)| (*a as f64 - b) as f32)
                .collect()
        };
        let unit = |mut v: Vec<f32>| {
            normalize_rows(&mut v, d);
            v
        };
        for j in 0..self.sae.d_sae() {
            let r = j % n;
            let (mut enc, mut dec) = (unit(centred(x, &mx, r)), unit(centred(y, &my, r)));
            if j >= n {
                // A row used again: mixed with the latent's random initial direction, so no
                // two latents start (and stay) identical.
                for (v, w) in [(&mut enc, &self.sae.w_enc_t), (&mut dec, &self.sae.w_dec)] {
                    linalg::axpy(0.5, &w[j * d..][..d], v);
                }
            }
            self.sae.w_enc_t[j * d..][..d].copy_from_slice(&enc);
            self.sae.w_dec[j * d..][..d].copy_from_slice(&dec);
        }
        normalize_rows(&mut self.sae.w_enc_t, d);
        normalize_rows(&mut self.sae.w_dec, d);
    }

    pub fn dead_fraction(&self) -> f32 {
        self.dead().len() as f32 / self.sae.d_sae() as f32
    }

    fn dead(&self) -> Vec<u32> {
        (0..self.sae.d_sae() as u32)
            .filter(|&j| self.since_fired[j as usize] >= self.tc.dead_after_tokens)
            .collect()
    }

    /// Entries of `codes` with their pre-activation gradients, given ∂loss/∂x̂ `g`.
    fn entries(&self, codes: &Codes, g: &[f32], extra: f32, aux: bool) -> Vec<Vec<Entry>> {
        let d_in = self.sae.d_in();
        codes
            .rows
            .par_iter()
            .enumerate()
            .map(|(b, row)| {
                let gb = &g[b * d_in..][..d_in];
                // A plain loop, so the dot products compile inside the vectorised context.
                vectorised(|| {
                    let mut out = Vec::with_capacity(row.len());
                    for &(j, value) in row {
                        let w = &self.sae.w_dec[j as usize * d_in..][..d_in];
                        out.push(Entry {
                            latent: j,
                            token: b as u32,
                            value,
                            dpre: linalg::dot(gb, w) + extra,
                            aux,
                        });
                    }
                    out
                })
            })
            .collect()
    }

    /// Loss gradients at raw inputs `x` (`[batch, d_in]`) and, for a transcoder, raw targets
    /// `y` (an SAE's target is `x`), by the sparse backward pass.
    pub fn gradients(&self, x: &[f32], y: Option<&[f32]>) -> Result<Gradients> {
        self.gradients_into(x, y, Default::default())
    }

    /// [`Trainer::gradients`], writing the W_enc and W_dec gradients into `spare` (any sizes;
    /// overwritten).
    fn gradients_into(
        &self,
        x: &[f32],
        y: Option<&[f32]>,
        spare: [Vec<f32>; 2],
    ) -> Result<Gradients> {
        let (d_in, d_sae) = (self.sae.d_in(), self.sae.d_sae());
        if x.is_empty() || !x.len().is_multiple_of(d_in) {
            return Err(DictError::Width {
                got: x.len() % d_in,
                expected: d_in,
            });
        }
        let transcoder = self.sae.cfg.is_transcoder();
        let n = x.len() / d_in;
        let inv_n = 1.0 / n as f32;
        let s = self.sae.cfg.input_scale;
        let xs: Vec<f32> = x.iter().map(|v| v * s).collect();
        let scaled_targets: Option<Vec<f32>> = match (transcoder, y) {
            (true, Some(y)) if y.len() == x.len() => {
                Some(y.iter().map(|v| v * self.sae.cfg.output_scale).collect())
            }
            (true, _) => {
                return Err(DictError::Config(
                    "a transcoder needs one target row per input row".into(),
                ))
            }
            (false, _) => None,
        };
        let ys: &[f32] = scaled_targets.as_deref().unwrap_or(&xs);
        let topk_family = matches!(
            self.sae.cfg.activation,
            Activation::TopK { .. } | Activation::BatchTopK { .. }
        );
        let dead = if topk_family && self.tc.aux_k > 0 {
            self.dead()
        } else {
            Vec::new()
        };
        let (candidates, dead_pre) = self.sae.encode_scaled(&xs, true, &dead);
        // JumpReLU's candidates include the band below the threshold; only those above fire.
        let (codes, band) = match self.sae.cfg.activation {
            Activation::JumpRelu { .. } => {
                let active = Codes {
                    rows: candidates
                        .rows
                        .iter()
                        .map(|r| {
                            r.iter()
                                .filter(|e| e.1 > self.sae.threshold[e.0 as usize])
                                .copied()
                                .collect()
                        })
                        .collect(),
                };
                (active, Some(candidates))
            }
            _ => (candidates, None),
        };
        let xhat = self.sae.decode(&codes);

        // Main loss Σ‖x̂ − y‖² / n and its gradient with respect to x̂.
        let g: Vec<f32> = xhat
            .iter()
            .zip(ys)
            .map(|(a, b)| 2.0 * (a - b) * inv_n)
            .collect();
        let sq_err: f64 = xhat
            .iter()
            .zip(ys)
            .map(|(a, b)| ((a - b) * (a - b)) as f64)
            .sum();
        let means = column_means(ys, d_in);
        let var: f64 = ys
            .chunks(d_in)
            .map(|r| {
                r.iter()
                    .zip(&means)
                    .map(|(v, m)| (*v as f64 - m).powi(2))
                    .sum::<f64>()
            })
            .sum();
        // L1 on f·‖W_dec row‖ with unit rows: ∂/∂pre = l1 where f > 0.
        let l1 = if let Activation::Relu { l1 } = self.sae.cfg.activation {
            l1
        } else {
            0.0
        };
        let mut groups = self.entries(&codes, &g, l1, false);
        let g_threshold = match (band, self.sae.cfg.activation) {
            (Some(band), Activation::JumpRelu { l0, bandwidth }) => {
                self.threshold_gradient(&band, &g, l0 * inv_n, bandwidth)
            }
            _ => Vec::new(),
        };

        // AuxK: the top dead latents of each token reconstruct its residual (held constant).
        let (mut g_aux, mut aux_loss) = (Vec::new(), 0f32);
        if !dead.is_empty() {
            let k_aux = self.tc.aux_k.min(dead.len());
            let aux = Codes {
                rows: dead_pre
                    .par_chunks(dead.len())
                    .map(|sub| {
                        top_k_of(sub, k_aux)
                            .into_iter()
                            .map(|(i, v)| (dead[i], v))
                            .collect()
                    })
                    .collect(),
            };
            // `decode` adds b_dec; the auxiliary reconstruction has none.
            let ehat: Vec<f32> = self
                .sae
                .decode(&aux)
                .chunks(d_in)
                .flat_map(|r| r.iter().zip(&self.sae.b_dec).map(|(v, b)| v - b))
                .collect();
            let alpha = self.tc.aux_alpha;
            let diff: Vec<f32> = ehat
                .iter()
                .zip(ys.iter().zip(&xhat))
                .map(|(e, (y, xh))| e - (y - xh))
                .collect();
            aux_loss = alpha * diff.iter().map(|d| d * d).sum::<f32>() * inv_n;
            g_aux = diff.iter().map(|d| 2.0 * alpha * d * inv_n).collect();
            groups.extend(self.entries(&aux, &g_aux, 0.0, true));
        }

        // Entries by latent, main before aux and each in token order: deterministic sums.
        let mut by_latent: Vec<Vec<Entry>> = vec![Vec::new(); d_sae];
        for e in groups.iter().flatten() {
            by_latent[e.latent as usize].push(*e);
        }
        let [mut gw_enc, mut gw_dec] = spare.map(|mut v| {
            v.resize(d_sae * d_in, 0.0);
            v
        });
        let mut gb_enc = vec![0f32; d_sae];
        let enc_in = self.sae.encoder_input(&xs);
        gw_enc
            .par_chunks_mut(d_in)
            .zip(gw_dec.par_chunks_mut(d_in))
            .zip(gb_enc.par_iter_mut())
            .zip(&by_latent)
            .for_each(|(((ge, gd), gb), entries)| {
                vectorised(|| {
                    ge.fill(0.0);
                    gd.fill(0.0);
                    for e in entries {
                        let t = e.token as usize;
                        let grad_out = if e.aux {
                            &g_aux[t * d_in..][..d_in]
                        } else {
                            &g[t * d_in..][..d_in]
                        };
                        linalg::axpy(e.value, grad_out, gd);
                        // ∂pre/∂W_enc row = the encoder input (x − b_dec for an SAE).
                        linalg::axpy(e.dpre, &enc_in[t * d_in..][..d_in], ge);
                        *gb += e.dpre;
                    }
                })
            });
        // b_dec enters x̂ directly and, in an SAE, the encoder input with a minus sign.
        let mut gb_dec: Vec<f32> = (0..d_in)
            .map(|i| g.iter().skip(i).step_by(d_in).sum::<f32>())
            .collect();
        if !transcoder {
            let through_encoder: Vec<Vec<f32>> = self
                .sae
                .w_enc_t
                .par_chunks(d_in * 256)
                .zip(gb_enc.par_chunks(256))
                .map(|(w, gb)| {
                    let mut acc = vec![0f32; d_in];
                    vectorised(|| {
                        for (row, &c) in w.chunks(d_in).zip(gb) {
                            if c != 0.0 {
                                linalg::axpy(c, row, &mut acc);
                            }
                        }
                    });
                    acc
                })
                .collect();
            for part in &through_encoder {
                gb_dec.iter_mut().zip(part).for_each(|(g, p)| *g -= p);
            }
        }
        Ok(Gradients {
            w_enc_t: gw_enc,
            b_enc: gb_enc,
            w_dec: gw_dec,
            b_dec: gb_dec,
            threshold: g_threshold,
            codes,
            sq_err,
            var,
            aux_loss,
            n,
        })
    }

    /// JumpReLU's straight-through pseudo-gradient of the thresholds θ: with the rectangle
    /// kernel K(u) = 1{|u| < ½}, each token whose pre-activation z lies within ε/2 of θ_j adds
    /// −(θ_j/ε)·∂L/∂f_j (the jump of z·H(z − θ)) and −λ/(nε) (the L0 term λ/n·Σ H(z − θ)).
    /// `band` holds every (latent, z) with z > θ − ε/2; `l0_per_token` is λ/n.
    fn threshold_gradient(&self, band: &Codes, g: &[f32], l0_per_token: f32, eps: f32) -> Vec<f32> {
        let d_in = self.sae.d_in();
        let theta = &self.sae.threshold;
        let per_token: Vec<Vec<(u32, f32)>> = band
            .rows
            .par_iter()
            .enumerate()
            .map(|(b, row)| {
                let gb = &g[b * d_in..][..d_in];
                row.iter()
                    .filter(|e| (e.1 - theta[e.0 as usize]).abs() < 0.5 * eps)
                    .map(|&(j, _)| {
                        let df = linalg::dot(gb, &self.sae.w_dec[j as usize * d_in..][..d_in]);
                        (j, -(theta[j as usize] * df + l0_per_token) / eps)
                    })
                    .collect()
            })
            .collect();
        let mut out = vec![0f32; self.sae.d_sae()];
        for (j, v) in per_token.iter().flatten() {
            out[*j as usize] += v;
        }
        out
    }

    /// One optimisation step on raw inputs `x` (`[batch, d_in]`) and, for a transcoder,
    /// their targets `y`.
    pub fn step(&mut self, x: &[f32], y: Option<&[f32]>) -> Result<StepStats> {
        let d_in = self.sae.d_in();
        let Gradients {
            w_enc_t: gw_enc,
            b_enc: gb_enc,
            w_dec: gw_dec,
            b_dec: gb_dec,
            threshold: g_theta,
            codes,
            sq_err,
            var,
            aux_loss,
            n,
        } = {
            let spare = std::mem::take(&mut self.spare);
            self.gradients_into(x, y, spare)?
        };
        let lr = self.tc.lr_at(self.step);
        let t = (self.step + 1) as i32;
        self.adam[0].update(&mut self.sae.w_enc_t, &gw_enc, lr, t);
        self.adam[1].update(&mut self.sae.b_enc, &gb_enc, lr, t);
        self.adam[2].update(&mut self.sae.w_dec, &gw_dec, lr, t);
        self.adam[3].update(&mut self.sae.b_dec, &gb_dec, lr, t);
        self.spare = [gw_enc, gw_dec];
        if let Some(adam) = self.adam.get_mut(4) {
            // Thresholds are optimised in log space, which keeps them positive.
            let theta = &mut self.sae.threshold;
            let g_log: Vec<f32> = g_theta
                .iter()
                .zip(theta.iter())
                .map(|(g, t)| g * t)
                .collect();
            let mut log_theta: Vec<f32> = theta.iter().map(|t| t.ln()).collect();
            adam.update(&mut log_theta, &g_log, lr, t);
            theta
                .iter_mut()
                .zip(&log_theta)
                .for_each(|(t, l)| *t = l.exp());
        }
        normalize_rows(&mut self.sae.w_dec, d_in);

        for f in self.since_fired.iter_mut() {
            *f += n as u64;
        }
        for (j, _) in codes.rows.iter().flatten() {
            self.since_fired[*j as usize] = 0;
        }
        if let Activation::BatchTopK { threshold, .. } = &mut self.sae.cfg.activation {
            let smallest = codes
                .rows
                .iter()
                .flatten()
                .map(|e| e.1)
                .fold(f32::INFINITY, f32::min);
            if smallest.is_finite() {
                *threshold = if self.step == 0 {
                    smallest
                } else {
                    0.99 * *threshold + 0.01 * smallest
                };
            }
        }

        let stats = StepStats {
            step: self.step,
            mse: (sq_err / (n * d_in) as f64) as f32,
            fve: (1.0 - sq_err / var.max(f64::MIN_POSITIVE)) as f32,
            l0: codes.l0() as f32,
            aux_loss,
            dead_fraction: self.dead_fraction(),
            lr,
        };
        if !stats.mse.is_finite() {
            return Err(DictError::Diverged {
                step: self.step,
                msg: format!("loss is {}; lower the learning rate", stats.mse),
            });
        }
        self.step += 1;
        self.history.push(stats);
        Ok(stats)
    }

    /// Writes parameters, optimiser moments and training state to one safetensors file,
    /// atomically.
    pub fn save_checkpoint(&self, path: &Path) -> Result<()> {
        let s = &self.sae;
        let since: Vec<f32> = self
            .since_fired
            .iter()
            .map(|&v| v.min(1 << 24) as f32)
            .collect();
        let mut tensors: Vec<(String, &[f32], Vec<usize>)> = vec![
            ("w_enc_t".into(), &s.w_enc_t, vec![s.d_sae(), s.d_in()]),
            ("b_enc".into(), &s.b_enc, vec![s.d_sae()]),
            ("w_dec".into(), &s.w_dec, vec![s.d_sae(), s.d_in()]),
            ("b_dec".into(), &s.b_dec, vec![s.d_in()]),
            ("since_fired".into(), &since, vec![s.d_sae()]),
        ];
        if !s.threshold.is_empty() {
            tensors.push(("threshold".into(), &s.threshold, vec![s.d_sae()]));
        }
        for (i, a) in self.adam.iter().enumerate() {
            let shape = vec![a.m.len()];
            tensors.push((format!("adam.m.{i}"), &a.m, shape.clone()));
            tensors.push((format!("adam.v.{i}"), &a.v, shape));
        }
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
            .into_iter()
            .map(|(k, v, shape)| (k, v.iter().flat_map(|x| x.to_le_bytes()).collect(), shape))
            .collect();
        let views: Vec<(String, TensorView)> = bytes
            .iter()
            .map(|(k, b, shape)| {
                TensorView::new(Dtype::F32, shape.clone(), b).map(|v| (k.clone(), v))
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| DictError::format(path, e.to_string()))?;
        let state = serde_json::json!({"step": self.step, "dict": s.cfg, "train": self.tc, "history": self.history});
        let meta = HashMap::from([("glassbox.state".to_string(), state.to_string())]);
        let out = safetensors::serialize(views, Some(meta))
            .map_err(|e| DictError::format(path, e.to_string()))?;
        glassbox_model::fsutil::atomic_write(path, &out).map_err(|e| DictError::io(path, e))
    }

    /// Restores a trainer from [`Trainer::save_checkpoint`]; the configs must match `expect`.
    pub fn load_checkpoint(path: &Path, expect: &TrainConfig) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| DictError::io(path, e))?;
        let bad = |msg: String| {
            DictError::format(path, format!("{msg}; delete the checkpoint to start over"))
        };
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("corrupt checkpoint ({e})")))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("corrupt checkpoint ({e})")))?;
        let state: serde_json::Value = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("glassbox.state"))
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| bad("no training state".into()))?;
        let dict: DictConfig = serde_json::from_value(state["dict"].clone())
            .map_err(|e| bad(format!("bad dict config ({e})")))?;
        let train: TrainConfig = serde_json::from_value(state["train"].clone())
            .map_err(|e| bad(format!("bad train config ({e})")))?;
        if &train != expect {
            return Err(bad(format!(
                "it was made with other training settings ({train:?})"
            )));
        }
        let get = |name: &str, len: usize| -> Result<Vec<f32>> {
            let t = st
                .tensor(name)
                .map_err(|_| bad(format!("tensor `{name}` missing")))?;
            if t.dtype() != Dtype::F32 || t.data().len() != len * 4 {
                return Err(bad(format!("tensor `{name}` has the wrong size")));
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        };
        let (d_in, d_sae) = (dict.d_in, dict.d_sae);
        let jumprelu = matches!(dict.activation, Activation::JumpRelu { .. });
        let sae = Sae {
            w_enc_t: get("w_enc_t", d_sae * d_in)?,
            b_enc: get("b_enc", d_sae)?,
            w_dec: get("w_dec", d_sae * d_in)?,
            b_dec: get("b_dec", d_in)?,
            threshold: if jumprelu {
                get("threshold", d_sae)?
            } else {
                Vec::new()
            },
            cfg: dict,
        };
        let mut sizes = vec![d_sae * d_in, d_sae, d_sae * d_in, d_in];
        if jumprelu {
            sizes.push(d_sae);
        }
        let adam = sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                Ok(Adam {
                    m: get(&format!("adam.m.{i}"), len)?,
                    v: get(&format!("adam.v.{i}"), len)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            since_fired: get("since_fired", d_sae)?
                .into_iter()
                .map(|v| v as u64)
                .collect(),
            step: state["step"].as_u64().unwrap_or(0) as usize,
            history: serde_json::from_value(state["history"].clone())
                .map_err(|e| bad(format!("bad history ({e})")))?,
            sae,
            tc: train,
            adam,
            spare: Default::default(),
        })
    }
}

/// The factor that brings the mean row norm of `x` to √d.
fn norm_scale(x: &[f32], d: usize) -> Result<f32> {
    if x.is_empty() || !x.len().is_multiple_of(d) {
        return Err(DictError::Width {
            got: x.len() % d,
            expected: d,
        });
    }
    let n = x.len() / d;
    let mean_norm = x
        .chunks(d)
        .map(|r| linalg::dot(r, r).sqrt() as f64)
        .sum::<f64>()
        / n as f64;
    if !(mean_norm.is_finite() && mean_norm > 0.0) {
        return Err(DictError::Config(format!(
            "activations have mean norm {mean_norm}; are they all zero or non-finite?"
        )));
    }
    Ok(((d as f64).sqrt() / mean_norm) as f32)
}

/// Per latent, the pre-activation exceeded by a fraction `density` of the rows of `pre`
/// (at least 1e-3, so thresholds stay positive).
fn initial_thresholds(pre: &[f32], d_sae: usize, density: f64) -> Vec<f32> {
    let n = pre.len() / d_sae;
    let rank = ((n as f64 * density) as usize).min(n.saturating_sub(1));
    (0..d_sae)
        .into_par_iter()
        .map(|j| {
            let mut col: Vec<f32> = pre.iter().skip(j).step_by(d_sae).copied().collect();
            let (_, t, _) = col.select_nth_unstable_by(rank, |a, b| b.total_cmp(a));
            t.max(1e-3)
        })
        .collect()
}

fn column_means(x: &[f32], d: usize) -> Vec<f64> {
    let n = (x.len() / d).max(1) as f64;
    let mut sums = vec![0f64; d];
    for row in x.chunks(d) {
        sums.iter_mut().zip(row).for_each(|(s, v)| *s += *v as f64);
    }
    sums.into_iter().map(|s| s / n).collect()
}

/// The `k` largest positive entries of `v` as (index, value), in index order.
fn top_k_of(v: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..v.len()).filter(|&i| v[i] > 0.0).collect();
    if idx.len() > k {
        idx.select_nth_unstable_by(k - 1, |&a, &b| v[b].total_cmp(&v[a]));
        idx.truncate(k);
    }
    idx.sort_unstable();
    idx.into_iter().map(|i| (i, v[i])).collect()
}
