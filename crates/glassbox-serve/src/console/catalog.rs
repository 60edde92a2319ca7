//! The catalog browser: search as you type over labels, contexts and tokens (the catalog's
//! tantivy index), filters by flag, density and dictionary, and a page per feature with its
//! highlighted contexts, activation histogram, vocabulary effects, neighbours and flags.
//!
//! Each catalog's listing lines are held in memory (a 100k-feature catalog is a few MB) and
//! reloaded when a rebuild bumps its generation; a feature page reads one row.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use glassbox_store::catalog::search::SearchIndex;
use glassbox_store::catalog::{
    self, histogram_edge, readable_token, CatalogMeta, CatalogStore, Example, Feature,
    FeatureSummary, DB_FILE, VOCAB_EMBEDDING,
};
use maud::{html, Markup};
use serde::Deserialize;

use super::page::{self, thousands};
use crate::auth::Role;
use crate::config::CatalogRef;
use crate::error::{Result, ServeError};
use crate::server::AppState;

/// Result rows a search page shows.
const PAGE_ROWS: usize = 100;
/// Index hits a query reads before filters apply.
const SEARCH_HITS: usize = 5_000;

struct Loaded {
    meta: CatalogMeta,
    summaries: Arc<Vec<FeatureSummary>>,
    index: Arc<SearchIndex>,
}

/// A store the console reads from any thread (SQLite file or PostgreSQL).
type Store = Box<dyn CatalogStore + Send>;

pub struct Catalog {
    pub name: String,
    /// Where its search index lives (and, without a `store` URL, its catalog.db).
    dir: PathBuf,
    /// The hook its dictionary reads, as of start-up (graph nodes link by it).
    hook: String,
    /// Blocking reads (PostgreSQL's client runs its own runtime): only from blocking threads.
    store: Mutex<Store>,
    loaded: Mutex<Option<Loaded>>,
}

/// The catalogs the console browses (`[[console.catalog]]` in deploy.toml).
pub struct Catalogs(pub Vec<Catalog>);

impl Catalogs {
    /// Opens each catalog and its search index (building a missing or stale index). Call it
    /// outside an async runtime, or on a blocking thread.
    pub fn open(refs: &[CatalogRef]) -> Result<Catalogs> {
        let list = refs
            .iter()
            .map(|r| {
                if r.store.is_none() && !r.path.join(DB_FILE).is_file() {
                    return Err(ServeError::Config(format!(
                        "console catalog `{}`: no catalog at {} (build one with `glassbox catalog build --catalog {}`)",
                        r.name,
                        r.path.join(DB_FILE).display(),
                        r.path.display()
                    )));
                }
                let store: Store = catalog::connect(&r.path, r.store.as_deref())
                    .map_err(|e| ServeError::Config(format!("console catalog `{}`: {e}", r.name)))?;
                let mut c = Catalog {
                    name: r.name.clone(),
                    dir: r.path.clone(),
                    hook: String::new(),
                    store: Mutex::new(store),
                    loaded: Mutex::new(None),
                };
                c.hook = c.current()?.0.hook;
                Ok(c)
            })
            .collect::<Result<_>>()?;
        Ok(Catalogs(list))
    }

    fn get(&self, name: &str) -> Option<&Catalog> {
        self.0.iter().find(|c| c.name == name)
    }
}

impl Catalog {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Meta, listing and index of the catalog as it is now (reloaded after a rebuild).
    fn current(&self) -> Result<(CatalogMeta, Arc<Vec<FeatureSummary>>, Arc<SearchIndex>)> {
        let store = self.store();
        let meta = store.meta()?.ok_or_else(|| {
            ServeError::Config(format!("console catalog `{}` is empty", self.name))
        })?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded
            .as_ref()
            .is_none_or(|l| l.meta.generation != meta.generation)
        {
            let index = SearchIndex::open(&self.dir.join(catalog::INDEX_DIR), store.as_ref())?;
            *loaded = Some(Loaded {
                meta: meta.clone(),
                summaries: Arc::new(store.summaries()?),
                index: Arc::new(index),
            });
        }
        let l = loaded
            .as_ref()
            .ok_or_else(|| ServeError::Io("catalog not loaded".into()))?;
        Ok((l.meta.clone(), l.summaries.clone(), l.index.clone()))
    }

