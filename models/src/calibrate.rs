//! Calibration and fidelity: the scale plan as a file records it, per
//! truncation point magnitude bounds measured on data, and the comparison of
//! the fixed-point reference with the float reference over a test set.
//!
//! * [`ScalePlan`]: what [`EncodedNetwork::new`] decided, node by node
//!   (weight fractional bits `fw_l`, lifts, truncation amounts, pool plans,
//!   output scales, the logits' scale). The model file stores it; loading
//!   recomputes it from the weights and refuses a file whose plan differs.
//! * [`truncation_points`]: every point where the fixed-point pass (and the
//!   protocol) truncates, in node order, with the value's scale before
//!   truncation — the same list, in the same order, as
//!   [`FixedOutput::truncations`](crate::reference::FixedOutput).
//! * [`evaluate_many`]: float and fixed-point passes over many images on all
//!   cores; per image the logits of both and, per truncation point, the
//!   largest `|value|` before truncation in both passes.
//! * [`Observations`] → [`Bounds`]: per point the largest observed magnitude
//!   (the larger of the fixed-point value and the float value, in real
//!   units) times `2^margin_bits`; [`Bounds::bits`] gives `ℓ` (`|y| < 2^ℓ`)
//!   at a given scale for the protocol's local-truncation failure bound.
//! * [`Fidelity`]: top-1 of both passes, their agreement, `|Δlogit|`.
//!
//! A calibrated bound is an empirical bound: an input unlike the
//! calibration images can exceed it. The margin (default one bit, ×2) is the
//! stated allowance for that; `pibench accuracy` reports any point whose
//! observed magnitude exceeds the stored bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::data::DataError;
use crate::error::ModelError;
use crate::fixed::FixedPoint;
use crate::graph::{BatchNorm, Conv2d, FeatureShape, Linear, Network, Op, Site};
use crate::reference::{
    argmax, forward, EncodedNetwork, EncodedOp, Evaluator, FixedEvaluator, FloatEvaluator, NodeCtx,
    PoolPlan, TruncKind,
};

/// Default margin of calibrated bounds: one bit (the observed maximum × 2).
pub const DEFAULT_MARGIN_BITS: u32 = 1;

/// Errors of calibration and fidelity runs.
#[derive(Debug, Error)]
pub enum CalibrateError {
    /// An image could not be read.
    #[error("image {image}: {source}")]
    Data {
        /// Index of the image in the run.
        image: usize,
        /// The reading error.
        #[source]
        source: DataError,
    },
    /// A forward pass failed on an image.
    #[error("image {image}: {source}")]
    Model {
        /// Index of the image in the run.
        image: usize,
        /// The evaluation error.
        #[source]
        source: ModelError,
    },
    /// The fixed-point pass reported truncation points other than the plan's.
    #[error("truncation point {index}: {reason}")]
    Points {
        /// Index in the point list.
        index: usize,
        /// What differs.
        reason: String,
    },
    /// A worker thread panicked.
    #[error("an evaluation thread panicked")]
    Thread,
}

/// What the plan decided for one node's op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum PlanOp {
    /// The network input (encoded at `fa`).
    Input,
    /// Flatten (no arithmetic).
    Flatten,
    /// Max pool (a selection: no arithmetic, same scale).
    MaxPool,
    /// Channel slice (a selection: no arithmetic, same scale).
    Slice,
    /// Channel concatenation: input `k` lifted by `2^lift[k]` to the output scale.
    Concat {
        /// Exact lifts, one per input (`EncodedNetwork::concat_lifts`).
        lift: Vec<u32>,
    },
    /// Convolution (batch norm folded): weights at `weight_frac_bits`.
    Conv {
        /// `fw_l`.
        weight_frac_bits: u32,
    },
    /// Fully connected layer: weights at `weight_frac_bits`.
    Linear {
        /// `fw_l`.
        weight_frac_bits: u32,
    },
    /// Standalone batch norm.
    BatchNorm {
        /// Fractional bits of the per-channel scale.
        scale_frac_bits: u32,
        /// Truncation of the input before the scale (0: none).
        trunc_bits: u32,
    },
    /// Average pool or global average pool.
    Pool {
        /// Exact (power-of-two window) or rounded.
        pool: PoolPlan,
    },
    /// Residual add: operand `k` is lifted by `2^lift[k]`.
    Add {
        /// Exact lifts.
        lift: [u32; 2],
    },
    /// Activation site.
    Site {
        /// Lift of the input before truncation.
        lift: u32,
        /// Truncation amount of the input.
        trunc_bits: u32,
        /// Fractional bits of the polynomial coefficients, if the site has a polynomial.
        poly_frac_bits: Option<u32>,
        /// Truncation amount of the polynomial elements, if any.
        poly_trunc_bits: Option<u32>,
    },
}

