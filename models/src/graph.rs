//! The network description: a typed graph of ops in topological order.
//!
//! A [`Network`] is a list of [`Node`]s; node 0 is the [`Op::Input`] and every
//! other node names its inputs by index (always smaller than its own), so
//! residual adds are plain nodes with two inputs. Every node records the
//! shape `(C, H, W)` of its output; a flattened vector of `n` features has
//! shape `(n, 1, 1)`.
//!
//! Activation [`Site`]s carry a per-element mask (1 = ReLU, 0 = replaced);
//! replaced elements are the identity, or the channel's polynomial
//! `a2·x² + a1·x + a0` when the site has [`PolyCoeffs`]. The order of
//! [`Network::sites`] (node order) is THE site order that server, client,
//! counter and exporter all use.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;
use serde::{Deserialize, Serialize};

use crate::arch::ArchSpec;
use crate::error::{ModelError, Result};

/// Shape of a feature map: channels, height, width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FeatureShape {
    /// Channels.
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
}

impl FeatureShape {
    /// A shape.
    pub const fn new(c: usize, h: usize, w: usize) -> Self {
        Self { c, h, w }
    }

    /// Number of elements `C·H·W`.
    pub fn len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// True when some dimension is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Spatial size `H·W`.
    pub fn plane(&self) -> usize {
        self.h * self.w
    }

    /// As a `[C, H, W]` tensor shape.
    pub fn dims(&self) -> Vec<usize> {
        vec![self.c, self.h, self.w]
    }
}

impl std::fmt::Display for FeatureShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}", self.c, self.h, self.w)
    }
}

/// A dense f32 tensor in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values.
    pub data: Vec<f32>,
}

impl Tensor {
    /// A zero tensor.
    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Self {
            shape,
            data: vec![0.0; n],
        }
    }

    /// A tensor filled with `value`.
    pub fn full(shape: Vec<usize>, value: f32) -> Self {
        let n = shape.iter().product();
        Self {
            shape,
            data: vec![value; n],
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True for a tensor without elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Batch normalisation parameters (PyTorch semantics, eval mode).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNorm {
    /// Module path, e.g. `layer1.0.bn1`.
    pub name: String,
    /// `weight` (γ).
    pub gamma: Vec<f32>,
    /// `bias` (β).
    pub beta: Vec<f32>,
    /// `running_mean`.
    pub running_mean: Vec<f32>,
    /// `running_var`.
    pub running_var: Vec<f32>,
    /// ε (PyTorch default 1e-5).
    pub eps: f32,
}

impl BatchNorm {
    /// Identity-initialised batch norm over `channels`.
    pub fn identity(name: impl Into<String>, channels: usize) -> Self {
        Self {
            name: name.into(),
            gamma: vec![1.0; channels],
            beta: vec![0.0; channels],
            running_mean: vec![0.0; channels],
            running_var: vec![1.0; channels],
            eps: 1e-5,
        }
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.gamma.len()
    }

    /// Per-channel `(scale, shift)` with `bn(x) = scale·x + shift`, computed in f64.
    pub fn affine(&self) -> (Vec<f64>, Vec<f64>) {
        let mut scale = Vec::with_capacity(self.channels());
        let mut shift = Vec::with_capacity(self.channels());
        for c in 0..self.channels() {
            let s = self.gamma[c] as f64 / (self.running_var[c] as f64 + self.eps as f64).sqrt();
            scale.push(s);
            shift.push(self.beta[c] as f64 - self.running_mean[c] as f64 * s);
        }
        (scale, shift)
    }
}

/// A 2-D convolution, optionally followed by a batch norm that inference folds in.
#[derive(Debug, Clone, PartialEq)]
pub struct Conv2d {
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Square kernel size.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub padding: usize,
    /// Groups (`cin` and `cout` are multiples of it).
    pub groups: usize,
    /// Weights `[cout, cin/groups, kernel, kernel]`.
    pub weight: Tensor,
    /// Optional bias `[cout]`.
    pub bias: Option<Vec<f32>>,
    /// Batch norm applied to the output (folded for inference).
    pub bn: Option<BatchNorm>,
}

impl Conv2d {
    /// Output spatial size for an input of `h × w`.
    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        (
            (h + 2 * self.padding - self.kernel) / self.stride + 1,
            (w + 2 * self.padding - self.kernel) / self.stride + 1,
        )
    }

    /// Weights and bias with the batch norm folded in (f64):
    /// `w' = w·s`, `b' = b·s + shift`, per output channel.
    pub fn folded(&self) -> (Vec<f64>, Vec<f64>) {
        let per_out = self.weight.len() / self.cout.max(1);
        let bias: Vec<f64> = match &self.bias {
            Some(b) => b.iter().map(|&v| v as f64).collect(),
            None => vec![0.0; self.cout],
        };
        match &self.bn {
            None => (self.weight.data.iter().map(|&v| v as f64).collect(), bias),
            Some(bn) => {
                let (scale, shift) = bn.affine();
                let mut w = Vec::with_capacity(self.weight.len());
                for (i, &v) in self.weight.data.iter().enumerate() {
                    w.push(v as f64 * scale[i / per_out]);
                }
                let b = (0..self.cout)
                    .map(|o| bias[o] * scale[o] + shift[o])
                    .collect();
                (w, b)
            }
        }
    }
}

/// A fully connected layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// Weights `[out, in]`.
    pub weight: Tensor,
    /// Bias `[out]`.
    pub bias: Vec<f32>,
}

