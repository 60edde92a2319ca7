//! Scan and red-team reports in the browser: every `report.json` that `glassbox scan --out DIR`
//! or `glassbox redteam --out DIR` wrote under the `[console] reports` directory, listed newest
//! first, opened one at a time, and two of a kind side by side (checks, or detection per attack
//! family). The KPI page reads the latest red-team report's detection rates from here.
//!
//! The pages are drawn from the JSON, not the reports' own HTML (which carries inline styles
//! the console's CSP forbids). Parsed reports are kept per file and reread when it changes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use glassbox_dictionary::roc::{difference_interval, rate_interval};
use maud::{html, Markup};
use serde::Deserialize;

use super::page;
use crate::server::AppState;

/// Largest report file the console reads (a red-team report keeps every attack text).
const MAX_BYTES: u64 = 64 << 20;
/// Reports the list shows (newest first).
const MAX_LISTED: usize = 500;

#[derive(Deserialize)]
struct Named {
    name: String,
    #[serde(default)]
    sha256: String,
}

#[derive(Deserialize)]
struct Check {
    suite: String,
    name: String,
    passed: bool,
    value: String,
    limit: String,
    #[serde(default)]
    detail: Vec<String>,
}

#[derive(Deserialize)]
struct MonitorRow {
    name: String,
    base_auroc: f64,
    cand_auroc: f64,
    base_detection: f64,
    cand_detection: f64,
    base_benign_firing: f64,
    cand_benign_firing: f64,
}

#[derive(Deserialize)]
struct CanaryRow {
    name: String,
    base_reply: String,
    cand_reply: String,
    passed: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Findings {
    layers: Vec<(Option<usize>, f64)>,
    monitors: Vec<MonitorRow>,
    canaries: Vec<CanaryRow>,
}

/// `glassbox scan --out`'s report.json (the fields the console shows).
#[derive(Deserialize)]
struct ScanReport {
    baseline: Named,
    candidate: Named,
    spec: String,
    passed: bool,
    checks: Vec<Check>,
    #[serde(default)]
    findings: Findings,
    #[serde(default)]
    seconds: f64,
    #[serde(default)]
    glassbox: String,
}

#[derive(Deserialize, Clone)]
struct Family {
    attack: String,
    texts: usize,
    detected: usize,
    #[serde(default)]
    known_positive: usize,
    #[serde(default)]
    evaded: usize,
    #[serde(default)]
    leaked_undetected: Option<usize>,
}

#[derive(Deserialize)]
struct RoundSummary {
    name: String,
    families: Vec<Family>,
    false_alarms: f64,
    benign: usize,
    #[serde(default)]
    seconds: f64,
    #[serde(default)]
    skipped: Vec<(String, String)>,
}

#[derive(Deserialize)]
struct Defence {
    rule: String,
    training_texts: usize,
    evasions_added: usize,
    threshold: f32,
}

/// One family of `redteam --texts`: the user's own texts sent through the deployment.
#[derive(Deserialize)]
struct TextFamily {
    family: String,
    /// Attacks (detection) or benign traffic (false alarms).
    label: bool,
    texts: usize,
    flagged: usize,
    #[serde(default)]
    by_monitor: BTreeMap<String, usize>,
}

impl TextFamily {
    fn counts(&self) -> (usize, usize) {
        (self.flagged, self.texts)
    }
}

#[derive(Deserialize)]
struct OwnTexts {
    file: String,
    families: Vec<TextFamily>,
}

/// `glassbox redteam --out`'s report.json (the fields the console shows; not the outcomes).
#[derive(Deserialize)]
struct RedteamReport {
    deployment: String,
    suite: String,
    #[serde(default)]
    notes: Vec<String>,
    rounds: Vec<RoundSummary>,
    #[serde(default)]
    defence: Option<Defence>,
    failed: bool,
    /// `--texts`: absent (null) without it.
    #[serde(default)]
    texts: Option<OwnTexts>,
}

impl RedteamReport {
    /// The round the run was judged on: after the defence when there was one, else the first.
    fn gated(&self) -> Option<&RoundSummary> {
        if self.defence.is_some() {
            self.rounds.last()
        } else {
            self.rounds.first()
        }
    }
}

impl RoundSummary {
    fn detection(&self) -> (usize, usize) {
        self.families
            .iter()
            .fold((0, 0), |(d, t), f| (d + f.detected, t + f.texts))
    }

