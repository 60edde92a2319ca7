//! Glassbox layer 4: analyses over the model, its dictionaries and the store. For now the
//! feature catalog builder and activation patching.

pub mod catalog;
pub mod error;
pub mod patching;

pub use error::{AnalysisError, Result};
