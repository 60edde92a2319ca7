//! Bad input through the real binary: each case must exit non-zero with a message that names
//! what is wrong, and never panic. Cases are made by damaging a copy of a real checkpoint.

mod common;
use common::glassbox;
use glassbox_testkit::fixture;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use candle_core::{DType, Device, Tensor};

/// A copy of the tiny GPT-2 checkpoint to damage.
fn model_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture("tiny-gpt2").join(f), dir.path().join(f)).unwrap();
    }
    dir
}

/// Runs `glassbox run DIR TEXT`, asserts a clean failure and returns stderr.
fn fails(args: &[&str], expect: &[&str]) -> String {
    let out = glassbox(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit 1 for {args:?}; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panic for {args:?}: {stderr}");
    for e in expect {
        assert!(
            stderr.contains(e),
            "stderr for {args:?} lacks `{e}`: {stderr}"
        );
    }
    stderr
}

fn run_dir(dir: &Path, expect: &[&str]) -> String {
    fails(&["run", dir.to_str().unwrap(), "hello world"], expect)
}

fn edit_weights(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &path).unwrap();
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&path, cfg.to_string()).unwrap();
}

#[test]
fn truncated_safetensors() {
    let d = model_copy();
    let path = d.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    run_dir(d.path(), &["model.safetensors", "truncated or corrupt"]);
}

#[test]
fn garbage_safetensors_header() {
    let d = model_copy();
    std::fs::write(
        d.path().join("model.safetensors"),
        b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a header",
    )
    .unwrap();
    run_dir(
        d.path(),
        &["model.safetensors", "not a valid safetensors file"],
    );
}

