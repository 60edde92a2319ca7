//! `deploy.toml`: what a server serves, which monitors watch it, where alerts and the audit
//! log go, and who may do what. See `deploy.example.toml` in the repository.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::auth::Role;
use crate::error::{Result, ServeError};
use crate::rules::Rule;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// A packaged model name (`minilm`) or a model directory.
    pub model: String,
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub input: InputConfig,
    #[serde(default, rename = "dictionary")]
    pub dictionaries: Vec<DictionaryConfig>,
    #[serde(default, rename = "probe")]
    pub probes: Vec<ProbeConfig>,
    #[serde(default, rename = "monitor")]
    pub monitors: Vec<MonitorConfig>,
    #[serde(default)]
    pub alert: Option<AlertConfig>,
    pub audit: AuditConfig,
    /// API keys; with none, the server is open (and says so at start).
    #[serde(default, rename = "key")]
    pub keys: Vec<KeyConfig>,
    /// What the web console at /console shows besides the live server.
    #[serde(default)]
    pub console: ConsoleConfig,
    /// Serve HTTPS with this certificate (else plain HTTP: keep it on loopback or behind a
    /// TLS-terminating proxy).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The file this was loaded from: keys and certificates are re-read from it on reload.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Feature catalogs to browse (directories from `glassbox catalog build`).
    #[serde(rename = "catalog")]
    pub catalogs: Vec<CatalogRef>,
    /// A directory of attribution graphs (`glassbox graph --out DIR`'s JSON files).
    pub graphs: Option<PathBuf>,
    /// A directory of reports: `glassbox scan --out DIR/NAME` and `glassbox redteam --out
    /// DIR/NAME` write one each.
    pub reports: Option<PathBuf>,
    /// Minutes a console sign-in lasts.
    pub session_minutes: u64,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            catalogs: Vec::new(),
            graphs: None,
            reports: None,
            session_minutes: 480,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogRef {
    /// The name pages and links use (e.g. the dictionary's: `l3`).
    pub name: String,
    /// The catalog directory (its catalog.db and search index).
    pub path: PathBuf,
    /// A catalog kept in PostgreSQL (`glassbox catalog build --store URL`): its URL, e.g.
    /// `postgres://user@host/db`; `path` then holds only the search index.
    #[serde(default)]
    pub store: Option<String>,
}

/// How a text is prepared before the model and its monitors read it.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// Fold lookalikes to the Latin letters they imitate (Cyrillic and Greek homoglyphs inside
    /// Latin words, fullwidth and mathematical letters, zero-width characters inside words;
    /// see `glassbox_serve::fold`), so that monitors read what a person reads. The audit log
    /// keeps the text as sent.
    pub fold_lookalikes: bool,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Most input tokens of one text (longer inputs are refused, never truncated silently).
    pub max_input_tokens: usize,
    /// Most tokens one completion may generate.
    pub max_new_tokens: usize,
    /// Texts in one embeddings request.
    pub max_batch: usize,
    /// Requests computed at once (the model runs on blocking threads); others queue.
    pub workers: usize,
    /// Requests per minute each key may make (a key's own `requests_per_minute` overrides
    /// it); beyond it the server answers 429 with `Retry-After`. Unset: unlimited.
    pub requests_per_minute: Option<u32>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_input_tokens: 512,
            max_new_tokens: 256,
            max_batch: 64,
            workers: 2,
            requests_per_minute: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DictionaryConfig {
    pub name: String,
    /// A SAELens-format directory.
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// The name rules use: `probe NAME > 0.9`.
    pub name: String,
    /// A directory from `glassbox probe train` (or its probe.json).
    pub path: PathBuf,
    /// For a probe on a dictionary's latents (`probe families --dict`): the `[[dictionary]]`
    /// it reads, which must be the one it was trained on (checked by SHA-256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dictionary: Option<String>,
}

/// What a monitor does when its rule holds on a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Record the firing (audit log, metrics, response).
    Log,
    /// Log, and POST it to the alert webhook.
    Alert,
    /// Set a feature's activation to `value` on the token (through its decoder direction).
    Clamp,
    /// Add `strength` to a feature's activation on the token (through its decoder direction).
    Steer,
    /// Refuse the request (or stop the generation) with the monitor's reason.
    Block,
}