/// One node of the scale plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlan {
    /// Node name.
    pub node: String,
    /// Fractional bits of the node's output.
    pub out_frac_bits: u32,
    /// What the op does to scales.
    #[serde(flatten)]
    pub op: PlanOp,
}

/// The scale plan of a network: the deterministic function of the network
/// and [`FixedPoint`] that [`EncodedNetwork::new`] computes, written out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScalePlan {
    /// Fixed-point parameters the plan was made with.
    pub fixed: FixedPoint,
    /// Fractional bits of the logits.
    pub logits_frac_bits: u32,
    /// Per node, in node order.
    pub nodes: Vec<NodePlan>,
}

impl ScalePlan {
    /// The plan of `enc` (encoded from `net`).
    pub fn of(net: &Network, enc: &EncodedNetwork) -> Result<ScalePlan, ModelError> {
        if enc.ops.len() != net.nodes.len() || enc.scales.len() != net.nodes.len() {
            return Err(ModelError::Graph {
                node: 0,
                name: net.name.clone(),
                reason: format!(
                    "encoded for {} nodes, the network has {}",
                    enc.ops.len(),
                    net.nodes.len()
                ),
            });
        }
        let mut nodes = Vec::with_capacity(net.nodes.len());
        for (i, node) in net.nodes.iter().enumerate() {
            let op = match (&node.op, &enc.ops[i]) {
                (Op::Input, _) => PlanOp::Input,
                (Op::Flatten, _) => PlanOp::Flatten,
                (Op::MaxPool { .. }, None) => PlanOp::MaxPool,
                (Op::Slice { .. }, None) => PlanOp::Slice,
                (Op::Concat, None) => PlanOp::Concat {
                    lift: enc.concat_lifts(net, i).ok_or_else(|| ModelError::Graph {
                        node: i,
                        name: node.name.clone(),
                        reason: "a concat input is above the concat's scale".into(),
                    })?,
                },
                (Op::Conv2d(_), Some(EncodedOp::Conv { frac_bits, .. })) => PlanOp::Conv {
                    weight_frac_bits: *frac_bits,
                },
                (Op::Linear(_), Some(EncodedOp::Linear { frac_bits, .. })) => PlanOp::Linear {
                    weight_frac_bits: *frac_bits,
                },
                (
                    Op::BatchNorm(_),
                    Some(EncodedOp::BatchNorm {
                        frac_bits, trunc, ..
                    }),
                ) => PlanOp::BatchNorm {
                    scale_frac_bits: *frac_bits,
                    trunc_bits: *trunc,
                },
                (Op::AvgPool { .. } | Op::GlobalAvgPool, Some(EncodedOp::Pool(p))) => {
                    PlanOp::Pool { pool: *p }
                }
                (Op::Add, Some(EncodedOp::Add { lift })) => PlanOp::Add { lift: *lift },
                (Op::Site(_), Some(EncodedOp::Site { lift, trunc, poly })) => PlanOp::Site {
                    lift: *lift,
                    trunc_bits: *trunc,
                    poly_frac_bits: poly.as_ref().map(|p| p.frac_bits),
                    poly_trunc_bits: poly.as_ref().map(|p| p.trunc),
                },
                _ => {
                    return Err(ModelError::Graph {
                        node: i,
                        name: node.name.clone(),
                        reason: "encoded parameters do not match the op".into(),
                    })
                }
            };
            nodes.push(NodePlan {
                node: node.name.clone(),
                out_frac_bits: enc.scales[i],
                op,
            });
        }
        Ok(ScalePlan {
            fixed: enc.fixed,
            logits_frac_bits: enc.output_scale(),
            nodes,
        })
    }

