//! The long fuzz run: ≥ 10^6 proptest-generated inputs per decoder a peer
//! or a file can reach (the same targets and checks as `tests/fuzz.rs`,
//! which runs a small count in `make test`): no panic, allocations within
//! each target's bound, no slow input.
//!
//! ```text
//! cargo bench -p pibench-protocol --bench fuzz_decoders -- [--count N] [--only NAME]... [--seed S]
//! ```
//!
//! Prints one line per decoder: inputs, seconds, refused share, slowest
//! input, largest allocation. Exits non-zero (a panic with the shrunk
//! input) on the first failure.

#[path = "../tests/common/fuzz_targets.rs"]
mod fuzz_targets;

use std::time::Duration;

use fuzz_targets::*;

#[global_allocator]
static ALLOC: Probe = Probe;

fn main() {
    let mut count: u32 = 1_000_000;
    let mut only: Vec<String> = Vec::new();
    let mut seed: u8 = 1;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--count" => {
                count = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--count takes a number of inputs per decoder");
            }
            "--only" => only.push(args.next().expect("--only takes a decoder name")),
            "--seed" => {
                seed = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--seed takes a number 0..=255");
            }
            // cargo bench passes --bench; ignore it and libtest-style flags.
            _ => {}
        }
    }
    let store = only.is_empty() || only.iter().any(|n| n.starts_with("store"));
    let targets = targets(store);
    let names: Vec<&str> = targets.iter().map(|t| t.name).collect();
    for o in &only {
        assert!(
            names.contains(&o.as_str()),
            "--only {o}: no such decoder (decoders: {})",
            names.join(", ")
        );
    }
    for t in targets
        .iter()
        .filter(|t| only.is_empty() || only.iter().any(|o| o == t.name))
    {
        let r = run(t, count, seed, Duration::from_secs(10));
        println!("{}: {r}", t.name);
    }
}
