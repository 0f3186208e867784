//! SNL (Cho et al. 2022, "Selective Network Linearization"), as in its
//! published code (`snl_finetune_unstructured.py`, `utils.py`,
//! `archs_unstructured/cifar_resnet.py` of NYU-DICE-Lab/selective_network_linearization).
//!
//! * Architecture: every counted ReLU site gets `α` (`LearnableAlpha`,
//!   initialised to 1, shape `[C, H, W]`) and computes
//!   `α·ReLU(x) + (1−α)·x`. SNL's `ResNet_IN` has no ReLU after the stem and
//!   its `WideResNet` none after the final BN, and neither is counted; the
//!   pipeline therefore makes the sites its convention does not count the
//!   identity, in teacher and student alike (with `--count-stem` the stem is
//!   an ordinary α site).
//! * Search (Algorithm 1 lines 4–9): Adam (PyTorch defaults, no weight
//!   decay) over all parameters, α included, at a constant lr 1e-3 (the
//!   script's `LR=1e-3`); loss `CE + KD(T=4, batchmean·T²) + λ·Σ‖α‖₁`, the
//!   teacher being the pretrained all-ReLU network in eval mode; no clamping
//!   of α. After every epoch the ReLU count is the number of `α > 1e-2`; if it
//!   is lower than the lowest so far that becomes the lowest, otherwise — from
//!   epoch 5 on — `λ ← 1.1·λ` (λ₀ = 1e-5); the search stops after the first
//!   epoch whose count is within the budget (at most 2000 epochs).
//! * Line 11: `mask = α > threshold`, α frozen (dropped); the kept count is
//!   the last epoch's count, ≤ budget.
//! * Fallback (not in the paper): if the search runs out of epochs above the
//!   budget, the `N` largest α are kept instead — ties broken by a seeded
//!   uniformly random order (ChaCha8, the run's seed), so that no layer is
//!   favoured by its position — and the log and stdout say so.
//! * Line 12, fine-tuning: SGD lr 1e-3, momentum 0.9, weight decay 5e-4,
//!   cosine over the fine-tuning epochs, loss `CE + KD(T=4)`.
//!
//! The previous front-end's choices remain available: `--snl-select top-n`
//! (exactly `N` kept), `--snl-stop step` (stop at the first step within
//! budget), `--alpha-clamp` (α clamped to [0, 1] after each step),
//! `--lambda-schedule grow` (`λ ← growth·λ` after every epoch above budget).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::net::{nested, Net};
use crate::train::{Control, KdConfig, OptimizerKind, PhaseHooks, Schedule, TrainConfig};

/// How λ changes between epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LambdaSchedule {
    /// SNL's code: ×growth when the count did not reach a new low, from epoch `patience` on.
    Snl,
    /// ×growth after every epoch that ends above the budget.
    Grow,
}

/// How the final mask is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Select {
    /// SNL: `α > threshold` (≤ budget).
    Threshold,
    /// Exactly the `N` largest α.
    TopN,
}

/// When the search may stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Stop {
    /// After the first epoch within budget (SNL).
    Epoch,
    /// After the first step within budget.
    Step,
}

/// SNL's search settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnlConfig {
    /// Requested ReLU count.
    pub budget: i64,
    /// Initial lasso weight λ (SNL: 1e-5).
    pub lambda: f64,
    /// Factor applied to λ (SNL: 1.1).
    pub lambda_growth: f64,
    /// λ schedule.
    pub schedule: LambdaSchedule,
    /// First epoch at which λ may grow under [`LambdaSchedule::Snl`] (SNL: 5).
    pub patience: usize,
    /// An α above this counts as a ReLU (SNL: 1e-2).
    pub threshold: f64,
    /// Clamp α into [0, 1] after every step (not in SNL).
    pub clamp: bool,
    /// Stopping granularity.
    pub stop: Stop,
    /// Final selection.
    pub select: Select,
    /// Seed of the tie-breaking order.
    pub seed: u64,
}

impl SnlConfig {
    /// SNL's published settings for `budget`.
    pub fn published(budget: i64, seed: u64) -> SnlConfig {
        SnlConfig {
            budget,
            lambda: 1e-5,
            lambda_growth: 1.1,
            schedule: LambdaSchedule::Snl,
            patience: 5,
            threshold: 1e-2,
            clamp: false,
            stop: Stop::Epoch,
            select: Select::Threshold,
            seed,
        }
    }
}

