//! Bad peers (issue #9, "Bad input"): a peer that disconnects mid-phase,
//! stalls, sends a wrong message type, an oversized, cut or short frame, or
//! a different architecture hash.
//!
//! Both parties are the real [`run_server`] and [`run_client`]; between
//! them a scripted man-in-the-middle forwards frames and, at a chosen frame
//! (by direction, envelope family, variant and occurrence), replaces it by
//! the fault. So every fault lands at a real point of the protocol: the
//! handshake, the HE key setup, the offline HE layers, base OT and OT
//! extension, the garbled tables, and every online message. Each case
//! checks that the party that received the fault ends with a one-line
//! error naming what was wrong (and where), that the other party ends too
//! (nothing hangs: every case runs under a deadline), and, where the victim
//! can still talk, that its reason reaches the other party as an abort.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pibench_models::arch::ArchSpec;
use pibench_models::fixed::FixedPoint;
use pibench_models::graph::{FeatureShape, Init, Network};
use pibench_protocol::gc::protocol::GcMessage;
use pibench_protocol::he::proto::HeMessage;
use pibench_protocol::he::HeParams;
use pibench_protocol::inference::{
    run_client, run_server, ClientInput, InferenceError, InputSource, OnlineMessage, PublicModel,
    ServerModel, SessionMessage, Settings, TruncMode,
};
use pibench_protocol::msg::{Message, TAG_GC, TAG_HE, TAG_ONLINE, TAG_OT, TAG_SESSION};
use pibench_protocol::net::{Channel, Wire};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;
use tokio::io::{split, AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};

/// Every case must end well within this (a hang fails the test).
const DEADLINE: Duration = Duration::from_secs(180);
/// Receive timeout of a party that is not meant to time out.
const LONG: Duration = Duration::from_secs(90);

fn settings(timeout: Duration) -> Settings {
    Settings {
        trunc: TruncMode::Local,
        he_linear: HeParams::insecure_test_linear(),
        he_poly: HeParams::insecure_test_triples(),
        threads: 1,
        timeout,
        ..Settings::default()
    }
}

/// A small residual CNN on 3×8×8 with a partially masked site (ReLU and
/// identity elements), so every phase has traffic.
fn network(seed: u64) -> Network {
    let mut net = ArchSpec::Resnet {
        name: "bad-peer-resnet".into(),
        stem: 2,
        blocks: vec![1],
        widths: vec![2],
    }
    .build(FeatureShape::new(3, 8, 8), 4, Init::Seeded(seed))
    .unwrap();
    let mut rng = ChaCha12Rng::seed_from_u64(seed);
    for site in net.sites_mut() {
        site.mask.iter_mut().for_each(|m| *m = rng.gen_range(0..2));
    }
    net
}

/// Which way a frame travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    ToServer,
    ToClient,
}

/// What replaces the chosen frame.
#[derive(Debug, Clone)]
enum Fault {
    /// Both connections drop (the peer process died).
    Disconnect,
    /// The frame is never delivered, the connection stays open.
    Stall,
    /// A well-formed frame of another message family (or variant).
    Replace(Vec<u8>),
    /// A header announcing `u32::MAX` bytes, then nothing (connection open).
    Oversized,
    /// The header and half the payload, then the connection drops.
    Cut,
    /// A consistent header, but the payload loses its last `n` bytes.
    Short(usize),
    /// The frame, edited by a function (e.g. a changed model hash).
    Edit(fn(&mut Vec<u8>)),
}

/// Where the fault strikes: the `nth` frame in direction `dir` whose
/// envelope tag is `tag` and whose first body byte (variant) is `variant`.
#[derive(Debug, Clone)]
struct Trigger {
    dir: Dir,
    tag: u8,
    variant: u8,
    nth: usize,
    fault: Fault,
}

