//! Coefficient-encoded (Cheetah-style) homomorphic convolutions and
//! fully-connected layers, with tiling, output-channel packing and circuit
//! privacy (re-randomisation and noise flooding). No rotations are used.
//!
//! # Packing
//! An input tile of `cb` channels of `hi × wi` (padded) pixels is the
//! polynomial `T(X) = Σ T[c,y,x]·X^(c·hi·wi + y·wi + x)`. For a group of `m`
//! output channels the server builds
//! `K(X) = Σ_k Σ_{c,l,l'} w[o_k,c,l,l']·X^(k·S + O − c·hi·wi − l·wi − l')`
//! with `O = (cb−1)·hi·wi + (kh−1)·wi + (kw−1)` and slot stride
//! `S = cb·hi·wi + hi·wi`. The coefficient `k·S + O + y·wi + x` of `T·K` is
//! the stride-1 correlation of output channel `o_k` at `(y, x)`, provided
//! `(m−1)·S + cb·hi·wi ≤ N` (no wrap-around reaches a wanted coefficient).
//! Channel blocks are summed; strided outputs are read at the strided
//! positions; 1×1 strided kernels subsample the input first; grouped
//! convolutions skip products whose channel blocks share no group.

use rand::{CryptoRng, Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sealy::{BFVEvaluator, Ciphertext, Evaluator};

use super::cipher::{
    ciphertext_from_rns, ciphertext_rns, flood_rns, plaintext_from_coeffs, random_poly, ClientKeys,
    ServerKeys,
};
use super::error::{seal, HeError};
use super::params::HeContext;
use pibench_models::fixed::{self, P};
use pibench_models::graph::FeatureShape;
use pibench_models::reference::kernels::{self, ConvGeometry};
use pibench_models::reference::{EncodedNetwork, EncodedOp};

/// Shape of one linear layer (convolution; a fully-connected layer is a
/// 1×1 convolution on a 1×1 map).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerShape {
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (both axes).
    pub stride: usize,
    /// Zero padding (both axes).
    pub padding: usize,
    /// Groups.
    pub groups: usize,
}

