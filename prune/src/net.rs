//! libtorch modules built from the `pibench_models` op graph.
//!
//! [`Net`] takes a [`pibench_models::graph::Network`] — the single
//! definition of every architecture — and registers one libtorch variable
//! per graph tensor under the graph's names (`layer1.0.conv1.weight`,
//! `layer1.0.bn1.running_mean`, `linear.bias`, …), so exporting is a copy
//! back into the same graph and the model file cannot disagree with what was
//! trained. The forward pass walks the op list (a new op is one more match
//! arm) and frees each value after its last use.
//!
//! Every activation [`Site`] has a per-element mask `[C, H, W]` (1 = ReLU,
//! 0 = replaced) stored as the non-trainable variable `masks.<site>`, and
//! optionally per-channel polynomial coefficients `poly.<site>` `[3, C]`
//! (`a2, a1, a0`) for the replaced elements (identity without them). A
//! method may set a continuous gate `g` that takes the mask's place:
//! `y = p(x) + g·(ReLU(x) − p(x))` (SNL's α, AutoReP's straight-through
//! indicator, ReLUPruner's and PrivShap's relaxed gates).
//!
//! Which sites count (and may be pruned) is the run's
//! [`Convention`]; uncounted sites keep the mask they were built with.
//!
//! Mixed precision: [`Net::forward_with`] with `Some(kind)` casts the input,
//! convolution/linear weights (once per forward, like autocast's weight
//! cache) and gates to `kind`; batch norm runs on the low-precision input with
//! fp32 parameters and statistics, the logits are returned in fp32. These are
//! autocast's rules for the ops the graphs use (conv/linear in fp16, BN with
//! fp32 statistics, elementwise ops in the input type). tch 0.24 exposes
//! only the deprecated device-less `at::autocast::is_enabled/set_enabled`
//! (which printed one deprecation warning per call in the previous version),
//! and binding the current device-typed API would need `unsafe` FFI, which
//! this workspace denies; explicit casts need neither.

use std::path::Path;

use pibench_models::count::Convention;
use pibench_models::graph::{
    FeatureShape, Network as Graph, Op, PolyCoeffs, SiteRole, Tensor as GTensor,
};
use tch::nn::{self, Init};
use tch::{Device, Kind, Tensor};
use thiserror::Error;

/// Errors of network construction and conversion.
#[derive(Debug, Error)]
pub enum NetError {
    /// The models crate refused a name or a shape.
    #[error(transparent)]
    Model(#[from] pibench_models::ModelError),
    /// libtorch failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A tensor does not fit.
    #[error("{what}: {reason}")]
    Invalid {
        /// What.
        what: String,
        /// Why.
        reason: String,
    },
}

/// Batch-norm parameters and statistics.
#[derive(Debug)]
struct Bn {
    w: Tensor,
    b: Tensor,
    mean: Tensor,
    var: Tensor,
    eps: f64,
}

impl Bn {
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        x.batch_norm(
            Some(&self.w),
            Some(&self.b),
            Some(&self.mean),
            Some(&self.var),
            train,
            0.1,
            self.eps,
            true,
        )
    }
}

#[derive(Debug)]
enum Layer {
    Input,
    Conv {
        w: Tensor,
        b: Option<Tensor>,
        bn: Option<Bn>,
        stride: i64,
        padding: i64,
        groups: i64,
    },
    Bn(Bn),
    Linear {
        w: Tensor,
        b: Tensor,
    },
    AvgPool {
        k: i64,
        s: i64,
    },
    MaxPool {
        k: i64,
        s: i64,
    },
    Gap,
    Add,
    /// Channels `start..start + len` (`narrow` on dimension 1).
    Slice {
        start: i64,
        len: i64,
    },
    /// Channel concatenation of all inputs (`cat` on dimension 1).
    Concat,
    Flatten,
    Site(usize),
}

