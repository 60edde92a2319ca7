//! The OpenAI-compatible wire format, typed: the request bodies the handlers parse and the
//! answers they serialise. `/openapi.json` derives its JSON Schemas from these same types, so the
//! document and the server cannot drift apart.

use std::collections::BTreeMap;

use glassbox_model::generate::GenerateConfig;
use glassbox_model::sampling::{Choice, Sampling};
use glassbox_model::Model;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiResult};
use crate::infer::Report;
use crate::monitor::{Blocked, Firing};

/// One text, or several embedded in one batch.
#[derive(Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Input {
    One(String),
    Many(Vec<String>),
}

/// `POST /v1/embeddings` (encoders): sentence embeddings, monitored.
#[derive(Deserialize, JsonSchema)]
pub struct EmbeddingsRequest {
    pub input: Input,
    /// Accepted for OpenAI compatibility; the server serves one model.
    #[serde(default)]
    pub model: Option<String>,
}

/// OpenAI's generation parameters (and llama.cpp's `top_k`, `min_p`, `repetition_penalty`).
/// Unlike OpenAI, `temperature` defaults to 0 (greedy), so that a monitored run is reproducible
/// unless the client asks for sampling.
#[derive(Deserialize, JsonSchema)]
pub struct GenParams {
    /// New tokens at most (default 16; at most the deployment's `limits.max_new_tokens`).
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// OpenAI's newer name for `max_tokens`.
    #[serde(default)]
    pub max_completion_tokens: Option<usize>,
    /// 0 (the default) decodes greedily.
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub min_p: Option<f32>,
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    /// Seed of the sampler: the same seed and settings give the same text.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Up to 4 stop sequences; the text ends before the first one produced.
    #[serde(default)]
    pub stop: Option<Stop>,
    /// Must be 1 (one choice per request).
    #[serde(default)]
    pub n: Option<usize>,
    /// Answer as server-sent events, one per token, ending with the monitors' decisions.
    #[serde(default)]
    pub stream: bool,
}

#[derive(Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `logprobs` is a count for completions and a flag (with `top_logprobs`) for chat.
#[derive(Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Logprobs {
    Flag(bool),
    Count(usize),
}

/// `POST /v1/completions` (decoders): a continuation of `prompt`, monitored per token.
#[derive(Deserialize, JsonSchema)]
pub struct CompletionRequest {
    pub prompt: String,
    #[serde(default)]
    pub logprobs: Option<Logprobs>,
    #[serde(flatten)]
    pub params: GenParams,
}

/// One turn of a conversation (`system`, `user` or `assistant`).
#[derive(Deserialize, serde::Serialize, JsonSchema)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// `POST /v1/chat/completions` (decoders): the model's chat template applied to `messages`,
/// monitored per token.
#[derive(Deserialize, JsonSchema)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub logprobs: Option<Logprobs>,
    #[serde(default)]
    pub top_logprobs: Option<usize>,
    #[serde(flatten)]
    pub params: GenParams,
}

// ---- Answers -------------------------------------------------------------------------------

/// What the monitors decided on one request: every firing and the block, if any. Every inference
/// answer carries it as `glassbox` (a blocked request's 403 error too).
#[derive(Serialize, JsonSchema)]
pub struct Decisions {
    pub request_id: String,
    /// Each token on which a monitor's rule held, in order.
    pub firings: Vec<Firing>,
    /// The monitor that blocked the request, or null.
    pub blocked: Option<Blocked>,
}

impl Decisions {
    pub fn new(request_id: &str, report: &Report) -> Self {
        Decisions {
            request_id: request_id.to_string(),
            firings: report.firings.clone(),
            blocked: report.blocked.clone(),
        }
    }
}

/// Token counts, as OpenAI reports them (`completion_tokens` only where something was generated).
#[derive(Serialize, JsonSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<usize>,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: Option<usize>) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens.unwrap_or(0),
        }
    }
}

/// One input's embedding.
#[derive(Serialize, JsonSchema)]
pub struct Embedding {
    #[schemars(extend("const" = "embedding"))]
    pub object: &'static str,
    /// Which input of the request.
    pub index: usize,
    pub embedding: Vec<f32>,
}

/// The answer of `POST /v1/embeddings`.
#[derive(Serialize, JsonSchema)]
pub struct EmbeddingsResponse {
    #[schemars(extend("const" = "list"))]
    pub object: &'static str,
    pub data: Vec<Embedding>,
    pub model: String,
    pub usage: Usage,
    pub glassbox: Decisions,
}

/// Why generation ended (OpenAI's values: a block reads as `content_filter`).
#[derive(Clone, Copy, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop sequence, the end-of-turn token, or the client left.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// A monitor blocked the rest.
    ContentFilter,
}

