//! ResNet-family networks on libtorch with per-element ReLU masks.
//!
//! CIFAR-style ResNets (3×3 stem of stride 1, no max-pool, BasicBlocks,
//! global average pool, one linear head), as used by SNL, DeepReDuce and
//! DeepReShape on CIFAR and Tiny-ImageNet. Every ReLU is an activation
//! [`Site`] with a per-element mask of the site's `[C, H, W]` shape: a kept
//! element applies ReLU, a dropped one is the identity. During SNL's search a
//! site instead carries learnable coefficients `α` and computes
//! `α·ReLU(x) + (1−α)·x`.
//!
//! Names follow the kuangliu CIFAR code that `pibench_models::arch` uses:
//! `conv1`/`bn1` stem with site `relu0`, blocks `layer{s}.{b}.conv1/bn1`,
//! site `layer{s}.{b}.relu1`, `conv2/bn2`, `shortcut.0/1`, site
//! `layer{s}.{b}.relu2` after the residual add, then `linear`. The site
//! order is the models crate's.

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};
use thiserror::Error;

/// Errors of network construction.
#[derive(Debug, Error)]
pub enum NetError {
    /// The architecture name is unknown.
    #[error(
        "unknown model {name:?} (known: resnet18, resnet34, hrn-AxBxCx[-mM], e.g. hrn-2x5x3x-m16)"
    )]
    UnknownModel {
        /// The name given.
        name: String,
    },
    /// A shape parameter is unusable.
    #[error("invalid architecture parameter {what}: {reason}")]
    Invalid {
        /// The parameter.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

/// Shape of a ResNet-family network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchSpec {
    /// Name written to logs and model files (e.g. `resnet18`, `hrn-2x5x3x`).
    pub name: String,
    /// BasicBlocks per stage.
    pub blocks: Vec<usize>,
    /// Output channels of the stem.
    pub stem_width: i64,
    /// Channels of each stage.
    pub widths: Vec<i64>,
    /// Input side length in pixels (after ρ scaling).
    pub input_size: i64,
    /// Number of classes.
    pub classes: i64,
}

impl ArchSpec {
    /// Builds the spec of a named model.
    ///
    /// * `resnet18`, `resnet34`: widths 64·(1, 2, 4, 8);
    /// * `hrn-AxBxCx`: HybReNet (DeepReShape) with base channels `m`
    ///   (`base_channels`, default 16) and stage factors α=A, β=B, γ=C on the
    ///   ResNet-18 depth (2, 2, 2, 2): widths m, αm, αβm, αβγm.
    ///
    /// `width_multiplier` scales every width (rounded, at least 1); `rho`
    /// scales the input resolution.
    pub fn named(
        name: &str,
        classes: i64,
        native_size: i64,
        width_multiplier: f64,
        rho: f64,
        base_channels: Option<i64>,
    ) -> Result<ArchSpec, NetError> {
        if !(width_multiplier > 0.0 && width_multiplier.is_finite()) {
            return Err(NetError::Invalid {
                what: "width multiplier",
                reason: format!("{width_multiplier} is not positive"),
            });
        }
        if !(rho > 0.0 && rho <= 1.0) {
            return Err(NetError::Invalid {
                what: "rho",
                reason: format!("{rho} is not in (0, 1]"),
            });
        }
        let lower = name.to_ascii_lowercase();
        let (blocks, stem, widths): (Vec<usize>, i64, Vec<i64>) = match lower.as_str() {
            "resnet18" => (vec![2, 2, 2, 2], 64, vec![64, 128, 256, 512]),
            "resnet34" => (vec![3, 4, 6, 3], 64, vec![64, 128, 256, 512]),
            other => {
                let unknown = || NetError::UnknownModel {
                    name: name.to_string(),
                };
                let rest = other.strip_prefix("hrn-").ok_or_else(unknown)?;
                let (factors, m_in_name) = match rest.split_once("-m") {
                    Some((f, m)) => (f, Some(m.parse::<i64>().map_err(|_| unknown())?)),
                    None => (rest, None),
                };
                let factors = parse_hrn_factors(factors).ok_or_else(unknown)?;
                let m = base_channels.or(m_in_name).unwrap_or(16);
                if m <= 0 {
                    return Err(NetError::Invalid {
                        what: "base channels",
                        reason: format!("{m} is not positive"),
                    });
                }
                let (a, b, c) = (factors[0], factors[1], factors[2]);
                (
                    vec![2, 2, 2, 2],
                    m,
                    vec![m, a * m, a * b * m, a * b * c * m],
                )
            }
        };
        let scale = |w: i64| ((w as f64 * width_multiplier).round() as i64).max(1);
        let input_size = ((native_size as f64 * rho).round() as i64).max(4);
        let name = if lower.starts_with("hrn-") {
            format!(
                "hrn-{}x{}x{}x-m{}",
                widths[1] / widths[0],
                widths[2] / widths[1],
                widths[3] / widths[2],
                stem
            )
        } else {
            lower
        };
        Ok(ArchSpec {
            name,
            blocks,
            stem_width: scale(stem),
            widths: widths.into_iter().map(scale).collect(),
            input_size,
            classes,
        })
    }