/// One activation site.
#[derive(Debug)]
pub struct Site {
    /// Name (the graph's).
    pub name: String,
    /// Graph node index.
    pub node: usize,
    /// Stage (0 = stem).
    pub stage: Option<usize>,
    /// Block within the stage.
    pub block: Option<usize>,
    /// Role for the counting conventions.
    pub role: SiteRole,
    /// `[C, H, W]`.
    pub shape: [i64; 3],
    /// Whether the run's convention counts (and methods may prune) it.
    pub counted: bool,
    /// 0/1 mask `[C, H, W]` (`masks.<name>`).
    pub mask: Tensor,
    /// Polynomial coefficients `[3, C]` for the replaced elements (`poly.<name>`).
    pub poly: Option<Tensor>,
    /// A continuous gate used instead of the mask (broadcast against `[B, C, H, W]`).
    pub gate: Option<Tensor>,
    /// A zero tensor added to the output, whose gradient is `∂L/∂a` (ReLUPruner's importance).
    pub probe: Option<Tensor>,
    kept: i64,
}

impl Site {
    /// Elements `C·H·W`.
    pub fn numel(&self) -> i64 {
        self.shape.iter().product()
    }

    /// Kept ReLUs of the mask.
    pub fn kept(&self) -> i64 {
        self.kept
    }

    fn refresh(&mut self) {
        self.kept = tch::no_grad(|| self.mask.sum(Kind::Float).double_value(&[])).round() as i64;
    }

    /// The replacement `p(x)` of masked-out elements.
    fn replacement(&self, x: &Tensor) -> Tensor {
        match &self.poly {
            None => x.shallow_clone(),
            Some(p) => {
                let p = p.to_kind(x.kind());
                let c = self.shape[0];
                let a2 = p.get(0).view([1, c, 1, 1]);
                let a1 = p.get(1).view([1, c, 1, 1]);
                let a0 = p.get(2).view([1, c, 1, 1]);
                x * x * a2 + x * a1 + a0
            }
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let y = self.forward_inner(x);
        match &self.probe {
            Some(p) => y + p.to_kind(x.kind()),
            None => y,
        }
    }

    fn forward_inner(&self, x: &Tensor) -> Tensor {
        if let Some(g) = &self.gate {
            let lin = self.replacement(x);
            let g = g.to_kind(x.kind());
            return &lin + g * (x.relu() - &lin);
        }
        if self.kept == self.numel() {
            x.relu()
        } else if self.kept == 0 {
            self.replacement(x)
        } else {
            let lin = self.replacement(x);
            &lin + self.mask.to_kind(x.kind()) * (x.relu() - &lin)
        }
    }
}

/// How a [`Net`] initialises its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weights {
    /// Fresh libtorch initialisation (Kaiming-uniform convs/linears, identity BN).
    Fresh,
    /// The graph's own weights (an imported or exported network).
    FromGraph,
}

/// A libtorch module for a graph.
#[derive(Debug)]
pub struct Net {
    /// The graph it was built from (structure, names; weights are in `vs`).
    pub graph: Graph,
    /// Variables: weights, BN statistics, masks, method parameters.
    pub vs: nn::VarStore,
    layers: Vec<Layer>,
    inputs: Vec<Vec<usize>>,
    last_use: Vec<usize>,
    /// Activation sites, in site order.
    pub sites: Vec<Site>,
    /// The run's counting convention.
    pub convention: Convention,
}

/// Splits a dotted name into a store path below `base` and the leaf name.
pub fn nested<'a, 'b>(base: nn::Path<'a>, name: &'b str) -> (nn::Path<'a>, &'b str) {
    let mut parts: Vec<&str> = name.split('.').collect();
    let leaf = parts.pop().unwrap_or(name);
    let path = parts.into_iter().fold(base, |p, part| &p / part);
    (path, leaf)
}

fn dims(shape: &[usize]) -> Vec<i64> {
    shape.iter().map(|&d| d as i64).collect()
}

fn from_vec(v: &[f32], shape: &[i64], device: Device) -> Tensor {
    Tensor::from_slice(v).view(shape).to_device(device)
}