/// A token and its log-probability, with the token's UTF-8 bytes (a piece may be part of a
/// character).
#[derive(Serialize, JsonSchema)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// One generated token's log-probability and its most likely alternatives (chat layout).
#[derive(Serialize, JsonSchema)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

/// `logprobs` of a chat choice: one entry per generated token.
#[derive(Serialize, JsonSchema)]
pub struct ChatLogprobs {
    pub content: Vec<TokenLogprob>,
}

/// `logprobs` of a completion choice (the legacy layout: parallel lists per token).
#[derive(Serialize, JsonSchema)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    /// Per token, the alternatives asked for, by their text.
    pub top_logprobs: Vec<BTreeMap<String, f32>>,
}

impl ChatLogprobs {
    pub fn new(model: &Model, tokens: &[Choice]) -> Self {
        let entry = |id: u32, logprob: f32| {
            let token = model.tokenizer.piece(id);
            TopLogprob {
                bytes: token.clone().into_bytes(),
                token,
                logprob,
            }
        };
        let content = tokens
            .iter()
            .map(|c| {
                let TopLogprob {
                    token,
                    logprob,
                    bytes,
                } = entry(c.id, c.logprob);
                TokenLogprob {
                    token,
                    logprob,
                    bytes,
                    top_logprobs: c.top.iter().map(|&(t, l)| entry(t, l)).collect(),
                }
            })
            .collect();
        ChatLogprobs { content }
    }
}

impl CompletionLogprobs {
    pub fn new(model: &Model, tokens: &[Choice]) -> Self {
        let piece = |id: u32| model.tokenizer.piece(id);
        CompletionLogprobs {
            tokens: tokens.iter().map(|c| piece(c.id)).collect(),
            token_logprobs: tokens.iter().map(|c| c.logprob).collect(),
            top_logprobs: tokens
                .iter()
                .map(|c| c.top.iter().map(|&(t, l)| (piece(t), l)).collect())
                .collect(),
        }
    }
}

/// One choice of a completion, or its part in a streamed chunk (`text` then holds the new text
/// and `finish_reason` is null; the last chunk has only `finish_reason`).
#[derive(Serialize, JsonSchema)]
pub struct CompletionChoice {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<CompletionLogprobs>,
    /// Null in every streamed chunk but the last, as OpenAI's clients expect.
    pub finish_reason: Option<FinishReason>,
}

/// The assistant's message in a chat answer.
#[derive(Serialize, JsonSchema)]
pub struct AssistantMessage {
    #[schemars(extend("const" = "assistant"))]
    pub role: &'static str,
    pub content: String,
}

/// What a streamed chat chunk adds: the first names the role (with empty content), the next
/// ones the new text, the last none (`{}`), as OpenAI's stream does.
#[derive(Serialize, JsonSchema, Default)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("const" = "assistant"))]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One choice of a chat answer (`message`), or its part in a streamed chunk (`delta`, with
/// `finish_reason` null but in the last chunk).
#[derive(Serialize, JsonSchema)]
pub struct ChatChoice {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<AssistantMessage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<Delta>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<ChatLogprobs>,
    /// Null in every streamed chunk but the last.
    pub finish_reason: Option<FinishReason>,
}

/// What differs between the completions and the chat layout of a choice.
pub trait ChoiceLayout: Serialize + Send + Sized + 'static {
    /// The route that answers in this layout.
    const ROUTE: &'static str;
    /// `object` of a whole answer and of a streamed chunk.
    const OBJECT: &'static str;
    const CHUNK_OBJECT: &'static str;
    /// The whole text of an answer.
    fn whole(text: String, logprobs: Option<(&Model, &[Choice])>, finish: FinishReason) -> Self;
    /// The chunk a stream opens with, before any text (chat: the assistant's role).
    fn start() -> Option<Self>;
    /// New text in a streamed chunk.
    fn piece(text: String, logprobs: Option<(&Model, &[Choice])>) -> Self;
    /// The last streamed chunk's choice.
    fn end(finish: FinishReason) -> Self;
}

impl ChoiceLayout for CompletionChoice {
    const ROUTE: &'static str = "/v1/completions";
    const OBJECT: &'static str = "text_completion";
    const CHUNK_OBJECT: &'static str = "text_completion";
    fn whole(text: String, logprobs: Option<(&Model, &[Choice])>, finish: FinishReason) -> Self {
        CompletionChoice {
            finish_reason: Some(finish),
            ..Self::piece(text, logprobs)
        }
    }
    fn start() -> Option<Self> {
        None
    }
    fn piece(text: String, logprobs: Option<(&Model, &[Choice])>) -> Self {
        CompletionChoice {
            index: 0,
            text: Some(text),
            logprobs: logprobs.map(|(m, t)| CompletionLogprobs::new(m, t)),
            finish_reason: None,
        }
    }
    fn end(finish: FinishReason) -> Self {
        CompletionChoice {
            index: 0,
            text: None,
            logprobs: None,
            finish_reason: Some(finish),
        }
    }
}

