//! Max pooling in the models crate (issue #15): the op, its windows, both
//! references and the comparison count.

use pibench_models::arch::ArchSpec;
use pibench_models::count::{count, Convention};
use pibench_models::fixed::FixedPoint;
use pibench_models::graph::{FeatureShape, GraphBuilder, Init, Network, SiteRole};
use pibench_models::reference::{forward_fixed, forward_float, kernels};

/// conv(3→4) → BN → ReLU site → 2×2 max pool → conv(4→4) → ReLU → 3×3/2 max
/// pool → flatten → linear(·→5), on an 8×8 input.
fn net() -> Network {
    let mut g = GraphBuilder::new(FeatureShape::new(3, 8, 8), Init::Seeded(4));
    let c1 = g.conv("conv1", 0, 4, 3, 1, 1, 1, Some("bn1"));
    let r1 = g.site("relu1", c1, Some(1), None, SiteRole::Body);
    let p1 = g.maxpool("pool1", r1, 2, 2);
    let c2 = g.conv("conv2", p1, 4, 3, 1, 1, 1, Some("bn2"));
    let r2 = g.site("relu2", c2, Some(2), None, SiteRole::Body);
    let p2 = g.maxpool("pool2", r2, 3, 1);
    let f = g.flatten("flatten", p2);
    g.linear("linear", f, 5);
    g.finish("maxpool-test", ArchSpec::resnet18(), 5).unwrap()
}

#[test]
fn windows_cover_each_output_in_row_major_order() {
    let shape = FeatureShape::new(2, 4, 4);
    let w = kernels::pool_windows(shape, 2, 2);
    assert_eq!(w.len(), 2 * 2 * 2 * 4);
    assert_eq!(&w[..4], &[0, 1, 4, 5]);
    assert_eq!(&w[4..8], &[2, 3, 6, 7]);
    assert_eq!(&w[16..20], &[16, 17, 20, 21]);
    let x: Vec<i32> = (0..32).map(|i| (i * 7) % 11 - 5).collect();
    let m = kernels::max_pool_by(&x, shape, 2, 2, |v| v);
    for (o, win) in m.iter().zip(w.chunks(4)) {
        assert_eq!(*o, win.iter().map(|&i| x[i as usize]).max().unwrap());
    }
    // Overlapping windows (3×3, stride 1).
    let w = kernels::pool_windows(FeatureShape::new(1, 4, 4), 3, 1);
    assert_eq!(w.len(), 4 * 9);
    assert_eq!(&w[9..18], &[1, 2, 3, 5, 6, 7, 9, 10, 11]);
}

#[test]
fn shapes_and_comparisons_are_counted() {
    let n = net();
    let pool1 = n.nodes.iter().find(|x| x.name == "pool1").unwrap();
    assert_eq!(pool1.shape, FeatureShape::new(4, 4, 4));
    let pool2 = n.nodes.iter().find(|x| x.name == "pool2").unwrap();
    assert_eq!(pool2.shape, FeatureShape::new(4, 2, 2));
    let c = count(&n, Convention::default());
    // 64 outputs × 3 + 16 outputs × 8.
    assert_eq!(c.max_pool_comparisons, 64 * 3 + 16 * 8);
    assert_eq!(c.relus, 4 * 64 + 4 * 16);
}

#[test]
fn float_and_fixed_references_pool_the_same_values() {
    let n = net();
    let fp = FixedPoint::default();
    for seed in 0..4u32 {
        let x: Vec<f32> = (0..n.input.len())
            .map(|i| ((i as u32).wrapping_mul(2654435761) ^ seed.wrapping_mul(97)) % 1000)
            .map(|v| v as f32 / 250.0 - 2.0)
            .collect();
        let f = forward_float(&n, &x).unwrap();
        let q = forward_fixed(&n, fp, &x).unwrap().logits;
        let scale = f.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for (a, b) in f.iter().zip(&q) {
            assert!((a - b).abs() <= 0.005 * scale, "float {f:?} fixed {q:?}");
        }
    }
    // The float pool is the max of its window, checked on the trace.
    let x: Vec<f32> = (0..n.input.len())
        .map(|i| (i % 13) as f32 / 6.5 - 1.0)
        .collect();
    let mut ev = pibench_models::reference::FloatEvaluator::default();
    let trace = pibench_models::reference::forward_trace(&n, &mut ev, &x).unwrap();
    let (r1, p1) = (2, 3);
    assert_eq!(n.nodes[p1].name, "pool1");
    let r = &trace[r1];
    let p = &trace[p1];
    for (o, win) in p
        .iter()
        .zip(kernels::pool_windows(n.nodes[r1].shape, 2, 2).chunks(4))
    {
        let m = win.iter().map(|&i| r[i as usize]).fold(f64::MIN, f64::max);
        assert_eq!(*o, m);
    }
}

/// The fixed-point reference's pool is an exact selection: every pooled
/// field element is one of its window's inputs (no rounding).
#[test]
fn fixed_pool_selects_window_elements() {
    use pibench_models::reference::{EncodedNetwork, FixedEvaluator};
    let n = net();
    let enc = EncodedNetwork::new(&n, FixedPoint::default()).unwrap();
    let x: Vec<f32> = (0..n.input.len())
        .map(|i| (i % 7) as f32 / 3.5 - 1.0)
        .collect();
    let mut ev = FixedEvaluator::new(&enc);
    let trace = pibench_models::reference::forward_trace(&n, &mut ev, &x).unwrap();
    let (r1, p1) = (2, 3);
    assert_eq!(trace[p1].frac_bits, trace[r1].frac_bits);
    let r = &trace[r1].data;
    for (o, win) in trace[p1]
        .data
        .iter()
        .zip(kernels::pool_windows(n.nodes[r1].shape, 2, 2).chunks(4))
    {
        let best = win
            .iter()
            .map(|&i| r[i as usize])
            .max_by_key(|&v| pibench_models::fixed::to_i64(v))
            .unwrap();
        assert_eq!(*o, best);
    }
}
