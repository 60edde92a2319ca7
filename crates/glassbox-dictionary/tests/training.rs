//! The hand-written backward pass against finite differences, learning on data with a known
//! sparse structure, and bitwise-identical resumption from a checkpoint.

use glassbox_dictionary::train::{TrainConfig, Trainer};
use glassbox_dictionary::{Activation, DictConfig, Sae};
use rand::{Rng, SeedableRng};

fn cfg(activation: Activation, d_in: usize, d_sae: usize) -> DictConfig {
    DictConfig::sae(activation, d_in, d_sae, "test", "test")
}

fn transcoder_cfg(activation: Activation, d_in: usize, d_sae: usize) -> DictConfig {
    DictConfig {
        target_hook: Some("target".into()),
        ..cfg(activation, d_in, d_sae)
    }
}

const JUMPRELU: Activation = Activation::JumpRelu {
    l0: 0.05,
    bandwidth: 0.2,
};

fn tc(steps: usize, aux_k: usize) -> TrainConfig {
    TrainConfig {
        batch: 64,
        steps,
        lr: 1e-3,
        warmup_steps: 5,
        decay_start: 0.8,
        aux_k,
        aux_alpha: 1.0 / 32.0,
        dead_after_tokens: 256,
        seed: 1,
        init_l0: 8.0,
    }
}

fn gaussian(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let (u, v): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random());
            (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        })
        .collect()
}

/// Data made of `k` of `m` hidden unit directions with positive weights, plus a mean.
fn sparse_data(n: usize, d: usize, m: usize, k: usize, seed: u64) -> Vec<f32> {
    sparse_pairs(n, d, m, k, seed).0
}

/// Inputs as in [`sparse_data`] and targets made of the same hidden features through other
/// directions: what a transcoder of an MLP-like map should find.
fn sparse_pairs(n: usize, d: usize, m: usize, k: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut dirs = gaussian(&mut rng, m * d);
    for r in dirs.chunks_mut(d) {
        let norm = r.iter().map(|v| v * v).sum::<f32>().sqrt();
        r.iter_mut().for_each(|v| *v /= norm);
    }
    let mean: Vec<f32> = gaussian(&mut rng, d).into_iter().map(|v| v * 0.5).collect();
    let outs = gaussian(&mut rng, m * d);
    let (mut x, mut y) = (Vec::with_capacity(n * d), Vec::with_capacity(n * d));
    for _ in 0..n {
        let (mut row, mut out) = (mean.clone(), vec![0.1; d]);
        for _ in 0..k {
            let j = rng.random_range(0..m);
            let w: f32 = rng.random_range(0.5..2.0);
            row.iter_mut()
                .zip(&dirs[j * d..][..d])
                .for_each(|(r, v)| *r += w * v);
            out.iter_mut()
                .zip(&outs[j * d..][..d])
                .for_each(|(r, v)| *r += w * v);
        }
        x.extend(row);
        y.extend(out);
    }
    (x, y)
}

/// The codes a training step uses: JumpReLU's training selection also returns the band
/// below the thresholds, which does not fire.
fn active_codes(sae: &Sae, x: &[f32]) -> glassbox_dictionary::Codes {
    let batch_level = !matches!(sae.cfg.activation, Activation::JumpRelu { .. });
    sae.select(&sae.pre_activations(x), batch_level)
}

/// The training loss recomputed from scratch (main term + L1; JumpReLU's L0 term is
/// piecewise constant and drops out of finite differences), in f64.
fn loss(sae: &Sae, x: &[f32], y: &[f32]) -> f64 {
    let n = x.len() / sae.d_in();
    let codes = active_codes(sae, x);
    let xhat = sae.decode(&codes);
    let mse: f64 = xhat
        .iter()
        .zip(y)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum::<f64>()
        / n as f64;
    let l1 = match sae.cfg.activation {
        Activation::Relu { l1 } => {
            l1 as f64 * codes.rows.iter().flatten().map(|e| e.1 as f64).sum::<f64>()
        }
        _ => 0.0,
    };
    mse + l1
}

