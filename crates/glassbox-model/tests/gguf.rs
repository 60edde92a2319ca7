//! GGUF reading: every supported tensor type dequantises to the values of the `gguf` Python
//! package (fixtures from scripts/reference/gguf_fixtures.py), and damaged files fail with
//! errors that say what and where.

use std::path::{Path, PathBuf};

use glassbox_model::gguf::GgufFile;
use glassbox_model::quant::QuantWeight;
use glassbox_model::{Device, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf")
}

const TYPES: [&str; 11] = [
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K",
];

#[test]
fn every_type_dequantises_like_the_gguf_package() {
    let file = GgufFile::open(&fixtures().join("quants.gguf")).unwrap();
    let expected =
        candle_core::safetensors::load(fixtures().join("quants.safetensors"), &Device::Cpu)
            .unwrap();
    assert_eq!(file.tensors.len(), TYPES.len());
    for name in TYPES {
        let info = &file.tensors[name];
        assert_eq!(info.kind.name, name);
        assert_eq!(info.shape, vec![3, 512], "{name}: row-major shape");
        let ours: Tensor = file.dequantize(name).unwrap();
        let want = &expected[name];
        assert_eq!(ours.dims(), want.dims(), "{name}");
        let ours: Vec<f32> = ours.flatten_all().unwrap().to_vec1().unwrap();
        let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(ours.len(), 3 * 512);
        let spread = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(spread > 0.0, "{name}: the fixture is not all zeros");
        for (i, (a, b)) in ours.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{name}[{i}]: {a} vs {b}"
            );
        }
    }
}

/// The blocks the decoder multiplies directly hold the same values as the `gguf` package's
/// dequantisation (the dense path's weights), for every type they take.
#[test]
fn quantised_decoding_weights_hold_the_gguf_packages_values() {
    let file = GgufFile::open(&fixtures().join("quants.gguf")).unwrap();
    let expected =
        candle_core::safetensors::load(fixtures().join("quants.safetensors"), &Device::Cpu)
            .unwrap();
    for name in ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K"] {
        let q = QuantWeight::from_ggml(name, &file.raw(name).unwrap(), 3, 512)
            .unwrap_or_else(|| panic!("{name} is kept quantised"));
        let want: Vec<f32> = expected[name].flatten_all().unwrap().to_vec1().unwrap();
        for (i, (a, b)) in q.dequantize().iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{name}[{i}]: {a} vs {b}"
            );
        }
    }
    assert!(QuantWeight::from_ggml("Q6_K", &file.raw("Q6_K").unwrap(), 3, 512).is_none());
}

fn damaged(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

fn open_err(bytes: &[u8]) -> String {
    let (_dir, path) = damaged(bytes);
    GgufFile::open(&path).unwrap_err().to_string()
}

#[test]
fn truncated_and_corrupt_files_are_refused_with_reasons() {
    let bytes = std::fs::read(fixtures().join("quants.gguf")).unwrap();
    // Cut inside the tensor data, inside the metadata, inside the magic.
    let err = open_err(&bytes[..bytes.len() - 100]);
    assert!(err.contains("truncated") && err.contains("`Q6_K`"), "{err}");
    let err = open_err(&bytes[..60]);
    assert!(
        err.contains("truncated") && err.contains("metadata"),
        "{err}"
    );
    let err = open_err(&bytes[..3]);
    assert!(err.contains("truncated"), "{err}");
    let err = open_err(b"GGML not this format at all");
    assert!(err.contains("not a GGUF file"), "{err}");

    // An unknown quantisation type is named, with its tensor: the type id follows the name, the
    // dimension count (u32) and two u64 dimensions.
    let at = bytes
        .windows(4)
        .position(|w| w == b"Q4_0")
        .expect("the tensor table names Q4_0");
    let mut unknown = bytes.clone();
    unknown[at + 24..at + 28].copy_from_slice(&39u32.to_le_bytes());
    let err = open_err(&unknown);
    assert!(
        err.contains("`Q4_0`") && err.contains("type 39") && err.contains("supported"),
        "{err}"
    );

    // An absurd element count in an array is caught before any allocation.
    let mut huge = bytes.clone();
    let count_at = 8; // the tensor count, after the magic and the version
    huge[count_at..count_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    let err = open_err(&huge);
    assert!(err.contains("corrupt"), "{err}");
}

#[test]
fn a_file_that_shrinks_while_open_is_an_error_not_a_crash() {
    // (With a memory map this was a SIGBUS: pages past the new end no longer exist.)
    let bytes = std::fs::read(fixtures().join("quants.gguf")).unwrap();
    let (_dir, path) = damaged(&bytes);
    let file = GgufFile::open(&path).unwrap();
    assert!(file.raw("F32").is_ok());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(bytes.len() as u64 / 2)
        .unwrap();
    let err = file.raw("Q6_K").unwrap_err().to_string();
    assert!(err.contains("`Q6_K`") && err.contains("shrank"), "{err}");
    let err = file
        .quantized("Q6_K", &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`Q6_K`"), "{err}");
}
