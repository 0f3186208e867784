//! Training, SNL, export and the command line on synthetic CIFAR data (CPU).

mod common;

use std::path::Path;
use std::process::Command;

use pibench_models::file;
use pibench_models::fixed::FixedPoint;
use pibench_models::reference;
use pibench_prune::data::{Dataset, DatasetKind, Preprocess};
use pibench_prune::export;
use pibench_prune::methods::snl;
use pibench_prune::net::{ArchSpec, Network};
use pibench_prune::train::{
    KdConfig, NoHooks, OptimizerKind, RunLog, Schedule, TrainConfig, Trainer,
};
use tch::Device;

/// ResNet-18 at 1/16 width: channels 4, 8, 16, 32.
const WIDTH: f64 = 0.0625;

fn tiny_spec() -> ArchSpec {
    ArchSpec::named("resnet18", 10, 32, WIDTH, 1.0, None).unwrap()
}

fn config(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 50,
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 5e-4,
        optimizer: OptimizerKind::Sgd,
        schedule: Schedule::Cosine,
        max_steps: None,
        amp: false,
        seed: 1,
        alpha_lr: 0.5,
    }
}

fn piprune() -> Command {
    Command::new(env!("CARGO_BIN_EXE_piprune"))
}

fn base_args(data: &Path, out: &Path, method: &str, budget: &str) -> Vec<String> {
    [
        "--method",
        method,
        "--model",
        "resnet18",
        "--dataset",
        "cifar10",
        "--data",
        data.to_str().unwrap(),
        "--budget",
        budget,
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--out",
        out.to_str().unwrap(),
        "--width-multiplier",
        "0.0625",
        "--batch-size",
        "50",
        "--no-progress",
        "--threads",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn small_resnet_training_reduces_the_loss() {
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let dir = tempfile::tempdir().unwrap();
    common::write_cifar10(dir.path(), 40, 50, 11);
    let ds = Dataset::load(DatasetKind::Cifar10, dir.path()).unwrap();
    let spec = tiny_spec();
    let mut net = Network::new(&spec, Device::Cpu);
    let pre = Preprocess::new(DatasetKind::Cifar10, 32, Device::Cpu);
    let mut log = RunLog::default();
    let mut trainer = Trainer {
        train: &ds.train,
        test: &ds.test,
        pre: pre.clone(),
        teacher_pre: pre,
        log: &mut log,
        checkpoints: None,
        progress: false,
    };
    let acc = trainer
        .run_phase(
            "teacher",
            &mut net,
            None,
            KdConfig::default(),
            &config(4),
            &mut NoHooks,
        )
        .unwrap();
    let losses: Vec<f64> = log.epochs.iter().map(|e| e.train_loss).collect();
    assert_eq!(losses.len(), 4);
    assert!(losses[3] < losses[0], "loss did not fall: {losses:?}");
    assert!((0.0..=1.0).contains(&acc));
}

#[test]
fn snl_reaches_the_budget_exactly_and_exports() {
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let dir = tempfile::tempdir().unwrap();
    common::write_cifar10(dir.path(), 20, 20, 12);
    let ds = Dataset::load(DatasetKind::Cifar10, dir.path()).unwrap();
    let spec = tiny_spec();
    assert_eq!(spec.full_relus(), 34_816);
    let mut teacher = Network::new(&spec, Device::Cpu);
    let pre = Preprocess::new(DatasetKind::Cifar10, 32, Device::Cpu);
    let mut log = RunLog::default();
    let mut trainer = Trainer {
        train: &ds.train,
        test: &ds.test,
        pre: pre.clone(),
        teacher_pre: pre.clone(),
        log: &mut log,
        checkpoints: None,
        progress: false,
    };
    let kd = KdConfig::default();
    trainer
        .run_phase("teacher", &mut teacher, None, kd, &config(1), &mut NoHooks)
        .unwrap();
    let mut net = Network::new(&spec, Device::Cpu);
    net.copy_weights_from(&teacher).unwrap();
    net.attach_alphas();
    let budget = 4_321;
    let mut search = snl::SnlSearch::new(snl::SnlConfig {
        budget,
        lambda: 1e-3,
        lambda_growth: 4.0,
        threshold: 1e-2,
    });
    trainer
        .run_phase(
            "search",
            &mut net,
            Some(&teacher),
            kd,
            &config(12),
            &mut search,
        )
        .unwrap();
    assert!(search.reached, "search did not reach the budget");
    assert!(snl::alpha_count(&net, 1e-2) <= budget);
    assert_eq!(snl::threshold_top_n(&mut net, budget), budget);
    trainer
        .run_phase(
            "finetune",
            &mut net,
            Some(&teacher),
            kd,
            &config(1),
            &mut NoHooks,
        )
        .unwrap();
    assert_eq!(net.relu_count(), budget);

    let out = dir.path().join("snl.safetensors");
    assert_eq!(export::save(&net, "cifar10", &out).unwrap(), budget as u64);
    let loaded = file::load(&out).unwrap();
    assert_eq!(loaded.header.relus, budget as u64);
    assert_eq!(loaded.header.input.h, 32);
    assert_eq!(loaded.header.sites.len(), 17);
    check_against_references(&net, &loaded.network, &ds.test, &pre);
}

/// The models crate's f32 reference reproduces libtorch's logits (1e-4
/// relative) and its fixed-point reference agrees on the argmax.
fn check_against_references(
    net: &Network,
    model: &pibench_models::graph::Network,
    split: &pibench_prune::data::Split,
    pre: &Preprocess,
) {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let n = 8.min(split.len() as i64);
    let x = pre.apply(&split.images.narrow(0, 0, n), false, &mut rng);
    let torch = export::torch_logits(net, &x);
    let mut margins_checked = 0;
    for (i, t) in torch.iter().enumerate() {
        let input = Vec::<f32>::try_from(&x.get(i as i64).flatten(0, -1)).unwrap();
        let float = reference::forward_float(model, &input).unwrap();
        let scale = t.iter().fold(1.0f64, |m, v| m.max(v.abs() as f64));
        for (a, b) in t.iter().zip(&float) {
            assert!(
                (*a as f64 - b).abs() <= 1e-4 * scale,
                "image {i}: libtorch {t:?} vs reference {float:?}"
            );
        }
        let fixed = reference::forward_fixed(model, FixedPoint::default(), &input).unwrap();
        let mut sorted = float.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        // Fixed-point logits carry ~2^-8 rounding per layer: compare the
        // argmax where the float top-2 margin exceeds that noise.
        if sorted[0] - sorted[1] > 0.05 {
            margins_checked += 1;
            assert_eq!(
                reference::argmax(&fixed.logits),
                reference::argmax(&float),
                "image {i}: fixed {:?} vs float {float:?}",
                fixed.logits
            );
        }
    }
    assert!(margins_checked > 0, "no image had a clear argmax");
}

#[test]
fn export_matches_libtorch_for_random_masks_and_reshaped_networks() {
    use rand::SeedableRng;
    tch::set_num_threads(1);
    tch::manual_seed(5);
    let dir = tempfile::tempdir().unwrap();
    common::write_cifar10(dir.path(), 10, 10, 18);
    let ds = Dataset::load(DatasetKind::Cifar10, dir.path()).unwrap();
    let specs = [
        // DeepReDuce ρ = 0.5: 16×16 input.
        ArchSpec::named("resnet18", 10, 32, WIDTH, 0.5, None).unwrap(),
        ArchSpec::named("hrn-2x5x3x-m4", 10, 32, 1.0, 1.0, None).unwrap(),
    ];
    for spec in specs {
        let mut net = Network::new(&spec, Device::Cpu);
        let pre = Preprocess::new(DatasetKind::Cifar10, spec.input_size, Device::Cpu);
        // Non-trivial BN statistics: a few training-mode passes.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        tch::no_grad(|| {
            for _ in 0..3 {
                let x = pre.apply(&ds.train.images, true, &mut rng);
                let _ = net.forward_t(&x, true);
            }
        });
        // Random per-element masks (about 30% kept).
        for i in 0..net.sites.len() {
            let shape = net.sites[i].layout.shape;
            let m = tch::Tensor::rand(shape, (tch::Kind::Float, Device::Cpu)).lt(0.3);
            net.set_mask(i, &m);
        }
        let out = dir.path().join(format!("{}.safetensors", spec.name));
        let relus = export::save(&net, "cifar10", &out).unwrap();
        assert_eq!(relus as i64, net.relu_count());
        let loaded = file::load(&out).unwrap();
        assert_eq!(loaded.header.input.h as i64, spec.input_size);
        let x = pre.apply(&ds.test.images, false, &mut rng);
        let torch = export::torch_logits(&net, &x);
        for (i, t) in torch.iter().enumerate() {
            let input = Vec::<f32>::try_from(&x.get(i as i64).flatten(0, -1)).unwrap();
            let float = reference::forward_float(&loaded.network, &input).unwrap();
            let scale = t.iter().fold(1.0f64, |m, v| m.max(v.abs() as f64));
            for (a, b) in t.iter().zip(&float) {
                assert!(
                    (*a as f64 - b).abs() <= 1e-4 * scale,
                    "{} image {i}: libtorch {t:?} vs reference {float:?}",
                    spec.name
                );
            }
        }
    }
}

