//! The HTTP API (axum): OpenAI-compatible inference with monitors attached, monitor
//! management, the live event stream, health, metrics and the OpenAPI document.
//!
//! Every response to an inference request carries `x-glassbox-request-id` and (unless
//! streamed) `x-glassbox-decisions`, a compact JSON of the firings and any block; the JSON
//! body repeats them under `glassbox`. Errors are JSON `{"error": {"type", "message"}}`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use glassbox_model::chat::Message;
use glassbox_model::generate::{Finish, GenerateConfig};
use glassbox_model::sampling::{Choice, Sampling};
use glassbox_model::{Model, ModelError};
use glassbox_store::audit::AuditLog;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{broadcast, Semaphore};
use tokio_stream::wrappers::{BroadcastStream, ReceiverStream};
use tokio_stream::StreamExt;

use crate::auth::{Caller, Keys, Role};
use crate::config::{Config, FiringRecords, Fsync, MonitorConfig};
use crate::console::catalog::Catalogs;
use crate::console::reports::Reports;
use crate::console::session::{csrf_ok, Sessions, CSRF_HEADER};
use crate::error::{Result, ServeError};
use crate::infer::{self, Report};
use crate::metrics::Metrics;
use crate::monitor::{Firing, MonitorSet, Readers};
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
    extra: Option<Value>,
    /// Seconds for a `Retry-After` header.
    retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            extra: None,
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
        let mut body = json!({"error": {"type": self.kind, "message": self.message}});
        if let Some(extra) = self.extra {
            body["glassbox"] = extra;
        }
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

// ---- inference -----------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct EmbeddingsRequest {
    input: Input,
    #[serde(default)]
    #[allow(dead_code)]
    model: Option<String>,
}

