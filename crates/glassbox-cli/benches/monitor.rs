//! Monitoring overhead and load, against real `glassbox serve` processes on loopback.
//!
//!   cargo bench -p glassbox-cli --bench monitor -- DICT|PROBE [DICT|PROBE ...]
//!
//! For each MiniLM dictionary DICT: one server without monitors and one with DICT and 20
//! rules (feature thresholds, window means and counts, action log); for each probe directory
//! PROBE, one with the probe's own rule (a token probe's 4-token window, a sentence probe's
//! `sentences` logit; action log). Both answer the same /v1/embeddings requests, alternating,
//! one at a time; the table gives p50/p99 latency, throughput and the overhead. Then 64 concurrent clients drive the monitored server for a
//! fixed time: p50/p99 latency, errors and the server's peak resident memory.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use glassbox_dictionary::sentence_probe::SentenceProbe;
use serde_json::json;

mod support;
use support::{memory_mb, pct, rules, texts, Server};

const REQUESTS: usize = 400;
const CLIENTS: usize = 64;
const LOAD_SECONDS: u64 = 20;

fn start(dir: &Path, name: &str, body: &str) -> Server {
    let config = dir.join(format!("{name}.toml"));
    let audit = dir.join(format!("{name}-audit.jsonl"));
    std::fs::write(
        &config,
        format!(
            "model = \"minilm\"\n[limits]\nworkers = 2\n{body}\n[audit]\npath = \"{}\"\nfsync = \"per-request\"\n",
            audit.display()
        ),
    )
    .expect("writing a config");
    let child = Command::new(env!("CARGO_BIN_EXE_glassbox"))
        .args([
            "serve",
            "--config",
            config.to_str().unwrap_or_default(),
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .env("GLASSBOX_LOG", "warn")
        .spawn()
        .expect("starting glassbox serve");
    support::listening(child)
}

fn request(agent: &ureq::Agent, url: &str, text: &str) -> Result<Duration, String> {
    let t = Instant::now();
    let mut resp = agent
        .post(format!("{url}/v1/embeddings"))
        .send_json(json!({"input": text}))
        .map_err(|e| e.to_string())?;
    let _ = resp.body_mut().read_to_vec().map_err(|e| e.to_string())?;
    if resp.status() != 200 {
        return Err(format!("HTTP {}", resp.status()));
    }
    Ok(t.elapsed())
}

fn main() {
    let dicts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if dicts.is_empty() {
        eprintln!("usage: cargo bench -p glassbox-cli --bench monitor -- DICT [DICT ...] (MiniLM dictionaries)");
        std::process::exit(2);
    }
    // Configs live in a temporary directory, so dictionaries are named by absolute paths.
    let dicts: Vec<String> = dicts
        .iter()
        .map(|d| match std::fs::canonicalize(d) {
            Ok(p) => p.to_string_lossy().into_owned(),
            Err(e) => {
                eprintln!(
                    "{d}: {e} (cargo bench runs in crates/glassbox-cli; give absolute paths)"
                );
                std::process::exit(2);
            }
        })
        .collect();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let texts = texts();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let plain = start(dir.path(), "plain", "");
    println!(
        "{REQUESTS} sequential /v1/embeddings requests per server, alternating; {} distinct texts",
        texts.len()
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "monitor (dictionary: 20 rules)", "p50 ms", "p99 ms", "req/s", "mean ms", "overhead"
    );
    for (n, d) in dicts.iter().enumerate() {
        let body = if Path::new(d).join("cfg.json").is_file() {
            rules(Path::new(d))
        } else {
            probe_rule(Path::new(d))
        };
        let monitored = start(dir.path(), &format!("monitored{n}"), &body);
        for t in texts.iter().take(10) {
            let _ = request(&agent, &plain.url, t);
            let _ = request(&agent, &monitored.url, t);
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for i in 0..REQUESTS {
            let t = &texts[i % texts.len()];
            // Alternate which goes first so drift and caching favour neither.
            let order = if i % 2 == 0 {
                [&plain, &monitored]
            } else {
                [&monitored, &plain]
            };
            for s in order {
                let took = request(&agent, &s.url, t).expect("a request failed");
                if std::ptr::eq(s, &plain) {
                    a.push(took)
                } else {
                    b.push(took)
                }
            }
        }
        let mean = |v: &[Duration]| {
            v.iter().map(Duration::as_secs_f64).sum::<f64>() / v.len() as f64 * 1e3
        };
        let (ma, mb) = (mean(&a), mean(&b));
        let name = Path::new(d)
            .file_name()
            .map_or(d.clone(), |f| f.to_string_lossy().into_owned());
        let kind = std::fs::read_to_string(Path::new(d).join("cfg.json"))
            .ok()
            .and_then(|c| serde_json::from_str::<serde_json::Value>(&c).ok())
            .and_then(|c| c["architecture"].as_str().map(str::to_string))
            .unwrap_or_else(|| {
                if SentenceProbe::is_at(Path::new(d)) {
                    "sentence probe".into()
                } else {
                    "token probe".into()
                }
            });
        if n == 0 {
            println!(
                "{:<34} {:>9.2} {:>9.2} {:>9.1} {:>9.2} {:>8}",
                "none (no monitors)",
                pct(&mut a, 0.5),
                pct(&mut a, 0.99),
                1e3 / ma,
                ma,
                ""
            );
        }
        println!(
            "{:<34} {:>9.2} {:>9.2} {:>9.1} {:>9.2} {:>7.1}%",
            format!("{name} ({kind})"),
            pct(&mut b, 0.5),
            pct(&mut b, 0.99),
            1e3 / mb,
            mb,
            100.0 * (mb / ma - 1.0)
        );

        if n + 1 == dicts.len() {
            load(&monitored, &texts, &format!("{name} ({kind})"));
        }
    }
}

/// A probe directory's monitor: a sentence probe's `sentences` rule, or a token probe's
/// 4-token window (thresholds no text reaches: every request is read to its end).
fn probe_rule(dir: &Path) -> String {
    let when = if SentenceProbe::is_at(dir) {
        "sentences p > 1000"
    } else {
        "mean(probe p, 4) > 1.5"
    };
    format!(
        "[[probe]]\nname = \"p\"\npath = \"{}\"\n[[monitor]]\nname = \"p\"\nwhen = \"{when}\"\naction = \"log\"\n",
        dir.display()
    )
}

fn load(server: &Server, texts: &[String], name: &str) {
    let stop = Arc::new(AtomicBool::new(false));
    let results = Arc::new(Mutex::new((Vec::new(), 0usize)));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (stop, results, url) = (stop.clone(), results.clone(), server.url.clone());
            let texts = texts.to_vec();
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(120)))
                    .build()
                    .into();
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    let r = request(&agent, &url, &texts[i % texts.len()]);
                    let mut g = results.lock().unwrap_or_else(|p| p.into_inner());
                    match r {
                        Ok(d) => g.0.push(d),
                        Err(_) => g.1 += 1,
                    }
                    i += CLIENTS;
                }
            })
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(LOAD_SECONDS));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let secs = started.elapsed().as_secs_f64();
    let mut g = results.lock().unwrap_or_else(|p| p.into_inner());
    let errors = g.1;
    let lat = &mut g.0;
    println!(
        "\nload: {CLIENTS} concurrent clients for {LOAD_SECONDS} s on the monitored server ({name})\n\
         requests {}  ({:.1} req/s)  p50 {:.1} ms  p99 {:.1} ms  errors {errors}  server peak RSS {:.0} MB",
        lat.len(),
        lat.len() as f64 / secs,
        pct(lat, 0.5),
        pct(lat, 0.99),
        memory_mb(server.child.id(), "VmHWM:")
    );
}
