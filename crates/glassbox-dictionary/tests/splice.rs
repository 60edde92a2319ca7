//! Splicing a dictionary into the real forward pass: an exact dictionary recovers all of the
//! loss, one that reconstructs nothing recovers none, on a decoder (tiny GPT-2, cross-entropy)
//! and an encoder (MiniLM, sentence-embedding cosine).

use std::path::Path;

use glassbox_dictionary::splice::loss_recovered;
use glassbox_dictionary::{Activation, DictConfig, Sae};
use glassbox_model::{registry, Device, Model};

/// A ReLU SAE with latents +e_i and −e_i: it reconstructs any input exactly.
fn exact(d: usize, hook: &str) -> Sae {
    let mut sae = Sae::init(
        DictConfig::sae(Activation::Relu { l1: 0.0 }, d, 2 * d, "m", hook),
        0,
    )
    .unwrap();
    sae.w_dec.iter_mut().for_each(|w| *w = 0.0);
    for i in 0..d {
        sae.w_dec[i * d + i] = 1.0;
        sae.w_dec[(d + i) * d + i] = -1.0;
    }
    sae.w_enc_t = sae.w_dec.clone();
    sae
}

/// Reconstructs every input as zero.
fn nothing(d: usize, hook: &str) -> Sae {
    let mut sae = exact(d, hook);
    sae.w_dec.iter_mut().for_each(|w| *w = 0.0);
    sae
}

fn texts(model: &Model) -> (Vec<Vec<u32>>, std::ops::Range<usize>) {
    let (prefix, suffix) = model.tokenizer.special_affixes().unwrap();
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let ids = model.tokenizer.encode_plain(&readme).unwrap();
    let len = 24;
    let contexts = ids
        .chunks(len)
        .take(10)
        .map(|c| [prefix.as_slice(), c, suffix.as_slice()].concat())
        .collect();
    (contexts, prefix.len()..prefix.len() + len)
}

fn check(model: &Model, hook: &str) {
    let d = model.config.d_model;
    let (contexts, content) = texts(model);
    let full = loss_recovered(model, &exact(d, hook), &contexts, content.clone()).unwrap();
    assert!(
        (full.spliced - full.clean).abs() < 1e-4
            && (full.loss_recovered.unwrap() - 1.0).abs() < 1e-3,
        "{full:?}"
    );
    // (The tiny GPT-2 has random weights: zeroing a hook may even lower its loss.)
    assert!((full.zero_ablated - full.clean).abs() > 1e-3, "{full:?}");
    // Decoders also report the KL divergence of the next-token distribution: none for an
    // exact splice, a clear one for a splice that reconstructs nothing.
    let decoder = model.config.is_decoder();
    assert_eq!(full.kl.is_some(), decoder, "{full:?}");
    if decoder {
        assert!(full.kl.unwrap().abs() < 1e-5, "{full:?}");
    }
    let none = loss_recovered(model, &nothing(d, hook), &contexts, content).unwrap();
    assert!(
        (none.spliced - none.zero_ablated).abs() < 1e-6
            && none.loss_recovered.unwrap().abs() < 1e-4,
        "{none:?}"
    );
    if decoder {
        assert!(none.kl.unwrap() > 1e-3, "{none:?}");
    }
}

#[test]
fn splicing_into_a_decoder() {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../glassbox-model/tests/fixtures/tiny-gpt2");
    check(
        &Model::load(&dir, &Device::Cpu).unwrap(),
        "blocks.1.hook_resid_pre",
    );
}

#[test]
fn splicing_into_an_encoder() {
    let dir =
        registry::resolve("minilm").expect("MiniLM must be installed: run `cargo glassbox setup`");
    check(
        &Model::load(&dir, &Device::Cpu).unwrap(),
        "blocks.3.hook_resid_pre",
    );
}
