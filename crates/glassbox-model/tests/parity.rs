//! Parity with Hugging Face `transformers`: the fixtures were written by
//! `scripts/reference/make_fixtures.py`; these tests recompute them in Rust.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use glassbox_model::{registry, BlockHook, Device, HookPoint, Hooks, Model, Tensor};

const TOL: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn load_ref(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).expect("reference fixture")
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn assert_close(what: &str, a: &Tensor, b: &Tensor) {
    let d = max_abs_diff(a, b);
    assert!(d <= TOL, "{what}: max abs error {d:e} > {TOL:e}");
}

fn ids_of(t: &Tensor) -> Vec<u32> {
    t.to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|v| v as u32)
        .collect()
}

fn minilm() -> Model {
    let dir =
        registry::resolve("minilm").expect("MiniLM must be installed: run `cargo glassbox setup`");
    Model::load(&dir, &Device::Cpu).unwrap()
}

struct MiniLmCase {
    text: String,
    /// Positions kept in the fixture (every `stride`-th).
    stride: usize,
}

fn minilm_cases() -> Vec<MiniLmCase> {
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("minilm_texts.json")).unwrap(),
    )
    .unwrap();
    let (stride, threshold) = (
        meta["long_stride"].as_u64().unwrap() as usize,
        meta["long_threshold"].as_u64().unwrap() as usize,
    );
    meta["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .map(|text| MiniLmCase { text, stride: 1 })
        .map(|mut c| {
            c.stride = if c.text.len() > 4 * threshold {
                stride
            } else {
                1
            };
            c
        })
        .collect()
}

fn every_nth(t: &Tensor, n: usize) -> Tensor {
    let idx: Vec<u32> = (0..t.dims()[0] as u32).step_by(n).collect();
    t.index_select(&Tensor::new(idx.as_slice(), t.device()).unwrap(), 0)
        .unwrap()
}

/// HF's `hidden_states` of a BERT model are each block's input and the last block's output.
fn bert_hidden_points(layers: usize) -> Vec<HookPoint> {
    let mut points: Vec<_> = (0..layers)
        .map(|l| HookPoint::block(l, BlockHook::ResidPre))
        .collect();
    points.push(HookPoint::block(layers - 1, BlockHook::NormalizedResidPost));
    points
}

#[test]
fn minilm_hidden_states_and_embeddings_match_transformers() {
    let model = minilm();
    let reference = load_ref(&fixtures().join("minilm_reference.safetensors"));
    let points = bert_hidden_points(model.config.n_layers);
    let cases = minilm_cases();
    assert!(cases.len() >= 5);
    for (i, case) in cases.iter().enumerate() {
        let ids = model.tokenize(&case.text, true).unwrap();
        assert_eq!(
            ids,
            ids_of(&reference[&format!("text{i}.ids")]),
            "text{i} token ids"
        );
        let batch = model.batch_ids(&[ids]).unwrap();
        let mut hooks = Hooks::none().record_all(points.clone());
        let out = model.forward(&batch, &mut hooks, None).unwrap();
        for (layer, p) in points.iter().enumerate() {
            let ours = every_nth(&hooks.cache().get(p).unwrap().get(0).unwrap(), case.stride);
            assert_close(
                &format!("text{i} hidden {layer} ({p})"),
                &ours,
                &reference[&format!("text{i}.hidden.{layer}")],
            );
        }
        let pooled = model
            .sentence_embedding(&batch, &out.hidden)
            .unwrap()
            .get(0)
            .unwrap();
        assert_close(
            &format!("text{i} pooled"),
            &pooled,
            &reference[&format!("text{i}.pooled")],
        );
    }
}

#[test]
fn minilm_padded_batch_matches_single_texts() {
    let model = minilm();
    let reference = load_ref(&fixtures().join("minilm_reference.safetensors"));
    let cases = minilm_cases();
    let short: Vec<&str> = cases
        .iter()
        .filter(|c| c.stride == 1)
        .map(|c| c.text.as_str())
        .collect();
    let batch = model.batch(&short, false).unwrap();
    assert!(
        batch.key_mask().is_some(),
        "texts of different lengths must be padded"
    );
    let out = model.forward(&batch, &mut Hooks::none(), None).unwrap();
    let pooled = model.sentence_embedding(&batch, &out.hidden).unwrap();
    for (i, _) in short.iter().enumerate() {
        assert_close(
            &format!("batched text{i} pooled"),
            &pooled.get(i).unwrap(),
            &reference[&format!("text{i}.pooled")],
        );
    }
}

fn decoder_parity(name: &str) {
    let dir = fixtures().join(name);
    let model = Model::load(&dir, &Device::Cpu).unwrap();
    let reference = load_ref(&dir.join("reference.safetensors"));
    let n = model.config.n_layers;
    let mut points = vec![
        HookPoint::FinalNorm,
        HookPoint::Logits,
        HookPoint::block(0, BlockHook::AttnPattern),
    ];
    for l in 0..n {
        for h in [
            BlockHook::ResidPre,
            BlockHook::AttnOut,
            BlockHook::ResidMid,
            BlockHook::MlpOut,
            BlockHook::ResidPost,
        ] {
            points.push(HookPoint::block(l, h));
        }
    }
    let gens: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("generate.json")).unwrap()).unwrap();
    for (p, g) in gens.as_array().unwrap().iter().enumerate() {
        let ids = model
            .tokenize(g["prompt"].as_str().unwrap(), false)
            .unwrap();
        assert_eq!(
            ids,
            ids_of(&reference[&format!("p{p}.ids")]),
            "{name} prompt {p} ids"
        );
        let batch = model.batch_ids(std::slice::from_ref(&ids)).unwrap();
        let mut hooks = Hooks::none().record_all(points.clone());
        model.forward(&batch, &mut hooks, None).unwrap();
        let key = |p: &HookPoint| match p {
            HookPoint::FinalNorm => "final_norm".to_string(),
            HookPoint::Logits => "logits".to_string(),
            HookPoint::Block(l, BlockHook::AttnPattern) => format!("pattern.{l}"),
            HookPoint::Block(l, h) => format!(
                "{}.{l}",
                match h {
                    BlockHook::ResidPre => "resid_pre",
                    BlockHook::AttnOut => "attn_out",
                    BlockHook::ResidMid => "resid_mid",
                    BlockHook::MlpOut => "mlp_out",
                    _ => "resid_post",
                }
            ),
            _ => unreachable!(),
        };
        for point in &points {
            let ours = hooks.cache().get(point).unwrap().get(0).unwrap();
            assert_close(
                &format!("{name} prompt {p} {point}"),
                &ours,
                &reference[&format!("p{p}.{}", key(point))],
            );
        }
        let expected: Vec<u32> = g["generated_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let generated = model.generate_greedy(&ids, expected.len()).unwrap();
        assert_eq!(
            generated, expected,
            "{name} prompt {p}: greedy generation with KV cache"
        );
    }
}

#[test]
fn gpt2_matches_transformers() {
    decoder_parity("tiny-gpt2");
}

#[test]
fn llama_matches_transformers() {
    decoder_parity("tiny-llama");
}

#[test]
fn qwen2_matches_transformers() {
    decoder_parity("tiny-qwen2");
}
