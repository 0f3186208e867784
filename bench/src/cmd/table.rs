//! `pibench table CONFIG...`: runs the rows of the seeds' latency tables
//! (`configs/tables/*.toml`) through the real two-party protocol and writes
//! `<table>.md`, `.csv`, `.json` and two plots per table.
//!
//! For every selected, supported row, in the config's order: build the
//! network ([`crate::table::Row::build_network`]), write it to a temporary
//! model file, and run `pibench run --model FILE --format json` as a child
//! process (this executable) `--repeat` times. Rows that build the same
//! network with the same settings are measured once; a failed row is
//! reported and the table goes on; `--resume` keeps measurements of an
//! earlier results file whose settings line is unchanged. Rows with many
//! linearized elements also run `--trunc exact` (the exact column), and
//! tables with PrivShap's communication-saving column also run each row's
//! all-ReLU network.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pibench_models::file::{to_bytes, SaveOptions};
use pibench_models::fixed::FixedPoint;
use pibench_models::graph::{Init, Network};
use pibench_protocol::shaper::NetProfile;

use super::infer::TruncArg;
use crate::table::measure::{self, fnv64, git_commit, Machine, Measured, RunOptions};
use crate::table::plot::write_plots;
use crate::table::results::{
    thousands, write_index, CellOut, RowResult, RowStatus, RunMeta, TableResult,
};
use crate::table::{Row, TableConfig};

/// Arguments of `pibench table`.
#[derive(Debug, Args)]
pub struct TableArgs {
    /// Table configs (configs/tables/*.toml), run in the order given.
    #[arg(required = true)]
    configs: Vec<PathBuf>,
    /// Network emulation passed to `pibench run`: none, lan, wan or rate=R,rtt=T.
    #[arg(long)]
    net: Option<String>,
    /// Runs per measurement; the tables show the median (± half the range).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Truncation of identity and polynomial elements in the main columns.
    #[arg(long, value_enum, default_value_t = TruncArg::Local)]
    trunc: TruncArg,
    /// Only these rows: comma-separated row ids, `*` matches any characters
    /// (e.g. `s1-thin*,s1s4`). Other rows are listed as not run (or kept with --resume).
    #[arg(long)]
    rows: Option<String>,
    /// Keep measurements of an earlier results file in --out-dir whose
    /// settings (model bytes, truncation, network, threads, repeat, machine) are unchanged.
    #[arg(long)]
    resume: bool,
    /// Folder of the outputs.
    #[arg(long, default_value = "results")]
    out_dir: PathBuf,
    /// Worker threads of each party (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Do not add the `--trunc exact` column for rows with many linearized elements.
    #[arg(long)]
    no_exact_column: bool,
    /// Fraction of linearized (identity or polynomial) activation elements
    /// above which a row gets the exact column.
    #[arg(long, default_value_t = 0.10)]
    exact_threshold: f64,
    /// Seed of the rows' random weights and random masks.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds a party waits for its peer before a run fails.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Wall-clock limit of one `pibench run`, seconds (it is killed with its server and client).
    #[arg(long, default_value_t = 4 * 3600)]
    run_limit: u64,
    /// Small, INSECURE HE parameters (tests only).
    #[arg(long, hide = true)]
    insecure_test_params: bool,
    /// Measure nothing: rewrite each table's Markdown, CSV and plots from its
    /// JSON in --out-dir (after a change to the report or the plots).
    #[arg(long, conflicts_with_all = ["rows", "resume"])]
    replot: bool,
}

/// Largest `--repeat`.
const MAX_REPEAT: usize = 100;

/// A `--rows` filter: comma-separated patterns with `*` wildcards.
#[derive(Debug, Clone)]
struct RowFilter(Vec<String>);

impl RowFilter {
    fn parse(s: &str) -> anyhow::Result<Self> {
        let pats: Vec<String> = s
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        if pats.is_empty() {
            bail!("--rows {s:?}: no row pattern");
        }
        Ok(Self(pats))
    }

