//! The network emulator checked against its own settings: bulk transfers
//! match the configured rate and ping-pongs the configured RTT within 5 %,
//! over TCP loopback and `tokio::io::duplex`, with both parties shaped.
//!
//! Timing tests hold one lock (they would disturb each other on 2 cores) and
//! run on their own 2-worker runtime. Load on the machine can only make a
//! transfer slower, never faster, so the lower bounds (nothing arrives before
//! the model allows) are checked on every attempt, and an upper bound that
//! fails is retried up to [`ATTEMPTS`] times before the test fails; every
//! attempt prints its figures (`cargo test -- --nocapture`).
//!
//! Robustness: measured on a 2-vCPU VM at load average 5–8 from other
//! builds running under `nice`, every test passed at the first or second
//! attempt. Two extra CPU hogs at the *same* priority, always runnable, add
//! 2–8 ms of scheduling delay to wake-ups after a long sleep, and the 20 ms
//! and 40 ms ping-pongs then fail (their bulk transfers and the 2 ms
//! ping-pongs still pass): run long builds beside `make test` under `nice`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use pibench_protocol::net::{Channel, NetError};
use pibench_protocol::shaper::{
    self, NetProfile, ShapeError, ShapedStream, ShapedWriter, DEFAULT_BURST_BYTES, MAX_CHUNK,
};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ATTEMPTS: usize = 3;
const TOLERANCE: f64 = 0.05;
/// Bulk frames stay under glibc's 128 KiB mmap threshold, so the receiver's
/// per-frame buffers are recycled instead of page-faulted in afresh (which
/// made the test's own receiver, not the link, the bottleneck).
const BULK_FRAME: usize = 64 << 10;

static TIMING: Mutex<()> = Mutex::new(());

fn timing_lock() -> std::sync::MutexGuard<'static, ()> {
    TIMING.lock().unwrap_or_else(|e| e.into_inner())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn profile(s: &str) -> NetProfile {
    s.parse().expect("valid profile")
}

async fn tcp_pair(p: &NetProfile) -> (Channel, Channel) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (
        shaper::tcp_channel(a.expect("connect"), p).expect("shaped client"),
        shaper::tcp_channel(b.expect("accept").0, p).expect("shaped server"),
    )
}

/// Round-trip times of `rounds` 8-byte ping-pongs (after `warmup` unrecorded rounds).
async fn ping_pong(mut a: Channel, b: Channel, warmup: usize, rounds: usize) -> Vec<Duration> {
    let total = warmup + rounds;
    let echo = tokio::spawn(async move {
        let mut b = b;
        for _ in 0..total {
            let m = b.recv_bytes("ping").await?;
            b.send_bytes(&m, "pong").await?;
            b.flush().await?;
        }
        Ok::<_, NetError>(())
    });
    let mut rtts = Vec::with_capacity(rounds);
    for i in 0..total as u64 {
        let t = Instant::now();
        a.send_bytes(&i.to_le_bytes(), "ping").await.expect("ping");
        a.flush().await.expect("flush");
        let r = a.recv_bytes("pong").await.expect("pong");
        let dt = t.elapsed();
        assert_eq!(r, i.to_le_bytes(), "pong {i} out of order");
        if i as usize >= warmup {
            rtts.push(dt);
        }
    }
    echo.await.expect("echo task").expect("echo");
    rtts
}

/// Sits idle for `gap`: blocks the worker thread on purpose, since tokio's
/// timer would round sub-millisecond gaps up to a millisecond. The other
/// party is waiting for this one meanwhile, idle as well.
fn idle(gap: Duration) {
    std::thread::sleep(gap);
}

