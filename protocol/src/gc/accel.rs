//! Run-time selection of the AES-NI kernels ([`super::kernels`]).
//!
//! This is the only module of the crate that allows `unsafe`: calling a
//! `#[target_feature]` function from code compiled without those features
//! is `unsafe` because it is undefined behaviour on a CPU that lacks them.
//! [`AesNi`] is a token that can only be made by [`AesNi::detect`] after
//! the features were detected at run time (`is_x86_feature_detected!`), and
//! every call below goes through it: each `unsafe` block's SAFETY comment
//! is that invariant. The kernels themselves contain no `unsafe` (no raw
//! pointers; `core::arch` intrinsics are safe inside a function compiled
//! with their features). No `target-cpu=native` is needed: the binary runs
//! everywhere and picks the kernels where the CPU has them.
#![allow(unsafe_code)]

use super::garble::{Lanes, LANES};

/// Expanded AES-128 round keys.
pub type RoundKeys = [u128; 11];

/// Masks one lane of the three-halves evaluator needs, per (colours `i, j`,
/// control bits `r₁, r₂`): the output `C = [C_R, C_L]` (64-bit halves, low
/// first) is `hash ⊕ (G01ˢ ∧ m_g) ⊕ (G2 ∧ m_ij) ⊕ (A ∧ m_a) ⊕ (Aˢ ∧ m_as) ⊕
/// (B ∧ m_b) ⊕ (Bˢ ∧ m_bs)`, `ˢ` swapping halves. Entry order `[m_a, m_as,
/// m_b, m_bs, m_g, m_ij]`.
pub type ThreeHalvesEvalMasks = [[u128; 6]; 16];

/// [`ThreeHalvesEvalMasks`] as truth tables, for the 512-bit evaluator
/// that selects its masks per lane in registers: entry `[m][h]` has bit
/// `idx` set iff mask `m` of case `idx` is all ones in 64-bit half `h`
/// (0 low, 1 high). Every mask is all ones or all zeros in each half.
pub type ThreeHalvesEvalTruth = [[u64; 2]; 6];

/// The three-halves garbler's masks as truth tables over the case
/// `i*·8 + j*·4 + ρ₁·2 + ρ₂` (bit `case` of entry `[e][h]`: all ones in
/// 64-bit half `h`), for the 512-bit garbler: entries `4r + t` are
/// [`ThreeHalvesGarbleMasks`]' row pair `r`, term `t`; entries `12 + 2r`
/// and `13 + 2r` select row pair `r`'s `Δ` part from `Δˢ` and from `Δ`.
pub type ThreeHalvesGarbleTruth = [[u64; 2]; 18];

/// Masks of the three-halves garbler per case (true colours `i*, j*`,
/// coins `ρ₁, ρ₂`): for each of the row pairs `(K_R, K_L)`, `(T0, T1)`,
/// `(T2, –)` the masks on `[A⁰, A⁰ˢ, B⁰, B⁰ˢ]`.
pub type ThreeHalvesGarbleMasks = [[[u128; 4]; 3]; 16];

