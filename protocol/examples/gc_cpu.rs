//! Dev-only: CPU time (schedstat) per ReLU of garble/evaluate on one thread.
//! `GC_CPU_ONLY="aes-ni half-gates"` runs one kernel and scheme.
use pibench_protocol::gc::engine::{self, CircuitShape};
use pibench_protocol::gc::engine::{GarbleSeeds, GarblerKeys, Garbling};
use pibench_protocol::gc::hash::{AesPrg, FixedKeyHash, Kernel};
use pibench_protocol::gc::{ActivationKind, CircuitSpec, Scheme};
use std::time::Duration;

/// Seconds of this thread's CPU time, or of wall time with `GC_CPU_WALL`
/// set (on an idle machine: the scheduler's CPU clock advances in 4 ms
/// ticks on some VMs, too coarse for short runs).
fn cpu() -> f64 {
    if std::env::var_os("GC_CPU_WALL").is_some() {
        static T0: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        return T0
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_secs_f64();
    }
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    s.split_whitespace().next().unwrap().parse::<f64>().unwrap() * 1e-9
}

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(4096);
    let reps: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(5);
    let hash = FixedKeyHash::new();
    // AES unit in CPU time.
    let c0 = cpu();
    let rate_wall = hash.aes_blocks_per_second(Duration::from_millis(500));
    let c1 = cpu();
    let rate_cpu = rate_wall * 0.5 / (c1 - c0).max(1e-9);
    println!(
        "AES blocks/s wall {rate_wall:.3e}, cpu {rate_cpu:.3e} ({:.2} ns/block cpu)",
        1e9 / rate_cpu
    );
    let spec = CircuitSpec::default_fixed_point();
    for (kernel, scheme) in Kernel::available()
        .into_iter()
        .flat_map(|k| [(k, Scheme::HalfGates), (k, Scheme::ThreeHalves)])
    {
        let hash = FixedKeyHash::with_kernel(kernel).unwrap();
        let shape = CircuitShape::new(spec, ActivationKind::Relu, scheme);
        let n = shape.input_bits();
        let mut prg = AesPrg::new(42);
        let delta = engine::random_delta(&mut prg);
        let a_h: Vec<u64> = (0..count)
            .map(|_| (prg.next_block() as u64) % spec.modulus)
            .collect();
        let mut q = vec![0u128; count * n];
        prg.fill(&mut q);
        let mut bits = vec![0u128; count * n];
        prg.fill(&mut bits);
        let eval: Vec<u128> = q
            .iter()
            .zip(&bits)
            .map(|(&l, &b)| if b & 1 == 1 { l ^ delta } else { l })
            .collect();
        if let Ok(only) = std::env::var("GC_CPU_ONLY") {
            if only != format!("{} {}", kernel.name(), scheme.name()) {
                continue;
            }
        }
        let mut gt = Vec::new();
        let mut et = Vec::new();
        // Buffers kept across repetitions, as the protocol's garbler keeps them.
        let mut g = Garbling::default();
        let mut k = GarblerKeys {
            delta,
            input_zero_labels: Vec::new(),
            output_masks: Vec::new(),
        };
        for _ in 0..reps {
            let c0 = cpu();
            let seeds = GarbleSeeds::draw(&mut prg);
            engine::garble_with(&hash, &shape, delta, 0, &q, seeds, "dev", &mut g, &mut k).unwrap();
            let c1 = cpu();
            let labels = engine::encode_garbler_inputs(&shape, &k, &a_h, "dev").unwrap();
            let c2 = cpu();
            let z = engine::evaluate_with(&hash, &shape, 0, &g, &labels, &eval, "dev").unwrap();
            let c3 = cpu();
            std::hint::black_box(z);
            gt.push((c1 - c0) * 1e9 / count as f64);
            et.push((c3 - c2) * 1e9 / count as f64);
        }
        // Means as well as medians: the CPU clock moves in scheduler ticks
        // on some VMs, so a median of short repetitions sits on a tick
        // multiple while the mean of many averages the ticks out.
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (gm, em) = (mean(&gt), mean(&et));
        gt.sort_by(f64::total_cmp);
        et.sort_by(f64::total_cmp);
        let (g, e) = (gt[gt.len() / 2], et[et.len() / 2]);
        println!(
            "{:>8} {:>12}: garble {:.0} ns cpu = {:.0} AES-block times; evaluate {:.0} ns = {:.0} AES-block times  (min {:.0} / {:.0}; mean {:.0} / {:.0})",
            kernel.name(), scheme.name(), g, g * rate_cpu / 1e9, e, e * rate_cpu / 1e9, gt[0], et[0], gm, em
        );
    }
}
