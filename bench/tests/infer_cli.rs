//! `pibench run`, `server` and `client` as separate OS processes on loopback,
//! with real HE parameters, on a tiny HybReNet (ResNet-18 layout, 4 channels).

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MODEL: [&str; 6] = [
    "--model",
    "hrn-1x1x1x-m4",
    "--dataset",
    "cifar10",
    "--relus",
    "1500",
];

fn pibench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pibench"))
}

#[test]
fn run_prints_json_that_matches_the_reference() {
    for trunc in ["local", "exact"] {
        let out = pibench()
            .arg("run")
            .args(MODEL)
            .args(["--trunc", trunc, "--threads", "2", "--format", "json"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{trunc}: {stderr}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["relus"], 1500);
        assert_eq!(v["reference"]["argmax_agrees"], true);
        let max = v["reference"]["max_abs_logit"].as_f64().unwrap();
        let diff = v["reference"]["max_abs_diff_fixed"].as_f64().unwrap();
        assert!(diff <= 0.02 * (1.0 + max), "{trunc}: logits off by {diff}");
        let t = &v["totals"];
        assert!(t["offline_s"].as_f64().unwrap() > 0.0);
        assert!(t["online_bytes"]["gc"].as_u64().unwrap() > 1500 * 16 * 30);
        assert!(t["online_bytes"]["reply"].as_u64().unwrap() >= 1500 * 8);
        let layers = v["layers"].as_array().unwrap();
        let relus: u64 = layers.iter().map(|l| l["relus"].as_u64().unwrap()).sum();
        assert_eq!(relus, 1500);
        if trunc == "local" {
            assert!(v["local_truncation"]["per_inference"].as_f64().unwrap() > 0.0);
            assert!(v["settings"].to_string().contains("local"));
        }
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(extra: &[&str]) -> (Server, u16, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let port_file = dir.path().join("port");
    let server = Server(
        pibench()
            .arg("server")
            .args(MODEL)
            .args(["--listen", "127.0.0.1:0", "--threads", "1"])
            .arg("--port-file")
            .arg(&port_file)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    loop {
        if let Ok(b) = std::fs::read(&port_file) {
            if let Ok(p) = serde_json::from_slice::<u16>(&b) {
                return (server, p, dir);
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn client(port: u16, extra: &[&str]) -> (bool, String, String) {
    let out = pibench()
        .arg("client")
        .args([
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--random",
            "--threads",
            "1",
        ])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A JSON array of numbers.
fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Kills the server and returns what it wrote to stderr.
fn server_log(mut server: Server) -> String {
    server.0.kill().unwrap();
    let mut log = String::new();
    server
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    log
}

#[test]
fn server_serves_clients_one_after_another_and_survives_bad_ones() {
    let (server, port, _dir) = start_server(&[]);
    let (ok, out, err) = client(port, &["--format", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["logits"][0].as_array().unwrap().len(), 10);
    // A client with another truncation mode is refused with the field named, on both sides.
    let (ok, _, err) = client(port, &["--trunc", "exact"]);
    assert!(!ok);
    assert!(err.contains("truncation"), "{err}");
    // A client expecting another model is refused.
    let (ok, _, err) = client(
        port,
        &["--expect-model", "resnet18", "--expect-dataset", "cifar10"],
    );
    assert!(!ok);
    assert!(err.contains("model"), "{err}");
    // The server still answers correctly, with two inferences in one session.
    let (ok, out, err) = client(port, &["--format", "json", "--inferences", "2"]);
    assert!(ok, "{err}");
    let w: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(w["logits"].as_array().unwrap().len(), 2);
    // Same model, same seeded input: the same argmax as the first session.
    let am = |l: &serde_json::Value| {
        let l = floats(l);
        (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b })
    };
    assert_eq!(am(&v["logits"][0]), am(&w["logits"][0]));
    let log = server_log(server);
    assert!(log.contains("truncation differs"), "{log}");
    assert!(log.matches(": done").count() == 2, "{log}");
}

/// `--max-clients 2`: two clients that connect at once are served at the same
/// time (the second session starts before the first ends), each gets its own
/// correct answer; with the default of 1 the sessions run one after the other.
#[test]
fn max_clients_serves_sessions_concurrently() {
    for (max, concurrent) in [("2", true), ("1", false)] {
        let (server, port, _dir) = start_server(&["--max-clients", max]);
        let clients: Vec<_> = (0..2)
            .map(|_| std::thread::spawn(move || client(port, &["--format", "json"])))
            .collect();
        let outs: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        let mut logits = Vec::new();
        for (ok, out, err) in &outs {
            assert!(ok, "--max-clients {max}: {err}");
            let v: serde_json::Value = serde_json::from_str(out).unwrap();
            logits.push(v["logits"][0].clone());
        }
        // Same model and seeded input in both sessions: the same logits up to
        // the local truncations' ±1 LSB (independent shares per session).
        let (a, b) = (floats(&logits[0]), floats(&logits[1]));
        let max_abs = a.iter().fold(0f64, |m, v| m.max(v.abs()));
        let diff = a
            .iter()
            .zip(&b)
            .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            diff <= 0.02 * (1.0 + max_abs),
            "--max-clients {max}: sessions differ by {diff}"
        );
        let log = server_log(server);
        let events: Vec<&str> = log
            .lines()
            .filter_map(|l| {
                if l.ends_with(": started") {
                    Some("started")
                } else if l.ends_with(": done") {
                    Some("done")
                } else {
                    None
                }
            })
            .collect();
        let want = if concurrent {
            ["started", "started", "done", "done"]
        } else {
            ["started", "done", "started", "done"]
        };
        assert_eq!(events, want, "--max-clients {max}: {log}");
    }
}

#[test]
fn client_without_a_server_says_so() {
    let (ok, _, err) = client(1, &[]);
    assert!(!ok);
    assert!(err.contains("connecting to 127.0.0.1:1"), "{err}");
}

/// The benchmark runs (release build; `make bench-long`): each prints
/// its per-layer table and must agree with the reference.
fn long_run(args: &[&str]) {
    let out = pibench()
        .arg("run")
        .args(args)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .unwrap();
    assert!(out.success(), "pibench run {args:?} failed");
}

#[test]
#[ignore = "long: ResNet-18 with real parameters (make bench-long)"]
fn resnet18_cifar100_12900_relus() {
    long_run(&[
        "--model",
        "resnet18",
        "--dataset",
        "cifar100",
        "--relus",
        "12900",
    ]);
}

#[test]
#[ignore = "long: ResNet-18 with real parameters (make bench-long)"]
fn resnet18_cifar100_all_relus() {
    long_run(&[
        "--model",
        "resnet18",
        "--dataset",
        "cifar100",
        "--relus",
        "557056",
    ]);
}

#[test]
#[ignore = "long: ResNet-18 Tiny-ImageNet, 2.2M ReLUs, offline material on disk (make bench-long)"]
fn resnet18_tinyimagenet_all_relus_with_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().to_string_lossy().into_owned();
    long_run(&[
        "--model",
        "resnet18",
        "--dataset",
        "tinyimagenet",
        "--store",
        &store,
    ]);
}