    fn feature(&self, id: u32) -> Result<Option<Feature>> {
        Ok(self.store().feature(id)?)
    }
}

#[derive(Deserialize, Default)]
pub struct SearchParams {
    #[serde(default)]
    q: String,
    #[serde(default)]
    catalog: String,
    #[serde(default)]
    flag: String,
    /// Density bounds in percent of tokens (empty: none).
    #[serde(default)]
    min_density: String,
    #[serde(default)]
    max_density: String,
}

/// Parses an optional percentage field; a bad one is named.
fn percent(field: &str, v: &str) -> std::result::Result<Option<f64>, String> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    match v.parse::<f64>() {
        Ok(x) if (0.0..=100.0).contains(&x) => Ok(Some(x / 100.0)),
        _ => Err(format!(
            "{field} must be a percentage from 0 to 100, not `{v}`"
        )),
    }
}

struct Hits {
    catalog: String,
    tokens: u64,
    rows: Vec<(FeatureSummary, Option<f32>)>,
    total: usize,
    flags: Vec<String>,
}

fn search(state: &AppState, p: &SearchParams) -> std::result::Result<Hits, page::Refusal> {
    let cats = &state.catalogs.0;
    let Some(cat) = (if p.catalog.is_empty() {
        cats.first()
    } else {
        state.catalogs.get(&p.catalog)
    }) else {
        return Err(Box::new(if cats.is_empty() {
            page::error(
                StatusCode::NOT_FOUND,
                "No catalog",
                "This server has no catalog to browse: add `[[console.catalog]] name = \"l3\"  path = \"glassbox-work/catalog\"` to deploy.toml and restart.",
            )
        } else {
            page::error(
                StatusCode::NOT_FOUND,
                "No such catalog",
                &format!("There is no catalog named `{}`.", p.catalog),
            )
        }));
    };
    let bad = |m: String| Box::new(page::error(StatusCode::BAD_REQUEST, "Bad filter", &m));
    let lo = percent("minimum density", &p.min_density).map_err(bad)?;
    let hi = percent("maximum density", &p.max_density).map_err(bad)?;
    if p.q.len() > 1_000 {
        return Err(bad("a search of at most 1,000 characters, please".into()));
    }
    let (meta, summaries, index) = cat.current().map_err(|e| Box::new(internal(e)))?;
    let mut flags: Vec<String> = summaries
        .iter()
        .flat_map(|s| s.flags.iter().cloned())
        .collect();
    flags.sort();
    flags.dedup();
    let keep = |s: &FeatureSummary| {
        let d = s.density(meta.tokens);
        s.count > 0
            && (p.flag.is_empty() || s.flags.contains(&p.flag))
            && lo.is_none_or(|lo| d >= lo)
            && hi.is_none_or(|hi| d <= hi)
    };
    let by_id = |id: u32| {
        summaries
            .binary_search_by_key(&id, |s| s.id)
            .ok()
            .map(|i| &summaries[i])
    };
    let matches: Vec<(FeatureSummary, Option<f32>)> = if p.q.trim().is_empty() {
        summaries
            .iter()
            .filter(|s| keep(s))
            .map(|s| (s.clone(), None))
            .collect()
    } else {
        // Features whose top tokens are the query first (the index's word tokenizer drops
        // punctuation like `.` or `:-)`), then the index's ranked matches.
        let on_token = cat
            .store()
            .features_on_token(p.q.trim(), PAGE_ROWS)
            .map_err(|e| Box::new(internal(e.into())))?;
        let ranked = index
            .search(&p.q, SEARCH_HITS)
            .map_err(|e| Box::new(internal(e.into())))?;
        let mut seen = std::collections::HashSet::new();
        on_token
            .into_iter()
            .map(|(id, _)| (id, None))
            .chain(ranked.into_iter().map(|(id, score)| (id, Some(score))))
            .filter(|(id, _)| seen.insert(*id))
            .filter_map(|(id, score)| by_id(id).filter(|s| keep(s)).map(|s| (s.clone(), score)))
            .collect()
    };
    let total = matches.len();
    Ok(Hits {
        catalog: cat.name.clone(),
        tokens: meta.tokens,
        rows: matches.into_iter().take(PAGE_ROWS).collect(),
        total,
        flags,
    })
}

