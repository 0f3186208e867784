//! PyTorch checkpoint import (feature `pth`): the zip+pickle reader and the
//! SNL / AutoReP / ReLUPruner naming schemes, on checkpoints written by
//! `pth::write_pth` in the exact `torch.save` layout, and on checkpoints written
//! by PyTorch itself (`tests/vectors/generate_checkpoints.py`).

use pibench_models::arch::{deepreduce::scale_channels, ArchSpec};
use pibench_models::graph::{FeatureShape, Init, Network, Op, SiteRole};
use pibench_models::import::pth::{write_pth, Checkpoint, PyValue, StorageKind, TensorData};
use pibench_models::import::schemes::{import_checkpoint, ImportOptions, Scheme};
use pibench_models::import::ImportError;
use pibench_models::reference::forward_float;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const CIFAR: FeatureShape = FeatureShape::new(3, 32, 32);

fn tiny(spec: ArchSpec) -> ArchSpec {
    scale_channels(&spec, 0.0625).unwrap()
}

fn s(x: &str) -> PyValue {
    PyValue::Str(x.into())
}

fn t(shape: Vec<usize>, data: Vec<f32>) -> PyValue {
    PyValue::Tensor(TensorData::float(shape, data))
}

/// The network's weights as a PyTorch state dict (module names of `models::arch`).
fn weights(net: &Network) -> Vec<(String, PyValue)> {
    let mut out = Vec::new();
    let bn = |out: &mut Vec<(String, PyValue)>, b: &pibench_models::graph::BatchNorm| {
        let c = b.channels();
        out.push((format!("{}.weight", b.name), t(vec![c], b.gamma.clone())));
        out.push((format!("{}.bias", b.name), t(vec![c], b.beta.clone())));
        out.push((
            format!("{}.running_mean", b.name),
            t(vec![c], b.running_mean.clone()),
        ));
        out.push((
            format!("{}.running_var", b.name),
            t(vec![c], b.running_var.clone()),
        ));
        out.push((
            format!("{}.num_batches_tracked", b.name),
            PyValue::Tensor(TensorData {
                kind: StorageKind::Long,
                shape: vec![],
                data: vec![391.0],
            }),
        ));
    };
    for node in &net.nodes {
        match &node.op {
            Op::Conv2d(c) => {
                out.push((
                    format!("{}.weight", node.name),
                    t(c.weight.shape.clone(), c.weight.data.clone()),
                ));
                if let Some(b) = &c.bias {
                    out.push((format!("{}.bias", node.name), t(vec![b.len()], b.clone())));
                }
                if let Some(b) = &c.bn {
                    bn(&mut out, b);
                }
            }
            Op::BatchNorm(b) => bn(&mut out, b),
            Op::Linear(l) => {
                out.push((
                    format!("{}.weight", node.name),
                    t(l.weight.shape.clone(), l.weight.data.clone()),
                ));
                out.push((
                    format!("{}.bias", node.name),
                    t(vec![l.bias.len()], l.bias.clone()),
                ));
            }
            _ => {}
        }
    }
    out
}

fn dict(items: Vec<(String, PyValue)>) -> PyValue {
    PyValue::Dict(items.into_iter().map(|(k, v)| (s(&k), v)).collect())
}

/// A seeded network with random body masks (and the stem/final sites set as
/// the source architecture has them: identity).
fn random_net(spec: &ArchSpec, seed: u64) -> Network {
    let mut net = spec.build(CIFAR, 10, Init::Seeded(seed)).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for site in net.sites_mut() {
        if site.role == SiteRole::Body {
            for m in site.mask.iter_mut() {
                *m = u8::from(rng.gen_bool(0.4));
            }
        } else {
            site.fill_mask(0);
        }
    }
    net
}

fn input(seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..CIFAR.len()).map(|_| rng.gen_range(-2.0..2.0)).collect()
}

fn same_logits(a: &Network, b: &Network) {
    let x = input(3);
    let la = forward_float(a, &x).unwrap();
    let lb = forward_float(b, &x).unwrap();
    assert!(la.iter().all(|v| v.is_finite()), "{la:?}");
    assert_eq!(la, lb);
}

