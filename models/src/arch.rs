//! Architectures: CIFAR ResNets, HybReNets, wide ResNets, VGG-16, and
//! DeepReDuce's transformations.
//!
//! Names follow the PyTorch CIFAR code the pruning papers use:
//! * ResNet / HRN (kuangliu-style, as in SNL/AutoReP): `conv1`+`bn1` stem with
//!   site `relu0`; blocks `layer{s}.{b}.conv1/bn1`, site `layer{s}.{b}.relu1`,
//!   `conv2/bn2`, shortcut `layer{s}.{b}.shortcut.0` (1×1 conv) and
//!   `shortcut.1` (BN), residual add `layer{s}.{b}.add`, site
//!   `layer{s}.{b}.relu2` after the add; then `avgpool` (global), `flatten`,
//!   `linear`.
//! * WRN (pre-activation, xternalz-style): stem `conv1` (no BN/ReLU); blocks
//!   `block{s}.layer.{b}.bn1`, site `.relu1`, `.conv1`+`.bn2`, site `.relu2`,
//!   `.conv2`, `.convShortcut`; final `bn1`, site `relu`, `fc`.
//! * VGG-16 (kuangliu-style): `features.{i}` indices as in `nn.Sequential`
//!   (conv, BN, ReLU triples; pools take one index); site names are the ReLU
//!   indices (`features.2`, …); max pools are replaced by 2×2 average pools
//!   (the last one by a global average pool), as PI networks do; `classifier`.
//! * ReLU-reuse (DeepReShape, [`reuse`]): a ResNet whose reused stages'
//!   blocks split `conv1`'s output into three channel groups
//!   (`layer{s}.{b}.reuse.*`), with the ReLUs (`layer{s}.{b}.relu1`) on the
//!   last; names `hrn-2x5x3x-m16-re4` (every stage) or `…-re4s234`.

pub mod deepreduce;
pub mod reuse;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::graph::{FeatureShape, GraphBuilder, Init, Network, SiteRole};

/// An architecture with all its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum ArchSpec {
    /// CIFAR ResNet with BasicBlocks (ResNet-18/34, HybReNets, DeepReDuce-reshaped ResNets).
    Resnet {
        /// Display name, e.g. `resnet18` or `hrn-5x5x3x-m16`.
        name: String,
        /// Stem output channels.
        stem: usize,
        /// Blocks per stage.
        blocks: Vec<usize>,
        /// Output channels per stage.
        widths: Vec<usize>,
    },
    /// DeepReShape's ReLU-reuse ×`factor` in `stages` of a basic-block
    /// ResNet `base` ([`reuse`]; build it with [`ArchSpec::relu_reuse`]).
    ReluReuse {
        /// Display name, e.g. `hrn-2x5x3x-m16-re4s234`.
        name: String,
        /// The ResNet without reuse ([`ArchSpec::Resnet`]).
        base: Box<ArchSpec>,
        /// ReLUs on `⌈C/factor⌉` of a reused layer's `C` channels.
        factor: usize,
        /// Stages (1-based, increasing) whose blocks reuse ReLUs.
        stages: Vec<usize>,
    },
    /// Pre-activation wide ResNet WRN-depth-k.
    Wrn {
        /// Display name, e.g. `wrn22_8`.
        name: String,
        /// Depth (`6n + 4`).
        depth: usize,
        /// Stem output channels (16).
        stem: usize,
        /// Output channels of the three stages (`16k, 32k, 64k`).
        widths: Vec<usize>,
    },
    /// CIFAR ResNet with bottleneck blocks (ResNet-50/101): `1×1 → 3×3
    /// (stride) → 1×1` with expansion 4, projection shortcuts where the
    /// shape changes, as in the CIFAR ResNets of kuangliu/pytorch-cifar (the
    /// stride on the 3×3 conv, "ResNet v1.5"). Sites per block: `relu1` (at
    /// the block's input resolution), `relu2`, `relu3` (after the add).
    Bottleneck {
        /// Display name, e.g. `resnet50`.
        name: String,
        /// Stem output channels.
        stem: usize,
        /// Blocks per stage.
        blocks: Vec<usize>,
        /// Inner channels ("planes") per stage; a block outputs 4× as many.
        widths: Vec<usize>,
    },
    /// VGG with batch norm and the given conv widths per stage (VGG-16:
    /// 2,2,3,3,3 convs), each stage ending in a 2×2 pool (`pool`).
    Vgg {
        /// Display name, e.g. `vgg16`.
        name: String,
        /// Convs per stage.
        convs: Vec<usize>,
        /// Channels per stage.
        widths: Vec<usize>,
        /// Pooling between stages. Files written before the field existed
        /// were average-pooled VGGs, hence the default.
        #[serde(default)]
        pool: VggPool,
    },
}

