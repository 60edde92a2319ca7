//! Monitoring overhead and load, against real `glassbox serve` processes on loopback.
//!
//!   cargo bench -p glassbox-cli --bench monitor -- DICT|PROBE [DICT|PROBE ...]
//!   cargo bench -p glassbox-cli --bench monitor -- --chat smollm2 PROBE [PROBE ...]
//!
//! For each MiniLM dictionary DICT: one server without monitors and one with DICT and 20
//! rules (feature thresholds, window means and counts, action log); for each probe directory
//! PROBE, one with the probe's own rule (a token probe's 4-token window, a sentence probe's
//! `sentences` logit; action log). Both answer the same /v1/embeddings requests, alternating,
//! one at a time; the table gives p50/p99 latency, throughput and the overhead. Then 64 concurrent clients drive the monitored server for a
//! fixed time: p50/p99 latency, errors and the server's peak resident memory.
//!
//! With `--chat MODEL` the servers serve that chat model and the requests are
//! /v1/chat/completions (the text as the user's message, 16 greedy tokens): what a monitor
//! costs a chat deployment, where a sentence probe's embedder runs beside the served model.

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
/// Chat requests generate, so fewer of them take as long as the embedding ones.
const CHAT_REQUESTS: usize = 100;
const CHAT_TOKENS: usize = 16;
const CLIENTS: usize = 64;
const LOAD_SECONDS: u64 = 20;

/// What the servers serve and how they are asked.
#[derive(Clone)]
struct Served {
    model: String,
    chat: bool,
}

fn start(dir: &Path, name: &str, body: &str, served: &Served) -> Server {
    let config = dir.join(format!("{name}.toml"));
    let audit = dir.join(format!("{name}-audit.jsonl"));
    std::fs::write(
        &config,
        format!(
            "model = \"{}\"\n[limits]\nworkers = 2\n{body}\n[audit]\npath = \"{}\"\nfsync = \"per-request\"\n",
            served.model,
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

fn request(agent: &ureq::Agent, url: &str, text: &str, chat: bool) -> Result<Duration, String> {
    let t = Instant::now();
    let (path, body) = if chat {
        (
            "chat/completions",
            json!({"messages": [{"role": "user", "content": text}], "max_tokens": CHAT_TOKENS}),
        )
    } else {
        ("embeddings", json!({"input": text}))
    };
    let mut resp = agent
        .post(format!("{url}/v1/{path}"))
        .send_json(body)
        .map_err(|e| e.to_string())?;
    let _ = resp.body_mut().read_to_vec().map_err(|e| e.to_string())?;
    if resp.status() != 200 {
        return Err(format!("HTTP {}", resp.status()));
    }
    Ok(t.elapsed())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let chat_model = args
        .iter()
        .position(|a| a == "--chat")
        .and_then(|i| args.get(i + 1).cloned());
    let served = Served {
        chat: chat_model.is_some(),
        model: chat_model.clone().unwrap_or_else(|| "minilm".into()),
    };
    let dicts: Vec<String> = args
        .iter()
        .filter(|a| !a.starts_with("--") && Some(*a) != chat_model.as_ref())
        .cloned()
        .collect();
    if dicts.is_empty() {
        eprintln!("usage: cargo bench -p glassbox-cli --bench monitor -- [--chat MODEL] DICT|PROBE [DICT|PROBE ...]");
        std::process::exit(2);
    }
    let requests = if served.chat { CHAT_REQUESTS } else { REQUESTS };
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
    let plain = start(dir.path(), "plain", "", &served);
    let what = if served.chat {
        format!(
            "/v1/chat/completions requests ({}, {CHAT_TOKENS} tokens each)",
            served.model
        )
    } else {
        "/v1/embeddings requests".to_string()
    };
    println!(
        "{requests} sequential {what} per server, alternating; {} distinct texts",
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
        let monitored = start(dir.path(), &format!("monitored{n}"), &body, &served);
        for t in texts.iter().take(10) {
            let _ = request(&agent, &plain.url, t, served.chat);
            let _ = request(&agent, &monitored.url, t, served.chat);
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for i in 0..requests {
            let t = &texts[i % texts.len()];
            // Alternate which goes first so drift and caching favour neither.
            let order = if i % 2 == 0 {
                [&plain, &monitored]
            } else {
                [&monitored, &plain]
            };
            for s in order {
                let took = request(&agent, &s.url, t, served.chat).expect("a request failed");
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
        // The unmonitored server's requests of this alternation: what the overhead is against.
        println!(
            "{:<34} {:>9.2} {:>9.2} {:>9.1} {:>9.2} {:>8}",
            if n == 0 {
                "none (no monitors)"
            } else {
                "none (the same, beside the next)"
            },
            pct(&mut a, 0.5),
            pct(&mut a, 0.99),
            1e3 / ma,
            ma,
            ""
        );
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
            load(&monitored, &texts, &format!("{name} ({kind})"), served.chat);
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

fn load(server: &Server, texts: &[String], name: &str, chat: bool) {
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
                    let r = request(&agent, &url, &texts[i % texts.len()], chat);
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
