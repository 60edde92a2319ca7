//! `glassbox models`: the packaged models, what they are and whether they are installed.

use anyhow::Result;
use glassbox_model::registry::{self, PACKAGED};

pub fn run(json: bool) -> Result<()> {
    let rows: Vec<serde_json::Value> = PACKAGED
        .iter()
        .map(|m| {
            serde_json::json!({
                "name": m.name,
                "packages": m.packages.iter().map(|(p, v)| format!("{p}=={v}")).collect::<Vec<_>>(),
                "installed": m.is_installed(),
                "default": m.default,
                "path": m.path(),
                "architecture": m.architecture,
                "size": m.size,
                "quantisation": m.quantisation,
                "licence": m.licence,
                "description": m.description,
            })
        })
        .collect();
    if json {
        println!(
            "{}",
            serde_json::json!({"home": registry::home(), "models": rows})
        );
        return Ok(());
    }
    println!("models in {}", registry::home().display());
    println!(
        "{:<16} {:<22} {:<7} {:<8} {:<24} {:<19} DESCRIPTION",
        "NAME", "INSTALLED", "ARCH", "SIZE", "QUANTISATION", "LICENCE"
    );
    for m in PACKAGED {
        let installed = match (m.is_installed(), m.default) {
            (true, _) => "yes".to_string(),
            (false, true) => "no (glassbox setup)".to_string(),
            (false, false) => "no (setup --model)".to_string(),
        };
        println!(
            "{:<16} {:<22} {:<7} {:<8} {:<24} {:<19} {}",
            m.name, installed, m.architecture, m.size, m.quantisation, m.licence, m.description
        );
    }
    println!(
        "\nAlso accepted as MODEL: a GGUF file, or a directory with config.json, model.safetensors and tokenizer.json."
    );
    Ok(())
}
