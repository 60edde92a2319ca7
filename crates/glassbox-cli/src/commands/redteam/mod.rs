//! `glassbox redteam`: attacks a monitored deployment and reports, per attack family, what the
//! monitors caught; with `--defend`, a blue round follows under an information barrier.
//!
//! The protocol (README, "Red team / blue team"): the red round draws payloads from the suite's
//! families and sends every attack text through the deployment's own code path. With
//! `--defend` the payloads are split first; the held-out share's attack texts are written and
//! committed by SHA-256 to the deployment's audit log *before* the blue round trains; the blue
//! round sees only the training share's evasions; then the held-out file is revealed, checked
//! against the commitment, and attacked again before and after the defence (white-box attacks
//! re-run against each monitor, as an adaptive attacker would).

mod blue;
mod report;
mod round;
mod suite;
mod texts;

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use glassbox_analysis::redteam::{Attack, Materials};
use glassbox_model::registry;
use glassbox_serve::config::Config;
use glassbox_serve::monitor::{MonitorSet, Readers};
use glassbox_store::audit;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::json;
use sha2::{Digest, Sha256};

use self::round::{AttackedProbe, Round, Target};
use self::suite::Suite;
use super::probe::{read_records, Labelled};
use crate::input;

#[derive(clap::Args)]
#[command(
    after_help = "Examples (after `glassbox setup --data redteam` and building the probe, see README):\n  \
    glassbox redteam --config redteam/deploy.toml --suite redteam/suite.toml --out reports/redteam\n  \
    glassbox redteam --config redteam/deploy.toml --suite redteam/suite.toml --defend --out reports/redteam-defended\n  \
    glassbox audit verify audit/redteam.jsonl        # the held-out commitment\n\n\
    A text counts as detected when an attacked monitor fires on it. Writes the commitment to the \
    deployment's audit log; the log takes one writer at a time, so stop a server using it first."
)]
pub struct RedteamArgs {
    /// The deployment attacked (its model, probes, dictionaries and monitors; see
    /// deploy.example.toml).
    #[arg(long, default_value = "deploy.toml")]
    config: PathBuf,
    /// Payloads, attacks and thresholds (see redteam/suite.toml).
    #[arg(long)]
    suite: PathBuf,
    /// Retrain the attacked probe on the red round's evasions, recalibrate its threshold on
    /// benign families it was trained without, and attack a held-out set before and after
    /// (needs --out).
    #[arg(long, requires = "out")]
    defend: bool,
    /// Writes report.json, report.html and junit.xml here (and, with --defend, heldout.jsonl,
    /// the defended probe and deploy.defended.toml).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Exit with status 1 when a JUnit case fails (an attack family below the suite's
    /// detection floor, or too many false alarms), after writing every report.
    #[arg(long)]
    strict: bool,
    /// Also send your own texts through the deployment (JSON lines {"text": …, "label": 0|1,
    /// "family": …}; no label: benign traffic) and report each family's share flagged and the
    /// monitors that flagged it: the false alarms of your traffic, the detection of your
    /// attacks, for all the deployment's monitors together (report.json: "texts"). In
    /// junit.xml each family is a test case, an attack family failing below the suite's
    /// `min_detection`, a benign one above its `max_false_alarms` (--strict: exit 1)
    #[arg(long, value_name = "FILE.jsonl")]
    texts: Option<PathBuf>,
}