/// Per-channel coefficients of the replacement polynomial `a2·x² + a1·x + a0`.
#[derive(Debug, Clone, PartialEq)]
pub struct PolyCoeffs {
    /// Quadratic coefficient per channel.
    pub a2: Vec<f32>,
    /// Linear coefficient per channel.
    pub a1: Vec<f32>,
    /// Constant per channel.
    pub a0: Vec<f32>,
}

/// What an activation site is, for the counting conventions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteRole {
    /// The stem's ReLU (SNL does not count it).
    Stem,
    /// A ReLU inside a block or a plain conv layer.
    Body,
    /// The final BN-ReLU before pooling of pre-activation networks (WRN).
    Final,
}

/// An activation site: the nonlinearity after a linear layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    /// Stable name, e.g. `layer2.1.relu1`.
    pub name: String,
    /// Stage index: 0 = stem, 1.. = stages, `None` for sites outside stages.
    pub stage: Option<usize>,
    /// Block index within the stage, if any.
    pub block: Option<usize>,
    /// Role for the counting conventions.
    pub role: SiteRole,
    /// Shape of the site's input and output.
    pub shape: FeatureShape,
    /// Per element (C·H·W, row-major): 1 = ReLU, 0 = replaced.
    pub mask: Vec<u8>,
    /// Polynomial replacing the masked-out elements; identity when `None`.
    pub poly: Option<PolyCoeffs>,
}

impl Site {
    /// Number of elements that keep their ReLU.
    pub fn relu_count(&self) -> u64 {
        self.mask.iter().filter(|&&m| m == 1).count() as u64
    }

    /// Sets every element's mask to `value` (1 = ReLU, 0 = replaced).
    pub fn fill_mask(&mut self, value: u8) {
        self.mask.iter_mut().for_each(|m| *m = value);
    }

    /// Checks that mask and coefficients fit the site.
    pub fn validate(&self) -> Result<()> {
        if self.mask.len() != self.shape.len() {
            return Err(ModelError::Site {
                site: self.name.clone(),
                reason: format!(
                    "mask has {} elements, expected {} ({})",
                    self.mask.len(),
                    self.shape.len(),
                    self.shape
                ),
            });
        }
        if let Some(i) = self.mask.iter().position(|&m| m > 1) {
            return Err(ModelError::Site {
                site: self.name.clone(),
                reason: format!("mask element {i} is {}, expected 0 or 1", self.mask[i]),
            });
        }
        if let Some(p) = &self.poly {
            for (n, v) in [("a2", &p.a2), ("a1", &p.a1), ("a0", &p.a0)] {
                if v.len() != self.shape.c {
                    return Err(ModelError::Site {
                        site: self.name.clone(),
                        reason: format!(
                            "polynomial coefficient {n} has {} values, expected one per channel ({})",
                            v.len(),
                            self.shape.c
                        ),
                    });
                }
                if v.iter().any(|x| !x.is_finite()) {
                    return Err(ModelError::Site {
                        site: self.name.clone(),
                        reason: format!("polynomial coefficient {n} is not finite"),
                    });
                }
            }
        }
        Ok(())
    }
}

