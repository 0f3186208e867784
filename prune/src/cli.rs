//! The `piprune` command line.

use std::path::{Path, PathBuf};

use clap::{Parser, ValueEnum};
use serde::Serialize;

use crate::data::{Dataset, DatasetKind, Preprocess};
use crate::export;
use crate::methods::{self, snl::SnlConfig, CoarseRun, Context, SnlRun, SpecFactory};
use crate::train::{
    parent_exists, pick_device, Checkpoints, KdConfig, OptimizerKind, RunLog, Schedule,
    TrainConfig, Trainer,
};

/// Pruning methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Selective Network Linearization: per-element α, lasso, exact top-N, KD.
    Snl,
    /// DeepReDuce: criticality, Culling, Thinning, Reshaping, KD.
    Deepreduce,
    /// DeepReShape: HybReNets with Culling, Thinning and channel-group ReLUs.
    Deepreshape,
}

/// Schedules selectable on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum ScheduleKind {
    /// Cosine annealing.
    Cosine,
    /// Step decay (`--step-every`, `--step-gamma`).
    Step,
}

/// `piprune`: trains and ReLU-prunes a network and writes a pibench model file.
#[derive(Debug, Clone, Parser, Serialize)]
#[command(name = "piprune", version, about)]
pub struct PruneCli {
    /// Pruning method.
    #[arg(long, value_enum)]
    pub method: Method,
    /// Architecture: resnet18, resnet34, hrn-AxBxCx[-mM].
    #[arg(long, default_value = "resnet18")]
    pub model: String,
    /// Dataset.
    #[arg(long, value_enum)]
    pub dataset: DatasetKind,
    /// Dataset folder (the official layout, or its parent).
    #[arg(long)]
    pub data: PathBuf,
    /// ReLU budget: exact for snl; the largest candidate not above it for coarse methods.
    #[arg(long, allow_negative_numbers = true)]
    pub budget: i64,
    /// Epochs of each training phase (teacher, probes, fine-tuning).
    #[arg(long, default_value_t = 120)]
    pub epochs: usize,
    /// Device: cpu, cuda or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Output model file (pibench safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Scales every channel count (tests and small runs).
    #[arg(long, default_value_t = 1.0)]
    pub width_multiplier: f64,
    /// Base channels m of HybReNets.
    #[arg(long)]
    pub base_channels: Option<i64>,
    /// Mini-batch size.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Optimiser.
    #[arg(long, value_enum, default_value = "sgd")]
    pub optimizer: OptimizerKind,
    /// Learning rate.
    #[arg(long, default_value_t = 0.1)]
    pub lr: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Weight decay.
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f64,
    /// Learning-rate schedule.
    #[arg(long, value_enum, default_value = "cosine")]
    pub schedule: ScheduleKind,
    /// Step schedule period in epochs.
    #[arg(long, default_value_t = 30)]
    pub step_every: usize,
    /// Step schedule factor.
    #[arg(long, default_value_t = 0.1)]
    pub step_gamma: f64,
    /// Cap on steps per epoch (smoke runs).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Use only the first N training images.
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Use only the first N test images.
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Mixed precision (CUDA only; ignored on CPU).
    #[arg(long)]
    pub amp: bool,
    /// KD temperature.
    #[arg(long, default_value_t = 4.0)]
    pub kd_temperature: f64,
    /// KD weight (1 − weight goes to cross-entropy).
    #[arg(long, default_value_t = 0.9)]
    pub kd_weight: f64,
    /// Pretrained all-ReLU teacher (a store file written by piprune's checkpoints).
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// SNL: maximum search epochs.
    #[arg(long, default_value_t = 100)]
    pub search_epochs: usize,
    /// SNL: initial lasso weight λ.
    #[arg(long, default_value_t = 1e-5)]
    pub lambda: f64,
    /// SNL: λ growth factor per epoch above the budget.
    #[arg(long, default_value_t = 1.5)]
    pub lambda_growth: f64,
    /// SNL: α threshold counting as a ReLU during the search.
    #[arg(long, default_value_t = 1e-2)]
    pub alpha_threshold: f64,
    /// SNL: learning rate of the α (SGD/Adam group without weight decay).
    #[arg(long, default_value_t = 1e-2)]
    pub alpha_lr: f64,
    /// Coarse methods: criticality order, least to most critical (e.g. 1,4,2,3); skips the probes.
    #[arg(long, value_delimiter = ',')]
    pub criticality_order: Option<Vec<usize>>,
    /// Coarse methods: train and write every candidate (the Pareto set).
    #[arg(long)]
    pub pareto: bool,
    /// Checkpoint folder (per phase); default `<out>.ckpt/`.
    #[arg(long)]
    pub checkpoint_dir: Option<PathBuf>,
    /// Resume from the checkpoint folder.
    #[arg(long)]
    pub resume: bool,
    /// JSON log; default `<out>.log.json`.
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Seed for initialisation, shuffling and augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// CPU threads for libtorch (default: libtorch's choice).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Hide progress bars.
    #[arg(long)]
    pub no_progress: bool,
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Runs `piprune` with parsed arguments.
pub fn run(args: PruneCli) -> anyhow::Result<()> {
    // Everything that can be refused is refused before training.
    let device = pick_device(&args.device).map_err(anyhow::Error::msg)?;
    if !parent_exists(&args.out) {
        anyhow::bail!("--out {}: the folder does not exist", args.out.display());
    }
    if args.epochs == 0 {
        anyhow::bail!("--epochs must be at least 1");
    }
    if args.batch_size == 0 {
        anyhow::bail!("--batch-size must be at least 1");
    }
    let classes = args.dataset.classes() as i64;
    let native = args.dataset.image_size();
    let factory = SpecFactory {
        model: args.model.clone(),
        classes,
        native,
        width: args.width_multiplier,
        base_channels: args.base_channels,
    };
    let base = factory.spec(1.0, 1.0)?;
    methods::check_budget(&base, args.budget)?;
    if args.method == Method::Deepreshape && !base.name.starts_with("hrn-") {
        anyhow::bail!(
            "deepreshape needs a HybReNet: --model hrn-AxBxCx (e.g. hrn-2x5x3x) with --base-channels M"
        );
    }
    if args.method == Method::Deepreshape {
        let order = args
            .criticality_order
            .clone()
            .unwrap_or_else(|| vec![1, 4, 2, 3]);
        let c = methods::deepreshape_candidates(&base, &order);
        methods::pick("deepreshape", &factory, &c, args.budget)?;
    }
    if args.method == Method::Deepreduce {
        let floor = methods::deepreduce_floor(&factory, base.blocks.len())?;
        if args.budget < floor {
            anyhow::bail!(methods::MethodError::Unreachable {
                method: "deepreduce",
                budget: args.budget,
                smallest: floor,
            });
        }
    }
    if let Some(t) = &args.teacher {
        if !t.exists() {
            anyhow::bail!("--teacher {}: no such file", t.display());
        }
    }

    let dataset = Dataset::load(args.dataset, &args.data)?;
    let train = match args.train_limit {
        Some(n) => dataset.train.take(n),
        None => dataset.train.take(usize::MAX),
    };
    let test = match args.test_limit {
        Some(n) => dataset.test.take(n),
        None => dataset.test.take(usize::MAX),
    };
    eprintln!(
        "{}: {} train / {} test images; device {:?}; {} with {} ReLUs",
        args.dataset.name(),
        train.len(),
        test.len(),
        device,
        base.name,
        base.full_relus()
    );
    tch::manual_seed(args.seed as i64);
    if let Some(t) = args.threads {
        tch::set_num_threads(t.max(1));
    }

    let mut log = RunLog {
        path: Some(
            args.log
                .clone()
                .unwrap_or_else(|| with_suffix(&args.out, ".log.json")),
        ),
        config: serde_json::to_value(&args)?,
        ..Default::default()
    };
    let schedule = match args.schedule {
        ScheduleKind::Cosine => Schedule::Cosine,
        ScheduleKind::Step => Schedule::Step {
            every: args.step_every,
            gamma: args.step_gamma,
        },
    };
    let train_cfg = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        momentum: args.momentum,
        weight_decay: args.weight_decay,
        optimizer: args.optimizer,
        schedule,
        max_steps: args.max_steps,
        amp: args.amp,
        seed: args.seed,
        alpha_lr: args.alpha_lr,
    };
    let pre = Preprocess::new(args.dataset, base.input_size, device);
    let checkpoints = Checkpoints {
        dir: args
            .checkpoint_dir
            .clone()
            .unwrap_or_else(|| with_suffix(&args.out, ".ckpt")),
        resume: args.resume,
    };
    let trainer = Trainer {
        train: &train,
        test: &test,
        pre: pre.clone(),
        teacher_pre: pre,
        log: &mut log,
        checkpoints: Some(checkpoints),
        progress: !args.no_progress,
    };
    let mut ctx = Context {
        trainer,
        train: train_cfg.clone(),
        kd: KdConfig {
            temperature: args.kd_temperature,
            weight: args.kd_weight,
        },
        device,
        dataset: args.dataset,
        teacher: args.teacher.clone(),
    };
    let coarse = CoarseRun {
        budget: args.budget,
        order: args.criticality_order.clone(),
        pareto: args.pareto,
    };
    let produced = match args.method {
        Method::Snl => {
            let run = SnlRun {
                snl: SnlConfig {
                    budget: args.budget,
                    lambda: args.lambda,
                    lambda_growth: args.lambda_growth,
                    threshold: args.alpha_threshold,
                },
                search_epochs: args.search_epochs,
                search: train_cfg,
            };
            vec![methods::run_snl(&mut ctx, &base, &run)?]
        }
        Method::Deepreduce => methods::run_deepreduce(&mut ctx, &factory, &coarse)?,
        Method::Deepreshape => methods::run_deepreshape(&mut ctx, &factory, &coarse)?,
    };
    drop(ctx);

    let mut written = Vec::new();
    for (i, p) in produced.iter().enumerate() {
        let path = if i == 0 {
            args.out.clone()
        } else {
            with_suffix(&args.out, &format!(".{}.safetensors", p.label))
        };
        let relus = export::save(&p.net, args.dataset.name(), &path)?;
        eprintln!(
            "wrote {} ({}, {relus} ReLUs, test accuracy {:.4})",
            path.display(),
            p.label,
            p.accuracy
        );
        written.push(serde_json::json!({
            "file": path.display().to_string(),
            "label": p.label,
            "relus": relus,
            "accuracy": p.accuracy,
            "budget": args.budget,
            "exact": relus as i64 == args.budget,
        }));
    }
    log.results.push(serde_json::json!({ "written": written }));
    log.flush()?;
    if let Some(first) = produced.first() {
        let relus = first.net.relu_count();
        if relus == args.budget {
            println!(
                "{}: {relus} ReLUs (budget {} met exactly)",
                args.out.display(),
                args.budget
            );
        } else {
            println!(
                "{}: {relus} ReLUs (budget {}; nearest achievable for {:?})",
                args.out.display(),
                args.budget,
                args.method
            );
        }
    }
    Ok(())
}