#[test]
fn cli_snl_writes_a_model_with_the_exact_budget() {
    let dir = tempfile::tempdir().unwrap();
    common::write_cifar10(dir.path(), 20, 20, 13);
    let out = dir.path().join("m.safetensors");
    let mut args = base_args(dir.path(), &out, "snl", "3000");
    args.extend(
        [
            "--search-epochs",
            "12",
            "--lambda",
            "1e-3",
            "--lambda-growth",
            "4",
            "--alpha-lr",
            "0.5",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let o = piprune().args(&args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("3000 ReLUs (budget 3000 met exactly)"),
        "{stdout}"
    );
    let loaded = file::load(&out).unwrap();
    assert_eq!(loaded.header.relus, 3000);
    let log: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("m.safetensors.log.json")).unwrap(),
    )
    .unwrap();
    assert!(log["epochs"].as_array().unwrap().len() >= 3);
    // Resume: every phase is restored from its checkpoint, nothing retrains.
    args.push("--resume".into());
    let o = piprune().args(&args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("restored finished checkpoint"), "{stderr}");
    assert!(!stderr.contains("epoch 1/"), "{stderr}");
}

#[test]
fn cli_deepreduce_picks_the_nearest_candidate() {
    let dir = tempfile::tempdir().unwrap();
    common::write_cifar10(dir.path(), 10, 10, 14);
    let out = dir.path().join("d.safetensors");
    // Culling S1 (+ stem) of the 1/16-width ResNet-18 leaves 14,336 ReLUs.
    let mut args = base_args(dir.path(), &out, "deepreduce", "15000");
    args.extend(
        ["--criticality-order", "1,4,2,3"]
            .iter()
            .map(|s| s.to_string()),
    );
    let o = piprune().args(&args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let loaded = file::load(&out).unwrap();
    assert_eq!(loaded.header.relus, 14_336);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("nearest achievable"), "{stdout}");
}

