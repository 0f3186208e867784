//! The two-party HE offline protocol over a [`Channel`]: typed messages and
//! per-layer client / server functions.

use std::time::Instant;

use rand::{CryptoRng, RngCore};
use sealy::Ciphertext;

use super::cipher::{
    ciphertext_bytes, load_ciphertext, load_reply_ciphertext, ClientKeys, ServerKeys,
};
use super::error::HeError;
use super::linear::{client_decrypt, client_encrypt, server_evaluate, LinearPlan};
use super::params::HeContext;
use super::triples::{self, SquareTripleShares};
use crate::net::{Channel, Wire, WireError, WireReader};

/// Messages of the HE offline phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeMessage {
    /// Client → server: the client's public key.
    PublicKey {
        /// SEAL-serialized key.
        key: Vec<u8>,
    },
    /// Client → server: encrypted input mask of a layer.
    LayerInput {
        /// Layer id.
        layer: u32,
        /// SEAL-serialized ciphertexts.
        ciphertexts: Vec<Vec<u8>>,
    },
    /// Server → client: `Enc(M·r − s)`.
    LayerOutput {
        /// Layer id.
        layer: u32,
        /// SEAL-serialized ciphertexts.
        ciphertexts: Vec<Vec<u8>>,
    },
}

impl HeMessage {
    fn kind(&self) -> &'static str {
        match self {
            HeMessage::PublicKey { .. } => "public key",
            HeMessage::LayerInput { .. } => "layer input",
            HeMessage::LayerOutput { .. } => "layer output",
        }
    }
}

impl Wire for HeMessage {
    const NAME: &'static str = "he";
    const TAG: Option<u8> = Some(crate::msg::TAG_HE);

    fn encode(&self, out: &mut Vec<u8>) {
        let put_cts = |out: &mut Vec<u8>, layer: u32, cts: &[Vec<u8>]| {
            out.extend_from_slice(&layer.to_le_bytes());
            out.extend_from_slice(&(cts.len() as u32).to_le_bytes());
            for c in cts {
                out.extend_from_slice(&(c.len() as u32).to_le_bytes());
                out.extend_from_slice(c);
            }
        };
        match self {
            HeMessage::PublicKey { key } => {
                out.push(0);
                out.extend_from_slice(&(key.len() as u32).to_le_bytes());
                out.extend_from_slice(key);
            }
            HeMessage::LayerInput { layer, ciphertexts } => {
                out.push(1);
                put_cts(out, *layer, ciphertexts);
            }
            HeMessage::LayerOutput { layer, ciphertexts } => {
                out.push(2);
                put_cts(out, *layer, ciphertexts);
            }
        }
    }

    fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = WireReader::new(bytes);
        let tag = r.u8("message tag")?;
        let msg = match tag {
            0 => {
                let n = r.len_prefix(1, "public key length")?;
                HeMessage::PublicKey {
                    key: r.bytes(n, "public key")?.to_vec(),
                }
            }
            1 | 2 => {
                let layer = r.u32("layer id")?;
                let count = r.len_prefix(4, "ciphertext count")?;
                let mut ciphertexts = Vec::with_capacity(count);
                for _ in 0..count {
                    let n = r.len_prefix(1, "ciphertext length")?;
                    ciphertexts.push(r.bytes(n, "ciphertext")?.to_vec());
                }
                if tag == 1 {
                    HeMessage::LayerInput { layer, ciphertexts }
                } else {
                    HeMessage::LayerOutput { layer, ciphertexts }
                }
            }
            t => return Err(r.error(format!("unknown HE message tag {t}"))),
        };
        r.finish("HE message")?;
        Ok(msg)
    }
}

/// Client-side timings and sizes of one layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct ClientLayerStats {
    /// Seconds spent encrypting.
    pub encrypt_s: f64,
    /// Seconds spent decrypting.
    pub decrypt_s: f64,
    /// Serialized ciphertext bytes sent.
    pub bytes_sent: u64,
    /// Serialized ciphertext bytes received.
    pub bytes_received: u64,
}

/// Server-side timing of one layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct ServerLayerStats {
    /// Seconds spent evaluating (multiplications, masking, re-randomising, flooding, serializing).
    pub evaluate_s: f64,
}

fn serialize_all(cts: &[Ciphertext]) -> Result<Vec<Vec<u8>>, HeError> {
    cts.iter().map(ciphertext_bytes).collect()
}

fn load_all(ctx: &HeContext, bytes: &[Vec<u8>], layer: &str) -> Result<Vec<Ciphertext>, HeError> {
    bytes
        .iter()
        .enumerate()
        .map(|(i, b)| load_ciphertext(ctx, b, layer, i))
        .collect()
}

fn load_replies(
    ctx: &HeContext,
    bytes: &[Vec<u8>],
    layer: &str,
) -> Result<Vec<Ciphertext>, HeError> {
    bytes
        .iter()
        .enumerate()
        .map(|(i, b)| load_reply_ciphertext(ctx, b, layer, i))
        .collect()
}

