//! The console's page shell (navigation, who is signed in), its error pages, and who may see
//! a page: an `Authorization: Bearer` key, a console session, or anyone on an open server.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup, DOCTYPE};

use crate::auth::{Caller, Role};
use crate::server::AppState;

/// Who is looking, and the CSRF token their forms and scripts send back (sessions only).
pub struct Who {
    pub caller: Caller,
    pub csrf: Option<String>,
}

const NAV: &[(&str, &str)] = &[
    ("/console/catalog", "Catalog"),
    ("/console/playground", "Playground"),
    ("/console/live", "Live"),
    ("/console/monitors", "Monitors"),
    ("/console/graphs", "Graphs"),
    ("/console/reports", "Reports"),
    ("/console/audit", "Audit"),
    ("/console/kpis", "KPIs"),
];

/// The caller a console request comes from, or the response that sends them to sign in
/// (no credentials) or tells them their role is not enough.
/// A response that ends a request early (boxed: a `Response` is large).
pub type Refusal = Box<Response>;

/// Every console page needs at least a viewer: handlers take a `Who` argument, and a request
/// without one is sent to sign in (or told its role is not enough) before the handler runs.
impl FromRequestParts<Arc<AppState>> for Who {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        who(state, &parts.headers, Role::Viewer, parts.uri.path()).map_err(|r| *r)
    }
}

fn who(state: &AppState, headers: &HeaderMap, need: Role, here: &str) -> Result<Who, Refusal> {
    let keyed = !state.keys.open();
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let (caller, csrf) = if let Some(token) = bearer {
        match state.keys.identify(Some(token)) {
            Some(c) => (c, None),
            None => {
                return Err(Box::new(error(
                    StatusCode::UNAUTHORIZED,
                    "Unknown key",
                    "The API key in the Authorization header is not one this server knows.",
                )))
            }
        }
    } else if let Some(s) = state.sessions.get(headers) {
        (s.caller, Some(s.csrf))
    } else if !keyed {
        (
            state.keys.identify(None).unwrap_or(Caller {
                name: "anonymous".into(),
                role: Role::Admin,
            }),
            None,
        )
    } else {
        let next = if here.starts_with("/console") {
            here
        } else {
            "/console"
        };
        return Err(Box::new(
            Redirect::to(&format!("/console/login?next={}", url_encode(next))).into_response(),
        ));
    };
    if caller.role < need {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "Not allowed",
            &format!(
                "This needs the {} role; you are signed in as `{}` ({}).",
                role_name(need),
                caller.name,
                role_name(caller.role)
            ),
        )));
    }
    Ok(Who { caller, csrf })
}

pub fn role_name(r: Role) -> &'static str {
    match r {
        Role::Viewer => "viewer",
        Role::Operator => "operator",
        Role::Admin => "admin",
    }
}

/// Percent-encodes everything but unreserved characters and `/` (for a `next=` path).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A whole page: head, navigation (with `active` marked), the body.
pub fn shell(title: &str, who: Option<&Who>, active: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(t) = who.and_then(|w| w.csrf.as_deref()) {
                    meta name="glassbox-csrf" content=(t);
                }
                title { (title) " · Glassbox" }
                link rel="stylesheet" href="/console/assets/console.css";
                script src="/console/assets/console.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/console" { "Glassbox" }
                    @if who.is_some() {
                        nav aria-label="Console" {
                            @for (href, name) in NAV {
                                a href=(href) aria-current=[(*name == active).then_some("page")] { (name) }
                            }
                            @if who.is_some_and(|w| w.caller.role >= Role::Admin) {
                                a href="/console/config" aria-current=[("Config" == active).then_some("page")] { "Config" }
                            }
                        }
                    }
                    @if let Some(w) = who {
                        span.who {
                            (w.caller.name) " · " (role_name(w.caller.role))
                            @if let Some(t) = &w.csrf {
                                form.inline method="post" action="/console/logout" {
                                    input type="hidden" name="csrf" value=(t);
                                    button type="submit" { "Sign out" }
                                }
                            }
                        }
                    }
                }
                main #main { (body) }
            }
        }
    }
}

/// A friendly error page with a way back.
pub fn error(status: StatusCode, title: &str, detail: &str) -> Response {
    let body = html! {
        section.error role="alert" {
            h1 { (status.as_u16()) " · " (title) }
            p { (detail) }
            p { a href="/console" { "← Back to the console" } }
        }
    };
    (status, shell(title, None, "", body)).into_response()
}

/// Unknown console paths.
pub async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no console page at this address.",
    )
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
