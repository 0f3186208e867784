//! One row's measurement: `pibench run --model FILE --format json` as a child
//! process (the current executable), K times, and what its JSON says.
//!
//! Every figure here is read from a protocol run's JSON document (schema:
//! `docs/RUN.md`); nothing is computed from a cost formula. Times are the
//! client's wall clock (what a user waits for), bytes are counted on the
//! channel (both directions, length prefixes included).
//!
//! The document is read into [`RunDoc`], which names only the fields the
//! table needs and ignores the rest, so that the runner keeps working when
//! `pibench run` adds fields.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Largest JSON document of one run read back (bytes).
pub const MAX_RUN_JSON_BYTES: u64 = 256 << 20;
/// Bytes of the child's stderr quoted in an error.
const STDERR_TAIL_BYTES: u64 = 2048;

/// What can go wrong while measuring a row.
#[derive(Debug, Error)]
pub enum MeasureError {
    /// A file of the run (model, JSON, stderr) could not be written or read.
    #[error("{what} {file}: {source}")]
    Io {
        /// What the file is.
        what: &'static str,
        /// The file.
        file: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The child process could not be started.
    #[error("cannot start {exe}: {source}")]
    Spawn {
        /// Executable.
        exe: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `pibench run` failed.
    #[error(
        "pibench run ({trunc} truncation, repeat {repeat}) exited with {status}: {stderr_tail}"
    )]
    Exit {
        /// Truncation mode of the run.
        trunc: String,
        /// Which repeat (1-based).
        repeat: usize,
        /// Exit status.
        status: String,
        /// The last lines the child wrote to stderr.
        stderr_tail: String,
    },
    /// `pibench run` took longer than the limit and was killed.
    #[error("pibench run ({trunc} truncation, repeat {repeat}) ran longer than {limit_s} s and was killed")]
    Timeout {
        /// Truncation mode.
        trunc: String,
        /// Which repeat (1-based).
        repeat: usize,
        /// Limit in seconds.
        limit_s: u64,
    },
    /// The run's JSON document is missing, too large or malformed.
    #[error("{file}: {reason}")]
    Output {
        /// The JSON file.
        file: String,
        /// What is wrong (with the serde position).
        reason: String,
    },
    /// The private inference disagreed with the fixed-point reference.
    #[error("the private inference's argmax differs from the fixed-point reference (max |Δ| {max_abs_diff})")]
    Mismatch {
        /// Largest logit difference.
        max_abs_diff: f64,
    },
}

/// How `pibench run` is started for every row.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The `pibench` executable (the current one).
    pub exe: PathBuf,
    /// `--net` value passed through (`None`: flag omitted, no emulation).
    pub net: Option<String>,
    /// `--threads` passed through.
    pub threads: Option<usize>,
    /// `--timeout` (seconds a receive waits for the peer) passed through.
    pub recv_timeout_s: u64,
    /// Wall-clock limit of one `pibench run` child; it is killed (with its
    /// server and client) when exceeded.
    pub run_limit: Duration,
    /// Runs per measurement (median and spread).
    pub repeat: usize,
    /// Passes the hidden `--insecure-test-params` (tests only: N = 2048).
    pub insecure_test_params: bool,
    /// The machine measuring, as `CPU model/logical cores` ([`Machine`]):
    /// part of the settings line, so that `--resume` never keeps a
    /// measurement made on another machine under this machine's header.
    pub machine: String,
}

impl RunOptions {
    /// The settings a measurement depends on, as one canonical line (stored
    /// beside every measurement; `--resume` reuses a measurement only when
    /// this line, which includes a hash of the model file's bytes and the
    /// machine, is equal).
    pub fn settings_line(&self, model_hash: u64, trunc: &str) -> String {
        format!(
            "model-bytes-fnv64={model_hash:016x} trunc={trunc} net={} threads={} repeat={} params={} machine={}",
            self.net.as_deref().unwrap_or("none"),
            self.threads.map_or("all".to_string(), |t| t.to_string()),
            self.repeat,
            if self.insecure_test_params {
                "insecure-test"
            } else {
                "default"
            },
            self.machine,
        )
    }
}

