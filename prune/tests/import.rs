//! Importing SNL, AutoReP and ReLUPruner checkpoints gives the logits their
//! own PyTorch code computes.
//!
//! These checkpoints are written in the exact `torch.save` layout by `pibench_models::import::pth::write_pth`
//! (zip archive, protocol-2 pickle with `_rebuild_tensor_v2` and persistent
//! storage ids, one storage entry per tensor), and "PyTorch's" logits are
//! computed by a libtorch transcription of each paper's forward pass
//! (`ResNet_IN` with `LearnableAlpha`, AutoReP's `ReLU_masked_dapa_relay`
//! with `x2act_auto`, ReLUPruner's `masked_relu`) that reads the state dict
//! by its own names. The imported model file must match them to 1e-4.
//! Checkpoints written by PyTorch itself, with PyTorch's logits, are tested
//! in `models/tests/import.rs` (`torch_saved_*`).

mod common;

use std::collections::HashMap;

use pibench_models::arch::{deepreduce::scale_channels, ArchSpec};
use pibench_models::count::Convention;
use pibench_models::graph::{FeatureShape, Init, SiteRole};
use pibench_models::import::pth::{write_pth, Checkpoint, PyValue, TensorData};
use pibench_models::import::schemes::{import_checkpoint, ImportOptions, Scheme};
use pibench_models::reference::forward_float;
use pibench_prune::net::{Net, Weights};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

type Sd = HashMap<String, Tensor>;

fn conv(sd: &Sd, name: &str, x: &Tensor, stride: i64, pad: i64) -> Tensor {
    x.conv2d(
        &sd[&format!("{name}.weight")],
        None::<Tensor>,
        [stride, stride],
        [pad, pad],
        [1, 1],
        1,
    )
}

fn bn(sd: &Sd, name: &str, x: &Tensor) -> Tensor {
    let g = |k: &str| sd[&format!("{name}.{k}")].shallow_clone();
    x.batch_norm(
        Some(g("weight")),
        Some(g("bias")),
        Some(g("running_mean")),
        Some(g("running_var")),
        false,
        0.1,
        1e-5,
        false,
    )
}

/// `ResNet_IN.forward` (no stem ReLU) with `act(k, x)` for the k-th ReLU call
/// and the shortcut module named by `sc`.
fn resnet_forward(
    sd: &Sd,
    blocks: &[usize],
    x: &Tensor,
    act: &dyn Fn(usize, &Tensor) -> Tensor,
    sc: (&str, &str),
) -> Tensor {
    let mut out = bn(sd, "bn1", &conv(sd, "conv1", x, 1, 1));
    let mut k = 0;
    for (s, &n) in blocks.iter().enumerate() {
        for b in 0..n {
            let p = format!("layer{}.{b}", s + 1);
            let stride = if s > 0 && b == 0 { 2 } else { 1 };
            let o = bn(
                sd,
                &format!("{p}.bn1"),
                &conv(sd, &format!("{p}.conv1"), &out, stride, 1),
            );
            let o = act(k, &o);
            k += 1;
            let o = bn(
                sd,
                &format!("{p}.bn2"),
                &conv(sd, &format!("{p}.conv2"), &o, 1, 1),
            );
            let short = if sd.contains_key(&format!("{p}.{}.weight", sc.0)) {
                bn(
                    sd,
                    &format!("{p}.{}", sc.1),
                    &conv(sd, &format!("{p}.{}", sc.0), &out, stride, 0),
                )
            } else {
                out.shallow_clone()
            };
            out = act(k, &(o + short));
            k += 1;
        }
    }
    let pooled = out.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
    pooled.linear(&sd["linear.weight"], Some(&sd["linear.bias"]))
}

fn t(x: &Tensor) -> PyValue {
    let x = x.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    PyValue::Tensor(TensorData::float(
        x.size().iter().map(|&d| d as usize).collect(),
        Vec::<f32>::try_from(&x.flatten(0, -1)).unwrap(),
    ))
}

fn dict(items: Vec<(String, PyValue)>) -> PyValue {
    PyValue::Dict(
        items
            .into_iter()
            .map(|(k, v)| (PyValue::Str(k), v))
            .collect(),
    )
}