/// OpenAI's generation parameters (and llama.cpp's `top_k`, `min_p`, `repetition_penalty`).
/// Unlike OpenAI, `temperature` defaults to 0 (greedy), so that a monitored run is reproducible
/// unless the client asks for sampling.
#[derive(Deserialize)]
struct GenParams {
    #[serde(default)]
    max_tokens: Option<usize>,
    /// OpenAI's newer name for `max_tokens`.
    #[serde(default)]
    max_completion_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    top_k: Option<usize>,
    #[serde(default)]
    min_p: Option<f32>,
    #[serde(default)]
    repetition_penalty: Option<f32>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    n: Option<usize>,
    #[serde(default)]
    stream: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `logprobs` is a count for completions and a flag (with `top_logprobs`) for chat.
#[derive(Deserialize)]
#[serde(untagged)]
enum Logprobs {
    Flag(bool),
    Count(usize),
}

#[derive(Deserialize)]
struct CompletionRequest {
    prompt: String,
    #[serde(default)]
    logprobs: Option<Logprobs>,
    #[serde(flatten)]
    params: GenParams,
}

#[derive(Deserialize, serde::Serialize)]
struct ChatMessage {
    role: String,
    content: String,
}

#[derive(Deserialize)]
struct ChatRequest {
    messages: Vec<ChatMessage>,
    #[serde(default)]
    logprobs: Option<Logprobs>,
    #[serde(default)]
    top_logprobs: Option<usize>,
    #[serde(flatten)]
    params: GenParams,
}

/// Most alternatives a request may ask for per token (OpenAI's limit).
const MAX_TOP_LOGPROBS: usize = 20;
/// Most stop sequences (OpenAI's limit).
const MAX_STOP: usize = 4;

impl GenParams {
    /// The generation settings, each checked; a 400 names the field at fault.
    fn config(
        &self,
        limits: &crate::config::Limits,
        top_logprobs: usize,
    ) -> ApiResult<GenerateConfig> {
        let max_new = self.max_completion_tokens.or(self.max_tokens).unwrap_or(16);
        if max_new > limits.max_new_tokens {
            return Err(ApiError::bad(format!(
                "max_tokens {max_new} exceeds the limit of {} (limits.max_new_tokens)",
                limits.max_new_tokens
            )));
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::bad("`n` must be 1: one choice per request"));
        }
        if top_logprobs > MAX_TOP_LOGPROBS {
            return Err(ApiError::bad(format!(
                "`top_logprobs` must be at most {MAX_TOP_LOGPROBS}, got {top_logprobs}"
            )));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOP || stop.iter().any(String::is_empty) {
            return Err(ApiError::bad(format!(
                "`stop` takes at most {MAX_STOP} non-empty strings"
            )));
        }
        let d = Sampling::greedy();
        let sampling = Sampling {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k: self.top_k.unwrap_or(d.top_k),
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            repetition_penalty: self.repetition_penalty.unwrap_or(d.repetition_penalty),
            seed: self.seed.unwrap_or(d.seed),
        };
        sampling.validate().map_err(|e| {
            ApiError::bad(
                e.to_string()
                    .trim_start_matches("invalid input: ")
                    .to_string(),
            )
        })?;
        Ok(GenerateConfig {
            max_new,
            sampling,
            stop,
            top_logprobs,
        })
    }
}

/// One generated token's log-probabilities, in the chat (`content`) or completions layout.
fn logprobs_json(model: &Model, tokens: &[Choice], chat: bool) -> Value {
    let piece = |id: u32| model.tokenizer.piece(id);
    if chat {
        let content: Vec<Value> = tokens
            .iter()
            .map(|c| {
                json!({"token": piece(c.id), "logprob": c.logprob, "bytes": piece(c.id).into_bytes(),
                       "top_logprobs": c.top.iter().map(|(t, l)| json!({"token": piece(*t), "logprob": l, "bytes": piece(*t).into_bytes()})).collect::<Vec<_>>()})
            })
            .collect();
        json!({ "content": content })
    } else {
        json!({
            "tokens": tokens.iter().map(|c| piece(c.id)).collect::<Vec<_>>(),
            "token_logprobs": tokens.iter().map(|c| c.logprob).collect::<Vec<_>>(),
            "top_logprobs": tokens.iter().map(|c| {
                c.top.iter().map(|(t, l)| (piece(*t), json!(l))).collect::<serde_json::Map<_, _>>()
            }).collect::<Vec<_>>(),
        })
    }
}

/// A request's firings summed per monitor and input: how many tokens fired, the first and last
/// position, the highest value (`audit.firings = "per-request"`).
fn per_request(firings: &[Firing]) -> Vec<Value> {
    let mut by: Vec<((&str, usize), Value)> = Vec::new();
    for f in firings {
        let key = (f.monitor.as_str(), f.input);
        match by.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => {
                v["tokens"] = json!(v["tokens"].as_u64().unwrap_or(0) + 1);
                v["last_position"] = json!(f.position);
                if f64::from(f.value) > v["max_value"].as_f64().unwrap_or(f64::MIN) {
                    v["max_value"] = json!(f.value);
                }
            }
            None => by.push((
                key,
                json!({"monitor": f.monitor, "input": f.input, "action": f.action, "tokens": 1,
                    "first_position": f.position, "last_position": f.position, "max_value": f.value}),
            )),
        }
    }
    by.into_iter().map(|(_, v)| v).collect()
}

/// A finished request's bookkeeping: metrics, audit records, live events.
pub(crate) fn account(
    state: &AppState,
    caller: &Caller,
    id: &str,
    route: &str,
    text: &str,
    report: &Report,
) -> ApiResult<()> {
    state.metrics.monitor_time.inc_by(report.monitor_seconds);
    for f in &report.firings {
        state.metrics.firings.with_label_values(&[&f.monitor]).inc();
        let action = format!("{:?}", f.action).to_lowercase();
        state.metrics.actions.with_label_values(&[&action]).inc();
        let _ = state.events.send((
            "firing",
            json!({"request_id": id, "route": route, "firing": f}).to_string(),
        ));
    }
    let _ = state.events.send((
        "request",
        json!({"request_id": id, "route": route, "key": caller.name,
               "request": {"firings": per_request(&report.firings),
                           "blocked": report.blocked.as_ref().map(|b| &b.monitor),
                           "trace": report.trace.iter().map(|(m, v)| (m.clone(), json!(v))).collect::<serde_json::Map<String, Value>>()}})
        .to_string(),
    ));
    if report.firings.is_empty() {
        return Ok(());
    }
    let mut audit = state.audit.lock().map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "the audit log is unavailable",
        )
    })?;
    let always = state.cfg.audit.fsync == Fsync::Always;
    let records = match state.cfg.audit.firings {
        FiringRecords::Each => report
            .firings
            .iter()
            .map(|f| json!({"request_id": id, "route": route, "firing": f}))
            .collect(),
        FiringRecords::PerRequest => per_request(&report.firings)
            .into_iter()
            .map(|s| json!({"request_id": id, "route": route, "firings": s}))
            .collect::<Vec<_>>(),
    };
    for mut detail in records {
        if state.cfg.audit.store_text {
            detail["text"] = json!(text);
        }
        audit
            .append(&caller.name, "firing", detail)
            .map_err(ServeError::from)?;
        if always {
            audit.sync().map_err(ServeError::from)?;
        }
    }
    if let Some(b) = &report.blocked {
        audit
            .append(
                &caller.name,
                "block",
                json!({"request_id": id, "route": route, "blocked": b}),
            )
            .map_err(ServeError::from)?;
    }
    audit.sync().map_err(ServeError::from)?;
    Ok(())
}

