//! The fuzz harness shared by `tests/fuzz.rs` (a small count in `make
//! test`) and `benches/fuzz_decoders.rs` (≥ 10^6 inputs per decoder).
//!
//! Every decoder a peer (or a file) can reach is a [`Target`]: a function of
//! hostile bytes, seeds (valid encodings made by the real encoders) and a
//! bound on what it may allocate. Inputs are proptest-generated: random
//! bytes, random bytes behind a valid prefix, and mutations of the seeds
//! (bit flips, byte writes, truncations, insertions, deletions, and edits of
//! 32/64-bit fields with hostile lengths such as `0`, `2^31`, `u32::MAX`).
//! A run checks that nothing panics, that the largest allocation made while
//! decoding stays within the target's bound (an allocator that records, per
//! thread, the largest block and the peak of live bytes), and that no input
//! takes long (the caller times each one).
//!
//! SEAL (C++) allocates outside Rust's allocator: for the HE targets the
//! bound covers the Rust side; the zstd check in front of SEAL is tested
//! separately in `tests/fuzz.rs` (a decompression bomb, with the process's
//! peak RSS).

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pibench_models::arch::ArchSpec;
use pibench_models::fixed::FixedPoint;
use pibench_models::graph::{FeatureShape, Init, Network};
use pibench_protocol::gc::engine::{self, CircuitShape, Garbling};
use pibench_protocol::gc::hash::AesPrg;
use pibench_protocol::gc::protocol::GcMessage;
use pibench_protocol::gc::{ActivationKind, CircuitSpec, Scheme};
use pibench_protocol::he::cipher::{ciphertext_bytes, load_ciphertext, load_reply_ciphertext};
use pibench_protocol::he::proto::HeMessage;
use pibench_protocol::he::{ClientKeys, HeContext, HeParams, ServerKeys};
use pibench_protocol::inference::store::Store;
use pibench_protocol::inference::{
    run_client, run_server, ClientInput, InferencePlan, InputSource, OnlineMessage, Progress,
    ProgressEvent, PublicModel, Role, ServerModel, SessionMessage, Settings, TruncMode,
};
use pibench_protocol::msg::Message;
use pibench_protocol::net::{Channel, NetError, Wire};
use pibench_protocol::ot::{CotReceiver, CotSender, OtMessage};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;
use std::cell::RefCell;
use std::time::Instant;

// ------------------------------------------------------------ allocation probe

thread_local! {
    /// (recording, largest block, live bytes, peak live bytes) of this thread.
    static PROBE: Cell<(bool, usize, isize, isize)> = const { Cell::new((false, 0, 0, 0)) };
}

fn note_alloc(size: usize) {
    let _ = PROBE.try_with(|p| {
        let (on, big, live, peak) = p.get();
        if on {
            let live = live + size as isize;
            p.set((on, big.max(size), live, peak.max(live)));
        }
    });
}

fn note_free(size: usize) {
    let _ = PROBE.try_with(|p| {
        let (on, big, live, peak) = p.get();
        if on {
            p.set((on, big, live - size as isize, peak));
        }
    });
}

/// The system allocator, recording per thread the largest block and the
/// peak of live bytes while [`measure`] runs.
pub struct Probe;

// A global allocator is `unsafe` by definition; this one only forwards to
// `System` and updates a thread-local counter.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Probe {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_free(layout.size());
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_free(layout.size());
        note_alloc(new_size);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// What [`measure`] saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allocation {
    /// Largest single block requested.
    pub largest: usize,
    /// Peak of (allocated − freed) bytes during the call.
    pub peak_live: usize,
}

/// Runs `f`, recording this thread's allocations.
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, Allocation) {
    PROBE.with(|p| p.set((true, 0, 0, 0)));
    let r = f();
    let (_, largest, _, peak) = PROBE.with(|p| p.get());
    PROBE.with(|p| p.set((false, 0, 0, 0)));
    (
        r,
        Allocation {
            largest,
            peak_live: peak.max(0) as usize,
        },
    )
}

// ------------------------------------------------------------ inputs

/// One edit of a seed.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Flip one bit.
    FlipBit(Index, u8),
    /// Overwrite one byte.
    SetByte(Index, u8),
    /// Cut the input at this point.
    Truncate(Index),
    /// Insert bytes.
    Insert(Index, Vec<u8>),
    /// Remove up to `n` bytes.
    Remove(Index, usize),
    /// Overwrite 4 bytes with a (hostile) little-endian `u32`.
    U32(Index, u32),
    /// Overwrite 8 bytes with a (hostile) little-endian `u64`.
    U64(Index, u64),
}

fn hostile_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(0x7f),
        Just(0xff),
        Just(0x100),
        Just(0xffff),
        Just(1 << 20),
        Just(1 << 28),
        Just(1 << 31),
        Just(u32::MAX - 1),
        Just(u32::MAX),
        any::<u32>(),
    ]
}

