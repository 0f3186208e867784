//! SGD and Adam with PyTorch's update rules, parameter groups and state that
//! can be checkpointed (tch's optimisers keep their momentum buffers inside
//! libtorch, out of reach of a checkpoint).
//!
//! * SGD (`torch.optim.SGD`): `d = g + wd·p`; with momentum `b = μ·b + (1−τ)·d`
//!   (`b = d` on the first step), then `d = d + μ·b` (Nesterov) or `d = b`;
//!   `p −= lr·d`.
//! * Adam (`torch.optim.Adam`, L2 weight decay): `g += wd·p`;
//!   `m = β1·m + (1−β1)·g`, `v = β2·v + (1−β2)·g²`,
//!   `p −= lr/(1−β1^t) · m / (√v/√(1−β2^t) + ε)`.
//!
//! Gradients are divided by the loss scale of mixed-precision training
//! inside the update (one fewer pass over the gradients).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Optimiser algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Algorithm {
    /// SGD with optional (Nesterov) momentum.
    Sgd {
        /// μ.
        momentum: f64,
        /// τ.
        dampening: f64,
        /// Nesterov momentum.
        nesterov: bool,
    },
    /// Adam.
    Adam {
        /// β1.
        beta1: f64,
        /// β2.
        beta2: f64,
        /// ε.
        eps: f64,
    },
}

impl Algorithm {
    /// PyTorch's Adam defaults (β = 0.9, 0.999; ε = 1e-8).
    pub fn adam() -> Self {
        Algorithm::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }

    /// SGD with momentum `m` (no dampening).
    pub fn sgd(momentum: f64, nesterov: bool) -> Self {
        Algorithm::Sgd {
            momentum,
            dampening: 0.0,
            nesterov,
        }
    }
}

/// Learning rate and weight decay of one parameter group.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Group {
    /// Current learning rate.
    pub lr: f64,
    /// Weight decay.
    pub weight_decay: f64,
}

#[derive(Debug)]
struct Param {
    name: String,
    tensor: Tensor,
    group: usize,
    buf: Option<Tensor>,
    buf2: Option<Tensor>,
}

/// An optimiser over named parameters in groups.
#[derive(Debug)]
pub struct Optimizer {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// Parameter groups.
    pub groups: Vec<Group>,
    params: Vec<Param>,
    /// Steps taken (Adam's `t`).
    pub steps: i64,
}

impl Optimizer {
    /// An optimiser over `(name, tensor, group)`.
    pub fn new(
        algorithm: Algorithm,
        groups: Vec<Group>,
        params: Vec<(String, Tensor, usize)>,
    ) -> Self {
        let params = params
            .into_iter()
            .map(|(name, tensor, group)| Param {
                name,
                tensor,
                group: group.min(groups.len().saturating_sub(1)),
                buf: None,
                buf2: None,
            })
            .collect();
        Optimizer {
            algorithm,
            groups,
            params,
            steps: 0,
        }
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.params.len()
    }

    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// Zeroes every parameter's gradient.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.tensor.zero_grad();
        }
    }

    /// The parameters' gradients that exist.
    pub fn grads(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .map(|p| p.tensor.grad())
            .filter(|g| g.defined())
            .collect()
    }

    /// One update; every gradient is first divided by `grad_scale`.
    pub fn step(&mut self, grad_scale: f64) {
        self.steps += 1;
        let t = self.steps as i32;
        let inv = 1.0 / grad_scale;
        tch::no_grad(|| {
            for p in &mut self.params {
                let g = p.tensor.grad();
                if !g.defined() {
                    continue;
                }
                let group = self.groups[p.group];
                let mut d = if inv == 1.0 {
                    g.shallow_clone()
                } else {
                    &g * inv
                };
                if group.weight_decay != 0.0 {
                    // Out of place: `d` may share the gradient's storage.
                    let decayed = &d + &p.tensor * group.weight_decay;
                    d = decayed;
                }
                match self.algorithm {
                    Algorithm::Sgd {
                        momentum,
                        dampening,
                        nesterov,
                    } => {
                        if momentum != 0.0 {
                            let buf = match p.buf.take() {
                                None => d.copy(),
                                Some(mut b) => {
                                    let _ = b.g_mul_scalar_(momentum);
                                    let _ = b.g_add_(&(&d * (1.0 - dampening)));
                                    b
                                }
                            };
                            d = if nesterov {
                                &d + &buf * momentum
                            } else {
                                buf.shallow_clone()
                            };
                            p.buf = Some(buf);
                        }
                        let _ = p.tensor.g_sub_(&(d * group.lr));
                    }
                    Algorithm::Adam { beta1, beta2, eps } => {
                        let mut m = p.buf.take().unwrap_or_else(|| d.zeros_like());
                        let mut v = p.buf2.take().unwrap_or_else(|| d.zeros_like());
                        let _ = m.g_mul_scalar_(beta1);
                        let _ = m.g_add_(&(&d * (1.0 - beta1)));
                        let _ = v.g_mul_scalar_(beta2);
                        let _ = v.g_add_(&(&d * &d * (1.0 - beta2)));
                        let bc1 = 1.0 - beta1.powi(t);
                        let bc2 = 1.0 - beta2.powi(t);
                        let denom = v.sqrt() / bc2.sqrt() + eps;
                        let _ = p.tensor.g_sub_(&(&m / denom * (group.lr / bc1)));
                        p.buf = Some(m);
                        p.buf2 = Some(v);
                    }
                }
            }
        });
    }

    /// The state to checkpoint: `(name, tensor)` for every buffer.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for p in &self.params {
            if let Some(b) = &p.buf {
                out.push((format!("optim.{}.buf", p.name), b.shallow_clone()));
            }
            if let Some(b) = &p.buf2 {
                out.push((format!("optim.{}.buf2", p.name), b.shallow_clone()));
            }
        }
        out
    }

    /// Restores buffers saved by [`Optimizer::state_tensors`] and the step count.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: i64) {
        self.steps = steps;
        for p in &mut self.params {
            let dev = p.tensor.device();
            p.buf = tensors
                .get(&format!("optim.{}.buf", p.name))
                .map(|t| t.to_device(dev).to_kind(Kind::Float));
            p.buf2 = tensors
                .get(&format!("optim.{}.buf2", p.name))
                .map(|t| t.to_device(dev).to_kind(Kind::Float));
        }
    }
}
