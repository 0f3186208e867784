//! ReLUPruner (seed paper 000, "Rethinking ReLU Importance with Taylor
//! Expansion for Efficient Private Inference"), with its published code
//! (Orange2019220/ReluPruner: `relupruner/importance.py`, `pruning.py`,
//! `losses.py`) where the paper is silent.
//!
//! * Gates (Eq. 2): `a = g·σ(z) + (1−g)·z` per element; the mask is `g`.
//! * Unit importance at `g = 1` (Eqs. 5–7), per batch, from the site input
//!   `z` and `∇a = ∂L/∂a` (a zero "probe" added to the site output):
//!   `I_first = Σ_b ∇a_b·(σ(z_b) − z_b)` (Eq. 6, the exact `∂L/∂g` of the
//!   batch loss), `I_second = E_b[(B·∇a_b·(σ(z_b) − z_b))²]` (Eq. 7: the
//!   squared-gradient expectation — the per-sample gradients of the gate,
//!   i.e. `H·[σ(z) − z]²` with `H` estimated from squared per-sample
//!   gradients; the paper writes `∂L/∂z`, which vanishes at `g = 1` wherever
//!   `σ(z) − z ≠ 0`, so, as the code does, the gradient at the activation
//!   output is used). The loss change of removing the unit is
//!   `ΔL ≈ −I_first + ½·I_second` (Eq. 5); the unit importance is `|ΔL|`
//!   (`|I_first|` with `--taylor-order 1`), multiplied by the cross-batch
//!   negative-activation map `A_neg` (Eq. 8): the mean of the last 10
//!   per-batch maps `P_b(z < 0)` (the code's window). Scores are smoothed by
//!   an EMA with momentum 0.9 (paper; the code uses 0.95: `--ema 0.95`).
//! * Layer importance (Eq. 9): `mean_b ‖∇a_b‖₂ · sqrt(mean(∇a²) + ε)` from
//!   per-sample gradients, EMA-smoothed, min–max normalised to [0.1, 1.1]
//!   across layers as in the code (the code's extra depth bias is not in the
//!   paper and is not used). `--layer-weight off` sets it to 1.
//! * Global ranking `I_unit × I_layer` over all counted sites; the mask keeps
//!   the top-k.
//! * Progressive schedule (Algorithm 1, the code's `ProgressiveMaskScheduler`):
//!   keep ratio 1 for `warmup` epochs (5), then
//!   `ρ* + (1−ρ*)·½(1 + cos(π·p^1.5))` with `p` the progress towards the
//!   target epoch `warmup + 0.6·(T − warmup)`, then `ρ*`; masks are updated
//!   every `interval` batches (100; twice as long after the target epoch).
//!   At the end of the phase the mask keeps exactly `N` (the budget).
//! * Losses: `CE + KL(T = 4)` while pruning (Eq. 10); `CE + KL + β·PRAM`
//!   with β = 1000 while fine-tuning with frozen masks (Eq. 11), PRAM being
//!   the code's attention-map MSE between student and teacher features
//!   ([`pram`]) at the output of the last site of every stage (ResNets: the
//!   stage outputs; pre-activation WRNs: the last block's inner ReLU).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::net::Net;
use crate::train::{Control, PhaseHooks};

/// ReLUPruner's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReluprunerConfig {
    /// Target ReLU count `N`.
    pub budget: i64,
    /// Taylor order of the unit importance (1 or 2).
    pub taylor_order: u8,
    /// Weight units by layer importance (Eq. 9).
    pub layer_weight: bool,
    /// EMA momentum of the importance scores (paper 0.9, code 0.95).
    pub ema: f64,
    /// Negative-activation window (batches).
    pub window: usize,
    /// Warm-up epochs at keep ratio 1.
    pub warmup: usize,
    /// Fraction of the post-warm-up epochs after which the target ratio is reached.
    pub target_fraction: f64,
    /// Batches between mask updates.
    pub interval: usize,
    /// Epochs of the pruning phase.
    pub epochs: usize,
}

