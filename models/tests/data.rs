//! Dataset readers on small synthetic files in the official layouts, and
//! input files.

use std::path::Path;

use pibench_models::arch::Dataset;
use pibench_models::data::{
    detect, read_inputs, resize_bilinear, write_inputs, DataError, ImageSet, Split,
    CIFAR_IMAGE_BYTES,
};
use pibench_models::graph::FeatureShape;

/// A deterministic pixel pattern: record `r`, byte `k`.
fn pixel(r: usize, k: usize) -> u8 {
    ((r * 131 + k * 7) % 256) as u8
}

/// Writes CIFAR records `first..first+n` with labels `label(r)`.
fn cifar_file(
    path: &Path,
    first: usize,
    n: usize,
    label_bytes: usize,
    label: impl Fn(usize) -> [u8; 2],
) {
    let mut bytes = Vec::new();
    for r in first..first + n {
        bytes.extend_from_slice(&label(r)[..label_bytes]);
        bytes.extend((0..CIFAR_IMAGE_BYTES).map(|k| pixel(r, k)));
    }
    std::fs::write(path, bytes).unwrap();
}

fn cifar10(dir: &Path, per_batch: usize, test: usize) {
    for b in 0..5 {
        cifar_file(
            &dir.join(format!("data_batch_{}.bin", b + 1)),
            b * per_batch,
            per_batch,
            1,
            |r| [(r % 10) as u8, 0],
        );
    }
    cifar_file(&dir.join("test_batch.bin"), 1000, test, 1, |r| {
        [(r % 10) as u8, 0]
    });
}

fn expected(dataset: Dataset, r: usize) -> Vec<f32> {
    let (mean, std) = dataset.normalisation();
    (0..CIFAR_IMAGE_BYTES)
        .map(|k| (pixel(r, k) as f32 / 255.0 - mean[k / 1024]) / std[k / 1024])
        .collect()
}

#[test]
fn cifar10_reads_records_normalised_as_training_does() {
    let dir = tempfile::tempdir().unwrap();
    // The parent-folder form: DIR/cifar-10-batches-bin/...
    let root = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&root).unwrap();
    cifar10(&root, 4, 6);
    let cifar = FeatureShape::new(3, 32, 32);
    for d in [dir.path(), root.as_path()] {
        let test = ImageSet::load(Dataset::Cifar10, d, Split::Test, None).unwrap();
        assert_eq!((test.len(), test.total), (6, 6));
        for i in 0..6 {
            assert_eq!(test.label(i), (1000 + i) % 10);
            assert_eq!(
                test.normalised(i, cifar).unwrap(),
                expected(Dataset::Cifar10, 1000 + i)
            );
            assert_eq!(test.origin(i), format!("test_batch.bin record {i}"));
        }
    }
    // The training split runs over the five batches; a limit spreads evenly.
    let train = ImageSet::load(Dataset::Cifar10, dir.path(), Split::Train, Some(5)).unwrap();
    assert_eq!((train.len(), train.total), (5, 20));
    assert_eq!(train.labels(), &[0, 4, 8, 2, 6]); // records 0, 4, 8, 12, 16
    assert_eq!(train.origin(3), "data_batch_4.bin record 0");
    assert_eq!(
        train.normalised(4, cifar).unwrap(),
        expected(Dataset::Cifar10, 16)
    );
}

#[test]
fn cifar100_uses_the_fine_label() {
    let dir = tempfile::tempdir().unwrap();
    cifar_file(&dir.path().join("train.bin"), 0, 3, 2, |r| {
        [1, (50 + r) as u8]
    });
    cifar_file(&dir.path().join("test.bin"), 7, 2, 2, |r| {
        [3, (90 + r) as u8]
    });
    let test = ImageSet::load(Dataset::Cifar100, dir.path(), Split::Test, None).unwrap();
    assert_eq!(test.labels(), &[97, 98]);
    assert_eq!(
        test.normalised(1, FeatureShape::new(3, 32, 32)).unwrap(),
        expected(Dataset::Cifar100, 8)
    );
    let train = ImageSet::load(Dataset::Cifar100, dir.path(), Split::Train, None).unwrap();
    assert_eq!(train.labels(), &[50, 51, 52]);
}

