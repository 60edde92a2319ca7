//! Tensor-level operations of the forward pass. On CPU with f32 they run the fused kernels
//! of `crate::kernels`; elsewhere (CUDA), and wherever an input is part of a candle autograd
//! graph, they are composed from candle ops, so gradient-based attribution can backpropagate
//! through the very same forward pass.

use std::sync::Arc;

use candle_core::{CpuStorage, DType, Device, Storage, Tensor, D};

use crate::config::{Activation, NormKind};
use crate::error::Result;
use crate::kernels;
use crate::quant::QuantWeight;

/// Whether the fused kernels may run: CPU f32, and no gradient is wanted through `t`
/// (the kernels work on raw slices, outside candle's autograd graph).
fn is_cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && !t.track_op()
}

/// Runs `f` on the f32 data of a CPU tensor, made contiguous first if needed.
fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("tensor is not contiguous".into()))?;
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => Ok(f(&v[start..end])),
        _ => Err(candle_core::Error::Msg("expected an f32 CPU tensor".into()).into()),
    }
}

/// An owned copy of a CPU tensor's data, for the in-place kernels.
fn owned(t: &Tensor) -> Result<Vec<f32>> {
    with_slice(t, <[f32]>::to_vec)
}

fn cpu_tensor(data: Vec<f32>, dims: &[usize]) -> Result<Tensor> {
    Ok(Tensor::from_vec(data, dims, &Device::Cpu)?)
}

/// Inputs of at most this many rows (decoding) use the quantised weights where there are
/// some; more rows (prefill) are compute-bound and run the dense GEMM.
const QUANT_MAX_ROWS: usize = 8;

/// A dense layer `x · W + b`, with W kept as `[d_in, d_out]`, and optionally the same weights
/// quantised (from a GGUF file) for few-row inputs.
#[derive(Debug, Clone)]
pub struct Linear {
    w: Tensor,
    b: Option<Tensor>,
    q: Option<Arc<QuantWeight>>,
}

impl Linear {
    /// From a PyTorch `nn.Linear` weight, `[d_out, d_in]`.
    pub fn from_torch(w: Tensor, b: Option<Tensor>) -> Result<Self> {
        Ok(Self {
            w: w.t()?.contiguous()?,
            b,
            q: None,
        })
    }

    /// From a weight already laid out `[d_in, d_out]` (GPT-2's Conv1D).
    pub fn from_in_out(w: Tensor, b: Option<Tensor>) -> Self {
        Self { w, b, q: None }
    }

    /// Also keeps `q`, the same weights quantised (`[d_out, d_in]`), for decoding.
    pub fn with_quantized(mut self, q: Option<QuantWeight>) -> Self {
        self.q = q
            .filter(|q| q.rows == self.d_out() && q.cols == self.d_in())
            .map(Arc::new);
        self
    }

    pub fn is_quantized(&self) -> bool {
        self.q.is_some()
    }

    pub fn d_in(&self) -> usize {
        self.w.dims()[0]
    }

    pub fn d_out(&self) -> usize {
        self.w.dims()[1]
    }

    /// `[d_in, d_out]`
    pub fn weight(&self) -> &Tensor {
        &self.w
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.b.as_ref()
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, None)
    }

    /// `act(x · W + b)` in one pass over the output where the kernels allow it.
    pub fn forward_act(&self, x: &Tensor, act: Option<Activation>) -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        let d_in = dims.pop().unwrap_or(0);
        let m: usize = dims.iter().product();
        dims.push(self.d_out());
        if let Some(q) = self
            .q
            .as_ref()
            .filter(|_| m <= QUANT_MAX_ROWS && is_cpu_f32(x))
        {
            let mut out = with_slice(x, |xs| match &self.b {
                Some(b) => with_slice(b, |bs| q.matmul(xs, m, Some(bs))),
                None => Ok(q.matmul(xs, m, None)),
            })??;
            if let Some(act) = act {
                kernels::activate(&mut out, act);
            }
            return cpu_tensor(out, &dims);
        }
        if is_cpu_f32(x) {
            let mut out = with_slice(x, |xs| {
                with_slice(&self.w, |ws| match &self.b {
                    Some(b) => with_slice(b, |bs| {
                        kernels::linear(xs, ws, Some(bs), m, d_in, self.d_out())
                    }),
                    None => Ok(kernels::linear(xs, ws, None, m, d_in, self.d_out())),
                })
            })???;
            if let Some(act) = act {
                kernels::activate(&mut out, act);
            }
            return cpu_tensor(out, &dims);
        }
        let mut y = x.reshape((m, d_in))?.matmul(&self.w)?;
        if let Some(b) = &self.b {
            y = y.broadcast_add(b)?;
        }
        let y = y.reshape(dims)?;
        match act {
            Some(act) => activate(&y, act),
            None => Ok(y),
        }
    }
}

