//! Post-intervention recovery: a clamp monitor holds a dictionary feature down; can an attacker
//! bring the feature's *behaviour* back through what the feature does not read (the dictionary's
//! error term) while the feature itself stays clamped? The attack edits the activation at the
//! clamp's hook only along directions orthogonal to the feature's encoder row — so the
//! feature's reading, and with it the clamp, is untouched by construction — by projected
//! gradient ascent on a behaviour read-out further on, within a budget relative to each
//! token's activation norm. The result says how much of the behaviour the clamp removed comes
//! back.

use std::cell::RefCell;

use glassbox_model::candle::{DType, Tensor, Var};
use glassbox_model::{HookPoint, Hooks, Model};
use serde::Serialize;

use super::gcg::{pgd_step, Framing, Readout};
use crate::error::{AnalysisError, Result};

/// A clamp as a monitor applies it: at `hook`, the feature read as `encoder·x + bias` (zero
/// unless above `threshold`) is set to `value` by moving the activation along `decoder` — here on
/// every payload token (a served clamp acts where its rule holds: this is its strongest form).
pub struct Clamp {
    pub hook: HookPoint,
    pub encoder: Vec<f32>,
    pub bias: f32,
    pub threshold: f32,
    pub decoder: Vec<f32>,
    pub value: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    pub budget: f32,
    /// The behaviour read-out's mean logit over the payload: without the clamp, with it, and
    /// with it after the attack.
    pub free: f32,
    pub clamped: f32,
    pub attacked: f32,
    /// (attacked − clamped) / (free − clamped): the share of what the clamp removed that came back.
    pub recovered: f32,
    /// The feature's mean pre-activation over the payload before and after the attack (equal:
    /// the clamp still reads and holds the same feature).
    pub feature: f32,
    pub feature_attacked: f32,
}

fn bad(msg: String) -> AnalysisError {
    AnalysisError::Mismatch(msg)
}

/// One pass: `edit` (projected off the encoder row) added at the clamp's hook on the payload's
/// positions, the clamp applied if `clamp_on`; the behaviour's mean logit over the payload and
/// the feature's mean pre-activation there.
fn run(
    model: &Model,
    c: &Clamp,
    behaviour: &Readout,
    ids: &[u32],
    span: (usize, usize),
    edit: Option<&Var>,
    clamp_on: bool,
) -> Result<(Tensor, f32)> {
    let dev = model.device();
    let d = c.encoder.len();
    // The encoder row as a column (to read the feature) and as a row (to project off it).
    let w = Tensor::from_slice(&c.encoder, (1, d, 1), dev)?;
    let w_row = Tensor::from_slice(&c.encoder, (1, 1, d), dev)?;
    let dec = Tensor::from_slice(&c.decoder, (1, 1, d), dev)?;
    let norm2: f32 = c.encoder.iter().map(|v| v * v).sum::<f32>().max(1e-12);
    let n = ids.len();
    let mask: Vec<f32> = (0..n)
        .map(|i| f32::from(u8::from(i >= span.0 && i < span.0 + span.1)))
        .collect();
    let mask = Tensor::from_vec(mask, (1, n, 1), dev)?;
    let feature: RefCell<f32> = RefCell::new(0.0);
    let read: RefCell<Option<Tensor>> = RefCell::new(None);
    {
        let mut hooks = Hooks::none()
            .replace(c.hook, |x| {
                let x = x.to_dtype(DType::F32)?;
                let x = match edit {
                    Some(e) => {
                        // Off the encoder row: the feature's reading does not move.
                        let e = e.as_tensor().broadcast_mul(&mask)?;
                        let proj = e
                            .matmul(&w)?
                            .broadcast_mul(&w_row)?
                            .affine(1.0 / f64::from(norm2), 0.0)?;
                        (x + (e - proj)?)?
                    }
                    None => x,
                };
                let pre = (x.matmul(&w)? + f64::from(c.bias))?;
                let pre_span = pre.narrow(1, span.0, span.1)?;
                *feature.borrow_mut() = pre_span.mean_all()?.to_scalar::<f32>()?;
                if !clamp_on {
                    return Ok(x);
                }
                let act =
                    pre.broadcast_mul(&pre.gt(f64::from(c.threshold))?.to_dtype(DType::F32)?)?;
                let shift = (act.neg()? + f64::from(c.value))?.broadcast_mul(&mask)?;
                x + shift.broadcast_mul(&dec)?
            })
            .replace(behaviour.hook, |x| {
                *read.borrow_mut() = Some(x.clone());
                Ok(x.clone())
            })
            .stop_at(behaviour.hook);
        model.forward(&model.batch_ids(&[ids.to_vec()])?, &mut hooks, None)?;
    }
    let x = read
        .into_inner()
        .ok_or_else(|| bad(format!("{} was not reached", behaviour.hook)))?
        .narrow(1, span.0, span.1)?
        .squeeze(0)?
        .to_dtype(DType::F32)?;
    let wb = Tensor::from_slice(&behaviour.weights, (behaviour.weights.len(), 1), dev)?;
    let logit = (x.matmul(&wb)?.mean_all()? + f64::from(behaviour.bias))?;
    Ok((logit, feature.into_inner()))
}

