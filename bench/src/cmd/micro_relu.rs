//! `pibench micro relu`: garbled truncated-ReLU micro-benchmark.
//!
//! Every figure comes from a real two-party run in one process: the garbler
//! (server) and the evaluator (client) are two tokio tasks on their own
//! runtime threads, connected by an in-memory duplex; base OT, OT
//! extension, garbled tables, decoding, the garbler's online labels and the
//! client's re-shared output (`z − r'` as an
//! [`OnlineMessage::Reply`], 8 bytes per element) all cross the channel and
//! are counted per phase. Times are the stage timings the GC sessions keep
//! (`GcTimings`: OT extension, garbling, evaluation), for 1 thread and for
//! `--threads` threads per party, and are also given in AES-block times: the
//! time divided by the time of one fixed-key AES block at the aggregate rate
//! of that many threads, measured in the same run. The result is checked
//! against the plaintext twin through the real reply: the server's share
//! `reply − ρ` plus the client's `r'` must equal the twin's value.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use pibench_models::fixed::{self, P};
use pibench_protocol::gc::engine::{self, CircuitShape};
use pibench_protocol::gc::hash::{FixedKeyHash, Kernel};
use pibench_protocol::gc::protocol::{phase, EvaluatorSession, GarblerSession, GcTimings};
use pibench_protocol::gc::{ActivationKind, CircuitSpec, Scheme};
use pibench_protocol::inference::OnlineMessage;
use pibench_protocol::net::{self, Meter};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;

/// Garbling scheme on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SchemeArg {
    /// Half-gates (2 blocks per AND).
    HalfGates,
    /// Three-halves (1.5 blocks + 5 bits per AND).
    ThreeHalves,
    /// Both, side by side.
    Both,
}

/// Activation circuit on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KindArg {
    /// Truncation then ReLU.
    Relu,
    /// Truncation only (identity elements).
    Truncate,
}

/// Gate kernels on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KernelArg {
    /// The fastest this CPU supports.
    Best,
    /// The fused AES-NI gate kernels and AES unit (x86-64 with AES-NI), no
    /// VAES (the label PRG still uses VAES counter mode where the CPU has it).
    AesNi,
    /// The AES-NI kernels with 512-bit VAES half-gates and `π` (x86-64 with VAES and AVX-512).
    Vaes,
    /// The portable kernels (`aes` crate, SSE2 / u128 gate code).
    Portable,
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
    /// Number of ReLUs (one activation site of this many elements).
    #[arg(long, default_value_t = 16384)]
    count: usize,
    /// Garbling scheme.
    #[arg(long, value_enum, default_value_t = SchemeArg::HalfGates)]
    scheme: SchemeArg,
    /// Circuit: truncated ReLU or truncate-only.
    #[arg(long, value_enum, default_value_t = KindArg::Relu)]
    kind: KindArg,
    /// Threads per party for the multi-threaded runs (default: every core);
    /// a one-thread run is always made as well.
    #[arg(long)]
    threads: Option<usize>,
    /// Two-party runs per configuration (the median of each figure is reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Gate kernels.
    #[arg(long, value_enum, default_value_t = KernelArg::Best)]
    kernel: KernelArg,
    /// Output format.
    #[arg(long, value_enum, default_value_t = FormatArg::Table)]
    format: FormatArg,
}

/// A time per ReLU in nanoseconds and in AES-block times.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Cost {
    ns_per_relu: f64,
    aes_blocks_per_relu: f64,
}

/// Figures of one scheme at one thread count.
#[derive(Debug, serde::Serialize)]
struct RunReport {
    scheme: &'static str,
    threads: usize,
    kernel: &'static str,
    /// Aggregate fixed-key AES rate of `threads` threads (the unit of the AES-block figures).
    aes_blocks_per_s: f64,
    /// Garbling stage (garbler): OT labels → last table piece handed to the channel.
    garble: Cost,
    /// Evaluation stage (evaluator): first label message → last result.
    evaluate: Cost,
    /// OT-extension stage (both parties at once, wall time of the longer side).
    ot_extension: Cost,
    /// The garbler's online label encoding and sending.
    encode: Cost,
    /// AES blocks per ReLU the gates need (4 / 6 garbling, 2 / 3 evaluating per AND).
    garble_aes_floor: usize,
    evaluate_aes_floor: usize,
    /// Stage time over the gates' AES floor.
    garble_over_floor: f64,
    evaluate_over_floor: f64,
    and_gates_per_relu: usize,
    free_gates_per_relu: usize,
    offline_ot_bytes_per_relu: f64,
    offline_gc_bytes_per_relu: f64,
    offline_bytes_per_relu: f64,
    base_ot_bytes: u64,
    online_gc_bytes_per_relu: f64,
    online_reveal_bytes_per_relu: f64,
    online_bytes_per_relu: f64,
    /// Speed-up of each stage over the one-thread run (1 for the one-thread run).
    garble_speedup: f64,
    evaluate_speedup: f64,
    ot_speedup: f64,
}

