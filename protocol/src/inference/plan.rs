//! The protocol plan: what both parties do at each node, derived from the
//! public model alone, so that the two walks exchange the same messages in
//! the same order.

use pibench_models::graph::{FeatureShape, Network, Op};
use pibench_models::reference::kernels::ConvGeometry;
use pibench_models::reference::PoolPlan;

use super::public::{PublicModel, PublicOp};
use super::{InferenceError, TruncMode};
use crate::gc::engine::CircuitShape;
use crate::gc::{ActivationKind, CircuitSpec, Scheme};
use crate::he::LayerShape;

/// One batch of garbled circuits of a node: same circuit, same truncation.
#[derive(Debug, Clone)]
pub struct GcGroup {
    /// Name for messages and errors (`<node>/<role>`).
    pub label: String,
    /// Circuit.
    pub shape: CircuitShape,
    /// Number of circuits.
    pub count: usize,
}

/// How the elements of a site are processed.
#[derive(Debug, Clone)]
pub struct SitePlan {
    /// Exact lift of the input.
    pub lift: u32,
    /// Truncation of the input.
    pub trunc: u32,
    /// Element indices that keep their ReLU.
    pub relu: Vec<u32>,
    /// Element indices replaced by the identity.
    pub ident: Vec<u32>,
    /// Element indices replaced by the channel's polynomial.
    pub poly: Vec<u32>,
    /// Channel of each polynomial element.
    pub poly_channel: Vec<u32>,
    /// Final truncation of the polynomial elements (`fa + fp`).
    pub poly_trunc: u32,
}

/// A max pool fused with the activation site that feeds it (issue #15).
///
/// `max(relu(y₁), y₂, …) = max(0, y₁, y₂, …)` (ReLU is `max(0, ·)` and max
/// is associative), so a window of a partially masked site needs one of two
/// circuits: [`ActivationKind::MaxRelu`] when at least one of its elements
/// keeps its ReLU, [`ActivationKind::Max`] when none does. The circuits take
/// the site's *input* shares (after the site's lift), truncate each element
/// by the site's `trunc` inside the circuit (as the ReLU circuit does; the
/// truncation is monotone, so the max of the truncated values is the
/// truncation of the max) and output the pooled value at the site's output
/// scale, re-masked like a ReLU output. The site itself exchanges nothing
/// ([`Step::FusedSite`]); its identity elements cost no local truncation.
#[derive(Debug, Clone)]
pub struct MaxPoolPlan {
    /// Window side.
    pub kernel: usize,
    /// The site's truncation (the circuits' `trunc_bits`).
    pub trunc: u32,
    /// Output elements whose window keeps at least one ReLU (`MaxRelu`).
    pub relu_windows: Vec<u32>,
    /// Output elements whose window keeps none (`Max`).
    pub max_windows: Vec<u32>,
    /// Input element indices of every output element's window, `kernel²`
    /// per output element, in output order.
    pub window_elems: Vec<u32>,
}

impl MaxPoolPlan {
    /// Elements of a window.
    pub fn window(&self) -> usize {
        self.kernel * self.kernel
    }

    /// The input elements of the listed windows, window after window.
    pub fn elements_of(&self, windows: &[u32]) -> Vec<u32> {
        let k = self.window();
        windows
            .iter()
            .flat_map(|&w| {
                let w = w as usize;
                self.window_elems[w * k..(w + 1) * k].iter().copied()
            })
            .collect()
    }
}

/// The linear part of a node evaluated with HE.
#[derive(Debug, Clone)]
pub struct HeLayer {
    /// HE layer id (0, 1, … in node order).
    pub id: u32,
    /// HE shape.
    pub shape: LayerShape,
}