    /// Spatial side of stage `s` (0-based) given the input side.
    pub fn stage_side(&self, stage: usize) -> i64 {
        let mut side = self.input_size;
        for _ in 0..stage {
            side = (side + 1) / 2;
        }
        side
    }

    /// The activation sites this spec produces, in order: (name, stage
    /// (0 = stem), layer index within the stage, shape `[C, H, W]`).
    pub fn site_layout(&self) -> Vec<SiteLayout> {
        let mut out = vec![SiteLayout {
            name: "relu0".into(),
            stage: 0,
            layer: 0,
            shape: [self.stem_width, self.input_size, self.input_size],
        }];
        for (s, (&n, &w)) in self.blocks.iter().zip(&self.widths).enumerate() {
            let side = self.stage_side(s);
            for b in 0..n {
                for r in 1..=2 {
                    out.push(SiteLayout {
                        name: format!("layer{}.{}.relu{}", s + 1, b, r),
                        stage: s + 1,
                        layer: 2 * b + (r - 1),
                        shape: [w, side, side],
                    });
                }
            }
        }
        out
    }

    /// ReLUs of the full (all-ReLU) network.
    pub fn full_relus(&self) -> i64 {
        self.site_layout().iter().map(|s| s.numel()).sum()
    }
}

/// Splits a dotted name into a store path below `base` and the leaf name.
fn nested<'a, 'b>(base: nn::Path<'a>, name: &'b str) -> (nn::Path<'a>, &'b str) {
    let mut parts: Vec<&str> = name.split('.').collect();
    let leaf = parts.pop().unwrap_or(name);
    let path = parts.into_iter().fold(base, |p, part| &p / part);
    (path, leaf)
}

fn parse_hrn_factors(s: &str) -> Option<[i64; 3]> {
    let parts: Vec<&str> = s.trim_end_matches('x').split('x').collect();
    if parts.len() != 3 {
        return None;
    }
    let mut out = [0i64; 3];
    for (o, p) in out.iter_mut().zip(parts) {
        *o = p.parse().ok().filter(|v: &i64| *v >= 1)?;
    }
    Some(out)
}

/// Where an activation site sits and its shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteLayout {
    /// Site name, unique in the network.
    pub name: String,
    /// Stage (0 = stem, 1..=D = stages).
    pub stage: usize,
    /// ReLU layer index within its stage (0-based), used by Thinning.
    pub layer: usize,
    /// `[C, H, W]`.
    pub shape: [i64; 3],
}

impl SiteLayout {
    /// Elements of the site.
    pub fn numel(&self) -> i64 {
        self.shape.iter().product()
    }
}

/// One activation site: a per-element mask, or learnable SNL coefficients.
#[derive(Debug)]
pub struct Site {
    /// Placement and shape.
    pub layout: SiteLayout,
    /// Mask `[C,H,W]` of 0/1 `f32` values (a non-trainable variable of the store).
    pub mask: Tensor,
    /// SNL coefficients `α` `[C,H,W]` while the search runs.
    pub alpha: Option<Tensor>,
    kept: i64,
}

impl Site {
    /// Kept ReLUs of the site's mask.
    pub fn kept(&self) -> i64 {
        self.kept
    }

