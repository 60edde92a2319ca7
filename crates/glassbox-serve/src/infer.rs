//! Model work for one request, with its monitors attached: sentence embeddings for encoders,
//! decoding with the KV cache for decoders (one forward pass per new token, so rules and
//! interventions act on each token as it is produced).

use glassbox_model::chat::Message;
use glassbox_model::generate::{GenerateConfig, Generation, Steps};
use glassbox_model::sampling::Choice;
use glassbox_model::{Batch, Hooks, Model, Output};

use crate::error::{Result, ServeError};
use crate::input::TextSignals;
use crate::monitor::{MonitorSet, Watch};
use crate::webhook::Alerts;

/// What monitoring saw and did during one request.
pub struct Report {
    pub firings: Vec<crate::monitor::Firing>,
    pub blocked: Option<crate::monitor::Blocked>,
    /// Per input, per monitor: its rule's value nearest to firing (see `Watch::peaks`).
    pub peaks: Vec<Vec<Option<f32>>>,
    /// Per monitor (name, its rule's value on each token of the first input).
    pub trace: Vec<(String, Vec<f32>)>,
    /// Seconds the monitors' hooks took.
    pub monitor_seconds: f64,
}

fn finish(w: Watch) -> Report {
    let trace = w
        .set
        .monitors
        .iter()
        .map(|m| m.cfg.name.clone())
        .zip(w.trace)
        .collect();
    Report {
        trace,
        monitor_seconds: w.busy.as_secs_f64(),
        firings: w.firings,
        blocked: w.blocked,
        peaks: w.peaks,
    }
}

/// Sentence embeddings of `inputs` (already tokenized, special tokens included), each with
/// its text as the model reads it (for the `sentences` signal: a tokenizer's decoding may
/// lose the line breaks that cut sentences) and the signals of its text (missing ones read 0).
pub fn embed(
    model: &Model,
    set: &MonitorSet,
    alerts: Option<&Alerts>,
    request_id: &str,
    inputs: &[Vec<u32>],
    texts: &[&str],
    signals: &[TextSignals],
) -> Result<(Vec<Vec<f32>>, Report)> {
    let (batch, out, report) = watched_pass(
        model,
        set,
        alerts,
        request_id,
        inputs,
        Some(texts),
        signals,
        false,
    )?;
    let e = model.sentence_embedding(&batch, &out.hidden)?;
    Ok((e.to_vec2()?, report))
}

/// What the monitors make of `inputs` (a decoder's prompts, an encoder's texts) in one batched
/// forward pass that stops after the deepest monitored hook: nothing is generated or embedded.
/// `texts`, where given, are the inputs' texts for the `sentences` signal (else decoded from
/// the tokens, which loses the line breaks an encoder's tokenizer drops). These are the
/// caller's own texts, not a client's: the text signals read 0.
pub fn observe(
    model: &Model,
    set: &MonitorSet,
    request_id: &str,
    inputs: &[Vec<u32>],
    texts: Option<&[&str]>,
) -> Result<Report> {
    Ok(watched_pass(model, set, None, request_id, inputs, texts, &[], true)?.2)
}

/// One forward pass of `inputs` under the monitors; `texts`, where given, are the inputs'
/// texts (else decoded from their tokens).
#[allow(clippy::too_many_arguments)]
fn watched_pass(
    model: &Model,
    set: &MonitorSet,
    alerts: Option<&Alerts>,
    request_id: &str,
    inputs: &[Vec<u32>],
    texts: Option<&[&str]>,
    signals: &[TextSignals],
    stop_early: bool,
) -> Result<(Batch, Output, Report)> {
    let mut watch = Watch::new(set, alerts, request_id);
    watch.set_text_signals(signals);
    // Reading the sentences is monitoring time too (the report's `monitor_seconds`).
    let started = std::time::Instant::now();
    watch.set_sentences(match texts {
        Some(texts) => set.sentence_scores(texts)?,
        None if set.reads_sentences() => {
            // Decoded from the tokens, special tokens left out.
            let decoded = inputs
                .iter()
                .map(|ids| model.tokenizer.decode(ids))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            set.sentence_scores(&decoded.iter().map(String::as_str).collect::<Vec<_>>())?
        }
        None => Vec::new(),
    });
    watch.busy += started.elapsed();
    let batch = model.batch_ids(inputs)?;
    watch.set_lengths(&batch.lengths);
    watch.set_special(
        inputs
            .iter()
            .map(|i| model.tokenizer.special_mask(i))
            .collect(),
    );
    watch.set_keywords(set.keyword_counts(model, inputs)?);
    let deepest = set.monitors.iter().map(|m| m.hook()).max();
    let out = {
        let mut hooks = watch.hooks();
        if let Some(p) = deepest.filter(|_| stop_early) {
            hooks = hooks.stop_at(p);
        }
        model.forward(&batch, &mut hooks, None)?
    };
    Ok((batch, out, finish(watch)))
}

