//! Quantised weights for decoding: GGML's blocks as 32-value blocks of 4-bit codes (Q4_0, Q4_1,
//! Q4_K) or of 8-bit codes (Q8_0, and Q5_0, Q5_1, Q5_K widened from 5 bits), each with an f32
//! scale and offset, multiplied with f32 activations. Decoding one token is bound by reading the
//! weights, and these blocks are 3.6–7× smaller than f32. The arithmetic is exact f32 on the
//! dequantised values (`d·q + m`), unlike llama.cpp's kernels, which also quantise the
//! activations to 8 bits: results equal the dense f32 path up to summation order. (Q6_K, with
//! scales per 16 values, stays dense.)
//!
//! Used for few-row inputs (decoding); many rows (prefill, harvesting) use the dense f32 GEMM,
//! which is compute-bound and faster there.

use rayon::prelude::*;

/// Values per block, for every type here.
pub const BLOCK: usize = 32;

/// A `[rows, cols]` weight (PyTorch `nn.Linear` layout: one output per row), in blocks of 32
/// along each row.
#[derive(Debug, Clone)]
pub struct QuantWeight {
    pub rows: usize,
    pub cols: usize,
    /// Per block: `value = scale · q + min`.
    scales: Vec<f32>,
    mins: Vec<f32>,
    codes: Codes,
}

#[derive(Debug, Clone)]
enum Codes {
    /// Two 4-bit codes per byte: byte `j` of a block holds value `j` (low nibble) and
    /// `j + 16` (high nibble), GGML's layout.
    Nibbles(Vec<u8>),
    /// One signed byte per value.
    Bytes(Vec<i8>),
}

fn f16(lo: u8, hi: u8) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([lo, hi])).to_f32()
}

/// The 32 codes of a GGML 4-bit block: byte `j` holds value `j` (low nibble) and `j + 16`.
fn nibbles(qs: &[u8]) -> [u8; 32] {
    std::array::from_fn(|j| if j < 16 { qs[j] & 15 } else { qs[j - 16] >> 4 })
}

