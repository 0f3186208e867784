//! The two-party garbled-activation protocol over a [`Channel`].
//!
//! Server = garbler, client = evaluator. Per session, one base-OT phase
//! ([`GarblerSession::setup`], [`EvaluatorSession::setup`]). Per activation
//! site, offline: the client, which knows its share `b` already, extends
//! correlated OTs for the bits of `b_h = b >> f` (phase `offline/ot`); the
//! server garbles with the OT's zero labels as the client's input labels and
//! sends tables plus output decoding (phase `offline/gc`). Online: one
//! message of the server's input labels for `a_h = a >> f` (phase
//! `online/gc`); the client evaluates and holds `z = v + ρ`, the server `ρ`.
//! Sites are processed in chunks of [`CHUNK_CIRCUITS`] circuits so no frame
//! outgrows the channel limit.

use rand::{CryptoRng, RngCore};

use super::engine::{self, CircuitShape, GarblerKeys, Garbling};
use super::garble::GarbledTables;
use super::hash::{AesPrg, Block};
use super::{ActivationKind, GcError, Scheme};
use crate::net::{Channel, NetError, Wire, WireError, WireReader};
use crate::ot::{CotReceiver, CotSender, OtError};

/// Circuits per message (4096 half-gates ReLUs ≈ 28 MB of tables).
pub const CHUNK_CIRCUITS: usize = 4096;

/// Phase names used for traffic accounting.
pub mod phase {
    /// Base OTs and OT extension.
    pub const OFFLINE_OT: &str = "offline/ot";
    /// Garbled tables and output decoding.
    pub const OFFLINE_GC: &str = "offline/gc";
    /// Garbler's input labels.
    pub const ONLINE_GC: &str = "online/gc";
}

/// Every message of the GC protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GcMessage {
    /// Garbled tables and output decoding of one chunk.
    Garbled {
        /// Garbling scheme code.
        scheme: u8,
        /// Activation kind code.
        kind: u8,
        /// Batch tweak (chunk sequence number in the session).
        batch: u64,
        /// Circuits in this chunk.
        circuits: u32,
        /// Table words.
        words: Vec<u64>,
        /// Control bits, one byte per gate in memory, 5 bits per gate on the wire.
        control: Vec<u8>,
        /// Output decoding field elements.
        decoding: Vec<u64>,
    },
    /// The garbler's input labels of one chunk.
    GarblerLabels {
        /// Batch tweak of the chunk.
        batch: u64,
        /// Labels, circuit-major.
        labels: Vec<Block>,
    },
}

impl GcMessage {
    fn kind_name(&self) -> &'static str {
        match self {
            GcMessage::Garbled { .. } => "garbled tables",
            GcMessage::GarblerLabels { .. } => "garbler labels",
        }
    }
}

fn pack_control(control: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + (control.len() * 5).div_ceil(8), 0);
    for (g, &z) in control.iter().enumerate() {
        for k in 0..5 {
            let bit = g * 5 + k;
            out[start + bit / 8] |= ((z >> k) & 1) << (bit % 8);
        }
    }
}

fn unpack_control(bytes: &[u8], gates: usize) -> Vec<u8> {
    (0..gates)
        .map(|g| {
            (0..5).fold(0u8, |z, k| {
                let bit = g * 5 + k;
                z | ((bytes[bit / 8] >> (bit % 8)) & 1) << k
            })
        })
        .collect()
}

fn read_u64s(r: &mut WireReader<'_>, what: &str) -> Result<Vec<u64>, WireError> {
    let n = r.len_prefix(8, what)?;
    let raw = r.bytes(n * 8, what)?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect())
}