/// The search phase's training settings from the run's (batch size, seed,
/// AMP, step cap): Adam, constant `lr` on all parameters, no weight decay.
pub fn search_config(base: &TrainConfig, epochs: usize, lr: f64) -> TrainConfig {
    TrainConfig {
        epochs,
        lr,
        optimizer: OptimizerKind::Adam,
        weight_decay: 0.0,
        schedule: Schedule::Constant,
        method_lr: None,
        ..base.clone()
    }
}

/// The fine-tuning phase's settings: SGD lr `lr` (SNL: 1e-3), momentum 0.9,
/// weight decay 5e-4, cosine over `epochs`.
pub fn finetune_config(base: &TrainConfig, epochs: usize, lr: f64) -> TrainConfig {
    TrainConfig {
        epochs,
        lr,
        optimizer: OptimizerKind::Sgd,
        momentum: 0.9,
        nesterov: false,
        weight_decay: 5e-4,
        schedule: Schedule::Cosine,
        method_lr: None,
        ..base.clone()
    }
}

/// SNL's loss weights: `CE + KD(T = 4)`.
pub fn kd() -> KdConfig {
    KdConfig {
        temperature: 4.0,
        ce_weight: 1.0,
        kd_weight: 1.0,
    }
}

/// λ after an epoch that ended with `count` α above the threshold
/// (`lowest` is updated): SNL's rule or the plain growth rule.
pub fn next_lambda(
    cfg: &SnlConfig,
    lambda: f64,
    epoch: usize,
    count: i64,
    lowest: &mut i64,
) -> f64 {
    match cfg.schedule {
        LambdaSchedule::Snl => {
            if count < *lowest {
                *lowest = count;
                lambda
            } else if epoch >= cfg.patience {
                lambda * cfg.lambda_growth
            } else {
                lambda
            }
        }
        LambdaSchedule::Grow => {
            if count > cfg.budget {
                lambda * cfg.lambda_growth
            } else {
                lambda
            }
        }
    }
}

/// Gives every counted site a trainable `α = 1` (`alphas.<site>`), used as its gate.
pub fn attach_alphas(net: &mut Net) {
    let root = net.vs.root();
    for site in net.sites.iter_mut().filter(|s| s.counted) {
        let (p, leaf) = nested(&root / "alphas", &site.name);
        let a = p.var_copy(
            leaf,
            &Tensor::ones(site.shape, (Kind::Float, net.vs.device())),
        );
        site.gate = Some(a);
    }
}

/// The α of every counted site (site index, tensor).
pub fn alphas(net: &Net) -> Vec<(usize, Tensor)> {
    net.sites
        .iter()
        .enumerate()
        .filter(|(_, s)| s.counted)
        .filter_map(|(i, s)| s.gate.as_ref().map(|g| (i, g.shallow_clone())))
        .collect()
}

/// Number of α above `threshold` (one host synchronisation).
pub fn alpha_count(net: &Net, threshold: f64) -> i64 {
    tch::no_grad(|| {
        alphas(net)
            .iter()
            .map(|(_, a)| a.gt(threshold).sum(Kind::Int64))
            .reduce(|x, y| x + y)
            .map_or(0, |t| t.int64_value(&[]))
    })
}

/// Search-phase hooks: α as method parameters, lasso penalty, λ schedule, stop rule.
#[derive(Debug)]
pub struct SnlSearch {
    /// Settings.
    pub cfg: SnlConfig,
    /// Current λ.
    pub lambda: f64,
    /// Lowest count so far.
    pub lowest: i64,
    /// Whether the α-count reached the budget.
    pub reached: bool,
    /// Epochs run.
    pub epochs: usize,
    /// Count after the last epoch.
    pub count: i64,
}

impl SnlSearch {
    /// A search starting at `cfg.lambda`.
    pub fn new(cfg: SnlConfig) -> SnlSearch {
        let lambda = cfg.lambda;
        SnlSearch {
            cfg,
            lambda,
            lowest: i64::MAX,
            reached: false,
            epochs: 0,
            count: i64::MAX,
        }
    }
}

impl PhaseHooks for SnlSearch {
    fn method_params(&mut self, net: &Net) -> Vec<(String, Tensor, usize)> {
        alphas(net)
            .into_iter()
            .map(|(i, a)| (format!("alphas.{}", net.sites[i].name), a, 1))
            .collect()
    }

    fn extra_loss(&mut self, net: &Net) -> Option<Tensor> {
        // Σ_sites ‖α‖₁, as `reg_loss += torch.norm(param, p=1)`.
        alphas(net)
            .iter()
            .map(|(_, a)| a.abs().sum(Kind::Float))
            .reduce(|x, y| x + y)
            .map(|l1| l1 * self.lambda)
    }

