//! Fast convolutions and fully connected layers as matrix products, exact
//! over the field.
//!
//! [`super::kernels`] holds the layer math in its plainest form, generic over
//! the number type; this module computes the same functions much faster and
//! is tested equal to them (bit for bit on the field, to rounding on `f64`).
//!
//! # Exact field products through `f64` GEMM
//! A convolution is `W · X` with `W` the `cout × K` weight matrix and `X` the
//! `K × (H'·W')` im2col matrix (`K = cin/groups · k²`). Field elements
//! `x < P < 2^55` are split into two limbs `x = x0 + x1·2^28` (`x0 < 2^28`,
//! `x1 < 2^27`); encoded weights are small signed integers, `|w| < 2^15`
//! ([`crate::fixed::WEIGHT_MAGNITUDE_BITS`]). Every limb product is below
//! `2^43`, so a sum of at most [`K_CHUNK`] `= 2^10` of them stays below
//! `2^53` and an `f64` accumulation is *exact* whatever the summation order
//! (all partial sums are integers below `2^53`). The reduction dimension is
//! therefore cut into chunks of `K_CHUNK` rows: one GEMM per chunk (the
//! same FLOPs as one long GEMM), the chunk results added exactly in `i64`,
//! then recombined as `Y0 + Y1·2^28` in `i128` and reduced modulo `P`.
//! Shares never lose a bit: this is integer arithmetic carried by the
//! floating-point units, not a float approximation. (Two limbs instead of
//! three 19-bit limbs without chunking: a third less GEMM work.)
//!
//! The matrix products run on the `gemm` crate ([`super::dgemm`]: runtime-
//! detected AVX2/FMA/AVX-512 kernels), split over `threads` scoped threads
//! by rows of `W`, or by columns of `X` when `X` is the wider one (few
//! output channels, many pixels: each thread then packs only its share of
//! `X`). im2col and the limb recombination are split over the same threads.

use super::dgemm::{dgemm, dgemm_cols};

use crate::fixed::{self, WEIGHT_MAGNITUDE_BITS};

use super::kernels::ConvGeometry;

/// Limb width of the exact field products.
const LIMB_BITS: u32 = 28;
/// Number of limbs of a field element (`2 · 28 ≥ 55`).
const LIMBS: usize = 2;
/// Rows of the reduction dimension per GEMM: `K_CHUNK · (2^28 − 1) ·
/// (2^15 − 1) < 2^53`, so every `f64` partial sum is an exact integer.
pub const K_CHUNK: usize = 1 << (53 - LIMB_BITS - WEIGHT_MAGNITUDE_BITS);
/// Largest reduction length `K` of the limb method: the `i64` sum of
/// `K / K_CHUNK` chunk results (each below `2^53`) stays below `2^63`.
pub const MAX_EXACT_K: usize = K_CHUNK << 9;

/// `C = A · B` for row-major `A` (`m × k`) and `B` (`k × n`), overwriting
/// `C` (`m × n`), split over `threads` threads by rows of `A` (or, when
/// `m < n`, by columns of `B`).
fn dgemm_rows(a: &[f64], b: &[f64], c: &mut [f64], m: usize, k: usize, n: usize, threads: usize) {
    debug_assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    let one = |a: &[f64], c: &mut [f64], rows: usize| dgemm(a, b, c, rows, k, n);
    // Below ~4 MFLOP a second thread costs more than it saves.
    let threads = if (m * k * n) < (1 << 22) {
        1
    } else {
        threads.clamp(1, m.max(1))
    };
    if threads == 1 {
        one(a, c, m);
        return;
    }
    if m < n {
        // Wide product (few output channels, many pixels): split the columns
        // of B, so that each thread packs only its share of B; each writes
        // its block to its own buffer, copied into C's rows afterwards.
        let per = n.div_ceil(threads);
        let widths = || (0..n.div_ceil(per)).map(|t| (t * per, per.min(n - t * per)));
        BLOCKS.with_borrow_mut(|blocks| {
            // Thread t's m × w block, back to back in one kept buffer.
            let blocks = fit(blocks, m * n);
            std::thread::scope(|s| {
                let mut rest = &mut blocks[..];
                for (col0, w) in widths() {
                    let (block, tail) = rest.split_at_mut(m * w);
                    rest = tail;
                    s.spawn(move || dgemm_cols(a, b, n, col0, block, m, k, w));
                }
            });
            let mut rest = &blocks[..];
            for (col0, w) in widths() {
                let (block, tail) = rest.split_at(m * w);
                rest = tail;
                for (i, row) in block.chunks_exact(w).enumerate() {
                    c[i * n + col0..i * n + col0 + w].copy_from_slice(row);
                }
            }
        });
        return;
    }
    let per = m.div_ceil(threads);
    std::thread::scope(|s| {
        for (i, c_chunk) in c[..m * n].chunks_mut(per * n).enumerate() {
            let rows = c_chunk.len() / n;
            let a_chunk = &a[i * per * k..(i * per + rows) * k];
            s.spawn(move || one(a_chunk, c_chunk, rows));
        }
    });
}