    fn matches(&self, id: &str) -> bool {
        self.0.iter().any(|p| glob(p.as_bytes(), id.as_bytes()))
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && p[pi] != b'*' && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// Measurements made (or kept) in this invocation, by settings line.
type Cache = HashMap<String, (Measured, String)>;

struct Ctx<'a> {
    opts: RunOptions,
    trunc: &'static str,
    exact_column: bool,
    exact_threshold: f64,
    seed: u64,
    commit: String,
    cache: Cache,
    bar: &'a ProgressBar,
    work: tempfile::TempDir,
}

impl Ctx<'_> {
    fn say(&self, line: String) {
        self.bar.suspend(|| println!("{line}"));
    }

    /// Writes the network to a model file; returns its path and byte hash.
    fn model_file(
        &self,
        net: &Network,
        dataset: Option<String>,
        name: &str,
    ) -> anyhow::Result<(PathBuf, u64)> {
        let opts = SaveOptions {
            dataset,
            convention: crate::table::ALL_SITES,
            fixed: FixedPoint::default(),
            bounds: None,
        };
        let bytes = to_bytes(net, &opts).with_context(|| format!("serialising {name}"))?;
        let path = self.work.path().join(format!("{name}.safetensors"));
        std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
        Ok((path, fnv64(&bytes)))
    }

    /// One measurement: from this invocation's cache, the previous results
    /// file, or a fresh run.
    fn measurement(
        &mut self,
        model: &Path,
        hash: u64,
        trunc: &str,
        who: &str,
        prev: &Cache,
    ) -> (Result<Measured, String>, Option<String>) {
        let line = self.opts.settings_line(hash, trunc);
        if let Some((m, by)) = self.cache.get(&line) {
            return (Ok(m.clone()), Some(by.clone()));
        }
        if let Some((m, by)) = prev.get(&line) {
            self.cache.insert(line, (m.clone(), by.clone()));
            let same = (by != who).then(|| by.clone());
            self.say(format!(
                "{who}: {trunc}: kept from the previous results ({}, {})",
                m.date, m.settings
            ));
            return (Ok(m.clone()), same);
        }
        let dir = self
            .work
            .path()
            .join(format!("{}-{trunc}", who.replace('/', "_")));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            return (Err(format!("{}: {e}", dir.display())), None);
        }
        match measure::measure(&self.opts, model, hash, trunc, &self.commit, &dir) {
            Ok(m) => {
                let _ = std::fs::remove_dir_all(&dir);
                self.cache.insert(line, (m.clone(), who.to_string()));
                (Ok(m), None)
            }
            Err(e) => (Err(e.to_string()), None),
        }
    }
}

fn base_row(row: &Row) -> RowResult {
    RowResult {
        id: row.id.clone(),
        label: row.label.clone(),
        method: row.method.clone(),
        band: row.band.clone(),
        group: row.group.clone(),
        side: row.side.clone(),
        setting: row.setting.id.clone(),
        paper: row
            .paper
            .iter()
            .map(|c| CellOut {
                key: c.key.clone(),
                printed: c.printed.clone(),
                value: c.value,
            })
            .collect(),
        relus_discrepancy: row.relus_discrepancy.clone(),
        ..Default::default()
    }
}

/// Elements of every activation site: (ReLU, identity, polynomial).
fn elements(net: &Network) -> (u64, u64, u64) {
    let (mut r, mut i, mut p) = (0u64, 0u64, 0u64);
    for s in net.sites() {
        let ones = s.mask.iter().filter(|&&m| m != 0).count() as u64;
        let zeros = s.mask.len() as u64 - ones;
        r += ones;
        if s.poly.is_some() {
            p += zeros;
        } else {
            i += zeros;
        }
    }
    (r, i, p)
}