fn decisions(id: &str, report: &Report) -> Value {
    json!({"request_id": id, "firings": report.firings, "blocked": report.blocked})
}

fn headers_for(id: &str, report: Option<&Report>) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert("x-glassbox-request-id", v);
    }
    if let Some(r) = report {
        // A compact summary: the body has every firing.
        let mut by_monitor = std::collections::BTreeMap::<&str, usize>::new();
        for f in &r.firings {
            *by_monitor.entry(&f.monitor).or_default() += 1;
        }
        let summary =
            json!({"firings": by_monitor, "blocked": r.blocked.as_ref().map(|b| &b.monitor)});
        if let Ok(v) = HeaderValue::from_str(&summary.to_string()) {
            h.insert("x-glassbox-decisions", v);
        }
    }
    h
}

/// OpenAI's `finish_reason`: a block reads as a content filter.
fn finish_reason(report: &Report, finish: Finish) -> &'static str {
    match (report.blocked.is_some(), finish) {
        (true, _) => "content_filter",
        (false, Finish::Length) => "length",
        (false, Finish::Stop | Finish::Cancelled) => "stop",
    }
}

fn blocked_error(id: &str, report: &Report) -> Option<ApiError> {
    report.blocked.as_ref().map(|b| ApiError {
        status: StatusCode::FORBIDDEN,
        kind: "blocked",
        message: b.reason.clone(),
        extra: Some(decisions(id, report)),
        retry_after: None,
    })
}

fn tokenize(state: &AppState, text: &str, what: &str) -> ApiResult<Vec<u32>> {
    let ids = match state.model.tokenize(text, false) {
        // Longer than the model: the same answer as longer than the configured limit.
        Err(ModelError::InputTooLong { len, .. }) => return Err(too_long(state, len, what)),
        r => r.map_err(ServeError::from)?,
    };
    check_length(state, &ids, what)?;
    Ok(ids)
}

/// The most input tokens a request may have: the configured limit or the model's context.
fn input_limit(state: &AppState) -> usize {
    state
        .cfg
        .limits
        .max_input_tokens
        .min(state.model.config.max_positions)
}

fn too_long(state: &AppState, len: usize, what: &str) -> ApiError {
    let max = input_limit(state);
    ApiError::bad(format!(
        "{what} is {len} tokens; the limit is {max} (limits.max_input_tokens)"
    ))
}

pub(crate) fn check_length(state: &AppState, ids: &[u32], what: &str) -> ApiResult<()> {
    if ids.len() > input_limit(state) {
        return Err(too_long(state, ids.len(), what));
    }
    if ids.is_empty() {
        return Err(ApiError::bad(format!("{what} is empty")));
    }
    Ok(())
}

/// Runs model work on a blocking thread once a worker is free.
pub(crate) async fn on_worker<T: Send + 'static>(
    state: &Arc<AppState>,
    work: impl FnOnce(&AppState) -> Result<T> + Send + 'static,
) -> ApiResult<T> {
    state.metrics.waiting.inc();
    let permit = state.workers.acquire().await;
    state.metrics.waiting.dec();
    let _permit = permit.map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "shutting down",
        )
    })?;
    state.metrics.running.inc();
    let s = state.clone();
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || work(&s)).await;
    state
        .metrics
        .monitor_seconds
        .observe(started.elapsed().as_secs_f64());
    state.metrics.running.dec();
    out.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            e.to_string(),
        )
    })?
    .map_err(ApiError::from)
}

