//! DeepReDuce / DeepReShape counting against the papers' tables (no
//! training), on the models crate's graphs.

use pibench_models::count::Convention;
use pibench_models::graph::FeatureShape;
use pibench_prune::arch;
use pibench_prune::methods::deepreduce::{
    criticality, culling_order, deepreduce_candidates, pareto_front, Candidate, Pattern,
    SpecFactory, CRITICALITY_WEIGHT,
};
use pibench_prune::methods::{deepreduce_floor, deepreshape_candidates};

fn factory(model: &str, side: usize, m: Option<usize>) -> SpecFactory {
    SpecFactory {
        model: model.into(),
        base_channels: m,
        width: 1.0,
        native: FeatureShape::new(3, side, side),
        classes: 100,
        convention: Convention::default(),
    }
}

fn cand(culled: &[usize], thinned: bool, a: f64, r: f64) -> Candidate {
    Candidate {
        pattern: Pattern {
            culled: culled.to_vec(),
            thinned,
            keep_stem: false,
            group_factor: 1,
            relu_reuse: 0,
        },
        channel_scale: a,
        rho: r,
        one_block: false,
    }
}

#[test]
fn resnet18_cifar_full_and_per_stage_counts() {
    let f = factory("resnet18", 32, None);
    assert_eq!(
        f.relus(&Candidate::plain(Pattern::full())).unwrap(),
        557_056
    ); // Table 4: 557.06K
    let tiny = factory("resnet18", 64, None);
    assert_eq!(
        tiny.relus(&Candidate::plain(Pattern::full())).unwrap(),
        2_228_224
    ); // Table 5
       // Table 1 (ReLUs only in one stage).
    for (stage, relus) in [(1, 262_144), (2, 131_072), (3, 65_536), (4, 32_768)] {
        let c = Candidate::plain(Pattern::only_stage(stage, &[1, 2, 3, 4]));
        assert_eq!(f.relus(&c).unwrap(), relus);
    }
}

#[test]
fn table4_counts_of_culling_thinning_reshaping() {
    let f = factory("resnet18", 32, None);
    let rows: [(Candidate, i64); 9] = [
        (cand(&[1], false, 1.0, 1.0), 229_376),    // S2+S3+S4: 229.38K
        (cand(&[1, 4], false, 1.0, 1.0), 196_608), // S2+S3: 196.61K
        (cand(&[1], true, 1.0, 1.0), 114_688),     // 114.69K
        (cand(&[1], true, 0.5, 1.0), 57_344),      // 57.34K
        (cand(&[1, 4], true, 0.5, 1.0), 49_152),   // 49.15K
        (cand(&[1], true, 1.0, 0.5), 28_672),      // 28.67K
        (cand(&[1, 4], true, 1.0, 0.5), 24_576),   // 24.57K
        (cand(&[1], true, 0.5, 0.5), 14_336),      // 14.33K
        (cand(&[1, 4], true, 0.5, 0.5), 12_288),   // 12.28K
    ];
    for (c, expected) in rows {
        assert_eq!(f.relus(&c).unwrap(), expected, "{}", c.label());
    }
    // The last row: one block per stage ("?"), 7.17K.
    let one = Candidate {
        one_block: true,
        ..cand(&[1], true, 0.5, 0.5)
    };
    assert_eq!(f.relus(&one).unwrap(), 7_168);
    assert!(deepreduce_candidates(&[1, 4, 2, 3]).contains(&one));
    assert_eq!(deepreduce_floor(&f, &[1, 2, 3, 4]).unwrap(), 1_024);
}

#[test]
fn table5_tiny_imagenet_counts() {
    let f = factory("resnet18", 64, None);
    for (c, expected) in [
        (cand(&[1], false, 1.0, 1.0), 917_504),    // 917.52K
        (cand(&[1], true, 1.0, 1.0), 458_752),     // 458.76K
        (cand(&[1, 2], false, 1.0, 1.0), 393_216), // 393.24K
        (cand(&[1, 2], true, 0.5, 0.5), 24_576),   // 24.58K
    ] {
        assert_eq!(f.relus(&c).unwrap(), expected, "{}", c.label());
    }
}

#[test]
fn criticality_formula_matches_table3_resnet34() {
    // ResNet-34 on Tiny-ImageNet, W/ KD accuracies and stage ReLU counts of Table 3.
    let acc = [39.4, 51.74, 60.83, 54.41];
    let relus = [1_572_864, 1_048_576, 786_432, 196_608];
    let c = criticality(&acc, &relus, CRITICALITY_WEIGHT);
    let expected = [0.00, 7.58, 13.44, 10.37];
    for (got, want) in c.iter().zip(expected) {
        assert!((got - want).abs() < 0.01, "C = {c:?}, table {expected:?}");
    }
    assert_eq!(culling_order(&c), vec![1, 2, 4, 3]);
}

