//! The two parties: session setup, then per inference the offline walk and
//! the online walk over the plan (see the module doc of [`super`]).

use std::collections::BTreeMap;

use rand::{CryptoRng, Rng, RngCore};

use pibench_models::fixed::{self, FixedPoint, P};
use pibench_models::graph::Network;
use pibench_models::reference::kernels;
use pibench_models::reference::{lift, EncodedNetwork, EncodedOp, PoolPlan};

use super::messages::{OnlineMessage, SessionMessage};
use super::plan::{split_trunc, GcGroup, InferencePlan, SitePlan, Step};
use super::public::{hex, PublicModel};
use super::report::{peak_rss_bytes, Clock, NodeReport, PartyReport, Role};
use super::store::{ClientNode, ReadAhead, ServerNode, Store, StoredNode};
use super::{InferenceError, Settings, TruncMode, PROTOCOL_VERSION};
use crate::gc::protocol::{EvaluatorSession, EvaluatorSite, GarblerSession, GarblerSite};
use crate::gc::GcError;
use crate::he::poly::{self, ClientPolyShares, ServerPolyShares};
use crate::he::HeError;
use crate::he::{proto as he_proto, ClientKeys, HeContext, LinearPlan, ServerKeys};
use crate::net::{Channel, NetError};
use crate::ot::OtError;

/// Largest number of inferences a client may ask for in one session.
pub const MAX_INFERENCES: u32 = 100_000;

/// The server's model: the network, its one encoding and its public part.
#[derive(Debug, Clone)]
pub struct ServerModel {
    /// The network with weights.
    pub net: Network,
    /// Encoded weights and scale plan.
    pub enc: EncodedNetwork,
    /// What the client may know.
    pub public: PublicModel,
}

impl ServerModel {
    /// Encodes a network for the protocol.
    pub fn new(net: Network, fixed: FixedPoint) -> Result<Self, InferenceError> {
        let enc = EncodedNetwork::new(&net, fixed).map_err(|e| InferenceError::Model {
            reason: e.to_string(),
        })?;
        let public = PublicModel::new(&net, &enc)?;
        // The online linear layers' weights in GEMM form, once, at load.
        for op in enc.ops.iter().flatten() {
            op.prepare_linear();
        }
        Ok(Self { net, enc, public })
    }
}

/// Where the client's inputs come from.
#[derive(Debug, Clone)]
pub enum InputSource {
    /// One input per inference (normalised reals, the network's input shape).
    Values(Vec<Vec<f32>>),
    /// `count` seeded random inputs, uniform in `[−2, 2)`, of the shape the server's model takes.
    Random {
        /// Inferences.
        count: usize,
        /// Seed of the first; the next ones use `seed + k`.
        seed: u64,
    },
}

impl InputSource {
    /// Number of inferences.
    pub fn count(&self) -> usize {
        match self {
            InputSource::Values(v) => v.len(),
            InputSource::Random { count, .. } => *count,
        }
    }

    /// The inputs for a model taking `len` values.
    pub fn resolve(&self, len: usize) -> Vec<Vec<f32>> {
        match self {
            InputSource::Values(v) => v.clone(),
            InputSource::Random { count, seed } => (0..*count)
                .map(|k| pibench_models::reference::random_input(len, seed + k as u64))
                .collect(),
        }
    }
}

/// What the client brings: its inputs and, optionally, the model it expects.
#[derive(Debug, Clone)]
pub struct ClientInput {
    /// The inputs.
    pub inputs: InputSource,
    /// The public model the client expects (its hash must match the server's), if any.
    pub expected: Option<PublicModel>,
}

/// What the client ends with.
#[derive(Debug, Clone)]
pub struct ClientOutcome {
    /// The public model the session ran.
    pub public: PublicModel,
    /// Logits per inference (decoded).
    pub logits: Vec<Vec<f64>>,
    /// Logits per inference (field elements at the output scale).
    pub raw: Vec<Vec<u64>>,
    /// Measurements per inference.
    pub reports: Vec<PartyReport>,
    /// With [`Settings::trace`]: this party's share of every node, last inference.
    pub trace: Vec<Vec<u64>>,
}

/// What the server ends with.
#[derive(Debug, Clone)]
pub struct ServerOutcome {
    /// Measurements per inference.
    pub reports: Vec<PartyReport>,
    /// With [`Settings::trace`]: this party's share of every node, last inference.
    pub trace: Vec<Vec<u64>>,
}

fn random_field<R: RngCore + CryptoRng>(rng: &mut R, n: usize) -> Vec<u64> {
    (0..n).map(|_| rng.gen_range(0..P)).collect()
}

fn net_err(phase: &str, layer: &str) -> impl Fn(crate::net::NetError) -> InferenceError {
    let phase = phase.to_string();
    let layer = layer.to_string();
    move |e| InferenceError::net(&phase, &layer, e)
}

fn proto(layer: &str, reason: impl Into<String>) -> InferenceError {
    InferenceError::Protocol {
        layer: layer.into(),
        reason: reason.into(),
    }
}

/// HE contexts and per-layer plans of a session.
struct HeSetup {
    linear: HeContext,
    poly: Option<HeContext>,
    /// Per node index, the HE plan of its linear part.
    plans: BTreeMap<usize, LinearPlan>,
}

impl HeSetup {
    fn new(plan: &InferencePlan, settings: &Settings) -> Result<Self, InferenceError> {
        let linear = settings.he_linear.context()?;
        let poly = if plan.has_poly() {
            Some(settings.he_poly.context()?)
        } else {
            None
        };
        let mut plans = BTreeMap::new();
        for (i, he) in plan.he_layers() {
            let name = &plan.net.nodes[i].name;
            plans.insert(i, LinearPlan::new(&linear, name, he.shape)?);
        }
        Ok(Self {
            linear,
            poly,
            plans,
        })
    }

    fn plan(&self, i: usize, name: &str) -> Result<&LinearPlan, InferenceError> {
        self.plans
            .get(&i)
            .ok_or_else(|| proto(name, "no HE plan for this layer"))
    }
}

// ---------------------------------------------------------------- session

fn settings_text(pairs: &[(String, String)]) -> String {
    pairs.iter().map(|(k, v)| format!("{k} = {v}\n")).collect()
}

fn parse_settings(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(" = "))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Compares the agreed settings; the first difference, if any.
fn compare(ours: &[(String, String)], theirs: &BTreeMap<String, String>) -> Option<InferenceError> {
    for (k, v) in ours {
        match theirs.get(k) {
            Some(t) if t == v => {}
            other => {
                return Some(InferenceError::Handshake {
                    field: k.clone(),
                    ours: v.clone(),
                    theirs: other.cloned().unwrap_or_else(|| "(missing)".into()),
                })
            }
        }
    }
    None
}

async fn refuse(ch: &mut Channel, err: InferenceError) -> InferenceError {
    let _ = ch
        .send(&SessionMessage::Abort {
            reason: err.to_string(),
        })
        .await;
    let _ = ch.shutdown().await;
    err
}

/// The transport error inside `err`, wherever a layer wrapped it.
fn transport(err: &InferenceError) -> Option<&NetError> {
    match err {
        InferenceError::Net { source, .. } => Some(source),
        InferenceError::He(HeError::Net(e)) => Some(e),
        InferenceError::Ot(OtError::Net(e)) => Some(e),
        InferenceError::Gc(GcError::Net { source, .. }) => Some(source),
        InferenceError::Gc(GcError::Ot {
            source: OtError::Net(e),
            ..
        }) => Some(e),
        _ => None,
    }
}

/// Names where a transport error struck: an error of the channel that a
/// layer (HE, OT, GC) wrapped becomes [`InferenceError::Net`] with the
/// channel's phase and the node (or garbled site) it was working on, so the
/// message reads e.g. `offline/he, conv1: peer closed the connection while
/// receiving he`. Other errors are returned as they are.
fn locate(ch: &Channel, err: InferenceError) -> InferenceError {
    let phase = match ch.meter().phase() {
        "" => "session".to_string(),
        p => p.to_string(),
    };
    let layer = ch.meter().layer().unwrap_or("session").to_string();
    match err {
        InferenceError::He(HeError::Net(source)) | InferenceError::Ot(OtError::Net(source)) => {
            InferenceError::net(&phase, &layer, source)
        }
        InferenceError::Gc(GcError::Net { site, source })
        | InferenceError::Gc(GcError::Ot {
            site,
            source: OtError::Net(source),
        }) => InferenceError::net(&phase, &site, source),
        e => e,
    }
}

