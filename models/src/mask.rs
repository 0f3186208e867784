//! Random ReLU masks with an exact budget (`pibench run --relus N`,
//! table rows whose mask is "random with exactly that count").
//!
//! The latency of a private inference depends on how many elements of each
//! site keep their ReLU, not on which ones, so a random mask with the right
//! per-site counts measures the same cost as a trained one. The budget is
//! spread over the sites that the counting convention counts, in proportion
//! to their size (largest-remainder rounding, ties to the earlier site), so
//! the total is exactly `N`; within a site the kept positions are a uniform
//! random subset drawn from a seeded ChaCha stream. Sites the convention does
//! not count keep their mask unchanged.

use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha12Rng;

use crate::count::Convention;
use crate::error::{ModelError, Result};
use crate::graph::Network;

/// Per counted site (in site order): how many ReLUs it keeps for a budget of
/// `relus`, proportional to its size. `None` for sites the convention does not count.
pub fn proportional_budget(
    net: &Network,
    relus: u64,
    convention: Convention,
) -> Result<Vec<Option<u64>>> {
    let sizes: Vec<Option<u64>> = net
        .sites()
        .map(|s| convention.counts(s.role).then_some(s.shape.len() as u64))
        .collect();
    let total: u64 = sizes.iter().flatten().sum();
    if relus > total {
        return Err(ModelError::InvalidSize {
            what: format!("ReLU budget for {}", net.name),
            value: relus.to_string(),
            expected: format!("at most {total} (the counted elements of all sites)"),
        });
    }
    if total == 0 {
        return Ok(sizes);
    }
    // Floor of the exact share, then the remaining units to the largest remainders.
    let mut out: Vec<Option<u64>> = Vec::with_capacity(sizes.len());
    let mut rems: Vec<(u128, usize)> = Vec::new();
    let mut given = 0u64;
    for (i, s) in sizes.iter().enumerate() {
        match s {
            None => out.push(None),
            Some(n) => {
                let exact = relus as u128 * *n as u128;
                let floor = (exact / total as u128) as u64;
                rems.push((exact % total as u128, i));
                given += floor;
                out.push(Some(floor));
            }
        }
    }
    rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in rems.iter().take((relus - given) as usize) {
        if let Some(v) = out[i].as_mut() {
            *v += 1;
        }
    }
    Ok(out)
}

/// Replaces the masks of the counted sites by random masks with exactly
/// `relus` kept ReLUs in total (see the module doc). Returns the new count.
pub fn random_relu_mask(
    net: &mut Network,
    relus: u64,
    convention: Convention,
    seed: u64,
) -> Result<u64> {
    let budget = proportional_budget(net, relus, convention)?;
    let mut rng = ChaCha12Rng::seed_from_u64(seed);
    let mut kept = 0u64;
    for (site, keep) in net.sites_mut().zip(budget) {
        let Some(keep) = keep else { continue };
        site.fill_mask(0);
        for i in sample(&mut rng, site.mask.len(), keep as usize) {
            site.mask[i] = 1;
        }
        kept += keep;
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::{ArchSpec, Dataset};
    use crate::count::relu_count;
    use crate::graph::Init;

    #[test]
    fn exact_budget_proportional_and_seeded() {
        let d = Dataset::Cifar100;
        let mut net = ArchSpec::resnet18()
            .build(d.input(), d.num_classes(), Init::Zeros)
            .unwrap();
        let conv = Convention::default();
        for n in [0u64, 1, 12_900, 50_000, 557_055, 557_056] {
            let got = random_relu_mask(&mut net, n, conv, 3).unwrap();
            assert_eq!(got, n);
            assert_eq!(relu_count(&net, conv), n);
        }
        // Proportional: the 64×32×32 stem site holds 65536/557056 of the budget.
        let b = proportional_budget(&net, 12_900, conv).unwrap();
        let stem = b[0].unwrap();
        assert!((1517..=1518).contains(&stem), "{stem}");
        // Same seed, same mask; other seed, other mask.
        let mut a = net.clone();
        let mut c = net.clone();
        random_relu_mask(&mut a, 1000, conv, 9).unwrap();
        random_relu_mask(&mut net, 1000, conv, 9).unwrap();
        random_relu_mask(&mut c, 1000, conv, 10).unwrap();
        assert_eq!(a, net);
        assert_ne!(a, c);
        assert!(random_relu_mask(&mut net, 557_057, conv, 1).is_err());
    }

    #[test]
    fn uncounted_sites_are_left_alone() {
        let d = Dataset::Cifar10;
        let mut net = ArchSpec::resnet18()
            .build(d.input(), d.num_classes(), Init::Zeros)
            .unwrap();
        let snl = Convention {
            stem_relu: false,
            final_relu: false,
        };
        random_relu_mask(&mut net, 100, snl, 1).unwrap();
        assert_eq!(net.sites().next().unwrap().relu_count(), 65_536);
        assert_eq!(relu_count(&net, snl), 100);
    }
}
