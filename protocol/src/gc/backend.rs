//! The backend trait circuits are written against, and the two backends that
//! need no cryptography: the plaintext oracle and the cost counter.
//!
//! A circuit is a generic Rust function over a [`Backend`]; every backend is
//! a monomorphised instance, so garbling has no per-gate interpretation
//! (no gate list, no dispatch). Public constants are folded by [`Bit`]
//! before they reach the backend: XOR with a constant is a free NOT, AND
//! with a constant is free, so adders with constant operands cost exactly
//! their non-trivial carries.

/// A gate-level backend: plaintext evaluation, cost counting, garbling or evaluation.
pub trait Backend {
    /// A non-constant wire value (a bit, a label, a bundle of labels for several circuits).
    type Wire: Copy;
    /// `a ⊕ b` (free in every scheme here).
    fn xor(&mut self, a: Self::Wire, b: Self::Wire) -> Self::Wire;
    /// `¬a` (free).
    fn not(&mut self, a: Self::Wire) -> Self::Wire;
    /// `a ∧ b` (the gate that costs tables and hashes).
    fn and(&mut self, a: Self::Wire, b: Self::Wire) -> Self::Wire;
}

/// A bit in a circuit: a public constant or a backend wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bit<W> {
    /// A public constant, known to both parties.
    Const(bool),
    /// A secret wire.
    Wire(W),
}

/// `x ⊕ y` with constant folding.
#[inline(always)]
pub fn xor<B: Backend>(b: &mut B, x: Bit<B::Wire>, y: Bit<B::Wire>) -> Bit<B::Wire> {
    match (x, y) {
        (Bit::Const(p), Bit::Const(q)) => Bit::Const(p ^ q),
        (Bit::Const(false), w) | (w, Bit::Const(false)) => w,
        (Bit::Const(true), Bit::Wire(w)) | (Bit::Wire(w), Bit::Const(true)) => Bit::Wire(b.not(w)),
        (Bit::Wire(u), Bit::Wire(v)) => Bit::Wire(b.xor(u, v)),
    }
}

/// `x ∧ y` with constant folding.
#[inline(always)]
pub fn and<B: Backend>(b: &mut B, x: Bit<B::Wire>, y: Bit<B::Wire>) -> Bit<B::Wire> {
    match (x, y) {
        (Bit::Const(p), Bit::Const(q)) => Bit::Const(p & q),
        (Bit::Const(false), _) | (_, Bit::Const(false)) => Bit::Const(false),
        (Bit::Const(true), w) | (w, Bit::Const(true)) => w,
        (Bit::Wire(u), Bit::Wire(v)) => Bit::Wire(b.and(u, v)),
    }
}

/// `¬x`.
#[inline(always)]
pub fn not<B: Backend>(b: &mut B, x: Bit<B::Wire>) -> Bit<B::Wire> {
    xor(b, x, Bit::Const(true))
}

/// Carry of a full adder, `maj(x, y, c) = c ⊕ ((x ⊕ c) ∧ (y ⊕ c))`: one AND.
#[inline(always)]
pub fn carry<B: Backend>(
    b: &mut B,
    x: Bit<B::Wire>,
    y: Bit<B::Wire>,
    c: Bit<B::Wire>,
) -> Bit<B::Wire> {
    let xc = xor(b, x, c);
    let yc = xor(b, y, c);
    let t = and(b, xc, yc);
    xor(b, c, t)
}

/// The plaintext backend: the test oracle for every circuit.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainBackend;

impl Backend for PlainBackend {
    type Wire = bool;
    fn xor(&mut self, a: bool, b: bool) -> bool {
        a ^ b
    }
    fn not(&mut self, a: bool) -> bool {
        !a
    }
    fn and(&mut self, a: bool, b: bool) -> bool {
        a & b
    }
}

/// The counting backend: the cost model (gates, and the table bytes they imply).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CountingBackend {
    /// AND gates.
    pub ands: u64,
    /// XOR gates (free).
    pub xors: u64,
    /// NOT gates (free).
    pub nots: u64,
}

impl CountingBackend {
    /// Garbled-table bytes these gates need under `scheme`.
    pub fn table_bytes(&self, scheme: super::Scheme) -> u64 {
        scheme.table_bytes(self.ands as usize) as u64
    }
}

impl Backend for CountingBackend {
    type Wire = ();
    fn xor(&mut self, _: (), _: ()) {
        self.xors += 1;
    }
    fn not(&mut self, _: ()) {
        self.nots += 1;
    }
    fn and(&mut self, _: (), _: ()) {
        self.ands += 1;
    }
}
