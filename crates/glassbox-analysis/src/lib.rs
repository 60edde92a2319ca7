//! Glassbox layer 4: analyses over the model, its dictionaries and the store. For now the
//! feature catalog builder; causal tracing will live beside it.

pub mod catalog;
pub mod error;

pub use error::{AnalysisError, Result};
