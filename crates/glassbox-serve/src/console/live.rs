//! The on-call views: the live monitor (requests and rule firings as they happen, from the
//! server's event stream over SSE) and the KPI page (requests, firings and blocks per monitor,
//! over time from the audit log; latency percentiles and monitor overhead from the metrics;
//! detection rates from the latest red-team report).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use glassbox_store::audit;
use maud::{html, Markup};
use prometheus::proto::{MetricFamily, MetricType};
use serde_json::json;

use super::page;
use crate::server::AppState;

/// Where each monitor's firings link: the feature page of the feature its rule reads, when a
/// console catalog has the monitor's dictionary's name.
pub(super) fn feature_links(state: &AppState) -> serde_json::Value {
    let mut links = serde_json::Map::new();
    for m in state.monitor_configs() {
        let (Some(d), Ok(rule)) = (&m.dictionary, crate::rules::Rule::parse(&m.when)) else {
            continue;
        };
        let Some(f) = m.target(&rule) else { continue };
        if state.catalogs.0.iter().any(|c| &c.name == d) {
            links.insert(
                m.name.clone(),
                json!(format!("/console/catalog/{d}/features/{f}")),
            );
        }
    }
    serde_json::Value::Object(links)
}

pub async fn page(State(state): State<Arc<AppState>>, who: page::Who) -> Response {
    let monitors = state.monitor_configs();
    let body = html! {
        h1 { "Live monitor" }
        p #live-status role="status" data-links=(feature_links(&state).to_string()) { "Connecting to the event stream…" }
        table.counters {
            thead { tr { th { "monitor" } th { "rule" } th { "action" } th.num { "firings" } th.num { "requests" } th.num { "blocks" } } }
            tbody #counters {
                @for m in &monitors {
                    tr data-monitor=(m.name) {
                        td { (m.name) } td { code { (m.when) } } td { (format!("{:?}", m.action).to_lowercase()) }
                        td.num.firings { "0" } td.num.requests { "0" } td.num.blocks { "0" }
                    }
                }
            }
        }
        h2 { "Events" }
        table.events {
            thead { tr { th { "time" } th { "request" } th { "route" } th { "monitor" } th.num { "input" } th.num { "token" } th.num { "value" } th { "action" } } }
            tbody #events {}
        }
    };
    page::shell("Live", Some(&who), "Live", body).into_response()
}

fn counter_total(families: &[MetricFamily], name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for f in families.iter().filter(|f| f.name() == name) {
        for m in f.get_metric() {
            let key = m
                .get_label()
                .iter()
                .find(|l| l.name() == label)
                .map_or(String::new(), |l| l.value().to_string());
            *out.entry(key).or_insert(0.0) += m.get_counter().get_value();
        }
    }
    out
}

/// Percentile `q` of a Prometheus histogram by linear interpolation within its bucket.
fn quantile(buckets: &[(f64, u64)], count: u64, q: f64) -> Option<f64> {
    if count == 0 {
        return None;
    }
    let rank = q * count as f64;
    let (mut lo, mut below) = (0.0, 0u64);
    for &(le, cum) in buckets {
        if cum as f64 >= rank {
            let inside = (cum - below).max(1) as f64;
            return Some(lo + (le - lo) * ((rank - below as f64) / inside));
        }
        (lo, below) = (le, cum);
    }
    Some(lo)
}

struct Latency {
    route: String,
    count: u64,
    p50: Option<f64>,
    p95: Option<f64>,
    p99: Option<f64>,
    mean: f64,
}

