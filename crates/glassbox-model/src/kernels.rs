//! Fused f32 CPU kernels for the parts of a forward pass where candle's CPU backend is slow:
//! its element-wise ops run on one thread, a bias add is a separate pass over memory, and a
//! batched attention matmul loops over (batch, head) calling a multi-threaded GEMM on tiny
//! matrices. These kernels work on plain slices; `ops` wraps them behind `Tensor`.

use gemm::Parallelism;
use rayon::prelude::*;

use crate::config::Activation;
use crate::fastmath::{self, vectorised};

/// Rows handed to one rayon task by the element-wise kernels.
const ROW_CHUNK: usize = 16;

/// Elements below which an element-wise kernel runs on the calling thread: handing work to the
/// pool costs more than it saves there (decoding one token calls these hundreds of times).
const SERIAL_BELOW: usize = 1 << 15;

/// `f` on each `size`-element chunk of `x`, on the pool when `x` is large.
fn each_chunk(x: &mut [f32], size: usize, f: impl Fn(&mut [f32]) + Sync + Send) {
    if x.len() < SERIAL_BELOW {
        x.chunks_mut(size).for_each(f);
    } else {
        x.par_chunks_mut(size).for_each(f);
    }
}

/// `f` on matching chunks of `x` and `y`, on the pool when they are large.
fn each_chunk_pair(
    x: &mut [f32],
    y: &[f32],
    size: usize,
    f: impl Fn(&mut [f32], &[f32]) + Sync + Send,
) {
    if x.len() < SERIAL_BELOW {
        x.chunks_mut(size)
            .zip(y.chunks(size))
            .for_each(|(a, b)| f(a, b));
    } else {
        x.par_chunks_mut(size)
            .zip(y.par_chunks(size))
            .for_each(|(a, b)| f(a, b));
    }
}

