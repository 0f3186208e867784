//! The model options shared by `run`, `server` and `client`: a model file or
//! an architecture name with seeded random weights, a dataset, and an
//! optional random ReLU budget.

use std::path::Path;

use anyhow::{bail, Context};
use clap::Args;
use pibench_models::arch::{parse_hrn_factors, ArchSpec, Dataset};
use pibench_models::count::{relu_count, Convention};
use pibench_models::file;
use pibench_models::fixed::FixedPoint;
use pibench_models::graph::{Init, Network};
use pibench_models::mask::random_relu_mask;

/// Which network to run.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A model file (.safetensors from `pibench prune`/`import`) or an architecture:
    /// resnet18, resnet34, vgg16, wrnD_K (e.g. wrn22_8), hrn-AxBxCx-mM (random weights from --seed).
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
        let (mut net, ds, mut source) = if looks_like_path(&self.model) {
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
        Ok(BuiltModel {
            net,
            fixed,
            dataset: ds,
            source,
        })
    }
}
