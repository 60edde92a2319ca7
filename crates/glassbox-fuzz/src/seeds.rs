//! Seed corpora from real files (`cargo run -p glassbox-fuzz --example write_seeds`
//! rewrites `fuzz/seeds/`), and the small fixtures some targets read beside their input.

use std::path::Path;

use glassbox_dictionary::{saelens, Activation, DictConfig, Sae};

/// A ReLU dictionary of `d_model` inputs and 8 features, saved in SAELens format.
pub fn small_dictionary(dir: &Path, d_model: usize, model: &str, hook: &str) {
    let sae = Sae::init(
        DictConfig::sae(Activation::Relu { l1: 0.0 }, d_model, 8, model, hook),
        1,
    )
    .expect("a small dictionary");
    saelens::save(&sae, dir, serde_json::Value::Null).expect("a writable directory");
}

/// The dictionary `saelens_cfg` reads its fuzzed cfg.json against (d_in 4, d_sae 8).
pub fn small_sae(dir: &Path) {
    small_dictionary(dir, 4, "fuzz", "blocks.0.hook_resid_pre");
}

/// A minimal GGUF writer for seeds: string/u32/f32/string-array metadata and F32 tensors.
pub struct GgufWriter {
    kv: Vec<u8>,
    n_kv: u64,
    tensors: Vec<(String, Vec<u64>, Vec<f32>)>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter {
            kv: Vec::new(),
            n_kv: 0,
            tensors: Vec::new(),
        }
    }

    fn key(&mut self, key: &str, kind: u32) {
        self.kv.extend((key.len() as u64).to_le_bytes());
        self.kv.extend(key.as_bytes());
        self.kv.extend(kind.to_le_bytes());
        self.n_kv += 1;
    }

    pub fn string(mut self, key: &str, value: &str) -> Self {
        self.key(key, 8);
        self.kv.extend((value.len() as u64).to_le_bytes());
        self.kv.extend(value.as_bytes());
        self
    }

    pub fn u32(mut self, key: &str, value: u32) -> Self {
        self.key(key, 4);
        self.kv.extend(value.to_le_bytes());
        self
    }

    pub fn f32(mut self, key: &str, value: f32) -> Self {
        self.key(key, 6);
        self.kv.extend(value.to_le_bytes());
        self
    }

    pub fn strings(mut self, key: &str, values: &[&str]) -> Self {
        self.key(key, 9);
        self.kv.extend(8u32.to_le_bytes());
        self.kv.extend((values.len() as u64).to_le_bytes());
        for v in values {
            self.kv.extend((v.len() as u64).to_le_bytes());
            self.kv.extend(v.as_bytes());
        }
        self
    }

    pub fn tensor(mut self, name: &str, dims: &[u64]) -> Self {
        let n: u64 = dims.iter().product();
        let data = (0..n).map(|i| (i as f32 * 0.37).sin() * 0.1).collect();
        self.tensors.push((name.to_string(), dims.to_vec(), data));
        self
    }

    pub fn bytes(self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend(self.n_kv.to_le_bytes());
        out.extend(&self.kv);
        let mut offset = 0u64;
        for (name, dims, data) in &self.tensors {
            out.extend((name.len() as u64).to_le_bytes());
            out.extend(name.as_bytes());
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(0u32.to_le_bytes()); // F32
            out.extend(offset.to_le_bytes());
            offset += (data.len() as u64 * 4).div_ceil(32) * 32;
        }
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        for (_, _, data) in &self.tensors {
            let start = out.len();
            for v in data {
                out.extend(v.to_le_bytes());
            }
            while !(out.len() - start).is_multiple_of(32) {
                out.push(0);
            }
        }
        out
    }
}

/// A tiny llama-architecture GGUF (2 layers, d_model 8, a 6-token vocabulary, a chat template):
/// enough metadata for the config, tokenizer and template paths.
pub fn tiny_llama_gguf() -> Vec<u8> {
    tiny_llama_writer().bytes()
}

/// [`tiny_llama_gguf`] before it is written, for tests that add metadata or tensors to it.
pub fn tiny_llama_writer() -> GgufWriter {
    let (d, ff, vocab, layers) = (8u64, 16u64, 6u64, 2u32);
    let mut w = GgufWriter::new()
        .string("general.architecture", "llama")
        .u32("llama.context_length", 64)
        .u32("llama.embedding_length", d as u32)
        .u32("llama.block_count", layers)
        .u32("llama.feed_forward_length", ff as u32)
        .u32("llama.attention.head_count", 2)
        .u32("llama.attention.head_count_kv", 1)
        .f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        .f32("llama.rope.freq_base", 10000.0)
        .string("tokenizer.ggml.model", "gpt2")
        .strings("tokenizer.ggml.tokens", &["<s>", "</s>", "a", "b", "ab", "Ġ"])
        .strings("tokenizer.ggml.merges", &["a b"])
        .u32("tokenizer.ggml.bos_token_id", 0)
        .u32("tokenizer.ggml.eos_token_id", 1)
        .string(
            "tokenizer.chat_template",
            "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}",
        )
        .tensor("token_embd.weight", &[d, vocab])
        .tensor("output_norm.weight", &[d]);
    for l in 0..layers {
        w = w
            .tensor(&format!("blk.{l}.attn_norm.weight"), &[d])
            .tensor(&format!("blk.{l}.attn_q.weight"), &[d, d])
            .tensor(&format!("blk.{l}.attn_k.weight"), &[d, d / 2])
            .tensor(&format!("blk.{l}.attn_v.weight"), &[d, d / 2])
            .tensor(&format!("blk.{l}.attn_output.weight"), &[d, d])
            .tensor(&format!("blk.{l}.ffn_norm.weight"), &[d])
            .tensor(&format!("blk.{l}.ffn_gate.weight"), &[d, ff])
            .tensor(&format!("blk.{l}.ffn_up.weight"), &[d, ff])
            .tensor(&format!("blk.{l}.ffn_down.weight"), &[ff, d]);
    }
    w
}

/// A small safetensors file with one tensor of each common dtype.
pub fn small_safetensors() -> Vec<u8> {
    let header = serde_json::json!({
        "__metadata__": {"format": "pt"},
        "a.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "b.bias": {"dtype": "F16", "shape": [4], "data_offsets": [24, 32]},
        "c": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [32, 40]},
        "ids": {"dtype": "I64", "shape": [1], "data_offsets": [40, 48]}
    })
    .to_string();
    let mut header = header.into_bytes();
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    for v in [1.0f32, -2.0, 0.5, 3.25, 0.0, 7.0] {
        out.extend(v.to_le_bytes());
    }
    out.extend([0x00, 0x3c, 0x00, 0x40, 0x00, 0xc0, 0x00, 0x00]); // f16 1, 2, -2, 0
    out.extend([0x80, 0x3f, 0x00, 0x40, 0x00, 0x00, 0x80, 0xbf]); // bf16 1, 2, 0, -1
    out.extend(42i64.to_le_bytes());
    out
}