/// How a VGG pools between stages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VggPool {
    /// `nn.MaxPool2d(2, 2)` after every stage, as in the CIFAR VGGs of SNL's
    /// and PrivShap's code (`cfg` lists with `'M'`): 32×32 inputs reach 1×1,
    /// then flatten and one linear classifier.
    Max,
    /// 2×2 average pools between stages and a global average pool at the end
    /// (pibench's first VGG; kept so that older model files still load).
    #[default]
    Avg,
}

impl ArchSpec {
    /// CIFAR ResNet-18.
    pub fn resnet18() -> Self {
        Self::Resnet {
            name: "resnet18".into(),
            stem: 64,
            blocks: vec![2, 2, 2, 2],
            widths: vec![64, 128, 256, 512],
        }
    }

    /// CIFAR ResNet-34.
    pub fn resnet34() -> Self {
        Self::Resnet {
            name: "resnet34".into(),
            stem: 64,
            blocks: vec![3, 4, 6, 3],
            widths: vec![64, 128, 256, 512],
        }
    }

    /// CIFAR ResNet-50 (bottleneck blocks 3, 4, 6, 3).
    pub fn resnet50() -> Self {
        Self::Bottleneck {
            name: "resnet50".into(),
            stem: 64,
            blocks: vec![3, 4, 6, 3],
            widths: vec![64, 128, 256, 512],
        }
    }

    /// CIFAR ResNet-101 (bottleneck blocks 3, 4, 23, 3).
    pub fn resnet101() -> Self {
        Self::Bottleneck {
            name: "resnet101".into(),
            stem: 64,
            blocks: vec![3, 4, 23, 3],
            widths: vec![64, 128, 256, 512],
        }
    }

    /// HybReNet `HRN-αxβxγx` with base channels `m` (DeepReShape, Table 16):
    /// ResNet-18 layout with stem `m` and stage channels `[m, αm, αβm, αβγm]`.
    pub fn hrn(alpha: usize, beta: usize, gamma: usize, m: usize) -> Result<Self> {
        for (what, v) in [
            ("alpha", alpha),
            ("beta", beta),
            ("gamma", gamma),
            ("base channels m", m),
        ] {
            positive(what, v)?;
        }
        Ok(Self::Resnet {
            name: format!("hrn-{alpha}x{beta}x{gamma}x-m{m}"),
            stem: m,
            blocks: vec![2, 2, 2, 2],
            widths: vec![m, alpha * m, alpha * beta * m, alpha * beta * gamma * m],
        })
    }

    /// `base` (a basic-block ResNet) with DeepReShape's ReLU-reuse ×`factor`
    /// in `stages` (1-based; empty = every stage), named
    /// [`reuse::reuse_name`]. Refuses other families, `factor < 2`, unknown
    /// stages and widths too narrow for three channel groups.
    pub fn relu_reuse(base: ArchSpec, factor: usize, stages: &[usize]) -> Result<Self> {
        let n_stages = match &base {
            Self::Resnet { widths, .. } => widths.len(),
            _ => 0,
        };
        let stages: Vec<usize> = if stages.is_empty() {
            (1..=n_stages).collect()
        } else {
            stages.to_vec()
        };
        reuse::check(&base, factor, &stages)?;
        Ok(Self::ReluReuse {
            name: reuse::reuse_name(base.name(), factor, &stages, n_stages),
            base: Box::new(base),
            factor,
            stages,
        })
    }

    /// Wide ResNet WRN-`depth`-`k` (depth = 6n+4).
    pub fn wrn(depth: usize, k: usize) -> Result<Self> {
        positive("WRN widen factor k", k)?;
        if depth < 10 || !(depth - 4).is_multiple_of(6) {
            return Err(ModelError::InvalidSize {
                what: "WRN depth".into(),
                value: depth.to_string(),
                expected: "6n + 4 with n ≥ 1 (10, 16, 22, 28, …)".into(),
            });
        }
        Ok(Self::Wrn {
            name: format!("wrn{depth}_{k}"),
            depth,
            stem: 16,
            widths: vec![16 * k, 32 * k, 64 * k],
        })
    }