/// The unshaped transport's round-trip time when both parties sat idle for
/// `gap` before each message, as they do behind a delay line: the pinger
/// sleeps `gap` before each ping, the echo holds each ping for `gap` before
/// answering and reports the hold, which is subtracted. What remains is two
/// transport writes and two wake-ups from idle, which the shaped ping-pong
/// pays as well on top of the emulated delay.
async fn idle_ping_pong(mut a: Channel, b: Channel, gap: Duration, rounds: usize) -> Vec<Duration> {
    let echo = tokio::spawn(async move {
        let mut b = b;
        for _ in 0..rounds {
            b.recv_bytes("ping").await?;
            let t = Instant::now();
            idle(gap);
            let held = t.elapsed().as_nanos() as u64;
            b.send_bytes(&held.to_le_bytes(), "pong").await?;
            b.flush().await?;
        }
        Ok::<_, NetError>(())
    });
    let mut rtts = Vec::with_capacity(rounds);
    for i in 0..rounds as u64 {
        idle(gap);
        let t = Instant::now();
        a.send_bytes(&i.to_le_bytes(), "ping").await.expect("ping");
        a.flush().await.expect("flush");
        let r = a.recv_bytes("pong").await.expect("pong");
        let total = t.elapsed();
        let held = u64::from_le_bytes(r.try_into().expect("8-byte pong"));
        rtts.push(total.saturating_sub(Duration::from_nanos(held)));
    }
    echo.await.expect("echo task").expect("echo");
    rtts
}

fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s[s.len() / 2]
}