/// The 6-bit scale and min of sub-block `j` of a K-quant block, packed in 12 bytes.
fn k_scale_min(q: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Blocks of 32 codes being collected, one scale and min each.
struct Blocks {
    scales: Vec<f32>,
    mins: Vec<f32>,
    codes: Vec<i8>,
}

impl Blocks {
    /// Unsigned codes (< 128): `d·q + m`.
    fn push(&mut self, d: f32, m: f32, q: [u8; 32]) {
        self.scales.push(d);
        self.mins.push(m);
        self.codes.extend(q.iter().map(|&v| v as i8));
    }

    /// Two's-complement codes (Q8_0): `d·q`.
    fn push_signed(&mut self, d: f32, q: [u8; 32]) {
        self.push(d, 0.0, q);
    }
}

impl QuantWeight {
    /// From GGML blocks of `type_name` (`Q4_0`, `Q4_1`, `Q5_0`, `Q5_1`, `Q8_0`, `Q4_K`,
    /// `Q5_K`) for a `[rows, cols]` matrix; `None` for other types (they stay dense).
    pub fn from_ggml(type_name: &str, raw: &[u8], rows: usize, cols: usize) -> Option<Self> {
        // (values per GGML block, bytes per GGML block)
        let (values, size) = match type_name {
            "Q4_0" => (32, 18),
            "Q4_1" => (32, 20),
            "Q5_0" => (32, 22),
            "Q5_1" => (32, 24),
            "Q8_0" => (32, 34),
            "Q4_K" => (256, 144),
            "Q5_K" => (256, 176),
            _ => return None,
        };
        if !cols.is_multiple_of(values) || raw.len() != rows * cols / values * size {
            return None;
        }
        let blocks = rows * cols / BLOCK;
        let mut w = Blocks {
            scales: Vec::with_capacity(blocks),
            mins: Vec::with_capacity(blocks),
            codes: Vec::with_capacity(blocks * BLOCK),
        };
        for b in raw.chunks_exact(size) {
            match type_name {
                "Q4_0" => {
                    // q − 8 in [−8, 7]: the same as Q4_1 with min −8·d.
                    let d = f16(b[0], b[1]);
                    w.push(d, -8.0 * d, nibbles(&b[2..18]));
                }
                "Q4_1" => w.push(f16(b[0], b[1]), f16(b[2], b[3]), nibbles(&b[4..20])),
                "Q5_0" | "Q5_1" => {
                    let (d, m, at) = if type_name == "Q5_0" {
                        (f16(b[0], b[1]), 0.0, 2)
                    } else {
                        (f16(b[0], b[1]), f16(b[2], b[3]), 4)
                    };
                    let high = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
                    let mut q = nibbles(&b[at + 4..at + 20]);
                    for (j, q) in q.iter_mut().enumerate() {
                        *q |= (((high >> j) & 1) << 4) as u8;
                    }
                    // Q5_0 is centred: q − 16.
                    let (d, m) = if type_name == "Q5_0" {
                        (d, -16.0 * d)
                    } else {
                        (d, m)
                    };
                    w.push(d, m, q);
                }
                "Q8_0" => {
                    let q: [u8; 32] = std::array::from_fn(|j| b[2 + j]);
                    w.push_signed(f16(b[0], b[1]), q);
                }
                _ => {
                    // Q4_K / Q5_K: 8 sub-blocks of 32, each `d·sc·q − dmin·m` with 6-bit sc, m.
                    let (d, dmin) = (f16(b[0], b[1]), f16(b[2], b[3]));
                    let sc = &b[4..16];
                    let (high, low) = if type_name == "Q5_K" {
                        (Some(&b[16..48]), &b[48..176])
                    } else {
                        (None, &b[16..144])
                    };
                    for sub in 0..8 {
                        let (s, m) = k_scale_min(sc, sub);
                        let bytes = &low[(sub / 2) * 32..(sub / 2) * 32 + 32];
                        let q: [u8; 32] = std::array::from_fn(|l| {
                            let nib = if sub % 2 == 0 {
                                bytes[l] & 15
                            } else {
                                bytes[l] >> 4
                            };
                            let hi = high.map_or(0, |h| ((h[l] >> sub) & 1) << 4);
                            nib | hi
                        });
                        w.push(d * f32::from(s), -(dmin * f32::from(m)), q);
                    }
                }
            }
        }
        // Values below 16 fit in nibbles (half the bytes to read); Q5's need a byte.
        let four_bit = matches!(type_name, "Q4_0" | "Q4_1" | "Q4_K");
        Some(Self {
            rows,
            cols,
            scales: w.scales,
            mins: w.mins,
            codes: if four_bit {
                Codes::Nibbles(
                    w.codes
                        .chunks_exact(BLOCK)
                        .flat_map(|c| (0..16).map(move |j| (c[j] as u8) | ((c[j + 16] as u8) << 4)))
                        .collect(),
                )
            } else {
                Codes::Bytes(w.codes)
            },
        })
    }

    /// Reorders the rows: row `i` of the result is row `order[i]` of `self`.
    pub fn permute_rows(&self, order: &[usize]) -> Self {
        let bpr = self.cols / BLOCK;
        let pick = |v: &[f32]| -> Vec<f32> {
            order
                .iter()
                .flat_map(|&r| v[r * bpr..(r + 1) * bpr].iter().copied())
                .collect()
        };
        let codes = match &self.codes {
            Codes::Nibbles(n) => Codes::Nibbles(
                order
                    .iter()
                    .flat_map(|&r| n[r * bpr * 16..(r + 1) * bpr * 16].iter().copied())
                    .collect(),
            ),
            Codes::Bytes(b) => Codes::Bytes(
                order
                    .iter()
                    .flat_map(|&r| b[r * self.cols..(r + 1) * self.cols].iter().copied())
                    .collect(),
            ),
        };
        Self {
            rows: self.rows,
            cols: self.cols,
            scales: pick(&self.scales),
            mins: pick(&self.mins),
            codes,
        }
    }

    /// Every value as f32, `[rows, cols]` (for tests).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for (b, (&d, &m)) in self.scales.iter().zip(&self.mins).enumerate() {
            match &self.codes {
                Codes::Nibbles(n) => {
                    let qs = &n[b * 16..b * 16 + 16];
                    out.extend(qs.iter().map(|q| d * f32::from(q & 15) + m));
                    out.extend(qs.iter().map(|q| d * f32::from(q >> 4) + m));
                }
                Codes::Bytes(q) => out.extend(
                    q[b * BLOCK..(b + 1) * BLOCK]
                        .iter()
                        .map(|&q| d * f32::from(q) + m),
                ),
            }
        }
        out
    }

    /// `x · Wᵀ` for `x` of `[m, cols]` → `[m, rows]`, plus `bias`.
    pub fn matmul(&self, x: &[f32], m: usize, bias: Option<&[f32]>) -> Vec<f32> {
        let (k, n) = (self.cols, self.rows);
        assert_eq!(x.len(), m * k, "quantised linear: input size");
        // Σx per block, so that the `+ min` of every weight costs one multiply per block.
        let sums: Vec<f32> = x.chunks_exact(BLOCK).map(|c| c.iter().sum()).collect();
        let mut out = vec![0f32; m * n];
        // Output-major: each task owns a run of output rows of every input row.
        let rows_per_task = 32;
        let mut by_row: Vec<f32> = vec![0f32; n * m];
        let simd = Simd::detect();
        by_row
            .par_chunks_mut(rows_per_task * m)
            .enumerate()
            .for_each(|(task, chunk)| {
                let job = Job {
                    w: self,
                    x,
                    sums: &sums,
                    m,
                    first_row: task * rows_per_task,
                };
                // SAFETY: each variant runs only where `detect` found its features.
                unsafe {
                    match simd {
                        #[cfg(target_arch = "x86_64")]
                        Simd::Avx512 => job.run_avx512(chunk),
                        #[cfg(target_arch = "x86_64")]
                        Simd::Avx2 => job.run_avx2(chunk),
                        Simd::Plain => job.run(chunk),
                    }
                }
            });
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = by_row[j * m + i] + bias.map_or(0.0, |b| b[j]);
            }
        }
        out
    }
}