pub(crate) fn request_id(state: &AppState) -> String {
    format!(
        "req-{}-{}",
        state.started,
        state.next_id.fetch_add(1, Ordering::Relaxed)
    )
}

/// Times a handler and counts it by route and status.
async fn timed(
    state: &AppState,
    route: &'static str,
    f: impl std::future::Future<Output = ApiResult<Response>>,
) -> Response {
    let t = Instant::now();
    let resp = f.await.unwrap_or_else(IntoResponse::into_response);
    let secs = t.elapsed().as_secs_f64();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    tracing::info!(
        route,
        status = resp.status().as_u16(),
        request_id = %header("x-glassbox-request-id"),
        ms = secs * 1e3,
        decisions = %header("x-glassbox-decisions"),
        "request"
    );
    state
        .metrics
        .latency
        .with_label_values(&[route])
        .observe(secs);
    state
        .metrics
        .requests
        .with_label_values(&[route, resp.status().as_str()])
        .inc();
    resp
}

async fn embeddings(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: std::result::Result<Json<EmbeddingsRequest>, JsonRejection>,
) -> Response {
    timed(&state.clone(), "/v1/embeddings", async move {
        let caller = authorize(&state, &headers, Role::Viewer)?;
        let Json(req) = body?;
        let texts = match req.input {
            Input::One(t) => vec![t],
            Input::Many(v) => v,
        };
        if texts.is_empty() || texts.len() > state.cfg.limits.max_batch {
            return Err(ApiError::bad(format!(
                "input must hold 1 to {} texts (limits.max_batch)",
                state.cfg.limits.max_batch
            )));
        }
        if state.model.config.is_decoder() {
            return Err(ApiError::bad(
                "this server runs a decoder; use /v1/completions",
            ));
        }
        let ids = texts
            .iter()
            .enumerate()
            .map(|(i, t)| tokenize(&state, t, &format!("input {i}")))
            .collect::<ApiResult<Vec<_>>>()?;
        let n_tokens: usize = ids.iter().map(Vec::len).sum();
        let id = request_id(&state);
        let set = state.monitor_set();
        let rid = id.clone();
        let (vectors, report) = on_worker(&state, move |s| {
            infer::embed(&s.model, &set, s.alerts.as_ref(), &rid, &ids)
        })
        .await?;
        state
            .metrics
            .tokens
            .with_label_values(&["input"])
            .inc_by(n_tokens as u64);
        account(
            &state,
            &caller,
            &id,
            "/v1/embeddings",
            &texts.join("\n"),
            &report,
        )?;
        if let Some(e) = blocked_error(&id, &report) {
            return Ok((headers_for(&id, Some(&report)), e).into_response());
        }
        let data: Vec<Value> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v}))
            .collect();
        let body = json!({"object": "list", "data": data, "model": state.cfg.model,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
            "glassbox": decisions(&id, &report)});
        Ok((headers_for(&id, Some(&report)), Json(body)).into_response())
    })
    .await
}

async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: std::result::Result<Json<CompletionRequest>, JsonRejection>,
) -> Response {
    timed(&state.clone(), "/v1/completions", async move {
        let caller = authorize(&state, &headers, Role::Viewer)?;
        let Json(req) = body?;
        let top = match req.logprobs {
            None | Some(Logprobs::Flag(false)) => 0,
            Some(Logprobs::Flag(true)) => 1,
            Some(Logprobs::Count(n)) => n,
        };
        let cfg = req.params.config(&state.cfg.limits, top)?;
        let logprobs = req.logprobs.is_some() && top > 0;
        let ids = tokenize(&state, &req.prompt, "the prompt")?;
        complete(
            state,
            caller,
            req.prompt,
            ids,
            cfg,
            req.params.stream,
            logprobs,
            false,
        )
        .await
    })
    .await
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: std::result::Result<Json<ChatRequest>, JsonRejection>,
) -> Response {
    timed(&state.clone(), "/v1/chat/completions", async move {
        let caller = authorize(&state, &headers, Role::Viewer)?;
        let Json(req) = body?;
        if req.messages.is_empty() {
            return Err(ApiError::bad("messages is empty"));
        }
        let logprobs = matches!(req.logprobs, Some(Logprobs::Flag(true)));
        let top = if logprobs {
            req.top_logprobs.unwrap_or(0).max(1)
        } else {
            0
        };
        let cfg = req.params.config(&state.cfg.limits, top)?;
        let messages: Vec<Message> = req
            .messages
            .iter()
            .map(|m| Message::new(&m.role, &m.content))
            .collect();
        // The model's own template (its special tokens are in the text), or a plain transcript.
        let (prompt, ids) = state
            .model
            .chat_prompt(&messages, false)
            .map_err(|e| match e {
                ModelError::ChatTemplate(_) => ApiError::bad(e.to_string()),
                e => ServeError::from(e).into(),
            })?;
        check_length(&state, &ids, "the conversation")?;
        complete(
            state,
            caller,
            prompt,
            ids,
            cfg,
            req.params.stream,
            logprobs,
            true,
        )
        .await
    })
    .await
}

