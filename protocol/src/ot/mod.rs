//! Oblivious transfer: the evaluator's garbled-circuit input labels.
//!
//! * [`base`]: 128 base OTs, Chou–Orlandi "simplest OT" on the Ristretto
//!   group (curve25519-dalek), semi-honest.
//! * [`iknp`]: IKNP correlated OT extension (Δ-COT) on our
//!   [`crate::net::Channel`]: the sender (garbler) obtains `q_j`, the
//!   receiver (evaluator) `t_j = q_j ⊕ r_j·Δ`, where `Δ` is the sender's
//!   base-OT choice vector. With `Δ` equal to the free-XOR offset, `q_j` is
//!   the zero label of the evaluator's input wire `j` and `t_j` the label of
//!   its bit `r_j`: the garbler sends nothing but the receiver's 16-byte
//!   column correction per OT.
//!
//! Security: semi-honest (passive) for both parties, 128-bit computational
//! security; `cryprot-ot` was not used because it brings its own QUIC
//! transport instead of running over [`crate::net::Channel`].

pub mod base;
pub mod iknp;

pub use iknp::{CotReceiver, CotSender};

use thiserror::Error;

use crate::net::{NetError, Wire, WireError, WireReader};

/// Security parameter: number of base OTs and width of a label.
pub const KAPPA: usize = 128;

/// Errors of base OT and OT extension.
#[derive(Debug, Error)]
pub enum OtError {
    /// The channel failed.
    #[error("oblivious transfer: {0}")]
    Net(#[from] NetError),
    /// A group element does not decode to a Ristretto point.
    #[error("base OT: {what} {index} is not a valid Ristretto point")]
    InvalidPoint {
        /// Which point.
        what: &'static str,
        /// Its index in the message.
        index: usize,
    },
    /// A message arrived out of order.
    #[error("oblivious transfer: unexpected {got} message, expected {expected}")]
    Unexpected {
        /// What arrived.
        got: &'static str,
        /// What was expected.
        expected: &'static str,
    },
    /// A count in a message does not match the protocol state.
    #[error("oblivious transfer: {what} is {got}, expected {expected}")]
    Count {
        /// Which count.
        what: &'static str,
        /// Expected value.
        expected: u64,
        /// Received value.
        got: u64,
    },
}

/// Every message of base OT and OT extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OtMessage {
    /// Base-OT sender's point `A = a·G` (compressed Ristretto).
    BaseSenderPoint([u8; 32]),
    /// Base-OT receiver's points `B_i` (compressed Ristretto), one per base OT.
    BaseReceiverPoints(Vec<[u8; 32]>),
    /// IKNP receiver's correction columns `u^i = G(k_i^0) ⊕ G(k_i^1) ⊕ r`, for `ots` OTs.
    ExtensionColumns {
        /// Number of OTs extended (the columns are padded to a multiple of 128 bits).
        ots: u64,
        /// `128 × ceil(ots / 128)` blocks, tile-major: for each group `w`
        /// of 128 OTs, block `w` of column 0, 1, …, 127.
        columns: Vec<u128>,
    },
}

impl OtMessage {
    /// Name of the variant, for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            OtMessage::BaseSenderPoint(_) => "base sender point",
            OtMessage::BaseReceiverPoints(_) => "base receiver points",
            OtMessage::ExtensionColumns { .. } => "extension columns",
        }
    }
}

/// The bytes before an `ExtensionColumns` message's columns (variant, OT
/// count): written by both `encode` and [`OtMessage::send`].
fn extension_head(ots: u64) -> [u8; 9] {
    let mut head = [2u8; 9];
    head[1..].copy_from_slice(&ots.to_le_bytes());
    head
}

impl OtMessage {
    /// Sends this message; extension columns go to the channel straight
    /// from their buffer (the frame `encode` writes, without copying
    /// 16 bytes per OT into a frame buffer first).
    pub async fn send(&self, ch: &mut crate::net::Channel) -> Result<(), NetError> {
        match self {
            #[cfg(target_endian = "little")]
            OtMessage::ExtensionColumns { ots, columns } => {
                let parts: [&[u8]; 3] = [
                    &[crate::msg::TAG_OT],
                    &extension_head(*ots),
                    bytemuck::cast_slice(columns),
                ];
                ch.send_parts(&parts, Self::NAME).await
            }
            _ => ch.send(self).await,
        }
    }
}