fn internal(e: ServeError) -> Response {
    tracing::error!(error = %e, "console catalog");
    page::error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Catalog error",
        &e.to_string(),
    )
}

fn results_table(h: &Hits) -> Markup {
    html! {
        p.count aria-live="polite" {
            (thousands(h.total as u64)) " features"
            @if h.total > h.rows.len() { " (first " (h.rows.len()) " shown)" }
        }
        @if !h.rows.is_empty() {
            table.results {
                thead { tr { th.num { "feature" } th { "label" } th.num { "density %" } th.num { "max" } th { "flags" } th.num { "label score" } } }
                tbody {
                    @for (s, _) in &h.rows {
                        tr {
                            td.num { a href=(format!("/console/catalog/{}/features/{}", h.catalog, s.id)) { (s.id) } }
                            td { (s.label) }
                            td.num { (format!("{:.4}", 100.0 * s.density(h.tokens))) }
                            td.num { (format!("{:.2}", s.max)) }
                            td { @for f in &s.flags { span.flag { (f) } " " } }
                            td.num { (format!("{:.2}", s.label_score)) }
                        }
                    }
                }
            }
        }
    }
}

pub async fn search_page(
    State(state): State<Arc<AppState>>,
    who: page::Who,
    Query(p): Query<SearchParams>,
) -> Response {
    let s = state.clone();
    let hits = match tokio::task::spawn_blocking(move || search(&s, &p).map(|h| (h, p))).await {
        Ok(Ok(h)) => h,
        Ok(Err(r)) => return *r,
        Err(e) => return internal(ServeError::Io(e.to_string())),
    };
    let (h, p) = hits;
    let body = html! {
        h1 { "Feature catalog" }
        form #search role="search" method="get" action="/console/catalog" {
            label for="q" { "Search labels, contexts and tokens" }
            input #q type="search" name="q" value=(p.q) placeholder="password, \"ignore previous\", label:colon …" autocomplete="off" autofocus;
            div.filters {
                label { "Dictionary " select name="catalog" {
                    @for c in &state.catalogs.0 { option value=(c.name) selected[c.name == h.catalog] { (c.name) } }
                } }
                label { "Flag " select name="flag" {
                    option value="" { "any" }
                    @for f in &h.flags { option value=(f) selected[*f == p.flag] { (f) } }
                } }
                label { "Density % from " input type="text" inputmode="decimal" name="min_density" size="6" value=(p.min_density); }
                label { " to " input type="text" inputmode="decimal" name="max_density" size="6" value=(p.max_density); }
                button type="submit" { "Search" }
            }
        }
        div #results { (results_table(&h)) }
    };
    page::shell("Catalog", Some(&who), "Catalog", body).into_response()
}

/// The results table alone, for search as you type.
pub async fn results(
    State(state): State<Arc<AppState>>,
    _who: page::Who,
    Query(p): Query<SearchParams>,
) -> Response {
    let s = state.clone();
    match tokio::task::spawn_blocking(move || search(&s, &p)).await {
        Ok(Ok(h)) => results_table(&h).into_response(),
        Ok(Err(r)) => *r,
        Err(e) => internal(ServeError::Io(e.to_string())),
    }
}

/// Activation shade classes `a0`..`a5` relative to the feature's max (classes, not inline
/// styles: the console's CSP forbids those).
fn context(e: &Example, max: f32) -> Markup {
    html! {
        div.ctx {
            @for (i, seg) in e.segments().into_iter().enumerate() {
                (seg.gap)
                @if seg.activation > 0.0 {
                    @let level = ((seg.activation / max.max(1e-9)) * 5.0).round().clamp(0.0, 5.0) as usize;
                    span class=(format!("a{level}{}", if i == e.focus { " peak" } else { "" }))
                        title=(format!("{:.3}", seg.activation)) tabindex="0" { (seg.token) }
                } @else {
                    span { (seg.token) }
                }
            }
        }
    }
}

