//! A GGUF checkpoint as the three things a Hugging Face directory holds: `config.json` fields
//! from the `{arch}.*` metadata, tensors under Hugging Face names (llama.cpp's Q/K row
//! permutation and Gemma's `1 + w` norms undone), and a `tokenizer.json` built from
//! `tokenizer.ggml.*` (byte-level BPE or SentencePiece). The runtime then loads it exactly like a
//! directory: one mapping, written as data, instead of a second loader.

use serde_json::{json, Map, Value as Json};

use crate::error::Result;
use crate::gguf::{GgufFile, Value};

/// Architectures whose GGUF layout is mapped here (`general.architecture`).
pub const ARCHITECTURES: &[&str] = &["llama", "qwen2", "gemma3"];

/// llama.cpp hard-codes Gemma 3's sliding-window layout: five local layers (RoPE base 10,000)
/// before every global one.
const GEMMA3_SLIDING_PATTERN: u64 = 6;
const GEMMA3_SLIDING_THETA: f64 = 10_000.0;

/// The `config.json` a Hugging Face checkpoint of this model would have.
pub fn config_json(g: &GgufFile) -> Result<Json> {
    let arch = g.require("general.architecture", "a string", Value::as_str)?;
    if !ARCHITECTURES.contains(&arch) {
        return Err(g.err(format!(
            "metadata `general.architecture` is `{arch}`; supported GGUF architectures: {}",
            ARCHITECTURES.join(", ")
        )));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let int = |k: &str| g.require(&key(k), "an integer", Value::as_u64);
    let opt_int = |k: &str| g.optional(&key(k), "an integer", Value::as_u64);
    let float = |k: &str| g.optional(&key(k), "a number", Value::as_f64);
    let d_model = int("embedding_length")?;
    let n_heads = int("attention.head_count")?;
    let tokens = g
        .require(
            "tokenizer.ggml.tokens",
            "an array of strings",
            Value::as_array,
        )?
        .len() as u64;
    // The embedding's rows are the vocabulary; a tokenizer with more tokens is refused later.
    let vocab = g
        .tensors
        .get("token_embd.weight")
        .map(|t| t.shape[0] as u64)
        .unwrap_or(tokens);
    if let Some(v) = opt_int("vocab_size")? {
        if v != vocab {
            return Err(g.err(format!(
                "metadata `{}` is {v} but `token_embd.weight` has {vocab} rows",
                key("vocab_size")
            )));
        }
    }
    let d_head = opt_int("attention.key_length")?.unwrap_or(d_model / n_heads.max(1));
    if let Some(rope_dims) = opt_int("rope.dimension_count")? {
        if rope_dims != d_head {
            return Err(g.err(format!(
                "metadata `{}` is {rope_dims}, but heads are {d_head} wide; partial rotary embeddings are not supported",
                key("rope.dimension_count")
            )));
        }
    }
    let token_id = |k: &str| g.optional(k, "a token id", Value::as_u64);
    let mut c = Map::new();
    let gemma = arch == "gemma3";
    c.insert(
        "model_type".into(),
        json!(if gemma { "gemma3_text" } else { arch }),
    );
    c.insert("hidden_size".into(), json!(d_model));
    c.insert("num_hidden_layers".into(), json!(int("block_count")?));
    c.insert("num_attention_heads".into(), json!(n_heads));
    c.insert(
        "num_key_value_heads".into(),
        json!(opt_int("attention.head_count_kv")?.unwrap_or(n_heads)),
    );
    c.insert("head_dim".into(), json!(d_head));
    c.insert(
        "intermediate_size".into(),
        json!(int("feed_forward_length")?),
    );
    c.insert("vocab_size".into(), json!(vocab));
    c.insert(
        "max_position_embeddings".into(),
        json!(int("context_length")?),
    );
    c.insert(
        "rms_norm_eps".into(),
        json!(float("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-6)),
    );
    c.insert(
        "rope_theta".into(),
        json!(float("rope.freq_base")?.unwrap_or(10_000.0)),
    );
    if gemma {
        c.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
        c.insert("query_pre_attn_scalar".into(), json!(d_head));
        c.insert(
            "sliding_window".into(),
            json!(int("attention.sliding_window")?),
        );
        c.insert(
            "sliding_window_pattern".into(),
            json!(GEMMA3_SLIDING_PATTERN),
        );
        c.insert("rope_local_base_freq".into(), json!(GEMMA3_SLIDING_THETA));
    } else {
        c.insert("hidden_act".into(), json!("silu"));
    }
    c.insert(
        "tie_word_embeddings".into(),
        json!(!g.tensors.contains_key("output.weight")),
    );
    c.insert(
        "attention_bias".into(),
        json!(g.tensors.contains_key("blk.0.attn_q.bias")),
    );
    c.insert(
        "bos_token_id".into(),
        json!(token_id("tokenizer.ggml.bos_token_id")?),
    );
    c.insert(
        "eos_token_id".into(),
        json!(token_id("tokenizer.ggml.eos_token_id")?),
    );
    Ok(Json::Object(c))
}

/// How a GGUF tensor differs from its Hugging Face counterpart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    AsIs,
    /// Rows permuted for llama.cpp's interleaved RoPE, over this many heads.
    Permuted {
        heads: usize,
    },
    /// A Gemma norm weight, stored as `1 + w` where Hugging Face stores `w`.
    PlusOne,
}

/// The GGUF tensor behind a Hugging Face tensor name, and how it is stored.
pub fn tensor_name(arch: &str, hf: &str, cfg: &crate::ModelConfig) -> Option<(String, Stored)> {
    let gemma = arch.starts_with("gemma");
    let plain = |s: &str| Some((s.to_string(), Stored::AsIs));
    match hf {
        "model.embed_tokens.weight" => return plain("token_embd.weight"),
        "model.norm.weight" if gemma => {
            return Some(("output_norm.weight".into(), Stored::PlusOne))
        }
        "model.norm.weight" => return plain("output_norm.weight"),
        "lm_head.weight" => return plain("output.weight"),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, leaf) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, suffix) = leaf.rsplit_once('.')?;
    let gguf = match (part, gemma) {
        ("input_layernorm", _) => "attn_norm",
        ("post_attention_layernorm", false) => "ffn_norm",
        ("post_attention_layernorm", true) => "post_attention_norm",
        ("pre_feedforward_layernorm", true) => "ffn_norm",
        ("post_feedforward_layernorm", true) => "post_ffw_norm",
        ("self_attn.q_norm", true) => "attn_q_norm",
        ("self_attn.k_norm", true) => "attn_k_norm",
        ("self_attn.q_proj", _) => "attn_q",
        ("self_attn.k_proj", _) => "attn_k",
        ("self_attn.v_proj", _) => "attn_v",
        ("self_attn.o_proj", _) => "attn_output",
        ("mlp.gate_proj", _) => "ffn_gate",
        ("mlp.up_proj", _) => "ffn_up",
        ("mlp.down_proj", _) => "ffn_down",
        _ => return None,
    };
    // llama.cpp's converter permutes Q and K rows of Llama checkpoints (not Qwen2's or
    // Gemma's) so that its interleaved RoPE matches Hugging Face's rotate-half; it stores
    // Gemma's norms with the 1 already added.
    let stored = match (arch, gguf) {
        ("llama", "attn_q") => Stored::Permuted { heads: cfg.n_heads },
        ("llama", "attn_k") => Stored::Permuted {
            heads: cfg.n_kv_heads,
        },
        (_, n) if gemma && n.ends_with("norm") => Stored::PlusOne,
        _ => Stored::AsIs,
    };
    Some((format!("blk.{layer}.{gguf}.{suffix}"), stored))
}

/// Undoes llama.cpp's permutation of a `[heads·d_head, ...]` projection (weight or bias):
/// within each head, rows `[0, 2, 4, …, 1, 3, 5, …]` become `[0, 1, 2, …]`.
pub fn unpermute(w: &candle_core::Tensor, heads: usize) -> Result<candle_core::Tensor> {
    let dims = w.dims().to_vec();
    let d_out = dims[0];
    let rest: usize = dims[1..].iter().product();
    let d_head = d_out / heads;
    Ok(w.reshape((heads, d_head / 2, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

/// Row `i` of the unpermuted `[heads·d_head, ...]` projection is row `order[i]` of the GGUF
/// one (the same map as [`unpermute`], for row-wise data such as quantised blocks).
pub fn unpermuted_order(rows: usize, heads: usize) -> Vec<usize> {
    let d_head = rows / heads;
    let half = d_head / 2;
    (0..rows)
        .map(|r| {
            let (h, within) = (r / d_head, r % d_head);
            let (t, i) = (within / half, within % half);
            h * d_head + 2 * i + t
        })
        .collect()
}

/// The pre-tokenizers of `tokenizer.ggml.pre` that are mapped (as Hugging Face writes them).
fn pre_tokenizer(pre: &str) -> Option<Json> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    Some(match pre {
        "gpt2" | "gpt-2" | "default" => byte_level(true),
        // SmolLM: every digit on its own, then GPT-2's byte-level split.
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "qwen2" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": false},
            byte_level(false)]}),
        _ => return None,
    })
}

const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.json` of the file's vocabulary: byte-level BPE (`tokenizer.ggml.model =
/// gpt2`) or SentencePiece BPE with byte fallback (`llama`, e.g. Gemma's).
pub fn tokenizer_json(g: &GgufFile) -> Result<Json> {
    let model = g.require("tokenizer.ggml.model", "a string", Value::as_str)?;
    let vocab = Vocab::read(g)?;
    let (model_json, normalizer, pre, decoder) = match model {
        "gpt2" => byte_level_bpe(g, &vocab)?,
        "llama" => sentencepiece_bpe(g, &vocab)?,
        other => {
            return Err(g.err(format!(
                "metadata `tokenizer.ggml.model` is `{other}`; supported: gpt2 (byte-level BPE), llama (SentencePiece)"
            )))
        }
    };
    let add_bos = g
        .optional("tokenizer.ggml.add_bos_token", "a bool", Value::as_bool)?
        .unwrap_or(false);
    let post = match (
        add_bos,
        g.optional("tokenizer.ggml.bos_token_id", "a token id", Value::as_u64)?,
    ) {
        (true, Some(bos)) => {
            let bos_tok = vocab.tokens.get(bos as usize).ok_or_else(|| {
                g.err(format!(
                    "metadata `tokenizer.ggml.bos_token_id` {bos} is not a token"
                ))
            })?;
            let mut special = Map::new();
            special.insert(
                bos_tok.to_string(),
                json!({"id": bos_tok, "ids": [bos], "tokens": [bos_tok]}),
            );
            json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos_tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos_tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": special})
        }
        _ if model == "gpt2" => {
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true})
        }
        _ => Json::Null,
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": vocab.added_tokens(),
        "normalizer": normalizer,
        "pre_tokenizer": pre,
        "post_processor": post,
        "decoder": decoder,
        "model": model_json,
    }))
}