pub fn run(a: RedteamArgs, device: &str, json_out: bool) -> Result<()> {
    let suite = Suite::load(&a.suite)?;
    let cfg = Config::load(&a.config)?;
    let model = input::load_model(&cfg.model, device)?;
    let readers = Readers::load(&model, &cfg.dictionaries, &cfg.probes)?;
    let set = MonitorSet::new(&readers, &cfg.monitors)?;
    let watched = watched(&set, &suite, &a.config)?;
    let home = registry::home();
    let data_path = suite
        .data
        .clone()
        .unwrap_or_else(|| glassbox_store::redteam::jsonl(&home));
    if !data_path.is_file() {
        bail!(
            "{} is missing; run `glassbox setup --data redteam` (or set `data` in {})",
            data_path.display(),
            a.suite.display()
        );
    }
    let data: Vec<Labelled> = read_records(&data_path)?
        .into_iter()
        .map(|r| r.labelled(&data_path))
        .collect::<Result<_>>()?;
    let (payloads, benign) = draw(&data, &suite, &data_path)?;
    // Read now, so a malformed line fails before the round, not after it.
    let own_records = match a.texts.as_deref() {
        Some(path) => Some((path, read_records(path)?)),
        None => None,
    };
    let templates = read_templates(
        &suite
            .templates
            .clone()
            .unwrap_or_else(|| glassbox_store::redteam::templates(&home)),
    )?;
    let openers: Vec<String> = data
        .iter()
        .filter(|l| !l.label && l.family == "benign_question")
        .map(|l| l.text.clone())
        .take(64)
        .collect();
    let materials = Materials {
        templates: &templates,
        openers: &openers,
    };
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let target = Target {
        model: &model,
        set,
        watched,
        canary: suite.canary.clone(),
        max_tokens: suite.max_tokens,
        input: cfg.input.clone(),
    };
    let mut notes = vec![format!(
        "deployment {} (model {}), monitors attacked: {}; suite {}; data {}",
        a.config.display(),
        cfg.model,
        target
            .watched
            .iter()
            .map(|&i| target.set.monitors[i].cfg.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        a.suite.display(),
        data_path.display()
    )];
    let rounds: Vec<Round>;
    let mut defence = None;
    if !a.defend {
        let mut skipped = Vec::new();
        let texts = round::attack_texts(&target, &suite, &payloads, &materials, &mut skipped)?;
        rounds = vec![round::run(
            "red", &target, &suite, &payloads, &texts, &benign, skipped,
        )?];
    } else {
        let out = a.out.as_deref().context("--defend needs --out")?;
        // The probe Blue retrains, found before anything is written or committed.
        let (mi, probe_name, embedder) = defended_probe(&target)?;
        let held_n = ((payloads.len() as f64) * suite.heldout).round() as usize;
        if held_n == 0 || held_n == payloads.len() {
            bail!(
                "--defend needs payloads on both sides of the split; {} payloads with heldout = {} leave {held_n} held out",
                payloads.len(),
                suite.heldout
            );
        }
        let (held, train) = payloads.split_at(held_n);
        // Red: the held-out attack texts are written and committed before anything trains.
        let mut held_skipped = Vec::new();
        let held_texts = round::attack_texts(&target, &suite, held, &materials, &mut held_skipped)?;
        let held_file = out.join("heldout.jsonl");
        let lines: String = held_texts
            .iter()
            .map(|(attack, p, text)| {
                json!({"attack": attack, "payload": p, "text": text}).to_string() + "\n"
            })
            .collect();
        glassbox_store::fsutil::atomic_write(&held_file, lines.as_bytes())?;
        let held_file = std::path::absolute(&held_file)?;
        let mut log = cfg.audit.open()?;
        let commitment = audit::commit(
            &mut log,
            "redteam",
            &held_file,
            json!({"what": "red team held-out attack texts", "texts": held_texts.len(),
                "suite": a.suite, "deployment": a.config}),
        )?;
        drop(log);
        notes.push(format!(
            "held-out set: {} attack texts on {held_n} payloads, committed as audit record {} (SHA-256 {})",
            held_texts.len(),
            commitment.seq,
            commitment.detail["sha256"].as_str().unwrap_or("")
        ));
        // Red round on the training share.
        let mut skipped = Vec::new();
        let texts = round::attack_texts(&target, &suite, train, &materials, &mut skipped)?;
        let (bench, heldout_benign) = benign.split_at(benign.len() / 2);
        let red = round::run(
            "red (training share)",
            &target,
            &suite,
            train,
            &texts,
            bench,
            skipped,
        )?;
        // Blue: retrain on the evasions, never reading the held-out file.
        let monitor = target.set.monitors[mi].cfg.name.clone();
        let withheld: HashSet<[u8; 32]> = held
            .iter()
            .chain(&benign)
            .map(|t| Sha256::digest(t.as_bytes()).into())
            .collect();
        // The probe learns the evasions as the served model reads them (folded, if the
        // deployment folds lookalikes).
        let evasions: Vec<_> = red
            .evasions(&suite.withhold_attacks)
            .into_iter()
            .map(|(attack, text)| (attack, cfg.input.prepare(text).text))
            .collect();
        let evasions: Vec<_> = evasions.iter().map(|(a, t)| (*a, t.as_ref())).collect();
        let inputs = blue::Inputs {
            cfg: &cfg,
            monitor: &monitor,
            probe_name: &probe_name,
            data: &data,
            withheld: &withheld,
            evasions: &evasions,
            out,
        };
        let d = match embedder {
            None => blue::defend(&model, &inputs, suite.max_tokens)?,
            Some(embedder) => blue::defend_sentences(embedder, &inputs)?,
        };
        if !suite.withhold_attacks.is_empty() {
            let names: Vec<&str> = suite.withhold_attacks.iter().map(|a| a.name()).collect();
            notes.push(format!(
                "the blue round never saw evasions of: {} (held-out attack families)",
                names.join(", ")
            ));
        }
        notes.push(format!(
            "blue: probe `{probe_name}` retrained on {} texts ({} red evasions added, {} held-out or round texts left out), threshold set on benign texts held out by {} ({:.1} % flagged); monitor `{monitor}` now `{}`",
            d.training_texts, d.evasions_added, d.excluded, d.calibrated_by, 100.0 * d.calibration_fpr, d.rule
        ));
        // Reveal: the held-out file must be what was committed.
        let revealed = audit::commitments(&cfg.audit.path)?
            .into_iter()
            .find(|c| c.seq == commitment.seq)
            .context("the commitment is not in the audit log")?;
        if revealed.matches != Some(true) {
            bail!(
                "{} no longer has the SHA-256 committed in record {}: the held-out set changed",
                held_file.display(),
                commitment.seq
            );
        }
        let mut log = cfg.audit.open()?;
        log.append(
            "redteam",
            "reveal",
            json!({"file": held_file, "commitment": commitment.seq, "matches": true}),
        )?;
        log.sync()?;
        drop(log);
        let held_texts = read_heldout(&held_file)?;
        let before = round::run(
            "held-out, before",
            &target,
            &suite,
            held,
            &held_texts,
            heldout_benign,
            held_skipped.clone(),
        )?;
        let defended_cfg = Config::load(&d.deploy)?;
        let readers = Readers::load(&model, &defended_cfg.dictionaries, &defended_cfg.probes)?;
        let defended = Target {
            model: &model,
            set: MonitorSet::new(&readers, &defended_cfg.monitors)?,
            watched: target.watched.clone(),
            canary: suite.canary.clone(),
            max_tokens: suite.max_tokens,
            input: defended_cfg.input.clone(),
        };
        let after = round::run(
            "held-out, after",
            &defended,
            &suite,
            held,
            &held_texts,
            heldout_benign,
            held_skipped,
        )?;
        defence = Some(d);
        rounds = vec![red, before, after];
    }
    let own = match own_records {
        Some((path, records)) => Some((path, texts::send_all(&target, path, &records)?)),
        None => None,
    };
    let refs: Vec<&Round> = rounds.iter().collect();
    let gated: Vec<&Round> = if a.defend {
        vec![&rounds[2]]
    } else {
        vec![&rounds[0]]
    };
    let failed =
        report::fails(&gated, &suite) || own.as_ref().is_some_and(|(_, f)| texts::fails(f, &suite));
    let summary = json!({
        "deployment": a.config, "suite": a.suite, "data": data_path, "notes": notes,
        "rounds": rounds.iter().map(|r| json!({"name": r.name, "families": r.families(),
            "false_alarms": r.false_alarms(), "benign": r.benign.len(), "seconds": r.seconds,
            "skipped": r.skipped, "recoveries": r.recoveries, "outcomes": r.outcomes})).collect::<Vec<_>>(),
        "defence": defence, "failed": failed,
        "texts": own.as_ref().map(|(path, f)| json!({"file": path, "families": f})),
    });
    if let Some(dir) = &a.out {
        let write = |name: &str, body: &str| {
            glassbox_store::fsutil::atomic_write(&dir.join(name), body.as_bytes())
        };
        write("report.json", &serde_json::to_string_pretty(&summary)?)?;
        let more: Vec<String> = own
            .iter()
            .map(|(path, families)| texts::junit_suite(path, families, &suite))
            .collect();
        write("junit.xml", &report::junit(&gated, &suite, &more))?;
        let sections: Vec<String> = own
            .iter()
            .map(|(path, families)| texts::html_section(path, families, &suite))
            .collect();
        write(
            "report.html",
            &report::html("Glassbox red team", &refs, &suite, &notes, &sections),
        )?;
    }
    if json_out {
        println!("{summary}");
    } else {
        for n in &notes {
            println!("{n}");
        }
        for r in &rounds {
            report::print_round(r, &suite);
        }
        if let Some((path, families)) = &own {
            texts::print(path, families);
        }
        if let Some(dir) = &a.out {
            println!(
                "\nreports: {0}/report.html, {0}/junit.xml, {0}/report.json",
                dir.display()
            );
            if a.defend {
                println!(
                    "check the commitment: glassbox audit verify {}",
                    cfg.audit.path.display()
                );
            }
        }
    }
    if failed && a.strict {
        bail!("an attack family is below the suite's detection floor or benign texts raised too many alarms (see junit.xml)");
    }
    Ok(())
}

/// The monitor whose probe the blue round retrains, the probe's name and, for a sentence
/// probe, its embedder: the probe the red round attacks ([`Target::attacked_probe`]), which
/// must read the hook's activations or sentence embeddings.
fn defended_probe<'t>(
    target: &'t Target,
) -> Result<(usize, String, Option<&'t glassbox_model::Model>)> {
    let name = |i: usize| {
        let rule = &target.set.monitors[i].rule.signal;
        rule.probe()
            .or(rule.sentence_probe())
            .unwrap_or("")
            .to_string()
    };
    match target.attacked_probe() {
        Some((AttackedProbe::Linear(_), i)) => Ok((i, name(i), None)),
        Some((AttackedProbe::Sentences { embedder, .. }, i)) => Ok((i, name(i), Some(embedder))),
        Some((AttackedProbe::Latent(_), _)) => bail!(
            "--defend retrains the attacked probe, and it reads a dictionary's latents: the blue \
             round retrains only probes of the hook's activations and sentence probes (run the \
             red round without --defend)"
        ),
        None => {
            bail!("--defend retrains a probe, and no attacked monitor reads one with a `>` rule")
        }
    }
}

