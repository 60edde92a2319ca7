//! The HTTP API (axum): OpenAI-compatible inference with monitors attached, monitor
//! management, the live event stream, health, metrics and the OpenAPI document.
//!
//! Every response to an inference request carries `x-glassbox-request-id` and (unless
//! streamed) `x-glassbox-decisions`, a compact JSON of the firings and any block; the JSON
//! body repeats them under `glassbox`. Errors are JSON `{"error": {"type", "message"}}`.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use glassbox_model::Model;
use glassbox_store::audit::AuditLog;
use serde_json::{json, Value};
use tokio::sync::{broadcast, Semaphore};

use crate::auth::{Caller, Keys, Role};
use crate::config::{Config, MonitorConfig};
use crate::console::catalog::Catalogs;
use crate::console::reports::Reports;
use crate::console::session::{csrf_ok, Sessions, CSRF_HEADER};
use crate::error::{Result, ServeError};
use crate::metrics::Metrics;
use crate::monitor::{MonitorSet, Readers};
use crate::webhook::Alerts;

pub struct AppState {
    pub model: Arc<Model>,
    pub cfg: Config,
    readers: Readers,
    monitors: RwLock<(Vec<MonitorConfig>, Arc<MonitorSet>)>,
    pub(crate) keys: Keys,
    /// The certificate being served, when TLS is on (replaced on reload).
    pub(crate) tls: std::sync::OnceLock<axum_server::tls_rustls::RustlsConfig>,
    pub(crate) sessions: Sessions,
    pub(crate) catalogs: Catalogs,
    pub(crate) reports: Reports,
    audit: Mutex<AuditLog>,
    alerts: Option<Alerts>,
    pub metrics: Metrics,
    /// Live events for `/v1/events`: (SSE event name, JSON data).
    events: broadcast::Sender<(&'static str, String)>,
    workers: Semaphore,
    next_id: AtomicU64,
    started: u64,
}

impl AppState {
    /// Loads the model and dictionaries, checks the monitors, opens the audit log.
    pub fn new(cfg: Config, model: Model) -> Result<Arc<AppState>> {
        let readers = Readers::load(&model, &cfg.dictionaries, &cfg.probes)?;
        let set = MonitorSet::new(&readers, &cfg.monitors)?;
        let mut audit = cfg.audit.open()?;
        audit.append(
            "config",
            "server.start",
            json!({"model": cfg.model, "monitors": cfg.monitors, "dictionaries": cfg.dictionaries, "probes": cfg.probes,
                   "keys": cfg.keys.iter().map(|k| json!({"name": k.name, "role": k.role})).collect::<Vec<_>>()}),
        )?;
        audit.sync()?;
        let metrics = Metrics::new().map_err(|e| ServeError::Config(format!("metrics: {e}")))?;
        let alerts = cfg.alert.as_ref().map(Alerts::start).transpose()?;
        let catalogs = Catalogs::open(&cfg.console.catalogs)?;
        let sessions = Sessions::new(std::time::Duration::from_secs(
            cfg.console.session_minutes.max(1) * 60,
        ));
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(Arc::new(AppState {
            model: Arc::new(model),
            keys: Keys::new(&cfg.keys, cfg.limits.requests_per_minute),
            tls: std::sync::OnceLock::new(),
            sessions,
            catalogs,
            reports: Reports::new(cfg.console.reports.clone()),
            monitors: RwLock::new((cfg.monitors.clone(), Arc::new(set))),
            readers,
            audit: Mutex::new(audit),
            alerts,
            metrics,
            events: broadcast::channel(1024).0,
            workers: Semaphore::new(cfg.limits.workers),
            next_id: AtomicU64::new(0),
            started,
            cfg,
        }))
    }

    pub(crate) fn monitor_set(&self) -> Arc<MonitorSet> {
        self.monitors
            .read()
            .map_or_else(|p| p.into_inner().1.clone(), |g| g.1.clone())
    }

    /// The monitors in force, as configured.
    pub(crate) fn monitor_configs(&self) -> Vec<MonitorConfig> {
        self.monitors
            .read()
            .map_or_else(|p| p.into_inner().0.clone(), |g| g.0.clone())
    }

    pub(crate) fn readers(&self) -> Readers {
        self.readers.clone()
    }

    /// The caller of a request that only reads (a session's cookie is enough).
    pub(crate) fn authorize_read(&self, headers: &HeaderMap, need: Role) -> ApiResult<Caller> {
        authorize_as(self, headers, need, false)
    }

    /// Appends one record to the audit log (sign-ins and the like); a failure is logged.
    pub(crate) fn audit_event(&self, actor: &str, event: &str, detail: Value) {
        if let Err(e) = self.audit_change(actor, event, detail, || ()) {
            tracing::error!(error = %e, event, "audit record not written");
        }
    }

