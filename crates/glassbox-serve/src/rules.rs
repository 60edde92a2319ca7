//! The rule language of monitors, evaluated once per token as the model reads it.
//!
//! ```text
//! rule    := signal CMP number ("and" gate)*
//! signal  := "feature" ID                  a dictionary feature's activation on this token
//!          | "anomaly"                     the dictionary's relative reconstruction error ‖x−x̂‖²/‖x‖²
//!          | "probe" NAME                  a linear probe's probability on this token
//!          | "logit" NAME                  the same probe's logit w·x + b on this token
//!          | "keywords"                    how many of the keyword filter's 15 jailbreak and
//!                                          injection patterns the input has matched by this
//!                                          token (the prompt's; generated tokens keep its count;
//!                                          of a chat, its messages without the system turns,
//!                                          counted at the prompt's last token)
//!          | "lookalikes"                  how many characters of the caller's text are
//!                                          lookalikes: homoglyphs in Latin words, fullwidth or
//!                                          mathematical letters, invisible characters inside
//!                                          words (what `[input] fold_lookalikes` folds; counted
//!                                          whether or not it is on), on every token
//!          | "encoded"                     how many words of the caller's text are written in
//!                                          base64, ROT13 or leetspeak, on every token
//!          | "sentences" NAME              a sentence probe's logit of the caller's text: the
//!                                          highest over its whole and each of its sentences
//!                                          read alone, on every token (of a chat, its messages
//!                                          without the system turns)
//!          | "mean" "(" signal "," N ")"   the mean of a signal over the last N tokens, once
//!                                          N are in (an input shorter than N: its whole mean,
//!                                          decided at its end)
//!          | "mean" "(" signal ")"         its mean over every token of the input so far, decided
//!                                          at the end of the prompt and at each new token
//!          | "count" "(" signal CMP number "," N ")"   how many of the last N tokens satisfy it
//! gate    := text CMP number               a condition on the caller's text that must hold
//!                                          too, on the same token
//! text    := "keywords" | "lookalikes" | "encoded" | "sentences" NAME
//! CMP     := ">" | ">=" | "<" | "<="
//! ```
//!
//! `feature 1234 > 3.0` fires on any token where feature 1234 exceeds 3; `mean(feature 7, 8) > 1`
//! when its mean over the last 8 tokens does; `count(feature 7 > 0, 16) >= 3` when it fired on at
//! least 3 of the last 16 tokens; `mean(logit injection) > 3.2 and keywords > 0` when the whole
//! input's mean logit passes 3.2 and the input has a keyword hit (one member of a pair of
//! monitors held to half a false-alarm budget each: `glassbox probe families --out-pair`).
//! Probe signals skip the model's special tokens (`[CLS]`, `<|im_start|>`, …), as `glassbox
//! probe score` does, so a calibrated probe reads the same tokens served as evaluated:
//! `glassbox probe eval --calibrate` prints the rule.

use std::collections::VecDeque;
use std::fmt;

/// What a rule reads on each token.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    Feature(u32),
    Anomaly,
    Probe(String),
    Logit(String),
    /// Patterns of the keyword filter the input has matched so far.
    Keywords,
    /// Lookalike characters in the caller's text (see `crate::fold`).
    Lookalikes,
    /// Words of the caller's text in base64, ROT13 or leetspeak (see `crate::encoded`).
    Encoded,
    /// A sentence probe's logit of the caller's text (see `glassbox_dictionary::sentence_probe`).
    Sentences(String),
    /// The mean over the last N tokens, or over every token so far (`None`).
    Mean(Box<Signal>, Option<usize>),
    Count(Box<Signal>, Cmp, f32, usize),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cmp {
    Gt,
    Ge,
    Lt,
    Le,
}

impl Cmp {
    pub fn holds(self, a: f32, b: f32) -> bool {
        match self {
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
        }
    }
}

impl fmt::Display for Cmp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
            Cmp::Lt => "<",
            Cmp::Le => "<=",
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub signal: Signal,
    pub cmp: Cmp,
    pub threshold: f32,
    /// Conditions on the caller's text that must hold too (`… and keywords > 0`).
    pub gates: Vec<Gate>,
}

/// A condition on the caller's text joined to a rule by `and`: its value is the same whoever
/// reads it (a count of the text so far, or a number of the whole text), so it needs no state.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    pub signal: Signal,
    pub cmp: Cmp,
    pub threshold: f32,
}

