//! DeepReShape's ReLU-reuse (Jha & Reagen, TMLR 2024, §4.2 and Fig. 9):
//! ReLUs on a `1/N` fraction of a layer's channels, the other channels
//! reusing them through channel groups, skip connections between the
//! groups and a 1×1 convolution across them.
//!
//! # What the paper says
//! * §4.2: "one-fourth of channels are utilized for feature reuse, while a
//!   `N`th fraction of feature maps are activated using ReLUs, and the
//!   remaining feature maps are processed solely with convolution
//!   operations, resulting in only three groups"; the ReLUs are in "the last
//!   group", whose neurons "consider a larger subset of feature maps using
//!   the skip connections (Gao et al., 2019)" — Res2Net, whose groups are
//!   `y_1 = x_1`, `y_2 = K_2(x_2)`, `y_i = K_i(x_i + y_{i−1})`.
//! * Fig. 9 (naive version) and the text: "1×1 convolution being employed
//!   for cross-channel interaction"; legend: "Conv + BN + ReLU" and
//!   "Conv + BN" groups of 3×3 convolutions.
//! * Table 9: "shortcut connections between outputs and inputs of
//!   subsequent feature-subspaces"; ReLU-reuse is applied in the layers that
//!   keep ReLUs after Thinning (Algorithm 2, lines 7–9: `ReuseReLU(Net_T, Sc)`
//!   on the culled and thinned network, `Sc ∈ {4, 8, 16}`).
//! * ReLU counts (Table 6): HRN-2x5x3x, m=16, culled S1, thinned: 52.2K;
//!   with Re2 ×4, ×8, ×16: 13.1K, 6.5K, 3.2K = 52,224 / N exactly.
//! * Appendix G: Re2 lowers the FLOPs "due to the group-wise convolution"
//!   (HRN-2x6x3x: 527.4M → 370.1M at ×4; Table 6: 178.5M → 121.6M, 130.5M,
//!   137.2M at ×4, ×8, ×16).
//!
//! No code of the authors is published (searched: GitHub code, issues and
//! documentation indexes for "DeepReShape", "HybReNet", "ReLU-reuse",
//! Nandan Kumar Jha; only the paper's pages exist), so where the paper is
//! silent the choices below follow the paper's own numbers.
//!
//! # The block built here (BasicBlock `layer{s}.{b}` of a reused stage)
//! With stage width `C`, groups `r = ⌊C/4⌋` (reuse), `q = ⌈C/N⌉` (ReLUs)
//! and `p = C − r − q` (convolution only):
//! ```text
//! z  = bn1(conv1(x))                     3×3, stride, cin → C (unchanged)
//! z' = trunc0(z)                         identity site (mask 0): a truncation only
//! u1, u2, u3 = z'[0..r], z'[r..r+p], z'[r+p..C]          (Slice)
//! y2 = trunc1(reuse.bn1(reuse.conv1(u2)))    3×3, p → p, Conv + BN; identity site
//! v3 = u3 + y2[p−q..p]                    Res2Net skip: previous group's output
//! y3 = relu1(reuse.bn2(reuse.conv2(v3)))  3×3, q → q, Conv + BN + ReLU: THE ReLUs
//! m  = reuse.mix_bn(reuse.mix(concat(u1, y2, y3)))   1×1, C → C, across groups
//! out = relu2(m + shortcut(x))            as in the plain block (thinned: identity)
//! ```
//! Choices where the paper is silent, and why:
//! * The groups replace the block's second 3×3 convolution (`conv2`): with
//!   the groups' 3×3 convolutions and a `C → C` 1×1 in place of every
//!   `conv2` of the reused stages, HRN-2x5x3x (m=16, CIFAR) has 119.7M,
//!   129.1M, 136.2M MACs at ×4, ×8, ×16 against the paper's 121.6M, 130.5M,
//!   137.2M (and HRN-2x6x3x, ResNet-34 layout: 365.1M, 391.3M, 411.0M
//!   against 370.1M, 394.8M, 413.4M; the baselines differ by 0.8M already:
//!   177.7M vs 178.5M). The growth with `N` follows `p² + q²` exactly
//!   (ratio of the steps 8.9M/6.7M = 1.33 printed, 1.33 here). Replacing
//!   `conv1` instead could remove at most its 65.5M MACs (of 177.7M) before
//!   adding the groups back, far from the printed 56.9M saving at ×4 with
//!   the 1.33 ratio.
//! * The skip into the ReLU group takes the last `q` channels of the
//!   previous group's output (the groups differ in size, Res2Net's are equal).
//! * The groups are cut at `⌊C/4⌋` and `⌈C/N⌉` channels (exact for the
//!   paper's widths: every width of the HRNs is a multiple of 16).
//! * `trunc0` and `trunc1` are identity sites (mask 0, no ReLUs): fixed-point
//!   truncation points, needed because three linear layers would otherwise
//!   follow each other without one (`reference` module doc); they are not
//!   ReLUs and are not counted.
//! * The site `layer{s}.{b}.relu1` keeps its name (now `q` channels), so
//!   culling, thinning (which drops `relu2`) and counting by stage work as
//!   for the plain network: culled S1 + thinned S2–S4 + Re2 ×N counts
//!   exactly `52,224 / N` on HRN-2x5x3x (m=16).

