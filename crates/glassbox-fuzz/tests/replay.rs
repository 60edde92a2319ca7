//! Every fuzz target over its seeds, its minimised corpus and every input that once crashed it
//! (`fuzz/seeds`, `fuzz/corpus`, `fuzz/regressions`): on stable Rust, in seconds, so that a
//! regression fails the test suite and not only a fuzzing run.

use std::path::PathBuf;

use glassbox_fuzz::{fuzz_dir, TARGETS};

fn inputs(target: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for kind in ["seeds", "corpus", "regressions"] {
        if let Ok(dir) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) {
            files.extend(dir.flatten().map(|e| e.path()).filter(|p| p.is_file()));
        }
    }
    files.sort();
    files
}

#[test]
fn every_target_survives_its_corpus_and_past_crashes() {
    let mut total = 0;
    for (name, target) in TARGETS {
        let files = inputs(name);
        assert!(
            !files.is_empty(),
            "fuzz target `{name}` has no seeds: run `cargo run -p glassbox-fuzz --example write_seeds`"
        );
        for file in &files {
            // (A running fuzzer may be rewriting its corpus: a file gone since listed is skipped.)
            let data = match std::fs::read(file) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                r => r.unwrap(),
            };
            if std::env::var_os("GLASSBOX_REPLAY_VERBOSE").is_some() {
                eprintln!("{name}: {}", file.display());
            }
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name} panicked on {}", file.display());
        }
        total += files.len();
    }
    eprintln!("{total} inputs replayed over {} targets", TARGETS.len());
}

#[test]
fn every_target_has_a_libfuzzer_entry() {
    for (name, _) in TARGETS {
        let path = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|_| panic!("{} is missing", path.display()));
        // It must run the target of its own name.
        assert!(
            text.contains(&format!("*name == \"{name}\"")),
            "{} does not run `{name}`",
            path.display()
        );
    }
}