fn histogram(h: &[u64]) -> Markup {
    let first = h.iter().position(|&c| c > 0);
    let last = h.iter().rposition(|&c| c > 0);
    let (Some(lo), Some(hi)) = (first, last) else {
        return html! { p { "No activations recorded." } };
    };
    let bins = &h[lo..=hi];
    let max = bins.iter().copied().max().unwrap_or(1).max(1) as f64;
    let (w, ht) = (18.0, 90.0);
    let width = bins.len() as f64 * w;
    html! {
        svg.hist width=(width) height=(ht + 18.0) viewBox=(format!("0 0 {width} {}", ht + 18.0)) role="img" aria-label="activation histogram" {
            @for (i, &c) in bins.iter().enumerate() {
                @let bh = (c as f64 / max) * ht;
                rect x=(format!("{:.1}", i as f64 * w)) y=(format!("{:.1}", ht - bh)) width=(w - 3.0) height=(format!("{bh:.1}")) {
                    title { (format!("{:.3} to {:.3}: {} tokens", histogram_edge(lo + i), histogram_edge(lo + i + 1), c)) }
                }
            }
            text x="0" y=(ht + 15.0) { (format!("{:.3}", histogram_edge(lo))) }
            text x=(width) y=(ht + 15.0) text-anchor="end" { (format!("{:.3}", histogram_edge(hi + 1))) }
        }
    }
}

fn vocab(title: &str, list: &[(String, f32)]) -> Markup {
    html! {
        section.vocab {
            h3 { (title) }
            @if list.is_empty() { p { "—" } }
            ol { @for (t, v) in list.iter().take(12) { li { code { (readable_token(t)) } " " span.num { (format!("{v:+.3}")) } } } }
        }
    }
}

/// Catalog `name`'s meta and feature `id`, or the page that says what is wrong (blocking).
fn lookup(
    state: &AppState,
    name: &str,
    id: &str,
) -> std::result::Result<(CatalogMeta, Feature), page::Refusal> {
    let Some(cat) = state.catalogs.get(name) else {
        return Err(Box::new(page::error(
            StatusCode::NOT_FOUND,
            "No such catalog",
            &format!("There is no catalog named `{name}`."),
        )));
    };
    let (meta, _, _) = cat.current().map_err(|e| Box::new(internal(e)))?;
    let range = format!(
        "Feature ids of `{name}` run from 0 to {}.",
        meta.d_sae.saturating_sub(1)
    );
    let Ok(id) = id.parse::<u32>() else {
        return Err(Box::new(page::error(
            StatusCode::BAD_REQUEST,
            "Not a feature id",
            &format!("`{id}` is not a number. {range}"),
        )));
    };
    match cat.feature(id) {
        Ok(Some(f)) => Ok((meta, f)),
        Ok(None) => Err(Box::new(page::error(
            StatusCode::NOT_FOUND,
            "No such feature",
            &format!("Feature {id} is not in the catalog. {range}"),
        ))),
        Err(e) => Err(Box::new(internal(e))),
    }
}

