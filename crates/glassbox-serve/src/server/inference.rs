//! The inference routes: `/v1/embeddings`, `/v1/completions`, `/v1/chat/completions` (SSE
//! with `stream`), each with the monitors attached and their decisions in the answer.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use glassbox_model::chat::Message;
use glassbox_model::generate::{Finish, GenerateConfig};
use glassbox_model::ModelError;
use serde::Serialize;
use serde_json::{json, Value};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::auth::{Caller, Role};
use crate::config::{Action, FiringRecords, Fsync};
use crate::error::{Result, ServeError};
use crate::infer::{self, Report};
use crate::input::{Prepared, TextSignals};
use crate::monitor::{Evidence, Firing};

use super::openai::{
    ChatChoice, ChatRequest, ChoiceLayout, CompletionChoice, CompletionRequest, CompletionResponse,
    Decisions, Embedding, EmbeddingsRequest, EmbeddingsResponse, ErrorDetail, ErrorResponse,
    FinishReason, Input, Logprobs, Usage,
};
use super::{authorize, ApiError, ApiResult, AppState};

/// A request's firings of one monitor on one input, summed (`audit.firings = "per-request"`,
/// and the console's request events).
#[derive(Debug, Serialize)]
struct FiringSummary<'a> {
    monitor: &'a str,
    input: usize,
    action: Action,
    /// Tokens on which the rule held.
    tokens: usize,
    first_position: usize,
    last_position: usize,
    max_value: f32,
    /// A `sentences` rule's: the piece that gave its score.
    #[serde(skip_serializing_if = "Option::is_none")]
    evidence: Option<&'a Evidence>,
}

/// A request's firings summed per monitor and input, in order of first firing.
fn per_request(firings: &[Firing]) -> Vec<FiringSummary<'_>> {
    let mut by: Vec<FiringSummary> = Vec::new();
    for f in firings {
        match by
            .iter_mut()
            .find(|s| s.monitor == f.monitor && s.input == f.input)
        {
            Some(s) => {
                s.tokens += 1;
                s.last_position = f.position;
                s.max_value = s.max_value.max(f.value);
            }
            None => by.push(FiringSummary {
                monitor: &f.monitor,
                input: f.input,
                action: f.action,
                tokens: 1,
                first_position: f.position,
                last_position: f.position,
                max_value: f.value,
                evidence: f.evidence.as_ref(),
            }),
        }
    }
    by
}

