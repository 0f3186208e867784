//! Plaintext references: a float forward pass and a fixed-point forward pass
//! over the field of [`crate::fixed`] that does exactly the protocol's
//! arithmetic.
//!
//! Both passes are driven by one walk over the op list ([`forward`]) through
//! the [`Evaluator`] trait, and both call the same generic layer kernels of
//! [`kernels`] (on `f64` and on `u64` field elements respectively).
//!
//! # Fixed-point semantics
//! Values carry a scale: *activation* `2^fa` or *product* `2^(fa+fw)`.
//! * Input: encoded at `2^fa` (round to nearest).
//! * Conv / Linear: input at `2^fa`; weights with the batch norm folded in,
//!   encoded at `2^fw`; bias at `2^(fa+fw)`; output at `2^(fa+fw)`.
//! * Add: operands at equal scale are added; an activation-scale operand
//!   (a shortcut from a site's output) is first lifted by an exact
//!   multiplication with `2^fw`.
//! * Site (input at `2^(fa+fw)`): `t = truncate(y, fw)` (signed floor), then
//!   per element: ReLU `max(t, 0)`; identity `t`; polynomial
//!   `s = truncate(t·t, fa)`, `out = truncate(A2·s + A1·t + A0·2^fa, fw)`
//!   with `A_i` the channel's coefficients at `2^fw`. Output at `2^fa`.
//! * Global average pool followed (through Flatten) by a Linear: the pool
//!   computes plane sums (exact) and the Linear's weights are divided by the
//!   plane size before encoding.
//! * Other average pools: `truncate(sum · round(2^fw / window), fw)`; the
//!   scale is unchanged.
//! * Standalone batch norm (pre-activation nets): scale at `2^fw`, shift at
//!   `2^(fa+fw)`; on a product-scale input `truncate(scale·x, fw) + shift`,
//!   on an activation-scale input `scale·x + shift`; output at `2^(fa+fw)`.
//! * Logits at `2^(fa+fw)`.
//!
//! The pass reports, per truncation point (sites, pools, batch norms), the
//! largest `|value|` before truncation, and fails with
//! [`ModelError::Overflow`] as soon as a value (or, for linear layers, the
//! bound `max|x|·max_o Σ|w| + max|b|`) reaches `2^`[`SAFE_BITS`].

pub mod kernels;

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::fixed::{self, FixedPoint};
use crate::graph::{BatchNorm, Conv2d, FeatureShape, Linear, Network, Op, Site};
use kernels::ConvGeometry;

/// Values must stay below `2^SAFE_BITS` in magnitude (two bits below the field size).
pub const SAFE_BITS: u32 = fixed::FIELD_BITS - 2;

/// What the driver tells an evaluator about the node being evaluated.
#[derive(Debug, Clone, Copy)]
pub struct NodeCtx<'a> {
    /// Node index.
    pub index: usize,
    /// Node name.
    pub name: &'a str,
    /// Shape of the (first) input.
    pub in_shape: FeatureShape,
    /// Output shape.
    pub out_shape: FeatureShape,
}

