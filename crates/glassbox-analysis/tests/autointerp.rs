//! The LLM labeller over real HTTP, against a stand-in chat endpoint on loopback: the stand-in
//! explains a feature by the word most often marked in its excerpts and judges each snippet by
//! that word, answering with the log-probabilities of "Yes" and "No" as OpenAI's API does.
//! On a MiniLM feature built to fire on cat sentences, a keyword explainer scores high and one
//! that answers the opposite scores low (the truth is the model's own response); a catalog
//! keeps the labels; dead, failing and off-format endpoints give clear errors.

use glassbox_testkit::minilm;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use glassbox_analysis::catalog::autointerp::{
    explain_and_score, AutoInterpConfig, Chat, ChatClient, Endpoint,
};
use glassbox_analysis::AnalysisError;
use glassbox_dictionary::Sae;
use glassbox_model::Model;

mod common;
use common::two_way_dictionary;
use glassbox_store::catalog::{Example, ExampleKind, Feature};
use serde_json::{json, Value};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Keyword,
    Inverted,
    Fails,
    Prose,
}

/// Serves `/v1/chat/completions` on a free loopback port; returns its base URL and a count of
/// the requests it answered.
fn stand_in(mode: Mode) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(60)))
                .unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 2 {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                line.clear();
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            let req: Value = serde_json::from_slice(&body).unwrap();
            let user = req["messages"][1]["content"].as_str().unwrap_or("");
            let (status, out) = match mode {
                Mode::Fails => (500, String::new()),
                Mode::Prose => (
                    200,
                    json!({"choices": [{"message": {"content": "I am not sure."}}]}).to_string(),
                ),
                _ => (200, answer(user, mode == Mode::Inverted).to_string()),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{out}",
                out.len()
            );
        }
    });
    (url, seen)
}

/// Explain: "mentions of W" for the word most often marked `<<W>>`. Judge: "Yes" (log-prob
/// −0.1, "No" −2.4) when the text contains W, the other way round otherwise (or, inverted, the
/// opposite).
fn answer(user: &str, inverted: bool) -> Value {
    if let Some(rest) = user.split("described as: \"").nth(1) {
        let word = rest.split('"').next().unwrap().rsplit(' ').next().unwrap();
        let text = user.rsplit("Text: ").next().unwrap();
        let yes = text.to_lowercase().contains(word) != inverted;
        let (y, n): (f64, f64) = if yes { (-0.1, -2.4) } else { (-2.4, -0.1) };
        let top = json!([{"token": "Yes", "logprob": y}, {"token": "No", "logprob": n}]);
        let token = if yes { "Yes" } else { "No" };
        return json!({"choices": [{"message": {"role": "assistant", "content": token},
            "logprobs": {"content": [{"token": token, "logprob": y.max(n), "top_logprobs": top}]}}]});
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for part in user.split("<<").skip(1) {
        *counts.entry(part.split(">>").next().unwrap()).or_default() += 1;
    }
    let best = counts.into_iter().max_by_key(|(w, n)| (*n, *w)).unwrap().0;
    json!({"choices": [{"message": {"role": "assistant", "content": format!("Mentions of {best}.")}}]})
}

fn client(url: &str) -> ChatClient {
    ChatClient::new(Endpoint {
        url: url.into(),
        model: "stand-in".into(),
        api_key: Some("secret".into()),
        timeout: Duration::from_secs(10),
        retries: 2,
    })
}

const CATS: [&str; 9] = [
    "The cat purred on my lap.",
    "My old cat sleeps all day.",
    "The cat meowed for its dinner.",
    "A stray cat hid under the car.",
    "Our cat chased a moth.",
    "The cat knocked the glass off the table.",
    "Her cat likes the sunny window.",
    "The black cat crossed the road.",
    "A cat sat on the warm roof.",
];
const OTHERS: [&str; 8] = [
    "The train leaves at nine.",
    "Stir the batter until smooth.",
    "The committee meets on Tuesday.",
    "Binary search halves the interval.",
    "The river froze early that winter.",
    "The museum opened a new wing.",
    "Rain is expected tomorrow morning.",
    "He paid the bill by card.",
];
const HOOK: &str = "blocks.3.hook_resid_pre";

/// Feature 0 points from the other sentences towards the cat sentences; feature 1 opposite.
fn cat_dictionary(model: &Model) -> Sae {
    two_way_dictionary(model, HOOK, &CATS, &OTHERS)
}

/// Catalog entries as a build would keep them: tokens as pieces, the cat word marked.
fn feature(model: &Model, id: u32, texts: &[&str]) -> Feature {
    let examples = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let tokens: Vec<String> = model
                .tokenizer
                .encode_plain(t)
                .unwrap()
                .iter()
                .map(|&id| model.tokenizer.piece(id))
                .collect();
            let acts = tokens
                .iter()
                .map(|t| f32::from(t.trim() == "cat"))
                .collect();
            Example {
                kind: if i < 3 {
                    ExampleKind::Top
                } else {
                    ExampleKind::Sample
                },
                activation: 1.0,
                context: 100 * u64::from(id) + i as u64,
                tokens,
                acts,
                focus: 0,
                text: String::new(),
                spans: Vec::new(),
            }
        })
        .collect();
    Feature {
        id,
        examples,
        ..Default::default()
    }
}