/// The widest vector instructions this CPU runs (checked once).
#[derive(Clone, Copy)]
enum Simd {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Plain,
}

impl Simd {
    fn detect() -> Self {
        static FOUND: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
        *FOUND.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                use std::arch::is_x86_feature_detected as has;
                if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("fma") {
                    return Simd::Avx512;
                }
                if has!("avx2") && has!("fma") {
                    return Simd::Avx2;
                }
            }
            Simd::Plain
        })
    }
}

/// One task of [`QuantWeight::matmul`]: a run of output rows for every input row.
struct Job<'a> {
    w: &'a QuantWeight,
    x: &'a [f32],
    sums: &'a [f32],
    m: usize,
    first_row: usize,
}

impl Job<'_> {
    /// `out[r·m + i]` = row `first_row + r` of the weight · input row `i`. Inlined into the
    /// feature-specific copies below, where the dot loops compile to their vector width.
    #[inline(always)]
    fn run(&self, out: &mut [f32]) {
        let (w, m) = (self.w, self.m);
        let (k, bpr) = (w.cols, w.cols / BLOCK);
        for (r, out_r) in out.chunks_mut(m).enumerate() {
            let row = self.first_row + r;
            let scales = &w.scales[row * bpr..(row + 1) * bpr];
            let mins = &w.mins[row * bpr..(row + 1) * bpr];
            for (i, o) in out_r.iter_mut().enumerate() {
                let xi = &self.x[i * k..(i + 1) * k];
                let si = &self.sums[i * bpr..(i + 1) * bpr];
                *o = match &w.codes {
                    Codes::Nibbles(all) => {
                        let qs = &all[row * bpr * 16..(row + 1) * bpr * 16];
                        dot_nibbles(qs, xi, scales, mins, si)
                    }
                    Codes::Bytes(all) => {
                        dot_bytes(&all[row * k..(row + 1) * k], xi, scales, mins, si)
                    }
                };
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    unsafe fn run_avx512(&self, out: &mut [f32]) {
        self.run(out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&self, out: &mut [f32]) {
        self.run(out)
    }
}

/// Σ over blocks of `d·(q·x) + m·Σx` for 4-bit codes. Sixteen lane accumulators across blocks
/// (one horizontal sum at the end), so the loop vectorises.
#[inline(always)]
fn dot_nibbles(qs: &[u8], x: &[f32], scales: &[f32], mins: &[f32], sums: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut offset = 0f32;
    for (((q, x), (&d, &m)), &s) in qs
        .chunks_exact(16)
        .zip(x.chunks_exact(BLOCK))
        .zip(scales.iter().zip(mins))
        .zip(sums)
    {
        let (lo, hi) = x.split_at(16);
        for j in 0..16 {
            acc[j] += d * (f32::from(q[j] & 15) * lo[j] + f32::from(q[j] >> 4) * hi[j]);
        }
        offset += m * s;
    }
    acc.iter().sum::<f32>() + offset
}

/// Σ over blocks of `d·(q·x) + m·Σx` for 8-bit codes (lane accumulators, as above).
#[inline(always)]
fn dot_bytes(qs: &[i8], x: &[f32], scales: &[f32], mins: &[f32], sums: &[f32]) -> f32 {
    let mut acc = [0f32; BLOCK];
    let mut offset = 0f32;
    for (((q, x), (&d, &m)), &s) in qs
        .chunks_exact(BLOCK)
        .zip(x.chunks_exact(BLOCK))
        .zip(scales.iter().zip(mins))
        .zip(sums)
    {
        for j in 0..BLOCK {
            acc[j] += d * (f32::from(q[j]) * x[j]);
        }
        offset += m * s;
    }
    acc.iter().sum::<f32>() + offset
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u32) -> Vec<u8> {
        crate::xorshift(n, seed)
            .into_iter()
            .map(|x| (x >> 24) as u8)
            .collect()
    }

    /// Random blocks with finite scales, of `size` bytes each, scales at `scale_at`.
    fn blocks(n: usize, size: usize, scale_at: &[usize], seed: u32) -> Vec<u8> {
        let mut raw = pseudo_random(n * size, seed);
        for b in raw.chunks_exact_mut(size) {
            for &at in scale_at {
                let s = half::f16::from_f32(0.01 + f32::from(b[at]) / 4096.0).to_bits();
                b[at..at + 2].copy_from_slice(&s.to_le_bytes());
            }
        }
        raw
    }

    #[test]
    fn the_quantised_product_equals_the_dense_one() {
        let (rows, cols, m) = (70, 512, 3);
        let x: Vec<f32> = pseudo_random(m * cols, 9)
            .iter()
            .map(|&v| f32::from(v) / 128.0 - 1.0)
            .collect();
        let bias: Vec<f32> = (0..rows).map(|j| j as f32 * 0.01).collect();
        for (name, values, size, scales) in [
            ("Q4_0", 32, 18, &[0][..]),
            ("Q4_1", 32, 20, &[0, 2][..]),
            ("Q5_0", 32, 22, &[0][..]),
            ("Q5_1", 32, 24, &[0, 2][..]),
            ("Q8_0", 32, 34, &[0][..]),
            ("Q4_K", 256, 144, &[0, 2][..]),
            ("Q5_K", 256, 176, &[0, 2][..]),
        ] {
            let raw = blocks(rows * cols / values, size, scales, 3);
            let q = QuantWeight::from_ggml(name, &raw, rows, cols).unwrap();
            let w = q.dequantize();
            assert_eq!(w.len(), rows * cols);
            let got = q.matmul(&x, m, Some(&bias));
            assert_eq!(got.len(), m * rows);
            for i in 0..m {
                for j in 0..rows {
                    let want: f32 = (0..cols)
                        .map(|c| x[i * cols + c] * w[j * cols + c])
                        .sum::<f32>()
                        + bias[j];
                    let have = got[i * rows + j];
                    assert!(
                        (have - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "{name} [{i},{j}]: {have} vs {want}"
                    );
                }
            }
            // Reordered rows give reordered outputs.
            let order: Vec<usize> = (0..rows).rev().collect();
            let p = q.permute_rows(&order).matmul(&x, m, None);
            let plain = q.matmul(&x, m, None);
            assert_eq!(p[0], plain[rows - 1]);
        }
        assert!(QuantWeight::from_ggml("Q6_K", &[0; 210], 1, 256).is_none());
        // A K-quant row must hold whole 256-value blocks.
        assert!(QuantWeight::from_ggml("Q4_K", &[0; 144], 8, 32).is_none());
    }
}
