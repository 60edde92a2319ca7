//! How well a detector's scores separate positives from negatives, in the terms a deployment
//! needs: AUROC (with a bootstrap confidence interval), the true-positive rate at a fixed
//! false-positive rate, and the threshold that keeps false positives at or below a target.
//!
//! Scores are "higher = more likely positive"; a text is flagged when its score is strictly
//! above the threshold, so a threshold equal to the largest negative score flags no negative.

use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::error::{DictError, Result};

/// Scores split by label, each sorted descending.
#[derive(Debug, Clone)]
pub struct Scored {
    pub positives: Vec<f32>,
    pub negatives: Vec<f32>,
}

impl Scored {
    /// Checks there is at least one text of each label and no NaN score.
    pub fn new(scores: &[f32], labels: &[bool]) -> Result<Self> {
        if scores.len() != labels.len() {
            return Err(DictError::Config(format!(
                "{} scores for {} labels",
                scores.len(),
                labels.len()
            )));
        }
        if let Some(i) = scores.iter().position(|s| s.is_nan()) {
            return Err(DictError::Config(format!("score {i} is NaN")));
        }
        let mut positives: Vec<f32> = (0..scores.len())
            .filter(|&i| labels[i])
            .map(|i| scores[i])
            .collect();
        let mut negatives: Vec<f32> = (0..scores.len())
            .filter(|&i| !labels[i])
            .map(|i| scores[i])
            .collect();
        if positives.is_empty() || negatives.is_empty() {
            return Err(DictError::Config(format!(
                "evaluation needs texts of both labels; got {} positive and {} negative",
                positives.len(),
                negatives.len()
            )));
        }
        positives.sort_by(|a, b| b.total_cmp(a));
        negatives.sort_by(|a, b| b.total_cmp(a));
        Ok(Self {
            positives,
            negatives,
        })
    }

    /// P(score of a random positive > score of a random negative), ties counting half: the
    /// Mann–Whitney statistic, by one merge of the two sorted lists.
    pub fn auroc(&self) -> f64 {
        auroc_sorted(&self.positives, &self.negatives)
    }

    /// The lowest threshold whose false-positive rate is at most `fpr`: the score of the
    /// negative ranked `⌊fpr·n⌋ + 1` from the top (flagging is strictly above it). With
    /// `fpr` ≥ 1 every text is flagged (threshold −∞).
    pub fn threshold_at_fpr(&self, fpr: f64) -> f32 {
        threshold_in_sorted(&self.negatives, fpr)
    }

    /// Fraction of positives strictly above `threshold`.
    pub fn tpr(&self, threshold: f32) -> f64 {
        above(&self.positives, threshold) as f64 / self.positives.len() as f64
    }

    /// Fraction of negatives strictly above `threshold`.
    pub fn fpr(&self, threshold: f32) -> f64 {
        above(&self.negatives, threshold) as f64 / self.negatives.len() as f64
    }

    /// The 95 % percentile-bootstrap interval of the AUROC: `rounds` resamples of each class
    /// (stratified, with replacement), seeded so a report is reproducible.
    pub fn auroc_interval(&self, rounds: usize, seed: u64) -> (f64, f64) {
        self.bootstrap(rounds, seed, auroc_sorted)
    }

    /// The 95 % percentile-bootstrap interval of the TPR at `fpr`, the threshold set anew on
    /// each resample's negatives as a calibration would set it: at 1 % FPR it rests on a
    /// dozen benign texts of a thousand, so it moves more than the AUROC.
    pub fn tpr_interval(&self, fpr: f64, rounds: usize, seed: u64) -> (f64, f64) {
        self.bootstrap(rounds, seed, |p, n| {
            above(p, threshold_in_sorted(n, fpr)) as f64 / p.len() as f64
        })
    }

    /// The 2.5 and 97.5 percentiles of `statistic` (positives, negatives; each sorted
    /// descending) over `rounds` stratified resamples with replacement.
    fn bootstrap(
        &self,
        rounds: usize,
        seed: u64,
        statistic: impl Fn(&[f32], &[f32]) -> f64,
    ) -> (f64, f64) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut draw = |v: &[f32]| -> Vec<f32> {
            let mut d: Vec<f32> = (0..v.len())
                .map(|_| v[rng.random_range(0..v.len())])
                .collect();
            d.sort_by(|a, b| b.total_cmp(a));
            d
        };
        let values: Vec<f64> = (0..rounds.max(1))
            .map(|_| {
                let (p, n) = (draw(&self.positives), draw(&self.negatives));
                statistic(&p, &n)
            })
            .collect();
        percentile_interval(values)
    }

    /// The ROC curve as (FPR, TPR) points, one per distinct score, from (0, 0) to (1, 1).
    pub fn curve(&self) -> Vec<(f64, f64)> {
        let mut cuts: Vec<f32> = self
            .positives
            .iter()
            .chain(&self.negatives)
            .copied()
            .collect();
        cuts.sort_by(|a, b| b.total_cmp(a));
        cuts.dedup();
        let mut points = vec![(0.0, 0.0)];
        points.extend(cuts.iter().map(|&c| {
            // Flagging at ≥ c is flagging above the next score down.
            let (tp, fp) = (at_least(&self.positives, c), at_least(&self.negatives, c));
            (
                fp as f64 / self.negatives.len() as f64,
                tp as f64 / self.positives.len() as f64,
            )
        }));
        points
    }
}

