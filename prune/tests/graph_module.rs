//! The libtorch module built from the models graph equals the models float
//! reference (1e-4) for every architecture, with random masks and
//! polynomial sites; training-mode statistics and export round-trip; the
//! mixed-precision CPU path (bf16).

use pibench_models::arch::{deepreduce::scale_channels, ArchSpec};
use pibench_models::count::Convention;
use pibench_models::graph::{FeatureShape, Init, Network as Graph, PolyCoeffs};
use pibench_models::reference::forward_float;
use pibench_prune::net::{Net, Weights};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

fn archs() -> Vec<(ArchSpec, FeatureShape)> {
    let cifar = FeatureShape::new(3, 32, 32);
    let tiny = |s: ArchSpec| scale_channels(&s, 0.0625).unwrap();
    vec![
        (tiny(ArchSpec::resnet18()), cifar),
        (tiny(ArchSpec::resnet34()), cifar),
        (tiny(ArchSpec::wrn(22, 8).unwrap()), cifar),
        (tiny(ArchSpec::vgg16()), cifar),
        (tiny(ArchSpec::resnet50()), cifar),
        (ArchSpec::parse("hrn-2x5x3x-m4").unwrap(), cifar),
        // DeepReShape's ReLU-reuse: channel slices, concatenations, 1×1 mixes.
        (ArchSpec::parse("hrn-2x5x3x-m4-re4s234").unwrap(), cifar),
        (tiny(ArchSpec::resnet18()), FeatureShape::new(3, 16, 16)),
    ]
}

fn randomise(g: &mut Graph, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (k, site) in g.sites_mut().enumerate() {
        for m in site.mask.iter_mut() {
            *m = u8::from(rng.gen_bool(0.7));
        }
        if k % 3 == 1 {
            let c = site.shape.c;
            let mut r =
                |lo: f32, hi: f32| (0..c).map(|_| rng.gen_range(lo..hi)).collect::<Vec<_>>();
            site.poly = Some(PolyCoeffs {
                a2: r(0.0, 0.05),
                a1: r(0.3, 1.0),
                a0: r(-0.1, 0.1),
            });
        }
    }
}

fn calibrate(net: &Net, input: FeatureShape) {
    tch::no_grad(|| {
        for _ in 0..25 {
            let x = Tensor::randn(
                [8, 3, input.h as i64, input.w as i64],
                (Kind::Float, Device::Cpu),
            ) * 2.0
                + 0.5;
            let _ = net.forward_t(&x, true);
        }
    });
}

fn compare(net: &Net, graph: &Graph, x: &Tensor, what: &str) {
    let torch = tch::no_grad(|| net.forward_t(x, false));
    for i in 0..x.size()[0] {
        let t = Vec::<f32>::try_from(&torch.get(i)).unwrap();
        let input = Vec::<f32>::try_from(&x.get(i).flatten(0, -1)).unwrap();
        let float = forward_float(graph, &input).unwrap();
        let scale = t.iter().fold(1.0f64, |m, v| m.max(v.abs() as f64));
        for (a, b) in t.iter().zip(&float) {
            assert!(
                (*a as f64 - b).abs() <= 1e-4 * scale,
                "{what} image {i}: libtorch {t:?} vs reference {float:?}"
            );
        }
    }
}

#[test]
fn module_from_graph_matches_the_float_reference_for_every_architecture() {
    tch::set_num_threads(1);
    tch::manual_seed(1);
    for (k, (spec, input)) in archs().into_iter().enumerate() {
        let mut g = spec.build(input, 10, Init::Seeded(k as u64)).unwrap();
        randomise(&mut g, 100 + k as u64);
        let net = Net::new(&g, Device::Cpu, Convention::default(), Weights::FromGraph).unwrap();
        // Export is the same graph.
        assert_eq!(net.to_graph().unwrap(), g, "{}", spec.name());
        // Batch-norm statistics that fit the data keep the deep networks'
        // activations bounded (seeded statistics let ResNet-34 overflow f32).
        calibrate(&net, input);
        let g = net.to_graph().unwrap();
        let x = Tensor::randn(
            [2, 3, input.h as i64, input.w as i64],
            (Kind::Float, Device::Cpu),
        );
        compare(&net, &g, &x, spec.name());
    }
}