/// Sends an abort with `err`'s text to the peer (best effort) and returns
/// `err`. A peer's abort, wherever it surfaced, becomes
/// [`InferenceError::PeerAborted`]. Nothing is sent when the connection is
/// gone (closed, i/o error) or the peer aborted itself; everything else (a
/// malformed, unexpected or oversized message, a timeout, a refusal) is
/// explained to the peer, so both sides name what was wrong.
pub async fn abort(ch: &mut Channel, err: InferenceError) -> InferenceError {
    match transport(&err) {
        Some(NetError::PeerAborted { reason }) => InferenceError::PeerAborted {
            reason: reason.clone(),
        },
        Some(NetError::Closed { .. } | NetError::Io { .. }) => err,
        _ if matches!(err, InferenceError::PeerAborted { .. }) => err,
        _ => refuse(ch, err).await,
    }
}

async fn finish_handshake(ch: &mut Channel) -> Result<(), InferenceError> {
    ch.send(&SessionMessage::Accept)
        .await
        .map_err(net_err("handshake", "session"))?;
    match ch
        .recv::<SessionMessage>()
        .await
        .map_err(net_err("handshake", "session"))?
    {
        SessionMessage::Accept => Ok(()),
        SessionMessage::Abort { reason } => Err(InferenceError::PeerAborted { reason }),
        other => Err(proto(
            "session",
            format!("expected accept, got {}", other.kind()),
        )),
    }
}

async fn server_handshake(
    ch: &mut Channel,
    model: &ServerModel,
    settings: &Settings,
) -> Result<u32, InferenceError> {
    ch.set_phase("session");
    let mut ours = settings.agreement();
    let fp = model.public.fixed;
    ours.push((
        "fixed point".into(),
        format!("fa={} max_fw={}", fp.act_frac_bits, fp.max_weight_frac_bits),
    ));
    ch.send(&SessionMessage::Hello {
        version: PROTOCOL_VERSION,
        settings: settings_text(&ours),
        model: model.public.to_bytes(),
        model_hash: model.public.hash(),
    })
    .await
    .map_err(net_err("handshake", "session"))?;
    let hello = ch
        .recv::<SessionMessage>()
        .await
        .map_err(net_err("handshake", "session"))?;
    let SessionMessage::Hello {
        version,
        settings: text,
        model_hash,
        ..
    } = hello
    else {
        return Err(proto(
            "session",
            format!("expected hello, got {}", hello.kind()),
        ));
    };
    if version != PROTOCOL_VERSION {
        let e = InferenceError::Handshake {
            field: "protocol version".into(),
            ours: PROTOCOL_VERSION.to_string(),
            theirs: version.to_string(),
        };
        return Err(refuse(ch, e).await);
    }
    let theirs = parse_settings(&text);
    let agreed: Vec<(String, String)> = settings.agreement();
    if let Some(e) = compare(&agreed, &theirs) {
        return Err(refuse(ch, e).await);
    }
    if model_hash != [0; 32] && model_hash != model.public.hash() {
        let e = InferenceError::Handshake {
            field: "model (public architecture hash)".into(),
            ours: hex(&model.public.hash()),
            theirs: hex(&model_hash),
        };
        return Err(refuse(ch, e).await);
    }
    let inferences = theirs
        .get("inferences")
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1);
    if inferences == 0 || inferences > MAX_INFERENCES {
        let e = InferenceError::Handshake {
            field: "inferences".into(),
            ours: format!("1..={MAX_INFERENCES}"),
            theirs: inferences.to_string(),
        };
        return Err(refuse(ch, e).await);
    }
    finish_handshake(ch).await?;
    Ok(inferences)
}

async fn client_handshake(
    ch: &mut Channel,
    input: &ClientInput,
    settings: &Settings,
) -> Result<(PublicModel, Vec<Vec<f32>>), InferenceError> {
    ch.set_phase("session");
    let mut ours = settings.agreement();
    ours.push(("inferences".into(), input.inputs.count().to_string()));
    let expected_hash = input.expected.as_ref().map_or([0; 32], |m| m.hash());
    ch.send(&SessionMessage::Hello {
        version: PROTOCOL_VERSION,
        settings: settings_text(&ours),
        model: Vec::new(),
        model_hash: expected_hash,
    })
    .await
    .map_err(net_err("handshake", "session"))?;
    let hello = ch
        .recv::<SessionMessage>()
        .await
        .map_err(net_err("handshake", "session"))?;
    let SessionMessage::Hello {
        version,
        settings: text,
        model,
        model_hash,
    } = hello
    else {
        if let SessionMessage::Abort { reason } = hello {
            return Err(InferenceError::PeerAborted { reason });
        }
        return Err(proto(
            "session",
            format!("expected hello, got {}", hello.kind()),
        ));
    };
    if version != PROTOCOL_VERSION {
        let e = InferenceError::Handshake {
            field: "protocol version".into(),
            ours: PROTOCOL_VERSION.to_string(),
            theirs: version.to_string(),
        };
        return Err(refuse(ch, e).await);
    }
    if let Some(e) = compare(&settings.agreement(), &parse_settings(&text)) {
        return Err(refuse(ch, e).await);
    }
    let public = match PublicModel::from_bytes(&model) {
        Ok(p) => p,
        Err(e) => return Err(refuse(ch, e).await),
    };
    if public.hash() != model_hash {
        let e = InferenceError::Handshake {
            field: "model hash (does not match the model sent)".into(),
            ours: hex(&public.hash()),
            theirs: hex(&model_hash),
        };
        return Err(refuse(ch, e).await);
    }
    if expected_hash != [0; 32] && expected_hash != model_hash {
        let e = InferenceError::Handshake {
            field: "model (public architecture hash)".into(),
            ours: hex(&expected_hash),
            theirs: hex(&model_hash),
        };
        return Err(refuse(ch, e).await);
    }
    let inputs = input.inputs.resolve(public.input.len());
    for (k, x) in inputs.iter().enumerate() {
        if x.len() != public.input.len() {
            let e = InferenceError::Input {
                reason: format!(
                    "input {k} has {} values, the model takes {} ({})",
                    x.len(),
                    public.input.len(),
                    public.input
                ),
            };
            return Err(refuse(ch, e).await);
        }
    }
    finish_handshake(ch).await?;
    Ok((public, inputs))
}

fn base_report(plan: &InferencePlan, settings: &Settings, role: Role) -> PartyReport {
    let nodes = plan
        .net
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let (relus, identity, poly) = match &plan.steps[i] {
                Step::Site(sp) => (sp.relu.len(), sp.ident.len(), sp.poly.len()),
                Step::FusedSite {
                    relus, identity, ..
                } => (*relus, *identity, 0),
                _ => (0, 0, 0),
            };
            let macs = match &plan.steps[i] {
                Step::Conv { he, .. } | Step::Fc { he, .. } | Step::BatchNorm { he, .. } => {
                    let s = he.shape;
                    (s.cout * s.hout() * s.wout() * (s.cin / s.groups) * s.kh * s.kw) as u64
                }
                _ => 0,
            };
            NodeReport {
                node: i,
                name: n.name.clone(),
                kind: n.op.kind().into(),
                relus,
                identity,
                poly,
                macs,
                ..Default::default()
            }
        })
        .collect();
    PartyReport {
        role: Some(role),
        model: plan.public.name.clone(),
        model_hash: plan.public.hash_hex(),
        settings: settings.agreement(),
        security: settings.security_lines(),
        threads: settings.threads,
        nodes,
        local_truncations: (0..plan.steps.len())
            .map(|i| plan.local_truncations(i))
            .sum(),
        ..Default::default()
    }
}

// ---------------------------------------------------------------- local ops on shares

fn add_shares(a: &[u64], b: &[u64], lift_ab: [u32; 2]) -> Vec<u64> {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| fixed::add(lift(x, lift_ab[0]), lift(y, lift_ab[1])))
        .collect()
}

/// Pool sums of a share (and the rounded pool's multiplication).
fn pool_shares(plan: &InferencePlan, i: usize, x: &[u64]) -> Vec<u64> {
    let shape = plan.input_shape(i, 0);
    let (sums, p) = match &plan.steps[i] {
        Step::AvgPool {
            kernel,
            stride,
            plan: p,
        } => (kernels::sum_pool(x, shape, *kernel, *stride), *p),
        Step::GlobalPool { plan: p } => (kernels::global_sum_pool(x, shape), *p),
        _ => return x.to_vec(),
    };
    match p {
        PoolPlan::Exact { .. } => sums,
        PoolPlan::Rounded { multiplier, .. } => sums
            .into_iter()
            .map(|v| fixed::mul(v, multiplier))
            .collect(),
    }
}

fn pool_trunc(step: &Step) -> u32 {
    match step {
        Step::AvgPool {
            plan: PoolPlan::Rounded { trunc, .. },
            ..
        }
        | Step::GlobalPool {
            plan: PoolPlan::Rounded { trunc, .. },
        } => *trunc,
        Step::BatchNorm { trunc, .. } => *trunc,
        _ => 0,
    }
}