/// One implementation per number system; [`forward`] drives it over the op list.
pub trait Evaluator {
    /// A tensor value.
    type Value: Clone;
    /// Encodes the network input.
    fn input(&mut self, x: &[f32], shape: FeatureShape) -> Result<Self::Value>;
    /// Convolution with folded batch norm.
    fn conv(&mut self, ctx: &NodeCtx<'_>, conv: &Conv2d, x: &Self::Value) -> Result<Self::Value>;
    /// Standalone batch norm.
    fn batchnorm(
        &mut self,
        ctx: &NodeCtx<'_>,
        bn: &BatchNorm,
        x: &Self::Value,
    ) -> Result<Self::Value>;
    /// Fully connected layer; `pooled_from` is set when a global average pool is folded into it.
    fn linear(
        &mut self,
        ctx: &NodeCtx<'_>,
        linear: &Linear,
        pooled_from: Option<FeatureShape>,
        x: &Self::Value,
    ) -> Result<Self::Value>;
    /// Average pool.
    fn avgpool(
        &mut self,
        ctx: &NodeCtx<'_>,
        kernel: usize,
        stride: usize,
        x: &Self::Value,
    ) -> Result<Self::Value>;
    /// Global average pool; `folded` when the following Linear takes the division.
    fn global_avgpool(
        &mut self,
        ctx: &NodeCtx<'_>,
        folded: bool,
        x: &Self::Value,
    ) -> Result<Self::Value>;
    /// Residual add.
    fn add(&mut self, ctx: &NodeCtx<'_>, a: &Self::Value, b: &Self::Value) -> Result<Self::Value>;
    /// Activation site.
    fn site(&mut self, ctx: &NodeCtx<'_>, site: &Site, x: &Self::Value) -> Result<Self::Value>;
}

/// Global average pools whose division is folded into the following Linear.
pub fn folded_pools(net: &Network) -> HashSet<usize> {
    let mut set = HashSet::new();
    for (i, n) in net.nodes.iter().enumerate() {
        if matches!(n.op, Op::Linear(_)) && net.pooled_input_of(i).is_some() {
            let flat = n.inputs[0];
            let pool = if matches!(net.nodes[flat].op, Op::Flatten) {
                net.nodes[flat].inputs[0]
            } else {
                flat
            };
            set.insert(pool);
        }
    }
    set
}

/// Runs `eval` over the network's op list and returns the last node's value.
pub fn forward<E: Evaluator>(net: &Network, eval: &mut E, input: &[f32]) -> Result<E::Value> {
    let mut values = walk(net, eval, input, false)?;
    values.pop().flatten().ok_or_else(|| ModelError::Graph {
        node: net.nodes.len().saturating_sub(1),
        name: "output".into(),
        reason: "no output value".into(),
    })
}

/// Like [`forward`], but returns every node's value (index = node index),
/// e.g. to compare a protocol's intermediate shares with the reference.
pub fn forward_trace<E: Evaluator>(
    net: &Network,
    eval: &mut E,
    input: &[f32],
) -> Result<Vec<E::Value>> {
    walk(net, eval, input, true)?
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            v.ok_or_else(|| ModelError::Graph {
                node: i,
                name: net.nodes[i].name.clone(),
                reason: "no value".into(),
            })
        })
        .collect()
}

fn walk<E: Evaluator>(
    net: &Network,
    eval: &mut E,
    input: &[f32],
    keep_all: bool,
) -> Result<Vec<Option<E::Value>>> {
    net.validate()?;
    if input.len() != net.input.len() {
        return Err(ModelError::InputSize {
            found: input.len(),
            expected: net.input.len(),
            shape: net.input.to_string(),
        });
    }
    let folded = folded_pools(net);
    // Free each value after its last use.
    let mut last_use = vec![0usize; net.nodes.len()];
    for (i, n) in net.nodes.iter().enumerate() {
        for &j in &n.inputs {
            last_use[j] = i;
        }
    }
    let mut values: Vec<Option<E::Value>> = vec![None; net.nodes.len()];
    let missing = |i: usize, name: &str| ModelError::Graph {
        node: i,
        name: name.to_string(),
        reason: "input value not available (graph not in topological order)".into(),
    };
    for (i, node) in net.nodes.iter().enumerate() {
        let in_shape = node
            .inputs
            .first()
            .map_or(net.input, |&j| net.nodes[j].shape);
        let ctx = NodeCtx {
            index: i,
            name: &node.name,
            in_shape,
            out_shape: node.shape,
        };
        let arg = |k: usize| -> Result<&E::Value> {
            node.inputs
                .get(k)
                .and_then(|&j| values.get(j))
                .and_then(|v| v.as_ref())
                .ok_or_else(|| missing(i, &node.name))
        };
        let v = match &node.op {
            Op::Input => eval.input(input, net.input)?,
            Op::Conv2d(c) => eval.conv(&ctx, c, arg(0)?)?,
            Op::BatchNorm(bn) => eval.batchnorm(&ctx, bn, arg(0)?)?,
            Op::Linear(l) => eval.linear(&ctx, l, net.pooled_input_of(i), arg(0)?)?,
            Op::AvgPool { kernel, stride } => eval.avgpool(&ctx, *kernel, *stride, arg(0)?)?,
            Op::GlobalAvgPool => eval.global_avgpool(&ctx, folded.contains(&i), arg(0)?)?,
            Op::Add => eval.add(&ctx, arg(0)?, arg(1)?)?,
            Op::Flatten => arg(0)?.clone(),
            Op::Site(s) => eval.site(&ctx, s, arg(0)?)?,
        };
        values[i] = Some(v);
        if !keep_all {
            for &j in &node.inputs {
                if last_use[j] == i {
                    values[j] = None;
                }
            }
        }
    }
    Ok(values)
}

fn geometry(c: &Conv2d, input: FeatureShape) -> ConvGeometry {
    ConvGeometry {
        input,
        cout: c.cout,
        kernel: c.kernel,
        stride: c.stride,
        padding: c.padding,
        groups: c.groups,
    }
}

/// The float reference (computed in `f64`).
#[derive(Debug, Default)]
pub struct FloatEvaluator;

impl Evaluator for FloatEvaluator {
    type Value = Vec<f64>;

