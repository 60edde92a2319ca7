//! `glassbox catalog` through the real binary on the tiny GPT-2 fixture: build, show, search,
//! export; a killed build resumes to the same catalog; mismatched inputs and a dead LLM
//! endpoint are refused.

mod common;
use common::glassbox;
use glassbox_testkit::fixture;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn ok(args: &[&str]) -> Output {
    let out = glassbox(args);
    assert!(
        out.status.success(),
        "glassbox {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A corpus (the README), a store and a small trained dictionary for the tiny GPT-2.
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let corpus = dir.join("corpus.txt");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"),
        &corpus,
    )
    .unwrap();
    let (acts, dict) = (dir.join("acts"), dir.join("dict"));
    let model = fixture("tiny-gpt2");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    ok(&[
        "harvest",
        "--model",
        &s(&model),
        "--hook",
        "blocks.1.hook_resid_pre",
        "--corpus",
        &s(&corpus),
        "--tokens",
        "2000",
        "--context",
        "32",
        "--out",
        &s(&acts),
        "--json",
    ]);
    ok(&[
        "train-dict",
        "--acts",
        &s(&acts),
        "--out",
        &s(&dict),
        "--k",
        "4",
        "--width",
        "256",
        "--batch",
        "256",
        "--steps",
        "100",
        "--json",
    ]);
    (corpus, dict)
}

