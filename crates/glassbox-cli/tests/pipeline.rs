//! harvest → train-dict → eval-dict through the real binary, including a training run
//! killed with SIGKILL and resumed by rerunning the same command.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use glassbox_dictionary::{saelens, Activation, DictConfig, Sae};

fn glassbox(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_glassbox"))
        .args(args)
        .output()
        .expect("run glassbox");
    assert!(
        out.status.success(),
        "glassbox {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn tiny_gpt2() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../glassbox-model/tests/fixtures/tiny-gpt2")
        .to_string_lossy()
        .into()
}

/// A small activation store from the project's README (real English text).
fn harvest(dir: &Path) -> PathBuf {
    harvest_into(dir, "acts", &[])
}

fn harvest_into(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let corpus = dir.join("corpus.txt");
    std::fs::write(
        &corpus,
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap(),
    )
    .unwrap();
    let acts = dir.join(name);
    let model = tiny_gpt2();
    let mut args = vec![
        "harvest",
        "--model",
        &model,
        "--hook",
        "blocks.1.hook_resid_pre",
        "--corpus",
        corpus.to_str().unwrap(),
        "--tokens",
        "3000",
        "--context",
        "32",
        "--batch",
        "8",
        "--shard-rows",
        "512",
        "--out",
        acts.to_str().unwrap(),
        "--json",
    ];
    args.extend(extra);
    glassbox(&args);
    acts
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap()
}