    /// Writes a change to the audit log (synced) and only then applies it, under the log's
    /// lock so that records and changes keep one order. An unwritable log refuses the change.
    pub(crate) fn audit_change(
        &self,
        actor: &str,
        event: &str,
        detail: Value,
        apply: impl FnOnce(),
    ) -> Result<()> {
        let mut audit = self
            .audit
            .lock()
            .map_err(|_| ServeError::Io("the audit log lock is poisoned".into()))?;
        audit.append(actor, event, detail)?;
        audit.sync()?;
        apply();
        Ok(())
    }
}

/// The routes; `ROUTES` lists them for the OpenAPI document (a test keeps the two in step).
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.cfg.limits.max_body_bytes;
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/openapi.json",
            get(|| async { Json(crate::openapi::document()) }),
        )
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/monitors", get(list_monitors).post(create_monitor))
        .route("/v1/monitors/{name}", delete(delete_monitor))
        .route("/v1/events", get(events))
        .route("/v1/config", get(config))
        .route("/v1/keys/reload", post(crate::transport::reload_keys))
        .merge(crate::console::routes())
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("post", "/v1/embeddings"),
    ("post", "/v1/completions"),
    ("post", "/v1/chat/completions"),
    ("get", "/v1/monitors"),
    ("post", "/v1/monitors"),
    ("delete", "/v1/monitors/{name}"),
    ("get", "/v1/events"),
    ("get", "/v1/config"),
    ("post", "/v1/keys/reload"),
];

/// An error answer.
pub struct ApiError {
    status: StatusCode,
    pub(crate) kind: &'static str,
    pub(crate) message: String,
    /// A blocked request's decisions, answered with the error.
    decisions: Option<Box<openai::Decisions>>,
    /// Seconds for a `Retry-After` header.
    retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            decisions: None,
            retry_after: None,
        }
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
}

impl From<ServeError> for ApiError {
    fn from(e: ServeError) -> Self {
        match e {
            ServeError::Config(m) => ApiError::bad(m),
            ServeError::Model(glassbox_model::ModelError::Input(m)) => ApiError::bad(m),
            // Too long for the model is the client's input, not a server fault (found by fuzzing:
            // it was a 500).
            ServeError::Model(glassbox_model::ModelError::InputTooLong { len, max }) => {
                ApiError::bad(format!(
                    "the input is {len} tokens; the model reads at most {max} (limits.max_input_tokens may be lower)"
                ))
            }
            e => {
                tracing::error!(error = %e, "request failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    e.to_string(),
                )
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        ApiError::new(e.status(), "invalid_request", e.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = openai::ErrorResponse {
            error: openai::ErrorDetail {
                kind: self.kind,
                message: self.message,
            },
            glassbox: self.decisions.map(|d| *d),
        };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

pub(crate) type ApiResult<T> = std::result::Result<T, ApiError>;

/// The caller of a request that acts (inference, changes): a bearer key, or a console
/// session that also presents its CSRF token.
pub(crate) fn authorize(state: &AppState, headers: &HeaderMap, need: Role) -> ApiResult<Caller> {
    authorize_as(state, headers, need, true)
}

/// A bearer key, or else a console session (whose CSRF token must come with the request when
/// `acts`: a cookie alone cannot make another site's page act for the user).
fn authorize_as(
    state: &AppState,
    headers: &HeaderMap,
    need: Role,
    acts: bool,
) -> ApiResult<Caller> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let session = if token.is_none() && !state.keys.open() {
        state.sessions.get(headers)
    } else {
        None
    };
    let caller = match session {
        Some(s) => {
            let presented = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
            if acts && !csrf_ok(&s, presented) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!("a console session must send its CSRF token in `{CSRF_HEADER}`"),
                ));
            }
            s.caller
        }
        None => state.keys.identify(token).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid API key is needed: `Authorization: Bearer <key>`",
            )
        })?,
    };
    // Every identified request spends from its key's budget, refused ones included.
    if let Err(wait) = state.keys.admit(&caller) {
        state.metrics.rate_limited.inc();
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "key `{}` has spent its requests per minute; retry in {secs} s",
                caller.name
            ),
        );
        e.retry_after = Some(secs);
        return Err(e);
    }
    if caller.role < need {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this needs the {need:?} role; key `{}` is {:?}",
                caller.name, caller.role
            )
            .to_lowercase(),
        ));
    }
    Ok(caller)
}

async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    Json(
        json!({"ready": true, "model": state.cfg.model, "monitors": state.monitor_set().monitors.len(),
        "started": state.started}),
    )
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state
            .metrics
            .render(state.alerts.as_ref().map(|a| a.stats.as_ref())),
    )
}

async fn config(State(state): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    authorize_as(&state, &headers, Role::Admin, false)?;
    Ok(Json(effective_config(&state)))
}

/// The configuration as loaded, with the monitors in force now; database passwords and the
/// webhook's path (which often is its secret) redacted.
pub(crate) fn effective_config(state: &AppState) -> Value {
    let mut cfg = serde_json::to_value(&state.cfg).unwrap_or(Value::Null);
    cfg["monitor"] = json!(state.monitor_configs());
    if let Some(catalogs) = cfg["console"]["catalog"].as_array_mut() {
        for c in catalogs {
            if let Some(url) = c["store"].as_str() {
                c["store"] = json!(glassbox_store::catalog::postgres::redact(url));
            }
        }
    }
    if let Some(url) = cfg["alert"]["webhook"].as_str() {
        cfg["alert"]["webhook"] = json!(crate::webhook::origin(url));
    }
    // The keys in force, which a reload may have changed since the start.
    cfg["key"] = json!(state.keys.configs());
    cfg
}

mod inference;
pub(crate) mod monitors;
pub mod openai;

pub(crate) use inference::{account, check_length, on_worker, request_id};
use inference::{chat_completions, completions, embeddings};
use monitors::{create_monitor, delete_monitor, events, list_monitors};
