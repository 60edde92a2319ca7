//! The largest entries of a row, fast: TopK encoding selects 64 of 16,384 pre-activations per
//! token, and catalogs rank 30,000 vocabulary entries per feature.
//!
//! The k-th largest of the row's chunk maxima is a lower bound on its k-th largest entry (k
//! chunks reach it, each with an entry at least that large), so only the few chunks that reach
//! it can hold the top k: one vectorised pass for the maxima, then a selection among a few
//! hundred candidates instead of a running top-k (or a sort) over the whole row.

use glassbox_model::fastmath::vectorised;

const CHUNK: usize = 16;

/// The `k` largest entries of `row` that exceed `floor`, as `(index, value)` in index order;
/// ties go to the lower index. `row` must hold no NaN.
pub fn largest(row: &[f32], k: usize, floor: f32) -> Vec<(u32, f32)> {
    if k == 0 {
        return Vec::new();
    }
    let maxima = vectorised(|| chunk_maxima::<CHUNK>(row));
    let bound = if maxima.len() > k {
        let mut m = maxima.clone();
        *m.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a)).1
    } else {
        f32::NEG_INFINITY
    };
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(4 * k);
    for (c, (chunk, &max)) in row.chunks(CHUNK).zip(&maxima).enumerate() {
        if max >= bound && max > floor {
            for (i, &v) in chunk.iter().enumerate() {
                if v >= bound && v > floor {
                    best.push(((c * CHUNK + i) as u32, v));
                }
            }
        }
    }
    if best.len() > k {
        best.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        best.truncate(k);
    }
    best.sort_unstable_by_key(|e| e.0);
    best
}

/// The maximum of each `N`-value chunk of `row` (`N` a power of two; the last chunk may be
/// shorter), as a tree of pairwise maxima that compiles to vector instructions.
#[inline(always)]
fn chunk_maxima<const N: usize>(row: &[f32]) -> Vec<f32> {
    let bigger = |a: f32, b: f32| if a > b { a } else { b };
    let mut out = Vec::with_capacity(row.len().div_ceil(N));
    let chunks = row.chunks_exact(N);
    let tail = chunks.remainder();
    for c in chunks {
        let mut m = [0f32; N];
        m.copy_from_slice(c);
        let mut width = N;
        while width > 1 {
            width /= 2;
            for i in 0..width {
                m[i] = bigger(m[i], m[i + width]);
            }
        }
        out.push(m[0]);
    }
    if !tail.is_empty() {
        out.push(tail.iter().copied().fold(f32::NEG_INFINITY, bigger));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_a_full_sort_on_rows_with_ties_and_negatives() {
        let mut x = 12345u32;
        for (n, k, floor) in [
            (16_384, 64, 0.0),
            (30_000, 10, f32::NEG_INFINITY),
            (1000, 32, 0.0),
            (37, 5, -1.0),
            (40, 40, 0.0),
            (64, 200, f32::NEG_INFINITY),
        ] {
            let row: Vec<f32> = (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    // Few distinct values, so ties cross the k-th place.
                    (x % 64) as f32 / 8.0 - 3.0
                })
                .collect();
            let mut want: Vec<(u32, f32)> = (0..n as u32)
                .map(|i| (i, row[i as usize]))
                .filter(|e| e.1 > floor)
                .collect();
            want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            want.truncate(k);
            want.sort_by_key(|e| e.0);
            assert_eq!(largest(&row, k, floor), want, "n {n} k {k}");
        }
    }
}
