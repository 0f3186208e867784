//! Training, the method pipelines, export and the command line on synthetic
//! CIFAR data (CPU, 1/16-width networks).

mod common;

use std::path::Path;
use std::process::Command;

use pibench_models::count::Convention;
use pibench_models::file;
use pibench_models::reference;
use pibench_prune::data::{Dataset, DatasetKind, Preprocess, Split};
use pibench_prune::export;
use pibench_prune::methods::deepreduce::SpecFactory;
use pibench_prune::methods::{self, Context};
use pibench_prune::net::{Net, Weights};
use pibench_prune::train::{
    KdConfig, NoHooks, OptimizerKind, RunLog, Schedule, TrainConfig, TrainError, Trainer,
};
use tch::Device;

/// ResNet-18 at 1/16 width: channels 4, 8, 16, 32.
const WIDTH: f64 = 0.0625;

fn factory(convention: Convention) -> SpecFactory {
    SpecFactory {
        model: "resnet18".into(),
        base_channels: None,
        width: WIDTH,
        native: DatasetKind::Cifar10.input(),
        classes: 10,
        convention,
    }
}

fn config(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 50,
        lr: 0.05,
        momentum: 0.9,
        nesterov: true,
        weight_decay: 5e-4,
        optimizer: OptimizerKind::Sgd,
        schedule: Schedule::Cosine,
        max_steps: None,
        amp: false,
        seed: 1,
        method_lr: None,
    }
}

