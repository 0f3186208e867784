//! `pibench micro relu`: garbled truncated-ReLU micro-benchmark.
//!
//! In one process and on one core it measures fixed-key AES throughput,
//! garbling and evaluation time per ReLU (batched, no network), AND gates per
//! ReLU, and the bytes per ReLU of a real two-party run over an in-memory
//! duplex (base OT, OT extension, tables, decoding, online labels), with
//! traffic counted per phase. Results are checked against the plaintext twin.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use pibench_models::fixed::{self, P};
use pibench_protocol::gc::engine::{self, CircuitShape, GarblerKeys, Garbling};
use pibench_protocol::gc::hash::{AesPrg, FixedKeyHash};
use pibench_protocol::gc::protocol::{phase, EvaluatorSession, GarblerSession};
use pibench_protocol::gc::{ActivationKind, CircuitSpec, Scheme};
use pibench_protocol::net;
use pibench_protocol::ot::{CotReceiver, CotSender};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;

/// Garbling scheme on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SchemeArg {
    /// Half-gates (2 blocks per AND).
    HalfGates,
    /// Three-halves (1.5 blocks + 5 bits per AND).
    ThreeHalves,
}

/// Activation circuit on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KindArg {
    /// Truncation then ReLU.
    Relu,
    /// Truncation only (identity elements).
    Truncate,
}

/// Output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    /// Human-readable table.
    Table,
    /// One JSON object.
    Json,
}

/// Arguments of `pibench micro relu`.
#[derive(Debug, Args)]
pub struct ReluArgs {
    /// Number of ReLUs per batch.
    #[arg(long, default_value_t = 16384)]
    count: usize,
    /// Garbling scheme.
    #[arg(long, value_enum, default_value_t = SchemeArg::HalfGates)]
    scheme: SchemeArg,
    /// Circuit: truncated ReLU or truncate-only.
    #[arg(long, value_enum, default_value_t = KindArg::Relu)]
    kind: KindArg,
    /// Timed repetitions of garbling and evaluation (the median is reported).
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = FormatArg::Table)]
    format: FormatArg,
}

/// Measured figures of one run.
#[derive(Debug, serde::Serialize)]
struct ReluReport {
    scheme: &'static str,
    kind: &'static str,
    count: usize,
    aes_blocks_per_s: f64,
    garble_ns_per_relu: f64,
    evaluate_ns_per_relu: f64,
    garble_cpu_ns_per_relu: Option<f64>,
    evaluate_cpu_ns_per_relu: Option<f64>,
    ot_extension_ns_per_relu: f64,
    and_gates_per_relu: usize,
    free_gates_per_relu: usize,
    offline_ot_bytes_per_relu: f64,
    offline_gc_bytes_per_relu: f64,
    offline_bytes_per_relu: f64,
    base_ot_bytes: u64,
    online_gc_bytes_per_relu: f64,
    online_reveal_bytes_per_relu: f64,
    online_bytes_per_relu: f64,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// CPU time of the calling thread (Linux `schedstat`), to separate the work
/// from time lost to other processes on a shared machine.
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Wall and CPU time of `f`.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration, Option<Duration>) {
    let c0 = thread_cpu();
    let t0 = Instant::now();
    let out = f();
    let wall = t0.elapsed();
    // The kernel updates the run-time counter at scheduler ticks: below
    // ~20 ms of work the CPU figure is too coarse to report.
    let cpu = match (c0, thread_cpu()) {
        (Some(a), Some(b)) if wall >= Duration::from_millis(20) => Some(b.saturating_sub(a)),
        _ => None,
    };
    (out, wall, cpu)
}

