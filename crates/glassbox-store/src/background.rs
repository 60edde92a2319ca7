//! Benign background text: prose paragraphs drawn from a general corpus (the packaged Debian
//! docs and fortunes by default), for detectors to train on as negatives beside a labelled set's
//! benign families. A labelled set's benign side is narrow (templated questions, book
//! passages, a few dozen chat turns), so a detector learns "imperative" or "how-to" as the mark
//! of an attack and flags the first recipe it meets; plain prose from elsewhere says otherwise.
//! It is never scored or calibrated on, and it holds no attack text.
//!
//! The sample is deterministic: from each corpus file, the paragraphs with the smallest
//! SHA-256, so it does not depend on the order of the documents and grows by adding, not
//! replacing, as `per_file` grows.

use std::collections::BTreeSet;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::corpus::{files, Documents};
use crate::error::{Result, StoreError};
use crate::fsutil;

/// A paragraph counts as prose between these many words.
const WORDS: std::ops::RangeInclusive<usize> = 5..=120;
/// And at most this many bytes (a long paragraph is mostly a list or a table).
const MAX_BYTES: usize = 700;

/// The sampled paragraphs and what identifies them.
#[derive(Debug, Clone)]
pub struct Background {
    /// Per corpus file, its paragraphs in order of their SHA-256.
    pub texts: Vec<String>,
    /// SHA-256 over the texts, each followed by a newline.
    pub sha256: String,
}

/// Up to `per_file` prose paragraphs from each corpus file at `path` (a file or a directory of
/// them, as `harvest --corpus` reads).
pub fn sample(path: &Path, per_file: usize) -> Result<Background> {
    let mut texts = Vec::new();
    for file in files(path)? {
        let mut seen = BTreeSet::new();
        for doc in Documents::open(&file)? {
            for p in paragraphs(&doc?) {
                let hash: [u8; 32] = Sha256::digest(p.as_bytes()).into();
                seen.insert((hash, p));
                if seen.len() > per_file {
                    seen.pop_last();
                }
            }
        }
        if seen.is_empty() {
            return Err(StoreError::Corpus {
                path: file,
                msg: "no prose paragraph (5–120 words, no markup or code) to sample".into(),
            });
        }
        texts.extend(seen.into_iter().map(|(_, p)| p));
    }
    let mut h = Sha256::new();
    for t in &texts {
        h.update(t.as_bytes());
        h.update(b"\n");
    }
    Ok(Background {
        texts,
        sha256: fsutil::hex(&h.finalize()),
    })
}

/// The prose paragraphs of a document: blocks between blank lines, their lines joined by single
/// spaces (wrapped text read as the sentences it holds). A block is left out if it holds markup
/// (a reStructuredText directive, rule, table or literal marker, a shell or Python prompt), is
/// less than nine tenths letters, spaces and punctuation (code, tables of numbers), or is too
/// short to be a sentence or too long to be one paragraph. Indentation says nothing: fortunes
/// indent their verse and attributions.
pub fn paragraphs(doc: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut block: Vec<&str> = Vec::new();
    for line in doc.lines().chain(std::iter::once("")) {
        if !line.trim().is_empty() {
            block.push(line);
            continue;
        }
        if !block.is_empty() && !block.iter().any(|l| is_markup(l)) {
            let joined = block
                .iter()
                .flat_map(|l| l.split_whitespace())
                .collect::<Vec<_>>();
            let text = joined.join(" ");
            if WORDS.contains(&joined.len()) && text.len() <= MAX_BYTES && is_prose(&text) {
                out.push(text);
            }
        }
        block.clear();
    }
    out
}

/// Nine tenths or more of it letters, spaces and sentence punctuation.
fn is_prose(text: &str) -> bool {
    let plain = text
        .chars()
        .filter(|c| c.is_alphabetic() || c.is_whitespace() || ".,;:'\"!?-".contains(*c))
        .count();
    10 * plain >= 9 * text.chars().count()
}

fn is_markup(line: &str) -> bool {
    let t = line.trim();
    let rule = t.len() >= 3
        && t.chars().all(|c| "=-~^*#`+".contains(c) || c == ' ')
        && !t.contains(char::is_alphanumeric);
    rule || t.starts_with("..")
        || t.starts_with("::")
        || t.starts_with(">>>")
        || t.starts_with("$ ")
        || t.starts_with('|')
        || t.starts_with("+-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_keep_prose_and_drop_code_and_markup() {
        let doc = "Title\n=====\n\nThe general rule is that the namespace\nshould describe everything.\n\n\
                   .. note:: a directive\n\n    for x in range(10): print(x, y[x])\n\nToo short.\n\n\
                   >>> print(1)\n1\n\nRun the tests before you send a patch,\n\tand say what changed.\n";
        assert_eq!(
            paragraphs(doc),
            [
                "The general rule is that the namespace should describe everything.",
                "Run the tests before you send a patch, and say what changed."
            ]
        );
        assert!(paragraphs(&"word ".repeat(121)).is_empty());
    }

    #[test]
    fn the_sample_is_the_smallest_hashes_of_each_file_whatever_the_order() {
        let dir = tempfile::tempdir().unwrap();
        let paras: Vec<String> = (0..20)
            .map(|i| format!("Paragraph number {i} says something plain and benign."))
            .collect();
        std::fs::write(dir.path().join("a.txt"), paras.join("\n\n")).unwrap();
        let mut reversed = paras.clone();
        reversed.reverse();
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("a.txt"), reversed.join("\n\n")).unwrap();
        let a = sample(dir.path(), 5).unwrap();
        let b = sample(other.path(), 5).unwrap();
        assert_eq!(a.texts.len(), 5);
        assert_eq!((a.texts.clone(), a.sha256.clone()), (b.texts, b.sha256));
        let more = sample(dir.path(), 8).unwrap();
        assert!(a.texts.iter().all(|t| more.texts.contains(t)));
        std::fs::write(dir.path().join("b.txt"), "..\n\n    code\n").unwrap();
        let e = sample(dir.path(), 5).unwrap_err().to_string();
        assert!(
            e.contains("b.txt") && e.contains("no prose paragraph"),
            "{e}"
        );
    }
}