#[test]
fn tensor_with_wrong_shape() {
    let d = model_copy();
    edit_weights(d.path(), |t| {
        t.insert(
            "transformer.h.0.mlp.c_fc.weight".into(),
            Tensor::zeros((64, 100), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    run_dir(d.path(), &["h.0.mlp.c_fc.weight", "[64, 100]", "[64, 256]"]);
}

#[test]
fn tensor_with_wrong_dtype() {
    let d = model_copy();
    edit_weights(d.path(), |t| {
        t.insert(
            "transformer.ln_f.weight".into(),
            Tensor::zeros(64, DType::U32, &Device::Cpu).unwrap(),
        );
    });
    run_dir(d.path(), &["ln_f.weight", "dtype"]);
}

#[test]
fn tensor_with_nan() {
    let d = model_copy();
    edit_weights(d.path(), |t| {
        t.insert(
            "transformer.ln_f.bias".into(),
            Tensor::full(f32::NAN, 64, &Device::Cpu).unwrap(),
        );
    });
    run_dir(d.path(), &["ln_f.bias", "NaN"]);
}

#[test]
fn missing_tensor() {
    let d = model_copy();
    edit_weights(d.path(), |t| {
        t.remove("transformer.h.1.attn.c_proj.bias");
    });
    run_dir(d.path(), &["h.1.attn.c_proj.bias", "missing"]);
}

#[test]
fn missing_config_key() {
    let d = model_copy();
    edit_config(d.path(), |c| {
        c.as_object_mut().unwrap().remove("n_head");
    });
    run_dir(d.path(), &["config.json", "n_head", "missing"]);
}

#[test]
fn invalid_config_values() {
    let d = model_copy();
    edit_config(d.path(), |c| c["n_head"] = serde_json::json!("four"));
    run_dir(d.path(), &["n_head", "integer"]);
    edit_config(d.path(), |c| c["n_head"] = serde_json::json!(5));
    run_dir(d.path(), &["not divisible"]);
    edit_config(d.path(), |c| c["model_type"] = serde_json::json!("mamba"));
    run_dir(d.path(), &["model_type", "mamba", "not supported"]);
    std::fs::write(d.path().join("config.json"), "{ not json").unwrap();
    run_dir(d.path(), &["config.json", "not valid JSON"]);
}

#[test]
fn tokenizer_that_does_not_match_the_vocab() {
    let d = model_copy();
    // A BERT WordPiece tokenizer of 30522 tokens beside a 384-token embedding.
    let bert_tok = tempfile::NamedTempFile::new().unwrap();
    let wordpiece = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": (0..1000).map(|i| (format!("w{i}"), i)).collect::<HashMap<_, _>>(), "unk_token": "w0"}
    });
    std::fs::write(bert_tok.path(), wordpiece.to_string()).unwrap();
    std::fs::copy(bert_tok.path(), d.path().join("tokenizer.json")).unwrap();
    run_dir(d.path(), &["tokenizer.json", "1000 tokens", "384 rows"]);
    std::fs::write(d.path().join("tokenizer.json"), "[]").unwrap();
    run_dir(d.path(), &["tokenizer.json", "cannot parse"]);
    // A merge list that makes the tokenizers library itself panic (found by fuzzing): one
    // clean error, no panic message.
    let hostile = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions/tokenizer_json/bpe-merge-slice-panic");
    std::fs::copy(hostile, d.path().join("tokenizer.json")).unwrap();
    run_dir(
        d.path(),
        &["tokenizer.json", "the tokenizers library failed"],
    );
}

#[test]
fn missing_files_and_unknown_models() {
    let d = model_copy();
    std::fs::remove_file(d.path().join("tokenizer.json")).unwrap();
    run_dir(d.path(), &["tokenizer.json", "is missing"]);
    fails(
        &["run", "no-such-model", "hi"],
        &["no-such-model", "glassbox models"],
    );
}

#[test]
fn unknown_hook_names() {
    let m = fixture("tiny-gpt2");
    let m = m.to_str().unwrap();
    fails(
        &["run", m, "hi", "--hook", "blocks.2.hook_resid_pre"],
        &["blocks.2.hook_resid_pre", "blocks 0..1"],
    );
    fails(
        &["run", m, "hi", "--hook", "blocks.0.hook_resid_sideways"],
        &["hook_resid_sideways", "one of"],
    );
    fails(
        &["run", m, "hi", "--hook", "blocks.0.attn.hook_rot_q"],
        &["hook_rot_q", "no such hook point"],
    );
    fails(
        &["run", m, "hi", "--hook", "blocks.*.hook_nothing"],
        &["matches no hook point"],
    );
}

#[test]
fn over_long_input_is_refused_or_truncated_explicitly() {
    let m = fixture("tiny-gpt2");
    let m = m.to_str().unwrap();
    let long = "interpretability ".repeat(200);
    fails(
        &["run", m, &long],
        &["longer than the model's 128 positions", "--truncate"],
    );
    let out = glassbox(&["run", m, &long, "--truncate", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["token_ids"].as_array().unwrap().len(), 128);
}

#[test]
fn invalid_utf8_input_file() {
    let m = fixture("tiny-gpt2");
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), b"valid start \xc3\x28 then bad").unwrap();
    fails(
        &[
            "run",
            m.to_str().unwrap(),
            "--file",
            f.path().to_str().unwrap(),
        ],
        &["not valid UTF-8", "offset 12"],
    );
}

#[test]
fn generate_refuses_encoders_and_empty_prompts() {
    let m = fixture("tiny-gpt2");
    fails(&["generate", m.to_str().unwrap(), ""], &["prompt is empty"]);
    fails(
        &["generate", "minilm", "Once upon a time"],
        &["`bert` is an encoder", "needs a decoder"],
    );
}

#[test]
fn setup_without_a_working_pip_says_so_and_leaves_nothing() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_glassbox"))
        .args(["setup", "--python", "/nonexistent/python3"])
        .env("GLASSBOX_HOME", home.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("/nonexistent/python3") && stderr.contains("GLASSBOX_PYTHON"),
        "{stderr}"
    );
    let models = home.path().join("models");
    let leftovers: Vec<_> = std::fs::read_dir(&models)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "partial install left behind: {leftovers:?}"
    );
}

