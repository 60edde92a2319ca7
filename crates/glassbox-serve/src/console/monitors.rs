//! Monitors and configuration: the monitors in force with who changed them and when (from the
//! audit log); operators add and delete monitors here (through `/v1/monitors`, which checks the
//! role and the CSRF token and audits the change); admins see the effective configuration.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use glassbox_store::audit;
use maud::html;

use super::page;
use crate::auth::Role;
use crate::server::{self, AppState};

/// Monitor changes the page lists (newest first).
const CHANGES: usize = 200;

pub async fn page(State(state): State<Arc<AppState>>, who: page::Who) -> Response {
    let monitors = state.monitor_configs();
    let links = super::live::feature_links(&state);
    let path = state.cfg.audit.path.clone();
    let changes = tokio::task::spawn_blocking(move || {
        let records = audit::records(&path).unwrap_or_default();
        records
            .into_iter()
            .rev()
            .filter(|r| r.event.starts_with("monitor.") || r.event == "server.start")
            .take(CHANGES)
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    let operator = who.caller.role >= Role::Operator;
    let dictionaries: Vec<String> = state
        .readers()
        .dictionaries
        .iter()
        .map(|d| d.name.clone())
        .collect();
    let body = html! {
        h1 { "Monitors" }
        p #monitor-status role="status" {}
        table.monitors {
            thead { tr { th { "monitor" } th { "rule" } th { "action" } th { "dictionary" } th { "edit" } th { "reason" } @if operator { th {} } } }
            tbody {
                @for m in &monitors {
                    tr data-monitor=(m.name) {
                        td { @match links.get(&m.name).and_then(|l| l.as_str()) {
                            Some(l) => a href=(l) { (m.name) },
                            None => (m.name),
                        } }
                        td { code { (m.when) } }
                        td { (format!("{:?}", m.action).to_lowercase()) }
                        td { (m.dictionary.as_deref().unwrap_or("—")) }
                        td.small {
                            @if let Some(f) = m.feature { "feature " (f) " " }
                            @if let Some(v) = m.value { "= " (v) }
                            @if let Some(s) = m.strength { "+ " (s) }
                        }
                        td.small { (m.reason.as_deref().unwrap_or("")) }
                        @if operator { td { button.delete type="button" data-name=(m.name) { "Delete" } } }
                    }
                }
                @if monitors.is_empty() { tr { td { "No monitors: requests are served unwatched." } } }
            }
        }
        @if operator {
            h2 { "Add a monitor" }
            form #add-monitor {
                div.filters {
                    label { "Name " input name="name" required maxlength="64" size="16"; }
                    label { "Rule " input name="when" required size="36" placeholder="feature 1234 > 3.0  ·  mean(probe injection, 4) > 0.8"; }
                    label { "Action " select name="action" {
                        @for a in ["log", "alert", "block", "clamp", "steer"] { option value=(a) { (a) } }
                    } }
                }
                div.filters {
                    label { "Dictionary " select name="dictionary" {
                        option value="" { "none (probe rules)" }
                        @for d in &dictionaries { option value=(d) { (d) } }
                    } }
                    label { "Feature " input name="feature" type="number" min="0" size="8"; }
                    label { "Clamp value " input name="value" type="number" step="any" size="8"; }
                    label { "Steer strength " input name="strength" type="number" step="any" size="8"; }
                    label { "Reason " input name="reason" size="30" placeholder="shown when it blocks"; }
                    button type="submit" { "Add" }
                }
            }
            p.small { "Changes take effect for the next request and are written to the audit log under your name." }
        } @else {
            p.small { "Your role (" (page::role_name(who.caller.role)) ") sees the monitors; operators change them." }
        }
        h2 { "Changes (audit log)" }
        table.changes {
            thead { tr { th { "time (UTC)" } th { "who" } th { "what" } th { "monitor" } } }
            tbody {
                @for r in &changes {
                    tr {
                        td { (super::audit::utc(r.time_ms)) }
                        td { (r.actor) }
                        td { (r.event) }
                        td { @if let Some(m) = r.detail.get("monitor") {
                            code { (m.get("name").and_then(|n| n.as_str()).unwrap_or("")) }
                            " " (m.get("when").and_then(|n| n.as_str()).unwrap_or(""))
                        } @else if r.event == "server.start" {
                            (r.detail.get("monitors").and_then(|m| m.as_array()).map_or(0, |m| m.len())) " monitors from the deployment file"
                        } }
                    }
                }
            }
        }
    };
    page::shell("Monitors", Some(&who), "Monitors", body).into_response()
}

/// The effective configuration (admins only): the deployment file as loaded, the monitors in
/// force, secrets redacted.
pub async fn config(State(state): State<Arc<AppState>>, who: page::Who) -> Response {
    if who.caller.role < Role::Admin {
        return page::error(
            StatusCode::FORBIDDEN,
            "Not allowed",
            &format!(
                "The configuration is for admins; you are signed in as `{}` ({}).",
                who.caller.name,
                page::role_name(who.caller.role)
            ),
        );
    }
    let cfg = server::effective_config(&state);
    let text = serde_json::to_string_pretty(&cfg).unwrap_or_default();
    let body = html! {
        h1 { "Configuration" }
        p.small { "As loaded from the deployment file, with the monitors in force now. Key hashes are shown; database passwords and webhook paths are not." }
        pre.config { (text) }
    };
    page::shell("Configuration", Some(&who), "Config", body).into_response()
}
