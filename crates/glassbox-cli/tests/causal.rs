//! The causal-tracing commands through the real binary on the tiny GPT-2 fixture: logit lens,
//! direct logit attribution, induction scores, attribution patching and attribution graphs
//! (JSON, HTML), and their refusals.

use std::path::{Path, PathBuf};
use std::process::Command;

use glassbox_dictionary::{saelens, Activation, DictConfig, Sae};

fn glassbox(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_glassbox"))
        .args(args)
        .output()
        .unwrap()
}

fn ok_json(args: &[&str]) -> serde_json::Value {
    let out = glassbox(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn gpt2() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../glassbox-model/tests/fixtures/tiny-gpt2")
        .to_string_lossy()
        .into_owned()
}

const PROMPT: &str = "Interpretability research asks";

#[test]
fn lens_dla_and_induction_report_json() {
    let m = gpt2();
    let v = ok_json(&["lens", &m, PROMPT, "--json", "--target", "a"]);
    let lens = &v["lens"];
    assert_eq!(lens["labels"].as_array().unwrap().len(), 3); // 2 layers + final
    assert_eq!(
        lens["top"][2].as_array().unwrap().len(),
        lens["tokens"].as_array().unwrap().len()
    );
    assert!(lens["target"]["rank"][0][0].as_u64().unwrap() >= 1);

    let v = ok_json(&["dla", &m, PROMPT, "--json"]);
    let (sum, logit) = (
        v["sum"].as_f64().unwrap(),
        v["dla"]["logit"].as_f64().unwrap(),
    );
    assert!((sum - logit).abs() < 1e-3, "{sum} vs {logit}");
    assert_eq!(
        v["dla"]["pieces"].as_array().unwrap().len(),
        2 + 2 * (4 + 2)
    );

    let v = ok_json(&[
        "heads",
        "induction",
        &m,
        "--seq-len",
        "20",
        "--batch",
        "2",
        "--json",
    ]);
    assert_eq!(v["scores"]["induction"].as_array().unwrap().len(), 2);

    let out = glassbox(&["dla", &m, PROMPT, "--target", "\\sInterpretability"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("single token"));
    let out = glassbox(&["lens", "minilm", "a cat"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("encoder"));
}

#[test]
fn attribution_patching_runs_from_the_cli() {
    let v = ok_json(&[
        "patch",
        "--model",
        &gpt2(),
        "--clean",
        "the cat",
        "--corrupt",
        "the hat",
        "--metric",
        "logit-diff a b",
        "--attribution",
        "--json",
    ]);
    assert_eq!(v["report"]["method"], "attribution");
    assert_eq!(v["report"]["sweeps"].as_array().unwrap().len(), 4);
}

fn save_dictionary(dir: &Path, hook: &str) -> PathBuf {
    let sae = Sae::init(
        DictConfig::sae(Activation::Relu { l1: 0.0 }, 64, 128, "tiny-gpt2", hook),
        3,
    )
    .unwrap();
    let out = dir.join(hook);
    saelens::save(&sae, &out, serde_json::json!({})).unwrap();
    out
}

#[test]
fn graph_writes_json_and_html_and_refuses_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (json, html) = (dir.path().join("g.json"), dir.path().join("g.html"));
    let d0 = save_dictionary(dir.path(), "blocks.0.hook_resid_post");
    let d1 = save_dictionary(dir.path(), "blocks.1.hook_resid_pre");
    let m = gpt2();
    let out = glassbox(&[
        "graph",
        &m,
        PROMPT,
        "--dict",
        d1.to_str().unwrap(),
        "--dict",
        d0.to_str().unwrap(),
        "--target",
        "a",
        "--out",
        json.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("strongest paths"));
    let g: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    // Dictionaries are put in forward order whatever the order given.
    assert_eq!(g["dictionaries"][0], "blocks.0.hook_resid_post");
    assert!(g["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["kind"] == "target"));
    assert!(!g["paths"].as_array().unwrap().is_empty());
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains("<svg") && page.contains("Strongest paths"),
        "{page}"
    );

    let out = glassbox(&["graph", &m, PROMPT, "--dict", d0.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--target"));
    let wrong = dir.path().join("minilm-width");
    let sae = Sae::init(
        DictConfig::sae(
            Activation::Relu { l1: 0.0 },
            384,
            8,
            "minilm",
            "blocks.0.hook_resid_pre",
        ),
        0,
    )
    .unwrap();
    saelens::save(&sae, &wrong, serde_json::json!({})).unwrap();
    let out = glassbox(&[
        "graph",
        &m,
        PROMPT,
        "--dict",
        wrong.to_str().unwrap(),
        "--target",
        "a",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("384") && err.contains("64"), "{err}");
}
