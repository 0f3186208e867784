//! AutoReP (Peng et al. 2023, "Automatic ReLU Replacement for Fast Private
//! Network Inference"), seed paper 003, with its published code
//! (harveyp123/AutoReP: `models_util/model_spReLU_relay.py`,
//! `train_util/train_util.py`, `approx/approx_torch.py`) where the paper is
//! silent.
//!
//! * Every counted ReLU element has a binary indicator `m` (1 = ReLU, 0 =
//!   polynomial) and an auxiliary parameter `m_W` (`aux.<site>`,
//!   initialised uniform in [0, 1) as in the code; the indicators start at 1).
//!   The site computes `m·ReLU(x) + (1−m)·p(x)`.
//! * Straight-through estimator (§3.2): the forward pass uses `m`, the
//!   backward pass `∂m/∂m_W = softplus(m_W)` (the code's `STEFunction_relay`).
//! * Hysteresis (Eq. 10), before every forward pass:
//!   `m ← 1` if (`m = 1` and `m_W > −t_h`) or (`m = 0` and `m_W > t_h`), else 0;
//!   `t_h = 0.003` (§4.1).
//! * Loss (Eq. 5): `CE + KD(T = 4) + μ·max(‖m‖₀ − N, 0)`. The code writes the
//!   penalty on the density, `λ·relu(Σm/M − N/M)` with `M` the number of
//!   indicators, i.e. `μ = λ/M` (the paper's Fig. 10 normalises μ the same
//!   way); `--mu` is that normalised `λ` (code default 10).
//! * Optimisers (§4.1): Adam for the indicators' auxiliary parameters (lr
//!   1e-3) and for the weights (lr 1e-4), both cosine-annealed; 150 epochs.
//! * DaPa (§3.3, Eq. 13): the replaced elements of channel `c` use
//!   `c2·x² + c1·x + c0`, the least-squares fit of ReLU under
//!   `N(μ_c, σ_c²)` ([`dapa2`]), from the channel's running mean and variance
//!   of the site input (momentum 0.1, as the code's affine-free BatchNorm);
//!   as in the code, the variance is clipped below (`var_min`, 0.04) and the
//!   coefficients are recomputed every 10 iterations during the first 500
//!   and trained with the weights afterwards.
//!   `--poly 1` fits `c1·x + c0` instead ([`dapa1`], the first-order
//!   ablation), `--poly 0` replaces by the identity. The code's fudge factors
//!   (`w0/5`, `w2/10`, the variance passed where σ is expected) are not
//!   reproduced: Eq. 13 is.
//! * Exact budget (not in the paper, whose penalty only bounds the count
//!   from above): after the replacement epochs, if the indicators keep more
//!   than `N` ReLUs the kept elements with the smallest `m_W` are replaced,
//!   if fewer the replaced elements with the largest `m_W` get their ReLU
//!   back; the log records how many. Then the masks are frozen and the
//!   network is fine-tuned with `CE + KD` (the code's `train_distil` phase).
//!
//! Replaced elements export as polynomial sites (`Site.poly`, per channel).

use std::f64::consts::{PI, SQRT_2};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::net::{nested, Net};
use crate::train::{Control, PhaseHooks};

/// The standard normal density.
fn phi(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * PI).sqrt()
}

/// The standard normal distribution function, via `erfc` (W. J. Cody's
/// rational approximations are overkill here: `libm`-free series/continued
/// fraction with |error| < 1e-12 over the range used).
fn big_phi(x: f64) -> f64 {
    0.5 * erfc(-x / SQRT_2)
}

/// Complementary error function (Numerical Recipes' `erfcc`, |rel. error| < 1.2e-7).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// Eq. 13: `(c2, c1, c0)` minimising `E[(ReLU(Z) − c2·Z² − c1·Z − c0)²]`
/// for `Z ~ N(μ, σ²)`.
pub fn dapa2(mu: f64, sigma: f64) -> (f64, f64, f64) {
    let s = sigma.max(1e-6);
    let u = mu / s;
    let p = phi(u);
    let c2 = p / (2.0 * s);
    let c1 = big_phi(u) - u * p;
    let c0 = p * (mu * mu + s * s) / (2.0 * s);
    (c2, c1, c0)
}

