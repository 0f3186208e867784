//! End-to-end private inference, both parties in one process: a small CNN
//! with residual connections and every kind of site element (ReLU, identity,
//! per-channel polynomial, partially masked sites), in both truncation
//! modes, over the in-memory duplex and over TCP.
//!
//! Every node's reconstructed output (server share + client share) is
//! checked against the fixed-point reference op applied to the
//! reconstructed inputs: bit for bit for linear ops, adds and pools, and
//! within the documented last-bit error for truncations (`e ∈ {−1,0,1,2}`
//! in a garbled circuit, `{−1,0}` locally). The logits are compared with the
//! pure fixed-point reference.

use std::time::Duration;

use pibench_models::arch::ArchSpec;
use pibench_models::fixed::{self, FixedPoint};
use pibench_models::graph::{FeatureShape, Init, Network, Op, PolyCoeffs};
use pibench_models::reference::{
    self, lift, poly_pre_trunc, EncodedNetwork, EncodedOp, Evaluator, FixedEvaluator, FixedValue,
    NodeCtx,
};
use pibench_protocol::he::HeParams;
use pibench_protocol::inference::{
    run_client, run_server, ClientInput, InferenceError, InputSource, ServerModel, Settings,
    TruncMode,
};
use pibench_protocol::net::{duplex_pair, tcp_accept, tcp_connect, Channel};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;

fn test_settings(trunc: TruncMode) -> Settings {
    Settings {
        trunc,
        he_linear: HeParams::insecure_test_linear(),
        he_poly: HeParams::insecure_test_triples(),
        threads: 2,
        timeout: Duration::from_secs(60),
        trace: true,
        ..Settings::default()
    }
}

/// A residual CNN on 3×8×8 with partial masks, identity sites and one
/// polynomial site.
fn mixed_network(seed: u64) -> Network {
    mixed(
        ArchSpec::Resnet {
            name: "mixed-resnet".into(),
            stem: 4,
            blocks: vec![1, 1],
            widths: vec![4, 8],
        },
        seed,
    )
}

/// `spec` on 3×8×8 with the sites masked as in [`mixed_network`].
fn mixed(spec: ArchSpec, seed: u64) -> Network {
    let mut net = spec
        .build(FeatureShape::new(3, 8, 8), 10, Init::Seeded(seed))
        .unwrap();
    let mut rng = ChaCha12Rng::seed_from_u64(seed + 100);
    let n_sites = net.sites().count();
    for (k, site) in net.sites_mut().enumerate() {
        match k % 4 {
            // Partially masked: about half ReLU, half identity.
            0 => site.mask.iter_mut().for_each(|m| *m = rng.gen_range(0..2)),
            // All ReLU.
            1 => {}
            // Partially masked with a polynomial replacement.
            2 => {
                site.mask.iter_mut().for_each(|m| *m = rng.gen_range(0..2));
                let c = site.shape.c;
                site.poly = Some(PolyCoeffs {
                    a2: (0..c).map(|_| rng.gen_range(0.05..0.3)).collect(),
                    a1: (0..c).map(|_| rng.gen_range(0.3..0.7)).collect(),
                    a0: (0..c).map(|_| rng.gen_range(-0.2..0.2)).collect(),
                });
            }
            // All identity (a culled site).
            _ => site.fill_mask(0),
        }
        let _ = n_sites;
    }
    net
}

fn input(net: &Network, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha12Rng::seed_from_u64(seed);
    (0..net.input.len())
        .map(|_| rng.gen_range(-2.0..2.0))
        .collect()
}

async fn run_pair(
    net: &Network,
    x: Vec<f32>,
    server_settings: Settings,
    client_settings: Settings,
    tcp: bool,
) -> (
    Result<pibench_protocol::inference::ServerOutcome, InferenceError>,
    Result<pibench_protocol::inference::ClientOutcome, InferenceError>,
) {
    let model = ServerModel::new(net.clone(), FixedPoint::default()).unwrap();
    let (mut cch, mut sch): (Channel, Channel) = if tcp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move { tcp_accept(&listener).await.unwrap() });
        let c = tcp_connect(addr.to_string()).await.unwrap();
        (c, accept.await.unwrap())
    } else {
        duplex_pair()
    };
    let server = tokio::spawn(async move {
        let mut rng = ChaCha12Rng::seed_from_u64(1);
        run_server(&mut sch, &model, &server_settings, &mut rng).await
    });
    let mut rng = ChaCha12Rng::seed_from_u64(2);
    let client = run_client(
        &mut cch,
        &ClientInput {
            inputs: InputSource::Values(vec![x]),
            expected: None,
        },
        &client_settings,
        &mut rng,
    )
    .await;
    drop(cch);
    (server.await.unwrap(), client)
}

