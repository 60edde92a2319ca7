//! The web console at `/console`, served by the same process as the API and behind the same
//! keys and roles: the catalog browser, the playground, the live monitor, attribution graphs,
//! scan and red-team reports, the audit log and KPIs.
//!
//! Stack: pages are rendered on the server with `maud` (HTML checked and escaped at compile
//! time) and work without JavaScript; one small vanilla script adds search as you type, the
//! live event stream, the playground and graph interaction. CSS and JS are compiled into the
//! binary (no Node at build time, no CDN at view time), and every console response carries a
//! strict Content-Security-Policy (no inline script or style, no other origin).

mod audit;
pub mod catalog;
mod graph;
mod live;
mod monitors;
mod page;
mod playground;
pub mod reports;
pub mod session;

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::html;
use serde::Deserialize;

use crate::server::AppState;

/// Script and style come only from this server; nothing may frame the console.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::to("/console/catalog") }),
        )
        .route(
            "/console/",
            get(|| async { Redirect::to("/console/catalog") }),
        )
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/assets/{file}", get(asset))
        .route("/console/catalog", get(catalog::search_page))
        .route("/console/catalog/results", get(catalog::results))
        .route(
            "/console/catalog/{name}/features/{id}",
            get(catalog::feature_page),
        )
        .route("/console/api/features", get(catalog::suggest))
        .route("/console/playground", get(playground::page))
        .route("/console/api/playground", post(playground::run))
        .route("/console/live", get(live::page))
        .route("/console/monitors", get(monitors::page))
        .route("/console/config", get(monitors::config))
        .route("/console/kpis", get(live::kpis))
        .route("/console/audit", get(audit::page))
        .route("/console/graphs", get(graph::list))
        .route("/console/graphs/{file}", get(graph::view))
        .route("/console/reports", get(reports::list))
        .route("/console/reports/compare", get(reports::compare))
        .route("/console/reports/{name}", get(reports::view))
        .route("/console/{*rest}", get(page::not_found))
        .layer(axum::middleware::map_response(security_headers))
}

async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (k, v) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "console.css" => (
            include_str!("assets/console.css"),
            "text/css; charset=utf-8",
        ),
        "console.js" => (
            include_str!("assets/console.js"),
            "text/javascript; charset=utf-8",
        ),
        _ => return page::not_found().await,
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

#[derive(Deserialize, Default)]
struct Next {
    #[serde(default)]
    next: String,
}

/// Only console paths of this server (no `//host` or scheme: no open redirect).
fn safe_next(next: &str) -> &str {
    if next.starts_with("/console") && !next.contains("//") && !next.contains('\\') {
        next
    } else {
        "/console"
    }
}

async fn login_page(State(state): State<Arc<AppState>>, Query(n): Query<Next>) -> Response {
    login_form(&state, safe_next(&n.next), None, StatusCode::OK)
}

fn login_form(state: &AppState, next: &str, problem: Option<&str>, status: StatusCode) -> Response {
    let body = html! {
        section.login {
            h1 { "Sign in" }
            @if state.keys.open() {
                p { "This server has no API keys: the console is open. " a href="/console" { "Go to the console →" } }
            } @else {
                p { "Paste an API key (" code { "glassbox key --name NAME --role viewer" } " makes one). It is sent once, in this form, and never put in a URL." }
                @if let Some(p) = problem { p.status.broken role="alert" { (p) } }
                form method="post" action="/console/login" {
                    input type="hidden" name="next" value=(next);
                    label for="key" { "API key" }
                    input #key type="password" name="key" autocomplete="current-password" required autofocus;
                    button type="submit" { "Sign in" }
                }
            }
        }
    };
    (status, page::shell("Sign in", None, "", body)).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    key: String,
    #[serde(default)]
    next: String,
}

async fn login(
    State(state): State<Arc<AppState>>,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(f)) = form else {
        return login_form(
            &state,
            "/console",
            Some("The sign-in form was malformed."),
            StatusCode::BAD_REQUEST,
        );
    };
    let next = safe_next(&f.next);
    let Some(caller) = state
        .keys
        .identify(Some(f.key.trim()))
        .filter(|_| !state.keys.open())
    else {
        tracing::warn!("console sign-in with an unknown key");
        return login_form(
            &state,
            next,
            Some("That key is not valid (or has been removed from deploy.toml)."),
            StatusCode::UNAUTHORIZED,
        );
    };
    let name = caller.name.clone();
    let id = state.sessions.start(caller);
    state.audit_event(&name, "console.login", serde_json::json!({}));
    let mut r = Redirect::to(next).into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(
        Some(&id),
        state.sessions.ttl(),
        state.cfg.tls.is_some(),
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[derive(Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    form: Result<Form<LogoutForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if let Some(s) = state.sessions.get(&headers) {
        let token = form.as_ref().ok().map(|f| f.csrf.as_str());
        if !session::csrf_ok(&s, token) {
            return page::error(
                StatusCode::FORBIDDEN,
                "Not allowed",
                "Sign out from the console's own button.",
            );
        }
        state.sessions.end(&headers);
        state.audit_event(&s.caller.name, "console.logout", serde_json::json!({}));
    }
    let mut r = Redirect::to("/console/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(
        None,
        state.sessions.ttl(),
        state.cfg.tls.is_some(),
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn sign_in_redirects_only_to_console_paths() {
        for (given, to) in [
            ("/console/audit", "/console/audit"),
            ("https://evil.example/", "/console"),
            ("//evil.example/console", "/console"),
            ("/console//evil", "/console"),
            ("", "/console"),
        ] {
            assert_eq!(super::safe_next(given), to);
        }
    }
}
