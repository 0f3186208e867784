//! 128-bit label arithmetic for the AND-gate kernels: one SSE2 register per
//! label on `x86_64` (through `safe_arch`'s safe intrinsics, so the
//! workspace stays free of `unsafe`), a `u128` elsewhere. Plain `u128`
//! code is lowered to pairs of 64-bit operations and LLVM does not pack the
//! gate kernels into vector registers by itself; with [`V`] a label XOR is
//! one `pxor`, `σ` two shuffles and an XOR, a colour mask three operations.

use super::hash::{AesBlock, Block};
use aes::cipher::generic_array::GenericArray;

#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
mod imp {
    use safe_arch::{
        bitand_m128i, bitxor_m128i, byte_shl_imm_u128_m128i, load_unaligned_m128i, m128i,
        prefetch_et0, prefetch_t0, shl_imm_u32_m128i, shr_imm_i32_m128i, shuffle_ai_f32_all_m128i,
    };

    /// Asks the cache to fetch the line holding `x` (a hint, no effect on results).
    #[inline(always)]
    pub fn prefetch<T>(x: &T) {
        prefetch_t0(x)
    }

    /// Asks the cache to fetch the line holding `x` for writing (a hint;
    /// `prefetchw` where the `prfchw` target feature is enabled, else `prefetcht0`).
    #[inline(always)]
    pub fn prefetch_for_write<T>(x: &T) {
        prefetch_et0(x)
    }

    /// Transposes a 128×128 bit matrix in place (Eklundh's recursive block
    /// swaps): the 64-bit level is one unpack per row pair, the finer levels
    /// shift within 64-bit lanes (their masks never cross a lane), six SSE2
    /// operations per row pair and level, on a stack copy that stays in L1.
    pub fn transpose_128(m: &mut [u128; 128]) {
        use safe_arch::{
            shl_imm_u64_m128i, shr_imm_u64_m128i, unpack_high_i64_m128i, unpack_low_i64_m128i,
        };
        let mut x: [m128i; 128] = core::array::from_fn(|r| m128i::from(m[r]));
        for r in 0..64 {
            let (a, b) = (x[r], x[r + 64]);
            x[r] = unpack_low_i64_m128i(a, b);
            x[r + 64] = unpack_high_i64_m128i(a, b);
        }
        macro_rules! level {
            ($j:literal, $mask:expr) => {{
                let mask = m128i::from($mask);
                let mut k = 0;
                while k < 128 {
                    for r in k..k + $j {
                        let t = bitand_m128i(
                            bitxor_m128i(shr_imm_u64_m128i::<$j>(x[r]), x[r + $j]),
                            mask,
                        );
                        x[r + $j] = bitxor_m128i(x[r + $j], t);
                        x[r] = bitxor_m128i(x[r], shl_imm_u64_m128i::<$j>(t));
                    }
                    k += 2 * $j;
                }
            }};
        }
        const fn lanes(m: u64) -> u128 {
            (m as u128) << 64 | m as u128
        }
        level!(32, lanes(0x0000_0000_ffff_ffff));
        level!(16, lanes(0x0000_ffff_0000_ffff));
        level!(8, lanes(0x00ff_00ff_00ff_00ff));
        level!(4, lanes(0x0f0f_0f0f_0f0f_0f0f));
        level!(2, lanes(0x3333_3333_3333_3333));
        level!(1, lanes(0x5555_5555_5555_5555));
        for (o, v) in m.iter_mut().zip(x) {
            *o = v.into();
        }
    }

    /// A 128-bit label in an SSE2 register.
    #[derive(Clone, Copy, Debug)]
    pub struct V(m128i);

