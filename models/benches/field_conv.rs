//! Online linear layers on shares: the exact field convolution of ResNet-18's
//! layer shapes (`reference::gemm`) against the generic kernel, per call.
//! Run: `cargo bench -p pibench-models --bench field_conv`.

use std::time::Instant;

use pibench_models::fixed::{self, P};
use pibench_models::graph::FeatureShape;
use pibench_models::reference::gemm;
use pibench_models::reference::kernels::ConvGeometry;
use rand::{Rng, SeedableRng};

fn main() {
    let threads: usize = std::env::var("THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(1);
    let shapes = [
        (64, 32, 64, 3, 1),
        (128, 16, 128, 3, 1),
        (256, 8, 256, 3, 1),
        (512, 4, 512, 3, 1),
        (64, 32, 128, 3, 2),
    ];
    let mut total = 0.0;
    for (c, hw, cout, k, stride) in shapes {
        let g = ConvGeometry {
            input: FeatureShape::new(c, hw, hw),
            cout,
            kernel: k,
            stride,
            padding: 1,
            groups: 1,
        };
        let x: Vec<u64> = (0..g.input.len()).map(|_| rng.gen_range(0..P)).collect();
        let w: Vec<u64> = (0..cout * c * k * k)
            .map(|_| fixed::from_i64(rng.gen_range(-30000..30000)))
            .collect();
        let b: Vec<u64> = (0..cout).map(|_| rng.gen_range(0..P)).collect();
        let o = g.output();
        let macs = (o.len() * c * k * k) as f64;
        let reps = 5;
        // Weights prepared once, as the server does at model load.
        let pw = gemm::PreparedWeights::conv(&w, &g);
        let t = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(gemm::conv2d_field_prepared(
                &x,
                &w,
                &pw,
                Some(&b),
                &g,
                threads,
            ));
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        total += s;
        println!(
            "conv {c}x{hw}x{hw} -> {cout} k{k} s{stride}: {:.2} ms, {:.2} GMAC/s (exact, {threads} threads)",
            s * 1e3,
            macs / s / 1e9
        );
    }
    println!("sum of the five shapes: {:.1} ms", total * 1e3);
}