/// The monitors' side of the decoding loop: their hooks on every forward pass, a stop at a
/// block, and each new token handed on.
struct Monitored<'w, 's> {
    watch: &'w mut Watch<'s>,
    on_token: &'w mut dyn FnMut(&Choice, &str) -> bool,
}

impl Steps for Monitored<'_, '_> {
    fn hooks(&mut self) -> Hooks<'_> {
        self.watch.hooks()
    }

    /// A block on the tokens just read stops before anything more is produced.
    fn proceed(&mut self) -> bool {
        self.watch.blocked.is_none()
    }

    fn token(&mut self, choice: &Choice, text: &str) -> bool {
        (self.on_token)(choice, text)
    }
}

/// A decoder's prompt: its tokens, and which words in it are the caller's.
pub struct Prompt {
    pub ids: Vec<u32>,
    /// The caller's own words, for the `keywords` signal: a chat's messages without its
    /// system turns (the operator's, or the template's default), read whole at the prompt's
    /// last token. `None`: the decoded tokens are read one by one (a plain completion's
    /// prompt is all the caller's).
    pub own_words: Option<String>,
    /// The signals of the caller's words (`lookalikes`, `encoded`).
    pub signals: TextSignals,
}

impl Prompt {
    /// A prompt that is all the caller's words.
    pub fn plain(ids: Vec<u32>) -> Self {
        Self {
            ids,
            own_words: None,
            signals: TextSignals::default(),
        }
    }

    /// A chat prompt rendered from `messages`: an operator's system prompt that quotes a
    /// jailbreak phrase ("system prompt", "developer mode") must not trip every request.
    pub fn chat(ids: Vec<u32>, messages: &[Message]) -> Self {
        let own: Vec<&str> = messages
            .iter()
            .filter(|m| m.role != "system")
            .map(|m| m.content.as_str())
            .collect();
        Self {
            ids,
            own_words: Some(own.join("\n")),
            signals: TextSignals::default(),
        }
    }

    /// The prompt with the signals read from the caller's words.
    pub fn with_signals(self, signals: TextSignals) -> Self {
        Self { signals, ..self }
    }
}

/// Continues `prompt` (greedy or sampled, as `cfg` says). `on_token` receives each new token
/// and the text that became final with it, and returns false to stop (the client went away).
/// Generation stops at a block; the report says why.
pub fn generate(
    model: &Model,
    set: &MonitorSet,
    alerts: Option<&Alerts>,
    request_id: &str,
    prompt: &Prompt,
    cfg: &GenerateConfig,
    on_token: &mut dyn FnMut(&Choice, &str) -> bool,
) -> Result<(Generation, Report)> {
    if !model.config.is_decoder() {
        return Err(ServeError::Config(format!(
            "`{}` is an encoder; completions need a decoder model (serve /v1/embeddings instead)",
            model.config.model_type
        )));
    }
    let mut watch = Watch::new(set, alerts, request_id);
    watch.set_text_signals(&[prompt.signals]);
    if set.reads_sentences() {
        let started = std::time::Instant::now();
        let text = match &prompt.own_words {
            Some(words) => words.clone(),
            None => model.tokenizer.decode(&prompt.ids)?,
        };
        watch.set_sentences(set.sentence_scores(&[text.as_str()])?);
        watch.busy += started.elapsed();
    }
    watch.set_special(vec![model.tokenizer.special_mask(&prompt.ids)]);
    watch.set_keywords(match &prompt.own_words {
        Some(words) => vec![set.keyword_counts_at_end(words, prompt.ids.len())],
        None => set.keyword_counts(model, std::slice::from_ref(&prompt.ids))?,
    });
    let generation = model.generate(
        &prompt.ids,
        cfg,
        &mut Monitored {
            watch: &mut watch,
            on_token,
        },
    )?;
    Ok((generation, finish(watch)))
}
