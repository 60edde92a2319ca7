//! Loss recovered by splicing: run the model with a hook's activations replaced by the
//! dictionary's reconstruction, and measure how much of its behaviour survives relative to
//! zero-ablating the hook (the convention of SAELens's evals).
//!
//! - Decoders (with an LM head): L is the next-token cross-entropy over the context; the KL
//!   divergence of the spliced from the clean next-token distribution is reported too.
//! - Encoders (no LM head, e.g. MiniLM): L = 1 − cos(e, e_clean), where e is the pooled
//!   sentence embedding the model serves, so L_clean = 0.
//!
//! Loss recovered = (L_zero − L_spliced) / (L_zero − L_clean): 1 is perfect, 0 is no better than
//! deleting the hook's content. Only the content positions are replaced; special tokens
//! (`[CLS]`, `[SEP]`) keep their clean values, as the dictionary never saw them. A transcoder's
//! reconstruction replaces its target hook, computed from the clean input hook (which runs
//! earlier in the same pass, so it is unchanged by the splice).

use std::ops::Range;

use glassbox_model::{Hooks, Model, Tensor};
use serde::Serialize;

use crate::error::{DictError, Result};
use crate::sae::Sae;

#[derive(Debug, Clone, Serialize)]
pub struct SpliceReport {
    /// What L is.
    pub metric: &'static str,
    pub contexts: usize,
    /// The hook whose activations were replaced.
    pub hook: String,
    pub clean: f64,
    pub spliced: f64,
    pub zero_ablated: f64,
    /// `None` when zero-ablation does not change the loss (nothing to recover).
    pub loss_recovered: Option<f64>,
    /// Decoders: mean KL(clean ‖ spliced) per predicted token, in nats.
    pub kl: Option<f64>,
}

/// Contexts per forward pass.
const BATCH: usize = 8;

/// Splices `sae` into `model` on `contexts` (token ids with special tokens), replacing the
/// positions in `content`.
pub fn loss_recovered(
    model: &Model,
    sae: &Sae,
    contexts: &[Vec<u32>],
    content: Range<usize>,
) -> Result<SpliceReport> {
    let input = sae.hook_in(model, crate::fit::Use::Read)?;
    let output = match &sae.cfg.target_hook {
        Some(t) => model.hook_point(t)?,
        None => input,
    };
    if contexts.is_empty() {
        return Err(DictError::Config("no contexts to splice into".into()));
    }
    let decoder = model.config.is_decoder();
    let (mut clean, mut spliced, mut zero, mut kl, mut n) = (0f64, 0f64, 0f64, 0f64, 0usize);
    for chunk in contexts.chunks(BATCH) {
        let batch = model.batch_ids(chunk)?;
        let mut hooks = Hooks::none().record(input).record(output);
        let out = model.forward(&batch, &mut hooks, None)?;
        let cache = hooks.into_cache();
        let (x, y) = match (cache.get(&input), cache.get(&output)) {
            (Some(x), Some(y)) => (x, y),
            _ => return Err(DictError::Config(format!("hook {input} did not fire"))),
        };
        let (b, t, d) = y.dims3()?;
        if d != sae.d_in() || content.end > t {
            return Err(DictError::Width {
                got: d,
                expected: sae.d_in(),
            });
        }
        let c = content.len();
        let x_content: Vec<f32> = x.narrow(1, content.start, c)?.flatten_all()?.to_vec1()?;
        let (_, recon) = sae.reconstruct(&x_content)?;
        let base: Vec<f32> = y.flatten_all()?.to_vec1()?;
        let with = |fill: &dyn Fn(usize) -> f32| -> Result<Tensor> {
            let mut v = base.clone();
            for r in 0..b {
                for p in 0..c {
                    let at = (r * t + content.start + p) * d;
                    let from = (r * c + p) * d;
                    for i in 0..d {
                        v[at + i] = fill(from + i);
                    }
                }
            }
            Ok(Tensor::from_vec(v, (b, t, d), y.device())?)
        };
        let run = |value: Tensor| -> Result<glassbox_model::model::Output> {
            let mut hooks = Hooks::none().patch(output, value);
            Ok(model.forward(&batch, &mut hooks, None)?)
        };
        let out_s = run(with(&|i| recon[i])?)?;
        let out_z = run(with(&|_| 0.0)?)?;
        if decoder {
            let logits = |o: &glassbox_model::model::Output| -> Result<Vec<f32>> {
                let l = o
                    .logits
                    .as_ref()
                    .ok_or_else(|| DictError::Config("the decoder returned no logits".into()))?;
                Ok(l.flatten_all()?.to_vec1()?)
            };
            let ids: Vec<u32> = batch.ids.flatten_all()?.to_vec1()?;
            let (lc, ls, lz) = (logits(&out)?, logits(&out_s)?, logits(&out_z)?);
            let v = lc.len() / (b * t);
            for r in 0..b {
                for p in content.start..(content.end.min(t) - 1) {
                    let row = |l: &[f32]| log_softmax(&l[(r * t + p) * v..][..v]);
                    let next = ids[r * t + p + 1] as usize;
                    let (pc, ps, pz) = (row(&lc), row(&ls), row(&lz));
                    clean -= pc[next];
                    spliced -= ps[next];
                    zero -= pz[next];
                    kl += pc
                        .iter()
                        .zip(&ps)
                        .map(|(a, b)| a.exp() * (a - b))
                        .sum::<f64>();
                    n += 1;
                }
            }
        } else {
            let emb = |o: &glassbox_model::model::Output| -> Result<Vec<f32>> {
                Ok(model
                    .sentence_embedding(&batch, &o.hidden)?
                    .flatten_all()?
                    .to_vec1()?)
            };
            let (ec, es, ez) = (emb(&out)?, emb(&out_s)?, emb(&out_z)?);
            let dm = ec.len() / b;
            for r in 0..b {
                let cos = |e: &[f32]| -> f64 {
                    e[r * dm..][..dm]
                        .iter()
                        .zip(&ec[r * dm..][..dm])
                        .map(|(a, b)| (*a as f64) * (*b as f64))
                        .sum()
                };
                clean += 1.0 - cos(&ec);
                spliced += 1.0 - cos(&es);
                zero += 1.0 - cos(&ez);
                n += 1;
            }
        }
    }
    let nf = n.max(1) as f64;
    let (clean, spliced, zero) = (clean / nf, spliced / nf, zero / nf);
    Ok(SpliceReport {
        metric: if decoder {
            "next-token cross-entropy (nats)"
        } else {
            "1 − cosine(sentence embedding, clean)"
        },
        contexts: contexts.len(),
        hook: output.to_string(),
        clean,
        spliced,
        zero_ablated: zero,
        loss_recovered: ((zero - clean).abs() > 1e-9).then(|| (zero - spliced) / (zero - clean)),
        kl: decoder.then_some(kl / nf),
    })
}

fn log_softmax(l: &[f32]) -> Vec<f64> {
    let max = l.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let lse = max + l.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
    l.iter().map(|&v| v as f64 - lse).collect()
}
