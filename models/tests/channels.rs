//! Channel slices and concatenations (issue #15 item 4): the ops, both
//! references and the scale plan.

use pibench_models::arch::ArchSpec;
use pibench_models::calibrate::{PlanOp, ScalePlan};
use pibench_models::count::{count, Convention};
use pibench_models::fixed::{self, FixedPoint};
use pibench_models::graph::{FeatureShape, GraphBuilder, Init, Network, SiteRole};
use pibench_models::reference::{
    forward_fixed, forward_float, forward_trace, random_input, EncodedNetwork, FixedEvaluator,
    FloatEvaluator,
};
use pibench_models::ModelError;

/// input 3×8×8 → conv(3→6)+BN = `c` (scale fa + f) → site `r` (fa);
/// `a` = c[1..4] (conv scale), `b` = r[4..6] (fa), `x` = input[0..1] (fa);
/// concat(a, b, x) = 6 channels at three different input scales → site
/// (truncates from the concat's scale) → conv(6→4) → site → flatten →
/// linear(·→5).
fn mixed_scales() -> Network {
    let mut g = GraphBuilder::new(FeatureShape::new(3, 8, 8), Init::Seeded(11));
    let c = g.conv("conv1", 0, 6, 3, 1, 1, 1, Some("bn1"));
    let r = g.site("relu1", c, Some(1), None, SiteRole::Body);
    let a = g.slice("a", c, 1, 3);
    let b = g.slice("b", r, 4, 2);
    let x = g.slice("x", 0, 0, 1);
    let cat = g.concat("cat", &[a, b, x]);
    let rc = g.site("relu_cat", cat, Some(1), None, SiteRole::Body);
    let c2 = g.conv("conv2", rc, 4, 3, 1, 1, 1, Some("bn2"));
    let r2 = g.site("relu2", c2, Some(2), None, SiteRole::Body);
    let f = g.flatten("flatten", r2);
    g.linear("linear", f, 5);
    g.finish("channels-test", ArchSpec::resnet18(), 5).unwrap()
}

fn node(n: &Network, name: &str) -> usize {
    n.nodes.iter().position(|x| x.name == name).unwrap()
}

#[test]
fn slice_and_concat_shapes() {
    let n = mixed_scales();
    assert_eq!(n.nodes[node(&n, "a")].shape, FeatureShape::new(3, 8, 8));
    assert_eq!(n.nodes[node(&n, "b")].shape, FeatureShape::new(2, 8, 8));
    assert_eq!(n.nodes[node(&n, "cat")].shape, FeatureShape::new(6, 8, 8));
    assert_eq!(n.nodes[node(&n, "cat")].op.kind(), "concat");
    assert_eq!(n.nodes[node(&n, "a")].op.kind(), "slice");
    // Channel ops add no ReLUs, MACs or parameters.
    let c = count(&n, Convention::default());
    assert_eq!(c.relus, 6 * 64 + 6 * 64 + 4 * 64);
    assert_eq!(c.flops, (6 * 64 * 27 + 4 * 64 * 54 + 5 * 256) as u64);
}

