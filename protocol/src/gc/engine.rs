//! Batch garbling and evaluation of activation circuits, garbler input
//! encoding, and arithmetic output decoding.
//!
//! # Output decoding (garbled arithmetic output)
//! For output wire `i` with field weight `wᵢ`, let `L⁰ᵢ` be its label of
//! colour 0 and `b₀ᵢ` the value that label encodes. The garbler draws
//! `ρᵢ = −H'(L⁰ᵢ) − wᵢ·b₀ᵢ` and sends one field element
//! `ctᵢ = H'(L⁰ᵢ ⊕ Δ) + wᵢ·(1 − b₀ᵢ) + ρᵢ` (8 bytes). The evaluator holding
//! label `L` of colour `c` computes `mᵢ = c·ctᵢ − H'(L) = wᵢ·vᵢ + ρᵢ`, and
//! `z = Σ mᵢ = v + ρ (mod P)` with `ρ = Σ ρᵢ` known only to the garbler.
//! `H'(L) = H(L, τᵢ) mod P` with a tweak `τᵢ` unique per circuit and wire
//! (statistical distance of the 128→55-bit reduction: 2^-73). The evaluator
//! learns nothing but `v + ρ`: the label it does not hold stays hidden behind
//! the correlation-robust hash.

use pibench_models::fixed::{self, P};

use super::backend::{Bit, CountingBackend};
use super::circuit::{activation_circuit, ActivationKind, CircuitSpec};
use super::garble::{
    color, GarbledTables, HalfGatesEvaluator, HalfGatesGarbler, LabelArena, ThreeHalvesEvaluator,
    ThreeHalvesGarbler, WireId, LANES,
};
use super::hash::{AesPrg, Block, FixedKeyHash};
use super::simd::prefetch;
use super::{GcError, Scheme};

/// `x mod P` for a 128-bit hash output: `2^64 ≡ 2^9·1507327` and
/// `2^55 ≡ 1507327 (mod P)`, so one 64×64-bit and two 64-bit
/// multiplications fold it below `2P`.
#[inline(always)]
pub fn reduce_block(x: Block) -> u64 {
    const C55: u64 = (1u64 << 55) - P;
    const C64: u64 = C55 << 9;
    const MASK: u64 = (1u64 << 55) - 1;
    let t = ((x >> 64) as u64 as u128) * C64 as u128 + (x as u64 as u128); // < 2^95
    let y = ((t >> 55) as u64) * C55 + (t as u64 & MASK); // < 2^40·2^21 + 2^55 < 2^62
    let y = (y >> 55) * C55 + (y & MASK); // < 2^7·2^21 + 2^55 < 2P
    if y >= P {
        y - P
    } else {
        y
    }
}

/// `x mod P` for `x < 4P`, without branches.
#[inline(always)]
fn reduce_below_4p(x: u64) -> u64 {
    let x = x - (2 * P) * ((x >= 2 * P) as u64);
    x - P * ((x >= P) as u64)
}

/// What one activation circuit looks like to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitShape {
    /// Truncation constants.
    pub spec: CircuitSpec,
    /// Relu or truncate-only.
    pub kind: ActivationKind,
    /// Garbling scheme.
    pub scheme: Scheme,
    /// AND gates per circuit.
    pub ands: usize,
    /// XOR and NOT gates per circuit (free).
    pub free_gates: usize,
    /// Field weights of the output wires that need decoding information.
    pub wire_weights: Vec<u64>,
    /// Sum of the weights of outputs that are public constant ones.
    pub constant_term: u64,
}

impl CircuitShape {
    /// Shape of the activation circuit (counted once with the counting backend).
    pub fn new(spec: CircuitSpec, kind: ActivationKind, scheme: Scheme) -> Self {
        let mut counter = CountingBackend::default();
        let inputs = vec![Bit::Wire(()); spec.input_bits * kind.window()];
        let out = activation_circuit(&mut counter, &spec, kind, &inputs, &inputs);
        let mut wire_weights = Vec::new();
        let mut constant_term = 0;
        for (bit, w) in out.iter().zip(spec.output_weights(kind)) {
            match bit {
                Bit::Wire(()) => wire_weights.push(w),
                Bit::Const(true) => constant_term = fixed::add(constant_term, w),
                Bit::Const(false) => {}
            }
        }
        Self {
            spec,
            kind,
            scheme,
            ands: counter.ands as usize,
            free_gates: (counter.xors + counter.nots) as usize,
            wire_weights,
            constant_term,
        }
    }