    fn refresh(&mut self) {
        self.kept = self
            .mask
            .sum(Kind::Float)
            .double_value(&[])
            .round()
            .max(0.0) as i64;
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        if let Some(alpha) = &self.alpha {
            let r = x.relu();
            return x + alpha * (r - x);
        }
        if self.kept == self.layout.numel() {
            x.relu()
        } else if self.kept == 0 {
            x.shallow_clone()
        } else {
            x + &self.mask * (x.relu() - x)
        }
    }
}

/// A conv (no bias) followed by batch norm.
#[derive(Debug)]
pub struct ConvBn {
    /// The convolution.
    pub conv: nn::Conv2D,
    /// The batch norm.
    pub bn: nn::BatchNorm,
}

impl ConvBn {
    fn new(p: &nn::Path, conv: &str, bn: &str, cin: i64, cout: i64, k: i64, stride: i64) -> ConvBn {
        let cfg = nn::ConvConfig {
            stride,
            padding: k / 2,
            bias: false,
            ..Default::default()
        };
        ConvBn {
            conv: nn::conv2d(p / conv, cin, cout, k, cfg),
            bn: nn::batch_norm2d(p / bn, cout, Default::default()),
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.bn.forward_t(&x.apply(&self.conv), train)
    }
}

/// A residual BasicBlock.
#[derive(Debug)]
pub struct Block {
    /// First 3×3 conv (carries the block's stride).
    pub conv1: ConvBn,
    /// Second 3×3 conv.
    pub conv2: ConvBn,
    /// 1×1 projection shortcut when the shape changes.
    pub shortcut: Option<ConvBn>,
    /// Stride of conv1 and the shortcut.
    pub stride: i64,
    /// Index of the site after conv1.
    pub site1: usize,
    /// Index of the site after the add.
    pub site2: usize,
}

/// A ResNet-family network with masked activation sites.
#[derive(Debug)]
pub struct Network {
    /// Its shape.
    pub spec: ArchSpec,
    /// Parameters, batch-norm statistics and masks.
    pub vs: nn::VarStore,
    /// Stem conv + BN.
    pub stem: ConvBn,
    /// Blocks of all stages, in order.
    pub blocks: Vec<Block>,
    /// Classifier.
    pub fc: nn::Linear,
    /// Activation sites in order.
    pub sites: Vec<Site>,
}

impl Network {
    /// Builds a freshly initialised all-ReLU network on `device`.
    pub fn new(spec: &ArchSpec, device: Device) -> Network {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let layouts = spec.site_layout();
        let sites: Vec<Site> = layouts
            .into_iter()
            .map(|layout| {
                let (path, leaf) = nested(&root / "masks", &layout.name);
                let mask = path.ones_no_train(leaf, &layout.shape);
                let kept = layout.numel();
                Site {
                    layout,
                    mask,
                    alpha: None,
                    kept,
                }
            })
            .collect();
        let stem = ConvBn::new(&root, "conv1", "bn1", 3, spec.stem_width, 3, 1);
        let mut blocks = Vec::new();
        let mut cin = spec.stem_width;
        let mut site = 1;
        for (s, (&n, &w)) in spec.blocks.iter().zip(&spec.widths).enumerate() {
            for b in 0..n {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                let p = &root / format!("layer{}", s + 1) / b;
                let shortcut = (stride != 1 || cin != w)
                    .then(|| ConvBn::new(&(&p / "shortcut"), "0", "1", cin, w, 1, stride));
                blocks.push(Block {
                    conv1: ConvBn::new(&p, "conv1", "bn1", cin, w, 3, stride),
                    conv2: ConvBn::new(&p, "conv2", "bn2", w, w, 3, 1),
                    shortcut,
                    stride,
                    site1: site,
                    site2: site + 1,
                });
                site += 2;
                cin = w;
            }
        }
        let fc = nn::linear(&root / "linear", cin, spec.classes, Default::default());
        Network {
            spec: spec.clone(),
            vs,
            stem,
            blocks,
            fc,
            sites,
        }
    }

