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