    /// Input bits per party per circuit (`window()` values of `value_bits()`).
    pub fn input_bits(&self) -> usize {
        self.spec.input_bits * self.kind.window()
    }

    /// Bits of one input value (`n`, the bit length of `P_f`).
    pub fn value_bits(&self) -> usize {
        self.spec.input_bits
    }

    /// Input values per party per circuit: 1, or the max-pool window.
    pub fn window(&self) -> usize {
        self.kind.window()
    }

    /// Table words (`u64`) for `count` circuits.
    pub fn table_words(&self, count: usize) -> usize {
        count * self.ands * self.scheme.words_per_and()
    }

    /// Control bytes held in memory (one per gate) for `count` circuits.
    pub fn control_len(&self, count: usize) -> usize {
        if self.scheme.control_bits_per_and() == 0 {
            0
        } else {
            count * self.ands
        }
    }

    /// Decoding field elements for `count` circuits.
    pub fn decoding_len(&self, count: usize) -> usize {
        count * self.wire_weights.len()
    }

    /// Bytes of tables plus decoding information per circuit, as sent.
    pub fn offline_gc_bytes_per_circuit(&self) -> f64 {
        self.scheme.table_bytes(self.ands) as f64 + 8.0 * self.wire_weights.len() as f64
    }
}

/// The garbled material the evaluator receives offline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Garbling {
    /// Garbled tables of all AND gates.
    pub tables: GarbledTables,
    /// One field element per decoded output wire (`ctᵢ`).
    pub decoding: Vec<u64>,
}

/// What the garbler keeps: its input zero labels and its output shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GarblerKeys {
    /// Global free-XOR offset (colour bit 1).
    pub delta: Block,
    /// Zero labels of the garbler's input wires, circuit-major.
    pub input_zero_labels: Vec<Block>,
    /// `ρ` per circuit: the evaluator learns `v + ρ`, so the garbler's share of `v` is `−ρ`.
    pub output_masks: Vec<u64>,
}

/// The tweak of output wire `wire` of circuit `circuit` in batch `batch`
/// (bit 63 set: never an AND gate's tweak; `wire < 256`).
///
/// For `circuit` a multiple of [`LANES`] and `l < LANES`,
/// `out_tweak(batch, circuit + l, wire) = out_tweak(batch, circuit, wire) ⊕
/// (l << 8)`: a batch's lanes hash with one base tweak and
/// [`LANE_OUT_OFFSETS`] (batches start at multiples of `LANES`).
#[inline(always)]
fn out_tweak(batch: u64, circuit: usize, wire: usize) -> Block {
    debug_assert!(wire < 256);
    ((batch as u128) << 64) | (1u128 << 63) | ((circuit as u128) << 8) | wire as u128
}

/// Lane `l`'s part of an output tweak, `l << 8` (see [`out_tweak`]).
const LANE_OUT_OFFSETS: [Block; LANES] = {
    let mut o = [0; LANES];
    let mut l = 0;
    while l < LANES {
        o[l] = (l as Block) << 8;
        l += 1;
    }
    o
};

/// The garbler hashes both colour labels of every lane in one call: block
/// `m` is lane `m mod LANES`.
const GARBLER_OUT_OFFSETS: [Block; 2 * LANES] = {
    let mut o = [0; 2 * LANES];
    let mut m = 0;
    while m < 2 * LANES {
        o[m] = LANE_OUT_OFFSETS[m % LANES];
        m += 1;
    }
    o
};

fn length_check(
    site: &str,
    what: &'static str,
    unit: &'static str,
    expected: usize,
    got: usize,
) -> Result<(), GcError> {
    if expected != got {
        return Err(GcError::Length {
            site: site.to_string(),
            what,
            expected,
            got,
            unit,
        });
    }
    Ok(())
}

/// Number of circuits in a batch of evaluator input labels (`input_bits` labels each).
fn circuit_count(
    shape: &CircuitShape,
    evaluator_labels: &[Block],
    site: &str,
) -> Result<usize, GcError> {
    let n = shape.input_bits();
    if !evaluator_labels.len().is_multiple_of(n) {
        return Err(GcError::Length {
            site: site.to_string(),
            what: "evaluator input labels",
            expected: evaluator_labels.len().div_ceil(n) * n,
            got: evaluator_labels.len(),
            unit: "labels",
        });
    }
    Ok(evaluator_labels.len() / n)
}

