//! Logit lens and direct logit attribution against TransformerLens (fixtures written by
//! scripts/reference/lens_fixtures.py), and the identity that the pieces add up to the logit.

use glassbox_testkit::fixture;
use std::collections::HashMap;

use glassbox_analysis::lens::{direct_logit_attribution, logit_lens, LogitTarget};
use glassbox_model::candle::Tensor;
use glassbox_model::{Device, Model};

struct Case {
    model: Model,
    reference: HashMap<String, Tensor>,
    lens: HashMap<String, Tensor>,
}

fn case(name: &str) -> Case {
    let dir = fixture(name);
    let load = |f: &str| {
        glassbox_model::candle::safetensors::load(dir.join(f), &Device::Cpu).expect("fixture")
    };
    Case {
        model: Model::load(&dir, &Device::Cpu).expect("fixture model"),
        reference: load("reference.safetensors"),
        lens: load("lens.safetensors"),
    }
}

impl Case {
    fn ids(&self, p: usize) -> Vec<u32> {
        let ids: Vec<i64> = self.reference[&format!("p{p}.ids")].to_vec1().unwrap();
        ids.iter().map(|&i| i as u32).collect()
    }

    fn vec(&self, key: &str) -> Vec<f32> {
        self.lens[key].flatten_all().unwrap().to_vec1().unwrap()
    }

    fn token(&self, key: &str) -> u32 {
        self.vec(key)[0] as u32
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn lens_matches_transformer_lens(name: &str) {
    let c = case(name);
    for p in 0..3 {
        let lens = logit_lens(&c.model, &c.ids(p)).unwrap();
        assert_eq!(lens.labels.len(), c.model.config.n_layers + 1);
        assert_eq!(lens.labels.last().map(String::as_str), Some("final_post"));
        let ours: Vec<f32> = lens.logits.flatten_all().unwrap().to_vec1().unwrap();
        let d = max_diff(&ours, &c.vec(&format!("p{p}.lens")));
        assert!(d < 2e-4, "{name} prompt {p}: logit lens differs by {d}");
        // The last read-out is the model's own output.
        let last: Vec<f32> = lens
            .logits
            .get(c.model.config.n_layers)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let logits: Vec<f32> = c.reference[&format!("p{p}.logits")]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(max_diff(&last, &logits) < 2e-4);
    }
}

fn dla_matches_transformer_lens(name: &str) {
    let c = case(name);
    let n_heads = c.model.config.n_heads;
    for p in 0..3 {
        let ids = c.ids(p);
        let (target, other) = (
            c.token(&format!("p{p}.target")),
            c.token(&format!("p{p}.other")),
        );
        for (kind, t) in [
            ("token", LogitTarget::Token(target)),
            ("diff", LogitTarget::Diff(target, other)),
        ] {
            let dla = direct_logit_attribution(&c.model, &ids, None, t).unwrap();
            assert!((dla.scale - c.vec(&format!("p{p}.scale"))[0]).abs() < 1e-4);
            let heads: Vec<f32> = dla
                .pieces
                .iter()
                .filter(|x| x.head.is_some())
                .map(|x| x.value)
                .collect();
            assert_eq!(heads.len(), c.model.config.n_layers * n_heads);
            let d = max_diff(&heads, &c.vec(&format!("p{p}.heads.{kind}")));
            assert!(
                d < 1e-4,
                "{name} prompt {p} {kind}: head attributions differ by {d}"
            );
            // decompose_resid: embeddings, then each layer's attn_out and mlp_out.
            let mut resid: Vec<f32> = dla
                .pieces
                .iter()
                .filter(|x| x.layer.is_none())
                .map(|x| x.value)
                .collect();
            for (attn, mlp) in dla.per_layer(c.model.config.n_layers) {
                resid.extend([attn, mlp]);
            }
            let d = max_diff(&resid, &c.vec(&format!("p{p}.resid.{kind}")));
            assert!(
                d < 1e-4,
                "{name} prompt {p} {kind}: layer attributions differ by {d}"
            );
            // The pieces and the constant add up to the model's own logit (difference).
            assert!(
                (dla.total() - dla.logit).abs() < 1e-3,
                "{name} prompt {p} {kind}: Σ pieces {} ≠ logit {}",
                dla.total(),
                dla.logit
            );
        }
    }
}

#[test]
fn gpt2_logit_lens_matches_transformer_lens() {
    lens_matches_transformer_lens("tiny-gpt2");
}

#[test]
fn llama_logit_lens_matches_transformer_lens() {
    lens_matches_transformer_lens("tiny-llama");
}

#[test]
fn gpt2_direct_logit_attribution_matches_transformer_lens() {
    dla_matches_transformer_lens("tiny-gpt2");
}

#[test]
fn llama_direct_logit_attribution_matches_transformer_lens() {
    dla_matches_transformer_lens("tiny-llama");
}

#[test]
fn encoders_and_bad_positions_are_refused_with_reasons() {
    let c = case("tiny-gpt2");
    let ids = c.ids(0);
    let err = direct_logit_attribution(&c.model, &ids, Some(99), LogitTarget::Token(1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("position 99"), "{err}");
    let err = direct_logit_attribution(&c.model, &ids, None, LogitTarget::Token(99_999))
        .unwrap_err()
        .to_string();
    assert!(err.contains("99999"), "{err}");
    let err = logit_lens(&c.model, &[]).unwrap_err().to_string();
    assert!(err.contains("no tokens"), "{err}");
    // An encoder has no unembedding: both analyses refuse it and say why.
    let dir = glassbox_model::registry::resolve("minilm")
        .expect("MiniLM must be installed: run `cargo glassbox setup`");
    let encoder = Model::load(&dir, &Device::Cpu).unwrap();
    let ids = encoder.tokenize("a cat", false).unwrap();
    for err in [
        logit_lens(&encoder, &ids).unwrap_err().to_string(),
        direct_logit_attribution(&encoder, &ids, None, LogitTarget::Token(1))
            .unwrap_err()
            .to_string(),
    ] {
        assert!(err.contains("encoder") && err.contains("bert"), "{err}");
    }
}

/// Gemma 3 normalises each attention output before adding it: the per-head pieces, scaled by
/// that norm at the position, still add up to the model's logit (the packaged model).
#[test]
fn gemma3_dla_pieces_add_up_to_the_logit_through_its_output_norms() {
    let path = glassbox_model::registry::resolve("gemma3")
        .expect("gemma3 must be installed: run `cargo glassbox setup`");
    let model = Model::load(&path, &Device::Cpu).unwrap();
    let ids = model.tokenize("The capital of France is", false).unwrap();
    let paris = model.tokenizer.encode_plain(" Paris").unwrap()[0];
    let the = model.tokenizer.encode_plain(" the").unwrap()[0];
    for target in [LogitTarget::Token(paris), LogitTarget::Diff(paris, the)] {
        let dla = direct_logit_attribution(&model, &ids, None, target).unwrap();
        let heads = dla.pieces.iter().filter(|p| p.head.is_some()).count();
        assert_eq!(heads, 18 * 4);
        assert!(
            (dla.total() - dla.logit).abs() < 1e-3 * dla.logit.abs().max(1.0),
            "Σ pieces {} ≠ logit {}",
            dla.total(),
            dla.logit
        );
    }
}
