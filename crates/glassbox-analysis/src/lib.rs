//! Glassbox layer 4: analyses over the model, its dictionaries and the store. For now the
//! feature catalog builder, activation patching, the logit lens and direct logit attribution,
//! and the red team's attacks on monitors.

pub mod catalog;
pub mod diff;
pub mod edit;
pub mod error;
pub mod graph;
pub mod heads;
pub mod keywords;
pub mod lens;
pub mod patching;
pub mod redteam;

pub use error::{AnalysisError, Result};
