//! Harvesting into the store and reading it back, on the tiny GPT-2 checkpoint with the
//! project's README as a (small, real) corpus.

use std::path::{Path, PathBuf};

use glassbox_model::{BlockHook, Device, HookPoint, Hooks, Model};
use glassbox_store::activations::{ActivationStore, Manifest};
use glassbox_store::harvest::{harvest, HarvestConfig};

fn model() -> Model {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../glassbox-model/tests/fixtures/tiny-gpt2");
    Model::load(&dir, &Device::Cpu).unwrap()
}

fn corpus() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let path = dir.path().join("readme.txt");
    std::fs::write(&path, readme).unwrap();
    (dir, path)
}

fn config(tokens: usize) -> HarvestConfig {
    HarvestConfig {
        hook: HookPoint::block(1, BlockHook::ResidPre),
        target: None,
        tokens,
        context_len: 32,
        batch: 4,
        shard_rows: 256,
    }
}

#[test]
fn harvested_rows_equal_a_direct_forward_pass() {
    let m = model();
    let (_c, corpus) = corpus();
    let out = tempfile::tempdir().unwrap();
    let manifest = harvest(
        &m,
        "tiny-gpt2",
        &corpus,
        out.path(),
        &config(1000),
        &mut |_, _| {},
    )
    .unwrap();
    assert!(
        manifest.complete && manifest.tokens >= 1000 && manifest.shards.len() >= 3,
        "{manifest:?}"
    );
    assert_eq!(
        manifest.contexts_done * 32,
        manifest.tokens,
        "GPT-2 adds no special tokens"
    );

    let store = ActivationStore::open(out.path()).unwrap();
    let shard = store.read_shard(0).unwrap();
    let first: Vec<u32> = shard.token_ids[..32].to_vec();
    let mut hooks = Hooks::none().record(config(0).hook);
    m.forward(&m.batch_ids(&[first]).unwrap(), &mut hooks, None)
        .unwrap();
    let direct = hooks
        .cache()
        .get(&config(0).hook)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for (a, b) in shard.rows[..direct.len()].iter().zip(&direct) {
        assert!(
            (a - b).abs() <= 2e-3 * b.abs().max(1.0),
            "stored {a}, computed {b} (f16 rounding only)"
        );
    }
}

/// Every stored row's f16 bits (as read back: f32 of an f16 is exact), and token ids, in order.
fn contents(dir: &Path) -> (Vec<u32>, Vec<u32>) {
    let s = ActivationStore::open(dir).unwrap();
    let (mut ids, mut bits) = (Vec::new(), Vec::new());
    for i in 0..s.manifest.shards.len() {
        let shard = s.read_shard(i).unwrap();
        ids.extend(shard.token_ids);
        bits.extend(shard.rows.iter().map(|v| v.to_bits()));
    }
    (ids, bits)
}

#[test]
fn an_interrupted_harvest_resumes_to_the_same_store() {
    let m = model();
    let (_c, corpus) = corpus();
    let (whole, parts) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    harvest(
        &m,
        "tiny-gpt2",
        &corpus,
        whole.path(),
        &config(1200),
        &mut |_, _| {},
    )
    .unwrap();
    // The same command, interrupted in the middle of its run (the progress callback unwinds
    // out of the harvest after 6 batches, as a kill would stop it: the batch in memory is lost),
    // then run again to completion.
    let interrupted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut batches = 0;
        harvest(
            &m,
            "tiny-gpt2",
            &corpus,
            parts.path(),
            &config(1200),
            &mut |done, _| {
                batches += 1;
                if batches > 6 {
                    panic!("interrupted at {done} tokens");
                }
            },
        )
    }));
    assert!(interrupted.is_err(), "the first run must be interrupted");
    let partial = Manifest::read(parts.path()).unwrap();
    assert!(
        !partial.complete && partial.tokens > 0 && partial.tokens < 1200,
        "{partial:?}"
    );
    let resumed = harvest(
        &m,
        "tiny-gpt2",
        &corpus,
        parts.path(),
        &config(1200),
        &mut |_, _| {},
    )
    .unwrap();
    let full = Manifest::read(whole.path()).unwrap();
    assert!(resumed.complete);
    assert_eq!(resumed.tokens, full.tokens);
    assert_eq!(resumed.shards.len(), full.shards.len());
    let (ids_a, bits_a) = contents(whole.path());
    let (ids_b, bits_b) = contents(parts.path());
    assert_eq!(ids_a.len(), full.tokens);
    assert_eq!(ids_a, ids_b, "the same tokens in the same order");
    assert_eq!(bits_a.len(), full.tokens * 64);
    assert!(bits_a == bits_b, "the same rows, bit for bit");
}

#[test]
fn a_store_from_another_hook_is_not_extended() {
    let m = model();
    let (_c, corpus) = corpus();
    let out = tempfile::tempdir().unwrap();
    harvest(
        &m,
        "tiny-gpt2",
        &corpus,
        out.path(),
        &config(200),
        &mut |_, _| {},
    )
    .unwrap();
    let mut other = config(400);
    other.hook = HookPoint::block(0, BlockHook::ResidPost);
    let err = harvest(&m, "tiny-gpt2", &corpus, out.path(), &other, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("another hook") && err.contains("another directory"),
        "{err}"
    );
}

