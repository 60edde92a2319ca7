//! `redteam --texts FILE`: texts of the user's own sent through the deployment as the red
//! round's are (the served code path, the deployment's input preparation), and each family's
//! share flagged — false alarms on their own traffic, detection of their own attacks — with the
//! monitors that flagged them. What a deployment of several monitors (a pair, a probe and the
//! keyword filter) flags together, which no one probe's `probe score` can say.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use glassbox_dictionary::roc::rate_interval;
use serde::Serialize;

use super::round::Target;
use crate::commands::probe::Record;
use crate::report;

/// One family of the file: its texts and those the watched monitors flagged.
#[derive(Debug, Serialize)]
pub struct FamilyFlags {
    pub family: String,
    pub label: bool,
    pub texts: usize,
    pub flagged: usize,
    /// The flagged share's 95 % Wilson interval.
    pub flagged_ci95: (f64, f64),
    /// Per watched monitor, the texts it fired on (a text may fire several).
    pub by_monitor: BTreeMap<String, usize>,
}

/// Sends every text of `records` (read from `path`: JSON lines `{"text", "label"?,
/// "family"?}`; no label: benign traffic) through `target`; per (label, family), attacks first.
pub fn send_all(target: &Target, path: &Path, records: &[Record]) -> Result<Vec<FamilyFlags>> {
    let progress = report::progress(records.len() as u64, "your texts");
    let mut by: BTreeMap<(bool, String), FamilyFlags> = BTreeMap::new();
    for r in records {
        let t = r.sent();
        let sent = target
            .send(&t.text)
            .with_context(|| format!("{}: sending a text", path.display()))?;
        let e = by
            .entry((!t.label, t.family.clone()))
            .or_insert_with(|| FamilyFlags {
                family: t.family.clone(),
                label: t.label,
                texts: 0,
                flagged: 0,
                flagged_ci95: (0.0, 1.0),
                by_monitor: BTreeMap::new(),
            });
        e.texts += 1;
        e.flagged += usize::from(sent.detected);
        for m in sent.fired {
            *e.by_monitor.entry(m).or_default() += 1;
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    Ok(by
        .into_values()
        .map(|mut f| {
            f.flagged_ci95 = rate_interval(f.flagged, f.texts);
            f
        })
        .collect())
}

/// The table: per family its texts, the share flagged (detection for attacks, false alarms for
/// benign texts) and which monitors fired.
pub fn print(path: &Path, families: &[FamilyFlags]) {
    let total: usize = families.iter().map(|f| f.texts).sum();
    println!(
        "\nyour texts ({}): {total} sent through the deployment's monitors",
        path.display()
    );
    println!(
        "{:<32} {:>5} {:>6} {:>8} {:>15}  fired",
        "family", "label", "texts", "flagged", "95 % interval"
    );
    for f in families {
        let fired: Vec<String> = f
            .by_monitor
            .iter()
            .map(|(m, n)| format!("{m} {n}"))
            .collect();
        println!(
            "{:<32} {:>5} {:>6} {:>7.1}% {:>15}  {}",
            f.family,
            u8::from(f.label),
            f.texts,
            100.0 * f.flagged as f64 / f.texts.max(1) as f64,
            format!(
                "[{:.1}, {:.1}]",
                100.0 * f.flagged_ci95.0,
                100.0 * f.flagged_ci95.1
            ),
            if fired.is_empty() {
                "-".to_string()
            } else {
                fired.join(", ")
            }
        );
    }
}