impl Wire for OtMessage {
    const NAME: &'static str = "ot";
    const TAG: Option<u8> = Some(crate::msg::TAG_OT);

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            OtMessage::BaseSenderPoint(p) => {
                out.push(0);
                out.extend_from_slice(p);
            }
            OtMessage::BaseReceiverPoints(ps) => {
                out.push(1);
                out.extend_from_slice(&(ps.len() as u32).to_le_bytes());
                for p in ps {
                    out.extend_from_slice(p);
                }
            }
            OtMessage::ExtensionColumns { ots, columns } => {
                out.extend_from_slice(&extension_head(*ots));
                out.reserve(columns.len() * 16);
                for c in columns {
                    out.extend_from_slice(&c.to_le_bytes());
                }
            }
        }
    }

    fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = WireReader::new(bytes);
        let msg = match r.u8("message tag")? {
            0 => {
                let mut p = [0u8; 32];
                p.copy_from_slice(r.bytes(32, "base sender point")?);
                OtMessage::BaseSenderPoint(p)
            }
            1 => {
                let n = r.len_prefix(32, "base receiver points")?;
                let mut ps = Vec::with_capacity(n);
                for _ in 0..n {
                    let mut p = [0u8; 32];
                    p.copy_from_slice(r.bytes(32, "base receiver point")?);
                    ps.push(p);
                }
                OtMessage::BaseReceiverPoints(ps)
            }
            2 => {
                let ots = r.u64("OT count")?;
                let blocks = ots.div_ceil(KAPPA as u64);
                let need = blocks
                    .checked_mul((KAPPA * 16) as u64)
                    .filter(|&need| need == r.remaining() as u64)
                    .ok_or_else(|| {
                        r.error(format!(
                            "extension columns for {ots} OTs need {} bytes, {} left",
                            blocks.saturating_mul((KAPPA * 16) as u64),
                            r.remaining()
                        ))
                    })?;
                let raw = r.bytes(need as usize, "extension columns")?;
                let columns = raw
                    .chunks_exact(16)
                    .map(|c| {
                        let mut a = [0u8; 16];
                        a.copy_from_slice(c);
                        u128::from_le_bytes(a)
                    })
                    .collect();
                OtMessage::ExtensionColumns { ots, columns }
            }
            t => {
                return Err(WireError {
                    what: format!("unknown OT message tag {t}"),
                    offset: 0,
                })
            }
        };
        r.finish("OT message")?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let msgs = [
            OtMessage::BaseSenderPoint([7; 32]),
            OtMessage::BaseReceiverPoints(vec![[1; 32], [2; 32]]),
            OtMessage::ExtensionColumns {
                ots: 130,
                columns: (0..256u128).collect(),
            },
        ];
        for m in msgs {
            let mut buf = Vec::new();
            m.encode(&mut buf);
            assert_eq!(OtMessage::decode(&buf).unwrap(), m);
        }
    }

    /// `OtMessage::send` writes the frame `Channel::send` (via `encode`) writes.
    #[tokio::test]
    async fn copy_free_send_writes_the_encoded_frame() {
        let msgs = [
            OtMessage::BaseSenderPoint([7; 32]),
            OtMessage::ExtensionColumns {
                ots: 130,
                columns: (0..256u128)
                    .map(|c| c.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c))
                    .collect(),
            },
        ];
        for m in msgs {
            let (mut a, mut b) = crate::net::duplex_pair();
            m.send(&mut a).await.unwrap();
            a.send(&m).await.unwrap();
            a.flush().await.unwrap();
            let fast = b.recv_bytes("fast").await.unwrap();
            assert_eq!(fast, b.recv_bytes("slow").await.unwrap());
            assert_eq!(a.meter().total("").bytes_sent, 2 * (fast.len() as u64 + 4));
        }
    }

    #[test]
    fn hostile_lengths_are_refused() {
        // A huge OT count with a short body: refused, no allocation.
        let mut buf = vec![2u8];
        buf.extend_from_slice(&u64::MAX.to_le_bytes());
        buf.extend_from_slice(&[0u8; 64]);
        assert!(OtMessage::decode(&buf).is_err());
        // A point count larger than the body.
        let mut buf = vec![1u8];
        buf.extend_from_slice(&1_000_000u32.to_le_bytes());
        assert!(OtMessage::decode(&buf).is_err());
        // Truncated point.
        assert!(OtMessage::decode(&[0u8, 1, 2]).is_err());
        assert!(OtMessage::decode(&[9u8]).is_err());
        assert!(OtMessage::decode(&[]).is_err());
    }
}