#[test]
fn corrupt_shards_and_empty_corpora_are_reported() {
    let m = model();
    let (_c, corpus) = corpus();
    let out = tempfile::tempdir().unwrap();
    let manifest = harvest(
        &m,
        "tiny-gpt2",
        &corpus,
        out.path(),
        &config(600),
        &mut |_, _| {},
    )
    .unwrap();
    let shard = out.path().join(&manifest.shards[1].file);
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 100]).unwrap();
    let store = ActivationStore::open(out.path()).unwrap();
    let err = store.read_shard(1).err().unwrap().to_string();
    assert!(
        err.contains("shard-00001") && err.contains("corrupt"),
        "{err}"
    );

    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("e.txt"), "\n\n").unwrap();
    let err = harvest(
        &m,
        "tiny-gpt2",
        empty.path(),
        tempfile::tempdir().unwrap().path(),
        &config(100),
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("no context"), "{err}");
}

#[test]
fn shuffled_batches_cover_the_store_and_skip_deterministically() {
    let m = model();
    let (_c, corpus) = corpus();
    let out = tempfile::tempdir().unwrap();
    harvest(
        &m,
        "tiny-gpt2",
        &corpus,
        out.path(),
        &config(1000),
        &mut |_, _| {},
    )
    .unwrap();
    let store = ActivationStore::open(out.path()).unwrap();
    // Shards hold whole batches here, so one epoch is every stored row exactly once.
    assert!(store.manifest.shards.iter().all(|s| s.rows % 64 == 0));
    let per_epoch = store.rows() / 64;
    let batches: Vec<_> = store
        .batches(64, 2, 7)
        .unwrap()
        .take(per_epoch.max(40))
        .map(|b| b.unwrap())
        .collect();
    assert!(batches
        .iter()
        .all(|b| b.inputs.len() == 64 * 64 && b.targets.is_none()));
    let rows_of = |v: &[f32]| -> Vec<Vec<u32>> {
        let mut rows: Vec<Vec<u32>> = v
            .chunks(64)
            .map(|r| r.iter().map(|x| x.to_bits()).collect())
            .collect();
        rows.sort();
        rows
    };
    let epoch: Vec<f32> = batches[..per_epoch]
        .iter()
        .flat_map(|b| b.inputs.iter().copied())
        .collect();
    let stored: Vec<f32> = (0..store.manifest.shards.len())
        .flat_map(|i| store.read_shard(i).unwrap().rows)
        .collect();
    assert!(
        rows_of(&epoch) == rows_of(&stored),
        "one epoch is the store's rows, each once"
    );
    assert_ne!(epoch, stored, "and they are shuffled");
    let mut skipped = store.batches(64, 2, 7).unwrap();
    skipped.fast_forward(23);
    assert_eq!(skipped.next().unwrap().unwrap(), batches[23]);
    assert_ne!(
        batches[0],
        store.batches(64, 2, 8).unwrap().next().unwrap().unwrap(),
        "the seed matters"
    );
}

/// A transcoder store holds a second hook's rows, row for row with the first, and shuffles
/// them together.
#[test]
fn a_target_hook_is_stored_and_shuffled_with_its_inputs() {
    let m = model();
    let (_c, corpus) = corpus();
    let out = tempfile::tempdir().unwrap();
    let cfg = HarvestConfig {
        target: Some(HookPoint::block(1, BlockHook::MlpOut)),
        ..config(600)
    };
    let manifest = harvest(&m, "tiny-gpt2", &corpus, out.path(), &cfg, &mut |_, _| {}).unwrap();
    assert_eq!(
        manifest.target_hook.as_deref(),
        Some("blocks.1.hook_mlp_out")
    );
    let store = ActivationStore::open(out.path()).unwrap();
    let shard = store.read_shard(0).unwrap();
    let first: Vec<u32> = shard.token_ids[..32].to_vec();
    let mut hooks = Hooks::none().record(cfg.hook).record(cfg.target.unwrap());
    m.forward(&m.batch_ids(&[first]).unwrap(), &mut hooks, None)
        .unwrap();
    let get = |p: HookPoint| -> Vec<f32> {
        hooks
            .cache()
            .get(&p)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (x, y) = (get(cfg.hook), get(cfg.target.unwrap()));
    let targets = shard.targets.expect("targets stored");
    for (stored, direct) in [(&shard.rows, &x), (&targets, &y)] {
        for (a, b) in stored.iter().zip(direct.iter()) {
            assert!((a - b).abs() <= 2e-3 * b.abs().max(1.0), "{a} vs {b}");
        }
    }
    // Shuffled batches keep each input with its own target.
    let b = store.batches(16, 2, 3).unwrap().next().unwrap().unwrap();
    let t = b.targets.unwrap();
    let d = 64;
    let all_rows: Vec<f32> = (0..store.manifest.shards.len())
        .flat_map(|i| store.read_shard(i).unwrap().rows)
        .collect();
    let all_targets: Vec<f32> = (0..store.manifest.shards.len())
        .flat_map(|i| store.read_shard(i).unwrap().targets.unwrap())
        .collect();
    assert_eq!(b.inputs.len(), 16 * d);
    let mut matched = 0;
    for (row, trow) in b.inputs.chunks(d).zip(t.chunks(d)) {
        let i = all_rows
            .chunks(d)
            .position(|r| r == row)
            .expect("every batch row is a stored row");
        assert_eq!(&all_targets[i * d..(i + 1) * d], trow);
        matched += 1;
    }
    assert_eq!(matched, 16);
    // Extending it without the target hook is refused.
    let err = harvest(
        &m,
        "tiny-gpt2",
        &corpus,
        out.path(),
        &config(900),
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("target hook"), "{err}");
}
