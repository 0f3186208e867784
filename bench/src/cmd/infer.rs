//! `pibench server`, `pibench client` and `pibench run`: private inference
//! between two processes (or two machines).
//!
//! `run` starts `pibench server --once` and `pibench client` as two child
//! processes on loopback, collects both parties' reports (JSON files), checks
//! the client's logits against the fixed-point reference, and prints the
//! per-layer table or one JSON document (schema: docs/RUN.md).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use pibench_models::data::{self, ImageSet};
use pibench_models::fixed;
use pibench_models::graph::FeatureShape;
use pibench_models::reference::{self, argmax, EncodedNetwork, TruncationStat};
use pibench_protocol::gc::Scheme;
use pibench_protocol::he::HeParams;
use pibench_protocol::inference::report::Traffic;
use pibench_protocol::inference::{
    run_client, run_server, ClientInput, InputSource, PartyReport, Progress, ProgressEvent,
    PublicModel, ServerModel, Settings, TruncMode,
};
use pibench_protocol::shaper::{self, NetProfile};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use super::accuracy::SplitArg;
use super::model_args::{BuiltModel, ModelArgs};

/// Truncation mode on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TruncArg {
    /// Each party truncates its own share (Delphi): free, small failure probability.
    Local,
    /// Truncate-only garbled circuit: exact, costs online labels.
    Exact,
}

/// Garbling scheme on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SchemeArg {
    /// Half-gates.
    HalfGates,
    /// Three-halves.
    ThreeHalves,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// Per-layer table.
    Table,
    /// One JSON document.
    Json,
}

/// Protocol options shared by the three commands.
#[derive(Debug, Clone, Args)]
pub struct ProtocolArgs {
    /// Truncation of identity and polynomial elements.
    #[arg(long, value_enum, default_value_t = TruncArg::Local)]
    pub trunc: TruncArg,
    /// Garbling scheme.
    #[arg(long, value_enum, default_value_t = SchemeArg::HalfGates)]
    pub scheme: SchemeArg,
    /// Worker threads (HE, online linear layers); default: all cores.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seconds a receive waits for the peer before the session is ended.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Network emulation on both parties' outgoing bytes: none, lan (3 Gbit/s, 0.3 ms RTT),
    /// wan (400 Mbit/s, 40 ms RTT) or rate=R,rtt=T (e.g. rate=1gbit,rtt=2ms). Both parties
    /// must use the same setting (checked in the handshake).
    #[arg(long, default_value = "none")]
    pub net: NetProfile,
    /// Stream the offline material to this folder, one file per layer, and read it back
    /// layer by layer online (memory stays at one layer's material).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Small, INSECURE HE parameters (N = 2048) for quick functional checks.
    #[arg(long, hide = true)]
    pub insecure_test_params: bool,
}

impl ProtocolArgs {
    fn settings(&self) -> Settings {
        let mut s = Settings {
            trunc: match self.trunc {
                TruncArg::Local => TruncMode::Local,
                TruncArg::Exact => TruncMode::Exact,
            },
            scheme: match self.scheme {
                SchemeArg::HalfGates => Scheme::HalfGates,
                SchemeArg::ThreeHalves => Scheme::ThreeHalves,
            },
            timeout: Duration::from_secs(self.timeout.max(1)),
            net: self.net,
            store: self.store.clone(),
            progress: progress(),
            ..Settings::default()
        };
        if let Some(t) = self.threads {
            s.threads = t.max(1);
        }
        if self.insecure_test_params {
            s.he_linear = HeParams::insecure_test_linear();
            s.he_poly = HeParams::insecure_test_triples();
        }
        s
    }

    fn to_flags(&self) -> Vec<String> {
        let mut v = vec![
            "--trunc".into(),
            match self.trunc {
                TruncArg::Local => "local",
                TruncArg::Exact => "exact",
            }
            .into(),
            "--scheme".into(),
            match self.scheme {
                SchemeArg::HalfGates => "half-gates",
                SchemeArg::ThreeHalves => "three-halves",
            }
            .into(),
            "--timeout".into(),
            self.timeout.to_string(),
            "--net".into(),
            self.net.spec(),
        ];
        if let Some(t) = self.threads {
            v.extend(["--threads".into(), t.to_string()]);
        }
        if let Some(d) = &self.store {
            v.extend(["--store".into(), d.display().to_string()]);
        }
        if self.insecure_test_params {
            v.push("--insecure-test-params".into());
        }
        v
    }
}

/// Arguments of `pibench server`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    protocol: ProtocolArgs,
    /// Address to listen on, e.g. 0.0.0.0:7000 (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: String,
    /// Serve one session, then exit with its status.
    #[arg(long)]
    once: bool,
    /// Sessions served at the same time (each isolated: its own channel, offline
    /// material and store subfolder); further clients wait to be accepted.
    #[arg(long, default_value_t = 1)]
    max_clients: usize,
    /// Write the bound port to this file once listening.
    #[arg(long)]
    port_file: Option<PathBuf>,
    /// Write the last session's report (JSON) to this file.
    #[arg(long)]
    report_json: Option<PathBuf>,
}