    /// VGG-16 with batch norm and max pooling (13 conv ReLUs, one linear head).
    pub fn vgg16() -> Self {
        Self::vgg(16).expect("VGG-16 is a known depth")
    }

    /// The CIFAR VGG-11/13/16/19 with batch norm and max pooling (the `cfg`
    /// lists `A`, `B`, `D`, `E` of Simonyan & Zisserman, as SNL's
    /// `vgg*_bn` and PrivShap use them): 64, 128, 256, 512, 512 channels.
    pub fn vgg(depth: usize) -> Result<Self> {
        let convs = match depth {
            11 => vec![1, 1, 2, 2, 2],
            13 => vec![2, 2, 2, 2, 2],
            16 => vec![2, 2, 3, 3, 3],
            19 => vec![2, 2, 4, 4, 4],
            _ => {
                return Err(ModelError::UnknownArch {
                    name: format!("vgg{depth}"),
                    expected: "vgg11, vgg13, vgg16 or vgg19".into(),
                })
            }
        };
        Ok(Self::Vgg {
            name: format!("vgg{depth}"),
            convs,
            widths: vec![64, 128, 256, 512, 512],
            pool: VggPool::Max,
        })
    }

    /// Parses `resnet18`, `resnet34`, `vgg16`, `wrn22_8` / `wrnD_K` (also `wrn-22-8`),
    /// `hrn-5x5x3x-m16` (HRN with base channels in the name); a `-reN`
    /// component (anywhere after the first) adds ReLU-reuse ×N to every
    /// stage, `-reNsDIGITS` to the stages listed (`hrn-2x5x3x-m16-re4s234`).
    pub fn parse(name: &str) -> Result<Self> {
        let lower = name.trim().to_ascii_lowercase();
        let parts: Vec<&str> = lower.split('-').collect();
        if let Some(k) = (1..parts.len()).find(|&k| reuse::parse_component(parts[k]).is_some()) {
            let (factor, stages) = reuse::parse_component(parts[k]).unwrap_or_default();
            let rest: Vec<&str> = parts
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != k)
                .map(|(_, p)| *p)
                .collect();
            return Self::relu_reuse(Self::parse(&rest.join("-"))?, factor, &stages);
        }
        let unknown = || {
            ModelError::UnknownArch {
            name: name.to_string(),
            expected: "resnet18, resnet34, resnet50, resnet101, vgg11, vgg13, vgg16, vgg19, vgg16-avg, wrnD_K (e.g. wrn22_8), hrn-AxBxCx-mM (e.g. hrn-5x5x3x-m16)".into(),
        }
        };
        match lower.as_str() {
            "resnet18" => return Ok(Self::resnet18()),
            "resnet34" => return Ok(Self::resnet34()),
            "resnet50" => return Ok(Self::resnet50()),
            "resnet101" => return Ok(Self::resnet101()),
            "vgg11" | "vgg13" | "vgg16" | "vgg19" => {
                return Self::vgg(lower[3..].parse().map_err(|_| unknown())?)
            }
            "vgg16-avg" => {
                return Ok(Self::Vgg {
                    name: "vgg16-avg".into(),
                    convs: vec![2, 2, 3, 3, 3],
                    widths: vec![64, 128, 256, 512, 512],
                    pool: VggPool::Avg,
                })
            }
            _ => {}
        }
        if let Some(rest) = lower.strip_prefix("wrn") {
            let parts: Vec<&str> = rest
                .trim_start_matches('-')
                .split(['_', '-', 'x'])
                .collect();
            if parts.len() != 2 {
                return Err(unknown());
            }
            let d = parts[0].parse().map_err(|_| unknown())?;
            let k = parts[1].parse().map_err(|_| unknown())?;
            return Self::wrn(d, k);
        }
        if let Some(rest) = lower.strip_prefix("hrn") {
            let rest = rest.trim_start_matches('-');
            let (factors, m) = match rest.split_once("-m") {
                Some((f, m)) => (f, m.parse().map_err(|_| unknown())?),
                None => return Err(unknown()),
            };
            let (a, b, c) = parse_hrn_factors(factors).ok_or_else(unknown)?;
            return Self::hrn(a, b, c, m);
        }
        Err(unknown())
    }

    /// Display name.
    pub fn name(&self) -> &str {
        match self {
            Self::Resnet { name, .. }
            | Self::Bottleneck { name, .. }
            | Self::Wrn { name, .. }
            | Self::ReluReuse { name, .. }
            | Self::Vgg { name, .. } => name,
        }
    }

    /// Builds the network for an input shape and class count.
    pub fn build(&self, input: FeatureShape, num_classes: usize, init: Init) -> Result<Network> {
        positive("input channels", input.c)?;
        positive("input height", input.h)?;
        positive("input width", input.w)?;
        positive("number of classes", num_classes)?;
        self.check_limits(input, num_classes)?;
        match self {
            Self::Resnet {
                stem,
                blocks,
                widths,
                ..
            }
            | Self::Bottleneck {
                stem,
                blocks,
                widths,
                ..
            } => {
                let block: &BlockFn<'_> = if matches!(self, Self::Bottleneck { .. }) {
                    &bottleneck_block
                } else {
                    &basic_block
                };
                resnet_frame(self, *stem, blocks, widths, input, num_classes, init, block)
            }
            Self::ReluReuse {
                base,
                factor,
                stages,
                ..
            } => reuse::build(self, base, *factor, stages, input, num_classes, init),
            Self::Wrn {
                depth,
                stem,
                widths,
                ..
            } => build_wrn(self, *depth, *stem, widths, input, num_classes, init),
            Self::Vgg {
                convs,
                widths,
                pool,
                ..
            } => build_vgg(self, convs, widths, *pool, input, num_classes, init),
        }
    }
}

