//! The pruning methods and their pipelines.
//!
//! * [`snl`]: learnable per-element masks with a lasso penalty, exact top-N
//!   threshold, KD fine-tuning;
//! * [`deepreduce`]: criticality, Culling, Thinning, Reshaping, KD, Pareto set;
//! * DeepReShape: HybReNets with Algorithm 2's coarse steps (Culling of a
//!   dominating least-critical stage, Thinning, α=0.5, channel-group ReLUs).

pub mod deepreduce;
pub mod snl;

use std::path::PathBuf;

use serde::Serialize;
use tch::Device;
use thiserror::Error;

use crate::data::{DatasetKind, Preprocess};
use crate::net::{ArchSpec, NetError, Network};
use crate::train::{KdConfig, NoHooks, TrainConfig, TrainError, Trainer};
use deepreduce::{Candidate, Pattern};

/// Errors of the method pipelines (all raised before training where possible).
#[derive(Debug, Error)]
pub enum MethodError {
    /// The budget is not a positive count within the network's ReLUs.
    #[error("budget {budget} is invalid: {model} has {total} ReLUs; ask for 1..={total}")]
    Budget {
        /// Requested.
        budget: i64,
        /// Network name.
        model: String,
        /// Its ReLUs.
        total: i64,
    },
    /// A coarse method cannot get as low as the budget.
    #[error("{method}: no candidate has at most {budget} ReLUs (smallest achievable: {smallest})")]
    Unreachable {
        /// Method.
        method: &'static str,
        /// Requested.
        budget: i64,
        /// Smallest count the method can produce.
        smallest: i64,
    },
    /// An option does not fit the method.
    #[error("{method}: {reason}")]
    Option {
        /// Method.
        method: &'static str,
        /// Why.
        reason: String,
    },
    /// Building a network failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// Training failed.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// libtorch failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// A trained network a pipeline produced.
#[derive(Debug)]
pub struct Produced {
    /// Label (`snl`, `cull-S1-thin-a0.5`, …).
    pub label: String,
    /// The network.
    pub net: Network,
    /// Its test accuracy.
    pub accuracy: f64,
}

/// A summary row for logs and the Pareto listing.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Label.
    pub label: String,
    /// Kept ReLUs.
    pub relus: i64,
    /// Test accuracy.
    pub accuracy: f64,
    /// Candidate (coarse methods).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate: Option<Candidate>,
}

/// What every pipeline needs.
pub struct Context<'a> {
    /// Training context.
    pub trainer: Trainer<'a>,
    /// Phase hyper-parameters (teacher, probes, fine-tuning).
    pub train: TrainConfig,
    /// KD settings.
    pub kd: KdConfig,
    /// Device.
    pub device: Device,
    /// Dataset.
    pub dataset: DatasetKind,
    /// A saved all-ReLU teacher (store file of the same architecture) to use
    /// instead of training one.
    pub teacher: Option<PathBuf>,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("dataset", &self.dataset)
            .field("device", &self.device)
            .finish()
    }
}

/// Checks `0 < budget ≤` the full network's ReLUs.
pub fn check_budget(spec: &ArchSpec, budget: i64) -> Result<(), MethodError> {
    let total = spec.full_relus();
    if budget <= 0 || budget > total {
        return Err(MethodError::Budget {
            budget,
            model: spec.name.clone(),
            total,
        });
    }
    Ok(())
}

