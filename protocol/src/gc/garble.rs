//! Garbling and evaluation backends: half-gates (Zahur–Rosulek–Evans 2015)
//! and three-halves (Rosulek–Roy 2021), both with free-XOR and
//! point-and-permute, both over the fixed-key-AES hash of [`super::hash`].
//!
//! Each backend wire is a bundle of [`LANES`] labels, one per circuit
//! instance, stored in a flat [`LabelArena`] and named by a 4-byte
//! [`WireId`]: an AND gate garbles or evaluates `LANES` independent gates
//! with one batched AES call (64 blocks for half-gates garbling, 96 for
//! three-halves), so the AES-NI pipeline stays full although each circuit is
//! a sequential carry chain, and the per-call overhead is shared by
//! `LANES` circuits.

use super::accel::{
    ThreeHalvesDeltaParts, ThreeHalvesEvalMasks, ThreeHalvesEvalTruth, ThreeHalvesGarbleMasks,
    ThreeHalvesGarbleTruth,
};
use super::hash::{from_aes, sigma, to_aes, AesBlock, AesPrg, Block, FixedKeyHash};
use super::simd::{prefetch, prefetch_for_write, V};
use super::Backend;

/// Circuit instances garbled side by side (structure of arrays).
pub const LANES: usize = 16;

/// One label per lane.
pub type Lanes = [Block; LANES];

/// A wire of a batch: the index of its label bundle in a [`LabelArena`].
pub type WireId = u32;

/// Flat label storage of one batch: wire `w` holds one label per lane in
/// bundle `w`. Gates write their output bundle in place and pass a 4-byte
/// [`WireId`] around instead of `LANES` labels; the arena keeps its
/// bundles across batches, so garbling allocates and clears nothing per gate.
#[derive(Debug, Default, Clone)]
pub struct LabelArena {
    wires: Vec<Lanes>,
    used: usize,
}

impl LabelArena {
    /// An empty arena with room for `wires` bundles.
    pub fn with_capacity(wires: usize) -> Self {
        Self {
            wires: vec![[0; LANES]; wires],
            used: 0,
        }
    }

    /// Forgets every wire, keeping the memory.
    pub fn clear(&mut self) {
        self.used = 0;
    }

    /// Number of wires stored.
    pub fn len(&self) -> usize {
        self.used
    }

    /// Whether no wire is stored.
    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// Reserves the next bundle (its old contents are overwritten by the caller).
    #[inline(always)]
    fn next(&mut self) -> usize {
        let id = self.used;
        if id == self.wires.len() {
            self.wires.push([0; LANES]);
        }
        self.used += 1;
        id
    }

    /// Appends a bundle and returns its wire.
    #[inline(always)]
    pub fn push(&mut self, labels: Lanes) -> WireId {
        let id = self.next();
        self.wires[id] = labels;
        id as WireId
    }

    /// The labels of wire `w`.
    #[inline(always)]
    pub fn get(&self, w: WireId) -> &Lanes {
        &self.wires[..self.used][w as usize]
    }

    /// Appends a wire and returns it with the two older operands `a`, `b`
    /// and the new bundle to fill in place (no bundle is moved or cleared).
    ///
    /// # Panics
    /// If `a` or `b` is not an existing wire (a programming error).
    #[inline(always)]
    fn gate(&mut self, a: WireId, b: WireId) -> (&Lanes, &Lanes, &mut Lanes, WireId) {
        let id = self.next();
        let (old, new) = self.wires.split_at_mut(id);
        (
            &old[a as usize],
            &old[b as usize],
            &mut new[0],
            id as WireId,
        )
    }

    /// Appends `count` wires and fills them from circuit-major labels:
    /// lane `l` of new wire `i` is `labels[l * count + i]`; lanes past
    /// `labels.len() / count` are zero. Returns the first new wire.
    pub fn push_transposed(&mut self, labels: &[Block], count: usize) -> WireId {
        let first = self.used;
        for _ in 0..count {
            self.next();
        }
        let fresh = &mut self.wires[first..first + count];
        if let Some(circuits) = labels.len().checked_div(count) {
            let active = circuits.min(LANES);
            for wire in fresh.iter_mut() {
                wire[active..].fill(0);
            }
            for (l, circuit) in labels.chunks_exact(count).take(LANES).enumerate() {
                for (wire, &label) in fresh.iter_mut().zip(circuit) {
                    wire[l] = label;
                }
            }
        }
        first as WireId
    }
}

/// A new wire `a ⊕ b`.
#[inline(always)]
fn xor_gate(arena: &mut LabelArena, a: WireId, b: WireId) -> WireId {
    let (a, b, c, id) = arena.gate(a, b);
    for ((c, a), b) in c.iter_mut().zip(a).zip(b) {
        *c = a ^ b;
    }
    id
}

