//! Activation patching on MiniLM (cosine metric) and the tiny GPT-2 (logit difference):
//! patching a run with its own values changes nothing; at the first residual stream, patching
//! the one position where the prompts differ restores the clean run exactly and every other
//! position does nothing; patching everything reproduces the clean metric.

use std::path::Path;

use glassbox_analysis::patching::{patch_all, sweep, Component, Direction, Metric};
use glassbox_model::{registry, BlockHook, Device, HookPoint, Hooks, Model};

fn minilm() -> Model {
    let dir =
        registry::resolve("minilm").expect("MiniLM must be installed: run `cargo glassbox setup`");
    Model::load(&dir, &Device::Cpu).unwrap()
}

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