fn check_gradients(dict: DictConfig) {
    let (d_in, d_sae) = (dict.d_in, dict.d_sae);
    let activation = dict.activation;
    let (x, y) = sparse_pairs(16, d_in, 12, 3, 5);
    let transcoder = dict.is_transcoder();
    let y = if transcoder { y } else { x.clone() };
    let mut sae = Sae::init(dict, 3).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    sae.b_enc = (0..d_sae).map(|_| rng.random_range(-0.3..0.3)).collect();
    sae.b_dec = (0..d_in).map(|_| rng.random_range(-0.3..0.3)).collect();
    if !sae.threshold.is_empty() {
        sae.threshold = (0..d_sae).map(|_| rng.random_range(0.05..0.5)).collect();
    }
    let trainer = Trainer::new(sae.clone(), tc(10, 0)).unwrap();
    let grads = trainer
        .gradients(&x, transcoder.then_some(y.as_slice()))
        .unwrap();
    let eps = 1e-3f32;
    let mut checked = 0;
    type Field = fn(&mut Sae) -> &mut Vec<f32>;
    let fields: [(&str, Field, &Vec<f32>); 4] = [
        ("w_enc", |s| &mut s.w_enc_t, &grads.w_enc_t),
        ("b_enc", |s| &mut s.b_enc, &grads.b_enc),
        ("w_dec", |s| &mut s.w_dec, &grads.w_dec),
        ("b_dec", |s| &mut s.b_dec, &grads.b_dec),
    ];
    for (name, field, analytic) in fields {
        for i in (0..analytic.len()).step_by(7) {
            let (mut plus, mut minus) = (sae.clone(), sae.clone());
            field(&mut plus)[i] += eps;
            field(&mut minus)[i] -= eps;
            let same = |s: &Sae| {
                active_codes(s, &x)
                    .rows
                    .iter()
                    .map(|r| r.iter().map(|e| e.0).collect::<Vec<_>>())
                    .collect::<Vec<_>>()
            };
            if same(&plus) != same(&sae) || same(&minus) != same(&sae) {
                continue; // the selection changed: not differentiable here
            }
            let numeric = (loss(&plus, &x, &y) - loss(&minus, &x, &y)) / (2.0 * eps as f64);
            let a = analytic[i] as f64;
            assert!(
                (numeric - a).abs() <= 2e-3 + 2e-2 * numeric.abs(),
                "{activation:?} {name}[{i}]: analytic {a}, numeric {numeric}"
            );
            checked += 1;
        }
    }
    assert!(checked > 30, "only {checked} entries checked");
}

#[test]
fn topk_gradients_match_finite_differences() {
    check_gradients(cfg(Activation::TopK { k: 4 }, 8, 24));
}

#[test]
fn relu_l1_gradients_match_finite_differences() {
    check_gradients(cfg(Activation::Relu { l1: 0.05 }, 8, 24));
}

#[test]
fn jumprelu_gradients_match_finite_differences() {
    check_gradients(cfg(JUMPRELU, 8, 24));
}

#[test]
fn transcoder_gradients_match_finite_differences() {
    check_gradients(transcoder_cfg(Activation::TopK { k: 4 }, 8, 24));
    check_gradients(transcoder_cfg(JUMPRELU, 8, 24));
}

