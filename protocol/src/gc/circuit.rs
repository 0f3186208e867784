//! The activation circuits: truncated ReLU and truncate-only (identity), on
//! the high parts of the two shares, written once over [`Backend`].
//!
//! Inputs are `a_h = a >> f` (garbler) and `b_h = b >> f` (evaluator), both
//! in `[0, P_f]` with `P_f = (P − 1) / 2^f = 2^n − k` (`n = 43`, `k = 368`
//! for `f = 12`). They are shares modulo `P_f` of `floor(y / 2^f) + e`,
//! `e ∈ {−1, 0, 1, 2}` (see `models::fixed::truncate_shares`). The circuit:
//! 1. `s = a_h + b_h` (`n + 1` bits, `n` ANDs);
//! 2. `t = s + k`; `s ≥ P_f` iff bit `n` of `t` is set (a constant adder:
//!    one AND per carry that is not constant);
//! 3. `x' = s mod P_f` = low `n` bits of `t` if `s ≥ P_f`, else `s`
//!    (a multiplexer, free on the bits where `k` has no carry);
//! 4. `neg = x' > (P_f − 1) / 2`, the top bit of `x' + o` with
//!    `o = 2^(n−1) − (P_f − 1) / 2 − 1` (again a constant adder);
//! 5. ReLU: `v_i = x'_i ∧ ¬neg` for the `n − 1` low bits (`v < 2^(n−1)`);
//!    identity: the bits of `x'` plus `neg` with weight `−P_f`.
//!
//! Max pooling (issue #15) takes a window of `k` elements per circuit:
//! steps 1–4 for each, then `k − 1` signed comparisons with multiplexers,
//! then ReLU (`MaxRelu`, the fused ReLU + max pool: ReLU is monotone, so
//! `max(relu(y₁), …) = relu(max(y₁, …))`) or the signed output (`Max`).
//! With `(x', neg)` the signed value is `x' − neg·P_f`, and `u > v` (signed)
//! is `(u' > v') ⊕ neg_u ⊕ neg_v`: within one sign the order of `x'` is the
//! order of the values, across signs it is reversed (`x' ≤ (P_f − 1)/2`
//! exactly when `neg = 0`). The unsigned `u' > v'` is the borrow out of
//! `v' − u'` (one AND per bit), the multiplexer one AND per bit.
//!
//! Outputs are bits with field weights; the engine turns them into an
//! arithmetic share `Σ wᵢ·bitᵢ + ρ` without revealing them (see `engine`).

use pibench_models::fixed::{self, truncated_modulus, P};

use super::backend::{and, carry, not, xor, Backend, Bit};

/// Which function an activation element applies after truncation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ActivationKind {
    /// `max(0, trunc(y))` (plain ReLU, not ReLU6).
    Relu,
    /// `trunc(y)` only (identity elements routed through the GC in strict-privacy mode).
    Truncate,
    /// `max(0, trunc(y₁), …, trunc(y_k))` over a pooling window of `window`
    /// elements: ReLU fused with a max pool.
    MaxRelu {
        /// Elements per window (`2..=MAX_WINDOW`).
        window: u8,
    },
    /// `max(trunc(y₁), …, trunc(y_k))` (a max pool whose inputs are not all ReLUs).
    Max {
        /// Elements per window (`2..=MAX_WINDOW`).
        window: u8,
    },
}

/// Largest pooling window a circuit takes (a 4×4 window).
pub const MAX_WINDOW: u8 = 16;

impl ActivationKind {
    /// Stable one-byte code for messages (windows must be valid: [`ActivationKind::validate`]).
    pub fn code(self) -> u8 {
        match self {
            ActivationKind::Relu => 0,
            ActivationKind::Truncate => 1,
            ActivationKind::MaxRelu { window } => 0x20 | window,
            ActivationKind::Max { window } => 0x40 | window,
        }
    }