    fn after_step(&mut self, net: &mut Net) -> Control {
        if self.cfg.clamp {
            tch::no_grad(|| {
                for (_, a) in alphas(net) {
                    let _ = a.shallow_clone().clamp_(0.0, 1.0);
                }
            });
        }
        if self.cfg.stop == Stop::Step && alpha_count(net, self.cfg.threshold) <= self.cfg.budget {
            self.reached = true;
            return Control::Stop;
        }
        Control::Continue
    }

    fn after_epoch(
        &mut self,
        epoch: usize,
        net: &mut Net,
        _val: f64,
    ) -> (Control, serde_json::Value) {
        let count = alpha_count(net, self.cfg.threshold);
        let lambda_used = self.lambda;
        self.count = count;
        self.epochs = epoch + 1;
        self.lambda = next_lambda(&self.cfg, self.lambda, epoch, count, &mut self.lowest);
        self.reached = self.reached || count <= self.cfg.budget;
        eprintln!(
            "snl: {count} alphas above {} (budget {}), lambda {lambda_used:.4e}",
            self.cfg.threshold, self.cfg.budget
        );
        let extra = serde_json::json!({ "lambda": lambda_used, "alpha_count": count });
        (
            if self.reached {
                Control::Stop
            } else {
                Control::Continue
            },
            extra,
        )
    }

    fn state(&self) -> serde_json::Value {
        serde_json::json!({
            "lambda": self.lambda, "lowest": self.lowest, "reached": self.reached,
            "epochs": self.epochs, "count": self.count,
        })
    }

    fn restore(&mut self, s: &serde_json::Value) {
        if let Some(v) = s.get("lambda").and_then(|v| v.as_f64()) {
            self.lambda = v;
        }
        if let Some(v) = s.get("lowest").and_then(|v| v.as_i64()) {
            self.lowest = v;
        }
        if let Some(v) = s.get("reached").and_then(|v| v.as_bool()) {
            self.reached = v;
        }
        if let Some(v) = s.get("epochs").and_then(|v| v.as_u64()) {
            self.epochs = v as usize;
        }
        if let Some(v) = s.get("count").and_then(|v| v.as_i64()) {
            self.count = v;
        }
    }
}

/// Indices of the `n` largest values, ties broken by a seeded random order
/// (the rule SNL's fallback uses; see the module doc).
pub fn top_n_indices(values: &[f32], n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5e1e_c7ed));
    // Stable sort by descending value: equal values keep the shuffled order.
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    order.truncate(n);
    order
}

/// How the final mask was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Selection {
    /// `α > threshold`.
    Threshold,
    /// Top-N (requested).
    TopN,
    /// Top-N because the search ended above the budget.
    Fallback,
}

/// Turns the α into masks (removing them) and returns how it chose.
pub fn select_mask(net: &mut Net, cfg: &SnlConfig, reached: bool) -> Selection {
    let sel = match (cfg.select, reached) {
        (Select::Threshold, true) => Selection::Threshold,
        (Select::Threshold, false) => Selection::Fallback,
        (Select::TopN, _) => Selection::TopN,
    };
    let list = alphas(net);
    let flat: Vec<f32> = {
        let parts: Vec<Tensor> = list
            .iter()
            .map(|(_, a)| {
                a.detach()
                    .to_kind(Kind::Float)
                    .flatten(0, -1)
                    .to_device(Device::Cpu)
            })
            .collect();
        if parts.is_empty() {
            Vec::new()
        } else {
            Vec::<f32>::try_from(&Tensor::cat(&parts, 0)).unwrap_or_default()
        }
    };
    let keep: Vec<f32> = match sel {
        Selection::Threshold => flat
            .iter()
            .map(|&a| f32::from(u8::from(a as f64 > cfg.threshold)))
            .collect(),
        Selection::TopN | Selection::Fallback => {
            let mut k = vec![0f32; flat.len()];
            for i in top_n_indices(&flat, cfg.budget.max(0) as usize, cfg.seed) {
                k[i] = 1.0;
            }
            k
        }
    };
    let mut offset = 0usize;
    for (i, _) in list {
        let n = net.sites[i].numel() as usize;
        let shape = net.sites[i].shape;
        let mask = Tensor::from_slice(&keep[offset..offset + n]).view(shape);
        net.set_mask(i, &mask);
        net.sites[i].gate = None;
        offset += n;
    }
    sel
}
