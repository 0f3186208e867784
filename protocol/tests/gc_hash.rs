//! Known-answer tests of the fixed-key hash against the plain `aes` crate.

use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockEncrypt, KeyInit};
use pibench_protocol::gc::hash::{sigma, FixedKeyHash, FIXED_KEY};
use rand::{Rng, SeedableRng};

fn reference_hash(x: u128, tweak: u128) -> u128 {
    let cipher = aes::Aes128::new(&GenericArray::from(FIXED_KEY));
    let s = sigma(x);
    let mut block = GenericArray::from((s ^ tweak).to_le_bytes());
    cipher.encrypt_block(&mut block);
    let mut out = [0u8; 16];
    out.copy_from_slice(&block);
    u128::from_le_bytes(out) ^ s
}

#[test]
fn hash_known_answer() {
    // Computed independently with `openssl enc -aes-128-ecb` on σ(x) ⊕ 5.
    let x = u128::from_le_bytes(core::array::from_fn(|i| i as u8));
    let h = FixedKeyHash::new();
    assert_eq!(h.hash(x, 5), 0xed0d869f2e88f1bb290b14c84bb3827e);
    assert_eq!(reference_hash(x, 5), 0xed0d869f2e88f1bb290b14c84bb3827e);
}

#[test]
fn batched_hashing_matches_the_aes_crate() {
    let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(11);
    let mut h = FixedKeyHash::new();
    let xs: Vec<u128> = (0..37).map(|_| rng.gen()).collect();
    let ts: Vec<u128> = (0..37).map(|i| i as u128 * 3 + (1 << 70)).collect();
    let mut many = xs.clone();
    h.hash_many(&mut many, &ts);
    let mut arr: [u128; 32] = core::array::from_fn(|i| xs[i]);
    let tarr: [u128; 32] = core::array::from_fn(|i| ts[i]);
    h.hash_array(&mut arr, &tarr);
    for i in 0..37 {
        let want = reference_hash(xs[i], ts[i]);
        assert_eq!(many[i], want, "hash_many {i}");
        assert_eq!(h.hash(xs[i], ts[i]), want, "hash {i}");
        if i < 32 {
            assert_eq!(arr[i], want, "hash_array {i}");
        }
    }
    assert_eq!(h.permute(0), reference_hash(0, 0) ^ sigma(0));
}

/// Every kernel this CPU has hashes, permutes and expands a PRG exactly as
/// the `aes` crate does (the AES-NI key schedule, the fused tweak/σ/whitening
/// and counter mode included).
#[test]
fn every_kernel_matches_the_aes_crate() {
    use pibench_protocol::gc::hash::{AesPrg, Kernel};
    let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(12);
    let xs: [u128; 48] = core::array::from_fn(|_| rng.gen());
    for kernel in Kernel::available() {
        let h = FixedKeyHash::with_kernel(kernel).unwrap();
        assert_eq!(h.kernel(), kernel);
        let mut arr = xs;
        h.hash_array_with(&mut arr, |k| (k as u128) << 64 | 0xabc);
        for (k, (&got, &x)) in arr.iter().zip(&xs).enumerate() {
            assert_eq!(
                got,
                reference_hash(x, (k as u128) << 64 | 0xabc),
                "{kernel:?} {k}"
            );
        }
        assert!(h.aes_blocks_per_second(std::time::Duration::from_millis(1)) > 0.0);
    }
    // Counter mode from any position equals the aes crate on the counter blocks.
    let seed: u128 = rng.gen();
    let cipher = aes::Aes128::new(&GenericArray::from(seed.to_le_bytes()));
    let mut prg = AesPrg::with_counter(seed, 5);
    let mut out = [0u128; 21];
    prg.fill(&mut out);
    for (i, &o) in out.iter().enumerate() {
        let mut b = GenericArray::from((5 + i as u128).to_le_bytes());
        cipher.encrypt_block(&mut b);
        let mut w = [0u8; 16];
        w.copy_from_slice(&b);
        assert_eq!(o, u128::from_le_bytes(w), "block {i}");
    }
    assert_eq!(prg.counter(), 26);
}

