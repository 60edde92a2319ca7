//! `glassbox._native.Catalog`: a feature catalog (SQLite directory or PostgreSQL). Records
//! cross as JSON text; `glassbox.Catalog` (Python) turns them into dicts and DataFrames.

use std::path::PathBuf;
use std::sync::Mutex;

use glassbox_store::catalog::search::SearchIndex;
use glassbox_store::catalog::{self, CatalogMeta, CatalogStore, INDEX_DIR};
use pyo3::prelude::*;

use crate::error;

#[pyclass(name = "Catalog", module = "glassbox._native", frozen)]
pub struct PyCatalog {
    store: Mutex<Box<dyn CatalogStore + Send>>,
    meta: CatalogMeta,
    dir: PathBuf,
}

impl PyCatalog {
    fn store(&self) -> std::sync::MutexGuard<'_, Box<dyn CatalogStore + Send>> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn json(v: &impl serde::Serialize) -> PyResult<String> {
    serde_json::to_string(v).map_err(error)
}

#[pymethods]
impl PyCatalog {
    /// Opens the catalog in directory `path`, or in the PostgreSQL database `store` (a
    /// `postgres://…` URL) with its search index in `path`.
    #[staticmethod]
    #[pyo3(signature = (path, store = None))]
    fn open(py: Python<'_>, path: PathBuf, store: Option<String>) -> PyResult<Self> {
        let (s, meta) = py
            .detach(|| catalog::open(&path, store.as_deref()))
            .map_err(error)?;
        Ok(Self {
            store: Mutex::new(s),
            meta,
            dir: path,
        })
    }

    /// What the catalog was built from (model, dictionary, hook, corpus, their hashes,
    /// tokens read), as JSON.
    fn meta_json(&self) -> PyResult<String> {
        json(&self.meta)
    }

    /// One line per feature (id, count, max, label, label_score, flags), as JSON.
    fn summaries_json(&self, py: Python<'_>) -> PyResult<String> {
        let rows = py.detach(|| self.store().summaries()).map_err(error)?;
        json(&rows)
    }

    /// Everything about one feature as JSON, or None if the catalog has no such feature.
    fn feature_json(&self, py: Python<'_>, id: u32) -> PyResult<Option<String>> {
        let f = py.detach(|| self.store().feature(id)).map_err(error)?;
        f.map(|f| json(&f)).transpose()
    }

    /// Full-text search over labels and contexts: `(id, score)`, best first.
    fn search(&self, py: Python<'_>, query: &str, limit: usize) -> PyResult<Vec<(u32, f32)>> {
        py.detach(|| {
            let store = self.store();
            SearchIndex::open(&self.dir.join(INDEX_DIR), store.as_ref())?.search(query, limit)
        })
        .map_err(error)
    }

    /// Features flagged for `concept`: `(id, score)`, highest first.
    fn flagged(&self, py: Python<'_>, concept: &str, limit: usize) -> PyResult<Vec<(u32, f32)>> {
        py.detach(|| self.store().flagged(concept, limit))
            .map_err(error)
    }

    /// Features that fire on `token`: `(id, contexts)`, most first.
    fn on_token(&self, py: Python<'_>, token: &str, limit: usize) -> PyResult<Vec<(u32, u32)>> {
        py.detach(|| self.store().features_on_token(token, limit))
            .map_err(error)
    }
}
