//! A probe that learns where in a text to look: softmax attention over its tokens (the
//! "attention probe" of McKenzie et al., 2025, *Detecting high-stakes interactions with
//! activation probes*). Each token `t` of activations `x_t` has a logit `ℓ_t = w·x_t` and a
//! relevance `u_t = q·x_t`; the text's logit is `Σ_t softmax(u)_t · ℓ_t + b`.
//!
//! With `q = 0` it is the pooled probe (the mean of the token logits), where it starts. A
//! learned `q` lets a few tokens (a buried instruction) speak for a long document without the
//! rest diluting them, while several tokens share the decision, unlike a max over tokens.

use crate::linalg;
use crate::probe::{class_totals, sigmoid, standardisation, Adam, ProbeTraining};

/// One training text: its activations `[tokens, d]`, label and weight.
pub struct AttentionSample<'a> {
    pub x: &'a [f32],
    pub label: bool,
    pub weight: f32,
}

/// Query, token weights and bias, in the units of the raw activations.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionProbe {
    pub query: Vec<f32>,
    pub weights: Vec<f32>,
    pub bias: f32,
}

impl AttentionProbe {
    /// The text's logit from its activations `[tokens, d]` (the bias alone for no tokens).
    pub fn logit(&self, x: &[f32]) -> f32 {
        let (attended, _, _) = attend(&self.query, &self.weights, 0.0, x);
        attended + self.bias
    }
}

/// `Σ_t softmax(q·x_t + c)·(w·x_t + c)` for `x` `[tokens, d]`, with the attention and the
/// token logits (each shifted by `shift`; a shift of the relevances changes no softmax).
fn attend(q: &[f32], w: &[f32], shift: f32, x: &[f32]) -> (f32, Vec<f32>, Vec<f32>) {
    let d = w.len().max(1);
    let logits: Vec<f32> = x.chunks(d).map(|t| linalg::dot(w, t) + shift).collect();
    let relevance: Vec<f32> = x.chunks(d).map(|t| linalg::dot(q, t)).collect();
    let top = relevance.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut att: Vec<f32> = relevance.iter().map(|u| (u - top).exp()).collect();
    let total: f32 = att.iter().sum();
    att.iter_mut()
        .for_each(|a| *a /= total.max(f32::MIN_POSITIVE));
    let attended = att.iter().zip(&logits).map(|(a, l)| a * l).sum();
    (attended, att, logits)
}

