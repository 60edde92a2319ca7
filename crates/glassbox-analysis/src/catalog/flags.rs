//! Sensitivity flags: which features detect a taxonomy's concepts. Each concept's texts (the
//! taxonomy's examples, plus the train half of a labelled data set when one is installed) and
//! the control texts (the taxonomy's, the data set's, and short windows of the corpus) run
//! through the model and the dictionary; a feature "fires on" a text when it is active on any
//! of its tokens. A feature is flagged for a concept when it is a *specific* detector:
//! - it fires on at least [`MIN_HITS`] concept texts,
//! - it fires on at most [`MAX_CONTROL_SHARE`] of the control texts (a feature that fires on a
//!   third of everyday text is not a concept detector, whatever it does on the concept),
//! - its active tokens in the concept texts are significantly more than its rate on the
//!   controls' tokens predicts (binomial test at [`ALPHA`], Bonferroni over features and
//!   concepts; token rates, since texts differ in length), and
//! - the score, concept share minus control share, reaches the concept's threshold;
//!
//! and, once the build has counted it, its density over the corpus is at most [`MAX_DENSITY`]
//! ([`too_dense`]) and its peak on the concept texts reaches [`MIN_STRENGTH`] of its largest
//! activation on the corpus. The held-out half of the data set measures the flags: a flag is confirmed
//! when the same test holds on the held-out concept texts and controls (2 texts at least, at
//! [`HELDOUT_ALPHA`]), and a concept's precision is the share of its flags that are confirmed
//! ([`FlagReport`]).

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
/// … is active on more of the concept texts' tokens than its rate on the controls' tokens
/// explains, at this significance level shared among all features and concepts (a token
/// rate, so longer concept texts do not make any common feature look specific) …
pub const ALPHA: f64 = 0.05;
/// (Held-out confirmation: one test per flag, at this level, on at least 2 texts.)
pub const HELDOUT_ALPHA: f64 = 0.01;
/// … reaches at least this fraction of its largest corpus activation on a concept text (a
/// feature that only grazes the concept texts is about something else) …
pub const MIN_STRENGTH: f32 = 0.5;
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
    /// Its largest activation on the concept texts.
    pub peak: f32,
}