pub fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    if is_cpu_f32(x) {
        let mut v = owned(x)?;
        kernels::activate(&mut v, act);
        return cpu_tensor(v, x.dims());
    }
    Ok(match act {
        Activation::GeluErf => x.gelu_erf()?,
        Activation::GeluTanh => x.gelu()?,
        Activation::Silu => x.silu()?,
        Activation::Relu => x.relu()?,
    })
}

/// `act(gate) * up` (gated MLPs).
pub fn gated(gate: &Tensor, up: &Tensor, act: Activation) -> Result<Tensor> {
    if is_cpu_f32(gate) && is_cpu_f32(up) {
        let mut g = owned(gate)?;
        with_slice(up, |u| kernels::gated(&mut g, u, act))?;
        return cpu_tensor(g, gate.dims());
    }
    Ok((activate(gate, act)? * up)?)
}

pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if is_cpu_f32(a) && is_cpu_f32(b) && a.dims() == b.dims() {
        let mut v = owned(a)?;
        with_slice(b, |bs| kernels::add_assign(&mut v, bs))?;
        return cpu_tensor(v, a.dims());
    }
    Ok(a.broadcast_add(b)?)
}

/// LayerNorm or RMSNorm over the last dimension.
#[derive(Debug, Clone)]
pub struct Norm {
    kind: NormKind,
    w: Tensor,
    b: Option<Tensor>,
    eps: f64,
}

impl Norm {
    pub fn new(kind: NormKind, w: Tensor, b: Option<Tensor>, eps: f64) -> Self {
        Self { kind, w, b, eps }
    }

    pub fn kind(&self) -> NormKind {
        self.kind
    }

    /// `[d_model]`
    pub fn weight(&self) -> &Tensor {
        &self.w
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.b.as_ref()
    }

