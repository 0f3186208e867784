//! Calibration: truncation points, both passes per image, bounds, the scale
//! plan in model files, and the fidelity summary.

use pibench_models::arch::ArchSpec;
use pibench_models::calibrate::{
    magnitude_bits, truncation_points, Fidelity, ImageEval, Observations, Runner, ScalePlan,
};
use pibench_models::file::{self, SaveOptions};
use pibench_models::fixed::FixedPoint;
use pibench_models::graph::{FeatureShape, Init, Network, PolyCoeffs};
use pibench_models::reference::{
    forward_fixed, forward_float, EncodedNetwork, PoolPlan, TruncKind,
};
use pibench_models::ModelError;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;

/// Small nets covering every kind of truncation point: sites with
/// polynomials (ResNet), standalone batch norms that truncate (WRN), and
/// VGG on a 12×12 input, whose global average pool over 3×3 is rounded.
fn nets(seed: u64) -> Vec<Network> {
    let mut rng = ChaCha12Rng::seed_from_u64(seed);
    let mut out = vec![
        ArchSpec::Resnet {
            name: "resnet-tiny".into(),
            stem: 8,
            blocks: vec![1, 1],
            widths: vec![8, 16],
        }
        .build(FeatureShape::new(3, 8, 8), 10, Init::Seeded(seed))
        .unwrap(),
        ArchSpec::Wrn {
            name: "wrn10-tiny".into(),
            depth: 10,
            stem: 4,
            widths: vec![8, 8, 16],
        }
        .build(FeatureShape::new(3, 8, 8), 10, Init::Seeded(seed))
        .unwrap(),
        ArchSpec::Vgg {
            name: "vgg-tiny".into(),
            convs: vec![1, 2],
            widths: vec![8, 16],
            pool: pibench_models::arch::VggPool::Max,
        }
        .build(FeatureShape::new(3, 12, 12), 10, Init::Seeded(seed))
        .unwrap(),
    ];
    // Masks and polynomials on the ResNet.
    for (k, site) in out[0].sites_mut().enumerate() {
        for m in site.mask.iter_mut() {
            *m = rng.gen_range(0..2);
        }
        if k % 2 == 0 {
            let c = site.shape.c;
            site.poly = Some(PolyCoeffs {
                a2: (0..c).map(|_| rng.gen_range(0.05..0.2)).collect(),
                a1: (0..c).map(|_| rng.gen_range(0.3..0.7)).collect(),
                a0: (0..c).map(|_| rng.gen_range(-0.1..0.1)).collect(),
            });
        }
    }
    out
}

fn input(rng: &mut ChaCha12Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-2.0f32..2.0)).collect()
}

#[test]
fn truncation_points_are_the_fixed_passes() {
    let mut rng = ChaCha12Rng::seed_from_u64(1);
    let mut kinds = std::collections::HashSet::new();
    for net in nets(3) {
        let fp = FixedPoint::default();
        let enc = EncodedNetwork::new(&net, fp).unwrap();
        let points = truncation_points(&net, &enc);
        let out = forward_fixed(&net, fp, &input(&mut rng, net.input.len())).unwrap();
        let stats: Vec<_> = out
            .truncations
            .iter()
            .map(|s| (s.node, s.name.clone(), s.kind, s.frac_bits, s.trunc_bits))
            .collect();
        let planned: Vec<_> = points
            .iter()
            .map(|p| (p.node, p.name.clone(), p.kind, p.frac_bits, p.trunc_bits))
            .collect();
        assert_eq!(planned, stats, "{}", net.name);
        kinds.extend(points.iter().map(|p| p.kind));
        if net.name == "vgg-tiny" {
            assert!(enc.ops.iter().flatten().any(|op| matches!(
                op,
                pibench_models::reference::EncodedOp::Pool(PoolPlan::Rounded { .. })
            )));
        }
    }
    for k in [
        TruncKind::Site,
        TruncKind::SitePoly,
        TruncKind::BatchNorm,
        TruncKind::GlobalAvgPool,
    ] {
        assert!(kinds.contains(&k), "no {k} point in the test nets");
    }
}