/// FNV-1a, 64 bits: a stable hash for settings lines and model bytes (not a
/// security function: it only tells whether a stored measurement is stale).
pub fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

// ---------------------------------------------------------------------------
// The part of `pibench run --format json` the table reads.

/// `totals` of a run document.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DocTotals {
    /// Session setup seconds.
    pub setup_s: f64,
    /// Offline seconds (client wall).
    pub offline_s: f64,
    /// Online seconds (client wall).
    pub online_s: f64,
    /// Setup bytes.
    pub setup_bytes: u64,
    /// Offline bytes per phase (`he`, `gc`, `ot`, `poly`).
    pub offline_bytes: BTreeMap<String, u64>,
    /// Online bytes per phase (`input`, `gc`, `reply`, `poly`, `reveal`).
    pub online_bytes: BTreeMap<String, u64>,
    /// Online rounds.
    pub online_rounds: u64,
    /// Server peak RSS, bytes.
    pub server_peak_rss: u64,
    /// Client peak RSS, bytes.
    pub client_peak_rss: u64,
}

/// One per-layer row of a run document.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DocLayer {
    /// Node index.
    pub node: usize,
    /// Node name.
    pub name: String,
    /// Op kind (`conv2d`, `batchnorm`, `linear`, `site`, `add`, …).
    pub kind: String,
    /// ReLU elements.
    pub relus: u64,
    /// Identity elements.
    pub identity: u64,
    /// Polynomial elements.
    pub poly: u64,
    /// MACs.
    pub macs: u64,
    /// Offline seconds (client wall).
    pub offline_s: f64,
    /// Online seconds (client wall).
    pub online_s: f64,
    /// Server offline wall seconds.
    pub server_offline_s: f64,
    /// Server online wall seconds.
    pub server_online_s: f64,
    /// Offline bytes per phase.
    pub offline_bytes: BTreeMap<String, u64>,
    /// Online bytes per phase.
    pub online_bytes: BTreeMap<String, u64>,
    /// Online rounds.
    pub online_rounds: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct DocReference {
    max_abs_diff_fixed: f64,
    argmax_agrees: bool,
    argmax_near_tie: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct DocFailure {
    elements: u64,
    per_inference: f64,
}

/// The fields of `pibench run --format json` that a table row uses.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RunDoc {
    model_hash: String,
    network: String,
    settings: Vec<(String, String)>,
    local_truncation: DocFailure,
    layers: Vec<DocLayer>,
    totals: DocTotals,
    reference: DocReference,
}

// ---------------------------------------------------------------------------
// What the table keeps of one run.

/// Where a run's time went, from the per-layer report.
///
/// The protocol reports wall time per node and phase for each party; it does
/// not time OT apart from garbling (they are interleaved per batch) nor the
/// network apart from computation (waiting for the peer is part of each
/// node's wall time). Online, the client does no work in a linear node: its
/// wall time at the next activation site includes waiting for the server's
/// linear layers (docs/RUN.md). So:
/// * `offline_he_s`: linear nodes (conv, batch norm, FC) offline, client
///   wall: their HE layer protocol, both parties (in `exact` mode also their
///   truncation circuits);
/// * `offline_gc_s`: every other node offline, client wall: garbling, OT
///   extension and label transfer of ReLU (and exact-truncation) circuits,
///   HE triples of polynomial elements;
/// * `offline_other_s`: offline wall time outside any node (final flush);
/// * `online_linear_s`: linear nodes online, server wall (the share GEMMs,
///   and in `exact` mode their truncation circuits);
/// * `online_gc_s`: activation-site nodes online, client wall, less
///   `online_linear_s` (the client waits for those layers there): circuit
///   evaluation, label transfer, replies, polynomial products;
/// * `online_other_s`: the rest of the client's online wall time (input,
///   pooling, additions, the output reveal).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Parts {
    /// Offline, linear nodes (HE).
    pub offline_he_s: f64,
    /// Offline, other nodes (GC, OT, poly triples).
    pub offline_gc_s: f64,
    /// Offline, outside any node.
    pub offline_other_s: f64,
    /// Online, linear nodes.
    pub online_linear_s: f64,
    /// Online, activation sites (GC evaluation, polynomials).
    pub online_gc_s: f64,
    /// Online, the rest (input, pools, adds, reveal).
    pub online_other_s: f64,
}