fn hostile_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(1 << 32),
        Just(1 << 62),
        Just(u64::MAX),
        Just(pibench_models::fixed::P),
        any::<u64>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        2 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        1 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| Mutation::Remove(i, n)),
        3 => (any::<Index>(), hostile_u32()).prop_map(|(i, v)| Mutation::U32(i, v)),
        1 => (any::<Index>(), hostile_u64()).prop_map(|(i, v)| Mutation::U64(i, v)),
    ]
}

/// Applies the edits in order.
pub fn apply(seed: &[u8], edits: &[Mutation]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for m in edits {
        let at = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len) };
        match m {
            Mutation::FlipBit(i, bit) if !b.is_empty() => {
                let k = at(i, b.len());
                b[k] ^= 1 << bit;
            }
            Mutation::SetByte(i, v) if !b.is_empty() => {
                let k = at(i, b.len());
                b[k] = *v;
            }
            Mutation::Truncate(i) => {
                let k = at(i, b.len() + 1);
                b.truncate(k);
            }
            Mutation::Insert(i, v) => {
                let k = at(i, b.len() + 1);
                b.splice(k..k, v.iter().copied());
            }
            Mutation::Remove(i, n) if !b.is_empty() => {
                let k = at(i, b.len());
                let end = (k + n).min(b.len());
                b.drain(k..end);
            }
            Mutation::U32(i, v) if b.len() >= 4 => {
                let k = at(i, b.len() - 3);
                b[k..k + 4].copy_from_slice(&v.to_le_bytes());
            }
            Mutation::U64(i, v) if b.len() >= 8 => {
                let k = at(i, b.len() - 7);
                b[k..k + 8].copy_from_slice(&v.to_le_bytes());
            }
            _ => {}
        }
    }
    b
}

/// Hostile inputs for a target with these seeds: random bytes (up to
/// `max_random` long), random bytes behind a prefix of a seed, and mutated
/// seeds (1 to 6 edits).
pub fn inputs(seeds: Arc<Vec<Vec<u8>>>, max_random: usize) -> BoxedStrategy<Vec<u8>> {
    let n = seeds.len();
    let s1 = seeds.clone();
    let s2 = seeds;
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..max_random.max(1)),
        1 => (0..n, 0usize..24, prop::collection::vec(any::<u8>(), 0..max_random.max(1)))
            .prop_map(move |(k, p, tail)| {
                let mut b = s1[k][..p.min(s1[k].len())].to_vec();
                b.extend(tail);
                b
            }),
        6 => (0..n, prop::collection::vec(mutation(), 1..6))
            .prop_map(move |(k, edits)| apply(&s2[k], &edits)),
    ]
    .boxed()
}

// ------------------------------------------------------------ targets

/// Whether the decoder accepted the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Decoded (and, where the target goes on, processed).
    Accepted,
    /// Refused with an error.
    Refused,
}

/// One decoder under test.
pub struct Target {
    /// Name (for the benchmark's `--only`).
    pub name: &'static str,
    /// Valid encodings to mutate.
    pub seeds: Arc<Vec<Vec<u8>>>,
    /// Longest random input.
    pub max_random: usize,
    /// Decodes one input; panics on a broken invariant.
    pub run: Decoder,
    /// Largest allocation (block and peak live bytes) allowed for an input
    /// of `len` bytes; `None` where the decoder's allocations derive from
    /// what it decodes rather than from the input (model files).
    pub bound: Option<Bound>,
}

/// A decoder of hostile bytes.
pub type Decoder = Box<dyn Fn(&[u8]) -> Verdict + Send + Sync>;

/// An allocation bound as a function of the input length.
pub type Bound = Arc<dyn Fn(usize) -> usize + Send + Sync>;

fn bound(f: impl Fn(usize) -> usize + Send + Sync + 'static) -> Option<Bound> {
    Some(Arc::new(f))
}

impl Target {
    /// Runs one input: decodes it under the allocation probe and checks the bound.
    pub fn check(&self, input: &[u8]) -> (Verdict, Allocation) {
        let (v, a) = measure(|| (self.run)(input));
        if let Some(bound) = &self.bound {
            let max = bound(input.len());
            assert!(
                a.largest <= max && a.peak_live <= max,
                "{}: {} input bytes made it allocate a block of {} / {} live bytes (bound {max})",
                self.name,
                input.len(),
                a.largest,
                a.peak_live
            );
        }
        (v, a)
    }
}

/// What a run of one target saw.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// Inputs decoded.
    pub cases: u64,
    /// Inputs the decoder refused.
    pub refused: u64,
    /// Wall time of the run.
    pub seconds: f64,
    /// Slowest input.
    pub slowest: Duration,
    /// Largest block and peak live bytes over all inputs.
    pub largest: usize,
    /// Peak live bytes over all inputs.
    pub peak_live: usize,
    /// Longest input.
    pub longest_input: usize,
}

