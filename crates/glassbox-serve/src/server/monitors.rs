//! Monitor management (list, create, delete: audited) and the live event stream.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt;

use crate::auth::{Caller, Role};
use crate::config::MonitorConfig;
use crate::monitor::MonitorSet;

use super::{authorize, authorize_as, ApiError, ApiResult, AppState};

/// The answer of `GET /v1/monitors`.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct MonitorList {
    pub monitors: Vec<MonitorConfig>,
}

/// The answer of `POST /v1/monitors` (the monitor added) and of `DELETE /v1/monitors/{name}`
/// (the monitor removed); also the audit record's detail.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct MonitorChange {
    pub monitor: MonitorConfig,
}

pub(super) async fn list_monitors(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> ApiResult<Json<MonitorList>> {
    authorize_as(&state, &headers, Role::Viewer, false)?;
    let monitors = state
        .monitors
        .read()
        .map(|g| g.0.clone())
        .unwrap_or_default();
    Ok(Json(MonitorList { monitors }))
}

/// Replaces the monitor set under the write lock and records who did it.
fn change_monitors(
    state: &AppState,
    caller: &Caller,
    event: &str,
    edit: impl FnOnce(&mut Vec<MonitorConfig>) -> ApiResult<MonitorChange>,
) -> ApiResult<MonitorChange> {
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
    let record = serde_json::to_value(&detail).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            e.to_string(),
        )
    })?;
    state.audit_change(&caller.name, event, record, || {
        *guard = (list, Arc::new(set));
    })?;
    Ok(detail)
}

pub(super) async fn create_monitor(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: std::result::Result<Json<MonitorConfig>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<MonitorChange>)> {
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
        Ok(MonitorChange { monitor: m.clone() })
    })?;
    Ok((StatusCode::CREATED, Json(detail)))
}

pub(super) async fn delete_monitor(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<MonitorChange>> {
    let caller = authorize(&state, &headers, Role::Operator)?;
    let detail = change_monitors(&state, &caller, "monitor.delete", |list| {
        let at = list.iter().position(|x| x.name == name).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no monitor is named `{name}`"),
            )
        })?;
        Ok(MonitorChange {
            monitor: list.remove(at),
        })
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
