//! Text generation: one forward pass per new token with the KV cache, a [`Sampler`] for the
//! choice, stop sequences and the end-of-sequence token, and text handed out as it becomes
//! final (never half a UTF-8 character, never the start of a stop sequence that may yet match).
//! Hooks are made afresh for every forward pass, so monitors see each token as it is produced.

use serde::Serialize;

use crate::error::{ModelError, Result};
use crate::hooks::Hooks;
use crate::model::Model;
use crate::sampling::{Choice, Sampler, Sampling};

/// What to generate.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GenerateConfig {
    pub max_new: usize,
    pub sampling: Sampling,
    /// Generation ends before the first of these strings (which is not part of the text).
    pub stop: Vec<String>,
    /// Alternatives reported per token with their log-probabilities (0: none).
    pub top_logprobs: usize,
}

/// Why generation ended, in OpenAI's words where they exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// `max_new` tokens, or the model's context is full.
    Length,
    /// The end-of-sequence token or a stop sequence.
    Stop,
    /// The caller stopped it (a monitor blocked, or the client went away).
    Cancelled,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Length => "length",
            Finish::Stop => "stop",
            Finish::Cancelled => "cancelled",
        }
    }
}

/// The result of one generation.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub tokens: Vec<Choice>,
    pub text: String,
    pub finish: Finish,
}

/// The caller's side of the loop: hooks for each forward pass, a look after it, and each new
/// piece of final text.
pub trait Steps {
    /// Hooks for the next forward pass (monitors attach here).
    fn hooks(&mut self) -> Hooks<'_>;
    /// After a forward pass, before the choice: `false` stops (e.g. a monitor blocked).
    fn proceed(&mut self) -> bool {
        true
    }
    /// A new token and the text that became final with it (may be empty); `false` stops.
    fn token(&mut self, _choice: &Choice, _text: &str) -> bool {
        true
    }
}

/// No hooks, no callbacks.
pub struct Plain;

impl Steps for Plain {
    fn hooks(&mut self) -> Hooks<'_> {
        Hooks::none()
    }
}

impl Model {
    /// Generates a continuation of `prompt` (token ids, special tokens included).
    pub fn generate(
        &self,
        prompt: &[u32],
        cfg: &GenerateConfig,
        steps: &mut dyn Steps,
    ) -> Result<Generation> {
        if !self.config.is_decoder() {
            return Err(ModelError::Input(format!(
                "`{}` is an encoder; generation needs a decoder (gpt2, llama, qwen2)",
                self.config.model_type
            )));
        }
        if prompt.is_empty() {
            return Err(ModelError::Input("the prompt is empty".into()));
        }
        if prompt.len() > self.config.max_positions {
            return Err(ModelError::InputTooLong {
                len: prompt.len(),
                max: self.config.max_positions,
            });
        }
        let mut sampler = Sampler::new(cfg.sampling.clone())?;
        let mut cache = self.new_cache();
        let mut history = prompt.to_vec();
        let mut input = prompt.to_vec();
        let mut tokens = Vec::new();
        let mut text = Text::new(&cfg.stop);
        let finish = loop {
            if tokens.len() >= cfg.max_new || cache.len() + input.len() > self.config.max_positions
            {
                break Finish::Length;
            }
            let batch = self.batch_ids(std::slice::from_ref(&input))?;
            let out = {
                let mut hooks = steps.hooks();
                self.forward_last(&batch, &mut hooks, &mut cache)?
            };
            if !steps.proceed() {
                break Finish::Cancelled;
            }
            let row: Vec<f32> = out.to_vec1()?;
            let choice = sampler.choose(&row, &history, cfg.top_logprobs);
            let id = choice.id;
            history.push(id);
            let eos = self.ends_generation(id);
            let new_text = if eos {
                String::new()
            } else {
                text.push(self.tokenizer.decode(&history[prompt.len()..])?)
            };
            let go_on = steps.token(&choice, &new_text);
            tokens.push(choice);
            if eos || text.stopped {
                break Finish::Stop;
            }
            if !go_on {
                break Finish::Cancelled;
            }
            input = vec![id];
        };
        // Text held back for a stop sequence that never came is final now; it belongs to the
        // last token (held text exists only once a token was produced).
        let rest = text.finish();
        if let (Some(last), false) = (tokens.last(), rest.is_empty()) {
            steps.token(last, &rest);
        }
        Ok(Generation {
            tokens,
            text: text.emitted,
            finish,
        })
    }
}

/// The generated text so far, and how much of it is final.
struct Text<'a> {
    stop: &'a [String],
    /// Handed out already.
    emitted: String,
    /// Decoded but held back (a possible stop-sequence start or a partial character).
    pending: String,
    stopped: bool,
}

impl<'a> Text<'a> {
    fn new(stop: &'a [String]) -> Self {
        Self {
            stop,
            emitted: String::new(),
            pending: String::new(),
            stopped: false,
        }
    }

    /// Takes the whole decoded continuation; returns the part that became final.
    fn push(&mut self, decoded: String) -> String {
        let Some(tail) = decoded.strip_prefix(self.emitted.as_str()) else {
            // Decoding changed earlier text (rare, e.g. a merged character): hold all new text.
            self.pending = decoded.chars().skip(self.emitted.chars().count()).collect();
            return String::new();
        };
        self.pending = tail.to_string();
        if let Some(at) = self
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            self.stopped = true;
            self.pending.truncate(at);
            return self.release(self.pending.len());
        }
        // Hold back an incomplete character and any suffix that begins a stop sequence.
        let mut safe = self.pending.trim_end_matches('\u{fffd}').len();
        for s in self.stop {
            for (i, _) in self.pending[..safe].char_indices() {
                if s.starts_with(&self.pending[i..safe]) {
                    safe = i;
                    break;
                }
            }
        }
        self.release(safe)
    }

    fn release(&mut self, upto: usize) -> String {
        let out: String = self.pending[..upto].to_string();
        self.emitted.push_str(&out);
        self.pending.drain(..upto);
        out
    }

    /// At the end nothing more can complete a stop sequence: the held text is final.
    fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        let n = self.pending.len();
        self.release(n)
    }
}

#[cfg(test)]
mod tests {
    use super::Text;

    #[test]
    fn text_is_released_only_when_final() {
        let stop = vec!["\nUser:".to_string()];
        let mut t = Text::new(&stop);
        assert_eq!(t.push("Hello".into()), "Hello");
        // "\nUs" may begin the stop sequence: held.
        assert_eq!(t.push("Hello\nUs".into()), "");
        // It did not: released.
        assert_eq!(t.push("Hello\nUsually".into()), "\nUsually");
        // A partial UTF-8 character (decoded as U+FFFD) is held.
        assert_eq!(t.push("Hello\nUsually \u{fffd}".into()), " ");
        assert_eq!(t.push("Hello\nUsually é".into()), "é");
        assert_eq!(t.push("Hello\nUsually é\nUser: hi".into()), "");
        assert!(t.stopped);
        assert_eq!(t.emitted, "Hello\nUsually é");
        assert_eq!(t.finish(), "");
    }
}