impl LayerShape {
    /// A square convolution.
    pub fn conv(
        cin: usize,
        cout: usize,
        hw: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Self {
        Self {
            cin,
            cout,
            h: hw,
            w: hw,
            kh: k,
            kw: k,
            stride,
            padding,
            groups: 1,
        }
    }

    /// A fully-connected layer `in_features → out_features`.
    pub fn linear(in_features: usize, out_features: usize) -> Self {
        Self::conv(in_features, out_features, 1, 1, 1, 0)
    }

    /// Output height.
    pub fn hout(&self) -> usize {
        (self.h + 2 * self.padding - self.kh) / self.stride + 1
    }

    /// Output width.
    pub fn wout(&self) -> usize {
        (self.w + 2 * self.padding - self.kw) / self.stride + 1
    }

    /// Number of input elements.
    pub fn input_len(&self) -> usize {
        self.cin * self.h * self.w
    }

    /// Number of output elements.
    pub fn output_len(&self) -> usize {
        self.cout * self.hout() * self.wout()
    }

    /// Number of weights (`cout × cin/groups × kh × kw`, PyTorch layout).
    pub fn weight_len(&self) -> usize {
        self.cout * (self.cin / self.groups.max(1)) * self.kh * self.kw
    }

    /// Checks the shape is well formed.
    pub fn validate(&self, layer: &str) -> Result<(), HeError> {
        let bad = |reason: String| {
            Err(HeError::InvalidShape {
                layer: layer.to_string(),
                reason,
            })
        };
        if self.cin == 0 || self.cout == 0 || self.h == 0 || self.w == 0 {
            return bad(format!("empty dimension in {self:?}"));
        }
        if self.kh == 0 || self.kw == 0 || self.stride == 0 || self.groups == 0 {
            return bad(format!("zero kernel, stride or groups in {self:?}"));
        }
        if !self.cin.is_multiple_of(self.groups) || !self.cout.is_multiple_of(self.groups) {
            return bad(format!(
                "groups {} must divide cin {} and cout {}",
                self.groups, self.cin, self.cout
            ));
        }
        if self.h + 2 * self.padding < self.kh || self.w + 2 * self.padding < self.kw {
            return bad("kernel larger than the padded input".into());
        }
        Ok(())
    }
}

/// How a layer is cut into ciphertexts.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LinearPlan {
    /// Layer name (for errors).
    pub layer: String,
    /// The shape.
    pub shape: LayerShape,
    /// Ring degree.
    pub n: usize,
    /// Effective (padded, possibly subsampled) input height / width.
    pub hp: usize,
    /// See `hp`.
    pub wp: usize,
    /// Stride applied on the stride-1 output grid (1 after 1×1 subsampling).
    pub eff_stride: usize,
    /// Whether the input is subsampled before a 1×1 kernel.
    pub subsampled: bool,
    /// Input tile height / width.
    pub hi: usize,
    /// See `hi`.
    pub wi: usize,
    /// Stride-1 output rows / cols per tile.
    pub th: usize,
    /// See `th`.
    pub tw: usize,
    /// Tile origins on the stride-1 output grid.
    pub tiles: Vec<(usize, usize)>,
    /// Input channels per ciphertext.
    pub cb: usize,
    /// Output channels per ciphertext.
    pub m: usize,
    /// Channel blocks.
    pub ncb: usize,
    /// Output-channel groups.
    pub nog: usize,
    /// Slot stride `S`.
    pub slot: usize,
    /// Offset `O`.
    pub offset: usize,
    /// Bound on the evaluation noise, in bits.
    pub noise_bound_bits: f64,
    /// Flooding noise magnitude, in bits.
    pub flood_bits: u32,
}

impl LinearPlan {
    /// Plans a layer for the given context.
    pub fn new(ctx: &HeContext, layer: &str, shape: LayerShape) -> Result<Self, HeError> {
        shape.validate(layer)?;
        let n = ctx.n();
        let subsampled = shape.kh == 1 && shape.kw == 1 && shape.stride > 1;
        let (hp, wp, eff_stride) = if subsampled {
            (shape.hout(), shape.wout(), 1)
        } else {
            (
                shape.h + 2 * shape.padding,
                shape.w + 2 * shape.padding,
                shape.stride,
            )
        };
        let (kh, kw) = (shape.kh, shape.kw);
        if kh * kw > n / 2 {
            return Err(HeError::InvalidShape {
                layer: layer.into(),
                reason: format!("kernel {kh}×{kw} too large for N = {n}"),
            });
        }
        let (hi, wi) = if hp * wp <= n {
            (hp, wp)
        } else {
            let wi = if wp * (kh + 7) <= n {
                wp
            } else {
                ((n as f64).sqrt() as usize).max(kw + 1).min(wp)
            };
            ((n / wi).min(hp), wi)
        };
        let (th, tw) = (hi - kh + 1, wi - kw + 1);
        let (ho1, wo1) = (hp - kh + 1, wp - kw + 1);
        let mut tiles = Vec::new();
        for y0 in (0..ho1).step_by(th) {
            for x0 in (0..wo1).step_by(tw) {
                tiles.push((y0, x0));
            }
        }
        let area = hi * wi;
        let t = (P as f64).log2();
        let w_bound = 2f64.powi(ctx.params.weight_bound_bits as i32);
        let fresh = 2f64.powf(ctx.fresh_noise_bits());
        let log_n = (n as f64).log2().ceil() as u32;
        let limit = ctx.decryption_noise_bits().floor() as i64;
        let cin_g = shape.cin / shape.groups;
        let mut best: Option<(f64, usize, usize, f64, u32)> = None;
        for cb in 1..=shape.cin.min(n / area) {
            let d = cb * area;
            let slot = d + area;
            let m_max = (1 + (n - d) / slot).min(shape.cout);
            for m in (1..=m_max).rev() {
                let terms = (cin_g * kh * kw * m) as f64;
                let noise = terms * w_bound * (2f64.powf(t) + fresh) + 2.0 * fresh + 2f64.powf(t);
                let noise_bits = noise.log2();
                let flood = noise_bits.ceil() as u32 + ctx.params.flood_sigma + log_n;
                if flood as i64 + 2 > limit {
                    continue;
                }
                let ncb = shape.cin.div_ceil(cb);
                let nog = shape.cout.div_ceil(m);
                let cost = (tiles.len() * (ncb * nog + 12 * nog + 8 * ncb)) as f64;
                if best.is_none_or(|b| cost < b.0) {
                    best = Some((cost, cb, m, noise_bits, flood));
                }
                break;
            }
        }
        let Some((_, cb, m, noise_bound_bits, flood_bits)) = best else {
            return Err(HeError::InvalidParams {
                reason: format!(
                    "layer {layer}: no packing keeps noise + {}-bit flooding below the {limit}-bit decryption bound",
                    ctx.params.flood_sigma
                ),
            });
        };
        Ok(Self {
            layer: layer.to_string(),
            shape,
            n,
            hp,
            wp,
            eff_stride,
            subsampled,
            hi,
            wi,
            th,
            tw,
            tiles,
            cb,
            m,
            ncb: shape.cin.div_ceil(cb),
            nog: shape.cout.div_ceil(m),
            slot: cb * area + area,
            offset: (cb - 1) * area + (kh - 1) * wi + (kw - 1),
            noise_bound_bits,
            flood_bits,
        })
    }