/// Runs the command.
pub fn run(args: ReluArgs) -> anyhow::Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let scheme = match args.scheme {
        SchemeArg::HalfGates => Scheme::HalfGates,
        SchemeArg::ThreeHalves => Scheme::ThreeHalves,
    };
    let kind = match args.kind {
        KindArg::Relu => ActivationKind::Relu,
        KindArg::Truncate => ActivationKind::Truncate,
    };
    let spec = CircuitSpec::default_fixed_point();
    let shape = CircuitShape::new(spec, kind, scheme);
    let n = shape.input_bits();
    let count = args.count;
    let mut rng = ChaCha12Rng::from_entropy();

    // Random shares of random activations.
    let mut a_h = Vec::with_capacity(count);
    let mut b_h = Vec::with_capacity(count);
    for _ in 0..count {
        let y = fixed::from_i64(rng.gen_range(-(1i64 << 30)..(1i64 << 30)));
        let a = rng.gen_range(0..P);
        let b = fixed::sub(y, a);
        a_h.push(a >> spec.trunc_bits);
        b_h.push(b >> spec.trunc_bits);
    }
    let expected = engine::evaluate_plain_batch(&shape, &a_h, &b_h);

    let hash = FixedKeyHash::new();
    let aes_blocks_per_s = hash.aes_blocks_per_second(Duration::from_millis(300));

    // Correlated OT without a network, timed (both parties' work).
    let (base, m1) = CotReceiver::base_start(&mut rng);
    let (mut sender, m2) = CotSender::base_respond(&m1, &mut rng)?;
    let mut receiver = CotReceiver::base_finish(&base, &m2)?;
    let choices: Vec<bool> = b_h
        .iter()
        .flat_map(|&v| (0..n).map(move |i| (v >> i) & 1 == 1))
        .collect();
    let t0 = Instant::now();
    let (msg, eval_labels) = receiver.extend_message(&choices);
    let q = sender.extend_from(&msg, choices.len())?;
    let ot_time = t0.elapsed();

    let mut prg = AesPrg::from_rng(&mut rng);
    let delta = sender.delta();
    let mut garble_times = Vec::new();
    let mut eval_times = Vec::new();
    let mut garble_cpu = Vec::new();
    let mut eval_cpu = Vec::new();
    let mut garbling = Garbling::default();
    let mut keys = GarblerKeys {
        delta,
        input_zero_labels: Vec::new(),
        output_masks: Vec::new(),
    };
    // One untimed warm-up fills the reused buffers (as a streaming garbler would).
    engine::garble_into(
        &shape,
        delta,
        0,
        &q,
        &mut prg,
        "micro",
        &mut garbling,
        &mut keys,
    )?;
    for rep in 1..=args.repeat.max(1) {
        let batch = rep as u64;
        let (res, wall, cpu) = timed(|| {
            engine::garble_into(
                &shape,
                delta,
                batch,
                &q,
                &mut prg,
                "micro",
                &mut garbling,
                &mut keys,
            )
        });
        res?;
        garble_times.push(wall);
        garble_cpu.extend(cpu);
        let labels = engine::encode_garbler_inputs(&shape, &keys, &a_h, "micro")?;
        let (z, wall, cpu) =
            timed(|| engine::evaluate(&shape, batch, &garbling, &labels, &eval_labels, "micro"));
        let z = z?;
        eval_times.push(wall);
        eval_cpu.extend(cpu);
        for (i, ((z, rho), want)) in z.iter().zip(&keys.output_masks).zip(&expected).enumerate() {
            if fixed::sub(*z, *rho) != *want {
                bail!(
                    "self-check failed at ReLU {i}: garbled result differs from the plaintext twin"
                );
            }
        }
    }
    let per_relu = |d: Duration| d.as_nanos() as f64 / count as f64;
    let cpu_median = |v: Vec<Duration>| (!v.is_empty()).then(|| per_relu(median(v)));

    // Bytes: a real two-party run over an in-memory duplex, on one thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("starting the tokio runtime")?;
    let ((base_ot_bytes, garbler_meter), evaluator_meter) = rt.block_on(async {
        let (mut cs, mut cc) = net::duplex_pair();
        let shape_s = shape.clone();
        let shape_c = shape.clone();
        let a_h_s = a_h.clone();
        let server = async move {
            let mut rng = ChaCha12Rng::from_entropy();
            let mut session = GarblerSession::setup(&mut cs, &mut rng).await?;
            let base = cs.meter().get(phase::OFFLINE_OT);
            let site = session
                .offline(&mut cs, &shape_s, a_h_s.len(), "micro")
                .await?;
            session.online(&mut cs, &site, &a_h_s, "micro").await?;
            Ok::<_, anyhow::Error>((base.bytes_sent + base.bytes_received, cs.meter().clone()))
        };
        let client = async move {
            let mut rng = ChaCha12Rng::from_entropy();
            let mut session = EvaluatorSession::setup(&mut cc, &mut rng).await?;
            let site = session.offline(&mut cc, &shape_c, &b_h, "micro").await?;
            let z = session.online(&mut cc, &site, "micro").await?;
            Ok::<_, anyhow::Error>((cc.meter().clone(), z.len()))
        };
        let (s, c) = tokio::join!(server, client);
        let (cm, zlen) = c?;
        if zlen != count {
            bail!("two-party run returned {zlen} results for {count} ReLUs");
        }
        Ok::<_, anyhow::Error>((s?, cm))
    })?;
    if evaluator_meter.total("").bytes_sent != garbler_meter.total("").bytes_received {
        bail!("the two parties' byte counts disagree");
    }
    let per = |bytes: u64| bytes as f64 / count as f64;
    let ot = garbler_meter.get(phase::OFFLINE_OT);
    let gc = garbler_meter.get(phase::OFFLINE_GC);
    let on = garbler_meter.get(phase::ONLINE_GC);
    let ot_bytes = ot.bytes_sent + ot.bytes_received;
    let ext_bytes = ot_bytes.saturating_sub(base_ot_bytes);
    let gc_bytes = gc.bytes_sent + gc.bytes_received;
    let online_bytes = on.bytes_sent + on.bytes_received;
    // The client's masked result `z − r_next` (one field element) ends the online round.
    let reveal = 8.0;
    let report = ReluReport {
        scheme: scheme.name(),
        kind: match kind {
            ActivationKind::Relu => "relu",
            ActivationKind::Truncate => "truncate",
        },
        count,
        aes_blocks_per_s,
        garble_ns_per_relu: per_relu(median(garble_times)),
        evaluate_ns_per_relu: per_relu(median(eval_times)),
        garble_cpu_ns_per_relu: cpu_median(garble_cpu),
        evaluate_cpu_ns_per_relu: cpu_median(eval_cpu),
        ot_extension_ns_per_relu: ot_time.as_nanos() as f64 / count as f64,
        and_gates_per_relu: shape.ands,
        free_gates_per_relu: shape.free_gates,
        offline_ot_bytes_per_relu: per(ext_bytes),
        offline_gc_bytes_per_relu: per(gc_bytes),
        offline_bytes_per_relu: per(ext_bytes + gc_bytes),
        base_ot_bytes,
        online_gc_bytes_per_relu: per(online_bytes),
        online_reveal_bytes_per_relu: reveal,
        online_bytes_per_relu: per(online_bytes) + reveal,
    };
    match args.format {
        FormatArg::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        FormatArg::Table => print_table(&report),
    }
    Ok(())
}