/// What a node does.
#[derive(Debug, Clone)]
pub enum Step {
    /// The network input.
    Input,
    /// Flatten: nothing.
    Flatten,
    /// Convolution.
    Conv {
        /// HE layer.
        he: HeLayer,
        /// Geometry for the online step.
        geometry: ConvGeometry,
    },
    /// Fully connected layer.
    Fc {
        /// HE layer.
        he: HeLayer,
        /// Output features.
        out_features: usize,
    },
    /// Standalone batch norm: the input truncated by `trunc` (0: none), then
    /// the per-channel scale (HE, depthwise) and shift.
    BatchNorm {
        /// HE layer (a depthwise 1×1 convolution).
        he: HeLayer,
        /// Truncation.
        trunc: u32,
    },
    /// Residual add with lifts.
    Add {
        /// Lifts of the operands.
        lift: [u32; 2],
    },
    /// `k×k` average pool.
    AvgPool {
        /// Window.
        kernel: usize,
        /// Stride.
        stride: usize,
        /// Exact or rounded.
        plan: PoolPlan,
    },
    /// Global average pool.
    GlobalPool {
        /// Exact or rounded.
        plan: PoolPlan,
    },
    /// Activation site.
    Site(SitePlan),
    /// An activation site computed inside the max pool that consumes it
    /// (node `pool`, [`MaxPoolPlan`]): its value here is its lifted input.
    FusedSite {
        /// Exact lift of the input.
        lift: u32,
        /// The max-pool node.
        pool: usize,
        /// Elements that keep their ReLU (for reports).
        relus: usize,
        /// Elements replaced by the identity (for reports).
        identity: usize,
    },
    /// Max pool fused with its site: garbled windows.
    MaxPool(MaxPoolPlan),
    /// Channels `start..start + len` of the input: local on shares.
    Slice {
        /// First channel.
        start: usize,
        /// Channels.
        len: usize,
    },
    /// Channel concatenation of the inputs, each lifted exactly to the
    /// output's scale (`lift[k] = scale(out) − scale(input k)`, as
    /// `EncodedNetwork::concat_lifts`): local on shares.
    Concat {
        /// Lift of each input.
        lift: Vec<u32>,
    },
}

/// The plan of a whole network.
#[derive(Debug, Clone)]
pub struct InferencePlan {
    /// The op list without weights.
    pub net: Network,
    /// The public model it came from.
    pub public: PublicModel,
    /// Per node.
    pub steps: Vec<Step>,
    /// Node index of the last use of each node's value.
    pub last_use: Vec<usize>,
    /// Truncation mode.
    pub trunc: TruncMode,
    /// Garbling scheme.
    pub scheme: Scheme,
}

