//! IKNP correlated OT extension (Ishai–Kilian–Nissim–Petrank 2003), semi-honest.
//!
//! Roles are reversed for the base OTs: the extension receiver (evaluator)
//! is the base-OT sender with seed pairs `(k_i^0, k_i^1)`, the extension
//! sender (garbler) the base-OT receiver with choice bits `Δ_i`. To extend
//! `m` OTs with choices `r`, the receiver expands `t^i = G(k_i^0)` and sends
//! `u^i = t^i ⊕ G(k_i^1) ⊕ r`; the sender computes
//! `q^i = G(k_i^{Δ_i}) ⊕ Δ_i·u^i = t^i ⊕ Δ_i·r`. Transposing, row `j` gives
//! `q_j = t_j ⊕ r_j·Δ`. `G` is AES-128-CTR keyed by the seed; all 128
//! column generators of a side advance together, so a session extends as
//! often as it likes after one base-OT phase.
//!
//! Batching: the OTs are processed in tiles of 128. For tile `w` the 128
//! column blocks `G(k_i)_w = AES_{k_i}(counter + w)` are computed with one
//! multi-key AES call (each block under its own key schedule, 8 blocks in
//! flight), combined in place and transposed (128×128 bits, SSE2); the
//! correction columns travel tile-major (tile `w`'s 128 column blocks, then
//! tile `w + 1`'s), so no pass gathers strided columns. Tiles are split
//! across threads ([`CotSender::set_threads`], [`CotReceiver::set_threads`]).
//!
//! Extension work can be planned on the session (reserving its counter
//! range) and run elsewhere: [`CotSender::job`] / [`CotReceiver::job`]
//! return self-contained jobs, which is how the GC protocol extends the
//! OTs of several pieces of a site on worker threads.

use std::sync::Arc;

use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockEncrypt, KeyInit};
use aes::Aes128;
use rand::{CryptoRng, RngCore};

use super::base::{self, BaseSender};
use super::{OtError, OtMessage, KAPPA};
use crate::gc::accel::{AesNi, RoundKeys};
use crate::gc::hash::{from_aes, to_aes, Block};
use crate::net::Channel;

/// Transposes a 128×128 bit matrix in place: bit `c` of row `r` ↔ bit `r` of row `c`.
pub fn transpose_128(m: &mut [u128; 128]) {
    crate::gc::simd::transpose_128(m)
}

/// The reference transpose (Eklundh's recursive block swaps on `u128` rows),
/// kept as the test oracle of [`transpose_128`].
pub fn transpose_128_reference(m: &mut [u128; 128]) {
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

/// Packs choice bits, 128 per block (bit `j % 128` of block `j / 128`).
pub fn pack_choices(choices: &[bool]) -> Vec<u128> {
    let mut packed = vec![0u128; choices.len().div_ceil(KAPPA)];
    for (j, &c) in choices.iter().enumerate() {
        packed[j / 128] |= (c as u128) << (j % 128);
    }
    packed
}

/// The 128 column generators of one side: AES-128 under each base-OT seed.
#[derive(Clone)]
struct ColumnKeys {
    accel: Option<(AesNi, Vec<RoundKeys>)>,
    ciphers: Vec<Aes128>,
}

impl std::fmt::Debug for ColumnKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ColumnKeys")
    }
}

impl ColumnKeys {
    fn new(seeds: &[Block]) -> Self {
        let accel = AesNi::detect().map(|k| (k, seeds.iter().map(|&s| k.expand_key(s)).collect()));
        let ciphers = match accel {
            Some(_) => Vec::new(),
            None => seeds
                .iter()
                .map(|s| Aes128::new(&GenericArray::from(s.to_le_bytes())))
                .collect(),
        };
        Self { accel, ciphers }
    }

    /// `out[i] = AES_{k_i}(counter)` for every column `i`.
    fn tile(&self, counter: u128, out: &mut [u128; KAPPA]) {
        match &self.accel {
            Some((k, keys)) => k.multi_key_encrypt(keys, counter, out),
            None => {
                for (o, c) in out.iter_mut().zip(&self.ciphers) {
                    let mut b = to_aes(counter);
                    c.encrypt_block(&mut b);
                    *o = from_aes(&b);
                }
            }
        }
    }
}

