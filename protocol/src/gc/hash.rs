//! Fixed-key AES primitives: the tweakable circular-correlation-robust hash
//! of Guo–Katz–Wang–Yu (S&P 2020) and an AES-CTR pseudo-random generator.
//!
//! The hash is `H(x, i) = π(σ(x) ⊕ i) ⊕ σ(x)`, where `π` is AES-128 under a
//! fixed public key and `σ(x_L ‖ x_R) = (x_L ⊕ x_R) ‖ x_L` is a linear
//! orthomorphism (`x_L` the high 64 bits). All hashing is batched: callers
//! fill a buffer of inputs and tweaks and hash it with one
//! `encrypt_blocks` call, so the AES-NI backend keeps 8 blocks in flight.

use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockEncrypt, KeyInit};
use aes::Aes128;

use super::accel::{AesNi, RoundKeys, Vaes};
use super::simd::V;
use super::GcError;

/// A 128-bit wire label or hash output.
pub type Block = u128;

/// The fixed public AES key of `π` (the first 32 hex digits of π's fraction).
pub const FIXED_KEY: [u8; 16] = [
    0x24, 0x3f, 0x6a, 0x88, 0x85, 0xa3, 0x08, 0xd3, 0x13, 0x19, 0x8a, 0x2e, 0x03, 0x70, 0x73, 0x44,
];

/// The linear orthomorphism `σ(x_L ‖ x_R) = (x_L ⊕ x_R) ‖ x_L`.
#[inline(always)]
pub fn sigma(x: Block) -> Block {
    let hi = (x >> 64) as u64;
    let lo = x as u64;
    (((hi ^ lo) as u128) << 64) | hi as u128
}

/// The AES crate's block type (16 bytes), what [`FixedKeyHash::permute_blocks`] works on.
pub type AesBlock = aes::Block;

/// A block as AES input (little-endian bytes of the `u128`).
#[inline(always)]
pub fn to_aes(x: Block) -> AesBlock {
    GenericArray::from(x.to_le_bytes())
}

/// An AES output block as a `u128` (little-endian).
#[inline(always)]
pub fn from_aes(b: &AesBlock) -> Block {
    let mut a = [0u8; 16];
    a.copy_from_slice(b);
    u128::from_le_bytes(a)
}

/// Which implementation fixed-key AES and the AND-gate kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// The `aes` crate (AES-NI detected at run time inside it) and SSE2 /
    /// `u128` gate code: every target.
    Portable,
    /// Hand-fused AES-NI gate kernels (`gc/kernels.rs`), x86-64 with AES-NI and SSE4.1.
    AesNi,
    /// The AES-NI kernels, with the half-gates AND gate, `π` and counter
    /// mode on 512-bit VAES registers (`gc/kernels512.rs`, four blocks per
    /// instruction): x86-64 with VAES and AVX-512F/BW.
    Vaes,
}

impl Kernel {
    /// The fastest kernel this CPU supports.
    pub fn best() -> Self {
        if Vaes::detect().is_some() {
            Kernel::Vaes
        } else if AesNi::detect().is_some() {
            Kernel::AesNi
        } else {
            Kernel::Portable
        }
    }

    /// Every kernel this CPU supports (the portable one first).
    pub fn available() -> Vec<Self> {
        let mut k = vec![Kernel::Portable];
        if AesNi::detect().is_some() {
            k.push(Kernel::AesNi);
        }
        if Vaes::detect().is_some() {
            k.push(Kernel::Vaes);
        }
        k
    }

    /// Name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            Kernel::AesNi => "aes-ni",
            Kernel::Vaes => "vaes",
        }
    }
}

/// Fixed-key AES permutation `π` and the tweakable hash built on it.
#[derive(Clone)]
pub struct FixedKeyHash {
    cipher: Aes128,
    accel: Option<(AesNi, RoundKeys)>,
    /// Set with `accel` where the CPU has VAES (the [`Kernel::Vaes`] kernel).
    vaes: Option<Vaes>,
    buf: Vec<aes::Block>,
}

