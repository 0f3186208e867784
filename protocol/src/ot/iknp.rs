//! IKNP correlated OT extension (Ishai–Kilian–Nissim–Petrank 2003), semi-honest.
//!
//! Roles are reversed for the base OTs: the extension receiver (evaluator)
//! is the base-OT sender with seed pairs `(k_i^0, k_i^1)`, the extension
//! sender (garbler) the base-OT receiver with choice bits `Δ_i`. To extend
//! `m` OTs with choices `r`, the receiver expands `t^i = G(k_i^0)` and sends
//! `u^i = t^i ⊕ G(k_i^1) ⊕ r`; the sender computes
//! `q^i = G(k_i^{Δ_i}) ⊕ Δ_i·u^i = t^i ⊕ Δ_i·r`. Transposing, row `j` gives
//! `q_j = t_j ⊕ r_j·Δ`. `G` is AES-128-CTR keyed by the seed, continuing
//! its counter across extensions, so a session extends as often as it likes
//! after one base-OT phase. Core functions are synchronous; the `async`
//! methods only move [`OtMessage`]s over a [`Channel`].

use rand::{CryptoRng, RngCore};

use super::base::{self, BaseSender};
use super::{OtError, OtMessage, KAPPA};
use crate::gc::hash::{AesPrg, Block};
use crate::net::Channel;

/// Transposes a 128×128 bit matrix in place: bit `c` of row `r` ↔ bit `r` of row `c`.
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

/// Turns 128 columns of `blocks` blocks each (column-major) into `m` rows.
fn columns_to_rows(columns: &[u128], blocks: usize, m: usize) -> Vec<Block> {
    let mut rows = Vec::with_capacity(blocks * KAPPA);
    let mut tile = [0u128; 128];
    for w in 0..blocks {
        for (i, t) in tile.iter_mut().enumerate() {
            *t = columns[i * blocks + w];
        }
        transpose_128(&mut tile);
        rows.extend_from_slice(&tile);
    }
    rows.truncate(m);
    rows
}

fn pack_choices(choices: &[bool], blocks: usize) -> Vec<u128> {
    let mut packed = vec![0u128; blocks];
    for (j, &c) in choices.iter().enumerate() {
        packed[j / 128] |= (c as u128) << (j % 128);
    }
    packed
}

/// The extension sender (garbler): holds `Δ` and one seed per base OT.
#[derive(Debug)]
pub struct CotSender {
    delta: Block,
    prgs: Vec<AesPrg>,
}

/// The extension receiver (evaluator): holds both seeds of every base OT.
#[derive(Debug)]
pub struct CotReceiver {
    prgs: Vec<(AesPrg, AesPrg)>,
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
        let prgs = keys.into_iter().map(AesPrg::new).collect();
        Ok((Self { delta, prgs }, reply))
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

    /// Consumes the receiver's columns for `count` OTs; returns `q_j` (the zero labels).
    pub fn extend_from(&mut self, msg: &OtMessage, count: usize) -> Result<Vec<Block>, OtError> {
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
        let blocks = count.div_ceil(KAPPA);
        if columns.len() != blocks * KAPPA {
            return Err(OtError::Count {
                what: "number of column blocks",
                expected: (blocks * KAPPA) as u64,
                got: columns.len() as u64,
            });
        }
        let mut q = vec![0u128; blocks * KAPPA];
        for (i, prg) in self.prgs.iter_mut().enumerate() {
            let col = &mut q[i * blocks..(i + 1) * blocks];
            prg.fill(col);
            if (self.delta >> i) & 1 == 1 {
                for (c, u) in col.iter_mut().zip(&columns[i * blocks..(i + 1) * blocks]) {
                    *c ^= u;
                }
            }
        }
        Ok(columns_to_rows(&q, blocks, count))
    }

    /// Extends `count` correlated OTs over a channel.
    pub async fn extend(&mut self, ch: &mut Channel, count: usize) -> Result<Vec<Block>, OtError> {
        let msg: OtMessage = ch.recv().await?;
        self.extend_from(&msg, count)
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
        let prgs = keys
            .into_iter()
            .map(|(k0, k1)| (AesPrg::new(k0), AesPrg::new(k1)))
            .collect();
        Ok(Self { prgs })
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

    /// Computes the correction columns for `choices`; returns the message and `t_j`
    /// (the labels of the chosen bits).
    pub fn extend_message(&mut self, choices: &[bool]) -> (OtMessage, Vec<Block>) {
        let count = choices.len();
        let blocks = count.div_ceil(KAPPA);
        let r = pack_choices(choices, blocks);
        let mut t = vec![0u128; blocks * KAPPA];
        let mut u = vec![0u128; blocks * KAPPA];
        for (i, (g0, g1)) in self.prgs.iter_mut().enumerate() {
            let tc = &mut t[i * blocks..(i + 1) * blocks];
            let uc = &mut u[i * blocks..(i + 1) * blocks];
            g0.fill(tc);
            g1.fill(uc);
            for ((uw, tw), rw) in uc.iter_mut().zip(tc.iter()).zip(&r) {
                *uw ^= tw ^ rw;
            }
        }
        (
            OtMessage::ExtensionColumns {
                ots: count as u64,
                columns: u,
            },
            columns_to_rows(&t, blocks, count),
        )
    }

    /// Extends correlated OTs for `choices` over a channel.
    pub async fn extend(
        &mut self,
        ch: &mut Channel,
        choices: &[bool],
    ) -> Result<Vec<Block>, OtError> {
        let (msg, t) = self.extend_message(choices);
        ch.send(&msg).await?;
        ch.flush().await?;
        Ok(t)
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
    }

    #[test]
    fn correlated_ot_in_memory() {
        let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(4);
        let (base, m1) = CotReceiver::base_start(&mut rng);
        let (mut sender, m2) = CotSender::base_respond(&m1, &mut rng).unwrap();
        let mut receiver = CotReceiver::base_finish(&base, &m2).unwrap();
        for count in [1usize, 127, 128, 300] {
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
}