    fn input(&mut self, x: &[f32], _shape: FeatureShape) -> Result<Vec<f64>> {
        Ok(x.iter().map(|&v| v as f64).collect())
    }

    fn conv(&mut self, ctx: &NodeCtx<'_>, conv: &Conv2d, x: &Vec<f64>) -> Result<Vec<f64>> {
        let (w, b) = conv.folded();
        Ok(kernels::conv2d(
            x,
            &w,
            Some(&b),
            &geometry(conv, ctx.in_shape),
        ))
    }

    fn batchnorm(&mut self, ctx: &NodeCtx<'_>, bn: &BatchNorm, x: &Vec<f64>) -> Result<Vec<f64>> {
        let (scale, shift) = bn.affine();
        let plane = ctx.in_shape.plane();
        Ok(x.iter()
            .enumerate()
            .map(|(i, &v)| v * scale[i / plane] + shift[i / plane])
            .collect())
    }

    fn linear(
        &mut self,
        _ctx: &NodeCtx<'_>,
        l: &Linear,
        _pooled_from: Option<FeatureShape>,
        x: &Vec<f64>,
    ) -> Result<Vec<f64>> {
        let w: Vec<f64> = l.weight.data.iter().map(|&v| v as f64).collect();
        let b: Vec<f64> = l.bias.iter().map(|&v| v as f64).collect();
        Ok(kernels::linear(x, &w, Some(&b), l.out_features))
    }

    fn avgpool(
        &mut self,
        ctx: &NodeCtx<'_>,
        kernel: usize,
        stride: usize,
        x: &Vec<f64>,
    ) -> Result<Vec<f64>> {
        let k = (kernel * kernel) as f64;
        Ok(kernels::sum_pool(x, ctx.in_shape, kernel, stride)
            .into_iter()
            .map(|s| s / k)
            .collect())
    }

    fn global_avgpool(
        &mut self,
        ctx: &NodeCtx<'_>,
        _folded: bool,
        x: &Vec<f64>,
    ) -> Result<Vec<f64>> {
        let k = ctx.in_shape.plane() as f64;
        Ok(kernels::global_sum_pool(x, ctx.in_shape)
            .into_iter()
            .map(|s| s / k)
            .collect())
    }

    fn add(&mut self, _ctx: &NodeCtx<'_>, a: &Vec<f64>, b: &Vec<f64>) -> Result<Vec<f64>> {
        Ok(kernels::add(a, b))
    }

