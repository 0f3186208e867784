//! The two-party garbled-activation protocol over a [`Channel`].
//!
//! Server = garbler, client = evaluator. Per session, one base-OT phase
//! ([`GarblerSession::setup`], [`EvaluatorSession::setup`]). Per activation
//! site, offline: the client, which knows its share `b` already, extends
//! correlated OTs for the bits of `b_h = b >> f` (phase `offline/ot`); the
//! server garbles with the OT's zero labels as the client's input labels and
//! sends tables plus output decoding (phase `offline/gc`). Online: the
//! server's input labels for `a_h = a >> f` (phase `online/gc`); the client
//! evaluates and holds `z = v + ρ`, the server `ρ`.
//!
//! # Pieces, threads and streaming
//! A site of `count` circuits is cut into pieces ([`piece_sizes`], a
//! function of `count` only, at most [`PIECE_CIRCUITS`] circuits each):
//! one OT-extension message, one garbled-tables message and one
//! label message per piece, each piece with its own batch tweak. Each
//! party processes up to `threads` pieces at a time on worker threads
//! (`tokio::task::spawn_blocking`) and hands finished pieces to the channel
//! in order while later pieces are still being computed, so sending
//! overlaps computing ([`GarblerSession::set_threads`],
//! [`EvaluatorSession::set_threads`]; with one thread everything runs on
//! the calling task, in order). Offline, the OT messages of a site all go
//! first (client → server), then the tables (server → client): each party
//! only writes or only reads in each stage, so no buffer size can deadlock
//! the two. The output does not depend on the thread count: the pieces, their
//! tweaks and their randomness (drawn in piece order from the session PRG)
//! are the same.
//!
//! Each session accumulates the wall time of its stages ([`GcTimings`]):
//! what `pibench micro relu` reports from its two-party run.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rand::{CryptoRng, RngCore};

use super::engine::{self, CircuitShape, GarbleSeeds, GarblerKeys, Garbling};
use super::garble::GarbledTables;
use super::hash::{AesPrg, Block, FixedKeyHash, Kernel};
use super::{ActivationKind, GcError, Scheme};
use crate::net::{Channel, NetError, Wire, WireError, WireReader};
use crate::ot::{CotReceiver, CotSender, OtError, OtMessage, KAPPA};

/// Most circuits per piece (1024 half-gates ReLUs ≈ 6.9 MB of tables).
pub const PIECE_CIRCUITS: usize = 1024;

/// Fewest circuits per piece of a site cut into more than one piece.
const MIN_PIECE_CIRCUITS: usize = 64;

/// How a site of `count` circuits is cut into pieces: about 16 pieces (so
/// small sites still spread over threads), each a multiple of 16 circuits
/// between 64 and [`PIECE_CIRCUITS`], the last one shorter.
pub fn piece_sizes(count: usize) -> Vec<usize> {
    let size = count
        .div_ceil(16)
        .next_multiple_of(16)
        .clamp(MIN_PIECE_CIRCUITS, PIECE_CIRCUITS);
    (0..count.div_ceil(size))
        .map(|k| size.min(count - k * size))
        .collect()
}

/// Phase names used for traffic accounting.
pub mod phase {
    /// Base OTs and OT extension.
    pub const OFFLINE_OT: &str = "offline/ot";
    /// Garbled tables and output decoding.
    pub const OFFLINE_GC: &str = "offline/gc";
    /// Garbler's input labels.
    pub const ONLINE_GC: &str = "online/gc";
}

/// Wall time one party spent in each stage of its GC sessions, and the work done.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct GcTimings {
    /// OT extension (this party's side: from the first message to the last
    /// labels, including waiting for the peer's messages), seconds.
    pub ot_s: f64,
    /// Correlated OTs extended.
    pub ots: u64,
    /// Garbling (garbler): from the OT labels to the last piece handed to the channel, seconds.
    pub garble_s: f64,
    /// Circuits garbled.
    pub garbled: u64,
    /// Encoding and sending the garbler's online labels, seconds.
    pub encode_s: f64,
    /// Evaluation (evaluator): from the first label message to the last result, seconds.
    pub evaluate_s: f64,
    /// Circuits evaluated.
    pub evaluated: u64,
}

