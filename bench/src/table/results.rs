//! A measured table: the paper's cells beside the measured figures, and its
//! three files (`<table>.json`, `.csv`, `.md`).
//!
//! The JSON file is the source of the other two and of the plots; `pibench
//! table --resume` reads it back to skip measurements whose settings line is
//! unchanged ([`super::measure::RunOptions::settings_line`]).

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::config::{Column, Setting, TableConfig, Unit};
use super::measure::{Machine, Measured};

/// Format tag of the JSON file.
pub const FORMAT: &str = "pibench-table/1";
/// Largest results JSON read back by `--resume` (bytes).
pub const MAX_RESULTS_BYTES: u64 = 256 << 20;

/// Errors while reading or writing a table's files.
#[derive(Debug, Error)]
pub enum ResultsError {
    /// A file could not be read or written.
    #[error("{file}: {source}")]
    Io {
        /// The file.
        file: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A previous results file is not one this version wrote.
    #[error("{file}: not a pibench table results file: {reason}")]
    Format {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
}

/// The table's identity, from its config.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TableMeta {
    /// Table id (file stem of the outputs).
    pub id: String,
    /// Title.
    pub title: String,
    /// Citation.
    pub paper: String,
    /// The paper's table number.
    pub number: String,
    /// Caption.
    pub caption: String,
    /// Seed text file.
    pub seed: String,
    /// Config file.
    pub config: String,
    /// Transcription notes.
    pub notes: Vec<String>,
}

/// A measurement setting stated by the paper.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PaperSetting {
    /// Id.
    pub id: String,
    /// Protocol.
    pub protocol: String,
    /// Machine.
    pub machine: String,
    /// Network.
    pub network: String,
    /// Threads.
    pub threads: String,
    /// What the latency column measures.
    pub latency: String,
}

impl From<&Setting> for PaperSetting {
    fn from(s: &Setting) -> Self {
        Self {
            id: s.id.clone(),
            protocol: s.protocol.clone(),
            machine: s.machine.clone(),
            network: s.network.clone(),
            threads: s.threads.clone(),
            latency: s.latency.clone(),
        }
    }
}

/// A column of the paper's table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ColumnMeta {
    /// Key.
    pub key: String,
    /// Header as printed.
    pub label: String,
    /// Unit (`K`, `M`, `s`, `%`, `×`, `number`, `text`).
    pub unit: String,
}

impl From<&Column> for ColumnMeta {
    fn from(c: &Column) -> Self {
        Self {
            key: c.key.clone(),
            label: c.label.clone(),
            unit: c.unit.as_str().into(),
        }
    }
}

/// How this invocation measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunMeta {
    /// The machine.
    pub machine: Machine,
    /// `--net` as passed to `pibench run` (`none`: flag omitted, no emulation).
    pub network: String,
    /// The profile in words (rate and RTT).
    pub network_detail: String,
    /// Truncation mode of the main columns.
    pub trunc: String,
    /// Runs per measurement.
    pub repeat: usize,
    /// `--threads`, or `all`.
    pub threads: String,
    /// Whether rows with many linearized elements also ran `exact`.
    pub exact_column: bool,
    /// Fraction of linearized (identity + polynomial) elements above which
    /// the exact column is measured.
    pub exact_threshold: f64,
    /// Seed of weights and random masks.
    pub seed: u64,
    /// The commit the pibench binary was built from (`-dirty` when its
    /// tracked files differed; the checkout's commit added when it differs),
    /// or `unknown`.
    pub commit: String,
    /// pibench version.
    pub version: String,
    /// When this invocation finished (UTC).
    pub date: String,
    /// The command line.
    pub command: String,
    /// Wall seconds of this invocation for this table.
    pub elapsed_s: f64,
}

/// A paper cell as printed and as a number.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CellOut {
    /// Column key.
    pub key: String,
    /// As printed.
    pub printed: String,
    /// As a number in the column's unit.
    pub value: Option<f64>,
}

/// A row's outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowStatus {
    /// Measured by protocol runs.
    Measured,
    /// Building or running failed (see `message`).
    Failed,
    /// The config marks the row `not_supported` (see `message`).
    NotSupported,
    /// Not selected by `--rows` in this invocation.
    #[default]
    NotRun,
}

/// measured / paper for one cell.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ratio {
    /// Paper column key.
    pub column: String,
    /// Short name of the ratio's column, e.g. `lat total/paper`.
    pub name: String,
    /// What was measured, in words.
    pub measured_what: String,
    /// The paper's value.
    pub paper: f64,
    /// The measured value (seconds, or a ratio of measurements).
    pub measured: f64,
    /// measured / paper.
    pub ratio: f64,
}