impl ArchSpec {
    /// Rejects sizes that could only come from a corrupt file or a typo and
    /// would otherwise exhaust memory: more than 2^31 weights or activations.
    fn check_limits(&self, input: FeatureShape, num_classes: usize) -> Result<()> {
        let too_big = |what: &str, v: u128| -> Result<()> {
            if v > 1u128 << 31 {
                return Err(ModelError::InvalidSize {
                    what: format!("{what} of {}", self.name()),
                    value: v.to_string(),
                    expected: "at most 2^31".into(),
                });
            }
            Ok(())
        };
        let (weights, site) = self.size_estimate(input, num_classes);
        too_big("weights", weights)?;
        too_big("activations per site", site)?;
        too_big("input elements", input.len() as u128)
    }

    /// Upper bounds, without building the network, on its number of
    /// weights (classifier included) and on the elements of its widest
    /// activation site — what [`ArchSpec::build`] and `pibench table` check
    /// before allocating anything.
    pub fn size_estimate(&self, input: FeatureShape, num_classes: usize) -> (u128, u128) {
        let (stem, stages): (usize, Vec<(usize, usize)>) = match self {
            // A reused block holds fewer weights than the plain one: its
            // groups' 9(p² + q²) + C² ≤ 9·(3C/4)² + C² < 9C² replace conv2.
            Self::ReluReuse { base, .. } => return base.size_estimate(input, num_classes),
            Self::Resnet {
                stem,
                blocks,
                widths,
                ..
            } => (
                *stem,
                blocks.iter().copied().zip(widths.iter().copied()).collect(),
            ),
            // A bottleneck block of p planes holds 4p·p + 9p² + 4p·p = 17p²
            // weights plus its shortcut: bounded by a basic stage of width
            // 2p (18·(2p)² per block); its widest site (4p) is added below.
            Self::Bottleneck {
                stem,
                blocks,
                widths,
                ..
            } => (
                *stem,
                blocks
                    .iter()
                    .copied()
                    .zip(widths.iter().map(|&w| w.saturating_mul(2)))
                    .collect(),
            ),
            Self::Wrn {
                depth,
                stem,
                widths,
                ..
            } => (*stem, widths.iter().map(|&w| (depth / 6 + 1, w)).collect()),
            Self::Vgg { convs, widths, .. } => (
                3,
                convs.iter().copied().zip(widths.iter().copied()).collect(),
            ),
        };
        let mut weights = 9 * input.c as u128 * stem as u128;
        let mut prev = stem as u128;
        let mut widest = stem as u128;
        for &(n, w) in &stages {
            let w = w as u128;
            weights = weights.saturating_add((2 * 9 * n as u128).saturating_mul(w * w.max(prev)));
            prev = w;
            widest = widest.max(w);
        }
        if let Self::Bottleneck { widths, .. } = self {
            widest = widest.max(4 * widths.iter().copied().max().unwrap_or(0) as u128);
        }
        weights = weights.saturating_add(prev * num_classes as u128);
        (weights, widest * input.h as u128 * input.w as u128)
    }
}