    /// Plans `net` with `fp` and writes the plan out.
    pub fn compute(net: &Network, fp: FixedPoint) -> Result<ScalePlan, ModelError> {
        Self::of(net, &EncodedNetwork::new(net, fp)?)
    }

    /// The first difference between `self` (e.g. stored) and `other` (e.g.
    /// recomputed), described in words; `None` when they are equal.
    pub fn first_difference(&self, other: &ScalePlan) -> Option<String> {
        if self.fixed != other.fixed {
            return Some(format!(
                "fixed-point parameters {:?} vs {:?}",
                self.fixed, other.fixed
            ));
        }
        if self.nodes.len() != other.nodes.len() {
            return Some(format!(
                "{} nodes vs {}",
                self.nodes.len(),
                other.nodes.len()
            ));
        }
        for (i, (a, b)) in self.nodes.iter().zip(&other.nodes).enumerate() {
            if a != b {
                return Some(format!("node {i} ({}): {a:?} vs {b:?}", a.node));
            }
        }
        if self.logits_frac_bits != other.logits_frac_bits {
            return Some(format!(
                "logits at 2^{} vs 2^{}",
                self.logits_frac_bits, other.logits_frac_bits
            ));
        }
        None
    }
}

/// One truncation point of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TruncPoint {
    /// Node index.
    pub node: usize,
    /// Node name.
    pub name: String,
    /// What is truncated.
    pub kind: TruncKind,
    /// Fractional bits of the value before truncation.
    pub frac_bits: u32,
    /// Truncation amount.
    pub trunc_bits: u32,
}

/// Every truncation point of `enc`'s plan, in node order (a site's input
/// before its polynomial's second rounding): the points
/// [`FixedEvaluator`] records, in its order.
pub fn truncation_points(net: &Network, enc: &EncodedNetwork) -> Vec<TruncPoint> {
    let fa = enc.fixed.act_frac_bits;
    let mut out = Vec::new();
    for (i, node) in net.nodes.iter().enumerate() {
        let s_in = node.inputs.first().map_or(fa, |&j| enc.scale(j));
        let mut push = |kind, frac_bits, trunc_bits| {
            out.push(TruncPoint {
                node: i,
                name: node.name.clone(),
                kind,
                frac_bits,
                trunc_bits,
            })
        };
        match (&node.op, enc.ops.get(i).and_then(|o| o.as_ref())) {
            (Op::Site(site), Some(EncodedOp::Site { lift, trunc, poly })) => {
                push(TruncKind::Site, s_in + lift, *trunc);
                if let Some(p) = poly {
                    if site.mask.contains(&0) {
                        push(TruncKind::SitePoly, 2 * fa + p.frac_bits, p.trunc);
                    }
                }
            }
            (Op::BatchNorm(_), Some(EncodedOp::BatchNorm { trunc, .. })) if *trunc > 0 => {
                push(TruncKind::BatchNorm, s_in, *trunc)
            }
            (op, Some(EncodedOp::Pool(PoolPlan::Rounded { trunc, .. }))) => {
                let kind = if matches!(op, Op::GlobalAvgPool) {
                    TruncKind::GlobalAvgPool
                } else {
                    TruncKind::AvgPool
                };
                push(kind, s_in + trunc, *trunc);
            }
            _ => {}
        }
    }
    out
}

/// The smallest `ℓ` with `v < 2^ℓ` for a non-negative real `v` known to
/// bound an integer magnitude (`|y| ≤ v` ⇒ `|y| ≤ ⌊v⌋ < 2^ℓ`).
pub fn magnitude_bits(v: f64) -> u32 {
    if !v.is_finite() {
        return u32::MAX;
    }
    let m = v.max(0.0).floor();
    if m >= 2f64.powi(127) {
        return 128;
    }
    128 - (m as u128).leading_zeros()
}