impl std::fmt::Display for RunReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} inputs in {:.1} s ({:.1} µs each), {:.1} % refused, slowest {:.2} ms, \
             largest block {} B, peak live {} B, longest input {} B",
            self.cases,
            self.seconds,
            self.seconds * 1e6 / self.cases.max(1) as f64,
            100.0 * self.refused as f64 / self.cases.max(1) as f64,
            self.slowest.as_secs_f64() * 1e3,
            self.largest,
            self.peak_live,
            self.longest_input
        )
    }
}

/// Runs `cases` proptest-generated inputs through `t` (seeded), after
/// checking that its seeds decode; panics on the first failure (with the
/// shrunk input) or an input slower than `slow`.
pub fn run(t: &Target, cases: u32, seed: u8, slow: Duration) -> RunReport {
    let accepted = t
        .seeds
        .iter()
        .filter(|s| t.check(s).0 == Verdict::Accepted)
        .count();
    assert!(accepted > 0, "{}: no seed decodes", t.name);
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]),
    );
    let strategy = inputs(t.seeds.clone(), t.max_random);
    let report = RefCell::new(RunReport::default());
    let start = Instant::now();
    let r = runner.run(&strategy, |input| {
        let t0 = Instant::now();
        let (v, a) = t.check(&input);
        let took = t0.elapsed();
        let mut rep = report.borrow_mut();
        rep.cases += 1;
        rep.refused += u64::from(v == Verdict::Refused);
        rep.slowest = rep.slowest.max(took);
        rep.largest = rep.largest.max(a.largest);
        rep.peak_live = rep.peak_live.max(a.peak_live);
        rep.longest_input = rep.longest_input.max(input.len());
        prop_assert!(took < slow, "{}: one input took {took:?}", t.name);
        Ok(())
    });
    if let Err(e) = r {
        panic!("{}: {e}", t.name);
    }
    let mut rep = report.into_inner();
    rep.seconds = start.elapsed().as_secs_f64();
    rep
}

fn verdict<T, E>(r: Result<T, E>) -> Verdict {
    match r {
        Ok(_) => Verdict::Accepted,
        Err(_) => Verdict::Refused,
    }
}

fn frame_bytes<M: Wire>(m: &M) -> Vec<u8> {
    let mut b = Vec::new();
    if let Some(t) = M::TAG {
        b.push(t);
    }
    m.encode(&mut b);
    b
}

fn body<M: Wire>(m: &M) -> Vec<u8> {
    let mut b = Vec::new();
    m.encode(&mut b);
    b
}

/// A tiny residual network (ReLU and identity elements) for the model,
/// public-model and store targets.
pub fn tiny_network() -> Network {
    let mut net = ArchSpec::Resnet {
        name: "fuzz-resnet".into(),
        stem: 2,
        blocks: vec![1],
        widths: vec![2],
    }
    .build(FeatureShape::new(3, 4, 4), 3, Init::Seeded(3))
    .expect("network");
    let mut rng = ChaCha12Rng::seed_from_u64(9);
    for s in net.sites_mut() {
        s.mask.iter_mut().for_each(|m| *m = rng.gen_range(0..2));
    }
    net
}

/// The HE context of the fuzz targets (insecure test parameters: same code
/// paths, small ciphertexts).
pub fn he_context() -> HeContext {
    HeParams::insecure_test_linear()
        .context()
        .expect("HE context")
}

/// Valid SEAL objects: data-level and reply-level ciphertexts (zstd, as
/// SEAL writes them, and uncompressed, so mutations reach SEAL's checks)
/// and a public key.
pub struct HeSeeds {
    pub data: Vec<u8>,
    pub data_raw: Vec<u8>,
    pub reply: Vec<u8>,
    pub public_key: Vec<u8>,
}

/// Rewrites a SEAL object without compression.
pub fn uncompressed(bytes: &[u8]) -> Vec<u8> {
    let raw = zstd::bulk::decompress(&bytes[16..], 64 << 20).expect("zstd");
    let mut out = bytes[..16].to_vec();
    out[5] = 0;
    out[8..16].copy_from_slice(&((16 + raw.len()) as u64).to_le_bytes());
    out.extend(raw);
    out
}

pub fn he_seeds(ctx: &HeContext) -> HeSeeds {
    let keys = ClientKeys::generate(ctx).expect("keys");
    let coeffs: Vec<u64> = (0..64).map(|i| i * 31 + 7).collect();
    let ct = keys.encrypt_coeffs(ctx, &coeffs).expect("encrypt");
    let data = ciphertext_bytes(&ct).expect("serialize");
    let reply_ct = ctx.switch_to_reply_level(ct).expect("mod switch");
    HeSeeds {
        data_raw: uncompressed(&data),
        data,
        reply: ciphertext_bytes(&reply_ct).expect("serialize"),
        public_key: keys.public_key_bytes().expect("public key"),
    }
}

