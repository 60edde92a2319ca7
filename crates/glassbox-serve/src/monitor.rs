//! Monitors at work inside the forward pass. A [`MonitorSet`] is the dictionaries and the
//! monitors of the moment (replaced whole when an operator changes them); a [`Watch`] is one
//! request's view of it: each dictionary's hook gets a replacement function that, for every
//! new token, reads the monitored signals, steps each rule, records firings, queues alerts,
//! applies clamps and steers to the activation (so the rest of the pass sees the edit) and
//! marks the request blocked. With a KV cache each decoding step brings one new token, so a
//! rule fires on the token where it first holds, while the request is being processed.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use glassbox_dictionary::Sae;
use glassbox_model::candle::Tensor;
use glassbox_model::{HookPoint, Hooks, Model};
use serde::Serialize;
use serde_json::json;

use crate::config::{Action, DictionaryConfig, MonitorConfig};
use crate::error::{Result, ServeError};
use crate::rules::{Rule, RuleState, Signal};
use crate::webhook::Alerts;

pub struct Dictionary {
    pub name: String,
    pub sae: Sae,
    pub hook: HookPoint,
}

pub struct Monitor {
    pub cfg: MonitorConfig,
    pub rule: Rule,
    dict: usize,
    target: Option<u32>,
}

/// The dictionaries and monitors in force.
pub struct MonitorSet {
    pub dictionaries: Vec<Arc<Dictionary>>,
    pub monitors: Vec<Monitor>,
}

impl MonitorSet {
    pub fn load_dictionaries(
        model: &Model,
        cfgs: &[DictionaryConfig],
    ) -> Result<Vec<Arc<Dictionary>>> {
        cfgs.iter()
            .map(|d| {
                let sae = glassbox_dictionary::saelens::load(&d.path)?;
                let hook = model.hook_point(&sae.cfg.hook)?;
                if sae.d_in() != model.config.d_model {
                    return Err(ServeError::Config(format!(
                        "dictionary `{}` reads {} dimensions at {}, but the model is {} wide",
                        d.name,
                        sae.d_in(),
                        sae.cfg.hook,
                        model.config.d_model
                    )));
                }
                Ok(Arc::new(Dictionary {
                    name: d.name.clone(),
                    sae,
                    hook,
                }))
            })
            .collect()
    }

