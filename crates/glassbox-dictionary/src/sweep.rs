//! A training run: one or more dictionaries (a k-sweep) trained side by side on one pass over a
//! [`BatchSource`], checkpointed every few steps so that a killed run resumes where it stopped
//! and repeats the same curve. The CLI's `train-dict` and the Python package's `Sae.train` both
//! run this.
//!
//! ```no_run
//! use std::ops::ControlFlow;
//! use glassbox_dictionary::sweep::{Arch, BatchSource, Sweep, SweepConfig};
//! # fn source() -> Box<dyn BatchSource> { unimplemented!() }
//! let store = source(); // e.g. a `glassbox_store::activations::ActivationStore`
//! let cfg = SweepConfig { arch: Arch::TopK, ks: vec![32, 64], ..SweepConfig::default() };
//! let mut sweep = Sweep::open(std::path::Path::new("dicts"), store.as_ref(), &cfg)?;
//! let report = sweep.run(store.as_ref(), |p| {
//!     eprintln!("step {}/{}: FVE {:.3}", p.step, p.steps, p.stats.fve);
//!     ControlFlow::Continue(())
//! })?;
//! println!("{} tokens/s", report.tokens_per_second);
//! # Ok::<(), glassbox_dictionary::DictError>(())
//! ```

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use serde_json::json;

use crate::config::{Activation, DictConfig};
use crate::error::{DictError, Result};
use crate::sae::Sae;
use crate::saelens;
use crate::train::{StepStats, TrainConfig, Trainer};

/// The file a dictionary's training state is kept in, inside its output directory.
pub const CHECKPOINT: &str = "checkpoint.safetensors";
/// The per-step statistics of a finished dictionary, beside its SAELens files.
pub const HISTORY: &str = "history.json";

/// One batch of training rows (`[batch, d_in]`, row-major) and, for transcoders, the rows of the
/// target hook.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainBatch {
    pub inputs: Vec<f32>,
    pub targets: Option<Vec<f32>>,
}

/// What the rows of a [`BatchSource`] are.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    /// Width of a row.
    pub d_in: usize,
    /// Rows in one pass.
    pub rows: usize,
    pub model: String,
    pub hook: String,
    /// Set for a source of (input, target) pairs: the sweep then trains transcoders.
    pub target_hook: Option<String>,
    /// Where the rows came from, recorded in each dictionary's config (e.g. the store's path).
    pub origin: String,
}

/// A stream of training batches (see [`BatchSource::stream`]).
pub type Batches<'a> = Box<dyn Iterator<Item = Result<TrainBatch>> + Send + 'a>;

/// Where a sweep reads its training rows: a store of harvested activations or anything that can
/// replay a seeded, shuffled stream of batches.
pub trait BatchSource {
    fn info(&self) -> SourceInfo;

    /// An endless stream of `batch`-row batches in the order `seed` fixes, starting after the
    /// first `skip` batches of that order (how a resumed run finds its place without reading
    /// them). It runs on a thread of its own, reading ahead while a step trains.
    fn stream(&self, batch: usize, seed: u64, skip: usize) -> Result<Batches<'_>>;
}

/// Rows held in memory (e.g. a NumPy array handed over from Python), shuffled anew each epoch.
pub struct InMemory {
    pub info: SourceInfo,
    pub rows: Vec<f32>,
    /// For transcoders: the target hook's rows, aligned with `rows`.
    pub targets: Option<Vec<f32>>,
}

impl InMemory {
    /// Checks that `rows` (and `targets`) hold whole rows of `info.d_in`; `info.rows` is set
    /// from them.
    pub fn new(mut info: SourceInfo, rows: Vec<f32>, targets: Option<Vec<f32>>) -> Result<Self> {
        let d = info.d_in;
        if d == 0 || rows.is_empty() || !rows.len().is_multiple_of(d) {
            return Err(DictError::Width {
                got: rows.len(),
                expected: d,
            });
        }
        if targets.is_some() != info.target_hook.is_some() {
            return Err(DictError::Config(
                "give targets exactly when the source names a target hook".into(),
            ));
        }
        if targets.as_ref().is_some_and(|t| t.len() != rows.len()) {
            return Err(DictError::Config(
                "targets must have as many values as the rows".into(),
            ));
        }
        info.rows = rows.len() / d;
        Ok(Self {
            info,
            rows,
            targets,
        })
    }
}