#[test]
fn culling_order_of_resnet18_cifar100_is_s1_s4_s2_s3() {
    // Table 1, ResNet18 W/ KD: S1..S4.
    let acc = [59.85, 68.79, 69.92, 63.16];
    let relus = [262_144, 131_072, 65_536, 32_768];
    let c = criticality(&acc, &relus, CRITICALITY_WEIGHT);
    assert_eq!(c[0], 0.0);
    assert_eq!(culling_order(&c), vec![1, 4, 2, 3]);
}

#[test]
fn deepreduce_explores_its_networks_per_iteration() {
    let cands = deepreduce_candidates(&[1, 4, 2, 3]);
    assert_eq!(cands.len(), 6 * 3);
    assert_eq!(cands[0].pattern.culled, vec![1]);
    assert_eq!(cands[6].pattern.culled, vec![1, 4]);
    assert_eq!(cands[12].pattern.culled, vec![1, 2, 4]);
    assert!(cands.iter().all(|c| !c.pattern.culled.contains(&3)));
    assert_eq!(cands.iter().filter(|c| c.one_block).count(), 3);
}

#[test]
fn deepreshape_table6_counts() {
    // HRN-2x5x3x: S1 dominates, so it is culled; the rest is thinned.
    for (m, thinned) in [(32, 104_448), (16, 52_224), (8, 26_112)] {
        let f = factory("hrn-2x5x3x", 32, Some(m));
        let base = f.base().unwrap();
        let cands = deepreshape_candidates(&base, &[1, 4, 2, 3]);
        assert_eq!(cands[1].pattern.culled, vec![1]);
        assert_eq!(f.relus(&cands[1]).unwrap(), thinned, "m = {m}");
        if m == 16 {
            // ReLU-reuse 4, 8, 16: 13.1K, 6.5K, 3.2K, on the real
            // channel-group networks (S2–S4 reused, S1 culled).
            let reuse: Vec<i64> = cands[3..].iter().map(|c| f.relus(c).unwrap()).collect();
            assert_eq!(reuse, vec![13_056, 6_528, 3_264]);
            let g = f.graph(&cands[3]).unwrap();
            assert_eq!(g.name, "hrn-2x5x3x-m16-re4s234");
            assert_eq!(g.site("layer3.1.relu1").unwrap().shape.c, 40);
            assert_eq!(cands[3].label(), "cull-S1-thin-reuse4");
        }
    }
    // HRN-5x5x3x, m=16: S1 does not dominate; thinning all stages gives 163.3K.
    let f = factory("hrn-5x5x3x", 32, Some(16));
    let base = f.base().unwrap();
    let cands = deepreshape_candidates(&base, &[1, 4, 2, 3]);
    assert!(cands[1].pattern.culled.is_empty());
    assert_eq!(f.relus(&cands[1]).unwrap(), 163_328);
}

#[test]
fn pareto_front_drops_dominated_points() {
    let pts = [(100, 0.7), (50, 0.72), (50, 0.6), (10, 0.5), (200, 0.71)];
    assert_eq!(pareto_front(&pts), vec![1, 3]);
}

#[test]
fn one_architecture_definition() {
    // Names resolve through pibench_models::arch; HRNs take --base-channels.
    assert!(arch::resolve("resnet152", None, 1.0).is_err());
    assert!(arch::resolve("hrn-2x5x", None, 1.0).is_err());
    assert!(arch::resolve("resnet18", None, 0.0).is_err());
    let h = arch::resolve("hrn-2x5x3x", Some(8), 1.0).unwrap();
    assert_eq!(h, arch::resolve("hrn-2x5x3x-m8", None, 1.0).unwrap());
    assert_eq!(h.name(), "hrn-2x5x3x-m8");
    assert!(arch::resolve("hrn-2x5x3x-m8", Some(16), 1.0).is_err());
    assert_eq!(
        arch::resolve("hrn-2x5x3x", None, 1.0).unwrap().name(),
        "hrn-2x5x3x-m16"
    );
    for name in ["resnet18", "resnet34", "vgg16", "wrn22_8", "wrn-16-4"] {
        assert!(arch::resolve(name, None, 0.25).is_ok(), "{name}");
    }
}