impl Wire for GcMessage {
    const NAME: &'static str = "gc";
    const TAG: Option<u8> = Some(crate::msg::TAG_GC);

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            GcMessage::Garbled {
                scheme,
                kind,
                batch,
                circuits,
                words,
                control,
                decoding,
            } => {
                out.reserve(32 + words.len() * 8 + control.len() + decoding.len() * 8);
                out.push(0);
                out.push(*scheme);
                out.push(*kind);
                out.extend_from_slice(&batch.to_le_bytes());
                out.extend_from_slice(&circuits.to_le_bytes());
                out.extend_from_slice(&(words.len() as u32).to_le_bytes());
                for w in words {
                    out.extend_from_slice(&w.to_le_bytes());
                }
                out.extend_from_slice(&(control.len() as u32).to_le_bytes());
                pack_control(control, out);
                out.extend_from_slice(&(decoding.len() as u32).to_le_bytes());
                for d in decoding {
                    out.extend_from_slice(&d.to_le_bytes());
                }
            }
            GcMessage::GarblerLabels { batch, labels } => {
                out.reserve(13 + labels.len() * 16);
                out.push(1);
                out.extend_from_slice(&batch.to_le_bytes());
                out.extend_from_slice(&(labels.len() as u32).to_le_bytes());
                for l in labels {
                    out.extend_from_slice(&l.to_le_bytes());
                }
            }
        }
    }

    fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = WireReader::new(bytes);
        let msg = match r.u8("message tag")? {
            0 => {
                let scheme = r.u8("scheme")?;
                let kind = r.u8("activation kind")?;
                let batch = r.u64("batch")?;
                let circuits = r.u32("circuit count")?;
                let words = read_u64s(&mut r, "table words")?;
                let gates = r.u32("control gate count")? as usize;
                let packed_len = gates
                    .checked_mul(5)
                    .map(|b| b.div_ceil(8))
                    .ok_or_else(|| r.error("control gate count overflows"))?;
                let packed = r.bytes(packed_len, "control bits")?;
                let control = unpack_control(packed, gates);
                let decoding = read_u64s(&mut r, "output decoding")?;
                GcMessage::Garbled {
                    scheme,
                    kind,
                    batch,
                    circuits,
                    words,
                    control,
                    decoding,
                }
            }
            1 => {
                let batch = r.u64("batch")?;
                let n = r.len_prefix(16, "garbler labels")?;
                let raw = r.bytes(n * 16, "garbler labels")?;
                let labels = raw
                    .chunks_exact(16)
                    .map(|c| u128::from_le_bytes(c.try_into().unwrap_or([0; 16])))
                    .collect();
                GcMessage::GarblerLabels { batch, labels }
            }
            t => {
                return Err(WireError {
                    what: format!("unknown GC message tag {t}"),
                    offset: 0,
                })
            }
        };
        r.finish("GC message")?;
        Ok(msg)
    }
}

fn net(site: &str) -> impl Fn(NetError) -> GcError + '_ {
    move |source| GcError::Net {
        site: site.to_string(),
        source,
    }
}

fn ot(site: &str) -> impl Fn(OtError) -> GcError + '_ {
    move |source| GcError::Ot {
        site: site.to_string(),
        source,
    }
}

fn check_inputs(
    shape: &CircuitShape,
    values: &[u64],
    what: &'static str,
    site: &str,
) -> Result<(), GcError> {
    match values
        .iter()
        .enumerate()
        .find(|(_, &v)| v > shape.spec.modulus)
    {
        Some((index, &value)) => Err(GcError::Range {
            site: site.to_string(),
            what,
            index,
            value,
            max: shape.spec.modulus,
        }),
        None => Ok(()),
    }
}

/// The garbler's (server's) session: Δ-COT sender and label PRG.
#[derive(Debug)]
pub struct GarblerSession {
    cot: CotSender,
    prg: AesPrg,
    next_batch: u64,
}

/// What the garbler keeps for one site after the offline phase.
#[derive(Debug)]
pub struct GarblerSite {
    shape: CircuitShape,
    chunks: Vec<(u64, GarblerKeys)>,
}

impl GarblerSite {
    /// Circuits at this site.
    pub fn count(&self) -> usize {
        self.chunks.iter().map(|(_, k)| k.output_masks.len()).sum()
    }

    /// `ρ` per circuit: the client learns `v + ρ`.
    pub fn output_masks(&self) -> Vec<u64> {
        self.chunks
            .iter()
            .flat_map(|(_, k)| k.output_masks.iter().copied())
            .collect()
    }
}

impl GarblerSession {
    /// Base-OT phase (phase `offline/ot`).
    pub async fn setup<R: RngCore + CryptoRng>(
        ch: &mut Channel,
        rng: &mut R,
    ) -> Result<Self, GcError> {
        ch.set_phase(phase::OFFLINE_OT);
        let cot = CotSender::setup(ch, rng)
            .await
            .map_err(ot("GC session setup"))?;
        Ok(Self {
            cot,
            prg: AesPrg::from_rng(rng),
            next_batch: 0,
        })
    }

    /// The free-XOR offset (shared with the COT correlation).
    pub fn delta(&self) -> Block {
        self.cot.delta()
    }

