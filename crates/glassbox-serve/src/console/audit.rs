//! The audit log in the browser: the chain's verification first (the first broken record
//! named), then the records newest first, filtered by kind, key, monitor and time, and the
//! commitments (red-team held-out sets, reports) with whether their files still match.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use glassbox_store::audit::{self, Record};
use maud::html;
use serde::Deserialize;

use super::page;
use crate::server::AppState;

const PAGE_ROWS: usize = 500;

#[derive(Deserialize, Default)]
pub struct AuditParams {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    monitor: String,
    /// Only records from the last N hours (empty: all).
    #[serde(default)]
    hours: String,
}

/// The monitor a record is about: a change (`monitor.create`/`delete`), a firing (one token
/// or a request's summary) or a block.
pub fn monitor_of(r: &Record) -> Option<&str> {
    let d = &r.detail;
    ["firing", "firings", "blocked", "monitor"]
        .iter()
        .filter_map(|k| d.get(*k))
        .find_map(|v| {
            v.as_str()
                .or_else(|| v.get("monitor").and_then(|m| m.as_str()))
                .or_else(|| v.get("name").and_then(|m| m.as_str()))
        })
}

/// `2026-12-01 08:15:02` (UTC) from milliseconds since the epoch.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub async fn page(
    State(state): State<Arc<AppState>>,
    who: page::Who,
    Query(p): Query<AuditParams>,
) -> Response {
    let hours = match p.hours.trim() {
        "" => None,
        h => match h.parse::<u64>() {
            Ok(h) if h <= 24 * 366 => Some(h),
            _ => {
                return page::error(
                    StatusCode::BAD_REQUEST,
                    "Bad filter",
                    &format!("hours must be a whole number up to 8784, not `{h}`"),
                )
            }
        },
    };
    let path = state.cfg.audit.path.clone();
    let read = tokio::task::spawn_blocking(move || {
        (
            audit::verify(&path),
            audit::records(&path),
            audit::commitments(&path),
            state,
        )
    })
    .await;
    let Ok((verification, records, commitments, state)) = read else {
        return page::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Audit log",
            "reading the audit log failed",
        );
    };
    let (verification, records) = match (verification, records) {
        (Ok(v), Ok(r)) => (v, r),
        (Err(e), _) | (_, Err(e)) => {
            return page::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Audit log",
                &format!("cannot read {}: {e}", state.cfg.audit.path.display()),
            )
        }
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut kinds: Vec<&str> = records.iter().map(|r| r.event.as_str()).collect();
    kinds.sort();
    kinds.dedup();
    let shown: Vec<&Record> = records
        .iter()
        .rev()
        .filter(|r| p.kind.is_empty() || r.event == p.kind)
        .filter(|r| p.key.is_empty() || r.actor == p.key)
        .filter(|r| p.monitor.is_empty() || monitor_of(r) == Some(p.monitor.as_str()))
        .filter(|r| hours.is_none_or(|h| r.time_ms + h * 3_600_000 >= now_ms))
        .collect();
    let body = html! {
        h1 { "Audit log" }
        @match &verification.problem {
            None => p.status.ok role="status" { "✓ Chain verified: " (page::thousands(verification.records)) " records, head " code { (&verification.last_hash[..16.min(verification.last_hash.len())]) "…" } },
            Some(problem) => div.status.broken role="alert" {
                strong { "✗ Chain broken" } " after " (page::thousands(verification.records)) " good records: " (problem)
            },
        }
        form.filters method="get" action="/console/audit" {
            label { "Kind " select name="kind" { option value="" { "any" } @for k in &kinds { option value=(k) selected[*k == p.kind] { (k) } } } }
            label { "Key " input type="text" name="key" size="10" value=(p.key); }
            label { "Monitor " input type="text" name="monitor" size="12" value=(p.monitor); }
            label { "Last hours " input type="text" inputmode="numeric" name="hours" size="5" value=(p.hours); }
            button type="submit" { "Filter" }
        }
        p.count { (shown.len()) " of " (records.len()) " records" @if shown.len() > PAGE_ROWS { " (newest " (PAGE_ROWS) " shown)" } }
        table.audit {
            thead { tr { th.num { "seq" } th { "time (UTC)" } th { "key" } th { "kind" } th { "detail" } } }
            tbody {
                @for r in shown.iter().take(PAGE_ROWS) {
                    tr {
                        td.num { (r.seq) }
                        td { (utc(r.time_ms)) }
                        td { (r.actor) }
                        td { (r.event) }
                        td { code.detail { (r.detail.to_string()) } }
                    }
                }
            }
        }
        @if let Ok(c) = &commitments {
            @if !c.is_empty() {
                h2 { "Commitments" }
                p { "Files whose exact bytes the log committed to before they were shown (red-team held-out sets, reports)." }
                table { thead { tr { th.num { "seq" } th { "file" } th { "SHA-256" } th { "now" } } }
                    tbody { @for x in c { tr {
                        td.num { (x.seq) } td { code { (x.file.display().to_string()) } } td { code { (&x.sha256[..16.min(x.sha256.len())]) "…" } }
                        td { @match x.matches { Some(true) => span.ok { "matches" }, Some(false) => span.bad { "CHANGED" }, None => "missing" } }
                    } } }
                }
            }
        }
    };
    page::shell("Audit", Some(&who), "Audit", body).into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formats_civil_time() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(
            super::utc(1_764_547_200_000 + 3_723_000),
            "2025-12-01 01:02:03"
        );
    }
}
