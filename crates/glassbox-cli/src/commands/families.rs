//! `glassbox probe families`: how a probe generalises to attack families it never saw.
//!
//! Leave-one-family-out: for every family of the labelled data (attack families and benign
//! ones alike), a probe is trained on all other families and scores the held-out one, so every
//! text's score comes from a probe that saw neither it nor anything of its family. The pooled
//! held-out scores give AUROC and TPR at 1 % / 5 % FPR, and per family the share flagged at the
//! pooled 1 %-FPR threshold. Probes come two ways: trained per token (every token carries its
//! text's label; read as the mean, max or windowed token probability) and trained per text on
//! the mean activation over its tokens ("pooled"). Two baselines run in the same protocol, side
//! by side: logistic regression on MiniLM's sentence embedding, and a fixed keyword filter.
//! Two combinations of them all follow: "stacked" (logistic regression over their scores) and
//! "max rank" (each score ranked among benign scores, the highest rank taken), both fitted
//! inside each fold on scores from detectors trained without a group of the fold's families,
//! so they never see the held-out family either. Last, "probe or keywords": the reading `--out`
//! would save, or any keyword hit — what a deployment gets from two blocking monitors, and
//! what `--out` ships (the probe's calibration marked `or_keywords`) when it holds out better.
//! `--dict` adds a probe on a sparse dictionary's latents: logistic regression on a text's mean
//! code (so its served form, `mean(logit P)` over the codes of each token, reads the same
//! number), pinned to the dictionary by SHA-256; with `--out` it is the probe saved.
//! `--attention` adds a probe that learns which tokens to read (softmax attention over a
//! text's tokens, trained per text; see `glassbox_dictionary::attention`): measured, not saved,
//! since no served rule reads it yet. `--segments` adds a detector on sentences read alone
//! (MiniLM's sentence embedding of each, one logistic regression per kind of attack); with
//! `--out` it is what is saved, a sentence probe (`glassbox_dictionary::sentence_probe`) served
//! as `sentences NAME > x`. Given several `--segment-penalty` values, each fold chooses its
//! heads' penalty the way the combinations are fitted: by how heads trained without each group
//! of the fold's own families hold out on that group. Beside it, the same heads discounted by
//! piece count (the highest of many benign sentences climbs with their number; the scale comes
//! from the fold's own benign training pieces), and that one and "probe or keywords" deployed
//! together, each held to half the false-alarm budget ([`pair`]).
//! `--shared-sentences exclude` also keeps out of training every text that shares a sentence
//! with the held-out family: families of one data set share templates, payloads and documents.
//! `--family-weights` makes every family count alike in training, whatever its size.
//! With `--out`, the best probe (by held-out TPR at 1 % FPR), trained on every family, is saved
//! with the threshold those held-out scores give.
//!
//! `--benign-split random` holds the benign texts out by random part instead of by family (the
//! attack families stay whole): the operating point a deployment gets when it calibrates on a
//! sample of its own traffic, beside the strict default where benign traffic is as new as the
//! attacks. `--calibrate-on` goes one step further: a file of someone's real benign traffic,
//! never trained on, that every fold's detectors score; each held-out text is then also judged
//! at the threshold that flags 1 % of that traffic under its own fold's detectors
//! ([`CalibrationPool`]), and the set's own threshold is read on the traffic — a threshold set
//! on the set's few benign families need not hold on anyone's traffic, and this measures how
//! far it does. `--scores` writes every text's held-out scores.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use glassbox_dictionary::attention::{fit_attention, AttentionProbe, AttentionSample};
use glassbox_dictionary::keywords::KeywordFilter;
use glassbox_dictionary::probe::{
    self, linear_logit, mean_rows, Aggregation, Calibration, Probe, ProbeDictionary, ProbeTraining,
    Sample,
};
use glassbox_dictionary::roc::{CalibrationPool, Scored, Summary};
use glassbox_dictionary::segments;
use glassbox_dictionary::sentence_probe::{
    self, BackgroundSource, Example, KindHead, Reading, SentenceProbe, READ_TOGETHER,
};
use glassbox_model::{Model, Reader};
use rayon::prelude::*;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::probe::{read_records, Labelled, LongTexts};
use crate::input;
use pair::Pair;

mod pair;

#[derive(clap::Args)]
pub struct FamiliesArgs {
    /// The model the probe reads (a packaged name, GGUF file or directory).
    #[arg(long)]
    model: String,
    /// The hook point read, e.g. blocks.3.hook_resid_pre; repeat it to compare layers in one
    /// run (the texts are read once).
    #[arg(long = "hook", required = true)]
    hooks: Vec<String>,
    /// Labelled texts with families: JSON lines `{"text", "label": 0|1, "family"}` (e.g. the
    /// set `glassbox setup --data redteam` builds).
    #[arg(long)]
    data: PathBuf,
    /// Tokens per window of the windowed score.
    #[arg(long, default_value_t = 4)]
    window: usize,
    /// Tokens of each text used for training (evenly spaced; all are scored).
    #[arg(long, default_value_t = 64)]
    train_tokens: usize,
    #[command(flatten)]
    long: LongTexts,
    /// Also train the best probe (hook and aggregation by held-out TPR at 1 % FPR, alone or
    /// with the keyword filter where that holds out better) on every family and save it here,
    /// calibrated for 1 % FPR on the held-out scores.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write every text's held-out scores here, one JSON line per text and hook
    /// (`{"hook", "index", "family", "fold", "label", "scores": {detector: score}}`, index =
    /// the text's place among the records, from 0), to plot or to combine detectors in a
    /// notebook; with --calibrate-on, also each fold's scores of the traffic (`{"hook",
    /// "traffic", "fold", "scores"}`, traffic = the line's place, from 0). The per-token
    /// probe's readings are probabilities; the pooled, embedding, latent, attention, segment
    /// and stacked detectors give logits; max rank a benign quantile.
    #[arg(long)]
    scores: Option<PathBuf>,
    /// The saved probe's name in monitor rules (default: the data file's stem).
    #[arg(long)]
    name: Option<String>,
    /// Save the probe read this way (mean, max, mean_logit or windowN with N = --window)
    /// instead of the best by held-out TPR at 1 % FPR: e.g. a windowed rule, which appended
    /// text cannot dilute.
    #[arg(long, requires = "out")]
    aggregation: Option<Aggregation>,
    /// How much each training text counts by the size of its family: `none` (every text
    /// once), `sqrt` (1/√size) or `equal` (every family the same), within each class.
    /// Without it the largest family's style (1,138 in-the-wild jailbreaks) becomes the probe.
    #[arg(long, value_enum, default_value_t = FamilyWeights::None)]
    family_weights: FamilyWeights,
    /// How benign texts are held out: `family` (each benign family scored by probes trained
    /// without it: benign traffic unlike anything in training) or `random` (benign texts in
    /// five random parts, each scored by probes trained on the other four and every attack
    /// family: a deployment that calibrates on a sample of its own traffic). Attack families
    /// are held out whole either way.
    #[arg(long, value_enum, default_value_t = BenignSplit::Family)]
    benign_split: BenignSplit,
    /// Leave out the two combinations (stacked, max rank): they train every base detector five
    /// more times per fold, about two thirds of the training time. For quick sweeps.
    #[arg(long)]
    no_combinations: bool,
    /// Also a probe on this dictionary's latents (a TopK SAE from `train-dict`, or any
    /// SAELens-format one): logistic regression on a text's mean code at the hook the dictionary
    /// reads, which must be one of --hook. It is reported as "latent probe"; with --out, it is
    /// what is saved (pinned to the dictionary by its SHA-256), whatever holds out best.
    #[arg(long, value_name = "DIR")]
    dict: Option<PathBuf>,
    /// Also a probe that learns which tokens to read: each token's logit weighed by a softmax
    /// over a learned relevance of every token (an attention probe), trained per text on all
    /// of its tokens. Reported as "attention probe" (a logit), never saved: no served rule
    /// reads one yet.
    #[arg(long)]
    attention: bool,
    /// What a training text that shares a sentence (of five words or more) with the held-out
    /// family does: `keep` it in training, or `exclude` it, so that no wording of the held-out
    /// family is trained on — a jailbreak template filled with a behaviour of a held-out list,
    /// the same payload in another carrier, a document under another task. Identical texts
    /// stay out either way.
    #[arg(long, value_enum, default_value_t = SharedSentences::Keep)]
    shared_sentences: SharedSentences,
    /// Also a detector on sentences read alone: every sentence of a text gets MiniLM's
    /// sentence embedding of its own, and per kind of attack (the records' "kind", e.g.
    /// jailbreak, injection, harmful; one kind where they have none) logistic regression
    /// separates that kind's texts and labelled spans from benign texts, their sentences and
    /// the unlabelled rest of a spanned text; a text scores its highest logit over kinds, its
    /// whole and its sentences. Reported as "segment LR", beside it "segment LR discounted" (the
    /// same heads, the score less a discount for the number of pieces: see --discount-pieces),
    /// and the discounted one and the union with the keywords deployed together, each held to
    /// half the false-alarm budget. With --out it is what is saved (a sentence probe,
    /// DIR/sentence_probe.json, served as `sentences NAME > x`), whatever holds out best.
    /// Embedding every sentence takes about as long as reading the texts.
    #[arg(long)]
    segments: bool,
    /// The --segments heads' L2 penalty on standardised inputs (default 0.5). Give several
    /// (comma-separated) to choose per fold: each fold takes the one whose heads, trained
    /// without each of five groups of its own training families, catch most of those families
    /// at 1 % FPR (the held-out family takes no part; --shared-sentences applies inside too).
    /// --out chooses the same way over every family and saves the choice. Each value costs
    /// five more fits per fold
    #[arg(long, value_delimiter = ',', value_name = "L2[,L2…]")]
    segment_penalty: Vec<f32>,
    /// --segments: read every text's whole, also one MiniLM cuts to its first 512 tokens, as
    /// sentence probes did before this option. By default such a whole is left unread, in
    /// training and scoring alike, wherever the text has sentences to read instead (a cut whole
    /// is unlike the short wholes the heads learn from); the saved probe records which
    #[arg(long, requires = "segments")]
    read_cut_wholes: bool,
    /// --segments --out: save the sentence probe discounted by piece count ("segment LR
    /// discounted"): a text scores its highest piece logit less s·ln(pieces), s the scale of
    /// the benign tail of its piece logits on the benign texts and background prose it trained
    /// on. The highest of many benign sentences climbs with their number, so the plain reading
    /// holds a long request to a far higher false-alarm rate than a short one; the discount
    /// evens that out (and so lowers a long attack's score too: padding an attack with benign
    /// sentences lowers it). Both are reported either way; the threshold comes from this row
    #[arg(long, requires = "segments")]
    discount_pieces: bool,
    /// --segments: also save the two monitors deployed together (the discounted sentence probe
    /// and the union of the best probe reading with the keywords, each held to half of 1 %
    /// FPR on the held-out scores), both trained on every family: DIR/sentences (NAME) and
    /// DIR/pooled (NAME-pooled). Prints their rules: the union's, held to half the budget,
    /// can flag only a keyword hit whose probe reading passes a threshold (`… and keywords > 0`)
    #[arg(long, value_name = "DIR", requires = "segments")]
    out_pair: Option<PathBuf>,
    /// Benign background prose for the detectors that read sentence embeddings: paragraphs
    /// sampled from a corpus (a file or a directory, as `harvest --corpus` reads; `glassbox
    /// setup` installs Debian's docs and fortunes at ~/.cache/glassbox/corpora/debian-docs),
    /// trained on as negatives in every fold and never scored or calibrated on. The --segments
    /// heads train on it, and a second embedding LR, "embedding LR + bg", beside the baseline
    /// (which stays as it is). A paragraph identical to a held-out text, or under
    /// --shared-sentences exclude sharing a sentence with one, is left out of that fold like
    /// any training text. With --out the sentence probe records it (path, count, SHA-256), so
    /// the blue round retrains on the same paragraphs
    #[arg(long, value_name = "CORPUS")]
    background: Option<PathBuf>,
    /// With --background: the paragraphs drawn from each corpus file (those of smallest SHA-256,
    /// so the sample does not depend on document order)
    #[arg(long, default_value_t = 3000, value_name = "N", requires = "background",
          value_parser = clap::value_parser!(u32).range(1..))]
    background_texts: u32,
    /// Benign traffic of your own (or a third party's) to hold false alarms on, as a deployment
    /// calibrates: JSON lines with a "text" (a "label", where given, must be 0), e.g. the
    /// writing requests `glassbox setup --data redteam` installs (requests.jsonl). Never trained
    /// on; every fold's detectors score it, and every detector is read a second way: at the
    /// threshold that flags 1 % of this traffic as the fold's own detectors score it, the
    /// held-out attacks caught (with a bootstrap interval) and the set's held-out benign texts
    /// flagged, per family too; held to 1 % of both (each fold's threshold the higher of the
    /// two), the attacks caught; and at the set's own 1 %-FPR threshold, the share of this
    /// traffic flagged. A threshold set on the set's benign texts alone need not hold on
    /// anyone's traffic; this says how far it does
    #[arg(long, value_name = "JSONL")]
    calibrate_on: Option<PathBuf>,
}