#[allow(clippy::too_many_arguments)]
async fn complete(
    state: Arc<AppState>,
    caller: Caller,
    prompt: String,
    ids: Vec<u32>,
    cfg: GenerateConfig,
    stream: bool,
    logprobs: bool,
    chat: bool,
) -> ApiResult<Response> {
    if !state.model.config.is_decoder() {
        return Err(ApiError::bad(
            "this server runs an encoder; use /v1/embeddings",
        ));
    }
    let id = request_id(&state);
    let set = state.monitor_set();
    let route = if chat {
        "/v1/chat/completions"
    } else {
        "/v1/completions"
    };
    let object = if chat {
        "chat.completion"
    } else {
        "text_completion"
    };
    let n_prompt = ids.len();
    let count = move |s: &AppState, generated: usize| {
        let tokens = &s.metrics.tokens;
        tokens.with_label_values(&["input"]).inc_by(n_prompt as u64);
        tokens
            .with_label_values(&["generated"])
            .inc_by(generated as u64);
    };
    if !stream {
        let rid = id.clone();
        let (g, report) = on_worker(&state, move |s| {
            infer::generate(
                &s.model,
                &set,
                s.alerts.as_ref(),
                &rid,
                &ids,
                &cfg,
                &mut |_, _| true,
            )
        })
        .await?;
        count(&state, g.tokens.len());
        account(&state, &caller, &id, route, &prompt, &report)?;
        if report.blocked.is_some() && g.tokens.is_empty() {
            if let Some(e) = blocked_error(&id, &report) {
                return Ok((headers_for(&id, Some(&report)), e).into_response());
            }
        }
        let finish = finish_reason(&report, g.finish);
        let mut choice = if chat {
            json!({"index": 0, "message": {"role": "assistant", "content": g.text}, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": g.text, "finish_reason": finish})
        };
        if logprobs {
            choice["logprobs"] = logprobs_json(&state.model, &g.tokens, chat);
        }
        let n = g.tokens.len();
        let body = json!({"id": id, "object": object, "model": state.cfg.model, "choices": [choice],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": n, "total_tokens": n_prompt + n},
            "glassbox": decisions(&id, &report)});
        return Ok((headers_for(&id, Some(&report)), Json(body)).into_response());
    }

    // Streaming: text goes out as server-sent events while the worker produces it (only text
    // that is final: no half characters, no start of a stop sequence); the last event carries
    // the finish reason and the decisions.
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    let s = state.clone();
    let rid = id.clone();
    tokio::spawn(async move {
        let model = s.model.clone();
        let chunk_tx = tx.clone();
        let rid2 = rid.clone();
        let result = on_worker(&s, move |st| {
            infer::generate(
                &model,
                &set,
                st.alerts.as_ref(),
                &rid2,
                &ids,
                &cfg,
                &mut |c, text| {
                    let mut choice = if chat {
                        json!({"index": 0, "delta": {"content": text}})
                    } else {
                        json!({"index": 0, "text": text})
                    };
                    if logprobs {
                        choice["logprobs"] = logprobs_json(&model, std::slice::from_ref(c), chat);
                    }
                    let object = if chat {
                        "chat.completion.chunk"
                    } else {
                        "text_completion"
                    };
                    let body = json!({"id": rid2, "object": object, "choices": [choice]});
                    chunk_tx
                        .blocking_send(Event::default().data(body.to_string()))
                        .is_ok()
                },
            )
        })
        .await;
        // The text already went out; an audit failure still ends the stream with an error
        // instead of a normal finish, so the client knows the record is missing.
        let result = result.and_then(|(g, report)| {
            count(&s, g.tokens.len());
            account(&s, &caller, &rid, route, &prompt, &report).map(|_| (g, report))
        });
        let last = match result {
            Ok((g, report)) => {
                let finish = finish_reason(&report, g.finish);
                json!({"id": rid, "object": object, "choices": [{"index": 0, "finish_reason": finish}],
                       "glassbox": decisions(&rid, &report)})
            }
            Err(e) => json!({"error": {"type": e.kind, "message": e.message}}),
        };
        let _ = tx.send(Event::default().data(last.to_string())).await;
        let _ = tx.send(Event::default().data("[DONE]")).await;
    });
    let stream = ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Ok((
        headers_for(&id, None),
        Sse::new(stream).keep_alive(KeepAlive::default()),
    )
        .into_response())
}

// ---- monitors and events -------------------------------------------------------------------

async fn list_monitors(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    authorize_as(&state, &headers, Role::Viewer, false)?;
    let list = state
        .monitors
        .read()
        .map(|g| g.0.clone())
        .unwrap_or_default();
    Ok(Json(json!({"monitors": list})))
}

/// Replaces the monitor set under the write lock and records who did it.
fn change_monitors(
    state: &AppState,
    caller: &Caller,
    event: &str,
    edit: impl FnOnce(&mut Vec<MonitorConfig>) -> ApiResult<Value>,
) -> ApiResult<Value> {
    let mut guard = state.monitors.write().map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "monitor lock poisoned",
        )
    })?;
    let mut list = guard.0.clone();
    let detail = edit(&mut list)?;
    let set = MonitorSet::new(&state.readers, &list)?;
    state.audit_change(&caller.name, event, detail.clone(), || {
        *guard = (list, Arc::new(set));
    })?;
    Ok(detail)
}