/// What `--format json` prints.
#[derive(Debug, serde::Serialize)]
struct ReluReport {
    kind: &'static str,
    count: usize,
    repeat: usize,
    cores: usize,
    runs: Vec<RunReport>,
}

/// What one two-party run measured.
#[derive(Debug, Clone)]
struct Sample {
    garbler: GcTimings,
    evaluator: GcTimings,
    garbler_meter: Meter,
    base_ot_bytes: u64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One two-party run: offline and online for `a_h`/`b_h`, then the client's
/// reply `z − r'`; checks the reconstructed values against `expected`.
#[allow(clippy::too_many_arguments)]
fn two_party_run(
    shape: &CircuitShape,
    a_h: &[u64],
    b_h: &[u64],
    expected: &[u64],
    threads: usize,
    kernel: Kernel,
    seed: u64,
) -> anyhow::Result<Sample> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let count = a_h.len();
    let (garbler, evaluator) = rt.block_on(async {
        let (mut cs, mut cc) = net::duplex_pair();
        let shape_s = shape.clone();
        let shape_c = shape.clone();
        let a_h = a_h.to_vec();
        let b_h = b_h.to_vec();
        let server = tokio::spawn(async move {
            let mut rng = ChaCha12Rng::seed_from_u64(seed);
            let mut session = GarblerSession::setup(&mut cs, &mut rng).await?;
            session.set_threads(threads);
            session.set_kernel(kernel)?;
            let base = cs.meter().get(phase::OFFLINE_OT);
            let site = session.offline(&mut cs, &shape_s, count, "micro").await?;
            session.online(&mut cs, &site, &a_h, "micro").await?;
            // The client's re-shared output: the server's share is reply − ρ.
            cs.set_phase("online/reply");
            let reply = match cs.recv::<OnlineMessage>().await? {
                OnlineMessage::Reply { values, .. } if values.len() == count => values,
                other => bail!("expected the client's reply of {count} values, got {other:?}"),
            };
            let shares: Vec<u64> = reply
                .iter()
                .zip(site.output_masks())
                .map(|(&v, rho)| fixed::sub(v, rho))
                .collect();
            Ok::<_, anyhow::Error>((
                shares,
                session.timings(),
                cs.meter().clone(),
                base.bytes_sent + base.bytes_received,
            ))
        });
        let client = tokio::spawn(async move {
            let mut rng = ChaCha12Rng::seed_from_u64(seed ^ 0x9e37_79b9);
            let mut session = EvaluatorSession::setup(&mut cc, &mut rng).await?;
            session.set_threads(threads);
            session.set_kernel(kernel)?;
            let site = session.offline(&mut cc, &shape_c, &b_h, "micro").await?;
            let z = session.online(&mut cc, &site, "micro").await?;
            // Re-share: the client keeps r', sends z − r' (one field element per ReLU).
            let r_next: Vec<u64> = (0..z.len()).map(|_| rng.gen_range(0..P)).collect();
            let values = z
                .iter()
                .zip(&r_next)
                .map(|(&z, &r)| fixed::sub(z, r))
                .collect();
            cc.set_phase("online/reply");
            cc.send(&OnlineMessage::Reply {
                node: 0,
                step: 0,
                values,
            })
            .await?;
            cc.flush().await?;
            Ok::<_, anyhow::Error>((r_next, session.timings(), cc.meter().clone()))
        });
        let s = server.await.context("garbler task")??;
        let c = client.await.context("evaluator task")??;
        Ok::<_, anyhow::Error>((s, c))
    })?;
    let (shares, gt, gm, base) = garbler;
    let (r_next, et, em) = evaluator;
    for (i, ((s, r), want)) in shares.iter().zip(&r_next).zip(expected).enumerate() {
        if fixed::add(*s, *r) != *want {
            bail!("self-check failed at ReLU {i}: the two-party result differs from the plaintext twin");
        }
    }
    if em.total("").bytes_sent != gm.total("").bytes_received
        || em.total("").bytes_received != gm.total("").bytes_sent
    {
        bail!("the two parties' byte counts disagree");
    }
    Ok(Sample {
        garbler: gt,
        evaluator: et,
        garbler_meter: gm,
        base_ot_bytes: base,
    })
}