#[test]
fn runner_matches_the_references_and_parallel_runs_are_identical() {
    let mut rng = ChaCha12Rng::seed_from_u64(2);
    for net in nets(4) {
        let enc = EncodedNetwork::new(&net, FixedPoint::default()).unwrap();
        let runner = Runner::new(&net, &enc);
        let images: Vec<Vec<f32>> = (0..5).map(|_| input(&mut rng, net.input.len())).collect();
        let serial: Vec<ImageEval> = images
            .iter()
            .map(|x| runner.evaluate(x, 1).unwrap())
            .collect();
        for (x, e) in images.iter().zip(&serial) {
            assert_eq!(e.float_logits, forward_float(&net, x).unwrap());
            let q = forward_fixed(&net, FixedPoint::default(), x).unwrap();
            assert_eq!(e.fixed_logits, q.logits);
            let maxima: Vec<u64> = q.truncations.iter().map(|s| s.max_abs).collect();
            assert_eq!(e.fixed_max, maxima);
            // The float pass sees the same magnitudes up to the fixed-point error.
            for (k, p) in runner.points.iter().enumerate() {
                let fixed = e.fixed_max[k] as f64 / 2f64.powi(p.frac_bits as i32);
                let float = e.float_max[k];
                assert!(
                    (fixed - float).abs() <= 0.02 * (1.0 + float),
                    "{} {} {}: fixed {fixed} vs float {float}",
                    net.name,
                    p.name,
                    p.kind
                );
            }
        }
        let parallel = runner
            .evaluate_many(images.len(), 3, |i| Ok(images[i].clone()), None)
            .unwrap();
        assert_eq!(parallel, serial, "{}", net.name);
    }
}

#[test]
fn bounds_cover_the_calibration_images_with_the_margin() {
    let mut rng = ChaCha12Rng::seed_from_u64(3);
    let net = nets(5).remove(0);
    let enc = EncodedNetwork::new(&net, FixedPoint::default()).unwrap();
    let runner = Runner::new(&net, &enc);
    let images: Vec<Vec<f32>> = (0..6).map(|_| input(&mut rng, net.input.len())).collect();
    let evals = runner
        .evaluate_many(images.len(), 2, |i| Ok(images[i].clone()), None)
        .unwrap();
    let mut obs = Observations::new(runner.points.clone());
    for e in &evals {
        obs.add(e);
    }
    assert_eq!(obs.images, 6);
    for margin in [0u32, 1, 3] {
        let b = obs.bounds(margin, "test images".into());
        b.check(&runner.points).unwrap();
        for (k, p) in b.points.iter().enumerate() {
            let observed = evals.iter().map(|e| e.fixed_max[k]).max().unwrap();
            let float = evals.iter().map(|e| e.float_max[k]).fold(0.0, f64::max);
            assert_eq!(p.fixed_max, observed as f64 / 2f64.powi(p.frac_bits as i32));
            assert_eq!(p.float_max, float);
            assert_eq!(p.bound, p.fixed_max.max(float) * 2f64.powi(margin as i32));
            // ℓ: every observed integer is below 2^ℓ, and ℓ is the smallest such
            // for the bound; the margin adds exactly `margin` bits to the observed ℓ.
            assert!(observed < 1u64 << p.bits);
            assert_eq!(b.bits(&p.node, p.kind, p.frac_bits), Some(p.bits));
            let at_plan = (p.bound * 2f64.powi(p.frac_bits as i32)).floor();
            assert!(at_plan < 2f64.powi(p.bits as i32) && at_plan >= 2f64.powi(p.bits as i32 - 1));
            if float <= p.fixed_max && observed > 0 {
                assert_eq!(p.bits, magnitude_bits(observed as f64) + margin);
            }
            // At two more fractional bits ℓ grows by two.
            assert_eq!(
                b.bits(&p.node, p.kind, p.frac_bits + 2),
                Some(p.bits + 2),
                "{}",
                p.node
            );
        }
        assert_eq!(b.bits("nope", TruncKind::Site, 8), None);
    }
    // Bounds for another plan are refused.
    let b = obs.bounds(1, "x".into());
    let other = nets(5).remove(1);
    let other_enc = EncodedNetwork::new(&other, FixedPoint::default()).unwrap();
    assert!(b.check(&truncation_points(&other, &other_enc)).is_err());
    let mut tampered = b.clone();
    tampered.points[0].bound *= 0.5;
    assert!(tampered
        .check(&runner.points)
        .unwrap_err()
        .contains("maxima"));
    let mut tampered = b.clone();
    tampered.points[1].bits += 1;
    assert!(tampered.check(&runner.points).unwrap_err().contains("ℓ"));
}