#[test]
fn normalisation_constants_are_the_training_ones() {
    // The numbers piprune trains with (prune/src/data.rs); models::data is their one definition.
    assert_eq!(
        Dataset::Cifar10.normalisation(),
        ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])
    );
    assert_eq!(
        Dataset::Cifar100.normalisation(),
        ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762])
    );
    assert_eq!(
        Dataset::TinyImageNet.normalisation(),
        ([0.4802, 0.4481, 0.3975], [0.2302, 0.2265, 0.2262])
    );
}

#[test]
fn smaller_inputs_are_resized_bilinearly() {
    let dir = tempfile::tempdir().unwrap();
    cifar10(dir.path(), 1, 1);
    let set = ImageSet::load(Dataset::Cifar10, dir.path(), Split::Test, None).unwrap();
    let x = set.normalised(0, FeatureShape::new(3, 16, 16)).unwrap();
    assert_eq!(x.len(), 3 * 16 * 16);
    let (mean, std) = Dataset::Cifar10.normalisation();
    for c in 0..3 {
        let plane: Vec<f32> = (0..1024)
            .map(|k| pixel(1000, c * 1024 + k) as f32 / 255.0)
            .collect();
        let want: Vec<f32> = resize_bilinear(&plane, 32, 16)
            .into_iter()
            .map(|v| (v - mean[c]) / std[c])
            .collect();
        assert_eq!(&x[c * 256..(c + 1) * 256], want.as_slice());
        // Halving with align_corners=False averages each 2×2 block.
        let block = (plane[0] + plane[1] + plane[32] + plane[33]) / 4.0;
        assert!((x[c * 256] - (block - mean[c]) / std[c]).abs() < 1e-5);
    }
    assert!(matches!(
        set.normalised(0, FeatureShape::new(1, 32, 32)),
        Err(DataError::Shape { .. })
    ));
}

#[test]
fn malformed_cifar_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    cifar10(dir.path(), 2, 3);
    // A truncated test file.
    let test = dir.path().join("test_batch.bin");
    let mut bytes = std::fs::read(&test).unwrap();
    bytes.pop();
    std::fs::write(&test, &bytes).unwrap();
    let e = ImageSet::load(Dataset::Cifar10, dir.path(), Split::Test, None).unwrap_err();
    assert!(matches!(e, DataError::RecordSize { len, record: 3073, .. } if len == 3 * 3073 - 1));
    assert!(e.to_string().contains("test_batch.bin"), "{e}");
    // A label out of range in record 1 of the third batch.
    let b3 = dir.path().join("data_batch_3.bin");
    let mut bytes = std::fs::read(&b3).unwrap();
    bytes[3073] = 10;
    std::fs::write(&b3, &bytes).unwrap();
    let e = ImageSet::load(Dataset::Cifar10, dir.path(), Split::Train, None).unwrap_err();
    match &e {
        DataError::Label {
            record,
            offset,
            label,
            ..
        } => assert_eq!((*record, *offset, *label), (1, 3073, 10)),
        other => panic!("expected a label error, got {other}"),
    }
    assert!(e.to_string().contains("data_batch_3.bin"), "{e}");
    // A missing batch.
    std::fs::remove_file(dir.path().join("data_batch_5.bin")).unwrap();
    let e = ImageSet::load(Dataset::Cifar10, dir.path(), Split::Train, None).unwrap_err();
    assert!(matches!(e, DataError::Missing { .. }) && e.to_string().contains("data_batch_5.bin"));
    // An empty folder.
    let empty = tempfile::tempdir().unwrap();
    assert!(ImageSet::load(Dataset::Cifar100, empty.path(), Split::Test, None).is_err());
}