/// Dict entries sorted by key, recursively (candle's reader returns each
/// SETITEMS batch in reverse; names, not positions, identify tensors).
fn sorted(v: &PyValue) -> PyValue {
    match v {
        PyValue::Dict(items) => {
            let mut items: Vec<(PyValue, PyValue)> =
                items.iter().map(|(k, x)| (k.clone(), sorted(x))).collect();
            items.sort_by(|a, b| format!("{:?}", a.0).cmp(&format!("{:?}", b.0)));
            PyValue::Dict(items)
        }
        PyValue::List(x) => PyValue::List(x.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

fn read(bytes: &[u8]) -> Checkpoint {
    Checkpoint::from_bytes(bytes, "test.pth").unwrap()
}

#[test]
fn writer_and_reader_round_trip() {
    let root = dict(vec![
        ("epoch".into(), PyValue::Int(7)),
        ("big".into(), PyValue::Int(-5_000_000_000)),
        ("acc".into(), PyValue::Float(0.731)),
        ("name".into(), s("resnet18")),
        ("flag".into(), PyValue::Bool(true)),
        ("none".into(), PyValue::None),
        ("list".into(), PyValue::List(vec![PyValue::Int(1), s("a")])),
        (
            "w".into(),
            t(vec![2, 3], vec![1.0, -2.0, 3.5, 0.0, 1e-7, -1e30]),
        ),
        (
            "mask".into(),
            PyValue::Tensor(TensorData {
                kind: StorageKind::Bool,
                shape: vec![2, 2],
                data: vec![1.0, 0.0, 0.0, 1.0],
            }),
        ),
        (
            "half".into(),
            PyValue::Tensor(TensorData {
                kind: StorageKind::Half,
                shape: vec![3],
                data: vec![0.5, -2.0, 65504.0],
            }),
        ),
        (
            "nested".into(),
            dict(vec![("x".into(), t(vec![], vec![4.0]))]),
        ),
    ]);
    let bytes = write_pth(&root, "archive").unwrap();
    let back = read(&bytes);
    assert_eq!(sorted(&back.root), sorted(&root));
}

fn snl_checkpoint(net: &Network) -> Vec<u8> {
    let mut sd = weights(net);
    for site in net.sites() {
        if site.role != SiteRole::Body {
            continue;
        }
        let (p, k) = site.name.rsplit_once(".relu").unwrap();
        let c = site.shape;
        sd.push((
            format!("{p}.alpha{k}.alphas"),
            t(
                vec![1, c.c, c.h, c.w],
                site.mask.iter().map(|&m| m as f32).collect(),
            ),
        ));
    }
    let root = dict(vec![
        ("arch".into(), s("resnet18_in")),
        ("state_dict".into(), dict(sd)),
        (
            "optimizer".into(),
            dict(vec![("state".into(), dict(vec![]))]),
        ),
    ]);
    write_pth(&root, "snl_best_checkpoint_resnet18_in_cifar10_50000").unwrap()
}

#[test]
fn snl_resnet_and_wrn_import_exactly() {
    for spec in [
        tiny(ArchSpec::resnet18()),
        tiny(ArchSpec::wrn(16, 8).unwrap()),
    ] {
        let net = random_net(&spec, 5);
        let ck = read(&snl_checkpoint(&net));
        let imp =
            import_checkpoint(&ck, &spec, CIFAR, 10, &ImportOptions::new(Scheme::Snl)).unwrap();
        assert_eq!(imp.network.nodes, net.nodes, "{}", spec.name());
        assert!(imp.unknown.is_empty());
        same_logits(&imp.network, &net);
    }
}

#[test]
fn snl_continuous_alphas_need_a_threshold() {
    let spec = tiny(ArchSpec::resnet18());
    let net = random_net(&spec, 6);
    let mut sd = weights(&net);
    for site in net.sites().filter(|s| s.role == SiteRole::Body) {
        let (p, k) = site.name.rsplit_once(".relu").unwrap();
        let c = site.shape;
        sd.push((
            format!("{p}.alpha{k}.alphas"),
            t(
                vec![1, c.c, c.h, c.w],
                site.mask
                    .iter()
                    .map(|&m| if m == 1 { 0.7 } else { 0.001 })
                    .collect(),
            ),
        ));
    }
    let ck = read(&write_pth(&dict(sd), "a").unwrap());
    let err =
        import_checkpoint(&ck, &spec, CIFAR, 10, &ImportOptions::new(Scheme::Snl)).unwrap_err();
    assert!(err.to_string().contains("expected 0 or 1"), "{err}");
    let mut opts = ImportOptions::new(Scheme::Snl);
    opts.snl_threshold = Some(1e-2);
    let imp = import_checkpoint(&ck, &spec, CIFAR, 10, &opts).unwrap();
    assert_eq!(imp.network.nodes, net.nodes);
}

#[test]
fn stray_tensors_are_refused_and_missing_masks_are_errors() {
    let spec = tiny(ArchSpec::resnet18());
    let net = random_net(&spec, 7);
    // A stray tensor inside the state dict.
    let mut sd = weights(&net);
    for site in net.sites().filter(|s| s.role == SiteRole::Body) {
        let (p, k) = site.name.rsplit_once(".relu").unwrap();
        let c = site.shape;
        sd.push((
            format!("{p}.alpha{k}.alphas"),
            t(
                vec![1, c.c, c.h, c.w],
                site.mask.iter().map(|&m| m as f32).collect(),
            ),
        ));
    }
    sd.push(("layer9.0.conv1.weight".into(), t(vec![2], vec![0.0, 1.0])));
    let ck = read(&write_pth(&dict(vec![("state_dict".into(), dict(sd.clone()))]), "a").unwrap());
    let err =
        import_checkpoint(&ck, &spec, CIFAR, 10, &ImportOptions::new(Scheme::Snl)).unwrap_err();
    match &err {
        ImportError::Unknown { tensors, .. } => {
            assert_eq!(tensors, &vec!["layer9.0.conv1.weight".to_string()])
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("--ignore-unknown"));
    let mut opts = ImportOptions::new(Scheme::Snl);
    opts.ignore_unknown = true;
    let imp = import_checkpoint(&ck, &spec, CIFAR, 10, &opts).unwrap();
    assert_eq!(imp.unknown, vec!["layer9.0.conv1.weight".to_string()]);
    // A stray tensor beside the state dict.
    sd.pop();
    let ck = read(
        &write_pth(
            &dict(vec![
                ("state_dict".into(), dict(sd.clone())),
                ("ema".into(), t(vec![1], vec![0.0])),
            ]),
            "a",
        )
        .unwrap(),
    );
    let err =
        import_checkpoint(&ck, &spec, CIFAR, 10, &ImportOptions::new(Scheme::Snl)).unwrap_err();
    assert!(
        matches!(&err, ImportError::Unknown { tensors, .. } if tensors == &vec!["ema".to_string()]),
        "{err}"
    );
    // A missing mask.
    let sd: Vec<_> = sd
        .into_iter()
        .filter(|(n, _)| n != "layer3.1.alpha2.alphas")
        .collect();
    let ck = read(&write_pth(&dict(sd), "a").unwrap());
    let err =
        import_checkpoint(&ck, &spec, CIFAR, 10, &ImportOptions::new(Scheme::Snl)).unwrap_err();
    match err {
        ImportError::MissingMask { site, .. } => assert_eq!(site, "layer3.1.relu2"),
        other => panic!("{other}"),
    }
}

fn autorep_checkpoint(net: &Network, degree: usize, scale_x2: f32) -> Vec<u8> {
    let mut sd: Vec<(String, PyValue)> = weights(net)
        .into_iter()
        .map(|(n, v)| (format!("model.{n}"), v))
        .collect();
    let body: Vec<_> = net.sites().filter(|s| s.role == SiteRole::Body).collect();
    // The shared module is registered under every block's `relu` path.
    for path in ["model.layer1.0.relu", "model.layer4.1.relu"] {
        for (i, site) in body.iter().enumerate() {
            let c = site.shape;
            let dims = vec![c.c, c.h, c.w];
            sd.push((
                format!("{path}.alpha_aux_{i}_0"),
                t(dims.clone(), vec![0.25; c.len()]),
            ));
            sd.push((
                format!("{path}.alpha_mask_{i}_0"),
                t(dims, site.mask.iter().map(|&m| m as f32).collect()),
            ));
            if let Some(p) = &site.poly {
                let a2: Vec<f32> = p.a2.iter().map(|v| v / scale_x2).collect();
                let paras = if degree == 2 {
                    vec![p.a0.clone(), p.a1.clone(), a2]
                } else {
                    vec![p.a0.clone(), p.a1.clone()]
                };
                for (k, v) in paras.into_iter().enumerate() {
                    sd.push((
                        format!("{path}.poly_para_{i}_{k}"),
                        t(vec![1, c.c, 1, 1], v),
                    ));
                }
                sd.push((
                    format!("{path}.bn_{i}.running_mean"),
                    t(vec![c.c], vec![0.0; c.c]),
                ));
                sd.push((
                    format!("{path}.bn_{i}.running_var"),
                    t(vec![c.c], vec![1.0; c.c]),
                ));
            }
        }
        sd.push((format!("{path}.itr_cnt"), t(vec![1], vec![508.0])));
    }
    let root = dict(vec![
        ("epoch".into(), PyValue::Int(200)),
        ("state_dict".into(), dict(sd)),
        ("best_prec1".into(), PyValue::Float(70.1)),
        ("is_best".into(), PyValue::Bool(true)),
    ]);
    write_pth(&root, "checkpoint").unwrap()
}

#[test]
fn autorep_masks_and_dapa_polynomials() {
    let spec = tiny(ArchSpec::resnet18());
    let mut net = random_net(&spec, 8);
    let mut rng = ChaCha8Rng::seed_from_u64(80);
    for site in net.sites_mut().filter(|s| s.role == SiteRole::Body) {
        let c = site.shape.c;
        let mut r = |lo: f32, hi: f32| (0..c).map(|_| rng.gen_range(lo..hi)).collect::<Vec<f32>>();
        site.poly = Some(pibench_models::graph::PolyCoeffs {
            a2: r(0.0, 0.01),
            a1: r(0.4, 0.9),
            a0: r(0.0, 0.1),
        });
    }
    let scale_x2 = 0.5; // a power of two keeps a2 / s · s exact
    let ck = read(&autorep_checkpoint(&net, 2, scale_x2));
    let mut opts = ImportOptions::new(Scheme::Autorep);
    opts.autorep_scale_x2 = scale_x2;
    let imp = import_checkpoint(&ck, &spec, CIFAR, 10, &opts).unwrap();
    assert_eq!(imp.network.nodes, net.nodes);
    assert!(imp.skipped.iter().any(|n| n.contains("alpha_aux")));
    same_logits(&imp.network, &net);
    // Without polynomials (ReLU_masked_relay): identity replacement.
    for site in net.sites_mut() {
        site.poly = None;
    }
    let ck = read(&autorep_checkpoint(&net, 2, 1.0));
    let imp =
        import_checkpoint(&ck, &spec, CIFAR, 10, &ImportOptions::new(Scheme::Autorep)).unwrap();
    assert_eq!(imp.network.nodes, net.nodes);
}

#[test]
fn relupruner_masks_list_shortcut_names_and_relu_count() {
    for spec in [
        tiny(ArchSpec::resnet18()),
        tiny(ArchSpec::wrn(16, 8).unwrap()),
    ] {
        let mut net = random_net(&spec, 9);
        // ReLUPruner's WRN masks its final BN-ReLU too.
        let mut rng = ChaCha8Rng::seed_from_u64(90);
        for site in net.sites_mut().filter(|s| s.role == SiteRole::Final) {
            for m in site.mask.iter_mut() {
                *m = u8::from(rng.gen_bool(0.5));
            }
        }
        let sd: Vec<(String, PyValue)> = weights(&net)
            .into_iter()
            .map(|(n, v)| {
                (
                    n.replace(".shortcut.0.", ".conv_sc.")
                        .replace(".shortcut.1.", ".bn_sc."),
                    v,
                )
            })
            .collect();
        let masks: Vec<PyValue> = net
            .sites()
            .filter(|s| s.role != SiteRole::Stem)
            .map(|s| t(s.shape.dims(), s.mask.iter().map(|&m| m as f32).collect()))
            .collect();
        let count: u64 = net.sites().map(|s| s.relu_count()).sum();
        let make = |rc: u64| {
            dict(vec![
                ("format_version".into(), PyValue::Int(1)),
                ("epoch".into(), PyValue::Int(150)),
                ("model".into(), dict(sd.clone())),
                (
                    "config".into(),
                    dict(vec![("budget".into(), PyValue::Int(50_000))]),
                ),
                ("metrics".into(), dict(vec![])),
                ("masks".into(), PyValue::List(masks.clone())),
                ("relu_count".into(), PyValue::Int(rc as i64)),
            ])
        };
        let ck = read(&write_pth(&make(count), "ckpt").unwrap());
        let imp = import_checkpoint(
            &ck,
            &spec,
            CIFAR,
            10,
            &ImportOptions::new(Scheme::Relupruner),
        )
        .unwrap();
        assert_eq!(imp.network.nodes, net.nodes, "{}", spec.name());
        same_logits(&imp.network, &net);
        let ck = read(&write_pth(&make(count + 1), "ckpt").unwrap());
        let err = import_checkpoint(
            &ck,
            &spec,
            CIFAR,
            10,
            &ImportOptions::new(Scheme::Relupruner),
        )
        .unwrap_err();
        assert!(err.to_string().contains("relu_count"), "{err}");
    }
}

#[test]
fn plain_teacher_is_all_relu() {
    let spec = tiny(ArchSpec::resnet18());
    let net = spec.build(CIFAR, 10, Init::Seeded(4)).unwrap();
    let ck = read(&write_pth(&dict(weights(&net)), "teacher").unwrap());
    let imp = import_checkpoint(&ck, &spec, CIFAR, 10, &ImportOptions::new(Scheme::Plain)).unwrap();
    assert_eq!(imp.network.nodes, net.nodes);
    // A wrong architecture is named.
    let err = import_checkpoint(
        &ck,
        &tiny(ArchSpec::resnet34()),
        CIFAR,
        10,
        &ImportOptions::new(Scheme::Plain),
    )
    .unwrap_err();
    assert!(err.to_string().contains("missing tensor"), "{err}");
}

/// Builds a torch.save-like archive around a raw pickle.
fn archive_with_pickle(pkl: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut zw = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let o =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zw.start_file("a/data.pkl", o).unwrap();
    zw.write_all(pkl).unwrap();
    zw.finish().unwrap().into_inner()
}

#[test]
fn hostile_pickles_fail_cleanly() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("no stop", vec![0x80, 2, b'}'], "STOP"),
        (
            "huge string",
            {
                let mut v = vec![0x80, 2, b'X'];
                v.extend_from_slice(&u32::MAX.to_le_bytes());
                v.extend_from_slice(b"abc.");
                v
            },
            "past the end",
        ),
        ("long1", vec![0x80, 2, 0x8a, 200, 1, 2, 3, b'.'], "LONG1"),
        (
            "deep",
            {
                let mut v = vec![0x80, 2];
                v.extend(std::iter::repeat_n(b']', 2000));
                v.extend(std::iter::repeat_n(b'a', 1999));
                v.push(b'.');
                v
            },
            "nested deeper",
        ),
        (
            "laughs",
            {
                // memo[0] = (memo[0], memo[0]), doubling the object each time.
                let mut v = vec![0x80, 2, b']', b'q', 0];
                for _ in 0..60 {
                    v.extend_from_slice(&[b'h', 0, b'h', 0, 0x86, b'q', 0]);
                }
                v.push(b'.');
                v
            },
            "objects",
        ),
        ("unknown opcode", vec![0x80, 2, 0xff, b'.'], "opcode"),
        ("empty stack", vec![0x80, 2, b'a', b'.'], "opcode"),
    ];
    for (what, pkl, expect) in cases {
        let err = Checkpoint::from_bytes(&archive_with_pickle(&pkl), "evil.pth").unwrap_err();
        assert!(err.to_string().contains(expect), "{what}: {err}");
    }
    // Not a zip at all; a tensor pointing past its storage.
    let err = Checkpoint::from_bytes(b"\x80\x02}.", "legacy.pth").unwrap_err();
    assert!(err.to_string().contains("legacy"), "{err}");
    let root = dict(vec![("w".into(), t(vec![4], vec![1.0, 2.0, 3.0, 4.0]))]);
    let bytes = write_pth(&root, "a").unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut pkl = Vec::new();
    std::io::Read::read_to_end(&mut zip.by_name("a/data.pkl").unwrap(), &mut pkl).unwrap();
    // Grow the declared size 4 → 9 (BININT1 after the persistent id and the offset).
    let needle = [b'K', 4, b't', b'Q', b'K', 0, b'(', b'K', 4];
    let pos = pkl.windows(needle.len()).position(|w| w == needle).unwrap();
    pkl[pos + needle.len() - 1] = 9;
    let bytes = {
        use std::io::Write;
        let mut zw = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let o = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        zw.start_file("a/data.pkl", o).unwrap();
        zw.write_all(&pkl).unwrap();
        zw.start_file("a/data/0", o).unwrap();
        zw.write_all(&[0u8; 16]).unwrap();
        zw.finish().unwrap().into_inner()
    };
    let err = Checkpoint::from_bytes(&bytes, "short.pth").unwrap_err();
    assert!(err.to_string().contains("storage holds 4"), "{err}");
}

// ---------------------------------------------------------------------------
// Checkpoints written by PyTorch itself (`torch.save`), with PyTorch's logits:
// tests/vectors/generate_checkpoints.py (`make vectors`).

fn vectors() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// `[n, k]` f32 tensor `name` of the checkpoints' io file.
fn io_tensor(name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(vectors().join("checkpoints.io.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let v = st.tensor(name).unwrap();
    assert_eq!(v.dtype(), safetensors::Dtype::F32);
    let data = v
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (v.shape().to_vec(), data)
}

/// Imports `file` with `opts` and checks the float reference's logits against
/// PyTorch's (`logits_<key>`) to 1e-4 of the largest |logit|.
fn torch_written(file: &str, key: &str, opts: &ImportOptions) -> Network {
    let shape = FeatureShape::new(3, 16, 16);
    let ck = Checkpoint::read(&vectors().join(file)).unwrap();
    let imp = import_checkpoint(&ck, &tiny(ArchSpec::resnet18()), shape, 10, opts)
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    assert!(imp.unknown.is_empty(), "{:?}", imp.unknown);
    let (xs, x) = io_tensor("input");
    let (ls, logits) = io_tensor(&format!("logits_{key}"));
    assert_eq!(xs, vec![3, 3, 16, 16]);
    assert_eq!(ls, vec![3, 10]);
    for n in 0..3 {
        let got = forward_float(&imp.network, &x[n * shape.len()..(n + 1) * shape.len()]).unwrap();
        let want = &logits[n * 10..(n + 1) * 10];
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
        assert!(scale > 0.1, "{want:?}");
        for (a, b) in want.iter().zip(&got) {
            assert!(
                (*a as f64 - b).abs() <= 1e-4 * scale,
                "{file} image {n}: PyTorch {want:?}, imported {got:?}"
            );
        }
    }
    imp.network
}

/// Fraction of body-site elements that keep their ReLU.
fn kept_fraction(net: &Network) -> f64 {
    let (mut kept, mut all) = (0usize, 0usize);
    for s in net.sites().filter(|s| s.role == SiteRole::Body) {
        kept += s.mask.iter().filter(|&&m| m == 1).count();
        all += s.mask.len();
    }
    kept as f64 / all as f64
}

#[test]
fn torch_saved_snl_checkpoint_gives_pytorchs_logits() {
    let net = torch_written(
        "snl_resnet18.pth.tar",
        "snl",
        &ImportOptions::new(Scheme::Snl),
    );
    // Random 0/1 alphas with P(1) = 1/2 over 15,360 elements.
    let f = kept_fraction(&net);
    assert!((0.45..0.55).contains(&f), "{f}");
}

#[test]
fn torch_saved_autorep_checkpoint_gives_pytorchs_logits() {
    // One relay module registered under all 8 blocks' paths: torch.save stores
    // each of its tensors once and the pickle refers to it 8 times.
    let mut opts = ImportOptions::new(Scheme::Autorep);
    opts.autorep_scale_x2 = 0.1;
    let net = torch_written("autorep_resnet18.pth.tar", "autorep", &opts);
    let f = kept_fraction(&net);
    assert!((0.45..0.55).contains(&f), "{f}");
}

#[test]
fn torch_saved_relupruner_checkpoint_gives_pytorchs_logits() {
    let net = torch_written(
        "relupruner_resnet18.pth",
        "relupruner",
        &ImportOptions::new(Scheme::Relupruner),
    );
    let f = kept_fraction(&net);
    assert!((0.45..0.55).contains(&f), "{f}");
}

#[test]
fn torch_saved_plain_checkpoint_gives_pytorchs_logits_and_a_stray_tensor_is_refused() {
    let net = torch_written(
        "plain_resnet18.pth",
        "plain",
        &ImportOptions::new(Scheme::Plain),
    );
    assert_eq!(kept_fraction(&net), 1.0);
    let ck = Checkpoint::read(&vectors().join("stray_resnet18.pth")).unwrap();
    let spec = tiny(ArchSpec::resnet18());
    let shape = FeatureShape::new(3, 16, 16);
    let err =
        import_checkpoint(&ck, &spec, shape, 10, &ImportOptions::new(Scheme::Plain)).unwrap_err();
    match &err {
        ImportError::Unknown { tensors, .. } => {
            assert_eq!(tensors, &vec!["layer2.0.extra_scale".to_string()])
        }
        other => panic!("{other}"),
    }
}
