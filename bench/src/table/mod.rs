//! The seeds' latency tables as configs: `configs/tables/*.toml` → networks.
//!
//! [`TableConfig::load`] reads and validates one config (see
//! `configs/tables/README.md` for the schema); [`Row::build_network`] turns a
//! supported row into the `pibench_models` network the two-party runner
//! executes, with the paper's cells and setting beside it ([`BuiltRow`]).
//!
//! How a row becomes a network, in this order:
//! 1. the architecture (`arch`, with a `blocks` override and DeepReDuce's
//!    channel scaling α applied to the spec) is built for the dataset's input,
//!    scaled by DeepReDuce's feature-map factor ρ (`models::arch::deepreduce`);
//! 2. sites the table's networks do not have at all (`[counting]`: the stem
//!    ReLU, the WRN final BN-ReLU) become the identity (mask 0);
//! 3. culled stages lose all ReLUs, thinned stages the `relu2` of every block
//!    (`models::arch::deepreduce::{cull_stage, thin_stage}`);
//! 4. the mask: `structural` keeps every remaining ReLU; `random` draws
//!    exactly N ReLUs over the existing sites in proportion to their size
//!    (`models::mask::random_relu_mask`); `model = FILE` loads a file written
//!    by `pibench prune` and uses its masks and weights as they are;
//! 5. `replacement = "dapa2"` (AutoReP rows) gives every existing site with
//!    replaced elements AutoReP's channel-wise degree-2 polynomial.
//!
//! The table runner (`pibench table`, `bench/src/cmd/table.rs`) builds on
//! this module: [`measure`] runs a row's network through `pibench run`,
//! [`results`] keeps and writes the measured table, [`plot`] draws it. The
//! test `bench/tests/table_configs.rs` compiles this module on its own, so
//! nothing here refers to `crate::cmd`.
#![allow(dead_code)]

pub mod config;
pub mod measure;
pub mod plot;
pub mod results;

use std::path::Path;

use pibench_models::arch::deepreduce::{cull_stage, scale_fmap, thin_stage};
use pibench_models::arch::{ArchSpec, Dataset};
use pibench_models::count::{count, relu_count, Convention};
use pibench_models::file;
use pibench_models::graph::{FeatureShape, Init, Network, PolyCoeffs, SiteRole};
use pibench_models::mask::random_relu_mask;

#[allow(unused_imports)] // the API the table runner builds on
pub use config::{
    Column, Counting, MaskSource, NetworkSpec, PaperCell, Replacement, Result, Row, Setting,
    TableConfig, TableError, TableInfo, Unit,
};

/// Largest model file a row may point at (bytes).
pub const MAX_MODEL_BYTES: u64 = 2 << 30;
/// Largest network a config row may build: weights (f32 values).
pub const MAX_WEIGHTS: u128 = 1 << 28;
/// Largest network a config row may build: elements of one activation site.
pub const MAX_SITE_ELEMENTS: u128 = 1 << 26;

/// Every site counted: the number of ReLUs a network actually evaluates.
pub const ALL_SITES: Convention = Convention {
    stem_relu: true,
    final_relu: true,
};

/// A row ready to run: the network, the paper's cells and setting.
#[derive(Debug, Clone)]
pub struct BuiltRow {
    /// Table id (e.g. `deepreduce-t4`).
    pub table_id: String,
    /// Row id, unique within the table.
    pub row_id: String,
    /// Human-readable label (method and the paper's ReLU count).
    pub label: String,
    /// Method as printed by the paper.
    pub method: String,
    /// Printed row shared with other rows (comparison tables), if any.
    pub group: Option<String>,
    /// `sota` or `ours` in comparison tables.
    pub side: Option<String>,
    /// The network with seeded random weights (or a model file's weights).
    pub network: Network,
    /// Dataset (input shape, classes).
    pub dataset: Dataset,
    /// ReLUs the network evaluates (mask-1 elements of every site).
    pub relus: u64,
    /// Multiply-accumulates of the network's linear layers.
    pub flops: u64,
    /// The table's counting convention (which sites exist).
    pub convention: Convention,
    /// Where the mask comes from, in words (for the output).
    pub mask_source: String,
    /// The paper's cells, in column order, with labels and units.
    pub paper: Vec<PaperCell>,
    /// The setting the paper's numbers come from.
    pub setting: Setting,
    /// A key equal for rows that build the same network (for de-duplication).
    pub network_key: String,
}