/// Client: sends its public key.
pub async fn client_setup(chan: &mut Channel, keys: &ClientKeys) -> Result<(), HeError> {
    chan.send(&HeMessage::PublicKey {
        key: keys.public_key_bytes()?,
    })
    .await?;
    chan.flush().await?;
    Ok(())
}

/// Server: receives and validates the client's public key.
pub async fn server_setup(chan: &mut Channel, ctx: &HeContext) -> Result<ServerKeys, HeError> {
    match chan.recv::<HeMessage>().await? {
        HeMessage::PublicKey { key } => ServerKeys::from_public_key_bytes(ctx, &key),
        other => Err(HeError::Protocol {
            layer: "setup".into(),
            reason: format!("expected the public key, got a {}", other.kind()),
        }),
    }
}

/// Client: runs one layer; returns its share `c = M·r − s` (layer outputs order).
pub async fn client_layer(
    chan: &mut Channel,
    ctx: &HeContext,
    keys: &ClientKeys,
    layer: u32,
    plan: &LinearPlan,
    mask: &[u64],
) -> Result<(Vec<u64>, ClientLayerStats), HeError> {
    let mut stats = ClientLayerStats::default();
    let t0 = Instant::now();
    let cts = crate::compute::heavy(|| serialize_all(&client_encrypt(ctx, keys, plan, mask)?))?;
    stats.encrypt_s = t0.elapsed().as_secs_f64();
    stats.bytes_sent = cts.iter().map(|c| c.len() as u64).sum();
    chan.send(&HeMessage::LayerInput {
        layer,
        ciphertexts: cts,
    })
    .await?;
    chan.flush().await?;
    let reply = chan.recv::<HeMessage>().await?;
    let name = format!("{layer} ({})", plan.layer);
    let HeMessage::LayerOutput {
        layer: got,
        ciphertexts,
    } = reply
    else {
        return Err(HeError::Protocol {
            layer: name,
            reason: format!("expected a layer output, got a {}", reply.kind()),
        });
    };
    if got != layer {
        return Err(HeError::Protocol {
            layer: name,
            reason: format!("reply is for layer {got}"),
        });
    }
    if ciphertexts.len() != plan.output_ciphertexts() {
        return Err(HeError::Protocol {
            layer: name,
            reason: format!(
                "{} ciphertexts, expected {}",
                ciphertexts.len(),
                plan.output_ciphertexts()
            ),
        });
    }
    stats.bytes_received = ciphertexts.iter().map(|c| c.len() as u64).sum();
    let t1 = Instant::now();
    let share = crate::compute::heavy(|| {
        let cts = load_replies(ctx, &ciphertexts, &name)?;
        client_decrypt(ctx, keys, plan, &cts)
    })?;
    stats.decrypt_s = t1.elapsed().as_secs_f64();
    Ok((share, stats))
}

/// Server: runs one layer; returns its share `s` (layer outputs order).
#[allow(clippy::too_many_arguments)]
pub async fn server_layer<R: RngCore + CryptoRng>(
    chan: &mut Channel,
    ctx: &HeContext,
    keys: &ServerKeys,
    layer: u32,
    plan: &LinearPlan,
    weights: &[i64],
    threads: usize,
    rng: &mut R,
) -> Result<(Vec<u64>, ServerLayerStats), HeError> {
    let msg = chan.recv::<HeMessage>().await?;
    let name = format!("{layer} ({})", plan.layer);
    let HeMessage::LayerInput {
        layer: got,
        ciphertexts,
    } = msg
    else {
        return Err(HeError::Protocol {
            layer: name,
            reason: format!("expected a layer input, got a {}", msg.kind()),
        });
    };
    if got != layer {
        return Err(HeError::Protocol {
            layer: name,
            reason: format!("input is for layer {got}"),
        });
    }
    if ciphertexts.len() != plan.input_ciphertexts() {
        return Err(HeError::Protocol {
            layer: name,
            reason: format!(
                "{} ciphertexts, expected {}",
                ciphertexts.len(),
                plan.input_ciphertexts()
            ),
        });
    }
    let t0 = Instant::now();
    let (out, bytes) = crate::compute::heavy(|| {
        let cts = load_all(ctx, &ciphertexts, &name)?;
        let out = server_evaluate(ctx, keys, plan, weights, &cts, threads, rng)?;
        let bytes = serialize_all(&out.ciphertexts)?;
        Ok::<_, HeError>((out, bytes))
    })?;
    let stats = ServerLayerStats {
        evaluate_s: t0.elapsed().as_secs_f64(),
    };
    chan.send(&HeMessage::LayerOutput {
        layer,
        ciphertexts: bytes,
    })
    .await?;
    chan.flush().await?;
    Ok((out.share, stats))
}

