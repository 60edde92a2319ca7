//! Presenting catalog features: terminal highlighting and sparklines, and the static HTML site.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use glassbox_store::catalog::{
    histogram_edge, readable_token, CatalogMeta, Example, ExampleKind, Feature,
};

/// The first and last non-empty bins of a histogram.
pub fn histogram_range(h: &[u64]) -> Option<(usize, usize)> {
    let lo = h.iter().position(|&c| c > 0)?;
    let hi = h.iter().rposition(|&c| c > 0)?;
    Some((lo, hi))
}

pub fn sparkline(h: &[u64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = h.iter().copied().max().unwrap_or(0).max(1) as f64;
    h.iter()
        .map(|&c| {
            if c == 0 {
                ' '
            } else {
                BARS[((c as f64 / max) * 7.0).round() as usize]
            }
        })
        .collect()
}

/// `n` examples evenly spaced over the activation range (they arrive highest first), so a
/// reader sees weak as well as strong activations.
pub fn spread(mut v: Vec<&Example>, n: usize) -> Vec<&Example> {
    v.sort_by(|a, b| b.activation.total_cmp(&a.activation));
    if v.len() <= n || n < 2 {
        v.truncate(n.max(1).min(v.len()));
        return v;
    }
    (0..n).map(|i| v[i * (v.len() - 1) / (n - 1)]).collect()
}

/// An example's window as its original text with the tokens where the feature is active
/// highlighted (their characters only, not the spacing before them): shades of red by
/// activation (relative to the feature's max) on a terminal, `⟦…⟧` around the peak otherwise.
pub fn highlight_terminal(e: &Example, max: f32, color: bool) -> String {
    let mut s = String::new();
    for (i, seg) in e.segments().iter().enumerate() {
        s.push_str(&seg.gap.replace('\n', "⏎"));
        let t = seg.token.replace('\n', "⏎");
        if color && seg.activation > 0.0 {
            // 256-colour backgrounds from pale to strong red.
            const SHADES: [u8; 5] = [224, 217, 210, 203, 196];
            let k = ((seg.activation / max.max(1e-9)) * 4.0)
                .round()
                .clamp(0.0, 4.0) as usize;
            let _ = write!(s, "\x1b[48;5;{}m\x1b[30m{t}\x1b[0m", SHADES[k]);
        } else if !color && i == e.focus {
            let _ = write!(s, "⟦{t}⟧");
        } else {
            s.push_str(&t);
        }
    }
    s.trim().to_string()
}

/// How to call this program in a printed next step so that it works verbatim: the path it was
/// started by (relative to the working directory when under it), or `glassbox` when it was
/// found on the PATH.
pub fn program() -> String {
    let argv0 = std::env::args().next().unwrap_or_default();
    if !argv0.contains('/') {
        return "glassbox".into();
    }
    let path = Path::new(&argv0);
    let shown = std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf());
    shell_word(&shown.to_string_lossy())
}

