//! Two monitors deployed together, each held to half the false-alarm budget: a text is flagged
//! where either flags it, as two blocking rules flag. Measured on the same held-out scores as
//! every detector of the protocol, on the set and (with `--calibrate-on`) on the traffic.

use std::collections::BTreeMap;

use anyhow::Result;
use glassbox_dictionary::roc::{threshold_for_fpr, CalibrationPool};
use serde::Serialize;

use super::{Text, N, TRAFFIC_FPR};

/// Each member's share of the false-alarm budget.
pub(super) const HALF: f64 = TRAFFIC_FPR / 2.0;

/// The pair on the set: each member's threshold flags half of 1 % of the set's held-out benign
/// texts (pooled over folds, as each detector's own threshold is).
#[derive(Serialize)]
pub(super) struct OnSet {
    pub tpr: f64,
    /// The set's held-out benign texts flagged by either member (at most 1 %).
    pub fpr: f64,
    pub thresholds: [f32; 2],
}

/// The pair held to the traffic: each member's threshold, per fold, flags half of 1 % of the
/// traffic as that fold's detectors score it.
#[derive(Serialize)]
pub(super) struct OnTraffic {
    pub tpr: f64,
    /// The set's held-out benign texts flagged at those thresholds.
    pub set_fpr: f64,
    /// The traffic flagged by either member, averaged over the folds (at most 1 %).
    pub traffic_flagged: f64,
    /// Each member's threshold per fold the higher of its traffic and set thresholds.
    pub tpr_held_to_both: f64,
}

/// The two monitors together.
pub(super) struct Pair {
    /// Indices into `DETECTORS`.
    pub members: [usize; 2],
    pub on_set: OnSet,
    pub on_traffic: Option<OnTraffic>,
    /// Per family: its texts, and those the pair flags on the set's thresholds and on the
    /// traffic's.
    pub per_family: BTreeMap<(bool, String), (usize, usize, usize)>,
}

impl Pair {
    /// `members` over every text's held-out scores (`pooled`, in `DETECTORS` order; text i held
    /// out by fold `fold_of[i]`) and each fold's scores of the traffic (none: the set alone).
    pub fn of(
        members: [usize; 2],
        pooled: &[[f32; N]],
        texts: &[Text],
        fold_of: &[usize],
        traffic: &[Vec<[f32; N]>],
    ) -> Result<Self> {
        let set_cut = members.map(|k| {
            let benign: Vec<f32> = pooled
                .iter()
                .zip(texts)
                .filter(|(_, t)| !t.label)
                .map(|(p, _)| p[k])
                .collect();
            threshold_for_fpr(&benign, HALF)
        });
        let flags = |i: usize, cut: &dyn Fn(usize, usize) -> f32| {
            members
                .iter()
                .enumerate()
                .any(|(m, &k)| pooled[i][k] > cut(m, fold_of[i]))
        };
        let share = |label: bool, cut: &dyn Fn(usize, usize) -> f32| {
            let judged: Vec<usize> = (0..texts.len())
                .filter(|&i| texts[i].label == label)
                .collect();
            let hits = judged.iter().filter(|&&i| flags(i, cut)).count();
            hits as f64 / judged.len().max(1) as f64
        };
        let on_set_cut = |m: usize, _fold: usize| set_cut[m];
        let on_set = OnSet {
            tpr: share(true, &on_set_cut),
            fpr: share(false, &on_set_cut),
            thresholds: set_cut,
        };
        // Per member, per fold: the threshold for half the budget of the traffic.
        // (Without `--calibrate-on` each fold scored no traffic.)
        let traffic_cut: Option<Vec<Vec<f32>>> = if traffic.iter().all(Vec::is_empty) {
            None
        } else {
            let cuts = members.map(|k| {
                let scores = traffic.iter().map(|f| f.iter().map(|s| s[k]).collect());
                CalibrationPool::new(scores.collect()).map(|p| p.thresholds(HALF))
            });
            let [a, b] = cuts;
            Some(vec![a?, b?])
        };
        let on_traffic = traffic_cut.as_ref().map(|cuts| {
            let on_cut = |m: usize, fold: usize| cuts[m][fold];
            let both = |m: usize, fold: usize| cuts[m][fold].max(set_cut[m]);
            let traffic_flagged = traffic
                .iter()
                .enumerate()
                .map(|(f, scores)| {
                    let hit =
                        |s: &&[f32; N]| members.iter().enumerate().any(|(m, &k)| s[k] > cuts[m][f]);
                    scores.iter().filter(hit).count() as f64 / scores.len().max(1) as f64
                })
                .sum::<f64>()
                / traffic.len() as f64;
            OnTraffic {
                tpr: share(true, &on_cut),
                set_fpr: share(false, &on_cut),
                traffic_flagged,
                tpr_held_to_both: share(true, &both),
            }
        });
        let mut per_family: BTreeMap<(bool, String), (usize, usize, usize)> = BTreeMap::new();
        for (i, t) in texts.iter().enumerate() {
            let e = per_family.entry((t.label, t.family.clone())).or_default();
            e.0 += 1;
            e.1 += usize::from(flags(i, &on_set_cut));
            if let Some(cuts) = &traffic_cut {
                e.2 += usize::from(flags(i, &|m, fold| cuts[m][fold]));
            }
        }
        Ok(Self {
            members,
            on_set,
            on_traffic,
            per_family,
        })
    }
}