impl BatchSource for InMemory {
    fn info(&self) -> SourceInfo {
        self.info.clone()
    }

    fn stream(&self, batch: usize, seed: u64, skip: usize) -> Result<Batches<'_>> {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let (d, n) = (self.info.d_in, self.info.rows);
        let per_epoch = n / batch.max(1);
        if per_epoch == 0 {
            return Err(DictError::Config(format!(
                "{} holds {n} rows, fewer than one batch of {batch}",
                self.info.origin
            )));
        }
        let order = move |epoch: usize| {
            let mut perm: Vec<usize> = (0..n).collect();
            let seed = seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            perm.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
            perm
        };
        let gather = move |v: &[f32], rows: &[usize]| -> Vec<f32> {
            rows.iter()
                .flat_map(|&r| v[r * d..(r + 1) * d].iter().copied())
                .collect()
        };
        let mut current: Option<(usize, Vec<usize>)> = None;
        Ok(Box::new((skip..).map(move |i| {
            let (epoch, index) = (i / per_epoch, i % per_epoch);
            if current.as_ref().is_none_or(|(e, _)| *e != epoch) {
                current = Some((epoch, order(epoch)));
            }
            let perm = &current.as_ref().expect("set above").1;
            let rows = &perm[index * batch..(index + 1) * batch];
            Ok(TrainBatch {
                inputs: gather(&self.rows, rows),
                targets: self.targets.as_ref().map(|t| gather(t, rows)),
            })
        })))
    }
}

/// The sparsity mechanism of a sweep's dictionaries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arch {
    /// Exactly k latents per token.
    TopK,
    /// k latents per token on average over a batch; a threshold at inference.
    BatchTopK,
    /// L1 penalty with this coefficient; k does not apply (one dictionary).
    Relu { l1: f32 },
    /// Learned per-latent thresholds with an L0 penalty; k is the L0 they start at.
    JumpRelu { l0: f32, bandwidth: f32 },
}

impl Arch {
    fn activation(self, k: usize) -> Activation {
        match self {
            Arch::TopK => Activation::TopK { k },
            Arch::BatchTopK => Activation::BatchTopK { k, threshold: 0.0 },
            Arch::Relu { l1 } => Activation::Relu { l1 },
            Arch::JumpRelu { l0, bandwidth } => Activation::JumpRelu { l0, bandwidth },
        }
    }
}

/// What to train. The defaults are the CLI's (`glassbox train-dict --help` explains each).
#[derive(Debug, Clone, PartialEq)]
pub struct SweepConfig {
    pub arch: Arch,
    /// One dictionary per k (ignored for ReLU, which trains one).
    pub ks: Vec<usize>,
    /// Latents per dictionary.
    pub width: usize,
    /// Rows per step.
    pub batch: usize,
    /// Optimisation steps; `None` = one pass over the source.
    pub steps: Option<usize>,
    pub lr: f32,
    pub warmup: usize,
    /// Dead latents recruited per token by the auxiliary loss; `None` = d_in / 2.
    pub aux_k: Option<usize>,
    /// A latent that has not fired for this many tokens counts as dead.
    pub dead_after: u64,
    pub checkpoint_every: usize,
    /// Seed of the initialisation and of the batch order.
    pub seed: u64,
}

impl Default for SweepConfig {
    fn default() -> Self {
        Self {
            arch: Arch::TopK,
            ks: vec![32],
            width: 16_384,
            batch: 4096,
            steps: None,
            lr: 2e-3,
            warmup: 50,
            aux_k: None,
            dead_after: 1_000_000,
            checkpoint_every: 100,
            seed: 0,
        }
    }
}

/// Where a running sweep stands, passed to the progress callback after every step.
pub struct Progress<'a> {
    /// Steps done, this one included.
    pub step: usize,
    pub steps: usize,
    /// The first dictionary's statistics on this step's batch.
    pub stats: &'a StepStats,
}

