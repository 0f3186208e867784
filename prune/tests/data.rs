//! Dataset loaders on synthetic files in the official formats, and their errors.

mod common;

use std::fs;

use pibench_prune::data::{DataError, Dataset, DatasetKind, Preprocess};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind};

#[test]
fn cifar10_loads_with_labels_and_pixels() {
    let dir = tempfile::tempdir().unwrap();
    common::write_cifar10(dir.path(), 6, 4, 1);
    let ds = Dataset::load(DatasetKind::Cifar10, dir.path()).unwrap();
    assert_eq!(ds.train.len(), 30);
    assert_eq!(ds.test.len(), 4);
    assert_eq!(ds.train.images.size(), vec![30, 3, 32, 32]);
    // First record of data_batch_1: label byte then CHW pixels.
    let raw = fs::read(dir.path().join("cifar-10-batches-bin/data_batch_1.bin")).unwrap();
    assert_eq!(ds.train.labels.int64_value(&[0]), raw[0] as i64);
    assert_eq!(ds.train.images.int64_value(&[0, 0, 0, 0]), raw[1] as i64);
    assert_eq!(
        ds.train.images.int64_value(&[0, 2, 31, 31]),
        raw[3072] as i64
    );
    // Also loads when --data points at the folder itself.
    let inner = Dataset::load(
        DatasetKind::Cifar10,
        &dir.path().join("cifar-10-batches-bin"),
    );
    assert!(inner.is_ok());
}

#[test]
fn cifar100_uses_fine_labels() {
    let dir = tempfile::tempdir().unwrap();
    common::write_cifar100(dir.path(), 20, 5, 2);
    let ds = Dataset::load(DatasetKind::Cifar100, dir.path()).unwrap();
    let raw = fs::read(dir.path().join("cifar-100-binary/train.bin")).unwrap();
    assert_eq!(ds.train.len(), 20);
    assert_eq!(ds.train.labels.int64_value(&[1]), raw[3074 + 1] as i64);
    assert_eq!(
        ds.train.images.int64_value(&[1, 0, 0, 0]),
        raw[3074 + 2] as i64
    );
}

#[test]
fn tiny_imagenet_loads_train_and_val() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny(dir.path(), 3, 2, 4, 3);
    let ds = Dataset::load(DatasetKind::TinyImagenet, dir.path()).unwrap();
    assert_eq!(ds.train.len(), 6);
    assert_eq!(ds.test.len(), 4);
    assert_eq!(ds.train.images.size(), vec![6, 3, 64, 64]);
    let labels: Vec<i64> = Vec::try_from(&ds.test.labels).unwrap();
    assert_eq!(labels, vec![0, 1, 2, 0]);
}

#[test]
fn wrong_record_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    common::write_cifar10(dir.path(), 2, 2, 4);
    let f = dir.path().join("cifar-10-batches-bin/data_batch_3.bin");
    let mut bytes = fs::read(&f).unwrap();
    bytes.pop();
    fs::write(&f, bytes).unwrap();
    match Dataset::load(DatasetKind::Cifar10, dir.path()) {
        Err(DataError::RecordSize { len, record, .. }) => {
            assert_eq!(record, 3073);
            assert_eq!(len, 2 * 3073 - 1);
        }
        other => panic!("expected a record-size error, got {other:?}"),
    }
    // CIFAR-10 files are not CIFAR-100 files (record size 3074).
    let err = Dataset::load(
        DatasetKind::Cifar100,
        &dir.path().join("cifar-10-batches-bin"),
    );
    assert!(matches!(err, Err(DataError::Missing { .. })));
}

#[test]
fn missing_file_and_bad_label_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    common::write_cifar10(dir.path(), 2, 2, 5);
    let root = dir.path().join("cifar-10-batches-bin");
    let mut bytes = fs::read(root.join("test_batch.bin")).unwrap();
    bytes[3073] = 10;
    fs::write(root.join("test_batch.bin"), &bytes).unwrap();
    let err = Dataset::load(DatasetKind::Cifar10, dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::Label {
                label: 10,
                offset: 3073,
                ..
            }
        ),
        "{err}"
    );
    fs::remove_file(root.join("data_batch_5.bin")).unwrap();
    let err = Dataset::load(DatasetKind::Cifar10, dir.path()).unwrap_err();
    assert!(err.to_string().contains("data_batch_5.bin"), "{err}");
}

#[test]
fn tiny_imagenet_missing_class_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny(dir.path(), 2, 1, 2, 6);
    let root = dir.path().join("tiny-imagenet-200");
    fs::remove_dir_all(root.join("train/n00001001")).unwrap();
    let err = Dataset::load(DatasetKind::TinyImagenet, dir.path()).unwrap_err();
    assert!(matches!(err, DataError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("n00001001"), "{err}");
}

#[test]
fn augmentation_crops_and_flips_within_padding() {
    let dir = tempfile::tempdir().unwrap();
    common::write_cifar10(dir.path(), 4, 2, 7);
    let ds = Dataset::load(DatasetKind::Cifar10, dir.path()).unwrap();
    let pre = Preprocess::new(DatasetKind::Cifar10, 32, Device::Cpu);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let plain = pre.apply(&ds.train.images.narrow(0, 0, 8), false, &mut rng);
    assert_eq!(plain.size(), vec![8, 3, 32, 32]);
    let aug = pre.apply(&ds.train.images.narrow(0, 0, 8), true, &mut rng);
    assert_eq!(aug.size(), vec![8, 3, 32, 32]);
    // Every augmented image is a (possibly flipped) shifted copy: its
    // centre 24×24 window appears in the un-augmented image.
    for i in 0..8 {
        let a = aug.get(i);
        let p = plain.get(i);
        let centre = a.narrow(1, 4, 24).narrow(2, 4, 24);
        let mut found = false;
        for flip in [false, true] {
            let src = if flip { p.flip([2]) } else { p.shallow_clone() };
            for dy in 0..=8 {
                for dx in 0..=8 {
                    let w = src.narrow(1, dy, 24).narrow(2, dx, 24);
                    let diff = (&w - &centre).abs().max().double_value(&[]);
                    if diff < 1e-5 {
                        found = true;
                    }
                }
            }
        }
        assert!(found, "image {i} is not a crop of the original");
    }
    let small = Preprocess::new(DatasetKind::Cifar10, 16, Device::Cpu);
    let x = small.apply(&ds.train.images.narrow(0, 0, 2), false, &mut rng);
    assert_eq!(x.size(), vec![2, 3, 16, 16]);
    assert_eq!(x.kind(), Kind::Float);
}