    /// (benign texts flagged, benign texts): the report keeps the share, the intervals need
    /// the count.
    fn alarms(&self) -> (usize, usize) {
        let flagged = (self.false_alarms * self.benign as f64).round() as usize;
        (flagged, self.benign)
    }
}

enum Body {
    Scan(ScanReport),
    Redteam(RedteamReport),
}

/// One report directory's parsed report.json.
pub struct Report {
    name: String,
    modified_ms: u64,
    body: Body,
}

impl Report {
    fn kind(&self) -> &'static str {
        match self.body {
            Body::Scan(_) => "scan",
            Body::Redteam(_) => "red team",
        }
    }

    fn passed(&self) -> bool {
        match &self.body {
            Body::Scan(s) => s.passed,
            Body::Redteam(r) => !r.failed,
        }
    }

    /// One line on what the report says.
    fn headline(&self) -> String {
        match &self.body {
            Body::Scan(s) => format!(
                "{} → {}: {} of {} checks failed",
                s.baseline.name,
                s.candidate.name,
                s.checks.iter().filter(|c| !c.passed).count(),
                s.checks.len()
            ),
            Body::Redteam(r) => match r.gated() {
                Some(g) => {
                    let (d, t) = g.detection();
                    format!(
                        "{}: {} of {} attack texts detected ({}), false alarms {}",
                        g.name,
                        d,
                        t,
                        pct(d as f64 / t.max(1) as f64),
                        pct(g.false_alarms)
                    )
                }
                None => "no rounds".into(),
            },
        }
    }
}

fn pct(x: f64) -> String {
    format!("{:.1} %", x * 100.0)
}

/// The 95 % Wilson interval of `hits` in `n`, as a range of percentages.
fn interval(hits: usize, n: usize) -> String {
    let (lo, hi) = rate_interval(hits, n);
    format!("{:.1}–{:.1} %", lo * 100.0, hi * 100.0)
}

/// The reports directory and the reports read from it so far.
pub struct Reports {
    dir: Option<PathBuf>,
    cache: Mutex<HashMap<String, Cached>>,
}

/// A parsed report with the modification time and length of the file it was read from.
type Cached = (SystemTime, u64, Arc<Report>);

/// A report that could not be read: its name and why.
type Unreadable = (String, String);

impl Reports {
    pub fn new(dir: Option<PathBuf>) -> Reports {
        Reports {
            dir,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The report in directory `name` (a plain name), read again only when its file changed.
    fn get(&self, name: &str) -> Result<Arc<Report>, String> {
        let dir = self
            .dir
            .as_deref()
            .ok_or("this server has no `[console] reports` directory")?;
        let file =
            report_file(dir, name).ok_or_else(|| format!("`{name}` is not a report name"))?;
        let meta = std::fs::metadata(&file).map_err(|_| format!("there is no report `{name}`"))?;
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((m, len, r)) = cache.get(name) {
            if *m == modified && *len == meta.len() {
                return Ok(r.clone());
            }
        }
        let report = Arc::new(read(&file, name, meta.len(), modified)?);
        cache.insert(name.to_string(), (modified, meta.len(), report.clone()));
        Ok(report)
    }

    /// Every report, newest first, and those that could not be read.
    fn all(&self) -> (Vec<Arc<Report>>, Vec<Unreadable>) {
        let Some(dir) = self.dir.as_deref() else {
            return (Vec::new(), Vec::new());
        };
        let names: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| report_file(dir, n).is_some_and(|f| f.is_file()))
                    .collect()
            })
            .unwrap_or_default();
        let (mut ok, mut bad) = (Vec::new(), Vec::new());
        for n in names {
            match self.get(&n) {
                Ok(r) => ok.push(r),
                Err(e) => bad.push((n, e)),
            }
        }
        ok.sort_by(|a, b| b.modified_ms.cmp(&a.modified_ms).then(a.name.cmp(&b.name)));
        ok.truncate(MAX_LISTED);
        (ok, bad)
    }

    /// The newest red-team report, for the KPI page.
    fn latest_redteam(&self) -> Option<Arc<Report>> {
        self.all()
            .0
            .into_iter()
            .find(|r| matches!(r.body, Body::Redteam(_)))
    }
}

