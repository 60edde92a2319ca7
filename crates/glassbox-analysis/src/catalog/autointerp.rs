//! The optional LLM labeller ("auto-interp"): a chat model behind any OpenAI-compatible
//! endpoint explains a feature from its example contexts, then the explanation is scored by
//! detection — given the explanation only, the same model predicts which of a shuffled set of
//! unseen snippets make the feature fire.
//!
//! The snippets are the feature's held-out sampled contexts (never shown to the explainer) and
//! windows from other features' contexts. Whether each one really activates the feature is not
//! assumed: every snippet is run through the model and the dictionary as the text it is shown
//! as, so the truth is the feature's own response to exactly what the explainer predicted on.
//! The score is balanced accuracy (½·(true-positive rate + true-negative rate)): 0.5 is chance,
//! 1.0 a perfect explanation; with only one class present it is that class's accuracy.

use std::path::Path;
use std::time::Duration;

use glassbox_dictionary::probe::balanced_accuracy;
use glassbox_dictionary::Sae;
use glassbox_model::Model;
use glassbox_store::catalog::{CatalogStore, Example, ExampleKind, Feature};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::{json, Value};

use super::build::check_sources;
use super::flags::peaks;
use crate::error::{AnalysisError, Result};

/// An OpenAI-compatible chat-completions endpoint.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The API base (`http://localhost:8000/v1`) or the full `…/chat/completions` address.
    pub url: String,
    /// The model name sent in each request.
    pub model: String,
    /// Sent as `Authorization: Bearer …` when set.
    pub api_key: Option<String>,
    pub timeout: Duration,
    /// Further attempts after a failed request (connection errors, 429 and 5xx).
    pub retries: u32,
}

/// Something that answers a system + user prompt (the endpoint; tests may use another).
pub trait Chat {
    fn chat(&self, system: &str, user: &str) -> Result<String>;
}

/// A chat model run in this process (e.g. `qwen-coder-1.5b` from `glassbox setup --model`):
/// its chat template applied, greedy decoding, no service to run.
pub struct LocalChat {
    model: Model,
    max_tokens: usize,
}

impl LocalChat {
    pub fn new(model: Model, max_tokens: usize) -> Result<Self> {
        if !model.config.is_decoder() {
            return Err(AnalysisError::Mismatch(format!(
                "`{}` is an encoder; the labeller needs a chat model (e.g. qwen-coder-1.5b)",
                model.config.model_type
            )));
        }
        Ok(Self { model, max_tokens })
    }
}

impl Chat for LocalChat {
    fn chat(&self, system: &str, user: &str) -> Result<String> {
        use glassbox_model::chat::Message;
        use glassbox_model::generate::{GenerateConfig, Plain};
        let messages = [Message::new("system", system), Message::new("user", user)];
        let prompt = self.model.apply_chat_template(&messages, true)?;
        let ids = self.model.tokenizer.encode_plain(&prompt)?;
        let cfg = GenerateConfig {
            max_new: self.max_tokens,
            sampling: glassbox_model::sampling::Sampling::greedy(),
            stop: Vec::new(),
            top_logprobs: 0,
        };
        Ok(self.model.generate(&ids, &cfg, &mut Plain)?.text)
    }
}

/// A blocking client for one endpoint.
pub struct ChatClient {
    agent: ureq::Agent,
    url: String,
    endpoint: Endpoint,
}

impl ChatClient {
    pub fn new(endpoint: Endpoint) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(endpoint.timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let base = endpoint.url.trim_end_matches('/');
        let url = if base.ends_with("/chat/completions") {
            base.to_string()
        } else {
            format!("{base}/chat/completions")
        };
        Self {
            agent,
            url,
            endpoint,
        }
    }