impl ChoiceLayout for ChatChoice {
    const ROUTE: &'static str = "/v1/chat/completions";
    const OBJECT: &'static str = "chat.completion";
    const CHUNK_OBJECT: &'static str = "chat.completion.chunk";
    fn whole(text: String, logprobs: Option<(&Model, &[Choice])>, finish: FinishReason) -> Self {
        ChatChoice {
            message: Some(AssistantMessage {
                role: "assistant",
                content: text,
            }),
            logprobs: logprobs.map(|(m, t)| ChatLogprobs::new(m, t)),
            delta: None,
            ..Self::end(finish)
        }
    }
    fn start() -> Option<Self> {
        Some(ChatChoice {
            index: 0,
            message: None,
            delta: Some(Delta {
                role: Some("assistant"),
                content: Some(String::new()),
            }),
            logprobs: None,
            finish_reason: None,
        })
    }
    fn piece(content: String, logprobs: Option<(&Model, &[Choice])>) -> Self {
        ChatChoice {
            index: 0,
            message: None,
            delta: Some(Delta {
                role: None,
                content: Some(content),
            }),
            logprobs: logprobs.map(|(m, t)| ChatLogprobs::new(m, t)),
            finish_reason: None,
        }
    }
    fn end(finish: FinishReason) -> Self {
        ChatChoice {
            index: 0,
            message: None,
            delta: Some(Delta::default()),
            logprobs: None,
            finish_reason: Some(finish),
        }
    }
}

/// The answer of `POST /v1/completions` (`object`: `text_completion`) and of
/// `POST /v1/chat/completions` (`chat.completion`); with `stream`, each server-sent event holds
/// one of these with the new text (`chat.completion.chunk` for chat), the last one the finish
/// reason and `glassbox`, then `[DONE]`.
#[derive(Serialize, JsonSchema)]
pub struct CompletionResponse<C> {
    pub id: String,
    pub object: &'static str,
    /// When the request was answered, in Unix seconds (the same in every chunk of a stream).
    pub created: u64,
    /// The deployment's model name.
    pub model: String,
    pub choices: Vec<C>,
    /// Absent from streamed chunks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// The monitors' decisions: in the answer, or in the last streamed chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub glassbox: Option<Decisions>,
}

/// The `error` of a failed request.
#[derive(Serialize, JsonSchema)]
pub struct ErrorDetail {
    /// `invalid_request`, `unauthorized`, `forbidden`, `not_found`, `conflict`, `blocked`,
    /// `rate_limited`, `unavailable` or `server_error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub message: String,
}

/// The body of every error answer; a blocked request's also carries the decisions.
#[derive(Serialize, JsonSchema)]
pub struct ErrorResponse {
    pub error: ErrorDetail,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub glassbox: Option<Decisions>,
}

/// Most alternatives a request may ask for per token (OpenAI's limit).
const MAX_TOP_LOGPROBS: usize = 20;
/// Most stop sequences (OpenAI's limit).
const MAX_STOP: usize = 4;

impl GenParams {
    /// The generation settings, each checked; a 400 names the field at fault.
    pub fn config(
        &self,
        limits: &crate::config::Limits,
        top_logprobs: usize,
    ) -> ApiResult<GenerateConfig> {
        let max_new = self.max_completion_tokens.or(self.max_tokens).unwrap_or(16);
        if max_new > limits.max_new_tokens {
            return Err(ApiError::bad(format!(
                "max_tokens {max_new} exceeds the limit of {} (limits.max_new_tokens)",
                limits.max_new_tokens
            )));
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::bad("`n` must be 1: one choice per request"));
        }
        if top_logprobs > MAX_TOP_LOGPROBS {
            return Err(ApiError::bad(format!(
                "`top_logprobs` must be at most {MAX_TOP_LOGPROBS}, got {top_logprobs}"
            )));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOP || stop.iter().any(String::is_empty) {
            return Err(ApiError::bad(format!(
                "`stop` takes at most {MAX_STOP} non-empty strings"
            )));
        }
        let d = Sampling::greedy();
        let sampling = Sampling {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k: self.top_k.unwrap_or(d.top_k),
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            repetition_penalty: self.repetition_penalty.unwrap_or(d.repetition_penalty),
            seed: self.seed.unwrap_or(d.seed),
        };
        sampling.validate().map_err(|e| {
            ApiError::bad(
                e.to_string()
                    .trim_start_matches("invalid input: ")
                    .to_string(),
            )
        })?;
        Ok(GenerateConfig {
            max_new,
            sampling,
            stop,
            top_logprobs,
        })
    }
}
