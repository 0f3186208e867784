//! The public model: what the client may know about the server's network.
//!
//! Layer structure (the architecture spec, input shape, classes), every
//! site's ReLU mask, which sites have polynomial replacements, and the
//! fixed-point scale plan (per-node scales, truncation amounts, residual
//! lifts, pool modes). No weight, bias, batch-norm statistic or polynomial
//! coefficient. The server sends it in its hello; both parties rebuild the
//! op list from it ([`PublicModel::network`]) and walk that same list. Its
//! SHA-256 ([`PublicModel::hash`]) names the model in handshakes and in
//! offline stores.
//!
//! What the scale plan reveals: each linear layer's weight scale `fw_l` is
//! the largest number of fractional bits for which the layer's largest
//! folded weight stays below `2^15`, i.e. `floor(log2 max|w|)` up to the
//! 16-bit cap. This is a few bits per layer about the weights' magnitude,
//! the same kind of information Delphi's fixed-point parameters reveal.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use pibench_models::arch::ArchSpec;
use pibench_models::fixed::FixedPoint;
use pibench_models::graph::{FeatureShape, Init, Network, Op, PolyCoeffs};
use pibench_models::reference::{EncodedNetwork, EncodedOp, PoolPlan};

use super::InferenceError;

/// Per-node public information of the scale plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum PublicOp {
    /// Input, flatten: nothing.
    None,
    /// Convolution or fully connected layer.
    Linear,
    /// Standalone batch norm (its scale is applied through HE), then a truncation by `trunc` (0: none).
    BatchNorm {
        /// Truncation amount.
        trunc: u32,
    },
    /// Average or global average pool.
    Pool {
        /// How it is computed.
        plan: PoolPlan,
    },
    /// Residual add with exact lifts.
    Add {
        /// Lifts of the two operands.
        lift: [u32; 2],
    },
    /// Activation site.
    Site {
        /// Exact lift of the input.
        lift: u32,
        /// Truncation of the input.
        trunc: u32,
        /// Final truncation of the polynomial elements, if the site has a polynomial.
        poly_trunc: Option<u32>,
    },
}

/// A site's mask, bit-packed (LSB first) as lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedMask {
    /// Elements.
    pub len: usize,
    /// Hex of `ceil(len/8)` bytes.
    pub bits: String,
}

impl PackedMask {
    /// Packs a 0/1 mask.
    pub fn pack(mask: &[u8]) -> Self {
        let mut bytes = vec![0u8; mask.len().div_ceil(8)];
        for (i, &m) in mask.iter().enumerate() {
            if m == 1 {
                bytes[i / 8] |= 1 << (i % 8);
            }
        }
        let mut bits = String::with_capacity(2 * bytes.len());
        for b in bytes {
            bits.push_str(&format!("{b:02x}"));
        }
        Self {
            len: mask.len(),
            bits,
        }
    }

    /// Unpacks, checking the length.
    pub fn unpack(&self, site: &str) -> Result<Vec<u8>, InferenceError> {
        let bad = |reason: String| InferenceError::Model {
            reason: format!("public model, mask of site {site}: {reason}"),
        };
        if self.bits.len() != 2 * self.len.div_ceil(8) {
            return Err(bad(format!(
                "{} hex digits for {} elements",
                self.bits.len(),
                self.len
            )));
        }
        let raw = self.bits.as_bytes();
        let mut out = Vec::with_capacity(self.len);
        for i in 0..self.len {
            let pair = &raw[2 * (i / 8)..2 * (i / 8) + 2];
            let byte = std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| bad(format!("byte {} is not hex", i / 8)))?;
            out.push((byte >> (i % 8)) & 1);
        }
        Ok(out)
    }
}

