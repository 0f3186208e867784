//! PrivShap (seed paper 002, "A Finer-granularity Network Linearization
//! Method for Private Inference").
//!
//! * Players are the counted ReLU sites ("layers"); the utility `U(S)` is the
//!   validation accuracy of the trained all-ReLU network keeping ReLUs only
//!   in the sites of `S` (all others the identity), without retraining (§3.1).
//!   The validation split is held out from the training set; the test split
//!   is never used.
//! * Exact Shapley values (Eq. 1) by enumerating every subset
//!   ([`exact_shapley`], for few layers), a Monte-Carlo permutation estimate
//!   for comparison ([`monte_carlo_shapley`]), and Algorithm 1's tree
//!   trimming ([`tree_shapley`]): for layer `i` a breadth-first walk from
//!   `N∖{i}` to ever smaller coalitions, adding `(U(S∪i) − U(S)) / C(n−1,|S|)`
//!   at each visited node and expanding a node's one-smaller children only
//!   when `U(S∪i)` exceeds the threshold (5 %; Algorithm 1 line 10 — the text
//!   phrases the test on `U(S)`, the algorithm on `U(S∪i)`, which is used
//!   here); the sum is divided by `n`. With nothing trimmed it is Eq. 1.
//!   Utilities are memoised over coalitions.
//! * Budget allocation (§3.2): Shapley values clipped at 0 and normalised,
//!   times the budget, capped at each layer's size with the excess
//!   redistributed to uncapped layers in proportion, rounded by largest
//!   remainder so the total is exactly the budget ([`allocate`]).
//! * Gradient projection (§3.2): masks `c` start at 1 and act as gates
//!   (`x' = (1−c)·x + c·ReLU(x)`, Eq. 3); after every optimiser step each
//!   layer keeps the top-`k_l` elements of `|∂L/∂c|` (ties by position) and
//!   sets the rest to 0. Adam, lr 1e-3 (§4.1).
//! * Then the masks are frozen and the network is fine-tuned with KD
//!   (§4.1 follows SENet's distillation; Hinton KD with the run's T and weight).

use std::collections::{HashMap, VecDeque};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::net::Net;
use crate::train::{Control, PhaseHooks};

/// Binomial coefficient as f64.
pub fn binomial(n: usize, k: usize) -> f64 {
    if k > n {
        return 0.0;
    }
    let k = k.min(n - k);
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
}

/// A coalition of players as a bit set.
pub type Coalition = u64;

/// Utilities with memoisation.
pub struct Utility<'a> {
    f: Box<dyn FnMut(Coalition) -> f64 + 'a>,
    memo: HashMap<Coalition, f64>,
    /// Distinct coalitions evaluated.
    pub evaluations: usize,
}

impl std::fmt::Debug for Utility<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Utility")
            .field("evaluations", &self.evaluations)
            .finish()
    }
}

impl<'a> Utility<'a> {
    /// Wraps `f(S)`.
    pub fn new(f: impl FnMut(Coalition) -> f64 + 'a) -> Utility<'a> {
        Utility {
            f: Box::new(f),
            memo: HashMap::new(),
            evaluations: 0,
        }
    }

    /// `U(S)`.
    pub fn get(&mut self, s: Coalition) -> f64 {
        if let Some(&v) = self.memo.get(&s) {
            return v;
        }
        let v = (self.f)(s);
        self.evaluations += 1;
        self.memo.insert(s, v);
        v
    }
}

/// Eq. 1 by enumeration of every coalition (`n ≤ 20`).
pub fn exact_shapley(n: usize, u: &mut Utility<'_>) -> Vec<f64> {
    let mut sv = vec![0.0; n];
    for (i, v) in sv.iter_mut().enumerate() {
        let others: Vec<usize> = (0..n).filter(|&j| j != i).collect();
        for bits in 0u64..(1u64 << others.len()) {
            let mut s: Coalition = 0;
            for (k, &j) in others.iter().enumerate() {
                if bits >> k & 1 == 1 {
                    s |= 1 << j;
                }
            }
            let size = s.count_ones() as usize;
            *v += (u.get(s | 1 << i) - u.get(s)) / binomial(n - 1, size);
        }
        *v /= n as f64;
    }
    sv
}

/// Algorithm 1 (tree trimming) for every layer; `threshold` on `U(S∪i)`.
pub fn tree_shapley(n: usize, u: &mut Utility<'_>, threshold: f64) -> Vec<f64> {
    let full: Coalition = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
    (0..n)
        .map(|i| {
            let root = full & !(1 << i);
            let mut queue: VecDeque<Coalition> = VecDeque::from([root]);
            let mut seen: std::collections::HashSet<Coalition> = [root].into_iter().collect();
            let mut sv = 0.0;
            while let Some(s) = queue.pop_front() {
                let us = u.get(s);
                let usi = u.get(s | 1 << i);
                if usi > threshold {
                    for j in 0..n {
                        if s >> j & 1 == 1 {
                            let child = s & !(1 << j);
                            if seen.insert(child) {
                                queue.push_back(child);
                            }
                        }
                    }
                }
                sv += (usi - us) / binomial(n - 1, s.count_ones() as usize);
            }
            sv / n as f64
        })
        .collect()
}

/// Monte-Carlo permutation sampling (Castro et al.): the mean marginal
/// contribution over `samples` random orders.
pub fn monte_carlo_shapley(n: usize, u: &mut Utility<'_>, samples: usize, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut sv = vec![0.0; n];
    let mut order: Vec<usize> = (0..n).collect();
    for _ in 0..samples.max(1) {
        order.shuffle(&mut rng);
        let mut s: Coalition = 0;
        let mut prev = u.get(0);
        for &j in &order {
            s |= 1 << j;
            let now = u.get(s);
            sv[j] += now - prev;
            prev = now;
        }
    }
    sv.iter().map(|v| v / samples.max(1) as f64).collect()
}

/// Layer budgets: normalised non-negative Shapley values × `budget`, capped
/// at `sizes`, excess redistributed, largest-remainder rounding; the sum is
/// exactly `budget` when `budget ≤ Σ sizes`.
pub fn allocate(sv: &[f64], sizes: &[u64], budget: u64) -> Vec<u64> {
    let n = sv.len();
    let budget = budget.min(sizes.iter().sum());
    let mut share = vec![0.0f64; n];
    let mut capped = vec![false; n];
    let mut left = budget as f64;
    loop {
        let weights: Vec<f64> = (0..n)
            .map(|i| if capped[i] { 0.0 } else { sv[i].max(0.0) })
            .collect();
        let mut total: f64 = weights.iter().sum();
        let uniform = total <= 0.0;
        if uniform {
            total = (0..n).filter(|&i| !capped[i]).count() as f64;
        }
        if total == 0.0 {
            break;
        }
        let mut newly = false;
        for i in 0..n {
            if capped[i] {
                continue;
            }
            let w = if uniform { 1.0 } else { weights[i] };
            share[i] = left * w / total;
            if share[i] >= sizes[i] as f64 {
                share[i] = sizes[i] as f64;
                capped[i] = true;
                newly = true;
            }
        }
        if !newly {
            break;
        }
        left = budget as f64 - (0..n).filter(|&i| capped[i]).map(|i| share[i]).sum::<f64>();
        for i in 0..n {
            if !capped[i] {
                share[i] = 0.0;
            }
        }
    }
    let mut out: Vec<u64> = share.iter().map(|s| s.floor() as u64).collect();
    let mut given: u64 = out.iter().sum();
    let mut rems: Vec<(f64, usize)> = (0..n).map(|i| (share[i] - share[i].floor(), i)).collect();
    rems.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut k = 0;
    while given < budget && k < 4 * n + 4 {
        let i = rems[k % n].1;
        if out[i] < sizes[i] {
            out[i] += 1;
            given += 1;
        }
        k += 1;
    }
    out
}

/// How the Shapley values are estimated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Estimator {
    /// Algorithm 1 (tree trimming).
    Tree,
    /// Every coalition (small networks).
    Exact,
    /// Monte-Carlo permutations.
    MonteCarlo,
}