/// `s` as one shell word (single-quoted unless it is plain).
pub fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+,=:".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Column titles for a feature's vocabulary effects: what they are depends on the model.
pub fn vocab_titles(meta: &CatalogMeta) -> (&'static str, &'static str) {
    match meta.vocab_effect.as_str() {
        glassbox_store::catalog::VOCAB_EMBEDDING => (
            "nearest token embeddings (cosine)",
            "farthest token embeddings",
        ),
        glassbox_store::catalog::VOCAB_LOGIT => ("promotes (logit effect)", "suppresses"),
        _ => ("promotes", "suppresses"),
    }
}

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}\
table{border-collapse:collapse}td,th{padding:.2em .6em;border-bottom:1px solid #ddd;text-align:left}\
.ctx{font-family:ui-monospace,monospace;white-space:pre-wrap;margin:.2em 0}.num{text-align:right}\
.meta{color:#666;font-size:90%}.a0{background:#fde4dc}.a1{background:#fbcab9}.a2{background:#f8ae96}.a3{background:#f39172}.a4{background:#ec714d}.a5{background:#e4522b}";

/// Writes the site into a temporary directory beside `dir`, then swaps it into place.
pub fn write_site(dir: &Path, meta: &CatalogMeta, features: &[Feature]) -> Result<()> {
    glassbox_model::fsutil::replace_dir(dir, |tmp| {
        std::fs::create_dir(tmp.join("features"))?;
        std::fs::write(tmp.join("index.html"), index_page(meta, features))?;
        for f in features {
            std::fs::write(
                tmp.join("features").join(format!("{}.html", f.id)),
                feature_page(meta, f),
            )?;
        }
        Ok(())
    })
    .with_context(|| format!("writing the site {}", dir.display()))
}

fn header(meta: &CatalogMeta) -> String {
    format!(
        "<p class=meta>{} at <b>{}</b> · dictionary {} ({} features) · {} tokens of {}<br>\
         SHA-256: model {} · dictionary {} · corpus {}</p>",
        esc(&meta.model),
        esc(&meta.hook),
        esc(&meta.dict),
        meta.d_sae,
        meta.tokens,
        esc(&meta.corpus),
        &meta.model_sha256[..12.min(meta.model_sha256.len())],
        &meta.dict_sha256[..12.min(meta.dict_sha256.len())],
        &meta.corpus_sha256[..12.min(meta.corpus_sha256.len())],
    )
}

fn index_page(meta: &CatalogMeta, features: &[Feature]) -> String {
    let mut s = format!(
        "<!doctype html><meta charset=utf-8><title>Glassbox catalog</title><style>{STYLE}</style>\
         <h1>Feature catalog</h1>{}<p><input id=q placeholder='filter by label…' size=40 \
         oninput=\"for(const r of document.querySelectorAll('tbody tr'))r.hidden=!r.textContent.toLowerCase().includes(this.value.toLowerCase())\"></p>\
         <table><thead><tr><th>feature<th>label<th class=num>density %<th class=num>max<th>flags</thead><tbody>",
        header(meta)
    );
    for f in features.iter().filter(|f| f.count > 0) {
        let flags: Vec<&str> = f.flags.iter().map(|x| x.concept.as_str()).collect();
        let _ = write!(
            s,
            "<tr><td><a href='features/{0}.html'>{0}</a><td>{1}<td class=num>{2:.4}<td class=num>{3:.3}<td>{4}",
            f.id,
            esc(&f.label),
            100.0 * f.density(meta.tokens),
            f.max,
            esc(&flags.join(", "))
        );
    }
    s.push_str("</tbody></table>");
    s
}

/// A context with active tokens shaded in six steps of activation relative to the feature's
/// max (classes keep 16k pages small), the value on hover.
fn context_html(e: &Example, max: f32) -> String {
    let mut s = String::from("<div class=ctx>");
    for seg in e.segments() {
        s.push_str(&esc(seg.gap));
        let a = seg.activation;
        if a > 0.0 {
            let level = ((a / max.max(1e-9)) * 5.0).round().clamp(0.0, 5.0) as usize;
            let _ = write!(
                s,
                "<span class=a{level} title={a:.3}>{}</span>",
                esc(seg.token)
            );
        } else {
            s.push_str(&esc(seg.token));
        }
    }
    s.push_str("</div>");
    s
}

fn histogram_svg(h: &[u64]) -> String {
    let Some((lo, hi)) = histogram_range(h) else {
        return String::new();
    };
    let bins = &h[lo..=hi];
    let max = bins.iter().copied().max().unwrap_or(1).max(1) as f64;
    let (w, ht) = (14.0, 80.0);
    let mut s = format!(
        "<svg width={} height={} role=img aria-label='activation histogram'>",
        bins.len() as f64 * w,
        ht + 16.0
    );
    for (i, &c) in bins.iter().enumerate() {
        let bh = (c as f64 / max) * ht;
        let _ = write!(
            s,
            "<rect x={:.1} y={:.1} width={:.1} height={bh:.1} fill='#d9481c'><title>{:.3}–{:.3}: {c}</title></rect>",
            i as f64 * w,
            ht - bh,
            w - 2.0,
            histogram_edge(lo + i),
            histogram_edge(lo + i + 1)
        );
    }
    let _ = write!(
        s,
        "<text x=0 y={} font-size=11>{:.3}</text><text x={} y={} font-size=11 text-anchor=end>{:.3}</text></svg>",
        ht + 14.0,
        histogram_edge(lo),
        bins.len() as f64 * w,
        ht + 14.0,
        histogram_edge(hi + 1)
    );
    s
}

fn feature_page(meta: &CatalogMeta, f: &Feature) -> String {
    let mut s = format!(
        "<!doctype html><meta charset=utf-8><title>Feature {0}</title><style>{STYLE}</style>\
         <p><a href='../index.html'>← catalog</a></p><h1>Feature {0}: {1}</h1>{2}\
         <p>label score {3:.2} ({4}) · density {5:.4} % ({6} tokens, {7} contexts) · mean {8:.3} · max {9:.3}</p>",
        f.id,
        esc(&f.label),
        header(meta),
        f.label_score,
        esc(&f.label_method),
        100.0 * f.density(meta.tokens),
        f.count,
        f.contexts,
        f.mean(),
        f.max
    );
    s.push_str("<h2>Activations</h2>");
    s.push_str(&histogram_svg(&f.histogram));
    for flag in &f.flags {
        let _ = write!(
            s,
            "<p><b>flag: {}</b> (score {:.2}) {}</p>",
            esc(&flag.concept),
            flag.score,
            esc(&flag.evidence)
        );
    }
    let (up, down) = vocab_titles(meta);
    let _ = write!(
        s,
        "<h2>Vocabulary</h2><table><tr><th>{up}<th class=num><th>{down}<th class=num>"
    );
    for i in 0..f.promoted.len().max(f.suppressed.len()) {
        let cell = |v: &[(String, f32)]| {
            v.get(i).map_or("<td><td>".into(), |(t, x)| {
                format!("<td>{}<td class=num>{x:+.3}", esc(&readable_token(t)))
            })
        };
        let _ = write!(s, "<tr>{}{}", cell(&f.promoted), cell(&f.suppressed));
    }
    s.push_str("</table><h2>Neighbours (decoder cosine)</h2><p>");
    for (j, c) in &f.neighbours {
        let _ = write!(s, "<a href='{j}.html'>{j}</a> ({c:.2}) ");
    }
    s.push_str("</p>");
    for (kind, title) in [
        (ExampleKind::Top, "Top activations"),
        (
            ExampleKind::Sample,
            "A uniform sample of the contexts it fires in",
        ),
    ] {
        let _ = write!(s, "<h2>{title}</h2>");
        for e in f.examples.iter().filter(|e| e.kind == kind) {
            let _ = write!(
                s,
                "<p class=meta>{:.3}</p>{}",
                e.activation,
                context_html(e, f.max)
            );
        }
    }
    s
}

/// Progress over `len` items of `what`, on stderr (so `--json` output on stdout stays
/// whole): a bar on a terminal; when stderr is not one (logs, CI) a plain line every 10 % or
/// every 30 s, whichever comes first, 5 s apart at least, and one at the end.
pub fn progress(len: u64, what: &str) -> Progress {
    use std::io::IsTerminal;
    let plain = !std::io::stderr().is_terminal();
    let bar = if plain {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new(len);
        bar.set_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{{spinner}} {what} [{{bar:40}}] {{human_pos}}/{{human_len}} · {{per_sec}} · ETA {{eta}} {{msg}}"
            ))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    };
    let now = std::time::Instant::now();
    Progress {
        bar,
        plain: plain.then(|| {
            std::sync::Mutex::new(Plain {
                what: what.to_string(),
                start: now,
                last_line: now,
                first: None,
                printed: None,
                message: String::new(),
            })
        }),
        len,
        done: std::sync::atomic::AtomicU64::new(0),
    }
}