fn short(m: &Measured) -> String {
    let d = m.median();
    format!(
        "online {:.3} s, offline {:.2} s, {:.2} MB online, {:.1} MB offline{}",
        m.online_s.median,
        m.offline_s.median,
        d.online_total_bytes() as f64 / 1e6,
        d.offline_total_bytes() as f64 / 1e6,
        if d.stored {
            " (through --store: the client's material exceeds 30 % of the memory available)"
        } else {
            ""
        }
    )
}

/// Runs one row into `rr`.
fn run_row(ctx: &mut Ctx<'_>, table: &TableConfig, row: &Row, rr: &mut RowResult, prev: &Cache) {
    let who = format!("{}/{}", table.table.id, row.id);
    let built = match row.build_network(ctx.seed) {
        Ok(b) => b,
        Err(e) => {
            rr.status = RowStatus::Failed;
            rr.message = Some(format!("building the network: {e}"));
            ctx.say(format!(
                "{who}: FAILED: {}",
                rr.message.as_deref().unwrap_or("")
            ));
            return;
        }
    };
    let (relus, identity, poly) = elements(&built.network);
    let all = relus + identity + poly;
    rr.relus = Some(built.relus);
    rr.identity = Some(identity);
    rr.poly = Some(poly);
    rr.flops = Some(built.flops);
    rr.linearized_fraction = Some(if all == 0 {
        0.0
    } else {
        (identity + poly) as f64 / all as f64
    });
    rr.mask_source = Some(built.mask_source.clone());
    rr.network_key = Some(built.network_key.clone());
    let dataset = Some(built.dataset.name().to_string());
    let (model, hash) = match ctx.model_file(&built.network, dataset.clone(), &row.id) {
        Ok(x) => x,
        Err(e) => {
            rr.status = RowStatus::Failed;
            rr.message = Some(format!("{e:#}"));
            ctx.say(format!("{who}: FAILED: {e:#}"));
            return;
        }
    };
    ctx.bar.set_message(format!(
        "{who} ({} ReLUs, {})",
        thousands(built.relus),
        ctx.trunc
    ));
    let trunc = ctx.trunc;
    let (main, same) = ctx.measurement(&model, hash, trunc, &who, prev);
    rr.same_network_as = same.clone();
    match main {
        Ok(m) => {
            rr.status = RowStatus::Measured;
            let how = same.map_or(String::new(), |s| format!(" (as {s})"));
            ctx.say(format!(
                "{who} ({} ReLUs): {} [{trunc}]{how}",
                thousands(built.relus),
                short(&m)
            ));
            rr.measured = Some(m);
        }
        Err(e) => {
            rr.status = RowStatus::Failed;
            ctx.say(format!("{who}: FAILED: {e}"));
            rr.message = Some(e);
            let _ = std::fs::remove_file(&model);
            return;
        }
    }
    if trunc == "local"
        && ctx.exact_column
        && rr.linearized_fraction.unwrap_or(0.0) > ctx.exact_threshold
    {
        ctx.bar
            .set_message(format!("{who} ({} ReLUs, exact)", thousands(built.relus)));
        match ctx.measurement(&model, hash, "exact", &who, prev).0 {
            Ok(m) => {
                ctx.say(format!("{who}: exact column: {}", short(&m)));
                rr.exact = Some(m);
            }
            Err(e) => {
                ctx.say(format!("{who}: exact column FAILED: {e}"));
                rr.exact_error = Some(e);
            }
        }
    }
    let _ = std::fs::remove_file(&model);
    if table.columns.iter().any(|c| c.key == "comm_saving") {
        ctx.bar.set_message(format!("{who} (all-ReLU reference)"));
        let r = row
            .build_all_relu_network(Init::Seeded(ctx.seed))
            .map_err(|e| e.to_string())
            .and_then(|net| {
                ctx.model_file(&net, dataset.clone(), &format!("{}-all-relu", row.id))
                    .map_err(|e| format!("{e:#}"))
            });
        let m = match r {
            Ok((path, h)) => {
                let m = ctx
                    .measurement(&path, h, trunc, &format!("{who}/all-relu"), prev)
                    .0;
                let _ = std::fs::remove_file(&path);
                m
            }
            Err(e) => Err(e),
        };
        match m {
            Ok(m) => {
                ctx.say(format!("{who}: all-ReLU reference: {}", short(&m)));
                rr.all_relu = Some(m);
            }
            Err(e) => {
                ctx.say(format!("{who}: all-ReLU reference FAILED: {e}"));
                rr.all_relu_error = Some(e);
            }
        }
    }
}

