//! The optional LLM labeller ("auto-interp"): a chat model, in this process or behind any
//! OpenAI-compatible endpoint, explains a feature from its example contexts, then the
//! explanation is scored by detection — given the explanation only, the same model says of each
//! of a shuffled set of unseen snippets whether the feature fires in it.
//!
//! The snippets are the feature's held-out sampled contexts (never shown to the explainer) and
//! windows from other features' contexts. Whether each one really activates the feature is not
//! assumed: every snippet is run through the model and the dictionary as the text it is shown
//! as, so the truth is the feature's own response to exactly what the judge saw. The judge
//! answers one snippet at a time and its answer is read as log-odds, log P("Yes") − log P("No")
//! of its first token, not as generated text, so a small model that cannot keep an answer
//! format still ranks the snippets. The score is the AUROC of those log-odds against the truth:
//! 0.5 is chance, 1.0 a perfect explanation; with only one class present it is the share of
//! that class the judge gets right (log-odds above 0 counted as "Yes").

use std::path::Path;
use std::time::Duration;

use glassbox_dictionary::roc::Scored;
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

/// Something that answers a system + user prompt (the endpoint, or a model in this process).
pub trait Chat {
    fn chat(&self, system: &str, user: &str) -> Result<String>;

    /// For each user prompt, log P("Yes") − log P("No") of the answer's first token.
    fn yes_no(&self, system: &str, users: &[String]) -> Result<Vec<f32>>;
}

/// Tokens an explanation may take (it is asked for in at most 12 words).
pub const EXPLANATION_TOKENS: usize = 48;

/// Spellings of the two answers a judge's first token may take.
const YES: [&str; 3] = ["Yes", " Yes", "yes"];
const NO: [&str; 3] = ["No", " No", "no"];

/// A chat model run in this process (e.g. `qwen-coder-1.5b` from `glassbox setup --model`):
/// its chat template applied, greedy decoding, no service to run.
pub struct LocalChat {
    model: Model,
    max_tokens: usize,
    /// Single-token spellings of "Yes" and of "No" in the model's vocabulary.
    yes: Vec<u32>,
    no: Vec<u32>,
}

impl LocalChat {
    pub fn new(model: Model, max_tokens: usize) -> Result<Self> {
        if !model.config.is_decoder() {
            return Err(AnalysisError::Mismatch(format!(
                "`{}` is an encoder; the labeller needs a chat model (e.g. qwen-coder-1.5b)",
                model.config.model_type
            )));
        }
        let single = |words: &[&str]| -> Result<Vec<u32>> {
            let mut ids = Vec::new();
            for w in words {
                if let [id] = model.tokenizer.encode_plain(w)?[..] {
                    ids.push(id);
                }
            }
            Ok(ids)
        };
        let (yes, no) = (single(&YES)?, single(&NO)?);
        if yes.is_empty() || no.is_empty() {
            return Err(AnalysisError::Mismatch(
                "the labeller's vocabulary has no single token for \"Yes\" or \"No\"".into(),
            ));
        }
        Ok(Self {
            model,
            max_tokens,
            yes,
            no,
        })
    }

    fn prompt_ids(&self, system: &str, user: &str) -> Result<Vec<u32>> {
        use glassbox_model::chat::Message;
        let messages = [Message::new("system", system), Message::new("user", user)];
        let prompt = self.model.apply_chat_template(&messages, true)?;
        Ok(self.model.tokenizer.encode_plain(&prompt)?)
    }
}

impl Chat for LocalChat {
    fn chat(&self, system: &str, user: &str) -> Result<String> {
        use glassbox_model::generate::{GenerateConfig, Plain};
        let ids = self.prompt_ids(system, user)?;
        let cfg = GenerateConfig {
            max_new: self.max_tokens,
            sampling: glassbox_model::sampling::Sampling::greedy(),
            stop: Vec::new(),
            top_logprobs: 0,
        };
        Ok(self.model.generate(&ids, &cfg, &mut Plain)?.text)
    }