/// A dataset image as the input.
#[derive(Debug, Clone, Args)]
pub struct ImageInputArgs {
    /// Take the input image from this dataset folder (CIFAR-10/100 binary or
    /// Tiny-ImageNet, recognised by its layout), normalised as in training.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Index of the image in the split of --data.
    #[arg(long, default_value_t = 0, requires = "data")]
    pub image: usize,
    /// Split of --data (test: Tiny-ImageNet's validation images).
    #[arg(long, value_enum, default_value_t = SplitArg::Test, requires = "data")]
    pub split: SplitArg,
}

/// Where an input came from, and its label when it is a dataset image.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InputInfo {
    /// A file, a dataset image or a seeded random input.
    pub source: String,
    /// The image's label.
    pub label: Option<usize>,
}

impl ImageInputArgs {
    /// Reads the image at the network input `shape` (`None`: the dataset's
    /// native size); `None` when --data is not given.
    fn load(&self, shape: Option<FeatureShape>) -> anyhow::Result<Option<(Vec<f32>, InputInfo)>> {
        let Some(dir) = &self.data else {
            return Ok(None);
        };
        let dataset = data::detect(dir).with_context(|| {
            format!(
                "{}: not a CIFAR-10/100 binary or Tiny-ImageNet folder (no data_batch_1.bin, train.bin or wnids.txt)",
                dir.display()
            )
        })?;
        let set = ImageSet::load_one(dataset, dir, self.split.into(), self.image)?;
        let side = dataset.native_side();
        let shape = shape.unwrap_or(FeatureShape::new(3, side, side));
        set.check_input(shape)?;
        let x = set.normalised(0, shape)?;
        let info = InputInfo {
            source: format!(
                "{} {} image {} ({}, label {})",
                dataset.name(),
                set.split.name(),
                self.image,
                set.origin(0),
                set.label(0)
            ),
            label: Some(set.label(0)),
        };
        Ok(Some((x, info)))
    }
}

/// Arguments of `pibench client`.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The server's address.
    #[arg(long)]
    connect: String,
    /// A safetensors file with a tensor `input` of the network's input shape.
    #[arg(long, conflicts_with_all = ["random", "data"])]
    input: Option<PathBuf>,
    /// A seeded random input in [−2, 2) instead of --input.
    #[arg(long, conflicts_with = "data")]
    random: bool,
    #[command(flatten)]
    image: ImageInputArgs,
    /// Seed of --random.
    #[arg(long, default_value_t = 7)]
    input_seed: u64,
    /// Inferences in this session (each with its own offline phase).
    #[arg(long, default_value_t = 1)]
    inferences: usize,
    /// The model the client expects (its public hash must match the server's).
    #[arg(long)]
    expect_model: Option<String>,
    /// Dataset of --expect-model (architecture names).
    #[arg(long)]
    expect_dataset: Option<String>,
    #[command(flatten)]
    protocol: ProtocolArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = FormatArg::Table)]
    format: FormatArg,
    /// Write the report and logits (JSON) to this file.
    #[arg(long)]
    report_json: Option<PathBuf>,
}

/// Arguments of `pibench run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    protocol: ProtocolArgs,
    /// A safetensors file with a tensor `input` of the network's input shape (default: a seeded random input).
    #[arg(long, conflicts_with = "data")]
    input: Option<PathBuf>,
    #[command(flatten)]
    image: ImageInputArgs,
    /// Seed of the random input.
    #[arg(long, default_value_t = 7)]
    input_seed: u64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = FormatArg::Table)]
    format: FormatArg,
    /// Also write the JSON document to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

/// Progress reporting: phase lines on stderr when `PIBENCH_PHASE_LOG` is
/// set (tests kill processes at phase boundaries with it), an indicatif bar
/// per phase when stderr is a terminal, nothing otherwise.
fn progress() -> Option<Progress> {
    if std::env::var_os("PIBENCH_PHASE_LOG").is_some() {
        return Some(Progress(std::sync::Arc::new(|e: &ProgressEvent<'_>| {
            eprintln!(
                "pibench: phase {:?} {} inference {} node {}/{} {} {}",
                e.role, e.phase, e.inference, e.node, e.nodes, e.kind, e.name
            );
        })));
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let bar: std::sync::Mutex<Option<(String, indicatif::ProgressBar)>> =
        std::sync::Mutex::new(None);
    Some(Progress(std::sync::Arc::new(
        move |e: &ProgressEvent<'_>| {
            let Ok(mut guard) = bar.lock() else { return };
            let key = format!("{:?} {} {}", e.role, e.phase, e.inference);
            let fresh = guard.as_ref().is_none_or(|(k, _)| *k != key);
            if fresh {
                if let Some((_, b)) = guard.take() {
                    b.finish_and_clear();
                }
                let b = indicatif::ProgressBar::new(e.nodes as u64);
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{prefix:>16} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                b.set_prefix(format!("{:?} {}", e.role, e.phase).to_lowercase());
                *guard = Some((key, b));
            }
            if let Some((_, b)) = guard.as_ref() {
                b.set_position(e.node as u64);
                b.set_message(e.name.to_string());
                if e.node + 1 == e.nodes {
                    b.finish_and_clear();
                }
            }
        },
    )))
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.clamp(1, 4))
        .enable_all()
        .build()?)
}

