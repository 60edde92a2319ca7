//! On-disk format: SAELens's (`cfg.json` + `sae_weights.safetensors` with `W_enc [d_in, d_sae]`,
//! `b_enc`, `W_dec [d_sae, d_in]`, `b_dec`, and `threshold` for JumpReLU), so dictionaries
//! trained elsewhere load here and ours load in SAELens. Saved dictionaries take raw
//! activations: the training input scale is folded into the weights. BatchTopK is saved as
//! JumpReLU with its learned threshold on every latent, which is what it computes at inference.
//! Transcoders are saved as SAELens's `transcoder` (ReLU) or `jumprelu_transcoder`
//! (`d_out`, `apply_b_dec_to_input: false`, the target hook in `metadata.hook_name_out`);
//! SAELens has no TopK transcoder, so those are `topk_transcoder`, read by Glassbox only.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};

use crate::config::{Activation, DictConfig};
use crate::error::{DictError, Result};
use crate::sae::Sae;

pub const CFG: &str = "cfg.json";
pub const WEIGHTS: &str = "sae_weights.safetensors";

/// Writes `sae` to `dir` (created if needed); `extra` goes into the config's metadata.
pub fn save(sae: &Sae, dir: &Path, extra: Value) -> Result<()> {
    let mut s = sae.clone();
    s.fold_input_scale();
    let (d_in, d_sae) = (s.d_in(), s.d_sae());
    let (architecture, threshold, k) = match s.cfg.activation {
        Activation::Relu { .. } => ("standard", None, None),
        Activation::TopK { k } => ("topk", None, Some(k)),
        Activation::BatchTopK { threshold, .. } => ("jumprelu", Some(vec![threshold; d_sae]), None),
        Activation::JumpRelu { .. } => ("jumprelu", Some(s.threshold.clone()), None),
    };
    let transcoder = s.cfg.is_transcoder();
    let architecture = match (transcoder, architecture) {
        (false, a) => a.to_string(),
        (true, "standard") => "transcoder".to_string(),
        (true, a) => format!("{a}_transcoder"),
    };
    let mut cfg = json!({
        "architecture": architecture, "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": !transcoder, "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {"model_name": s.cfg.model, "hook_name": s.cfg.hook, "glassbox": {"activation": s.cfg.activation, "extra": extra}},
    });
    if let Some(k) = k {
        cfg["k"] = json!(k);
    }
    if let Some(out) = &s.cfg.target_hook {
        cfg["d_out"] = json!(d_in);
        cfg["metadata"]["hook_name_out"] = json!(out);
    }
    // W_enc is stored [d_in, d_sae].
    let mut w_enc = vec![0f32; d_in * d_sae];
    for (j, row) in s.w_enc_t.chunks(d_in).enumerate() {
        for (i, v) in row.iter().enumerate() {
            w_enc[i * d_sae + j] = *v;
        }
    }
    let mut tensors: Vec<(&str, Vec<f32>, Vec<usize>)> = vec![
        ("W_enc", w_enc, vec![d_in, d_sae]),
        ("b_enc", s.b_enc.clone(), vec![d_sae]),
        ("W_dec", s.w_dec.clone(), vec![d_sae, d_in]),
        ("b_dec", s.b_dec.clone(), vec![d_in]),
    ];
    if let Some(t) = threshold {
        tensors.push(("threshold", t, vec![d_sae]));
    }
    std::fs::create_dir_all(dir).map_err(|e| DictError::io(dir, e))?;
    let bytes: Vec<(&str, Vec<u8>, Vec<usize>)> = tensors
        .into_iter()
        .map(|(k, v, shape)| (k, v.iter().flat_map(|x| x.to_le_bytes()).collect(), shape))
        .collect();
    let views: Vec<(&str, TensorView)> = bytes
        .iter()
        .map(|(k, b, shape)| TensorView::new(Dtype::F32, shape.clone(), b).map(|v| (*k, v)))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| DictError::format(dir, e.to_string()))?;
    let out = safetensors::serialize(views, None::<HashMap<String, String>>)
        .map_err(|e| DictError::format(dir, e.to_string()))?;
    let write = |name: &str, data: &[u8]| {
        glassbox_model::fsutil::atomic_write(&dir.join(name), data)
            .map_err(|e| DictError::io(&dir.join(name), e))
    };
    write(WEIGHTS, &out)?;
    write(
        CFG,
        serde_json::to_string_pretty(&cfg)
            .unwrap_or_default()
            .as_bytes(),
    )
}

