//! Listening: plain HTTP, or HTTPS through rustls when `[tls]` names a certificate; a graceful
//! shutdown on Ctrl-C / SIGTERM; and reloading the keys and the certificate from the deployment
//! file without a restart (SIGHUP or `POST /v1/keys/reload`), each reload audited.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use axum_server::tls_rustls::RustlsConfig;
use serde_json::{json, Value};

use crate::auth::Role;
use crate::config::{Config, TlsConfig};
use crate::error::{Result, ServeError};
use crate::server::{authorize, router, ApiResult, AppState};

/// How long requests in flight may take to finish once a shutdown starts.
const DRAIN: Duration = Duration::from_secs(30);

/// Serves until Ctrl-C / SIGTERM, finishing the requests in flight.
pub async fn serve(
    state: Arc<AppState>,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> Result<()> {
    let listen = state.cfg.listen;
    let listener = std::net::TcpListener::bind(listen)
        .and_then(|l| l.set_nonblocking(true).map(|_| l))
        .map_err(|e| ServeError::Io(format!("cannot listen on {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServeError::Io(e.to_string()))?;
    let tls = match &state.cfg.tls {
        Some(t) => Some(certificate(t).await?),
        None => None,
    };
    if let Some(t) = &tls {
        let _ = state.tls.set(t.clone());
    }
    // Registered before the address is announced: an early SIGHUP must not kill the server.
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let hup = signal(SignalKind::hangup())
            .map_err(|e| ServeError::Io(format!("cannot handle SIGHUP: {e}")))?;
        tokio::spawn(reload_on_hangup(state.clone(), hup));
    }
    on_ready(addr);
    let app = router(state);
    match tls {
        None => {
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(|e| ServeError::Io(e.to_string()))?;
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown())
                .await
        }
        Some(config) => {
            let handle = axum_server::Handle::new();
            let stop = handle.clone();
            tokio::spawn(async move {
                shutdown().await;
                stop.graceful_shutdown(Some(DRAIN));
            });
            axum_server::from_tcp_rustls(listener, config)
                .handle(handle)
                .serve(app.into_make_service())
                .await
        }
    }
    .map_err(|e| ServeError::Io(e.to_string()))
}

/// Reads a certificate chain and key into a server configuration (TLS 1.2 and 1.3).
async fn certificate(t: &TlsConfig) -> Result<RustlsConfig> {
    // ring is the one provider compiled in; installing it explicitly keeps a dependency that
    // enables another from making rustls refuse to choose.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let name = |p: &Path| p.display().to_string();
    for p in [&t.cert, &t.key] {
        if !p.is_file() {
            return Err(ServeError::Config(format!(
                "[tls]: {} is not a file (cert and key are PEM files)",
                name(p)
            )));
        }
    }
    RustlsConfig::from_pem_file(&t.cert, &t.key)
        .await
        .map_err(|e| {
            ServeError::Config(format!(
                "[tls]: cannot use certificate {} with key {}: {e}",
                name(&t.cert),
                name(&t.key)
            ))
        })
}

/// Resolves on Ctrl-C or SIGTERM (what `docker stop` and systemd send).
async fn shutdown() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// SIGHUP re-reads keys and certificate, as `kill -HUP` from a rotation script expects.
#[cfg(unix)]
async fn reload_on_hangup(state: Arc<AppState>, mut hup: tokio::signal::unix::Signal) {
    while hup.recv().await.is_some() {
        match reload(&state, "SIGHUP").await {
            Ok(d) => tracing::info!(
                keys = d["keys"].as_array().map_or(0, Vec::len),
                "reloaded keys and certificate"
            ),
            Err(e) => tracing::error!(
                error = %e,
                "reload refused; the keys and certificate in force stay"
            ),
        }
    }
}

/// Re-reads the deployment file and puts its keys (and certificate) in force. The whole file
/// must still be valid, and the change is written to the audit log before it takes effect;
/// on any error nothing changes.
pub async fn reload(state: &AppState, actor: &str) -> Result<Value> {
    let Some(path) = state.cfg.source.clone() else {
        return Err(ServeError::Config(
            "this server was not started from a deployment file: nothing to reload".into(),
        ));
    };
    let file = tokio::task::spawn_blocking(move || Config::load(&path))
        .await
        .map_err(|e| ServeError::Io(e.to_string()))??;
    let certificate =
        match (state.tls.get(), &file.tls) {
            (Some(_), Some(t)) => Some(certificate(t).await?),
            (None, None) => None,
            _ => return Err(ServeError::Config(
                "[tls] was added or removed: restart the server to change between HTTP and HTTPS"
                    .into(),
            )),
        };
    let before = state.keys.configs();
    let names = |keys: &[crate::config::KeyConfig]| -> Vec<String> {
        keys.iter().map(|k| k.name.clone()).collect()
    };
    let (old, new) = (names(&before), names(&file.keys));
    let changed: Vec<&String> = file
        .keys
        .iter()
        .filter(|k| {
            before.iter().any(|b| {
                b.name == k.name
                    && (b.sha256 != k.sha256
                        || b.role != k.role
                        || b.requests_per_minute != k.requests_per_minute)
            })
        })
        .map(|k| &k.name)
        .collect();
    let detail = json!({
        "source": state.cfg.source,
        "keys": file.keys.iter().map(|k| json!({"name": k.name, "role": k.role})).collect::<Vec<_>>(),
        "added": new.iter().filter(|n| !old.contains(n)).collect::<Vec<_>>(),
        "removed": old.iter().filter(|n| !new.contains(n)).collect::<Vec<_>>(),
        "changed": changed,
        "certificate": certificate.is_some(),
    });
    state.audit_change(actor, "keys.reload", detail.clone(), || {
        state.keys.replace(&file.keys);
    })?;
    if let (Some(served), Some(fresh)) = (state.tls.get(), certificate) {
        served.reload_from_config(fresh.get_inner());
    }
    Ok(detail)
}

/// `POST /v1/keys/reload` (admins).
pub(crate) async fn reload_keys(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let caller = authorize(&state, &headers, Role::Admin)?;
    Ok(Json(reload(&state, &caller.name).await?))
}