    pub fn new(
        dictionaries: Vec<Arc<Dictionary>>,
        monitors: &[MonitorConfig],
    ) -> Result<MonitorSet> {
        let monitors = monitors
            .iter()
            .map(|m| {
                let rule = m.validate()?;
                let bad = |why: String| ServeError::Config(format!("monitor `{}`: {why}", m.name));
                let dict = dictionaries
                    .iter()
                    .position(|d| d.name == m.dictionary)
                    .ok_or_else(|| bad(format!("no dictionary is named `{}`", m.dictionary)))?;
                let sae = &dictionaries[dict].sae;
                let target = m.target(&rule);
                for f in [target, feature_of(&rule.signal)].into_iter().flatten() {
                    if f as usize >= sae.d_sae() {
                        return Err(bad(format!(
                            "feature {f} is outside dictionary `{}` ({} features)",
                            m.dictionary,
                            sae.d_sae()
                        )));
                    }
                }
                if let Signal::Probe(p) = rule.signal.base() {
                    return Err(bad(format!("probe `{p}`: probes are not available yet")));
                }
                if matches!(m.action, Action::Clamp | Action::Steer) && sae.cfg.is_transcoder() {
                    return Err(bad(
                        "a transcoder's decoder writes another hook; clamp and steer need an SAE"
                            .into(),
                    ));
                }
                Ok(Monitor {
                    cfg: m.clone(),
                    rule,
                    dict,
                    target,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(MonitorSet {
            dictionaries,
            monitors,
        })
    }
}

fn feature_of(s: &Signal) -> Option<u32> {
    match s.base() {
        Signal::Feature(f) => Some(*f),
        _ => None,
    }
}

/// A rule firing on one token.
#[derive(Debug, Clone, Serialize)]
pub struct Firing {
    pub monitor: String,
    /// Which input of the request (embeddings take several).
    pub input: usize,
    /// Token position in that input (prompt and generated tokens counted together).
    pub position: usize,
    /// The rule's value there (a feature's activation, a window mean, a count, an error).
    pub value: f32,
    pub action: Action,
}

#[derive(Debug, Clone, Serialize)]
pub struct Blocked {
    pub monitor: String,
    pub reason: String,
    pub input: usize,
    pub position: usize,
}

/// One request's monitoring state.
pub struct Watch<'s> {
    set: &'s MonitorSet,
    alerts: Option<&'s Alerts>,
    request_id: &'s str,
    /// Per input, per monitor.
    states: Vec<Vec<RuleState>>,
    /// Tokens of each input seen so far, per hook point (each sees every token once).
    seen: HashMap<HookPoint, Vec<usize>>,
    /// Real tokens per input (the rest of a padded row is skipped).
    lengths: Vec<usize>,
    pub firings: Vec<Firing>,
    pub blocked: Option<Blocked>,
}

impl<'s> Watch<'s> {
    pub fn new(set: &'s MonitorSet, alerts: Option<&'s Alerts>, request_id: &'s str) -> Self {
        Watch {
            set,
            alerts,
            request_id,
            states: Vec::new(),
            seen: HashMap::new(),
            lengths: Vec::new(),
            firings: Vec::new(),
            blocked: None,
        }
    }

    /// Declares the real lengths of a padded batch about to run (embeddings).
    pub fn set_lengths(&mut self, lengths: &[usize]) {
        self.lengths = lengths.to_vec();
    }

    /// Hooks for one forward pass: a replacement at each monitored dictionary's hook.
    pub fn hooks<'h>(cell: &'h RefCell<Watch<'s>>) -> Hooks<'h>
    where
        's: 'h,
    {
        let set = cell.borrow().set;
        let mut points: Vec<HookPoint> = set
            .monitors
            .iter()
            .map(|m| set.dictionaries[m.dict].hook)
            .collect();
        points.sort();
        points.dedup();
        let mut hooks = Hooks::none();
        for point in points {
            hooks = hooks.replace(point, move |t| cell.borrow_mut().at_point(point, t));
        }
        hooks
    }

    /// Every monitored dictionary at `point` in turn (each sees the edits of the one before).
    fn at_point(&mut self, point: HookPoint, t: &Tensor) -> glassbox_model::candle::Result<Tensor> {
        let (b, s, _) = t.dims3()?;
        let seen = self.seen.entry(point).or_default();
        seen.resize(b.max(seen.len()), 0);
        let start = seen.clone();
        let mut t = t.clone();
        for d in 0..self.set.dictionaries.len() {
            if self.set.dictionaries[d].hook == point
                && self.set.monitors.iter().any(|m| m.dict == d)
            {
                t = self.at_hook(d, &t, &start)?;
            }
        }
        for (row, seen) in self
            .seen
            .entry(point)
            .or_default()
            .iter_mut()
            .enumerate()
            .take(b)
        {
            *seen += self.lengths.get(row).copied().unwrap_or(s).min(s);
        }
        Ok(t)
    }

    fn at_hook(
        &mut self,
        d: usize,
        t: &Tensor,
        start: &[usize],
    ) -> glassbox_model::candle::Result<Tensor> {
        let (b, s, width) = t.dims3()?;
        let mut x: Vec<f32> = t.flatten_all()?.to_vec1()?;
        let dict = &self.set.dictionaries[d];
        let monitors: Vec<(usize, &Monitor)> = self
            .set
            .monitors
            .iter()
            .enumerate()
            .filter(|(_, m)| m.dict == d)
            .collect();
        while self.states.len() < b {
            self.states
                .push(vec![RuleState::default(); self.set.monitors.len()]);
        }
        let full_code = monitors.iter().any(|(_, m)| {
            matches!(m.rule.signal.base(), Signal::Anomaly) || !dict.sae.reads_latents_alone()
        });
        let mut edited = false;
        for (row, &offset) in start.iter().enumerate().take(b) {
            let len = self.lengths.get(row).copied().unwrap_or(s).min(s);
            for p in 0..len {
                let at = (row * s + p) * width;
                let xt = &mut x[at..at + width];
                let position = offset + p;
                let (code, anomaly) = if full_code {
                    let (codes, xhat) = dict
                        .sae
                        .reconstruct(xt)
                        .map_err(|e| glassbox_model::candle::Error::Msg(e.to_string()))?;
                    let err: f32 = xt.iter().zip(&xhat).map(|(a, b)| (a - b) * (a - b)).sum();
                    let norm: f32 = xt.iter().map(|a| a * a).sum();
                    (codes.rows.into_iter().next(), err / norm.max(1e-12))
                } else {
                    (None, 0.0)
                };
                let read = |xt: &[f32], f: u32| match &code {
                    Some(c) => c.iter().find(|e| e.0 == f).map_or(0.0, |e| e.1),
                    None => dict.sae.latent(xt, f),
                };
                for &(mi, m) in &monitors {
                    let base = match m.rule.signal.base() {
                        Signal::Feature(f) => read(xt, *f),
                        Signal::Anomaly => anomaly,
                        _ => 0.0,
                    };
                    let (value, holds) = m.rule.step(&mut self.states[row][mi], base);
                    if !holds {
                        continue;
                    }
                    self.firings.push(Firing {
                        monitor: m.cfg.name.clone(),
                        input: row,
                        position,
                        value,
                        action: m.cfg.action,
                    });
                    let delta = match (m.cfg.action, m.target) {
                        (Action::Clamp, Some(f)) => m.cfg.value.map(|v| (f, v - read(xt, f))),
                        (Action::Steer, Some(f)) => m.cfg.strength.map(|v| (f, v)),
                        _ => None,
                    };
                    if let Some((f, by)) = delta {
                        for (x, u) in xt.iter_mut().zip(dict.sae.direction(f)) {
                            *x += by * u;
                        }
                        edited = true;
                    }
                    match m.cfg.action {
                        Action::Block if self.blocked.is_none() => {
                            self.blocked = Some(Blocked {
                                monitor: m.cfg.name.clone(),
                                reason: m.cfg.reason.clone().unwrap_or_else(|| {
                                    format!("monitor `{}` ({}) fired", m.cfg.name, m.cfg.when)
                                }),
                                input: row,
                                position,
                            })
                        }
                        Action::Alert => {
                            if let Some(a) = self.alerts {
                                a.send(json!({
                                    "request_id": self.request_id, "monitor": m.cfg.name,
                                    "rule": m.cfg.when, "input": row, "position": position, "value": value,
                                }));
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        if !edited {
            return Ok(t.clone());
        }
        Tensor::from_vec(x, (b, s, width), t.device())
    }
}