impl Context<'_> {
    fn use_spec(&mut self, spec: &ArchSpec) {
        self.trainer.pre = Preprocess::new(self.dataset, spec.input_size, self.device);
    }

    /// Trains (or loads) the all-ReLU teacher of `spec`.
    pub fn teacher(&mut self, spec: &ArchSpec) -> Result<(Network, f64), MethodError> {
        let mut net = Network::new(spec, self.device);
        self.use_spec(spec);
        self.trainer.teacher_pre = self.trainer.pre.clone();
        let acc = if let Some(path) = &self.teacher {
            net.load(path)?;
            if net.relu_count() != spec.full_relus() {
                return Err(MethodError::Option {
                    method: "teacher",
                    reason: format!("{} is not an all-ReLU network", path.display()),
                });
            }
            self.trainer.evaluate(&net)?
        } else {
            let cfg = self.train.clone();
            self.trainer
                .run_phase("teacher", &mut net, None, self.kd, &cfg, &mut NoHooks)?
        };
        eprintln!(
            "teacher: {} ReLUs, test accuracy {acc:.4}",
            net.relu_count()
        );
        Ok((net, acc))
    }

    /// Trains a candidate with KD from `teacher`; weights start from the
    /// teacher's when the channel widths are unchanged.
    pub fn train_candidate(
        &mut self,
        phase: &str,
        spec: &ArchSpec,
        pattern: &Pattern,
        teacher: &Network,
    ) -> Result<Produced, MethodError> {
        let mut net = Network::new(spec, self.device);
        if spec.widths == teacher.spec.widths && spec.stem_width == teacher.spec.stem_width {
            net.copy_weights_from(teacher)?;
        }
        pattern.apply(&mut net);
        self.use_spec(spec);
        let cfg = self.train.clone();
        let accuracy =
            self.trainer
                .run_phase(phase, &mut net, Some(teacher), self.kd, &cfg, &mut NoHooks)?;
        Ok(Produced {
            label: phase.to_string(),
            net,
            accuracy,
        })
    }
}

/// Settings of the SNL pipeline.
#[derive(Debug, Clone)]
pub struct SnlRun {
    /// Search settings.
    pub snl: snl::SnlConfig,
    /// Maximum search epochs.
    pub search_epochs: usize,
    /// Search-phase training settings.
    pub search: TrainConfig,
}

/// SNL: teacher, α search under a rising λ, exact top-N threshold, KD fine-tuning.
pub fn run_snl(
    ctx: &mut Context<'_>,
    spec: &ArchSpec,
    run: &SnlRun,
) -> Result<Produced, MethodError> {
    check_budget(spec, run.snl.budget)?;
    let (teacher, _) = ctx.teacher(spec)?;
    let mut net = Network::new(spec, ctx.device);
    net.copy_weights_from(&teacher)?;
    net.attach_alphas();
    let mut search = snl::SnlSearch::new(run.snl.clone());
    let mut cfg = run.search.clone();
    cfg.epochs = run.search_epochs;
    ctx.trainer.run_phase(
        "snl-search",
        &mut net,
        Some(&teacher),
        ctx.kd,
        &cfg,
        &mut search,
    )?;
    let above = snl::alpha_count(&net, run.snl.threshold);
    if !search.reached {
        eprintln!(
            "snl: the search ended with {above} alphas above the threshold (budget {}); the top-{} alphas are kept anyway",
            run.snl.budget, run.snl.budget
        );
    }
    let kept = snl::threshold_top_n(&mut net, run.snl.budget);
    eprintln!("snl: kept exactly {kept} ReLUs (budget {})", run.snl.budget);
    let cfg = ctx.train.clone();
    let accuracy = ctx.trainer.run_phase(
        "snl-finetune",
        &mut net,
        Some(&teacher),
        ctx.kd,
        &cfg,
        &mut NoHooks,
    )?;
    ctx.trainer.log.results.push(serde_json::json!({
        "method": "snl",
        "budget": run.snl.budget,
        "relus": net.relu_count(),
        "search_reached_budget": search.reached,
        "alphas_above_threshold_after_search": above,
        "final_lambda": search.lambda,
        "accuracy": accuracy,
    }));
    Ok(Produced {
        label: "snl".into(),
        net,
        accuracy,
    })
}

/// How a coarse method builds candidate specs from the base model.
#[derive(Debug, Clone)]
pub struct SpecFactory {
    /// Model name.
    pub model: String,
    /// Classes.
    pub classes: i64,
    /// Native input side.
    pub native: i64,
    /// Width multiplier of the base network.
    pub width: f64,
    /// HRN base channels.
    pub base_channels: Option<i64>,
}

impl SpecFactory {
    /// The spec with Reshaping (α channel scale, ρ resolution scale) applied.
    pub fn spec(&self, channel_scale: f64, rho: f64) -> Result<ArchSpec, NetError> {
        ArchSpec::named(
            &self.model,
            self.classes,
            self.native,
            self.width * channel_scale,
            rho,
            self.base_channels,
        )
    }

    /// ReLUs of a candidate.
    pub fn relus(&self, c: &Candidate) -> Result<i64, NetError> {
        Ok(c.pattern.relu_count(&self.spec(c.channel_scale, c.rho)?))
    }
}