/// What `client --report-json` writes.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClientJson {
    /// Public model name.
    pub model: String,
    /// Public model hash.
    pub model_hash: String,
    /// Logits per inference.
    pub logits: Vec<Vec<f64>>,
    /// Reports per inference.
    pub reports: Vec<PartyReport>,
    /// Where the input came from.
    #[serde(default)]
    pub input: InputInfo,
}

fn write_json(path: &Path, v: &impl Serialize) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(v)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// `pibench server`.
pub fn server(args: ServerArgs) -> anyhow::Result<()> {
    let built = args.model.build()?;
    built.require_bounded(
        args.protocol.trunc == TruncArg::Local,
        args.model.uncalibrated,
    )?;
    let model = ServerModel::new(built.net, built.fixed)?;
    let settings = args.protocol.settings();
    eprintln!(
        "pibench server: {} ({}), public hash {}…, truncation {}, {}",
        model.public.name,
        built.source,
        &model.public.hash_hex()[..16],
        settings.trunc.name(),
        settings.scheme.name()
    );
    let rt = runtime(settings.threads)?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let local = listener.local_addr()?;
        if let Some(pf) = &args.port_file {
            write_json(pf, &local.port())?;
        }
        eprintln!("pibench server: listening on {local}");
        let model = std::sync::Arc::new(model);
        let settings = std::sync::Arc::new(settings);
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(args.max_clients.max(1)));
        let report_json = args.report_json.clone();
        let mut served = 0u64;
        loop {
            let permit = slots.clone().acquire_owned().await?;
            let (stream, peer) = listener.accept().await.context("accepting a client")?;
            served += 1;
            let (model, settings, report_json) =
                (model.clone(), settings.clone(), report_json.clone());
            let session = tokio::spawn(async move {
                let _permit = permit;
                let n = served;
                eprintln!("pibench server: session {n} from {peer}: started");
                let mut ch = match shaper::tcp_channel(stream, &settings.net) {
                    Ok(ch) => ch,
                    Err(e) => {
                        eprintln!("pibench server: session {n} from {peer} ended: {e}");
                        return Err(anyhow::anyhow!("{e}"));
                    }
                };
                let mut rng = ChaCha20Rng::from_entropy();
                match run_server(&mut ch, &model, &settings, &mut rng).await {
                    Ok(out) => {
                        eprintln!("pibench server: session {n} from {peer}: done");
                        if let (Some(p), Some(r)) = (&report_json, out.reports.last()) {
                            write_json(p, r)?;
                        }
                        Ok(())
                    }
                    Err(e) => {
                        eprintln!("pibench server: session {n} from {peer} ended: {e}");
                        Err(anyhow::anyhow!("{e}"))
                    }
                }
            });
            if args.once {
                return session.await?;
            }
        }
    })
}

fn read_input(path: &Path, want: usize) -> anyhow::Result<Vec<f32>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a safetensors file: {e}", path.display()))?;
    let t = st
        .tensor("input")
        .map_err(|_| anyhow::anyhow!("{}: no tensor named `input`", path.display()))?;
    let n: usize = t.shape().iter().product();
    if n != want {
        bail!(
            "{}: tensor `input` has shape {:?} ({n} values); the network takes {want}",
            path.display(),
            t.shape()
        );
    }
    let v: Vec<f32> = match t.dtype() {
        safetensors::Dtype::F32 => t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        safetensors::Dtype::F64 => t
            .data()
            .chunks_exact(8)
            .map(|c| {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                f64::from_le_bytes(a) as f32
            })
            .collect(),
        d => bail!(
            "{}: tensor `input` is {d:?}, expected F32 or F64",
            path.display()
        ),
    };
    if v.len() != want {
        bail!("{}: tensor `input` data is truncated", path.display());
    }
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        bail!("{}: input element {i} is not finite", path.display());
    }
    Ok(v)
}

fn random_input(n: usize, seed: u64) -> Vec<f32> {
    InputSource::Random { count: 1, seed }
        .resolve(n)
        .pop()
        .unwrap_or_default()
}

