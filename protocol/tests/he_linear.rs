//! Homomorphic linear layers against their plaintext twin, with small
//! insecure parameters (one `#[ignore]` test uses the real ones).

use pibench_models::fixed::{self, P};
use pibench_protocol::he::cipher::{ciphertext_bytes, load_ciphertext};
use pibench_protocol::he::linear::{
    client_decrypt, client_encrypt, reference_linear, server_evaluate, LayerShape, LinearPlan,
};
use pibench_protocol::he::{ClientKeys, HeContext, HeError, HeParams, ServerKeys};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;

fn setup(params: HeParams) -> (HeContext, ClientKeys, ServerKeys) {
    let ctx = params.context().unwrap();
    let keys = ClientKeys::generate(&ctx).unwrap();
    let server =
        ServerKeys::from_public_key_bytes(&ctx, &keys.public_key_bytes().unwrap()).unwrap();
    (ctx, keys, server)
}

/// Runs one layer locally; returns the smallest noise budget of the replies.
fn check_layer(
    ctx: &HeContext,
    keys: &ClientKeys,
    server: &ServerKeys,
    shape: LayerShape,
    rng: &mut ChaCha12Rng,
) -> u32 {
    let plan = LinearPlan::new(ctx, "test", shape).unwrap();
    let bound = 1i64 << ctx.params.weight_bound_bits;
    let mut weights: Vec<i64> = (0..shape.weight_len())
        .map(|_| rng.gen_range(-bound + 1..bound))
        .collect();
    // Edge values: extreme weights.
    weights[0] = bound - 1;
    let last = weights.len() - 1;
    weights[last] = -bound + 1;
    let mut mask: Vec<u64> = (0..shape.input_len())
        .map(|_| rng.gen_range(0..P))
        .collect();
    mask[0] = P - 1;
    let cts = client_encrypt(ctx, keys, &plan, &mask).unwrap();
    // Round-trip through the wire format and the validating loader.
    let cts: Vec<_> = cts
        .iter()
        .enumerate()
        .map(|(i, c)| load_ciphertext(ctx, &ciphertext_bytes(c).unwrap(), "test", i).unwrap())
        .collect();
    let out = server_evaluate(ctx, server, &plan, &weights, &cts, 2, rng).unwrap();
    assert_eq!(out.ciphertexts.len(), plan.output_ciphertexts());
    // Replies are switched down to the reply level before they are sent.
    assert!(out
        .ciphertexts
        .iter()
        .all(|c| c.coeff_modulus_size() as usize == ctx.reply_primes));
    let budget = out
        .ciphertexts
        .iter()
        .map(|c| keys.noise_budget(c).unwrap())
        .min()
        .unwrap();
    let c = client_decrypt(ctx, keys, &plan, &out.ciphertexts).unwrap();
    let expected = reference_linear(&shape, &weights, &mask);
    let got: Vec<u64> = c
        .iter()
        .zip(&out.share)
        .map(|(&a, &b)| fixed::add(a, b))
        .collect();
    assert_eq!(
        got, expected,
        "shape {shape:?}, plan cb={} m={}",
        plan.cb, plan.m
    );
    budget
}

#[test]
fn conv_and_linear_shapes_match_plaintext() {
    let (ctx, keys, server) = setup(HeParams::insecure_test_linear());
    let mut rng = ChaCha12Rng::seed_from_u64(1);
    let shapes = [
        LayerShape::conv(3, 8, 8, 3, 1, 1),
        LayerShape::conv(5, 6, 9, 3, 2, 1),
        LayerShape::conv(4, 7, 8, 1, 2, 0),
        LayerShape::conv(6, 5, 7, 1, 1, 0),
        LayerShape::conv(3, 4, 6, 3, 1, 0),
        LayerShape {
            groups: 2,
            ..LayerShape::conv(4, 6, 6, 3, 1, 1)
        },
        LayerShape {
            groups: 4,
            ..LayerShape::conv(4, 4, 5, 3, 2, 1)
        },
        LayerShape::linear(40, 10),
        LayerShape::linear(300, 7),
    ];
    for s in shapes {
        let budget = check_layer(&ctx, &keys, &server, s, &mut rng);
        assert!(budget >= 2, "budget {budget} for {s:?}");
    }
}

#[test]
fn large_feature_map_is_tiled() {
    // A 50×50 channel exceeds one N = 2048 ciphertext: spatial tiles with halo.
    let (ctx, keys, server) = setup(HeParams::insecure_test_linear());
    let mut rng = ChaCha12Rng::seed_from_u64(2);
    let shape = LayerShape::conv(2, 3, 50, 3, 1, 1);
    let plan = LinearPlan::new(&ctx, "tiled", shape).unwrap();
    assert!(plan.tiles.len() > 1);
    check_layer(&ctx, &keys, &server, shape, &mut rng);
    let strided = LayerShape::conv(2, 2, 61, 3, 2, 1);
    assert!(LinearPlan::new(&ctx, "tiled", strided).unwrap().tiles.len() > 1);
    check_layer(&ctx, &keys, &server, strided, &mut rng);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 6, ..Default::default() })]
    #[test]
    fn random_shapes_match_plaintext(
        cin in 1usize..6, cout in 1usize..6, hw in 3usize..10, k in proptest::sample::select(vec![1usize, 3]),
        stride in 1usize..3, pad in 0usize..2, seed in 0u64..1000,
    ) {
        let (ctx, keys, server) = setup(HeParams::insecure_test_linear());
        let mut rng = ChaCha12Rng::seed_from_u64(seed);
        let shape = LayerShape::conv(cin, cout, hw, k, stride, pad);
        check_layer(&ctx, &keys, &server, shape, &mut rng);
    }
}

