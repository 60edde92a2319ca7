//! The streaming pass of a catalog build, incremental: a rerun with a larger token budget
//! loads the saved catalog, skips the contexts it already read and merges (counts and sums
//! add, top examples compete, the uniform sample continues as the same reservoir).

use std::collections::HashMap;
use std::path::Path;

use glassbox_dictionary::fit::Use;
use glassbox_dictionary::Sae;
use glassbox_model::{Hooks, Model};
use glassbox_store::activations::ActivationStore;
use glassbox_store::catalog::{
    histogram_bin, CatalogMeta, CatalogStore, Example, ExampleKind, Feature, HISTOGRAM_BINS,
    VOCAB_EMBEDDING, VOCAB_LOGIT,
};
use glassbox_store::harvest::{corpus_sha256, model_sha256, ContextText, Contexts};
use rand::{Rng, SeedableRng};

use super::flags::{self, FlagReport};
use super::taxonomy::Taxonomy;
use super::{effects, label};
use crate::error::{AnalysisError, Result};

#[derive(Debug, Clone)]
pub struct BuildConfig {
    /// Content tokens to have read in total (a rerun with more continues).
    pub tokens: usize,
    /// Tokens per context, special tokens included.
    pub context_len: usize,
    /// Contexts per forward pass.
    pub batch: usize,
    /// Highest-activation examples kept per feature.
    pub top: usize,
    /// Uniformly sampled examples kept per feature.
    pub samples: usize,
    /// Tokens shown on each side of an example's peak.
    pub window: usize,
    /// Tokens and neighbours listed per feature.
    pub effects: usize,
    /// Save the catalog every this many contexts (a killed build resumes from there).
    pub save_every: usize,
    pub seed: u64,
    /// Concepts to flag features for (`None`: no flags).
    pub taxonomy: Option<Taxonomy>,
}

impl Default for BuildConfig {
    fn default() -> Self {
        Self {
            tokens: 1_000_000,
            context_len: 128,
            batch: 32,
            top: 10,
            samples: 20,
            window: 8,
            effects: 10,
            save_every: 2048,
            seed: 0,
            taxonomy: None,
        }
    }
}

/// Corpus windows (of this many tokens, about the length of a taxonomy example) added to the
/// taxonomy's control texts.
const CONTROL_WINDOWS: usize = 1024;
const CONTROL_WINDOW: usize = 24;

/// What a catalog is built from.
pub struct Sources<'a> {
    pub model: &'a Model,
    /// As the user named it (a packaged name or a directory).
    pub model_name: &'a str,
    pub sae: &'a Sae,
    /// The dictionary's directory (its weights are hashed).
    pub dict_dir: &'a Path,
    pub corpus: &'a Path,
    /// A harvest of the same model, hook, corpus and context length: its stored activations
    /// stand in for the forward pass over the contexts it holds (f16, as training saw them).
    pub acts: Option<&'a ActivationStore>,
}

/// Progress as (tokens read, tokens wanted).
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// What a build produced: the catalog's metadata, and how its flags hold up on held-out
/// concept texts (`None` without a taxonomy).
#[derive(Debug, Clone)]
pub struct Built {
    pub meta: CatalogMeta,
    pub flags: Option<FlagReport>,
}

