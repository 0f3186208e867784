//! Garbling and evaluation backends: half-gates (Zahur–Rosulek–Evans 2015)
//! and three-halves (Rosulek–Roy 2021), both with free-XOR and
//! point-and-permute, both over the fixed-key-AES hash of [`super::hash`].
//!
//! Each backend wire is a bundle of [`LANES`] labels, one per circuit
//! instance: an AND gate garbles or evaluates `LANES` independent gates with
//! one batched AES call (32 blocks for half-gates garbling, 48 for
//! three-halves), so the AES-NI pipeline stays full although each circuit is
//! a sequential carry chain.

use super::hash::{AesPrg, Block, FixedKeyHash};
use super::Backend;

/// Circuit instances garbled side by side (structure of arrays).
pub const LANES: usize = 8;

/// One label per lane.
pub type Lanes = [Block; LANES];

/// Lane-wise XOR, written out so the compiler keeps it in vector registers.
#[inline(always)]
fn xor_lanes(a: &Lanes, b: &Lanes) -> Lanes {
    [
        a[0] ^ b[0],
        a[1] ^ b[1],
        a[2] ^ b[2],
        a[3] ^ b[3],
        a[4] ^ b[4],
        a[5] ^ b[5],
        a[6] ^ b[6],
        a[7] ^ b[7],
    ]
}

/// XOR of every lane with one block (`Δ`).
#[inline(always)]
fn xor_all(a: &Lanes, d: Block) -> Lanes {
    xor_lanes(a, &[d; LANES])
}

/// The colour (point-and-permute) bit of a label.
#[inline(always)]
pub fn color(label: Block) -> bool {
    label & 1 == 1
}

/// Bit masks for one lane: all ones when `b`.
#[inline(always)]
fn mask128(b: bool) -> Block {
    (b as u128).wrapping_neg()
}

#[inline(always)]
fn mask64(b: bool) -> u64 {
    (b as u64).wrapping_neg()
}

/// Garbled tables of a batch, as they travel: 64-bit words and (for
/// three-halves) five control bits per gate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GarbledTables {
    /// Half-gates: 4 words (2 blocks) per gate; three-halves: 3 half-labels per gate.
    pub words: Vec<u64>,
    /// Three-halves control bits, one byte (low 5 bits) per gate; empty for half-gates.
    pub control: Vec<u8>,
}

/// Tweak of AND gate `gate` of lane `lane`, sub-index `k`: unique per batch
/// (`batch` in the high 64 bits), per gate and per hash call.
#[inline(always)]
fn tweak(batch: u64, gate: u64, lane: usize, per_gate: u64, k: u64) -> Block {
    ((batch as u128) << 64) | (((gate * LANES as u64 + lane as u64) * per_gate + k) as u128)
}

/// Half-gates garbler: wires are the lanes' zero labels.
#[derive(Debug)]
pub struct HalfGatesGarbler<'a> {
    hash: &'a FixedKeyHash,
    delta: Block,
    batch: u64,
    gate: u64,
    active: usize,
    out: &'a mut GarbledTables,
}

impl<'a> HalfGatesGarbler<'a> {
    /// A garbler appending to `out`; `gate` is the index of the next AND gate in the batch.
    pub fn new(
        hash: &'a FixedKeyHash,
        delta: Block,
        batch: u64,
        gate: u64,
        active: usize,
        out: &'a mut GarbledTables,
    ) -> Self {
        Self {
            hash,
            delta,
            batch,
            gate,
            active,
            out,
        }
    }

    /// Index of the next AND gate.
    pub fn gate(&self) -> u64 {
        self.gate
    }
}

