//! DeepReShape's ReLU-reuse networks (issue #15 item 4), built from channel
//! slices and concatenations: names, counts against the paper, both
//! references and the model file.

use pibench_models::arch::deepreduce::{cull_stage, thin_stage};
use pibench_models::arch::reuse::group_sizes;
use pibench_models::arch::ArchSpec;
use pibench_models::calibrate::PlanOp;
use pibench_models::count::{count, relu_count, Convention};
use pibench_models::file::{from_bytes, to_bytes, SaveOptions};
use pibench_models::fixed::FixedPoint;
use pibench_models::graph::{FeatureShape, Init, Network, Op};
use pibench_models::reference::{
    calibrate_random_batchnorm, forward_fixed, forward_float, random_input, EncodedNetwork,
};

#[test]
fn reuse_names_parse_and_refuse() {
    let a = ArchSpec::parse("hrn-2x5x3x-m16-re4s234").unwrap();
    assert_eq!(a.name(), "hrn-2x5x3x-m16-re4s234");
    assert_eq!(
        a,
        ArchSpec::relu_reuse(ArchSpec::hrn(2, 5, 3, 16).unwrap(), 4, &[2, 3, 4]).unwrap()
    );
    // The component may come before -mM (prune completes names that way).
    assert_eq!(ArchSpec::parse("hrn-2x5x3x-re4s234-m16").unwrap(), a);
    let all = ArchSpec::parse("resnet18-re8").unwrap();
    assert_eq!(all.name(), "resnet18-re8");
    let ArchSpec::ReluReuse { stages, factor, .. } = &all else {
        panic!("{all:?}")
    };
    assert_eq!((stages.as_slice(), *factor), (&[1, 2, 3, 4][..], 8));
    assert_eq!(ArchSpec::parse(all.name()).unwrap(), all);
    for bad in [
        "hrn-2x5x3x-m16-re1",    // factor < 2
        "hrn-2x5x3x-m16-re4s5",  // no stage 5
        "hrn-2x5x3x-m16-re4s32", // not increasing
        "hrn-2x5x3x-m1-re4",     // stage 1 has one channel
        "wrn22_8-re4",           // not a basic-block ResNet
        "resnet50-re4",
        "vgg16-re4",
    ] {
        assert!(ArchSpec::parse(bad).is_err(), "{bad} should be refused");
    }
    assert_eq!(group_sizes(480, 16).unwrap(), (120, 330, 30));
    assert_eq!(group_sizes(32, 4).unwrap(), (8, 16, 8));
    assert_eq!(group_sizes(8, 16).unwrap(), (2, 5, 1));
    assert!(group_sizes(3, 2).is_err());
    assert!(group_sizes(64, 1).is_err());
}