/// `DIR/NAME/report.json`, if `name` is a plain directory name (no paths).
fn report_file(dir: &Path, name: &str) -> Option<PathBuf> {
    let plain = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    plain.then(|| dir.join(name).join("report.json"))
}

fn read(file: &Path, name: &str, len: u64, modified: SystemTime) -> Result<Report, String> {
    if len > MAX_BYTES {
        return Err(format!(
            "{} is {len} bytes; the console reads reports of up to {MAX_BYTES}",
            file.display()
        ));
    }
    let text = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let value: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| format!("{} is not JSON: {e}", file.display()))?;
    let body = if value.get("checks").is_some() {
        Body::Scan(
            serde_json::from_value(value)
                .map_err(|e| format!("{} is not a scan report: {e}", file.display()))?,
        )
    } else if value.get("rounds").is_some() {
        Body::Redteam(
            serde_json::from_value(value)
                .map_err(|e| format!("{} is not a red-team report: {e}", file.display()))?,
        )
    } else {
        return Err(format!(
            "{} is neither a scan report (`checks`) nor a red-team report (`rounds`)",
            file.display()
        ));
    };
    let modified_ms = modified
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Ok(Report {
        name: name.to_string(),
        modified_ms,
        body,
    })
}

fn verdict(passed: bool) -> Markup {
    html! { @if passed { span.ok { "pass" } } @else { span.bad { "fail" } } }
}

pub async fn list(State(state): State<Arc<AppState>>, who: page::Who) -> Response {
    let s = state.clone();
    let (reports, unreadable) = tokio::task::spawn_blocking(move || s.reports.all())
        .await
        .unwrap_or_default();
    let body = html! {
        h1 { "Reports" }
        @if state.reports.dir.is_none() {
            p { "This server has no reports directory: add " code { "[console] reports = \"reports\"" }
                " to deploy.toml and write reports there with " code { "glassbox scan --out reports/NAME" }
                " or " code { "glassbox redteam --out reports/NAME" } "." }
        } @else if reports.is_empty() {
            p { "No reports yet: " code { "glassbox scan … --out reports/NAME" } " and "
                code { "glassbox redteam … --out reports/NAME" } " write them." }
        } @else {
            form.filters method="get" action="/console/reports/compare" {
                label { "Compare " select name="a" { @for r in &reports { option value=(r.name) { (r.name) " (" (r.kind()) ")" } } } }
                label { " with " select name="b" { @for (i, r) in reports.iter().enumerate() { option value=(r.name) selected[i == 1] { (r.name) " (" (r.kind()) ")" } } } }
                button type="submit" { "Compare" }
            }
            table.reports {
                thead { tr { th { "report" } th { "kind" } th { "written (UTC)" } th { "verdict" } th { "summary" } } }
                tbody {
                    @for r in &reports {
                        tr {
                            td { a href=(format!("/console/reports/{}", r.name)) { (r.name) } }
                            td { (r.kind()) }
                            td { (super::audit::utc(r.modified_ms)) }
                            td { (verdict(r.passed())) }
                            td { (r.headline()) }
                        }
                    }
                }
            }
        }
        @if !unreadable.is_empty() {
            h2 { "Unreadable" }
            ul { @for (n, e) in &unreadable { li { code { (n) } ": " (e) } } }
        }
    };
    page::shell("Reports", Some(&who), "Reports", body).into_response()
}

fn not_found(e: String) -> Response {
    page::error(StatusCode::NOT_FOUND, "No such report", &e)
}

