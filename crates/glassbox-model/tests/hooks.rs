//! Hook semantics on real checkpoints: reading changes nothing, replacing changes what it
//! should, the fused and materialised attention paths agree, the KV cache is exact.

use std::path::Path;

use glassbox_model::{BlockHook, HookPoint, Hooks, Model, ModelError, Tensor};

mod common;
use common::max_abs_diff;

fn tiny(name: &str) -> Model {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    Model::load(&dir, &common::device()).unwrap()
}

fn logits(model: &Model, text: &str, hooks: &mut Hooks) -> Tensor {
    let batch = model.batch(&[text], false).unwrap();
    model.forward(&batch, hooks, None).unwrap().logits.unwrap()
}

const TEXT: &str = "The quick brown fox jumps over the lazy dog";

#[test]
fn fused_and_materialised_attention_agree() {
    for name in ["tiny-gpt2", "tiny-llama", "tiny-qwen2"] {
        let model = tiny(name);
        let layers = 0..model.config.n_layers;
        let patterns: Vec<_> = layers
            .clone()
            .map(|l| HookPoint::block(l, BlockHook::AttnPattern))
            .collect();
        let scores: Vec<_> = layers
            .map(|l| HookPoint::block(l, BlockHook::AttnScores))
            .collect();
        // Recording reads copies out of the fused kernel.
        let mut fused = Hooks::none().record_all(patterns.iter().chain(&scores).copied());
        let plain = logits(&model, TEXT, &mut fused);
        // An (identity) replacement makes every layer build scores and pattern as tensors.
        let mut materialised = Hooks::none().record_all(patterns.iter().chain(&scores).copied());
        for p in &scores {
            materialised = materialised.replace(*p, |t| Ok(t.clone()));
        }
        let slow = logits(&model, TEXT, &mut materialised);
        assert!(max_abs_diff(&plain, &slow) < 1e-5, "{name}: logits");
        for p in patterns.iter().chain(&scores) {
            let (a, b) = (
                fused.cache().get(p).unwrap(),
                materialised.cache().get(p).unwrap(),
            );
            let d = max_abs_diff(a, b);
            assert!(d < 1e-4, "{name} {p}: {d}");
        }
        // Each pattern row is a distribution over visible (earlier) keys.
        let p = fused.cache().get(&patterns[1]).unwrap().get(0).unwrap();
        let sums = p
            .sum(2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5));
        let upper = p
            .get(0)
            .unwrap()
            .get(0)
            .unwrap()
            .narrow(0, 1, p.dims()[2] - 1)
            .unwrap();
        assert_eq!(
            upper.sum_all().unwrap().to_scalar::<f32>().unwrap(),
            0.0,
            "{name}: causal mask"
        );
    }
}

#[test]
fn recording_changes_nothing_and_patching_the_clean_value_is_a_no_op() {
    let model = tiny("tiny-llama");
    let plain = logits(&model, TEXT, &mut Hooks::none());
    let all = model.hook_points();
    let mut rec = Hooks::none().record_all(all.iter().copied());
    let recorded = logits(&model, TEXT, &mut rec);
    assert_eq!(rec.cache().len(), all.len(), "every hook point fires");
    assert!(max_abs_diff(&plain, &recorded) < 1e-5);

    let point = HookPoint::block(1, BlockHook::ResidMid);
    let clean = rec.cache().get(&point).unwrap().clone();
    let patched = logits(&model, TEXT, &mut Hooks::none().patch(point, clean));
    assert!(max_abs_diff(&plain, &patched) < 1e-5);
}

#[test]
fn replacing_an_activation_changes_the_output() {
    let model = tiny("tiny-gpt2");
    let plain = logits(&model, TEXT, &mut Hooks::none());
    let ablate = HookPoint::block(1, BlockHook::MlpOut);
    let mut hooks = Hooks::none()
        .replace(ablate, |t| t.zeros_like())
        .record(ablate);
    let ablated = logits(&model, TEXT, &mut hooks);
    assert!(
        max_abs_diff(&plain, &ablated) > 1e-2,
        "zero-ablating an MLP must move the logits"
    );
    // Recording at a replaced point sees the replacement.
    let seen = hooks.cache().get(&ablate).unwrap();
    assert_eq!(
        seen.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );

    // Ablating one head's z through a closure.
    let z = HookPoint::block(0, BlockHook::AttnZ);
    let head_ablated = logits(
        &model,
        TEXT,
        &mut Hooks::none().replace(z, |t| {
            let mask = Tensor::new(&[0f32, 1.0, 1.0, 1.0], t.device())?.reshape((1, 1, 4, 1))?;
            t.broadcast_mul(&mask)
        }),
    );
    assert!(max_abs_diff(&plain, &head_ablated) > 1e-3);
}