/// im2col of one group: for each of the `L` planes (input tensors of the
/// same shape, e.g. the limbs of a field tensor), `K × (oh·ow)` rows (`K =
/// cin_g·k²`), zero padding; row `r` of plane `l` is stored at
/// `out[r·L·plane + l·plane ..]`.
fn im2col(planes: &[&[f64]], g: &ConvGeometry, group: usize, out: &mut [f64]) {
    let cin_g = g.input.c / g.groups;
    im2col_channels(planes, g, group, 0..cin_g, out);
}

/// [`im2col`] on `threads` threads (by input channels: each channel's `k²`
/// rows are one contiguous block of `out`).
fn im2col_parallel(
    planes: &[&[f64]],
    g: &ConvGeometry,
    group: usize,
    out: &mut [f64],
    threads: usize,
) {
    let cin_g = g.input.c / g.groups;
    let o = g.output();
    let block = g.kernel * g.kernel * planes.len() * o.h * o.w;
    // Below ~1 M elements a second thread costs more than it saves.
    if threads <= 1 || cin_g < 2 || cin_g * block < (1 << 20) {
        im2col(planes, g, group, out);
        return;
    }
    let per = cin_g.div_ceil(threads);
    std::thread::scope(|s| {
        for (t, chunk) in out[..cin_g * block].chunks_mut(per * block).enumerate() {
            let first = t * per;
            let channels = first..first + chunk.len() / block;
            s.spawn(move || im2col_channels(planes, g, group, channels, chunk));
        }
    });
}

