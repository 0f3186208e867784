//! Killed peers: a `pibench server` process keeps serving when its clients
//! are killed (SIGKILL) at seeded random points of every phase, and a killed
//! server leaves its client with a clear error instead of a hang.
//!
//! The kill points come from the client's phase log (`PIBENCH_PHASE_LOG`,
//! one line at the start of every node of every phase, with the node's
//! kind): during the handshake and session setup (a random delay before the
//! first node), during an offline HE node (conv2d, batchnorm, linear),
//! during an offline activation site (garbling, OT extension, label
//! transfer), and during an online node. After every kill a well-behaved
//! client must get the right answer from the same server (N out of N), and
//! the server's store folder must hold no session files.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server on a free loopback port, its stderr in `dir/server.log`.
fn start_server(dir: &Path) -> (Killed, u16) {
    let port_file = dir.join("port");
    let _ = std::fs::remove_file(&port_file);
    let log = std::fs::File::create(dir.join("server.log")).unwrap();
    let server = Killed(
        pibench()
            .arg("server")
            .args(MODEL)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--threads",
                "1",
                "--timeout",
                "60",
            ])
            .arg("--store")
            .arg(dir.join("store"))
            .arg("--port-file")
            .arg(&port_file)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    loop {
        if let Ok(b) = std::fs::read(&port_file) {
            if let Ok(p) = serde_json::from_slice::<u16>(&b) {
                return (server, p);
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn client(port: u16) -> Command {
    let mut c = pibench();
    c.arg("client").args([
        "--connect",
        &format!("127.0.0.1:{port}"),
        "--random",
        "--threads",
        "1",
        "--timeout",
        "60",
    ]);
    c
}

/// One phase-log line: (phase, node, kind).
fn parse(line: &str) -> Option<(String, usize, String)> {
    // "pibench: phase Client offline inference 0 node 3/40 conv2d layer1.0.conv1"
    let w: Vec<&str> = line.split_whitespace().collect();
    if w.len() < 9 || w[1] != "phase" {
        return None;
    }
    let node = w[7].split('/').next()?.parse().ok()?;
    Some((w[3].to_string(), node, w[8].to_string()))
}

/// A well-behaved client: its logits.
fn good_client(port: u16) -> Vec<f64> {
    let out = client(port).args(["--format", "json"]).output().unwrap();
    assert!(
        out.status.success(),
        "good client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["logits"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Session files left in the server's store (anything but the manifest).
fn stray_files(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir.join("store")) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "pibench-store.json")
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn argmax(l: &[f64]) -> usize {
    (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b })
}

fn close(a: &[f64], b: &[f64]) -> bool {
    let max = b.iter().fold(0f64, |m, x| m.max(x.abs()));
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= 0.02 * (1.0 + max))
}

#[test]
fn server_answers_every_client_after_clients_are_killed_in_every_phase() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, port) = start_server(dir.path());

    // A logged run: the nodes of each phase and the time to the first node.
    let start = Instant::now();
    let mut probe = Killed(
        client(port)
            .args(["--format", "json"])
            .env("PIBENCH_PHASE_LOG", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut first_node = None;
    let mut lines = Vec::new();
    for line in BufReader::new(probe.0.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(p) = parse(&line) {
            first_node.get_or_insert(start.elapsed());
            lines.push(p);
        }
    }
    let mut out = String::new();
    probe
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(probe.0.wait().unwrap().success(), "probe client failed");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let want: Vec<f64> = v["logits"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let first_node = first_node.expect("the client logged no phase lines");
    let he = |k: &str| matches!(k, "conv2d" | "batchnorm" | "linear");
    let pick = |f: &dyn Fn(&(String, usize, String)) -> bool| -> Vec<(String, usize)> {
        lines
            .iter()
            .filter(|l| f(l))
            .map(|(p, n, _)| (p.clone(), *n))
            .collect()
    };
    let offline_he = pick(&|(p, _, k)| p == "offline" && he(k));
    let offline_gc = pick(&|(p, _, k)| p == "offline" && k == "site");
    // Online kills target the first half of the sites: after the last
    // site's reply the server needs nothing more from the client and may
    // finish before the kill lands (a race the machine's load decides).
    let mut online = pick(&|(p, _, k)| p == "online" && k == "site");
    online.truncate(online.len().div_ceil(2));
    assert!(!offline_he.is_empty() && !offline_gc.is_empty() && !online.is_empty());

    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let mut served = 0;
    let rounds = 2;
    for round in 0..rounds {
        for phase in ["handshake", "offline-he", "offline-gc", "online"] {
            let mut c = Killed(
                client(port)
                    .env("PIBENCH_PHASE_LOG", "1")
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap(),
            );
            let target = match phase {
                "handshake" => None,
                "offline-he" => Some(offline_he[rng.gen_range(0..offline_he.len())].clone()),
                "offline-gc" => Some(offline_gc[rng.gen_range(0..offline_gc.len())].clone()),
                _ => Some(online[rng.gen_range(0..online.len())].clone()),
            };
            match &target {
                None => {
                    let ms = rng.gen_range(0..first_node.as_millis().max(1) as u64);
                    std::thread::sleep(Duration::from_millis(ms));
                }
                Some((p, n)) => {
                    let mut reached = false;
                    for line in BufReader::new(c.0.stderr.take().unwrap()).lines() {
                        let Ok(line) = line else { break };
                        if let Some((lp, ln, _)) = parse(&line) {
                            if &lp == p && ln == *n {
                                reached = true;
                                break;
                            }
                        }
                    }
                    assert!(reached, "round {round}: client never reached {p} node {n}");
                }
            }
            c.0.kill().unwrap();
            c.0.wait().unwrap();
            // The next client is served correctly by the same server.
            let got = good_client(port);
            assert_eq!(
                argmax(&got),
                argmax(&want),
                "round {round}, after a kill in {phase} at {target:?}"
            );
            assert!(
                close(&got, &want),
                "after a kill in {phase}: {got:?} vs {want:?}"
            );
            served += 1;
            let stray = stray_files(dir.path());
            assert!(stray.is_empty(), "after a kill in {phase}: {stray:?}");
        }
    }
    assert_eq!(served, 4 * rounds);
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    // The probe and every good client: done.
    assert_eq!(log.matches(": done").count(), 1 + 4 * rounds, "{log}");
    eprintln!("kill_peer: {served} of {served} clients served correctly after kills");
}

#[test]
fn a_killed_server_leaves_its_client_with_a_clear_error() {
    for phase in ["offline", "online"] {
        let dir = tempfile::tempdir().unwrap();
        let (mut server, port) = start_server(dir.path());
        let start = Instant::now();
        let mut c = Killed(
            client(port)
                .env("PIBENCH_PHASE_LOG", "1")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut rest = Vec::new();
        let mut lines = BufReader::new(c.0.stderr.take().unwrap()).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if parse(&line).is_some_and(|(p, n, _)| p == phase && n >= 3) {
                break;
            }
        }
        server.0.kill().unwrap();
        server.0.wait().unwrap();
        for line in lines {
            rest.push(line.unwrap());
        }
        let status = c.0.wait().unwrap();
        let err = rest.join("\n");
        assert!(!status.success(), "{phase}: the client succeeded");
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{phase}: the client took {:?} to notice",
            start.elapsed()
        );
        let err_line = err
            .lines()
            .find(|l| l.starts_with("pibench: error:"))
            .unwrap_or_else(|| panic!("{phase}: no error line in {err}"));
        assert!(
            ["closed the connection", "reset", "aborted", "broken pipe"]
                .iter()
                .any(|w| err_line.to_lowercase().contains(w)),
            "{phase}: unclear error: {err_line}"
        );
    }
}