/// A monitor: a rule over the served model's features, probes or anomaly score, and what to
/// do on a token where it holds (`[[monitor]]` in deploy.toml, `POST /v1/monitors`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    pub name: String,
    /// The dictionary a feature or anomaly rule reads, and a clamp or steer edits through
    /// (not needed for a probe rule that only logs, alerts or blocks).
    #[serde(default)]
    pub dictionary: Option<String>,
    /// The rule, e.g. `feature 1234 > 3.0`, `mean(feature 7, 8) > 1`, `count(feature 7 > 0,
    /// 16) >= 3`, `anomaly > 0.5`, `probe credentials > 0.9`, `mean(logit injection) > 6.4`,
    /// `keywords > 0`, `lookalikes > 2`, `encoded > 1`.
    pub when: String,
    pub action: Action,
    /// Clamp / steer: the feature edited (default: the rule's feature).
    #[serde(default)]
    pub feature: Option<u32>,
    /// Clamp: the activation the feature is set to.
    #[serde(default)]
    pub value: Option<f32>,
    /// Steer: added to the feature's activation.
    #[serde(default)]
    pub strength: Option<f32>,
    /// Shown to the caller when the monitor blocks.
    #[serde(default)]
    pub reason: Option<String>,
}

impl MonitorConfig {
    /// Checks the rule and the action's parameters; returns the parsed rule.
    pub fn validate(&self) -> Result<Rule> {
        let bad = |why: String| ServeError::Config(format!("monitor `{}`: {why}", self.name));
        if self.name.is_empty() || self.name.len() > 64 {
            return Err(bad("a name of 1 to 64 characters is needed".into()));
        }
        let rule =
            Rule::parse(&self.when).map_err(|e| bad(format!("rule `{}`: {e}", self.when)))?;
        let target = self.target(&rule);
        match self.action {
            Action::Clamp if self.value.is_none() || target.is_none() => Err(bad(
                "clamp needs `value` (and `feature` unless the rule reads one)".into(),
            )),
            Action::Steer if self.strength.is_none() || target.is_none() => Err(bad(
                "steer needs `strength` (and `feature` unless the rule reads one)".into(),
            )),
            _ => Ok(rule),
        }
    }

