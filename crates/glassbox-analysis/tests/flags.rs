//! Sensitivity flags on MiniLM: a feature built to point from the control texts towards a
//! concept's texts is flagged for it; its opposite is not.

use glassbox_analysis::catalog::flags::flags;
use glassbox_analysis::catalog::taxonomy::Taxonomy;
use glassbox_model::{registry, Device, Model};

mod common;
use common::{hook_rows, two_way_dictionary};

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

/// Sentences the dictionary's direction is built from (none of them in the taxonomy).
const CAT_SENTENCES: &[&str] = &[
    "Our old cat naps in the sunny window.",
    "The kitten knocked a glass off the table.",
    "She adopted two cats from the shelter.",
    "A cat's whiskers help it judge narrow gaps.",
];
const OTHER_SENTENCES: &[&str] = &[
    "The invoice is due at the end of the month.",
    "Add two cups of flour and a pinch of salt.",
    "The server restarts every night at two.",
    "Heavy rain flooded the valley road.",
];

#[test]
fn a_feature_aligned_with_a_concept_is_flagged_and_its_opposite_is_not() {
    let dir =
        registry::resolve("minilm").expect("MiniLM must be installed: run `cargo glassbox setup`");
    let model = Model::load(&dir, &Device::Cpu).unwrap();
    let taxonomy = Taxonomy::parse(TAXONOMY, "test").unwrap();
    // The direction comes from other sentences than the ones the flags are scored on, so a
    // flag shows that the feature generalises to the concept, not that it memorised examples.
    let (cats, others) = (CAT_SENTENCES, OTHER_SENTENCES);
    for s in cats.iter().chain(others) {
        assert!(
            !taxonomy.concepts[0].examples.iter().any(|e| e == s)
                && !taxonomy.controls.iter().any(|e| e == s)
        );
    }
    let mut sae = two_way_dictionary(&model, HOOK, cats, others);
    // Feature 0's threshold sits halfway between the highest token of the other sentences and
    // the lowest peak of the cat sentences (a max-margin cut on the training sentences only).
    let d = model.config.d_model;
    let projections = |text: &str| -> Vec<f32> {
        hook_rows(&model, HOOK, text)
            .chunks(d)
            .map(|row| row.iter().zip(&sae.w_enc_t[..d]).map(|(a, b)| a * b).sum())
            .collect()
    };
    let peak = |text: &str| projections(text).into_iter().fold(f32::MIN, f32::max);
    let negative = others.iter().map(|t| peak(t)).fold(f32::MIN, f32::max);
    let positive = cats.iter().map(|t| peak(t)).fold(f32::MAX, f32::min);
    assert!(positive > negative, "the training sentences separate");
    sae.b_enc[0] = -(negative + positive) / 2.0;
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
