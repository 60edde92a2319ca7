//! A checkpoint as data: the `config.json`, `tokenizer.json`, chat template and named tensors of a
//! model directory or GGUF file, which can be edited and written back as a Hugging Face
//! directory. Re-saving a GGUF as dense weights and the planted edits the deployment gate is
//! tested against (`glassbox edit`) both go through it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::Value as Json;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::gguf::{self, GgufFile};
use crate::weights::WeightFile;
use crate::{arch, chat, gguf_model, registry};

pub struct Checkpoint {
    pub config: Json,
    pub tokenizer: Json,
    pub chat_template: Option<String>,
    /// Every tensor the architecture reads, f32, by Hugging Face name.
    pub tensors: BTreeMap<String, Tensor>,
}

impl Checkpoint {
    /// Reads a model directory or GGUF file (dequantised to f32).
    pub fn read(path: &Path) -> Result<Self> {
        let (config, tokenizer, chat_template, weights) = if gguf::is_gguf(path) {
            let file = GgufFile::open(path)?;
            let arch = file
                .optional("general.architecture", "a string", gguf::Value::as_str)?
                .map(str::to_string);
            let template = file
                .optional("tokenizer.chat_template", "a string", gguf::Value::as_str)?
                .map(str::to_string)
                .or_else(|| {
                    arch.as_deref()
                        .and_then(chat::builtin_template)
                        .map(str::to_string)
                });
            (
                gguf_model::config_json(&file)?,
                gguf_model::tokenizer_json(&file)?,
                template,
                WeightFile::Gguf(file),
            )
        } else {
            let missing = registry::missing_files(path);
            if !missing.is_empty() {
                return Err(registry::incomplete_dir(path, &missing));
            }
            (
                read_json(&path.join("config.json"))?,
                read_json(&path.join("tokenizer.json"))?,
                chat::template_of_dir(path)?,
                WeightFile::open(&path.join("model.safetensors"))?,
            )
        };
        let cfg = ModelConfig::from_json(&config, path)?;
        let view = weights.view(&Device::Cpu, &cfg).recording();
        arch::load(&cfg, &view)?;
        Ok(Self {
            config,
            tokenizer,
            chat_template,
            tensors: view.into_recorded(),
        })
    }

    /// The tensor `name`, or an error that lists what the checkpoint holds nearby.
    pub fn tensor(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| ModelError::Weights {
            path: PathBuf::from(name),
            msg: format!(
                "the checkpoint has no tensor `{name}`; it holds e.g. {}",
                self.tensors
                    .keys()
                    .filter(|k| k.contains("layers.0.") || !k.contains("layers."))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
    }

    /// Writes a model directory at `out` (which must not exist) with the weights in `dtype`:
    /// built in a temporary sibling, every file synced, then renamed into place.
    pub fn write(&self, out: &Path, dtype: DType) -> Result<()> {
        if out.exists() {
            return Err(ModelError::io(
                out,
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "already exists; remove it or choose another output directory",
                ),
            ));
        }
        let parent = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
        let name = out.file_name().and_then(|n| n.to_str()).unwrap_or("model");
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        let result = self.write_files(&tmp, dtype).and_then(|()| {
            std::fs::rename(&tmp, out).map_err(|e| ModelError::io(out, e))?;
            std::fs::File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(|e| ModelError::io(parent, e))
        });
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }

    fn write_files(&self, dir: &Path, dtype: DType) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let json = |name: &str, v: &Json| -> Result<()> {
            let path = dir.join(name);
            let text = serde_json::to_string_pretty(v).unwrap_or_default();
            crate::fsutil::atomic_write(&path, text.as_bytes())
                .map_err(|e| ModelError::io(&path, e))
        };
        json("config.json", &self.config)?;
        json("tokenizer.json", &self.tokenizer)?;
        if let Some(t) = &self.chat_template {
            let path = dir.join("chat_template.jinja");
            crate::fsutil::atomic_write(&path, t.as_bytes())
                .map_err(|e| ModelError::io(&path, e))?;
        }
        let tensors = self
            .tensors
            .iter()
            .map(|(k, t)| Ok((k.clone(), t.to_dtype(dtype)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        let path = dir.join("model.safetensors");
        candle_core::safetensors::save(&tensors, &path)?;
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(|e| ModelError::io(&path, e))
    }
}

fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| ModelError::config(path, "<json>", format!("not valid JSON: {e}")))
}