/// A calibrated bound of one truncation point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointBound {
    /// Node name.
    pub node: String,
    /// What is truncated.
    pub kind: TruncKind,
    /// Fractional bits of the value before truncation in the plan.
    pub frac_bits: u32,
    /// Largest `|value|` observed in the fixed-point pass (real units).
    pub fixed_max: f64,
    /// Largest `|value|` observed in the float pass (real units).
    pub float_max: f64,
    /// The bound: `max(fixed_max, float_max) · 2^margin_bits` (real units).
    pub bound: f64,
    /// `ℓ` of the bound at `frac_bits`: every value `|y| < 2^ℓ` (integer at the plan's scale).
    pub bits: u32,
}

/// Per truncation point magnitude bounds measured on data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bounds {
    /// Margin over the observed maxima: bounds are the maxima × `2^margin_bits`.
    pub margin_bits: u32,
    /// Images the maxima were observed on.
    pub images: usize,
    /// Where the images came from (dataset, split, selection).
    pub source: String,
    /// One per truncation point, in the plan's order.
    pub points: Vec<PointBound>,
}

impl Bounds {
    /// The bound of truncation point (`node`, `kind`).
    pub fn get(&self, node: &str, kind: TruncKind) -> Option<&PointBound> {
        self.points
            .iter()
            .find(|p| p.node == node && p.kind == kind)
    }

    /// `ℓ` with `|y| < 2^ℓ` for the point's values encoded at `frac_bits`
    /// fractional bits; `None` when the point has no bound.
    pub fn bits(&self, node: &str, kind: TruncKind, frac_bits: u32) -> Option<u32> {
        self.get(node, kind)
            .map(|p| magnitude_bits(p.bound * 2f64.powi(frac_bits as i32)))
    }

    /// Checks that these bounds cover exactly `points` (names, kinds and
    /// scales, in order) and are consistent numbers.
    pub fn check(&self, points: &[TruncPoint]) -> Result<(), String> {
        if self.points.len() != points.len() {
            return Err(format!(
                "bounds for {} truncation points, the network's plan has {}",
                self.points.len(),
                points.len()
            ));
        }
        for (i, (b, p)) in self.points.iter().zip(points).enumerate() {
            if b.node != p.name || b.kind != p.kind {
                return Err(format!(
                    "bound {i} is for {} ({}), the plan's point {i} is {} ({})",
                    b.node, b.kind, p.name, p.kind
                ));
            }
            if b.frac_bits != p.frac_bits {
                return Err(format!(
                    "bound {i} ({} {}) was measured at 2^{}, the plan has 2^{}",
                    b.node, b.kind, b.frac_bits, p.frac_bits
                ));
            }
            let ok = |v: f64| v.is_finite() && v >= 0.0;
            if !ok(b.bound) || !ok(b.fixed_max) || !ok(b.float_max) {
                return Err(format!(
                    "bound {i} ({} {}) is not a finite non-negative number",
                    b.node, b.kind
                ));
            }
            let want = b.fixed_max.max(b.float_max) * 2f64.powi(self.margin_bits as i32);
            // JSON keeps 17 significant digits: allow a relative 1e-12.
            if (b.bound - want).abs() > 1e-12 * want {
                return Err(format!(
                    "bound {i} ({} {}) is {}, its maxima × 2^{} give {want}",
                    b.node, b.kind, b.bound, self.margin_bits
                ));
            }
            let bits = magnitude_bits(b.bound * 2f64.powi(b.frac_bits as i32));
            if b.bits != bits {
                return Err(format!(
                    "bound {i} ({} {}) says ℓ = {}, its bound gives {bits}",
                    b.node, b.kind, b.bits
                ));
            }
        }
        Ok(())
    }
}

