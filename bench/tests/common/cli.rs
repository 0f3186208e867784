//! Helpers shared by the CLI tests of `accuracy`, `calibrate` and `count`.

use std::path::Path;
use std::process::Command;

use pibench_models::data::CIFAR_IMAGE_BYTES;
use rand::{Rng, SeedableRng};

/// Runs `pibench ARGS`: (success, stdout, stderr).
pub fn pibench(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pibench"))
        .args(args)
        .output()
        .expect("run pibench");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// CIFAR-10 binary files with seeded random pixels and labels.
pub fn write_cifar10(dir: &Path, per_batch: usize, test: usize, seed: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut file = |name: &str, n: usize| {
        let mut bytes = Vec::with_capacity(n * (1 + CIFAR_IMAGE_BYTES));
        for _ in 0..n {
            bytes.push(rng.gen_range(0..10u8));
            bytes.extend((0..CIFAR_IMAGE_BYTES).map(|_| rng.gen::<u8>()));
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    for b in 1..=5 {
        file(&format!("data_batch_{b}.bin"), per_batch);
    }
    file("test_batch.bin", test);
}
