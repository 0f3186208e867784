//! The table-config schema (`configs/tables/*.toml`) and its parser.
//!
//! A config transcribes one latency/communication table of a seed paper: the
//! paper's measurement setting(s), its columns (with units), and one `[[row]]`
//! per network the table reports, with the paper's cells as printed and the
//! network pibench runs for that row. `configs/tables/README.md` documents the
//! schema for users; this module enforces it.
//!
//! Parsing is two-step: serde reads the TOML into raw structs that reject
//! unknown fields, then [`TableConfig::load`] validates everything (ids, column
//! and setting references, numeric cells, network fields) and resolves each
//! row's defaults, so that every error names the file, the row and the field.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use pibench_models::arch::{ArchSpec, Dataset};
use pibench_models::count::Convention;
use serde::Deserialize;
use thiserror::Error;

/// Largest config file read (bytes): the biggest transcribed table is ~30 KiB.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// Largest number of rows in one config.
pub const MAX_ROWS: usize = 2_000;

/// Everything that can go wrong while loading a config or building a row.
#[derive(Debug, Error)]
pub enum TableError {
    /// The file cannot be read.
    #[error("{file}: cannot read the table config")]
    Io {
        /// Config file.
        file: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the schema.
    #[error("{file}: not a valid table config: {reason}")]
    Parse {
        /// Config file.
        file: String,
        /// The parser's message (with line and column).
        reason: String,
    },
    /// A table-level field is wrong.
    #[error("{file}: {field}: {reason}")]
    Table {
        /// Config file.
        file: String,
        /// Field path, e.g. `setting[1].id`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A row's field is wrong.
    #[error("{file}: row {row:?}: {field}: {reason}")]
    Row {
        /// Config file.
        file: String,
        /// Row id (or `#index` when the id itself is missing).
        row: String,
        /// Field, e.g. `paper.relus` or `cull`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The row's architecture, activation or transform is not implemented.
    #[error("{file}: row {row:?}: not supported: {reason}")]
    NotSupported {
        /// Config file.
        file: String,
        /// Row id.
        row: String,
        /// Why (from the row's `not_supported` field).
        reason: String,
    },
    /// Building the row's network failed in `pibench_models`.
    #[error("{file}: row {row:?}: {source}")]
    Model {
        /// Config file.
        file: String,
        /// Row id.
        row: String,
        /// The models error (boxed: it is large and rare).
        #[source]
        source: Box<pibench_models::ModelError>,
    },
}

/// Result alias of the table module.
pub type Result<T, E = TableError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------
// Raw TOML structs (serde).

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    table: RawTable,
    counting: RawCounting,
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    setting: Vec<RawSetting>,
    #[serde(default)]
    column: Vec<RawColumn>,
    #[serde(default)]
    row: Vec<RawRow>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    id: String,
    title: String,
    paper: String,
    seed: String,
    number: String,
    caption: String,
    dataset: Option<String>,
    #[serde(default)]
    notes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCounting {
    stem_relu: bool,
    final_relu: bool,
    reason: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    setting: Option<String>,
    arch: Option<String>,
    mask: Option<String>,
    replacement: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSetting {
    id: String,
    protocol: String,
    machine: Option<String>,
    network: Option<String>,
    threads: Option<String>,
    latency: Option<String>,
    source: String,
    #[serde(default)]
    notes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColumn {
    key: String,
    label: String,
    unit: String,
    meaning: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRow {
    id: Option<String>,
    method: Option<String>,
    label: Option<String>,
    band: Option<String>,
    group: Option<String>,
    side: Option<String>,
    setting: Option<String>,
    dataset: Option<String>,
    arch: Option<String>,
    blocks: Option<Vec<i64>>,
    alpha: Option<f64>,
    rho: Option<f64>,
    #[serde(default)]
    cull: Vec<String>,
    #[serde(default)]
    thin: Vec<String>,
    relu_reuse: Option<i64>,
    activation: Option<String>,
    mask: Option<String>,
    model: Option<String>,
    relus: Option<i64>,
    replacement: Option<String>,
    not_supported: Option<String>,
    relus_discrepancy: Option<String>,
    #[serde(default)]
    notes: Vec<String>,
    #[serde(default)]
    paper: toml::Table,
}

// ---------------------------------------------------------------------------
// Validated config.

/// A loaded, validated table config.
#[derive(Debug, Clone, PartialEq)]
pub struct TableConfig {
    /// The file it was read from.
    pub path: PathBuf,
    /// Which table of which paper.
    pub table: TableInfo,
    /// Which activation sites exist in the table's networks.
    pub counting: Counting,
    /// The measurement settings the table's numbers come from.
    pub settings: Vec<Setting>,
    /// The table's columns, in the paper's order.
    pub columns: Vec<Column>,
    /// The rows, in the paper's order.
    pub rows: Vec<Row>,
}

/// Which table of which paper a config transcribes.
#[derive(Debug, Clone, PartialEq)]
pub struct TableInfo {
    /// Stable id, e.g. `deepreduce-t4` (results are written under this name).
    pub id: String,
    /// One-line title.
    pub title: String,
    /// Citation of the paper.
    pub paper: String,
    /// File in `shared/seeds/` holding the paper's text.
    pub seed: String,
    /// The paper's table number, e.g. `Table 4`.
    pub number: String,
    /// The paper's caption (transcribed).
    pub caption: String,
    /// Default dataset of the rows.
    pub dataset: Option<Dataset>,
    /// Transcription notes: garbled cells, inconsistencies, assumptions.
    pub notes: Vec<String>,
}

/// Which ReLU sites the table's networks have at all.
///
/// A site that does not exist (`false`) is built as the identity (mask 0) and
/// is not counted; this is the network the paper ran, not a counting trick.
#[derive(Debug, Clone, PartialEq)]
pub struct Counting {
    /// The stem's ReLU (`relu0` of ResNets/HRNs) exists.
    pub stem_relu: bool,
    /// The final BN-ReLU of pre-activation WRNs exists.
    pub final_relu: bool,
    /// Why, with the evidence (paper section, code, a count that matches).
    pub reason: String,
}

impl Counting {
    /// The `pibench_models` convention that counts exactly the existing sites.
    pub fn convention(&self) -> Convention {
        Convention {
            stem_relu: self.stem_relu,
            final_relu: self.final_relu,
        }
    }
}

/// A measurement setting stated by a paper.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// Id that rows refer to.
    pub id: String,
    /// Protocol / framework (e.g. DELPHI, CrypTen, SEAL + DELPHI GC).
    pub protocol: String,
    /// Machine, or `not stated`.
    pub machine: String,
    /// Network between the parties (LAN/WAN, bandwidth, RTT), or `not stated`.
    pub network: String,
    /// Threads, or `not stated`.
    pub threads: String,
    /// What the latency (or communication) column measures.
    pub latency: String,
    /// Where the paper says so (section, quote).
    pub source: String,
    /// Further notes.
    pub notes: Vec<String>,
}

/// Unit of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Thousands (ReLU counts printed in K).
    Thousands,
    /// Millions (FLOPs printed in M).
    Millions,
    /// Seconds.
    Seconds,
    /// Percent.
    Percent,
    /// A ratio printed with `×`.
    Times,
    /// A plain number (e.g. accuracy per kilo-ReLU).
    Number,
    /// Text (stage lists, method names).
    Text,
}

impl Unit {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "K" => Self::Thousands,
            "M" => Self::Millions,
            "s" => Self::Seconds,
            "%" => Self::Percent,
            "×" | "x" => Self::Times,
            "number" => Self::Number,
            "text" => Self::Text,
            _ => return None,
        })
    }

    /// The unit as written in configs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Thousands => "K",
            Self::Millions => "M",
            Self::Seconds => "s",
            Self::Percent => "%",
            Self::Times => "×",
            Self::Number => "number",
            Self::Text => "text",
        }
    }

    /// Base units per printed unit (1000 for K, 10⁶ for M, else 1).
    pub fn multiplier(&self) -> f64 {
        match self {
            Self::Thousands => 1e3,
            Self::Millions => 1e6,
            _ => 1.0,
        }
    }

    /// Suffixes a printed number may carry in this unit's column.
    fn suffixes(&self) -> &'static [&'static str] {
        match self {
            Self::Thousands => &["K", "k"],
            Self::Millions => &["M"],
            Self::Seconds => &["s"],
            Self::Percent => &["%"],
            Self::Times => &["×", "x"],
            Self::Number | Self::Text => &[],
        }
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A column of the paper's table.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// Key used in rows' `paper` tables (`relus`, `acc`, `latency`, …).
    pub key: String,
    /// The paper's header, e.g. `Lat.(s)`.
    pub label: String,
    /// Unit of the printed numbers.
    pub unit: Unit,
    /// What the column means.
    pub meaning: String,
}

