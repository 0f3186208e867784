//! The garbled activation circuits against their plaintext twin, on edge
//! values and with proptest, for both garbling schemes.

use pibench_models::fixed::{self, P};
use pibench_protocol::gc::circuit::{count_gates, evaluate_plain};
use pibench_protocol::gc::engine::{self, CircuitShape};
use pibench_protocol::gc::hash::AesPrg;
use pibench_protocol::gc::{ActivationKind, CircuitSpec, GcError, Scheme};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

const KINDS: [ActivationKind; 2] = [ActivationKind::Relu, ActivationKind::Truncate];
const SCHEMES: [Scheme; 2] = [Scheme::HalfGates, Scheme::ThreeHalves];

/// Garbles and evaluates a batch with labels drawn as correlated OT would give them.
fn garbled(shape: &CircuitShape, a_h: &[u64], b_h: &[u64], seed: u64) -> Vec<u64> {
    let n = shape.input_bits();
    let mut prg = AesPrg::new(seed as u128 + 1);
    let delta = engine::random_delta(&mut prg);
    let mut q = vec![0u128; b_h.len() * n];
    prg.fill(&mut q);
    let eval_labels: Vec<u128> = q
        .iter()
        .enumerate()
        .map(|(j, &l)| {
            l ^ if (b_h[j / n] >> (j % n)) & 1 == 1 {
                delta
            } else {
                0
            }
        })
        .collect();
    let (garbling, keys) = engine::garble(shape, delta, seed, &q, &mut prg, "test").unwrap();
    let labels = engine::encode_garbler_inputs(shape, &keys, a_h, "test").unwrap();
    let z = engine::evaluate(shape, seed, &garbling, &labels, &eval_labels, "test").unwrap();
    z.iter()
        .zip(&keys.output_masks)
        .map(|(&z, &rho)| fixed::sub(z, rho))
        .collect()
}

fn edge_shares() -> Vec<(u64, u64)> {
    let spec = CircuitSpec::default_fixed_point();
    let half = (spec.modulus - 1) / 2;
    let f = spec.trunc_bits;
    let mut ys: Vec<i64> = vec![0, 1, -1, 2, -2];
    for t in [1i64 << f, (1 << f) - 1, (1 << f) + 1] {
        ys.extend([t, -t]);
    }
    // Boundary of the sign decision after truncation, and the largest magnitudes.
    for v in [half as i64, half as i64 + 1, half as i64 - 1] {
        for d in [0i64, 1, -1, (1 << f) - 1] {
            let y = (v << f) + d;
            if y.unsigned_abs() <= fixed::HALF {
                ys.extend([y, -y]);
            }
        }
    }
    ys.extend([
        fixed::HALF as i64,
        -(fixed::HALF as i64),
        fixed::HALF as i64 - 4096,
    ]);
    let mut out = Vec::new();
    let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(99);
    for &y in &ys {
        let y = fixed::from_i64(y);
        for a in [
            0,
            1,
            P - 1,
            P - 2,
            (1 << f) - 1,
            1 << f,
            rng.gen_range(0..P),
        ] {
            out.push((a, fixed::sub(y, a)));
        }
        // b = 0 and b = P − 1.
        out.push((y, 0));
        out.push((fixed::add(y, 1), P - 1));
    }
    out
}

#[test]
fn and_gate_counts_are_within_budget() {
    let spec = CircuitSpec::default_fixed_point();
    assert_eq!(spec.input_bits, 43);
    assert_eq!(spec.wrap_offset, 368);
    let relu = count_gates(&spec, ActivationKind::Relu);
    let trunc = count_gates(&spec, ActivationKind::Truncate);
    assert!(relu.ands < 288, "ReLU uses {} ANDs", relu.ands);
    assert!(trunc.ands < relu.ands);
    assert_eq!(relu.ands, 199);
    let shape = CircuitShape::new(spec, ActivationKind::Relu, Scheme::HalfGates);
    assert_eq!(shape.wire_weights.len(), 42);
    assert_eq!(
        shape.offline_gc_bytes_per_circuit(),
        (199 * 32 + 42 * 8) as f64
    );
}

