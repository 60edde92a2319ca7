//! The dense product training and encoding need, on the `gemm` crate; the vector kernels of
//! the sparse parts; and the SIMD kernels (pulp) of the probes' fits.

use gemm::Parallelism;
use pulp::Simd;
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
    if m * n == 0 {
        return;
    }
    out.par_chunks_mut(n).for_each(|r| r.copy_from_slice(bias));
    if k == 0 {
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

/// `a·b` in registers of `simd`'s width, four accumulators deep (the sum is a chain
/// otherwise): for kernels run under [`pulp::Arch::dispatch`].
#[inline(always)]
pub fn dot_simd<S: Simd>(simd: S, a: &[f32], b: &[f32]) -> f32 {
    let ((a_body, a_tail), (b_body, b_tail)) = (S::as_simd_f32s(a), S::as_simd_f32s(b));
    let zero = simd.splat_f32s(0.0);
    let mut acc = [zero; 4];
    let (a4, b4) = (a_body.chunks_exact(4), b_body.chunks_exact(4));
    let (a_rest, b_rest) = (a4.remainder(), b4.remainder());
    for (x, y) in a4.zip(b4) {
        for i in 0..4 {
            acc[i] = simd.mul_add_e_f32s(x[i], y[i], acc[i]);
        }
    }
    for (&x, &y) in a_rest.iter().zip(b_rest) {
        acc[0] = simd.mul_add_e_f32s(x, y, acc[0]);
    }
    let sum = simd.add_f32s(simd.add_f32s(acc[0], acc[1]), simd.add_f32s(acc[2], acc[3]));
    simd.reduce_sum_f32s(sum) + a_tail.iter().zip(b_tail).map(|(x, y)| x * y).sum::<f32>()
}

/// `y += alpha·x` in registers of `simd`'s width.
#[inline(always)]
pub fn axpy_simd<S: Simd>(simd: S, alpha: f32, x: &[f32], y: &mut [f32]) {
    let ((x_body, x_tail), (y_body, y_tail)) = (S::as_simd_f32s(x), S::as_mut_simd_f32s(y));
    let alpha_s = simd.splat_f32s(alpha);
    for (x, y) in x_body.iter().zip(y_body) {
        *y = simd.mul_add_e_f32s(alpha_s, *x, *y);
    }
    for (x, y) in x_tail.iter().zip(y_tail) {
        *y += alpha * x;
    }
}

/// The dot products of `w` with four rows, each in registers of `simd`'s width: `w` is read
/// once for the four (whose four sums keep the FMA units busy). Plain locals, no closures:
/// at a few hundred floats a row, any call or spill per row costs as much as the loop.
#[inline(always)]
pub fn dot4_simd<S: Simd>(simd: S, w: &[f32], [x0, x1, x2, x3]: [&[f32]; 4]) -> [f32; 4] {
    let (w_body, w_tail) = S::as_simd_f32s(w);
    let (b0, b1, b2, b3) = (
        S::as_simd_f32s(x0).0,
        S::as_simd_f32s(x1).0,
        S::as_simd_f32s(x2).0,
        S::as_simd_f32s(x3).0,
    );
    let zero = simd.splat_f32s(0.0);
    let (mut a0, mut a1, mut a2, mut a3) = (zero, zero, zero, zero);
    for ((((&w, &y0), &y1), &y2), &y3) in w_body.iter().zip(b0).zip(b1).zip(b2).zip(b3) {
        a0 = simd.mul_add_e_f32s(w, y0, a0);
        a1 = simd.mul_add_e_f32s(w, y1, a1);
        a2 = simd.mul_add_e_f32s(w, y2, a2);
        a3 = simd.mul_add_e_f32s(w, y3, a3);
    }
    let mut out = [
        simd.reduce_sum_f32s(a0),
        simd.reduce_sum_f32s(a1),
        simd.reduce_sum_f32s(a2),
        simd.reduce_sum_f32s(a3),
    ];
    let start = w.len() - w_tail.len();
    for (i, &w) in w_tail.iter().enumerate() {
        out[0] += w * x0[start + i];
        out[1] += w * x1[start + i];
        out[2] += w * x2[start + i];
        out[3] += w * x3[start + i];
    }
    out
}

/// `y += Σᵣ alphas[r]·rows[r]` in registers of `simd`'s width: `y` is loaded and stored once
/// for the four rows.
#[inline(always)]
pub fn axpy4_simd<S: Simd>(
    simd: S,
    [c0, c1, c2, c3]: [f32; 4],
    [x0, x1, x2, x3]: [&[f32]; 4],
    y: &mut [f32],
) {
    let (y_body, y_tail) = S::as_mut_simd_f32s(y);
    let start = x0.len() - y_tail.len();
    let (b0, b1, b2, b3) = (
        S::as_simd_f32s(x0).0,
        S::as_simd_f32s(x1).0,
        S::as_simd_f32s(x2).0,
        S::as_simd_f32s(x3).0,
    );
    let (s0, s1, s2, s3) = (
        simd.splat_f32s(c0),
        simd.splat_f32s(c1),
        simd.splat_f32s(c2),
        simd.splat_f32s(c3),
    );
    for ((((y, &z0), &z1), &z2), &z3) in y_body.iter_mut().zip(b0).zip(b1).zip(b2).zip(b3) {
        let sum = simd.mul_add_e_f32s(s0, z0, *y);
        let sum = simd.mul_add_e_f32s(s1, z1, sum);
        let sum = simd.mul_add_e_f32s(s2, z2, sum);
        *y = simd.mul_add_e_f32s(s3, z3, sum);
    }
    for (i, y) in y_tail.iter_mut().enumerate() {
        *y += c0 * x0[start + i] + c1 * x1[start + i] + c2 * x2[start + i] + c3 * x3[start + i];
    }
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

    /// The SIMD kernels are the plain ones up to rounding, at lengths with and without a tail.
    #[test]
    fn simd_kernels_match_the_plain_ones() {
        for n in [0, 5, 16, 67, 384] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.29).cos()).collect();
            let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.01 - 0.4).collect();
            let (mut y, mut y_simd) = (b.clone(), b.clone());
            super::axpy(0.3, &a, &mut y);
            // Four rows at once: each row's own dot, and the four axpys in turn.
            let rows: Vec<Vec<f32>> = (0..4)
                .map(|r| a.iter().map(|x| x * (r as f32 - 1.5)).collect())
                .collect();
            let rows4 = [&rows[0][..], &rows[1][..], &rows[2][..], &rows[3][..]];
            let alphas = [0.5, -1.0, 2.0, 0.25];
            let mut y4 = b.clone();
            // Run in the widest SIMD the CPU has, as the probes' fits run them.
            struct Kernels<'a> {
                a: &'a [f32],
                b: &'a [f32],
                y: &'a mut [f32],
                rows: [&'a [f32]; 4],
                alphas: [f32; 4],
                y4: &'a mut [f32],
            }
            impl pulp::WithSimd for Kernels<'_> {
                type Output = (f32, [f32; 4]);
                fn with_simd<S: pulp::Simd>(self, simd: S) -> (f32, [f32; 4]) {
                    super::axpy_simd(simd, 0.3, self.a, self.y);
                    super::axpy4_simd(simd, self.alphas, self.rows, self.y4);
                    let dot = super::dot_simd(simd, self.a, self.b);
                    (dot, super::dot4_simd(simd, self.b, self.rows))
                }
            }
            let (dot, dots) = pulp::Arch::new().dispatch(Kernels {
                a: &a,
                b: &b,
                y: &mut y_simd,
                rows: rows4,
                alphas,
                y4: &mut y4,
            });
            assert!((dot - super::dot(&a, &b)).abs() < 1e-4, "n {n}");
            for (x, y) in y_simd.iter().zip(&y) {
                assert!((x - y).abs() < 1e-6, "n {n}");
            }
            let mut want = b.clone();
            for (r, row) in rows.iter().enumerate() {
                assert!(
                    (dots[r] - super::dot(&b, row)).abs() < 1e-4,
                    "n {n} row {r}"
                );
                super::axpy(alphas[r], row, &mut want);
            }
            for (x, y) in y4.iter().zip(&want) {
                assert!((x - y).abs() < 1e-5, "n {n}");
            }
        }
    }
}