fn mean(v: &[Duration]) -> Duration {
    v.iter().sum::<Duration>() / v.len() as u32
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Sends `total` payload bytes in `frame`-byte frames from `a` to `b`; returns
/// the wire bytes (frame headers included) and the time from the first send
/// to the last byte received.
async fn bulk(mut a: Channel, b: Channel, total: usize, frame: usize) -> (u64, Duration) {
    let frames = total.div_ceil(frame);
    let rx = tokio::spawn(async move {
        let mut b = b;
        let mut got = 0usize;
        for _ in 0..frames {
            got += b.recv_bytes("bulk").await?.len();
        }
        Ok::<_, NetError>((Instant::now(), got))
    });
    let payload = vec![0x5au8; frame];
    let t0 = Instant::now();
    let mut sent = 0;
    while sent < total {
        let n = frame.min(total - sent);
        a.send_bytes(&payload[..n], "bulk").await.expect("send");
        sent += n;
    }
    a.flush().await.expect("flush");
    let (t1, got) = rx.await.expect("receiver task").expect("receive");
    assert_eq!(got, total);
    ((total + 4 * frames) as u64, t1 - t0)
}

/// Rate seen by a bulk transfer: the model says the last of `bytes` arrives
/// `(bytes − burst)/rate + RTT/2` after the first is written.
fn effective_rate(p: &NetProfile, wire_bytes: u64, elapsed: Duration) -> f64 {
    let shaped = wire_bytes.saturating_sub(p.burst_bytes()) as f64 * 8.0;
    shaped / (elapsed.as_secs_f64() - p.one_way_delay().as_secs_f64())
}

fn expected_bulk_time(p: &NetProfile, wire_bytes: u64) -> Duration {
    p.transmit_time(wire_bytes.saturating_sub(p.burst_bytes())) + p.one_way_delay()
}

/// Bulk transfer over `pair()`: checks the lower bound every time, the rate within 5 %
/// in at least one of [`ATTEMPTS`].
fn check_rate<F, Fut>(p: NetProfile, total: usize, pair: F)
where
    F: Fn(NetProfile) -> Fut,
    Fut: std::future::Future<Output = (Channel, Channel)>,
{
    let _g = timing_lock();
    let rt = runtime();
    let rate = p.rate_bps().expect("a rate-limited profile") as f64;
    let mut seen = Vec::new();
    for attempt in 1..=ATTEMPTS {
        let (wire, elapsed) = rt.block_on(async {
            let (a, b) = pair(p).await;
            bulk(a, b, total, BULK_FRAME).await
        });
        let floor = expected_bulk_time(&p, wire);
        let got = effective_rate(&p, wire, elapsed);
        println!(
            "{p}: {wire} B in {:.2} ms (model {:.2} ms): effective {:.1} Mbit/s = {:+.2} % of {:.0} Mbit/s, raw {:.1} Mbit/s [attempt {attempt}]",
            ms(elapsed),
            ms(floor),
            got / 1e6,
            (got / rate - 1.0) * 100.0,
            rate / 1e6,
            wire as f64 * 8.0 / elapsed.as_secs_f64() / 1e6,
        );
        // Nothing may arrive before the model allows (10 µs of slack for the
        // per-chunk rounding of transmit times to whole nanoseconds).
        assert!(
            elapsed + Duration::from_micros(10) >= floor,
            "{p}: bulk finished in {elapsed:?}, before the model's {floor:?}"
        );
        seen.push(got / rate - 1.0);
        if (got / rate - 1.0).abs() <= TOLERANCE {
            return;
        }
    }
    panic!("{p}: effective rate off by {seen:?} (relative) in every attempt");
}

/// Ping-pong over `pair()`: every round at least the RTT; the median minus
/// the unshaped transport's median round trip from idle ([`idle_ping_pong`],
/// `base`) within 5 % of the RTT, in at least one of [`ATTEMPTS`].
fn check_rtt<F, Fut>(p: NetProfile, warmup: usize, rounds: usize, pair: F)
where
    F: Fn(NetProfile) -> Fut,
    Fut: std::future::Future<Output = (Channel, Channel)>,
{
    let _g = timing_lock();
    let rt = runtime();
    let rtt = p.rtt();
    let mut seen = Vec::new();
    for attempt in 1..=ATTEMPTS {
        let (base, rtts) = rt.block_on(async {
            let (a, b) = pair(NetProfile::NONE).await;
            let gap = p.one_way_delay();
            let base = median(&idle_ping_pong(a, b, gap, rounds.min(50)).await);
            let (a, b) = pair(p).await;
            (base, ping_pong(a, b, warmup, rounds).await)
        });
        let (med, avg) = (median(&rtts), mean(&rtts));
        let min = rtts.iter().min().copied().unwrap_or_default();
        let added = med.saturating_sub(base);
        let err = added.as_secs_f64() / rtt.as_secs_f64() - 1.0;
        println!(
            "{p}: RTT median {:.4} ms, mean {:.4} ms, min {:.4} ms over {rounds} rounds; unshaped from idle {:.4} ms; added {:.4} ms = {:+.2} % of {:.4} ms [attempt {attempt}]",
            ms(med),
            ms(avg),
            ms(min),
            ms(base),
            ms(added),
            err * 100.0,
            ms(rtt),
        );
        assert!(
            min >= rtt,
            "{p}: a round trip took {min:?}, less than the RTT {rtt:?}"
        );
        seen.push(err);
        if err.abs() <= TOLERANCE {
            return;
        }
    }
    panic!("{p}: added RTT off by {seen:?} (relative) in every attempt");
}

async fn duplex_pair(p: NetProfile) -> (Channel, Channel) {
    shaper::duplex_pair(&p).expect("shaped duplex")
}

async fn tcp(p: NetProfile) -> (Channel, Channel) {
    tcp_pair(&p).await
}

// ---------------------------------------------------------------- settings

#[test]
fn presets_and_custom_settings_parse() {
    assert_eq!(profile("none"), NetProfile::NONE);
    assert_eq!(profile(" LAN "), NetProfile::LAN);
    assert_eq!(profile("wan"), NetProfile::WAN);
    assert_eq!(NetProfile::LAN.rate_bps(), Some(3_000_000_000));
    assert_eq!(NetProfile::LAN.rtt(), Duration::from_micros(300));
    assert_eq!(NetProfile::LAN.one_way_delay(), Duration::from_micros(150));
    assert_eq!(NetProfile::WAN.rate_bps(), Some(400_000_000));
    assert_eq!(NetProfile::WAN.rtt(), Duration::from_millis(40));
    assert_eq!(NetProfile::WAN.burst_bytes(), DEFAULT_BURST_BYTES);

    assert_eq!(profile("rate=3Gbit/s,rtt=0.3ms"), NetProfile::LAN);
    assert_eq!(profile("rtt=300us, rate=3000mbit"), NetProfile::LAN);
    assert_eq!(profile("rate=400Mbit,rtt=40ms"), NetProfile::WAN);
    let p = profile("rate=100mbit,rtt=20ms");
    assert_eq!(p.rate_bps(), Some(100_000_000));
    assert_eq!(p.rtt(), Duration::from_millis(20));
    assert_eq!(profile("rate=1gbit").rtt(), Duration::ZERO);
    assert_eq!(profile("rtt=1s").rate_bps(), None);
    assert_eq!(profile("rate=unlimited,rtt=0"), NetProfile::NONE);
    assert_eq!(profile("rate=2.5kbit,rtt=1µs").rate_bps(), Some(2_500));
    assert_eq!(
        profile("rate=1gbit,rtt=1ms,burst=64kib").burst_bytes(),
        65_536
    );
    assert_eq!(profile("rate=1gbit,burst=1.5kb").burst_bytes(), 1_500);
}

#[test]
fn display_states_the_setting_and_round_trips() {
    assert_eq!(NetProfile::NONE.to_string(), "none (no emulation)");
    assert_eq!(NetProfile::LAN.to_string(), "lan (rate=3Gbit/s,rtt=0.3ms)");
    assert_eq!(NetProfile::WAN.to_string(), "wan (rate=400Mbit/s,rtt=40ms)");
    for s in [
        "rate=100mbit,rtt=20ms",
        "rate=2.5gbit,rtt=0.3ms",
        "rate=1500kbit,rtt=75us",
        "rate=unlimited,rtt=1.25s",
        "rate=7bit,rtt=0",
        "rate=10gbit,rtt=2ms,burst=1500",
    ] {
        let Ok(p) = s.parse::<NetProfile>() else {
            // "rate=7bit" is below the minimum rate: must be an error, not a panic.
            assert!(s.contains("7bit"), "{s} should parse");
            continue;
        };
        let shown = p.to_string();
        assert_eq!(shown.parse::<NetProfile>(), Ok(p), "{s} -> {shown}");
        assert_eq!(p.spec().parse::<NetProfile>(), Ok(p), "{s} -> {}", p.spec());
    }
    assert_eq!(
        profile("rate=2.5gbit,rtt=0.3ms").to_string(),
        "rate=2.5Gbit/s,rtt=0.3ms"
    );
    assert_eq!(
        profile("rate=1500kbit,rtt=75us").to_string(),
        "rate=1.5Mbit/s,rtt=75us"
    );
}

#[test]
fn bad_settings_name_the_bad_part() {
    let cases: &[(&str, &str, &str)] = &[
        ("", "", "empty"),
        ("fast", "fast", "key=value"),
        ("rate=100mbps,rtt=1ms", "rate=100mbps", "ambiguous"),
        ("rate=100MB/s", "rate=100MB/s", "ambiguous"),
        ("rate=100,rtt=1ms", "rate=100", "no unit"),
        ("rate=100mbit,rtt=20", "rtt=20", "no unit"),
        ("rate=fast,rtt=1ms", "rate=fast", "number"),
        ("rate=1.2.3gbit", "rate=1.2.3gbit", "not a number"),
        ("rate=3furlongs", "rate=3furlongs", "unknown rate unit"),
        ("rtt=-1ms", "rtt=-1ms", "number"),
        (
            "rtt=20 fortnights",
            "rtt=20 fortnights",
            "unknown time unit",
        ),
        ("rtt=11s", "rtt=11s", "maximum"),
        ("rate=0mbit", "rate=0mbit", "outside"),
        ("rate=20tbit", "rate=20tbit", "outside"),
        ("rate=1gbit,rate=2gbit", "rate=2gbit", "twice"),
        ("rate=1gbit,loss=1%", "loss=1%", "unknown key"),
        ("rate=1gbit,burst=0", "burst=0", "outside"),
        ("rate=1gbit,burst=2gib", "burst=2gib", "unknown size unit"),
    ];
    for &(input, part, reason) in cases {
        let e = input
            .parse::<NetProfile>()
            .expect_err(&format!("'{input}' must not parse"));
        assert_eq!(e.input, input);
        assert_eq!(e.part, part, "'{input}': {e}");
        assert!(e.reason.contains(reason), "'{input}': {e}");
        assert!(e.to_string().contains(part), "{e}");
    }
}

#[test]
fn profiles_serialize_for_reports() {
    let json = serde_json::to_value(NetProfile::WAN).expect("serialize");
    assert_eq!(json["setting"], "wan (rate=400Mbit/s,rtt=40ms)");
    assert_eq!(json["rate_bit_per_s"], 400_000_000u64);
    assert_eq!(json["rtt_ms"], 40.0);
    assert_eq!(json["burst_bytes"], 100_000);
    for p in [
        NetProfile::NONE,
        NetProfile::LAN,
        NetProfile::WAN,
        profile("rate=123456789bit,rtt=0.123457ms,burst=1500"),
    ] {
        let s = serde_json::to_string(&p).expect("serialize");
        assert_eq!(serde_json::from_str::<NetProfile>(&s).expect(&s), p, "{s}");
    }
    assert_eq!(
        serde_json::to_value(NetProfile::NONE).expect("ser")["rate_bit_per_s"],
        serde_json::Value::Null
    );
    let bad = r#"{"rate_bit_per_s": 0, "rtt_ms": 1.0}"#;
    assert!(serde_json::from_str::<NetProfile>(bad).is_err());
    let bad = r#"{"rate_bit_per_s": null, "rtt_ms": -1.0}"#;
    assert!(serde_json::from_str::<NetProfile>(bad).is_err());
}

// ---------------------------------------------------------------- timing: TCP loopback
//
// Settings: OpenCheetah's WAN (400 Mbit/s, 40 ms) and LAN (3 Gbit/s, 0.3 ms),
// and emp-toolkit's LAN (its `scripts/throttle.sh`: `tbf rate 1gbit`, `netem
// delay 1msec`, i.e. 1 Gbit/s and 2 ms RTT), the "LAN-like" setting here.
//
// What the transport adds on its own: behind a delay line both parties sit
// idle between messages, and a write and a wake-up from idle cost far more
// than when warm (on this loaded 2-vCPU VM a TCP round trip from idle takes
// 30–200 µs, against 5–20 µs back to back). `check_rtt` measures that
// ([`idle_ping_pong`]) and checks the delay the emulator adds on top. The
// emulator's own lateness (the timer wake-up, a median 8–13 µs per direction
// here) is inside the 5 %. OpenCheetah's 0.3 ms leaves 15 µs of tolerance,
// too little to be robust on a loaded machine: those tests and the 3 Gbit/s
// bulk are `#[ignore]`d
// (`cargo test -p pibench-protocol --test shaper -- --ignored --nocapture`).

fn emp_lan() -> NetProfile {
    profile("rate=1gbit,rtt=2ms")
}

/// WAN (400 Mbit/s, 40 ms): 16 MiB over TCP loopback.
#[test]
fn tcp_wan_bulk_matches_rate() {
    check_rate(NetProfile::WAN, 16 << 20, tcp);
}

/// emp-toolkit's LAN (1 Gbit/s, 2 ms): 32 MiB over TCP loopback.
#[test]
fn tcp_lan_like_bulk_matches_rate() {
    check_rate(emp_lan(), 32 << 20, tcp);
}

/// WAN (40 ms RTT): 12 ping-pongs over TCP loopback.
#[test]
fn tcp_wan_ping_pong_matches_rtt() {
    check_rtt(NetProfile::WAN, 2, 12, tcp);
}

/// emp-toolkit's LAN (2 ms RTT): 100 ping-pongs over TCP loopback.
#[test]
fn tcp_lan_like_ping_pong_matches_rtt() {
    check_rtt(emp_lan(), 5, 100, tcp);
}

/// OpenCheetah's LAN (3 Gbit/s): 64 MiB over TCP loopback; on a loaded
/// 2-core machine the copies through loopback, not the shaper, can limit it.
#[test]
#[ignore = "3 Gbit/s needs an otherwise idle machine"]
fn tcp_lan_preset_bulk_matches_rate() {
    check_rate(NetProfile::LAN, 64 << 20, tcp);
}

/// OpenCheetah's LAN (0.3 ms RTT): 400 ping-pongs over TCP loopback.
#[test]
#[ignore = "5 % of 0.3 ms is 15 µs: not robust on a loaded machine"]
fn tcp_lan_preset_ping_pong_matches_rtt() {
    check_rtt(NetProfile::LAN, 20, 400, tcp);
}

// ---------------------------------------------------------------- timing: in-memory duplex

#[test]
fn duplex_bulk_matches_rate() {
    check_rate(profile("rate=200mbit,rtt=10ms"), 8 << 20, duplex_pair);
}

#[test]
fn duplex_ping_pong_matches_rtt() {
    check_rtt(profile("rate=400mbit,rtt=20ms"), 2, 10, duplex_pair);
    check_rtt(emp_lan(), 5, 100, duplex_pair);
}

#[test]
#[ignore = "5 % of 0.3 ms is 15 µs: not robust on a loaded machine"]
fn duplex_lan_preset_ping_pong_matches_rtt() {
    check_rtt(NetProfile::LAN, 20, 400, duplex_pair);
}

/// Both directions at once: each gets the full rate (the link is full duplex).
#[test]
fn both_directions_at_once_each_get_the_rate() {
    let _g = timing_lock();
    let rt = runtime();
    let p = profile("rate=100mbit,rtt=10ms");
    let total = 3usize << 20;
    let expected = expected_bulk_time(&p, total as u64);
    let mut seen = Vec::new();
    for attempt in 1..=ATTEMPTS {
        let elapsed = rt.block_on(async {
            let (a, b) = tokio::io::duplex(1 << 20);
            let t0 = Instant::now();
            let mut sides = Vec::new();
            for s in [a, b] {
                let (mut r, mut w) = ShapedStream::new(s, &p).expect("shaped").into_split();
                let send = tokio::spawn(async move {
                    let buf = vec![7u8; 1 << 20];
                    for _ in 0..total >> 20 {
                        w.write_all(&buf).await?;
                    }
                    w.shutdown().await
                });
                let recv = tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 << 10];
                    let mut got = 0usize;
                    loop {
                        match r.read(&mut buf).await? {
                            0 => return Ok::<_, std::io::Error>(got),
                            n => got += n,
                        }
                    }
                });
                sides.push((send, recv));
            }
            for (send, recv) in sides {
                send.await.expect("task").expect("send");
                assert_eq!(recv.await.expect("task").expect("recv"), total);
            }
            t0.elapsed()
        });
        let err = elapsed.as_secs_f64() / expected.as_secs_f64() - 1.0;
        println!(
            "{p}: {total} B each way in {:.2} ms, model {:.2} ms ({:+.2} %) [attempt {attempt}]",
            ms(elapsed),
            ms(expected),
            err * 100.0
        );
        seen.push(err);
        if err.abs() <= TOLERANCE {
            return;
        }
    }
    panic!("{p}: full-duplex transfer off by {seen:?} in every attempt");
}