impl Parts {
    fn from_layers(layers: &[DocLayer], offline_s: f64, online_s: f64) -> Self {
        let linear = |k: &str| matches!(k, "conv2d" | "batchnorm" | "linear");
        let mut p = Parts::default();
        let mut off_nodes = 0.0;
        let mut site_online = 0.0;
        for l in layers {
            off_nodes += l.offline_s;
            if linear(&l.kind) {
                p.offline_he_s += l.offline_s;
                p.online_linear_s += l.server_online_s.max(l.online_s);
            } else {
                p.offline_gc_s += l.offline_s;
                if l.kind == "site" {
                    site_online += l.online_s;
                }
            }
        }
        p.online_linear_s = p.online_linear_s.min(online_s);
        p.online_gc_s = (site_online - p.online_linear_s).max(0.0);
        p.offline_other_s = (offline_s - off_nodes).max(0.0);
        p.online_other_s = (online_s - p.online_linear_s - p.online_gc_s).max(0.0);
        p
    }
}

/// One protocol run, as the table keeps it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunSummary {
    /// Wall seconds of the whole `pibench run` child (building the model,
    /// starting both parties, setup, offline, online, reference check).
    pub process_wall_s: f64,
    /// Session setup seconds (handshake, HE keys, base OT).
    pub setup_s: f64,
    /// Offline seconds (client wall).
    pub offline_s: f64,
    /// Online seconds (client wall).
    pub online_s: f64,
    /// Setup bytes.
    pub setup_bytes: u64,
    /// Offline bytes per phase.
    pub offline_bytes: BTreeMap<String, u64>,
    /// Online bytes per phase.
    pub online_bytes: BTreeMap<String, u64>,
    /// Online rounds.
    pub online_rounds: u64,
    /// Time split from the per-layer report.
    pub parts: Parts,
    /// ReLU, identity and polynomial elements the run evaluated.
    pub relus: u64,
    /// Identity elements.
    pub identity: u64,
    /// Polynomial elements.
    pub poly: u64,
    /// The offline material went through `--store` (it would not fit in
    /// memory: see [`STORE_FRACTION`]); online then includes reading it back.
    #[serde(default)]
    pub stored: bool,
    /// Server peak RSS, bytes.
    pub server_peak_rss: u64,
    /// Client peak RSS, bytes.
    pub client_peak_rss: u64,
    /// max |private logits − fixed-point reference|.
    pub max_abs_diff_fixed: f64,
    /// Elements truncated locally (`local` mode).
    pub local_truncations: u64,
    /// `local` truncation failure bound per inference.
    pub local_failure_bound: f64,
    /// The run's network emulation, as `pibench run` reports it.
    pub network: String,
    /// Public model hash.
    pub model_hash: String,
    /// Settings the parties agreed on.
    pub settings: Vec<(String, String)>,
}

impl RunSummary {
    /// Offline + online seconds (setup excluded: it is once per session).
    pub fn total_s(&self) -> f64 {
        self.offline_s + self.online_s
    }

    /// Offline bytes, all phases.
    pub fn offline_total_bytes(&self) -> u64 {
        self.offline_bytes.values().sum()
    }

    /// Online bytes, all phases.
    pub fn online_total_bytes(&self) -> u64 {
        self.online_bytes.values().sum()
    }

    fn from_doc(doc: RunDoc, process_wall_s: f64) -> Self {
        let t = doc.totals;
        let parts = Parts::from_layers(&doc.layers, t.offline_s, t.online_s);
        let (mut relus, mut identity, mut poly) = (0, 0, 0);
        for l in &doc.layers {
            relus += l.relus;
            identity += l.identity;
            poly += l.poly;
        }
        Self {
            process_wall_s,
            stored: false,
            setup_s: t.setup_s,
            offline_s: t.offline_s,
            online_s: t.online_s,
            setup_bytes: t.setup_bytes,
            offline_bytes: t.offline_bytes,
            online_bytes: t.online_bytes,
            online_rounds: t.online_rounds,
            parts,
            relus,
            identity,
            poly,
            server_peak_rss: t.server_peak_rss,
            client_peak_rss: t.client_peak_rss,
            max_abs_diff_fixed: doc.reference.max_abs_diff_fixed,
            local_truncations: doc.local_truncation.elements,
            local_failure_bound: doc.local_truncation.per_inference,
            network: doc.network,
            model_hash: doc.model_hash,
            settings: doc.settings,
        }
    }
}