/// Client: generates `count` square triples with the server.
pub async fn client_triples<R: RngCore + CryptoRng>(
    chan: &mut Channel,
    ctx: &HeContext,
    keys: &ClientKeys,
    layer: u32,
    count: usize,
    rng: &mut R,
) -> Result<SquareTripleShares, HeError> {
    let (u, cts) = triples::client_start(ctx, keys, count, rng)?;
    chan.send(&HeMessage::LayerInput {
        layer,
        ciphertexts: serialize_all(&cts)?,
    })
    .await?;
    chan.flush().await?;
    let name = format!("{layer} (triples)");
    match chan.recv::<HeMessage>().await? {
        HeMessage::LayerOutput {
            layer: got,
            ciphertexts,
        } if got == layer => {
            let cts = load_replies(ctx, &ciphertexts, &name)?;
            triples::client_finish(ctx, keys, u, &cts)
        }
        other => Err(HeError::Protocol {
            layer: name,
            reason: format!("unexpected {} message", other.kind()),
        }),
    }
}

/// Server: generates `count` square triples with the client.
pub async fn server_triples<R: RngCore + CryptoRng>(
    chan: &mut Channel,
    ctx: &HeContext,
    keys: &ServerKeys,
    layer: u32,
    count: usize,
    rng: &mut R,
) -> Result<SquareTripleShares, HeError> {
    let name = format!("{layer} (triples)");
    match chan.recv::<HeMessage>().await? {
        HeMessage::LayerInput {
            layer: got,
            ciphertexts,
        } if got == layer => {
            if ciphertexts.len() != count.div_ceil(ctx.n()) {
                return Err(HeError::Protocol {
                    layer: name,
                    reason: format!("{} ciphertexts for {count} triples", ciphertexts.len()),
                });
            }
            let cts = load_all(ctx, &ciphertexts, &name)?;
            let (reply, shares) = triples::server_respond(ctx, keys, count, &cts, rng)?;
            chan.send(&HeMessage::LayerOutput {
                layer,
                ciphertexts: serialize_all(&reply)?,
            })
            .await?;
            chan.flush().await?;
            Ok(shares)
        }
        other => Err(HeError::Protocol {
            layer: name,
            reason: format!("unexpected {} message", other.kind()),
        }),
    }
}

/// Client: the offline material of `t_c.len()` polynomial elements of node `layer`
/// ([`super::poly`]).
pub async fn client_poly(
    chan: &mut Channel,
    ctx: &HeContext,
    keys: &ClientKeys,
    layer: u32,
    t_c: &[u64],
) -> Result<super::poly::ClientPolyShares, HeError> {
    let cts = crate::compute::heavy(|| serialize_all(&super::poly::client_start(ctx, keys, t_c)?))?;
    chan.send(&HeMessage::LayerInput {
        layer,
        ciphertexts: cts,
    })
    .await?;
    chan.flush().await?;
    let name = format!("{layer} (polynomial elements)");
    match chan.recv::<HeMessage>().await? {
        HeMessage::LayerOutput {
            layer: got,
            ciphertexts,
        } if got == layer => crate::compute::heavy(|| {
            let cts = load_replies(ctx, &ciphertexts, &name)?;
            super::poly::client_finish(ctx, keys, t_c.len(), &cts, &name)
        }),
        other => Err(HeError::Protocol {
            layer: name,
            reason: format!("unexpected {} message", other.kind()),
        }),
    }
}

/// Server: answers [`client_poly`] for elements with coefficients `c2`, `c1`.
#[allow(clippy::too_many_arguments)]
pub async fn server_poly<R: RngCore + CryptoRng>(
    chan: &mut Channel,
    ctx: &HeContext,
    keys: &ServerKeys,
    layer: u32,
    c2: &[u64],
    c1: &[u64],
    rng: &mut R,
) -> Result<super::poly::ServerPolyShares, HeError> {
    let name = format!("{layer} (polynomial elements)");
    match chan.recv::<HeMessage>().await? {
        HeMessage::LayerInput {
            layer: got,
            ciphertexts,
        } if got == layer => {
            let expected = 2 * c2.len().div_ceil(ctx.n());
            if ciphertexts.len() != expected {
                return Err(HeError::Protocol {
                    layer: name,
                    reason: format!("{} ciphertexts, expected {expected}", ciphertexts.len()),
                });
            }
            let cts = load_all(ctx, &ciphertexts, &name)?;
            let (reply, shares) = super::poly::server_respond(ctx, keys, c2, c1, &cts, &name, rng)?;
            chan.send(&HeMessage::LayerOutput {
                layer,
                ciphertexts: serialize_all(&reply)?,
            })
            .await?;
            chan.flush().await?;
            Ok(shares)
        }
        other => Err(HeError::Protocol {
            layer: name,
            reason: format!("unexpected {} message", other.kind()),
        }),
    }
}
