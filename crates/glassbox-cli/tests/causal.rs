//! The causal-tracing commands through the real binary on the tiny GPT-2 fixture: logit lens,
//! direct logit attribution, induction scores, attribution patching and attribution graphs
//! (JSON, HTML), and their refusals.

mod common;
use common::{glassbox, ok_json};
use std::path::{Path, PathBuf};

use glassbox_analysis::heads::induction_scores;
use glassbox_analysis::lens::{logit_lens, single_token};
use glassbox_analysis::patching::{attribute, Component, Direction, Metric};
use glassbox_dictionary::{saelens, Activation, DictConfig, Sae};
use glassbox_model::{Device, Model};

fn gpt2() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../glassbox-model/tests/fixtures/tiny-gpt2")
        .to_string_lossy()
        .into_owned()
}

const PROMPT: &str = "Interpretability research asks";

fn model() -> Model {
    Model::load(Path::new(&gpt2()), &Device::Cpu).unwrap()
}

#[test]
fn lens_dla_and_induction_report_json() {
    let m = gpt2();
    let v = ok_json(&["lens", &m, PROMPT, "--json", "--target", "a", "--top", "3"]);
    let lens = &v["lens"];
    // The CLI reports what the library computes: top-3 ids and probabilities at every layer and
    // position, and the target's rank counted on the logits.
    let model = model();
    let ids = model.tokenize(PROMPT, false).unwrap();
    let target = single_token(&model, "a").unwrap();
    let lib = logit_lens(&model, &ids).unwrap();
    let table = lib.table(&model, &ids, 3, Some(target)).unwrap();
    let logits: Vec<Vec<Vec<f32>>> = lib.logits.to_vec3().unwrap();
    assert_eq!(lens["labels"].as_array().unwrap().len(), 3); // 2 layers + final
    assert_eq!(table.top.len(), 3);
    for (l, per_pos) in table.top.iter().enumerate() {
        assert_eq!(per_pos.len(), ids.len());
        for (p, preds) in per_pos.iter().enumerate() {
            let cli = lens["top"][l][p].as_array().unwrap();
            assert_eq!(cli.len(), 3);
            for (c, ours) in cli.iter().zip(preds) {
                assert_eq!(
                    c["id"].as_u64().unwrap() as u32,
                    ours.id,
                    "layer {l} pos {p}"
                );
                assert!((c["prob"].as_f64().unwrap() as f32 - ours.prob).abs() < 1e-6);
            }
            // Independently: the rank is one more than the number of larger logits.
            let row = &logits[l][p];
            let expected = 1 + row.iter().filter(|&&x| x > row[target as usize]).count();
            assert_eq!(
                lens["target"]["rank"][l][p].as_u64().unwrap() as usize,
                expected,
                "rank at layer {l} pos {p}"
            );
            // And the top prediction is the arg-max of the logits.
            let argmax = (0..row.len())
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap();
            assert_eq!(preds[0].id as usize, argmax);
        }
    }
    // The target is not the top prediction everywhere, so the ranks are not all 1.
    assert!(
        lens["target"]["rank"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap())
            .any(|r| r.as_u64().unwrap() > 1),
        "{lens}"
    );

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
    let lib = induction_scores(&model, 20, 2, 0).unwrap();
    for (kind, expected) in [
        ("induction", &lib.induction),
        ("previous_token", &lib.previous_token),
    ] {
        let cli = v["scores"][kind].as_array().unwrap();
        assert_eq!(cli.len(), 2, "{kind}: one row per layer");
        for (row, exp) in cli.iter().zip(expected) {
            let row = row.as_array().unwrap();
            assert_eq!(row.len(), 4, "{kind}: one score per head");
            for (c, e) in row.iter().zip(exp) {
                assert!((c.as_f64().unwrap() as f32 - e).abs() < 1e-6, "{kind}");
                assert!(
                    (0.0..=1.0).contains(e),
                    "{kind}: a score is an attention mass"
                );
            }
        }
    }

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
    // The CLI's effects are the library's on the same prompts.
    let model = model();
    let (clean, corrupt) = (
        model.tokenize("the cat", false).unwrap(),
        model.tokenize("the hat", false).unwrap(),
    );
    let metric = Metric::parse("logit-diff a b", &model).unwrap();
    let lib = attribute(
        &model,
        &clean,
        &corrupt,
        &metric,
        Direction::Denoise,
        &Component::ALL,
    )
    .unwrap();
    let sweeps = v["report"]["sweeps"].as_array().unwrap();
    assert_eq!(sweeps.len(), lib.sweeps.len());
    let mut nonzero = 0;
    for (cli, ours) in sweeps.iter().zip(&lib.sweeps) {
        let rows = cli["effects"].as_array().unwrap();
        assert_eq!(rows.len(), ours.effects.len());
        for (row, exp) in rows.iter().zip(&ours.effects) {
            let row = row.as_array().unwrap();
            assert_eq!(row.len(), exp.len());
            for (c, e) in row.iter().zip(exp) {
                assert!((c.as_f64().unwrap() as f32 - e).abs() <= 1e-5 * e.abs().max(1.0));
                nonzero += usize::from(e.abs() > 1e-6);
            }
        }
    }
    assert!(nonzero > 0, "some component must matter");
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
    // The same request gives the same graph, node numbering included.
    let again = dir.path().join("again.json");
    let out = glassbox(&[
        "graph",
        &m,
        PROMPT,
        "--dict",
        d0.to_str().unwrap(),
        "--dict",
        d1.to_str().unwrap(),
        "--target",
        "a",
        "--out",
        again.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert!(
        std::fs::read(&json).unwrap() == std::fs::read(&again).unwrap(),
        "a graph must not depend on the run"
    );
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