/// Most `and` conditions a rule may have.
const MAX_GATES: usize = 4;

impl Signal {
    /// The primitive signal under any aggregation.
    pub fn base(&self) -> &Signal {
        match self {
            Signal::Mean(s, _) | Signal::Count(s, ..) => s.base(),
            s => s,
        }
    }

    /// A mean over the whole input so far (decided once per forward pass, see `monitor`).
    pub fn is_running_mean(&self) -> bool {
        matches!(self, Signal::Mean(_, None))
    }

    /// The probe the signal reads, if it reads one.
    pub fn probe(&self) -> Option<&str> {
        match self.base() {
            Signal::Probe(p) | Signal::Logit(p) => Some(p),
            _ => None,
        }
    }

    /// Whether the signal reads the caller's text rather than an activation.
    pub fn reads_text(&self) -> bool {
        matches!(
            self.base(),
            Signal::Keywords | Signal::Lookalikes | Signal::Encoded | Signal::Sentences(_)
        )
    }

    /// The sentence probe the signal reads, if it reads one.
    pub fn sentence_probe(&self) -> Option<&str> {
        match self.base() {
            Signal::Sentences(p) => Some(p),
            _ => None,
        }
    }

    /// The dictionary feature the signal reads, if it reads one.
    pub fn feature(&self) -> Option<u32> {
        match self.base() {
            Signal::Feature(f) => Some(*f),
            _ => None,
        }
    }
}

impl Rule {
    pub fn parse(text: &str) -> Result<Rule, String> {
        let mut p = Parser {
            toks: lex(text)?,
            at: 0,
        };
        let signal = p.signal(0)?;
        let cmp = p.cmp()?;
        let threshold = p.number()?;
        let mut gates = Vec::new();
        while let Some(t) = p.toks.get(p.at) {
            if t != "and" {
                return Err(format!("unexpected `{t}` after the threshold"));
            }
            p.at += 1;
            if gates.len() == MAX_GATES {
                return Err(format!(
                    "a rule joins at most {MAX_GATES} conditions with `and`"
                ));
            }
            gates.push(p.gate()?);
        }
        Ok(Rule {
            signal,
            cmp,
            threshold,
            gates,
        })
    }

    /// Every signal the rule reads: its own, then its gates'.
    pub fn signals(&self) -> impl Iterator<Item = &Signal> {
        std::iter::once(&self.signal).chain(self.gates.iter().map(|g| &g.signal))
    }

    /// Whether every gate holds, given the value of gate i's signal.
    pub fn gates_hold(&self, value: impl Fn(usize, &Signal) -> f32) -> bool {
        self.gates
            .iter()
            .enumerate()
            .all(|(i, g)| g.cmp.holds(value(i, &g.signal), g.threshold))
    }
}

fn lex(text: &str) -> Result<Vec<String>, String> {
    let mut toks = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if "(),".contains(c) {
            toks.push(c.to_string());
            chars.next();
        } else if "<>=".contains(c) {
            let mut op = String::new();
            while let Some(&c) = chars.peek().filter(|c| "<>=".contains(**c)) {
                op.push(c);
                chars.next();
            }
            toks.push(op);
        } else if c.is_alphanumeric() || "._-+".contains(c) {
            let mut word = String::new();
            while let Some(&c) = chars
                .peek()
                .filter(|c| c.is_alphanumeric() || "._-+".contains(**c))
            {
                word.push(c);
                chars.next();
            }
            toks.push(word);
        } else {
            return Err(format!("unexpected character `{c}`"));
        }
    }
    Ok(toks)
}

/// Deepest nesting of `mean(…)` / `count(…)` a rule may have.
const MAX_NESTING: usize = 8;

struct Parser {
    toks: Vec<String>,
    at: usize,
}

impl Parser {
    fn next(&mut self, what: &str) -> Result<String, String> {
        let t = self
            .toks
            .get(self.at)
            .cloned()
            .ok_or_else(|| format!("the rule ends where {what} was expected"))?;
        self.at += 1;
        Ok(t)
    }

    fn expect(&mut self, tok: &str) -> Result<(), String> {
        let t = self.next(&format!("`{tok}`"))?;
        if t != tok {
            return Err(format!("expected `{tok}`, found `{t}`"));
        }
        Ok(())
    }