/// The rows of input channels `channels` (of the group) into `out`, which
/// starts at the first of them.
fn im2col_channels(
    planes: &[&[f64]],
    g: &ConvGeometry,
    group: usize,
    channels: std::ops::Range<usize>,
    out: &mut [f64],
) {
    let o = g.output();
    let plane = o.h * o.w;
    let cin_g = g.input.c / g.groups;
    let k = g.kernel;
    let (h, w) = (g.input.h as isize, g.input.w as isize);
    let nl = planes.len();
    let row_len = nl * plane;
    let first = channels.start;
    for ci in channels {
        let c = group * cin_g + ci;
        let range = c * g.input.plane()..(c + 1) * g.input.plane();
        for ky in 0..k {
            for kx in 0..k {
                let r = ((ci - first) * k + ky) * k + kx;
                let row = &mut out[r * row_len..(r + 1) * row_len];
                for (l, src) in planes.iter().enumerate() {
                    let chan = &src[range.clone()];
                    let dst = &mut row[l * plane..(l + 1) * plane];
                    for oy in 0..o.h {
                        let iy = (oy * g.stride + ky) as isize - g.padding as isize;
                        let drow = &mut dst[oy * o.w..(oy + 1) * o.w];
                        if iy < 0 || iy >= h {
                            drow.iter_mut().for_each(|d| *d = 0.0);
                            continue;
                        }
                        let srow = &chan[iy as usize * w as usize..(iy as usize + 1) * w as usize];
                        // Output columns whose input column `ox·s + kx − pad`
                        // lies inside the row: `lo ≤ ox < hi`; zeros outside.
                        let (s, off) = (g.stride as isize, kx as isize - g.padding as isize);
                        let lo = if off >= 0 { 0 } else { (-off + s - 1) / s } as usize;
                        let hi = if w > off {
                            (((w - off + s - 1) / s) as usize).min(o.w)
                        } else {
                            0
                        };
                        let lo = lo.min(hi);
                        drow[..lo].iter_mut().for_each(|d| *d = 0.0);
                        drow[hi..].iter_mut().for_each(|d| *d = 0.0);
                        let first = (lo as isize * s + off) as usize;
                        if g.stride == 1 {
                            drow[lo..hi].copy_from_slice(&srow[first..first + (hi - lo)]);
                        } else {
                            for (d, &v) in drow[lo..hi]
                                .iter_mut()
                                .zip(srow[first..].iter().step_by(g.stride))
                            {
                                *d = v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Float convolution (same function as [`super::kernels::conv2d`] on `f64`).
pub fn conv2d_f64(
    input: &[f64],
    weight: &[f64],
    bias: Option<&[f64]>,
    g: &ConvGeometry,
    threads: usize,
) -> Vec<f64> {
    let o = g.output();
    let plane = o.h * o.w;
    let cin_g = g.input.c / g.groups;
    let cout_g = g.cout / g.groups;
    let kk = cin_g * g.kernel * g.kernel;
    let mut out = vec![0.0; g.cout * plane];
    let mut cols = vec![0.0; kk * plane];
    for group in 0..g.groups {
        im2col(&[input], g, group, &mut cols);
        let w = &weight[group * cout_g * kk..(group + 1) * cout_g * kk];
        let c = &mut out[group * cout_g * plane..(group + 1) * cout_g * plane];
        dgemm_rows(w, &cols, c, cout_g, kk, plane, threads);
    }
    if let Some(b) = bias {
        for (o, chunk) in out.chunks_mut(plane.max(1)).enumerate() {
            chunk.iter_mut().for_each(|v| *v += b[o]);
        }
    }
    out
}

/// Float fully connected layer (same function as [`super::kernels::linear`] on `f64`).
pub fn linear_f64(
    input: &[f64],
    weight: &[f64],
    bias: Option<&[f64]>,
    out_features: usize,
) -> Vec<f64> {
    let n = input.len();
    let mut out = vec![0.0; out_features];
    dgemm_rows(weight, input, &mut out, out_features, n, 1, 1);
    if let Some(b) = bias {
        out.iter_mut().zip(b).for_each(|(v, b)| *v += b);
    }
    out
}

fn limbs(x: u64) -> [f64; LIMBS] {
    let m = (1u64 << LIMB_BITS) - 1;
    [(x & m) as f64, (x >> LIMB_BITS) as f64]
}

/// The limb planes of a field tensor, written into `out` (`LIMBS · x.len()`:
/// all low limbs, then all high limbs).
fn limb_planes(x: &[u64], out: &mut [f64]) {
    let (lo, hi) = out.split_at_mut(x.len());
    for ((&v, l), h) in x.iter().zip(lo).zip(hi) {
        [*l, *h] = limbs(v);
    }
}

/// Recombines the limb sums `Y0 + Y1·2^28` modulo `P`, plus `bias`.
#[inline]
fn recombine(y: [i64; LIMBS], bias: u64) -> u64 {
    let v = y[0] as i128 + ((y[1] as i128) << LIMB_BITS);
    fixed::add(fixed::from_i128(v), bias)
}

/// Encoded weights of one layer prepared for the exact limb GEMM: converted
/// to `f64` once and cut, per group, into [`K_CHUNK`]-column blocks stored
/// contiguously (`rows × kc` each). A party that runs a layer many times
/// (the server, online) prepares it once; converting and re-laying out the
/// weights on every call cost more than the GEMM itself in ResNet-18's
/// 512-channel layers.
#[derive(Debug, Clone)]
pub struct PreparedWeights {
    /// Whether the limb method applies (else the generic kernel runs).
    exact: bool,
    rows: usize,
    k: usize,
    /// `[group][chunk]`.
    chunks: Vec<Vec<Vec<f64>>>,
}

impl PreparedWeights {
    /// Prepares `weight` (`groups · rows × k`, row-major per group).
    pub fn new(weight: &[u64], groups: usize, rows: usize, k: usize) -> Self {
        let exact = weight.len() == groups * rows * k && exact_applies(weight, k);
        let mut chunks = Vec::new();
        if exact {
            for g in 0..groups {
                let w = &weight[g * rows * k..(g + 1) * rows * k];
                let mut per = Vec::new();
                let mut k0 = 0;
                while k0 < k {
                    let kc = (k - k0).min(K_CHUNK);
                    let mut c = Vec::with_capacity(rows * kc);
                    for r in 0..rows {
                        c.extend(
                            w[r * k + k0..r * k + k0 + kc]
                                .iter()
                                .map(|&v| fixed::to_i64(v) as f64),
                        );
                    }
                    per.push(c);
                    k0 += kc;
                }
                chunks.push(per);
            }
        }
        Self {
            exact,
            rows,
            k,
            chunks,
        }
    }

    /// Prepares a convolution's weights.
    pub fn conv(weight: &[u64], g: &ConvGeometry) -> Self {
        let groups = g.groups.max(1);
        Self::new(
            weight,
            groups,
            g.cout / groups,
            g.input.c / groups * g.kernel * g.kernel,
        )
    }

    /// Prepares a fully connected layer's weights.
    pub fn linear(weight: &[u64], out_features: usize, in_features: usize) -> Self {
        Self::new(weight, 1, out_features, in_features)
    }

    /// Whether the exact limb method applies.
    pub fn exact(&self) -> bool {
        self.exact
    }
}

/// [`PreparedWeights`] computed on first use and kept beside the encoded
/// weights they derive from (so not part of an op's identity: two caches
/// always compare equal).
#[derive(Debug, Clone, Default)]
pub struct PreparedCache(std::sync::OnceLock<PreparedWeights>);

impl PartialEq for PreparedCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl PreparedCache {
    /// The prepared weights, computed by `prepare` on the first call.
    pub fn get_or_prepare(&self, prepare: impl FnOnce() -> PreparedWeights) -> &PreparedWeights {
        self.0.get_or_init(prepare)
    }
}

/// `C = W · X` exactly for the prepared weights of one group (`rows × k`)
/// and limb rows `X` (`k × n`, entries `< 2^28`): one GEMM per chunk, the
/// chunk results summed in `i64` into `acc` (`rows × n`, overwritten).
fn exact_gemm(
    w: &[Vec<f64>],
    x: &[f64],
    acc: &mut [i64],
    prod: &mut [f64],
    (m, k, n): (usize, usize, usize),
    threads: usize,
) {
    if w.len() == 1 {
        // One chunk: convert straight from the product.
        dgemm_rows(&w[0], x, prod, m, k, n, threads);
        for (s, &p) in acc[..m * n].iter_mut().zip(prod.iter()) {
            *s = p as i64;
        }
        return;
    }
    acc[..m * n].iter_mut().for_each(|v| *v = 0);
    let mut k0 = 0;
    for a in w {
        let kc = a.len() / m.max(1);
        dgemm_rows(a, &x[k0 * n..(k0 + kc) * n], prod, m, kc, n, threads);
        for (s, &p) in acc[..m * n].iter_mut().zip(prod.iter()) {
            *s += p as i64;
        }
        k0 += kc;
    }
    debug_assert_eq!(k0, k);
}

/// Whether the exact limb method applies: every weight (centred) below
/// `2^15` in magnitude and `K` small enough.
pub fn exact_applies(weight: &[u64], k: usize) -> bool {
    k < MAX_EXACT_K
        && weight
            .iter()
            .all(|&w| fixed::to_i64(w).unsigned_abs() < 1u64 << WEIGHT_MAGNITUDE_BITS)
}

/// Field convolution on `u64` elements in `[0, P)`, exact (same function as
/// [`super::kernels::conv2d_field`]); falls back to the generic kernel when
/// the weights are too large for the limb method.
pub fn conv2d_field(
    input: &[u64],
    weight: &[u64],
    bias: Option<&[u64]>,
    g: &ConvGeometry,
    threads: usize,
) -> Vec<u64> {
    conv2d_field_prepared(
        input,
        weight,
        &PreparedWeights::conv(weight, g),
        bias,
        g,
        threads,
    )
}

/// [`conv2d_field`] with the weights prepared once ([`PreparedWeights::conv`]
/// of the same `weight` and geometry).
pub fn conv2d_field_prepared(
    input: &[u64],
    weight: &[u64],
    prepared: &PreparedWeights,
    bias: Option<&[u64]>,
    g: &ConvGeometry,
    threads: usize,
) -> Vec<u64> {
    let cin_g = g.input.c / g.groups;
    let kk = cin_g * g.kernel * g.kernel;
    let cout_g = g.cout / g.groups;
    if !prepared.exact || prepared.rows != cout_g || prepared.k != kk {
        return super::kernels::conv2d_field(input, weight, bias, g);
    }
    let o = g.output();
    let plane = o.h * o.w;
    SCRATCH.with_borrow_mut(|scratch| {
        let Scratch {
            planes,
            cols,
            prod,
            acc,
        } = scratch;
        conv_groups(
            input,
            prepared,
            bias,
            g,
            threads,
            fit(planes, LIMBS * input.len()),
            fit(cols, kk * LIMBS * plane),
            fit(prod, cout_g * LIMBS * plane),
            fit(acc, cout_g * LIMBS * plane),
        )
    })
}

/// Buffers of the limb GEMMs, kept per thread between calls: a server runs
/// the same layers on every inference, and fresh multi-megabyte buffers
/// would be paid again in page faults each time (an im2col matrix of
/// ResNet-18's first stage is 9.4 MB). Their contents are stale: every user
/// overwrites what it reads.
#[derive(Default)]
struct Scratch {
    planes: Vec<f64>,
    cols: Vec<f64>,
    prod: Vec<f64>,
    acc: Vec<i64>,
}

/// `v`'s first `n` elements, growing `v` if needed; a buffer far larger than
/// this call needs (over 64 MB) is given back first.
fn fit<T: Copy + Default>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    const KEEP_BYTES: usize = 64 << 20;
    if v.len() > n && v.len() * std::mem::size_of::<T>() > KEEP_BYTES {
        *v = Vec::new();
    }
    if v.len() < n {
        v.resize(n, T::default());
    }
    &mut v[..n]
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
    /// The column blocks of [`dgemm_rows`]'s split of wide products.
    static BLOCKS: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The groups of [`conv2d_field_prepared`] on scratch buffers.
#[allow(clippy::too_many_arguments)]
fn conv_groups(
    input: &[u64],
    prepared: &PreparedWeights,
    bias: Option<&[u64]>,
    g: &ConvGeometry,
    threads: usize,
    planes: &mut [f64],
    cols: &mut [f64],
    prod: &mut [f64],
    acc: &mut [i64],
) -> Vec<u64> {
    let cin_g = g.input.c / g.groups;
    let kk = cin_g * g.kernel * g.kernel;
    let cout_g = g.cout / g.groups;
    let o = g.output();
    let plane = o.h * o.w;
    let mut out = vec![0u64; g.cout * plane];
    limb_planes(input, planes);
    let planes: [&[f64]; LIMBS] = [&planes[..input.len()], &planes[input.len()..]];
    for group in 0..g.groups {
        im2col_parallel(&planes, g, group, cols, threads);
        exact_gemm(
            &prepared.chunks[group],
            cols,
            acc,
            prod,
            (cout_g, kk, LIMBS * plane),
            threads,
        );
        // Output channel `oc` of the group from its two limb rows of `acc`.
        let acc = &acc[..cout_g * LIMBS * plane];
        let out = &mut out[group * cout_g * plane..(group + 1) * cout_g * plane];
        let channels = |first: usize, out: &mut [u64]| {
            for (i, o) in out.chunks_exact_mut(plane.max(1)).enumerate() {
                let oc = first + i;
                let row = &acc[oc * LIMBS * plane..(oc + 1) * LIMBS * plane];
                let b = bias.map_or(0, |b| b[group * cout_g + oc]);
                for (p, v) in o.iter_mut().enumerate() {
                    *v = recombine([row[p], row[plane + p]], b);
                }
            }
        };
        if threads <= 1 || cout_g < 2 || out.len() < (1 << 15) || plane == 0 {
            channels(0, out);
        } else {
            let per = cout_g.div_ceil(threads);
            std::thread::scope(|s| {
                for (t, chunk) in out.chunks_mut(per * plane).enumerate() {
                    let channels = &channels;
                    s.spawn(move || channels(t * per, chunk));
                }
            });
        }
    }
    out
}

/// Field fully connected layer, exact (same function as
/// [`super::kernels::linear_field`]).
pub fn linear_field(
    input: &[u64],
    weight: &[u64],
    bias: Option<&[u64]>,
    out_features: usize,
) -> Vec<u64> {
    let prepared = PreparedWeights::linear(weight, out_features, input.len());
    linear_field_prepared(input, weight, &prepared, bias, out_features)
}

/// [`linear_field`] with the weights prepared once ([`PreparedWeights::linear`]).
pub fn linear_field_prepared(
    input: &[u64],
    weight: &[u64],
    prepared: &PreparedWeights,
    bias: Option<&[u64]>,
    out_features: usize,
) -> Vec<u64> {
    let n = input.len();
    if !prepared.exact || prepared.rows != out_features || prepared.k != n {
        return super::kernels::linear_field(input, weight, bias, out_features);
    }
    // X is n × 2 (one column per limb).
    let mut x = vec![0.0; n * LIMBS];
    for (i, &v) in input.iter().enumerate() {
        x[i * LIMBS..(i + 1) * LIMBS].copy_from_slice(&limbs(v));
    }
    let mut prod = vec![0.0; out_features * LIMBS];
    let mut acc = vec![0i64; out_features * LIMBS];
    exact_gemm(
        &prepared.chunks[0],
        &x,
        &mut acc,
        &mut prod,
        (out_features, n, LIMBS),
        1,
    );
    (0..out_features)
        .map(|o| {
            recombine(
                [acc[o * LIMBS], acc[o * LIMBS + 1]],
                bias.map_or(0, |b| b[o]),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixed::P;
    use crate::graph::FeatureShape;
    use crate::reference::kernels;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]

        /// The GEMM kernels compute exactly the generic kernels' field
        /// function (uniform 55-bit inputs, weights up to the 2^15 bound),
        /// and the float function to rounding.
        #[test]
        fn gemm_kernels_equal_the_generic_kernels(
            seed in any::<u64>(),
            c in 1usize..5, hw in 1usize..9, cout_g in 1usize..5, k in 1usize..4,
            stride in 1usize..3, pad in 0usize..2, groups in 1usize..3, threads in 1usize..4,
        ) {
            prop_assume!(hw + 2 * pad >= k);
            let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(seed);
            let g = ConvGeometry {
                input: FeatureShape::new(c * groups, hw, hw),
                cout: cout_g * groups,
                kernel: k,
                stride,
                padding: pad,
                groups,
            };
            let n_in = g.input.len();
            let n_w = g.cout * c * k * k;
            let lim = 1i64 << WEIGHT_MAGNITUDE_BITS;
            let x: Vec<u64> = (0..n_in).map(|i| if i == 0 { P - 1 } else { rng.gen_range(0..P) }).collect();
            let w: Vec<u64> = (0..n_w)
                .map(|i| fixed::from_i64(if i == 0 { -(lim - 1) } else { rng.gen_range(-(lim - 1)..lim) }))
                .collect();
            let b: Vec<u64> = (0..g.cout).map(|_| rng.gen_range(0..P)).collect();
            prop_assert_eq!(
                conv2d_field(&x, &w, Some(&b), &g, threads),
                kernels::conv2d_field(&x, &w, Some(&b), &g)
            );
            let xf: Vec<f64> = (0..n_in).map(|_| rng.gen_range(-3.0..3.0)).collect();
            let wf: Vec<f64> = (0..n_w).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let bf: Vec<f64> = (0..g.cout).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let fast = conv2d_f64(&xf, &wf, Some(&bf), &g, threads);
            let slow = kernels::conv2d(&xf, &wf, Some(&bf), &g);
            for (a, b) in fast.iter().zip(&slow) {
                prop_assert!((a - b).abs() <= 1e-9 * (1.0 + b.abs()));
            }
            // Fully connected: a 1×1 map.
            let out = cout_g * 3;
            let wl: Vec<u64> = (0..out * n_in).map(|_| fixed::from_i64(rng.gen_range(-(lim - 1)..lim))).collect();
            prop_assert_eq!(
                linear_field(&x, &wl, Some(&b[..1].repeat(out)), out),
                kernels::linear_field(&x, &wl, Some(&b[..1].repeat(out)), out)
            );
        }
    }

    /// Shapes large enough for the threaded im2col, the column split of wide
    /// products and the threaded recombination (the property test's shapes
    /// stay below their thresholds): equal to the generic kernel, for 1, 2
    /// and 3 threads (an uneven split), with and without groups.
    #[test]
    fn threaded_paths_equal_the_generic_kernel() {
        let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(11);
        for (c, hw, cout, stride, groups) in
            [(64, 32, 40, 1, 1), (256, 32, 64, 1, 2), (64, 32, 48, 2, 1)]
        {
            let g = ConvGeometry {
                input: FeatureShape::new(c, hw, hw),
                cout,
                kernel: 3,
                stride,
                padding: 1,
                groups,
            };
            let lim = 1i64 << WEIGHT_MAGNITUDE_BITS;
            let x: Vec<u64> = (0..g.input.len()).map(|_| rng.gen_range(0..P)).collect();
            let w: Vec<u64> = (0..cout * c / groups * 9)
                .map(|_| fixed::from_i64(rng.gen_range(-(lim - 1)..lim)))
                .collect();
            let b: Vec<u64> = (0..cout).map(|_| rng.gen_range(0..P)).collect();
            let want = kernels::conv2d_field(&x, &w, Some(&b), &g);
            for threads in [1, 2, 3] {
                assert_eq!(
                    conv2d_field(&x, &w, Some(&b), &g, threads),
                    want,
                    "{c}x{hw}x{hw} -> {cout}, stride {stride}, groups {groups}, {threads} threads"
                );
            }
        }
    }

    #[test]
    fn large_weights_fall_back_to_the_generic_kernel() {
        let g = ConvGeometry {
            input: FeatureShape::new(2, 3, 3),
            cout: 2,
            kernel: 3,
            stride: 1,
            padding: 1,
            groups: 1,
        };
        let x: Vec<u64> = (0..18).map(|i| P - 1 - i).collect();
        let w: Vec<u64> = (0..36).map(|i| fixed::from_i64(1 << 40) + i).collect();
        assert!(!exact_applies(&w, 18));
        assert_eq!(
            conv2d_field(&x, &w, None, &g, 2),
            kernels::conv2d_field(&x, &w, None, &g)
        );
    }

    /// Reductions longer than one chunk (`K = 130·3² = 1170 > K_CHUNK`, and
    /// a 2,500-input fully connected layer) at the exactness limits: every
    /// limb at its maximum and every weight at `±(2^15 − 1)`, so each chunk
    /// sum is as close to `2^53` as the bound allows, plus random values.
    #[test]
    fn chunked_reductions_are_exact_at_the_limits() {
        let g = ConvGeometry {
            input: FeatureShape::new(130, 3, 3),
            cout: 3,
            kernel: 3,
            stride: 1,
            padding: 1,
            groups: 1,
        };
        let kk = 130 * 9;
        assert!(kk > K_CHUNK);
        let top = (1i64 << WEIGHT_MAGNITUDE_BITS) - 1;
        // Largest low and high limbs: 2^28 − 1 + (2^27 − 1)·2^28 exceeds P, so
        // use P − 1 and an element with a full low limb.
        let full_low = (1u64 << 28) - 1 + (1u64 << 40);
        let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(9);
        for case in 0..3 {
            let x: Vec<u64> = (0..g.input.len())
                .map(|i| match case {
                    0 => P - 1,
                    1 => [P - 1, full_low][i % 2],
                    _ => rng.gen_range(0..P),
                })
                .collect();
            let w: Vec<u64> = (0..3 * kk)
                .map(|i| match case {
                    0 => fixed::from_i64(top),
                    1 => fixed::from_i64(if i % 3 == 0 { -top } else { top }),
                    _ => fixed::from_i64(rng.gen_range(-top..=top)),
                })
                .collect();
            assert!(exact_applies(&w, kk));
            assert_eq!(
                conv2d_field(&x, &w, None, &g, 2),
                kernels::conv2d_field(&x, &w, None, &g),
                "case {case}"
            );
            let n = 2500;
            let xl: Vec<u64> = (0..n).map(|i| x[i % x.len()]).collect();
            let wl: Vec<u64> = (0..2 * n).map(|i| w[i % w.len()]).collect();
            let b = [3, P - 2];
            assert_eq!(
                linear_field(&xl, &wl, Some(&b), 2),
                kernels::linear_field(&xl, &wl, Some(&b), 2),
                "case {case} (linear)"
            );
        }
    }
}
