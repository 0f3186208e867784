//! The max-pool circuits (issue #15): `MaxRelu` (ReLU fused with a max pool)
//! and `Max` over a window of shared values, against their plaintext twin on
//! edge values and with proptest, in plaintext and garbled with both schemes.

use pibench_models::fixed::{self, P};
use pibench_protocol::gc::circuit::{count_gates, evaluate_plain_window, MAX_WINDOW};
use pibench_protocol::gc::engine::{self, CircuitShape};
use pibench_protocol::gc::hash::AesPrg;
use pibench_protocol::gc::{ActivationKind, CircuitSpec, Scheme};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

const SCHEMES: [Scheme; 2] = [Scheme::HalfGates, Scheme::ThreeHalves];

fn kinds(window: u8) -> [ActivationKind; 2] {
    [
        ActivationKind::MaxRelu { window },
        ActivationKind::Max { window },
    ]
}

/// Garbles and evaluates `a_h.len() / window` circuits with evaluator labels
/// as correlated OT would give them; returns the decoded values.
fn garbled(shape: &CircuitShape, a_h: &[u64], b_h: &[u64], seed: u64) -> Vec<u64> {
    let n = shape.value_bits();
    let mut prg = AesPrg::new(seed as u128 + 11);
    let delta = engine::random_delta(&mut prg);
    let mut q = vec![0u128; b_h.len() * n];
    prg.fill(&mut q);
    let eval_labels: Vec<u128> = q
        .iter()
        .enumerate()
        .map(|(j, &l)| l ^ ((((b_h[j / n] >> (j % n)) & 1) as u128).wrapping_neg() & delta))
        .collect();
    let (garbling, keys) = engine::garble(shape, delta, seed, &q, &mut prg, "pool").unwrap();
    let labels = engine::encode_garbler_inputs(shape, &keys, a_h, "pool").unwrap();
    let z = engine::evaluate(shape, seed, &garbling, &labels, &eval_labels, "pool").unwrap();
    assert_eq!(z.len(), a_h.len() / shape.window());
    z.iter()
        .zip(&keys.output_masks)
        .map(|(&z, &rho)| fixed::sub(z, rho))
        .collect()
}

/// Truncated share pairs `(a_h, b_h)` of values at the edges of the circuit:
/// zero, ±1, the largest magnitudes, the sign boundary, and shares at 0 / P_f.
fn edge_values(spec: &CircuitSpec) -> Vec<(u64, u64)> {
    let pf = spec.modulus;
    let h = (pf - 1) / 2;
    let mut out = vec![
        (0, 0),
        (pf, pf),
        (pf, 0),
        (0, pf),
        (h, 0),
        (h + 1, 0),
        (h, h + 1),
        (pf - 1, 1),
        (pf - 1, 0),
        (pf - 1, pf - 1),
        (h + 1, h + 1),
        (1, 0),
        (0, pf - 1),
        (h - 1, 0),
        (h + 2, 0),
    ];
    let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(5);
    for v in [0i64, 1, -1, 2, -2, 1000, -1000, h as i64, -(h as i64)] {
        let x = v.rem_euclid(pf as i64) as u64;
        let a = rng.gen_range(0..=pf);
        out.push((a, (x + pf - a % pf) % pf));
    }
    out
}

#[test]
fn windowed_kinds_have_codes_and_bounds() {
    for w in 2..=MAX_WINDOW {
        for k in kinds(w) {
            assert_eq!(ActivationKind::from_code(k.code()), Some(k));
            assert_eq!(k.window(), w as usize);
            assert!(k.validate().is_ok());
        }
    }
    for bad in [0u8, 1, MAX_WINDOW + 1] {
        assert!(ActivationKind::MaxRelu { window: bad }.validate().is_err());
        assert!(ActivationKind::Max { window: bad }.validate().is_err());
        assert_eq!(ActivationKind::from_code(0x20 | bad), None);
        assert_eq!(ActivationKind::from_code(0x40 | bad), None);
    }
    assert_eq!(ActivationKind::from_code(0), Some(ActivationKind::Relu));
    assert_eq!(ActivationKind::from_code(1), Some(ActivationKind::Truncate));
    assert_eq!(ActivationKind::from_code(2), None);
}