/// A SEAL header (zstd) around `payload`.
pub fn seal_zstd(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x5e, 0xa1, 16, 4, 0, 2, 0, 0];
    out.extend_from_slice(&((16 + payload.len()) as u64).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A zstd frame of run-length blocks that inflates to `blocks × 128 KiB`
/// zero bytes from 4 bytes per block (a decompression bomb).
pub fn zstd_bomb(blocks: usize) -> Vec<u8> {
    let mut f = vec![0x28, 0xb5, 0x2f, 0xfd];
    // Frame header: no content size, no checksum, not single-segment; window 128 KiB.
    f.push(0x00);
    f.push((17 - 10) << 3);
    for k in 0..blocks {
        let last = u32::from(k + 1 == blocks);
        // Block header: last bit, type 1 (RLE), size 128 KiB.
        let h = last | (1 << 1) | ((128 << 10) << 3);
        f.extend_from_slice(&h.to_le_bytes()[..3]);
        f.push(0);
    }
    f
}

/// A small garbling (3 ReLU circuits) and its garbler labels.
pub struct GcSeeds {
    pub shape: CircuitShape,
    pub garbled: GcMessage,
    pub labels: GcMessage,
    pub garbler_labels: Vec<u128>,
    pub evaluator_labels: Vec<u128>,
    pub garbling: Garbling,
}

pub fn gc_seeds(scheme: Scheme) -> GcSeeds {
    let spec = CircuitSpec::default_fixed_point();
    let shape = CircuitShape::new(spec, ActivationKind::Relu, scheme);
    let n = shape.input_bits();
    let count = 3;
    let mut rng = ChaCha12Rng::seed_from_u64(4);
    let mut prg = AesPrg::from_rng(&mut rng);
    let delta = engine::random_delta(&mut prg);
    let zero: Vec<u128> = (0..count * n).map(|_| rng.gen()).collect();
    let (garbling, keys) =
        engine::garble(&shape, delta, 0, &zero, &mut prg, "fuzz").expect("garble");
    let a_h: Vec<u64> = (0..count as u64).map(|i| i * 5 + 1).collect();
    let garbler_labels =
        engine::encode_garbler_inputs(&shape, &keys, &a_h, "fuzz").expect("encode");
    let garbled = GcMessage::Garbled {
        scheme: scheme.code(),
        kind: ActivationKind::Relu.code(),
        batch: 0,
        circuits: count as u32,
        words: garbling.tables.words.clone(),
        control: garbling.tables.control.clone(),
        decoding: garbling.decoding.clone(),
    };
    let labels = GcMessage::GarblerLabels {
        batch: 0,
        labels: garbler_labels.clone(),
    };
    GcSeeds {
        shape,
        garbled,
        labels,
        garbler_labels,
        evaluator_labels: zero,
        garbling,
    }
}

/// Valid session and online messages (the hello carries a real public model).
pub fn session_online_seeds(public: &PublicModel) -> (Vec<SessionMessage>, Vec<OnlineMessage>) {
    let s = vec![
        SessionMessage::Hello {
            version: 1,
            settings: "version = 1\ngc scheme = half-gates\ninferences = 2\n".into(),
            model: public.to_bytes(),
            model_hash: public.hash(),
        },
        SessionMessage::Abort {
            reason: "handshake refused: truncation differs".into(),
        },
        SessionMessage::Accept,
    ];
    let o = vec![
        OnlineMessage::Input {
            inference: 0,
            values: (0..48).collect(),
        },
        OnlineMessage::Reply {
            node: 3,
            step: 0,
            values: vec![5; 20],
        },
        OnlineMessage::Open {
            node: 4,
            values: vec![pibench_models::fixed::P - 1; 6],
        },
        OnlineMessage::Logits {
            values: vec![1, 2, 3],
        },
    ];
    (s, o)
}

/// A real base-OT and OT-extension exchange (messages of both sides).
pub struct OtSeeds {
    pub sender_point: OtMessage,
    pub receiver_points: OtMessage,
    pub columns: OtMessage,
    pub ots: usize,
}

pub fn ot_seeds() -> (OtSeeds, CotSender) {
    let mut rng = ChaCha12Rng::seed_from_u64(6);
    let (base, m1) = CotReceiver::base_start(&mut rng);
    let (sender, m2) = CotSender::base_respond(&m1, &mut rng).expect("base OT");
    let mut receiver = CotReceiver::base_finish(&base, &m2).expect("base OT");
    let ots = 200;
    let choices: Vec<bool> = (0..ots).map(|_| rng.gen()).collect();
    let (m3, _) = receiver.extend_message(&choices);
    (
        OtSeeds {
            sender_point: m1,
            receiver_points: m2,
            columns: m3,
            ots,
        },
        sender,
    )
}

fn public_model(net: &Network) -> PublicModel {
    let enc =
        pibench_models::reference::EncodedNetwork::new(net, FixedPoint::default()).expect("encode");
    PublicModel::new(net, &enc).expect("public model")
}

/// Bound for the wire decoders: a decoded message holds at most a few
/// copies of its bytes (values, labels, unpacked control bits).
fn wire_bound(len: usize) -> usize {
    4 * len + (64 << 10)
}

/// The frame-header target's channel limit.
pub const TINY_FRAME: usize = 4096;

/// What making a channel allocates (64 KiB read and write buffers), with slack.
const CHANNEL: usize = 192 << 10;

/// Reads frames from `bytes` through a real [`Channel`] (limit
/// [`TINY_FRAME`], or the default 256 MiB with `big`), decoding each with
/// [`Message::decode`], until the bytes run out or an error.
pub fn channel_frames(rt: &tokio::runtime::Runtime, bytes: &[u8], big: bool) -> Verdict {
    rt.block_on(async {
        let (mut w, r) = tokio::io::duplex(bytes.len().max(1));
        tokio::io::AsyncWriteExt::write_all(&mut w, bytes)
            .await
            .expect("duplex write");
        drop(w);
        let ch = Channel::new(r, tokio::io::sink()).with_timeout(Duration::from_secs(5));
        let mut ch = if big {
            ch
        } else {
            ch.with_max_frame(TINY_FRAME)
        };
        let mut any = false;
        loop {
            match ch.recv_bytes("fuzz").await {
                Ok(frame) => {
                    assert!(frame.len() <= ch.max_frame(), "frame above the limit");
                    let _ = Message::decode(&frame);
                    any = true;
                }
                Err(NetError::FrameTooLarge { len, max, .. }) => {
                    assert!(len > max as u64);
                    return Verdict::Refused;
                }
                Err(NetError::Closed { .. }) => {
                    return if any {
                        Verdict::Accepted
                    } else {
                        Verdict::Refused
                    }
                }
                Err(e) => panic!("unexpected channel error: {e}"),
            }
        }
    })
}

/// All wire targets plus the model-file, public-model and store targets
/// (`store` adds the store target, which needs a real session to make its
/// seeds: a few seconds).
pub fn targets(store: bool) -> Vec<Target> {
    let net = tiny_network();
    let public = public_model(&net);
    let (sessions, onlines) = session_online_seeds(&public);
    let (ot, cot_sender) = ot_seeds();
    let gc = gc_seeds(Scheme::HalfGates);
    let gc3 = gc_seeds(Scheme::ThreeHalves);
    let ctx = Arc::new(he_context());
    let he = he_seeds(&ctx);
    let he_msgs = [
        HeMessage::PublicKey {
            key: he.public_key.clone(),
        },
        HeMessage::LayerInput {
            layer: 0,
            ciphertexts: vec![he.data.clone(), he.data_raw.clone()],
        },
        HeMessage::LayerOutput {
            layer: 2,
            ciphertexts: vec![he.reply.clone()],
        },
    ];
    let all: Vec<Message> = sessions
        .iter()
        .cloned()
        .map(Message::Session)
        .chain(onlines.iter().cloned().map(Message::Online))
        .chain(
            [&ot.sender_point, &ot.receiver_points, &ot.columns]
                .into_iter()
                .cloned()
                .map(Message::Ot),
        )
        .chain(
            [&gc.garbled, &gc.labels, &gc3.garbled]
                .into_iter()
                .cloned()
                .map(Message::Gc),
        )
        .chain(he_msgs.iter().cloned().map(Message::He))
        .collect();
    let envelopes: Vec<Vec<u8>> = all
        .iter()
        .map(|m| {
            let mut b = Vec::new();
            m.encode(&mut b);
            b
        })
        .collect();

    let mut out = Vec::new();

    // Frame header through a real channel: frames of every family, one to three in a row.
    let small: Vec<&Vec<u8>> = envelopes
        .iter()
        .filter(|e| e.len() + 4 <= TINY_FRAME)
        .collect();
    let framed: Vec<Vec<u8>> = (0..small.len())
        .map(|k| {
            let mut b = Vec::new();
            for f in [small[k], small[(k + 1) % small.len()]]
                .iter()
                .take(1 + k % 2)
            {
                b.extend_from_slice(&(f.len() as u32).to_le_bytes());
                b.extend_from_slice(f);
            }
            b
        })
        .collect();
    let rt = Arc::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime"),
    );
    let rt2 = rt.clone();
    out.push(Target {
        name: "frame",
        seeds: Arc::new(framed.clone()),
        max_random: 64,
        run: Box::new(move |b| channel_frames(&rt, b, false)),
        // The channel's 64 KiB read and write buffers and the duplex pipe
        // (made per input), the frame buffer (at most the tiny limit) and
        // its decoding.
        bound: bound(|len| CHANNEL + len + 4 * TINY_FRAME.min(len)),
    });
    out.push(Target {
        name: "frame-256MiB-limit",
        seeds: Arc::new(framed),
        max_random: 64,
        run: Box::new(move |b| channel_frames(&rt2, b, true)),
        // However long the announced frame, the buffer grows at most one
        // 1 MiB read chunk past the bytes that arrived.
        bound: bound(|len| CHANNEL + (1 << 20) + 5 * len),
    });

    out.push(Target {
        name: "envelope",
        seeds: Arc::new(envelopes),
        max_random: 256,
        run: Box::new(|b| {
            let r = Message::decode(b);
            if let Ok(m) = &r {
                // What decodes re-encodes to something that decodes to the same.
                let mut again = Vec::new();
                m.encode(&mut again);
                assert_eq!(Message::decode(&again).as_ref(), Ok(m), "round trip");
            }
            verdict(r)
        }),
        bound: bound(wire_bound),
    });

    out.push(Target {
        name: "session",
        seeds: Arc::new(sessions.iter().map(body).collect()),
        max_random: 256,
        run: Box::new(|b| verdict(SessionMessage::decode(b))),
        bound: bound(wire_bound),
    });
    out.push(Target {
        name: "online",
        seeds: Arc::new(onlines.iter().map(body).collect()),
        max_random: 256,
        run: Box::new(|b| verdict(OnlineMessage::decode(b))),
        bound: bound(wire_bound),
    });

    // OT: decoding, then the OT-extension sender consuming the columns.
    let sender = Arc::new(Mutex::new(cot_sender));
    let ots = ot.ots;
    out.push(Target {
        name: "ot",
        seeds: Arc::new(
            [&ot.sender_point, &ot.receiver_points, &ot.columns]
                .into_iter()
                .map(body)
                .collect(),
        ),
        max_random: 256,
        run: Box::new(move |b| match OtMessage::decode(b) {
            Err(_) => Verdict::Refused,
            Ok(m @ OtMessage::ExtensionColumns { .. }) => {
                let mut s = sender.lock().unwrap_or_else(|e| e.into_inner());
                verdict(s.extend_from(&m, ots))
            }
            Ok(_) => Verdict::Accepted,
        }),
        // Extension rows: 16 bytes per OT of the expected count, plus the columns.
        bound: bound(|len| 4 * len + 200 * 16 * 4 + (64 << 10)),
    });
    // Base OT: points from the peer (Ristretto decompression, both sides).
    let (base_seeds, _) = ot_seeds();
    let base_sender = Arc::new(CotReceiver::base_start(&mut ChaCha12Rng::seed_from_u64(8)).0);
    out.push(Target {
        name: "ot-base",
        seeds: Arc::new(
            [&base_seeds.sender_point, &base_seeds.receiver_points]
                .into_iter()
                .map(body)
                .collect(),
        ),
        max_random: 64,
        run: Box::new(move |b| match OtMessage::decode(b) {
            Err(_) => Verdict::Refused,
            Ok(m @ OtMessage::BaseSenderPoint(_)) => {
                let mut rng = ChaCha12Rng::seed_from_u64(1);
                verdict(CotSender::base_respond(&m, &mut rng))
            }
            Ok(m) => verdict(CotReceiver::base_finish(&base_sender, &m)),
        }),
        // 128 points and keys.
        bound: bound(|len| 4 * len + (256 << 10)),
    });

    // GC: decoding, then evaluation against the expected shape.
    let gcs = Arc::new((gc, gc3));
    let g = gcs.clone();
    out.push(Target {
        name: "gc",
        seeds: Arc::new(
            [&gcs.0.garbled, &gcs.0.labels, &gcs.1.garbled, &gcs.1.labels]
                .into_iter()
                .map(body)
                .collect(),
        ),
        max_random: 512,
        run: Box::new(move |b| match GcMessage::decode(b) {
            Err(_) => Verdict::Refused,
            Ok(GcMessage::Garbled {
                scheme,
                words,
                control,
                decoding,
                ..
            }) => {
                let s = if scheme == Scheme::ThreeHalves.code() {
                    &g.1
                } else {
                    &g.0
                };
                let garbling = Garbling {
                    tables: pibench_protocol::gc::garble::GarbledTables { words, control },
                    decoding,
                };
                verdict(engine::evaluate(
                    &s.shape,
                    0,
                    &garbling,
                    &s.garbler_labels,
                    &s.evaluator_labels,
                    "fuzz",
                ))
            }
            Ok(GcMessage::GarblerLabels { labels, .. }) => verdict(engine::evaluate(
                &g.0.shape,
                0,
                &g.0.garbling,
                &labels,
                &g.0.evaluator_labels,
                "fuzz",
            )),
        }),
        // Evaluation buffers come from the (fixed, 3-circuit) shape.
        bound: bound(|len| 4 * len + (512 << 10)),
    });

    // HE: message decoding, then SEAL loading of every ciphertext and key.
    let c = ctx.clone();
    out.push(Target {
        name: "he-message",
        seeds: Arc::new(he_msgs.iter().map(body).collect()),
        max_random: 256,
        run: Box::new(move |b| match HeMessage::decode(b) {
            Err(_) => Verdict::Refused,
            Ok(HeMessage::PublicKey { key }) => {
                verdict(ServerKeys::from_public_key_bytes(&c, &key))
            }
            Ok(HeMessage::LayerInput { ciphertexts, .. }) => verdict(
                ciphertexts
                    .iter()
                    .enumerate()
                    .map(|(i, ct)| load_ciphertext(&c, ct, "fuzz", i))
                    .collect::<Result<Vec<_>, _>>(),
            ),
            Ok(HeMessage::LayerOutput { ciphertexts, .. }) => verdict(
                ciphertexts
                    .iter()
                    .enumerate()
                    .map(|(i, ct)| load_reply_ciphertext(&c, ct, "fuzz", i))
                    .collect::<Result<Vec<_>, _>>(),
            ),
        }),
        bound: bound(|len| 4 * len + (256 << 10)),
    });
    let c = ctx.clone();
    let bomb = seal_zstd(&zstd_bomb(64));
    out.push(Target {
        name: "he-ciphertext",
        seeds: Arc::new(vec![
            he.data.clone(),
            he.data_raw.clone(),
            he.reply.clone(),
            uncompressed(&he.reply),
            bomb,
        ]),
        max_random: 256,
        run: Box::new(move |b| {
            let a = verdict(load_ciphertext(&c, b, "fuzz", 0));
            let r = verdict(load_reply_ciphertext(&c, b, "fuzz", 0));
            if a == Verdict::Accepted || r == Verdict::Accepted {
                Verdict::Accepted
            } else {
                Verdict::Refused
            }
        }),
        bound: bound(|len| 4 * len + (256 << 10)),
    });
    let c = ctx;
    out.push(Target {
        name: "he-public-key",
        seeds: Arc::new(vec![he.public_key.clone(), uncompressed(&he.public_key)]),
        max_random: 256,
        run: Box::new(move |b| verdict(ServerKeys::from_public_key_bytes(&c, b))),
        bound: bound(|len| 4 * len + (256 << 10)),
    });

    // The public model a server sends in its hello.
    out.push(Target {
        name: "public-model",
        seeds: Arc::new(vec![public.to_bytes()]),
        max_random: 256,
        run: Box::new(|b| verdict(PublicModel::from_bytes(b))),
        bound: None,
    });

    // Model files.
    let opts = pibench_models::file::SaveOptions {
        dataset: None,
        convention: Default::default(),
        fixed: FixedPoint::default(),
        bounds: None,
    };
    let model_file = pibench_models::file::to_bytes(&net, &opts).expect("model file");
    out.push(Target {
        name: "model-file",
        seeds: Arc::new(vec![model_file]),
        max_random: 256,
        run: Box::new(|b| verdict(pibench_models::file::from_bytes(b, "fuzz"))),
        bound: None,
    });

    if store {
        out.extend(store_targets(&net));
    }
    out
}

