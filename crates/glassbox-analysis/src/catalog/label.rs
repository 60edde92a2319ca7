//! The offline labeller: a short, honest label from what a feature's example contexts share,
//! and a score of how well that label predicts it — no network, deterministic.
//!
//! It looks at every example context (the highest and the uniform sample alike) around the
//! token the feature peaks on, and names the most specific pattern most of them share:
//! - one peak token, widened to the phrase around it while the contexts still share it:
//!   `“:” in “:-)”`, `“password”`;
//! - otherwise a shared neighbour: `after “def” (“main”, “run”)`, `before “(” (…)`;
//! - otherwise a shared kind of token: `numbers (“2”, “10”)`, `line breaks`;
//! - otherwise the peak tokens, most frequent first.
//!
//! Decoders also get the token the feature most promotes (`→ “(”`). The score is the share of
//! example contexts the pattern matches: 1.0 for a feature that always peaks inside the same
//! phrase, low for a label that is a guess. A feature with no examples is `(never fired)`.

use std::collections::HashMap;

use glassbox_store::catalog::{Feature, Segment};

/// A pattern must hold in at least this share of the example contexts.
const SHARED: f32 = 0.6;
/// Widening a phrase may lose at most this share of the contexts it already matched.
const WIDEN_LOSS: f32 = 0.15;
/// Neighbours a phrase may reach on each side.
const REACH: usize = 3;
/// Peak tokens named as examples.
const NAMED: usize = 3;

pub const METHOD: &str = "offline: shared context";

/// One example context around its peak: the peak token and the stretches (gap + token) on
/// each side, nearest first.
struct Around {
    focus: String,
    left: Vec<String>,
    right: Vec<String>,
}

fn around(segments: &[Segment], focus: usize) -> Option<Around> {
    let peak = segments.get(focus)?;
    let part = |s: &Segment| format!("{}{}", s.gap, s.token);
    Some(Around {
        focus: peak.token.to_string(),
        left: segments[..focus]
            .iter()
            .rev()
            .take(REACH)
            .map(|s| format!("{}{}", s.gap, s.token))
            .collect(),
        right: segments[focus + 1..].iter().take(REACH).map(part).collect(),
    })
}

fn key(s: &str) -> String {
    s.trim().to_lowercase()
}

/// A token as a label quotes it: trimmed, line breaks visible.
fn quote(s: &str) -> String {
    let t = s.trim();
    if t.is_empty() {
        return if s.contains('\n') {
            "⏎".into()
        } else {
            "␣".into()
        };
    }
    format!("“{}”", t.replace('\n', "⏎"))
}

/// (label, score) for `f`.
pub fn label(f: &Feature, decoder: bool) -> (String, f32) {
    let views: Vec<Around> = f
        .examples
        .iter()
        .filter_map(|e| around(&e.segments(), e.focus))
        .collect();
    if views.is_empty() {
        return ("(never fired)".into(), 0.0);
    }
    let (mut label, score) = shared_phrase(&views)
        .or_else(|| shared_neighbour(&views))
        .or_else(|| shared_kind(&views))
        .unwrap_or_else(|| peak_tokens(&views));
    if decoder {
        if let Some((t, _)) = f.promoted.first() {
            label.push_str(&format!(" → {}", quote(t)));
        }
    }
    (label, score)
}

/// Counts of `keys`, most frequent first (ties by text, for determinism).
fn ranked<'a>(keys: impl Iterator<Item = String> + 'a) -> Vec<(String, usize)> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for k in keys {
        *counts.entry(k).or_default() += 1;
    }
    let mut v: Vec<_> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