#[test]
fn a_keyword_explanation_detects_the_cat_feature_and_its_negation_does_not() {
    let model = minilm();
    let sae = cat_dictionary(&model);
    let pool = vec![feature(&model, 0, &CATS), feature(&model, 1, &OTHERS)];
    let cfg = AutoInterpConfig::default();

    let (url, seen) = stand_in(Mode::Keyword);
    let good = explain_and_score(&client(&url), &model, &sae, &pool[0], &pool, &cfg).unwrap();
    assert_eq!(good.label, "Mentions of cat");
    // 3 held-out cat sentences (samples 2, 4, 6 of 6) and 6 of the 8 other sentences.
    assert_eq!(good.snippets, 9);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1 + 9,
        "one explain request and one judgement per snippet"
    );
    assert!(good.activating >= 3, "{good:?}");
    assert!(good.score >= 0.8, "{good:?}");

    let (url, _) = stand_in(Mode::Inverted);
    let bad = explain_and_score(&client(&url), &model, &sae, &pool[0], &pool, &cfg).unwrap();
    assert!(bad.score <= 0.2, "{bad:?}");
}

#[test]
fn failing_dead_and_off_format_endpoints_are_clear_errors() {
    let (url, seen) = stand_in(Mode::Fails);
    let err = client(&url).chat("s", "u").unwrap_err();
    assert!(matches!(err, AnalysisError::Llm(_)));
    assert!(err.to_string().contains("HTTP 500"), "{err}");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        3,
        "the request and two retries"
    );

    let free = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dead = format!("http://{free}/v1");
    let err = client(&dead).chat("s", "u").unwrap_err().to_string();
    assert!(err.contains("cannot reach") && err.contains(&dead), "{err}");

    let model = minilm();
    let sae = cat_dictionary(&model);
    let pool = vec![feature(&model, 0, &CATS), feature(&model, 1, &OTHERS)];
    let (url, _) = stand_in(Mode::Prose);
    let err = explain_and_score(
        &client(&url),
        &model,
        &sae,
        &pool[0],
        &pool,
        &AutoInterpConfig::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("answered without choices[0].logprobs.content[0].top_logprobs"),
        "{err}"
    );
}

#[test]
fn a_catalog_keeps_the_labels_and_refuses_another_dictionary() {
    use glassbox_analysis::catalog::autointerp::label_catalog;
    use glassbox_store::catalog::sqlite::SqliteCatalog;
    use glassbox_store::catalog::{CatalogMeta, CatalogStore};

    let model = minilm();
    let sae = cat_dictionary(&model);
    let dir = tempfile::tempdir().unwrap();
    let dict = dir.path().join("dict");
    glassbox_dictionary::saelens::save(&sae, &dict, Value::Null).unwrap();
    let meta = CatalogMeta {
        model: "minilm".into(),
        model_sha256: glassbox_store::harvest::model_sha256(&model).unwrap(),
        dict: dict.to_string_lossy().into(),
        dict_sha256: glassbox_store::fsutil::sha256_file(
            &dict.join(glassbox_dictionary::saelens::WEIGHTS),
        )
        .unwrap(),
        hook: HOOK.into(),
        d_sae: 2,
        corpus: "sentences".into(),
        corpus_sha256: String::new(),
        context_len: 16,
        contexts_done: 17,
        tokens: 120,
        generation: 0,
        vocab_effect: String::new(),
    };
    let mut store = SqliteCatalog::open(&dir.path().join("catalog.db")).unwrap();
    let features = vec![feature(&model, 0, &CATS), feature(&model, 1, &OTHERS)];
    store.save(&meta, &features).unwrap();

    let (url, _) = stand_in(Mode::Keyword);
    let cfg = AutoInterpConfig::default();
    let mut seen = Vec::new();
    let failures = label_catalog(
        &mut store,
        &model,
        &sae,
        &dict,
        &client(&url),
        "stand-in",
        &[0],
        &cfg,
        10,
        &mut |id, o| seen.push((id, o.is_ok())),
    )
    .unwrap();
    assert!(failures.is_empty());
    assert_eq!(seen, vec![(0, true)]);
    let f = store.feature(0).unwrap().unwrap();
    assert_eq!(f.label, "Mentions of cat");
    assert!(f.label_score >= 0.8);
    assert!(
        f.label_method.starts_with("llm stand-in: detection"),
        "{}",
        f.label_method
    );
    assert_eq!(
        store.feature(1).unwrap().unwrap().label,
        "",
        "feature 1 untouched"
    );

    // Another dictionary (other weights) is refused before any request.
    let other = dir.path().join("other");
    let mut sae2 = sae.clone();
    sae2.b_enc[0] += 1.0;
    glassbox_dictionary::saelens::save(&sae2, &other, Value::Null).unwrap();
    let err = label_catalog(
        &mut store,
        &model,
        &sae2,
        &other,
        &client(&url),
        "stand-in",
        &[0],
        &cfg,
        10,
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("another dictionary"), "{err}");
}