/// `pibench client`.
pub fn client(args: ClientArgs) -> anyhow::Result<()> {
    let settings = args.protocol.settings();
    let expected = match &args.expect_model {
        Some(m) => {
            let ma = ModelArgs {
                model: m.clone(),
                dataset: args.expect_dataset.clone(),
                relus: None,
                no_stem_relu: false,
                seed: 1,
                act_frac_bits: pibench_models::fixed::FixedPoint::default().act_frac_bits,
                max_weight_frac_bits: pibench_models::fixed::FixedPoint::default()
                    .max_weight_frac_bits,
                uncalibrated: true,
            };
            let b = ma.build()?;
            let enc = EncodedNetwork::new(&b.net, b.fixed)?;
            Some(PublicModel::new(&b.net, &enc)?)
        }
        None => None,
    };
    if args.inferences == 0 {
        bail!("--inferences must be at least 1");
    }
    if args.input.is_none() && !args.random && args.image.data.is_none() {
        bail!("give --input FILE, --data DIR [--image K] or --random");
    }
    let mut info = InputInfo {
        source: format!("seeded random input (seed {})", args.input_seed),
        label: None,
    };
    let source = match (args.image.load(None)?, &args.input) {
        (Some((x, i)), _) => {
            info = i;
            InputSource::Values(vec![x; args.inferences])
        }
        (None, Some(p)) => {
            info.source = format!("{}", p.display());
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            let st = safetensors::SafeTensors::deserialize(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: not a safetensors file: {e}", p.display()))?;
            let n: usize = st
                .tensor("input")
                .map_err(|_| anyhow::anyhow!("{}: no tensor named `input`", p.display()))?
                .shape()
                .iter()
                .product();
            InputSource::Values(vec![read_input(p, n)?; args.inferences])
        }
        (None, None) => InputSource::Random {
            count: args.inferences,
            seed: args.input_seed,
        },
    };
    let rt = runtime(settings.threads)?;
    let outcome = rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(&args.connect)
            .await
            .with_context(|| format!("connecting to {}", args.connect))?;
        let mut ch = shaper::tcp_channel(stream, &settings.net)?;
        let input = ClientInput {
            inputs: source,
            expected,
        };
        let mut rng = ChaCha20Rng::from_entropy();
        Ok::<_, anyhow::Error>(run_client(&mut ch, &input, &settings, &mut rng).await?)
    })?;
    let json = ClientJson {
        model: outcome.public.name.clone(),
        model_hash: outcome.public.hash_hex(),
        logits: outcome.logits.clone(),
        reports: outcome.reports.clone(),
        input: info.clone(),
    };
    if let Some(p) = &args.report_json {
        write_json(p, &json)?;
    }
    match args.format {
        FormatArg::Json => println!("{}", serde_json::to_string_pretty(&json)?),
        FormatArg::Table => {
            for (k, r) in outcome.reports.iter().enumerate() {
                print_party_table(r, None);
                let l = &outcome.logits[k];
                let top = argmax(l).unwrap_or(0);
                println!("input: {}", info.source);
                if let Some(label) = info.label {
                    println!(
                        "inference {k}: class {top}, label {label} ({})",
                        if top == label { "correct" } else { "wrong" }
                    );
                }
                println!(
                    "inference {k}: argmax {} logits {:?}",
                    top,
                    l.iter()
                        .map(|v| (v * 1e4).round() / 1e4)
                        .collect::<Vec<_>>()
                );
            }
        }
    }
    Ok(())
}

/// One row of the per-layer table, both parties combined.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LayerRow {
    /// Node index.
    pub node: usize,
    /// Node name.
    pub name: String,
    /// Op kind.
    pub kind: String,
    /// ReLU / identity / polynomial elements.
    pub relus: usize,
    /// Identity elements.
    pub identity: usize,
    /// Polynomial elements.
    pub poly: usize,
    /// MACs.
    pub macs: u64,
    /// Offline seconds (client wall; includes waiting for the server).
    pub offline_s: f64,
    /// Server offline wall seconds.
    pub server_offline_s: f64,
    /// Online seconds (client wall).
    pub online_s: f64,
    /// Server online wall seconds.
    pub server_online_s: f64,
    /// With `--store`: seconds the client's read-ahead thread spent reading
    /// this node's material back, and seconds the node waited for it
    /// (server: the same two for its own store).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub store_read_s: f64,
    /// See `store_read_s`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub store_wait_s: f64,
    /// See `store_read_s`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub server_store_read_s: f64,
    /// See `store_read_s`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub server_store_wait_s: f64,
    /// Offline bytes (both directions) per phase.
    pub offline_bytes: std::collections::BTreeMap<String, u64>,
    /// Online bytes (both directions) per phase.
    pub online_bytes: std::collections::BTreeMap<String, u64>,
    /// Online rounds (client → server turns).
    pub online_rounds: u64,
}

