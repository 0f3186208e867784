//! `pibench accuracy`: the fixed-point reference against the float reference
//! over a test set — top-1 of both, their agreement, `|Δlogit|`, and per
//! truncation point the magnitudes observed (and the file's calibrated
//! bounds, when it has them). The command a researcher runs before trusting
//! a latency row: the protocol computes exactly the fixed-point reference.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use pibench_models::arch::Dataset;
use pibench_models::calibrate::{magnitude_bits, Fidelity, ImageEval, Observations, Runner};
use pibench_models::data::{ImageSet, Split};
use pibench_models::file::{self, LoadedModel};
use pibench_models::fixed::FixedPoint;
use pibench_models::reference::EncodedNetwork;
use serde::Serialize;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Summary and per-point table.
    Table,
    /// One JSON document.
    Json,
}

/// Dataset split on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SplitArg {
    /// Training split.
    Train,
    /// Test split (Tiny-ImageNet: validation images).
    Test,
}

impl From<SplitArg> for Split {
    fn from(s: SplitArg) -> Split {
        match s {
            SplitArg::Train => Split::Train,
            SplitArg::Test => Split::Test,
        }
    }
}

/// Options shared by `accuracy` and `calibrate`: the model, the data and
/// how to evaluate.
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// Model file (.safetensors written by `pibench prune`/`import`).
    #[arg(long)]
    pub model: PathBuf,
    /// Dataset folder (the official binary/JPEG layout, or its parent).
    #[arg(long)]
    pub data: PathBuf,
    /// cifar10, cifar100 or tinyimagenet (default: the model file's dataset).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Evaluate N images spread evenly over the split (default: see the command).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Threads (images run in parallel); default: all cores.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Fractional bits of activations (default: the model file's).
    #[arg(long)]
    pub act_frac_bits: Option<u32>,
    /// Cap on the per-layer weight fractional bits (default: the model file's).
    #[arg(long)]
    pub max_weight_frac_bits: Option<u32>,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// A model with its data, ready to evaluate.
pub struct Prepared {
    /// The loaded file.
    pub model: LoadedModel,
    /// Fixed-point parameters in use.
    pub fixed: FixedPoint,
    /// The encoding (scale plan).
    pub enc: EncodedNetwork,
    /// The images.
    pub images: ImageSet,
    /// Threads.
    pub threads: usize,
}

impl EvalArgs {
    /// Loads the model and the selected images; `default_limit` applies
    /// when `--limit` is absent (`None`: the whole split).
    pub fn prepare(&self, split: Split, default_limit: Option<usize>) -> anyhow::Result<Prepared> {
        let model =
            file::load(&self.model).with_context(|| format!("loading {}", self.model.display()))?;
        let dataset = match (&self.dataset, &model.header.dataset) {
            (Some(d), _) | (None, Some(d)) => Dataset::parse(d)?,
            (None, None) => bail!(
                "{}: the file names no dataset; give --dataset",
                self.model.display()
            ),
        };
        let net = &model.network;
        if dataset.num_classes() != net.num_classes {
            bail!(
                "{}: the model has {} classes, {} has {}",
                self.model.display(),
                net.num_classes,
                dataset.name(),
                dataset.num_classes()
            );
        }
        let fixed = FixedPoint::new(
            self.act_frac_bits
                .unwrap_or(model.header.fixed.act_frac_bits),
            self.max_weight_frac_bits
                .unwrap_or(model.header.fixed.max_weight_frac_bits),
        )?;
        let enc = EncodedNetwork::new(net, fixed)
            .with_context(|| format!("planning the scales of {}", self.model.display()))?;
        if self.limit == Some(0) {
            bail!("--limit 0: nothing to evaluate");
        }
        let limit = self.limit.or(default_limit);
        let images = ImageSet::load(dataset, &self.data, split, limit)?;
        images.check_input(net.input)?;
        let threads = self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        if threads == 0 {
            bail!("--threads 0: at least one thread is needed");
        }
        Ok(Prepared {
            model,
            fixed,
            enc,
            images,
            threads,
        })
    }
}

impl Prepared {
    /// Both references on every selected image.
    pub fn run(&self, what: &str, quiet: bool) -> anyhow::Result<(Runner<'_>, Vec<ImageEval>)> {
        let net = &self.model.network;
        let runner = Runner::new(net, &self.enc);
        let n = self.images.len();
        let start = Instant::now();
        let step = (n / 10).max(1);
        let progress = move |done: usize| {
            if !quiet && (done.is_multiple_of(step) || done == n) {
                eprintln!(
                    "{what}: {done}/{n} images ({:.1} s)",
                    start.elapsed().as_secs_f64()
                );
            }
        };
        let evals = runner
            .evaluate_many(
                n,
                self.threads,
                |i| self.images.normalised(i, net.input),
                Some(&progress),
            )
            .map_err(|e| {
                let origin = match &e {
                    pibench_models::calibrate::CalibrateError::Data { image, .. }
                    | pibench_models::calibrate::CalibrateError::Model { image, .. } => {
                        format!(" ({})", self.images.origin(*image))
                    }
                    _ => String::new(),
                };
                anyhow::anyhow!("{e}{origin}")
            })?;
        Ok((runner, evals))
    }

