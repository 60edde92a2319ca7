//! The activation store: a directory of safetensors shards (`activations` f16 `[rows, d]`,
//! `token_ids` u32 `[rows]`, and for transcoder training `targets` f16 `[rows, d]` from a
//! second hook) and a `manifest.json` naming the model, hooks and corpus they came from. Shards and manifest are written atomically, so a killed harvest leaves a
//! consistent store that the same command resumes.

use std::path::{Path, PathBuf};

use half::f16;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::fsutil;

pub const MANIFEST: &str = "manifest.json";
/// Shards shuffled together when drawing training batches.
pub const TRAIN_WINDOW: usize = 4;
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardInfo {
    pub file: String,
    pub rows: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    /// As given on the command line.
    pub model: String,
    /// SHA-256 of model.safetensors.
    pub model_sha256: String,
    pub hook: String,
    /// A second hook stored beside `hook` (the `targets` tensor), for transcoders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_hook: Option<String>,
    pub d: usize,
    pub dtype: String,
    pub corpus: String,
    /// SHA-256 over the corpus files' contents.
    pub corpus_sha256: String,
    /// Tokens per model context (special tokens included; they are not stored).
    pub context_len: usize,
    /// Contexts whose activations are in the shards (resume point).
    pub contexts_done: usize,
    pub tokens: usize,
    pub tokens_target: usize,
    pub shards: Vec<ShardInfo>,
    /// The target was reached or the corpus ran out.
    pub complete: bool,
}

impl Manifest {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: &str,
        model_sha256: String,
        hook: &str,
        target_hook: Option<&str>,
        d: usize,
        corpus: &str,
        corpus_sha256: String,
        context_len: usize,
        tokens_target: usize,
    ) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            model: model.into(),
            model_sha256,
            hook: hook.into(),
            target_hook: target_hook.map(Into::into),
            d,
            dtype: "f16".into(),
            corpus: corpus.into(),
            corpus_sha256,
            context_len,
            contexts_done: 0,
            tokens: 0,
            tokens_target,
            shards: Vec::new(),
            complete: false,
        }
    }

    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| StoreError::io(&path, e))?;
        let m: Self = serde_json::from_str(&text)
            .map_err(|e| StoreError::store(dir, format!("{MANIFEST} is invalid: {e}")))?;
        if m.format_version != FORMAT_VERSION {
            return Err(StoreError::store(
                dir,
                format!(
                    "format version {} is not supported (expected {FORMAT_VERSION})",
                    m.format_version
                ),
            ));
        }
        if m.dtype != "f16" || m.d == 0 {
            return Err(StoreError::store(
                dir,
                format!("{MANIFEST}: unsupported dtype `{}` or d = {}", m.dtype, m.d),
            ));
        }
        Ok(m)
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| StoreError::store(dir, e.to_string()))?;
        fsutil::atomic_write(&dir.join(MANIFEST), json.as_bytes())
    }

    /// Checks that an existing store was made from the same model, hook, corpus and context
    /// length, so that resuming it (or training on it) is meaningful.
    pub fn check_same_source(&self, other: &Manifest, dir: &Path) -> Result<()> {
        let none = String::from("none");
        let fields = [
            ("model", &self.model_sha256, &other.model_sha256),
            ("hook", &self.hook, &other.hook),
            (
                "target hook",
                self.target_hook.as_ref().unwrap_or(&none),
                other.target_hook.as_ref().unwrap_or(&none),
            ),
            ("corpus", &self.corpus_sha256, &other.corpus_sha256),
        ];
        for (what, a, b) in fields {
            if a != b {
                return Err(StoreError::store(
                    dir,
                    format!("holds activations of another {what} ({a} ≠ {b}); use another directory or delete it"),
                ));
            }
        }
        if self.context_len != other.context_len {
            return Err(StoreError::store(
                dir,
                format!(
                    "was harvested with context length {}, not {}",
                    self.context_len, other.context_len
                ),
            ));
        }
        Ok(())
    }
}