#[test]
fn evaluation_errors_name_the_image() {
    let net = nets(6).remove(0);
    let enc = EncodedNetwork::new(&net, FixedPoint::default()).unwrap();
    let runner = Runner::new(&net, &enc);
    let n = net.input.len();
    let e = runner
        .evaluate_many(
            4,
            2,
            |i| {
                Ok(if i == 2 {
                    vec![0.0; n - 1]
                } else {
                    vec![0.5; n]
                })
            },
            None,
        )
        .unwrap_err();
    assert!(e.to_string().starts_with("image 2:"), "{e}");
}

fn eval(float: &[f64], fixed: &[f64]) -> ImageEval {
    ImageEval {
        float_logits: float.to_vec(),
        fixed_logits: fixed.to_vec(),
        fixed_max: vec![],
        float_max: vec![],
    }
}

#[test]
fn fidelity_counts_and_deltas() {
    let evals = [
        eval(&[1.0, 3.0, 2.0], &[1.0, 3.01, 2.0]), // both 1, label 1
        eval(&[4.0, -8.0, 3.99], &[3.98, -8.0, 3.99]), // float 0, fixed 2, label 0
        eval(&[0.5, 0.0, 0.25], &[0.5, 0.0, 0.25]), // both 0, label 2
    ];
    let f = Fidelity::of(&evals, &[1, 0, 2]);
    assert_eq!(
        (f.images, f.float_correct, f.fixed_correct, f.agree),
        (3, 2, 1, 2)
    );
    assert_eq!(f.disagreements.len(), 1);
    let d = &f.disagreements[0];
    assert_eq!((d.image, d.float_class, d.fixed_class), (1, 0, 2));
    assert!((d.float_margin - 0.01).abs() < 1e-12);
    assert!((f.max_abs_delta - 0.02).abs() < 1e-12);
    assert_eq!(f.max_abs_logit, 8.0);
    assert!((f.max_delta_relative - 0.0025).abs() < 1e-12);
    // Image 0: 0.01 / 3; image 1: 0.02 / 8.
    assert!((f.worst_image_relative - 0.01 / 3.0).abs() < 1e-12);
    assert_eq!(f.worst_image, 0);
    assert!((f.mean_abs_delta - 0.03 / 9.0).abs() < 1e-12);
    assert!((f.agreement() - 2.0 / 3.0).abs() < 1e-12);
}

fn opts(bounds: Option<pibench_models::calibrate::Bounds>) -> SaveOptions {
    SaveOptions {
        dataset: Some("cifar10".into()),
        bounds,
        ..Default::default()
    }
}

/// Rewrites the JSON header of a model file.
fn edit_header(bytes: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
    let mut header: serde_json::Value =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["pibench"]).unwrap();
    edit(&mut header);
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = st.tensors();
    let meta = std::collections::HashMap::from([("pibench".to_string(), header.to_string())]);
    safetensors::serialize(tensors, &Some(meta)).unwrap()
}

