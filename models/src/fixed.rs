//! The protocol's prime field and fixed-point encoding.
//!
//! This module is the single definition of the arithmetic that the plaintext
//! fixed-point reference, the garbled circuits, the homomorphic linear layers
//! and the exporters share. Field elements are `u64` values in `[0, P)`;
//! signed values use the centred representative in `(-P/2, P/2)`.
//!
//! # Field
//! `P = 2^55 − 1507327 = 549755813655 · 2^16 + 1`, prime. Because `P ≡ 1
//! (mod 2^16)`:
//! * BFV batching works with `t = P` for ring degrees `N ≤ 32768`;
//! * for every truncation amount `f ≤ 16`, `P − 1 = 2^f · P_f` exactly, so
//!   the high parts of two additive shares are shares modulo
//!   [`truncated_modulus`]`(f)` of the truncated value (see
//!   [`truncate_shares`]). With the default `f = 12`, `P_12 = 2^43 − 368`:
//!   the garbled ReLU works on 43-bit values although the field has 55 bits.
//!
//! # Fixed point
//! Activations carry `act_frac_bits` fractional bits (`fa`, default 8).
//! Weights carry a per-layer number of fractional bits `fw_l ≤
//! max_weight_frac_bits ≤ 16`, chosen from each layer's folded weights by
//! [`crate::reference::EncodedNetwork`] (the scale plan). A value's scale
//! is a number of fractional bits; linear layers add their `fw_l`, residual
//! adds lift the lower-scale operand by an exact multiplication, power-of-two
//! average pools add `log2(window)` bits, and every truncation point
//! (activation sites, some batch norms and pools) brings the scale back by
//! at most 16 bits with round-to-nearest ([`truncate_round`]).
//!
//! # Truncation and its failure probability
//! * ReLU elements are truncated inside the garbled circuit on the shares'
//!   high parts: the result is `floor(y / 2^f) + e` with `e ∈ {−1, 0, 1, 2}`
//!   (carry of the dropped low bits); the garbler adds [`gc_round_offset`]
//!   to its share, which makes it an unbiased stochastic rounding of
//!   `x/2^f`. No wrap-around can occur: the
//!   reduction modulo `P_f` is exact, so the failure probability is 0.
//! * Identity and polynomial elements, and the other truncation points, are
//!   truncated either by the truncate-only garbled circuit (`exact`, the
//!   same guarantee) or locally (`local`, Delphi's choice): each party
//!   truncates its own share ([`local_truncate_server`],
//!   [`local_truncate_client`]). Local truncation rounds stochastically
//!   (`floor(x/2^f)` or that plus one, unbiased; an error `e ∈ {−1, 0, 1}`
//!   against the round-to-nearest reference) unless the uniform share falls
//!   within `|y| + 2^f` of the wrap point: probability at most
//!   `2^(ℓ+1) / P` per element when `|y| < 2^ℓ` and `f < ℓ`
//!   ([`local_truncation_failure_bound`]); a failure turns the element into
//!   garbage of magnitude ≈ `P / 2^f`.

use thiserror::Error;

/// The field prime: `2^55 − 1507327`.
pub const P: u64 = 36_028_797_017_456_641;
/// Bit length of [`P`].
pub const FIELD_BITS: u32 = 55;
/// `P − 1` is divisible by `2^TWO_ADICITY`.
pub const TWO_ADICITY: u32 = 16;
/// Largest value of the positive half of the field: `(P − 1) / 2`.
pub const HALF: u64 = (P - 1) / 2;

/// Errors of fixed-point encoding and parameter validation.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum FixedError {
    /// A real value is NaN or infinite.
    #[error("cannot encode non-finite value {value} ({what})")]
    NonFinite {
        /// The offending value.
        value: f64,
        /// What was being encoded.
        what: String,
    },
    /// A real value does not fit the field at the requested scale.
    #[error("value {value} at scale 2^{frac_bits} overflows the {FIELD_BITS}-bit field ({what})")]
    Overflow {
        /// The offending value.
        value: f64,
        /// Fractional bits of the encoding.
        frac_bits: u32,
        /// What was being encoded.
        what: String,
    },
    /// A fixed-point parameter set is unusable.
    #[error("invalid fixed-point parameters: {reason}")]
    InvalidParams {
        /// Why the parameters were refused.
        reason: String,
    },
}