/// Per feature, the concepts it is flagged for (before the density gate), and the report.
/// `corpus_controls` are content token ids of corpus windows, used as further controls.
pub fn flags(
    model: &Model,
    sae: &Sae,
    taxonomy: &Taxonomy,
    corpus_controls: &[Vec<u32>],
) -> Result<(Vec<Vec<Candidate>>, FlagReport)> {
    let mut base_controls = Response::of(model, sae, &tokenize(model, &taxonomy.controls)?)?.0;
    base_controls.add(&Response::of(model, sae, corpus_controls)?.0);
    let heldout_controls =
        Response::of(model, sae, &tokenize(model, &taxonomy.heldout_controls)?)?.0;
    let share = |n: usize, of: usize| n as f32 / of.max(1) as f32;
    // The decision tests every feature against every concept, so its significance level is
    // divided among them (Bonferroni); the held-out check tests one flag each.
    let tests = (sae.d_sae() * taxonomy.concepts.len().max(1)) as f64;
    let specific = |c: &Response, z: &Response, j: usize, alpha: f64, min_hits: usize| {
        c.fired(j) >= min_hits
            && share(z.fired(j), z.texts) <= MAX_CONTROL_SHARE
            && c.enrichment(j, z) <= alpha
    };
    let mut out: Vec<Vec<Candidate>> = vec![Vec::new(); sae.d_sae()];
    let mut report = FlagReport {
        controls: base_controls.texts,
        heldout_controls: heldout_controls.texts,
        concepts: Vec::new(),
    };
    let texts: Vec<(Response, Vec<Vec<f32>>)> = taxonomy
        .concepts
        .iter()
        .map(|c| Response::of(model, sae, &tokenize(model, &c.examples)?))
        .collect::<Result<_>>()?;
    for (i, concept) in taxonomy.concepts.iter().enumerate() {
        let (hits, peaks) = &texts[i];
        // The other concepts' texts are negatives too: a feature for the question form "How
        // do I …" fires on self-harm and violence requests alike and detects neither.
        let mut controls = base_controls.clone();
        for (k, (other, _)) in texts.iter().enumerate() {
            if k != i {
                controls.add(other);
            }
        }
        let held = Response::of(model, sae, &tokenize(model, &concept.heldout)?)?.0;
        let r = ConceptReport {
            concept: concept.name.clone(),
            examples: hits.texts,
            heldout: held.texts,
            ..Default::default()
        };
        for (j, flags) in out.iter_mut().enumerate() {
            let (n_c, n_0) = (hits.fired(j), controls.fired(j));
            let score = share(n_c, hits.texts) - share(n_0, controls.texts);
            if score < concept.threshold || !specific(hits, &controls, j, ALPHA / tests, MIN_HITS) {
                continue;
            }
            let best = (0..peaks.len())
                .max_by(|&a, &b| peaks[a][j].total_cmp(&peaks[b][j]))
                .unwrap_or(0);
            let (h_c, h_0) = (held.fired(j), heldout_controls.fired(j));
            let confirmed =
                (held.texts > 0).then(|| specific(&held, &heldout_controls, j, HELDOUT_ALPHA, 2));
            let heldout = if held.texts == 0 {
                String::new()
            } else {
                format!(
                    "; held out: {h_c} of {} {} texts and {h_0} of {} controls",
                    held.texts, concept.name, heldout_controls.texts
                )
            };
            flags.push(Candidate {
                flag: Flag {
                    concept: concept.name.clone(),
                    score,
                    evidence: format!(
                        "fires on {n_c} of {} {} texts and {n_0} of {} control texts{heldout}; most on “{}” ({:.3})",
                        hits.texts,
                        concept.name,
                        controls.texts,
                        concept.examples[best],
                        peaks[best][j]
                    ),
                },
                confirmed,
                peak: peaks[best][j],
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
        for c in cands.iter().filter(|c| c.peak >= MIN_STRENGTH * f.max) {
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

/// How the features respond to a set of texts: per feature, how many texts it fires on (is
/// active on any of their tokens) and how many tokens it is active on (a rate that does not
/// grow with text length). Counts add, so control sets are combined without re-running them.
#[derive(Clone)]
struct Response {
    texts: usize,
    fired: Vec<u32>,
    active: Vec<u32>,
    tokens: usize,
}

impl Response {
    /// The counts, and each text's peak per feature (for naming the text a flag fires on most).
    fn of(model: &Model, sae: &Sae, texts: &[Vec<u32>]) -> Result<(Self, Vec<Vec<f32>>)> {
        let mut active = vec![0u32; sae.d_sae()];
        let mut tokens = 0;
        let peaks = responses(model, sae, texts, &mut |row| {
            tokens += 1;
            for &(j, _) in row {
                active[j as usize] += 1;
            }
        })?;
        let mut fired = vec![0u32; sae.d_sae()];
        for p in &peaks {
            for (f, &v) in fired.iter_mut().zip(p) {
                *f += u32::from(v > 0.0);
            }
        }
        let counts = Self {
            texts: peaks.len(),
            fired,
            active,
            tokens,
        };
        Ok((counts, peaks))
    }

    fn add(&mut self, other: &Self) {
        self.texts += other.texts;
        self.tokens += other.tokens;
        for (a, b) in self.fired.iter_mut().zip(&other.fired) {
            *a += b;
        }
        for (a, b) in self.active.iter_mut().zip(&other.active) {
            *a += b;
        }
    }

    /// Texts feature `j` fires on.
    fn fired(&self, j: usize) -> usize {
        self.fired[j] as usize
    }

    /// How surprising feature `j`'s active tokens here are if it fired at its rate on the
    /// `controls`' tokens (add-one smoothed): the binomial tail P(X ≥ active), a p-value.
    fn enrichment(&self, j: usize, controls: &Response) -> f64 {
        let q = (controls.active[j] as f64 + 1.0) / (controls.tokens as f64 + 2.0);
        binomial_tail(self.tokens as u64, self.active[j] as u64, q)
    }
}

/// P(X ≥ k) for X ~ Binomial(n, q), summed in log space.
fn binomial_tail(n: u64, k: u64, q: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n || q <= 0.0 {
        return 0.0;
    }
    let ln_choose = |i: u64| -> f64 { (1..=i).map(|t| ((n - i + t) as f64 / t as f64).ln()).sum() };
    // Terms fall off quickly above the mean; stop when they no longer matter.
    let (lq, lp) = (q.ln(), (1.0 - q).ln());
    let mut term = ln_choose(k) + k as f64 * lq + (n - k) as f64 * lp;
    let mut total = 0.0;
    for i in k..=n {
        total += term.exp();
        // term(i + 1) / term(i) = (n − i) / (i + 1) · q / (1 − q)
        term += ((n - i) as f64 / (i + 1) as f64).ln() + lq - lp;
        if term < total.ln() - 40.0 {
            break;
        }
    }
    total.min(1.0)
}

/// Per text (content token ids), each feature's largest activation over its tokens.
pub(crate) fn peaks(model: &Model, sae: &Sae, texts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
    responses(model, sae, texts, &mut |_| {})
}

/// One token's active latents, (latent, value) in increasing latent order.
type CodeRow = [(u32, f32)];

/// [`peaks`], showing every token's code row to `each`. Texts go through the model
/// [`TEXTS_PER_PASS`] at a time (in order of length, so little is padding) and their tokens
/// through the dictionary together: one text at a time spent most of a catalog's fixed cost
/// re-packing W_enc for a 20-row product.
fn responses(
    model: &Model,
    sae: &Sae,
    texts: &[Vec<u32>],
    each: &mut dyn FnMut(&CodeRow),
) -> Result<Vec<Vec<f32>>> {
    let hook = sae.hook_in(model, glassbox_dictionary::fit::Use::Read)?;
    let (prefix, suffix) = model.tokenizer.special_affixes()?;
    let max = model.config.max_positions - prefix.len() - suffix.len();
    let mut by_length: Vec<usize> = (0..texts.len()).collect();
    by_length.sort_by_key(|&i| texts[i].len());
    let mut peaks = vec![Vec::new(); texts.len()];
    for group in by_length.chunks(TEXTS_PER_PASS) {
        let contents: Vec<&[u32]> = group
            .iter()
            .map(|&i| &texts[i][..texts[i].len().min(max)])
            .collect();
        let rows: Vec<Vec<u32>> = contents
            .iter()
            .filter(|c| !c.is_empty())
            .map(|c| [prefix.as_slice(), c, suffix.as_slice()].concat())
            .collect();
        let mut codes = Vec::new().into_iter();
        if !rows.is_empty() {
            let mut hooks = Hooks::none().record(hook).stop_at(hook);
            model.forward(&model.batch_ids(&rows)?, &mut hooks, None)?;
            let act = hooks
                .cache()
                .get(&hook)
                .ok_or_else(|| AnalysisError::Mismatch(format!("hook {hook} did not fire")))?;
            let mut x = Vec::new();
            for (b, c) in contents.iter().filter(|c| !c.is_empty()).enumerate() {
                x.extend(
                    act.get(b)?
                        .narrow(0, prefix.len(), c.len())?
                        .flatten_all()?
                        .to_vec1::<f32>()?,
                );
            }
            codes = sae.encode(&x)?.rows.into_iter();
        }
        for (&i, c) in group.iter().zip(&contents) {
            let mut peak = vec![0f32; sae.d_sae()];
            for row in codes.by_ref().take(c.len()) {
                each(&row);
                for (j, v) in row {
                    peak[j as usize] = peak[j as usize].max(v);
                }
            }
            peaks[i] = peak;
        }
    }
    Ok(peaks)
}

/// Texts per forward pass when reading concept and control texts.
const TEXTS_PER_PASS: usize = 64;

#[cfg(test)]
mod tests {
    use super::binomial_tail;

    #[test]
    fn binomial_tails_match_closed_forms() {
        // P(X ≥ 1) = 1 − (1 − q)^n; P(X ≥ n) = q^n.
        let (n, q) = (50u64, 0.03);
        assert!((binomial_tail(n, 1, q) - (1.0 - (1.0f64 - q).powi(50))).abs() < 1e-12);
        assert!((binomial_tail(n, n, q) / q.powi(50) - 1.0).abs() < 1e-9);
        // P(X ≥ 2) for n = 4, q = ½: 11/16.
        assert!((binomial_tail(4, 2, 0.5) - 11.0 / 16.0).abs() < 1e-12);
        assert_eq!(binomial_tail(10, 0, 0.1), 1.0);
        assert_eq!(binomial_tail(10, 11, 0.1), 0.0);
    }
}