/// Both passes on one image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageEval {
    /// Float logits.
    pub float_logits: Vec<f64>,
    /// Fixed-point logits, decoded.
    pub fixed_logits: Vec<f64>,
    /// Per truncation point: largest `|y|` before truncation in the
    /// fixed-point pass (integer at the point's `frac_bits`).
    pub fixed_max: Vec<u64>,
    /// Per truncation point: largest `|value|` at the same place in the float pass.
    pub float_max: Vec<f64>,
}

/// The float evaluator, recording the largest `|value|` at every
/// truncation point (site inputs, polynomial values of replaced elements,
/// truncating batch norms' and rounded pools' outputs).
struct FloatTracer<'p> {
    inner: FloatEvaluator,
    /// Per node: slot of its main point and of its polynomial point.
    slots: &'p [[Option<usize>; 2]],
    maxima: Vec<f64>,
}

fn max_abs_f64(v: &[f64]) -> f64 {
    v.iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

impl FloatTracer<'_> {
    fn note(&mut self, node: usize, k: usize, v: f64) {
        if let Some(s) = self.slots.get(node).and_then(|s| s[k]) {
            self.maxima[s] = self.maxima[s].max(v);
        }
    }
}

impl Evaluator for FloatTracer<'_> {
    type Value = Vec<f64>;

    fn input(&mut self, x: &[f32], shape: FeatureShape) -> crate::Result<Vec<f64>> {
        self.inner.input(x, shape)
    }

    fn conv(&mut self, ctx: &NodeCtx<'_>, c: &Conv2d, x: &Vec<f64>) -> crate::Result<Vec<f64>> {
        self.inner.conv(ctx, c, x)
    }

    fn batchnorm(
        &mut self,
        ctx: &NodeCtx<'_>,
        bn: &BatchNorm,
        x: &Vec<f64>,
    ) -> crate::Result<Vec<f64>> {
        // The truncation point is the batch norm's input (see reference::EncodedNetwork).
        self.note(ctx.index, 0, max_abs_f64(x));
        self.inner.batchnorm(ctx, bn, x)
    }

    fn linear(&mut self, ctx: &NodeCtx<'_>, l: &Linear, x: &Vec<f64>) -> crate::Result<Vec<f64>> {
        self.inner.linear(ctx, l, x)
    }

    fn avgpool(
        &mut self,
        ctx: &NodeCtx<'_>,
        kernel: usize,
        stride: usize,
        x: &Vec<f64>,
    ) -> crate::Result<Vec<f64>> {
        let y = self.inner.avgpool(ctx, kernel, stride, x)?;
        self.note(ctx.index, 0, max_abs_f64(&y));
        Ok(y)
    }

    fn global_avgpool(&mut self, ctx: &NodeCtx<'_>, x: &Vec<f64>) -> crate::Result<Vec<f64>> {
        let y = self.inner.global_avgpool(ctx, x)?;
        self.note(ctx.index, 0, max_abs_f64(&y));
        Ok(y)
    }

    fn maxpool(
        &mut self,
        ctx: &NodeCtx<'_>,
        kernel: usize,
        stride: usize,
        x: &Vec<f64>,
    ) -> crate::Result<Vec<f64>> {
        // No truncation point: the values are its input's.
        self.inner.maxpool(ctx, kernel, stride, x)
    }

    fn add(&mut self, ctx: &NodeCtx<'_>, a: &Vec<f64>, b: &Vec<f64>) -> crate::Result<Vec<f64>> {
        self.inner.add(ctx, a, b)
    }

    fn slice(
        &mut self,
        ctx: &NodeCtx<'_>,
        start: usize,
        len: usize,
        x: &Vec<f64>,
    ) -> crate::Result<Vec<f64>> {
        // No truncation point: a selection.
        self.inner.slice(ctx, start, len, x)
    }

    fn concat(&mut self, ctx: &NodeCtx<'_>, parts: &[&Vec<f64>]) -> crate::Result<Vec<f64>> {
        // No truncation point: exact lifts.
        self.inner.concat(ctx, parts)
    }

    fn site(&mut self, ctx: &NodeCtx<'_>, site: &Site, x: &Vec<f64>) -> crate::Result<Vec<f64>> {
        self.note(ctx.index, 0, max_abs_f64(x));
        let y = self.inner.site(ctx, site, x)?;
        if site.poly.is_some() {
            let m = y
                .iter()
                .zip(&site.mask)
                .filter(|(_, &m)| m == 0)
                .fold(0.0f64, |m, (v, _)| m.max(v.abs()));
            self.note(ctx.index, 1, m);
        }
        Ok(y)
    }
}