    fn site(&mut self, _ctx: &NodeCtx<'_>, site: &Site, x: &Vec<f64>) -> Result<Vec<f64>> {
        let plane = site.shape.plane();
        Ok(x.iter()
            .zip(&site.mask)
            .enumerate()
            .map(|(i, (&v, &m))| {
                if m == 1 {
                    v.max(0.0)
                } else if let Some(p) = &site.poly {
                    let c = i / plane;
                    p.a2[c] as f64 * v * v + p.a1[c] as f64 * v + p.a0[c] as f64
                } else {
                    v
                }
            })
            .collect())
    }
}

/// Float forward pass: logits.
pub fn forward_float(net: &Network, input: &[f32]) -> Result<Vec<f64>> {
    forward(net, &mut FloatEvaluator, input)
}

/// Scale of a fixed-point value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scale {
    /// `2^fa`.
    Act,
    /// `2^(fa+fw)`.
    Product,
}

/// A fixed-point tensor: field elements and their scale.
#[derive(Debug, Clone, PartialEq)]
pub struct FixedValue {
    /// Elements in `[0, P)`.
    pub data: Vec<u64>,
    /// Their scale.
    pub scale: Scale,
}

/// Largest value before truncation at one truncation point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TruncationStat {
    /// Node index.
    pub node: usize,
    /// Node (site) name.
    pub name: String,
    /// `site`, `avgpool`, `global_avgpool` or `batchnorm`.
    pub kind: String,
    /// Largest `|y|` before truncation (integer at the pre-truncation scale).
    pub max_abs: u64,
    /// Bits of `max_abs` (`ℓ` with `max_abs < 2^ℓ`).
    pub bits: u32,
}

/// Encoded parameters of one node, exactly as the protocol uses them.
#[derive(Debug, Clone, PartialEq)]
pub enum EncodedOp {
    /// Convolution with folded batch norm.
    Conv {
        /// Geometry.
        geometry: ConvGeometry,
        /// Weights at `2^fw`.
        weight: Vec<u64>,
        /// Bias at `2^(fa+fw)`.
        bias: Vec<u64>,
        /// `max_o Σ |w|` of the encoded weights.
        l1_max: u128,
        /// `max |b|`.
        bias_max: u64,
    },
    /// Fully connected layer (weights divided by the pool size when a global pool is folded in).
    Linear {
        /// Weights at `2^fw`, `[out, in]`.
        weight: Vec<u64>,
        /// Bias at `2^(fa+fw)`.
        bias: Vec<u64>,
        /// Output features.
        out_features: usize,
        /// `max_o Σ |w|`.
        l1_max: u128,
        /// `max |b|`.
        bias_max: u64,
    },
    /// Standalone batch norm.
    BatchNorm {
        /// Per-channel scale at `2^fw`.
        scale: Vec<u64>,
        /// Per-channel shift at `2^(fa+fw)`.
        shift: Vec<u64>,
        /// `max |scale|`.
        scale_max: u64,
    },
    /// Average pool (or unfolded global pool): `truncate(sum · multiplier, fw)`.
    Pool {
        /// `round(2^fw / window)`.
        multiplier: u64,
    },
    /// Global average pool folded into the next Linear: plane sums only.
    FoldedPool,
    /// Site polynomial coefficients `A2, A1, A0` at `2^fw` per channel (`None`: identity replacement).
    Site {
        /// `[A2, A1, A0]`, one value per channel each.
        poly: Option<[Vec<u64>; 3]>,
    },
}

fn l1_rows(w: &[u64], rows: usize) -> u128 {
    let n = w.len() / rows.max(1);
    (0..rows)
        .map(|r| {
            w[r * n..(r + 1) * n]
                .iter()
                .map(|&v| fixed::to_i64(v).unsigned_abs() as u128)
                .sum::<u128>()
        })
        .max()
        .unwrap_or(0)
}

fn max_abs(v: &[u64]) -> u64 {
    v.iter()
        .map(|&x| fixed::to_i64(x).unsigned_abs())
        .max()
        .unwrap_or(0)
}

fn bits(v: u128) -> u32 {
    128 - v.leading_zeros()
}

/// The network's parameters encoded for the fixed-point pass (and the protocol).
#[derive(Debug, Clone)]
pub struct EncodedNetwork {
    /// Fixed-point parameters.
    pub fixed: FixedPoint,
    /// Per node (`None` for input, add, flatten).
    pub ops: Vec<Option<EncodedOp>>,
}

