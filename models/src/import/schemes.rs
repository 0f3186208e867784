//! The naming schemes of the published pruning code, mapped onto
//! [`crate::arch`] networks.
//!
//! All schemes share the weight names of [`crate::arch`] (kuangliu-style
//! ResNets with `conv1`/`bn1`/`layerS.B.*`/`shortcut.{0,1}`/`linear`,
//! xternalz-style WRNs with `blockS.layer.B.*`/`convShortcut`/`bn1`/`fc`);
//! what differs is where the ReLU masks live and which ReLUs the source
//! architecture has at all:
//!
//! * **SNL** (Cho et al. 2022, `archs_unstructured/cifar_resnet.py`): the
//!   mask of site `P.reluK` is the `LearnableAlpha` parameter
//!   `P.alphaK.alphas` `[1, C, H, W]` (after fine-tuning thresholded to 0/1);
//!   `ResNet_IN` has no ReLU after the stem and `WideResNet` none after its
//!   final `bn1`, so those sites import as the identity. The file is
//!   SNL's `{'arch', 'state_dict', 'optimizer'}`; a bare state dict is accepted.
//! * **AutoReP** (Peng et al. 2023, `models_util/model_spReLU_relay.py`): one
//!   `ReLU_masked_*_relay` module replaces every `nn.ReLU` of `model.*` and
//!   numbers the ReLUs it is called for in call order: feature `i` holds the
//!   binary indicator `alpha_mask_{i}_{s}` (mask set `s`, default 0), the
//!   auxiliary `alpha_aux_{i}_{s}` and, for DaPa/autopoly, the channel-wise
//!   coefficients `poly_para_{i}_{k}` `[1, C, 1, 1]` of
//!   `scale_x2·p2·x² + p1·x + p0` (degree 2) or `scale_x1·p1·x + p0`
//!   (degree 1). `scale_x1`/`scale_x2` are command-line values of AutoReP
//!   (defaults 1.0 and 0.1 in its `config.py`) that the checkpoint does not
//!   record, hence [`ImportOptions::autorep_scale_x1`]/`_x2`. Its
//!   `resnet*_in` has no stem ReLU and its WRN no final ReLU, so feature `i`
//!   is the `i`-th body site. The shared module appears under every path it
//!   was registered at; copies must agree. The DaPa statistics
//!   (`bn_{i}.*`), `itr_cnt` and the auxiliary parameters carry no inference
//!   information and are skipped.
//! * **ReLUPruner** (`relupruner/checkpoints.py`): `{'model': state_dict,
//!   'masks': [mask, …], 'relu_count': n, …}` (legacy key `mask_epoch`);
//!   masks are `[C, H, W]` in activation order — every body site and, for
//!   WRNs, the final BN-ReLU; its prunable ResNet has no stem ReLU. Its
//!   shortcut is named `conv_sc`/`bn_sc`. `relu_count` must equal the masks' sum.
//! * **Plain**: an ordinary all-ReLU state dict with the architecture's
//!   names (e.g. a PyTorch teacher); `<site>.mask` tensors are used where
//!   present, otherwise every site keeps its ReLU.
//!
//! Tensors that map to nothing are an error naming them unless
//! [`ImportOptions::ignore_unknown`]; a body site without a mask is an error.
//! The imported network counts every kept ReLU (the header's convention
//! counts stem and final sites: their masks are explicit here).

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::arch::ArchSpec;
use crate::count::Convention;
use crate::graph::{BatchNorm, FeatureShape, Init, Network, Op, PolyCoeffs, SiteRole};

use super::pth::{Checkpoint, PyValue, TensorData};
use super::ImportError;

/// Which published code wrote the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// An all-ReLU state dict with this crate's names.
    Plain,
    /// Selective Network Linearization.
    Snl,
    /// AutoReP.
    Autorep,
    /// ReLUPruner.
    Relupruner,
}

impl Scheme {
    /// Parses `plain`, `snl`, `autorep`, `relupruner`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "plain" | "pytorch" => Self::Plain,
            "snl" => Self::Snl,
            "autorep" => Self::Autorep,
            "relupruner" => Self::Relupruner,
            _ => return None,
        })
    }

    /// Name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Snl => "snl",
            Self::Autorep => "autorep",
            Self::Relupruner => "relupruner",
        }
    }
}