/// Median and range of one figure over the repeats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// Median (mean of the two middle values for an even count).
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Stat {
    /// Of a non-empty list (an empty one gives zeros).
    pub fn of(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Self {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }

    /// Half the range (the ± of the tables).
    pub fn half_range(&self) -> f64 {
        (self.max - self.min) / 2.0
    }
}

/// K runs of one network in one truncation mode.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Measured {
    /// `local` or `exact`.
    pub trunc: String,
    /// [`RunOptions::settings_line`] of the runs.
    pub settings: String,
    /// `fnv64` of `settings`, hex.
    pub settings_hash: String,
    /// When the measurement finished (UTC).
    pub date: String,
    /// pibench commit that measured it.
    pub commit: String,
    /// Online seconds over the runs.
    pub online_s: Stat,
    /// Offline seconds over the runs.
    pub offline_s: Stat,
    /// Offline + online seconds over the runs.
    pub total_s: Stat,
    /// Setup seconds over the runs.
    pub setup_s: Stat,
    /// Index (in `runs`) of the run whose total is the median (the lower
    /// middle one for an even count): its bytes, parts and layers are shown.
    pub median_run: usize,
    /// Every run.
    pub runs: Vec<RunSummary>,
    /// Per-layer rows of the median run.
    pub layers: Vec<DocLayer>,
    /// Attempts discarded before the kept runs: `local` runs whose logits
    /// failed the reference check (a local-truncation failure, which the
    /// run's failure bound allows) and were rerun, at most
    /// [`LOCAL_RETRIES`] times per run. Each entry is the failed attempt's error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_attempts: Vec<String>,
    /// Wall time of the whole measurement (every run and rerun, both
    /// processes from start to exit), seconds; absent in results written
    /// before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_s: Option<f64>,
}

/// Reruns of a `local` run whose logits fail the reference check.
pub const LOCAL_RETRIES: usize = 2;

impl Measured {
    /// The run whose figures the table shows beside the medians.
    pub fn median(&self) -> &RunSummary {
        static EMPTY: std::sync::OnceLock<RunSummary> = std::sync::OnceLock::new();
        self.runs
            .get(self.median_run)
            .unwrap_or_else(|| EMPTY.get_or_init(RunSummary::default))
    }