/// One operation of the graph.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// The network input (node 0 only).
    Input,
    /// Convolution (+ folded batch norm).
    Conv2d(Conv2d),
    /// A batch norm not preceded by a convolution (pre-activation networks).
    BatchNorm(BatchNorm),
    /// Fully connected layer on a flattened input.
    Linear(Linear),
    /// Average pooling with a square window.
    AvgPool {
        /// Window size.
        kernel: usize,
        /// Stride.
        stride: usize,
    },
    /// Average over the whole spatial plane, output `(C, 1, 1)`.
    GlobalAvgPool,
    /// Max pooling with a square window (`kernel·kernel − 1` comparisons per output).
    MaxPool {
        /// Window size.
        kernel: usize,
        /// Stride.
        stride: usize,
    },
    /// Element-wise sum of two inputs (residual connection).
    Add,
    /// The channel range `start..start + len` of its one input (same `H×W`):
    /// `(C, H, W)` to `(len, H, W)`. No arithmetic: free on additive shares,
    /// and its output keeps the input's fixed-point scale.
    Slice {
        /// First channel taken.
        start: usize,
        /// Number of channels taken (at least 1).
        len: usize,
    },
    /// Channel concatenation of two or more inputs with the same `H×W`, in
    /// input order: `(C_1 + … + C_k, H, W)`. No arithmetic but exact scale
    /// lifts (see `reference::EncodedNetwork::concat_lifts`): free on shares.
    Concat,
    /// `(C, H, W)` to `(C·H·W, 1, 1)`.
    Flatten,
    /// Activation site.
    Site(Site),
}

impl Op {
    /// Short kind name.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input => "input",
            Op::Conv2d(_) => "conv2d",
            Op::BatchNorm(_) => "batchnorm",
            Op::Linear(_) => "linear",
            Op::AvgPool { .. } => "avgpool",
            Op::GlobalAvgPool => "global_avgpool",
            Op::MaxPool { .. } => "maxpool",
            Op::Add => "add",
            Op::Slice { .. } => "slice",
            Op::Concat => "concat",
            Op::Flatten => "flatten",
            Op::Site(_) => "site",
        }
    }
}

/// A node: an op, its inputs (indices of earlier nodes) and its output shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Module path (`layer1.0.conv1`) or site name.
    pub name: String,
    /// The operation.
    pub op: Op,
    /// Indices of input nodes, all smaller than this node's index.
    pub inputs: Vec<usize>,
    /// Output shape.
    pub shape: FeatureShape,
}

/// Whether a linear layer is a convolution or a fully connected layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinearKind {
    /// 2-D convolution.
    Conv,
    /// Fully connected.
    Fc,
}

/// Everything the homomorphic layer needs to know about one linear layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinearLayerInfo {
    /// Node index.
    pub node: usize,
    /// Module path.
    pub name: String,
    /// Convolution or fully connected.
    pub kind: LinearKind,
    /// Input channels (features for FC).
    pub cin: usize,
    /// Output channels (features for FC).
    pub cout: usize,
    /// Input height (1 for FC).
    pub in_h: usize,
    /// Input width (1 for FC).
    pub in_w: usize,
    /// Kernel size (1 for FC).
    pub kernel: usize,
    /// Stride (1 for FC).
    pub stride: usize,
    /// Padding (0 for FC).
    pub padding: usize,
    /// Groups (1 for FC).
    pub groups: usize,
    /// Output height (1 for FC).
    pub out_h: usize,
    /// Output width (1 for FC).
    pub out_w: usize,
    /// For an FC fed by global average pooling: the un-pooled `(C, H, W)`
    /// shape whose plane the pool sums (its `1/(H·W)` is folded into the FC weights).
    pub pooled_from: Option<FeatureShape>,
}