/// Drops the quoted text from a firing's (or a firing summary's) evidence, keeping its place
/// and kind.
fn without_evidence_text(firing: &mut Value) {
    if let Some(e) = firing.get_mut("evidence").and_then(Value::as_object_mut) {
        e.remove("text");
    }
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
    // The caller's words leave the request (live events, audit records) only where the
    // deployment stores texts; a firing's evidence keeps its place and kind either way.
    let keep_text = state.cfg.audit.store_text;
    for f in &report.firings {
        state.metrics.firings.with_label_values(&[&f.monitor]).inc();
        let action = format!("{:?}", f.action).to_lowercase();
        state.metrics.actions.with_label_values(&[&action]).inc();
        let mut event = json!({"request_id": id, "route": route, "firing": f});
        if !keep_text {
            without_evidence_text(&mut event["firing"]);
        }
        let _ = state.events.send(("firing", event.to_string()));
    }
    let mut summaries = json!(per_request(&report.firings));
    if !keep_text {
        summaries
            .as_array_mut()
            .into_iter()
            .flatten()
            .for_each(without_evidence_text);
    }
    let _ = state.events.send((
        "request",
        json!({"request_id": id, "route": route, "key": caller.name,
               "request": {"firings": summaries,
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
        if keep_text {
            detail["text"] = json!(text);
        } else {
            for key in ["firing", "firings"] {
                if let Some(f) = detail.get_mut(key) {
                    without_evidence_text(f);
                }
            }
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
fn finish_reason(report: &Report, finish: Finish) -> FinishReason {
    match (report.blocked.is_some(), finish) {
        (true, _) => FinishReason::ContentFilter,
        (false, Finish::Length) => FinishReason::Length,
        (false, Finish::Stop | Finish::Cancelled) => FinishReason::Stop,
    }
}

fn blocked_error(id: &str, report: &Report) -> Option<ApiError> {
    report.blocked.as_ref().map(|b| ApiError {
        status: StatusCode::FORBIDDEN,
        kind: "blocked",
        message: b.reason.clone(),
        decisions: Some(Box::new(Decisions::new(id, report))),
        retry_after: None,
    })
}

/// `text` prepared as the deployment says (its signals read) and tokenized.
fn tokenize<'a>(
    state: &AppState,
    text: &'a str,
    what: &str,
) -> ApiResult<(Vec<u32>, Prepared<'a>)> {
    let prepared = state.cfg.input.prepare(text);
    let ids = match state.model.tokenize(&prepared.text, false) {
        // Longer than the model: the same answer as longer than the configured limit.
        Err(ModelError::InputTooLong { len, .. }) => return Err(too_long(state, len, what)),
        r => r.map_err(ServeError::from)?,
    };
    check_length(state, &ids, what)?;
    Ok((ids, prepared))
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

pub(super) async fn embeddings(
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
        let (ids, prepared): (Vec<_>, Vec<_>) = texts
            .iter()
            .enumerate()
            .map(|(i, t)| tokenize(&state, t, &format!("input {i}")))
            .collect::<ApiResult<Vec<_>>>()?
            .into_iter()
            .unzip();
        let signals: Vec<TextSignals> = prepared.iter().map(|p| p.signals).collect();
        // The texts as the model reads them (folded where the deployment folds lookalikes).
        let read: Vec<String> = prepared.into_iter().map(|p| p.text.into_owned()).collect();
        let n_tokens: usize = ids.iter().map(Vec::len).sum();
        let id = request_id(&state);
        let set = state.monitor_set();
        let rid = id.clone();
        let (vectors, report) = on_worker(&state, move |s| {
            let read: Vec<&str> = read.iter().map(String::as_str).collect();
            infer::embed(
                &s.model,
                &set,
                s.alerts.as_ref(),
                &rid,
                &ids,
                &read,
                &signals,
            )
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
        let body = EmbeddingsResponse {
            object: "list",
            data: vectors
                .into_iter()
                .enumerate()
                .map(|(index, embedding)| Embedding {
                    object: "embedding",
                    index,
                    embedding,
                })
                .collect(),
            model: state.cfg.model.clone(),
            usage: Usage::new(n_tokens, None),
            glassbox: Decisions::new(&id, &report),
        };
        Ok((headers_for(&id, Some(&report)), Json(body)).into_response())
    })
    .await
}

pub(super) async fn completions(
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
        let (ids, prepared) = tokenize(&state, &req.prompt, "the prompt")?;
        let signals = prepared.signals;
        complete::<CompletionChoice>(
            state,
            caller,
            req.prompt,
            infer::Prompt::plain(ids).with_signals(signals),
            cfg,
            req.params.stream,
            logprobs,
        )
        .await
    })
    .await
}

pub(super) async fn chat_completions(
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
        // Text signals are read from the caller's messages, not an operator's system turns.
        let mut signals = TextSignals::default();
        let messages: Vec<Message> = req
            .messages
            .iter()
            .map(|m| {
                let prepared = state.cfg.input.prepare(&m.content);
                if m.role != "system" {
                    signals += prepared.signals;
                }
                Message::new(&m.role, &prepared.text)
            })
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
        let ids = infer::Prompt::chat(ids, &messages).with_signals(signals);
        complete::<ChatChoice>(state, caller, prompt, ids, cfg, req.params.stream, logprobs).await
    })
    .await
}

/// Generates and answers in layout `L` (chat or completions): one JSON answer, or server-sent
/// events with `stream`. `text` is the prompt as the audit log records it.
async fn complete<L: ChoiceLayout>(
    state: Arc<AppState>,
    caller: Caller,
    text: String,
    prompt: infer::Prompt,
    cfg: GenerateConfig,
    stream: bool,
    logprobs: bool,
) -> ApiResult<Response> {
    let route = L::ROUTE;
    if !state.model.config.is_decoder() {
        return Err(ApiError::bad(
            "this server runs an encoder; use /v1/embeddings",
        ));
    }
    let id = request_id(&state);
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let set = state.monitor_set();
    let n_prompt = prompt.ids.len();
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
                &prompt,
                &cfg,
                &mut |_, _| true,
            )
        })
        .await?;
        count(&state, g.tokens.len());
        account(&state, &caller, &id, route, &text, &report)?;
        if report.blocked.is_some() && g.tokens.is_empty() {
            if let Some(e) = blocked_error(&id, &report) {
                return Ok((headers_for(&id, Some(&report)), e).into_response());
            }
        }
        let finish = finish_reason(&report, g.finish);
        let n = g.tokens.len();
        let logprobs = logprobs.then_some((&*state.model, g.tokens.as_slice()));
        let body = CompletionResponse {
            id: id.clone(),
            object: L::OBJECT,
            created,
            model: state.cfg.model.clone(),
            choices: vec![L::whole(g.text, logprobs, finish)],
            usage: Some(Usage::new(n_prompt, Some(n))),
            glassbox: Some(Decisions::new(&id, &report)),
        };
        return Ok((headers_for(&id, Some(&report)), Json(body)).into_response());
    }

    // Streaming: text goes out as server-sent events while the worker produces it (only text
    // that is final: no half characters, no start of a stop sequence); the last event carries
    // the finish reason and the decisions.
    let chunk = move |s: &AppState, id: &str, choice: L, glassbox: Option<Decisions>| {
        let body = CompletionResponse {
            id: id.to_string(),
            object: L::CHUNK_OBJECT,
            created,
            model: s.cfg.model.clone(),
            choices: vec![choice],
            usage: None,
            glassbox,
        };
        Event::default().json_data(body)
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    let s = state.clone();
    let rid = id.clone();
    tokio::spawn(async move {
        if let Some(Ok(event)) = L::start().map(|first| chunk(&s, &rid, first, None)) {
            let _ = tx.send(event).await;
        }
        let model = s.model.clone();
        let chunk_tx = tx.clone();
        let rid2 = rid.clone();
        let result = on_worker(&s, move |st| {
            infer::generate(
                &model,
                &set,
                st.alerts.as_ref(),
                &rid2,
                &prompt,
                &cfg,
                &mut |c, text| {
                    let logprobs = logprobs.then_some((&*model, std::slice::from_ref(c)));
                    match chunk(st, &rid2, L::piece(text.to_string(), logprobs), None) {
                        Ok(event) => chunk_tx.blocking_send(event).is_ok(),
                        Err(_) => false,
                    }
                },
            )
        })
        .await;
        // The text already went out; an audit failure still ends the stream with an error
        // instead of a normal finish, so the client knows the record is missing.
        let result = result.and_then(|(g, report)| {
            count(&s, g.tokens.len());
            account(&s, &caller, &rid, route, &text, &report).map(|_| (g, report))
        });
        let last = match result {
            Ok((g, report)) => chunk(
                &s,
                &rid,
                L::end(finish_reason(&report, g.finish)),
                Some(Decisions::new(&rid, &report)),
            ),
            Err(e) => Event::default().json_data(ErrorResponse {
                error: ErrorDetail {
                    kind: e.kind,
                    message: e.message,
                },
                glassbox: None,
            }),
        };
        if let Ok(event) = last {
            let _ = tx.send(event).await;
        }
        let _ = tx.send(Event::default().data("[DONE]")).await;
    });
    let stream = ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Ok((
        headers_for(&id, None),
        Sse::new(stream).keep_alive(KeepAlive::default()),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_request_records_sum_each_monitors_firings_per_input() {
        let f = |monitor: &str, input, position, value| Firing {
            monitor: monitor.into(),
            input,
            position,
            value,
            action: Action::Log,
            evidence: None,
        };
        let firings = [
            f("a", 0, 3, 0.5),
            f("a", 0, 4, 0.9),
            f("b", 0, 4, 2.0),
            f("a", 0, 9, 0.7),
            f("a", 1, 2, 0.6),
        ];
        let s = per_request(&firings);
        let got: Vec<_> = s
            .iter()
            .map(|x| {
                (
                    x.monitor,
                    x.input,
                    x.tokens,
                    x.first_position,
                    x.last_position,
                )
            })
            .collect();
        assert_eq!(
            got,
            [("a", 0, 3, 3, 9), ("b", 0, 1, 4, 4), ("a", 1, 1, 2, 2)],
            "{s:?}"
        );
        assert_eq!(s[0].max_value, 0.9);
    }
}