/// The first-order fit: `(0, Φ(μ/σ), σ·φ(μ/σ))`.
pub fn dapa1(mu: f64, sigma: f64) -> (f64, f64, f64) {
    let s = sigma.max(1e-6);
    let u = mu / s;
    (0.0, big_phi(u), s * phi(u))
}

/// Eq. 10 on tensors: the new indicators from the old ones and `m_W`.
pub fn hysteresis(mask: &Tensor, aux: &Tensor, t_h: f64) -> Tensor {
    let keep = aux.gt(-t_h).to_kind(Kind::Float);
    let grow = aux.gt(t_h).to_kind(Kind::Float);
    mask * keep + (1.0 - mask) * grow
}

/// The straight-through indicator: value `mask`, gradient `softplus(aux)·g` for `aux`.
pub fn ste(mask: &Tensor, aux: &Tensor) -> Tensor {
    let c = aux.softplus().detach();
    let scaled = aux * &c;
    mask + (&scaled - scaled.detach())
}

/// AutoReP's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AutorepConfig {
    /// Target ReLU count `N`.
    pub budget: i64,
    /// Hysteresis threshold `t_h` (0.003).
    pub threshold: f64,
    /// Penalty weight on the density (the code's λ; μ = λ / #indicators).
    pub mu: f64,
    /// Polynomial degree of the replacement: 2 (DaPa), 1, or 0 (identity).
    pub poly: u8,
    /// Iterations during which DaPa recomputes the coefficients (500).
    pub dapa_iterations: usize,
    /// Period of the recomputation (10).
    pub dapa_every: usize,
    /// Floor of the running variance before Eq. 13 (the code clips at its
    /// `var_min`; a commented line of it uses 0.04, taken as the default).
    pub var_min: f64,
    /// Seed of the auxiliary initialisation.
    pub seed: u64,
}

/// Per-site running statistics of the site input.
#[derive(Debug)]
struct Stats {
    mean: Tensor,
    var: Tensor,
    seen: bool,
}

/// Replacement-phase hooks.
#[derive(Debug)]
pub struct Autorep {
    /// Settings.
    pub cfg: AutorepConfig,
    aux: Vec<(usize, Tensor)>,
    stats: Vec<Option<Stats>>,
    /// Iterations run.
    pub iterations: usize,
    total: i64,
}

impl Autorep {
    /// Attaches the auxiliary parameters and (for `poly > 0`) the polynomial
    /// coefficients to every counted site of `net`.
    pub fn new(net: &mut Net, cfg: AutorepConfig) -> Autorep {
        tch::manual_seed(cfg.seed as i64);
        let device = net.device();
        let mut aux = Vec::new();
        let mut stats = Vec::new();
        let mut total = 0;
        for i in 0..net.sites.len() {
            if !net.sites[i].counted {
                stats.push(None);
                continue;
            }
            let shape = net.sites[i].shape;
            let a = {
                let root = net.vs.root();
                let (p, leaf) = nested(&root / "aux", &net.sites[i].name);
                p.var_copy(leaf, &Tensor::rand(shape, (Kind::Float, device)))
            };
            aux.push((i, a));
            total += net.sites[i].numel();
            if cfg.poly > 0 {
                // Identity until the first statistics arrive: (a2, a1, a0) = (0, 1, 0).
                let c = shape[0];
                let init = Tensor::cat(
                    &[
                        Tensor::zeros([1, c], (Kind::Float, device)),
                        Tensor::ones([1, c], (Kind::Float, device)),
                        Tensor::zeros([1, c], (Kind::Float, device)),
                    ],
                    0,
                );
                net.set_poly(i, &init);
            }
            stats.push(Some(Stats {
                mean: Tensor::zeros([shape[0]], (Kind::Float, device)),
                var: Tensor::ones([shape[0]], (Kind::Float, device)),
                seen: false,
            }));
        }
        Autorep {
            cfg,
            aux,
            stats,
            iterations: 0,
            total,
        }
    }

