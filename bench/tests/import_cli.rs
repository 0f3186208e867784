//! `pibench import`: a checkpoint in SNL's layout (written by
//! `pibench_models::import::pth::write_pth`, the `torch.save` format) becomes
//! a model file; stray tensors and missing masks are refused.

use std::process::Command;

use pibench_models::arch::ArchSpec;
use pibench_models::file;
use pibench_models::graph::{FeatureShape, Init, Op, SiteRole};
use pibench_models::import::pth::{write_pth, PyValue, TensorData};
use rand::{Rng, SeedableRng};

fn t(shape: Vec<usize>, data: Vec<f32>) -> PyValue {
    PyValue::Tensor(TensorData::float(shape, data))
}

fn checkpoint(stray: bool, drop_mask: bool) -> (Vec<u8>, pibench_models::graph::Network) {
    let spec = ArchSpec::parse("hrn-2x5x3x-m4").unwrap();
    let mut net = spec
        .build(FeatureShape::new(3, 32, 32), 10, Init::Seeded(1))
        .unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    for s in net.sites_mut() {
        if s.role == SiteRole::Body {
            s.mask
                .iter_mut()
                .for_each(|m| *m = u8::from(rng.gen_bool(0.3)));
        } else {
            s.fill_mask(0);
        }
    }
    let mut sd: Vec<(PyValue, PyValue)> = Vec::new();
    let mut put = |k: String, v: PyValue| sd.push((PyValue::Str(k), v));
    for node in &net.nodes {
        match &node.op {
            Op::Conv2d(c) => {
                put(
                    format!("{}.weight", node.name),
                    t(c.weight.shape.clone(), c.weight.data.clone()),
                );
                if let Some(b) = &c.bn {
                    let n = b.channels();
                    put(format!("{}.weight", b.name), t(vec![n], b.gamma.clone()));
                    put(format!("{}.bias", b.name), t(vec![n], b.beta.clone()));
                    put(
                        format!("{}.running_mean", b.name),
                        t(vec![n], b.running_mean.clone()),
                    );
                    put(
                        format!("{}.running_var", b.name),
                        t(vec![n], b.running_var.clone()),
                    );
                }
            }
            Op::Linear(l) => {
                put(
                    format!("{}.weight", node.name),
                    t(l.weight.shape.clone(), l.weight.data.clone()),
                );
                put(
                    format!("{}.bias", node.name),
                    t(vec![l.bias.len()], l.bias.clone()),
                );
            }
            _ => {}
        }
    }
    for s in net.sites().filter(|s| s.role == SiteRole::Body) {
        if drop_mask && s.name == "layer2.1.relu1" {
            continue;
        }
        let (p, k) = s.name.rsplit_once(".relu").unwrap();
        let sh = s.shape;
        put(
            format!("{p}.alpha{k}.alphas"),
            t(
                vec![1, sh.c, sh.h, sh.w],
                s.mask.iter().map(|&m| m as f32).collect(),
            ),
        );
    }
    if stray {
        put(
            "layer1.0.gate.weight".into(),
            t(vec![3], vec![1.0, 2.0, 3.0]),
        );
    }
    let root = PyValue::Dict(vec![(PyValue::Str("state_dict".into()), PyValue::Dict(sd))]);
    (write_pth(&root, "snl_best_checkpoint").unwrap(), net)
}

fn pibench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pibench"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn snl_checkpoint_imports_and_strays_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, net) = checkpoint(false, false);
    let ck = dir.path().join("snl.pth.tar");
    std::fs::write(&ck, bytes).unwrap();
    let out = dir.path().join("m.safetensors");
    let base = |ck: &std::path::Path, out: &std::path::Path| {
        vec![
            "import".to_string(),
            "--from".into(),
            "snl".into(),
            ck.display().to_string(),
            "--model".into(),
            "hrn-2x5x3x-m4".into(),
            "--dataset".into(),
            "cifar10".into(),
            "--out".into(),
            out.display().to_string(),
        ]
    };
    let args = base(&ck, &out);
    let o = pibench(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let loaded = file::load(&out).unwrap();
    let want: u64 = net.sites().map(|s| s.relu_count()).sum();
    assert_eq!(loaded.header.relus, want);
    assert_eq!(loaded.network.nodes, net.nodes);

    let (bytes, _) = checkpoint(true, false);
    std::fs::write(&ck, bytes).unwrap();
    let o = pibench(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("layer1.0.gate.weight") && err.contains("--ignore-unknown"),
        "{err}"
    );
    let mut ignore = args.clone();
    ignore.push("--ignore-unknown".into());
    let o = pibench(&ignore.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let (bytes, _) = checkpoint(false, true);
    std::fs::write(&ck, bytes).unwrap();
    let o = pibench(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no ReLU mask for site layer2.1.relu1"),
        "{err}"
    );
}