impl EncodedNetwork {
    /// Encodes every weight, bias, batch norm, pool multiplier and polynomial.
    pub fn new(net: &Network, fp: FixedPoint) -> Result<Self> {
        fp.validate()?;
        net.validate()?;
        let folded = folded_pools(net);
        let mut ops = Vec::with_capacity(net.nodes.len());
        for (i, node) in net.nodes.iter().enumerate() {
            let in_shape = node
                .inputs
                .first()
                .map_or(net.input, |&j| net.nodes[j].shape);
            let what = |t: &str| format!("{}.{t}", node.name);
            let op = match &node.op {
                Op::Conv2d(c) => {
                    let (w, b) = c.folded();
                    let weight = w
                        .iter()
                        .map(|&v| fp.encode_weight(v, &what("weight")))
                        .collect::<std::result::Result<Vec<_>, _>>()?;
                    let bias = b
                        .iter()
                        .map(|&v| fp.encode_bias(v, &what("bias")))
                        .collect::<std::result::Result<Vec<_>, _>>()?;
                    Some(EncodedOp::Conv {
                        geometry: geometry(c, in_shape),
                        l1_max: l1_rows(&weight, c.cout),
                        bias_max: max_abs(&bias),
                        weight,
                        bias,
                    })
                }
                Op::Linear(l) => {
                    let div = net.pooled_input_of(i).map_or(1.0, |s| s.plane() as f64);
                    let weight = l
                        .weight
                        .data
                        .iter()
                        .map(|&v| fp.encode_weight(v as f64 / div, &what("weight")))
                        .collect::<std::result::Result<Vec<_>, _>>()?;
                    let bias = l
                        .bias
                        .iter()
                        .map(|&v| fp.encode_bias(v as f64, &what("bias")))
                        .collect::<std::result::Result<Vec<_>, _>>()?;
                    Some(EncodedOp::Linear {
                        l1_max: l1_rows(&weight, l.out_features),
                        bias_max: max_abs(&bias),
                        weight,
                        bias,
                        out_features: l.out_features,
                    })
                }
                Op::BatchNorm(bn) => {
                    let (s, t) = bn.affine();
                    let scale = s
                        .iter()
                        .map(|&v| fp.encode_weight(v, &what("scale")))
                        .collect::<std::result::Result<Vec<_>, _>>()?;
                    let shift = t
                        .iter()
                        .map(|&v| fp.encode_bias(v, &what("shift")))
                        .collect::<std::result::Result<Vec<_>, _>>()?;
                    Some(EncodedOp::BatchNorm {
                        scale_max: max_abs(&scale),
                        scale,
                        shift,
                    })
                }
                Op::AvgPool { kernel, .. } => Some(EncodedOp::Pool {
                    multiplier: pool_multiplier(fp, kernel * kernel),
                }),
                Op::GlobalAvgPool if folded.contains(&i) => Some(EncodedOp::FoldedPool),
                Op::GlobalAvgPool => Some(EncodedOp::Pool {
                    multiplier: pool_multiplier(fp, in_shape.plane()),
                }),
                Op::Site(s) => {
                    let poly = match &s.poly {
                        None => None,
                        Some(p) => {
                            let enc = |v: &[f32], n: &str| {
                                v.iter()
                                    .map(|&x| {
                                        fp.encode_weight(x as f64, &format!("{}.{n}", s.name))
                                    })
                                    .collect::<std::result::Result<Vec<_>, _>>()
                            };
                            Some([enc(&p.a2, "a2")?, enc(&p.a1, "a1")?, enc(&p.a0, "a0")?])
                        }
                    };
                    Some(EncodedOp::Site { poly })
                }
                Op::Input | Op::Add | Op::Flatten => None,
            };
            ops.push(op);
        }
        Ok(Self { fixed: fp, ops })
    }
}

/// `round(2^fw / window)`, at least 1.
pub fn pool_multiplier(fp: FixedPoint, window: usize) -> u64 {
    let m = ((1u64 << fp.weight_frac_bits) as f64 / window.max(1) as f64).round() as u64;
    m.max(1)
}