    /// Ciphertexts the client sends.
    pub fn input_ciphertexts(&self) -> usize {
        self.tiles.len() * self.ncb
    }

    /// Ciphertexts the server returns.
    pub fn output_ciphertexts(&self) -> usize {
        self.tiles.len() * self.nog
    }

    /// Homomorphic rotations used (always 0 with coefficient encoding).
    pub fn rotations(&self) -> usize {
        0
    }

    /// Plaintext-ciphertext multiplications the server performs.
    pub fn multiplications(&self) -> usize {
        let mut k = 0;
        for b in 0..self.ncb {
            for g in 0..self.nog {
                if self.block_pair_used(b, g) {
                    k += 1;
                }
            }
        }
        k * self.tiles.len()
    }

    fn wrong_len(&self, tensor: &'static str, got: usize, expected: usize) -> HeError {
        HeError::WrongLength {
            layer: self.layer.clone(),
            tensor,
            got,
            expected,
        }
    }

    /// Effective input value at channel `c`, row `y`, column `x` of the
    /// (padded / subsampled) grid, or 0 outside.
    fn eff_input(&self, input: &[u64], c: usize, y: usize, x: usize) -> u64 {
        let s = &self.shape;
        let (py, px) = if self.subsampled {
            (y * s.stride, x * s.stride)
        } else {
            (y, x)
        };
        if py < s.padding || px < s.padding {
            return 0;
        }
        let (iy, ix) = (py - s.padding, px - s.padding);
        if iy >= s.h || ix >= s.w {
            return 0;
        }
        input[(c * s.h + iy) * s.w + ix]
    }