/// DeepReShape Table 6, HRN-2x5x3x (m=16, CIFAR-100, stem not counted):
/// culled S1 and thinned S2–S4, only `relu1` of the 6 blocks of S2–S4 keeps
/// ReLUs: 2·(32·16²) + 2·(160·8²) + 2·(480·4²) = 16,384 + 20,480 + 15,360 =
/// 52,224 (52.2K). With ReLU-reuse ×N in S2–S4 each `relu1` holds ⌈C/N⌉ of
/// the C channels: ×4: 2·(8·256) + 2·(40·64) + 2·(120·16) = 4,096 + 5,120 +
/// 3,840 = 13,056 (13.1K); ×8: 6,528 (6.5K); ×16: 3,264 (3.2K, the paper
/// prints 3.2K).
#[test]
fn reuse_counts_follow_the_paper() {
    let conv = Convention {
        stem_relu: false,
        final_relu: false,
    };
    let cifar = FeatureShape::new(3, 32, 32);
    let pattern = |n: &mut Network| {
        cull_stage(n, 1).unwrap();
        for s in 2..=4 {
            thin_stage(n, s).unwrap();
        }
    };
    let mut base = ArchSpec::hrn(2, 5, 3, 16)
        .unwrap()
        .build(cifar, 100, Init::Zeros)
        .unwrap();
    pattern(&mut base);
    assert_eq!(relu_count(&base, conv), 52_224);
    // MACs of the plain network (conv + FC): the paper prints 178.5M.
    let base_macs = count(&base, conv).flops;
    assert_eq!(base_macs, 177_650_560);
    for (factor, relus) in [(4, 13_056), (8, 6_528), (16, 3_264)] {
        let spec = ArchSpec::parse(&format!("hrn-2x5x3x-m16-re{factor}s234")).unwrap();
        let mut n = spec.build(cifar, 100, Init::Zeros).unwrap();
        pattern(&mut n);
        assert_eq!(relu_count(&n, conv), relus, "×{factor}");
        // Each block of S2–S4 trades its 3×3 conv2 (9·C²·HW) for the
        // groups' 9·(p² + q²)·HW and the 1×1 mix's C²·HW.
        let mut want = base_macs;
        for (c, hw) in [(32u64, 256u64), (160, 64), (480, 16)] {
            let (_, p, q) = group_sizes(c as usize, factor).unwrap();
            let (p, q) = (p as u64, q as u64);
            want = want - 2 * 9 * c * c * hw + 2 * (9 * (p * p + q * q) * hw + c * c * hw);
        }
        let got = count(&n, conv).flops;
        assert_eq!(got, want, "×{factor}");
        // Against Table 6's 121.6M, 130.5M, 137.2M: within 2 %.
        let paper = match factor {
            4 => 121.6e6,
            8 => 130.5e6,
            _ => 137.2e6,
        };
        assert!((got as f64 / paper - 1.0).abs() < 0.02, "×{factor}: {got}");
        // The ReLUs sit on the last group only; the truncation sites hold none.
        let site = n.site("layer4.1.relu1").unwrap();
        assert_eq!(
            site.shape,
            FeatureShape::new(480usize.div_ceil(factor), 4, 4)
        );
        let trunc = n.site("layer4.1.reuse.trunc0").unwrap();
        assert_eq!((trunc.shape.c, trunc.relu_count()), (480, 0));
    }
}

/// A small ReLU-reuse HRN with random weights: float and fixed references
/// agree, and the model file keeps the architecture.
#[test]
fn reuse_network_runs_and_round_trips() {
    let spec = ArchSpec::parse("hrn-2x5x3x-m4-re4s234").unwrap();
    let mut n = spec
        .build(FeatureShape::new(3, 16, 16), 10, Init::Seeded(9))
        .unwrap();
    calibrate_random_batchnorm(&mut n, 1).unwrap();
    thin_stage(&mut n, 2).unwrap();
    let fp = FixedPoint::default();
    let enc = EncodedNetwork::new(&n, fp).unwrap();
    // Every concat of the network is planned (its parts are all at fa here:
    // the truncation sites bring them there).
    let cats: Vec<usize> = (0..n.nodes.len())
        .filter(|&i| matches!(n.nodes[i].op, Op::Concat))
        .collect();
    assert_eq!(cats.len(), 6);
    for &i in &cats {
        assert_eq!(enc.concat_lifts(&n, i).unwrap(), vec![0, 0, 0]);
    }
    for seed in 0..3 {
        let x = random_input(n.input.len(), 100 + seed);
        let f = forward_float(&n, &x).unwrap();
        let q = forward_fixed(&n, fp, &x).unwrap().logits;
        let scale = f.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for (a, b) in f.iter().zip(&q) {
            assert!((a - b).abs() <= 0.02 * scale, "float {f:?} fixed {q:?}");
        }
    }
    let opts = SaveOptions {
        fixed: fp,
        ..Default::default()
    };
    let bytes = to_bytes(&n, &opts).unwrap();
    let back = from_bytes(&bytes, "reuse").unwrap();
    assert_eq!(back.network, n);
    assert_eq!(back.header.arch, spec);
    let plan = back.header.plan.unwrap();
    assert!(plan
        .nodes
        .iter()
        .any(|p| matches!(&p.op, PlanOp::Concat { lift } if lift.len() == 3)));
}
