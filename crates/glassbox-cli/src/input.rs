//! Shared argument handling: devices, models, input text.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use glassbox_model::{registry, Device, Model};

pub fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        cuda if cuda.starts_with("cuda") => {
            let ordinal = match cuda.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .with_context(|| format!("`{cuda}`: expected cuda or cuda:N"))?,
                None => 0,
            };
            Device::new_cuda(ordinal).with_context(|| {
                format!("cannot open CUDA device {ordinal}; this build needs `--features cuda` and an NVIDIA GPU")
            })
        }
        other => bail!("unknown device `{other}`; use cpu, cuda or cuda:N"),
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
