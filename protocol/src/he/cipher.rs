//! SEAL objects the protocol needs: keys, coefficient plaintexts, checked
//! ciphertext (de)serialization and the flooding ciphertext.
//!
//! sealy 0.2 exposes no setter for ciphertext coefficients, so the flooding
//! term is built as a serialized SEAL ciphertext `(e, 0)` in SEAL 4.0's
//! uncompressed format and loaded through SEAL's own (validating) loader.
//! `(e, 0)` decrypts to `e` under any secret key: it is the noise polynomial
//! `e` and nothing else, so adding it to a result adds exactly `e` to its noise.

use rand::{CryptoRng, Rng, RngCore};
use sealy::{
    AsymmetricEncryptor, Ciphertext, Decryptor, Encryptor, FromBytes, KeyGenerator, Plaintext,
    PublicKey, SecretKey, ToBytes,
};

use super::error::{seal, HeError};
use super::params::HeContext;
use pibench_models::fixed::P;

/// SEAL's serialization magic number.
const SEAL_MAGIC: u16 = 0xA15E;
/// SEAL header size.
const SEAL_HEADER: usize = 16;

/// The client's keys.
pub struct ClientKeys {
    /// Secret key (never leaves the client).
    pub secret_key: SecretKey,
    /// Public key (sent to the server for re-randomisation).
    pub public_key: PublicKey,
    /// Encryptor under the public key.
    pub encryptor: AsymmetricEncryptor,
    /// Decryptor.
    pub decryptor: Decryptor,
}

impl std::fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientKeys")
    }
}

impl ClientKeys {
    /// Generates a fresh key pair (SEAL seeds its own CSPRNG from the OS).
    pub fn generate(ctx: &HeContext) -> Result<Self, HeError> {
        let keygen = KeyGenerator::new(&ctx.context).map_err(seal("generating keys"))?;
        let secret_key = keygen.secret_key();
        let public_key = keygen.create_public_key();
        let encryptor = Encryptor::with_public_key(&ctx.context, &public_key)
            .map_err(seal("creating the encryptor"))?;
        let decryptor =
            Decryptor::new(&ctx.context, &secret_key).map_err(seal("creating the decryptor"))?;
        Ok(Self {
            secret_key,
            public_key,
            encryptor,
            decryptor,
        })
    }

    /// The public key, serialized.
    pub fn public_key_bytes(&self) -> Result<Vec<u8>, HeError> {
        self.public_key
            .as_bytes()
            .map_err(seal("serializing the public key"))
    }

    /// Encrypts a polynomial given by its coefficients (each `< P`).
    pub fn encrypt_coeffs(&self, ctx: &HeContext, coeffs: &[u64]) -> Result<Ciphertext, HeError> {
        let pt = plaintext_from_coeffs(ctx, coeffs)?;
        self.encryptor
            .encrypt(&pt)
            .map_err(seal("encrypting a polynomial"))
    }

    /// Decrypts to the `N` coefficients of the plaintext polynomial.
    pub fn decrypt_coeffs(&self, ctx: &HeContext, ct: &Ciphertext) -> Result<Vec<u64>, HeError> {
        let pt = self
            .decryptor
            .decrypt(ct)
            .map_err(seal("decrypting a ciphertext"))?;
        Ok(plaintext_coeffs(ctx, &pt))
    }

    /// SEAL's invariant noise budget of `ct` in bits (needs the secret key).
    pub fn noise_budget(&self, ct: &Ciphertext) -> Result<u32, HeError> {
        self.decryptor
            .invariant_noise_budget(ct)
            .map_err(seal("measuring the noise budget"))
    }
}

/// The server's view: the client's public key and an encryptor for re-randomisation.
pub struct ServerKeys {
    /// Encryptor under the client's public key.
    pub encryptor: AsymmetricEncryptor,
}

impl std::fmt::Debug for ServerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerKeys")
    }
}

impl ServerKeys {
    /// Loads the client's public key, checking its size and SEAL header first.
    pub fn from_public_key_bytes(ctx: &HeContext, bytes: &[u8]) -> Result<Self, HeError> {
        let max = 2 * ctx.n() * (ctx.data_primes.len() + 1) * 8 + 256;
        let bad = |reason| HeError::BadCiphertext {
            layer: "public key".into(),
            index: 0,
            reason,
        };
        check_seal_header(bytes, max).map_err(bad)?;
        check_decompressed_size(bytes, max).map_err(bad)?;
        let pk =
            PublicKey::from_bytes(&ctx.context, bytes).map_err(|e| HeError::BadCiphertext {
                layer: "public key".into(),
                index: 0,
                reason: format!("SEAL refused it: {e}"),
            })?;
        let encryptor = Encryptor::with_public_key(&ctx.context, &pk)
            .map_err(seal("creating the encryptor"))?;
        Ok(Self { encryptor })
    }