/// One cell of the paper's table, as printed and as a number.
#[derive(Debug, Clone, PartialEq)]
pub struct PaperCell {
    /// Column key.
    pub key: String,
    /// The paper's column header.
    pub label: String,
    /// The column's unit.
    pub unit: Unit,
    /// The paper's text, e.g. `12.9K` or `1.8×`.
    pub printed: String,
    /// The number in the column's unit (12.9 for `12.9K` in a K column); `None` for text.
    pub value: Option<f64>,
    /// Half a unit of the last printed digit, in the column's unit (0.05 for `12.9`).
    pub rounding: Option<f64>,
}

/// Where a row's ReLU mask comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum MaskSource {
    /// Every existing site keeps all its ReLUs after the row's structural
    /// transforms (culling, thinning, scaling): baseline, DeepReDuce and HybReNet rows.
    Structural,
    /// A random mask with exactly this many ReLUs
    /// ([`pibench_models::mask::random_relu_mask`]).
    Random {
        /// ReLUs kept.
        relus: u64,
    },
    /// A model file written by `pibench prune` (its masks and weights).
    Model {
        /// Resolved path (relative paths are relative to the config file's folder).
        path: PathBuf,
    },
}

/// What replaced (mask-0) elements compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replacement {
    /// The identity (SNL, DeepReDuce, ReLUPruner, PrivShap, DeepReShape).
    Identity,
    /// AutoReP's channel-wise 2nd-order DaPa polynomial (Eq. 13).
    Dapa2,
}

