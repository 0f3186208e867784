//! The pruning methods and their pipelines.
//!
//! * [`snl`]: learnable per-element α with a lasso penalty (SNL's recipe);
//! * [`deepreduce`]: criticality, Culling, Thinning, Reshaping, KD, Pareto set;
//! * DeepReShape: HybReNets with Algorithm 2's coarse steps (Culling of a
//!   dominating least-critical stage, Thinning, α=0.5, ReLU-reuse ×4/8/16);
//! * [`autorep`], [`relupruner`], [`privshap`]: see their modules.

pub mod autorep;
pub mod deepreduce;
pub mod privshap;
pub mod relupruner;
pub mod snl;

use std::path::PathBuf;

use pibench_models::count::{relu_count, Convention};
use pibench_models::graph::Network as Graph;
use serde::Serialize;
use tch::Device;
use thiserror::Error;

use crate::data::{DatasetKind, Preprocess};
use crate::net::{Net, NetError, Weights};
use crate::train::{KdConfig, NoHooks, PhaseResult, TrainConfig, TrainError, Trainer};
use deepreduce::{Candidate, Pattern, SpecFactory};

/// Errors of the method pipelines (all raised before training where possible).
#[derive(Debug, Error)]
pub enum MethodError {
    /// The budget is not a positive count within the network's ReLUs.
    #[error("budget {budget} is invalid: {model} has {total} ReLUs under the run's counting convention; ask for 1..={total}")]
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
    /// A method could not meet its budget exactly.
    #[error("{method}: ended with {got} ReLUs, the budget is {budget}")]
    Missed {
        /// Method.
        method: &'static str,
        /// Requested.
        budget: i64,
        /// Reached.
        got: i64,
    },
    /// Building a network failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The models crate refused something.
    #[error(transparent)]
    Model(#[from] pibench_models::ModelError),
    /// Importing a teacher checkpoint failed.
    #[error(transparent)]
    Import(#[from] pibench_models::import::ImportError),
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
    pub net: Net,
    /// Its validation and test accuracy.
    pub result: PhaseResult,
}

/// A summary row for logs and the Pareto listing.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Label.
    pub label: String,
    /// Counted ReLUs.
    pub relus: i64,
    /// Validation accuracy (the Pareto front is computed on it).
    pub val_acc: f64,
    /// Test accuracy (reported).
    pub test_acc: f64,
    /// Candidate (coarse methods).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate: Option<Candidate>,
}

/// Where the teacher comes from when it is not trained.
#[derive(Debug, Clone)]
pub struct TeacherFile {
    /// The file: a piprune store (`<out>.ckpt/teacher.safetensors`), a
    /// pibench model file, or a PyTorch checkpoint (`.pth`, `.pth.tar`, `.pt`).
    pub path: PathBuf,
    /// Naming scheme of a PyTorch checkpoint.
    pub scheme: pibench_models::import::schemes::Scheme,
}

/// What every pipeline needs.
pub struct Context<'a> {
    /// Training context.
    pub trainer: Trainer<'a>,
    /// Phase hyper-parameters (teacher, probes, candidates, fine-tuning).
    pub train: TrainConfig,
    /// KD settings.
    pub kd: KdConfig,
    /// Device.
    pub device: Device,
    /// Dataset.
    pub dataset: DatasetKind,
    /// A saved all-ReLU teacher to use instead of training one.
    pub teacher: Option<TeacherFile>,
    /// Which sites count (and may be pruned).
    pub convention: Convention,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("dataset", &self.dataset)
            .field("device", &self.device)
            .finish()
    }
}

/// Checks `0 < budget ≤` the graph's counted elements.
pub fn check_budget(graph: &Graph, convention: Convention, budget: i64) -> Result<(), MethodError> {
    let total = relu_count(graph, convention) as i64;
    if budget <= 0 || budget > total {
        return Err(MethodError::Budget {
            budget,
            model: graph.name.clone(),
            total,
        });
    }
    Ok(())
}

