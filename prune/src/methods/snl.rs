//! SNL (Cho et al. 2022, "Selective Network Linearization").
//!
//! Every ReLU element gets a learnable coefficient `α ∈ [0, 1]` (initialised
//! to 1) and computes `α·ReLU(x) + (1−α)·x`. The loss adds a lasso penalty
//! `λ·Σ|α|`; the search stops after the first step at which at most the
//! budget of `α` exceed the threshold; after every epoch that ends above the
//! budget, `λ` is multiplied by `lambda_growth`. Then the `N`
//! largest `α` over the whole network (ties broken by position) become the
//! kept ReLUs — exactly `N` — the coefficients are removed, and the masked
//! network is fine-tuned with KD from the all-ReLU teacher.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::net::Network;
use crate::train::{Control, PhaseHooks};

/// SNL's search settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnlConfig {
    /// Requested ReLU count.
    pub budget: i64,
    /// Initial lasso weight λ.
    pub lambda: f64,
    /// Factor applied to λ after an epoch that ends above the budget.
    pub lambda_growth: f64,
    /// An `α` above this counts as a ReLU during the search.
    pub threshold: f64,
}

/// Search-phase hooks: lasso penalty, α clamping, λ schedule.
#[derive(Debug)]
pub struct SnlSearch {
    /// Settings.
    pub cfg: SnlConfig,
    /// Current λ.
    pub lambda: f64,
    /// Whether the α-count reached the budget.
    pub reached: bool,
}

impl SnlSearch {
    /// A search starting at `cfg.lambda`.
    pub fn new(cfg: SnlConfig) -> SnlSearch {
        let lambda = cfg.lambda;
        SnlSearch {
            cfg,
            lambda,
            reached: false,
        }
    }
}

/// Number of `α` above `threshold` over all sites.
pub fn alpha_count(net: &Network, threshold: f64) -> i64 {
    tch::no_grad(|| {
        // Summed on the device; one host synchronisation.
        net.sites
            .iter()
            .filter_map(|s| s.alpha.as_ref())
            .map(|a| a.gt(threshold).sum(Kind::Int64))
            .reduce(|x, y| x + y)
            .map_or(0, |t| t.int64_value(&[]))
    })
}

impl PhaseHooks for SnlSearch {
    fn extra_loss(&mut self, net: &Network) -> Option<Tensor> {
        net.alpha_l1().map(|l1| l1 * self.lambda)
    }

    fn after_step(&mut self, net: &Network) -> Control {
        net.clamp_alphas();
        // Stop as soon as the budget is met, before λ can push far below it.
        if alpha_count(net, self.cfg.threshold) <= self.cfg.budget {
            self.reached = true;
            Control::Stop
        } else {
            Control::Continue
        }
    }

    fn after_epoch(&mut self, _epoch: usize, net: &mut Network) -> (Control, serde_json::Value) {
        let count = alpha_count(net, self.cfg.threshold);
        let lambda_used = self.lambda;
        self.reached = count <= self.cfg.budget;
        if !self.reached {
            self.lambda *= self.cfg.lambda_growth;
        }
        let extra = serde_json::json!({ "lambda": lambda_used, "alpha_count": count });
        eprintln!(
            "snl: {count} alphas above {} (budget {}), lambda {lambda_used:.3e}",
            self.cfg.threshold, self.cfg.budget
        );
        let control = if self.reached {
            Control::Stop
        } else {
            Control::Continue
        };
        (control, extra)
    }

    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "lambda": self.lambda, "reached": self.reached })
    }

    fn restore(&mut self, state: &serde_json::Value) {
        if let Some(l) = state.get("lambda").and_then(|v| v.as_f64()) {
            self.lambda = l;
        }
        if let Some(r) = state.get("reached").and_then(|v| v.as_bool()) {
            self.reached = r;
        }
    }
}

/// Keeps exactly the `budget` largest `α` over all sites (ties: lower
/// position first), writes them to the masks and removes the `α`.
/// Returns the kept count (always `budget` when `0 < budget ≤` total).
pub fn threshold_top_n(net: &mut Network, budget: i64) -> i64 {
    let flat: Vec<Tensor> = net
        .sites
        .iter()
        .map(|s| match &s.alpha {
            Some(a) => a.detach().to_kind(Kind::Float).flatten(0, -1),
            None => s.mask.detach().flatten(0, -1),
        })
        .collect();
    let all = Tensor::cat(&flat, 0).to_device(tch::Device::Cpu);
    let values: Vec<f32> = Vec::<f32>::try_from(&all).unwrap_or_default();
    let mut order: Vec<usize> = (0..values.len()).collect();
    // Stable sort by descending α: equal values keep their network order.
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    let mut keep = vec![0f32; values.len()];
    for &i in order.iter().take(budget.max(0) as usize) {
        keep[i] = 1.0;
    }
    let mut offset = 0usize;
    net.detach_alphas();
    for i in 0..net.sites.len() {
        let shape = net.sites[i].layout.shape;
        let n = net.sites[i].layout.numel() as usize;
        let mask = Tensor::from_slice(&keep[offset..offset + n])
            .view(shape)
            .to_device(net.vs.device());
        net.set_mask(i, &mask);
        offset += n;
    }
    net.relu_count()
}
