//! Garbled circuits: fixed-key-AES hashing, half-gates and three-halves garbling, circuits written once over backends.