/// Parses `5x5x3x` or `5x5x3` into `(α, β, γ)`.
pub fn parse_hrn_factors(s: &str) -> Option<(usize, usize, usize)> {
    let t = s.trim().trim_end_matches('x');
    let v: Vec<usize> = t
        .split('x')
        .map(|p| p.parse().ok())
        .collect::<Option<Vec<_>>>()?;
    match v.as_slice() {
        [a, b, c] if *a > 0 && *b > 0 && *c > 0 => Some((*a, *b, *c)),
        _ => None,
    }
}

fn positive(what: &str, v: usize) -> Result<()> {
    if v == 0 {
        return Err(ModelError::InvalidSize {
            what: what.into(),
            value: "0".into(),
            expected: "a positive number".into(),
        });
    }
    Ok(())
}

fn check_spatial(what: &str, input: FeatureShape, downsample: usize) -> Result<()> {
    if input.h < downsample || input.w < downsample {
        return Err(ModelError::InvalidSize {
            what: format!("input of {what}"),
            value: input.to_string(),
            expected: format!("height and width at least {downsample}"),
        });
    }
    Ok(())
}

/// One residual block: `(builder, input node, stage s ≥ 1, block b,
/// stride, stage width, name prefix "layer{s}.{b}")` → the block's output.
type BlockFn<'a> = dyn Fn(&mut GraphBuilder, usize, usize, usize, usize, usize, &str) -> usize + 'a;

/// The CIFAR ResNet frame shared by basic and bottleneck blocks: checks,
/// 3×3 stem + `relu0`, stages of `blocks` (stride 2 at the first block of
/// stages 2..), global average pool, `linear`.
#[allow(clippy::too_many_arguments)]
fn resnet_frame(
    spec: &ArchSpec,
    stem: usize,
    blocks: &[usize],
    widths: &[usize],
    input: FeatureShape,
    num_classes: usize,
    init: Init,
    block: &BlockFn<'_>,
) -> Result<Network> {
    positive("stem channels", stem)?;
    if blocks.is_empty() || blocks.len() != widths.len() {
        return Err(ModelError::InvalidSize {
            what: "ResNet stages".into(),
            value: format!("{} block counts, {} widths", blocks.len(), widths.len()),
            expected: "the same non-zero number of stages".into(),
        });
    }
    for (s, (&b, &w)) in blocks.iter().zip(widths).enumerate() {
        positive(&format!("blocks of stage {}", s + 1), b)?;
        positive(&format!("channels of stage {}", s + 1), w)?;
    }
    check_spatial(spec.name(), input, 1 << (blocks.len() - 1))?;
    let mut g = GraphBuilder::new(input, init);
    let c = g.conv("conv1", g.input(), stem, 3, 1, 1, 1, Some("bn1"));
    let mut x = g.site("relu0", c, Some(0), None, SiteRole::Stem);
    for (si, (&nb, &width)) in blocks.iter().zip(widths).enumerate() {
        for b in 0..nb {
            let stride = if si > 0 && b == 0 { 2 } else { 1 };
            let p = format!("layer{}.{b}", si + 1);
            x = block(&mut g, x, si + 1, b, stride, width, &p);
        }
    }
    let pool = g.global_avgpool("avgpool", x);
    let flat = g.flatten("flatten", pool);
    g.linear("linear", flat, num_classes);
    g.finish(spec.name(), spec.clone(), num_classes)
}

/// A projection shortcut (1×1 conv + BN) where the shape changes, else `x`.
fn shortcut(g: &mut GraphBuilder, x: usize, out: usize, stride: usize, p: &str) -> usize {
    if stride != 1 || g.shape(x).c != out {
        g.conv(
            &format!("{p}.shortcut.0"),
            x,
            out,
            1,
            stride,
            0,
            1,
            Some(&format!("{p}.shortcut.1")),
        )
    } else {
        x
    }
}

