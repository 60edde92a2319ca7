//! Catalog search latency on a large synthetic catalog (run through bench/catalog.sh):
//! full-text queries, token lookups and feature cards, p50/p99 over many queries. Labels and
//! contexts are words drawn from a Zipf distribution over a 20,000-word vocabulary (as word
//! frequencies in text are), queries from the same distribution.
//!   cargo bench -p glassbox-store --bench catalog -- [FEATURES]   (default 100000)

use std::time::Instant;

use glassbox_store::catalog::search::SearchIndex;
use glassbox_store::catalog::sqlite::SqliteCatalog;
use glassbox_store::catalog::{CatalogMeta, CatalogStore, Example, ExampleKind, Feature};
use rand::{Rng, SeedableRng};

const VOCAB: usize = 20_000;

/// A word of rank r ~ 1/r (Zipf), by inverting the harmonic CDF approximately.
fn zipf_word(rng: &mut impl Rng) -> String {
    let u: f64 = rng.random();
    let h = (VOCAB as f64).ln() + 0.5772;
    let rank = ((u * h).exp() - 0.5).clamp(1.0, VOCAB as f64) as usize;
    format!("w{rank}")
}

fn synthetic(n: usize) -> Vec<Feature> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut word = || zipf_word(&mut rng);
    (0..n as u32)
        .map(|id| {
            let examples = (0..8)
                .map(|_| Example {
                    kind: ExampleKind::Top,
                    activation: 1.0,
                    context: 0,
                    tokens: (0..12).map(|_| format!(" {}", word())).collect(),
                    acts: vec![0.5; 12],
                    focus: 6,
                    text: String::new(),
                    spans: Vec::new(),
                })
                .collect();
            Feature {
                id,
                count: 10,
                contexts: 5,
                sum: 10.0,
                max: 2.0,
                histogram: vec![0; 32],
                examples,
                top_tokens: (0..3).map(|_| (word(), 3)).collect(),
                label: format!("“{}” · “{}”", word(), word()),
                label_score: 0.5,
                ..Default::default()
            }
        })
        .collect()
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (at(0.5), at(0.99))
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteCatalog::open(&dir.path().join("catalog.db")).unwrap();
    let meta = CatalogMeta {
        model: "synthetic".into(),
        model_sha256: String::new(),
        dict: String::new(),
        dict_sha256: String::new(),
        hook: "blocks.0.hook_resid_pre".into(),
        d_sae: n,
        corpus: String::new(),
        corpus_sha256: String::new(),
        context_len: 128,
        contexts_done: 0,
        tokens: 1_000_000,
        generation: 0,
        vocab_effect: String::new(),
    };
    let t = Instant::now();
    store.save(&meta, &synthetic(n)).unwrap();
    let save_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let index = SearchIndex::open(&dir.path().join("index"), &store).unwrap();
    let index_s = t.elapsed().as_secs_f64();

    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let mut time = |f: &mut dyn FnMut(&mut rand::rngs::StdRng)| {
        (0..1000)
            .map(|_| {
                let t = Instant::now();
                f(&mut rng);
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect::<Vec<_>>()
    };
    let text = time(&mut |r| {
        let q = format!("{} {}", zipf_word(r), zipf_word(r));
        std::hint::black_box(index.search(&q, 20).unwrap());
    });
    let token = time(&mut |r| {
        std::hint::black_box(store.features_on_token(&zipf_word(r), 20).unwrap());
    });
    let card = time(&mut |r| {
        std::hint::black_box(store.feature(r.random_range(0..n as u32)).unwrap());
    });
    println!(
        "catalog of {n} synthetic features: saved in {save_s:.1} s, indexed in {index_s:.1} s"
    );
    println!(
        "{:<34}{:>10}{:>10}",
        "query (1000 each)", "p50 ms", "p99 ms"
    );
    for (name, v) in [
        ("full text, 2 words, top 20", text),
        ("--token, top 20", token),
        ("feature card by id", card),
    ] {
        let (p50, p99) = percentiles(v);
        println!("{name:<34}{p50:>10.3}{p99:>10.3}");
    }
}