/// How to import.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportOptions {
    /// The naming scheme.
    pub scheme: Scheme,
    /// Import even when tensors map to nothing (they are listed in [`Imported::unknown`]).
    pub ignore_unknown: bool,
    /// SNL: binarise `α > t`; `None` requires every α to be exactly 0 or 1
    /// (as SNL's fine-tuned checkpoints are).
    pub snl_threshold: Option<f32>,
    /// AutoReP: `scale_x1` of its degree-1 polynomial (its default 1.0).
    pub autorep_scale_x1: f32,
    /// AutoReP: `scale_x2` of its degree-2 polynomial (its default 0.1).
    pub autorep_scale_x2: f32,
    /// AutoReP: which mask set (`sel_mask`) to import.
    pub autorep_mask_set: usize,
}

impl ImportOptions {
    /// Defaults for a scheme.
    pub fn new(scheme: Scheme) -> Self {
        Self {
            scheme,
            ignore_unknown: false,
            snl_threshold: None,
            autorep_scale_x1: 1.0,
            autorep_scale_x2: 0.1,
            autorep_mask_set: 0,
        }
    }
}

/// The result of an import.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The network with weights, masks and polynomial coefficients.
    pub network: Network,
    /// The counting convention the masks are meant with (every kept ReLU).
    pub convention: Convention,
    /// Tensors skipped on purpose (BN batch counters, AutoReP's auxiliary state).
    pub skipped: Vec<String>,
    /// Tensors that mapped to nothing, imported anyway with `ignore_unknown`.
    pub unknown: Vec<String>,
}

fn flatten(
    prefix: &str,
    v: &PyValue,
    out: &mut Vec<(String, TensorData)>,
    file: &str,
) -> Result<(), ImportError> {
    match v {
        PyValue::Tensor(t) => out.push((prefix.to_string(), t.clone())),
        PyValue::Dict(items) => {
            for (k, x) in items {
                let key = match k {
                    PyValue::Str(s) => s.clone(),
                    PyValue::Int(i) => i.to_string(),
                    other => {
                        return Err(ImportError::Layout {
                            file: file.into(),
                            reason: format!(
                                "dict key of type {} under {prefix:?}",
                                other.type_name()
                            ),
                        })
                    }
                };
                let name = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&name, x, out, file)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Finds the state dict: `state_dict`, `model`, `net` or `model_state_dict`
/// when present as a dict, else the root dict itself. Returns it and the
/// root's own tensors outside it.
fn state_dict(ckpt: &Checkpoint) -> Result<(&PyValue, Vec<String>), ImportError> {
    let PyValue::Dict(items) = &ckpt.root else {
        return Err(ImportError::Layout {
            file: ckpt.label.clone(),
            reason: format!(
                "the checkpoint holds a {}, expected a dict",
                ckpt.root.type_name()
            ),
        });
    };
    for key in ["state_dict", "model", "net", "model_state_dict"] {
        if let Some(v @ PyValue::Dict(_)) = ckpt.root.get(key) {
            let stray = items
                .iter()
                .filter_map(|(k, x)| match (k, x) {
                    (PyValue::Str(s), PyValue::Tensor(_)) => Some(s.clone()),
                    _ => None,
                })
                .collect();
            return Ok((v, stray));
        }
    }
    Ok((&ckpt.root, Vec::new()))
}

fn strip_common_prefix(tensors: &mut [(String, TensorData)], prefix: &str) {
    if !tensors.is_empty() && tensors.iter().all(|(n, _)| n.starts_with(prefix)) {
        for (n, _) in tensors.iter_mut() {
            *n = n[prefix.len()..].to_string();
        }
    }
}

struct Pool<'a> {
    file: &'a str,
    tensors: HashMap<String, TensorData>,
    used: HashSet<String>,
}

impl Pool<'_> {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ImportError> {
        let t = self.tensors.get(name).ok_or_else(|| ImportError::Weights {
            file: self.file.into(),
            reason: format!("missing tensor {name:?} (expected shape {shape:?})"),
        })?;
        let squeezed = squeeze_to(&t.shape, shape);
        if !squeezed {
            return Err(ImportError::Weights {
                file: self.file.into(),
                reason: format!(
                    "tensor {name:?} has shape {:?}, expected {shape:?}",
                    t.shape
                ),
            });
        }
        if !t.kind.is_float() {
            return Err(ImportError::Weights {
                file: self.file.into(),
                reason: format!("tensor {name:?} is {:?}, expected floating point", t.kind),
            });
        }
        if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
            return Err(ImportError::Weights {
                file: self.file.into(),
                reason: format!("tensor {name:?} element {i} is not finite"),
            });
        }
        self.used.insert(name.to_string());
        Ok(t.data.clone())
    }

    fn bn(&mut self, bn: &mut BatchNorm) -> Result<(), ImportError> {
        let c = [bn.channels()];
        bn.gamma = self.take(&format!("{}.weight", bn.name), &c)?;
        bn.beta = self.take(&format!("{}.bias", bn.name), &c)?;
        bn.running_mean = self.take(&format!("{}.running_mean", bn.name), &c)?;
        bn.running_var = self.take(&format!("{}.running_var", bn.name), &c)?;
        if let Some(i) = bn.running_var.iter().position(|&v| v < 0.0) {
            return Err(ImportError::Weights {
                file: self.file.into(),
                reason: format!("{}.running_var element {i} is negative", bn.name),
            });
        }
        let counter = format!("{}.num_batches_tracked", bn.name);
        if self.tensors.contains_key(&counter) {
            self.used.insert(counter);
        }
        Ok(())
    }

    fn mask(
        &mut self,
        name: &str,
        site: &str,
        dims: &[usize],
        threshold: Option<f32>,
    ) -> Result<Vec<u8>, ImportError> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| ImportError::MissingMask {
                file: self.file.into(),
                site: site.into(),
                expected: format!("tensor {name:?} of shape {dims:?}"),
            })?;
        let m = to_mask(t, name, site, dims, threshold, self.file)?;
        self.used.insert(name.to_string());
        Ok(m)
    }
}