pub fn build(
    store: &mut dyn CatalogStore,
    src: &Sources,
    cfg: &BuildConfig,
    progress: Progress,
) -> Result<Built> {
    let (model, sae) = (src.model, src.sae);
    let hook = sae.hook_in(model, Use::Vocabulary)?;
    let (prefix, suffix) = model.tokenizer.special_affixes()?;
    let content = cfg.context_len.saturating_sub(prefix.len() + suffix.len());
    if content == 0 || cfg.context_len > model.config.max_positions {
        return Err(AnalysisError::Mismatch(format!(
            "context length {} must fit the model's {} positions and exceed its special tokens",
            cfg.context_len, model.config.max_positions
        )));
    }
    let fresh = CatalogMeta {
        model: src.model_name.into(),
        model_sha256: model_sha256(model)?,
        dict: src.dict_dir.to_string_lossy().into(),
        dict_sha256: glassbox_store::fsutil::dictionary_sha256(src.dict_dir)?,
        hook: sae.cfg.hook.clone(),
        d_sae: sae.d_sae(),
        corpus: src.corpus.to_string_lossy().into(),
        corpus_sha256: corpus_sha256(src.corpus)?,
        context_len: cfg.context_len,
        contexts_done: 0,
        tokens: 0,
        generation: 0,
        vocab_effect: if model.config.is_decoder() {
            VOCAB_LOGIT
        } else {
            VOCAB_EMBEDDING
        }
        .into(),
    };
    let (mut meta, mut features) = match store.meta()? {
        Some(old) => {
            check_same_sources(&old, &fresh)?;
            let vocab_effect = fresh.vocab_effect.clone();
            (
                CatalogMeta {
                    vocab_effect,
                    ..old
                },
                store.features()?,
            )
        }
        None => (fresh, Vec::new()),
    };
    let decoder = model.config.is_decoder();
    if features.len() != sae.d_sae() {
        features = initial_features(model, sae, cfg.effects)?;
    }
    // Flags depend on the weights and the taxonomy (and, through the density gate, on the
    // counts), so each build decides them afresh.
    let mut flagging = match &cfg.taxonomy {
        Some(t) => {
            let windows: Vec<Vec<u32>> = Contexts::new(model, src.corpus, CONTROL_WINDOW)?
                .take(CONTROL_WINDOWS)
                .collect::<std::result::Result<_, _>>()?;
            Some(flags::flags(model, sae, t, &windows)?)
        }
        None => None,
    };
    let mut save = |store: &mut dyn CatalogStore, meta: &CatalogMeta, features: &mut [Feature]| {
        match (&mut flagging, &cfg.taxonomy) {
            (Some((candidates, report)), Some(t)) => {
                flags::gate(features, candidates, meta.tokens, t, report)
            }
            _ => features.iter_mut().for_each(|f| f.flags.clear()),
        }
        save(store, meta, features, decoder)
    };
    progress(meta.tokens, cfg.tokens as u64);
    if meta.tokens >= cfg.tokens as u64 {
        // Nothing more to read; labels and flags (perhaps from a new taxonomy) are refreshed.
        meta.generation = save(store, &meta, &mut features)?;
        return Ok(Built {
            meta,
            flags: flagging.map(|f| f.1),
        });
    }

    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed ^ meta.contexts_done as u64);
    let mut contexts = Contexts::new(model, src.corpus, content)?.with_text();
    for _ in 0..meta.contexts_done {
        if let Some(Err(e)) = contexts.next() {
            return Err(e.into());
        }
    }
    let mut stored = match src.acts {
        Some(store) => {
            check_harvest(store, &meta, &sae.cfg.hook)?;
            let mut seq = store.sequential();
            // The contexts already read are skipped in the store too.
            if meta.contexts_done > 0 && seq.take(meta.contexts_done * content)?.is_none() {
                return Err(AnalysisError::Mismatch(
                    "the harvest holds fewer contexts than the catalog has read; build without this harvest"
                        .into(),
                ));
            }
            Some(seq)
        }
        None => None,
    };
    let mut since_save = 0;
    let mut peak = PeakTracker::new(sae.d_sae());
    while meta.tokens < cfg.tokens as u64 {
        let mut batch_ids: Vec<Vec<u32>> = Vec::with_capacity(cfg.batch);
        let mut texts: Vec<ContextText> = Vec::with_capacity(cfg.batch);
        while batch_ids.len() < cfg.batch {
            match contexts.next_with_text() {
                Some(r) => {
                    let (ids, text) = r?;
                    batch_ids.push(ids);
                    texts.push(text);
                }
                None => break,
            }
        }
        if batch_ids.is_empty() {
            break; // the corpus ran out
        }
        let n = batch_ids.len() * content;
        let from_store = match stored.as_mut() {
            Some(seq) => seq.take(n)?,
            None => None,
        };
        let x: Vec<f32> = match from_store {
            Some((rows, ids)) => {
                if ids != batch_ids.concat() {
                    return Err(AnalysisError::Mismatch(format!(
                        "the harvest's tokens differ from the corpus's at context {}; it was cut differently (build without this harvest)",
                        meta.contexts_done
                    )));
                }
                rows
            }
            None => {
                stored = None; // the harvest ran out: the model takes over
                let full: Vec<Vec<u32>> = batch_ids
                    .iter()
                    .map(|c| [prefix.as_slice(), c, suffix.as_slice()].concat())
                    .collect();
                let mut hooks = Hooks::none().record(hook).stop_at(hook);
                model.forward(&model.batch_ids(&full)?, &mut hooks, None)?;
                let act = hooks
                    .cache()
                    .get(&hook)
                    .ok_or_else(|| AnalysisError::Mismatch(format!("hook {hook} did not fire")))?;
                act.narrow(1, prefix.len(), content)?
                    .flatten_all()?
                    .to_vec1()?
            }
        };
        let codes = sae.encode(&x)?;
        for (i, ids) in batch_ids.iter().enumerate() {
            let rows = &codes.rows[i * content..(i + 1) * content];
            let context = (meta.contexts_done + i) as u64;
            peak.scan(rows, &mut features);
            for &(j, v, pos) in &peak.peaks {
                let f = &mut features[j as usize];
                f.contexts += 1;
                let at = Peak {
                    ids,
                    text: &texts[i],
                    rows,
                    context,
                };
                let example = || at.window(model, j, pos, v, cfg.window);
                offer(f, cfg, &mut rng, v, example);
            }
        }
        meta.contexts_done += batch_ids.len();
        meta.tokens += (batch_ids.len() * content) as u64;
        since_save += batch_ids.len();
        progress(meta.tokens, cfg.tokens as u64);
        if since_save >= cfg.save_every {
            meta.generation = save(store, &meta, &mut features)?;
            since_save = 0;
        }
    }
    meta.generation = save(store, &meta, &mut features)?;
    Ok(Built {
        meta,
        flags: flagging.map(|f| f.1),
    })
}

