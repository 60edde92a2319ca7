//! Web console page loads against a real `glassbox serve` on loopback, for the main job's
//! catalog (16,384 features, if `scripts/main` has run) and a synthetic 100,000-feature catalog
//! (8 example contexts of 32 tokens per feature), side by side with the 200 ms budget.
//!
//!   cargo bench -p glassbox-cli --bench console [-- MAIN_JOB_CATALOG_DIR]
//!
//! Each page is fetched 30 times after one warm-up; the table gives p50, p95 and max in ms.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use glassbox_store::catalog::sqlite::SqliteCatalog;
use glassbox_store::catalog::{
    CatalogMeta, CatalogStore, Example, ExampleKind, Feature, Flag, HISTOGRAM_BINS,
};

const RUNS: usize = 30;
const BUDGET_MS: f64 = 200.0;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const WORDS: &[&str] = &[
    "password", "config", "token", "the", "error", "return", "file", "user", "kernel", "python",
    "value", "string", "memory", "network", "socket", "buffer", "thread", "lock", "signal", "path",
];

fn synthetic(dir: &Path, n: u32) {
    let meta = CatalogMeta {
        model: "minilm".into(),
        model_sha256: "0".repeat(64),
        dict: "synthetic".into(),
        dict_sha256: "0".repeat(64),
        hook: "blocks.3.hook_resid_pre".into(),
        d_sae: n as usize,
        corpus: "synthetic".into(),
        corpus_sha256: "0".repeat(64),
        context_len: 32,
        contexts_done: 0,
        tokens: 10_000_000,
        generation: 0,
        vocab_effect: "embedding".into(),
    };
    let features: Vec<Feature> = (0..n)
        .map(|id| {
            let w = |k: u32| WORDS[((id as usize) * 7 + k as usize) % WORDS.len()];
            let examples = (0..8u32)
                .map(|e| {
                    let tokens: Vec<String> = (0..32u32)
                        .map(|t| format!(" {}{}", w(t + e), t % 5))
                        .collect();
                    let mut text = String::new();
                    let mut spans = Vec::new();
                    for t in &tokens {
                        let start = text.len() as u32 + 1;
                        text.push_str(t);
                        spans.push((start, text.len() as u32));
                    }
                    Example {
                        kind: if e < 5 {
                            ExampleKind::Top
                        } else {
                            ExampleKind::Sample
                        },
                        activation: 5.0 - e as f32 * 0.3,
                        context: (id as u64) * 8 + e as u64,
                        acts: (0..32)
                            .map(|t| {
                                if t == 16 {
                                    5.0 - e as f32 * 0.3
                                } else {
                                    (t % 3) as f32 * 0.4
                                }
                            })
                            .collect(),
                        tokens,
                        focus: 16,
                        text,
                        spans,
                    }
                })
                .collect();
            Feature {
                id,
                count: 100 + (id as u64 % 5000),
                contexts: 50,
                sum: 300.0,
                max: 5.0,
                histogram: (0..HISTOGRAM_BINS as u64)
                    .map(|b| b * (id as u64 % 7))
                    .collect(),
                examples,
                top_tokens: vec![(format!(" {}", w(0)), 20), (format!(" {}", w(1)), 5)],
                promoted: (0..10)
                    .map(|k| (format!(" {}", w(k)), 0.3 - k as f32 * 0.01))
                    .collect(),
                suppressed: (0..10).map(|k| (format!(" {}", w(k + 3)), -0.2)).collect(),
                neighbours: (1..11).map(|k| ((id + k) % n, 0.5)).collect(),
                label: format!("“{}” · “{}”", w(0), w(1)),
                label_score: 0.6,
                label_method: "synthetic".into(),
                flags: if id % 997 == 0 {
                    vec![Flag {
                        concept: "credentials".into(),
                        score: 0.5,
                        evidence: "synthetic".into(),
                    }]
                } else {
                    Vec::new()
                },
            }
        })
        .collect();
    let mut store =
        SqliteCatalog::open(&dir.join("catalog.db")).expect("opening the synthetic catalog");
    store
        .save(&meta, &features)
        .expect("saving the synthetic catalog");
}

fn start(config: &Path) -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_glassbox"))
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
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let url = line.trim().trim_start_matches("listening on ").to_string();
    (Server(child), url)
}

fn time_page(agent: &ureq::Agent, url: &str) -> (f64, f64, f64, usize) {
    let mut ms = Vec::with_capacity(RUNS);
    let mut bytes = 0;
    for i in 0..=RUNS {
        let t = Instant::now();
        let r = agent.get(url).call().expect("request failed");
        assert!(r.status().is_success(), "{url}: {}", r.status());
        bytes = r.into_body().read_to_string().map(|s| s.len()).unwrap_or(0);
        if i > 0 {
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    ms.sort_by(f64::total_cmp);
    (ms[RUNS / 2], ms[RUNS * 95 / 100], ms[RUNS - 1], bytes)
}

fn main() {
    let main_job: Option<PathBuf> = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("../../glassbox-work/catalog")))
        .filter(|p| p.join("catalog.db").is_file());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let t = Instant::now();
    synthetic(&dir.path().join("big"), 100_000);
    eprintln!(
        "synthetic 100k-feature catalog written in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    let mut catalogs = format!(
        "[[console.catalog]]\nname = \"big\"\npath = \"{}\"\n",
        dir.path().join("big").display()
    );
    if let Some(m) = &main_job {
        let abs = std::fs::canonicalize(m).unwrap_or_else(|_| m.clone());
        catalogs += &format!(
            "[[console.catalog]]\nname = \"main\"\npath = \"{}\"\n",
            abs.display()
        );
    } else {
        eprintln!(
            "no main-job catalog (run scripts/main, or pass its catalog directory): 100k only"
        );
    }
    let config = dir.path().join("deploy.toml");
    std::fs::write(
        &config,
        format!(
            "model = \"minilm\"\n[audit]\npath = \"{}\"\n{catalogs}",
            dir.path().join("audit.jsonl").display()
        ),
    )
    .expect("writing the config");
    let t = Instant::now();
    let (_server, url) = start(&config);
    eprintln!(
        "server ready in {:.1} s (search index built on first start)",
        t.elapsed().as_secs_f64()
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    println!("\n| catalog | page | p50 ms | p95 ms | max ms | KB | within {BUDGET_MS:.0} ms |");
    println!("|---|---|---:|---:|---:|---:|---|");
    let mut names = vec![("big", "100,000 features (synthetic)", 4242u32)];
    if main_job.is_some() {
        names.push(("main", "16,384 features (main job)", 8435));
    }
    for (name, what, id) in names {
        for (page, path) in [
            ("catalog, no query (first 100 of all)", format!("/console/catalog?catalog={name}")),
            ("search as you type: `password`", format!("/console/catalog/results?catalog={name}&q=password")),
            ("search + flag + density filter", format!("/console/catalog/results?catalog={name}&q=token&flag=credentials&max_density=1")),
            ("feature page", format!("/console/catalog/{name}/features/{id}")),
        ] {
            let (p50, p95, max, bytes) = time_page(&agent, &format!("{url}{path}"));
            println!("| {what} | {page} | {p50:.1} | {p95:.1} | {max:.1} | {:.0} | {} |", bytes as f64 / 1024.0, if p95 < BUDGET_MS { "yes" } else { "NO" });
        }
    }
}