impl Backend for HalfGatesGarbler<'_> {
    type Wire = Lanes;
    #[inline(always)]
    fn xor(&mut self, a: Lanes, b: Lanes) -> Lanes {
        xor_lanes(&a, &b)
    }
    #[inline(always)]
    fn not(&mut self, a: Lanes) -> Lanes {
        xor_all(&a, self.delta)
    }
    #[inline(always)]
    fn and(&mut self, a: Lanes, b: Lanes) -> Lanes {
        let d = self.delta;
        let mut h = [0u128; 4 * LANES];
        let mut t = [0u128; 4 * LANES];
        for l in 0..LANES {
            h[4 * l] = a[l];
            h[4 * l + 1] = a[l] ^ d;
            h[4 * l + 2] = b[l];
            h[4 * l + 3] = b[l] ^ d;
            let j0 = tweak(self.batch, self.gate, l, 2, 0);
            t[4 * l] = j0;
            t[4 * l + 1] = j0;
            t[4 * l + 2] = j0 | 1;
            t[4 * l + 3] = j0 | 1;
        }
        self.hash.hash_array(&mut h, &t);
        let mut c = [0u128; LANES];
        for l in 0..LANES {
            let pa = color(a[l]);
            let pb = color(b[l]);
            let tg = h[4 * l] ^ h[4 * l + 1] ^ (mask128(pb) & d);
            let wg = h[4 * l] ^ (mask128(pa) & tg);
            let te = h[4 * l + 2] ^ h[4 * l + 3] ^ a[l];
            let we = h[4 * l + 2] ^ (mask128(pb) & (te ^ a[l]));
            c[l] = wg ^ we;
            if l < self.active {
                self.out.words.extend_from_slice(&[
                    tg as u64,
                    (tg >> 64) as u64,
                    te as u64,
                    (te >> 64) as u64,
                ]);
            }
        }
        self.gate += 1;
        c
    }
}

/// Half-gates evaluator: wires are the lanes' active labels.
#[derive(Debug)]
pub struct HalfGatesEvaluator<'a> {
    hash: &'a FixedKeyHash,
    batch: u64,
    gate: u64,
    active: usize,
    words: &'a [u64],
    pos: usize,
}

impl<'a> HalfGatesEvaluator<'a> {
    /// An evaluator reading `words` from the start; `gate` is the index of the next AND gate.
    ///
    /// The caller has checked that `words` holds every table the circuit reads.
    pub fn new(
        hash: &'a FixedKeyHash,
        batch: u64,
        gate: u64,
        active: usize,
        words: &'a [u64],
    ) -> Self {
        Self {
            hash,
            batch,
            gate,
            active,
            words,
            pos: 0,
        }
    }

    /// Index of the next AND gate.
    pub fn gate(&self) -> u64 {
        self.gate
    }

    /// Table words consumed so far.
    pub fn consumed(&self) -> usize {
        self.pos
    }
}

impl Backend for HalfGatesEvaluator<'_> {
    type Wire = Lanes;
    #[inline(always)]
    fn xor(&mut self, a: Lanes, b: Lanes) -> Lanes {
        xor_lanes(&a, &b)
    }
    #[inline(always)]
    fn not(&mut self, a: Lanes) -> Lanes {
        a
    }
    #[inline(always)]
    fn and(&mut self, a: Lanes, b: Lanes) -> Lanes {
        let mut h = [0u128; 2 * LANES];
        let mut t = [0u128; 2 * LANES];
        for l in 0..LANES {
            h[2 * l] = a[l];
            h[2 * l + 1] = b[l];
            let j0 = tweak(self.batch, self.gate, l, 2, 0);
            t[2 * l] = j0;
            t[2 * l + 1] = j0 | 1;
        }
        self.hash.hash_array(&mut h, &t);
        let mut c = [0u128; LANES];
        for l in 0..self.active {
            let w = &self.words[self.pos..self.pos + 4];
            self.pos += 4;
            let tg = w[0] as u128 | (w[1] as u128) << 64;
            let te = w[2] as u128 | (w[3] as u128) << 64;
            let sa = color(a[l]);
            let sb = color(b[l]);
            let wg = h[2 * l] ^ (mask128(sa) & tg);
            let we = h[2 * l + 1] ^ (mask128(sb) & (te ^ a[l]));
            c[l] = wg ^ we;
        }
        self.gate += 1;
        c
    }
}

