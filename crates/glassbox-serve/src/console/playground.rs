//! The playground: a prompt for the served model, its continuation with each token's top
//! features and probe scores, and the same prompt with a feature clamped or steered, side by
//! side. The runs go through the monitors in force (a block shows as one) and are audited as
//! requests of the `console` route; steering needs the operator role.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use glassbox_model::chat::Message;
use glassbox_model::generate::GenerateConfig;
use glassbox_model::sampling::Sampling;
use glassbox_model::Hooks;
use maud::html;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc::Sender;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use super::page;
use crate::auth::Role;
use crate::config::{Action, MonitorConfig};
use crate::error::{Result, ServeError};
use crate::infer;
use crate::monitor::{MonitorSet, Watch};
use crate::server::{self, AppState};

/// Features listed per token and dictionary.
const TOP_FEATURES: usize = 5;
/// Prompt length the playground accepts (characters; tokens are checked against the limits).
const MAX_PROMPT_CHARS: usize = 8_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlayRequest {
    prompt: String,
    #[serde(default = "default_tokens")]
    max_tokens: usize,
    /// Wrap the prompt in the model's chat template as a user message.
    #[serde(default)]
    chat: bool,
    #[serde(default)]
    edit: Option<Edit>,
    /// Answer as lines of JSON while the runs work (the console's script asks for this).
    #[serde(default)]
    stream: bool,
}

fn default_tokens() -> usize {
    32
}

#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Edit {
    /// A `[[dictionary]]` of the deployment.
    dictionary: String,
    feature: u32,
    /// `steer` adds `value` to the feature on every token; `clamp` sets it to `value`.
    mode: String,
    value: f32,
}

/// A dictionary's strongest features on a token: `(feature, activation, label)`.
type TopFeatures = (String, Vec<(u32, f32, String)>);

#[derive(Serialize)]
struct TokenView {
    text: String,
    generated: bool,
    /// Per dictionary: `(feature, activation, label)`, strongest first.
    features: Vec<TopFeatures>,
    /// Per probe: its score (0 to 1).
    probes: Vec<(String, f32)>,
}

#[derive(Serialize)]
struct RunView {
    title: String,
    text: String,
    blocked: Option<String>,
    firings: usize,
    tokens: Vec<TokenView>,
}

