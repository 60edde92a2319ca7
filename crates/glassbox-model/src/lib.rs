//! Glassbox layer 1: load a transformer (BERT, GPT-2, Llama/Qwen2 families) from safetensors and
//! run it with TransformerLens-style hook points that read or replace activations.
//!
//! ```no_run
//! use glassbox_model::{Device, HookPoint, Hooks, Model, BlockHook};
//! let model = Model::load("path/to/model".as_ref(), &Device::Cpu)?;
//! let batch = model.batch(&["The cat sat."], false)?;
//! let mut hooks = Hooks::none().record(HookPoint::block(2, BlockHook::ResidPost));
//! let out = model.forward(&batch, &mut hooks, None)?;
//! let resid = hooks.cache().get(&HookPoint::block(2, BlockHook::ResidPost));
//! # Ok::<(), glassbox_model::ModelError>(())
//! ```

mod arch;
pub mod block;
pub mod chat;
pub mod config;
pub mod error;
mod fastmath;
pub mod fsutil;
pub mod generate;
pub mod gguf;
pub mod gguf_model;
pub mod hooks;
mod kernels;
pub mod model;
pub mod ops;
pub mod registry;
pub mod sampling;
pub mod tokenizer;
pub mod weights;

pub use candle_core as candle;
pub use candle_core::{DType, Device, Tensor};
pub use config::{Architecture, ModelConfig};
pub use error::{ModelError, Result};
pub use hooks::{ActivationCache, BlockHook, HookPoint, Hooks};
pub use model::{Batch, KvCache, Model, Output};
