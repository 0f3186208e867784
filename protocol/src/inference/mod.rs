//! End-to-end private inference: both parties, offline and online, over one
//! [`Channel`].
//!
//! # Shares
//! Every tensor of the op list is additively shared modulo `P`: the server
//! holds `S`, the client `C`, `S + C = value`. The invariant that drives the
//! whole protocol: **the client's share of every linear layer's input is
//! known offline**. Then the client can encrypt it offline (HE), and online
//! the server applies the layer to its own share in the clear.
//!
//! # Per node ([`plan`])
//! * Input: the client's share is a fresh uniform mask `r₀`; online it sends
//!   `x − r₀`.
//! * Conv / FC / standalone batch norm (linear with private weights): offline,
//!   the client encrypts `C_in`, the server returns `Enc(M·C_in − s)`
//!   (flooded) and keeps `s` ([`crate::he`]); client `C_out = M·C_in − s`.
//!   Online the server computes `S_out = M·S_in + b + s` with the models
//!   crate's exact field kernels (`reference::gemm`, the same code as the
//!   fixed-point reference).
//! * Add, flatten, pools: local on both shares (lifts are exact
//!   multiplications; pool sums are exact).
//! * Site input `y` (scale `s`), truncated by `f` with round-to-nearest (the
//!   server adds `2^(f−1)` to its share):
//!   * ReLU elements: one garbled circuit each ([`crate::gc`], server =
//!     garbler, client = evaluator, client input labels by OT extension
//!     offline); the client obtains `z = ReLU(t) + ρ`, the server keeps `ρ`;
//!     online the client replies `z − r'` with a fresh mask `r'`, which is its
//!     share of the output.
//!   * Identity elements: `local` truncation ([`TruncMode::Local`]): each
//!     party truncates its own share; the client's result is known offline
//!     and becomes its share — no online bytes. `exact`: the truncate-only
//!     circuit and a reply, like a ReLU.
//!   * Polynomial elements `c2·t² + c1·t + c0` (per channel): `t` as for
//!     identity elements, then the offline material of [`crate::he::poly`]
//!     (a square triple with the client's half fixed to its share of `t`,
//!     the server's coefficients applied under encryption), one opening `d`
//!     from the server, the client's re-shared reply, and the final
//!     truncation by `fa + fp` (local, or one or two truncate-only circuits).
//! * Truncating batch norms and non-power-of-two pools: like identity elements.
//! * Logits: the server sends its share; only the client reconstructs.
//!
//! # Messages
//! All through the envelope of [`crate::msg`]: session (hello, accept,
//! abort), OT, GC, HE and online messages. Per site and online, one message
//! of server labels (plus polynomial openings) and one reply: one round with
//! `local` truncation.
//!
//! # Correctness
//! Each truncation rounds stochastically without bias and returns
//! `round(x/2^f) + e`: `e ∈ {−1, …, 3}` in a garbled circuit (the carry of the
//! dropped low bits, never a wrap; the garbler adds `2^f`, see
//! `pibench_models::fixed::gc_round_offset`), `e ∈ {−1, 0, 1}` locally (see
//! `pibench_models::fixed::local_truncate_server`), except with probability `≤ 2^(ℓ+1)/P` per locally
//! truncated element, where `|y| < 2^ℓ` (then the element is garbage). The
//! logits are therefore those of the fixed-point reference up to the
//! propagation of these last-bit differences; the two-party tests check
//! every node's reconstructed output against the reference op applied to the
//! reconstructed inputs: bit for bit for linear ops, within `e` for truncations.

pub mod messages;
pub mod party;
pub mod plan;
pub mod public;
pub mod report;
pub mod store;

pub use messages::{OnlineMessage, SessionMessage};
pub use party::{
    run_client, run_server, ClientInput, ClientOutcome, InputSource, ServerModel, ServerOutcome,
};
pub use plan::InferencePlan;
pub use public::PublicModel;
pub use report::{PartyReport, Role};

use std::time::Duration;

use thiserror::Error;

use crate::gc::{GcError, Scheme};
use crate::he::{HeError, HeParams};
use crate::net::NetError;
use crate::ot::OtError;

/// Version of the end-to-end protocol; both parties must speak the same.
pub const PROTOCOL_VERSION: u32 = 1;

/// How identity and polynomial elements (and other non-ReLU truncation
/// points) are truncated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TruncMode {
    /// Each party truncates its own share (Delphi): free, fails with
    /// probability `≤ 2^(ℓ+1)/P` per element.
    Local,
    /// The truncate-only garbled circuit: exact up to the last bit, never fails, costs online labels.
    Exact,
}

impl TruncMode {
    /// Name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            TruncMode::Local => "local",
            TruncMode::Exact => "exact",
        }
    }
}

impl std::str::FromStr for TruncMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "local" => Ok(TruncMode::Local),
            "exact" => Ok(TruncMode::Exact),
            o => Err(format!("unknown truncation mode {o:?} (local | exact)")),
        }
    }
}

/// Where a party is: called when it starts a node of a phase.
#[derive(Debug, Clone, Copy)]
pub struct ProgressEvent<'a> {
    /// Which party.
    pub role: Role,
    /// `offline` or `online`.
    pub phase: &'static str,
    /// Inference number in the session.
    pub inference: usize,
    /// Node index.
    pub node: usize,
    /// Number of nodes.
    pub nodes: usize,
    /// Node name.
    pub name: &'a str,
    /// The node's operation (`Op::kind`: `conv2d`, `site`, `add`, …).
    pub kind: &'static str,
}

/// A progress callback (progress bars, phase logs).
#[derive(Clone)]
pub struct Progress(pub std::sync::Arc<dyn Fn(&ProgressEvent<'_>) + Send + Sync>);

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress(..)")
    }
}

