//! DeepReDuce / DeepReShape counting against the papers' tables (no training).

use pibench_prune::methods::deepreduce::{
    criticality, culling_order, deepreduce_candidates, pareto_front, Candidate, Pattern,
    CRITICALITY_WEIGHT,
};
use pibench_prune::methods::{deepreshape_candidates, SpecFactory};
use pibench_prune::net::ArchSpec;

fn factory(model: &str, native: i64, m: Option<i64>) -> SpecFactory {
    SpecFactory {
        model: model.into(),
        classes: 100,
        native,
        width: 1.0,
        base_channels: m,
    }
}

fn cand(culled: &[usize], thinned: bool, a: f64, r: f64) -> Candidate {
    Candidate {
        pattern: Pattern {
            culled: culled.to_vec(),
            thinned,
            keep_stem: false,
            group_factor: 1,
        },
        channel_scale: a,
        rho: r,
    }
}

#[test]
fn resnet18_cifar_full_and_per_stage_counts() {
    let spec = ArchSpec::named("resnet18", 100, 32, 1.0, 1.0, None).unwrap();
    assert_eq!(spec.full_relus(), 557_056); // Table 4: 557.06K
    let tiny = ArchSpec::named("resnet18", 200, 64, 1.0, 1.0, None).unwrap();
    assert_eq!(tiny.full_relus(), 2_228_224); // Table 5: 2228.24K
                                              // Table 1 (ReLUs only in one stage).
    for (stage, relus) in [(1, 262_144), (2, 131_072), (3, 65_536), (4, 32_768)] {
        assert_eq!(Pattern::only_stage(stage, 4).relu_count(&spec), relus);
    }
}

#[test]
fn table4_counts_of_culling_thinning_reshaping() {
    let f = factory("resnet18", 32, None);
    let rows: [(Candidate, i64); 10] = [
        (cand(&[1], false, 1.0, 1.0), 229_376),    // S2+S3+S4: 229.38K
        (cand(&[1, 4], false, 1.0, 1.0), 196_608), // S2+S3: 196.61K
        (cand(&[1], true, 1.0, 1.0), 114_688),     // 114.69K
        (cand(&[1], true, 0.5, 1.0), 57_344),      // 57.34K
        (cand(&[1, 4], true, 0.5, 1.0), 49_152),   // 49.15K
        (cand(&[1], true, 1.0, 0.5), 28_672),      // 28.67K
        (cand(&[1, 4], true, 1.0, 0.5), 24_576),   // 24.57K
        (cand(&[1], true, 0.5, 0.5), 14_336),      // 14.33K
        (cand(&[1, 4], true, 0.5, 0.5), 12_288),   // 12.28K
        (cand(&[1, 4], false, 1.0, 1.0), 196_608),
    ];
    for (c, expected) in rows {
        assert_eq!(f.relus(&c).unwrap(), expected, "{}", c.label());
    }
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
fn deepreduce_explores_five_networks_per_iteration() {
    let cands = deepreduce_candidates(&[1, 4, 2, 3]);
    assert_eq!(cands.len(), 5 * 3);
    assert_eq!(cands[0].pattern.culled, vec![1]);
    assert_eq!(cands[5].pattern.culled, vec![1, 4]);
    assert_eq!(cands[10].pattern.culled, vec![1, 2, 4]);
    assert!(cands.iter().all(|c| !c.pattern.culled.contains(&3)));
}

#[test]
fn deepreshape_table6_counts() {
    // HRN-2x5x3x: S1 dominates, so it is culled; the rest is thinned.
    for (m, thinned) in [(32, 104_448), (16, 52_224), (8, 26_112)] {
        let f = factory("hrn-2x5x3x", 32, Some(m));
        let base = f.spec(1.0, 1.0).unwrap();
        let cands = deepreshape_candidates(&base, &[1, 4, 2, 3]);
        assert_eq!(cands[1].pattern.culled, vec![1]);
        assert_eq!(f.relus(&cands[1]).unwrap(), thinned, "m = {m}");
        if m == 16 {
            // ReLU reuse (channel groups) 4, 8, 16: 13.1K, 6.5K, 3.2K.
            let reuse: Vec<i64> = cands[3..].iter().map(|c| f.relus(c).unwrap()).collect();
            assert_eq!(reuse, vec![13_056, 6_528, 3_264]);
        }
    }
    // HRN-5x5x3x, m=16: S1 does not dominate; thinning all stages gives 163.3K.
    let f = factory("hrn-5x5x3x", 32, Some(16));
    let base = f.spec(1.0, 1.0).unwrap();
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
fn unknown_models_and_bad_scales_are_refused() {
    assert!(ArchSpec::named("resnet50", 10, 32, 1.0, 1.0, None).is_err());
    assert!(ArchSpec::named("hrn-2x5x", 10, 32, 1.0, 1.0, None).is_err());
    assert!(ArchSpec::named("resnet18", 10, 32, 0.0, 1.0, None).is_err());
    assert!(ArchSpec::named("resnet18", 10, 32, 1.0, 1.5, None).is_err());
    let h = ArchSpec::named("hrn-2x5x3x-m8", 10, 32, 1.0, 1.0, None).unwrap();
    assert_eq!(h.widths, vec![8, 16, 80, 240]);
    assert_eq!(h.name, "hrn-2x5x3x-m8");
}
