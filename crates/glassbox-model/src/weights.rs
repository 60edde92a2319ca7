//! Reading tensors out of a `.safetensors` or GGUF file with checks that name the tensor at
//! fault.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::gguf_model::{self, Stored};
use crate::quant::QuantWeight;

/// A checkpoint's weights: the raw bytes of a safetensors file (validated on open) or an open
/// GGUF file, whose tensors are read under their Hugging Face names (see [`gguf_model`]).
pub enum WeightFile {
    Safetensors { path: PathBuf, bytes: Vec<u8> },
    Gguf(GgufFile),
}

/// A borrowed view that hands out tensors on one device, converted to f32.
pub struct Weights<'a> {
    path: &'a Path,
    source: Source<'a>,
    device: &'a Device,
    /// When set, every tensor handed out is kept under its Hugging Face name (see
    /// [`Weights::recording`]): what an architecture reads is what a re-saved checkpoint holds.
    recorded: Option<RefCell<BTreeMap<String, Tensor>>>,
}

enum Source<'a> {
    Safetensors(SafeTensors<'a>),
    Gguf {
        file: &'a GgufFile,
        cfg: &'a ModelConfig,
    },
}

impl WeightFile {
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_bytes(path, bytes)
    }

    /// A safetensors file's bytes (`path` names it in errors).
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        // Validate the header and every offset now, so a truncated file fails here.
        SafeTensors::deserialize(&bytes).map_err(|e| ModelError::Weights {
            path: path.to_path_buf(),
            msg: format!("not a valid safetensors file ({e}); the file may be truncated or corrupt, reinstall it"),
        })?;
        Ok(Self::Safetensors {
            path: path.to_path_buf(),
            bytes,
        })
    }

    pub fn path(&self) -> &Path {
        match self {
            Self::Safetensors { path, .. } => path,
            Self::Gguf(g) => g.path(),
        }
    }

    /// Tensors for the model `cfg` describes (GGUF needs it to map names and undo permutations).
    pub fn view<'a>(&'a self, device: &'a Device, cfg: &'a ModelConfig) -> Weights<'a> {
        let source = match self {
            // Validated in `open`; deserialize is a header parse.
            Self::Safetensors { bytes, .. } => Source::Safetensors(
                SafeTensors::deserialize(bytes)
                    .unwrap_or_else(|_| unreachable!("validated when opened")),
            ),
            Self::Gguf(file) => Source::Gguf { file, cfg },
        };
        Weights {
            path: self.path(),
            source,
            device,
            recorded: None,
        }
    }
}

impl Weights<'_> {
    /// Keeps a copy of every tensor loaded through this view.
    pub fn recording(mut self) -> Self {
        self.recorded = Some(RefCell::default());
        self
    }

    /// The tensors loaded so far (empty unless [`Weights::recording`]), by Hugging Face name.
    pub fn into_recorded(self) -> BTreeMap<String, Tensor> {
        self.recorded.map(RefCell::into_inner).unwrap_or_default()
    }

    /// Where the tensors are put.
    pub fn device(&self) -> &Device {
        self.device
    }

    fn err(&self, msg: String) -> ModelError {
        ModelError::Weights {
            path: self.path.to_path_buf(),
            msg,
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        match &self.source {
            Source::Safetensors(st) => st.tensor(name).is_ok(),
            Source::Gguf { file, cfg } => gguf_model::tensor_name(&cfg.model_type, name, cfg)
                .is_some_and(|(g, _)| file.tensors.contains_key(&g)),
        }
    }

    /// Loads `name`, checking that it has exactly `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = match &self.source {
            Source::Safetensors(st) => self.get_safetensors(st, name, shape)?,
            Source::Gguf { file, cfg } => {
                let (gguf_name, stored) = gguf_model::tensor_name(&cfg.model_type, name, cfg)
                    .ok_or_else(|| self.err(format!("tensor `{name}` has no GGUF counterpart")))?;
                let info = file.tensors.get(&gguf_name).ok_or_else(|| {
                    self.err(format!(
                        "tensor `{gguf_name}` (Hugging Face `{name}`) is missing"
                    ))
                })?;
                if info.shape != shape {
                    return Err(self.err(format!(
                        "tensor `{gguf_name}` has shape {:?}, the metadata implies {shape:?}",
                        info.shape
                    )));
                }
                let t = file.dequantize(&gguf_name)?;
                match stored {
                    Stored::AsIs => t,
                    Stored::Permuted { heads } => gguf_model::unpermute(&t, heads)?,
                    Stored::PlusOne => (t - 1.0)?,
                }
            }
        };
        if let Some(r) = &self.recorded {
            r.borrow_mut().insert(name.to_string(), t.clone());
        }
        Ok(t.to_device(self.device)?)
    }

    /// The weight `name` (`[rows, cols]`) kept quantised, where the file stores it in a type
    /// [`QuantWeight`] multiplies directly (GGUF Q4_0, Q4_1, Q8_0); `None` otherwise.
    pub fn get_quantized(&self, name: &str, rows: usize, cols: usize) -> Option<QuantWeight> {
        let Source::Gguf { file, cfg } = &self.source else {
            return None;
        };
        let (gguf_name, stored) = gguf_model::tensor_name(&cfg.model_type, name, cfg)?;
        let info = file.tensors.get(&gguf_name)?;
        if info.shape != [rows, cols] {
            return None;
        }
        let q = QuantWeight::from_ggml(info.kind.name, &file.raw(&gguf_name).ok()?, rows, cols)?;
        match stored {
            Stored::AsIs => Some(q),
            Stored::Permuted { heads } => {
                Some(q.permute_rows(&gguf_model::unpermuted_order(rows, heads)))
            }
            Stored::PlusOne => None,
        }
    }

    fn get_safetensors(&self, st: &SafeTensors, name: &str, shape: &[usize]) -> Result<Tensor> {
        let view = st
            .tensor(name)
            .map_err(|_| self.err(format!("tensor `{name}` is missing")))?;
        if view.shape() != shape {
            return Err(self.err(format!(
                "tensor `{name}` has shape {:?}, the config implies {:?}",
                view.shape(),
                shape
            )));
        }
        let dtype = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::F64 => DType::F64,
            other => {
                return Err(self.err(format!(
                    "tensor `{name}` has dtype {other:?}; weights must be f32, f16, bf16 or f64"
                )))
            }
        };
        let t = Tensor::from_raw_buffer(view.data(), dtype, shape, &Device::Cpu)?;
        let t = t.to_dtype(DType::F32)?;
        // NaN and infinity both propagate through a sum.
        if !t.sum_all()?.to_scalar::<f32>()?.is_finite() {
            return Err(self.err(format!("tensor `{name}` contains NaN or infinite values")));
        }
        Ok(t)
    }

    /// Loads the first of several names that exists (checkpoints disagree on prefixes).
    pub fn get_any(&self, names: &[&str], shape: &[usize]) -> Result<Tensor> {
        match names.iter().find(|n| self.contains(n)) {
            Some(n) => self.get(n, shape),
            None => Err(self.err(format!(
                "none of the tensors {names:?} is present; is this the right architecture?"
            ))),
        }
    }

    pub fn get_opt(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        if self.contains(name) {
            self.get(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }
}
