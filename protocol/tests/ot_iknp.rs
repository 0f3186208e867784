//! Base OT + IKNP correlated OT extension over an in-memory duplex.

use pibench_protocol::net;
use pibench_protocol::ot::{CotReceiver, CotSender, OtError, OtMessage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correlated_ot_over_duplex() {
    let (mut cs, mut cr) = net::duplex_pair();
    cs.set_phase("offline/ot");
    cr.set_phase("offline/ot");
    let mut rng = ChaCha12Rng::seed_from_u64(9);
    let choices: Vec<Vec<bool>> = [1usize, 200, 1000]
        .iter()
        .map(|&n| (0..n).map(|_| rng.gen()).collect())
        .collect();
    let counts: Vec<usize> = choices.iter().map(Vec::len).collect();
    let sender = tokio::spawn(async move {
        let mut rng = ChaCha12Rng::seed_from_u64(1);
        let mut s = CotSender::setup(&mut cs, &mut rng).await.unwrap();
        let mut out = Vec::new();
        for n in counts {
            out.push(s.extend(&mut cs, n).await.unwrap());
        }
        (s.delta(), out, cs.meter().get("offline/ot"))
    });
    let mut rng2 = ChaCha12Rng::seed_from_u64(2);
    let mut r = CotReceiver::setup(&mut cr, &mut rng2).await.unwrap();
    let mut ts = Vec::new();
    for c in &choices {
        ts.push(r.extend(&mut cr, c).await.unwrap());
    }
    let (delta, qs, traffic) = sender.await.unwrap();
    assert_eq!(delta & 1, 1);
    for ((q, t), c) in qs.iter().zip(&ts).zip(&choices) {
        for j in 0..c.len() {
            assert_eq!(t[j], q[j] ^ if c[j] { delta } else { 0 });
        }
    }
    // Base OT: 32 B + 128·32 B; extension: 16 B per OT rounded up to 128 OTs.
    // Per message: frame length 4, envelope tag 1, variant 1 (+ 8 for the OT count).
    let ext: u64 = [128u64, 256, 1024].iter().map(|n| n * 16 + 14).sum();
    assert_eq!(traffic.bytes_received, 4 + 1 + 33 + ext);
    assert_eq!(traffic.bytes_sent, 4 + 1 + 5 + 128 * 32);
}

#[tokio::test]
async fn wrong_messages_are_errors() {
    let (mut cs, mut cr) = net::duplex_pair();
    cr.send(&OtMessage::BaseReceiverPoints(vec![]))
        .await
        .unwrap();
    cr.flush().await.unwrap();
    let mut rng = ChaCha12Rng::seed_from_u64(1);
    assert!(matches!(
        CotSender::setup(&mut cs, &mut rng).await,
        Err(OtError::Unexpected { .. })
    ));
    drop(cr);
    let mut rng = ChaCha12Rng::seed_from_u64(1);
    assert!(matches!(
        CotSender::setup(&mut cs, &mut rng).await,
        Err(OtError::Net(_))
    ));
}