/// The garbler's randomness for one garbling call: its input labels and
/// (three-halves) the control-bit coins are AES-CTR streams under these
/// seeds, so the output depends on the seeds only (not on threads or on
/// how callers split their work).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GarbleSeeds {
    /// Seed of the garbler's input zero labels (circuit-major).
    pub labels: Block,
    /// Seed of the three-halves coins (one block per 4 AND gates of 16 circuits).
    pub coins: Block,
}

impl GarbleSeeds {
    /// Two fresh seeds from `prg`.
    pub fn draw(prg: &mut AesPrg) -> Self {
        Self {
            labels: prg.next_block(),
            coins: prg.next_block(),
        }
    }
}

/// Garbles `evaluator_zero_labels.len() / input_bits` circuits.
///
/// `evaluator_zero_labels` are the zero labels of the evaluator's input
/// wires (from correlated OT, circuit-major); `delta` must have colour bit 1;
/// `batch` is a tweak unique per garbling under the same `delta`.
pub fn garble(
    shape: &CircuitShape,
    delta: Block,
    batch: u64,
    evaluator_zero_labels: &[Block],
    prg: &mut AesPrg,
    site: &str,
) -> Result<(Garbling, GarblerKeys), GcError> {
    let mut garbling = Garbling::default();
    let mut keys = GarblerKeys {
        delta,
        input_zero_labels: Vec::new(),
        output_masks: Vec::new(),
    };
    garble_into(
        shape,
        delta,
        batch,
        evaluator_zero_labels,
        prg,
        site,
        &mut garbling,
        &mut keys,
    )?;
    Ok((garbling, keys))
}

/// [`garble`] into caller-owned buffers, reusing their capacity (a garbler
/// streaming many batches avoids touching fresh memory for each).
#[allow(clippy::too_many_arguments)]
pub fn garble_into(
    shape: &CircuitShape,
    delta: Block,
    batch: u64,
    evaluator_zero_labels: &[Block],
    prg: &mut AesPrg,
    site: &str,
    garbling: &mut Garbling,
    keys: &mut GarblerKeys,
) -> Result<(), GcError> {
    let seeds = GarbleSeeds::draw(prg);
    garble_with(
        &FixedKeyHash::new(),
        shape,
        delta,
        batch,
        evaluator_zero_labels,
        seeds,
        site,
        garbling,
        keys,
    )
}