/// `a + b mod P`.
#[inline]
pub fn add(a: u64, b: u64) -> u64 {
    debug_assert!(a < P && b < P);
    let s = a + b;
    if s >= P {
        s - P
    } else {
        s
    }
}

/// `a − b mod P`.
#[inline]
pub fn sub(a: u64, b: u64) -> u64 {
    debug_assert!(a < P && b < P);
    if a >= b {
        a - b
    } else {
        a + P - b
    }
}

/// `−a mod P`.
#[inline]
pub fn neg(a: u64) -> u64 {
    debug_assert!(a < P);
    if a == 0 {
        0
    } else {
        P - a
    }
}

/// `2^55 − P`: the field prime is a pseudo-Mersenne number.
const C: u64 = (1u64 << FIELD_BITS) - P;
const MASK55: u128 = (1u128 << FIELD_BITS) - 1;

/// `x mod P` for any `u128`, using `2^55 ≡ C (mod P)` with `C < 2^21`
/// (no division): `x = h·2^55 + l ≡ h·C + l`, twice, then at most two
/// subtractions.
#[inline]
pub fn reduce_u128(x: u128) -> u64 {
    // h < 2^73, h·C < 2^94, so y < 2^95.
    let y = (x >> FIELD_BITS) * C as u128 + (x & MASK55);
    // h' < 2^40, h'·C < 2^61, so z < 2^62.
    let z = ((y >> FIELD_BITS) * C as u128 + (y & MASK55)) as u64;
    // z < 2^62: one more fold leaves z < 2^55 + 2^28 < 2P.
    let z = (z >> FIELD_BITS) * C + (z & MASK55 as u64);
    if z >= P {
        z - P
    } else {
        z
    }
}

/// `a · b mod P`.
#[inline]
pub fn mul(a: u64, b: u64) -> u64 {
    reduce_u128(a as u128 * b as u128)
}

/// `b^e mod q` for any odd or even modulus `q > 0` (square and multiply over `u128`).
pub fn pow_mod(mut b: u64, mut e: u64, q: u64) -> u64 {
    let mut r = 1u64 % q;
    b %= q;
    while e > 0 {
        if e & 1 == 1 {
            r = ((r as u128 * b as u128) % q as u128) as u64;
        }
        b = ((b as u128 * b as u128) % q as u128) as u64;
        e >>= 1;
    }
    r
}

/// Reduces any `u64` into `[0, P)`.
#[inline]
pub fn reduce(a: u64) -> u64 {
    a % P
}

/// Maps a signed integer into the field.
#[inline]
pub fn from_i64(v: i64) -> u64 {
    let r = v.rem_euclid(P as i64);
    r as u64
}

/// Maps an `i128` into the field.
#[inline]
pub fn from_i128(v: i128) -> u64 {
    if v >= 0 {
        reduce_u128(v as u128)
    } else {
        neg(reduce_u128(v.unsigned_abs()))
    }
}

/// The centred representative of a field element, in `(−P/2, P/2)`.
#[inline]
pub fn to_i64(a: u64) -> i64 {
    debug_assert!(a < P);
    if a > HALF {
        a as i64 - P as i64
    } else {
        a as i64
    }
}

/// Floor division of the signed value by `2^f` (arithmetic shift), back in the field.
#[inline]
pub fn truncate(a: u64, f: u32) -> u64 {
    from_i64(to_i64(a) >> f)
}

/// The modulus `P_f = (P − 1) / 2^f` in which truncated shares live.
///
/// # Panics
/// Never for `f ≤ TWO_ADICITY`; larger `f` is rejected by [`FixedPoint::new`].
#[inline]
pub const fn truncated_modulus(f: u32) -> u64 {
    (P - 1) >> f
}

/// Truncates two additive shares locally, yielding shares modulo
/// [`truncated_modulus`]`(f)`.
///
/// If `a + b ≡ y (mod P)` then `(a >> f) + (b >> f) ≡ floor(y / 2^f) + e
/// (mod P_f)` with `e ∈ {−1, 0, 1, 2}`. This is the identity the garbled ReLU
/// relies on; it holds for every pair of shares, so it never fails.
#[inline]
pub fn truncate_shares(a: u64, b: u64, f: u32) -> (u64, u64) {
    (a >> f, b >> f)
}