// ---------------------------------------------------------------------------
// Three-halves.
//
// Labels are sliced into halves `X = X_L ‖ X_R` (`X_L` the high 64 bits).
// With colour bits `(i, j)` of its labels `A, B`, the evaluator computes
//   C_L = h(A) ⊕ h(A⊕B) ⊕ i·G0 ⊕ (i⊕j)·G2 ⊕ R_L(i,j,r)·(A_L, A_R, B_L, B_R)
//   C_R = h(B) ⊕ h(A⊕B) ⊕ j·G1 ⊕ (i⊕j)·G2 ⊕ R_R(i,j,r)·(A_L, A_R, B_L, B_R)
// where `h` is the low half of the tweakable hash, `G0..G2` the three
// half-label ciphertexts and `R(i,j,r) = R_p(i,j) ⊕ r₁·S₁ ⊕ r₂·S₂` a 2×4
// bit matrix selected by the colours and by two control bits `r` that the
// evaluator decrypts from five transmitted bits `z` with the hashes' top
// bits. The control bits are uniformly random for the evaluator (the
// garbler's coins `ρ₁, ρ₂` mask them), so `R` reveals nothing about the
// truth values ("slicing and dicing", Rosulek–Roy 2021). The garbler solves
// for the linear parts of the output label and of `G0..G2` over the six
// half-labels `(A_L, A_R, B_L, B_R, Δ_L, Δ_R)`; `LINEAR_PARTS` holds the
// solution for each of the 16 cases (colour pair of the true output,
// garbler coins) and a unit test checks all 4 evaluator cases of each.
// ---------------------------------------------------------------------------

/// `R_p(i, j)`: bits 0..3 are the left row over `(A_L, A_R, B_L, B_R)`, bits 4..7 the right row.
const R_P: [u8; 4] = [0b0010_0100, 0b0000_0100, 0b0010_0000, 0b0000_0000];
/// `S₁`, `S₂`: the control bits' contributions to `R`.
const S_1: u8 = 0b1001_0111;
const S_2: u8 = 0b1110_1001;

/// The control bits the evaluator decodes at colours `(i, j)` when the true
/// output sits at colours `(i*, j*)` and the garbler's coins are `ρ`.
const fn control_bits(i: u8, j: u8, is: u8, js: u8, rho1: u8, rho2: u8) -> (u8, u8) {
    let c = (i ^ j) & (is ^ js);
    (rho1 ^ (i & is) ^ c, rho2 ^ (j & js) ^ c)
}

/// `R(i, j, r)` as two 4-bit rows.
const fn r_matrix(i: u8, j: u8, r1: u8, r2: u8) -> u8 {
    R_P[(2 * i + j) as usize] ^ (S_1 & (0u8.wrapping_sub(r1))) ^ (S_2 & (0u8.wrapping_sub(r2)))
}

/// A 4-bit row over the evaluator's halves `(A_L ⊕ iΔ_L, A_R ⊕ iΔ_R, B_L ⊕ jΔ_L, B_R ⊕ jΔ_R)`
/// as a 6-bit row over `(A_L, A_R, B_L, B_R, Δ_L, Δ_R)` (colour-0 labels).
const fn row_over_secrets(row: u8, i: u8, j: u8) -> u8 {
    let mut r = row & 0xF;
    if row & 1 != 0 && i == 1 {
        r ^= 1 << 4;
    }
    if row & 2 != 0 && i == 1 {
        r ^= 1 << 5;
    }
    if row & 4 != 0 && j == 1 {
        r ^= 1 << 4;
    }
    if row & 8 != 0 && j == 1 {
        r ^= 1 << 5;
    }
    r
}

/// Evaluator's linear rows at colours `(i, j)`: `(left, right)` over the six secrets.
const fn evaluator_rows(i: u8, j: u8, is: u8, js: u8, rho1: u8, rho2: u8) -> (u8, u8) {
    let (r1, r2) = control_bits(i, j, is, js, rho1, rho2);
    let m = r_matrix(i, j, r1, r2);
    (
        row_over_secrets(m & 0xF, i, j),
        row_over_secrets(m >> 4, i, j),
    )
}

/// 1 when colours `(i, j)` are those of the true output.
const fn truth(i: u8, j: u8, is: u8, js: u8) -> u8 {
    (i == is && j == js) as u8
}

