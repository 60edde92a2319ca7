//! Fuzz targets for every parser of untrusted input, as plain functions: `fuzz/` runs them under
//! libFuzzer (`scripts/fuzz`), and `tests/replay.rs` replays their corpora and every past
//! crash on stable Rust in the test suite.
//!
//! A target may return early on any error — errors are the right answer to bad input. What it
//! must never do is panic, hang, or allocate without bound; libFuzzer reports each of those.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use glassbox_model::chat::{ChatTemplate, Message};
use glassbox_model::config::ModelConfig;
use glassbox_model::gguf::GgufFile;
use glassbox_model::tokenizer::TextTokenizer as Tokenizer;
use glassbox_model::weights::WeightFile;
use glassbox_model::Device;

mod http;
pub mod seeds;

/// A fuzz target: any bytes in, no panic out.
pub type Target = fn(&[u8]);

/// Each target by name (the names of `fuzz/fuzz_targets/*.rs` and of the corpus folders).
pub const TARGETS: &[(&str, Target)] = &[
    ("safetensors", safetensors),
    ("gguf", gguf),
    ("model_config", model_config),
    ("tokenizer_json", tokenizer_json),
    ("chat_template", chat_template),
    ("saelens_cfg", saelens_cfg),
    ("store_manifest", store_manifest),
    ("deploy_toml", deploy_toml),
    ("rule", rule),
    ("taxonomy", taxonomy),
    ("corpus_jsonl", corpus_jsonl),
    ("corpus_parquet", corpus_parquet),
    ("http", http::request),
];

/// The libFuzzer harness folder: `fuzz_targets/`, `seeds/`, `corpus/`, `regressions/`.
pub fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The tiny GPT-2 checkpoint of the model tests: a real config, tokenizer and weights.
pub fn tiny_gpt2() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../glassbox-model/tests/fixtures/tiny-gpt2")
}

/// A scratch directory of this process (on tmpfs where there is one: targets that take a path
/// write their input there).
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("glassbox-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        dir
    })
}

/// Writes `data` to `name` in the scratch directory.
fn file(name: &str, data: &[u8]) -> PathBuf {
    let path = scratch().join(name);
    std::fs::write(&path, data).expect("the scratch directory is writable");
    path
}

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// A safetensors checkpoint: the header and tensor table are validated, then every tensor is
/// read with its own shape and with a wrong one.
pub fn safetensors(data: &[u8]) {
    let path = Path::new("fuzz.safetensors");
    let Ok(file) = WeightFile::from_bytes(path, data.to_vec()) else {
        return;
    };
    let cfg = gpt2_config();
    let weights = file.view(&Device::Cpu, cfg);
    let Ok(st) = safetensors::SafeTensors::deserialize(data) else {
        unreachable!("WeightFile accepted what safetensors refuses");
    };
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let _ = weights.get(&name, &shape);
        let mut wrong = shape.clone();
        wrong.push(1);
        assert!(
            weights.get(&name, &wrong).is_err(),
            "a wrong shape was accepted"
        );
    }
    let _ = weights.get("absent", &[1]);
}

fn gpt2_config() -> &'static ModelConfig {
    static CFG: OnceLock<ModelConfig> = OnceLock::new();
    CFG.get_or_init(|| {
        ModelConfig::from_file(&tiny_gpt2().join("config.json")).expect("the fixture's config")
    })
}

/// A GGUF file: header, metadata and tensor table; the model config, tokenizer and chat
/// template derived from its metadata; every tensor dequantised.
pub fn gguf(data: &[u8]) {
    let path = file("fuzz.gguf", data);
    let Ok(g) = GgufFile::open(&path) else {
        return;
    };
    for name in g.tensors.keys() {
        let _ = g.dequantize(name);
        let _ = g.quantized(name, &Device::Cpu);
    }
    if let Ok(json) = glassbox_model::gguf_model::config_json(&g) {
        if let Ok(cfg) = ModelConfig::from_json(&json, &path) {
            if let Ok(tok) = glassbox_model::gguf_model::tokenizer_json(&g) {
                if let Ok(t) = Tokenizer::from_json(&tok, &path, cfg.vocab_size) {
                    let _ = t.encode_plain("Hello, world! <|im_start|>");
                }
            }
        }
    }
    if let Some(template) = g.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
        render(template);
    }
}

