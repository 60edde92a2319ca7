//! Activation patching on MiniLM (cosine metric) and the tiny GPT-2 (logit difference):
//! patching a run with its own values changes nothing; at the first residual stream, patching
//! the one position where the prompts differ restores the clean run exactly and every other
//! position does nothing; patching everything reproduces the clean metric. Attribution
//! patching is the first-order term (checked by finite differences) and ranks components as
//! activation patching does where the effect is large.

use glassbox_testkit::minilm;
use std::path::Path;

use glassbox_analysis::patching::{
    attribute, patch_all, sweep, Component, Direction, Method, Metric,
};
use glassbox_model::{BlockHook, Device, HookPoint, Hooks, Model};

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-4 * (1.0 + b.abs())
}

#[test]
fn patching_a_run_with_its_own_values_changes_nothing() {
    let model = minilm();
    let ids = model.tokenize("The cat sat on the mat.", false).unwrap();
    let r = sweep(
        &model,
        &ids,
        &ids,
        &Metric::Cosine,
        Direction::Denoise,
        &Component::ALL,
    )
    .unwrap();
    assert!(close(r.clean_metric, 1.0));
    for s in &r.sweeps {
        assert_eq!(s.metrics.len(), model.config.n_layers);
        let width = if s.component == Component::HeadZ {
            model.config.n_heads
        } else {
            ids.len()
        };
        for row in &s.metrics {
            assert_eq!(row.len(), width);
            assert!(
                row.iter().all(|&m| close(m, r.clean_metric)),
                "{:?}: {row:?}",
                s.component
            );
        }
    }
    // One pass each for the two runs, one per layer and component.
    assert_eq!(r.forward_passes, 2 + 4 * model.config.n_layers);
}

#[test]
fn the_differing_position_at_the_first_residual_carries_the_whole_effect() {
    let model = minilm();
    let clean = model.tokenize("The cat sat on the mat.", false).unwrap();
    let corrupt = model.tokenize("The dog sat on the mat.", false).unwrap();
    let differ = (0..clean.len()).find(|&i| clean[i] != corrupt[i]).unwrap();
    for direction in [Direction::Denoise, Direction::Noise] {
        let r = sweep(
            &model,
            &clean,
            &corrupt,
            &Metric::Cosine,
            direction,
            &[Component::ResidPre],
        )
        .unwrap();
        assert!(
            r.corrupt_metric < 0.99,
            "the prompts must differ: {}",
            r.corrupt_metric
        );
        let first = &r.sweeps[0].effects[0];
        for (p, e) in first.iter().enumerate() {
            let want = if p == differ { 1.0 } else { 0.0 };
            assert!((e - want).abs() < 1e-3, "{direction:?} position {p}: {e}");
        }
    }
    // Everything at once: hook_embed of the corrupted run replaced by the clean one.
    let point = HookPoint::Block(0, BlockHook::ResidPre);
    let mut hooks = Hooks::none().record(point);
    let batch = model.batch_ids(std::slice::from_ref(&clean)).unwrap();
    let out = model.forward(&batch, &mut hooks, None).unwrap();
    let clean_embedding = model
        .sentence_embedding(&batch, &out.hidden)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let from = hooks.cache().get(&point).unwrap().clone();
    let m = patch_all(
        &model,
        &corrupt,
        point,
        &from,
        &Metric::Cosine,
        &clean_embedding,
    )
    .unwrap();
    assert!(close(m, 1.0), "{m}");
}

#[test]
fn decoders_patch_by_logit_difference_and_metrics_are_checked() {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../glassbox-model/tests/fixtures/tiny-gpt2");
    let model = Model::load(&dir, &Device::Cpu).unwrap();
    let metric = Metric::parse("logit-diff a b", &model).unwrap();
    let clean = model.tokenize("the cat", false).unwrap();
    // A corrupted prompt of the same length that differs in one token.
    let corrupt = ["the car", "the hat", "the cot", "the bat"]
        .iter()
        .map(|t| model.tokenize(t, false).unwrap())
        .find(|c| {
            c.len() == clean.len() && c.iter().zip(&clean).filter(|(a, b)| a != b).count() == 1
        })
        .expect("a one-token corruption");
    let differ = (0..clean.len()).find(|&i| clean[i] != corrupt[i]).unwrap();
    let r = sweep(
        &model,
        &clean,
        &corrupt,
        &metric,
        Direction::Denoise,
        &Component::ALL,
    )
    .unwrap();
    assert_ne!(r.clean_metric, r.corrupt_metric);
    let first = &r.sweeps[0].effects[0];
    for (p, e) in first.iter().enumerate() {
        let want = if p == differ { 1.0 } else { 0.0 };
        assert!((e - want).abs() < 1e-3, "position {p}: {e}");
    }
    assert_eq!(r.sweeps[3].effects[0].len(), model.config.n_heads);

    let err = Metric::parse("logit-diff a", &model)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown metric"), "{err}");
    let err = Metric::parse("logit-diff cat b", &minilm())
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs a decoder"), "{err}");
    let short = model.tokenize("the", false).unwrap();
    let err = sweep(
        &model,
        &clean,
        &short,
        &metric,
        Direction::Denoise,
        &Component::ALL,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("same number of tokens"), "{err}");
}

/// Ranks of `v` (0 = smallest), for a rank correlation.
fn ranks(v: &[f32]) -> Vec<f32> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0f32; v.len()];
    for (rank, i) in order.into_iter().enumerate() {
        r[i] = rank as f32;
    }
    r
}