/// A 2×2 max pool: 4 element reductions, 3 comparisons with multiplexers and
/// one ReLU; written down so a change to the circuit shows here.
#[test]
fn max_pool_gate_counts() {
    let spec = CircuitSpec::default_fixed_point();
    let n = spec.input_bits as u64;
    let relu = count_gates(&spec, ActivationKind::Relu).ands;
    let trunc = count_gates(&spec, ActivationKind::Truncate).ands;
    // Truncate = the reduction alone; ReLU adds n − 1 ANDs.
    assert_eq!(relu, trunc + n - 1);
    for w in [2u8, 4, 9] {
        let k = w as u64;
        let max_relu = count_gates(&spec, ActivationKind::MaxRelu { window: w }).ands;
        let max = count_gates(&spec, ActivationKind::Max { window: w }).ands;
        // Each comparison: n ANDs (borrow chain) + n + 1 (multiplexer).
        assert_eq!(max, k * trunc + (k - 1) * (2 * n + 1), "window {w}");
        assert_eq!(max_relu, max + n - 1, "window {w}");
    }
    // The saving of fusing: a 2×2 window of ReLUs followed by a max pool
    // costs, unfused, four ReLU circuits and then a 4-input max over their
    // re-shared outputs (at least the same reduction and comparisons as `Max`),
    // plus a second round; fused, one `MaxRelu` circuit.
    let fused = count_gates(&spec, ActivationKind::MaxRelu { window: 4 }).ands;
    let unfused = 4 * relu + count_gates(&spec, ActivationKind::Max { window: 4 }).ands;
    assert_eq!((fused, unfused), (931, 1685));
    println!(
        "2x2 max pool fused with ReLU: {fused} ANDs; unfused (4 ReLUs, then a max): {unfused} \
         ({:.0} % saved); 4 ReLUs alone: {}",
        100.0 * (1.0 - fused as f64 / unfused as f64),
        4 * relu
    );
}

#[test]
fn plaintext_max_matches_reference_on_edges() {
    for f in [1u32, 12, 16] {
        let spec = CircuitSpec::new(f).unwrap();
        let edges = edge_values(&spec);
        let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(u64::from(f));
        for w in [2u8, 4, 9] {
            for kind in kinds(w) {
                // Every edge value in every window position, the rest random edges.
                for (i, &(a0, b0)) in edges.iter().enumerate() {
                    for pos in 0..w as usize {
                        let mut a = Vec::new();
                        let mut b = Vec::new();
                        for j in 0..w as usize {
                            let (x, y) = if j == pos {
                                (a0, b0)
                            } else {
                                edges[rng.gen_range(0..edges.len())]
                            };
                            a.push(x);
                            b.push(y);
                        }
                        assert_eq!(
                            evaluate_plain_window(&spec, kind, &a, &b),
                            spec.reference_window(kind, &a, &b),
                            "f={f} {kind:?} edge {i} at {pos}: a={a:?} b={b:?}"
                        );
                    }
                }
                // All elements equal, all at the sign boundary.
                let h = (spec.modulus - 1) / 2;
                for v in [(h, 0), (h + 1, 0), (0, 0), (spec.modulus, spec.modulus)] {
                    let a = vec![v.0; w as usize];
                    let b = vec![v.1; w as usize];
                    assert_eq!(
                        evaluate_plain_window(&spec, kind, &a, &b),
                        spec.reference_window(kind, &a, &b)
                    );
                }
            }
        }
    }
}

#[test]
fn reference_is_the_max_of_the_truncated_values() {
    let spec = CircuitSpec::default_fixed_point();
    let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(8);
    for _ in 0..200 {
        let ys: Vec<i64> = (0..4)
            .map(|_| rng.gen_range(-1_000_000i64..1_000_000))
            .collect();
        let (a, b): (Vec<u64>, Vec<u64>) = ys
            .iter()
            .map(|&y| {
                let a = rng.gen_range(0..P);
                fixed::truncate_shares(a, fixed::sub(fixed::from_i64(y), a), spec.trunc_bits)
            })
            .unzip();
        let got = fixed::to_i64(spec.reference_window(ActivationKind::Max { window: 4 }, &a, &b));
        let want = ys.iter().map(|y| y >> spec.trunc_bits).max().unwrap();
        // Each truncated share pair is off by e ∈ {−1, 0, 1, 2} (models::fixed::truncate_shares).
        assert!((-1..=2).contains(&(got - want)), "{ys:?}: {got} vs {want}");
        let relu =
            fixed::to_i64(spec.reference_window(ActivationKind::MaxRelu { window: 4 }, &a, &b));
        assert_eq!(relu, got.max(0));
    }
}

#[test]
fn garbled_max_matches_reference_on_edges() {
    let spec = CircuitSpec::default_fixed_point();
    let edges = edge_values(&spec);
    let w = 4u8;
    // 2 windows per edge value (it leads and it trails), plus a partial lane group.
    let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(21);
    let mut a_h = Vec::new();
    let mut b_h = Vec::new();
    for &(a0, b0) in &edges {
        for lead in [true, false] {
            for j in 0..w {
                let (x, y) = if (j == 0) == lead {
                    (a0, b0)
                } else {
                    edges[rng.gen_range(0..edges.len())]
                };
                a_h.push(x);
                b_h.push(y);
            }
        }
    }
    for kind in kinds(w) {
        for scheme in SCHEMES {
            let shape = CircuitShape::new(spec, kind, scheme);
            let got = garbled(&shape, &a_h, &b_h, 3);
            for (c, &g) in got.iter().enumerate() {
                let r = c * w as usize..(c + 1) * w as usize;
                assert_eq!(
                    g,
                    spec.reference_window(kind, &a_h[r.clone()], &b_h[r]),
                    "{kind:?} {scheme:?} window {c}"
                );
            }
        }
    }
}

