//! Architecture-neutral model configuration, parsed from a Hugging Face `config.json`.
//!
//! Every supported family (BERT, GPT-2, Llama/Qwen2) is described by the same handful of
//! choices: where the norm sits, which norm, which activation, how positions enter, whether
//! attention is causal and whether the MLP is gated. The block code reads only these.

use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::error::{ModelError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Encoder, post-norm, learned absolute positions (BERT, MiniLM, ...).
    Bert,
    /// Decoder, pre-norm LayerNorm, learned absolute positions.
    Gpt2,
    /// Decoder, pre-norm RMSNorm, rotary positions, gated MLP, grouped-query attention
    /// (Llama, Qwen2, SmolLM, ...).
    Llama,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum NormKind {
    LayerNorm,
    RmsNorm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Activation {
    /// Exact GELU, `x * Φ(x)` (BERT's "gelu").
    GeluErf,
    /// Tanh approximation (GPT-2's "gelu_new").
    GeluTanh,
    Silu,
    Relu,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Positional {
    /// A learned table added to the token embedding.
    Learned,
    /// Rotary embedding of q and k (Hugging Face's rotate-half convention).
    Rotary { theta: f64 },
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelConfig {
    pub arch: Architecture,
    /// `model_type` as written in config.json.
    pub model_type: String,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub d_head: usize,
    pub d_mlp: usize,
    pub vocab_size: usize,
    pub max_positions: usize,
    pub norm: NormKind,
    pub norm_eps: f64,
    pub act: Activation,
    pub positional: Positional,
    pub causal: bool,
    pub gated_mlp: bool,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub tie_embeddings: bool,
    /// BERT's segment embeddings (0 elsewhere).
    pub type_vocab_size: usize,
    /// Generation stops here (decoders).
    pub eos_token_id: Option<u32>,
    /// The token a sequence starts with, where the model has one (probes prepend it).
    pub bos_token_id: Option<u32>,
}

impl ModelConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::config(path, "<json>", format!("not valid JSON: {e}")))?;
        Self::from_json(&json, path)
    }

    pub fn from_json(json: &Value, path: &Path) -> Result<Self> {
        let f = Fields { json, path };
        let model_type = f.string("model_type")?;
        let cfg = match model_type.as_str() {
            "bert" => Self::bert(&f, model_type)?,
            "gpt2" => Self::gpt2(&f, model_type)?,
            "llama" | "qwen2" => Self::llama(&f, model_type)?,
            other => {
                return Err(ModelError::config(
                    path,
                    "model_type",
                    format!("`{other}` is not supported; supported: bert, gpt2, llama, qwen2"),
                ))
            }
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn bert(f: &Fields, model_type: String) -> Result<Self> {
        let d_model = f.usize("hidden_size")?;
        let n_heads = f.usize("num_attention_heads")?;
        if let Some(p) = f.opt_string("position_embedding_type")? {
            if p != "absolute" {
                return Err(f.err(
                    "position_embedding_type",
                    format!("`{p}` is not supported; only \"absolute\""),
                ));
            }
        }
        Ok(Self {
            arch: Architecture::Bert,
            model_type,
            d_model,
            n_layers: f.usize("num_hidden_layers")?,
            n_heads,
            n_kv_heads: n_heads,
            d_head: d_model / n_heads.max(1),
            d_mlp: f.usize("intermediate_size")?,
            vocab_size: f.usize("vocab_size")?,
            max_positions: f.usize("max_position_embeddings")?,
            norm: NormKind::LayerNorm,
            norm_eps: f.opt_f64("layer_norm_eps")?.unwrap_or(1e-12),
            act: f.activation("hidden_act", "gelu")?,
            positional: Positional::Learned,
            causal: false,
            gated_mlp: false,
            qkv_bias: true,
            o_bias: true,
            mlp_bias: true,
            tie_embeddings: false,
            type_vocab_size: f.opt_usize("type_vocab_size")?.unwrap_or(0),
            eos_token_id: None,
            bos_token_id: None,
        })
    }

    fn gpt2(f: &Fields, model_type: String) -> Result<Self> {
        let d_model = f.usize("n_embd")?;
        let n_heads = f.usize("n_head")?;
        Ok(Self {
            arch: Architecture::Gpt2,
            model_type,
            d_model,
            n_layers: f.usize("n_layer")?,
            n_heads,
            n_kv_heads: n_heads,
            d_head: d_model / n_heads.max(1),
            d_mlp: f.opt_usize("n_inner")?.unwrap_or(4 * d_model),
            vocab_size: f.usize("vocab_size")?,
            max_positions: f.usize("n_positions")?,
            norm: NormKind::LayerNorm,
            norm_eps: f.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-5),
            act: f.activation("activation_function", "gelu_new")?,
            positional: Positional::Learned,
            causal: true,
            gated_mlp: false,
            qkv_bias: true,
            o_bias: true,
            mlp_bias: true,
            tie_embeddings: true,
            type_vocab_size: 0,
            eos_token_id: f.token_id("eos_token_id")?,
            bos_token_id: f.token_id("bos_token_id")?,
        })
    }

    fn llama(f: &Fields, model_type: String) -> Result<Self> {
        let d_model = f.usize("hidden_size")?;
        let n_heads = f.usize("num_attention_heads")?;
        let theta = f.rope_theta()?;
        let qwen = model_type == "qwen2";
        if qwen && f.opt_bool("use_sliding_window")?.unwrap_or(false) {
            return Err(f.err(
                "use_sliding_window",
                "sliding-window attention is not supported",
            ));
        }
        let attention_bias = f.opt_bool("attention_bias")?.unwrap_or(false);
        Ok(Self {
            arch: Architecture::Llama,
            d_model,
            n_layers: f.usize("num_hidden_layers")?,
            n_heads,
            n_kv_heads: f.opt_usize("num_key_value_heads")?.unwrap_or(n_heads),
            d_head: f.opt_usize("head_dim")?.unwrap_or(d_model / n_heads.max(1)),
            d_mlp: f.usize("intermediate_size")?,
            vocab_size: f.usize("vocab_size")?,
            max_positions: f.usize("max_position_embeddings")?,
            norm: NormKind::RmsNorm,
            norm_eps: f.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            act: f.activation("hidden_act", "silu")?,
            positional: Positional::Rotary { theta },
            causal: true,
            gated_mlp: true,
            // Qwen2 always has q/k/v biases and none on o; Llama has both or neither.
            qkv_bias: qwen || attention_bias,
            o_bias: !qwen && attention_bias,
            mlp_bias: f.opt_bool("mlp_bias")?.unwrap_or(false),
            tie_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            type_vocab_size: 0,
            eos_token_id: f.token_id("eos_token_id")?,
            bos_token_id: f.token_id("bos_token_id")?,
            model_type,
        })
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let positive = [
            ("hidden size", self.d_model),
            ("number of layers", self.n_layers),
            ("number of heads", self.n_heads),
            ("number of key/value heads", self.n_kv_heads),
            ("MLP width", self.d_mlp),
            ("vocab size", self.vocab_size),
            ("max positions", self.max_positions),
        ];
        for (what, v) in positive {
            if v == 0 {
                return Err(ModelError::config(path, what, "must be positive"));
            }
        }
        if self.n_heads * self.d_head != self.d_model && self.arch != Architecture::Llama {
            return Err(ModelError::config(
                path,
                "num_attention_heads",
                format!(
                    "hidden size {} is not divisible by {} heads",
                    self.d_model, self.n_heads
                ),
            ));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(ModelError::config(
                path,
                "num_key_value_heads",
                format!(
                    "{} heads are not a multiple of {} key/value heads",
                    self.n_heads, self.n_kv_heads
                ),
            ));
        }
        if matches!(self.positional, Positional::Rotary { .. }) && !self.d_head.is_multiple_of(2) {
            return Err(ModelError::config(
                path,
                "head_dim",
                "rotary embeddings need an even head dimension",
            ));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps >= 0.0) {
            return Err(ModelError::config(
                path,
                "norm eps",
                "must be a non-negative number",
            ));
        }
        Ok(())
    }

    /// Model families whose forward pass predicts next tokens.
    pub fn is_decoder(&self) -> bool {
        self.causal
    }
}

/// Typed access to config.json fields with errors that name the field.
struct Fields<'a> {
    json: &'a Value,
    path: &'a Path,
}

impl Fields<'_> {
    fn err(&self, field: &str, msg: impl Into<String>) -> ModelError {
        ModelError::config(self.path, field, msg)
    }

    fn present(&self, key: &str) -> Option<&Value> {
        self.json.get(key).filter(|v| !v.is_null())
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.present(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    self.err(key, format!("expected a non-negative integer, found {v}"))
                }),
        }
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| self.err(key, "missing; add it to config.json"))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.present(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected a number, found {v}"))),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.present(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected true or false, found {v}"))),
        }
    }

    fn opt_string(&self, key: &str) -> Result<Option<String>> {
        match self.present(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| self.err(key, format!("expected a string, found {v}"))),
        }
    }

    fn string(&self, key: &str) -> Result<String> {
        self.opt_string(key)?
            .ok_or_else(|| self.err(key, "missing; add it to config.json"))
    }

    /// The rotary base, from `rope_theta` (transformers 4) or `rope_parameters` (transformers 5).
    /// Scaled RoPE variants (llama3, yarn, ...) are refused rather than run wrongly.
    fn rope_theta(&self) -> Result<f64> {
        if let Some(v) = self.present("rope_scaling") {
            let kind = v
                .get("rope_type")
                .or_else(|| v.get("type"))
                .and_then(Value::as_str);
            if kind != Some("default") {
                return Err(self.err(
                    "rope_scaling",
                    format!("RoPE scaling {v} is not supported; use a checkpoint without it"),
                ));
            }
        }
        if let Some(p) = self.present("rope_parameters") {
            let kind = p
                .get("rope_type")
                .and_then(Value::as_str)
                .unwrap_or("default");
            if kind != "default" {
                return Err(self.err(
                    "rope_parameters.rope_type",
                    format!("`{kind}` is not supported; only \"default\""),
                ));
            }
            if let Some(t) = p.get("rope_theta") {
                return t.as_f64().ok_or_else(|| {
                    self.err(
                        "rope_parameters.rope_theta",
                        format!("expected a number, found {t}"),
                    )
                });
            }
        }
        Ok(self.opt_f64("rope_theta")?.unwrap_or(10_000.0))
    }

    /// A special token id (`eos_token_id`, `bos_token_id`): an integer or a list (the first
    /// is used).
    fn token_id(&self, key: &str) -> Result<Option<u32>> {
        let v = match self.present(key) {
            None => return Ok(None),
            Some(Value::Array(a)) => match a.first() {
                None => return Ok(None),
                Some(v) => v,
            },
            Some(v) => v,
        };
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| self.err(key, format!("expected a token id, found {v}")))
    }

    fn activation(&self, key: &str, default: &str) -> Result<Activation> {
        let name = self.opt_string(key)?.unwrap_or_else(|| default.to_string());
        match name.as_str() {
            "gelu" => Ok(Activation::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
            "silu" | "swish" => Ok(Activation::Silu),
            "relu" => Ok(Activation::Relu),
            other => Err(self.err(
                key,
                format!("activation `{other}` is not supported; use gelu, gelu_new, silu or relu"),
            )),
        }
    }
}