/// Slice or concatenation of shares (local: both are linear).
fn channel_shares(
    plan: &InferencePlan,
    i: usize,
    args: &[&Vec<u64>],
) -> Result<Vec<u64>, InferenceError> {
    let name = &plan.net.nodes[i].name;
    match &plan.steps[i] {
        Step::Slice { start, len } => {
            let shape = plan.input_shape(i, 0);
            let x = args.first().ok_or_else(|| proto(name, "no input share"))?;
            if x.len() != shape.len() || start + len > shape.c {
                return Err(proto(name, "slice outside its input"));
            }
            Ok(kernels::channel_slice(x, shape, *start, *len))
        }
        Step::Concat { lift: l } => {
            if args.len() != l.len() {
                return Err(proto(name, "concat inputs do not match the plan"));
            }
            let parts: Vec<&[u64]> = args.iter().map(|a| a.as_slice()).collect();
            Ok(kernels::concat_channels(&parts, |k, v| lift(v, l[k])))
        }
        _ => Err(proto(name, "not a channel op")),
    }
}

fn gather(v: &[u64], idx: &[u32]) -> Vec<u64> {
    idx.iter().map(|&k| v[k as usize]).collect()
}

fn scatter(dst: &mut [u64], idx: &[u32], vals: &[u64]) {
    for (&k, &v) in idx.iter().zip(vals) {
        dst[k as usize] = v;
    }
}

fn high(v: &[u64], f: u32) -> Vec<u64> {
    v.iter().map(|&x| x >> f).collect()
}

fn sub_all(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(&x, &y)| fixed::sub(x, y)).collect()
}

fn add_all(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(&x, &y)| fixed::add(x, y)).collect()
}

fn offset_all(a: &[u64], off: u64) -> Vec<u64> {
    a.iter().map(|&x| fixed::add(x, off)).collect()
}

fn server_trunc(a: &[u64], f: u32) -> Vec<u64> {
    a.iter()
        .map(|&x| fixed::local_truncate_server(fixed::add(x, fixed::round_offset(f)), f))
        .collect()
}

fn client_trunc(b: &[u64], f: u32) -> Vec<u64> {
    b.iter()
        .map(|&x| fixed::local_truncate_client(x, f))
        .collect()
}

// ---------------------------------------------------------------- server

/// The server's offline material of one inference.
#[derive(Default)]
struct ServerOffline {
    /// HE share `s` per linear node.
    he: BTreeMap<usize, Vec<u64>>,
    /// Garbled groups per node, in group order.
    gc: BTreeMap<usize, Vec<GarblerSite>>,
    /// Polynomial material per site.
    poly: BTreeMap<usize, ServerPolyShares>,
}

struct ServerKeysAll {
    linear: ServerKeys,
    poly: Option<ServerKeys>,
}

/// Ends a session: a clean shutdown after success; after an error, the
/// error located (phase, node) and an abort sent to the peer.
async fn end_session<T>(
    ch: &mut Channel,
    outcome: Result<T, InferenceError>,
) -> Result<T, InferenceError> {
    match outcome {
        Ok(o) => {
            let _ = ch.shutdown().await;
            Ok(o)
        }
        Err(e) => {
            let e = locate(ch, e);
            Err(abort(ch, e).await)
        }
    }
}

/// Runs the server's side of one session over `ch`.
pub async fn run_server<R: RngCore + CryptoRng>(
    ch: &mut Channel,
    model: &ServerModel,
    settings: &Settings,
    rng: &mut R,
) -> Result<ServerOutcome, InferenceError> {
    let outcome = server_session(ch, model, settings, rng).await;
    end_session(ch, outcome).await
}

async fn server_session<R: RngCore + CryptoRng>(
    ch: &mut Channel,
    model: &ServerModel,
    settings: &Settings,
    rng: &mut R,
) -> Result<ServerOutcome, InferenceError> {
    ch.set_timeout(settings.timeout);
    let setup = Clock::start();
    let inferences = server_handshake(ch, model, settings).await?;
    let plan = InferencePlan::new(&model.public, settings.trunc, settings.scheme)?;
    let he = HeSetup::new(&plan, settings)?;
    ch.set_phase("setup/he");
    let linear = he_proto::server_setup(ch, &he.linear).await?;
    let poly = match &he.poly {
        Some(ctx) => Some(he_proto::server_setup(ch, ctx).await?),
        None => None,
    };
    let keys = ServerKeysAll { linear, poly };
    ch.set_phase("setup/ot");
    let mut gc = GarblerSession::setup(ch, rng).await?;
    gc.set_threads(settings.threads);
    let store = match &settings.store {
        Some(dir) => Some(std::sync::Arc::new(Store::open(
            dir,
            &model.public,
            Role::Server,
        )?)),
        None => None,
    };
    let setup_s = setup.elapsed().0;
    let mut reports = Vec::new();
    let mut trace = Vec::new();
    for k in 0..inferences as usize {
        let baseline = ch.meter().clone();
        let mut report = base_report(&plan, settings, Role::Server);
        report.inference = k;
        report.setup_s = if k == 0 { setup_s } else { 0.0 };
        let clock = Clock::start();
        let off = server_offline(
            ch,
            model,
            &plan,
            &he,
            &keys,
            &mut gc,
            settings,
            store.as_ref(),
            rng,
            &mut report,
        )
        .await?;
        let first = match store.as_ref() {
            Some(st) => st.preload::<ServerNode>(&plan, k).await?,
            None => None,
        };
        (report.offline_s, report.offline_cpu_s) = clock.elapsed();
        let clock = Clock::start();
        trace = server_online(
            ch,
            &gc,
            model,
            &plan,
            off,
            settings,
            store.as_ref(),
            &mut report,
            first,
        )
        .await?;
        (report.online_s, report.online_cpu_s) = clock.elapsed();
        ch.set_layer(None);
        report.take_traffic(ch.meter(), if k == 0 { None } else { Some(&baseline) });
        report.peak_rss_bytes = peak_rss_bytes();
        reports.push(report);
    }
    Ok(ServerOutcome { reports, trace })
}

fn he_weights(model: &ServerModel, i: usize, name: &str) -> Result<Vec<i64>, InferenceError> {
    match model.enc.ops.get(i) {
        Some(Some(EncodedOp::Conv { weight, .. }))
        | Some(Some(EncodedOp::Linear { weight, .. })) => {
            Ok(weight.iter().map(|&w| fixed::to_i64(w)).collect())
        }
        Some(Some(EncodedOp::BatchNorm { scale, .. })) => {
            Ok(scale.iter().map(|&w| fixed::to_i64(w)).collect())
        }
        _ => Err(proto(name, "no encoded weights")),
    }
}

#[allow(clippy::too_many_arguments)]
async fn server_offline<R: RngCore + CryptoRng>(
    ch: &mut Channel,
    model: &ServerModel,
    plan: &InferencePlan,
    he: &HeSetup,
    keys: &ServerKeysAll,
    gc: &mut GarblerSession,
    settings: &Settings,
    store: Option<&std::sync::Arc<Store>>,
    rng: &mut R,
    report: &mut PartyReport,
) -> Result<ServerOffline, InferenceError> {
    let mut off = ServerOffline::default();
    for (i, step) in plan.steps.iter().enumerate() {
        let name = plan.net.nodes[i].name.clone();
        ch.set_layer(Some(name.clone()));
        settings.progress(super::ProgressEvent {
            role: Role::Server,
            phase: "offline",
            inference: report.inference,
            node: i,
            nodes: plan.steps.len(),
            name: &name,
            kind: plan.net.nodes[i].op.kind(),
        });
        let clock = Clock::start();
        let groups = plan.gc_groups(i)?;
        // A batch norm truncates its input before the scale: its garbled
        // truncation (exact mode) comes before its HE layer, as on the client.
        let gc_first = matches!(step, Step::BatchNorm { .. });
        if gc_first && !groups.is_empty() {
            let mut sites = Vec::with_capacity(groups.len());
            for (g, _) in &groups {
                sites.push(gc.offline(ch, &g.shape, g.count, &g.label).await?);
            }
            off.gc.insert(i, sites);
        }
        match step {
            Step::Conv { he: l, .. } | Step::Fc { he: l, .. } | Step::BatchNorm { he: l, .. } => {
                ch.set_phase("offline/he");
                let weights = he_weights(model, i, &name)?;
                let (s, _) = he_proto::server_layer(
                    ch,
                    &he.linear,
                    &keys.linear,
                    l.id,
                    he.plan(i, &name)?,
                    &weights,
                    settings.threads,
                    rng,
                )
                .await?;
                off.he.insert(i, s);
            }
            _ => {}
        }
        if !gc_first && !groups.is_empty() {
            let mut sites = Vec::with_capacity(groups.len());
            for (g, _) in &groups {
                sites.push(gc.offline(ch, &g.shape, g.count, &g.label).await?);
            }
            off.gc.insert(i, sites);
        }
        if let Step::Site(sp) = step {
            if !sp.poly.is_empty() {
                let (ctx, k) = match (&he.poly, &keys.poly) {
                    (Some(c), Some(k)) => (c, k),
                    _ => return Err(proto(&name, "polynomial elements without HE keys")),
                };
                let Some(Some(EncodedOp::Site { poly: Some(pp), .. })) = model.enc.ops.get(i)
                else {
                    return Err(proto(&name, "polynomial elements without coefficients"));
                };
                let c2: Vec<u64> = sp.poly_channel.iter().map(|&c| pp.c2[c as usize]).collect();
                let c1: Vec<u64> = sp.poly_channel.iter().map(|&c| pp.c1[c as usize]).collect();
                ch.set_phase("offline/poly");
                let shares = he_proto::server_poly(ch, ctx, k, i as u32, &c2, &c1, rng).await?;
                off.poly.insert(i, shares);
            }
        }
        if let Some(st) = store {
            if ServerNode::has_material(plan, i)? {
                let m = ServerNode {
                    he: off.he.remove(&i),
                    gc: off.gc.remove(&i).unwrap_or_default(),
                    poly: off.poly.remove(&i),
                };
                st.write_server(report.inference, i, &m)?;
            }
        }
        let (w, c) = clock.elapsed();
        report.nodes[i].offline_s = w;
        report.nodes[i].offline_cpu_s = c;
    }
    ch.flush().await.map_err(net_err("offline", "end"))?;
    Ok(off)
}

