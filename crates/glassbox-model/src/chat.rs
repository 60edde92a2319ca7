//! Chat templates: the Jinja template a chat model ships (GGUF `tokenizer.chat_template` or
//! `tokenizer_config.json`'s `chat_template`) rendered with minijinja in Hugging Face's dialect
//! (`messages`, `add_generation_prompt`, `bos_token`, `eos_token`, `raise_exception`, Python
//! string methods).

use std::path::Path;

use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The chat template of a Hugging Face model directory, if it has one: `chat_template` in
/// `tokenizer_config.json` (a string, or a list of named templates of which `default` is used),
/// else a `chat_template.jinja` file.
pub fn template_of_dir(dir: &Path) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return std::fs::read_to_string(&jinja)
            .map(Some)
            .map_err(|e| ModelError::io(&jinja, e));
    }
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::config(&path, "<json>", format!("not valid JSON: {e}")))?;
    Ok(match json.get("chat_template") {
        Some(serde_json::Value::String(t)) => Some(t.clone()),
        Some(serde_json::Value::Array(named)) => named
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str())
            .map(str::to_string),
        _ => None,
    })
}

/// The conversation format of a family whose checkpoints may ship without a template (Gemma's
/// GGUF files carry none): the turns Gemma was trained on, `<start_of_turn>role … <end_of_turn>`,
/// with the assistant called `model` and a system prompt folded into the first user turn.
pub const GEMMA_TEMPLATE: &str = r#"{{ bos_token }}
{%- if messages and messages[0]['role'] == 'system' -%}
  {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
  {%- set loop_messages = messages[1:] -%}
{%- else -%}
  {%- set first_user_prefix = '' -%}
  {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
  {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
    {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
  {%- endif -%}
  {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
  {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}
  {{- message['content'] | trim }}
  {{- '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{ '<start_of_turn>model\n' }}
{%- endif -%}"#;

/// The built-in template for a GGUF `general.architecture` without one of its own.
pub fn builtin_template(architecture: &str) -> Option<&'static str> {
    architecture.starts_with("gemma").then_some(GEMMA_TEMPLATE)
}

/// The work one render may do (minijinja's fuel: about one unit per instruction and per 64
/// bytes of data created or processed), so a hostile template — one that loops for ever or
/// doubles a string into gigabytes — is refused in milliseconds with bounded memory (≈ 128 MB)
/// instead of hanging or exhausting the server. Real templates need one unit per 64 bytes of
/// conversation and a few per turn: conversations of tens of MB fit.
///
/// minijinja 3.1.0 materialised a deep list concatenation without charging for it
/// (`ns.l = ns.l + ns.l` in a loop: 14 GB before it was killed); the workspace uses a patched
/// copy that charges for it (`vendor/README.md`).
pub const TEMPLATE_FUEL: u64 = 2_000_000;

/// A compiled chat template, rendered in minijinja's sandbox: no file or network access, the
/// recursion limit of 500, and [`TEMPLATE_FUEL`].
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error names its line.
    pub fn new(source: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_fuel(Some(TEMPLATE_FUEL));
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| template_error(&e))?;
        Ok(Self { env })
    }

    /// The conversation as the model expects its prompt; `add_generation_prompt` appends the
    /// opening of the assistant's turn.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| template_error(&e))?;
        template
            .render(minijinja::context! {
                messages => minijinja::Value::from(minijinja::value::Serde(messages)),
                add_generation_prompt => add_generation_prompt,
                bos_token => bos_token,
                eos_token => eos_token,
            })
            .map_err(|e| template_error(&e))
    }
}

fn template_error(e: &minijinja::Error) -> ModelError {
    let at = e
        .line()
        .map(|l| format!(" at template line {l}"))
        .unwrap_or_default();
    let detail = e.detail().unwrap_or_default();
    let msg = match e.kind() {
        ErrorKind::InvalidOperation if !detail.is_empty() => {
            format!("the template refused the conversation{at}: {detail}")
        }
        ErrorKind::OutOfFuel => format!(
            "the chat template does more work than Glassbox allows a template ({TEMPLATE_FUEL} \
             fuel: loops or data out of proportion to the conversation){at}; refused"
        ),
        _ => format!("{}{at}", e.to_string().lines().next().unwrap_or_default()),
    };
    ModelError::ChatTemplate(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str) -> Result<String> {
        ChatTemplate::new(source)?.render(&[Message::new("user", "hi")], true, "<s>", "</s>")
    }

    #[test]
    fn hostile_templates_are_refused_quickly_and_within_memory() {
        let started = std::time::Instant::now();
        for (what, source) in [
            ("loops", "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"),
            ("doubling", "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}"),
            ("repetition", "{{ 'x' * 10000000000 }}"),
            // Materialised uncharged by minijinja 3.1.0 itself (vendor/README.md).
            ("list doubling", "{% set ns = namespace(l=[1]) %}{% for i in range(40) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l|length }}"),
            ("list doubling, one more", "{% set ns = namespace(l=[1]) %}{% for i in range(40) %}{% set ns.l = ns.l + ns.l + [1] %}{% endfor %}{{ ns.l|length }}"),
        ] {
            let e = render(source).expect_err(what).to_string();
            assert!(e.contains("more work than Glassbox allows") || e.contains("repeat"), "{what}: {e}");
        }
        let e = render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").unwrap_err();
        assert!(e.to_string().contains("recursion"), "{e}");
        // Refusals, not hangs (a generous bound: this is about orders of magnitude).
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
    }

    #[test]
    fn lists_built_item_by_item_still_render() {
        // The patched charge applies only to materialised concatenations (every 33rd here).
        let source = "{% set ns = namespace(l=[]) %}{% for i in range(2000) %}{% set ns.l = ns.l + [i] %}{% endfor %}{{ ns.l|length }} {{ ns.l|last }}";
        assert_eq!(render(source).unwrap(), "2000 1999");
    }

    #[test]
    fn a_long_real_conversation_fits_the_budget() {
        let t = ChatTemplate::new(GEMMA_TEMPLATE).unwrap();
        let long = "word ".repeat(400_000); // 2 MB in one turn
        let mut turns = vec![Message::new("user", &long)];
        for i in 0..200 {
            let role = if i % 2 == 0 { "assistant" } else { "user" };
            turns.push(Message::new(role, "a short turn"));
        }
        let out = t.render(&turns, true, "<bos>", "<eos>").unwrap();
        assert!(out.len() > long.len() && out.ends_with("<start_of_turn>model\n"));
    }
}