/// A prepared evaluator for many images: the plan's truncation points and
/// the float tracer's slots.
#[derive(Debug)]
pub struct Runner<'a> {
    /// The network.
    pub net: &'a Network,
    /// Its encoding.
    pub enc: &'a EncodedNetwork,
    /// The plan's truncation points.
    pub points: Vec<TruncPoint>,
    slots: Vec<[Option<usize>; 2]>,
}

impl<'a> Runner<'a> {
    /// Prepares `net` encoded as `enc`.
    pub fn new(net: &'a Network, enc: &'a EncodedNetwork) -> Runner<'a> {
        let points = truncation_points(net, enc);
        let mut slots = vec![[None, None]; net.nodes.len()];
        for (k, p) in points.iter().enumerate() {
            let j = usize::from(p.kind == TruncKind::SitePoly);
            slots[p.node][j] = Some(k);
        }
        Runner {
            net,
            enc,
            points,
            slots,
        }
    }

    /// Both passes on one image (`threads` threads for the convolutions).
    pub fn evaluate(&self, x: &[f32], threads: usize) -> Result<ImageEval, ModelError> {
        let mut fl = FloatTracer {
            inner: FloatEvaluator {
                threads: threads.max(1),
            },
            slots: &self.slots,
            maxima: vec![0.0; self.points.len()],
        };
        let float_logits = forward(self.net, &mut fl, x)?;
        let mut fx = FixedEvaluator::new(self.enc).with_threads(threads);
        let raw = forward(self.net, &mut fx, x)?;
        let fixed_logits = self.enc.decode_logits(&raw.data);
        let mut fixed_max = vec![0u64; self.points.len()];
        for (k, s) in fx.stats.iter().enumerate() {
            match self.points.get(k) {
                Some(p) if p.node == s.node && p.kind == s.kind && p.frac_bits == s.frac_bits => {
                    fixed_max[k] = s.max_abs;
                }
                _ => {
                    return Err(ModelError::Graph {
                        node: s.node,
                        name: s.name.clone(),
                        reason: format!(
                            "the fixed-point pass truncated ({} at 2^{}) where the plan has no \
                             truncation point {k}",
                            s.kind, s.frac_bits
                        ),
                    })
                }
            }
        }
        if fx.stats.len() != self.points.len() {
            return Err(ModelError::Graph {
                node: 0,
                name: self.net.name.clone(),
                reason: format!(
                    "the fixed-point pass truncated at {} points, the plan has {}",
                    fx.stats.len(),
                    self.points.len()
                ),
            });
        }
        Ok(ImageEval {
            float_logits,
            fixed_logits,
            fixed_max,
            float_max: fl.maxima,
        })
    }

    /// Both passes on images `0..n` (`image(i)` gives image `i`) over
    /// `threads` threads: images run in parallel, each with
    /// `threads / workers` threads for its convolutions. `progress` is
    /// called with the number of images done. Results are in image order;
    /// the first failing image (lowest index) is the error.
    pub fn evaluate_many<F>(
        &self,
        n: usize,
        threads: usize,
        image: F,
        progress: Option<&(dyn Fn(usize) + Sync)>,
    ) -> Result<Vec<ImageEval>, CalibrateError>
    where
        F: Fn(usize) -> Result<Vec<f32>, DataError> + Sync,
    {
        let workers = threads.max(1).min(n.max(1));
        let inner = (threads.max(1) / workers).max(1);
        let next = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<Result<ImageEval, CalibrateError>>>> =
            Mutex::new((0..n).map(|_| None).collect());
        let failed = AtomicUsize::new(usize::MAX);
        let panicked = std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    s.spawn(|| loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n || i > failed.load(Ordering::Relaxed) {
                            break;
                        }
                        let r = image(i)
                            .map_err(|source| CalibrateError::Data { image: i, source })
                            .and_then(|x| {
                                self.evaluate(&x, inner)
                                    .map_err(|source| CalibrateError::Model { image: i, source })
                            });
                        if r.is_err() {
                            failed.fetch_min(i, Ordering::Relaxed);
                        }
                        if let Ok(mut v) = results.lock() {
                            v[i] = Some(r);
                        }
                        let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if let Some(p) = progress {
                            p(d);
                        }
                    })
                })
                .collect();
            handles.into_iter().any(|h| h.join().is_err())
        });
        if panicked {
            return Err(CalibrateError::Thread);
        }
        let results = results.into_inner().map_err(|_| CalibrateError::Thread)?;
        let mut out = Vec::with_capacity(n);
        for r in results {
            match r {
                Some(r) => out.push(r?),
                None => return Err(CalibrateError::Thread),
            }
        }
        Ok(out)
    }
}

