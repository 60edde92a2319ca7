//! Head scores from attention patterns on repeated random tokens.
//!
//! The input is the standard induction probe: `T` random tokens (distinct within a sequence,
//! so each has exactly one earlier occurrence) repeated once, after a BOS token where the
//! model has one. On the second copy an induction head attends
//! from each token to the token that followed its earlier occurrence, `T − 1` positions back.
//! - **induction score**: the mean attention from each second-copy position `i` to `i − T + 1`;
//! - **previous-token score**: the mean attention from each position to the one before it
//!   (the heads induction heads build on).
//!
//! Both lie in [0, 1]; averaged over the batch of random sequences.

use glassbox_model::candle::DType;
use glassbox_model::{BlockHook, HookPoint, Hooks, Model};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::error::{AnalysisError, Result};

#[derive(Debug, Clone, Serialize)]
pub struct HeadScores {
    pub seq_len: usize,
    pub batch: usize,
    /// `[layer][head]`
    pub induction: Vec<Vec<f32>>,
    /// `[layer][head]`
    pub previous_token: Vec<Vec<f32>>,
}

impl HeadScores {
    /// `(layer, head, induction, previous-token)`, highest induction score first.
    pub fn ranking(&self) -> Vec<(usize, usize, f32, f32)> {
        let mut all: Vec<_> = self
            .induction
            .iter()
            .enumerate()
            .flat_map(|(l, row)| {
                row.iter()
                    .enumerate()
                    .map(move |(h, &s)| (l, h, s, self.previous_token[l][h]))
            })
            .collect();
        all.sort_by(|a, b| b.2.total_cmp(&a.2));
        all
    }
}

/// Scores every head on `batch` sequences of `seq_len` random tokens repeated twice.
pub fn induction_scores(
    model: &Model,
    seq_len: usize,
    batch: usize,
    seed: u64,
) -> Result<HeadScores> {
    let cfg = &model.config;
    let bos = cfg.bos_token_id;
    let len = 2 * seq_len + usize::from(bos.is_some());
    if seq_len < 2 || batch == 0 {
        return Err(AnalysisError::Mismatch(
            "the induction probe needs sequences of at least 2 tokens and a batch of at least 1"
                .into(),
        ));
    }
    if len > cfg.max_positions {
        return Err(AnalysisError::Mismatch(format!(
            "{len} positions (2 × {seq_len}{}) exceed the model's {}; use sequences of {} tokens or fewer",
            if bos.is_some() { " + BOS" } else { "" },
            cfg.max_positions,
            (cfg.max_positions - usize::from(bos.is_some())) / 2
        )));
    }
    let special = [bos, cfg.eos_token_id];
    let candidates: Vec<u32> = (0..cfg.vocab_size as u32)
        .filter(|t| !special.contains(&Some(*t)))
        .collect();
    if candidates.len() < 2 {
        return Err(AnalysisError::Mismatch(
            "the vocabulary has fewer than two ordinary tokens".into(),
        ));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let rows: Vec<Vec<u32>> = (0..batch)
        .map(|_| {
            // Distinct tokens where the vocabulary allows, so each has one earlier occurrence.
            let half: Vec<u32> = if candidates.len() >= seq_len {
                rand::seq::index::sample(&mut rng, candidates.len(), seq_len)
                    .iter()
                    .map(|i| candidates[i])
                    .collect()
            } else {
                (0..seq_len)
                    .map(|_| candidates[rng.random_range(0..candidates.len())])
                    .collect()
            };
            bos.into_iter()
                .chain(half.iter().copied())
                .chain(half.iter().copied())
                .collect()
        })
        .collect();
    let ids = model.batch_ids(&rows)?;
    let points: Vec<HookPoint> = (0..cfg.n_layers)
        .map(|l| HookPoint::Block(l, BlockHook::AttnPattern))
        .collect();
    let mut hooks = Hooks::none().record_all(points.iter().copied());
    model.forward(&ids, &mut hooks, None)?;
    let cache = hooks.into_cache();
    let offset = usize::from(bos.is_some());
    let (mut induction, mut previous_token) = (Vec::new(), Vec::new());
    for p in &points {
        let pattern = cache
            .get(p)
            .ok_or_else(|| AnalysisError::Mismatch(format!("{p} was not recorded")))?
            .to_dtype(DType::F32)?;
        let (b, heads, q, k) = pattern.dims4()?;
        // [batch, head, query, key], flat.
        let a: Vec<f32> = pattern.flatten_all()?.to_vec1()?;
        let at = |bi: usize, h: usize, i: usize, j: usize| a[((bi * heads + h) * q + i) * k + j];
        let (mut ind, mut prev) = (vec![0f32; heads], vec![0f32; heads]);
        for bi in 0..b {
            for h in 0..heads {
                ind[h] += (offset + seq_len..len)
                    .map(|i| at(bi, h, i, i + 1 - seq_len))
                    .sum::<f32>()
                    / (seq_len * b) as f32;
                prev[h] +=
                    (1..len).map(|i| at(bi, h, i, i - 1)).sum::<f32>() / ((len - 1) * b) as f32;
            }
        }
        induction.push(ind);
        previous_token.push(prev);
    }
    Ok(HeadScores {
        seq_len,
        batch,
        induction,
        previous_token,
    })
}