    /// Offline phase of one site with `count` circuits.
    pub async fn offline(
        &mut self,
        ch: &mut Channel,
        shape: &CircuitShape,
        count: usize,
        site: &str,
    ) -> Result<GarblerSite, GcError> {
        let n = shape.input_bits();
        let mut chunks = Vec::new();
        let mut done = 0;
        while done < count {
            let m = CHUNK_CIRCUITS.min(count - done);
            ch.set_phase(phase::OFFLINE_OT);
            let q = self.cot.extend(ch, m * n).await.map_err(ot(site))?;
            let batch = self.next_batch;
            self.next_batch += 1;
            let (garbling, keys) =
                engine::garble(shape, self.cot.delta(), batch, &q, &mut self.prg, site)?;
            ch.set_phase(phase::OFFLINE_GC);
            let Garbling { tables, decoding } = garbling;
            ch.send(&GcMessage::Garbled {
                scheme: shape.scheme.code(),
                kind: shape.kind.code(),
                batch,
                circuits: m as u32,
                words: tables.words,
                control: tables.control,
                decoding,
            })
            .await
            .map_err(net(site))?;
            chunks.push((batch, keys));
            done += m;
        }
        ch.flush().await.map_err(net(site))?;
        Ok(GarblerSite {
            shape: shape.clone(),
            chunks,
        })
    }

    /// Online phase: sends the labels of `a_h` (one value `≤ P_f` per circuit).
    pub async fn online(
        &self,
        ch: &mut Channel,
        state: &GarblerSite,
        a_h: &[u64],
        site: &str,
    ) -> Result<(), GcError> {
        if a_h.len() != state.count() {
            return Err(GcError::Length {
                site: site.to_string(),
                what: "garbler inputs",
                expected: state.count(),
                got: a_h.len(),
                unit: "values",
            });
        }
        check_inputs(&state.shape, a_h, "garbler input a_h", site)?;
        ch.set_phase(phase::ONLINE_GC);
        let mut done = 0;
        for (batch, keys) in &state.chunks {
            let m = keys.output_masks.len();
            let labels =
                engine::encode_garbler_inputs(&state.shape, keys, &a_h[done..done + m], site)?;
            ch.send(&GcMessage::GarblerLabels {
                batch: *batch,
                labels,
            })
            .await
            .map_err(net(site))?;
            done += m;
        }
        ch.flush().await.map_err(net(site))?;
        Ok(())
    }
}

/// The evaluator's (client's) session: Δ-COT receiver.
#[derive(Debug)]
pub struct EvaluatorSession {
    cot: CotReceiver,
    next_batch: u64,
}

/// What the evaluator keeps for one site after the offline phase.
#[derive(Debug)]
pub struct EvaluatorSite {
    shape: CircuitShape,
    chunks: Vec<(u64, Garbling, Vec<Block>)>,
}

impl EvaluatorSite {
    /// Circuits at this site.
    pub fn count(&self) -> usize {
        let n = self.shape.input_bits();
        self.chunks.iter().map(|(_, _, l)| l.len() / n).sum()
    }
}

impl EvaluatorSession {
    /// Base-OT phase (phase `offline/ot`).
    pub async fn setup<R: RngCore + CryptoRng>(
        ch: &mut Channel,
        rng: &mut R,
    ) -> Result<Self, GcError> {
        ch.set_phase(phase::OFFLINE_OT);
        let cot = CotReceiver::setup(ch, rng)
            .await
            .map_err(ot("GC session setup"))?;
        Ok(Self { cot, next_batch: 0 })
    }