#[test]
fn model_files_store_the_plan_and_bounds_and_refuse_mismatches() {
    let mut rng = ChaCha12Rng::seed_from_u64(7);
    let net = nets(8).remove(0);
    let fp = FixedPoint::default();
    let enc = EncodedNetwork::new(&net, fp).unwrap();
    let runner = Runner::new(&net, &enc);
    let mut obs = Observations::new(runner.points.clone());
    for _ in 0..3 {
        obs.add(
            &runner
                .evaluate(&input(&mut rng, net.input.len()), 1)
                .unwrap(),
        );
    }
    let bounds = obs.bounds(1, "three random inputs".into());

    // Without bounds: the plan is stored; with bounds: both, and they load.
    let plain = file::to_bytes(&net, &opts(None)).unwrap();
    let loaded = file::from_bytes(&plain, "plain").unwrap();
    assert_eq!(loaded.header.plan, Some(ScalePlan::of(&net, &enc).unwrap()));
    assert_eq!(loaded.header.bounds, None);
    let calibrated = file::to_bytes(&net, &opts(Some(bounds.clone()))).unwrap();
    let loaded = file::from_bytes(&calibrated, "calibrated").unwrap();
    assert_eq!(loaded.header.bounds.as_ref(), Some(&bounds));
    assert_eq!(loaded.network, net);
    let plan = loaded.header.plan.unwrap();
    assert_eq!(plan.logits_frac_bits, enc.output_scale());
    assert_eq!(plan.nodes.len(), net.nodes.len());

    // Older files (no plan, no bounds) still load.
    let old = edit_header(&calibrated, |h| {
        let o = h.as_object_mut().unwrap();
        o.remove("plan");
        o.remove("bounds");
        o.insert(
            "fixed".into(),
            serde_json::json!({"act_frac_bits": 8, "weight_frac_bits": 16}),
        );
    });
    let loaded = file::from_bytes(&old, "old").unwrap();
    assert_eq!((loaded.header.plan, loaded.header.bounds), (None, None));

    // A stored plan that differs from the weights' plan is refused.
    let tampered = edit_header(&calibrated, |h| {
        let node = h["plan"]["nodes"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|n| n["op"] == "conv")
            .unwrap();
        let f = node["weight_frac_bits"].as_u64().unwrap();
        node["weight_frac_bits"] = (f - 1).into();
    });
    let e = file::from_bytes(&tampered, "tampered.safetensors").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("tampered.safetensors")
            && msg.contains("stored scale plan")
            && msg.contains("conv1"),
        "{msg}"
    );
    // Bounds for other scales, or without a plan, are refused.
    let tampered = edit_header(&calibrated, |h| {
        h["bounds"]["points"][0]["frac_bits"] = 3.into();
    });
    let msg = file::from_bytes(&tampered, "b").unwrap_err().to_string();
    assert!(
        msg.contains("bounds do not match") && msg.contains("2^3"),
        "{msg}"
    );
    let tampered = edit_header(&calibrated, |h| {
        h.as_object_mut().unwrap().remove("plan");
    });
    let msg = file::from_bytes(&tampered, "c").unwrap_err().to_string();
    assert!(msg.contains("no scale plan"), "{msg}");
    // A file saved with other fixed-point parameters carries their plan.
    let fp10 = FixedPoint::new(10, 16).unwrap();
    let other = SaveOptions {
        fixed: fp10,
        ..opts(None)
    };
    let loaded = file::from_bytes(&file::to_bytes(&net, &other).unwrap(), "fa10").unwrap();
    assert_eq!(loaded.header.plan.unwrap().fixed, fp10);
    // Saving bounds measured under another plan is an error, not a silent file.
    let wrong = SaveOptions {
        fixed: fp10,
        ..opts(Some(bounds))
    };
    assert!(matches!(
        file::to_bytes(&net, &wrong),
        Err(ModelError::Format { .. })
    ));
}