impl FamiliesArgs {
    /// The --segments heads read a text's whole only where it fits the embedder, unless
    /// --read-cut-wholes ([`SentenceProbe::whole_only_if_fits`]).
    fn whole_only_if_fits(&self) -> bool {
        !self.read_cut_wholes
    }
}

#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
pub enum SharedSentences {
    Keep,
    Exclude,
}

/// The words a sentence needs for two texts sharing it to share wording, not a stock phrase.
const SHARED_SENTENCE_WORDS: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
pub enum BenignSplit {
    Family,
    Random,
}

/// The parts `--benign-split random` deals benign texts into.
const BENIGN_PARTS: u8 = 5;

impl BenignSplit {
    fn describe(self) -> &'static str {
        match self {
            BenignSplit::Family => "held-out families",
            BenignSplit::Random => "held-out attack families, benign texts held out by random part",
        }
    }

    /// The fold a text is held out in: its family, or for a benign text under `random` a part
    /// chosen by its hash (so duplicates share a part).
    pub(crate) fn fold(self, label: bool, family: &str, hash: &[u8; 32]) -> String {
        match self {
            BenignSplit::Random if !label => format!("benign part {}", hash[0] % BENIGN_PARTS + 1),
            _ => family.to_string(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
pub enum FamilyWeights {
    None,
    Sqrt,
    Equal,
}

impl FamilyWeights {
    /// The training weight of a text whose family has `size` texts.
    fn of(self, size: usize) -> f32 {
        let size = size.max(1) as f32;
        match self {
            FamilyWeights::None => 1.0,
            FamilyWeights::Sqrt => 1.0 / size.sqrt(),
            FamilyWeights::Equal => 1.0 / size,
        }
    }
}

/// One labelled text, read once.
struct Text {
    label: bool,
    family: String,
    /// What it is held out with: its family, or a random part of the benign texts.
    fold: String,
    hash: [u8; 32],
    /// The SHA-256 of each of its sentences of `SHARED_SENTENCE_WORDS` words or more.
    sentences: Vec<[u8; 32]>,
    /// Per hook: `[tokens, d]` and its mean over tokens, `[d]`.
    layers: Vec<(Vec<f32>, Vec<f32>)>,
    /// Which tokens are the positive part, where the data says (a buried injection's span).
    token_labels: Option<Vec<bool>>,
    /// MiniLM's sentence embedding; with `--segments`, also each of its sentences read alone
    /// where it has more than one.
    reading: Reading,
    /// Its kind of attack (the record's "kind"; "attack" without one), or "benign".
    kind: String,
    /// The `--dict` dictionary's mean code over the text's tokens (empty without one).
    latents: Vec<f32>,
    keywords: f32,
    /// ln(1 + characters), as a vector of one (the text-length baseline's input).
    length: Vec<f32>,
    /// How much the text counts in training (`--family-weights`).
    weight: f32,
}

/// How a text is held out and trained on.
struct Held {
    fold: String,
    weight: f32,
}

/// Reads labelled texts into [`Text`]s: each hook's activations, the MiniLM reading (whole, and
/// with `--segments` sentence by sentence, many texts together), the dictionary's mean code and
/// the keyword count.
struct TextReader<'m> {
    reader: Reader<'m>,
    minilm: &'m Model,
    dict: Option<&'m LatentSource>,
    keywords: KeywordFilter,
    d: usize,
    segments: bool,
}

impl TextReader<'_> {
    /// `labelled` (read from `source`) in order, under a progress bar saying `what`; `held`
    /// gives each its fold and training weight from its record and SHA-256.
    fn all(
        &self,
        labelled: &[Labelled],
        source: &std::path::Path,
        what: &str,
        held: impl Fn(&Labelled, &[u8; 32]) -> Held,
    ) -> Result<Vec<Text>> {
        let at = |i: usize| format!("{}, text {}", source.display(), i + 1);
        let mut readings = if self.segments {
            let spans: Vec<_> = labelled
                .iter()
                .map(|l| (l.text.as_str(), l.span.filter(|_| l.label)))
                .collect();
            let source = source.display().to_string();
            sentence_readings(
                self.minilm,
                &spans,
                &source,
                "embedding texts and sentences",
            )?
        } else {
            Vec::new()
        }
        .into_iter();
        let (d, reader) = (self.d, &self.reader);
        let bar = crate::report::progress(labelled.len() as u64, what);
        let mut texts = Vec::with_capacity(labelled.len());
        for (i, l) in labelled.iter().enumerate() {
            let text = &l.text;
            let layers: Vec<(Vec<f32>, Vec<f32>)> = reader
                .activations_all(text)
                .with_context(|| at(i))?
                .into_iter()
                .map(|acts| {
                    let pooled = mean_rows(&acts, d);
                    (acts, pooled)
                })
                .collect();
            let latents = match self.dict {
                Some(l) => mean_code(&l.sae, &layers[l.hook].0).with_context(|| at(i))?,
                None => Vec::new(),
            };
            let token_labels = match l.span {
                Some(span) if l.label => {
                    let labels = reader.span_labels(text, span)?;
                    if labels.len() * d != layers[0].0.len() {
                        bail!(
                            "{}: {} token labels for {} tokens",
                            at(i),
                            labels.len(),
                            layers[0].0.len() / d
                        );
                    }
                    // A span cut off by --truncate labels nothing: the text counts whole.
                    labels.iter().any(|&v| v).then_some(labels)
                }
                _ => None,
            };
            let hash: [u8; 32] = Sha256::digest(text.as_bytes()).into();
            let Held { fold, weight } = held(l, &hash);
            texts.push(Text {
                label: l.label,
                family: l.family.clone(),
                fold,
                hash,
                sentences: segments::long_sentences(text, SHARED_SENTENCE_WORDS)
                    .map(|s| Sha256::digest(s.as_bytes()).into())
                    .collect(),
                token_labels,
                layers,
                reading: if self.segments {
                    readings.next().context("one sentence reading per text")?
                } else {
                    Reading::whole(self.minilm, text).with_context(|| at(i))?
                },
                kind: if l.label {
                    l.kind.clone().unwrap_or_else(|| "attack".into())
                } else {
                    "benign".into()
                },
                latents,
                keywords: self.keywords.score(text),
                length: vec![(1.0 + text.chars().count() as f32).ln()],
                weight,
            });
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(texts)
    }
}

/// The `--background` prose, read as the labelled texts are.
#[derive(Default)]
pub(crate) struct Background {
    pub texts: Vec<BackgroundText>,
    pub source: Option<BackgroundSource>,
}

impl Background {
    /// `per_file` paragraphs from each file of `corpus`, embedded by `minilm`: whole, and
    /// sentence by sentence where `sentences` (for the --segments heads).
    pub fn read(
        minilm: &Model,
        corpus: &std::path::Path,
        per_file: usize,
        sentences: bool,
    ) -> Result<Self> {
        let sample = glassbox_store::background::sample(corpus, per_file)
            .with_context(|| format!("--background {}", corpus.display()))?;
        let source = portable(corpus);
        let readings = if sentences {
            let spans: Vec<_> = sample.texts.iter().map(|t| (t.as_str(), None)).collect();
            sentence_readings(minilm, &spans, &source, "embedding background paragraphs")?
        } else {
            sample
                .texts
                .iter()
                .map(|t| Reading::whole(minilm, t))
                .collect::<std::result::Result<_, _>>()
                .with_context(|| format!("embedding --background {source}"))?
        };
        let texts = sample
            .texts
            .iter()
            .zip(readings)
            .map(|(t, reading)| BackgroundText {
                reading,
                hash: Sha256::digest(t.as_bytes()).into(),
                sentences: segments::long_sentences(t, SHARED_SENTENCE_WORDS)
                    .map(|s| Sha256::digest(s.as_bytes()).into())
                    .collect(),
            })
            .collect();
        Ok(Self {
            texts,
            source: Some(BackgroundSource {
                corpus: source,
                per_file,
                texts: sample.texts.len(),
                sha256: sample.sha256,
            }),
        })
    }

    /// Its paragraphs as the blue round trains on them: `source` sampled again, and checked to
    /// be the same paragraphs by their SHA-256.
    pub fn again(minilm: &Model, source: &BackgroundSource) -> Result<Self> {
        let b = Self::read(minilm, &resolved(&source.corpus), source.per_file, true)?;
        let now = b.source.as_ref().map(|s| s.sha256.as_str());
        if now != Some(source.sha256.as_str()) {
            bail!(
                "the probe's background prose ({}, {} per file) has changed since it was trained (SHA-256 {} then, {} now); retrain the probe with `probe families --background`",
                source.corpus,
                source.per_file,
                source.sha256,
                now.unwrap_or("none")
            );
        }
        Ok(b)
    }
}

/// What a saved probe records of a corpus path: under `$GLASSBOX_HOME` (where `setup` installs
/// the packaged corpus) relative to it, so the probe file is read alike on another machine.
fn portable(corpus: &std::path::Path) -> String {
    let home = glassbox_model::registry::home();
    let absolute = std::fs::canonicalize(corpus).unwrap_or_else(|_| corpus.to_path_buf());
    let home = std::fs::canonicalize(&home).unwrap_or(home);
    match absolute.strip_prefix(&home) {
        Ok(rest) => format!("{HOME_VAR}/{}", rest.display()),
        Err(_) => corpus.display().to_string(),
    }
}

/// [`portable`]'s path back on this machine.
fn resolved(recorded: &str) -> PathBuf {
    match recorded.strip_prefix(HOME_VAR) {
        Some(rest) => glassbox_model::registry::home().join(rest.trim_start_matches('/')),
        None => PathBuf::from(recorded),
    }
}

const HOME_VAR: &str = "$GLASSBOX_HOME";

/// A paragraph of `--background` prose: trained on as a benign text, never held out.
pub(crate) struct BackgroundText {
    pub reading: Reading,
    hash: [u8; 32],
    /// The SHA-256 of each of its sentences of `SHARED_SENTENCE_WORDS` words or more.
    sentences: Vec<[u8; 32]>,
}

const DETECTORS: [&str; 15] = [
    "probe mean",
    "probe max",
    "probe window",
    "pooled probe",
    "embedding LR",
    "keywords",
    "stacked",
    "max rank",
    "probe or keywords",
    "latent probe",
    "attention probe",
    "segment LR",
    "segment LR discounted",
    "embedding LR + bg",
    "text length",
];
const N: usize = DETECTORS.len();
/// The detectors the two combinations (stacked, max rank) combine: the first six.
const BASES: usize = 6;
/// Where the two combinations sit (left out under `--no-combinations`).
const COMBINATIONS: [usize; 2] = [BASES, BASES + 1];
/// The probe readings (mean, max, window, pooled), in `DETECTORS` order.
const READINGS: usize = 4;
/// Where "probe or keywords" sits: the best probe reading, or any keyword hit. It is what two
/// monitors (the probe's rule and `keywords > 0`, both blocking) flag together.
const UNION: usize = BASES + 2;
/// Where the probe on `--dict`'s latents sits (shown at the dictionary's hook only).
const LATENT: usize = UNION + 1;
/// Where the `--attention` probe sits.
const ATTENTION: usize = LATENT + 1;
/// Where the `--segments` detector sits.
const SEGMENTS: usize = ATTENTION + 1;
/// Where the same heads sit with their piece-count discount ([`SentenceProbe::piece_scale`],
/// estimated in each fold on its own benign training pieces).
const DISCOUNTED: usize = SEGMENTS + 1;
/// Where the embedding LR trained with `--background` sits.
const EMBEDDING_BG: usize = DISCOUNTED + 1;
/// Where the text-length baseline sits: logistic regression on ln(characters) alone, which
/// says how far a set's labels follow length (a detector that beats it detects more than that).
const LENGTH: usize = EMBEDDING_BG + 1;
/// The stacker's own training scores come from detectors trained without a group of
/// families: the training families fall into this many groups.
const STACK_GROUPS: usize = 5;

/// The detectors trained beside the base ones when asked for: the probe on `--dict`'s mean
/// codes (at its hook), the `--attention` probe, the `--segments` heads (at this penalty), and
/// with `--background` the embedding LR trained on it too.
#[derive(Clone, Copy, Default)]
struct Extra {
    latents: bool,
    attention: bool,
    segments: Option<f32>,
    /// The --segments heads read a whole only where it fits ([`SentenceProbe::whole_only_if_fits`]).
    whole_only_if_fits: bool,
    background: bool,
}

/// The base detectors trained on one set of texts.
struct Bases {
    tokens: Probe,
    pooled: (Vec<f32>, f32),
    embedding: (Vec<f32>, f32),
    /// At `--dict`'s hook: the probe on its mean codes.
    latents: Option<(Vec<f32>, f32)>,
    attention: Option<AttentionProbe>,
    /// With `--segments`: one linear detector per kind of attack, on sentence embeddings.
    segments: Option<SentenceProbe>,
    /// The same heads discounted by piece count, the scale estimated on the benign training
    /// texts and background prose (where there were enough pieces for a tail).
    discounted: Option<SentenceProbe>,
    /// With `--background`: the embedding LR with the background prose among its negatives.
    embedding_bg: Option<(Vec<f32>, f32)>,
    /// Logistic regression on ln(characters).
    length: (Vec<f32>, f32),
}

impl Bases {
    /// Trained on `train` (and the detectors that read sentence embeddings on `background`
    /// too, as benign texts).
    #[allow(clippy::too_many_arguments)]
    fn fit(
        texts: &[Text],
        h: usize,
        train: &[usize],
        background: &[&BackgroundText],
        d: usize,
        keep: usize,
        cfg: &ProbeTraining,
        extra: Extra,
    ) -> Self {
        let (weights, bias) = fit_tokens(texts, h, train, d, keep, cfg);
        let segments = extra.segments.map(|l2| {
            let whole_only_if_fits = extra.whole_only_if_fits;
            SentenceProbe {
                name: String::new(),
                model: String::new(),
                heads: fit_segments(texts, train, background, cfg, l2, whole_only_if_fits),
                penalty: Some(l2),
                calibration: None,
                background: None,
                whole_only_if_fits,
                piece_scale: None,
            }
        });
        let discounted = segments
            .as_ref()
            .map(|p| discount(p, benign_readings(texts, train, background)));
        Self {
            tokens: Probe {
                name: String::new(),
                model: String::new(),
                hook: String::new(),
                weights,
                bias,
                metrics: None,
                calibration: None,
                dictionary: None,
            },
            pooled: fit_vectors(texts, train, |t| &t.layers[h].1, &[], cfg),
            embedding: fit_vectors(texts, train, |t| &t.reading.whole, &[], cfg),
            latents: extra.latents.then(|| fit_latents(texts, train, cfg)),
            attention: extra.attention.then(|| {
                let samples: Vec<AttentionSample> = train
                    .iter()
                    .map(|&i| AttentionSample {
                        x: &texts[i].layers[h].0,
                        label: texts[i].label,
                        weight: texts[i].weight,
                    })
                    .collect();
                fit_attention(&samples, d, cfg)
            }),
            segments,
            discounted,
            embedding_bg: extra.background.then(|| {
                let prose: Vec<&[f32]> = background.iter().map(|b| &b.reading.whole[..]).collect();
                fit_vectors(texts, train, |t| &t.reading.whole, &prose, cfg)
            }),
            length: fit_vectors(texts, train, |t| &t.length, &[], cfg),
        }
    }

    /// The text-length baseline's logit of one text.
    fn length_score(&self, t: &Text) -> f32 {
        linear_logit(&self.length.0, self.length.1, &t.length)
    }

    /// The background-trained embedding LR's logit of one text (0 where there is none).
    fn embedding_bg_score(&self, t: &Text) -> f32 {
        self.embedding_bg
            .as_ref()
            .map_or(0.0, |(w, b)| linear_logit(w, *b, &t.reading.whole))
    }

    /// The segment detector's logit of one text: the highest over kinds, of its whole and of
    /// each sentence (0 where there is none).
    fn segment_score(&self, t: &Text) -> f32 {
        self.segments.as_ref().map_or(0.0, |p| t.reading.score(p))
    }

    /// The discounted segment detector's logit of one text (0 where there is none).
    fn discounted_score(&self, t: &Text) -> f32 {
        self.discounted.as_ref().map_or(0.0, |p| t.reading.score(p))
    }

    /// The attention probe's logit of one text (0 where there is none).
    fn attention_score(&self, t: &Text, h: usize) -> f32 {
        self.attention
            .as_ref()
            .map_or(0.0, |p| p.logit(&t.layers[h].0))
    }

    /// The latent probe's logit of one text (0 where there is none).
    fn latent_score(&self, t: &Text) -> f32 {
        self.latents
            .as_ref()
            .map_or(0.0, |(w, b)| linear_logit(w, *b, &t.latents))
    }

    /// Every base detector's score of one text, in `DETECTORS` order: the per-token probe's
    /// readings are probabilities; the linear probes on pooled vectors give logits, which keep
    /// their spread where a well-separated probe's probabilities saturate at 1.
    fn score(&self, t: &Text, h: usize, window: usize) -> [f32; BASES] {
        let p = self.tokens.text_scores(&t.layers[h].0, window);
        let linear = |(w, b): &(Vec<f32>, f32), x: &[f32]| linear_logit(w, *b, x);
        [
            p.mean,
            p.max,
            p.window,
            linear(&self.pooled, &t.layers[h].1),
            linear(&self.embedding, &t.reading.whole),
            t.keywords,
        ]
    }

    /// Every detector's score of one text, in `DETECTORS` order (the union with the keyword
    /// filter left at 0: its reading is chosen once every fold has scored).
    fn scores(&self, stacker: Option<&Stacker>, t: &Text, h: usize, window: usize) -> [f32; N] {
        let mut s = [0.0; N];
        let base = self.score(t, h, window);
        s[..BASES].copy_from_slice(&base);
        if let Some(stacker) = stacker {
            (s[BASES], s[BASES + 1]) = stacker.score(&base);
        }
        s[LATENT] = self.latent_score(t);
        s[ATTENTION] = self.attention_score(t, h);
        s[SEGMENTS] = self.segment_score(t);
        s[DISCOUNTED] = self.discounted_score(t);
        s[EMBEDDING_BG] = self.embedding_bg_score(t);
        s[LENGTH] = self.length_score(t);
        s
    }
}

/// Logistic regression over the base detectors' scores (as logits, standardised), fitted on
/// scores each training text got from detectors that never saw its family group: stacking on
/// the bases' own training scores would learn to trust whichever overfits most.
///
/// The max-rank combination needs no fit: each base score becomes its rank among those same
/// out-of-group benign scores (a benign quantile, so one detector's scale cannot drown the
/// others'), and a text counts as alarming as its most alarming detector says.
struct Stacker {
    /// Per base detector, its out-of-group scores of benign training texts, sorted.
    benign: Vec<Vec<f32>>,
    mean: [f32; BASES],
    scale: [f32; BASES],
    weights: Vec<f32>,
    bias: f32,
}

impl Stacker {
    fn fit(
        texts: &[Text],
        h: usize,
        train: &[usize],
        d: usize,
        a: &FamiliesArgs,
        cfg: &ProbeTraining,
    ) -> Self {
        let group = family_groups(texts, train);
        let mut features: Vec<(usize, [f32; BASES])> = Vec::with_capacity(train.len());
        for g in 0..STACK_GROUPS {
            let held: Vec<usize> = train.iter().copied().filter(|&i| group(i) == g).collect();
            if held.is_empty() {
                continue;
            }
            let hashes: HashSet<[u8; 32]> = held.iter().map(|&i| texts[i].hash).collect();
            let inner: Vec<usize> = train
                .iter()
                .copied()
                .filter(|&i| group(i) != g && !hashes.contains(&texts[i].hash))
                .collect();
            let bases = Bases::fit(
                texts,
                h,
                &inner,
                &[],
                d,
                a.train_tokens,
                cfg,
                Extra::default(),
            );
            features.extend(
                held.iter()
                    .map(|&i| (i, stack_input(&bases.score(&texts[i], h, a.window)))),
            );
        }
        let n = features.len().max(1) as f32;
        let mut mean = [0.0; BASES];
        let mut scale = [1.0; BASES];
        for k in 0..BASES {
            mean[k] = features.iter().map(|f| f.1[k]).sum::<f32>() / n;
            let var = features
                .iter()
                .map(|f| (f.1[k] - mean[k]).powi(2))
                .sum::<f32>()
                / n;
            scale[k] = 1.0 / var.sqrt().max(1e-6);
        }
        let samples: Vec<Sample> = features
            .iter()
            .map(|(i, x)| {
                let z = (0..BASES).map(|k| (x[k] - mean[k]) * scale[k]).collect();
                Sample::new(z, texts[*i].label).weighted(texts[*i].weight)
            })
            .collect();
        let refs: Vec<&Sample> = samples.iter().collect();
        let (weights, bias) = probe::fit(&refs, BASES, cfg);
        let benign = (0..BASES)
            .map(|k| {
                let mut v: Vec<f32> = features
                    .iter()
                    .filter(|(i, _)| !texts[*i].label)
                    .map(|f| f.1[k])
                    .collect();
                v.sort_by(f32::total_cmp);
                v
            })
            .collect();
        Self {
            benign,
            mean,
            scale,
            weights,
            bias,
        }
    }

    /// The stacked score and the max-rank score of one text's base scores.
    fn score(&self, base: &[f32; BASES]) -> (f32, f32) {
        let x = stack_input(base);
        let z: Vec<f32> = (0..BASES)
            .map(|k| (x[k] - self.mean[k]) * self.scale[k])
            .collect();
        // Mid-rank, so a keyword count of 0 shared by most benign texts is not "above all".
        let rank = |k: usize| {
            let b = &self.benign[k];
            let below = b.partition_point(|&v| v < x[k]);
            let equal = b[below..].partition_point(|&v| v <= x[k]);
            (below as f32 + 0.5 * equal as f32) / b.len().max(1) as f32
        };
        let ranks: Vec<f32> = (0..BASES).map(rank).collect();
        let max = ranks.iter().copied().fold(0.0, f32::max);
        // Ties at the top broken by the mean rank.
        let max_rank = max + 1e-3 * ranks.iter().sum::<f32>() / BASES as f32;
        (linear_logit(&self.weights, self.bias, &z), max_rank)
    }
}

/// The per-token probe's probabilities as logits (clamped), beside the pooled probes' logits:
/// the stacker is linear in evidence, not in probability.
fn stack_input(base: &[f32; BASES]) -> [f32; BASES] {
    let mut x = *base;
    for v in &mut x[..READINGS - 1] {
        let p = v.clamp(1e-6, 1.0 - 1e-6);
        *v = (p / (1.0 - p)).ln();
    }
    x
}

/// The protocol's result at one hook.
struct HookReport {
    hook: String,
    /// The detectors run (indices into `DETECTORS`): all but the combinations under
    /// `--no-combinations`.
    shown: Vec<usize>,
    /// The probe reading (index into `DETECTORS`) the union with the keywords takes.
    reading: usize,
    summaries: Vec<Summary>,
    per_family: BTreeMap<(bool, String), (usize, [usize; N])>,
    dropped: usize,
    /// Training texts left out (summed over folds) for sharing a sentence with a held-out one.
    shared: usize,
    /// `--background` paragraphs left out (summed over folds), for either reason.
    background_left_out: usize,
    /// The `--segments` penalty each fold chose (fold name → penalty), where it had a choice.
    penalties: BTreeMap<String, f32>,
    /// Every text's held-out scores, in `DETECTORS` order.
    pooled: Vec<[f32; N]>,
    /// Per fold (in `distinct` order), every `--calibrate-on` traffic text's scores.
    traffic_scores: Vec<Vec<[f32; N]>>,
    /// With `--calibrate-on`: the detectors held to 1 % of that traffic.
    on_traffic: Option<OnTraffic>,
    /// With `--segments`: the discounted sentence probe and the union with the keywords
    /// deployed together ([`pair`]).
    pair: Option<Pair>,
}

/// The false-positive rate `--calibrate-on` holds each detector to on the traffic.
const TRAFFIC_FPR: f64 = 0.01;

/// One detector held to [`TRAFFIC_FPR`] of the `--calibrate-on` traffic: each held-out text
/// judged at the threshold its fold's detectors give on the traffic.
#[derive(serde::Serialize)]
struct TrafficSummary {
    /// Held-out attacks caught.
    tpr: f64,
    /// 95 % bootstrap interval (traffic and attacks resampled, thresholds set anew).
    tpr_ci95: (f64, f64),
    /// The set's held-out benign texts flagged.
    set_fpr: f64,
    /// Held-out attacks against the traffic their fold scored (ties half).
    auroc: f64,
    /// Held-out attacks caught held to 1 % of both the traffic and the set's benign texts: each
    /// fold's threshold the higher of its traffic threshold and the set's own.
    tpr_held_to_both: f64,
    /// The traffic flagged at the set's own 1 %-FPR threshold, averaged over the folds.
    flagged_at_set_threshold: f64,
}

/// Every shown detector calibrated on the `--calibrate-on` traffic.
struct OnTraffic {
    texts: usize,
    /// Per detector (in `DETECTORS` order; `None` where not shown).
    summaries: Vec<Option<TrafficSummary>>,
    /// Per family, the texts each detector flags at its traffic thresholds.
    per_family: BTreeMap<(bool, String), [usize; N]>,
}

impl OnTraffic {
    fn of(
        pooled: &[[f32; N]],
        texts: &[Text],
        fold_of: &[usize],
        traffic: &[Vec<[f32; N]>],
        set: &[Summary],
        shown: &[usize],
    ) -> Result<Self> {
        let pools = (0..N)
            .map(|k| {
                let scores = traffic.iter().map(|f| f.iter().map(|s| s[k]).collect());
                CalibrationPool::new(scores.collect())
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let judged = |k: usize, label: bool| -> Vec<(usize, f32)> {
            (0..texts.len())
                .filter(|&i| texts[i].label == label)
                .map(|i| (fold_of[i], pooled[i][k]))
                .collect()
        };
        let summaries = (0..N)
            .into_par_iter()
            .map(|k| {
                shown.contains(&k).then(|| {
                    let (pool, attacks) = (&pools[k], judged(k, true));
                    TrafficSummary {
                        tpr: pool.flagged(&attacks, TRAFFIC_FPR),
                        tpr_ci95: pool.flagged_interval(&attacks, TRAFFIC_FPR, 1000, 0),
                        set_fpr: pool.flagged(&judged(k, false), TRAFFIC_FPR),
                        auroc: pool.auroc(&attacks),
                        tpr_held_to_both: pool.flagged_with_floor(
                            &attacks,
                            TRAFFIC_FPR,
                            set[k].threshold,
                        ),
                        flagged_at_set_threshold: pool.fpr(set[k].threshold),
                    }
                })
            })
            .collect();
        let thresholds: Vec<Vec<f32>> = pools.iter().map(|p| p.thresholds(TRAFFIC_FPR)).collect();
        let per_family = flagged_by_family(texts, pooled, |k, i| thresholds[k][fold_of[i]])
            .into_iter()
            .map(|(family, (_, hits))| (family, hits))
            .collect();
        Ok(Self {
            texts: traffic.first().map_or(0, Vec::len),
            summaries,
            per_family,
        })
    }
}

pub fn run(a: FamiliesArgs, device: &str, json_out: bool) -> Result<()> {
    if let Some(Aggregation::Window { tokens }) = a.aggregation {
        if tokens != a.window {
            bail!(
                "--aggregation window{tokens} needs --window {tokens} (the windows scored are --window {} tokens long)",
                a.window
            );
        }
    }
    if a.out.is_some() && a.segments && a.aggregation.is_some() {
        bail!("--segments --out saves the sentence probe, which reads `sentences`; drop --aggregation (it picks a token probe's reading)");
    }
    if !a.segment_penalty.is_empty() && !a.segments {
        bail!("--segment-penalty sets the --segments heads' penalty; add --segments");
    }
    if let Some(bad) = a
        .segment_penalty
        .iter()
        .find(|l2| !(l2.is_finite() && **l2 >= 0.0))
    {
        bail!("--segment-penalty {bad}: a penalty is a finite number ≥ 0, e.g. 0.1,0.25,0.5");
    }
    if a.out.is_some() && a.segments && a.dict.is_some() {
        bail!("--out saves one detector: the probe on --dict's latents or the --segments sentence probe; drop --dict or --segments");
    }
    // Its folder made now, so a bad path fails before the reading, not twenty minutes after.
    if let Some(dir) = a.scores.as_deref().and_then(std::path::Path::parent) {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("--scores: cannot create the folder {}", dir.display()))?;
        }
    }
    let records = read_records(&a.data)?;
    let labelled = records
        .into_iter()
        .map(|r| r.labelled(&a.data))
        .collect::<Result<Vec<_>>>()?;
    // Read before the model, so a bad line fails at once.
    let traffic = match &a.calibrate_on {
        Some(path) => read_records(path)?
            .iter()
            .map(|r| {
                r.traffic(
                    path,
                    "--calibrate-on",
                    "put attacks in --data, which holds them out by family",
                )
            })
            .collect::<Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    let model = input::load_model(&a.model, device)?;
    let hooks: Vec<&str> = a.hooks.iter().map(String::as_str).collect();
    let reader = Reader::with_hooks(&model, &hooks)?.passes(a.long.max_tokens, a.long.truncate);
    let minilm_owned;
    let (minilm, minilm_name): (&Model, &str) =
        if model.config.arch == glassbox_model::Architecture::Bert {
            (&model, &a.model)
        } else {
            minilm_owned = input::load_model("minilm", device)?;
            (&minilm_owned, "minilm")
        };
    let dict = match &a.dict {
        Some(dir) => Some(latent_source(dir, &model, &a.hooks)?),
        None => None,
    };
    let d = model.config.d_model;
    let mut sizes: BTreeMap<(bool, &str), usize> = BTreeMap::new();
    for l in &labelled {
        *sizes.entry((l.label, l.family.as_str())).or_default() += 1;
    }
    let background = match &a.background {
        Some(corpus) => Background::read(minilm, corpus, a.background_texts as usize, a.segments)?,
        None => Background::default(),
    };
    let read = TextReader {
        reader,
        minilm,
        dict: dict.as_ref(),
        keywords: KeywordFilter::default(),
        d,
        segments: a.segments,
    };
    let texts = read.all(&labelled, &a.data, "reading texts", |l, hash| Held {
        fold: a.benign_split.fold(l.label, &l.family, hash),
        weight: a.family_weights.of(sizes[&(l.label, l.family.as_str())]),
    })?;
    let traffic = match &a.calibrate_on {
        Some(path) => read.all(&traffic, path, "reading traffic", |l, _| Held {
            fold: l.family.clone(),
            weight: 1.0,
        })?,
        None => Vec::new(),
    };
    let families = distinct(&texts, |t| &t.family);
    let attack_families = families.iter().filter(|f| f.0).count();
    if attack_families < 2 || families.len() - attack_families < 1 {
        bail!(
            "leave-one-family-out needs at least two attack families and one benign one; {} has {} and {}",
            a.data.display(),
            attack_families,
            families.len() - attack_families
        );
    }
    let folds = distinct(&texts, |t| &t.fold);
    let cfg = ProbeTraining::default();
    let mut reports = Vec::new();
    for (h, hook) in a.hooks.iter().enumerate() {
        let latent = dict.as_ref().is_some_and(|l| l.hook == h);
        reports.push(evaluate(
            &a,
            &texts,
            &traffic,
            &background.texts,
            h,
            hook,
            &folds,
            d,
            &cfg,
            latent,
        )?);
    }
    if let Some(path) = &a.scores {
        write_scores(path, &texts, &folds, &reports)?;
    }
    // The sentence probe's heads on every family, once for --out and --out-pair.
    let sentences = (a.segments && (a.out.is_some() || a.out_pair.is_some()))
        .then(|| train_sentences(&a, &texts, &background, minilm_name, &cfg));
    let saved = match &a.out {
        Some(dir) => Some(match (&dict, &sentences) {
            (Some(l), _) => save_latent(&a, &texts, &reports[l.hook], l, dir, &cfg)?,
            (None, Some(plain)) => {
                save_sentences(&a, &texts, &background, &reports[0], plain, dir)?
            }
            (None, None) => save_final(&a, &texts, &reports, d, dir, &cfg)?,
        }),
        None => None,
    };
    let saved_pair = match (&a.out_pair, &sentences) {
        (Some(dir), Some(plain)) => Some(save_pair(
            &a,
            &texts,
            &background,
            &reports[0],
            plain,
            d,
            dir,
            &cfg,
        )?),
        _ => None,
    };
    if json_out {
        let hooks: Vec<_> = reports.iter().map(report_json).collect();
        println!(
            "{}",
            json!({"model": a.model, "data": a.data, "texts": texts.len(),
                "families": families.len(), "window": a.window, "hooks": hooks,
                "benign_split": a.benign_split.describe(),
                "background": background.source,
                "saved": saved.as_ref().map(|s| &s.0),
                "rule": saved.as_ref().and_then(|s| s.1.first()),
                "rules": saved.as_ref().map(|s| &s.1),
                "pair": saved_pair.as_ref().map(|p| json!({
                    "saved": p.iter().map(|s| &s.0).collect::<Vec<_>>(),
                    "rules": p.iter().flat_map(|s| &s.1).collect::<Vec<_>>()}))})
        );
        return Ok(());
    }
    println!(
        "leave-one-family-out on {} ({} texts, {} attack and {} benign families; {}), {}",
        a.data.display(),
        texts.len(),
        attack_families,
        families.len() - attack_families,
        a.benign_split.describe(),
        a.model
    );
    if let Some(path) = &a.calibrate_on {
        println!(
            "traffic: {} texts of {}, scored by every fold's detectors, never trained on",
            traffic.len(),
            path.display()
        );
    }
    if let Some(b) = &background.source {
        println!(
            "background: {} paragraphs of {} ({} per file, SHA-256 {}), trained on as benign by segment LR and embedding LR + bg, never scored",
            b.texts, b.corpus, b.per_file, b.sha256
        );
    }
    for r in &reports {
        print_report(r, a.window);
    }
    if let Some((path, rules)) = saved {
        let whens: String = rules
            .iter()
            .map(|r| format!("\n  when = \"{r}\""))
            .collect();
        let monitors = if rules.len() > 1 {
            "two monitors in deploy.toml (both blocking: a text either flags is flagged) read"
        } else {
            "a monitor in deploy.toml reads"
        };
        println!(
            "\nsaved {path}: trained on every family, flag rule calibrated on the held-out scores;\n{monitors} it as{whens}"
        );
    }
    if let Some(pair) = saved_pair {
        let paths: Vec<&str> = pair.iter().map(|s| s.0.as_str()).collect();
        let whens: String = pair
            .iter()
            .flat_map(|s| &s.1)
            .map(|r| format!("\n  when = \"{r}\""))
            .collect();
        println!(
            "\nsaved the pair, {}: each trained on every family, each rule calibrated for half of 1 % FPR on the held-out scores;\nmonitors in deploy.toml (all blocking: a text any flags is flagged) read them as{whens}",
            paths.join(" and ")
        );
    }
    Ok(())
}

/// The distinct (label, key) pairs of the texts, sorted: their families or their folds.
fn distinct(texts: &[Text], key: impl Fn(&Text) -> &String) -> Vec<(bool, String)> {
    texts
        .iter()
        .map(|t| (t.label, key(t).clone()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// One fold's held-out texts and their scores, with the training texts it left out.
struct HeldOut {
    texts: Vec<usize>,
    scores: Vec<[f32; N]>,
    /// Every `--calibrate-on` traffic text's scores by this fold's detectors.
    traffic: Vec<[f32; N]>,
    /// Identical to a held-out text.
    dropped: usize,
    /// Sharing a sentence with one (`--shared-sentences exclude`).
    shared: usize,
    /// `--background` paragraphs left out for repeating a held-out text or sharing a sentence.
    background_left_out: usize,
    /// The `--segments` heads' penalty this fold chose, where it had a choice.
    penalty: Option<f32>,
}

/// Leave-one-family-out at hook `h`: each family scored by detectors trained without it
/// (families in parallel; under `--benign-split random` the benign texts are held out by
/// random part instead), the scores pooled.
#[allow(clippy::too_many_arguments)]
fn evaluate(
    a: &FamiliesArgs,
    texts: &[Text],
    traffic: &[Text],
    background: &[BackgroundText],
    h: usize,
    hook: &str,
    folds: &[(bool, String)],
    d: usize,
    cfg: &ProbeTraining,
    latent: bool,
) -> Result<HookReport> {
    let bar = crate::report::progress(
        folds.len() as u64,
        &format!("{hook}: training without each family"),
    );
    let fold_names = folds;
    let all: Vec<usize> = (0..texts.len()).collect();
    let folds: Vec<HeldOut> = folds
        .par_iter()
        .map(|(label, fold)| {
            let held: Vec<usize> = (0..texts.len())
                .filter(|&i| texts[i].label == *label && &texts[i].fold == fold)
                .collect();
            // A text identical to a held-out one stays out of training even under another
            // family's name; under `--shared-sentences exclude` so does one sharing a sentence.
            let (train, shared) = training_without(texts, &all, &held, a.shared_sentences);
            let dropped = texts.len() - held.len() - train.len() - shared;
            let wording = HeldOutWording::of(texts, &held, a.shared_sentences);
            let paragraphs = background.len();
            let background: Vec<&BackgroundText> = background
                .iter()
                .filter(|b| !wording.covers(&b.hash, &b.sentences))
                .collect();
            let penalty = a
                .segments
                .then(|| choose_penalty(a, texts, &train, &background, cfg));
            let extra = Extra {
                latents: latent,
                attention: a.attention,
                segments: penalty,
                whole_only_if_fits: a.whole_only_if_fits(),
                background: a.background.is_some(),
            };
            let bases = Bases::fit(texts, h, &train, &background, d, a.train_tokens, cfg, extra);
            let stacker = (!a.no_combinations).then(|| Stacker::fit(texts, h, &train, d, a, cfg));
            let score = |t: &Text| bases.scores(stacker.as_ref(), t, h, a.window);
            let scores: Vec<[f32; N]> = held.iter().map(|&i| score(&texts[i])).collect();
            bar.inc(1);
            HeldOut {
                traffic: traffic.iter().map(score).collect(),
                texts: held,
                scores,
                dropped,
                shared,
                background_left_out: paragraphs - background.len(),
                penalty: penalty.filter(|_| a.segment_penalty.len() > 1),
            }
        })
        .collect();
    bar.finish_and_clear();
    let mut pooled: Vec<[f32; N]> = vec![[0.0; N]; texts.len()];
    // Each text's fold (index into `folds`), and each fold's scores of the traffic.
    let mut fold_of = vec![0; texts.len()];
    let mut traffic_scores = Vec::with_capacity(folds.len());
    let (mut dropped, mut shared, mut background_left_out) = (0, 0, 0);
    let mut penalties = BTreeMap::new();
    for (f, (fold, (_, name))) in folds.into_iter().zip(fold_names).enumerate() {
        if let Some(l2) = fold.penalty {
            penalties.insert(name.clone(), l2);
        }
        dropped += fold.dropped;
        shared += fold.shared;
        background_left_out += fold.background_left_out;
        for (&i, s) in fold.texts.iter().zip(&fold.scores) {
            pooled[i] = *s;
            fold_of[i] = f;
        }
        traffic_scores.push(fold.traffic);
    }
    let mut summaries = Vec::new();
    for k in 0..UNION {
        summaries.push(held_out_summary(&pooled, k, texts, None)?);
    }
    // The union with the keyword filter, for every reading `--out` may save; the report keeps
    // the reading whose monitor — alone, or with the keywords where that held out better —
    // catches most at 1 % FPR: what `--out` saves.
    let aggs = readings(a.window);
    let mut best: Option<(usize, Summary)> = None;
    for k in (0..READINGS).filter(|&k| a.aggregation.is_none_or(|x| x == aggs[k])) {
        let union = held_out_summary(&pooled, k, texts, Some(aggs[k]))?;
        let tpr = shipped_tpr(&summaries[k], &union, aggs[k]);
        if best
            .as_ref()
            .is_none_or(|(j, u)| tpr > shipped_tpr(&summaries[*j], u, aggs[*j]))
        {
            best = Some((k, union));
        }
    }
    let (reading, union) = best.context("no probe reading matches --aggregation")?;
    for (p, t) in pooled.iter_mut().zip(texts) {
        p[UNION] = aggs[reading].or_keywords(p[reading], t.keywords);
    }
    for fold in &mut traffic_scores {
        for (p, t) in fold.iter_mut().zip(traffic) {
            p[UNION] = aggs[reading].or_keywords(p[reading], t.keywords);
        }
    }
    summaries.push(union);
    summaries.push(held_out_summary(&pooled, LATENT, texts, None)?);
    summaries.push(held_out_summary(&pooled, ATTENTION, texts, None)?);
    summaries.push(held_out_summary(&pooled, SEGMENTS, texts, None)?);
    summaries.push(held_out_summary(&pooled, DISCOUNTED, texts, None)?);
    summaries.push(held_out_summary(&pooled, EMBEDDING_BG, texts, None)?);
    summaries.push(held_out_summary(&pooled, LENGTH, texts, None)?);
    // Per family: share flagged at each detector's pooled 1 %-FPR threshold.
    let per_family = flagged_by_family(texts, &pooled, |k, _| summaries[k].threshold);
    // The baselines together: the text-length one shown beside the keyword filter.
    let shown: Vec<usize> = (0..BASES)
        .chain([LENGTH])
        .chain(BASES..LENGTH)
        .filter(|&k| !(a.no_combinations && COMBINATIONS.contains(&k)))
        .filter(|&k| latent || k != LATENT)
        .filter(|&k| a.attention || k != ATTENTION)
        .filter(|&k| a.segments || ![SEGMENTS, DISCOUNTED].contains(&k))
        .filter(|&k| a.background.is_some() || k != EMBEDDING_BG)
        .collect();
    let on_traffic = if traffic.is_empty() {
        None
    } else {
        Some(OnTraffic::of(
            &pooled,
            texts,
            &fold_of,
            &traffic_scores,
            &summaries,
            &shown,
        )?)
    };
    // Two monitors deployed together: held to a third party's writing requests they caught the
    // most between them, each catching families the other misses (harmful requests and
    // translations; jailbreaks and résumés; README: *Discounted by piece count*).
    let pair = a
        .segments
        .then(|| {
            Pair::of(
                [DISCOUNTED, UNION],
                &pooled,
                texts,
                &fold_of,
                &traffic_scores,
            )
        })
        .transpose()?;
    Ok(HookReport {
        on_traffic,
        pair,
        traffic_scores,
        hook: hook.to_string(),
        shown,
        reading,
        summaries,
        per_family,
        dropped,
        shared,
        background_left_out,
        penalties,
        pooled,
    })
}

/// Per family: its texts, and how many of them each detector flags (scores in `DETECTORS`
/// order), `threshold(k, i)` being detector k's threshold for text i.
fn flagged_by_family(
    texts: &[Text],
    pooled: &[[f32; N]],
    threshold: impl Fn(usize, usize) -> f32,
) -> BTreeMap<(bool, String), (usize, [usize; N])> {
    let mut per_family: BTreeMap<(bool, String), (usize, [usize; N])> = BTreeMap::new();
    for (i, (t, scores)) in texts.iter().zip(pooled).enumerate() {
        let e = per_family
            .entry((t.label, t.family.clone()))
            .or_insert((0, [0; N]));
        e.0 += 1;
        for (k, (hits, &score)) in e.1.iter_mut().zip(scores).enumerate() {
            *hits += usize::from(score > threshold(k, i));
        }
    }
    per_family
}

/// Every text's held-out scores as JSON lines (written whole, then renamed into place).
fn write_scores(
    path: &std::path::Path,
    texts: &[Text],
    folds: &[(bool, String)],
    reports: &[HookReport],
) -> Result<()> {
    let mut out = String::new();
    for r in reports {
        let scores = |p: &[f32; N]| -> serde_json::Map<String, serde_json::Value> {
            r.shown
                .iter()
                .map(|&k| (DETECTORS[k].to_string(), json!(p[k])))
                .collect()
        };
        for (i, (t, p)) in texts.iter().zip(&r.pooled).enumerate() {
            out += &json!({"hook": r.hook, "index": i, "family": t.family, "fold": t.fold,
                "label": u8::from(t.label), "scores": scores(p)})
            .to_string();
            out.push('\n');
        }
        // The traffic once per fold: the scores that fold's threshold came from.
        for ((_, fold), traffic) in folds.iter().zip(&r.traffic_scores) {
            for (j, p) in traffic.iter().enumerate() {
                out += &json!({"hook": r.hook, "traffic": j, "fold": fold, "scores": scores(p)})
                    .to_string();
                out.push('\n');
            }
        }
    }
    glassbox_store::fsutil::atomic_write(path, out.as_bytes())
        .with_context(|| format!("writing held-out scores to {}", path.display()))
}

fn report_json(r: &HookReport) -> serde_json::Value {
    let on_traffic = |k: usize| r.on_traffic.as_ref().and_then(|t| t.summaries[k].as_ref());
    let detectors: Vec<_> = r
        .shown
        .iter()
        .map(|&k| {
            json!({"detector": DETECTORS[k], "summary": r.summaries[k],
                "on_traffic": on_traffic(k)})
        })
        .collect();
    let rates = |hit: &[usize; N], count: usize| -> serde_json::Map<String, serde_json::Value> {
        r.shown
            .iter()
            .map(|&k| {
                (
                    DETECTORS[k].to_string(),
                    json!(hit[k] as f64 / count as f64),
                )
            })
            .collect()
    };
    let fam: Vec<_> = r
        .per_family
        .iter()
        .map(|(key @ (label, f), (count, hit))| {
            let on_traffic = r
                .on_traffic
                .as_ref()
                .map(|t| rates(&t.per_family[key], *count));
            json!({"family": f, "label": label, "texts": count, "flagged": rates(hit, *count),
                "flagged_on_traffic": on_traffic})
        })
        .collect();
    json!({"hook": r.hook, "detectors": detectors, "per_family": fam,
        "union_reading": DETECTORS[r.reading], "dropped_duplicates": r.dropped,
        "dropped_sharing_a_sentence": r.shared, "background_left_out": r.background_left_out,
        "segment_penalties": r.penalties,
        "traffic_texts": r.on_traffic.as_ref().map(|t| t.texts),
        "pair": r.pair.as_ref().map(pair_json)})
}

/// The pair in `--json`: its members as the report names them, both calibrations, per family.
fn pair_json(p: &Pair) -> serde_json::Value {
    let families: Vec<_> = p
        .per_family
        .iter()
        .map(|((label, family), &(texts, on_set, on_traffic))| {
            json!({"family": family, "label": label, "texts": texts,
                "flagged": on_set as f64 / texts as f64,
                "flagged_on_traffic": p.on_traffic.as_ref().map(|_| on_traffic as f64 / texts as f64)})
        })
        .collect();
    json!({"members": p.members.map(|k| DETECTORS[k]), "budget_each": pair::HALF,
        "on_set": p.on_set, "on_traffic": p.on_traffic, "per_family": families})
}

fn print_report(r: &HookReport, window: usize) {
    println!(
        "\n{}\n{:<22} {:>7} {:>17} {:>10} {:>15} {:>10}",
        r.hook, "detector", "AUROC", "95 % interval", "TPR@1%FPR", "95 % interval", "TPR@5%FPR"
    );
    for &k in &r.shown {
        let s = &r.summaries[k];
        let label = detector_label(r, k, window);
        println!(
            "{:<22} {:>7.4} {:>17} {:>10.3} {:>15} {:>10.3}",
            label,
            s.auroc,
            format!("[{:.4}, {:.4}]", s.auroc_ci95.0, s.auroc_ci95.1),
            s.tpr_at_1pct_fpr,
            format!(
                "[{:.3}, {:.3}]",
                s.tpr_at_1pct_fpr_ci95.0, s.tpr_at_1pct_fpr_ci95.1
            ),
            s.tpr_at_5pct_fpr
        );
    }
    print_families(
        r,
        "flagged at each detector's 1 %-FPR threshold (held-out family):",
        |key| r.per_family[key].1,
    );
    if let Some(t) = &r.on_traffic {
        println!(
            "\nheld to 1 % of the {} traffic texts (--calibrate-on; each fold's threshold set on its own detectors' scores of them, never trained on):\n{:<22} {:>10} {:>15} {:>8} {:>11} {:>11} {:>16}",
            t.texts, "detector", "TPR@1%", "95 % interval", "AUROC", "set benign", "TPR held", "traffic flagged"
        );
        println!(
            "{:<22} {:>10} {:>15} {:>8} {:>11} {:>11} {:>16}",
            "", "of traffic", "", "vs it", "flagged", "to both", "at set's thresh."
        );
        for &k in &r.shown {
            let Some(s) = &t.summaries[k] else { continue };
            println!(
                "{:<22} {:>10.3} {:>15} {:>8.4} {:>10.1}% {:>11.3} {:>15.1}%",
                detector_label(r, k, window),
                s.tpr,
                format!("[{:.3}, {:.3}]", s.tpr_ci95.0, s.tpr_ci95.1),
                s.auroc,
                100.0 * s.set_fpr,
                s.tpr_held_to_both,
                100.0 * s.flagged_at_set_threshold
            );
        }
        println!("(held to both: each fold's threshold the higher of its traffic threshold and the set's own)");
        print_families(
            r,
            "flagged at each detector's thresholds on the traffic (held-out family):",
            |key| t.per_family[key],
        );
    }
    if let Some(p) = &r.pair {
        print_pair(r, p, window);
    }
    if r.dropped > 0 {
        println!(
            "({} training texts left out because they repeat a held-out text)",
            r.dropped
        );
    }
    if r.shared > 0 {
        println!(
            "({} training texts left out because they share a sentence with a held-out text)",
            r.shared
        );
    }
    if r.background_left_out > 0 {
        println!(
            "({} background paragraphs left out over the folds: each repeats a held-out text or shares a sentence with one)",
            r.background_left_out
        );
    }
    // Each penalty chosen, in numeric order, with how many folds chose it.
    let mut chosen: Vec<f32> = r.penalties.values().copied().collect();
    chosen.sort_by(f32::total_cmp);
    if !chosen.is_empty() {
        let list: Vec<String> = chosen
            .chunk_by(|x, y| x == y)
            .map(|run| format!("{} in {}", run[0], run.len()))
            .collect();
        println!(
            "(segment LR penalty chosen inside each fold: {} of {} folds)",
            list.join(", "),
            r.penalties.len()
        );
    }
}

/// The pair's block: both calibrations, then the families either catches.
fn print_pair(r: &HookReport, p: &Pair, window: usize) {
    let [a, b] = p.members.map(|k| detector_label(r, k, window));
    println!(
        "\ntwo monitors together, each held to half the budget (flagged where either flags): {a} + {b}"
    );
    println!(
        "  on the set:     TPR {:.3} at 1 % FPR (0.5 % each, thresholds {} / {}; the set's benign texts flagged: {:.2} %)",
        p.on_set.tpr,
        p.on_set.thresholds[0],
        p.on_set.thresholds[1],
        100.0 * p.on_set.fpr
    );
    if let Some(t) = &p.on_traffic {
        println!(
            "  on the traffic: TPR {:.3} at 1 % of it (0.5 % each; traffic flagged {:.2} %, the set's benign texts {:.2} %); held to both: {:.3}",
            t.tpr,
            100.0 * t.traffic_flagged,
            100.0 * t.set_fpr,
            t.tpr_held_to_both
        );
    }
    // The traffic's column only where there was traffic.
    let traffic = |cell: String| {
        if p.on_traffic.is_some() {
            format!(" {cell:>11}")
        } else {
            String::new()
        }
    };
    println!(
        "  {:<36} {:>6} {:>8}{}",
        "family",
        "texts",
        "set",
        traffic("traffic".into())
    );
    for ((label, family), &(texts, on_set, on_traffic)) in &p.per_family {
        let rate = |hits: usize| format!("{:.1}%", 100.0 * hits as f64 / texts as f64);
        println!(
            "  {:<36} {:>6} {:>8}{}",
            format!("{family}{}", if *label { "" } else { " (benign)" }),
            texts,
            rate(on_set),
            traffic(rate(on_traffic))
        );
    }
}

/// A detector's name in the report: the window's length and the union's reading spelt out.
fn detector_label(r: &HookReport, k: usize, window: usize) -> String {
    match DETECTORS[k] {
        "probe window" => format!("probe window{window}"),
        "probe or keywords" => format!("{} or keywords", reading_name(r.reading, window)),
        name => name.to_string(),
    }
}

/// A table of each family's share flagged by every shown detector, `hits` giving the counts.
fn print_families(r: &HookReport, title: &str, hits: impl Fn(&(bool, String)) -> [usize; N]) {
    println!("{title}");
    let columns = [
        "mean",
        "max",
        "window",
        "pooled",
        "embedding",
        "keywords",
        "stacked",
        "max rank",
        "or kw",
        "latent",
        "attention",
        "segments",
        "seg disc",
        "emb + bg",
        "length",
    ];
    let columns: Vec<&str> = r.shown.iter().map(|&k| columns[k]).collect();
    let row = |cells: &[String]| {
        cells
            .iter()
            .zip(&columns)
            .map(|(c, h)| format!(" {c:>w$}", w = h.len().max(7)))
            .collect::<String>()
    };
    let heads: Vec<String> = columns.iter().map(|h| h.to_string()).collect();
    println!(
        "{:<34} {:>5} {:>6}{}",
        "family",
        "label",
        "texts",
        row(&heads)
    );
    for (key @ (label, f), (count, _)) in &r.per_family {
        let hit = hits(key);
        let pct: Vec<String> = r
            .shown
            .iter()
            .map(|&k| format!("{:.1}%", 100.0 * hit[k] as f64 / *count as f64))
            .collect();
        println!(
            "{:<34} {:>5} {:>6}{}",
            f,
            u8::from(*label),
            count,
            row(&pct)
        );
    }
}

/// A probe reading's short name, e.g. "window4".
fn reading_name(k: usize, window: usize) -> String {
    match k {
        0 => "mean".into(),
        1 => "max".into(),
        2 => format!("window{window}"),
        _ => "pooled".into(),
    }
}

/// The latent probe's L2 penalty. A mean code has as many dimensions as the dictionary has
/// latents (16,384 for the main job's), and at the activation probes' 1e-3 the fit grows
/// held-out logits past 40, saturating scores at 1.0 (192 of 1,258 benign texts tied there
/// with 1,645 attacks). Of 1e-3, 1e-2, 0.1 and 1 on the red-team set (MiniLM L3, the main
/// job's dictionary), 0.1 held out best and keeps logits below 10.
const LATENT_L2: f32 = 0.1;

/// The probe on mean codes (see [`LATENT_L2`]).
fn fit_latents(texts: &[Text], train: &[usize], cfg: &ProbeTraining) -> (Vec<f32>, f32) {
    let cfg = ProbeTraining {
        l2: LATENT_L2,
        ..cfg.clone()
    };
    fit_vectors(texts, train, |t| &t.latents, &[], &cfg)
}

/// `--dict`'s dictionary, its identity and the `--hook` it reads.
struct LatentSource {
    sae: glassbox_dictionary::Sae,
    sha256: String,
    path: PathBuf,
    /// Index into `--hook`.
    hook: usize,
}

fn latent_source(dir: &std::path::Path, model: &Model, hooks: &[String]) -> Result<LatentSource> {
    let sae = glassbox_dictionary::saelens::load(dir)
        .with_context(|| format!("--dict {}", dir.display()))?;
    sae.hook_in(model, glassbox_dictionary::fit::Use::Read)
        .with_context(|| format!("--dict {}", dir.display()))?;
    let hook = hooks
        .iter()
        .position(|h| h == &sae.cfg.hook)
        .with_context(|| {
            format!(
                "--dict {} reads {}; add --hook {} (the latent probe reads the dictionary's own hook)",
                dir.display(),
                sae.cfg.hook,
                sae.cfg.hook
            )
        })?;
    if sae.cfg.is_transcoder() {
        bail!(
            "--dict {}: a transcoder's latents are read from {} but written elsewhere; give an SAE",
            dir.display(),
            sae.cfg.hook
        );
    }
    Ok(LatentSource {
        sha256: glassbox_store::fsutil::dictionary_sha256(dir)?,
        path: dir.to_path_buf(),
        sae,
        hook,
    })
}

/// The mean of a text's codes, `[d_sae]`, from its activations `[tokens, d_in]`: a pooled
/// probe on it reads the mean of its per-token logits, as the served rule `mean(logit P)` does.
fn mean_code(sae: &glassbox_dictionary::Sae, acts: &[f32]) -> Result<Vec<f32>> {
    let codes = sae.encode(acts)?;
    let n = codes.rows.len().max(1) as f32;
    let mut mean = vec![0.0; sae.d_sae()];
    for row in &codes.rows {
        for &(j, v) in row {
            mean[j as usize] += v / n;
        }
    }
    Ok(mean)
}

/// Sentence probes' readings of `texts` (each with the span of its positive part, if any):
/// every text whole and sentence by sentence, [`READ_TOGETHER`] at a time so their pieces share
/// batches (`Reading::of_many`), under a progress bar saying `what`; an error names the texts'
/// places in `source` (from 1). For `--segments` and the blue round.
pub(crate) fn sentence_readings(
    model: &Model,
    texts: &[(&str, Option<(usize, usize)>)],
    source: &str,
    what: &str,
) -> Result<Vec<Reading>> {
    let bar = crate::report::progress(texts.len() as u64, what);
    let mut out = Vec::with_capacity(texts.len());
    for (c, chunk) in texts.chunks(READ_TOGETHER).enumerate() {
        let first = c * READ_TOGETHER + 1;
        out.extend(
            Reading::of_many(model, chunk)
                .with_context(|| format!("{source}, texts {first}–{}", first + chunk.len() - 1))?,
        );
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// `--segments`: the sentence probe's heads (see [`sentence_probe::fit_heads`]).
fn fit_segments(
    texts: &[Text],
    train: &[usize],
    background: &[&BackgroundText],
    cfg: &ProbeTraining,
    l2: f32,
    whole_only_if_fits: bool,
) -> Vec<KindHead> {
    fit_segments_at(texts, train, background, cfg, &[l2], whole_only_if_fits)
        .pop()
        .unwrap_or_default()
}

/// The benign texts among `train` and the background prose: what a sentence probe's tail
/// scale is estimated on ([`discount`]).
fn benign_readings<'t>(
    texts: &'t [Text],
    train: &'t [usize],
    background: &'t [&BackgroundText],
) -> impl Iterator<Item = &'t Reading> {
    train
        .iter()
        .map(|&i| &texts[i])
        .filter(|t| !t.label)
        .map(|t| &t.reading)
        .chain(background.iter().map(|b| &b.reading))
}

/// `p` discounted by piece count at the tail scale of its logits over `benign` (the texts it
/// was trained on; undiscounted where they hold too few pieces for a tail).
fn discount<'r>(p: &SentenceProbe, benign: impl IntoIterator<Item = &'r Reading>) -> SentenceProbe {
    SentenceProbe {
        piece_scale: p.tail_scale(benign),
        ..p.clone()
    }
}

/// [`fit_segments`] at each penalty of `l2s`, in one pass over the pieces per epoch.
fn fit_segments_at(
    texts: &[Text],
    train: &[usize],
    background: &[&BackgroundText],
    cfg: &ProbeTraining,
    l2s: &[f32],
    whole_only_if_fits: bool,
) -> Vec<Vec<KindHead>> {
    let examples: Vec<Example> = train
        .iter()
        .map(|&i| Example {
            reading: &texts[i].reading,
            label: texts[i].label,
            kind: &texts[i].kind,
            weight: texts[i].weight,
        })
        .chain(background.iter().map(|b| Example::benign(&b.reading)))
        .collect();
    sentence_probe::fit_heads_at(&examples, cfg, l2s, whole_only_if_fits)
}

/// The `--segment-penalty` that holds out best inside `train`: for each, heads trained without
/// each group of its families ([`family_groups`]) score that group, and the pooled scores'
/// TPR at 1 % FPR decides (ties: the larger penalty). One value is taken as it is.
fn choose_penalty(
    a: &FamiliesArgs,
    texts: &[Text],
    train: &[usize],
    background: &[&BackgroundText],
    cfg: &ProbeTraining,
) -> f32 {
    let [first, rest @ ..] = a.segment_penalty.as_slice() else {
        return sentence_probe::L2;
    };
    if rest.is_empty() {
        return *first;
    }
    let group = family_groups(texts, train);
    let whole_only_if_fits = a.whole_only_if_fits();
    let mut scored: Vec<Vec<(f32, bool)>> = vec![Vec::new(); a.segment_penalty.len()];
    for g in 0..STACK_GROUPS {
        let held: Vec<usize> = train.iter().copied().filter(|&i| group(i) == g).collect();
        let rest: Vec<usize> = train.iter().copied().filter(|&i| group(i) != g).collect();
        let (inner, _) = training_without(texts, &rest, &held, a.shared_sentences);
        let wording = HeldOutWording::of(texts, &held, a.shared_sentences);
        let inner_background: Vec<&BackgroundText> = background
            .iter()
            .copied()
            .filter(|b| !wording.covers(&b.hash, &b.sentences))
            .collect();
        let heads = fit_segments_at(
            texts,
            &inner,
            &inner_background,
            cfg,
            &a.segment_penalty,
            whole_only_if_fits,
        );
        for ((&l2, heads), scored) in a.segment_penalty.iter().zip(heads).zip(&mut scored) {
            let probe = SentenceProbe {
                name: String::new(),
                model: String::new(),
                heads,
                penalty: Some(l2),
                calibration: None,
                background: None,
                whole_only_if_fits,
                piece_scale: None,
            };
            scored.extend(
                held.iter()
                    .map(|&i| (texts[i].reading.score(&probe), texts[i].label)),
            );
        }
    }
    // Attacks caught at the pooled benign scores' 1 %-FPR threshold.
    let caught = |s: &[(f32, bool)]| {
        let benign: Vec<f32> = s.iter().filter(|x| !x.1).map(|x| x.0).collect();
        let cut = glassbox_dictionary::roc::threshold_for_fpr(&benign, 0.01);
        s.iter().filter(|x| x.1 && x.0 > cut).count()
    };
    a.segment_penalty
        .iter()
        .zip(&scored)
        .map(|(&l2, s)| (l2, caught(s)))
        .max_by(|(p, m), (q, n)| m.cmp(n).then(p.total_cmp(q)))
        .map_or(*first, |(l2, _)| l2)
}

/// The training texts among `pool` a fold of `held` may use: none identical to a held-out
/// text and, under `--shared-sentences exclude`, none sharing a sentence with one; with the
/// number left out for sharing a sentence.
fn training_without(
    texts: &[Text],
    pool: &[usize],
    held: &[usize],
    shared: SharedSentences,
) -> (Vec<usize>, usize) {
    let wording = HeldOutWording::of(texts, held, shared);
    let others = pool
        .iter()
        .copied()
        .filter(|&i| !wording.hashes.contains(&texts[i].hash));
    let (train, left_out): (Vec<usize>, Vec<usize>) =
        others.partition(|&i| !wording.shares(&texts[i].sentences));
    (train, left_out.len())
}

/// What a training text must not share with the held-out ones: their whole texts (SHA-256)
/// and, under `--shared-sentences exclude`, their sentences.
struct HeldOutWording {
    hashes: HashSet<[u8; 32]>,
    sentences: HashSet<[u8; 32]>,
}

impl HeldOutWording {
    fn of(texts: &[Text], held: &[usize], shared: SharedSentences) -> Self {
        Self {
            hashes: held.iter().map(|&i| texts[i].hash).collect(),
            sentences: match shared {
                SharedSentences::Keep => HashSet::new(),
                SharedSentences::Exclude => held
                    .iter()
                    .flat_map(|&i| texts[i].sentences.iter().copied())
                    .collect(),
            },
        }
    }

    fn shares(&self, sentences: &[[u8; 32]]) -> bool {
        sentences.iter().any(|s| self.sentences.contains(s))
    }

    /// Whether a text of this hash and these sentences must stay out of training.
    fn covers(&self, hash: &[u8; 32], sentences: &[[u8; 32]]) -> bool {
        self.hashes.contains(hash) || self.shares(sentences)
    }
}

/// The inner group (of [`STACK_GROUPS`]) of each training text: its fold's place among the
/// training folds, sorted benign first, so the groups share the benign families (or parts) out.
fn family_groups<'t>(texts: &'t [Text], train: &[usize]) -> impl Fn(usize) -> usize + 't {
    let folds: Vec<(bool, &str)> = train
        .iter()
        .map(|&i| (texts[i].label, texts[i].fold.as_str()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    move |i| {
        let key = (texts[i].label, texts[i].fold.as_str());
        folds.binary_search(&key).unwrap_or(0) % STACK_GROUPS
    }
}

fn fit_tokens(
    texts: &[Text],
    h: usize,
    train: &[usize],
    d: usize,
    keep: usize,
    cfg: &ProbeTraining,
) -> (Vec<f32>, f32) {
    let samples: Vec<Sample> = train
        .iter()
        .map(|&i| {
            let t = &texts[i];
            Sample::subsampled(&t.layers[h].0, d, t.label, t.token_labels.as_deref(), keep)
                .weighted(t.weight)
        })
        .collect();
    let refs: Vec<&Sample> = samples.iter().collect();
    probe::fit(&refs, d, cfg)
}

/// Logistic regression on one vector per text (`which` picks it), with `benign` vectors (the
/// background prose, weight 1) among the negatives.
fn fit_vectors(
    texts: &[Text],
    train: &[usize],
    which: impl Fn(&Text) -> &Vec<f32>,
    benign: &[&[f32]],
    cfg: &ProbeTraining,
) -> (Vec<f32>, f32) {
    let d = which(&texts[0]).len();
    let samples: Vec<Sample> = train
        .iter()
        .map(|&i| Sample::new(which(&texts[i]).clone(), texts[i].label).weighted(texts[i].weight))
        .chain(benign.iter().map(|v| Sample::new(v.to_vec(), false)))
        .collect();
    let refs: Vec<&Sample> = samples.iter().collect();
    probe::fit(&refs, d, cfg)
}

/// How the saved probe reads a text, for each of the probe readings in `DETECTORS` order (the
/// pooled probe, applied to every token, averages to its text-level logit).
fn readings(window: usize) -> [Aggregation; READINGS] {
    [
        Aggregation::Mean,
        Aggregation::Max,
        Aggregation::Window { tokens: window },
        Aggregation::MeanLogit,
    ]
}

/// The 1 %-FPR summary of detector `k`'s held-out scores, or of their union with the keyword
/// filter, the scores read as `union` reads them.
fn held_out_summary(
    pooled: &[[f32; N]],
    k: usize,
    texts: &[Text],
    union: Option<Aggregation>,
) -> Result<Summary> {
    held_out_summary_at(pooled, k, texts, union, 0.01)
}

/// [`held_out_summary`] with the threshold for `fpr`.
fn held_out_summary_at(
    pooled: &[[f32; N]],
    k: usize,
    texts: &[Text],
    union: Option<Aggregation>,
    fpr: f64,
) -> Result<Summary> {
    let (scores, labels): (Vec<f32>, Vec<bool>) = pooled
        .iter()
        .zip(texts)
        .map(|(p, t)| {
            let s = union.map_or(p[k], |agg| agg.or_keywords(p[k], t.keywords));
            (s, t.label)
        })
        .unzip();
    Ok(Summary::of(&Scored::new(&scores, &labels)?, fpr))
}

/// Whether a reading (read as `agg` reads it) ships with the keyword filter: its union held out
/// better, and the union's threshold lies below a keyword hit (so a hit alone flags).
fn ships_with_keywords(reading: &Summary, union: &Summary, agg: Aggregation) -> bool {
    union.tpr_at_1pct_fpr > reading.tpr_at_1pct_fpr && union.threshold < agg.scale().keyword_hit()
}

/// The held-out TPR at 1 % FPR of what `--out` would ship for a reading: it, or its union.
fn shipped_tpr(reading: &Summary, union: &Summary, agg: Aggregation) -> f64 {
    if ships_with_keywords(reading, union, agg) {
        union.tpr_at_1pct_fpr
    } else {
        reading.tpr_at_1pct_fpr
    }
}

/// The best probe (hook and aggregation by the held-out TPR at 1 % FPR of what ships: the
/// reading alone or with the keyword filter) trained on every family, with that aggregation as
/// its flag rule and the threshold from the held-out scores.
fn save_final(
    a: &FamiliesArgs,
    texts: &[Text],
    reports: &[HookReport],
    d: usize,
    dir: &std::path::Path,
    cfg: &ProbeTraining,
) -> Result<(String, Vec<String>)> {
    let aggs = readings(a.window);
    // Each hook's report already holds its best reading (`evaluate`).
    let shipped = |h: usize| {
        let r = &reports[h];
        shipped_tpr(
            &r.summaries[r.reading],
            &r.summaries[UNION],
            aggs[r.reading],
        )
    };
    let h = (0..reports.len())
        .max_by(|&i, &j| shipped(i).total_cmp(&shipped(j)))
        .unwrap_or(0);
    let best = reports[h].reading;
    let or_keywords = ships_with_keywords(
        &reports[h].summaries[best],
        &reports[h].summaries[UNION],
        aggs[best],
    );
    let s = &reports[h].summaries[if or_keywords { UNION } else { best }];
    let (weights, bias) = fit_on_all(a, texts, h, aggs[best], d, cfg);
    let hook = &a.hooks[h];
    let saved = Shipped {
        weights,
        bias,
        aggregation: aggs[best],
        summary: s,
        or_keywords,
        dictionary: None,
    };
    write_probe(a, &probe_name(a), hook, saved, dir)
}

/// A probe of hook `h` read as `aggregation`, trained on every family: the pooled probe on
/// each text's mean activation (applied to each token, it averages to its text-level logit),
/// the others on tokens.
fn fit_on_all(
    a: &FamiliesArgs,
    texts: &[Text],
    h: usize,
    aggregation: Aggregation,
    d: usize,
    cfg: &ProbeTraining,
) -> (Vec<f32>, f32) {
    let all: Vec<usize> = (0..texts.len()).collect();
    if aggregation == Aggregation::MeanLogit {
        fit_vectors(texts, &all, |t| &t.layers[h].1, &[], cfg)
    } else {
        fit_tokens(texts, h, &all, d, a.train_tokens, cfg)
    }
}

/// The probe on `--dict`'s latents trained on every family, with the threshold its held-out
/// scores give for 1 % FPR (alone, or with the keyword filter where that holds out better).
fn save_latent(
    a: &FamiliesArgs,
    texts: &[Text],
    r: &HookReport,
    l: &LatentSource,
    dir: &std::path::Path,
    cfg: &ProbeTraining,
) -> Result<(String, Vec<String>)> {
    // The latent probe is a pooled probe: it reads a text's mean logit.
    let reading = Aggregation::MeanLogit;
    let union = held_out_summary(&r.pooled, LATENT, texts, Some(reading))?;
    let alone = &r.summaries[LATENT];
    let or_keywords = ships_with_keywords(alone, &union, reading);
    let all: Vec<usize> = (0..texts.len()).collect();
    let (weights, bias) = fit_latents(texts, &all, cfg);
    let saved = Shipped {
        weights,
        bias,
        aggregation: reading,
        summary: if or_keywords { &union } else { alone },
        or_keywords,
        dictionary: Some(ProbeDictionary {
            sha256: l.sha256.clone(),
            path: l.path.display().to_string(),
        }),
    };
    write_probe(a, &probe_name(a), &r.hook, saved, dir)
}

/// The `--segments` sentence probe's heads trained on every family (no discount, no
/// threshold yet); it reads the sentence embeddings of `embedder`.
fn train_sentences(
    a: &FamiliesArgs,
    texts: &[Text],
    background: &Background,
    embedder: &str,
    cfg: &ProbeTraining,
) -> SentenceProbe {
    let all: Vec<usize> = (0..texts.len()).collect();
    let paragraphs: Vec<&BackgroundText> = background.texts.iter().collect();
    let l2 = choose_penalty(a, texts, &all, &paragraphs, cfg);
    let whole_only_if_fits = a.whole_only_if_fits();
    SentenceProbe {
        name: probe_name(a),
        model: embedder.to_string(),
        heads: fit_segments(texts, &all, &paragraphs, cfg, l2, whole_only_if_fits),
        penalty: Some(l2),
        whole_only_if_fits,
        background: background.source.clone(),
        calibration: None,
        piece_scale: None,
    }
}

/// `plain` discounted by piece count, its scale from the benign texts and background it
/// trained on (every family).
fn discounted_on_all(
    texts: &[Text],
    background: &Background,
    plain: &SentenceProbe,
) -> SentenceProbe {
    let all: Vec<usize> = (0..texts.len()).collect();
    let paragraphs: Vec<&BackgroundText> = background.texts.iter().collect();
    discount(plain, benign_readings(texts, &all, &paragraphs))
}

/// The `--segments` sentence probe (discounted under --discount-pieces) with the threshold its
/// held-out scores give for 1 % FPR.
fn save_sentences(
    a: &FamiliesArgs,
    texts: &[Text],
    background: &Background,
    r: &HookReport,
    plain: &SentenceProbe,
    dir: &std::path::Path,
) -> Result<(String, Vec<String>)> {
    let (p, row) = if a.discount_pieces {
        (discounted_on_all(texts, background, plain), DISCOUNTED)
    } else {
        (plain.clone(), SEGMENTS)
    };
    write_sentences(a, texts, p, &r.summaries[row], dir)
}

/// The two monitors of [`pair`] trained on every family, each with the threshold its held-out
/// scores give for half of 1 % FPR: the discounted sentence probe in DIR/sentences and the
/// union's probe reading (with the keyword filter) in DIR/pooled.
#[allow(clippy::too_many_arguments)]
fn save_pair(
    a: &FamiliesArgs,
    texts: &[Text],
    background: &Background,
    r: &HookReport,
    plain: &SentenceProbe,
    d: usize,
    dir: &std::path::Path,
    cfg: &ProbeTraining,
) -> Result<Vec<(String, Vec<String>)>> {
    let at_half = |k: usize| held_out_summary_at(&r.pooled, k, texts, None, pair::HALF);
    let sentences = write_sentences(
        a,
        texts,
        discounted_on_all(texts, background, plain),
        &at_half(DISCOUNTED)?,
        &dir.join("sentences"),
    )?;
    // The union's scores are already its reading plus a keyword hit's worth.
    let union = at_half(UNION)?;
    let aggregation = readings(a.window)[r.reading];
    let (weights, bias) = fit_on_all(a, texts, 0, aggregation, d, cfg);
    let pooled = Shipped {
        weights,
        bias,
        aggregation,
        summary: &union,
        or_keywords: true,
        dictionary: None,
    };
    let name = format!("{}-pooled", probe_name(a));
    let pooled = write_probe(a, &name, &r.hook, pooled, &dir.join("pooled"))?;
    Ok(vec![sentences, pooled])
}

/// Saves a sentence probe with the threshold of `summary`; returns the file and its rule.
fn write_sentences(
    a: &FamiliesArgs,
    texts: &[Text],
    mut p: SentenceProbe,
    summary: &Summary,
    dir: &std::path::Path,
) -> Result<(String, Vec<String>)> {
    p.calibration = Some(calibration(a, Aggregation::Sentences, summary, false)?);
    p.save(dir)?;
    report_in_sample(texts, &p);
    let rules = p
        .calibration
        .as_ref()
        .map_or(Vec::new(), |c| c.rules(&p.name));
    Ok((dir.join(sentence_probe::FILE).display().to_string(), rules))
}

/// Says (on stderr) how many of the benign texts the saved probe was trained on its own rule
/// flags, by family. The threshold was set on held-out scores, and no fold scores the final
/// probe on its training texts: a benign text whose wording the attacks share (an injection's
/// document without the injection) can score higher in sample than any held-out one did.
fn report_in_sample(texts: &[Text], p: &SentenceProbe) {
    let Some(threshold) = p.calibration.as_ref().map(|c| c.threshold) else {
        return;
    };
    let mut flagged: BTreeMap<&str, usize> = BTreeMap::new();
    let benign = texts.iter().filter(|t| !t.label);
    let n = benign.clone().count();
    for t in benign.filter(|t| t.reading.score(p) > threshold) {
        *flagged.entry(t.family.as_str()).or_default() += 1;
    }
    let total: usize = flagged.values().sum();
    let families: Vec<String> = flagged.iter().map(|(f, k)| format!("{f} {k}")).collect();
    eprintln!(
        "in sample: the saved probe flags {total} of the {n} benign texts it was trained on{}{}",
        if families.is_empty() { "" } else { ": " },
        families.join(", ")
    );
}

/// The saved detector's name in monitor rules: `--name`, else the data file's stem.
fn probe_name(a: &FamiliesArgs) -> String {
    a.name.clone().unwrap_or_else(|| {
        a.data
            .file_stem()
            .map_or("probe".into(), |s| s.to_string_lossy().into_owned())
    })
}

/// The flag rule a saved detector gets: the threshold its held-out scores give for the
/// summary's target FPR (1 %; half of it for a member of the pair).
fn calibration(
    a: &FamiliesArgs,
    aggregation: Aggregation,
    s: &Summary,
    or_keywords: bool,
) -> Result<Calibration> {
    Ok(Calibration {
        aggregation,
        threshold: s.threshold,
        target_fpr: s.target_fpr,
        fpr: s.fpr,
        tpr: s.tpr,
        data: format!("{} ({})", a.data.display(), a.benign_split.describe()),
        data_sha256: glassbox_store::fsutil::sha256_file(&a.data)?,
        positives: s.positives,
        negatives: s.negatives,
        or_keywords,
    })
}

/// What `--out` saves: a probe fitted on every family and its held-out operating point.
struct Shipped<'s> {
    weights: Vec<f32>,
    bias: f32,
    aggregation: Aggregation,
    summary: &'s Summary,
    or_keywords: bool,
    dictionary: Option<ProbeDictionary>,
}

/// Saves a probe with its calibration; returns the file and the monitor rules that read it.
fn write_probe(
    a: &FamiliesArgs,
    name: &str,
    hook: &str,
    saved: Shipped,
    dir: &std::path::Path,
) -> Result<(String, Vec<String>)> {
    let p = Probe {
        name: name.to_string(),
        model: a.model.clone(),
        hook: hook.to_string(),
        weights: saved.weights,
        bias: saved.bias,
        metrics: None,
        calibration: Some(calibration(
            a,
            saved.aggregation,
            saved.summary,
            saved.or_keywords,
        )?),
        dictionary: saved.dictionary,
    };
    p.save(dir)?;
    let rules = p
        .calibration
        .as_ref()
        .map_or(Vec::new(), |c| c.rules(&p.name));
    Ok((dir.join(probe::FILE).display().to_string(), rules))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_random_benign_split_deals_benign_texts_into_parts_and_keeps_attack_families() {
        let mut seen = HashSet::new();
        for b in 0..=255u8 {
            let hash = [b; 32];
            let part = BenignSplit::Random.fold(false, "benign_x", &hash);
            assert!(part.starts_with("benign part "), "{part}");
            seen.insert(part);
            assert_eq!(
                BenignSplit::Random.fold(true, "attack_y", &hash),
                "attack_y"
            );
            assert_eq!(
                BenignSplit::Family.fold(false, "benign_x", &hash),
                "benign_x"
            );
        }
        assert_eq!(seen.len(), usize::from(BENIGN_PARTS));
    }

    /// The blue round reads a probe's background again only if it is the same paragraphs.
    #[test]
    fn background_read_again_must_be_the_same_paragraphs() {
        let model = glassbox_testkit::minilm();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("prose.txt");
        std::fs::write(&file, "The river rose after a week of steady rain.\n\nMost shops close early on Sundays in the village.").unwrap();
        let b = Background::read(&model, dir.path(), 10, true).unwrap();
        let source = b.source.clone().unwrap();
        assert_eq!((b.texts.len(), source.texts), (2, 2));
        let again = Background::again(&model, &source).unwrap();
        assert_eq!(again.source, b.source);
        // A corpus under $GLASSBOX_HOME is recorded relative to it.
        let home = glassbox_model::registry::home();
        assert_eq!(resolved("$GLASSBOX_HOME/corpora/x"), home.join("corpora/x"));
        assert_eq!(resolved("/elsewhere/c"), PathBuf::from("/elsewhere/c"));
        std::fs::write(
            &file,
            "The river rose after a week of steady rain, and fell.",
        )
        .unwrap();
        let Err(e) = Background::again(&model, &source) else {
            panic!("a changed corpus was read as the same background");
        };
        let e = e.to_string();
        assert!(e.contains("has changed since it was trained"), "{e}");
    }
}