impl Net {
    /// Builds the module for `graph` on `device`, counting sites with `convention`.
    pub fn new(
        graph: &Graph,
        device: Device,
        convention: Convention,
        weights: Weights,
    ) -> Result<Net, NetError> {
        graph.validate()?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let from_graph = weights == Weights::FromGraph;
        let var = |name: &str, shape: &[i64], init: Init, data: Option<&[f32]>| -> Tensor {
            let (p, leaf) = nested(root.clone(), name);
            match (from_graph, data) {
                (true, Some(d)) => p.var_copy(leaf, &from_vec(d, shape, device)),
                _ => p.var(leaf, shape, init),
            }
        };
        let stat = |name: &str, c: i64, fill: f64, data: &[f32]| -> Tensor {
            let (p, leaf) = nested(root.clone(), name);
            let t = if fill == 0.0 {
                p.zeros_no_train(leaf, &[c])
            } else {
                p.ones_no_train(leaf, &[c])
            };
            if from_graph {
                tch::no_grad(|| {
                    let mut t = t.shallow_clone();
                    t.copy_(&from_vec(data, &[c], device));
                });
            }
            t
        };
        let make_bn = |bn: &pibench_models::graph::BatchNorm| -> Bn {
            let c = bn.channels() as i64;
            Bn {
                w: var(
                    &format!("{}.weight", bn.name),
                    &[c],
                    Init::Const(1.0),
                    Some(&bn.gamma),
                ),
                b: var(
                    &format!("{}.bias", bn.name),
                    &[c],
                    Init::Const(0.0),
                    Some(&bn.beta),
                ),
                mean: stat(
                    &format!("{}.running_mean", bn.name),
                    c,
                    0.0,
                    &bn.running_mean,
                ),
                var: stat(&format!("{}.running_var", bn.name), c, 1.0, &bn.running_var),
                eps: bn.eps as f64,
            }
        };
        let mut layers = Vec::with_capacity(graph.nodes.len());
        let mut sites = Vec::new();
        for (i, node) in graph.nodes.iter().enumerate() {
            let layer = match &node.op {
                Op::Input => Layer::Input,
                Op::Conv2d(c) => {
                    let fan_in = (c.cin / c.groups.max(1) * c.kernel * c.kernel) as f64;
                    let bound = 1.0 / fan_in.max(1.0).sqrt();
                    let w = var(
                        &format!("{}.weight", node.name),
                        &dims(&c.weight.shape),
                        nn::init::DEFAULT_KAIMING_UNIFORM,
                        Some(&c.weight.data),
                    );
                    let b = c.bias.as_ref().map(|b| {
                        var(
                            &format!("{}.bias", node.name),
                            &[c.cout as i64],
                            Init::Uniform {
                                lo: -bound,
                                up: bound,
                            },
                            Some(b),
                        )
                    });
                    Layer::Conv {
                        w,
                        b,
                        bn: c.bn.as_ref().map(make_bn),
                        stride: c.stride as i64,
                        padding: c.padding as i64,
                        groups: c.groups as i64,
                    }
                }
                Op::BatchNorm(bn) => Layer::Bn(make_bn(bn)),
                Op::Linear(l) => {
                    let bound = 1.0 / (l.in_features.max(1) as f64).sqrt();
                    Layer::Linear {
                        w: var(
                            &format!("{}.weight", node.name),
                            &[l.out_features as i64, l.in_features as i64],
                            nn::init::DEFAULT_KAIMING_UNIFORM,
                            Some(&l.weight.data),
                        ),
                        b: var(
                            &format!("{}.bias", node.name),
                            &[l.out_features as i64],
                            Init::Uniform {
                                lo: -bound,
                                up: bound,
                            },
                            Some(&l.bias),
                        ),
                    }
                }
                Op::AvgPool { kernel, stride } => Layer::AvgPool {
                    k: *kernel as i64,
                    s: *stride as i64,
                },
                Op::MaxPool { kernel, stride } => Layer::MaxPool {
                    k: *kernel as i64,
                    s: *stride as i64,
                },
                Op::GlobalAvgPool => Layer::Gap,
                Op::Add => Layer::Add,
                Op::Slice { start, len } => Layer::Slice {
                    start: *start as i64,
                    len: *len as i64,
                },
                Op::Concat => Layer::Concat,
                Op::Flatten => Layer::Flatten,
                Op::Site(s) => {
                    let shape = [s.shape.c as i64, s.shape.h as i64, s.shape.w as i64];
                    let (p, leaf) = nested(&root / "masks", &s.name);
                    let mask = p.ones_no_train(leaf, &shape);
                    let m: Vec<f32> = s.mask.iter().map(|&v| v as f32).collect();
                    tch::no_grad(|| {
                        let mut t = mask.shallow_clone();
                        t.copy_(&from_vec(&m, &shape, device));
                    });
                    let poly = s.poly.as_ref().map(|pc| {
                        let (p, leaf) = nested(&root / "poly", &s.name);
                        let mut v = pc.a2.clone();
                        v.extend_from_slice(&pc.a1);
                        v.extend_from_slice(&pc.a0);
                        p.var_copy(leaf, &from_vec(&v, &[3, shape[0]], device))
                    });
                    let mut site = Site {
                        name: s.name.clone(),
                        node: i,
                        stage: s.stage,
                        block: s.block,
                        role: s.role,
                        shape,
                        counted: convention.counts(s.role),
                        mask,
                        poly,
                        gate: None,
                        probe: None,
                        kept: 0,
                    };
                    site.refresh();
                    sites.push(site);
                    Layer::Site(sites.len() - 1)
                }
            };
            layers.push(layer);
        }
        let inputs: Vec<Vec<usize>> = graph.nodes.iter().map(|n| n.inputs.clone()).collect();
        let mut last_use = vec![0usize; graph.nodes.len()];
        for (i, ins) in inputs.iter().enumerate() {
            for &j in ins {
                last_use[j] = i;
            }
        }
        Ok(Net {
            graph: graph.clone(),
            vs,
            layers,
            inputs,
            last_use,
            sites,
            convention,
        })
    }

