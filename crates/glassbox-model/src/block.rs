//! The one transformer block every architecture maps onto. Where the norms sit (pre, post or
//! both sides), which norm, the positional scheme, the attention window and the MLP's shape are
//! data, not separate code paths.

use std::sync::Arc;

use candle_core::Tensor;

use crate::config::Activation;
use crate::error::Result;
use crate::hooks::{BlockHook, HookPoint, Hooks};
use crate::ops::{self, AttnMask, Linear, Norm, Rope};

#[derive(Debug, Clone)]
pub struct Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub d_head: usize,
    /// Scores are `q·k · scale`.
    pub scale: f64,
    /// RMSNorm of each head's query and key before RoPE (Gemma 3); `hook_q`/`hook_k` see
    /// the normed vectors.
    pub qk_norm: Option<(Norm, Norm)>,
    /// This layer's rotary table (layers may differ in RoPE base); `None`: no rotary positions.
    pub rope: Option<Arc<Rope>>,
    /// Sliding-window layers: a query sees this many positions up to itself.
    pub window: Option<usize>,
}

impl Attention {
    /// A plain multi-head attention: `1/√d_head` scale, every earlier key, no rotary table.
    pub fn new(
        q: Linear,
        k: Linear,
        v: Linear,
        o: Linear,
        n_heads: usize,
        n_kv_heads: usize,
        d_head: usize,
    ) -> Self {
        Self {
            q,
            k,
            v,
            o,
            n_heads,
            n_kv_heads,
            d_head,
            scale: 1.0 / (d_head as f64).sqrt(),
            qk_norm: None,
            rope: None,
            window: None,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Mlp {
    /// `out(act(in(x)))`
    Standard {
        fc_in: Linear,
        fc_out: Linear,
        act: Activation,
    },
    /// `down(act(gate(x)) * up(x))`
    Gated {
        gate: Linear,
        up: Linear,
        down: Linear,
        act: Activation,
    },
}

#[derive(Debug, Clone)]
pub struct Block {
    pub layer: usize,
    /// Pre-norm: before attention. Post-norm: after the attention residual add.
    pub ln1: Norm,
    /// Pre-norm: before the MLP. Post-norm: after the MLP residual add.
    pub ln2: Norm,
    pub attn: Attention,
    pub mlp: Mlp,
    pub post_norm: bool,
    /// Norms of the attention and MLP outputs before the residual add (Gemma's sandwich
    /// norms); `hook_attn_out` and `hook_mlp_out` see the normed outputs, what is added.
    pub out_norms: Option<(Norm, Norm)>,
}

/// Per-call state shared by the blocks of one forward pass.
pub struct Pass<'h, 'a> {
    pub hooks: &'h mut Hooks<'a>,
    pub mask: AttnMask,
    /// Number of positions already in the KV cache.
    pub offset: usize,
}

/// Keys and values of earlier positions for one layer: buffers of `[batch, capacity, kv_heads,
/// d_head]` whose first `len` positions are filled. They grow by doubling (in blocks of
/// [`LayerCache::BLOCK`]), so a new token costs a copy of itself, not of the whole cache; for a
/// batch of one, attention reads the filled part in place. Not `Clone`: appending writes into
/// the buffers, and a clone would share them.
#[derive(Debug, Default)]
pub struct LayerCache {
    kv: Option<(Tensor, Tensor)>,
    len: usize,
}

impl LayerCache {
    pub const BLOCK: usize = 256;

    /// Appends `[batch, t, kv_heads, d_head]` keys and values; returns all of them so far.
    fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, t, h, d) = k.dims4()?;
        let need = self.len + t;
        let capacity = self.kv.as_ref().map_or(0, |(k, _)| k.dims()[1]);
        if need > capacity {
            let capacity = need.max(2 * capacity).next_multiple_of(Self::BLOCK);
            let grow = |old: Option<&Tensor>| -> Result<Tensor> {
                let buf = Tensor::zeros((b, capacity, h, d), k.dtype(), k.device())?;
                if let Some(old) = old {
                    buf.slice_set(&old.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                }
                Ok(buf)
            };
            let (old_k, old_v) = (
                self.kv.as_ref().map(|x| &x.0),
                self.kv.as_ref().map(|x| &x.1),
            );
            self.kv = Some((grow(old_k)?, grow(old_v)?));
        }
        let Some((kb, vb)) = &self.kv else {
            unreachable!("allocated above")
        };
        kb.slice_set(&k.contiguous()?, 1, self.len)?;
        vb.slice_set(&v.contiguous()?, 1, self.len)?;
        self.len = need;
        Ok((kb.narrow(1, 0, need)?, vb.narrow(1, 0, need)?))
    }

    /// Forgets every position from `len` on (the buffers keep their room).
    pub(crate) fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Positions the buffers hold room for (for tests of the growth policy).
    pub fn capacity(&self) -> usize {
        self.kv.as_ref().map_or(0, |(k, _)| k.dims()[1])
    }
}

impl Block {
    fn hook(&self, pass: &mut Pass, hook: BlockHook, t: Tensor) -> Result<Tensor> {
        pass.hooks.at(HookPoint::Block(self.layer, hook), t)
    }

    fn norm(norm: &Norm, x: &Tensor, pass: &Pass) -> Result<Tensor> {
        if pass.hooks.frozen() {
            norm.forward_frozen(x)
        } else {
            norm.forward(x)
        }
    }

    pub fn forward(
        &self,
        x: Tensor,
        pass: &mut Pass,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let resid_pre = self.hook(pass, BlockHook::ResidPre, x)?;
        if self.post_norm {
            let attn_out = self.attention(&resid_pre, pass, cache)?;
            let resid_mid =
                self.hook(pass, BlockHook::ResidMid, ops::add(&resid_pre, &attn_out)?)?;
            let normed = Self::norm(&self.ln1, &resid_mid, pass)?;
            let mlp_out = self.mlp(&normed, pass)?;
            let resid_post = self.hook(pass, BlockHook::ResidPost, ops::add(&normed, &mlp_out)?)?;
            self.hook(
                pass,
                BlockHook::NormalizedResidPost,
                Self::norm(&self.ln2, &resid_post, pass)?,
            )
        } else {
            let attn_out =
                self.attention(&Self::norm(&self.ln1, &resid_pre, pass)?, pass, cache)?;
            let resid_mid =
                self.hook(pass, BlockHook::ResidMid, ops::add(&resid_pre, &attn_out)?)?;
            let mlp_out = self.mlp(&Self::norm(&self.ln2, &resid_mid, pass)?, pass)?;
            self.hook(pass, BlockHook::ResidPost, ops::add(&resid_mid, &mlp_out)?)
        }
    }

    fn attention(
        &self,
        x: &Tensor,
        pass: &mut Pass,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let a = &self.attn;
        let (b, t, _) = x.dims3()?;
        let q = a.q.forward(x)?.reshape((b, t, a.n_heads, a.d_head))?;
        let k = a.k.forward(x)?.reshape((b, t, a.n_kv_heads, a.d_head))?;
        let (q, k) = match &a.qk_norm {
            Some((q_norm, k_norm)) => {
                (Self::norm(q_norm, &q, pass)?, Self::norm(k_norm, &k, pass)?)
            }
            None => (q, k),
        };
        let q = self.hook(pass, BlockHook::AttnQ, q)?;
        let k = self.hook(pass, BlockHook::AttnK, k)?;
        let v = self.hook(
            pass,
            BlockHook::AttnV,
            a.v.forward(x)?.reshape((b, t, a.n_kv_heads, a.d_head))?,
        )?;
        let (q, k) = match &a.rope {
            Some(rope) => (
                self.hook(pass, BlockHook::AttnRotQ, rope.apply(&q, pass.offset)?)?,
                self.hook(pass, BlockHook::AttnRotK, rope.apply(&k, pass.offset)?)?,
            ),
            None => (q, k),
        };
        let (k, v) = match cache {
            Some(c) => c.append(&k, &v)?,
            None => (k, v),
        };
        let scale = a.scale;
        let mask = AttnMask {
            window: a.window,
            ..pass.mask.clone()
        };
        let (scores_at, pattern_at) = (
            HookPoint::Block(self.layer, BlockHook::AttnScores),
            HookPoint::Block(self.layer, BlockHook::AttnPattern),
        );
        // Editing scores or pattern needs them as tensors in the computation; reading them
        // does not, the fused kernel hands out copies.
        let edits_pattern = pass.hooks.replaces(scores_at)
            || pass.hooks.replaces(pattern_at)
            || pass.hooks.frozen();
        let fused = if edits_pattern {
            None
        } else {
            let (scores, pattern) = (pass.hooks.wants(scores_at), pass.hooks.wants(pattern_at));
            ops::attention_fused(&q, &k, &v, &mask, scale as f32, scores, pattern)?
        };
        let z = match fused {
            Some(a) => {
                for (point, t) in [(scores_at, a.scores), (pattern_at, a.pattern)] {
                    if let Some(t) = t {
                        pass.hooks.at(point, t)?;
                    }
                }
                a.z
            }
            None => self.attention_materialised(&q, &k, &v, &mask, pass, scale)?,
        };
        let z = self.hook(pass, BlockHook::AttnZ, z)?;
        let out = a.o.forward(&z.reshape((b, t, a.n_heads * a.d_head))?)?;
        let out = match &self.out_norms {
            Some((attn_norm, _)) => Self::norm(attn_norm, &out, pass)?,
            None => out,
        };
        self.hook(pass, BlockHook::AttnOut, out)
    }

    /// Attention with the score and pattern tensors built, so hooks can see and edit them.
    fn attention_materialised(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &AttnMask,
        pass: &mut Pass,
        scale: f64,
    ) -> Result<Tensor> {
        let a = &self.attn;
        let group = a.n_heads / a.n_kv_heads;
        // [b, s, kvh, dh] → [b, h, s, dh], each kv head shared by `group` query heads.
        let per_head = |x: &Tensor| -> Result<Tensor> {
            let (b, s, kvh, dh) = x.dims4()?;
            let x = x.transpose(1, 2)?;
            let x = if group > 1 {
                x.unsqueeze(2)?
                    .broadcast_as((b, kvh, group, s, dh))?
                    .reshape((b, kvh * group, s, dh))?
            } else {
                x
            };
            Ok(x.contiguous()?)
        };
        let q = q.transpose(1, 2)?.contiguous()?;
        let (k, v) = (per_head(k)?, per_head(v)?);
        let scores = ops::attention_scores(&q, &k, mask, scale)?;
        let scores = self.hook(pass, BlockHook::AttnScores, scores)?;
        let pattern = ops::softmax_last_dim(&scores)?;
        let pattern = if pass.hooks.frozen() {
            pattern.detach()
        } else {
            pattern
        };
        let pattern = self.hook(pass, BlockHook::AttnPattern, pattern)?;
        Ok(pattern.matmul(&v)?.transpose(1, 2)?.contiguous()?)
    }

    fn mlp(&self, x: &Tensor, pass: &mut Pass) -> Result<Tensor> {
        let pre = HookPoint::Block(self.layer, BlockHook::MlpPre);
        let post = match &self.mlp {
            Mlp::Standard { fc_in, act, .. } if !pass.hooks.wants(pre) => {
                fc_in.forward_act(x, Some(*act))?
            }
            Mlp::Standard { fc_in, act, .. } => ops::activate(
                &self.hook(pass, BlockHook::MlpPre, fc_in.forward(x)?)?,
                *act,
            )?,
            Mlp::Gated { gate, up, act, .. } => {
                let g = self.hook(pass, BlockHook::MlpPre, gate.forward(x)?)?;
                let u = self.hook(pass, BlockHook::MlpPreLinear, up.forward(x)?)?;
                ops::gated(&g, &u, *act)?
            }
        };
        let post = self.hook(pass, BlockHook::MlpPost, post)?;
        let out = match &self.mlp {
            Mlp::Standard { fc_out, .. } => fc_out.forward(&post)?,
            Mlp::Gated { down, .. } => down.forward(&post)?,
        };
        let out = match &self.out_norms {
            Some((_, mlp_norm)) => Self::norm(mlp_norm, &out, pass)?,
            None => out,
        };
        self.hook(pass, BlockHook::MlpOut, out)
    }

    /// The block's hook points, for listing and validating names.
    pub fn hook_points(&self) -> Vec<HookPoint> {
        BlockHook::ALL
            .iter()
            .filter(|h| match h {
                BlockHook::AttnRotQ | BlockHook::AttnRotK => self.attn.rope.is_some(),
                BlockHook::MlpPreLinear => matches!(self.mlp, Mlp::Gated { .. }),
                BlockHook::NormalizedResidPost => self.post_norm,
                _ => true,
            })
            .map(|h| HookPoint::Block(self.layer, *h))
            .collect()
    }
}