    impl V {
        #[inline(always)]
        pub fn load(b: &[u8; 16]) -> Self {
            V(load_unaligned_m128i(b))
        }
        #[inline(always)]
        pub fn to_bytes(self) -> [u8; 16] {
            self.0.into()
        }
        #[inline(always)]
        pub fn from_u128(x: u128) -> Self {
            V(x.into())
        }
        #[inline(always)]
        pub fn to_u128(self) -> u128 {
            self.0.into()
        }
        #[inline(always)]
        pub fn xor(self, o: V) -> V {
            V(bitxor_m128i(self.0, o.0))
        }
        #[inline(always)]
        pub fn and(self, o: V) -> V {
            V(bitand_m128i(self.0, o.0))
        }
        /// `σ(x_L ‖ x_R) = (x_L ⊕ x_R) ‖ x_L`: 64-bit lanes `[lo, hi]` become `[hi, hi ⊕ lo]`.
        #[inline(always)]
        pub fn sigma(self) -> V {
            let high_twice = shuffle_ai_f32_all_m128i::<0b11_10_11_10>(self.0);
            let low_up = byte_shl_imm_u128_m128i::<8>(self.0);
            V(bitxor_m128i(high_twice, low_up))
        }
        /// All ones when the colour bit (bit 0) is set, else zero.
        #[inline(always)]
        pub fn color_mask(self) -> V {
            let low_dword = shuffle_ai_f32_all_m128i::<0>(self.0);
            V(shr_imm_i32_m128i::<31>(shl_imm_u32_m128i::<31>(low_dword)))
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
mod imp {
    /// No prefetch hint on this target.
    #[inline(always)]
    pub fn prefetch<T>(_x: &T) {}

    /// Transposes a 128×128 bit matrix in place (the portable reference).
    pub fn transpose_128(m: &mut [u128; 128]) {
        let mut j = 64usize;
        let mut mask: u128 = u64::MAX as u128;
        while j != 0 {
            let mut k = 0;
            while k < 128 {
                for r in k..k + j {
                    let t = ((m[r] >> j) ^ m[r + j]) & mask;
                    m[r + j] ^= t;
                    m[r] ^= t << j;
                }
                k += 2 * j;
            }
            j >>= 1;
            mask ^= mask << j;
        }
    }

    /// No prefetch hint on this target.
    #[inline(always)]
    pub fn prefetch_for_write<T>(_x: &T) {}

    /// A 128-bit label (portable fallback).
    #[derive(Clone, Copy, Debug)]
    pub struct V(u128);

    impl V {
        #[inline(always)]
        pub fn load(b: &[u8; 16]) -> Self {
            V(u128::from_le_bytes(*b))
        }
        #[inline(always)]
        pub fn to_bytes(self) -> [u8; 16] {
            self.0.to_le_bytes()
        }
        #[inline(always)]
        pub fn from_u128(x: u128) -> Self {
            V(x)
        }
        #[inline(always)]
        pub fn to_u128(self) -> u128 {
            self.0
        }
        #[inline(always)]
        pub fn xor(self, o: V) -> V {
            V(self.0 ^ o.0)
        }
        #[inline(always)]
        pub fn and(self, o: V) -> V {
            V(self.0 & o.0)
        }
        #[inline(always)]
        pub fn sigma(self) -> V {
            V(super::super::hash::sigma(self.0))
        }
        #[inline(always)]
        pub fn color_mask(self) -> V {
            V((self.0 & 1).wrapping_neg())
        }
    }
}

pub use imp::{prefetch, prefetch_for_write, transpose_128, V};

impl V {
    /// A label from its `u128` value.
    #[inline(always)]
    pub fn of(x: Block) -> V {
        V::from_u128(x)
    }

    /// The AES input block of this value (little-endian bytes, as [`super::hash::to_aes`]).
    #[inline(always)]
    pub fn to_aes(self) -> AesBlock {
        GenericArray::from(self.to_bytes())
    }

    /// An AES output block (little-endian bytes, as [`super::hash::from_aes`]).
    #[inline(always)]
    pub fn from_aes(b: &AesBlock) -> V {
        V::load(b.as_ref())
    }

    /// Two table words `[low, high]` as one value.
    ///
    /// # Panics
    /// If `w` has fewer than two words (a programming error).
    #[inline(always)]
    pub fn from_words(w: &[u64]) -> V {
        let bytes: &[u8] = bytemuck::cast_slice(&w[..2]);
        match <&[u8; 16]>::try_from(bytes) {
            Ok(b) => V::load(b),
            Err(_) => unreachable!("two words are 16 bytes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gc::hash::{from_aes, sigma, to_aes};

    #[test]
    fn operations_match_u128() {
        let xs: [u128; 4] = [
            0,
            1,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3211,
            0xffff_0000_1234_5678_8000_0000_0000_0000,
        ];
        for &x in &xs {
            for &y in &xs {
                assert_eq!(V::of(x).xor(V::of(y)).to_u128(), x ^ y);
                assert_eq!(V::of(x).and(V::of(y)).to_u128(), x & y);
            }
            assert_eq!(V::of(x).sigma().to_u128(), sigma(x));
            assert_eq!(V::of(x).color_mask().to_u128(), (x & 1).wrapping_neg());
            assert_eq!(from_aes(&V::of(x).to_aes()), x);
            assert_eq!(V::from_aes(&to_aes(x)).to_u128(), x);
            let words = [x as u64, (x >> 64) as u64];
            assert_eq!(V::from_words(&words).to_u128(), x);
        }
    }
}