#[test]
fn bad_inputs_fail_before_training() {
    let dir = tempfile::tempdir().unwrap();
    common::write_cifar10(dir.path(), 2, 2, 15);
    let out = dir.path().join("x.safetensors");
    let run = |args: Vec<String>| {
        let o = piprune().args(&args).output().unwrap();
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!err.contains("epoch 1/"), "training started: {err}");
        err
    };
    let err = run(base_args(dir.path(), &out, "snl", "0"));
    assert!(err.contains("budget 0 is invalid"), "{err}");
    let err = run(base_args(dir.path(), &out, "snl", "-5"));
    assert!(err.contains("budget -5 is invalid"), "{err}");
    let err = run(base_args(dir.path(), &out, "snl", "34817"));
    assert!(err.contains("34816 ReLUs"), "{err}");
    let err = run(base_args(dir.path(), &out, "magic", "100"));
    assert!(err.contains("invalid value 'magic'"), "{err}");
    let err = run(base_args(dir.path(), &out, "deepreduce", "10"));
    assert!(err.contains("smallest achievable"), "{err}");
    let missing = dir.path().join("nowhere");
    let err = run(base_args(&missing, &out, "snl", "100"));
    assert!(err.contains("missing"), "{err}");
    let f = dir.path().join("cifar-10-batches-bin/data_batch_2.bin");
    std::fs::write(&f, vec![0u8; 100]).unwrap();
    let err = run(base_args(dir.path(), &out, "snl", "100"));
    assert!(
        err.contains("not a multiple of the 3073-byte record size"),
        "{err}"
    );
    let err = run(base_args(dir.path(), &out, "deepreshape", "100"));
    assert!(err.contains("HybReNet"), "{err}");
}