async fn recv_reply(
    ch: &mut Channel,
    node: usize,
    step: u8,
    len: usize,
    name: &str,
) -> Result<Vec<u64>, InferenceError> {
    ch.set_phase("online/reply");
    match ch
        .recv::<OnlineMessage>()
        .await
        .map_err(net_err("online/reply", name))?
    {
        OnlineMessage::Reply {
            node: n,
            step: s,
            values,
        } if n as usize == node && s == step => {
            if values.len() != len {
                return Err(proto(
                    name,
                    format!(
                        "reply of step {step} has {} values, expected {len}",
                        values.len()
                    ),
                ));
            }
            Ok(values)
        }
        OnlineMessage::Reply {
            node: n, step: s, ..
        } => Err(proto(
            name,
            format!("expected the reply of step {step} of node {node}, got step {s} of node {n}"),
        )),
        other => Err(proto(
            name,
            format!(
                "expected the reply of step {step}, got a {} message",
                other.kind()
            ),
        )),
    }
}

/// Server: the garbled groups of a node sent in one round (labels of `a`
/// per group), then the matching reply: the server's shares `reply − ρ` per group.
#[allow(clippy::too_many_arguments)]
async fn server_gc_round(
    ch: &mut Channel,
    gc: &GarblerSession,
    gc_sites: &[GarblerSite],
    groups: &[(GcGroup, usize)],
    inputs: &[Vec<u64>],
    round: usize,
    _node: usize,
    _name: &str,
) -> Result<Vec<Vec<u64>>, InferenceError> {
    let mut sent = Vec::new();
    for (k, ((g, r), site)) in groups.iter().zip(gc_sites).enumerate() {
        if *r == round {
            let a_h = high(&inputs[k], g.shape.spec.trunc_bits);
            gc.online(ch, site, &a_h, &g.label).await?;
            sent.push(k);
        }
    }
    Ok(sent.iter().map(|&k| gc_sites[k].output_masks()).collect())
}

/// Runs the online steps; whatever ends them, a read-ahead still under way
/// is waited for, so the session's store folder is gone when the session
/// returns.
#[allow(clippy::too_many_arguments)]
async fn server_online(
    ch: &mut Channel,
    gc: &GarblerSession,
    model: &ServerModel,
    plan: &InferencePlan,
    off: ServerOffline,
    settings: &Settings,
    store: Option<&std::sync::Arc<Store>>,
    report: &mut PartyReport,
    first: Option<ReadAhead<ServerNode>>,
) -> Result<Vec<Vec<u64>>, InferenceError> {
    let mut ahead = first;
    let r = server_online_steps(
        ch, gc, model, plan, off, settings, store, report, &mut ahead,
    )
    .await;
    if let Some(a) = ahead.take() {
        let _ = a.wait().await;
    }
    r
}

#[allow(clippy::too_many_arguments)]
async fn server_online_steps(
    ch: &mut Channel,
    gc: &GarblerSession,
    model: &ServerModel,
    plan: &InferencePlan,
    mut off: ServerOffline,
    settings: &Settings,
    store: Option<&std::sync::Arc<Store>>,
    report: &mut PartyReport,
    ahead: &mut Option<ReadAhead<ServerNode>>,
) -> Result<Vec<Vec<u64>>, InferenceError> {
    let n = plan.steps.len();
    let mut vals: Vec<Option<Vec<u64>>> = vec![None; n];
    let mut trace = Vec::new();
    let exact = settings.trunc == TruncMode::Exact;
    // With a store, `ahead` holds the first node's material (preloaded as
    // the offline phase ended); each `take` starts reading the next node
    // while this one runs.
    for (i, step) in plan.steps.iter().enumerate() {
        let node = &plan.net.nodes[i];
        let name = node.name.clone();
        ch.set_layer(Some(name.clone()));
        settings.progress(super::ProgressEvent {
            role: Role::Server,
            phase: "online",
            inference: report.inference,
            node: i,
            nodes: plan.steps.len(),
            name: &name,
            kind: plan.net.nodes[i].op.kind(),
        });
        let clock = Clock::start();
        if let Some(st) = store {
            if ServerNode::has_material(plan, i)? {
                let (m, read_s, wait_s) = st
                    .take::<ServerNode>(ahead, plan, report.inference, i)
                    .await?;
                report.nodes[i].store_read_s = read_s;
                report.nodes[i].store_wait_s = wait_s;
                if let Some(h) = m.he {
                    off.he.insert(i, h);
                }
                if !m.gc.is_empty() {
                    off.gc.insert(i, m.gc);
                }
                if let Some(p) = m.poly {
                    off.poly.insert(i, p);
                }
            }
        }
        let arg = |k: usize| -> Result<&Vec<u64>, InferenceError> {
            node.inputs
                .get(k)
                .and_then(|&j| vals[j].as_ref())
                .ok_or_else(|| proto(&name, "input share not available"))
        };
        let out: Vec<u64> = match step {
            Step::Input => {
                ch.set_phase("online/input");
                match ch
                    .recv::<OnlineMessage>()
                    .await
                    .map_err(net_err("online/input", &name))?
                {
                    OnlineMessage::Input { values, .. } if values.len() == node.shape.len() => {
                        values
                    }
                    OnlineMessage::Input { values, .. } => {
                        return Err(proto(
                            &name,
                            format!(
                                "input of {} values, the model takes {}",
                                values.len(),
                                node.shape.len()
                            ),
                        ))
                    }
                    other => {
                        return Err(proto(
                            &name,
                            format!("expected the input, got {}", other.kind()),
                        ))
                    }
                }
            }
            Step::Flatten => arg(0)?.clone(),
            Step::Conv { .. } | Step::Fc { .. } => {
                let op = model
                    .enc
                    .ops
                    .get(i)
                    .and_then(|o| o.as_ref())
                    .ok_or_else(|| proto(&name, "no encoded linear layer"))?;
                let x = arg(0)?;
                let y = crate::compute::heavy(|| op.linear_field(x, settings.threads))
                    .ok_or_else(|| proto(&name, "not a convolution or linear layer"))?;
                add_all(
                    &y,
                    off.he.get(&i).ok_or_else(|| proto(&name, "no HE share"))?,
                )
            }
            Step::BatchNorm { trunc, .. } => {
                let Some(Some(EncodedOp::BatchNorm { scale, shift, .. })) = model.enc.ops.get(i)
                else {
                    return Err(proto(&name, "no encoded batch norm"));
                };
                let plane = node.shape.plane().max(1);
                // The input is truncated first (models::reference: a batch
                // norm truncates its input, not the product).
                let x = arg(0)?.clone();
                let xt =
                    server_truncate_all(ch, gc, &mut off, plan, i, x, *trunc, exact, &name).await?;
                let s = off.he.get(&i).ok_or_else(|| proto(&name, "no HE share"))?;
                xt.iter()
                    .enumerate()
                    .map(|(k, &x)| {
                        fixed::add(
                            fixed::add(fixed::mul(x, scale[k / plane]), shift[k / plane]),
                            s[k],
                        )
                    })
                    .collect()
            }
            Step::Add { lift: l } => add_shares(arg(0)?, arg(1)?, *l),
            Step::AvgPool { .. } | Step::GlobalPool { .. } => {
                let pre = pool_shares(plan, i, arg(0)?);
                let t = pool_trunc(step);
                server_truncate_all(ch, gc, &mut off, plan, i, pre, t, exact, &name).await?
            }
            Step::FusedSite { lift: l, .. } => arg(0)?.iter().map(|&v| lift(v, *l)).collect(),
            Step::Slice { .. } | Step::Concat { .. } => {
                let args = (0..node.inputs.len())
                    .map(arg)
                    .collect::<Result<Vec<_>, _>>()?;
                channel_shares(plan, i, &args)?
            }
            Step::MaxPool(mp) => {
                let sites = off
                    .gc
                    .remove(&i)
                    .ok_or_else(|| proto(&name, "no garbled material"))?;
                let out = server_max_pool(ch, gc, &sites, plan, i, mp, arg(0)?, &name).await?;
                if let Some(st) = store {
                    sites.into_iter().for_each(|s| s.recycle(st.pool()));
                }
                out
            }
            Step::Site(sp) => {
                let x: Vec<u64> = arg(0)?.iter().map(|&v| lift(v, sp.lift)).collect();
                let poly_plan = match model.enc.ops.get(i) {
                    Some(Some(EncodedOp::Site { poly, .. })) => poly.clone(),
                    _ => None,
                };
                let sites = off.gc.remove(&i).unwrap_or_default();
                let out = server_site(
                    ch,
                    gc,
                    &mut off,
                    &sites,
                    plan,
                    i,
                    sp,
                    &x,
                    poly_plan.as_ref(),
                    exact,
                    &name,
                )
                .await?;
                if let Some(st) = store {
                    sites.into_iter().for_each(|s| s.recycle(st.pool()));
                }
                out
            }
        };
        if settings.trace {
            trace.push(out.clone());
        }
        vals[i] = Some(out);
        for &j in &node.inputs {
            if plan.last_use[j] == i {
                vals[j] = None;
            }
        }
        let (w, c) = clock.elapsed();
        report.nodes[i].online_s = w;
        report.nodes[i].online_cpu_s = c;
    }
    let last = vals
        .pop()
        .flatten()
        .ok_or_else(|| proto("output", "no logits"))?;
    ch.set_phase("online/reveal");
    ch.send(&OnlineMessage::Logits { values: last })
        .await
        .map_err(net_err("online/reveal", "output"))?;
    ch.flush()
        .await
        .map_err(net_err("online/reveal", "output"))?;
    Ok(trace)
}

