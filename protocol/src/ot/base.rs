//! Base OT: Chou–Orlandi "simplest OT" (LATINCRYPT 2015) on the Ristretto
//! prime-order group, semi-honest.
//!
//! Sender: `a ← Z_q`, sends `A = a·G`. Receiver with choice `c_i`:
//! `b_i ← Z_q`, sends `B_i = b_i·G + c_i·A`, keeps `k_i = H(i, A, B_i, b_i·A)`.
//! Sender: `k_i^0 = H(i, A, B_i, a·B_i)`, `k_i^1 = H(i, A, B_i, a·(B_i − A))`.
//! `H` is SHA-256 truncated to 128 bits with a domain separator. Every
//! received point is checked to decode (Ristretto encodings are canonical).

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use rand::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};

use super::{OtError, OtMessage};

fn key(index: usize, a: &[u8; 32], b: &[u8; 32], shared: &RistrettoPoint) -> u128 {
    let mut h = Sha256::new();
    h.update(b"pibench simplest-OT v1");
    h.update((index as u64).to_le_bytes());
    h.update(a);
    h.update(b);
    h.update(shared.compress().as_bytes());
    let d = h.finalize();
    let mut k = [0u8; 16];
    k.copy_from_slice(&d[..16]);
    u128::from_le_bytes(k)
}

fn decompress(
    bytes: &[u8; 32],
    what: &'static str,
    index: usize,
) -> Result<RistrettoPoint, OtError> {
    CompressedRistretto(*bytes)
        .decompress()
        .ok_or(OtError::InvalidPoint { what, index })
}

/// Base-OT sender state after its first message.
#[derive(Debug)]
pub struct BaseSender {
    a: Scalar,
    a_point: RistrettoPoint,
    a_bytes: [u8; 32],
}

impl BaseSender {
    /// Draws `a` and returns the first message.
    pub fn new<R: RngCore + CryptoRng>(rng: &mut R) -> (Self, OtMessage) {
        let a = Scalar::random(rng);
        let a_point = &a * RISTRETTO_BASEPOINT_TABLE;
        let a_bytes = a_point.compress().to_bytes();
        (
            Self {
                a,
                a_point,
                a_bytes,
            },
            OtMessage::BaseSenderPoint(a_bytes),
        )
    }

    /// Derives both keys of each OT from the receiver's message; expects `count` OTs.
    pub fn keys(&self, msg: &OtMessage, count: usize) -> Result<Vec<(u128, u128)>, OtError> {
        let OtMessage::BaseReceiverPoints(points) = msg else {
            return Err(OtError::Unexpected {
                got: msg.kind(),
                expected: "base receiver points",
            });
        };
        if points.len() != count {
            return Err(OtError::Count {
                what: "number of base receiver points",
                expected: count as u64,
                got: points.len() as u64,
            });
        }
        points
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                let b = decompress(bytes, "base receiver point", i)?;
                let k0 = key(i, &self.a_bytes, bytes, &(self.a * b));
                let k1 = key(i, &self.a_bytes, bytes, &(self.a * (b - self.a_point)));
                Ok((k0, k1))
            })
            .collect()
    }
}

/// Receiver side: answers the sender's point for `choices`; returns the reply and the chosen keys.
pub fn receive<R: RngCore + CryptoRng>(
    msg: &OtMessage,
    choices: &[bool],
    rng: &mut R,
) -> Result<(OtMessage, Vec<u128>), OtError> {
    let OtMessage::BaseSenderPoint(a_bytes) = msg else {
        return Err(OtError::Unexpected {
            got: msg.kind(),
            expected: "base sender point",
        });
    };
    let a = decompress(a_bytes, "base sender point", 0)?;
    let mut points = Vec::with_capacity(choices.len());
    let mut keys = Vec::with_capacity(choices.len());
    for (i, &c) in choices.iter().enumerate() {
        let b = Scalar::random(rng);
        let mut bp = &b * RISTRETTO_BASEPOINT_TABLE;
        if c {
            bp += a;
        }
        let b_bytes = bp.compress().to_bytes();
        keys.push(key(i, a_bytes, &b_bytes, &(b * a)));
        points.push(b_bytes);
    }
    Ok((OtMessage::BaseReceiverPoints(points), keys))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn receiver_gets_the_chosen_key_only() {
        let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(1);
        let choices: Vec<bool> = (0..16).map(|_| rng.gen()).collect();
        let (sender, m1) = BaseSender::new(&mut rng);
        let (m2, chosen) = receive(&m1, &choices, &mut rng).unwrap();
        let keys = sender.keys(&m2, 16).unwrap();
        for ((c, k), (k0, k1)) in choices.iter().zip(chosen).zip(keys) {
            assert_ne!(k0, k1);
            assert_eq!(k, if *c { k1 } else { k0 });
        }
    }

    #[test]
    fn invalid_points_are_errors() {
        let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(2);
        let bad = OtMessage::BaseSenderPoint([0xff; 32]);
        assert!(matches!(
            receive(&bad, &[true], &mut rng),
            Err(OtError::InvalidPoint { .. })
        ));
        let (sender, _) = BaseSender::new(&mut rng);
        let bad = OtMessage::BaseReceiverPoints(vec![[0xff; 32]]);
        assert!(matches!(
            sender.keys(&bad, 1),
            Err(OtError::InvalidPoint { .. })
        ));
        let short = OtMessage::BaseReceiverPoints(vec![]);
        assert!(matches!(sender.keys(&short, 1), Err(OtError::Count { .. })));
    }
}
