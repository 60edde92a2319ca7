//! Catalog builds on the tiny GPT-2 fixture with the project's README as corpus: statistics
//! equal a direct recount, examples are consistent, an extended build equals a straight one,
//! and a catalog refuses another dictionary.

use std::path::{Path, PathBuf};

use glassbox_analysis::catalog::{build, BuildConfig, Sources};
use glassbox_dictionary::{saelens, Activation, DictConfig, Sae};
use glassbox_model::{Device, Hooks, Model};
use glassbox_store::activations::ActivationStore;
use glassbox_store::catalog::search::SearchIndex;
use glassbox_store::catalog::sqlite::{normalise_token, SqliteCatalog};
use glassbox_store::catalog::{CatalogStore, ExampleKind, Feature};
use glassbox_store::harvest::{harvest, Contexts, HarvestConfig};

const HOOK: &str = "blocks.1.hook_resid_pre";

fn model() -> Model {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../glassbox-model/tests/fixtures/tiny-gpt2");
    Model::load(&dir, &Device::Cpu).unwrap()
}

fn corpus(dir: &Path) -> PathBuf {
    let path = dir.join("readme.txt");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"),
        &path,
    )
    .unwrap();
    path
}

/// A TopK dictionary over the tiny model's residual stream, saved as the CLI would.
fn dictionary(dir: &Path, seed: u64) -> (Sae, PathBuf) {
    let sae = Sae::init(
        DictConfig::sae(Activation::TopK { k: 4 }, 64, 128, "tiny-gpt2", HOOK),
        seed,
    )
    .unwrap();
    let path = dir.join(format!("dict-{seed}"));
    saelens::save(&sae, &path, serde_json::Value::Null).unwrap();
    (saelens::load(&path).unwrap(), path)
}

fn config(tokens: usize) -> BuildConfig {
    BuildConfig {
        tokens,
        context_len: 32,
        batch: 4,
        top: 3,
        samples: 4,
        window: 3,
        effects: 5,
        save_every: 8,
        seed: 1,
        taxonomy: None,
    }
}

fn run(
    db: &Path,
    model: &Model,
    sae: &Sae,
    dict: &Path,
    corpus: &Path,
    tokens: usize,
    acts: Option<&ActivationStore>,
) -> glassbox_analysis::Result<Vec<Feature>> {
    let mut store = SqliteCatalog::open(db).unwrap();
    let src = Sources {
        model,
        model_name: "tiny-gpt2",
        sae,
        dict_dir: dict,
        corpus,
        acts,
    };
    build(&mut store, &src, &config(tokens), &mut |_, _| {})?;
    Ok(store.features().unwrap())
}

#[test]
fn statistics_match_a_direct_recount_and_builds_extend() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, corpus) = (model(), corpus(tmp.path()));
    let (sae, dict) = dictionary(tmp.path(), 7);
    let db = tmp.path().join("a/catalog.db");
    let features = run(&db, &m, &sae, &dict, &corpus, 2000, None).unwrap();
    assert_eq!(features.len(), 128);

    // Recount: the same contexts through the model and the dictionary.
    let store = SqliteCatalog::open(&db).unwrap();
    let meta = store.meta().unwrap().unwrap();
    assert!(meta.tokens >= 2000 && meta.contexts_done * 32 == meta.tokens as usize);
    let hook = m.hook_point(HOOK).unwrap();
    let mut counts = vec![0u64; 128];
    let mut max = vec![0f32; 128];
    for ctx in Contexts::new(&m, &corpus, 32)
        .unwrap()
        .take(meta.contexts_done)
    {
        let mut hooks = Hooks::none().record(hook);
        m.forward(&m.batch_ids(&[ctx.unwrap()]).unwrap(), &mut hooks, None)
            .unwrap();
        let x: Vec<f32> = hooks
            .cache()
            .get(&hook)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for row in sae.encode(&x).unwrap().rows {
            for (j, v) in row {
                counts[j as usize] += 1;
                max[j as usize] = max[j as usize].max(v);
            }
        }
    }
    for f in &features {
        assert_eq!(f.count, counts[f.id as usize], "feature {}", f.id);
        assert!((f.max - max[f.id as usize]).abs() < 1e-4 * max[f.id as usize].max(1.0));
        assert_eq!(f.histogram.iter().sum::<u64>(), f.count);
        if f.count > 0 {
            let top = &f.examples[0];
            assert_eq!(top.kind, ExampleKind::Top);
            assert_eq!(top.activation, f.max, "the first example is the maximum");
            for e in &f.examples {
                assert_eq!(e.acts[e.focus], e.activation, "the peak is at the focus");
                assert!(e.acts.iter().all(|&a| a <= e.activation));
            }
            assert!(!f.label.is_empty() && f.label_score > 0.0);
            assert_eq!(f.promoted.len(), 5);
            assert_eq!(f.neighbours.len(), 5);
        }
    }
    assert!(features.iter().filter(|f| f.count > 0).count() > 64);

    // Built in two steps: the same statistics and top examples.
    let db2 = tmp.path().join("b/catalog.db");
    run(&db2, &m, &sae, &dict, &corpus, 1000, None).unwrap();
    let extended = run(&db2, &m, &sae, &dict, &corpus, 2000, None).unwrap();
    for (a, b) in features.iter().zip(&extended) {
        assert_eq!(
            (a.count, a.contexts, a.max, &a.histogram),
            (b.count, b.contexts, b.max, &b.histogram)
        );
        assert!((a.sum - b.sum).abs() < 1e-6 * a.sum.abs().max(1.0));
        let tops = |f: &Feature| -> Vec<(u64, f32)> {
            f.examples
                .iter()
                .filter(|e| e.kind == ExampleKind::Top)
                .map(|e| (e.context, e.activation))
                .collect()
        };
        assert_eq!(tops(a), tops(b));
    }

    // Another dictionary cannot extend this catalog, and the catalog is left as it was.
    let (other, other_dir) = dictionary(tmp.path(), 8);
    let err = run(&db, &m, &other, &other_dir, &corpus, 3000, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("another dictionary"), "{err}");
    assert_eq!(
        SqliteCatalog::open(&db).unwrap().meta().unwrap().unwrap(),
        meta
    );
}