#[test]
fn replacement_of_the_wrong_shape_is_an_error() {
    let model = tiny("tiny-gpt2");
    let batch = model.batch(&[TEXT], false).unwrap();
    let point = HookPoint::block(0, BlockHook::ResidPre);
    let mut hooks = Hooks::none().replace(point, |t| t.narrow(2, 0, 8));
    match model.forward(&batch, &mut hooks, None) {
        Err(ModelError::HookShape { hook, .. }) => assert_eq!(hook, "blocks.0.hook_resid_pre"),
        other => panic!("expected a shape error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn kv_cache_gives_the_same_logits_as_a_full_pass() {
    for name in ["tiny-gpt2", "tiny-llama", "tiny-qwen2"] {
        let model = tiny(name);
        let ids = model.tokenize(TEXT, false).unwrap();
        let full = model
            .forward(
                &model.batch_ids(std::slice::from_ref(&ids)).unwrap(),
                &mut Hooks::none(),
                None,
            )
            .unwrap();
        let full = full.logits.unwrap().get(0).unwrap();
        let mut cache = model.new_cache();
        let split = 4;
        let head = model
            .forward(
                &model.batch_ids(&[ids[..split].to_vec()]).unwrap(),
                &mut Hooks::none(),
                Some(&mut cache),
            )
            .unwrap();
        assert!(
            max_abs_diff(
                &head.logits.unwrap().get(0).unwrap(),
                &full.narrow(0, 0, split).unwrap()
            ) < 1e-5
        );
        for (i, &id) in ids.iter().enumerate().skip(split) {
            let step = model
                .forward(
                    &model.batch_ids(&[vec![id]]).unwrap(),
                    &mut Hooks::none(),
                    Some(&mut cache),
                )
                .unwrap();
            let d = max_abs_diff(
                &step.logits.unwrap().get(0).unwrap().get(0).unwrap(),
                &full.get(i).unwrap(),
            );
            assert!(d < 1e-4, "{name} position {i}: {d}");
        }
        assert_eq!(cache.len(), ids.len());
    }
}

#[test]
fn hooks_are_scoped_to_one_call() {
    let model = tiny("tiny-gpt2");
    let point = HookPoint::block(0, BlockHook::ResidPost);
    let mut hooks = Hooks::none().record(point);
    logits(&model, TEXT, &mut hooks);
    let first = hooks.cache().get(&point).unwrap().clone();
    // The same Hooks for a second call: its cache then holds that call's activation, not the
    // first call's, and nothing else.
    logits(&model, "another text", &mut hooks);
    let mut fresh = Hooks::none().record(point);
    logits(&model, "another text", &mut fresh);
    let reused = hooks.cache().get(&point).unwrap();
    assert_eq!(hooks.cache().len(), 1);
    assert_ne!(reused.dims(), first.dims(), "the texts differ in length");
    assert_eq!(
        max_abs_diff(reused, fresh.cache().get(&point).unwrap()),
        0.0
    );
    // A Hooks that records nothing caches nothing.
    let mut none = Hooks::none();
    logits(&model, "another text", &mut none);
    assert!(none.cache().is_empty());
}

#[test]
fn stopping_at_a_hook_keeps_its_activations() {
    let model = tiny("tiny-llama");
    let batch = model.batch(&[TEXT], false).unwrap();
    for point in [
        HookPoint::block(0, BlockHook::ResidPost),
        HookPoint::block(1, BlockHook::ResidPre),
    ] {
        let mut full = Hooks::none().record(point);
        model.forward(&batch, &mut full, None).unwrap();
        let mut early = Hooks::none().record(point).stop_at(point);
        let out = model.forward(&batch, &mut early, None).unwrap();
        assert!(out.logits.is_none());
        let recorded = early.cache().get(&point).unwrap();
        assert_eq!(
            max_abs_diff(recorded, full.cache().get(&point).unwrap()),
            0.0,
            "{point}"
        );
        assert_eq!(max_abs_diff(&out.hidden, recorded), 0.0);
    }
}

/// Scales the activation at every point it is attached to and remembers the points it saw.
struct Scale {
    factor: f64,
    seen: Vec<HookPoint>,
}

impl glassbox_model::Intervention for Scale {
    fn apply(
        &mut self,
        point: HookPoint,
        activation: &Tensor,
    ) -> Result<Tensor, glassbox_model::InterventionError> {
        self.seen.push(point);
        Ok((activation * self.factor)?)
    }
}

/// One intervention at several points is called at each, in forward order, and its state is
/// read after the pass (how a request's monitors keep their firings, without a `RefCell`).
#[test]
fn one_intervention_serves_several_points_and_is_read_afterwards() {
    let model = tiny("tiny-gpt2");
    let points = [
        HookPoint::block(1, BlockHook::MlpOut),
        HookPoint::block(0, BlockHook::AttnOut),
    ];
    let mut scale = Scale {
        factor: 1.0,
        seen: Vec::new(),
    };
    let plain = logits(&model, TEXT, &mut Hooks::none());
    let same = logits(
        &model,
        TEXT,
        &mut Hooks::none().intervene_at(points, &mut scale),
    );
    assert_eq!(scale.seen, vec![points[1], points[0]], "forward order");
    assert!(max_abs_diff(&plain, &same) < 1e-5);
    // Zeroing both is zeroing each in one pass.
    scale.factor = 0.0;
    let both = logits(
        &model,
        TEXT,
        &mut Hooks::none().intervene_at(points, &mut scale),
    );
    let by_closures = logits(
        &model,
        TEXT,
        &mut Hooks::none()
            .replace(points[0], |t| t.zeros_like())
            .replace(points[1], |t| t.zeros_like()),
    );
    assert!(max_abs_diff(&plain, &both) > 1e-2);
    assert!(max_abs_diff(&by_closures, &both) < 1e-6);
    assert_eq!(scale.seen.len(), 4);
}
