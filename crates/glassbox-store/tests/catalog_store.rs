//! One contract for every catalog backend: SQLite always, PostgreSQL (an ignored test that
//! scripts/test includes) on the server GLASSBOX_TEST_POSTGRES names.

use glassbox_store::catalog::postgres::PgCatalog;
use glassbox_store::catalog::sqlite::SqliteCatalog;
use glassbox_store::catalog::{CatalogMeta, CatalogStore, Example, ExampleKind, Feature, Flag};

fn meta() -> CatalogMeta {
    CatalogMeta {
        model: "m".into(),
        model_sha256: "aa".into(),
        dict: "d".into(),
        dict_sha256: "bb".into(),
        hook: "blocks.0.hook_resid_pre".into(),
        d_sae: 3,
        corpus: "c".into(),
        corpus_sha256: "cc".into(),
        context_len: 128,
        contexts_done: 7,
        tokens: 882,
        generation: 0,
        vocab_effect: "embedding".into(),
    }
}

fn feature(id: u32, token: &str, count: u32, flag: Option<(&str, f32)>) -> Feature {
    Feature {
        id,
        count: 10 + id as u64,
        contexts: 3,
        sum: 12.5,
        max: 2.5,
        histogram: vec![1; 32],
        examples: vec![Example {
            kind: ExampleKind::Top,
            activation: 2.5,
            context: 4,
            tokens: vec![" Grüße".into(), token.into()],
            acts: vec![0.0, 2.5],
            focus: 1,
            text: format!("Grüße{token}"),
            spans: vec![(0, 7), (7, 7 + token.len() as u32)],
        }],
        top_tokens: vec![(token.into(), count)],
        promoted: vec![(" cat".into(), 0.5)],
        label: format!("“{}”", token.trim()),
        label_score: 0.75,
        label_method: "test".into(),
        flags: flag
            .map(|(c, s)| {
                vec![Flag {
                    concept: c.into(),
                    score: s,
                    evidence: "e".into(),
                }]
            })
            .unwrap_or_default(),
        ..Default::default()
    }
}

fn contract(store: &mut dyn CatalogStore, reopen: &dyn Fn() -> Box<dyn CatalogStore>) {
    assert_eq!(store.meta().unwrap(), None);
    assert!(store.features().unwrap().is_empty());
    let features = vec![
        feature(0, " The", 5, Some(("pii", 0.6))),
        feature(1, "the", 9, Some(("pii", 0.9))),
        feature(2, "##ing", 2, None),
    ];
    assert_eq!(store.save(&meta(), &features).unwrap(), 1);
    let stored = store.meta().unwrap().unwrap();
    assert_eq!(
        stored,
        CatalogMeta {
            generation: 1,
            ..meta()
        }
    );
    assert_eq!(store.features().unwrap(), features);
    assert_eq!(store.feature(1).unwrap().as_ref(), Some(&features[1]));
    assert_eq!(store.feature(99).unwrap(), None);
    assert_eq!(
        store.features_on_token("THE", 10).unwrap(),
        vec![(1, 9), (0, 5)]
    );
    assert_eq!(store.features_on_token("ing", 10).unwrap(), vec![(2, 2)]);
    assert_eq!(store.flagged("pii", 1).unwrap(), vec![(1, 0.9)]);
    assert!(store.flagged("violence", 10).unwrap().is_empty());

    // A second save replaces everything.
    let fewer = vec![feature(0, "cat", 1, None)];
    assert_eq!(store.save(&meta(), &fewer).unwrap(), 2);
    assert_eq!(store.features().unwrap(), fewer);
    assert!(store.features_on_token("the", 10).unwrap().is_empty());
    assert!(store.flagged("pii", 10).unwrap().is_empty());

    // Reopening (migrations already applied) sees the same catalog.
    let again = reopen();
    assert_eq!(again.meta().unwrap().unwrap().generation, 2);
    assert_eq!(again.features().unwrap(), fewer);
}

#[test]
fn sqlite_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.db");
    let mut store = SqliteCatalog::open(&path).unwrap();
    contract(&mut store, &|| {
        Box::new(SqliteCatalog::open(&path).unwrap())
    });

    // A catalog from a newer Glassbox is refused, not migrated backwards: user_version is
    // the big-endian u32 at byte 60 of the SQLite header.
    drop(store);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[60..64].copy_from_slice(&99u32.to_be_bytes());
    std::fs::write(&path, bytes).unwrap();
    let err = SqliteCatalog::open(&path).err().unwrap().to_string();
    assert!(err.contains("newer"), "{err}");
}

/// A build creating a catalog while a reader polls for it: each opener migrates a new file,
/// and none may fail because another created the tables first (the kill test in
/// glassbox-cli/tests/catalog.rs failed on "table meta already exists").
#[test]
fn sqlite_files_opened_by_many_at_once_are_migrated_once() {
    for round in 0..50 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        let start = std::sync::Barrier::new(6);
        std::thread::scope(|s| {
            let openers: Vec<_> = (0..6)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        SqliteCatalog::open(&path).map(|c| c.meta().unwrap())
                    })
                })
                .collect();
            for opener in openers {
                let opened = opener.join().unwrap();
                assert!(
                    matches!(opened, Ok(None)),
                    "round {round}: {:?}",
                    opened.err()
                );
            }
        });
    }
}

/// Needs a server: a plain `cargo test` lists it as ignored; scripts/test runs it (with
/// `--include-ignored`) beside the throwaway server of scripts/with-postgres.
#[test]
#[ignore = "needs PostgreSQL: run through scripts/with-postgres (scripts/test does)"]
fn postgres_keeps_the_contract() {
    let base = std::env::var("GLASSBOX_TEST_POSTGRES")
        .expect("GLASSBOX_TEST_POSTGRES is not set: run through scripts/with-postgres");
    // A database of its own, so runs never see each other's tables.
    let db = format!("glassbox_test_{}", std::process::id());
    let mut admin = postgres::Client::connect(&base, postgres::NoTls).unwrap();
    for sql in [
        format!("DROP DATABASE IF EXISTS {db}"),
        format!("CREATE DATABASE {db}"),
    ] {
        admin.batch_execute(&sql).unwrap();
    }
    let url = format!("{base} dbname={db}");
    let mut store = PgCatalog::open(&url).unwrap();
    contract(&mut store, &|| Box::new(PgCatalog::open(&url).unwrap()));
    drop(store);
    admin.batch_execute(&format!("DROP DATABASE {db}")).unwrap();

    let err = PgCatalog::open("host=/nonexistent user=nobody password=hunter2")
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("cannot connect") && !err.contains("hunter2"),
        "{err}"
    );
}