/// The `Δ` part of the garbler's row pairs per case: `[D ∧ m_d ⊕ Dˢ ∧ m_ds]` for the three pairs.
pub type ThreeHalvesDeltaParts = [[u128; 3]; 16];

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::super::{kernels, kernels512};
    use super::*;

    /// Proof that this CPU has AES-NI and SSE4.1 (made only by [`AesNi::detect`]).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct AesNi(());

    impl AesNi {
        /// The token, if the CPU has the features the kernels are compiled with.
        pub fn detect() -> Option<Self> {
            let ok = std::arch::is_x86_feature_detected!("aes")
                && std::arch::is_x86_feature_detected!("sse2")
                && std::arch::is_x86_feature_detected!("ssse3")
                && std::arch::is_x86_feature_detected!("sse4.1");
            ok.then_some(AesNi(()))
        }

        /// The AES-128 key schedule.
        pub fn expand_key(self, key: u128) -> RoundKeys {
            // SAFETY: `self` exists only if `detect` found every feature the kernel needs.
            unsafe { kernels::expand_key(key) }
        }

        /// `π` in place.
        pub fn encrypt(self, keys: &RoundKeys, blocks: &mut [u128]) {
            // SAFETY: `self` exists only if `detect` found every feature the kernel needs.
            unsafe { kernels::encrypt(keys, blocks) }
        }

        /// Counter mode from `counter`.
        pub fn ctr(self, keys: &RoundKeys, counter: u128, out: &mut [u128]) {
            // SAFETY: `self` exists only if `detect` found every feature the kernel needs.
            unsafe { kernels::ctr(keys, counter, out) }
        }

        /// `out[i] = AES_{keys[i]}(block)`.
        pub fn multi_key_encrypt(self, keys: &[RoundKeys], block: u128, out: &mut [u128]) {
            // SAFETY: `self` exists only if `detect` found every feature the kernel needs.
            unsafe { kernels::multi_key_encrypt(keys, block, out) }
        }

        /// The tweakable hash of `N` blocks in place.
        #[inline]
        pub fn hash<const N: usize>(
            self,
            keys: &RoundKeys,
            xs: &mut [u128; N],
            tweak: impl Fn(usize) -> u128,
        ) {
            // SAFETY: `self` exists only if `detect` found every feature the kernel needs.
            unsafe { kernels::hash(keys, xs, tweak) }
        }

        /// One half-gates AND gate garbled in all lanes.
        #[inline]
        #[allow(clippy::too_many_arguments)]
        pub fn half_gates_garble(
            self,
            keys: &RoundKeys,
            a: &Lanes,
            b: &Lanes,
            c: &mut Lanes,
            table: &mut [[u8; 16]; 2 * LANES],
            base: u128,
            delta: u128,
        ) {
            // SAFETY: `self` exists only if `detect` found every feature the kernel needs.
            unsafe { kernels::half_gates_garble(keys, a, b, c, table, base, delta) }
        }

        /// One half-gates AND gate evaluated in all lanes.
        #[inline]
        pub fn half_gates_evaluate(
            self,
            keys: &RoundKeys,
            a: &Lanes,
            b: &Lanes,
            c: &mut Lanes,
            table: &[[u8; 16]; 2 * LANES],
            base: u128,
        ) {
            // SAFETY: `self` exists only if `detect` found every feature the kernel needs.
            unsafe { kernels::half_gates_evaluate(keys, a, b, c, table, base) }
        }

        /// One three-halves AND gate garbled in all lanes.
        #[inline]
        #[allow(clippy::too_many_arguments)]
        pub fn three_halves_garble(
            self,
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
            // SAFETY: `self` exists only if `detect` found every feature the kernel needs.
            unsafe {
                kernels::three_halves_garble(
                    keys,
                    a,
                    b,
                    c,
                    words,
                    control,
                    base,
                    delta,
                    coins,
                    masks,
                    delta_parts,
                )
            }
        }

        /// One three-halves AND gate evaluated in all lanes.
        #[inline]
        #[allow(clippy::too_many_arguments)]
        pub fn three_halves_evaluate(
            self,
            keys: &RoundKeys,
            a: &Lanes,
            b: &Lanes,
            c: &mut Lanes,
            words: &[u64; 3 * LANES],
            control: &[u8; LANES],
            base: u128,
            masks: &ThreeHalvesEvalMasks,
        ) {
            // SAFETY: `self` exists only if `detect` found every feature the kernel needs.
            unsafe { kernels::three_halves_evaluate(keys, a, b, c, words, control, base, masks) }
        }
    }

    /// Proof that this CPU has VAES and AVX-512F/BW/DQ besides AES-NI (made
    /// only by [`Vaes::detect`]): the 512-bit kernels of `kernels512`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Vaes(());

    impl Vaes {
        /// The token, if the CPU has every feature the 512-bit kernels are compiled with.
        pub fn detect() -> Option<Self> {
            let ok = AesNi::detect().is_some()
                && std::arch::is_x86_feature_detected!("avx")
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("vaes");
            ok.then_some(Vaes(()))
        }

        /// `π` in place, 32 blocks in flight.
        pub fn encrypt(self, keys: &RoundKeys, blocks: &mut [u128]) {
            // SAFETY: `self` exists only if `detect` found every feature the kernel needs.
            unsafe { kernels512::encrypt(keys, blocks) }
        }

        /// Counter mode from `counter`.
        pub fn ctr(self, keys: &RoundKeys, counter: u128, out: &mut [u128]) {
            // SAFETY: `self` exists only if `detect` found every feature the kernel needs.
            unsafe { kernels512::ctr(keys, counter, out) }
        }

        /// The tweakable hash of every block in place, block `k` with tweak
        /// `base ⊕ offsets[k]`.
        pub fn hash(self, keys: &RoundKeys, xs: &mut [u128], base: u128, offsets: &[u128]) {
            // SAFETY: `self` exists only if `detect` found every feature the kernel needs.
            unsafe { kernels512::hash(keys, xs, base, offsets) }
        }

        /// One half-gates AND gate garbled in all lanes.
        #[inline]
        #[allow(clippy::too_many_arguments)]
        pub fn half_gates_garble(
            self,
            keys: &RoundKeys,
            a: &Lanes,
            b: &Lanes,
            c: &mut Lanes,
            table: &mut [[u8; 16]; 2 * LANES],
            base: u128,
            delta: u128,
        ) {
            // SAFETY: `self` exists only if `detect` found every feature the kernel needs.
            unsafe { kernels512::half_gates_garble(keys, a, b, c, table, base, delta) }
        }

        /// One half-gates AND gate evaluated in all lanes.
        #[inline]
        pub fn half_gates_evaluate(
            self,
            keys: &RoundKeys,
            a: &Lanes,
            b: &Lanes,
            c: &mut Lanes,
            table: &[[u8; 16]; 2 * LANES],
            base: u128,
        ) {
            // SAFETY: `self` exists only if `detect` found every feature the kernel needs.
            unsafe { kernels512::half_gates_evaluate(keys, a, b, c, table, base) }
        }

        /// One three-halves AND gate evaluated in all lanes.
        #[inline]
        #[allow(clippy::too_many_arguments)]
        pub fn three_halves_evaluate(
            self,
            keys: &RoundKeys,
            a: &Lanes,
            b: &Lanes,
            c: &mut Lanes,
            words: &[u64; 3 * LANES],
            control: &[u8; LANES],
            base: u128,
            truth: &ThreeHalvesEvalTruth,
        ) {
            // SAFETY: `self` exists only if `detect` found every feature the kernel needs.
            unsafe { kernels512::three_halves_evaluate(keys, a, b, c, words, control, base, truth) }
        }

        /// The garbler's decoding of one output wire in all lanes.
        #[inline]
        pub fn decode_garbler(
            self,
            h: &[u128; 2 * LANES],
            labels: &Lanes,
            weight: u64,
            ct: &mut [u64; LANES],
            rho_sums: &mut [u64; LANES],
        ) {
            // SAFETY: `self` exists only if `detect` found every feature the kernel needs.
            unsafe { kernels512::decode_garbler(h, labels, weight, ct, rho_sums) }
        }

        /// The evaluator's decoding of one output wire in all lanes.
        #[inline]
        pub fn decode_evaluator(
            self,
            h: &[u128; LANES],
            labels: &Lanes,
            ct: &[u64; LANES],
            sums: &mut [u64; LANES],
        ) {
            // SAFETY: `self` exists only if `detect` found every feature the kernel needs.
            unsafe { kernels512::decode_evaluator(h, labels, ct, sums) }
        }

        /// One output wire of the garbler in all lanes: colour labels, hashes, decoding.
        #[inline]
        #[allow(clippy::too_many_arguments)]
        pub fn garbler_output(
            self,
            keys: &RoundKeys,
            labels: &Lanes,
            delta: u128,
            base: u128,
            offsets: &[u128; 2 * LANES],
            weight: u64,
            ct: &mut [u64; LANES],
            rho_sums: &mut [u64; LANES],
        ) {
            // SAFETY: `self` exists only if `detect` found every feature the kernel needs.
            unsafe {
                kernels512::garbler_output(keys, labels, delta, base, offsets, weight, ct, rho_sums)
            }
        }

        /// One output wire of the evaluator in all lanes: hashes, decoding.
        #[inline]
        pub fn evaluator_output(
            self,
            keys: &RoundKeys,
            labels: &Lanes,
            base: u128,
            offsets: &[u128; LANES],
            ct: &[u64; LANES],
            sums: &mut [u64; LANES],
        ) {
            // SAFETY: `self` exists only if `detect` found every feature the kernel needs.
            unsafe { kernels512::evaluator_output(keys, labels, base, offsets, ct, sums) }
        }

        /// One three-halves AND gate garbled in all lanes.
        #[inline]
        #[allow(clippy::too_many_arguments)]
        pub fn three_halves_garble(
            self,
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
            // SAFETY: `self` exists only if `detect` found every feature the kernel needs.
            unsafe {
                kernels512::three_halves_garble(
                    keys, a, b, c, words, control, base, delta, coins, truth,
                )
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    use super::*;

    /// No AES-NI kernels on this target: the token cannot be made, and
    /// every method is unreachable.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct AesNi(core::convert::Infallible);

    #[allow(clippy::too_many_arguments, missing_docs)]
    impl AesNi {
        /// Always `None` here.
        pub fn detect() -> Option<Self> {
            None
        }
        pub fn expand_key(self, _: u128) -> RoundKeys {
            match self.0 {}
        }
        pub fn encrypt(self, _: &RoundKeys, _: &mut [u128]) {
            match self.0 {}
        }
        pub fn ctr(self, _: &RoundKeys, _: u128, _: &mut [u128]) {
            match self.0 {}
        }
        pub fn multi_key_encrypt(self, _: &[RoundKeys], _: u128, _: &mut [u128]) {
            match self.0 {}
        }
        pub fn hash<const N: usize>(
            self,
            _: &RoundKeys,
            _: &mut [u128; N],
            _: impl Fn(usize) -> u128,
        ) {
            match self.0 {}
        }
        pub fn half_gates_garble(
            self,
            _: &RoundKeys,
            _: &Lanes,
            _: &Lanes,
            _: &mut Lanes,
            _: &mut [[u8; 16]; 2 * LANES],
            _: u128,
            _: u128,
        ) {
            match self.0 {}
        }
        pub fn half_gates_evaluate(
            self,
            _: &RoundKeys,
            _: &Lanes,
            _: &Lanes,
            _: &mut Lanes,
            _: &[[u8; 16]; 2 * LANES],
            _: u128,
        ) {
            match self.0 {}
        }
        pub fn three_halves_garble(
            self,
            _: &RoundKeys,
            _: &Lanes,
            _: &Lanes,
            _: &mut Lanes,
            _: &mut [u64; 3 * LANES],
            _: &mut [u8; LANES],
            _: u128,
            _: u128,
            _: u32,
            _: &ThreeHalvesGarbleMasks,
            _: &ThreeHalvesDeltaParts,
        ) {
            match self.0 {}
        }
        pub fn three_halves_evaluate(
            self,
            _: &RoundKeys,
            _: &Lanes,
            _: &Lanes,
            _: &mut Lanes,
            _: &[u64; 3 * LANES],
            _: &[u8; LANES],
            _: u128,
            _: &ThreeHalvesEvalMasks,
        ) {
            match self.0 {}
        }
    }

    /// No VAES kernels on this target: the token cannot be made.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Vaes(core::convert::Infallible);

    #[allow(clippy::too_many_arguments, missing_docs)]
    impl Vaes {
        /// Always `None` here.
        pub fn detect() -> Option<Self> {
            None
        }
        pub fn decode_garbler(
            self,
            _: &[u128; 2 * LANES],
            _: &Lanes,
            _: u64,
            _: &mut [u64; LANES],
            _: &mut [u64; LANES],
        ) {
            match self.0 {}
        }
        pub fn decode_evaluator(
            self,
            _: &[u128; LANES],
            _: &Lanes,
            _: &[u64; LANES],
            _: &mut [u64; LANES],
        ) {
            match self.0 {}
        }
        pub fn garbler_output(
            self,
            _: &RoundKeys,
            _: &Lanes,
            _: u128,
            _: u128,
            _: &[u128; 2 * LANES],
            _: u64,
            _: &mut [u64; LANES],
            _: &mut [u64; LANES],
        ) {
            match self.0 {}
        }
        pub fn evaluator_output(
            self,
            _: &RoundKeys,
            _: &Lanes,
            _: u128,
            _: &[u128; LANES],
            _: &[u64; LANES],
            _: &mut [u64; LANES],
        ) {
            match self.0 {}
        }
        pub fn three_halves_garble(
            self,
            _: &RoundKeys,
            _: &Lanes,
            _: &Lanes,
            _: &mut Lanes,
            _: &mut [u64; 3 * LANES],
            _: &mut [u8; LANES],
            _: u128,
            _: u128,
            _: u32,
            _: &ThreeHalvesGarbleTruth,
        ) {
            match self.0 {}
        }
        pub fn encrypt(self, _: &RoundKeys, _: &mut [u128]) {
            match self.0 {}
        }
        pub fn ctr(self, _: &RoundKeys, _: u128, _: &mut [u128]) {
            match self.0 {}
        }
        pub fn hash(self, _: &RoundKeys, _: &mut [u128], _: u128, _: &[u128]) {
            match self.0 {}
        }
        pub fn half_gates_garble(
            self,
            _: &RoundKeys,
            _: &Lanes,
            _: &Lanes,
            _: &mut Lanes,
            _: &mut [[u8; 16]; 2 * LANES],
            _: u128,
            _: u128,
        ) {
            match self.0 {}
        }
        pub fn half_gates_evaluate(
            self,
            _: &RoundKeys,
            _: &Lanes,
            _: &Lanes,
            _: &mut Lanes,
            _: &[[u8; 16]; 2 * LANES],
            _: u128,
        ) {
            match self.0 {}
        }
        pub fn three_halves_evaluate(
            self,
            _: &RoundKeys,
            _: &Lanes,
            _: &Lanes,
            _: &mut Lanes,
            _: &[u64; 3 * LANES],
            _: &[u8; LANES],
            _: u128,
            _: &ThreeHalvesEvalTruth,
        ) {
            match self.0 {}
        }
    }
}

pub use imp::{AesNi, Vaes};