/// Writes one shard atomically; `targets` (transcoder stores) are a second hook's rows.
pub fn write_shard(
    dir: &Path,
    index: usize,
    rows: &[f32],
    targets: Option<&[f32]>,
    token_ids: &[u32],
    d: usize,
) -> Result<ShardInfo> {
    let n = token_ids.len();
    assert_eq!(rows.len(), n * d, "shard rows");
    let to_f16 = |what: &str, v: &[f32]| -> Result<Vec<u8>> {
        if let Some(bad) = v.iter().position(|x| !x.is_finite()) {
            return Err(StoreError::store(
                dir,
                format!(
                    "{what} {bad} of shard {index} is {} (NaN/Inf): refusing to store it",
                    v[bad]
                ),
            ));
        }
        Ok(v.iter()
            .flat_map(|x| f16::from_f32(*x).to_le_bytes())
            .collect())
    };
    let act = to_f16("activation", rows)?;
    let tgt = targets.map(|t| to_f16("target", t)).transpose()?;
    let ids: Vec<u8> = token_ids.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut views = vec![
        ("activations", TensorView::new(Dtype::F16, vec![n, d], &act)),
        ("token_ids", TensorView::new(Dtype::U32, vec![n], &ids)),
    ];
    if let Some(t) = &tgt {
        assert_eq!(t.len(), n * d * 2, "shard targets");
        views.push(("targets", TensorView::new(Dtype::F16, vec![n, d], t)));
    }
    let views: Vec<(&str, TensorView)> = views
        .into_iter()
        .map(|(k, v)| {
            v.map(|v| (k, v))
                .map_err(|e| StoreError::store(dir, e.to_string()))
        })
        .collect::<Result<_>>()?;
    let bytes =
        safetensors::serialize(views, None).map_err(|e| StoreError::store(dir, e.to_string()))?;
    let file = format!("shard-{index:05}.safetensors");
    fsutil::atomic_write(&dir.join(&file), &bytes)?;
    Ok(ShardInfo { file, rows: n })
}

/// A shard read back: f32 rows, their token ids, and the target hook's rows if stored.
pub struct Shard {
    pub rows: Vec<f32>,
    pub targets: Option<Vec<f32>>,
    pub token_ids: Vec<u32>,
}

/// A training batch: `[batch, d]` inputs and, in a transcoder store, their targets.
pub use glassbox_dictionary::sweep::TrainBatch as Batch;

/// A harvested store, read for training.
pub struct ActivationStore {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl ActivationStore {
    pub fn open(dir: &Path) -> Result<Self> {
        let manifest = Manifest::read(dir)?;
        if manifest.shards.is_empty() {
            return Err(StoreError::store(
                dir,
                "holds no shards yet; run `glassbox harvest` first",
            ));
        }
        Ok(Self {
            dir: dir.into(),
            manifest,
        })
    }

    pub fn rows(&self) -> usize {
        self.manifest.shards.iter().map(|s| s.rows).sum()
    }

    /// The first `n` stored contexts' content token ids (special tokens are not stored), in
    /// harvest order: what the model saw, for rerunning it (e.g. splicing a dictionary in).
    pub fn contexts(&self, n: usize) -> Result<Vec<Vec<u32>>> {
        let m = &self.manifest;
        let len = m.tokens / m.contexts_done.max(1);
        if len == 0 || len * m.contexts_done != m.tokens {
            return Err(StoreError::store(
                &self.dir,
                format!(
                    "{} tokens do not split into {} contexts",
                    m.tokens, m.contexts_done
                ),
            ));
        }
        let mut out = Vec::with_capacity(n);
        for i in 0..m.shards.len() {
            if out.len() >= n {
                break;
            }
            let ids = self.read_shard(i)?.token_ids;
            out.extend(ids.chunks(len).map(<[u32]>::to_vec).take(n - out.len()));
        }
        Ok(out)
    }