/// [`garble_into`] with the randomness given as seeds and the hash (and so
/// the kernel) chosen by the caller. One call runs on the calling thread;
/// callers run calls on disjoint pieces in parallel.
#[allow(clippy::too_many_arguments)]
pub fn garble_with(
    hash: &FixedKeyHash,
    shape: &CircuitShape,
    delta: Block,
    batch: u64,
    evaluator_zero_labels: &[Block],
    seeds: GarbleSeeds,
    site: &str,
    garbling: &mut Garbling,
    keys: &mut GarblerKeys,
) -> Result<(), GcError> {
    if !color(delta) {
        return Err(GcError::Parameters {
            reason: format!("{site}: Δ must have colour bit 1"),
        });
    }
    let n = shape.input_bits();
    let count = circuit_count(shape, evaluator_zero_labels, site)?;
    keys.delta = delta;
    let garbler_zero = &mut keys.input_zero_labels;
    garbler_zero.clear();
    garbler_zero.resize(count * n, 0);
    AesPrg::new(seeds.labels).fill(garbler_zero);
    let garbler_zero = &keys.input_zero_labels;
    let mut coins = AesPrg::new(seeds.coins);
    let outs = shape.wire_weights.len();
    let total_words = shape.table_words(count);
    let words = &mut garbling.tables.words;
    match shape.scheme {
        // Written in place, gate by gate: a buffer reused from an earlier
        // piece keeps its pages and is not zeroed again (only a grown part is).
        Scheme::HalfGates => {
            words.truncate(total_words);
            words.resize(total_words, 0);
        }
        Scheme::ThreeHalves => {
            words.clear();
            words.reserve(total_words);
        }
    }
    garbling.tables.control.clear();
    garbling.tables.control.reserve(shape.control_len(count));
    garbling.decoding.clear();
    garbling.decoding.resize(shape.decoding_len(count), 0);
    let masks = &mut keys.output_masks;
    masks.clear();
    masks.resize(count, 0);
    let mut arena = LabelArena::with_capacity(arena_wires(shape));
    let mut a = Vec::with_capacity(n);
    let mut y = Vec::with_capacity(n);
    for (chunk, start) in (0..count).step_by(LANES).enumerate() {
        let active = LANES.min(count - start);
        let circuits = start * n..(start + active) * n;
        arena.clear();
        load_inputs(&mut arena, &garbler_zero[circuits.clone()], n, &mut a);
        load_inputs(&mut arena, &evaluator_zero_labels[circuits], n, &mut y);
        // Ask for the next batch's input labels while this batch is garbled.
        let next = (start + LANES).min(count) * n..(start + 2 * LANES).min(count) * n;
        for labels in [&garbler_zero[..], evaluator_zero_labels] {
            for line in labels[next.clone()].chunks(4) {
                prefetch(&line[0]);
            }
        }
        let gate = (chunk * shape.ands) as u64;
        let out = match shape.scheme {
            Scheme::HalfGates => {
                let wpa = shape.scheme.words_per_and();
                let mut g = HalfGatesGarbler::new(
                    hash,
                    delta,
                    batch,
                    gate,
                    active,
                    &mut garbling.tables.words[start * shape.ands * wpa..],
                    &mut arena,
                );
                activation_circuit(&mut g, &shape.spec, shape.kind, &a, &y)
            }
            Scheme::ThreeHalves => {
                let mut g = ThreeHalvesGarbler::new(
                    hash,
                    delta,
                    batch,
                    gate,
                    active,
                    &mut garbling.tables,
                    &mut coins,
                    &mut arena,
                );
                activation_circuit(&mut g, &shape.spec, shape.kind, &a, &y)
            }
        };
        // Per decoded output wire: hash both colour labels of all lanes in one call.
        let mut rho_sums = [0u64; LANES];
        let decoding = &mut garbling.decoding[start * outs..(start + active) * outs];
        for (k, (wire, &weight)) in output_wires(&out).zip(&shape.wire_weights).enumerate() {
            let labels = arena.get(wire);
            let base = out_tweak(batch, start, k);
            if let Some((v, keys)) = hash.vaes() {
                let mut ct = [0u64; LANES];
                let offsets = &GARBLER_OUT_OFFSETS;
                v.garbler_output(
                    keys,
                    labels,
                    delta,
                    base,
                    offsets,
                    weight,
                    &mut ct,
                    &mut rho_sums,
                );
                for (l, &c) in ct.iter().enumerate().take(active) {
                    decoding[l * outs + k] = c;
                }
                continue;
            }
            let mut h: [Block; 2 * LANES] = core::array::from_fn(|m| {
                let x = labels[m % LANES];
                // Colour-0 label, then colour-1.
                x ^ ((color(x) ^ (m >= LANES)) as u128).wrapping_neg() & delta
            });
            hash.hash_array_with(&mut h, |m| base ^ GARBLER_OUT_OFFSETS[m]);
            for (l, rho_sum) in rho_sums.iter_mut().enumerate().take(active) {
                let h0 = reduce_block(h[l]);
                let h1 = reduce_block(h[LANES + l]);
                // The colour-0 label encodes b₀ = colour of the zero label.
                let b0 = color(labels[l]) as u64;
                let signed_weight = if b0 == 1 { 2 * P - weight } else { weight };
                // ρ = −h0 − w·b₀ and ct = h1 + w(1 − b₀) + ρ = h1 − h0 ± w, kept
                // unreduced below 2P (ρ) and 4P (ct) and reduced once.
                let rho = 2 * P - h0 - (weight & b0.wrapping_neg());
                let ct = h1 + 2 * P - h0 + signed_weight - (2 * P) * b0;
                decoding[l * outs + k] = reduce_below_4p(ct);
                // At most 64 terms of at most 2P < 2^56: no overflow before the final reduction.
                *rho_sum += rho;
            }
        }
        for (mask, rho_sum) in masks[start..start + active].iter_mut().zip(rho_sums) {
            *mask = rho_sum % P;
        }
    }
    Ok(())
}

/// Bundles one batch's arena needs: both parties' inputs and every gate output.
fn arena_wires(shape: &CircuitShape) -> usize {
    2 * shape.input_bits() + shape.ands + shape.free_gates
}

/// Puts `n` input wires of circuit-major `labels` (one circuit per lane)
/// into the arena and names them in `wires`.
fn load_inputs(arena: &mut LabelArena, labels: &[Block], n: usize, wires: &mut Vec<Bit<WireId>>) {
    let first = arena.push_transposed(labels, n);
    wires.clear();
    wires.extend((first..first + n as WireId).map(Bit::Wire));
}