/// Per truncation point maxima accumulated over images.
#[derive(Debug, Clone, PartialEq)]
pub struct Observations {
    /// The plan's truncation points.
    pub points: Vec<TruncPoint>,
    /// Largest fixed-point `|y|` (integer at the point's scale).
    pub fixed_max: Vec<u64>,
    /// Largest float `|value|`.
    pub float_max: Vec<f64>,
    /// Images observed.
    pub images: usize,
}

impl Observations {
    /// No image observed yet.
    pub fn new(points: Vec<TruncPoint>) -> Observations {
        let n = points.len();
        Observations {
            points,
            fixed_max: vec![0; n],
            float_max: vec![0.0; n],
            images: 0,
        }
    }

    /// Adds one image's maxima.
    pub fn add(&mut self, e: &ImageEval) {
        for (m, &v) in self.fixed_max.iter_mut().zip(&e.fixed_max) {
            *m = (*m).max(v);
        }
        for (m, &v) in self.float_max.iter_mut().zip(&e.float_max) {
            *m = m.max(v);
        }
        self.images += 1;
    }

    /// Point `k`'s fixed-point maximum in real units.
    pub fn fixed_real(&self, k: usize) -> f64 {
        self.fixed_max[k] as f64 / 2f64.powi(self.points[k].frac_bits as i32)
    }

    /// The bounds: per point `max(fixed, float) · 2^margin_bits`.
    pub fn bounds(&self, margin_bits: u32, source: String) -> Bounds {
        let factor = 2f64.powi(margin_bits as i32);
        let points = self
            .points
            .iter()
            .enumerate()
            .map(|(k, p)| {
                let fixed_max = self.fixed_real(k);
                let float_max = self.float_max[k];
                let bound = fixed_max.max(float_max) * factor;
                PointBound {
                    node: p.name.clone(),
                    kind: p.kind,
                    frac_bits: p.frac_bits,
                    fixed_max,
                    float_max,
                    bound,
                    bits: magnitude_bits(bound * 2f64.powi(p.frac_bits as i32)),
                }
            })
            .collect();
        Bounds {
            margin_bits,
            images: self.images,
            source,
            points,
        }
    }
}

/// An image on which the two passes choose different classes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Disagreement {
    /// Image index in the run.
    pub image: usize,
    /// Float top-1.
    pub float_class: usize,
    /// Fixed-point top-1.
    pub fixed_class: usize,
    /// Float top-1 logit minus float top-2 logit.
    pub float_margin: f64,
}

