//! Plaintext references: a float forward pass and a fixed-point forward pass
//! over the field of [`crate::fixed`] that does exactly the protocol's
//! arithmetic.
//!
//! Both passes are driven by one walk over the op list ([`forward`]) through
//! the [`Evaluator`] trait, and both call the same generic layer kernels of
//! [`kernels`] (on `f64` and on `u64` field elements respectively).
//!
//! # Fixed-point semantics: the scale plan
//! Every value carries a scale, a number of fractional bits; the plan
//! ([`EncodedNetwork::new`]) fixes it per node from the public structure and
//! the weights, and the protocol follows the same plan (it is part of the
//! public architecture both parties agree on).
//! * Input: encoded at `fa` bits (round to nearest).
//! * Conv / Linear (batch norm folded in): weights at a per-layer `fw_l`
//!   bits, the largest `≤ max_weight_frac_bits` that keeps every encoded
//!   weight below `2^15` and — when the output reaches a truncation point —
//!   keeps the output scale `s_in + fw_l ≤ fa + 16`; bias at `s_in + fw_l`.
//! * Add: operands are aligned exactly: the lower-scale one is multiplied by
//!   `2^(s_hi − s_lo)`; output at `s_hi`.
//! * Slice (a channel range) keeps its input's scale; Concat aligns its
//!   inputs exactly like Add: output at the largest input scale `s`, input
//!   `k` multiplied by `2^(s − s_k)` ([`EncodedNetwork::concat_lifts`]).
//!   Neither has encoded parameters (`ops[i] = None`): both are determined by
//!   the public structure and [`EncodedNetwork::scales`].
//! * Average pools (global or `k×k`) sum their window exactly; a
//!   power-of-two window of `2^m` elements then just reads the sum at scale
//!   `s + m` (no rounding at all). Other windows multiply by
//!   `round(2^16 / window)` and truncate by 16 (a truncation point).
//! * Standalone batch norm (pre-activation nets): per-channel scale at
//!   `fw_bn` bits; if `s_in + fw_bn` would leave the value above `fa + 16`
//!   fractional bits before a site, the *input* is first truncated by the
//!   excess `t` (a truncation point), then multiplied; shift at `s_in − t +
//!   fw_bn`. Truncating the input (at most `s_in ≤ fa + 16` fractional bits,
//!   like a site's input) rather than the product (`s_in + fw_bn` ≈ 40
//!   fractional bits) keeps the magnitude `ℓ` of the truncated value ~16 bits
//!   smaller, and with it the failure probability `2^(ℓ+1)/P` of local
//!   truncation (a WRN-22-8's batch norms: 2^−11 per element before, 2^−27
//!   after).
//! * Site (input at `s`): `t = round(y / 2^f)` with `f = s − fa ≤ 16`
//!   ([`fixed::truncate_round`]; a site fed at scale `fa` is first lifted by
//!   one bit so that `f ≥ 1`), then per element: ReLU `max(t, 0)`; identity
//!   `t`; polynomial `round((A2·t² + A1·2^fa·t + A0·2^(2fa)) / 2^(fa+fp))`
//!   with the channel's coefficients at `fp` bits (one rounding).
//! * Logits at the last node's scale.
//!
//! The pass reports, per truncation point, the largest `|value|` before
//! truncation and its scale, and fails with [`ModelError::Overflow`] as soon
//! as a value (or, for linear layers, the bound `max|x|·max_o Σ|w| +
//! max|b|`) reaches `2^`[`SAFE_BITS`].

