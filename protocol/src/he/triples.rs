//! Beaver square triples `(u, u²)` for `x²` activations, generated with
//! batched BFV.
//!
//! The client holds `u_c`, the server `u_s` (`u = u_c + u_s`). The client
//! sends `Enc(u_c)` (slot-wise); the server returns
//! `Enc(2·u_c·u_s − z)`, re-randomised and flooded; the client decrypts
//! `w`. Shares of `u²`: client `u_c² + w`, server `u_s² + z`.
//!
//! A batched plaintext has coefficients uniform modulo `t`, so one plaintext
//! multiplication adds about `log N + 2·log t` bits of noise; with 40-bit
//! flooding this needs more room than `N = 8192` offers, so triples use
//! [`HeParams::triples`](super::params::HeParams::triples): `N = 16384`,
//! 240 data bits.

use rand::{CryptoRng, Rng, RngCore};
use sealy::{BFVEncoder, BFVEvaluator, Ciphertext, Evaluator};

use super::cipher::{flooding_ciphertext, ClientKeys, ServerKeys};
use super::error::{seal, HeError};
use super::params::HeContext;
use pibench_models::fixed::{self, P};

/// One party's shares of a batch of square triples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SquareTripleShares {
    /// Share of `u`.
    pub u: Vec<u64>,
    /// Share of `u²`.
    pub u_squared: Vec<u64>,
}

/// Noise bound (bits) and flooding bits of the triple product for a context.
pub fn triple_flood_bits(ctx: &HeContext) -> Result<(f64, u32), HeError> {
    let n = ctx.n() as f64;
    let t = P as f64;
    let fresh = 2f64.powf(ctx.fresh_noise_bits());
    let noise = n * (t / 2.0) * (t + fresh) + 2.0 * fresh + t;
    let bits = noise.log2();
    let flood = bits.ceil() as u32 + ctx.params.flood_sigma + n.log2().ceil() as u32;
    let limit = ctx.decryption_noise_bits().floor() as i64;
    if flood as i64 + 2 > limit {
        return Err(HeError::InvalidParams {
            reason: format!(
                "triples: {flood}-bit flooding exceeds the {limit}-bit decryption bound; use larger N / q"
            ),
        });
    }
    Ok((bits, flood))
}

fn encoder(ctx: &HeContext) -> Result<BFVEncoder, HeError> {
    BFVEncoder::new(&ctx.context).map_err(seal("creating the batch encoder"))
}

/// Client: samples `u_c` for `count` triples and encrypts it.
pub fn client_start<R: RngCore + CryptoRng>(
    ctx: &HeContext,
    keys: &ClientKeys,
    count: usize,
    rng: &mut R,
) -> Result<(Vec<u64>, Vec<Ciphertext>), HeError> {
    let enc = encoder(ctx)?;
    let u: Vec<u64> = (0..count).map(|_| rng.gen_range(0..P)).collect();
    let cts = u
        .chunks(ctx.n())
        .map(|chunk| {
            let pt = enc.encode_u64(chunk).map_err(seal("batch-encoding u"))?;
            keys.encryptor.encrypt(&pt).map_err(seal("encrypting u"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((u, cts))
}

/// Server: answers the client's `Enc(u_c)`; returns the reply and its shares.
pub fn server_respond<R: RngCore + CryptoRng>(
    ctx: &HeContext,
    keys: &ServerKeys,
    count: usize,
    inputs: &[Ciphertext],
    rng: &mut R,
) -> Result<(Vec<Ciphertext>, SquareTripleShares), HeError> {
    let n = ctx.n();
    if inputs.len() != count.div_ceil(n) {
        return Err(HeError::Protocol {
            layer: "triples".into(),
            reason: format!("{} ciphertexts for {count} triples", inputs.len()),
        });
    }
    let (_, flood_bits) = triple_flood_bits(ctx)?;
    let enc = encoder(ctx)?;
    let ev = BFVEvaluator::new(&ctx.context).map_err(seal("creating the evaluator"))?;
    let u: Vec<u64> = (0..count).map(|_| rng.gen_range(0..P)).collect();
    let mut z = Vec::with_capacity(count);
    let mut out = Vec::with_capacity(inputs.len());
    for (i, ct) in inputs.iter().enumerate() {
        let chunk = &u[i * n..((i + 1) * n).min(count)];
        let mut two_u: Vec<u64> = chunk.iter().map(|&v| fixed::add(v, v)).collect();
        two_u.resize(n, 0);
        // Every slot is masked, padding slots included.
        let zc: Vec<u64> = (0..n).map(|_| rng.gen_range(0..P)).collect();
        let k = enc.encode_u64(&two_u).map_err(seal("batch-encoding 2u"))?;
        let zp = enc.encode_u64(&zc).map_err(seal("batch-encoding z"))?;
        let prod = ev
            .multiply_plain(ct, &k)
            .map_err(seal("triples: multiplying"))?;
        let prod = ev.sub_plain(&prod, &zp).map_err(seal("triples: masking"))?;
        let prod = ev
            .add(&prod, &keys.encrypt_zero(ctx)?)
            .map_err(seal("triples: re-randomising"))?;
        let flood = flooding_ciphertext(ctx, flood_bits, rng)?;
        let flooded = ev.add(&prod, &flood).map_err(seal("triples: flooding"))?;
        out.push(ctx.switch_to_reply_level(flooded)?);
        z.extend_from_slice(&zc[..chunk.len()]);
    }
    let u_squared = u
        .iter()
        .zip(&z)
        .map(|(&a, &zz)| fixed::add(fixed::mul(a, a), zz))
        .collect();
    Ok((out, SquareTripleShares { u, u_squared }))
}

/// Client: decrypts the reply into its shares.
pub fn client_finish(
    ctx: &HeContext,
    keys: &ClientKeys,
    u: Vec<u64>,
    replies: &[Ciphertext],
) -> Result<SquareTripleShares, HeError> {
    let n = ctx.n();
    if replies.len() != u.len().div_ceil(n) {
        return Err(HeError::Protocol {
            layer: "triples".into(),
            reason: format!(
                "{} reply ciphertexts for {} triples",
                replies.len(),
                u.len()
            ),
        });
    }
    let enc = encoder(ctx)?;
    let mut u_squared = Vec::with_capacity(u.len());
    for (i, ct) in replies.iter().enumerate() {
        let pt = keys
            .decryptor
            .decrypt(ct)
            .map_err(seal("triples: decrypting"))?;
        let w = enc.decode_u64(&pt).map_err(seal("triples: decoding"))?;
        let chunk = &u[i * n..((i + 1) * n).min(u.len())];
        for (j, &a) in chunk.iter().enumerate() {
            let wj = w.get(j).copied().unwrap_or(0) % P;
            u_squared.push(fixed::add(fixed::mul(a, a), wj));
        }
    }
    Ok(SquareTripleShares { u, u_squared })
}
