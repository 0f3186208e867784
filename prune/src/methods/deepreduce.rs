//! DeepReDuce (Jha et al. 2021): stage criticality, Culling, Thinning,
//! Reshaping; and the ReLU patterns DeepReShape reuses.
//!
//! Patterns act on the `pibench_models` graph with the models crate's own
//! transformations (`arch::deepreduce::{cull_stage, thin_stage,
//! scale_channels, scale_fmap}`), so the counts here are the model file's.
//!
//! * Criticality (Eq. 1): `C_k = (Acc[S_k] − min_i Acc[S_i]) / (#ReLU[S_k])^w`
//!   with `w = 0.07`, accuracies in percent and ReLU counts in thousands (the
//!   unit that reproduces the ResNet-34 row of the paper's Table 3), where
//!   `Acc[S_k]` is the accuracy of the network with ReLUs only in `S_k`,
//!   trained from scratch with KD from the all-ReLU network (§3.1: "remove
//!   all the ReLUs from all network stages except S_k, train the network …
//!   and then repeat the process with KD using the original network as a
//!   teacher"), measured on the validation split.
//! * Culling removes all ReLUs of the `i` least critical stages
//!   (`i = 1..D−1`); the stem's ReLUs go with any optimisation (§2).
//! * Thinning drops every other ReLU layer of the remaining stages (the
//!   post-add `relu2` of every block), halving their ReLUs.
//! * Reshaping scales channels by α and the input resolution by ρ.
//! * Table 4's last row (7.17K ReLUs) has one residual block per stage
//!   (stages marked "?"): the one-block variant of the smallest candidate.
//! * DeepReShape's ReLU-reuse ×N (§4.2, Algorithm 2 lines 7–9) is a
//!   different network, not a mask: [`Pattern::relu_reuse`] builds the
//!   stages that keep ReLUs with `pibench_models::arch::reuse` (channel
//!   groups, ReLUs on `⌈C/N⌉` channels after their own 3×3 convolution, a
//!   1×1 mix). The older mask-only approximation [`Pattern::group_factor`]
//!   (ReLUs on the last `⌈C/N⌉` channels of the unchanged network) stays
//!   for results written with it.

use pibench_models::arch::deepreduce::{cull_stage, thin_stage};
use pibench_models::arch::ArchSpec;
use pibench_models::count::{relu_count, Convention};
use pibench_models::graph::{FeatureShape, Init, Network as Graph};
use pibench_models::ModelError;
use serde::{Deserialize, Serialize};

use crate::arch;

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

/// The body stages of a graph (1-based, sorted).
pub fn stages(g: &Graph) -> Vec<usize> {
    let mut s: Vec<usize> = g
        .sites()
        .filter_map(|s| s.stage)
        .filter(|&s| s > 0)
        .collect();
    s.sort_unstable();
    s.dedup();
    s
}

/// A ReLU pattern: which stages keep ReLUs, whether they are thinned, and
/// ReLU-reuse (real network) or its older mask-only approximation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pattern {
    /// Stages (1-based) whose ReLUs are all removed.
    pub culled: Vec<usize>,
    /// Drop every other ReLU layer in the remaining stages.
    pub thinned: bool,
    /// Keep the stem's ReLUs (only the unoptimised network does).
    pub keep_stem: bool,
    /// Channel-group factor `N` of the mask-only approximation of ReLU
    /// reuse: ReLUs only on the last `⌈C/N⌉` channels of every remaining
    /// site of the unchanged network (1 = all channels).
    pub group_factor: usize,
    /// DeepReShape's ReLU-reuse factor `N` (0 or 1 = none): the stages not
    /// culled are built as ReLU-reuse stages (`ArchSpec::relu_reuse`), whose
    /// `relu1` sites hold `⌈C/N⌉` channels. Absent (0) in older results.
    #[serde(default)]
    pub relu_reuse: usize,
}

impl Pattern {
    /// The all-ReLU pattern.
    pub fn full() -> Pattern {
        Pattern {
            culled: vec![],
            thinned: false,
            keep_stem: true,
            group_factor: 1,
            relu_reuse: 0,
        }
    }

    /// ReLUs only in `stage` (the criticality probe).
    pub fn only_stage(stage: usize, stages: &[usize]) -> Pattern {
        Pattern {
            culled: stages.iter().copied().filter(|&s| s != stage).collect(),
            thinned: false,
            keep_stem: false,
            group_factor: 1,
            relu_reuse: 0,
        }
    }

    /// Writes the pattern into the graph's masks.
    pub fn apply(&self, g: &mut Graph) -> Result<(), ModelError> {
        let has_stem = g.sites().any(|s| s.stage == Some(0));
        if !self.keep_stem && has_stem {
            cull_stage(g, 0)?;
        }
        for &s in &self.culled {
            cull_stage(g, s)?;
        }
        if self.thinned {
            for s in stages(g) {
                if !self.culled.contains(&s) {
                    thin_stage(g, s)?;
                }
            }
        }
        if self.group_factor > 1 {
            for site in g.sites_mut().filter(|s| s.stage.is_some_and(|st| st > 0)) {
                if site.relu_count() == 0 {
                    continue;
                }
                let c = site.shape.c;
                let kept = c.div_ceil(self.group_factor);
                let plane = site.shape.plane();
                for m in &mut site.mask[..(c - kept) * plane] {
                    *m = 0;
                }
            }
        }
        Ok(())
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
            parts.push(format!("groups{}", self.group_factor));
        }
        if self.relu_reuse > 1 {
            parts.push(format!("reuse{}", self.relu_reuse));
        }
        if parts.is_empty() {
            "full".into()
        } else {
            parts.join("-")
        }
    }
}

