//! How many texts of each corpus trip the deployments' text rules, `lookalikes > 2` and
//! `encoded > 1` (the `disguise` and `encoded` monitors): a check of those rules on text they
//! were not written against, with no model. Each argument is a corpus as `harvest` reads it (a
//! file or a directory of .txt, .jsonl or .parquet, optionally .gz).
//!
//! ```bash
//! cargo run --release -p glassbox-serve --example text_signals -- \
//!     ~/.cache/glassbox/corpora/debian-docs ~/.cache/glassbox/data/redteam/requests.jsonl
//! ```

use std::path::PathBuf;

use glassbox_serve::config::InputConfig;
use glassbox_store::corpus::{self, Documents};

fn main() {
    let paths: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if paths.is_empty() {
        eprintln!("usage: text_signals CORPUS... (files or directories of .txt, .jsonl, .parquet)");
        std::process::exit(2);
    }
    println!(
        "{:<48} {:>7} {:>15} {:>12}",
        "corpus", "texts", "lookalikes > 2", "encoded > 1"
    );
    for path in &paths {
        if let Err(e) = report(path) {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

fn report(path: &std::path::Path) -> glassbox_store::Result<()> {
    for file in corpus::files(path)? {
        let (mut texts, mut disguised, mut encoded) = (0usize, 0usize, 0usize);
        for text in Documents::open(&file)? {
            let signals = InputConfig::default().prepare(&text?).signals;
            texts += 1;
            disguised += usize::from(signals.lookalikes > 2);
            encoded += usize::from(signals.encoded > 1);
        }
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        println!("{name:<48} {texts:>7} {disguised:>15} {encoded:>12}");
    }
    Ok(())
}
