//! Garbler and evaluator as two tokio tasks over an in-memory duplex, OT
//! included, with traffic counted per phase; and hostile peers.

use pibench_models::fixed::{self, P};
use pibench_protocol::gc::engine::CircuitShape;
use pibench_protocol::gc::protocol::{
    phase, piece_sizes, EvaluatorSession, GarblerSession, GcMessage, StoreReader, PIECE_CIRCUITS,
};
use pibench_protocol::gc::{ActivationKind, CircuitSpec, GcError, Scheme};
use pibench_protocol::net::{self, Wire};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;

fn shares(count: usize, seed: u64) -> (Vec<u64>, Vec<u64>, Vec<i64>) {
    let mut rng = ChaCha12Rng::seed_from_u64(seed);
    let mut a = Vec::new();
    let mut b = Vec::new();
    let mut y = Vec::new();
    for _ in 0..count {
        let v = rng.gen_range(-(1i64 << 40)..(1i64 << 40));
        let s = rng.gen_range(0..P);
        a.push(s);
        b.push(fixed::sub(fixed::from_i64(v), s));
        y.push(v);
    }
    (a, b, y)
}

async fn run_pair(scheme: Scheme, kind: ActivationKind, count: usize) {
    run_pair_threads(scheme, kind, count, 2).await;
}