fn latencies(families: &[MetricFamily], name: &str) -> Vec<Latency> {
    let mut out = Vec::new();
    for f in families
        .iter()
        .filter(|f| f.name() == name && f.get_field_type() == MetricType::HISTOGRAM)
    {
        for m in f.get_metric() {
            let h = m.get_histogram();
            let buckets: Vec<(f64, u64)> = h
                .get_bucket()
                .iter()
                .map(|b| (b.upper_bound(), b.cumulative_count()))
                .collect();
            let count = h.get_sample_count();
            out.push(Latency {
                route: m
                    .get_label()
                    .first()
                    .map_or("all".into(), |l| l.value().to_string()),
                count,
                p50: quantile(&buckets, count, 0.5),
                p95: quantile(&buckets, count, 0.95),
                p99: quantile(&buckets, count, 0.99),
                mean: h.get_sample_sum() / count.max(1) as f64,
            });
        }
    }
    out
}

/// The monitors' hooks' share of model time, over every request since start.
fn overhead(families: &[MetricFamily], model: &[Latency]) -> String {
    let monitors: f64 = counter_total(families, "glassbox_monitor_seconds_total", "")
        .values()
        .sum();
    let total: f64 = model.iter().map(|l| l.mean * l.count as f64).sum();
    let rest = total - monitors;
    if total <= 0.0 || rest <= 0.0 {
        return "Monitor overhead: no requests yet.".into();
    }
    format!(
        "Monitor overhead: {:.1} % ({:.1} ms in the monitors' hooks of {:.1} s of model time since start).",
        100.0 * monitors / rest,
        monitors * 1e3,
        total
    )
}

fn ms(v: Option<f64>) -> String {
    v.map_or("—".into(), |s| format!("{:.1}", s * 1e3))
}

/// Hourly bars of firings and blocks from the audit log (SVG; the newest 48 hours with data).
fn hourly_chart(records: &[audit::Record]) -> Markup {
    let mut per_hour: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for r in records {
        let h = r.time_ms / 3_600_000;
        let e = per_hour.entry(h).or_default();
        match r.event.as_str() {
            "firing" => {
                e.0 += r
                    .detail
                    .get("firings")
                    .and_then(|f| f["tokens"].as_u64())
                    .unwrap_or(1)
            }
            "block" => e.1 += 1,
            _ => {}
        }
    }
    let hours: Vec<(u64, (u64, u64))> = per_hour
        .into_iter()
        .filter(|(_, v)| v.0 + v.1 > 0)
        .collect();
    let hours = &hours[hours.len().saturating_sub(48)..];
    if hours.is_empty() {
        return html! { p { "No firings or blocks in the audit log yet." } };
    }
    let max = hours
        .iter()
        .map(|(_, v)| v.0.max(v.1))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let (w, ht) = (22.0, 120.0);
    let width = hours.len() as f64 * w + 40.0;
    html! {
        svg.chart width=(width) height=(ht + 34.0) viewBox=(format!("0 0 {width} {}", ht + 34.0)) role="img" aria-label="firings and blocks per hour" {
            @for (i, (h, (f, b))) in hours.iter().enumerate() {
                @let x = 30.0 + i as f64 * w;
                @let fh = *f as f64 / max * ht;
                @let bh = *b as f64 / max * ht;
                rect.firing x=(format!("{x:.1}")) y=(format!("{:.1}", ht - fh)) width="9" height=(format!("{fh:.1}")) { title { (audit_hour(*h)) ": " (f) " firing tokens" } }
                rect.block x=(format!("{:.1}", x + 10.0)) y=(format!("{:.1}", ht - bh)) width="9" height=(format!("{bh:.1}")) { title { (audit_hour(*h)) ": " (b) " blocks" } }
            }
            text x="0" y="12" { (max as u64) }
            text x="0" y=(ht) { "0" }
            text x="30" y=(ht + 16.0) { (audit_hour(hours[0].0)) }
            text x=(width) y=(ht + 16.0) text-anchor="end" { (audit_hour(hours[hours.len() - 1].0)) }
            text.legend x="30" y=(ht + 30.0) { "■ firing tokens  " tspan.blocklegend { "■ blocks" } " (per hour, UTC)" }
        }
    }
}

fn audit_hour(h: u64) -> String {
    let s = super::audit::utc(h * 3_600_000);
    s[5..13].to_string() + "h"
}

