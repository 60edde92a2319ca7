//! Sensitivity flags: which features detect a taxonomy's concepts. Each concept's texts (the
//! taxonomy's examples, plus the train half of a labelled data set when one is installed) and
//! the control texts (the taxonomy's, the data set's, and short windows of the corpus) run
//! through the model and the dictionary; a feature "fires on" a text when it is active on any
//! of its tokens. A feature is flagged for a concept when it is a *specific* detector:
//! - it fires on at least [`MIN_HITS`] concept texts,
//! - it fires on at most [`MAX_CONTROL_SHARE`] of the control texts (a feature that fires on a
//!   third of everyday text is not a concept detector, whatever it does on the concept),
//! - the score, concept share minus control share, reaches the concept's threshold,
//! - once the build has counted it, its density over the corpus is at most [`MAX_DENSITY`]
//!   ([`too_dense`]) and its peak on the concept texts reaches [`MIN_STRENGTH`] of its largest
//!   activation on the corpus,
//! - when the concept has a lexicon, it is *grounded*: in more than [`MIN_GROUNDED`] of its
//!   top corpus contexts it peaks on the concept's own words. The statistics alone flag word
//!   features whose word merely occurs in concept texts (a feature for "key" in key-value
//!   pairs passes every test on texts about API keys); what a feature fires on most in the
//!   wild says which sense it reads;
//! - and its active tokens in the concept texts are significantly more than its rate on the
//!   controls' tokens predicts (binomial test at [`ALPHA`]; token rates, since texts differ in
//!   length), Bonferroni-divided among the hypotheses: the grounded features of concepts with
//!   a lexicon (grounding reads only the corpus, so it selects without looking at the concept
//!   texts) and every feature of concepts without one.
//!
//! The held-out half of the data set measures the flags: a flag is confirmed when the same
//! test holds on the held-out concept texts and controls (2 texts at least, at
//! [`HELDOUT_ALPHA`]), and a concept's precision is the share of its flags that are confirmed
//! ([`FlagReport`]).

use glassbox_dictionary::Sae;
use glassbox_model::{Hooks, Model};
use glassbox_store::catalog::{ExampleKind, Feature, Flag};
use serde::Serialize;

use super::taxonomy::{Lexicon, Taxonomy};
use crate::error::{AnalysisError, Result};

/// A flagged feature must fire on at least this many concept texts.
pub const MIN_HITS: usize = 3;
/// … on at most this share of the control texts …
pub const MAX_CONTROL_SHARE: f32 = 0.05;
/// … is active on more of the concept texts' tokens than its rate on the controls' tokens
/// explains, at this significance level shared among the features tested (a token rate, so
/// longer concept texts do not make any common feature look specific) …
pub const ALPHA: f64 = 0.05;
/// (Held-out confirmation: one test per flag, at this level, on at least 2 texts.)
pub const HELDOUT_ALPHA: f64 = 0.01;
/// … reaches at least this fraction of its largest corpus activation on a concept text (a
/// feature that only grazes the concept texts is about something else) …
pub const MIN_STRENGTH: f32 = 0.5;
/// … on at most this share of all corpus tokens …
pub const MAX_DENSITY: f64 = 0.01;
/// … and, for a concept with a lexicon, peaks on its words in more than this share of its top
/// corpus contexts (most of them: a feature half on the concept's words reads a word, not the
/// concept).
pub const MIN_GROUNDED: f32 = 0.5;

/// How the flags of one concept hold up on held-out texts.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ConceptReport {
    pub concept: String,
    /// Texts the decision used, and texts held out.
    pub examples: usize,
    pub heldout: usize,
    pub flagged: usize,
    /// Features the concept texts single out (before the multiple-testing correction) whose
    /// top corpus contexts are about something else: not the concept's words.
    pub ungrounded: usize,
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
    /// The enrichment test's p-value, before the multiple-testing correction.
    pub p_value: f64,
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
            // ALPHA uncorrected: the gate divides it once it knows how many features are tested.
            if score < concept.threshold || !specific(hits, &controls, j, ALPHA, MIN_HITS) {
                continue;
            }
            let p_value = hits.enrichment(j, &controls);
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
                p_value,
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

