//! `pibench table` end to end on a tiny synthetic config: small HybReNets
//! (`hrn-1x1x1x-m4`, 4 channels) with random masks, each row run through
//! `pibench run` as child processes (small INSECURE HE parameters to keep
//! the test short; the protocol is otherwise the real one).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn pibench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pibench"))
}

const CONFIG: &str = r##"
[table]
id = "tiny"
title = "Tiny synthetic table"
paper = "none: a synthetic test config"
seed = "none"
number = "Table 0"
caption = "Small HybReNets with random masks"
dataset = "cifar10"

[counting]
stem_relu = false
final_relu = false
reason = "synthetic"

[defaults]
setting = "synthetic"
arch = "hrn-1x1x1x-m4"
mask = "random"

[[setting]]
id = "synthetic"
protocol = "made-up numbers"
source = "this test"

[[column]]
key = "relus"
label = "#ReLUs"
unit = "K"
meaning = "ReLU count"

[[column]]
key = "lat"
label = "Lat.(s)"
unit = "s"
meaning = "made-up latency"

[[row]]
id = "small"
method = "A"
paper = { relus = "1.5K", lat = "0.5" }

[[row]]
id = "broken"
method = "B"
model = "broken.safetensors"
paper = { relus = "1K", lat = "0.1" }

[[row]]
id = "larger"
method = "C"
paper = { relus = "3K", lat = "0.9" }

[[row]]
id = "larger-again"
method = "C, printed twice"
paper = { relus = "3K", lat = "0.9" }

[[row]]
id = "silu"
method = "D"
not_supported = "SiLU activations"
paper = { relus = "1K" }
"##;

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tiny.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    // A model file that is not one: the row fails, the table goes on.
    std::fs::write(dir.path().join("broken.safetensors"), b"not a model").unwrap();
    let out = dir.path().join("results");
    (dir, cfg, out)
}

fn table(cfg: &Path, out: &Path, extra: &[&str]) -> Output {
    pibench()
        .arg("table")
        .arg(cfg)
        .arg("--out-dir")
        .arg(out)
        .args(["--threads", "1", "--insecure-test-params"])
        .args(extra)
        .output()
        .unwrap()
}

fn json(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("tiny.json")).unwrap()).unwrap()
}

fn row<'a>(v: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("row {id} missing"))
}