/// Splits `tiles` tiles into at most `threads` contiguous ranges and runs
/// `f(first_tile, rows, columns)` on each in parallel (scoped threads), where
/// `rows` holds 128 rows per tile and `columns` (if any) 128 blocks per tile.
fn for_tiles(
    threads: usize,
    tiles: usize,
    rows: &mut [Block],
    mut columns: Option<&mut [Block]>,
    f: impl Fn(usize, &mut [Block], Option<&mut [Block]>) + Sync,
) {
    let threads = threads.clamp(1, tiles.max(1));
    if threads == 1 {
        f(0, rows, columns);
        return;
    }
    let per = tiles.div_ceil(threads) * KAPPA;
    std::thread::scope(|s| {
        let mut rest = rows;
        let mut k = 0;
        while !rest.is_empty() {
            let take = per.min(rest.len());
            let (r, tail) = rest.split_at_mut(take);
            rest = tail;
            let c = match columns.take() {
                Some(cols) => {
                    let (c, tail) = cols.split_at_mut(take);
                    columns = Some(tail);
                    Some(c)
                }
                None => None,
            };
            let f = &f;
            let first = k / KAPPA;
            s.spawn(move || f(first, r, c));
            k += take;
        }
    });
}

/// The extension sender (garbler): holds `Δ` and one seed per base OT.
#[derive(Debug)]
pub struct CotSender {
    delta: Block,
    keys: Arc<ColumnKeys>,
    counter: u128,
    threads: usize,
}

/// The receiver (evaluator): holds both seeds of every base OT.
#[derive(Debug)]
pub struct CotReceiver {
    keys0: Arc<ColumnKeys>,
    keys1: Arc<ColumnKeys>,
    counter: u128,
    threads: usize,
}

/// One planned extension of the sender: turns the receiver's correction
/// columns into the `q_j`. Self-contained (`Send + 'static`).
#[derive(Debug, Clone)]
pub struct SenderJob {
    delta: Block,
    keys: Arc<ColumnKeys>,
    counter: u128,
    count: usize,
}

/// One planned extension of the receiver: computes the correction columns
/// and the `t_j` for its choices. Self-contained (`Send + 'static`).
#[derive(Debug, Clone)]
pub struct ReceiverJob {
    keys0: Arc<ColumnKeys>,
    keys1: Arc<ColumnKeys>,
    counter: u128,
    count: usize,
    choices: Vec<u128>,
}

impl CotSender {
    /// Sender's half of the base-OT phase, given the receiver's first message.
    /// `Δ` is drawn with colour bit (bit 0) set, as free-XOR garbling needs.
    pub fn base_respond<R: RngCore + CryptoRng>(
        msg: &OtMessage,
        rng: &mut R,
    ) -> Result<(Self, OtMessage), OtError> {
        let mut d = [0u8; 16];
        rng.fill_bytes(&mut d);
        let delta = u128::from_le_bytes(d) | 1;
        let choices: Vec<bool> = (0..KAPPA).map(|i| (delta >> i) & 1 == 1).collect();
        let (reply, keys) = base::receive(msg, &choices, rng)?;
        Ok((
            Self {
                delta,
                keys: Arc::new(ColumnKeys::new(&keys)),
                counter: 0,
                threads: 1,
            },
            reply,
        ))
    }

    /// Base-OT phase over a channel (receives first, then replies).
    pub async fn setup<R: RngCore + CryptoRng>(
        ch: &mut Channel,
        rng: &mut R,
    ) -> Result<Self, OtError> {
        let msg: OtMessage = ch.recv().await?;
        let (me, reply) = Self::base_respond(&msg, rng)?;
        ch.send(&reply).await?;
        ch.flush().await?;
        Ok(me)
    }

    /// The correlation `Δ` (colour bit 1).
    pub fn delta(&self) -> Block {
        self.delta
    }

    /// Threads [`CotSender::extend_from`] splits its tiles across (default 1).
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    /// Plans the next extension of `count` OTs (reserving its generator
    /// blocks); the job runs anywhere, in any order relative to other jobs.
    pub fn job(&mut self, count: usize) -> SenderJob {
        let job = SenderJob {
            delta: self.delta,
            keys: self.keys.clone(),
            counter: self.counter,
            count,
        };
        self.counter += count.div_ceil(KAPPA) as u128;
        job
    }

    /// Consumes the receiver's columns for `count` OTs; returns `q_j` (the
    /// zero labels). A message that does not fit is an error and consumes
    /// no generator blocks (the session stays in step with the receiver).
    pub fn extend_from(&mut self, msg: &OtMessage, count: usize) -> Result<Vec<Block>, OtError> {
        check_columns(msg, count)?;
        let threads = self.threads;
        self.job(count).run(msg, threads)
    }

    /// Extends `count` correlated OTs over a channel.
    pub async fn extend(&mut self, ch: &mut Channel, count: usize) -> Result<Vec<Block>, OtError> {
        let msg: OtMessage = ch.recv().await?;
        self.extend_from(&msg, count)
    }
}

