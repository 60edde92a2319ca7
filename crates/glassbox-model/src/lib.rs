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
pub mod export;
mod fastmath;
pub mod fsutil;
pub mod generate;
pub mod gguf;
pub mod gguf_model;
pub mod guard;
pub mod hooks;
mod kernels;
pub mod model;
pub mod ops;
pub mod quant;
pub mod registry;
pub mod sampling;
pub mod tokenizer;
pub mod weights;

/// Deterministic pseudo-random numbers for unit tests (xorshift32).
#[cfg(test)]
pub(crate) fn xorshift(n: usize, seed: u32) -> Vec<u32> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        })
        .collect()
}

pub use candle_core as candle;
pub use candle_core::{DType, Device, Tensor};
pub use config::{Architecture, Extras, ModelConfig};
pub use error::{ModelError, Result};
pub use hooks::{ActivationCache, BlockHook, HookPoint, Hooks, Intervention, InterventionError};
pub use model::{Batch, KvCache, Model, Output};

/// The device named `cpu`, `cuda` or `cuda:N`.
pub fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        cuda if cuda.starts_with("cuda") => {
            let ordinal = match cuda.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map_err(|_| ModelError::Input(format!("`{cuda}`: expected cuda or cuda:N")))?,
                None if cuda == "cuda" => 0,
                None => {
                    return Err(ModelError::Input(format!(
                        "`{cuda}`: expected cuda or cuda:N"
                    )))
                }
            };
            Device::new_cuda(ordinal).map_err(|e| {
                ModelError::Input(format!(
                    "cannot open CUDA device {ordinal} ({e}); Glassbox must be built with its \
                     `cuda` feature, on a machine with an NVIDIA GPU"
                ))
            })
        }
        other => Err(ModelError::Input(format!(
            "unknown device `{other}`; use cpu, cuda or cuda:N"
        ))),
    }
}

/// Makes the calling thread (call it first thing in `main`) a worker of rayon's global pool,
/// with the pool's usual size. Parallel kernels called from a worker run without handing their
/// work to another thread and waiting for it; decoding makes hundreds of such calls per token,
/// and this alone speeds it up by 10–25 % (`bench/decode.sh`). Threads that are not workers
/// (e.g. a server's request threads) still work, with that hand-off cost.
pub fn join_thread_pool() {
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // Fails only if the global pool exists already; then it stays as it is.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .use_current_thread()
        .build_global();
}