#[test]
fn search_finds_features_by_context_words_tokens_and_similarity() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, corpus) = (model(), corpus(tmp.path()));
    let (sae, dict) = dictionary(tmp.path(), 3);
    let db = tmp.path().join("cat/catalog.db");
    let features = run(&db, &m, &sae, &dict, &corpus, 1500, None).unwrap();
    let store = SqliteCatalog::open(&db).unwrap();
    let index = SearchIndex::open(&tmp.path().join("cat/index"), &store).unwrap();
    // A word from the README that must be in some feature's contexts.
    let hits = index.search("model", 10).unwrap();
    assert!(!hits.is_empty());
    for (id, _) in &hits {
        let f = &features[*id as usize];
        let text: String = f
            .examples
            .iter()
            .flat_map(|e| e.tokens.clone())
            .collect::<String>()
            + &f.top_tokens.iter().map(|t| t.0.clone()).collect::<String>();
        assert!(
            text.to_lowercase().contains("model"),
            "feature {id} matched without the word"
        );
    }
    // By token: the feature is found, and every hit lists the token among its peak tokens.
    let f = features.iter().find(|f| !f.top_tokens.is_empty()).unwrap();
    let token = f.top_tokens[0].0.clone();
    let on = store.features_on_token(&token, 50).unwrap();
    assert!(on.iter().any(|(j, _)| *j == f.id), "{token:?}: {on:?}");
    // (Search ignores case, word-piece marks and surrounding space: ` L` and `l` are one key.)
    let key = normalise_token(&token);
    for (j, count) in &on {
        let listed = features[*j as usize]
            .top_tokens
            .iter()
            .any(|t| normalise_token(&t.0) == key && t.1 == *count);
        assert!(listed, "feature {j} does not list {token:?} ({count})");
    }
    // By similarity: each feature's stored neighbours are the nearest decoder directions by
    // brute-force cosine (itself left out), in order.
    let d = sae.d_in();
    let row = |i: usize| &sae.w_dec[i * d..(i + 1) * d];
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let cosine = |i: usize, j: usize| {
        let dot: f32 = row(i).iter().zip(row(j)).map(|(a, b)| a * b).sum();
        dot / (norm(row(i)) * norm(row(j)))
    };
    assert_eq!(features.len(), sae.d_sae());
    for f in &features {
        let i = f.id as usize;
        let mut all: Vec<(usize, f32)> = (0..sae.d_sae())
            .filter(|&j| j != i)
            .map(|j| (j, cosine(i, j)))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1));
        assert_eq!(f.neighbours.len(), 5, "feature {i}");
        for ((j, c), (bj, bc)) in f.neighbours.iter().zip(&all) {
            assert!((c - bc).abs() < 1e-5, "feature {i}: cosine {c} vs {bc}");
            assert!(
                *j as usize == *bj || (cosine(i, *j as usize) - bc).abs() < 1e-5,
                "feature {i}: neighbour {j} vs {bj}"
            );
        }
    }
    // A nonsense word finds nothing.
    assert!(index.search("zzqxjv", 10).unwrap().is_empty());
}

/// A harvest of the same model, hook, corpus and context length stands in for the forward
/// pass over the contexts it holds (the model takes over after them); the counts agree up to
/// the f16 rounding of the stored rows. A harvest cut into other contexts is refused.
#[test]
fn a_harvest_stands_in_for_the_forward_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, corpus) = (model(), corpus(tmp.path()));
    let (sae, dict) = dictionary(tmp.path(), 7);
    let harvested = |context_len: usize, dir: &str| {
        let cfg = HarvestConfig {
            hook: m.hook_point(HOOK).unwrap(),
            target: None,
            tokens: 1200,
            context_len,
            batch: 4,
            shard_rows: 256,
        };
        let out = tmp.path().join(dir);
        harvest(&m, "tiny-gpt2", &corpus, &out, &cfg, &mut |_, _| {}).unwrap();
        ActivationStore::open(&out).unwrap()
    };
    let build = |db: &str, acts: Option<&ActivationStore>| {
        let db = tmp.path().join(db).join("catalog.db");
        run(&db, &m, &sae, &dict, &corpus, 2000, acts)
    };
    let store = harvested(32, "acts");
    let plain = build("a", None).unwrap();
    let reused = build("b", Some(&store)).unwrap();
    let total: u64 = plain.iter().map(|f| f.count).sum();
    let differ: u64 = plain
        .iter()
        .zip(&reused)
        .map(|(a, b)| a.count.abs_diff(b.count))
        .sum();
    assert!(
        total > 0 && differ * 100 <= total,
        "{differ} of {total} counts differ"
    );
    assert!(
        plain
            .iter()
            .zip(&reused)
            .filter(|(a, b)| a.max > 0.0 && (a.max - b.max).abs() < 1e-2 * a.max)
            .count()
            * 10
            >= plain.iter().filter(|f| f.max > 0.0).count() * 9
    );

    let other = harvested(16, "acts16");
    let err = build("c", Some(&other)).unwrap_err().to_string();
    assert!(
        err.contains("contexts of 16 tokens") && err.contains("without this harvest"),
        "{err}"
    );
}