/// The fixed-point evaluator.
#[derive(Debug)]
pub struct FixedEvaluator<'a> {
    enc: &'a EncodedNetwork,
    /// Pre-truncation maxima, in node order.
    pub stats: Vec<TruncationStat>,
}

impl<'a> FixedEvaluator<'a> {
    /// An evaluator over encoded parameters.
    pub fn new(enc: &'a EncodedNetwork) -> Self {
        Self {
            enc,
            stats: Vec::new(),
        }
    }

    fn fp(&self) -> FixedPoint {
        self.enc.fixed
    }

    fn op(&self, ctx: &NodeCtx<'_>) -> Result<&'a EncodedOp> {
        self.enc
            .ops
            .get(ctx.index)
            .and_then(|o| o.as_ref())
            .ok_or_else(|| ModelError::Graph {
                node: ctx.index,
                name: ctx.name.into(),
                reason: "no encoded parameters for this node (encoded for another network?)".into(),
            })
    }

    fn check(ctx: &NodeCtx<'_>, magnitude: u128) -> Result<()> {
        if bits(magnitude) > SAFE_BITS {
            return Err(ModelError::Overflow {
                node: ctx.index,
                name: ctx.name.into(),
                bits: bits(magnitude),
                limit_bits: SAFE_BITS,
            });
        }
        Ok(())
    }

    fn need(ctx: &NodeCtx<'_>, v: &FixedValue, scale: Scale) -> Result<()> {
        if v.scale != scale {
            return Err(ModelError::Graph {
                node: ctx.index,
                name: ctx.name.into(),
                reason: format!(
                    "input at {:?} scale, this op needs {:?} scale",
                    v.scale, scale
                ),
            });
        }
        Ok(())
    }

    fn record(&mut self, ctx: &NodeCtx<'_>, kind: &str, max: u64) {
        self.stats.push(TruncationStat {
            node: ctx.index,
            name: ctx.name.into(),
            kind: kind.into(),
            max_abs: max,
            bits: bits(max as u128),
        });
    }

    fn truncating_pool(
        &mut self,
        ctx: &NodeCtx<'_>,
        kind: &str,
        sums: Vec<u64>,
        scale: Scale,
    ) -> Result<FixedValue> {
        let m = match self.op(ctx)? {
            EncodedOp::Pool { multiplier } => *multiplier,
            _ => return Err(wrong_op(ctx)),
        };
        let mx = max_abs(&sums);
        Self::check(ctx, mx as u128 * m as u128)?;
        let fw = self.fp().weight_frac_bits;
        let pre: Vec<u64> = sums.iter().map(|&s| fixed::mul(s, m)).collect();
        self.record(ctx, kind, max_abs(&pre));
        Ok(FixedValue {
            data: pre.into_iter().map(|v| fixed::truncate(v, fw)).collect(),
            scale,
        })
    }
}

fn wrong_op(ctx: &NodeCtx<'_>) -> ModelError {
    ModelError::Graph {
        node: ctx.index,
        name: ctx.name.into(),
        reason: "encoded parameters do not match the op".into(),
    }
}

impl Evaluator for FixedEvaluator<'_> {
    type Value = FixedValue;

    fn input(&mut self, x: &[f32], _shape: FeatureShape) -> Result<FixedValue> {
        let fp = self.fp();
        let data = x
            .iter()
            .enumerate()
            .map(|(i, &v)| fp.encode_act(v as f64, &format!("input element {i}")))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(FixedValue {
            data,
            scale: Scale::Act,
        })
    }

    fn conv(&mut self, ctx: &NodeCtx<'_>, _conv: &Conv2d, x: &FixedValue) -> Result<FixedValue> {
        Self::need(ctx, x, Scale::Act)?;
        let EncodedOp::Conv {
            geometry,
            weight,
            bias,
            l1_max,
            bias_max,
        } = self.op(ctx)?
        else {
            return Err(wrong_op(ctx));
        };
        Self::check(ctx, max_abs(&x.data) as u128 * l1_max + *bias_max as u128)?;
        Ok(FixedValue {
            data: kernels::conv2d_field(&x.data, weight, Some(bias), geometry),
            scale: Scale::Product,
        })
    }