    /// Kept ReLUs of the indicators (one host synchronisation).
    pub fn count(&self, net: &Net) -> i64 {
        tch::no_grad(|| {
            self.aux
                .iter()
                .map(|(i, _)| net.sites[*i].mask.sum(Kind::Float))
                .reduce(|a, b| a + b)
                .map_or(0, |t| t.double_value(&[]).round() as i64)
        })
    }

    /// DaPa coefficients `[3, C]` from the running statistics of site `i`.
    fn coefficients(&self, i: usize) -> Option<Tensor> {
        let st = self.stats[i].as_ref()?;
        if !st.seen {
            return None;
        }
        let mean =
            Vec::<f64>::try_from(&st.mean.to_device(Device::Cpu).to_kind(Kind::Double)).ok()?;
        let var =
            Vec::<f64>::try_from(&st.var.to_device(Device::Cpu).to_kind(Kind::Double)).ok()?;
        let (mut a2, mut a1, mut a0) = (Vec::new(), Vec::new(), Vec::new());
        for (m, v) in mean.iter().zip(&var) {
            let s = v.max(self.cfg.var_min).sqrt();
            let (c2, c1, c0) = if self.cfg.poly >= 2 {
                dapa2(*m, s)
            } else {
                dapa1(*m, s)
            };
            a2.push(c2 as f32);
            a1.push(c1 as f32);
            a0.push(c0 as f32);
        }
        let c = a2.len() as i64;
        let mut all = a2;
        all.extend(a1);
        all.extend(a0);
        Some(Tensor::from_slice(&all).view([3, c]))
    }

    /// Makes the count exactly `budget` by `m_W` order (see the module doc);
    /// freezes the masks and removes the gates. Returns `(added, removed)`.
    pub fn finalize(&mut self, net: &mut Net) -> (i64, i64) {
        let count = self.count(net);
        let want = self.cfg.budget;
        let mut flat_aux = Vec::new();
        let mut flat_mask = Vec::new();
        for (i, a) in &self.aux {
            flat_aux.extend(
                Vec::<f32>::try_from(&a.detach().to_device(Device::Cpu).flatten(0, -1))
                    .unwrap_or_default(),
            );
            flat_mask.extend(
                Vec::<f32>::try_from(
                    &net.sites[*i]
                        .mask
                        .detach()
                        .to_device(Device::Cpu)
                        .flatten(0, -1),
                )
                .unwrap_or_default(),
            );
        }
        let (mut added, mut removed) = (0, 0);
        if count > want {
            let mut kept: Vec<usize> = (0..flat_mask.len())
                .filter(|&k| flat_mask[k] == 1.0)
                .collect();
            kept.sort_by(|&a, &b| flat_aux[a].total_cmp(&flat_aux[b]).then(a.cmp(&b)));
            for &k in kept.iter().take((count - want) as usize) {
                flat_mask[k] = 0.0;
                removed += 1;
            }
        } else if count < want {
            let mut off: Vec<usize> = (0..flat_mask.len())
                .filter(|&k| flat_mask[k] == 0.0)
                .collect();
            off.sort_by(|&a, &b| flat_aux[b].total_cmp(&flat_aux[a]).then(a.cmp(&b)));
            for &k in off.iter().take((want - count) as usize) {
                flat_mask[k] = 1.0;
                added += 1;
            }
        }
        let mut offset = 0;
        for (i, _) in &self.aux {
            let n = net.sites[*i].numel() as usize;
            let shape = net.sites[*i].shape;
            net.set_mask(
                *i,
                &Tensor::from_slice(&flat_mask[offset..offset + n]).view(shape),
            );
            net.sites[*i].gate = None;
            offset += n;
        }
        (added, removed)
    }
}

