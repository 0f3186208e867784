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