/// The thresholds' pseudo-gradient, recomputed densely token by token in f64: every
/// pre-activation z within ε/2 of θ_j adds −(θ_j·∂L/∂f_j + λ/n)/ε.
#[test]
fn jumprelu_threshold_gradient_is_the_straight_through_estimate() {
    let (d_in, d_sae, n) = (8, 24, 32);
    let Activation::JumpRelu { l0, bandwidth: eps } = JUMPRELU else {
        unreachable!()
    };
    let x = sparse_data(n, d_in, 12, 3, 7);
    let mut sae = Sae::init(cfg(JUMPRELU, d_in, d_sae), 5).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    sae.threshold = (0..d_sae).map(|_| rng.random_range(0.05..0.8)).collect();
    let grads = Trainer::new(sae.clone(), tc(10, 0))
        .unwrap()
        .gradients(&x, None)
        .unwrap();
    let pre = sae.pre_activations(&x);
    let xhat = sae.decode(&active_codes(&sae, &x));
    let mut expected = vec![0f64; d_sae];
    let mut in_band = 0;
    for b in 0..n {
        for j in 0..d_sae {
            let (z, t) = (pre[b * d_sae + j] as f64, sae.threshold[j] as f64);
            if (z - t).abs() < eps as f64 / 2.0 {
                in_band += 1;
                let df: f64 = (0..d_in)
                    .map(|i| {
                        2.0 * (xhat[b * d_in + i] - x[b * d_in + i]) as f64 / n as f64
                            * sae.w_dec[j * d_in + i] as f64
                    })
                    .sum();
                expected[j] -= (t * df + l0 as f64 / n as f64) / eps as f64;
            }
        }
    }
    assert!(in_band > 10, "only {in_band} pre-activations in the band");
    assert_eq!(grads.threshold.len(), expected.len());
    for (j, (a, e)) in grads.threshold.iter().zip(&expected).enumerate() {
        assert!(
            (*a as f64 - e).abs() <= 1e-4 + 1e-4 * e.abs(),
            "θ[{j}]: {a} vs {e}"
        );
    }
}

#[test]
fn jumprelu_learns_and_its_l0_penalty_sparsifies() {
    let (d_in, d_sae) = (32, 128);
    let x = sparse_data(64 * 300, d_in, 64, 4, 11);
    let train = |l0: f32| {
        let activation = Activation::JumpRelu { l0, bandwidth: 0.1 };
        let mut t = Trainer::new(
            Sae::init(cfg(activation, d_in, d_sae), 2).unwrap(),
            TrainConfig {
                lr: 1e-2,
                ..tc(300, 0)
            },
        )
        .unwrap();
        t.initialise_from(&x[..64 * d_in * 10], None).unwrap();
        let mut last = None;
        for b in x.chunks(64 * d_in) {
            last = Some(t.step(b, None).unwrap());
        }
        last.unwrap()
    };
    let (loose, tight) = (train(0.01), train(1.0));
    assert!(loose.fve > 0.8, "FVE {}", loose.fve);
    assert!(
        tight.l0 < 0.7 * loose.l0 && tight.fve > 0.5,
        "λ = 1: L0 {} FVE {}; λ = 0.01: L0 {} FVE {}",
        tight.l0,
        tight.fve,
        loose.l0,
        loose.fve
    );
}

#[test]
fn a_transcoder_learns_a_sparse_map_between_hooks() {
    let (d_in, d_sae) = (32, 128);
    let (x, y) = sparse_pairs(64 * 300, d_in, 64, 4, 13);
    let mut t = Trainer::new(
        Sae::init(transcoder_cfg(Activation::TopK { k: 8 }, d_in, d_sae), 2).unwrap(),
        TrainConfig {
            lr: 1e-2,
            ..tc(300, 16)
        },
    )
    .unwrap();
    let warm = 64 * d_in * 10;
    t.initialise_from(&x[..warm], Some(&y[..warm])).unwrap();
    let mut last = None;
    for (bx, by) in x.chunks(64 * d_in).zip(y.chunks(64 * d_in)) {
        last = Some(t.step(bx, Some(by)).unwrap());
    }
    let last = last.unwrap();
    assert!(last.fve > 0.75, "target FVE {}", last.fve);
    // Raw units after saving: the reconstruction of y from x matches what training saw.
    let dir = tempfile::tempdir().unwrap();
    glassbox_dictionary::saelens::save(&t.sae, dir.path(), serde_json::Value::Null).unwrap();
    let loaded = glassbox_dictionary::saelens::load(dir.path()).unwrap();
    assert_eq!(loaded.cfg.target_hook.as_deref(), Some("target"));
    let probe = 64 * d_in;
    let (_, yhat) = loaded.reconstruct(&x[..probe]).unwrap();
    let err: f32 = yhat.iter().zip(&y).map(|(a, b)| (a - b).powi(2)).sum();
    let mean: Vec<f32> = (0..d_in)
        .map(|i| y[..probe].iter().skip(i).step_by(d_in).sum::<f32>() / 64.0)
        .collect();
    let var: f32 = y[..probe]
        .chunks(d_in)
        .flat_map(|r| r.iter().zip(&mean).map(|(v, m)| (v - m).powi(2)))
        .sum();
    assert!(
        1.0 - err / var > 0.7,
        "saved transcoder FVE {}",
        1.0 - err / var
    );
}