/// GGUF token types: control tokens are special (never split, skipped when decoding);
/// user-defined ones are added tokens that are never split; bytes are SentencePiece's
/// `<0xAB>` fallback pieces.
const NORMAL: i64 = 1;
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// `tokenizer.ggml.tokens` with their types and (SentencePiece) scores.
struct Vocab<'a> {
    tokens: Vec<&'a str>,
    types: Vec<i64>,
}

impl<'a> Vocab<'a> {
    fn read(g: &'a GgufFile) -> Result<Self> {
        let tokens = strings(g, "tokenizer.ggml.tokens")?;
        let types: Vec<i64> = match g.get("tokenizer.ggml.token_type") {
            Some(Value::Array(a)) if a.len() == tokens.len() => a
                .iter()
                .map(|v| match *v {
                    Value::I32(t) => i64::from(t),
                    ref other => other.as_u64().map_or(NORMAL, |t| t as i64),
                })
                .collect(),
            Some(_) => {
                return Err(g.err(format!(
                    "metadata `tokenizer.ggml.token_type` does not have one entry per token ({})",
                    tokens.len()
                )))
            }
            None => vec![NORMAL; tokens.len()],
        };
        Ok(Self { tokens, types })
    }

    /// `{token: id}`, refusing duplicates (they would make ids ambiguous).
    fn map(&self, g: &GgufFile) -> Result<Map<String, Json>> {
        let mut vocab = Map::new();
        for (id, &tok) in self.tokens.iter().enumerate() {
            if vocab.insert(tok.to_string(), json!(id)).is_some() {
                return Err(g.err(format!(
                    "metadata `tokenizer.ggml.tokens` lists {tok:?} twice"
                )));
            }
        }
        Ok(vocab)
    }