#[test]
fn setup_is_idempotent() {
    // The test suite ran `glassbox setup` before the tests; a second run installs nothing.
    let out = glassbox(&["setup", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["models"][0]["installed_now"], false);
}

#[test]
fn a_reader_that_closes_the_pipe_ends_output_quietly() {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_glassbox"))
        // ~700 KB of JSON: far more than a pipe buffer holds.
        .args([
            "run",
            "minilm",
            "--file",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"),
            "--truncate",
            "--hook",
            "blocks.*",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    drop(child.stdout.take()); // like `| head -c 16`
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Ended by SIGPIPE (the default a shell pipeline expects) or a clean exit; never an error
    // message, never a panic.
    use std::os::unix::process::ExitStatusExt;
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
    assert!(stderr.is_empty(), "{stderr}");
}

/// A damaged copy of the packaged SmolLM2 GGUF: `edit` changes its bytes.
fn damaged_gguf(edit: impl FnOnce(&mut Vec<u8>)) -> (tempfile::TempDir, String) {
    let src = glassbox_model::registry::resolve("smollm2")
        .expect("SmolLM2 must be installed: run `cargo glassbox setup`");
    let mut bytes = std::fs::read(src).unwrap();
    edit(&mut bytes);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, bytes).unwrap();
    (dir, path.to_string_lossy().into_owned())
}

fn find(bytes: &[u8], needle: &[u8]) -> usize {
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not in the file", String::from_utf8_lossy(needle)))
}

#[test]
fn damaged_gguf_files_and_bad_generation_requests_are_named() {
    // Truncated: the tensor that no longer fits is named.
    let (_d, p) = damaged_gguf(|b| b.truncate(b.len() / 2));
    fails(&["run", &p, "hi"], &["truncated", "tensor `blk."]);
    // An unknown quantisation type: named, with its tensor (the type id follows the name, the
    // dimension count and two dimensions).
    let (_d, p) = damaged_gguf(|b| {
        let at = find(b, b"blk.0.attn_q.weight") + "blk.0.attn_q.weight".len() + 4 + 16;
        b[at..at + 4].copy_from_slice(&39u32.to_le_bytes());
    });
    fails(
        &["run", &p, "hi"],
        &["`blk.0.attn_q.weight`", "type 39", "supported"],
    );
    // Contradictory metadata: rotary dimensions that do not match the heads.
    let (_d, p) = damaged_gguf(|b| {
        let key = b"llama.rope.dimension_count";
        let at = find(b, key) + key.len() + 4; // after the value type
        b[at..at + 4].copy_from_slice(&48u32.to_le_bytes());
    });
    fails(
        &["run", &p, "hi"],
        &["llama.rope.dimension_count", "48", "64"],
    );
    // A chat template that does not render: its line is named.
    let (_d, p) = damaged_gguf(|b| {
        let at = find(b, b"{% endfor %}");
        b[at..at + 12].copy_from_slice(b"{% endfox %}");
    });
    fails(
        &["generate", &p, "hi", "--chat"],
        &["chat template", "line", "endfox"],
    );
    // Sampling out of range, and a prompt longer than the context.
    fails(
        &["generate", "smollm2", "hi", "--top-p", "2"],
        &["top_p", "(0, 1]"],
    );
    fails(
        &["generate", "smollm2", "hi", "--temperature=-1"],
        &["temperature"],
    );
    fails(&["run", "smollm2", ""], &["no tokens"]);
    let long = "word ".repeat(9000);
    fails(&["generate", "smollm2", &long], &["8192 positions"]);
}

/// `run --save`: full activations in a file other tools read, or a clean refusal with
/// nothing left behind.
#[test]
fn run_saves_activations_or_refuses_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("tiny-gpt2");
    let m = model.to_str().unwrap();
    let at = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let out = glassbox(&[
        "run",
        "--model",
        m,
        "hello world",
        "--hook",
        "blocks.*.hook_resid_post",
        "--save",
        &at("all.safetensors"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved = candle_core::safetensors::load(at("all.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<_> = saved.keys().cloned().collect();
    names.sort();
    assert_eq!(
        names,
        ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    );
    let one = glassbox(&[
        "run",
        "--model",
        m,
        "hello world",
        "--hook",
        "blocks.1.hook_resid_post",
        "--save",
        &at("one.npy"),
    ]);
    assert!(one.status.success());
    let npy = Tensor::read_npy(at("one.npy")).unwrap();
    let st = &saved["blocks.1.hook_resid_post"];
    assert_eq!(npy.dims(), st.dims());
    assert_eq!(
        npy.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        st.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );

    // (hook, file, what the error must say)
    let refused = [
        (
            Some("blocks.*.hook_resid_post"),
            at("two.npy"),
            vec!["one array", ".safetensors"],
        ),
        (
            Some("hook_embed"),
            at("x.txt"),
            vec![".safetensors", ".npy"],
        ),
        (None, at("none.safetensors"), vec!["--hook"]),
        (
            Some("hook_embed"),
            "/no/such/dir/x.npy".into(),
            vec!["cannot write", "/no/such/dir/x.npy"],
        ),
    ];
    for (hook, file, expect) in refused {
        let mut args = vec!["run", "--model", m, "hi", "--save", &file];
        if let Some(h) = hook {
            args.extend(["--hook", h]);
        }
        fails(&args, &expect);
    }
    let mut left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["all.safetensors", "one.npy"], "no partial files");
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                todo.push(p.clone());
            }
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
        }
    }
    out
}

/// A model file is untrusted: names inside it (the model's name, a named chat template, a
/// tensor, vocabulary entries) that look like paths must not make Glassbox write anywhere but
/// the directories it was given — through every command that loads a model and writes.
#[test]
fn a_model_file_cannot_make_glassbox_write_outside_its_directories() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let abs = root.join("escaped-absolute");
    let abs = abs.to_str().unwrap();
    let hostile = glassbox_fuzz::seeds::tiny_llama_writer()
        .string("general.name", "../../../escaped-name")
        .string("general.basename", abs)
        .string(
            "tokenizer.chat_template.../../../escaped-template",
            "{{ messages }}",
        )
        .tensor("../../../escaped-tensor.weight", &[8])
        .bytes();
    let model_dir = root.join("models/a/b");
    for d in ["models/a/b", "work", "home", "tmp", "out"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let model = model_dir.join("hostile.gguf");
    std::fs::write(&model, hostile).unwrap();
    std::fs::write(root.join("corpus.txt"), "ab ab a b ab\n".repeat(40)).unwrap();
    let before = files_under(root);

    let (m, out) = (model.to_str().unwrap(), root.join("out"));
    let acts = out.join("acts");
    let resaved = out.join("resaved");
    let corpus = root.join("corpus.txt");
    let saved = out.join("acts.safetensors");
    let commands: Vec<Vec<&str>> = vec![
        vec![
            "run",
            "--model",
            m,
            "ab",
            "--hook",
            "blocks.*",
            "--save",
            saved.to_str().unwrap(),
        ],
        vec![
            "generate",
            "--model",
            m,
            "ab",
            "--chat",
            "--max-tokens",
            "3",
        ],
        vec![
            "harvest",
            "--model",
            m,
            "--hook",
            "blocks.0.hook_resid_post",
            "--corpus",
            corpus.to_str().unwrap(),
            "--tokens",
            "64",
            "--context",
            "16",
            "--batch",
            "2",
            "--out",
            acts.to_str().unwrap(),
        ],
        vec![
            "edit",
            "resave",
            "--model",
            m,
            "--out",
            resaved.to_str().unwrap(),
        ],
        vec![
            "generate",
            "--model",
            resaved.to_str().unwrap(),
            "ab",
            "--chat",
            "--max-tokens",
            "3",
        ],
    ];
    for args in &commands {
        let o = Command::new(env!("CARGO_BIN_EXE_glassbox"))
            .args(args)
            .current_dir(root.join("work"))
            .env("HOME", root.join("home"))
            .env("GLASSBOX_HOME", root.join("home/glassbox"))
            .env("TMPDIR", root.join("tmp"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{args:?}: {stderr}");
    }

    let new: Vec<_> = files_under(root)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    for made in ["out/resaved", "out/acts", "out/acts.safetensors"] {
        assert!(
            new.iter().any(|p| p.starts_with(made)),
            "{made} missing: {new:?}"
        );
    }
    for p in &new {
        assert!(
            p.starts_with("out") || p.starts_with("home/glassbox"),
            "written outside the given directories: {}",
            p.display()
        );
        assert!(!p.to_string_lossy().contains("escaped"), "{}", p.display());
    }
    assert!(!Path::new(abs).exists());
}