/// Runs the command.
pub fn run(args: ReluArgs) -> anyhow::Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let schemes: Vec<Scheme> = match args.scheme {
        SchemeArg::HalfGates => vec![Scheme::HalfGates],
        SchemeArg::ThreeHalves => vec![Scheme::ThreeHalves],
        SchemeArg::Both => vec![Scheme::HalfGates, Scheme::ThreeHalves],
    };
    let kind = match args.kind {
        KindArg::Relu => ActivationKind::Relu,
        KindArg::Truncate => ActivationKind::Truncate,
    };
    let kernel = match args.kernel {
        KernelArg::Best => Kernel::best(),
        KernelArg::AesNi => Kernel::AesNi,
        KernelArg::Vaes => Kernel::Vaes,
        KernelArg::Portable => Kernel::Portable,
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let many = args.threads.unwrap_or(cores).max(1);
    let mut thread_counts = vec![1];
    if many > 1 {
        thread_counts.push(many);
    }
    let spec = CircuitSpec::default_fixed_point();
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
    let hash = FixedKeyHash::with_kernel(kernel)?;
    let mut runs = Vec::new();
    for &scheme in &schemes {
        let shape = CircuitShape::new(spec, kind, scheme);
        let expected = engine::evaluate_plain_batch(&shape, &a_h, &b_h);
        let mut one_thread: Option<(f64, f64, f64)> = None;
        for &threads in &thread_counts {
            // The unit: fixed-key AES blocks per second with this many threads at once.
            let aes = hash.aes_blocks_per_second_threads(threads, Duration::from_millis(300));
            let mut samples = Vec::new();
            for rep in 0..args.repeat.max(1) {
                samples.push(two_party_run(
                    &shape,
                    &a_h,
                    &b_h,
                    &expected,
                    threads,
                    kernel,
                    rng.gen::<u64>() ^ rep as u64,
                )?);
            }
            let per = |f: &dyn Fn(&Sample) -> f64| {
                median(samples.iter().map(f).collect()) * 1e9 / count as f64
            };
            let cost = |ns: f64| Cost {
                ns_per_relu: ns,
                aes_blocks_per_relu: ns * aes / 1e9,
            };
            let garble = cost(per(&|s| s.garbler.garble_s));
            let evaluate = cost(per(&|s| s.evaluator.evaluate_s));
            let ot = cost(per(&|s| s.garbler.ot_s.max(s.evaluator.ot_s)));
            let encode = cost(per(&|s| s.garbler.encode_s));
            let base = one_thread.get_or_insert((
                garble.ns_per_relu,
                evaluate.ns_per_relu,
                ot.ns_per_relu,
            ));
            let (garble_speedup, evaluate_speedup, ot_speedup) = (
                base.0 / garble.ns_per_relu,
                base.1 / evaluate.ns_per_relu,
                base.2 / ot.ns_per_relu,
            );
            let s = &samples[0];
            let bytes = |p: &str| {
                let t = s.garbler_meter.get(p);
                (t.bytes_sent + t.bytes_received) as f64 / count as f64
            };
            let ot_bytes = bytes(phase::OFFLINE_OT) - s.base_ot_bytes as f64 / count as f64;
            let gc_bytes = bytes(phase::OFFLINE_GC);
            let online_gc = bytes(phase::ONLINE_GC);
            let reveal = bytes("online/reply");
            let (g_per_and, e_per_and) = match scheme {
                Scheme::HalfGates => (4, 2),
                Scheme::ThreeHalves => (6, 3),
            };
            let garble_floor = g_per_and * shape.ands;
            let evaluate_floor = e_per_and * shape.ands;
            runs.push(RunReport {
                scheme: scheme.name(),
                threads,
                kernel: kernel.name(),
                aes_blocks_per_s: aes,
                garble,
                evaluate,
                ot_extension: ot,
                encode,
                garble_aes_floor: garble_floor,
                evaluate_aes_floor: evaluate_floor,
                garble_over_floor: garble.aes_blocks_per_relu / garble_floor as f64,
                evaluate_over_floor: evaluate.aes_blocks_per_relu / evaluate_floor as f64,
                and_gates_per_relu: shape.ands,
                free_gates_per_relu: shape.free_gates,
                offline_ot_bytes_per_relu: ot_bytes,
                offline_gc_bytes_per_relu: gc_bytes,
                offline_bytes_per_relu: ot_bytes + gc_bytes,
                base_ot_bytes: s.base_ot_bytes,
                online_gc_bytes_per_relu: online_gc,
                online_reveal_bytes_per_relu: reveal,
                online_bytes_per_relu: online_gc + reveal,
                garble_speedup,
                evaluate_speedup,
                ot_speedup,
            });
        }
    }
    let report = ReluReport {
        kind: match kind {
            ActivationKind::Relu => "relu",
            ActivationKind::Truncate => "truncate",
            ActivationKind::MaxRelu { .. } => "max-relu",
            ActivationKind::Max { .. } => "max",
        },
        count,
        repeat: args.repeat.max(1),
        cores,
        runs,
    };
    match args.format {
        FormatArg::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        FormatArg::Table => print_table(&report),
    }
    Ok(())
}

