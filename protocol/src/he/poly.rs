//! Offline material for polynomial activation elements `c2·t² + c1·t + c0`
//! with the server's private per-channel coefficients, generated with
//! batched BFV (same parameters as [`super::triples`]).
//!
//! The element's input `t` is shared: the server holds `t_s` (known
//! online), the client `t_c` (known offline). The client sends `Enc(t_c)`
//! and `Enc(t_c²)` (slot-wise). The server samples `u_s`, `e_s`, `z`
//! uniformly and returns
//!
//! * `R1 = Enc(c2·t_c − e_s)` and
//! * `R2 = Enc(c2·t_c² + (2·c2·u_s + c1)·t_c − z)`,
//!
//! re-randomised and flooded. The client decrypts `e_c` and `r2`. This is a
//! square Beaver triple `(u, u²)` with the client's half `u_c = t_c` fixed,
//! with the server's coefficients applied inside the encryption so that the
//! client never needs them. Online the server opens `d = t_s − u_s` (uniform
//! because `u_s` is) and the shares of `v = c2·t² + c1·t + c0` are
//!
//! * client: `2·d·e_c + r2`,
//! * server: `c2·(d² + 2·d·u_s + u_s²) + 2·d·e_s + z + c1·t_s + c0`,
//!
//! since `t² = d² + 2d·u_s + 2d·t_c + u_s² + 2u_s·t_c + t_c²` and
//! `c2·t_c = e_c + e_s`. ([`client_share`], [`server_share`]; checked by
//! the tests.) Each reply is the sum of two plaintext products, so the
//! flooding noise is sized for twice a triple's product noise.

use rand::{CryptoRng, Rng, RngCore};
use sealy::{BFVEncoder, BFVEvaluator, Ciphertext, Evaluator};

use super::cipher::{flooding_ciphertext, ClientKeys, ServerKeys};
use super::error::{seal, HeError};
use super::params::HeContext;
use pibench_models::fixed::{self, P};

/// The server's offline material per element.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerPolyShares {
    /// `u_s`.
    pub u: Vec<u64>,
    /// `e_s`.
    pub e: Vec<u64>,
    /// `z`.
    pub z: Vec<u64>,
}

/// The client's offline material per element.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientPolyShares {
    /// `e_c = c2·t_c − e_s`.
    pub e: Vec<u64>,
    /// `r2`.
    pub r2: Vec<u64>,
}

/// Noise bound (bits) and flooding bits of a reply (two plaintext products).
pub fn poly_flood_bits(ctx: &HeContext) -> Result<(f64, u32), HeError> {
    let n = ctx.n() as f64;
    let t = P as f64;
    let fresh = 2f64.powf(ctx.fresh_noise_bits());
    let noise = 2.0 * n * (t / 2.0) * (t + fresh) + 3.0 * fresh + t;
    let bits = noise.log2();
    let flood = bits.ceil() as u32 + ctx.params.flood_sigma + n.log2().ceil() as u32;
    let limit = ctx.decryption_noise_bits().floor() as i64;
    if flood as i64 + 2 > limit {
        return Err(HeError::InvalidParams {
            reason: format!(
                "polynomial elements: {flood}-bit flooding exceeds the {limit}-bit decryption bound; use larger N / q"
            ),
        });
    }
    Ok((bits, flood))
}

fn encoder(ctx: &HeContext) -> Result<BFVEncoder, HeError> {
    BFVEncoder::new(&ctx.context).map_err(seal("creating the batch encoder"))
}

fn padded(chunk: &[u64], n: usize) -> Vec<u64> {
    let mut v = chunk.to_vec();
    v.resize(n, 0);
    v
}

/// Client: `Enc(t_c)`, `Enc(t_c²)` per chunk of `N` elements (interleaved).
pub fn client_start(
    ctx: &HeContext,
    keys: &ClientKeys,
    t_c: &[u64],
) -> Result<Vec<Ciphertext>, HeError> {
    let enc = encoder(ctx)?;
    let n = ctx.n();
    let mut out = Vec::with_capacity(2 * t_c.len().div_ceil(n));
    for chunk in t_c.chunks(n) {
        let sq: Vec<u64> = chunk.iter().map(|&v| fixed::mul(v, v)).collect();
        for v in [padded(chunk, n), padded(&sq, n)] {
            let pt = enc.encode_u64(&v).map_err(seal("batch-encoding t"))?;
            out.push(keys.encryptor.encrypt(&pt).map_err(seal("encrypting t"))?);
        }
    }
    Ok(out)
}