// ------------------------------------------------------------ store files

/// A store node file: the role that wrote it, its node, its bytes.
pub type StoreFile = (Role, usize, Vec<u8>);

/// Node files of a real session: `(role, node, bytes)`, copied from both
/// parties' store folders when each starts its online phase (all written,
/// none read yet).
pub fn store_files(net: &Network, settings: &Settings) -> Vec<StoreFile> {
    let dir = tempfile::tempdir().expect("tempdir");
    let files: Arc<Mutex<Vec<StoreFile>>> = Arc::default();
    let base = |role: Role| {
        dir.path().join(match role {
            Role::Server => "server",
            Role::Client => "client",
        })
    };
    let progress = {
        let files = files.clone();
        let (sb, cb) = (base(Role::Server), base(Role::Client));
        Progress(Arc::new(move |e: &ProgressEvent<'_>| {
            if e.phase != "online" || e.node != 0 || e.inference != 0 {
                return;
            }
            let b = if e.role == Role::Server { &sb } else { &cb };
            for sess in std::fs::read_dir(b).expect("store").flatten() {
                if !sess.path().is_dir() {
                    continue;
                }
                for f in std::fs::read_dir(sess.path()).expect("session").flatten() {
                    let name = f.file_name().to_string_lossy().into_owned();
                    if let Some(node) = node_of(&name) {
                        // The party's read-ahead may consume (and remove) a
                        // node file between the listing and this read.
                        let Ok(bytes) = std::fs::read(f.path()) else {
                            continue;
                        };
                        files.lock().expect("lock").push((e.role, node, bytes));
                    }
                }
            }
        }))
    };
    let model = ServerModel::new(net.clone(), FixedPoint::default()).expect("model");
    let mut s = settings.clone();
    s.store = Some(base(Role::Server));
    s.progress = Some(progress.clone());
    let mut c = settings.clone();
    c.store = Some(base(Role::Client));
    c.progress = Some(progress);
    let x: Vec<f32> = (0..net.input.len())
        .map(|i| (i as f32 * 0.37).sin())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let (mut a, mut b) = pibench_protocol::net::duplex_pair();
        let server = tokio::spawn(async move {
            let mut rng = ChaCha12Rng::seed_from_u64(1);
            run_server(&mut a, &model, &s, &mut rng).await.map(|_| ())
        });
        let mut rng = ChaCha12Rng::seed_from_u64(2);
        let input = ClientInput {
            inputs: InputSource::Values(vec![x]),
            expected: None,
        };
        run_client(&mut b, &input, &c, &mut rng)
            .await
            .expect("client");
        server.await.expect("join").expect("server");
    });
    let mut v = std::mem::take(&mut *files.lock().expect("lock"));
    v.sort_by_key(|(r, n, _)| (*r as u8, *n));
    v
}