    /// Offline phase of one site: OT for the bits of `b_h` (`≤ P_f` each), then the garbled material.
    pub async fn offline(
        &mut self,
        ch: &mut Channel,
        shape: &CircuitShape,
        b_h: &[u64],
        site: &str,
    ) -> Result<EvaluatorSite, GcError> {
        check_inputs(shape, b_h, "evaluator input b_h", site)?;
        let n = shape.input_bits();
        let mut chunks = Vec::new();
        for part in b_h.chunks(CHUNK_CIRCUITS) {
            let m = part.len();
            let choices: Vec<bool> = part
                .iter()
                .flat_map(|&v| (0..n).map(move |i| (v >> i) & 1 == 1))
                .collect();
            ch.set_phase(phase::OFFLINE_OT);
            let labels = self.cot.extend(ch, &choices).await.map_err(ot(site))?;
            ch.set_phase(phase::OFFLINE_GC);
            let msg: GcMessage = ch.recv().await.map_err(net(site))?;
            let batch = self.next_batch;
            self.next_batch += 1;
            let GcMessage::Garbled {
                scheme,
                kind,
                batch: got_batch,
                circuits,
                words,
                control,
                decoding,
            } = msg
            else {
                return Err(GcError::Unexpected {
                    site: site.to_string(),
                    got: msg.kind_name(),
                    expected: "garbled tables",
                });
            };
            if Scheme::from_code(scheme) != Some(shape.scheme)
                || ActivationKind::from_code(kind) != Some(shape.kind)
                || got_batch != batch
            {
                return Err(GcError::Parameters {
                    reason: format!(
                        "{site}: garbled chunk has scheme {scheme}, kind {kind}, batch {got_batch}; \
                         expected {}, {}, {batch}",
                        shape.scheme.code(),
                        shape.kind.code()
                    ),
                });
            }
            if circuits as usize != m {
                return Err(GcError::Length {
                    site: site.to_string(),
                    what: "garbled chunk",
                    expected: m,
                    got: circuits as usize,
                    unit: "circuits",
                });
            }
            let expect_words = shape.table_words(m);
            if words.len() != expect_words {
                return Err(GcError::Length {
                    site: site.to_string(),
                    what: "garbled tables",
                    expected: expect_words * 8,
                    got: words.len() * 8,
                    unit: "bytes",
                });
            }
            let garbling = Garbling {
                tables: GarbledTables { words, control },
                decoding,
            };
            chunks.push((batch, garbling, labels));
        }
        Ok(EvaluatorSite {
            shape: shape.clone(),
            chunks,
        })
    }