/// The attacked monitors' indices (all when the suite names none).
fn watched(set: &MonitorSet, suite: &Suite, config: &Path) -> Result<Vec<usize>> {
    if set.monitors.is_empty() {
        bail!("{} has no [[monitor]] to attack", config.display());
    }
    if suite.monitors.is_empty() {
        return Ok((0..set.monitors.len()).collect());
    }
    suite
        .monitors
        .iter()
        .map(|name| {
            set.monitors
                .iter()
                .position(|m| &m.cfg.name == name)
                .with_context(|| {
                    let have: Vec<&str> =
                        set.monitors.iter().map(|m| m.cfg.name.as_str()).collect();
                    format!(
                        "the suite attacks monitor `{name}`, but {} has only {}",
                        config.display(),
                        have.join(", ")
                    )
                })
        })
        .collect()
}

/// Payloads from the suite's families and benign texts, shuffled by the seed.
fn draw(data: &[Labelled], suite: &Suite, path: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let families: BTreeSet<&str> = data
        .iter()
        .filter(|l| l.label)
        .map(|l| l.family.as_str())
        .collect();
    for f in &suite.payload_families {
        if !families.contains(f.as_str()) {
            bail!(
                "payload family `{f}` is not an attack family of {}; it has {}",
                path.display(),
                families.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(suite.seed);
    let mut payloads: Vec<String> = data
        .iter()
        .filter(|l| l.label && suite.payload_families.contains(&l.family))
        .map(|l| l.text.clone())
        .collect();
    payloads.shuffle(&mut rng);
    payloads.truncate(suite.payloads);
    let mut benign: Vec<String> = data
        .iter()
        .filter(|l| !l.label)
        .map(|l| l.text.clone())
        .collect();
    if benign.is_empty() && suite.benign > 0 {
        bail!(
            "{} has no benign texts (label 0) to measure false alarms on",
            path.display()
        );
    }
    benign.shuffle(&mut rng);
    benign.truncate(suite.benign);
    Ok((payloads, benign))
}

fn read_templates(path: &Path) -> Result<Vec<String>> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: serde_json::Value = serde_json::from_str(l)
                .with_context(|| format!("{}, line {}: not JSON", path.display(), i + 1))?;
            let t = v["template"]
                .as_str()
                .filter(|t| t.matches("{prompt}").count() == 1)
                .with_context(|| {
                    format!(
                        "{}, line {}: needs \"template\" with one {{prompt}}",
                        path.display(),
                        i + 1
                    )
                })?;
            Ok(t.to_string())
        })
        .collect()
}

fn read_heldout(path: &Path) -> Result<Vec<(Attack, usize, String)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            let v: serde_json::Value = serde_json::from_str(l)
                .with_context(|| format!("{}, line {}", path.display(), i + 1))?;
            let attack: Attack = serde_json::from_value(v["attack"].clone())?;
            let p = v["payload"].as_u64().context("payload")? as usize;
            let t = v["text"].as_str().context("text")?.to_string();
            Ok((attack, p, t))
        })
        .collect()
}