pub async fn feature_page(
    State(state): State<Arc<AppState>>,
    who: page::Who,
    UrlPath((name, id)): UrlPath<(String, String)>,
) -> Response {
    let s = state.clone();
    let n = name.clone();
    let (meta, f) = match tokio::task::spawn_blocking(move || lookup(&s, &n, &id)).await {
        Ok(Ok(found)) => found,
        Ok(Err(r)) => return *r,
        Err(e) => return internal(ServeError::Io(e.to_string())),
    };
    let encoder = meta.vocab_effect == VOCAB_EMBEDDING;
    let (up, down) = if encoder {
        (
            "Nearest token embeddings (cosine)",
            "Farthest token embeddings (cosine)",
        )
    } else {
        ("Promotes (logit effect)", "Suppresses (logit effect)")
    };
    let base = format!("/console/catalog/{name}/features");
    let body = html! {
        p { a href=(format!("/console/catalog?catalog={name}")) { "← catalog" } }
        h1 { "Feature " (f.id) ": " span.label { (f.label) } }
        p.meta {
            "label score " (format!("{:.2}", f.label_score)) " (" (f.label_method) ") · "
            "density " (format!("{:.4}", 100.0 * f.density(meta.tokens))) " % (" (thousands(f.count)) " tokens, " (thousands(f.contexts)) " contexts) · "
            "mean " (format!("{:.3}", f.mean())) " · max " (format!("{:.3}", f.max))
        }
        p.meta.small { (meta.model) " at " b { (meta.hook) } " · dictionary " (meta.dict) " (" (meta.d_sae) " features) · " (thousands(meta.tokens)) " tokens of " (meta.corpus) }
        @if !f.flags.is_empty() {
            section.flags {
                h2 { "Sensitivity flags" }
                ul { @for g in &f.flags { li { span.flag { (g.concept) } " score " (format!("{:.2}", g.score)) " — " (g.evidence) } } }
            }
        }
        div.cols {
            section { h2 { "Activation histogram" } (histogram(&f.histogram)) }
            (vocab(up, &f.promoted))
            (vocab(down, &f.suppressed))
            section.vocab {
                h3 { "Nearest features (decoder cosine)" }
                ol { @for (j, c) in f.neighbours.iter().take(12) { li { a href=(format!("{base}/{j}")) { (j) } " " span.num { (format!("{c:.3}")) } } } }
            }
        }
        h2 { "Top activations" }
        @for e in f.examples.iter().filter(|e| e.kind == glassbox_store::catalog::ExampleKind::Top) {
            div.example { span.act { (format!("{:.2}", e.activation)) } (context(e, f.max)) }
        }
        @let samples: Vec<&Example> = f.examples.iter().filter(|e| e.kind == glassbox_store::catalog::ExampleKind::Sample).collect();
        @if !samples.is_empty() {
            h2 { "Random sample of contexts it fires in" }
            @for e in samples { div.example { span.act { (format!("{:.2}", e.activation)) } (context(e, f.max)) } }
        }
        p.nav {
            @if f.id > 0 { a href=(format!("{base}/{}", f.id - 1)) accesskey="p" { "← feature " (f.id - 1) } " " }
            @if (f.id as usize) + 1 < meta.d_sae { a href=(format!("{base}/{}", f.id + 1)) accesskey="n" { "feature " (f.id + 1) " →" } }
        }
    };
    page::shell(&format!("Feature {}", f.id), Some(&who), "Catalog", body).into_response()
}

impl Catalogs {
    /// Feature labels of the catalog named `name`, read once for many lookups (the
    /// playground's token details): `label(id)`, empty where the catalog has no such feature.
    pub fn labels(&self, name: &str) -> impl Fn(u32) -> String {
        let summaries = self
            .get(name)
            .and_then(|c| c.current().ok())
            .map(|(_, s, _)| s);
        move |id| {
            summaries
                .as_ref()
                .and_then(|s| {
                    s.binary_search_by_key(&id, |f| f.id)
                        .ok()
                        .map(|i| s[i].label.clone())
                })
                .unwrap_or_default()
        }
    }

    /// The name of a catalog built at `hook` (graph nodes link to it).
    pub fn by_hook(&self, hook: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|c| c.hook == hook)
            .map(|c| c.name.as_str())
    }
}

#[derive(Deserialize)]
pub struct SuggestParams {
    #[serde(default)]
    q: String,
    #[serde(default)]
    catalog: String,
}

/// The ten best matches of a query as `[{id, label}]` (the playground's feature finder).
pub async fn suggest(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(p): Query<SuggestParams>,
) -> Response {
    if let Err(e) = state.authorize_read(&headers, Role::Viewer) {
        return e.into_response();
    }
    let params = SearchParams {
        q: p.q,
        catalog: p.catalog,
        ..Default::default()
    };
    let s = state.clone();
    let hits = tokio::task::spawn_blocking(move || {
        if params.q.trim().is_empty() {
            return Vec::new();
        }
        search(&s, &params).map_or(Vec::new(), |h| {
            h.rows
                .into_iter()
                .take(10)
                .map(|(f, _)| serde_json::json!({"id": f.id, "label": f.label}))
                .collect()
        })
    })
    .await
    .unwrap_or_default();
    axum::Json(serde_json::json!({ "features": hits })).into_response()
}