/// A new wire `a ⊕ Δ` (every lane).
#[inline(always)]
fn xor_delta_gate(arena: &mut LabelArena, a: WireId, d: Block) -> WireId {
    let (a, _, c, id) = arena.gate(a, a);
    for (c, a) in c.iter_mut().zip(a) {
        *c = a ^ d;
    }
    id
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

/// Tweaks are `batch ‖ counter` (`batch` in the high 64 bits). The
/// counter of lane `l`, hash call `k` of AND gate `gate`, when each lane's
/// gate makes `per_gate` calls, is `first_counter(gate, per_gate) + l·per_gate + k`:
/// unique per batch, gate, lane and call.
#[inline(always)]
fn first_counter(gate: u64, per_gate: u64) -> u64 {
    gate * LANES as u64 * per_gate
}

/// The high half of every tweak of a batch.
#[inline(always)]
fn tweak_high(batch: u64) -> Block {
    (batch as u128) << 64
}

/// Half-gates lane offsets `2l` of the tweaks, as vectors: a gate's
/// counters start at a multiple of `2·LANES` (`first_counter(gate, 2)`), so
/// lane `l`'s tweak is `(batch ‖ first) ⊕ 2l`, one XOR per lane.
fn half_gates_lane_tweaks() -> [V; LANES] {
    const _: () = assert!(LANES.is_power_of_two());
    core::array::from_fn(|l| V::of(2 * l as u128))
}

/// Scratch of the portable half-gates garbler (per gate, overwritten, never cleared).
#[derive(Debug)]
struct HalfGatesGarbleScratch {
    buf: [AesBlock; 4 * LANES],
    lane_tweaks: [V; LANES],
    /// `σ(A⁰)`, `σ(B⁰)` per lane.
    sigma_a: [V; LANES],
    sigma_b: [V; LANES],
    /// Each lane's `(T_G, T_E ⊕ A⁰)`, the gate's table words.
    table: [u128; 2 * LANES],
}

impl HalfGatesGarbleScratch {
    fn new() -> Self {
        Self {
            buf: [AesBlock::default(); 4 * LANES],
            lane_tweaks: half_gates_lane_tweaks(),
            sigma_a: [V::of(0); LANES],
            sigma_b: [V::of(0); LANES],
            table: [0; 2 * LANES],
        }
    }

    /// The portable gate: σ and tweaks on SSE2, one batched call of the `aes` crate.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn garble(
        &mut self,
        hash: &FixedKeyHash,
        delta: Block,
        sigma_delta: Block,
        a: &Lanes,
        b: &Lanes,
        c: &mut Lanes,
        base: Block,
    ) {
        let d = V::of(delta);
        let sd = V::of(sigma_delta);
        let base = V::of(base);
        let one = V::of(1);
        // H(X, j) = π(σ(X) ⊕ j) ⊕ σ(X), σ linear: σ(X ⊕ Δ) = σ(X) ⊕ σ(Δ).
        // Lane l hashes [A⁰, A¹] with tweak first + 2l, [B⁰, B¹] with first + 2l + 1.
        let (sa, sb) = (&mut self.sigma_a, &mut self.sigma_b);
        for (l, blocks) in self.buf.chunks_exact_mut(4).enumerate() {
            sa[l] = V::of(a[l]).sigma();
            sb[l] = V::of(b[l]).sigma();
            let ja = base.xor(self.lane_tweaks[l]);
            let xa = sa[l].xor(ja);
            let xb = sb[l].xor(ja).xor(one);
            blocks[0] = xa.to_aes();
            blocks[1] = xa.xor(sd).to_aes();
            blocks[2] = xb.to_aes();
            blocks[3] = xb.xor(sd).to_aes();
        }
        hash.permute_blocks(&mut self.buf);
        // Lane l's two ciphertexts (T_G, T_E), as the four table words of the lane.
        for (l, ((cl, t), p)) in c
            .iter_mut()
            .zip(self.table.chunks_exact_mut(2))
            .zip(self.buf.chunks_exact(4))
            .enumerate()
        {
            let (p0, p1, p2, p3) = (
                V::from_aes(&p[0]),
                V::from_aes(&p[1]),
                V::from_aes(&p[2]),
                V::from_aes(&p[3]),
            );
            let av = V::of(a[l]);
            let pa = av.color_mask();
            let pb = V::of(b[l]).color_mask();
            // H(A⁰) ⊕ H(A¹) = π(..) ⊕ π(..) ⊕ σ(Δ).
            let tg = p0.xor(p1).xor(sd).xor(pb.and(d));
            let wg = p0.xor(sa[l]).xor(pa.and(tg));
            let te_a = p2.xor(p3).xor(sd);
            let we = p2.xor(sb[l]).xor(pb.and(te_a));
            *cl = wg.xor(we).to_u128();
            t[0] = tg.to_u128();
            t[1] = te_a.xor(av).to_u128();
        }
    }
}