async fn create_monitor(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: std::result::Result<Json<MonitorConfig>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let caller = authorize(&state, &headers, Role::Operator)?;
    let Json(m) = body?;
    let detail = change_monitors(&state, &caller, "monitor.create", |list| {
        if list.iter().any(|x| x.name == m.name) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("a monitor named `{}` exists; delete it first", m.name),
            ));
        }
        list.push(m.clone());
        Ok(json!({"monitor": m}))
    })?;
    Ok((StatusCode::CREATED, Json(detail)))
}

async fn delete_monitor(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let caller = authorize(&state, &headers, Role::Operator)?;
    let detail = change_monitors(&state, &caller, "monitor.delete", |list| {
        let at = list.iter().position(|x| x.name == name).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no monitor is named `{name}`"),
            )
        })?;
        Ok(json!({"monitor": list.remove(at)}))
    })?;
    Ok(Json(detail))
}

async fn events(State(state): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult<Response> {
    authorize_as(&state, &headers, Role::Viewer, false)?;
    let stream = BroadcastStream::new(state.events.subscribe()).filter_map(|m| {
        // A slow reader that lagged behind misses events rather than slowing the server.
        m.ok()
            .map(|(kind, data)| Ok::<_, Infallible>(Event::default().event(kind).data(data)))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Action;

    #[test]
    fn per_request_records_sum_each_monitors_firings_per_input() {
        let f = |monitor: &str, input, position, value| Firing {
            monitor: monitor.into(),
            input,
            position,
            value,
            action: Action::Log,
        };
        let firings = [
            f("a", 0, 3, 0.5),
            f("a", 0, 4, 0.9),
            f("b", 0, 4, 2.0),
            f("a", 0, 9, 0.7),
            f("a", 1, 2, 0.6),
        ];
        let s = per_request(&firings);
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(
            (
                &s[0]["tokens"],
                &s[0]["first_position"],
                &s[0]["last_position"]
            ),
            (&json!(3), &json!(3), &json!(9))
        );
        assert!((s[0]["max_value"].as_f64().unwrap() - 0.9).abs() < 1e-6);
        assert_eq!(
            (&s[1]["monitor"], &s[1]["tokens"]),
            (&json!("b"), &json!(1))
        );
        assert_eq!((&s[2]["input"], &s[2]["tokens"]), (&json!(1), &json!(1)));
    }
}
