//! Glassbox layer 5: serving a model with monitors inside it. [`config`] reads `deploy.toml`,
//! [`rules`] is the per-token rule language, [`monitor`] runs rules and interventions at the
//! dictionaries' hooks, [`infer`] drives the model for a request, [`server`] is the HTTP API
//! (OpenAI-compatible inference, monitors, events) with [`auth`] (keys, roles, rate limits),
//! [`metrics`], [`webhook`] (alerts) and [`openapi`], [`transport`] listens (HTTP or TLS) and
//! reloads keys and certificates, and [`console`] is the web console; the audit log lives in
//! `glassbox_store::audit`.
//!
//! A rule is parsed once and stepped per token; a windowed mean needs consistent evidence,
//! not one spike:
//!
//! ```
//! use glassbox_serve::rules::{Rule, RuleState};
//! let rule = Rule::parse("mean(feature 7, 3) > 1.0")?;
//! let mut state = RuleState::default();
//! // One token at 2.0 stays under the 3-token mean's threshold; three at 1.5 do not.
//! let activations = [0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 1.5, 1.5, 1.5];
//! let fired: Vec<bool> = activations
//!     .iter()
//!     .map(|&a| rule.step(&mut state, a).1)
//!     .collect();
//! assert_eq!(fired.iter().position(|&f| f), Some(8));
//! # Ok::<(), String>(())
//! ```

pub mod auth;
pub mod config;
pub mod console;
pub mod encoded;
pub mod error;
pub mod fold;
pub mod infer;
pub mod input;
pub mod metrics;
pub mod monitor;
pub mod openapi;
pub mod rules;
pub mod server;
pub mod transport;
pub mod webhook;

pub use error::{Result, ServeError};
