//! Glassbox layer 1: load a transformer (BERT, GPT-2, Llama/Qwen2/Gemma 3 families, from a
//! Hugging Face directory or a GGUF file) and run it with TransformerLens-style hook points
//! that read or replace activations.
//!
//! - [`Model::load`] (or [`registry::resolve`] for packaged names such as `smollm2`), then
//!   [`Model::batch`] / [`Model::forward`] with [`Hooks`]: `record` a point, `replace` it with a
//!   closure, or attach an [`Intervention`] (one may serve several points with
//!   [`Hooks::intervene_at`] and be read after the pass).
//! - Hook names are TransformerLens's (`blocks.3.hook_resid_post`, `blocks.0.attn.hook_z`);
//!   [`Model::resolve_hooks`] takes `*` patterns, [`Model::reader_at`] checks that a reader
//!   (a dictionary, a probe) of a given width fits a hook.
//! - [`generate`] decodes with a KV cache, [`sampling`] chooses tokens, [`chat`] renders chat
//!   templates; [`fsutil`] writes files atomically for every layer.
//!
//! Record a residual stream, then zero-ablate an MLP and see the logits move (the tiny GPT-2
//! of the test fixtures):
//!
//! ```
//! use glassbox_model::{BlockHook, Device, HookPoint, Hooks, Model};
//! let model = Model::load("tests/fixtures/tiny-gpt2".as_ref(), &Device::Cpu)?;
//! let batch = model.batch(&["The cat sat on the mat"], false)?;
//!
//! let resid = HookPoint::block(1, BlockHook::ResidPost);
//! let mut hooks = Hooks::none().record(resid);
//! let clean = model.forward(&batch, &mut hooks, None)?.logits.expect("a decoder has logits");
//! let cached = hooks.cache().get(&resid).expect("recorded");
//! assert_eq!(cached.dims(), &[1, batch.lengths[0], model.config.d_model]);
//!
//! let mlp = HookPoint::block(1, BlockHook::MlpOut);
//! let mut ablate = Hooks::none().replace(mlp, |t| t.zeros_like());
//! let ablated = model.forward(&batch, &mut ablate, None)?.logits.expect("logits");
//! let moved = (clean - ablated)?.abs()?.max_all()?.to_scalar::<f32>()?;
//! assert!(moved > 0.0);
//! assert_eq!(model.resolve_hooks(&["blocks.*.hook_resid_post"])?.len(), model.config.n_layers);
//! # Ok::<(), glassbox_model::ModelError>(())
//! ```

mod arch;
pub mod block;
pub mod chat;
pub mod config;
pub mod error;
pub mod export;
pub mod fastmath;
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
pub mod reader;
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
pub use reader::Reader;

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