#[test]
fn topk_learns_a_sparse_dictionary() {
    let (d_in, d_sae) = (32, 128);
    let x = sparse_data(64 * 300, d_in, 64, 4, 11);
    let mut t = Trainer::new(
        Sae::init(cfg(Activation::TopK { k: 8 }, d_in, d_sae), 2).unwrap(),
        TrainConfig {
            lr: 1e-2,
            ..tc(300, 16)
        },
    )
    .unwrap();
    t.initialise_from(&x[..64 * d_in * 10], None).unwrap();
    let first = t.step(&x[..64 * d_in], None).unwrap();
    let mut last = first;
    for b in x.chunks(64 * d_in).skip(1) {
        last = t.step(b, None).unwrap();
    }
    assert!(
        last.fve > 0.9 && last.fve > first.fve + 0.3,
        "FVE {} → {}",
        first.fve,
        last.fve
    );
    // TopK keeps k latents per row (fewer only where a pre-activation is not positive).
    assert!(last.l0 > 7.5 && last.l0 <= 8.0, "L0 {}", last.l0);
    // Decoder rows stay unit norm.
    for r in t.sae.w_dec.chunks(d_in) {
        assert!((r.iter().map(|v| v * v).sum::<f32>().sqrt() - 1.0).abs() < 1e-4);
    }
}

#[test]
fn resuming_from_a_checkpoint_repeats_the_same_curve() {
    let (d_in, d_sae) = (16, 64);
    let x = sparse_data(64 * 20, d_in, 32, 3, 4);
    let make = || {
        let mut t = Trainer::new(
            Sae::init(
                cfg(
                    Activation::BatchTopK {
                        k: 4,
                        threshold: 0.0,
                    },
                    d_in,
                    d_sae,
                ),
                8,
            )
            .unwrap(),
            tc(20, 8),
        )
        .unwrap();
        t.initialise_from(&x, None).unwrap();
        t
    };
    let mut straight = make();
    for b in x.chunks(64 * d_in) {
        straight.step(b, None).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt.safetensors");
    let mut first = make();
    for b in x.chunks(64 * d_in).take(9) {
        first.step(b, None).unwrap();
    }
    first.save_checkpoint(&ckpt).unwrap();
    drop(first);
    let mut resumed = Trainer::load_checkpoint(&ckpt, &tc(20, 8)).unwrap();
    assert_eq!(resumed.step, 9);
    for b in x.chunks(64 * d_in).skip(9) {
        resumed.step(b, None).unwrap();
    }
    assert_eq!(
        resumed.history, straight.history,
        "bitwise-identical loss curve"
    );
    assert_eq!(resumed.sae.w_dec, straight.sae.w_dec);

    let err = Trainer::load_checkpoint(&ckpt, &tc(30, 8))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("other training settings"), "{err}");
    std::fs::write(&ckpt, b"garbage").unwrap();
    assert!(Trainer::load_checkpoint(&ckpt, &tc(20, 8))
        .err()
        .unwrap()
        .to_string()
        .contains("corrupt"));
}

