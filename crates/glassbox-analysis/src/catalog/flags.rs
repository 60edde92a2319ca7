//! Sensitivity flags: which features detect a taxonomy's concepts. Each concept's texts (the
//! taxonomy's examples, plus the train half of a labelled data set when one is installed) and
//! the control texts (the taxonomy's, the data set's, and short windows of the corpus) run
//! through the model and the dictionary; a feature "fires on" a text when it is active on any
//! of its tokens. A feature is flagged for a concept when it is a *specific* detector:
//! - it fires on at least [`MIN_HITS`] concept texts,
//! - it fires on at most [`MAX_CONTROL_SHARE`] of the control texts (a feature that fires on a
//!   third of everyday text is not a concept detector, whatever it does on the concept),
//! - the concept share is [`MIN_LIFT`] times the control share or more, and
//! - the score, concept share minus control share, reaches the concept's threshold;
//!
//! and, once the build has counted it, its density over the corpus is at most [`MAX_DENSITY`]
//! ([`too_dense`]). The held-out half of the data set measures the flags: a flag is confirmed
//! when the feature also fires on held-out concept texts ([`MIN_HITS`] of them, and
//! [`MIN_LIFT`] times its held-out control share), and a concept's precision is the share of
//! its flags that are confirmed ([`FlagReport`]).

use glassbox_dictionary::Sae;
use glassbox_model::{Hooks, Model};
use glassbox_store::catalog::{Feature, Flag};
use serde::Serialize;

use super::taxonomy::Taxonomy;
use crate::error::{AnalysisError, Result};

/// A flagged feature must fire on at least this many concept texts.
pub const MIN_HITS: usize = 3;
/// … on at most this share of the control texts …
pub const MAX_CONTROL_SHARE: f32 = 0.05;
/// … on this many times the control share of concept texts (controls it never fires on
/// count as one; held-out checks use the plain share) …
pub const MIN_LIFT: f32 = 5.0;
/// … and on at most this share of all corpus tokens.
pub const MAX_DENSITY: f64 = 0.01;

/// How the flags of one concept hold up on held-out texts.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ConceptReport {
    pub concept: String,
    /// Texts the decision used, and texts held out.
    pub examples: usize,
    pub heldout: usize,
    pub flagged: usize,
    /// Flags the held-out texts confirm (see the module documentation).
    pub confirmed: usize,
    /// confirmed / flagged; `None` without held-out texts or flags.
    pub precision: Option<f32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FlagReport {
    pub controls: usize,
    pub heldout_controls: usize,
    pub concepts: Vec<ConceptReport>,
}

/// A flag's decision statistics, kept until the density gate is applied.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub flag: Flag,
    /// Whether held-out texts confirm it (`None` without held-out texts).
    pub confirmed: Option<bool>,
}

/// Per feature, the concepts it is flagged for (before the density gate), and the report.
/// `corpus_controls` are content token ids of corpus windows, used as further controls.
pub fn flags(
    model: &Model,
    sae: &Sae,
    taxonomy: &Taxonomy,
    corpus_controls: &[Vec<u32>],
) -> Result<(Vec<Vec<Candidate>>, FlagReport)> {
    let mut controls = peaks(model, sae, &tokenize(model, &taxonomy.controls)?)?;
    controls.extend(peaks(model, sae, corpus_controls)?);
    let heldout_controls = peaks(model, sae, &tokenize(model, &taxonomy.heldout_controls)?)?;
    let fired = |peaks: &[Vec<f32>], j: usize| peaks.iter().filter(|p| p[j] > 0.0).count();
    let share = |n: usize, of: usize| n as f32 / of.max(1) as f32;
    // `floor`: controls it never fires on count as one (the decision, over many controls);
    // the held-out check has few controls, where that floor would demand the impossible.
    let specific = |n_c: usize, of_c: usize, n_0: usize, of_0: usize, floor: bool| {
        let (s_c, s_0) = (share(n_c, of_c), share(n_0, of_0));
        let base = if floor { share(n_0.max(1), of_0) } else { s_0 };
        n_c >= MIN_HITS && s_0 <= MAX_CONTROL_SHARE && s_c >= MIN_LIFT * base
    };
    let mut out: Vec<Vec<Candidate>> = vec![Vec::new(); sae.d_sae()];
    let mut report = FlagReport {
        controls: controls.len(),
        heldout_controls: heldout_controls.len(),
        concepts: Vec::new(),
    };
    for concept in &taxonomy.concepts {
        let hits = peaks(model, sae, &tokenize(model, &concept.examples)?)?;
        let held = peaks(model, sae, &tokenize(model, &concept.heldout)?)?;
        let r = ConceptReport {
            concept: concept.name.clone(),
            examples: hits.len(),
            heldout: held.len(),
            ..Default::default()
        };
        for (j, flags) in out.iter_mut().enumerate() {
            let (n_c, n_0) = (fired(&hits, j), fired(&controls, j));
            let score = share(n_c, hits.len()) - share(n_0, controls.len());
            if !specific(n_c, hits.len(), n_0, controls.len(), true) || score < concept.threshold {
                continue;
            }
            let best = (0..hits.len())
                .max_by(|&a, &b| hits[a][j].total_cmp(&hits[b][j]))
                .unwrap_or(0);
            let (h_c, h_0) = (fired(&held, j), fired(&heldout_controls, j));
            let confirmed = (!held.is_empty())
                .then(|| specific(h_c, held.len(), h_0, heldout_controls.len(), false));
            let heldout = if held.is_empty() {
                String::new()
            } else {
                format!(
                    "; held out: {h_c} of {} {} texts and {h_0} of {} controls",
                    held.len(),
                    concept.name,
                    heldout_controls.len()
                )
            };
            flags.push(Candidate {
                flag: Flag {
                    concept: concept.name.clone(),
                    score,
                    evidence: format!(
                        "fires on {n_c} of {} {} texts and {n_0} of {} control texts{heldout}; most on “{}” ({:.3})",
                        hits.len(),
                        concept.name,
                        controls.len(),
                        concept.examples[best],
                        hits[best][j]
                    ),
                },
                confirmed,
            });
        }
        report.concepts.push(r);
    }
    Ok((out, report))
}

/// Whether a feature fires too often to be a concept detector.
pub fn too_dense(f: &Feature, tokens: u64) -> bool {
    tokens > 0 && f.density(tokens) > MAX_DENSITY
}

/// The flags that pass the density gate, and the report's counts of them.
pub fn gate(
    features: &mut [Feature],
    candidates: &[Vec<Candidate>],
    tokens: u64,
    report: &mut FlagReport,
) {
    for r in &mut report.concepts {
        (r.flagged, r.confirmed) = (0, 0);
    }
    for (f, cands) in features.iter_mut().zip(candidates) {
        f.flags.clear();
        if too_dense(f, tokens) {
            continue;
        }
        for c in cands {
            if let Some(r) = report
                .concepts
                .iter_mut()
                .find(|r| r.concept == c.flag.concept)
            {
                r.flagged += 1;
                r.confirmed += usize::from(c.confirmed == Some(true));
            }
            f.flags.push(c.flag.clone());
        }
    }
    for r in &mut report.concepts {
        r.precision =
            (r.heldout > 0 && r.flagged > 0).then(|| r.confirmed as f32 / r.flagged as f32);
    }
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
