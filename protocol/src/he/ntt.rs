//! Negacyclic number-theoretic transform over one RNS prime, used by the
//! server to multiply ciphertexts by plaintext polynomials in the evaluation
//! domain: each input ciphertext and each kernel is transformed once, the
//! products are accumulated lazily in `u128`, and each output is transformed
//! back once (SEAL's `multiply_plain` would redo all transforms per product).

use pibench_models::fixed::pow_mod;

/// Precomputed tables for `Z_q[X]/(X^N + 1)`.
#[derive(Debug, Clone)]
pub struct NttTable {
    /// The prime `q` (`q ≡ 1 mod 2N`, `q < 2^62`).
    pub q: u64,
    n: usize,
    /// `ψ^bitrev(i)` and its Shoup companion.
    psi: Vec<(u64, u64)>,
    /// `ψ^−bitrev(i)` and its Shoup companion.
    psi_inv: Vec<(u64, u64)>,
    /// `N^−1 mod q` and its Shoup companion.
    n_inv: (u64, u64),
}

fn shoup(w: u64, q: u64) -> (u64, u64) {
    (w, (((w as u128) << 64) / q as u128) as u64)
}

/// `a·w mod q` in `[0, 2q)` with a precomputed Shoup companion.
#[inline(always)]
fn mul_shoup(a: u64, (w, wp): (u64, u64), q: u64) -> u64 {
    let hi = ((a as u128 * wp as u128) >> 64) as u64;
    a.wrapping_mul(w).wrapping_sub(hi.wrapping_mul(q))
}

impl NttTable {
    /// Tables for prime `q` and ring degree `n`, or `None` if `q` has no
    /// primitive `2n`-th root of unity.
    pub fn new(q: u64, n: usize) -> Option<Self> {
        if n < 2 || !n.is_power_of_two() || q >= 1 << 62 || !(q - 1).is_multiple_of(2 * n as u64) {
            return None;
        }
        let log_n = n.trailing_zeros();
        let exp = (q - 1) / (2 * n as u64);
        let psi = (2..1000u64)
            .map(|g| pow_mod(g, exp, q))
            .find(|&p| pow_mod(p, n as u64, q) == q - 1)?;
        let psi_inv = pow_mod(psi, q - 2, q);
        let bitrev = |i: usize| (i.reverse_bits() >> (usize::BITS - log_n)) as u64;
        let table = |root: u64| {
            let mut powers = Vec::with_capacity(n);
            let mut p = 1u64;
            for _ in 0..n {
                powers.push(p);
                p = ((p as u128 * root as u128) % q as u128) as u64;
            }
            (0..n)
                .map(|i| shoup(powers[bitrev(i) as usize], q))
                .collect::<Vec<_>>()
        };
        Some(Self {
            q,
            n,
            psi: table(psi),
            psi_inv: table(psi_inv),
            n_inv: shoup(pow_mod(n as u64, q - 2, q), q),
        })
    }

    /// In-place forward transform (input `< q`, output `< q`, bit-reversed order).
    pub fn forward(&self, a: &mut [u64]) {
        let q = self.q;
        let two_q = 2 * q;
        let mut t = self.n;
        let mut m = 1;
        while m < self.n {
            t >>= 1;
            for i in 0..m {
                let w = self.psi[m + i];
                let j1 = 2 * i * t;
                let (lo, hi) = a[j1..j1 + 2 * t].split_at_mut(t);
                for (x, y) in lo.iter_mut().zip(hi.iter_mut()) {
                    // Values kept in [0, 2q).
                    let u = if *x >= two_q { *x - two_q } else { *x };
                    let u = if u >= q { u - q } else { u };
                    let v = mul_shoup(*y, w, q);
                    *x = u + v;
                    *y = u + two_q - v;
                }
            }
            m <<= 1;
        }
        for x in a.iter_mut() {
            *x %= q;
        }
    }

    /// In-place inverse transform (input `< q`, output `< q`, natural order).
    pub fn inverse(&self, a: &mut [u64]) {
        let q = self.q;
        let two_q = 2 * q;
        let mut t = 1;
        let mut m = self.n;
        while m > 1 {
            let h = m >> 1;
            let mut j1 = 0;
            for i in 0..h {
                let w = self.psi_inv[h + i];
                let (lo, hi) = a[j1..j1 + 2 * t].split_at_mut(t);
                for (x, y) in lo.iter_mut().zip(hi.iter_mut()) {
                    let u = *x;
                    let v = *y;
                    let s = u + v;
                    *x = if s >= two_q { s - two_q } else { s };
                    *y = mul_shoup(u + two_q - v, w, q);
                }
                j1 += 2 * t;
            }
            t <<= 1;
            m = h;
        }
        for x in a.iter_mut() {
            let v = mul_shoup(*x, self.n_inv, q);
            *x = if v >= q { v - q } else { v };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn schoolbook(a: &[u64], b: &[u64], q: u64) -> Vec<u64> {
        let n = a.len();
        let mut out = vec![0u128; n];
        for (i, &ai) in a.iter().enumerate() {
            for (j, &bj) in b.iter().enumerate() {
                let p = ai as u128 * bj as u128 % q as u128;
                let k = i + j;
                if k < n {
                    out[k] = (out[k] + p) % q as u128;
                } else {
                    out[k - n] = (out[k - n] + q as u128 - p) % q as u128;
                }
            }
        }
        out.into_iter().map(|v| v as u64).collect()
    }

    #[test]
    fn ntt_product_matches_schoolbook() {
        // 2^50-ish prime ≡ 1 mod 2^12 (found by search below).
        let n = 64;
        let q = (1u64 << 50..(1u64 << 50) + (1 << 30))
            .step_by(2 * n)
            .map(|v| v + 1)
            .find(|&v| (2..(1u64 << 13)).all(|d| v % d != 0) && pow_mod(3, v - 1, v) == 1)
            .unwrap();
        let t = NttTable::new(q, n).unwrap();
        let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(1);
        let a: Vec<u64> = (0..n).map(|_| rng.gen_range(0..q)).collect();
        let mut b: Vec<u64> = (0..n).map(|_| rng.gen_range(0..q)).collect();
        b[0] = q - 1;
        let expected = schoolbook(&a, &b, q);
        let (mut fa, mut fb) = (a.clone(), b.clone());
        t.forward(&mut fa);
        t.forward(&mut fb);
        let mut prod: Vec<u64> = fa
            .iter()
            .zip(&fb)
            .map(|(&x, &y)| (x as u128 * y as u128 % q as u128) as u64)
            .collect();
        t.inverse(&mut prod);
        assert_eq!(prod, expected);
        let mut back = a.clone();
        t.forward(&mut back);
        t.inverse(&mut back);
        assert_eq!(back, a);
    }
}
