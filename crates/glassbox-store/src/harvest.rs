//! Harvesting: stream a corpus through the model and store the activations at one hook (and,
//! for transcoders, a second hook's as their targets).
//!
//! The corpus becomes one token stream cut into contexts of `context_len` tokens (the
//! model's special tokens around each); the activations of the content tokens are stored,
//! those of special tokens are not (their norms are outliers that would dominate a
//! dictionary). Contexts are numbered, shards hold whole contexts, and the manifest records how
//! many are stored: rerunning the same command skips those and continues.

use std::path::Path;

use glassbox_model::{HookPoint, Hooks, Model};

use crate::activations::{write_shard, Manifest};
use crate::corpus::{self, Documents};
use crate::error::{Result, StoreError};
use crate::fsutil;

#[derive(Debug, Clone)]
pub struct HarvestConfig {
    pub hook: HookPoint,
    /// Stored beside `hook` as the `targets` of transcoder training.
    pub target: Option<HookPoint>,
    /// Content tokens to store in total.
    pub tokens: usize,
    /// Tokens per context, special tokens included.
    pub context_len: usize,
    /// Contexts per forward pass.
    pub batch: usize,
    /// Rows per shard (shards end at a context boundary, so they may hold a few more).
    pub shard_rows: usize,
}

/// SHA-256 over the corpus files (each file's hash, in order).
pub fn corpus_sha256(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for f in corpus::files(path)? {
        h.update(fsutil::sha256_file(&f)?.as_bytes());
    }
    Ok(fsutil::hex(&h.finalize()))
}

/// SHA-256 of a model's weights, as a store's manifest records it.
pub fn model_sha256(model: &Model) -> Result<String> {
    fsutil::sha256_file(model.weights_path())
}

/// Cuts a corpus's token stream into contexts of `content_len` tokens (without the model's
/// special tokens); a last partial context is dropped. Deterministic for a corpus, tokenizer
/// and length, so context numbers identify contexts across runs.
pub struct Contexts {
    docs: Documents,
    model: std::sync::Arc<glassbox_model::tokenizer::TextTokenizer>,
    content_len: usize,
    pending: Vec<u32>,
    /// Where each pending token came from, when text is tracked ([`Contexts::with_text`]).
    sources: Option<Vec<Source>>,
    done: bool,
}

/// A token's document and its `[start, end)` byte range there.
#[derive(Clone)]
struct Source {
    doc: std::sync::Arc<str>,
    start: usize,
    end: usize,
}

/// The tokens of one context as they read in the corpus.
#[derive(Clone, Default)]
pub struct ContextText {
    sources: Vec<Source>,
}

impl ContextText {
    /// The original text of tokens `range` (documents joined by a newline) and each token's
    /// byte range in it.
    pub fn window(&self, range: std::ops::Range<usize>) -> (String, Vec<(u32, u32)>) {
        let mut text = String::new();
        let mut spans = Vec::with_capacity(range.len());
        let Some(sources) = self.sources.get(range) else {
            return (text, spans); // text was not tracked
        };
        let mut prev: Option<&Source> = None;
        for s in sources {
            let start = match prev {
                Some(p) if std::sync::Arc::ptr_eq(&p.doc, &s.doc) => {
                    // Spacing between tokens; byte-level pieces of one character may overlap.
                    text.push_str(s.doc.get(p.end..s.start).unwrap_or(""));
                    s.start.max(p.end)
                }
                Some(_) => {
                    text.push('\n');
                    s.start
                }
                None => s.start,
            };
            let at = text.len() as u32;
            text.push_str(s.doc.get(start..s.end.max(start)).unwrap_or(""));
            spans.push((at, text.len() as u32));
            prev = Some(s);
        }
        (text, spans)
    }
}

impl Contexts {
    pub fn new(model: &Model, corpus: &Path, content_len: usize) -> Result<Self> {
        Ok(Self {
            docs: Documents::open(corpus)?,
            model: std::sync::Arc::new(model.tokenizer.clone()),
            content_len,
            pending: Vec::new(),
            sources: None,
            done: false,
        })
    }

    /// Also track each token's original text, for [`Contexts::next_with_text`].
    pub fn with_text(mut self) -> Self {
        self.sources = Some(Vec::new());
        self
    }

    /// The next context with its original text (empty unless [`Contexts::with_text`]).
    pub fn next_with_text(&mut self) -> Option<Result<(Vec<u32>, ContextText)>> {
        while self.pending.len() < self.content_len && !self.done {
            match self.docs.next() {
                None => self.done = true,
                Some(Err(e)) => return Some(Err(e)),
                Some(Ok(doc)) => {
                    if let Err(e) = self.push(doc) {
                        return Some(Err(e));
                    }
                }
            }
        }
        if self.pending.len() < self.content_len {
            return None; // a last partial context is dropped
        }
        let rest = self.pending.split_off(self.content_len);
        let ids = std::mem::replace(&mut self.pending, rest);
        let text = match &mut self.sources {
            Some(sources) => {
                let rest = sources.split_off(self.content_len);
                ContextText {
                    sources: std::mem::replace(sources, rest),
                }
            }
            None => ContextText::default(),
        };
        Some(Ok((ids, text)))
    }