/// Every message of the GC protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GcMessage {
    /// Garbled tables and output decoding of one piece.
    Garbled {
        /// Garbling scheme code.
        scheme: u8,
        /// Activation kind code.
        kind: u8,
        /// Batch tweak (piece sequence number in the session).
        batch: u64,
        /// Circuits in this piece.
        circuits: u32,
        /// Table words.
        words: Vec<u64>,
        /// Control bits, one byte per gate in memory, 5 bits per gate on the wire.
        control: Vec<u8>,
        /// Output decoding field elements.
        decoding: Vec<u64>,
    },
    /// The garbler's input labels of one piece.
    GarblerLabels {
        /// Batch tweak of the piece.
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

/// Packs the low 5 bits of each control byte, 8 gates (40 bits) at a time.
fn pack_control(control: &[u8], out: &mut Vec<u8>) {
    let mut groups = control.chunks_exact(8);
    for g in &mut groups {
        let mut acc = 0u64;
        for (k, &z) in g.iter().enumerate() {
            acc |= u64::from(z & 31) << (5 * k);
        }
        out.extend_from_slice(&acc.to_le_bytes()[..5]);
    }
    let rest = groups.remainder();
    if !rest.is_empty() {
        let mut acc = 0u64;
        for (k, &z) in rest.iter().enumerate() {
            acc |= u64::from(z & 31) << (5 * k);
        }
        out.extend_from_slice(&acc.to_le_bytes()[..(rest.len() * 5).div_ceil(8)]);
    }
}

/// Inverse of [`pack_control`] (`bytes` holds `(gates · 5).div_ceil(8)` bytes).
fn unpack_control(bytes: &[u8], gates: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(gates);
    for (k, group) in bytes.chunks(5).enumerate() {
        let mut b = [0u8; 8];
        b[..group.len()].copy_from_slice(group);
        let acc = u64::from_le_bytes(b);
        let n = 8.min(gates - 8 * k);
        out.extend((0..n).map(|g| (acc >> (5 * g)) as u8 & 31));
    }
    out
}

fn put_words(out: &mut Vec<u8>, words: &[u64]) {
    #[cfg(target_endian = "little")]
    out.extend_from_slice(bytemuck::cast_slice(words));
    #[cfg(not(target_endian = "little"))]
    for w in words {
        out.extend_from_slice(&w.to_le_bytes());
    }
}

fn read_u64s(r: &mut WireReader<'_>, what: &str) -> Result<Vec<u64>, WireError> {
    let n = r.len_prefix(8, what)?;
    let raw = r.bytes(n * 8, what)?;
    // One pass, no zeroing first (compiles to a copy on little-endian targets).
    let mut v = Vec::with_capacity(n);
    v.extend(
        raw.chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))),
    );
    Ok(v)
}

/// The little-endian bytes of `words`: borrowed on little-endian targets.
fn le_words(words: &[u64]) -> std::borrow::Cow<'_, [u8]> {
    #[cfg(target_endian = "little")]
    return std::borrow::Cow::Borrowed(bytemuck::cast_slice(words));
    #[cfg(not(target_endian = "little"))]
    {
        let mut v = Vec::with_capacity(words.len() * 8);
        put_words(&mut v, words);
        std::borrow::Cow::Owned(v)
    }
}

/// The one layout of a [`GcMessage::Garbled`] body, as the bytes around its
/// two word arrays: `head` (variant, scheme, kind, batch, circuits, table
/// word count), the table words, `mid` (control gate count, packed control
/// bits, decoding count), the decoding words. [`GcMessage::encode`] and
/// [`send_garbled`] both write it.
fn garbled_layout(
    scheme: u8,
    kind: u8,
    batch: u64,
    circuits: u32,
    words: &[u64],
    control: &[u8],
    decoding: &[u64],
) -> ([u8; 19], Vec<u8>) {
    let mut head = [0u8; 19];
    head[1] = scheme;
    head[2] = kind;
    head[3..11].copy_from_slice(&batch.to_le_bytes());
    head[11..15].copy_from_slice(&circuits.to_le_bytes());
    head[15..19].copy_from_slice(&(words.len() as u32).to_le_bytes());
    let mut mid = Vec::with_capacity(8 + control.len());
    mid.extend_from_slice(&(control.len() as u32).to_le_bytes());
    pack_control(control, &mut mid);
    mid.extend_from_slice(&(decoding.len() as u32).to_le_bytes());
    (head, mid)
}