    /// Online phase: receives the garbler's labels and evaluates; returns `z = v + ρ` per circuit.
    pub async fn online(
        &self,
        ch: &mut Channel,
        state: &EvaluatorSite,
        site: &str,
    ) -> Result<Vec<u64>, GcError> {
        ch.set_phase(phase::ONLINE_GC);
        let mut out = Vec::with_capacity(state.count());
        for (batch, garbling, labels) in &state.chunks {
            let msg: GcMessage = ch.recv().await.map_err(net(site))?;
            let GcMessage::GarblerLabels {
                batch: got_batch,
                labels: garbler_labels,
            } = msg
            else {
                return Err(GcError::Unexpected {
                    site: site.to_string(),
                    got: msg.kind_name(),
                    expected: "garbler labels",
                });
            };
            if got_batch != *batch {
                return Err(GcError::Parameters {
                    reason: format!("{site}: labels for batch {got_batch}, expected batch {batch}"),
                });
            }
            let z = engine::evaluate(
                &state.shape,
                *batch,
                garbling,
                &garbler_labels,
                labels,
                site,
            )?;
            out.extend(z);
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------- storage
//
// Offline material on disk (the inference store): each site is written as
// its chunks in order; reading takes the expected shape and circuit count
// from the caller (the protocol plan), derives every length from them and
// checks every field, so a truncated or foreign file is an error naming the
// byte offset, never an allocation the plan does not call for.

/// Reads little-endian words from a stream, counting the offset for errors.
#[derive(Debug)]
pub struct StoreReader<R> {
    inner: R,
    offset: u64,
    what: String,
}

impl<R: std::io::Read> StoreReader<R> {
    /// Wraps a reader; `what` names the file in errors.
    pub fn new(inner: R, what: impl Into<String>) -> Self {
        Self {
            inner,
            offset: 0,
            what: what.into(),
        }
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// An error at the current offset.
    pub fn error(&self, reason: impl Into<String>) -> GcError {
        GcError::Store {
            file: self.what.clone(),
            offset: self.offset,
            reason: reason.into(),
        }
    }

    /// Fills `buf` exactly.
    pub fn bytes(&mut self, buf: &mut [u8], what: &str) -> Result<(), GcError> {
        self.inner
            .read_exact(buf)
            .map_err(|e| self.error(format!("{what}: {e}")))?;
        self.offset += buf.len() as u64;
        Ok(())
    }

    /// One `u64`.
    pub fn u64(&mut self, what: &str) -> Result<u64, GcError> {
        let mut b = [0u8; 8];
        self.bytes(&mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }

    /// `n` `u64`s (the caller bounds `n`).
    pub fn u64s(&mut self, n: usize, what: &str) -> Result<Vec<u64>, GcError> {
        let mut raw = vec![0u8; 8 * n];
        self.bytes(&mut raw, what)?;
        Ok(raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect())
    }

    /// `n` field elements (each checked `< P`).
    pub fn field(&mut self, n: usize, what: &str) -> Result<Vec<u64>, GcError> {
        let at = self.offset;
        let v = self.u64s(n, what)?;
        if let Some(i) = v.iter().position(|&x| x >= pibench_models::fixed::P) {
            return Err(GcError::Store {
                file: self.what.clone(),
                offset: at + 8 * i as u64,
                reason: format!("{what}: element {i} is not a field element"),
            });
        }
        Ok(v)
    }

    /// `n` labels.
    pub fn blocks(&mut self, n: usize, what: &str) -> Result<Vec<Block>, GcError> {
        let mut raw = vec![0u8; 16 * n];
        self.bytes(&mut raw, what)?;
        Ok(raw
            .chunks_exact(16)
            .map(|c| u128::from_le_bytes(c.try_into().unwrap_or([0; 16])))
            .collect())
    }
}

fn put_u64s(w: &mut impl std::io::Write, v: &[u64]) -> std::io::Result<()> {
    for x in v {
        w.write_all(&x.to_le_bytes())?;
    }
    Ok(())
}

fn put_blocks(w: &mut impl std::io::Write, v: &[Block]) -> std::io::Result<()> {
    for x in v {
        w.write_all(&x.to_le_bytes())?;
    }
    Ok(())
}

/// Chunk sizes of `count` circuits, as [`GarblerSession::offline`] makes them.
fn chunk_sizes(count: usize) -> impl Iterator<Item = usize> {
    (0..count.div_ceil(CHUNK_CIRCUITS)).map(move |k| CHUNK_CIRCUITS.min(count - k * CHUNK_CIRCUITS))
}

impl GarblerSite {
    /// Writes the site (batch tweaks, Δ, input zero labels, output masks per chunk).
    pub fn write_to(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        for (batch, keys) in &self.chunks {
            w.write_all(&batch.to_le_bytes())?;
            w.write_all(&keys.delta.to_le_bytes())?;
            put_blocks(w, &keys.input_zero_labels)?;
            put_u64s(w, &keys.output_masks)?;
        }
        Ok(())
    }

    /// Reads a site of `count` circuits of `shape` written by [`GarblerSite::write_to`].
    pub fn read_from<R: std::io::Read>(
        r: &mut StoreReader<R>,
        shape: &CircuitShape,
        count: usize,
    ) -> Result<Self, GcError> {
        let n = shape.input_bits();
        let mut chunks = Vec::new();
        for m in chunk_sizes(count) {
            let batch = r.u64("batch")?;
            let delta = r.blocks(1, "delta")?[0];
            let input_zero_labels = r.blocks(m * n, "garbler input labels")?;
            let output_masks = r.field(m, "output masks")?;
            chunks.push((
                batch,
                GarblerKeys {
                    delta,
                    input_zero_labels,
                    output_masks,
                },
            ));
        }
        Ok(Self {
            shape: shape.clone(),
            chunks,
        })
    }
}

impl EvaluatorSite {
    /// Writes the site (batch tweaks, tables, control bits, decoding, input labels per chunk).
    pub fn write_to(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        for (batch, garbling, labels) in &self.chunks {
            w.write_all(&batch.to_le_bytes())?;
            put_u64s(w, &garbling.tables.words)?;
            w.write_all(&garbling.tables.control)?;
            put_u64s(w, &garbling.decoding)?;
            put_blocks(w, labels)?;
        }
        Ok(())
    }

    /// Reads a site of `count` circuits of `shape` written by [`EvaluatorSite::write_to`].
    pub fn read_from<R: std::io::Read>(
        r: &mut StoreReader<R>,
        shape: &CircuitShape,
        count: usize,
    ) -> Result<Self, GcError> {
        let n = shape.input_bits();
        let mut chunks = Vec::new();
        for m in chunk_sizes(count) {
            let batch = r.u64("batch")?;
            let words = r.u64s(shape.table_words(m), "garbled tables")?;
            let mut control = vec![0u8; shape.control_len(m)];
            r.bytes(&mut control, "control bits")?;
            if let Some(i) = control.iter().position(|&c| c >= 32) {
                return Err(r.error(format!("control byte {i} has more than 5 bits")));
            }
            let decoding = r.field(shape.decoding_len(m), "output decoding")?;
            let labels = r.blocks(m * n, "evaluator input labels")?;
            chunks.push((
                batch,
                Garbling {
                    tables: GarbledTables { words, control },
                    decoding,
                },
                labels,
            ));
        }
        Ok(Self {
            shape: shape.clone(),
            chunks,
        })
    }
}