/// Centred representative of `v` modulo `m` (`v < m`).
#[inline]
pub fn centred_mod(v: u64, m: u64) -> i64 {
    if v > (m - 1) / 2 {
        v as i64 - m as i64
    } else {
        v as i64
    }
}

/// Largest number of fractional bits a weight encoding may use: a site
/// truncates by at most this much (`P − 1 = 2^16·k`).
pub const MAX_TRUNC_BITS: u32 = TWO_ADICITY;

/// Encoded weights stay below `2^WEIGHT_MAGNITUDE_BITS` in magnitude (one bit
/// of margin under the `2^16` bound of the HE noise analysis).
pub const WEIGHT_MAGNITUDE_BITS: u32 = 15;

/// Fixed-point parameters: how reals map to field elements.
///
/// Old model files stored `weight_frac_bits` (one scale for all layers); it
/// now reads as the cap `max_weight_frac_bits` of the per-layer scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FixedPoint {
    /// Fractional bits of activations (`fa`).
    pub act_frac_bits: u32,
    /// Cap on the per-layer weight fractional bits `fw_l` (at most 16).
    #[serde(alias = "weight_frac_bits")]
    pub max_weight_frac_bits: u32,
}

impl Default for FixedPoint {
    fn default() -> Self {
        Self {
            act_frac_bits: 8,
            max_weight_frac_bits: MAX_TRUNC_BITS,
        }
    }
}

impl FixedPoint {
    /// Validated parameters.
    pub fn new(act_frac_bits: u32, max_weight_frac_bits: u32) -> Result<Self, FixedError> {
        let fp = Self {
            act_frac_bits,
            max_weight_frac_bits,
        };
        fp.validate()?;
        Ok(fp)
    }

    /// Checks that the weight scales fit the field structure and that
    /// products leave head-room in the field.
    pub fn validate(&self) -> Result<(), FixedError> {
        if self.max_weight_frac_bits == 0 || self.max_weight_frac_bits > MAX_TRUNC_BITS {
            return Err(FixedError::InvalidParams {
                reason: format!(
                    "max_weight_frac_bits = {} must be in 1..={MAX_TRUNC_BITS} (P − 1 = 2^{TWO_ADICITY}·k)",
                    self.max_weight_frac_bits
                ),
            });
        }
        if self.act_frac_bits == 0 || 2 * self.act_frac_bits + MAX_TRUNC_BITS + 8 >= FIELD_BITS {
            return Err(FixedError::InvalidParams {
                reason: format!(
                    "act_frac_bits = {} leaves no head-room: 2·fa + 16 + 8 must be < {FIELD_BITS} \
                     (a polynomial element's t² carries 2·fa bits before its coefficient)",
                    self.act_frac_bits
                ),
            });
        }
        Ok(())
    }

    /// Encodes an activation (input pixel) at scale `2^fa`.
    pub fn encode_act(&self, x: f64, what: &str) -> Result<u64, FixedError> {
        encode(x, self.act_frac_bits, what)
    }

    /// Decodes an activation-scale element.
    pub fn decode_act(&self, v: u64) -> f64 {
        decode(v, self.act_frac_bits)
    }
}

/// Floor division by `2^f` after adding `2^(f−1)`: the signed value divided
/// by `2^f` and rounded to nearest (halves up), back in the field. `f = 0`
/// is the identity.
#[inline]
pub fn truncate_round(a: u64, f: u32) -> u64 {
    if f == 0 {
        return a;
    }
    from_i64((to_i64(a) + (1i64 << (f - 1))) >> f)
}

/// The public constant a party adds to its share before truncating by `f`
/// so that the truncation rounds to nearest (`2^(f−1)`, 0 for `f = 0`).
#[inline]
pub fn round_offset(f: u32) -> u64 {
    if f == 0 {
        0
    } else {
        1u64 << (f - 1)
    }
}