/// Truncation of every element (batch norm, rounded pool): local, or one garbled group.
#[allow(clippy::too_many_arguments)]
async fn server_truncate_all(
    ch: &mut Channel,
    gc: &GarblerSession,
    off: &mut ServerOffline,
    plan: &InferencePlan,
    i: usize,
    pre: Vec<u64>,
    trunc: u32,
    exact: bool,
    name: &str,
) -> Result<Vec<u64>, InferenceError> {
    if trunc == 0 {
        return Ok(pre);
    }
    if !exact {
        return Ok(server_trunc(&pre, trunc));
    }
    let groups = plan.gc_groups(i)?;
    let sites = off
        .gc
        .remove(&i)
        .ok_or_else(|| proto(name, "no garbled material"))?;
    let a = offset_all(&pre, fixed::gc_round_offset(trunc));
    let rho = server_gc_round(ch, gc, &sites, &groups, &[a], 0, i, name).await?;
    let reply = recv_reply(ch, i, 0, pre.len(), name).await?;
    Ok(sub_all(&reply, &rho[0]))
}

#[allow(clippy::too_many_arguments)]
async fn server_site(
    ch: &mut Channel,
    gc: &GarblerSession,
    off: &mut ServerOffline,
    sites: &[GarblerSite],
    plan: &InferencePlan,
    i: usize,
    sp: &SitePlan,
    x: &[u64],
    poly_plan: Option<&pibench_models::reference::PolyPlan>,
    exact: bool,
    name: &str,
) -> Result<Vec<u64>, InferenceError> {
    let f = sp.trunc;
    // Local truncation: the rounding offset (local_truncate_server adds the
    // second half itself); garbled truncation: 2^f (unbiased, see
    // fixed::gc_round_offset).
    let off_f = fixed::round_offset(f);
    let gc_off = fixed::gc_round_offset(f);
    let groups = plan.gc_groups(i)?;
    if sites.len() != groups.len() {
        return Err(proto(name, "garbled material does not match the plan"));
    }
    let mut out = vec![0u64; x.len()];
    // Server inputs of every group, in group order.
    let relu_in = offset_all(&gather(x, &sp.relu), gc_off);
    let ident = gather(x, &sp.ident);
    let poly_x = gather(x, &sp.poly);
    let ident_in = offset_all(&ident, off_f);
    let poly_in = offset_all(&poly_x, off_f);
    let mut inputs: Vec<Vec<u64>> = Vec::new();
    for (g, _) in &groups {
        let role = g.label.rsplit('/').next().unwrap_or("");
        inputs.push(match role {
            "relu" => relu_in.clone(),
            "identity" => offset_all(&ident, gc_off),
            "poly-t" => offset_all(&poly_x, gc_off),
            _ => Vec::new(), // later rounds
        });
    }
    let polys = off.poly.remove(&i);
    // Round 0: labels of the round-0 groups, and (local mode) the polynomial openings.
    ch.set_phase("online/gc");
    let rho = server_gc_round(ch, gc, sites, &groups, &inputs, 0, i, name).await?;
    let mut local_poly: Option<(Vec<u64>, Vec<u64>)> = None; // (t_s, d)
    if !sp.poly.is_empty() && !exact {
        let m = polys
            .as_ref()
            .ok_or_else(|| proto(name, "no polynomial material"))?;
        let t_s: Vec<u64> = poly_in
            .iter()
            .map(|&a| fixed::local_truncate_server(a, f))
            .collect();
        let d = sub_all(&t_s, &m.u);
        ch.set_phase("online/poly");
        ch.send(&OnlineMessage::Open {
            node: i as u32,
            values: d.clone(),
        })
        .await
        .map_err(net_err("online/poly", name))?;
        local_poly = Some((t_s, d));
    }
    let reply_len: usize = groups
        .iter()
        .filter(|(_, r)| *r == 0)
        .map(|(g, _)| g.count)
        .sum::<usize>()
        + if exact { 0 } else { sp.poly.len() };
    let have_round0 = reply_len > 0;
    let reply = if have_round0 {
        recv_reply(ch, i, 0, reply_len, name).await?
    } else {
        Vec::new()
    };
    // Split the reply in group order.
    let mut at = 0;
    let mut take = |len: usize| {
        let s = reply[at..at + len].to_vec();
        at += len;
        s
    };
    let mut rho_iter = rho.into_iter();
    let mut poly_t: Option<Vec<u64>> = None;
    for (g, r) in &groups {
        if *r != 0 {
            continue;
        }
        let z = take(g.count);
        let share = sub_all(&z, &rho_iter.next().unwrap_or_default());
        match g.label.rsplit('/').next().unwrap_or("") {
            "relu" => scatter(&mut out, &sp.relu, &share),
            "identity" => scatter(&mut out, &sp.ident, &share),
            "poly-t" => poly_t = Some(share),
            _ => {}
        }
    }
    if !exact {
        scatter(&mut out, &sp.ident, &server_trunc_no_offset(&ident_in, f));
    }
    if sp.poly.is_empty() {
        return Ok(out);
    }
    let pp = poly_plan.ok_or_else(|| proto(name, "polynomial elements without coefficients"))?;
    let m = polys.ok_or_else(|| proto(name, "no polynomial material"))?;
    let g_bits = sp.poly_trunc;
    let v_share = |t_s: &[u64], d: &[u64]| -> Vec<u64> {
        (0..sp.poly.len())
            .map(|k| {
                let c = sp.poly_channel[k] as usize;
                poly::server_share(
                    d[k], t_s[k], m.u[k], m.e[k], m.z[k], pp.c2[c], pp.c1[c], pp.c0[c],
                )
            })
            .collect()
    };
    if let Some((t_s, d)) = local_poly {
        let s_v = v_share(&t_s, &d);
        let reshared = add_all(&s_v, &take(sp.poly.len()));
        scatter(&mut out, &sp.poly, &server_trunc(&reshared, g_bits));
        return Ok(out);
    }
    // Exact: round 1 opens d, the client re-shares v; rounds 2 (and 3) truncate it.
    let t_s = poly_t.ok_or_else(|| proto(name, "no polynomial input share"))?;
    let d = sub_all(&t_s, &m.u);
    ch.set_phase("online/poly");
    ch.send(&OnlineMessage::Open {
        node: i as u32,
        values: d.clone(),
    })
    .await
    .map_err(net_err("online/poly", name))?;
    let s_v = v_share(&t_s, &d);
    let reshared = add_all(&s_v, &recv_reply(ch, i, 1, sp.poly.len(), name).await?);
    let (a_bits, b_bits) = split_trunc(g_bits);
    let mut inputs2 = vec![Vec::new(); groups.len()];
    let k2 = groups
        .iter()
        .position(|(_, r)| *r == 2)
        .ok_or_else(|| proto(name, "no truncation group"))?;
    // Two garbled steps when g > 16: each adds 2^(its bits), so the result
    // is x/2^g unbiased (see fixed::gc_round_offset).
    inputs2[k2] = offset_all(&reshared, fixed::gc_round_offset(a_bits));
    ch.set_phase("online/gc");
    let rho2 = server_gc_round(ch, gc, sites, &groups, &inputs2, 2, i, name).await?;
    let mut s1 = sub_all(&recv_reply(ch, i, 2, sp.poly.len(), name).await?, &rho2[0]);
    if b_bits > 0 {
        let k3 = groups
            .iter()
            .position(|(_, r)| *r == 3)
            .ok_or_else(|| proto(name, "no truncation group"))?;
        let mut inputs3 = vec![Vec::new(); groups.len()];
        inputs3[k3] = offset_all(&s1, fixed::gc_round_offset(b_bits));
        ch.set_phase("online/gc");
        let rho3 = server_gc_round(ch, gc, sites, &groups, &inputs3, 3, i, name).await?;
        s1 = sub_all(&recv_reply(ch, i, 3, sp.poly.len(), name).await?, &rho3[0]);
    }
    scatter(&mut out, &sp.poly, &s1);
    Ok(out)
}

