use anyhow::Result;
use glassbox_model::registry::{self, PACKAGED};
use glassbox_model::ModelConfig;

pub fn run(json: bool) -> Result<()> {
    let rows: Vec<serde_json::Value> = PACKAGED
        .iter()
        .map(|m| {
            let config = m
                .is_installed()
                .then(|| ModelConfig::from_file(&m.dir().join("config.json")).ok())
                .flatten();
            serde_json::json!({
                "name": m.name,
                "package": format!("{}=={}", m.package, m.version),
                "installed": m.is_installed(),
                "dir": m.dir(),
                "description": m.description,
                "config": config,
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
        "{:<10} {:<11} {:<8} {:<7} DESCRIPTION",
        "NAME", "INSTALLED", "LAYERS", "D_MODEL"
    );
    for r in &rows {
        let c = &r["config"];
        println!(
            "{:<10} {:<11} {:<8} {:<7} {}",
            r["name"].as_str().unwrap_or(""),
            if r["installed"].as_bool() == Some(true) {
                "yes"
            } else {
                "no (setup)"
            },
            c["n_layers"]
                .as_u64()
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into()),
            c["d_model"]
                .as_u64()
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into()),
            r["description"].as_str().unwrap_or("")
        );
    }
    println!("\nAny directory with config.json, model.safetensors and tokenizer.json also works as MODEL.");
    Ok(())
}
