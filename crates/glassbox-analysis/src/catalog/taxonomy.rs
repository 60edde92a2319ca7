//! The sensitivity taxonomy: concepts an organisation cares about (PII, credentials, …), each
//! defined by example texts and keywords, a lexicon of the words that carry it, and control
//! texts to compare against; read from TOML, errors naming the line and field.
//! `taxonomy/default.toml` ships with the project.

use regex::{Regex, RegexBuilder};
use serde::Deserialize;
use toml::Spanned;

use crate::error::{AnalysisError, Result};

/// The taxonomy shipped with Glassbox.
pub const DEFAULT: &str = include_str!("../../../../taxonomy/default.toml");

#[derive(Debug, Clone, PartialEq)]
pub struct Concept {
    pub name: String,
    pub description: String,
    /// Example texts, keywords included.
    pub examples: Vec<String>,
    /// Texts kept out of the flag decision, to measure the flags' precision on.
    pub heldout: Vec<String>,
    pub threshold: f32,
    /// The words that carry the concept (`None`: flags are not checked against the corpus).
    pub lexicon: Option<Lexicon>,
}

/// Where a concept is spoken of: case-insensitive patterns for its words ("password",
/// e-mail addresses), and patterns for senses that are not the concept ("OOM killer").
#[derive(Debug, Clone)]
pub struct Lexicon {
    words: Regex,
    unless: Option<Regex>,
}

impl PartialEq for Lexicon {
    fn eq(&self, other: &Self) -> bool {
        self.words.as_str() == other.words.as_str()
            && self.unless.as_ref().map(Regex::as_str) == other.unless.as_ref().map(Regex::as_str)
    }
}

impl Lexicon {
    /// One regex for a list of patterns; `Err` names the pattern that does not compile.
    fn compile(patterns: &[String]) -> std::result::Result<Option<Regex>, String> {
        for p in patterns {
            Regex::new(p).map_err(|e| format!("pattern `{p}` does not compile: {e}"))?;
        }
        if patterns.is_empty() {
            return Ok(None);
        }
        let alternation = patterns
            .iter()
            .map(|p| format!("(?:{p})"))
            .collect::<Vec<_>>()
            .join("|");
        RegexBuilder::new(&alternation)
            .case_insensitive(true)
            .build()
            .map(Some)
            .map_err(|e| e.to_string())
    }