// ---------------------------------------------------------------- behaviour

/// Random data in random write sizes arrives intact and in order.
#[tokio::test]
async fn bytes_arrive_intact_and_in_order() {
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let mut data = vec![0u8; 3 << 20];
    rng.fill_bytes(&mut data);
    let p = profile("rate=2gbit,rtt=2ms,burst=3000");
    let (a, b) = tokio::io::duplex(1 << 16);
    let mut w = ShapedWriter::new(a, &p).expect("shaped");
    let reader = tokio::spawn(async move {
        let mut b = b;
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut got = Vec::new();
        let mut buf = vec![0u8; 50_000];
        loop {
            let n = rng.gen_range(1..buf.len());
            match b.read(&mut buf[..n]).await.expect("read") {
                0 => break got,
                k => got.extend_from_slice(&buf[..k]),
            }
        }
    });
    let mut off = 0;
    while off < data.len() {
        let n = rng.gen_range(1..3 * MAX_CHUNK).min(data.len() - off);
        w.write_all(&data[off..off + n]).await.expect("write");
        off += n;
        if rng.gen_bool(0.1) {
            w.flush().await.expect("flush");
        }
    }
    w.shutdown().await.expect("shutdown delivers everything");
    assert_eq!(w.queued(), 0);
    let got = reader.await.expect("reader");
    assert_eq!(got.len(), data.len());
    assert!(got == data, "bytes reordered or corrupted");
}