/// The node index of a store file name `i<inference>-n<node>.bin`.
pub fn node_of(name: &str) -> Option<usize> {
    name.strip_suffix(".bin")?.split_once("-n")?.1.parse().ok()
}

/// Settings of the store fixture (both truncation modes use the same reader).
pub fn store_settings(trunc: TruncMode) -> Settings {
    Settings {
        trunc,
        he_linear: HeParams::insecure_test_linear(),
        he_poly: HeParams::insecure_test_triples(),
        threads: 1,
        timeout: Duration::from_secs(120),
        ..Settings::default()
    }
}

/// A store opened for reading planted files.
pub struct PlantedStore {
    pub store: Store,
    pub plan: InferencePlan,
    _dir: tempfile::TempDir,
}

impl PlantedStore {
    pub fn new(net: &Network, settings: &Settings, role: Role) -> Self {
        // In memory where the system has a tmpfs (a million planted files).
        let dir = match std::path::Path::new("/dev/shm") {
            shm if shm.is_dir() => tempfile::tempdir_in(shm),
            _ => tempfile::tempdir(),
        }
        .expect("tempdir");
        let public = public_model(net);
        let store = Store::open(dir.path(), &public, role).expect("store");
        let plan = InferencePlan::new(&public, settings.trunc, settings.scheme).expect("plan");
        Self {
            store,
            plan,
            _dir: dir,
        }
    }