    /// A fresh public-key encryption of zero (re-randomiser).
    pub fn encrypt_zero(&self, ctx: &HeContext) -> Result<Ciphertext, HeError> {
        let pt = plaintext_from_coeffs(ctx, &[])?;
        self.encryptor.encrypt(&pt).map_err(seal("encrypting zero"))
    }
}

/// A plaintext polynomial with the given low coefficients (the rest zero).
pub fn plaintext_from_coeffs(ctx: &HeContext, coeffs: &[u64]) -> Result<Plaintext, HeError> {
    let n = ctx.n();
    if coeffs.len() > n {
        return Err(HeError::InvalidParams {
            reason: format!("{} coefficients exceed the ring degree {n}", coeffs.len()),
        });
    }
    let mut pt = Plaintext::new().map_err(seal("allocating a plaintext"))?;
    pt.resize(n);
    for (i, &c) in coeffs.iter().enumerate() {
        if c != 0 {
            pt.set_coefficient(i, c % P);
        }
    }
    Ok(pt)
}

/// The `N` coefficients of a plaintext (missing high coefficients are zero).
pub fn plaintext_coeffs(ctx: &HeContext, pt: &Plaintext) -> Vec<u64> {
    let len = pt.len().min(ctx.n());
    let mut out = vec![0u64; ctx.n()];
    for (i, o) in out.iter_mut().enumerate().take(len) {
        *o = pt.get_coefficient(i);
    }
    out
}

/// Serializes a ciphertext (SEAL's format, zstd-compressed).
pub fn ciphertext_bytes(ct: &Ciphertext) -> Result<Vec<u8>, HeError> {
    ct.as_bytes().map_err(seal("serializing a ciphertext"))
}

/// Checks a SEAL serialization header before SEAL sees the bytes.
pub fn check_seal_header(bytes: &[u8], max_len: usize) -> Result<(), String> {
    if bytes.len() < SEAL_HEADER {
        return Err(format!(
            "{} bytes is shorter than SEAL's header",
            bytes.len()
        ));
    }
    if bytes.len() > max_len {
        return Err(format!(
            "{} bytes exceeds the {max_len}-byte bound",
            bytes.len()
        ));
    }
    let magic = u16::from_le_bytes([bytes[0], bytes[1]]);
    if magic != SEAL_MAGIC {
        return Err(format!("bad magic {magic:#06x}"));
    }
    if bytes[2] as usize != SEAL_HEADER || bytes[3] != 4 {
        return Err(format!(
            "header size {} / SEAL major version {} not supported",
            bytes[2], bytes[3]
        ));
    }
    if !matches!(bytes[5], 0 | 2) {
        return Err(format!("unknown compression mode {}", bytes[5]));
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&bytes[8..16]);
    let size = u64::from_le_bytes(size);
    if size != bytes.len() as u64 {
        return Err(format!(
            "header announces {size} bytes but {} arrived",
            bytes.len()
        ));
    }
    Ok(())
}

/// Largest zstd window a peer's SEAL object may ask for (`2^24` bytes). SEAL
/// compresses a whole object in one call, so its frames' windows never
/// exceed the object itself (at most a few MB).
const ZSTD_WINDOW_LOG_MAX: u32 = 24;

/// Checks that a SEAL object from the peer decompresses to at most
/// `max_raw` bytes, before SEAL sees it: SEAL inflates a zstd payload into a
/// buffer that grows without bound, so a few hundred kilobytes of zstd
/// (run-length blocks) would otherwise make it allocate gigabytes. The
/// check streams through the payload with a fixed 64 KiB buffer and stops at
/// the first byte past the bound.
pub fn check_decompressed_size(bytes: &[u8], max_raw: usize) -> Result<(), String> {
    if bytes.len() < SEAL_HEADER || bytes[5] != 2 {
        return Ok(());
    }
    let mut dec = zstd::stream::read::Decoder::with_buffer(&bytes[SEAL_HEADER..])
        .map_err(|e| format!("zstd: {e}"))?;
    dec.window_log_max(ZSTD_WINDOW_LOG_MAX)
        .map_err(|e| format!("zstd: {e}"))?;
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0usize;
    loop {
        let n = std::io::Read::read(&mut dec, &mut buf).map_err(|e| {
            format!("zstd payload is corrupt after {total} decompressed bytes: {e}")
        })?;
        if n == 0 {
            return Ok(());
        }
        total += n;
        if total > max_raw {
            return Err(format!(
                "zstd payload decompresses to more than the {max_raw}-byte bound"
            ));
        }
    }
}