/// Server: the garbled windows of a max pool fused with its site (see
/// [`super::plan::MaxPoolPlan`]): per group the labels of the site's input
/// shares (with the unbiased rounding offset of the site's truncation), then
/// the client's reply `max + ρ` per window.
#[allow(clippy::too_many_arguments)]
async fn server_max_pool(
    ch: &mut Channel,
    gc: &GarblerSession,
    sites: &[GarblerSite],
    plan: &InferencePlan,
    i: usize,
    mp: &super::plan::MaxPoolPlan,
    x: &[u64],
    name: &str,
) -> Result<Vec<u64>, InferenceError> {
    let groups = plan.gc_groups(i)?;
    if sites.len() != groups.len() {
        return Err(proto(name, "garbled material does not match the plan"));
    }
    let off = fixed::gc_round_offset(mp.trunc);
    let windows = max_pool_groups(mp, &groups, name)?;
    let inputs: Vec<Vec<u64>> = windows
        .iter()
        .map(|w| offset_all(&gather(x, &mp.elements_of(w)), off))
        .collect();
    ch.set_phase("online/gc");
    let rho = server_gc_round(ch, gc, sites, &groups, &inputs, 0, i, name).await?;
    let total: usize = windows.iter().map(|w| w.len()).sum();
    let reply = recv_reply(ch, i, 0, total, name).await?;
    let mut out = vec![0u64; plan.net.nodes[i].shape.len()];
    let mut at = 0;
    for (w, r) in windows.iter().zip(&rho) {
        let share = sub_all(&reply[at..at + w.len()], r);
        scatter(&mut out, w, &share);
        at += w.len();
    }
    Ok(out)
}

/// The output windows of each garbled group of a max pool, in group order.
fn max_pool_groups<'a>(
    mp: &'a super::plan::MaxPoolPlan,
    groups: &[(GcGroup, usize)],
    name: &str,
) -> Result<Vec<&'a [u32]>, InferenceError> {
    groups
        .iter()
        .map(|(g, _)| match g.label.rsplit('/').next().unwrap_or("") {
            "maxrelu" => Ok(&mp.relu_windows[..]),
            "max" => Ok(&mp.max_windows[..]),
            other => Err(proto(name, format!("unknown max-pool group {other}"))),
        })
        .collect()
}

/// Local truncation of server inputs that already carry the rounding offset.
fn server_trunc_no_offset(a: &[u64], f: u32) -> Vec<u64> {
    a.iter()
        .map(|&x| fixed::local_truncate_server(x, f))
        .collect()
}

// ---------------------------------------------------------------- client

/// The client's offline material of one inference.
#[derive(Default)]
struct ClientOffline {
    /// Input mask `r₀`.
    r0: Vec<u64>,
    /// Garbled groups per node, in group order.
    gc: BTreeMap<usize, Vec<EvaluatorSite>>,
    /// Fresh masks per node and group (the client's share after each reply).
    masks: BTreeMap<usize, Vec<Vec<u64>>>,
    /// Polynomial material per site.
    poly: BTreeMap<usize, ClientPolyShares>,
    /// Masks `r_v` of polynomial values (re-shared before their final truncation).
    poly_rv: BTreeMap<usize, Vec<u64>>,
    /// The client's share of the logits.
    logits: Vec<u64>,
    /// Every node's share (trace).
    trace: Vec<Vec<u64>>,
}

struct ClientKeysAll {
    linear: ClientKeys,
    poly: Option<ClientKeys>,
}

/// Runs the client's side of one session over `ch`.
pub async fn run_client<R: RngCore + CryptoRng>(
    ch: &mut Channel,
    input: &ClientInput,
    settings: &Settings,
    rng: &mut R,
) -> Result<ClientOutcome, InferenceError> {
    let outcome = client_session(ch, input, settings, rng).await;
    end_session(ch, outcome).await
}

async fn client_session<R: RngCore + CryptoRng>(
    ch: &mut Channel,
    input: &ClientInput,
    settings: &Settings,
    rng: &mut R,
) -> Result<ClientOutcome, InferenceError> {
    let count = input.inputs.count();
    if count == 0 || count > MAX_INFERENCES as usize {
        return Err(InferenceError::Input {
            reason: format!("{count} inputs: between 1 and {MAX_INFERENCES} per session"),
        });
    }
    ch.set_timeout(settings.timeout);
    let setup = Clock::start();
    let (public, inputs) = client_handshake(ch, input, settings).await?;
    let plan = InferencePlan::new(&public, settings.trunc, settings.scheme)?;
    let he = HeSetup::new(&plan, settings)?;
    ch.set_phase("setup/he");
    let linear = ClientKeys::generate(&he.linear)?;
    he_proto::client_setup(ch, &linear).await?;
    let poly = match &he.poly {
        Some(ctx) => {
            let k = ClientKeys::generate(ctx)?;
            he_proto::client_setup(ch, &k).await?;
            Some(k)
        }
        None => None,
    };
    let keys = ClientKeysAll { linear, poly };
    ch.set_phase("setup/ot");
    let mut gc = EvaluatorSession::setup(ch, rng).await?;
    gc.set_threads(settings.threads);
    let store = match &settings.store {
        Some(dir) => Some(std::sync::Arc::new(Store::open(
            dir,
            &public,
            Role::Client,
        )?)),
        None => None,
    };
    let setup_s = setup.elapsed().0;
    let fp = public.fixed;
    let mut outcome = ClientOutcome {
        public: public.clone(),
        logits: Vec::new(),
        raw: Vec::new(),
        reports: Vec::new(),
        trace: Vec::new(),
    };
    for (k, x) in inputs.iter().enumerate() {
        let encoded = x
            .iter()
            .enumerate()
            .map(|(j, &v)| fp.encode_act(v as f64, &format!("input {k} element {j}")))
            .collect::<Result<Vec<u64>, _>>()
            .map_err(|e| InferenceError::Input {
                reason: e.to_string(),
            })?;
        let baseline = ch.meter().clone();
        let mut report = base_report(&plan, settings, Role::Client);
        report.inference = k;
        report.setup_s = if k == 0 { setup_s } else { 0.0 };
        let clock = Clock::start();
        let off = client_offline(
            ch,
            &plan,
            &he,
            &keys,
            &mut gc,
            settings,
            store.as_ref(),
            rng,
            &mut report,
        )
        .await?;
        let first = match store.as_ref() {
            Some(st) => st.preload::<ClientNode>(&plan, k).await?,
            None => None,
        };
        (report.offline_s, report.offline_cpu_s) = clock.elapsed();
        let clock = Clock::start();
        let (raw, trace) = client_online(
            ch,
            &plan,
            off,
            &gc,
            &encoded,
            settings,
            store.as_ref(),
            &mut report,
            first,
        )
        .await?;
        (report.online_s, report.online_cpu_s) = clock.elapsed();
        ch.set_layer(None);
        report.take_traffic(ch.meter(), if k == 0 { None } else { Some(&baseline) });
        report.peak_rss_bytes = peak_rss_bytes();
        let scale = *public.scales.last().unwrap_or(&0);
        outcome
            .logits
            .push(raw.iter().map(|&v| fixed::decode(v, scale)).collect());
        outcome.raw.push(raw);
        outcome.reports.push(report);
        outcome.trace = trace;
    }
    Ok(outcome)
}

