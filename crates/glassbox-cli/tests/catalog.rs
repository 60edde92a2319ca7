//! `glassbox catalog` through the real binary on the tiny GPT-2 fixture: build, show, search,
//! export; a killed build resumes to the same catalog; mismatched inputs and a dead LLM
//! endpoint are refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn glassbox(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_glassbox"))
        .args(args)
        .output()
        .expect("run glassbox")
}

fn ok(args: &[&str]) -> Output {
    let out = glassbox(args);
    assert!(
        out.status.success(),
        "glassbox {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../glassbox-model/tests/fixtures")
        .join(name)
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
    assert!(String::from_utf8_lossy(&err.stderr).contains("not in the catalog"));

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
    assert_eq!(similar["results"].as_array().unwrap().len(), 10);

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
    let mut child = Command::new(env!("CARGO_BIN_EXE_glassbox"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
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
        assert!(Instant::now() < deadline, "no save appeared");
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