impl std::fmt::Debug for FixedKeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FixedKeyHash")
    }
}

impl Default for FixedKeyHash {
    fn default() -> Self {
        Self::new()
    }
}

impl FixedKeyHash {
    /// The hash under [`FIXED_KEY`], with the fastest kernel this CPU supports.
    pub fn new() -> Self {
        let accel = AesNi::detect().map(|k| (k, k.expand_key(u128::from_le_bytes(FIXED_KEY))));
        let vaes = accel.and(Vaes::detect());
        Self {
            cipher: Aes128::new(&GenericArray::from(FIXED_KEY)),
            accel,
            vaes,
            buf: Vec::new(),
        }
    }

    /// The hash with a chosen kernel (an error if this CPU lacks it).
    pub fn with_kernel(kernel: Kernel) -> Result<Self, GcError> {
        let mut h = Self::new();
        match kernel {
            Kernel::Portable => {
                h.accel = None;
                h.vaes = None;
            }
            Kernel::AesNi => {
                if h.accel.is_none() {
                    return Err(GcError::Parameters {
                        reason: "the aes-ni kernel needs a CPU with AES-NI and SSE4.1".into(),
                    });
                }
                h.vaes = None;
            }
            Kernel::Vaes => {
                if h.vaes.is_none() {
                    return Err(GcError::Parameters {
                        reason: "the vaes kernel needs a CPU with VAES, AVX-512F and AVX-512BW"
                            .into(),
                    });
                }
            }
        }
        Ok(h)
    }

    /// The kernel in use.
    pub fn kernel(&self) -> Kernel {
        if self.vaes.is_some() {
            Kernel::Vaes
        } else if self.accel.is_some() {
            Kernel::AesNi
        } else {
            Kernel::Portable
        }
    }

    /// The AES-NI token and the fixed key's round keys, when that kernel is in use.
    #[inline(always)]
    pub(crate) fn accel(&self) -> Option<(AesNi, &RoundKeys)> {
        self.accel.as_ref().map(|(k, keys)| (*k, keys))
    }

    /// The VAES token and the fixed key's round keys, when that kernel is in use.
    #[inline(always)]
    pub(crate) fn vaes(&self) -> Option<(Vaes, &RoundKeys)> {
        match (self.vaes, &self.accel) {
            (Some(v), Some((_, keys))) => Some((v, keys)),
            _ => None,
        }
    }

    /// `π(x)`: one fixed-key AES encryption (little-endian byte order of the `u128`).
    pub fn permute(&self, x: Block) -> Block {
        let mut b = to_aes(x);
        self.cipher.encrypt_block(&mut b);
        from_aes(&b)
    }

    /// `π` on every block in place, in one batched AES call (callers that
    /// prepare `σ(x) ⊕ i` themselves and finish `⊕ σ(x)` themselves, so a
    /// gate computes each `σ` once and shares it between its hashes).
    #[inline(always)]
    pub fn permute_blocks(&self, blocks: &mut [AesBlock]) {
        self.cipher.encrypt_blocks(blocks);
    }

    /// `H(x, i)` for a single input.
    pub fn hash(&self, x: Block, tweak: Block) -> Block {
        let s = sigma(x);
        self.permute(s ^ tweak) ^ s
    }

    /// Hashes `xs[k]` with tweak `tweaks[k]` in place, all blocks in one AES call.
    ///
    /// # Panics
    /// If the two slices differ in length (a programming error, never peer input).
    pub fn hash_many(&mut self, xs: &mut [Block], tweaks: &[Block]) {
        assert_eq!(xs.len(), tweaks.len(), "hash_many: one tweak per input");
        self.buf.clear();
        for (x, t) in xs.iter_mut().zip(tweaks) {
            let s = sigma(*x);
            *x = s;
            self.buf.push(to_aes(s ^ t));
        }
        self.cipher.encrypt_blocks(&mut self.buf);
        for (x, b) in xs.iter_mut().zip(&self.buf) {
            *x ^= from_aes(b);
        }
    }