/// Every node's value: the server's trace share plus the client's.
fn reconstructed(
    server: &pibench_protocol::inference::ServerOutcome,
    client: &pibench_protocol::inference::ClientOutcome,
) -> Vec<Vec<u64>> {
    server
        .trace
        .iter()
        .zip(&client.trace)
        .map(|(s, c)| s.iter().zip(c).map(|(&a, &b)| fixed::add(a, b)).collect())
        .collect()
}

/// Checks every node of the reconstructed trace against the reference.
fn check_trace(
    net: &Network,
    enc: &EncodedNetwork,
    x: &[f32],
    values: &[Vec<u64>],
    trunc: TruncMode,
) {
    assert_eq!(values.len(), net.nodes.len());
    let mut ev = FixedEvaluator::new(enc);
    let fa = enc.fixed.act_frac_bits;
    // Both truncations round stochastically (unbiased): locally −1, 0 or +1
    // against round-to-nearest, in a garbled circuit −1..=3 (its carry, and
    // the rare wrap of the high parts' sum).
    let range = |exact: bool| if exact { -1..=3 } else { -1..=1 };
    let exact = trunc == TruncMode::Exact;
    // A site whose only consumer is a max pool is computed inside the pool's
    // garbled circuits; its trace value is its lifted input.
    let fused = |i: usize| {
        let users: Vec<usize> = (0..net.nodes.len())
            .filter(|&j| net.nodes[j].inputs.contains(&i))
            .collect();
        matches!(net.nodes[i].op, Op::Site(_))
            && matches!(users[..], [j] if matches!(net.nodes[j].op, Op::MaxPool { .. }))
    };
    for (i, node) in net.nodes.iter().enumerate() {
        if fused(i) {
            continue;
        }
        let in_shape = node
            .inputs
            .first()
            .map_or(net.input, |&j| net.nodes[j].shape);
        let ctx = NodeCtx {
            index: i,
            name: &node.name,
            in_shape,
            out_shape: node.shape,
        };
        let arg = |k: usize| FixedValue {
            data: values[node.inputs[k]].clone(),
            frac_bits: enc.scale(node.inputs[k]),
        };
        let got = &values[i];
        let want = match &node.op {
            Op::Input => ev.input(x, net.input).unwrap(),
            Op::Conv2d(c) => ev.conv(&ctx, c, &arg(0)).unwrap(),
            Op::Linear(l) => ev.linear(&ctx, l, &arg(0)).unwrap(),
            Op::MaxPool { kernel, stride } if fused(node.inputs[0]) => {
                // max over the window of the site's elements, each truncated
                // in the circuit (−1..=3 against round-to-nearest), ReLU'd
                // when the window keeps a ReLU: max(relu(y₁), y₂) = max(0, y₁, y₂).
                let s = node.inputs[0];
                let Op::Site(site) = &net.nodes[s].op else {
                    unreachable!()
                };
                let Some(Some(EncodedOp::Site {
                    lift: up, trunc: f, ..
                })) = enc.ops.get(s)
                else {
                    panic!("no site encoding")
                };
                let y = &values[net.nodes[s].inputs[0]];
                let windows = reference::kernels::pool_windows(site.shape, *kernel, *stride);
                let k2 = kernel * kernel;
                let (mut n_relu, mut n_max) = (0, 0);
                for (w, elems) in windows.chunks(k2).enumerate() {
                    let best = elems
                        .iter()
                        .map(|&e| {
                            fixed::to_i64(fixed::truncate_round(lift(y[e as usize], *up), *f))
                        })
                        .max()
                        .unwrap();
                    let relu = elems.iter().any(|&e| site.mask[e as usize] == 1);
                    if relu {
                        n_relu += 1;
                    } else {
                        n_max += 1;
                    }
                    let g = fixed::to_i64(got[w]);
                    assert!(
                        range(true).any(|e| {
                            let m = best + e;
                            (if relu { m.max(0) } else { m }) == g
                        }),
                        "{} window {w}: max of {best} (±e, relu {relu}) gave {g}",
                        node.name
                    );
                }
                eprintln!(
                    "{}: {n_relu} MaxRelu windows, {n_max} Max windows",
                    node.name
                );
                continue;
            }
            Op::MaxPool { kernel, stride } => ev.maxpool(&ctx, *kernel, *stride, &arg(0)).unwrap(),
            Op::BatchNorm(b) => match enc.ops.get(i) {
                Some(Some(EncodedOp::BatchNorm {
                    scale,
                    shift,
                    trunc,
                    ..
                })) if *trunc > 0 => {
                    // The input's truncation (±e), then the exact scale and shift.
                    let x = &values[node.inputs[0]];
                    let plane = node.shape.plane();
                    for (k, &xk) in x.iter().enumerate() {
                        let t = fixed::to_i64(fixed::truncate_round(xk, *trunc));
                        let ok = range(exact).any(|e| {
                            let v = fixed::add(
                                fixed::mul(fixed::from_i64(t + e), scale[k / plane]),
                                shift[k / plane],
                            );
                            v == got[k]
                        });
                        assert!(ok, "{} element {k}: batch norm of {t} (±e)", node.name);
                    }
                    continue;
                }
                _ => ev.batchnorm(&ctx, b, &arg(0)).unwrap(),
            },
            Op::Add => ev.add(&ctx, &arg(0), &arg(1)).unwrap(),
            Op::Flatten => arg(0),
            Op::Slice { start, len } => ev.slice(&ctx, *start, *len, &arg(0)).unwrap(),
            Op::Concat => {
                let parts: Vec<FixedValue> = (0..node.inputs.len()).map(arg).collect();
                let refs: Vec<&FixedValue> = parts.iter().collect();
                ev.concat(&ctx, &refs).unwrap()
            }
            Op::AvgPool { kernel, stride } => ev.avgpool(&ctx, *kernel, *stride, &arg(0)).unwrap(),
            Op::GlobalAvgPool => ev.global_avgpool(&ctx, &arg(0)).unwrap(),
            Op::Site(site) => {
                let Some(Some(EncodedOp::Site {
                    lift: up,
                    trunc: f,
                    poly,
                })) = enc.ops.get(i)
                else {
                    panic!("no site encoding")
                };
                let y = &values[node.inputs[0]];
                let plane = site.shape.plane();
                for (k, (&yk, &m)) in y.iter().zip(&site.mask).enumerate() {
                    let t = fixed::to_i64(fixed::truncate_round(lift(yk, *up), *f));
                    let g = fixed::to_i64(got[k]);
                    if m == 1 {
                        assert!(
                            range(true).any(|e| (t + e).max(0) == g),
                            "{} element {k}: ReLU of {t} (±e) gave {g}",
                            node.name
                        );
                    } else if let Some(p) = poly {
                        // The input truncation, then the polynomial's rounding.
                        let ok = range(exact).any(|e1| {
                            let (v, _) = poly_pre_trunc(p, k / plane, fixed::from_i64(t + e1));
                            let r = fixed::to_i64(fixed::truncate_round(v, p.trunc));
                            // Exact mode truncates in up to two garbled steps.
                            let e2: Vec<i64> = if exact {
                                (-2..=4).collect()
                            } else {
                                vec![-1, 0, 1]
                            };
                            e2.iter().any(|e| r + e == g)
                        });
                        assert!(ok, "{} element {k}: polynomial of {t} gave {g}", node.name);
                    } else {
                        assert!(
                            range(exact).any(|e| t + e == g),
                            "{} element {k}: identity of {t} gave {g}",
                            node.name
                        );
                    }
                }
                let _ = fa;
                continue;
            }
        };
        assert_eq!(
            &want.data, got,
            "node {i} ({}) differs from the reference",
            node.name
        );
    }
}

