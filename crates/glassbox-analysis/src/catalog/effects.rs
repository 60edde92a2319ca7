//! What the weights say about each feature, without running the model: the vocabulary its
//! decoder direction promotes and suppresses, and its nearest features.
//!
//! - Decoders: the direct effect of a unit step along the decoder direction on each logit,
//!   `d̂ · W_U[t]` (the final norm's scale ignored, as in TransformerLens's logit lens of a
//!   direction).
//! - Encoders (no unembedding, e.g. MiniLM): the cosine of the decoder direction with each
//!   token embedding — the tokens whose input embedding it most resembles. Special and unused
//!   tokens (`[CLS]`, `[unused12]`, `<|endoftext|>`) are left out.

use glassbox_dictionary::similarity::{extremes, unit_rows};
use glassbox_dictionary::Sae;
use glassbox_model::Model;

use crate::error::Result;

/// Per feature: (promoted, suppressed) tokens with their effect.
pub type VocabEffects = Vec<(Vec<(String, f32)>, Vec<(String, f32)>)>;

pub fn vocabulary(model: &Model, sae: &Sae, k: usize) -> Result<VocabEffects> {
    let d = sae.d_in();
    let dirs = unit_rows(&sae.w_dec, d);
    let (matrix, normalise) = match model.unembedding()? {
        Some(w) => (w, false),
        None => (model.token_embeddings().clone(), true),
    };
    let all: Vec<f32> = matrix.flatten_all()?.to_vec1()?;
    if !all.len().is_multiple_of(d) {
        return Err(crate::AnalysisError::Mismatch(format!(
            "the model's vocabulary matrix is not {d} wide; the dictionary does not belong to this model"
        )));
    }
    let kept: Vec<u32> = (0..(all.len() / d) as u32)
        .filter(|&t| {
            let raw = model.tokenizer.token(t).unwrap_or_default();
            !(raw.is_empty()
                || (raw.starts_with('[') && raw.ends_with(']'))
                || (raw.starts_with("<|") && raw.ends_with("|>")))
        })
        .collect();
    let mut keys: Vec<f32> = kept
        .iter()
        .flat_map(|&t| all[t as usize * d..][..d].iter().copied())
        .collect();
    if normalise {
        keys = unit_rows(&keys, d);
    }
    let name = |i: u32| model.tokenizer.piece(kept[i as usize]);
    Ok(extremes(&dirs, &keys, d, k, false)
        .into_iter()
        .map(|(top, bottom)| {
            let named = |v: Vec<(u32, f32)>| v.into_iter().map(|(i, s)| (name(i), s)).collect();
            (named(top), named(bottom))
        })
        .collect())
}

/// Per feature, the `k` features with the most similar decoder direction (cosine).
pub fn neighbours(sae: &Sae, k: usize) -> Vec<Vec<(u32, f32)>> {
    let dirs = unit_rows(&sae.w_dec, sae.d_in());
    extremes(&dirs, &dirs, sae.d_in(), k, true)
        .into_iter()
        .map(|(top, _)| top)
        .collect()
}
