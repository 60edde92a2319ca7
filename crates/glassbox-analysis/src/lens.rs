//! Logit lens and direct logit attribution (decoders), with TransformerLens's conventions for
//! the final norm.
//!
//! **Logit lens**: the residual stream before each block (and after the last) goes through the
//! final norm, with statistics recomputed from that residual, and the unembedding (bias
//! included): what the model would predict if it stopped there. This is TransformerLens's
//! `accumulated_resid(apply_ln=True)` followed by `model.unembed`.
//!
//! **Direct logit attribution**: at one position the final residual stream is the sum of the
//! token and position embeddings, each head's output `z_h · W_O[h]`, each attention output bias
//! and each MLP output. A piece's direct effect on the target is
//! `centre(piece) / scale · (w ⊙ u)`, where `u` is the unembedding column of the target token
//! (or the difference of two), `w` the final norm's weight (TransformerLens folds it into W_U),
//! and `scale` the final norm's divisor *of the whole residual stream* in the real run — the
//! cached `hook_scale` that TransformerLens's `apply_ln_to_stack` divides by, so pieces add up.
//! They sum exactly to the target logit minus a constant, `b · u + b_U` (final-norm bias and
//! unembedding bias), reported as `bias`. Value biases stay inside each head's output.

use glassbox_model::candle::{DType, Tensor, D};
use glassbox_model::{BlockHook, HookPoint, Hooks, Model};
use serde::Serialize;

use crate::error::{AnalysisError, Result};

/// A token as the tokenizer writes it in running text; `\s` stands for a leading space.
pub fn single_token(model: &Model, text: &str) -> Result<u32> {
    let t = text.replace("\\s", " ");
    let ids = model.tokenizer.encode_plain(&t)?;
    match ids.as_slice() {
        [id] => Ok(*id),
        _ => Err(AnalysisError::Mismatch(format!(
            "`{t}` is {} tokens; a target must be a single token (write a leading space as \\s, e.g. \\sParis)",
            ids.len()
        ))),
    }
}

fn decoder_parts(model: &Model) -> Result<&glassbox_model::ops::Linear> {
    model.unembed().ok_or_else(|| {
        AnalysisError::Mismatch(format!(
            "`{}` is an encoder without an unembedding; the logit lens and logit attribution need a decoder (gpt2, llama, qwen2)",
            model.config.model_type
        ))
    })
}

fn forward_recording(model: &Model, ids: &[u32], points: &[HookPoint]) -> Result<Recorded> {
    if ids.is_empty() {
        return Err(AnalysisError::Mismatch("the text has no tokens".into()));
    }
    let batch = model.batch_ids(&[ids.to_vec()])?;
    let mut hooks = Hooks::none().record_all(points.iter().copied());
    let out = model.forward(&batch, &mut hooks, None)?;
    let logits = out
        .logits
        .ok_or_else(|| AnalysisError::Mismatch("the model returned no logits".into()))?;
    Ok(Recorded {
        cache: hooks.into_cache(),
        logits: logits.squeeze(0)?,
    })
}

struct Recorded {
    cache: glassbox_model::ActivationCache,
    /// `[pos, vocab]`
    logits: Tensor,
}

impl Recorded {
    /// The recorded activation without its batch dimension.
    fn get(&self, point: HookPoint) -> Result<Tensor> {
        Ok(self
            .cache
            .get(&point)
            .ok_or_else(|| AnalysisError::Mismatch(format!("{point} was not recorded")))?
            .squeeze(0)?)
    }
}

/// The logit lens of one text: `logits[layer][pos][vocab]` for each residual stream read.
#[derive(Debug)]
pub struct Lens {
    /// `0_pre`, `1_pre`, …, `final_post` (TransformerLens's labels).
    pub labels: Vec<String>,
    /// `[labels, pos, vocab]`
    pub logits: Tensor,
}

pub fn logit_lens(model: &Model, ids: &[u32]) -> Result<Lens> {
    let unembed = decoder_parts(model)?;
    let n = model.config.n_layers;
    let mut points: Vec<HookPoint> = (0..n)
        .map(|l| HookPoint::Block(l, BlockHook::ResidPre))
        .collect();
    points.push(HookPoint::Block(n - 1, BlockHook::ResidPost));
    let run = forward_recording(model, ids, &points)?;
    let stack = Tensor::stack(
        &points
            .iter()
            .map(|&p| run.get(p))
            .collect::<Result<Vec<_>>>()?,
        0,
    )?;
    let normed = match model.final_norm() {
        Some(norm) => norm.forward(&stack)?,
        None => stack,
    };
    let mut labels: Vec<String> = (0..n).map(|l| format!("{l}_pre")).collect();
    labels.push("final_post".into());
    Ok(Lens {
        labels,
        logits: unembed.forward(&normed)?,
    })
}