    fn added_tokens(&self) -> Vec<Json> {
        self.tokens
            .iter()
            .zip(&self.types)
            .enumerate()
            .filter(|(_, (_, &kind))| kind == CONTROL || kind == USER_DEFINED)
            .map(|(id, (tok, &kind))| {
                json!({"id": id, "content": tok, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": kind == CONTROL})
            })
            .collect()
    }
}

fn strings<'a>(g: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    g.require(key, "an array of strings", Value::as_array)?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str()
                .ok_or_else(|| g.err(format!("metadata `{key}`[{i}] is not a string")))
        })
        .collect()
}

/// Model, normalizer, pre-tokenizer and decoder of a byte-level BPE vocabulary.
fn byte_level_bpe(g: &GgufFile, vocab: &Vocab) -> Result<(Json, Json, Json, Json)> {
    let pre_name = g
        .optional("tokenizer.ggml.pre", "a string", Value::as_str)?
        .unwrap_or("default");
    let pre = pre_tokenizer(pre_name).ok_or_else(|| {
        g.err(format!(
            "metadata `tokenizer.ggml.pre` is `{pre_name}`, a pre-tokenizer Glassbox does not know; known: default, gpt2, smollm, qwen2"
        ))
    })?;
    let merges = strings(g, "tokenizer.ggml.merges")?;
    let normalizer = if pre_name == "qwen2" {
        json!({"type": "NFC"})
    } else {
        Json::Null
    };
    let model = json!({"type": "BPE", "dropout": null, "unk_token": null,
        "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
        "byte_fallback": false, "ignore_merges": false, "vocab": vocab.map(g)?, "merges": merges});
    let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
    Ok((model, normalizer, pre, decoder))
}