/// One row of the results.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RowResult {
    /// Row id.
    pub id: String,
    /// Label.
    pub label: String,
    /// Method as printed.
    pub method: String,
    /// Band.
    pub band: Option<String>,
    /// Group (comparison tables).
    pub group: Option<String>,
    /// `sota` / `ours`.
    pub side: Option<String>,
    /// The paper setting id of the row's numbers.
    pub setting: String,
    /// The paper's cells.
    pub paper: Vec<CellOut>,
    /// Outcome.
    pub status: RowStatus,
    /// Error, or why not supported.
    pub message: Option<String>,
    /// Where the mask came from (the builder's statement).
    pub mask_source: Option<String>,
    /// ReLUs the built network evaluates.
    pub relus: Option<u64>,
    /// Identity elements of the built network.
    pub identity: Option<u64>,
    /// Polynomial elements of the built network.
    pub poly: Option<u64>,
    /// MACs of the built network (the table's counting convention).
    pub flops: Option<u64>,
    /// (identity + polynomial) / all activation elements.
    pub linearized_fraction: Option<f64>,
    /// The paper's printed count differs from the network's, and why.
    pub relus_discrepancy: Option<String>,
    /// Network de-duplication key.
    pub network_key: Option<String>,
    /// `table/row` whose measurement this row reuses (same network and settings).
    pub same_network_as: Option<String>,
    /// The main measurement (`--trunc` mode).
    pub measured: Option<Measured>,
    /// The `exact` column, for rows with many linearized elements.
    pub exact: Option<Measured>,
    /// Why the exact column failed.
    pub exact_error: Option<String>,
    /// The all-ReLU network of the row's architecture (PrivShap's
    /// communication-saving reference).
    pub all_relu: Option<Measured>,
    /// Why the all-ReLU reference failed.
    pub all_relu_error: Option<String>,
    /// measured / paper ratios.
    pub ratios: Vec<Ratio>,
}

/// A measured table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TableResult {
    /// [`FORMAT`].
    pub format: String,
    /// Which table.
    pub table: TableMeta,
    /// The paper's settings.
    pub settings: Vec<PaperSetting>,
    /// The paper's columns.
    pub columns: Vec<ColumnMeta>,
    /// How this invocation measured.
    pub run: RunMeta,
    /// Rows, in the config's order.
    pub rows: Vec<RowResult>,
}

impl TableResult {
    /// An empty result for a config.
    pub fn new(cfg: &TableConfig, run: RunMeta) -> Self {
        Self {
            format: FORMAT.into(),
            table: TableMeta {
                id: cfg.table.id.clone(),
                title: cfg.table.title.clone(),
                paper: cfg.table.paper.clone(),
                number: cfg.table.number.clone(),
                caption: cfg.table.caption.clone(),
                seed: cfg.table.seed.clone(),
                config: cfg.path.display().to_string(),
                notes: cfg.table.notes.clone(),
            },
            settings: cfg.settings.iter().map(PaperSetting::from).collect(),
            columns: cfg.columns.iter().map(ColumnMeta::from).collect(),
            run,
            rows: Vec::new(),
        }
    }