fn rows(client: &PartyReport, server: Option<&PartyReport>) -> Vec<LayerRow> {
    client
        .nodes
        .iter()
        .map(|n| {
            let s = server.and_then(|s| s.nodes.get(n.node));
            let mut row = LayerRow {
                node: n.node,
                name: n.name.clone(),
                kind: n.kind.clone(),
                relus: n.relus,
                identity: n.identity,
                poly: n.poly,
                macs: n.macs,
                offline_s: n.offline_s,
                online_s: n.online_s,
                server_offline_s: s.map_or(0.0, |s| s.offline_s),
                server_online_s: s.map_or(0.0, |s| s.online_s),
                store_read_s: n.store_read_s,
                store_wait_s: n.store_wait_s,
                server_store_read_s: s.map_or(0.0, |s| s.store_read_s),
                server_store_wait_s: s.map_or(0.0, |s| s.store_wait_s),
                ..Default::default()
            };
            for (phase, t) in &n.traffic {
                if let Some(p) = phase.strip_prefix("offline/") {
                    *row.offline_bytes.entry(p.into()).or_default() += t.bytes();
                } else if let Some(p) = phase.strip_prefix("online/") {
                    *row.online_bytes.entry(p.into()).or_default() += t.bytes();
                    row.online_rounds += t.rounds;
                }
            }
            row
        })
        .collect()
}

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

fn print_party_table(client: &PartyReport, server: Option<&PartyReport>) {
    let rows = rows(client, server);
    let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(6);
    println!(
        "{:<w$} {:>8} {:>7} {:>6} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>6}",
        "node",
        "kind",
        "relu",
        "ident",
        "poly",
        "off s",
        "HE MB",
        "GC MB",
        "OT MB",
        "poly MB",
        "on s",
        "on KB",
        "rounds"
    );
    let g = |m: &std::collections::BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    for r in &rows {
        let on: u64 = r.online_bytes.values().sum();
        println!(
            "{:<w$} {:>8} {:>7} {:>6} {:>5} {:>8.3} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.4} {:>9.1} {:>6}",
            r.name,
            r.kind,
            r.relus,
            r.identity,
            r.poly,
            r.offline_s,
            mb(g(&r.offline_bytes, "he")),
            mb(g(&r.offline_bytes, "gc")),
            mb(g(&r.offline_bytes, "ot")),
            mb(g(&r.offline_bytes, "poly")),
            r.online_s,
            on as f64 / 1e3,
            r.online_rounds
        );
    }
    let t = |p: &str| client.traffic(p);
    println!(
        "total: setup {:.2} s ({:.2} MB: handshake, HE keys, base OT); offline {:.2} s, {:.1} MB \
         (HE {:.1}, GC {:.1}, OT {:.1}, poly {:.1}); online {:.4} s, {:.3} MB (input {:.3}, GC {:.3}, \
         replies {:.3}, poly {:.3}, reveal {:.4}), {} rounds",
        client.setup_s,
        mb(t("session").bytes() + t("setup").bytes()),
        client.offline_s,
        mb(t("offline").bytes()),
        mb(t("offline/he").bytes()),
        mb(t("offline/gc").bytes()),
        mb(t("offline/ot").bytes()),
        mb(t("offline/poly").bytes()),
        client.online_s,
        mb(t("online").bytes()),
        mb(t("online/input").bytes()),
        mb(t("online/gc").bytes()),
        mb(t("online/reply").bytes()),
        mb(t("online/poly").bytes()),
        mb(t("online/reveal").bytes()),
        t("online").rounds
    );
    if let Some(s) = server {
        println!(
            "server: offline {:.2} s wall / {:.2} s CPU, online {:.4} s wall / {:.3} s CPU, peak RSS {:.2} GB; \
             client: offline CPU {:.2} s, online CPU {:.3} s, peak RSS {:.2} GB",
            s.offline_s,
            s.offline_cpu_s,
            s.online_s,
            s.online_cpu_s,
            s.peak_rss_bytes.unwrap_or(0) as f64 / 1e9,
            client.offline_cpu_s,
            client.online_cpu_s,
            client.peak_rss_bytes.unwrap_or(0) as f64 / 1e9
        );
    }
}

/// The `local` truncation's failure bound for one inference.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailureBound {
    /// Where ℓ comes from.
    pub bounds_source: String,
    /// Margin added to each observed magnitude, bits.
    pub margin_bits: u32,
    /// Elements truncated locally per inference.
    pub elements: usize,
    /// Union bound `Σ 2^(ℓ+1)/P` over those elements.
    pub per_inference: f64,
    /// Per truncation point: name, kind, ℓ, elements.
    pub points: Vec<(String, String, u32, usize)>,
    /// Truncation points where this input's magnitude exceeded the calibrated
    /// bound (name, kind, this input's ℓ, the bound's ℓ); empty without bounds.
    #[serde(default)]
    pub exceeded: Vec<(String, String, u32, u32)>,
}

