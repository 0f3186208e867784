//! The layer math, written once, generic over the number type.
//!
//! [`Scalar`] is implemented for `f64` (the float reference) and for
//! field elements (`u64` in `[0, P)`, the fixed-point reference and the
//! protocol's online step on shares). Field kernels are exact modulo `P`:
//! they accumulate products in `u128` and reduce before overflow.

use crate::fixed::{self, P};
use crate::graph::FeatureShape;

/// A number type the kernels run on.
pub trait Scalar: Copy + Send + Sync + 'static {
    /// Accumulator of products.
    type Acc: Copy;
    /// Additive identity.
    const ZERO: Self;
    /// Number of products an accumulator holds before [`Scalar::settle`] is needed.
    const SETTLE_EVERY: usize;
    /// Empty accumulator.
    fn acc_zero() -> Self::Acc;
    /// `acc + x·w`.
    fn mac(acc: Self::Acc, x: Self, w: Self) -> Self::Acc;
    /// Brings an accumulator back into a range where [`Scalar::SETTLE_EVERY`] more products fit.
    fn settle(acc: Self::Acc) -> Self::Acc;
    /// `acc + bias` as a value.
    fn finish(acc: Self::Acc, bias: Self) -> Self;
    /// `a + b`.
    fn add(a: Self, b: Self) -> Self;
}

impl Scalar for f64 {
    type Acc = f64;
    const ZERO: Self = 0.0;
    const SETTLE_EVERY: usize = usize::MAX;
    fn acc_zero() -> f64 {
        0.0
    }
    #[inline]
    fn mac(acc: f64, x: f64, w: f64) -> f64 {
        acc + x * w
    }
    fn settle(acc: f64) -> f64 {
        acc
    }
    fn finish(acc: f64, bias: f64) -> f64 {
        acc + bias
    }
    fn add(a: f64, b: f64) -> f64 {
        a + b
    }
}

/// `u64` is a field element of [`crate::fixed`], in `[0, P)`.
impl Scalar for u64 {
    type Acc = u128;
    const ZERO: Self = 0;
    // Products are below 2^110; 2^17 of them stay below 2^127.
    const SETTLE_EVERY: usize = 1 << 17;
    fn acc_zero() -> u128 {
        0
    }
    #[inline]
    fn mac(acc: u128, x: u64, w: u64) -> u128 {
        acc + x as u128 * w as u128
    }
    fn settle(acc: u128) -> u128 {
        acc % P as u128
    }
    fn finish(acc: u128, bias: u64) -> u64 {
        fixed::add((acc % P as u128) as u64, bias)
    }
    fn add(a: u64, b: u64) -> u64 {
        fixed::add(a, b)
    }
}

/// Geometry of a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Input shape.
    pub input: FeatureShape,
    /// Output channels.
    pub cout: usize,
    /// Square kernel size.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding.
    pub padding: usize,
    /// Groups.
    pub groups: usize,
}

impl ConvGeometry {
    /// Output shape.
    pub fn output(&self) -> FeatureShape {
        FeatureShape::new(
            self.cout,
            (self.input.h + 2 * self.padding - self.kernel) / self.stride + 1,
            (self.input.w + 2 * self.padding - self.kernel) / self.stride + 1,
        )
    }
}

