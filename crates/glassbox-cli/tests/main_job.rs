//! `scripts/main` end to end at a small scale (MiniLM, 16 k harvested tokens, 8 training steps,
//! a 6 k-token catalog of the full 16,384 features), then every next step it prints and the
//! README's tested catalog block, run verbatim by a shell (`cargo glassbox` stands for the
//! built binary, `glassbox-work` for this run's work directory).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `script` with bash (`-euo pipefail`) in `cwd`; panics with its output on failure.
fn sh(script: &str, cwd: &Path) -> String {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(cwd)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "`{script}` failed:\n{stdout}\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stdout.into_owned()
}

#[test]
fn the_main_job_and_every_command_it_and_the_readme_suggest() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let program = env!("CARGO_BIN_EXE_glassbox");
    let out = Command::new(repo().join("scripts/main"))
        .arg(&work)
        .env("GLASSBOX_BIN", program)
        .env("TOKENS", "16000")
        .env("STEPS", "8")
        .env("CATALOG_TOKENS", "6000")
        .env("HELDOUT_TOKENS", "4000")
        .env("K", "16")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/main failed:\n{stdout}\n{stderr}"
    );
    // Off a terminal, the long steps still report progress as plain lines.
    assert!(stderr.contains("harvest (tokens):"), "{stderr}");
    assert!(stderr.contains("train (steps):"), "{stderr}");
    // It ends with the wall time per step, and one set of next steps.
    let tail = stdout
        .split("\nDone in ")
        .nth(1)
        .unwrap_or_else(|| panic!("no summary:\n{stdout}"));
    for step in ["harvest", "train", "evaluate", "catalog", "export"] {
        assert!(
            tail.lines().any(|l| l.contains(" s  ") && l.contains(step)),
            "no time for {step}:\n{tail}"
        );
    }
    assert_eq!(stdout.matches("look at it with:").count(), 1, "{stdout}");
    let site = work.join("site/index.html");
    assert!(
        tail.contains(&format!("open {}", site.display())) && site.exists(),
        "{tail}"
    );
    let steps: Vec<&str> = tail
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with(&format!("{program} ")))
        .collect();
    assert!(steps.len() >= 3, "{tail}");
    let elsewhere = tempfile::tempdir().unwrap();
    for step in &steps {
        sh(step, elsewhere.path());
    }

    // The README's tested block, as a user pastes it into a shell at the repository root
    // (here a scratch directory, so nothing is written into the checkout).
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let block = readme
        .split("<!-- tested: after scripts/main -->\n```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("the README's tested block");
    let script = block
        .replace("cargo glassbox", program)
        .replace("glassbox-work", &work.to_string_lossy());
    let printed = sh(&script, elsewhere.path());
    assert!(
        printed.contains("feature 2050") && elsewhere.path().join("site/index.html").exists(),
        "{printed}"
    );
}
