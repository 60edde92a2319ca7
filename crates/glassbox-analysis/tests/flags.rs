//! Sensitivity flags on MiniLM: a feature built to point from the control texts towards a
//! concept's texts is flagged for it; its opposite is not.

use glassbox_analysis::catalog::flags::flags;
use glassbox_analysis::catalog::taxonomy::Taxonomy;
use glassbox_model::{registry, Device, Model};

mod common;
use common::two_way_dictionary;

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
    let sae = two_way_dictionary(
        &model,
        HOOK,
        &strs(&taxonomy.concepts[0].examples),
        &strs(&taxonomy.controls),
    );
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