    /// Inverse of [`ActivationKind::code`].
    pub fn from_code(code: u8) -> Option<Self> {
        let window = code & 0x1f;
        let windowed = (2..=MAX_WINDOW).contains(&window);
        match code & 0xe0 {
            0 if code == 0 => Some(ActivationKind::Relu),
            0 if code == 1 => Some(ActivationKind::Truncate),
            0x20 if windowed => Some(ActivationKind::MaxRelu { window }),
            0x40 if windowed => Some(ActivationKind::Max { window }),
            _ => None,
        }
    }

    /// Elements (input values per party) per circuit: 1, or the pooling window.
    pub fn window(self) -> usize {
        match self {
            ActivationKind::Relu | ActivationKind::Truncate => 1,
            ActivationKind::MaxRelu { window } | ActivationKind::Max { window } => window as usize,
        }
    }

    /// Whether the output is `max(0, ·)` (`n − 1` bits) rather than signed (`n + 1` bits).
    fn rectified(self) -> bool {
        matches!(self, ActivationKind::Relu | ActivationKind::MaxRelu { .. })
    }

    /// Checks a windowed kind's window (`2..=MAX_WINDOW`).
    pub fn validate(self) -> Result<Self, super::GcError> {
        match self {
            ActivationKind::MaxRelu { window } | ActivationKind::Max { window }
                if !(2..=MAX_WINDOW).contains(&window) =>
            {
                Err(super::GcError::Parameters {
                    reason: format!(
                        "max-pool window of {window} elements: must be in 2..={MAX_WINDOW}"
                    ),
                })
            }
            k => Ok(k),
        }
    }
}

/// Constants of the circuit for one truncation amount `f`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitSpec {
    /// Truncation amount `f` (`fw`).
    pub trunc_bits: u32,
    /// `P_f = (P − 1) / 2^f`.
    pub modulus: u64,
    /// Input width `n`: the bit length of `P_f`.
    pub input_bits: usize,
    /// `k = 2^n − P_f`.
    pub wrap_offset: u64,
    /// `o = 2^(n−1) − (P_f − 1)/2 − 1`: `x' + o` has its top bit set iff `x'` is negative.
    pub sign_offset: u64,
}

impl CircuitSpec {
    /// The constants for truncation by `trunc_bits` (`1..=16`).
    pub fn new(trunc_bits: u32) -> Result<Self, super::GcError> {
        if trunc_bits == 0 || trunc_bits > fixed::TWO_ADICITY {
            return Err(super::GcError::Parameters {
                reason: format!(
                    "truncation by {trunc_bits} bits: must be in 1..={}",
                    fixed::TWO_ADICITY
                ),
            });
        }
        let modulus = truncated_modulus(trunc_bits);
        let input_bits = (64 - modulus.leading_zeros()) as usize;
        let wrap_offset = (1u64 << input_bits) - modulus;
        let half = (modulus - 1) / 2;
        let sign_offset = (1u64 << (input_bits - 1)) - half - 1;
        Ok(Self {
            trunc_bits,
            modulus,
            input_bits,
            wrap_offset,
            sign_offset,
        })
    }

    /// The micro-benchmark's truncation amount `f = 12` (`P_12 = 2^43 −
    /// 368`, 43-bit inputs), the setting of the published figures. A
    /// network's sites use their own `f` (the layer's weight scale, up to 16).
    pub fn default_fixed_point() -> Self {
        match Self::new(12) {
            Ok(s) => s,
            Err(_) => unreachable!("the default truncation amount is valid"),
        }
    }

    /// Number of output wires of `kind`.
    pub fn output_bits(&self, kind: ActivationKind) -> usize {
        if kind.rectified() {
            self.input_bits - 1
        } else {
            self.input_bits + 1
        }
    }

    /// The field weight of each output wire.
    pub fn output_weights(&self, kind: ActivationKind) -> Vec<u64> {
        let mut w: Vec<u64> = (0..self.input_bits).map(|i| 1u64 << i).collect();
        if kind.rectified() {
            w.truncate(self.input_bits - 1);
        } else {
            w.push(P - self.modulus);
        }
        w
    }

