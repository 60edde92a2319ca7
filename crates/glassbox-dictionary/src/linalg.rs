//! The dense product training and encoding need, on the `gemm` crate, and the vector
//! kernels of the sparse parts.

use gemm::Parallelism;
use rayon::prelude::*;

/// `out[m, n] = a[m, k] · b_tᵀ + bias[n]` where `b_t` is `[n, k]` (one row per output column,
/// a weight in `nn.Linear` layout), into a reused buffer (a fresh one page-faults on every
/// call). gemm packs its right-hand side anyway, so reading it transposed costs no copy.
pub fn matmul_bt_bias_into(
    out: &mut Vec<f32>,
    a: &[f32],
    b_t: &[f32],
    bias: &[f32],
    m: usize,
    k: usize,
    n: usize,
) {
    assert!(
        a.len() == m * k && b_t.len() == n * k && bias.len() == n,
        "matmul_bt_bias_into: sizes"
    );
    out.resize(m * n, 0.0);
    out.par_chunks_mut(n).for_each(|r| r.copy_from_slice(bias));
    if m * n * k == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    let par = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: sizes asserted above; `out` holds exactly m·n.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            true,
            a.as_ptr(),
            1,
            k as isize,
            b_t.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// [`matmul_bt_bias_into`], into a new buffer.
pub fn matmul_bt_bias(
    a: &[f32],
    b_t: &[f32],
    bias: &[f32],
    m: usize,
    k: usize,
    n: usize,
) -> Vec<f32> {
    let mut out = Vec::new();
    matmul_bt_bias_into(&mut out, a, b_t, bias, m, k, n);
    out
}

#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight lanes so the sum vectorises (a single float accumulator is a serial chain).
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline]
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += alpha * x);
}

#[cfg(test)]
mod tests {
    #[test]
    fn matmul_matches_loops() {
        let (m, k, n) = (3, 5, 4);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.1 - 0.7).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let bias = [1.0, -1.0, 0.5, 0.0];
        let out = super::matmul_bt_bias(&a, &bt, &bias, m, k, n);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = bias[j] + (0..k).map(|p| a[i * k + p] * bt[j * k + p]).sum::<f32>();
                assert!((out[i * n + j] - want).abs() < 1e-5);
            }
        }
    }
}