    /// Client: the coefficient vectors of the input ciphertexts (tile-major, then channel block).
    pub fn encode_input(&self, input: &[u64]) -> Result<Vec<Vec<u64>>, HeError> {
        if input.len() != self.shape.input_len() {
            return Err(self.wrong_len("input mask", input.len(), self.shape.input_len()));
        }
        if let Some(i) = input.iter().position(|&v| v >= P) {
            return Err(HeError::InvalidShape {
                layer: self.layer.clone(),
                reason: format!("input element {i} is not reduced mod P"),
            });
        }
        let area = self.hi * self.wi;
        let mut out = Vec::with_capacity(self.input_ciphertexts());
        for &(y0, x0) in &self.tiles {
            for b in 0..self.ncb {
                let mut poly = vec![0u64; self.n];
                for cl in 0..self.cb {
                    let c = b * self.cb + cl;
                    if c >= self.shape.cin {
                        break;
                    }
                    for y in 0..self.hi {
                        for x in 0..self.wi {
                            let (gy, gx) = (y0 + y, x0 + x);
                            if gy < self.hp && gx < self.wp {
                                poly[cl * area + y * self.wi + x] =
                                    self.eff_input(input, c, gy, gx);
                            }
                        }
                    }
                }
                out.push(poly);
            }
        }
        Ok(out)
    }

    fn group_of_in(&self, c: usize) -> usize {
        c / (self.shape.cin / self.shape.groups)
    }

    fn group_of_out(&self, o: usize) -> usize {
        o / (self.shape.cout / self.shape.groups)
    }

    /// Whether channel block `b` and output group `g` share a convolution group
    /// (decided by the public shape only, never by weight values).
    fn block_pair_used(&self, b: usize, g: usize) -> bool {
        let c_lo = b * self.cb;
        let c_hi = ((b + 1) * self.cb).min(self.shape.cin) - 1;
        let o_lo = g * self.m;
        let o_hi = ((g + 1) * self.m).min(self.shape.cout) - 1;
        let (a0, a1) = (self.group_of_in(c_lo), self.group_of_in(c_hi));
        let (b0, b1) = (self.group_of_out(o_lo), self.group_of_out(o_hi));
        a0 <= b1 && b0 <= a1
    }

    /// Checks weights: length and magnitude bound.
    pub fn check_weights(&self, weights: &[i64], bound_bits: u32) -> Result<(), HeError> {
        if weights.len() != self.shape.weight_len() {
            return Err(self.wrong_len("weights", weights.len(), self.shape.weight_len()));
        }
        let bound = 1i64 << bound_bits;
        if let Some((i, &v)) = weights.iter().enumerate().find(|(_, v)| v.abs() >= bound) {
            return Err(HeError::WeightTooLarge {
                layer: self.layer.clone(),
                index: i,
                value: v,
                bound_bits,
            });
        }
        Ok(())
    }

    /// Server: the kernel polynomial of channel block `b` and output group `g`.
    pub fn kernel_poly(&self, weights: &[i64], b: usize, g: usize) -> Vec<u64> {
        let s = &self.shape;
        let cin_g = s.cin / s.groups;
        let area = self.hi * self.wi;
        let mut poly = vec![0u64; self.n];
        for k in 0..self.m {
            let o = g * self.m + k;
            if o >= s.cout {
                break;
            }
            let go = self.group_of_out(o);
            for cl in 0..self.cb {
                let c = b * self.cb + cl;
                if c >= s.cin {
                    break;
                }
                if self.group_of_in(c) != go {
                    continue;
                }
                let cg = c - go * cin_g;
                for l in 0..s.kh {
                    for l2 in 0..s.kw {
                        let w = weights[((o * cin_g + cg) * s.kh + l) * s.kw + l2];
                        let pos = k * self.slot + self.offset - (cl * area + l * self.wi + l2);
                        poly[pos] = fixed::from_i64(w);
                    }
                }
            }
        }
        poly
    }

