//! Model files: exact round trip, PyTorch import, and malformed input.

use std::collections::HashMap;

use pibench_models::arch::ArchSpec;
use pibench_models::count::Convention;
use pibench_models::file::{self, SaveOptions};
use pibench_models::graph::{FeatureShape, Init, Network, PolyCoeffs};
use pibench_models::ModelError;
use safetensors::tensor::{Dtype, TensorView};

const INPUT: FeatureShape = FeatureShape::new(3, 8, 8);

fn tiny() -> Network {
    let spec = ArchSpec::Resnet {
        name: "resnet-tiny".into(),
        stem: 4,
        blocks: vec![1, 1],
        widths: vec![4, 8],
    };
    let mut net = spec.build(INPUT, 10, Init::Seeded(3)).unwrap();
    let site = net.site_mut("layer1.0.relu1").unwrap();
    site.mask[0] = 0;
    site.mask[5] = 0;
    site.poly = Some(PolyCoeffs {
        a2: vec![0.1, 0.2, 0.3, 0.4],
        a1: vec![0.5; 4],
        a0: vec![-0.25; 4],
    });
    net
}

fn opts() -> SaveOptions {
    SaveOptions {
        dataset: Some("cifar10".into()),
        convention: Convention::default(),
        fixed: Default::default(),
        bounds: None,
    }
}

#[test]
fn round_trip_is_exact() {
    for net in [
        tiny(),
        ArchSpec::wrn(10, 1)
            .unwrap()
            .build(INPUT, 10, Init::Seeded(4))
            .unwrap(),
        ArchSpec::Vgg {
            name: "vgg-tiny".into(),
            convs: vec![1, 1],
            widths: vec![4, 8],
            pool: pibench_models::arch::VggPool::Max,
        }
        .build(INPUT, 10, Init::Seeded(5))
        .unwrap(),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        file::save(&net, &opts(), &path).unwrap();
        let loaded = file::load(&path).unwrap();
        assert_eq!(loaded.network, net);
        assert_eq!(loaded.header.dataset.as_deref(), Some("cifar10"));
        assert_eq!(loaded.header.sites.len(), net.sites().count());
    }
}

/// Writes a state dict like `safetensors.torch.save_file(model.state_dict())` would.
fn state_dict(net: &Network, rename_linear: bool, drop: &str) -> Vec<u8> {
    let bytes = file::to_bytes(net, &opts()).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        if name == drop || name.ends_with(".mask") && name.starts_with("relu0") {
            continue;
        }
        let name = if rename_linear {
            name.replace("linear.", "fc.")
        } else {
            name
        };
        out.push((
            name,
            view.dtype(),
            view.shape().to_vec(),
            view.data().to_vec(),
        ));
    }
    out.push((
        "bn1.num_batches_tracked".into(),
        Dtype::I64,
        vec![],
        7i64.to_le_bytes().to_vec(),
    ));
    let views: Vec<(String, TensorView<'_>)> = out
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, &None::<HashMap<String, String>>).unwrap()
}

#[test]
fn imports_pytorch_state_dicts() {
    let net = tiny();
    let spec = net.arch.clone();
    let bytes = state_dict(&net, true, "");
    let imported =
        file::import_state_dict_bytes(&bytes, "sd.safetensors", &spec, INPUT, 10).unwrap();
    // relu0's mask was not exported: all ReLU.
    assert_eq!(imported.site("relu0").unwrap().relu_count(), 4 * 64);
    assert_eq!(imported.site("layer1.0.relu1"), net.site("layer1.0.relu1"));
    assert_eq!(imported.nodes.last(), net.nodes.last());
    // A state dict is not a pibench model file.
    let err = file::from_bytes(&bytes, "sd.safetensors").unwrap_err();
    assert!(err.to_string().contains("sd.safetensors"), "{err}");
}

