//! `pibench calibrate` end to end: bounds and plan land in the model file,
//! they cover the images they were measured on, and bad options are refused.

use std::path::Path;

use pibench_models::arch::ArchSpec;
use pibench_models::calibrate::DEFAULT_MARGIN_BITS;
use pibench_models::file::{self, SaveOptions};
use pibench_models::graph::{FeatureShape, Init, PolyCoeffs};
use pibench_models::reference::TruncKind;
#[path = "common/cli.rs"]
mod cli;
use cli::{pibench, write_cifar10};

/// A masked ResNet with a polynomial site (so the file has `site_poly` points).
fn write_model(path: &Path) {
    let mut net = ArchSpec::Resnet {
        name: "resnet-tiny".into(),
        stem: 4,
        blocks: vec![1, 1],
        widths: vec![4, 8],
    }
    .build(FeatureShape::new(3, 32, 32), 10, Init::Seeded(5))
    .unwrap();
    let site = net.site_mut("layer1.0.relu1").unwrap();
    for m in site.mask.iter_mut().step_by(3) {
        *m = 0;
    }
    site.poly = Some(PolyCoeffs {
        a2: vec![0.1; 4],
        a1: vec![0.5; 4],
        a0: vec![0.05; 4],
    });
    let opts = SaveOptions {
        dataset: Some("cifar10".into()),
        ..Default::default()
    };
    file::save(&net, &opts, path).unwrap();
}

/// Synthetic CIFAR-10 files and the model in a new folder: (folder, model
/// file, path for the calibrated file).
fn setup(seed: u64) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    write_cifar10(dir.path(), 3, 4, seed);
    let model = dir.path().join("m.safetensors");
    write_model(&model);
    let out = dir.path().join("m.cal.safetensors");
    (dir, model, out)
}

/// `pibench calibrate --model M --data D EXTRA…`.
fn calibrate(m: &str, d: &str, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec!["calibrate", "--model", m, "--data", d];
    args.extend_from_slice(extra);
    pibench(&args)
}

