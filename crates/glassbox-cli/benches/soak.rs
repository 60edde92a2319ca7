//! Soak and faults under load, against a real `glassbox serve` on loopback (bench/soak.sh).
//!
//!   cargo bench -p glassbox-cli --bench soak -- DICT [--minutes 10] [--clients 64]
//!
//! A MiniLM server with dictionary DICT, 20 log rules, a monitor that records every request,
//! an alert rule that fires on every request (to a webhook receiver run here) and a signed,
//! witnessed audit log takes `--clients` concurrent clients for `--minutes`. Every 30 s a row:
//! requests, errors, p50/p99 latency and the server's resident memory — the curve. Then faults,
//! under the same load: the webhook hangs, then dies; the server is SIGKILLed mid-append; a
//! fresh server's audit disk fills up (a 2 MB file-size limit). After each: errors, `audit verify`,
//! and whether every answered request is in the log.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod support;
use support::{memory_mb, pct, rules, texts, Server};

const WINDOW: Duration = Duration::from_secs(30);

fn glassbox() -> Command {
    Command::new(env!("CARGO_BIN_EXE_glassbox"))
}

/// Starts `glassbox serve --config CONFIG`, under a file-size limit of `fsize_kb` if given.
fn start(config: &Path, fsize_kb: Option<u64>) -> Server {
    let serve = format!(
        "exec '{}' serve --config '{}' --listen 127.0.0.1:0",
        env!("CARGO_BIN_EXE_glassbox"),
        config.display()
    );
    let script = match fsize_kb {
        // SIGXFSZ ignored: a write past the limit fails with EFBIG, as on a full disk.
        Some(kb) => format!("trap '' XFSZ; ulimit -f {kb}; {serve}"),
        None => serve,
    };
    let child = Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .env("GLASSBOX_LOG", "warn")
        .spawn()
        .expect("starting glassbox serve");
    support::listening(child)
}

/// A webhook receiver: answers 200 (mode 0), accepts and never answers (1), or is gone (2).
struct Webhook {
    url: String,
    mode: Arc<AtomicU8>,
    received: Arc<Mutex<u64>>,
}

fn webhook() -> Webhook {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a port");
    listener.set_nonblocking(true).expect("nonblocking");
    let url = format!(
        "http://{}/alerts",
        listener.local_addr().expect("an address")
    );
    let mode = Arc::new(AtomicU8::new(0));
    let received = Arc::new(Mutex::new(0));
    let (m, r) = (mode.clone(), received.clone());
    std::thread::spawn(move || {
        let mut held: Vec<TcpStream> = Vec::new();
        loop {
            match m.load(Ordering::Relaxed) {
                2 => return, // the listener and every held connection close
                mode => match listener.accept() {
                    Ok((s, _)) if mode == 1 => held.push(s),
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                        if read_request(&mut s) {
                            *r.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                },
            }
        }
    });
    Webhook {
        url,
        mode,
        received,
    }
}

/// Reads one HTTP request (headers and a Content-Length body).
fn read_request(s: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Ok(n) = s.read(&mut chunk) else {
            return false;
        };
        if n == 0 {
            return false;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if buf.len() >= end + 4 + len {
            return true;
        }
    }
}

/// What the clients saw: (finished at, latency, request id or the error).
type Outcomes = Arc<Mutex<Vec<(Instant, Duration, Result<String, String>)>>>;

struct Load {
    stop: Arc<AtomicBool>,
    outcomes: Outcomes,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn load(url: &str, clients: usize) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Outcomes = Arc::default();
    let texts = Arc::new(texts());
    let threads = (0..clients)
        .map(|c| {
            let (stop, outcomes, url, texts) = (
                stop.clone(),
                outcomes.clone(),
                url.to_string(),
                texts.clone(),
            );
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(60)))
                    .build()
                    .into();
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let r = agent
                        .post(format!("{url}/v1/embeddings"))
                        .send_json(json!({"input": texts[i % texts.len()]}));
                    let outcome = match r {
                        Err(e) => Err(e.to_string()),
                        Ok(mut resp) => {
                            let id = resp
                                .headers()
                                .get("x-glassbox-request-id")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            let status = resp.status().as_u16();
                            let body = resp.body_mut().read_to_string().unwrap_or_default();
                            if status == 200 {
                                Ok(id)
                            } else {
                                Err(format!(
                                    "HTTP {status}: {}",
                                    body.chars().take(120).collect::<String>()
                                ))
                            }
                        }
                    };
                    let gone = matches!(&outcome, Err(e) if !e.starts_with("HTTP"));
                    outcomes.lock().unwrap_or_else(|p| p.into_inner()).push((
                        Instant::now(),
                        t.elapsed(),
                        outcome,
                    ));
                    if gone {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    i += clients;
                }
            })
        })
        .collect();
    Load {
        stop,
        outcomes,
        threads,
    }
}

