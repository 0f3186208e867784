//! `pibench import`: a PyTorch checkpoint written by the published code of
//! SNL, AutoReP or ReLUPruner (or a plain all-ReLU state dict) → a pibench
//! model file, without Python (`pibench_models::import`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use pibench_models::arch::{ArchSpec, Dataset};
use pibench_models::count::relu_count;
use pibench_models::file::{self, SaveOptions};
use pibench_models::import::pth::Checkpoint;
use pibench_models::import::schemes::{import_checkpoint, ImportOptions, Scheme};

/// Where the checkpoint comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Source {
    /// SNL (`layerX.Y.alphaK.alphas`).
    Snl,
    /// AutoReP (`alpha_mask_*`, `poly_para_*`).
    Autorep,
    /// ReLUPruner (`masks`, `relu_count`).
    Relupruner,
    /// An all-ReLU state dict with pibench's module names.
    Plain,
}

/// Arguments of `pibench import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Naming scheme of the checkpoint.
    #[arg(long, value_enum)]
    pub from: Source,
    /// The checkpoint (`.pth`, `.pth.tar`: torch.save zip archive).
    pub checkpoint: PathBuf,
    /// Architecture (resnet18, resnet34, resnet50, wrn22_8, vgg11/13/16/19, hrn-AxBxCx-mM, …).
    #[arg(long)]
    pub model: String,
    /// Dataset: cifar10, cifar100, tinyimagenet.
    #[arg(long)]
    pub dataset: String,
    /// Output model file.
    #[arg(long)]
    pub out: PathBuf,
    /// Import even if tensors map to nothing (they are listed).
    #[arg(long)]
    pub ignore_unknown: bool,
    /// SNL: binarise α above this threshold (default: α must be exactly 0 or 1).
    #[arg(long)]
    pub alpha_threshold: Option<f32>,
    /// AutoReP: its --scale_x1 (degree-1 polynomials).
    #[arg(long, default_value_t = 1.0)]
    pub scale_x1: f32,
    /// AutoReP: its --scale_x2 (degree-2 polynomials).
    #[arg(long, default_value_t = 0.1)]
    pub scale_x2: f32,
    /// AutoReP: mask set (sel_mask).
    #[arg(long, default_value_t = 0)]
    pub mask_set: usize,
}

/// Runs `pibench import`.
pub fn run(args: ImportArgs) -> anyhow::Result<()> {
    let spec = ArchSpec::parse(&args.model)?;
    let dataset = Dataset::parse(&args.dataset)?;
    let scheme = match args.from {
        Source::Snl => Scheme::Snl,
        Source::Autorep => Scheme::Autorep,
        Source::Relupruner => Scheme::Relupruner,
        Source::Plain => Scheme::Plain,
    };
    let mut opts = ImportOptions::new(scheme);
    opts.ignore_unknown = args.ignore_unknown;
    opts.snl_threshold = args.alpha_threshold;
    opts.autorep_scale_x1 = args.scale_x1;
    opts.autorep_scale_x2 = args.scale_x2;
    opts.autorep_mask_set = args.mask_set;
    let ckpt = Checkpoint::read(&args.checkpoint)?;
    let imported = import_checkpoint(&ckpt, &spec, dataset.input(), dataset.num_classes(), &opts)?;
    for t in &imported.unknown {
        eprintln!("pibench import: ignored tensor {t} (maps to nothing)");
    }
    let save = SaveOptions {
        dataset: Some(dataset.name().to_string()),
        convention: imported.convention,
        ..Default::default()
    };
    file::save(&imported.network, &save, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let relus = relu_count(&imported.network, imported.convention);
    let polys = imported
        .network
        .sites()
        .filter(|s| s.poly.is_some())
        .count();
    println!(
        "{}: {} ({}) from {} checkpoint {}: {relus} ReLUs{}",
        args.out.display(),
        spec.name(),
        dataset.name(),
        scheme.name(),
        args.checkpoint.display(),
        if polys > 0 {
            format!(", {polys} sites with polynomial replacements")
        } else {
            String::new()
        }
    );
    Ok(())
}
