//! Every table config parses, every supported row builds, and its network has
//! the paper's ReLU count (to the paper's rounding: "12.9K" is 12,850..12,950,
//! or 12,900..12,999 where the paper truncates); where the paper prints FLOPs,
//! the network's MACs are within 1% of them (pibench counts conv and linear
//! MACs only; DeepReShape's figures are 0.1–0.7% higher). Config errors name
//! the file, the row and the field.

#[path = "../src/table/mod.rs"]
mod table;

use std::path::{Path, PathBuf};

use pibench_models::arch::{ArchSpec, Dataset};
use pibench_models::count::{count, Convention};
use pibench_models::file::{self, SaveOptions};
use pibench_models::graph::{Init, SiteRole};
use pibench_models::mask::random_relu_mask;
use table::{MaskSource, Replacement, TableConfig, TableError, ALL_SITES};

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/tables")
}

fn config_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(config_dir())
        .expect("configs/tables exists")
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

/// The tables issue #11 asks for, by file name.
const EXPECTED: &[&str] = &[
    "autorep-t1",
    "autorep-t3",
    "autorep-t4",
    "autorep-t5",
    "deepreduce-t4",
    "deepreduce-t5",
    "deepreduce-t6",
    "deepreshape-t7",
    "deepreshape-t8",
    "privshap-t2",
    "privshap-t3",
    "relupruner-t1",
    "relupruner-t2",
    "relupruner-t3",
];

