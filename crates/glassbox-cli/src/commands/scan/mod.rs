//! `glassbox scan`: the deployment gate. Compares a candidate checkpoint with a baseline of the
//! same architecture on the suites of a spec — weights (how much and how low-rank each tensor
//! changed), dictionaries (the baseline's SAEs on the candidate's activations: fit, per-feature
//! density drift, flagged features, vocabulary effects), monitors (a deployment's probes and
//! rules on labelled texts), canaries (replies and logits) and assertions (interpretability
//! unit tests) — and fails with exit status 1 when a check fails (2: the scan could not run).
//!
//! The baseline's measurements are cached under `$GLASSBOX_HOME/scan-cache`, keyed by the
//! baseline's weights, the spec, every data file and the Glassbox build, so a CI rerun
//! against an unchanged baseline computes only the candidate's side. Each scan appends a record
//! to a hash-chained audit log.

mod cache;
mod checks;
mod report;
mod side;
mod spec;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use glassbox_analysis::diff;
use glassbox_model::export::Checkpoint;
use glassbox_model::{registry, Model};
use glassbox_serve::config::Config;
use glassbox_store::audit::AuditLog;
use glassbox_store::catalog::sqlite::SqliteCatalog;
use glassbox_store::catalog::{CatalogStore, Feature};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use serde_json::json;

use self::checks::{Check, Findings};
use self::side::{Inputs, Side};
use self::spec::Spec;
use super::probe::read_records;
use crate::input;

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  \
    glassbox edit resave --model smollm2 --out candidates/resaved --dtype bf16\n  \
    glassbox scan --baseline smollm2 --candidate candidates/resaved --spec scan.example.toml --out reports/scan-resaved\n  \
    glassbox audit list ~/.cache/glassbox/audit/scans.jsonl --event scan\n\n\
    Exit status: 0 every check passed, 1 a check failed, 2 the scan could not run. \
    --out writes report.json, junit.xml, summary.md (for a pull-request comment) and report.html.")]
pub struct Args {
    /// The model that is deployed now: a packaged name, a model directory or a GGUF file.
    #[arg(long)]
    baseline: String,
    /// The model that would replace it (same architecture and tokenizer).
    #[arg(long)]
    candidate: String,
    /// Suites and thresholds (see scan.example.toml).
    #[arg(long)]
    spec: PathBuf,
    /// Writes report.json, junit.xml, summary.md and report.html here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Recompute the baseline's side even when a cached one matches.
    #[arg(long)]
    no_cache: bool,
    /// The audit log the scan is recorded in (hash-chained JSON lines).
    #[arg(long, env = "GLASSBOX_SCAN_AUDIT")]
    audit: Option<PathBuf>,
    /// Who ran the scan, for the audit log (default: $USER).
    #[arg(long)]
    actor: Option<String>,
}

/// A finished scan: what the reports are written from.
#[derive(Serialize)]
pub struct Scan {
    pub baseline: Named,
    pub candidate: Named,
    pub spec: String,
    pub spec_sha256: String,
    pub passed: bool,
    pub checks: Vec<Check>,
    pub findings: Findings,
    /// Seconds per side and whether the baseline came from the cache.
    pub baseline_seconds: f64,
    pub baseline_cached: bool,
    /// The cache entry of the baseline's measurements.
    pub baseline_cache: PathBuf,
    pub candidate_seconds: f64,
    /// The candidate's seconds per suite (dictionaries, monitors, canaries, assertions) and
    /// the weights comparison's.
    pub candidate_suite_seconds: [f64; 4],
    pub weights_seconds: f64,
    pub seconds: f64,
    pub glassbox: &'static str,
}

#[derive(Serialize)]
pub struct Named {
    pub name: String,
    pub path: PathBuf,
    pub sha256: String,
}