/// Linear parts the garbler uses: `[K_L, K_R, T0, T1, T2]`, 6-bit rows over
/// `(A_L, A_R, B_L, B_R, Δ_L, Δ_R)`, for case index `is·8 + js·4 + ρ₁·2 + ρ₂`.
const LINEAR_PARTS: [[u8; 5]; 16] = {
    let mut out = [[0u8; 5]; 16];
    let mut case = 0;
    while case < 16 {
        let is = (case >> 3) as u8 & 1;
        let js = (case >> 2) as u8 & 1;
        let rho1 = (case >> 1) as u8 & 1;
        let rho2 = case as u8 & 1;
        let dl = 1u8 << 4;
        let dr = 1u8 << 5;
        let (l00, r00) = evaluator_rows(0, 0, is, js, rho1, rho2);
        let (l01, _) = evaluator_rows(0, 1, is, js, rho1, rho2);
        let (l11, r11) = evaluator_rows(1, 1, is, js, rho1, rho2);
        let k_l = l00 ^ (truth(0, 0, is, js) * dl);
        let k_r = r00 ^ (truth(0, 0, is, js) * dr);
        let t2 = k_l ^ l01 ^ (truth(0, 1, is, js) * dl);
        let t0 = k_l ^ l11 ^ (truth(1, 1, is, js) * dl);
        let t1 = k_r ^ r11 ^ (truth(1, 1, is, js) * dr);
        out[case] = [k_l, k_r, t0, t1, t2];
        case += 1;
    }
    out
};

/// `row · (A_L, A_R, B_L, B_R)` for a 4-bit row.
#[inline(always)]
fn apply_row4(row: u8, inputs: &[u64; 4]) -> u64 {
    (mask64(row & 1 != 0) & inputs[0])
        ^ (mask64(row & 2 != 0) & inputs[1])
        ^ (mask64(row & 4 != 0) & inputs[2])
        ^ (mask64(row & 8 != 0) & inputs[3])
}

/// XORs of every subset of four half-labels, indexed by the subset's bit mask.
#[inline(always)]
fn subset_xors(v: &[u64; 4]) -> [u64; 16] {
    let mut t = [0u64; 16];
    for m in 1..16usize {
        t[m] = t[m & (m - 1)] ^ v[m.trailing_zeros() as usize];
    }
    t
}

#[inline(always)]
fn halves(x: Block) -> (u64, u64) {
    ((x >> 64) as u64, x as u64)
}

#[inline(always)]
fn top_bit(x: Block) -> u8 {
    (x >> 127) as u8
}

/// Three-halves garbler.
#[derive(Debug)]
pub struct ThreeHalvesGarbler<'a> {
    hash: &'a FixedKeyHash,
    delta: Block,
    batch: u64,
    gate: u64,
    active: usize,
    out: &'a mut GarbledTables,
    coins: &'a mut AesPrg,
    coin_bits: u128,
    coins_left: u32,
}

impl<'a> ThreeHalvesGarbler<'a> {
    /// A garbler appending to `out`, drawing its control-bit coins from `coins`.
    pub fn new(
        hash: &'a FixedKeyHash,
        delta: Block,
        batch: u64,
        gate: u64,
        active: usize,
        out: &'a mut GarbledTables,
        coins: &'a mut AesPrg,
    ) -> Self {
        Self {
            hash,
            delta,
            batch,
            gate,
            active,
            out,
            coins,
            coin_bits: 0,
            coins_left: 0,
        }
    }

    /// Index of the next AND gate.
    pub fn gate(&self) -> u64 {
        self.gate
    }

    #[inline(always)]
    fn two_coins(&mut self) -> (u8, u8) {
        if self.coins_left == 0 {
            self.coin_bits = self.coins.next_block();
            self.coins_left = 64;
        }
        let c = (self.coin_bits & 3) as u8;
        self.coin_bits >>= 2;
        self.coins_left -= 1;
        (c >> 1, c & 1)
    }
}

