//! `pibench micro linear`: the HE offline phase of a network's linear layers.
//!
//! Runs the real two-party protocol (client and server as tokio tasks over
//! an in-memory duplex) layer by layer with the network's (seeded, BN-folded,
//! fixed-point) weights, checks every layer against the plaintext twin, and
//! reports per layer the client's encrypt / decrypt time, the server's
//! evaluation time, ciphertext bytes each way (counted on the channel),
//! rotations (0: coefficient encoding), multiplications and packing.

use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use pibench_models::arch::ArchSpec;
use pibench_models::fixed::{self, FixedPoint, P};
use pibench_models::graph::{FeatureShape, Init};
use pibench_models::reference::EncodedNetwork;
use pibench_protocol::he::linear::{layer_weights, reference_linear, LayerShape, LinearPlan};
use pibench_protocol::he::proto::{self, ClientLayerStats, ServerLayerStats};
use pibench_protocol::he::store::{OfflineStore, Role};
use pibench_protocol::he::{ClientKeys, HeParams};
use pibench_protocol::net;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;

/// Output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    /// Human-readable table.
    Table,
    /// One JSON object.
    Json,
}

/// Dataset (decides the input shape and the number of classes).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DatasetArg {
    /// 3×32×32, 10 classes.
    Cifar10,
    /// 3×32×32, 100 classes.
    Cifar100,
    /// 3×64×64, 200 classes.
    Tinyimagenet,
}

/// Arguments of `pibench micro linear`.
#[derive(Debug, Args)]
pub struct LinearArgs {
    /// Architecture (resnet18, resnet34, resnet50, vgg11/13/16/19, wrn22_8, hrn-…).
    #[arg(long, default_value = "resnet18")]
    model: String,
    /// Dataset.
    #[arg(long, value_enum, default_value_t = DatasetArg::Cifar100)]
    dataset: DatasetArg,
    /// Output format.
    #[arg(long, value_enum, default_value_t = FormatArg::Table)]
    format: FormatArg,
    /// Use small insecure parameters (N = 2048; tests and smoke runs only).
    #[arg(long)]
    insecure_test_params: bool,
    /// Only the first N linear layers.
    #[arg(long)]
    layers: Option<usize>,
    /// Server worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Skip the plaintext check of every layer.
    #[arg(long)]
    no_verify: bool,
    /// Stream each layer's shares (client `c`, server `s`) to per-layer files
    /// in this directory instead of keeping them in memory.
    #[arg(long)]
    store: Option<std::path::PathBuf>,
}

#[derive(Debug, serde::Serialize)]
struct LayerReport {
    name: String,
    shape: LayerShape,
    tiles: usize,
    channels_per_ct: usize,
    out_channels_per_ct: usize,
    input_ciphertexts: usize,
    output_ciphertexts: usize,
    multiplications: usize,
    rotations: usize,
    noise_bound_bits: f64,
    flood_bits: u32,
    client: ClientLayerStats,
    server: ServerLayerStats,
    bytes_client_to_server: u64,
    bytes_server_to_client: u64,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    model: String,
    dataset: String,
    poly_degree: u64,
    coeff_bits: Vec<i32>,
    insecure_test_params: bool,
    threads: usize,
    setup_bytes: u64,
    layers: Vec<LayerReport>,
    total_encrypt_s: f64,
    total_evaluate_s: f64,
    total_decrypt_s: f64,
    total_wall_s: f64,
    total_bytes_client_to_server: u64,
    total_bytes_server_to_client: u64,
    total_rotations: usize,
    verified: bool,
}