    /// Subtracts the mean over the last dimension for LayerNorm; RMSNorm does not centre.
    pub fn centre(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.kind {
            NormKind::LayerNorm => x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?,
            NormKind::RmsNorm => x.clone(),
        })
    }

    /// The norm with its scale treated as a constant by backpropagation (same value).
    pub fn forward_frozen(&self, x: &Tensor) -> Result<Tensor> {
        let y = self
            .centre(x)?
            .broadcast_div(&self.scale(x)?.detach())?
            .broadcast_mul(&self.w)?;
        Ok(match &self.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// The divisor the norm applies to `x`, `[..., 1]`: `sqrt(mean(centre(x)²) + eps)`
    /// (TransformerLens's `hook_scale`).
    pub fn scale(&self, x: &Tensor) -> Result<Tensor> {
        Ok((self.centre(x)?.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let d = self.w.dims()[0];
        if is_cpu_f32(x) {
            let mut v = owned(x)?;
            with_slice(&self.w, |w| match (self.kind, &self.b) {
                (NormKind::LayerNorm, Some(b)) => {
                    with_slice(b, |b| kernels::layer_norm(&mut v, d, w, b, self.eps as f32))
                }
                (NormKind::LayerNorm, None) => {
                    kernels::layer_norm(&mut v, d, w, &vec![0.0; d], self.eps as f32);
                    Ok(())
                }
                (NormKind::RmsNorm, _) => {
                    kernels::rms_norm(&mut v, d, w, self.eps as f32);
                    Ok(())
                }
            })??;
            return cpu_tensor(v, x.dims());
        }
        let y = self
            .centre(x)?
            .broadcast_div(&self.scale(x)?)?
            .broadcast_mul(&self.w)?;
        Ok(match &self.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// Rotary position tables, `[max_pos, d_head / 2]`.
#[derive(Debug, Clone)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    pub fn new(d_head: usize, max_pos: usize, theta: f64, device: &Device) -> Result<Self> {
        let half = d_head / 2;
        let (mut cos, mut sin) = (
            Vec::with_capacity(max_pos * half),
            Vec::with_capacity(max_pos * half),
        );
        for p in 0..max_pos {
            for i in 0..half {
                // Same f32 rounding of the inverse frequency as the reference.
                let inv_freq = (1.0 / theta.powf((2 * i) as f64 / d_head as f64)) as f32;
                let angle = p as f32 * inv_freq;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (max_pos, half), device)?,
            sin: Tensor::from_vec(sin, (max_pos, half), device)?,
        })
    }

    /// Rotates `[batch, pos, heads, d_head]` for positions `offset..offset + pos`.
    pub fn apply(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let (_, pos, heads, d_head) = x.dims4()?;
        if offset + pos > self.cos.dims()[0] {
            return Err(crate::ModelError::Input(format!(
                "position {} is past the model's {} positions",
                offset + pos,
                self.cos.dims()[0]
            )));
        }
        if is_cpu_f32(x) {
            let mut v = owned(x)?;
            with_slice(&self.cos, |c| {
                with_slice(&self.sin, |s| {
                    kernels::rope(&mut v, pos, heads, d_head, offset, c, s)
                })
            })??;
            return cpu_tensor(v, x.dims());
        }
        let half = d_head / 2;
        let cos = self
            .cos
            .narrow(0, offset, pos)?
            .reshape((1, pos, 1, half))?;
        let sin = self
            .sin
            .narrow(0, offset, pos)?
            .reshape((1, pos, 1, half))?;
        let x1 = x.narrow(3, 0, half)?;
        let x2 = x.narrow(3, half, half)?;
        let a = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
        let b = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
        Ok(Tensor::cat(&[a, b], 3)?)
    }
}

/// Which keys each query may see: causal order, a sliding window and/or a key padding mask
/// `[batch, kv_len]` (1 = attend).
#[derive(Debug, Clone, Default)]
pub struct AttnMask {
    pub causal: bool,
    pub keys: Option<Vec<u8>>,
    /// A query sees only the last `window` positions up to itself (sliding-window layers).
    pub window: Option<usize>,
}

/// Output of [`attention_fused`]: z `[b, t, h, dh]`, and scores / pattern `[b, h, t, s]` when asked.
pub struct Attended {
    pub z: Tensor,
    pub scores: Option<Tensor>,
    pub pattern: Option<Tensor>,
}

/// Fused attention on CPU: q `[b, t, h, dh]`, k/v `[b, s, kvh, dh]`. Returns `None` where the
/// fused kernel does not apply (not CPU f32).
pub fn attention_fused(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttnMask,
    scale: f32,
    want_scores: bool,
    want_pattern: bool,
) -> Result<Option<Attended>> {
    if !(is_cpu_f32(q) && is_cpu_f32(k) && is_cpu_f32(v)) {
        return Ok(None);
    }
    let (batch, q_len, heads, d_head) = q.dims4()?;
    let (_, kv_len, kv_heads, _) = k.dims4()?;
    let shape = kernels::AttnShape {
        batch,
        heads,
        kv_heads,
        q_len,
        kv_len,
        d_head,
        causal: mask.causal,
        window: mask.window,
    };
    let r = with_slice(q, |q| {
        with_slice(k, |k| {
            with_slice(v, |v| {
                kernels::attention(
                    q,
                    k,
                    v,
                    mask.keys.as_deref(),
                    shape,
                    scale,
                    want_scores,
                    want_pattern,
                )
            })
        })
    })???;
    let plane = [batch, heads, q_len, kv_len];
    Ok(Some(Attended {
        z: cpu_tensor(r.z, q.dims())?,
        scores: r.scores.map(|s| cpu_tensor(s, &plane)).transpose()?,
        pattern: r.pattern.map(|p| cpu_tensor(p, &plane)).transpose()?,
    }))
}

/// Scaled, masked attention scores `[b, h, t, s]` from q `[b, h, t, dh]` and k `[b, h, s, dh]`,
/// with masked entries set to `f32::MIN` (as the fused kernel does).
pub fn attention_scores(q: &Tensor, k: &Tensor, mask: &AttnMask, scale: f64) -> Result<Tensor> {
    let (b, _, t, _) = q.dims4()?;
    let s = k.dims()[2];
    let scores = (q.matmul(&k.t()?)? * scale)?;
    if !mask.causal && mask.keys.is_none() && mask.window.is_none() {
        return Ok(scores);
    }
    let past = s - t.min(s);
    let mut visible = vec![1u8; b * t * s];
    for bi in 0..b {
        for i in 0..t {
            for j in 0..s {
                let causal_ok = !(mask.causal && j > past + i);
                let key_ok = mask.keys.as_ref().is_none_or(|m| m[bi * s + j] != 0);
                let window_ok = mask.window.is_none_or(|w| past + i < j + w);
                visible[(bi * t + i) * s + j] = u8::from(causal_ok && key_ok && window_ok);
            }
        }
    }
    if visible.iter().all(|&v| v == 1) {
        // Nothing is hidden (every decoding step): no mask to upload to a GPU and apply.
        return Ok(scores);
    }
    let visible =
        Tensor::from_vec(visible, (b, 1, t, s), q.device())?.broadcast_as(scores.shape())?;
    let fill = Tensor::full(f32::MIN, scores.shape(), q.device())?;
    Ok(visible.where_cond(&scores, &fill)?)
}

pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}