/// The public model (see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublicModel {
    /// Display name.
    pub name: String,
    /// Architecture.
    pub arch: ArchSpec,
    /// Input shape.
    pub input: FeatureShape,
    /// Classes.
    pub num_classes: usize,
    /// Fixed-point parameters.
    pub fixed: FixedPoint,
    /// Masks per site, in site order.
    pub masks: Vec<PackedMask>,
    /// Whether each site (site order) replaces its masked-out elements by a polynomial.
    pub poly_sites: Vec<bool>,
    /// Fractional bits of every node's output.
    pub scales: Vec<u32>,
    /// Per node.
    pub ops: Vec<PublicOp>,
}

impl PublicModel {
    /// The public part of a network and its encoding.
    pub fn new(net: &Network, enc: &EncodedNetwork) -> Result<Self, InferenceError> {
        if enc.ops.len() != net.nodes.len() || enc.scales.len() != net.nodes.len() {
            return Err(InferenceError::Model {
                reason: "the encoding was made for another network".into(),
            });
        }
        let ops = enc
            .ops
            .iter()
            .map(|op| match op {
                None => PublicOp::None,
                Some(EncodedOp::Conv { .. }) | Some(EncodedOp::Linear { .. }) => PublicOp::Linear,
                Some(EncodedOp::BatchNorm { trunc, .. }) => PublicOp::BatchNorm { trunc: *trunc },
                Some(EncodedOp::Pool(plan)) => PublicOp::Pool { plan: *plan },
                Some(EncodedOp::Add { lift }) => PublicOp::Add { lift: *lift },
                Some(EncodedOp::Site { lift, trunc, poly }) => PublicOp::Site {
                    lift: *lift,
                    trunc: *trunc,
                    poly_trunc: poly.as_ref().map(|p| p.trunc),
                },
            })
            .collect();
        Ok(Self {
            name: net.name.clone(),
            arch: net.arch.clone(),
            input: net.input,
            num_classes: net.num_classes,
            fixed: enc.fixed,
            masks: net.sites().map(|s| PackedMask::pack(&s.mask)).collect(),
            poly_sites: net.sites().map(|s| s.poly.is_some()).collect(),
            scales: enc.scales.clone(),
            ops,
        })
    }

