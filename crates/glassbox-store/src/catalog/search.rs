//! Full-text search over feature labels, top tokens and example contexts (tantivy, BM25).
//! The index lives in a directory beside the database and records the catalog generation it
//! was built from; a stale or missing index is rebuilt from the database before searching.

use std::path::{Path, PathBuf};

use tantivy::collector::TopDocs;
use tantivy::query::QueryParser;
use tantivy::schema::{Field, Schema, Value, FAST, INDEXED, STORED, TEXT};
use tantivy::{doc, Index, IndexReader, TantivyDocument};

use super::{CatalogStore, Feature};
use crate::error::{Result, StoreError};

const GENERATION: &str = "generation";

pub struct SearchIndex {
    index: Index,
    reader: IndexReader,
    id: Field,
    label: Field,
    text: Field,
}

fn schema() -> (Schema, Field, Field, Field) {
    let mut b = Schema::builder();
    let id = b.add_u64_field("id", INDEXED | STORED | FAST);
    let label = b.add_text_field("label", TEXT);
    let text = b.add_text_field("text", TEXT);
    (b.build(), id, label, text)
}

fn err(dir: &Path) -> impl Fn(tantivy::TantivyError) -> StoreError + '_ {
    move |e| StoreError::catalog_file(dir, format!("search index: {e}"))
}

/// What a feature is found by: its label, the tokens it fires on, and its contexts.
fn searchable_text(f: &Feature) -> String {
    let mut s = String::new();
    for (t, _) in &f.top_tokens {
        s.push_str(t);
        s.push(' ');
    }
    for e in &f.examples {
        s.push_str(&e.tokens.concat());
        s.push('\n');
    }
    s
}

impl SearchIndex {
    /// Opens the index in `dir`, (re)building it from `store` if it is missing or older than
    /// the catalog.
    pub fn open(dir: &Path, store: &dyn CatalogStore) -> Result<Self> {
        let generation = store.meta()?.map_or(0, |m| m.generation);
        let current = std::fs::read_to_string(dir.join(GENERATION))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        if current != Some(generation) {
            Self::build(dir, store, generation)?;
        }
        let index = Index::open_in_dir(dir).map_err(err(dir))?;
        let (_, id, label, text) = schema();
        let reader = index.reader().map_err(err(dir))?;
        Ok(Self {
            index,
            reader,
            id,
            label,
            text,
        })
    }

    /// Writes a fresh index into a temporary directory and swaps it into place.
    fn build(dir: &Path, store: &dyn CatalogStore, generation: u64) -> Result<()> {
        let parent = dir.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| StoreError::io(parent, e))?;
        let tmp = tempfile::Builder::new()
            .prefix(".index-")
            .tempdir_in(parent)
            .map_err(|e| StoreError::io(parent, e))?;
        let (schema, id, label, text) = schema();
        let index = Index::create_in_dir(tmp.path(), schema).map_err(err(dir))?;
        let mut writer = index.writer(64 << 20).map_err(err(dir))?;
        for f in store.features()? {
            writer
                .add_document(
                    doc!(id => f.id as u64, label => f.label.clone(), text => searchable_text(&f)),
                )
                .map_err(err(dir))?;
        }
        writer.commit().map_err(err(dir))?;
        writer.wait_merging_threads().map_err(err(dir))?;
        std::fs::write(tmp.path().join(GENERATION), generation.to_string())
            .map_err(|e| StoreError::io(tmp.path(), e))?;
        let old: PathBuf = parent.join(".index-old");
        let _ = std::fs::remove_dir_all(&old);
        if dir.exists() {
            std::fs::rename(dir, &old).map_err(|e| StoreError::io(dir, e))?;
        }
        std::fs::rename(tmp.keep(), dir).map_err(|e| StoreError::io(dir, e))?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }

    /// Feature ids matching `query` (words; `"quoted phrases"`, `AND`/`OR`, `label:x`), best
    /// first, with their BM25 scores. Labels count double.
    pub fn search(&self, query: &str, limit: usize) -> Result<Vec<(u32, f32)>> {
        let mut parser = QueryParser::for_index(&self.index, vec![self.label, self.text]);
        parser.set_field_boost(self.label, 2.0);
        let (q, _) = parser.parse_query_lenient(query);
        let searcher = self.reader.searcher();
        let hits = searcher
            .search(&q, &TopDocs::with_limit(limit.max(1)).order_by_score())
            .map_err(|e| StoreError::catalog_file(Path::new("search index"), e.to_string()))?;
        hits.into_iter()
            .map(|(score, addr)| {
                let d: TantivyDocument = searcher.doc(addr).map_err(|e| {
                    StoreError::catalog_file(Path::new("search index"), e.to_string())
                })?;
                let id = d.get_first(self.id).and_then(|v| v.as_u64()).unwrap_or(0);
                Ok((id as u32, score))
            })
            .collect()
    }
}