/// One two-party run with `threads` per party; returns the garbler's output
/// masks and the evaluator's results (for comparisons across thread counts).
async fn run_pair_threads(
    scheme: Scheme,
    kind: ActivationKind,
    count: usize,
    threads: usize,
) -> (Vec<u64>, Vec<u64>) {
    let spec = CircuitSpec::default_fixed_point();
    let shape = CircuitShape::new(spec, kind, scheme);
    let (a, b, y) = shares(count, 17);
    let f = spec.trunc_bits;
    let a_h: Vec<u64> = a.iter().map(|v| v >> f).collect();
    let b_h: Vec<u64> = b.iter().map(|v| v >> f).collect();
    let (mut cs, mut cc) = net::duplex_pair();
    let shape_s = shape.clone();
    let server = tokio::spawn(async move {
        let mut rng = ChaCha12Rng::seed_from_u64(1);
        let mut session = GarblerSession::setup(&mut cs, &mut rng).await?;
        session.set_threads(threads);
        let site = session
            .offline(&mut cs, &shape_s, a_h.len(), "layer1")
            .await?;
        session.online(&mut cs, &site, &a_h, "layer1").await?;
        Ok::<_, GcError>((site.output_masks(), cs.meter().clone()))
    });
    let client = tokio::spawn(async move {
        let mut rng = ChaCha12Rng::seed_from_u64(2);
        let mut session = EvaluatorSession::setup(&mut cc, &mut rng).await?;
        session.set_threads(threads);
        let site = session.offline(&mut cc, &shape, &b_h, "layer1").await?;
        let z = session.online(&mut cc, &site, "layer1").await?;
        assert_eq!(session.timings().evaluated, b_h.len() as u64);
        Ok::<_, GcError>((z, cc.meter().clone()))
    });
    let (rho, sm) = server.await.unwrap().unwrap();
    let (z, cm) = client.await.unwrap().unwrap();
    assert_eq!(z.len(), count);
    for i in 0..count {
        let v = fixed::to_i64(fixed::sub(z[i], rho[i]));
        let t = y[i] >> f;
        let want = if kind == ActivationKind::Relu {
            t.max(0)
        } else {
            t
        };
        assert!(
            (-1..=2).contains(&(v - want)),
            "element {i}: got {v}, want {want}"
        );
        if kind == ActivationKind::Relu && t < -2 {
            assert_eq!(v, 0);
        }
    }
    // Traffic per phase, both directions agree.
    for p in [phase::OFFLINE_OT, phase::OFFLINE_GC, phase::ONLINE_GC] {
        assert_eq!(sm.get(p).bytes_sent, cm.get(p).bytes_received, "{p}");
        assert_eq!(sm.get(p).bytes_received, cm.get(p).bytes_sent, "{p}");
    }
    let pieces = piece_sizes(count).len() as u64;
    let online = sm.get(phase::ONLINE_GC);
    // Per piece: frame length 4 + envelope tag 1 + variant 1 + batch 8 + label count 4.
    assert_eq!(
        online.bytes_sent,
        (count * 43 * 16) as u64 + pieces * (4 + 14)
    );
    assert_eq!(online.bytes_received, 0);
    let gc = sm.get(phase::OFFLINE_GC);
    let shape = CircuitShape::new(spec, kind, scheme);
    let payload =
        (scheme.table_bytes(shape.ands * count) + 8 * shape.wire_weights.len() * count) as u64;
    assert!(gc.bytes_sent >= payload);
    assert!(gc.bytes_sent < payload + 64 * pieces);
    let ot = sm.get(phase::OFFLINE_OT);
    // Extension: 16 B per OT rounded up to 128 OTs per piece, plus 4 + 1 + 1 + 8 per message.
    let ext: u64 = piece_sizes(count)
        .iter()
        .map(|&m| ((m * 43).div_ceil(128) * 128 * 16 + 14) as u64)
        .sum();
    // Base OT: the client's point (frame 4 + tag 1 + variant 1 + 32 bytes).
    assert_eq!(ot.bytes_received, ext + 4 + 1 + 1 + 32);
    (rho, z)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relu_half_gates_round_trip() {
    run_pair(Scheme::HalfGates, ActivationKind::Relu, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relu_three_halves_round_trip_with_pieces() {
    run_pair(Scheme::ThreeHalves, ActivationKind::Relu, 4096 + 5).await;
}

/// The same seeds give the same masks and results with 1 and 3 threads per party.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_does_not_depend_on_threads() {
    for scheme in [Scheme::HalfGates, Scheme::ThreeHalves] {
        let one = run_pair_threads(scheme, ActivationKind::Relu, 300, 1).await;
        let three = run_pair_threads(scheme, ActivationKind::Relu, 300, 3).await;
        assert_eq!(one, three, "{scheme:?}");
    }
}

#[test]
fn pieces_cover_the_site() {
    for count in [
        0usize, 1, 15, 16, 64, 65, 100, 1023, 1024, 4101, 16384, 100_000,
    ] {
        let sizes = piece_sizes(count);
        assert_eq!(sizes.iter().sum::<usize>(), count, "{count}");
        assert!(sizes.iter().all(|&m| (1..=PIECE_CIRCUITS).contains(&m)));
        // All but the last are whole groups of 16 lanes.
        assert!(sizes.iter().rev().skip(1).all(|&m| m % 16 == 0));
    }
    assert_eq!(piece_sizes(100), vec![64, 36]);
    assert_eq!(piece_sizes(100_000).len(), 98);
}

/// A site written to the store and read back evaluates like the original.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_sites_round_trip() {
    let spec = CircuitSpec::new(13).unwrap();
    let shape = CircuitShape::new(spec, ActivationKind::Relu, Scheme::ThreeHalves);
    let count = 150;
    let (a, b, _) = shares(count, 5);
    let a_h: Vec<u64> = a.iter().map(|v| v >> 13).collect();
    let b_h: Vec<u64> = b.iter().map(|v| v >> 13).collect();
    let (mut cs, mut cc) = net::duplex_pair();
    let shape_s = shape.clone();
    let shape_r = shape.clone();
    let a_s = a_h.clone();
    let server = tokio::spawn(async move {
        let mut rng = ChaCha12Rng::seed_from_u64(1);
        let mut session = GarblerSession::setup(&mut cs, &mut rng).await.unwrap();
        let site = session
            .offline(&mut cs, &shape_s, count, "s")
            .await
            .unwrap();
        let mut bytes = Vec::new();
        site.write_to(&mut bytes).unwrap();
        let mut r = StoreReader::new(&bytes[..], "server.bin");
        let back = pibench_protocol::gc::protocol::GarblerSite::read_from(&mut r, &shape_s, count)
            .unwrap();
        assert_eq!(back.output_masks(), site.output_masks());
        session.online(&mut cs, &back, &a_s, "s").await.unwrap();
        back.output_masks()
    });
    let mut rng = ChaCha12Rng::seed_from_u64(2);
    let mut session = EvaluatorSession::setup(&mut cc, &mut rng).await.unwrap();
    let site = session.offline(&mut cc, &shape, &b_h, "s").await.unwrap();
    let mut bytes = Vec::new();
    site.write_to(&mut bytes).unwrap();
    let mut r = StoreReader::new(&bytes[..], "client.bin");
    let back =
        pibench_protocol::gc::protocol::EvaluatorSite::read_from(&mut r, &shape_r, count).unwrap();
    // A file one byte short names the file and the offset.
    let mut r = StoreReader::new(&bytes[..bytes.len() - 1], "client.bin");
    let err = pibench_protocol::gc::protocol::EvaluatorSite::read_from(&mut r, &shape_r, count)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("client.bin") && err.contains("offset"),
        "{err}"
    );
    let z = session.online(&mut cc, &back, "s").await.unwrap();
    let rho = server.await.unwrap();
    for i in 0..count {
        assert_eq!(
            fixed::sub(z[i], rho[i]),
            spec.reference(ActivationKind::Relu, a_h[i], b_h[i])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_round_trip() {
    run_pair(Scheme::HalfGates, ActivationKind::Truncate, 33).await;
    run_pair(Scheme::ThreeHalves, ActivationKind::Truncate, 9).await;
}

#[test]
fn messages_round_trip_and_refuse_truncation() {
    let msg = GcMessage::Garbled {
        scheme: 1,
        kind: 0,
        batch: 3,
        circuits: 2,
        words: vec![1, 2, 3],
        control: vec![31, 0, 17, 5],
        decoding: vec![9, 8],
    };
    let mut buf = Vec::new();
    msg.encode(&mut buf);
    assert_eq!(GcMessage::decode(&buf).unwrap(), msg);
    for cut in 0..buf.len() {
        assert!(GcMessage::decode(&buf[..cut]).is_err(), "cut at {cut}");
    }
    let labels = GcMessage::GarblerLabels {
        batch: 0,
        labels: vec![1, u128::MAX],
    };
    let mut buf = Vec::new();
    labels.encode(&mut buf);
    assert_eq!(GcMessage::decode(&buf).unwrap(), labels);
    buf.push(0);
    assert!(GcMessage::decode(&buf).is_err());
    // A length prefix far beyond the payload is refused before allocating.
    let mut hostile = vec![1u8];
    hostile.extend_from_slice(&0u64.to_le_bytes());
    hostile.extend_from_slice(&u32::MAX.to_le_bytes());
    let err = GcMessage::decode(&hostile).unwrap_err();
    assert!(err.what.contains("garbler labels"), "{err}");
}

/// A garbler whose tables are one word short: the evaluator names the site and the size.
#[tokio::test]
async fn short_tables_are_reported() {
    let spec = CircuitSpec::default_fixed_point();
    let shape = CircuitShape::new(spec, ActivationKind::Relu, Scheme::HalfGates);
    let (mut cs, mut cc) = net::duplex_pair();
    let server = tokio::spawn(async move {
        let mut rng = ChaCha12Rng::seed_from_u64(1);
        let mut session = pibench_protocol::ot::CotSender::setup(&mut cs, &mut rng)
            .await
            .unwrap();
        let _ = session.extend(&mut cs, 2 * 43).await.unwrap();
        cs.send(&GcMessage::Garbled {
            scheme: 0,
            kind: 0,
            batch: 0,
            circuits: 2,
            words: vec![0; 2 * 199 * 4 - 1],
            control: vec![],
            decoding: vec![0; 84],
        })
        .await
        .unwrap();
        cs.flush().await.unwrap();
        cs
    });
    let mut rng = ChaCha12Rng::seed_from_u64(2);
    let mut session = EvaluatorSession::setup(&mut cc, &mut rng).await.unwrap();
    let err = session
        .offline(&mut cc, &shape, &[1, 2], "block3.relu")
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("block3.relu") && msg.contains(&format!("{}", 2 * 199 * 32)),
        "{msg}"
    );
    drop(server.await.unwrap());
}

/// A garbler that stops after the base OTs: the evaluator gets an error, not a hang or a panic.
#[tokio::test]
async fn peer_that_stops_mid_transfer() {
    let spec = CircuitSpec::default_fixed_point();
    let shape = CircuitShape::new(spec, ActivationKind::Relu, Scheme::HalfGates);
    let (mut cs, mut cc) = net::duplex_pair();
    let server = tokio::spawn(async move {
        let mut rng = ChaCha12Rng::seed_from_u64(1);
        let _ = GarblerSession::setup(&mut cs, &mut rng).await.unwrap();
        // Half a frame, then hang up.
        cs.send_bytes(&[0u8; 10], "partial").await.unwrap();
        cs.flush().await.unwrap();
        drop(cs);
    });
    let mut rng = ChaCha12Rng::seed_from_u64(2);
    let mut session = EvaluatorSession::setup(&mut cc, &mut rng).await.unwrap();
    let err = session
        .offline(&mut cc, &shape, &[1, 2, 3], "fc1")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("fc1"), "{err}");
    server.await.unwrap();
    // And a garbler whose evaluator vanished.
    let (mut cs, cc) = net::duplex_pair();
    drop(cc);
    let mut rng = ChaCha12Rng::seed_from_u64(3);
    assert!(GarblerSession::setup(&mut cs, &mut rng).await.is_err());
}