/// The 512-bit VAES `π` and counter mode equal the `aes` crate on every
/// length around their 32-block chunks (where the CPU has VAES; elsewhere
/// the test only checks that the token is refused consistently).
#[test]
fn vaes_encrypt_ctr_and_hash_match_the_aes_crate() {
    use pibench_protocol::gc::accel::{AesNi, Vaes};
    let Some(v) = Vaes::detect() else {
        assert!(!pibench_protocol::gc::hash::Kernel::available()
            .contains(&pibench_protocol::gc::hash::Kernel::Vaes));
        eprintln!("no VAES on this CPU: the 512-bit kernels are not exercised");
        return;
    };
    let ni = AesNi::detect().expect("VAES implies AES-NI");
    let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(13);
    let key: u128 = rng.gen();
    let keys = ni.expand_key(key);
    let cipher = aes::Aes128::new(&GenericArray::from(key.to_le_bytes()));
    let aes_of = |x: u128| {
        let mut b = GenericArray::from(x.to_le_bytes());
        cipher.encrypt_block(&mut b);
        let mut w = [0u8; 16];
        w.copy_from_slice(&b);
        u128::from_le_bytes(w)
    };
    for len in [0usize, 1, 3, 4, 31, 32, 33, 64, 100] {
        let xs: Vec<u128> = (0..len).map(|_| rng.gen()).collect();
        let mut got = xs.clone();
        v.encrypt(&keys, &mut got);
        for (i, (&g, &x)) in got.iter().zip(&xs).enumerate() {
            assert_eq!(g, aes_of(x), "encrypt, length {len}, block {i}");
        }
        let start = (u128::MAX - 40).wrapping_add(len as u128);
        let mut out = vec![0u128; len];
        v.ctr(&keys, start, &mut out);
        for (i, &o) in out.iter().enumerate() {
            assert_eq!(
                o,
                aes_of(start.wrapping_add(i as u128)),
                "ctr, length {len}, block {i}"
            );
        }
        // The tweakable hash H(x, t) = π(σ(x) ⊕ t) ⊕ σ(x), tweak t = f(index).
        let base: u128 = rng.gen();
        let offsets: Vec<u128> = (0..len).map(|_| rng.gen()).collect();
        let mut h = xs.clone();
        v.hash(&keys, &mut h, base, &offsets);
        for (i, (&g, &x)) in h.iter().zip(&xs).enumerate() {
            let s = pibench_protocol::gc::hash::sigma(x);
            assert_eq!(
                g,
                aes_of(s ^ base ^ offsets[i]) ^ s,
                "hash, length {len}, block {i}"
            );
        }
    }
}

/// The VAES kernels' output decoding reduces a hash mod P exactly as the
/// scalar `reduce_block` (edge values around every fold, and random ones).
#[test]
fn vaes_decoding_reduces_like_the_scalar_code() {
    use pibench_models::fixed::P;
    use pibench_protocol::gc::accel::Vaes;
    use pibench_protocol::gc::engine::reduce_block;
    use pibench_protocol::gc::garble::LANES;
    let Some(v) = Vaes::detect() else {
        eprintln!("no VAES on this CPU: the 512-bit decoding is not exercised");
        return;
    };
    let p = P as u128;
    let mut values = vec![
        0u128,
        1,
        p - 1,
        p,
        p + 1,
        2 * p - 1,
        (1 << 55) - 1,
        1 << 55,
        u64::MAX as u128,
        1 << 64,
        (u64::MAX as u128) << 64,
        u128::MAX,
        u128::MAX - 1,
        u128::MAX / p * p,
        u128::MAX / p * p - 1,
        p << 64,
        (p << 64) | (p - 1),
        ((1u128 << 32) - 1) << 64,
        (1u128 << 96) - 1,
        ((1u128 << 23) - 1) << 96,
    ];
    let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(5);
    values.extend((0..20_000).map(|_| rng.gen::<u128>()));
    values.extend((0..2_000).map(|_| rng.gen::<u128>() >> rng.gen_range(0..128)));
    for chunk in values.chunks(LANES) {
        let mut h = [0u128; LANES];
        h[..chunk.len()].copy_from_slice(chunk);
        // Colour-0 labels and ct = 0: each lane adds P − (h mod P).
        let labels = [0u128; LANES];
        let mut sums = [0u64; LANES];
        v.decode_evaluator(&h, &labels, &[0; LANES], &mut sums);
        for (l, &x) in chunk.iter().enumerate() {
            assert_eq!(P - sums[l], reduce_block(x), "evaluator, x = {x:#x}");
        }
        // Garbler, weight w: ρ = 2P − h0 − w·b₀, ct = h1 − h0 ± w mod P.
        let mut hh = [0u128; 2 * LANES];
        hh[..LANES].copy_from_slice(&h);
        hh[LANES..].copy_from_slice(&h.map(|x| x.rotate_left(37)));
        for (w, colours) in [(0u64, 0u128), (12_345, 1), (P - 1, 1), (P - 1, 0)] {
            let labels = [colours; LANES];
            let mut ct = [0u64; LANES];
            let mut rho = [0u64; LANES];
            v.decode_garbler(&hh, &labels, w, &mut ct, &mut rho);
            for (l, &x) in chunk.iter().enumerate() {
                let (h0, h1) = (reduce_block(x), reduce_block(x.rotate_left(37)));
                let b0 = colours as u64;
                assert_eq!(
                    rho[l],
                    2 * P - h0 - w * b0,
                    "garbler ρ, x = {x:#x}, w = {w}"
                );
                let want = if b0 == 1 {
                    (h1 + 2 * P - h0 - w) % P
                } else {
                    (h1 + P - h0 + w) % P
                };
                assert_eq!(ct[l], want, "garbler ct, x = {x:#x}, w = {w}, b0 = {b0}");
            }
        }
    }
}