#[test]
fn garbler_inputs_of_a_window_are_range_and_length_checked() {
    let spec = CircuitSpec::default_fixed_point();
    let shape = CircuitShape::new(
        spec,
        ActivationKind::MaxRelu { window: 4 },
        Scheme::HalfGates,
    );
    let mut prg = AesPrg::new(1);
    let delta = engine::random_delta(&mut prg);
    let q = vec![0u128; 2 * shape.input_bits()];
    let (_, keys) = engine::garble(&shape, delta, 0, &q, &mut prg, "pool").unwrap();
    // 2 circuits take 8 values; 7 is an error naming the site.
    let err = engine::encode_garbler_inputs(&shape, &keys, &[0; 7], "pool").unwrap_err();
    assert!(err.to_string().contains("pool"), "{err}");
    let mut vals = vec![0u64; 8];
    vals[5] = spec.modulus + 1;
    let err = engine::encode_garbler_inputs(&shape, &keys, &vals, "pool").unwrap_err();
    assert!(err.to_string().contains("pool"), "{err}");
    // A partial window of evaluator labels is refused.
    let err = engine::garble(&shape, delta, 0, &q[..q.len() - 1], &mut prg, "pool").unwrap_err();
    assert!(err.to_string().contains("pool"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn plaintext_max_matches_reference(vals in proptest::collection::vec((0..=CircuitSpec::default_fixed_point().modulus,
                                                                         0..=CircuitSpec::default_fixed_point().modulus), 2..=9)) {
        let spec = CircuitSpec::default_fixed_point();
        let w = vals.len() as u8;
        let (a, b): (Vec<u64>, Vec<u64>) = vals.into_iter().unzip();
        for kind in kinds(w) {
            prop_assert_eq!(evaluate_plain_window(&spec, kind, &a, &b), spec.reference_window(kind, &a, &b));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn garbled_max_batches_match_reference(seed in any::<u64>(), windows in 1usize..40, w in 2u8..=9,
                                           three in any::<bool>(), relu in any::<bool>()) {
        let spec = CircuitSpec::default_fixed_point();
        let kind = if relu { ActivationKind::MaxRelu { window: w } } else { ActivationKind::Max { window: w } };
        let scheme = if three { Scheme::ThreeHalves } else { Scheme::HalfGates };
        let shape = CircuitShape::new(spec, kind, scheme);
        let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(seed);
        let (a_h, b_h): (Vec<u64>, Vec<u64>) = (0..windows * w as usize)
            .map(|_| (rng.gen_range(0..P) >> spec.trunc_bits, rng.gen_range(0..P) >> spec.trunc_bits))
            .unzip();
        let got = garbled(&shape, &a_h, &b_h, seed);
        prop_assert_eq!(got.len(), windows);
        for (c, &g) in got.iter().enumerate() {
            let r = c * w as usize..(c + 1) * w as usize;
            prop_assert_eq!(g, spec.reference_window(kind, &a_h[r.clone()], &b_h[r]));
        }
    }
}

/// Garbler and evaluator as two tokio tasks over an in-memory duplex (OT
/// included): `windows` max-pool circuits of `w` shared values each, through
/// the offline material on disk and back; traffic counted per phase.
async fn two_party_windows(kind: ActivationKind, scheme: Scheme, windows: usize) {
    use pibench_protocol::gc::protocol::{
        phase, EvaluatorSession, EvaluatorSite, GarblerSession, GarblerSite, StoreReader,
    };
    use pibench_protocol::net;
    use rand_chacha::ChaCha12Rng;

    let spec = CircuitSpec::new(13).unwrap();
    let shape = CircuitShape::new(spec, kind, scheme);
    let k = shape.window();
    let mut rng = ChaCha12Rng::seed_from_u64(41);
    let mut ys = Vec::new();
    let (a_h, b_h): (Vec<u64>, Vec<u64>) = (0..windows * k)
        .map(|_| {
            let y = rng.gen_range(-(1i64 << 36)..(1i64 << 36));
            ys.push(y);
            let a = rng.gen_range(0..P);
            fixed::truncate_shares(a, fixed::sub(fixed::from_i64(y), a), spec.trunc_bits)
        })
        .unzip();
    let (mut cs, mut cc) = net::duplex_pair();
    let (shape_s, a_s) = (shape.clone(), a_h.clone());
    let server = tokio::spawn(async move {
        let mut rng = ChaCha12Rng::seed_from_u64(1);
        let mut session = GarblerSession::setup(&mut cs, &mut rng).await.unwrap();
        let site = session
            .offline(&mut cs, &shape_s, windows, "pool1")
            .await
            .unwrap();
        let mut bytes = Vec::new();
        site.write_to(&mut bytes).unwrap();
        let back = GarblerSite::read_from(
            &mut StoreReader::new(&bytes[..], "s.bin"),
            &shape_s,
            windows,
        )
        .unwrap();
        // A window short of values is refused before anything is sent.
        let err = session
            .online(&mut cs, &back, &a_s[1..], "pool1")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("pool1"), "{err}");
        session.online(&mut cs, &back, &a_s, "pool1").await.unwrap();
        (back.output_masks(), cs.meter().clone())
    });
    let mut rng = ChaCha12Rng::seed_from_u64(2);
    let mut session = EvaluatorSession::setup(&mut cc, &mut rng).await.unwrap();
    let site = session
        .offline(&mut cc, &shape, &b_h, "pool1")
        .await
        .unwrap();
    assert_eq!(site.count(), windows);
    let mut bytes = Vec::new();
    site.write_to(&mut bytes).unwrap();
    let back =
        EvaluatorSite::read_from(&mut StoreReader::new(&bytes[..], "c.bin"), &shape, windows)
            .unwrap();
    let z = session.online(&mut cc, &back, "pool1").await.unwrap();
    let (rho, sm) = server.await.unwrap();
    assert_eq!(z.len(), windows);
    for c in 0..windows {
        let r = c * k..(c + 1) * k;
        let got = fixed::sub(z[c], rho[c]);
        assert_eq!(
            got,
            spec.reference_window(kind, &a_h[r.clone()], &b_h[r.clone()]),
            "window {c}"
        );
        // Against the true values: max of ⌊y/2^f⌋ up to the truncation error −1..=2.
        let t = ys[r].iter().map(|y| y >> spec.trunc_bits).max().unwrap();
        let want = if matches!(kind, ActivationKind::MaxRelu { .. }) {
            t.max(0)
        } else {
            t
        };
        let err = fixed::to_i64(got) - want;
        assert!(
            (-1..=2).contains(&err),
            "window {c}: {} vs {want}",
            fixed::to_i64(got)
        );
    }
    // Online: the garbler's labels of k values × n bits per window, 16 B each.
    let online = sm.get(phase::ONLINE_GC);
    let pieces = pibench_protocol::gc::protocol::piece_sizes(windows).len() as u64;
    assert_eq!(
        online.bytes_sent,
        (windows * k * spec.input_bits * 16) as u64 + pieces * (4 + 14)
    );
    assert_eq!(
        session.timings().ots,
        (windows * k * spec.input_bits) as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_party_max_relu_2x2_half_gates() {
    two_party_windows(
        ActivationKind::MaxRelu { window: 4 },
        Scheme::HalfGates,
        150,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_party_max_3x3_three_halves() {
    two_party_windows(ActivationKind::Max { window: 9 }, Scheme::ThreeHalves, 37).await;
}

/// A max pool after a site with polynomial elements cannot use the garbled
/// max: the plan refuses it and names the node.
#[test]
fn polynomial_sites_before_a_max_pool_are_refused_clearly() {
    use pibench_models::arch::{ArchSpec, VggPool};
    use pibench_models::fixed::FixedPoint;
    use pibench_models::graph::{FeatureShape, Init, PolyCoeffs};
    use pibench_models::reference::EncodedNetwork;
    use pibench_protocol::inference::{InferencePlan, PublicModel, TruncMode};
    let spec = ArchSpec::Vgg {
        name: "vgg-tiny".into(),
        convs: vec![1, 1],
        widths: vec![4, 8],
        pool: VggPool::Max,
    };
    let mut net = spec
        .build(FeatureShape::new(3, 8, 8), 10, Init::Seeded(1))
        .unwrap();
    let site = net.sites_mut().next().unwrap();
    site.mask[0] = 0;
    let c = site.shape.c;
    site.poly = Some(PolyCoeffs {
        a2: vec![0.1; c],
        a1: vec![0.5; c],
        a0: vec![0.0; c],
    });
    let name = site.name.clone();
    let enc = EncodedNetwork::new(&net, FixedPoint::default()).unwrap();
    let public = PublicModel::new(&net, &enc).unwrap();
    let err = InferencePlan::new(&public, TruncMode::Local, Scheme::HalfGates)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&name) && err.contains("max pool") && err.contains("polynomial"),
        "{err}"
    );
}