fn print_table(r: &ReluReport) {
    println!(
        "garbled {} × {}, two-party run in one process (duplex), median of {}; {} cores",
        r.kind, r.count, r.repeat, r.cores
    );
    let head: Vec<String> = r
        .runs
        .iter()
        .map(|x| format!("{} ×{}", x.scheme, x.threads))
        .collect();
    print!("  {:<34}", "");
    for h in &head {
        print!(" {h:>18}");
    }
    println!();
    type Row<'a> = (&'a str, Box<dyn Fn(&RunReport) -> String>);
    let rows: Vec<Row> = vec![
        ("kernel", Box::new(|x| x.kernel.to_string())),
        (
            "AES blocks/s (fixed key, threads)",
            Box::new(|x| format!("{:.3e}", x.aes_blocks_per_s)),
        ),
        (
            "garble ns/ReLU",
            Box::new(|x| format!("{:.0}", x.garble.ns_per_relu)),
        ),
        (
            "garble AES-block times/ReLU",
            Box::new(|x| format!("{:.0}", x.garble.aes_blocks_per_relu)),
        ),
        (
            "  (AES floor, ratio)",
            Box::new(|x| format!("{} {:.2}×", x.garble_aes_floor, x.garble_over_floor)),
        ),
        (
            "evaluate ns/ReLU",
            Box::new(|x| format!("{:.0}", x.evaluate.ns_per_relu)),
        ),
        (
            "evaluate AES-block times/ReLU",
            Box::new(|x| format!("{:.0}", x.evaluate.aes_blocks_per_relu)),
        ),
        (
            "  (AES floor, ratio)",
            Box::new(|x| format!("{} {:.2}×", x.evaluate_aes_floor, x.evaluate_over_floor)),
        ),
        (
            "OT extension ns/ReLU",
            Box::new(|x| format!("{:.0}", x.ot_extension.ns_per_relu)),
        ),
        (
            "OT extension AES-block times/ReLU",
            Box::new(|x| format!("{:.0}", x.ot_extension.aes_blocks_per_relu)),
        ),
        (
            "label encoding ns/ReLU",
            Box::new(|x| format!("{:.0}", x.encode.ns_per_relu)),
        ),
        (
            "speed-up garble / eval / OT",
            Box::new(|x| {
                format!(
                    "{:.2} {:.2} {:.2}",
                    x.garble_speedup, x.evaluate_speedup, x.ot_speedup
                )
            }),
        ),
        (
            "AND gates/ReLU",
            Box::new(|x| x.and_gates_per_relu.to_string()),
        ),
        (
            "free gates/ReLU",
            Box::new(|x| x.free_gates_per_relu.to_string()),
        ),
        (
            "offline OT B/ReLU",
            Box::new(|x| format!("{:.1}", x.offline_ot_bytes_per_relu)),
        ),
        (
            "offline GC B/ReLU",
            Box::new(|x| format!("{:.1}", x.offline_gc_bytes_per_relu)),
        ),
        (
            "offline total B/ReLU",
            Box::new(|x| format!("{:.1}", x.offline_bytes_per_relu)),
        ),
        (
            "base OT B (once)",
            Box::new(|x| x.base_ot_bytes.to_string()),
        ),
        (
            "online labels B/ReLU",
            Box::new(|x| format!("{:.1}", x.online_gc_bytes_per_relu)),
        ),
        (
            "online reply B/ReLU",
            Box::new(|x| format!("{:.2}", x.online_reveal_bytes_per_relu)),
        ),
        (
            "online total B/ReLU",
            Box::new(|x| format!("{:.1}", x.online_bytes_per_relu)),
        ),
    ];
    for (name, f) in rows {
        print!("  {name:<34}");
        for x in &r.runs {
            print!(" {:>18}", f(x));
        }
        println!();
    }
}