    fn batchnorm(
        &mut self,
        ctx: &NodeCtx<'_>,
        _bn: &BatchNorm,
        x: &FixedValue,
    ) -> Result<FixedValue> {
        let EncodedOp::BatchNorm {
            scale,
            shift,
            scale_max,
        } = self.op(ctx)?
        else {
            return Err(wrong_op(ctx));
        };
        let plane = ctx.in_shape.plane();
        let fw = self.fp().weight_frac_bits;
        Self::check(ctx, max_abs(&x.data) as u128 * *scale_max as u128)?;
        let scaled: Vec<u64> = x
            .data
            .iter()
            .enumerate()
            .map(|(i, &v)| fixed::mul(v, scale[i / plane]))
            .collect();
        let scaled = match x.scale {
            Scale::Act => scaled,
            Scale::Product => {
                self.record(ctx, "batchnorm", max_abs(&scaled));
                scaled.into_iter().map(|v| fixed::truncate(v, fw)).collect()
            }
        };
        let data: Vec<u64> = scaled
            .iter()
            .enumerate()
            .map(|(i, &v)| fixed::add(v, shift[i / plane]))
            .collect();
        Self::check(ctx, max_abs(&data) as u128)?;
        Ok(FixedValue {
            data,
            scale: Scale::Product,
        })
    }

    fn linear(
        &mut self,
        ctx: &NodeCtx<'_>,
        _l: &Linear,
        _pooled_from: Option<FeatureShape>,
        x: &FixedValue,
    ) -> Result<FixedValue> {
        Self::need(ctx, x, Scale::Act)?;
        let EncodedOp::Linear {
            weight,
            bias,
            out_features,
            l1_max,
            bias_max,
        } = self.op(ctx)?
        else {
            return Err(wrong_op(ctx));
        };
        Self::check(ctx, max_abs(&x.data) as u128 * l1_max + *bias_max as u128)?;
        Ok(FixedValue {
            data: kernels::linear_field(&x.data, weight, Some(bias), *out_features),
            scale: Scale::Product,
        })
    }

    fn avgpool(
        &mut self,
        ctx: &NodeCtx<'_>,
        kernel: usize,
        stride: usize,
        x: &FixedValue,
    ) -> Result<FixedValue> {
        Self::check(ctx, max_abs(&x.data) as u128 * (kernel * kernel) as u128)?;
        let sums = kernels::sum_pool(&x.data, ctx.in_shape, kernel, stride);
        self.truncating_pool(ctx, "avgpool", sums, x.scale)
    }

    fn global_avgpool(
        &mut self,
        ctx: &NodeCtx<'_>,
        folded: bool,
        x: &FixedValue,
    ) -> Result<FixedValue> {
        let window = ctx.in_shape.plane();
        Self::check(ctx, max_abs(&x.data) as u128 * window as u128)?;
        let sums = kernels::global_sum_pool(&x.data, ctx.in_shape);
        if folded {
            if !matches!(self.op(ctx)?, EncodedOp::FoldedPool) {
                return Err(wrong_op(ctx));
            }
            return Ok(FixedValue {
                data: sums,
                scale: x.scale,
            });
        }
        self.truncating_pool(ctx, "global_avgpool", sums, x.scale)
    }

    fn add(&mut self, ctx: &NodeCtx<'_>, a: &FixedValue, b: &FixedValue) -> Result<FixedValue> {
        let fw = self.fp().weight_frac_bits;
        let lift = |v: &FixedValue| -> Result<Vec<u64>> {
            Self::check(ctx, (max_abs(&v.data) as u128) << fw)?;
            Ok(v.data.iter().map(|&x| fixed::mul(x, 1u64 << fw)).collect())
        };
        let (da, db, scale) = match (a.scale, b.scale) {
            (Scale::Act, Scale::Product) => (lift(a)?, b.data.clone(), Scale::Product),
            (Scale::Product, Scale::Act) => (a.data.clone(), lift(b)?, Scale::Product),
            (s, _) => (a.data.clone(), b.data.clone(), s),
        };
        let data = kernels::add(&da, &db);
        Self::check(ctx, max_abs(&data) as u128)?;
        Ok(FixedValue { data, scale })
    }