fn build_args(
    model: &Path,
    dict: &Path,
    corpus: &Path,
    catalog: &Path,
    tokens: &str,
) -> Vec<String> {
    let s = |p: &Path| p.to_str().unwrap().to_string();
    [
        "catalog",
        "build",
        "--model",
        &s(model),
        "--dict",
        &s(dict),
        "--corpus",
        &s(corpus),
        "--tokens",
        tokens,
        "--context",
        "32",
        "--batch",
        "4",
        "--save-every",
        "4",
        "--catalog",
        &s(catalog),
        "--json",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

fn show(catalog: &Path, id: u32) -> serde_json::Value {
    let out = ok(&[
        "catalog",
        "show",
        &id.to_string(),
        "--catalog",
        catalog.to_str().unwrap(),
        "--json",
    ]);
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn build_show_search_export_and_resume_after_a_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let (corpus, dict) = setup(tmp.path());
    let model = fixture("tiny-gpt2");
    let straight = tmp.path().join("straight");
    let args = build_args(&model, &dict, &corpus, &straight, "6000");
    let out = ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["fired"].as_u64().unwrap() > 50, "{report}");
    // Rerun for the table (nothing new to read): every command it suggests works verbatim.
    let table: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--json")
        .collect();
    let printed = String::from_utf8(ok(&table).stdout).unwrap();
    let program = env!("CARGO_BIN_EXE_glassbox");
    let suggested: Vec<&str> = printed
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with(&format!("{program} catalog ")))
        .collect();
    assert!(suggested.len() >= 3, "{printed}");
    for line in suggested {
        // Run as a shell would run it, in a directory of its own (export writes there).
        let out = Command::new("sh")
            .args(["-c", line])
            .current_dir(tmp.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{line}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The card, without a terminal: the peak token of each context is marked.
    let cat = straight.to_str().unwrap();
    let busy = (0..256)
        .max_by_key(|&i| show(&straight, i)["feature"]["contexts"].as_u64().unwrap())
        .unwrap();
    let card =
        String::from_utf8(ok(&["catalog", "show", &busy.to_string(), "--catalog", cat]).stdout)
            .unwrap();
    assert!(
        card.contains(&format!("feature {busy}"))
            && card.contains('⟦')
            && card.contains("top activations"),
        "{card}"
    );
    let err = glassbox(&["catalog", "show", "9999", "--catalog", cat]);
    assert_eq!(err.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&err.stderr);
    assert!(
        msg.contains("not in the catalog") && msg.contains("0 to 255"),
        "{msg}"
    );
    // An unknown concept is an error that lists the known ones.
    let err = glassbox(&["catalog", "search", "--flag", "selfharm", "--catalog", cat]);
    assert_eq!(err.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&err.stderr);
    assert!(
        msg.contains("\"selfharm\"") && msg.contains("self-harm"),
        "{msg}"
    );

    // The hand-audit score: feature `busy` audited as PII (flagged or missed), every flag the
    // build made either judged (one, as "none": wrongly flagged) or counted as unaudited.
    let flagged: Vec<u64> = [
        "pii",
        "credentials",
        "violence",
        "self-harm",
        "profanity",
        "prompt-injection",
    ]
    .iter()
    .flat_map(|c| {
        let out = ok(&[
            "catalog",
            "search",
            "--flag",
            c,
            "--catalog",
            cat,
            "--limit",
            "1000",
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_u64().unwrap())
            .collect::<Vec<_>>()
    })
    .collect();
    let judged_none = flagged.iter().copied().find(|&id| id != busy as u64);
    let sha = show(&straight, 0)["catalog"]["dict_sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let mut audit = format!("dict_sha256 = \"{sha}\"\nfeature = [\n  {{ id = {busy}, concept = \"pii\", why = \"test\" }},\n");
    if let Some(id) = judged_none {
        audit += &format!("  {{ id = {id}, concept = \"none\", why = \"test\" }},\n");
    }
    audit += "]\n";
    let audit_file = tmp.path().join("audit.toml");
    std::fs::write(&audit_file, &audit).unwrap();
    let scored: serde_json::Value = serde_json::from_slice(
        &ok(&[
            "catalog",
            "audit",
            audit_file.to_str().unwrap(),
            "--catalog",
            cat,
            "--json",
        ])
        .stdout,
    )
    .unwrap();
    let pii = &scored["concepts"][0];
    assert_eq!(pii["concept"], "pii");
    assert_eq!(pii["audited_positive"], 1, "{scored}");
    let busy_flagged = pii["true_positive"] == 1;
    assert_eq!(
        pii["missed"].as_array().unwrap().len(),
        usize::from(!busy_flagged)
    );
    let total = &scored["total"];
    let audited_flags = usize::from(busy_flagged) + usize::from(judged_none.is_some());
    assert_eq!(
        total["unaudited_flags"].as_u64().unwrap() as usize + audited_flags,
        flagged.len(),
        "{scored}"
    );
    if judged_none.is_some() {
        assert!(total["precision"].as_f64().unwrap() < 1.0, "{scored}");
    }
    std::fs::write(&audit_file, audit.replace(&sha, &"0".repeat(64))).unwrap();
    let err = glassbox(&[
        "catalog",
        "audit",
        audit_file.to_str().unwrap(),
        "--catalog",
        cat,
    ]);
    assert!(
        String::from_utf8_lossy(&err.stderr).contains("another dictionary"),
        "{err:?}"
    );

    // Search by words, token and similarity.
    let hits: serde_json::Value = serde_json::from_slice(
        &ok(&["catalog", "search", "model", "--catalog", cat, "--json"]).stdout,
    )
    .unwrap();
    assert!(!hits["results"].as_array().unwrap().is_empty());
    let similar: serde_json::Value = serde_json::from_slice(
        &ok(&[
            "catalog",
            "search",
            "--similar",
            &busy.to_string(),
            "--catalog",
            cat,
            "--json",
        ])
        .stdout,
    )
    .unwrap();
    // The ten nearest decoder directions, as a brute-force cosine over the saved dictionary
    // finds them.
    let sae = glassbox_dictionary::saelens::load(&dict).unwrap();
    let d = sae.d_in();
    let unit = |i: usize| {
        let r = &sae.w_dec[i * d..(i + 1) * d];
        let n = r.iter().map(|x| x * x).sum::<f32>().sqrt();
        r.iter().map(|x| x / n).collect::<Vec<f32>>()
    };
    let me = unit(busy as usize);
    let mut all: Vec<(u32, f32)> = (0..sae.d_sae())
        .filter(|&j| j != busy as usize)
        .map(|j| (j as u32, unit(j).iter().zip(&me).map(|(a, b)| a * b).sum()))
        .collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1));
    let results = similar["results"].as_array().unwrap();
    assert_eq!(results.len(), 10);
    for (r, (j, c)) in results.iter().zip(&all) {
        let cos = r["cosine"].as_f64().unwrap() as f32;
        assert!((cos - c).abs() < 1e-4, "{r} vs {j}: {c}");
        assert!(r["id"].as_u64().unwrap() as u32 == *j || (cos - c).abs() < 1e-6);
    }

    // The static site: an index and a page per feature, contexts shaded.
    let site = tmp.path().join("site");
    ok(&[
        "catalog",
        "export",
        "--html",
        site.to_str().unwrap(),
        "--catalog",
        cat,
    ]);
    let index = std::fs::read_to_string(site.join("index.html")).unwrap();
    assert!(index.contains(&format!("features/{busy}.html")));
    let page = std::fs::read_to_string(site.join(format!("features/{busy}.html"))).unwrap();
    assert!(
        page.contains("<svg") && page.contains("class=a"),
        "histogram and shaded tokens"
    );

    // Killed after its first save, the same command finishes the same catalog.
    let killed = tmp.path().join("killed");
    let args = build_args(&model, &dict, &corpus, &killed, "6000");
    let log = tmp.path().join("killed.stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_glassbox"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !glassbox(&[
        "catalog",
        "show",
        "0",
        "--catalog",
        killed.to_str().unwrap(),
        "--json",
    ])
    .status
    .success()
    {
        // A build that failed says why rather than leaving the loop to wait out the deadline.
        if let Some(status) = child.try_wait().unwrap() {
            if status.success() {
                break; // finished between two polls: caught below
            }
            panic!(
                "the build ended ({status}) before a save appeared: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no save appeared in 120 s: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let tokens = |c: &Path| show(c, 0)["catalog"]["tokens"].as_u64().unwrap();
    assert!(
        tokens(&killed) < tokens(&straight),
        "the build finished before it could be killed; make it longer"
    );
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(tokens(&killed), tokens(&straight));
    for id in 0..256 {
        let (a, b) = (
            show(&straight, id)["feature"].clone(),
            show(&killed, id)["feature"].clone(),
        );
        for field in ["count", "contexts", "max", "histogram"] {
            assert_eq!(a[field], b[field], "feature {id} {field}");
        }
        let tops = |f: &serde_json::Value| -> Vec<serde_json::Value> {
            f["examples"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["kind"] == "top")
                .cloned()
                .collect()
        };
        assert_eq!(tops(&a), tops(&b), "feature {id} top examples");
    }
}

#[test]
fn mismatched_inputs_are_refused_and_the_catalog_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let (corpus, dict) = setup(tmp.path());
    let model = fixture("tiny-gpt2");
    let catalog = tmp.path().join("cat");
    ok(&build_args(&model, &dict, &corpus, &catalog, "1000")
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    let before = show(&catalog, 0);

    // The same architecture with other weights: one value of the checkpoint changed.
    let other = tmp.path().join("other-gpt2");
    std::fs::create_dir(&other).unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(model.join(f), other.join(f)).unwrap();
    }
    let weights = other.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let n = bytes.len();
    bytes[n - 2] ^= 0x01;
    std::fs::write(&weights, bytes).unwrap();
    let out = glassbox(
        &build_args(&other, &dict, &corpus, &catalog, "2000")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1) && stderr.contains("another model"),
        "{stderr}"
    );
    assert_eq!(show(&catalog, 0), before, "the catalog is untouched");

    // Labelling through an endpoint nobody listens on fails clearly and keeps the labels;
    // labelling with another model is refused before any request.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let label = |model: &Path| {
        glassbox(&[
            "catalog",
            "label",
            "--llm",
            &format!("http://{free}/v1"),
            "--llm-model",
            "any",
            "--features",
            "0,1",
            "--model",
            model.to_str().unwrap(),
            "--catalog",
            catalog.to_str().unwrap(),
        ])
    };
    let out = label(&model);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1)
            && stderr.contains(&format!("cannot reach http://{free}/v1/chat/completions")),
        "{stderr}"
    );
    let out = label(&other);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1) && stderr.contains("another model"),
        "{stderr}"
    );
    assert_eq!(show(&catalog, 0), before, "the catalog is untouched");

    // In-process labelling (the packaged Qwen2.5-Coder-1.5B as the labeller, no endpoint): the busiest
    // feature gets an LLM label with its detection score, searchable at once.
    let busy = (0..64)
        .max_by_key(|&i| show(&catalog, i)["feature"]["contexts"].as_u64().unwrap())
        .unwrap();
    let out = glassbox(&[
        "catalog",
        "label",
        "--local",
        "qwen-coder-1.5b",
        "--features",
        &busy.to_string(),
        "--catalog",
        catalog.to_str().unwrap(),
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let labelled: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = &labelled["labelled"][0];
    let score = row["score"].as_f64().unwrap();
    assert!(
        row["id"] == busy
            && !row["label"].as_str().unwrap().is_empty()
            && (0.0..=1.0).contains(&score),
        "{labelled}"
    );
    let f = show(&catalog, busy)["feature"].clone();
    assert!(
        f["label_method"]
            .as_str()
            .unwrap()
            .starts_with("llm qwen-coder-1.5b"),
        "{f}"
    );
    // Neither or both of the endpoint flags; not with --local.
    let out = glassbox(&["catalog", "label", "--catalog", catalog.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));

    // A dictionary of another width than the model's hook.
    let cfg = dict.join("cfg.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    // MiniLM (installed by the set-up) is 384 wide at that hook; the dictionary reads 64.
    let mut args = build_args(&model, &dict, &corpus, &tmp.path().join("cat2"), "1000");
    args[3] = "minilm".into();
    let out = glassbox(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1) && stderr.contains("another model"),
        "{stderr}"
    );
    // A taxonomy with an error: the file, line and field are named.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[control]\nexamples = [\"a\", \"b\"]\n[[concept]]\nname = \"pii\"\nexamples = [\"x\", \"y\"]\nthreshhold = 0.4\n",
    )
    .unwrap();
    let mut args = build_args(&model, &dict, &corpus, &tmp.path().join("cat4"), "1000");
    args.extend(["--taxonomy".to_string(), bad.to_str().unwrap().to_string()]);
    let out = glassbox(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1)
            && stderr.contains("bad.toml, line 6")
            && stderr.contains("threshhold"),
        "{stderr}"
    );
    std::fs::write(
        &cfg,
        text.replace("blocks.1.hook_resid_pre", "blocks.9.hook_resid_pre"),
    )
    .unwrap();
    let out = glassbox(
        &build_args(&model, &dict, &corpus, &tmp.path().join("cat3"), "1000")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1) && stderr.contains("blocks.9"),
        "{stderr}"
    );
}