#[test]
fn calibrate_writes_bounds_that_cover_their_images() {
    let (dir, model, out) = setup(9);
    let (m, d, o) = (
        model.to_str().unwrap(),
        dir.path().to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let (ok, stdout, err) = calibrate(
        m,
        d,
        &[
            "--limit",
            "8",
            "--margin-bits",
            "2",
            "--out",
            o,
            "--format",
            "json",
            "--quiet",
        ],
    );
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["bounds"]["images"], 8);
    // --model is untouched; --out carries plan and bounds and loads.
    assert!(file::load(&model).unwrap().header.bounds.is_none());
    let cal = file::load(&out).unwrap();
    let bounds = cal.header.bounds.clone().unwrap();
    assert!(cal.header.plan.is_some());
    assert_eq!((bounds.margin_bits, bounds.images), (2, 8));
    assert!(bounds.source.contains("train split") && bounds.source.contains("8 of 15"));
    assert!(bounds.points.iter().any(|p| p.kind == TruncKind::SitePoly));
    for p in &bounds.points {
        assert_eq!(p.bound, p.fixed_max.max(p.float_max) * 4.0);
        assert!(p.bits > 0, "{}", p.node);
    }
    assert_eq!(cal.network, file::load(&model).unwrap().network);

    // On the images it was measured on, no point exceeds its bound, even with margin 0.
    let (ok, _, err) = pibench(&[
        "calibrate",
        "--model",
        m,
        "--data",
        d,
        "--limit",
        "8",
        "--margin-bits",
        "0",
        "--threads",
        "2",
        "--quiet",
    ]);
    assert!(ok, "{err}");
    let zero = file::load(&model).unwrap().header.bounds.unwrap();
    assert_eq!(zero.margin_bits, 0);
    let (ok, stdout, err) = pibench(&[
        "accuracy",
        "--model",
        m,
        "--data",
        d,
        "--split",
        "train",
        "--limit",
        "8",
        "--threads",
        "2",
        "--format",
        "json",
        "--quiet",
    ]);
    assert!(ok, "{err}");
    let a: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(a["points_exceeding_bounds"], 0, "{}", a["points"]);
    for (p, b) in a["points"].as_array().unwrap().iter().zip(&zero.points) {
        assert_eq!(p["stored_bits"], b.bits);
        assert!(
            p["observed_bits"].as_u64().unwrap() <= b.bits as u64,
            "{}",
            b.node
        );
    }
    // The default margin is one bit.
    assert_eq!(DEFAULT_MARGIN_BITS, 1);
    let (ok, stdout, err) = pibench(&[
        "calibrate",
        "--model",
        m,
        "--data",
        d,
        "--limit",
        "2",
        "--quiet",
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("margin 1 bit(s)"), "{stdout}");
    assert!(
        stdout.contains("layer1.0.relu1") && stdout.contains("site_poly"),
        "{stdout}"
    );
}

#[test]
fn calibrate_refuses_bad_options() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar10(dir.path(), 1, 1, 3);
    let model = dir.path().join("m.safetensors");
    write_model(&model);
    let (m, d) = (model.to_str().unwrap(), dir.path().to_str().unwrap());
    let (ok, _, err) = pibench(&[
        "calibrate",
        "--model",
        m,
        "--data",
        d,
        "--margin-bits",
        "17",
    ]);
    assert!(!ok && err.contains("--margin-bits 17"), "{err}");
    let missing = dir.path().join("nope.safetensors");
    let (ok, _, err) = pibench(&[
        "calibrate",
        "--model",
        missing.to_str().unwrap(),
        "--data",
        d,
    ]);
    assert!(!ok && err.contains("nope.safetensors"), "{err}");
    let bad_out = dir.path().join("no/such/dir/x.safetensors");
    let (ok, _, err) = pibench(&[
        "calibrate",
        "--model",
        m,
        "--data",
        d,
        "--out",
        bad_out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(!ok && err.contains("no/such/dir"), "{err}");
    // A failed write leaves the model as it was.
    assert!(file::load(&model).unwrap().header.bounds.is_none());
}

/// The protocol and the calibrated bounds: `pibench run` refuses a model file
/// without bounds under `--trunc local`, runs a calibrated one with ℓ from
/// its bounds (input: a dataset image with its label), and refuses a file
/// whose bounds say a point is unbounded.
#[test]
fn run_uses_calibrated_bounds_and_refuses_unbounded_files() {
    let (dir, model, cal) = setup(11);
    let (m, d, c) = (
        model.to_str().unwrap(),
        dir.path().to_str().unwrap(),
        cal.to_str().unwrap(),
    );
    let (ok, _, err) = calibrate(m, d, &["--limit", "8", "--out", c, "--quiet"]);
    assert!(ok, "{err}");

    // No bounds, local truncation: refused before any party starts.
    let (ok, _, err) = pibench(&["run", "--model", m, "--threads", "2"]);
    assert!(!ok);
    assert!(
        err.contains("no calibrated magnitude bounds") && err.contains("pibench calibrate"),
        "{err}"
    );
    // --relus replaces the calibrated masks: the bounds no longer apply, and it says why.
    let (ok, _, err) = pibench(&["run", "--model", c, "--relus", "100", "--threads", "2"]);
    assert!(!ok);
    assert!(
        err.contains("--relus replaces the calibrated masks"),
        "{err}"
    );

    // Calibrated: ℓ from the file's bounds, a test image as the input.
    let (ok, stdout, err) = pibench(&[
        "run",
        "--model",
        c,
        "--data",
        d,
        "--image",
        "2",
        "--threads",
        "2",
        "--format",
        "json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["reference"]["argmax_agrees"], true);
    let lt = &v["local_truncation"];
    assert!(
        lt["bounds_source"]
            .as_str()
            .unwrap()
            .contains("calibrated bounds"),
        "{lt}"
    );
    assert!(lt["per_inference"].as_f64().unwrap() > 0.0);
    let label = v["input"]["label"].as_u64().unwrap();
    assert!(label < 10);
    assert!(v["input"]["source"]
        .as_str()
        .unwrap()
        .contains("test image 2"));
    assert_eq!(v["correct"].as_bool().unwrap(), {
        let l: Vec<f64> = v["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b }) as u64 == label
    });
    // The ℓ used per point is the calibrated one.
    let b = file::load(&cal).unwrap().header.bounds.unwrap();
    for p in lt["points"].as_array().unwrap() {
        let (name, kind, l) = (
            p[0].as_str().unwrap(),
            p[1].as_str().unwrap(),
            p[2].as_u64().unwrap(),
        );
        let pb = b
            .points
            .iter()
            .find(|q| q.node == name && q.kind.to_string() == kind)
            .unwrap();
        assert_eq!(l, pb.bits as u64, "{name} {kind}");
    }

    // A point whose calibrated bound reaches 2^53 is unbounded: refused in both modes.
    let loaded = file::load(&cal).unwrap();
    let mut bad = b.clone();
    let p = &mut bad.points[0];
    p.fixed_max = 2f64.powi(53 - p.frac_bits as i32);
    p.bound = p.fixed_max.max(p.float_max) * 2f64.powi(bad.margin_bits as i32);
    p.bits = pibench_models::calibrate::magnitude_bits(p.bound * 2f64.powi(p.frac_bits as i32));
    let unbounded = dir.path().join("m.unbounded.safetensors");
    file::save(
        &loaded.network,
        &SaveOptions {
            dataset: Some("cifar10".into()),
            bounds: Some(bad),
            ..Default::default()
        },
        &unbounded,
    )
    .unwrap();
    for trunc in ["local", "exact"] {
        let (ok, _, err) = pibench(&[
            "run",
            "--model",
            unbounded.to_str().unwrap(),
            "--trunc",
            trunc,
        ]);
        assert!(!ok);
        assert!(err.contains("is unbounded"), "{trunc}: {err}");
    }
}
