//! Choosing the next token from a row of logits: greedy, or sampling with temperature, top-k,
//! top-p (nucleus), min-p and a repetition penalty, from a seeded generator so that the same
//! seed gives the same text. Log-probabilities are reported under the model's own distribution
//! (the raw logits), whatever the sampling settings.

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// How the next token is chosen. `temperature` 0 is greedy (the other settings then only
/// matter through the repetition penalty).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    pub temperature: f32,
    /// Keep the `k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p` (1: all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0: none).
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of tokens already in the text by this
    /// (1: none), as in CTRL and Hugging Face.
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self::greedy()
    }
}

impl Sampling {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }

    /// Checks every setting's range; the error names the setting.
    pub fn validate(&self) -> Result<()> {
        let check = |ok: bool, field: &str, range: &str, value: f32| {
            if ok {
                Ok(())
            } else {
                Err(ModelError::Input(format!(
                    "`{field}` must be {range}, got {value}"
                )))
            }
        };
        let t = self.temperature;
        check(
            t.is_finite() && (0.0..=100.0).contains(&t),
            "temperature",
            "between 0 and 100",
            t,
        )?;
        let p = self.top_p;
        check(
            p.is_finite() && p > 0.0 && p <= 1.0,
            "top_p",
            "in (0, 1]",
            p,
        )?;
        let m = self.min_p;
        check(
            m.is_finite() && (0.0..=1.0).contains(&m),
            "min_p",
            "in [0, 1]",
            m,
        )?;
        let r = self.repetition_penalty;
        check(
            r.is_finite() && r > 0.0 && r <= 10.0,
            "repetition_penalty",
            "in (0, 10]",
            r,
        )
    }
}

/// One chosen token with its log-probability and, if asked, the most likely alternatives.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Choice {
    pub id: u32,
    pub logprob: f32,
    /// `(id, logprob)`, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// A sampler with its own seeded generator.
pub struct Sampler {
    cfg: Sampling,
    rng: rand::rngs::StdRng,
}

impl Sampler {
    pub fn new(cfg: Sampling) -> Result<Self> {
        cfg.validate()?;
        let rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
        Ok(Self { cfg, rng })
    }

    /// Picks the next token from `logits` (one row, the vocabulary), given the tokens of the
    /// text so far (for the repetition penalty); `top_logprobs` alternatives are reported.
    pub fn choose(&mut self, logits: &[f32], history: &[u32], top_logprobs: usize) -> Choice {
        let logprobs = log_softmax(logits);
        let mut scores = logits.to_vec();
        if self.cfg.repetition_penalty != 1.0 {
            let mut seen = history.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for &t in &seen {
                if let Some(s) = scores.get_mut(t as usize) {
                    *s = if *s > 0.0 {
                        *s / self.cfg.repetition_penalty
                    } else {
                        *s * self.cfg.repetition_penalty
                    };
                }
            }
        }
        let id = if self.cfg.temperature == 0.0 {
            argmax(&scores)
        } else {
            self.sample(&scores)
        };
        let top = if top_logprobs > 0 {
            let mut order: Vec<u32> = (0..logits.len() as u32).collect();
            let k = top_logprobs.min(order.len());
            order.select_nth_unstable_by(k - 1, |&a, &b| {
                logprobs[b as usize].total_cmp(&logprobs[a as usize])
            });
            order.truncate(k);
            order.sort_by(|&a, &b| logprobs[b as usize].total_cmp(&logprobs[a as usize]));
            order
                .into_iter()
                .map(|t| (t, logprobs[t as usize]))
                .collect()
        } else {
            Vec::new()
        };
        Choice {
            id,
            logprob: logprobs
                .get(id as usize)
                .copied()
                .unwrap_or(f32::NEG_INFINITY),
            top,
        }
    }

    fn sample(&mut self, scores: &[f32]) -> u32 {
        // Candidates by descending score; the filters keep a prefix of this order.
        let mut order: Vec<u32> = (0..scores.len() as u32).collect();
        let keep = if self.cfg.top_k > 0 {
            self.cfg.top_k.min(order.len())
        } else {
            order.len()
        };
        if keep < order.len() {
            order.select_nth_unstable_by(keep - 1, |&a, &b| {
                scores[b as usize].total_cmp(&scores[a as usize])
            });
            order.truncate(keep);
        }
        order.sort_by(|&a, &b| scores[b as usize].total_cmp(&scores[a as usize]));
        let t = self.cfg.temperature;
        let max = scores[order[0] as usize];
        let mut probs: Vec<f32> = order
            .iter()
            .map(|&i| ((scores[i as usize] - max) / t).exp())
            .collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        // min-p: relative to the most likely candidate (probs[0]).
        let floor = self.cfg.min_p * probs[0];
        let mut n = probs.iter().take_while(|&&p| p >= floor).count().max(1);
        // top-p: the shortest prefix whose mass reaches top_p.
        if self.cfg.top_p < 1.0 {
            let mut mass = 0.0;
            let mut cut = n;
            for (i, p) in probs[..n].iter().enumerate() {
                mass += p;
                if mass >= self.cfg.top_p {
                    cut = i + 1;
                    break;
                }
            }
            n = cut;
        }
        let total: f32 = probs[..n].iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        for (i, p) in probs[..n].iter().enumerate() {
            r -= p;
            if r <= 0.0 {
                return order[i];
            }
        }
        order[n - 1]
    }
}

pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

pub fn log_softmax(v: &[f32]) -> Vec<f32> {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = v.iter().map(|x| f64::from(x - max).exp()).sum();
    let log_z = max + sum.ln() as f32;
    v.iter().map(|x| x - log_z).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(cfg: Sampling) -> Sampler {
        Sampler::new(cfg).unwrap()
    }

    const LOGITS: [f32; 5] = [2.0, 1.0, 0.5, -1.0, -3.0];

    #[test]
    fn greedy_picks_the_largest_logit_and_reports_logprobs() {
        let c = sampler(Sampling::greedy()).choose(&LOGITS, &[], 3);
        assert_eq!(c.id, 0);
        let lp = log_softmax(&LOGITS);
        assert!((c.logprob - lp[0]).abs() < 1e-6);
        assert_eq!(c.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![0, 1, 2]);
        let total: f32 = lp.iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-5);
    }

    #[test]
    fn sampling_follows_the_distribution_and_the_filters() {
        let draw = |cfg: Sampling, n: usize| {
            let mut s = sampler(cfg);
            let mut counts = [0usize; 5];
            for _ in 0..n {
                counts[s.choose(&LOGITS, &[], 0).id as usize] += 1;
            }
            counts
        };
        let t1 = Sampling {
            temperature: 1.0,
            seed: 3,
            ..Sampling::greedy()
        };
        let n = 20_000;
        let counts = draw(t1.clone(), n);
        let p: Vec<f32> = log_softmax(&LOGITS).iter().map(|l| l.exp()).collect();
        for i in 0..5 {
            let f = counts[i] as f32 / n as f32;
            assert!((f - p[i]).abs() < 0.015, "token {i}: {f} vs {}", p[i]);
        }
        // top-k 2 never leaves the two most likely; top-p 0.5 keeps only the first (p0 = 0.6).
        let c = draw(
            Sampling {
                top_k: 2,
                ..t1.clone()
            },
            2000,
        );
        assert!(c[2] + c[3] + c[4] == 0 && c[1] > 0, "{c:?}");
        let c = draw(
            Sampling {
                top_p: 0.5,
                ..t1.clone()
            },
            2000,
        );
        assert_eq!(c[0], 2000, "{c:?}");
        // min-p 0.3: p1/p0 = e^-1 ≈ 0.37 stays, p2/p0 ≈ 0.22 goes.
        let c = draw(
            Sampling {
                min_p: 0.3,
                ..t1.clone()
            },
            2000,
        );
        assert!(c[2] + c[3] + c[4] == 0 && c[1] > 0, "{c:?}");
        // The same seed, the same draws; another seed, others.
        assert_eq!(draw(t1.clone(), 50), draw(t1.clone(), 50));
        let mut a = sampler(t1.clone());
        let mut b = sampler(Sampling { seed: 4, ..t1 });
        let (x, y): (Vec<u32>, Vec<u32>) = (0..50)
            .map(|_| (a.choose(&LOGITS, &[], 0).id, b.choose(&LOGITS, &[], 0).id))
            .unzip();
        assert_ne!(x, y);
    }

    #[test]
    fn the_repetition_penalty_demotes_seen_tokens() {
        let cfg = Sampling {
            repetition_penalty: 4.0,
            ..Sampling::greedy()
        };
        // 2.0 / 4 = 0.5 < 1.0: token 1 wins once token 0 was seen.
        assert_eq!(sampler(cfg).choose(&LOGITS, &[0, 0], 0).id, 1);
    }

    #[test]
    fn out_of_range_settings_name_the_field() {
        for (cfg, field) in [
            (
                Sampling {
                    top_p: 2.0,
                    ..Sampling::greedy()
                },
                "top_p",
            ),
            (
                Sampling {
                    temperature: -1.0,
                    ..Sampling::greedy()
                },
                "temperature",
            ),
            (
                Sampling {
                    min_p: f32::NAN,
                    ..Sampling::greedy()
                },
                "min_p",
            ),
            (
                Sampling {
                    repetition_penalty: 0.0,
                    ..Sampling::greedy()
                },
                "repetition_penalty",
            ),
        ] {
            let err = Sampler::new(cfg).err().unwrap().to_string();
            assert!(err.contains(field), "{err}");
        }
    }
}