fn pearson(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len() as f32;
    let (ma, mb) = (a.iter().sum::<f32>() / n, b.iter().sum::<f32>() / n);
    let cov: f32 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f32 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f32 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

#[test]
fn attribution_patching_ranks_components_like_activation_patching() {
    let model = minilm();
    let clean = model.tokenize("The cat sat on the mat.", false).unwrap();
    let corrupt = model.tokenize("The dog sat on the mat.", false).unwrap();
    let args = (&Metric::Cosine, Direction::Denoise, &Component::ALL);
    let exact = sweep(&model, &clean, &corrupt, args.0, args.1, args.2).unwrap();
    let approx = attribute(&model, &clean, &corrupt, args.0, args.1, args.2).unwrap();
    assert_eq!(approx.method, Method::Attribution);
    assert_eq!(approx.forward_passes, 3);
    assert!(close(approx.clean_metric, exact.clean_metric));
    let flat = |r: &glassbox_analysis::patching::Report| -> Vec<f32> {
        r.sweeps
            .iter()
            .flat_map(|s| s.effects.iter().flatten().copied())
            .collect()
    };
    let (e, a) = (flat(&exact), flat(&approx));
    let rho = pearson(&ranks(&e), &ranks(&a));
    assert!(rho > 0.8, "rank correlation {rho}");
    // The largest head effect is the same head, and in every layer the residual stream
    // matters most at the position that differs.
    let top = |r: &glassbox_analysis::patching::Report| {
        let heads = &r.sweeps[3].effects;
        let mut best = (0, 0, f32::MIN);
        for (l, row) in heads.iter().enumerate() {
            for (h, &v) in row.iter().enumerate() {
                if v > best.2 {
                    best = (l, h, v);
                }
            }
        }
        (best.0, best.1)
    };
    assert_eq!(top(&approx), top(&exact));
    let differ = (0..clean.len()).find(|&i| clean[i] != corrupt[i]).unwrap();
    for row in &approx.sweeps[0].effects {
        let argmax = (0..row.len()).max_by(|&i, &j| row[i].total_cmp(&row[j]));
        assert_eq!(argmax, Some(differ), "{row:?}");
    }
}

#[test]
fn attribution_is_the_first_order_term_of_the_patch() {
    let model = minilm();
    let clean = model.tokenize("The cat sat on the mat.", false).unwrap();
    let corrupt = model.tokenize("The dog sat on the mat.", false).unwrap();
    let approx = attribute(
        &model,
        &clean,
        &corrupt,
        &Metric::Cosine,
        Direction::Denoise,
        &[Component::HeadZ, Component::MlpOut],
    )
    .unwrap();
    let span = approx.clean_metric - approx.corrupt_metric;
    let record = |ids: &[u32], point: HookPoint| {
        let batch = model.batch_ids(&[ids.to_vec()]).unwrap();
        let mut hooks = Hooks::none().record(point);
        let out = model.forward(&batch, &mut hooks, None).unwrap();
        (hooks.cache().get(&point).unwrap().clone(), out.hidden)
    };
    let (_, clean_hidden) = record(&clean, HookPoint::Embed);
    let clean_batch = model.batch_ids(std::slice::from_ref(&clean)).unwrap();
    let clean_emb = model
        .sentence_embedding(&clean_batch, &clean_hidden)
        .unwrap()
        .flatten_all()
        .unwrap();
    // Cosine with the clean embedding after moving `point` by ε·(clean − corrupt) where
    // `mask` is 1.
    let metric_at = |point: HookPoint, mask: &glassbox_model::candle::Tensor, eps: f64| {
        let (from, _) = record(&clean, point);
        let batch = model.batch_ids(std::slice::from_ref(&corrupt)).unwrap();
        let mut hooks =
            Hooks::none().replace(point, |x| x.add(&((from.sub(x)?.mul(mask)?) * eps)?));
        let out = model.forward(&batch, &mut hooks, None).unwrap();
        let e = model.sentence_embedding(&batch, &out.hidden).unwrap();
        e.flatten_all()
            .unwrap()
            .mul(&clean_emb)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let eps = 0.05;
    // Layer 5, head 11 (z: [1, pos, head, d_head]) and layer 4's MLP at the differing position.
    let (t, heads, dh, d) = (
        clean.len(),
        model.config.n_heads,
        model.config.d_head,
        model.config.d_model,
    );
    let differ = (0..t).find(|&i| clean[i] != corrupt[i]).unwrap();
    let dev = &Device::Cpu;
    let mut head_mask = vec![0f32; t * heads * dh];
    for p in 0..t {
        for k in 0..dh {
            head_mask[(p * heads + 11) * dh + k] = 1.0;
        }
    }
    let head_mask =
        glassbox_model::candle::Tensor::from_vec(head_mask, (1, t, heads, dh), dev).unwrap();
    let mut mlp_mask = vec![0f32; t * d];
    mlp_mask[differ * d..(differ + 1) * d].fill(1.0);
    let mlp_mask = glassbox_model::candle::Tensor::from_vec(mlp_mask, (1, t, d), dev).unwrap();
    for (point, mask, estimate) in [
        (
            HookPoint::block(5, BlockHook::AttnZ),
            &head_mask,
            approx.sweeps[0].effects[5][11] * span,
        ),
        (
            HookPoint::block(4, BlockHook::MlpOut),
            &mlp_mask,
            approx.sweeps[1].effects[4][differ] * span,
        ),
    ] {
        // The comparison is only meaningful for an effect well above the absolute tolerance.
        assert!(
            estimate.abs() > 0.05 * span.abs() && estimate.abs() > 5e-3,
            "{point}: effect {estimate} of {span} too small to test"
        );
        let slope =
            (metric_at(point, mask, eps) - metric_at(point, mask, -eps)) / (2.0 * eps as f32);
        assert!(
            (slope - estimate).abs() <= 0.02 * estimate.abs() + 1e-4,
            "{point}: finite difference {slope} vs gradient {estimate}"
        );
    }
}