/// Picks the candidate with the most ReLUs not above `budget` (ties: first).
pub fn pick(
    method: &'static str,
    factory: &SpecFactory,
    candidates: &[Candidate],
    budget: i64,
) -> Result<(usize, i64), MethodError> {
    let mut best: Option<(usize, i64)> = None;
    let mut smallest = i64::MAX;
    for (i, c) in candidates.iter().enumerate() {
        let r = factory.relus(c)?;
        smallest = smallest.min(r);
        if r <= budget && best.is_none_or(|(_, b)| r > b) {
            best = Some((i, r));
        }
    }
    best.ok_or(MethodError::Unreachable {
        method,
        budget,
        smallest,
    })
}

/// Every permutation of `1..=d` (d ≤ 6).
fn permutations(d: usize) -> Vec<Vec<usize>> {
    if d == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(d - 1) {
        for pos in 0..=p.len() {
            let mut q = p.clone();
            q.insert(pos, d);
            out.push(q);
        }
    }
    out
}

/// The smallest count DeepReDuce can reach over every possible criticality order.
pub fn deepreduce_floor(factory: &SpecFactory, stages: usize) -> Result<i64, NetError> {
    let mut floor = i64::MAX;
    for order in permutations(stages) {
        for c in deepreduce::deepreduce_candidates(&order) {
            floor = floor.min(factory.relus(&c)?);
        }
    }
    Ok(floor)
}

/// Settings of the coarse pipelines.
#[derive(Debug, Clone)]
pub struct CoarseRun {
    /// Budget (the largest candidate not above it is chosen).
    pub budget: i64,
    /// Criticality order (least → most critical) given by the user, skipping the probes.
    pub order: Option<Vec<usize>>,
    /// Train every candidate (the Pareto set) instead of only the chosen one.
    pub pareto: bool,
}

/// DeepReDuce: teacher, criticality probes (Eq. 1), candidates from
/// Culling/Thinning/Reshaping, KD training, Pareto set. Returns the trained
/// networks; the first is the one chosen for the budget.
pub fn run_deepreduce(
    ctx: &mut Context<'_>,
    factory: &SpecFactory,
    run: &CoarseRun,
) -> Result<Vec<Produced>, MethodError> {
    let base = factory.spec(1.0, 1.0)?;
    check_budget(&base, run.budget)?;
    let stages = base.blocks.len();
    let floor = deepreduce_floor(factory, stages)?;
    if run.budget < floor {
        return Err(MethodError::Unreachable {
            method: "deepreduce",
            budget: run.budget,
            smallest: floor,
        });
    }
    if let Some(order) = &run.order {
        check_order(order, stages)?;
    }
    let (teacher, teacher_acc) = ctx.teacher(&base)?;
    let order = match &run.order {
        Some(o) => o.clone(),
        None => {
            let mut acc = Vec::new();
            let mut relus = Vec::new();
            for k in 1..=stages {
                let pattern = Pattern::only_stage(k, stages);
                let p = ctx.train_candidate(&format!("crit-S{k}"), &base, &pattern, &teacher)?;
                acc.push(100.0 * p.accuracy);
                relus.push(p.net.relu_count());
            }
            let c = deepreduce::criticality(&acc, &relus, deepreduce::CRITICALITY_WEIGHT);
            let order = deepreduce::culling_order(&c);
            ctx.trainer.log.results.push(serde_json::json!({
                "criticality": { "accuracy_percent": acc, "relus": relus, "c_k": c, "order_least_to_most": order }
            }));
            eprintln!("deepreduce: C_k = {c:?}, culling order {order:?}");
            order
        }
    };
    let candidates = deepreduce::deepreduce_candidates(&order);
    train_candidates(
        ctx,
        "deepreduce",
        factory,
        &candidates,
        run,
        &teacher,
        teacher_acc,
    )
}