/// The network a supported row runs.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkSpec {
    /// Dataset (input shape and classes).
    pub dataset: Dataset,
    /// Architecture, with `blocks` and `alpha` applied; `None` only for a
    /// model-file row that does not name one (the file's own is used).
    pub arch: Option<ArchSpec>,
    /// The `arch` string of the config.
    pub arch_name: Option<String>,
    /// Blocks-per-stage override, if any.
    pub blocks: Option<Vec<usize>>,
    /// DeepReDuce channel scaling α.
    pub alpha: Option<f64>,
    /// DeepReDuce feature-map (input resolution) scaling ρ.
    pub rho: Option<f64>,
    /// Stages culled (0 = stem).
    pub cull: Vec<usize>,
    /// Stages thinned.
    pub thin: Vec<usize>,
    /// Where the mask comes from.
    pub mask: MaskSource,
    /// What replaced elements compute.
    pub replacement: Replacement,
}

/// A validated row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Config file (for errors).
    pub file: String,
    /// Table id.
    pub table_id: String,
    /// Stable id, unique within the table.
    pub id: String,
    /// Method as printed (e.g. `SNL+`, `ours*`, `DeepReDuce`).
    pub method: String,
    /// Human-readable label.
    pub label: String,
    /// Band of the table (e.g. `ReLU ≤ 100K`), if any.
    pub band: Option<String>,
    /// Printed row that this row shares with others (comparison tables), if any.
    pub group: Option<String>,
    /// `sota` or `ours` in comparison tables.
    pub side: Option<String>,
    /// The setting the paper's numbers of this row come from.
    pub setting: Setting,
    /// The paper's cells, in column order.
    pub paper: Vec<PaperCell>,
    /// Which sites exist (the table's counting).
    pub counting: Counting,
    /// The network to run, or why there is none.
    pub network: std::result::Result<NetworkSpec, String>,
    /// Explanation when the paper's printed ReLU count differs from the network's.
    pub relus_discrepancy: Option<String>,
    /// Transcription notes.
    pub notes: Vec<String>,
    /// Raw structural fields kept for unsupported rows (arch text, relu_reuse, activation).
    pub described_as: String,
}

impl Row {
    /// The paper's cell for a column key.
    pub fn cell(&self, key: &str) -> Option<&PaperCell> {
        self.paper.iter().find(|c| c.key == key)
    }

    /// The paper's ReLU count in units (e.g. 12,900 for `12.9K`), if printed.
    pub fn paper_relus(&self) -> Option<f64> {
        self.cell("relus").and_then(|c| c.value).map(|v| v * 1e3)
    }

    /// Half a unit of the paper's last printed ReLU digit, in ReLUs (50 for `12.9K`).
    pub fn paper_relus_rounding(&self) -> Option<f64> {
        self.cell("relus").and_then(|c| c.rounding).map(|v| v * 1e3)
    }

    /// Whether the row can be run.
    pub fn is_supported(&self) -> bool {
        self.network.is_ok()
    }