/// The failure bound of `local` truncation: per truncation point `ℓ` from the
/// model file's calibrated bounds when it has them (they already carry their
/// margin), otherwise from this input's own fixed-point reference run plus
/// `margin` bits; times the elements that point truncates locally.
fn failure_bound(
    built: &BuiltModel,
    stats: &[TruncationStat],
    client: &PartyReport,
    local: bool,
    margin: u32,
) -> FailureBound {
    let mut points = Vec::new();
    let mut exceeded = Vec::new();
    let mut total = 0.0;
    let mut elements = 0;
    for s in stats {
        let calibrated = built.bounds.as_ref().and_then(|b| b.get(&s.name, s.kind));
        if let Some(b) = calibrated {
            if s.bits > b.bits {
                exceeded.push((s.name.clone(), s.kind.to_string(), s.bits, b.bits));
            }
        }
        if !local {
            continue;
        }
        // Elements of this point truncated locally: a site's identity and
        // polynomial elements (its ReLU elements truncate in the garbled
        // circuit), a polynomial's second rounding, every output of a batch
        // norm or an average pool.
        let n = match (s.kind, client.nodes.get(s.node)) {
            (reference::TruncKind::Site, Some(n)) => n.identity + n.poly,
            (reference::TruncKind::SitePoly, Some(n)) => n.poly,
            (_, Some(_)) => built.net.nodes.get(s.node).map_or(0, |n| n.shape.len()),
            _ => 0,
        };
        if n == 0 {
            continue;
        }
        let l = match calibrated {
            Some(b) => b.bits,
            None => s.bits + margin,
        };
        total += n as f64 * fixed::local_truncation_failure_bound(l);
        elements += n;
        points.push((s.name.clone(), s.kind.to_string(), l, n));
    }
    let (bounds_source, margin_bits) = match &built.bounds {
        Some(b) => (
            format!(
                "the model file's calibrated bounds ({}, {} images)",
                b.source, b.images
            ),
            b.margin_bits,
        ),
        None => (
            "largest pre-truncation magnitudes of this input's fixed-point reference run".into(),
            margin,
        ),
    };
    FailureBound {
        bounds_source,
        margin_bits,
        elements,
        per_inference: total,
        points,
        exceeded,
    }
}

/// The JSON document of `pibench run`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RunJson {
    /// Model name.
    pub model: String,
    /// Where weights and masks come from.
    pub model_source: String,
    /// Public-model hash.
    pub model_hash: String,
    /// Dataset.
    pub dataset: Option<String>,
    /// Counted ReLUs (default convention).
    pub relus: u64,
    /// Where the input came from (and its label).
    #[serde(default)]
    pub input: InputInfo,
    /// Whether the private inference's class equals the image's label.
    #[serde(default)]
    pub correct: Option<bool>,
    /// Agreed settings.
    pub settings: Vec<(String, String)>,
    /// Security of each component.
    pub security: Vec<String>,
    /// Network emulation.
    pub network: String,
    /// `local` truncation failure bound.
    pub local_truncation: FailureBound,
    /// Per-layer rows.
    pub layers: Vec<LayerRow>,
    /// Totals: setup, offline, online (client wall), bytes.
    pub totals: Totals,
    /// The client's logits.
    pub logits: Vec<f64>,
    /// Comparison with the references.
    pub reference: ReferenceCheck,
    /// Both parties' full reports.
    pub client: PartyReport,
    /// Server report.
    pub server: PartyReport,
}

/// Totals of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Totals {
    /// Session setup seconds (client).
    pub setup_s: f64,
    /// Offline seconds (client wall).
    pub offline_s: f64,
    /// Online seconds (client wall).
    pub online_s: f64,
    /// Setup bytes (both directions).
    pub setup_bytes: u64,
    /// Offline bytes per phase.
    pub offline_bytes: std::collections::BTreeMap<String, u64>,
    /// Online bytes per phase.
    pub online_bytes: std::collections::BTreeMap<String, u64>,
    /// Online rounds.
    pub online_rounds: u64,
    /// Peak RSS of the server, bytes.
    pub server_peak_rss: u64,
    /// Peak RSS of the client, bytes.
    pub client_peak_rss: u64,
}

/// Client logits against the references.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReferenceCheck {
    /// Fixed-point reference logits.
    pub fixed_logits: Vec<f64>,
    /// Float reference logits.
    pub float_logits: Vec<f64>,
    /// max |client − fixed reference|.
    pub max_abs_diff_fixed: f64,
    /// max |client − float reference|.
    pub max_abs_diff_float: f64,
    /// Largest |logit| of the fixed reference.
    pub max_abs_logit: f64,
    /// Argmax equal to the fixed reference's.
    pub argmax_agrees: bool,
    /// When the argmax differs: the fixed reference's logit of its own
    /// class minus its logit of the class the private inference chose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argmax_gap: Option<f64>,
    /// The argmax differs only between classes the fixed reference scores
    /// within [`NEAR_TIE`]` · (1 + max|logit|)` of each other (not a failure).
    #[serde(default)]
    pub argmax_near_tie: bool,
}

/// Relative logit gap below which two classes count as tied: a flip between
/// them is within the protocol's rounding (stochastic truncation moves each
/// logit by a few units of the last place) and is reported, not failed.
/// Random-weight networks with data-free batch-norm statistics have all
/// their logits within a few tenths of each other, so near-ties happen.
pub const NEAR_TIE: f64 = 0.01;

