//! `pibench accuracy` end to end on a small synthetic CIFAR-10 folder: the
//! figures it prints are the references' own, recomputed here.

use std::path::Path;

use pibench_models::arch::{ArchSpec, Dataset};
use pibench_models::calibrate::truncation_points;
use pibench_models::data::{ImageSet, Split};
use pibench_models::file::{self, SaveOptions};
use pibench_models::fixed::FixedPoint;
use pibench_models::graph::{FeatureShape, Init};
use pibench_models::reference::{argmax, forward_fixed, forward_float, EncodedNetwork};
#[path = "common/cli.rs"]
mod cli;
use cli::{pibench, write_cifar10};

fn write_model(path: &Path) {
    let net = ArchSpec::Resnet {
        name: "resnet-tiny".into(),
        stem: 4,
        blocks: vec![1, 1],
        widths: vec![4, 8],
    }
    .build(FeatureShape::new(3, 32, 32), 10, Init::Seeded(3))
    .unwrap();
    let opts = SaveOptions {
        dataset: Some("cifar10".into()),
        ..Default::default()
    };
    file::save(&net, &opts, path).unwrap();
}

#[test]
fn accuracy_reports_the_references_figures() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar10(dir.path(), 4, 12, 1);
    let model = dir.path().join("m.safetensors");
    write_model(&model);
    let (m, d) = (model.to_str().unwrap(), dir.path().to_str().unwrap());
    let (ok, out, err) = pibench(&[
        "accuracy",
        "--model",
        m,
        "--data",
        d,
        "--limit",
        "6",
        "--threads",
        "2",
        "--format",
        "json",
        "--quiet",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();

    // Recompute every figure with the library on the same six images.
    let loaded = file::load(&model).unwrap();
    let net = &loaded.network;
    let images = ImageSet::load(Dataset::Cifar10, dir.path(), Split::Test, Some(6)).unwrap();
    let (mut float_ok, mut fixed_ok, mut agree) = (0, 0, 0);
    let (mut max_delta, mut max_logit) = (0.0f64, 0.0f64);
    for i in 0..6 {
        let x = images.normalised(i, net.input).unwrap();
        let f = forward_float(net, &x).unwrap();
        let q = forward_fixed(net, FixedPoint::default(), &x)
            .unwrap()
            .logits;
        float_ok += usize::from(argmax(&f) == Some(images.label(i)));
        fixed_ok += usize::from(argmax(&q) == Some(images.label(i)));
        agree += usize::from(argmax(&f) == argmax(&q));
        for (a, b) in f.iter().zip(&q) {
            max_delta = max_delta.max((a - b).abs());
            max_logit = max_logit.max(a.abs());
        }
    }
    assert_eq!(v["images"], 6);
    assert_eq!(v["fidelity"]["float_correct"], float_ok);
    assert_eq!(v["fidelity"]["fixed_correct"], fixed_ok);
    assert_eq!(v["fidelity"]["agree"], agree);
    assert_eq!(v["float_top1"].as_f64().unwrap(), float_ok as f64 / 6.0);
    assert_eq!(v["agreement"].as_f64().unwrap(), agree as f64 / 6.0);
    let close = |a: &serde_json::Value, b: f64| (a.as_f64().unwrap() - b).abs() <= 1e-9 * (1.0 + b);
    assert!(
        close(&v["fidelity"]["max_abs_delta"], max_delta),
        "{}",
        v["fidelity"]
    );
    assert!(close(&v["fidelity"]["max_abs_logit"], max_logit));
    assert_eq!(
        v["disagreements"].as_array().unwrap().len(),
        6 - agree,
        "{}",
        v["disagreements"]
    );
    // One entry per truncation point of the plan, in its order; no bounds stored.
    let enc = EncodedNetwork::new(net, FixedPoint::default()).unwrap();
    let names: Vec<String> = truncation_points(net, &enc)
        .into_iter()
        .map(|p| p.name)
        .collect();
    let got: Vec<String> = v["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["node"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, names);
    assert!(v["bounds_source"].is_null());
    assert!(v["data"].as_str().unwrap().contains("6 of 12 images"));

    // The table names the same figures.
    let (ok, out, err) = pibench(&[
        "accuracy", "--model", m, "--data", d, "--limit", "6", "--quiet",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("({agree}/6 images choose the same class)")),
        "{out}"
    );
    assert!(out.contains("relu0"), "{out}");
}

#[test]
fn accuracy_refuses_bad_data_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.safetensors");
    write_model(&model);
    let m = model.to_str().unwrap();
    let empty = dir.path().join("none");
    std::fs::create_dir(&empty).unwrap();
    let (ok, _, err) = pibench(&["accuracy", "--model", m, "--data", empty.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("test_batch.bin") && err.trim().lines().count() == 1,
        "{err}"
    );
    write_cifar10(dir.path(), 1, 2, 2);
    let d = dir.path().to_str().unwrap();
    let (ok, _, err) = pibench(&[
        "accuracy",
        "--model",
        m,
        "--data",
        d,
        "--dataset",
        "cifar100",
    ]);
    assert!(
        !ok && err.contains("10 classes") && err.contains("cifar100"),
        "{err}"
    );
    let (ok, _, err) = pibench(&["accuracy", "--model", m, "--data", d, "--limit", "0"]);
    assert!(!ok && err.contains("--limit 0"), "{err}");
    let (ok, _, err) = pibench(&[
        "accuracy",
        "--model",
        m,
        "--data",
        d,
        "--act-frac-bits",
        "30",
    ]);
    assert!(!ok && err.contains("act_frac_bits"), "{err}");
}
