//! Model names → `pibench_models` architectures (the one definition).
//!
//! Every name `pibench_models::arch::ArchSpec::parse` knows is accepted
//! (`resnet18`, `resnet34`, `vgg16`, `wrn22_8`, `hrn-5x5x3x-m16`, and any it
//! learns later). `--base-channels M` completes an HRN name without `-mM`
//! (default 16, as in DeepReShape); `--width-multiplier` is DeepReDuce's
//! channel scaling (`arch::deepreduce::scale_channels`), which is also
//! how tests get their 1/16-width networks; the input resolution comes from
//! the dataset and ρ (`arch::deepreduce::scale_fmap`).

use pibench_models::arch::{deepreduce, ArchSpec};
use pibench_models::graph::FeatureShape;
use pibench_models::ModelError;

/// Default HybReNet base channels `m` (DeepReShape, Table 6: m = 16).
pub const DEFAULT_HRN_BASE: usize = 16;

/// The architecture named `name`, completed with `base_channels` for HRNs
/// and scaled by `width` (1 = unchanged).
pub fn resolve(
    name: &str,
    base_channels: Option<usize>,
    width: f64,
) -> Result<ArchSpec, ModelError> {
    let lower = name.trim().to_ascii_lowercase();
    let full = if lower.starts_with("hrn") {
        match (lower.contains("-m"), base_channels) {
            (false, m) => format!("{lower}-m{}", m.unwrap_or(DEFAULT_HRN_BASE)),
            (true, None) => lower.clone(),
            (true, Some(m)) => {
                let spec = ArchSpec::parse(&lower)?;
                if let ArchSpec::Resnet { stem, .. } = spec {
                    if stem != m {
                        return Err(ModelError::InvalidSize {
                            what: format!("base channels of {name}"),
                            value: m.to_string(),
                            expected: format!("{stem}, as in the name (or drop --base-channels)"),
                        });
                    }
                }
                lower.clone()
            }
        }
    } else {
        lower.clone()
    };
    let spec = ArchSpec::parse(&full)?;
    if width == 1.0 {
        Ok(spec)
    } else {
        deepreduce::scale_channels(&spec, width)
    }
}

/// `spec` with one residual block per stage (DeepReDuce Table 4's rows whose
/// stages are marked with "?": ResNet10-like). Other families are unchanged.
pub fn one_block_per_stage(spec: &ArchSpec) -> ArchSpec {
    match spec {
        ArchSpec::Resnet {
            name,
            stem,
            blocks,
            widths,
        } => ArchSpec::Resnet {
            name: format!("{name}-1blk"),
            stem: *stem,
            blocks: vec![1; blocks.len()],
            widths: widths.clone(),
        },
        other => other.clone(),
    }
}

/// The input shape at resolution scale `rho` (1 = the dataset's).
pub fn input_shape(native: FeatureShape, rho: f64) -> Result<FeatureShape, ModelError> {
    if rho == 1.0 {
        Ok(native)
    } else {
        deepreduce::scale_fmap(native, rho)
    }
}
