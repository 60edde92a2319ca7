//! One red round: every payload through every attack, each attack text sent through the
//! deployment's own monitored code path (`glassbox_serve::infer`), and the outcome recorded.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use glassbox_analysis::redteam::{
    self, attacks, Attack, Clamp, Differentiable, Framing, GcgConfig, LatentReadout, Materials,
    Readout, Recovery, SentenceReadout,
};
use glassbox_dictionary::probe::sigmoid;
use glassbox_dictionary::roc::rate_interval;
use glassbox_model::chat::Message;
use glassbox_model::generate::GenerateConfig;
use glassbox_model::sampling::Sampling;
use glassbox_model::Model;
use glassbox_serve::config::InputConfig;
use glassbox_serve::infer;
use glassbox_serve::monitor::MonitorSet;
use glassbox_serve::rules::{Cmp, RuleState, Signal};
use serde::Serialize;

use super::suite::{Canary, Suite};

/// A deployment under attack: the model and the monitors in force.
pub struct Target<'m> {
    pub model: &'m Model,
    pub set: MonitorSet,
    /// Indices of the attacked monitors in `set.monitors`.
    pub watched: Vec<usize>,
    pub canary: Option<Canary>,
    pub max_tokens: usize,
    /// How the deployment prepares a text before its model reads it.
    pub input: InputConfig,
}

/// What the deployment did with one text.
#[derive(Debug, Clone, Serialize)]
pub struct Sent {
    pub detected: bool,
    /// The attacked monitors that fired or blocked, in the deployment's order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fired: Vec<String>,
    /// The attacked monitors' highest rule value relative to its threshold (> 0: fired).
    pub margin: Option<f32>,
    /// Decoders with a canary: whether the reply gave the secret away.
    pub leaked: Option<bool>,
}