#[test]
fn bad_slices_and_concats_name_the_node() {
    let graph_err = |e: ModelError| match e {
        ModelError::Graph { name, reason, .. } => (name, reason),
        other => panic!("expected a graph error, got {other}"),
    };
    // A slice past the last channel.
    let mut g = GraphBuilder::new(FeatureShape::new(3, 4, 4), Init::Zeros);
    let s = g.slice("too_far", 0, 2, 2);
    let f = g.flatten("flatten", s);
    g.linear("linear", f, 2);
    let (name, reason) = graph_err(g.finish("t", ArchSpec::resnet18(), 2).unwrap_err());
    assert_eq!(name, "too_far");
    assert!(
        reason.contains("2..4") && reason.contains("≤ 3"),
        "{reason}"
    );
    // An empty slice.
    let mut g = GraphBuilder::new(FeatureShape::new(3, 4, 4), Init::Zeros);
    let s = g.slice("empty", 0, 1, 0);
    let f = g.flatten("flatten", s);
    g.linear("linear", f, 2);
    let (name, _) = graph_err(g.finish("t", ArchSpec::resnet18(), 2).unwrap_err());
    assert_eq!(name, "empty");
    // Planes that differ.
    let mut g = GraphBuilder::new(FeatureShape::new(3, 4, 4), Init::Zeros);
    let p = g.avgpool("pool", 0, 2, 2);
    let c = g.concat("cat", &[0, p]);
    let f = g.flatten("flatten", c);
    g.linear("linear", f, 2);
    let (name, reason) = graph_err(g.finish("t", ArchSpec::resnet18(), 2).unwrap_err());
    assert_eq!(name, "cat");
    assert!(
        reason.contains("pool") && reason.contains("planes differ"),
        "{reason}"
    );
    // A concat of one input.
    let mut g = GraphBuilder::new(FeatureShape::new(3, 4, 4), Init::Zeros);
    let c = g.concat("lonely", &[0]);
    let f = g.flatten("flatten", c);
    g.linear("linear", f, 2);
    let (name, reason) = graph_err(g.finish("t", ArchSpec::resnet18(), 2).unwrap_err());
    assert_eq!(name, "lonely");
    assert!(reason.contains("at least 2"), "{reason}");
}

/// The concat's inputs come at three scales; the plan lifts each exactly to
/// the largest, and the fixed-point reference follows the float one.
#[test]
fn concat_of_different_scales_lifts_exactly() {
    let n = mixed_scales();
    let fp = FixedPoint::default();
    let enc = EncodedNetwork::new(&n, fp).unwrap();
    let (ia, ib, ix, icat) = (node(&n, "a"), node(&n, "b"), node(&n, "x"), node(&n, "cat"));
    let fa = fp.act_frac_bits;
    assert_eq!(enc.scales[ib], fa);
    assert_eq!(enc.scales[ix], fa);
    assert!(
        enc.scales[ia] > fa,
        "the conv's slice keeps the conv's scale"
    );
    assert_eq!(enc.scales[icat], enc.scales[ia]);
    let lifts = enc.concat_lifts(&n, icat).unwrap();
    assert_eq!(lifts, vec![0, enc.scales[ia] - fa, enc.scales[ia] - fa]);
    assert!(enc.ops[ia].is_none() && enc.ops[icat].is_none());
    assert_eq!(enc.concat_lifts(&n, ia), None);
    // The written plan says the same.
    let plan = ScalePlan::of(&n, &enc).unwrap();
    assert_eq!(
        plan.nodes[icat].op,
        PlanOp::Concat {
            lift: lifts.clone()
        }
    );
    assert_eq!(plan.nodes[ia].op, PlanOp::Slice);

    // Traces: slices select channels, the concat stacks its lifted parts.
    let x = random_input(n.input.len(), 3);
    let mut ev = FixedEvaluator::new(&enc);
    let t = forward_trace(&n, &mut ev, &x).unwrap();
    let plane = 64;
    let ic = node(&n, "conv1");
    assert_eq!(t[ia].data, t[ic].data[plane..4 * plane].to_vec());
    assert_eq!(t[ia].frac_bits, t[ic].frac_bits);
    let mut want = t[ia].data.clone();
    for part in [&t[ib], &t[ix]] {
        want.extend(part.data.iter().map(|&v| fixed::mul(v, 1 << lifts[1])));
    }
    assert_eq!(t[icat].data, want);
    assert_eq!(t[icat].frac_bits, enc.scales[icat]);
    let mut fe = FloatEvaluator::default();
    let tf = forward_trace(&n, &mut fe, &x).unwrap();
    let mut want = tf[ia].clone();
    want.extend_from_slice(&tf[ib]);
    want.extend_from_slice(&tf[ix]);
    assert_eq!(tf[icat], want);

    for seed in 0..4 {
        let x = random_input(n.input.len(), seed);
        let f = forward_float(&n, &x).unwrap();
        let q = forward_fixed(&n, fp, &x).unwrap().logits;
        let scale = f.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for (a, b) in f.iter().zip(&q) {
            assert!((a - b).abs() <= 0.01 * scale, "float {f:?} fixed {q:?}");
        }
    }
}
