//! Session and online-phase messages (envelope tags 1 and 5, see
//! [`crate::msg`]).

use crate::net::{Wire, WireError, WireReader};

/// Largest text a session message carries (reasons, JSON of the public model).
pub const MAX_TEXT: usize = 64 << 20;

/// Session messages: the handshake and an explained abort.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionMessage {
    /// Each party's settings, first message in each direction. The server's
    /// carries the public model (JSON); the client's carries the hash of the
    /// model it expects, if it has one.
    Hello {
        /// Protocol version ([`super::PROTOCOL_VERSION`]).
        version: u32,
        /// The settings that must agree, as `name = value` lines.
        settings: String,
        /// The public model (server) or empty (client).
        model: Vec<u8>,
        /// SHA-256 of the public model (server), or of the expected one (client; zero if none).
        model_hash: [u8; 32],
    },
    /// The sender refuses to continue (handshake mismatch or a failure); the
    /// reason is meant for the other party's user.
    Abort {
        /// One line.
        reason: String,
    },
    /// The sender accepts the handshake.
    Accept,
}

impl SessionMessage {
    /// Variant name, for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            SessionMessage::Hello { .. } => "hello",
            SessionMessage::Abort { .. } => "abort",
            SessionMessage::Accept => "accept",
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn get_bytes<'a>(r: &mut WireReader<'a>, what: &str) -> Result<&'a [u8], WireError> {
    let n = r.len_prefix(1, what)?;
    if n > MAX_TEXT {
        return Err(r.error(format!("{what}: {n} bytes exceed the limit of {MAX_TEXT}")));
    }
    r.bytes(n, what)
}

fn get_text(r: &mut WireReader<'_>, what: &str) -> Result<String, WireError> {
    let at = r.offset();
    let b = get_bytes(r, what)?;
    String::from_utf8(b.to_vec()).map_err(|_| WireError {
        what: format!("{what} is not UTF-8"),
        offset: at,
    })
}

impl Wire for SessionMessage {
    const NAME: &'static str = "session";
    const TAG: Option<u8> = Some(crate::msg::TAG_SESSION);

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            SessionMessage::Hello {
                version,
                settings,
                model,
                model_hash,
            } => {
                out.push(0);
                out.extend_from_slice(&version.to_le_bytes());
                put_bytes(out, settings.as_bytes());
                put_bytes(out, model);
                out.extend_from_slice(model_hash);
            }
            SessionMessage::Abort { reason } => {
                out.push(1);
                put_bytes(out, reason.as_bytes());
            }
            SessionMessage::Accept => out.push(2),
        }
    }

    fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = WireReader::new(bytes);
        let msg = match r.u8("message tag")? {
            0 => {
                let version = r.u32("version")?;
                let settings = get_text(&mut r, "settings")?;
                let model = get_bytes(&mut r, "public model")?.to_vec();
                let mut model_hash = [0u8; 32];
                model_hash.copy_from_slice(r.bytes(32, "model hash")?);
                SessionMessage::Hello {
                    version,
                    settings,
                    model,
                    model_hash,
                }
            }
            1 => SessionMessage::Abort {
                reason: get_text(&mut r, "abort reason")?,
            },
            2 => SessionMessage::Accept,
            t => return Err(r.error(format!("unknown session message tag {t}"))),
        };
        r.finish("session message")?;
        Ok(msg)
    }
}

/// Online-phase messages carrying field elements (8 bytes each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnlineMessage {
    /// Client → server: `x − r` of the network input.
    Input {
        /// Inference number in the session.
        inference: u32,
        /// Field elements.
        values: Vec<u64>,
    },
    /// Client → server: re-shared outputs `z − r'` of a site's garbled or
    /// polynomial elements (step `step` of node `node`).
    Reply {
        /// Node index.
        node: u32,
        /// Step within the node.
        step: u8,
        /// Field elements.
        values: Vec<u64>,
    },
    /// Server → client: the openings `d = t_s − u_s` of a site's polynomial elements.
    Open {
        /// Node index.
        node: u32,
        /// Field elements.
        values: Vec<u64>,
    },
    /// Server → client: the server's share of the logits.
    Logits {
        /// Field elements.
        values: Vec<u64>,
    },
}