/// Count of a descending list strictly above `t`.
fn above(sorted_desc: &[f32], t: f32) -> usize {
    sorted_desc.partition_point(|&s| s > t)
}

fn at_least(sorted_desc: &[f32], t: f32) -> usize {
    sorted_desc.partition_point(|&s| s >= t)
}

fn auroc_sorted(pos: &[f32], neg: &[f32]) -> f64 {
    // For each positive, the negatives strictly below it plus half of those equal.
    let mut total = 0f64;
    for &p in pos {
        let greater_or_equal = at_least(neg, p);
        let greater = above(neg, p);
        let below = neg.len() - greater_or_equal;
        total += below as f64 + 0.5 * (greater_or_equal - greater) as f64;
    }
    total / (pos.len() as f64 * neg.len() as f64)
}

/// [`Scored::threshold_at_fpr`] from negative scores alone (any order): a threshold set on
/// benign traffic, where there are no positives to rank against.
pub fn threshold_for_fpr(negatives: &[f32], fpr: f64) -> f32 {
    let mut sorted = negatives.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    threshold_in_sorted(&sorted, fpr)
}

fn threshold_in_sorted(descending: &[f32], fpr: f64) -> f32 {
    let allowed = (fpr * descending.len() as f64).floor() as usize;
    match descending.get(allowed) {
        Some(&s) => s,
        None => f32::NEG_INFINITY,
    }
}

