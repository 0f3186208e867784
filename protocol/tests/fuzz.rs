//! Hostile bytes, a small count per decoder (seconds): every decoder a
//! peer or a file can reach gets random bytes and mutated valid encodings
//! (see `common/fuzz_targets.rs`); nothing may panic, allocate beyond its
//! bound or take long. The long run (≥ 10^6 inputs per decoder) is the
//! benchmark `cargo bench -p pibench-protocol --bench fuzz_decoders`.
//!
//! Also here: the checks that need a specific input rather than a random
//! one: a frame header announcing far more than arrives, a zstd
//! decompression bomb inside a SEAL ciphertext, every prefix of a store
//! file.

#[path = "common/fuzz_targets.rs"]
mod fuzz_targets;

use std::time::{Duration, Instant};

use fuzz_targets::*;
use pibench_protocol::he::cipher::load_ciphertext;
use pibench_protocol::he::ServerKeys;
use pibench_protocol::inference::{Role, TruncMode};
use pibench_protocol::net::{Channel, NetError};

#[global_allocator]
static ALLOC: Probe = Probe;

/// Longest any single input may take (a loaded 2-core machine; real inputs take microseconds).
const SLOW: Duration = Duration::from_secs(10);

fn fuzz(names: &[&str], cases: u32) {
    let store = names.iter().any(|n| n.starts_with("store"));
    for t in targets(store)
        .into_iter()
        .filter(|t| names.contains(&t.name))
    {
        let r = run(&t, cases, 7, SLOW);
        eprintln!("{}: {r}", t.name);
    }
}

#[test]
fn fuzz_frames_through_a_channel() {
    fuzz(&["frame", "frame-256MiB-limit"], 400);
}

#[test]
fn fuzz_envelope_session_and_online_messages() {
    fuzz(&["envelope", "session", "online"], 600);
}

#[test]
fn fuzz_ot_messages() {
    fuzz(&["ot"], 600);
    fuzz(&["ot-base"], 40);
}

#[test]
fn fuzz_gc_tables_and_labels() {
    fuzz(&["gc"], 400);
}

#[test]
fn fuzz_he_messages_ciphertexts_and_keys() {
    fuzz(&["he-message", "he-ciphertext", "he-public-key"], 150);
}

#[test]
fn fuzz_public_model_and_model_files() {
    fuzz(&["public-model", "model-file"], 300);
}

#[test]
fn fuzz_store_node_files() {
    fuzz(&["store-server", "store-client"], 150);
}