    fn from_runs(
        trunc: &str,
        settings: String,
        commit: &str,
        runs: Vec<(RunSummary, Vec<DocLayer>)>,
    ) -> Self {
        let stat = |f: &dyn Fn(&RunSummary) -> f64| {
            Stat::of(&runs.iter().map(|(r, _)| f(r)).collect::<Vec<_>>())
        };
        let online_s = stat(&|r| r.online_s);
        let offline_s = stat(&|r| r.offline_s);
        let total_s = stat(&|r| r.total_s());
        let setup_s = stat(&|r| r.setup_s);
        let mut order: Vec<usize> = (0..runs.len()).collect();
        order.sort_by(|&a, &b| runs[a].0.total_s().total_cmp(&runs[b].0.total_s()));
        let median_run = order
            .get(runs.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or(0);
        let layers = runs
            .get(median_run)
            .map(|(_, l)| l.clone())
            .unwrap_or_default();
        Self {
            trunc: trunc.to_string(),
            settings_hash: format!("{:016x}", fnv64(settings.as_bytes())),
            settings,
            date: utc_now(),
            commit: commit.to_string(),
            online_s,
            offline_s,
            total_s,
            setup_s,
            median_run,
            runs: runs.into_iter().map(|(r, _)| r).collect(),
            layers,
            failed_attempts: Vec::new(),
            wall_s: None,
        }
    }
}

impl MeasureError {
    /// The run completed but its logits failed the reference check (the
    /// argmax differs): with local truncation, a truncation failure.
    pub fn is_reference_mismatch(&self) -> bool {
        match self {
            Self::Mismatch { .. } => true,
            Self::Exit { stderr_tail, .. } => stderr_tail.contains("argmax differs"),
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------
// Running.

fn io_err(what: &'static str, file: &Path) -> impl FnOnce(std::io::Error) -> MeasureError {
    let file = file.display().to_string();
    move |source| MeasureError::Io { what, file, source }
}

/// The last [`STDERR_TAIL_BYTES`] of a file, as lines joined by ` | `.
fn tail(path: &Path) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return "(no stderr)".into();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(STDERR_TAIL_BYTES)));
    let mut buf = Vec::new();
    let _ = f.take(STDERR_TAIL_BYTES).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let keep = &lines[lines.len().saturating_sub(4)..];
    if keep.is_empty() {
        "(no stderr)".into()
    } else {
        keep.join(" | ")
    }
}

/// Process ids whose parent is `pid` (from `/proc/*/stat`).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // Field 4 (ppid) follows the command name, which ends at the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// Kills `child` and the processes it started (the server and the client of
/// `pibench run`), by their ids.
fn kill_tree(child: &mut Child) {
    let mut pids = Vec::new();
    let mut stack = vec![child.id()];
    while let Some(p) = stack.pop() {
        for c in children_of(p) {
            pids.push(c);
            stack.push(c);
        }
    }
    let _ = child.kill();
    for p in pids {
        let _ = Command::new("kill")
            .args(["-KILL", &p.to_string()])
            .stderr(Stdio::null())
            .status();
    }
    let _ = child.wait();
}

fn wait_limited(child: &mut Child, limit: Duration) -> std::io::Result<Option<ExitStatus>> {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(Some(s));
        }
        if start.elapsed() > limit {
            kill_tree(child);
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read_doc(path: &Path) -> Result<RunDoc, MeasureError> {
    let file = path.display().to_string();
    let len = std::fs::metadata(path)
        .map_err(io_err("the run's JSON", path))?
        .len();
    if len > MAX_RUN_JSON_BYTES {
        return Err(MeasureError::Output {
            file,
            reason: format!("{len} bytes, at most {MAX_RUN_JSON_BYTES}"),
        });
    }
    let bytes = std::fs::read(path).map_err(io_err("the run's JSON", path))?;
    serde_json::from_slice(&bytes).map_err(|e| MeasureError::Output {
        file,
        reason: format!("not a pibench run document: {e}"),
    })
}

/// Bytes of garbled material the client of `model` keeps between the
/// phases in truncation mode `trunc` (`None` if the file cannot be planned
/// here; the run itself then reports the problem).
pub fn client_material_bytes(model: &Path, trunc: &str) -> Option<u64> {
    use pibench_protocol::inference::plan::InferencePlan;
    use pibench_protocol::inference::public::PublicModel;
    use pibench_protocol::inference::TruncMode;
    let loaded = pibench_models::file::load(model).ok()?;
    let fixed = pibench_models::fixed::FixedPoint::default();
    let enc = pibench_models::reference::EncodedNetwork::new(&loaded.network, fixed).ok()?;
    let public = PublicModel::new(&loaded.network, &enc).ok()?;
    let mode = if trunc == "exact" {
        TruncMode::Exact
    } else {
        TruncMode::Local
    };
    let plan = InferencePlan::new(&public, mode, Default::default()).ok()?;
    plan.client_gc_bytes().ok()
}

/// A run whose client material exceeds this fraction of the memory
/// available streams it through `--store` instead of holding it (the
/// exact-truncation column of a WRN-22-8 with polynomial sites needs tens
/// of GB; in memory the client is killed).
pub const STORE_FRACTION: f64 = 0.3;

/// Runs `pibench run` on a model file once.
fn run_once(
    opts: &RunOptions,
    model: &Path,
    trunc: &str,
    repeat: usize,
    dir: &Path,
) -> Result<(RunSummary, Vec<DocLayer>), MeasureError> {
    let json = dir.join(format!("run-{trunc}-{repeat}.json"));
    let err = dir.join(format!("run-{trunc}-{repeat}.stderr"));
    let _ = std::fs::remove_file(&json);
    let stderr = std::fs::File::create(&err).map_err(io_err("the run's stderr", &err))?;
    let mut cmd = Command::new(&opts.exe);
    cmd.arg("run")
        .arg("--model")
        .arg(model)
        .args(["--format", "json", "--trunc", trunc])
        .args(["--timeout", &opts.recv_timeout_s.to_string()])
        // The rows' networks are written to fresh model files without
        // calibrated bounds (most have seeded random weights and no data):
        // latency does not depend on them, and the failure-bound column then
        // takes ℓ from each run's own input, as the run's `bounds_source` says.
        .arg("--uncalibrated")
        .arg("--json-out")
        .arg(&json);
    if let Some(n) = &opts.net {
        cmd.args(["--net", n]);
    }
    if let Some(t) = opts.threads {
        cmd.args(["--threads", &t.to_string()]);
    }
    if opts.insecure_test_params {
        cmd.arg("--insecure-test-params");
    }
    let material = client_material_bytes(model, trunc);
    let limit = pibench_protocol::inference::store::mem_available()
        .map(|m| (m as f64 * STORE_FRACTION) as u64);
    let stored = matches!((material, limit), (Some(b), Some(l)) if b > l);
    if stored {
        cmd.arg("--store").arg(dir.join("store"));
    }
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|source| MeasureError::Spawn {
            exe: opts.exe.display().to_string(),
            source,
        })?;
    let status = wait_limited(&mut child, opts.run_limit).map_err(|source| MeasureError::Io {
        what: "waiting for",
        file: opts.exe.display().to_string(),
        source,
    })?;
    let wall = start.elapsed().as_secs_f64();
    let Some(status) = status else {
        return Err(MeasureError::Timeout {
            trunc: trunc.into(),
            repeat,
            limit_s: opts.run_limit.as_secs(),
        });
    };
    if !status.success() {
        return Err(MeasureError::Exit {
            trunc: trunc.into(),
            repeat,
            status: status.to_string(),
            stderr_tail: tail(&err),
        });
    }
    let doc = read_doc(&json)?;
    if !doc.reference.argmax_agrees && !doc.reference.argmax_near_tie {
        return Err(MeasureError::Mismatch {
            max_abs_diff: doc.reference.max_abs_diff_fixed,
        });
    }
    let layers = doc.layers.clone();
    let mut summary = RunSummary::from_doc(doc, wall);
    summary.stored = stored;
    let _ = std::fs::remove_dir_all(dir.join("store"));
    Ok((summary, layers))
}

/// Runs a model file `opts.repeat` times in one truncation mode.
///
/// `model_hash` is [`fnv64`] of the model file's bytes (part of the settings
/// line); `dir` holds the runs' JSON and stderr files.
pub fn measure(
    opts: &RunOptions,
    model: &Path,
    model_hash: u64,
    trunc: &str,
    commit: &str,
    dir: &Path,
) -> Result<Measured, MeasureError> {
    let started = std::time::Instant::now();
    let mut runs = Vec::with_capacity(opts.repeat.max(1));
    let mut failed = Vec::new();
    for k in 1..=opts.repeat.max(1) {
        let mut retries = 0;
        loop {
            match run_once(opts, model, trunc, k, dir) {
                Ok(r) => {
                    runs.push(r);
                    break;
                }
                Err(e)
                    if trunc == "local" && e.is_reference_mismatch() && retries < LOCAL_RETRIES =>
                {
                    retries += 1;
                    failed.push(e.to_string());
                }
                Err(e) => return Err(e),
            }
        }
    }
    let mut m = Measured::from_runs(trunc, opts.settings_line(model_hash, trunc), commit, runs);
    m.failed_attempts = failed;
    m.wall_s = Some(started.elapsed().as_secs_f64());
    Ok(m)
}

// ---------------------------------------------------------------------------
// Where and when.

/// The current time, UTC, as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc_string(secs)
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (proleptic
/// Gregorian calendar; H. Hinnant's days-to-civil algorithm).
pub fn utc_string(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The machine the table was measured on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model (`model name` of /proc/cpuinfo), or `unknown`.
    pub cpu: String,
    /// Logical CPUs available to the process.
    pub cores: usize,
    /// Total memory (MemTotal of /proc/meminfo), bytes, if known.
    pub memory_bytes: Option<u64>,
    /// `uname`-style OS name.
    pub os: String,
}

impl Machine {
    /// `CPU model/logical cores`, the machine's part of a settings line.
    pub fn key(&self) -> String {
        format!("{}/{}", self.cpu, self.cores)
    }

    /// Reads /proc/cpuinfo and /proc/meminfo.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown".to_string(), |(_, v)| v.trim().to_string());
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .map(|kb| kb * 1024);
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_bytes,
            os: std::env::consts::OS.to_string(),
        }
    }
}

