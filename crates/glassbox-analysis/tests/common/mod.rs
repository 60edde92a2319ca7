//! Helpers shared by the MiniLM tests of this crate.
#![allow(dead_code)]

use glassbox_dictionary::{Activation, DictConfig, Sae};
use std::collections::HashMap;

use glassbox_model::candle::{safetensors, DType, Device, Tensor};
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

/// Writes a hand-built GPT-2 checkpoint into `dir` on the tiny-gpt2 fixture's tokenizer: the
/// embeddings `wte` `[vocab, d]` and `wpe` `[positions, d]`, and per layer the attention's
/// `c_attn` `[d, 3d]` and `c_proj` `[d, d]` (Conv1D layout); MLPs (4 wide) and biases are zero,
/// norms are identity-scaled, the unembedding is tied.
pub fn save_gpt2(
    dir: &std::path::Path,
    wte: Tensor,
    wpe: Tensor,
    layers: Vec<(Tensor, Tensor)>,
    heads: usize,
) {
    let (vocab, d) = wte.dims2().unwrap();
    let positions = wpe.dims2().unwrap().0;
    let vector = |x: f32, n: usize| Tensor::from_vec(vec![x; n], n, &Device::Cpu).unwrap();
    let zeros = |r: usize, c: usize| Tensor::zeros((r, c), DType::F32, &Device::Cpu).unwrap();
    let n_layer = layers.len();
    let mut w: HashMap<String, Tensor> = HashMap::new();
    w.insert("wte.weight".into(), wte);
    w.insert("wpe.weight".into(), wpe);
    for (layer, (qkv, proj)) in layers.into_iter().enumerate() {
        let p = format!("h.{layer}");
        w.insert(format!("{p}.attn.c_attn.weight"), qkv);
        w.insert(format!("{p}.attn.c_attn.bias"), vector(0.0, 3 * d));
        w.insert(format!("{p}.attn.c_proj.weight"), proj);
        w.insert(format!("{p}.attn.c_proj.bias"), vector(0.0, d));
        w.insert(format!("{p}.mlp.c_fc.weight"), zeros(d, 4));
        w.insert(format!("{p}.mlp.c_fc.bias"), vector(0.0, 4));
        w.insert(format!("{p}.mlp.c_proj.weight"), zeros(4, d));
        w.insert(format!("{p}.mlp.c_proj.bias"), vector(0.0, d));
        for ln in ["ln_1", "ln_2"] {
            w.insert(format!("{p}.{ln}.weight"), vector(1.0, d));
            w.insert(format!("{p}.{ln}.bias"), vector(0.0, d));
        }
    }
    w.insert("ln_f.weight".into(), vector(1.0, d));
    w.insert("ln_f.bias".into(), vector(0.0, d));
    safetensors::save(&w, dir.join("model.safetensors")).unwrap();
    let config = serde_json::json!({
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": vocab,
        "n_positions": positions, "n_embd": d, "n_layer": n_layer, "n_head": heads, "n_inner": 4,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "tie_word_embeddings": true
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../glassbox-model/tests/fixtures/tiny-gpt2/tokenizer.json");
    std::fs::copy(fixture, dir.join("tokenizer.json")).unwrap();
}