impl LinearLayerInfo {
    /// Multiply-accumulates of the layer (per inference).
    pub fn macs(&self) -> u64 {
        (self.cout * self.out_h * self.out_w) as u64
            * ((self.cin / self.groups) * self.kernel * self.kernel) as u64
    }
}

/// A network: architecture, input and the op graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    /// Display name, e.g. `resnet18`.
    pub name: String,
    /// The architecture it was built from.
    pub arch: ArchSpec,
    /// Input shape.
    pub input: FeatureShape,
    /// Number of classes (logits).
    pub num_classes: usize,
    /// Nodes in topological order; node 0 is the input.
    pub nodes: Vec<Node>,
}

impl Network {
    /// The activation sites, in THE site order.
    pub fn sites(&self) -> impl Iterator<Item = &Site> {
        self.nodes.iter().filter_map(|n| match &n.op {
            Op::Site(s) => Some(s),
            _ => None,
        })
    }

    /// Mutable sites, same order.
    pub fn sites_mut(&mut self) -> impl Iterator<Item = &mut Site> {
        self.nodes.iter_mut().filter_map(|n| match &mut n.op {
            Op::Site(s) => Some(s),
            _ => None,
        })
    }

    /// The site called `name`.
    pub fn site(&self, name: &str) -> Option<&Site> {
        self.sites().find(|s| s.name == name)
    }

    /// The site called `name`, mutably.
    pub fn site_mut(&mut self, name: &str) -> Option<&mut Site> {
        self.sites_mut().find(|s| s.name == name)
    }