/// Fixed-point against float over a test set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fidelity {
    /// Images.
    pub images: usize,
    /// Float top-1 correct.
    pub float_correct: usize,
    /// Fixed-point top-1 correct.
    pub fixed_correct: usize,
    /// Images where both passes choose the same class.
    pub agree: usize,
    /// Largest `|Δlogit|` over all images and classes.
    pub max_abs_delta: f64,
    /// Mean `|Δlogit|` over all images and classes.
    pub mean_abs_delta: f64,
    /// Largest float `|logit|` over all images.
    pub max_abs_logit: f64,
    /// `max_abs_delta / max_abs_logit`.
    pub max_delta_relative: f64,
    /// Largest per-image `max |Δlogit| / max |logit|` (same image).
    pub worst_image_relative: f64,
    /// Image of `worst_image_relative`.
    pub worst_image: usize,
    /// The images where top-1 differs.
    pub disagreements: Vec<Disagreement>,
}

impl Fidelity {
    /// Computes the comparison; `labels[i]` is image `i`'s label.
    pub fn of(evals: &[ImageEval], labels: &[usize]) -> Fidelity {
        let mut f = Fidelity {
            images: evals.len(),
            float_correct: 0,
            fixed_correct: 0,
            agree: 0,
            max_abs_delta: 0.0,
            mean_abs_delta: 0.0,
            max_abs_logit: 0.0,
            max_delta_relative: 0.0,
            worst_image_relative: 0.0,
            worst_image: 0,
            disagreements: Vec::new(),
        };
        let mut sum = 0.0;
        let mut count = 0usize;
        for (i, e) in evals.iter().enumerate() {
            let fc = argmax(&e.float_logits);
            let qc = argmax(&e.fixed_logits);
            let label = labels.get(i).copied();
            if fc.is_some() && fc == label {
                f.float_correct += 1;
            }
            if qc.is_some() && qc == label {
                f.fixed_correct += 1;
            }
            if fc == qc {
                f.agree += 1;
            } else if let (Some(fc), Some(qc)) = (fc, qc) {
                let mut sorted = e.float_logits.clone();
                sorted.sort_by(|a, b| b.total_cmp(a));
                f.disagreements.push(Disagreement {
                    image: i,
                    float_class: fc,
                    fixed_class: qc,
                    float_margin: sorted[0] - sorted.get(1).copied().unwrap_or(f64::NEG_INFINITY),
                });
            }
            let mut img_delta = 0.0f64;
            for (a, b) in e.float_logits.iter().zip(&e.fixed_logits) {
                let d = (a - b).abs();
                img_delta = img_delta.max(d);
                sum += d;
                count += 1;
            }
            let img_logit = max_abs_f64(&e.float_logits);
            f.max_abs_delta = f.max_abs_delta.max(img_delta);
            f.max_abs_logit = f.max_abs_logit.max(img_logit);
            let rel = if img_logit > 0.0 {
                img_delta / img_logit
            } else {
                img_delta
            };
            if rel > f.worst_image_relative {
                f.worst_image_relative = rel;
                f.worst_image = i;
            }
        }
        f.mean_abs_delta = if count > 0 { sum / count as f64 } else { 0.0 };
        f.max_delta_relative = if f.max_abs_logit > 0.0 {
            f.max_abs_delta / f.max_abs_logit
        } else {
            f.max_abs_delta
        };
        f
    }

    /// Fraction of images where both passes agree.
    pub fn agreement(&self) -> f64 {
        ratio(self.agree, self.images)
    }

    /// Float top-1 accuracy.
    pub fn float_top1(&self) -> f64 {
        ratio(self.float_correct, self.images)
    }

    /// Fixed-point top-1 accuracy.
    pub fn fixed_top1(&self) -> f64 {
        ratio(self.fixed_correct, self.images)
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magnitude_bits_is_the_strict_bound() {
        assert_eq!(magnitude_bits(0.0), 0);
        assert_eq!(magnitude_bits(0.9), 0);
        assert_eq!(magnitude_bits(1.0), 1);
        assert_eq!(magnitude_bits(255.5), 8);
        assert_eq!(magnitude_bits(256.0), 9);
        assert_eq!(magnitude_bits(f64::INFINITY), u32::MAX);
    }
}