/// Runs the scan; `Ok(false)` when a check failed.
pub fn run(a: Args, device: &str, json_out: bool) -> Result<bool> {
    let start = Instant::now();
    let spec = Spec::load(&a.spec)?;
    let spec_sha256 = glassbox_store::fsutil::sha256_file(&a.spec)?;
    let (base_path, cand_path) = (
        registry::resolve(&a.baseline)?,
        registry::resolve(&a.candidate)?,
    );
    let base_model = input::load_model(&a.baseline, device).context("the baseline")?;
    let cand_model = input::load_model(&a.candidate, device).context("the candidate")?;
    same_kind(&base_model, &cand_model)?;
    let base_sha = glassbox_store::harvest::model_sha256(&base_model)?;
    let cand_sha = glassbox_store::harvest::model_sha256(&cand_model)?;
    let inputs = prepare(&spec, &base_model)?;
    let catalogs = catalogs(&spec, &inputs)?;
    let labels: Vec<bool> = inputs.texts.iter().map(|t| t.1).collect();

    let say = |m: String| {
        if !json_out {
            eprintln!("{m}");
        }
    };
    let key = cache::key(&base_sha, &spec, &inputs_digest(&spec)?)?;
    let cached = if a.no_cache {
        None
    } else {
        // A distrusted entry is worth a warning even under --json (stderr, not the report).
        cache::read(&key, &mut |m| eprintln!("warning: {m}"))
    };
    let baseline_cached = cached.is_some();
    let base: Side = match cached {
        Some(s) => {
            say(format!(
                "baseline: cached measurements ({:.0} s saved)",
                s.seconds
            ));
            s
        }
        None => {
            say(format!("baseline: measuring {}", a.baseline));
            let s = side::measure(&base_model, &spec, &inputs)?;
            cache::write(&key, &s)?;
            s
        }
    };
    say(format!("candidate: measuring {}", a.candidate));
    let cand = side::measure(&cand_model, &spec, &inputs)?;
    let weights_start = Instant::now();
    let tensors = match &spec.weights {
        Some(_) => {
            say("weights: comparing every tensor".into());
            let b = Checkpoint::read(&base_path)?;
            let c = Checkpoint::read(&cand_path)?;
            Some(diff::weights(
                &b.tensors,
                &c.tensors,
                base_model.config.d_model,
            )?)
        }
        None => None,
    };
    let weights_seconds = weights_start.elapsed().as_secs_f64();
    let cx = checks::Comparison {
        spec: &spec,
        base_model: &base_model,
        cand_model: &cand_model,
        saes: &inputs.saes,
        catalogs: &catalogs,
        labels: &labels,
        tensors,
    };
    let (checks, findings) = checks::compare(&cx, &base, &cand)?;
    let passed = checks.iter().all(|c| c.passed);
    let scan = Scan {
        baseline: Named {
            name: a.baseline.clone(),
            path: base_path,
            sha256: base_sha,
        },
        candidate: Named {
            name: a.candidate.clone(),
            path: cand_path,
            sha256: cand_sha,
        },
        spec: a.spec.display().to_string(),
        spec_sha256,
        passed,
        checks,
        findings,
        baseline_seconds: base.seconds,
        baseline_cached,
        baseline_cache: cache::path(&key),
        candidate_seconds: cand.seconds,
        candidate_suite_seconds: cand.suite_seconds,
        weights_seconds,
        seconds: start.elapsed().as_secs_f64(),
        glassbox: env!("CARGO_PKG_VERSION"),
    };
    if let Some(dir) = &a.out {
        report::write_all(dir, &scan)?;
    }
    let log = a
        .audit
        .clone()
        .unwrap_or_else(|| registry::home().join("audit").join("scans.jsonl"));
    let actor = a
        .actor
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into());
    let record = AuditLog::open(&log)
        .and_then(|mut l| {
            let r = l.append(&actor, "scan", audit_detail(&scan))?;
            l.sync()?;
            Ok(r)
        })
        .with_context(|| format!("recording the scan in {}", log.display()))?;
    if json_out {
        let mut v = serde_json::to_value(&scan)?;
        v["audit"] = json!({"log": log, "seq": record.seq, "hash": record.hash});
        println!("{v}");
    } else {
        report::print(&scan);
        println!(
            "recorded in {} (record {}); reports: {}",
            log.display(),
            record.seq,
            a.out.as_ref().map_or(
                "pass --out DIR for JSON, JUnit, Markdown and HTML".into(),
                |d| { format!("{}/report.html", d.display()) }
            )
        );
    }
    Ok(passed)
}

fn audit_detail(scan: &Scan) -> serde_json::Value {
    json!({
        "baseline": scan.baseline.name, "baseline_sha256": scan.baseline.sha256,
        "candidate": scan.candidate.name, "candidate_sha256": scan.candidate.sha256,
        "spec": scan.spec, "spec_sha256": scan.spec_sha256,
        "verdict": if scan.passed { "pass" } else { "fail" },
        "failed": scan.checks.iter().filter(|c| !c.passed)
            .map(|c| format!("{}: {}", c.suite, c.name)).collect::<Vec<_>>(),
        "checks": scan.checks.len(),
    })
}

/// The two models must share an architecture and a tokenizer, or nothing compares.
fn same_kind(b: &Model, c: &Model) -> Result<()> {
    let (x, y) = (&b.config, &c.config);
    let shape = |m: &glassbox_model::ModelConfig| {
        format!(
            "{:?}, {} layers, d_model {}, {} heads, vocabulary {}",
            m.arch, m.n_layers, m.d_model, m.n_heads, m.vocab_size
        )
    };
    if shape(x) != shape(y) {
        bail!(
            "the baseline and the candidate differ in architecture: {} vs {}",
            shape(x),
            shape(y)
        );
    }
    const PROBE: &str = "Tokenizers differ here: naïve café, 東京, def f(x): return x**2 # 🙂\n";
    if b.tokenizer.encode_plain(PROBE)? != c.tokenizer.encode_plain(PROBE)? {
        bail!("the baseline and the candidate tokenize text differently: not the same tokenizer");
    }
    Ok(())
}