/// The public constant the garbler adds to its share before a *garbled*
/// truncation by `f`: `2^f` (twice [`round_offset`]); 0 for `f = 0`.
///
/// The circuits work on the shares' high parts ([`truncate_shares`]), whose
/// sum modulo `P_f` is `floor(y/2^f) − c` with a carry `c` that is 1 with
/// probability `≈ 1 − φ` (`φ` the fractional part of `y/2^f`): the mean is
/// `y/2^f − 1`. With `y = x + 2^f` the result is `x/2^f` on average —
/// stochastic rounding, `floor(x/2^f)` or one more, biased by at most
/// `2^(1−f)` of a unit — instead of the `−½`-unit bias a rounding offset
/// of `2^(f−1)` leaves. Against the
/// round-to-nearest reference the error is in `{−1, …, 3}`.
#[inline]
pub fn gc_round_offset(f: u32) -> u64 {
    if f == 0 {
        0
    } else {
        1u64 << f
    }
}

/// Local truncation, server side: `floor((a + 2^(f−1)) / 2^f)` of the
/// server's share `a ∈ [0, P)` (the caller has already added the rounding
/// offset [`round_offset`], so `a + b ≡ y = x + 2^(f−1)`).
///
/// With `a` uniform and `a + b ≡ y (mod P)`, the integers `a + (b − P)`
/// equal `y` except with probability `≤ (|y| + 2^f) / P`, and then the two
/// floors add up to `floor((y + 2^(f−1))/2^f) − c` where the carry
/// `c ∈ {0, 1}` is 1 with probability `1 − φ − 2^−f`, `φ` the fractional
/// part of `(y + 2^(f−1))/2^f`. The second `2^(f−1)` cancels that carry on
/// average: the result is `floor(x/2^f)` or `floor(x/2^f) + 1`, the latter
/// with probability `frac(x/2^f) + 2^−f` — stochastic rounding of `x/2^f`,
/// unbiased up to `2^−f` of a unit. (Without it, i.e. a plain floor on both
/// sides as in SecureML/Delphi, the mean error is `−½` unit per element,
/// which adds up over the hundreds of thousands of linearized elements of
/// a pruned network; measured on a trained SNL ResNet-18 it moved the
/// logits by 0.46 against a largest logit of 5.) Relative to the reference
/// `truncate_round(x) = floor(y/2^f)` the error is in `{−1, 0, 1}`.
#[inline]
pub fn local_truncate_server(a: u64, f: u32) -> u64 {
    add(a, round_offset(f)) >> f
}

/// Local truncation, client side: `floor((b − P) / 2^f) mod P` of the
/// client's share `b ∈ [0, P)` (see [`local_truncate_server`]).
#[inline]
pub fn local_truncate_client(b: u64, f: u32) -> u64 {
    // floor((b − P)/2^f) = −ceil((P − b)/2^f), a negative integer ≥ −P/2^f.
    let m = (P - b).div_ceil(1u64 << f);
    neg(m % P)
}

/// Per-element failure bound `2^(ℓ+1) / P` of local truncation when the
/// value before truncation satisfies `|y| < 2^ℓ`.
pub fn local_truncation_failure_bound(magnitude_bits: u32) -> f64 {
    2f64.powi(magnitude_bits as i32 + 1) / P as f64
}

/// Encodes `x` at scale `2^frac_bits`, rounding to nearest.
pub fn encode(x: f64, frac_bits: u32, what: &str) -> Result<u64, FixedError> {
    if !x.is_finite() {
        return Err(FixedError::NonFinite {
            value: x,
            what: what.to_string(),
        });
    }
    let scaled = (x * (1u64 << frac_bits) as f64).round();
    if scaled.abs() >= HALF as f64 {
        return Err(FixedError::Overflow {
            value: x,
            frac_bits,
            what: what.to_string(),
        });
    }
    Ok(from_i64(scaled as i64))
}