/// The non-constant output wires, in order.
fn output_wires(out: &[Bit<WireId>]) -> impl Iterator<Item = WireId> + '_ {
    out.iter().filter_map(|b| match b {
        Bit::Wire(w) => Some(*w),
        Bit::Const(_) => None,
    })
}

/// The garbler's online message: the labels of its input bits `a_h ≤ P_f`
/// (`shape.window()` values per circuit, circuit after circuit).
pub fn encode_garbler_inputs(
    shape: &CircuitShape,
    keys: &GarblerKeys,
    a_h: &[u64],
    site: &str,
) -> Result<Vec<Block>, GcError> {
    let n = shape.value_bits();
    length_check(
        site,
        "garbler inputs",
        "values",
        keys.input_zero_labels.len() / n,
        a_h.len(),
    )?;
    let mut labels = Vec::with_capacity(a_h.len() * n);
    for (idx, &v) in a_h.iter().enumerate() {
        if v > shape.spec.modulus {
            return Err(GcError::Range {
                site: site.to_string(),
                what: "garbler input a_h",
                index: idx,
                value: v,
                max: shape.spec.modulus,
            });
        }
        for i in 0..n {
            let bit = (v >> i) & 1 == 1;
            labels.push(
                keys.input_zero_labels[idx * n + i] ^ ((bit as u128).wrapping_neg() & keys.delta),
            );
        }
    }
    Ok(labels)
}

/// Evaluates the garbled circuits; returns `z = v + ρ (mod P)` per circuit.
pub fn evaluate(
    shape: &CircuitShape,
    batch: u64,
    garbling: &Garbling,
    garbler_labels: &[Block],
    evaluator_labels: &[Block],
    site: &str,
) -> Result<Vec<u64>, GcError> {
    evaluate_with(
        &FixedKeyHash::new(),
        shape,
        batch,
        garbling,
        garbler_labels,
        evaluator_labels,
        site,
    )
}

/// [`evaluate`] with the hash (and so the kernel) chosen by the caller.
pub fn evaluate_with(
    hash: &FixedKeyHash,
    shape: &CircuitShape,
    batch: u64,
    garbling: &Garbling,
    garbler_labels: &[Block],
    evaluator_labels: &[Block],
    site: &str,
) -> Result<Vec<u64>, GcError> {
    let n = shape.input_bits();
    let count = circuit_count(shape, evaluator_labels, site)?;
    length_check(
        site,
        "garbler input labels",
        "labels",
        count * n,
        garbler_labels.len(),
    )?;
    length_check(
        site,
        "garbled tables",
        "words",
        shape.table_words(count),
        garbling.tables.words.len(),
    )?;
    length_check(
        site,
        "control bits",
        "gates",
        shape.control_len(count),
        garbling.tables.control.len(),
    )?;
    length_check(
        site,
        "output decoding",
        "field elements",
        shape.decoding_len(count),
        garbling.decoding.len(),
    )?;
    if let Some((idx, &v)) = garbling.decoding.iter().enumerate().find(|(_, &v)| v >= P) {
        return Err(GcError::Range {
            site: site.to_string(),
            what: "output decoding element",
            index: idx,
            value: v,
            max: P - 1,
        });
    }
    let wpa = shape.scheme.words_per_and();
    let outs = shape.wire_weights.len();
    let mut result = vec![0u64; count];
    let mut arena = LabelArena::with_capacity(arena_wires(shape));
    let mut a = Vec::with_capacity(n);
    let mut y = Vec::with_capacity(n);
    for (chunk, start) in (0..count).step_by(LANES).enumerate() {
        let active = LANES.min(count - start);
        let circuits = start * n..(start + active) * n;
        arena.clear();
        load_inputs(&mut arena, &garbler_labels[circuits.clone()], n, &mut a);
        load_inputs(&mut arena, &evaluator_labels[circuits], n, &mut y);
        // Ask for the next batch's input labels while this batch is evaluated.
        let next = (start + LANES).min(count) * n..(start + 2 * LANES).min(count) * n;
        for labels in [garbler_labels, evaluator_labels] {
            for line in labels[next.clone()].chunks(4) {
                prefetch(&line[0]);
            }
        }
        let gate = (chunk * shape.ands) as u64;
        let g0 = start * shape.ands;
        let g1 = (start + active) * shape.ands;
        let words = &garbling.tables.words[g0 * wpa..g1 * wpa];
        let out = match shape.scheme {
            Scheme::HalfGates => {
                // The evaluator reads only this batch's words; the rest of the
                // tables lets its prefetch run on into the next batch.
                let words = &garbling.tables.words[g0 * wpa..];
                let mut e = HalfGatesEvaluator::new(hash, batch, gate, active, words, &mut arena);
                activation_circuit(&mut e, &shape.spec, shape.kind, &a, &y)
            }
            Scheme::ThreeHalves => {
                let control = &garbling.tables.control[g0..g1];
                let mut e = ThreeHalvesEvaluator::new(
                    hash, batch, gate, active, words, control, &mut arena,
                );
                activation_circuit(&mut e, &shape.spec, shape.kind, &a, &y)
            }
        };
        // z = constant + Σ (c·ct − H'(L)), summed lazily: every term is below
        // 2P < 2^56 and there are at most 64 of them.
        let mut sums = [0u64; LANES];
        let decoding = &garbling.decoding[start * outs..(start + active) * outs];
        for (k, wire) in output_wires(&out).enumerate() {
            let labels = arena.get(wire);
            let base = out_tweak(batch, start, k);
            if let Some((v, keys)) = hash.vaes() {
                let mut ct = [0u64; LANES];
                for (l, c) in ct.iter_mut().enumerate().take(active) {
                    *c = decoding[l * outs + k];
                }
                v.evaluator_output(keys, labels, base, &LANE_OUT_OFFSETS, &ct, &mut sums);
                continue;
            }
            let mut h = *labels;
            hash.hash_array_with(&mut h, |l| base ^ LANE_OUT_OFFSETS[l]);
            for (l, sum) in sums.iter_mut().enumerate().take(active) {
                let ct = decoding[l * outs + k] & (color(labels[l]) as u64).wrapping_neg();
                *sum += ct + P - reduce_block(h[l]);
            }
        }
        for (z, sum) in result[start..start + active].iter_mut().zip(sums) {
            *z = (shape.constant_term + sum) % P;
        }
    }
    Ok(result)
}