#[test]
fn saelens_format_round_trips_with_the_input_scale_folded() {
    use glassbox_dictionary::saelens;
    let (d_in, d_sae) = (16, 48);
    let x = sparse_data(64 * 10, d_in, 24, 3, 6);
    for activation in [
        Activation::TopK { k: 5 },
        Activation::BatchTopK {
            k: 5,
            threshold: 0.0,
        },
        Activation::Relu { l1: 0.01 },
        JUMPRELU,
    ] {
        let mut t = Trainer::new(
            Sae::init(cfg(activation, d_in, d_sae), 4).unwrap(),
            tc(10, 8),
        )
        .unwrap();
        t.initialise_from(&x, None).unwrap();
        for b in x.chunks(64 * d_in) {
            t.step(b, None).unwrap();
        }
        assert_ne!(t.sae.cfg.input_scale, 1.0);
        let dir = tempfile::tempdir().unwrap();
        saelens::save(&t.sae, dir.path(), serde_json::json!({"note": "test"})).unwrap();
        let loaded = saelens::load(dir.path()).unwrap();
        assert_eq!(loaded.cfg.input_scale, 1.0);
        let probe = &x[..8 * d_in];
        let (codes_a, xhat_a) = t.sae.reconstruct(probe).unwrap();
        let (codes_b, xhat_b) = loaded.reconstruct(probe).unwrap();
        assert_eq!(codes_a.rows.len(), 8);
        assert_eq!(codes_b.rows.len(), 8);
        assert_eq!((xhat_a.len(), xhat_b.len()), (8 * d_in, 8 * d_in));
        for (ra, rb) in codes_a.rows.iter().zip(&codes_b.rows) {
            assert_eq!(ra.len(), rb.len(), "{activation:?}");
            assert_eq!(
                ra.iter().map(|e| e.0).collect::<Vec<_>>(),
                rb.iter().map(|e| e.0).collect::<Vec<_>>(),
                "{activation:?}"
            );
            for (a, b) in ra.iter().zip(rb) {
                assert!((a.1 - b.1).abs() < 1e-4 * a.1.abs().max(1.0));
            }
        }
        for (a, b) in xhat_a.iter().zip(&xhat_b) {
            assert!((a - b).abs() < 1e-4 * a.abs().max(1.0));
        }
    }
}

#[test]
fn bad_dictionary_files_are_reported() {
    use glassbox_dictionary::saelens;
    let dir = tempfile::tempdir().unwrap();
    let sae = Sae::init(cfg(Activation::TopK { k: 2 }, 4, 8), 1).unwrap();
    saelens::save(&sae, dir.path(), serde_json::Value::Null).unwrap();
    let cfg_path = dir.path().join("cfg.json");
    let good = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(&cfg_path, good.replace("\"d_sae\": 8", "\"d_sae\": 9")).unwrap();
    let err = saelens::load(dir.path()).err().unwrap().to_string();
    assert!(err.contains("W_enc") && err.contains("[4, 9]"), "{err}");
    std::fs::write(&cfg_path, good.replace("\"none\"", "\"layer_norm\"")).unwrap();
    assert!(saelens::load(dir.path())
        .err()
        .unwrap()
        .to_string()
        .contains("not supported"));
    std::fs::write(&cfg_path, &good).unwrap();
    let w = dir.path().join("sae_weights.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    assert!(saelens::load(dir.path())
        .err()
        .unwrap()
        .to_string()
        .contains("corrupt"));
}

#[test]
fn a_transcoder_initialised_from_fewer_rows_than_latents_has_no_twin_latents() {
    let (d_in, d_sae) = (16, 96);
    let (x, y) = sparse_pairs(40, d_in, 24, 3, 17);
    let mut t = Trainer::new(
        Sae::init(transcoder_cfg(Activation::TopK { k: 4 }, d_in, d_sae), 1).unwrap(),
        tc(10, 0),
    )
    .unwrap();
    t.initialise_from(&x, Some(&y)).unwrap();
    let rows: Vec<&[f32]> = t.sae.w_enc_t.chunks(d_in).collect();
    for i in 0..d_sae {
        for j in 0..i {
            let cos: f32 = rows[i].iter().zip(rows[j]).map(|(a, b)| a * b).sum();
            assert!(cos < 0.9999, "latents {i} and {j} start identical");
        }
    }
}