#[test]
fn plaintext_circuit_matches_reference_on_edges() {
    let spec = CircuitSpec::default_fixed_point();
    let pf = spec.modulus;
    let h = (pf - 1) / 2;
    let direct = [
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
    ];
    for kind in KINDS {
        for &(a, b) in &direct {
            assert_eq!(
                evaluate_plain(&spec, kind, a, b),
                spec.reference(kind, a, b),
                "{kind:?} a_h={a} b_h={b}"
            );
        }
        for (a, b) in edge_shares() {
            let (ah, bh) = fixed::truncate_shares(a, b, spec.trunc_bits);
            assert_eq!(
                evaluate_plain(&spec, kind, ah, bh),
                spec.reference(kind, ah, bh)
            );
        }
    }
}

#[test]
fn garbled_circuit_matches_reference_on_edges() {
    let spec = CircuitSpec::default_fixed_point();
    let shares = edge_shares();
    let a_h: Vec<u64> = shares.iter().map(|s| s.0 >> spec.trunc_bits).collect();
    let b_h: Vec<u64> = shares.iter().map(|s| s.1 >> spec.trunc_bits).collect();
    for kind in KINDS {
        for scheme in SCHEMES {
            let shape = CircuitShape::new(spec, kind, scheme);
            let got = garbled(&shape, &a_h, &b_h, 7);
            for (i, (a, b)) in shares.iter().enumerate() {
                let want = spec.reference(kind, a_h[i], b_h[i]);
                assert_eq!(got[i], want, "{kind:?} {scheme:?} a={a} b={b}");
                // And the truncation error bound against the true value, for
                // every y whose truncation (± the carry error) stays inside
                // the centred range of P_f; only the top 3 units of the field
                // at each end are outside it.
                let y = fixed::to_i64(fixed::add(*a, *b));
                let t = y >> spec.trunc_bits;
                if t.unsigned_abs() + 2 > (spec.modulus - 1) / 2 {
                    continue;
                }
                let expect = match kind {
                    ActivationKind::Relu | ActivationKind::MaxRelu { .. } => t.max(0),
                    ActivationKind::Truncate | ActivationKind::Max { .. } => t,
                };
                let err = fixed::to_i64(got[i]) - expect;
                assert!(
                    (-1..=2).contains(&err),
                    "{kind:?} y={y} got {} err {err}",
                    fixed::to_i64(got[i])
                );
            }
        }
    }
}

