//! Criterion benchmarks of the HE linear layers (real N = 8192 parameters):
//! client encryption, server evaluation (with re-randomisation and
//! flooding) and client decryption of one ResNet-18 layer-1 convolution.

use criterion::{criterion_group, criterion_main, Criterion};
use pibench_models::fixed::P;
use pibench_protocol::he::linear::{
    client_decrypt, client_encrypt, server_evaluate, LayerShape, LinearPlan,
};
use pibench_protocol::he::{ClientKeys, HeParams, ServerKeys};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;

fn bench_conv(c: &mut Criterion) {
    let ctx = HeParams::linear().context().expect("parameters");
    let keys = ClientKeys::generate(&ctx).expect("keys");
    let server = ServerKeys::from_public_key_bytes(&ctx, &keys.public_key_bytes().expect("pk"))
        .expect("server keys");
    let shape = LayerShape::conv(64, 64, 32, 3, 1, 1);
    let plan = LinearPlan::new(&ctx, "layer1.0.conv1", shape).expect("plan");
    let mut rng = ChaCha12Rng::seed_from_u64(1);
    let weights: Vec<i64> = (0..shape.weight_len())
        .map(|_| rng.gen_range(-4096..4096))
        .collect();
    let mask: Vec<u64> = (0..shape.input_len())
        .map(|_| rng.gen_range(0..P))
        .collect();
    let cts = client_encrypt(&ctx, &keys, &plan, &mask).expect("encrypt");
    let out = server_evaluate(&ctx, &server, &plan, &weights, &cts, 1, &mut rng).expect("evaluate");

    let mut g = c.benchmark_group("he_conv_64x64_32x32_3x3");
    g.sample_size(10);
    g.bench_function("client_encrypt", |b| {
        b.iter(|| client_encrypt(&ctx, &keys, &plan, &mask).expect("encrypt"))
    });
    g.bench_function("server_evaluate_1_thread", |b| {
        b.iter(|| {
            server_evaluate(&ctx, &server, &plan, &weights, &cts, 1, &mut rng).expect("evaluate")
        })
    });
    g.bench_function("client_decrypt", |b| {
        b.iter(|| client_decrypt(&ctx, &keys, &plan, &out.ciphertexts).expect("decrypt"))
    });
    g.finish();
}

criterion_group!(benches, bench_conv);
criterion_main!(benches);
