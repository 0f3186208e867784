//! Synthetic datasets in the official on-disk formats.
#![allow(dead_code)]

use std::fs;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A 32×32 CHW image whose colour depends on `class` (learnable), plus noise.
pub fn class_image(class: usize, rng: &mut ChaCha8Rng, side: usize) -> Vec<u8> {
    let mut img = Vec::with_capacity(3 * side * side);
    for c in 0..3 {
        let bit = (class >> c) & 1;
        let base: i32 = if bit == 1 { 190 } else { 60 };
        for y in 0..side {
            for _x in 0..side {
                // A class-dependent horizontal stripe pattern on top of the colour.
                let stripe = if (y / 4 + class).is_multiple_of(2) {
                    25
                } else {
                    -25
                };
                let v = base + stripe + rng.gen_range(-30..=30);
                img.push(v.clamp(0, 255) as u8);
            }
        }
    }
    img
}

/// Writes `cifar-10-batches-bin/` with `per_batch` images in each of the 5
/// training batches and `test` test images.
pub fn write_cifar10(dir: &Path, per_batch: usize, test: usize, seed: u64) {
    let root = dir.join("cifar-10-batches-bin");
    fs::create_dir_all(&root).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let write = |name: &str, n: usize, rng: &mut ChaCha8Rng| {
        let mut bytes = Vec::new();
        for i in 0..n {
            let class = (i * 7 + rng.gen_range(0..10)) % 10;
            bytes.push(class as u8);
            bytes.extend(class_image(class, rng, 32));
        }
        fs::write(root.join(name), bytes).unwrap();
    };
    for b in 1..=5 {
        write(&format!("data_batch_{b}.bin"), per_batch, &mut rng);
    }
    write("test_batch.bin", test, &mut rng);
}

/// Writes `cifar-100-binary/` (coarse, fine labels).
pub fn write_cifar100(dir: &Path, train: usize, test: usize, seed: u64) {
    let root = dir.join("cifar-100-binary");
    fs::create_dir_all(&root).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (name, n) in [("train.bin", train), ("test.bin", test)] {
        let mut bytes = Vec::new();
        for _ in 0..n {
            let fine = rng.gen_range(0..100usize);
            bytes.push((fine / 5) as u8);
            bytes.push(fine as u8);
            bytes.extend(class_image(fine, &mut rng, 32));
        }
        fs::write(root.join(name), bytes).unwrap();
    }
}

/// Writes a Tiny-ImageNet layout with 200 wnids, `per_class` training JPEGs for
/// each of the first `classes` of them and `val` validation JPEGs.
pub fn write_tiny(dir: &Path, classes: usize, per_class: usize, val: usize, seed: u64) {
    let root = dir.join("tiny-imagenet-200");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // A real Tiny-ImageNet lists 200 classes (the reader insists); images go
    // to the first `classes`, the other class folders stay empty.
    let wnids: Vec<String> = (0..200).map(|i| format!("n{:08}", 1000 + i)).collect();
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("wnids.txt"), wnids.join("\n") + "\n").unwrap();
    let save = |path: &Path, class: usize, rng: &mut ChaCha8Rng| {
        let chw = class_image(class, rng, 64);
        let mut hwc = vec![0u8; chw.len()];
        for c in 0..3 {
            for p in 0..64 * 64 {
                hwc[p * 3 + c] = chw[c * 64 * 64 + p];
            }
        }
        let img = image::RgbImage::from_raw(64, 64, hwc).unwrap();
        img.save(path).unwrap();
    };
    for (c, w) in wnids.iter().enumerate() {
        let folder = root.join("train").join(w).join("images");
        fs::create_dir_all(&folder).unwrap();
        if c >= classes {
            continue;
        }
        for i in 0..per_class {
            save(&folder.join(format!("{w}_{i}.JPEG")), c, &mut rng);
        }
    }
    let vdir = root.join("val").join("images");
    fs::create_dir_all(&vdir).unwrap();
    let mut ann = String::new();
    for i in 0..val {
        let c = i % classes;
        let name = format!("val_{i}.JPEG");
        save(&vdir.join(&name), c, &mut rng);
        ann.push_str(&format!("{name}\t{}\t0\t0\t63\t63\n", wnids[c]));
    }
    fs::write(root.join("val").join("val_annotations.txt"), ann).unwrap();
}