/// `{p}.conv{i}` with `kernel`, `stride`, padding `kernel / 2` and BN `{p}.bn{i}`.
fn block_conv(
    g: &mut GraphBuilder,
    p: &str,
    i: usize,
    from: usize,
    cout: usize,
    kernel: usize,
    stride: usize,
) -> usize {
    g.conv(
        &format!("{p}.conv{i}"),
        from,
        cout,
        kernel,
        stride,
        kernel / 2,
        1,
        Some(&format!("{p}.bn{i}")),
    )
}

/// BasicBlock: 3×3 (stride) + `relu1`, 3×3, add the shortcut, `relu2`.
fn basic_block(
    g: &mut GraphBuilder,
    x: usize,
    s: usize,
    b: usize,
    stride: usize,
    width: usize,
    p: &str,
) -> usize {
    let c1 = block_conv(g, p, 1, x, width, 3, stride);
    let r1 = g.site(&format!("{p}.relu1"), c1, Some(s), Some(b), SiteRole::Body);
    let c2 = block_conv(g, p, 2, r1, width, 3, 1);
    let short = shortcut(g, x, width, stride, p);
    let sum = g.add(&format!("{p}.add"), c2, short);
    g.site(&format!("{p}.relu2"), sum, Some(s), Some(b), SiteRole::Body)
}

/// Bottleneck: 1×1 + `relu1`, 3×3 (stride) + `relu2`, 1×1 to 4× the planes,
/// add the shortcut, `relu3`.
fn bottleneck_block(
    g: &mut GraphBuilder,
    x: usize,
    s: usize,
    b: usize,
    stride: usize,
    planes: usize,
    p: &str,
) -> usize {
    let c1 = block_conv(g, p, 1, x, planes, 1, 1);
    let r1 = g.site(&format!("{p}.relu1"), c1, Some(s), Some(b), SiteRole::Body);
    let c2 = block_conv(g, p, 2, r1, planes, 3, stride);
    let r2 = g.site(&format!("{p}.relu2"), c2, Some(s), Some(b), SiteRole::Body);
    let c3 = block_conv(g, p, 3, r2, 4 * planes, 1, 1);
    let short = shortcut(g, x, 4 * planes, stride, p);
    let sum = g.add(&format!("{p}.add"), c3, short);
    g.site(&format!("{p}.relu3"), sum, Some(s), Some(b), SiteRole::Body)
}

fn build_wrn(
    spec: &ArchSpec,
    depth: usize,
    stem: usize,
    widths: &[usize],
    input: FeatureShape,
    num_classes: usize,
    init: Init,
) -> Result<Network> {
    positive("stem channels", stem)?;
    if depth < 10 || !(depth - 4).is_multiple_of(6) || widths.len() != 3 {
        return Err(ModelError::InvalidSize {
            what: "WRN depth/widths".into(),
            value: format!("depth {depth}, {} widths", widths.len()),
            expected: "depth 6n+4 and 3 stage widths".into(),
        });
    }
    for (s, &w) in widths.iter().enumerate() {
        positive(&format!("channels of stage {}", s + 1), w)?;
    }
    check_spatial(spec.name(), input, 4)?;
    let n = (depth - 4) / 6;
    let mut g = GraphBuilder::new(input, init);
    let mut x = g.conv("conv1", g.input(), stem, 3, 1, 1, 1, None);
    for (si, &width) in widths.iter().enumerate() {
        let s = si + 1;
        for b in 0..n {
            let stride = if si > 0 && b == 0 { 2 } else { 1 };
            let p = format!("block{s}.layer.{b}");
            let equal_in_out = g.shape(x).c == width;
            let bn1 = g.batchnorm(&format!("{p}.bn1"), x);
            let r1 = g.site(&format!("{p}.relu1"), bn1, Some(s), Some(b), SiteRole::Body);
            let c1 = g.conv(
                &format!("{p}.conv1"),
                r1,
                width,
                3,
                stride,
                1,
                1,
                Some(&format!("{p}.bn2")),
            );
            let r2 = g.site(&format!("{p}.relu2"), c1, Some(s), Some(b), SiteRole::Body);
            let c2 = g.conv(&format!("{p}.conv2"), r2, width, 3, 1, 1, 1, None);
            let short = if equal_in_out && stride == 1 {
                x
            } else {
                g.conv(
                    &format!("{p}.convShortcut"),
                    r1,
                    width,
                    1,
                    stride,
                    0,
                    1,
                    None,
                )
            };
            x = g.add(&format!("{p}.add"), c2, short);
        }
    }
    let bn = g.batchnorm("bn1", x);
    let r = g.site("relu", bn, None, None, SiteRole::Final);
    let pool = g.global_avgpool("avgpool", r);
    let flat = g.flatten("flatten", pool);
    g.linear("fc", flat, num_classes);
    g.finish(spec.name(), spec.clone(), num_classes)
}