/// A writer that runs ahead of the link waits once the delay line is full.
#[tokio::test]
async fn buffering_is_bounded() {
    let p = profile("rate=100mbit,rtt=10ms");
    let (a, _b_never_reads) = tokio::io::duplex(1 << 16);
    let mut w = ShapedWriter::new(a, &p).expect("shaped");
    let cap = w.capacity();
    assert!((1 << 20..=64 << 20).contains(&cap), "capacity {cap}");
    let buf = vec![1u8; 1 << 20];
    let mut accepted = 0usize;
    while let Ok(r) = tokio::time::timeout(Duration::from_millis(300), w.write(&buf)).await {
        accepted += r.expect("write");
        assert!(accepted <= 64 << 20, "unbounded: {accepted} bytes accepted");
    }
    // Queue + one pump batch (256 KiB) + the duplex buffer.
    // Each 16 KiB chunk is charged 64 bytes more than its payload.
    assert!(
        accepted >= cap / 100 * 99,
        "{accepted} bytes accepted, capacity {cap}"
    );
    assert!(
        accepted <= cap + (256 << 10) + (1 << 16),
        "{accepted} bytes accepted, capacity {cap}"
    );
}

/// One-byte writes cannot pile up chunks: each is charged its bookkeeping.
#[tokio::test]
async fn tiny_writes_are_charged_their_overhead() {
    let p = profile("rate=100mbit,rtt=10ms");
    let (a, _b_never_reads) = tokio::io::duplex(64);
    let mut w = ShapedWriter::new(a, &p).expect("shaped");
    let cap = w.capacity();
    let mut accepted = 0usize;
    while let Ok(r) = tokio::time::timeout(Duration::from_millis(200), w.write(&[9])).await {
        accepted += r.expect("write");
        assert!(
            accepted <= cap,
            "unbounded: {accepted} one-byte writes accepted"
        );
    }
    // 1 + 64 bytes charged per write; the pump holds at most one more batch.
    assert!(
        accepted <= cap / 65 + (256 << 10),
        "{accepted} one-byte writes, capacity {cap}"
    );
}

