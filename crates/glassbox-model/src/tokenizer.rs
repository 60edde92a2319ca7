//! The model's tokenizer (`tokenizer.json`, Hugging Face `tokenizers`), with padding and
//! truncation switched off so that nothing is cut or padded without the caller asking.

use std::path::{Path, PathBuf};

use tokenizers::{PostProcessor, Tokenizer, TruncationDirection};

use crate::error::{ModelError, Result};

/// `[start, end)` in bytes of a text.
pub type ByteRange = (usize, usize);

#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    path: PathBuf,
}

impl TextTokenizer {
    /// Loads `tokenizer.json` and checks it fits an embedding table of `vocab_size` rows.
    pub fn load(path: &Path, vocab_size: usize) -> Result<Self> {
        let err = |msg: String| ModelError::Tokenizer {
            path: path.to_path_buf(),
            msg,
        };
        if !path.exists() {
            return Err(ModelError::io(
                path,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        let inner = crate::guard::guard(|| Tokenizer::from_file(path))
            .map_err(|p| {
                err(format!(
                    "cannot parse: the tokenizers library failed on it ({p})"
                ))
            })?
            .map_err(|e| err(format!("cannot parse: {e}")))?;
        Self::new(inner, path, vocab_size)
    }

    /// A tokenizer described by `tokenizer.json` content (e.g. built from a GGUF file's
    /// metadata); `path` names where it came from in errors.
    pub fn from_json(json: &serde_json::Value, path: &Path, vocab_size: usize) -> Result<Self> {
        let err = |msg: String| ModelError::Tokenizer {
            path: path.to_path_buf(),
            msg: format!("cannot build the tokenizer: {msg}"),
        };
        let inner: Tokenizer = crate::guard::guard(|| serde_json::from_value(json.clone()))
            .map_err(|p| err(format!("the tokenizers library failed on it ({p})")))?
            .map_err(|e| err(e.to_string()))?;
        Self::new(inner, path, vocab_size)
    }

    fn new(mut inner: Tokenizer, path: &Path, vocab_size: usize) -> Result<Self> {
        let err = |msg: String| ModelError::Tokenizer {
            path: path.to_path_buf(),
            msg,
        };
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| err(format!("cannot disable truncation: {e}")))?;
        let n = inner.get_vocab_size(true);
        if n > vocab_size {
            return Err(err(format!(
                "the tokenizer has {n} tokens but the model's embedding has {vocab_size} rows; \
                 this tokenizer belongs to another model"
            )));
        }
        Ok(Self {
            inner,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, msg: String) -> ModelError {
        ModelError::Tokenizer {
            path: self.path.clone(),
            msg,
        }
    }

    /// Token ids of `text`, with the model's special tokens (as `tokenizer(text)` in Python).
    /// Longer than `max_len` is an error unless `truncate`, which keeps the first `max_len`
    /// (special tokens included).
    pub fn encode(&self, text: &str, max_len: usize, truncate: bool) -> Result<Vec<u32>> {
        let (ids, len) = self.encode_cut(text, max_len)?;
        if len > max_len && !truncate {
            return Err(ModelError::InputTooLong { len, max: max_len });
        }
        Ok(ids)
    }

    /// [`Self::encode`] with `truncate`, and whether the text fitted (was not cut).
    pub fn encode_fitting(&self, text: &str, max_len: usize) -> Result<(Vec<u32>, bool)> {
        let (ids, len) = self.encode_cut(text, max_len)?;
        Ok((ids, len <= max_len))
    }

    /// The ids of `text` cut to `max_len` (special tokens included), and how many it has uncut.
    /// One tokenisation either way: the text's own tokens are cut to leave room for the special
    /// tokens, then those are added, as the library's own truncation does it.
    fn encode_cut(&self, text: &str, max_len: usize) -> Result<(Vec<u32>, usize)> {
        let mut enc = self
            .inner
            .encode(text, false)
            .map_err(|e| self.err(format!("cannot encode: {e}")))?;
        let added = self
            .inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        let len = enc.len() + added;
        if len > max_len {
            enc.truncate(max_len.saturating_sub(added), 0, TruncationDirection::Right);
            // The cut-off rest is not read; leave it out of the post-processing.
            enc.take_overflowing();
        }
        let enc = self
            .inner
            .post_process(enc, None, true)
            .map_err(|e| self.err(format!("cannot add special tokens: {e}")))?;
        Ok((enc.get_ids().to_vec(), len))
    }

    /// Token ids of `text` without special tokens and without any length limit.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| self.err(format!("cannot encode: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// [`Self::encode_plain`] with each token's `[start, end)` byte range in `text`.
    pub fn encode_plain_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<ByteRange>)> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| self.err(format!("cannot encode: {e}")))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// The special tokens the model expects before and after a text (`[CLS]` / `[SEP]` for
    /// BERT, nothing for GPT-2, `<s>` before for Llama), found by encoding a probe text
    /// with and without them.
    pub fn special_affixes(&self) -> Result<(Vec<u32>, Vec<u32>)> {
        let plain = self.encode_plain("probe")?;
        let full = self
            .inner
            .encode("probe", true)
            .map_err(|e| self.err(format!("cannot encode: {e}")))?;
        let full = full.get_ids();
        let at = full
            .windows(plain.len().max(1))
            .position(|w| w == plain.as_slice())
            .ok_or_else(|| self.err("cannot locate the text among its special tokens".into()))?;
        Ok((full[..at].to_vec(), full[at + plain.len()..].to_vec()))
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| self.err(format!("cannot decode: {e}")))
    }

    /// Which of `ids` are the tokenizer's special tokens (`[CLS]`, `<|im_start|>`, …).
    pub fn special_mask(&self, ids: &[u32]) -> Vec<bool> {
        let added = self.inner.get_added_tokens_decoder();
        ids.iter()
            .map(|id| added.get(id).is_some_and(|t| t.special))
            .collect()
    }

    /// The id of a special (added) token written as `text`, e.g. `<end_of_turn>`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.inner
            .get_added_tokens_decoder()
            .iter()
            .find(|(_, t)| t.content == text)
            .map(|(&id, _)| id)
    }

    /// The vocabulary string of one token (`None` for an id outside the vocabulary).
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// One token as it reads in running text, with the space before it if it starts a word:
    /// WordPiece `##ing` → `ing`, `cat` → ` cat`; byte-level BPE `Ġcat` → ` cat`. A NUL byte
    /// reads as `␀` (invisible otherwise, and not storable in PostgreSQL text).
    pub fn piece(&self, id: u32) -> String {
        let raw = self.inner.id_to_token(id).unwrap_or_default();
        let piece = match self.inner.get_model() {
            tokenizers::models::ModelWrapper::WordPiece(_) => match raw.strip_prefix("##") {
                Some(rest) => rest.to_string(),
                None => format!(" {raw}"),
            },
            _ => self.inner.decode(&[id], false).unwrap_or(raw),
        };
        if piece.contains('\0') {
            piece.replace('\0', "\u{2400}")
        } else {
            piece
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