#[test]
fn insecure_parameters_are_refused_without_the_flag() {
    let p = HeParams {
        insecure_test_params: false,
        ..HeParams::insecure_test_linear()
    };
    assert!(matches!(p.context(), Err(HeError::InvalidParams { .. })));
    let too_big = HeParams::builder().coeff_bits(vec![60, 60, 60, 60]).build();
    assert!(matches!(too_big, Err(HeError::InvalidParams { .. })));
    assert!(HeParams::builder().build().is_ok());
}

#[test]
fn malformed_ciphertexts_are_errors_naming_the_layer() {
    let (ctx, keys, _) = setup(HeParams::insecure_test_linear());
    let good = ciphertext_bytes(&keys.encrypt_coeffs(&ctx, &[1, 2, 3]).unwrap()).unwrap();
    let check = |bytes: &[u8]| match load_ciphertext(&ctx, bytes, "conv7", 3) {
        Err(HeError::BadCiphertext { layer, index, .. }) => {
            assert_eq!(layer, "conv7");
            assert_eq!(index, 3);
        }
        other => panic!("expected BadCiphertext, got {other:?}"),
    };
    check(&[]);
    check(&good[..good.len() / 2]);
    let mut flipped = good.clone();
    flipped[0] ^= 1;
    check(&flipped);
    let mut corrupt = good.clone();
    let mid = corrupt.len() / 2;
    for b in &mut corrupt[mid..mid + 64] {
        *b ^= 0xA5;
    }
    check(&corrupt);
    // A ciphertext under other parameters.
    let (other_ctx, other_keys, _) = setup(HeParams::insecure_test_triples());
    let foreign = ciphertext_bytes(&other_keys.encrypt_coeffs(&other_ctx, &[1]).unwrap()).unwrap();
    check(&foreign);
}

#[test]
fn bad_weights_and_inputs_are_errors() {
    let (ctx, keys, server) = setup(HeParams::insecure_test_linear());
    let mut rng = ChaCha12Rng::seed_from_u64(3);
    let shape = LayerShape::conv(2, 2, 4, 3, 1, 1);
    let plan = LinearPlan::new(&ctx, "l", shape).unwrap();
    let mask = vec![1u64; shape.input_len()];
    let cts = client_encrypt(&ctx, &keys, &plan, &mask).unwrap();
    let mut w = vec![0i64; shape.weight_len()];
    w[5] = 1 << 20;
    assert!(matches!(
        server_evaluate(&ctx, &server, &plan, &w, &cts, 1, &mut rng),
        Err(HeError::WeightTooLarge { index: 5, .. })
    ));
    assert!(matches!(
        server_evaluate(&ctx, &server, &plan, &w[1..], &cts, 1, &mut rng),
        Err(HeError::WrongLength { .. })
    ));
    assert!(matches!(
        client_encrypt(&ctx, &keys, &plan, &mask[1..]),
        Err(HeError::WrongLength { .. })
    ));
}

/// Real parameters (N = 8192, 128-bit): the largest ResNet-18 layers decrypt
/// exactly and keep a positive noise budget after flooding.
#[test]
#[ignore]
fn real_parameters_largest_layers() {
    let (ctx, keys, server) = setup(HeParams::linear());
    let mut rng = ChaCha12Rng::seed_from_u64(4);
    for shape in [
        LayerShape::conv(512, 16, 4, 3, 1, 1),
        LayerShape::conv(16, 16, 64, 3, 1, 1),
        LayerShape::linear(512, 100),
    ] {
        let budget = check_layer(&ctx, &keys, &server, shape, &mut rng);
        println!("{shape:?}: noise budget {budget} bits");
        assert!(budget >= 2);
    }
}

/// Every linear layer of ResNet-18 (CIFAR 32×32 and Tiny-ImageNet 64×64)
/// has a packing under the real parameters; prints the plan totals.
#[test]
fn resnet18_layers_plan_under_real_parameters() {
    use pibench_models::arch::ArchSpec;
    use pibench_models::graph::{FeatureShape, Init};
    let ctx = HeParams::linear().context().unwrap();
    for (input, classes) in [
        (FeatureShape::new(3, 32, 32), 100),
        (FeatureShape::new(3, 64, 64), 200),
    ] {
        let net = ArchSpec::resnet18()
            .build(input, classes, Init::Zeros)
            .unwrap();
        let (mut cin, mut cout, mut mults) = (0, 0, 0);
        for info in net.linear_layers() {
            let plan = LinearPlan::new(&ctx, &info.name, LayerShape::from_info(&info)).unwrap();
            assert_eq!(plan.shape.hout(), info.out_h, "{}", info.name);
            assert_eq!(plan.rotations(), 0);
            println!(
                "{:<24} cb={:<3} m={:<3} tiles={} in={} out={} mults={} noise={:.1} flood={}",
                info.name,
                plan.cb,
                plan.m,
                plan.tiles.len(),
                plan.input_ciphertexts(),
                plan.output_ciphertexts(),
                plan.multiplications(),
                plan.noise_bound_bits,
                plan.flood_bits
            );
            cin += plan.input_ciphertexts();
            cout += plan.output_ciphertexts();
            mults += plan.multiplications();
        }
        println!("{input:?}: {cin} input cts, {cout} output cts, {mults} multiplications");
    }
}
