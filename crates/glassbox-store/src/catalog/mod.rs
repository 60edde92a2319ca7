//! The feature catalog: per-feature statistics, example contexts, logit effects, neighbours,
//! labels and flags, behind one [`CatalogStore`] trait. The embedded default is SQLite
//! ([`sqlite::SqliteCatalog`]); shared deployments use PostgreSQL ([`postgres::PgCatalog`]).
//! A tantivy index ([`search::SearchIndex`]) answers full-text queries over labels and contexts.

pub mod parquet_export;
pub mod postgres;
pub mod search;
pub mod sqlite;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};

/// The SQLite file of a catalog directory.
pub const DB_FILE: &str = "catalog.db";
/// The search index's folder in a catalog directory.
pub const INDEX_DIR: &str = "index";

/// A catalog's store: the SQLite file in `dir` (created if missing), or the PostgreSQL
/// database at `store_url` (`postgres://…` or `host=… dbname=…`), whose search index still
/// lives in `dir`. The CLI, the console and the Python package all open catalogs here.
pub fn connect(dir: &Path, store_url: Option<&str>) -> Result<Box<dyn CatalogStore + Send>> {
    Ok(match store_url {
        Some(url) => Box::new(postgres::PgCatalog::open(url)?),
        None => Box::new(sqlite::SqliteCatalog::open(&dir.join(DB_FILE))?),
    })
}

/// Opens an existing, finished catalog (see [`connect`]) with its build record.
pub fn open(
    dir: &Path,
    store_url: Option<&str>,
) -> Result<(Box<dyn CatalogStore + Send>, CatalogMeta)> {
    if store_url.is_none() && !dir.join(DB_FILE).is_file() {
        return Err(StoreError::catalog_file(
            dir,
            "no catalog here; build one with `glassbox catalog build --model M --dict D --catalog DIR`",
        ));
    }
    let store = connect(dir, store_url)?;
    let meta = store.meta()?.ok_or_else(|| {
        StoreError::catalog_file(
            dir,
            "holds no finished build yet (is a build still running?)",
        )
    })?;
    Ok((store, meta))
}

/// What a catalog was built from (every hash recorded) and how far the build got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogMeta {
    pub model: String,
    pub model_sha256: String,
    pub dict: String,
    pub dict_sha256: String,
    pub hook: String,
    pub d_sae: usize,
    pub corpus: String,
    pub corpus_sha256: String,
    /// Tokens per context, special tokens included.
    pub context_len: usize,
    /// Contexts read so far: an incremental build continues after them.
    pub contexts_done: usize,
    /// Content tokens seen.
    pub tokens: u64,
    /// Bumped by every save; the search index records the generation it was built from.
    pub generation: u64,
    /// What a feature's vocabulary effects are: `logit` (decoders: the direct effect on
    /// each next-token logit through the unembedding) or `embedding` (encoders: cosine with
    /// each token's input embedding). Empty in catalogs built before it was recorded.
    #[serde(default)]
    pub vocab_effect: String,
}

/// [`CatalogMeta::vocab_effect`] values.
pub const VOCAB_LOGIT: &str = "logit";
pub const VOCAB_EMBEDDING: &str = "embedding";

/// Why an example context was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExampleKind {
    /// Among the feature's highest activations.
    Top,
    /// A uniform sample of the contexts it fires in (reservoir), so the catalog shows the
    /// whole range of activations, not only the maximum.
    Sample,
}

/// A window of a context around the token where the feature peaked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub kind: ExampleKind,
    /// The feature's largest activation in this context.
    pub activation: f32,
    /// Context number in the corpus stream (deterministic for a corpus and context length).
    pub context: u64,
    /// Token strings of the window and the feature's activation on each.
    pub tokens: Vec<String>,
    pub acts: Vec<f32>,
    /// Index in `tokens` of the peak.
    pub focus: usize,
    /// The window as it reads in the corpus (original casing and spacing; documents joined
    /// by a newline) and each token's `[start, end)` byte range in it. Empty in catalogs
    /// built before they were recorded; [`Example::segments`] then falls back to `tokens`.
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub spans: Vec<(u32, u32)>,
}

/// A stretch of an example's text: what precedes a token (spacing), the token's own
/// characters, and the feature's activation on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment<'a> {
    pub gap: &'a str,
    pub token: &'a str,
    pub activation: f32,
}

impl Example {
    /// The window as gap/token segments, in order, so that a highlight covers a token's
    /// characters only. Concatenated they give the original text.
    pub fn segments(&self) -> Vec<Segment<'_>> {
        let from_text = self.spans.len() == self.tokens.len()
            && self.spans.iter().all(|&(a, b)| {
                a <= b
                    && self.text.is_char_boundary(a as usize)
                    && self.text.is_char_boundary(b as usize)
                    && (b as usize) <= self.text.len()
            });
        let mut out = Vec::with_capacity(self.tokens.len());
        if from_text {
            let mut at = 0usize;
            for (&(a, b), &act) in self.spans.iter().zip(&self.acts) {
                let (a, b) = ((a as usize).max(at), (b as usize).max(at));
                out.push(Segment {
                    gap: &self.text[at..a],
                    token: &self.text[a..b],
                    activation: act,
                });
                at = b;
            }
        } else {
            for (t, &act) in self.tokens.iter().zip(&self.acts) {
                let token = t.trim_start();
                out.push(Segment {
                    gap: &t[..t.len() - token.len()],
                    token,
                    activation: act,
                });
            }
        }
        out
    }

    /// The window's text (original when recorded, else the joined token pieces).
    pub fn plain_text(&self) -> String {
        if self.text.is_empty() {
            self.tokens.concat()
        } else {
            self.text.clone()
        }
    }

    /// The peak token's own characters as they read in the text (`"Password"`, `":"`).
    pub fn focus_text(&self) -> &str {
        self.segments().get(self.focus).map_or("", |s| s.token)
    }

    /// The peak token's byte range in [`Example::plain_text`] (its segments, concatenated).
    pub fn focus_range(&self) -> (usize, usize) {
        let segments = self.segments();
        let before: usize = segments
            .iter()
            .take(self.focus)
            .map(|s| s.gap.len() + s.token.len())
            .sum();
        segments.get(self.focus).map_or((before, before), |s| {
            let start = before + s.gap.len();
            (start, start + s.token.len())
        })
    }
}