    /// Whether the bytes `[start, end)` of `text` lie in one of the concept's words, in a
    /// sense the `unless` patterns do not exclude.
    pub fn covers(&self, text: &str, start: usize, end: usize) -> bool {
        let overlaps = |re: &Regex| {
            re.find_iter(text)
                .any(|m| m.start() < end.max(start + 1) && start < m.end())
        };
        overlaps(&self.words) && !self.unless.as_ref().is_some_and(overlaps)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Taxonomy {
    pub concepts: Vec<Concept>,
    pub controls: Vec<String>,
    pub heldout_controls: Vec<String>,
}

/// A labelled text for a concept (or `control`), from a data set such as the one
/// `glassbox setup --data redteam` builds (`concepts.jsonl`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ConceptText {
    pub text: String,
    pub concept: String,
    /// `train` (joins the examples) or `heldout` (measures the flags).
    pub split: String,
}

/// The concept name of control texts in a data set.
pub const CONTROL: &str = "control";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default = "default_threshold")]
    threshold: Spanned<f32>,
    control: Control,
    #[serde(default)]
    concept: Vec<RawConcept>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Control {
    examples: Spanned<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConcept {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    examples: Vec<String>,
    #[serde(default)]
    keywords: Vec<String>,
    lexicon: Option<Spanned<Vec<String>>>,
    unless: Option<Spanned<Vec<String>>>,
    threshold: Option<Spanned<f32>>,
}

fn default_threshold() -> Spanned<f32> {
    Spanned::new(0..0, 0.5)
}

impl Taxonomy {
    /// Parses a taxonomy; `origin` (a file name) prefixes error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let line = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let bad = |offset: usize, msg: String| {
            AnalysisError::Mismatch(format!("{origin}, line {}: {msg}", line(offset)))
        };
        let file: File = toml::from_str(text).map_err(|e| match e.span() {
            Some(s) => bad(s.start, e.message().to_string()),
            None => AnalysisError::Mismatch(format!("{origin}: {}", e.message())),
        })?;
        let check = |t: &Spanned<f32>, what: &str| {
            if t.get_ref().is_finite() && *t.get_ref() > 0.0 && *t.get_ref() <= 1.0 {
                Ok(*t.get_ref())
            } else {
                Err(bad(t.span().start, format!("{what} = {} must be in (0, 1]: the share of concept examples a feature fires on, minus that of controls", t.get_ref())))
            }
        };
        let default = check(&file.threshold, "threshold")?;
        if file.control.examples.get_ref().len() < 2 {
            return Err(bad(
                file.control.examples.span().start,
                "[control] examples needs at least 2 texts".into(),
            ));
        }
        let mut concepts = Vec::new();
        for c in file.concept {
            let name = c.name.get_ref().trim().to_string();
            if name.is_empty() {
                return Err(bad(c.name.span().start, "concept `name` is empty".into()));
            }
            if concepts.iter().any(|k: &Concept| k.name == name) {
                return Err(bad(
                    c.name.span().start,
                    format!("concept `{name}` is defined twice"),
                ));
            }
            let mut examples = c.examples;
            examples.extend(c.keywords);
            examples.retain(|e| !e.trim().is_empty());
            if examples.len() < 2 {
                return Err(bad(
                    c.name.span().start,
                    format!("concept `{name}` needs at least 2 `examples` or `keywords`"),
                ));
            }
            let threshold = match &c.threshold {
                Some(t) => check(t, &format!("concept `{name}` threshold"))?,
                None => default,
            };
            let compile = |list: &Option<Spanned<Vec<String>>>, field: &str| match list {
                Some(l) => Lexicon::compile(l.get_ref())
                    .map_err(|e| bad(l.span().start, format!("concept `{name}` {field}: {e}"))),
                None => Ok(None),
            };
            let words = compile(&c.lexicon, "lexicon")?;
            let unless = compile(&c.unless, "unless")?;
            if let (None, Some(_), Some(u)) = (&words, &unless, &c.unless) {
                return Err(bad(
                    u.span().start,
                    format!("concept `{name}` has `unless` patterns but no `lexicon` for them to qualify"),
                ));
            }
            concepts.push(Concept {
                name,
                description: c.description,
                examples,
                heldout: Vec::new(),
                threshold,
                lexicon: words.map(|words| Lexicon { words, unless }),
            });
        }
        Ok(Self {
            concepts,
            controls: file.control.examples.into_inner(),
            heldout_controls: Vec::new(),
        })
    }

    /// Adds labelled texts: the train split to the examples and controls, the held-out split
    /// aside. Texts of concepts this taxonomy lacks are left out; returns how many were added.
    pub fn with_data(mut self, rows: &[ConceptText]) -> (Self, usize) {
        let mut added = 0;
        for r in rows.iter().filter(|r| !r.text.trim().is_empty()) {
            let heldout = r.split == "heldout";
            let list = if r.concept == CONTROL {
                Some(if heldout {
                    &mut self.heldout_controls
                } else {
                    &mut self.controls
                })
            } else {
                self.concepts
                    .iter_mut()
                    .find(|c| c.name == r.concept)
                    .map(|c| {
                        if heldout {
                            &mut c.heldout
                        } else {
                            &mut c.examples
                        }
                    })
            };
            if let Some(list) = list {
                list.push(r.text.clone());
                added += 1;
            }
        }
        (self, added)
    }

    pub fn default_taxonomy() -> Self {
        Self::parse(DEFAULT, "taxonomy/default.toml").expect("the shipped taxonomy parses")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_taxonomy_parses() {
        let t = Taxonomy::default_taxonomy();
        let names: Vec<&str> = t.concepts.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "pii",
                "credentials",
                "violence",
                "self-harm",
                "profanity",
                "prompt-injection"
            ]
        );
        assert!(t.concepts.iter().all(|c| c.examples.len() >= 10));
        assert!(t.controls.len() >= 10);
    }

    /// The shipped lexicons read the concept's sense of a word, not the word: a threat, not the
    /// OOM killer; a person's e-mail address, not a message ID or a mailing list.
    #[test]
    fn the_shipped_lexicons_tell_senses_apart() {
        let t = Taxonomy::default_taxonomy();
        let lexicon = |name: &str| {
            t.concepts
                .iter()
                .find(|c| c.name == name)
                .and_then(|c| c.lexicon.clone())
                .unwrap()
        };
        // Whether the lexicon covers the first occurrence of `word` in `text`.
        let covers = |l: &Lexicon, text: &str, word: &str| {
            let at = text.find(word).unwrap();
            l.covers(text, at, at + word.len())
        };
        let violence = lexicon("violence");
        assert!(covers(
            &violence,
            "Support Mental Health.  Or I'll kill you.",
            "kill"
        ));
        assert!(covers(&violence, "end up with the atomic bomb.", "bomb"));
        assert!(!covers(
            &violence,
            "the OOM killer is invoked in the cgroup",
            "killer"
        ));
        assert!(!covers(&violence, "run kill -9 on it", "kill"));
        assert!(!covers(
            &violence,
            "a fork bomb is likely to exhaust the tasks",
            "bomb"
        ));
        assert!(!covers(&violence, "skill and troubleshooting", "kill"));
        assert!(!covers(&violence, "a book to kill time", "kill"));
        assert!(!covers(&violence, "# kill malloc task.", "kill"));
        let pii = lexicon("pii");
        assert!(covers(&pii, "Chris Moyer <cdmoyer@starmail.com>", "@"));
        assert!(covers(&pii, "Call me on 555-014-3210 tonight.", "014"));
        assert!(!covers(&pii, "<199707301952.MAA00756@wall.org>", "@"));
        assert!(!covers(&pii, "contact util-linux@vger.kernel.org", "@"));
        assert!(!covers(
            &pii,
            "Larry Wall in <6940@jpl-devvax.JPL.NASA.GOV>",
            "@"
        ));
        let credentials = lexicon("credentials");
        assert!(covers(
            &credentials,
            "Your password is pitifully obvious.",
            "password"
        ));
        assert!(!covers(&credentials, "the key of a dictionary", "key"));
        let profanity = lexicon("profanity");
        assert!(covers(
            &profanity,
            "Who the hell really compelled me?",
            "hell"
        ));
        assert!(!covers(&profanity, "print('hello')", "hell"));
        assert!(covers(
            &profanity,
            "no way in hell you'll out-insult me",
            "hell"
        ));
        assert!(!covers(
            &profanity,
            "Save yourself from the 'Gates' of hell",
            "hell"
        ));
        assert!(!covers(
            &profanity,
            "Heaven, at 525C is hotter than Hell",
            "Hell"
        ));
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let control = "[control]\nexamples = [\"a\", \"b\"]\n";
        let cases = [
            (format!("{control}[[concept]]\nname = \"x\"\nexamples = [\"a\", \"b\"]\nthreshold = 3.0\n"), "line 6", "threshold = 3"),
            (format!("{control}[[concept]]\nname = \"x\"\nexample = [\"a\"]\n"), "line 5", "example"),
            (format!("{control}[[concept]]\nname = \"x\"\nexamples = [\"a\"]\n"), "line 4", "at least 2"),
            (format!("{control}[[concept]]\nname = \"x\"\nexamples = [\"a\",\"b\"]\n[[concept]]\nname = \"x\"\nexamples = [\"a\",\"b\"]\n"), "line 7", "defined twice"),
            ("[control]\nexamples = [\"a\", 5]\n".to_string(), "line 2", ""),
            ("threshold = 0.5\n".to_string(), "", "control"),
            (format!("{control}[[concept]]\nname = \"x\"\nexamples = [\"a\", \"b\"]\nlexicon = ['(unclosed']\n"), "line 6", "pattern `(unclosed`"),
            (format!("{control}[[concept]]\nname = \"x\"\nexamples = [\"a\", \"b\"]\nunless = ['oom']\n"), "line 6", "no `lexicon`"),
        ];
        for (text, line, field) in cases {
            let err = Taxonomy::parse(&text, "t.toml").unwrap_err().to_string();
            assert!(
                err.starts_with("t.toml") && err.contains(line) && err.contains(field),
                "{err}\n---\n{text}"
            );
        }
    }
}