/// `git rev-parse HEAD` in the current directory, or `unknown`.
pub fn git_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "HEAD"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--resume` keeps a measurement only when the settings line is equal,
    /// and a measurement of another machine has another line.
    #[test]
    fn the_settings_line_names_the_machine() {
        let opts = |machine: &str| RunOptions {
            exe: PathBuf::from("pibench"),
            net: Some("lan".into()),
            threads: None,
            recv_timeout_s: 60,
            run_limit: Duration::from_secs(60),
            repeat: 1,
            insecure_test_params: false,
            machine: machine.into(),
        };
        let a = opts("AMD EPYC/2").settings_line(7, "local");
        assert!(a.ends_with(" machine=AMD EPYC/2"), "{a}");
        assert_ne!(
            a,
            opts("Intel(R) Xeon(R) Processor @ 2.50GHz/2").settings_line(7, "local")
        );
        assert_eq!(a, opts("AMD EPYC/2").settings_line(7, "local"));
        let m = Machine {
            cpu: "AMD EPYC".into(),
            cores: 2,
            memory_bytes: None,
            os: "linux".into(),
        };
        assert_eq!(m.key(), "AMD EPYC/2");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc_string(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_string(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_string(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    /// Only a completed run whose logits failed the reference check is
    /// retried (with local truncation); crashes and timeouts are not.
    #[test]
    fn reference_mismatches_are_told_apart() {
        let exit = |tail: &str| MeasureError::Exit {
            trunc: "local".into(),
            repeat: 1,
            status: "exit status: 1".into(),
            stderr_tail: tail.into(),
        };
        let argmax = "pibench: error: the private inference's argmax differs from the \
                      fixed-point reference (reference gap 2.7e-1, max |Δ| 1.6e7)";
        assert!(exit(argmax).is_reference_mismatch());
        assert!(MeasureError::Mismatch { max_abs_diff: 1.0 }.is_reference_mismatch());
        assert!(!exit("pibench: error: peer closed the connection").is_reference_mismatch());
        let timeout = MeasureError::Timeout {
            trunc: "local".into(),
            repeat: 1,
            limit_s: 10,
        };
        assert!(!timeout.is_reference_mismatch());
    }

    #[test]
    fn stats() {
        let s = Stat::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Stat::of(&[1.0, 4.0]).median, 2.5);
        assert_eq!(Stat::of(&[]), Stat::default());
    }

    #[test]
    fn parts_split_by_node_kind() {
        let l = |kind: &str, off: f64, on: f64, server_on: f64| DocLayer {
            kind: kind.into(),
            offline_s: off,
            online_s: on,
            server_online_s: server_on,
            ..Default::default()
        };
        // The client waits 0.1 s at the site for the server's conv.
        let layers = [
            l("conv2d", 2.0, 0.0, 0.1),
            l("site", 1.0, 0.3, 0.25),
            l("add", 0.0, 0.05, 0.0),
        ];
        let p = Parts::from_layers(&layers, 3.5, 0.4);
        assert_eq!(p.offline_he_s, 2.0);
        assert_eq!(p.offline_gc_s, 1.0);
        assert!((p.offline_other_s - 0.5).abs() < 1e-12);
        assert!((p.online_linear_s - 0.1).abs() < 1e-12);
        assert!((p.online_gc_s - 0.2).abs() < 1e-12);
        assert!((p.online_other_s - 0.1).abs() < 1e-12);
    }
}