/// Keep ratio of the progressive schedule at `epoch` (the code's `keep_ratio`).
pub fn keep_ratio(cfg: &ReluprunerConfig, target: f64, epoch: usize) -> f64 {
    let target_epoch = target_epoch(cfg);
    if epoch < cfg.warmup {
        return 1.0;
    }
    if epoch >= target_epoch {
        return target;
    }
    let span = target_epoch.saturating_sub(cfg.warmup).max(1) as f64;
    let p = ((epoch - cfg.warmup) as f64 / span)
        .clamp(0.0, 1.0)
        .powf(1.5);
    target + (1.0 - target) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
}

fn target_epoch(cfg: &ReluprunerConfig) -> usize {
    cfg.warmup + ((cfg.epochs.saturating_sub(cfg.warmup)) as f64 * cfg.target_fraction) as usize
}

/// Per-batch unit terms of one site: `(I_first, I_second)`, each `[C, H, W]`,
/// from the site input `z` and the gradient `grad_a = ∂L/∂a` (`[B, C, H, W]`,
/// gradient of the batch-mean loss).
pub fn taylor_terms(z: &Tensor, grad_a: &Tensor) -> (Tensor, Tensor) {
    let b = z.size()[0] as f64;
    let kind = z.kind();
    let d = z.relu() - z;
    let first = (grad_a * &d).sum_dim_intlist(&[0i64][..], false, kind);
    let per_sample = grad_a * &d * b;
    let second = (&per_sample * &per_sample).mean_dim(&[0i64][..], false, kind);
    (first, second)
}

/// Eq. 9 from the gradient of the batch-mean loss at the site output.
pub fn layer_importance(grad_a: &Tensor) -> f64 {
    let b = grad_a.size()[0];
    let g = grad_a * (b as f64);
    let norms = g.reshape([b, -1]).norm_scalaropt_dim(2, &[1i64][..], false);
    let mean_norm = norms.mean(Kind::Float).double_value(&[]);
    let rms = ((&g * &g).mean(Kind::Float).double_value(&[]) + 1e-8).sqrt();
    mean_norm * rms
}

/// The attention map of a feature `[B, C, H, W]`: `normalize(mean_c(f²))`.
fn attention(f: &Tensor) -> Tensor {
    let a = (f * f)
        .mean_dim(&[1i64][..], false, Kind::Float)
        .flatten(1, -1);
    let n = a.norm_scalaropt_dim(2, &[1i64][..], true).clamp_min(1e-12);
    a / n
}

/// PRAM: Σ over features of `MSE(attention(student), attention(teacher))`.
pub fn pram(student: &[Tensor], teacher: &[Tensor]) -> Option<Tensor> {
    student
        .iter()
        .zip(teacher)
        .map(|(s, t)| attention(s).mse_loss(&attention(t), tch::Reduction::Mean))
        .reduce(|a, b| a + b)
}

/// The sites whose outputs PRAM compares: the last site of every stage.
pub fn pram_sites(net: &Net) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    for (i, s) in net.sites.iter().enumerate() {
        let Some(stage) = s.stage.filter(|&st| st > 0) else {
            continue;
        };
        match out.last() {
            Some(&j) if net.sites[j].stage == Some(stage) => {
                let last = out.len() - 1;
                out[last] = i;
            }
            _ => out.push(i),
        }
    }
    out
}

/// Pruning-phase hooks: importance accumulation and progressive masks.
#[derive(Debug)]
pub struct Pruner {
    /// Settings.
    pub cfg: ReluprunerConfig,
    sites: Vec<usize>,
    importance: Vec<Option<Tensor>>,
    layer: Vec<Option<f64>>,
    negative: Vec<VecDeque<Tensor>>,
    inputs: Vec<Option<Tensor>>,
    total: i64,
    epoch: usize,
    batches: usize,
    /// Mask updates done.
    pub updates: usize,
}

