//! Nearest directions by dot product, blocked so the `[n, m]` score matrix is never whole:
//! feature neighbours (decoder cosine) and a feature's effect on the vocabulary (decoder
//! direction against the unembedding or the token embeddings).

use rayon::prelude::*;

use crate::{linalg, select};

/// Key rows with their dot products, from the extreme inwards.
pub type Ranked = Vec<(u32, f32)>;

/// Per query row: the `k` largest and the `k` smallest dot products with the key rows, as
/// `(key index, value)` from the extreme inwards. `queries` is `[n, d]`, `keys` `[m, d]`.
/// `skip_self` leaves out key i for query i (neighbours of a matrix with itself).
pub fn extremes(
    queries: &[f32],
    keys: &[f32],
    d: usize,
    k: usize,
    skip_self: bool,
) -> Vec<(Ranked, Ranked)> {
    const BLOCK: usize = 512;
    let m = keys.len() / d;
    let zero = vec![0f32; m];
    let mut out = Vec::with_capacity(queries.len() / d);
    for (b, block) in queries.chunks(BLOCK * d).enumerate() {
        let n = block.len() / d;
        let scores = linalg::matmul_bt_bias(block, keys, &zero, n, d, m);
        out.par_extend(scores.par_chunks(m).enumerate().map(|(i, row)| {
            let me = b * BLOCK + i;
            // −∞ is never selected: it masks the query itself.
            let masked = |sign: f32| -> Vec<f32> {
                let mut r: Vec<f32> = row.iter().map(|v| sign * v).collect();
                if skip_self && me < m {
                    r[me] = f32::NEG_INFINITY;
                }
                r
            };
            let ranked = |sign: f32| -> Ranked {
                let mut picked = select::largest(&masked(sign), k, f32::NEG_INFINITY);
                picked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                picked.into_iter().map(|(j, v)| (j, sign * v)).collect()
            };
            (ranked(1.0), ranked(-1.0))
        }));
    }
    out
}

/// Rows scaled to unit L2 norm (zero rows stay zero), for cosine similarity.
pub fn unit_rows(v: &[f32], d: usize) -> Vec<f32> {
    let mut out = v.to_vec();
    crate::sae::normalize_rows(&mut out, d);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_extremes_and_skips_self() {
        // Keys along the axes of 2-d space, and their negatives.
        let keys = [1.0, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0, -1.0];
        let r = extremes(&[0.9, 0.1], &keys, 2, 2, false);
        assert_eq!(r[0].0, vec![(0, 0.9), (1, 0.1)]);
        assert_eq!(r[0].1, vec![(2, -0.9), (3, -0.1)]);
        let r = extremes(&keys, &keys, 2, 1, true);
        assert_ne!(r[0].0[0].0, 0, "key 0 itself is skipped");
        assert_eq!(r[0].1, vec![(2, -1.0)]);
    }
}
