//! Architecture-neutral model configuration, parsed from a Hugging Face `config.json`.
//!
//! Every supported family (BERT, GPT-2, Llama/Qwen2, Gemma 3) is described by the same handful
//! of choices: where the norm sits, which norm, which activation, how positions enter, whether
//! attention is causal or windowed and whether the MLP is gated. The block code reads only these.

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
    /// Llama's shape plus norms on the attention and MLP outputs, RMSNorm of queries and keys,
    /// `(1 + w)` norm weights, a scaled token embedding and sliding-window layers between
    /// global ones, each with its own RoPE base (Gemma 3).
    Gemma3,
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
    /// Attention scores are `q·k` times this (`1/√d_head` unless the model says otherwise).
    pub attn_scale: f64,
    /// What some decoders add to the plain block (Gemma 3: all of it); none by default.
    pub extras: Extras,
}

/// Departures from the plain pre-norm block, each off by default.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Extras {
    /// How many keys (itself included) a query of a sliding-window layer sees.
    pub sliding_window: Option<usize>,
    /// Per layer, whether its attention is the sliding window (empty: every layer is global).
    pub sliding_layers: Vec<bool>,
    /// The RoPE base of the sliding-window layers, where it differs from the global one.
    pub sliding_rope_theta: Option<f64>,
    /// RMSNorm scales by `norm_weight_offset + w` (Gemma keeps its weights around 0: 1).
    pub norm_weight_offset: f64,
    /// The token embedding is multiplied by this before it enters the residual stream.
    pub embed_scale: Option<f64>,
    /// RMSNorm over each head's queries and keys, before RoPE.
    pub qk_norm: bool,
    /// Norms on the attention and MLP outputs before they join the residual stream.
    pub sandwich_norms: bool,
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
            "gemma3_text" | "gemma3" => Self::gemma3(&f, model_type)?,
            other => {
                return Err(ModelError::config(
                    path,
                    "model_type",
                    format!(
                    "`{other}` is not supported; supported: bert, gpt2, llama, qwen2, gemma3_text"
                ),
                ))
            }
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn bert(f: &Fields, model_type: String) -> Result<Self> {
        let d_model = f.usize("hidden_size")?;
        let n_heads = f.usize("num_attention_heads")?;
        let d_head = d_model / n_heads.max(1);
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
            d_head,
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
            attn_scale: 1.0 / (d_head as f64).sqrt(),
            extras: Extras::default(),
        })
    }

    fn gpt2(f: &Fields, model_type: String) -> Result<Self> {
        let d_model = f.usize("n_embd")?;
        let n_heads = f.usize("n_head")?;
        let d_head = d_model / n_heads.max(1);
        Ok(Self {
            arch: Architecture::Gpt2,
            model_type,
            d_model,
            n_layers: f.usize("n_layer")?,
            n_heads,
            n_kv_heads: n_heads,
            d_head,
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
            attn_scale: 1.0 / (d_head as f64).sqrt(),
            extras: Extras::default(),
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
        let d_head = f.opt_usize("head_dim")?.unwrap_or(d_model / n_heads.max(1));
        Ok(Self {
            arch: Architecture::Llama,
            d_model,
            n_layers: f.usize("num_hidden_layers")?,
            n_heads,
            n_kv_heads: f.opt_usize("num_key_value_heads")?.unwrap_or(n_heads),
            d_head,
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
            attn_scale: 1.0 / (d_head as f64).sqrt(),
            extras: Extras::default(),
            model_type,
        })
    }

    fn gemma3(f: &Fields, model_type: String) -> Result<Self> {
        for key in ["final_logit_softcapping", "attn_logit_softcapping"] {
            if f.present(key).is_some() {
                return Err(f.err(key, "logit soft-capping (Gemma 2) is not supported"));
            }
        }
        if f.opt_bool("use_bidirectional_attention")?.unwrap_or(false) {
            return Err(f.err(
                "use_bidirectional_attention",
                "bidirectional Gemma (EmbeddingGemma) is not supported",
            ));
        }
        // Llama's fields, then what Gemma does differently.
        let base = Self::llama(f, model_type)?;
        let (theta, sliding_theta) = f.gemma_rope_thetas()?;
        let scalar = f
            .opt_f64("query_pre_attn_scalar")?
            .unwrap_or(base.d_head as f64);
        if scalar.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return Err(f.err("query_pre_attn_scalar", "must be positive"));
        }
        let attention_bias = f.opt_bool("attention_bias")?.unwrap_or(false);
        Ok(Self {
            arch: Architecture::Gemma3,
            act: f.activation("hidden_activation", "gelu_pytorch_tanh")?,
            positional: Positional::Rotary { theta },
            qkv_bias: attention_bias,
            o_bias: attention_bias,
            tie_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(true),
            attn_scale: 1.0 / scalar.sqrt(),
            extras: Extras {
                sliding_window: f.opt_usize("sliding_window")?,
                sliding_layers: f.sliding_layers(base.n_layers)?,
                sliding_rope_theta: Some(sliding_theta),
                norm_weight_offset: 1.0,
                embed_scale: Some((base.d_model as f64).sqrt()),
                qk_norm: true,
                sandwich_norms: true,
            },
            ..base
        })
    }

    /// The attention window of `layer`'s queries (`None`: every earlier key).
    pub fn window(&self, layer: usize) -> Option<usize> {
        match self.extras.sliding_layers.get(layer) {
            Some(true) => self.extras.sliding_window,
            _ => None,
        }
    }

    /// The RoPE base of `layer` (`None` for learned positions).
    pub fn rope_theta(&self, layer: usize) -> Option<f64> {
        match self.positional {
            Positional::Rotary { theta } => Some(match self.extras.sliding_layers.get(layer) {
                Some(true) => self.extras.sliding_rope_theta.unwrap_or(theta),
                _ => theta,
            }),
            Positional::Learned => None,
        }
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
        if self.n_heads * self.d_head != self.d_model
            && matches!(self.arch, Architecture::Bert | Architecture::Gpt2)
        {
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
        let x = &self.extras;
        if x.sliding_layers.iter().any(|&s| s) && x.sliding_window.is_none_or(|w| w == 0) {
            return Err(ModelError::config(
                path,
                "sliding_window",
                "sliding-window layers need a positive `sliding_window`",
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
            self.default_rope_type("rope_parameters.rope_type", p)?;
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

    /// Refuses a `rope_type` other than "default" (absent means default) in `p`, named `field`.
    fn default_rope_type(&self, field: &str, p: &Value) -> Result<()> {
        match p.get("rope_type").and_then(Value::as_str) {
            None | Some("default") => Ok(()),
            Some(kind) => Err(self.err(
                field,
                format!("`{kind}` is not supported; only \"default\""),
            )),
        }
    }

    /// Gemma 3's two RoPE bases, global and sliding-window: from `rope_parameters.{full,sliding}_attention`
    /// (transformers 5) or `rope_theta` and `rope_local_base_freq` (transformers 4).
    fn gemma_rope_thetas(&self) -> Result<(f64, f64)> {
        if self.present("rope_scaling").is_some() {
            return Err(self.err("rope_scaling", "RoPE scaling is not supported"));
        }
        let theta_of = |key: &str, p: &Value| -> Result<f64> {
            self.default_rope_type(&format!("rope_parameters.{key}.rope_type"), p)?;
            p.get("rope_theta").and_then(Value::as_f64).ok_or_else(|| {
                self.err(
                    &format!("rope_parameters.{key}.rope_theta"),
                    "missing or not a number",
                )
            })
        };
        if let Some(p) = self.present("rope_parameters") {
            if let (Some(full), Some(sliding)) =
                (p.get("full_attention"), p.get("sliding_attention"))
            {
                return Ok((
                    theta_of("full_attention", full)?,
                    theta_of("sliding_attention", sliding)?,
                ));
            }
        }
        Ok((
            self.opt_f64("rope_theta")?.unwrap_or(1_000_000.0),
            self.opt_f64("rope_local_base_freq")?.unwrap_or(10_000.0),
        ))
    }

    /// Which layers use the sliding window: `layer_types` (one "sliding_attention" or
    /// "full_attention" per layer), else every `sliding_window_pattern`-th layer is global.
    fn sliding_layers(&self, n_layers: usize) -> Result<Vec<bool>> {
        if let Some(v) = self.present("layer_types") {
            let types = v
                .as_array()
                .filter(|a| a.len() == n_layers)
                .ok_or_else(|| self.err("layer_types", format!("expected {n_layers} entries")))?;
            return types
                .iter()
                .map(|t| match t.as_str() {
                    Some("sliding_attention") => Ok(true),
                    Some("full_attention") => Ok(false),
                    _ => Err(self.err(
                        "layer_types",
                        format!("`{t}` is neither \"sliding_attention\" nor \"full_attention\""),
                    )),
                })
                .collect();
        }
        let pattern = match self.opt_usize("sliding_window_pattern")? {
            Some(p) => p,
            None => self.opt_usize("_sliding_window_pattern")?.unwrap_or(6),
        };
        if pattern == 0 {
            return Err(self.err("sliding_window_pattern", "must be positive"));
        }
        Ok((0..n_layers).map(|i| (i + 1) % pattern != 0).collect())
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gemma(extra: Value) -> Result<ModelConfig> {
        let mut c = json!({"model_type": "gemma3_text", "hidden_size": 640, "num_hidden_layers": 6,
            "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
            "intermediate_size": 2048, "vocab_size": 1000, "max_position_embeddings": 4096,
            "sliding_window": 512, "query_pre_attn_scalar": 256});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        ModelConfig::from_json(&c, Path::new("config.json"))
    }

    #[test]
    fn gemma3_layers_and_rope_bases_read_from_both_transformers_dialects() {
        // transformers 5: `layer_types` and `rope_parameters` per attention kind.
        let five = gemma(
            json!({"layer_types": ["sliding_attention", "full_attention",
            "sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
            "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}),
        )
        .unwrap();
        assert_eq!(five.window(0), Some(512));
        assert_eq!(five.window(1), None);
        assert_eq!(
            (five.rope_theta(0), five.rope_theta(1)),
            (Some(1e4), Some(1e6))
        );
        // transformers 4: a pattern (every 6th layer global) and `rope_local_base_freq`.
        let four = gemma(
            json!({"sliding_window_pattern": 3, "rope_theta": 1e6, "rope_local_base_freq": 5e3}),
        )
        .unwrap();
        let global: Vec<usize> = (0..6).filter(|&l| four.window(l).is_none()).collect();
        assert_eq!(global, [2, 5]);
        assert_eq!(
            (four.rope_theta(0), four.rope_theta(2)),
            (Some(5e3), Some(1e6))
        );
        assert_eq!(four.attn_scale, 1.0 / 16.0);
        assert_eq!(four.extras.embed_scale, Some(640f64.sqrt()));
        assert_eq!(four.act, Activation::GeluTanh);
    }

    #[test]
    fn gemma_variants_it_cannot_run_are_refused_by_name() {
        for (extra, field) in [
            (
                json!({"final_logit_softcapping": 30.0}),
                "final_logit_softcapping",
            ),
            (
                json!({"use_bidirectional_attention": true}),
                "use_bidirectional_attention",
            ),
            (json!({"layer_types": ["sliding_attention"]}), "layer_types"),
            (
                json!({"rope_parameters": {"full_attention": {"rope_type": "yarn", "rope_theta": 1.0},
                "sliding_attention": {"rope_theta": 1.0}}}),
                "rope_type",
            ),
        ] {
            let err = gemma(extra).unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
    }
}
