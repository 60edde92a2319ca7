//! Fitting logistic-regression probes on this machine, one run, printed as a table:
//!
//!   cargo bench -p glassbox-dictionary --bench probe_fit
//!
//! At the scale of one fold of `probe families --segments` (a sentence probe's head: 48,000
//! pieces of 384-wide MiniLM sentence embeddings, 300 full-batch epochs), a grid of four L2
//! penalties fitted in one pass over the rows per epoch (`probe::fit_penalties`, what
//! `--segment-penalty` runs) beside the reference it replaced, one `probe::fit` per penalty;
//! the two must agree bit for bit. Synthetic unit-length rows with a planted direction: the
//! cost does not depend on what is learnt. GFLOP/s counts the dot product and the gradient's
//! axpy of every row and penalty (4·d per row-penalty, per epoch).

use std::time::Instant;

use glassbox_dictionary::probe::{self, ProbeTraining, Sample};
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

fn main() {
    let samples = samples();
    let refs: Vec<&Sample> = samples.iter().collect();
    let cfg = ProbeTraining::default();
    let flop = |penalties: usize| (4 * D * ROWS * penalties * cfg.epochs) as f64 / 1e9;

    let t = Instant::now();
    let one_by_one: Vec<(Vec<f32>, f32)> = PENALTIES
        .iter()
        .map(|&l2| probe::fit(&refs, D, &ProbeTraining { l2, ..cfg.clone() }))
        .collect();
    let separate = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let together = probe::fit_penalties(&refs, D, &cfg, &PENALTIES);
    let grid = t.elapsed().as_secs_f64();
    assert_eq!(
        together, one_by_one,
        "the grid must fit each penalty as fit does"
    );

    let t = Instant::now();
    let _ = probe::fit(&refs, D, &cfg);
    let single = t.elapsed().as_secs_f64();

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
    row("one penalty (probe::fit)", single, 1, single);
    row(
        "four penalties, one fit each (reference)",
        separate,
        PENALTIES.len(),
        separate,
    );
    row(
        "four penalties in one pass (probe::fit_penalties)",
        grid,
        PENALTIES.len(),
        separate,
    );
}
