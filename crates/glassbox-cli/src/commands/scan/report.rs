//! The scan's reports: a terminal summary, JSON, JUnit XML (each suite a test suite, each check
//! a test case), a Markdown summary sized for a pull-request comment, and a self-contained HTML
//! page with SVG plots (feature-density scatter and histograms, ROC curves), nothing fetched.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use super::checks::{clip, Check, DictFindings};
use super::Scan;
use crate::report::{esc, roc_svg};

pub fn print(s: &Scan) {
    println!(
        "\nglassbox scan: {} → {}   (spec {})",
        s.baseline.name, s.candidate.name, s.spec
    );
    println!("{:<24} {:<32} {:<6} value (limit)", "suite", "check", "");
    for c in &s.checks {
        println!(
            "{:<24} {:<32} {:<6} {} ({})",
            clip_to(&c.suite, 24),
            clip_to(&c.name, 32),
            if c.passed { "pass" } else { "FAIL" },
            c.value,
            c.limit
        );
        if !c.passed {
            for d in &c.detail {
                println!("{:>32}  ✗ {d}", "");
            }
        }
    }
    let f = &s.findings;
    if !f.layers.is_empty() {
        let top: Vec<String> = f
            .layers
            .iter()
            .take(5)
            .map(|(l, r)| format!("{} {r:.4}", layer_name(*l)))
            .collect();
        println!(
            "\nmost changed layers (largest ‖ΔW‖/‖W‖): {}",
            top.join(" · ")
        );
    }
    for d in &f.dictionaries {
        for (tensor, feats) in &d.responsible {
            let list: Vec<String> = feats
                .iter()
                .take(3)
                .map(|(j, cos, label)| format!("{j} (cos {cos:+.2}{})", quoted(label)))
                .collect();
            println!(
                "features along the edit of {tensor} ({}): {}",
                d.hook,
                list.join(", ")
            );
        }
        if let Some(top) = d.drift.first() {
            println!(
                "most changed feature of {}: {} ({:.4} % → {:.4} % of tokens{})",
                d.path,
                top.feature,
                100.0 * top.base_density,
                100.0 * top.cand_density,
                quoted(&top.label)
            );
        }
    }
    let failed: Vec<String> = s
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{}: {}", c.suite, c.name))
        .collect();
    println!(
        "\n{} — {} of {} checks failed{}  ({:.0} s; baseline {}, candidate {:.0} s)",
        if s.passed { "PASS" } else { "FAIL" },
        failed.len(),
        s.checks.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(": {}", failed.join("; "))
        },
        s.seconds,
        if s.baseline_cached {
            "from the cache".to_string()
        } else {
            format!("{:.0} s", s.baseline_seconds)
        },
        s.candidate_seconds
    );
}

fn clip_to(s: &str, n: usize) -> String {
    if s.chars().count() > n {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    } else {
        s.to_string()
    }
}

fn layer_name(l: Option<usize>) -> String {
    l.map_or("embeddings/final".into(), |l| format!("layer {l}"))
}

fn quoted(label: &str) -> String {
    if label.is_empty() {
        String::new()
    } else {
        format!(", {label}")
    }
}

/// Writes every report into `dir`, each file atomically, after the scan has finished (a scan
/// that fails to run leaves no report behind).
pub fn write_all(dir: &Path, s: &Scan) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let files = [
        ("report.json", serde_json::to_string_pretty(s)?),
        ("junit.xml", junit(s)),
        ("summary.md", markdown(s)),
        ("report.html", html(s)),
    ];
    for (name, body) in files {
        let p = dir.join(name);
        glassbox_model::fsutil::atomic_write(&p, body.as_bytes())
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

pub fn junit(s: &Scan) -> String {
    let mut suites: Vec<(&str, Vec<&Check>)> = Vec::new();
    for c in &s.checks {
        match suites.iter_mut().find(|(n, _)| *n == c.suite) {
            Some((_, v)) => v.push(c),
            None => suites.push((&c.suite, vec![c])),
        }
    }
    let mut x = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"glassbox scan {} → {}\" tests=\"{}\" failures=\"{}\">\n",
        esc(&s.baseline.name),
        esc(&s.candidate.name),
        s.checks.len(),
        s.checks.iter().filter(|c| !c.passed).count()
    );
    for (name, cases) in suites {
        let failures = cases.iter().filter(|c| !c.passed).count();
        let _ = writeln!(
            x,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\">",
            esc(name),
            cases.len()
        );
        for c in cases {
            let _ = write!(
                x,
                "    <testcase classname=\"scan.{}\" name=\"{}\">",
                esc(&c.suite),
                esc(&c.name)
            );
            if !c.passed {
                let _ = write!(
                    x,
                    "<failure message=\"{} (limit {})\">{}</failure>",
                    esc(&c.value),
                    esc(&c.limit),
                    esc(&c.detail.join("\n"))
                );
            }
            let _ = writeln!(
                x,
                "<system-out>{} (limit {})</system-out></testcase>",
                esc(&c.value),
                esc(&c.limit)
            );
        }
        x.push_str("  </testsuite>\n");
    }
    x.push_str("</testsuites>\n");
    x
}

