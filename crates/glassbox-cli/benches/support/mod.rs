//! What the server benches share: a started server, the texts they send, the 20 rules they
//! monitor with, percentiles and the server's memory.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Child;
use std::time::Duration;

pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `glassbox serve`'s "listening on URL" line (stdout piped).
pub fn listening(mut child: Child) -> Server {
    let mut line = String::new();
    if let Some(out) = child.stdout.as_mut() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let url = line.trim().trim_start_matches("listening on ").to_string();
    assert!(
        url.starts_with("http://"),
        "the server did not start: {line:?}"
    );
    Server { child, url }
}

/// Every quoted example and control of the shipped taxonomy: real sentences, 5-40 tokens.
pub fn texts() -> Vec<String> {
    include_str!("../../../../taxonomy/default.toml")
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('"') && l.len() > 20)
        .map(|l| l.trim_end_matches(',').trim_matches('"').to_string())
        .collect()
}

/// Dictionary `d` at `dict` and 20 log rules over its features: thresholds, window means and
/// counts.
pub fn rules(dict: &Path) -> String {
    let mut s = format!(
        "[[dictionary]]\nname = \"d\"\npath = \"{}\"\n",
        dict.display()
    );
    for i in 0..20u32 {
        let f = i * 797 % 16384;
        let when = match i % 3 {
            0 => format!("feature {f} > 2.0"),
            1 => format!("mean(feature {f}, 8) > 1.0"),
            _ => format!("count(feature {f} > 0.5, 16) >= 4"),
        };
        s += &format!("[[monitor]]\nname = \"r{i}\"\ndictionary = \"d\"\nwhen = \"{when}\"\naction = \"log\"\n");
    }
    s
}

/// The `q` quantile of `v` in milliseconds (NaN when empty).
pub fn pct(v: &mut [Duration], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort();
    v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3
}

/// A process's memory from /proc in MB: `VmRSS:` (now) or `VmHWM:` (peak).
pub fn memory_mb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(field)).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