impl Backend for ThreeHalvesGarbler<'_> {
    type Wire = Lanes;
    #[inline(always)]
    fn xor(&mut self, a: Lanes, b: Lanes) -> Lanes {
        xor_lanes(&a, &b)
    }
    #[inline(always)]
    fn not(&mut self, a: Lanes) -> Lanes {
        xor_all(&a, self.delta)
    }
    #[inline(always)]
    fn and(&mut self, a: Lanes, b: Lanes) -> Lanes {
        let d = self.delta;
        let mut h = [0u128; 6 * LANES];
        let mut t = [0u128; 6 * LANES];
        let mut a0 = [0u128; LANES];
        let mut b0 = [0u128; LANES];
        for l in 0..LANES {
            // Colour-0 labels.
            a0[l] = a[l] ^ (mask128(color(a[l])) & d);
            b0[l] = b[l] ^ (mask128(color(b[l])) & d);
            let ab = a0[l] ^ b0[l];
            h[6 * l..6 * l + 6].copy_from_slice(&[a0[l], a0[l] ^ d, b0[l], b0[l] ^ d, ab, ab ^ d]);
            let j = tweak(self.batch, self.gate, l, 3, 0);
            t[6 * l..6 * l + 6].copy_from_slice(&[j, j, j + 1, j + 1, j + 2, j + 2]);
        }
        self.hash.hash_array(&mut h, &t);
        let (dl, dr) = halves(d);
        let delta_rows = [0, dl, dr, dl ^ dr];
        let mut c = [0u128; LANES];
        for l in 0..LANES {
            let hl = &h[6 * l..6 * l + 6];
            // True output (a ∧ b = 1) sits at the colours of the 1-labels.
            let is = color(a[l]) as u8 ^ 1;
            let js = color(b[l]) as u8 ^ 1;
            let (rho1, rho2) = self.two_coins();
            let parts = LINEAR_PARTS[(is * 8 + js * 4 + rho1 * 2 + rho2) as usize];
            let (al, ar) = halves(a0[l]);
            let (bl, br) = halves(b0[l]);
            let subsets = subset_xors(&[al, ar, bl, br]);
            let apply = |row: u8| subsets[(row & 0xF) as usize] ^ delta_rows[(row >> 4) as usize];
            let lo = |x: Block| x as u64;
            let cl = lo(hl[0]) ^ lo(hl[4]) ^ apply(parts[0]);
            let cr = lo(hl[2]) ^ lo(hl[4]) ^ apply(parts[1]);
            c[l] = (cl as u128) << 64 | cr as u128;
            if l < self.active {
                let g0 = lo(hl[0]) ^ lo(hl[1]) ^ apply(parts[2]);
                let g1 = lo(hl[2]) ^ lo(hl[3]) ^ apply(parts[3]);
                let g2 = lo(hl[4]) ^ lo(hl[5]) ^ apply(parts[4]);
                self.out.words.extend_from_slice(&[g0, g1, g2]);
                let m = |k: usize| top_bit(hl[k]);
                let z = (rho1 ^ m(0) ^ m(4))
                    | (rho2 ^ m(2) ^ m(4)) << 1
                    | (is ^ m(0) ^ m(1)) << 2
                    | (js ^ m(2) ^ m(3)) << 3
                    | (is ^ js ^ m(4) ^ m(5)) << 4;
                self.out.control.push(z);
            }
        }
        self.gate += 1;
        c
    }
}

/// Three-halves evaluator.
#[derive(Debug)]
pub struct ThreeHalvesEvaluator<'a> {
    hash: &'a FixedKeyHash,
    batch: u64,
    gate: u64,
    active: usize,
    words: &'a [u64],
    control: &'a [u8],
    pos: usize,
}

impl<'a> ThreeHalvesEvaluator<'a> {
    /// An evaluator reading `words` and `control` from the start.
    ///
    /// The caller has checked that the slices hold every table the circuit reads.
    pub fn new(
        hash: &'a FixedKeyHash,
        batch: u64,
        gate: u64,
        active: usize,
        words: &'a [u64],
        control: &'a [u8],
    ) -> Self {
        Self {
            hash,
            batch,
            gate,
            active,
            words,
            control,
            pos: 0,
        }
    }

    /// Index of the next AND gate.
    pub fn gate(&self) -> u64 {
        self.gate
    }

    /// Gates' tables consumed so far.
    pub fn consumed(&self) -> usize {
        self.pos
    }
}

