//! Monitor management (list, create, delete: audited) and the live event stream.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt;

use crate::auth::{Caller, Role};
use crate::config::MonitorConfig;
use crate::monitor::MonitorSet;

use super::{authorize, authorize_as, ApiError, ApiResult, AppState};

pub(super) async fn list_monitors(
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

pub(super) async fn create_monitor(
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

pub(super) async fn delete_monitor(
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

pub(super) async fn events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> ApiResult<Response> {
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