fn frame_of<M: Wire>(m: &M) -> Vec<u8> {
    let mut b = Vec::new();
    if let Some(t) = M::TAG {
        b.push(t);
    }
    m.encode(&mut b);
    b
}

/// What a case ends with.
struct Outcome {
    server: Result<(), InferenceError>,
    client: Result<Vec<Vec<f64>>, InferenceError>,
    fired: bool,
    server_s: f64,
    client_s: f64,
}

async fn read_frame(r: &mut ReadHalf<DuplexStream>) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.ok()?;
    let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
    r.read_exact(&mut buf).await.ok()?;
    Some(buf)
}

async fn write_raw(w: &mut WriteHalf<DuplexStream>, bytes: &[u8]) -> bool {
    w.write_all(bytes).await.is_ok() && w.flush().await.is_ok()
}

fn with_header(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

/// How one forwarding direction ended.
enum Ended {
    /// The source closed; the close was passed on.
    Eof,
    /// The fault dropped the connection: the other direction must drop too.
    Drop,
    /// The fault keeps the connection open without forwarding.
    Hold,
}

/// Forwards frames from `from` to `to` until the source closes or the
/// trigger fires.
async fn forward(
    mut from: ReadHalf<DuplexStream>,
    mut to: WriteHalf<DuplexStream>,
    dir: Dir,
    trigger: Option<Trigger>,
    fired: Arc<AtomicBool>,
) -> (Ended, ReadHalf<DuplexStream>, WriteHalf<DuplexStream>) {
    let mut seen = 0usize;
    loop {
        let Some(mut frame) = read_frame(&mut from).await else {
            let _ = to.shutdown().await;
            return (Ended::Eof, from, to);
        };
        let hit = match &trigger {
            Some(t) if t.dir == dir && frame.first() == Some(&t.tag) => {
                let hit = frame.get(1) == Some(&t.variant) && seen == t.nth;
                if frame.get(1) == Some(&t.variant) {
                    seen += 1;
                }
                hit
            }
            _ => false,
        };
        if !hit {
            if !write_raw(&mut to, &with_header(&frame)).await {
                return (Ended::Eof, from, to);
            }
            continue;
        }
        fired.store(true, Ordering::SeqCst);
        let fault = trigger.as_ref().map(|t| t.fault.clone());
        match fault.unwrap_or(Fault::Disconnect) {
            Fault::Disconnect => return (Ended::Drop, from, to),
            Fault::Stall => return (Ended::Hold, from, to),
            Fault::Replace(p) => {
                write_raw(&mut to, &with_header(&p)).await;
            }
            Fault::Oversized => {
                write_raw(&mut to, &u32::MAX.to_le_bytes()).await;
                return (Ended::Hold, from, to);
            }
            Fault::Cut => {
                let mut f = (frame.len() as u32).to_le_bytes().to_vec();
                f.extend_from_slice(&frame[..frame.len() / 2]);
                write_raw(&mut to, &f).await;
                return (Ended::Drop, from, to);
            }
            Fault::Short(n) => {
                frame.truncate(frame.len().saturating_sub(n));
                write_raw(&mut to, &with_header(&frame)).await;
            }
            Fault::Edit(f) => {
                f(&mut frame);
                write_raw(&mut to, &with_header(&frame)).await;
            }
        }
    }
}

fn channel(io: DuplexStream) -> Channel {
    let (r, w) = split(io);
    Channel::new(r, w)
}

/// The proxy: two forwarding directions; when one drops the connection,
/// both connections are dropped; a held direction stays open until the
/// other one ends. Returns whether the trigger fired.
async fn proxy(server_side: DuplexStream, client_side: DuplexStream, t: Option<Trigger>) -> bool {
    let fired = Arc::new(AtomicBool::new(false));
    let (sr, sw) = split(server_side);
    let (cr, cw) = split(client_side);
    let mut up = tokio::spawn(forward(cr, sw, Dir::ToServer, t.clone(), fired.clone()));
    let mut down = tokio::spawn(forward(sr, cw, Dir::ToClient, t, fired.clone()));
    let (first, up_first) = tokio::select! {
        r = &mut up => (r, true),
        r = &mut down => (r, false),
    };
    let other = if up_first { down } else { up };
    match first {
        Ok((Ended::Drop, _, _)) | Err(_) => other.abort(),
        Ok((_, from, to)) => {
            // Held (or closed) halves stay alive until the other side ends.
            let _ = other.await;
            drop((from, to));
        }
    }
    fired.load(Ordering::SeqCst)
}

/// Runs one session through the proxy.
async fn run_case(
    server_settings: Settings,
    client_settings: Settings,
    trigger: Option<Trigger>,
    expected: Option<PublicModel>,
) -> Outcome {
    let net = network(1);
    let model = ServerModel::new(net.clone(), FixedPoint::default()).unwrap();
    let (s_io, ps_io) = tokio::io::duplex(1 << 20);
    let (c_io, pc_io) = tokio::io::duplex(1 << 20);
    let proxy = tokio::spawn(proxy(ps_io, pc_io, trigger));
    let server = tokio::spawn(async move {
        let mut ch = channel(s_io);
        let mut rng = ChaCha12Rng::seed_from_u64(11);
        let t = Instant::now();
        let r = run_server(&mut ch, &model, &server_settings, &mut rng)
            .await
            .map(|_| ());
        (r, t.elapsed().as_secs_f64())
    });
    let x: Vec<f32> = {
        let mut rng = ChaCha12Rng::seed_from_u64(5);
        (0..net.input.len())
            .map(|_| rng.gen_range(-2.0..2.0))
            .collect()
    };
    let client = tokio::spawn(async move {
        let mut ch = channel(c_io);
        let mut rng = ChaCha12Rng::seed_from_u64(12);
        let t = Instant::now();
        let r = run_client(
            &mut ch,
            &ClientInput {
                inputs: InputSource::Values(vec![x]),
                expected,
            },
            &client_settings,
            &mut rng,
        )
        .await
        .map(|o| o.logits);
        (r, t.elapsed().as_secs_f64())
    });
    let all = async {
        let (server, server_s) = server.await.unwrap();
        let (client, client_s) = client.await.unwrap();
        let fired = proxy.await.unwrap();
        Outcome {
            server,
            client,
            fired,
            server_s,
            client_s,
        }
    };
    tokio::time::timeout(DEADLINE, all)
        .await
        .expect("a party hung past the deadline")
}

/// The error of the victim and of the other party, each checked to be one
/// line. The other party may have succeeded only if `other_may_succeed`
/// (the fault struck its last message).
fn errors_or(o: &Outcome, victim: Dir, case: &str, other_may_succeed: bool) -> (String, String) {
    let s = o.server.as_ref().err().map(|e| e.to_string());
    let c = o.client.as_ref().err().map(|e| e.to_string());
    eprintln!("{case}:\n  server: {s:?}\n  client: {c:?}");
    for (who, e) in [("server", &s), ("client", &c)] {
        if let Some(e) = e {
            assert!(
                !e.contains('\n'),
                "{case}: {who}'s error is not one line: {e}"
            );
            assert!(e.len() < 600, "{case}: {who}'s error is too long: {e}");
        }
    }
    let (v, other) = match victim {
        Dir::ToServer => (s, c),
        Dir::ToClient => (c, s),
    };
    let v = v.unwrap_or_else(|| panic!("{case}: the victim succeeded"));
    let other = match other {
        Some(e) => e,
        None if other_may_succeed => String::new(),
        None => panic!("{case}: the other party succeeded"),
    };
    (v, other)
}

fn errors(o: &Outcome, victim: Dir, case: &str) -> (String, String) {
    errors_or(o, victim, case, false)
}

fn has(e: &str, parts: &[&str], case: &str) {
    for p in parts {
        assert!(e.contains(p), "{case}: {p:?} missing from: {e}");
    }
}

/// The phases a fault can strike, as (name, direction, tag, variant).
/// Variants: session 0 hello; HE 0 public key, 1 layer input, 2 layer
/// output; OT 0 base sender point, 1 base receiver points, 2 extension
/// columns; GC 0 garbled tables, 1 garbler labels; online 0 input, 1
/// reply, 3 logits.
/// A fault point: name, direction, envelope tag, variant.
type Point = (&'static str, Dir, u8, u8);

const POINTS: &[Point] = &[
    ("handshake hello to server", Dir::ToServer, TAG_SESSION, 0),
    ("handshake hello to client", Dir::ToClient, TAG_SESSION, 0),
    ("setup HE public key", Dir::ToServer, TAG_HE, 0),
    ("setup base OT (sender point)", Dir::ToServer, TAG_OT, 0),
    ("setup base OT (receiver points)", Dir::ToClient, TAG_OT, 1),
    ("offline HE layer input", Dir::ToServer, TAG_HE, 1),
    ("offline HE layer output", Dir::ToClient, TAG_HE, 2),
    ("offline OT extension", Dir::ToServer, TAG_OT, 2),
    ("offline GC tables", Dir::ToClient, TAG_GC, 0),
    ("online input", Dir::ToServer, TAG_ONLINE, 0),
    ("online garbler labels", Dir::ToClient, TAG_GC, 1),
    ("online reply", Dir::ToServer, TAG_ONLINE, 1),
    ("online logits", Dir::ToClient, TAG_ONLINE, 3),
];

fn trigger(point: &Point, nth: usize, fault: Fault) -> Trigger {
    Trigger {
        dir: point.1,
        tag: point.2,
        variant: point.3,
        nth,
        fault,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_run_through_the_proxy_succeeds() {
    let o = run_case(settings(LONG), settings(LONG), None, None).await;
    o.server.expect("server");
    let logits = o.client.expect("client");
    assert_eq!(logits[0].len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_disconnects_in_any_phase_ends_both_sides() {
    for p in POINTS {
        // The second occurrence where there is one (mid-phase), else the first.
        for nth in [1, 0] {
            let case = format!("disconnect at {} #{nth}", p.0);
            let o = run_case(
                settings(LONG),
                settings(LONG),
                Some(trigger(p, nth, Fault::Disconnect)),
                None,
            )
            .await;
            if !o.fired {
                continue;
            }
            let last = p.2 == TAG_ONLINE && p.3 == 3;
            let (victim, _) = errors_or(&o, p.1, &case, last);
            has(&victim, &["peer closed the connection"], &case);
            // Where: the phase and the node (or garbled site).
            assert!(
                victim.contains(", ") && !victim.starts_with("homomorphic"),
                "{case}: the error does not say where: {victim}"
            );
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_peer_is_timed_out() {
    let short = Duration::from_secs(2);
    for p in [&POINTS[0], &POINTS[6], &POINTS[11]] {
        let case = format!("stall at {}", p.0);
        // The victim has a short timeout; the other party waits long enough
        // to receive the victim's explanation.
        let (s, c) = match p.1 {
            Dir::ToServer => (settings(short), settings(LONG)),
            Dir::ToClient => (settings(LONG), settings(short)),
        };
        let o = run_case(s, c, Some(trigger(p, 0, Fault::Stall)), None).await;
        assert!(o.fired, "{case}: the trigger never fired");
        let (victim, other) = errors(&o, p.1, &case);
        has(&victim, &["peer sent nothing for 2 s", "(timeout)"], &case);
        has(&other, &["the peer aborted", "timeout"], &case);
        let waited = match p.1 {
            Dir::ToServer => o.server_s,
            Dir::ToClient => o.client_s,
        };
        assert!(
            (2.0..62.0).contains(&waited),
            "{case}: victim ended after {waited:.1} s"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_message_type_is_named() {
    let logits = frame_of(&OnlineMessage::Logits { values: vec![1, 2] });
    let he_key = frame_of(&HeMessage::PublicKey { key: vec![0; 8] });
    let labels = frame_of(&GcMessage::GarblerLabels {
        batch: 0,
        labels: vec![7; 3],
    });
    let accept = frame_of(&SessionMessage::Accept);
    let cases: Vec<(&Point, Vec<u8>, &[&str])> = vec![
        (&POINTS[0], accept.clone(), &["expected hello, got accept"]),
        (
            &POINTS[1],
            labels.clone(),
            &["expected a session message, got a gc message"],
        ),
        (
            &POINTS[5],
            logits.clone(),
            &["expected a he message, got a online message"],
        ),
        (
            &POINTS[8],
            he_key.clone(),
            &["expected a gc message, got a he message"],
        ),
        (
            &POINTS[7],
            labels.clone(),
            &["expected a ot message, got a gc message"],
        ),
        (&POINTS[11], logits.clone(), &["expected the reply"]),
        (
            &POINTS[10],
            logits,
            &["expected a gc message, got a online message"],
        ),
    ];
    for (p, frame, want) in cases {
        let case = format!("wrong type at {}", p.0);
        let o = run_case(
            settings(LONG),
            settings(LONG),
            Some(trigger(p, 0, Fault::Replace(frame))),
            None,
        )
        .await;
        assert!(o.fired, "{case}: the trigger never fired");
        let (victim, other) = errors(&o, p.1, &case);
        has(&victim, want, &case);
        // The victim can still talk: its reason reaches the other party.
        has(&other, &["the peer aborted"], &case);
        has(&other, want, &case);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_cut_and_short_frames_are_refused() {
    for p in [&POINTS[1], &POINTS[6], &POINTS[8], &POINTS[11]] {
        // Oversized: refused from the header alone, long before the timeout.
        let case = format!("oversized frame at {}", p.0);
        let o = run_case(
            settings(LONG),
            settings(LONG),
            Some(trigger(p, 0, Fault::Oversized)),
            None,
        )
        .await;
        assert!(o.fired, "{case}: the trigger never fired");
        let (victim, other) = errors(&o, p.1, &case);
        has(
            &victim,
            &["frame of 4294967295 bytes exceeds the limit of 268435456 bytes"],
            &case,
        );
        has(&other, &["the peer aborted", "exceeds the limit"], &case);
        let t = if p.1 == Dir::ToServer {
            o.server_s
        } else {
            o.client_s
        };
        assert!(
            t < LONG.as_secs_f64(),
            "{case}: refused only after {t:.1} s"
        );

        // Cut: the header promises more than arrives before the connection drops.
        let case = format!("cut frame at {}", p.0);
        let o = run_case(
            settings(LONG),
            settings(LONG),
            Some(trigger(p, 0, Fault::Cut)),
            None,
        )
        .await;
        assert!(o.fired, "{case}: the trigger never fired");
        let (victim, _) = errors_or(&o, p.1, &case, true);
        has(&victim, &["peer closed the connection"], &case);
        // At the handshake the client may find the connection gone while
        // flushing its own hello, before it reads the cut frame.
        if p.2 != TAG_SESSION {
            has(&victim, &["frame cut after"], &case);
        }

        // Short: a consistent frame whose message lacks its last bytes.
        let case = format!("short frame at {}", p.0);
        let o = run_case(
            settings(LONG),
            settings(LONG),
            Some(trigger(p, 0, Fault::Short(3))),
            None,
        )
        .await;
        assert!(o.fired, "{case}: the trigger never fired");
        let (victim, other) = errors(&o, p.1, &case);
        has(&victim, &["malformed", "at byte offset"], &case);
        has(&other, &["the peer aborted", "malformed"], &case);
    }
}

#[allow(clippy::ptr_arg)] // Fault::Edit takes a `fn(&mut Vec<u8>)`.
fn flip_hello_hash(frame: &mut Vec<u8>) {
    // The hash is the last 32 bytes of a hello.
    let n = frame.len();
    frame[n - 1] ^= 1;
}

fn flip_hello_model(frame: &mut Vec<u8>) {
    // Change one hex digit of the first mask in the public model (JSON),
    // keeping the frame's layout: the model no longer matches its hash.
    let Ok(Message::Session(SessionMessage::Hello {
        version,
        settings,
        mut model,
        model_hash,
    })) = Message::decode(frame)
    else {
        panic!("not a hello");
    };
    let text = String::from_utf8(model.clone()).unwrap();
    let at = text.find("\"bits\":\"").unwrap() + 8;
    model[at] = if model[at] == b'0' { b'1' } else { b'0' };
    *frame = frame_of(&SessionMessage::Hello {
        version,
        settings,
        model,
        model_hash,
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_architecture_hash_is_refused_on_both_sides() {
    // The client expects another model (same layout, other masks).
    let other = network(2);
    let enc =
        pibench_models::reference::EncodedNetwork::new(&other, FixedPoint::default()).unwrap();
    let expected = PublicModel::new(&other, &enc).unwrap();
    let o = run_case(settings(LONG), settings(LONG), None, Some(expected)).await;
    // Both parties compare the hashes: each refuses, naming the field.
    let (c, s) = errors(&o, Dir::ToClient, "client expects another model");
    for e in [&c, &s] {
        has(
            e,
            &["model (public architecture hash) differs"],
            "expected model",
        );
    }

    // A hello whose hash does not match its model, and one whose model does
    // not match its hash.
    for (name, f) in [
        ("hash", flip_hello_hash as fn(&mut Vec<u8>)),
        ("model", flip_hello_model),
    ] {
        let case = format!("server hello with a changed {name}");
        let o = run_case(
            settings(LONG),
            settings(LONG),
            Some(trigger(&POINTS[1], 0, Fault::Edit(f))),
            None,
        )
        .await;
        assert!(o.fired, "{case}: the trigger never fired");
        let (c, s) = errors(&o, Dir::ToClient, &case);
        has(
            &c,
            &["model hash (does not match the model sent) differs"],
            &case,
        );
        has(
            &s,
            &["the peer aborted", "does not match the model sent"],
            &case,
        );
    }

    // The client's hello with another expected hash.
    let case = "client hello with another expected hash";
    let o = run_case(
        settings(LONG),
        settings(LONG),
        Some(trigger(&POINTS[0], 0, Fault::Edit(flip_hello_hash))),
        None,
    )
    .await;
    assert!(o.fired, "{case}: the trigger never fired");
    let (s, c) = errors(&o, Dir::ToServer, case);
    has(&s, &["model (public architecture hash) differs"], case);
    has(&c, &["the peer aborted", "public architecture hash"], case);
}

/// A fault in the online phase with `--store` on both sides: the session
/// folders are removed, only the manifest is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_online_leaves_no_store_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(LONG);
    s.store = Some(dir.path().join("server"));
    let mut c = settings(LONG);
    c.store = Some(dir.path().join("client"));
    for (p, fault) in [
        (&POINTS[11], Fault::Disconnect),
        (&POINTS[10], Fault::Short(1)),
    ] {
        let case = format!("{fault:?} at {} with stores", p.0);
        let o = run_case(s.clone(), c.clone(), Some(trigger(p, 0, fault)), None).await;
        assert!(o.fired, "{case}: the trigger never fired");
        errors(&o, p.1, &case);
        for side in ["server", "client"] {
            let left: Vec<String> = std::fs::read_dir(dir.path().join(side))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(
                left,
                vec!["pibench-store.json".to_string()],
                "{case}: {side}"
            );
        }
    }
}