use crate::arch::{basic_block, block_conv, resnet_frame, shortcut, ArchSpec};
use crate::error::{ModelError, Result};
use crate::graph::{FeatureShape, GraphBuilder, Init, Network, SiteRole};

/// The channel groups of a reused layer of width `c` at factor `n`:
/// `(reuse r = ⌊c/4⌋, convolution only p = c − r − q, ReLUs q = ⌈c/n⌉)`.
pub fn group_sizes(c: usize, n: usize) -> Result<(usize, usize, usize)> {
    if n < 2 {
        return Err(ModelError::InvalidSize {
            what: "ReLU-reuse factor N".into(),
            value: n.to_string(),
            expected: "at least 2".into(),
        });
    }
    let r = c / 4;
    let q = c.div_ceil(n);
    if r == 0 || r + q >= c {
        return Err(ModelError::InvalidSize {
            what: format!("channels of a ReLU-reuse ×{n} layer"),
            value: c.to_string(),
            expected: format!(
                "room for three groups: ⌊C/4⌋ ≥ 1 reused, ⌈C/{n}⌉ with ReLUs and at least one \
                 convolution-only channel (C ≥ 4)"
            ),
        });
    }
    Ok((r, c - r - q, q))
}

/// The name of a ReLU-reuse architecture: `{base}-re{N}` when every stage
/// reuses ReLUs, else `{base}-re{N}s{stages}` (e.g. `hrn-2x5x3x-m16-re4s234`).
pub fn reuse_name(base: &str, factor: usize, stages: &[usize], all_stages: usize) -> String {
    if stages.len() == all_stages {
        format!("{base}-re{factor}")
    } else {
        let s: String = stages.iter().map(|s| s.to_string()).collect();
        format!("{base}-re{factor}s{s}")
    }
}

/// Checks a ReLU-reuse spec: a basic-block ResNet base, `N ≥ 2`, stages
/// `1..=D` sorted without repeats (at most 9, named by single digits), and
/// every reused stage wide enough for three groups.
pub(crate) fn check(base: &ArchSpec, factor: usize, stages: &[usize]) -> Result<()> {
    let ArchSpec::Resnet { name, widths, .. } = base else {
        return Err(ModelError::UnknownArch {
            name: format!("ReLU-reuse on {}", base.name()),
            expected: "a ResNet with basic blocks (resnet18, resnet34, hrn-AxBxCx-mM)".into(),
        });
    };
    let bad_stages = || ModelError::InvalidSize {
        what: format!("ReLU-reuse stages of {name}"),
        value: format!("{stages:?}"),
        expected: format!(
            "stages among 1..={} (at most 9), increasing, at least one",
            widths.len()
        ),
    };
    if stages.is_empty()
        || widths.len() > 9
        || stages.windows(2).any(|w| w[0] >= w[1])
        || stages.iter().any(|&s| s == 0 || s > widths.len())
    {
        return Err(bad_stages());
    }
    for &s in stages {
        group_sizes(widths[s - 1], factor).map_err(|e| match e {
            ModelError::InvalidSize {
                what,
                value,
                expected,
            } => ModelError::InvalidSize {
                what: format!("{what} (stage {s} of {name})"),
                value,
                expected,
            },
            other => other,
        })?;
    }
    Ok(())
}