    pub fn read_shard(&self, i: usize) -> Result<Shard> {
        let info = &self.manifest.shards[i];
        let path = self.dir.join(&info.file);
        let bytes = std::fs::read(&path).map_err(|e| StoreError::io(&path, e))?;
        let bad = |msg: String| {
            StoreError::store(
                &self.dir,
                format!(
                    "shard {}: {msg}; re-run the harvest into a new directory",
                    info.file
                ),
            )
        };
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("corrupt ({e})")))?;
        let act = st
            .tensor("activations")
            .map_err(|_| bad("no `activations` tensor".into()))?;
        let ids = st
            .tensor("token_ids")
            .map_err(|_| bad("no `token_ids` tensor".into()))?;
        let d = self.manifest.d;
        if act.dtype() != Dtype::F16
            || act.shape() != [info.rows, d]
            || ids.dtype() != Dtype::U32
            || ids.shape() != [info.rows]
        {
            return Err(bad(format!(
                "shape {:?} does not match the manifest's [{}, {d}]",
                act.shape(),
                info.rows
            )));
        }
        let decode = |t: &TensorView, what: &str| -> Result<Vec<f32>> {
            let v: Vec<f32> = t
                .data()
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect();
            match v.iter().position(|x| !x.is_finite()) {
                Some(i) => Err(bad(format!("{what} value {i} is not finite"))),
                None => Ok(v),
            }
        };
        let rows = decode(&act, "activation")?;
        let targets = match (&self.manifest.target_hook, st.tensor("targets")) {
            (None, _) => None,
            (Some(_), Ok(t)) if t.dtype() == Dtype::F16 && t.shape() == [info.rows, d] => {
                Some(decode(&t, "target")?)
            }
            (Some(h), _) => {
                return Err(bad(format!(
                    "no `targets` tensor of shape [{}, {d}] for the target hook {h}",
                    info.rows
                )))
            }
        };
        let token_ids = ids
            .data()
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(Shard {
            rows,
            targets,
            token_ids,
        })
    }

    /// The stored rows in harvest order, a context's worth at a time (for reusing a harvest
    /// instead of rerunning the model over the same contexts).
    pub fn sequential(&self) -> Sequential<'_> {
        Sequential {
            store: self,
            shard: 0,
            rows: Vec::new(),
            ids: Vec::new(),
            at: 0,
        }
    }

    /// Shuffled training batches, an endless stream over epochs. Shards are visited in a
    /// seeded random order, `window` at a time, and the rows of a window are shuffled
    /// together, so memory stays at `window` shards.
    pub fn batches(&self, batch: usize, window: usize, seed: u64) -> Result<Batches<'_>> {
        let b = Batches {
            store: self,
            batch,
            window: window.max(1),
            seed,
            epoch: 0,
            group: 0,
            index: 0,
            loaded: None,
            buf: Vec::new(),
            targets: None,
        };
        if (0..b.groups()).all(|g| b.per_group(&b.order(0), g) == 0) {
            return Err(StoreError::store(
                &self.dir,
                format!(
                    "no window of {} shards holds a batch of {batch} rows",
                    b.window
                ),
            ));
        }
        Ok(b)
    }
}

/// Cursor over [`ActivationStore::batches`]: batch `index` of shard group `group` of `epoch`.
/// Deterministic for a seed; [`Batches::fast_forward`] jumps ahead without reading shards, which is
/// how a resumed training run finds its place.
pub struct Batches<'a> {
    store: &'a ActivationStore,
    batch: usize,
    window: usize,
    seed: u64,
    epoch: u64,
    group: usize,
    index: usize,
    loaded: Option<(u64, usize)>,
    buf: Vec<f32>,
    targets: Option<Vec<f32>>,
}

impl Batches<'_> {
    fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.store.manifest.shards.len()).collect();
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(
            self.seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        ));
        order
    }

    fn groups(&self) -> usize {
        self.store.manifest.shards.len().div_ceil(self.window)
    }

    fn members(&self, order: &[usize], group: usize) -> Vec<usize> {
        order
            .iter()
            .skip(group * self.window)
            .take(self.window)
            .copied()
            .collect()
    }

    fn per_group(&self, order: &[usize], group: usize) -> usize {
        self.members(order, group)
            .iter()
            .map(|&i| self.store.manifest.shards[i].rows)
            .sum::<usize>()
            / self.batch
    }

    fn advance(&mut self) {
        self.index = 0;
        self.group += 1;
        if self.group == self.groups() {
            self.group = 0;
            self.epoch += 1;
        }
    }

    /// Skips `n` batches.
    pub fn fast_forward(&mut self, mut n: usize) {
        while n > 0 {
            let per = self.per_group(&self.order(self.epoch), self.group);
            let k = (per - self.index).min(n);
            self.index += k;
            n -= k;
            if self.index == per {
                self.advance();
            }
        }
    }

    fn load(&mut self) -> Result<()> {
        if self.loaded == Some((self.epoch, self.group)) {
            return Ok(());
        }
        let d = self.store.manifest.d;
        let (mut rows, mut targets) = (Vec::new(), Vec::new());
        for i in self.members(&self.order(self.epoch), self.group) {
            let shard = self.store.read_shard(i)?;
            rows.extend(shard.rows);
            targets.extend(shard.targets.unwrap_or_default());
        }
        let mut perm: Vec<usize> = (0..rows.len() / d).collect();
        let seed = self.seed ^ (self.epoch << 32) ^ self.group as u64;
        perm.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        let permute = |v: &[f32]| -> Vec<f32> {
            perm.iter()
                .flat_map(|&r| v[r * d..(r + 1) * d].iter().copied())
                .collect()
        };
        self.buf = permute(&rows);
        self.targets = self
            .store
            .manifest
            .target_hook
            .as_ref()
            .map(|_| permute(&targets));
        self.loaded = Some((self.epoch, self.group));
        Ok(())
    }
}

