//! Export to the `pibench_models` model file.
//!
//! The libtorch network uses the same kuangliu-style names as
//! `pibench_models::arch`, so the export writes an in-memory state dict
//! (`conv*.weight`, BN `weight/bias/running_mean/running_var`, `linear.*`,
//! `<site>.mask`), imports it with
//! [`pibench_models::file::import_state_dict_bytes`] for the equivalent
//! `ArchSpec::Resnet`, checks that the imported masks hold exactly the
//! network's kept ReLUs, and saves it with a header that records dataset,
//! input shape, counting convention and the exact ReLU count. Batch norms
//! are stored unfolded (as the models crate defines) and folded by its
//! inference code.

use std::collections::HashMap;
use std::path::Path;

use pibench_models::arch::ArchSpec as ModelArch;
use pibench_models::count::{relu_count, Convention};
use pibench_models::file::{self, SaveOptions};
use pibench_models::graph::{FeatureShape, Network as ModelNetwork};
use safetensors::tensor::{Dtype, TensorView};
use tch::{Device, Kind, Tensor};
use thiserror::Error;

use crate::net::Network;

/// Errors of export.
#[derive(Debug, Error)]
pub enum ExportError {
    /// The models crate refused the network.
    #[error("models: {0}")]
    Model(#[from] pibench_models::error::ModelError),
    /// A libtorch tensor could not be read.
    #[error("tensor {name}: {source}")]
    Torch {
        /// Variable name.
        name: String,
        /// Underlying error.
        source: tch::TchError,
    },
    /// Serialising the state dict failed.
    #[error("state dict: {reason}")]
    StateDict {
        /// Why.
        reason: String,
    },
    /// The imported masks do not hold the network's ReLU count.
    #[error("exported masks hold {exported} ReLUs, the trained network {trained}")]
    CountMismatch {
        /// Count in the imported network (all sites).
        exported: u64,
        /// Count of the libtorch network.
        trained: i64,
    },
}

/// The models-crate architecture equivalent to `net`.
pub fn model_arch(net: &Network) -> ModelArch {
    ModelArch::Resnet {
        name: net.spec.name.clone(),
        stem: net.spec.stem_width as usize,
        blocks: net.spec.blocks.clone(),
        widths: net.spec.widths.iter().map(|&w| w as usize).collect(),
    }
}

/// Converts `net` (weights, BN statistics, masks) to a models network.
pub fn to_model(net: &Network) -> Result<ModelNetwork, ExportError> {
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>, Dtype)> = Vec::new();
    for (name, var) in net.vs.variables() {
        if name.starts_with("masks.") || name.starts_with("alphas.") {
            continue;
        }
        let t = var
            .detach()
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous();
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let data =
            Vec::<f32>::try_from(&t.flatten(0, -1)).map_err(|source| ExportError::Torch {
                name: name.clone(),
                source,
            })?;
        let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.push((name, shape, bytes, Dtype::F32));
    }
    for site in &net.sites {
        let m = site
            .mask
            .detach()
            .to_device(Device::Cpu)
            .to_kind(Kind::Uint8)
            .contiguous();
        let data = Vec::<u8>::try_from(&m.flatten(0, -1)).map_err(|source| ExportError::Torch {
            name: site.layout.name.clone(),
            source,
        })?;
        let shape = site.layout.shape.iter().map(|&d| d as usize).collect();
        tensors.push((format!("{}.mask", site.layout.name), shape, data, Dtype::U8));
    }
    let views = tensors
        .iter()
        .map(|(n, s, b, d)| {
            TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| ExportError::StateDict {
                    reason: format!("{n}: {e}"),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = safetensors::serialize(views, &None::<HashMap<String, String>>).map_err(|e| {
        ExportError::StateDict {
            reason: e.to_string(),
        }
    })?;
    let side = net.spec.input_size as usize;
    let mut model = file::import_state_dict_bytes(
        &bytes,
        "<piprune export>",
        &model_arch(net),
        FeatureShape::new(3, side, side),
        net.spec.classes as usize,
    )?;
    model.name = net.spec.name.clone();
    let all = Convention {
        stem_relu: true,
        final_relu: true,
    };
    let exported = relu_count(&model, all);
    if exported != net.relu_count() as u64 {
        return Err(ExportError::CountMismatch {
            exported,
            trained: net.relu_count(),
        });
    }
    Ok(model)
}

/// Writes `net` as a model file at `path`; returns the header's ReLU count.
pub fn save(net: &Network, dataset: &str, path: &Path) -> Result<u64, ExportError> {
    let model = to_model(net)?;
    let opts = SaveOptions {
        dataset: Some(dataset.to_string()),
        convention: Convention::default(),
        ..Default::default()
    };
    file::save(&model, &opts, path)?;
    Ok(relu_count(&model, opts.convention))
}

/// libtorch's eval-mode logits for a `[B,3,H,W]` batch, as `f32` rows.
pub fn torch_logits(net: &Network, x: &Tensor) -> Vec<Vec<f32>> {
    let out = tch::no_grad(|| net.forward_t(x, false))
        .to_device(Device::Cpu)
        .to_kind(Kind::Float);
    let b = out.size()[0];
    (0..b)
        .map(|i| Vec::<f32>::try_from(&out.get(i)).unwrap_or_default())
        .collect()
}