    /// Hashes a fixed-size array in place without touching the heap
    /// (the garbling hot path: `N` is 16–96 blocks).
    #[inline(always)]
    pub fn hash_array<const N: usize>(&self, xs: &mut [Block; N], tweaks: &[Block; N]) {
        self.hash_array_with(xs, |k| tweaks[k]);
    }

    /// Hashes `xs[k]` with tweak `tweak(k)` in place, all `N` blocks in one
    /// AES call (tweaks computed on the fly, no tweak array).
    #[inline(always)]
    pub fn hash_array_with<const N: usize>(
        &self,
        xs: &mut [Block; N],
        tweak: impl Fn(usize) -> Block,
    ) {
        if let Some((k, keys)) = self.accel() {
            k.hash(keys, xs, tweak);
            return;
        }
        let mut buf = [aes::Block::default(); N];
        let mut sigmas = [V::of(0); N];
        for (k, ((x, b), s)) in xs.iter().zip(buf.iter_mut()).zip(&mut sigmas).enumerate() {
            *s = V::of(*x).sigma();
            *b = s.xor(V::of(tweak(k))).to_aes();
        }
        self.cipher.encrypt_blocks(&mut buf);
        for ((x, b), s) in xs.iter_mut().zip(&buf).zip(&sigmas) {
            *x = V::from_aes(b).xor(*s).to_u128();
        }
    }

    /// Measures `π`'s throughput on this core: blocks per second, encrypting
    /// a 16384-block buffer in place (8 blocks in flight) for at least
    /// `min_time`, with this hash's kernel.
    pub fn aes_blocks_per_second(&self, min_time: std::time::Duration) -> f64 {
        let mut done = 0usize;
        if let Some((v, keys)) = self.vaes() {
            let mut blocks: Vec<u128> = (0..1u128 << 14).collect();
            v.encrypt(keys, &mut blocks);
            let start = std::time::Instant::now();
            loop {
                v.encrypt(keys, &mut blocks);
                done += blocks.len();
                if start.elapsed() >= min_time {
                    break;
                }
            }
            std::hint::black_box(&blocks);
            return done as f64 / start.elapsed().as_secs_f64();
        }
        if let Some((k, keys)) = self.accel() {
            let mut blocks: Vec<u128> = (0..1u128 << 14).collect();
            k.encrypt(keys, &mut blocks);
            // At least one timed pass: a thread descheduled for longer than
            // `min_time` before its first check must not report 0 blocks/s.
            let start = std::time::Instant::now();
            loop {
                k.encrypt(keys, &mut blocks);
                done += blocks.len();
                if start.elapsed() >= min_time {
                    break;
                }
            }
            std::hint::black_box(&blocks);
            return done as f64 / start.elapsed().as_secs_f64();
        }
        let mut blocks: Vec<aes::Block> = (0..1u128 << 14).map(to_aes).collect();
        self.cipher.encrypt_blocks(&mut blocks);
        let start = std::time::Instant::now();
        loop {
            self.cipher.encrypt_blocks(&mut blocks);
            done += blocks.len();
            if start.elapsed() >= min_time {
                break;
            }
        }
        std::hint::black_box(&blocks);
        done as f64 / start.elapsed().as_secs_f64()
    }

    /// `π`'s aggregate throughput with `threads` threads encrypting their
    /// own buffers at the same time (the unit for multi-threaded figures).
    pub fn aes_blocks_per_second_threads(
        &self,
        threads: usize,
        min_time: std::time::Duration,
    ) -> f64 {
        if threads <= 1 {
            return self.aes_blocks_per_second(min_time);
        }
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| s.spawn(|| self.aes_blocks_per_second(min_time)))
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).sum()
        })
    }
}