/// DeepReShape (Algorithm 2) on a HybReNet: cull the least critical stage if
/// it holds the most ReLUs, thin the rest, then α=0.5 channel scaling or
/// channel-group ReLUs with factors 4, 8, 16.
pub fn run_deepreshape(
    ctx: &mut Context<'_>,
    factory: &SpecFactory,
    run: &CoarseRun,
) -> Result<Vec<Produced>, MethodError> {
    if !factory.model.to_ascii_lowercase().starts_with("hrn-") {
        return Err(MethodError::Option {
            method: "deepreshape",
            reason: format!(
                "model {:?} is not a HybReNet; use --model hrn-AxBxCx (e.g. hrn-2x5x3x) with --base-channels",
                factory.model
            ),
        });
    }
    let base = factory.spec(1.0, 1.0)?;
    check_budget(&base, run.budget)?;
    let stages = base.blocks.len();
    // DeepReShape's ResNet-18 criticality order, least to most: S1 < S4 < S2 < S3.
    let order = run.order.clone().unwrap_or_else(|| vec![1, 4, 2, 3]);
    check_order(&order, stages)?;
    let candidates = deepreshape_candidates(&base, &order);
    pick("deepreshape", factory, &candidates, run.budget)?;
    let (teacher, teacher_acc) = ctx.teacher(&base)?;
    train_candidates(
        ctx,
        "deepreshape",
        factory,
        &candidates,
        run,
        &teacher,
        teacher_acc,
    )
}

/// Algorithm 2's candidates for `base` and the criticality order.
pub fn deepreshape_candidates(base: &ArchSpec, order: &[usize]) -> Vec<Candidate> {
    let per_stage = {
        let full = Pattern::full();
        let mut v = vec![0i64; base.blocks.len() + 1];
        for s in base.site_layout() {
            if full.site_active(&s) {
                v[s.stage] += s.numel();
            }
        }
        v
    };
    let least = order[0];
    let dominates = (1..per_stage.len()).all(|s| s == least || per_stage[least] >= per_stage[s]);
    let culled = if dominates { vec![least] } else { vec![] };
    let thin = Pattern {
        culled,
        thinned: true,
        keep_stem: false,
        group_factor: 1,
    };
    let mut out = vec![
        Candidate {
            pattern: Pattern::full(),
            channel_scale: 1.0,
            rho: 1.0,
        },
        Candidate {
            pattern: thin.clone(),
            channel_scale: 1.0,
            rho: 1.0,
        },
        Candidate {
            pattern: thin.clone(),
            channel_scale: 0.5,
            rho: 1.0,
        },
    ];
    for n in [4, 8, 16] {
        out.push(Candidate {
            pattern: Pattern {
                group_factor: n,
                ..thin.clone()
            },
            channel_scale: 1.0,
            rho: 1.0,
        });
    }
    out
}

fn check_order(order: &[usize], stages: usize) -> Result<(), MethodError> {
    let mut sorted = order.to_vec();
    sorted.sort_unstable();
    if sorted != (1..=stages).collect::<Vec<_>>() {
        return Err(MethodError::Option {
            method: "criticality order",
            reason: format!("{order:?} is not a permutation of the stages 1..={stages}"),
        });
    }
    Ok(())
}

fn train_candidates(
    ctx: &mut Context<'_>,
    method: &'static str,
    factory: &SpecFactory,
    candidates: &[Candidate],
    run: &CoarseRun,
    teacher: &Network,
    teacher_acc: f64,
) -> Result<Vec<Produced>, MethodError> {
    let (chosen, relus) = pick(method, factory, candidates, run.budget)?;
    eprintln!(
        "{method}: budget {} → {} with {relus} ReLUs (nearest achievable not above the budget)",
        run.budget,
        candidates[chosen].label()
    );
    let indices: Vec<usize> = if run.pareto {
        std::iter::once(chosen)
            .chain((0..candidates.len()).filter(|&i| i != chosen))
            .collect()
    } else {
        vec![chosen]
    };
    let mut produced = Vec::new();
    let mut rows = Vec::new();
    for i in indices {
        let c = &candidates[i];
        let spec = factory.spec(c.channel_scale, c.rho)?;
        let p = ctx.train_candidate(&c.label(), &spec, &c.pattern, teacher)?;
        rows.push(Summary {
            label: p.label.clone(),
            relus: p.net.relu_count(),
            accuracy: p.accuracy,
            candidate: Some(c.clone()),
        });
        produced.push(p);
    }
    let points: Vec<(i64, f64)> = rows.iter().map(|r| (r.relus, r.accuracy)).collect();
    let front = deepreduce::pareto_front(&points);
    ctx.trainer.log.results.push(serde_json::json!({
        "method": method,
        "budget": run.budget,
        "chosen": candidates[chosen].label(),
        "chosen_relus": relus,
        "teacher_accuracy": teacher_acc,
        "trained": rows,
        "pareto": front.iter().map(|&i| rows[i].label.clone()).collect::<Vec<_>>(),
    }));
    Ok(produced)
}
