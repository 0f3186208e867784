//! Model files: safetensors with PyTorch state-dict names plus a JSON header.
//!
//! Tensors (all little-endian):
//! * convolution `N`: `N.weight` `[cout, cin/groups, k, k]` F32, optional `N.bias`;
//! * batch norm `B` (folded or standalone): `B.weight`, `B.bias`,
//!   `B.running_mean`, `B.running_var` `[C]` F32;
//! * linear `N`: `N.weight` `[out, in]`, `N.bias` `[out]` F32;
//! * site `S`: `S.mask` `[C, H, W]` U8 (1 = ReLU, 0 = replaced) and, when the
//!   replacement is a polynomial, `S.poly` `[3, C]` F32 (rows `a2, a1, a0`).
//!
//! The safetensors metadata key `pibench` holds the [`ModelHeader`] as JSON:
//! architecture and its parameters, dataset, input shape, counting convention,
//! site order, exact ReLU count, and fixed-point parameters; optionally the
//! scale plan the network runs with ([`ScalePlan`], written whenever the
//! network can be planned) and calibrated magnitude bounds per truncation
//! point ([`Bounds`], written by `pibench calibrate`). Files without them
//! (older files) still load. [`from_bytes`] recomputes the plan from the
//! weights and refuses a file whose stored plan differs, and refuses bounds
//! that do not cover exactly the plan's truncation points at its scales.
//!
//! [`import_state_dict`] reads a PyTorch checkpoint exported with
//! `safetensors.torch.save_file(model.state_dict(), …)` for a given
//! architecture: float weights (F32/F64/F16/BF16) are accepted, masks may be
//! U8/BOOL/float 0-1, missing masks mean all-ReLU, `num_batches_tracked` and
//! other extra tensors are ignored, and `fc.*`/`linear.*` are interchangeable.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::arch::ArchSpec;
use crate::calibrate::{truncation_points, Bounds, ScalePlan};
use crate::count::{relu_count, Convention};
use crate::error::{ModelError, Result};
use crate::fixed::FixedPoint;
use crate::graph::{BatchNorm, FeatureShape, Init, Network, Op, PolyCoeffs};
use crate::reference::EncodedNetwork;

/// Format tag written in every header.
pub const FORMAT: &str = "pibench-model/1";
/// Metadata key holding the header.
pub const HEADER_KEY: &str = "pibench";

/// The JSON header stored in the safetensors metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelHeader {
    /// [`FORMAT`].
    pub format: String,
    /// Network display name.
    pub name: String,
    /// Architecture and its parameters.
    pub arch: ArchSpec,
    /// Dataset (`cifar10`, `cifar100`, `tinyimagenet`), if known.
    pub dataset: Option<String>,
    /// Input shape.
    pub input: FeatureShape,
    /// Classes.
    pub num_classes: usize,
    /// Counting convention of `relus`.
    pub convention: Convention,
    /// Site names in site order.
    pub sites: Vec<String>,
    /// Exact ReLU count under `convention`.
    pub relus: u64,
    /// Fixed-point parameters the model is meant to run with.
    pub fixed: FixedPoint,
    /// The scale plan of `fixed` for these weights (absent in older files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<ScalePlan>,
    /// Calibrated magnitude bounds per truncation point (absent until calibrated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounds: Option<Bounds>,
}

/// What to record in a saved file besides the network.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SaveOptions {
    /// Dataset name.
    pub dataset: Option<String>,
    /// Counting convention for the header's ReLU count.
    pub convention: Convention,
    /// Fixed-point parameters.
    pub fixed: FixedPoint,
    /// Calibrated bounds to store (they must match the plan of `fixed`).
    pub bounds: Option<Bounds>,
}

/// A loaded model file.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// The network with its weights, masks and coefficients.
    pub network: Network,
    /// The header.
    pub header: ModelHeader,
}