/// Server: answers the client's ciphertexts for elements with coefficients
/// `c2`, `c1` (one per element); returns the replies and its shares.
pub fn server_respond<R: RngCore + CryptoRng>(
    ctx: &HeContext,
    keys: &ServerKeys,
    c2: &[u64],
    c1: &[u64],
    inputs: &[Ciphertext],
    layer: &str,
    rng: &mut R,
) -> Result<(Vec<Ciphertext>, ServerPolyShares), HeError> {
    let n = ctx.n();
    let count = c2.len();
    if c1.len() != count || inputs.len() != 2 * count.div_ceil(n) {
        return Err(HeError::Protocol {
            layer: layer.into(),
            reason: format!(
                "{} ciphertexts for {count} polynomial elements (expected {})",
                inputs.len(),
                2 * count.div_ceil(n)
            ),
        });
    }
    let (_, flood_bits) = poly_flood_bits(ctx)?;
    let enc = encoder(ctx)?;
    let ev = BFVEvaluator::new(&ctx.context).map_err(seal("creating the evaluator"))?;
    let mut shares = ServerPolyShares::default();
    let mut out = Vec::with_capacity(inputs.len());
    let finish = |ct: Ciphertext, rng: &mut R| -> Result<Ciphertext, HeError> {
        let ct = ev
            .add(&ct, &keys.encrypt_zero(ctx)?)
            .map_err(seal("polynomial: re-randomising"))?;
        let flood = flooding_ciphertext(ctx, flood_bits, rng)?;
        let ct = ev.add(&ct, &flood).map_err(seal("polynomial: flooding"))?;
        ctx.switch_to_reply_level(ct)
    };
    for (i, pair) in inputs.chunks(2).enumerate() {
        let lo = i * n;
        let hi = ((i + 1) * n).min(count);
        let m = hi - lo;
        let u: Vec<u64> = (0..m).map(|_| rng.gen_range(0..P)).collect();
        // Every slot is masked, padding slots included.
        let e: Vec<u64> = (0..n).map(|_| rng.gen_range(0..P)).collect();
        let z: Vec<u64> = (0..n).map(|_| rng.gen_range(0..P)).collect();
        let k2 = padded(&c2[lo..hi], n);
        let k1: Vec<u64> = padded(
            &(0..m)
                .map(|j| {
                    fixed::add(
                        fixed::mul(fixed::add(c2[lo + j], c2[lo + j]), u[j]),
                        c1[lo + j],
                    )
                })
                .collect::<Vec<_>>(),
            n,
        );
        let p = |v: &[u64], what: &str| {
            enc.encode_u64(v)
                .map_err(seal(format!("polynomial: batch-encoding {what}")))
        };
        let (ct_t, ct_sq) = (&pair[0], &pair[1]);
        // R1 = c2·t_c − e_s.
        let r1 = ev
            .multiply_plain(ct_t, &p(&k2, "c2")?)
            .map_err(seal("polynomial: multiplying"))?;
        let r1 = ev
            .sub_plain(&r1, &p(&e, "e")?)
            .map_err(seal("polynomial: masking"))?;
        // R2 = c2·t_c² + (2·c2·u_s + c1)·t_c − z.
        let a = ev
            .multiply_plain(ct_sq, &p(&k2, "c2")?)
            .map_err(seal("polynomial: multiplying"))?;
        let b = ev
            .multiply_plain(ct_t, &p(&k1, "2·c2·u + c1")?)
            .map_err(seal("polynomial: multiplying"))?;
        let r2 = ev.add(&a, &b).map_err(seal("polynomial: adding"))?;
        let r2 = ev
            .sub_plain(&r2, &p(&z, "z")?)
            .map_err(seal("polynomial: masking"))?;
        out.push(finish(r1, rng)?);
        out.push(finish(r2, rng)?);
        shares.u.extend_from_slice(&u);
        shares.e.extend_from_slice(&e[..m]);
        shares.z.extend_from_slice(&z[..m]);
    }
    Ok((out, shares))
}

/// Client: decrypts the replies for `count` elements.
pub fn client_finish(
    ctx: &HeContext,
    keys: &ClientKeys,
    count: usize,
    replies: &[Ciphertext],
    layer: &str,
) -> Result<ClientPolyShares, HeError> {
    let n = ctx.n();
    if replies.len() != 2 * count.div_ceil(n) {
        return Err(HeError::Protocol {
            layer: layer.into(),
            reason: format!(
                "{} reply ciphertexts for {count} polynomial elements (expected {})",
                replies.len(),
                2 * count.div_ceil(n)
            ),
        });
    }
    let enc = encoder(ctx)?;
    let mut out = ClientPolyShares::default();
    for (i, pair) in replies.chunks(2).enumerate() {
        let m = ((i + 1) * n).min(count) - i * n;
        for (k, ct) in pair.iter().enumerate() {
            let pt = keys
                .decryptor
                .decrypt(ct)
                .map_err(seal("polynomial: decrypting"))?;
            let w = enc.decode_u64(&pt).map_err(seal("polynomial: decoding"))?;
            let dst = if k == 0 { &mut out.e } else { &mut out.r2 };
            dst.extend((0..m).map(|j| w.get(j).copied().unwrap_or(0) % P));
        }
    }
    Ok(out)
}

/// The client's share of `v` for one element, given the opening `d`.
#[inline]
pub fn client_share(d: u64, e_c: u64, r2: u64) -> u64 {
    fixed::add(fixed::mul(fixed::add(d, d), e_c), r2)
}

/// The server's share of `v` for one element, given the opening `d`, its
/// input share `t_s`, its material and the element's coefficients.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn server_share(d: u64, t_s: u64, u: u64, e: u64, z: u64, c2: u64, c1: u64, c0: u64) -> u64 {
    // c2·(d + u_s)² + 2·d·e_s + z + c1·t_s + c0.
    let du = fixed::add(d, u);
    let sq = fixed::mul(c2, fixed::mul(du, du));
    let cross = fixed::mul(fixed::add(d, d), e);
    fixed::add(
        fixed::add(fixed::add(sq, cross), z),
        fixed::add(fixed::mul(c1, t_s), c0),
    )
}