    fn site(&mut self, ctx: &NodeCtx<'_>, site: &Site, x: &FixedValue) -> Result<FixedValue> {
        Self::need(ctx, x, Scale::Product)?;
        let EncodedOp::Site { poly } = self.op(ctx)? else {
            return Err(wrong_op(ctx));
        };
        let fp = self.fp();
        let (fa, fw) = (fp.act_frac_bits, fp.weight_frac_bits);
        let pre_max = max_abs(&x.data);
        Self::check(ctx, pre_max as u128)?;
        self.record(ctx, "site", pre_max);
        let plane = site.shape.plane();
        let one_act = fixed::from_i64(1i64 << fa);
        let mut out = Vec::with_capacity(x.data.len());
        for (i, (&y, &m)) in x.data.iter().zip(&site.mask).enumerate() {
            let t = fixed::truncate(y, fw);
            let v = if m == 1 {
                if fixed::to_i64(t) > 0 {
                    t
                } else {
                    0
                }
            } else if let Some([a2, a1, a0]) = poly {
                let c = i / plane;
                let tm = fixed::to_i64(t).unsigned_abs() as u128;
                Self::check(ctx, tm * tm)?;
                let s = fixed::truncate(fixed::mul(t, t), fa);
                let mag = fixed::to_i64(a2[c]).unsigned_abs() as u128
                    * fixed::to_i64(s).unsigned_abs() as u128
                    + fixed::to_i64(a1[c]).unsigned_abs() as u128 * tm
                    + ((fixed::to_i64(a0[c]).unsigned_abs() as u128) << fa);
                Self::check(ctx, mag)?;
                let z = fixed::add(
                    fixed::add(fixed::mul(a2[c], s), fixed::mul(a1[c], t)),
                    fixed::mul(a0[c], one_act),
                );
                fixed::truncate(z, fw)
            } else {
                t
            };
            out.push(v);
        }
        Ok(FixedValue {
            data: out,
            scale: Scale::Act,
        })
    }
}

/// Result of a fixed-point forward pass.
#[derive(Debug, Clone)]
pub struct FixedOutput {
    /// Logits as field elements.
    pub raw: FixedValue,
    /// Logits decoded to reals.
    pub logits: Vec<f64>,
    /// Pre-truncation maxima per truncation point, in node order.
    pub truncations: Vec<TruncationStat>,
}

/// Fixed-point forward pass with encoded parameters.
pub fn forward_fixed_encoded(
    net: &Network,
    enc: &EncodedNetwork,
    input: &[f32],
) -> Result<FixedOutput> {
    let mut ev = FixedEvaluator::new(enc);
    let raw = forward(net, &mut ev, input)?;
    let fp = enc.fixed;
    let logits = raw
        .data
        .iter()
        .map(|&v| match raw.scale {
            Scale::Act => fp.decode_act(v),
            Scale::Product => fp.decode_product(v),
        })
        .collect();
    Ok(FixedOutput {
        raw,
        logits,
        truncations: ev.stats,
    })
}

/// Fixed-point forward pass (encodes the parameters first).
pub fn forward_fixed(net: &Network, fp: FixedPoint, input: &[f32]) -> Result<FixedOutput> {
    let enc = EncodedNetwork::new(net, fp)?;
    forward_fixed_encoded(net, &enc, input)
}

/// Index of the largest value (first on ties).
pub fn argmax(v: &[f64]) -> Option<usize> {
    v.iter()
        .enumerate()
        .fold(None, |best: Option<(usize, f64)>, (i, &x)| match best {
            Some((_, b)) if b >= x => best,
            _ => Some((i, x)),
        })
        .map(|(i, _)| i)
}