/// Loads what the suites read, checking every reference in the spec against the model.
fn prepare(spec: &Spec, model: &Model) -> Result<Inputs> {
    let mut saes = Vec::new();
    let mut contexts = Vec::new();
    for d in &spec.dictionaries {
        spec::require_file(&d.path, "[[dictionary]] path")?;
        let sae = glassbox_dictionary::saelens::load(&d.path)
            .with_context(|| format!("[[dictionary]] {}", d.path.display()))?;
        sae.hook_in(model, glassbox_dictionary::fit::Use::Read)
            .with_context(|| format!("[[dictionary]] {}", d.path.display()))?;
        let corpus = input::corpus(spec.corpus.clone())?;
        let rows = input::contexts(model, &corpus, d.contexts, d.context_len)?;
        let (prefix, _) = model.tokenizer.special_affixes()?;
        contexts.push((rows, prefix.len()..prefix.len() + d.context_len));
        saes.push(sae);
    }
    let (deploy, texts) = match &spec.monitors {
        Some(m) => {
            spec::require_file(&m.deploy, "[monitors] deploy")?;
            let cfg = Config::load(&m.deploy)?;
            if cfg.monitors.is_empty() {
                bail!("[monitors] {} has no [[monitor]]", m.deploy.display());
            }
            let data = m
                .data
                .clone()
                .unwrap_or_else(|| glassbox_store::redteam::jsonl(&registry::home()));
            if !data.is_file() {
                bail!(
                    "{} is missing; run `glassbox setup --data redteam` (or set [monitors] data)",
                    data.display()
                );
            }
            let all = read_records(&data)?
                .into_iter()
                .map(|r| r.labelled(&data))
                .collect::<Result<Vec<_>>>()?;
            let mut rng = rand::rngs::StdRng::seed_from_u64(m.seed);
            let mut pick = |label: bool| {
                let mut v: Vec<(String, bool)> = all
                    .iter()
                    .filter(|l| l.label == label)
                    .map(|l| (l.text.clone(), label))
                    .collect();
                v.shuffle(&mut rng);
                v.truncate(m.texts / 2);
                v
            };
            let (pos, neg) = (pick(true), pick(false));
            if pos.is_empty() || neg.is_empty() {
                bail!(
                    "{}: the monitors suite needs texts of both labels; it has {} positive and {} negative",
                    data.display(),
                    pos.len(),
                    neg.len()
                );
            }
            for a in &spec.assertions {
                if let spec::Assertion::ProbeAuroc { monitor, .. } = a {
                    if !cfg.monitors.iter().any(|x| &x.name == monitor) {
                        bail!(
                            "assertion `{}`: {} has no monitor `{monitor}`",
                            a.name(),
                            m.deploy.display()
                        );
                    }
                }
            }
            (Some(cfg), [pos, neg].concat())
        }
        None => (None, Vec::new()),
    };
    Ok(Inputs {
        saes,
        contexts,
        deploy,
        texts,
    })
}

/// Every dictionary suite's catalog, by feature id (empty where none is named).
fn catalogs(spec: &Spec, inputs: &Inputs) -> Result<Vec<BTreeMap<u32, Feature>>> {
    spec.dictionaries
        .iter()
        .zip(&inputs.saes)
        .map(|(d, sae)| {
            let Some(dir) = &d.catalog else {
                return Ok(BTreeMap::new());
            };
            let db = dir.join("catalog.db");
            spec::require_file(&db, "[[dictionary]] catalog")?;
            let store = SqliteCatalog::open(&db)?;
            let meta = store
                .meta()?
                .with_context(|| format!("{}: no finished catalog build", dir.display()))?;
            if meta.d_sae != sae.d_sae() {
                bail!(
                    "{} catalogs {} features; {} has {}",
                    dir.display(),
                    meta.d_sae,
                    d.path.display(),
                    sae.d_sae()
                );
            }
            Ok(store.features()?.into_iter().map(|f| (f.id, f)).collect())
        })
        .collect()
}

/// SHA-256 over every file the baseline's measurements read besides the model: dictionaries,
/// corpus, labelled texts, the deployment and its probes.
fn inputs_digest(spec: &Spec) -> Result<String> {
    let mut paths: Vec<PathBuf> = Vec::new();
    for d in &spec.dictionaries {
        paths.push(d.path.clone());
    }
    if !spec.dictionaries.is_empty() {
        paths.push(input::corpus(spec.corpus.clone())?);
    }
    if let Some(m) = &spec.monitors {
        paths.push(m.deploy.clone());
        let cfg = Config::load(&m.deploy)?;
        paths.extend(cfg.probes.iter().map(|p| p.path.clone()));
        paths.extend(cfg.dictionaries.iter().map(|d| d.path.clone()));
        paths.push(
            m.data
                .clone()
                .unwrap_or_else(|| glassbox_store::redteam::jsonl(&registry::home())),
        );
    }
    cache::digest_paths(&paths)
}