/// A header announcing 200 MiB: the receiver's buffer grows only as bytes
/// arrive (one 1 MiB read chunk at a time), a header above the limit is
/// refused before any payload, a stalled frame times out.
#[test]
fn frame_buffers_grow_only_as_bytes_arrive() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let announced = 200u32 << 20;
    let mut bytes = announced.to_le_bytes().to_vec();
    bytes.extend(std::iter::repeat_n(7u8, 1000));
    let (mut w, r) = tokio::io::duplex(4096);
    rt.block_on(tokio::io::AsyncWriteExt::write_all(&mut w, &bytes))
        .unwrap();
    drop(w);
    let mut ch = Channel::new(r, tokio::io::sink());
    let (r, a) = measure(|| rt.block_on(ch.recv_bytes("blob")));
    let e = r.unwrap_err().to_string();
    assert!(e.contains("frame cut after 1000 of 209715200 bytes"), "{e}");
    assert!(
        a.largest <= (1 << 20) + 4096 && a.peak_live <= (2 << 20),
        "{a:?}"
    );

    // Above the limit: refused from the header alone.
    let (mut w, r) = tokio::io::duplex(64);
    rt.block_on(tokio::io::AsyncWriteExt::write_all(
        &mut w,
        &u32::MAX.to_le_bytes(),
    ))
    .unwrap();
    // The writer stays open: nothing more will come.
    let mut ch = Channel::new(r, tokio::io::sink()).with_timeout(Duration::from_secs(60));
    let (r, a) = measure(|| {
        let t = Instant::now();
        let r = rt.block_on(ch.recv_bytes("blob"));
        (r, t.elapsed())
    });
    drop(w);
    assert!(matches!(r.0, Err(NetError::FrameTooLarge { len, .. }) if len == u64::from(u32::MAX)));
    assert!(r.1 < Duration::from_secs(30), "waited {:?}", r.1);
    assert!(a.largest < 4096, "{a:?}");

    // A stalled frame: the timeout, with what had arrived.
    let r = rt.block_on(async {
        let (mut w, r) = tokio::io::duplex(4096);
        let mut head = 100u32.to_le_bytes().to_vec();
        head.extend([1u8; 10]);
        tokio::io::AsyncWriteExt::write_all(&mut w, &head)
            .await
            .unwrap();
        let mut ch = Channel::new(r, tokio::io::sink()).with_timeout(Duration::from_millis(300));
        let t = Instant::now();
        let r = ch.recv_bytes("blob").await;
        drop(w);
        (r, t.elapsed())
    });
    let e = r.0.unwrap_err().to_string();
    assert!(
        e.contains("(timeout)") && e.contains("10 of 100 bytes arrived"),
        "{e}"
    );
    assert!(r.1 >= Duration::from_millis(300) && r.1 < Duration::from_secs(30));
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A 64 KiB zstd payload that inflates to 2 GiB inside a SEAL header: refused
/// before SEAL inflates it (SEAL's buffer would grow to the full size).
#[test]
fn a_zstd_bomb_in_a_ciphertext_is_refused_before_seal_sees_it() {
    let ctx = he_context();
    let bomb = zstd_bomb(16 << 10);
    // It is a real bomb: the first 8 MiB inflate to zeros.
    let mut dec = zstd::stream::read::Decoder::new(&bomb[..]).unwrap();
    let mut head = vec![1u8; 8 << 20];
    std::io::Read::read_exact(&mut dec, &mut head).unwrap();
    assert!(head.iter().all(|&b| b == 0));
    let ct = seal_zstd(&bomb);
    assert!(ct.len() < ctx.max_ciphertext_bytes(), "{} bytes", ct.len());
    let before = peak_rss_kib();
    let t = Instant::now();
    let e = load_ciphertext(&ctx, &ct, "conv1", 3)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("conv1") && e.contains("decompresses to more than"),
        "{e}"
    );
    let e = match ServerKeys::from_public_key_bytes(&ctx, &ct) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a bomb was taken for a public key"),
    };
    assert!(e.contains("decompresses to more than"), "{e}");
    assert!(t.elapsed() < SLOW, "took {:?}", t.elapsed());
    let grew = peak_rss_kib().saturating_sub(before);
    assert!(grew < 512 << 10, "peak RSS grew by {grew} KiB");
}

/// A half-written store file (any strict prefix), a file with trailing
/// bytes, another node's file and a missing file are all refused, with the
/// file named.
#[test]
fn every_prefix_of_a_store_file_is_refused() {
    let net = tiny_network();
    let settings = store_settings(TruncMode::Exact);
    let files = store_files(&net, &settings);
    for role in [Role::Server, Role::Client] {
        let planted = PlantedStore::new(&net, &settings, role);
        let mine: Vec<&(Role, usize, Vec<u8>)> = files.iter().filter(|f| f.0 == role).collect();
        assert!(mine.len() >= 2, "{role:?}: {} files", mine.len());
        for (_, node, bytes) in &mine {
            assert_eq!(planted.read(role, *node, bytes), Verdict::Accepted);
            let n = bytes.len();
            let mut cuts: Vec<usize> = vec![0, 1, 4, 48, 49, 50, n - 5, n - 4, n - 1];
            cuts.extend((1..64).map(|k| k * n / 64));
            for cut in cuts {
                assert_eq!(
                    planted.read(role, *node, &bytes[..cut]),
                    Verdict::Refused,
                    "{role:?} node {node}: a prefix of {cut} of {n} bytes was taken"
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(planted.read(role, *node, &longer), Verdict::Refused);
        }
        // Another node's file under this node's name.
        let (a, b) = (mine[0], mine[1]);
        assert_eq!(planted.read(role, a.1, &b.2), Verdict::Refused);
        // The error names the file and the offset.
        std::fs::write(planted.path(a.1), &a.2[..a.2.len() / 2]).unwrap();
        let e = match role {
            Role::Server => planted
                .store
                .read_server(&planted.plan, 0, a.1)
                .map(|_| ())
                .unwrap_err(),
            Role::Client => planted
                .store
                .read_client(&planted.plan, 0, a.1)
                .map(|_| ())
                .unwrap_err(),
        }
        .to_string();
        let name = planted.path(a.1).display().to_string();
        assert!(e.contains(&name) && e.contains("byte offset"), "{e}");
        // A missing file (offline phase cut short).
        std::fs::remove_file(planted.path(a.1)).unwrap();
        let e = planted
            .store
            .read_client(&planted.plan, 0, a.1)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
    }
}