/// Serialises a network to safetensors bytes.
pub fn to_bytes(net: &Network, opts: &SaveOptions) -> Result<Vec<u8>> {
    net.validate()?;
    // The plan is stored whenever the network can be planned; bounds need it.
    let plan = match EncodedNetwork::new(net, opts.fixed) {
        Ok(enc) => {
            if let Some(b) = &opts.bounds {
                b.check(&truncation_points(net, &enc))
                    .map_err(|reason| ModelError::Format {
                        file: "<memory>".into(),
                        reason: format!("bounds do not match the network's scale plan: {reason}"),
                    })?;
            }
            Some(ScalePlan::of(net, &enc)?)
        }
        Err(e) if opts.bounds.is_some() => return Err(e),
        Err(_) => None,
    };
    let header = ModelHeader {
        format: FORMAT.into(),
        name: net.name.clone(),
        arch: net.arch.clone(),
        dataset: opts.dataset.clone(),
        input: net.input,
        num_classes: net.num_classes,
        convention: opts.convention,
        sites: net.sites().map(|s| s.name.clone()).collect(),
        relus: relu_count(net, opts.convention),
        fixed: opts.fixed,
        plan,
        bounds: opts.bounds.clone(),
    };
    let mut blobs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut f32s = |name: String, shape: Vec<usize>, v: &[f32]| {
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        blobs.push((name, Dtype::F32, shape, bytes));
    };
    for node in &net.nodes {
        match &node.op {
            Op::Conv2d(c) => {
                f32s(
                    format!("{}.weight", node.name),
                    c.weight.shape.clone(),
                    &c.weight.data,
                );
                if let Some(b) = &c.bias {
                    f32s(format!("{}.bias", node.name), vec![b.len()], b);
                }
                if let Some(bn) = &c.bn {
                    bn_tensors(bn, &mut f32s);
                }
            }
            Op::BatchNorm(bn) => bn_tensors(bn, &mut f32s),
            Op::Linear(l) => {
                f32s(
                    format!("{}.weight", node.name),
                    l.weight.shape.clone(),
                    &l.weight.data,
                );
                f32s(format!("{}.bias", node.name), vec![l.bias.len()], &l.bias);
            }
            Op::Site(s) => {
                if let Some(p) = &s.poly {
                    let mut v = p.a2.clone();
                    v.extend_from_slice(&p.a1);
                    v.extend_from_slice(&p.a0);
                    f32s(format!("{}.poly", s.name), vec![3, s.shape.c], &v);
                }
            }
            _ => {}
        }
    }
    for s in net.sites() {
        blobs.push((
            format!("{}.mask", s.name),
            Dtype::U8,
            s.shape.dims(),
            s.mask.clone(),
        ));
    }
    let views: Vec<(String, TensorView<'_>)> = blobs
        .iter()
        .map(|(n, d, s, b)| {
            TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| ModelError::Format {
                    file: "<memory>".into(),
                    reason: format!("tensor {n}: {e}"),
                })
        })
        .collect::<Result<_>>()?;
    let json = serde_json::to_string(&header).map_err(|e| ModelError::Format {
        file: "<memory>".into(),
        reason: format!("header: {e}"),
    })?;
    let meta = Some(HashMap::from([(HEADER_KEY.to_string(), json)]));
    safetensors::serialize(views, &meta).map_err(|e| ModelError::Format {
        file: "<memory>".into(),
        reason: e.to_string(),
    })
}

fn bn_tensors(bn: &BatchNorm, f32s: &mut impl FnMut(String, Vec<usize>, &[f32])) {
    let c = bn.channels();
    f32s(format!("{}.weight", bn.name), vec![c], &bn.gamma);
    f32s(format!("{}.bias", bn.name), vec![c], &bn.beta);
    f32s(
        format!("{}.running_mean", bn.name),
        vec![c],
        &bn.running_mean,
    );
    f32s(format!("{}.running_var", bn.name), vec![c], &bn.running_var);
}