fn print_table(r: &ReluReport) {
    println!(
        "garbled {} ({}), {} per batch, 1 core",
        r.kind, r.scheme, r.count
    );
    let cpu = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.0}"));
    let rows: [(&str, String); 16] = [
        (
            "AES blocks/s (fixed key)",
            format!("{:.3e}", r.aes_blocks_per_s),
        ),
        ("garble ns/ReLU", format!("{:.0}", r.garble_ns_per_relu)),
        ("evaluate ns/ReLU", format!("{:.0}", r.evaluate_ns_per_relu)),
        ("garble CPU ns/ReLU", cpu(r.garble_cpu_ns_per_relu)),
        ("evaluate CPU ns/ReLU", cpu(r.evaluate_cpu_ns_per_relu)),
        (
            "OT extension ns/ReLU",
            format!("{:.0}", r.ot_extension_ns_per_relu),
        ),
        ("AND gates/ReLU", r.and_gates_per_relu.to_string()),
        ("free gates/ReLU", r.free_gates_per_relu.to_string()),
        (
            "offline OT B/ReLU",
            format!("{:.1}", r.offline_ot_bytes_per_relu),
        ),
        (
            "offline GC B/ReLU",
            format!("{:.1}", r.offline_gc_bytes_per_relu),
        ),
        (
            "offline total B/ReLU",
            format!("{:.1}", r.offline_bytes_per_relu),
        ),
        ("base OT B (once)", r.base_ot_bytes.to_string()),
        (
            "online labels B/ReLU",
            format!("{:.1}", r.online_gc_bytes_per_relu),
        ),
        (
            "online reveal B/ReLU",
            format!("{:.1}", r.online_reveal_bytes_per_relu),
        ),
        (
            "online total B/ReLU",
            format!("{:.1}", r.online_bytes_per_relu),
        ),
        (
            "tables B/ReLU (model)",
            format!(
                "{}",
                Scheme::table_bytes(
                    if r.scheme == "three-halves" {
                        Scheme::ThreeHalves
                    } else {
                        Scheme::HalfGates
                    },
                    r.and_gates_per_relu,
                )
            ),
        ),
    ];
    for (k, v) in rows {
        println!("  {k:<26} {v:>12}");
    }
}
