//! Mapping each family's checkpoint names onto the shared [`Block`] (one function each).

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::Tensor;

use crate::block::{Attention, Block, Mlp};
use crate::config::{Architecture, ModelConfig, NormKind};
use crate::error::Result;
use crate::ops::{Linear, Norm, Rope};
use crate::weights::Weights;

/// Everything before the first block.
#[derive(Debug, Clone)]
pub struct Embeddings {
    /// `[vocab, d_model]`
    pub tok: Tensor,
    /// `[max_pos, d_model]`, learned-position models only.
    pub pos: Option<Tensor>,
    /// `[type_vocab, d_model]`, BERT only.
    pub token_type: Option<Tensor>,
    /// BERT normalises the summed embeddings.
    pub norm: Option<Norm>,
    /// Gemma multiplies the token embedding by √d_model.
    pub scale: Option<f64>,
}

/// The parts of a model, in forward order.
pub struct Parts {
    pub embed: Embeddings,
    pub blocks: Vec<Block>,
    pub final_norm: Option<Norm>,
    pub unembed: Option<Linear>,
}

pub fn load(cfg: &ModelConfig, w: &Weights) -> Result<Parts> {
    match cfg.arch {
        Architecture::Bert => bert(cfg, w),
        Architecture::Gpt2 => gpt2(cfg, w),
        Architecture::Llama | Architecture::Gemma3 => rotary_decoder(cfg, w),
    }
}

/// Helpers bound to one checkpoint and name prefix.
struct Loader<'a> {
    w: &'a Weights<'a>,
    prefix: &'static str,
    cfg: &'a ModelConfig,
}

impl Loader<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.w.get(&format!("{}{name}", self.prefix), shape)
    }

    /// A PyTorch `nn.Linear` at `name` (with its quantised blocks, from a GGUF file).
    fn linear(&self, name: &str, d_out: usize, d_in: usize, bias: bool) -> Result<Linear> {
        let weight = format!("{name}.weight");
        let w = self.get(&weight, &[d_out, d_in])?;
        let b = if bias {
            Some(self.get(&format!("{name}.bias"), &[d_out])?)
        } else {
            None
        };
        let q = self
            .w
            .get_quantized(&format!("{}{weight}", self.prefix), d_out, d_in);
        Ok(Linear::from_torch(w, b)?.with_quantized(q))
    }

    fn norm(&self, name: &str, weight: &str, bias: Option<&str>) -> Result<Norm> {
        self.norm_of_width(name, weight, bias, self.cfg.d_model)
    }

    /// A norm over `width` features, its weight shifted by the config's offset (Gemma's `1 + w`).
    fn norm_of_width(
        &self,
        name: &str,
        weight: &str,
        bias: Option<&str>,
        width: usize,
    ) -> Result<Norm> {
        let mut w = self.get(&format!("{name}.{weight}"), &[width])?;
        if self.cfg.extras.norm_weight_offset != 0.0 {
            w = (w + self.cfg.extras.norm_weight_offset)?;
        }
        let b = match bias {
            Some(b) => Some(self.get(&format!("{name}.{b}"), &[width])?),
            None => None,
        };
        Ok(Norm::new(self.cfg.norm, w, b, self.cfg.norm_eps))
    }
}