    fn signal(&mut self, depth: usize) -> Result<Signal, String> {
        // Each nesting is a stack frame: unbounded, a rule of 40 kB of `mean(` overflowed a
        // server thread's stack (found by fuzzing).
        if depth > MAX_NESTING {
            return Err(format!("aggregations nest more than {MAX_NESTING} deep"));
        }
        let word = self.next(
            "a signal (feature N, anomaly, probe NAME, logit NAME, keywords, lookalikes, encoded, sentences NAME, mean(…), count(…))",
        )?;
        match word.as_str() {
            "feature" => {
                let id = self.next("a feature id")?;
                id.parse()
                    .map(Signal::Feature)
                    .map_err(|_| format!("`{id}` is not a feature id"))
            }
            "anomaly" => Ok(Signal::Anomaly),
            "keywords" => Ok(Signal::Keywords),
            "lookalikes" => Ok(Signal::Lookalikes),
            "encoded" => Ok(Signal::Encoded),
            "probe" => Ok(Signal::Probe(self.next("a probe name")?)),
            "logit" => Ok(Signal::Logit(self.next("a probe name")?)),
            "sentences" => Ok(Signal::Sentences(self.next("a sentence probe's name")?)),
            "mean" => {
                self.expect("(")?;
                let s = self.signal(depth + 1)?;
                let n = match self.next("`,` or `)`")?.as_str() {
                    ")" => return Ok(Signal::Mean(Box::new(s), None)),
                    "," => self.window()?,
                    t => return Err(format!("expected `,` or `)`, found `{t}`")),
                };
                self.expect(")")?;
                Ok(Signal::Mean(Box::new(s), Some(n)))
            }
            "count" => {
                self.expect("(")?;
                let s = self.signal(depth + 1)?;
                let cmp = self.cmp()?;
                let v = self.number()?;
                self.expect(",")?;
                let n = self.window()?;
                self.expect(")")?;
                Ok(Signal::Count(Box::new(s), cmp, v, n))
            }
            w => Err(format!(
                "unknown signal `{w}`; use feature N, anomaly, probe NAME, logit NAME, keywords, lookalikes, encoded, sentences NAME, mean(…) or count(…)"
            )),
        }
    }

    /// A condition after `and`: a signal of the caller's text, unaggregated.
    fn gate(&mut self) -> Result<Gate, String> {
        let at = self.at;
        let signal = self.signal(0)?;
        if !signal.reads_text() || signal.base() != &signal {
            let words = self.toks[at..self.at]
                .iter()
                .fold(String::new(), |mut text, t| {
                    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric());
                    if word(text.chars().last()) && word(t.chars().next()) {
                        text.push(' ');
                    }
                    text + t
                });
            return Err(format!(
                "`and` joins a condition on the caller's text (keywords, lookalikes, encoded, sentences NAME), not `{words}`; put the condition that reads activations first"
            ));
        }
        Ok(Gate {
            signal,
            cmp: self.cmp()?,
            threshold: self.number()?,
        })
    }

    fn cmp(&mut self) -> Result<Cmp, String> {
        let t = self.next("a comparison (>, >=, <, <=)")?;
        Ok(match t.as_str() {
            ">" => Cmp::Gt,
            ">=" => Cmp::Ge,
            "<" => Cmp::Lt,
            "<=" => Cmp::Le,
            _ => return Err(format!("expected a comparison (>, >=, <, <=), found `{t}`")),
        })
    }

    fn number(&mut self) -> Result<f32, String> {
        let t = self.next("a number")?;
        t.parse::<f32>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| format!("`{t}` is not a number"))
    }

    fn window(&mut self) -> Result<usize, String> {
        let t = self.next("a window length")?;
        t.parse::<usize>()
            .ok()
            .filter(|n| (1..=4096).contains(n))
            .ok_or_else(|| format!("`{t}` is not a window of 1 to 4096 tokens"))
    }
}

/// One rule's memory over a sequence: the recent values its aggregations need.
#[derive(Debug, Clone, Default)]
pub struct RuleState {
    recent: VecDeque<f32>,
    /// Sum and count of every value so far (a mean over the whole input).
    total: f64,
    seen: u64,
}