impl PhaseHooks for Autorep {
    fn method_params(&mut self, net: &Net) -> Vec<(String, Tensor, usize)> {
        let mut v: Vec<(String, Tensor, usize)> = self
            .aux
            .iter()
            .map(|(i, a)| (format!("aux.{}", net.sites[*i].name), a.shallow_clone(), 1))
            .collect();
        for (i, _) in &self.aux {
            if let Some(p) = &net.sites[*i].poly {
                v.push((format!("poly.{}", net.sites[*i].name), p.shallow_clone(), 2));
            }
        }
        v
    }

    fn before_step(&mut self, net: &mut Net, _batch: i64) {
        // Eq. 10 with the latest m_W, then the straight-through gates.
        for (i, a) in &self.aux {
            let new = tch::no_grad(|| hysteresis(&net.sites[*i].mask, a, self.cfg.threshold));
            net.set_mask_lazy(*i, &new);
            let g = ste(&net.sites[*i].mask, a);
            net.sites[*i].gate = Some(g);
        }
        if self.cfg.poly > 0
            && self.iterations < self.cfg.dapa_iterations
            && self.iterations.is_multiple_of(self.cfg.dapa_every.max(1))
        {
            let sites: Vec<usize> = self.aux.iter().map(|(i, _)| *i).collect();
            for i in sites {
                if let Some(c) = self.coefficients(i) {
                    net.set_poly(i, &c);
                }
            }
        }
        self.iterations += 1;
    }

    fn wants_tap(&self) -> bool {
        self.cfg.poly > 0
    }

    fn tap(&mut self, teacher: bool, site: usize, input: &Tensor, _output: &Tensor) {
        if teacher {
            return;
        }
        let Some(Some(st)) = self.stats.get_mut(site) else {
            return;
        };
        tch::no_grad(|| {
            let x = input.detach().to_kind(Kind::Float);
            let mean = x.mean_dim(&[0i64, 2, 3][..], false, Kind::Float);
            let var = x.var_dim(&[0i64, 2, 3][..], true, false);
            if st.seen {
                st.mean = &st.mean * 0.9 + mean * 0.1;
                st.var = &st.var * 0.9 + var * 0.1;
            } else {
                // BatchNorm's first update from (0, 1) with momentum 0.1.
                st.mean = mean * 0.1;
                st.var = var * 0.1 + 0.9;
                st.seen = true;
            }
        });
    }

    fn extra_loss(&mut self, net: &Net) -> Option<Tensor> {
        // μ·max(‖m‖₀ − N, 0) written on the density: λ·relu(Σm/M − N/M).
        let m = self
            .aux
            .iter()
            .filter_map(|(i, _)| net.sites[*i].gate.as_ref().map(|g| g.sum(Kind::Float)))
            .reduce(|a, b| a + b)?;
        let total = self.total.max(1) as f64;
        Some((m / total - self.cfg.budget as f64 / total).relu() * self.cfg.mu)
    }

    fn after_epoch(
        &mut self,
        _epoch: usize,
        net: &mut Net,
        _val: f64,
    ) -> (Control, serde_json::Value) {
        net.refresh_counts();
        let count = self.count(net);
        eprintln!(
            "autorep: {count} ReLUs kept by the indicators (budget {})",
            self.cfg.budget
        );
        (
            Control::Continue,
            serde_json::json!({ "indicator_relus": count, "iterations": self.iterations }),
        )
    }

    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "iterations": self.iterations })
    }

    fn restore(&mut self, s: &serde_json::Value) {
        if let Some(v) = s.get("iterations").and_then(|v| v.as_u64()) {
            self.iterations = v as usize;
        }
    }
}