#[allow(clippy::too_many_arguments)]
async fn client_offline<R: RngCore + CryptoRng>(
    ch: &mut Channel,
    plan: &InferencePlan,
    he: &HeSetup,
    keys: &ClientKeysAll,
    gc: &mut EvaluatorSession,
    settings: &Settings,
    store: Option<&std::sync::Arc<Store>>,
    rng: &mut R,
    report: &mut PartyReport,
) -> Result<ClientOffline, InferenceError> {
    let n = plan.steps.len();
    let exact = settings.trunc == TruncMode::Exact;
    let mut off = ClientOffline::default();
    let mut vals: Vec<Option<Vec<u64>>> = vec![None; n];
    for (i, step) in plan.steps.iter().enumerate() {
        let node = &plan.net.nodes[i];
        let name = node.name.clone();
        ch.set_layer(Some(name.clone()));
        settings.progress(super::ProgressEvent {
            role: Role::Client,
            phase: "offline",
            inference: report.inference,
            node: i,
            nodes: plan.steps.len(),
            name: &name,
            kind: plan.net.nodes[i].op.kind(),
        });
        let clock = Clock::start();
        let arg = |k: usize| -> Result<&Vec<u64>, InferenceError> {
            node.inputs
                .get(k)
                .and_then(|&j| vals[j].as_ref())
                .ok_or_else(|| proto(&name, "input share not available"))
        };
        let groups = plan.gc_groups(i)?;
        let out: Vec<u64> = match step {
            Step::Input => {
                off.r0 = random_field(rng, node.shape.len());
                off.r0.clone()
            }
            Step::Flatten => arg(0)?.clone(),
            Step::Conv { he: l, .. } | Step::Fc { he: l, .. } => {
                ch.set_phase("offline/he");
                let (c, _) = he_proto::client_layer(
                    ch,
                    &he.linear,
                    &keys.linear,
                    l.id,
                    he.plan(i, &name)?,
                    arg(0)?,
                )
                .await?;
                c
            }
            Step::BatchNorm { he: l, trunc } => {
                // Truncate the input share first, then the HE layer on it.
                let x = arg(0)?.clone();
                let xt = client_truncate_all(ch, gc, &mut off, &groups, i, x, *trunc, exact, rng)
                    .await?;
                ch.set_phase("offline/he");
                let (c, _) = he_proto::client_layer(
                    ch,
                    &he.linear,
                    &keys.linear,
                    l.id,
                    he.plan(i, &name)?,
                    &xt,
                )
                .await?;
                c
            }
            Step::Add { lift: l } => add_shares(arg(0)?, arg(1)?, *l),
            Step::AvgPool { .. } | Step::GlobalPool { .. } => {
                let pre = pool_shares(plan, i, arg(0)?);
                let t = pool_trunc(step);
                client_truncate_all(ch, gc, &mut off, &groups, i, pre, t, exact, rng).await?
            }
            Step::Site(sp) => {
                let x: Vec<u64> = arg(0)?.iter().map(|&v| lift(v, sp.lift)).collect();
                client_site_offline(ch, he, keys, gc, &mut off, &groups, i, sp, &x, exact, rng)
                    .await?
            }
            Step::FusedSite { lift: l, .. } => arg(0)?.iter().map(|&v| lift(v, *l)).collect(),
            Step::Slice { .. } | Step::Concat { .. } => {
                let args = (0..node.inputs.len())
                    .map(arg)
                    .collect::<Result<Vec<_>, _>>()?;
                channel_shares(plan, i, &args)?
            }
            Step::MaxPool(mp) => {
                let windows = max_pool_groups(mp, &groups, &name)?;
                let mut out = vec![0u64; node.shape.len()];
                let mut sites = Vec::with_capacity(groups.len());
                let mut masks = Vec::with_capacity(groups.len());
                let x = arg(0)?;
                for ((g, _), w) in groups.iter().zip(&windows) {
                    let b = gather(x, &mp.elements_of(w));
                    sites.push(
                        gc.offline(ch, &g.shape, &high(&b, mp.trunc), &g.label)
                            .await?,
                    );
                    let r = random_field(rng, w.len());
                    scatter(&mut out, w, &r);
                    masks.push(r);
                }
                off.gc.insert(i, sites);
                off.masks.insert(i, masks);
                out
            }
        };
        if let Some(st) = store {
            if ClientNode::has_material(plan, i)? {
                let m = ClientNode {
                    gc: off.gc.remove(&i).unwrap_or_default(),
                    masks: off.masks.remove(&i).unwrap_or_default(),
                    poly: off.poly.remove(&i),
                    poly_rv: off.poly_rv.remove(&i),
                };
                st.write_client(report.inference, i, &m)?;
            }
        }
        if settings.trace {
            off.trace.push(out.clone());
        }
        if i + 1 == n {
            off.logits = out.clone();
        }
        vals[i] = Some(out);
        for &j in &node.inputs {
            if plan.last_use[j] == i {
                vals[j] = None;
            }
        }
        let (w, c) = clock.elapsed();
        report.nodes[i].offline_s = w;
        report.nodes[i].offline_cpu_s = c;
    }
    ch.flush().await.map_err(net_err("offline", "end"))?;
    Ok(off)
}

/// Offline part of a truncation of every element: local, or one garbled group
/// (then the client's share is a fresh mask).
#[allow(clippy::too_many_arguments)]
async fn client_truncate_all<R: RngCore + CryptoRng>(
    ch: &mut Channel,
    gc: &mut EvaluatorSession,
    off: &mut ClientOffline,
    groups: &[(GcGroup, usize)],
    i: usize,
    pre: Vec<u64>,
    trunc: u32,
    exact: bool,
    rng: &mut R,
) -> Result<Vec<u64>, InferenceError> {
    if trunc == 0 {
        return Ok(pre);
    }
    if !exact {
        return Ok(client_trunc(&pre, trunc));
    }
    let (g, _) = groups
        .first()
        .ok_or_else(|| proto(&i.to_string(), "no garbled group for a truncation"))?;
    let site = gc
        .offline(ch, &g.shape, &high(&pre, trunc), &g.label)
        .await?;
    off.gc.insert(i, vec![site]);
    let r = random_field(rng, pre.len());
    off.masks.insert(i, vec![r.clone()]);
    Ok(r)
}

#[allow(clippy::too_many_arguments)]
async fn client_site_offline<R: RngCore + CryptoRng>(
    ch: &mut Channel,
    he: &HeSetup,
    keys: &ClientKeysAll,
    gc: &mut EvaluatorSession,
    off: &mut ClientOffline,
    groups: &[(GcGroup, usize)],
    i: usize,
    sp: &SitePlan,
    x: &[u64],
    exact: bool,
    rng: &mut R,
) -> Result<Vec<u64>, InferenceError> {
    let f = sp.trunc;
    let mut out = vec![0u64; x.len()];
    let mut sites = Vec::with_capacity(groups.len());
    let mut masks = Vec::with_capacity(groups.len());
    let mut t_c: Option<Vec<u64>> = None;
    let mut r_v: Option<Vec<u64>> = None;
    for (g, _) in groups {
        let role = g.label.rsplit('/').next().unwrap_or("");
        // The client's input share of the group, known now.
        let b: Vec<u64> = match role {
            "relu" => gather(x, &sp.relu),
            "identity" => gather(x, &sp.ident),
            "poly-t" => gather(x, &sp.poly),
            "poly-v" => {
                let r = random_field(rng, sp.poly.len());
                r_v = Some(r.clone());
                r
            }
            "poly-v2" => masks.last().cloned().unwrap_or_default(),
            _ => return Err(proto(&g.label, "unknown garbled group")),
        };
        let site = gc
            .offline(ch, &g.shape, &high(&b, g.shape.spec.trunc_bits), &g.label)
            .await?;
        sites.push(site);
        let r = random_field(rng, g.count);
        match role {
            "relu" => scatter(&mut out, &sp.relu, &r),
            "identity" => scatter(&mut out, &sp.ident, &r),
            "poly-t" => t_c = Some(r.clone()),
            _ => {}
        }
        masks.push(r);
    }
    if !exact {
        scatter(&mut out, &sp.ident, &client_trunc(&gather(x, &sp.ident), f));
    }
    if !sp.poly.is_empty() {
        let t_c = match t_c {
            Some(t) => t,
            None => client_trunc(&gather(x, &sp.poly), f),
        };
        let (ctx, k) = match (&he.poly, &keys.poly) {
            (Some(c), Some(k)) => (c, k),
            _ => return Err(proto(&i.to_string(), "polynomial elements without HE keys")),
        };
        ch.set_phase("offline/poly");
        let m = he_proto::client_poly(ch, ctx, k, i as u32, &t_c).await?;
        off.poly.insert(i, m);
        if exact {
            // The last group's fresh mask is the output share.
            let last = masks.last().cloned().unwrap_or_default();
            scatter(&mut out, &sp.poly, &last);
            off.poly_rv.insert(i, r_v.unwrap_or_default());
        } else {
            let r = random_field(rng, sp.poly.len());
            scatter(&mut out, &sp.poly, &client_trunc(&r, sp.poly_trunc));
            off.poly_rv.insert(i, r);
        }
    }
    if !sites.is_empty() {
        off.gc.insert(i, sites);
        off.masks.insert(i, masks);
    }
    Ok(out)
}