/// Checks that a harvest holds the activations this catalog would compute.
fn check_harvest(store: &ActivationStore, meta: &CatalogMeta, hook: &str) -> Result<()> {
    let m = &store.manifest;
    let pairs = [
        ("model", &m.model_sha256, &meta.model_sha256),
        ("corpus", &m.corpus_sha256, &meta.corpus_sha256),
    ];
    for (what, a, b) in pairs {
        if a != b {
            return Err(AnalysisError::Mismatch(format!(
                "the harvest in {} is of another {what} (SHA-256 {a} ≠ {b}); build without this harvest",
                store.dir.display()
            )));
        }
    }
    if m.hook != hook || m.context_len != meta.context_len {
        return Err(AnalysisError::Mismatch(format!(
            "the harvest in {} holds {} in contexts of {} tokens; the catalog needs {hook} in contexts of {}; build without this harvest",
            store.dir.display(),
            m.hook,
            m.context_len,
            meta.context_len
        )));
    }
    Ok(())
}

/// Checks that `model` and the dictionary in `dict_dir` are what `meta`'s catalog was built from.
pub fn check_sources(meta: &CatalogMeta, model: &Model, dict_dir: &Path) -> Result<()> {
    check_same_sources(
        meta,
        &CatalogMeta {
            model_sha256: model_sha256(model)?,
            dict_sha256: glassbox_store::fsutil::dictionary_sha256(dict_dir)?,
            ..meta.clone()
        },
    )
}

fn check_same_sources(old: &CatalogMeta, new: &CatalogMeta) -> Result<()> {
    let pairs = [
        ("model", &old.model_sha256, &new.model_sha256),
        ("dictionary", &old.dict_sha256, &new.dict_sha256),
        ("corpus", &old.corpus_sha256, &new.corpus_sha256),
    ];
    for (what, a, b) in pairs {
        if a != b {
            return Err(AnalysisError::Mismatch(format!(
                "this catalog was built from another {what} (SHA-256 {a} ≠ {b}); use another catalog directory or delete it"
            )));
        }
    }
    if old.context_len != new.context_len {
        return Err(AnalysisError::Mismatch(format!(
            "this catalog was built with context length {}, not {}",
            old.context_len, new.context_len
        )));
    }
    Ok(())
}

/// Empty statistics with what the weights alone say.
fn initial_features(model: &Model, sae: &Sae, k: usize) -> Result<Vec<Feature>> {
    let vocab = effects::vocabulary(model, sae, k)?;
    let near = effects::neighbours(sae, k);
    Ok(vocab
        .into_iter()
        .zip(near)
        .enumerate()
        .map(|(id, ((promoted, suppressed), neighbours))| Feature {
            id: id as u32,
            histogram: vec![0; HISTOGRAM_BINS],
            promoted,
            suppressed,
            neighbours,
            ..Default::default()
        })
        .collect())
}

/// Per-context peaks: for each feature that fired, its largest activation and where.
struct PeakTracker {
    best: Vec<(f32, usize)>,
    peaks: Vec<(u32, f32, usize)>,
}

impl PeakTracker {
    fn new(d_sae: usize) -> Self {
        Self {
            best: vec![(0.0, usize::MAX); d_sae],
            peaks: Vec::new(),
        }
    }