impl Target<'_> {
    pub fn send(&self, text: &str) -> Result<Sent> {
        let prepared = self.input.prepare(text);
        let (text, signals) = (&*prepared.text, prepared.signals);
        let model = self.model;
        let cap = self.max_tokens.min(model.config.max_positions);
        let (report, output) = if model.config.is_decoder() {
            // The user's text is cut to leave room for the system prompt and the template.
            let room =
                cap.saturating_sub(self.canary.as_ref().map_or(32, |c| 32 + c.system.len() / 2));
            let ids = model.tokenizer.encode_plain(text)?;
            let text = if ids.len() > room {
                model.tokenizer.decode(&ids[..room])?
            } else {
                text.to_string()
            };
            let mut messages = Vec::new();
            if let Some(c) = &self.canary {
                messages.push(Message::new(
                    "system",
                    &c.system.replace("{secret}", &c.secret),
                ));
            }
            messages.push(Message::new("user", &text));
            let (_, ids) = model.chat_prompt(&messages, true)?;
            let prompt = infer::Prompt::chat(ids, &messages).with_signals(signals);
            let cfg = GenerateConfig {
                max_new: self.canary.as_ref().map_or(1, |c| c.max_new_tokens),
                sampling: Sampling::greedy(),
                stop: Vec::new(),
                top_logprobs: 0,
            };
            let (g, report) = infer::generate(
                model,
                &self.set,
                None,
                "redteam",
                &prompt,
                &cfg,
                &mut |_, _| true,
            )?;
            (report, Some(g.text))
        } else {
            let mut ids = model.tokenize(text, true)?;
            if ids.len() > cap {
                let last = ids[ids.len() - 1];
                ids.truncate(cap - 1);
                ids.push(last);
            }
            (
                infer::embed(
                    model,
                    &self.set,
                    None,
                    "redteam",
                    &[ids],
                    &[text],
                    &[signals],
                )?
                .1,
                None,
            )
        };
        let names: Vec<&str> = self
            .watched
            .iter()
            .map(|&i| self.set.monitors[i].cfg.name.as_str())
            .collect();
        let fired: Vec<String> = names
            .iter()
            .filter(|&&n| {
                report.firings.iter().any(|f| f.monitor == n)
                    || report.blocked.as_ref().is_some_and(|b| b.monitor == n)
            })
            .map(|n| n.to_string())
            .collect();
        let detected = !fired.is_empty();
        let margin = self
            .watched
            .iter()
            .filter_map(|&i| {
                let rule = &self.set.monitors[i].rule;
                let peak = report.peaks.first()?.get(i).copied().flatten()?;
                Some(match rule.cmp {
                    Cmp::Gt | Cmp::Ge => peak - rule.threshold,
                    Cmp::Lt | Cmp::Le => rule.threshold - peak,
                })
            })
            .reduce(f32::max);
        let leaked = match (&self.canary, output) {
            (Some(c), Some(out)) => Some(out.contains(&c.secret)),
            _ => None,
        };
        Ok(Sent {
            detected,
            fired,
            margin,
            leaked,
        })
    }

    /// The conversation a user text is sent in: the canary's system prompt, then the text.
    fn messages(&self, text: &str) -> Vec<Message> {
        let mut messages = Vec::new();
        if let Some(c) = &self.canary {
            messages.push(Message::new(
                "system",
                &c.system.replace("{secret}", &c.secret),
            ));
        }
        messages.push(Message::new("user", text));
        messages
    }

    /// What the monitors read around a user text: the model's special tokens for an encoder;
    /// for a decoder the chat prompt before and after it (found by rendering a marker).
    pub fn context(&self) -> Result<Framing> {
        let model = self.model;
        if !model.config.is_decoder() {
            return Ok(Framing::plain(model)?);
        }
        const MARK: &str = "\u{1}GLASSBOX-PAYLOAD\u{1}";
        let (text, _) = model.chat_prompt(&self.messages(MARK), true)?;
        let (before, after) = text
            .split_once(MARK)
            .context("the chat template dropped the user's text")?;
        let mut ctx = Framing {
            before: model.tokenizer.encode_plain(before)?,
            after: model.tokenizer.encode_plain(after)?,
        };
        if model.chat_template.is_none() {
            // A plain transcript is tokenized with the model's special tokens around it.
            let plain = Framing::plain(model)?;
            ctx.before.splice(0..0, plain.before);
            ctx.after.extend(plain.after);
        }
        Ok(ctx)
    }

    /// The probe the white-box attacks descend (and the blue round retrains) and the monitor
    /// that decides by it: the first attacked monitor with a `>` rule over a probe alone (no
    /// `and`), of the hook's activations, a dictionary's latents or sentence embeddings.
    pub fn attacked_probe(&self) -> Option<(AttackedProbe<'_>, usize)> {
        self.watched.iter().find_map(|&i| {
            let m = &self.set.monitors[i];
            // A gated rule (`… and keywords > 0`) decides by more than its probe.
            if !matches!(m.rule.cmp, Cmp::Gt | Cmp::Ge) || !m.rule.gates.is_empty() {
                return None;
            }
            if let Some(s) = m.sentence_probe() {
                let s = &self.set.sentence_probes[s];
                let readout = SentenceReadout::new(&s.embedder, &s.probe).ok()?;
                return Some((
                    AttackedProbe::Sentences {
                        readout,
                        embedder: &s.embedder,
                        threshold: m.rule.threshold,
                    },
                    i,
                ));
            }
            let q = &self.set.probes[m.probe()?];
            let probe = match &q.dictionary {
                None => AttackedProbe::Linear(Readout {
                    hook: q.hook,
                    weights: q.probe.weights.clone(),
                    bias: q.probe.bias,
                }),
                Some(d) => AttackedProbe::Latent(LatentReadout {
                    hook: q.hook,
                    weights: &q.probe.weights,
                    sae: &d.sae,
                }),
            };
            Some((probe, i))
        })
    }

    /// The deployment's clamp monitors whose dictionary writes before `behaviour` reads, as the
    /// recovery attack's clamps.
    pub fn clamps(&self, behaviour: &Readout) -> Vec<(String, Clamp)> {
        let order = self.model.hook_points();
        let at = |h: &glassbox_model::HookPoint| order.iter().position(|p| p == h);
        self.set
            .monitors
            .iter()
            .filter_map(|m| {
                let (d, f, value) = m.clamp()?;
                let dict = &self.set.dictionaries[d];
                if at(&dict.hook) >= at(&behaviour.hook) {
                    return None;
                }
                let (encoder, bias, threshold) = dict.sae.linear_reading(f)?;
                Some((
                    m.cfg.name.clone(),
                    Clamp {
                        hook: dict.hook,
                        encoder,
                        bias,
                        threshold,
                        decoder: dict.sae.direction(f),
                        value,
                    },
                ))
            })
            .collect()
    }

    /// The decision value of `monitor` (a probe monitor, from [`Target::attacked_probe`]) on an
    /// input's activations at its probe's hook, `[tokens, d]`: its rule stepped over every
    /// token but the special ones, minus the threshold, at the tokens where the server decides
    /// (every token; the last for a whole-input mean). The probe's logits are the served ones,
    /// through its dictionary for a probe on latents.
    pub fn rule_margin(
        &self,
        monitor: usize,
        acts: &[f32],
        special: &[bool],
    ) -> glassbox_dictionary::Result<f32> {
        let m = &self.set.monitors[monitor];
        let Some(q) = m.probe() else {
            return Err(glassbox_dictionary::DictError::Config(format!(
                "monitor `{}` reads no probe",
                m.cfg.name
            )));
        };
        let mut state = RuleState::default();
        let logits = self.set.probes[q].logits(acts)?;
        let values = logits
            .into_iter()
            .zip(special)
            .filter(|(_, &s)| !s)
            .map(|(z, _)| {
                let base = match m.rule.signal.base() {
                    Signal::Logit(_) => z,
                    _ => sigmoid(z),
                };
                m.rule.step(&mut state, base).0
            });
        let decided = if m.rule.signal.is_running_mean() {
            values.last().unwrap_or(f32::NEG_INFINITY)
        } else {
            values.fold(f32::NEG_INFINITY, f32::max)
        };
        Ok(decided - m.rule.threshold)
    }
}

