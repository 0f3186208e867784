//! Criterion benchmarks of the garbled truncated ReLU, one core:
//! fixed-key AES; single AND gates of `LANES` circuits (the per-gate
//! kernels, both schemes, every kernel this CPU has); garbling and
//! evaluation of a batch of ReLUs; correlated-OT extension.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pibench_protocol::gc::backend::Backend;
use pibench_protocol::gc::engine::{self, CircuitShape, GarbleSeeds, GarblerKeys, Garbling};
use pibench_protocol::gc::garble::{
    GarbledTables, HalfGatesEvaluator, HalfGatesGarbler, LabelArena, ThreeHalvesEvaluator,
    ThreeHalvesGarbler, LANES,
};
use pibench_protocol::gc::hash::{AesPrg, FixedKeyHash, Kernel};
use pibench_protocol::gc::{ActivationKind, CircuitSpec, Scheme};
use pibench_protocol::ot::iknp::pack_choices;
use pibench_protocol::ot::{CotReceiver, CotSender};
use rand::{Rng, SeedableRng};

const BATCH: usize = 1024;
/// AND gates per iteration of the per-gate benchmarks.
const GATES: usize = 64;

fn inputs(shape: &CircuitShape) -> (Vec<u64>, Vec<u128>, Vec<u128>, u128) {
    let n = shape.input_bits();
    let mut prg = AesPrg::new(42);
    let delta = engine::random_delta(&mut prg);
    let a_h: Vec<u64> = (0..BATCH)
        .map(|_| (prg.next_block() as u64) % shape.spec.modulus)
        .collect();
    let mut q = vec![0u128; BATCH * n];
    prg.fill(&mut q);
    let eval: Vec<u128> = q
        .iter()
        .map(|&l| {
            if prg.next_block() & 1 == 1 {
                l ^ delta
            } else {
                l
            }
        })
        .collect();
    (a_h, q, eval, delta)
}

fn hashes() -> Vec<FixedKeyHash> {
    Kernel::available()
        .into_iter()
        .filter_map(|k| FixedKeyHash::with_kernel(k).ok())
        .collect()
}

fn bench_aes(c: &mut Criterion) {
    let mut g = c.benchmark_group("aes");
    for hash in hashes() {
        g.throughput(Throughput::Elements(32));
        let name = hash.kernel().name();
        g.bench_function(format!("hash32/{name}"), |b| {
            let mut x: [u128; 32] = core::array::from_fn(|i| i as u128);
            b.iter(|| {
                hash.hash_array_with(&mut x, |k| k as u128);
                x[0]
            })
        });
    }
    g.finish();
}

/// `GATES` AND gates of `LANES` circuits each, chained (`c = a ∧ b`, then `a = c`).
fn bench_gates(c: &mut Criterion) {
    let mut prg = AesPrg::new(9);
    let delta = engine::random_delta(&mut prg);
    let mut wires = [[0u128; LANES]; 2];
    for w in wires.iter_mut() {
        prg.fill(w);
    }
    for hash in hashes() {
        let kname = hash.kernel().name();
        let mut g = c.benchmark_group(format!("gate/{kname}"));
        g.throughput(Throughput::Elements((GATES * LANES) as u64));
        let mut arena = LabelArena::with_capacity(GATES + 2);
        // Written in place, as the engine's reused piece buffers are.
        let mut tables = GarbledTables {
            words: vec![0; GATES * 4 * LANES],
            control: Vec::new(),
        };
        g.bench_function("half-gates/garble", |b| {
            b.iter(|| {
                arena.clear();
                let mut x = arena.push(wires[0]);
                let y = arena.push(wires[1]);
                let mut gb =
                    HalfGatesGarbler::new(&hash, delta, 0, 0, LANES, &mut tables.words, &mut arena);
                for _ in 0..GATES {
                    x = gb.and(x, y);
                }
                x
            })
        });
        let garbled = tables.clone();
        g.bench_function("half-gates/evaluate", |b| {
            b.iter(|| {
                arena.clear();
                let mut x = arena.push(wires[0]);
                let y = arena.push(wires[1]);
                let mut ev =
                    HalfGatesEvaluator::new(&hash, 0, 0, LANES, &garbled.words, &mut arena);
                for _ in 0..GATES {
                    x = ev.and(x, y);
                }
                x
            })
        });
        let mut coins = AesPrg::new(3);
        g.bench_function("three-halves/garble", |b| {
            b.iter(|| {
                arena.clear();
                tables.words.clear();
                tables.control.clear();
                let mut x = arena.push(wires[0]);
                let y = arena.push(wires[1]);
                let mut gb = ThreeHalvesGarbler::new(
                    &hash,
                    delta,
                    0,
                    0,
                    LANES,
                    &mut tables,
                    &mut coins,
                    &mut arena,
                );
                for _ in 0..GATES {
                    x = gb.and(x, y);
                }
                x
            })
        });
        let garbled = tables.clone();
        g.bench_function("three-halves/evaluate", |b| {
            b.iter(|| {
                arena.clear();
                let mut x = arena.push(wires[0]);
                let y = arena.push(wires[1]);
                let mut ev = ThreeHalvesEvaluator::new(
                    &hash,
                    0,
                    0,
                    LANES,
                    &garbled.words,
                    &garbled.control,
                    &mut arena,
                );
                for _ in 0..GATES {
                    x = ev.and(x, y);
                }
                x
            })
        });
        g.finish();
    }
}

