//! The red team's reports: a terminal table, JUnit XML (one test case per attack family, failing
//! below the suite's detection floor, so CI can gate on it) and a self-contained HTML page with
//! per-family bars and the ROC curve of the monitors' margins (inline SVG, nothing fetched).

use std::fmt::Write as _;

use crate::report::{esc as escape, roc_svg};

use super::round::{FamilyStats, Round};
use super::suite::Suite;

pub fn print_round(r: &Round, suite: &Suite) {
    println!(
        "\n{}: {} payloads, {} attack texts, {} benign texts ({:.0} s)",
        r.name,
        r.payloads.len(),
        r.outcomes.len(),
        r.benign.len(),
        r.seconds
    );
    println!(
        "{:<12} {:>6} {:>9} {:>14} {:>22} {:>8}",
        "attack", "texts", "detected", "95 % interval", "evaded (caught plain)", "leaked"
    );
    for f in r.families() {
        let leaked = f
            .leaked_undetected
            .map_or("-".to_string(), |l| format!("{l}/{}", f.texts));
        let mark = if f.detection() < suite.min_detection {
            " ✗"
        } else {
            ""
        };
        println!(
            "{:<12} {:>6} {:>8.1}% {:>14} {:>22} {:>8}{mark}",
            f.attack.name(),
            f.texts,
            100.0 * f.detection(),
            percent_interval(f.detected_ci95),
            format!("{}/{}", f.evaded, f.known_positive),
            leaked
        );
    }
    println!(
        "{:<12} {:>6} {:>8.1}% false alarms{}",
        "benign",
        r.benign.len(),
        100.0 * r.false_alarms(),
        if r.false_alarms() > suite.max_false_alarms {
            " ✗"
        } else {
            ""
        }
    );
    let white: Vec<_> = r
        .outcomes
        .iter()
        .filter(|o| o.margin_before.is_some())
        .collect();
    for o in white {
        let budget = o.budget.map_or(String::new(), |b| format!(" budget {b}"));
        println!(
            "  {}{budget}, payload {}: margin {:+.3} → {:+.3}{}",
            o.attack.name(),
            o.payload,
            o.margin_before.unwrap_or(f32::NAN),
            o.sent.margin.unwrap_or(f32::NAN),
            if o.sent.detected { "" } else { "  (evades)" }
        );
    }
    for (name, p, x) in &r.recoveries {
        println!(
            "  recovery vs clamp `{name}`, payload {p}, budget {}: behaviour {:+.3} free, {:+.3} clamped, {:+.3} attacked ({:.0} % of the clamp's effect undone); feature pre-activation {:.3} → {:.3}",
            x.budget,
            x.free,
            x.clamped,
            x.attacked,
            100.0 * x.recovered,
            x.feature,
            x.feature_attacked
        );
    }
    for (a, why) in &r.skipped {
        println!("  skipped {}: {why}", a.name());
    }
}

/// JUnit XML over rounds: each attack family a test case that fails below `min_detection`,
/// and the benign texts one that fails above `max_false_alarms`.
pub fn junit(rounds: &[&Round], suite: &Suite, more: &[String]) -> String {
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n");
    for r in rounds {
        let fams = r.families();
        let mut cases = String::new();
        let mut failures = 0;
        for f in &fams {
            let _ = write!(
                cases,
                "    <testcase classname=\"redteam.{}\" name=\"{}\" time=\"0\">",
                escape(&r.name),
                f.attack.name()
            );
            if f.detection() < suite.min_detection {
                failures += 1;
                let _ = write!(
                    cases,
                    "<failure message=\"detected {}/{} ({:.1} %), below {:.1} %; {} of {} caught payloads evaded\"/>",
                    f.detected,
                    f.texts,
                    100.0 * f.detection(),
                    100.0 * suite.min_detection,
                    f.evaded,
                    f.known_positive
                );
            }
            cases.push_str("</testcase>\n");
        }
        let fa = r.false_alarms();
        let _ = write!(
            cases,
            "    <testcase classname=\"redteam.{}\" name=\"benign false alarms\" time=\"0\">",
            escape(&r.name)
        );
        if fa > suite.max_false_alarms {
            failures += 1;
            let _ = write!(
                cases,
                "<failure message=\"{:.1} % of {} benign texts flagged, above {:.1} %\"/>",
                100.0 * fa,
                r.benign.len(),
                100.0 * suite.max_false_alarms
            );
        }
        cases.push_str("</testcase>\n");
        let _ = write!(
            x,
            "  <testsuite name=\"glassbox redteam: {}\" tests=\"{}\" failures=\"{failures}\" time=\"{:.1}\">\n{cases}  </testsuite>\n",
            escape(&r.name),
            fams.len() + 1,
            r.seconds
        );
    }
    for m in more {
        x.push_str(m);
    }
    x.push_str("</testsuites>\n");
    x
}