/// Model, normalizer, pre-tokenizer and decoder of a SentencePiece BPE vocabulary. SentencePiece
/// merges the adjacent pair whose joined piece scores highest; as Hugging Face BPE, that is
/// one merge rule per way of splitting each piece in two vocabulary pieces, ranked by the
/// joined piece's score.
fn sentencepiece_bpe(g: &GgufFile, vocab: &Vocab) -> Result<(Json, Json, Json, Json)> {
    let scores: Vec<f64> = g
        .require(
            "tokenizer.ggml.scores",
            "an array of numbers",
            Value::as_array,
        )?
        .iter()
        .map(|v| v.as_f64().unwrap_or(0.0))
        .collect();
    if scores.len() != vocab.tokens.len() {
        return Err(g.err(format!(
            "metadata `tokenizer.ggml.scores` has {} entries for {} tokens",
            scores.len(),
            vocab.tokens.len()
        )));
    }
    let ids: std::collections::HashMap<&str, usize> = vocab
        .tokens
        .iter()
        .enumerate()
        .map(|(i, &t)| (t, i))
        .collect();
    // (score of the joined piece, its id, left length) → merge; best first.
    let mut merges: Vec<(f64, usize, usize, &str, &str)> = Vec::new();
    for (id, (&piece, &kind)) in vocab.tokens.iter().zip(&vocab.types).enumerate() {
        if kind != NORMAL {
            continue;
        }
        for (at, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(at);
            if ids.contains_key(l) && ids.contains_key(r) {
                merges.push((scores[id], id, l.len(), l, r));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(b.2.cmp(&a.2)));
    let merges: Vec<Json> = merges.iter().map(|m| json!([m.3, m.4])).collect();
    let unk = g
        .optional(
            "tokenizer.ggml.unknown_token_id",
            "a token id",
            Value::as_u64,
        )?
        .and_then(|i| vocab.tokens.get(i as usize).copied());
    let prefix_space = g
        .optional("tokenizer.ggml.add_space_prefix", "a bool", Value::as_bool)?
        .unwrap_or(true);
    let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
    let normalizer = if prefix_space {
        json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"}, replace]})
    } else {
        replace
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if prefix_space {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let model = json!({"type": "BPE", "dropout": null, "unk_token": unk,
        "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
        "byte_fallback": true, "ignore_merges": false, "vocab": vocab.map(g)?, "merges": merges});
    Ok((
        model,
        normalizer,
        Json::Null,
        json!({"type": "Sequence", "decoders": decoders}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_row_order_is_the_unpermutation() {
        let (heads, d_head, cols) = (3, 8, 2);
        let rows = heads * d_head;
        let w = candle_core::Tensor::arange(0f32, (rows * cols) as f32, &candle_core::Device::Cpu)
            .unwrap()
            .reshape((rows, cols))
            .unwrap();
        let un: Vec<Vec<f32>> = unpermute(&w, heads).unwrap().to_vec2().unwrap();
        let orig: Vec<Vec<f32>> = w.to_vec2().unwrap();
        let order = unpermuted_order(rows, heads);
        for (i, &o) in order.iter().enumerate() {
            assert_eq!(un[i], orig[o], "row {i}");
        }
        // Within a head: even rows first, then odd ones.
        assert_eq!(&order[..d_head], &[0, 2, 4, 6, 1, 3, 5, 7]);
    }
}
