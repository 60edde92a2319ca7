//! The hand-written backward pass against finite differences, learning on data with a known
//! sparse structure, and bitwise-identical resumption from a checkpoint.

use glassbox_dictionary::train::{TrainConfig, Trainer};
use glassbox_dictionary::{Activation, DictConfig, Sae};
use rand::{Rng, SeedableRng};

fn cfg(activation: Activation, d_in: usize, d_sae: usize) -> DictConfig {
    DictConfig {
        activation,
        d_in,
        d_sae,
        model: "test".into(),
        hook: "test".into(),
        input_scale: 1.0,
    }
}

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
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut dirs = gaussian(&mut rng, m * d);
    for r in dirs.chunks_mut(d) {
        let norm = r.iter().map(|v| v * v).sum::<f32>().sqrt();
        r.iter_mut().for_each(|v| *v /= norm);
    }
    let mean: Vec<f32> = gaussian(&mut rng, d).into_iter().map(|v| v * 0.5).collect();
    let mut x = Vec::with_capacity(n * d);
    for _ in 0..n {
        let mut row = mean.clone();
        for _ in 0..k {
            let j = rng.random_range(0..m);
            let w: f32 = rng.random_range(0.5..2.0);
            row.iter_mut()
                .zip(&dirs[j * d..][..d])
                .for_each(|(r, v)| *r += w * v);
        }
        x.extend(row);
    }
    x
}

/// The training loss recomputed from scratch (main term + L1), in f64.
fn loss(sae: &Sae, x: &[f32]) -> f64 {
    let n = x.len() / sae.d_in();
    let codes = sae.select(&sae.pre_activations(x), true);
    let xhat = sae.decode(&codes);
    let mse: f64 = xhat
        .iter()
        .zip(x)
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

fn check_gradients(activation: Activation) {
    let (d_in, d_sae) = (8, 24);
    let x = sparse_data(16, d_in, 12, 3, 5);
    let mut sae = Sae::init(cfg(activation, d_in, d_sae), 3).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    sae.b_enc = (0..d_sae).map(|_| rng.random_range(-0.3..0.3)).collect();
    sae.b_dec = (0..d_in).map(|_| rng.random_range(-0.3..0.3)).collect();
    let trainer = Trainer::new(sae.clone(), tc(10, 0)).unwrap();
    let grads = trainer.gradients(&x).unwrap();
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
                s.select(&s.pre_activations(&x), true)
                    .rows
                    .iter()
                    .map(|r| r.iter().map(|e| e.0).collect::<Vec<_>>())
                    .collect::<Vec<_>>()
            };
            if same(&plus) != same(&sae) || same(&minus) != same(&sae) {
                continue; // the selection changed: not differentiable here
            }
            let numeric = (loss(&plus, &x) - loss(&minus, &x)) / (2.0 * eps as f64);
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
    check_gradients(Activation::TopK { k: 4 });
}

#[test]
fn relu_l1_gradients_match_finite_differences() {
    check_gradients(Activation::Relu { l1: 0.05 });
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
    t.initialise_from(&x[..64 * d_in * 10]).unwrap();
    let first = t.step(&x[..64 * d_in]).unwrap();
    let mut last = first;
    for b in x.chunks(64 * d_in).skip(1) {
        last = t.step(b).unwrap();
    }
    assert!(
        last.fve > 0.9 && last.fve > first.fve + 0.3,
        "FVE {} → {}",
        first.fve,
        last.fve
    );
    assert!(last.l0 <= 8.0);
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
        t.initialise_from(&x).unwrap();
        t
    };
    let mut straight = make();
    for b in x.chunks(64 * d_in) {
        straight.step(b).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt.safetensors");
    let mut first = make();
    for b in x.chunks(64 * d_in).take(9) {
        first.step(b).unwrap();
    }
    first.save_checkpoint(&ckpt).unwrap();
    drop(first);
    let mut resumed = Trainer::load_checkpoint(&ckpt, &tc(20, 8)).unwrap();
    assert_eq!(resumed.step, 9);
    for b in x.chunks(64 * d_in).skip(9) {
        resumed.step(b).unwrap();
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
    ] {
        let mut t = Trainer::new(
            Sae::init(cfg(activation, d_in, d_sae), 4).unwrap(),
            tc(10, 8),
        )
        .unwrap();
        t.initialise_from(&x).unwrap();
        for b in x.chunks(64 * d_in) {
            t.step(b).unwrap();
        }
        assert_ne!(t.sae.cfg.input_scale, 1.0);
        let dir = tempfile::tempdir().unwrap();
        saelens::save(&t.sae, dir.path(), serde_json::json!({"note": "test"})).unwrap();
        let loaded = saelens::load(dir.path()).unwrap();
        assert_eq!(loaded.cfg.input_scale, 1.0);
        let probe = &x[..8 * d_in];
        let (codes_a, xhat_a) = t.sae.reconstruct(probe).unwrap();
        let (codes_b, xhat_b) = loaded.reconstruct(probe).unwrap();
        for (ra, rb) in codes_a.rows.iter().zip(&codes_b.rows) {
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