/// One network DeepReDuce or DeepReShape considers: a pattern on a reshaped architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// ReLU pattern.
    pub pattern: Pattern,
    /// Channel scale α of Reshaping (1 = none).
    pub channel_scale: f64,
    /// Resolution scale ρ of Reshaping (1 = none).
    pub rho: f64,
    /// One residual block per stage (Table 4's rows marked "?").
    #[serde(default)]
    pub one_block: bool,
}

impl Candidate {
    /// A candidate without reshaping.
    pub fn plain(pattern: Pattern) -> Candidate {
        Candidate {
            pattern,
            channel_scale: 1.0,
            rho: 1.0,
            one_block: false,
        }
    }

    /// Label such as `cull-S1-thin-a0.5-r0.5-1blk`.
    pub fn label(&self) -> String {
        let mut l = self.pattern.label();
        if self.channel_scale != 1.0 {
            l.push_str(&format!("-a{}", self.channel_scale));
        }
        if self.rho != 1.0 {
            l.push_str(&format!("-r{}", self.rho));
        }
        if self.one_block {
            l.push_str("-1blk");
        }
        l
    }
}

/// How candidates become graphs: the base model and its input.
#[derive(Debug, Clone)]
pub struct SpecFactory {
    /// Model name (`resnet18`, `hrn-2x5x3x`, …).
    pub model: String,
    /// HRN base channels.
    pub base_channels: Option<usize>,
    /// Width multiplier of the base network.
    pub width: f64,
    /// The dataset's input shape.
    pub native: FeatureShape,
    /// Classes.
    pub classes: usize,
    /// Counting convention.
    pub convention: Convention,
}

impl SpecFactory {
    /// The architecture with channel scale `alpha` (and one block per stage).
    pub fn spec(&self, alpha: f64, one_block: bool) -> Result<ArchSpec, ModelError> {
        let spec = arch::resolve(&self.model, self.base_channels, self.width * alpha)?;
        Ok(if one_block {
            arch::one_block_per_stage(&spec)
        } else {
            spec
        })
    }

    /// The unpruned base graph.
    pub fn base(&self) -> Result<Graph, ModelError> {
        self.spec(1.0, false)?
            .build(self.native, self.classes, Init::Zeros)
    }

    /// The candidate's architecture: [`SpecFactory::spec`], with ReLU-reuse
    /// ×N in the stages not culled when the pattern asks for it.
    pub fn candidate_spec(&self, c: &Candidate) -> Result<ArchSpec, ModelError> {
        let spec = self.spec(c.channel_scale, c.one_block)?;
        reuse_spec(spec, &c.pattern)
    }

    /// The candidate's graph with its pattern applied (zero weights).
    pub fn graph(&self, c: &Candidate) -> Result<Graph, ModelError> {
        let input = arch::input_shape(self.native, c.rho)?;
        let mut g = self
            .candidate_spec(c)?
            .build(input, self.classes, Init::Zeros)?;
        c.pattern.apply(&mut g)?;
        Ok(g)
    }

    /// Counted ReLUs of a candidate.
    pub fn relus(&self, c: &Candidate) -> Result<i64, ModelError> {
        Ok(relu_count(&self.graph(c)?, self.convention) as i64)
    }
}

/// `spec` with the pattern's ReLU-reuse in every stage it does not cull
/// (Algorithm 2: `ReuseReLU` on the culled and thinned network); `spec`
/// itself without reuse. Errors name what cannot be built (e.g. a stage too
/// narrow for three channel groups).
pub fn reuse_spec(spec: ArchSpec, pattern: &Pattern) -> Result<ArchSpec, ModelError> {
    if pattern.relu_reuse <= 1 {
        return Ok(spec);
    }
    let n_stages = match &spec {
        ArchSpec::Resnet { widths, .. } => widths.len(),
        other => {
            return Err(ModelError::UnknownArch {
                name: format!("ReLU-reuse on {}", other.name()),
                expected: "a ResNet with basic blocks (hrn-AxBxCx-mM, resnet18, resnet34)".into(),
            })
        }
    };
    let stages: Vec<usize> = (1..=n_stages)
        .filter(|s| !pattern.culled.contains(s))
        .collect();
    ArchSpec::relu_reuse(spec, pattern.relu_reuse, &stages)
}

/// DeepReDuce's candidates: for `i = 1..D−1`, cull the `i` least critical
/// stages, then {culled, +thinned, +thinned α=0.5, +thinned ρ=0.5,
/// +thinned α=ρ=0.5} (5 per iteration, §3.5), plus the one-block-per-stage
/// variant of the last (Table 4's 7.17K row).
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
            relu_reuse: 0,
        };
        let thin = Pattern {
            thinned: true,
            ..base.clone()
        };
        for (pattern, a, r, one_block) in [
            (base, 1.0, 1.0, false),
            (thin.clone(), 1.0, 1.0, false),
            (thin.clone(), 0.5, 1.0, false),
            (thin.clone(), 1.0, 0.5, false),
            (thin.clone(), 0.5, 0.5, false),
            (thin, 0.5, 0.5, true),
        ] {
            out.push(Candidate {
                pattern,
                channel_scale: a,
                rho: r,
                one_block,
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
