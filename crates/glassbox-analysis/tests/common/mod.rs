//! Helpers shared by the MiniLM tests of this crate.
#![allow(dead_code)]

use glassbox_dictionary::{Activation, DictConfig, Sae};
use glassbox_model::{Hooks, Model};

/// The activation at `hook` of every token of `text`, `[tokens × d_model]` flattened.
pub fn hook_rows(model: &Model, hook: &str, text: &str) -> Vec<f32> {
    let point = model.hook_point(hook).unwrap();
    let batch = model.batch(&[text], false).unwrap();
    let mut hooks = Hooks::none().record(point);
    model.forward(&batch, &mut hooks, None).unwrap();
    hooks
        .cache()
        .get(&point)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The mean activation at `hook` over every token of `texts`.
fn mean_activation(model: &Model, hook: &str, texts: &[&str]) -> Vec<f32> {
    let d = model.config.d_model;
    let mut sum = vec![0f32; d];
    let mut n = 0;
    for t in texts {
        let x = hook_rows(model, hook, t);
        for row in x.chunks(d) {
            sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
            n += 1;
        }
    }
    sum.iter().map(|s| s / n as f32).collect()
}

/// A two-feature ReLU dictionary at `hook`: feature 0 points from the mean activation of
/// `negative` towards that of `positive`, with its threshold halfway; feature 1 is its opposite.
pub fn two_way_dictionary(model: &Model, hook: &str, positive: &[&str], negative: &[&str]) -> Sae {
    let (mp, mn) = (
        mean_activation(model, hook, positive),
        mean_activation(model, hook, negative),
    );
    let w: Vec<f32> = mp.iter().zip(&mn).map(|(a, b)| a - b).collect();
    let norm = w.iter().map(|v| v * v).sum::<f32>().sqrt();
    let w: Vec<f32> = w.iter().map(|v| v / norm).collect();
    let mid: f32 = w
        .iter()
        .zip(mp.iter().zip(&mn))
        .map(|(w, (a, b))| w * (a + b) / 2.0)
        .sum();
    let d = model.config.d_model;
    let mut sae = Sae::init(
        DictConfig::sae(Activation::Relu { l1: 0.0 }, d, 2, "minilm", hook),
        0,
    )
    .unwrap();
    sae.w_enc_t = w.iter().copied().chain(w.iter().map(|v| -v)).collect();
    sae.b_enc = vec![-mid, mid];
    sae
}