    /// Reads a results file written before (for `--resume`); `Ok(None)` when
    /// there is none.
    pub fn read(path: &Path) -> Result<Option<Self>, ResultsError> {
        let file = path.display().to_string();
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ResultsError::Io { file, source }),
        };
        let mut bytes = Vec::new();
        f.take(MAX_RESULTS_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| ResultsError::Io {
                file: file.clone(),
                source,
            })?;
        if bytes.len() as u64 > MAX_RESULTS_BYTES {
            return Err(ResultsError::Format {
                file,
                reason: format!("larger than {MAX_RESULTS_BYTES} bytes"),
            });
        }
        let r: TableResult = serde_json::from_slice(&bytes).map_err(|e| ResultsError::Format {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        if r.format != FORMAT {
            return Err(ResultsError::Format {
                file,
                reason: format!("format {:?}, expected {FORMAT:?}", r.format),
            });
        }
        Ok(Some(r))
    }

    /// The paper column with this key.
    pub fn column(&self, key: &str) -> Option<&ColumnMeta> {
        self.columns.iter().find(|c| c.key == key)
    }

    /// Fills every row's `ratios` (measured / paper) from the measurements.
    ///
    /// Which measurement a paper column is compared with:
    /// * `lat`, `latency` (seconds): the measured offline + online time
    ///   (`total`), and the online time alone (the papers do not say which
    ///   one they print);
    /// * `he` (DeepReShape): offline time of the linear nodes (the HE layer
    ///   protocol); `gc`: offline + online time of the other nodes (garbling,
    ///   OT, evaluation);
    /// * `imp_lat`, `imp_he`, `imp_gc` (×, on the `ours` row of a group): the
    ///   same measured figure of the group's `sota` row divided by this row's;
    /// * `comm_saving` (×, PrivShap): offline + online bytes of the all-ReLU
    ///   network divided by this row's (setup excluded).
    pub fn compute_ratios(&mut self) {
        let total = |m: &Measured| m.total_s.median;
        let he = |m: &Measured| m.median().parts.offline_he_s;
        let gc = |m: &Measured| {
            let p = m.median().parts;
            p.offline_gc_s + p.online_gc_s
        };
        let sota: std::collections::BTreeMap<String, Measured> = self
            .rows
            .iter()
            .filter(|r| r.side.as_deref() == Some("sota"))
            .filter_map(|r| Some((r.group.clone()?, r.measured.clone()?)))
            .collect();
        for row in &mut self.rows {
            row.ratios.clear();
            let Some(m) = row.measured.clone() else {
                continue;
            };
            for cell in &row.paper {
                let Some(paper) = cell.value.filter(|v| *v > 0.0) else {
                    continue;
                };
                let mut push = |name: &str, what: &str, measured: f64| {
                    if measured.is_finite() && measured > 0.0 {
                        row.ratios.push(Ratio {
                            column: cell.key.clone(),
                            name: name.into(),
                            measured_what: what.into(),
                            paper,
                            measured,
                            ratio: measured / paper,
                        });
                    }
                };
                let group_sota = row.group.as_ref().and_then(|g| sota.get(g));
                match cell.key.as_str() {
                    "lat" | "latency" => {
                        push(
                            &format!("{} total/paper", cell.key),
                            "offline + online seconds",
                            total(&m),
                        );
                        push(
                            &format!("{} online/paper", cell.key),
                            "online seconds",
                            m.online_s.median,
                        );
                    }
                    "he" => push(
                        "he/paper",
                        "offline seconds of the linear nodes (HE)",
                        he(&m),
                    ),
                    "gc" => push(
                        "gc/paper",
                        "offline + online seconds of the activation nodes (GC, OT)",
                        gc(&m),
                    ),
                    "imp_lat" | "imp_he" | "imp_gc" => {
                        let Some(s) = group_sota else { continue };
                        if row.side.as_deref() != Some("ours") {
                            continue;
                        }
                        let f: &dyn Fn(&Measured) -> f64 = match cell.key.as_str() {
                            "imp_lat" => &total,
                            "imp_he" => &he,
                            _ => &gc,
                        };
                        let (a, b) = (f(s), f(&m));
                        if b > 0.0 {
                            push(
                                &format!("{}/paper", cell.key),
                                "the sota row's measured figure / this row's",
                                a / b,
                            );
                        }
                    }
                    "comm_saving" => {
                        let Some(ar) = &row.all_relu else { continue };
                        let bytes = |m: &Measured| {
                            (m.median().offline_total_bytes() + m.median().online_total_bytes())
                                as f64
                        };
                        let pr = bytes(&m);
                        if pr > 0.0 {
                            push(
                                "comm_saving/paper",
                                "offline + online bytes of the all-ReLU network / this row's",
                                bytes(ar) / pr,
                            );
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// The ratio names present in the table, in first-seen order.
    pub fn ratio_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for r in &self.rows {
            for q in &r.ratios {
                if !names.contains(&q.name) {
                    names.push(q.name.clone());
                }
            }
        }
        names
    }

    /// Writes `<id>.json`, `<id>.csv` and `<id>.md` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, ResultsError> {
        std::fs::create_dir_all(dir).map_err(|source| ResultsError::Io {
            file: dir.display().to_string(),
            source,
        })?;
        let id = &self.table.id;
        let json = serde_json::to_vec_pretty(self).map_err(|e| ResultsError::Format {
            file: format!("{id}.json"),
            reason: e.to_string(),
        })?;
        let files = [
            (dir.join(format!("{id}.json")), json),
            (dir.join(format!("{id}.csv")), self.csv().into_bytes()),
            (dir.join(format!("{id}.md")), self.markdown().into_bytes()),
        ];
        let mut out = Vec::new();
        for (path, bytes) in files {
            write_atomic(&path, &bytes)?;
            out.push(path);
        }
        Ok(out)
    }

    fn has_exact(&self) -> bool {
        self.rows.iter().any(|r| r.exact.is_some())
    }

    fn has_all_relu(&self) -> bool {
        self.rows.iter().any(|r| r.all_relu.is_some())
    }

    /// The CSV file: one line per row, every figure in base units (s, bytes).
    pub fn csv(&self) -> String {
        let mut head: Vec<String> = ["table", "row", "method", "group", "side", "status"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for c in &self.columns {
            head.push(format!("paper_{}", c.key));
        }
        let measured = [
            "relus_run",
            "linearized_fraction",
            "trunc",
            "repeat",
            "online_s",
            "online_s_min",
            "online_s_max",
            "offline_s",
            "offline_s_min",
            "offline_s_max",
            "total_s",
            "setup_s",
            "online_bytes",
            "offline_bytes",
            "offline_he_bytes",
            "offline_gc_bytes",
            "offline_ot_bytes",
            "offline_poly_bytes",
            "online_input_bytes",
            "online_gc_bytes",
            "online_reply_bytes",
            "online_poly_bytes",
            "online_reveal_bytes",
            "online_rounds",
            "offline_he_s",
            "offline_gc_s",
            "offline_other_s",
            "online_linear_s",
            "online_gc_s",
            "online_other_s",
            "client_peak_rss",
            "server_peak_rss",
            "local_failure_bound",
            "exact_online_s",
            "exact_offline_s",
            "exact_online_bytes",
            "exact_offline_bytes",
            "all_relu_bytes",
        ];
        head.extend(measured.iter().map(|s| s.to_string()));
        let ratio_names = self.ratio_names();
        for n in &ratio_names {
            head.push(format!("ratio {n}"));
        }
        head.extend(["mask_source".into(), "message".into()]);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}",
            head.iter()
                .map(|h| csv_field(h))
                .collect::<Vec<_>>()
                .join(",")
        );
        for r in &self.rows {
            let mut f: Vec<String> = vec![
                self.table.id.clone(),
                r.id.clone(),
                r.method.clone(),
                r.group.clone().unwrap_or_default(),
                r.side.clone().unwrap_or_default(),
                status_name(r.status).into(),
            ];
            for c in &self.columns {
                f.push(
                    r.paper
                        .iter()
                        .find(|p| p.key == c.key)
                        .map(|p| p.printed.clone())
                        .unwrap_or_default(),
                );
            }
            let num = |v: f64| format!("{v}");
            let opt = |v: Option<String>| v.unwrap_or_default();
            f.push(opt(r.relus.map(|v| v.to_string())));
            f.push(opt(r.linearized_fraction.map(|v| format!("{v:.4}"))));
            match &r.measured {
                Some(m) => {
                    let d = m.median();
                    let g = |map: &std::collections::BTreeMap<String, u64>, k: &str| {
                        map.get(k).copied().unwrap_or(0).to_string()
                    };
                    f.extend([
                        m.trunc.clone(),
                        m.runs.len().to_string(),
                        num(m.online_s.median),
                        num(m.online_s.min),
                        num(m.online_s.max),
                        num(m.offline_s.median),
                        num(m.offline_s.min),
                        num(m.offline_s.max),
                        num(m.total_s.median),
                        num(m.setup_s.median),
                        d.online_total_bytes().to_string(),
                        d.offline_total_bytes().to_string(),
                        g(&d.offline_bytes, "he"),
                        g(&d.offline_bytes, "gc"),
                        g(&d.offline_bytes, "ot"),
                        g(&d.offline_bytes, "poly"),
                        g(&d.online_bytes, "input"),
                        g(&d.online_bytes, "gc"),
                        g(&d.online_bytes, "reply"),
                        g(&d.online_bytes, "poly"),
                        g(&d.online_bytes, "reveal"),
                        d.online_rounds.to_string(),
                        num(d.parts.offline_he_s),
                        num(d.parts.offline_gc_s),
                        num(d.parts.offline_other_s),
                        num(d.parts.online_linear_s),
                        num(d.parts.online_gc_s),
                        num(d.parts.online_other_s),
                        d.client_peak_rss.to_string(),
                        d.server_peak_rss.to_string(),
                        format!("{:e}", d.local_failure_bound),
                    ]);
                }
                None => f.extend(std::iter::repeat_n(String::new(), 31)),
            }
            match &r.exact {
                Some(e) => f.extend([
                    num(e.online_s.median),
                    num(e.offline_s.median),
                    e.median().online_total_bytes().to_string(),
                    e.median().offline_total_bytes().to_string(),
                ]),
                None => f.extend(std::iter::repeat_n(String::new(), 4)),
            }
            f.push(opt(r.all_relu.as_ref().map(|a| {
                (a.median().offline_total_bytes() + a.median().online_total_bytes()).to_string()
            })));
            for n in &ratio_names {
                f.push(opt(r
                    .ratios
                    .iter()
                    .find(|q| &q.name == n)
                    .map(|q| format!("{:.4}", q.ratio))));
            }
            f.push(r.mask_source.clone().unwrap_or_default());
            f.push(r.message.clone().unwrap_or_default());
            let _ = writeln!(
                out,
                "{}",
                f.iter().map(|h| csv_field(h)).collect::<Vec<_>>().join(",")
            );
        }
        out
    }

    /// The markdown file.
    pub fn markdown(&self) -> String {
        let t = &self.table;
        let run = &self.run;
        let mut md = String::new();
        let _ = writeln!(md, "# {}\n", t.title);
        let _ = writeln!(
            md,
            "{} — {} (`{}`, transcribed in `{}`). Caption: “{}”\n",
            t.paper, t.number, t.seed, t.config, t.caption
        );
        let mem = run.machine.memory_bytes.map_or(String::new(), |b| {
            format!(", {:.0} GB memory", b as f64 / 1e9)
        });
        let _ = writeln!(md, "## This measurement\n");
        let _ = writeln!(
            md,
            "* Machine: {} ({} logical cores{mem}, {}).",
            run.machine.cpu, run.machine.cores, run.machine.os
        );
        let _ = writeln!(
            md,
            "* Network: `--net {}`: {} (server and client on loopback); threads: {}; truncation: `{}`{}.",
            run.network,
            run.network_detail,
            run.threads,
            run.trunc,
            if run.exact_column {
                format!(
                    ", plus an `exact` column for rows with more than {:.0} % linearized \
                     (identity or polynomial) elements",
                    run.exact_threshold * 100.0
                )
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            md,
            "* Runs per row: {} (median{}); seed {} for weights and random masks.",
            run.repeat,
            if run.repeat > 1 {
                ", ± half the range"
            } else {
                ""
            },
            run.seed
        );
        let _ = writeln!(
            md,
            "* pibench {} at commit `{}`, {}; command: `{}` ({:.0} s).\n",
            run.version, run.commit, run.date, run.command, run.elapsed_s
        );
        let _ = writeln!(md, "The paper's setting:\n");
        for s in &self.settings {
            let _ = writeln!(
                md,
                "* `{}`: {}; machine: {}; network: {}; threads: {}. {}",
                s.id, s.protocol, s.machine, s.network, s.threads, s.latency
            );
        }
        let _ = writeln!(
            md,
            "\nEvery measured cell comes from a two-party run of `pibench run` (server and \
             client processes on loopback): online s / offline s are the client's wall time \
             of each phase, total = offline + online (the session setup — HE keys, base OTs — \
             is once per session and not included); MB are bytes in both directions counted \
             on the channel (10⁶ bytes); HE/GC/OT/poly is the offline traffic per phase; \
             rounds are online client→server turns. Ratios are measured / paper. Rows that \
             build the same network are measured once.\n"
        );

        // The table.
        let ratio_names = self.ratio_names();
        let exact = self.has_exact();
        let all_relu = self.has_all_relu();
        let mut head: Vec<String> = vec!["row".into(), "method".into()];
        for c in &self.columns {
            head.push(esc(&c.label));
        }
        head.extend(
            [
                "ReLUs run",
                "online s",
                "offline s",
                "total s",
                "online MB",
                "offline MB",
                "HE/GC/OT/poly MB",
                "rounds",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        if all_relu {
            head.push("all-ReLU MB".into());
        }
        head.extend(ratio_names.iter().cloned());
        if exact {
            head.extend(
                ["exact online s", "exact total s", "exact online MB"]
                    .iter()
                    .map(|s| s.to_string()),
            );
        }
        let _ = writeln!(md, "| {} |", head.join(" | "));
        let _ = writeln!(md, "|{}", head.iter().map(|_| " --- |").collect::<String>());
        for r in &self.rows {
            let mut f: Vec<String> = vec![format!("`{}`", r.id), esc(&r.method)];
            for c in &self.columns {
                f.push(esc(&r
                    .paper
                    .iter()
                    .find(|p| p.key == c.key)
                    .map(|p| p.printed.clone())
                    .unwrap_or_default()));
            }
            f.push(r.relus.map_or(String::new(), thousands));
            match (&r.measured, r.status) {
                (Some(m), _) => {
                    let d = m.median();
                    let show = |s: &super::measure::Stat| {
                        if m.runs.len() > 1 {
                            format!("{} ±{}", fmt_num(s.median), fmt_num(s.half_range()))
                        } else {
                            fmt_num(s.median)
                        }
                    };
                    let g = |k: &str| d.offline_bytes.get(k).copied().unwrap_or(0) as f64 / 1e6;
                    // ‡ : local attempts discarded after failing the reference check.
                    let retried = if m.failed_attempts.is_empty() {
                        ""
                    } else {
                        " ‡"
                    };
                    f.extend([
                        format!("{}{retried}", show(&m.online_s)),
                        show(&m.offline_s),
                        show(&m.total_s),
                        fmt_num(d.online_total_bytes() as f64 / 1e6),
                        fmt_num(d.offline_total_bytes() as f64 / 1e6),
                        format!(
                            "{}/{}/{}/{}",
                            fmt_num(g("he")),
                            fmt_num(g("gc")),
                            fmt_num(g("ot")),
                            fmt_num(g("poly"))
                        ),
                        d.online_rounds.to_string(),
                    ]);
                }
                (None, status) => {
                    let what = match status {
                        RowStatus::Failed => "failed".to_string(),
                        RowStatus::NotSupported => "not supported".to_string(),
                        RowStatus::NotRun => "not run".to_string(),
                        RowStatus::Measured => String::new(),
                    };
                    f.push(format!("*{what}*"));
                    f.extend(std::iter::repeat_n(String::new(), 6));
                }
            }
            if all_relu {
                f.push(r.all_relu.as_ref().map_or(String::new(), |a| {
                    fmt_num(
                        (a.median().offline_total_bytes() + a.median().online_total_bytes()) as f64
                            / 1e6,
                    )
                }));
            }
            for n in &ratio_names {
                f.push(
                    r.ratios
                        .iter()
                        .find(|q| &q.name == n)
                        .map_or(String::new(), |q| format!("{:.2}", q.ratio)),
                );
            }
            if exact {
                match &r.exact {
                    Some(e) => {
                        // † : the material went through --store.
                        let mark = if e.median().stored { " †" } else { "" };
                        f.extend([
                            format!("{}{mark}", fmt_num(e.online_s.median)),
                            fmt_num(e.total_s.median),
                            fmt_num(e.median().online_total_bytes() as f64 / 1e6),
                        ])
                    }
                    None => f.extend(std::iter::repeat_n(
                        if r.exact_error.is_some() {
                            "*failed*".to_string()
                        } else {
                            String::new()
                        },
                        3,
                    )),
                }
            }
            let _ = writeln!(md, "| {} |", f.join(" | "));
        }
        if !ratio_names.is_empty() {
            let _ = writeln!(md, "\nRatio columns (measured / paper):\n");
            for n in &ratio_names {
                if let Some(q) = self
                    .rows
                    .iter()
                    .flat_map(|r| &r.ratios)
                    .find(|q| &q.name == n)
                {
                    let label = self
                        .column(&q.column)
                        .map_or(q.column.clone(), |c| c.label.clone());
                    let _ = writeln!(
                        md,
                        "* `{n}`: {} against the paper's “{label}”.",
                        q.measured_what
                    );
                }
            }
        }
        let retried: Vec<String> = self
            .rows
            .iter()
            .filter_map(|r| r.measured.as_ref().map(|m| (r, m)))
            .filter(|(_, m)| !m.failed_attempts.is_empty())
            .map(|(r, m)| format!("`{}` ({})", r.id, m.failed_attempts.len()))
            .collect();
        if !retried.is_empty() {
            let _ = writeln!(
                md,
                "\n‡ The row's `local` run failed the reference check (its argmax differed from \
                 the fixed-point reference's: a local-truncation failure, which the run's failure \
                 bound allows) and was rerun, at most {} times; the kept run passed. Discarded \
                 attempts (their errors are in the JSON, `failed_attempts`): {}.",
                super::measure::LOCAL_RETRIES,
                retried.join(", ")
            );
        }
        if exact {
            let _ = writeln!(
                md,
                "\nThe exact columns rerun the row with `--trunc exact`: every truncation of an \
                 identity or polynomial element (and of linear layers) in a garbled circuit, \
                 failure probability 0. The default `local` truncation (Delphi's) is free but \
                 fails with a small probability per element; the difference is what local \
                 truncation hides. † marks runs whose client material exceeded 30 % of the \
                 memory available and went through `--store` (online then includes reading it \
                 back from disk)."
            );
        }
        let id = &t.id;
        let _ = writeln!(
            md,
            "\n## Plots\n\n![latency against ReLUs]({id}-latency.svg)\n\n*Latency against the \
             network's ReLU count, log-log: the paper's latency column (as printed), the \
             measured offline + online time and the measured online time.*\n\n\
             ![time split]({id}-breakdown.svg)\n\n*Offline (left) and online (right) client \
             wall time per row, split by the per-layer report: offline HE = the linear nodes' \
             HE protocol; offline GC+OT = garbling, OT extension and label transfer of the \
             activation circuits (and polynomial triples); online linear = the server's wall time in \
             the linear nodes (share GEMMs); online GC = the client's wall time at the \
             activation sites less that (circuit evaluation, labels, replies); other = time \
             outside these nodes (input, pooling, additions, reveal, flushes). The report \
             does not time OT apart from garbling, nor the network apart from computation: \
             waiting for the peer is inside each part. PNG and SVG files beside this one.*\n"
        );
        let _ = writeln!(md, "## Where each mask came from\n");
        for r in &self.rows {
            if let Some(m) = &r.mask_source {
                let same = r
                    .same_network_as
                    .as_ref()
                    .map_or(String::new(), |s| format!(" Measured once with `{s}`."));
                let _ = writeln!(md, "* `{}`: {}.{same}", r.id, m.trim_end_matches('.'));
            }
            if let Some(d) = &r.relus_discrepancy {
                let _ = writeln!(md, "  ReLU count: {d}");
            }
        }
        let problems: Vec<&RowResult> = self
            .rows
            .iter()
            .filter(|r| {
                r.message.is_some() || r.exact_error.is_some() || r.all_relu_error.is_some()
            })
            .collect();
        if !problems.is_empty() {
            let _ = writeln!(md, "\n## Rows not measured\n");
            for r in problems {
                if let Some(m) = &r.message {
                    let what = match r.status {
                        RowStatus::NotSupported => "not supported",
                        RowStatus::NotRun => "not run",
                        _ => "failed",
                    };
                    let _ = writeln!(md, "* `{}`: {what}: {}", r.id, one_line(m));
                }
                if let Some(e) = &r.exact_error {
                    let _ = writeln!(md, "* `{}` (exact column): failed: {}", r.id, one_line(e));
                }
                if let Some(e) = &r.all_relu_error {
                    let _ = writeln!(
                        md,
                        "* `{}` (all-ReLU reference): failed: {}",
                        r.id,
                        one_line(e)
                    );
                }
            }
        }
        let stale: Vec<String> = self
            .rows
            .iter()
            .filter_map(|r| {
                let m = r.measured.as_ref()?;
                (m.commit != run.commit || !m.settings.contains(&format!("net={}", run.network)))
                    .then(|| format!("`{}` ({}, `{}`, {})", r.id, m.date, m.commit, m.settings))
            })
            .collect();
        if !stale.is_empty() {
            let _ = writeln!(
                md,
                "\nMeasured by an earlier invocation (kept by `--resume`): {}.",
                stale.join("; ")
            );
        }
        if !t.notes.is_empty() {
            let _ = writeln!(md, "\n## Transcription notes\n");
            for n in &t.notes {
                let _ = writeln!(md, "* {n}");
            }
        }
        md
    }
}

/// The index of a results folder (see [`write_index`]).
pub const INDEX_FILE: &str = "index.md";

/// The machine part (`machine=…`) of a measurement's settings line.
fn machine_of(m: &Measured) -> Option<&str> {
    m.settings
        .split_once("machine=")
        .map(|(_, machine)| machine.trim())
}

/// Writes `dir/index.md`: one line per table results file in `dir`, with
/// its rows' outcomes, the machines that measured them, its last
/// invocation, and its **measurement time**: the wall time of every
/// measurement its rows show (each network once; main, `exact` and
/// all-ReLU columns), which stays the table's full cost across `--resume`
/// invocations. Measurements written before wall times were recorded are
/// counted apart. Files that are not table results are listed as such.
pub fn write_index(dir: &Path) -> Result<PathBuf, ResultsError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ResultsError::Io {
        file: dir.display().to_string(),
        source,
    })?;
    let mut jsons: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    jsons.sort();
    let mut md = String::from("# Tables in this folder\n\n");
    md.push_str(
        "Written by `pibench table` after each invocation, from the results files \
         here (do not edit). *Measurement time* adds the wall time of every \
         measurement a table's rows show (each network once: main, `exact` and \
         all-ReLU columns; both processes from start to exit, reruns included), so \
         it is the table's full cost on its machine even when `--resume` measured \
         it over several invocations. A network that several rows or tables show \
         is counted once, in the table that measured it; a table whose rows reuse \
         another table's networks names it. Measurements from before wall times \
         were recorded are counted in the last column instead.\n\n",
    );
    md.push_str(
        "| table | measured | failed | not supported | not run | measured on | last invocation | measurement time (s) | measurements without a time |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let mut totals: std::collections::BTreeMap<String, (f64, usize)> = Default::default();
    for path in &jsons {
        let name = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let t = match TableResult::read(path) {
            Ok(Some(t)) => t,
            Ok(None) => continue,
            Err(e) => {
                let _ = writeln!(
                    md,
                    "| `{name}` | *not a table results file: {}* |  |  |  |  |  |  |  |",
                    esc(&one_line(&e.to_string()))
                );
                continue;
            }
        };
        let mut counts = [0usize; 4];
        let mut machines = std::collections::BTreeSet::new();
        let (mut time, mut untimed) = (0.0, 0usize);
        // Tables (other than this one) whose measurements rows here reuse.
        let mut reused_from = std::collections::BTreeSet::new();
        for r in &t.rows {
            counts[r.status as usize] += 1;
            if let Some(src) = &r.same_network_as {
                // Counted where it was measured (each network once), but the
                // machine that measured it is still this row's machine.
                for m in [&r.measured, &r.exact, &r.all_relu].into_iter().flatten() {
                    machines.insert(machine_of(m).unwrap_or("not recorded").to_string());
                }
                let table = src.split_once('/').map_or(src.as_str(), |(t, _)| t);
                if table != t.table.id {
                    reused_from.insert(table.to_string());
                }
                continue;
            }
            for m in [&r.measured, &r.exact, &r.all_relu].into_iter().flatten() {
                let machine = machine_of(m).unwrap_or("not recorded").to_string();
                let total = totals.entry(machine.clone()).or_default();
                machines.insert(machine);
                match m.wall_s {
                    Some(w) => {
                        time += w;
                        total.0 += w;
                    }
                    None => {
                        untimed += 1;
                        total.1 += 1;
                    }
                }
            }
        }
        let commit: String = t.run.commit.chars().take(7).collect();
        let _ = writeln!(
            md,
            "| [`{id}`]({id}.md) {title} | {} | {} | {} | {} | {} | {} (`{commit}`, {:.0} s) | {} | {untimed} |",
            counts[RowStatus::Measured as usize],
            counts[RowStatus::Failed as usize],
            counts[RowStatus::NotSupported as usize],
            counts[RowStatus::NotRun as usize],
            esc(&machines.into_iter().collect::<Vec<_>>().join("; ")),
            t.run.date,
            t.run.elapsed_s,
            time_cell(time, &reused_from),
            id = t.table.id,
            title = esc(&t.table.title),
        );
    }
    if !totals.is_empty() {
        md.push_str("\nMeasurement time per machine, all tables:\n\n");
        for (machine, (time, untimed)) in &totals {
            let _ = writeln!(
                md,
                "* {}: {time:.0} s ({:.1} h), plus {untimed} measurements without a recorded time.",
                esc(machine),
                time / 3600.0
            );
        }
    }
    let path = dir.join(INDEX_FILE);
    write_atomic(&path, md.as_bytes())?;
    Ok(path)
}

/// The index's measurement-time cell: the table's own time, and the tables
/// whose measurements its rows reuse (counted there).
fn time_cell(time: f64, reused_from: &std::collections::BTreeSet<String>) -> String {
    if reused_from.is_empty() {
        return if time > 0.0 {
            format!("{time:.0}")
        } else {
            "–".into()
        };
    }
    let from: Vec<String> = reused_from.iter().map(|x| format!("`{x}`")).collect();
    format!("{time:.0} (+ networks measured in {})", from.join(", "))
}

/// Whether a column's values are latencies or communication (for the plots).
pub fn is_latency_column(c: &ColumnMeta) -> bool {
    c.unit == Unit::Seconds.as_str() && matches!(c.key.as_str(), "lat" | "latency")
}

fn status_name(s: RowStatus) -> &'static str {
    match s {
        RowStatus::Measured => "measured",
        RowStatus::Failed => "failed",
        RowStatus::NotSupported => "not_supported",
        RowStatus::NotRun => "not_run",
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ResultsError> {
    let tmp = path.with_extension("tmp");
    let io = |source| ResultsError::Io {
        file: path.display().to_string(),
        source,
    };
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn esc(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A figure with about three significant digits.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a >= 0.01 || a == 0.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.1e}")
    }
}

/// 12,345.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quoting() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"x\""), "\"say \"\"x\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }

    /// A table whose rows reuse another table's networks shows the machine
    /// that measured them and names that table; the time is counted once.
    #[test]
    fn index_names_reused_tables_and_their_machine() {
        let dir = tempfile::tempdir().unwrap();
        let measured = |wall: f64| Measured {
            settings: "trunc=local net=lan machine=Test CPU/2".into(),
            wall_s: Some(wall),
            ..Default::default()
        };
        let table = |id: &str, rows: Vec<RowResult>| TableResult {
            format: FORMAT.into(),
            table: TableMeta {
                id: id.into(),
                title: id.into(),
                ..Default::default()
            },
            rows,
            ..Default::default()
        };
        let a = table(
            "a",
            vec![
                RowResult {
                    id: "r1".into(),
                    status: RowStatus::Measured,
                    measured: Some(measured(10.0)),
                    ..Default::default()
                },
                RowResult {
                    id: "r2".into(),
                    status: RowStatus::Measured,
                    same_network_as: Some("a/r1".into()),
                    measured: Some(measured(10.0)),
                    ..Default::default()
                },
            ],
        );
        let b = table(
            "b",
            vec![RowResult {
                id: "r1".into(),
                status: RowStatus::Measured,
                same_network_as: Some("a/r1".into()),
                measured: Some(measured(10.0)),
                ..Default::default()
            }],
        );
        for t in [&a, &b] {
            let path = dir.path().join(format!("{}.json", t.table.id));
            std::fs::write(path, serde_json::to_vec(t).unwrap()).unwrap();
        }
        let index = std::fs::read_to_string(write_index(dir.path()).unwrap()).unwrap();
        let cells = |id: &str| -> Vec<String> {
            let line = index
                .lines()
                .find(|l| l.starts_with(&format!("| [`{id}`]")))
                .unwrap_or_else(|| panic!("{id}:\n{index}"));
            line.split('|').map(|c| c.trim().to_string()).collect()
        };
        let (ca, cb) = (cells("a"), cells("b"));
        assert_eq!(ca[6], "Test CPU/2");
        assert_eq!(ca[8], "10", "a network shown twice is counted once");
        assert_eq!(cb[6], "Test CPU/2", "the reused measurement's machine");
        assert_eq!(cb[8], "0 (+ networks measured in `a`)");
        assert!(index.contains("* Test CPU/2: 10 s"), "{index}");
    }

    #[test]
    fn numbers() {
        assert_eq!(fmt_num(123.4), "123");
        assert_eq!(fmt_num(4.613), "4.61");
        assert_eq!(fmt_num(0.4567), "0.457");
        assert_eq!(fmt_num(0.0), "0.000");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
