//! Interop with SAELens, against fixtures written by `scripts/reference/saelens_interop.py`:
//! dictionaries saved by SAELens load here and encode like SAELens; a dictionary saved by
//! Glassbox is encoded by SAELens exactly as Glassbox encodes it.

use std::path::{Path, PathBuf};

use glassbox_dictionary::saelens;
use safetensors::SafeTensors;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/saelens")
}

fn tensor(st: &SafeTensors, name: &str) -> (Vec<f32>, Vec<usize>) {
    let t = st.tensor(name).unwrap();
    (
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        t.shape().to_vec(),
    )
}

#[test]
fn glassbox_encodes_like_saelens_both_ways() {
    let bytes = std::fs::read(fixtures().join("expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (probe, _) = tensor(&st, "probe");
    for name in ["sl_standard", "sl_topk", "sl_jumprelu", "gb_topk"] {
        let sae = saelens::load(&fixtures().join(name)).unwrap();
        let codes = sae.encode(&probe).unwrap();
        let (expected, shape) = tensor(&st, name);
        let d_sae = shape[1];
        let mut ours = vec![0f32; expected.len()];
        for (i, row) in codes.rows.iter().enumerate() {
            for &(j, v) in row {
                ours[i * d_sae + j as usize] = v;
            }
        }
        assert_eq!(codes.rows.len() * d_sae, expected.len(), "{name}: rows");
        let mut worst = 0f32;
        for (a, b) in ours.iter().zip(&expected) {
            worst = worst.max((a - b).abs() / b.abs().max(1.0));
        }
        assert!(worst < 1e-4, "{name}: max relative difference {worst}");
        let active = expected.iter().filter(|v| **v > 0.0).count();
        assert!(active > 0, "{name}: the fixture must have active latents");
    }
    // SAELens decodes Glassbox's codes to Glassbox's reconstruction.
    let sae = saelens::load(&fixtures().join("gb_topk")).unwrap();
    let (_, xhat) = sae.reconstruct(&probe).unwrap();
    let (expected, _) = tensor(&st, "gb_topk.decode");
    assert!(!expected.is_empty());
    assert_eq!(xhat.len(), expected.len(), "decode: lengths");
    for (a, b) in xhat.iter().zip(&expected) {
        assert!(
            (a - b).abs() < 1e-3 * b.abs().max(1.0),
            "decode: {a} vs {b}"
        );
    }
}