mod dgemm;
pub mod gemm;
pub mod kernels;

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
    /// Fully connected layer.
    fn linear(
        &mut self,
        ctx: &NodeCtx<'_>,
        linear: &Linear,
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
    /// Global average pool.
    fn global_avgpool(&mut self, ctx: &NodeCtx<'_>, x: &Self::Value) -> Result<Self::Value>;
    /// Max pool (exact in every number system: a selection, no arithmetic).
    fn maxpool(
        &mut self,
        ctx: &NodeCtx<'_>,
        kernel: usize,
        stride: usize,
        x: &Self::Value,
    ) -> Result<Self::Value>;
    /// Residual add.
    fn add(&mut self, ctx: &NodeCtx<'_>, a: &Self::Value, b: &Self::Value) -> Result<Self::Value>;
    /// Channels `start..start + len` of `x` (a selection: no arithmetic).
    fn slice(
        &mut self,
        ctx: &NodeCtx<'_>,
        start: usize,
        len: usize,
        x: &Self::Value,
    ) -> Result<Self::Value>;
    /// Channel concatenation of `parts` (two or more, in input order).
    fn concat(&mut self, ctx: &NodeCtx<'_>, parts: &[&Self::Value]) -> Result<Self::Value>;
    /// Activation site.
    fn site(&mut self, ctx: &NodeCtx<'_>, site: &Site, x: &Self::Value) -> Result<Self::Value>;
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
    // Free each value after its last use.
    let last_use = last_uses(net);
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
        let v = apply(
            eval,
            &ctx,
            &node.op,
            node.inputs.len(),
            input,
            net.input,
            arg,
        )?;
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

/// For each node, the index of the last node that reads it (values can be
/// freed after it).
fn last_uses(net: &Network) -> Vec<usize> {
    let mut last_use = vec![0usize; net.nodes.len()];
    for (i, n) in net.nodes.iter().enumerate() {
        for &j in &n.inputs {
            last_use[j] = i;
        }
    }
    last_use
}

/// One node of the op list: the single place that maps an [`Op`] to its
/// [`Evaluator`] call (`arg(k)` is the node's `k`-th input value, of `n_inputs`).
fn apply<'v, E: Evaluator + ?Sized>(
    eval: &mut E,
    ctx: &NodeCtx<'_>,
    op: &Op,
    n_inputs: usize,
    input: &[f32],
    input_shape: FeatureShape,
    arg: impl Fn(usize) -> Result<&'v E::Value>,
) -> Result<E::Value>
where
    E::Value: 'v,
{
    Ok(match op {
        Op::Input => eval.input(input, input_shape)?,
        Op::Conv2d(c) => eval.conv(ctx, c, arg(0)?)?,
        Op::BatchNorm(bn) => eval.batchnorm(ctx, bn, arg(0)?)?,
        Op::Linear(l) => eval.linear(ctx, l, arg(0)?)?,
        Op::AvgPool { kernel, stride } => eval.avgpool(ctx, *kernel, *stride, arg(0)?)?,
        Op::GlobalAvgPool => eval.global_avgpool(ctx, arg(0)?)?,
        Op::MaxPool { kernel, stride } => eval.maxpool(ctx, *kernel, *stride, arg(0)?)?,
        Op::Add => eval.add(ctx, arg(0)?, arg(1)?)?,
        Op::Slice { start, len } => eval.slice(ctx, *start, *len, arg(0)?)?,
        Op::Concat => {
            let parts = (0..n_inputs).map(&arg).collect::<Result<Vec<_>>>()?;
            eval.concat(ctx, &parts)?
        }
        Op::Flatten => arg(0)?.clone(),
        Op::Site(s) => eval.site(ctx, s, arg(0)?)?,
    })
}

/// Data-free batch-norm statistics for a network with random weights: walks
/// the op list over `inputs` (float) and sets every batch norm's
/// `running_mean` / `running_var` to the per-channel mean and (biased)
/// variance of its input over all images and positions, in topological
/// order, so that each layer sees the already normalised output of the
/// layers before it. `gamma` and `beta` are kept.
///
/// Why: a seeded random network (He-uniform weights) with its ReLUs masked
/// to the identity doubles the variance at every identity layer and adds
/// it up along residual paths; without this, the activations of a
/// random-weight WRN-22-8 reach 2^26 and no fixed-point encoding holds them,
/// while a trained network's batch norms keep them O(1). This is what
/// training's batch statistics would be on these inputs; it makes
/// random-weight rows (latency tables) behave like trained networks in
/// magnitude, not in accuracy. Returns the number of batch norms set.
pub fn set_batchnorm_statistics(
    net: &mut Network,
    inputs: &[Vec<f32>],
    threads: usize,
) -> Result<usize> {
    net.validate()?;
    if inputs.is_empty() {
        return Err(ModelError::Graph {
            node: 0,
            name: "input".into(),
            reason: "batch-norm statistics need at least one input".into(),
        });
    }
    for x in inputs {
        if x.len() != net.input.len() {
            return Err(ModelError::InputSize {
                found: x.len(),
                expected: net.input.len(),
                shape: net.input.to_string(),
            });
        }
    }
    let mut eval = FloatEvaluator { threads };
    let last_use = last_uses(net);
    // values[node][image]
    let mut values: Vec<Option<Vec<Vec<f64>>>> = vec![None; net.nodes.len()];
    let mut set = 0;
    for i in 0..net.nodes.len() {
        let node = &net.nodes[i];
        let in_shape = node
            .inputs
            .first()
            .map_or(net.input, |&j| net.nodes[j].shape);
        let name = node.name.clone();
        let ctx = NodeCtx {
            index: i,
            name: &name,
            in_shape,
            out_shape: node.shape,
        };
        let missing = || ModelError::Graph {
            node: i,
            name: name.clone(),
            reason: "input value not available (graph not in topological order)".into(),
        };
        let mut outs = Vec::with_capacity(inputs.len());
        // The op without its batch norm, and the batch norm's input shape.
        let (op, bn_shape) = match &node.op {
            Op::Conv2d(c) if c.bn.is_some() => {
                let mut raw = c.clone();
                raw.bn = None;
                (Op::Conv2d(raw), Some(node.shape))
            }
            Op::BatchNorm(_) => (Op::Flatten, Some(in_shape)),
            other => (other.clone(), None),
        };
        for (k, x) in inputs.iter().enumerate() {
            let arg = |a: usize| -> Result<&Vec<f64>> {
                node.inputs
                    .get(a)
                    .and_then(|&j| values[j].as_ref())
                    .and_then(|v| v.get(k))
                    .ok_or_else(missing)
            };
            outs.push(apply(
                &mut eval,
                &ctx,
                &op,
                node.inputs.len(),
                x,
                net.input,
                arg,
            )?);
        }
        if let Some(shape) = bn_shape {
            let plane = shape.plane().max(1);
            let n = (plane * outs.len()) as f64;
            let mut mean = vec![0f64; shape.c];
            let mut sq = vec![0f64; shape.c];
            for o in &outs {
                for (j, &v) in o.iter().enumerate() {
                    mean[j / plane] += v;
                    sq[j / plane] += v * v;
                }
            }
            let bn = match &mut net.nodes[i].op {
                Op::Conv2d(c) => c.bn.as_mut(),
                Op::BatchNorm(bn) => Some(bn),
                _ => None,
            };
            if let Some(bn) = bn {
                for c in 0..shape.c {
                    let m = mean[c] / n;
                    bn.running_mean[c] = m as f32;
                    bn.running_var[c] = (sq[c] / n - m * m).max(0.0) as f32;
                }
                let (scale, shift) = bn.affine();
                for o in &mut outs {
                    for (j, v) in o.iter_mut().enumerate() {
                        *v = *v * scale[j / plane] + shift[j / plane];
                    }
                }
                set += 1;
            }
        }
        values[i] = Some(outs);
        for &j in &net.nodes[i].inputs {
            if last_use[j] == i {
                values[j] = None;
            }
        }
    }
    Ok(set)
}

/// A seeded random input of `len` values, uniform in `[−2, 2)` (ChaCha12):
/// `pibench run`'s default input and the images of
/// [`calibrate_random_batchnorm`].
pub fn random_input(len: usize, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen_range(-2.0f32..2.0)).collect()
}

/// Images used by [`calibrate_random_batchnorm`].
pub const BN_CALIBRATION_IMAGES: usize = 4;

/// Sets the batch-norm statistics of a seeded random network
/// ([`set_batchnorm_statistics`]) from [`BN_CALIBRATION_IMAGES`] inputs of
/// [`random_input`] drawn from seeds derived from `seed` (not the inference
/// inputs' seeds). Returns the sentence a report prints.
pub fn calibrate_random_batchnorm(net: &mut Network, seed: u64) -> Result<String> {
    let base = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xB7E1_5162_8AED_2A6B;
    let inputs: Vec<Vec<f32>> = (0..BN_CALIBRATION_IMAGES as u64)
        .map(|k| random_input(net.input.len(), base.wrapping_add(k)))
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = set_batchnorm_statistics(net, &inputs, threads)?;
    Ok(format!(
        "{n} batch norms' running statistics set from {BN_CALIBRATION_IMAGES} seeded random \
         inputs (data-free calibration of the random weights)"
    ))
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

/// The float reference (computed in `f64`; convolutions as matrix products
/// over `threads` threads).
#[derive(Debug)]
pub struct FloatEvaluator {
    /// Threads for the convolutions.
    pub threads: usize,
}

impl Default for FloatEvaluator {
    fn default() -> Self {
        Self { threads: 1 }
    }
}

impl Evaluator for FloatEvaluator {
    type Value = Vec<f64>;

    fn input(&mut self, x: &[f32], _shape: FeatureShape) -> Result<Vec<f64>> {
        Ok(x.iter().map(|&v| v as f64).collect())
    }

    fn conv(&mut self, ctx: &NodeCtx<'_>, conv: &Conv2d, x: &Vec<f64>) -> Result<Vec<f64>> {
        let (w, b) = conv.folded();
        Ok(gemm::conv2d_f64(
            x,
            &w,
            Some(&b),
            &geometry(conv, ctx.in_shape),
            self.threads,
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

    fn linear(&mut self, _ctx: &NodeCtx<'_>, l: &Linear, x: &Vec<f64>) -> Result<Vec<f64>> {
        let w: Vec<f64> = l.weight.data.iter().map(|&v| v as f64).collect();
        let b: Vec<f64> = l.bias.iter().map(|&v| v as f64).collect();
        Ok(gemm::linear_f64(x, &w, Some(&b), l.out_features))
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

    fn global_avgpool(&mut self, ctx: &NodeCtx<'_>, x: &Vec<f64>) -> Result<Vec<f64>> {
        let k = ctx.in_shape.plane() as f64;
        Ok(kernels::global_sum_pool(x, ctx.in_shape)
            .into_iter()
            .map(|s| s / k)
            .collect())
    }

    fn maxpool(
        &mut self,
        ctx: &NodeCtx<'_>,
        kernel: usize,
        stride: usize,
        x: &Vec<f64>,
    ) -> Result<Vec<f64>> {
        Ok(kernels::max_pool_by(x, ctx.in_shape, kernel, stride, |v| v))
    }

    fn add(&mut self, _ctx: &NodeCtx<'_>, a: &Vec<f64>, b: &Vec<f64>) -> Result<Vec<f64>> {
        Ok(kernels::add(a, b))
    }

    fn slice(
        &mut self,
        ctx: &NodeCtx<'_>,
        start: usize,
        len: usize,
        x: &Vec<f64>,
    ) -> Result<Vec<f64>> {
        Ok(kernels::channel_slice(x, ctx.in_shape, start, len))
    }

    fn concat(&mut self, _ctx: &NodeCtx<'_>, parts: &[&Vec<f64>]) -> Result<Vec<f64>> {
        let parts: Vec<&[f64]> = parts.iter().map(|p| p.as_slice()).collect();
        Ok(kernels::concat_channels(&parts, |_, v| v))
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
    forward(net, &mut FloatEvaluator::default(), input)
}

/// A fixed-point tensor: field elements and their scale.
#[derive(Debug, Clone, PartialEq)]
pub struct FixedValue {
    /// Elements in `[0, P)`.
    pub data: Vec<u64>,
    /// Fractional bits of every element.
    pub frac_bits: u32,
}

/// Which kind of truncation point a [`TruncationStat`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TruncKind {
    /// A site's input (all elements; ReLU elements in the garbled circuit).
    Site,
    /// The second rounding of a site's polynomial elements.
    SitePoly,
    /// A standalone batch norm that truncates.
    BatchNorm,
    /// A non-power-of-two average pool.
    AvgPool,
    /// A non-power-of-two global average pool.
    GlobalAvgPool,
}

impl TruncKind {
    /// Short name.
    pub fn as_str(self) -> &'static str {
        match self {
            TruncKind::Site => "site",
            TruncKind::SitePoly => "site_poly",
            TruncKind::BatchNorm => "batchnorm",
            TruncKind::AvgPool => "avgpool",
            TruncKind::GlobalAvgPool => "global_avgpool",
        }
    }
}

impl std::fmt::Display for TruncKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Largest value before truncation at one truncation point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TruncationStat {
    /// Node index.
    pub node: usize,
    /// Node (site) name.
    pub name: String,
    /// What is truncated.
    pub kind: TruncKind,
    /// Largest `|y|` before truncation (integer at the pre-truncation scale).
    pub max_abs: u64,
    /// Bits of `max_abs` (`ℓ` with `max_abs < 2^ℓ`).
    pub bits: u32,
    /// Fractional bits of the value before truncation (`max_abs / 2^frac_bits` is real).
    pub frac_bits: u32,
    /// Truncation amount.
    pub trunc_bits: u32,
}

impl TruncationStat {
    /// The bound as a real number.
    pub fn max_real(&self) -> f64 {
        self.max_abs as f64 / 2f64.powi(self.frac_bits as i32)
    }
}

/// How an average pool (or global average pool) is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum PoolPlan {
    /// Window of `2^shift` elements: the exact sum, read at `shift` more fractional bits.
    Exact {
        /// `log2(window)`.
        shift: u32,
    },
    /// Other windows: `round(sum · multiplier / 2^trunc)`, `multiplier = round(2^trunc / window)`.
    Rounded {
        /// `round(2^trunc / window)`.
        multiplier: u64,
        /// Truncation amount (16).
        trunc: u32,
    },
}

/// A site's replacement polynomial, encoded: the value before the final
/// rounding is `v = c2·t² + c1·t + c0` (scale `2·fa + frac_bits`), the
/// output `round(v / 2^trunc)` with `trunc = fa + frac_bits`.
#[derive(Debug, Clone, PartialEq)]
pub struct PolyPlan {
    /// `A2` per channel (at `frac_bits`).
    pub c2: Vec<u64>,
    /// `A1·2^fa` per channel.
    pub c1: Vec<u64>,
    /// `A0·2^(2fa)` per channel.
    pub c0: Vec<u64>,
    /// Fractional bits of the coefficients.
    pub frac_bits: u32,
    /// Final truncation amount `fa + frac_bits` (may exceed 16: the
    /// protocol's exact mode then truncates in two garbled steps, which is
    /// the same rounding because `floor(floor(x/2^a)/2^b) = floor(x/2^(a+b))`).
    pub trunc: u32,
}

/// Encoded parameters of one node, exactly as the protocol uses them.
///
/// Ops without parameters have no `EncodedOp` (`None` in
/// [`EncodedNetwork::ops`]): input, flatten, max pool, and the channel ops
/// [`Op::Slice`] (output = the input's channels `start..start + len`, at the
/// input's scale) and [`Op::Concat`] (output = the inputs' channels in
/// input order, input `k` multiplied by `2^lift[k]` first, `lift` from
/// [`EncodedNetwork::concat_lifts`], at the largest input scale). Both are
/// linear in the values, so each party applies them to its additive shares
/// locally (a lift is a public multiplication by a power of two, exact in
/// the field like `Add`'s).
#[derive(Debug, Clone, PartialEq)]
pub enum EncodedOp {
    /// Convolution with folded batch norm.
    Conv {
        /// Geometry.
        geometry: ConvGeometry,
        /// Weights at `frac_bits`.
        weight: Vec<u64>,
        /// Bias at the output scale.
        bias: Vec<u64>,
        /// The layer's weight fractional bits `fw_l`.
        frac_bits: u32,
        /// `max_o Σ |w|` of the encoded weights.
        l1_max: u128,
        /// `max |b|`.
        bias_max: u64,
        /// The weights prepared for [`gemm`] (on first use).
        prepared: gemm::PreparedCache,
    },
    /// Fully connected layer.
    Linear {
        /// Weights at `frac_bits`, `[out, in]`.
        weight: Vec<u64>,
        /// Bias at the output scale.
        bias: Vec<u64>,
        /// Output features.
        out_features: usize,
        /// The layer's weight fractional bits `fw_l`.
        frac_bits: u32,
        /// `max_o Σ|w|`.
        l1_max: u128,
        /// `max |b|`.
        bias_max: u64,
        /// The weights prepared for [`gemm`] (on first use).
        prepared: gemm::PreparedCache,
    },
    /// Standalone batch norm: `scale·round(x / 2^trunc) + shift`.
    BatchNorm {
        /// Per-channel scale at `frac_bits`.
        scale: Vec<u64>,
        /// Per-channel shift at `s_in − trunc + frac_bits`.
        shift: Vec<u64>,
        /// Fractional bits of the scale.
        frac_bits: u32,
        /// Truncation amount (0: none).
        trunc: u32,
        /// `max |scale|`.
        scale_max: u64,
    },
    /// Average pool or global average pool.
    Pool(PoolPlan),
    /// Residual add: input `k` is multiplied by `2^lift[k]` first.
    Add {
        /// Exact lifts of the two operands.
        lift: [u32; 2],
    },
    /// Activation site.
    Site {
        /// The input is multiplied by `2^lift` first (so that `trunc ≥ 1`).
        lift: u32,
        /// Truncation amount of the site input (`1..=16`).
        trunc: u32,
        /// Polynomial replacing the masked-out elements (`None`: identity).
        poly: Option<PolyPlan>,
    },
}

impl EncodedOp {
    /// A convolution or fully connected layer applied to field values
    /// (weights, bias; exact, [`gemm`], weights prepared once per op): the
    /// fixed-point reference on values and the server on its shares call
    /// this same function. `None` for other ops.
    pub fn linear_field(&self, x: &[u64], threads: usize) -> Option<Vec<u64>> {
        let pw = self.prepare_linear()?;
        match self {
            EncodedOp::Conv {
                geometry,
                weight,
                bias,
                ..
            } => Some(gemm::conv2d_field_prepared(
                x,
                weight,
                pw,
                Some(bias),
                geometry,
                threads,
            )),
            EncodedOp::Linear {
                weight,
                bias,
                out_features,
                ..
            } => Some(gemm::linear_field_prepared(
                x,
                weight,
                pw,
                Some(bias),
                *out_features,
            )),
            _ => None,
        }
    }

    /// The weights of a convolution or fully connected op prepared for
    /// [`gemm`], computed on the first call (a server calls this at model
    /// load, so that no inference pays for it). `None` for other ops.
    pub fn prepare_linear(&self) -> Option<&gemm::PreparedWeights> {
        match self {
            EncodedOp::Conv {
                geometry,
                weight,
                prepared,
                ..
            } => Some(prepared.get_or_prepare(|| gemm::PreparedWeights::conv(weight, geometry))),
            EncodedOp::Linear {
                weight,
                out_features,
                prepared,
                ..
            } => Some(prepared.get_or_prepare(|| {
                let in_features = weight.len() / (*out_features).max(1);
                gemm::PreparedWeights::linear(weight, *out_features, in_features)
            })),
            _ => None,
        }
    }
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

/// The largest `f ≤ cap` with `|round(x·2^f)| < 2^WEIGHT_MAGNITUDE_BITS` for the largest `|x|`.
fn frac_bits_for(max_real: f64, cap: u32) -> u32 {
    let limit = 2f64.powi(fixed::WEIGHT_MAGNITUDE_BITS as i32);
    let mut f = cap;
    while f > 0 && (max_real * 2f64.powi(f as i32)).round() >= limit {
        f -= 1;
    }
    f
}

/// The network's parameters and scale plan, encoded for the fixed-point
/// pass and the protocol (one encoding for both).
#[derive(Debug, Clone)]
pub struct EncodedNetwork {
    /// Fixed-point parameters.
    pub fixed: FixedPoint,
    /// Per node (`None` for input, flatten, max pool, slice and concat).
    pub ops: Vec<Option<EncodedOp>>,
    /// Fractional bits of each node's output.
    pub scales: Vec<u32>,
}

impl EncodedNetwork {
    /// Plans every node's scale and encodes every weight, bias, batch norm,
    /// pool and polynomial (see the module doc).
    pub fn new(net: &Network, fp: FixedPoint) -> Result<Self> {
        fp.validate()?;
        net.validate()?;
        let fa = fp.act_frac_bits;
        let top = fa + fixed::MAX_TRUNC_BITS;
        let n = net.nodes.len();
        // Does node i's output (through adds and flattens) reach an op that
        // truncates or consumes a bounded scale?
        let mut needs_cap = vec![false; n];
        for i in (0..n).rev() {
            needs_cap[i] = net.consumers(i).into_iter().any(|j| match net.nodes[j].op {
                Op::Add | Op::Flatten | Op::MaxPool { .. } | Op::Slice { .. } | Op::Concat => {
                    needs_cap[j]
                }
                _ => true,
            });
        }
        let mut scales = vec![0u32; n];
        let mut ops = Vec::with_capacity(n);
        for (i, node) in net.nodes.iter().enumerate() {
            let s_in = node.inputs.first().map_or(fa, |&j| scales[j]);
            let in_shape = node
                .inputs
                .first()
                .map_or(net.input, |&j| net.nodes[j].shape);
            let what = |t: &str| format!("{}.{t}", node.name);
            let plan_err = |reason: String| ModelError::Graph {
                node: i,
                name: node.name.clone(),
                reason,
            };
            let weight_cap = |s_in: u32| -> Result<u32> {
                if !needs_cap[i] {
                    return Ok(fp.max_weight_frac_bits);
                }
                match top.checked_sub(s_in) {
                    Some(c) if c > 0 => Ok(c.min(fp.max_weight_frac_bits)),
                    _ => Err(plan_err(format!(
                        "input at 2^{s_in} leaves no fractional bits for the weights before the next \
                         truncation (at most {} bits above the activation scale)",
                        fixed::MAX_TRUNC_BITS
                    ))),
                }
            };
            // The error's label is formatted only when an element fails.
            let encode_all = |v: &[f64], f: u32, t: &str| -> Result<Vec<u64>> {
                v.iter()
                    .enumerate()
                    .map(|(k, &x)| {
                        fixed::encode(x, f, "")
                            .map_err(|_| fixed::encode(x, f, &format!("{} element {k}", what(t))))
                            .map_err(|e| match e {
                                Err(e) => ModelError::from(e),
                                Ok(_) => ModelError::Graph {
                                    node: i,
                                    name: node.name.clone(),
                                    reason: format!("cannot encode {}", what(t)),
                                },
                            })
                    })
                    .collect()
            };
            let max_real = |v: &[f64]| v.iter().fold(0f64, |m, x| m.max(x.abs()));
            let (op, scale) = match &node.op {
                Op::Input => (None, fa),
                // A max pool or a slice selects values: same scale, nothing encoded.
                Op::Flatten | Op::MaxPool { .. } | Op::Slice { .. } => (None, s_in),
                // Nothing encoded: the lifts follow from the scales (concat_lifts).
                Op::Concat => (
                    None,
                    node.inputs.iter().map(|&j| scales[j]).max().unwrap_or(s_in),
                ),
                Op::Conv2d(c) => {
                    let (w, b) = c.folded();
                    let f = frac_bits_for(max_real(&w), weight_cap(s_in)?);
                    let weight = encode_all(&w, f, "weight")?;
                    let bias = encode_all(&b, s_in + f, "bias")?;
                    check_weight_magnitude(i, &node.name, &weight)?;
                    (
                        Some(EncodedOp::Conv {
                            geometry: geometry(c, in_shape),
                            l1_max: l1_rows(&weight, c.cout),
                            bias_max: max_abs(&bias),
                            weight,
                            bias,
                            frac_bits: f,
                            prepared: Default::default(),
                        }),
                        s_in + f,
                    )
                }
                Op::Linear(l) => {
                    let w: Vec<f64> = l.weight.data.iter().map(|&v| v as f64).collect();
                    let b: Vec<f64> = l.bias.iter().map(|&v| v as f64).collect();
                    let f = frac_bits_for(max_real(&w), weight_cap(s_in)?);
                    let weight = encode_all(&w, f, "weight")?;
                    let bias = encode_all(&b, s_in + f, "bias")?;
                    check_weight_magnitude(i, &node.name, &weight)?;
                    (
                        Some(EncodedOp::Linear {
                            l1_max: l1_rows(&weight, l.out_features),
                            bias_max: max_abs(&bias),
                            weight,
                            bias,
                            out_features: l.out_features,
                            frac_bits: f,
                            prepared: Default::default(),
                        }),
                        s_in + f,
                    )
                }
                Op::BatchNorm(bn) => {
                    let (sc, sh) = bn.affine();
                    let f = frac_bits_for(max_real(&sc), fp.max_weight_frac_bits);
                    let scale = encode_all(&sc, f, "scale")?;
                    // Truncate the input (not the product): see the module doc.
                    let trunc = if needs_cap[i] {
                        (s_in + f).saturating_sub(top).min(s_in)
                    } else {
                        0
                    };
                    let mid = s_in - trunc + f;
                    let shift = encode_all(&sh, mid, "shift")?;
                    check_weight_magnitude(i, &node.name, &scale)?;
                    if trunc > fixed::MAX_TRUNC_BITS {
                        return Err(plan_err(format!(
                            "would truncate by {trunc} bits (at most {})",
                            fixed::MAX_TRUNC_BITS
                        )));
                    }
                    (
                        Some(EncodedOp::BatchNorm {
                            scale_max: max_abs(&scale),
                            scale,
                            shift,
                            frac_bits: f,
                            trunc,
                        }),
                        mid,
                    )
                }
                Op::AvgPool { kernel, .. } => {
                    let plan = pool_plan(kernel * kernel, s_in, top);
                    (Some(EncodedOp::Pool(plan)), pool_scale(plan, s_in))
                }
                Op::GlobalAvgPool => {
                    let plan = pool_plan(in_shape.plane(), s_in, top);
                    (Some(EncodedOp::Pool(plan)), pool_scale(plan, s_in))
                }
                Op::Add => {
                    let sa = scales[node.inputs[0]];
                    let sb = scales[node.inputs[1]];
                    let s = sa.max(sb);
                    (
                        Some(EncodedOp::Add {
                            lift: [s - sa, s - sb],
                        }),
                        s,
                    )
                }
                Op::Site(site) => {
                    let lift = if s_in <= fa { fa + 1 - s_in } else { 0 };
                    let trunc = s_in + lift - fa;
                    if trunc > fixed::MAX_TRUNC_BITS {
                        return Err(plan_err(format!(
                            "site input at 2^{s_in} would truncate by {trunc} bits (at most {})",
                            fixed::MAX_TRUNC_BITS
                        )));
                    }
                    let poly = match &site.poly {
                        None => None,
                        Some(p) => {
                            let all: Vec<f64> =
                                p.a2.iter()
                                    .chain(&p.a1)
                                    .chain(&p.a0)
                                    .map(|&v| v as f64)
                                    .collect();
                            let f = frac_bits_for(max_real(&all), fp.max_weight_frac_bits);
                            let lifted = |v: &[f32], k: u32, n: &str| {
                                let vals: Vec<f64> = v.iter().map(|&x| x as f64).collect();
                                encode_all(&vals, f + k, n)
                            };
                            Some(PolyPlan {
                                c2: lifted(&p.a2, 0, "poly.a2")?,
                                c1: lifted(&p.a1, fa, "poly.a1")?,
                                c0: lifted(&p.a0, 2 * fa, "poly.a0")?,
                                frac_bits: f,
                                trunc: fa + f,
                            })
                        }
                    };
                    (Some(EncodedOp::Site { lift, trunc, poly }), fa)
                }
            };
            scales[i] = scale;
            ops.push(op);
        }
        Ok(Self {
            fixed: fp,
            ops,
            scales,
        })
    }

    /// The exact lifts of a [`Op::Concat`] node `i` of `net` (the network
    /// this encoding was made from): input `k` (node `j`) is multiplied by
    /// `2^lift[k]`, `lift[k] = scales[i] − scales[j]`, so that every part is
    /// at the concat's scale `scales[i] = max_k scales[j]` — the same exact
    /// alignment as [`EncodedOp::Add`]'s `lift`, here derived from the public
    /// scales (a concat has no entry in [`EncodedNetwork::ops`]). `None` when
    /// node `i` is not a concat or the encoding is for another network.
    pub fn concat_lifts(&self, net: &Network, i: usize) -> Option<Vec<u32>> {
        let node = net.nodes.get(i)?;
        if !matches!(node.op, Op::Concat) || self.scales.len() != net.nodes.len() {
            return None;
        }
        let s = self.scales[i];
        node.inputs
            .iter()
            .map(|&j| s.checked_sub(*self.scales.get(j)?))
            .collect()
    }

    /// Fractional bits of node `i`'s output.
    pub fn scale(&self, i: usize) -> u32 {
        self.scales.get(i).copied().unwrap_or(0)
    }

    /// Fractional bits of the logits.
    pub fn output_scale(&self) -> u32 {
        self.scales.last().copied().unwrap_or(0)
    }

    /// Decodes the logits (field elements at [`EncodedNetwork::output_scale`]).
    pub fn decode_logits(&self, raw: &[u64]) -> Vec<f64> {
        let s = self.output_scale();
        raw.iter().map(|&v| fixed::decode(v, s)).collect()
    }
}

fn check_weight_magnitude(node: usize, name: &str, w: &[u64]) -> Result<()> {
    let m = max_abs(w);
    if bits(m as u128) > fixed::WEIGHT_MAGNITUDE_BITS {
        return Err(ModelError::Graph {
            node,
            name: name.into(),
            reason: format!(
                "a weight is {m} even with 0 fractional bits: weights must stay below 2^{}",
                fixed::WEIGHT_MAGNITUDE_BITS
            ),
        });
    }
    Ok(())
}

fn pool_plan(window: usize, s_in: u32, top: u32) -> PoolPlan {
    let w = window.max(1);
    if w.is_power_of_two() && s_in + w.trailing_zeros() <= top {
        PoolPlan::Exact {
            shift: w.trailing_zeros(),
        }
    } else {
        let trunc = fixed::MAX_TRUNC_BITS;
        PoolPlan::Rounded {
            multiplier: ((1u64 << trunc) as f64 / w as f64).round().max(1.0) as u64,
            trunc,
        }
    }
}

fn pool_scale(plan: PoolPlan, s_in: u32) -> u32 {
    match plan {
        PoolPlan::Exact { shift } => s_in + shift,
        PoolPlan::Rounded { .. } => s_in,
    }
}

/// The fixed-point evaluator.
#[derive(Debug)]
pub struct FixedEvaluator<'a> {
    enc: &'a EncodedNetwork,
    /// Threads for the convolutions.
    pub threads: usize,
    /// Pre-truncation maxima, in node order.
    pub stats: Vec<TruncationStat>,
}

impl<'a> FixedEvaluator<'a> {
    /// An evaluator over encoded parameters (one thread).
    pub fn new(enc: &'a EncodedNetwork) -> Self {
        Self {
            enc,
            threads: 1,
            stats: Vec::new(),
        }
    }

    /// Uses `threads` threads for the convolutions.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
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

    fn out(&self, ctx: &NodeCtx<'_>, data: Vec<u64>) -> FixedValue {
        FixedValue {
            data,
            frac_bits: self.enc.scale(ctx.index),
        }
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

    fn record(&mut self, ctx: &NodeCtx<'_>, kind: TruncKind, max: u64, frac: u32, trunc: u32) {
        self.stats.push(TruncationStat {
            node: ctx.index,
            name: ctx.name.into(),
            kind,
            max_abs: max,
            bits: bits(max as u128),
            frac_bits: frac,
            trunc_bits: trunc,
        });
    }

    fn pool(
        &mut self,
        ctx: &NodeCtx<'_>,
        kind: TruncKind,
        window: usize,
        sums: Vec<u64>,
        x: &FixedValue,
    ) -> Result<FixedValue> {
        Self::check(ctx, max_abs(&x.data) as u128 * window as u128)?;
        match self.op(ctx)? {
            EncodedOp::Pool(PoolPlan::Exact { .. }) => Ok(self.out(ctx, sums)),
            EncodedOp::Pool(PoolPlan::Rounded { multiplier, trunc }) => {
                Self::check(ctx, max_abs(&sums) as u128 * *multiplier as u128)?;
                let pre: Vec<u64> = sums.iter().map(|&s| fixed::mul(s, *multiplier)).collect();
                self.record(ctx, kind, max_abs(&pre), x.frac_bits + trunc, *trunc);
                let data = pre
                    .into_iter()
                    .map(|v| fixed::truncate_round(v, *trunc))
                    .collect();
                Ok(self.out(ctx, data))
            }
            _ => Err(wrong_op(ctx)),
        }
    }
}

fn wrong_op(ctx: &NodeCtx<'_>) -> ModelError {
    ModelError::Graph {
        node: ctx.index,
        name: ctx.name.into(),
        reason: "encoded parameters do not match the op".into(),
    }
}

/// `x · 2^k` in the field (an exact scale lift).
pub fn lift(x: u64, k: u32) -> u64 {
    if k == 0 {
        x
    } else {
        fixed::mul(x, 1u64 << k)
    }
}

impl Evaluator for FixedEvaluator<'_> {
    type Value = FixedValue;

    fn input(&mut self, x: &[f32], _shape: FeatureShape) -> Result<FixedValue> {
        let fp = self.enc.fixed;
        let data = x
            .iter()
            .enumerate()
            .map(|(i, &v)| fp.encode_act(v as f64, &format!("input element {i}")))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(FixedValue {
            data,
            frac_bits: fp.act_frac_bits,
        })
    }

    fn conv(&mut self, ctx: &NodeCtx<'_>, _conv: &Conv2d, x: &FixedValue) -> Result<FixedValue> {
        let op = self.op(ctx)?;
        let EncodedOp::Conv {
            l1_max, bias_max, ..
        } = op
        else {
            return Err(wrong_op(ctx));
        };
        Self::check(ctx, max_abs(&x.data) as u128 * l1_max + *bias_max as u128)?;
        let y = op
            .linear_field(&x.data, self.threads)
            .ok_or_else(|| wrong_op(ctx))?;
        Ok(self.out(ctx, y))
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
            trunc,
            ..
        } = self.op(ctx)?
        else {
            return Err(wrong_op(ctx));
        };
        let plane = ctx.in_shape.plane();
        let xt: Vec<u64> = if *trunc == 0 {
            x.data.clone()
        } else {
            self.record(
                ctx,
                TruncKind::BatchNorm,
                max_abs(&x.data),
                x.frac_bits,
                *trunc,
            );
            x.data
                .iter()
                .map(|&v| fixed::truncate_round(v, *trunc))
                .collect()
        };
        Self::check(
            ctx,
            max_abs(&xt) as u128 * *scale_max as u128 + max_abs(shift) as u128,
        )?;
        let data: Vec<u64> = xt
            .iter()
            .enumerate()
            .map(|(i, &v)| fixed::add(fixed::mul(v, scale[i / plane]), shift[i / plane]))
            .collect();
        Ok(self.out(ctx, data))
    }

    fn linear(&mut self, ctx: &NodeCtx<'_>, _l: &Linear, x: &FixedValue) -> Result<FixedValue> {
        let op = self.op(ctx)?;
        let EncodedOp::Linear {
            l1_max, bias_max, ..
        } = op
        else {
            return Err(wrong_op(ctx));
        };
        Self::check(ctx, max_abs(&x.data) as u128 * l1_max + *bias_max as u128)?;
        let y = op.linear_field(&x.data, 1).ok_or_else(|| wrong_op(ctx))?;
        Ok(self.out(ctx, y))
    }

    fn avgpool(
        &mut self,
        ctx: &NodeCtx<'_>,
        kernel: usize,
        stride: usize,
        x: &FixedValue,
    ) -> Result<FixedValue> {
        let sums = kernels::sum_pool(&x.data, ctx.in_shape, kernel, stride);
        self.pool(ctx, TruncKind::AvgPool, kernel * kernel, sums, x)
    }

    fn global_avgpool(&mut self, ctx: &NodeCtx<'_>, x: &FixedValue) -> Result<FixedValue> {
        let sums = kernels::global_sum_pool(&x.data, ctx.in_shape);
        self.pool(ctx, TruncKind::GlobalAvgPool, ctx.in_shape.plane(), sums, x)
    }

    fn maxpool(
        &mut self,
        ctx: &NodeCtx<'_>,
        kernel: usize,
        stride: usize,
        x: &FixedValue,
    ) -> Result<FixedValue> {
        let data = kernels::max_pool_by(&x.data, ctx.in_shape, kernel, stride, fixed::to_i64);
        Ok(self.out(ctx, data))
    }

    fn add(&mut self, ctx: &NodeCtx<'_>, a: &FixedValue, b: &FixedValue) -> Result<FixedValue> {
        let EncodedOp::Add { lift: [la, lb] } = self.op(ctx)? else {
            return Err(wrong_op(ctx));
        };
        Self::check(
            ctx,
            ((max_abs(&a.data) as u128) << la) + ((max_abs(&b.data) as u128) << lb),
        )?;
        let data = a
            .data
            .iter()
            .zip(&b.data)
            .map(|(&x, &y)| fixed::add(lift(x, *la), lift(y, *lb)))
            .collect();
        Ok(self.out(ctx, data))
    }

    fn slice(
        &mut self,
        ctx: &NodeCtx<'_>,
        start: usize,
        len: usize,
        x: &FixedValue,
    ) -> Result<FixedValue> {
        let data = kernels::channel_slice(&x.data, ctx.in_shape, start, len);
        Ok(self.out(ctx, data))
    }

    fn concat(&mut self, ctx: &NodeCtx<'_>, parts: &[&FixedValue]) -> Result<FixedValue> {
        // Every part lifted exactly to the concat's scale (the largest).
        let s = self.enc.scale(ctx.index);
        let mut lifts = Vec::with_capacity(parts.len());
        for p in parts {
            let k = s
                .checked_sub(p.frac_bits)
                .ok_or_else(|| ModelError::Graph {
                    node: ctx.index,
                    name: ctx.name.into(),
                    reason: format!(
                        "a concat input at 2^{} is above the concat's scale 2^{s}",
                        p.frac_bits
                    ),
                })?;
            Self::check(ctx, (max_abs(&p.data) as u128) << k)?;
            lifts.push(k);
        }
        let data: Vec<&[u64]> = parts.iter().map(|p| p.data.as_slice()).collect();
        let data = kernels::concat_channels(&data, |k, v| lift(v, lifts[k]));
        Ok(self.out(ctx, data))
    }

    fn site(&mut self, ctx: &NodeCtx<'_>, site: &Site, x: &FixedValue) -> Result<FixedValue> {
        let EncodedOp::Site {
            lift: up,
            trunc,
            poly,
        } = self.op(ctx)?
        else {
            return Err(wrong_op(ctx));
        };
        let pre_max = (max_abs(&x.data) as u128) << up;
        Self::check(ctx, pre_max)?;
        self.record(
            ctx,
            TruncKind::Site,
            pre_max as u64,
            x.frac_bits + up,
            *trunc,
        );
        let plane = site.shape.plane();
        let mut poly_max = 0u64;
        let mut out = Vec::with_capacity(x.data.len());
        for (i, (&y, &m)) in x.data.iter().zip(&site.mask).enumerate() {
            let t = fixed::truncate_round(lift(y, *up), *trunc);
            let v = if m == 1 {
                if fixed::to_i64(t) > 0 {
                    t
                } else {
                    0
                }
            } else if let Some(p) = poly {
                let c = i / plane;
                let (v, mag) = poly_pre_trunc(p, c, t);
                Self::check(ctx, mag)?;
                poly_max = poly_max.max(fixed::to_i64(v).unsigned_abs());
                fixed::truncate_round(v, p.trunc)
            } else {
                t
            };
            out.push(v);
        }
        if let Some(p) = poly {
            if site.mask.contains(&0) {
                let fa = self.enc.fixed.act_frac_bits;
                self.record(
                    ctx,
                    TruncKind::SitePoly,
                    poly_max,
                    2 * fa + p.frac_bits,
                    p.trunc,
                );
            }
        }
        Ok(self.out(ctx, out))
    }
}

/// A polynomial element before its rounding: `c2·t² + c1·t + c0` of channel
/// `c`, and a bound on its magnitude (for the overflow check).
pub fn poly_pre_trunc(p: &PolyPlan, c: usize, t: u64) -> (u64, u128) {
    let tm = fixed::to_i64(t).unsigned_abs() as u128;
    let mag = |v: u64| fixed::to_i64(v).unsigned_abs() as u128;
    let bound = mag(p.c2[c]) * tm * tm + mag(p.c1[c]) * tm + mag(p.c0[c]);
    let t2 = fixed::mul(t, t);
    let v = fixed::add(
        fixed::add(fixed::mul(p.c2[c], t2), fixed::mul(p.c1[c], t)),
        p.c0[c],
    );
    (v, bound.max(tm * tm))
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
    let logits = raw
        .data
        .iter()
        .map(|&v| fixed::decode(v, raw.frac_bits))
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
