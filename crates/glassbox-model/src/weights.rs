//! Reading tensors out of a `.safetensors` file with checks that name the tensor at fault.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors};

use crate::error::{ModelError, Result};

/// The raw bytes of a safetensors file, validated on open.
pub struct WeightFile {
    path: PathBuf,
    bytes: Vec<u8>,
}

/// A borrowed view that hands out tensors on one device, converted to f32.
pub struct Weights<'a> {
    path: &'a Path,
    tensors: SafeTensors<'a>,
    device: &'a Device,
}

impl WeightFile {
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        // Validate the header and every offset now, so a truncated file fails here.
        SafeTensors::deserialize(&bytes).map_err(|e| ModelError::Weights {
            path: path.to_path_buf(),
            msg: format!("not a valid safetensors file ({e}); the file may be truncated or corrupt, reinstall it"),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            bytes,
        })
    }

    pub fn view<'a>(&'a self, device: &'a Device) -> Weights<'a> {
        // Validated in `open`; deserialize is a header parse.
        let tensors = SafeTensors::deserialize(&self.bytes)
            .unwrap_or_else(|_| unreachable!("validated when opened"));
        Weights {
            path: &self.path,
            tensors,
            device,
        }
    }
}

impl Weights<'_> {
    fn err(&self, msg: String) -> ModelError {
        ModelError::Weights {
            path: self.path.to_path_buf(),
            msg,
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.tensor(name).is_ok()
    }

    /// Loads `name`, checking that it has exactly `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let view = self
            .tensors
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
        Ok(t.to_device(self.device)?)
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
