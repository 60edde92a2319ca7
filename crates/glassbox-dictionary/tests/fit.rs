//! The one check of whether a dictionary fits where it is used, on the tiny GPT-2 fixture
//! (d_model 64, d_mlp 256): each refusal names what does not fit.

use std::path::Path;

use glassbox_dictionary::fit::Use;
use glassbox_dictionary::sweep::SourceInfo;
use glassbox_dictionary::{Activation, DictConfig, Sae};
use glassbox_model::{BlockHook, Device, HookPoint, Model};

fn model() -> Model {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../glassbox-model/tests/fixtures/tiny-gpt2");
    Model::load(&dir, &Device::Cpu).unwrap()
}

fn sae(d_in: usize, hook: &str, target: Option<&str>) -> Sae {
    let mut cfg = DictConfig::sae(Activation::TopK { k: 2 }, d_in, 8, "tiny-gpt2", hook);
    cfg.target_hook = target.map(str::to_string);
    Sae::init(cfg, 0).unwrap()
}

fn refusal(sae: &Sae, model: &Model, purpose: Use) -> String {
    sae.hook_in(model, purpose)
        .expect_err("must be refused")
        .to_string()
}

#[test]
fn a_dictionary_fits_a_hook_of_its_width_for_what_it_is_used_for() {
    let m = model();
    let resid = sae(64, "blocks.1.hook_resid_pre", None);
    for purpose in [Use::Read, Use::Vocabulary, Use::Replace] {
        assert_eq!(
            resid.hook_in(&m, purpose).unwrap(),
            HookPoint::Block(1, BlockHook::ResidPre)
        );
    }
    let err = refusal(&sae(384, "blocks.1.hook_resid_pre", None), &m, Use::Read);
    assert!(
        err.contains("384") && err.contains("64") && err.contains("another model"),
        "{err}"
    );
    // The MLP's activations are d_mlp wide: readable, but not in the residual stream's space.
    let mlp = sae(256, "blocks.0.mlp.hook_post", None);
    assert!(mlp.hook_in(&m, Use::Read).is_ok());
    let err = refusal(&mlp, &m, Use::Vocabulary);
    assert!(
        err.contains("vocabulary effects") && err.contains("64"),
        "{err}"
    );
    let err = refusal(&sae(64, "blocks.0.mlp.hook_post", None), &m, Use::Read);
    assert!(err.contains("256"), "{err}");
    // Transcoders: the target hook must exist and match; never a replacement of their input.
    let tc = sae(64, "blocks.0.hook_resid_mid", Some("blocks.0.hook_mlp_out"));
    assert!(tc.hook_in(&m, Use::Vocabulary).is_ok());
    assert!(refusal(&tc, &m, Use::Replace).contains("transcoder"));
    let err = refusal(
        &sae(64, "blocks.0.hook_resid_mid", Some("blocks.7.hook_mlp_out")),
        &m,
        Use::Read,
    );
    assert!(
        err.contains("blocks.7.hook_mlp_out") && err.contains("0..1"),
        "{err}"
    );
    // Hooks that have no rows per position, and hooks that do not exist.
    let err = refusal(&sae(64, "blocks.0.attn.hook_pattern", None), &m, Use::Read);
    assert!(err.contains("per query and key"), "{err}");
    assert!(
        refusal(&sae(64, "blocks.0.hook_nothing", None), &m, Use::Read).contains("hook_nothing")
    );
}

#[test]
fn a_dictionary_fits_a_store_of_its_hook_and_width() {
    let store = |d_in: usize, hook: &str, target: Option<&str>| SourceInfo {
        d_in,
        rows: 100,
        model: "tiny-gpt2".into(),
        hook: hook.into(),
        target_hook: target.map(str::to_string),
        origin: "acts/".into(),
    };
    let resid = sae(64, "blocks.1.hook_resid_pre", None);
    assert!(resid
        .check_source(&store(64, "blocks.1.hook_resid_pre", None))
        .is_ok());
    let err = resid
        .check_source(&store(32, "blocks.1.hook_resid_pre", None))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("reads 64") && err.contains("32-dimensional") && err.contains("acts/"),
        "{err}"
    );
    let err = resid
        .check_source(&store(64, "blocks.0.hook_resid_pre", None))
        .unwrap_err()
        .to_string();
    assert!(err.contains("trained on blocks.1.hook_resid_pre"), "{err}");
    let tc = sae(64, "blocks.0.hook_resid_mid", Some("blocks.0.hook_mlp_out"));
    let err = tc
        .check_source(&store(64, "blocks.0.hook_resid_mid", None))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--target-hook"), "{err}");
}