fn trainer<'a>(
    train: &'a Split,
    val: &'a Split,
    test: &'a Split,
    log: &'a mut RunLog,
) -> Trainer<'a> {
    Trainer {
        train,
        val,
        test,
        pre: Preprocess::new(DatasetKind::Cifar10, 32, Device::Cpu),
        log,
        checkpoints: None,
        progress: false,
        interrupt_after: None,
        epochs_run: 0,
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

fn with(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn run_ok(args: &[String]) -> (String, String) {
    let o = piprune().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{stderr}");
    (String::from_utf8_lossy(&o.stdout).to_string(), stderr)
}

/// The models crate's float reference reproduces libtorch's logits to 1e-4
/// of the largest logit. Both compute in f64 here (the net is converted after
/// its export, so the exported f32 weights are the ones both run): in f32,
/// each x² site doubles libtorch's relative rounding error along a path, and
/// a short AutoReP finetune can leave logits near 1e21 (one f32 run on
/// 2026-12-07 differed by 1.8e-4 there).
fn check_float_reference(
    what: &str,
    net: &mut Net,
    model: &pibench_models::graph::Network,
    split: &Split,
) {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let pre = Preprocess::new(DatasetKind::Cifar10, net.input().h as i64, Device::Cpu);
    let n = 4.min(split.len() as i64);
    let x = pre.apply(&split.images.narrow(0, 0, n), false, &mut rng);
    net.vs.double();
    let torch = export::torch_logits(net, &x.to_kind(tch::Kind::Double));
    for (i, t) in torch.iter().enumerate() {
        let input = Vec::<f32>::try_from(&x.get(i as i64).flatten(0, -1)).unwrap();
        let float = reference::forward_float(model, &input).unwrap();
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
fn small_resnet_training_reduces_the_loss_and_amp_runs_on_cpu() {
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let dir = tempfile::tempdir().unwrap();
    common::write_cifar10(dir.path(), 40, 50, 11);
    let ds = Dataset::load(DatasetKind::Cifar10, dir.path()).unwrap();
    let (train, val) = ds.train.split_validation(20, 0);
    let base = factory(Convention::default()).base().unwrap();
    for amp in [false, true] {
        let mut net = Net::new(&base, Device::Cpu, Convention::default(), Weights::Fresh).unwrap();
        let mut log = RunLog::default();
        let mut t = trainer(&train, &val, &ds.test, &mut log);
        let mut cfg = config(4);
        cfg.amp = amp;
        let r = t
            .run_phase(
                "teacher",
                &mut net,
                None,
                KdConfig::default(),
                &cfg,
                &mut NoHooks,
            )
            .unwrap();
        let losses: Vec<f64> = log.epochs.iter().map(|e| e.train_loss).collect();
        assert_eq!(losses.len(), 4);
        assert!(losses.iter().all(|l| l.is_finite()));
        assert!(
            losses[3] < losses[0],
            "amp {amp}: loss did not fall: {losses:?}"
        );
        assert!((0.0..=1.0).contains(&r.val_acc) && (0.0..=1.0).contains(&r.test_acc));
    }
}

#[test]
fn a_partial_phase_resumes_with_its_optimizer_state() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    common::write_cifar10(dir.path(), 20, 10, 21);
    let ds = Dataset::load(DatasetKind::Cifar10, dir.path()).unwrap();
    let (train, val) = ds.train.split_validation(10, 0);
    let base = factory(Convention::default()).base().unwrap();
    let run = |ckdir: Option<&Path>, interrupt: Option<usize>, resume: bool| {
        tch::manual_seed(0);
        let mut net = Net::new(&base, Device::Cpu, Convention::default(), Weights::Fresh).unwrap();
        let mut log = RunLog::default();
        let mut t = trainer(&train, &val, &ds.test, &mut log);
        t.checkpoints = ckdir.map(|d| pibench_prune::train::Checkpoints {
            dir: d.to_path_buf(),
            resume,
        });
        t.interrupt_after = interrupt;
        let mut cfg = config(3);
        cfg.optimizer = OptimizerKind::Adam;
        let r = t.run_phase(
            "teacher",
            &mut net,
            None,
            KdConfig::default(),
            &cfg,
            &mut NoHooks,
        );
        (r, net.to_graph().unwrap())
    };
    let (full, g_full) = run(None, None, false);
    full.unwrap();
    let ck = dir.path().join("ck");
    let (first, _) = run(Some(&ck), Some(2), false);
    assert!(
        matches!(first, Err(TrainError::Interrupted { epochs: 2, .. })),
        "{first:?}"
    );
    let (second, g_resumed) = run(Some(&ck), None, true);
    second.unwrap();
    assert_eq!(
        g_resumed, g_full,
        "resuming epoch 3 with the saved Adam state reproduces the run"
    );
}

#[test]
fn every_method_reaches_its_budget_exactly_and_exports() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    common::write_cifar10(dir.path(), 20, 20, 12);
    let ds = Dataset::load(DatasetKind::Cifar10, dir.path()).unwrap();
    let (train, val) = ds.train.split_validation(20, 0);
    let budget = 3_210;
    for method in ["snl", "autorep", "relupruner", "privshap"] {
        tch::manual_seed(0);
        let convention = match method {
            "snl" | "autorep" => Convention {
                stem_relu: false,
                final_relu: false,
            },
            "relupruner" => Convention {
                stem_relu: false,
                final_relu: true,
            },
            _ => Convention::default(),
        };
        let f = factory(convention);
        let base = f.base().unwrap();
        let mut log = RunLog::default();
        let mut ctx = Context {
            trainer: trainer(&train, &val, &ds.test, &mut log),
            // Small batches: enough steps for calibrated batch-norm statistics.
            train: TrainConfig {
                batch_size: 10,
                ..config(3)
            },
            kd: KdConfig::default(),
            device: Device::Cpu,
            dataset: DatasetKind::Cifar10,
            teacher: None,
            convention,
        };
        let mut p = match method {
            "snl" => {
                let mut cfg = methods::snl::SnlConfig::published(budget, 0);
                cfg.lambda = 1e-3;
                cfg.lambda_growth = 4.0;
                cfg.schedule = methods::snl::LambdaSchedule::Grow;
                cfg.select = methods::snl::Select::TopN;
                let mut search = methods::snl::search_config(&config(1), 3, 0.01);
                search.method_lr = Some(0.5);
                let run = methods::SnlRun {
                    snl: cfg,
                    search,
                    finetune: methods::snl::finetune_config(&config(1), 1, 1e-3),
                };
                methods::run_snl(&mut ctx, &base, &run).unwrap()
            }
            "autorep" => {
                let replace = TrainConfig {
                    epochs: 2,
                    batch_size: 10,
                    lr: 1e-4,
                    optimizer: OptimizerKind::Adam,
                    weight_decay: 0.0,
                    method_lr: Some(0.3),
                    ..config(2)
                };
                let run = methods::AutorepRun {
                    cfg: methods::autorep::AutorepConfig {
                        budget,
                        threshold: 0.003,
                        mu: 10.0,
                        poly: 2,
                        dapa_iterations: 500,
                        dapa_every: 1,
                        var_min: 0.04,
                        seed: 0,
                    },
                    finetune: TrainConfig {
                        epochs: 1,
                        method_lr: None,
                        ..replace.clone()
                    },
                    replace,
                };
                methods::run_autorep(&mut ctx, &base, &run).unwrap()
            }
            "relupruner" => {
                let run = methods::ReluprunerRun {
                    cfg: methods::relupruner::ReluprunerConfig {
                        budget,
                        taylor_order: 2,
                        layer_weight: true,
                        ema: 0.9,
                        window: 10,
                        warmup: 1,
                        target_fraction: 0.6,
                        interval: 1,
                        epochs: 3,
                    },
                    prune: config(3),
                    finetune: config(1),
                    beta: 1000.0,
                };
                methods::run_relupruner(&mut ctx, &base, &run).unwrap()
            }
            _ => {
                let run = methods::PrivshapRun {
                    budget,
                    estimator: methods::privshap::Estimator::Tree,
                    threshold: 0.9,
                    mc_samples: 3,
                    compare: true,
                    prune: TrainConfig {
                        optimizer: OptimizerKind::Adam,
                        lr: 1e-3,
                        ..config(1)
                    },
                    finetune: config(1),
                    seed: 0,
                };
                methods::run_privshap(&mut ctx, &base, &run).unwrap()
            }
        };
        drop(ctx);
        assert_eq!(p.net.relu_count(), budget, "{method}");
        let out = dir.path().join(format!("{method}.safetensors"));
        assert_eq!(
            export::save(&p.net, "cifar10", &out).unwrap(),
            budget as u64,
            "{method}"
        );
        let loaded = file::load(&out).unwrap();
        assert_eq!(loaded.header.relus, budget as u64);
        assert_eq!(loaded.header.convention, convention);
        if method == "autorep" {
            let polys = loaded.network.sites().filter(|s| s.poly.is_some()).count();
            assert!(polys > 0, "AutoReP exports polynomial sites");
            assert!(loaded
                .network
                .sites()
                .filter(|s| s.poly.is_some())
                .all(|s| s.poly.as_ref().unwrap().a2.iter().any(|&v| v != 0.0)));
        }
        check_float_reference(method, &mut p.net, &loaded.network, &ds.test);
        assert!(!log.results.is_empty());
    }
}

#[test]
fn cli_snl_follows_the_paper_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    common::write_cifar10(dir.path(), 20, 20, 13);
    let out = dir.path().join("m.safetensors");
    let args = with(
        base_args(dir.path(), &out, "snl", "3000"),
        &[
            "--search-epochs",
            "3",
            "--lambda",
            "1e-2",
            "--search-lr",
            "0.01",
            "--alpha-lr",
            "0.5",
        ],
    );
    let (stdout, stderr) = run_ok(&args);
    let loaded = file::load(&out).unwrap();
    assert!(loaded.header.relus <= 3000, "{stdout}");
    assert!(!loaded.header.convention.stem_relu);
    // Export calibrates the bounds on training images (issue 12): all 100
    // training images (fewer than the default 1000), margin 1 bit.
    let bounds = loaded.header.bounds.as_ref().expect("calibrated at export");
    assert_eq!(bounds.images, 100, "{stderr}");
    assert_eq!(bounds.margin_bits, 1);
    assert!(!bounds.points.is_empty());
    assert!(
        bounds.source.contains("at export by piprune"),
        "{}",
        bounds.source
    );
    assert!(stderr.contains("calibrated bounds stored"), "{stderr}");
    assert_eq!(
        loaded.network.sites().next().unwrap().relu_count(),
        0,
        "no stem ReLU in SNL's network"
    );
    let log: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("m.safetensors.log.json")).unwrap(),
    )
    .unwrap();
    let res = log["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["method"] == "snl")
        .unwrap()
        .clone();
    if res["search_reached_budget"] == false {
        assert_eq!(res["fallback_top_n"], true);
        assert!(stderr.contains("fallback"), "{stderr}");
        assert_eq!(loaded.header.relus, 3000);
    }
    // Resume: every phase is restored from its checkpoint, nothing retrains.
    let (_, stderr) = run_ok(&with(args.clone(), &["--resume"]));
    assert!(stderr.contains("restored finished checkpoint"), "{stderr}");
    assert!(!stderr.contains("epoch 1/"), "{stderr}");
    // Exactly N with --snl-select top-n.
    let out2 = dir.path().join("n.safetensors");
    let args = with(
        base_args(dir.path(), &out2, "snl", "2500"),
        &[
            "--search-epochs",
            "2",
            "--snl-select",
            "top-n",
            "--teacher",
            dir.path()
                .join("m.safetensors.ckpt")
                .join("teacher.safetensors")
                .to_str()
                .unwrap(),
        ],
    );
    let (stdout, _) = run_ok(&args);
    assert!(
        stdout.contains("2500 ReLUs (budget 2500 met exactly)"),
        "{stdout}"
    );
}