/// Plaintext evaluation of a whole batch through the [`super::PlainBackend`]
/// oracle (for tests and benchmarks' self-checks).
pub fn evaluate_plain_batch(shape: &CircuitShape, a_h: &[u64], b_h: &[u64]) -> Vec<u64> {
    let k = shape.window();
    a_h.chunks(k)
        .zip(b_h.chunks(k))
        .map(|(a, b)| super::circuit::evaluate_plain_window(&shape.spec, shape.kind, a, b))
        .collect()
}

/// A fresh free-XOR offset with colour bit 1.
pub fn random_delta(prg: &mut AesPrg) -> Block {
    prg.next_block() | 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn reduce_below_4p_is_mod_p() {
        for x in [
            0,
            1,
            P - 1,
            P,
            P + 1,
            2 * P - 1,
            2 * P,
            3 * P - 1,
            3 * P,
            4 * P - 1,
        ] {
            assert_eq!(reduce_below_4p(x), x % P, "x = {x}");
        }
    }

    #[test]
    fn lane_offsets_give_each_lane_its_output_tweak() {
        for batch in [0u64, 1, u64::MAX] {
            for start in [0usize, LANES, 37 * LANES, (1 << 40) * LANES] {
                for wire in [0usize, 1, 63, 255] {
                    let base = out_tweak(batch, start, wire);
                    for l in 0..LANES {
                        assert_eq!(
                            base ^ LANE_OUT_OFFSETS[l],
                            out_tweak(batch, start + l, wire)
                        );
                        assert_eq!(GARBLER_OUT_OFFSETS[l], LANE_OUT_OFFSETS[l]);
                        assert_eq!(GARBLER_OUT_OFFSETS[LANES + l], LANE_OUT_OFFSETS[l]);
                    }
                }
            }
        }
    }

    #[test]
    fn reduce_block_is_mod_p() {
        let edges = [
            0u128,
            1,
            P as u128 - 1,
            P as u128,
            P as u128 + 1,
            u64::MAX as u128,
            1u128 << 64,
            (P as u128) << 64,
            u128::MAX,
            u128::MAX - 1,
            u128::MAX / P as u128 * P as u128,
        ];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let random = (0..10_000).map(|_| rng.gen::<u128>());
        for x in edges.into_iter().chain(random) {
            assert_eq!(reduce_block(x) as u128, x % P as u128, "x = {x:#x}");
        }
    }
}
