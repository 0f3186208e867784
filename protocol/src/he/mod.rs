//! Homomorphic linear layers (BFV via SEAL) for the offline phase.
//!
//! The client encrypts its mask `r` of a layer's input with coefficient
//! encoding; the server computes `Enc(M·r − s)` by plaintext-polynomial
//! multiplications (no rotations, no Galois keys), re-randomises with a fresh
//! public-key encryption of zero and floods the noise; the client decrypts
//! `c = M·r − s`. Beaver square triples for `x²` activations use batched
//! encoding with larger parameters ([`triples`]). Offline material is
//! streamed to and from per-layer files ([`store`]); [`proto`] runs both
//! parties over a [`crate::net::Channel`]. Design and noise analysis: docs/HE.md.

pub mod cipher;
pub mod error;
pub mod linear;
pub mod ntt;
pub mod params;
pub mod poly;
pub mod proto;
pub mod store;
pub mod triples;

pub use cipher::{ClientKeys, ServerKeys};
pub use error::HeError;
pub use linear::{LayerShape, LinearPlan};
pub use params::{HeContext, HeParams, HeParamsBuilder};
