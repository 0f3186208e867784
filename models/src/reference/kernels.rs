//! The layer math, written once, generic over the number type.
//!
//! [`Scalar`] is implemented for `f64` (the float reference) and for
//! field elements (`u64` in `[0, P)`, the fixed-point reference and the
//! protocol's online step on shares). Field kernels are exact modulo `P`:
//! they accumulate products in `u128` and reduce before overflow.

use crate::fixed;
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
        fixed::reduce_u128(acc) as u128
    }
    fn finish(acc: u128, bias: u64) -> u64 {
        fixed::add(fixed::reduce_u128(acc), bias)
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

/// The channels `start..start + len` of a `(C, H, W)` tensor in row-major
/// order: one contiguous run of `len·H·W` elements (the one definition of
/// [`crate::graph::Op::Slice`] for references and protocol).
pub fn channel_slice<T: Copy>(x: &[T], shape: FeatureShape, start: usize, len: usize) -> Vec<T> {
    let plane = shape.plane();
    x[start * plane..(start + len) * plane].to_vec()
}

/// Channel concatenation of `(C_k, H, W)` tensors with the same plane:
/// the parts one after the other (row-major `(ΣC_k, H, W)`), each element
/// passed through `f` with its part's index (e.g. a scale lift).
pub fn concat_channels<T: Copy>(parts: &[&[T]], mut f: impl FnMut(usize, T) -> T) -> Vec<T> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for (k, p) in parts.iter().enumerate() {
        out.extend(p.iter().map(|&v| f(k, v)));
    }
    out
}

/// The input indices of every pooling window, window after window (channel,
/// row, column order of the outputs), `kernel·kernel` per window in row-major
/// order: the one definition of a pool's windows (references and protocol).
pub fn pool_windows(shape: FeatureShape, kernel: usize, stride: usize) -> Vec<u32> {
    let oh = (shape.h - kernel) / stride + 1;
    let ow = (shape.w - kernel) / stride + 1;
    let mut out = Vec::with_capacity(shape.c * oh * ow * kernel * kernel);
    for c in 0..shape.c {
        let base = c * shape.plane();
        for oy in 0..oh {
            for ox in 0..ow {
                for ky in 0..kernel {
                    for kx in 0..kernel {
                        out.push((base + (oy * stride + ky) * shape.w + ox * stride + kx) as u32);
                    }
                }
            }
        }
    }
    out
}

/// Max pooling under the order `key` (e.g. the signed value of a field element).
pub fn max_pool_by<T: Copy, K: PartialOrd>(
    input: &[T],
    shape: FeatureShape,
    kernel: usize,
    stride: usize,
    key: impl Fn(T) -> K,
) -> Vec<T> {
    pool_windows(shape, kernel, stride)
        .chunks(kernel * kernel)
        .map(|w| {
            let mut best = input[w[0] as usize];
            for &i in &w[1..] {
                let v = input[i as usize];
                if key(v) > key(best) {
                    best = v;
                }
            }
            best
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixed::P;
    use proptest::prelude::*;

    fn geometry(
        c: usize,
        hw: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
        groups: usize,
    ) -> ConvGeometry {
        ConvGeometry {
            input: FeatureShape::new(c, hw, hw),
            cout,
            kernel: k,
            stride,
            padding: pad,
            groups,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Field conv on additive shares adds up to the conv of the secret,
        /// and on small integers it equals the f64 conv (same kernel code).
        #[test]
        fn conv_is_linear_on_shares_and_matches_integers(
            seed in any::<u64>(),
            c in 1usize..4, hw in 3usize..7, cout_g in 1usize..4, k in 1usize..4,
            stride in 1usize..3, pad in 0usize..2, groups in 1usize..3,
        ) {
            use rand::{Rng, SeedableRng};
            let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(seed);
            let c = c * groups;
            let g = geometry(c, hw, cout_g * groups, k, stride, pad, groups);
            prop_assume!(hw + 2 * pad >= k);
            let n_in = c * hw * hw;
            let n_w = g.cout * (c / groups) * k * k;
            let x: Vec<i64> = (0..n_in).map(|_| rng.gen_range(-1000..1000)).collect();
            let w: Vec<i64> = (0..n_w).map(|_| rng.gen_range(-5000..5000)).collect();
            let b: Vec<i64> = (0..g.cout).map(|_| rng.gen_range(-99999..99999)).collect();
            let xf: Vec<u64> = x.iter().map(|&v| fixed::from_i64(v)).collect();
            let wf: Vec<u64> = w.iter().map(|&v| fixed::from_i64(v)).collect();
            let bf: Vec<u64> = b.iter().map(|&v| fixed::from_i64(v)).collect();
            let want = conv2d_field(&xf, &wf, Some(&bf), &g);
            // Integers through the f64 instance of the same kernel.
            let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let wd: Vec<f64> = w.iter().map(|&v| v as f64).collect();
            let bd: Vec<f64> = b.iter().map(|&v| v as f64).collect();
            let exact = conv2d(&xd, &wd, Some(&bd), &g);
            for (f, e) in want.iter().zip(&exact) {
                prop_assert_eq!(fixed::to_i64(*f), *e as i64);
            }
            // Shares: x = x0 + x1, bias only on one side.
            let x0: Vec<u64> = (0..n_in).map(|_| rng.gen_range(0..P)).collect();
            let x1: Vec<u64> = xf.iter().zip(&x0).map(|(&v, &s)| fixed::sub(v, s)).collect();
            let y0 = conv2d_field(&x0, &wf, Some(&bf), &g);
            let y1 = conv2d_field(&x1, &wf, None, &g);
            for ((a, b), w) in y0.iter().zip(&y1).zip(&want) {
                prop_assert_eq!(fixed::add(*a, *b), *w);
            }
        }
    }

    #[test]
    fn linear_settles_long_rows() {
        // More than SETTLE_EVERY products of maximal field elements.
        let n = (1 << 17) + 5;
        let x = vec![P - 1; n];
        let w = vec![P - 1; n];
        let y = linear_field(&x, &w, None, 1);
        // (−1)·(−1) summed n times.
        assert_eq!(y[0], (n as u64) % P);
    }
}