    /// Where the images come from, in words.
    pub fn source(&self, data: &Path) -> String {
        format!(
            "{} {} split under {}: {} of {} images, spread evenly",
            self.images.dataset.name(),
            self.images.split.name(),
            data.display(),
            self.images.len(),
            self.images.total
        )
    }
}

/// Arguments of `pibench accuracy`.
#[derive(Debug, Args)]
pub struct AccuracyArgs {
    #[command(flatten)]
    pub eval: EvalArgs,
    /// Split to evaluate.
    #[arg(long, value_enum, default_value = "test")]
    pub split: SplitArg,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

/// One truncation point in the report.
#[derive(Debug, Serialize)]
pub struct PointJson {
    /// Node name.
    pub node: String,
    /// Kind of truncation point.
    pub kind: String,
    /// Scale before truncation.
    pub frac_bits: u32,
    /// Truncation amount.
    pub trunc_bits: u32,
    /// Largest fixed-point |value| on this run (real).
    pub fixed_max: f64,
    /// Largest float |value| on this run.
    pub float_max: f64,
    /// ℓ of this run's fixed-point maximum at `frac_bits`.
    pub observed_bits: u32,
    /// The file's calibrated bound (real), if any.
    pub stored_bound: Option<f64>,
    /// ℓ of the stored bound.
    pub stored_bits: Option<u32>,
    /// Whether this run's maximum exceeds the stored bound.
    pub exceeds_bound: bool,
}

/// An image where the two passes disagree.
#[derive(Debug, Serialize)]
pub struct DisagreementJson {
    /// Image index in the run.
    pub image: usize,
    /// File and record.
    pub origin: String,
    /// Label.
    pub label: usize,
    /// Float top-1.
    pub float_class: usize,
    /// Fixed-point top-1.
    pub fixed_class: usize,
    /// Float top-1 − top-2 logit.
    pub float_margin: f64,
}

/// The JSON document of `pibench accuracy`.
#[derive(Debug, Serialize)]
pub struct AccuracyJson {
    /// Model file.
    pub model: String,
    /// Network name.
    pub network: String,
    /// Where the images come from.
    pub data: String,
    /// Images evaluated.
    pub images: usize,
    /// Fixed-point parameters.
    pub fixed: FixedPoint,
    /// Per-layer weight fractional bits (node, fw_l).
    pub weight_frac_bits: Vec<(String, u32)>,
    /// Fractional bits of the logits.
    pub logits_frac_bits: u32,
    /// Float top-1.
    pub float_top1: f64,
    /// Fixed-point top-1.
    pub fixed_top1: f64,
    /// Fraction of images where both agree.
    pub agreement: f64,
    /// The full comparison.
    pub fidelity: Fidelity,
    /// Disagreements with their origin.
    pub disagreements: Vec<DisagreementJson>,
    /// Per truncation point.
    pub points: Vec<PointJson>,
    /// Where the stored bounds come from, if any.
    pub bounds_source: Option<String>,
    /// Points whose maximum on this run exceeds the stored bound.
    pub points_exceeding_bounds: usize,
    /// Wall-clock seconds of the evaluation.
    pub seconds: f64,
}

/// `pibench accuracy`.
pub fn run(args: AccuracyArgs) -> anyhow::Result<()> {
    let prep = args.eval.prepare(args.split.into(), None)?;
    let start = Instant::now();
    let (runner, evals) = prep.run("accuracy", args.eval.quiet)?;
    let seconds = start.elapsed().as_secs_f64();
    let fid = Fidelity::of(&evals, prep.images.labels());
    let mut obs = Observations::new(runner.points.clone());
    for e in &evals {
        obs.add(e);
    }
    // Stored bounds are only comparable when the plan is the file's.
    let stored = prep
        .model
        .header
        .bounds
        .as_ref()
        .filter(|_| prep.fixed == prep.model.header.fixed);
    let points: Vec<PointJson> = obs
        .points
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let fixed_max = obs.fixed_real(k);
            let sb = stored.and_then(|b| b.get(&p.name, p.kind));
            PointJson {
                node: p.name.clone(),
                kind: p.kind.to_string(),
                frac_bits: p.frac_bits,
                trunc_bits: p.trunc_bits,
                fixed_max,
                float_max: obs.float_max[k],
                observed_bits: magnitude_bits(obs.fixed_max[k] as f64),
                stored_bound: sb.map(|b| b.bound),
                stored_bits: sb.map(|b| b.bits),
                exceeds_bound: sb.is_some_and(|b| fixed_max.max(obs.float_max[k]) > b.bound),
            }
        })
        .collect();
    let net = &prep.model.network;
    let weight_frac_bits = net
        .nodes
        .iter()
        .zip(&prep.enc.ops)
        .filter_map(|(n, op)| match op {
            Some(pibench_models::reference::EncodedOp::Conv { frac_bits, .. })
            | Some(pibench_models::reference::EncodedOp::Linear { frac_bits, .. }) => {
                Some((n.name.clone(), *frac_bits))
            }
            _ => None,
        })
        .collect();
    let doc = AccuracyJson {
        model: args.eval.model.display().to_string(),
        network: net.name.clone(),
        data: prep.source(&args.eval.data),
        images: fid.images,
        fixed: prep.fixed,
        weight_frac_bits,
        logits_frac_bits: prep.enc.output_scale(),
        float_top1: fid.float_top1(),
        fixed_top1: fid.fixed_top1(),
        agreement: fid.agreement(),
        disagreements: fid
            .disagreements
            .iter()
            .map(|d| DisagreementJson {
                image: d.image,
                origin: prep.images.origin(d.image).to_string(),
                label: prep.images.label(d.image),
                float_class: d.float_class,
                fixed_class: d.fixed_class,
                float_margin: d.float_margin,
            })
            .collect(),
        points_exceeding_bounds: points.iter().filter(|p| p.exceeds_bound).count(),
        points,
        bounds_source: stored.map(|b| {
            format!(
                "{} ({} images, margin {} bit(s))",
                b.source, b.images, b.margin_bits
            )
        }),
        fidelity: fid,
        seconds,
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&doc)?),
        Format::Table => print_table(&doc),
    }
    Ok(())
}

