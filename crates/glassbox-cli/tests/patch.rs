//! `glassbox patch` through the real binary on MiniLM: JSON report, SVG heat map, and a
//! clear error for prompts of different lengths.

mod common;
use common::glassbox;

#[test]
fn patch_reports_json_and_a_heat_map_and_refuses_unequal_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("patch.svg");
    let out = glassbox(&[
        "patch",
        "--model",
        "minilm",
        "--clean",
        "The cat sat on the mat.",
        "--corrupt",
        "The dog sat on the mat.",
        "--svg",
        svg.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = &v["report"];
    assert_eq!(r["tokens"].as_array().unwrap().len(), 9);
    assert_eq!(r["sweeps"].as_array().unwrap().len(), 4);
    // Layer 0 resid_pre: the changed token ("cat", position 2) carries the whole effect.
    let first = r["sweeps"][0]["effects"][0].as_array().unwrap();
    assert!((first[2].as_f64().unwrap() - 1.0).abs() < 1e-3, "{first:?}");
    let image = std::fs::read_to_string(&svg).unwrap();
    assert!(
        image.starts_with("<svg")
            && image.contains("head z")
            && image.matches("<rect").count() == 3 * 6 * 9 + 6 * 12
    );

    let out = glassbox(&[
        "patch",
        "--model",
        "minilm",
        "--clean",
        "The cat sat.",
        "--corrupt",
        "The big dog sat.",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1) && stderr.contains("same number of tokens"),
        "{stderr}"
    );
}