/// One prediction of the lens.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub id: u32,
    pub token: String,
    pub prob: f32,
}

/// The lens as a person reads it: the top tokens per read-out and position, and how a chosen
/// token ranks.
#[derive(Debug, Clone, Serialize)]
pub struct LensTable {
    pub tokens: Vec<String>,
    pub labels: Vec<String>,
    /// `[label][pos]` → the top predictions.
    pub top: Vec<Vec<Vec<Prediction>>>,
    pub target: Option<TargetTrace>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetTrace {
    pub id: u32,
    pub token: String,
    /// `[label][pos]`, 1 = the top prediction.
    pub rank: Vec<Vec<usize>>,
    pub prob: Vec<Vec<f32>>,
}

impl Lens {
    pub fn table(
        &self,
        model: &Model,
        ids: &[u32],
        k: usize,
        target: Option<u32>,
    ) -> Result<LensTable> {
        let probs = softmax(&self.logits)?;
        let rows: Vec<Vec<Vec<f32>>> = probs.to_vec3()?;
        // Ranks are counted on logits: far-down probabilities underflow to 0 in f32 and tie.
        let logits: Vec<Vec<Vec<f32>>> = self.logits.to_dtype(DType::F32)?.to_vec3()?;
        let piece = |id: u32| model.tokenizer.piece(id);
        let top = rows
            .iter()
            .map(|per_pos| {
                per_pos
                    .iter()
                    .map(|p| {
                        let mut order: Vec<usize> = (0..p.len()).collect();
                        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
                        order
                            .into_iter()
                            .take(k)
                            .map(|i| Prediction {
                                id: i as u32,
                                token: piece(i as u32),
                                prob: p[i],
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let target = target.map(|t| {
            let at = |p: &Vec<f32>| p.get(t as usize).copied().unwrap_or(0.0);
            TargetTrace {
                id: t,
                token: piece(t),
                rank: logits
                    .iter()
                    .map(|per_pos| {
                        per_pos
                            .iter()
                            .map(|l| 1 + l.iter().filter(|&&q| q > at(l)).count())
                            .collect()
                    })
                    .collect(),
                prob: rows
                    .iter()
                    .map(|per_pos| per_pos.iter().map(at).collect())
                    .collect(),
            }
        });
        Ok(LensTable {
            tokens: ids.iter().map(|&t| piece(t)).collect(),
            labels: self.labels.clone(),
            top,
            target,
        })
    }
}

fn softmax(x: &Tensor) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let e = x.broadcast_sub(&x.max_keepdim(D::Minus1)?)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// What a direct logit attribution explains: one token's logit or the difference of two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitTarget {
    Token(u32),
    Diff(u32, u32),
}

impl LogitTarget {
    /// `target`'s logit, or with `minus` the difference `target − minus`; each one token
    /// (a leading space may be written `\s`).
    pub fn parse(model: &Model, target: &str, minus: Option<&str>) -> Result<LogitTarget> {
        let target = single_token(model, target)?;
        Ok(match minus {
            Some(b) => LogitTarget::Diff(target, single_token(model, b)?),
            None => LogitTarget::Token(target),
        })
    }

    /// As [`LogitTarget::parse`], with the model's top prediction at `position` (`None` = the
    /// last token) standing in for a `target` not given: direct logit attribution's default.
    pub fn parse_or_top(
        model: &Model,
        ids: &[u32],
        position: Option<usize>,
        target: Option<&str>,
        minus: Option<&str>,
    ) -> Result<LogitTarget> {
        if let Some(t) = target {
            return LogitTarget::parse(model, t, minus);
        }
        let top = top_prediction(model, ids, position)?;
        Ok(match minus {
            Some(b) => LogitTarget::Diff(top, single_token(model, b)?),
            None => LogitTarget::Token(top),
        })
    }

    /// The target's value in one row of logits (`[vocab]`), differentiable.
    pub(crate) fn of(self, logits: &Tensor) -> Result<Tensor> {
        Ok(match self {
            LogitTarget::Token(t) => logits.get(t as usize)?,
            LogitTarget::Diff(a, b) => (logits.get(a as usize)? - logits.get(b as usize)?)?,
        })
    }

    pub(crate) fn describe(self, model: &Model) -> String {
        let p = |t| format!("{:?}", model.tokenizer.piece(t));
        match self {
            LogitTarget::Token(t) => format!("logit {}", p(t)),
            LogitTarget::Diff(a, b) => format!("logit {} − logit {}", p(a), p(b)),
        }
    }

    /// `u` (`[d_model]`) and the unembedding bias term for this target.
    fn direction(self, unembed: &glassbox_model::ops::Linear) -> Result<(Tensor, f32)> {
        let column = |t: u32| -> Result<(Tensor, f32)> {
            let vocab = unembed.d_out();
            if t as usize >= vocab {
                return Err(AnalysisError::Mismatch(format!(
                    "token id {t} is outside the vocabulary of {vocab}"
                )));
            }
            let u = unembed.weight().narrow(1, t as usize, 1)?.squeeze(1)?;
            let b = match unembed.bias() {
                Some(b) => b
                    .get(t as usize)?
                    .to_dtype(DType::F32)?
                    .to_scalar::<f32>()?,
                None => 0.0,
            };
            Ok((u, b))
        };
        match self {
            LogitTarget::Token(t) => column(t),
            LogitTarget::Diff(a, b) => {
                let ((ua, ba), (ub, bb)) = (column(a)?, column(b)?);
                Ok(((ua - ub)?, ba - bb))
            }
        }
    }
}

/// One piece of the residual stream and its direct effect on the target.
#[derive(Debug, Clone, Serialize)]
pub struct Piece {
    /// `embed`, `pos_embed`, `L3H5` (layer 3 head 5), `L3 attn bias`, `L3 mlp`.
    pub label: String,
    pub layer: Option<usize>,
    pub head: Option<usize>,
    pub value: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Dla {
    pub position: usize,
    /// The input token at `position`.
    pub token: String,
    pub target: String,
    /// The model's own value of the target (logit or logit difference).
    pub logit: f32,
    /// The constant part: final-norm bias and unembedding bias along the target.
    pub bias: f32,
    /// The final norm's divisor at `position` (TransformerLens `ln_final.hook_scale`).
    pub scale: f32,
    /// In residual-stream order: embeddings, then per layer the heads, attention bias, MLP.
    pub pieces: Vec<Piece>,
}

impl Dla {
    /// Σ pieces + bias: equals `logit` up to rounding.
    pub fn total(&self) -> f32 {
        self.pieces.iter().map(|p| p.value).sum::<f32>() + self.bias
    }

    /// Per layer: the sum of its heads and attention bias, and its MLP.
    pub fn per_layer(&self, layers: usize) -> Vec<(f32, f32)> {
        let mut out = vec![(0.0, 0.0); layers];
        for p in &self.pieces {
            if let Some(l) = p.layer {
                if p.label.ends_with("mlp") {
                    out[l].1 += p.value;
                } else {
                    out[l].0 += p.value;
                }
            }
        }
        out
    }
}

/// The model's most likely next token at `position` (`None` = the last token): the default
/// target of direct logit attribution.
pub fn top_prediction(model: &Model, ids: &[u32], position: Option<usize>) -> Result<u32> {
    decoder_parts(model)?;
    let run = forward_recording(model, ids, &[])?;
    let last = ids.len() - 1;
    let pos = position.unwrap_or(last).min(last);
    Ok(run.logits.get(pos)?.argmax(0)?.to_scalar::<u32>()?)
}

/// Direct logit attribution at `position` (`None` = the last token).
pub fn direct_logit_attribution(
    model: &Model,
    ids: &[u32],
    position: Option<usize>,
    target: LogitTarget,
) -> Result<Dla> {
    let unembed = decoder_parts(model)?;
    if model.blocks().iter().any(|b| b.post_norm) {
        return Err(AnalysisError::Mismatch(
            "direct logit attribution needs a pre-norm decoder".into(),
        ));
    }
    let n = model.config.n_layers;
    let pos = position.unwrap_or(ids.len().saturating_sub(1));
    if pos >= ids.len() {
        return Err(AnalysisError::Mismatch(format!(
            "position {pos} is past the text's {} tokens",
            ids.len()
        )));
    }
    let mut points = vec![HookPoint::Embed, HookPoint::PosEmbed];
    for l in 0..n {
        points.push(HookPoint::Block(l, BlockHook::AttnZ));
        points.push(HookPoint::Block(l, BlockHook::MlpOut));
    }
    points.push(HookPoint::Block(n - 1, BlockHook::ResidPost));
    let run = forward_recording(model, ids, &points)?;
    let at = |p: HookPoint| -> Result<Option<Tensor>> {
        Ok(match run.cache.get(&p) {
            Some(t) => Some(t.squeeze(0)?.get(pos)?.to_dtype(DType::F32)?),
            None => None,
        })
    };

    let mut labels: Vec<(String, Option<usize>, Option<usize>)> = Vec::new();
    let mut vectors: Vec<Tensor> = Vec::new();
    let mut push = |label: String, layer, head, v: Tensor| {
        labels.push((label, layer, head));
        vectors.push(v);
    };
    for (p, name) in [
        (HookPoint::Embed, "embed"),
        (HookPoint::PosEmbed, "pos_embed"),
    ] {
        if let Some(v) = at(p)? {
            push(name.into(), None, None, v);
        }
    }
    for (l, block) in model.blocks().iter().enumerate() {
        let a = &block.attn;
        let z = at(HookPoint::Block(l, BlockHook::AttnZ))?
            .ok_or_else(|| AnalysisError::Mismatch(format!("layer {l}: hook_z missing")))?;
        // [h, 1, dh] · [h, dh, d] → each head's write into the residual stream.
        let w_o =
            a.o.weight()
                .to_dtype(DType::F32)?
                .reshape((a.n_heads, a.d_head, a.o.d_out()))?;
        let mut heads = z.unsqueeze(1)?.matmul(&w_o)?.squeeze(1)?;
        let mut bias = a.o.bias().map(|b| b.to_dtype(DType::F32)).transpose()?;
        // A norm on the attention output (Gemma) is linear given its scale at this position:
        // each head's write is scaled like the sum of them all.
        if let Some((norm, _)) = &block.out_norms {
            let total = match &bias {
                Some(b) => heads.sum(0)?.add(b)?,
                None => heads.sum(0)?,
            };
            let scale = norm
                .scale(&total.unsqueeze(0)?)?
                .flatten_all()?
                .get(0)?
                .to_scalar::<f32>()?;
            let w = (norm.weight().to_dtype(DType::F32)? / f64::from(scale))?;
            heads = heads.broadcast_mul(&w)?;
            bias = bias.map(|b| b.mul(&w)).transpose()?;
        }
        for h in 0..a.n_heads {
            push(format!("L{l}H{h}"), Some(l), Some(h), heads.get(h)?);
        }
        if let Some(b) = bias {
            push(format!("L{l} attn bias"), Some(l), None, b);
        }
        let mlp = at(HookPoint::Block(l, BlockHook::MlpOut))?
            .ok_or_else(|| AnalysisError::Mismatch(format!("layer {l}: hook_mlp_out missing")))?;
        push(format!("L{l} mlp"), Some(l), None, mlp);
    }

    let resid = at(HookPoint::Block(n - 1, BlockHook::ResidPost))?
        .ok_or_else(|| AnalysisError::Mismatch("final residual stream missing".into()))?;
    let (u_raw, unembed_bias) = target.direction(unembed)?;
    let u_raw = u_raw.to_dtype(DType::F32)?;
    let (u, scale, norm_bias) = match model.final_norm() {
        Some(norm) => {
            let w = norm.weight().to_dtype(DType::F32)?;
            let scale = norm
                .scale(&resid.unsqueeze(0)?)?
                .flatten_all()?
                .get(0)?
                .to_scalar::<f32>()?;
            let b = match norm.bias() {
                Some(b) => dot(&b.to_dtype(DType::F32)?, &u_raw)?,
                None => 0.0,
            };
            ((u_raw.mul(&w))?, scale, b)
        }
        None => (u_raw, 1.0, 0.0),
    };
    let stack = Tensor::stack(&vectors, 0)?;
    let stack = match model.final_norm() {
        Some(norm) => norm.centre(&stack)?,
        None => stack,
    };
    let values: Vec<f32> =
        (stack.matmul(&u.unsqueeze(1)?)?.squeeze(1)? / scale as f64)?.to_vec1()?;
    let logit = target
        .of(&run.logits.get(pos)?.to_dtype(DType::F32)?)?
        .to_scalar::<f32>()?;
    Ok(Dla {
        position: pos,
        token: model.tokenizer.piece(ids[pos]),
        target: target.describe(model),
        logit,
        bias: norm_bias + unembed_bias,
        scale,
        pieces: labels
            .into_iter()
            .zip(values)
            .map(|((label, layer, head), value)| Piece {
                label,
                layer,
                head,
                value,
            })
            .collect(),
    })
}

fn dot(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok(a.mul(b)?.sum_all()?.to_scalar::<f32>()?)
}