/// Parses a `re{N}` or `re{N}s{digits}` name component: `(N, stages)`,
/// `stages` empty for "every stage".
pub(crate) fn parse_component(part: &str) -> Option<(usize, Vec<usize>)> {
    let rest = part.strip_prefix("re")?;
    let (n, stages) = match rest.split_once('s') {
        Some((n, s)) if !s.is_empty() => (n, s),
        Some(_) => return None,
        None => (rest, ""),
    };
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = n.parse().ok()?;
    let stages = stages
        .chars()
        .map(|c| c.to_digit(10).map(|d| d as usize))
        .collect::<Option<Vec<_>>>()?;
    Some((n, stages))
}

/// Builds a ResNet (basic blocks) whose `stages` use ReLU-reuse ×`factor`
/// (module doc); the other stages are plain.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build(
    spec: &ArchSpec,
    base: &ArchSpec,
    factor: usize,
    stages: &[usize],
    input: FeatureShape,
    num_classes: usize,
    init: Init,
) -> Result<Network> {
    check(base, factor, stages)?;
    let ArchSpec::Resnet {
        stem,
        blocks,
        widths,
        ..
    } = base
    else {
        // Refused by `check`.
        return Err(ModelError::UnknownArch {
            name: base.name().into(),
            expected: "a ResNet with basic blocks".into(),
        });
    };
    let block = |g: &mut GraphBuilder,
                 x: usize,
                 s: usize,
                 b: usize,
                 stride: usize,
                 width: usize,
                 p: &str| {
        if stages.contains(&s) {
            reuse_block(g, x, s, b, stride, width, p, factor)
        } else {
            basic_block(g, x, s, b, stride, width, p)
        }
    };
    resnet_frame(
        spec,
        *stem,
        blocks,
        widths,
        input,
        num_classes,
        init,
        &block,
    )
}

/// The ReLU-reuse BasicBlock (module doc). Group sizes were checked by [`check`].
#[allow(clippy::too_many_arguments)]
fn reuse_block(
    g: &mut GraphBuilder,
    x: usize,
    s: usize,
    b: usize,
    stride: usize,
    width: usize,
    p: &str,
    factor: usize,
) -> usize {
    let (r, m, q) = group_sizes(width, factor).unwrap_or((1, width.saturating_sub(2), 1));
    let (st, bl) = (Some(s), Some(b));
    let n = |t: &str| format!("{p}.reuse.{t}");
    let z = block_conv(g, p, 1, x, width, 3, stride);
    let z = g.identity_site(&n("trunc0"), z, st, bl, SiteRole::Body);
    let u1 = g.slice(&n("split0"), z, 0, r);
    let u2 = g.slice(&n("split1"), z, r, m);
    let u3 = g.slice(&n("split2"), z, r + m, q);
    let c2 = g.conv(&n("conv1"), u2, m, 3, 1, 1, 1, Some(&n("bn1")));
    let y2 = g.identity_site(&n("trunc1"), c2, st, bl, SiteRole::Body);
    let skip = g.slice(&n("skip"), y2, m - q, q);
    let v3 = g.add(&n("add"), u3, skip);
    let c3 = g.conv(&n("conv2"), v3, q, 3, 1, 1, 1, Some(&n("bn2")));
    let y3 = g.site(&format!("{p}.relu1"), c3, st, bl, SiteRole::Body);
    let cat = g.concat(&n("cat"), &[u1, y2, y3]);
    let mix = g.conv(&n("mix"), cat, width, 1, 1, 0, 1, Some(&n("mix_bn")));
    let short = shortcut(g, x, width, stride, p);
    let sum = g.add(&format!("{p}.add"), mix, short);
    g.site(&format!("{p}.relu2"), sum, st, bl, SiteRole::Body)
}
