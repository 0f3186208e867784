//! Homomorphic linear layers (BFV via SEAL) for the offline phase.
