//! Shared argument handling: devices, models, input text.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use glassbox_model::{registry, Device, Model};

pub fn device(name: &str) -> Result<Device> {
    Ok(glassbox_model::device(name)?)
}

/// The model and the text of a command that takes both: `--model M "text"`, or the older
/// spelling `M "text"` (kept), as every command names its model with `--model`.
#[derive(clap::Args)]
pub struct ModelText {
    /// The model: a packaged name (`minilm`, `smollm2`, see `glassbox models`), a GGUF file or
    /// a model directory.
    #[arg(long = "model", value_name = "MODEL")]
    model: Option<String>,
    /// The text (or use --file). Without --model, the model comes first: `minilm "text"`.
    #[arg(value_name = "TEXT", num_args = 0..=2)]
    words: Vec<String>,
}

impl ModelText {
    /// (model, text if given inline).
    pub fn resolve(&self) -> Result<(String, Option<String>)> {
        let mut words = self.words.clone();
        match (&self.model, words.len()) {
            (Some(m), 0 | 1) => Ok((m.clone(), words.pop())),
            (Some(_), _) => bail!("with --model, give the text once (the other words: {words:?})"),
            (None, 0) => bail!("name the model with --model M (e.g. --model minilm)"),
            (None, _) => {
                let model = words.remove(0);
                Ok((model, words.pop()))
            }
        }
    }
}

/// The model of a command that takes no text: `--model M`, or the older spelling `M` (kept).
#[derive(clap::Args)]
pub struct ModelName {
    /// The model: a packaged name (`minilm`, `smollm2`, see `glassbox models`), a GGUF file or
    /// a model directory.
    #[arg(long = "model", value_name = "MODEL", conflicts_with = "positional")]
    model: Option<String>,
    /// The older spelling of --model.
    #[arg(value_name = "MODEL", hide = true)]
    positional: Option<String>,
}

impl ModelName {
    pub fn resolve(&self) -> Result<String> {
        self.model
            .clone()
            .or_else(|| self.positional.clone())
            .context("name the model with --model M (e.g. --model smollm2)")
    }
}

pub fn load_model(name: &str, device_name: &str) -> Result<Model> {
    let dir = registry::resolve(name)?;
    let device = device(device_name)?;
    Model::load(&dir, &device).with_context(|| format!("loading model from {}", dir.display()))
}

/// The text to run: the positional argument, or `--file PATH` (`-` for standard input).
pub fn text(arg: Option<String>, file: Option<&Path>) -> Result<String> {
    match (arg, file) {
        (Some(t), None) => Ok(t),
        (None, Some(p)) if p == Path::new("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading standard input")?;
            String::from_utf8(buf).map_err(|e| {
                anyhow::anyhow!(
                    "standard input is not valid UTF-8 (byte {})",
                    e.utf8_error().valid_up_to()
                )
            })
        }
        (None, Some(p)) => {
            let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            String::from_utf8(bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not valid UTF-8 (first bad byte at offset {})",
                    p.display(),
                    e.utf8_error().valid_up_to()
                )
            })
        }
        (Some(_), Some(_)) => bail!("give the text either as an argument or with --file, not both"),
        (None, None) => bail!("no input text: pass it as an argument or with --file PATH"),
    }
}

/// The corpus to read: `--corpus`, else the installed default.
pub fn corpus(arg: Option<std::path::PathBuf>) -> Result<std::path::PathBuf> {
    use glassbox_store::corpus::DEFAULT_CORPUS;
    match arg {
        Some(c) => Ok(c),
        None if DEFAULT_CORPUS.is_installed(&registry::home()) => {
            Ok(DEFAULT_CORPUS.dir(&registry::home()))
        }
        None => {
            bail!("no --corpus given and the default corpus is not installed; run `glassbox setup`")
        }
    }
}

/// The first `n` contexts of `len` content tokens of a corpus, each with the model's special
/// tokens around it (deterministic: the same contexts on every run).
pub fn contexts(model: &Model, corpus: &Path, n: usize, len: usize) -> Result<Vec<Vec<u32>>> {
    let (prefix, suffix) = model.tokenizer.special_affixes()?;
    let rows = glassbox_store::harvest::Contexts::new(model, corpus, len)?
        .take(n)
        .map(|c| Ok([prefix.as_slice(), &c?, suffix.as_slice()].concat()))
        .collect::<Result<Vec<_>>>()?;
    if rows.len() < n {
        bail!(
            "{} holds {} contexts of {len} tokens, {n} are needed",
            corpus.display(),
            rows.len()
        );
    }
    Ok(rows)
}

/// Labelled concept texts from a JSONL file (`{"text", "concept", "split"}` per line).
pub fn concept_texts(
    path: &Path,
) -> Result<Vec<glassbox_analysis::catalog::taxonomy::ConceptText>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading concept texts from {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| {
                format!(
                    "{}, line {}: expected {{\"text\", \"concept\", \"split\"}}",
                    path.display(),
                    i + 1
                )
            })
        })
        .collect()
}