/// The 95 % Wilson score interval of a rate of `hits` in `n`: the share of a family a fixed
/// rule flags, where a few dozen texts leave wide margins (and a normal interval around 0 % or
/// 100 % would collapse to a point). `(0, 1)` for no texts.
pub fn rate_interval(hits: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    const Z: f64 = 1.959_963_984_540_054; // the normal distribution's 97.5 % quantile
    let (k, n) = (hits.min(n) as f64, n as f64);
    let p = k / n;
    let z2 = Z * Z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// The 95 % interval of a change of rate, `b_hits / b_n − a_hits / a_n`, between two
/// independent samples: Newcombe's hybrid score interval (his method 10), made of the two
/// [`rate_interval`]s, so it stays within [−1, 1] and does not collapse at 0 % or 100 %.
/// Whether two red-team rounds differ on an attack family beyond the noise of its few dozen
/// texts: they do where the interval excludes 0.
pub fn difference_interval(
    (a_hits, a_n): (usize, usize),
    (b_hits, b_n): (usize, usize),
) -> (f64, f64) {
    let rate = |hits: usize, n: usize| hits.min(n) as f64 / n.max(1) as f64;
    let (pa, pb) = (rate(a_hits, a_n), rate(b_hits, b_n));
    let ((la, ua), (lb, ub)) = (rate_interval(a_hits, a_n), rate_interval(b_hits, b_n));
    let d = pb - pa;
    let lower = d - ((pb - lb).powi(2) + (ua - pa).powi(2)).sqrt();
    let upper = d + ((ub - pb).powi(2) + (pa - la).powi(2)).sqrt();
    (lower.max(-1.0), upper.min(1.0))
}

/// A pool of benign texts (a deployment's traffic) that several detectors each scored: the
/// folds of a cross-validation, each trained without one family. A text one fold scored is
/// judged at the threshold that fold's scores of the pool give, as a deployment would set it
/// on its own traffic, so no threshold comes from the labelled set.
#[derive(Debug, Clone)]
pub struct CalibrationPool {
    /// Per fold, every pool text's score in pool order (text j is the same text in each).
    scores: Vec<Vec<f32>>,
    /// The same, each sorted descending.
    sorted: Vec<Vec<f32>>,
}

impl CalibrationPool {
    /// Per fold, its scores of the pool's texts, in the same order for every fold.
    pub fn new(scores: Vec<Vec<f32>>) -> Result<Self> {
        let n = scores.first().map_or(0, Vec::len);
        if n == 0 || scores.iter().any(|f| f.len() != n) {
            return Err(DictError::Config(format!(
                "a calibration pool needs every fold's score of each of its texts; got {:?} scores per fold",
                scores.iter().map(Vec::len).collect::<Vec<_>>()
            )));
        }
        if scores.iter().flatten().any(|s| s.is_nan()) {
            return Err(DictError::Config("a calibration pool score is NaN".into()));
        }
        let sorted = scores
            .iter()
            .map(|f| {
                let mut v = f.clone();
                v.sort_by(|a, b| b.total_cmp(a));
                v
            })
            .collect();
        Ok(Self { scores, sorted })
    }

    /// Each fold's threshold for `fpr` of the pool ([`threshold_for_fpr`]).
    pub fn thresholds(&self, fpr: f64) -> Vec<f32> {
        self.sorted
            .iter()
            .map(|v| threshold_in_sorted(v, fpr))
            .collect()
    }

    /// The share of `judged` — (fold, score) — strictly above its fold's threshold for `fpr`:
    /// the attacks caught, or the benign texts flagged, at the pool's calibration. 0 for none.
    pub fn flagged(&self, judged: &[(usize, f32)], fpr: f64) -> f64 {
        self.flagged_with_floor(judged, fpr, f32::NEG_INFINITY)
    }

    /// [`Self::flagged`] with no threshold below `floor`: a threshold held to `fpr` of the pool
    /// and to whatever set `floor` (say, the labelled set's own benign texts) alike.
    pub fn flagged_with_floor(&self, judged: &[(usize, f32)], fpr: f64, floor: f32) -> f64 {
        let thresholds: Vec<f32> = self
            .thresholds(fpr)
            .into_iter()
            .map(|t| t.max(floor))
            .collect();
        share_above(judged, &thresholds)
    }

    /// P(a judged text outranks a pool text its fold scored), ties half: each text's AUROC
    /// against its own fold's pool, averaged over the texts.
    pub fn auroc(&self, judged: &[(usize, f32)]) -> f64 {
        let sum: f64 = judged
            .iter()
            .map(|&(f, s)| auroc_sorted(&[s], &self.sorted[f]))
            .sum();
        sum / judged.len().max(1) as f64
    }

    /// The pool's share strictly above a fixed `threshold`, averaged over the folds: what a
    /// threshold set elsewhere flags of this traffic.
    pub fn fpr(&self, threshold: f32) -> f64 {
        let folds = self.sorted.len() as f64;
        self.sorted
            .iter()
            .map(|v| above(v, threshold) as f64 / v.len() as f64)
            .sum::<f64>()
            / folds
    }

    /// The 95 % percentile-bootstrap interval of [`Self::flagged`]: the pool resampled (the
    /// same draw of texts for every fold) and its thresholds set anew, and `judged` resampled.
    pub fn flagged_interval(
        &self,
        judged: &[(usize, f32)],
        fpr: f64,
        rounds: usize,
        seed: u64,
    ) -> (f64, f64) {
        if judged.is_empty() {
            return (0.0, 1.0);
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = self.scores[0].len();
        let values: Vec<f64> = (0..rounds.max(1))
            .map(|_| {
                let draw: Vec<usize> = (0..n).map(|_| rng.random_range(0..n)).collect();
                let thresholds: Vec<f32> = self
                    .scores
                    .iter()
                    .map(|f| {
                        let v: Vec<f32> = draw.iter().map(|&j| f[j]).collect();
                        threshold_for_fpr(&v, fpr)
                    })
                    .collect();
                let texts: Vec<(usize, f32)> = (0..judged.len())
                    .map(|_| judged[rng.random_range(0..judged.len())])
                    .collect();
                share_above(&texts, &thresholds)
            })
            .collect();
        percentile_interval(values)
    }
}

/// The 2.5 and 97.5 percentiles of bootstrap `values` (at least one).
fn percentile_interval(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((q * values.len() as f64) as usize).min(values.len() - 1)];
    (at(0.025), at(0.975))
}

/// The share of (fold, score) strictly above its fold's threshold (0 for none).
fn share_above(judged: &[(usize, f32)], thresholds: &[f32]) -> f64 {
    let hits = judged.iter().filter(|&&(f, s)| s > thresholds[f]).count();
    hits as f64 / judged.len().max(1) as f64
}

/// The headline numbers of one evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub positives: usize,
    pub negatives: usize,
    pub auroc: f64,
    pub auroc_ci95: (f64, f64),
    pub tpr_at_1pct_fpr: f64,
    /// Its 95 % bootstrap interval ([`Scored::tpr_interval`]).
    pub tpr_at_1pct_fpr_ci95: (f64, f64),
    pub tpr_at_5pct_fpr: f64,
    /// The threshold for the requested false-positive rate, and the rates it gives.
    pub target_fpr: f64,
    pub threshold: f32,
    pub tpr: f64,
    pub fpr: f64,
}

