//! Rewrites `fuzz/seeds/` from real files: the repository's fixtures, deployment files and
//! taxonomy, and the installed models and main-job store where present.
//!
//!   cargo run -p glassbox-fuzz --example write_seeds
//!
//! (Not a test: the test command runs ignored tests too, and this deletes and rewrites the
//! seeds the replay test reads.)

use std::path::{Path, PathBuf};

use glassbox_fuzz::{fuzz_dir, seeds};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let fixtures = root.join("crates/glassbox-model/tests/fixtures");
    let home = std::env::var_os("GLASSBOX_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/glassbox"));
    let seeds_dir = fuzz_dir().join("seeds");
    let _ = std::fs::remove_dir_all(&seeds_dir);
    let put = |target: &str, name: &str, data: &[u8]| {
        let dir = seeds_dir.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    };
    let copy = |target: &str, name: &str, from: &Path| {
        if let Ok(data) = std::fs::read(from) {
            put(target, name, &data);
        }
    };

    put("safetensors", "small", &seeds::small_safetensors());
    copy(
        "safetensors",
        "quants",
        &fixtures.join("gguf/quants.safetensors"),
    );
    copy("gguf", "quants", &fixtures.join("gguf/quants.gguf"));
    put("gguf", "tiny-llama", &seeds::tiny_llama_gguf());
    for m in ["tiny-gpt2", "tiny-llama", "tiny-qwen2"] {
        copy("model_config", m, &fixtures.join(m).join("config.json"));
    }
    // The installed models: their config.json files and their GGUF chat templates.
    for (i, path) in walk(&home.join("models")).iter().enumerate() {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name == "config.json" {
            copy("model_config", &format!("installed-{i}"), path);
        } else if name.ends_with(".gguf") {
            let g = glassbox_model::gguf::GgufFile::open(path).unwrap();
            if let Some(t) = g.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
                put("chat_template", &format!("installed-{i}"), t.as_bytes());
            }
        }
    }
    copy(
        "tokenizer_json",
        "tiny-gpt2",
        &fixtures.join("tiny-gpt2/tokenizer.json"),
    );
    for arch in ["llama", "qwen2", "gemma3_text", "gpt2"] {
        if let Some(t) = glassbox_model::chat::builtin_template(arch) {
            put("chat_template", arch, t.as_bytes());
        }
    }
    put(
        "chat_template",
        "loops",
        b"{% for m in messages %}{% for i in range(3) %}{{ m.content | upper }}{% endfor %}{% endfor %}{{ raise_exception('no') if not messages }}",
    );

    let sae = std::env::temp_dir().join(format!("glassbox-seeds-{}", std::process::id()));
    seeds::small_sae(&sae);
    copy("saelens_cfg", "small", &sae.join("cfg.json"));
    let _ = std::fs::remove_dir_all(&sae);
    let saelens = root.join("crates/glassbox-dictionary/tests/fixtures/saelens");
    for d in ["sl_standard", "sl_topk", "sl_jumprelu", "gb_topk"] {
        copy("saelens_cfg", d, &saelens.join(d).join("cfg.json"));
    }
    copy(
        "store_manifest",
        "main-job",
        &root.join("glassbox-work/acts/manifest.json"),
    );

    let mut rules = Vec::new();
    for (name, path) in [
        ("example", root.join("deploy.example.toml")),
        ("redteam", root.join("redteam/deploy.toml")),
        ("smollm2", root.join("redteam/smollm2.deploy.toml")),
        ("pooled", root.join("redteam/pooled.deploy.toml")),
    ] {
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            if let Some(rule) = line.trim().strip_prefix("when = \"") {
                rules.push(rule.split('"').next().unwrap().to_string());
            }
        }
        put("deploy_toml", name, text.as_bytes());
    }
    rules.extend(
        [
            "feature 1234 > 3.0",
            "count(feature 7 > 0, 16) >= 3",
            "mean(anomaly, 8) > 0.5",
            "logit injection >= -1e3",
            "mean(probe credentials) < 0.2",
        ]
        .map(String::from),
    );
    rules.sort();
    rules.dedup();
    for (i, r) in rules.iter().enumerate() {
        put("rule", &format!("{i:02}"), r.as_bytes());
    }
    copy("taxonomy", "default", &root.join("taxonomy/default.toml"));

    let mut jsonl = String::new();
    for (i, t) in ["The cat sat.", "ünïcödé 🙂", "", "line\nbreak"]
        .iter()
        .enumerate()
    {
        jsonl += &serde_json::json!({"id": i, "text": t}).to_string();
        jsonl.push('\n');
    }
    jsonl += "{\"text\": 3}\n";
    put("corpus_jsonl", "small", jsonl.as_bytes());
    put(
        "corpus_parquet",
        "small",
        &parquet_seed(&["The cat sat.", "ünïcödé", "third"]),
    );

    // HTTP: the first byte picks the route (see src/http.rs).
    let bodies: [(u8, &str); 9] = [
        (0, r#"{"input": ["hello", "world"]}"#),
        (
            1,
            r#"{"prompt": "the quick brown fox", "max_tokens": 3, "temperature": 0.7, "top_p": 0.9, "seed": 1}"#,
        ),
        (
            1,
            r#"{"prompt": "a b", "max_tokens": 2, "stream": true, "logprobs": 2, "stop": ["x"]}"#,
        ),
        (
            2,
            r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}"#,
        ),
        (
            3,
            r#"{"name": "f", "dictionary": "d", "when": "feature 3 > 1", "action": "steer", "feature": 3, "strength": 2.0}"#,
        ),
        (4, "{}"),
        (5, "key=gbx_not_a_key"),
        (6, r#"{"prompt": "hello", "max_tokens": 2, "variants": []}"#),
        (8, "q=cat&limit=5"),
    ];
    for (i, (route, body)) in bodies.iter().enumerate() {
        let mut data = vec![*route];
        data.extend(body.as_bytes());
        put("http", &format!("{i:02}"), &data);
    }
}

/// Every file under `dir`, recursively, in name order.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn parquet_seed(texts: &[&str]) -> Vec<u8> {
    use parquet::basic::Compression;
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use std::sync::Arc;
    let schema = Arc::new(
        parquet::schema::parser::parse_message_type(
            "message doc { REQUIRED BYTE_ARRAY text (UTF8); }",
        )
        .unwrap(),
    );
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let mut out = Vec::new();
    let mut w = SerializedFileWriter::new(&mut out, schema, props).unwrap();
    let mut rg = w.next_row_group().unwrap();
    let values: Vec<ByteArray> = texts.iter().map(|t| (*t).into()).collect();
    let mut col = rg.next_column().unwrap().unwrap();
    col.typed::<ByteArrayType>()
        .write_batch(&values, None, None)
        .unwrap();
    col.close().unwrap();
    rg.close().unwrap();
    w.close().unwrap();
    out
}
