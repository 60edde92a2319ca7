//! Glassbox layer 5: serving a model with monitors inside it. `config` reads `deploy.toml`,
//! `rules` is the per-token rule language, `monitor` runs rules and interventions at the
//! dictionaries' hooks, `infer` drives the model for a request, `server` is the HTTP API with
//! `auth` (keys, roles, rate limits), `metrics`, `webhook` (alerts) and `openapi`, `transport`
//! listens (HTTP or TLS) and reloads keys and certificates, and `console` is the web console;
//! the audit log lives in `glassbox_store::audit`.

pub mod auth;
pub mod config;
pub mod console;
pub mod error;
pub mod infer;
pub mod metrics;
pub mod monitor;
pub mod openapi;
pub mod rules;
pub mod server;
pub mod transport;
pub mod webhook;

pub use error::{Result, ServeError};