impl InferencePlan {
    /// Plans the protocol for a public model.
    pub fn new(
        public: &PublicModel,
        trunc: TruncMode,
        scheme: Scheme,
    ) -> Result<Self, InferenceError> {
        let net = public.network()?;
        let mut steps = Vec::with_capacity(net.nodes.len());
        let mut he_id = 0u32;
        let mut next_he = |shape: LayerShape| {
            let he = HeLayer { id: he_id, shape };
            he_id += 1;
            he
        };
        let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); net.nodes.len()];
        for (i, n) in net.nodes.iter().enumerate() {
            for &j in &n.inputs {
                consumers[j].push(i);
            }
        }
        for (i, node) in net.nodes.iter().enumerate() {
            let in_shape = node
                .inputs
                .first()
                .map_or(net.input, |&j| net.nodes[j].shape);
            let op = &public.ops[i];
            // A site whose only consumer is a max pool is computed by the pool.
            if let (Op::Site(site), PublicOp::Site { lift, .. }) = (&node.op, op) {
                if let [j] = consumers[i][..] {
                    if matches!(net.nodes[j].op, Op::MaxPool { .. }) {
                        if site.poly.is_some() && site.mask.contains(&0) {
                            return Err(InferenceError::Model {
                                reason: format!(
                                    "node {i} ({}): a site with polynomial elements before a max \
                                     pool is not supported by the protocol (the garbled max takes \
                                     ReLU and identity elements only)",
                                    node.name
                                ),
                            });
                        }
                        let relus = site.mask.iter().filter(|&&m| m == 1).count();
                        steps.push(Step::FusedSite {
                            lift: *lift,
                            pool: j,
                            relus,
                            identity: site.mask.len() - relus,
                        });
                        continue;
                    }
                }
            }
            let step = match (&node.op, op) {
                (Op::Input, _) => Step::Input,
                (Op::Flatten, _) => Step::Flatten,
                (Op::Conv2d(c), _) => Step::Conv {
                    he: next_he(LayerShape {
                        cin: c.cin,
                        cout: c.cout,
                        h: in_shape.h,
                        w: in_shape.w,
                        kh: c.kernel,
                        kw: c.kernel,
                        stride: c.stride,
                        padding: c.padding,
                        groups: c.groups,
                    }),
                    geometry: ConvGeometry {
                        input: in_shape,
                        cout: c.cout,
                        kernel: c.kernel,
                        stride: c.stride,
                        padding: c.padding,
                        groups: c.groups,
                    },
                },
                (Op::Linear(l), _) => Step::Fc {
                    he: next_he(LayerShape::linear(l.in_features, l.out_features)),
                    out_features: l.out_features,
                },
                (Op::BatchNorm(_), PublicOp::BatchNorm { trunc }) => Step::BatchNorm {
                    he: next_he(LayerShape {
                        cin: in_shape.c,
                        cout: in_shape.c,
                        h: in_shape.h,
                        w: in_shape.w,
                        kh: 1,
                        kw: 1,
                        stride: 1,
                        padding: 0,
                        groups: in_shape.c,
                    }),
                    trunc: *trunc,
                },
                (Op::Add, PublicOp::Add { lift }) => Step::Add { lift: *lift },
                (Op::AvgPool { kernel, stride }, PublicOp::Pool { plan }) => Step::AvgPool {
                    kernel: *kernel,
                    stride: *stride,
                    plan: *plan,
                },
                (Op::GlobalAvgPool, PublicOp::Pool { plan }) => Step::GlobalPool { plan: *plan },
                (
                    Op::Site(site),
                    PublicOp::Site {
                        lift,
                        trunc,
                        poly_trunc,
                    },
                ) => {
                    let plane = site.shape.plane().max(1);
                    let mut sp = SitePlan {
                        lift: *lift,
                        trunc: *trunc,
                        relu: Vec::new(),
                        ident: Vec::new(),
                        poly: Vec::new(),
                        poly_channel: Vec::new(),
                        poly_trunc: poly_trunc.unwrap_or(0),
                    };
                    for (k, &m) in site.mask.iter().enumerate() {
                        if m == 1 {
                            sp.relu.push(k as u32);
                        } else if site.poly.is_some() {
                            sp.poly.push(k as u32);
                            sp.poly_channel.push((k / plane) as u32);
                        } else {
                            sp.ident.push(k as u32);
                        }
                    }
                    Step::Site(sp)
                }
                (Op::Slice { start, len }, PublicOp::None) => Step::Slice {
                    start: *start,
                    len: *len,
                },
                (Op::Concat, PublicOp::None) => {
                    let lift = node
                        .inputs
                        .iter()
                        .map(|&j| {
                            public.scales[i]
                                .checked_sub(public.scales[j])
                                .filter(|&l| l <= 48)
                        })
                        .collect::<Option<Vec<u32>>>()
                        .ok_or_else(|| InferenceError::Model {
                            reason: format!(
                                "node {i} ({}): concat at scale {} below one of its inputs' scales",
                                node.name, public.scales[i]
                            ),
                        })?;
                    Step::Concat { lift }
                }
                (Op::MaxPool { kernel, stride }, _) => {
                    Step::MaxPool(plan_max_pool(&net, &steps, public, i, *kernel, *stride)?)
                }
                (op, p) => {
                    return Err(InferenceError::Model {
                        reason: format!("node {i} ({}): {} with plan {p:?}", node.name, op.kind()),
                    })
                }
            };
            steps.push(step);
        }
        let mut last_use: Vec<usize> = (0..net.nodes.len()).collect();
        for (i, n) in net.nodes.iter().enumerate() {
            for &j in &n.inputs {
                last_use[j] = i;
            }
        }
        Ok(Self {
            net,
            public: public.clone(),
            steps,
            last_use,
            trunc,
            scheme,
        })
    }

    /// The circuit of one truncation.
    pub fn circuit(
        &self,
        trunc: u32,
        kind: ActivationKind,
        node: &str,
    ) -> Result<CircuitShape, InferenceError> {
        let spec = CircuitSpec::new(trunc).map_err(|e| InferenceError::Model {
            reason: format!("{node}: {e}"),
        })?;
        Ok(CircuitShape::new(spec, kind, self.scheme))
    }

    /// Shape of node `i`'s input `k`.
    pub fn input_shape(&self, i: usize, k: usize) -> FeatureShape {
        self.net.nodes[i]
            .inputs
            .get(k)
            .map_or(self.net.input, |&j| self.net.nodes[j].shape)
    }

    /// Bytes of garbled material the client keeps from the offline to the
    /// online phase (tables, control bits, output decoding, its input
    /// labels) over all nodes: what it holds in memory without `--store`.
    pub fn client_gc_bytes(&self) -> Result<u64, InferenceError> {
        let mut total = 0u64;
        for i in 0..self.steps.len() {
            for (g, _) in self.gc_groups(i)? {
                let s = &g.shape;
                let c = g.count;
                total += (s.table_words(c) * 8
                    + s.control_len(c)
                    + s.decoding_len(c) * 8
                    + c * s.input_bits() * 16) as u64;
            }
        }
        Ok(total)
    }

    /// Garbled-circuit groups of node `i`, in protocol order; the second
    /// field says which online round (0, 1, …) each group's labels go in.
    pub fn gc_groups(&self, i: usize) -> Result<Vec<(GcGroup, usize)>, InferenceError> {
        let name = &self.net.nodes[i].name;
        let exact = self.trunc == TruncMode::Exact;
        let mut out = Vec::new();
        let mut push = |role: &str, trunc: u32, kind, count: usize, round: usize| {
            if count > 0 {
                out.push((
                    GcGroup {
                        label: format!("{name}/{role}"),
                        shape: self.circuit(trunc, kind, name)?,
                        count,
                    },
                    round,
                ));
            }
            Ok::<(), InferenceError>(())
        };
        let all = self.net.nodes[i].shape.len();
        match &self.steps[i] {
            Step::Site(sp) => {
                push("relu", sp.trunc, ActivationKind::Relu, sp.relu.len(), 0)?;
                if exact {
                    push(
                        "identity",
                        sp.trunc,
                        ActivationKind::Truncate,
                        sp.ident.len(),
                        0,
                    )?;
                    push(
                        "poly-t",
                        sp.trunc,
                        ActivationKind::Truncate,
                        sp.poly.len(),
                        0,
                    )?;
                    let (a, b) = split_trunc(sp.poly_trunc);
                    push("poly-v", a, ActivationKind::Truncate, sp.poly.len(), 2)?;
                    if b > 0 {
                        push("poly-v2", b, ActivationKind::Truncate, sp.poly.len(), 3)?;
                    }
                }
            }
            Step::BatchNorm { trunc, .. } if *trunc > 0 && exact => {
                push("truncate", *trunc, ActivationKind::Truncate, all, 0)?;
            }
            Step::MaxPool(mp) => {
                let window = mp.window() as u8;
                push(
                    "maxrelu",
                    mp.trunc,
                    ActivationKind::MaxRelu { window },
                    mp.relu_windows.len(),
                    0,
                )?;
                push(
                    "max",
                    mp.trunc,
                    ActivationKind::Max { window },
                    mp.max_windows.len(),
                    0,
                )?;
            }
            Step::AvgPool {
                plan: PoolPlan::Rounded { trunc, .. },
                ..
            }
            | Step::GlobalPool {
                plan: PoolPlan::Rounded { trunc, .. },
            } if exact => {
                push("truncate", *trunc, ActivationKind::Truncate, all, 0)?;
            }
            _ => {}
        }
        Ok(out)
    }

    /// HE layers in order.
    pub fn he_layers(&self) -> Vec<(usize, &HeLayer)> {
        self.steps
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                Step::Conv { he, .. } | Step::Fc { he, .. } | Step::BatchNorm { he, .. } => {
                    Some((i, he))
                }
                _ => None,
            })
            .collect()
    }

    /// Whether any site has polynomial elements.
    pub fn has_poly(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s, Step::Site(sp) if !sp.poly.is_empty()))
    }

    /// Elements truncated locally per inference with `local` truncation, per node.
    pub fn local_truncations(&self, i: usize) -> usize {
        if self.trunc == TruncMode::Exact {
            return 0;
        }
        match &self.steps[i] {
            Step::Site(sp) => sp.ident.len() + 2 * sp.poly.len(),
            Step::BatchNorm { trunc, .. } if *trunc > 0 => self.net.nodes[i].shape.len(),
            Step::AvgPool {
                plan: PoolPlan::Rounded { .. },
                ..
            }
            | Step::GlobalPool {
                plan: PoolPlan::Rounded { .. },
            } => self.net.nodes[i].shape.len(),
            _ => 0,
        }
    }
}