/// The recovery attack on `payload` (see the module documentation).
pub fn recovery(
    model: &Model,
    clamp: &Clamp,
    behaviour: &Readout,
    framing: &Framing,
    payload: &str,
    budget: f32,
    steps: usize,
) -> Result<Recovery> {
    let order = model.hook_points();
    let at = |h: &HookPoint| order.iter().position(|p| p == h);
    if at(&clamp.hook) >= at(&behaviour.hook) {
        return Err(bad(format!(
            "the behaviour read-out ({}) must come after the clamp ({})",
            behaviour.hook, clamp.hook
        )));
    }
    let content = model.tokenizer.encode_plain(payload)?;
    if content.is_empty() {
        return Err(bad("the payload has no tokens".into()));
    }
    let ids = [&framing.before[..], &content, &framing.after[..]].concat();
    let span = (framing.before.len(), content.len());
    let scalar = |t: Tensor| -> Result<f32> { Ok(t.to_scalar::<f32>()?) };
    let (free, feature) = run(model, clamp, behaviour, &ids, span, None, false)?;
    let (clamped, _) = run(model, clamp, behaviour, &ids, span, None, true)?;
    let (free, clamped) = (scalar(free)?, scalar(clamped)?);
    // Each token's budget: `budget` × its activation norm at the clamp's hook.
    let mut hooks = Hooks::none().record(clamp.hook).stop_at(clamp.hook);
    model.forward(
        &model.batch_ids(std::slice::from_ref(&ids))?,
        &mut hooks,
        None,
    )?;
    let x = hooks
        .cache()
        .get(&clamp.hook)
        .ok_or_else(|| bad(format!("{} was not reached", clamp.hook)))?
        .to_dtype(DType::F32)?;
    let radius = (x.sqr()?.sum_keepdim(2)?.sqrt()? * f64::from(budget))?;
    let edit = Var::zeros(x.shape(), DType::F32, model.device())?;
    let (mut attacked, mut feature_attacked) = (clamped, feature);
    for _ in 0..steps {
        let (logit, _) = run(model, clamp, behaviour, &ids, span, Some(&edit), true)?;
        let grads = logit.backward()?;
        let g = grads
            .get(edit.as_tensor())
            .ok_or_else(|| bad("no gradient reached the clamp's hook".into()))?
            .clone();
        pgd_step(&edit, &g, &radius, 0.25)?;
        let (logit, f) = run(model, clamp, behaviour, &ids, span, Some(&edit), true)?;
        let v = scalar(logit)?;
        if v > attacked {
            attacked = v;
            feature_attacked = f;
        }
    }
    let removed = free - clamped;
    Ok(Recovery {
        budget,
        free,
        clamped,
        attacked,
        recovered: if removed.abs() > 1e-9 {
            (attacked - clamped) / removed
        } else {
            0.0
        },
        feature,
        feature_attacked,
    })
}
