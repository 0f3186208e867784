//! Criterion benchmarks of the garbled truncated ReLU: fixed-key AES,
//! garbling and evaluation of a batch, for both schemes (one core).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pibench_protocol::gc::engine::{self, CircuitShape};
use pibench_protocol::gc::hash::{AesPrg, FixedKeyHash};
use pibench_protocol::gc::{ActivationKind, CircuitSpec, Scheme};

const BATCH: usize = 1024;

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

fn bench(c: &mut Criterion) {
    let hash = FixedKeyHash::new();
    let mut g = c.benchmark_group("aes");
    g.throughput(Throughput::Elements(1));
    g.bench_function("hash/1", |b| {
        b.iter(|| hash.hash(std::hint::black_box(7), 1))
    });
    g.finish();

    let spec = CircuitSpec::default_fixed_point();
    for scheme in [Scheme::HalfGates, Scheme::ThreeHalves] {
        let shape = CircuitShape::new(spec, ActivationKind::Relu, scheme);
        let (a_h, q, eval, delta) = inputs(&shape);
        let mut g = c.benchmark_group(format!("relu/{}", scheme.name()));
        g.throughput(Throughput::Elements(BATCH as u64));
        g.sample_size(20);
        let mut prg = AesPrg::new(1);
        g.bench_function("garble", |b| {
            b.iter(|| {
                engine::garble(&shape, delta, 0, &q, &mut prg, "bench").map(|r| r.0.decoding.len())
            })
        });
        let (garbling, keys) = engine::garble(&shape, delta, 0, &q, &mut prg, "bench")
            .unwrap_or_else(|e| panic!("{e}"));
        let labels = engine::encode_garbler_inputs(&shape, &keys, &a_h, "bench")
            .unwrap_or_else(|e| panic!("{e}"));
        g.bench_function("evaluate", |b| {
            b.iter_batched(
                || (),
                |()| {
                    engine::evaluate(&shape, 0, &garbling, &labels, &eval, "bench").map(|z| z.len())
                },
                BatchSize::SmallInput,
            )
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
