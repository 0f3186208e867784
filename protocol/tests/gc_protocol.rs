//! Garbler and evaluator as two tokio tasks over an in-memory duplex, OT
//! included, with traffic counted per phase; and hostile peers.

use pibench_models::fixed::{self, P};
use pibench_protocol::gc::engine::CircuitShape;
use pibench_protocol::gc::protocol::{
    phase, EvaluatorSession, GarblerSession, GcMessage, CHUNK_CIRCUITS,
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
        let site = session
            .offline(&mut cs, &shape_s, a_h.len(), "layer1")
            .await?;
        session.online(&mut cs, &site, &a_h, "layer1").await?;
        Ok::<_, GcError>((site.output_masks(), cs.meter().clone()))
    });
    let client = tokio::spawn(async move {
        let mut rng = ChaCha12Rng::seed_from_u64(2);
        let mut session = EvaluatorSession::setup(&mut cc, &mut rng).await?;
        let site = session.offline(&mut cc, &shape, &b_h, "layer1").await?;
        let z = session.online(&mut cc, &site, "layer1").await?;
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
    let chunks = count.div_ceil(CHUNK_CIRCUITS) as u64;
    let online = sm.get(phase::ONLINE_GC);
    assert_eq!(
        online.bytes_sent,
        // Per message: 4-byte length, envelope tag, message tag, batch (8), label count (4).
        (count * 43 * 16) as u64 + chunks * (4 + 1 + 13)
    );
    assert_eq!(online.bytes_received, 0);
    let gc = sm.get(phase::OFFLINE_GC);
    let shape = CircuitShape::new(spec, kind, scheme);
    let payload =
        (scheme.table_bytes(shape.ands * count) + 8 * shape.wire_weights.len() * count) as u64;
    assert!(gc.bytes_sent >= payload);
    assert!(gc.bytes_sent < payload + 64 * chunks);
    let ot = sm.get(phase::OFFLINE_OT);
    assert!(ot.bytes_received >= (count * 43 * 16) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relu_half_gates_round_trip() {
    run_pair(Scheme::HalfGates, ActivationKind::Relu, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relu_three_halves_round_trip_with_chunks() {
    run_pair(
        Scheme::ThreeHalves,
        ActivationKind::Relu,
        CHUNK_CIRCUITS + 5,
    )
    .await;
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