/// When the two argmaxes differ: the reference's gap between its class and
/// the private inference's class, and whether that is a near-tie.
pub fn argmax_gap(private: &[f64], reference: &[f64]) -> (Option<f64>, bool) {
    match (argmax(private), argmax(reference)) {
        (Some(a), Some(b)) if a != b => {
            let max = reference.iter().fold(0f64, |m, v| m.max(v.abs()));
            let gap = reference[b] - reference[a];
            (Some(gap), gap <= NEAR_TIE * (1.0 + max))
        }
        _ => (None, false),
    }
}

fn totals(c: &PartyReport, s: &PartyReport) -> Totals {
    let mut t = Totals {
        setup_s: c.setup_s,
        offline_s: c.offline_s,
        online_s: c.online_s,
        setup_bytes: c.traffic("session").bytes() + c.traffic("setup").bytes(),
        server_peak_rss: s.peak_rss_bytes.unwrap_or(0),
        client_peak_rss: c.peak_rss_bytes.unwrap_or(0),
        ..Default::default()
    };
    for (k, v) in &c.phases {
        let v: &Traffic = v;
        if let Some(p) = k.strip_prefix("offline/") {
            *t.offline_bytes.entry(p.into()).or_default() += v.bytes();
        } else if let Some(p) = k.strip_prefix("online/") {
            *t.online_bytes.entry(p.into()).or_default() += v.bytes();
            t.online_rounds += v.rounds;
        }
    }
    t
}

