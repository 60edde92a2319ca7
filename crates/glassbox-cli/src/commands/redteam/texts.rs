//! `redteam --texts FILE`: texts of the user's own sent through the deployment as the red
//! round's are (the served code path, the deployment's input preparation), and each family's
//! share flagged — false alarms on their own traffic, detection of their own attacks — with the
//! monitors that flagged them. What a deployment of several monitors (a pair, a probe and the
//! keyword filter) flags together, which no one probe's `probe score` can say.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use glassbox_dictionary::roc::rate_interval;
use serde::Serialize;

use super::round::Target;
use super::suite::Suite;
use crate::commands::probe::Record;
use crate::report::{self, esc};

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
    // Per (benign?, family): attacks sort first. The interval is set once all are counted.
    let mut by: BTreeMap<(bool, String), Tally> = BTreeMap::new();
    for r in records {
        let t = r.sent();
        let sent = target
            .send(&t.text)
            .with_context(|| format!("{}: sending a text", path.display()))?;
        let e = by.entry((!t.label, t.family)).or_default();
        e.texts += 1;
        e.flagged += usize::from(sent.detected);
        for m in sent.fired {
            *e.by_monitor.entry(m).or_default() += 1;
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    Ok(by
        .into_iter()
        .map(|((benign, family), t)| FamilyFlags {
            family,
            label: !benign,
            texts: t.texts,
            flagged: t.flagged,
            flagged_ci95: rate_interval(t.flagged, t.texts),
            by_monitor: t.by_monitor,
        })
        .collect())
}

/// A family's counts while its texts are sent.
#[derive(Default)]
struct Tally {
    texts: usize,
    flagged: usize,
    by_monitor: BTreeMap<String, usize>,
}

impl FamilyFlags {
    fn rate(&self) -> f64 {
        self.flagged as f64 / self.texts.max(1) as f64
    }

    /// Why the family fails the suite's gate: an attack family detected below `min_detection`,
    /// a benign one flagged above `max_false_alarms`.
    fn failure(&self, suite: &Suite) -> Option<String> {
        let (rate, what) = (100.0 * self.rate(), (self.flagged, self.texts));
        if self.label && self.rate() < suite.min_detection {
            Some(format!(
                "detected {}/{} ({rate:.1} %), below {:.1} %",
                what.0,
                what.1,
                100.0 * suite.min_detection
            ))
        } else if !self.label && self.rate() > suite.max_false_alarms {
            Some(format!(
                "flagged {}/{} ({rate:.1} %), above {:.1} %",
                what.0,
                what.1,
                100.0 * suite.max_false_alarms
            ))
        } else {
            None
        }
    }
}

/// Whether a family fails the suite's gate (see [`junit_suite`]).
pub fn fails(families: &[FamilyFlags], suite: &Suite) -> bool {
    families.iter().any(|f| f.failure(suite).is_some())
}

/// The JUnit test suite of your texts: a case per family, an attack family failing below the
/// suite's `min_detection`, a benign one above its `max_false_alarms` — so CI can gate a
/// deployment on its false alarms on your own traffic.
pub fn junit_suite(path: &Path, families: &[FamilyFlags], suite: &Suite) -> String {
    let mut cases = String::new();
    for f in families {
        let _ = write!(
            cases,
            "    <testcase classname=\"redteam.texts\" name=\"{}{}\" time=\"0\">",
            esc(&f.family),
            if f.label { "" } else { " (benign)" }
        );
        if let Some(why) = f.failure(suite) {
            let _ = write!(cases, "<failure message=\"{}\"/>", esc(&why));
        }
        cases.push_str("</testcase>\n");
    }
    let failures = families
        .iter()
        .filter(|f| f.failure(suite).is_some())
        .count();
    format!(
        "  <testsuite name=\"glassbox redteam: your texts ({})\" tests=\"{}\" failures=\"{failures}\" time=\"0\">\n{cases}  </testsuite>\n",
        esc(&path.display().to_string()),
        families.len()
    )
}

/// The report.html section of your texts: bars of each family's share flagged against the
/// suite's gate (attack families against its floor, benign ones against its false-alarm
/// ceiling), and the numbers.
pub fn html_section(path: &Path, families: &[FamilyFlags], suite: &Suite) -> String {
    let bars = |label: bool, line: (f64, &str)| {
        let rows: Vec<(String, Vec<f64>)> = families
            .iter()
            .filter(|f| f.label == label)
            .map(|f| (f.family.clone(), vec![f.rate()]))
            .collect();
        if rows.is_empty() {
            String::new()
        } else {
            super::report::bars_svg(&rows, &["flagged"], line)
        }
    };
    let mut table = String::from("<table><tr><th>family</th><th>label</th><th>texts</th><th>flagged</th><th>95 % interval</th><th>fired</th></tr>");
    for f in families {
        let fired: Vec<String> = f
            .by_monitor
            .iter()
            .map(|(m, n)| format!("{} {n}", esc(m)))
            .collect();
        let _ = write!(
            table,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1} %</td><td>{}</td><td>{}</td></tr>",
            esc(&f.family),
            u8::from(f.label),
            f.texts,
            100.0 * f.rate(),
            super::report::percent_interval(f.flagged_ci95),
            fired.join(", ")
        );
    }
    table.push_str("</table>");
    format!(
        "<h2>Your texts: {}</h2><p>Each family of the file sent through the deployment's monitors as the round's texts are. Attack families: share detected, against the suite's floor.</p>{}<p>Benign families: share flagged (false alarms), against the suite's ceiling.</p>{}{table}",
        esc(&path.display().to_string()),
        bars(true, (suite.min_detection, "floor")),
        bars(false, (suite.max_false_alarms, "ceiling")),
    )
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
            100.0 * f.rate(),
            super::report::percent_interval(f.flagged_ci95),
            if fired.is_empty() {
                "-".to_string()
            } else {
                fired.join(", ")
            }
        );
    }
}