/// Sends piece `batch`'s garbled material as a [`GcMessage::Garbled`]
/// frame with the tables written straight from `garbling` (no copy into a
/// frame buffer: 6.5 KB per half-gates ReLU).
async fn send_garbled(
    ch: &mut Channel,
    shape: &CircuitShape,
    batch: u64,
    circuits: usize,
    garbling: &Garbling,
) -> Result<(), NetError> {
    let (words, decoding) = (&garbling.tables.words, &garbling.decoding);
    let (head, mid) = garbled_layout(
        shape.scheme.code(),
        shape.kind.code(),
        batch,
        circuits as u32,
        words,
        &garbling.tables.control,
        decoding,
    );
    let parts: [&[u8]; 5] = [
        &[crate::msg::TAG_GC],
        &head,
        &le_words(words),
        &mid,
        &le_words(decoding),
    ];
    ch.send_parts(&parts, GcMessage::NAME).await
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
                let (head, mid) =
                    garbled_layout(*scheme, *kind, *batch, *circuits, words, control, decoding);
                out.reserve(head.len() + words.len() * 8 + mid.len() + decoding.len() * 8);
                out.extend_from_slice(&head);
                put_words(out, words);
                out.extend_from_slice(&mid);
                put_words(out, decoding);
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

/// The thread count sessions start with: every core.
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Seconds since `t`.
fn since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// Up to `threads` jobs in flight on blocking worker threads, results taken
/// in submission order. With one thread a job runs at submission, on the
/// calling task.
struct Pipeline<T> {
    slots: VecDeque<Slot<T>>,
    threads: usize,
}

enum Slot<T> {
    Ready(Result<T, GcError>),
    Running(tokio::task::JoinHandle<Result<T, GcError>>),
}

impl<T: Send + 'static> Pipeline<T> {
    fn new(threads: usize) -> Self {
        Self {
            slots: VecDeque::new(),
            threads: threads.max(1),
        }
    }

    fn has_room(&self) -> bool {
        self.slots.len() < self.threads
    }

    fn submit(&mut self, job: impl FnOnce() -> Result<T, GcError> + Send + 'static) {
        if self.threads == 1 {
            self.slots.push_back(Slot::Ready(job()));
        } else {
            self.slots
                .push_back(Slot::Running(tokio::task::spawn_blocking(job)));
        }
    }

    /// The oldest job's result (`None` when nothing is in flight).
    async fn next(&mut self, site: &str) -> Option<Result<T, GcError>> {
        Some(match self.slots.pop_front()? {
            Slot::Ready(r) => r,
            Slot::Running(h) => match h.await {
                Ok(r) => r,
                Err(e) => Err(GcError::Worker {
                    site: site.to_string(),
                    reason: e.to_string(),
                }),
            },
        })
    }
}

/// Packs the bits of `values` (`n` each, circuit-major: OT `c·n + i` is bit
/// `i` of value `c`) as OT choice blocks.
fn pack_value_bits(values: &[u64], n: usize) -> Vec<u128> {
    let mut packed = vec![0u128; (values.len() * n).div_ceil(KAPPA)];
    for (c, &v) in values.iter().enumerate() {
        for i in 0..n {
            let j = c * n + i;
            packed[j / KAPPA] |= (((v >> i) & 1) as u128) << (j % KAPPA);
        }
    }
    packed
}

/// The garbler's (server's) session: Δ-COT sender and label PRG.
#[derive(Debug)]
pub struct GarblerSession {
    cot: CotSender,
    prg: AesPrg,
    next_batch: u64,
    threads: usize,
    hash: Arc<FixedKeyHash>,
    timings: Mutex<GcTimings>,
}

/// What the garbler keeps for one site after the offline phase.
#[derive(Debug)]
pub struct GarblerSite {
    shape: CircuitShape,
    pieces: Vec<(u64, GarblerKeys)>,
}

impl GarblerSite {
    /// Circuits at this site.
    pub fn count(&self) -> usize {
        self.pieces.iter().map(|(_, k)| k.output_masks.len()).sum()
    }

    /// Hands the site's buffers to `pool`.
    pub fn recycle(self, pool: &StorePool) {
        for (_, k) in self.pieces {
            pool.give(k.input_zero_labels);
            pool.give(k.output_masks);
        }
    }

