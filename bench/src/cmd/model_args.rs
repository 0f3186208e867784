//! The model options shared by `run`, `server` and `client`: a model file or
//! an architecture name with seeded random weights, a dataset, and an
//! optional random ReLU budget.

use std::path::Path;

use anyhow::{bail, Context};
use clap::Args;
use pibench_models::arch::{parse_hrn_factors, ArchSpec, Dataset};
use pibench_models::calibrate::{truncation_points, Bounds};
use pibench_models::count::{relu_count, Convention};
use pibench_models::file;
use pibench_models::fixed::FixedPoint;
use pibench_models::graph::{Init, Network};
use pibench_models::mask::random_relu_mask;
use pibench_models::reference::{EncodedNetwork, SAFE_BITS};

/// Which network to run.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A model file (.safetensors from `pibench prune`/`import`) or an architecture:
    /// resnet18, resnet34, resnet50, resnet101, vgg11/13/16/19 (max pools; vgg16-avg), wrnD_K (e.g. wrn22_8), hrn-AxBxCx-mM (random weights from --seed).
    #[arg(long)]
    pub model: String,
    /// cifar10, cifar100 or tinyimagenet (for an architecture; checked against a file's input).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Keep exactly N ReLUs, at random positions spread over the counted sites in proportion
    /// to their size (latency does not depend on which elements are kept).
    #[arg(long)]
    pub relus: Option<u64>,
    /// Do not count the stem ReLU for --relus (SNL's convention; the stem keeps its mask).
    #[arg(long)]
    pub no_stem_relu: bool,
    /// Seed of the random weights (architectures) and of the --relus mask.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Fractional bits of activations.
    #[arg(long, default_value_t = FixedPoint::default().act_frac_bits)]
    pub act_frac_bits: u32,
    /// Cap on the per-layer weight fractional bits (≤ 16).
    #[arg(long, default_value_t = FixedPoint::default().max_weight_frac_bits)]
    pub max_weight_frac_bits: u32,
    /// Run a model file that has no calibrated bounds (`pibench calibrate`) with
    /// `--trunc local`: the failure bound then uses this input's own magnitudes.
    #[arg(long)]
    pub uncalibrated: bool,
}

/// A network and a one-line description of where it came from.
#[derive(Debug, Clone)]
pub struct BuiltModel {
    /// The network.
    pub net: Network,
    /// Fixed-point parameters.
    pub fixed: FixedPoint,
    /// Dataset name, if known.
    pub dataset: Option<String>,
    /// Where weights and masks come from.
    pub source: String,
    /// Whether the network came from a model file (not built from an architecture).
    pub from_file: bool,
    /// The model file's calibrated bounds, when they hold for this network and
    /// fixed-point setting (see [`ModelArgs::build`]).
    pub bounds: Option<Bounds>,
    /// Why the model file's bounds are not used, when it has some.
    pub bounds_note: Option<String>,
}

/// `ℓ` from which a value may leave the range the fixed-point arithmetic is
/// safe in (`2^SAFE_BITS`, two bits below the field's size, where the
/// reference reports an overflow): a truncation point whose bound is this
/// large is unbounded.
pub const UNBOUNDED_BITS: u32 = SAFE_BITS;

impl BuiltModel {
    /// Refuses a network whose magnitudes are not bounded well enough to run
    /// privately: a calibrated truncation point at `ℓ ≥ SAFE_BITS` (values may
    /// overflow the safe range: neither truncation mode is then correct), or — with
    /// `local` truncation — a model file without calibrated bounds (its failure
    /// bound would be unknown) unless `uncalibrated` is set. Networks built from
    /// an architecture with random weights have no data to calibrate on; their
    /// runs state that ℓ comes from the input itself.
    pub fn require_bounded(&self, local: bool, uncalibrated: bool) -> anyhow::Result<()> {
        if let Some(b) = &self.bounds {
            if let Some(p) = b.points.iter().find(|p| p.bits >= UNBOUNDED_BITS) {
                bail!(
                    "{}: truncation point {} ({}) is unbounded: its calibrated bound {:.4e} is 2^{} at \
                     2^{} fractional bits, and values from 2^{UNBOUNDED_BITS} on may overflow the field arithmetic; \
                     lower --act-frac-bits/--max-weight-frac-bits or check the model",
                    self.source,
                    p.node,
                    p.kind,
                    p.bound,
                    p.bits,
                    p.frac_bits
                );
            }
            return Ok(());
        }
        if local && self.from_file && !uncalibrated {
            bail!(
                "{}: no calibrated magnitude bounds{}, so the failure probability of `--trunc local` \
                 is unknown; run `pibench calibrate --model FILE --data DIR` first, use `--trunc exact`, \
                 or pass --uncalibrated to bound it with this input's own magnitudes",
                self.source,
                self.bounds_note
                    .as_deref()
                    .map(|n| format!(" usable here ({n})"))
                    .unwrap_or_default()
            );
        }
        Ok(())
    }
}