/// Whether `found` equals `expected` after dropping leading 1-sized axes of
/// either (`[1, C, H, W]` for `[C, H, W]`, `[C]` for `[1, C, 1, 1]` is not allowed).
fn squeeze_to(found: &[usize], expected: &[usize]) -> bool {
    let f: Vec<usize> = {
        let lead = found
            .iter()
            .take_while(|&&d| d == 1)
            .count()
            .min(found.len().saturating_sub(expected.len()));
        found[lead..].to_vec()
    };
    f == expected
}

fn to_mask(
    t: &TensorData,
    name: &str,
    site: &str,
    dims: &[usize],
    threshold: Option<f32>,
    file: &str,
) -> Result<Vec<u8>, ImportError> {
    if !squeeze_to(&t.shape, dims) {
        return Err(ImportError::Tensor {
            file: file.into(),
            tensor: name.into(),
            reason: format!(
                "mask of site {site} has shape {:?}, expected {dims:?}",
                t.shape
            ),
        });
    }
    t.data
        .iter()
        .enumerate()
        .map(|(i, &v)| match threshold {
            Some(th) if v.is_finite() => Ok(u8::from(v > th)),
            _ if v == 0.0 => Ok(0),
            _ if v == 1.0 => Ok(1),
            _ => Err(ImportError::Tensor {
                file: file.into(),
                tensor: name.into(),
                reason: format!(
                    "mask element {i} of site {site} is {v}, expected 0 or 1{}",
                    if threshold.is_none() {
                        " (an unthresholded SNL α? pass a threshold)"
                    } else {
                        ""
                    }
                ),
            }),
        })
        .collect()
}

/// Parses `…alpha_mask_{i}_{s}` style suffixes: returns `(path, i, s)`.
fn autorep_index(name: &str, what: &str) -> Option<(String, usize, usize)> {
    let (path, last) = match name.rsplit_once('.') {
        Some((p, l)) => (p.to_string(), l),
        None => (String::new(), name),
    };
    let rest = last.strip_prefix(what)?.strip_prefix('_')?;
    let (i, s) = rest.split_once('_')?;
    Some((path, i.parse().ok()?, s.parse().ok()?))
}