    /// Forward pass; `train` selects batch statistics for BN.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = self.sites[0].forward(&self.stem.forward_t(x, train));
        for b in &self.blocks {
            let y = self.sites[b.site1].forward(&b.conv1.forward_t(&h, train));
            let y = b.conv2.forward_t(&y, train);
            let short = match &b.shortcut {
                Some(s) => s.forward_t(&h, train),
                None => h.shallow_clone(),
            };
            h = self.sites[b.site2].forward(&(y + short));
        }
        h.adaptive_avg_pool2d([1, 1]).flatten(1, -1).apply(&self.fc)
    }

    /// Kept ReLUs over all sites.
    pub fn relu_count(&self) -> i64 {
        self.sites.iter().map(|s| s.kept).sum()
    }

    /// Replaces site `i`'s mask (values must be 0 or 1, shape `[C,H,W]`).
    pub fn set_mask(&mut self, i: usize, mask: &Tensor) {
        let site = &mut self.sites[i];
        tch::no_grad(|| site.mask.copy_(&mask.to_kind(Kind::Float)));
        site.refresh();
    }

    /// Sets every element of site `i` to kept (`true`) or dropped.
    pub fn fill_site(&mut self, i: usize, keep: bool) {
        let site = &mut self.sites[i];
        tch::no_grad(|| {
            let _ = site.mask.fill_(if keep { 1.0 } else { 0.0 });
        });
        site.refresh();
    }

    /// Kept ReLUs per stage (index 0 = stem).
    pub fn relus_per_stage(&self) -> Vec<i64> {
        let stages = self.spec.blocks.len() + 1;
        let mut out = vec![0; stages];
        for s in &self.sites {
            out[s.layout.stage] += s.kept;
        }
        out
    }

    /// Adds learnable SNL coefficients `α` (initialised to the current mask)
    /// to every site, in optimiser group 1 of the store.
    pub fn attach_alphas(&mut self) {
        let root = self.vs.root().set_group(1);
        for site in &mut self.sites {
            let (path, leaf) = nested(&root / "alphas", &site.layout.name);
            let a = path.var_copy(leaf, &site.mask);
            site.alpha = Some(a);
        }
    }

    /// Removes the SNL coefficients (masks are left as they are).
    pub fn detach_alphas(&mut self) {
        for site in &mut self.sites {
            if let Some(a) = site.alpha.take() {
                let _ = a.set_requires_grad(false);
            }
        }
    }

    /// Sum of `|α|` over all sites (the lasso penalty), or `None` without alphas.
    pub fn alpha_l1(&self) -> Option<Tensor> {
        let terms: Vec<Tensor> = self
            .sites
            .iter()
            .filter_map(|s| s.alpha.as_ref().map(|a| a.abs().sum(Kind::Float)))
            .collect();
        (!terms.is_empty()).then(|| Tensor::stack(&terms, 0).sum(Kind::Float))
    }

    /// Clamps every `α` into `[0, 1]`.
    pub fn clamp_alphas(&self) {
        tch::no_grad(|| {
            for s in &self.sites {
                if let Some(a) = &s.alpha {
                    let mut a = a.shallow_clone();
                    let _ = a.clamp_(0.0, 1.0);
                }
            }
        });
    }

    /// Copies the weights (not the masks) of `src`, which must have the same spec.
    pub fn copy_weights_from(&mut self, src: &Network) -> Result<(), tch::TchError> {
        let src_vars = src.vs.variables();
        let mut dst_vars = self.vs.variables();
        tch::no_grad(|| {
            for (name, dst) in dst_vars.iter_mut() {
                if name.starts_with("masks.") || name.starts_with("alphas.") {
                    continue;
                }
                if let Some(s) = src_vars.get(name) {
                    dst.copy_(s);
                }
            }
        });
        Ok(())
    }

    /// Loads a store file written by [`Network::save`] and refreshes the mask counts.
    pub fn load(&mut self, path: &std::path::Path) -> Result<(), tch::TchError> {
        self.vs.load(path)?;
        for s in &mut self.sites {
            s.refresh();
        }
        Ok(())
    }

    /// Saves parameters, BN statistics and masks.
    pub fn save(&self, path: &std::path::Path) -> Result<(), tch::TchError> {
        self.vs.save(path)
    }
}