fn prefix_of(w: &Weights, candidates: &[&'static str], probe: &str) -> &'static str {
    candidates
        .iter()
        .find(|p| w.contains(&format!("{p}{probe}")))
        .copied()
        .unwrap_or(candidates[0])
}

fn bert(cfg: &ModelConfig, w: &Weights) -> Result<Parts> {
    let l = Loader {
        w,
        prefix: prefix_of(w, &["", "bert."], "embeddings.word_embeddings.weight"),
        cfg,
    };
    let (d, h) = (cfg.d_model, cfg.n_heads * cfg.d_head);
    let embed = Embeddings {
        tok: l.get("embeddings.word_embeddings.weight", &[cfg.vocab_size, d])?,
        pos: Some(l.get(
            "embeddings.position_embeddings.weight",
            &[cfg.max_positions, d],
        )?),
        token_type: if cfg.type_vocab_size > 0 {
            Some(l.get(
                "embeddings.token_type_embeddings.weight",
                &[cfg.type_vocab_size, d],
            )?)
        } else {
            None
        },
        norm: Some(l.norm("embeddings.LayerNorm", "weight", Some("bias"))?),
        scale: None,
    };
    let blocks = (0..cfg.n_layers)
        .map(|i| {
            let p = format!("encoder.layer.{i}");
            Ok(Block {
                layer: i,
                attn: Attention::new(
                    l.linear(&format!("{p}.attention.self.query"), h, d, true)?,
                    l.linear(&format!("{p}.attention.self.key"), h, d, true)?,
                    l.linear(&format!("{p}.attention.self.value"), h, d, true)?,
                    l.linear(&format!("{p}.attention.output.dense"), d, h, true)?,
                    cfg.n_heads,
                    cfg.n_kv_heads,
                    cfg.d_head,
                ),
                ln1: l.norm(
                    &format!("{p}.attention.output.LayerNorm"),
                    "weight",
                    Some("bias"),
                )?,
                mlp: Mlp::Standard {
                    fc_in: l.linear(&format!("{p}.intermediate.dense"), cfg.d_mlp, d, true)?,
                    fc_out: l.linear(&format!("{p}.output.dense"), d, cfg.d_mlp, true)?,
                    act: cfg.act,
                },
                ln2: l.norm(&format!("{p}.output.LayerNorm"), "weight", Some("bias"))?,
                post_norm: true,
                out_norms: None,
            })
        })
        .collect::<Result<_>>()?;
    Ok(Parts {
        embed,
        blocks,
        final_norm: None,
        unembed: None,
    })
}

fn gpt2(cfg: &ModelConfig, w: &Weights) -> Result<Parts> {
    let l = Loader {
        w,
        prefix: prefix_of(w, &["", "transformer."], "wte.weight"),
        cfg,
    };
    let d = cfg.d_model;
    // GPT-2 stores its projections as Conv1D, already `[d_in, d_out]`.
    let conv = |name: &str, d_in: usize, d_out: usize| -> Result<Linear> {
        Ok(Linear::from_in_out(
            l.get(&format!("{name}.weight"), &[d_in, d_out])?,
            Some(l.get(&format!("{name}.bias"), &[d_out])?),
        ))
    };
    let wte = l.get("wte.weight", &[cfg.vocab_size, d])?;
    let embed = Embeddings {
        tok: wte.clone(),
        pos: Some(l.get("wpe.weight", &[cfg.max_positions, d])?),
        token_type: None,
        norm: None,
        scale: None,
    };
    let blocks = (0..cfg.n_layers)
        .map(|i| {
            let p = format!("h.{i}");
            let qkv = conv(&format!("{p}.attn.c_attn"), d, 3 * d)?;
            let bias = qkv
                .bias()
                .ok_or_else(|| candle_core::Error::Msg("c_attn has no bias".into()))?;
            let part = |j: usize| -> Result<Linear> {
                Ok(Linear::from_in_out(
                    qkv.weight().narrow(1, j * d, d)?.contiguous()?,
                    Some(bias.narrow(0, j * d, d)?.contiguous()?),
                ))
            };
            Ok(Block {
                layer: i,
                ln1: l.norm(&format!("{p}.ln_1"), "weight", Some("bias"))?,
                attn: Attention::new(
                    part(0)?,
                    part(1)?,
                    part(2)?,
                    conv(&format!("{p}.attn.c_proj"), d, d)?,
                    cfg.n_heads,
                    cfg.n_kv_heads,
                    cfg.d_head,
                ),
                ln2: l.norm(&format!("{p}.ln_2"), "weight", Some("bias"))?,
                mlp: Mlp::Standard {
                    fc_in: conv(&format!("{p}.mlp.c_fc"), d, cfg.d_mlp)?,
                    fc_out: conv(&format!("{p}.mlp.c_proj"), cfg.d_mlp, d)?,
                    act: cfg.act,
                },
                post_norm: false,
                out_norms: None,
            })
        })
        .collect::<Result<_>>()?;
    Ok(Parts {
        embed,
        blocks,
        final_norm: Some(l.norm("ln_f", "weight", Some("bias"))?),
        // Tied to the token embedding.
        unembed: Some(Linear::from_torch(wte, None)?),
    })
}

/// Llama-family decoders (Llama, Qwen2, SmolLM) and Gemma 3, which adds QK-norm, norms on
/// the attention and MLP outputs, a scaled embedding and per-layer windows and RoPE bases.
fn rotary_decoder(cfg: &ModelConfig, w: &Weights) -> Result<Parts> {
    let l = Loader {
        w,
        prefix: "model.",
        cfg,
    };
    let (d, h, kv) = (
        cfg.d_model,
        cfg.n_heads * cfg.d_head,
        cfg.n_kv_heads * cfg.d_head,
    );
    debug_assert_eq!(cfg.norm, NormKind::RmsNorm);
    // One rotary table per distinct base, shared by the layers that use it.
    let mut ropes: BTreeMap<u64, Arc<Rope>> = BTreeMap::new();
    let mut rope_of = |layer: usize| -> Result<Option<Arc<Rope>>> {
        let Some(theta) = cfg.rope_theta(layer) else {
            return Ok(None);
        };
        if let Some(r) = ropes.get(&theta.to_bits()) {
            return Ok(Some(r.clone()));
        }
        let r = Arc::new(Rope::new(cfg.d_head, cfg.max_positions, theta, w.device())?);
        ropes.insert(theta.to_bits(), r.clone());
        Ok(Some(r))
    };
    // Gemma's `post_attention_layernorm` normalises the attention output; Llama's is the
    // norm before the MLP.
    let pre_mlp_norm = if cfg.extras.sandwich_norms {
        "pre_feedforward_layernorm"
    } else {
        "post_attention_layernorm"
    };
    let tok = l.get("embed_tokens.weight", &[cfg.vocab_size, d])?;
    let blocks = (0..cfg.n_layers)
        .map(|i| {
            let p = format!("layers.{i}");
            let lin = |name: &str, o: usize, n: usize, bias: bool| {
                l.linear(&format!("{p}.{name}"), o, n, bias)
            };
            let norm = |name: &str| l.norm(&format!("{p}.{name}"), "weight", None);
            let head_norm =
                |name: &str| l.norm_of_width(&format!("{p}.{name}"), "weight", None, cfg.d_head);
            let attn = Attention {
                scale: cfg.attn_scale,
                qk_norm: if cfg.extras.qk_norm {
                    Some((
                        head_norm("self_attn.q_norm")?,
                        head_norm("self_attn.k_norm")?,
                    ))
                } else {
                    None
                },
                rope: rope_of(i)?,
                window: cfg.window(i),
                ..Attention::new(
                    lin("self_attn.q_proj", h, d, cfg.qkv_bias)?,
                    lin("self_attn.k_proj", kv, d, cfg.qkv_bias)?,
                    lin("self_attn.v_proj", kv, d, cfg.qkv_bias)?,
                    lin("self_attn.o_proj", d, h, cfg.o_bias)?,
                    cfg.n_heads,
                    cfg.n_kv_heads,
                    cfg.d_head,
                )
            };
            Ok(Block {
                layer: i,
                ln1: norm("input_layernorm")?,
                attn,
                ln2: norm(pre_mlp_norm)?,
                mlp: Mlp::Gated {
                    gate: lin("mlp.gate_proj", cfg.d_mlp, d, cfg.mlp_bias)?,
                    up: lin("mlp.up_proj", cfg.d_mlp, d, cfg.mlp_bias)?,
                    down: lin("mlp.down_proj", d, cfg.d_mlp, cfg.mlp_bias)?,
                    act: cfg.act,
                },
                post_norm: false,
                out_norms: if cfg.extras.sandwich_norms {
                    Some((
                        norm("post_attention_layernorm")?,
                        norm("post_feedforward_layernorm")?,
                    ))
                } else {
                    None
                },
            })
        })
        .collect::<Result<_>>()?;
    let (v, name) = (
        cfg.vocab_size,
        if cfg.tie_embeddings {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        },
    );
    let unembed = if cfg.tie_embeddings {
        Linear::from_torch(tok.clone(), None)?
    } else {
        Linear::from_torch(w.get(name, &[v, d])?, None)?
    }
    .with_quantized(w.get_quantized(name, v, d));
    Ok(Parts {
        embed: Embeddings {
            tok,
            pos: None,
            token_type: None,
            norm: None,
            scale: cfg.extras.embed_scale,
        },
        blocks,
        final_norm: Some(l.norm("norm", "weight", None)?),
        unembed: Some(unembed),
    })
}
