//! Two hosts: `pibench server` in one network namespace, `pibench client` in
//! another, joined by a veth pair with addresses of the test's own
//! (10.213.x.1/30 ↔ 10.213.x.2/30). The client's logits are checked against
//! the fixed-point reference that `pibench run` prints for the same model
//! and seeded input.
//!
//! Needs root and iproute2 (`ip netns`); where either is missing the test
//! prints why and passes without running (it cannot prove anything there).
//! The namespaces (and with them the veth pair) are always deleted, also
//! when the test fails.

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

fn pibench() -> &'static str {
    env!("CARGO_BIN_EXE_pibench")
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Two namespaces joined by a veth pair; deleted on drop.
struct Hosts {
    server_ns: String,
    client_ns: String,
    server_addr: String,
    server_dev: String,
}

impl Hosts {
    fn create() -> Result<Hosts, String> {
        let id = std::process::id();
        // A /30 of 10.213.0.0/16 per test process: concurrent runs do not collide.
        let (b, c) = ((id >> 6) & 0xff, (id & 0x3f) << 2);
        let h = Hosts {
            server_ns: format!("pibench-srv-{id}"),
            client_ns: format!("pibench-cli-{id}"),
            server_addr: format!("10.213.{b}.{}", c + 1),
            server_dev: format!("pbs{id}"),
        };
        let client_addr = format!("10.213.{b}.{}", c + 2);
        let (va, vb) = (format!("pbs{id}"), format!("pbc{id}"));
        ip(&["netns", "add", &h.server_ns])?;
        ip(&["netns", "add", &h.client_ns])?;
        ip(&[
            "link",
            "add",
            &va,
            "netns",
            &h.server_ns,
            "type",
            "veth",
            "peer",
            "name",
            &vb,
            "netns",
            &h.client_ns,
        ])?;
        for (ns, dev, addr) in [
            (&h.server_ns, &va, &h.server_addr),
            (&h.client_ns, &vb, &client_addr),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(h)
    }

    /// A byte counter of a device inside a namespace (sysfs as `ip netns exec` mounts it).
    fn counter(&self, ns: &str, dev: &str, name: &str) -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "cat"])
            .arg(format!("/sys/class/net/{dev}/statistics/{name}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    fn exec(&self, ns: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, pibench()]);
        c
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.server_ns]);
        let _ = ip(&["netns", "del", &self.client_ns]);
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn logits(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn server_and_client_in_two_network_namespaces() {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !is_root {
        eprintln!("two_hosts: skipped: network namespaces need root");
        return;
    }
    let hosts = match Hosts::create() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("two_hosts: skipped: network namespaces unavailable here: {e}");
            return;
        }
    };

    // The reference logits for the same model and seeded input.
    let out = Command::new(pibench())
        .arg("run")
        .args(MODEL)
        .args(["--threads", "1", "--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let fixed = logits(&run["reference"]["fixed_logits"]);

    let dir = tempfile::tempdir().unwrap();
    let port_file = dir.path().join("port");
    let listen = format!("{}:0", hosts.server_addr);
    let _server = Killed(
        hosts
            .exec(&hosts.server_ns)
            .arg("server")
            .args(MODEL)
            .args(["--listen", &listen, "--threads", "1", "--once"])
            .arg("--port-file")
            .arg(&port_file)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    let port = loop {
        if let Ok(b) = std::fs::read(&port_file) {
            if let Ok(p) = serde_json::from_slice::<u16>(&b) {
                break p;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = hosts
        .exec(&hosts.client_ns)
        .arg("client")
        .args([
            "--connect",
            &format!("{}:{port}", hosts.server_addr),
            "--random",
            "--threads",
            "1",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let got = logits(&v["logits"][0]);
    assert_eq!(got.len(), fixed.len());
    let max = fixed.iter().fold(0f64, |m, x| m.max(x.abs()));
    let diff = got
        .iter()
        .zip(&fixed)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff <= 0.02 * (1.0 + max),
        "two-host logits {got:?} vs reference {fixed:?}"
    );
    let am = |l: &[f64]| (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b });
    assert_eq!(am(&got), am(&fixed));
    // The session's bytes crossed the veth pair: the server's side of it
    // carried at least the megabytes of HE and GC traffic both ways.
    let tx = hosts.counter(&hosts.server_ns, &hosts.server_dev, "tx_bytes");
    let rx = hosts.counter(&hosts.server_ns, &hosts.server_dev, "rx_bytes");
    assert!(
        tx > 1_000_000 && rx > 1_000_000,
        "veth carried only {tx} B out, {rx} B in"
    );
}