    /// Indices of the nodes that read node `i`.
    pub fn consumers(&self, i: usize) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&j| self.nodes[j].inputs.contains(&i))
            .collect()
    }

    /// For a `Linear` node fed (through `Flatten`) by a `GlobalAvgPool`: the pool's input shape.
    pub fn pooled_input_of(&self, linear: usize) -> Option<FeatureShape> {
        let flat = *self.nodes.get(linear)?.inputs.first()?;
        let flat_node = &self.nodes[flat];
        let pool = match flat_node.op {
            Op::Flatten => *flat_node.inputs.first()?,
            Op::GlobalAvgPool => flat,
            _ => return None,
        };
        let pool_node = &self.nodes[pool];
        if !matches!(pool_node.op, Op::GlobalAvgPool) || self.consumers(pool).len() != 1 {
            return None;
        }
        let src = *pool_node.inputs.first()?;
        Some(self.nodes[src].shape)
    }

    /// The linear layers (convolutions and FC) in node order, with full shape information.
    pub fn linear_layers(&self) -> Vec<LinearLayerInfo> {
        let mut out = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            match &node.op {
                Op::Conv2d(c) => {
                    let src = self.nodes[node.inputs[0]].shape;
                    out.push(LinearLayerInfo {
                        node: i,
                        name: node.name.clone(),
                        kind: LinearKind::Conv,
                        cin: c.cin,
                        cout: c.cout,
                        in_h: src.h,
                        in_w: src.w,
                        kernel: c.kernel,
                        stride: c.stride,
                        padding: c.padding,
                        groups: c.groups,
                        out_h: node.shape.h,
                        out_w: node.shape.w,
                        pooled_from: None,
                    });
                }
                Op::Linear(l) => out.push(LinearLayerInfo {
                    node: i,
                    name: node.name.clone(),
                    kind: LinearKind::Fc,
                    cin: l.in_features,
                    cout: l.out_features,
                    in_h: 1,
                    in_w: 1,
                    kernel: 1,
                    stride: 1,
                    padding: 0,
                    groups: 1,
                    out_h: 1,
                    out_w: 1,
                    pooled_from: self.pooled_input_of(i),
                }),
                _ => {}
            }
        }
        out
    }

    /// Number of trainable parameters (conv/linear weights and biases, batch-norm γ and β).
    pub fn params(&self) -> u64 {
        let mut n = 0u64;
        for node in &self.nodes {
            match &node.op {
                Op::Conv2d(c) => {
                    n += c.weight.len() as u64;
                    n += c.bias.as_ref().map_or(0, |b| b.len() as u64);
                    n += c.bn.as_ref().map_or(0, |b| 2 * b.channels() as u64);
                }
                Op::BatchNorm(b) => n += 2 * b.channels() as u64,
                Op::Linear(l) => n += (l.weight.len() + l.bias.len()) as u64,
                _ => {}
            }
        }
        n
    }

    /// Checks the graph's structure, shapes, weights and masks.
    pub fn validate(&self) -> Result<()> {
        let err = |i: usize, reason: String| ModelError::Graph {
            node: i,
            name: self.nodes.get(i).map_or(String::new(), |n| n.name.clone()),
            reason,
        };
        if self.input.is_empty() {
            return Err(ModelError::InvalidSize {
                what: "input shape".into(),
                value: self.input.to_string(),
                expected: "all dimensions positive".into(),
            });
        }
        if self.num_classes == 0 {
            return Err(ModelError::InvalidSize {
                what: "num_classes".into(),
                value: "0".into(),
                expected: "at least 1".into(),
            });
        }
        match self.nodes.first() {
            Some(n) if matches!(n.op, Op::Input) && n.shape == self.input => {}
            _ => {
                return Err(err(
                    0,
                    "node 0 must be the input with the input shape".into(),
                ))
            }
        }
        for (i, node) in self.nodes.iter().enumerate().skip(1) {
            let (want_inputs, ok) = match node.op {
                Op::Input => return Err(err(i, "only node 0 may be an input".into())),
                Op::Add => ("2", node.inputs.len() == 2),
                Op::Concat => ("at least 2", node.inputs.len() >= 2),
                _ => ("1", node.inputs.len() == 1),
            };
            if !ok {
                return Err(err(
                    i,
                    format!(
                        "{} has {} inputs, expected {want_inputs}",
                        node.op.kind(),
                        node.inputs.len()
                    ),
                ));
            }
            if let Some(&bad) = node.inputs.iter().find(|&&j| j >= i) {
                return Err(err(i, format!("input {bad} is not an earlier node")));
            }
            let src = self.nodes[node.inputs[0]].shape;
            let expect = match &node.op {
                // Rejected above.
                Op::Input => src,
                Op::Conv2d(c) => {
                    if c.groups == 0 || c.cin % c.groups != 0 || c.cout % c.groups != 0 {
                        return Err(err(
                            i,
                            format!(
                                "groups {} must divide cin {} and cout {}",
                                c.groups, c.cin, c.cout
                            ),
                        ));
                    }
                    if c.kernel == 0
                        || c.stride == 0
                        || src.h + 2 * c.padding < c.kernel
                        || src.w + 2 * c.padding < c.kernel
                    {
                        return Err(err(
                            i,
                            format!(
                                "kernel {} stride {} padding {} does not fit input {src}",
                                c.kernel, c.stride, c.padding
                            ),
                        ));
                    }
                    if src.c != c.cin {
                        return Err(err(
                            i,
                            format!("input has {} channels, conv expects {}", src.c, c.cin),
                        ));
                    }
                    let wshape = vec![c.cout, c.cin / c.groups, c.kernel, c.kernel];
                    if c.weight.shape != wshape
                        || c.weight.data.len() != wshape.iter().product::<usize>()
                    {
                        return Err(err(
                            i,
                            format!("weight shape {:?}, expected {wshape:?}", c.weight.shape),
                        ));
                    }
                    if c.bias.as_ref().is_some_and(|b| b.len() != c.cout) {
                        return Err(err(i, format!("bias length differs from cout {}", c.cout)));
                    }
                    if let Some(bn) = &c.bn {
                        check_bn(bn, c.cout).map_err(|r| err(i, r))?;
                    }
                    let (h, w) = c.out_hw(src.h, src.w);
                    FeatureShape::new(c.cout, h, w)
                }
                Op::BatchNorm(bn) => {
                    check_bn(bn, src.c).map_err(|r| err(i, r))?;
                    src
                }
                Op::Linear(l) => {
                    if src.len() != l.in_features {
                        return Err(err(
                            i,
                            format!(
                                "input has {} features, linear expects {}",
                                src.len(),
                                l.in_features
                            ),
                        ));
                    }
                    if l.weight.shape != vec![l.out_features, l.in_features]
                        || l.weight.data.len() != l.out_features * l.in_features
                        || l.bias.len() != l.out_features
                    {
                        return Err(err(
                            i,
                            format!(
                                "weight shape {:?} / bias {} do not match {}x{}",
                                l.weight.shape,
                                l.bias.len(),
                                l.out_features,
                                l.in_features
                            ),
                        ));
                    }
                    FeatureShape::new(l.out_features, 1, 1)
                }
                Op::AvgPool { kernel, stride } | Op::MaxPool { kernel, stride } => {
                    if *kernel == 0 || *stride == 0 || src.h < *kernel || src.w < *kernel {
                        return Err(err(
                            i,
                            format!(
                                "pool kernel {kernel} stride {stride} does not fit input {src}"
                            ),
                        ));
                    }
                    FeatureShape::new(
                        src.c,
                        (src.h - kernel) / stride + 1,
                        (src.w - kernel) / stride + 1,
                    )
                }
                Op::GlobalAvgPool => FeatureShape::new(src.c, 1, 1),
                Op::Add => {
                    let other = self.nodes[node.inputs[1]].shape;
                    if other != src {
                        return Err(err(i, format!("adds shapes {src} and {other}")));
                    }
                    src
                }
                Op::Slice { start, len } => {
                    if *len == 0 || start.checked_add(*len).is_none_or(|end| end > src.c) {
                        return Err(err(
                            i,
                            format!(
                                "slice of channels {start}..{} does not fit its input {src} \
                                 (needs 1 ≤ len and start + len ≤ {})",
                                start.saturating_add(*len),
                                src.c
                            ),
                        ));
                    }
                    FeatureShape::new(*len, src.h, src.w)
                }
                Op::Concat => {
                    let mut c = 0usize;
                    for (k, &j) in node.inputs.iter().enumerate() {
                        let s = self.nodes[j].shape;
                        if (s.h, s.w) != (src.h, src.w) {
                            return Err(err(
                                i,
                                format!(
                                    "concat input {k} (node {j}, {}) is {s}, input 0 is {src}: \
                                     the planes differ",
                                    self.nodes[j].name
                                ),
                            ));
                        }
                        c += s.c;
                    }
                    FeatureShape::new(c, src.h, src.w)
                }
                Op::Flatten => FeatureShape::new(src.len(), 1, 1),
                Op::Site(s) => {
                    if s.shape != src {
                        return Err(err(
                            i,
                            format!("site shape {} differs from its input {src}", s.shape),
                        ));
                    }
                    s.validate()?;
                    src
                }
            };
            if expect != node.shape {
                return Err(err(
                    i,
                    format!("output shape {} differs from computed {expect}", node.shape),
                ));
            }
        }
        let last = self.nodes.last().map(|n| n.shape);
        if last != Some(FeatureShape::new(self.num_classes, 1, 1)) {
            return Err(err(
                self.nodes.len() - 1,
                format!("network output must be {} logits", self.num_classes),
            ));
        }
        Ok(())
    }
}