impl Pruner {
    /// Hooks for the counted sites of `net`.
    pub fn new(net: &Net, cfg: ReluprunerConfig) -> Pruner {
        let sites: Vec<usize> = (0..net.sites.len())
            .filter(|&i| net.sites[i].counted)
            .collect();
        let n = net.sites.len();
        Pruner {
            total: sites.iter().map(|&i| net.sites[i].numel()).sum(),
            sites,
            cfg,
            importance: (0..n).map(|_| None).collect(),
            layer: vec![None; n],
            negative: (0..n).map(|_| VecDeque::new()).collect(),
            inputs: (0..n).map(|_| None).collect(),
            epoch: 0,
            batches: 0,
            updates: 0,
        }
    }

    /// The global scores `I_unit × I_layer` of every counted site (site, `[C,H,W]`).
    pub fn scores(&self) -> Vec<(usize, Tensor)> {
        let vals: Vec<f64> = self.sites.iter().filter_map(|&i| self.layer[i]).collect();
        let (lo, hi) = vals
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| {
                (l.min(v), h.max(v))
            });
        self.sites
            .iter()
            .filter_map(|&i| {
                let imp = self.importance[i].as_ref()?;
                let w = if !self.cfg.layer_weight {
                    1.0
                } else {
                    match self.layer[i] {
                        Some(v) if hi > lo => (v - lo) / (hi - lo) + 0.1,
                        _ => 1.0,
                    }
                };
                Some((i, imp * w))
            })
            .collect()
    }

    /// Keeps the `keep` highest-scoring units (a global top-k; ties by position).
    pub fn apply_top_k(&mut self, net: &mut Net, keep: i64) {
        let scores = self.scores();
        if scores.len() != self.sites.len() {
            return;
        }
        let flat = Tensor::cat(
            &scores
                .iter()
                .map(|(_, t)| t.flatten(0, -1).to_device(Device::Cpu))
                .collect::<Vec<_>>(),
            0,
        );
        let values = Vec::<f32>::try_from(&flat).unwrap_or_default();
        let mut order: Vec<usize> = (0..values.len()).collect();
        order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
        let mut mask = vec![0f32; values.len()];
        for &k in order
            .iter()
            .take(keep.clamp(0, values.len() as i64) as usize)
        {
            mask[k] = 1.0;
        }
        let mut off = 0;
        for (i, _) in scores {
            let n = net.sites[i].numel() as usize;
            let shape = net.sites[i].shape;
            net.set_mask(i, &Tensor::from_slice(&mask[off..off + n]).view(shape));
            off += n;
        }
        self.updates += 1;
    }

    /// Ends the phase with exactly the budget kept.
    pub fn finalize(&mut self, net: &mut Net) {
        self.apply_top_k(net, self.cfg.budget);
    }
}

impl PhaseHooks for Pruner {
    fn before_step(&mut self, net: &mut Net, batch: i64) {
        for &i in &self.sites {
            let s = &mut net.sites[i];
            let shape = [batch, s.shape[0], s.shape[1], s.shape[2]];
            s.probe =
                Some(Tensor::zeros(shape, (Kind::Float, s.mask.device())).set_requires_grad(true));
        }
    }

    fn wants_tap(&self) -> bool {
        true
    }

    fn tap(&mut self, teacher: bool, site: usize, input: &Tensor, _output: &Tensor) {
        if !teacher && self.sites.contains(&site) {
            self.inputs[site] = Some(input.detach().to_kind(Kind::Float));
        }
    }