/// The correction columns of `msg` if it carries exactly `count` OTs.
fn check_columns(msg: &OtMessage, count: usize) -> Result<&[Block], OtError> {
    let OtMessage::ExtensionColumns { ots, columns } = msg else {
        return Err(OtError::Unexpected {
            got: msg.kind(),
            expected: "extension columns",
        });
    };
    if *ots != count as u64 {
        return Err(OtError::Count {
            what: "number of extended OTs",
            expected: count as u64,
            got: *ots,
        });
    }
    let tiles = count.div_ceil(KAPPA);
    if columns.len() != tiles * KAPPA {
        return Err(OtError::Count {
            what: "number of column blocks",
            expected: (tiles * KAPPA) as u64,
            got: columns.len() as u64,
        });
    }
    Ok(columns)
}

impl SenderJob {
    /// OTs of this job.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Runs the job on `threads` threads: checks the message and returns the `q_j`.
    pub fn run(&self, msg: &OtMessage, threads: usize) -> Result<Vec<Block>, OtError> {
        let columns = check_columns(msg, self.count)?;
        let count = self.count;
        let tiles = count.div_ceil(KAPPA);
        let mut q = vec![0u128; tiles * KAPPA];
        // Column i takes u^i where Δ_i = 1.
        let select: [u128; KAPPA] =
            core::array::from_fn(|i| ((self.delta >> i) & 1).wrapping_neg());
        for_tiles(threads, tiles, &mut q, None, |first, rows, _| {
            let mut tile = [0u128; KAPPA];
            for (k, out) in rows.chunks_exact_mut(KAPPA).enumerate() {
                let w = first + k;
                self.keys.tile(self.counter + w as u128, &mut tile);
                let u = &columns[w * KAPPA..(w + 1) * KAPPA];
                for ((t, &u), &s) in tile.iter_mut().zip(u).zip(&select) {
                    *t ^= u & s;
                }
                transpose_128(&mut tile);
                out.copy_from_slice(&tile);
            }
        });
        q.truncate(count);
        Ok(q)
    }
}

impl CotReceiver {
    /// Receiver's first base-OT message (it is the base-OT sender).
    pub fn base_start<R: RngCore + CryptoRng>(rng: &mut R) -> (BaseSender, OtMessage) {
        BaseSender::new(rng)
    }

    /// Finishes the base-OT phase with the sender's reply.
    pub fn base_finish(sender: &BaseSender, reply: &OtMessage) -> Result<Self, OtError> {
        let keys = sender.keys(reply, KAPPA)?;
        let k0: Vec<Block> = keys.iter().map(|k| k.0).collect();
        let k1: Vec<Block> = keys.iter().map(|k| k.1).collect();
        Ok(Self {
            keys0: Arc::new(ColumnKeys::new(&k0)),
            keys1: Arc::new(ColumnKeys::new(&k1)),
            counter: 0,
            threads: 1,
        })
    }

    /// Base-OT phase over a channel (sends first).
    pub async fn setup<R: RngCore + CryptoRng>(
        ch: &mut Channel,
        rng: &mut R,
    ) -> Result<Self, OtError> {
        let (sender, msg) = Self::base_start(rng);
        ch.send(&msg).await?;
        let reply: OtMessage = ch.recv().await?;
        Self::base_finish(&sender, &reply)
    }

    /// Threads [`CotReceiver::extend_message`] splits its tiles across (default 1).
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    /// Plans the next extension for `count` OTs with packed `choices`
    /// (see [`pack_choices`]; `count.div_ceil(128)` blocks, bits past
    /// `count` ignored), reserving its generator blocks.
    ///
    /// # Panics
    /// If `choices` has the wrong number of blocks (a programming error).
    pub fn job(&mut self, count: usize, choices: Vec<u128>) -> ReceiverJob {
        assert_eq!(
            choices.len(),
            count.div_ceil(KAPPA),
            "one choice block per 128 OTs"
        );
        let job = ReceiverJob {
            keys0: self.keys0.clone(),
            keys1: self.keys1.clone(),
            counter: self.counter,
            count,
            choices,
        };
        self.counter += count.div_ceil(KAPPA) as u128;
        job
    }

    /// Computes the correction columns for `choices`; returns the message and `t_j`
    /// (the labels of the chosen bits).
    pub fn extend_message(&mut self, choices: &[bool]) -> (OtMessage, Vec<Block>) {
        let threads = self.threads;
        self.job(choices.len(), pack_choices(choices)).run(threads)
    }

