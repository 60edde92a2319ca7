//! Glassbox layer 3 (first part): text corpora, the sharded on-disk activation store, and
//! harvesting activations from a model into it.

pub mod activations;
pub mod audit;
pub mod catalog;
pub mod corpus;
pub mod error;
pub mod fsutil;
pub mod harvest;
mod parquet_text;
pub mod redteam;
pub mod witness;

pub use error::{Result, StoreError};