/// Decodes a field element at scale `2^frac_bits` to a real.
pub fn decode(v: u64, frac_bits: u32) -> f64 {
    to_i64(v) as f64 / (1u64 << frac_bits) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn is_prime(n: u64) -> bool {
        // Deterministic Miller–Rabin for 64-bit integers.
        let mut d = n - 1;
        let mut s = 0;
        while d.is_multiple_of(2) {
            d /= 2;
            s += 1;
        }
        let pow = |b: u64, e: u64| pow_mod(b, e, n);
        'witness: for a in [2u64, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37] {
            let mut x = pow(a, d);
            if x == 1 || x == n - 1 {
                continue;
            }
            for _ in 0..s - 1 {
                x = ((x as u128 * x as u128) % n as u128) as u64;
                if x == n - 1 {
                    continue 'witness;
                }
            }
            return false;
        }
        true
    }

    #[test]
    fn field_constants_are_consistent() {
        assert!(is_prime(P));
        assert_eq!(64 - P.leading_zeros(), FIELD_BITS);
        assert_eq!((P - 1) % (1 << TWO_ADICITY), 0);
        assert_eq!(truncated_modulus(12), (1 << 43) - 368);
        assert_eq!(P, (1u64 << 55) - 1_507_327);
    }

    #[test]
    fn fast_reduction_equals_division() {
        let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(3);
        let edges = [
            0u128,
            1,
            P as u128 - 1,
            P as u128,
            2 * P as u128,
            u128::MAX,
            u128::MAX - 1,
            (P as u128) * (P as u128),
            ((P as u128) << 64) - 1,
            1u128 << 127,
        ];
        for x in edges
            .into_iter()
            .chain((0..200_000).map(|_| rng.gen::<u128>() >> rng.gen_range(0..128)))
        {
            assert_eq!(reduce_u128(x) as u128, x % P as u128, "x = {x}");
        }
        for v in [i128::MIN + 1, -1, -(P as i128), i128::MAX, 0] {
            assert_eq!(from_i128(v), v.rem_euclid(P as i128) as u64);
        }
    }

    #[test]
    fn signed_round_trip_on_edges() {
        for v in [0i64, 1, -1, HALF as i64, -(HALF as i64), 12345, -98765] {
            assert_eq!(to_i64(from_i64(v)), v);
        }
        assert_eq!(neg(0), 0);
        assert_eq!(add(P - 1, 1), 0);
        assert_eq!(sub(0, 1), P - 1);
        assert_eq!(mul(P - 1, P - 1), 1);
    }

    #[test]
    fn truncate_is_signed_floor() {
        assert_eq!(to_i64(truncate(from_i64(-1), 12)), -1);
        assert_eq!(to_i64(truncate(from_i64(4096), 12)), 1);
        assert_eq!(to_i64(truncate(from_i64(-4097), 12)), -2);
        assert_eq!(to_i64(truncate(from_i64(4095), 12)), 0);
    }

    #[test]
    fn share_truncation_error_is_bounded() {
        let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(7);
        for f in [1u32, 8, 12, 16] {
            let pf = truncated_modulus(f);
            for i in 0..20_000 {
                let y: i64 = match i {
                    0 => 0,
                    1 => 1,
                    2 => -1,
                    3 => (1 << 40) - 1,
                    4 => -(1 << 40),
                    _ => rng.gen_range(-(1i64 << 40)..(1i64 << 40)),
                };
                let a = rng.gen_range(0..P);
                let b = sub(from_i64(y), a);
                let (ah, bh) = truncate_shares(a, b, f);
                let t = centred_mod((ah + bh) % pf, pf);
                let e = t - (y >> f);
                assert!((-1..=2).contains(&e), "f={f} y={y} a={a} e={e}");
            }
        }
    }

    #[test]
    fn rounding_truncation() {
        for (y, f, want) in [
            (5i64, 1u32, 3i64),
            (-5, 1, -2),
            (4095, 12, 1),
            (2047, 12, 0),
            (2048, 12, 1),
            (-2048, 12, 0),
            (-2049, 12, -1),
            (7, 0, 7),
        ] {
            assert_eq!(to_i64(truncate_round(from_i64(y), f)), want, "y={y} f={f}");
        }
    }

    #[test]
    fn local_truncation_is_unbiased() {
        // The mean of (result − x/2^f) over random shares is 2^−f (not −½ as
        // with a plain floor on both sides), for values with every fraction.
        let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(9);
        for f in [4u32, 8, 12] {
            let n = 200_000;
            let mut sum = 0.0;
            for _ in 0..n {
                let x: i64 = rng.gen_range(-(1i64 << 30)..(1i64 << 30));
                let y = from_i64(x + (1i64 << (f - 1))); // round_offset added by the caller
                let a = rng.gen_range(0..P);
                let b = sub(y, a);
                let t = add(local_truncate_server(a, f), local_truncate_client(b, f));
                sum += to_i64(t) as f64 - x as f64 / (1u64 << f) as f64;
            }
            let mean = sum / n as f64;
            // Standard error ≤ 0.5/sqrt(n) ≈ 0.0011; 10 standard errors.
            assert!(
                (mean - 2f64.powi(-(f as i32))).abs() < 0.012,
                "f={f} mean={mean}"
            );
        }
    }

    #[test]
    fn garbled_truncation_input_is_unbiased() {
        // What the garbled circuits compute from the shares' high parts,
        // with the garbler's offset gc_round_offset(f): mean error 2^(1−f)
        // against x/2^f, every value in floor(x/2^f) + {0, 1} but for the
        // rare wrap cases (e ∈ {−1, …, 2} of truncate_shares).
        let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(10);
        for f in [4u32, 8, 12, 16] {
            let pf = truncated_modulus(f);
            let n = 200_000;
            let mut sum = 0.0;
            for _ in 0..n {
                let x: i64 = rng.gen_range(-(1i64 << 30)..(1i64 << 30));
                let a = rng.gen_range(0..P);
                let b = sub(from_i64(x), a);
                let (ah, bh) = truncate_shares(add(a, gc_round_offset(f)), b, f);
                let v = centred_mod((ah + bh) % pf, pf);
                assert!((-1..=3).contains(&(v - (x >> f))), "f={f} x={x} v={v}");
                sum += v as f64 - x as f64 / (1u64 << f) as f64;
            }
            let mean = sum / n as f64;
            // 2^(1−f): the shares' sum wraps (a + b = y + P, P = 1 + 2^f·P_f)
            // almost always, which adds one unit of 2^−f to the carry's.
            assert!(
                (mean - 2f64.powi(1 - f as i32)).abs() < 0.012,
                "f={f} mean={mean}"
            );
        }
    }

    #[test]
    fn local_truncation_rounds_stochastically() {
        let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(8);
        for f in [1u32, 8, 12, 16, 20, 24] {
            for i in 0..20_000 {
                let y: i64 = match i {
                    0 => 0,
                    1 => 1,
                    2 => -1,
                    _ => rng.gen_range(-(1i64 << 36)..(1i64 << 36)),
                };
                let a = match i {
                    3 => 0,
                    4 => P - 1,
                    _ => rng.gen_range(0..P),
                };
                let b = sub(from_i64(y), a);
                let t = add(local_truncate_server(a, f), local_truncate_client(b, f));
                let e = to_i64(t) - (y >> f);
                // Failure needs a within |y| + 2^f of the wrap point: probability ≤ 2^-18 here.
                let reach = y.unsigned_abs() + (1u64 << f);
                let near_wrap = a < reach || a > P - reach;
                if !near_wrap {
                    assert!((-1..=1).contains(&e), "f={f} y={y} a={a} e={e}");
                    // Stochastic rounding of (y − 2^(f−1)) / 2^f.
                    let x = y - (1i64 << (f - 1));
                    let v = to_i64(t);
                    assert!(v == x >> f || v == (x >> f) + 1, "f={f} y={y} a={a} v={v}");
                }
            }
        }
        assert!(local_truncation_failure_bound(28) < 2f64.powi(-25));
    }

    #[test]
    fn encoding_rejects_bad_values() {
        let fp = FixedPoint::default();
        assert!(matches!(
            fp.encode_act(f64::NAN, "x"),
            Err(FixedError::NonFinite { .. })
        ));
        assert!(matches!(
            fp.encode_act(1e30, "x"),
            Err(FixedError::Overflow { .. })
        ));
        assert_eq!(fp.decode_act(fp.encode_act(-1.5, "x").unwrap()), -1.5);
        assert!(FixedPoint::new(8, 17).is_err());
        assert!(FixedPoint::new(20, 12).is_err());
        // Old headers name the single weight scale `weight_frac_bits`.
        let old: FixedPoint =
            serde_json::from_str(r#"{"act_frac_bits":8,"weight_frac_bits":12}"#).unwrap();
        assert_eq!(old, FixedPoint::new(8, 12).unwrap());
    }
}