pub struct Progress {
    bar: indicatif::ProgressBar,
    plain: Option<std::sync::Mutex<Plain>>,
    len: u64,
    done: std::sync::atomic::AtomicU64,
}

/// State of the plain-line mode.
struct Plain {
    what: String,
    start: std::time::Instant,
    last_line: std::time::Instant,
    /// Position when progress started (a resumed run starts part-way).
    first: Option<u64>,
    /// Position of the last line written.
    printed: Option<u64>,
    message: String,
}

/// Seconds between plain progress lines at most.
const PLAIN_EVERY: f64 = 30.0;
/// Seconds between plain progress lines at least (but the last): a job of a few seconds
/// writes its last line, not ten.
const PLAIN_AT_LEAST: f64 = 5.0;

impl Progress {
    pub fn inc(&self, n: u64) {
        let before = self.done.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        self.bar.inc(n);
        self.report(before, before + n);
    }

    pub fn set_position(&self, pos: u64) {
        let before = self.done.swap(pos, std::sync::atomic::Ordering::Relaxed);
        self.bar.set_position(pos);
        self.report(before, pos);
    }

    /// A short status shown after the bar (and in the plain lines).
    pub fn set_message(&self, msg: impl Into<String>) {
        let msg = msg.into();
        if let Some(p) = &self.plain {
            if let Ok(mut p) = p.lock() {
                p.message = msg;
            }
        } else {
            self.bar.set_message(msg);
        }
    }