    /// The plaintext twin, in integers: the signed value the circuit's
    /// outputs encode, as a field element. `a_h, b_h ≤ P_f`; window-1 kinds.
    pub fn reference(&self, kind: ActivationKind, a_h: u64, b_h: u64) -> u64 {
        self.reference_window(kind, &[a_h], &[b_h])
    }

    /// The plaintext twin of one circuit of any kind: `a` and `b` hold the
    /// window's `kind.window()` values of each party (`≤ P_f`).
    pub fn reference_window(&self, kind: ActivationKind, a: &[u64], b: &[u64]) -> u64 {
        let signed = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| fixed::centred_mod((x + y) % self.modulus, self.modulus))
            .max()
            .unwrap_or(0);
        if kind.rectified() {
            signed.max(0) as u64
        } else {
            fixed::from_i64(signed)
        }
    }
}

#[inline(always)]
fn constant_bit<W>(k: u64, i: usize) -> Bit<W> {
    Bit::Const(i < 64 && (k >> i) & 1 == 1)
}

/// Carries of `x + k` for the public constant `k` (little-endian bits):
/// entry `i` is the carry into bit `i`, for `i = 0..=upto` (`upto ≤ x.len()`).
/// Each carry that is not a constant costs one AND.
fn constant_carries<B: Backend>(
    b: &mut B,
    x: &[Bit<B::Wire>],
    k: u64,
    upto: usize,
) -> Vec<Bit<B::Wire>> {
    let mut carries = Vec::with_capacity(upto + 1);
    let mut c = Bit::Const(false);
    carries.push(c);
    for (i, &xi) in x.iter().enumerate().take(upto) {
        c = carry(b, xi, constant_bit(k, i), c);
        carries.push(c);
    }
    carries
}

/// Steps 1–4 for one element: `(x', neg)` with `x' = (a + y) mod P_f`
/// (`n` bits) and `neg` its sign.
fn reduce_element<B: Backend>(
    b: &mut B,
    spec: &CircuitSpec,
    a: &[Bit<B::Wire>],
    y: &[Bit<B::Wire>],
) -> (Vec<Bit<B::Wire>>, Bit<B::Wire>) {
    let n = spec.input_bits;
    // 1. s = a + y, n + 1 bits.
    let mut s = Vec::with_capacity(n + 1);
    let mut c = Bit::Const(false);
    for i in 0..n {
        // Full adder with one AND and four XORs: s = (a⊕c)⊕y, c' = c ⊕ ((a⊕c)∧(y⊕c)).
        let ac = xor(b, a[i], c);
        let yc = xor(b, y[i], c);
        s.push(xor(b, ac, y[i]));
        let t = and(b, ac, yc);
        c = xor(b, c, t);
    }
    s.push(c);
    // 2. t = s + k over n bits; s + k < 2^(n+1), so bit n of t is s_n ⊕ carry.
    let wrap_carries = constant_carries(b, &s[..n], spec.wrap_offset, n);
    let wrapped = xor(b, s[n], wrap_carries[n]);
    // 3. x' = wrapped ? t : s, i.e. x'_i = s_i ⊕ (wrapped ∧ (t_i ⊕ s_i)),
    //    with t_i ⊕ s_i = k_i ⊕ carry_i (a constant on the low bits).
    let mut x = Vec::with_capacity(n + 1);
    for i in 0..n {
        let diff = xor(b, constant_bit(spec.wrap_offset, i), wrap_carries[i]);
        let m = and(b, wrapped, diff);
        x.push(xor(b, s[i], m));
    }
    // 4. neg = bit n − 1 of x' + o (x' + o < 2^n): only the carry into it is needed.
    let sign_carries = constant_carries(b, &x, spec.sign_offset, n - 1);
    let top = xor(b, x[n - 1], constant_bit(spec.sign_offset, n - 1));
    let neg = xor(b, top, sign_carries[n - 1]);
    (x, neg)
}

