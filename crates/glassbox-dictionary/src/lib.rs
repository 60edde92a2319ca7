//! Glassbox layer 2: sparse dictionaries over a hook's activations.
//!
//! An SAE encodes `x` (d_in) into a sparse code `f` (d_sae) and decodes `x̂ = f·W_dec + b_dec`.
//! Codes are sparse (k of 16k active), so training uses a hand-written backward pass that
//! touches only active latents: its cost is one dense encoder GEMM plus O(batch·k·d_in),
//! where autograd would pay three dense GEMMs.
//!
//! - [`Sae`] holds the parameters (TopK, BatchTopK, ReLU, JumpReLU; SAEs and transcoders);
//!   [`saelens`] reads and writes SAELens's format.
//! - [`sweep::Sweep`] trains one or several dictionaries on a [`sweep::BatchSource`] (a
//!   harvested store, or rows in memory), checkpointed and resumable; [`train`] is one step.
//! - [`fit`] checks that a dictionary fits a model's hook or a store; [`eval`] and [`splice`]
//!   measure it; [`probe`] and [`roc`] are linear probes and their statistics; [`attention`]
//!   a probe that learns which tokens of a text to read.
//!
//! Train a TopK SAE on rows with a planted sparse structure, then encode and reconstruct:
//!
//! ```
//! use std::ops::ControlFlow;
//! use glassbox_dictionary::sweep::{Arch, InMemory, SourceInfo, Sweep, SweepConfig};
//! # fn rows(n: usize, d: usize) -> Vec<f32> {
//! #     // Each row: 2 of 12 fixed directions with weights in [1, 2).
//! #     let dir = |j: usize, i: usize| (((j * 31 + i * 17) % 23) as f32 - 11.0) / 11.0;
//! #     (0..n).flat_map(|r| (0..d).map(move |i| {
//! #         let (a, b) = (r % 12, (r * 7 + 3) % 12);
//! #         (1.0 + (r % 5) as f32 / 5.0) * dir(a, i) + 1.5 * dir(b, i)
//! #     })).collect()
//! # }
//! let d = 16;
//! let info = SourceInfo { d_in: d, rows: 0, model: "example".into(), hook: "x".into(),
//!                         target_hook: None, origin: "rows in memory".into() };
//! let source = InMemory::new(info, rows(2048, d), None)?;
//! let cfg = SweepConfig { arch: Arch::TopK, ks: vec![2], width: 32, batch: 128, steps: Some(200),
//!                         lr: 1e-2, ..SweepConfig::default() };
//! let out = tempfile::tempdir().expect("a temporary directory");
//! let report = Sweep::open(out.path(), &source, &cfg)?.run(&source, |_| ControlFlow::Continue(()))?;
//! assert!(report.dictionaries[0].last.expect("trained").fve > 0.8);
//!
//! let sae = glassbox_dictionary::saelens::load(out.path())?;   // as SAELens would
//! let x = &source.rows[..d];
//! let codes = sae.encode(x)?;
//! assert_eq!(codes.rows[0].len(), 2);                           // k = 2 active latents
//! let x_hat = sae.decode(&codes);
//! assert_eq!(x_hat.len(), d);
//! # Ok::<(), glassbox_dictionary::DictError>(())
//! ```

pub mod attention;
pub mod config;
pub mod error;
pub mod eval;
pub mod fit;
pub mod keywords;
mod linalg;
pub mod probe;
pub mod roc;
pub mod sae;
pub mod saelens;
pub mod segments;
pub mod select;
pub mod sentence_probe;
pub mod similarity;
pub mod splice;
pub mod sweep;
pub mod train;

pub use config::{Activation, DictConfig};
pub use error::{DictError, Result};
pub use sae::{CodeRow, Codes, Sae};