/// The peak token most contexts share, widened left and right while they still share it.
fn shared_phrase(views: &[Around]) -> Option<(String, f32)> {
    let n = views.len() as f32;
    let (top, count) = ranked(views.iter().map(|v| key(&v.focus)))
        .into_iter()
        .next()?;
    if top.is_empty() || (count as f32) < SHARED * n {
        return None;
    }
    let mut members: Vec<&Around> = views.iter().filter(|v| key(&v.focus) == top).collect();
    let (mut left, mut right) = (0, 0);
    // Widen one side at a time, the side whose next neighbour more contexts share first.
    loop {
        let next = |side: &dyn Fn(&Around) -> Option<&String>| {
            ranked(
                members
                    .iter()
                    .filter_map(|v| side(v))
                    .map(|s| s.to_lowercase()),
            )
            .into_iter()
            .next()
        };
        let r = next(&|v: &Around| v.right.get(right));
        let l = next(&|v: &Around| v.left.get(left));
        let keep = |c: usize| c as f32 >= (1.0 - WIDEN_LOSS) * members.len() as f32;
        let pick = match (&r, &l) {
            (Some((_, rc)), Some((_, lc))) if keep(*rc) && rc >= lc => Some(true),
            (_, Some((_, lc))) if keep(*lc) => Some(false),
            (Some((_, rc)), _) if keep(*rc) => Some(true),
            _ => None,
        };
        let (is_right, text) = match pick {
            Some(true) => (true, r?.0),
            Some(false) => (false, l?.0),
            None => break,
        };
        // Content that is only spacing does not make a phrase.
        if text.trim().is_empty() {
            break;
        }
        let depth = if is_right { right } else { left };
        members.retain(|v| {
            let side = if is_right { &v.right } else { &v.left };
            side.get(depth).map(|s| s.to_lowercase()) == Some(text.clone())
        });
        if is_right {
            right += 1;
        } else {
            left += 1;
        }
        if left >= REACH && right >= REACH {
            break;
        }
    }
    let first = members.first()?;
    let score = members.len() as f32 / views.len() as f32;
    if left == 0 && right == 0 {
        return Some((quote(&first.focus), score));
    }
    let mut phrase: String = first.left[..left].iter().rev().cloned().collect();
    phrase.push_str(&first.focus);
    phrase.extend(first.right[..right].iter().cloned());
    Some((
        format!("{} in {}", quote(&first.focus), quote(&phrase)),
        score,
    ))
}

/// Peak tokens vary, but the token just before (or after) them is the same.
fn shared_neighbour(views: &[Around]) -> Option<(String, f32)> {
    let n = views.len() as f32;
    let best = |side: fn(&Around) -> Option<&String>| {
        ranked(views.iter().filter_map(side).map(|s| key(s)))
            .into_iter()
            .find(|(k, _)| !k.is_empty())
    };
    let before = best(|v| v.left.first());
    let after = best(|v| v.right.first());
    let (word, (k, count)) = match (before, after) {
        (Some(b), Some(a)) if a.1 > b.1 => ("before", a),
        (Some(b), _) => ("after", b),
        (None, Some(a)) => ("before", a),
        (None, None) => return None,
    };
    if (count as f32) < SHARED * n {
        return None;
    }
    let shared: Vec<&Around> = views
        .iter()
        .filter(|v| {
            let side = if word == "after" { &v.left } else { &v.right };
            side.first().map(|s| key(s)) == Some(k.clone())
        })
        .collect();
    let examples = examples_of(shared.iter().map(|v| v.focus.as_str()));
    Some((
        format!("{word} “{}” ({examples})", k.replace('\n', "⏎")),
        count as f32 / n,
    ))
}

/// What kind of token a peak is, when that is all its contexts share.
fn kind(t: &str) -> Option<&'static str> {
    let s = t.trim();
    if s.is_empty() {
        return Some(if t.contains('\n') {
            "line breaks"
        } else {
            "spacing"
        });
    }
    if s.chars()
        .all(|c| c.is_ascii_digit() || c == '.' || c == ',')
        && s.chars().any(|c| c.is_ascii_digit())
    {
        return Some("numbers");
    }
    if s.chars().all(|c| c.is_ascii_punctuation()) {
        return Some("punctuation");
    }
    if s.chars().next().is_some_and(char::is_uppercase)
        && s.chars().skip(1).all(|c| !c.is_uppercase())
        && s.chars().count() > 1
    {
        return Some("capitalised words");
    }
    if s.chars().count() > 1
        && s.chars().all(|c| c.is_uppercase() || !c.is_alphabetic())
        && s.chars().any(char::is_alphabetic)
    {
        return Some("upper-case words");
    }
    if !s.is_ascii() && s.chars().all(char::is_alphabetic) {
        return Some("non-ASCII words");
    }
    None
}

fn shared_kind(views: &[Around]) -> Option<(String, f32)> {
    let n = views.len() as f32;
    let kinds: Vec<Option<&str>> = views.iter().map(|v| kind(&v.focus)).collect();
    let (k, count) = ranked(kinds.iter().flatten().map(|k| k.to_string()))
        .into_iter()
        .next()?;
    if (count as f32) < SHARED * n {
        return None;
    }
    let of_kind = views
        .iter()
        .zip(&kinds)
        .filter(|(_, kk)| **kk == Some(k.as_str()))
        .map(|(v, _)| v.focus.as_str());
    let label = match k.as_str() {
        "line breaks" | "spacing" => k.clone(),
        _ => format!("{k} ({})", examples_of(of_kind)),
    };
    Some((label, count as f32 / n))
}