/// Bytes written before the writer is dropped are still delivered, then the
/// peer sees EOF and the pump tasks end.
#[tokio::test]
async fn dropped_channels_deliver_then_close_and_leave_no_task() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let base = metrics.num_alive_tasks();
    let (mut a, mut b) = shaper::duplex_pair(&profile("rate=100mbit,rtt=40ms")).expect("pair");
    assert_eq!(metrics.num_alive_tasks(), base + 2, "one pump per side");
    let t0 = Instant::now();
    a.send_bytes(b"last words", "bye").await.expect("send");
    a.flush().await.expect("flush");
    drop(a);
    assert_eq!(b.recv_bytes("bye").await.expect("delivered"), b"last words");
    assert!(
        t0.elapsed() >= Duration::from_millis(20),
        "arrived before RTT/2"
    );
    assert!(matches!(
        b.recv_bytes("eof").await,
        Err(NetError::Closed { .. })
    ));
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(2);
    while metrics.num_alive_tasks() > base {
        assert!(Instant::now() < deadline, "pump tasks still alive");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A dropped writer whose peer never reads gives up after the linger time.
#[tokio::test]
async fn stalled_peer_does_not_keep_the_pump_alive() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let base = metrics.num_alive_tasks();
    let (a, _b_never_reads) = tokio::io::duplex(64);
    let mut w = ShapedWriter::with_linger(a, &profile("rtt=2ms"), Duration::from_millis(300))
        .expect("shaped");
    w.write_all(&[0u8; 10_000]).await.expect("write");
    drop(w);
    let t0 = Instant::now();
    while metrics.num_alive_tasks() > base {
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "pump outlived its linger"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A transport failure reaches the writer as an error naming the emulated link.
#[tokio::test]
async fn transport_errors_reach_the_writer() {
    let (a, b) = tokio::io::duplex(1 << 10);
    drop(b);
    let mut w = ShapedWriter::new(a, &profile("rate=1gbit,rtt=1ms")).expect("shaped");
    let deadline = Instant::now() + Duration::from_secs(2);
    let err = loop {
        assert!(
            Instant::now() < deadline,
            "no error after the peer vanished"
        );
        match w.write_all(b"hello").await.and(w.flush().await) {
            Ok(()) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(e) => break e,
        }
    };
    assert!(err.to_string().contains("emulated link"), "{err}");
    assert!(w.shutdown().await.is_err());
}

#[test]
fn needs_a_runtime_and_says_so() {
    let err = ShapedWriter::new(tokio::io::sink(), &NetProfile::WAN).expect_err("no runtime");
    assert!(matches!(err, ShapeError::NoRuntime { .. }), "{err}");
    assert!(err.to_string().contains("wan"), "{err}");
}

#[tokio::test]
async fn none_profile_gives_an_unshaped_channel() {
    let (mut a, mut b) = shaper::duplex_pair(&NetProfile::NONE).expect("pair");
    let t0 = Instant::now();
    for i in 0..100u64 {
        a.send_bytes(&i.to_le_bytes(), "x").await.expect("send");
        a.flush().await.expect("flush");
        assert_eq!(b.recv_bytes("x").await.expect("recv"), i.to_le_bytes());
    }
    assert!(t0.elapsed() < Duration::from_secs(1));
}