#[test]
fn every_config_parses_and_every_supported_row_has_the_papers_relu_count() {
    let files = config_files();
    let stems: Vec<String> = files
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for e in EXPECTED {
        assert!(
            stems.iter().any(|s| s == e),
            "configs/tables/{e}.toml missing"
        );
    }
    let mut problems = Vec::new();
    let (mut supported, mut unsupported) = (0, 0);
    for f in &files {
        let cfg = TableConfig::load(f).unwrap_or_else(|e| panic!("{e}"));
        let stem = f.file_stem().unwrap().to_string_lossy();
        assert_eq!(
            cfg.table.id,
            stem,
            "{}: table.id must equal the file name",
            f.display()
        );
        for row in &cfg.rows {
            let spec = match &row.network {
                Err(reason) => {
                    assert!(!reason.trim().is_empty());
                    unsupported += 1;
                    continue;
                }
                Ok(s) => s,
            };
            supported += 1;
            let where_ = format!("{} row {}", cfg.table.id, row.id);
            let built = match row.build_network_with(Init::Zeros, 1) {
                Ok(b) => b,
                Err(e) => {
                    problems.push(format!("{where_}: {e}"));
                    continue;
                }
            };
            assert_eq!(
                built.relus,
                pibench_models::count::relu_count(&built.network, ALL_SITES)
            );
            if let MaskSource::Random { relus } = spec.mask {
                if built.relus != relus {
                    problems.push(format!(
                        "{where_}: random mask holds {} ReLUs, asked {relus}",
                        built.relus
                    ));
                }
            }
            let (Some(paper), Some(rounding)) = (row.paper_relus(), row.paper_relus_rounding())
            else {
                problems.push(format!(
                    "{where_}: a supported row needs the paper's ReLU count"
                ));
                continue;
            };
            // The printed count is the exact count rounded or truncated to the
            // printed digits (DeepReDuce and DeepReShape do both: 229,376 →
            // "229.38K", 24,576 → "24.57K").
            let exact = built.relus as f64;
            let diff = (exact - paper).abs();
            let rounded = diff <= rounding + 1e-6;
            let truncated = exact >= paper - 1e-6 && exact < paper + 2.0 * rounding - 1e-6;
            let strict = rounded || truncated;
            match &row.relus_discrepancy {
                None if !strict => problems.push(format!(
                    "{where_}: network has {} ReLUs, the paper prints {} (±{rounding})",
                    built.relus,
                    row.cell("relus").unwrap().printed
                )),
                Some(_) if strict => problems.push(format!(
                    "{where_}: relus_discrepancy given but {} ReLUs match the printed {}",
                    built.relus,
                    row.cell("relus").unwrap().printed
                )),
                Some(_) if diff > 0.005 * paper => problems.push(format!(
                    "{where_}: {} ReLUs is more than 0.5% from the printed {}",
                    built.relus,
                    row.cell("relus").unwrap().printed
                )),
                _ => {}
            }
            // Where the paper prints FLOPs (DeepReShape), the structure must match them too.
            // ReLU-reuse rows print the FLOPs of the network without its group
            // convolutions (DeepReShape Table 7's note; Appendix G/J); their
            // grouped networks are checked against the paper's grouped MACs
            // (Table 6: 121.6M on CIFAR, Table 13: 486.3M on Tiny-ImageNet)
            // within 2 % (the block's layout is derived, models/src/arch/reuse.rs).
            let reuse = matches!(spec.arch, Some(ArchSpec::ReluReuse { .. }));
            if reuse {
                let macs = built.flops as f64 / 1e6;
                let grouped = if spec.dataset == Dataset::TinyImageNet {
                    486.3
                } else {
                    121.6
                };
                if (macs - grouped).abs() > 0.02 * grouped {
                    problems.push(format!(
                        "{where_}: {macs:.1}M MACs, the paper's grouped network has {grouped}M"
                    ));
                }
            } else if let Some(fl) = row.cell("flops").and_then(|c| c.value.zip(c.rounding)) {
                let macs = built.flops as f64 / 1e6;
                if (macs - fl.0).abs() > fl.1 + 0.01 * fl.0 {
                    problems.push(format!(
                        "{where_}: {macs:.1}M MACs, the paper prints {}M",
                        row.cell("flops").unwrap().printed
                    ));
                }
            }
            // Sites the table says do not exist hold no ReLU and no polynomial.
            for s in built.network.sites() {
                let absent = (s.role == SiteRole::Stem && !cfg.counting.stem_relu)
                    || (s.role == SiteRole::Final && !cfg.counting.final_relu);
                if absent && (s.relu_count() != 0 || s.poly.is_some()) {
                    problems.push(format!(
                        "{where_}: absent site {} has ReLUs or a polynomial",
                        s.name
                    ));
                }
            }
            if spec.replacement == Replacement::Dapa2 {
                let with_poly = built.network.sites().filter(|s| s.poly.is_some()).count();
                if with_poly == 0 {
                    problems.push(format!("{where_}: dapa2 row without polynomial sites"));
                }
            }
            assert!(!built.mask_source.is_empty());
            assert!(!built.network_key.is_empty());
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Every table has something to run except AutoReP's ImageNet table.
    assert!(supported >= 100, "only {supported} supported rows");
    assert!(unsupported > 0);
}

#[test]
fn comparison_rows_repeat_networks_under_one_key() {
    let cfg = TableConfig::load(&config_dir().join("deepreshape-t7.toml")).unwrap();
    let keys: Vec<_> = ["c100-1-hrn", "c100-2-hrn", "c100-3-hrn"]
        .iter()
        .map(|id| cfg.row(id).unwrap().network_key().unwrap())
        .collect();
    assert!(keys.windows(2).all(|w| w[0] == w[1]));
    let other = cfg.row("c100-4-hrn").unwrap().network_key().unwrap();
    assert_ne!(keys[0], other);
    assert_eq!(
        cfg.row("c100-1-sota").unwrap().group.as_deref(),
        cfg.row("c100-1-hrn").unwrap().group.as_deref()
    );
}

#[test]
fn seeded_weights_masks_and_the_all_relu_reference() {
    let cfg = TableConfig::load(&config_dir().join("privshap-t2.toml")).unwrap();
    let row = cfg.row("ours-resnet18-75.2k").unwrap();
    let a = row.build_network(7).unwrap();
    let b = row.build_network(7).unwrap();
    let c = row.build_network(8).unwrap();
    assert_eq!(a.network, b.network);
    assert_ne!(a.network, c.network);
    assert_eq!(a.relus, 75_200);
    assert!(a.mask_source.contains("75,200"), "{}", a.mask_source);
    assert_eq!(a.setting.id, "privshap");
    assert_eq!(a.cell("comm_saving").unwrap().value, Some(9.4));
    // PrivShap's reference: ResNet-18 with every ReLU but the absent stem one.
    let ar = row.build_all_relu_network(Init::Zeros).unwrap();
    assert_eq!(pibench_models::count::relu_count(&ar, ALL_SITES), 491_520);
    // Unsupported rows say why.
    let ns = cfg.row("ours-resnet34silu-69.6k").unwrap();
    match ns.build_network(1) {
        Err(TableError::NotSupported { reason, .. }) => assert!(reason.contains("SiLU")),
        other => panic!("expected NotSupported, got {other:?}"),
    }
}

#[test]
fn autorep_rows_get_dapa_polynomials() {
    let cfg = TableConfig::load(&config_dir().join("autorep-t3.toml")).unwrap();
    let built = cfg
        .row("autorep-12.9k")
        .unwrap()
        .build_network_with(Init::Zeros, 3)
        .unwrap();
    assert_eq!(built.relus, 12_900);
    assert_eq!(built.setting.id, "autorep-crypten");
    for s in built.network.sites() {
        match s.role {
            SiteRole::Stem => assert!(s.poly.is_none() && s.relu_count() == 0),
            _ => {
                let p = s
                    .poly
                    .as_ref()
                    .expect("replaced elements need a polynomial");
                assert_eq!(p.a2.len(), s.shape.c);
                assert!((p.a1[0] - 0.5).abs() < 1e-6);
            }
        }
    }
    let (c2, c1, c0) = table::dapa2_coefficients(2f64.sqrt());
    // AutoReP Fig. 6: N(0, 2) gives 0.14 Z² + 0.5 Z + 0.28.
    assert!((c2 - 0.14).abs() < 0.005 && c1 == 0.5 && (c0 - 0.28).abs() < 0.005);
}

const MINI: &str = r##"
[table]
id = "mini"
title = "t"
paper = "p"
seed = "s"
number = "Table 0"
caption = "c"
dataset = "cifar10"

[counting]
stem_relu = false
final_relu = false
reason = "r"

[defaults]
setting = "x"
arch = "resnet18"

[[setting]]
id = "x"
protocol = "p"
source = "s"

[[column]]
key = "relus"
label = "#ReLUs"
unit = "K"
meaning = "m"

[[column]]
key = "lat"
label = "Lat.(s)"
unit = "s"
meaning = "m"
"##;

fn parse(rows: &str) -> Result<TableConfig, TableError> {
    let text = format!("{MINI}\n{rows}");
    TableConfig::from_str_at(&text, Path::new("mini.toml"), Path::new("."))
}

fn err(rows: &str) -> String {
    parse(rows)
        .expect_err("config must be rejected")
        .to_string()
}

#[test]
fn config_errors_name_file_row_and_field() {
    let e = err("[[row]]\nid = \"a\"\nmethod = \"m\"\nmask = \"random\"\npaper = { relus = \"1.5K\", lat = \"fast\" }\n");
    assert!(
        e.contains("mini.toml") && e.contains("\"a\"") && e.contains("paper.lat"),
        "{e}"
    );
    let e = err("[[row]]\nid = \"a\"\nmethod = \"m\"\nmask = \"random\"\npaper = { relus = \"1\", acc = \"1\" }\n");
    assert!(
        e.contains("paper.acc") && e.contains("no [[column]]"),
        "{e}"
    );
    let e = err("[[row]]\nid = \"a\"\nmethod = \"m\"\nmask = \"structural\"\ncull = [\"S7x\"]\npaper = { relus = \"1\" }\n");
    assert!(e.contains("cull") && e.contains("S7x"), "{e}");
    let e = err("[[row]]\nid = \"a\"\nmethod = \"m\"\nmask = \"random\"\nthin = [\"S2\"]\npaper = { relus = \"1\" }\n");
    assert!(e.contains("structural"), "{e}");
    let e = err("[[row]]\nid = \"a\"\nmethod = \"m\"\nmask = \"random\"\nbogus = 1\npaper = { relus = \"1\" }\n");
    assert!(e.contains("mini.toml") && e.contains("bogus"), "{e}");
    let e = err("[[row]]\nid = \"a\"\nmethod = \"m\"\nmask = \"random\"\npaper = { relus = \"1\" }\n[[row]]\nid = \"a\"\nmethod = \"m\"\nmask = \"random\"\npaper = { relus = \"1\" }\n");
    assert!(e.contains("duplicate"), "{e}");
    let e = err("[[row]]\nid = \"a\"\nmethod = \"m\"\nmask = \"random\"\narch = \"resnet7\"\npaper = { relus = \"1\" }\n");
    assert!(e.contains("arch") && e.contains("resnet7"), "{e}");
    let e = err("[[row]]\nid = \"a\"\nmethod = \"m\"\nmask = \"random\"\nsetting = \"nope\"\npaper = { relus = \"1\" }\n");
    assert!(e.contains("setting") && e.contains("nope"), "{e}");
    let e = err("[[row]]\nid = \"a\"\nmethod = \"m\"\nmask = \"random\"\nrelu_reuse = 1\npaper = { relus = \"1\" }\n");
    assert!(e.contains("relu_reuse") && e.contains("2..=64"), "{e}");
    let e = err("[[row]]\nid = \"a\"\nmethod = \"m\"\nmask = \"random\"\narch = \"vgg16\"\nrelu_reuse = 4\npaper = { relus = \"1\" }\n");
    assert!(e.contains("relu_reuse") && e.contains("vgg16"), "{e}");
    // A size that would exhaust memory is refused when building, not allocated.
    let cfg = parse("[[row]]\nid = \"a\"\nmethod = \"m\"\nmask = \"structural\"\narch = \"hrn-2x2x2x-m100000\"\npaper = { relus = \"1\" }\n").unwrap();
    let e = cfg.rows[0]
        .build_network_with(Init::Zeros, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("weights") && e.contains("\"a\""), "{e}");
    // A random budget above what the network has is an error, not a panic.
    let cfg = parse("[[row]]\nid = \"a\"\nmethod = \"m\"\nmask = \"random\"\narch = \"hrn-2x2x2x-m2\"\npaper = { relus = \"9999\" }\n").unwrap();
    let e = cfg.rows[0]
        .build_network_with(Init::Zeros, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("budget") && e.contains("\"a\""), "{e}");
    // Not TOML at all.
    let e = TableConfig::from_str_at("[table", Path::new("bad.toml"), Path::new("."))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.toml"), "{e}");
}

#[test]
fn a_row_can_point_at_a_pruned_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ArchSpec::parse("hrn-2x2x2x-m4").unwrap();
    let d = Dataset::Cifar10;
    let mut net = spec
        .build(d.input(), d.num_classes(), Init::Seeded(5))
        .unwrap();
    let conv = Convention {
        stem_relu: false,
        final_relu: false,
    };
    for s in net.sites_mut().filter(|s| s.role == SiteRole::Stem) {
        s.fill_mask(0);
    }
    random_relu_mask(&mut net, 1_234, conv, 5).unwrap();
    let opts = SaveOptions {
        dataset: Some("cifar10".into()),
        convention: conv,
        ..SaveOptions::default()
    };
    file::save(&net, &opts, &dir.path().join("mine.safetensors")).unwrap();
    let cfg_text = format!(
        "{MINI}\n[[row]]\nid = \"mine\"\nmethod = \"pibench prune\"\nmodel = \"mine.safetensors\"\narch = \"hrn-2x2x2x-m4\"\npaper = {{ relus = \"1.2K\" }}\n"
    );
    let cfg_path = dir.path().join("mine.toml");
    std::fs::write(&cfg_path, cfg_text).unwrap();
    let cfg = TableConfig::load(&cfg_path).unwrap();
    let built = cfg.rows[0].build_network(0).unwrap();
    assert_eq!(built.relus, 1_234);
    assert_eq!(built.network, net);
    assert!(
        built.mask_source.contains("mine.safetensors"),
        "{}",
        built.mask_source
    );
    assert_eq!(built.flops, count(&net, conv).flops);
    // The wrong architecture or a missing file is reported with the row.
    let wrong = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace("arch = \"hrn-2x2x2x-m4\"", "arch = \"resnet18\"");
    std::fs::write(&cfg_path, wrong).unwrap();
    let e = TableConfig::load(&cfg_path).unwrap().rows[0]
        .build_network(0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"mine\"") && e.contains("arch"), "{e}");
    let missing = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace("mine.safetensors", "gone.safetensors");
    std::fs::write(&cfg_path, missing).unwrap();
    let e = TableConfig::load(&cfg_path).unwrap().rows[0]
        .build_network(0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("gone.safetensors"), "{e}");
}