fn looks_like_path(model: &str) -> bool {
    (model.contains('/') || model.ends_with(".safetensors") || Path::new(model).is_file())
        && !model.to_ascii_lowercase().starts_with("hrn-")
}

impl ModelArgs {
    /// The arguments as command-line flags (to start a child process with the same model).
    pub fn to_flags(&self) -> Vec<String> {
        let mut v = vec!["--model".into(), self.model.clone()];
        if let Some(d) = &self.dataset {
            v.extend(["--dataset".into(), d.clone()]);
        }
        if let Some(n) = self.relus {
            v.extend(["--relus".into(), n.to_string()]);
        }
        if self.no_stem_relu {
            v.push("--no-stem-relu".into());
        }
        if self.uncalibrated {
            v.push("--uncalibrated".into());
        }
        v.extend([
            "--seed".into(),
            self.seed.to_string(),
            "--act-frac-bits".into(),
            self.act_frac_bits.to_string(),
            "--max-weight-frac-bits".into(),
            self.max_weight_frac_bits.to_string(),
        ]);
        v
    }

    /// Builds (or loads) the network.
    pub fn build(&self) -> anyhow::Result<BuiltModel> {
        let fixed = FixedPoint::new(self.act_frac_bits, self.max_weight_frac_bits)?;
        let dataset = self.dataset.as_deref().map(Dataset::parse).transpose()?;
        let mut file_bounds = None;
        let from_file = looks_like_path(&self.model);
        let (mut net, ds, mut source) = if from_file {
            let path = Path::new(&self.model);
            let loaded = file::load(path).with_context(|| format!("loading {}", path.display()))?;
            if let Some(d) = dataset {
                if d.input() != loaded.network.input {
                    bail!(
                        "{}: the model's input is {}, dataset {} has {}",
                        path.display(),
                        loaded.network.input,
                        d.name(),
                        d.input()
                    );
                }
            }
            let ds = dataset
                .map(|d| d.name().to_string())
                .or(loaded.header.dataset.clone());
            file_bounds = loaded.header.bounds.clone();
            (
                loaded.network,
                ds,
                format!("weights and masks from {}", path.display()),
            )
        } else {
            let spec = if let Some(rest) = self.model.strip_prefix("hrn:") {
                let Some((a, b, c)) = parse_hrn_factors(rest) else {
                    bail!("--model hrn:AxBxC: expected three factors, got {rest:?}");
                };
                ArchSpec::hrn(a, b, c, 16)?
            } else {
                ArchSpec::parse(&self.model)?
            };
            let d = dataset.unwrap_or(Dataset::Cifar100);
            let net = spec
                .build(d.input(), d.num_classes(), Init::Seeded(self.seed))
                .with_context(|| format!("building {}", spec.name()))?;
            (
                net,
                Some(d.name().to_string()),
                format!(
                    "{} with seeded random weights (seed {})",
                    spec.name(),
                    self.seed
                ),
            )
        };
        if let Some(n) = self.relus {
            let conv = Convention {
                stem_relu: !self.no_stem_relu,
                final_relu: false,
            };
            random_relu_mask(&mut net, n, conv, self.seed)?;
            source.push_str(&format!(
                "; random ReLU mask with exactly {n} ReLUs (seed {}, {})",
                self.seed,
                if self.no_stem_relu {
                    "stem not counted"
                } else {
                    "stem counted"
                }
            ));
        } else {
            source.push_str(&format!(
                "; {} ReLUs",
                relu_count(&net, Convention::default())
            ));
        }
        if !from_file {
            let how = pibench_models::reference::calibrate_random_batchnorm(&mut net, self.seed)?;
            source.push_str(&format!("; {how}"));
        }
        // Calibrated bounds hold for the network and scale plan they were measured on.
        let (bounds, bounds_note) = match file_bounds {
            None => (None, None),
            Some(_) if self.relus.is_some() => (
                None,
                Some("--relus replaces the calibrated masks".to_string()),
            ),
            Some(b) => {
                let enc = EncodedNetwork::new(&net, fixed)?;
                match b.check(&truncation_points(&net, &enc)) {
                    Ok(()) => {
                        source.push_str(&format!(
                            "; calibrated bounds ({} images, +{} bit margin)",
                            b.images, b.margin_bits
                        ));
                        (Some(b), None)
                    }
                    Err(reason) => (
                        None,
                        Some(format!(
                            "they were calibrated for another fixed-point setting: {reason}"
                        )),
                    ),
                }
            }
        };
        Ok(BuiltModel {
            net,
            fixed,
            dataset: ds,
            source,
            from_file,
            bounds,
            bounds_note,
        })
    }
}
