//! `pibench calibrate`: measures, per truncation point, the largest
//! magnitude before truncation over N images (fixed-point and float passes),
//! and writes bounds `max × 2^margin` with the scale plan into the model
//! file's header (`models::calibrate::Bounds`; the protocol's local
//! truncation uses them for its failure bound).
//!
//! By default it calibrates on 1,000 images of the training split spread
//! evenly over it, so that `pibench accuracy` on the test split checks the
//! bounds on images they were not fitted to.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use pibench_models::calibrate::{Observations, DEFAULT_MARGIN_BITS};
use pibench_models::file::{self, SaveOptions};
use serde::Serialize;

use super::accuracy::{EvalArgs, Format, SplitArg};

/// Images calibrated on when `--limit` is absent.
pub const DEFAULT_CALIBRATION_IMAGES: usize = 1000;

/// Arguments of `pibench calibrate`.
#[derive(Debug, Args)]
pub struct CalibrateArgs {
    #[command(flatten)]
    pub eval: EvalArgs,
    /// Split to calibrate on.
    #[arg(long, value_enum, default_value = "train")]
    pub split: SplitArg,
    /// Margin in bits: bounds are the observed maxima × 2^margin.
    #[arg(long, default_value_t = DEFAULT_MARGIN_BITS)]
    pub margin_bits: u32,
    /// Output model file (default: rewrite --model in place).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Output format of the summary.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

/// The summary `pibench calibrate --format json` prints.
#[derive(Debug, Serialize)]
pub struct CalibrateJson {
    /// File written.
    pub out: String,
    /// The bounds written.
    pub bounds: pibench_models::calibrate::Bounds,
    /// Seconds of evaluation.
    pub seconds: f64,
}

/// `pibench calibrate`.
pub fn run(args: CalibrateArgs) -> anyhow::Result<()> {
    if args.margin_bits > 16 {
        bail!(
            "--margin-bits {}: at most 16 (a factor of 65536)",
            args.margin_bits
        );
    }
    let out = args.out.clone().unwrap_or_else(|| args.eval.model.clone());
    let prep = args
        .eval
        .prepare(args.split.into(), Some(DEFAULT_CALIBRATION_IMAGES))?;
    let start = Instant::now();
    let (runner, evals) = prep.run("calibrate", args.eval.quiet)?;
    let seconds = start.elapsed().as_secs_f64();
    let mut obs = Observations::new(runner.points.clone());
    for e in &evals {
        obs.add(e);
    }
    let bounds = obs.bounds(args.margin_bits, prep.source(&args.eval.data));
    let header = &prep.model.header;
    let opts = SaveOptions {
        dataset: header
            .dataset
            .clone()
            .or_else(|| Some(prep.images.dataset.name().to_string())),
        convention: header.convention,
        fixed: prep.fixed,
        bounds: Some(bounds.clone()),
    };
    let bytes = file::to_bytes(&prep.model.network, &opts)?;
    // Write next to the target, then rename: a failure leaves the old file.
    let tmp = {
        let mut s = out.as_os_str().to_owned();
        s.push(".calibrate.tmp");
        PathBuf::from(s)
    };
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
    // What was written must load (plan and bounds checked).
    file::load(&out).with_context(|| format!("re-reading {}", out.display()))?;
    match args.format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&CalibrateJson {
                out: out.display().to_string(),
                bounds,
                seconds,
            })?
        ),
        Format::Table => {
            println!(
                "wrote {}: bounds of {} truncation points from {} (margin {} bit(s), {:.1} s)",
                out.display(),
                bounds.points.len(),
                bounds.source,
                bounds.margin_bits,
                seconds
            );
            println!(
                "{:<24} {:<14} {:>5} {:>12} {:>12} {:>12} {:>5}",
                "point", "kind", "2^-f", "fixed max", "float max", "bound", "ℓ"
            );
            for p in &bounds.points {
                println!(
                    "{:<24} {:<14} {:>5} {:>12.4} {:>12.4} {:>12.4} {:>5}",
                    p.node,
                    p.kind.to_string(),
                    p.frac_bits,
                    p.fixed_max,
                    p.float_max,
                    p.bound,
                    p.bits
                );
            }
        }
    }
    Ok(())
}