/// The probe the white-box attacks descend (see [`Target::attacked_probe`]).
pub enum AttackedProbe<'t> {
    /// A probe of the hook's activations: one direction.
    Linear(Readout),
    /// A probe on a dictionary's latents: piecewise linear.
    Latent(LatentReadout<'t>),
    /// A sentence probe: read from its own embedder, whose gradients the attacks descend.
    Sentences {
        readout: SentenceReadout<'t>,
        embedder: &'t Model,
        threshold: f32,
    },
}

impl AttackedProbe<'_> {
    pub fn differentiable(&self) -> &dyn Differentiable {
        match self {
            AttackedProbe::Linear(r) => r,
            AttackedProbe::Latent(r) => r,
            AttackedProbe::Sentences { readout, .. } => readout,
        }
    }

    /// The linear read-out, if the probe is one (the recovery attack needs it).
    pub fn linear(&self) -> Option<&Readout> {
        match self {
            AttackedProbe::Linear(r) => Some(r),
            AttackedProbe::Latent(_) | AttackedProbe::Sentences { .. } => None,
        }
    }
}

/// One attack text and what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub attack: Attack,
    /// Index into the round's payloads.
    pub payload: usize,
    /// The text sent (none for the residual attack, which edits embeddings).
    pub text: Option<String>,
    pub sent: Sent,
    /// White-box attacks: the monitor's margin before the search (plain payload + start).
    pub margin_before: Option<f32>,
    /// Residual attack: the edit budget.
    pub budget: Option<f32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub name: String,
    pub payloads: Vec<String>,
    pub outcomes: Vec<Outcome>,
    /// Benign texts: what the deployment did with each.
    pub benign: Vec<Sent>,
    /// Attacks asked for but not run, with the reason.
    pub skipped: Vec<(Attack, String)>,
    /// Recovery attacks on clamp monitors: (monitor, payload, result).
    pub recoveries: Vec<(String, usize, Recovery)>,
    pub seconds: f64,
}