/// A trained-looking 1/16-width ResNet-18: random weights, BN statistics from a few passes.
fn source_net() -> (Net, Sd) {
    tch::manual_seed(9);
    let g = scale_channels(&ArchSpec::resnet18(), 0.0625)
        .unwrap()
        .build(FeatureShape::new(3, 32, 32), 10, Init::Zeros)
        .unwrap();
    let net = Net::new(&g, Device::Cpu, Convention::default(), Weights::Fresh).unwrap();
    tch::no_grad(|| {
        for _ in 0..10 {
            let x = Tensor::randn([16, 3, 32, 32], (Kind::Float, Device::Cpu));
            let _ = net.forward_t(&x, true);
        }
    });
    let sd: Sd = net
        .vs
        .variables()
        .into_iter()
        .filter(|(n, _)| !n.starts_with("masks.") && !n.starts_with("poly."))
        .collect();
    (net, sd)
}

fn body_shapes(net: &Net) -> Vec<(String, [i64; 3])> {
    net.sites
        .iter()
        .filter(|s| s.role == SiteRole::Body)
        .map(|s| (s.name.clone(), s.shape))
        .collect()
}

fn random_masks(shapes: &[(String, [i64; 3])], seed: u64) -> Vec<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    shapes
        .iter()
        .map(|(_, s)| {
            let n = (s[0] * s[1] * s[2]) as usize;
            let v: Vec<f32> = (0..n)
                .map(|_| f32::from(u8::from(rng.gen_bool(0.5))))
                .collect();
            Tensor::from_slice(&v).view(*s)
        })
        .collect()
}

fn compare(bytes: &[u8], scheme: ImportOptions, reference: &dyn Fn(&Tensor) -> Tensor) {
    let ck = Checkpoint::from_bytes(bytes, "ckpt.pth").unwrap();
    let spec = scale_channels(&ArchSpec::resnet18(), 0.0625).unwrap();
    let imp = import_checkpoint(&ck, &spec, FeatureShape::new(3, 32, 32), 10, &scheme).unwrap();
    let x = Tensor::randn([3, 3, 32, 32], (Kind::Float, Device::Cpu));
    let torch = tch::no_grad(|| reference(&x));
    for i in 0..3 {
        let want = Vec::<f32>::try_from(&torch.get(i)).unwrap();
        let input = Vec::<f32>::try_from(&x.get(i).flatten(0, -1)).unwrap();
        let got = forward_float(&imp.network, &input).unwrap();
        assert!(want.iter().all(|v| v.is_finite()), "{want:?}");
        let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs() as f64));
        for (a, b) in want.iter().zip(&got) {
            assert!(
                (*a as f64 - b).abs() <= 1e-4 * scale,
                "{:?}: PyTorch {want:?} vs imported {got:?}",
                scheme.scheme
            );
        }
    }
}

#[test]
fn snl_checkpoint_logits() {
    tch::set_num_threads(1);
    let (net, sd) = source_net();
    let shapes = body_shapes(&net);
    let masks = random_masks(&shapes, 1);
    let mut items: Vec<(String, PyValue)> = sd.iter().map(|(n, v)| (n.clone(), t(v))).collect();
    for ((name, s), m) in shapes.iter().zip(&masks) {
        let (p, k) = name.rsplit_once(".relu").unwrap();
        items.push((
            format!("{p}.alpha{k}.alphas"),
            t(&m.view([1, s[0], s[1], s[2]])),
        ));
    }
    let root = dict(vec![
        ("arch".into(), PyValue::Str("resnet18_in".into())),
        ("state_dict".into(), dict(items)),
    ]);
    let bytes = write_pth(&root, "snl_best_checkpoint").unwrap();
    // LearnableAlpha: relu(x)·α + (1 − α)·x.
    let act = |k: usize, x: &Tensor| x.relu() * &masks[k] + (1.0 - &masks[k]) * x;
    compare(&bytes, ImportOptions::new(Scheme::Snl), &|x| {
        resnet_forward(&sd, &[2, 2, 2, 2], x, &act, ("shortcut.0", "shortcut.1"))
    });
}