fn build_vgg(
    spec: &ArchSpec,
    convs: &[usize],
    widths: &[usize],
    pool: VggPool,
    input: FeatureShape,
    num_classes: usize,
    init: Init,
) -> Result<Network> {
    if convs.is_empty() || convs.len() != widths.len() {
        return Err(ModelError::InvalidSize {
            what: "VGG stages".into(),
            value: format!("{} conv counts, {} widths", convs.len(), widths.len()),
            expected: "the same non-zero number of stages".into(),
        });
    }
    for (s, (&n, &w)) in convs.iter().zip(widths).enumerate() {
        positive(&format!("convs of stage {}", s + 1), n)?;
        positive(&format!("channels of stage {}", s + 1), w)?;
    }
    let downsample = match pool {
        VggPool::Max => 1 << convs.len(),
        VggPool::Avg => 1 << (convs.len() - 1),
    };
    check_spatial(spec.name(), input, downsample)?;
    let mut g = GraphBuilder::new(input, init);
    let mut x = g.input();
    let mut idx = 0usize;
    for (si, (&n, &width)) in convs.iter().zip(widths).enumerate() {
        for _ in 0..n {
            let c = g.conv(
                &format!("features.{idx}"),
                x,
                width,
                3,
                1,
                1,
                1,
                Some(&format!("features.{}", idx + 1)),
            );
            g.add_conv_bias(c);
            x = g.site(
                &format!("features.{}", idx + 2),
                c,
                Some(si + 1),
                None,
                SiteRole::Body,
            );
            idx += 3;
        }
        x = match pool {
            VggPool::Max => g.maxpool(&format!("features.{idx}"), x, 2, 2),
            VggPool::Avg if si + 1 == convs.len() => {
                g.global_avgpool(&format!("features.{idx}"), x)
            }
            VggPool::Avg => g.avgpool(&format!("features.{idx}"), x, 2, 2),
        };
        idx += 1;
    }
    // Inputs larger than 32×32 (Tiny-ImageNet) leave more than 1×1 after the
    // five max pools; a global average pool (torchvision's adaptive pool)
    // keeps the classifier at 512 inputs.
    if pool == VggPool::Max && g.shape(x).plane() > 1 {
        x = g.global_avgpool("avgpool", x);
    }
    let flat = g.flatten("flatten", x);
    g.linear("classifier", flat, num_classes);
    g.finish(spec.name(), spec.clone(), num_classes)
}

/// The datasets pibench knows: input shape and class count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dataset {
    /// CIFAR-10: 3×32×32, 10 classes.
    Cifar10,
    /// CIFAR-100: 3×32×32, 100 classes.
    Cifar100,
    /// Tiny-ImageNet: 3×64×64, 200 classes.
    TinyImageNet,
}

impl Dataset {
    /// Parses `cifar10`, `cifar100`, `tinyimagenet` (also `tiny-imagenet`, `tiny_imagenet`).
    pub fn parse(name: &str) -> Result<Self> {
        match name
            .trim()
            .to_ascii_lowercase()
            .replace(['-', '_'], "")
            .as_str()
        {
            "cifar10" => Ok(Self::Cifar10),
            "cifar100" => Ok(Self::Cifar100),
            "tinyimagenet" => Ok(Self::TinyImageNet),
            _ => Err(ModelError::UnknownArch {
                name: name.to_string(),
                expected: "a dataset: cifar10, cifar100, tinyimagenet".into(),
            }),
        }
    }

    /// Canonical name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Cifar10 => "cifar10",
            Self::Cifar100 => "cifar100",
            Self::TinyImageNet => "tinyimagenet",
        }
    }

    /// Input shape.
    pub fn input(&self) -> FeatureShape {
        match self {
            Self::Cifar10 | Self::Cifar100 => FeatureShape::new(3, 32, 32),
            Self::TinyImageNet => FeatureShape::new(3, 64, 64),
        }
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        match self {
            Self::Cifar10 => 10,
            Self::Cifar100 => 100,
            Self::TinyImageNet => 200,
        }
    }
}