#[test]
fn wrong_lengths_are_errors_naming_the_site() {
    let spec = CircuitSpec::default_fixed_point();
    let shape = CircuitShape::new(spec, ActivationKind::Relu, Scheme::ThreeHalves);
    let mut prg = AesPrg::new(5);
    let delta = engine::random_delta(&mut prg);
    let q = vec![7u128; 3 * 43];
    let (garbling, keys) = engine::garble(&shape, delta, 0, &q, &mut prg, "conv2").unwrap();
    let labels = engine::encode_garbler_inputs(&shape, &keys, &[0, 1, 2], "conv2").unwrap();
    let mut short = garbling.clone();
    short.tables.words.pop();
    let err = engine::evaluate(&shape, 0, &short, &labels, &q, "conv2").unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, GcError::Length { expected, .. } if expected == 3 * 199 * 3),
        "{msg}"
    );
    assert!(
        msg.contains("conv2") && msg.contains("garbled tables"),
        "{msg}"
    );
    let err = engine::evaluate(&shape, 0, &garbling, &labels[1..], &q, "conv2").unwrap_err();
    assert!(err.to_string().contains("garbler input labels"));
    let mut bad = garbling.clone();
    bad.decoding.pop();
    assert!(engine::evaluate(&shape, 0, &bad, &labels, &q, "conv2").is_err());
    let mut bad = garbling.clone();
    bad.decoding[0] = P;
    assert!(matches!(
        engine::evaluate(&shape, 0, &bad, &labels, &q, "conv2"),
        Err(GcError::Range { .. })
    ));
    assert!(engine::evaluate(&shape, 0, &garbling, &labels, &q[1..], "conv2").is_err());
    assert!(matches!(
        engine::encode_garbler_inputs(&shape, &keys, &[0, 1, spec.modulus + 1], "conv2"),
        Err(GcError::Range { index: 2, .. })
    ));
    assert!(engine::garble(&shape, delta & !1, 0, &q, &mut prg, "conv2").is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn plaintext_circuit_matches_reference(a in 0..=CircuitSpec::default_fixed_point().modulus,
                                           b in 0..=CircuitSpec::default_fixed_point().modulus) {
        let spec = CircuitSpec::default_fixed_point();
        for kind in KINDS {
            prop_assert_eq!(evaluate_plain(&spec, kind, a, b), spec.reference(kind, a, b));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn garbled_batches_match_reference(seed in any::<u64>(), len in 1usize..40, three in any::<bool>(),
                                       relu in any::<bool>()) {
        let spec = CircuitSpec::default_fixed_point();
        let kind = if relu { ActivationKind::Relu } else { ActivationKind::Truncate };
        let scheme = if three { Scheme::ThreeHalves } else { Scheme::HalfGates };
        let shape = CircuitShape::new(spec, kind, scheme);
        let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(seed);
        let (a_h, b_h): (Vec<u64>, Vec<u64>) = (0..len)
            .map(|_| {
                let a = rng.gen_range(0..P);
                let b = rng.gen_range(0..P);
                (a >> spec.trunc_bits, b >> spec.trunc_bits)
            })
            .unzip();
        let got = garbled(&shape, &a_h, &b_h, seed);
        for i in 0..len {
            prop_assert_eq!(got[i], spec.reference(kind, a_h[i], b_h[i]));
        }
    }
}

/// The AES-NI gate kernels produce bit-identical tables, decoding and masks
/// to the portable ones, and each evaluates the other's tables, for both
/// schemes and kinds and a batch that ends in a partial group of lanes.
#[test]
fn kernels_agree_bit_for_bit() {
    use pibench_protocol::gc::engine::{GarbleSeeds, GarblerKeys, Garbling};
    use pibench_protocol::gc::hash::{FixedKeyHash, Kernel};
    let kernels = Kernel::available();
    let spec = CircuitSpec::new(14).unwrap();
    let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(21);
    let count = 37;
    let (a_h, b_h): (Vec<u64>, Vec<u64>) = (0..count)
        .map(|_| {
            (
                rng.gen_range(0..=spec.modulus),
                rng.gen_range(0..=spec.modulus),
            )
        })
        .unzip();
    for kind in KINDS {
        for scheme in SCHEMES {
            let shape = CircuitShape::new(spec, kind, scheme);
            let n = shape.input_bits();
            let mut prg = AesPrg::new(77);
            let delta = engine::random_delta(&mut prg);
            let mut q = vec![0u128; count * n];
            prg.fill(&mut q);
            let eval: Vec<u128> = q
                .iter()
                .enumerate()
                .map(|(j, &l)| {
                    l ^ if (b_h[j / n] >> (j % n)) & 1 == 1 {
                        delta
                    } else {
                        0
                    }
                })
                .collect();
            let seeds = GarbleSeeds {
                labels: 5,
                coins: 6,
            };
            let mut outs = Vec::new();
            for &k in &kernels {
                let hash = FixedKeyHash::with_kernel(k).unwrap();
                let mut g = Garbling::default();
                let mut keys = GarblerKeys {
                    delta,
                    input_zero_labels: Vec::new(),
                    output_masks: Vec::new(),
                };
                engine::garble_with(&hash, &shape, delta, 3, &q, seeds, "k", &mut g, &mut keys)
                    .unwrap();
                outs.push((hash, g, keys));
            }
            for (h, g, keys) in &outs {
                assert_eq!(g, &outs[0].1, "{kind:?} {scheme:?} {:?} tables", h.kernel());
                assert_eq!(keys, &outs[0].2);
                let labels = engine::encode_garbler_inputs(&shape, keys, &a_h, "k").unwrap();
                for (h2, _, _) in &outs {
                    let z = engine::evaluate_with(h2, &shape, 3, g, &labels, &eval, "k").unwrap();
                    for i in 0..count {
                        assert_eq!(
                            fixed::sub(z[i], keys.output_masks[i]),
                            spec.reference(kind, a_h[i], b_h[i]),
                            "{kind:?} {scheme:?} garbled by {:?}, evaluated by {:?}, element {i}",
                            h.kernel(),
                            h2.kernel()
                        );
                    }
                }
            }
        }
    }
}