impl Summary {
    pub fn of(scored: &Scored, target_fpr: f64) -> Self {
        let threshold = scored.threshold_at_fpr(target_fpr);
        Self {
            positives: scored.positives.len(),
            negatives: scored.negatives.len(),
            auroc: scored.auroc(),
            auroc_ci95: scored.auroc_interval(1000, 0),
            tpr_at_1pct_fpr: scored.tpr(scored.threshold_at_fpr(0.01)),
            tpr_at_1pct_fpr_ci95: scored.tpr_interval(0.01, 1000, 0),
            tpr_at_5pct_fpr: scored.tpr(scored.threshold_at_fpr(0.05)),
            target_fpr,
            threshold,
            tpr: scored.tpr(threshold),
            fpr: scored.fpr(threshold),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(pos: &[f32], neg: &[f32]) -> Scored {
        let scores: Vec<f32> = pos.iter().chain(neg).copied().collect();
        let labels: Vec<bool> = (0..scores.len()).map(|i| i < pos.len()).collect();
        Scored::new(&scores, &labels).unwrap()
    }

    #[test]
    fn a_threshold_from_benign_scores_alone_matches_the_labelled_one() {
        let neg = [0.3, 0.9, 0.1, 0.7, 0.5];
        let labelled = scored(&[1.0], &neg);
        for fpr in [0.0, 0.2, 0.39, 0.4, 0.99, 1.0] {
            assert_eq!(
                threshold_for_fpr(&neg, fpr),
                labelled.threshold_at_fpr(fpr),
                "{fpr}"
            );
        }
        // 20 % of five: one text above the threshold (0.9 > 0.7).
        assert_eq!(threshold_for_fpr(&neg, 0.2), 0.7);
    }

    #[test]
    fn auroc_counts_ordered_pairs_and_half_ties() {
        assert_eq!(scored(&[3.0, 4.0], &[1.0, 2.0]).auroc(), 1.0);
        assert_eq!(scored(&[1.0, 2.0], &[3.0, 4.0]).auroc(), 0.0);
        // Pairs: (2>1) (2=2 half) (2<3) (5>1) (5>2) (5>3) → 4.5 of 6.
        assert_eq!(scored(&[2.0, 5.0], &[1.0, 2.0, 3.0]).auroc(), 4.5 / 6.0);
    }

    #[test]
    fn the_threshold_keeps_false_positives_at_the_target() {
        // 100 negatives 0..99, positives 50.5..149.5.
        let neg: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let pos: Vec<f32> = (0..100).map(|i| i as f32 + 50.5).collect();
        let s = scored(&pos, &neg);
        // 1 % of 100 negatives: one may be flagged, so the cut sits at the second highest.
        let t = s.threshold_at_fpr(0.01);
        assert_eq!(t, 98.0);
        assert_eq!(s.fpr(t), 0.01);
        assert_eq!(s.tpr(t), 0.52); // 98.5 … 149.5: 52 of 100
        assert_eq!(s.threshold_at_fpr(0.0), 99.0);
        assert_eq!(s.fpr(s.threshold_at_fpr(0.0)), 0.0);
        assert_eq!(s.threshold_at_fpr(1.0), f32::NEG_INFINITY);
        let (lo, hi) = s.auroc_interval(500, 1);
        assert!(
            lo <= s.auroc() && s.auroc() <= hi && hi - lo < 0.15,
            "{lo} {hi}"
        );
        let (lo, hi) = s.tpr_interval(0.01, 500, 1);
        assert!(lo <= 0.52 && 0.52 <= hi && hi - lo > 0.05, "{lo} {hi}");
        // Classes far apart: every resample catches every positive.
        assert_eq!(
            scored(&[5.0, 6.0], &[1.0, 2.0]).tpr_interval(0.0, 200, 3),
            (1.0, 1.0)
        );
        let curve = s.curve();
        assert_eq!(curve.first(), Some(&(0.0, 0.0)));
        assert_eq!(curve.last(), Some(&(1.0, 1.0)));
    }

    #[test]
    fn rate_intervals_are_wilsons() {
        // Wilson (1927)'s closed form evaluated independently (Python, f64), to four places.
        let close = |(lo, hi): (f64, f64), (a, b): (f64, f64)| {
            assert!((lo - a).abs() < 1e-4 && (hi - b).abs() < 1e-4, "{lo} {hi}")
        };
        close(rate_interval(0, 10), (0.0, 0.2775));
        close(rate_interval(10, 10), (0.7225, 1.0));
        close(rate_interval(14, 200), (0.0422, 0.1141));
        close(rate_interval(5, 10), (0.2366, 0.7634));
        assert_eq!(rate_interval(0, 0), (0.0, 1.0));
        let (lo, hi) = rate_interval(192, 485);
        assert!(lo < 192.0 / 485.0 && 192.0 / 485.0 < hi && hi - lo < 0.09);
    }

    /// Newcombe (1998), Statistics in Medicine 17, 873–890, table II, method 10: 56/70 vs
    /// 48/80 and 9/10 vs 3/10; the interval of b − a is that of a − b reversed.
    #[test]
    fn difference_intervals_are_newcombes() {
        let close = |(lo, hi): (f64, f64), (want_lo, want_hi): (f64, f64)| {
            assert!(
                (lo - want_lo).abs() < 1e-4 && (hi - want_hi).abs() < 1e-4,
                "({lo:.4}, {hi:.4}) is not ({want_lo}, {want_hi})"
            );
        };
        close(difference_interval((48, 80), (56, 70)), (0.0524, 0.3339));
        close(difference_interval((3, 10), (9, 10)), (0.1705, 0.8090));
        close(difference_interval((56, 70), (48, 80)), (-0.3339, -0.0524));
        // No change, no texts, everything against nothing: inside [−1, 1], around the change.
        let (lo, hi) = difference_interval((12, 24), (12, 24));
        assert!(lo < 0.0 && hi > 0.0 && (lo + hi).abs() < 1e-12);
        assert_eq!(difference_interval((0, 0), (0, 0)), (-1.0, 1.0));
        let (lo, hi) = difference_interval((0, 20), (10, 10));
        assert!(lo > 0.6 && hi == 1.0, "({lo}, {hi})");
    }

    #[test]
    fn a_pool_calibrates_each_fold_on_its_own_scores() {
        // Two folds scored the same 100 pool texts: fold 0 as 0..99, fold 1 ten higher.
        let fold0: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let fold1: Vec<f32> = fold0.iter().map(|s| s + 10.0).collect();
        let pool = CalibrationPool::new(vec![fold0.clone(), fold1]).unwrap();
        // 1 % of 100: one pool text above, so each cut sits at its fold's second highest.
        assert_eq!(pool.thresholds(0.01), vec![98.0, 108.0]);
        // 100 is caught where fold 0 scored it, not where fold 1 did; 108.5 by fold 1.
        let judged = [(0, 100.0), (1, 100.0), (1, 108.5), (0, 98.0)];
        assert_eq!(pool.flagged(&judged, 0.01), 0.5);
        // Against its own fold's pool: 100 outranks all of fold 0's (1.0), and 90 of fold 1's
        // and ties one (0.905); 108.5 outranks 99 (0.99); 98 outranks 98 and ties one (0.985).
        let want = (1.0 + 0.905 + 0.99 + 0.985) / 4.0;
        assert!((pool.auroc(&judged) - want).abs() < 1e-12);
        // A floor of 105 lifts fold 0's cut (98) above both of its texts, not fold 1's (108).
        assert_eq!(pool.flagged_with_floor(&judged, 0.01, 105.0), 0.25);
        assert_eq!(pool.flagged_with_floor(&judged, 0.01, 50.0), 0.5);
        // A threshold set elsewhere: 94.5 flags 5 of fold 0's texts and 15 of fold 1's.
        assert!((pool.fpr(94.5) - 0.10).abs() < 1e-12);
        let (lo, hi) = pool.flagged_interval(&judged, 0.01, 300, 7);
        assert!(lo <= 0.5 && 0.5 <= hi && lo < hi, "{lo} {hi}");
        // The same as a threshold from the fold's scores alone.
        assert_eq!(pool.thresholds(0.2)[0], threshold_for_fpr(&fold0, 0.2));
        assert!(CalibrationPool::new(vec![vec![1.0, 2.0], vec![1.0]]).is_err());
        assert!(CalibrationPool::new(vec![]).is_err());
        assert!(CalibrationPool::new(vec![vec![f32::NAN]]).is_err());
    }

    #[test]
    fn one_class_or_nan_is_an_error() {
        assert!(Scored::new(&[1.0, 2.0], &[true, true]).is_err());
        assert!(Scored::new(&[1.0, f32::NAN], &[true, false]).is_err());
        assert!(Scored::new(&[1.0], &[true, false]).is_err());
    }
}
