//! What one party measured: per node and per phase, time and traffic.
//!
//! Traffic is counted on the channel (frames as sent, 4-byte length prefix
//! included) per phase and per node; times are the party's wall time and
//! the process's CPU time (user + system, from `/proc/self/stat`, 10 ms
//! resolution) spent in each node of each phase.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::net::{Meter, PhaseTraffic};

/// Which party.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Holds the model.
    Server,
    /// Holds the input.
    Client,
}

/// Traffic of one phase (this party's view).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// Bytes sent.
    pub sent: u64,
    /// Bytes received.
    pub received: u64,
    /// Messages sent.
    pub messages_sent: u64,
    /// Messages received.
    pub messages_received: u64,
    /// Rounds (receive → send turns) started by this party.
    pub rounds: u64,
}

impl From<PhaseTraffic> for Traffic {
    fn from(p: PhaseTraffic) -> Self {
        Self {
            sent: p.bytes_sent,
            received: p.bytes_received,
            messages_sent: p.messages_sent,
            messages_received: p.messages_received,
            rounds: p.rounds,
        }
    }
}

impl Traffic {
    /// Adds another count.
    pub fn add(&mut self, o: &Traffic) {
        self.sent += o.sent;
        self.received += o.received;
        self.messages_sent += o.messages_sent;
        self.messages_received += o.messages_received;
        self.rounds += o.rounds;
    }

    /// Bytes both ways.
    pub fn bytes(&self) -> u64 {
        self.sent + self.received
    }
}

/// One node of one inference.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    /// Node index.
    pub node: usize,
    /// Node name.
    pub name: String,
    /// Op kind.
    pub kind: String,
    /// ReLU elements (sites).
    pub relus: usize,
    /// Identity elements (sites).
    pub identity: usize,
    /// Polynomial elements (sites).
    pub poly: usize,
    /// Multiply-accumulates (linear layers).
    pub macs: u64,
    /// Offline wall seconds of this party in this node.
    pub offline_s: f64,
    /// Online wall seconds of this party in this node.
    pub online_s: f64,
    /// Offline CPU seconds (process).
    pub offline_cpu_s: f64,
    /// Online CPU seconds (process).
    pub online_cpu_s: f64,
    /// With `--store`: seconds spent reading this node's offline material
    /// back (on the read-ahead thread, overlapping earlier nodes).
    #[serde(default)]
    pub store_read_s: f64,
    /// With `--store`: seconds this node's online step waited for that read.
    #[serde(default)]
    pub store_wait_s: f64,
    /// Traffic per phase (`offline/he`, `offline/ot`, `offline/gc`, `offline/poly`,
    /// `online/input`, `online/gc`, `online/reply`, `online/poly`, `online/reveal`).
    pub traffic: BTreeMap<String, Traffic>,
}

/// One party's measurements of one inference (plus the session's setup).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartyReport {
    /// `server` or `client`.
    pub role: Option<Role>,
    /// Model name.
    pub model: String,
    /// Public-model hash (hex).
    pub model_hash: String,
    /// The agreed settings.
    pub settings: Vec<(String, String)>,
    /// Security of each component.
    pub security: Vec<String>,
    /// Worker threads.
    pub threads: usize,
    /// Inference number in the session (0-based).
    pub inference: usize,
    /// Session setup (handshake, HE keys, base OTs): wall seconds.
    pub setup_s: f64,
    /// Offline wall seconds.
    pub offline_s: f64,
    /// Online wall seconds.
    pub online_s: f64,
    /// Offline CPU seconds.
    pub offline_cpu_s: f64,
    /// Online CPU seconds.
    pub online_cpu_s: f64,
    /// Traffic per phase over the session so far (setup phases included).
    pub phases: BTreeMap<String, Traffic>,
    /// Per node.
    pub nodes: Vec<NodeReport>,
    /// Elements truncated locally per inference (`local` mode).
    pub local_truncations: usize,
    /// Peak resident memory of the process, bytes (`VmHWM`).
    pub peak_rss_bytes: Option<u64>,
}

impl PartyReport {
    /// Total traffic of the phases starting with `prefix`.
    pub fn traffic(&self, prefix: &str) -> Traffic {
        let mut t = Traffic::default();
        for (k, v) in &self.phases {
            if k.starts_with(prefix) {
                t.add(v);
            }
        }
        t
    }

    /// Fills per-phase and per-node traffic from a channel's meter: what it
    /// counted since `baseline` (a clone taken when the inference started;
    /// `None` for everything, setup phases included).
    pub fn take_traffic(&mut self, meter: &Meter, baseline: Option<&Meter>) {
        let minus = |t: Traffic, b: Option<Traffic>| match b {
            None => t,
            Some(b) => Traffic {
                sent: t.sent - b.sent.min(t.sent),
                received: t.received - b.received.min(t.received),
                messages_sent: t.messages_sent - b.messages_sent.min(t.messages_sent),
                messages_received: t.messages_received
                    - b.messages_received.min(t.messages_received),
                rounds: t.rounds - b.rounds.min(t.rounds),
            },
        };
        self.phases = meter
            .phases()
            .iter()
            .map(|(k, v)| {
                let b = baseline
                    .and_then(|b| b.phases().get(k))
                    .map(|v| Traffic::from(*v));
                (k.clone(), minus(Traffic::from(*v), b))
            })
            .filter(|(_, t)| t.messages_sent + t.messages_received > 0)
            .collect();
        for n in &mut self.nodes {
            n.traffic.clear();
        }
        for ((layer, phase), v) in meter.layers() {
            let b = baseline
                .and_then(|b| b.layers().get(&(layer.clone(), phase.clone())))
                .map(|v| Traffic::from(*v));
            let t = minus(Traffic::from(*v), b);
            if t.messages_sent + t.messages_received == 0 {
                continue;
            }
            if let Some(n) = self.nodes.iter_mut().find(|n| &n.name == layer) {
                n.traffic.insert(phase.clone(), t);
            }
        }
    }
}

/// CPU seconds of this process so far (user + system).
pub fn process_cpu_s() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start at ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ')'.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Linux reports in USER_HZ = 100 ticks per second on every mainstream architecture.
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident set of this process (`VmHWM`), bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Wall and CPU clocks started together.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall: Instant,
    cpu: f64,
}

impl Clock {
    /// Starts now.
    pub fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: process_cpu_s(),
        }
    }

    /// `(wall, cpu)` seconds since the start.
    pub fn elapsed(&self) -> (f64, f64) {
        (
            self.wall.elapsed().as_secs_f64(),
            (process_cpu_s() - self.cpu).max(0.0),
        )
    }
}
