//! ReLU, FLOP (multiply-accumulate) and parameter counts.
//!
//! Only mask-1 elements of a site count as ReLUs. Two conventions change
//! which sites count: the stem ReLU (`relu0` of ResNets/HRNs; SNL does not
//! count it) and the final BN-ReLU of pre-activation WRNs.
//!
//! FLOPs are multiply-accumulates of convolutions and fully connected
//! layers. Per site, `flops` is the MACs of the linear layers between the
//! previous site and this one (in node order); the layers after the last
//! site (the classifier) are reported as the head.

use serde::{Deserialize, Serialize};

use crate::graph::{FeatureShape, Network, Op, SiteRole};

/// Which sites count as ReLUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Convention {
    /// Count the stem's ReLU (`relu0`).
    pub stem_relu: bool,
    /// Count the final BN-ReLU of pre-activation networks.
    pub final_relu: bool,
}

impl Default for Convention {
    /// Stem counted, WRN final BN-ReLU not counted.
    fn default() -> Self {
        Self {
            stem_relu: true,
            final_relu: false,
        }
    }
}

impl Convention {
    /// Whether a site with this role counts.
    pub fn counts(&self, role: SiteRole) -> bool {
        match role {
            SiteRole::Stem => self.stem_relu,
            SiteRole::Body => true,
            SiteRole::Final => self.final_relu,
        }
    }
}

/// Counts for one site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteCount {
    /// Site name.
    pub name: String,
    /// Stage (0 = stem).
    pub stage: Option<usize>,
    /// Role.
    pub role: SiteRole,
    /// Shape.
    pub shape: FeatureShape,
    /// Elements `C·H·W`.
    pub elements: u64,
    /// Mask-1 elements (ReLUs), whether or not the convention counts them.
    pub relus: u64,
    /// Whether the convention counts this site.
    pub counted: bool,
    /// MACs of the linear layers feeding this site since the previous one.
    pub flops: u64,
}

/// Counts for one linear layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerCount {
    /// Module path.
    pub name: String,
    /// `conv2d` or `linear`.
    pub kind: String,
    /// Multiply-accumulates.
    pub flops: u64,
    /// Parameters (weights, bias, BN γ/β).
    pub params: u64,
}

/// All counts of a network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// The convention used.
    pub convention: Convention,
    /// Per site, in site order.
    pub sites: Vec<SiteCount>,
    /// Per linear layer, in node order.
    pub layers: Vec<LayerCount>,
    /// MACs after the last site (classifier head).
    pub head_flops: u64,
    /// Counted ReLUs.
    pub relus: u64,
    /// Total MACs.
    pub flops: u64,
    /// Total parameters.
    pub params: u64,
    /// Comparisons of the max pools (`kernel² − 1` per output element),
    /// reported apart from ReLUs as the literature does. Absent (0) in
    /// reports written before max pooling existed.
    #[serde(default)]
    pub max_pool_comparisons: u64,
}

/// Counts a network under a convention.
pub fn count(net: &Network, convention: Convention) -> Counts {
    let infos = net.linear_layers();
    let mut pending = 0u64;
    let mut sites = Vec::new();
    let mut layers = Vec::new();
    let mut info_iter = infos.iter().peekable();
    let mut max_pool_comparisons = 0u64;
    for (i, node) in net.nodes.iter().enumerate() {
        match &node.op {
            Op::MaxPool { kernel, .. } => {
                max_pool_comparisons += node.shape.len() as u64 * (kernel * kernel - 1) as u64;
            }
            Op::Conv2d(c) => {
                let info = info_iter.next().filter(|x| x.node == i);
                let flops = info.map_or(0, |x| x.macs());
                pending += flops;
                let params = c.weight.len() as u64
                    + c.bias.as_ref().map_or(0, |b| b.len() as u64)
                    + c.bn.as_ref().map_or(0, |b| 2 * b.channels() as u64);
                layers.push(LayerCount {
                    name: node.name.clone(),
                    kind: "conv2d".into(),
                    flops,
                    params,
                });
            }
            Op::Linear(l) => {
                let info = info_iter.next().filter(|x| x.node == i);
                let flops = info.map_or(0, |x| x.macs());
                pending += flops;
                layers.push(LayerCount {
                    name: node.name.clone(),
                    kind: "linear".into(),
                    flops,
                    params: (l.weight.len() + l.bias.len()) as u64,
                });
            }
            Op::Site(s) => {
                sites.push(SiteCount {
                    name: s.name.clone(),
                    stage: s.stage,
                    role: s.role,
                    shape: s.shape,
                    elements: s.shape.len() as u64,
                    relus: s.relu_count(),
                    counted: convention.counts(s.role),
                    flops: pending,
                });
                pending = 0;
            }
            _ => {}
        }
    }
    let relus = sites.iter().filter(|s| s.counted).map(|s| s.relus).sum();
    let flops = layers.iter().map(|l| l.flops).sum();
    Counts {
        convention,
        sites,
        layers,
        head_flops: pending,
        relus,
        flops,
        params: net.params(),
        max_pool_comparisons,
    }
}

/// Counted ReLUs of a network under a convention.
pub fn relu_count(net: &Network, convention: Convention) -> u64 {
    net.sites()
        .filter(|s| convention.counts(s.role))
        .map(|s| s.relu_count())
        .sum()
}
