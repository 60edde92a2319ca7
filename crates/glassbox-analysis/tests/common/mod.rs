//! Helpers shared by the MiniLM tests of this crate.

use glassbox_model::{Hooks, Model};

/// The mean activation at `hook` over every token of `texts`.
pub fn mean_activation(model: &Model, hook: &str, texts: &[&str]) -> Vec<f32> {
    let point = model.hook_point(hook).unwrap();
    let d = model.config.d_model;
    let mut sum = vec![0f32; d];
    let mut n = 0;
    for t in texts {
        let batch = model.batch(&[*t], false).unwrap();
        let mut hooks = Hooks::none().record(point);
        model.forward(&batch, &mut hooks, None).unwrap();
        let x: Vec<f32> = hooks
            .cache()
            .get(&point)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for row in x.chunks(d) {
            sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
            n += 1;
        }
    }
    sum.iter().map(|s| s / n as f32).collect()
}