    /// Input shape.
    pub fn input(&self) -> FeatureShape {
        self.graph.input
    }

    /// Device.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// fp32 forward pass; `train` selects batch statistics for BN (and updates them).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward_with(x, train, None)
    }

    /// Forward pass, optionally in mixed precision (`amp` = fp16 or bf16); logits in fp32.
    pub fn forward_with(&self, x: &Tensor, train: bool, amp: Option<Kind>) -> Tensor {
        self.forward_impl(x, train, amp, &mut |_, _, _| {})
    }

    /// Like [`Net::forward_with`], calling `tap(site index, site input, site output)` at every site.
    pub fn forward_tap(
        &self,
        x: &Tensor,
        train: bool,
        amp: Option<Kind>,
        tap: &mut dyn FnMut(usize, &Tensor, &Tensor),
    ) -> Tensor {
        self.forward_impl(x, train, amp, tap)
    }

    fn forward_impl(
        &self,
        x: &Tensor,
        train: bool,
        amp: Option<Kind>,
        tap: &mut dyn FnMut(usize, &Tensor, &Tensor),
    ) -> Tensor {
        let cast = |t: &Tensor| match amp {
            Some(k) => t.to_kind(k),
            None => t.shallow_clone(),
        };
        let mut values: Vec<Option<Tensor>> = (0..self.layers.len()).map(|_| None).collect();
        for (i, layer) in self.layers.iter().enumerate() {
            let arg = |k: usize| -> &Tensor {
                values[self.inputs[i][k]]
                    .as_ref()
                    .expect("graph validated: inputs precede their consumers")
            };
            let v = match layer {
                Layer::Input => cast(x),
                Layer::Conv {
                    w,
                    b,
                    bn,
                    stride,
                    padding,
                    groups,
                } => {
                    let y = arg(0).conv2d(
                        &cast(w),
                        b.as_ref().map(cast),
                        [*stride, *stride],
                        [*padding, *padding],
                        [1, 1],
                        *groups,
                    );
                    match bn {
                        Some(bn) => bn.forward(&y, train),
                        None => y,
                    }
                }
                Layer::Bn(bn) => bn.forward(arg(0), train),
                Layer::Linear { w, b } => arg(0).linear(&cast(w), Some(&cast(b))),
                Layer::AvgPool { k, s } => {
                    arg(0).avg_pool2d([*k, *k], [*s, *s], [0, 0], false, true, None::<i64>)
                }
                Layer::MaxPool { k, s } => {
                    arg(0).max_pool2d([*k, *k], [*s, *s], [0, 0], [1, 1], false)
                }
                Layer::Gap => arg(0).adaptive_avg_pool2d([1, 1]),
                Layer::Add => arg(0) + arg(1),
                Layer::Slice { start, len } => arg(0).narrow(1, *start, *len),
                Layer::Concat => {
                    let parts: Vec<&Tensor> = (0..self.inputs[i].len()).map(arg).collect();
                    Tensor::cat(&parts, 1)
                }
                Layer::Flatten => arg(0).flatten(1, -1),
                Layer::Site(si) => {
                    let y = self.sites[*si].forward(arg(0));
                    tap(*si, arg(0), &y);
                    y
                }
            };
            values[i] = Some(v);
            for &j in &self.inputs[i] {
                if self.last_use[j] == i {
                    values[j] = None;
                }
            }
        }
        let out = values
            .pop()
            .flatten()
            .expect("a validated graph has an output node");
        match amp {
            Some(_) => out.to_kind(Kind::Float),
            None => out,
        }
    }

    /// Counted kept ReLUs (the run's convention).
    pub fn relu_count(&self) -> i64 {
        self.sites
            .iter()
            .filter(|s| s.counted)
            .map(|s| s.kept)
            .sum()
    }

    /// Kept ReLUs over all sites, counted or not.
    pub fn all_relus(&self) -> i64 {
        self.sites.iter().map(|s| s.kept).sum()
    }

    /// Elements of the counted sites (the all-ReLU count).
    pub fn full_relus(&self) -> i64 {
        self.sites
            .iter()
            .filter(|s| s.counted)
            .map(|s| s.numel())
            .sum()
    }

    /// Replaces site `i`'s mask (values 0 or 1, shape `[C, H, W]`).
    pub fn set_mask(&mut self, i: usize, mask: &Tensor) {
        let site = &mut self.sites[i];
        tch::no_grad(|| {
            let mut m = site.mask.shallow_clone();
            m.copy_(
                &mask
                    .to_kind(Kind::Float)
                    .view(site.shape)
                    .to_device(m.device()),
            );
        });
        site.refresh();
    }

    /// Replaces site `i`'s mask without re-counting it (no host synchronisation;
    /// call [`Net::refresh_counts`] before reading counts). For methods that
    /// update masks every step while a gate drives the forward pass.
    pub fn set_mask_lazy(&mut self, i: usize, mask: &Tensor) {
        let site = &mut self.sites[i];
        tch::no_grad(|| {
            let mut m = site.mask.shallow_clone();
            m.copy_(
                &mask
                    .to_kind(Kind::Float)
                    .view(site.shape)
                    .to_device(m.device()),
            );
        });
    }

    /// Sets every element of site `i` to ReLU (`true`) or replaced.
    pub fn fill_site(&mut self, i: usize, keep: bool) {
        let site = &mut self.sites[i];
        tch::no_grad(|| {
            let _ = site
                .mask
                .shallow_clone()
                .fill_(if keep { 1.0 } else { 0.0 });
        });
        site.refresh();
    }

    /// Gives site `i` per-channel polynomial coefficients `[3, C]` (rows a2, a1, a0),
    /// creating the variable `poly.<site>` if needed (trainable).
    pub fn set_poly(&mut self, i: usize, coeffs: &Tensor) {
        let shape = [3, self.sites[i].shape[0]];
        let device = self.device();
        let value = coeffs.to_kind(Kind::Float).view(shape).to_device(device);
        match &self.sites[i].poly {
            Some(p) => tch::no_grad(|| {
                let mut p = p.shallow_clone();
                p.copy_(&value);
            }),
            None => {
                let (p, leaf) = nested(&self.vs.root() / "poly", &self.sites[i].name);
                self.sites[i].poly = Some(p.var_copy(leaf, &value));
            }
        }
    }

    /// Copies the weights and BN statistics (not masks or method variables)
    /// of `src` where names and shapes agree; returns how many were copied.
    pub fn copy_weights_from(&mut self, src: &Net) -> usize {
        let src_vars = src.vs.variables();
        let mut dst_vars = self.vs.variables();
        let mut copied = 0;
        tch::no_grad(|| {
            for (name, dst) in dst_vars.iter_mut() {
                if is_method_var(name) {
                    continue;
                }
                if let Some(s) = src_vars.get(name) {
                    if s.size() == dst.size() {
                        dst.copy_(&s.to_device(dst.device()));
                        copied += 1;
                    }
                }
            }
        });
        copied
    }

    /// Re-reads every site's kept count (after loading variables).
    pub fn refresh_counts(&mut self) {
        for s in &mut self.sites {
            s.refresh();
        }
    }

    /// Loads variables saved by [`Net::save`] (all of the store's variables must be present).
    pub fn load(&mut self, path: &Path) -> Result<(), tch::TchError> {
        self.vs.load(path)?;
        self.refresh_counts();
        Ok(())
    }

    /// Saves every variable of the store (weights, statistics, masks, method variables).
    pub fn save(&self, path: &Path) -> Result<(), tch::TchError> {
        self.vs.save(path)
    }

    /// The graph with this module's weights, BN statistics, masks and
    /// polynomial coefficients (the model to export).
    pub fn to_graph(&self) -> Result<Graph, NetError> {
        let vars = self.vs.variables();
        let get = |name: &str| -> Result<Vec<f32>, NetError> {
            let t = vars.get(name).ok_or_else(|| NetError::Invalid {
                what: name.to_string(),
                reason: "no such variable".into(),
            })?;
            let t = t
                .detach()
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .contiguous();
            Ok(Vec::<f32>::try_from(&t.flatten(0, -1))?)
        };
        let mut g = self.graph.clone();
        let fill_bn = |bn: &mut pibench_models::graph::BatchNorm| -> Result<(), NetError> {
            bn.gamma = get(&format!("{}.weight", bn.name))?;
            bn.beta = get(&format!("{}.bias", bn.name))?;
            bn.running_mean = get(&format!("{}.running_mean", bn.name))?;
            bn.running_var = get(&format!("{}.running_var", bn.name))?;
            Ok(())
        };
        let mut si = 0;
        for node in &mut g.nodes {
            match &mut node.op {
                Op::Conv2d(c) => {
                    c.weight = GTensor {
                        shape: c.weight.shape.clone(),
                        data: get(&format!("{}.weight", node.name))?,
                    };
                    if c.bias.is_some() {
                        c.bias = Some(get(&format!("{}.bias", node.name))?);
                    }
                    if let Some(bn) = &mut c.bn {
                        fill_bn(bn)?;
                    }
                }
                Op::BatchNorm(bn) => fill_bn(bn)?,
                Op::Linear(l) => {
                    l.weight.data = get(&format!("{}.weight", node.name))?;
                    l.bias = get(&format!("{}.bias", node.name))?;
                }
                Op::Site(s) => {
                    let site = &self.sites[si];
                    let m = site
                        .mask
                        .detach()
                        .to_device(Device::Cpu)
                        .to_kind(Kind::Uint8)
                        .contiguous();
                    s.mask = Vec::<u8>::try_from(&m.flatten(0, -1))?;
                    s.poly = match &site.poly {
                        Some(p) => {
                            let v = Vec::<f32>::try_from(
                                &p.detach()
                                    .to_device(Device::Cpu)
                                    .to_kind(Kind::Float)
                                    .contiguous()
                                    .flatten(0, -1),
                            )?;
                            let c = s.shape.c;
                            Some(PolyCoeffs {
                                a2: v[..c].to_vec(),
                                a1: v[c..2 * c].to_vec(),
                                a0: v[2 * c..].to_vec(),
                            })
                        }
                        None => None,
                    };
                    si += 1;
                }
                _ => {}
            }
        }
        g.validate()?;
        Ok(g)
    }
}

/// Variables that belong to a method rather than to the network's weights.
pub fn is_method_var(name: &str) -> bool {
    ["masks.", "alphas.", "aux.", "gates.", "poly.", "stats."]
        .iter()
        .any(|p| name.starts_with(p))
}