    /// The feature a clamp or steer edits.
    pub fn target(&self, rule: &Rule) -> Option<u32> {
        self.feature.or(rule.signal.feature())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// Each alert is POSTed here as JSON.
    pub webhook: String,
    /// Alerts waiting for delivery; when full, new alerts are dropped (and counted), so a
    /// dead webhook never slows serving.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Further attempts per alert, with back-off.
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_queue() -> usize {
    1024
}
fn default_retries() -> u32 {
    3
}
fn default_timeout_ms() -> u64 {
    2000
}

/// When the audit log is flushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Fsync {
    /// fsync after every record: nothing acknowledged is lost on power failure.
    #[default]
    Always,
    /// fsync once per request (its firings are one batch) and after every monitor change.
    PerRequest,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub fsync: Fsync,
    /// Keep the request text in firing records (off: privacy by default).
    #[serde(default)]
    pub store_text: bool,
    /// One record per firing token, or one per monitor and request (how many tokens fired,
    /// where, the highest value): a log-only monitor on busy traffic stays small.
    #[serde(default)]
    pub firings: FiringRecords,
    /// Sign checkpoints of the log (its record count and last hash) with this Ed25519 key
    /// (`glassbox audit keygen --out PATH`); it must not sit in the log's directory.
    #[serde(default)]
    pub checkpoint_key: Option<PathBuf>,
    /// Where the signed checkpoints go: a file outside the writer's reach (another disk or
    /// mount). `glassbox audit verify LOG --witness FILE` then catches a truncated tail and a
    /// rewritten chain.
    #[serde(default)]
    pub witness: Option<PathBuf>,
    /// A checkpoint every this many records (and one at start and one at shutdown).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
}

fn default_checkpoint_every() -> u64 {
    100
}

impl AuditConfig {
    /// Opens the log, signing checkpoints into the witness when one is configured.
    pub fn open(&self) -> Result<glassbox_store::audit::AuditLog> {
        let log = glassbox_store::audit::AuditLog::open(&self.path)?;
        match (&self.checkpoint_key, &self.witness) {
            (Some(key), Some(witness)) => {
                Ok(log.with_checkpoints(glassbox_store::witness::Signer::open(
                    key,
                    witness,
                    &self.path,
                    self.checkpoint_every,
                )?)?)
            }
            (None, None) => Ok(log),
            _ => Err(ServeError::Config(
                "[audit] checkpoint_key and witness go together: set both, or neither".into(),
            )),
        }
    }
}

/// How rule firings are written to the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FiringRecords {
    /// A record per token on which a rule held.
    #[default]
    Each,
    /// A record per monitor and request that fired.
    PerRequest,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub name: String,
    pub role: Role,
    /// SHA-256 (hex) of the key; `glassbox key` makes one. Keys are never stored.
    pub sha256: String,
    /// This key's budget, overriding `[limits] requests_per_minute`.
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ServeError::Config(format!("cannot read {}: {e}", path.display())))?;
        let mut cfg: Config = toml::from_str(&text)
            .map_err(|e| ServeError::Config(format!("{}: {e}", path.display())))?;
        // Relative paths are relative to the config file.
        let base = path.parent().unwrap_or(Path::new("."));
        let paths = cfg.dictionaries.iter_mut().map(|d| &mut d.path);
        for path in paths.chain(cfg.probes.iter_mut().map(|p| &mut p.path)) {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        let console = cfg.console.catalogs.iter_mut().map(|c| &mut c.path);
        for path in console.chain(
            cfg.console
                .graphs
                .as_mut()
                .into_iter()
                .chain(cfg.console.reports.as_mut()),
        ) {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        let audit = &mut cfg.audit;
        let tls = cfg.tls.iter_mut().flat_map(|t| [&mut t.cert, &mut t.key]);
        for path in audit
            .checkpoint_key
            .iter_mut()
            .chain(audit.witness.as_mut())
            .chain(tls)
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        if cfg.audit.path.is_relative() {
            cfg.audit.path = base.join(&cfg.audit.path);
        }
        cfg.validate()?;
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let mut names = std::collections::HashSet::new();
        for m in &self.monitors {
            m.validate()?;
            if !names.insert(&m.name) {
                return Err(ServeError::Config(format!(
                    "two monitors are named `{}`",
                    m.name
                )));
            }
        }
        for k in &self.keys {
            if k.sha256.len() != 64 || !k.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ServeError::Config(format!(
                    "key `{}`: sha256 must be 64 hex digits (make one with `glassbox key`)",
                    k.name
                )));
            }
        }
        let mut names = std::collections::HashSet::new();
        for c in &self.console.catalogs {
            let ok = !c.name.is_empty()
                && c.name.len() <= 64
                && c.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok || !names.insert(&c.name) {
                return Err(ServeError::Config(format!(
                    "console catalog `{}`: names must be unique, 1 to 64 letters, digits, `-` or `_`",
                    c.name
                )));
            }
        }
        if self.limits.requests_per_minute == Some(0)
            || self.keys.iter().any(|k| k.requests_per_minute == Some(0))
        {
            return Err(ServeError::Config(
                "requests_per_minute must be at least 1 (leave it out for no limit)".into(),
            ));
        }
        if self.limits.workers == 0 {
            return Err(ServeError::Config(
                "limits.workers must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_deployment_parses_and_errors_name_the_monitor() {
        let cfg: Config = toml::from_str(include_str!("../../../deploy.example.toml")).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.monitors.len(), 6);
        let mut bad = cfg.clone();
        bad.monitors[5].value = None;
        let err = bad.validate().unwrap_err().to_string();
        assert!(
            err.contains("monitor `dampen-1234`: clamp needs `value`"),
            "{err}"
        );
        bad.monitors[5].when = "feature 12 >".into();
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("rule `feature 12 >`"), "{err}");
        let err = toml::from_str::<Config>("model = \"m\"\n[audit]\npath = \"a\"\nlisten = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `listen`"), "{err}");
    }
}