    fn once(&self, body: &Value) -> std::result::Result<String, (bool, String)> {
        let mut req = self.agent.post(&self.url);
        if let Some(key) = &self.endpoint.api_key {
            req = req.header("Authorization", &format!("Bearer {key}"));
        }
        let mut resp = req
            .send_json(body)
            .map_err(|e| (true, format!("cannot reach {}: {e}", self.url)))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(4 << 20)
            .read_to_string()
            .map_err(|e| (true, format!("reading the answer of {}: {e}", self.url)))?;
        if status != 200 {
            let retry = status == 429 || status >= 500;
            let snippet: String = text.chars().take(300).collect();
            return Err((
                retry,
                format!("{} answered HTTP {status}: {snippet}", self.url),
            ));
        }
        let v: Value = serde_json::from_str(&text).map_err(|e| {
            (
                false,
                format!("{} answered with invalid JSON: {e}", self.url),
            )
        })?;
        v.pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                (
                    false,
                    format!(
                        "{} answered without choices[0].message.content; is it an OpenAI-compatible chat endpoint?",
                        self.url
                    ),
                )
            })
    }
}

impl Chat for ChatClient {
    fn chat(&self, system: &str, user: &str) -> Result<String> {
        let body = json!({
            "model": self.endpoint.model,
            "temperature": 0.0,
            "max_tokens": 200,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
        });
        let mut attempt = 0;
        loop {
            match self.once(&body) {
                Ok(answer) => return Ok(answer),
                Err((true, _)) if attempt < self.endpoint.retries => {
                    // Back off 0.5 s, 1 s, 2 s, … so a rate limit can clear.
                    std::thread::sleep(Duration::from_millis(500 << attempt.min(5)));
                    attempt += 1;
                }
                Err((_, why)) => return Err(AnalysisError::Llm(why)),
            }
        }
    }
}

/// How many snippets of each kind the detection test shows.
#[derive(Debug, Clone)]
pub struct AutoInterpConfig {
    /// Example contexts shown to the explainer (highest first, then sampled).
    pub explain: usize,
    /// Held-out sampled contexts of the feature in the detection test.
    pub held_out: usize,
    /// Contexts of other features in the detection test.
    pub others: usize,
    pub seed: u64,
    /// Also score the feature's offline label by the same detection test (same snippets, same
    /// truth), to compare the labellers.
    pub score_offline: bool,
}

impl Default for AutoInterpConfig {
    fn default() -> Self {
        Self {
            explain: 12,
            held_out: 6,
            others: 6,
            seed: 0,
            score_offline: false,
        }
    }
}

/// One feature's explanation and its detection score.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub label: String,
    pub score: f32,
    /// What the score counted: snippets shown, and how many activate the feature.
    pub snippets: usize,
    pub activating: usize,
    /// The offline label the feature had and its detection score (with `score_offline`).
    pub offline: Option<(String, f32)>,
}

pub const SYSTEM: &str = "You are an interpretability researcher studying one feature of a \
language model. A feature is a direction in the model's activations that fires on some tokens. \
You are precise and never claim more than the evidence shows.";

/// How the method recorded beside an LLM label starts.
pub const METHOD_PREFIX: &str = "llm ";

/// The method recorded beside a label from `endpoint_model`.
pub fn method(endpoint_model: &str, o: &Outcome) -> String {
    format!(
        "{METHOD_PREFIX}{endpoint_model}: detection balanced accuracy on {} snippets ({} activating)",
        o.snippets, o.activating
    )
}

/// Running text of an example window, with the tokens where the feature fires marked
/// `<<like this>>` when `mark` is set.
pub fn snippet(e: &Example, mark: bool) -> String {
    let mut s = String::new();
    for seg in e.segments() {
        s.push_str(seg.gap);
        if mark && seg.activation > 0.0 {
            s.push_str(&format!("<<{}>>", seg.token));
        } else {
            s.push_str(seg.token);
        }
    }
    s.trim().replace('\n', " ")
}

