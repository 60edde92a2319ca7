//! Alert delivery: a bounded queue drained by one thread that POSTs each alert to the webhook,
//! retrying with back-off. Serving only ever `try_send`s, so a slow or dead webhook costs a
//! dropped alert (counted), never a blocked request.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::config::AlertConfig;

#[derive(Default)]
pub struct AlertStats {
    pub queued: AtomicUsize,
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
}

pub struct Alerts {
    tx: SyncSender<Value>,
    pub stats: Arc<AlertStats>,
}

impl Alerts {
    pub fn start(cfg: &AlertConfig) -> crate::error::Result<Alerts> {
        let (tx, rx) = sync_channel::<Value>(cfg.queue.max(1));
        let stats = Arc::new(AlertStats::default());
        let (s, cfg) = (stats.clone(), cfg.clone());
        std::thread::Builder::new()
            .name("glassbox-alerts".into())
            .spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .timeout_global(Some(Duration::from_millis(cfg.timeout_ms)))
                    .build()
                    .into();
                for alert in rx {
                    s.queued.fetch_sub(1, Ordering::Relaxed);
                    let mut attempt = 0;
                    loop {
                        match agent.post(&cfg.webhook).send_json(&alert) {
                            Ok(_) => {
                                s.delivered.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Err(e) if attempt >= cfg.retries => {
                                tracing::warn!(webhook = %origin(&cfg.webhook), error = %e, "alert not delivered");
                                s.failed.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Err(_) => {
                                std::thread::sleep(Duration::from_millis(200 << attempt.min(5)));
                                attempt += 1;
                            }
                        }
                    }
                }
            })
            .map_err(|e| crate::error::ServeError::Io(format!("cannot start the alert thread: {e}")))?;
        Ok(Alerts { tx, stats })
    }

    /// Queues an alert; drops it (counted) when the queue is full.
    pub fn send(&self, alert: Value) {
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(alert)
        {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A webhook URL without its path, which often carries a secret token (for logs and the
/// effective configuration).
pub(crate) fn origin(url: &str) -> String {
    let origin = url
        .find("://")
        .map(|s| s + 3)
        .and_then(|s| url[s..].find('/').map(|p| &url[..s + p]))
        .unwrap_or(url);
    format!("{origin}/***")
}
