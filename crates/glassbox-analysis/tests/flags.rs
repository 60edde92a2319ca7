//! Sensitivity flags on MiniLM: a feature built to point from the control texts towards a
//! concept's texts is flagged for it; its opposite is not.

use glassbox_analysis::catalog::flags::{flags, gate};
use glassbox_analysis::catalog::taxonomy::{ConceptText, Taxonomy};
use glassbox_model::{registry, Device, Model};
use glassbox_store::catalog::Feature;

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
    // Labelled data: more controls for the decision, and held-out texts to confirm it.
    let row = |text: &str, concept: &str, split: &str| ConceptText {
        text: text.into(),
        concept: concept.into(),
        split: split.into(),
    };
    let mut data = vec![
        row("The bus was late again this morning.", "control", "train"),
        row(
            "Water boils at a lower temperature on mountains.",
            "control",
            "train",
        ),
        row(
            "The spreadsheet lists every order since March.",
            "control",
            "train",
        ),
        row(
            "He repainted the fence a pale shade of green.",
            "control",
            "train",
        ),
        row(
            "The cat curled up next to the fireplace.",
            "cats",
            "heldout",
        ),
        row(
            "Our kitten learned to open the cupboard door.",
            "cats",
            "heldout",
        ),
        row(
            "The old tomcat guarded the barn at night.",
            "cats",
            "heldout",
        ),
        row(
            "A kitten slept inside the laundry basket.",
            "cats",
            "heldout",
        ),
    ];
    for t in [
        "The meeting moved to Thursday afternoon.",
        "Tides follow the phases of the moon.",
        "The recipe needs three eggs and some butter.",
        "The printer on the second floor is jammed.",
        "Interest rates rose for the third month in a row.",
        "The hikers reached the summit before noon.",
        "Copy the file into the backup folder tonight.",
        "The choir rehearses every Wednesday evening.",
        "A new bridge will connect the two villages.",
        "The lecture covered the causes of inflation.",
        "Check the tyre pressure before a long drive.",
        "The garden needs weeding after the rain.",
    ] {
        data.push(row(t, "control", "heldout"));
    }
    let (taxonomy, added) = Taxonomy::parse(TAXONOMY, "test").unwrap().with_data(&data);
    assert_eq!(added, data.len());
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
    let (f, mut report) = flags(&model, &sae, &taxonomy, &[]).unwrap();
    assert_eq!(f[0].len(), 1, "{:?}", f[0]);
    let flag = &f[0][0].flag;
    assert_eq!(flag.concept, "cats");
    assert!(
        flag.score >= 0.5
            && flag.evidence.contains("cats texts")
            && flag.evidence.contains("held out"),
        "{flag:?}"
    );
    assert_eq!(f[0][0].confirmed, Some(true), "{flag:?}");
    assert!(f[1].is_empty(), "{:?}", f[1]);
    // The density gate: a feature that fires on more than 1 % of tokens loses its flags.
    let mut features = vec![Feature::default(); sae.d_sae()];
    features[0].count = 5;
    features[0].max = f[0][0].peak;
    gate(&mut features, &f, 1000, &taxonomy, &mut report);
    assert_eq!(features[0].flags.len(), 1);
    assert_eq!(report.concepts[0].precision, Some(1.0), "{report:?}");
    features[0].count = 50;
    gate(&mut features, &f, 1000, &taxonomy, &mut report);
    assert!(features[0].flags.is_empty());
    // … and so does one whose concept peak is a small part of its corpus maximum.
    (features[0].count, features[0].max) = (5, 3.0 * f[0][0].peak);
    gate(&mut features, &f, 1000, &taxonomy, &mut report);
    assert!(features[0].flags.is_empty());
    assert_eq!(
        (report.concepts[0].flagged, report.concepts[0].precision),
        (0, None)
    );
}