/// The peak tokens themselves, most frequent first; scored by the share they cover.
fn peak_tokens(views: &[Around]) -> (String, f32) {
    let top = ranked(views.iter().map(|v| key(&v.focus)));
    let covered: usize = top.iter().take(NAMED).map(|t| t.1).sum();
    let names: Vec<String> = top.iter().take(NAMED).map(|(t, _)| quote(t)).collect();
    (names.join(" · "), covered as f32 / views.len() as f32)
}

/// Up to [`NAMED`] distinct tokens, most frequent first, quoted and joined.
fn examples_of<'a>(tokens: impl Iterator<Item = &'a str>) -> String {
    ranked(tokens.map(key))
        .into_iter()
        .filter(|(k, _)| !k.is_empty())
        .take(NAMED)
        .map(|(k, _)| quote(&k))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use glassbox_store::catalog::{Example, ExampleKind};

    /// An example whose text is `parts` joined, peaking on part `focus`.
    fn example(parts: &[&str], focus: usize) -> Example {
        let mut text = String::new();
        let mut spans = Vec::new();
        for p in parts {
            let token = p.trim_start();
            text.push_str(&p[..p.len() - token.len()]);
            let at = text.len() as u32;
            text.push_str(token);
            spans.push((at, text.len() as u32));
        }
        Example {
            kind: ExampleKind::Top,
            activation: 1.0,
            context: 0,
            tokens: parts.iter().map(|p| p.to_string()).collect(),
            acts: vec![0.0; parts.len()],
            focus,
            text,
            spans,
        }
    }

    fn feature(examples: Vec<Example>) -> Feature {
        Feature {
            examples,
            ..Default::default()
        }
    }

    #[test]
    fn names_the_phrase_a_peak_token_sits_in() {
        let mut ex: Vec<Example> = (0..9)
            .map(|i| {
                let before = ["thanks", "nice", "ok"][i % 3];
                let after = [" bye", " see"][i % 2];
                example(&[before, " :", "-", ")", after], 1)
            })
            .collect();
        ex.push(example(&["time", " :", " 10"], 1));
        let (l, s) = label(&feature(ex), false);
        assert_eq!(l, "“:” in “:-)”");
        assert!((s - 0.9).abs() < 1e-6, "{s}");
    }

    #[test]
    fn a_single_token_feature_is_named_alone() {
        let ex = (0..5)
            .map(|i| {
                example(
                    &[
                        ["my", "your", "the"][i % 3],
                        " Password",
                        [" is", " was"][i % 2],
                    ],
                    1,
                )
            })
            .collect();
        assert_eq!(label(&feature(ex), false), ("“Password”".into(), 1.0));
    }

    #[test]
    fn shared_neighbours_kinds_and_a_fallback() {
        let ex = ["main", "run", "parse", "main"]
            .iter()
            .map(|w| example(&["def", &format!(" {w}"), "("], 1))
            .collect();
        // The peak varies, "def" before it and "(" after it are shared; "(" is named first
        // only if more contexts share it (here both do: "after" wins the tie).
        assert_eq!(
            label(&feature(ex), false).0,
            "after “def” (“main”, “parse”, “run”)"
        );
        let ex = ["3", "17", "2024", "5"]
            .iter()
            .enumerate()
            .map(|(i, n)| example(&[["page", "in", "of", "to"][i], &format!(" {n}")], 1))
            .collect();
        assert_eq!(label(&feature(ex), false).0, "numbers (“17”, “2024”, “3”)");
        let ex = ["cat", "dog", "sun", "cat"]
            .iter()
            .enumerate()
            .map(|(i, w)| example(&[["a", "b", "c", "d"][i], &format!(" {w}")], 1))
            .collect();
        let (l, s) = label(&feature(ex), false);
        assert_eq!(l, "“cat” · “dog” · “sun”");
        assert_eq!(s, 1.0);
        assert_eq!(label(&Feature::default(), false).0, "(never fired)");
    }

    #[test]
    fn decoders_name_the_promoted_token() {
        let mut f = feature(
            ["x", "y", "z"]
                .iter()
                .map(|v| example(&[v, " ="], 1))
                .collect(),
        );
        f.promoted = vec![(" 0".into(), 1.5)];
        assert_eq!(label(&f, true).0, "“=” → “0”");
    }
}