    /// `ρ` per circuit: the client learns `v + ρ`.
    pub fn output_masks(&self) -> Vec<u64> {
        self.pieces
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
            threads: default_threads(),
            hash: Arc::new(FixedKeyHash::new()),
            timings: Mutex::new(GcTimings::default()),
        })
    }

    /// The free-XOR offset (shared with the COT correlation).
    pub fn delta(&self) -> Block {
        self.cot.delta()
    }

    /// Threads for OT extension, garbling and encoding (default: every core).
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    /// The thread count.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Chooses the gate kernels (default: the fastest this CPU has); the
    /// tables do not depend on the choice.
    pub fn set_kernel(&mut self, kernel: Kernel) -> Result<(), GcError> {
        self.hash = Arc::new(FixedKeyHash::with_kernel(kernel)?);
        Ok(())
    }

    /// The gate kernels in use.
    pub fn kernel(&self) -> Kernel {
        self.hash.kernel()
    }

    /// Stage timings accumulated since the session started (or the last reset).
    pub fn timings(&self) -> GcTimings {
        self.timings.lock().map(|t| *t).unwrap_or_default()
    }

    /// Starts the stage timings from zero.
    pub fn reset_timings(&self) {
        if let Ok(mut t) = self.timings.lock() {
            *t = GcTimings::default();
        }
    }

    fn add_timings(&self, f: impl FnOnce(&mut GcTimings)) {
        if let Ok(mut t) = self.timings.lock() {
            f(&mut t);
        }
    }

    /// Offline phase of one site with `count` circuits.
    pub async fn offline(
        &mut self,
        ch: &mut Channel,
        shape: &CircuitShape,
        count: usize,
        site: &str,
    ) -> Result<GarblerSite, GcError> {
        shape.kind.validate()?;
        let n = shape.input_bits();
        let sizes = piece_sizes(count);
        // Stage 1: the client's OT messages, one per piece, extended on the workers.
        ch.set_phase(phase::OFFLINE_OT);
        let start = Instant::now();
        let mut qs: Vec<Vec<Block>> = Vec::with_capacity(sizes.len());
        let mut pipe = Pipeline::new(self.threads);
        let mut next = 0;
        while qs.len() < sizes.len() {
            while next < sizes.len() && pipe.has_room() {
                let msg: OtMessage = ch.recv().await.map_err(net(site))?;
                let job = self.cot.job(sizes[next] * n);
                let name = site.to_string();
                pipe.submit(move || job.run(&msg, 1).map_err(|e| ot(&name)(e)));
                next += 1;
            }
            match pipe.next(site).await {
                Some(q) => qs.push(q?),
                None => break,
            }
        }
        self.add_timings(|t| {
            t.ot_s += since(start);
            t.ots += (count * n) as u64;
        });
        // Stage 2: garble the pieces on the workers, send each as it is done.
        ch.set_phase(phase::OFFLINE_GC);
        let start = Instant::now();
        let shared = Arc::new(shape.clone());
        let delta = self.cot.delta();
        let mut pieces = Vec::with_capacity(sizes.len());
        let mut pending = qs.into_iter().zip(&sizes);
        let mut pipe = Pipeline::new(self.threads);
        let mut spare: Vec<Garbling> = Vec::new();
        loop {
            while pipe.has_room() {
                let Some((q, &m)) = pending.next() else { break };
                let mut garbling = spare.pop().unwrap_or_default();
                let batch = self.next_batch;
                self.next_batch += 1;
                let seeds = GarbleSeeds::draw(&mut self.prg);
                let (hash, shape, name) = (self.hash.clone(), shared.clone(), site.to_string());
                pipe.submit(move || {
                    let mut keys = GarblerKeys {
                        delta,
                        input_zero_labels: Vec::new(),
                        output_masks: Vec::new(),
                    };
                    engine::garble_with(
                        &hash,
                        &shape,
                        delta,
                        batch,
                        &q,
                        seeds,
                        &name,
                        &mut garbling,
                        &mut keys,
                    )?;
                    Ok((batch, m, garbling, keys))
                });
            }
            let Some(done) = pipe.next(site).await else {
                break;
            };
            let (batch, m, garbling, keys) = done?;
            send_garbled(ch, shape, batch, m, &garbling)
                .await
                .map_err(net(site))?;
            // The buffers go to the next piece: no fresh pages per piece.
            spare.push(garbling);
            pieces.push((batch, keys));
        }
        ch.flush().await.map_err(net(site))?;
        self.add_timings(|t| {
            t.garble_s += since(start);
            t.garbled += count as u64;
        });
        Ok(GarblerSite {
            shape: shape.clone(),
            pieces,
        })
    }

    /// Online phase: sends the labels of `a_h` (`shape.window()` values
    /// `≤ P_f` per circuit: one, or a max-pool window's).
    pub async fn online(
        &self,
        ch: &mut Channel,
        state: &GarblerSite,
        a_h: &[u64],
        site: &str,
    ) -> Result<(), GcError> {
        let k = state.shape.window();
        if a_h.len() != state.count() * k {
            return Err(GcError::Length {
                site: site.to_string(),
                what: "garbler inputs",
                expected: state.count() * k,
                got: a_h.len(),
                unit: "values",
            });
        }
        check_inputs(&state.shape, a_h, "garbler input a_h", site)?;
        ch.set_phase(phase::ONLINE_GC);
        let start = Instant::now();
        let mut done = 0;
        for (batch, keys) in &state.pieces {
            let m = keys.output_masks.len();
            let labels = engine::encode_garbler_inputs(
                &state.shape,
                keys,
                &a_h[done * k..(done + m) * k],
                site,
            )?;
            ch.send(&GcMessage::GarblerLabels {
                batch: *batch,
                labels,
            })
            .await
            .map_err(net(site))?;
            done += m;
        }
        ch.flush().await.map_err(net(site))?;
        self.add_timings(|t| t.encode_s += since(start));
        Ok(())
    }
}