    fn report(&self, before: u64, now: u64) {
        let Some(p) = &self.plain else { return };
        let Ok(mut p) = p.lock() else { return };
        p.first.get_or_insert(before);
        let step = (self.len / 10).max(1);
        let since = p.last_line.elapsed().as_secs_f64();
        let due = (now / step != before / step && since >= PLAIN_AT_LEAST)
            || now == self.len
            || since >= PLAIN_EVERY;
        if due && now != before {
            self.line(&mut p, now);
        }
    }

    /// One plain progress line at position `now`.
    fn line(&self, p: &mut Plain, now: u64) {
        p.last_line = std::time::Instant::now();
        p.printed = Some(now);
        let first = p.first.unwrap_or(0);
        let secs = p.start.elapsed().as_secs_f64();
        let rate = now.saturating_sub(first) as f64 / secs.max(1e-9);
        let eta = if rate > 0.0 {
            format!("{:.0} s", self.len.saturating_sub(now) as f64 / rate)
        } else {
            "?".into()
        };
        eprintln!(
            "{}: {now}/{} ({:.0} %) · {:.0} s · {rate:.1}/s · ETA {eta}{}",
            p.what,
            self.len,
            100.0 * now as f64 / self.len.max(1) as f64,
            secs,
            if p.message.is_empty() {
                String::new()
            } else {
                format!(" · {}", p.message)
            }
        );
    }

    /// The last plain line, where the position moved since the line before (a job that ends
    /// short of `len`, or sooner than lines are due, still says where it got).
    fn last_line(&self) {
        let Some(p) = &self.plain else { return };
        let Ok(mut p) = p.lock() else { return };
        let now = self.done.load(std::sync::atomic::Ordering::Relaxed);
        if p.first.is_some_and(|f| now > f) && p.printed != Some(now) {
            self.line(&mut p, now);
        }
    }

    pub fn finish_and_clear(&self) {
        self.last_line();
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.last_line();
    }
}

/// ROC curves (FPR, TPR points) in one square plot, a colour and a legend entry each.
pub fn roc_svg(curves: &[(String, Vec<(f64, f64)>)]) -> String {
    let (size, pad) = (320.0, 40.0);
    let colours = ["#4a7bd0", "#d0794a", "#5aa05a"];
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">", size + 2.0 * pad + 120.0, size + 2.0 * pad);
    let _ = write!(s, "<rect x=\"{pad}\" y=\"{pad}\" width=\"{size}\" height=\"{size}\" fill=\"none\" stroke=\"#888\"/><line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{pad}\" stroke=\"#ccc\" stroke-dasharray=\"3 3\"/>", pad + size, pad + size);
    let _ = write!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">false-positive rate (benign)</text><text x=\"12\" y=\"{}\" transform=\"rotate(-90 12 {})\" text-anchor=\"middle\">true-positive rate (attacks)</text>", pad + size / 2.0, pad + size + 30.0, pad + size / 2.0, pad + size / 2.0);
    for (i, (name, pts)) in curves.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .map(|(f, t)| format!("{:.1},{:.1}", pad + size * f, pad + size * (1.0 - t)))
            .collect();
        let c = colours[i % colours.len()];
        let _ = write!(s, "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/><text x=\"{}\" y=\"{}\" fill=\"{c}\">{}</text>", path.join(" "), pad + size + 10.0, pad + 16.0 * (i as f64 + 1.0), esc(name));
    }
    s.push_str("</svg>");
    s
}
