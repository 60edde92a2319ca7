//! Glassbox layer 2: sparse dictionaries over a hook's activations.
//!
//! An SAE encodes `x` (d_in) into a sparse code `f` (d_sae) and decodes `x̂ = f·W_dec + b_dec`.
//! Codes are sparse (k of 16k active), so training uses a hand-written backward pass that
//! touches only active latents: its cost is one dense encoder GEMM plus O(batch·k·d_in),
//! where autograd would pay three dense GEMMs.

pub mod config;
pub mod error;
pub mod eval;
pub mod fit;
mod linalg;
pub mod probe;
pub mod roc;
pub mod sae;
pub mod saelens;
pub mod similarity;
pub mod splice;
pub mod sweep;
pub mod train;

pub use config::{Activation, DictConfig};
pub use error::{DictError, Result};
pub use sae::{CodeRow, Codes, Sae};