/// One trained dictionary.
#[derive(Debug, Clone, Serialize)]
pub struct Trained {
    pub dir: PathBuf,
    pub activation: Activation,
    /// The last step's statistics (on its training batch).
    #[serde(rename = "final")]
    pub last: Option<StepStats>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    pub dictionaries: Vec<Trained>,
    pub steps: usize,
    /// The step a checkpoint let this run start from (0 for a fresh run).
    pub resumed_from: usize,
    /// Set when the progress callback stopped the run: the step it stopped after (the
    /// checkpoints are saved there; running the same sweep again resumes).
    pub stopped_at: Option<usize>,
    /// Rows trained on in this run (per dictionary).
    pub tokens: usize,
    pub seconds: f64,
    pub tokens_per_second: f64,
}

/// A sweep opened in its output directory: fresh dictionaries, or the ones its checkpoints hold.
pub struct Sweep {
    trainers: Vec<Trainer>,
    dirs: Vec<PathBuf>,
    origin: String,
    steps: usize,
    batch: usize,
    seed: u64,
    checkpoint_every: usize,
}

/// Statistics for the initial scale and bias are drawn from another stream than training's, so
/// the training stream is the same whether or not a run starts fresh.
const INIT_STREAM: u64 = 0x5eed;

impl Sweep {
    /// Opens the sweep in `out`: one dictionary there, or with several k one in `out/k<K>` each.
    /// A directory holding a checkpoint resumes from it (its settings must equal `cfg`'s).
    pub fn open(out: &Path, source: &dyn BatchSource, cfg: &SweepConfig) -> Result<Self> {
        let info = source.info();
        if cfg.checkpoint_every == 0 {
            return Err(DictError::Config(
                "checkpoint_every must be positive".into(),
            ));
        }
        let ks: Vec<usize> = match cfg.arch {
            Arch::Relu { .. } => vec![0],
            _ if cfg.ks.is_empty() => {
                return Err(DictError::Config("give at least one k".into()));
            }
            _ => cfg.ks.clone(),
        };
        let steps = cfg.steps.unwrap_or(info.rows / cfg.batch.max(1)).max(1);
        let train_config = |k: usize| TrainConfig {
            batch: cfg.batch,
            steps,
            lr: cfg.lr,
            warmup_steps: cfg.warmup,
            decay_start: 0.8,
            aux_k: cfg.aux_k.unwrap_or(info.d_in / 2),
            aux_alpha: 1.0 / 32.0,
            dead_after_tokens: cfg.dead_after,
            seed: cfg.seed,
            init_l0: match cfg.arch {
                Arch::JumpRelu { .. } => k as f32,
                _ => 0.0,
            },
        };
        let mut trainers = Vec::new();
        let mut dirs = Vec::new();
        for &k in &ks {
            let dir = if ks.len() > 1 {
                out.join(format!("k{k}"))
            } else {
                out.to_path_buf()
            };
            std::fs::create_dir_all(&dir).map_err(|e| DictError::io(&dir, e))?;
            let checkpoint = dir.join(CHECKPOINT);
            let trainer = if checkpoint.exists() {
                Trainer::load_checkpoint(&checkpoint, &train_config(k))?
            } else {
                let mut dict = DictConfig::sae(
                    cfg.arch.activation(k),
                    info.d_in,
                    cfg.width,
                    &info.model,
                    &info.hook,
                );
                dict.target_hook = info.target_hook.clone();
                let mut t = Trainer::new(Sae::init(dict, cfg.seed)?, train_config(k))?;
                let first = source
                    .stream(cfg.batch, cfg.seed ^ INIT_STREAM, 0)?
                    .next()
                    .ok_or_else(|| DictError::Config(format!("{} is empty", info.origin)))??;
                t.initialise_from(&first.inputs, first.targets.as_deref())?;
                t
            };
            trainers.push(trainer);
            dirs.push(dir);
        }
        let start = trainers[0].step;
        if trainers.iter().any(|t| t.step != start) {
            return Err(DictError::Config(format!(
                "the sweep's checkpoints are at different steps; delete {} to restart",
                out.display()
            )));
        }
        Ok(Self {
            trainers,
            dirs,
            origin: info.origin,
            steps,
            batch: cfg.batch,
            seed: cfg.seed,
            checkpoint_every: cfg.checkpoint_every,
        })
    }