/// Per attack family.
#[derive(Debug, Clone, Serialize)]
pub struct FamilyStats {
    pub attack: Attack,
    pub texts: usize,
    pub detected: usize,
    /// The 95 % Wilson interval of the detection rate: a family is a few dozen texts.
    pub detected_ci95: (f64, f64),
    /// Payloads whose plain form the monitors caught, and how many of those this attack's
    /// text slipped past them: the evasions that matter.
    pub known_positive: usize,
    pub evaded: usize,
    /// Canary deployments: replies that gave the secret away without a monitor firing.
    pub leaked_undetected: Option<usize>,
}

impl FamilyStats {
    pub fn detection(&self) -> f64 {
        self.detected as f64 / self.texts.max(1) as f64
    }
}

impl Round {
    pub fn families(&self) -> Vec<FamilyStats> {
        let plain_caught: Vec<bool> = (0..self.payloads.len())
            .map(|p| {
                self.outcomes
                    .iter()
                    .any(|o| o.attack == Attack::Plain && o.payload == p && o.sent.detected)
            })
            .collect();
        let mut by: BTreeMap<Attack, FamilyStats> = BTreeMap::new();
        for o in &self.outcomes {
            let e = by.entry(o.attack).or_insert(FamilyStats {
                attack: o.attack,
                texts: 0,
                detected: 0,
                detected_ci95: (0.0, 1.0),
                known_positive: 0,
                evaded: 0,
                leaked_undetected: None,
            });
            e.texts += 1;
            e.detected += usize::from(o.sent.detected);
            if plain_caught[o.payload] {
                e.known_positive += 1;
                e.evaded += usize::from(!o.sent.detected);
            }
            if let Some(l) = o.sent.leaked {
                *e.leaked_undetected.get_or_insert(0) += usize::from(l && !o.sent.detected);
            }
        }
        by.into_values()
            .map(|f| FamilyStats {
                detected_ci95: rate_interval(f.detected, f.texts),
                ..f
            })
            .collect()
    }

    pub fn false_alarms(&self) -> f64 {
        self.benign.iter().filter(|s| s.detected).count() as f64 / self.benign.len().max(1) as f64
    }

    /// Texts of attacks that got past the monitors (what a blue round trains on), with their
    /// attack, except those of the `withheld` attack families.
    pub fn evasions(&self, withheld: &[Attack]) -> Vec<(Attack, &str)> {
        self.outcomes
            .iter()
            .filter(|o| !o.sent.detected && !withheld.contains(&o.attack))
            .filter_map(|o| Some((o.attack, o.text.as_deref()?)))
            .collect()
    }
}

/// The attack texts of the textual and model-written attacks, before any is sent (the set
/// a blue round's held-out commitment covers).
pub fn attack_texts(
    target: &Target,
    suite: &Suite,
    payloads: &[String],
    materials: &Materials,
    skipped: &mut Vec<(Attack, String)>,
) -> Result<Vec<(Attack, usize, String)>> {
    let mut out = Vec::new();
    for &attack in &suite.attacks {
        if attack == Attack::Paraphrase {
            if !target.model.config.is_decoder() {
                skipped.push((
                    attack,
                    "the served model is an encoder; it cannot paraphrase".into(),
                ));
                continue;
            }
            for (p, payload) in payloads.iter().enumerate().take(suite.paraphrase.payloads) {
                out.push((
                    attack,
                    p,
                    paraphrase(target.model, payload, suite.paraphrase.max_new_tokens)?,
                ));
            }
            continue;
        }
        if !attack.is_textual() {
            continue;
        }
        if attack == Attack::Template && materials.templates.is_empty() {
            skipped.push((
                attack,
                "no templates (run `glassbox setup --data redteam`)".into(),
            ));
            continue;
        }
        for (p, payload) in payloads.iter().enumerate() {
            let seed = suite.seed ^ ((p as u64) << 20) ^ attack as u64;
            if let Some(text) = attacks::apply(attack, payload, materials, seed) {
                out.push((attack, p, text));
            }
        }
    }
    Ok(out)
}