impl Rule {
    /// Feeds this token's base-signal value; returns the rule's value and whether it holds.
    /// A mean over the last N tokens holds only once N tokens are in: before that its value is
    /// the mean of fewer, one token's spike at the first. The monitor decides an input shorter
    /// than the window on its whole mean at its last token (`settled`, `holds`), as `probe
    /// score` reads a text shorter than its window.
    pub fn step(&self, state: &mut RuleState, base: f32) -> (f32, bool) {
        let value = match &self.signal {
            Signal::Mean(_, Some(n)) => {
                push(&mut state.recent, base, *n);
                state.recent.iter().sum::<f32>() / state.recent.len() as f32
            }
            Signal::Mean(_, None) => {
                state.total += f64::from(base);
                state.seen += 1;
                (state.total / state.seen as f64) as f32
            }
            Signal::Count(_, cmp, v, n) => {
                push(&mut state.recent, f32::from(cmp.holds(base, *v)), *n);
                state.recent.iter().sum::<f32>()
            }
            _ => base,
        };
        (value, self.settled(state) && self.holds(value))
    }

    /// Whether `value` passes the threshold.
    pub fn holds(&self, value: f32) -> bool {
        self.cmp.holds(value, self.threshold)
    }

    /// Whether the rule's value is its signal's (a window holds N tokens), not a partial mean.
    /// A partial count only grows as its window fills, so it settles `>`/`>=` early but not
    /// `<`/`<=`.
    pub fn settled(&self, state: &RuleState) -> bool {
        match self.signal {
            Signal::Mean(_, Some(n)) => state.recent.len() >= n,
            Signal::Count(.., n) if matches!(self.cmp, Cmp::Lt | Cmp::Le) => {
                state.recent.len() >= n
            }
            _ => true,
        }
    }
}