/// Writes a model file.
pub fn save(net: &Network, opts: &SaveOptions, path: &Path) -> Result<()> {
    let bytes = to_bytes(net, opts)?;
    std::fs::write(path, bytes).map_err(|source| ModelError::Io {
        file: path.display().to_string(),
        source,
    })
}

/// Reads a model file written by [`save`].
pub fn load(path: &Path) -> Result<LoadedModel> {
    let label = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        file: label.clone(),
        source,
    })?;
    from_bytes(&bytes, &label)
}

/// Parses model-file bytes; `label` names the source in errors.
pub fn from_bytes(bytes: &[u8], label: &str) -> Result<LoadedModel> {
    let st = parse(bytes, label)?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| ModelError::Format {
        file: label.into(),
        reason: e.to_string(),
    })?;
    let json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(HEADER_KEY))
        .ok_or_else(|| ModelError::Format {
            file: label.into(),
            reason: format!(
                "no `{HEADER_KEY}` header in the safetensors metadata (a PyTorch state dict? use import)"
            ),
        })?;
    let header: ModelHeader = serde_json::from_str(json).map_err(|e| ModelError::Format {
        file: label.into(),
        reason: format!("header JSON: {e}"),
    })?;
    if header.format != FORMAT {
        return Err(ModelError::Format {
            file: label.into(),
            reason: format!("format {:?}, expected {FORMAT:?}", header.format),
        });
    }
    header.fixed.validate()?;
    let mut net = header
        .arch
        .build(header.input, header.num_classes, Init::Zeros)?;
    fill(&mut net, &st, label, true)?;
    net.name = header.name.clone();
    let names: Vec<String> = net.sites().map(|s| s.name.clone()).collect();
    if names != header.sites {
        return Err(ModelError::Format {
            file: label.into(),
            reason: format!(
                "header lists {} sites that differ from the architecture's {} sites",
                header.sites.len(),
                names.len()
            ),
        });
    }
    let relus = relu_count(&net, header.convention);
    if relus != header.relus {
        return Err(ModelError::Format {
            file: label.into(),
            reason: format!("header says {} ReLUs, the masks hold {relus}", header.relus),
        });
    }
    net.validate()?;
    check_plan(&net, &header, label)?;
    Ok(LoadedModel {
        network: net,
        header,
    })
}

/// Recomputes the scale plan and checks the header's plan and bounds against it.
fn check_plan(net: &Network, header: &ModelHeader, label: &str) -> Result<()> {
    let refuse = |reason: String| ModelError::Format {
        file: label.into(),
        reason,
    };
    if header.plan.is_none() && header.bounds.is_none() {
        return Ok(());
    }
    let Some(stored) = &header.plan else {
        return Err(refuse(
            "the header has calibrated bounds but no scale plan they refer to".into(),
        ));
    };
    let enc = EncodedNetwork::new(net, header.fixed).map_err(|e| {
        refuse(format!(
            "the header stores a scale plan, but the network cannot be planned with {:?}: {e}",
            header.fixed
        ))
    })?;
    let plan = ScalePlan::of(net, &enc)?;
    if let Some(diff) = stored.first_difference(&plan) {
        return Err(refuse(format!(
            "the stored scale plan does not match the plan recomputed from the weights \
             (stored vs recomputed: {diff}); the file was edited or written by another version"
        )));
    }
    if let Some(b) = &header.bounds {
        b.check(&truncation_points(net, &enc)).map_err(|reason| {
            refuse(format!(
                "the calibrated bounds do not match the scale plan: {reason}; run `pibench calibrate` again"
            ))
        })?;
    }
    Ok(())
}

/// Imports a PyTorch state dict saved as safetensors for architecture `spec`.
pub fn import_state_dict(
    path: &Path,
    spec: &ArchSpec,
    input: FeatureShape,
    num_classes: usize,
) -> Result<Network> {
    let label = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        file: label.clone(),
        source,
    })?;
    import_state_dict_bytes(&bytes, &label, spec, input, num_classes)
}