/// Gradient-projection hooks: masks as gates, per-layer top-k of |∂L/∂c| after every step.
#[derive(Debug)]
pub struct Projection {
    /// `(site, layer budget)`.
    pub budgets: Vec<(usize, i64)>,
    gates: Vec<(usize, Tensor)>,
}

impl Projection {
    /// Attaches gates `c = 1` to the sites with budgets.
    pub fn new(net: &mut Net, budgets: Vec<(usize, i64)>) -> Projection {
        let mut gates = Vec::new();
        for &(i, _) in &budgets {
            let g = net.sites[i].mask.detach().copy().set_requires_grad(true);
            net.sites[i].gate = Some(g.shallow_clone());
            gates.push((i, g));
        }
        Projection { budgets, gates }
    }

    /// Removes the gates (the masks hold the projection).
    pub fn finish(&mut self, net: &mut Net) {
        for (i, _) in &self.gates {
            net.sites[*i].gate = None;
        }
        net.refresh_counts();
    }
}

/// The indices of the `k` largest values (ties by position).
pub fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

impl PhaseHooks for Projection {
    fn before_step(&mut self, _net: &mut Net, _batch: i64) {
        for (_, g) in &mut self.gates {
            g.zero_grad();
        }
    }

    fn after_step(&mut self, net: &mut Net) -> Control {
        for ((i, g), &(_, k)) in self.gates.iter().zip(&self.budgets) {
            let grad = g.grad();
            if !grad.defined() {
                continue;
            }
            let mag = Vec::<f32>::try_from(&grad.abs().flatten(0, -1).to_device(Device::Cpu))
                .unwrap_or_default();
            let mut mask = vec![0f32; mag.len()];
            for j in top_k(&mag, k.max(0) as usize) {
                mask[j] = 1.0;
            }
            let m = Tensor::from_slice(&mask).view(net.sites[*i].shape);
            net.set_mask_lazy(*i, &m);
            tch::no_grad(|| {
                let mut g = g.shallow_clone();
                g.copy_(&net.sites[*i].mask);
            });
        }
        Control::Continue
    }

    fn after_epoch(
        &mut self,
        _epoch: usize,
        net: &mut Net,
        _val: f64,
    ) -> (Control, serde_json::Value) {
        net.refresh_counts();
        (Control::Continue, serde_json::Value::Null)
    }
}

/// `U(S)`: validation accuracy of `net` keeping ReLUs only in the sites `players[j]`, `j ∈ S`.
pub fn coalition_accuracy(
    net: &mut Net,
    players: &[usize],
    s: Coalition,
    eval: &mut dyn FnMut(&Net) -> f64,
) -> f64 {
    let saved: Vec<Tensor> = players.iter().map(|&i| net.sites[i].mask.copy()).collect();
    for (j, &i) in players.iter().enumerate() {
        net.fill_site(i, s >> j & 1 == 1);
    }
    let acc = eval(net);
    for (m, &i) in saved.iter().zip(players) {
        net.set_mask(i, m);
    }
    acc
}