impl Iterator for Batches<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        // Construction guarantees some group has a batch, so this ends within one epoch.
        while self.index >= self.per_group(&self.order(self.epoch), self.group) {
            self.advance();
        }
        if let Err(e) = self.load() {
            return Some(Err(e));
        }
        let len = self.batch * self.store.manifest.d;
        let range = self.index * len..(self.index + 1) * len;
        let batch = Batch {
            inputs: self.buf[range.clone()].to_vec(),
            targets: self.targets.as_ref().map(|t| t[range].to_vec()),
        };
        self.index += 1;
        Some(Ok(batch))
    }
}

/// Rows of a store in harvest order; see [`ActivationStore::sequential`].
pub struct Sequential<'a> {
    store: &'a ActivationStore,
    shard: usize,
    rows: Vec<f32>,
    ids: Vec<u32>,
    at: usize,
}

impl Sequential<'_> {
    /// The next `n` stored tokens' rows (`n × d`) and token ids; `None` once the store has
    /// fewer than `n` left.
    pub fn take(&mut self, n: usize) -> Result<Option<(Vec<f32>, Vec<u32>)>> {
        let d = self.store.manifest.d;
        let (mut rows, mut ids) = (Vec::with_capacity(n * d), Vec::with_capacity(n));
        while ids.len() < n {
            if self.at == self.ids.len() {
                if self.shard >= self.store.manifest.shards.len() {
                    return Ok(None);
                }
                let shard = self.store.read_shard(self.shard)?;
                (self.rows, self.ids, self.at) = (shard.rows, shard.token_ids, 0);
                self.shard += 1;
                continue;
            }
            let k = (n - ids.len()).min(self.ids.len() - self.at);
            ids.extend_from_slice(&self.ids[self.at..self.at + k]);
            rows.extend_from_slice(&self.rows[self.at * d..(self.at + k) * d]);
            self.at += k;
        }
        Ok(Some((rows, ids)))
    }
}

/// A store is what `glassbox train-dict` (a [`Sweep`](glassbox_dictionary::sweep::Sweep)) trains
/// on: shuffled batches, [`TRAIN_WINDOW`] shards at a time.
impl glassbox_dictionary::sweep::BatchSource for ActivationStore {
    fn info(&self) -> glassbox_dictionary::sweep::SourceInfo {
        let m = &self.manifest;
        glassbox_dictionary::sweep::SourceInfo {
            d_in: m.d,
            rows: self.rows(),
            model: m.model.clone(),
            hook: m.hook.clone(),
            target_hook: m.target_hook.clone(),
            origin: self.dir.display().to_string(),
        }
    }

    fn stream(
        &self,
        batch: usize,
        seed: u64,
        skip: usize,
    ) -> glassbox_dictionary::Result<glassbox_dictionary::sweep::Batches<'_>> {
        let source = |e: StoreError| glassbox_dictionary::DictError::Source(Box::new(e));
        let mut batches = self.batches(batch, TRAIN_WINDOW, seed).map_err(source)?;
        batches.fast_forward(skip);
        Ok(Box::new(batches.map(move |b| b.map_err(source))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_activations_are_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_shard(dir.path(), 0, &[1.0, f32::NAN, 0.0, 2.0], None, &[5, 6], 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("NaN") && err.contains("shard 0"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn an_invalid_manifest_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MANIFEST), "{\"format_version\": 1}").unwrap();
        let err = Manifest::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("manifest.json is invalid"), "{err}");
    }
}