fn train_args(acts: &Path, out: &Path) -> Vec<String> {
    [
        "train-dict",
        "--acts",
        acts.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--k",
        "4",
        "--width",
        "512",
        "--batch",
        "256",
        "--steps",
        "1500",
        "--lr",
        "0.002",
        "--checkpoint-every",
        "25",
        "--dead-after",
        "2000",
        "--aux-k",
        "16",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn a_killed_training_run_resumes_to_the_same_loss_curve() {
    let tmp = tempfile::tempdir().unwrap();
    let acts = harvest(tmp.path());
    let (straight, killed) = (tmp.path().join("straight"), tmp.path().join("killed"));
    let args = train_args(&acts, &straight);
    glassbox(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let args = train_args(&acts, &killed);
    let mut child = Command::new(env!("CARGO_BIN_EXE_glassbox"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !killed.join("checkpoint.safetensors").exists() {
        assert!(Instant::now() < deadline, "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !killed.join("history.json").exists(),
        "the run finished before it could be killed; make it longer"
    );

    glassbox(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let read = |d: &Path, f: &str| std::fs::read(d.join(f)).unwrap();
    assert_eq!(
        read(&straight, "history.json"),
        read(&killed, "history.json"),
        "loss curves differ"
    );
    assert_eq!(
        read(&straight, "sae_weights.safetensors"),
        read(&killed, "sae_weights.safetensors")
    );

    // The result is a usable dictionary: it reconstructs most of the variance.
    let out = glassbox(&[
        "eval-dict",
        "--dict",
        straight.to_str().unwrap(),
        "--acts",
        acts.to_str().unwrap(),
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let fve = report["report"]["fve"].as_f64().unwrap();
    assert!(fve > 0.7, "FVE {fve}");
    assert!(report["report"]["l0"].as_f64().unwrap() <= 4.0);
    // Every stored row is evaluated once, not cycled up to --tokens (200,000 by default).
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(acts.join("manifest.json")).unwrap())
            .unwrap();
    let (seen, stored) = (
        report["report"]["tokens"].as_u64().unwrap(),
        manifest["tokens"].as_u64().unwrap(),
    );
    assert!(seen <= stored && seen * 2 > stored, "{seen} of {stored}");
}

#[test]
fn a_dictionary_for_another_width_or_hook_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let acts = harvest(tmp.path());
    let dict = tmp.path().join("dict");
    let mut args = train_args(&acts, &dict);
    let steps = args.iter().position(|a| a == "--steps").unwrap();
    args[steps + 1] = "5".into();
    glassbox(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let eval = |dict: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_glassbox"))
            .args([
                "eval-dict",
                "--dict",
                dict.to_str().unwrap(),
                "--acts",
                acts.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        stderr
    };
    // A dictionary of another width at the same hook (the store holds 64-wide rows).
    let narrow = tmp.path().join("narrow");
    let sae = Sae::init(
        DictConfig::sae(
            Activation::TopK { k: 4 },
            32,
            128,
            "tiny-gpt2",
            "blocks.1.hook_resid_pre",
        ),
        0,
    )
    .unwrap();
    saelens::save(&sae, &narrow, serde_json::Value::Null).unwrap();
    let stderr = eval(&narrow);
    assert!(stderr.contains("32") && stderr.contains("64"), "{stderr}");
    // Point the trained dictionary at another hook.
    let cfg = dict.join("cfg.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("blocks.1.hook_resid_pre", "blocks.0.hook_resid_pre");
    std::fs::write(&cfg, text).unwrap();
    let stderr = eval(&dict);
    assert!(
        stderr.contains("blocks.0.hook_resid_pre") && stderr.contains("blocks.1.hook_resid_pre"),
        "{stderr}"
    );
}

#[test]
fn transcoders_and_jumprelu_train_and_evaluate_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = harvest(tmp.path());
    let pairs = harvest_into(
        tmp.path(),
        "pairs",
        &["--target-hook", "blocks.1.hook_mlp_out"],
    );
    let train = |acts: &Path, out: &Path, extra: &[&str]| {
        let mut args = train_args(acts, out);
        let set = |args: &mut Vec<String>, flag: &str, value: &str| {
            let i = args.iter().position(|a| a == flag).unwrap();
            args[i + 1] = value.into();
        };
        set(&mut args, "--steps", "300");
        for pair in extra.chunks(2) {
            match args.iter().position(|a| a == pair[0]) {
                Some(_) => set(&mut args, pair[0], pair[1]),
                None => args.extend(pair.iter().map(|s| s.to_string())),
            }
        }
        glassbox(&args.iter().map(String::as_str).collect::<Vec<_>>());
    };
    let eval = |dict: &Path, acts: &Path| {
        json_of(&glassbox(&[
            "eval-dict",
            "--dict",
            dict.to_str().unwrap(),
            "--acts",
            acts.to_str().unwrap(),
            "--splice",
            "8",
            "--json",
        ]))
    };

    // A transcoder reads resid_pre and reconstructs the MLP output of the same block.
    let tc = tmp.path().join("transcoder");
    train(&pairs, &tc, &[]);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tc.join("cfg.json")).unwrap()).unwrap();
    assert_eq!(cfg["architecture"], "topk_transcoder");
    assert_eq!(cfg["metadata"]["hook_name_out"], "blocks.1.hook_mlp_out");
    let r = eval(&tc, &pairs);
    assert!(r["report"]["fve"].as_f64().unwrap() > 0.3, "{r}");
    assert_eq!(r["splice"]["hook"], "blocks.1.hook_mlp_out");
    // A transcoder that explains part of the MLP's output changes the next-token distribution
    // (KL > 0) but less than removing the MLP output does (its loss lies below zero-ablation's).
    let splice = &r["splice"];
    let kl = splice["kl"].as_f64().unwrap();
    assert!(kl > 0.0 && kl < 1.0, "{r}");
    assert!(
        splice["spliced"].as_f64().unwrap() < splice["zero_ablated"].as_f64().unwrap(),
        "{r}"
    );
    // Without the target hook's activations it cannot be evaluated.
    let out = Command::new(env!("CARGO_BIN_EXE_glassbox"))
        .args([
            "eval-dict",
            "--dict",
            tc.to_str().unwrap(),
            "--acts",
            plain.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1) && stderr.contains("--target-hook"),
        "{stderr}"
    );

    // JumpReLU: a stronger L0 penalty gives a sparser dictionary.
    let (loose, tight) = (tmp.path().join("jr-loose"), tmp.path().join("jr-tight"));
    train(
        &plain,
        &loose,
        &["--arch", "jumprelu", "--l0", "0.01", "--k", "16"],
    );
    train(
        &plain,
        &tight,
        &["--arch", "jumprelu", "--l0", "1", "--k", "16"],
    );
    let (rl, rt) = (eval(&loose, &plain), eval(&tight, &plain));
    let l0 = |r: &serde_json::Value| r["report"]["l0"].as_f64().unwrap();
    assert!(rl["report"]["fve"].as_f64().unwrap() > 0.5, "{rl}");
    assert!(l0(&rt) < l0(&rl) && l0(&rt) > 0.0, "{rl} {rt}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(loose.join("cfg.json")).unwrap()).unwrap();
    assert_eq!(cfg["architecture"], "jumprelu");
}
