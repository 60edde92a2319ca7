//! Sensitivity flags: which features respond to a taxonomy's concepts. Each concept's example
//! texts and the control texts run through the model and the dictionary; a feature's score
//! for a concept is the share of concept texts it fires on minus the share of control texts
//! it fires on (−1 … 1), and it is flagged at the concept's threshold or above, with the
//! counts and the example it responds to most as evidence. The controls are the taxonomy's
//! own plus short windows of the corpus, so features that fire on any text (function words,
//! punctuation) are not flagged for every concept.

use glassbox_dictionary::Sae;
use glassbox_model::{Hooks, Model};
use glassbox_store::catalog::Flag;

use super::taxonomy::Taxonomy;
use crate::error::{AnalysisError, Result};

/// A flagged feature must fire on at least this many concept texts.
const MIN_HITS: usize = 2;

/// Per feature, the concepts it is flagged for.
/// `corpus_controls` are content token ids of corpus windows, used as further controls.
pub fn flags(
    model: &Model,
    sae: &Sae,
    taxonomy: &Taxonomy,
    corpus_controls: &[Vec<u32>],
) -> Result<Vec<Vec<Flag>>> {
    let mut controls = peaks(model, sae, &tokenize(model, &taxonomy.controls)?)?;
    controls.extend(peaks(model, sae, corpus_controls)?);
    let fired = |peaks: &[Vec<f32>], j: usize| peaks.iter().filter(|p| p[j] > 0.0).count();
    let mut out = vec![Vec::new(); sae.d_sae()];
    for concept in &taxonomy.concepts {
        let hits = peaks(model, sae, &tokenize(model, &concept.examples)?)?;
        for (j, flags) in out.iter_mut().enumerate() {
            let (n_c, n_0) = (fired(&hits, j), fired(&controls, j));
            let score = n_c as f32 / hits.len() as f32 - n_0 as f32 / controls.len() as f32;
            if n_c < MIN_HITS || score < concept.threshold {
                continue;
            }
            let best = (0..hits.len())
                .max_by(|&a, &b| hits[a][j].total_cmp(&hits[b][j]))
                .unwrap_or(0);
            flags.push(Flag {
                concept: concept.name.clone(),
                score,
                evidence: format!(
                    "fires on {n_c} of {} {} examples and {n_0} of {} control texts; most on “{}” ({:.3})",
                    hits.len(),
                    concept.name,
                    controls.len(),
                    concept.examples[best],
                    hits[best][j]
                ),
            });
        }
    }
    Ok(out)
}

fn tokenize(model: &Model, texts: &[String]) -> Result<Vec<Vec<u32>>> {
    Ok(texts
        .iter()
        .map(|t| model.tokenizer.encode_plain(t))
        .collect::<std::result::Result<_, _>>()?)
}

/// Per text (content token ids), each feature's largest activation over its tokens.
pub(crate) fn peaks(model: &Model, sae: &Sae, texts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
    let hook = model.hook_point(&sae.cfg.hook)?;
    let (prefix, suffix) = model.tokenizer.special_affixes()?;
    texts
        .iter()
        .map(|content| {
            let max = model.config.max_positions - prefix.len() - suffix.len();
            let content = &content[..content.len().min(max)];
            let mut peak = vec![0f32; sae.d_sae()];
            if content.is_empty() {
                return Ok(peak);
            }
            let ids = [prefix.as_slice(), content, suffix.as_slice()].concat();
            let mut hooks = Hooks::none().record(hook).stop_at(hook);
            model.forward(&model.batch_ids(&[ids])?, &mut hooks, None)?;
            let act = hooks
                .cache()
                .get(&hook)
                .ok_or_else(|| AnalysisError::Mismatch(format!("hook {hook} did not fire")))?;
            let x: Vec<f32> = act
                .narrow(1, prefix.len(), content.len())?
                .flatten_all()?
                .to_vec1()?;
            for row in sae.encode(&x)?.rows {
                for (j, v) in row {
                    peak[j as usize] = peak[j as usize].max(v);
                }
            }
            Ok(peak)
        })
        .collect()
}