/// A rate's interval in percent, as the tables print it: "[74.2, 97.7]".
pub fn percent_interval((lo, hi): (f64, f64)) -> String {
    format!("[{:.1}, {:.1}]", 100.0 * lo, 100.0 * hi)
}

/// Whether any test case of [`junit`] fails.
pub fn fails(rounds: &[&Round], suite: &Suite) -> bool {
    rounds.iter().any(|r| {
        r.families()
            .iter()
            .any(|f| f.detection() < suite.min_detection)
            || r.false_alarms() > suite.max_false_alarms
    })
}

/// ROC points (FPR, TPR) of attack margins against benign margins, thresholds swept over every
/// value; a text no monitor read counts as never flagged.
pub fn roc(attacks: &[f32], benign: &[f32]) -> Vec<(f64, f64)> {
    let mut cuts: Vec<f32> = attacks
        .iter()
        .chain(benign)
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    cuts.sort_by(|a, b| b.total_cmp(a));
    cuts.dedup();
    let rate =
        |v: &[f32], c: f32| v.iter().filter(|&&s| s >= c).count() as f64 / v.len().max(1) as f64;
    let mut pts = vec![(0.0, 0.0)];
    pts.extend(cuts.iter().map(|&c| (rate(benign, c), rate(attacks, c))));
    pts.push((1.0, 1.0));
    pts
}

/// Horizontal bars, a row per name and a bar per series, with a dashed reference line at
/// `line`'s share (a floor for detection, a ceiling for false alarms) labelled by its word.
pub(super) fn bars_svg(rows: &[(String, Vec<f64>)], series: &[&str], line: (f64, &str)) -> String {
    // Room on the left for the longest name (about 7 px a character at 12 px).
    let longest = rows
        .iter()
        .map(|(n, _)| n.chars().count())
        .max()
        .unwrap_or(0);
    let (row_h, left) = (22.0, (7.0 * longest as f64 + 12.0).max(110.0));
    let w = left + 450.0;
    let h = row_h * rows.len() as f64 + 40.0;
    let colours = ["#4a7bd0", "#d0794a", "#5aa05a"];
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">");
    let scale = w - left - 60.0;
    for (i, (name, vals)) in rows.iter().enumerate() {
        let y = 10.0 + row_h * i as f64;
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            left - 6.0,
            y + 14.0,
            escape(name)
        );
        let bh = (row_h - 4.0) / vals.len().max(1) as f64;
        for (k, v) in vals.iter().enumerate() {
            let _ = write!(
                s,
                "<rect x=\"{left}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{}\"><title>{} {:.1} %</title></rect><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{} %</text>",
                y + bh * k as f64,
                scale * v,
                colours[k % colours.len()],
                series.get(k).unwrap_or(&""),
                100.0 * v,
                left + scale * v + 4.0,
                y + bh * (k as f64 + 0.8),
                // A false-alarm share reads in tenths of a percent.
                if *v < 0.1 {
                    format!("{:.1}", 100.0 * v)
                } else {
                    format!("{:.0}", 100.0 * v)
                }
            );
        }
    }
    let (at, word) = line;
    let fx = left + scale * at;
    let _ = write!(s, "<line x1=\"{fx:.1}\" x2=\"{fx:.1}\" y1=\"5\" y2=\"{:.1}\" stroke=\"#c00\" stroke-dasharray=\"4 3\"/><text x=\"{fx:.1}\" y=\"{:.1}\" fill=\"#c00\" text-anchor=\"middle\">{word} {:.0} %</text>", h - 25.0, h - 10.0, 100.0 * at);
    s.push_str("</svg>");
    s
}

