//! The message envelope: one tag space for every message the two parties
//! exchange.
//!
//! A frame's payload starts with one envelope tag byte naming the message
//! family, followed by the family's own encoding (its first byte is the
//! variant):
//!
//! | tag | family | type |
//! | --- | --- | --- |
//! | 1 | session: hello, abort | [`crate::inference::SessionMessage`] |
//! | 2 | oblivious transfer | [`crate::ot::OtMessage`] |
//! | 3 | garbled circuits (tables, labels) | [`crate::gc::protocol::GcMessage`] |
//! | 4 | homomorphic encryption (keys, layers, triples) | [`crate::he::proto::HeMessage`] |
//! | 5 | online shares (input, replies, openings, logits) | [`crate::inference::OnlineMessage`] |
//!
//! [`crate::net::Channel::recv`] checks the tag before decoding, so a message
//! of the wrong family is reported as such ("expected a gc message, got a
//! he message") rather than as garbage. [`Message::decode`] decodes any
//! frame (used by the fuzz harness and for diagnostics).

use crate::gc::protocol::GcMessage;
use crate::he::proto::HeMessage;
use crate::inference::{OnlineMessage, SessionMessage};
use crate::net::{Wire, WireError};
use crate::ot::OtMessage;

/// Envelope tag of session messages.
pub const TAG_SESSION: u8 = 1;
/// Envelope tag of OT messages.
pub const TAG_OT: u8 = 2;
/// Envelope tag of garbled-circuit messages.
pub const TAG_GC: u8 = 3;
/// Envelope tag of HE messages.
pub const TAG_HE: u8 = 4;
/// Envelope tag of online-phase messages.
pub const TAG_ONLINE: u8 = 5;

/// Name of an envelope tag, for errors.
pub fn tag_name(tag: u8) -> String {
    match tag {
        TAG_SESSION => SessionMessage::NAME.into(),
        TAG_OT => OtMessage::NAME.into(),
        TAG_GC => GcMessage::NAME.into(),
        TAG_HE => HeMessage::NAME.into(),
        TAG_ONLINE => OnlineMessage::NAME.into(),
        t => format!("unknown (envelope tag {t})"),
    }
}

/// Any protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Session: hello, abort.
    Session(SessionMessage),
    /// Oblivious transfer.
    Ot(OtMessage),
    /// Garbled circuits.
    Gc(GcMessage),
    /// Homomorphic encryption.
    He(HeMessage),
    /// Online shares.
    Online(OnlineMessage),
}

impl Message {
    /// Decodes a whole frame payload (envelope tag first).
    pub fn decode(frame: &[u8]) -> Result<Self, WireError> {
        let Some((&tag, body)) = frame.split_first() else {
            return Err(WireError {
                what: "empty frame (no envelope tag)".into(),
                offset: 0,
            });
        };
        let shift = |mut e: WireError| {
            e.offset += 1;
            e
        };
        Ok(match tag {
            TAG_SESSION => Message::Session(SessionMessage::decode(body).map_err(shift)?),
            TAG_OT => Message::Ot(OtMessage::decode(body).map_err(shift)?),
            TAG_GC => Message::Gc(GcMessage::decode(body).map_err(shift)?),
            TAG_HE => Message::He(HeMessage::decode(body).map_err(shift)?),
            TAG_ONLINE => Message::Online(OnlineMessage::decode(body).map_err(shift)?),
            t => {
                return Err(WireError {
                    what: format!("unknown envelope tag {t}"),
                    offset: 0,
                })
            }
        })
    }

    /// Encodes the message as a frame payload (envelope tag first).
    pub fn encode(&self, out: &mut Vec<u8>) {
        fn put<M: Wire>(m: &M, out: &mut Vec<u8>) {
            if let Some(t) = M::TAG {
                out.push(t);
            }
            m.encode(out);
        }
        match self {
            Message::Session(m) => put(m, out),
            Message::Ot(m) => put(m, out),
            Message::Gc(m) => put(m, out),
            Message::He(m) => put(m, out),
            Message::Online(m) => put(m, out),
        }
    }
}
