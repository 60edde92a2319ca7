//! The offline labeller: a short, honest label from where a feature fires, and a score of how
//! well that label predicts it — no network, deterministic.
//!
//! The label names the tokens the feature peaks on across its example contexts (the highest
//! and the uniform sample alike), most frequent first, and for decoders the token it most
//! promotes. The score is the share of example contexts whose peak token is one of the
//! labelled tokens: 1.0 for a single-token feature, low for a feature whose label is a guess.
//! A feature with no examples is labelled `(never fired)`.

use glassbox_store::catalog::Feature;

/// Peak tokens named in a label.
const NAMED: usize = 3;
/// A token that peaks in this share of contexts is named alone.
const DOMINANT: f32 = 0.6;

pub const METHOD: &str = "offline: peak tokens";

/// (label, score) for `f`, whose `top_tokens` are filled in.
pub fn label(f: &Feature, decoder: bool) -> (String, f32) {
    let total: u32 = f.top_tokens.iter().map(|t| t.1).sum();
    if total == 0 {
        return ("(never fired)".into(), 0.0);
    }
    let share =
        |n: usize| f.top_tokens.iter().take(n).map(|t| t.1).sum::<u32>() as f32 / total as f32;
    let n = if share(1) >= DOMINANT {
        1
    } else {
        NAMED.min(f.top_tokens.len())
    };
    let names: Vec<String> = f
        .top_tokens
        .iter()
        .take(n)
        .map(|(t, _)| format!("“{}”", t.trim()))
        .collect();
    let mut label = names.join(" · ");
    if decoder {
        if let Some((t, _)) = f.promoted.first() {
            label.push_str(&format!(" → “{}”", t.trim()));
        }
    }
    (label, share(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_a_dominant_token_alone_and_scores_by_share() {
        let mut f = Feature {
            top_tokens: vec![(" the".into(), 8), (" a".into(), 2)],
            ..Default::default()
        };
        assert_eq!(label(&f, false), ("“the”".into(), 0.8));
        f.top_tokens = vec![
            ("x".into(), 3),
            ("y".into(), 3),
            ("z".into(), 2),
            ("w".into(), 2),
        ];
        f.promoted = vec![(" cat".into(), 1.5)];
        assert_eq!(label(&f, true), ("“x” · “y” · “z” → “cat”".into(), 0.8));
        assert_eq!(label(&Feature::default(), false).0, "(never fired)");
    }
}