impl OnlineMessage {
    /// Variant name, for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            OnlineMessage::Input { .. } => "input",
            OnlineMessage::Reply { .. } => "reply",
            OnlineMessage::Open { .. } => "polynomial opening",
            OnlineMessage::Logits { .. } => "logits",
        }
    }
}

fn put_values(out: &mut Vec<u8>, v: &[u64]) {
    out.reserve(4 + 8 * v.len());
    out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

fn get_values(r: &mut WireReader<'_>, what: &str) -> Result<Vec<u64>, WireError> {
    let n = r.len_prefix(8, what)?;
    let at = r.offset();
    let raw = r.bytes(8 * n, what)?;
    let mut out = Vec::with_capacity(n);
    for (i, c) in raw.chunks_exact(8).enumerate() {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        let v = u64::from_le_bytes(a);
        if v >= pibench_models::fixed::P {
            return Err(WireError {
                what: format!("{what}: element {i} is {v}, not a field element (≥ P)"),
                offset: at + 8 * i,
            });
        }
        out.push(v);
    }
    Ok(out)
}

impl Wire for OnlineMessage {
    const NAME: &'static str = "online";
    const TAG: Option<u8> = Some(crate::msg::TAG_ONLINE);

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            OnlineMessage::Input { inference, values } => {
                out.push(0);
                out.extend_from_slice(&inference.to_le_bytes());
                put_values(out, values);
            }
            OnlineMessage::Reply { node, step, values } => {
                out.push(1);
                out.extend_from_slice(&node.to_le_bytes());
                out.push(*step);
                put_values(out, values);
            }
            OnlineMessage::Open { node, values } => {
                out.push(2);
                out.extend_from_slice(&node.to_le_bytes());
                put_values(out, values);
            }
            OnlineMessage::Logits { values } => {
                out.push(3);
                put_values(out, values);
            }
        }
    }

    fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = WireReader::new(bytes);
        let msg = match r.u8("message tag")? {
            0 => OnlineMessage::Input {
                inference: r.u32("inference")?,
                values: get_values(&mut r, "input")?,
            },
            1 => OnlineMessage::Reply {
                node: r.u32("node")?,
                step: r.u8("step")?,
                values: get_values(&mut r, "reply")?,
            },
            2 => OnlineMessage::Open {
                node: r.u32("node")?,
                values: get_values(&mut r, "opening")?,
            },
            3 => OnlineMessage::Logits {
                values: get_values(&mut r, "logits")?,
            },
            t => return Err(r.error(format!("unknown online message tag {t}"))),
        };
        r.finish("online message")?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let msgs = [
            OnlineMessage::Input {
                inference: 3,
                values: vec![0, 1, pibench_models::fixed::P - 1],
            },
            OnlineMessage::Reply {
                node: 7,
                step: 1,
                values: vec![5; 10],
            },
            OnlineMessage::Open {
                node: 2,
                values: vec![],
            },
            OnlineMessage::Logits { values: vec![9] },
        ];
        for m in msgs {
            let mut b = Vec::new();
            m.encode(&mut b);
            assert_eq!(OnlineMessage::decode(&b).unwrap(), m);
            for cut in 0..b.len() {
                assert!(OnlineMessage::decode(&b[..cut]).is_err());
            }
        }
        let mut b = Vec::new();
        OnlineMessage::Logits {
            values: vec![pibench_models::fixed::P],
        }
        .encode(&mut b);
        let e = OnlineMessage::decode(&b).unwrap_err();
        assert_eq!(e.offset, 5);
        let h = SessionMessage::Hello {
            version: 1,
            settings: "a = b".into(),
            model: vec![1, 2, 3],
            model_hash: [7; 32],
        };
        let mut b = Vec::new();
        h.encode(&mut b);
        assert_eq!(SessionMessage::decode(&b).unwrap(), h);
        assert!(SessionMessage::decode(&[9]).is_err());
    }
}