fn parallelism(flops: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    // Below ~1 MFLOP the fork/join costs more than it saves.
    if threads > 1 && flops >= 1 << 20 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// A strided matrix view for [`matmul`].
#[derive(Clone, Copy)]
struct Strided {
    ptr: *const f32,
    row: isize,
    col: isize,
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]` on raw strided views.
///
/// # Safety
/// Every view must address valid memory for its dimensions and `dst` must not alias the inputs.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_row: isize,
    accumulate: bool,
    lhs: Strided,
    rhs: Strided,
    par: Parallelism,
) {
    gemm::gemm(
        m, n, k, dst, 1, dst_row, accumulate, lhs.ptr, lhs.col, lhs.row, rhs.ptr, rhs.col, rhs.row,
        1.0, 1.0, false, false, false, par,
    );
}

/// `x[m, k] · w[k, n] + bias[n]`: the bias is written first and the GEMM accumulates onto it.
pub fn linear(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "linear: input size");
    assert_eq!(w.len(), k * n, "linear: weight size");
    let mut out = vec![0f32; m * n];
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "linear: bias size");
        each_chunk(&mut out, n * ROW_CHUNK, |rows| {
            rows.chunks_mut(n).for_each(|r| r.copy_from_slice(b))
        });
    }
    if m * k * n > 0 {
        let lhs = Strided {
            ptr: x.as_ptr(),
            row: k as isize,
            col: 1,
        };
        let rhs = Strided {
            ptr: w.as_ptr(),
            row: n as isize,
            col: 1,
        };
        // SAFETY: sizes asserted above; `out` is a fresh allocation.
        unsafe {
            matmul(
                m,
                n,
                k,
                out.as_mut_ptr(),
                n as isize,
                bias.is_some(),
                lhs,
                rhs,
                parallelism(2 * m * n * k),
            );
        }
    }
    out
}

pub fn layer_norm(x: &mut [f32], d: usize, w: &[f32], b: &[f32], eps: f32) {
    each_chunk(x, d * ROW_CHUNK, |rows| {
        for r in rows.chunks_mut(d) {
            let mean = r.iter().sum::<f32>() / d as f32;
            let var = r.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for ((v, w), b) in r.iter_mut().zip(w).zip(b) {
                *v = (*v - mean) * inv * w + b;
            }
        }
    });
}

pub fn rms_norm(x: &mut [f32], d: usize, w: &[f32], eps: f32) {
    each_chunk(x, d * ROW_CHUNK, |rows| {
        for r in rows.chunks_mut(d) {
            let ms = r.iter().map(|v| v * v).sum::<f32>() / d as f32;
            let inv = 1.0 / (ms + eps).sqrt();
            for (v, w) in r.iter_mut().zip(w) {
                *v = *v * inv * w;
            }
        }
    });
}

#[inline(always)]
pub fn activation(act: Activation, v: f32) -> f32 {
    match act {
        Activation::GeluErf => 0.5 * v * (1.0 + fastmath::erf(v * std::f32::consts::FRAC_1_SQRT_2)),
        Activation::GeluTanh => {
            const C: f32 = 0.797_884_6; // sqrt(2/pi)
            0.5 * v * (1.0 + (C * (v + 0.044_715 * v * v * v)).tanh())
        }
        Activation::Silu => v / (1.0 + fastmath::exp(-v)),
        Activation::Relu => v.max(0.0),
    }
}

/// Applies `act` to every element; the `match` sits outside the loop so it vectorises.
pub fn activate(x: &mut [f32], act: Activation) {
    fn apply(c: &mut [f32], f: impl Fn(f32) -> f32) {
        vectorised(|| c.iter_mut().for_each(|v| *v = f(*v)));
    }
    each_chunk(x, 4096, |c| match act {
        Activation::GeluErf => apply(c, |v| activation(Activation::GeluErf, v)),
        Activation::GeluTanh => apply(c, |v| activation(Activation::GeluTanh, v)),
        Activation::Silu => apply(c, |v| activation(Activation::Silu, v)),
        Activation::Relu => apply(c, |v| activation(Activation::Relu, v)),
    });
}

/// `act(gate) * up`, written into `gate`.
pub fn gated(gate: &mut [f32], up: &[f32], act: Activation) {
    assert_eq!(gate.len(), up.len(), "gated: sizes");
    each_chunk_pair(gate, up, 4096, |g, u| {
        g.iter_mut()
            .zip(u)
            .for_each(|(g, u)| *g = activation(act, *g) * u)
    });
}

pub fn add_assign(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len(), "add: sizes");
    each_chunk_pair(x, y, 4096, |a, b| {
        a.iter_mut().zip(b).for_each(|(a, b)| *a += b)
    });
}

/// Rotary embedding (rotate-half convention) in place on `[batch, pos, heads, d_head]`, for
/// positions `offset..offset + pos`. `cos`/`sin` are `[max_pos, d_head / 2]`.
pub fn rope(
    x: &mut [f32],
    pos: usize,
    heads: usize,
    d_head: usize,
    offset: usize,
    cos: &[f32],
    sin: &[f32],
) {
    let half = d_head / 2;
    each_chunk(x, pos * heads * d_head, |seq| {
        for (p, row) in seq.chunks_mut(heads * d_head).enumerate() {
            let c = &cos[(offset + p) * half..][..half];
            let s = &sin[(offset + p) * half..][..half];
            for head in row.chunks_mut(d_head) {
                let (a, b) = head.split_at_mut(half);
                for i in 0..half {
                    let (x1, x2) = (a[i], b[i]);
                    a[i] = x1 * c[i] - x2 * s[i];
                    b[i] = x2 * c[i] + x1 * s[i];
                }
            }
        }
    });
}

/// Shapes for [`attention`]. q is `[batch, q_len, heads, d_head]`, k and v are
/// `[batch, kv_len, kv_heads, d_head]`, the output z is laid out like q.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub d_head: usize,
    pub causal: bool,
    /// Keys more than `window - 1` positions before the query are masked.
    pub window: Option<usize>,
}

/// Raw pointer that tasks writing disjoint regions may share.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only for disjoint writes, see `attention`.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// A method, so closures capture the whole `SendPtr` rather than its raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// What [`attention`] returns: z laid out like q, and, when asked for, the masked scaled scores
/// and the softmax pattern, both `[batch, heads, q_len, kv_len]`.
pub struct AttnResult {
    pub z: Vec<f32>,
    pub scores: Option<Vec<f32>>,
    pub pattern: Option<Vec<f32>>,
}

/// Fused scaled-dot-product attention: one task per (batch, head), each a pair of small
/// single-threaded GEMMs with the mask and softmax applied in between, reading q/k/v in their
/// projection layout (no transposes). Masked keys get score `f32::MIN` before the softmax,
/// as in PyTorch, so a row with every key masked attends uniformly instead of making NaN.
/// `key_mask` is `[batch, kv_len]`, 1 = attend. Queries sit at the last `q_len` positions.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    key_mask: Option<&[u8]>,
    s: AttnShape,
    scale: f32,
    want_scores: bool,
    want_pattern: bool,
) -> AttnResult {
    let AttnShape {
        batch,
        heads,
        kv_heads,
        q_len,
        kv_len,
        d_head,
        causal,
        window,
    } = s;
    assert_eq!(q.len(), batch * q_len * heads * d_head, "attention: q size");
    assert_eq!(
        k.len(),
        batch * kv_len * kv_heads * d_head,
        "attention: k size"
    );
    assert_eq!(v.len(), k.len(), "attention: v size");
    if let Some(m) = key_mask {
        assert_eq!(m.len(), batch * kv_len, "attention: mask size");
    }
    let plane = q_len * kv_len;
    let mut z = vec![0f32; q.len()];
    let mut scores_out = want_scores.then(|| vec![0f32; batch * heads * plane]);
    let mut pattern_out = want_pattern.then(|| vec![0f32; batch * heads * plane]);
    if plane == 0 {
        return AttnResult {
            z,
            scores: scores_out,
            pattern: pattern_out,
        };
    }
    let group = heads / kv_heads;
    let past = kv_len - q_len.min(kv_len);
    let z_ptr = SendPtr(z.as_mut_ptr());
    let scores_ptr = scores_out.as_mut().map(|v| SendPtr(v.as_mut_ptr()));
    let pattern_ptr = pattern_out.as_mut().map(|v| SendPtr(v.as_mut_ptr()));
    let (q_row, kv_row) = ((heads * d_head) as isize, (kv_heads * d_head) as isize);
    let head = |scores: &mut Vec<f32>, task: usize| {
        let (b, h) = (task / heads, task % heads);
        let kvh = h / group;
        let q_at = Strided {
            ptr: q[(b * q_len * heads + h) * d_head..].as_ptr(),
            row: q_row,
            col: 1,
        };
        let k_base = (b * kv_len * kv_heads + kvh) * d_head;
        // kᵀ: row index = feature, column index = key position.
        let kt = Strided {
            ptr: k[k_base..].as_ptr(),
            row: 1,
            col: kv_row,
        };
        let v_at = Strided {
            ptr: v[k_base..].as_ptr(),
            row: kv_row,
            col: 1,
        };
        // SAFETY: views stay inside q/k (sizes asserted); `scores` is this task's own buffer.
        unsafe {
            matmul(
                q_len,
                kv_len,
                d_head,
                scores.as_mut_ptr(),
                kv_len as isize,
                false,
                q_at,
                kt,
                Parallelism::None,
            );
        }
        let mask = key_mask.map(|m| &m[b * kv_len..(b + 1) * kv_len]);
        vectorised(|| {
            for (i, row) in scores.chunks_mut(kv_len).enumerate() {
                // Keys after the query (causal) and before its window are masked: split the
                // row there.
                let visible = if causal {
                    (past + i + 1).min(kv_len)
                } else {
                    kv_len
                };
                let first = window.map_or(0, |w| (past + i + 1).saturating_sub(w).min(visible));
                let (before, row) = row.split_at_mut(first);
                before.fill(f32::MIN);
                let mask = mask.map(|m| &m[first..]);
                let (seen, unseen) = row.split_at_mut(visible - first);
                match mask {
                    None => seen.iter_mut().for_each(|x| *x *= scale),
                    Some(m) => seen
                        .iter_mut()
                        .zip(m)
                        .for_each(|(x, &m)| *x = if m != 0 { *x * scale } else { f32::MIN }),
                }
                unseen.fill(f32::MIN);
            }
        });
        // SAFETY (three copies and z below): task (b, h) writes only its own plane
        // [b, h] of scores/pattern and z[b, :, h, :], disjoint from every other task's.
        if let Some(p) = scores_ptr {
            unsafe { std::slice::from_raw_parts_mut(p.get().add(task * plane), plane) }
                .copy_from_slice(scores);
        }
        vectorised(|| {
            for row in scores.chunks_mut(kv_len) {
                let max = fastmath::max(row);
                row.iter_mut().for_each(|x| *x = fastmath::exp(*x - max));
                let inv = 1.0 / fastmath::sum(row);
                row.iter_mut().for_each(|x| *x *= inv);
            }
        });
        if let Some(p) = pattern_ptr {
            unsafe { std::slice::from_raw_parts_mut(p.get().add(task * plane), plane) }
                .copy_from_slice(scores);
        }
        let p = Strided {
            ptr: scores.as_ptr(),
            row: kv_len as isize,
            col: 1,
        };
        unsafe {
            let dst = z_ptr.get().add((b * q_len * heads + h) * d_head);
            matmul(
                q_len,
                d_head,
                kv_len,
                dst,
                q_row,
                false,
                p,
                v_at,
                Parallelism::None,
            );
        }
    };
    // One query row against a short cache (decoding) is too little work to hand to the pool.
    if q_len * kv_len * heads * batch * d_head < SERIAL_BELOW * 8 {
        let mut scores = vec![0f32; plane];
        (0..batch * heads).for_each(|task| head(&mut scores, task));
    } else {
        (0..batch * heads)
            .into_par_iter()
            .for_each_init(|| vec![0f32; plane], head);
    }
    AttnResult {
        z,
        scores: scores_out,
        pattern: pattern_out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention written out with loops, the way the formula reads.
    fn naive(q: &[f32], k: &[f32], v: &[f32], s: AttnShape, scale: f32) -> Vec<f32> {
        let mut z = vec![0f32; q.len()];
        let past = s.kv_len - s.q_len;
        for b in 0..s.batch {
            for h in 0..s.heads {
                let kvh = h / (s.heads / s.kv_heads);
                for i in 0..s.q_len {
                    let qi = &q[((b * s.q_len + i) * s.heads + h) * s.d_head..][..s.d_head];
                    let mut w: Vec<f32> = (0..s.kv_len)
                        .map(|j| {
                            let kj = &k[((b * s.kv_len + j) * s.kv_heads + kvh) * s.d_head..]
                                [..s.d_head];
                            let outside = s.window.is_some_and(|w| past + i >= j + w);
                            if (s.causal && j > past + i) || outside {
                                f32::NEG_INFINITY
                            } else {
                                qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale
                            }
                        })
                        .collect();
                    let max = w.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    w.iter_mut().for_each(|x| *x = (*x - max).exp());
                    let sum: f32 = w.iter().sum();
                    for (j, wj) in w.iter().enumerate() {
                        let vj =
                            &v[((b * s.kv_len + j) * s.kv_heads + kvh) * s.d_head..][..s.d_head];
                        let zi = &mut z[((b * s.q_len + i) * s.heads + h) * s.d_head..][..s.d_head];
                        zi.iter_mut().zip(vj).for_each(|(z, v)| *z += wj / sum * v);
                    }
                }
            }
        }
        z
    }

    fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
        crate::xorshift(n, seed)
            .into_iter()
            .map(|x| (x as f32 / u32::MAX as f32) - 0.5)
            .collect()
    }

    #[test]
    fn attention_matches_naive_with_gqa_cache_offset_and_window() {
        for window in [None, Some(1), Some(2), Some(9)] {
            let s = AttnShape {
                batch: 2,
                heads: 4,
                kv_heads: 2,
                q_len: 3,
                kv_len: 5,
                d_head: 8,
                causal: true,
                window,
            };
            let q = pseudo_random(s.batch * s.q_len * s.heads * s.d_head, 1);
            let k = pseudo_random(s.batch * s.kv_len * s.kv_heads * s.d_head, 2);
            let v = pseudo_random(k.len(), 3);
            let fused = attention(&q, &k, &v, None, s, 0.35, false, false).z;
            let reference = naive(&q, &k, &v, s, 0.35);
            assert_eq!(fused.len(), s.batch * s.q_len * s.heads * s.d_head);
            assert_eq!(fused.len(), reference.len());
            for (a, b) in fused.iter().zip(&reference) {
                assert!((a - b).abs() < 1e-5, "window {window:?}: {a} vs {b}");
            }
        }
        // A window of one key: each query attends to itself only, so z is its own value.
        let s = AttnShape {
            batch: 1,
            heads: 1,
            kv_heads: 1,
            q_len: 4,
            kv_len: 4,
            d_head: 2,
            causal: true,
            window: Some(1),
        };
        let v = pseudo_random(8, 5);
        let z = attention(
            &pseudo_random(8, 4),
            &pseudo_random(8, 6),
            &v,
            None,
            s,
            1.0,
            false,
            false,
        )
        .z;
        assert_eq!(z, v);
    }

    #[test]
    fn linear_adds_bias() {
        let x = [1.0, 2.0, 3.0, 4.0]; // 2×2
        let w = [1.0, 0.0, 1.0, 0.0, 1.0, 1.0]; // 2×3
        let out = linear(&x, &w, Some(&[10.0, 20.0, 30.0]), 2, 2, 3);
        assert_eq!(out, vec![11.0, 22.0, 33.0, 13.0, 24.0, 37.0]);
    }
}
