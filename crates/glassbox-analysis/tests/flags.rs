//! Sensitivity flags on MiniLM: a feature built to point from the control texts towards a
//! concept's texts is flagged for it; its opposite is not.

use glassbox_analysis::catalog::flags::flags;
use glassbox_analysis::catalog::taxonomy::Taxonomy;
use glassbox_dictionary::{Activation, DictConfig, Sae};
use glassbox_model::{registry, Device, Model};

mod common;
use common::mean_activation;

const TAXONOMY: &str = r#"
threshold = 0.5
[control]
examples = ["The train leaves at nine.", "Stir the batter until smooth.", "The committee meets on Tuesday.",
            "Binary search halves the interval.", "The river froze early that winter.", "The museum opened a new wing."]
[[concept]]
name = "cats"
examples = ["The cat purred on my lap.", "Kittens chase balls of yarn.", "My tabby cat sleeps all day.",
            "The cat meowed for its dinner.", "A stray kitten hid under the car."]
keywords = ["cat", "kitten"]
"#;

const HOOK: &str = "blocks.3.hook_resid_pre";

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn a_feature_aligned_with_a_concept_is_flagged_and_its_opposite_is_not() {
    let dir =
        registry::resolve("minilm").expect("MiniLM must be installed: run `cargo glassbox setup`");
    let model = Model::load(&dir, &Device::Cpu).unwrap();
    let taxonomy = Taxonomy::parse(TAXONOMY, "test").unwrap();
    let (mc, m0) = (
        mean_activation(&model, HOOK, &strs(&taxonomy.concepts[0].examples)),
        mean_activation(&model, HOOK, &strs(&taxonomy.controls)),
    );
    let w: Vec<f32> = mc.iter().zip(&m0).map(|(a, b)| a - b).collect();
    let norm = w.iter().map(|v| v * v).sum::<f32>().sqrt();
    let w: Vec<f32> = w.iter().map(|v| v / norm).collect();
    let mid: f32 = w
        .iter()
        .zip(mc.iter().zip(&m0))
        .map(|(w, (a, b))| w * (a + b) / 2.0)
        .sum();
    let mut sae = Sae::init(
        DictConfig::sae(
            Activation::Relu { l1: 0.0 },
            384,
            2,
            "minilm",
            "blocks.3.hook_resid_pre",
        ),
        0,
    )
    .unwrap();
    sae.w_enc_t = w.iter().copied().chain(w.iter().map(|v| -v)).collect();
    sae.b_enc = vec![-mid, mid];
    let f = flags(&model, &sae, &taxonomy, &[]).unwrap();
    assert_eq!(f[0].len(), 1, "{:?}", f[0]);
    assert_eq!(f[0][0].concept, "cats");
    assert!(
        f[0][0].score >= 0.5 && f[0][0].evidence.contains("cats examples"),
        "{:?}",
        f[0]
    );
    assert!(f[1].is_empty(), "{:?}", f[1]);
}