/// Half-gates garbler: wires are the lanes' zero labels.
#[derive(Debug)]
pub struct HalfGatesGarbler<'a> {
    hash: &'a FixedKeyHash,
    delta: Block,
    batch: u64,
    gate: u64,
    active: usize,
    /// The batch's table words, written in place from `pos` on.
    out: &'a mut [u64],
    pos: usize,
    arena: &'a mut LabelArena,
    sigma_delta: Block,
    scratch: HalfGatesGarbleScratch,
}

impl<'a> HalfGatesGarbler<'a> {
    /// A garbler writing its tables into `out` from the start (4 words per
    /// lane and AND gate, overwritten in place: a reused buffer is neither
    /// cleared nor zeroed), its wires living in `arena`; `gate` is the index
    /// of the next AND gate in the batch.
    ///
    /// # Panics
    /// In [`Backend::and`], if `out` has no room for the gate's words (the
    /// caller sizes it from [`super::engine::CircuitShape::table_words`]).
    pub fn new(
        hash: &'a FixedKeyHash,
        delta: Block,
        batch: u64,
        gate: u64,
        active: usize,
        out: &'a mut [u64],
        arena: &'a mut LabelArena,
    ) -> Self {
        Self {
            hash,
            delta,
            batch,
            gate,
            active: active.min(LANES),
            out,
            pos: 0,
            arena,
            sigma_delta: sigma(delta),
            scratch: HalfGatesGarbleScratch::new(),
        }
    }

    /// Index of the next AND gate.
    pub fn gate(&self) -> u64 {
        self.gate
    }
}

impl Backend for HalfGatesGarbler<'_> {
    type Wire = WireId;
    #[inline(always)]
    fn xor(&mut self, a: WireId, b: WireId) -> WireId {
        xor_gate(self.arena, a, b)
    }
    #[inline(always)]
    fn not(&mut self, a: WireId) -> WireId {
        xor_delta_gate(self.arena, a, self.delta)
    }
    #[inline(always)]
    fn and(&mut self, a: WireId, b: WireId) -> WireId {
        let base = tweak_high(self.batch) | first_counter(self.gate, 2) as u128;
        let (a, b, c, id) = self.arena.gate(a, b);
        let n = 4 * self.active;
        let start = self.pos;
        self.pos += n;
        let words = &mut self.out[start..start + n];
        if let Some((v, keys)) = self.hash.vaes() {
            let out: &mut [[u8; 16]] = bytemuck::cast_slice_mut(words);
            if let Ok(t) = <&mut [[u8; 16]; 2 * LANES]>::try_from(&mut *out) {
                v.half_gates_garble(keys, a, b, c, t, base, self.delta);
            } else {
                let mut t = [[0u8; 16]; 2 * LANES];
                v.half_gates_garble(keys, a, b, c, &mut t, base, self.delta);
                out.copy_from_slice(&t[..2 * self.active]);
            }
        } else if let Some((k, keys)) = self.hash.accel() {
            let out: &mut [[u8; 16]] = bytemuck::cast_slice_mut(words);
            if let Ok(t) = <&mut [[u8; 16]; 2 * LANES]>::try_from(&mut *out) {
                k.half_gates_garble(keys, a, b, c, t, base, self.delta);
            } else {
                let mut t = [[0u8; 16]; 2 * LANES];
                k.half_gates_garble(keys, a, b, c, &mut t, base, self.delta);
                out.copy_from_slice(&t[..2 * self.active]);
            }
        } else {
            self.scratch
                .garble(self.hash, self.delta, self.sigma_delta, a, b, c, base);
            words.copy_from_slice(&bytemuck::cast_slice(&self.scratch.table)[..n]);
        }
        // The tables are written once, front to back: ask for a later gate's lines early.
        let ahead = self.pos + PREFETCH_AHEAD_WORDS;
        if let Some(later) = self.out.get(ahead..ahead + 4 * LANES) {
            for line in later.chunks(8) {
                prefetch_for_write(&line[0]);
            }
        }
        self.gate += 1;
        id
    }
}

/// How far ahead of the current gate the half-gates garbler and evaluator
/// prefetch their table words (8 gates of `LANES` lanes).
const PREFETCH_AHEAD_WORDS: usize = 8 * 4 * LANES;

/// Half-gates evaluator: wires are the lanes' active labels.
#[derive(Debug)]
pub struct HalfGatesEvaluator<'a> {
    hash: &'a FixedKeyHash,
    batch: u64,
    gate: u64,
    active: usize,
    words: &'a [u64],
    pos: usize,
    arena: &'a mut LabelArena,
    buf: [AesBlock; 2 * LANES],
    lane_tweaks: [V; LANES],
    /// Per-gate scratch, overwritten by every gate (never cleared): `σ(A) ⊕ σ(B)`.
    sigma_sums: [V; LANES],
}

