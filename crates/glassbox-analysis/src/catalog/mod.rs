//! Building the feature catalog: stream a corpus through the model and a dictionary, and keep
//! per feature its activation statistics and example contexts (the highest, and a uniform
//! sample across the range); then add what the weights say (vocabulary effects, neighbours)
//! and an offline label.

pub mod autointerp;
pub mod build;
pub mod effects;
pub mod flags;
pub mod label;
pub mod taxonomy;

pub use build::{build, BuildConfig, Built, Sources};