fn jpeg(path: &Path, side: u32, seed: u8) {
    let img = image::RgbImage::from_fn(side, side, |x, y| {
        image::Rgb([(x * 4) as u8 ^ seed, (y * 4) as u8, seed])
    });
    img.save(path).unwrap();
}

fn tiny_imagenet(root: &Path) -> Vec<String> {
    let wnids: Vec<String> = (0..200).map(|i| format!("n{i:08}")).collect();
    std::fs::write(root.join("wnids.txt"), wnids.join("\n")).unwrap();
    for (c, w) in wnids.iter().enumerate().take(3) {
        let d = root.join("train").join(w).join("images");
        std::fs::create_dir_all(&d).unwrap();
        for k in 0..2 {
            jpeg(&d.join(format!("{w}_{k}.JPEG")), 64, (c * 2 + k) as u8);
        }
    }
    for w in &wnids[3..200] {
        std::fs::create_dir_all(root.join("train").join(w).join("images")).unwrap();
    }
    let v = root.join("val").join("images");
    std::fs::create_dir_all(&v).unwrap();
    let mut ann = String::new();
    for k in 0..4 {
        jpeg(&v.join(format!("val_{k}.JPEG")), 64, 100 + k as u8);
        ann.push_str(&format!("val_{k}.JPEG\t{}\t0\t0\t63\t63\n", wnids[199 - k]));
    }
    std::fs::write(root.join("val").join("val_annotations.txt"), ann).unwrap();
    wnids
}

#[test]
fn tiny_imagenet_reads_jpeg_folders() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tiny-imagenet-200");
    std::fs::create_dir(&root).unwrap();
    tiny_imagenet(&root);
    let val = ImageSet::load(Dataset::TinyImageNet, dir.path(), Split::Test, None).unwrap();
    assert_eq!(val.labels(), &[199, 198, 197, 196]);
    let x = val.normalised(2, FeatureShape::new(3, 64, 64)).unwrap();
    assert_eq!(x.len(), 3 * 64 * 64);
    // Blue plane is the constant seed 102 (JPEG keeps a flat plane within a level or two).
    let (mean, std) = Dataset::TinyImageNet.normalisation();
    let blue = x[2 * 4096 + 100] * std[2] + mean[2];
    assert!((blue * 255.0 - 102.0).abs() <= 3.0, "{}", blue * 255.0);
    let train = ImageSet::load(Dataset::TinyImageNet, &root, Split::Train, Some(3)).unwrap();
    assert_eq!(train.total, 6);
    assert_eq!(train.labels(), &[0, 1, 2]);

    // A wrong image size and an unknown class are named.
    jpeg(&root.join("val").join("images").join("val_1.JPEG"), 32, 0);
    let e = ImageSet::load(Dataset::TinyImageNet, &root, Split::Test, None).unwrap_err();
    assert!(
        e.to_string().contains("val_1.JPEG") && e.to_string().contains("32x32"),
        "{e}"
    );
    std::fs::write(
        root.join("val").join("val_annotations.txt"),
        "val_0.JPEG\tn00000000\nval_1.JPEG\tnXXX\n",
    )
    .unwrap();
    let e = ImageSet::load(Dataset::TinyImageNet, &root, Split::Test, None).unwrap_err();
    assert!(matches!(e, DataError::Index { line: 2, .. }), "{e}");
}