/// `graph` with every site its convention does not count made the identity
/// (SNL's and ReLUPruner's networks have no stem ReLU, SNL's WRN no final ReLU).
pub fn uncounted_identity(graph: &Graph, convention: Convention) -> Graph {
    let mut g = graph.clone();
    for s in g.sites_mut() {
        if !convention.counts(s.role) {
            s.fill_mask(0);
        }
    }
    g
}

fn is_pytorch_file(path: &std::path::Path) -> bool {
    let name = path.to_string_lossy().to_ascii_lowercase();
    name.ends_with(".pth")
        || name.ends_with(".pth.tar")
        || name.ends_with(".pt")
        || name.ends_with(".tar")
}

impl Context<'_> {
    /// Points the preprocessing at `net`'s input resolution.
    pub fn use_input(&mut self, graph: &Graph) {
        self.trainer.pre = Preprocess::new(self.dataset, graph.input.h as i64, self.device);
    }

    /// Trains (or loads) the teacher with `graph`'s architecture and masks.
    pub fn teacher(&mut self, graph: &Graph) -> Result<(Net, PhaseResult), MethodError> {
        self.use_input(graph);
        let mut net = match &self.teacher {
            None => Net::new(graph, self.device, self.convention, Weights::Fresh)?,
            Some(t) if is_pytorch_file(&t.path) => {
                let ckpt = pibench_models::import::pth::Checkpoint::read(&t.path)?;
                let opts = pibench_models::import::schemes::ImportOptions::new(t.scheme);
                let imp = pibench_models::import::schemes::import_checkpoint(
                    &ckpt,
                    &graph.arch,
                    graph.input,
                    graph.num_classes,
                    &opts,
                )?;
                Net::new(
                    &imp.network,
                    self.device,
                    self.convention,
                    Weights::FromGraph,
                )?
            }
            Some(t) => match pibench_models::file::load(&t.path) {
                Ok(loaded) => Net::new(
                    &loaded.network,
                    self.device,
                    self.convention,
                    Weights::FromGraph,
                )?,
                Err(_) => {
                    let mut net = Net::new(graph, self.device, self.convention, Weights::Fresh)?;
                    net.load(&t.path)?;
                    net
                }
            },
        };
        let result = if let Some(t) = &self.teacher {
            if net.relu_count() != net.full_relus() {
                return Err(MethodError::Option {
                    method: "teacher",
                    reason: format!(
                        "{} keeps {} of {} counted ReLUs; a teacher must be the all-ReLU network",
                        t.path.display(),
                        net.relu_count(),
                        net.full_relus()
                    ),
                });
            }
            if net.graph.input != graph.input || net.graph.arch != graph.arch {
                return Err(MethodError::Option {
                    method: "teacher",
                    reason: format!("{} is not a {} network", t.path.display(), graph.name),
                });
            }
            PhaseResult {
                val_acc: self.trainer.evaluate(&net)?,
                test_acc: 0.0,
            }
        } else {
            let cfg = self.train.clone();
            self.trainer
                .run_phase("teacher", &mut net, None, self.kd, &cfg, &mut NoHooks)?
        };
        eprintln!(
            "teacher: {} ReLUs, validation accuracy {:.4}",
            net.relu_count(),
            result.val_acc
        );
        Ok((net, result))
    }

    /// Trains the network `graph` (masks included) with KD from `teacher`;
    /// starts from the teacher's weights when `warm` and the shapes allow.
    pub fn train_candidate(
        &mut self,
        phase: &str,
        graph: &Graph,
        teacher: &Net,
        warm: bool,
    ) -> Result<Produced, MethodError> {
        let mut net = Net::new(graph, self.device, self.convention, Weights::Fresh)?;
        if warm {
            net.copy_weights_from(teacher);
        }
        self.use_input(graph);
        let cfg = self.train.clone();
        let result =
            self.trainer
                .run_phase(phase, &mut net, Some(teacher), self.kd, &cfg, &mut NoHooks)?;
        Ok(Produced {
            label: phase.to_string(),
            net,
            result,
        })
    }
}

/// Settings of the SNL pipeline.
#[derive(Debug, Clone)]
pub struct SnlRun {
    /// Search settings.
    pub snl: snl::SnlConfig,
    /// Search phase training settings.
    pub search: TrainConfig,
    /// Fine-tuning phase settings.
    pub finetune: TrainConfig,
}