#[test]
fn trained_statistics_export_and_match() {
    tch::set_num_threads(1);
    tch::manual_seed(2);
    for (spec, input) in archs().into_iter().take(4) {
        let mut g = spec.build(input, 10, Init::Zeros).unwrap();
        randomise(&mut g, 7);
        let net = Net::new(&g, Device::Cpu, Convention::default(), Weights::Fresh).unwrap();
        // Training-mode passes update the BN statistics (a fresh module starts at 0/1).
        calibrate(&net, input);
        let exported = net.to_graph().unwrap();
        let x = Tensor::randn(
            [2, 3, input.h as i64, input.w as i64],
            (Kind::Float, Device::Cpu),
        );
        compare(&net, &exported, &x, spec.name());
    }
}

#[test]
fn bf16_forward_follows_fp32_on_cpu() {
    tch::set_num_threads(1);
    tch::manual_seed(3);
    let spec = scale_channels(&ArchSpec::resnet18(), 0.0625).unwrap();
    let g = spec
        .build(FeatureShape::new(3, 32, 32), 10, Init::Seeded(3))
        .unwrap();
    let net = Net::new(&g, Device::Cpu, Convention::default(), Weights::FromGraph).unwrap();
    let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    let (full, half) = tch::no_grad(|| {
        (
            net.forward_with(&x, false, None),
            net.forward_with(&x, false, Some(Kind::BFloat16)),
        )
    });
    assert_eq!(half.kind(), Kind::Float);
    let err = (&full - &half).abs().max().double_value(&[]);
    let scale = full.abs().max().double_value(&[]).max(1.0);
    assert!(err <= 0.1 * scale, "bf16 differs by {err} (scale {scale})");
}

/// A graph with max pools (issue #15; no architecture uses them yet): the
/// libtorch module built from it (`max_pool2d`) matches the float reference.
#[test]
fn module_with_max_pools_matches_the_float_reference() {
    use pibench_models::graph::{GraphBuilder, SiteRole};
    tch::set_num_threads(1);
    let mut b = GraphBuilder::new(FeatureShape::new(3, 16, 16), Init::Seeded(5));
    let c1 = b.conv("conv1", 0, 8, 3, 1, 1, 1, Some("bn1"));
    let r1 = b.site("relu1", c1, Some(1), None, SiteRole::Body);
    let p1 = b.maxpool("pool1", r1, 2, 2);
    let c2 = b.conv("conv2", p1, 8, 3, 1, 1, 1, Some("bn2"));
    let r2 = b.site("relu2", c2, Some(2), None, SiteRole::Body);
    let p2 = b.maxpool("pool2", r2, 3, 1);
    let f = b.flatten("flatten", p2);
    b.linear("linear", f, 10);
    let mut g = b.finish("maxpool", ArchSpec::vgg16(), 10).unwrap();
    randomise(&mut g, 7);
    let net = Net::new(&g, Device::Cpu, Convention::default(), Weights::FromGraph).unwrap();
    assert_eq!(net.to_graph().unwrap(), g);
    let x = Tensor::randn([3, 3, 16, 16], (Kind::Float, Device::Cpu));
    compare(&net, &g, &x, "maxpool");
}

/// Channel slices and concatenations (issue #15 item 4): the libtorch module
/// built from them (`narrow`, `cat`) matches the float reference, for
/// overlapping slices, a concat of three inputs of different widths and a
/// concat that repeats an input.
#[test]
fn module_with_slices_and_concats_matches_the_float_reference() {
    use pibench_models::graph::{GraphBuilder, SiteRole};
    tch::set_num_threads(1);
    let mut b = GraphBuilder::new(FeatureShape::new(3, 8, 8), Init::Seeded(6));
    let c1 = b.conv("conv1", 0, 6, 3, 1, 1, 1, Some("bn1"));
    let r1 = b.site("relu1", c1, Some(1), None, SiteRole::Body);
    let a = b.slice("a", r1, 0, 4);
    let m = b.slice("m", r1, 2, 3);
    let x = b.slice("x", 0, 1, 2);
    let cat = b.concat("cat", &[a, m, x]);
    let c2 = b.conv("conv2", cat, 4, 3, 1, 1, 1, Some("bn2"));
    let r2 = b.site("relu2", c2, Some(2), None, SiteRole::Body);
    let cat2 = b.concat("cat2", &[r2, a, r2]);
    let f = b.flatten("flatten", cat2);
    b.linear("linear", f, 10);
    let mut g = b.finish("channels", ArchSpec::resnet18(), 10).unwrap();
    randomise(&mut g, 8);
    let net = Net::new(&g, Device::Cpu, Convention::default(), Weights::FromGraph).unwrap();
    assert_eq!(net.to_graph().unwrap(), g);
    let x = Tensor::randn([3, 3, 8, 8], (Kind::Float, Device::Cpu));
    compare(&net, &g, &x, "channels");
}