#[test]
fn input_files_round_trip_and_refuse_bad_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let shape = FeatureShape::new(3, 4, 4);
    let images: Vec<Vec<f32>> = (0..3)
        .map(|i| (0..48).map(|k| (i * 48 + k) as f32 * 0.25 - 3.0).collect())
        .collect();
    let path = dir.path().join("in.safetensors");
    write_inputs(&path, shape, &images).unwrap();
    assert_eq!(read_inputs(&path, shape).unwrap(), images);
    // One image without the batch axis.
    let one: Vec<u8> = images[1].iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![3, 4, 4], &one).unwrap();
    safetensors::serialize_to_file([("input", view)], &None, &path).unwrap();
    assert_eq!(read_inputs(&path, shape).unwrap(), vec![images[1].clone()]);
    // Wrong shape, wrong name, not finite.
    let e = read_inputs(&path, FeatureShape::new(3, 8, 8)).unwrap_err();
    assert!(e.to_string().contains("[3, 4, 4]"), "{e}");
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![3, 4, 4], &one).unwrap();
    safetensors::serialize_to_file([("x", view)], &None, &path).unwrap();
    assert!(read_inputs(&path, shape)
        .unwrap_err()
        .to_string()
        .contains("no tensor named `input`"));
    let mut bad = images.clone();
    bad[2][5] = f32::NAN;
    write_inputs(&path, shape, &bad).unwrap();
    let e = read_inputs(&path, shape).unwrap_err();
    assert!(e.to_string().contains("element 101 (image 2"), "{e}");
    std::fs::write(&path, b"garbage").unwrap();
    assert!(read_inputs(&path, shape).is_err());
    assert!(write_inputs(&path, shape, &[vec![0.0; 5]]).is_err());
}

#[test]
fn raw_sets_check_their_sizes() {
    assert!(
        ImageSet::from_raw(Dataset::Cifar10, Split::Test, vec![0; 3072 * 2], vec![1, 2]).is_ok()
    );
    assert!(ImageSet::from_raw(Dataset::Cifar10, Split::Test, vec![0; 3072], vec![1, 2]).is_err());
    assert!(ImageSet::from_raw(Dataset::Cifar10, Split::Test, vec![0; 3072], vec![10]).is_err());
}

/// One image by its index (what `pibench run/client --data DIR --image K`
/// reads), the dataset told from the folder's layout, and an index past the
/// end refused with the split's size.
#[test]
fn one_image_by_index_and_the_dataset_from_the_layout() {
    let dir = tempfile::tempdir().unwrap();
    let c10 = dir.path().join("c10");
    let nested = c10.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&nested).unwrap();
    cifar10(&nested, 2, 3);
    let c100 = dir.path().join("c100");
    std::fs::create_dir_all(&c100).unwrap();
    cifar_file(&c100.join("train.bin"), 0, 3, 2, |r| [1, (50 + r) as u8]);
    cifar_file(&c100.join("test.bin"), 7, 2, 2, |r| [3, (90 + r) as u8]);
    let tiny = dir.path().join("tiny");
    std::fs::create_dir_all(&tiny).unwrap();
    tiny_imagenet(&tiny);
    assert_eq!(detect(&c10), Some(Dataset::Cifar10));
    assert_eq!(detect(&nested), Some(Dataset::Cifar10));
    assert_eq!(detect(&c100), Some(Dataset::Cifar100));
    assert_eq!(detect(&tiny), Some(Dataset::TinyImageNet));
    assert_eq!(detect(dir.path()), None);

    let shape = FeatureShape::new(3, 32, 32);
    let all = ImageSet::load(Dataset::Cifar10, &c10, Split::Train, None).unwrap();
    for k in [0, 5, 9] {
        let one = ImageSet::load_one(Dataset::Cifar10, &c10, Split::Train, k).unwrap();
        assert_eq!((one.len(), one.total), (1, 10));
        assert_eq!(one.label(0), all.label(k));
        assert_eq!(
            one.normalised(0, shape).unwrap(),
            all.normalised(k, shape).unwrap()
        );
    }
    let one = ImageSet::load_one(Dataset::Cifar100, &c100, Split::Test, 1).unwrap();
    assert_eq!(one.label(0), 98);
    assert_eq!(
        one.normalised(0, shape).unwrap(),
        expected(Dataset::Cifar100, 8)
    );
    let v = ImageSet::load_one(Dataset::TinyImageNet, &tiny, Split::Test, 3).unwrap();
    assert_eq!(v.label(0), 196);
    let e = ImageSet::load_one(Dataset::Cifar10, &c10, Split::Test, 3).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::NoSuchImage {
                index: 3,
                total: 3,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("has 3 images"), "{e}");
}