fn check_bn(bn: &BatchNorm, channels: usize) -> std::result::Result<(), String> {
    for (n, v) in [
        ("weight", &bn.gamma),
        ("bias", &bn.beta),
        ("running_mean", &bn.running_mean),
        ("running_var", &bn.running_var),
    ] {
        if v.len() != channels {
            return Err(format!(
                "batch norm {}.{n} has {} values, expected {channels}",
                bn.name,
                v.len()
            ));
        }
    }
    if bn.running_var.iter().any(|&v| v.is_nan() || v < 0.0) || bn.eps.is_nan() || bn.eps <= 0.0 {
        return Err(format!(
            "batch norm {} has a negative/NaN running_var or eps",
            bn.name
        ));
    }
    Ok(())
}

/// How a builder initialises weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// All weights zero, batch norms identity (structure only, e.g. before loading a file).
    Zeros,
    /// He-normal-like random weights and perturbed batch-norm statistics from a ChaCha seed.
    Seeded(u64),
}

/// Builds a [`Network`] node by node, computing shapes and initialising weights.
#[derive(Debug)]
pub struct GraphBuilder {
    nodes: Vec<Node>,
    rng: Option<ChaCha12Rng>,
}

impl GraphBuilder {
    /// Starts a graph with the input node.
    pub fn new(input: FeatureShape, init: Init) -> Self {
        Self {
            nodes: vec![Node {
                name: "input".into(),
                op: Op::Input,
                inputs: vec![],
                shape: input,
            }],
            rng: match init {
                Init::Zeros => None,
                Init::Seeded(s) => Some(ChaCha12Rng::seed_from_u64(s)),
            },
        }
    }