pub async fn kpis(State(state): State<Arc<AppState>>, who: page::Who) -> Response {
    let families = state.metrics.gather();
    let requests = counter_total(&families, "glassbox_requests_total", "route");
    let firings = counter_total(&families, "glassbox_rule_firings_total", "monitor");
    let actions = counter_total(&families, "glassbox_actions_total", "action");
    let tokens = counter_total(&families, "glassbox_tokens_total", "kind");
    let lat = latencies(&families, "glassbox_request_seconds");
    let model = latencies(&families, "glassbox_model_seconds");
    let path = state.cfg.audit.path.clone();
    let records = tokio::task::spawn_blocking(move || audit::records(&path).unwrap_or_default())
        .await
        .unwrap_or_default();
    let s = state.clone();
    let detection = tokio::task::spawn_blocking(move || super::reports::latest_detection(&s))
        .await
        .unwrap_or_default();
    let mut per_monitor: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for r in &records {
        let Some(m) = super::audit::monitor_of(r) else {
            continue;
        };
        let e = per_monitor.entry(m.to_string()).or_default();
        match r.event.as_str() {
            "firing" => e.0 += 1,
            "block" => e.1 += 1,
            _ => {}
        }
    }
    let body = html! {
        h1 { "KPIs" }
        p.small { "Counters since this server started; the per-monitor history comes from the audit log." }
        div.cols {
            section { h2 { "Requests" } table { tbody {
                @for (route, n) in &requests { tr { td { (route) } td.num { (*n as u64) } } }
                @for (kind, n) in &tokens { tr { td { "tokens " (kind) } td.num { (*n as u64) } } }
            } } }
            section { h2 { "Firing tokens by monitor" } table { tbody {
                @for (m, n) in &firings { tr { td { (m) } td.num { (*n as u64) } } }
                @if firings.is_empty() { tr { td { "none yet" } } }
            } } }
            section { h2 { "Actions" } table { tbody {
                @for (a, n) in &actions { tr { td { (a) } td.num { (*n as u64) } } }
                @if actions.is_empty() { tr { td { "none yet" } } }
            } } }
        }
        h2 { "Latency (ms)" }
        table { thead { tr { th { "route" } th.num { "requests" } th.num { "p50" } th.num { "p95" } th.num { "p99" } th.num { "mean" } } }
            tbody {
                @for l in &lat { tr { td { (l.route) } td.num { (l.count) } td.num { (ms(l.p50)) } td.num { (ms(l.p95)) } td.num { (ms(l.p99)) } td.num { (format!("{:.1}", l.mean * 1e3)) } } }
                @for l in &model { tr { td { "model time per request (monitors included)" } td.num { (l.count) } td.num { (ms(l.p50)) } td.num { (ms(l.p95)) } td.num { (ms(l.p99)) } td.num { (format!("{:.1}", l.mean * 1e3)) } } }
            }
        }
        p.small { "Percentiles interpolate within the histogram buckets of /metrics." }
        p #overhead { (overhead(&families, &model)) }
        h2 { "Detection rates (latest red-team evaluation)" }
        (detection)
        h2 { "Firings and blocks over time" }
        (hourly_chart(&records))
        h2 { "Per monitor, all time (audit log)" }
        table { thead { tr { th { "monitor" } th.num { "firing records" } th.num { "blocks" } } }
            tbody { @for (m, (f, b)) in &per_monitor { tr { td { (m) } td.num { (f) } td.num { (b) } } } } }
    };
    page::shell("KPIs", Some(&who), "KPIs", body).into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn quantiles_interpolate_within_buckets() {
        let b = [(0.1, 50), (0.2, 100), (f64::INFINITY, 100)];
        assert!((super::quantile(&b, 100, 0.5).unwrap() - 0.1).abs() < 1e-9);
        assert!((super::quantile(&b, 100, 0.75).unwrap() - 0.15).abs() < 1e-9);
        assert_eq!(super::quantile(&b, 0, 0.5), None);
    }
}