/// The larger (signed) of two reduced elements: `u > v` is the borrow out of
/// `v' − u'` (`u' > v'` unsigned, one AND per bit) flipped by `neg_u ⊕ neg_v`;
/// then a multiplexer on the `n` bits and the sign (one AND each).
fn signed_max<B: Backend>(
    b: &mut B,
    u: (Vec<Bit<B::Wire>>, Bit<B::Wire>),
    v: (Vec<Bit<B::Wire>>, Bit<B::Wire>),
) -> (Vec<Bit<B::Wire>>, Bit<B::Wire>) {
    let mut borrow = Bit::Const(false);
    for (&ui, &vi) in u.0.iter().zip(&v.0) {
        // Borrow of v − u: maj(¬v_i, u_i, borrow).
        let nv = not(b, vi);
        borrow = carry(b, nv, ui, borrow);
    }
    let signs = xor(b, u.1, v.1);
    let gt = xor(b, borrow, signs);
    let mut pick = |x: Bit<B::Wire>, y: Bit<B::Wire>| {
        let d = xor(b, x, y);
        let m = and(b, gt, d);
        xor(b, y, m)
    };
    let bits = u.0.iter().zip(&v.0).map(|(&x, &y)| pick(x, y)).collect();
    let neg = pick(u.1, v.1);
    (bits, neg)
}

/// The activation circuit on the truncated shares' bits (little-endian,
/// `spec.input_bits` per element, `kind.window()` elements per party, element
/// after element). Returns the output bits, matching
/// [`CircuitSpec::output_weights`].
pub fn activation_circuit<B: Backend>(
    b: &mut B,
    spec: &CircuitSpec,
    kind: ActivationKind,
    a: &[Bit<B::Wire>],
    y: &[Bit<B::Wire>],
) -> Vec<Bit<B::Wire>> {
    let n = spec.input_bits;
    let k = kind.window();
    debug_assert_eq!(a.len(), k * n);
    debug_assert_eq!(y.len(), k * n);
    let mut best = reduce_element(b, spec, &a[..n], &y[..n]);
    for j in 1..k {
        let next = reduce_element(b, spec, &a[j * n..(j + 1) * n], &y[j * n..(j + 1) * n]);
        best = signed_max(b, next, best);
    }
    let (mut x, neg) = best;
    if kind.rectified() {
        // 5. ReLU on the n − 1 low bits.
        let pos = not(b, neg);
        x[..n - 1].iter().map(|&xi| and(b, xi, pos)).collect()
    } else {
        x.push(neg);
        x
    }
}

/// Evaluates the circuit in plaintext (the [`super::backend::PlainBackend`]
/// oracle) and recombines the outputs with their weights, mod `P`.
pub fn evaluate_plain(spec: &CircuitSpec, kind: ActivationKind, a_h: u64, b_h: u64) -> u64 {
    evaluate_plain_window(spec, kind, &[a_h], &[b_h])
}

/// [`evaluate_plain`] for one circuit of any kind (`kind.window()` values per party).
pub fn evaluate_plain_window(
    spec: &CircuitSpec,
    kind: ActivationKind,
    a: &[u64],
    y: &[u64],
) -> u64 {
    let mut be = super::backend::PlainBackend;
    let bits = |vs: &[u64]| -> Vec<Bit<bool>> {
        vs.iter()
            .flat_map(|&v| (0..spec.input_bits).map(move |i| Bit::Wire((v >> i) & 1 == 1)))
            .collect()
    };
    let out = activation_circuit(&mut be, spec, kind, &bits(a), &bits(y));
    let weights = spec.output_weights(kind);
    let mut acc = 0u64;
    for (bit, w) in out.iter().zip(weights) {
        let on = match bit {
            Bit::Const(v) | Bit::Wire(v) => *v,
        };
        if on {
            acc = fixed::add(acc, w);
        }
    }
    acc
}

/// Gate counts of one activation circuit.
pub fn count_gates(spec: &CircuitSpec, kind: ActivationKind) -> super::backend::CountingBackend {
    let mut be = super::backend::CountingBackend::default();
    let inputs = vec![Bit::Wire(()); spec.input_bits * kind.window()];
    let _ = activation_circuit(&mut be, spec, kind, &inputs, &inputs);
    be
}