    /// Maps decrypted (or mask) coefficients of the output ciphertexts to the
    /// layer's output tensor (`cout × hout × wout`).
    pub fn extract(&self, polys: &[Vec<u64>]) -> Result<Vec<u64>, HeError> {
        if polys.len() != self.output_ciphertexts() {
            return Err(self.wrong_len(
                "output polynomials",
                polys.len(),
                self.output_ciphertexts(),
            ));
        }
        let s = &self.shape;
        let (ho, wo) = (s.hout(), s.wout());
        let (ho1, wo1) = (self.hp - s.kh + 1, self.wp - s.kw + 1);
        let mut out = vec![0u64; s.output_len()];
        for (t, &(y0, x0)) in self.tiles.iter().enumerate() {
            for g in 0..self.nog {
                let poly = &polys[t * self.nog + g];
                if poly.len() != self.n {
                    return Err(self.wrong_len("output polynomial", poly.len(), self.n));
                }
                for k in 0..self.m {
                    let o = g * self.m + k;
                    if o >= s.cout {
                        break;
                    }
                    for y in 0..self.th {
                        let a = y0 + y;
                        if a >= ho1 || a % self.eff_stride != 0 || a / self.eff_stride >= ho {
                            continue;
                        }
                        for x in 0..self.tw {
                            let bcol = x0 + x;
                            if bcol >= wo1
                                || bcol % self.eff_stride != 0
                                || bcol / self.eff_stride >= wo
                            {
                                continue;
                            }
                            let pos = k * self.slot + self.offset + y * self.wi + x;
                            out[(o * ho + a / self.eff_stride) * wo + bcol / self.eff_stride] =
                                poly[pos];
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The plaintext twin `M·input mod P` (no bias), computed by the same field
/// kernel the fixed-point reference and the online phase use
/// (`models::reference::kernels::conv2d_field`; an FC layer is a 1×1
/// convolution on a 1×1 map). Kernels are square (`kh`), as every
/// [`LayerShape`] constructor makes them.
pub fn reference_linear(shape: &LayerShape, weights: &[i64], input: &[u64]) -> Vec<u64> {
    let geometry = ConvGeometry {
        input: FeatureShape::new(shape.cin, shape.h, shape.w),
        cout: shape.cout,
        kernel: shape.kh,
        stride: shape.stride,
        padding: shape.padding,
        groups: shape.groups,
    };
    let weights: Vec<u64> = weights.iter().map(|&w| fixed::from_i64(w)).collect();
    kernels::conv2d_field(input, &weights, None, &geometry)
}

/// Client: encrypts the layer's input mask; returns the ciphertexts.
pub fn client_encrypt(
    ctx: &HeContext,
    keys: &ClientKeys,
    plan: &LinearPlan,
    mask: &[u64],
) -> Result<Vec<Ciphertext>, HeError> {
    plan.encode_input(mask)?
        .iter()
        .map(|p| keys.encrypt_coeffs(ctx, p))
        .collect()
}

/// Client: decrypts the server's reply into its share `c = M·r − s`.
pub fn client_decrypt(
    ctx: &HeContext,
    keys: &ClientKeys,
    plan: &LinearPlan,
    cts: &[Ciphertext],
) -> Result<Vec<u64>, HeError> {
    let polys = cts
        .iter()
        .map(|ct| keys.decrypt_coeffs(ctx, ct))
        .collect::<Result<Vec<_>, _>>()?;
    plan.extract(&polys)
}

/// The server's result for one layer.
#[derive(Debug)]
pub struct ServerOutput {
    /// Ciphertexts of `M·r − s`, re-randomised and flooded.
    pub ciphertexts: Vec<Ciphertext>,
    /// The server's share `s` at the layer's outputs.
    pub share: Vec<u64>,
}

/// Runs `f` over `items` on up to `threads` scoped threads, keeping order.
fn parallel_map<T: Sync, U: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(usize, &T) -> Result<U, HeError> + Sync,
) -> Result<Vec<U>, HeError> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let threads = threads.clamp(1, items.len());
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    let parts: Vec<Result<Vec<U>, HeError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .enumerate()
            .map(|(c, part)| {
                scope.spawn(move || {
                    part.iter()
                        .enumerate()
                        .map(|(i, item)| f(c * chunk + i, item))
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(HeError::Protocol {
                        layer: "worker".into(),
                        reason: "a worker thread panicked".into(),
                    })
                })
            })
            .collect()
    });
    let mut out = Vec::with_capacity(items.len());
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
}

/// Server: evaluates `Enc(M·r − s)` with `threads` worker threads.
///
/// Products are computed in the NTT domain: every input ciphertext and every
/// kernel polynomial is transformed once, products are accumulated lazily in
/// `u128` (`< 2^100` each, far fewer than `2^28` summands) and each output is
/// transformed back once. The result `(c0, c1)` gets the flooding noise added
/// to `c0`, is loaded through SEAL's validating loader, masked with
/// `−Δ·s` (SEAL `sub_plain`) and re-randomised with a fresh `Enc_pk(0)`.
pub fn server_evaluate<R: RngCore + CryptoRng>(
    ctx: &HeContext,
    keys: &ServerKeys,
    plan: &LinearPlan,
    weights: &[i64],
    inputs: &[Ciphertext],
    threads: usize,
    rng: &mut R,
) -> Result<ServerOutput, HeError> {
    plan.check_weights(weights, ctx.params.weight_bound_bits)?;
    if inputs.len() != plan.input_ciphertexts() {
        return Err(HeError::Protocol {
            layer: plan.layer.clone(),
            reason: format!(
                "{} input ciphertexts, expected {}",
                inputs.len(),
                plan.input_ciphertexts()
            ),
        });
    }
    let n = plan.n;
    let k = ctx.data_primes.len();
    if n != ctx.n() || ctx.ntt.len() != k {
        return Err(HeError::InvalidParams {
            reason: format!("layer {}: plan made for another context", plan.layer),
        });
    }
    // Inputs to the evaluation domain.
    let inputs_ntt: Vec<(Vec<u64>, Vec<u64>)> = parallel_map(inputs, threads, |_, ct| {
        let (mut c0, mut c1) = ciphertext_rns(ctx, ct)?;
        for (j, table) in ctx.ntt.iter().enumerate() {
            table.forward(&mut c0[j * n..(j + 1) * n]);
            table.forward(&mut c1[j * n..(j + 1) * n]);
        }
        Ok((c0, c1))
    })?;
    let groups: Vec<(usize, [u8; 32])> = (0..plan.nog).map(|g| (g, rng.gen())).collect();
    let evaluator = BFVEvaluator::new(&ctx.context).map_err(seal("creating the evaluator"))?;
    let ntiles = plan.tiles.len();
    let per_group = parallel_map(&groups, threads, |_, &(g, seed)| {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let mut acc = vec![vec![0u128; 2 * k * n]; ntiles];
        let mut kernel = vec![0u64; k * n];
        for b in 0..plan.ncb {
            if !plan.block_pair_used(b, g) {
                continue;
            }
            let poly = plan.kernel_poly(weights, b, g);
            for (j, table) in ctx.ntt.iter().enumerate() {
                let q = table.q as i64;
                let dst = &mut kernel[j * n..(j + 1) * n];
                for (d, &v) in dst.iter_mut().zip(&poly) {
                    *d = fixed::to_i64(v).rem_euclid(q) as u64;
                }
                table.forward(dst);
            }
            for (t, acc_t) in acc.iter_mut().enumerate() {
                let (c0, c1) = &inputs_ntt[t * plan.ncb + b];
                let (a0, a1) = acc_t.split_at_mut(k * n);
                for ((a, &c), &w) in a0.iter_mut().zip(c0).zip(&kernel) {
                    *a += c as u128 * w as u128;
                }
                for ((a, &c), &w) in a1.iter_mut().zip(c1).zip(&kernel) {
                    *a += c as u128 * w as u128;
                }
            }
        }
        let mut out = Vec::with_capacity(ntiles);
        for acc_t in &acc {
            let flood = flood_rns(ctx, plan.flood_bits, &mut rng)?;
            let mut c0 = vec![0u64; k * n];
            let mut c1 = vec![0u64; k * n];
            for (j, table) in ctx.ntt.iter().enumerate() {
                let q = table.q as u128;
                let range = j * n..(j + 1) * n;
                for (d, &a) in c0[range.clone()].iter_mut().zip(&acc_t[range.clone()]) {
                    *d = (a % q) as u64;
                }
                for (d, &a) in c1[range.clone()]
                    .iter_mut()
                    .zip(&acc_t[k * n + j * n..k * n + (j + 1) * n])
                {
                    *d = (a % q) as u64;
                }
                table.inverse(&mut c0[range.clone()]);
                table.inverse(&mut c1[range.clone()]);
                for (d, &e) in c0[range.clone()].iter_mut().zip(&flood[range]) {
                    let s = *d + e;
                    *d = if s >= table.q { s - table.q } else { s };
                }
            }
            let ct = ciphertext_from_rns(ctx, &c0, &c1)?;
            let s = random_poly(n, &mut rng);
            let s_pt = plaintext_from_coeffs(ctx, &s)?;
            let ct = evaluator
                .sub_plain(&ct, &s_pt)
                .map_err(seal(format!("layer {}: masking", plan.layer)))?;
            let ct = evaluator
                .add(&ct, &keys.encrypt_zero(ctx)?)
                .map_err(seal(format!("layer {}: re-randomising", plan.layer)))?;
            out.push((ctx.switch_to_reply_level(ct)?, s));
        }
        Ok(out)
    })?;
    let mut slots: Vec<Option<(Ciphertext, Vec<u64>)>> =
        (0..plan.output_ciphertexts()).map(|_| None).collect();
    for (g, outs) in per_group.into_iter().enumerate() {
        for (t, o) in outs.into_iter().enumerate() {
            slots[t * plan.nog + g] = Some(o);
        }
    }
    let mut ciphertexts = Vec::with_capacity(slots.len());
    let mut masks = Vec::with_capacity(slots.len());
    for (ct, s) in slots.into_iter().flatten() {
        ciphertexts.push(ct);
        masks.push(s);
    }
    let share = plan.extract(&masks)?;
    Ok(ServerOutput { ciphertexts, share })
}

impl LayerShape {
    /// The HE shape of a linear layer described by `models`. An FC fed by a
    /// global average pool acts on the pooled plane sums, which both parties
    /// compute locally on their shares (the `1/(H·W)` is in the weights).
    pub fn from_info(info: &pibench_models::graph::LinearLayerInfo) -> Self {
        Self {
            cin: info.cin,
            cout: info.cout,
            h: info.in_h,
            w: info.in_w,
            kh: info.kernel,
            kw: info.kernel,
            stride: info.stride,
            padding: info.padding,
            groups: info.groups,
        }
    }
}

/// Fixed-point weights (`round(w·2^fw)`, PyTorch layout, centred) of a linear
/// layer, taken from the network's one encoding ([`EncodedNetwork`]): batch
/// norm folded into convolutions and, for an FC fed by global average
/// pooling, the pool's `1/(H·W)` folded into the FC weights — exactly the
/// weights the fixed-point reference uses.
pub fn layer_weights(
    encoded: &EncodedNetwork,
    info: &pibench_models::graph::LinearLayerInfo,
) -> Result<Vec<i64>, HeError> {
    match encoded.ops.get(info.node) {
        Some(Some(EncodedOp::Conv { weight, .. }))
        | Some(Some(EncodedOp::Linear { weight, .. })) => {
            Ok(weight.iter().map(|&w| fixed::to_i64(w)).collect())
        }
        _ => Err(HeError::InvalidShape {
            layer: info.name.clone(),
            reason: format!(
                "node {} is not an encoded convolution or fully connected layer",
                info.node
            ),
        }),
    }
}
