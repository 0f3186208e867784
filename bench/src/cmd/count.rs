//! `pibench count`: ReLUs, FLOPs (MACs) and parameters per activation site.

use std::path::Path;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use pibench_models::arch::{parse_hrn_factors, ArchSpec, Dataset};
use pibench_models::count::{count, Convention, Counts};
use pibench_models::file;
use pibench_models::graph::{Init, Network};

/// On/off switch of a counting convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// Counted.
    On,
    /// Not counted.
    Off,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable table.
    Table,
    /// JSON with top-level `relus`, `flops`, `params`.
    Json,
}

/// Arguments of `pibench count`.
#[derive(Debug, Args)]
pub struct CountArgs {
    /// resnet18, resnet34, resnet50, resnet101, wrn22_8 (any wrnD_K), vgg11/13/16/19 (max pools; vgg16-avg), hrn (with --hrn), hrn-5x5x3x-m16,
    /// or the path of a model file (.safetensors).
    #[arg(long)]
    pub model: String,
    /// cifar10, cifar100 (32x32) or tinyimagenet (64x64, 200 classes); a model file's own dataset by default.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Count the stem ReLU.
    #[arg(long, value_enum, default_value = "on")]
    pub stem_relu: Switch,
    /// Count the final BN-ReLU of pre-activation WRNs.
    #[arg(long, value_enum, default_value = "off")]
    pub final_relu: Switch,
    /// HybReNet channel factors, e.g. 5x5x3x (with --model hrn).
    #[arg(long)]
    pub hrn: Option<String>,
    /// HybReNet base channels m.
    #[arg(long, default_value_t = 16, allow_negative_numbers = true)]
    pub base_channels: i64,
    /// Architecture of a PyTorch state dict given as --model (no pibench header).
    #[arg(long)]
    pub arch: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

fn looks_like_path(model: &str) -> bool {
    model.contains('/') || model.contains('.') || Path::new(model).is_file()
}

fn spec_of(name: &str, args: &CountArgs) -> anyhow::Result<ArchSpec> {
    if name.eq_ignore_ascii_case("hrn") {
        let Some(f) = &args.hrn else {
            bail!("--model hrn needs --hrn AxBxCx (e.g. --hrn 5x5x3x)");
        };
        let Some((a, b, c)) = parse_hrn_factors(f) else {
            bail!("--hrn {f:?}: expected three positive factors like 5x5x3x");
        };
        if args.base_channels <= 0 {
            bail!(
                "--base-channels {}: expected a positive number of channels",
                args.base_channels
            );
        }
        let m = usize::try_from(args.base_channels)?;
        return Ok(ArchSpec::hrn(a, b, c, m)?);
    }
    Ok(ArchSpec::parse(name)?)
}

fn load_network(args: &CountArgs) -> anyhow::Result<(Network, Option<String>)> {
    let dataset = args.dataset.as_deref().map(Dataset::parse).transpose()?;
    if looks_like_path(&args.model) && !args.model.to_ascii_lowercase().starts_with("hrn") {
        let path = Path::new(&args.model);
        if let Some(arch) = &args.arch {
            let spec = spec_of(arch, args)?;
            let ds = dataset.unwrap_or(Dataset::Cifar100);
            let net = file::import_state_dict(path, &spec, ds.input(), ds.num_classes())?;
            return Ok((net, Some(ds.name().into())));
        }
        let loaded = file::load(path)?;
        if let Some(ds) = dataset {
            if ds.input() != loaded.network.input {
                bail!(
                    "{}: the model's input is {}, dataset {} has {}",
                    path.display(),
                    loaded.network.input,
                    ds.name(),
                    ds.input()
                );
            }
        }
        let name = dataset
            .map(|d| d.name().to_string())
            .or(loaded.header.dataset);
        return Ok((loaded.network, name));
    }
    let spec = spec_of(&args.model, args)?;
    let ds = dataset.unwrap_or(Dataset::Cifar100);
    let net = spec
        .build(ds.input(), ds.num_classes(), Init::Zeros)
        .with_context(|| format!("building {}", spec.name()))?;
    Ok((net, Some(ds.name().into())))
}

/// Runs the command.
pub fn run(args: CountArgs) -> anyhow::Result<()> {
    let convention = Convention {
        stem_relu: args.stem_relu == Switch::On,
        final_relu: args.final_relu == Switch::On,
    };
    let (net, dataset) = load_network(&args)?;
    let counts = count(&net, convention);
    match args.format {
        Format::Json => {
            let v = serde_json::json!({
                "model": net.name,
                "arch": net.arch,
                "dataset": dataset,
                "input": net.input,
                "num_classes": net.num_classes,
                "convention": convention,
                "relus": counts.relus,
                "flops": counts.flops,
                "params": counts.params,
                "max_pool_comparisons": counts.max_pool_comparisons,
                "head_flops": counts.head_flops,
                "sites": counts.sites,
                "layers": counts.layers,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Format::Table => print_table(&net, dataset.as_deref(), &counts),
    }
    Ok(())
}

fn print_table(net: &Network, dataset: Option<&str>, c: &Counts) {
    println!(
        "model {}  dataset {}  input {}  classes {}",
        net.name,
        dataset.unwrap_or("-"),
        net.input,
        net.num_classes
    );
    println!(
        "convention: stem ReLU {}, final BN-ReLU {}",
        if c.convention.stem_relu {
            "counted"
        } else {
            "not counted"
        },
        if c.convention.final_relu {
            "counted"
        } else {
            "not counted"
        }
    );
    let width = c
        .sites
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(4)
        .max(5);
    println!(
        "{:<width$}  {:>5}  {:>12}  {:>10}  {:>10}  {:>7}  {:>14}",
        "site", "stage", "shape", "elements", "relus", "counted", "flops"
    );
    for s in &c.sites {
        println!(
            "{:<width$}  {:>5}  {:>12}  {:>10}  {:>10}  {:>7}  {:>14}",
            s.name,
            s.stage.map_or("-".to_string(), |v| v.to_string()),
            s.shape.to_string(),
            s.elements,
            s.relus,
            if s.counted { "yes" } else { "no" },
            s.flops
        );
    }
    println!(
        "{:<width$}  {:>5}  {:>12}  {:>10}  {:>10}  {:>7}  {:>14}",
        "head", "", "", "", "", "", c.head_flops
    );
    println!(
        "{:<width$}  {:>5}  {:>12}  {:>10}  {:>10}  {:>7}  {:>14}",
        "total", "", "", "", c.relus, "", c.flops
    );
    println!(
        "relus {}  flops {} (MACs)  params {}",
        c.relus, c.flops, c.params
    );
    if c.max_pool_comparisons > 0 {
        println!(
            "max-pool comparisons {} (kernel² − 1 per pooled output; not ReLUs)",
            c.max_pool_comparisons
        );
    }
}