#[test]
fn cli_deepreduce_probes_criticality_and_writes_the_pareto_set() {
    let dir = tempfile::tempdir().unwrap();
    common::write_cifar10(dir.path(), 10, 10, 16);
    let out = dir.path().join("p.safetensors");
    let mut args = base_args(dir.path(), &out, "deepreduce", "8000");
    args.push("--pareto".into());
    let o = piprune().args(&args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let log: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("p.safetensors.log.json")).unwrap(),
    )
    .unwrap();
    let results = log["results"].as_array().unwrap();
    let crit = results
        .iter()
        .find(|r| r.get("criticality").is_some())
        .unwrap();
    let order = crit["criticality"]["order_least_to_most"]
        .as_array()
        .unwrap();
    assert_eq!(order.len(), 4);
    let run = results.iter().find(|r| r.get("pareto").is_some()).unwrap();
    assert_eq!(run["trained"].as_array().unwrap().len(), 15);
    assert!(!run["pareto"].as_array().unwrap().is_empty());
    // The chosen network is at --out, the others beside it; all load.
    let chosen = file::load(&out).unwrap();
    assert!(chosen.header.relus <= 8000);
    assert_eq!(chosen.header.relus, run["chosen_relus"].as_u64().unwrap());
    let extra: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.starts_with("p.safetensors.") && n.ends_with(".safetensors")
        })
        .collect();
    assert_eq!(extra.len(), 14);
    for e in extra {
        file::load(&e.path()).unwrap();
    }
}

#[test]
fn cli_deepreshape_builds_a_hybrenet_with_channel_group_relus() {
    let dir = tempfile::tempdir().unwrap();
    common::write_cifar10(dir.path(), 10, 10, 17);
    let out = dir.path().join("h.safetensors");
    let mut args = base_args(dir.path(), &out, "deepreshape", "4000");
    // HRN-2x5x3x with m = 4: S1 culled, the rest thinned (13,056), ReLUs on
    // a quarter of the channels: 3,264.
    for (i, v) in args.iter_mut().enumerate() {
        if v == "resnet18" {
            *v = "hrn-2x5x3x".into();
        }
        if v == "0.0625" && i > 0 {
            *v = "1".into();
        }
    }
    args.extend(["--base-channels", "4"].iter().map(|s| s.to_string()));
    let o = piprune().args(&args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let loaded = file::load(&out).unwrap();
    assert_eq!(loaded.header.relus, 3_264);
    assert_eq!(loaded.header.name, "hrn-2x5x3x-m4");
    let site = loaded.network.site("layer2.0.relu1").unwrap();
    // 8 channels, 16×16: ReLUs on the last 2 channels only.
    assert_eq!(site.relu_count(), 2 * 16 * 16);
    assert!(site.mask[..6 * 256].iter().all(|&m| m == 0));
}

#[test]
fn cli_snl_on_tiny_imagenet_folders() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny(dir.path(), 4, 5, 8, 19);
    let out = dir.path().join("t.safetensors");
    let mut args = base_args(dir.path(), &out, "snl", "20000");
    for v in args.iter_mut() {
        if v == "cifar10" {
            *v = "tiny-imagenet".into();
        }
    }
    args.extend(
        [
            "--search-epochs",
            "12",
            "--lambda",
            "1e-3",
            "--lambda-growth",
            "4",
            "--alpha-lr",
            "0.5",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let o = piprune().args(&args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let loaded = file::load(&out).unwrap();
    assert_eq!(loaded.header.relus, 20_000);
    assert_eq!(loaded.header.input.h, 64);
    assert_eq!(loaded.header.num_classes, 200);
    assert_eq!(loaded.header.dataset.as_deref(), Some("tinyimagenet"));
}