    /// Steps the whole run takes.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// The step this run starts from (> 0 when resuming).
    pub fn start_step(&self) -> usize {
        self.trainers[0].step
    }

    /// The dictionaries' output directories, in the order of the config's ks.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Trains to the last step, calling `progress` after each; a `Break` from it saves the
    /// checkpoints and stops. At the end each directory holds the dictionary in SAELens format
    /// and its `history.json`.
    pub fn run(
        &mut self,
        source: &dyn BatchSource,
        mut progress: impl FnMut(&Progress) -> ControlFlow<()>,
    ) -> Result<SweepReport> {
        let start = self.start_step();
        let batches = source.stream(self.batch, self.seed, start)?;
        std::thread::scope(|scope| {
            // One batch is read and shuffled ahead while a step trains. The reader stops at
            // its next send once the receiver is gone.
            let (ahead, next) = std::sync::mpsc::sync_channel(1);
            scope.spawn(move || {
                for batch in batches {
                    if ahead.send(batch).is_err() {
                        break;
                    }
                }
            });
            self.train(start, next, &mut progress)
        })
    }

    fn train(
        &mut self,
        start: usize,
        batches: std::sync::mpsc::Receiver<Result<TrainBatch>>,
        progress: &mut impl FnMut(&Progress) -> ControlFlow<()>,
    ) -> Result<SweepReport> {
        let started = Instant::now();
        let mut stopped_at = None;
        let mut step = start;
        while step < self.steps {
            let x = batches
                .recv()
                .map_err(|_| DictError::Config(format!("{} ran out of batches", self.origin)))??;
            let mut first = None;
            for t in &mut self.trainers {
                let s = t.step(&x.inputs, x.targets.as_deref())?;
                first.get_or_insert(s);
            }
            step += 1;
            let stats = first.expect("a sweep has at least one dictionary");
            let flow = progress(&Progress {
                step,
                steps: self.steps,
                stats: &stats,
            });
            if flow.is_break() && step < self.steps {
                self.save_checkpoints()?;
                stopped_at = Some(step);
                break;
            }
            if step.is_multiple_of(self.checkpoint_every) || step == self.steps {
                self.save_checkpoints()?;
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let tokens = (step - start) * self.batch;
        let tokens_per_second = tokens as f64 / seconds.max(1e-9);
        if stopped_at.is_none() {
            for (t, dir) in self.trainers.iter().zip(&self.dirs) {
                save(t, dir, &self.origin, tokens_per_second)?;
            }
        }
        Ok(SweepReport {
            dictionaries: self
                .trainers
                .iter()
                .zip(&self.dirs)
                .map(|(t, dir)| Trained {
                    dir: dir.clone(),
                    activation: t.sae.cfg.activation,
                    last: t.history.last().copied(),
                })
                .collect(),
            steps: self.steps,
            resumed_from: start,
            stopped_at,
            tokens,
            seconds,
            tokens_per_second,
        })
    }

    fn save_checkpoints(&self) -> Result<()> {
        for (t, dir) in self.trainers.iter().zip(&self.dirs) {
            t.save_checkpoint(&dir.join(CHECKPOINT))?;
        }
        Ok(())
    }
}

fn save(t: &Trainer, dir: &Path, origin: &str, tokens_per_second: f64) -> Result<()> {
    let extra = json!({"trained_on": origin, "train": t.tc, "steps": t.step,
                       "tokens_per_second": tokens_per_second});
    saelens::save(&t.sae, dir, extra)?;
    let history =
        serde_json::to_string(&t.history).map_err(|e| DictError::format(dir, e.to_string()))?;
    let path = dir.join(HISTORY);
    glassbox_model::fsutil::atomic_write(&path, history.as_bytes())
        .map_err(|e| DictError::io(&path, e))
}
