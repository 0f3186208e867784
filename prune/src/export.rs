//! Export to the `pibench_models` model file.
//!
//! The libtorch module was built from the models graph under the graph's
//! names, so exporting copies the trained variables (weights, BN statistics,
//! masks, polynomial coefficients) back into that graph
//! ([`crate::net::Net::to_graph`]), checks that the masks hold exactly the
//! trained network's kept ReLUs, and saves it with a header that records the
//! dataset, input shape, the run's counting convention and the exact ReLU
//! count. Batch norms are stored unfolded; the models crate folds them for
//! inference.
//!
//! [`save_calibrated`] also measures per-site magnitude bounds on training
//! images (issue 12: "calibrated on data at export") with the models
//! crate's calibration — the same code as `pibench calibrate` — and stores
//! them in the file, so that `pibench run` accepts the file under local
//! truncation without a separate `pibench calibrate` step.

use std::path::Path;

use pibench_models::count::relu_count;
use pibench_models::file::{self, SaveOptions};
use pibench_models::graph::Network as Graph;
use tch::{Device, Kind, Tensor};
use thiserror::Error;

use crate::net::{Net, NetError};

/// Errors of export.
#[derive(Debug, Error)]
pub enum ExportError {
    /// The models crate refused the network.
    #[error("models: {0}")]
    Model(#[from] pibench_models::error::ModelError),
    /// Reading the module's variables failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// Calibration could not read the data.
    #[error("calibration data: {0}")]
    Data(#[from] pibench_models::data::DataError),
    /// The exported masks do not hold the network's ReLU count.
    #[error("exported masks hold {exported} ReLUs, the trained network {trained}")]
    CountMismatch {
        /// Count in the exported network.
        exported: u64,
        /// Count of the libtorch network.
        trained: i64,
    },
}

/// Converts `net` (weights, BN statistics, masks, coefficients) to a models network.
pub fn to_model(net: &Net) -> Result<Graph, ExportError> {
    let model = net.to_graph()?;
    let exported = relu_count(&model, net.convention);
    if exported != net.relu_count() as u64 {
        return Err(ExportError::CountMismatch {
            exported,
            trained: net.relu_count(),
        });
    }
    Ok(model)
}

/// Writes `net` as a model file at `path`; returns the header's ReLU count.
pub fn save(net: &Net, dataset: &str, path: &Path) -> Result<u64, ExportError> {
    let model = to_model(net)?;
    let opts = SaveOptions {
        dataset: Some(dataset.to_string()),
        convention: net.convention,
        ..Default::default()
    };
    file::save(&model, &opts, path)?;
    Ok(relu_count(&model, opts.convention))
}

/// Calibration at export: `images` training images spread evenly over the
/// split under `data`, bounds = observed maxima × 2^`margin_bits`.
#[derive(Debug, Clone)]
pub struct Calibration<'a> {
    /// Dataset folder (as given to piprune).
    pub data: &'a Path,
    /// Dataset of the model.
    pub dataset: pibench_models::arch::Dataset,
    /// Number of training images.
    pub images: usize,
    /// Margin in bits.
    pub margin_bits: u32,
    /// Threads of the reference passes.
    pub threads: usize,
}

/// What [`save_calibrated`] did about calibration.
#[derive(Debug, Clone)]
pub enum CalibrationOutcome {
    /// Not asked for.
    Skipped,
    /// Bounds stored: number of truncation points and the largest ℓ.
    Stored {
        /// Truncation points bounded.
        points: usize,
        /// Largest magnitude bits over the points.
        max_bits: u32,
        /// Images evaluated.
        images: usize,
    },
    /// The network could not be calibrated (e.g. a fixed-point overflow on
    /// an image); the file is written without bounds.
    Failed(String),
}

/// [`save`] with calibrated bounds in the header when `cal` is given. A
/// network that fails calibration (its fixed-point pass overflows on some
/// image) is still written, without bounds, and the reason is returned.
pub fn save_calibrated(
    net: &Net,
    dataset: &str,
    path: &Path,
    cal: Option<&Calibration<'_>>,
) -> Result<(u64, CalibrationOutcome), ExportError> {
    use pibench_models::calibrate::{Observations, Runner};
    use pibench_models::data::{ImageSet, Split};
    use pibench_models::reference::EncodedNetwork;

    let model = to_model(net)?;
    let mut opts = SaveOptions {
        dataset: Some(dataset.to_string()),
        convention: net.convention,
        ..Default::default()
    };
    let mut outcome = CalibrationOutcome::Skipped;
    if let Some(cal) = cal.filter(|c| c.images > 0) {
        let images = ImageSet::load(cal.dataset, cal.data, Split::Train, Some(cal.images))?;
        images.check_input(model.input)?;
        let enc = EncodedNetwork::new(&model, opts.fixed)?;
        let runner = Runner::new(&model, &enc);
        match runner.evaluate_many(
            images.len(),
            cal.threads.max(1),
            |i| images.normalised(i, model.input),
            None,
        ) {
            Ok(evals) => {
                let mut obs = Observations::new(runner.points.clone());
                for e in &evals {
                    obs.add(e);
                }
                let source = format!(
                    "{} {} split under {}: {} of {} images, spread evenly (at export by piprune)",
                    images.dataset.name(),
                    images.split.name(),
                    cal.data.display(),
                    images.len(),
                    images.total
                );
                let bounds = obs.bounds(cal.margin_bits, source);
                outcome = CalibrationOutcome::Stored {
                    points: bounds.points.len(),
                    max_bits: bounds.points.iter().map(|p| p.bits).max().unwrap_or(0),
                    images: images.len(),
                };
                opts.bounds = Some(bounds);
            }
            Err(e) => {
                let origin = match &e {
                    pibench_models::calibrate::CalibrateError::Data { image, .. }
                    | pibench_models::calibrate::CalibrateError::Model { image, .. } => {
                        format!(" ({})", images.origin(*image))
                    }
                    _ => String::new(),
                };
                outcome = CalibrationOutcome::Failed(format!("{e}{origin}"));
            }
        }
    }
    file::save(&model, &opts, path)?;
    Ok((relu_count(&model, opts.convention), outcome))
}

/// libtorch's eval-mode fp32 logits for a `[B, C, H, W]` batch, as `f32` rows.
pub fn torch_logits(net: &Net, x: &Tensor) -> Vec<Vec<f32>> {
    let out = tch::no_grad(|| net.forward_t(x, false))
        .to_device(Device::Cpu)
        .to_kind(Kind::Float);
    let b = out.size()[0];
    (0..b)
        .map(|i| Vec::<f32>::try_from(&out.get(i)).unwrap_or_default())
        .collect()
}