/// The evaluator's (client's) session: Δ-COT receiver.
#[derive(Debug)]
pub struct EvaluatorSession {
    cot: CotReceiver,
    next_batch: u64,
    threads: usize,
    hash: Arc<FixedKeyHash>,
    timings: Mutex<GcTimings>,
}

/// One piece of a site as the evaluator holds it.
#[derive(Debug)]
struct EvalPiece {
    batch: u64,
    garbling: Garbling,
    labels: Vec<Block>,
}

/// What the evaluator keeps for one site after the offline phase.
#[derive(Debug)]
pub struct EvaluatorSite {
    shape: CircuitShape,
    pieces: Vec<Arc<EvalPiece>>,
}

impl EvaluatorSite {
    /// Circuits at this site.
    pub fn count(&self) -> usize {
        let n = self.shape.input_bits();
        self.pieces.iter().map(|p| p.labels.len() / n).sum()
    }

    /// Hands the site's buffers to `pool` (pieces still shared elsewhere are dropped).
    pub fn recycle(self, pool: &StorePool) {
        for p in self.pieces {
            if let Ok(p) = Arc::try_unwrap(p) {
                pool.give(p.garbling.tables.words);
                pool.give(p.garbling.tables.control);
                pool.give(p.garbling.decoding);
                pool.give(p.labels);
            }
        }
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
        Ok(Self {
            cot,
            next_batch: 0,
            threads: default_threads(),
            hash: Arc::new(FixedKeyHash::new()),
            timings: Mutex::new(GcTimings::default()),
        })
    }

    /// Threads for OT extension and evaluation (default: every core).
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    /// The thread count.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Chooses the gate kernels (default: the fastest this CPU has).
    pub fn set_kernel(&mut self, kernel: Kernel) -> Result<(), GcError> {
        self.hash = Arc::new(FixedKeyHash::with_kernel(kernel)?);
        Ok(())
    }

    /// The gate kernels in use.
    pub fn kernel(&self) -> Kernel {
        self.hash.kernel()
    }

    /// Stage timings accumulated since the session started (or the last reset).
    pub fn timings(&self) -> GcTimings {
        self.timings.lock().map(|t| *t).unwrap_or_default()
    }

    /// Starts the stage timings from zero.
    pub fn reset_timings(&self) {
        if let Ok(mut t) = self.timings.lock() {
            *t = GcTimings::default();
        }
    }

    fn add_timings(&self, f: impl FnOnce(&mut GcTimings)) {
        if let Ok(mut t) = self.timings.lock() {
            f(&mut t);
        }
    }