/// Runs the command.
pub fn run(args: LinearArgs) -> anyhow::Result<()> {
    let (input, classes, dataset) = match args.dataset {
        DatasetArg::Cifar10 => (FeatureShape::new(3, 32, 32), 10, "cifar10"),
        DatasetArg::Cifar100 => (FeatureShape::new(3, 32, 32), 100, "cifar100"),
        DatasetArg::Tinyimagenet => (FeatureShape::new(3, 64, 64), 200, "tinyimagenet"),
    };
    let spec = ArchSpec::parse(&args.model).with_context(|| format!("model {}", args.model))?;
    let net = spec.build(input, classes, Init::Seeded(1))?;
    let mut infos = net.linear_layers();
    if let Some(n) = args.layers {
        infos.truncate(n);
    }
    let params = if args.insecure_test_params {
        HeParams::insecure_test_linear()
    } else {
        HeParams::linear()
    };
    let ctx = params.context()?;
    let encoded = EncodedNetwork::new(&net, FixedPoint::default())?;
    let mut plans = Vec::new();
    let mut weights = Vec::new();
    for info in &infos {
        plans.push(LinearPlan::new(
            &ctx,
            &info.name,
            LayerShape::from_info(info),
        )?);
        weights.push(layer_weights(&encoded, info)?);
    }
    let mut rng = ChaCha12Rng::from_entropy();
    let masks: Vec<Vec<u64>> = plans
        .iter()
        .map(|p| {
            (0..p.shape.input_len())
                .map(|_| rng.gen_range(0..P))
                .collect()
        })
        .collect();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let threads = args.threads;
    let store = args.store.as_ref().map(OfflineStore::open).transpose()?;
    let server_store = store.clone();
    let started = Instant::now();
    let (client_out, server_out) = rt.block_on(async {
        let (mut cchan, mut schan) = net::duplex_pair();
        let server_plans = plans.clone();
        let server_weights = weights.clone();
        let server = tokio::spawn(async move {
            let ctx = params.context()?;
            let mut rng = ChaCha12Rng::from_entropy();
            schan.set_phase("offline/he/setup");
            let keys = proto::server_setup(&mut schan, &ctx).await?;
            let mut out = Vec::new();
            for (i, plan) in server_plans.iter().enumerate() {
                schan.set_phase(format!("offline/he/{i}"));
                let (share, stats) = proto::server_layer(
                    &mut schan,
                    &ctx,
                    &keys,
                    i as u32,
                    plan,
                    &server_weights[i],
                    threads,
                    &mut rng,
                )
                .await?;
                out.push(match &server_store {
                    Some(st) => {
                        st.write(Role::Server, i as u32, &share)?;
                        (Vec::new(), stats)
                    }
                    None => (share, stats),
                });
            }
            anyhow::Ok(out)
        });
        let keys = ClientKeys::generate(&ctx)?;
        cchan.set_phase("offline/he/setup");
        proto::client_setup(&mut cchan, &keys).await?;
        let mut out = Vec::new();
        for (i, plan) in plans.iter().enumerate() {
            cchan.set_phase(format!("offline/he/{i}"));
            let (share, stats) =
                proto::client_layer(&mut cchan, &ctx, &keys, i as u32, plan, &masks[i]).await?;
            out.push(match &store {
                Some(st) => {
                    st.write(Role::Client, i as u32, &share)?;
                    (Vec::new(), stats)
                }
                None => (share, stats),
            });
        }
        let server_out = server.await??;
        anyhow::Ok(((out, cchan.meter().clone()), server_out))
    })?;
    let total_wall_s = started.elapsed().as_secs_f64();
    let (client_out, meter) = client_out;

    let verified = !args.no_verify;
    if verified {
        for (i, plan) in plans.iter().enumerate() {
            let expected = reference_linear(&plan.shape, &weights[i], &masks[i]);
            let (c, s) = match &store {
                Some(st) => {
                    let len = plan.shape.output_len();
                    (
                        st.read(Role::Client, i as u32, len)?,
                        st.read(Role::Server, i as u32, len)?,
                    )
                }
                None => (client_out[i].0.clone(), server_out[i].0.clone()),
            };
            let got: Vec<u64> = c.iter().zip(&s).map(|(&c, &s)| fixed::add(c, s)).collect();
            if got != expected {
                bail!("layer {i} ({}): c + s differs from M·r", plan.layer);
            }
        }
    }
    let mut layers = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        let t = meter.get(&format!("offline/he/{i}"));
        layers.push(LayerReport {
            name: plan.layer.clone(),
            shape: plan.shape,
            tiles: plan.tiles.len(),
            channels_per_ct: plan.cb,
            out_channels_per_ct: plan.m,
            input_ciphertexts: plan.input_ciphertexts(),
            output_ciphertexts: plan.output_ciphertexts(),
            multiplications: plan.multiplications(),
            rotations: plan.rotations(),
            noise_bound_bits: plan.noise_bound_bits,
            flood_bits: plan.flood_bits,
            client: client_out[i].1,
            server: server_out[i].1,
            bytes_client_to_server: t.bytes_sent,
            bytes_server_to_client: t.bytes_received,
        });
    }
    let report = Report {
        model: net.name.clone(),
        dataset: dataset.into(),
        poly_degree: ctx.params.poly_degree,
        coeff_bits: ctx.params.coeff_bits.clone(),
        insecure_test_params: args.insecure_test_params,
        threads,
        setup_bytes: meter.get("offline/he/setup").bytes_sent,
        total_encrypt_s: layers.iter().map(|l| l.client.encrypt_s).sum(),
        total_evaluate_s: layers.iter().map(|l| l.server.evaluate_s).sum(),
        total_decrypt_s: layers.iter().map(|l| l.client.decrypt_s).sum(),
        total_wall_s,
        total_bytes_client_to_server: layers.iter().map(|l| l.bytes_client_to_server).sum(),
        total_bytes_server_to_client: layers.iter().map(|l| l.bytes_server_to_client).sum(),
        total_rotations: layers.iter().map(|l| l.rotations).sum(),
        layers,
        verified,
    };
    match args.format {
        FormatArg::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        FormatArg::Table => print_table(&report),
    }
    Ok(())
}

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