impl<'a> HalfGatesEvaluator<'a> {
    /// An evaluator reading `words` from the start, its wires living in
    /// `arena`; `gate` is the index of the next AND gate.
    ///
    /// The caller has checked that `words` holds every table the circuit reads.
    pub fn new(
        hash: &'a FixedKeyHash,
        batch: u64,
        gate: u64,
        active: usize,
        words: &'a [u64],
        arena: &'a mut LabelArena,
    ) -> Self {
        Self {
            hash,
            batch,
            gate,
            active: active.min(LANES),
            words,
            pos: 0,
            arena,
            buf: [AesBlock::default(); 2 * LANES],
            lane_tweaks: half_gates_lane_tweaks(),
            sigma_sums: [V::of(0); LANES],
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
    type Wire = WireId;
    #[inline(always)]
    fn xor(&mut self, a: WireId, b: WireId) -> WireId {
        xor_gate(self.arena, a, b)
    }
    #[inline(always)]
    fn not(&mut self, a: WireId) -> WireId {
        a
    }
    #[inline(always)]
    fn and(&mut self, a: WireId, b: WireId) -> WireId {
        let base = tweak_high(self.batch) | first_counter(self.gate, 2) as u128;
        let (a, b, c, id) = self.arena.gate(a, b);
        let words = &self.words[self.pos..self.pos + 4 * self.active];
        self.pos += 4 * self.active;
        // The tables are read once, front to back: ask for a later gate's lines early.
        let ahead = self.pos + PREFETCH_AHEAD_WORDS;
        if let Some(later) = self.words.get(ahead..ahead + 4 * LANES) {
            for line in later.chunks(8) {
                prefetch(&line[0]);
            }
        }
        if let Some((v, keys)) = self.hash.vaes() {
            let table: &[[u8; 16]] = bytemuck::cast_slice(words);
            match <&[[u8; 16]; 2 * LANES]>::try_from(table) {
                Ok(t) => v.half_gates_evaluate(keys, a, b, c, t, base),
                Err(_) => {
                    let mut t = [[0u8; 16]; 2 * LANES];
                    t[..table.len()].copy_from_slice(table);
                    v.half_gates_evaluate(keys, a, b, c, &t, base);
                }
            }
            self.gate += 1;
            return id;
        }
        if let Some((k, keys)) = self.hash.accel() {
            let table: &[[u8; 16]] = bytemuck::cast_slice(words);
            match <&[[u8; 16]; 2 * LANES]>::try_from(table) {
                Ok(t) => k.half_gates_evaluate(keys, a, b, c, t, base),
                Err(_) => {
                    let mut t = [[0u8; 16]; 2 * LANES];
                    t[..table.len()].copy_from_slice(table);
                    k.half_gates_evaluate(keys, a, b, c, &t, base);
                }
            }
            self.gate += 1;
            return id;
        }
        let base = V::of(base);
        let sab = &mut self.sigma_sums;
        for (l, blocks) in self.buf.chunks_exact_mut(2).enumerate() {
            let ja = base.xor(self.lane_tweaks[l]);
            let sa = V::of(a[l]).sigma();
            let sb = V::of(b[l]).sigma();
            sab[l] = sa.xor(sb);
            let xa = sa.xor(ja);
            blocks[0] = xa.to_aes();
            // Tweak first + 2l + 1 = ja ⊕ 1 (ja is even).
            blocks[1] = xa.xor(sab[l]).xor(V::of(1)).to_aes();
        }
        self.hash.permute_blocks(&mut self.buf);
        for (l, ((cl, w), p)) in c
            .iter_mut()
            .zip(words.chunks_exact(4))
            .zip(self.buf.chunks_exact(2))
            .enumerate()
        {
            let tg = V::from_words(&w[..2]);
            let te = V::from_words(&w[2..]);
            let av = V::of(a[l]);
            let ma = av.color_mask();
            let mb = V::of(b[l]).color_mask();
            // H(A) ⊕ H(B) = π(..) ⊕ π(..) ⊕ σ(A) ⊕ σ(B).
            *cl = V::from_aes(&p[0])
                .xor(V::from_aes(&p[1]))
                .xor(sab[l])
                .xor(ma.and(tg))
                .xor(mb.and(te.xor(av)))
                .to_u128();
        }
        self.gate += 1;
        id
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

/// `[lo, hi]` 64-bit masks as one block: all ones in a half whose bit is set.
const fn mask_pair(lo: u8, hi: u8) -> u128 {
    (mask64_const(lo) as u128) | (mask64_const(hi) as u128) << 64
}

const fn mask64_const(bit: u8) -> u64 {
    0u64.wrapping_sub((bit & 1) as u64)
}

/// The masks of a row pair over the halves `[X, Xˢ]` of two labels:
/// `lo_row` gives the low half (the right half-label), `hi_row` the high
/// half, both over `(A_L, A_R, B_L, B_R)` (bits 0..3). With `A = [A_R, A_L]`
/// and `Aˢ = [A_L, A_R]` (64-bit halves, low first), the low half takes
/// `A_R` from `A` and `A_L` from `Aˢ`, the high half the other way round.
const fn row_pair_masks(lo_row: u8, hi_row: u8) -> [u128; 4] {
    const fn bit(row: u8, k: u8) -> u8 {
        (row >> k) & 1
    }
    [
        mask_pair(bit(lo_row, 1), bit(hi_row, 0)),
        mask_pair(bit(lo_row, 0), bit(hi_row, 1)),
        mask_pair(bit(lo_row, 3), bit(hi_row, 2)),
        mask_pair(bit(lo_row, 2), bit(hi_row, 3)),
    ]
}

/// The three-halves evaluator's masks for the AES-NI kernel, indexed by
/// `i·8 + j·4 + r₁·2 + r₂` (see [`ThreeHalvesEvalMasks`]).
const THREE_HALVES_EVAL_MASKS: ThreeHalvesEvalMasks = {
    let mut out = [[0u128; 6]; 16];
    let mut idx = 0;
    while idx < 16 {
        let (i, j, r1, r2) = (
            (idx >> 3) as u8 & 1,
            (idx >> 2) as u8 & 1,
            (idx >> 1) as u8 & 1,
            idx as u8 & 1,
        );
        let m = r_matrix(i, j, r1, r2);
        // Left row (C_L, high half) in bits 0..3, right row (C_R, low half) in bits 4..7.
        let rows = row_pair_masks(m >> 4, m & 0xF);
        out[idx] = [
            rows[0],
            rows[1],
            rows[2],
            rows[3],
            mask_pair(j, i),
            mask_pair(i ^ j, i ^ j),
        ];
        idx += 1;
    }
    out
};

/// [`THREE_HALVES_EVAL_MASKS`] as the VAES evaluator's truth tables.
const THREE_HALVES_EVAL_TRUTH: ThreeHalvesEvalTruth =
    three_halves_eval_truth(&THREE_HALVES_EVAL_MASKS);

/// The truth tables of `masks` (see [`ThreeHalvesEvalTruth`]).
const fn three_halves_eval_truth(masks: &ThreeHalvesEvalMasks) -> ThreeHalvesEvalTruth {
    let mut t = [[0u64; 2]; 6];
    let mut idx = 0;
    while idx < 16 {
        let mut m = 0;
        while m < 6 {
            let mask = masks[idx][m];
            let (lo, hi) = (mask as u64, (mask >> 64) as u64);
            // Each half is all ones or all zeros (a const assertion where used).
            assert!((lo == 0 || lo == u64::MAX) && (hi == 0 || hi == u64::MAX));
            t[m][0] |= (lo & 1) << idx;
            t[m][1] |= (hi & 1) << idx;
            m += 1;
        }
        idx += 1;
    }
    t
}

/// The three-halves garbler's masks for the AES-NI kernel, indexed by the
/// case `i*·8 + j*·4 + ρ₁·2 + ρ₂`: row pairs `(K_R, K_L)`, `(T0, T1)`, `(T2, 0)`.
const THREE_HALVES_GARBLE_MASKS: ThreeHalvesGarbleMasks = {
    let mut out = [[[0u128; 4]; 3]; 16];
    let mut case = 0;
    while case < 16 {
        let [k_l, k_r, t0, t1, t2] = LINEAR_PARTS[case];
        out[case] = [
            row_pair_masks(k_r & 0xF, k_l & 0xF),
            row_pair_masks(t0 & 0xF, t1 & 0xF),
            row_pair_masks(t2 & 0xF, 0),
        ];
        case += 1;
    }
    out
};

/// [`THREE_HALVES_GARBLE_MASKS`] and the `Δ` selections of
/// [`three_halves_delta_parts`] as the VAES garbler's truth tables (see
/// [`ThreeHalvesGarbleTruth`]).
const THREE_HALVES_GARBLE_TRUTH: ThreeHalvesGarbleTruth = {
    let mut t = [[0u64; 2]; 18];
    let mut case = 0;
    while case < 16 {
        let mut r = 0;
        while r < 3 {
            let mut k = 0;
            while k < 4 {
                let mask = THREE_HALVES_GARBLE_MASKS[case][r][k];
                let (lo, hi) = (mask as u64, (mask >> 64) as u64);
                assert!((lo == 0 || lo == u64::MAX) && (hi == 0 || hi == u64::MAX));
                t[4 * r + k][0] |= (lo & 1) << case;
                t[4 * r + k][1] |= (hi & 1) << case;
                k += 1;
            }
            r += 1;
        }
        // Row pairs (low row, high row): (K_R, K_L), (T0, T1), (T2, 0). A
        // row's bit 4 takes Δ_L, bit 5 Δ_R; with Δ = [Δ_R, Δ_L] (low word
        // first) and Δˢ = [Δ_L, Δ_R], the low word's Δ_L is Δˢ's and its Δ_R
        // is Δ's, the high word the other way round.
        let [k_l, k_r, t0, t1, t2] = LINEAR_PARTS[case];
        let rows = [(k_r, k_l), (t0, t1), (t2, 0u8)];
        let mut r = 0;
        while r < 3 {
            let (lo_row, hi_row) = rows[r];
            t[12 + 2 * r][0] |= (((lo_row >> 4) & 1) as u64) << case;
            t[12 + 2 * r][1] |= (((hi_row >> 5) & 1) as u64) << case;
            t[13 + 2 * r][0] |= (((lo_row >> 5) & 1) as u64) << case;
            t[13 + 2 * r][1] |= (((hi_row >> 4) & 1) as u64) << case;
            r += 1;
        }
        case += 1;
    }
    t
};

/// The `Δ` contributions of the garbler's row pairs per case (bits 4, 5 of
/// each row select `Δ_L`, `Δ_R`), for a given `Δ`.
fn three_halves_delta_parts(delta: Block) -> ThreeHalvesDeltaParts {
    let (dl, dr) = halves(delta);
    let row = |r: u8| (mask64(r & 0x10 != 0) & dl) ^ (mask64(r & 0x20 != 0) & dr);
    let pair = |lo: u8, hi: u8| row(lo) as u128 | (row(hi) as u128) << 64;
    core::array::from_fn(|case| {
        let [k_l, k_r, t0, t1, t2] = LINEAR_PARTS[case];
        [pair(k_r, k_l), pair(t0, t1), pair(t2, 0)]
    })
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
    coin_block: Block,
    coins_left: usize,
    arena: &'a mut LabelArena,
    sigma_delta: Block,
    delta_parts: ThreeHalvesDeltaParts,
    buf: [AesBlock; 6 * LANES],
}

impl<'a> ThreeHalvesGarbler<'a> {
    /// A garbler appending to `out`, drawing its control-bit coins from
    /// `coins` (one block per 4 gates), its wires living in `arena`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        hash: &'a FixedKeyHash,
        delta: Block,
        batch: u64,
        gate: u64,
        active: usize,
        out: &'a mut GarbledTables,
        coins: &'a mut AesPrg,
        arena: &'a mut LabelArena,
    ) -> Self {
        Self {
            hash,
            delta,
            batch,
            gate,
            active: active.min(LANES),
            out,
            coins,
            coin_block: 0,
            coins_left: 0,
            arena,
            sigma_delta: sigma(delta),
            delta_parts: three_halves_delta_parts(delta),
            buf: [AesBlock::default(); 6 * LANES],
        }
    }

    /// Index of the next AND gate.
    pub fn gate(&self) -> u64 {
        self.gate
    }

    /// Two coins per lane: `LANES · 2 = 32` fresh bits.
    #[inline(always)]
    fn lane_coins(&mut self) -> u32 {
        const _: () = assert!(LANES * 2 == 32);
        if self.coins_left == 0 {
            let mut b = [0u128; 1];
            self.coins.fill(&mut b);
            self.coin_block = b[0];
            self.coins_left = 4;
        }
        self.coins_left -= 1;
        (self.coin_block >> (32 * self.coins_left)) as u32
    }
}

impl Backend for ThreeHalvesGarbler<'_> {
    type Wire = WireId;
    #[inline(always)]
    fn xor(&mut self, a: WireId, b: WireId) -> WireId {
        xor_gate(self.arena, a, b)
    }
    #[inline(always)]
    fn not(&mut self, a: WireId) -> WireId {
        xor_delta_gate(self.arena, a, self.delta)
    }
    #[inline(always)]
    fn and(&mut self, a: WireId, b: WireId) -> WireId {
        const L: usize = LANES;
        let d = self.delta;
        let coins = self.lane_coins();
        let hi = tweak_high(self.batch);
        let first = first_counter(self.gate, 3);
        let (a, b, c, id) = self.arena.gate(a, b);
        if let Some((k, keys)) = self.hash.accel() {
            let mut words = [0u64; 3 * L];
            let mut control = [0u8; L];
            let (w, z, base) = (&mut words, &mut control, hi | first as u128);
            // VAES implies AES-NI (same round keys): the 512-bit kernel where the CPU has it.
            match self.hash.vaes() {
                Some((v, _)) => v.three_halves_garble(
                    keys,
                    a,
                    b,
                    c,
                    w,
                    z,
                    base,
                    d,
                    coins,
                    &THREE_HALVES_GARBLE_TRUTH,
                ),
                None => k.three_halves_garble(
                    keys,
                    a,
                    b,
                    c,
                    w,
                    z,
                    base,
                    d,
                    coins,
                    &THREE_HALVES_GARBLE_MASKS,
                    &self.delta_parts,
                ),
            }
            self.out.words.extend_from_slice(&words[..3 * self.active]);
            self.out.control.extend_from_slice(&control[..self.active]);
            self.gate += 1;
            return id;
        }
        let sd = self.sigma_delta;
        // Colour-0 labels and their σ (σ(X ⊕ Δ) = σ(X) ⊕ σ(Δ)).
        let mut a0 = [0u128; L];
        let mut b0 = [0u128; L];
        let mut s = [[0u128; 3]; L];
        // Lane l: [A⁰, A¹, B⁰, B¹, (A⊕B)⁰, (A⊕B)¹] at 6l..6l+6, tweaks j, j, j+1, j+1, j+2, j+2.
        for (l, blocks) in self.buf.chunks_exact_mut(6).enumerate() {
            a0[l] = a[l] ^ (mask128(color(a[l])) & d);
            b0[l] = b[l] ^ (mask128(color(b[l])) & d);
            let sa = sigma(a0[l]);
            let sb = sigma(b0[l]);
            s[l] = [sa, sb, sa ^ sb];
            let j = first + 3 * l as u64;
            for (k, &sk) in s[l].iter().enumerate() {
                let t = hi | (j + k as u64) as u128;
                blocks[2 * k] = to_aes(sk ^ t);
                blocks[2 * k + 1] = to_aes(sk ^ sd ^ t);
            }
        }
        self.hash.permute_blocks(&mut self.buf);
        let (dl, dr) = halves(d);
        let delta_rows = [0, dl, dr, dl ^ dr];
        let mut words = [0u64; 3 * L];
        let mut control = [0u8; L];
        for (l, p) in self.buf.chunks_exact(6).enumerate() {
            let [sa, sb, sab] = s[l];
            let hl = [
                from_aes(&p[0]) ^ sa,
                from_aes(&p[1]) ^ sa ^ sd,
                from_aes(&p[2]) ^ sb,
                from_aes(&p[3]) ^ sb ^ sd,
                from_aes(&p[4]) ^ sab,
                from_aes(&p[5]) ^ sab ^ sd,
            ];
            // True output (a ∧ b = 1) sits at the colours of the 1-labels.
            let is = color(a[l]) as u8 ^ 1;
            let js = color(b[l]) as u8 ^ 1;
            let rho1 = (coins >> (2 * l + 1)) as u8 & 1;
            let rho2 = (coins >> (2 * l)) as u8 & 1;
            let parts = LINEAR_PARTS[(is * 8 + js * 4 + rho1 * 2 + rho2) as usize];
            let (al, ar) = halves(a0[l]);
            let (bl, br) = halves(b0[l]);
            let subsets = subset_xors(&[al, ar, bl, br]);
            let apply = |row: u8| subsets[(row & 0xF) as usize] ^ delta_rows[(row >> 4) as usize];
            let lo = |x: Block| x as u64;
            let cl = lo(hl[0]) ^ lo(hl[4]) ^ apply(parts[0]);
            let cr = lo(hl[2]) ^ lo(hl[4]) ^ apply(parts[1]);
            c[l] = (cl as u128) << 64 | cr as u128;
            words[3 * l] = lo(hl[0]) ^ lo(hl[1]) ^ apply(parts[2]);
            words[3 * l + 1] = lo(hl[2]) ^ lo(hl[3]) ^ apply(parts[3]);
            words[3 * l + 2] = lo(hl[4]) ^ lo(hl[5]) ^ apply(parts[4]);
            let m = |k: usize| top_bit(hl[k]);
            control[l] = (rho1 ^ m(0) ^ m(4))
                | (rho2 ^ m(2) ^ m(4)) << 1
                | (is ^ m(0) ^ m(1)) << 2
                | (js ^ m(2) ^ m(3)) << 3
                | (is ^ js ^ m(4) ^ m(5)) << 4;
        }
        self.out.words.extend_from_slice(&words[..3 * self.active]);
        self.out.control.extend_from_slice(&control[..self.active]);
        self.gate += 1;
        id
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
    arena: &'a mut LabelArena,
    buf: [AesBlock; 3 * LANES],
}

impl<'a> ThreeHalvesEvaluator<'a> {
    /// An evaluator reading `words` and `control` from the start, its wires
    /// living in `arena`.
    ///
    /// The caller has checked that the slices hold every table the circuit reads.
    pub fn new(
        hash: &'a FixedKeyHash,
        batch: u64,
        gate: u64,
        active: usize,
        words: &'a [u64],
        control: &'a [u8],
        arena: &'a mut LabelArena,
    ) -> Self {
        Self {
            hash,
            batch,
            gate,
            active: active.min(LANES),
            words,
            control,
            pos: 0,
            arena,
            buf: [AesBlock::default(); 3 * LANES],
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
    type Wire = WireId;
    #[inline(always)]
    fn xor(&mut self, a: WireId, b: WireId) -> WireId {
        xor_gate(self.arena, a, b)
    }
    #[inline(always)]
    fn not(&mut self, a: WireId) -> WireId {
        a
    }
    #[inline(always)]
    fn and(&mut self, a: WireId, b: WireId) -> WireId {
        const L: usize = LANES;
        let hi = tweak_high(self.batch);
        let first = first_counter(self.gate, 3);
        let (a, b, c, id) = self.arena.gate(a, b);
        if let Some((k, keys)) = self.hash.accel() {
            let words = &self.words[3 * self.pos..3 * (self.pos + self.active)];
            let control = &self.control[self.pos..self.pos + self.active];
            self.pos += self.active;
            let base = hi | first as u128;
            let vaes = self.hash.vaes();
            let mut eval = |w: &[u64; 3 * L], z: &[u8; L]| match vaes {
                Some((v, _)) => {
                    v.three_halves_evaluate(keys, a, b, c, w, z, base, &THREE_HALVES_EVAL_TRUTH)
                }
                None => {
                    k.three_halves_evaluate(keys, a, b, c, w, z, base, &THREE_HALVES_EVAL_MASKS)
                }
            };
            match (
                <&[u64; 3 * L]>::try_from(words),
                <&[u8; L]>::try_from(control),
            ) {
                (Ok(w), Ok(z)) => eval(w, z),
                _ => {
                    let mut w = [0u64; 3 * L];
                    let mut z = [0u8; L];
                    w[..words.len()].copy_from_slice(words);
                    z[..control.len()].copy_from_slice(control);
                    eval(&w, &z);
                }
            }
            self.gate += 1;
            return id;
        }
        // Lane l: [A, B, A⊕B] at 3l..3l+3, tweaks j, j+1, j+2.
        let mut s = [[0u128; 3]; L];
        for (l, blocks) in self.buf.chunks_exact_mut(3).enumerate() {
            let sa = sigma(a[l]);
            let sb = sigma(b[l]);
            s[l] = [sa, sb, sa ^ sb];
            let j = first + 3 * l as u64;
            for (k, &sk) in s[l].iter().enumerate() {
                blocks[k] = to_aes(sk ^ hi ^ (j + k as u64) as u128);
            }
        }
        self.hash.permute_blocks(&mut self.buf);
        let words = &self.words[3 * self.pos..3 * (self.pos + self.active)];
        let control = &self.control[self.pos..self.pos + self.active];
        self.pos += self.active;
        for (l, (((cl, g), &z), p)) in c
            .iter_mut()
            .zip(words.chunks_exact(3))
            .zip(control)
            .zip(self.buf.chunks_exact(3))
            .enumerate()
        {
            let i = color(a[l]) as u8;
            let j = color(b[l]) as u8;
            let ij = i ^ j;
            let ha = from_aes(&p[0]) ^ s[l][0];
            let hb = from_aes(&p[1]) ^ s[l][1];
            let hab = from_aes(&p[2]) ^ s[l][2];
            let zb = |k: u8| (z >> k) & 1;
            let r1 = zb(0) ^ (i & zb(2)) ^ (ij & zb(4)) ^ top_bit(ha) ^ top_bit(hab);
            let r2 = zb(1) ^ (j & zb(3)) ^ (ij & zb(4)) ^ top_bit(hb) ^ top_bit(hab);
            let m = r_matrix(i, j, r1, r2);
            let (al, ar) = halves(a[l]);
            let (bl, br) = halves(b[l]);
            let inputs = [al, ar, bl, br];
            let cl_half = ha as u64
                ^ hab as u64
                ^ (mask64(i == 1) & g[0])
                ^ (mask64(ij == 1) & g[2])
                ^ apply_row4(m & 0xF, &inputs);
            let cr_half = hb as u64
                ^ hab as u64
                ^ (mask64(j == 1) & g[1])
                ^ (mask64(ij == 1) & g[2])
                ^ apply_row4(m >> 4, &inputs);
            *cl = (cl_half as u128) << 64 | cr_half as u128;
        }
        self.gate += 1;
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_transposes_inputs_and_zeroes_idle_lanes() {
        let mut arena = LabelArena::with_capacity(1);
        // Fill with garbage first: reused bundles must not leak into idle lanes.
        arena.push([u128::MAX; LANES]);
        arena.push([u128::MAX; LANES]);
        arena.clear();
        let n = 3;
        let active = 2;
        let labels: Vec<Block> = (0..(active * n) as u128).map(|v| v + 100).collect();
        let first = arena.push_transposed(&labels, n);
        assert_eq!(first, 0);
        assert_eq!(arena.len(), n);
        for i in 0..n {
            let wire = arena.get(first + i as WireId);
            for (l, &label) in wire.iter().enumerate() {
                let want = if l < active { labels[l * n + i] } else { 0 };
                assert_eq!(label, want, "wire {i} lane {l}");
            }
        }
        let c = xor_gate(&mut arena, 0, 1);
        assert_eq!(arena.get(c)[0], labels[0] ^ labels[1]);
        assert_eq!(arena.get(c)[1], labels[3] ^ labels[4]);
    }

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