/// Imports `ckpt` as architecture `spec` with input `input` and `num_classes` logits.
pub fn import_checkpoint(
    ckpt: &Checkpoint,
    spec: &ArchSpec,
    input: FeatureShape,
    num_classes: usize,
    opts: &ImportOptions,
) -> Result<Imported, ImportError> {
    let file = ckpt.label.as_str();
    let (state, stray) = state_dict(ckpt)?;
    let mut tensors = Vec::new();
    flatten("", state, &mut tensors, file)?;
    strip_common_prefix(&mut tensors, "module.");
    if opts.scheme == Scheme::Autorep {
        strip_common_prefix(&mut tensors, "model.");
    }
    if opts.scheme == Scheme::Relupruner {
        for (n, _) in tensors.iter_mut() {
            if let Some((p, rest)) = n.split_once(".conv_sc.") {
                *n = format!("{p}.shortcut.0.{rest}");
            } else if let Some((p, rest)) = n.split_once(".bn_sc.") {
                *n = format!("{p}.shortcut.1.{rest}");
            }
        }
    }
    let mut net = spec.build(input, num_classes, Init::Zeros)?;
    let mut pool = Pool {
        file,
        tensors: HashMap::new(),
        used: HashSet::new(),
    };
    for (n, t) in tensors {
        if pool.tensors.insert(n.clone(), t).is_some() {
            return Err(ImportError::Layout {
                file: file.into(),
                reason: format!("tensor {n:?} appears twice"),
            });
        }
    }
    let mut skipped: Vec<String> = Vec::new();

    // Weights, in node order.
    let classifier_alias = |pool: &Pool<'_>, name: &str| -> String {
        if pool.tensors.contains_key(&format!("{name}.weight")) {
            return name.to_string();
        }
        for alias in ["linear", "fc", "classifier"] {
            if pool.tensors.contains_key(&format!("{alias}.weight")) {
                return alias.to_string();
            }
        }
        name.to_string()
    };
    for node in &mut net.nodes {
        match &mut node.op {
            Op::Conv2d(c) => {
                let shape = c.weight.shape.clone();
                c.weight.data = pool.take(&format!("{}.weight", node.name), &shape)?;
                let bname = format!("{}.bias", node.name);
                if c.bias.is_some() || pool.tensors.contains_key(&bname) {
                    c.bias = Some(pool.take(&bname, &[c.cout])?);
                }
                if let Some(bn) = &mut c.bn {
                    pool.bn(bn)?;
                }
            }
            Op::BatchNorm(bn) => pool.bn(bn)?,
            Op::Linear(l) => {
                let name = classifier_alias(&pool, &node.name);
                l.weight.data =
                    pool.take(&format!("{name}.weight"), &[l.out_features, l.in_features])?;
                l.bias = pool.take(&format!("{name}.bias"), &[l.out_features])?;
            }
            _ => {}
        }
    }

    // Masks and polynomial coefficients.
    let site_info: Vec<(String, SiteRole, Vec<usize>, usize)> = net
        .sites()
        .map(|s| (s.name.clone(), s.role, s.shape.dims(), s.shape.c))
        .collect();
    let mut masks: Vec<Vec<u8>> = Vec::with_capacity(site_info.len());
    let mut polys: Vec<Option<PolyCoeffs>> = vec![None; site_info.len()];
    match opts.scheme {
        Scheme::Plain => {
            for (name, _, dims, _) in &site_info {
                let mname = format!("{name}.mask");
                if pool.tensors.contains_key(&mname) {
                    masks.push(pool.mask(&mname, name, dims, None)?);
                } else {
                    masks.push(vec![1; dims.iter().product()]);
                }
            }
        }
        Scheme::Snl => {
            for (name, role, dims, _) in &site_info {
                let n: usize = dims.iter().product();
                if *role != SiteRole::Body {
                    masks.push(vec![0; n]);
                    continue;
                }
                let tensor = match name.rsplit_once(".relu") {
                    Some((p, k)) if k.parse::<usize>().is_ok() => format!("{p}.alpha{k}.alphas"),
                    _ => format!("{name}.alphas"),
                };
                masks.push(pool.mask(&tensor, name, dims, opts.snl_threshold)?);
            }
        }
        Scheme::Autorep => {
            // Features by index; each may appear under several module paths.
            let mut feat_mask: BTreeMap<usize, String> = BTreeMap::new();
            let mut feat_poly: BTreeMap<(usize, usize), String> = BTreeMap::new();
            let names: Vec<String> = pool.tensors.keys().cloned().collect();
            let mut names_sorted = names.clone();
            names_sorted.sort();
            for n in &names_sorted {
                if let Some((_, i, s)) = autorep_index(n, "alpha_mask") {
                    if s == opts.autorep_mask_set {
                        match feat_mask.get(&i) {
                            Some(first) => {
                                if pool.tensors[first] != pool.tensors[n] {
                                    return Err(ImportError::Layout {
                                        file: file.into(),
                                        reason: format!("{n:?} differs from {first:?} (the same AutoReP feature)"),
                                    });
                                }
                                pool.used.insert(n.clone());
                                skipped.push(n.clone());
                            }
                            None => {
                                feat_mask.insert(i, n.clone());
                            }
                        }
                    } else {
                        pool.used.insert(n.clone());
                        skipped.push(n.clone());
                    }
                } else if let Some((_, i, k)) = autorep_index(n, "poly_para") {
                    match feat_poly.get(&(i, k)) {
                        Some(first) => {
                            if pool.tensors[first] != pool.tensors[n] {
                                return Err(ImportError::Layout {
                                    file: file.into(),
                                    reason: format!(
                                        "{n:?} differs from {first:?} (the same AutoReP feature)"
                                    ),
                                });
                            }
                            pool.used.insert(n.clone());
                            skipped.push(n.clone());
                        }
                        None => {
                            feat_poly.insert((i, k), n.clone());
                        }
                    }
                } else if autorep_index(n, "alpha_aux").is_some()
                    || n.ends_with(".itr_cnt")
                    || n == "itr_cnt"
                    || is_dapa_bn(n)
                {
                    pool.used.insert(n.clone());
                    skipped.push(n.clone());
                }
            }
            let degree = feat_poly.keys().map(|&(_, k)| k).max();
            let mut feature = 0usize;
            for (si, (name, role, dims, c)) in site_info.iter().enumerate() {
                let n: usize = dims.iter().product();
                if *role != SiteRole::Body {
                    masks.push(vec![0; n]);
                    continue;
                }
                let tname =
                    feat_mask
                        .get(&feature)
                        .cloned()
                        .ok_or_else(|| ImportError::MissingMask {
                            file: file.into(),
                            site: name.clone(),
                            expected: format!(
                                "AutoReP feature {feature}: alpha_mask_{feature}_{}",
                                opts.autorep_mask_set
                            ),
                        })?;
                masks.push(pool.mask(&tname, name, dims, None)?);
                if let Some(deg) = degree {
                    let mut coeff = |k: usize| -> Result<Vec<f32>, ImportError> {
                        let pname = feat_poly.get(&(feature, k)).cloned().ok_or_else(|| ImportError::Weights {
                            file: file.into(),
                            reason: format!("AutoReP feature {feature} (site {name}) lacks poly_para_{feature}_{k}"),
                        })?;
                        let t = &pool.tensors[&pname];
                        if t.data.len() != *c
                            || !(t.shape == [1, *c, 1, 1] || t.shape == [1, *c] || t.shape == [*c])
                        {
                            return Err(ImportError::Weights {
                                file: file.into(),
                                reason: format!(
                                    "{pname:?} has shape {:?}, expected [1, {c}, 1, 1]",
                                    t.shape
                                ),
                            });
                        }
                        if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
                            return Err(ImportError::Weights {
                                file: file.into(),
                                reason: format!("{pname:?} element {i} is not finite"),
                            });
                        }
                        let v = t.data.clone();
                        pool.used.insert(pname);
                        Ok(v)
                    };
                    let p0 = coeff(0)?;
                    let p1 = coeff(1)?;
                    let (a2, a1) = if deg >= 2 {
                        let p2 = coeff(2)?;
                        (p2.iter().map(|v| v * opts.autorep_scale_x2).collect(), p1)
                    } else {
                        (
                            vec![0.0; *c],
                            p1.iter().map(|v| v * opts.autorep_scale_x1).collect(),
                        )
                    };
                    if deg > 2 {
                        return Err(ImportError::Weights {
                            file: file.into(),
                            reason: format!("AutoReP polynomial of degree {deg}: only degree 1 and 2 are supported"),
                        });
                    }
                    polys[si] = Some(PolyCoeffs { a2, a1, a0: p0 });
                }
                feature += 1;
            }
            if let Some((&extra, tname)) = feat_mask.range(feature..).next() {
                return Err(ImportError::Layout {
                    file: file.into(),
                    reason: format!(
                        "AutoReP feature {extra} ({tname:?}) has no site: {} has {feature} body sites",
                        spec.name()
                    ),
                });
            }
        }
        Scheme::Relupruner => {
            let list: Vec<TensorData> = match ckpt
                .root
                .get("masks")
                .or_else(|| ckpt.root.get("mask_epoch"))
            {
                Some(PyValue::List(v)) | Some(PyValue::Tuple(v)) => v
                    .iter()
                    .map(|x| match x {
                        PyValue::Tensor(t) => Ok(t.clone()),
                        other => Err(ImportError::Layout {
                            file: file.into(),
                            reason: format!(
                                "'masks' holds a {}, expected tensors",
                                other.type_name()
                            ),
                        }),
                    })
                    .collect::<Result<_, _>>()?,
                Some(PyValue::Dict(items)) => {
                    let mut v: Vec<(i64, TensorData)> = Vec::new();
                    for (k, x) in items {
                        match (k, x) {
                            (PyValue::Int(i), PyValue::Tensor(t)) => v.push((*i, t.clone())),
                            _ => {
                                return Err(ImportError::Layout {
                                    file: file.into(),
                                    reason: "'masks' dict must map int → tensor".into(),
                                })
                            }
                        }
                    }
                    v.sort_by_key(|(i, _)| *i);
                    v.into_iter().map(|(_, t)| t).collect()
                }
                Some(other) => {
                    return Err(ImportError::Layout {
                        file: file.into(),
                        reason: format!(
                            "'masks' is a {}, expected a list of tensors",
                            other.type_name()
                        ),
                    })
                }
                None => {
                    let first = site_info.iter().find(|s| s.1 != SiteRole::Stem);
                    return Err(ImportError::MissingMask {
                        file: file.into(),
                        site: first.map_or_else(|| "?".into(), |s| s.0.clone()),
                        expected: "a 'masks' list (or legacy 'mask_epoch') in the checkpoint"
                            .into(),
                    });
                }
            };
            let mut next = 0usize;
            for (name, role, dims, _) in &site_info {
                let n: usize = dims.iter().product();
                if *role == SiteRole::Stem {
                    masks.push(vec![0; n]);
                    continue;
                }
                let t = list.get(next).ok_or_else(|| ImportError::MissingMask {
                    file: file.into(),
                    site: name.clone(),
                    expected: format!("masks[{next}] (the checkpoint has {} masks)", list.len()),
                })?;
                masks.push(to_mask(
                    t,
                    &format!("masks[{next}]"),
                    name,
                    dims,
                    None,
                    file,
                )?);
                next += 1;
            }
            if next != list.len() {
                return Err(ImportError::Layout {
                    file: file.into(),
                    reason: format!(
                        "the checkpoint has {} masks, {} has {next} maskable sites",
                        list.len(),
                        spec.name()
                    ),
                });
            }
            if let Some(PyValue::Int(rc)) = ckpt.root.get("relu_count") {
                let sum: u64 = masks.iter().flatten().map(|&m| m as u64).sum();
                if *rc < 0 || *rc as u64 != sum {
                    return Err(ImportError::Layout {
                        file: file.into(),
                        reason: format!("relu_count is {rc}, the masks hold {sum} ReLUs"),
                    });
                }
            }
        }
    }
    for ((site, mask), poly) in net.sites_mut().zip(masks).zip(polys) {
        site.mask = mask;
        site.poly = poly;
    }

    // Whatever was not used.
    let mut unknown: Vec<String> = stray;
    let mut rest: Vec<String> = pool
        .tensors
        .keys()
        .filter(|n| !pool.used.contains(*n))
        .cloned()
        .collect();
    rest.sort();
    unknown.extend(rest);
    if !unknown.is_empty() && !opts.ignore_unknown {
        return Err(ImportError::Unknown {
            file: file.into(),
            arch: spec.name().to_string(),
            tensors: unknown,
        });
    }
    net.validate()?;
    skipped.sort();
    Ok(Imported {
        network: net,
        convention: Convention {
            stem_relu: true,
            final_relu: true,
        },
        skipped,
        unknown,
    })
}

/// AutoReP's DaPa statistics: `….bn_{i}.running_mean` etc.
fn is_dapa_bn(name: &str) -> bool {
    let parts: Vec<&str> = name.rsplitn(3, '.').collect();
    match parts.as_slice() {
        [leaf, bn, ..] => {
            matches!(
                *leaf,
                "running_mean" | "running_var" | "num_batches_tracked"
            ) && bn
                .strip_prefix("bn_")
                .is_some_and(|i| i.parse::<usize>().is_ok())
        }
        _ => false,
    }
}
