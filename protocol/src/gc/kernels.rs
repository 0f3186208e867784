//! x86-64 AES-NI kernels: fixed-key AES with the round keys held by the
//! caller, the half-gates and three-halves AND gates of [`LANES`] circuits
//! fused with their hashes, and the bulk hashing / counter-mode helpers.
//!
//! Every function here is a safe `#[target_feature]` function: its body
//! uses `core::arch` intrinsics, which are safe to call inside a function
//! compiled with the features they need. Calling these functions from code
//! compiled without the features is `unsafe`; the only such calls are in
//! [`super::accel`], behind a token that exists only after run-time
//! detection. No kernel dereferences a raw pointer: labels and table words
//! are moved in and out of registers with `bytemuck` casts.
//!
//! Why hand-written AES instead of the `aes` crate: a gate's hashes are
//! computed straight from the labels in registers (σ, tweak and the AES
//! whitening key folded into one XOR), and the outputs are combined in
//! registers, so no AES input/output buffer goes through memory and the
//! AES unit is the bottleneck (one `aesenc` per cycle on the development
//! machine). The permutation is the same (AES-128 under the same fixed key;
//! tested against the `aes` crate), so tables are bit-identical to the
//! portable path.

use core::arch::x86_64::*;

use super::accel::{
    RoundKeys, ThreeHalvesDeltaParts, ThreeHalvesEvalMasks, ThreeHalvesGarbleMasks,
};
use super::garble::{Lanes, LANES};