#[test]
fn missing_tensor_is_named() {
    let net = tiny();
    let bytes = state_dict(&net, false, "layer2.0.shortcut.1.running_var");
    let err =
        file::import_state_dict_bytes(&bytes, "x.safetensors", &net.arch, INPUT, 10).unwrap_err();
    assert!(matches!(err, ModelError::MissingTensor { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("x.safetensors") && msg.contains("layer2.0.shortcut.1.running_var"),
        "{msg}"
    );
}

#[test]
fn mask_shape_mismatch_is_named() {
    let net = tiny();
    // A mask with the shape of another site.
    let wrong = net.site("layer2.0.relu1").unwrap().clone();
    let good = file::to_bytes(&net, &opts()).unwrap();
    let st = safetensors::SafeTensors::deserialize(&good).unwrap();
    let mut out: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    for t in &mut out {
        if t.0 == "layer1.0.relu1.mask" {
            t.2 = wrong.shape.dims();
            t.3 = wrong.mask.clone();
        }
    }
    let views: Vec<(String, TensorView<'_>)> = out
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let bytes = safetensors::serialize(views, &None::<HashMap<String, String>>).unwrap();
    let err =
        file::import_state_dict_bytes(&bytes, "m.safetensors", &net.arch, INPUT, 10).unwrap_err();
    assert!(matches!(err, ModelError::Site { .. }), "{err}");
    assert!(err.to_string().contains("layer1.0.relu1"), "{err}");
}

#[test]
fn masks_with_a_batch_axis_are_accepted() {
    let net = tiny();
    let good = file::to_bytes(&net, &opts()).unwrap();
    let st = safetensors::SafeTensors::deserialize(&good).unwrap();
    let out: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            let mut shape = v.shape().to_vec();
            if n.ends_with(".mask") {
                shape.insert(0, 1);
            }
            (n, v.dtype(), shape, v.data().to_vec())
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = out
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let bytes = safetensors::serialize(views, &None::<HashMap<String, String>>).unwrap();
    let imported = file::import_state_dict_bytes(&bytes, "b", &net.arch, INPUT, 10).unwrap();
    assert_eq!(imported, {
        let mut n = net.clone();
        n.name = imported.name.clone();
        n
    });
}

#[test]
fn truncated_and_garbage_files_are_errors() {
    let good = file::to_bytes(&tiny(), &opts()).unwrap();
    for cut in [0, 3, 8, 20, good.len() / 2, good.len() - 1] {
        let err = file::from_bytes(&good[..cut], "cut.safetensors").unwrap_err();
        assert!(err.to_string().contains("cut.safetensors"), "{err}");
    }
    let mut garbage = good.clone();
    garbage[8] = b'#';
    assert!(file::from_bytes(&garbage, "g").is_err());
    let dir = tempfile::tempdir().unwrap();
    let err = file::load(&dir.path().join("absent.safetensors")).unwrap_err();
    assert!(matches!(err, ModelError::Io { .. }));
}

#[test]
fn unknown_architectures_and_bad_sizes() {
    assert!(matches!(
        ArchSpec::parse("resnet19"),
        Err(ModelError::UnknownArch { .. })
    ));
    assert!(matches!(
        ArchSpec::parse("wrn23_8"),
        Err(ModelError::InvalidSize { .. })
    ));
    assert_eq!(
        ArchSpec::parse("wrn22_8").unwrap(),
        ArchSpec::wrn(22, 8).unwrap()
    );
    assert_eq!(
        ArchSpec::parse("HRN-5x5x3x-m16").unwrap(),
        ArchSpec::hrn(5, 5, 3, 16).unwrap()
    );
    assert!(ArchSpec::hrn(0, 5, 3, 16).is_err());
    let r18 = ArchSpec::resnet18();
    assert!(r18
        .build(FeatureShape::new(3, 0, 32), 10, Init::Zeros)
        .is_err());
    assert!(r18
        .build(FeatureShape::new(3, 32, 32), 0, Init::Zeros)
        .is_err());
    assert!(r18
        .build(FeatureShape::new(3, 4, 4), 10, Init::Zeros)
        .is_err());
}