    pub(crate) fn row_err(&self, field: &str, reason: impl Into<String>) -> TableError {
        TableError::Row {
            file: self.file.clone(),
            row: self.id.clone(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

// ---------------------------------------------------------------------------
// Loading.

impl TableConfig {
    /// Reads and validates a table config.
    pub fn load(path: &Path) -> Result<TableConfig> {
        let file = path.display().to_string();
        let io = |source| TableError::Io {
            file: file.clone(),
            source,
        };
        let f = std::fs::File::open(path).map_err(io)?;
        let mut text = String::new();
        let read = f
            .take(MAX_CONFIG_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(io)?;
        if read as u64 > MAX_CONFIG_BYTES {
            return Err(TableError::Parse {
                file,
                reason: format!("larger than {MAX_CONFIG_BYTES} bytes"),
            });
        }
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Self::from_str_at(&text, path, base)
    }

    /// Parses config text; `path` names it in errors and `base` resolves model paths.
    pub fn from_str_at(text: &str, path: &Path, base: &Path) -> Result<TableConfig> {
        let file = path.display().to_string();
        let raw: RawConfig = toml::from_str(text).map_err(|e| TableError::Parse {
            file: file.clone(),
            reason: e.to_string().trim_end().replace('\n', " | "),
        })?;
        build_config(raw, path, base)
    }

    /// The setting with this id.
    pub fn setting(&self, id: &str) -> Option<&Setting> {
        self.settings.iter().find(|s| s.id == id)
    }

    /// The row with this id.
    pub fn row(&self, id: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.id == id)
    }
}

fn table_err(file: &str, field: impl Into<String>, reason: impl Into<String>) -> TableError {
    TableError::Table {
        file: file.into(),
        field: field.into(),
        reason: reason.into(),
    }
}

fn nonempty(file: &str, field: &str, v: &str) -> Result<()> {
    if v.trim().is_empty() {
        return Err(table_err(file, field, "must not be empty"));
    }
    Ok(())
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.+".contains(c))
}

const ID_RULE: &str = "1-64 characters from a-z, 0-9, '-', '_', '.', '+'";

fn parse_dataset(name: &str) -> Option<Dataset> {
    Dataset::parse(name).ok()
}

fn build_config(raw: RawConfig, path: &Path, base: &Path) -> Result<TableConfig> {
    let file = path.display().to_string();
    let f = file.as_str();
    let t = raw.table;
    if !valid_id(&t.id) {
        return Err(table_err(
            f,
            "table.id",
            format!("{:?} is not a valid id ({ID_RULE})", t.id),
        ));
    }
    for (field, v) in [
        ("table.title", &t.title),
        ("table.paper", &t.paper),
        ("table.seed", &t.seed),
        ("table.number", &t.number),
        ("table.caption", &t.caption),
        ("counting.reason", &raw.counting.reason),
    ] {
        nonempty(f, field, v)?;
    }
    let dataset = match &t.dataset {
        None => None,
        Some(d) => Some(parse_dataset(d).ok_or_else(|| {
            table_err(
                f,
                "table.dataset",
                format!("{d:?} is not a dataset (cifar10, cifar100, tinyimagenet)"),
            )
        })?),
    };
    let table = TableInfo {
        id: t.id,
        title: t.title,
        paper: t.paper,
        seed: t.seed,
        number: t.number,
        caption: t.caption,
        dataset,
        notes: t.notes,
    };
    let counting = Counting {
        stem_relu: raw.counting.stem_relu,
        final_relu: raw.counting.final_relu,
        reason: raw.counting.reason,
    };

    // Settings.
    if raw.setting.is_empty() {
        return Err(table_err(
            f,
            "setting",
            "at least one [[setting]] is needed",
        ));
    }
    let mut settings = Vec::with_capacity(raw.setting.len());
    for (i, s) in raw.setting.into_iter().enumerate() {
        let field = |k: &str| format!("setting[{i}].{k}");
        if !valid_id(&s.id) {
            return Err(table_err(
                f,
                field("id"),
                format!("{:?} is not a valid id ({ID_RULE})", s.id),
            ));
        }
        if settings.iter().any(|x: &Setting| x.id == s.id) {
            return Err(table_err(
                f,
                field("id"),
                format!("duplicate setting id {:?}", s.id),
            ));
        }
        nonempty(f, &field("protocol"), &s.protocol)?;
        nonempty(f, &field("source"), &s.source)?;
        let or_not_stated = |v: Option<String>| v.unwrap_or_else(|| "not stated".into());
        settings.push(Setting {
            id: s.id,
            protocol: s.protocol,
            machine: or_not_stated(s.machine),
            network: or_not_stated(s.network),
            threads: or_not_stated(s.threads),
            latency: or_not_stated(s.latency),
            source: s.source,
            notes: s.notes,
        });
    }

    // Columns.
    let mut columns: Vec<Column> = Vec::with_capacity(raw.column.len());
    for (i, c) in raw.column.into_iter().enumerate() {
        let field = |k: &str| format!("column[{i}].{k}");
        if !valid_id(&c.key) {
            return Err(table_err(
                f,
                field("key"),
                format!("{:?} is not a valid key ({ID_RULE})", c.key),
            ));
        }
        if columns.iter().any(|x| x.key == c.key) {
            return Err(table_err(
                f,
                field("key"),
                format!("duplicate column {:?}", c.key),
            ));
        }
        let unit = Unit::parse(&c.unit).ok_or_else(|| {
            table_err(
                f,
                field("unit"),
                format!("{:?} is not a unit (K, M, s, %, ×, number, text)", c.unit),
            )
        })?;
        nonempty(f, &field("label"), &c.label)?;
        nonempty(f, &field("meaning"), &c.meaning)?;
        columns.push(Column {
            key: c.key,
            label: c.label,
            unit,
            meaning: c.meaning,
        });
    }
    match columns.iter().find(|c| c.key == "relus") {
        Some(c) if c.unit == Unit::Thousands => {}
        Some(c) => {
            return Err(table_err(
                f,
                "column.relus",
                format!("the ReLU column's unit must be K, not {}", c.unit),
            ))
        }
        None => {
            return Err(table_err(
                f,
                "column",
                "a column with key \"relus\" (unit K) is required",
            ))
        }
    }

    // Defaults.
    let d = raw.defaults;
    if let Some(s) = &d.setting {
        if !settings.iter().any(|x| &x.id == s) {
            return Err(table_err(
                f,
                "defaults.setting",
                format!("no [[setting]] with id {s:?}"),
            ));
        }
    }

    // Rows.
    if raw.row.is_empty() {
        return Err(table_err(f, "row", "at least one [[row]] is needed"));
    }
    if raw.row.len() > MAX_ROWS {
        return Err(table_err(
            f,
            "row",
            format!("{} rows, at most {MAX_ROWS}", raw.row.len()),
        ));
    }
    let mut ids = BTreeSet::new();
    let mut rows = Vec::with_capacity(raw.row.len());
    for (i, r) in raw.row.into_iter().enumerate() {
        let ctx = RowCtx {
            file: f,
            table_id: &table.id,
            dataset: table.dataset,
            counting: &counting,
            settings: &settings,
            columns: &columns,
            defaults: &d,
            base,
        };
        let row = build_row(&ctx, i, r)?;
        if !ids.insert(row.id.clone()) {
            return Err(row.row_err("id", "duplicate row id"));
        }
        rows.push(row);
    }
    Ok(TableConfig {
        path: path.to_path_buf(),
        table,
        counting,
        settings,
        columns,
        rows,
    })
}

struct RowCtx<'a> {
    file: &'a str,
    table_id: &'a str,
    dataset: Option<Dataset>,
    counting: &'a Counting,
    settings: &'a [Setting],
    columns: &'a [Column],
    defaults: &'a RawDefaults,
    base: &'a Path,
}

/// Parses a printed number in a column: strips the unit's suffix, then reads
/// the number and the rounding of its last digit.
fn parse_number(printed: &str, unit: Unit) -> Option<(f64, f64)> {
    let mut s = printed.trim();
    for suf in unit.suffixes() {
        if let Some(t) = s.strip_suffix(suf) {
            s = t.trim_end();
            break;
        }
    }
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    if body.is_empty() || !body.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    if body.matches('.').count() > 1 || body.starts_with('.') || body.ends_with('.') {
        return None;
    }
    let v: f64 = s.parse().ok()?;
    let decimals = body.split_once('.').map_or(0, |(_, d)| d.len());
    let rounding = 0.5 * 10f64.powi(-(decimals as i32));
    Some((v, rounding))
}

fn toml_to_printed(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(x) if x.is_finite() => Some(x.to_string()),
        _ => None,
    }
}

/// Stage names: `S1`..`S9` (stage k), `stem` / `conv1` (stage 0).
fn parse_stage(s: &str) -> Option<usize> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("stem") || t.eq_ignore_ascii_case("conv1") {
        return Some(0);
    }
    let n = t.strip_prefix(['S', 's'])?;
    match n.parse::<usize>() {
        Ok(k) if (1..=9).contains(&k) => Some(k),
        _ => None,
    }
}

fn build_row(ctx: &RowCtx<'_>, index: usize, r: RawRow) -> Result<Row> {
    let file = ctx.file;
    let fallback = format!("#{index}");
    let err = |row: &str, field: &str, reason: String| TableError::Row {
        file: file.into(),
        row: row.into(),
        field: field.into(),
        reason,
    };
    let id =
        r.id.clone()
            .ok_or_else(|| err(&fallback, "id", "missing".into()))?;
    if !valid_id(&id) {
        return Err(err(
            &fallback,
            "id",
            format!("{id:?} is not a valid id ({ID_RULE})"),
        ));
    }
    let e = |field: &str, reason: String| err(&id, field, reason);
    let method = r
        .method
        .clone()
        .ok_or_else(|| e("method", "missing".into()))?;
    if method.trim().is_empty() {
        return Err(e("method", "must not be empty".into()));
    }
    let setting_id = r
        .setting
        .clone()
        .or_else(|| ctx.defaults.setting.clone())
        .ok_or_else(|| e("setting", "missing (and no defaults.setting)".into()))?;
    let setting = ctx
        .settings
        .iter()
        .find(|s| s.id == setting_id)
        .cloned()
        .ok_or_else(|| e("setting", format!("no [[setting]] with id {setting_id:?}")))?;
    if let Some(side) = &r.side {
        if side != "sota" && side != "ours" {
            return Err(e(
                "side",
                format!("{side:?}: expected \"sota\" or \"ours\""),
            ));
        }
    }

    // Paper cells, in column order.
    for key in r.paper.keys() {
        if !ctx.columns.iter().any(|c| &c.key == key) {
            return Err(e(
                &format!("paper.{key}"),
                "no [[column]] with this key".into(),
            ));
        }
    }
    let mut paper = Vec::new();
    for col in ctx.columns {
        let Some(v) = r.paper.get(&col.key) else {
            continue;
        };
        let field = format!("paper.{}", col.key);
        let printed =
            toml_to_printed(v).ok_or_else(|| e(&field, "expected a string or a number".into()))?;
        let (value, rounding) = if col.unit == Unit::Text {
            (None, None)
        } else {
            let (v, rnd) = parse_number(&printed, col.unit).ok_or_else(|| {
                e(
                    &field,
                    format!("{printed:?} is not a number in unit {}", col.unit),
                )
            })?;
            (Some(v), Some(rnd))
        };
        paper.push(PaperCell {
            key: col.key.clone(),
            label: col.label.clone(),
            unit: col.unit,
            printed,
            value,
            rounding,
        });
    }
    let relus_cell = paper.iter().find(|c| c.key == "relus").cloned();

    let label = r.label.clone().unwrap_or_else(|| match &relus_cell {
        Some(c) => format!("{method} {}", c.printed),
        None => method.clone(),
    });

    let described_as = describe_raw(&r);
    let network = match &r.not_supported {
        Some(reason) => {
            if reason.trim().is_empty() {
                return Err(e("not_supported", "must say why".into()));
            }
            Err(reason.clone())
        }
        None => Ok(build_spec(ctx, &id, &r, relus_cell.as_ref())?),
    };
    Ok(Row {
        file: file.into(),
        table_id: ctx.table_id.into(),
        id,
        method,
        label,
        band: r.band,
        group: r.group,
        side: r.side,
        setting,
        paper,
        counting: ctx.counting.clone(),
        network,
        relus_discrepancy: r.relus_discrepancy,
        notes: r.notes,
        described_as,
    })
}

fn describe_raw(r: &RawRow) -> String {
    let mut parts = Vec::new();
    if let Some(a) = &r.arch {
        parts.push(a.clone());
    }
    if let Some(a) = &r.activation {
        parts.push(format!("activation {a}"));
    }
    if let Some(b) = &r.blocks {
        parts.push(format!("blocks {b:?}"));
    }
    if !r.cull.is_empty() {
        parts.push(format!("culled {}", r.cull.join("+")));
    }
    if !r.thin.is_empty() {
        parts.push(format!("thinned {}", r.thin.join("+")));
    }
    if let Some(a) = r.alpha {
        parts.push(format!("α={a}"));
    }
    if let Some(p) = r.rho {
        parts.push(format!("ρ={p}"));
    }
    if let Some(n) = r.relu_reuse {
        parts.push(format!("ReLU-reuse ×{n}"));
    }
    parts.join(", ")
}

/// Limits on what a config may ask for, so a typo cannot exhaust memory.
const MAX_BLOCKS_PER_STAGE: usize = 64;

fn build_spec(
    ctx: &RowCtx<'_>,
    id: &str,
    r: &RawRow,
    relus_cell: Option<&PaperCell>,
) -> Result<NetworkSpec> {
    let e = |field: &str, reason: String| TableError::Row {
        file: ctx.file.into(),
        row: id.into(),
        field: field.into(),
        reason,
    };
    if let Some(a) = &r.activation {
        if !a.eq_ignore_ascii_case("relu") {
            return Err(e(
                "activation",
                format!("{a:?}: only ReLU networks run; mark the row not_supported"),
            ));
        }
    }
    let dataset = match &r.dataset {
        Some(d) => parse_dataset(d).ok_or_else(|| {
            e(
                "dataset",
                format!("{d:?} is not a dataset (cifar10, cifar100, tinyimagenet)"),
            )
        })?,
        None => ctx
            .dataset
            .ok_or_else(|| e("dataset", "missing (and no table.dataset)".into()))?,
    };

    // Mask source.
    let mask_kind = r.mask.clone().or_else(|| {
        if r.model.is_some() {
            None
        } else {
            ctx.defaults.mask.clone()
        }
    });
    let mask = match (&r.model, mask_kind.as_deref()) {
        (Some(_), Some(m)) => {
            return Err(e(
                "mask",
                format!("{m:?} given together with model: a model file brings its own masks"),
            ))
        }
        (Some(p), None) => {
            if p.trim().is_empty() {
                return Err(e("model", "empty path".into()));
            }
            let p = Path::new(p);
            MaskSource::Model {
                path: if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    ctx.base.join(p)
                },
            }
        }
        (None, Some("structural")) => {
            if r.relus.is_some() {
                return Err(e(
                    "relus",
                    "a structural row's ReLU count follows from its structure; remove `relus`"
                        .into(),
                ));
            }
            MaskSource::Structural
        }
        (None, Some("random")) => {
            let relus = match r.relus {
                Some(n) => u64::try_from(n).map_err(|_| e("relus", format!("{n} is negative")))?,
                None => {
                    let c = relus_cell.ok_or_else(|| {
                        e(
                            "relus",
                            "a random mask needs `relus` or the paper's relus cell".into(),
                        )
                    })?;
                    let v = c.value.unwrap_or(0.0) * 1e3;
                    if !(0.0..1e12).contains(&v) {
                        return Err(e("paper.relus", format!("{:?} out of range", c.printed)));
                    }
                    v.round() as u64
                }
            };
            MaskSource::Random { relus }
        }
        (None, Some(other)) => {
            return Err(e(
                "mask",
                format!(
                    "{other:?}: expected \"random\" or \"structural\" (or give model = \"FILE\")"
                ),
            ))
        }
        (None, None) => {
            return Err(e(
                "mask",
                "missing: give mask = \"random\" | \"structural\" or model = \"FILE\"".into(),
            ))
        }
    };