/// Protocol settings of one party. The ones in [`Settings::agreement`] must
/// match the peer's; the others are local.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Garbling scheme.
    pub scheme: Scheme,
    /// Truncation of non-ReLU elements.
    pub trunc: TruncMode,
    /// HE parameters of the linear layers.
    pub he_linear: HeParams,
    /// HE parameters of the polynomial elements (batched, larger).
    pub he_poly: HeParams,
    /// Worker threads for HE, the online linear layers and garbling.
    pub threads: usize,
    /// How long a receive waits for the peer.
    pub timeout: Duration,
    /// Folder for the offline material (streamed per layer); in memory when `None`.
    pub store: Option<std::path::PathBuf>,
    /// Keep this party's share of every node of the last inference (tests).
    pub trace: bool,
    /// Network emulation both parties apply to their outgoing bytes (agreed
    /// in the handshake: a party shaping alone emulates one direction only).
    pub net: crate::shaper::NetProfile,
    /// Called at the start of every node of every phase.
    pub progress: Option<Progress>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            scheme: Scheme::HalfGates,
            trunc: TruncMode::Local,
            he_linear: HeParams::linear(),
            he_poly: HeParams::triples(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            timeout: crate::net::DEFAULT_TIMEOUT,
            store: None,
            trace: false,
            net: crate::shaper::NetProfile::NONE,
            progress: None,
        }
    }
}

fn he_line(p: &HeParams) -> String {
    format!(
        "N={} q={:?} flood={} weights<2^{}{}",
        p.poly_degree,
        p.coeff_bits,
        p.flood_sigma,
        p.weight_bound_bits,
        if p.insecure_test_params {
            " INSECURE-TEST"
        } else {
            ""
        }
    )
}

impl Settings {
    pub(crate) fn progress(&self, ev: ProgressEvent<'_>) {
        if let Some(p) = &self.progress {
            (p.0)(&ev);
        }
    }

    /// The settings both parties must agree on, as `(name, value)` pairs.
    pub fn agreement(&self) -> Vec<(String, String)> {
        vec![
            ("version".into(), PROTOCOL_VERSION.to_string()),
            ("field".into(), pibench_models::fixed::P.to_string()),
            ("gc scheme".into(), self.scheme.name().into()),
            ("truncation".into(), self.trunc.name().into()),
            ("he linear".into(), he_line(&self.he_linear)),
            ("he poly".into(), he_line(&self.he_poly)),
            ("network emulation".into(), self.net.spec()),
        ]
    }

    /// Security levels of the components, for reports.
    pub fn security_lines(&self) -> Vec<String> {
        let he = |p: &HeParams| {
            if p.insecure_test_params {
                "INSECURE test parameters".to_string()
            } else {
                format!(
                    "128-bit (HE standard, N={}, log q={})",
                    p.poly_degree,
                    p.total_coeff_bits()
                )
            }
        };
        vec![
            format!("HE linear layers: {}; circuit privacy by flooding, {} bits statistical per ciphertext", he(&self.he_linear), self.he_linear.flood_sigma),
            format!("HE polynomial material: {}; flooding {} bits statistical", he(&self.he_poly), self.he_poly.flood_sigma),
            format!("garbled circuits: 128-bit (fixed-key AES, {}), semi-honest", self.scheme.name()),
            "OT: 128-bit (Chou-Orlandi base OT on Ristretto + IKNP extension), semi-honest".into(),
            "masks: uniform in the field from a CSPRNG (ChaCha20 seeded from the OS); shares hide values perfectly".into(),
        ]
    }
}

/// Everything that can end a session.
#[derive(Debug, Error)]
pub enum InferenceError {
    /// The channel failed.
    #[error("{phase}, {layer}: {source}")]
    Net {
        /// Phase (handshake, offline/..., online/...).
        phase: String,
        /// Node name (or "session").
        layer: String,
        /// The transport error.
        #[source]
        source: NetError,
    },
    /// Garbling, evaluation or the GC protocol failed.
    #[error("garbled circuits: {0}")]
    Gc(#[from] GcError),
    /// HE failed.
    #[error("homomorphic encryption: {0}")]
    He(#[from] HeError),
    /// OT failed.
    #[error("oblivious transfer: {0}")]
    Ot(#[from] OtError),
    /// The parties' settings differ.
    #[error("handshake refused: {field} differs (ours: {ours}; peer's: {theirs})")]
    Handshake {
        /// The setting.
        field: String,
        /// This party's value.
        ours: String,
        /// The peer's value.
        theirs: String,
    },
    /// The peer ended the session and said why.
    #[error("the peer aborted: {reason}")]
    PeerAborted {
        /// The peer's reason.
        reason: String,
    },
    /// The model (or the public model received) is unusable.
    #[error("model: {reason}")]
    Model {
        /// What is wrong.
        reason: String,
    },
    /// The client's input is unusable.
    #[error("input: {reason}")]
    Input {
        /// What is wrong.
        reason: String,
    },
    /// A message is well formed but does not fit the protocol state.
    #[error("{layer}: {reason}")]
    Protocol {
        /// Node name.
        layer: String,
        /// What is wrong.
        reason: String,
    },
    /// The offline store failed or belongs to another model.
    #[error("offline store {path}: {reason}")]
    Store {
        /// Folder or file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

impl InferenceError {
    /// Maps a peer abort carried as a transport error to [`InferenceError::PeerAborted`].
    pub(crate) fn net(phase: &str, layer: &str, source: NetError) -> Self {
        match source {
            NetError::PeerAborted { reason } => InferenceError::PeerAborted { reason },
            source => InferenceError::Net {
                phase: phase.into(),
                layer: layer.into(),
                source,
            },
        }
    }
}