impl Backend for ThreeHalvesEvaluator<'_> {
    type Wire = Lanes;
    #[inline(always)]
    fn xor(&mut self, a: Lanes, b: Lanes) -> Lanes {
        xor_lanes(&a, &b)
    }
    #[inline(always)]
    fn not(&mut self, a: Lanes) -> Lanes {
        a
    }
    #[inline(always)]
    fn and(&mut self, a: Lanes, b: Lanes) -> Lanes {
        let mut h = [0u128; 3 * LANES];
        let mut t = [0u128; 3 * LANES];
        for l in 0..LANES {
            h[3 * l..3 * l + 3].copy_from_slice(&[a[l], b[l], a[l] ^ b[l]]);
            let j = tweak(self.batch, self.gate, l, 3, 0);
            t[3 * l..3 * l + 3].copy_from_slice(&[j, j + 1, j + 2]);
        }
        self.hash.hash_array(&mut h, &t);
        let mut c = [0u128; LANES];
        for l in 0..self.active {
            let g = &self.words[3 * self.pos..3 * self.pos + 3];
            let z = self.control[self.pos];
            self.pos += 1;
            let i = color(a[l]) as u8;
            let j = color(b[l]) as u8;
            let ij = i ^ j;
            let (ha, hb, hab) = (h[3 * l], h[3 * l + 1], h[3 * l + 2]);
            let zb = |k: u8| (z >> k) & 1;
            let r1 = zb(0) ^ (i & zb(2)) ^ (ij & zb(4)) ^ top_bit(ha) ^ top_bit(hab);
            let r2 = zb(1) ^ (j & zb(3)) ^ (ij & zb(4)) ^ top_bit(hb) ^ top_bit(hab);
            let m = r_matrix(i, j, r1, r2);
            let (al, ar) = halves(a[l]);
            let (bl, br) = halves(b[l]);
            let inputs = [al, ar, bl, br];
            let cl = ha as u64
                ^ hab as u64
                ^ (mask64(i == 1) & g[0])
                ^ (mask64(ij == 1) & g[2])
                ^ apply_row4(m & 0xF, &inputs);
            let cr = hb as u64
                ^ hab as u64
                ^ (mask64(j == 1) & g[1])
                ^ (mask64(ij == 1) & g[2])
                ^ apply_row4(m >> 4, &inputs);
            c[l] = (cl as u128) << 64 | cr as u128;
        }
        self.gate += 1;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every evaluator case agrees with the garbler's solution (the two
    /// equations the solution did not use are consistency checks).
    #[test]
    fn three_halves_linear_parts_are_consistent() {
        for (case, parts) in LINEAR_PARTS.iter().enumerate() {
            let is = (case >> 3) as u8 & 1;
            let js = (case >> 2) as u8 & 1;
            let rho1 = (case >> 1) as u8 & 1;
            let rho2 = case as u8 & 1;
            let [k_l, k_r, t0, t1, t2] = *parts;
            for i in 0..2u8 {
                for j in 0..2u8 {
                    let (l, r) = evaluator_rows(i, j, is, js, rho1, rho2);
                    let truth = (i == is && j == js) as u8;
                    let left = (i * t0) ^ ((i ^ j) * t2) ^ l;
                    let right = (j * t1) ^ ((i ^ j) * t2) ^ r;
                    assert_eq!(left, k_l ^ (truth << 4), "case {case} ({i},{j}) left");
                    assert_eq!(right, k_r ^ (truth << 5), "case {case} ({i},{j}) right");
                }
            }
        }
    }

    #[test]
    fn control_bits_are_uniform_for_the_evaluator() {
        // For a fixed colour pair, the two coins map bijectively onto the control bits.
        for is in 0..2 {
            for js in 0..2 {
                for i in 0..2 {
                    for j in 0..2 {
                        let mut seen = [false; 4];
                        for rho in 0..4u8 {
                            let (r1, r2) = control_bits(i, j, is, js, rho >> 1, rho & 1);
                            seen[(r1 * 2 + r2) as usize] = true;
                        }
                        assert!(seen.iter().all(|&s| s));
                    }
                }
            }
        }
    }
}