fn print_table(d: &AccuracyJson) {
    let f = &d.fidelity;
    println!("model     {} ({})", d.model, d.network);
    println!("data      {}", d.data);
    println!(
        "fixed     fa = {}, fw_l ≤ {} (per layer: {}), logits at 2^-{}",
        d.fixed.act_frac_bits,
        d.fixed.max_weight_frac_bits,
        summarize_fw(&d.weight_frac_bits),
        d.logits_frac_bits
    );
    println!(
        "top-1     float {:.4} ({}/{}), fixed-point {:.4} ({}/{})",
        d.float_top1, f.float_correct, f.images, d.fixed_top1, f.fixed_correct, f.images
    );
    println!(
        "agreement {:.4} ({}/{} images choose the same class)",
        d.agreement, f.agree, f.images
    );
    println!(
        "|Δlogit|  max {:.5}, mean {:.6}; largest |logit| {:.3}; max/largest {:.5}; worst image {:.5} ({})",
        f.max_abs_delta,
        f.mean_abs_delta,
        f.max_abs_logit,
        f.max_delta_relative,
        f.worst_image_relative,
        f.worst_image
    );
    for x in &d.disagreements {
        println!(
            "  disagree: image {} ({}), label {}, float {} vs fixed {} (float margin {:.5})",
            x.image, x.origin, x.label, x.float_class, x.fixed_class, x.float_margin
        );
    }
    match &d.bounds_source {
        Some(s) => println!(
            "bounds    stored: {s}; {} point(s) exceed them",
            d.points_exceeding_bounds
        ),
        None => println!("bounds    none stored (run `pibench calibrate`)"),
    }
    println!(
        "{:<24} {:<14} {:>5} {:>5} {:>12} {:>12} {:>5} {:>12} {:>5}",
        "point", "kind", "2^-f", "trunc", "fixed max", "float max", "ℓ", "bound", "ℓ bnd"
    );
    for p in &d.points {
        println!(
            "{:<24} {:<14} {:>5} {:>5} {:>12.4} {:>12.4} {:>5} {:>12} {:>5}{}",
            p.node,
            p.kind,
            p.frac_bits,
            p.trunc_bits,
            p.fixed_max,
            p.float_max,
            p.observed_bits,
            p.stored_bound.map_or("-".into(), |b| format!("{b:.4}")),
            p.stored_bits.map_or("-".into(), |b| b.to_string()),
            if p.exceeds_bound { "  EXCEEDS" } else { "" }
        );
    }
    println!("time      {:.1} s", d.seconds);
}

/// `fw_l` values as `min..max` with the count of each.
fn summarize_fw(v: &[(String, u32)]) -> String {
    let mut counts = std::collections::BTreeMap::new();
    for (_, f) in v {
        *counts.entry(*f).or_insert(0usize) += 1;
    }
    counts
        .iter()
        .map(|(f, n)| format!("{n}×{f}"))
        .collect::<Vec<_>>()
        .join(", ")
}
