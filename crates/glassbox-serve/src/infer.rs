//! Model work for one request, with its monitors attached: sentence embeddings for encoders,
//! greedy decoding with the KV cache for decoders (one forward pass per new token, so rules
//! and interventions act on each token as it is produced).

use std::cell::RefCell;

use glassbox_model::candle::DType;
use glassbox_model::{Hooks, Model};

use crate::error::{Result, ServeError};
use crate::monitor::{MonitorSet, Watch};
use crate::webhook::Alerts;

/// What monitoring saw and did during one request.
pub struct Report {
    pub firings: Vec<crate::monitor::Firing>,
    pub blocked: Option<crate::monitor::Blocked>,
}

fn finish(watch: RefCell<Watch>) -> Report {
    let w = watch.into_inner();
    Report {
        firings: w.firings,
        blocked: w.blocked,
    }
}

/// Sentence embeddings of `inputs` (already tokenized, special tokens included).
pub fn embed(
    model: &Model,
    set: &MonitorSet,
    alerts: Option<&Alerts>,
    request_id: &str,
    inputs: &[Vec<u32>],
) -> Result<(Vec<Vec<f32>>, Report)> {
    let watch = RefCell::new(Watch::new(set, alerts, request_id));
    let batch = model.batch_ids(inputs)?;
    watch.borrow_mut().set_lengths(&batch.lengths);
    let out = {
        let mut hooks = Watch::hooks(&watch);
        model.forward(&batch, &mut hooks, None)?
    };
    let e = model.sentence_embedding(&batch, &out.hidden)?;
    Ok((e.to_vec2()?, finish(watch)))
}

/// Greedy continuation of `prompt`. `on_token` receives each new token id and returns false to
/// stop (the client went away). Generation stops at a block; the report says why.
pub fn generate(
    model: &Model,
    set: &MonitorSet,
    alerts: Option<&Alerts>,
    request_id: &str,
    prompt: &[u32],
    max_new: usize,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<(Vec<u32>, Report)> {
    if !model.config.is_decoder() {
        return Err(ServeError::Config(format!(
            "`{}` is an encoder; completions need a decoder model (serve /v1/embeddings instead)",
            model.config.model_type
        )));
    }
    let watch = RefCell::new(Watch::new(set, alerts, request_id));
    let mut cache = model.new_cache();
    let mut out = Vec::new();
    let mut input = prompt.to_vec();
    while out.len() < max_new && cache.len() + input.len() <= model.config.max_positions {
        let batch = model.batch_ids(std::slice::from_ref(&input))?;
        let logits = {
            let mut hooks: Hooks = Watch::hooks(&watch);
            model.forward(&batch, &mut hooks, Some(&mut cache))?.logits
        };
        // A block on the tokens just read stops before anything more is produced.
        if watch.borrow().blocked.is_some() {
            break;
        }
        let logits =
            logits.ok_or_else(|| ServeError::Config("the model has no unembedding".into()))?;
        let next = logits
            .get(0)?
            .get(input.len() - 1)?
            .argmax(0)?
            .to_dtype(DType::U32)?
            .to_scalar::<u32>()?;
        out.push(next);
        if !on_token(next) || Some(next) == model.config.eos_token_id {
            break;
        }
        input = vec![next];
    }
    Ok((out, finish(watch)))
}