impl Load {
    fn finish(self) -> Vec<(Instant, Duration, Result<String, String>)> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        std::mem::take(&mut *self.outcomes.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Prints a row per 30 s window of `outcomes` since `from`; returns the errors counted.
fn rows(
    label: &str,
    outcomes: &Outcomes,
    from: Instant,
    until: Instant,
    server: &Server,
    audit: &Path,
) -> usize {
    let mut errors = 0;
    let mut start = from;
    while start < until {
        let end = (start + WINDOW).min(until);
        std::thread::sleep(end.saturating_duration_since(Instant::now()));
        let got = outcomes.lock().unwrap_or_else(|p| p.into_inner());
        let window: Vec<_> = got
            .iter()
            .filter(|(t, _, _)| *t >= start && *t < end)
            .collect();
        let mut lat: Vec<Duration> = window.iter().filter(|w| w.2.is_ok()).map(|w| w.1).collect();
        let errs = window.iter().filter(|w| w.2.is_err()).count();
        drop(got);
        errors += errs;
        println!(
            "{label:<14} {:>6.0} s {:>8} {:>8.1} {:>7} {:>9.1} {:>9.1} {:>9.0} {:>10.1}",
            end.duration_since(from).as_secs_f64(),
            lat.len(),
            lat.len() as f64 / end.duration_since(start).as_secs_f64(),
            errs,
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99),
            memory_mb(server.child.id(), "VmRSS:"),
            std::fs::metadata(audit).map_or(0.0, |m| m.len() as f64 / 1e6),
        );
        start = end;
    }
    errors
}

fn metric(url: &str, name: &str) -> String {
    let text = ureq::get(format!("{url}/metrics"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name))
        .map(|l| l.trim_start_matches("glassbox_"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `audit verify` (with the witness when given): its one-line verdict.
fn verify(log: &Path, witness: Option<&Path>) -> (bool, String) {
    let mut cmd = glassbox();
    cmd.args(["--json", "audit", "verify", &log.display().to_string()]);
    if let Some(w) = witness {
        cmd.args(["--witness", &w.display().to_string()]);
    }
    let out = cmd.output().expect("audit verify");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let said = match v["problem"].as_str() {
        Some(p) => p.to_string(),
        None if out.status.success() => format!("{} records, chain intact", v["records"]),
        None => String::from_utf8_lossy(&out.stderr).trim().to_string(),
    };
    (out.status.success(), said)
}

/// Answered requests whose id is not in the log.
fn missing(log: &Path, outcomes: &[(Instant, Duration, Result<String, String>)]) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    outcomes
        .iter()
        .filter_map(|o| o.2.as_ref().ok())
        .filter(|id| !text.contains(&format!("\"{id}\"")))
        .count()
}

fn deployment(
    dir: &Path,
    name: &str,
    dict: &Path,
    hook_url: &str,
    key: &Path,
) -> (PathBuf, PathBuf) {
    let audit = dir.join(name).join("audit.jsonl");
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "model = \"minilm\"\n[limits]\nworkers = 2\n{}\
             [[monitor]]\nname = \"every-request\"\ndictionary = \"d\"\nwhen = \"anomaly >= 0\"\naction = \"log\"\n\
             [[monitor]]\nname = \"alert-all\"\ndictionary = \"d\"\nwhen = \"mean(anomaly, 4) >= 0\"\naction = \"alert\"\n\
             [alert]\nwebhook = \"{hook_url}\"\nqueue = 1024\nretries = 1\ntimeout_ms = 1000\n\
             [audit]\npath = \"{}\"\nfsync = \"per-request\"\nfirings = \"per-request\"\n\
             checkpoint_key = \"{}\"\nwitness = \"{}\"\ncheckpoint_every = 1000\n",
            rules(dict),
            audit.display(),
            key.display(),
            dir.join(format!("{name}-witness.jsonl")).display()
        ),
    )
    .expect("writing a config");
    (config, audit)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let value = |flag: &str, default: u64| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (minutes, clients) = (value("--minutes", 10), value("--clients", 64) as usize);
    let Some(dict) = args
        .iter()
        .find(|a| !a.starts_with("--") && Path::new(a).is_dir())
    else {
        eprintln!("usage: soak DICT [--minutes M] [--clients N] (bench/soak.sh finds DICT)");
        std::process::exit(2);
    };
    let dict = PathBuf::from(dict);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let key = dir.path().join("keys/checkpoint.key");
    std::fs::create_dir_all(key.parent().expect("a parent")).expect("a key directory");
    let out = glassbox()
        .args(["audit", "keygen", "--out", &key.display().to_string()])
        .output()
        .expect("audit keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hook = webhook();
    let (config, audit) = deployment(dir.path(), "soak", &dict, &hook.url, &key);
    let witness = dir.path().join("soak-witness.jsonl");

    println!("soak: {clients} clients for {minutes} min against MiniLM with {} and 22 monitors (one alerting on every request), audit log signed and witnessed\n", dict.display());
    println!(
        "{:<14} {:>8} {:>8} {:>8} {:>7} {:>9} {:>9} {:>9} {:>10}",
        "phase", "time", "answered", "req/s", "errors", "p50 ms", "p99 ms", "RSS MB", "audit MB"
    );
    let server = start(&config, None);
    let started = Instant::now();
    let l = load(&server.url, clients);
    let soak_errors = rows(
        "soak",
        &l.outcomes,
        started,
        started + Duration::from_secs(minutes * 60),
        &server,
        &audit,
    );

    // The webhook hangs, then dies, under the same load.
    hook.mode.store(1, Ordering::Relaxed);
    let t = Instant::now();
    let hang_errors = rows("webhook hangs", &l.outcomes, t, t + WINDOW, &server, &audit);
    hook.mode.store(2, Ordering::Relaxed);
    let t = Instant::now();
    let dead_errors = rows("webhook dead", &l.outcomes, t, t + WINDOW, &server, &audit);
    let alerts = metric(&server.url, "glassbox_alerts_total");
    let peak = memory_mb(server.child.id(), "VmHWM:");

    // SIGKILL mid-append, under load.
    std::thread::sleep(Duration::from_secs(5));
    let mut server = server;
    let _ = server.child.kill();
    let _ = server.child.wait();
    let outcomes = l.finish();
    let answered = outcomes.iter().filter(|o| o.2.is_ok()).count();
    let lost = missing(&audit, &outcomes);
    let (_, killed) = verify(&audit, Some(&witness));
    let repaired = glassbox()
        .args([
            "audit",
            "repair",
            &audit.display().to_string(),
            "--actor",
            "soak",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let (after_repair, after) = verify(&audit, Some(&witness));

    // A fresh server whose audit disk holds 2 MB (`ulimit -f 4096` counts 512-byte blocks in
    // sh): it must fail closed, never answer unaudited.
    let (config_full, audit_full) = deployment(dir.path(), "full", &dict, &hook.url, &key);
    let server = start(&config_full, Some(4096));
    let l = load(&server.url, clients);
    let t = Instant::now();
    let mut full_errors = 0;
    while t.elapsed() < Duration::from_secs(300) && full_errors == 0 {
        full_errors = rows(
            "audit disk full",
            &l.outcomes,
            Instant::now(),
            Instant::now() + Duration::from_secs(10),
            &server,
            &audit_full,
        );
    }
    std::thread::sleep(Duration::from_secs(5));
    let full = l.finish();
    let refused: Vec<&String> = full.iter().filter_map(|o| o.2.as_ref().err()).collect();
    let closed = refused
        .iter()
        .filter(|e| e.starts_with("HTTP 500") && e.contains("audit"))
        .count();
    let full_lost = missing(&audit_full, &full);
    let (full_ok, full_said) = verify(&audit_full, Some(&dir.path().join("full-witness.jsonl")));
    drop(server);

    println!("\n{:<44} result", "check");
    println!(
        "{:<44} {soak_errors} errors in {answered} answered requests over the whole run",
        "soak"
    );
    println!("{:<44} {hang_errors} errors while hanging, {dead_errors} while dead; alerts: {alerts}; received {}", "webhook hangs, then dies", hook.received.lock().map_or(0, |g| *g));
    println!("{:<44} {peak:.0} MB", "server peak RSS");
    println!(
        "{:<44} verify after the kill: {killed}",
        "SIGKILL mid-append"
    );
    println!(
        "{:<44} {repaired}; then: {after} ({})",
        "  audit repair",
        if after_repair { "ok" } else { "FAILED" }
    );
    println!(
        "{:<44} {lost} of {answered} answered requests missing from the log",
        "  answered requests in the log"
    );
    println!("{:<44} {} answered, then {closed} of {} refused with a 500 naming the audit log; verify: {full_said} ({}); {full_lost} answered missing", "audit disk full (2 MB file-size limit)", full.iter().filter(|o| o.2.is_ok()).count(), refused.len(), if full_ok { "ok" } else { "FAILED" });
}
