//! Glassbox layer 4: analyses over a model, its dictionaries and the store.
//!
//! - Causal tracing: [`patching`] (activation and attribution patching of every component),
//!   [`lens`] (the logit lens and direct logit attribution), [`heads`] (induction and
//!   previous-token scores), [`graph`] (feature attribution graphs through dictionaries).
//! - Cataloging: [`catalog`] builds the feature catalog (statistics, examples, vocabulary
//!   effects, labels, sensitivity flags, LLM labelling).
//! - Deployment checks: [`diff`] (what changed between checkpoints), [`edit`] (planted edits
//!   for testing the gate); [`redteam`] attacks monitors (templates, encodings, GCG, the SAE
//!   error-term recovery) — the keyword baseline they are compared with lives beside the probes,
//!   in `glassbox_dictionary::keywords`.
//!
//! Direct logit attribution: the heads', MLPs' and embeddings' direct effects add up to the
//! model's own logit:
//!
//! ```
//! use glassbox_analysis::lens::{direct_logit_attribution, logit_lens, LogitTarget};
//! use glassbox_model::{Device, Model};
//! let model = Model::load("../glassbox-model/tests/fixtures/tiny-gpt2".as_ref(), &Device::Cpu)?;
//! let ids = model.tokenize("Interpretability research asks", false)?;
//! let target = LogitTarget::parse(&model, "a", None)?;
//! let dla = direct_logit_attribution(&model, &ids, None, target)?;
//! assert!((dla.total() - dla.logit).abs() < 1e-3);
//!
//! // The logit lens: one row per layer (and the final residual stream), one column per token.
//! let table = logit_lens(&model, &ids)?.table(&model, &ids, 3, None)?;
//! assert_eq!(table.top.len(), model.config.n_layers + 1);
//! # Ok::<(), glassbox_analysis::error::AnalysisError>(())
//! ```

pub mod catalog;
pub mod diff;
pub mod edit;
pub mod error;
pub mod graph;
pub mod heads;
pub mod lens;
pub mod patching;
pub mod redteam;

pub use error::{AnalysisError, Result};
