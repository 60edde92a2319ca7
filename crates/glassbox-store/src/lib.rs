//! Glassbox layer 3: data. Text corpora ([`corpus`]: .txt, .jsonl(.gz), Parquet, the packaged
//! Debian-docs corpus), the sharded on-disk activation store ([`activations`], filled by
//! [`harvest`]), the feature catalog ([`catalog`]: SQLite or PostgreSQL, a tantivy index,
//! Parquet export), the hash-chained audit log ([`audit`], with signed [`witness`]
//! checkpoints), the red-team data set ([`redteam`]) and benign background prose sampled from
//! a corpus ([`background`]).
//!
//! Harvest a residual stream into a store and draw a training batch from it:
//!
//! ```
//! use glassbox_model::{BlockHook, Device, HookPoint, Model};
//! use glassbox_store::activations::ActivationStore;
//! use glassbox_store::harvest::{harvest, HarvestConfig};
//! let model = Model::load("../glassbox-model/tests/fixtures/tiny-gpt2".as_ref(), &Device::Cpu)?;
//! let dir = tempfile::tempdir().expect("a temporary directory");
//! let corpus = dir.path().join("corpus.txt");
//! std::fs::write(&corpus, "Sparse dictionaries find features in activations. ".repeat(40))
//!     .expect("written");
//! let cfg = HarvestConfig { hook: HookPoint::block(1, BlockHook::ResidPre), target: None,
//!                           tokens: 256, context_len: 32, batch: 4, shard_rows: 128 };
//! let manifest = harvest(&model, "tiny-gpt2", &corpus, &dir.path().join("acts"), &cfg,
//!                        &mut |_done, _wanted| {})?;
//! assert!(manifest.complete && manifest.tokens >= 256);
//!
//! let store = ActivationStore::open(&dir.path().join("acts"))?;
//! let batch = store.batches(64, 2, 0)?.next().expect("a batch")?;
//! assert_eq!(batch.inputs.len(), 64 * model.config.d_model);
//!
//! // Every change is an append to a hash-chained log that `verify` checks.
//! let mut log = glassbox_store::audit::AuditLog::open(&dir.path().join("audit.jsonl"))?;
//! log.append("alice", "monitor.create", serde_json::json!({"monitor": "pii"}))?;
//! log.sync()?;
//! assert_eq!(glassbox_store::audit::verify(log.path())?.problem, None);
//! # Ok::<(), glassbox_store::error::StoreError>(())
//! ```

pub mod activations;
pub mod audit;
pub mod background;
pub mod catalog;
pub mod corpus;
pub mod error;
pub mod fsutil;
pub mod harvest;
mod parquet_text;
pub mod redteam;
pub mod witness;

pub use error::{Result, StoreError};