/// [`import_state_dict`] from bytes.
pub fn import_state_dict_bytes(
    bytes: &[u8],
    label: &str,
    spec: &ArchSpec,
    input: FeatureShape,
    num_classes: usize,
) -> Result<Network> {
    let st = parse(bytes, label)?;
    let mut net = spec.build(input, num_classes, Init::Zeros)?;
    fill(&mut net, &st, label, false)?;
    net.validate()?;
    Ok(net)
}

fn parse<'a>(bytes: &'a [u8], label: &str) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes).map_err(|e| ModelError::Format {
        file: label.into(),
        reason: format!("not a valid safetensors file: {e}"),
    })
}

struct Reader<'a, 'b> {
    st: &'b SafeTensors<'a>,
    file: &'b str,
}

impl Reader<'_, '_> {
    fn get(&self, name: &str) -> Option<TensorView<'_>> {
        self.st.tensor(name).ok()
    }

    fn missing(&self, name: &str, expected: &[usize]) -> ModelError {
        ModelError::MissingTensor {
            file: self.file.into(),
            tensor: name.into(),
            expected: format!("float tensor of shape {expected:?}"),
        }
    }

    fn check_shape(&self, name: &str, view: &TensorView<'_>, expected: &[usize]) -> Result<()> {
        if view.shape() != expected {
            return Err(ModelError::TensorShape {
                file: self.file.into(),
                tensor: name.into(),
                found: view.shape().to_vec(),
                expected: expected.to_vec(),
            });
        }
        Ok(())
    }

    fn floats(&self, name: &str, view: &TensorView<'_>) -> Result<Vec<f32>> {
        let d = view.data();
        let bad = |reason: String| ModelError::TensorData {
            file: self.file.into(),
            tensor: name.into(),
            reason,
        };
        let n: usize = view.shape().iter().product();
        let width = match view.dtype() {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::U8 | Dtype::BOOL => 1,
            other => return Err(bad(format!("unsupported dtype {other:?}, expected F32"))),
        };
        if d.len() != n * width {
            return Err(bad(format!(
                "{} data bytes, expected {}",
                d.len(),
                n * width
            )));
        }
        let out: Vec<f32> = match view.dtype() {
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F64 => d
                .chunks_exact(8)
                .map(|c| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(c);
                    f64::from_le_bytes(a) as f32
                })
                .collect(),
            Dtype::F16 => d
                .chunks_exact(2)
                .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            Dtype::BF16 => d
                .chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                .collect(),
            _ => d.iter().map(|&b| b as f32).collect(),
        };
        if let Some(i) = out.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!("element {i} is not finite")));
        }
        Ok(out)
    }

    fn required(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let view = self.get(name).ok_or_else(|| self.missing(name, expected))?;
        self.check_shape(name, &view, expected)?;
        self.floats(name, &view)
    }

    /// A tensor under `name`, or under an alias prefix (`fc` ↔ `linear`).
    fn required_alias(
        &self,
        prefix: &str,
        suffix: &str,
        expected: &[usize],
        strict: bool,
    ) -> Result<Vec<f32>> {
        let name = format!("{prefix}.{suffix}");
        if strict || self.get(&name).is_some() {
            return self.required(&name, expected);
        }
        for alias in ["fc", "linear", "classifier"] {
            let other = format!("{alias}.{suffix}");
            if alias != prefix && self.get(&other).is_some() {
                return self.required(&other, expected);
            }
        }
        self.required(&name, expected)
    }

    fn bn(&self, bn: &mut BatchNorm) -> Result<()> {
        let c = [bn.channels()];
        bn.gamma = self.required(&format!("{}.weight", bn.name), &c)?;
        bn.beta = self.required(&format!("{}.bias", bn.name), &c)?;
        bn.running_mean = self.required(&format!("{}.running_mean", bn.name), &c)?;
        bn.running_var = self.required(&format!("{}.running_var", bn.name), &c)?;
        if let Some(i) = bn.running_var.iter().position(|&v| v < 0.0) {
            return Err(ModelError::TensorData {
                file: self.file.into(),
                tensor: format!("{}.running_var", bn.name),
                reason: format!("element {i} is negative"),
            });
        }
        Ok(())
    }
}