/// Explains `f` and scores the explanation. `pool` lends other features' examples as
/// candidate non-activating snippets.
pub fn explain_and_score(
    chat: &dyn Chat,
    model: &Model,
    sae: &Sae,
    f: &Feature,
    pool: &[Feature],
    cfg: &AutoInterpConfig,
) -> Result<Outcome> {
    let samples: Vec<&Example> = f
        .examples
        .iter()
        .filter(|e| e.kind == ExampleKind::Sample)
        .collect();
    let held_out: Vec<&Example> = samples.iter().skip(1).step_by(2).copied().collect();
    let held_contexts: Vec<u64> = held_out.iter().map(|e| e.context).collect();
    let shown: Vec<&Example> = f
        .examples
        .iter()
        .filter(|e| !held_contexts.contains(&e.context))
        .take(cfg.explain)
        .collect();
    if shown.is_empty() {
        return Err(AnalysisError::Mismatch(format!(
            "feature {} has no example contexts to explain",
            f.id
        )));
    }
    let label = explain(chat, f, &shown)?;

    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed ^ u64::from(f.id));
    let mut texts: Vec<String> = held_out
        .iter()
        .take(cfg.held_out)
        .map(|e| snippet(e, false))
        .collect();
    let mut others: Vec<&Example> = pool
        .iter()
        .filter(|g| g.id != f.id)
        .flat_map(|g| g.examples.iter())
        .filter(|e| !held_contexts.contains(&e.context))
        .collect();
    others.shuffle(&mut rng);
    texts.extend(others.iter().take(cfg.others).map(|e| snippet(e, false)));
    texts.sort();
    texts.dedup();
    texts.shuffle(&mut rng);

    let ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| model.tokenizer.encode_plain(t))
        .collect::<std::result::Result<_, _>>()?;
    let truth: Vec<bool> = peaks(model, sae, &ids)?
        .iter()
        .map(|p| p[f.id as usize] > 0.0)
        .collect();
    let predicted = detect(chat, &label, &texts)?;
    let score = balanced_accuracy(&truth, &predicted);
    let offline = if cfg.score_offline && f.label_method == super::label::METHOD {
        let predicted = detect(chat, &f.label, &texts)?;
        Some((f.label.clone(), balanced_accuracy(&truth, &predicted)))
    } else {
        None
    };
    Ok(Outcome {
        label,
        score,
        snippets: texts.len(),
        activating: truth.iter().filter(|&&t| t).count(),
        offline,
    })
}

fn explain(chat: &dyn Chat, f: &Feature, shown: &[&Example]) -> Result<String> {
    let mut user = String::from(
        "Below are text excerpts where the feature fires; the tokens it fires on are marked \
         <<like this>>, and each excerpt gives the feature's largest activation.\n\n",
    );
    for (i, e) in shown.iter().enumerate() {
        user.push_str(&format!(
            "{}. ({:.2}) {}\n",
            i + 1,
            e.activation,
            snippet(e, true)
        ));
    }
    if !f.promoted.is_empty() {
        let list: Vec<&str> = f.promoted.iter().take(8).map(|t| t.0.trim()).collect();
        user.push_str(&format!(
            "\nTokens its direction is most aligned with: {}\n",
            list.join(", ")
        ));
    }
    user.push_str(
        "\nIn at most 12 words, what does this feature detect? Answer with the description only.",
    );
    let answer = chat.chat(SYSTEM, &user)?;
    let label = answer
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .trim_matches(|c: char| c == '"' || c == '“' || c == '”' || c == '.' || c == '*')
        .trim()
        .to_string();
    // Small models open with a formula the catalog does not need.
    let label = strip_preamble(&label);
    if label.is_empty() {
        return Err(AnalysisError::Llm(format!(
            "the explainer gave an empty description for feature {}",
            f.id
        )));
    }
    Ok(label.chars().take(200).collect())
}

/// "This feature detects the word X" → "the word X".
fn strip_preamble(label: &str) -> String {
    const OPENINGS: [&str; 6] = [
        "this feature detects ",
        "the feature detects ",
        "this feature fires on ",
        "the feature fires on ",
        "detects ",
        "fires on ",
    ];
    let lower = label.to_lowercase();
    for o in OPENINGS {
        if lower.starts_with(o) && label.is_char_boundary(o.len()) {
            return label[o.len()..].trim().to_string();
        }
    }
    label.to_string()
}

fn detect(chat: &dyn Chat, label: &str, texts: &[String]) -> Result<Vec<bool>> {
    let mut user = format!(
        "A feature of a language model is described as: \"{label}\".\n\nHere are {} numbered \
         text excerpts. Which of them contain a token the feature would fire on?\n\n",
        texts.len()
    );
    for (i, t) in texts.iter().enumerate() {
        user.push_str(&format!("{}. {t}\n", i + 1));
    }
    user.push_str(
        "\nAnswer with a JSON list of the excerpt numbers only, e.g. [2, 5]; [] if none.",
    );
    let answer = chat.chat(SYSTEM, &user)?;
    let chosen = parse_numbers(&answer).ok_or_else(|| {
        AnalysisError::Llm(format!(
            "the detection answer has no list of excerpt numbers: {:?}",
            answer.chars().take(200).collect::<String>()
        ))
    })?;
    Ok((1..=texts.len()).map(|i| chosen.contains(&i)).collect())
}