/// The features every kernel here is compiled with.
macro_rules! kernel {
    ($(#[$m:meta])* $v:vis fn $name:ident $($rest:tt)*) => {
        $(#[$m])*
        #[target_feature(enable = "aes,sse2,ssse3,sse4.1")]
        $v fn $name $($rest)*
    };
}

#[inline(always)]
fn v(x: u128) -> __m128i {
    bytemuck::cast(x)
}

#[inline(always)]
fn u(x: __m128i) -> u128 {
    bytemuck::cast(x)
}

kernel! {
    #[inline]
    fn xor(a: __m128i, b: __m128i) -> __m128i {
        _mm_xor_si128(a, b)
    }
}

kernel! {
    #[inline]
    fn and(a: __m128i, b: __m128i) -> __m128i {
        _mm_and_si128(a, b)
    }
}

kernel! {
    /// `σ(x_L ‖ x_R) = (x_L ⊕ x_R) ‖ x_L`: 64-bit lanes `[lo, hi]` → `[hi, hi ⊕ lo]`.
    #[inline]
    fn sigma(x: __m128i) -> __m128i {
        _mm_xor_si128(_mm_shuffle_epi32::<0b11_10_11_10>(x), _mm_slli_si128::<8>(x))
    }
}

kernel! {
    /// All ones when bit 0 (the colour) is set, else zero.
    #[inline]
    fn color_mask(x: __m128i) -> __m128i {
        let low = _mm_shuffle_epi32::<0>(x);
        _mm_srai_epi32::<31>(_mm_slli_epi32::<31>(low))
    }
}

kernel! {
    /// The colour bit (bit 0).
    #[inline]
    fn color_bit(x: __m128i) -> usize {
        (_mm_cvtsi128_si64(x) & 1) as usize
    }
}

kernel! {
    /// Swaps the two 64-bit halves.
    #[inline]
    fn swap(x: __m128i) -> __m128i {
        _mm_shuffle_epi32::<0b01_00_11_10>(x)
    }
}

kernel! {
    /// Loads the round keys into registers (the compiler keeps them in
    /// registers or uses them as memory operands).
    #[inline]
    fn load_keys(k: &RoundKeys) -> [__m128i; 11] {
        core::array::from_fn(|r| v(k[r]))
    }
}

kernel! {
    /// AES rounds 1..=10 on `N` already whitened blocks (`x ⊕ k₀` done by the caller).
    #[inline]
    fn rounds<const N: usize>(k: &[__m128i; 11], x: &mut [__m128i; N]) {
        for key in &k[1..10] {
            for b in x.iter_mut() {
                *b = _mm_aesenc_si128(*b, *key);
            }
        }
        for b in x.iter_mut() {
            *b = _mm_aesenclast_si128(*b, k[10]);
        }
    }
}

kernel! {
    /// One AES round-key step: `t` is `aeskeygenassist(k, rcon)`.
    #[inline]
    fn key_step(k: __m128i, t: __m128i) -> __m128i {
        let t = _mm_shuffle_epi32::<0xff>(t);
        let k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
        let k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
        let k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
        _mm_xor_si128(k, t)
    }
}

kernel! {
    /// The AES-128 key schedule of `key` (the `u128`'s little-endian bytes are the key bytes).
    pub fn expand_key(key: u128) -> RoundKeys {
        let mut out = [0u128; 11];
        let mut k = v(key);
        out[0] = u(k);
        macro_rules! step {
            ($i:expr, $rcon:expr) => {
                k = key_step(k, _mm_aeskeygenassist_si128::<$rcon>(k));
                out[$i] = u(k);
            };
        }
        step!(1, 0x01);
        step!(2, 0x02);
        step!(3, 0x04);
        step!(4, 0x08);
        step!(5, 0x10);
        step!(6, 0x20);
        step!(7, 0x40);
        step!(8, 0x80);
        step!(9, 0x1b);
        step!(10, 0x36);
        out
    }
}

kernel! {
    /// `π` on every block in place, 8 blocks in flight.
    pub fn encrypt(keys: &RoundKeys, blocks: &mut [u128]) {
        let k = load_keys(keys);
        let mut chunks = blocks.chunks_exact_mut(8);
        for c in &mut chunks {
            let mut x: [__m128i; 8] = core::array::from_fn(|i| xor(v(c[i]), k[0]));
            rounds(&k, &mut x);
            for (o, y) in c.iter_mut().zip(x) {
                *o = u(y);
            }
        }
        for o in chunks.into_remainder() {
            let mut x = [xor(v(*o), k[0])];
            rounds(&k, &mut x);
            *o = u(x[0]);
        }
    }
}

kernel! {
    /// Counter mode: `out[i] = π(counter + i)` (the counter as a little-endian block).
    pub fn ctr(keys: &RoundKeys, counter: u128, out: &mut [u128]) {
        let k = load_keys(keys);
        let mut next = counter;
        let mut chunks = out.chunks_exact_mut(8);
        for c in &mut chunks {
            let mut x: [__m128i; 8] = core::array::from_fn(|i| {
                xor(v(next.wrapping_add(i as u128)), k[0])
            });
            next = next.wrapping_add(8);
            rounds(&k, &mut x);
            for (o, y) in c.iter_mut().zip(x) {
                *o = u(y);
            }
        }
        for o in chunks.into_remainder() {
            let mut x = [xor(v(next), k[0])];
            next = next.wrapping_add(1);
            rounds(&k, &mut x);
            *o = u(x[0]);
        }
    }
}

kernel! {
    /// `out[i] = AES_{keys[i]}(block)`: one block under each of many key
    /// schedules (the OT extension's column generators), 8 in flight.
    pub fn multi_key_encrypt(keys: &[RoundKeys], block: u128, out: &mut [u128]) {
        let x0 = v(block);
        let mut ks = keys.chunks_exact(8);
        let mut os = out.chunks_exact_mut(8);
        for (k, o) in (&mut ks).zip(&mut os) {
            let mut x: [__m128i; 8] = core::array::from_fn(|i| xor(x0, v(k[i][0])));
            for r in 1..10 {
                for (b, key) in x.iter_mut().zip(k) {
                    *b = _mm_aesenc_si128(*b, v(key[r]));
                }
            }
            for ((o, b), key) in o.iter_mut().zip(x).zip(k) {
                *o = u(_mm_aesenclast_si128(b, v(key[10])));
            }
        }
        for (key, o) in ks.remainder().iter().zip(os.into_remainder()) {
            let mut b = xor(x0, v(key[0]));
            for rk in &key[1..10] {
                b = _mm_aesenc_si128(b, v(*rk));
            }
            *o = u(_mm_aesenclast_si128(b, v(key[10])));
        }
    }
}

kernel! {
    /// The tweakable hash `H(x, t) = π(σ(x) ⊕ t) ⊕ σ(x)` of `N` blocks in
    /// place, `tweak(k)` the tweak of block `k`.
    pub fn hash<const N: usize>(keys: &RoundKeys, xs: &mut [u128; N], tweak: impl Fn(usize) -> u128) {
        let k = load_keys(keys);
        let s: [__m128i; N] = core::array::from_fn(|i| sigma(v(xs[i])));
        let mut x: [__m128i; N] = core::array::from_fn(|i| xor(xor(s[i], v(tweak(i))), k[0]));
        rounds(&k, &mut x);
        for ((o, y), s) in xs.iter_mut().zip(x).zip(s) {
            *o = u(xor(y, s));
        }
    }
}

// ------------------------------------------------------------ half-gates

kernel! {
    /// Garbles one half-gates AND gate in all [`LANES`] lanes.
    ///
    /// `a`, `b` are the lanes' zero labels, `c` receives the output zero
    /// labels, `table` each lane's `(T_G, T_E ⊕ A⁰)` as the wire format's
    /// four words. Lane `l` hashes `[A⁰, A¹]` with tweak `base ⊕ 2l` and
    /// `[B⁰, B¹]` with `base ⊕ 2l ⊕ 1` (`base` a multiple of `2·LANES`).
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
        let d = v(delta);
        let sd = sigma(d);
        // The whitening key is folded into the tweak: π(x ⊕ j) starts with x ⊕ (j ⊕ k₀).
        let base = xor(v(base), k[0]);
        for l in (0..LANES).step_by(2) {
            let av = [v(a[l]), v(a[l + 1])];
            let bv = [v(b[l]), v(b[l + 1])];
            let sa = [sigma(av[0]), sigma(av[1])];
            let sb = [sigma(bv[0]), sigma(bv[1])];
            let mut x = [_mm_setzero_si128(); 8];
            for h in 0..2 {
                let ja = xor(base, v(2 * (l + h) as u128));
                let xa = xor(sa[h], ja);
                let xb = xor(sb[h], xor(ja, v(1)));
                x[4 * h] = xa;
                x[4 * h + 1] = xor(xa, sd);
                x[4 * h + 2] = xb;
                x[4 * h + 3] = xor(xb, sd);
            }
            rounds(&k, &mut x);
            for h in 0..2 {
                let (p0, p1, p2, p3) = (x[4 * h], x[4 * h + 1], x[4 * h + 2], x[4 * h + 3]);
                let pa = color_mask(av[h]);
                let pb = color_mask(bv[h]);
                // H(A⁰) ⊕ H(A¹) = π(..) ⊕ π(..) ⊕ σ(Δ).
                let tg = xor(xor(p0, p1), xor(sd, and(pb, d)));
                let wg = xor(xor(p0, sa[h]), and(pa, tg));
                let te = xor(xor(p2, p3), sd);
                let we = xor(xor(p2, sb[h]), and(pb, te));
                c[l + h] = u(xor(wg, we));
                table[2 * (l + h)] = bytemuck::cast(tg);
                table[2 * (l + h) + 1] = bytemuck::cast(xor(te, av[h]));
            }
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
        let base = xor(v(base), k[0]);
        for l in (0..LANES).step_by(4) {
            let av: [__m128i; 4] = core::array::from_fn(|h| v(a[l + h]));
            let bv: [__m128i; 4] = core::array::from_fn(|h| v(b[l + h]));
            let sa: [__m128i; 4] = core::array::from_fn(|h| sigma(av[h]));
            let sb: [__m128i; 4] = core::array::from_fn(|h| sigma(bv[h]));
            let mut x = [_mm_setzero_si128(); 8];
            for h in 0..4 {
                let ja = xor(base, v(2 * (l + h) as u128));
                x[2 * h] = xor(sa[h], ja);
                x[2 * h + 1] = xor(sb[h], xor(ja, v(1)));
            }
            rounds(&k, &mut x);
            for h in 0..4 {
                let tg: __m128i = bytemuck::cast(table[2 * (l + h)]);
                let te: __m128i = bytemuck::cast(table[2 * (l + h) + 1]);
                // H(A) ⊕ H(B) = π(..) ⊕ π(..) ⊕ σ(A) ⊕ σ(B).
                let hs = xor(xor(x[2 * h], x[2 * h + 1]), xor(sa[h], sb[h]));
                let ga = and(color_mask(av[h]), tg);
                let eb = and(color_mask(bv[h]), xor(te, av[h]));
                c[l + h] = u(xor(hs, xor(ga, eb)));
            }
        }
    }
}

// ---------------------------------------------------------- three-halves

/// Blocks one three-halves AND gate hashes in all lanes when evaluating.
pub(super) const TH_EVAL_BLOCKS: usize = 3 * LANES;

kernel! {
    /// Garbles one three-halves AND gate in all [`LANES`] lanes.
    ///
    /// `a`, `b` are zero labels; `coins` holds each lane's two coins
    /// (`ρ₁ρ₂` at bits `2l+1, 2l`); `words` receives 3 table words per lane
    /// and `control` the 5 control bits per lane. Lane `l` hashes the colour-0
    /// and colour-1 labels of `A`, `B`, `A ⊕ B` with tweaks `base + 3l`,
    /// `+ 3l + 1`, `+ 3l + 2` (added in the low word).
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
        masks: &ThreeHalvesGarbleMasks,
        delta_parts: &ThreeHalvesDeltaParts,
    ) {
        let k = load_keys(keys);
        let d = v(delta);
        let sd = sigma(d);
        let select = [_mm_setzero_si128(), d];
        let basev = v(base);
        for l in 0..LANES {
            let av = v(a[l]);
            let bv = v(b[l]);
            let ca = color_bit(av);
            let cb = color_bit(bv);
            // Colour-0 labels.
            let a0 = xor(av, select[ca]);
            let b0 = xor(bv, select[cb]);
            let sa = sigma(a0);
            let sb = sigma(b0);
            let sab = xor(sa, sb);
            let t: [__m128i; 3] =
                core::array::from_fn(|m| xor(_mm_add_epi64(basev, v((3 * l + m) as u128)), k[0]));
            let xa = xor(sa, t[0]);
            let xb = xor(sb, t[1]);
            let xab = xor(sab, t[2]);
            let mut x = [xa, xor(xa, sd), xb, xor(xb, sd), xab, xor(xab, sd)];
            rounds(&k, &mut x);
            // hl_k = p_k ⊕ σ(·) (⊕ σ(Δ) for the colour-1 label); the sums the gate needs:
            let x04 = xor(xor(x[0], x[4]), sb); // hl0 ⊕ hl4 (σ(A) ⊕ σ(A⊕B) = σ(B))
            let x24 = xor(xor(x[2], x[4]), sa); // hl2 ⊕ hl4
            let x01 = xor(xor(x[0], x[1]), sd);
            let x23 = xor(xor(x[2], x[3]), sd);
            let x45 = xor(xor(x[4], x[5]), sd);
            let is = ca ^ 1;
            let js = cb ^ 1;
            let rho = (coins >> (2 * l)) as usize & 3;
            let case = is << 3 | js << 2 | rho;
            let m = &masks[case];
            let dp = &delta_parts[case];
            let a0s = swap(a0);
            let b0s = swap(b0);
            let apply = |mm: &[u128; 4], dpart: u128| {
                xor(
                    xor(and(a0, v(mm[0])), and(a0s, v(mm[1]))),
                    xor(xor(and(b0, v(mm[2])), and(b0s, v(mm[3]))), v(dpart)),
                )
            };
            // C = [lo(hl2 ⊕ hl4) ⊕ K_R·s, lo(hl0 ⊕ hl4) ⊕ K_L·s].
            let cv = xor(_mm_unpacklo_epi64(x24, x04), apply(&m[0], dp[0]));
            c[l] = u(cv);
            // [G0, G1] and G2.
            let g01 = xor(_mm_unpacklo_epi64(x01, x23), apply(&m[1], dp[1]));
            let g2 = xor(x45, apply(&m[2], dp[2]));
            let g01w: [u64; 2] = bytemuck::cast(g01);
            words[3 * l] = g01w[0];
            words[3 * l + 1] = g01w[1];
            words[3 * l + 2] = _mm_cvtsi128_si64(g2) as u64;
            // Top bits: bit 1 of movemask_pd is bit 127.
            let top = |y: __m128i| (_mm_movemask_pd(_mm_castsi128_pd(y)) >> 1) as u8;
            let rho1 = (rho >> 1) as u8;
            let rho2 = (rho & 1) as u8;
            control[l] = (rho1 ^ top(x04))
                | (rho2 ^ top(x24)) << 1
                | (is as u8 ^ top(x01)) << 2
                | (js as u8 ^ top(x23)) << 3
                | ((is ^ js) as u8 ^ top(x45)) << 4;
        }
    }
}

kernel! {
    /// The whitened AES inputs of a three-halves evaluation gate: `σA` of
    /// every lane, then `σB`, then `σA ⊕ σB` (block `m·LANES + l`), each `⊕` its tweak (lane `l`'s tweaks
    /// `base + 3l`, `+ 3l + 1`, `+ 3l + 2`, added in the low word, as
    /// [`three_halves_garble`]'s) and `k₀`. Shared by the AES-NI and VAES
    /// kernels, which differ only in how they run the rounds.
    #[inline]
    pub(super) fn three_halves_evaluate_inputs(
        k0: u128,
        a: &Lanes,
        b: &Lanes,
        base: u128,
        out: &mut [u128; TH_EVAL_BLOCKS],
    ) {
        let basev = v(base);
        let k0 = v(k0);
        for l in 0..LANES {
            let sa = sigma(v(a[l]));
            let sb = sigma(v(b[l]));
            for (m, s) in [sa, sb, xor(sa, sb)].into_iter().enumerate() {
                let t = _mm_add_epi64(basev, v((3 * l + m) as u128));
                out[m * LANES + l] = u(xor(xor(s, t), k0));
            }
        }
    }
}

kernel! {
    /// The rest of a three-halves evaluation gate once `p` holds `π` of
    /// [`three_halves_evaluate_inputs`]' blocks.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn three_halves_evaluate_finish(
        p: &[u128; TH_EVAL_BLOCKS],
        a: &Lanes,
        b: &Lanes,
        c: &mut Lanes,
        words: &[u64; 3 * LANES],
        control: &[u8; LANES],
        masks: &ThreeHalvesEvalMasks,
    ) {
        for lane in 0..LANES {
            let x = [p[lane], p[LANES + lane], p[2 * LANES + lane]];
            let av = v(a[lane]);
            let bv = v(b[lane]);
            let sa = sigma(av);
            let sb = sigma(bv);
            let sab = xor(sa, sb);
            let ha = xor(v(x[0]), sa);
            let hb = xor(v(x[1]), sb);
            let hab = xor(v(x[2]), sab);
            let xa = xor(ha, hab);
            let yb = xor(hb, hab);
            let i = color_bit(av);
            let j = color_bit(bv);
            let ij = i ^ j;
            // bit 0: top(yb), bit 1: top(xa).
            let t = _mm_movemask_pd(_mm_castsi128_pd(_mm_unpackhi_epi64(yb, xa))) as usize;
            let z = control[lane] as usize;
            let r1 = (z ^ (i & (z >> 2)) ^ (ij & (z >> 4)) ^ (t >> 1)) & 1;
            let r2 = ((z >> 1) ^ (j & (z >> 3)) ^ (ij & (z >> 4)) ^ t) & 1;
            let m = &masks[i << 3 | j << 2 | r1 << 1 | r2];
            let g01 = v(u128::from(words[3 * lane]) | u128::from(words[3 * lane + 1]) << 64);
            let g2 = _mm_set1_epi64x(words[3 * lane + 2] as i64);
            let hash = _mm_unpacklo_epi64(yb, xa);
            let gpart = xor(and(swap(g01), v(m[4])), and(g2, v(m[5])));
            let apart = xor(and(av, v(m[0])), and(swap(av), v(m[1])));
            let bpart = xor(and(bv, v(m[2])), and(swap(bv), v(m[3])));
            c[lane] = u(xor(xor(hash, gpart), xor(apart, bpart)));
        }
    }
}

kernel! {
    /// Evaluates one three-halves AND gate in all [`LANES`] lanes (`words`,
    /// `control` as [`three_halves_garble`] writes them).
    #[allow(clippy::too_many_arguments)]
    pub fn three_halves_evaluate(
        keys: &RoundKeys,
        a: &Lanes,
        b: &Lanes,
        c: &mut Lanes,
        words: &[u64; 3 * LANES],
        control: &[u8; LANES],
        base: u128,
        masks: &ThreeHalvesEvalMasks,
    ) {
        let k = load_keys(keys);
        let mut p = [0u128; TH_EVAL_BLOCKS];
        three_halves_evaluate_inputs(keys[0], a, b, base, &mut p);
        for chunk in p.chunks_exact_mut(8) {
            let mut x: [__m128i; 8] = core::array::from_fn(|i| v(chunk[i]));
            rounds(&k, &mut x);
            for (o, y) in chunk.iter_mut().zip(x) {
                *o = u(y);
            }
        }
        three_halves_evaluate_finish(&p, a, b, c, words, control, masks);
    }
}