fn wait_for_port(path: &Path, child: &mut Child, limit: Duration) -> anyhow::Result<u16> {
    let start = Instant::now();
    loop {
        if let Ok(b) = std::fs::read(path) {
            if let Ok(p) = serde_json::from_slice::<u16>(&b) {
                return Ok(p);
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!("the server process exited before listening ({status})");
        }
        if start.elapsed() > limit {
            bail!("the server process did not start listening within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `pibench run`.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let built = args.model.build()?;
    built.require_bounded(
        args.protocol.trunc == TruncArg::Local,
        args.model.uncalibrated,
    )?;
    let n_in = built.net.input.len();
    let (x, input_info) = match (&args.input, args.image.load(Some(built.net.input))?) {
        (_, Some(image)) => image,
        (Some(p), None) => (
            read_input(p, n_in)?,
            InputInfo {
                source: p.display().to_string(),
                label: None,
            },
        ),
        (None, None) => (
            random_input(n_in, args.input_seed),
            InputInfo {
                source: format!("seeded random input in [−2, 2) (seed {})", args.input_seed),
                label: None,
            },
        ),
    };
    let exe = std::env::current_exe()?;
    let dir = tempfile::tempdir()?;
    let input_file = dir.path().join("input.safetensors");
    {
        let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(
            safetensors::Dtype::F32,
            built.net.input.dims(),
            &bytes,
        )?;
        safetensors::serialize_to_file([("input", view)], &None, &input_file)?;
    }
    let port_file = dir.path().join("port.json");
    let server_json = dir.path().join("server.json");
    let client_json = dir.path().join("client.json");
    let mut server = Command::new(&exe)
        .arg("server")
        .args(args.model.to_flags())
        .args(args.protocol.to_flags())
        .args(["--listen", "127.0.0.1:0", "--once"])
        .arg("--port-file")
        .arg(&port_file)
        .arg("--report-json")
        .arg(&server_json)
        .stdout(Stdio::null())
        .spawn()
        .context("starting the server process")?;
    let port = match wait_for_port(&port_file, &mut server, Duration::from_secs(120)) {
        Ok(p) => p,
        Err(e) => {
            let _ = server.kill();
            return Err(e);
        }
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let client = Command::new(&exe)
        .arg("client")
        .args(["--connect", &addr.to_string()])
        .arg("--input")
        .arg(&input_file)
        .args(args.protocol.to_flags())
        .args(["--format", "json"])
        .arg("--report-json")
        .arg(&client_json)
        .stdout(Stdio::null())
        .status()
        .context("running the client process")?;
    let server_status = server.wait()?;
    if !client.success() || !server_status.success() {
        bail!(
            "the two-party run failed (client {client}, server {server_status}); see the messages above"
        );
    }
    let c: ClientJson = serde_json::from_slice(&std::fs::read(&client_json)?)
        .context("reading the client's report")?;
    let s: PartyReport = serde_json::from_slice(&std::fs::read(&server_json)?)
        .context("reading the server's report")?;
    let cr = c
        .reports
        .first()
        .cloned()
        .context("the client reported no inference")?;
    let logits = c.logits.first().cloned().unwrap_or_default();
    // The references, on the same network and input.
    let enc = EncodedNetwork::new(&built.net, built.fixed)?;
    let fixed_out = reference::forward_fixed_encoded(&built.net, &enc, &x)?;
    let float_out = reference::forward_float(&built.net, &x)?;
    let diff = |a: &[f64], b: &[f64]| a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
    let check = ReferenceCheck {
        max_abs_diff_fixed: diff(&logits, &fixed_out.logits),
        max_abs_diff_float: diff(&logits, &float_out),
        max_abs_logit: fixed_out.logits.iter().fold(0f64, |m, v| m.max(v.abs())),
        argmax_agrees: argmax(&logits) == argmax(&fixed_out.logits),
        argmax_gap: None,
        argmax_near_tie: false,
        fixed_logits: fixed_out.logits.clone(),
        float_logits: float_out,
    };
    let mut check = check;
    (check.argmax_gap, check.argmax_near_tie) = argmax_gap(&logits, &fixed_out.logits);
    let public = PublicModel::new(&built.net, &enc)?;
    if public.hash_hex() != c.model_hash {
        bail!(
            "the client ran model {} but this process built {}",
            c.model_hash,
            public.hash_hex()
        );
    }
    let local = args.protocol.trunc == TruncArg::Local;
    let doc = RunJson {
        model: built.net.name.clone(),
        model_source: built.source.clone(),
        model_hash: c.model_hash.clone(),
        dataset: built.dataset.clone(),
        relus: pibench_models::count::relu_count(
            &built.net,
            pibench_models::count::Convention::default(),
        ),
        correct: input_info.label.map(|l| argmax(&logits) == Some(l)),
        input: input_info,
        settings: cr.settings.clone(),
        security: cr.security.clone(),
        network: format!("{} on loopback", args.protocol.net),
        local_truncation: failure_bound(&built, &fixed_out.truncations, &cr, local, 1),
        layers: rows(&cr, Some(&s)),
        totals: totals(&cr, &s),
        logits: logits.clone(),
        reference: check.clone(),
        client: cr.clone(),
        server: s.clone(),
    };
    if let Some(p) = &args.json_out {
        write_json(p, &doc)?;
    }
    match args.format {
        FormatArg::Json => println!("{}", serde_json::to_string_pretty(&doc)?),
        FormatArg::Table => {
            println!(
                "model {} ({}), {} ReLUs, hash {}…",
                doc.model,
                doc.model_source,
                doc.relus,
                &doc.model_hash[..16]
            );
            println!("  input: {}", doc.input.source);
            for (k, v) in &doc.settings {
                println!("  {k}: {v}");
            }
            for l in &doc.security {
                println!("  security: {l}");
            }
            println!("  network: {}", doc.network);
            if local {
                println!(
                    "  local truncation: {} elements per inference, failure bound {:.3e} per inference \
                     (ℓ from {}, +{} bit margin)",
                    doc.local_truncation.elements,
                    doc.local_truncation.per_inference,
                    doc.local_truncation.bounds_source,
                    doc.local_truncation.margin_bits
                );
            } else {
                println!("  exact truncation: every truncation in a garbled circuit, failure probability 0");
            }
            for (name, kind, got, bound) in &doc.local_truncation.exceeded {
                println!(
                    "  WARNING: this input exceeds the calibrated bound at {name} ({kind}): |y| < 2^{got}, bound 2^{bound}"
                );
            }
            print_party_table(&cr, Some(&s));
            println!(
                "logits vs fixed-point reference: max |Δ| {:.3e} (max |logit| {:.3}), argmax {}; \
                 vs float reference: max |Δ| {:.3e}",
                check.max_abs_diff_fixed,
                check.max_abs_logit,
                if check.argmax_agrees {
                    "agrees".to_string()
                } else if check.argmax_near_tie {
                    format!(
                        "differs between near-tied classes (reference gap {:.2e})",
                        check.argmax_gap.unwrap_or(0.0)
                    )
                } else {
                    "DIFFERS".to_string()
                },
                check.max_abs_diff_float
            );
            if let (Some(label), Some(ok)) = (doc.input.label, doc.correct) {
                println!(
                    "private inference: class {}, label {label} ({})",
                    argmax(&logits).unwrap_or(0),
                    if ok { "correct" } else { "wrong" }
                );
            }
        }
    }
    if !check.argmax_agrees && !check.argmax_near_tie {
        bail!(
            "the private inference's argmax differs from the fixed-point reference (reference \
             gap {:.3e} between the two classes, max |Δ| {:.3e})",
            check.argmax_gap.unwrap_or(f64::NAN),
            check.max_abs_diff_fixed
        );
    }
    Ok(())
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_ties_are_told_from_real_flips() {
        // Same class: no gap.
        assert_eq!(argmax_gap(&[0.1, 0.5], &[0.2, 0.6]), (None, false));
        // Reference 0.700 vs 0.695: gap 0.005 <= 0.01 * 1.7.
        let (g, tie) = argmax_gap(&[0.7, 0.701], &[0.7, 0.695]);
        assert!(tie && (g.unwrap() - 0.005).abs() < 1e-12);
        // A real flip: gap 0.5.
        let (g, tie) = argmax_gap(&[0.0, 1.0], &[0.5, 0.0]);
        assert!(!tie && g == Some(0.5));
    }
}
