//! DeepReDuce (Jha et al. 2021): stage criticality, Culling, Thinning,
//! Reshaping; and the ReLU-pattern helpers DeepReShape reuses.
//!
//! * Criticality (Eq. 1): `C_k = (Acc[S_k] − min_i Acc[S_i]) / (#ReLU[S_k])^w`
//!   with `w = 0.07`, accuracies in percent and ReLU counts in thousands (the
//!   unit that reproduces the ResNet-34 row of the paper's Table 3), where
//!   `Acc[S_k]` is the KD accuracy of the network with ReLUs only in `S_k`.
//! * Culling removes all ReLUs of the `i` least critical stages
//!   (`i = 1..D−1`); the stem's ReLUs go with any optimisation.
//! * Thinning drops every other ReLU layer of the remaining stages (layers
//!   1, 3, 5, … of each stage: the post-add `relu2` of every block), halving
//!   their ReLUs.
//! * Reshaping scales channels by α and the input resolution by ρ.

use serde::{Deserialize, Serialize};

use crate::net::{ArchSpec, Network, SiteLayout};

/// The weight `w` of Eq. 1.
pub const CRITICALITY_WEIGHT: f64 = 0.07;

/// Eq. 1 for every stage: `acc` in percent, `relus` the ReLU counts of the stages.
pub fn criticality(acc: &[f64], relus: &[i64], w: f64) -> Vec<f64> {
    let min = acc.iter().cloned().fold(f64::INFINITY, f64::min);
    acc.iter()
        .zip(relus)
        .map(|(&a, &r)| (a - min) / (r as f64 / 1000.0).powf(w))
        .collect()
}

/// Stages (1-based) sorted from least to most critical; ties keep the lower stage first.
pub fn culling_order(criticality: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (1..=criticality.len()).collect();
    order.sort_by(|&a, &b| criticality[a - 1].total_cmp(&criticality[b - 1]));
    order
}

/// A ReLU pattern on a ResNet: which stages keep ReLUs, whether they are
/// thinned, and the channel-group reduction of DeepReShape's ReLU reuse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pattern {
    /// Stages (1-based) whose ReLUs are all removed.
    pub culled: Vec<usize>,
    /// Drop every other ReLU layer in the remaining stages.
    pub thinned: bool,
    /// Keep the stem's ReLUs (only the unoptimised network does).
    pub keep_stem: bool,
    /// Channel-group factor `N`: ReLUs only on the last `⌈C/N⌉` channels of
    /// every remaining site (1 = all channels).
    pub group_factor: i64,
}

impl Pattern {
    /// The all-ReLU pattern.
    pub fn full() -> Pattern {
        Pattern {
            culled: vec![],
            thinned: false,
            keep_stem: true,
            group_factor: 1,
        }
    }

    /// ReLUs only in `stage` (the criticality probe).
    pub fn only_stage(stage: usize, stages: usize) -> Pattern {
        Pattern {
            culled: (1..=stages).filter(|&s| s != stage).collect(),
            thinned: false,
            keep_stem: false,
            group_factor: 1,
        }
    }

    /// Whether the site keeps its ReLUs at all under this pattern.
    pub fn site_active(&self, site: &SiteLayout) -> bool {
        if site.stage == 0 {
            return self.keep_stem;
        }
        if self.culled.contains(&site.stage) {
            return false;
        }
        !(self.thinned && site.layer % 2 == 1)
    }

    /// Kept channels `[first, C)` of an active site.
    pub fn kept_channels(&self, channels: i64) -> (i64, i64) {
        let n = self.group_factor.max(1);
        let kept = (channels + n - 1) / n;
        (channels - kept, channels)
    }

    /// ReLUs this pattern keeps on a network of shape `spec`.
    pub fn relu_count(&self, spec: &ArchSpec) -> i64 {
        spec.site_layout()
            .iter()
            .filter(|s| self.site_active(s))
            .map(|s| {
                let (lo, hi) = self.kept_channels(s.shape[0]);
                (hi - lo) * s.shape[1] * s.shape[2]
            })
            .sum()
    }

    /// Writes the pattern into `net`'s masks.
    pub fn apply(&self, net: &mut Network) {
        for i in 0..net.sites.len() {
            let layout = net.sites[i].layout.clone();
            if !self.site_active(&layout) {
                net.fill_site(i, false);
                continue;
            }
            let (lo, hi) = self.kept_channels(layout.shape[0]);
            if lo == 0 {
                net.fill_site(i, true);
            } else {
                let mask = tch::Tensor::zeros(layout.shape, (tch::Kind::Float, net.vs.device()));
                let _ = mask.narrow(0, lo, hi - lo).fill_(1.0);
                net.set_mask(i, &mask);
            }
        }
    }

    /// Short label, e.g. `cull-S1-thin`.
    pub fn label(&self) -> String {
        let mut parts = Vec::new();
        if !self.culled.is_empty() {
            let s: Vec<String> = self.culled.iter().map(|s| format!("S{s}")).collect();
            parts.push(format!("cull-{}", s.join("+")));
        }
        if self.thinned {
            parts.push("thin".into());
        }
        if self.group_factor > 1 {
            parts.push(format!("reuse{}", self.group_factor));
        }
        if parts.is_empty() {
            "full".into()
        } else {
            parts.join("-")
        }
    }
}

/// One network DeepReDuce or DeepReShape considers: a pattern on a reshaped spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// ReLU pattern.
    pub pattern: Pattern,
    /// Channel scale α of Reshaping (1 = none).
    pub channel_scale: f64,
    /// Resolution scale ρ of Reshaping (1 = none).
    pub rho: f64,
}

impl Candidate {
    /// Label such as `cull-S1-thin-a0.5-r0.5`.
    pub fn label(&self) -> String {
        let mut l = self.pattern.label();
        if self.channel_scale != 1.0 {
            l.push_str(&format!("-a{}", self.channel_scale));
        }
        if self.rho != 1.0 {
            l.push_str(&format!("-r{}", self.rho));
        }
        l
    }
}

/// DeepReDuce's 5·(D−1) candidates: for `i = 1..D−1`, cull the `i` least
/// critical stages, then {culled, +thinned, +thinned α=0.5, +thinned ρ=0.5,
/// +thinned α=ρ=0.5}.
pub fn deepreduce_candidates(order: &[usize]) -> Vec<Candidate> {
    let mut out = Vec::new();
    for i in 1..order.len() {
        let mut culled = order[..i].to_vec();
        culled.sort_unstable();
        let base = Pattern {
            culled,
            thinned: false,
            keep_stem: false,
            group_factor: 1,
        };
        let thin = Pattern {
            thinned: true,
            ..base.clone()
        };
        for (pattern, a, r) in [
            (base, 1.0, 1.0),
            (thin.clone(), 1.0, 1.0),
            (thin.clone(), 0.5, 1.0),
            (thin.clone(), 1.0, 0.5),
            (thin, 0.5, 0.5),
        ] {
            out.push(Candidate {
                pattern,
                channel_scale: a,
                rho: r,
            });
        }
    }
    out
}

/// Indices of the Pareto-optimal points of `(relus, accuracy)`: no other
/// point has fewer-or-equal ReLUs and higher-or-equal accuracy with one strict.
pub fn pareto_front(points: &[(i64, f64)]) -> Vec<usize> {
    (0..points.len())
        .filter(|&i| {
            let (ri, ai) = points[i];
            !points
                .iter()
                .enumerate()
                .any(|(j, &(rj, aj))| j != i && rj <= ri && aj >= ai && (rj < ri || aj > ai))
        })
        .collect()
}