fn fill(net: &mut Network, st: &SafeTensors<'_>, file: &str, strict: bool) -> Result<()> {
    let r = Reader { st, file };
    for node in &mut net.nodes {
        match &mut node.op {
            Op::Conv2d(c) => {
                let name = format!("{}.weight", node.name);
                c.weight.data = r.required(&name, &c.weight.shape.clone())?;
                let bname = format!("{}.bias", node.name);
                if r.get(&bname).is_some() {
                    c.bias = Some(r.required(&bname, &[c.cout])?);
                } else if c.bias.is_some() {
                    return Err(r.missing(&bname, &[c.cout]));
                }
                if let Some(bn) = &mut c.bn {
                    r.bn(bn)?;
                }
            }
            Op::BatchNorm(bn) => r.bn(bn)?,
            Op::Linear(l) => {
                let shape = [l.out_features, l.in_features];
                l.weight.data = r.required_alias(&node.name, "weight", &shape, strict)?;
                l.bias = r.required_alias(&node.name, "bias", &[l.out_features], strict)?;
            }
            Op::Site(s) => {
                let mname = format!("{}.mask", s.name);
                let dims = s.shape.dims();
                match r.get(&mname) {
                    Some(view) => {
                        // PyTorch code often keeps a batch axis: accept [1, C, H, W].
                        let squeezed: Vec<usize> = {
                            let sh = view.shape();
                            let lead = sh.len().saturating_sub(3);
                            if sh[..lead].iter().all(|&d| d == 1) {
                                sh[lead..].to_vec()
                            } else {
                                sh.to_vec()
                            }
                        };
                        if squeezed != dims {
                            return Err(ModelError::Site {
                                site: s.name.clone(),
                                reason: format!(
                                    "{file}: mask tensor {mname:?} has shape {:?}, expected {dims:?}",
                                    view.shape()
                                ),
                            });
                        }
                        let vals = r.floats(&mname, &view)?;
                        let mut mask = Vec::with_capacity(vals.len());
                        for (i, v) in vals.iter().enumerate() {
                            mask.push(match *v {
                                0.0 => 0,
                                1.0 => 1,
                                other => {
                                    return Err(ModelError::Site {
                                        site: s.name.clone(),
                                        reason: format!(
                                            "{file}: mask element {i} is {other}, expected 0 or 1"
                                        ),
                                    })
                                }
                            });
                        }
                        s.mask = mask;
                    }
                    None if strict => return Err(r.missing(&mname, &dims)),
                    None => s.fill_mask(1),
                }
                let pname = format!("{}.poly", s.name);
                s.poly = match r.get(&pname) {
                    Some(_) => {
                        let c = s.shape.c;
                        let v = r.required(&pname, &[3, c])?;
                        Some(PolyCoeffs {
                            a2: v[..c].to_vec(),
                            a1: v[c..2 * c].to_vec(),
                            a0: v[2 * c..].to_vec(),
                        })
                    }
                    None => None,
                };
            }
            _ => {}
        }
    }
    Ok(())
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) & 1) as u32;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign << 31,
        (0, f) => {
            // Subnormal: renormalise.
            let mut e: i32 = -14;
            let mut m = f;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            m &= 0x3ff;
            (sign << 31) | (((e + 127) as u32) << 23) | (m << 13)
        }
        (31, 0) => (sign << 31) | 0x7f80_0000,
        (31, f) => (sign << 31) | 0x7f80_0000 | (f << 13),
        (e, f) => (sign << 31) | ((e + 112) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}