/// SNL: teacher, α search, threshold (or top-N fallback), KD fine-tuning.
pub fn run_snl(ctx: &mut Context<'_>, base: &Graph, run: &SnlRun) -> Result<Produced, MethodError> {
    let graph = uncounted_identity(base, ctx.convention);
    check_budget(&graph, ctx.convention, run.snl.budget)?;
    let (teacher, _) = ctx.teacher(&graph)?;
    let mut net = Net::new(&graph, ctx.device, ctx.convention, Weights::Fresh)?;
    net.copy_weights_from(&teacher);
    snl::attach_alphas(&mut net);
    let mut search = snl::SnlSearch::new(run.snl.clone());
    let kd = snl::kd();
    ctx.use_input(&graph);
    ctx.trainer.run_phase(
        "snl-search",
        &mut net,
        Some(&teacher),
        kd,
        &run.search,
        &mut search,
    )?;
    let above = snl::alpha_count(&net, run.snl.threshold);
    let selection = snl::select_mask(&mut net, &run.snl, search.reached);
    match selection {
        snl::Selection::Fallback => eprintln!(
            "snl: fallback: the search ended after {} epochs with {above} alphas above {} (budget {}); \
             kept the {} largest alphas instead (ties in a seeded random order)",
            search.epochs, run.snl.threshold, run.snl.budget, run.snl.budget
        ),
        snl::Selection::Threshold => eprintln!(
            "snl: alpha > {} keeps {} ReLUs (budget {})",
            run.snl.threshold,
            net.relu_count(),
            run.snl.budget
        ),
        snl::Selection::TopN => eprintln!("snl: kept the {} largest alphas", run.snl.budget),
    }
    let result = ctx.trainer.run_phase(
        "snl-finetune",
        &mut net,
        Some(&teacher),
        kd,
        &run.finetune,
        &mut NoHooks,
    )?;
    ctx.trainer.log.results.push(serde_json::json!({
        "method": "snl",
        "budget": run.snl.budget,
        "relus": net.relu_count(),
        "search_reached_budget": search.reached,
        "selection": selection,
        "fallback_top_n": selection == snl::Selection::Fallback,
        "search_epochs": search.epochs,
        "alphas_above_threshold_after_search": above,
        "final_lambda": search.lambda,
        "val_acc": result.val_acc,
        "test_acc": result.test_acc,
    }));
    Ok(Produced {
        label: "snl".into(),
        net,
        result,
    })
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

/// Every permutation of `items`.
fn permutations(items: &[usize]) -> Vec<Vec<usize>> {
    if items.is_empty() {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(&items[1..]) {
        for pos in 0..=p.len() {
            let mut q = p.clone();
            q.insert(pos, items[0]);
            out.push(q);
        }
    }
    out
}

/// The smallest count DeepReDuce can reach over every possible criticality order.
pub fn deepreduce_floor(factory: &SpecFactory, stages: &[usize]) -> Result<i64, MethodError> {
    let mut floor = i64::MAX;
    for order in permutations(stages) {
        // The smallest candidates of an order: its last culling iteration.
        for c in deepreduce::deepreduce_candidates(&order)
            .iter()
            .rev()
            .take(6)
        {
            floor = floor.min(factory.relus(c)?);
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
    /// Start candidates whose widths are unchanged from the teacher's weights
    /// (otherwise from scratch, as the papers re-train).
    pub warm_start: bool,
}

/// DeepReDuce: teacher, criticality probes (Eq. 1, on the validation split),
/// candidates from Culling/Thinning/Reshaping, KD training, Pareto set.
/// Returns the trained networks; the first is the one chosen for the budget.
pub fn run_deepreduce(
    ctx: &mut Context<'_>,
    factory: &SpecFactory,
    run: &CoarseRun,
) -> Result<Vec<Produced>, MethodError> {
    let base = factory.base()?;
    check_budget(&base, ctx.convention, run.budget)?;
    let stages = deepreduce::stages(&base);
    let floor = deepreduce_floor(factory, &stages)?;
    if run.budget < floor {
        return Err(MethodError::Unreachable {
            method: "deepreduce",
            budget: run.budget,
            smallest: floor,
        });
    }
    if let Some(order) = &run.order {
        check_order(order, &stages)?;
    }
    let (teacher, teacher_result) = ctx.teacher(&base)?;
    let order = match &run.order {
        Some(o) => o.clone(),
        None => {
            let mut acc = Vec::new();
            let mut relus = Vec::new();
            for &k in &stages {
                let mut g = base.clone();
                Pattern::only_stage(k, &stages).apply(&mut g)?;
                // Probes are trained from scratch with KD (§3.1).
                let p = ctx.train_candidate(&format!("crit-S{k}"), &g, &teacher, false)?;
                acc.push(100.0 * p.result.val_acc);
                relus.push(p.net.relu_count());
            }
            let c = deepreduce::criticality(&acc, &relus, deepreduce::CRITICALITY_WEIGHT);
            let order: Vec<usize> = deepreduce::culling_order(&c)
                .into_iter()
                .map(|i| stages[i - 1])
                .collect();
            ctx.trainer.log.results.push(serde_json::json!({
                "criticality": { "val_accuracy_percent": acc, "relus": relus, "c_k": c, "order_least_to_most": order }
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
        teacher_result,
    )
}

/// DeepReShape (Algorithm 2) on a HybReNet: cull the least critical stage if
/// it holds the most ReLUs, thin the rest, then α=0.5 channel scaling or
/// ReLU-reuse networks with factors 4, 8, 16 (§4.2, `arch::reuse`).
pub fn run_deepreshape(
    ctx: &mut Context<'_>,
    factory: &SpecFactory,
    run: &CoarseRun,
) -> Result<Vec<Produced>, MethodError> {
    if !factory.model.to_ascii_lowercase().starts_with("hrn") {
        return Err(MethodError::Option {
            method: "deepreshape",
            reason: format!(
                "model {:?} is not a HybReNet; use --model hrn-AxBxCx (e.g. hrn-2x5x3x) with --base-channels",
                factory.model
            ),
        });
    }
    let base = factory.base()?;
    check_budget(&base, ctx.convention, run.budget)?;
    let stages = deepreduce::stages(&base);
    // DeepReShape's ResNet-18 criticality order, least to most: S1 < S4 < S2 < S3.
    let order = run.order.clone().unwrap_or_else(|| vec![1, 4, 2, 3]);
    check_order(&order, &stages)?;
    let candidates = deepreshape_candidates(&base, &order);
    pick("deepreshape", factory, &candidates, run.budget)?;
    let (teacher, teacher_result) = ctx.teacher(&base)?;
    train_candidates(
        ctx,
        "deepreshape",
        factory,
        &candidates,
        run,
        &teacher,
        teacher_result,
    )
}

/// Algorithm 2's candidates for `base` and the criticality order: the full
/// network, culled + thinned, its α = 0.5 channel scaling, and ReLU-reuse
/// ×4, ×8, ×16 of the culled + thinned network (real channel-group networks,
/// `deepreduce::Pattern::relu_reuse`; a factor whose groups do not fit the
/// widths of `base` is left out).
pub fn deepreshape_candidates(base: &Graph, order: &[usize]) -> Vec<Candidate> {
    let stages = deepreduce::stages(base);
    let per_stage = |s: usize| -> u64 {
        base.sites()
            .filter(|x| x.stage == Some(s))
            .map(|x| x.relu_count())
            .sum()
    };
    let least = order[0];
    let dominates = stages
        .iter()
        .all(|&s| s == least || per_stage(least) >= per_stage(s));
    let culled = if dominates { vec![least] } else { vec![] };
    let thin = Pattern {
        culled,
        thinned: true,
        keep_stem: false,
        group_factor: 1,
        relu_reuse: 0,
    };
    let mut out = vec![
        Candidate::plain(Pattern::full()),
        Candidate::plain(thin.clone()),
        Candidate {
            channel_scale: 0.5,
            ..Candidate::plain(thin.clone())
        },
    ];
    for n in [4, 8, 16] {
        let pattern = Pattern {
            relu_reuse: n,
            ..thin.clone()
        };
        if deepreduce::reuse_spec(base.arch.clone(), &pattern).is_ok() {
            out.push(Candidate::plain(pattern));
        }
    }
    out
}

fn check_order(order: &[usize], stages: &[usize]) -> Result<(), MethodError> {
    let mut sorted = order.to_vec();
    sorted.sort_unstable();
    if sorted != stages {
        return Err(MethodError::Option {
            method: "criticality order",
            reason: format!("{order:?} is not a permutation of the stages {stages:?}"),
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
    teacher: &Net,
    teacher_result: PhaseResult,
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
        let g = factory.graph(c)?;
        let warm = run.warm_start && c.channel_scale == 1.0 && !c.one_block;
        let p = ctx.train_candidate(&c.label(), &g, teacher, warm)?;
        rows.push(Summary {
            label: p.label.clone(),
            relus: p.net.relu_count(),
            val_acc: p.result.val_acc,
            test_acc: p.result.test_acc,
            candidate: Some(c.clone()),
        });
        produced.push(p);
    }
    let points: Vec<(i64, f64)> = rows.iter().map(|r| (r.relus, r.val_acc)).collect();
    let front = deepreduce::pareto_front(&points);
    ctx.trainer.log.results.push(serde_json::json!({
        "method": method,
        "budget": run.budget,
        "chosen": candidates[chosen].label(),
        "chosen_relus": relus,
        "teacher_val_acc": teacher_result.val_acc,
        "trained": rows,
        "pareto_on_validation": front.iter().map(|&i| rows[i].label.clone()).collect::<Vec<_>>(),
    }));
    Ok(produced)
}

/// A hook that trains the polynomial coefficients with the weights (AutoReP's fine-tuning).
#[derive(Debug, Default)]
pub struct TrainPoly;

impl crate::train::PhaseHooks for TrainPoly {
    fn method_params(&mut self, net: &Net) -> Vec<(String, tch::Tensor, usize)> {
        net.sites
            .iter()
            .filter_map(|s| {
                s.poly
                    .as_ref()
                    .map(|p| (format!("poly.{}", s.name), p.shallow_clone(), 2))
            })
            .collect()
    }
}

/// Settings of the AutoReP pipeline.
#[derive(Debug, Clone)]
pub struct AutorepRun {
    /// Method settings.
    pub cfg: autorep::AutorepConfig,
    /// Replacement phase (Adam; weights lr 1e-4, indicators `method_lr` 1e-3; cosine).
    pub replace: TrainConfig,
    /// Fine-tuning with frozen indicators.
    pub finetune: TrainConfig,
}

/// AutoReP: teacher, indicator training with hysteresis and DaPa, exact
/// budget, fine-tuning with frozen indicators.
pub fn run_autorep(
    ctx: &mut Context<'_>,
    base: &Graph,
    run: &AutorepRun,
) -> Result<Produced, MethodError> {
    let graph = uncounted_identity(base, ctx.convention);
    check_budget(&graph, ctx.convention, run.cfg.budget)?;
    let (teacher, _) = ctx.teacher(&graph)?;
    let mut net = Net::new(&graph, ctx.device, ctx.convention, Weights::Fresh)?;
    net.copy_weights_from(&teacher);
    let mut hooks = autorep::Autorep::new(&mut net, run.cfg.clone());
    let kd = snl::kd();
    ctx.use_input(&graph);
    ctx.trainer.run_phase(
        "autorep-replace",
        &mut net,
        Some(&teacher),
        kd,
        &run.replace,
        &mut hooks,
    )?;
    let before = hooks.count(&net);
    let (added, removed) = hooks.finalize(&mut net);
    eprintln!(
        "autorep: the indicators kept {before} ReLUs; made exactly {} (+{added}, -{removed} by auxiliary-parameter order)",
        net.relu_count()
    );
    let result = ctx.trainer.run_phase(
        "autorep-finetune",
        &mut net,
        Some(&teacher),
        kd,
        &run.finetune,
        &mut TrainPoly,
    )?;
    if net.relu_count() != run.cfg.budget {
        return Err(MethodError::Missed {
            method: "autorep",
            budget: run.cfg.budget,
            got: net.relu_count(),
        });
    }
    ctx.trainer.log.results.push(serde_json::json!({
        "method": "autorep",
        "budget": run.cfg.budget,
        "relus": net.relu_count(),
        "indicator_relus_before_exact": before,
        "exact_added": added,
        "exact_removed": removed,
        "poly_degree": run.cfg.poly,
        "polynomial_sites": net.sites.iter().filter(|s| s.poly.is_some()).count(),
        "val_acc": result.val_acc,
        "test_acc": result.test_acc,
    }));
    Ok(Produced {
        label: "autorep".into(),
        net,
        result,
    })
}

/// Settings of the ReLUPruner pipeline.
#[derive(Debug, Clone)]
pub struct ReluprunerRun {
    /// Method settings.
    pub cfg: relupruner::ReluprunerConfig,
    /// Pruning phase (SGD lr 0.1, momentum 0.9).
    pub prune: TrainConfig,
    /// Fine-tuning phase.
    pub finetune: TrainConfig,
    /// β of PRAM (1000).
    pub beta: f64,
}

/// ReLUPruner: teacher, progressive Taylor pruning (CE + KL), fine-tuning (CE + KL + β·PRAM).
pub fn run_relupruner(
    ctx: &mut Context<'_>,
    base: &Graph,
    run: &ReluprunerRun,
) -> Result<Produced, MethodError> {
    let graph = uncounted_identity(base, ctx.convention);
    check_budget(&graph, ctx.convention, run.cfg.budget)?;
    let (teacher, _) = ctx.teacher(&graph)?;
    let mut net = Net::new(&graph, ctx.device, ctx.convention, Weights::Fresh)?;
    net.copy_weights_from(&teacher);
    let kd = snl::kd();
    ctx.use_input(&graph);
    let mut pruner = relupruner::Pruner::new(&net, run.cfg.clone());
    ctx.trainer.run_phase(
        "relupruner-prune",
        &mut net,
        Some(&teacher),
        kd,
        &run.prune,
        &mut pruner,
    )?;
    pruner.finalize(&mut net);
    for s in &mut net.sites {
        s.probe = None;
    }
    eprintln!(
        "relupruner: {} mask updates; kept exactly {} ReLUs",
        pruner.updates,
        net.relu_count()
    );
    let mut pram = relupruner::PramFinetune::new(&net, run.beta);
    let result = ctx.trainer.run_phase(
        "relupruner-finetune",
        &mut net,
        Some(&teacher),
        kd,
        &run.finetune,
        &mut pram,
    )?;
    if net.relu_count() != run.cfg.budget {
        return Err(MethodError::Missed {
            method: "relupruner",
            budget: run.cfg.budget,
            got: net.relu_count(),
        });
    }
    ctx.trainer.log.results.push(serde_json::json!({
        "method": "relupruner",
        "budget": run.cfg.budget,
        "relus": net.relu_count(),
        "taylor_order": run.cfg.taylor_order,
        "layer_weight": run.cfg.layer_weight,
        "ema": run.cfg.ema,
        "mask_updates": pruner.updates,
        "val_acc": result.val_acc,
        "test_acc": result.test_acc,
    }));
    Ok(Produced {
        label: "relupruner".into(),
        net,
        result,
    })
}

/// Settings of the PrivShap pipeline.
#[derive(Debug, Clone)]
pub struct PrivshapRun {
    /// Budget.
    pub budget: i64,
    /// Estimator.
    pub estimator: privshap::Estimator,
    /// Tree-trimming threshold on validation accuracy (0.05).
    pub threshold: f64,
    /// Monte-Carlo permutations (also used for the comparison with `--shapley-compare`).
    pub mc_samples: usize,
    /// Also compute the Monte-Carlo estimate and log it beside the chosen one.
    pub compare: bool,
    /// Gradient-projection phase (Adam lr 1e-3).
    pub prune: TrainConfig,
    /// KD fine-tuning with frozen masks.
    pub finetune: TrainConfig,
    /// Seed of the Monte-Carlo permutations.
    pub seed: u64,
}

/// PrivShap: teacher, layer Shapley values on the validation split, budget
/// allocation, gradient-projection pruning, KD fine-tuning.
pub fn run_privshap(
    ctx: &mut Context<'_>,
    base: &Graph,
    run: &PrivshapRun,
) -> Result<Produced, MethodError> {
    check_budget(base, ctx.convention, run.budget)?;
    let (mut teacher, _) = ctx.teacher(base)?;
    let players: Vec<usize> = (0..teacher.sites.len())
        .filter(|&i| teacher.sites[i].counted)
        .collect();
    let n = players.len();
    if n > 63 {
        return Err(MethodError::Option {
            method: "privshap",
            reason: format!("{n} ReLU layers; at most 63 are supported"),
        });
    }
    if run.estimator == privshap::Estimator::Exact && n > 20 {
        return Err(MethodError::Option {
            method: "privshap",
            reason: format!(
                "exact Shapley values over {n} layers need 2^{n} evaluations; use --shapley tree"
            ),
        });
    }
    ctx.use_input(base);
    let trainer = &ctx.trainer;
    let mut eval_err: Option<TrainError> = None;
    let (sv, mc, evaluations) = {
        let mut eval = |net: &Net| match trainer.evaluate(net) {
            Ok(a) => a,
            Err(e) => {
                eval_err = Some(e);
                0.0
            }
        };
        let teacher_ref = &mut teacher;
        let players_ref = &players;
        let mut u = privshap::Utility::new(|s| {
            privshap::coalition_accuracy(teacher_ref, players_ref, s, &mut eval)
        });
        let sv = match run.estimator {
            privshap::Estimator::Tree => privshap::tree_shapley(n, &mut u, run.threshold),
            privshap::Estimator::Exact => privshap::exact_shapley(n, &mut u),
            privshap::Estimator::MonteCarlo => {
                privshap::monte_carlo_shapley(n, &mut u, run.mc_samples, run.seed)
            }
        };
        let mc = (run.compare && run.estimator != privshap::Estimator::MonteCarlo)
            .then(|| privshap::monte_carlo_shapley(n, &mut u, run.mc_samples, run.seed));
        (sv, mc, u.evaluations)
    };
    if let Some(e) = eval_err {
        return Err(e.into());
    }
    let sizes: Vec<u64> = players
        .iter()
        .map(|&i| teacher.sites[i].numel() as u64)
        .collect();
    let alloc = privshap::allocate(&sv, &sizes, run.budget as u64);
    let names: Vec<String> = players
        .iter()
        .map(|&i| teacher.sites[i].name.clone())
        .collect();
    eprintln!("privshap: {evaluations} coalitions evaluated; Shapley values {sv:?}; layer budgets {alloc:?}");
    let mut net = Net::new(base, ctx.device, ctx.convention, Weights::Fresh)?;
    net.copy_weights_from(&teacher);
    let budgets: Vec<(usize, i64)> = players
        .iter()
        .zip(&alloc)
        .map(|(&i, &k)| (i, k as i64))
        .collect();
    let mut proj = privshap::Projection::new(&mut net, budgets);
    let kd = ctx.kd;
    ctx.trainer.run_phase(
        "privshap-prune",
        &mut net,
        Some(&teacher),
        kd,
        &run.prune,
        &mut proj,
    )?;
    proj.finish(&mut net);
    let result = ctx.trainer.run_phase(
        "privshap-finetune",
        &mut net,
        Some(&teacher),
        kd,
        &run.finetune,
        &mut NoHooks,
    )?;
    if net.relu_count() != run.budget {
        return Err(MethodError::Missed {
            method: "privshap",
            budget: run.budget,
            got: net.relu_count(),
        });
    }
    ctx.trainer.log.results.push(serde_json::json!({
        "method": "privshap",
        "budget": run.budget,
        "relus": net.relu_count(),
        "estimator": run.estimator,
        "threshold": run.threshold,
        "layers": names,
        "shapley": sv,
        "shapley_monte_carlo": mc,
        "coalitions_evaluated": evaluations,
        "layer_budgets": alloc,
        "val_acc": result.val_acc,
        "test_acc": result.test_acc,
    }));
    Ok(Produced {
        label: "privshap".into(),
        net,
        result,
    })
}