    /// The prompts' common token prefix is run once; each prompt then continues it from a
    /// truncated KV cache, so a judge over many snippets pays for its instructions once.
    fn yes_no(&self, system: &str, users: &[String]) -> Result<Vec<f32>> {
        use glassbox_model::Hooks;
        let prompts = users
            .iter()
            .map(|u| self.prompt_ids(system, u))
            .collect::<Result<Vec<_>>>()?;
        let Some(first) = prompts.first() else {
            return Ok(Vec::new());
        };
        // Each prompt keeps at least its last token to run: that position gives the logits.
        if prompts.iter().any(Vec::is_empty) {
            return Err(AnalysisError::Mismatch(
                "the chat template made an empty prompt".into(),
            ));
        }
        let shared = prompts.iter().fold(first.len() - 1, |n, p| {
            n.min(p.len() - 1)
                .min(first.iter().zip(p).take_while(|(a, b)| a == b).count())
        });
        let mut cache = self.model.new_cache();
        if shared > 0 {
            let batch = self.model.batch_ids(&[first[..shared].to_vec()])?;
            self.model
                .forward_last(&batch, &mut Hooks::none(), &mut cache)?;
        }
        let best = |logits: &[f32], ids: &[u32]| {
            ids.iter()
                .map(|&i| logits[i as usize])
                .fold(f32::NEG_INFINITY, f32::max)
        };
        prompts
            .iter()
            .map(|p| {
                cache.truncate(shared);
                let batch = self.model.batch_ids(&[p[shared..].to_vec()])?;
                let logits = self
                    .model
                    .forward_last(&batch, &mut Hooks::none(), &mut cache)?
                    .to_vec1::<f32>()?;
                // Both from one softmax: the difference of logits is the log-odds.
                Ok(best(&logits, &self.yes) - best(&logits, &self.no))
            })
            .collect()
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

    /// One request; `Err((retry, why))` where `retry` says whether another attempt may help.
    fn once(&self, body: &Value) -> std::result::Result<Value, (bool, String)> {
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
        serde_json::from_str(&text).map_err(|e| {
            (
                false,
                format!("{} answered with invalid JSON: {e}", self.url),
            )
        })
    }

    /// Sends `body` with `system` and `user` as its messages, retrying what may pass later,
    /// and returns what `read` takes from the answer (`None`: the answer lacks `what`).
    fn ask<T>(
        &self,
        mut body: Value,
        system: &str,
        user: &str,
        what: &str,
        read: impl Fn(&Value) -> Option<T>,
    ) -> Result<T> {
        body["model"] = json!(self.endpoint.model);
        body["temperature"] = json!(0.0);
        body["messages"] = json!([
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ]);
        let mut attempt = 0;
        loop {
            match self.once(&body) {
                Ok(answer) => {
                    return read(&answer).ok_or_else(|| {
                        AnalysisError::Llm(format!(
                            "{} answered without {what}; is it an OpenAI-compatible chat endpoint?",
                            self.url
                        ))
                    })
                }
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

impl Chat for ChatClient {
    fn chat(&self, system: &str, user: &str) -> Result<String> {
        let body = json!({"max_tokens": EXPLANATION_TOKENS});
        self.ask(body, system, user, "choices[0].message.content", |v| {
            v.pointer("/choices/0/message/content")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
    }

    /// One token per prompt with its 20 likeliest alternatives; an answer missing from them
    /// counts as less likely than the least likely listed.
    fn yes_no(&self, system: &str, users: &[String]) -> Result<Vec<f32>> {
        let body = json!({"max_tokens": 1, "logprobs": true, "top_logprobs": 20});
        let read = |v: &Value| -> Option<f32> {
            let listed: Vec<(String, f32)> = v
                .pointer("/choices/0/logprobs/content/0/top_logprobs")?
                .as_array()?
                .iter()
                .filter_map(|t| {
                    Some((
                        t["token"].as_str()?.to_string(),
                        t["logprob"].as_f64()? as f32,
                    ))
                })
                .collect();
            let floor = listed.iter().map(|t| t.1).fold(0f32, f32::min) - 1.0;
            let best = |words: &[&str]| {
                listed
                    .iter()
                    .filter(|t| words.contains(&t.0.as_str()))
                    .map(|t| t.1)
                    .fold(floor, f32::max)
            };
            (!listed.is_empty()).then(|| best(&YES) - best(&NO))
        };
        users
            .iter()
            .map(|u| {
                let what = "choices[0].logprobs.content[0].top_logprobs";
                self.ask(body.clone(), system, u, what, read)
            })
            .collect()
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

pub const SYSTEM: &str = "You are an interpretability researcher. You study one feature of a \
language model: a detector that is active on some tokens of a text and silent on the others. \
You are precise and never claim more than the evidence shows.";

/// How the method recorded beside an LLM label starts.
pub const METHOD_PREFIX: &str = "llm ";

/// The method recorded beside a label from `endpoint_model`.
pub fn method(endpoint_model: &str, o: &Outcome) -> String {
    format!(
        "{METHOD_PREFIX}{endpoint_model}: detection AUROC on {} snippets ({} activating)",
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
    let score = detection_score(&truth, &detect(chat, &label, &texts)?);
    let offline = if cfg.score_offline && f.label_method == super::label::METHOD {
        let odds = detect(chat, &f.label, &texts)?;
        Some((f.label.clone(), detection_score(&truth, &odds)))
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
            "\nTokens most aligned with it: {}\n",
            list.join(", ")
        ));
    }
    // A sentence to complete: asked for "a noun phrase", Qwen-1.5B answered "all nouns" on 9
    // of 25 features; asked for what the tokens "have in common", it opened with formulas.
    user.push_str(
        "\nComplete this sentence in at most 12 words, as specific as the excerpts allow \
         (which words, in what kind of text):\nThe feature fires on",
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
    const OPENINGS: [&str; 12] = [
        "the marked tokens have a common theme of ",
        "the marked tokens have a common pattern of ",
        "the marked tokens have the description ",
        "the marked tokens have in common ",
        "the marked tokens are ",
        "the marked tokens ",
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

/// The judge's log-odds that the feature described by `label` fires in each text.
fn detect(chat: &dyn Chat, label: &str, texts: &[String]) -> Result<Vec<f32>> {
    // The description comes first and the text last, so every prompt shares its opening.
    let prompts: Vec<String> = texts
        .iter()
        .map(|t| {
            format!(
                "A feature of a language model is described as: \"{label}\".\n\nIs the feature \
                 active on some token of the text below? Answer Yes or No.\n\nText: {t}"
            )
        })
        .collect();
    chat.yes_no(SYSTEM, &prompts)
}

/// AUROC of the judge's log-odds against the truth; with one class only, the share of it the
/// judge gets right (log-odds above 0 read as "Yes").
fn detection_score(truth: &[bool], odds: &[f32]) -> f32 {
    match Scored::new(odds, truth) {
        Ok(scored) => scored.auroc() as f32,
        Err(_) => {
            let right = truth.iter().zip(odds).filter(|(t, o)| **t == (**o > 0.0));
            right.count() as f32 / truth.len().max(1) as f32
        }
    }
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
    fn detection_is_scored_by_ranking_or_by_sign_for_one_class() {
        let truth = [true, false, true, false];
        assert_eq!(detection_score(&truth, &[2.0, -1.0, 0.5, 0.7]), 0.75);
        assert_eq!(detection_score(&truth, &[2.0, -1.0, 0.5, -0.7]), 1.0);
        assert_eq!(detection_score(&[true, true], &[1.0, -1.0]), 0.5);
        assert_eq!(
            detection_score(&[false, false, false, false], &[-1.0, -2.0, 3.0, -0.1]),
            0.75
        );
    }

    #[test]
    fn drops_the_explainers_preamble() {
        assert_eq!(
            strip_preamble("This feature detects the colon in smileys"),
            "the colon in smileys"
        );
        assert_eq!(strip_preamble("Fires on dates"), "dates");
        assert_eq!(
            strip_preamble("The marked tokens have a common theme of exclusion"),
            "exclusion"
        );
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
