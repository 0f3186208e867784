//! The float reference against PyTorch (eval mode) on committed vectors
//! written by `tests/vectors/generate.py` (`make vectors`).

use std::path::PathBuf;

use pibench_models::arch::ArchSpec;
use pibench_models::file;
use pibench_models::fixed::FixedPoint;
use pibench_models::graph::FeatureShape;
use pibench_models::reference::{argmax, forward_fixed, forward_float};
use safetensors::tensor::Dtype;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn f32s(st: &safetensors::SafeTensors<'_>, name: &str) -> (Vec<usize>, Vec<f32>) {
    let v = st.tensor(name).unwrap();
    assert_eq!(v.dtype(), Dtype::F32);
    let data = v
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (v.shape().to_vec(), data)
}

fn check(name: &str, spec: ArchSpec, hw: usize) {
    let input = FeatureShape::new(3, hw, hw);
    let net = file::import_state_dict(&dir().join(format!("{name}.safetensors")), &spec, input, 10)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let io = std::fs::read(dir().join(format!("{name}.io.safetensors"))).unwrap();
    let st = safetensors::SafeTensors::deserialize(&io).unwrap();
    let (xs, x) = f32s(&st, "input");
    let (_, logits) = f32s(&st, "logits");
    let per = input.len();
    assert_eq!(xs[1..], [3, hw, hw]);
    let mut checked = 0;
    let mut worst = 0.0f64;
    for n in 0..xs[0] {
        let sample = &x[n * per..(n + 1) * per];
        let want = &logits[n * 10..(n + 1) * 10];
        let got = forward_float(&net, sample).unwrap();
        let scale = want
            .iter()
            .fold(0.0f64, |m, &v| m.max(v.abs() as f64))
            .max(1e-3);
        for (g, &w) in got.iter().zip(want) {
            let rel = (g - w as f64).abs() / scale;
            assert!(
                rel <= 1e-4,
                "{name} sample {n}: rust {g} vs torch {w} (relative {rel:e})"
            );
        }
        // The fixed-point logits stay within the documented bound of
        // PyTorch's (docs/MODELS.md: 0.005·(1 + max |logit|)).
        let fixed = forward_fixed(&net, FixedPoint::default(), sample).unwrap();
        let want64: Vec<f64> = want.iter().map(|&v| v as f64).collect();
        let bound = 0.005 * (1.0 + scale);
        let err = fixed
            .logits
            .iter()
            .zip(&want64)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            err <= bound,
            "{name} sample {n}: fixed-point logits {:?} vs torch {want64:?} (error {err}, bound {bound})",
            fixed.logits
        );
        worst = worst.max(err / (1.0 + scale));
        let mut sorted = want64.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        if sorted[0] - sorted[1] > 2.0 * bound {
            checked += 1;
        }
        // Committed vectors: every sample's argmax agrees (the margin rule
        // above is implied by the error bound; this is the stronger check).
        assert_eq!(
            argmax(&fixed.logits),
            argmax(&want64),
            "{name} sample {n}: fixed-point argmax differs (torch top-2 margin {})",
            sorted[0] - sorted[1]
        );
    }
    eprintln!(
        "{name}: fixed-point error ≤ {worst:.5}·(1 + max|logit|); argmax checked on {checked}/{}",
        xs[0]
    );
    assert!(checked > 0, "{name}: no sample with a clear top-2 margin");
}

fn resnet(name: &str, stem: usize, blocks: Vec<usize>, widths: Vec<usize>) -> ArchSpec {
    ArchSpec::Resnet {
        name: name.into(),
        stem,
        blocks,
        widths,
    }
}

#[test]
fn resnet_small_matches_pytorch() {
    check(
        "resnet_small",
        resnet("resnet_small", 8, vec![1, 1], vec![8, 16]),
        8,
    );
}

#[test]
fn resnet18_tiny_matches_pytorch() {
    check(
        "resnet18_tiny",
        resnet("resnet18_tiny", 4, vec![2, 2, 2, 2], vec![4, 8, 16, 32]),
        16,
    );
}

#[test]
fn masked_polynomial_resnet_matches_pytorch() {
    check(
        "resnet_masked_poly",
        resnet("resnet_masked_poly", 8, vec![1, 1], vec![8, 16]),
        8,
    );
}

#[test]
fn preactivation_wrn_matches_pytorch() {
    let spec = ArchSpec::Wrn {
        name: "wrn10_tiny".into(),
        depth: 10,
        stem: 4,
        widths: vec![8, 8, 16],
    };
    check("wrn10_tiny", spec, 8);
}

#[test]
fn vgg_with_masks_matches_pytorch() {
    let spec = ArchSpec::Vgg {
        name: "vgg_tiny".into(),
        convs: vec![1, 2],
        widths: vec![8, 16],
        pool: pibench_models::arch::VggPool::Avg,
    };
    check("vgg_tiny", spec, 8);
}