fn in_memory(x: Vec<f32>, d: usize) -> glassbox_dictionary::sweep::InMemory {
    use glassbox_dictionary::sweep::{InMemory, SourceInfo};
    let info = SourceInfo {
        d_in: d,
        rows: 0,
        model: "test".into(),
        hook: "test".into(),
        target_hook: None,
        origin: "sparse rows".into(),
    };
    InMemory::new(info, x, None).unwrap()
}

/// A k-sweep stopped by its progress callback (as Ctrl-C in Python stops it) and opened again
/// resumes from its checkpoints and ends with the dictionaries of an uninterrupted run, bit
/// for bit; each directory then holds a SAELens dictionary that learned the data.
#[test]
fn a_stopped_sweep_resumes_to_the_uninterrupted_result() {
    use glassbox_dictionary::saelens;
    use glassbox_dictionary::sweep::{Arch, Sweep, SweepConfig};
    use std::ops::ControlFlow;
    let d = 16;
    let source = in_memory(sparse_data(64 * 12, d, 24, 3, 11), d);
    let cfg = SweepConfig {
        arch: Arch::TopK,
        ks: vec![3, 6],
        width: 48,
        batch: 64,
        steps: Some(30),
        lr: 1e-2,
        warmup: 3,
        checkpoint_every: 7,
        seed: 4,
        ..SweepConfig::default()
    };
    let straight = tempfile::tempdir().unwrap();
    let report = Sweep::open(straight.path(), &source, &cfg)
        .unwrap()
        .run(&source, |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!((report.resumed_from, report.stopped_at), (0, None));
    assert_eq!(report.tokens, 30 * 64);

    let stopped = tempfile::tempdir().unwrap();
    let mut calls = 0;
    let first = Sweep::open(stopped.path(), &source, &cfg)
        .unwrap()
        .run(&source, |p| {
            calls += 1;
            assert_eq!((p.step, p.steps), (calls, 30));
            if p.step == 10 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(first.stopped_at, Some(10));
    assert!(
        !stopped.path().join("k3/cfg.json").exists(),
        "no dictionary before the end"
    );
    let mut sweep = Sweep::open(stopped.path(), &source, &cfg).unwrap();
    assert_eq!(sweep.start_step(), 10);
    let resumed = sweep.run(&source, |_| ControlFlow::Continue(())).unwrap();
    assert_eq!((resumed.resumed_from, resumed.tokens), (10, 20 * 64));
    for (a, b) in report.dictionaries.iter().zip(&resumed.dictionaries) {
        assert_eq!(a.last, b.last, "same last step");
        let (a, b) = (
            saelens::load(&a.dir).unwrap(),
            saelens::load(&b.dir).unwrap(),
        );
        assert_eq!(a.w_dec, b.w_dec);
        assert_eq!(a.w_enc_t, b.w_enc_t);
    }
    let k6 = saelens::load(&straight.path().join("k6")).unwrap();
    assert_eq!(k6.cfg.activation, Activation::TopK { k: 6 });
    let history: Vec<glassbox_dictionary::train::StepStats> = serde_json::from_slice(
        &std::fs::read(
            straight
                .path()
                .join("k6")
                .join(glassbox_dictionary::sweep::HISTORY),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(history.len(), 30);
    let (start, end) = (history[0].fve, history[29].fve);
    assert!(
        end > 0.6 && end > start + 0.3,
        "k=6 learns the data: FVE {start} → {end}"
    );

    // Another setting on the same directory is refused, not silently mixed.
    let other = SweepConfig { lr: 5e-3, ..cfg };
    let err = Sweep::open(straight.path(), &source, &other)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("other training settings"), "{err}");
}