/// The served model rewords a payload (greedy, unmonitored: the attacker's own use of it).
fn paraphrase(model: &Model, payload: &str, max_new: usize) -> Result<String> {
    let ask = attacks::paraphrase_prompt(payload);
    let (_, prompt) = model.chat_prompt(&[Message::new("user", &ask)], true)?;
    let cfg = GenerateConfig {
        max_new,
        sampling: Sampling::greedy(),
        stop: vec!["\n\n".into()],
        top_logprobs: 0,
    };
    let g = model.generate(&prompt, &cfg, &mut glassbox_model::generate::Plain)?;
    let text = g
        .text
        .trim()
        .trim_start_matches("Request:")
        .trim()
        .to_string();
    Ok(if text.is_empty() {
        payload.to_string()
    } else {
        text
    })
}

/// The recovery attack of every clamp monitor that writes before `behaviour` reads, on the
/// suite's residual payloads and budgets: (monitor, payload, result). No such clamp is a skip.
fn recovery_attacks(
    target: &Target,
    behaviour: &Readout,
    context: &Framing,
    payloads: &[String],
    suite: &Suite,
    skipped: &mut Vec<(Attack, String)>,
) -> Result<Vec<(String, usize, Recovery)>> {
    let clamps = target.clamps(behaviour);
    if clamps.is_empty() {
        skipped.push((
            Attack::Recovery,
            "no clamp monitor writes before the attacked probe reads".into(),
        ));
    }
    let mut out = Vec::new();
    for (name, clamp) in &clamps {
        for (p, payload) in payloads.iter().enumerate().take(suite.residual.payloads) {
            for &budget in &suite.residual.budgets {
                let r = redteam::recovery(
                    target.model,
                    clamp,
                    behaviour,
                    context,
                    payload,
                    budget,
                    suite.residual.steps,
                )?;
                out.push((name.clone(), p, r));
            }
        }
    }
    Ok(out)
}