    /// Adds one context's codes to the statistics and collects its peaks.
    fn scan(&mut self, rows: &[Vec<(u32, f32)>], features: &mut [Feature]) {
        let mut touched = Vec::new();
        for (pos, row) in rows.iter().enumerate() {
            for &(j, v) in row {
                let f = &mut features[j as usize];
                f.count += 1;
                f.sum += v as f64;
                f.max = f.max.max(v);
                f.histogram[histogram_bin(v)] += 1;
                let b = &mut self.best[j as usize];
                if b.1 == usize::MAX {
                    touched.push(j);
                    *b = (v, pos);
                } else if v > b.0 {
                    *b = (v, pos);
                }
            }
        }
        self.peaks.clear();
        for j in touched {
            let (v, pos) = std::mem::replace(&mut self.best[j as usize], (0.0, usize::MAX));
            self.peaks.push((j, v, pos));
        }
    }
}

/// Keeps an example if it is among the feature's highest, or is drawn into its uniform sample
/// (reservoir sampling over the contexts it fired in, `f.contexts` so far).
fn offer(
    f: &mut Feature,
    cfg: &BuildConfig,
    rng: &mut impl Rng,
    v: f32,
    example: impl Fn() -> Example,
) {
    // One pass, no allocation: this runs for every feature that fires in every context.
    let (mut tops, mut samples, mut weakest) = (0, 0, None::<usize>);
    for (i, e) in f.examples.iter().enumerate() {
        match e.kind {
            ExampleKind::Top => {
                tops += 1;
                if weakest.is_none_or(|w| e.activation < f.examples[w].activation) {
                    weakest = Some(i);
                }
            }
            ExampleKind::Sample => samples += 1,
        }
    }
    if tops < cfg.top {
        f.examples.push(example());
    } else if let Some(w) = weakest.filter(|&w| v > f.examples[w].activation) {
        f.examples[w] = example();
    }
    let sample = || Example {
        kind: ExampleKind::Sample,
        ..example()
    };
    if samples < cfg.samples {
        f.examples.push(sample());
    } else {
        let r = rng.random_range(0..f.contexts.max(1)) as usize;
        if r < samples {
            let at = (0..f.examples.len())
                .filter(|&i| f.examples[i].kind == ExampleKind::Sample)
                .nth(r);
            if let Some(at) = at {
                f.examples[at] = sample();
            }
        }
    }
}

/// One context as the examples are cut from it.
struct Peak<'a> {
    ids: &'a [u32],
    text: &'a ContextText,
    rows: &'a [Vec<(u32, f32)>],
    /// Context number in the corpus stream.
    context: u64,
}

impl Peak<'_> {
    /// The window around `pos` with feature `j`'s activation on each token (code rows list
    /// latents in increasing order, so each is a binary search) and its original text.
    fn window(&self, model: &Model, j: u32, pos: usize, activation: f32, half: usize) -> Example {
        let start = pos.saturating_sub(half);
        let end = (pos + half + 1).min(self.ids.len());
        let (text, spans) = self.text.window(start..end);
        Example {
            kind: ExampleKind::Top,
            activation,
            context: self.context,
            tokens: self.ids[start..end]
                .iter()
                .map(|&t| model.tokenizer.piece(t))
                .collect(),
            acts: self.rows[start..end]
                .iter()
                .map(|row| {
                    row.binary_search_by_key(&j, |e| e.0)
                        .map_or(0.0, |k| row[k].1)
                })
                .collect(),
            focus: pos - start,
            text,
            spans,
        }
    }
}

/// Recomputes top tokens and offline labels, then saves in one transaction.
fn save(
    store: &mut dyn CatalogStore,
    meta: &CatalogMeta,
    features: &mut [Feature],
    decoder: bool,
) -> Result<u64> {
    for f in features.iter_mut() {
        let mut counts: HashMap<String, u32> = HashMap::new();
        for e in &f.examples {
            if let Some(t) = e.tokens.get(e.focus) {
                *counts.entry(t.clone()).or_default() += 1;
            }
        }
        let mut top: Vec<(String, u32)> = counts.into_iter().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(10);
        f.top_tokens = top;
        f.examples.sort_by(|a, b| {
            (a.kind as u8)
                .cmp(&(b.kind as u8))
                .then(b.activation.total_cmp(&a.activation))
        });
        // A label from the LLM labeller is kept; `catalog label` renews it on request.
        if f.label_method.is_empty() || f.label_method == label::METHOD {
            let (l, s) = label::label(f, decoder);
            f.label = l;
            f.label_score = s;
            f.label_method = label::METHOD.into();
        }
    }
    Ok(store.save(meta, features)?)
}