fn bench_relu(c: &mut Criterion) {
    let spec = CircuitSpec::default_fixed_point();
    for hash in hashes() {
        for scheme in [Scheme::HalfGates, Scheme::ThreeHalves] {
            let shape = CircuitShape::new(spec, ActivationKind::Relu, scheme);
            let (a_h, q, eval, delta) = inputs(&shape);
            let mut g =
                c.benchmark_group(format!("relu/{}/{}", scheme.name(), hash.kernel().name()));
            g.throughput(Throughput::Elements(BATCH as u64));
            g.sample_size(20);
            let seeds = GarbleSeeds {
                labels: 1,
                coins: 2,
            };
            let mut garbling = Garbling::default();
            let mut keys = GarblerKeys {
                delta,
                input_zero_labels: Vec::new(),
                output_masks: Vec::new(),
            };
            g.bench_function("garble", |b| {
                b.iter(|| {
                    engine::garble_with(
                        &hash,
                        &shape,
                        delta,
                        0,
                        &q,
                        seeds,
                        "bench",
                        &mut garbling,
                        &mut keys,
                    )
                })
            });
            let labels = engine::encode_garbler_inputs(&shape, &keys, &a_h, "bench")
                .unwrap_or_else(|e| panic!("{e}"));
            g.bench_function("evaluate", |b| {
                b.iter_batched(
                    || (),
                    |()| {
                        engine::evaluate_with(&hash, &shape, 0, &garbling, &labels, &eval, "bench")
                            .map(|z| z.len())
                    },
                    BatchSize::SmallInput,
                )
            });
            g.finish();
        }
    }
}

fn bench_ot(c: &mut Criterion) {
    let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(4);
    let (base, m1) = CotReceiver::base_start(&mut rng);
    let (mut sender, m2) = CotSender::base_respond(&m1, &mut rng).unwrap_or_else(|e| panic!("{e}"));
    let mut receiver = CotReceiver::base_finish(&base, &m2).unwrap_or_else(|e| panic!("{e}"));
    let ots = BATCH * 43;
    let choices: Vec<bool> = (0..ots).map(|_| rng.gen()).collect();
    let packed = pack_choices(&choices);
    let mut g = c.benchmark_group("ot");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(20);
    g.bench_function("iknp/receiver", |b| {
        b.iter(|| receiver.job(ots, packed.clone()).run(1).1.len())
    });
    let (msg, _) = receiver.job(ots, packed.clone()).run(1);
    g.bench_function("iknp/sender", |b| {
        b.iter(|| sender.job(ots).run(&msg, 1).map(|q| q.len()))
    });
    g.finish();
}

criterion_group!(benches, bench_aes, bench_gates, bench_relu, bench_ot);
criterion_main!(benches);