    /// Canonical bytes (JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses [`PublicModel::to_bytes`] and checks it against the op list it describes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, InferenceError> {
        let m: PublicModel = serde_json::from_slice(bytes).map_err(|e| InferenceError::Model {
            reason: format!("public model JSON: {e}"),
        })?;
        m.network()?;
        Ok(m)
    }

    /// SHA-256 of the canonical bytes.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.to_bytes()).into()
    }

    /// The hash as hex (first 16 digits are enough to tell models apart in messages).
    pub fn hash_hex(&self) -> String {
        hex(&self.hash())
    }

    /// The op list without weights (zero weights and coefficients), with the masks.
    pub fn network(&self) -> Result<Network, InferenceError> {
        let model = |e: pibench_models::ModelError| InferenceError::Model {
            reason: format!("public model: {e}"),
        };
        self.fixed.validate().map_err(|e| InferenceError::Model {
            reason: format!("public model: {e}"),
        })?;
        let mut net = self
            .arch
            .build(self.input, self.num_classes, Init::Zeros)
            .map_err(model)?;
        net.name = self.name.clone();
        let n_sites = net.sites().count();
        if self.masks.len() != n_sites || self.poly_sites.len() != n_sites {
            return Err(InferenceError::Model {
                reason: format!(
                    "public model lists {} masks / {} polynomial flags for {n_sites} sites",
                    self.masks.len(),
                    self.poly_sites.len()
                ),
            });
        }
        if self.ops.len() != net.nodes.len() || self.scales.len() != net.nodes.len() {
            return Err(InferenceError::Model {
                reason: format!(
                    "public model plans {} nodes, the architecture has {}",
                    self.ops.len(),
                    net.nodes.len()
                ),
            });
        }
        for ((site, packed), &poly) in net.sites_mut().zip(&self.masks).zip(&self.poly_sites) {
            let mask = packed.unpack(&site.name)?;
            if mask.len() != site.shape.len() {
                return Err(InferenceError::Model {
                    reason: format!(
                        "public model: site {} has {} mask elements, expected {}",
                        site.name,
                        mask.len(),
                        site.shape.len()
                    ),
                });
            }
            site.mask = mask;
            if poly {
                let c = site.shape.c;
                site.poly = Some(PolyCoeffs {
                    a2: vec![0.0; c],
                    a1: vec![0.0; c],
                    a0: vec![0.0; c],
                });
            }
        }
        for (i, (node, op)) in net.nodes.iter().zip(&self.ops).enumerate() {
            let ok = matches!(
                (&node.op, op),
                (
                    Op::Input | Op::Flatten | Op::MaxPool { .. } | Op::Slice { .. } | Op::Concat,
                    PublicOp::None
                ) | (Op::Conv2d(_) | Op::Linear(_), PublicOp::Linear)
                    | (Op::BatchNorm(_), PublicOp::BatchNorm { .. })
                    | (
                        Op::AvgPool { .. } | Op::GlobalAvgPool,
                        PublicOp::Pool { .. }
                    )
                    | (Op::Add, PublicOp::Add { .. })
                    | (Op::Site(_), PublicOp::Site { .. })
            );
            let bad_trunc = match op {
                PublicOp::Site {
                    trunc, poly_trunc, ..
                } => *trunc == 0 || *trunc > 16 || poly_trunc.is_some_and(|t| t == 0 || t > 48),
                PublicOp::BatchNorm { trunc } => *trunc > 16,
                PublicOp::Pool {
                    plan: PoolPlan::Rounded { trunc, .. },
                } => *trunc == 0 || *trunc > 16,
                PublicOp::Add { lift } => lift[0] > 48 || lift[1] > 48,
                _ => false,
            };
            if !ok || bad_trunc || self.scales[i] > 48 {
                return Err(InferenceError::Model {
                    reason: format!(
                        "public model: node {i} ({}) is a {} but the plan says {op:?} at scale {}",
                        node.name,
                        node.op.kind(),
                        self.scales[i]
                    ),
                });
            }
        }
        net.validate().map_err(model)?;
        Ok(net)
    }
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A small CIFAR-10 ResNet with a random mask of `relus` ReLUs (unit tests).
#[cfg(test)]
pub(crate) fn test_network(relus: u64) -> Network {
    let d = pibench_models::arch::Dataset::Cifar10;
    let mut net = ArchSpec::Resnet {
        name: "r".into(),
        stem: 4,
        blocks: vec![1, 1],
        widths: vec![4, 8],
    }
    .build(d.input(), 10, Init::Seeded(1))
    .expect("test network");
    pibench_models::mask::random_relu_mask(
        &mut net,
        relus,
        pibench_models::count::Convention::default(),
        1,
    )
    .expect("test mask");
    net
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_hash_and_masks() {
        let net = test_network(100);
        let enc = EncodedNetwork::new(&net, FixedPoint::default()).unwrap();
        let p = PublicModel::new(&net, &enc).unwrap();
        let q = PublicModel::from_bytes(&p.to_bytes()).unwrap();
        assert_eq!(p, q);
        assert_eq!(p.hash(), q.hash());
        let rebuilt = q.network().unwrap();
        for (a, b) in rebuilt.sites().zip(net.sites()) {
            assert_eq!(a.mask, b.mask);
        }
        // Any change of a mask changes the hash.
        let mut net2 = net.clone();
        let s = net2.sites_mut().next().unwrap();
        s.mask[0] ^= 1;
        let p2 = PublicModel::new(&net2, &enc).unwrap();
        assert_ne!(p2.hash(), p.hash());
        // A corrupt mask is refused.
        let mut bad = p.clone();
        bad.masks[0].bits.replace_range(0..2, "zz");
        assert!(PublicModel::from_bytes(&bad.to_bytes()).is_err());
    }
}
