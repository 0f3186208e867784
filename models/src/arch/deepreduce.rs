//! DeepReDuce's transformations (Jha et al., 2021): ReLU culling, thinning,
//! and reshaping by channel scaling α and feature-map scaling ρ.
//!
//! Culling and thinning replace ReLUs by the identity: the sites stay (their
//! truncation is still needed) with a zero mask, so they no longer count.

use crate::arch::ArchSpec;
use crate::error::{ModelError, Result};
use crate::graph::{FeatureShape, Network};

fn stages(net: &Network) -> Vec<usize> {
    let mut s: Vec<usize> = net.sites().filter_map(|s| s.stage).collect();
    s.sort_unstable();
    s.dedup();
    s
}

fn check_stage(net: &Network, stage: usize) -> Result<()> {
    let known = stages(net);
    if !known.contains(&stage) {
        return Err(ModelError::InvalidSize {
            what: format!("stage of {}", net.name),
            value: stage.to_string(),
            expected: format!("one of {known:?} (0 = stem)"),
        });
    }
    Ok(())
}

/// ReLU culling: every site of `stage` becomes the identity. Returns the ReLUs removed.
pub fn cull_stage(net: &mut Network, stage: usize) -> Result<u64> {
    check_stage(net, stage)?;
    let mut removed = 0;
    for s in net.sites_mut().filter(|s| s.stage == Some(stage)) {
        removed += s.relu_count();
        s.fill_mask(0);
    }
    Ok(removed)
}

/// ReLU thinning: the second ReLU (`relu2`) of every block in `stage` becomes
/// the identity. Returns the ReLUs removed.
pub fn thin_stage(net: &mut Network, stage: usize) -> Result<u64> {
    check_stage(net, stage)?;
    let mut removed = 0;
    for s in net
        .sites_mut()
        .filter(|s| s.stage == Some(stage) && s.block.is_some() && s.name.ends_with("relu2"))
    {
        removed += s.relu_count();
        s.fill_mask(0);
    }
    Ok(removed)
}

fn scale(v: usize, alpha: f64) -> usize {
    ((v as f64 * alpha).round() as usize).max(1)
}

/// Channel scaling: every width multiplied by `alpha` (rounded, at least 1).
pub fn scale_channels(spec: &ArchSpec, alpha: f64) -> Result<ArchSpec> {
    if !(alpha > 0.0 && alpha.is_finite()) {
        return Err(ModelError::InvalidSize {
            what: "channel scaling α".into(),
            value: alpha.to_string(),
            expected: "a positive finite factor".into(),
        });
    }
    let tag = format!("-a{alpha}");
    Ok(match spec {
        ArchSpec::Resnet {
            name,
            stem,
            blocks,
            widths,
        } => ArchSpec::Resnet {
            name: format!("{name}{tag}"),
            stem: scale(*stem, alpha),
            blocks: blocks.clone(),
            widths: widths.iter().map(|&w| scale(w, alpha)).collect(),
        },
        ArchSpec::Bottleneck {
            name,
            stem,
            blocks,
            widths,
        } => ArchSpec::Bottleneck {
            name: format!("{name}{tag}"),
            stem: scale(*stem, alpha),
            blocks: blocks.clone(),
            widths: widths.iter().map(|&w| scale(w, alpha)).collect(),
        },
        ArchSpec::Wrn {
            name,
            depth,
            stem,
            widths,
        } => ArchSpec::Wrn {
            name: format!("{name}{tag}"),
            depth: *depth,
            stem: scale(*stem, alpha),
            widths: widths.iter().map(|&w| scale(w, alpha)).collect(),
        },
        ArchSpec::ReluReuse {
            name,
            base,
            factor,
            stages,
        } => ArchSpec::ReluReuse {
            name: format!("{name}{tag}"),
            base: Box::new(scale_channels(base, alpha)?),
            factor: *factor,
            stages: stages.clone(),
        },
        ArchSpec::Vgg {
            name,
            convs,
            widths,
            pool,
        } => ArchSpec::Vgg {
            name: format!("{name}{tag}"),
            convs: convs.clone(),
            widths: widths.iter().map(|&w| scale(w, alpha)).collect(),
            pool: *pool,
        },
    })
}

/// Feature-map scaling: the input resolution multiplied by `rho` (rounded, at least 1).
pub fn scale_fmap(input: FeatureShape, rho: f64) -> Result<FeatureShape> {
    if !(rho > 0.0 && rho.is_finite()) {
        return Err(ModelError::InvalidSize {
            what: "feature-map scaling ρ".into(),
            value: rho.to_string(),
            expected: "a positive finite factor".into(),
        });
    }
    Ok(FeatureShape::new(
        input.c,
        scale(input.h, rho),
        scale(input.w, rho),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::count::{relu_count, Convention};
    use crate::graph::Init;

    #[test]
    fn culling_thinning_reshaping() {
        let cifar = FeatureShape::new(3, 32, 32);
        let mut net = ArchSpec::resnet18().build(cifar, 10, Init::Zeros).unwrap();
        let conv = Convention::default();
        assert_eq!(cull_stage(&mut net, 1).unwrap(), 262_144);
        assert_eq!(relu_count(&net, conv), 557_056 - 262_144);
        assert_eq!(thin_stage(&mut net, 2).unwrap(), 65_536);
        assert!(cull_stage(&mut net, 9).is_err());
        let half = scale_channels(&ArchSpec::resnet18(), 0.5).unwrap();
        let n = half.build(cifar, 10, Init::Zeros).unwrap();
        assert_eq!(relu_count(&n, conv), 557_056 / 2);
        let small = scale_fmap(cifar, 0.5).unwrap();
        let n = ArchSpec::resnet18().build(small, 10, Init::Zeros).unwrap();
        assert_eq!(relu_count(&n, conv), 557_056 / 4);
        assert!(scale_channels(&ArchSpec::resnet18(), 0.0).is_err());
    }
}