/// A model's `config.json`.
pub fn model_config(data: &[u8]) {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(cfg) = ModelConfig::from_json(&json, Path::new("config.json")) {
        for layer in 0..cfg.n_layers.min(64) {
            let _ = cfg.window(layer);
            let _ = cfg.rope_theta(layer);
        }
    }
}

/// A `tokenizer.json`, then encoding and decoding with it.
pub fn tokenizer_json(data: &[u8]) {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(t) = Tokenizer::from_json(&json, Path::new("tokenizer.json"), 1 << 20) else {
        return;
    };
    let Ok(ids) = t.encode_plain("The cat sat on the mat. ünïcödé 🙂 [SEP]") else {
        return;
    };
    let _ = t.decode(&ids);
    let _ = t.special_affixes();
    let _ = t.encode("hello world", 8, true);
}

fn render(source: &str) {
    if let Ok(t) = ChatTemplate::new(source) {
        let messages = [
            Message::new("system", "Be brief."),
            Message::new("user", "Hi {{ there }}"),
            Message::new("assistant", "Hello."),
            Message::new("user", "Bye"),
        ];
        let _ = t.render(&messages, true, "<s>", "</s>");
    }
}

/// A chat template (Jinja), rendered over a short conversation under the template fuel limit.
pub fn chat_template(data: &[u8]) {
    if let Some(source) = text(data) {
        render(source);
    }
}

/// A SAELens `cfg.json` beside a small, valid weights file (d_in 4, d_sae 8).
pub fn saelens_cfg(data: &[u8]) {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = scratch().join("sae");
        seeds::small_sae(&dir);
        dir
    });
    let _ = std::fs::write(dir.join("cfg.json"), data);
    if let Ok(sae) = glassbox_dictionary::saelens::load(dir) {
        let x = vec![0.5f32; sae.cfg.d_in];
        let _ = sae.encode(&x);
    }
}

/// An activation store's `manifest.json` (its shards absent).
pub fn store_manifest(data: &[u8]) {
    let dir = scratch().join("store");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("manifest.json"), data);
    if let Ok(store) = glassbox_store::activations::ActivationStore::open(&dir) {
        let _ = store.rows();
        let _ = store.contexts(4);
    }
}

/// A `deploy.toml` (relative paths resolved, everything validated).
pub fn deploy_toml(data: &[u8]) {
    let path = file("deploy.toml", data);
    let _ = glassbox_serve::config::Config::load(&path);
}

/// A monitor rule, then the rule run over a few tokens.
pub fn rule(data: &[u8]) {
    let Some(source) = text(data) else { return };
    let Ok(rule) = glassbox_serve::rules::Rule::parse(source) else {
        return;
    };
    let mut state = glassbox_serve::rules::RuleState::default();
    for v in [0.0, 1.0, -3.5, f32::NAN, 1e30, 2.0] {
        let _ = rule.step(&mut state, v);
    }
}

/// A taxonomy of sensitive concepts (TOML).
pub fn taxonomy(data: &[u8]) {
    if let Some(source) = text(data) {
        let _ = glassbox_analysis::catalog::taxonomy::Taxonomy::parse(source, "fuzz.toml");
    }
}

fn corpus(name: &str, data: &[u8]) {
    let path = file(name, data);
    if let Ok(docs) = glassbox_store::corpus::Documents::open(&path) {
        for doc in docs.take(10_000) {
            if doc.is_err() {
                break;
            }
        }
    }
}

/// A JSON-lines corpus file.
pub fn corpus_jsonl(data: &[u8]) {
    corpus("corpus.jsonl", data);
}

/// A Parquet corpus file.
pub fn corpus_parquet(data: &[u8]) {
    corpus("corpus.parquet", data);
}
