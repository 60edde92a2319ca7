//! Helpers shared by this crate's integration tests.

use glassbox_model::{Device, Tensor};

/// The device the models under test run on: the CPU, or the one `GLASSBOX_TEST_DEVICE` names
/// (`cuda`, `cuda:N`), so the same references check the GPU path in a `--features cuda` build.
/// The references themselves stay on the CPU.
#[allow(dead_code)] // not every test binary loads a model
pub fn device() -> Device {
    let name = std::env::var("GLASSBOX_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    glassbox_model::device(&name).unwrap_or_else(|e| panic!("GLASSBOX_TEST_DEVICE: {e}"))
}

/// The largest absolute difference between two tensors of the same shape (on any devices).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let cpu = |t: &Tensor| t.to_device(&Device::Cpu).unwrap();
    (cpu(a) - cpu(b))
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}