impl BuiltRow {
    /// The paper's cell for a column key.
    pub fn cell(&self, key: &str) -> Option<&PaperCell> {
        self.paper.iter().find(|c| c.key == key)
    }
}

/// AutoReP's DaPa degree-2 coefficients (Eq. 13) for an input `N(0, σ²)`:
/// `c2 = 1/(2√(2π)σ)`, `c1 = 1/2`, `c0 = σ/(2√(2π))` (with μ = 0 the erfc
/// terms of Eq. 13 reduce to ½). AutoReP takes μ and σ per channel from the
/// trained network's batch-norm statistics; a table row has random weights,
/// so every channel gets σ = 1, μ = 0 — an assumption that changes the values
/// of the polynomial, not what the protocol computes or its cost.
pub fn dapa2_coefficients(sigma: f64) -> (f64, f64, f64) {
    let k = 1.0 / (2.0 * (2.0 * std::f64::consts::PI).sqrt());
    (k / sigma, 0.5, k * sigma)
}

fn estimate_limits(arch: &ArchSpec, input: FeatureShape) -> std::result::Result<(), String> {
    let (weights, site) = arch.size_estimate(input, 0);
    if weights > MAX_WEIGHTS {
        return Err(format!(
            "{} would have about {weights} weights (limit {MAX_WEIGHTS})",
            arch.name()
        ));
    }
    if site > MAX_SITE_ELEMENTS {
        return Err(format!(
            "{} would have {site} elements in one activation site (limit {MAX_SITE_ELEMENTS})",
            arch.name()
        ));
    }
    Ok(())
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn stage_list(stages: &[usize]) -> String {
    stages
        .iter()
        .map(|&k| {
            if k == 0 {
                "stem".to_string()
            } else {
                format!("S{k}")
            }
        })
        .collect::<Vec<_>>()
        .join("+")
}

impl Row {
    fn spec(&self) -> Result<&NetworkSpec> {
        self.network
            .as_ref()
            .map_err(|reason| TableError::NotSupported {
                file: self.file.clone(),
                row: self.id.clone(),
                reason: reason.clone(),
            })
    }

    fn model_err(&self, source: pibench_models::ModelError) -> TableError {
        TableError::Model {
            file: self.file.clone(),
            row: self.id.clone(),
            source: Box::new(source),
        }
    }

    /// A key equal for rows that build the same network (same seed), so a
    /// runner measures a network once when a comparison table repeats it.
    pub fn network_key(&self) -> Option<String> {
        let s = self.network.as_ref().ok()?;
        let mask = match &s.mask {
            MaskSource::Structural => "structural".to_string(),
            MaskSource::Random { relus } => format!("random:{relus}"),
            MaskSource::Model { path } => format!("model:{}", path.display()),
        };
        Some(format!(
            "{}|{}|b{:?}|a{:?}|r{:?}|cull{:?}|thin{:?}|{mask}|{:?}|stem{}|final{}",
            s.dataset.name(),
            s.arch.as_ref().map_or("-", |a| a.name()),
            s.blocks,
            s.alpha,
            s.rho,
            s.cull,
            s.thin,
            s.replacement,
            self.counting.stem_relu,
            self.counting.final_relu,
        ))
    }

    /// Builds the row's network with seeded random weights ([`Init::Seeded`])
    /// and, for `mask = "random"`, a mask drawn from the same seed.
    pub fn build_network(&self, seed: u64) -> Result<BuiltRow> {
        self.build_network_with(Init::Seeded(seed), seed)
    }

    /// As [`Row::build_network`], with the weight initialisation chosen
    /// (`Init::Zeros` when only the structure matters, e.g. in tests).
    pub fn build_network_with(&self, init: Init, mask_seed: u64) -> Result<BuiltRow> {
        let spec = self.spec()?;
        let convention = self.counting.convention();
        let (network, mask_source) = match &spec.mask {
            MaskSource::Model { path } => self.load_model(spec, path)?,
            _ => self.build_arch(spec, init, mask_seed)?,
        };
        let relus = relu_count(&network, ALL_SITES);
        if !matches!(spec.mask, MaskSource::Model { .. }) {
            let counted = relu_count(&network, convention);
            if counted != relus {
                return Err(self.row_err(
                    "counting",
                    format!(
                        "{relus} ReLUs evaluated but {counted} counted: a site the table says does \
                         not exist still has ReLUs"
                    ),
                ));
            }
        }
        let flops = count(&network, convention).flops;
        Ok(BuiltRow {
            table_id: self.table_id.clone(),
            row_id: self.id.clone(),
            label: self.label.clone(),
            method: self.method.clone(),
            group: self.group.clone(),
            side: self.side.clone(),
            network,
            dataset: spec.dataset,
            relus,
            flops,
            convention,
            mask_source,
            paper: self.paper.clone(),
            setting: self.setting.clone(),
            network_key: self.network_key().unwrap_or_default(),
        })
    }

    /// The all-ReLU network of the row's architecture (same blocks, α, ρ and
    /// existing sites, no culling, thinning or mask): the reference of
    /// PrivShap's "communication saving" ratio (AR model / PR model).
    pub fn build_all_relu_network(&self, init: Init) -> Result<Network> {
        let spec = self.spec()?;
        let Some(arch) = &spec.arch else {
            return Err(self.row_err(
                "arch",
                "a model-file row needs `arch` to build its all-ReLU reference",
            ));
        };
        let mut net = self.instantiate(spec, arch, init)?;
        self.remove_absent_sites(&mut net);
        Ok(net)
    }

    fn instantiate(&self, spec: &NetworkSpec, arch: &ArchSpec, init: Init) -> Result<Network> {
        let mut input = spec.dataset.input();
        if let Some(rho) = spec.rho {
            input = scale_fmap(input, rho).map_err(|e| self.model_err(e))?;
        }
        estimate_limits(arch, input).map_err(|r| self.row_err("arch", r))?;
        arch.build(input, spec.dataset.num_classes(), init)
            .map_err(|e| self.model_err(e))
    }

    fn remove_absent_sites(&self, net: &mut Network) {
        for s in net.sites_mut() {
            let absent = match s.role {
                SiteRole::Stem => !self.counting.stem_relu,
                SiteRole::Final => !self.counting.final_relu,
                SiteRole::Body => false,
            };
            if absent {
                s.fill_mask(0);
            }
        }
    }

    fn build_arch(
        &self,
        spec: &NetworkSpec,
        init: Init,
        mask_seed: u64,
    ) -> Result<(Network, String)> {
        let arch = spec
            .arch
            .as_ref()
            .ok_or_else(|| self.row_err("arch", "missing"))?;
        let mut net = self.instantiate(spec, arch, init)?;
        self.remove_absent_sites(&mut net);
        for &k in &spec.cull {
            cull_stage(&mut net, k).map_err(|e| self.model_err(e))?;
        }
        for &k in &spec.thin {
            thin_stage(&mut net, k).map_err(|e| self.model_err(e))?;
        }
        let convention = self.counting.convention();
        let mut absent = Vec::new();
        if !self.counting.stem_relu && net.sites().any(|s| s.role == SiteRole::Stem) {
            absent.push("stem ReLU");
        }
        if !self.counting.final_relu && net.sites().any(|s| s.role == SiteRole::Final) {
            absent.push("final BN-ReLU");
        }
        let absent = if absent.is_empty() {
            String::new()
        } else {
            format!("; {} absent (identity)", absent.join(" and "))
        };
        let mut how = match &spec.mask {
            MaskSource::Random { relus } => {
                let kept = random_relu_mask(&mut net, *relus, convention, mask_seed)
                    .map_err(|e| self.model_err(e))?;
                let sites = net.sites().filter(|s| convention.counts(s.role)).count();
                format!(
                    "random mask: exactly {} ReLUs over {sites} sites in proportion to their size, \
                     uniform positions within a site (seed {mask_seed}){absent}",
                    thousands(kept)
                )
            }
            MaskSource::Structural => {
                let mut parts = Vec::new();
                if !spec.cull.is_empty() {
                    parts.push(format!("culled {}", stage_list(&spec.cull)));
                }
                if !spec.thin.is_empty() {
                    parts.push(format!("thinned {}", stage_list(&spec.thin)));
                }
                if let Some(a) = spec.alpha {
                    parts.push(format!("α={a}"));
                }
                if let Some(r) = spec.rho {
                    parts.push(format!("ρ={r}"));
                }
                if let Some(b) = &spec.blocks {
                    parts.push(format!("blocks {b:?}"));
                }
                let what = if parts.is_empty() {
                    "all ReLUs".to_string()
                } else {
                    parts.join(", ")
                };
                format!(
                    "structural: {what}; every remaining ReLU kept ({} ReLUs){absent}",
                    thousands(relu_count(&net, ALL_SITES))
                )
            }
            MaskSource::Model { .. } => {
                return Err(self.row_err("model", "a model-file row is loaded, not built"))
            }
        };
        if spec.replacement == Replacement::Dapa2 {
            let (c2, c1, c0) = dapa2_coefficients(1.0);
            let mut n = 0;
            for s in net.sites_mut() {
                if convention.counts(s.role) && s.mask.contains(&0) {
                    let ch = s.shape.c;
                    s.poly = Some(PolyCoeffs {
                        a2: vec![c2 as f32; ch],
                        a1: vec![c1 as f32; ch],
                        a0: vec![c0 as f32; ch],
                    });
                    n += 1;
                }
            }
            how.push_str(&format!(
                "; replaced elements of {n} sites compute AutoReP's DaPa x² polynomial \
                 ({c2:.4}x² + {c1}x + {c0:.4}, σ=1 assumed)"
            ));
        } else {
            how.push_str("; replaced elements are the identity");
        }
        if let Init::Seeded(seed) = init {
            how.push_str(&format!(
                "; {}",
                pibench_models::reference::calibrate_random_batchnorm(&mut net, seed)
                    .map_err(|e| self.model_err(e))?
            ));
        }
        Ok((net, how))
    }

    fn load_model(&self, spec: &NetworkSpec, path: &Path) -> Result<(Network, String)> {
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|e| {
            self.row_err(
                "model",
                format!("{shown}: cannot read the model file ({e}); relative paths are relative to the config's folder"),
            )
        })?;
        if meta.len() > MAX_MODEL_BYTES {
            return Err(self.row_err(
                "model",
                format!("{shown}: {} bytes, at most {MAX_MODEL_BYTES}", meta.len()),
            ));
        }
        let loaded = file::load(path).map_err(|e| self.model_err(e))?;
        if let Some(d) = &loaded.header.dataset {
            match Dataset::parse(d) {
                Ok(fd) if fd == spec.dataset => {}
                _ => {
                    return Err(self.row_err(
                        "dataset",
                        format!(
                            "{shown} was trained on {d:?}, the row is for {}",
                            spec.dataset.name()
                        ),
                    ))
                }
            }
        }
        if loaded.network.input != spec.dataset.input()
            || loaded.network.num_classes != spec.dataset.num_classes()
        {
            return Err(self.row_err(
                "dataset",
                format!(
                    "{shown} has input {} and {} classes, {} needs {} and {}",
                    loaded.network.input,
                    loaded.network.num_classes,
                    spec.dataset.name(),
                    spec.dataset.input(),
                    spec.dataset.num_classes()
                ),
            ));
        }
        if let Some(arch) = &spec.arch {
            if &loaded.header.arch != arch {
                return Err(self.row_err(
                    "arch",
                    format!(
                        "{shown} holds {}, the row names {}",
                        loaded.header.arch.name(),
                        arch.name()
                    ),
                ));
            }
        }
        let relus = relu_count(&loaded.network, ALL_SITES);
        let how = format!(
            "model file {shown} ({}, {} ReLUs evaluated; its header counts {} under stem_relu={}, \
             final_relu={}): masks and weights as trained by pibench prune",
            loaded.header.name,
            thousands(relus),
            thousands(loaded.header.relus),
            loaded.header.convention.stem_relu,
            loaded.header.convention.final_relu,
        );
        Ok((loaded.network, how))
    }
}