#[test]
fn a_table_runs_end_to_end_and_resume_keeps_measured_rows() {
    let (_dir, cfg, out) = setup();
    let o = table(&cfg, &out, &["--rows", "small,broken,larger*,silu"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("tiny/silu: not supported: SiLU activations"),
        "{stdout}"
    );
    assert!(stdout.contains("tiny/broken: FAILED"), "{stdout}");

    for f in [
        "tiny.md",
        "tiny.csv",
        "tiny.json",
        "tiny-latency.png",
        "tiny-latency.svg",
        "tiny-breakdown.png",
        "tiny-breakdown.svg",
    ] {
        let len = std::fs::metadata(out.join(f))
            .unwrap_or_else(|e| panic!("{f}: {e}"))
            .len();
        assert!(len > 200, "{f}: {len} bytes");
    }
    let png = std::fs::read(out.join("tiny-latency.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // --replot rewrites the report and the plots from the JSON, measuring nothing.
    let md = std::fs::read_to_string(out.join("tiny.md")).unwrap();
    let csv = std::fs::read_to_string(out.join("tiny.csv")).unwrap();
    for f in [
        "tiny.md",
        "tiny.csv",
        "tiny-latency.png",
        "tiny-breakdown.svg",
    ] {
        std::fs::remove_file(out.join(f)).unwrap();
    }
    let o = table(&cfg, &out, &["--replot"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("tiny: rewrote"));
    assert_eq!(std::fs::read_to_string(out.join("tiny.md")).unwrap(), md);
    assert_eq!(std::fs::read_to_string(out.join("tiny.csv")).unwrap(), csv);
    assert!(out.join("tiny-latency.png").is_file() && out.join("tiny-breakdown.svg").is_file());
    let svg = std::fs::read_to_string(out.join("tiny-breakdown.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("GC evaluation"));

    let v = json(&out);
    assert_eq!(v["format"], "pibench-table/1");
    // The folder's index: every measurement's wall time is recorded and summed.
    let index = std::fs::read_to_string(out.join("index.md")).unwrap();
    let line = index
        .lines()
        .find(|l| l.starts_with("| [`tiny`](tiny.md)"))
        .unwrap_or_else(|| panic!("no index line for tiny:\n{index}"));
    let cells: Vec<&str> = line.split('|').map(str::trim).collect();
    // | table | measured | failed | not supported | not run | on | last | time | untimed |
    assert_eq!(cells[3], "1", "one failed row: {line}");
    assert_eq!(cells[4], "1", "one unsupported row: {line}");
    let time: f64 = cells[8].parse().unwrap_or_else(|_| panic!("time: {line}"));
    assert!(time > 0.0, "{line}");
    assert_eq!(cells[9], "0", "every measurement has its wall time: {line}");
    for id in ["small", "larger"] {
        assert!(
            row(&v, id)["measured"]["wall_s"].as_f64().unwrap() > 0.0,
            "{id}"
        );
    }
    assert_eq!(row(&v, "silu")["status"], "not_supported");
    let broken = row(&v, "broken");
    assert_eq!(broken["status"], "failed");
    assert!(broken["message"]
        .as_str()
        .unwrap()
        .contains("broken.safetensors"));
    for (id, relus) in [("small", 1500), ("larger", 3000)] {
        let r = row(&v, id);
        assert_eq!(r["status"], "measured", "{id}");
        assert_eq!(r["relus"], relus);
        let m = &r["measured"];
        assert_eq!(
            m["runs"][0]["relus"], relus,
            "{id}: the run evaluated the row's ReLUs"
        );
        assert!(m["offline_s"]["median"].as_f64().unwrap() > 0.0);
        assert!(m["online_s"]["median"].as_f64().unwrap() > 0.0);
        assert!(m["runs"][0]["offline_bytes"]["gc"].as_u64().unwrap() > relus * 16);
        assert!(!r["mask_source"].as_str().unwrap().is_empty());
        // Random masks over a HybReNet leave most elements linear: the exact column runs.
        assert!(r["linearized_fraction"].as_f64().unwrap() > 0.5);
        assert_eq!(r["exact"]["trunc"], "exact");
        let names: Vec<&str> = r["ratios"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["lat total/paper", "lat online/paper"]);
    }
    // The same network is measured once.
    let again = row(&v, "larger-again");
    assert_eq!(again["same_network_as"], "tiny/larger");
    assert_eq!(
        again["measured"]["date"],
        row(&v, "larger")["measured"]["date"]
    );

    let md = std::fs::read_to_string(out.join("tiny.md")).unwrap();
    assert!(md.contains("| `small` | A | 1.5K | 0.5 | 1,500 |"), "{md}");
    assert!(md.contains("random mask: exactly 1,500 ReLUs"));
    assert!(md.contains("Machine: ") && md.contains("--net none"));
    let csv = std::fs::read_to_string(out.join("tiny.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 5);
    assert!(csv.lines().next().unwrap().starts_with("table,row,method,"));

    // --resume: measured rows keep their measurement (no new run), the failed one is retried.
    let o = table(&cfg, &out, &["--resume"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}");
    assert!(
        stdout.contains("tiny/small: local: kept from the previous results"),
        "{stdout}"
    );
    assert!(
        stdout.contains("tiny/larger: exact: kept from the previous results"),
        "{stdout}"
    );
    assert!(stdout.contains("tiny/broken: FAILED"), "{stdout}");
    let w = json(&out);
    for id in ["small", "larger", "larger-again"] {
        assert_eq!(
            row(&w, id)["measured"]["date"],
            row(&v, id)["measured"]["date"],
            "{id}"
        );
    }
}

#[test]
fn bad_configs_and_flags_are_one_line_errors() {
    let (dir, cfg, out) = setup();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, CONFIG.replace("unit = \"s\"", "unit = \"parsecs\"")).unwrap();
    let o = table(&bad, &out, &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("bad.toml") && stderr.contains("unit"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing runs when a config is bad");

    let o = table(&dir.path().join("missing.toml"), &out, &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("missing.toml"), "{stderr}");

    for (flags, what) in [
        (&["--rows", "no-such-row"][..], "--rows"),
        (&["--net", "rate=fast"][..], "--net"),
        (&["--repeat", "0"][..], "--repeat"),
    ] {
        let o = table(&cfg, &out, flags);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{flags:?}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(what), "{stderr}");
    }
}