/// Plans max-pool node `i`: its input must be a site fused into it.
fn plan_max_pool(
    net: &Network,
    steps: &[Step],
    public: &PublicModel,
    i: usize,
    kernel: usize,
    stride: usize,
) -> Result<MaxPoolPlan, InferenceError> {
    let node = &net.nodes[i];
    let refuse = |why: String| InferenceError::Model {
        reason: format!("node {i} ({}): max pool: {why}", node.name),
    };
    let window = kernel * kernel;
    if window < 2 || window > crate::gc::circuit::MAX_WINDOW as usize {
        return Err(refuse(format!(
            "a {kernel}×{kernel} window; the garbled max takes 2 to {} elements",
            crate::gc::circuit::MAX_WINDOW
        )));
    }
    let &[s] = &node.inputs[..] else {
        return Err(refuse("expected one input".into()));
    };
    let (Some(Step::FusedSite { pool, .. }), Op::Site(site), PublicOp::Site { trunc, .. }) =
        (steps.get(s), &net.nodes[s].op, &public.ops[s])
    else {
        return Err(refuse(format!(
            "its input {} is not an activation site used only by this pool (the protocol \
             computes a max pool together with the site before it)",
            net.nodes[s].name
        )));
    };
    if *pool != i {
        return Err(refuse("its site is fused into another node".into()));
    }
    let window_elems = pibench_models::reference::kernels::pool_windows(site.shape, kernel, stride);
    let outputs = node.shape.len();
    if window_elems.len() != outputs * window {
        return Err(refuse(format!(
            "{} window elements for {outputs} outputs",
            window_elems.len()
        )));
    }
    let mut relu_windows = Vec::new();
    let mut max_windows = Vec::new();
    for (w, elems) in window_elems.chunks(window).enumerate() {
        if elems.iter().any(|&e| site.mask[e as usize] == 1) {
            relu_windows.push(w as u32);
        } else {
            max_windows.push(w as u32);
        }
    }
    Ok(MaxPoolPlan {
        kernel,
        trunc: *trunc,
        relu_windows,
        max_windows,
        window_elems,
    })
}