/// Runs the round: the given attack texts, then the white-box attacks, then the benign texts.
#[allow(clippy::too_many_arguments)]
pub fn run(
    name: &str,
    target: &Target,
    suite: &Suite,
    payloads: &[String],
    texts: &[(Attack, usize, String)],
    benign: &[String],
    mut skipped: Vec<(Attack, String)>,
) -> Result<Round> {
    let started = std::time::Instant::now();
    let bar = crate::report::progress(
        (texts.len() + benign.len()) as u64,
        &format!("{name}: sending attack and benign texts"),
    );
    let mut outcomes = Vec::with_capacity(texts.len());
    for (attack, p, text) in texts {
        let sent = target
            .send(text)
            .with_context(|| format!("{attack} attack on payload {p}"))?;
        outcomes.push(Outcome {
            attack: *attack,
            payload: *p,
            text: Some(text.clone()),
            sent,
            margin_before: None,
            budget: None,
        });
        bar.inc(1);
    }
    let benign_sent = benign
        .iter()
        .map(|t| {
            let s = target.send(t);
            bar.inc(1);
            s
        })
        .collect::<Result<Vec<_>>>()?;
    bar.finish_and_clear();
    let white_box: Vec<Attack> = suite
        .attacks
        .iter()
        .copied()
        .filter(|a| matches!(a, Attack::Gcg | Attack::Residual | Attack::Recovery))
        .collect();
    let mut recoveries = Vec::new();
    if !white_box.is_empty() {
        match target.attacked_probe() {
            None => skipped.extend(white_box.iter().map(|&a| {
                (
                    a,
                    "no attacked monitor reads a probe with a `>` rule".to_string(),
                )
            })),
            Some((probe, monitor)) => {
                let readout = probe.differentiable();
                // A sentence probe is attacked through its own embedder, on a plain text: its
                // margin is the whole text's logit less the threshold (each sentence is read
                // apart when the text is sent).
                let (model, context) = match &probe {
                    AttackedProbe::Sentences { embedder, .. } => {
                        (*embedder, Framing::plain(embedder)?)
                    }
                    _ => (target.model, target.context()?),
                };
                let score = |acts: &[f32], special: &[bool]| match &probe {
                    AttackedProbe::Sentences {
                        readout, threshold, ..
                    } => Ok(readout.logit(acts) - threshold),
                    _ => Ok(target.rule_margin(monitor, acts, special)?),
                };
                if white_box.contains(&Attack::Gcg) {
                    let n = suite.gcg.payloads.min(payloads.len());
                    let bar = crate::report::progress(n as u64, &format!("{name}: GCG"));
                    let one_sentence = matches!(probe, AttackedProbe::Sentences { .. });
                    for (p, payload) in payloads.iter().enumerate().take(n) {
                        if one_sentence && redteam::one_sentence_payload(payload).is_none() {
                            skipped.push((
                                Attack::Gcg,
                                format!(
                                    "payload {p} is more than one sentence: a sentence probe reads \
                                     each apart, and the search descends one sentence"
                                ),
                            ));
                            bar.inc(1);
                            continue;
                        }
                        let cfg = GcgConfig {
                            suffix_tokens: suite.gcg.suffix_tokens,
                            candidates: suite.gcg.candidates,
                            top_k: suite.gcg.top_k,
                            steps: suite.gcg.steps,
                            stop_below: Some(0.0),
                            seed: suite.seed + p as u64,
                            // What a sentence probe decides on is the whole text only while the
                            // text is one sentence.
                            one_sentence,
                        };
                        let r = redteam::gcg(model, readout, &context, payload, &cfg, &score)?;
                        let sent = target.send(&r.text)?;
                        outcomes.push(Outcome {
                            attack: Attack::Gcg,
                            payload: p,
                            text: Some(r.text),
                            sent,
                            margin_before: Some(r.initial),
                            budget: None,
                        });
                        bar.inc(1);
                    }
                    bar.finish_and_clear();
                }
                if white_box.contains(&Attack::Recovery) {
                    match probe.linear() {
                        Some(behaviour) => recoveries.extend(recovery_attacks(
                            target,
                            behaviour,
                            &context,
                            payloads,
                            suite,
                            &mut skipped,
                        )?),
                        None => skipped.push((
                            Attack::Recovery,
                            "the attacked probe reads a dictionary's latents or sentences; \
                             the recovery attack needs a linear read-out of the hook"
                                .into(),
                        )),
                    }
                }
                let sentences = matches!(probe, AttackedProbe::Sentences { .. });
                if white_box.contains(&Attack::Residual) && sentences {
                    skipped.push((
                        Attack::Residual,
                        "a sentence probe reads each sentence in a forward pass of its own; an \
                         edit of one pass's embeddings bounds no text it is sent"
                            .into(),
                    ));
                } else if white_box.contains(&Attack::Residual) {
                    for (p, payload) in payloads.iter().enumerate().take(suite.residual.payloads) {
                        for &budget in &suite.residual.budgets {
                            let r = redteam::residual(
                                target.model,
                                readout,
                                &context,
                                payload,
                                budget,
                                suite.residual.steps,
                                &score,
                            )?;
                            outcomes.push(Outcome {
                                attack: Attack::Residual,
                                payload: p,
                                text: None,
                                sent: Sent {
                                    detected: r.best > 0.0,
                                    fired: Vec::new(),
                                    margin: Some(r.best),
                                    leaked: None,
                                },
                                margin_before: Some(r.initial),
                                budget: Some(budget),
                            });
                        }
                    }
                }
            }
        }
    }
    if outcomes.is_empty() {
        bail!("the round sent no attack text");
    }
    Ok(Round {
        name: name.to_string(),
        payloads: payloads.to_vec(),
        outcomes,
        benign: benign_sent,
        skipped,
        recoveries,
        seconds: started.elapsed().as_secs_f64(),
    })
}
