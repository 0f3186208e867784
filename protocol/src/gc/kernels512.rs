//! 512-bit VAES kernels (x86-64 with VAES and AVX-512F/BW): four AES
//! blocks per instruction. The half-gates AND kernels work on four of the
//! [`LANES`] lanes per register, so one gate's 64 garbling hashes (32 for
//! evaluation) are 16 (8) registers in flight; `encrypt` and `ctr` keep 32
//! blocks in flight. Bit for bit the same results as the AES-NI kernels of
//! [`super::kernels`] (tests compare every kernel with the plaintext twin and
//! with the `aes` crate).
//!
//! Like [`super::kernels`], these functions contain no `unsafe`: registers
//! are built from and written back to arrays by value (`bytemuck::cast`,
//! which the compiler turns into unaligned loads and stores), and calling
//! them is `unsafe` only because of `#[target_feature]`
//! ([`super::accel::Vaes`] is the run-time proof).

use core::arch::x86_64::*;

use super::accel::{RoundKeys, ThreeHalvesEvalTruth, ThreeHalvesGarbleTruth};
use super::garble::{Lanes, LANES};
use super::kernels::{self, TH_EVAL_BLOCKS};
use pibench_models::fixed::P;

/// The features every kernel here is compiled with.
macro_rules! kernel {
    ($(#[$m:meta])* $v:vis fn $name:ident $($rest:tt)*) => {
        $(#[$m])*
        #[target_feature(enable = "aes,sse2,ssse3,sse4.1,avx,avx2,avx512f,avx512bw,avx512dq,vaes")]
        $v fn $name $($rest)*
    };
}

/// Four 128-bit blocks as one register (block `i` in 128-bit lane `i`).
#[inline(always)]
fn load4(x: &[u128; 4]) -> __m512i {
    bytemuck::cast(*x)
}

#[inline(always)]
fn store4(x: __m512i) -> [u128; 4] {
    bytemuck::cast(x)
}

/// Lanes `4j..4j + 4` of a bundle.
#[inline(always)]
fn quad(l: &Lanes, j: usize) -> &[u128; 4] {
    l[4 * j..4 * j + 4]
        .try_into()
        .expect("LANES is a multiple of 4")
}

const _: () = assert!(LANES.is_multiple_of(4));
/// Registers per bundle of [`LANES`] lanes.
const QUADS: usize = LANES / 4;

kernel! {
    #[inline]
    fn xor(a: __m512i, b: __m512i) -> __m512i {
        _mm512_xor_si512(a, b)
    }
}

kernel! {
    #[inline]
    fn and(a: __m512i, b: __m512i) -> __m512i {
        _mm512_and_si512(a, b)
    }
}

kernel! {
    /// `σ` in every 128-bit lane: 64-bit words `[lo, hi]` → `[hi, hi ⊕ lo]`.
    #[inline]
    fn sigma(x: __m512i) -> __m512i {
        _mm512_xor_si512(
            _mm512_shuffle_epi32::<0b11_10_11_10>(x),
            _mm512_bslli_epi128::<8>(x),
        )
    }
}

kernel! {
    /// All ones in each 128-bit lane whose bit 0 (the colour) is set.
    #[inline]
    fn color_mask(x: __m512i) -> __m512i {
        let low = _mm512_shuffle_epi32::<0>(x);
        _mm512_srai_epi32::<31>(_mm512_slli_epi32::<31>(low))
    }
}

kernel! {
    /// A 128-bit block in all four lanes.
    #[inline]
    fn broadcast(x: u128) -> __m512i {
        _mm512_broadcast_i32x4(bytemuck::cast::<u128, __m128i>(x))
    }
}

kernel! {
    #[inline]
    fn load_keys(k: &RoundKeys) -> [__m512i; 11] {
        core::array::from_fn(|r| broadcast(k[r]))
    }
}

kernel! {
    /// AES rounds 1..=10 on `N` whitened registers (`x ⊕ k₀` done by the caller).
    #[inline]
    fn rounds<const N: usize>(k: &[__m512i; 11], x: &mut [__m512i; N]) {
        for key in &k[1..10] {
            for b in x.iter_mut() {
                *b = _mm512_aesenc_epi128(*b, *key);
            }
        }
        for b in x.iter_mut() {
            *b = _mm512_aesenclast_epi128(*b, k[10]);
        }
    }
}

kernel! {
    /// `π` on every block in place, 32 blocks in flight.
    pub fn encrypt(keys: &RoundKeys, blocks: &mut [u128]) {
        let k = load_keys(keys);
        let mut chunks = blocks.chunks_exact_mut(32);
        for c in &mut chunks {
            let mut x: [__m512i; 8] = core::array::from_fn(|i| {
                xor(load4(c[4 * i..4 * i + 4].try_into().expect("32 = 8 × 4")), k[0])
            });
            rounds(&k, &mut x);
            for (o, y) in c.chunks_exact_mut(4).zip(x) {
                o.copy_from_slice(&store4(y));
            }
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let mut tail = [0u128; 32];
            tail[..rest.len()].copy_from_slice(rest);
            let mut x: [__m512i; 8] = core::array::from_fn(|i| {
                xor(load4(tail[4 * i..4 * i + 4].try_into().expect("32 = 8 × 4")), k[0])
            });
            rounds(&k, &mut x);
            for (o, y) in tail.chunks_exact_mut(4).zip(x) {
                o.copy_from_slice(&store4(y));
            }
            rest.copy_from_slice(&tail[..rest.len()]);
        }
    }
}

kernel! {
    /// Counter mode: `out[i] = π(counter + i)` (the counter as a little-endian block).
    pub fn ctr(keys: &RoundKeys, counter: u128, out: &mut [u128]) {
        let mut next = counter;
        for c in out.chunks_mut(32) {
            for o in c.iter_mut() {
                *o = next;
                next = next.wrapping_add(1);
            }
        }
        encrypt(keys, out);
    }
}

kernel! {
    /// The tweakable hash `H(x, t) = π(σ(x) ⊕ t) ⊕ σ(x)` of every block in
    /// place, block `k` with tweak `base ⊕ offsets[k]` (the output
    /// decoding's hashes: its tweaks differ per lane in a few bits), 16
    /// blocks per round of the rounds. Bit for bit [`super::kernels::hash`].
    ///
    /// # Panics
    /// If `offsets` is shorter than `xs` (a programming error).
    pub fn hash(keys: &RoundKeys, xs: &mut [u128], base: u128, offsets: &[u128]) {
        let k = load_keys(keys);
        let base = xor(broadcast(base), k[0]);
        let offsets = &offsets[..xs.len()];
        let mut chunks = xs.chunks_exact_mut(16);
        let mut tweaks = offsets.chunks_exact(16);
        for (chunk, t) in (&mut chunks).zip(&mut tweaks) {
            let chunk: &mut [u128; 16] = chunk.try_into().expect("chunks of 16");
            hash16(&k, base, chunk, t.try_into().expect("chunks of 16"));
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let mut tail = [0u128; 16];
            let mut t = [0u128; 16];
            tail[..rest.len()].copy_from_slice(rest);
            t[..rest.len()].copy_from_slice(tweaks.remainder());
            hash16(&k, base, &mut tail, &t);
            rest.copy_from_slice(&tail[..rest.len()]);
        }
    }
}

kernel! {
    /// `H` of 16 blocks in place (4 registers in flight, enough for VAES's
    /// latency), block `i` with tweak `base ⊕ t[i]` (`k₀` folded into `base`).
    #[inline]
    fn hash16(k: &[__m512i; 11], base: __m512i, xs: &mut [u128; 16], t: &[u128; 16]) {
        let quad = |x: &[u128; 16], i: usize| load4(x[4 * i..4 * i + 4].try_into().expect("16 = 4 × 4"));
        let s: [__m512i; 4] = core::array::from_fn(|i| sigma(quad(xs, i)));
        let mut x: [__m512i; 4] = core::array::from_fn(|i| xor(xor(s[i], quad(t, i)), base));
        rounds(k, &mut x);
        for (i, (y, s)) in x.iter().zip(&s).enumerate() {
            xs[4 * i..4 * i + 4].copy_from_slice(&store4(xor(*y, *s)));
        }
    }
}

/// Lane offsets `2l` of the half-gates tweaks, four lanes per register.
#[inline(always)]
fn lane_tweaks(j: usize) -> [u128; 4] {
    core::array::from_fn(|h| 2 * (4 * j + h) as u128)
}

kernel! {
    /// Garbles one half-gates AND gate in all [`LANES`] lanes, exactly as
    /// [`super::kernels::half_gates_garble`] (same tweaks, same table layout:
    /// lane `l`'s `(T_G, T_E ⊕ A⁰)` at `table[2l]`, `table[2l + 1]`).
    pub fn half_gates_garble(
        keys: &RoundKeys,
        a: &Lanes,
        b: &Lanes,
        c: &mut Lanes,
        table: &mut [[u8; 16]; 2 * LANES],
        base: u128,
        delta: u128,
    ) {
        let k = load_keys(keys);
        let d = broadcast(delta);
        let sd = sigma(d);
        let one = broadcast(1);
        // The whitening key is folded into the tweak: π(x ⊕ j) starts with x ⊕ (j ⊕ k₀).
        let base = xor(broadcast(base), k[0]);
        // Only the AES states and round keys stay in registers through the
        // rounds (16 + 11 of 32); the labels are loaded again after them.
        let mut x = [_mm512_setzero_si512(); 4 * QUADS];
        for j in 0..QUADS {
            let ja = xor(base, load4(&lane_tweaks(j)));
            let xa = xor(sigma(load4(quad(a, j))), ja);
            let xb = xor(sigma(load4(quad(b, j))), xor(ja, one));
            x[4 * j] = xa;
            x[4 * j + 1] = xor(xa, sd);
            x[4 * j + 2] = xb;
            x[4 * j + 3] = xor(xb, sd);
        }
        rounds(&k, &mut x);
        // Interleave (T_G, T_E ⊕ A⁰) per lane: 64-bit word indices into [tg | te].
        let lo = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
        let hi = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
        for j in 0..QUADS {
            let (p0, p1, p2, p3) = (x[4 * j], x[4 * j + 1], x[4 * j + 2], x[4 * j + 3]);
            let (av, bv) = (load4(quad(a, j)), load4(quad(b, j)));
            let pa = color_mask(av);
            let pb = color_mask(bv);
            // H(A⁰) ⊕ H(A¹) = π(..) ⊕ π(..) ⊕ σ(Δ).
            let tg = xor(xor(p0, p1), xor(sd, and(pb, d)));
            let wg = xor(xor(p0, sigma(av)), and(pa, tg));
            let te = xor(xor(p2, p3), sd);
            let we = xor(xor(p2, sigma(bv)), and(pb, te));
            c[4 * j..4 * j + 4].copy_from_slice(&store4(xor(wg, we)));
            let tea = xor(te, av);
            let first: [[u8; 16]; 4] = bytemuck::cast(_mm512_permutex2var_epi64(tg, lo, tea));
            let second: [[u8; 16]; 4] = bytemuck::cast(_mm512_permutex2var_epi64(tg, hi, tea));
            table[8 * j..8 * j + 4].copy_from_slice(&first);
            table[8 * j + 4..8 * j + 8].copy_from_slice(&second);
        }
    }
}

kernel! {
    /// Evaluates one half-gates AND gate in all [`LANES`] lanes (`a`, `b`
    /// active labels, `table` as [`half_gates_garble`] writes it).
    pub fn half_gates_evaluate(
        keys: &RoundKeys,
        a: &Lanes,
        b: &Lanes,
        c: &mut Lanes,
        table: &[[u8; 16]; 2 * LANES],
        base: u128,
    ) {
        let k = load_keys(keys);
        let one = broadcast(1);
        let base = xor(broadcast(base), k[0]);
        let mut x = [_mm512_setzero_si512(); 2 * QUADS];
        for j in 0..QUADS {
            let ja = xor(base, load4(&lane_tweaks(j)));
            x[2 * j] = xor(sigma(load4(quad(a, j))), ja);
            x[2 * j + 1] = xor(sigma(load4(quad(b, j))), xor(ja, one));
        }
        rounds(&k, &mut x);
        // De-interleave four lanes' (T_G, T_E) from two registers of table rows.
        let gi = _mm512_set_epi64(13, 12, 9, 8, 5, 4, 1, 0);
        let ei = _mm512_set_epi64(15, 14, 11, 10, 7, 6, 3, 2);
        for j in 0..QUADS {
            let r0: [[u8; 16]; 4] = table[8 * j..8 * j + 4].try_into().expect("8 rows per quad");
            let r1: [[u8; 16]; 4] = table[8 * j + 4..8 * j + 8].try_into().expect("8 rows per quad");
            let (r0, r1): (__m512i, __m512i) = (bytemuck::cast(r0), bytemuck::cast(r1));
            let tg = _mm512_permutex2var_epi64(r0, gi, r1);
            let te = _mm512_permutex2var_epi64(r0, ei, r1);
            let (av, bv) = (load4(quad(a, j)), load4(quad(b, j)));
            // H(A) ⊕ H(B) = π(..) ⊕ π(..) ⊕ σ(A) ⊕ σ(B).
            let hs = xor(xor(x[2 * j], x[2 * j + 1]), xor(sigma(av), sigma(bv)));
            let ga = and(color_mask(av), tg);
            let eb = and(color_mask(bv), xor(te, av));
            c[4 * j..4 * j + 4].copy_from_slice(&store4(xor(hs, xor(ga, eb))));
        }
    }
}

const _: () = assert!(TH_EVAL_BLOCKS == 48);

kernel! {
    /// Evaluates one three-halves AND gate in all [`LANES`] lanes, exactly
    /// as [`super::kernels::three_halves_evaluate`]: the same per-lane
    /// inputs (shared code), the gate's 48 hashes as 12 VAES registers, and
    /// the finish four lanes per register, each lane's masks chosen in
    /// registers from `truth` (the AES-NI kernel's mask table as truth
    /// tables) by its case `i·8 + j·4 + r₁·2 + r₂`. (Garbling keeps the
    /// AES-NI kernel.)
    #[allow(clippy::too_many_arguments)]
    pub fn three_halves_evaluate(
        keys: &RoundKeys,
        a: &Lanes,
        b: &Lanes,
        c: &mut Lanes,
        words: &[u64; 3 * LANES],
        control: &[u8; LANES],
        base: u128,
        truth: &ThreeHalvesEvalTruth,
    ) {
        let k = load_keys(keys);
        let mut p = [0u128; TH_EVAL_BLOCKS];
        kernels::three_halves_evaluate_inputs(keys[0], a, b, base, &mut p);
        let mut x: [__m512i; 12] =
            core::array::from_fn(|i| load4(p[4 * i..4 * i + 4].try_into().expect("48 = 12 × 4")));
        rounds(&k, &mut x);
        let one = _mm512_set1_epi64(1);
        let tables: [__m512i; 6] = core::array::from_fn(|m| {
            broadcast(u128::from(truth[m][0]) | u128::from(truth[m][1]) << 64)
        });
        // Word indices into [w₀..w₇ | w₈..w₁₁]: lane h's (w_{3h}, w_{3h+1}) and (w_{3h+2}, w_{3h+2}).
        let g01_idx = _mm512_set_epi64(10, 9, 7, 6, 4, 3, 1, 0);
        let g2_idx = _mm512_set_epi64(11, 11, 8, 8, 5, 5, 2, 2);
        let lane_pairs = _mm512_set_epi64(3, 3, 2, 2, 1, 1, 0, 0);
        for j in 0..QUADS {
            // x[m·QUADS + j]: hash m (σA, σB, σA ⊕ σB) of lanes 4j..4j + 4.
            let (av, bv) = (load4(quad(a, j)), load4(quad(b, j)));
            let (sa, sb) = (sigma(av), sigma(bv));
            let hab = xor(x[2 * QUADS + j], xor(sa, sb));
            let xa = xor(xor(x[j], sa), hab);
            let yb = xor(xor(x[QUADS + j], sb), hab);
            // Per lane, in both of its 64-bit words: colours, hash top bits, control bits.
            let low_bit = |y: __m512i| _mm512_and_si512(_mm512_shuffle_epi32::<0b01_00_01_00>(y), one);
            let top_bit = |y: __m512i| _mm512_srli_epi64::<63>(_mm512_shuffle_epi32::<0b11_10_11_10>(y));
            let (i, jb) = (low_bit(av), low_bit(bv));
            let ij = xor(i, jb);
            let (t0, t1) = (top_bit(yb), top_bit(xa));
            let zs = u32::from_le_bytes(control[4 * j..4 * j + 4].try_into().expect("4 lanes"));
            let z = _mm512_permutexvar_epi64(
                lane_pairs,
                _mm512_cvtepu8_epi64(_mm_cvtsi32_si128(zs as i32)),
            );
            let sr = |y: __m512i, n: u32| _mm512_srlv_epi64(y, _mm512_set1_epi64(i64::from(n)));
            let r1 = and(xor(xor(z, and(i, sr(z, 2))), xor(and(ij, sr(z, 4)), t1)), one);
            let r2 = and(xor(xor(sr(z, 1), and(jb, sr(z, 3))), xor(and(ij, sr(z, 4)), t0)), one);
            let idx = _mm512_or_si512(
                _mm512_or_si512(_mm512_slli_epi64::<3>(i), _mm512_slli_epi64::<2>(jb)),
                _mm512_or_si512(_mm512_slli_epi64::<1>(r1), r2),
            );
            let k: [__mmask8; 6] = core::array::from_fn(|m| {
                _mm512_test_epi64_mask(_mm512_srlv_epi64(tables[m], idx), one)
            });
            let w0: [u64; 8] = words[12 * j..12 * j + 8].try_into().expect("8 words");
            let mut w1 = [0u64; 8];
            w1[..4].copy_from_slice(&words[12 * j + 8..12 * j + 12]);
            let (w0, w1): (__m512i, __m512i) = (bytemuck::cast(w0), bytemuck::cast(w1));
            let g01 = _mm512_permutex2var_epi64(w0, g01_idx, w1);
            let g2 = _mm512_permutex2var_epi64(w0, g2_idx, w1);
            let swap = |y: __m512i| _mm512_shuffle_epi32::<0b01_00_11_10>(y);
            let hash = _mm512_unpacklo_epi64(yb, xa);
            let gpart = xor(_mm512_maskz_mov_epi64(k[4], swap(g01)), _mm512_maskz_mov_epi64(k[5], g2));
            let apart = xor(_mm512_maskz_mov_epi64(k[0], av), _mm512_maskz_mov_epi64(k[1], swap(av)));
            let bpart = xor(_mm512_maskz_mov_epi64(k[2], bv), _mm512_maskz_mov_epi64(k[3], swap(bv)));
            c[4 * j..4 * j + 4].copy_from_slice(&store4(xor(xor(hash, gpart), xor(apart, bpart))));
        }
    }
}

// ------------------------------------------------------- output decoding

/// `2^55 − P`: the engine's field is `P = 2^55 − C55` with `C55 < 2^21`.
const C55: u64 = (1 << 55) - P;
/// `2^64 mod P`.
const C64: u64 = C55 << 9;
const M55: u64 = (1 << 55) - 1;
const M23: u64 = (1 << 23) - 1;
const _: () = assert!(P < 1 << 55 && C55 < 1 << 21 && C64 < 1 << 32);

kernel! {
    /// `(hi·2^64 + lo) mod P` in each 64-bit lane, exactly
    /// [`super::engine::reduce_block`]: with `hi = hh·2^32 + hl`,
    /// `x ≡ B·2^32 + A + lo` (`A = hl·C64`, `B = hh·C64`, both `< 2^62`), and
    /// every term folds at bit 55 (`2^55 ≡ C55`) into a sum below `2^61`.
    #[inline]
    fn reduce8(lo: __m512i, hi: __m512i) -> __m512i {
        let c55 = _mm512_set1_epi64(C55 as i64);
        let c64 = _mm512_set1_epi64(C64 as i64);
        let m55 = _mm512_set1_epi64(M55 as i64);
        let a = _mm512_mul_epu32(hi, c64);
        let b = _mm512_mul_epu32(_mm512_srli_epi64::<32>(hi), c64);
        // B·2^32 = (B >> 23)·2^55 + (B mod 2^23)·2^32.
        let t1 = _mm512_mullo_epi64(_mm512_srli_epi64::<23>(b), c55); // < 2^39 · 2^21
        let t2 = _mm512_slli_epi64::<32>(_mm512_and_si512(b, _mm512_set1_epi64(M23 as i64)));
        let tops = _mm512_add_epi64(_mm512_srli_epi64::<55>(lo), _mm512_srli_epi64::<55>(a)); // < 2^10
        let s = _mm512_add_epi64(
            _mm512_add_epi64(t1, t2),
            _mm512_add_epi64(
                _mm512_add_epi64(_mm512_and_si512(lo, m55), _mm512_and_si512(a, m55)),
                _mm512_mul_epu32(tops, c55),
            ),
        ); // < 2^60 + 3·2^55 + 2^31 < 2^61
        let s = _mm512_add_epi64(
            _mm512_mul_epu32(_mm512_srli_epi64::<55>(s), c55),
            _mm512_and_si512(s, m55),
        ); // < 2^6·2^21 + 2^55 < 2P
        below(s, P)
    }
}

kernel! {
    /// `x − m` where `x ≥ m`, else `x` (per 64-bit lane, unsigned).
    #[inline]
    fn below(x: __m512i, m: u64) -> __m512i {
        let m = _mm512_set1_epi64(m as i64);
        _mm512_mask_sub_epi64(x, _mm512_cmpge_epu64_mask(x, m), x, m)
    }
}

kernel! {
    /// The low and high 64-bit words of 8 blocks.
    #[inline]
    fn words8(x: &[u128; 8]) -> (__m512i, __m512i) {
        let r0 = load4(x[..4].try_into().expect("8 = 2 × 4"));
        let r1 = load4(x[4..].try_into().expect("8 = 2 × 4"));
        let lo = _mm512_permutex2var_epi64(r0, _mm512_set_epi64(14, 12, 10, 8, 6, 4, 2, 0), r1);
        let hi = _mm512_permutex2var_epi64(r0, _mm512_set_epi64(15, 13, 11, 9, 7, 5, 3, 1), r1);
        (lo, hi)
    }
}

kernel! {
    /// The garbler's decoding of one output wire of weight `weight` in all
    /// [`LANES`] lanes, exactly as the engine's scalar code: `h` holds
    /// `H` of each lane's colour-0 label, then of its colour-1 label;
    /// `labels` the zero labels. Writes each lane's decoding entry
    /// `ct = h1 − h0 ± w mod P` to `ct` and adds `ρ = 2P − h0 − w·b₀`
    /// (unreduced, `< 2P`) to `rho_sums`.
    pub fn decode_garbler(
        h: &[u128; 2 * LANES],
        labels: &Lanes,
        weight: u64,
        ct: &mut [u64; LANES],
        rho_sums: &mut [u64; LANES],
    ) {
        let two_p = _mm512_set1_epi64((2 * P) as i64);
        let w = _mm512_set1_epi64(weight as i64);
        let one = _mm512_set1_epi64(1);
        for half in 0..LANES / 8 {
            let eight = |x: &[u128]| -> [u128; 8] {
                x[8 * half..8 * half + 8].try_into().expect("8 lanes")
            };
            let (l0, h0w) = words8(&eight(&h[..LANES]));
            let (l1, h1w) = words8(&eight(&h[LANES..]));
            let h0 = reduce8(l0, h0w);
            let h1 = reduce8(l1, h1w);
            let (lab, _) = words8(&eight(labels));
            // b₀ = colour of the zero label.
            let b0 = _mm512_test_epi64_mask(lab, one);
            let signed_weight = _mm512_mask_sub_epi64(w, b0, two_p, w);
            let rho = _mm512_sub_epi64(
                _mm512_sub_epi64(two_p, h0),
                _mm512_maskz_mov_epi64(b0, w),
            );
            let c = _mm512_add_epi64(
                _mm512_add_epi64(h1, two_p),
                _mm512_sub_epi64(signed_weight, h0),
            );
            let c = _mm512_mask_sub_epi64(c, b0, c, two_p);
            let c = below(below(c, 2 * P), P);
            let sums: [u64; 8] = bytemuck::cast(_mm512_add_epi64(
                bytemuck::cast::<[u64; 8], __m512i>(
                    rho_sums[8 * half..8 * half + 8].try_into().expect("8 lanes"),
                ),
                rho,
            ));
            rho_sums[8 * half..8 * half + 8].copy_from_slice(&sums);
            ct[8 * half..8 * half + 8].copy_from_slice(&bytemuck::cast::<__m512i, [u64; 8]>(c));
        }
    }
}

kernel! {
    /// The evaluator's decoding of one output wire in all [`LANES`] lanes,
    /// exactly as the engine's scalar code: adds `c·ct + P − (H(L) mod P)`
    /// to `sums` (`h` = `H` of each lane's active label `L`, `c` its colour,
    /// `ct` the lane's decoding entry).
    pub fn decode_evaluator(h: &[u128; LANES], labels: &Lanes, ct: &[u64; LANES], sums: &mut [u64; LANES]) {
        let p = _mm512_set1_epi64(P as i64);
        let one = _mm512_set1_epi64(1);
        for half in 0..LANES / 8 {
            let eight = |x: &[u128]| -> [u128; 8] {
                x[8 * half..8 * half + 8].try_into().expect("8 lanes")
            };
            let (lo, hi) = words8(&eight(h));
            let (lab, _) = words8(&eight(labels));
            let colour = _mm512_test_epi64_mask(lab, one);
            let c: __m512i = bytemuck::cast::<[u64; 8], __m512i>(
                ct[8 * half..8 * half + 8].try_into().expect("8 lanes"),
            );
            let term = _mm512_sub_epi64(
                _mm512_add_epi64(_mm512_maskz_mov_epi64(colour, c), p),
                reduce8(lo, hi),
            );
            let s: __m512i = bytemuck::cast::<[u64; 8], __m512i>(
                sums[8 * half..8 * half + 8].try_into().expect("8 lanes"),
            );
            sums[8 * half..8 * half + 8]
                .copy_from_slice(&bytemuck::cast::<__m512i, [u64; 8]>(_mm512_add_epi64(s, term)));
        }
    }
}

kernel! {
    /// One output wire of the garbler in all [`LANES`] lanes, fused: both
    /// colour labels of each lane's zero label, their hashes (tweak `base ⊕
    /// offsets[m]`), then [`decode_garbler`].
    #[allow(clippy::too_many_arguments)]
    pub fn garbler_output(
        keys: &RoundKeys,
        labels: &Lanes,
        delta: u128,
        base: u128,
        offsets: &[u128; 2 * LANES],
        weight: u64,
        ct: &mut [u64; LANES],
        rho_sums: &mut [u64; LANES],
    ) {
        let d = broadcast(delta);
        let mut h = [0u128; 2 * LANES];
        for j in 0..QUADS {
            let x = load4(quad(labels, j));
            // Colour-0 label, then colour-1.
            let c0 = xor(x, and(color_mask(x), d));
            h[4 * j..4 * j + 4].copy_from_slice(&store4(c0));
            h[LANES + 4 * j..LANES + 4 * j + 4].copy_from_slice(&store4(xor(c0, d)));
        }
        hash(keys, &mut h, base, offsets);
        decode_garbler(&h, labels, weight, ct, rho_sums);
    }
}

kernel! {
    /// One output wire of the evaluator in all [`LANES`] lanes, fused: the
    /// active labels' hashes (tweak `base ⊕ offsets[l]`), then [`decode_evaluator`].
    pub fn evaluator_output(
        keys: &RoundKeys,
        labels: &Lanes,
        base: u128,
        offsets: &[u128; LANES],
        ct: &[u64; LANES],
        sums: &mut [u64; LANES],
    ) {
        let mut h = *labels;
        hash(keys, &mut h, base, offsets);
        decode_evaluator(&h, labels, ct, sums);
    }
}

/// Quads (four lanes) the three-halves garbler hashes together.
const TH_QUADS: usize = 1;

kernel! {
    /// Garbles one three-halves AND gate in all [`LANES`] lanes, exactly as
    /// [`super::kernels::three_halves_garble`] (same tweaks, tables, control
    /// bits), four lanes per register: the gate's 96 hashes as 24 VAES
    /// registers (12 in flight), and each lane's masks and `Δ` parts chosen
    /// in registers from `truth` by its case `i*·8 + j*·4 + ρ₁·2 + ρ₂`.
    #[allow(clippy::too_many_arguments)]
    pub fn three_halves_garble(
        keys: &RoundKeys,
        a: &Lanes,
        b: &Lanes,
        c: &mut Lanes,
        words: &mut [u64; 3 * LANES],
        control: &mut [u8; LANES],
        base: u128,
        delta: u128,
        coins: u32,
        truth: &ThreeHalvesGarbleTruth,
    ) {
        let k = load_keys(keys);
        let d = broadcast(delta);
        let sd = sigma(d);
        let ds = _mm512_shuffle_epi32::<0b01_00_11_10>(d);
        let one = _mm512_set1_epi64(1);
        let base = broadcast(base);
        let swap = |y: __m512i| _mm512_shuffle_epi32::<0b01_00_11_10>(y);
        let tables: [__m512i; 18] = core::array::from_fn(|e| {
            broadcast(u128::from(truth[e][0]) | u128::from(truth[e][1]) << 64)
        });
        // Word indices into [g01 | g2]: lane h's (G0, G1, G2) at 3h..3h + 3.
        let first8 = _mm512_set_epi64(5, 4, 10, 3, 2, 8, 1, 0);
        let last4 = _mm512_set_epi64(0, 0, 0, 0, 14, 7, 6, 12);
        for group in 0..QUADS / TH_QUADS {
            // Colour-0 labels and their σ; x[6q + m]: hash m of quad q.
            let mut a0 = [_mm512_setzero_si512(); TH_QUADS];
            let mut b0 = [_mm512_setzero_si512(); TH_QUADS];
            let mut x = [_mm512_setzero_si512(); 6 * TH_QUADS];
            for q in 0..TH_QUADS {
                let j = TH_QUADS * group + q;
                let (av, bv) = (load4(quad(a, j)), load4(quad(b, j)));
                a0[q] = xor(av, and(color_mask(av), d));
                b0[q] = xor(bv, and(color_mask(bv), d));
                let (sa, sb) = (sigma(a0[q]), sigma(b0[q]));
                // Lane l's tweaks base + 3l + m, added in the low word.
                let t: [__m512i; 3] = core::array::from_fn(|m| {
                    let off = |h: usize| (3 * (4 * j + h) + m) as i64;
                    xor(_mm512_add_epi64(base, _mm512_set_epi64(0, off(3), 0, off(2), 0, off(1), 0, off(0))), k[0])
                });
                let (xa, xb, xab) = (xor(sa, t[0]), xor(sb, t[1]), xor(xor(sa, sb), t[2]));
                x[6 * q..6 * q + 6].copy_from_slice(&[xa, xor(xa, sd), xb, xor(xb, sd), xab, xor(xab, sd)]);
            }
            rounds(&k, &mut x);
            for q in 0..TH_QUADS {
                let j = TH_QUADS * group + q;
                let p = &x[6 * q..6 * q + 6];
                let (a0, b0) = (a0[q], b0[q]);
                let (sa, sb) = (sigma(a0), sigma(b0));
                let x04 = xor(xor(p[0], p[4]), sb);
                let x24 = xor(xor(p[2], p[4]), sa);
                let x01 = xor(xor(p[0], p[1]), sd);
                let x23 = xor(xor(p[2], p[3]), sd);
                let x45 = xor(xor(p[4], p[5]), sd);
                // Per lane, in both words: i* = 1 − colour(A), j* likewise, the coins.
                let av = load4(quad(a, j));
                let bv = load4(quad(b, j));
                let low_bit = |y: __m512i| _mm512_and_si512(_mm512_shuffle_epi32::<0b01_00_01_00>(y), one);
                let is = xor(low_bit(av), one);
                let js = xor(low_bit(bv), one);
                let shifts = _mm512_set_epi64(
                    (8 * j + 6) as i64, (8 * j + 6) as i64, (8 * j + 4) as i64, (8 * j + 4) as i64,
                    (8 * j + 2) as i64, (8 * j + 2) as i64, (8 * j) as i64, (8 * j) as i64,
                );
                let rho = and(_mm512_srlv_epi64(_mm512_set1_epi64(i64::from(coins)), shifts), _mm512_set1_epi64(3));
                let case = _mm512_or_si512(
                    _mm512_or_si512(_mm512_slli_epi64::<3>(is), _mm512_slli_epi64::<2>(js)),
                    rho,
                );
                let km: [__mmask8; 18] = core::array::from_fn(|e| {
                    _mm512_test_epi64_mask(_mm512_srlv_epi64(tables[e], case), one)
                });
                let (a0s, b0s) = (swap(a0), swap(b0));
                let apply = |r: usize| {
                    xor(
                        xor(
                            xor(_mm512_maskz_mov_epi64(km[4 * r], a0), _mm512_maskz_mov_epi64(km[4 * r + 1], a0s)),
                            xor(_mm512_maskz_mov_epi64(km[4 * r + 2], b0), _mm512_maskz_mov_epi64(km[4 * r + 3], b0s)),
                        ),
                        xor(_mm512_maskz_mov_epi64(km[12 + 2 * r], ds), _mm512_maskz_mov_epi64(km[13 + 2 * r], d)),
                    )
                };
                // C = [lo(hl2 ⊕ hl4) ⊕ K_R·s, lo(hl0 ⊕ hl4) ⊕ K_L·s].
                let cv = xor(_mm512_unpacklo_epi64(x24, x04), apply(0));
                c[4 * j..4 * j + 4].copy_from_slice(&store4(cv));
                let g01 = xor(_mm512_unpacklo_epi64(x01, x23), apply(1));
                let g2 = xor(x45, apply(2));
                let w8: [u64; 8] = bytemuck::cast(_mm512_permutex2var_epi64(g01, first8, g2));
                let w4: [u64; 8] = bytemuck::cast(_mm512_permutex2var_epi64(g01, last4, g2));
                words[12 * j..12 * j + 8].copy_from_slice(&w8);
                words[12 * j + 8..12 * j + 12].copy_from_slice(&w4[..4]);
                // Control bits: each lane's bit 127 (bit 2h + 1 of the sign masks).
                let top = |y: __m512i| u32::from(_mm512_movepi64_mask(y));
                let (t04, t24, t01, t23, t45) = (top(x04), top(x24), top(x01), top(x23), top(x45));
                for h in 0..4 {
                    let l = 4 * j + h;
                    let bit = |m: u32| ((m >> (2 * h + 1)) & 1) as u8;
                    let rho = (coins >> (2 * l)) as u8 & 3;
                    let is = (a[l] & 1) as u8 ^ 1;
                    let js = (b[l] & 1) as u8 ^ 1;
                    control[l] = ((rho >> 1) ^ bit(t04))
                        | ((rho & 1) ^ bit(t24)) << 1
                        | (is ^ bit(t01)) << 2
                        | (js ^ bit(t23)) << 3
                        | ((is ^ js) ^ bit(t45)) << 4;
                }
            }
        }
    }
}