async fn send_reply(
    ch: &mut Channel,
    node: usize,
    step: u8,
    values: Vec<u64>,
    name: &str,
) -> Result<(), InferenceError> {
    ch.set_phase("online/reply");
    ch.send(&OnlineMessage::Reply {
        node: node as u32,
        step,
        values,
    })
    .await
    .map_err(net_err("online/reply", name))?;
    ch.flush().await.map_err(net_err("online/reply", name))
}

async fn recv_open(
    ch: &mut Channel,
    node: usize,
    len: usize,
    name: &str,
) -> Result<Vec<u64>, InferenceError> {
    ch.set_phase("online/poly");
    match ch
        .recv::<OnlineMessage>()
        .await
        .map_err(net_err("online/poly", name))?
    {
        OnlineMessage::Open { node: n, values } if n as usize == node && values.len() == len => {
            Ok(values)
        }
        other => Err(proto(
            name,
            format!(
                "expected {len} polynomial openings, got a {} message",
                other.kind()
            ),
        )),
    }
}

/// Runs the online steps; whatever ends them, a read-ahead still under way
/// is waited for, so the session's store folder is gone when the session
/// returns.
#[allow(clippy::too_many_arguments)]
async fn client_online(
    ch: &mut Channel,
    plan: &InferencePlan,
    off: ClientOffline,
    gc: &EvaluatorSession,
    input: &[u64],
    settings: &Settings,
    store: Option<&std::sync::Arc<Store>>,
    report: &mut PartyReport,
    first: Option<ReadAhead<ClientNode>>,
) -> Result<(Vec<u64>, Vec<Vec<u64>>), InferenceError> {
    let mut ahead = first;
    let r = client_online_steps(
        ch, plan, off, gc, input, settings, store, report, &mut ahead,
    )
    .await;
    if let Some(a) = ahead.take() {
        let _ = a.wait().await;
    }
    r
}

#[allow(clippy::too_many_arguments)]
async fn client_online_steps(
    ch: &mut Channel,
    plan: &InferencePlan,
    mut off: ClientOffline,
    gc: &EvaluatorSession,
    input: &[u64],
    settings: &Settings,
    store: Option<&std::sync::Arc<Store>>,
    report: &mut PartyReport,
    ahead: &mut Option<ReadAhead<ClientNode>>,
) -> Result<(Vec<u64>, Vec<Vec<u64>>), InferenceError> {
    // With a store, `ahead` holds the first node's material (preloaded as
    // the offline phase ended); each `take` starts reading the next node
    // while this one runs.
    for (i, step) in plan.steps.iter().enumerate() {
        let name = plan.net.nodes[i].name.clone();
        ch.set_layer(Some(name.clone()));
        settings.progress(super::ProgressEvent {
            role: Role::Client,
            phase: "online",
            inference: report.inference,
            node: i,
            nodes: plan.steps.len(),
            name: &name,
            kind: plan.net.nodes[i].op.kind(),
        });
        let clock = Clock::start();
        if let Some(st) = store {
            if ClientNode::has_material(plan, i)? {
                let (m, read_s, wait_s) = st
                    .take::<ClientNode>(ahead, plan, report.inference, i)
                    .await?;
                report.nodes[i].store_read_s = read_s;
                report.nodes[i].store_wait_s = wait_s;
                if !m.gc.is_empty() {
                    off.gc.insert(i, m.gc);
                    off.masks.insert(i, m.masks);
                }
                if let Some(p) = m.poly {
                    off.poly.insert(i, p);
                }
                if let Some(r) = m.poly_rv {
                    off.poly_rv.insert(i, r);
                }
            }
        }
        let groups = plan.gc_groups(i)?;
        match step {
            Step::Input => {
                ch.set_phase("online/input");
                ch.send(&OnlineMessage::Input {
                    inference: report.inference as u32,
                    values: sub_all(input, &off.r0),
                })
                .await
                .map_err(net_err("online/input", &name))?;
                ch.flush().await.map_err(net_err("online/input", &name))?;
            }
            _ if groups.is_empty() && !matches!(step, Step::Site(_)) => {}
            _ => {
                let sites = off.gc.remove(&i).unwrap_or_default();
                let masks = off.masks.remove(&i).unwrap_or_default();
                let poly = off.poly.remove(&i);
                let r_v = off.poly_rv.remove(&i);
                client_node_online(ch, gc, &groups, &sites, &masks, poly, r_v, step, i, &name)
                    .await?;
                if let Some(st) = store {
                    sites.into_iter().for_each(|s| s.recycle(st.pool()));
                }
            }
        }
        let (w, c) = clock.elapsed();
        report.nodes[i].online_s = w;
        report.nodes[i].online_cpu_s = c;
    }
    ch.set_phase("online/reveal");
    ch.set_layer(Some("output".into()));
    let values = match ch
        .recv::<OnlineMessage>()
        .await
        .map_err(net_err("online/reveal", "output"))?
    {
        OnlineMessage::Logits { values } if values.len() == off.logits.len() => values,
        other => {
            return Err(proto(
                "output",
                format!(
                    "expected {} logit shares, got a {} message",
                    off.logits.len(),
                    other.kind()
                ),
            ))
        }
    };
    Ok((add_all(&values, &off.logits), off.trace))
}

#[allow(clippy::too_many_arguments)]
async fn client_node_online(
    ch: &mut Channel,
    gc: &EvaluatorSession,
    groups: &[(GcGroup, usize)],
    sites: &[EvaluatorSite],
    masks: &[Vec<u64>],
    poly: Option<ClientPolyShares>,
    r_v: Option<Vec<u64>>,
    step: &Step,
    i: usize,
    name: &str,
) -> Result<(), InferenceError> {
    let n_poly = match step {
        Step::Site(sp) => sp.poly.len(),
        _ => 0,
    };
    let is_exact_poly = n_poly > 0 && groups.iter().any(|(_, r)| *r >= 2);
    if sites.len() != groups.len() || masks.len() != groups.len() {
        return Err(proto(name, "garbled material does not match the plan"));
    }
    // Round 0.
    let mut reply = Vec::new();
    ch.set_phase("online/gc");
    for ((g, r), (site, mask)) in groups.iter().zip(sites.iter().zip(masks)) {
        if *r == 0 {
            let z = gc.online(ch, site, &g.label).await?;
            reply.extend(sub_all(&z, mask));
        }
    }
    if n_poly > 0 && !is_exact_poly {
        let m = poly
            .as_ref()
            .ok_or_else(|| proto(name, "no polynomial material"))?;
        let d = recv_open(ch, i, n_poly, name).await?;
        let rv = r_v
            .as_ref()
            .ok_or_else(|| proto(name, "no polynomial mask"))?;
        let c_v: Vec<u64> = (0..n_poly)
            .map(|k| poly::client_share(d[k], m.e[k], m.r2[k]))
            .collect();
        reply.extend(sub_all(&c_v, rv));
    }
    if !reply.is_empty() {
        send_reply(ch, i, 0, reply, name).await?;
    }
    if !is_exact_poly {
        return Ok(());
    }
    // Exact polynomial elements: round 1 (opening, re-share of v), rounds 2 and 3 (truncations).
    let m = poly.ok_or_else(|| proto(name, "no polynomial material"))?;
    let rv = r_v.ok_or_else(|| proto(name, "no polynomial mask"))?;
    let d = recv_open(ch, i, n_poly, name).await?;
    let c_v: Vec<u64> = (0..n_poly)
        .map(|k| poly::client_share(d[k], m.e[k], m.r2[k]))
        .collect();
    send_reply(ch, i, 1, sub_all(&c_v, &rv), name).await?;
    for round in [2usize, 3] {
        for ((g, r), (site, mask)) in groups.iter().zip(sites.iter().zip(masks)) {
            if *r == round {
                ch.set_phase("online/gc");
                let z = gc.online(ch, site, &g.label).await?;
                send_reply(ch, i, round as u8, sub_all(&z, mask), name).await?;
            }
        }
    }
    Ok(())
}