    /// Offline phase of one site: OT for the bits of `b_h` (`≤ P_f` each), then the garbled material.
    pub async fn offline(
        &mut self,
        ch: &mut Channel,
        shape: &CircuitShape,
        b_h: &[u64],
        site: &str,
    ) -> Result<EvaluatorSite, GcError> {
        shape.kind.validate()?;
        check_inputs(shape, b_h, "evaluator input b_h", site)?;
        // `k` values of `n0` bits per circuit (k > 1: a max-pool window).
        let k = shape.window();
        let n0 = shape.value_bits();
        if !b_h.len().is_multiple_of(k) {
            return Err(GcError::Length {
                site: site.to_string(),
                what: "evaluator inputs (whole max-pool windows)",
                expected: b_h.len().div_ceil(k) * k,
                got: b_h.len(),
                unit: "values",
            });
        }
        let n = shape.input_bits();
        let sizes = piece_sizes(b_h.len() / k);
        // Stage 1: one OT message per piece, computed on the workers, sent in order.
        ch.set_phase(phase::OFFLINE_OT);
        let start = Instant::now();
        let mut labels: Vec<Vec<Block>> = Vec::with_capacity(sizes.len());
        let mut spare: Vec<Vec<Block>> = Vec::new();
        let mut pipe = Pipeline::new(self.threads);
        let mut offset = 0;
        let mut next = 0;
        while labels.len() < sizes.len() {
            while next < sizes.len() && pipe.has_room() {
                let m = sizes[next];
                let choices = pack_value_bits(&b_h[offset * k..(offset + m) * k], n0);
                offset += m;
                next += 1;
                let job = self.cot.job(m * n, choices);
                let buffer = spare.pop().unwrap_or_default();
                pipe.submit(move || Ok(job.run_into(1, buffer)));
            }
            let Some(done) = pipe.next(site).await else {
                break;
            };
            let (msg, t) = done?;
            msg.send(ch).await.map_err(net(site))?;
            // The columns' buffer goes to a later piece.
            if let OtMessage::ExtensionColumns { columns, .. } = msg {
                spare.push(columns);
            }
            labels.push(t);
        }
        ch.flush().await.map_err(net(site))?;
        self.add_timings(|t| {
            t.ot_s += since(start);
            t.ots += (b_h.len() * n0) as u64;
        });
        // Stage 2: the garbled pieces.
        ch.set_phase(phase::OFFLINE_GC);
        let mut pieces = Vec::with_capacity(sizes.len());
        for (&m, labels) in sizes.iter().zip(labels) {
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
                        "{site}: garbled piece has scheme {scheme}, kind {kind}, batch {got_batch}; \
                         expected {}, {}, {batch}",
                        shape.scheme.code(),
                        shape.kind.code()
                    ),
                });
            }
            if circuits as usize != m {
                return Err(GcError::Length {
                    site: site.to_string(),
                    what: "garbled piece",
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
            pieces.push(Arc::new(EvalPiece {
                batch,
                garbling,
                labels,
            }));
        }
        Ok(EvaluatorSite {
            shape: shape.clone(),
            pieces,
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
        let shape = Arc::new(state.shape.clone());
        let mut pipe = Pipeline::new(self.threads);
        let mut start = None;
        let mut next = 0;
        let mut done = 0;
        while done < state.pieces.len() {
            while next < state.pieces.len() && pipe.has_room() {
                let piece = state.pieces[next].clone();
                next += 1;
                let msg: GcMessage = ch.recv().await.map_err(net(site))?;
                start.get_or_insert_with(Instant::now);
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
                if got_batch != piece.batch {
                    return Err(GcError::Parameters {
                        reason: format!(
                            "{site}: labels for batch {got_batch}, expected batch {}",
                            piece.batch
                        ),
                    });
                }
                let (hash, shape, name) = (self.hash.clone(), shape.clone(), site.to_string());
                pipe.submit(move || {
                    engine::evaluate_with(
                        &hash,
                        &shape,
                        piece.batch,
                        &piece.garbling,
                        &garbler_labels,
                        &piece.labels,
                        &name,
                    )
                });
            }
            let Some(z) = pipe.next(site).await else {
                break;
            };
            out.extend(z?);
            done += 1;
        }
        if let Some(start) = start {
            self.add_timings(|t| {
                t.evaluate_s += since(start);
                t.evaluated += out.len() as u64;
            });
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------- storage
//
// Offline material on disk (the inference store): each site is written as
// its pieces in order (piece sizes from `piece_sizes(count)`); reading takes the expected shape and circuit count
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

    /// `n` values read straight into a buffer from `pool`: the file's
    /// little-endian bytes land in the values' memory with one copy from the
    /// page cache (no conversion pass on little-endian machines). The caller
    /// bounds `n` (from the protocol plan).
    pub fn read_into<T: Word>(
        &mut self,
        pool: &StorePool,
        n: usize,
        what: &str,
    ) -> Result<Vec<T>, GcError> {
        let mut buf = pool.take::<T>(n);
        // A recycled buffer of the right size is not touched: the read
        // overwrites it; only a shorter one is extended.
        if buf.len() >= n {
            buf.truncate(n);
        } else {
            buf.resize(n, T::default());
        }
        self.bytes(bytemuck::cast_slice_mut(&mut buf[..]), what)?;
        if cfg!(target_endian = "big") {
            buf.iter_mut().for_each(|w| *w = w.le_to_native());
        }
        Ok(buf)
    }

    /// `n` field elements into a buffer from `pool` (each checked `< P`).
    pub fn field_into(
        &mut self,
        pool: &StorePool,
        n: usize,
        what: &str,
    ) -> Result<Vec<u64>, GcError> {
        let at = self.offset;
        let v = self.read_into::<u64>(pool, n, what)?;
        if let Some(i) = v.iter().position(|&x| x >= pibench_models::fixed::P) {
            return Err(GcError::Store {
                file: self.what.clone(),
                offset: at + 8 * i as u64,
                reason: format!("{what}: element {i} is not a field element"),
            });
        }
        Ok(v)
    }

    /// `n` `u64`s (the caller bounds `n`).
    pub fn u64s(&mut self, n: usize, what: &str) -> Result<Vec<u64>, GcError> {
        self.read_into(&StorePool::default(), n, what)
    }

    /// `n` field elements (each checked `< P`).
    pub fn field(&mut self, n: usize, what: &str) -> Result<Vec<u64>, GcError> {
        self.field_into(&StorePool::default(), n, what)
    }

    /// `n` labels.
    pub fn blocks(&mut self, n: usize, what: &str) -> Result<Vec<Block>, GcError> {
        self.read_into(&StorePool::default(), n, what)
    }
}

/// A value type the store reads in bulk and the [`StorePool`] keeps
/// buffers of: plain old data, stored little-endian.
pub trait Word: bytemuck::Pod + Default {
    /// Converts a value read as little-endian bytes to native order.
    fn le_to_native(self) -> Self;
    /// The pool's list of buffers of this type.
    #[doc(hidden)]
    fn list(p: &mut PoolLists) -> &mut Vec<Vec<Self>>;
}

impl Word for u8 {
    fn le_to_native(self) -> Self {
        self
    }
    fn list(p: &mut PoolLists) -> &mut Vec<Vec<Self>> {
        &mut p.bytes
    }
}

impl Word for u64 {
    fn le_to_native(self) -> Self {
        u64::from_le(self)
    }
    fn list(p: &mut PoolLists) -> &mut Vec<Vec<Self>> {
        &mut p.words
    }
}

impl Word for u128 {
    fn le_to_native(self) -> Self {
        u128::from_le(self)
    }
    fn list(p: &mut PoolLists) -> &mut Vec<Vec<Self>> {
        &mut p.blocks
    }
}

/// Buffers of sites already used online, handed to the next reads from the
/// store. The store's online phase reads gigabytes of garbled tables node
/// by node; allocating them afresh for every node costs a page fault and a
/// kernel page clear per 4 KiB (a quarter of the client's online time in a
/// profile of a 557K-ReLU `--store` run). The pool keeps at most `limit`
/// bytes; what does not fit is freed. The default pool keeps nothing.
#[derive(Debug, Default)]
pub struct StorePool {
    inner: Mutex<PoolLists>,
    limit: usize,
}

/// The buffers a [`StorePool`] holds, per value type.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct PoolLists {
    words: Vec<Vec<u64>>,
    blocks: Vec<Vec<Block>>,
    bytes: Vec<Vec<u8>>,
    held: usize,
}

impl StorePool {
    /// A pool that keeps at most `limit` bytes of buffers.
    pub fn new(limit: usize) -> Self {
        Self {
            inner: Mutex::new(PoolLists::default()),
            limit,
        }
    }

    /// A buffer for `n` values: the smallest pooled one that holds them
    /// (the pieces of a site are equal-sized), else a new one.
    fn take<T: Word>(&self, n: usize) -> Vec<T> {
        let Ok(mut p) = self.inner.lock() else {
            return Vec::with_capacity(n);
        };
        let p = &mut *p;
        let list = T::list(p);
        let best = list
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= n)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        match best {
            Some(i) => {
                let b = list.swap_remove(i);
                p.held -= b.capacity() * std::mem::size_of::<T>();
                b
            }
            None => Vec::with_capacity(n),
        }
    }

    /// Keeps `v` for a later [`StorePool::take`] if it fits the limit.
    fn give<T: Word>(&self, v: Vec<T>) {
        let Ok(mut p) = self.inner.lock() else {
            return;
        };
        let size = v.capacity() * std::mem::size_of::<T>();
        if size > 0 && p.held + size <= self.limit {
            p.held += size;
            T::list(&mut p).push(v);
        }
    }
}

/// Chunk size of the store's reads and writes: at least a `BufReader`'s
/// 1 MiB buffer, so large reads bypass it (one copy from the page cache).
pub const STORE_CHUNK: usize = 1 << 20;

/// Writes `v` little-endian through a [`STORE_CHUNK`]-byte buffer.
fn put_chunked<T: Copy, const W: usize>(
    w: &mut impl std::io::Write,
    v: &[T],
    le: impl Fn(T) -> [u8; W],
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(STORE_CHUNK.min(W * v.len()));
    for part in v.chunks(STORE_CHUNK / W) {
        buf.clear();
        for &x in part {
            buf.extend_from_slice(&le(x));
        }
        w.write_all(&buf)?;
    }
    Ok(())
}

fn put_u64s(w: &mut impl std::io::Write, v: &[u64]) -> std::io::Result<()> {
    put_chunked(w, v, u64::to_le_bytes)
}

fn put_blocks(w: &mut impl std::io::Write, v: &[Block]) -> std::io::Result<()> {
    put_chunked(w, v, u128::to_le_bytes)
}

impl GarblerSite {
    /// Writes the site (batch tweaks, Δ, input zero labels, output masks per piece).
    pub fn write_to(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        for (batch, keys) in &self.pieces {
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
        Self::read_pooled(r, shape, count, &StorePool::default())
    }

    /// [`GarblerSite::read_from`] into buffers taken from `pool`.
    pub fn read_pooled<R: std::io::Read>(
        r: &mut StoreReader<R>,
        shape: &CircuitShape,
        count: usize,
        pool: &StorePool,
    ) -> Result<Self, GcError> {
        let n = shape.input_bits();
        let mut pieces = Vec::new();
        for m in piece_sizes(count) {
            let batch = r.u64("batch")?;
            let delta = r.blocks(1, "delta")?[0];
            let input_zero_labels = r.read_into(pool, m * n, "garbler input labels")?;
            let output_masks = r.field_into(pool, m, "output masks")?;
            pieces.push((
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
            pieces,
        })
    }
}

impl EvaluatorSite {
    /// Writes the site (batch tweaks, tables, control bits, decoding, input labels per piece).
    pub fn write_to(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        for p in &self.pieces {
            w.write_all(&p.batch.to_le_bytes())?;
            put_u64s(w, &p.garbling.tables.words)?;
            w.write_all(&p.garbling.tables.control)?;
            put_u64s(w, &p.garbling.decoding)?;
            put_blocks(w, &p.labels)?;
        }
        Ok(())
    }

    /// Reads a site of `count` circuits of `shape` written by [`EvaluatorSite::write_to`].
    pub fn read_from<R: std::io::Read>(
        r: &mut StoreReader<R>,
        shape: &CircuitShape,
        count: usize,
    ) -> Result<Self, GcError> {
        Self::read_pooled(r, shape, count, &StorePool::default())
    }

    /// [`EvaluatorSite::read_from`] into buffers taken from `pool`.
    pub fn read_pooled<R: std::io::Read>(
        r: &mut StoreReader<R>,
        shape: &CircuitShape,
        count: usize,
        pool: &StorePool,
    ) -> Result<Self, GcError> {
        let n = shape.input_bits();
        let mut pieces = Vec::new();
        for m in piece_sizes(count) {
            let batch = r.u64("batch")?;
            let tw = shape.table_words(m);
            let words = r.read_into(pool, tw, "garbled tables")?;
            let cl = shape.control_len(m);
            let control: Vec<u8> = r.read_into(pool, cl, "control bits")?;
            if let Some(i) = control.iter().position(|&c| c >= 32) {
                return Err(r.error(format!("control byte {i} has more than 5 bits")));
            }
            let dl = shape.decoding_len(m);
            let decoding = r.field_into(pool, dl, "output decoding")?;
            let labels = r.read_into(pool, m * n, "evaluator input labels")?;
            pieces.push(Arc::new(EvalPiece {
                batch,
                garbling: Garbling {
                    tables: GarbledTables { words, control },
                    decoding,
                },
                labels,
            }));
        }
        Ok(Self {
            shape: shape.clone(),
            pieces,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gc::CircuitSpec;

    /// The copy-free send writes the very frame `GcMessage::encode` writes,
    /// for both schemes (three-halves carries control bits).
    #[tokio::test]
    async fn send_garbled_writes_the_encoded_frame() {
        for scheme in [Scheme::HalfGates, Scheme::ThreeHalves] {
            let shape = CircuitShape::new(
                CircuitSpec::default_fixed_point(),
                ActivationKind::Relu,
                scheme,
            );
            let control = match scheme {
                Scheme::HalfGates => Vec::new(),
                Scheme::ThreeHalves => (0..13u8).map(|g| g.wrapping_mul(7) & 31).collect(),
            };
            let garbling = Garbling {
                tables: GarbledTables {
                    words: (0..40u64)
                        .map(|w| w.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                        .collect(),
                    control: control.clone(),
                },
                decoding: vec![3, 1, 4, 1, 5],
            };
            let (mut a, mut b) = crate::net::duplex_pair();
            send_garbled(&mut a, &shape, 7, 3, &garbling).await.unwrap();
            a.send(&GcMessage::Garbled {
                scheme: scheme.code(),
                kind: shape.kind.code(),
                batch: 7,
                circuits: 3,
                words: garbling.tables.words.clone(),
                control,
                decoding: garbling.decoding.clone(),
            })
            .await
            .unwrap();
            a.flush().await.unwrap();
            let fast = b.recv_bytes("fast").await.unwrap();
            let slow = b.recv_bytes("slow").await.unwrap();
            assert_eq!(fast, slow);
            assert_eq!(a.meter().total("").bytes_sent, 2 * (fast.len() as u64 + 4));
        }
    }
}