/// 2-D convolution: `input` `[C,H,W]`, `weight` `[cout, cin/groups, k, k]`,
/// `bias` `[cout]` (zero when `None`). Output `[cout, H', W']`.
pub fn conv2d<S: Scalar>(
    input: &[S],
    weight: &[S],
    bias: Option<&[S]>,
    g: &ConvGeometry,
) -> Vec<S> {
    let out = g.output();
    let (h, w) = (g.input.h as isize, g.input.w as isize);
    let cin_g = g.input.c / g.groups;
    let cout_g = g.cout / g.groups;
    let k = g.kernel;
    let plane = out.h * out.w;
    let settle_per_channel = cin_g * k * k >= S::SETTLE_EVERY;
    let mut result = Vec::with_capacity(out.len());
    let mut acc = vec![S::acc_zero(); plane];
    for o in 0..g.cout {
        acc.iter_mut().for_each(|a| *a = S::acc_zero());
        let group = o / cout_g;
        for ci in 0..cin_g {
            let c = group * cin_g + ci;
            let chan = &input[c * g.input.plane()..(c + 1) * g.input.plane()];
            for ky in 0..k {
                for kx in 0..k {
                    let wv = weight[((o * cin_g + ci) * k + ky) * k + kx];
                    for oy in 0..out.h {
                        let iy = (oy * g.stride + ky) as isize - g.padding as isize;
                        if iy < 0 || iy >= h {
                            continue;
                        }
                        let row = &chan[iy as usize * w as usize..(iy as usize + 1) * w as usize];
                        let arow = &mut acc[oy * out.w..(oy + 1) * out.w];
                        for (ox, a) in arow.iter_mut().enumerate() {
                            let ix = (ox * g.stride + kx) as isize - g.padding as isize;
                            if ix >= 0 && ix < w {
                                *a = S::mac(*a, row[ix as usize], wv);
                            }
                        }
                    }
                }
            }
            if settle_per_channel {
                acc.iter_mut().for_each(|a| *a = S::settle(*a));
            }
        }
        let b = bias.map_or(S::ZERO, |b| b[o]);
        result.extend(acc.iter().map(|&a| S::finish(a, b)));
    }
    result
}

/// Fully connected layer: `weight` `[out, in]`, `bias` `[out]`.
pub fn linear<S: Scalar>(
    input: &[S],
    weight: &[S],
    bias: Option<&[S]>,
    out_features: usize,
) -> Vec<S> {
    let n = input.len();
    (0..out_features)
        .map(|o| {
            let row = &weight[o * n..(o + 1) * n];
            let mut acc = S::acc_zero();
            for (chunk_x, chunk_w) in input
                .chunks(S::SETTLE_EVERY.min(n.max(1)))
                .zip(row.chunks(S::SETTLE_EVERY.min(n.max(1))))
            {
                for (&x, &w) in chunk_x.iter().zip(chunk_w) {
                    acc = S::mac(acc, x, w);
                }
                acc = S::settle(acc);
            }
            S::finish(acc, bias.map_or(S::ZERO, |b| b[o]))
        })
        .collect()
}

/// Element-wise sum.
pub fn add<S: Scalar>(a: &[S], b: &[S]) -> Vec<S> {
    a.iter().zip(b).map(|(&x, &y)| S::add(x, y)).collect()
}

/// Window sums of an average pool (the division is the caller's).
pub fn sum_pool<S: Scalar>(
    input: &[S],
    shape: FeatureShape,
    kernel: usize,
    stride: usize,
) -> Vec<S> {
    let oh = (shape.h - kernel) / stride + 1;
    let ow = (shape.w - kernel) / stride + 1;
    let mut out = Vec::with_capacity(shape.c * oh * ow);
    for c in 0..shape.c {
        let chan = &input[c * shape.plane()..(c + 1) * shape.plane()];
        for oy in 0..oh {
            for ox in 0..ow {
                let mut s = S::ZERO;
                for ky in 0..kernel {
                    for kx in 0..kernel {
                        s = S::add(s, chan[(oy * stride + ky) * shape.w + ox * stride + kx]);
                    }
                }
                out.push(s);
            }
        }
    }
    out
}

/// Per-channel sums over the whole plane (global average pool without the division).
pub fn global_sum_pool<S: Scalar>(input: &[S], shape: FeatureShape) -> Vec<S> {
    (0..shape.c)
        .map(|c| {
            input[c * shape.plane()..(c + 1) * shape.plane()]
                .iter()
                .fold(S::ZERO, |s, &x| S::add(s, x))
        })
        .collect()
}

/// Field convolution (e.g. on additive shares): `u64` elements in `[0, P)`.
pub fn conv2d_field(
    input: &[u64],
    weight: &[u64],
    bias: Option<&[u64]>,
    g: &ConvGeometry,
) -> Vec<u64> {
    conv2d(input, weight, bias, g)
}

/// Field fully connected layer on `u64` elements in `[0, P)`.
pub fn linear_field(
    input: &[u64],
    weight: &[u64],
    bias: Option<&[u64]>,
    out_features: usize,
) -> Vec<u64> {
    linear(input, weight, bias, out_features)
}