/// `catalog --store postgres://…`: the same build through the CLI into PostgreSQL and into
/// SQLite gives the same cards and the same token search. Needs a server: scripts/test runs it
/// beside scripts/with-postgres (GLASSBOX_TEST_POSTGRES is its keyword connection string).
#[test]
#[ignore = "needs PostgreSQL: run through scripts/with-postgres (scripts/test does)"]
fn a_catalog_in_postgres_reads_like_one_in_sqlite() {
    let base = std::env::var("GLASSBOX_TEST_POSTGRES")
        .expect("GLASSBOX_TEST_POSTGRES is not set: run through scripts/with-postgres");
    let db = format!("glassbox_cli_test_{}", std::process::id());
    let mut admin = postgres::Client::connect(&base, postgres::NoTls).unwrap();
    for sql in [
        format!("DROP DATABASE IF EXISTS {db}"),
        format!("CREATE DATABASE {db}"),
    ] {
        admin.batch_execute(&sql).unwrap();
    }
    // The server listens on a Unix socket only: its directory goes in the URL's `host`.
    let socket = base
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("host="))
        .expect("a host= in GLASSBOX_TEST_POSTGRES");
    let url = format!("postgres://glassbox@localhost/{db}?host={socket}");

    let tmp = tempfile::tempdir().unwrap();
    let (corpus, dict) = setup(tmp.path());
    let model = fixture("tiny-gpt2");
    let (in_pg, in_sqlite) = (tmp.path().join("pg"), tmp.path().join("sqlite"));
    let mut args = build_args(&model, &dict, &corpus, &in_pg, "1500");
    args.extend(["--store".to_string(), url.clone()]);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let args = build_args(&model, &dict, &corpus, &in_sqlite, "1500");
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        !in_pg.join("catalog.db").exists(),
        "the PostgreSQL build wrote no SQLite file"
    );

    let pg = |extra: &[&str]| -> serde_json::Value {
        let mut a: Vec<&str> = extra.to_vec();
        a.extend([
            "--catalog",
            in_pg.to_str().unwrap(),
            "--store",
            &url,
            "--json",
        ]);
        serde_json::from_slice(&ok(&a).stdout).unwrap()
    };
    let lite = |extra: &[&str]| -> serde_json::Value {
        let mut a: Vec<&str> = extra.to_vec();
        a.extend(["--catalog", in_sqlite.to_str().unwrap(), "--json"]);
        serde_json::from_slice(&ok(&a).stdout).unwrap()
    };
    let (mut fired, mut token) = (0, None);
    for id in 0..48u32 {
        let (a, b) = (
            pg(&["catalog", "show", &id.to_string()]),
            lite(&["catalog", "show", &id.to_string()]),
        );
        assert_eq!(a["feature"], b["feature"], "feature {id}");
        fired += usize::from(a["feature"]["count"].as_u64().unwrap() > 0);
        token = token.or(a["feature"]["top_tokens"][0][0]
            .as_str()
            .map(str::to_string));
    }
    assert!(fired > 5, "only {fired} of 48 features fired");
    let token = token.unwrap();
    let (a, b) = (
        pg(&["catalog", "search", "--token", &token]),
        lite(&["catalog", "search", "--token", &token]),
    );
    assert!(!a["results"].as_array().unwrap().is_empty(), "{a}");
    assert_eq!(a["results"], b["results"]);

    // The web console browses the catalog in PostgreSQL: a feature page and a search.
    let busy = a["results"][0]["id"].as_u64().unwrap();
    std::fs::write(
        tmp.path().join("deploy.toml"),
        format!(
            "model = \"{}\"\n[audit]\npath = \"audit.jsonl\"\n\
             [[console.catalog]]\nname = \"pg\"\npath = \"pg\"\nstore = \"{url}\"\n",
            model.display()
        ),
    )
    .unwrap();
    /// Stops the server however the test ends.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut server = Kill(
        Command::new(env!("CARGO_BIN_EXE_glassbox"))
            .args(["serve", "--config"])
            .arg(tmp.path().join("deploy.toml"))
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let console = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("serve did not start: {line:?}"))
        .to_string();
    let get = |path: &str| {
        let mut r = ureq::get(&format!("{console}{path}")).call().unwrap();
        r.body_mut().read_to_string().unwrap()
    };
    let page = get(&format!("/console/catalog/pg/features/{busy}"));
    let label = b["results"][0]["label"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(page.contains(&format!("Feature {busy}")), "{page}");
    let escaped = label
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    assert!(page.contains(&escaped), "{label} is not on {page}");
    let found = get(&format!(
        "/console/catalog/results?catalog=pg&q={}",
        token.trim()
    ));
    assert!(
        found.contains("/console/catalog/pg/features/"),
        "searching {token:?}: {found}"
    );
    drop(server);
    let mut admin = postgres::Client::connect(&base, postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .unwrap();
}
