//! The OpenAI-compatible request bodies, typed: what the handlers parse and what the OpenAPI
//! document describes (`/openapi.json` derives their JSON Schemas from these types, so the
//! two cannot drift apart).

use glassbox_model::generate::GenerateConfig;
use glassbox_model::sampling::Sampling;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{ApiError, ApiResult};

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