/// The numbers in the last `[…]` list of an answer (models often think aloud first).
fn parse_numbers(answer: &str) -> Option<Vec<usize>> {
    let open = answer.rfind('[')?;
    let close = open + answer[open..].find(']')?;
    answer[open + 1..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().ok())
        .collect()
}

/// Labels the catalog's features `ids` through `chat` and saves them with their scores (every
/// `save_every` features, so an interrupted run keeps what it paid for). A feature whose
/// explanation or detection fails keeps its previous label; the failures are returned, except
/// when the first feature fails: then the endpoint is dead or unsuitable, and that is the error.
/// `model` and `sae` must be what the catalog was built from (their hashes are checked).
#[allow(clippy::too_many_arguments)]
pub fn label_catalog(
    store: &mut dyn CatalogStore,
    model: &Model,
    sae: &Sae,
    dict_dir: &Path,
    chat: &dyn Chat,
    endpoint_model: &str,
    ids: &[u32],
    cfg: &AutoInterpConfig,
    save_every: usize,
    progress: &mut dyn FnMut(u32, &Result<Outcome>),
) -> Result<Vec<(u32, AnalysisError)>> {
    let mut meta = store
        .meta()?
        .ok_or_else(|| AnalysisError::Mismatch("the catalog holds no finished build".into()))?;
    check_sources(&meta, model, dict_dir)?;
    let mut features = store.features()?;
    let (mut failures, mut labelled) = (Vec::new(), 0);
    let mut unsaved = 0;
    for &id in ids {
        let f = features.get(id as usize).ok_or_else(|| {
            AnalysisError::Mismatch(format!(
                "feature {id} is not in the catalog (it has {} features)",
                features.len()
            ))
        })?;
        let outcome = explain_and_score(chat, model, sae, f, &features, cfg);
        progress(id, &outcome);
        match outcome {
            Ok(o) => {
                let f = &mut features[id as usize];
                f.label_method = method(endpoint_model, &o);
                f.label = o.label;
                f.label_score = o.score;
                unsaved += 1;
                labelled += 1;
            }
            // A first feature that fails means a dead or unsuitable endpoint: stop there.
            Err(e) if labelled == 0 && failures.is_empty() => return Err(e),
            Err(e) => failures.push((id, e)),
        }
        if unsaved >= save_every.max(1) {
            meta.generation = store.save(&meta, &features)?;
            unsaved = 0;
        }
    }
    if unsaved > 0 {
        store.save(&meta, &features)?;
    }
    Ok(failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_last_list_and_refuses_prose() {
        assert_eq!(parse_numbers("[1, 3]"), Some(vec![1, 3]));
        assert_eq!(
            parse_numbers("Thinking [maybe 2]... final: [2,4 ]"),
            Some(vec![2, 4])
        );
        assert_eq!(parse_numbers("[]"), Some(vec![]));
        assert_eq!(parse_numbers("none of them"), None);
        assert_eq!(parse_numbers("[one]"), None);
    }

    #[test]
    fn drops_the_explainers_preamble() {
        assert_eq!(
            strip_preamble("This feature detects the colon in smileys"),
            "the colon in smileys"
        );
        assert_eq!(strip_preamble("Fires on dates"), "dates");
        assert_eq!(strip_preamble("dates in logs"), "dates in logs");
    }

    #[test]
    fn marks_firing_tokens() {
        let e = Example {
            kind: ExampleKind::Top,
            activation: 2.0,
            context: 0,
            tokens: vec!["the".into(), " cat".into(), "s".into(), " sat".into()],
            acts: vec![0.0, 2.0, 0.5, 0.0],
            focus: 1,
            text: String::new(),
            spans: Vec::new(),
        };
        assert_eq!(snippet(&e, true), "the <<cat>><<s>> sat");
        assert_eq!(snippet(&e, false), "the cats sat");
    }
}