/// Reads a dictionary saved by Glassbox or SAELens (standard, topk, jumprelu).
pub fn load(dir: &Path) -> Result<Sae> {
    let cfg_path = dir.join(CFG);
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| DictError::io(&cfg_path, e))?;
    let bad = |msg: String| DictError::format(&cfg_path, msg);
    let cfg: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON ({e})")))?;
    let field = |k: &str| cfg.get(k).filter(|v| !v.is_null());
    let usize_field = |k: &str| {
        field(k)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| bad(format!("`{k}` missing or not an integer")))
    };
    let (d_in, d_sae) = (usize_field("d_in")?, usize_field("d_sae")?);
    let architecture = field("architecture")
        .and_then(Value::as_str)
        .unwrap_or("standard");
    let norm = field("normalize_activations")
        .and_then(Value::as_str)
        .unwrap_or("none");
    if norm != "none" {
        return Err(bad(format!("normalize_activations = `{norm}` is not supported; fold the normalisation into the weights first")));
    }
    let meta = |k: &str| {
        field("metadata")
            .and_then(|m| m.get(k))
            .or_else(|| field(k))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let ours: Option<Activation> = field("metadata")
        .and_then(|m| m.pointer("/glassbox/activation"))
        .and_then(|a| serde_json::from_value(a.clone()).ok());
    let (architecture, transcoder) = match architecture {
        "transcoder" => ("standard", true),
        a => match a.strip_suffix("_transcoder") {
            Some(base) => (base, true),
            None => (a, false),
        },
    };
    if transcoder {
        let d_out = usize_field("d_out")?;
        if d_out != d_in {
            return Err(bad(format!(
                "transcoders with d_out ({d_out}) ≠ d_in ({d_in}) are not supported"
            )));
        }
    }
    let activation = match (architecture, ours) {
        (_, Some(Activation::BatchTopK { k, threshold })) => Activation::BatchTopK { k, threshold },
        (_, Some(a @ Activation::JumpRelu { .. })) => a,
        ("standard", _) => Activation::Relu { l1: 0.0 },
        ("topk", _) => Activation::TopK {
            k: usize_field("k").or_else(|_| {
                field("activation_fn_kwargs")
                    .and_then(|a| a.get("k"))
                    .and_then(Value::as_u64)
                    .map(|v| v as usize)
                    .ok_or_else(|| bad("`k` missing".into()))
            })?,
        },
        ("jumprelu", _) => Activation::JumpRelu {
            l0: 0.0,
            bandwidth: 0.05,
        },
        (other, _) => {
            return Err(bad(format!(
                "architecture `{other}` is not supported; use standard, topk or jumprelu (or their transcoders)"
            )))
        }
    };

    let w_path = dir.join(WEIGHTS);
    let bytes = std::fs::read(&w_path).map_err(|e| DictError::io(&w_path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| DictError::format(&w_path, format!("corrupt ({e})")))?;
    let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
        let t = st
            .tensor(name)
            .map_err(|_| DictError::format(&w_path, format!("tensor `{name}` missing")))?;
        if t.shape() != shape {
            return Err(DictError::format(
                &w_path,
                format!(
                    "tensor `{name}` has shape {:?}, cfg.json implies {shape:?}",
                    t.shape()
                ),
            ));
        }
        let v: Vec<f32> = match t.dtype() {
            Dtype::F32 => t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => t
                .data()
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => t
                .data()
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(DictError::format(
                    &w_path,
                    format!("tensor `{name}` has dtype {other:?}; expected a float type"),
                ))
            }
        };
        if v.iter().any(|x| !x.is_finite()) {
            return Err(DictError::format(
                &w_path,
                format!("tensor `{name}` has NaN or infinite values"),
            ));
        }
        Ok(v)
    };
    let w_enc = get("W_enc", &[d_in, d_sae])?;
    let mut w_enc_t = vec![0f32; d_in * d_sae];
    for i in 0..d_in {
        for j in 0..d_sae {
            w_enc_t[j * d_in + i] = w_enc[i * d_sae + j];
        }
    }
    let mut b_enc = get("b_enc", &[d_sae])?;
    let b_dec = get("b_dec", &[d_in])?;
    if !transcoder && field("apply_b_dec_to_input").and_then(Value::as_bool) == Some(false) {
        // pre = x·W_enc + b_enc = (x − b_dec)·W_enc + (b_enc + b_dec·W_enc).
        for (j, b) in b_enc.iter_mut().enumerate() {
            *b += crate::linalg::dot(&w_enc_t[j * d_in..][..d_in], &b_dec);
        }
    }
    let threshold = if matches!(activation, Activation::JumpRelu { .. }) {
        get("threshold", &[d_sae])?
    } else {
        Vec::new()
    };
    let mut cfg = DictConfig::sae(
        activation,
        d_in,
        d_sae,
        &meta("model_name"),
        &meta("hook_name"),
    );
    if transcoder {
        cfg.target_hook = Some(meta("hook_name_out"));
    }
    cfg.validate()?;
    Ok(Sae {
        cfg,
        w_enc_t,
        b_enc,
        w_dec: get("W_dec", &[d_sae, d_in])?,
        b_dec,
        threshold,
    })
}