    fn after_backward(&mut self, net: &mut Net, grad_scale: f64) {
        tch::no_grad(|| {
            for &i in &self.sites {
                let (Some(z), Some(probe)) = (self.inputs[i].take(), net.sites[i].probe.take())
                else {
                    continue;
                };
                let g = probe.grad();
                if !g.defined() {
                    continue;
                }
                let g = g / grad_scale;
                let (first, second) = taylor_terms(&z, &g);
                let unit = if self.cfg.taylor_order >= 2 {
                    (second * 0.5 - first).abs()
                } else {
                    first.abs()
                };
                let neg = z
                    .lt(0.0)
                    .to_kind(Kind::Float)
                    .mean_dim(&[0i64][..], false, Kind::Float);
                let window = &mut self.negative[i];
                window.push_back(neg);
                while window.len() > self.cfg.window.max(1) {
                    window.pop_front();
                }
                let a_neg = Tensor::stack(
                    &window.iter().map(|t| t.shallow_clone()).collect::<Vec<_>>(),
                    0,
                )
                .mean_dim(&[0i64][..], false, Kind::Float);
                let value = unit * a_neg;
                let m = self.cfg.ema;
                self.importance[i] = Some(match self.importance[i].take() {
                    Some(old) => old * m + value * (1.0 - m),
                    None => value * (1.0 - m),
                });
                if self.cfg.layer_weight {
                    let li = layer_importance(&g);
                    self.layer[i] = Some(match self.layer[i] {
                        Some(old) => old * m + li * (1.0 - m),
                        None => li * (1.0 - m),
                    });
                }
            }
        });
    }

    fn after_step(&mut self, net: &mut Net) -> Control {
        self.batches += 1;
        if self.epoch >= self.cfg.warmup {
            let interval = self.cfg.interval.max(1)
                * if self.epoch >= target_epoch(&self.cfg) {
                    2
                } else {
                    1
                };
            if self.batches.is_multiple_of(interval) {
                let target = self.cfg.budget as f64 / self.total.max(1) as f64;
                let ratio = keep_ratio(&self.cfg, target, self.epoch);
                let keep = if ratio <= target {
                    self.cfg.budget
                } else {
                    ((ratio * self.total as f64).round() as i64).max(self.cfg.budget)
                };
                self.apply_top_k(net, keep);
            }
        }
        Control::Continue
    }

    fn after_epoch(
        &mut self,
        epoch: usize,
        net: &mut Net,
        _val: f64,
    ) -> (Control, serde_json::Value) {
        self.epoch = epoch + 1;
        for &i in &self.sites {
            net.sites[i].probe = None;
        }
        (
            Control::Continue,
            serde_json::json!({ "mask_updates": self.updates, "relus": net.relu_count() }),
        )
    }

    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "epoch": self.epoch, "batches": self.batches, "updates": self.updates })
    }

    fn restore(&mut self, s: &serde_json::Value) {
        if let Some(v) = s.get("epoch").and_then(|v| v.as_u64()) {
            self.epoch = v as usize;
        }
        if let Some(v) = s.get("batches").and_then(|v| v.as_u64()) {
            self.batches = v as usize;
        }
        if let Some(v) = s.get("updates").and_then(|v| v.as_u64()) {
            self.updates = v as usize;
        }
    }
}

/// Fine-tuning hooks: β·PRAM between the student's and the teacher's stage features.
#[derive(Debug)]
pub struct PramFinetune {
    /// β (1000).
    pub beta: f64,
    sites: Vec<usize>,
    student: Vec<Tensor>,
    teacher: Vec<Tensor>,
}

impl PramFinetune {
    /// Hooks comparing the stage outputs of `net`.
    pub fn new(net: &Net, beta: f64) -> PramFinetune {
        PramFinetune {
            beta,
            sites: pram_sites(net),
            student: Vec::new(),
            teacher: Vec::new(),
        }
    }
}

impl PhaseHooks for PramFinetune {
    fn before_step(&mut self, _net: &mut Net, _batch: i64) {
        self.student.clear();
        self.teacher.clear();
    }

    fn wants_tap(&self) -> bool {
        self.beta != 0.0
    }

    fn tap(&mut self, teacher: bool, site: usize, _input: &Tensor, output: &Tensor) {
        if self.sites.contains(&site) {
            let t = output.to_kind(Kind::Float);
            if teacher {
                self.teacher.push(t);
            } else {
                self.student.push(t);
            }
        }
    }

    fn extra_loss(&mut self, _net: &Net) -> Option<Tensor> {
        if self.student.len() != self.teacher.len() {
            return None;
        }
        pram(&self.student, &self.teacher).map(|l| l * self.beta)
    }
}