/// Markdown for a pull-request comment: the verdict, the failed checks with their reasons,
/// then every check in a table.
pub fn markdown(s: &Scan) -> String {
    let failed: Vec<&Check> = s.checks.iter().filter(|c| !c.passed).collect();
    let mut m = format!(
        "### Glassbox scan: {} — `{}` → `{}`\n\n{} of {} checks passed. Baseline `{}…`, candidate `{}…`, spec `{}` (`{}…`).\n\n",
        if s.passed { "✅ pass" } else { "❌ fail" },
        s.baseline.name,
        s.candidate.name,
        s.checks.len() - failed.len(),
        s.checks.len(),
        &s.baseline.sha256[..12.min(s.baseline.sha256.len())],
        &s.candidate.sha256[..12.min(s.candidate.sha256.len())],
        s.spec,
        &s.spec_sha256[..12.min(s.spec_sha256.len())]
    );
    for c in &failed {
        let _ = writeln!(
            m,
            "- ❌ **{} · {}**: {} (limit {})",
            c.suite, c.name, c.value, c.limit
        );
        for d in c.detail.iter().take(3) {
            let _ = writeln!(m, "  - {}", d.replace('|', "\\|"));
        }
    }
    if let Some((l, r)) = s.findings.layers.first() {
        let _ = writeln!(m, "\nMost changed: {} (‖ΔW‖/‖W‖ {r:.4}).", layer_name(*l));
    }
    m.push_str("\n<details><summary>All checks</summary>\n\n| | suite | check | value | limit |\n|---|---|---|---|---|\n");
    for c in &s.checks {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} |",
            if c.passed { "✅" } else { "❌" },
            c.suite,
            c.name,
            c.value.replace('|', "\\|"),
            c.limit.replace('|', "\\|")
        );
    }
    m.push_str("\n</details>\n");
    m
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:72em;color:#222}\
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}\
.pass{color:#276b2b}.fail{color:#b00020;font-weight:600}.meta{color:#666;font-size:90%}code{font-size:90%}\
.plots{display:flex;flex-wrap:wrap;gap:2em}";

pub fn html(s: &Scan) -> String {
    let mut h = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>glassbox scan {} → {}</title><style>{STYLE}</style></head><body>",
        esc(&s.baseline.name),
        esc(&s.candidate.name)
    );
    let failed = s.checks.iter().filter(|c| !c.passed).count();
    let _ = write!(
        h,
        "<h1>Scan: <span class=\"{}\">{}</span></h1><p>{} of {} checks passed.</p>",
        if s.passed { "pass" } else { "fail" },
        if s.passed { "PASS" } else { "FAIL" },
        s.checks.len() - failed,
        s.checks.len()
    );
    let _ = write!(
        h,
        "<table class=\"meta\"><tr><th>baseline</th><td>{}</td><td><code>{}</code></td></tr><tr><th>candidate</th><td>{}</td><td><code>{}</code></td></tr><tr><th>spec</th><td>{}</td><td><code>{}</code></td></tr><tr><th>glassbox</th><td>{}</td><td>{:.0} s (baseline {}, candidate {:.0} s)</td></tr></table>",
        esc(&s.baseline.path.display().to_string()),
        s.baseline.sha256,
        esc(&s.candidate.path.display().to_string()),
        s.candidate.sha256,
        esc(&s.spec),
        s.spec_sha256,
        s.glassbox,
        s.seconds,
        if s.baseline_cached { "cached".to_string() } else { format!("{:.0} s", s.baseline_seconds) },
        s.candidate_seconds
    );
    h.push_str("<h2>Checks</h2><table><tr><th></th><th>suite</th><th>check</th><th>value</th><th>limit</th><th>why</th></tr>");
    for c in &s.checks {
        let _ = write!(
            h,
            "<tr><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if c.passed { "pass" } else { "fail" },
            if c.passed { "pass" } else { "FAIL" },
            esc(&c.suite),
            esc(&c.name),
            esc(&c.value),
            esc(&c.limit),
            if c.passed { String::new() } else { c.detail.iter().map(|d| esc(d)).collect::<Vec<_>>().join("<br>") }
        );
    }
    h.push_str("</table>");
    let f = &s.findings;
    if !f.tensors.is_empty() {
        h.push_str("<h2>Weights</h2><p>Most changed tensors (‖ΔW‖/‖W‖; σ₁²/‖ΔW‖² near 1 means the change is one direction: a planted rank-one edit).</p><table><tr><th>tensor</th><th>layer</th><th>relative change</th><th>concentration</th></tr>");
        for t in &f.tensors {
            let _ = write!(
                h,
                "<tr><td><code>{}</code></td><td>{}</td><td>{:.5}</td><td>{:.3}</td></tr>",
                esc(&t.name),
                t.layer.map_or("-".into(), |l| l.to_string()),
                t.relative,
                t.concentration
            );
        }
        h.push_str("</table>");
        h.push_str(&layers_svg(&f.layers));
    }
    for d in &f.dictionaries {
        dictionary_section(&mut h, d);
    }
    if !f.monitors.is_empty() {
        h.push_str("<h2>Monitors</h2><p>Each monitor's rule on the same labelled texts, on each model. Probes were trained on the baseline's activations; a drop may mean the probe no longer transfers.</p><table><tr><th>monitor</th><th>AUROC</th><th>detection at its threshold</th><th>benign firing</th></tr>");
        let mut curves = Vec::new();
        for m in &f.monitors {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{:.4} → {:.4}</td><td>{:.1} % → {:.1} %</td><td>{:.1} % → {:.1} %</td></tr>",
                esc(&m.name),
                m.base_auroc,
                m.cand_auroc,
                100.0 * m.base_detection,
                100.0 * m.cand_detection,
                100.0 * m.base_benign_firing,
                100.0 * m.cand_benign_firing
            );
            curves.push((format!("{} baseline", m.name), m.curves.0.clone()));
            curves.push((format!("{} candidate", m.name), m.curves.1.clone()));
        }
        h.push_str("</table>");
        h.push_str(&roc_svg(&curves));
    }
    if !f.canaries.is_empty() {
        h.push_str("<h2>Canaries</h2><table><tr><th></th><th>canary</th><th>baseline reply</th><th>candidate reply</th></tr>");
        for c in &f.canaries {
            let _ = write!(
                h,
                "<tr><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                if c.passed { "pass" } else { "fail" },
                if c.passed { "pass" } else { "FAIL" },
                esc(&c.name),
                esc(&clip(&c.base_reply)),
                esc(&clip(&c.cand_reply))
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</body></html>\n");
    h
}

fn dictionary_section(h: &mut String, d: &DictFindings) {
    let _ = write!(
        h,
        "<h2>Dictionary {} <span class=\"meta\">({})</span></h2>",
        esc(&d.path),
        esc(&d.hook)
    );
    for (tensor, feats) in &d.responsible {
        let _ = write!(
            h,
            "<p>Features along the direction the edit of <code>{}</code> writes:</p><table><tr><th>feature</th><th>cosine</th><th>label</th></tr>",
            esc(tensor)
        );
        for (j, cos, label) in feats {
            let _ = write!(
                h,
                "<tr><td>{j}</td><td>{cos:+.3}</td><td>{}</td></tr>",
                esc(label)
            );
        }
        h.push_str("</table>");
    }
    h.push_str("<p>Most changed features (density = fraction of reference tokens a feature fires on):</p><table><tr><th>feature</th><th>baseline</th><th>candidate</th><th>label</th><th>flags</th><th>vocabulary cosine</th><th>example</th></tr>");
    for x in &d.drift {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{:.4} %</td><td>{:.4} %</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            x.feature,
            100.0 * x.base_density,
            100.0 * x.cand_density,
            esc(&x.label),
            esc(&x.flags.join(", ")),
            x.vocab_cosine.map_or("-".into(), |c| format!("{c:.4}")),
            esc(&clip(&x.example))
        );
    }
    h.push_str("</table><div class=\"plots\">");
    h.push_str(&scatter_svg(&d.densities.0, &d.densities.1));
    h.push_str(&histograms_svg(&d.densities.0, &d.densities.1));
    h.push_str("</div>");
}

/// log₁₀ density, floored at 10⁻⁶ (never fired).
fn log_density(v: f32) -> f64 {
    f64::from(v.max(1e-6)).log10()
}

/// Every feature's density on the baseline (x) against the candidate (y), log-log.
fn scatter_svg(base: &[f32], cand: &[f32]) -> String {
    let (size, pad) = (320.0, 44.0);
    let pos = |v: f32| pad + size * (log_density(v) + 6.0) / 6.0;
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">", size + 2.0 * pad, size + 2.0 * pad);
    let _ = write!(s, "<rect x=\"{pad}\" y=\"{pad}\" width=\"{size}\" height=\"{size}\" fill=\"none\" stroke=\"#888\"/><line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{pad}\" stroke=\"#ccc\"/>", pad + size, pad + size);
    let _ = write!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">baseline density (10⁻⁶ … 1, log)</text><text x=\"12\" y=\"{}\" transform=\"rotate(-90 12 {})\" text-anchor=\"middle\">candidate density</text>", pad + size / 2.0, pad + size + 30.0, pad + size / 2.0, pad + size / 2.0);
    for (b, c) in base.iter().zip(cand) {
        if *b == 0.0 && *c == 0.0 {
            continue;
        }
        let _ = write!(
            s,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"1.3\" fill=\"#4a7bd0\" fill-opacity=\"0.4\"/>",
            pos(*b),
            2.0 * pad + size - pos(*c)
        );
    }
    s.push_str("</svg>");
    s
}