pub async fn page(State(state): State<Arc<AppState>>, who: page::Who) -> Response {
    let readers = state.readers();
    let decoder = state.model.config.is_decoder();
    let can_edit = who.caller.role >= Role::Operator;
    let chat = state.model.chat_template.is_some();
    let body = html! {
        h1 { "Playground" }
        @if !decoder {
            p.status.broken { "This server runs an encoder (" (state.cfg.model) "); the playground needs a decoder that generates text." }
        }
        form #play {
            label for="prompt" { "Prompt for " code { (state.cfg.model) } }
            textarea #prompt name="prompt" rows="4" maxlength=(MAX_PROMPT_CHARS) required { "The capital of France is" }
            div.filters {
                label { "New tokens " input #max-tokens type="number" min="1" max=(state.cfg.limits.max_new_tokens) value="24"; }
                label { input #chat type="checkbox" checked[chat] disabled[!chat]; " chat template" }
            }
            fieldset #edit disabled[!can_edit || readers.dictionaries.is_empty()] {
                legend { "Edit a feature (operators)" }
                @if readers.dictionaries.is_empty() { p.small { "No [[dictionary]] in deploy.toml: nothing to steer with." } }
                label { "Dictionary " select #dictionary { @for d in &readers.dictionaries { option value=(d.name) { (d.name) } } } }
                label { "Find " input #feature-search type="search" placeholder="search the catalog" list="feature-hits" autocomplete="off"; }
                datalist #feature-hits {}
                label { "Feature " input #feature type="number" min="0"; }
                label { "Mode " select #mode { option value="steer" { "steer (+value)" } option value="clamp" { "clamp (=value)" } } }
                label { "Value " input #value type="number" step="any" value="8"; }
                @if !can_edit { p.small { "Your role (" (page::role_name(who.caller.role)) ") may run prompts but not edit features." } }
            }
            select #heat aria-label="Heat strip signal" {
                option value="" { "heat: top feature activation" }
                @for p in &readers.probes { option value=(p.name) { "heat: probe " (p.name) } }
            }
            button #run type="submit" disabled[!decoder] { "Run" }
        }
        p #play-status role="status" {}
        div #runs.cols {}
        section #token-detail aria-live="polite" {}
    };
    page::shell("Playground", Some(&who), "Playground", body).into_response()
}

fn bad(m: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": {"type": "invalid_request", "message": m.into()}})),
    )
        .into_response()
}

pub async fn run(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: std::result::Result<Json<PlayRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return bad(e.body_text()),
    };
    let need = if req.edit.is_some() {
        Role::Operator
    } else {
        Role::Viewer
    };
    let caller = match server::authorize(&state, &headers, need) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if !state.model.config.is_decoder() {
        return bad("this server runs an encoder; the playground needs a decoder");
    }
    if req.prompt.trim().is_empty() || req.prompt.len() > MAX_PROMPT_CHARS {
        return bad(format!(
            "a prompt of 1 to {MAX_PROMPT_CHARS} characters, please"
        ));
    }
    let max_new = state.cfg.limits.max_new_tokens;
    if req.max_tokens == 0 || req.max_tokens > max_new {
        return bad(format!(
            "max_tokens must be 1 to {max_new} (limits.max_new_tokens)"
        ));
    }
    let prepared = state.cfg.input.prepare(&req.prompt);
    let text = &prepared.text;
    let (prompt, ids) = if req.chat {
        match state
            .model
            .chat_prompt(&[Message::new("user", text)], false)
        {
            Ok(p) => p,
            Err(e) => return bad(e.to_string()),
        }
    } else {
        match state.model.tokenize(text, false) {
            Ok(ids) => (req.prompt.clone(), ids),
            Err(e) => return bad(e.to_string()),
        }
    };
    if let Err(e) = server::check_length(&state, &ids, "the prompt") {
        return e.into_response();
    }
    let edit_cfg = match &req.edit {
        Some(e) => match edit_monitor(&state, e) {
            Ok(m) => Some(m),
            Err(e) => return bad(e.to_string()),
        },
        None => None,
    };
    let cfg = GenerateConfig {
        max_new: req.max_tokens,
        sampling: Sampling::greedy(),
        stop: Vec::new(),
        top_logprobs: 0,
    };
    let id = server::request_id(&state);
    let mut titles = vec!["As served".to_string()];
    if let Some(e) = &req.edit {
        titles.push(format!(
            "{} feature {} {} {}",
            e.mode,
            e.feature,
            if e.mode == "clamp" { "=" } else { "+" },
            e.value
        ));
    }
    let prompt_ids = if req.chat {
        infer::Prompt::chat(ids, &[Message::new("user", text)])
    } else {
        infer::Prompt::plain(ids)
    }
    .with_signals(prepared.signals);
    let play = Play {
        id: id.clone(),
        prompt: prompt_ids,
        cfg,
        edit: edit_cfg,
        titles: titles.clone(),
    };
    if !req.stream {
        let runs = server::on_worker(&state, move |s| play.run(s, None))
            .await
            .and_then(|runs| account(&state, &caller, &id, &prompt, &runs).map(|_| runs));
        return match runs {
            Ok(runs) => {
                let views: Vec<&RunView> = runs.iter().map(|(v, _)| v).collect();
                Json(json!({"id": id, "runs": views})).into_response()
            }
            Err(e) => e.into_response(),
        };
    }

    // Streamed: one JSON object per line: `start` (the runs' titles), each `token` as it is
    // generated, each finished `run` with its per-token features, then `done` or `error`.
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(256);
    let _ = tx.try_send(json!({"start": {"id": id, "runs": titles}}).to_string());
    tokio::spawn(async move {
        let sink = tx.clone();
        let runs = server::on_worker(&state, move |s| play.run(s, Some(&sink)))
            .await
            .and_then(|runs| account(&state, &caller, &id, &prompt, &runs));
        let last = match runs {
            Ok(()) => json!({"done": {"id": id}}),
            Err(e) => json!({"error": {"type": e.kind, "message": e.message}}),
        };
        let _ = tx.send(last.to_string()).await;
    });
    let lines = ReceiverStream::new(rx).map(|l| Ok::<_, Infallible>(l + "\n"));
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(lines),
    )
        .into_response()
}

/// Audits every run (and sends it to the live view); the first record that cannot be written
/// fails the request: the playground does not answer what it could not audit.
fn account(
    state: &AppState,
    caller: &crate::auth::Caller,
    id: &str,
    prompt: &str,
    runs: &[(RunView, infer::Report)],
) -> server::ApiResult<()> {
    for (_, report) in runs {
        server::account(state, caller, id, "console.playground", prompt, report)?;
    }
    Ok(())
}

/// A checked playground request, ready for a worker.
struct Play {
    id: String,
    prompt: infer::Prompt,
    cfg: GenerateConfig,
    edit: Option<MonitorConfig>,
    titles: Vec<String>,
}

impl Play {
    /// The run as served and, with an edit, the edited run; with a sink, every generated token
    /// and every finished run is sent as it comes (a closed sink stops the generation).
    fn run(
        self,
        s: &AppState,
        sink: Option<&Sender<String>>,
    ) -> Result<Vec<(RunView, infer::Report)>> {
        let served = s.monitor_set();
        let mut sets = vec![(served, None)];
        if let Some(m) = self.edit {
            let mut monitors = s.monitor_configs();
            monitors.push(m.clone());
            sets.push((
                Arc::new(MonitorSet::new(&s.readers(), &monitors)?),
                Some(MonitorSet::new(&s.readers(), &[m])?),
            ));
        }
        let mut out = Vec::new();
        for (i, ((set, only), title)) in sets.iter().zip(&self.titles).enumerate() {
            let mut on_text = |text: &str| {
                sink.is_none_or(|tx| {
                    tx.blocking_send(json!({"token": {"run": i, "text": text}}).to_string())
                        .is_ok()
                })
            };
            let run = one_run(
                s,
                set,
                only.as_ref(),
                title,
                &self.id,
                &self.prompt,
                &self.cfg,
                &mut on_text,
            )?;
            if let Some(tx) = sink {
                let line = json!({"run": {"index": i, "view": &run.0}}).to_string();
                if tx.blocking_send(line).is_err() {
                    break;
                }
            }
            out.push(run);
        }
        Ok(out)
    }
}

/// The monitor that makes an edit on every token.
fn edit_monitor(state: &AppState, e: &Edit) -> Result<MonitorConfig> {
    let action = match e.mode.as_str() {
        "steer" => Action::Steer,
        "clamp" => Action::Clamp,
        m => {
            return Err(ServeError::Config(format!(
                "mode must be `steer` or `clamp`, not `{m}`"
            )))
        }
    };
    if !e.value.is_finite() || e.value.abs() > 1e4 {
        return Err(ServeError::Config(
            "value must be a finite number of at most 10,000 in size".into(),
        ));
    }
    if !state
        .readers()
        .dictionaries
        .iter()
        .any(|d| d.name == e.dictionary)
    {
        return Err(ServeError::Config(format!(
            "no [[dictionary]] is named `{}`",
            e.dictionary
        )));
    }
    Ok(MonitorConfig {
        name: "console-edit".into(),
        dictionary: Some(e.dictionary.clone()),
        when: format!("feature {} > -1000000", e.feature),
        action,
        feature: Some(e.feature),
        value: (action == Action::Clamp).then_some(e.value),
        strength: (action == Action::Steer).then_some(e.value),
        reason: None,
    })
}

/// Generates with `set` (each piece of text to `on_text`), then reads every token's features
/// and probe scores in one pass over prompt and continuation (with `edit` applied, so a
/// steered run shows its steered features).
#[allow(clippy::too_many_arguments)]
fn one_run(
    s: &AppState,
    set: &MonitorSet,
    edit: Option<&MonitorSet>,
    title: &str,
    rid: &str,
    prompt: &infer::Prompt,
    cfg: &GenerateConfig,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<(RunView, infer::Report)> {
    let (g, report) = infer::generate(&s.model, set, None, rid, prompt, cfg, &mut |_, t| {
        on_text(t)
    })?;
    let ids = &prompt.ids;
    let all: Vec<u32> = ids
        .iter()
        .copied()
        .chain(g.tokens.iter().map(|c| c.id))
        .collect();
    let readers = s.readers();
    let mut points: Vec<_> = readers
        .dictionaries
        .iter()
        .map(|d| d.hook)
        .chain(readers.probes.iter().map(|p| p.hook))
        .collect();
    points.sort();
    points.dedup();
    let batch = s.model.batch_ids(std::slice::from_ref(&all))?;
    let empty = MonitorSet::new(&readers, &[])?;
    let mut watch = Watch::new(edit.unwrap_or(&empty), None, rid);
    let cache = {
        let mut hooks = watch.hooks().record_all(points.iter().copied());
        if let Some(last) = points.last() {
            hooks = hooks.stop_at(*last);
        }
        let mut hooks: Hooks = hooks;
        s.model.forward(&batch, &mut hooks, None)?;
        hooks.into_cache()
    };
    let n = all.len();
    let rows = |p| -> Result<Vec<f32>> {
        let t = cache
            .get(&p)
            .ok_or_else(|| ServeError::Io(format!("no activation recorded at {p}")))?;
        Ok(t.flatten_all()?.to_vec1::<f32>()?)
    };
    let width = s.model.config.d_model;
    let mut tokens: Vec<TokenView> = all
        .iter()
        .enumerate()
        .map(|(i, &t)| TokenView {
            text: s.model.tokenizer.piece(t),
            generated: i >= ids.len(),
            features: Vec::new(),
            probes: Vec::new(),
        })
        .collect();
    for d in &readers.dictionaries {
        let x = rows(d.hook)?;
        let codes = d
            .sae
            .encode(&x[..n * width])
            .map_err(|e| ServeError::Config(e.to_string()))?;
        let label = s.catalogs.labels(&d.name);
        for (tv, row) in tokens.iter_mut().zip(&codes.rows) {
            let mut top: Vec<(u32, f32)> = row.iter().copied().filter(|e| e.1 > 0.0).collect();
            top.sort_by(|a, b| b.1.total_cmp(&a.1));
            top.truncate(TOP_FEATURES);
            let labelled = top.into_iter().map(|(j, v)| (j, v, label(j))).collect();
            tv.features.push((d.name.clone(), labelled));
        }
    }
    for p in &readers.probes {
        let x = rows(p.hook)?;
        for (tv, row) in tokens.iter_mut().zip(x.chunks(width)) {
            tv.probes.push((p.name.clone(), p.probe.score(row)));
        }
    }
    let view = RunView {
        title: title.into(),
        text: g.text,
        blocked: report.blocked.as_ref().map(|b| b.reason.clone()),
        firings: report.firings.len(),
        tokens,
    };
    Ok((view, report))
}