pub async fn view(
    State(state): State<Arc<AppState>>,
    who: page::Who,
    UrlPath(name): UrlPath<String>,
) -> Response {
    let s = state.clone();
    let report = match tokio::task::spawn_blocking(move || s.reports.get(&name)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return not_found(e),
        Err(e) => return not_found(e.to_string()),
    };
    let body = html! {
        p.small { a href="/console/reports" { "← all reports" } }
        h1 { (report.kind()) " report " code { (report.name) } " · " (verdict(report.passed())) }
        p.meta { "written " (super::audit::utc(report.modified_ms)) " UTC · " (report.headline()) }
        @match &report.body {
            Body::Scan(s) => (scan(s)),
            Body::Redteam(r) => (redteam(r)),
        }
    };
    page::shell(
        &format!("Report {}", report.name),
        Some(&who),
        "Reports",
        body,
    )
    .into_response()
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

fn scan(s: &ScanReport) -> Markup {
    let mut checks: Vec<&Check> = s.checks.iter().collect();
    checks.sort_by_key(|c| c.passed);
    html! {
        table { tbody {
            tr { th { "baseline" } td { code { (s.baseline.name) } " " span.small { (short(&s.baseline.sha256)) } } }
            tr { th { "candidate" } td { code { (s.candidate.name) } " " span.small { (short(&s.candidate.sha256)) } } }
            tr { th { "spec" } td { code { (s.spec) } } }
            tr { th { "took" } td { (format!("{:.0} s", s.seconds)) " · glassbox " (s.glassbox) } }
        } }
        h2 { "Checks (failed first)" }
        table.checks {
            thead { tr { th { "suite" } th { "check" } th { "verdict" } th { "value" } th { "limit" } th { "why" } } }
            tbody { @for c in &checks {
                tr data-passed=(c.passed) {
                    td { (c.suite) } td { (c.name) } td { (verdict(c.passed)) } td { (c.value) } td { (c.limit) }
                    td { @if !c.detail.is_empty() { ul.small { @for d in c.detail.iter().take(12) { li { (d) } } } } }
                }
            } }
        }
        @if !s.findings.layers.is_empty() {
            h2 { "Most changed layers" }
            table { thead { tr { th { "layer" } th.num { "largest ‖ΔW‖/‖W‖" } } }
                tbody { @for (l, v) in s.findings.layers.iter().take(8) {
                    tr { td { (l.map_or("embeddings / final".into(), |l| l.to_string())) } td.num { (format!("{v:.4}")) } }
                } } }
        }
        @if !s.findings.monitors.is_empty() {
            h2 { "Monitors" }
            table { thead { tr { th { "monitor" } th.num { "AUROC" } th.num { "detection" } th.num { "benign firing" } } }
                tbody { @for m in &s.findings.monitors {
                    tr { td { (m.name) }
                        td.num { (format!("{:.4} → {:.4}", m.base_auroc, m.cand_auroc)) }
                        td.num { (pct(m.base_detection)) " → " (pct(m.cand_detection)) }
                        td.num { (pct(m.base_benign_firing)) " → " (pct(m.cand_benign_firing)) } }
                } } }
        }
        @if !s.findings.canaries.is_empty() {
            h2 { "Canaries" }
            table { thead { tr { th { "canary" } th { "verdict" } th { "baseline's reply" } th { "candidate's reply" } } }
                tbody { @for c in &s.findings.canaries {
                    tr { td { (c.name) } td { (verdict(c.passed)) } td.ctx { (c.base_reply) } td.ctx { (c.cand_reply) } }
                } } }
        }
    }
}

fn families_table(round: &RoundSummary) -> Markup {
    let (d, t) = round.detection();
    let leaks = round.families.iter().any(|f| f.leaked_undetected.is_some());
    let (alarms, _) = round.alarms();
    html! {
        table.families {
            thead { tr { th { "attack" } th.num { "texts" } th.num { "detected" } th.num { "rate" }
                th.num { "95 % interval" } th.num { "evaded (of plain-caught)" } @if leaks { th.num { "leaked undetected" } } } }
            tbody {
                @for f in &round.families {
                    tr data-attack=(f.attack) {
                        td { (f.attack) } td.num { (f.texts) } td.num { (f.detected) }
                        td.num { (pct(f.detected as f64 / f.texts.max(1) as f64)) }
                        td.num { (interval(f.detected, f.texts)) }
                        td.num { (f.evaded) " / " (f.known_positive) }
                        @if leaks { td.num { (f.leaked_undetected.map_or("—".into(), |l| l.to_string())) } }
                    }
                }
                tr { th { "all attacks" } th.num { (t) } th.num { (d) } th.num { (pct(d as f64 / t.max(1) as f64)) } th.num { (interval(d, t)) } th {} @if leaks { th {} } }
                tr { td { "benign (false alarms)" } td.num { (round.benign) } td.num { (alarms) } td.num { (pct(round.false_alarms)) } td.num { (interval(alarms, round.benign)) } td {} @if leaks { td {} } }
            }
        }
    }
}

fn redteam(r: &RedteamReport) -> Markup {
    html! {
        table { tbody {
            tr { th { "deployment" } td { code { (r.deployment) } } }
            tr { th { "suite" } td { code { (r.suite) } } }
        } }
        @for n in &r.notes { p.small { (n) } }
        @if let Some(d) = &r.defence {
            p { "Defence: retrained on " (d.training_texts) " texts (" (d.evasions_added) " evasions added); rule "
                code { (d.rule) } " (threshold " (format!("{:.4}", d.threshold)) ")." }
        }
        @for round in &r.rounds {
            h2 { "Round: " (round.name) " " span.small { (format!("{:.0} s", round.seconds)) } }
            (families_table(round))
            @if !round.skipped.is_empty() {
                p.small { "Not run: " @for (a, why) in &round.skipped { (a) " (" (why) ") " } }
            }
        }
        @if let Some(t) = &r.texts { (texts_table(t)) }
    }
}

/// `--texts`: each family of the user's file, its share flagged and which monitors fired.
fn texts_table(t: &OwnTexts) -> Markup {
    html! {
        h2 { "Your texts: " code { (t.file) } }
        p.small { "Sent through the deployment's monitors as the round's texts are: for attack "
            "families the share detected, for benign ones the share falsely flagged." }
        table.texts {
            thead { tr { th { "family" } th { "kind" } th.num { "texts" } th.num { "flagged" } th.num { "rate" }
                th.num { "95 % interval" } th { "fired" } } }
            tbody {
                @for f in &t.families {
                    tr data-family=(f.family) {
                        td { (f.family) } td { (if f.label { "attack" } else { "benign" }) }
                        td.num { (f.texts) } td.num { (f.flagged) }
                        td.num { (pct(f.flagged as f64 / f.texts.max(1) as f64)) }
                        td.num { (interval(f.flagged, f.texts)) }
                        td { @for (m, n) in &f.by_monitor { code { (m) } " " (n) " " } }
                    }
                }
            }
        }
    }
}

#[derive(Deserialize)]
pub struct Pair {
    #[serde(default)]
    a: String,
    #[serde(default)]
    b: String,
}

pub async fn compare(
    State(state): State<Arc<AppState>>,
    who: page::Who,
    Query(p): Query<Pair>,
) -> Response {
    let s = state.clone();
    let (a, b) = (p.a.clone(), p.b.clone());
    let pair = tokio::task::spawn_blocking(move || {
        Ok::<_, String>((s.reports.get(&a)?, s.reports.get(&b)?))
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    let (a, b) = match pair {
        Ok(p) => p,
        Err(e) => return not_found(e),
    };
    let table = match (&a.body, &b.body) {
        (Body::Scan(x), Body::Scan(y)) => compare_scans(x, y),
        (Body::Redteam(x), Body::Redteam(y)) => compare_redteams(x, y),
        _ => {
            return page::error(
                StatusCode::BAD_REQUEST,
                "Different kinds",
                &format!(
                    "`{}` is a {} report and `{}` a {} report: compare two of one kind.",
                    a.name,
                    a.kind(),
                    b.name,
                    b.kind()
                ),
            )
        }
    };
    let body = html! {
        p.small { a href="/console/reports" { "← all reports" } }
        h1 { "Compare " code { (a.name) } " with " code { (b.name) } }
        table { tbody {
            @for r in [&a, &b] {
                tr { th { a href=(format!("/console/reports/{}", r.name)) { (r.name) } } td { (verdict(r.passed())) }
                    td { (super::audit::utc(r.modified_ms)) " UTC" } td { (r.headline()) } }
            }
        } }
        (table)
    };
    page::shell("Compare reports", Some(&who), "Reports", body).into_response()
}

fn compare_scans(a: &ScanReport, b: &ScanReport) -> Markup {
    type Sides<'c> = (Option<&'c Check>, Option<&'c Check>);
    let mut rows: BTreeMap<(&str, &str), Sides> = BTreeMap::new();
    for c in &a.checks {
        rows.entry((&c.suite, &c.name)).or_default().0 = Some(c);
    }
    for c in &b.checks {
        rows.entry((&c.suite, &c.name)).or_default().1 = Some(c);
    }
    let cell = |c: Option<&Check>| {
        html! {
            @match c { Some(c) => { (verdict(c.passed)) " " (c.value) }, None => span.small { "not run" } }
        }
    };
    html! {
        h2 { "Checks" }
        table.compare {
            thead { tr { th { "suite" } th { "check" } th { "A" } th { "B" } th { "change" } } }
            tbody { @for ((suite, name), (x, y)) in &rows {
                @let changed = x.map(|c| c.passed) != y.map(|c| c.passed);
                tr.changed[changed] {
                    td { (suite) } td { (name) } td { (cell(*x)) } td { (cell(*y)) }
                    td { @if changed { span.bad { "verdict changed" } } }
                }
            } }
        }
    }
}

fn compare_redteams(a: &RedteamReport, b: &RedteamReport) -> Markup {
    let (Some(x), Some(y)) = (a.gated(), b.gated()) else {
        return html! { p { "One of the reports has no rounds." } };
    };
    let mut rows: BTreeMap<&str, (Option<&Family>, Option<&Family>)> = BTreeMap::new();
    for f in &x.families {
        rows.entry(&f.attack).or_default().0 = Some(f);
    }
    for f in &y.families {
        rows.entry(&f.attack).or_default().1 = Some(f);
    }
    let counts = |f: Option<&Family>| f.map(|f| (f.detected, f.texts));
    let cell = |f: Option<&Family>| rate_cell(counts(f));
    let (all_x, all_y) = (x.detection(), y.detection());
    html! {
        h2 { "Detection by attack family (rounds: " (x.name) " vs " (y.name) ")" }
        table.compare {
            thead { tr { th { "attack" } th.num { "A" } th.num { "B" } th.num { "B − A [95 % interval]" } } }
            tbody {
                @for (attack, (fx, fy)) in &rows {
                    tr data-attack=(attack) { td { (attack) } td.num { (cell(*fx)) } td.num { (cell(*fy)) }
                        td.num { @if let (Some(a), Some(b)) = (counts(*fx), counts(*fy)) { (change(a, b, true)) } } }
                }
                tr { th { "all attacks" }
                    th.num { (pct(all_x.0 as f64 / all_x.1.max(1) as f64)) } th.num { (pct(all_y.0 as f64 / all_y.1.max(1) as f64)) }
                    th.num { (change(all_x, all_y, true)) } }
                tr data-attack="benign" { td { "false alarms (benign)" } td.num { (pct(x.false_alarms)) } td.num { (pct(y.false_alarms)) }
                    td.num { (change(x.alarms(), y.alarms(), false)) } }
            }
        }
        p.small { "B − A with its 95 % interval (Newcombe's, from the two rounds' Wilson intervals). "
            "A change is coloured only where its interval excludes zero; the others are within what "
            "the counts can tell apart." }
        (compare_texts(a.texts.as_ref(), b.texts.as_ref()))
    }
}

/// The `--texts` families of two reports side by side (either may lack them): a rise in
/// detection is good, a rise in false alarms bad.
fn compare_texts(a: Option<&OwnTexts>, b: Option<&OwnTexts>) -> Markup {
    if a.is_none() && b.is_none() {
        return html! {};
    }
    type Sides<'t> = (Option<&'t TextFamily>, Option<&'t TextFamily>);
    // Attack families first, as the table of one report lists them.
    let mut rows: BTreeMap<(bool, &str), Sides> = BTreeMap::new();
    for f in a.iter().flat_map(|t| &t.families) {
        rows.entry((!f.label, f.family.as_str())).or_default().0 = Some(f);
    }
    for f in b.iter().flat_map(|t| &t.families) {
        rows.entry((!f.label, f.family.as_str())).or_default().1 = Some(f);
    }
    let file = |t: Option<&OwnTexts>| t.map_or("—".to_string(), |t| t.file.clone());
    let cell = |f: Option<&TextFamily>| rate_cell(f.map(TextFamily::counts));
    html! {
        h2 { "Your texts flagged (A: " code { (file(a)) } ", B: " code { (file(b)) } ")" }
        table.compare.texts {
            thead { tr { th { "family" } th { "kind" } th.num { "A" } th.num { "B" } th.num { "B − A [95 % interval]" } } }
            tbody {
                @for ((benign, family), (fa, fb)) in &rows {
                    tr data-family=(family) { td { (family) } td { (if *benign { "benign" } else { "attack" }) }
                        td.num { (cell(*fa)) } td.num { (cell(*fb)) }
                        td.num { @if let (Some(x), Some(y)) = (fa, fb) { (change(x.counts(), y.counts(), !*benign)) } } }
                }
            }
        }
    }
}

/// A comparison's cell: "rate (hits/texts)", or "—" where the report lacks the row.
fn rate_cell(counts: Option<(usize, usize)>) -> String {
    match counts {
        Some((hits, n)) => format!("{} ({hits}/{n})", pct(hits as f64 / n.max(1) as f64)),
        None => "—".into(),
    }
}

/// A change of rate from `a` to `b` (hits, texts) in percentage points with its 95 % interval,
/// coloured good or bad (`up_is_good`: detections; false alarms are the other way) only where
/// the interval excludes zero.
fn change(a: (usize, usize), b: (usize, usize), up_is_good: bool) -> Markup {
    let rate = |(hits, n): (usize, usize)| hits as f64 / n.max(1) as f64;
    let d = (rate(b) - rate(a)) * 100.0;
    let (lo, hi) = difference_interval(a, b);
    let text = format!("{d:+.1} pp [{:+.1}, {:+.1}]", lo * 100.0, hi * 100.0);
    let (up, down) = (lo > 0.0, hi < 0.0);
    let class = if !(up || down) {
        "same"
    } else if up == up_is_good {
        "ok"
    } else {
        "bad"
    };
    html! { span.(class) title=(if class == "same" { "within the noise of these counts" } else { "beyond the noise of these counts" }) { (text) } }
}

/// The KPI page's detection section: the newest red-team report's judged round.
pub fn latest_detection(state: &AppState) -> Markup {
    let Some(report) = state.reports.latest_redteam() else {
        return html! { p { "No red-team report yet (" code { "glassbox redteam … --out REPORTS/NAME" } " with "
        code { "[console] reports" } " set)." } };
    };
    let Body::Redteam(r) = &report.body else {
        return html! {};
    };
    html! {
        p { "From " a href=(format!("/console/reports/{}", report.name)) { (report.name) } ", written "
            (super::audit::utc(report.modified_ms)) " UTC" @if let Some(g) = r.gated() { ", round " (g.name) } "." }
        @if let Some(g) = r.gated() { (families_table(g)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_names_cannot_leave_the_directory() {
        let d = Path::new("/reports");
        assert!(report_file(d, "scan-1").is_some());
        for bad in ["", "..", ".hidden", "a/b", "a\\b", "%2e%2e"] {
            assert!(report_file(d, bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn unreadable_reports_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let reports = Reports::new(Some(dir.path().to_path_buf()));
        std::fs::create_dir(dir.path().join("x")).unwrap();
        std::fs::write(dir.path().join("x/report.json"), "{\"rounds\": 3}").unwrap();
        let e = reports.get("x").err().unwrap();
        assert!(e.contains("not a red-team report"), "{e}");
        std::fs::write(dir.path().join("x/report.json"), "{}").unwrap();
        assert!(reports.get("x").err().unwrap().contains("neither"));
        assert!(reports.get("nope").err().unwrap().contains("no report"));
        let (ok, bad) = reports.all();
        assert!(ok.is_empty() && bad.len() == 1);
    }
}
