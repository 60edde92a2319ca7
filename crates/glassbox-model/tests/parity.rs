//! Parity with Hugging Face `transformers`: the fixtures were written by
//! `scripts/reference/make_fixtures.py`; these tests recompute them in Rust.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use glassbox_model::{registry, BlockHook, Device, HookPoint, Hooks, Model, Tensor};

mod common;
use common::max_abs_diff;

const TOL: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn load_ref(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).expect("reference fixture")
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
    Model::load(&dir, &common::device()).unwrap()
}

struct MiniLmCase {
    text: String,
    ids: Vec<u32>,
    /// Positions kept in the fixture (every `stride`-th).
    stride: usize,
}

/// The fixture's texts with the rule of scripts/reference/make_fixtures.py: a text of more than
/// `long_threshold` tokens keeps every `long_stride`-th position.
fn minilm_cases(model: &Model) -> Vec<MiniLmCase> {
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
        .map(|t| {
            let text = t.as_str().unwrap().to_string();
            let ids = model.tokenize(&text, true).unwrap();
            let stride = if ids.len() > threshold { stride } else { 1 };
            MiniLmCase { text, ids, stride }
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
    let cases = minilm_cases(&model);
    assert!(cases.len() >= 5);
    assert!(
        cases.iter().any(|c| c.stride > 1),
        "one text is long enough to be strided"
    );
    for (i, case) in cases.iter().enumerate() {
        assert_eq!(
            case.ids,
            ids_of(&reference[&format!("text{i}.ids")]),
            "text{i} token ids"
        );
        let batch = model.batch_ids(std::slice::from_ref(&case.ids)).unwrap();
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
    let cases = minilm_cases(&model);
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
    // `sentence_embeddings` batches texts sorted by length and answers in the order given;
    // of the texts and their reverse, one is not sorted.
    let n = short.len();
    let reversed: Vec<&str> = short.iter().rev().copied().collect();
    let forward = model.sentence_embeddings(&short).unwrap();
    let backward = model.sentence_embeddings(&reversed).unwrap();
    for i in 0..n {
        let want = &reference[&format!("text{i}.pooled")];
        for (name, got) in [
            ("in order", &forward[i]),
            ("reversed", &backward[n - 1 - i]),
        ] {
            let got = Tensor::new(got.as_slice(), &Device::Cpu).unwrap();
            assert_close(&format!("sentence_embeddings {name}: text{i}"), &got, want);
        }
    }
}

fn decoder_parity(name: &str) {
    let dir = fixtures().join(name);
    let model = Model::load(&dir, &common::device()).unwrap();
    let reference = load_ref(&dir.join("reference.safetensors"));
    let n = model.config.n_layers;
    let mut points = vec![HookPoint::FinalNorm, HookPoint::Logits];
    // Every layer's residual stream and, inside the blocks, the attention (q, k, v, rotated q
    // and k where the model is rotary, scores, pattern, z) and the MLP (pre, gated linear
    // branch, post): parity of the whole computation, not only of its outputs.
    let rotary = name != "tiny-gpt2";
    for l in 0..n {
        let mut hooks = vec![
            BlockHook::ResidPre,
            BlockHook::AttnQ,
            BlockHook::AttnK,
            BlockHook::AttnV,
            BlockHook::AttnScores,
            BlockHook::AttnPattern,
            BlockHook::AttnZ,
            BlockHook::AttnOut,
            BlockHook::ResidMid,
            BlockHook::MlpPre,
            BlockHook::MlpPost,
            BlockHook::MlpOut,
            BlockHook::ResidPost,
        ];
        if rotary {
            hooks.extend([
                BlockHook::AttnRotQ,
                BlockHook::AttnRotK,
                BlockHook::MlpPreLinear,
            ]);
        }
        points.extend(hooks.into_iter().map(|h| HookPoint::block(l, h)));
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
            HookPoint::Block(l, h) => format!(
                "{}.{l}",
                match h {
                    BlockHook::ResidPre => "resid_pre",
                    BlockHook::AttnQ => "q",
                    BlockHook::AttnK => "k",
                    BlockHook::AttnV => "v",
                    BlockHook::AttnRotQ => "rot_q",
                    BlockHook::AttnRotK => "rot_k",
                    BlockHook::AttnScores => "scores",
                    BlockHook::AttnPattern => "pattern",
                    BlockHook::AttnZ => "z",
                    BlockHook::AttnOut => "attn_out",
                    BlockHook::ResidMid => "resid_mid",
                    BlockHook::MlpPre => "mlp_pre",
                    BlockHook::MlpPreLinear => "mlp_pre_linear",
                    BlockHook::MlpPost => "mlp_post",
                    BlockHook::MlpOut => "mlp_out",
                    BlockHook::ResidPost => "resid_post",
                    BlockHook::NormalizedResidPost => unreachable!("decoders are pre-norm"),
                }
            ),
            _ => unreachable!(),
        };
        for point in &points {
            let ours = hooks
                .cache()
                .get(point)
                .unwrap_or_else(|| panic!("{name}: {point} was not recorded"))
                .get(0)
                .unwrap();
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

/// A text longer than the context is cut as the `tokenizers` library's own truncation cuts it
/// (the text's first tokens, then `[SEP]`), and one that fits is left whole; both say whether
/// they fitted.
#[test]
fn a_cut_text_matches_the_tokenizers_truncation() {
    let model = minilm();
    let dir = registry::resolve("minilm").unwrap();
    let mut reference = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let max = model.config.max_positions;
    reference.with_padding(None);
    reference
        .with_truncation(Some(tokenizers::TruncationParams {
            max_length: max,
            ..Default::default()
        }))
        .unwrap();
    let long = "Clause 7 of the lease covers the tenant's minor repairs. ".repeat(80);
    for (text, fits) in [(long.as_str(), false), ("Short. Text.", true)] {
        let want = reference.encode(text, true).unwrap().get_ids().to_vec();
        let (ids, fitted) = model.tokenizer.encode_fitting(text, max).unwrap();
        assert_eq!(ids, want);
        assert_eq!(fitted, fits);
        assert_eq!(model.tokenize(text, true).unwrap(), want);
    }
    assert_eq!(model.tokenize(&long, true).unwrap().len(), max);
}
