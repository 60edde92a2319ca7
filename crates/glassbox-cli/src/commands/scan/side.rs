//! One side of a scan: everything measured on one model (dictionary profiles, monitor scores,
//! canary replies, assertion values). Independent of the other side, so the baseline's can be
//! cached.

use std::time::Instant;

use anyhow::{Context, Result};
use glassbox_analysis::diff::{self, DictProfile};
use glassbox_analysis::heads;
use glassbox_analysis::lens::single_token;
use glassbox_dictionary::{splice, Sae};
use glassbox_model::chat::Message;
use glassbox_model::{Hooks, Model};
use glassbox_serve::config::{Action, Config};
use glassbox_serve::infer;
use glassbox_serve::monitor::{MonitorSet, Readers};
use glassbox_serve::rules::Cmp;
use serde::{Deserialize, Serialize};

use super::spec::{Assertion, Canary, Spec};
use crate::report;

/// What the suites need besides the model, loaded once for both sides.
pub struct Inputs {
    pub saes: Vec<Sae>,
    /// Reference contexts per dictionary suite (token ids with special tokens) and the content
    /// range within each.
    pub contexts: Vec<(Vec<Vec<u32>>, std::ops::Range<usize>)>,
    pub deploy: Option<Config>,
    /// The monitors suite's texts and labels.
    pub texts: Vec<(String, bool)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Side {
    pub dictionaries: Vec<DictSide>,
    pub monitors: Vec<MonitorSide>,
    pub canaries: Vec<CanarySide>,
    /// Per assertion, its measured value (`None`: read from another suite).
    pub assertions: Vec<Option<f64>>,
    pub seconds: f64,
    /// Seconds per suite: dictionaries, monitors, canaries, assertions.
    pub suite_seconds: [f64; 4],
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DictSide {
    pub profile: DictProfile,
    pub loss_recovered: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MonitorSide {
    pub name: String,
    /// Per text of the suite: the rule's peak minus its threshold (> 0: fires).
    pub margins: Vec<f32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CanarySide {
    pub reply: String,
    /// `logit(more) − logit(less)`, for canaries with a logit check.
    pub logit_diff: Option<f32>,
}

/// Texts per forward pass of the monitors suite.
const BATCH: usize = 8;

pub fn measure(model: &Model, spec: &Spec, inputs: &Inputs) -> Result<Side> {
    let start = Instant::now();
    let mut lap = Instant::now();
    let mut suite_seconds = [0.0; 4];
    let mut split = |i: usize| {
        suite_seconds[i] = lap.elapsed().as_secs_f64();
        lap = Instant::now();
    };
    let mut dictionaries = Vec::new();
    for ((suite, sae), (contexts, content)) in spec
        .dictionaries
        .iter()
        .zip(&inputs.saes)
        .zip(&inputs.contexts)
    {
        let profile = diff::profile(model, sae, contexts, content.clone()).with_context(|| {
            format!("profiling {} on the reference corpus", suite.path.display())
        })?;
        let loss_recovered = if suite.splice_contexts > 0 {
            let n = suite.splice_contexts.min(contexts.len());
            splice::loss_recovered(model, sae, &contexts[..n], content.clone())?.loss_recovered
        } else {
            None
        };
        dictionaries.push(DictSide {
            profile,
            loss_recovered,
        });
    }
    split(0);
    let monitors = match &inputs.deploy {
        Some(cfg) => score_monitors(model, spec, cfg, &inputs.texts)?,
        None => Vec::new(),
    };
    split(1);
    let canaries = spec
        .canaries
        .iter()
        .map(|c| canary(model, c))
        .collect::<Result<_>>()?;
    split(2);
    let assertions = spec
        .assertions
        .iter()
        .map(|a| assertion(model, spec, inputs, a))
        .collect::<Result<_>>()?;
    split(3);
    Ok(Side {
        dictionaries,
        monitors,
        canaries,
        assertions,
        seconds: start.elapsed().as_secs_f64(),
        suite_seconds,
    })
}

/// Every monitor of the deployment over the suite's texts, in batched forward passes with the
/// actions turned into logging (a block or clamp must not change what the others read).
fn score_monitors(
    model: &Model,
    spec: &Spec,
    cfg: &Config,
    texts: &[(String, bool)],
) -> Result<Vec<MonitorSide>> {
    let suite = spec.monitors.as_ref().context("no monitors suite")?;
    let readers = Readers::load(model, &cfg.dictionaries, &cfg.probes)
        .with_context(|| format!("loading the probes of {}", suite.deploy.display()))?;
    let mut monitors = cfg.monitors.clone();
    for m in &mut monitors {
        m.action = Action::Log;
    }
    let set = MonitorSet::new(&readers, &monitors)?;
    let cap = suite.max_tokens.min(model.config.max_positions);
    let ids = texts
        .iter()
        .map(|(t, _)| {
            let mut ids = model.tokenize(t, true)?;
            ids.truncate(cap);
            Ok(ids)
        })
        .collect::<Result<Vec<_>>>()?;
    // Batches of similar lengths waste little on padding.
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i].len());
    let mut margins = vec![vec![f32::NEG_INFINITY; texts.len()]; set.monitors.len()];
    let progress = report::progress(texts.len() as u64, "monitor texts");
    for chunk in order.chunks(BATCH) {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
        // A sentence probe reads the texts themselves, whole, as `probe score` does.
        let words: Vec<&str> = chunk.iter().map(|&i| texts[i].0.as_str()).collect();
        let seen = infer::observe(model, &set, "scan", &batch, Some(&words))?;
        for (&text, peaks) in chunk.iter().zip(&seen.peaks) {
            for (i, m) in set.monitors.iter().enumerate() {
                if let Some(p) = peaks.get(i).copied().flatten() {
                    margins[i][text] = match m.rule.cmp {
                        Cmp::Gt | Cmp::Ge => p - m.rule.threshold,
                        Cmp::Lt | Cmp::Le => m.rule.threshold - p,
                    };
                }
            }
        }
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    Ok(set
        .monitors
        .iter()
        .zip(margins)
        .map(|(m, margins)| MonitorSide {
            name: m.cfg.name.clone(),
            margins,
        })
        .collect())
}

fn canary(model: &Model, c: &Canary) -> Result<CanarySide> {
    if !model.config.is_decoder() {
        anyhow::bail!("canary `{}`: the model is not a decoder", c.name);
    }
    let prompt = if c.chat {
        model
            .chat_prompt(&[Message::new("user", &c.prompt)], true)?
            .1
    } else {
        model.tokenize(&c.prompt, true)?
    };
    let reply = if c.contains.is_some()
        || c.not_contains.is_some()
        || c.regex.is_some()
        || c.exact.is_some()
        || c.refuses.is_some()
    {
        let ids = model.generate_greedy(&prompt, c.max_tokens)?;
        let ids: Vec<u32> = ids
            .into_iter()
            .take_while(|&i| !model.ends_generation(i))
            .collect();
        model.tokenizer.decode(&ids)?
    } else {
        String::new()
    };
    let logit_diff = match &c.logit {
        Some(l) => {
            let more = single_token(model, &l.more)
                .with_context(|| format!("canary `{}`: logit.more", c.name))?;
            let less = single_token(model, &l.less)
                .with_context(|| format!("canary `{}`: logit.less", c.name))?;
            let batch = model.batch_ids(&[prompt])?;
            let logits: Vec<f32> = model.last_logits(&batch, &mut Hooks::none())?.to_vec1()?;
            Some(logits[more as usize] - logits[less as usize])
        }
        None => None,
    };
    Ok(CanarySide { reply, logit_diff })
}

fn assertion(model: &Model, spec: &Spec, inputs: &Inputs, a: &Assertion) -> Result<Option<f64>> {
    let sae_of = |dict: &std::path::Path| -> Result<&Sae> {
        spec.dictionaries
            .iter()
            .position(|d| d.path == dict)
            .map(|i| &inputs.saes[i])
            .with_context(|| {
                format!(
                    "assertion `{}`: {} is not a [[dictionary]] of the spec",
                    a.name(),
                    dict.display()
                )
            })
    };
    Ok(match a {
        Assertion::ProbeAuroc { .. } => None,
        Assertion::Feature {
            dict,
            feature,
            texts,
            ..
        } => {
            let sae = sae_of(dict)?;
            check_feature(sae, *feature, a.name())?;
            let point = sae.hook_in(model, glassbox_dictionary::fit::Use::Read)?;
            // The weakest text's peak: every text must set the feature off.
            let mut weakest = f64::INFINITY;
            for t in texts {
                let ids = model.tokenize(t, true)?;
                let batch = model.batch_ids(&[ids])?;
                let mut hooks = Hooks::none().record(point).stop_at(point);
                model.forward(&batch, &mut hooks, None)?;
                let x: Vec<f32> = hooks
                    .into_cache()
                    .get(&point)
                    .context("the dictionary's hook did not fire")?
                    .flatten_all()?
                    .to_vec1()?;
                // Fires = selected by the dictionary's activation (TopK, JumpReLU ...), with
                // its coded value; 0 on a token where it is not selected.
                let peak = sae
                    .encode(&x)?
                    .rows
                    .iter()
                    .flat_map(|row| row.iter().filter(|(j, _)| j == feature).map(|&(_, v)| v))
                    .fold(0f32, f32::max);
                weakest = weakest.min(f64::from(peak));
            }
            Some(weakest)
        }
        Assertion::Induction { layer, head, .. } => {
            let s = heads::induction_scores(model, 32, 4, 0)?;
            let v = s
                .induction
                .get(*layer)
                .and_then(|r| r.get(*head))
                .with_context(|| {
                    format!(
                        "assertion `{}`: the model has no head {layer}.{head}",
                        a.name()
                    )
                })?;
            Some(f64::from(*v))
        }
        Assertion::Attribution {
            dict,
            feature,
            target,
            ..
        } => {
            let sae = sae_of(dict)?;
            check_feature(sae, *feature, a.name())?;
            let t = single_token(model, target)?;
            let w = model
                .unembedding()?
                .context("attribution needs a decoder (an unembedding)")?;
            let d = glassbox_model::Tensor::from_vec(
                sae.direction(*feature),
                (model.config.d_model, 1),
                model.device(),
            )?;
            let effect: Vec<f32> = w.matmul(&d)?.flatten_all()?.to_vec1()?;
            let mean = effect.iter().sum::<f32>() / effect.len() as f32;
            Some(f64::from(effect[t as usize] - mean))
        }
    })
}

fn check_feature(sae: &Sae, f: u32, name: &str) -> Result<()> {
    if f as usize >= sae.d_sae() {
        anyhow::bail!(
            "assertion `{name}`: feature {f} does not exist (the dictionary has 0..={})",
            sae.d_sae() - 1
        );
    }
    Ok(())
}