/// AES-128 in counter mode keyed by a secret seed: a fast PRG for wire
/// labels and for the OT-extension matrix columns. It uses the fastest
/// counter mode the CPU has (VAES for fills of ≥ 32 blocks, else AES-NI),
/// whatever [`Kernel`] the gates use: the stream is the same.
#[derive(Clone)]
pub struct AesPrg {
    cipher: Aes128,
    accel: Option<(AesNi, RoundKeys)>,
    vaes: Option<Vaes>,
    counter: u128,
}

impl std::fmt::Debug for AesPrg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AesPrg")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl AesPrg {
    /// A PRG from a 128-bit seed, starting at counter 0.
    pub fn new(seed: Block) -> Self {
        Self::with_counter(seed, 0)
    }

    /// A PRG from a 128-bit seed, starting at block `counter` of its
    /// stream (random access: `with_counter(s, c)` continues where `new(s)`
    /// is after `c` blocks).
    pub fn with_counter(seed: Block, counter: u128) -> Self {
        let accel = AesNi::detect().map(|k| (k, k.expand_key(seed)));
        Self {
            cipher: Aes128::new(&GenericArray::from(seed.to_le_bytes())),
            vaes: accel.and(Vaes::detect()),
            accel,
            counter,
        }
    }

    /// Blocks drawn so far (the counter of the next block).
    pub fn counter(&self) -> u128 {
        self.counter
    }

    /// A PRG seeded from `rng`.
    pub fn from_rng<R: rand::RngCore + rand::CryptoRng>(rng: &mut R) -> Self {
        let mut seed = [0u8; 16];
        rng.fill_bytes(&mut seed);
        Self::new(u128::from_le_bytes(seed))
    }

    /// Fills `out` with the next pseudo-random blocks.
    pub fn fill(&mut self, out: &mut [Block]) {
        if let Some((k, keys)) = &self.accel {
            // The VAES kernel works on 32 blocks at a time: only worth it for long outputs.
            match self.vaes {
                Some(v) if out.len() >= 32 => v.ctr(keys, self.counter, out),
                _ => k.ctr(keys, self.counter, out),
            }
            self.counter = self.counter.wrapping_add(out.len() as u128);
            return;
        }
        const CHUNK: usize = 64;
        let mut buf = [aes::Block::default(); CHUNK];
        for part in out.chunks_mut(CHUNK) {
            for b in buf.iter_mut().take(part.len()) {
                *b = to_aes(self.counter);
                self.counter = self.counter.wrapping_add(1);
            }
            self.cipher.encrypt_blocks(&mut buf[..part.len()]);
            for (o, b) in part.iter_mut().zip(&buf) {
                *o = from_aes(b);
            }
        }
    }

    /// The next pseudo-random block.
    pub fn next_block(&mut self) -> Block {
        let mut b = [0u128; 1];
        self.fill(&mut b);
        b[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_matches_fips197_vector() {
        // FIPS-197 Appendix C.1 (AES-128).
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let pt: [u8; 16] = core::array::from_fn(|i| (i as u8) * 0x11);
        let mut prg = AesPrg::new(u128::from_le_bytes(key));
        prg.counter = u128::from_le_bytes(pt);
        let ct = prg.next_block().to_le_bytes();
        let expect = [
            0x69, 0xc4, 0xe0, 0xd8, 0x6a, 0x7b, 0x04, 0x30, 0xd8, 0xcd, 0xb7, 0x80, 0x70, 0xb4,
            0xc5, 0x5a,
        ];
        assert_eq!(ct, expect);
    }

    #[test]
    fn sigma_is_linear_orthomorphism() {
        let x: u128 = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210;
        let y: u128 = 0x1111_2222_3333_4444_5555_6666_7777_8888;
        assert_eq!(sigma(x ^ y), sigma(x) ^ sigma(y));
        // σ(x) ⊕ x must also be a permutation: (x_R) ‖ (x_L ⊕ x_R).
        let hi = (x >> 64) as u64;
        let lo = x as u64;
        assert_eq!(sigma(x) ^ x, ((lo as u128) << 64) | (hi ^ lo) as u128);
    }
}
