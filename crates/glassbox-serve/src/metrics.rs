//! Prometheus metrics: requests, tokens, latency, rule firings, actions, queue depths.

use prometheus::{
    Counter, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

use crate::webhook::AlertStats;

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub tokens: IntCounterVec,
    pub firings: IntCounterVec,
    pub actions: IntCounterVec,
    pub waiting: IntGauge,
    pub running: IntGauge,
    pub monitor_seconds: Histogram,
    /// Seconds inside the monitors' hooks, summed over requests (their share of model time).
    pub monitor_time: Counter,
    /// Requests refused because their key spent its budget (no key label: names stay out of
    /// metrics).
    pub rate_limited: IntCounter,
    alerts_queued: IntGauge,
    alerts: IntCounterVec,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new_custom(Some("glassbox".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "HTTP requests by route and status"),
            &["route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new("request_seconds", "Request latency by route").buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["route"],
        )?;
        let tokens = IntCounterVec::new(
            Opts::new(
                "tokens_total",
                "Tokens read (input) and produced (generated)",
            ),
            &["kind"],
        )?;
        let firings = IntCounterVec::new(
            Opts::new("rule_firings_total", "Token-level rule firings by monitor"),
            &["monitor"],
        )?;
        let actions = IntCounterVec::new(
            Opts::new("actions_total", "Actions taken by type"),
            &["action"],
        )?;
        let waiting = IntGauge::new("requests_waiting", "Requests queued for a model worker")?;
        let running = IntGauge::new("requests_running", "Requests on a model worker")?;
        let monitor_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "model_seconds",
                "Model time per request (monitors included)",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16)?),
        )?;
        let monitor_time = Counter::new(
            "monitor_seconds_total",
            "Seconds spent in the monitors' hooks (dictionaries, probes, rules, edits)",
        )?;
        let rate_limited = IntCounter::new(
            "rate_limited_total",
            "Requests refused with 429 because their key spent its requests per minute",
        )?;
        let alerts_queued = IntGauge::new("alert_queue_depth", "Alerts waiting for the webhook")?;
        let alerts = IntCounterVec::new(
            Opts::new(
                "alerts_total",
                "Alerts by outcome (delivered, failed, dropped)",
            ),
            &["outcome"],
        )?;
        for c in [&requests, &tokens, &firings, &actions, &alerts] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(waiting.clone()))?;
        registry.register(Box::new(running.clone()))?;
        registry.register(Box::new(monitor_seconds.clone()))?;
        registry.register(Box::new(monitor_time.clone()))?;
        registry.register(Box::new(rate_limited.clone()))?;
        registry.register(Box::new(alerts_queued.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            latency,
            tokens,
            firings,
            actions,
            waiting,
            running,
            monitor_seconds,
            monitor_time,
            rate_limited,
            alerts_queued,
            alerts,
        })
    }

    /// Every metric's current values (the console's KPI page reads them).
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }

    /// The text exposition, with the alert queue read at scrape time.
    pub fn render(&self, alerts: Option<&AlertStats>) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(a) = alerts {
            self.alerts_queued.set(a.queued.load(Relaxed) as i64);
            for (outcome, n) in [
                ("delivered", &a.delivered),
                ("failed", &a.failed),
                ("dropped", &a.dropped),
            ] {
                let c = self.alerts.with_label_values(&[outcome]);
                c.inc_by(n.load(Relaxed).saturating_sub(c.get()));
            }
        }
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}