    /// Index of the input node (0).
    pub fn input(&self) -> usize {
        0
    }

    /// Output shape of node `i`.
    pub fn shape(&self, i: usize) -> FeatureShape {
        self.nodes[i].shape
    }

    fn push(&mut self, name: String, op: Op, inputs: Vec<usize>, shape: FeatureShape) -> usize {
        self.nodes.push(Node {
            name,
            op,
            inputs,
            shape,
        });
        self.nodes.len() - 1
    }

    fn uniform(&mut self, n: usize, bound: f32) -> Vec<f32> {
        match &mut self.rng {
            None => vec![0.0; n],
            Some(r) => (0..n).map(|_| r.gen_range(-bound..bound)).collect(),
        }
    }

    fn batchnorm_params(&mut self, name: String, c: usize) -> BatchNorm {
        let mut bn = BatchNorm::identity(name, c);
        if let Some(r) = &mut self.rng {
            for i in 0..c {
                bn.gamma[i] = r.gen_range(0.6..1.4);
                bn.beta[i] = r.gen_range(-0.2..0.2);
                bn.running_mean[i] = r.gen_range(-0.2..0.2);
                bn.running_var[i] = r.gen_range(0.6..1.6);
            }
        }
        bn
    }

    /// Adds a convolution (no bias) with an optional batch norm named `bn`.
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        &mut self,
        name: &str,
        input: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        groups: usize,
        bn: Option<&str>,
    ) -> usize {
        let src = self.shape(input);
        let fan_in = (src.c / groups.max(1)) * kernel * kernel;
        let bound = (6.0 / fan_in.max(1) as f32).sqrt();
        let weight = Tensor {
            shape: vec![cout, src.c / groups.max(1), kernel, kernel],
            data: self.uniform(cout * fan_in, bound),
        };
        let bn = bn.map(|n| self.batchnorm_params(n.to_string(), cout));
        let conv = Conv2d {
            cin: src.c,
            cout,
            kernel,
            stride,
            padding,
            groups,
            weight,
            bias: None,
            bn,
        };
        let (h, w) = if src.h + 2 * padding >= kernel && stride > 0 {
            conv.out_hw(src.h, src.w)
        } else {
            (0, 0)
        };
        self.push(
            name.into(),
            Op::Conv2d(conv),
            vec![input],
            FeatureShape::new(cout, h, w),
        )
    }

    /// Gives convolution node `conv` a (random or zero) bias; no-op for other nodes.
    pub fn add_conv_bias(&mut self, conv: usize) {
        let cout = self.shape(conv).c;
        let bias = self.uniform(cout, 0.1);
        if let Some(Op::Conv2d(c)) = self.nodes.get_mut(conv).map(|n| &mut n.op) {
            c.bias = Some(bias);
        }
    }

    /// Adds a standalone batch norm.
    pub fn batchnorm(&mut self, name: &str, input: usize) -> usize {
        let src = self.shape(input);
        let bn = self.batchnorm_params(name.into(), src.c);
        self.push(name.into(), Op::BatchNorm(bn), vec![input], src)
    }

    /// Adds an activation site with every element a ReLU.
    pub fn site(
        &mut self,
        name: &str,
        input: usize,
        stage: Option<usize>,
        block: Option<usize>,
        role: SiteRole,
    ) -> usize {
        let shape = self.shape(input);
        let site = Site {
            name: name.into(),
            stage,
            block,
            role,
            shape,
            mask: vec![1; shape.len()],
            poly: None,
        };
        self.push(name.into(), Op::Site(site), vec![input], shape)
    }

    /// Adds an activation site with every element the identity (mask 0): a
    /// fixed-point truncation point without ReLUs (as culled and thinned
    /// sites are).
    pub fn identity_site(
        &mut self,
        name: &str,
        input: usize,
        stage: Option<usize>,
        block: Option<usize>,
        role: SiteRole,
    ) -> usize {
        let i = self.site(name, input, stage, block, role);
        if let Op::Site(s) = &mut self.nodes[i].op {
            s.fill_mask(0);
        }
        i
    }

    /// Adds a residual sum.
    pub fn add(&mut self, name: &str, a: usize, b: usize) -> usize {
        let shape = self.shape(a);
        self.push(name.into(), Op::Add, vec![a, b], shape)
    }

    /// Adds a channel slice `start..start + len` of `input` (a range that
    /// does not fit is refused by validation, naming the node).
    pub fn slice(&mut self, name: &str, input: usize, start: usize, len: usize) -> usize {
        let s = self.shape(input);
        self.push(
            name.into(),
            Op::Slice { start, len },
            vec![input],
            FeatureShape::new(len, s.h, s.w),
        )
    }

    /// Adds a channel concatenation of `inputs` (in order; planes that
    /// differ are refused by validation, naming the node).
    pub fn concat(&mut self, name: &str, inputs: &[usize]) -> usize {
        let c = inputs.iter().map(|&j| self.shape(j).c).sum();
        let (h, w) = inputs.first().map_or((0, 0), |&j| {
            let s = self.shape(j);
            (s.h, s.w)
        });
        self.push(
            name.into(),
            Op::Concat,
            inputs.to_vec(),
            FeatureShape::new(c, h, w),
        )
    }

    /// Adds an average pool.
    pub fn avgpool(&mut self, name: &str, input: usize, kernel: usize, stride: usize) -> usize {
        self.window_pool(name, input, Op::AvgPool { kernel, stride }, kernel, stride)
    }

    /// Adds a max pool.
    pub fn maxpool(&mut self, name: &str, input: usize, kernel: usize, stride: usize) -> usize {
        self.window_pool(name, input, Op::MaxPool { kernel, stride }, kernel, stride)
    }

    /// A square-window pool `op` (output shape; a window that does not fit gives 0×0, refused by validation).
    fn window_pool(
        &mut self,
        name: &str,
        input: usize,
        op: Op,
        kernel: usize,
        stride: usize,
    ) -> usize {
        let s = self.shape(input);
        let (h, w) = if s.h >= kernel && stride > 0 {
            ((s.h - kernel) / stride + 1, (s.w - kernel) / stride + 1)
        } else {
            (0, 0)
        };
        self.push(name.into(), op, vec![input], FeatureShape::new(s.c, h, w))
    }

    /// Adds a global average pool.
    pub fn global_avgpool(&mut self, name: &str, input: usize) -> usize {
        let s = self.shape(input);
        self.push(
            name.into(),
            Op::GlobalAvgPool,
            vec![input],
            FeatureShape::new(s.c, 1, 1),
        )
    }

    /// Adds a flatten.
    pub fn flatten(&mut self, name: &str, input: usize) -> usize {
        let s = self.shape(input);
        self.push(
            name.into(),
            Op::Flatten,
            vec![input],
            FeatureShape::new(s.len(), 1, 1),
        )
    }

    /// Adds a fully connected layer with bias.
    pub fn linear(&mut self, name: &str, input: usize, out_features: usize) -> usize {
        let n = self.shape(input).len();
        let bound = 1.0 / (n.max(1) as f32).sqrt();
        let weight = Tensor {
            shape: vec![out_features, n],
            data: self.uniform(out_features * n, bound),
        };
        let bias = self.uniform(out_features, bound);
        self.push(
            name.into(),
            Op::Linear(Linear {
                in_features: n,
                out_features,
                weight,
                bias,
            }),
            vec![input],
            FeatureShape::new(out_features, 1, 1),
        )
    }

    /// Finishes the network and validates it.
    pub fn finish(
        self,
        name: impl Into<String>,
        arch: ArchSpec,
        num_classes: usize,
    ) -> Result<Network> {
        let net = Network {
            name: name.into(),
            arch,
            input: self.nodes[0].shape,
            num_classes,
            nodes: self.nodes,
        };
        net.validate()?;
        Ok(net)
    }
}
