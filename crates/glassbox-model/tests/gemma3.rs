//! The packaged Gemma-3-270M (a Q4_K_M GGUF: Q5_0, Q8_0, Q4_K and Q6_K tensors; SentencePiece
//! vocabulary) against independent references (see `reference/mod.rs` for the fixtures and the
//! tolerance). Its 1,200-token prompt reaches past the 512-position sliding window, so the
//! local layers' masking and RoPE base are checked as well as the global ones'.

use std::sync::OnceLock;

use glassbox_model::chat::Message;
use glassbox_model::Model;

mod common;
mod reference;

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    reference::model("gemma3", &MODEL)
}

#[test]
fn config_and_tokenizer_come_from_the_gguf_metadata() {
    let m = model();
    let c = &m.config;
    assert_eq!(
        (
            c.n_layers,
            c.d_model,
            c.n_heads,
            c.n_kv_heads,
            c.d_head,
            c.d_mlp
        ),
        (18, 640, 4, 1, 256, 2048)
    );
    assert_eq!((c.vocab_size, c.max_positions), (262_144, 32_768));
    assert_eq!((c.bos_token_id, c.eos_token_id), (Some(2), Some(1)));
    // Five sliding-window layers (window 512, RoPE base 10,000) before each global one
    // (RoPE base 1,000,000).
    let global: Vec<usize> = (0..c.n_layers).filter(|&l| c.window(l).is_none()).collect();
    assert_eq!(global, [5, 11, 17]);
    assert_eq!(c.window(0), Some(512));
    assert_eq!((c.rope_theta(0), c.rope_theta(5)), (Some(1e4), Some(1e6)));

    reference::tokenizer_matches_llama_cpp(
        m,
        "gemma3",
        &["<bos>", "<start_of_turn>", "<end_of_turn>", "<unused0>"],
    );
    // Text starts with <bos>; words read with their leading space.
    let ids = m.tokenize("Hello world", false).unwrap();
    assert_eq!(ids[0], 2);
    assert_eq!(m.tokenizer.piece(ids[2]), " world");
}

#[test]
fn logits_and_residual_stream_match_transformers() {
    reference::logits_and_residual_stream_match(model(), "gemma3");
}

#[test]
fn greedy_generation_matches_transformers_token_for_token() {
    reference::greedy_generation_matches(model(), "gemma3", 120);
}

#[test]
fn the_builtin_chat_template_renders_gemmas_turns() {
    let m = model();
    let (_, meta) = reference::reference("gemma3");
    let rendered = m
        .apply_chat_template(
            &[Message::new("user", "What is the boiling point of water?")],
            true,
        )
        .unwrap();
    // The fixture prompt was tokenized with <bos> added; the template writes it itself.
    let want = format!("<bos>{}", meta["prompts"][1]["text"].as_str().unwrap());
    assert_eq!(rendered, want);
    let ids = m.tokenizer.encode_plain(&rendered).unwrap();
    assert_eq!(ids[0], 2);
    assert_eq!(
        ids.iter().filter(|&&t| t == 105).count(),
        2,
        "<start_of_turn>"
    );
    // A system prompt joins the first user turn; the assistant is called `model`.
    let own = m
        .apply_chat_template(
            &[
                Message::new("system", "Be brief."),
                Message::new("user", "Hi"),
                Message::new("assistant", "Hello."),
                Message::new("user", "Bye"),
            ],
            false,
        )
        .unwrap();
    assert_eq!(
        own,
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n"
    );
    let err = m
        .apply_chat_template(
            &[Message::new("user", "a"), Message::new("user", "b")],
            true,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("alternate"), "{err}");
}

#[test]
fn the_kv_cache_equals_the_uncached_pass_at_1_100_and_2000_tokens() {
    reference::kv_cache_equals_uncached_pass(model());
}