/// Fits an attention probe by full-batch Adam on class-balanced logistic loss with an L2
/// penalty on `w` and `q` (`cfg`'s epochs, rate and penalty), on inputs centred and scaled as
/// [`crate::probe::fit`] does; the result is in raw units.
pub fn fit_attention(samples: &[AttentionSample], d: usize, cfg: &ProbeTraining) -> AttentionProbe {
    let (mean, scale) = standardisation(samples.iter().map(|s| s.x), d);
    let (pos, neg) = class_totals(samples.iter().map(|s| (s.label, s.weight)));
    // Parameters [w; q; b] on standardised inputs z = (x − μ)·s. On raw x, w·z = (s·w)·x − s·w·μ
    // and q·z differs from (s·q)·x by a constant, which the softmax ignores.
    let n = 2 * d + 1;
    let mut p = vec![0f32; n];
    let mut adam = Adam::new(n, 2 * d, cfg.l2);
    for step in 1..=cfg.epochs {
        let w_raw: Vec<f32> = p[..d].iter().map(|w| w * scale).collect();
        let q_raw: Vec<f32> = p[d..2 * d].iter().map(|q| q * scale).collect();
        let shift = -linalg::dot(&w_raw, &mean);
        let mut g = vec![0f32; n];
        let mut looked = vec![0f32; d];
        let mut moved = vec![0f32; d];
        for s in samples.iter().filter(|s| !s.x.is_empty()) {
            let (attended, att, logits) = attend(&q_raw, &w_raw, shift, s.x);
            let y = f32::from(u8::from(s.label));
            let weight = 0.5 * s.weight / if s.label { pos } else { neg };
            let err = (sigmoid(attended + p[2 * d]) - y) * weight;
            // ∂/∂w = err·Σ a_t z_t = err·s·(Σ a_t x_t − μ);
            // ∂/∂q = err·Σ a_t (ℓ_t − ℓ̄) z_t = err·s·Σ a_t (ℓ_t − ℓ̄) x_t (the μ part sums to 0).
            looked.iter_mut().for_each(|v| *v = 0.0);
            moved.iter_mut().for_each(|v| *v = 0.0);
            for ((t, a), l) in s.x.chunks(d).zip(&att).zip(&logits) {
                linalg::axpy(*a, t, &mut looked);
                linalg::axpy(a * (l - attended), t, &mut moved);
            }
            for i in 0..d {
                g[i] += err * scale * (looked[i] - mean[i]);
                g[d + i] += err * scale * moved[i];
            }
            g[2 * d] += err;
        }
        adam.step(&mut p, &mut g, step, cfg.lr);
    }
    let weights: Vec<f32> = p[..d].iter().map(|w| w * scale).collect();
    let bias = p[2 * d] - linalg::dot(&weights, &mean);
    AttentionProbe {
        query: p[d..2 * d].iter().map(|q| q * scale).collect(),
        weights,
        bias,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Texts of 12 tokens of noise in 6 dimensions, coordinate 0 the loudest; one token of each
    /// text is marked by coordinate 1, and its coordinate 0 says the label (+2 or −2). The mean
    /// over tokens drowns that token in the others' coordinate 0; attention on coordinate 1
    /// finds it.
    fn texts(n: usize, seed: u32) -> Vec<(Vec<f32>, bool)> {
        let mut state = seed;
        let mut noise = move || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        (0..n)
            .map(|i| {
                let label = i % 2 == 0;
                let mut x: Vec<f32> = (0..12 * 6)
                    .map(|j| noise() * if j % 6 == 0 { 4.0 } else { 1.0 })
                    .collect();
                // A marked token in every text; only a positive one carries the signal.
                let at = (i * 5) % 12;
                x[at * 6 + 1] = 3.0;
                x[at * 6] = if label { 2.0 } else { -2.0 };
                (x, label)
            })
            .collect()
    }

    #[test]
    fn attention_finds_the_one_token_that_decides() {
        let train = texts(80, 1);
        let samples: Vec<AttentionSample> = train
            .iter()
            .map(|(x, label)| AttentionSample {
                x,
                label: *label,
                weight: 1.0,
            })
            .collect();
        let cfg = ProbeTraining::default();
        let probe = fit_attention(&samples, 6, &cfg);
        // The pooled probe, on the same texts: logistic regression on the mean token.
        let pooled: Vec<crate::probe::Sample> = train
            .iter()
            .map(|(x, label)| crate::probe::Sample::new(crate::probe::mean_rows(x, 6), *label))
            .collect();
        let refs: Vec<&crate::probe::Sample> = pooled.iter().collect();
        let (w, b) = crate::probe::fit(&refs, 6, &cfg);
        let held = texts(200, 7);
        let right = |logit: &dyn Fn(&[f32]) -> f32| {
            held.iter()
                .filter(|(x, label)| (logit(x) > 0.0) == *label)
                .count()
        };
        let attention = right(&|x| probe.logit(x));
        let mean = right(&|x| crate::probe::linear_logit(&w, b, &crate::probe::mean_rows(x, 6)));
        assert!(
            attention >= 195,
            "attention: {attention} of 200 held-out texts right"
        );
        assert!(
            mean < 180,
            "the mean token should not suffice: {mean} of 200"
        );
        // It learned to look at the marked coordinate.
        let top = (0..6)
            .max_by(|&a, &b| probe.query[a].total_cmp(&probe.query[b]))
            .unwrap();
        assert_eq!(top, 1, "{:?}", probe.query);
    }

    #[test]
    fn a_zero_query_is_the_mean_of_the_token_logits() {
        let probe = AttentionProbe {
            query: vec![0.0; 2],
            weights: vec![1.0, -1.0],
            bias: 0.5,
        };
        let x = [1.0, 0.0, 0.0, 3.0, 2.0, 2.0];
        assert!((probe.logit(&x) - ((1.0 - 3.0 + 0.0) / 3.0 + 0.5)).abs() < 1e-6);
        assert_eq!(probe.logit(&[]), 0.5);
    }
}
