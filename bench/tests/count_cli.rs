//! `pibench count` end to end: exact counts, JSON, and one-line errors on bad input.

use pibench_models::arch::ArchSpec;
use pibench_models::file::{self, SaveOptions};
use pibench_models::graph::{FeatureShape, Init};
#[path = "common/cli.rs"]
#[allow(dead_code)] // the CIFAR writer serves the accuracy/calibrate tests
mod cli;

/// Runs `pibench count ARGS`: (success, stdout, stderr).
fn pibench(args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["count"];
    all.extend_from_slice(args);
    cli::pibench(&all)
}

fn json_relus(args: &[&str]) -> u64 {
    let mut all = args.to_vec();
    all.extend(["--format", "json"]);
    let (ok, out, err) = pibench(&all);
    assert!(ok, "{args:?}: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["flops"].as_u64().unwrap() > 0 && v["params"].as_u64().unwrap() > 0);
    v["relus"].as_u64().unwrap()
}

#[test]
fn counts_match_the_papers() {
    assert_eq!(
        json_relus(&["--model", "resnet18", "--dataset", "cifar100"]),
        557_056
    );
    assert_eq!(
        json_relus(&[
            "--model",
            "resnet18",
            "--dataset",
            "cifar10",
            "--stem-relu",
            "off"
        ]),
        491_520
    );
    assert_eq!(
        json_relus(&["--model", "resnet18", "--dataset", "tinyimagenet"]),
        2_228_224
    );
    assert_eq!(
        json_relus(&["--model", "wrn22_8", "--dataset", "cifar100"]),
        1_359_872
    );
    assert_eq!(
        json_relus(&[
            "--model",
            "wrn22_8",
            "--dataset",
            "cifar100",
            "--final-relu",
            "on"
        ]),
        1_392_640
    );
    assert_eq!(
        json_relus(&["--model", "wrn22_8", "--dataset", "tinyimagenet"]),
        5_439_488
    );
    assert_eq!(
        json_relus(&["--model", "vgg16", "--dataset", "cifar10"]),
        276_480
    );
    assert_eq!(
        json_relus(&["--model", "hrn", "--hrn", "5x5x3x", "--base-channels", "16"]),
        343_040
    );
}

/// VGG-16 (SNL's `vgg16_bn` CIFAR layout): 276,480 ReLUs and, apart from
/// them, 3 comparisons per 2×2 max-pool window: 64·16² + 128·8² + 256·4²
/// + 512·2² + 512·1² = 31,232 windows → 93,696 comparisons.
#[test]
fn vgg16_prints_relus_and_max_pool_comparisons() {
    let args = ["--model", "vgg16", "--dataset", "cifar10"];
    let (ok, out, err) = pibench(&[&args[..], &["--format", "json"]].concat());
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["relus"].as_u64(), Some(276_480));
    assert_eq!(v["max_pool_comparisons"].as_u64(), Some(93_696));
    let (ok, out, err) = pibench(&args);
    assert!(ok, "{err}");
    assert!(out.contains("relus 276480"), "{out}");
    assert!(out.contains("93696"), "{out}");
}

#[test]
fn table_lists_sites_and_totals() {
    let (ok, out, err) = pibench(&["--model", "resnet18", "--dataset", "cifar100"]);
    assert!(ok, "{err}");
    assert!(out.contains("layer2.1.relu1"));
    assert!(out.contains("relus 557056"));
    assert_eq!(out.lines().filter(|l| l.contains(".relu")).count(), 16);
}

#[test]
fn model_files_are_counted_with_their_masks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r18.safetensors");
    let mut net = ArchSpec::resnet18()
        .build(FeatureShape::new(3, 32, 32), 100, Init::Zeros)
        .unwrap();
    net.site_mut("layer1.0.relu1").unwrap().fill_mask(0);
    let opts = SaveOptions {
        dataset: Some("cifar100".into()),
        ..Default::default()
    };
    file::save(&net, &opts, &path).unwrap();
    assert_eq!(
        json_relus(&["--model", path.to_str().unwrap()]),
        557_056 - 65_536
    );
}

fn fails_with(args: &[&str], needles: &[&str]) {
    let (ok, out, err) = pibench(args);
    assert!(!ok, "{args:?} should fail: {out}");
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one-line error expected: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: error {err:?} lacks {n:?}");
    }
}

#[test]
fn bad_input_gives_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    fails_with(&["--model", "resnet152"], &["resnet152"]);
    fails_with(&["--model", "wrn23_8"], &["WRN depth"]);
    fails_with(
        &["--model", "hrn", "--hrn", "5x5x3x", "--base-channels", "0"],
        &["base-channels"],
    );
    fails_with(&["--model", "hrn", "--hrn", "5x0x3x"], &["--hrn"]);
    fails_with(
        &["--model", "hrn", "--hrn", "5x5x3x", "--base-channels", "-4"],
        &["--base-channels -4"],
    );
    fails_with(
        &["--model", "resnet18", "--dataset", "imagenet"],
        &["imagenet"],
    );
    let absent = dir.path().join("absent.safetensors");
    fails_with(
        &["--model", absent.to_str().unwrap()],
        &["absent.safetensors"],
    );

    // Truncated file.
    let net = ArchSpec::Resnet {
        name: "tiny".into(),
        stem: 4,
        blocks: vec![1],
        widths: vec![4],
    }
    .build(FeatureShape::new(3, 8, 8), 10, Init::Seeded(1))
    .unwrap();
    let bytes = file::to_bytes(&net, &SaveOptions::default()).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(
        &["--model", cut.to_str().unwrap()],
        &["cut.safetensors", "malformed"],
    );

    // A model file whose mask has the wrong shape for its site.
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    for t in &mut tensors {
        if t.0 == "layer1.0.relu1.mask" {
            t.2 = vec![4, 4, 16];
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let bad = dir.path().join("badmask.safetensors");
    std::fs::write(
        &bad,
        safetensors::serialize(views, meta.metadata()).unwrap(),
    )
    .unwrap();
    fails_with(
        &["--model", bad.to_str().unwrap()],
        &["badmask.safetensors", "layer1.0.relu1", "[4, 8, 8]"],
    );
}