#[test]
fn cli_methods_of_issue_14_meet_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    common::write_cifar10(dir.path(), 10, 10, 23);
    for (method, extra) in [
        (
            "autorep",
            vec!["--replace-epochs", "1", "--indicator-lr", "0.05"],
        ),
        (
            "relupruner",
            vec![
                "--prune-epochs",
                "2",
                "--warmup-epochs",
                "1",
                "--mask-update-interval",
                "1",
            ],
        ),
        (
            "privshap",
            vec!["--prune-epochs", "1", "--shapley-threshold", "0.9"],
        ),
    ] {
        let out = dir.path().join(format!("{method}.safetensors"));
        let args = with(base_args(dir.path(), &out, method, "2000"), &extra);
        let (stdout, _) = run_ok(&args);
        assert!(
            stdout.contains("2000 ReLUs (budget 2000 met exactly)"),
            "{method}: {stdout}"
        );
        assert_eq!(file::load(&out).unwrap().header.relus, 2000);
    }
}

#[test]
fn cli_deepreduce_picks_the_nearest_candidate_and_resumes_a_partial_run() {
    let dir = tempfile::tempdir().unwrap();
    common::write_cifar10(dir.path(), 10, 10, 14);
    let out = dir.path().join("d.safetensors");
    // Culling S1 (+ stem) of the 1/16-width ResNet-18 leaves 14,336 ReLUs.
    let two_epochs = |mut a: Vec<String>| {
        let i = a.iter().position(|x| x == "--epochs").unwrap();
        a[i + 1] = "2".into();
        a
    };
    let args = two_epochs(with(
        base_args(dir.path(), &out, "deepreduce", "15000"),
        &["--criticality-order", "1,4,2,3"],
    ));
    let (stdout, _) = run_ok(&args);
    assert!(stdout.contains("nearest achievable"), "{stdout}");
    let whole = std::fs::read(&out).unwrap();
    assert_eq!(file::load(&out).unwrap().header.relus, 14_336);
    // Interrupted after one epoch (the teacher's first), then resumed: the same model.
    let out2 = dir.path().join("e.safetensors");
    let args = two_epochs(with(
        base_args(dir.path(), &out2, "deepreduce", "15000"),
        &["--criticality-order", "1,4,2,3"],
    ));
    let o = piprune()
        .args(with(args.clone(), &["--interrupt-after", "1"]))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("interrupted"));
    let (_, stderr) = run_ok(&with(args, &["--resume"]));
    assert!(stderr.contains("resuming at epoch 1"), "{stderr}");
    assert_eq!(
        std::fs::read(&out2).unwrap(),
        whole,
        "resumed run differs from the uninterrupted one"
    );
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
    // SNL does not count the stem: 34,816 − 4,096 = 30,720.
    let err = run(base_args(dir.path(), &out, "snl", "30721"));
    assert!(err.contains("30720 ReLUs"), "{err}");
    let err = run(base_args(dir.path(), &out, "deepreduce", "34817"));
    assert!(err.contains("34816 ReLUs"), "{err}");
    let err = run(base_args(dir.path(), &out, "magic", "100"));
    assert!(err.contains("invalid value 'magic'"), "{err}");
    let err = run(base_args(dir.path(), &out, "deepreduce", "10"));
    assert!(err.contains("smallest achievable"), "{err}");
    let mut bad_model = base_args(dir.path(), &out, "snl", "100");
    bad_model[3] = "resnet152".into();
    let err = run(bad_model);
    assert!(err.contains("unknown architecture"), "{err}");
    let missing = dir.path().join("nowhere");
    let err = run(base_args(&missing, &out, "snl", "100"));
    assert!(err.contains("missing"), "{err}");
    let f = dir.path().join("cifar-10-batches-bin/data_batch_2.bin");
    std::fs::write(&f, vec![0u8; 100]).unwrap();
    let err = run(base_args(dir.path(), &out, "snl", "100"));
    assert!(
        err.contains("not a positive multiple of the 3073-byte record size"),
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
    let args = with(
        base_args(dir.path(), &out, "deepreduce", "8000"),
        &["--pareto"],
    );
    run_ok(&args);
    let log: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("p.safetensors.log.json")).unwrap(),
    )
    .unwrap();
    let results = log["results"].as_array().unwrap();
    let crit = results
        .iter()
        .find(|r| r.get("criticality").is_some())
        .unwrap();
    assert_eq!(
        crit["criticality"]["order_least_to_most"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    let run = results
        .iter()
        .find(|r| r.get("pareto_on_validation").is_some())
        .unwrap();
    assert_eq!(run["trained"].as_array().unwrap().len(), 18);
    assert!(!run["pareto_on_validation"].as_array().unwrap().is_empty());
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
    assert_eq!(extra.len(), 17);
    for e in extra {
        file::load(&e.path()).unwrap();
    }
}

#[test]
fn cli_deepreshape_builds_a_hybrenet_with_relu_reuse() {
    let dir = tempfile::tempdir().unwrap();
    common::write_cifar10(dir.path(), 10, 10, 17);
    let out = dir.path().join("h.safetensors");
    let mut args = base_args(dir.path(), &out, "deepreshape", "4000");
    // HRN-2x5x3x with m = 4: S1 culled, the rest thinned (13,056), then
    // ReLU-reuse ×4 in S2–S4 (ReLUs on a quarter of the channels): 3,264.
    for (i, v) in args.iter_mut().enumerate() {
        if v == "resnet18" {
            *v = "hrn-2x5x3x".into();
        }
        if v == "0.0625" && i > 0 {
            *v = "1".into();
        }
    }
    args.extend(["--base-channels", "4"].iter().map(|s| s.to_string()));
    run_ok(&args);
    let loaded = file::load(&out).unwrap();
    assert_eq!(loaded.header.relus, 3_264);
    assert_eq!(loaded.header.name, "hrn-2x5x3x-m4-re4s234");
    let site = loaded.network.site("layer2.0.relu1").unwrap();
    // The ReLU group of the 8 channels at 16×16: 2 channels, all ReLUs.
    assert_eq!(site.shape.c, 2);
    assert_eq!(site.relu_count(), 2 * 16 * 16);
    assert!(loaded
        .network
        .nodes
        .iter()
        .any(|n| n.name == "layer2.0.reuse.cat"));
}

#[test]
fn cli_trains_every_architecture_models_knows() {
    let dir = tempfile::tempdir().unwrap();
    common::write_cifar10(dir.path(), 4, 4, 20);
    for model in ["resnet34", "wrn22_8", "vgg16"] {
        let out = dir.path().join(format!("{model}.safetensors"));
        let mut args = base_args(dir.path(), &out, "snl", "500");
        args[3] = model.into();
        let (stdout, _) = run_ok(&with(
            args,
            &["--search-epochs", "1", "--snl-select", "top-n"],
        ));
        assert!(
            stdout.contains("500 ReLUs (budget 500 met exactly)"),
            "{model}: {stdout}"
        );
        let loaded = file::load(&out).unwrap();
        assert_eq!(loaded.header.relus, 500);
    }
}

#[test]
fn cli_snl_on_tiny_imagenet_folders() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny(dir.path(), 4, 5, 8, 19);
    let out = dir.path().join("t.safetensors");
    let mut args = with(
        base_args(dir.path(), &out, "snl", "20000"),
        &["--search-epochs", "2", "--snl-select", "top-n"],
    );
    for v in args.iter_mut() {
        if v == "cifar10" {
            *v = "tiny-imagenet".into();
        }
    }
    run_ok(&args);
    let loaded = file::load(&out).unwrap();
    assert_eq!(loaded.header.relus, 20_000);
    assert_eq!(loaded.header.input.h, 64);
    assert_eq!(loaded.header.num_classes, 200);
    assert_eq!(loaded.header.dataset.as_deref(), Some("tinyimagenet"));
}