    pub fn path(&self, node: usize) -> PathBuf {
        self.store.dir().join(format!("i0-n{node:05}.bin"))
    }

    /// Writes `bytes` as node `node`'s file and reads it back.
    pub fn read(&self, role: Role, node: usize, bytes: &[u8]) -> Verdict {
        std::fs::write(self.path(node), bytes).expect("plant");
        match role {
            Role::Server => verdict(self.store.read_server(&self.plan, 0, node)),
            Role::Client => verdict(self.store.read_client(&self.plan, 0, node)),
        }
    }
}

fn store_targets(net: &Network) -> Vec<Target> {
    let settings = store_settings(TruncMode::Exact);
    let files = store_files(net, &settings);
    let mut out = Vec::new();
    for role in [Role::Server, Role::Client] {
        let mine: Vec<(usize, Vec<u8>)> = files
            .iter()
            .filter(|(r, _, _)| *r == role)
            .map(|(_, n, b)| (*n, b.clone()))
            .collect();
        assert!(!mine.is_empty(), "no {role:?} store files");
        let planted = PlantedStore::new(net, &settings, role);
        // Each seed is the node index (4 bytes) then the file; the node is
        // taken from the (unmutated) seed it came from by length.
        let seeds: Vec<Vec<u8>> = mine.iter().map(|(_, b)| b.clone()).collect();
        let nodes: Vec<(usize, usize)> = mine.iter().map(|(n, b)| (*n, b.len())).collect();
        let max = seeds.iter().map(Vec::len).max().unwrap_or(0);
        out.push(Target {
            name: match role {
                Role::Server => "store-server",
                Role::Client => "store-client",
            },
            seeds: Arc::new(seeds),
            max_random: 128,
            run: Box::new(move |b| {
                // Read the bytes as the node whose valid file is closest in length.
                let node = nodes
                    .iter()
                    .min_by_key(|(_, l)| l.abs_diff(b.len()))
                    .map(|(n, _)| *n)
                    .unwrap_or(1);
                planted.read(role, node, b)
            }),
            // The 1 MiB read buffer, and the node's material (its size comes
            // from the plan, not from the file: at most the largest valid file).
            bound: bound(move |_| (2 << 20) + 4 * max),
        });
    }
    out
}

/// Whether `path` holds only the given names.
pub fn only(path: &Path, names: &[&str]) -> bool {
    let mut got: Vec<String> = std::fs::read_dir(path)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    got.sort();
    got == names
}