/// Deserializes a data-level ciphertext from the peer, validating it
/// (header and size here; SEAL then checks parameters and coefficient ranges;
/// finally the level, size and NTT form are checked).
pub fn load_ciphertext(
    ctx: &HeContext,
    bytes: &[u8],
    layer: &str,
    index: usize,
) -> Result<Ciphertext, HeError> {
    load_at_level(ctx, bytes, layer, index, ctx.data_primes.len())
}

/// Like [`load_ciphertext`] for the server's replies, which arrive at the
/// reply level ([`HeContext::reply_primes`] primes).
pub fn load_reply_ciphertext(
    ctx: &HeContext,
    bytes: &[u8],
    layer: &str,
    index: usize,
) -> Result<Ciphertext, HeError> {
    load_at_level(ctx, bytes, layer, index, ctx.reply_primes)
}

fn load_at_level(
    ctx: &HeContext,
    bytes: &[u8],
    layer: &str,
    index: usize,
    primes: usize,
) -> Result<Ciphertext, HeError> {
    let bad = |reason: String| HeError::BadCiphertext {
        layer: layer.to_string(),
        index,
        reason,
    };
    check_seal_header(bytes, ctx.max_ciphertext_bytes()).map_err(bad)?;
    check_decompressed_size(bytes, ctx.max_ciphertext_bytes()).map_err(bad)?;
    let ct = Ciphertext::from_bytes(&ctx.context, bytes).map_err(|e| {
        bad(format!(
            "SEAL refused it (wrong parameters or corrupt): {e}"
        ))
    })?;
    if ct.num_polynomials() != 2 {
        return Err(bad(format!(
            "{} polynomials, expected 2",
            ct.num_polynomials()
        )));
    }
    if ct.coeff_modulus_size() as usize != primes {
        return Err(bad(format!(
            "{} RNS primes, expected {primes}",
            ct.coeff_modulus_size()
        )));
    }
    if ct.is_ntt_form() {
        return Err(bad("ciphertext is in NTT form".into()));
    }
    Ok(ct)
}

/// A ciphertext `(e, 0)` whose noise polynomial `e` has coefficients uniform
/// in `[−2^bits, 2^bits]`, built in SEAL's uncompressed format.
pub fn flooding_ciphertext<R: RngCore + CryptoRng>(
    ctx: &HeContext,
    bits: u32,
    rng: &mut R,
) -> Result<Ciphertext, HeError> {
    let c0 = flood_rns(ctx, bits, rng)?;
    let c1 = vec![0u64; c0.len()];
    ciphertext_from_rns(ctx, &c0, &c1)
}

/// The flooding polynomial `e` (coefficients uniform in `[−2^bits, 2^bits]`)
/// in RNS form: `e mod q_j` for each data prime, prime-major (`K·N` values).
pub fn flood_rns<R: RngCore + CryptoRng>(
    ctx: &HeContext,
    bits: u32,
    rng: &mut R,
) -> Result<Vec<u64>, HeError> {
    if bits + 1 > 190 {
        return Err(HeError::InvalidParams {
            reason: format!("flooding of {bits} bits is beyond the 190-bit sampler"),
        });
    }
    let n = ctx.n();
    // e = U − 2^bits with U uniform in [0, 2^(bits+1)), as three 64-bit limbs.
    let span = bits + 1;
    let mut limbs = vec![[0u64; 3]; n];
    for l in limbs.iter_mut() {
        for (j, limb) in l.iter_mut().enumerate() {
            let lo = 64 * j as u32;
            *limb = if span >= lo + 64 {
                rng.next_u64()
            } else if span > lo {
                rng.next_u64() & ((1u64 << (span - lo)) - 1)
            } else {
                0
            };
        }
    }
    let mut out = Vec::with_capacity(n * ctx.data_primes.len());
    for &q in &ctx.data_primes {
        let shift = pow2_mod(bits, q);
        let r64 = ((1u128 << 64) % q as u128) as u64;
        let r128 = mulmod(r64, r64, q);
        for l in &limbs {
            let u = (l[0] % q) as u128
                + mulmod(l[1] % q, r64, q) as u128
                + mulmod(l[2] % q, r128, q) as u128;
            let u = (u % q as u128) as u64;
            out.push(if u >= shift { u - shift } else { u + q - shift });
        }
    }
    Ok(out)
}

