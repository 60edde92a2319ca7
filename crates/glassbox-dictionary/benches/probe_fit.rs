//! Fitting logistic-regression probes on this machine, one run, printed as a table:
//!
//!   cargo bench -p glassbox-dictionary --bench probe_fit
//!
//! At the scale of one fold of `probe families --segments` (a sentence probe's head: 48,000
//! pieces of 384-wide MiniLM sentence embeddings, 300 full-batch epochs), the grid of four L2
//! penalties `--segment-penalty` fits (`probe::fit_penalties`: rows split among the threads,
//! four rows at a time through every penalty's dot products and gradient updates in AVX-512 or
//! AVX2 registers) beside the reference it replaced: the same fit one row at a time in plain
//! Rust on one thread (what `fit_penalties` ran until December 2026), written out below. Both
//! must agree to rounding, on their logits over the rows. Synthetic unit-length rows with a
//! planted direction: the cost does not depend on what is learnt. GFLOP/s counts 4·d per row
//! and penalty per epoch.

use std::time::Instant;

use glassbox_dictionary::probe::{self, sigmoid, ProbeTraining, Sample};
use rand::{Rng, SeedableRng};

const ROWS: usize = 48_000;
const D: usize = 384;
const PENALTIES: [f32; 4] = [0.05, 0.1, 0.25, 0.5];

fn samples() -> Vec<Sample> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let planted: Vec<f32> = (0..D).map(|i| if i % 7 == 0 { 1.0 } else { 0.0 }).collect();
    (0..ROWS)
        .map(|i| {
            let label = i % 5 == 0;
            let mut x: Vec<f32> = (0..D).map(|_| rng.random::<f32>() - 0.5).collect();
            if label {
                x.iter_mut().zip(&planted).for_each(|(x, p)| *x += 0.05 * p);
            }
            let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt();
            x.iter_mut().for_each(|v| *v /= norm);
            Sample::new(x, label)
        })
        .collect()
}

/// The reference: `fit_penalties` on one-row samples of weight 1, row by row. The rows are
/// standardised by the pooled mean and standard deviation, each class weighs half, and Adam
/// steps the weights (L2-penalised) and bias of every penalty.
fn row_by_row(samples: &[Sample], cfg: &ProbeTraining, l2s: &[f32]) -> Vec<(Vec<f32>, f32)> {
    let n = samples.len() as f32;
    let mut mean = vec![0f32; D];
    for s in samples {
        mean.iter_mut().zip(&s.x).for_each(|(m, x)| *m += x / n);
    }
    let var: f32 = samples
        .iter()
        .flat_map(|s| s.x.iter().zip(&mean).map(|(x, m)| (x - m) * (x - m)))
        .sum::<f32>()
        / (n * D as f32);
    let scale = 1.0 / var.sqrt().max(1e-6);
    let positives = samples.iter().filter(|s| s.label).count() as f32;
    let rows: Vec<(Vec<f32>, f32, f32)> = samples
        .iter()
        .map(|s| {
            let z =
                s.x.iter()
                    .zip(&mean)
                    .map(|(x, m)| (x - m) * scale)
                    .collect();
            let weight = 0.5 / if s.label { positives } else { n - positives };
            (z, f32::from(u8::from(s.label)), weight)
        })
        .collect();
    let mut out = Vec::new();
    for &l2 in l2s {
        let (mut p, mut m, mut v) = (vec![0f32; D + 1], vec![0f32; D + 1], vec![0f32; D + 1]);
        for step in 1..=cfg.epochs {
            let mut g = vec![0f32; D + 1];
            for (z, y, weight) in &rows {
                let err = (sigmoid(dot(&p[..D], z) + p[D]) - y) * weight;
                g[..D].iter_mut().zip(z).for_each(|(g, z)| *g += err * z);
                g[D] += err;
            }
            g[..D]
                .iter_mut()
                .zip(&p[..D])
                .for_each(|(g, p)| *g += l2 * p);
            let (c1, c2) = (
                1.0 - 0.9f32.powi(step as i32),
                1.0 - 0.999f32.powi(step as i32),
            );
            for i in 0..=D {
                m[i] = 0.9 * m[i] + 0.1 * g[i];
                v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i];
                p[i] -= cfg.lr * (m[i] / c1) / ((v[i] / c2).sqrt() + 1e-8);
            }
        }
        let w: Vec<f32> = p[..D].iter().map(|w| w * scale).collect();
        let b = p[D] - dot(&w, &mean);
        out.push((w, b));
    }
    out
}

/// A dot product on eight accumulators, so it vectorises (as the library's did).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail = a.len() / 8 * 8;
    acc.iter().sum::<f32>() + dot_tail(&a[tail..], &b[tail..])
}

fn dot_tail(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

fn main() {
    let samples = samples();
    let refs: Vec<&Sample> = samples.iter().collect();
    let cfg = ProbeTraining::default();
    let flop = |penalties: usize| (4 * D * ROWS * penalties * cfg.epochs) as f64 / 1e9;

    let t = Instant::now();
    let reference = row_by_row(&samples, &cfg, &PENALTIES);
    let rowwise = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let together = probe::fit_penalties(&refs, D, &cfg, &PENALTIES);
    let grid = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let _ = probe::fit(&refs, D, &cfg);
    let single = t.elapsed().as_secs_f64();

    // Agreement on what a probe is for, its logits: the largest gap over the rows, relative
    // to the reference logits' range (Adam divides each gradient by its own size, so the
    // rounding of near-zero gradients moves near-zero weights by up to a step: the weights
    // agree less closely than the logits).
    let logits = |(w, b): &(Vec<f32>, f32)| -> Vec<f32> {
        samples.iter().map(|s| dot(w, &s.x) + b).collect()
    };
    let worst = together
        .iter()
        .zip(&reference)
        .map(|(fit, reference)| {
            let (got, want) = (logits(fit), logits(reference));
            let (lo, hi) = want
                .iter()
                .fold((f32::MAX, f32::MIN), |(l, h), &z| (l.min(z), h.max(z)));
            let gap = got
                .iter()
                .zip(&want)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            gap / (hi - lo)
        })
        .fold(0f32, f32::max);
    assert!(
        worst < 1e-2,
        "the kernel's fit must be the reference's up to rounding (logit gap {worst:.1e} of the range)"
    );

    println!(
        "probe fits: {ROWS} rows × {D}, {} epochs, class-balanced; one run",
        cfg.epochs
    );
    println!(
        "{:<52} {:>9} {:>9} {:>10}",
        "work", "time", "GFLOP/s", "vs ref."
    );
    let row = |name: &str, secs: f64, penalties: usize, vs: f64| {
        println!(
            "{name:<52} {:>8.2}s {:>9.1} {:>9.2}×",
            secs,
            flop(penalties) / secs,
            vs / secs
        );
    };
    row(
        "four penalties, row by row (reference)",
        rowwise,
        PENALTIES.len(),
        rowwise,
    );
    row(
        "four penalties, SIMD kernel (probe::fit_penalties)",
        grid,
        PENALTIES.len(),
        rowwise,
    );
    row(
        "one penalty, SIMD kernel (probe::fit)",
        single,
        1,
        rowwise / PENALTIES.len() as f64,
    );
    println!("largest logit gap to the reference: {worst:.1e} of the logits' range");
}