/// A polynomial element's final truncation in exact mode: at most 16 bits per
/// garbled circuit, so `g` is split into `(min(g, 16), g − 16)`.
pub fn split_trunc(g: u32) -> (u32, u32) {
    if g > 16 {
        (16, g - 16)
    } else {
        (g, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pibench_models::fixed::FixedPoint;
    use pibench_models::reference::EncodedNetwork;

    /// The client's material: per ReLU the tables of its circuit plus its
    /// input labels; exact mode adds the identity elements' circuits.
    #[test]
    fn client_material_counts_every_circuit() {
        let net = super::super::public::test_network(500);
        let relus =
            pibench_models::count::relu_count(&net, pibench_models::count::Convention::default())
                as usize;
        let enc = EncodedNetwork::new(&net, FixedPoint::default()).unwrap();
        let public = PublicModel::new(&net, &enc).unwrap();
        let local = InferencePlan::new(&public, TruncMode::Local, Scheme::HalfGates).unwrap();
        let exact = InferencePlan::new(&public, TruncMode::Exact, Scheme::HalfGates).unwrap();
        let (bl, be) = (
            local.client_gc_bytes().unwrap(),
            exact.client_gc_bytes().unwrap(),
        );
        // Half-gates ReLU: 199 ANDs × 32 B of tables alone per circuit.
        assert!(
            bl >= (relus * 199 * 32) as u64,
            "{bl} bytes for {relus} ReLUs"
        );
        assert!(
            bl <= (relus * 10_000) as u64,
            "{bl} bytes for {relus} ReLUs"
        );
        assert!(be > bl);
    }
}