/// Builds a data-level ciphertext from its two polynomials in RNS form
/// (prime-major, each value `< q_j`), through SEAL's validating loader.
pub fn ciphertext_from_rns(ctx: &HeContext, c0: &[u64], c1: &[u64]) -> Result<Ciphertext, HeError> {
    let n = ctx.n();
    let k = ctx.data_primes.len();
    if c0.len() != n * k || c1.len() != n * k {
        return Err(HeError::InvalidParams {
            reason: format!(
                "RNS polynomials of {} / {} values, expected {}",
                c0.len(),
                c1.len(),
                n * k
            ),
        });
    }
    let len = 2 * n * k;
    let inner = SEAL_HEADER + 8 + 8 * len;
    let members = 32 + 1 + 8 * 5 + inner;
    let total = SEAL_HEADER + members;
    let mut out = Vec::with_capacity(total);
    push_header(&mut out, total as u64);
    for w in ctx.parms_id.iter().take(4) {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.push(0); // not NTT form
    out.extend_from_slice(&2u64.to_le_bytes());
    out.extend_from_slice(&(n as u64).to_le_bytes());
    out.extend_from_slice(&(k as u64).to_le_bytes());
    out.extend_from_slice(&1.0f64.to_le_bytes());
    out.extend_from_slice(&1u64.to_le_bytes()); // correction factor
    push_header(&mut out, inner as u64);
    out.extend_from_slice(&(len as u64).to_le_bytes());
    for v in c0.iter().chain(c1) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ciphertext::from_bytes(&ctx.context, &out)
        .map_err(seal("loading a ciphertext built from RNS data"))
}

/// The RNS data of a ciphertext at the data level: `(c0, c1)`, each
/// prime-major (`K·N` values).
///
/// sealy exposes no bulk accessor for ciphertext data, so the ciphertext is
/// serialized by SEAL (zstd) and the words are read back from SEAL 4.0's
/// format; every header field and every word's range is checked.
pub fn ciphertext_rns(ctx: &HeContext, ct: &Ciphertext) -> Result<(Vec<u64>, Vec<u64>), HeError> {
    let bytes = ciphertext_bytes(ct)?;
    rns_from_bytes(ctx, &bytes).map_err(|reason| HeError::InvalidParams {
        reason: format!("reading ciphertext words: {reason}"),
    })
}

fn rns_from_bytes(ctx: &HeContext, bytes: &[u8]) -> Result<(Vec<u64>, Vec<u64>), String> {
    check_seal_header(bytes, usize::MAX)?;
    let n = ctx.n();
    let k = ctx.data_primes.len();
    let len = 2 * n * k;
    let payload_len = 32 + 1 + 8 * 5 + SEAL_HEADER + 8 + 8 * len;
    let payload = match bytes[5] {
        0 => bytes[SEAL_HEADER..].to_vec(),
        _ => zstd::bulk::decompress(&bytes[SEAL_HEADER..], payload_len)
            .map_err(|e| format!("zstd: {e}"))?,
    };
    if payload.len() != payload_len {
        return Err(format!(
            "{} payload bytes, expected {payload_len} for a 2-polynomial data-level ciphertext",
            payload.len()
        ));
    }
    let word = |off: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&payload[off..off + 8]);
        u64::from_le_bytes(w)
    };
    if payload[32] != 0 {
        return Err("ciphertext is in NTT form".into());
    }
    let (size, degree, primes) = (word(33), word(41), word(49));
    if size != 2 || degree != n as u64 || primes != k as u64 {
        return Err(format!("size {size}, degree {degree}, {primes} primes"));
    }
    let data = 32 + 1 + 8 * 5 + SEAL_HEADER;
    if word(data) != len as u64 {
        return Err(format!("{} data words, expected {len}", word(data)));
    }
    let mut c0 = Vec::with_capacity(n * k);
    let mut c1 = Vec::with_capacity(n * k);
    for i in 0..len {
        let v = word(data + 8 + 8 * i);
        let q = ctx.data_primes[(i / n) % k];
        if v >= q {
            return Err(format!("word {i} is not reduced modulo its prime"));
        }
        if i < n * k {
            c0.push(v);
        } else {
            c1.push(v);
        }
    }
    Ok((c0, c1))
}

fn push_header(out: &mut Vec<u8>, size: u64) {
    out.extend_from_slice(&SEAL_MAGIC.to_le_bytes());
    out.push(SEAL_HEADER as u8);
    out.push(4); // SEAL 4.0
    out.push(0);
    out.push(0); // no compression
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&size.to_le_bytes());
}

fn mulmod(a: u64, b: u64, q: u64) -> u64 {
    ((a as u128 * b as u128) % q as u128) as u64
}

fn pow2_mod(e: u32, q: u64) -> u64 {
    let mut r = 1u64 % q;
    for _ in 0..e {
        r = ((r as u128 * 2) % q as u128) as u64;
    }
    r
}

/// A uniformly random polynomial mod `P` (the server's mask `s`).
pub fn random_poly<R: Rng + CryptoRng>(n: usize, rng: &mut R) -> Vec<u64> {
    (0..n).map(|_| rng.gen_range(0..P)).collect()
}
