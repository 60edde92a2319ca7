//! The packaged chat model SmolLM2-135M-Instruct (a Q4_1 GGUF, Llama architecture) against
//! independent references (see `reference/mod.rs` for the fixtures and the tolerance), and its
//! chat template against the prompt the template defines.

use std::sync::OnceLock;

use glassbox_model::chat::Message;
use glassbox_model::Model;

mod common;
mod reference;

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    reference::model("smollm2", &MODEL)
}

#[test]
fn config_and_tokenizer_come_from_the_gguf_metadata() {
    let m = model();
    let c = &m.config;
    assert_eq!(
        (c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.d_mlp),
        (30, 576, 9, 3, 1536)
    );
    assert_eq!((c.vocab_size, c.max_positions), (49152, 8192));
    assert!(c.tie_embeddings);
    assert_eq!((c.bos_token_id, c.eos_token_id), (Some(1), Some(2)));

    reference::tokenizer_matches_llama_cpp(m, "smollm2", &["<|"]);
}

#[test]
fn logits_and_residual_stream_match_transformers() {
    reference::logits_and_residual_stream_match(model(), "smollm2");
}

#[test]
fn greedy_generation_matches_transformers_token_for_token() {
    reference::greedy_generation_matches(model(), "smollm2", 120);
}

#[test]
fn the_chat_template_renders_the_prompt_it_defines() {
    let m = model();
    let (_, meta) = reference::reference("smollm2");
    let rendered = m
        .apply_chat_template(
            &[Message::new("user", "What is the boiling point of water?")],
            true,
        )
        .unwrap();
    assert_eq!(rendered, meta["prompts"][1]["text"].as_str().unwrap());
    // The special tokens in the text become single tokens.
    let ids = m.tokenizer.encode_plain(&rendered).unwrap();
    let im_start = m.tokenizer.encode_plain("<|im_start|>").unwrap();
    assert_eq!(im_start.len(), 1);
    assert_eq!(ids.iter().filter(|&&t| t == im_start[0]).count(), 3);
    // With a system message of its own, no default one is added; without the generation
    // prompt, no assistant turn is opened.
    let own = m
        .apply_chat_template(
            &[
                Message::new("system", "Be brief."),
                Message::new("user", "Hi"),
            ],
            false,
        )
        .unwrap();
    assert_eq!(
        own,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
}

#[test]
fn the_kv_cache_equals_the_uncached_pass_at_1_100_and_2000_tokens() {
    reference::kv_cache_equals_uncached_pass(model());
}