/// Measurements of an earlier results file, by settings line.
fn previous(prev: Option<&TableResult>) -> Cache {
    let mut c = Cache::new();
    let Some(p) = prev else { return c };
    for r in &p.rows {
        let who = format!("{}/{}", p.table.id, r.id);
        for (m, w) in [
            (&r.measured, who.clone()),
            (&r.exact, who.clone()),
            (&r.all_relu, format!("{who}/all-relu")),
        ] {
            if let Some(m) = m {
                c.entry(m.settings.clone()).or_insert((m.clone(), w));
            }
        }
    }
    c
}

/// `pibench table`.
pub fn run(args: TableArgs) -> anyhow::Result<()> {
    if args.repeat == 0 || args.repeat > MAX_REPEAT {
        bail!("--repeat {}: expected 1 to {MAX_REPEAT}", args.repeat);
    }
    if !(0.0..=1.0).contains(&args.exact_threshold) {
        bail!(
            "--exact-threshold {}: expected a fraction in [0, 1]",
            args.exact_threshold
        );
    }
    if args.threads == Some(0) {
        bail!("--threads 0: expected at least 1");
    }
    if args.replot {
        for path in &args.configs {
            let cfg = TableConfig::load(path)?;
            let json_path = args.out_dir.join(format!("{}.json", cfg.table.id));
            let mut result = TableResult::read(&json_path)?
                .with_context(|| format!("--replot: no results at {}", json_path.display()))?;
            result.compute_ratios();
            let mut files = result.write(&args.out_dir)?;
            files.extend(write_plots(&result, &args.out_dir)?);
            println!(
                "{}: rewrote {}",
                cfg.table.id,
                files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let index = write_index(&args.out_dir)?;
        println!("index: {}", index.display());
        return Ok(());
    }
    let filter = args.rows.as_deref().map(RowFilter::parse).transpose()?;
    let net = match &args.net {
        Some(s) => Some(NetProfile::from_str(s).map_err(|e| anyhow::anyhow!("--net: {e}"))?),
        None => None,
    };
    let net_flag = net
        .as_ref()
        .filter(|p| !p.is_none())
        .map(|p| p.preset_name().map_or_else(|| p.spec(), str::to_string));
    let net_detail = net
        .as_ref()
        .map_or("none (no emulation)".to_string(), |p| p.to_string());
    // Every config is read before anything runs: a bad one is a one-line error.
    let mut configs = Vec::new();
    for path in &args.configs {
        configs.push(TableConfig::load(path)?);
    }
    let mut ids = std::collections::BTreeSet::new();
    for c in &configs {
        if !ids.insert(c.table.id.clone()) {
            bail!("table {} is given twice", c.table.id);
        }
    }
    if let Some(f) = &filter {
        if !configs
            .iter()
            .flat_map(|c| &c.rows)
            .any(|r| f.matches(&r.id))
        {
            bail!(
                "--rows {:?} matches no row of the given tables",
                f.0.join(",")
            );
        }
    }
    let selected = |r: &Row| filter.as_ref().is_none_or(|f| f.matches(&r.id));
    let todo: u64 = configs
        .iter()
        .flat_map(|c| &c.rows)
        .filter(|r| selected(r) && r.is_supported())
        .count() as u64;
    let bar = ProgressBar::with_draw_target(
        Some(todo),
        if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} rows  {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(500));
    // The commit the binary was built from; the checkout's, if it differs.
    let built = env!("PIBENCH_BUILD_COMMIT");
    let head = git_commit();
    let commit = if head == built || head == "unknown" {
        built.to_string()
    } else {
        format!("{built} (built; checkout at {head})")
    };
    let exe = std::env::current_exe().context("locating the pibench executable")?;
    let trunc = match args.trunc {
        TruncArg::Local => "local",
        TruncArg::Exact => "exact",
    };
    let machine = Machine::detect();
    let mut ctx = Ctx {
        opts: RunOptions {
            exe,
            net: net_flag.clone(),
            threads: args.threads,
            recv_timeout_s: args.timeout.max(1),
            run_limit: Duration::from_secs(args.run_limit.max(1)),
            repeat: args.repeat,
            insecure_test_params: args.insecure_test_params,
            machine: machine.key(),
        },
        trunc,
        exact_column: !args.no_exact_column,
        exact_threshold: args.exact_threshold,
        seed: args.seed,
        commit: commit.clone(),
        cache: Cache::new(),
        bar: &bar,
        work: tempfile::Builder::new()
            .prefix("pibench-table-")
            .tempdir()
            .context("creating a temporary folder for model files")?,
    };
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut summary = Vec::new();
    for cfg in &configs {
        let started = Instant::now();
        let id = cfg.table.id.clone();
        let json_path = args.out_dir.join(format!("{id}.json"));
        let prev = if args.resume {
            TableResult::read(&json_path)?
        } else {
            None
        };
        let prev_cache = previous(prev.as_ref());
        let meta = |elapsed_s: f64| RunMeta {
            machine: machine.clone(),
            network: net_flag.clone().unwrap_or_else(|| "none".into()),
            network_detail: net_detail.clone(),
            trunc: trunc.into(),
            repeat: args.repeat,
            threads: args.threads.map_or("all".into(), |t| t.to_string()),
            exact_column: !args.no_exact_column,
            exact_threshold: args.exact_threshold,
            seed: args.seed,
            commit: commit.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            date: measure::utc_now(),
            command: command.clone(),
            elapsed_s,
        };
        let mut result = TableResult::new(cfg, meta(0.0));
        let mut counts = [0usize; 4];
        for row in &cfg.rows {
            let mut rr = base_row(row);
            if !selected(row) {
                if let Some(p) = prev
                    .as_ref()
                    .and_then(|p| p.rows.iter().find(|r| r.id == row.id))
                {
                    rr = p.clone();
                }
            } else if let Err(why) = &row.network {
                rr.status = RowStatus::NotSupported;
                rr.message = Some(why.clone());
                ctx.say(format!("{id}/{}: not supported: {why}", row.id));
            } else {
                run_row(&mut ctx, cfg, row, &mut rr, &prev_cache);
                bar.inc(1);
            }
            counts[rr.status as usize] += 1;
            result.rows.push(rr);
            result.run = meta(started.elapsed().as_secs_f64());
            result.compute_ratios();
            result.write(&args.out_dir)?;
        }
        let mut files = result.write(&args.out_dir)?;
        files.extend(write_plots(&result, &args.out_dir)?);
        summary.push(format!(
            "{id}: {} measured, {} failed, {} not supported, {} not run; {:.0} s; wrote {}",
            counts[RowStatus::Measured as usize],
            counts[RowStatus::Failed as usize],
            counts[RowStatus::NotSupported as usize],
            counts[RowStatus::NotRun as usize],
            started.elapsed().as_secs_f64(),
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    bar.finish_and_clear();
    for s in summary {
        println!("{s}");
    }
    let index = write_index(&args.out_dir)?;
    println!("index: {}", index.display());
    Ok(())
}
