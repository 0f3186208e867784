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
//! Activations carry `act_frac_bits` fractional bits (default 8), weights
//! `weight_frac_bits` (default 12). A linear layer multiplies a scale-`2^fa`
//! input by scale-`2^fw` weights; its output (bias included) has scale
//! `2^(fa+fw)`. Every activation site first truncates by `fw` (floor of the
//! signed value), bringing the value back to scale `2^fa`, then applies its
//! per-element function. Residual shortcuts are lifted to scale `2^(fa+fw)`
//! by an exact multiplication with `2^fw` before the add.
//!
//! # Truncation and its failure probability
//! * ReLU elements are truncated inside the garbled circuit on the shares'
//!   high parts: the result is `floor(y / 2^f) + e` with `e ∈ {−1, 0, 1, 2}`
//!   (carry of the dropped low bits). No wrap-around can occur: the
//!   reduction modulo `P_f` is exact, so the failure probability is 0.
//! * Identity and polynomial elements use statistical masking: the client's
//!   mask is uniform in `[0, 2^(ℓ+σ))` instead of in `[0, P)`, where
//!   `|y| < 2^ℓ`. The masked value never wraps modulo `P` (failure
//!   probability 0 as long as `|y| < 2^ℓ`, which the reference checks), and
//!   it hides `y` up to statistical distance `2^-σ` per element, with
//!   `σ = 53 − ℓ` ([`FixedPoint::identity_stat_security_bits`]).
//!
//! Local truncation of uniformly random shares (Delphi) instead fails with
//! probability `≈ |y| / P` per element; that is what this design avoids.

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

/// `a · b mod P`.
#[inline]
pub fn mul(a: u64, b: u64) -> u64 {
    ((a as u128 * b as u128) % P as u128) as u64
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
    v.rem_euclid(P as i128) as u64
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

/// Fixed-point parameters: how reals map to field elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FixedPoint {
    /// Fractional bits of activations (`fa`).
    pub act_frac_bits: u32,
    /// Fractional bits of weights, which is also the truncation amount at each site (`fw`).
    pub weight_frac_bits: u32,
}

impl Default for FixedPoint {
    fn default() -> Self {
        Self {
            act_frac_bits: 8,
            weight_frac_bits: 12,
        }
    }
}

impl FixedPoint {
    /// Validated parameters.
    pub fn new(act_frac_bits: u32, weight_frac_bits: u32) -> Result<Self, FixedError> {
        let fp = Self {
            act_frac_bits,
            weight_frac_bits,
        };
        fp.validate()?;
        Ok(fp)
    }

    /// Checks that the truncation amount divides the field structure and that
    /// products leave head-room in the field.
    pub fn validate(&self) -> Result<(), FixedError> {
        if self.weight_frac_bits == 0 || self.weight_frac_bits > TWO_ADICITY {
            return Err(FixedError::InvalidParams {
                reason: format!(
                    "weight_frac_bits = {} must be in 1..={TWO_ADICITY} (P − 1 = 2^{TWO_ADICITY}·k)",
                    self.weight_frac_bits
                ),
            });
        }
        if self.act_frac_bits == 0 || self.act_frac_bits + self.weight_frac_bits + 8 >= FIELD_BITS {
            return Err(FixedError::InvalidParams {
                reason: format!(
                    "act_frac_bits = {} leaves no head-room: fa + fw + 8 must be < {FIELD_BITS}",
                    self.act_frac_bits
                ),
            });
        }
        Ok(())
    }

    /// Scale of a linear layer's output, `2^(fa+fw)`, as a shift.
    pub fn product_frac_bits(&self) -> u32 {
        self.act_frac_bits + self.weight_frac_bits
    }

    /// Encodes an activation (input pixel) at scale `2^fa`.
    pub fn encode_act(&self, x: f64, what: &str) -> Result<u64, FixedError> {
        encode(x, self.act_frac_bits, what)
    }

    /// Encodes a weight at scale `2^fw`.
    pub fn encode_weight(&self, w: f64, what: &str) -> Result<u64, FixedError> {
        encode(w, self.weight_frac_bits, what)
    }

    /// Encodes a bias at scale `2^(fa+fw)`.
    pub fn encode_bias(&self, b: f64, what: &str) -> Result<u64, FixedError> {
        encode(b, self.product_frac_bits(), what)
    }

    /// Decodes an activation-scale element.
    pub fn decode_act(&self, v: u64) -> f64 {
        decode(v, self.act_frac_bits)
    }

    /// Decodes a linear-layer output (scale `2^(fa+fw)`), e.g. the logits.
    pub fn decode_product(&self, v: u64) -> f64 {
        decode(v, self.product_frac_bits())
    }

    /// Statistical security `σ` of identity/polynomial elements whose
    /// pre-truncation magnitude is below `2^magnitude_bits` (scale
    /// `2^(fa+fw)` included): the mask spans `2^(ℓ+σ)` with `ℓ + σ + 2 =
    /// FIELD_BITS`, i.e. `σ = 53 − ℓ`.
    pub fn identity_stat_security_bits(&self, magnitude_bits: u32) -> i64 {
        FIELD_BITS as i64 - 2 - magnitude_bits as i64
    }
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
        while d % 2 == 0 {
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
        assert!(FixedPoint::new(40, 12).is_err());
    }
}