fn print_table(r: &Report) {
    println!(
        "{} / {}: BFV N = {}, q bits {:?}{}, {} server threads",
        r.model,
        r.dataset,
        r.poly_degree,
        r.coeff_bits,
        if r.insecure_test_params {
            " (INSECURE test parameters)"
        } else {
            ""
        },
        r.threads
    );
    println!(
        "{:<22} {:>5} {:>5} {:>4} {:>3} {:>4} {:>5} {:>5} {:>6} {:>4} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "layer", "cin", "cout", "hw", "k", "s", "ct_in", "ctout", "mults", "rot", "enc s", "eval s",
        "dec s", "c→s MB", "s→c MB"
    );
    for l in &r.layers {
        println!(
            "{:<22} {:>5} {:>5} {:>4} {:>3} {:>4} {:>5} {:>5} {:>6} {:>4} {:>8.3} {:>8.3} {:>8.3} {:>9.2} {:>9.2}",
            l.name,
            l.shape.cin,
            l.shape.cout,
            l.shape.h,
            l.shape.kh,
            l.shape.stride,
            l.input_ciphertexts,
            l.output_ciphertexts,
            l.multiplications,
            l.rotations,
            l.client.encrypt_s,
            l.server.evaluate_s,
            l.client.decrypt_s,
            mb(l.bytes_client_to_server),
            mb(l.bytes_server_to_client)
        );
    }
    println!(
        "total: encrypt {:.2} s, evaluate {:.2} s, decrypt {:.2} s, wall {:.2} s; traffic {:.1} MB c→s + {:.1} MB s→c (+{:.2} MB key); rotations {}; verified: {}",
        r.total_encrypt_s,
        r.total_evaluate_s,
        r.total_decrypt_s,
        r.total_wall_s,
        mb(r.total_bytes_client_to_server),
        mb(r.total_bytes_server_to_client),
        mb(r.setup_bytes),
        r.total_rotations,
        r.verified
    );
}