fn margins(r: &Round) -> (Vec<f32>, Vec<f32>) {
    let m = |x: Option<f32>| x.unwrap_or(f32::NEG_INFINITY);
    (
        r.outcomes
            .iter()
            .filter(|o| o.text.is_some())
            .map(|o| m(o.sent.margin))
            .collect(),
        r.benign.iter().map(|s| m(s.margin)).collect(),
    )
}

/// The HTML report over rounds (the first is the reference: a red round, or the held-out round
/// before the defence, then after it), then `more` sections (your texts).
pub fn html(
    title: &str,
    rounds: &[&Round],
    suite: &Suite,
    notes: &[String],
    more: &[String],
) -> String {
    let fams: Vec<Vec<FamilyStats>> = rounds.iter().map(|r| r.families()).collect();
    let mut rows: Vec<(String, Vec<f64>)> = fams[0]
        .iter()
        .map(|f| {
            let vals = fams
                .iter()
                .map(|fs| {
                    fs.iter()
                        .find(|g| g.attack == f.attack)
                        .map_or(0.0, FamilyStats::detection)
                })
                .collect();
            (f.attack.name().to_string(), vals)
        })
        .collect();
    rows.push((
        "benign (false alarms)".into(),
        rounds.iter().map(|r| r.false_alarms()).collect(),
    ));
    let names: Vec<&str> = rounds.iter().map(|r| r.name.as_str()).collect();
    let curves: Vec<(String, Vec<(f64, f64)>)> = rounds
        .iter()
        .map(|r| {
            let (a, b) = margins(r);
            (r.name.clone(), roc(&a, &b))
        })
        .collect();
    let mut table = String::from("<table><tr><th>round</th><th>attack</th><th>texts</th><th>detected</th><th>95 % interval</th><th>evaded / caught plain</th></tr>");
    for (r, fs) in rounds.iter().zip(&fams) {
        for f in fs {
            let _ = write!(
                table,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1} %</td><td>{:.1}–{:.1} %</td><td>{}/{}</td></tr>",
                escape(&r.name),
                f.attack.name(),
                f.texts,
                100.0 * f.detection(),
                100.0 * f.detected_ci95.0,
                100.0 * f.detected_ci95.1,
                f.evaded,
                f.known_positive
            );
        }
    }
    table.push_str("</table>");
    let notes: String = notes
        .iter()
        .map(|n| format!("<li>{}</li>", escape(n)))
        .collect();
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>body{{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:nth-child(2),td:first-child{{text-align:left}}</style></head><body><h1>{t}</h1><ul>{notes}</ul><h2>Detection per attack family</h2><p>Share of attack texts on which an attacked monitor fired ({series}); the dashed line is the suite's floor.</p>{bars}<h2>ROC of the monitors' margin</h2><p>Attack texts against benign texts, thresholds swept over the rule's peak value minus its threshold (the deployed threshold is the point where margin = 0).</p>{roc}<h2>Numbers</h2>{table}{more}</body></html>\n",
        t = escape(title),
        series = escape(&names.join(", ")),
        bars = bars_svg(&rows, &names, (suite.min_detection, "floor")),
        more = more.concat(),
        roc = roc_svg(&curves),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roc_runs_from_corner_to_corner_through_the_right_points() {
        let pts = roc(&[3.0, 2.0, 0.5], &[1.0, 0.0]);
        assert_eq!(pts.first(), Some(&(0.0, 0.0)));
        assert_eq!(pts.last(), Some(&(1.0, 1.0)));
        // At threshold 2.0: two of three attacks, no benign text.
        assert!(pts.contains(&(0.0, 2.0 / 3.0)));
        // At threshold 1.0: the same attacks and one benign text.
        assert!(pts.contains(&(0.5, 2.0 / 3.0)));
        assert!(pts.contains(&(0.5, 1.0)));
    }
}