async fn end_to_end(trunc: TruncMode, tcp: bool) {
    end_to_end_of(mixed_network(3), trunc, tcp).await;
}

async fn end_to_end_of(net: Network, trunc: TruncMode, tcp: bool) {
    let x = input(&net, 4);
    let (server, client) = run_pair(
        &net,
        x.clone(),
        test_settings(trunc),
        test_settings(trunc),
        tcp,
    )
    .await;
    let server = server.expect("server");
    let client = client.expect("client");
    let enc = EncodedNetwork::new(&net, FixedPoint::default()).unwrap();
    let values = reconstructed(&server, &client);
    check_trace(&net, &enc, &x, &values, trunc);
    // Logits: the reconstructed last node, and the pure reference.
    assert_eq!(&client.raw[0], values.last().unwrap());
    let want = reference::forward_fixed_encoded(&net, &enc, &x).unwrap();
    let max = want.logits.iter().fold(0f64, |m, v| m.max(v.abs()));
    let err = want
        .logits
        .iter()
        .zip(&client.logits[0])
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    eprintln!("{trunc:?} tcp={tcp}: max |logit| {max:.3}, max |Δlogit| vs reference {err:.5}");
    assert!(err <= 0.02 * (1.0 + max), "logits off by {err}");
    // Traffic: the client sent the input and one reply per site with ReLUs.
    let r = &client.reports[0];
    assert!(r.traffic("online/input").sent >= 8 * net.input.len() as u64);
    assert!(r.traffic("offline/he").bytes() > 0);
    assert!(r.traffic("online/gc").received > 0);
    let s = &server.reports[0];
    assert_eq!(
        s.traffic("online/reply").received,
        r.traffic("online/reply").sent
    );
    assert_eq!(s.traffic("offline").bytes(), r.traffic("offline").bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_truncation_over_duplex() {
    end_to_end(TruncMode::Local, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_truncation_over_duplex() {
    end_to_end(TruncMode::Exact, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_truncation_over_tcp() {
    end_to_end(TruncMode::Local, true).await;
}

/// Bottleneck blocks (ResNet-50's 1×1–3×3–1×1 with projection shortcuts),
/// mixed sites, both truncation modes: every node equals the reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bottleneck_network_matches_the_reference() {
    let spec = |seed| {
        mixed(
            ArchSpec::Bottleneck {
                name: "mixed-bottleneck".into(),
                stem: 4,
                blocks: vec![2, 1],
                widths: vec![2, 4],
            },
            seed,
        )
    };
    end_to_end_of(spec(6), TruncMode::Local, false).await;
    end_to_end_of(spec(7), TruncMode::Exact, false).await;
}

/// Pre-activation WRN blocks: standalone batch norms that truncate their
/// input (locally, or in a garbled circuit before their HE layer), mixed
/// sites, both truncation modes: every node equals the reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preactivation_network_matches_the_reference() {
    let spec = |seed| {
        mixed(
            ArchSpec::Wrn {
                name: "mixed-wrn".into(),
                depth: 10,
                stem: 4,
                widths: vec![4, 4, 8],
            },
            seed,
        )
    };
    let net = spec(8);
    let enc = EncodedNetwork::new(&net, FixedPoint::default()).unwrap();
    let truncating = enc
        .ops
        .iter()
        .filter(|o| matches!(o, Some(EncodedOp::BatchNorm { trunc, .. }) if *trunc > 0))
        .count();
    assert!(
        truncating > 0,
        "the test net must have truncating batch norms"
    );
    end_to_end_of(net, TruncMode::Local, false).await;
    end_to_end_of(spec(9), TruncMode::Exact, false).await;
}

/// A small VGG with batch norm and max pooling (issue #15): sites fused into
/// their max pools as garbled `MaxRelu` / `Max` windows (all-ReLU,
/// partially masked and all-identity sites before the pools, one site that
/// feeds a convolution), both truncation modes, every node checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vgg_with_max_pools_matches_the_reference() {
    let spec = |seed| {
        let mut net = mixed(
            ArchSpec::Vgg {
                name: "mixed-vgg".into(),
                convs: vec![2, 1, 1],
                widths: vec![4, 8, 8],
                pool: pibench_models::arch::VggPool::Max,
            },
            seed,
        );
        // The garbled max takes ReLU and identity elements: no polynomials.
        net.sites_mut().for_each(|s| s.poly = None);
        net
    };
    let net = spec(10);
    assert_eq!(
        net.nodes
            .iter()
            .filter(|n| matches!(n.op, Op::MaxPool { .. }))
            .count(),
        3
    );
    end_to_end_of(net, TruncMode::Local, false).await;
    end_to_end_of(spec(11), TruncMode::Exact, true).await;
    // The pools' garbled windows through the on-disk store.
    let net = spec(12);
    let x = input(&net, 4);
    let dir = tempfile::tempdir().unwrap();
    let mut s = test_settings(TruncMode::Local);
    s.store = Some(dir.path().to_path_buf());
    let (server, client) = run_pair(&net, x.clone(), s.clone(), s, false).await;
    let (server, client) = (server.expect("server"), client.expect("client"));
    let values = reconstructed(&server, &client);
    let enc = EncodedNetwork::new(&net, FixedPoint::default()).unwrap();
    check_trace(&net, &enc, &x, &values, TruncMode::Local);
    let pools_read = client.reports[0]
        .nodes
        .iter()
        .filter(|n| n.kind == "maxpool" && n.store_read_s > 0.0)
        .count();
    assert_eq!(pools_read, 3, "every pool's windows come from the store");
}

/// DeepReShape's ReLU-reuse blocks (issue #15): channel slices, a Res2Net
/// skip, concatenation of groups at different scales, mixed sites; both
/// truncation modes, every node checked (slices and concats bit for bit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relu_reuse_network_matches_the_reference() {
    let spec = ArchSpec::parse("hrn-2x5x3x-m8-re4s234").unwrap();
    // Random weights with batch norms set from data-free batch statistics
    // (as `pibench run` does without a model file), so activations stay in
    // range through the many identity sites.
    // The architecture's own masks (ReLU groups, identity truncation
    // sites), every other ReLU site partially masked.
    let net_of = |seed| {
        let mut net = spec
            .build(FeatureShape::new(3, 8, 8), 10, Init::Seeded(seed))
            .unwrap();
        let mut rng = ChaCha12Rng::seed_from_u64(seed + 100);
        for site in net.sites_mut().filter(|s| s.relu_count() > 0).step_by(2) {
            site.mask.iter_mut().for_each(|m| *m = rng.gen_range(0..2));
        }
        reference::calibrate_random_batchnorm(&mut net, seed).unwrap();
        net
    };
    let net = net_of(13);
    for op in ["slice", "concat"] {
        assert!(
            net.nodes.iter().any(|n| n.op.kind() == op),
            "the test net must have a {op}"
        );
    }
    end_to_end_of(net, TruncMode::Local, false).await;
    end_to_end_of(net_of(14), TruncMode::Exact, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_mismatch_names_the_field_on_both_sides() {
    let net = mixed_network(5);
    let x = input(&net, 1);
    let (server, client) = run_pair(
        &net,
        x,
        test_settings(TruncMode::Local),
        test_settings(TruncMode::Exact),
        false,
    )
    .await;
    let s = server.unwrap_err().to_string();
    let c = client.unwrap_err().to_string();
    assert!(s.contains("truncation"), "server: {s}");
    assert!(c.contains("truncation"), "client: {c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_input_shape_is_refused() {
    let net = mixed_network(5);
    let (server, client) = run_pair(
        &net,
        vec![0.5; 7],
        test_settings(TruncMode::Local),
        test_settings(TruncMode::Local),
        false,
    )
    .await;
    let c = client.unwrap_err().to_string();
    assert!(c.contains("input 0 has 7 values"), "client: {c}");
    let s = server.unwrap_err().to_string();
    assert!(s.contains("input 0 has 7 values"), "server: {s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_store_streams_per_node_and_leaves_no_files() {
    let net = mixed_network(3);
    let x = input(&net, 4);
    let dir = tempfile::tempdir().unwrap();
    let mut s = test_settings(TruncMode::Exact);
    s.store = Some(dir.path().to_path_buf());
    let (server, client) = run_pair(&net, x.clone(), s.clone(), s.clone(), false).await;
    let (server, client) = (server.expect("server"), client.expect("client"));
    let enc = EncodedNetwork::new(&net, FixedPoint::default()).unwrap();
    let values = reconstructed(&server, &client);
    check_trace(&net, &enc, &x, &values, TruncMode::Exact);
    // Every node with stored material was read back (timed), the others not.
    for r in [&client.reports[0], &server.reports[0]] {
        let read = r.nodes.iter().filter(|n| n.store_read_s > 0.0).count();
        assert!(read > 0, "no store reads timed");
        assert!(r.nodes.iter().all(|n| n.store_wait_s >= 0.0));
        let sites = r.nodes.iter().filter(|n| n.kind == "site").count();
        assert!(read >= sites, "{read} nodes read back, {sites} sites");
    }
    // Only the manifest is left.
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["pibench-store.json".to_string()]);
    // The folder belongs to this model: another model is refused on both sides.
    let other = mixed_network(9);
    let (server, client) = run_pair(&other, input(&other, 1), s.clone(), s, false).await;
    let e = server.unwrap_err().to_string();
    assert!(e.contains("belongs to model"), "{e}");
    assert!(client.is_err());
}