    let replacement = match r
        .replacement
        .as_deref()
        .or(ctx.defaults.replacement.as_deref())
        .unwrap_or("identity")
    {
        "identity" => Replacement::Identity,
        "dapa2" => Replacement::Dapa2,
        other => {
            return Err(e(
                "replacement",
                format!("{other:?}: expected \"identity\" or \"dapa2\""),
            ))
        }
    };

    let is_model = matches!(mask, MaskSource::Model { .. });
    let structural_fields = r.blocks.is_some()
        || r.alpha.is_some()
        || r.rho.is_some()
        || !r.cull.is_empty()
        || !r.thin.is_empty()
        || r.relu_reuse.is_some();
    if is_model && structural_fields {
        return Err(e(
            "model",
            "a model file fixes the structure: remove blocks/alpha/rho/cull/thin/relu_reuse".into(),
        ));
    }
    if matches!(mask, MaskSource::Random { .. }) && (!r.cull.is_empty() || !r.thin.is_empty()) {
        return Err(e(
            "cull",
            "culling/thinning fix the mask: use mask = \"structural\", not \"random\"".into(),
        ));
    }

    // Architecture. A model-file row is checked against its own `arch` only
    // (the table's default architecture need not be the user's).
    let arch_name = if is_model {
        r.arch.clone()
    } else {
        Some(
            r.arch
                .clone()
                .or_else(|| ctx.defaults.arch.clone())
                .ok_or_else(|| e("arch", "missing (and no defaults.arch)".into()))?,
        )
    };
    let Some(arch_name) = arch_name else {
        return Ok(NetworkSpec {
            dataset,
            arch: None,
            arch_name: None,
            blocks: None,
            alpha: None,
            rho: None,
            cull: vec![],
            thin: vec![],
            mask,
            replacement,
        });
    };
    let mut arch = ArchSpec::parse(&arch_name).map_err(|x| e("arch", x.to_string()))?;
    let blocks = match &r.blocks {
        None => None,
        Some(b) => {
            let ArchSpec::Resnet {
                name,
                stem,
                blocks: old,
                widths,
            } = &arch
            else {
                return Err(e(
                    "blocks",
                    format!("only ResNet-family architectures take `blocks`, not {arch_name:?}"),
                ));
            };
            if b.len() != old.len() {
                return Err(e(
                    "blocks",
                    format!("{} stages given, {arch_name} has {}", b.len(), old.len()),
                ));
            }
            let mut nb = Vec::with_capacity(b.len());
            for &n in b {
                match usize::try_from(n) {
                    Ok(n) if (1..=MAX_BLOCKS_PER_STAGE).contains(&n) => nb.push(n),
                    _ => {
                        return Err(e(
                            "blocks",
                            format!("{n}: expected 1..={MAX_BLOCKS_PER_STAGE} blocks per stage"),
                        ))
                    }
                }
            }
            let tag = nb.iter().map(|n| n.to_string()).collect::<String>();
            arch = ArchSpec::Resnet {
                name: format!("{name}-b{tag}"),
                stem: *stem,
                blocks: nb.clone(),
                widths: widths.clone(),
            };
            Some(nb)
        }
    };
    for (field, v) in [("alpha", r.alpha), ("rho", r.rho)] {
        if let Some(x) = v {
            if !(x.is_finite() && x > 0.0 && x <= 8.0) {
                return Err(e(field, format!("{x}: expected 0 < {field} ≤ 8")));
            }
        }
    }
    if let Some(a) = r.alpha {
        arch = pibench_models::arch::deepreduce::scale_channels(&arch, a)
            .map_err(|x| e("alpha", x.to_string()))?;
    }
    let stages = |field: &str, v: &[String]| -> Result<Vec<usize>> {
        let mut out = Vec::with_capacity(v.len());
        for s in v {
            let k = parse_stage(s).ok_or_else(|| {
                e(
                    field,
                    format!("{s:?} is not a stage (S1, S2, …, or stem/conv1)"),
                )
            })?;
            if out.contains(&k) {
                return Err(e(field, format!("{s:?} listed twice")));
            }
            out.push(k);
        }
        Ok(out)
    };
    let cull = stages("cull", &r.cull)?;
    let thin = stages("thin", &r.thin)?;
    if let Some(k) = thin.iter().find(|k| cull.contains(k)) {
        return Err(e("thin", format!("stage S{k} is both culled and thinned")));
    }
    if thin.contains(&0) {
        return Err(e(
            "thin",
            "the stem has one ReLU layer; cull it instead".into(),
        ));
    }
    if let Some(n) = r.relu_reuse {
        // DeepReShape applies ReLU-reuse to the culled and thinned network
        // (its Algorithm 2): every stage not culled gets the reuse blocks.
        let factor = usize::try_from(n)
            .ok()
            .filter(|&f| (2..=64).contains(&f))
            .ok_or_else(|| e("relu_reuse", format!("{n}: expected a factor 2..=64")))?;
        let n_stages = match &arch {
            ArchSpec::Resnet { widths, .. } => widths.len(),
            _ => {
                return Err(e(
                    "relu_reuse",
                    format!("ReLU-reuse needs a basic-block ResNet/HybReNet, not {arch_name:?}"),
                ))
            }
        };
        let reused: Vec<usize> = (1..=n_stages).filter(|k| !cull.contains(k)).collect();
        arch = ArchSpec::relu_reuse(arch, factor, &reused)
            .map_err(|x| e("relu_reuse", x.to_string()))?;
    }
    Ok(NetworkSpec {
        dataset,
        arch: Some(arch),
        arch_name: Some(arch_name),
        blocks,
        alpha: r.alpha,
        rho: r.rho,
        cull,
        thin,
        mask,
        replacement,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_numbers_and_rounding() {
        assert_eq!(parse_number("12.9K", Unit::Thousands), Some((12.9, 0.05)));
        assert_eq!(
            parse_number("229.38K", Unit::Thousands),
            Some((229.38, 0.005))
        );
        assert_eq!(parse_number("300", Unit::Thousands), Some((300.0, 0.5)));
        assert_eq!(parse_number("1.8×", Unit::Times), Some((1.8, 0.05)));
        assert_eq!(parse_number("0.5x", Unit::Times), Some((0.5, 0.05)));
        assert_eq!(parse_number("-0.25", Unit::Percent), Some((-0.25, 0.005)));
        assert_eq!(parse_number("NA", Unit::Times), None);
        assert_eq!(parse_number("1.2.3", Unit::Number), None);
        assert_eq!(parse_number("", Unit::Number), None);
        assert_eq!(parse_number("12.9M", Unit::Thousands), None);
    }

    #[test]
    fn stages() {
        assert_eq!(parse_stage("S1"), Some(1));
        assert_eq!(parse_stage("conv1"), Some(0));
        assert_eq!(parse_stage("S0"), None);
        assert_eq!(parse_stage("S12"), None);
        assert_eq!(parse_stage("layer1"), None);
    }
}