#[test]
fn autorep_checkpoint_logits() {
    tch::set_num_threads(1);
    let (net, sd) = source_net();
    let shapes = body_shapes(&net);
    let masks = random_masks(&shapes, 2);
    let scale_x2 = 0.1f64;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let paras: Vec<[Tensor; 3]> = shapes
        .iter()
        .map(|(_, s)| {
            let c = s[0];
            let mut r = |lo: f32, hi: f32| {
                let v: Vec<f32> = (0..c).map(|_| rng.gen_range(lo..hi)).collect();
                Tensor::from_slice(&v).view([1, c, 1, 1])
            };
            [r(0.0, 0.1), r(0.4, 1.0), r(0.0, 0.1)]
        })
        .collect();
    let mut items: Vec<(String, PyValue)> = sd
        .iter()
        .map(|(n, v)| (format!("model.{n}"), t(v)))
        .collect();
    for path in ["model.layer1.0.relu", "model.layer3.1.relu"] {
        for (i, m) in masks.iter().enumerate() {
            items.push((format!("{path}.alpha_aux_{i}_0"), t(&(m - 0.5))));
            items.push((format!("{path}.alpha_mask_{i}_0"), t(m)));
            for (k, p) in paras[i].iter().enumerate() {
                items.push((format!("{path}.poly_para_{i}_{k}"), t(p)));
            }
        }
    }
    let bytes = write_pth(
        &dict(vec![
            ("state_dict".into(), dict(items)),
            ("epoch".into(), PyValue::Int(150)),
        ]),
        "checkpoint",
    )
    .unwrap();
    // out = relu(x)·m + x2act_auto(x)·(1 − m), x2act = scale_x2·p2·x² + p1·x + p0.
    let act = |k: usize, x: &Tensor| {
        let [p0, p1, p2] = &paras[k];
        let poly = x * x * p2 * scale_x2 + x * p1 + p0;
        x.relu() * &masks[k] + poly * (1.0 - &masks[k])
    };
    let mut opts = ImportOptions::new(Scheme::Autorep);
    opts.autorep_scale_x2 = scale_x2 as f32;
    compare(&bytes, opts, &|x| {
        resnet_forward(&sd, &[2, 2, 2, 2], x, &act, ("shortcut.0", "shortcut.1"))
    });
}

#[test]
fn relupruner_checkpoint_logits() {
    tch::set_num_threads(1);
    let (net, sd) = source_net();
    let shapes = body_shapes(&net);
    let masks = random_masks(&shapes, 4);
    let renamed: Sd = sd
        .iter()
        .map(|(n, v)| {
            (
                n.replace(".shortcut.0.", ".conv_sc.")
                    .replace(".shortcut.1.", ".bn_sc."),
                v.shallow_clone(),
            )
        })
        .collect();
    let count: f64 = masks
        .iter()
        .map(|m| m.sum(Kind::Float).double_value(&[]))
        .sum();
    let root = dict(vec![
        ("format_version".into(), PyValue::Int(1)),
        (
            "model".into(),
            dict(renamed.iter().map(|(n, v)| (n.clone(), t(v))).collect()),
        ),
        ("masks".into(), PyValue::List(masks.iter().map(t).collect())),
        ("relu_count".into(), PyValue::Int(count as i64)),
    ]);
    let bytes = write_pth(&root, "ckpt").unwrap();
    // masked_relu: relu(a·m) + a·(1 − m).
    let act = |k: usize, x: &Tensor| (x * &masks[k]).relu() + x * (1.0 - &masks[k]);
    compare(&bytes, ImportOptions::new(Scheme::Relupruner), &|x| {
        resnet_forward(&renamed, &[2, 2, 2, 2], x, &act, ("conv_sc", "bn_sc"))
    });
}

#[test]
fn a_pytorch_teacher_checkpoint_serves_as_teacher() {
    let dir = tempfile::tempdir().unwrap();
    common::write_cifar10(dir.path(), 10, 10, 31);
    let (_, sd) = source_net();
    let root = dict(vec![(
        "state_dict".into(),
        dict(sd.iter().map(|(n, v)| (n.clone(), t(v))).collect()),
    )]);
    let teacher = dir.path().join("teacher.pth.tar");
    std::fs::write(&teacher, write_pth(&root, "teacher").unwrap()).unwrap();
    let out = dir.path().join("d.safetensors");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_piprune"))
        .args([
            "--method",
            "deepreduce",
            "--model",
            "resnet18",
            "--dataset",
            "cifar10",
            "--data",
            dir.path().to_str().unwrap(),
            "--budget",
            "15000",
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
            "--criticality-order",
            "1,4,2,3",
            "--teacher",
            teacher.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        !stderr.contains("teacher epoch"),
        "the teacher was trained: {stderr}"
    );
    assert_eq!(
        pibench_models::file::load(&out).unwrap().header.relus,
        14_336
    );
}
