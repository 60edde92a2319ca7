//! `glassbox serve`, `glassbox key`, `glassbox audit verify`, `glassbox monitor tail`: the
//! monitored server and the tools around it.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use glassbox_serve::auth::{new_key, Role};
use glassbox_serve::config::Config;
use glassbox_serve::server::AppState;
use glassbox_serve::transport::serve;
use serde_json::{json, Value};

use crate::input;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// The deployment file: model, dictionaries, monitors, alerts, audit log, keys (see
    /// deploy.example.toml).
    #[arg(long, default_value = "deploy.toml")]
    config: PathBuf,
    /// Listen here instead of the file's `listen` (e.g. 127.0.0.1:0 for any free port).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
}

pub fn run_serve(a: ServeArgs, device: &str, json_out: bool) -> Result<()> {
    let mut cfg = Config::load(&a.config)?;
    if let Some(l) = a.listen {
        cfg.listen = l;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("GLASSBOX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json_out {
        logs.json().init();
    } else {
        logs.init();
    }
    let model = input::load_model(&cfg.model, device)?;
    if cfg.keys.is_empty() {
        tracing::warn!("no [[key]] in the config: the API is open to anyone who can reach it");
    }
    let state = AppState::new(cfg, model)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let scheme = if state.cfg.tls.is_some() {
        "https"
    } else {
        "http"
    };
    runtime.block_on(serve(state.clone(), |addr| {
        // One line on stdout a script can wait for.
        if json_out {
            println!("{}", json!({"listening": addr.to_string(), "url": format!("{scheme}://{addr}")}));
        } else {
            println!("listening on {scheme}://{addr}");
        }
        let _ = std::io::stdout().flush();
        tracing::info!(%addr, model = %state.cfg.model, monitors = state.cfg.monitors.len(), "serving");
    }))?;
    Ok(())
}

#[derive(clap::Args)]
pub struct KeyArgs {
    /// A name for the key (recorded in the audit log as the actor).
    #[arg(long)]
    name: String,
    /// viewer (inference, read), operator (+ manage monitors) or admin (+ read the config).
    #[arg(long, value_parser = ["viewer", "operator", "admin"])]
    role: String,
}

/// Prints a new key once, and the `[[key]]` entry (its hash) for deploy.toml.
pub fn run_key(a: KeyArgs, json_out: bool) -> Result<()> {
    let role: Role = serde_json::from_value(json!(a.role))?;
    let (key, hash) = new_key();
    if json_out {
        println!(
            "{}",
            json!({"name": a.name, "role": role, "key": key, "sha256": hash})
        );
    } else {
        println!("key (shown once; give it to the client): {key}\n");
        println!(
            "add to deploy.toml:\n[[key]]\nname = \"{}\"\nrole = \"{}\"\nsha256 = \"{hash}\"",
            a.name, a.role
        );
    }
    Ok(())
}

#[derive(clap::Subcommand)]
pub enum AuditCommand {
    /// Check an audit log's hash chain (names the first edited, removed or reordered record)
    /// and every commitment in it (a red team's held-out set must still have the committed
    /// SHA-256).
    Verify {
        /// The audit log (JSON lines).
        log: PathBuf,
        /// Also compare the log with the signed checkpoints in this witness file (`[audit]
        /// witness`): catches a truncated tail and a rewritten chain.
        #[arg(long)]
        witness: Option<PathBuf>,
        /// The checkpoint key's public half (hex, as `audit keygen` printed it). Without it
        /// each checkpoint is checked against the key it names, which proves nothing against
        /// someone who can write the witness.
        #[arg(long, requires = "witness")]
        public_key: Option<String>,
    },
    /// Remove an incomplete last record (what a crash mid-write leaves, which stops a server
    /// from opening the log) and record the removal in the log; any other break is refused.
    Repair {
        log: PathBuf,
        /// Who repairs it, for the log (default: $USER).
        #[arg(long)]
        actor: Option<String>,
    },
    /// Make an Ed25519 key for signing audit checkpoints (`[audit] checkpoint_key`); prints its
    /// public half for `audit verify --public-key`. Keep it outside the log's directory.
    Keygen {
        /// Where the key goes (never overwritten; readable by its owner only).
        #[arg(long)]
        out: PathBuf,
    },
    /// List an audit log's records (oldest first), optionally of one event (`scan`,
    /// `monitor.create`, `firing`, ...).
    List {
        log: PathBuf,
        #[arg(long)]
        event: Option<String>,
    },
}

pub fn run_audit(cmd: AuditCommand, json_out: bool) -> Result<()> {
    let (log, witness, public_key) = match cmd {
        AuditCommand::Verify {
            log,
            witness,
            public_key,
        } => (log, witness, public_key),
        AuditCommand::List { log, event } => return list_audit(&log, event.as_deref(), json_out),
        AuditCommand::Keygen { out } => return keygen(&out, json_out),
        AuditCommand::Repair { log, actor } => {
            let actor = actor
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "unknown".into());
            let removed = glassbox_store::audit::repair_torn_tail(&log, &actor)?;
            if json_out {
                println!("{}", json!({"log": log, "removed_bytes": removed}));
            } else {
                match removed {
                    Some(n) => println!(
                        "{}: removed a torn last record ({n} bytes) and recorded the repair as `audit.repair`",
                        log.display()
                    ),
                    None => println!("{}: nothing to repair, the chain is intact", log.display()),
                }
            }
            return Ok(());
        }
    };
    let v = glassbox_store::audit::verify(&log)?;
    let commitments = glassbox_store::audit::commitments(&log)?;
    let pinned = public_key
        .as_deref()
        .map(glassbox_store::witness::public_key)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--public-key: {e}"))?;
    let witnessed = match &witness {
        Some(w) if v.problem.is_none() => {
            Some(glassbox_store::witness::check(&log, w, pinned.as_ref())?)
        }
        _ => None,
    };
    if json_out {
        println!(
            "{}",
            json!({"log": log, "records": v.records, "last_hash": v.last_hash, "problem": v.problem,
                "commitments": commitments, "witness": witnessed})
        );
    } else if v.problem.is_none() {
        println!(
            "{}: {} records, chain intact; last hash {}",
            log.display(),
            v.records,
            v.last_hash
        );
        for c in &commitments {
            let state = match c.matches {
                Some(true) => "matches its commitment",
                Some(false) => "DIFFERS from its commitment",
                None => "not revealed (file absent)",
            };
            println!(
                "commitment (record {}): {} {state}",
                c.seq,
                c.file.display()
            );
        }
    }
    if let Some(p) = v.problem {
        bail!(
            "{}: {p} ({} records verified before it)",
            log.display(),
            v.records
        );
    }
    if let (Some(w), Some(check)) = (&witness, &witnessed) {
        if let Some(p) = &check.problem {
            bail!("{}: {p}", log.display());
        }
        if !json_out {
            println!(
                "witness {}: {} signed checkpoints match, covering {} of {} records{}",
                w.display(),
                check.checkpoints,
                check.covered,
                v.records,
                if check.pinned {
                    ""
                } else {
                    " (no --public-key: checked against the keys the checkpoints name)"
                }
            );
        }
    }
    if let Some(c) = commitments.iter().find(|c| c.matches == Some(false)) {
        bail!(
            "{}: record {} committed to {} with SHA-256 {}, and the file now differs: the revealed set is not the one committed",
            log.display(),
            c.seq,
            c.file.display(),
            c.sha256
        );
    }
    Ok(())
}