    /// Extends correlated OTs for `choices` over a channel.
    pub async fn extend(
        &mut self,
        ch: &mut Channel,
        choices: &[bool],
    ) -> Result<Vec<Block>, OtError> {
        let (msg, t) = self.extend_message(choices);
        msg.send(ch).await?;
        ch.flush().await?;
        Ok(t)
    }
}

impl ReceiverJob {
    /// OTs of this job.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Runs the job on `threads` threads: the correction message and the `t_j`.
    pub fn run(&self, threads: usize) -> (OtMessage, Vec<Block>) {
        self.run_into(threads, Vec::new())
    }

    /// [`ReceiverJob::run`] writing the correction columns into `columns`
    /// (a spent message's buffer: its contents are overwritten).
    pub fn run_into(&self, threads: usize, mut u: Vec<Block>) -> (OtMessage, Vec<Block>) {
        let tiles = self.count.div_ceil(KAPPA);
        let mut t = vec![0u128; tiles * KAPPA];
        u.clear();
        u.resize(tiles * KAPPA, 0);
        for_tiles(threads, tiles, &mut t, Some(&mut u), |first, rows, cols| {
            let mut tile = [0u128; KAPPA];
            let mut other = [0u128; KAPPA];
            let cols = cols.unwrap_or_default();
            for (k, (out, uc)) in rows
                .chunks_exact_mut(KAPPA)
                .zip(cols.chunks_exact_mut(KAPPA))
                .enumerate()
            {
                let w = first + k;
                let ctr = self.counter + w as u128;
                self.keys0.tile(ctr, &mut tile);
                self.keys1.tile(ctr, &mut other);
                let r = self.choices[w];
                for ((uc, &t0), &t1) in uc.iter_mut().zip(&tile).zip(&other) {
                    *uc = t0 ^ t1 ^ r;
                }
                transpose_128(&mut tile);
                out.copy_from_slice(&tile);
            }
        });
        t.truncate(self.count);
        (
            OtMessage::ExtensionColumns {
                ots: self.count as u64,
                columns: u,
            },
            t,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn transpose_matches_naive() {
        let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(3);
        let mut m = [0u128; 128];
        for r in m.iter_mut() {
            *r = rng.gen();
        }
        let orig = m;
        transpose_128(&mut m);
        for (r, row) in m.iter().enumerate() {
            for (c, col) in orig.iter().enumerate() {
                assert_eq!((row >> c) & 1, (col >> r) & 1, "({r},{c})");
            }
        }
        let mut reference = orig;
        transpose_128_reference(&mut reference);
        assert_eq!(reference, m);
    }

    #[test]
    fn correlated_ot_in_memory() {
        let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(4);
        let (base, m1) = CotReceiver::base_start(&mut rng);
        let (mut sender, m2) = CotSender::base_respond(&m1, &mut rng).unwrap();
        let mut receiver = CotReceiver::base_finish(&base, &m2).unwrap();
        for (count, threads) in [(1usize, 1usize), (127, 2), (128, 1), (300, 3), (1000, 2)] {
            sender.set_threads(threads);
            receiver.set_threads(threads);
            let choices: Vec<bool> = (0..count).map(|_| rng.gen()).collect();
            let (msg, t) = receiver.extend_message(&choices);
            let q = sender.extend_from(&msg, count).unwrap();
            assert_eq!(q.len(), count);
            for j in 0..count {
                let expect = q[j] ^ if choices[j] { sender.delta() } else { 0 };
                assert_eq!(t[j], expect, "OT {j} of {count}");
            }
            assert!(sender.extend_from(&msg, count + 1).is_err());
        }
    }

    #[test]
    fn jobs_run_in_any_order() {
        let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(5);
        let (base, m1) = CotReceiver::base_start(&mut rng);
        let (mut sender, m2) = CotSender::base_respond(&m1, &mut rng).unwrap();
        let mut receiver = CotReceiver::base_finish(&base, &m2).unwrap();
        let choices: Vec<Vec<bool>> = [200usize, 129, 64]
            .iter()
            .map(|&n| (0..n).map(|_| rng.gen()).collect())
            .collect();
        let rjobs: Vec<ReceiverJob> = choices
            .iter()
            .map(|c| receiver.job(c.len(), pack_choices(c)))
            .collect();
        let sjobs: Vec<SenderJob> = choices.iter().map(|c| sender.job(c.len())).collect();
        for k in [2usize, 0, 1] {
            let (msg, t) = rjobs[k].run(1);
            let q = sjobs[k].run(&msg, 2).unwrap();
            for j in 0..choices[k].len() {
                assert_eq!(t[j], q[j] ^ if choices[k][j] { sender.delta() } else { 0 });
            }
        }
    }
}