/// Histograms of log₁₀ density on both sides (24 bins over 10⁻⁶ … 1).
fn histograms_svg(base: &[f32], cand: &[f32]) -> String {
    const BINS: usize = 24;
    let hist = |v: &[f32]| {
        let mut h = [0usize; BINS];
        for &x in v.iter().filter(|&&x| x > 0.0) {
            let i = ((log_density(x) + 6.0) / 6.0 * BINS as f64) as usize;
            h[i.min(BINS - 1)] += 1;
        }
        h
    };
    let (hb, hc) = (hist(base), hist(cand));
    let max = hb.iter().chain(&hc).copied().max().unwrap_or(1).max(1) as f64;
    let (w, ht, pad) = (360.0, 200.0, 30.0);
    let bw = w / BINS as f64;
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">", w + 2.0 * pad, ht + 2.0 * pad + 20.0);
    for (k, (h, colour)) in [(&hb, "#4a7bd0"), (&hc, "#d0794a")].iter().enumerate() {
        for (i, &c) in h.iter().enumerate() {
            let bar = ht * c as f64 / max;
            let _ = write!(
                s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bar:.1}\" fill=\"{colour}\" fill-opacity=\"0.6\"><title>{c}</title></rect>",
                pad + bw * i as f64 + bw / 2.0 * k as f64,
                pad + ht - bar,
                bw / 2.0
            );
        }
    }
    let _ = write!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">log₁₀ density: <tspan fill=\"#4a7bd0\">baseline</tspan> · <tspan fill=\"#d0794a\">candidate</tspan> (features that fire)</text>", pad + w / 2.0, pad + ht + 24.0);
    s.push_str("</svg>");
    s
}

/// The largest relative change per layer, as bars.
fn layers_svg(layers: &[(Option<usize>, f64)]) -> String {
    let mut sorted: Vec<&(Option<usize>, f64)> = layers.iter().collect();
    sorted.sort_by_key(|(l, _)| l.map_or(usize::MAX, |l| l));
    let max = layers
        .iter()
        .map(|x| x.1)
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE);
    let (bw, ht, pad) = (14.0, 140.0, 30.0);
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"10\">", 2.0 * pad + bw * sorted.len() as f64, ht + 2.0 * pad + 14.0);
    for (i, (l, r)) in sorted.iter().enumerate() {
        let bar = ht * r / max;
        let _ = write!(
            s,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bar:.1}\" fill=\"#4a7bd0\"><title>{} {r:.5}</title></rect>",
            pad + bw * i as f64,
            pad + ht - bar,
            bw - 2.0,
            layer_name(*l)
        );
    }
    let _ = write!(s, "<text x=\"{pad}\" y=\"{}\">largest ‖ΔW‖/‖W‖ per layer (0 → last, then embeddings/final norm)</text>", pad + ht + 16.0);
    s.push_str("</svg>");
    s
}