/// The flags that pass the density, strength and lexicon gates and the corrected enrichment
/// test, and the report's counts of them.
pub fn gate(
    features: &mut [Feature],
    candidates: &[Vec<Candidate>],
    tokens: u64,
    taxonomy: &Taxonomy,
    report: &mut FlagReport,
) {
    for r in &mut report.concepts {
        (r.flagged, r.confirmed, r.ungrounded) = (0, 0, 0);
    }
    // Per concept with a lexicon, each feature's grounding; the hypotheses tested are those
    // grounded features, and every feature of a concept without a lexicon.
    let groundings: Vec<Option<Vec<(usize, usize)>>> = taxonomy
        .concepts
        .iter()
        .map(|c| {
            c.lexicon
                .as_ref()
                .map(|l| features.iter().map(|f| grounding(f, l)).collect())
        })
        .collect();
    let is_grounded = |(g, n): (usize, usize)| n > 0 && g as f32 > MIN_GROUNDED * n as f32;
    let tests: usize = groundings
        .iter()
        .map(|g| match g {
            Some(g) => g.iter().filter(|&&x| is_grounded(x)).count(),
            None => features.len(),
        })
        .sum();
    let alpha = ALPHA / tests.max(1) as f64;
    for (j, (f, cands)) in features.iter_mut().zip(candidates).enumerate() {
        f.flags.clear();
        if too_dense(f, tokens) {
            continue;
        }
        for c in cands.iter().filter(|c| c.peak >= MIN_STRENGTH * f.max) {
            let Some(k) = taxonomy
                .concepts
                .iter()
                .position(|k| k.name == c.flag.concept)
            else {
                continue;
            };
            let grounding = groundings[k].as_ref().map(|g| g[j]);
            let Some(r) = report.concepts.get_mut(k) else {
                continue;
            };
            if grounding.is_some_and(|g| !is_grounded(g)) {
                r.ungrounded += 1;
                continue;
            }
            if c.p_value > alpha {
                continue;
            }
            r.flagged += 1;
            r.confirmed += usize::from(c.confirmed == Some(true));
            let mut flag = c.flag.clone();
            flag.evidence += &format!(
                "; enrichment p = {:.1e} ({tests} features tested)",
                c.p_value
            );
            if let Some((g, n)) = grounding {
                flag.evidence +=
                    &format!("; peaks on the concept's words in {g} of its {n} top contexts");
            }
            f.flags.push(flag);
        }
    }
    for r in &mut report.concepts {
        r.precision =
            (r.heldout > 0 && r.flagged > 0).then(|| r.confirmed as f32 / r.flagged as f32);
    }
}

/// Of a feature's top corpus contexts, how many peak on a token inside the lexicon's words,
/// and how many there are.
pub fn grounding(f: &Feature, lexicon: &Lexicon) -> (usize, usize) {
    let tops: Vec<_> = f
        .examples
        .iter()
        .filter(|e| e.kind == ExampleKind::Top)
        .collect();
    let grounded = tops
        .iter()
        .filter(|e| {
            let (start, end) = e.focus_range();
            lexicon.covers(&e.plain_text(), start, end)
        })
        .count();
    (grounded, tops.len())
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
    use super::*;
    use glassbox_store::catalog::Example;

    /// A top example whose peak is the word `focus` of `text` (split on spaces).
    fn example(text: &str, focus: usize) -> Example {
        let mut spans = Vec::new();
        let mut at = 0;
        for w in text.split(' ') {
            spans.push((at as u32, (at + w.len()) as u32));
            at += w.len() + 1;
        }
        Example {
            kind: ExampleKind::Top,
            activation: 1.0,
            context: 0,
            tokens: text.split(' ').map(String::from).collect(),
            acts: vec![0.0; spans.len()],
            focus,
            text: text.into(),
            spans,
        }
    }

    #[test]
    fn flags_need_grounding_in_the_concepts_words_and_a_test_corrected_for_the_grounded() {
        let taxonomy = Taxonomy::parse(
            "[control]\nexamples = [\"a\", \"b\"]\n[[concept]]\nname = \"cats\"\nexamples = [\"a cat\", \"a kitten\"]\nlexicon = ['\\bcats?\\b', '\\bkittens?\\b']\nunless = ['cat /etc']\n",
            "t.toml",
        )
        .unwrap();
        let feature = |examples: Vec<Example>| Feature {
            count: 5,
            max: 1.0,
            examples,
            ..Feature::default()
        };
        let mut features = vec![
            // Peaks on "cat" / "kitten" in two of three top contexts: grounded.
            feature(vec![
                example("the cat sat", 1),
                example("a kitten slept", 1),
                example("the dog barked", 1),
            ]),
            // Peaks on "the": not grounded, whatever the concept texts said.
            feature(vec![example("the cat sat", 0), example("the kitten", 0)]),
            // The word in a sense the `unless` patterns exclude.
            feature(vec![example("run cat /etc/passwd", 1)]),
            // Grounded, but its test does not survive the correction.
            feature(vec![example("one cat", 1)]),
        ];
        let candidate = |p_value: f64| Candidate {
            flag: Flag {
                concept: "cats".into(),
                score: 0.5,
                evidence: "fires on cats".into(),
            },
            confirmed: Some(true),
            peak: 1.0,
            p_value,
        };
        let candidates = vec![
            vec![candidate(0.02)],
            vec![candidate(1e-9)],
            vec![candidate(1e-9)],
            vec![candidate(0.03)],
        ];
        let mut report = FlagReport {
            concepts: vec![ConceptReport {
                concept: "cats".into(),
                heldout: 4,
                ..Default::default()
            }],
            ..Default::default()
        };
        gate(&mut features, &candidates, 1000, &taxonomy, &mut report);
        // Two features are grounded, so each test is held to 0.05 / 2.
        assert_eq!(features[0].flags.len(), 1);
        assert!(
            features[0].flags[0]
                .evidence
                .contains("peaks on the concept's words in 2 of its 3 top contexts")
                && features[0].flags[0].evidence.contains("2 features tested"),
            "{:?}",
            features[0].flags
        );
        assert!(features[1].flags.is_empty() && features[2].flags.is_empty());
        assert!(features[3].flags.is_empty(), "p = 0.03 > 0.05 / 2");
        let r = &report.concepts[0];
        assert_eq!((r.flagged, r.ungrounded, r.precision), (1, 2, Some(1.0)));
    }

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