/// A token piece made readable where its spacing matters: a leading space shows as `␣`
/// (`" key"` → `␣key`, a word; `"key"`, e.g. WordPiece `##key`, a word's continuation),
/// newlines as `⏎` and tabs as `⇥`.
pub fn readable_token(piece: &str) -> String {
    let mut s = String::with_capacity(piece.len() + 2);
    for c in piece.chars() {
        match c {
            ' ' => s.push('␣'),
            '\n' => s.push('⏎'),
            '\t' => s.push('⇥'),
            '\r' => {}
            c => s.push(c),
        }
    }
    s
}

/// A concept a feature was flagged for, with the evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flag {
    pub concept: String,
    pub score: f32,
    pub evidence: String,
}

/// Everything the catalog knows about one feature.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Feature {
    pub id: u32,
    /// Tokens the feature fired on, and contexts it fired in.
    pub count: u64,
    pub contexts: u64,
    pub sum: f64,
    pub max: f32,
    /// Counts of activations in [`HISTOGRAM_BINS`] log-spaced bins (see [`histogram_bin`]).
    pub histogram: Vec<u64>,
    pub examples: Vec<Example>,
    /// Tokens it fires on most: (token, count) over its examples' peaks.
    pub top_tokens: Vec<(String, u32)>,
    /// Vocabulary it promotes / suppresses (decoders: through the unembedding; encoders: the
    /// token embeddings most / least aligned with its decoder direction).
    pub promoted: Vec<(String, f32)>,
    pub suppressed: Vec<(String, f32)>,
    /// Nearest features by decoder cosine.
    pub neighbours: Vec<(u32, f32)>,
    pub label: String,
    /// How well the label predicts where the feature fires (see the labeller), 0..1.
    pub label_score: f32,
    pub label_method: String,
    pub flags: Vec<Flag>,
}

impl Feature {
    /// Fraction of tokens it fires on.
    pub fn density(&self, tokens: u64) -> f64 {
        self.count as f64 / tokens.max(1) as f64
    }

    pub fn mean(&self) -> f64 {
        self.sum / self.count.max(1) as f64
    }
}

/// Activation histogram: bin i holds values in [2^((i − 16)/2), 2^((i − 15)/2)), the first and
/// last bins everything below / above: 2^-8 … 2^8, half an octave per bin.
pub const HISTOGRAM_BINS: usize = 32;

pub fn histogram_bin(v: f32) -> usize {
    ((v.max(f32::MIN_POSITIVE).log2() * 2.0).floor() as i64 + 16)
        .clamp(0, HISTOGRAM_BINS as i64 - 1) as usize
}

/// Lower edge of histogram bin `i`.
pub fn histogram_edge(i: usize) -> f32 {
    2f32.powf((i as f32 - 16.0) / 2.0)
}

/// Storage of a catalog. A build reads the previous state, merges, and saves everything in
/// one transaction, so a killed build leaves the previous catalog as it was.
pub trait CatalogStore {
    fn meta(&self) -> Result<Option<CatalogMeta>>;
    /// Every feature, in id order.
    fn features(&self) -> Result<Vec<Feature>>;
    fn feature(&self, id: u32) -> Result<Option<Feature>>;
    /// Replaces the whole catalog atomically; bumps and returns the generation.
    fn save(&mut self, meta: &CatalogMeta, features: &[Feature]) -> Result<u64>;
    /// Features flagged for `concept`, highest score first.
    fn flagged(&self, concept: &str, limit: usize) -> Result<Vec<(u32, f32)>>;
    /// Features that fire on `token` (case-insensitive), most often first.
    fn features_on_token(&self, token: &str, limit: usize) -> Result<Vec<(u32, u32)>>;
    /// One line per feature, in id order, without examples or vocabulary: what a listing,
    /// filter or search result needs (a backend overrides it with a cheaper query).
    fn summaries(&self) -> Result<Vec<FeatureSummary>> {
        Ok(self.features()?.iter().map(FeatureSummary::of).collect())
    }
}

/// A feature's listing line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSummary {
    pub id: u32,
    pub count: u64,
    pub max: f32,
    pub label: String,
    pub label_score: f32,
    /// Concepts it is flagged for.
    pub flags: Vec<String>,
}

impl FeatureSummary {
    pub fn of(f: &Feature) -> Self {
        Self {
            id: f.id,
            count: f.count,
            max: f.max,
            label: f.label.clone(),
            label_score: f.label_score,
            flags: f.flags.iter().map(|g| g.concept.clone()).collect(),
        }
    }

    /// Fraction of tokens it fires on.
    pub fn density(&self, tokens: u64) -> f64 {
        self.count as f64 / tokens.max(1) as f64
    }
}