    fn push(&mut self, doc: String) -> Result<()> {
        match &mut self.sources {
            None => self.pending.extend(self.model.encode_plain(&doc)?),
            Some(sources) => {
                let (ids, offsets) = self.model.encode_plain_offsets(&doc)?;
                let doc: std::sync::Arc<str> = doc.into();
                sources.extend(offsets.into_iter().map(|(start, end)| Source {
                    doc: doc.clone(),
                    start,
                    end,
                }));
                self.pending.extend(ids);
            }
        }
        Ok(())
    }
}

impl Iterator for Contexts {
    type Item = Result<Vec<u32>>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_with_text().map(|r| r.map(|(ids, _)| ids))
    }
}

/// Contexts harvested since the last shard was written.
#[derive(Default)]
struct Buffer {
    rows: Vec<f32>,
    targets: Vec<f32>,
    ids: Vec<u32>,
    contexts: usize,
}

/// Progress as `(tokens stored, tokens wanted)`.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize);

pub fn harvest(
    model: &Model,
    model_name: &str,
    corpus_path: &Path,
    out: &Path,
    cfg: &HarvestConfig,
    progress: Progress,
) -> Result<Manifest> {
    let (prefix, suffix) = model.tokenizer.special_affixes()?;
    let content_len = cfg.context_len.saturating_sub(prefix.len() + suffix.len());
    if content_len == 0 || cfg.context_len > model.config.max_positions {
        return Err(StoreError::store(out, format!("context length {} must fit the model's {} positions and exceed its {} special tokens", cfg.context_len, model.config.max_positions, prefix.len() + suffix.len())));
    }
    let hook_name = cfg.hook.to_string();
    let fresh = Manifest::new(
        model_name,
        model_sha256(model)?,
        &hook_name,
        cfg.target.map(|t| t.to_string()).as_deref(),
        model.config.d_model,
        &corpus_path.to_string_lossy(),
        corpus_sha256(corpus_path)?,
        cfg.context_len,
        cfg.tokens,
    );
    std::fs::create_dir_all(out).map_err(|e| StoreError::io(out, e))?;
    let mut manifest = if out.join(crate::activations::MANIFEST).exists() {
        let m = Manifest::read(out)?;
        m.check_same_source(&fresh, out)?;
        m
    } else {
        fresh
    };
    manifest.tokens_target = cfg.tokens;
    manifest.complete = manifest.tokens >= cfg.tokens;
    progress(manifest.tokens, cfg.tokens);
    if manifest.complete {
        return Ok(manifest);
    }

    let mut contexts = Contexts::new(model, corpus_path, content_len)?.skip(manifest.contexts_done);
    let d = model.config.d_model;
    let mut buf = Buffer::default();
    let flush = |manifest: &mut Manifest, buf: &mut Buffer| -> Result<()> {
        if buf.ids.is_empty() {
            return Ok(());
        }
        let targets = cfg.target.map(|_| buf.targets.as_slice());
        let shard = write_shard(out, manifest.shards.len(), &buf.rows, targets, &buf.ids, d)?;
        manifest.tokens += shard.rows;
        manifest.contexts_done += buf.contexts;
        manifest.shards.push(shard);
        manifest.write(out)?;
        *buf = Buffer::default();
        Ok(())
    };
    let last_hook = cfg.target.map_or(cfg.hook, |t| t.max(cfg.hook));
    let mut exhausted = false;
    while manifest.tokens + buf.ids.len() < cfg.tokens {
        let mut batch_ids = Vec::with_capacity(cfg.batch);
        for _ in 0..cfg.batch {
            match contexts.next() {
                Some(c) => batch_ids.push(c?),
                None => {
                    exhausted = true;
                    break;
                }
            }
        }
        if batch_ids.is_empty() {
            break;
        }
        let full: Vec<Vec<u32>> = batch_ids
            .iter()
            .map(|c| [prefix.as_slice(), c, suffix.as_slice()].concat())
            .collect();
        let batch = model.batch_ids(&full)?;
        let mut hooks = Hooks::none().record(cfg.hook).stop_at(last_hook);
        if let Some(t) = cfg.target {
            hooks = hooks.record(t);
        }
        model.forward(&batch, &mut hooks, None)?;
        let content = |point: HookPoint| -> Result<Vec<f32>> {
            let act = hooks
                .cache()
                .get(&point)
                .ok_or_else(|| StoreError::store(out, format!("hook {point} did not fire")))?;
            let dims = act.dims().to_vec();
            if dims.len() != 3 || dims[2] != d {
                return Err(StoreError::store(out, format!("hook {point} has shape {dims:?}; only residual-width hooks [batch, pos, {d}] can be harvested")));
            }
            Ok(act
                .narrow(1, prefix.len(), content_len)?
                .flatten_all()?
                .to_vec1::<f32>()?)
        };
        buf.rows.extend(content(cfg.hook)?);
        if let Some(t) = cfg.target {
            buf.targets.extend(content(t)?);
        }
        buf.ids.extend(batch_ids.iter().flatten());
        buf.contexts += batch_ids.len();
        progress(manifest.tokens + buf.ids.len(), cfg.tokens);
        if buf.ids.len() >= cfg.shard_rows {
            flush(&mut manifest, &mut buf)?;
        }
        if exhausted {
            break;
        }
    }
    flush(&mut manifest, &mut buf)?;
    if manifest.shards.is_empty() {
        return Err(StoreError::Corpus {
            path: corpus_path.into(),
            msg: format!(
                "yields no context of {content_len} tokens: the corpus is empty or too short"
            ),
        });
    }
    manifest.complete = true;
    manifest.write(out)?;
    Ok(manifest)
}