fn keygen(out: &std::path::Path, json_out: bool) -> Result<()> {
    let public = glassbox_store::witness::generate_key(out)?;
    if json_out {
        println!("{}", json!({"key": out, "public_key": public}));
    } else {
        println!(
            "checkpoint key written to {} (keep it outside the audit log's directory)",
            out.display()
        );
        println!("public key: {public}\n");
        println!(
            "add to deploy.toml:\n[audit]\ncheckpoint_key = \"{}\"\nwitness = \"/another/disk/witness.jsonl\"\n\n\
             then check a log with:\nglassbox audit verify LOG --witness /another/disk/witness.jsonl --public-key {public}",
            out.display()
        );
    }
    Ok(())
}

#[derive(clap::Subcommand)]
pub enum MonitorCommand {
    /// Stream rule firings from a running server to the terminal (Ctrl-C to stop).
    Tail {
        /// The server's address.
        #[arg(long, default_value = "http://127.0.0.1:8080", env = "GLASSBOX_URL")]
        url: String,
        /// The environment variable holding an API key (viewer or above).
        #[arg(long, default_value = "GLASSBOX_API_KEY")]
        api_key_env: String,
    },
}

pub fn run_monitor(cmd: MonitorCommand, json_out: bool) -> Result<()> {
    let MonitorCommand::Tail { url, api_key_env } = cmd;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let address = format!("{}/v1/events", url.trim_end_matches('/'));
    let mut req = agent.get(&address).header("Accept", "text/event-stream");
    if let Ok(key) = std::env::var(&api_key_env) {
        req = req.header("Authorization", &format!("Bearer {key}"));
    }
    let resp = req
        .call()
        .with_context(|| format!("cannot reach {address}"))?;
    if resp.status() != 200 {
        let status = resp.status();
        let body = resp.into_body().read_to_string().unwrap_or_default();
        bail!("{address} answered {status}: {body}");
    }
    // The server subscribed this stream before answering: from here on no firing is missed.
    eprintln!("following rule firings at {address} (Ctrl-C to stop)");
    let reader = BufReader::new(resp.into_body().into_reader());
    // The stream also carries one `request` summary per request (the web console's live view).
    let mut kind = String::new();
    for line in reader.lines() {
        let line = line.with_context(|| format!("reading {address}"))?;
        if let Some(k) = line.strip_prefix("event:") {
            kind = k.trim().to_string();
            continue;
        }
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        if kind != "firing" {
            continue;
        }
        let data = data.trim();
        if json_out {
            println!("{data}");
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        let f = &v["firing"];
        println!(
            "{}  {:<20} {:<6} input {} token {:>4}  value {:>8.3}  {}",
            v["request_id"].as_str().unwrap_or(""),
            f["monitor"].as_str().unwrap_or(""),
            f["action"].as_str().unwrap_or(""),
            f["input"],
            f["position"],
            f["value"].as_f64().unwrap_or(0.0),
            v["route"].as_str().unwrap_or("")
        );
        let _ = std::io::stdout().flush();
    }
    Ok(())
}

fn list_audit(log: &std::path::Path, event: Option<&str>, json_out: bool) -> Result<()> {
    let records = glassbox_store::audit::records(log)?;
    let chosen: Vec<_> = records
        .iter()
        .filter(|r| event.is_none_or(|e| r.event == e))
        .collect();
    if json_out {
        println!("{}", serde_json::to_string(&chosen)?);
        return Ok(());
    }
    for r in &chosen {
        let d = &r.detail;
        let summary = if r.event == "scan" {
            format!(
                "{} → {}: {} ({} checks{}); candidate sha256 {}",
                d["baseline"].as_str().unwrap_or("?"),
                d["candidate"].as_str().unwrap_or("?"),
                d["verdict"].as_str().unwrap_or("?"),
                d["checks"],
                d["failed"]
                    .as_array()
                    .filter(|f| !f.is_empty())
                    .map(|f| format!(
                        "; failed: {}",
                        f.iter()
                            .filter_map(|x| x.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                    .unwrap_or_default(),
                d["candidate_sha256"].as_str().unwrap_or("?")
            )
        } else {
            d.to_string()
        };
        println!(
            "{:>5}  {}  {:<10} {:<16} {summary}",
            r.seq, r.time_ms, r.actor, r.event
        );
    }
    if chosen.is_empty() {
        println!(
            "no records{}",
            event
                .map(|e| format!(" of event `{e}`"))
                .unwrap_or_default()
        );
    }
    Ok(())
}