fn push(q: &mut VecDeque<f32>, v: f32, n: usize) {
    if q.len() == n {
        q.pop_front();
    }
    q.push_back(v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let r = Rule::parse("feature 1234 > 3.0").unwrap();
        assert_eq!(r.signal, Signal::Feature(1234));
        assert_eq!((r.cmp, r.threshold), (Cmp::Gt, 3.0));
        let r = Rule::parse("mean(feature 7, 8) >= 1").unwrap();
        assert_eq!(
            r.signal,
            Signal::Mean(Box::new(Signal::Feature(7)), Some(8))
        );
        let r = Rule::parse("mean(logit inj) > 2.5").unwrap();
        assert_eq!(
            r.signal,
            Signal::Mean(Box::new(Signal::Logit("inj".into())), None)
        );
        assert_eq!(r.signal.probe(), Some("inj"));
        let r = Rule::parse("count(feature 7 > 0, 16) >= 3").unwrap();
        assert_eq!(
            r.signal,
            Signal::Count(Box::new(Signal::Feature(7)), Cmp::Gt, 0.0, 16)
        );
        assert_eq!(r.signal.base(), &Signal::Feature(7));
        assert_eq!(
            Rule::parse("anomaly > 0.5").unwrap().signal,
            Signal::Anomaly
        );
        assert_eq!(
            Rule::parse("probe toxic<0.1").unwrap().signal,
            Signal::Probe("toxic".into())
        );
        assert_eq!(
            Rule::parse("keywords >= 1").unwrap().signal,
            Signal::Keywords
        );
        let r = Rule::parse("lookalikes > 2").unwrap();
        assert_eq!(r.signal, Signal::Lookalikes);
        assert!(r.signal.reads_text() && Signal::Keywords.reads_text());
        assert_eq!(
            Rule::parse("mean(encoded, 4) > 1").unwrap().signal.base(),
            &Signal::Encoded
        );
        assert!(!Signal::Anomaly.reads_text());
        let r = Rule::parse("sentences injection > 2.5").unwrap();
        assert_eq!(r.signal, Signal::Sentences("injection".into()));
        assert!(r.signal.reads_text() && r.signal.probe().is_none());
        assert_eq!(r.signal.sentence_probe(), Some("injection"));
        assert!(Rule::parse("sentences > 1").is_err());
        let r =
            Rule::parse("mean(logit pooled) > 3.2 and keywords > 0 and sentences s <= 1").unwrap();
        assert_eq!(
            r.gates,
            [
                Gate {
                    signal: Signal::Keywords,
                    cmp: Cmp::Gt,
                    threshold: 0.0
                },
                Gate {
                    signal: Signal::Sentences("s".into()),
                    cmp: Cmp::Le,
                    threshold: 1.0
                }
            ]
        );
        let read: Vec<&Signal> = r.signals().collect();
        assert_eq!(read[0].probe(), Some("pooled"));
        assert_eq!(read[2].sentence_probe(), Some("s"));
        assert!(Rule::parse("keywords > 0").unwrap().gates.is_empty());
    }

    #[test]
    fn gates_must_all_hold() {
        let r = Rule::parse("mean(logit p) > 3 and keywords > 0 and lookalikes < 2").unwrap();
        let value = |keywords: f32, lookalikes: f32| {
            move |_: usize, s: &Signal| match s {
                Signal::Keywords => keywords,
                Signal::Lookalikes => lookalikes,
                _ => f32::NAN,
            }
        };
        assert!(r.gates_hold(value(1.0, 0.0)));
        assert!(!r.gates_hold(value(0.0, 0.0)));
        assert!(!r.gates_hold(value(1.0, 2.0)));
        // The rule's own value is stepped and judged as before; gates only add conditions.
        let mut s = RuleState::default();
        assert_eq!(r.step(&mut s, 4.0), (4.0, true));
    }

    #[test]
    fn errors_say_what_was_expected() {
        for (text, want) in [
            ("feature x > 1", "`x` is not a feature id"),
            ("feature 1 >", "a number was expected"),
            ("feature 1 = 2", "expected a comparison"),
            ("neuron 3 > 1", "unknown signal `neuron`"),
            ("mean(feature 1, 0) > 1", "not a window"),
            ("mean(feature 1; 2) > 1", "unexpected character"),
            ("mean(feature 1 2) > 1", "expected `,` or `)`"),
            ("feature 1 > 2 extra", "unexpected `extra`"),
            ("feature 1 > 2; drop", "unexpected character `;`"),
            ("feature 1 > nan", "not a number"),
            ("feature 1 > 2 or keywords > 0", "unexpected `or`"),
            ("keywords > 0 and", "a signal (feature N"),
            ("keywords > 0 and probe p > 1", "not `probe p`"),
            ("probe p > 1 and mean(keywords, 4) > 1", "not `mean(keywords,4)`"),
            ("probe p > 1 and keywords", "a comparison"),
            (
                "keywords > 0 and encoded > 1 and encoded > 1 and encoded > 1 and encoded > 1 and encoded > 1",
                "at most 4 conditions",
            ),
        ] {
            let err = Rule::parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
        // Deep nesting is refused before it can exhaust a thread's stack; shallow is fine.
        let deep = format!(
            "{}feature 1{} > 1",
            "mean(".repeat(10_000),
            ")".repeat(10_000)
        );
        assert!(Rule::parse(&deep)
            .unwrap_err()
            .contains("nest more than 8 deep"));
        let shallow = format!("{}feature 1{} > 1", "mean(".repeat(3), ")".repeat(3));
        assert!(Rule::parse(&shallow).is_ok());
    }

    #[test]
    fn windows_aggregate_over_the_last_tokens() {
        let mean = Rule::parse("mean(feature 1, 2) > 1.5").unwrap();
        let mut s = RuleState::default();
        let got: Vec<bool> = [1.0, 3.0, 0.0, 4.0]
            .iter()
            .map(|&v| mean.step(&mut s, v).1)
            .collect();
        assert_eq!(got, [false, true, false, true]);
        // One token's spike is no mean of two: a window holds once it is full.
        let mut s = RuleState::default();
        assert_eq!(mean.step(&mut s, 9.0), (9.0, false));
        assert!(!mean.settled(&s) && mean.holds(9.0));
        assert_eq!(mean.step(&mut s, 0.0), (4.5, true));
        let count = Rule::parse("count(feature 1 > 0, 3) >= 2").unwrap();
        let mut s = RuleState::default();
        let got: Vec<bool> = [1.0, 0.0, 2.0, 5.0, 0.0, 0.0]
            .iter()
            .map(|&v| count.step(&mut s, v).1)
            .collect();
        assert_eq!(got, [false, false, true, true, true, false]);
        // Too few hits is a claim about a whole window: a partial one is no evidence of it.
        let few = Rule::parse("count(feature 1 > 0, 3) < 1").unwrap();
        let mut s = RuleState::default();
        let got: Vec<bool> = [0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0]
            .iter()
            .map(|&v| few.step(&mut s, v).1)
            .collect();
        assert_eq!(got, [false, false, true, false, false, false, true]);
        let all = Rule::parse("mean(logit p) > 0").unwrap();
        let mut s = RuleState::default();
        let got: Vec<f32> = [2.0, -4.0, 5.0]
            .iter()
            .map(|&v| all.step(&mut s, v).0)
            .collect();
        assert_eq!(got, [2.0, -1.0, 1.0]);
    }
}
