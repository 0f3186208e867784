//! The `piprune` command line.

use std::path::{Path, PathBuf};

use clap::{Parser, ValueEnum};
use pibench_models::count::Convention;
use pibench_models::import::schemes::Scheme;
use serde::Serialize;

use crate::data::{Dataset, DatasetKind, Preprocess};
use crate::export;
use crate::methods::deepreduce::SpecFactory;
use crate::methods::{self, snl, CoarseRun, Context, SnlRun, TeacherFile};
use crate::train::{
    parent_exists, pick_device, Checkpoints, KdConfig, OptimizerKind, RunLog, Schedule,
    TrainConfig, Trainer,
};

/// Pruning methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Selective Network Linearization: per-element α, lasso, threshold, KD.
    Snl,
    /// DeepReDuce: criticality, Culling, Thinning, Reshaping, KD.
    Deepreduce,
    /// DeepReShape: HybReNets with Culling, Thinning and ReLU-reuse (channel groups).
    Deepreshape,
    /// AutoReP: indicators with hysteresis and STE, DaPa polynomial replacement.
    Autorep,
    /// ReLUPruner: Taylor importance, progressive global pruning, PRAM fine-tuning.
    Relupruner,
    /// PrivShap: layer Shapley values, budget allocation, gradient projection.
    Privshap,
}

/// On/off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum OnOff {
    /// On.
    On,
    /// Off.
    Off,
}

/// Schedules selectable on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum ScheduleKind {
    /// Cosine annealing.
    Cosine,
    /// Step decay (`--step-every`, `--step-gamma`).
    Step,
    /// Constant learning rate.
    Constant,
}

/// Naming scheme of a PyTorch teacher checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum TeacherScheme {
    /// Ordinary all-ReLU state dict with the models crate's names.
    Plain,
    /// SNL (`alphaK.alphas`, all 1 in a teacher).
    Snl,
    /// AutoReP.
    Autorep,
    /// ReLUPruner.
    Relupruner,
}

/// `piprune`: trains and ReLU-prunes a network and writes a pibench model file.
#[derive(Debug, Clone, Parser, Serialize)]
#[command(name = "piprune", version, about)]
pub struct PruneCli {
    /// Pruning method.
    #[arg(long, value_enum)]
    pub method: Method,
    /// Architecture: any name `pibench count` knows (resnet18, resnet34,
    /// vgg16, wrn22_8, hrn-AxBxCx[-mM], …).
    #[arg(long, default_value = "resnet18")]
    pub model: String,
    /// Dataset.
    #[arg(long, value_enum)]
    pub dataset: DatasetKind,
    /// Dataset folder (the official layout, or its parent).
    #[arg(long)]
    pub data: PathBuf,
    /// ReLU budget (counted ReLUs, see --count-stem): snl keeps at most this
    /// many; the coarse methods the largest candidate not above it.
    #[arg(long, allow_negative_numbers = true)]
    pub budget: i64,
    /// Epochs of the teacher, probe, candidate and fine-tuning phases.
    #[arg(long, default_value_t = 120)]
    pub epochs: usize,
    /// Device: cpu, cuda or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Output model file (pibench safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Scales every channel count (DeepReDuce's channel scaling; tests use 1/16).
    #[arg(long, default_value_t = 1.0)]
    pub width_multiplier: f64,
    /// Base channels m of HybReNets named without `-mM` (default 16).
    #[arg(long)]
    pub base_channels: Option<usize>,
    /// Whether the stem ReLU counts (and can be pruned). Default: not for snl
    /// (SNL's ResNet has no stem ReLU; the stem site is the identity), yes otherwise.
    #[arg(long)]
    pub count_stem: Option<bool>,
    /// Mini-batch size.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Optimiser of the teacher/probe/candidate phases.
    #[arg(long, value_enum, default_value = "sgd")]
    pub optimizer: OptimizerKind,
    /// Learning rate of the teacher/probe/candidate phases.
    #[arg(long, default_value_t = 0.1)]
    pub lr: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Nesterov momentum.
    #[arg(long)]
    pub nesterov: bool,
    /// Weight decay (default: 4e-4 for deepreduce/deepreshape as in DeepReDuce §4, else 5e-4).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Learning-rate schedule (default: DeepReDuce's step schedule — ÷10
    /// every 30 epochs — for deepreduce/deepreshape on CIFAR-100 and
    /// Tiny-ImageNet, cosine otherwise).
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleKind>,
    /// Step schedule period in epochs.
    #[arg(long, default_value_t = 30)]
    pub step_every: usize,
    /// Step schedule factor.
    #[arg(long, default_value_t = 0.1)]
    pub step_gamma: f64,
    /// Cap on steps per epoch (smoke runs).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Use only the first N training images (before the validation split).
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Use only the first N test images.
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Fraction of the training images held out as the validation split
    /// (criticality, Pareto choices and Shapley values use it; never the test split).
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// Mixed precision: fp16 with dynamic loss scaling on CUDA, bf16 on CPU.
    #[arg(long)]
    pub amp: bool,
    /// KD temperature (deepreduce/deepreshape; SNL uses its own: T = 4, CE + KD).
    #[arg(long, default_value_t = 4.0)]
    pub kd_temperature: f64,
    /// KD relative weight (1 − weight goes to cross-entropy).
    #[arg(long, default_value_t = 0.9)]
    pub kd_weight: f64,
    /// Pretrained all-ReLU teacher: a piprune store (`<out>.ckpt/teacher.safetensors`),
    /// a pibench model file, or a PyTorch checkpoint (.pth/.pth.tar/.pt).
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// Naming scheme of a PyTorch --teacher checkpoint.
    #[arg(long, value_enum, default_value = "plain")]
    pub teacher_scheme: TeacherScheme,
    /// SNL: maximum search epochs (SNL: 2000).
    #[arg(long, default_value_t = 2000)]
    pub search_epochs: usize,
    /// SNL: learning rate of the search's Adam (SNL: 1e-3).
    #[arg(long, default_value_t = 1e-3)]
    pub search_lr: f64,
    /// SNL: learning rate of the α during the search (default: --search-lr, as in SNL).
    #[arg(long)]
    pub alpha_lr: Option<f64>,
    /// SNL: fine-tuning epochs (default: --epochs; SNL: 100).
    #[arg(long)]
    pub finetune_epochs: Option<usize>,
    /// SNL: fine-tuning SGD learning rate (SNL: 1e-3).
    #[arg(long, default_value_t = 1e-3)]
    pub finetune_lr: f64,
    /// SNL: initial lasso weight λ (SNL: 1e-5).
    #[arg(long, default_value_t = 1e-5)]
    pub lambda: f64,
    /// SNL: λ growth factor (SNL: 1.1).
    #[arg(long, default_value_t = 1.1)]
    pub lambda_growth: f64,
    /// SNL: λ schedule: snl (grow when the count sets no new low, from
    /// --lambda-patience on) or grow (after every epoch above budget).
    #[arg(long, value_enum, default_value = "snl")]
    pub lambda_schedule: snl::LambdaSchedule,
    /// SNL: first epoch at which λ may grow (SNL: 5).
    #[arg(long, default_value_t = 5)]
    pub lambda_patience: usize,
    /// SNL: α threshold counting as a ReLU (SNL: 1e-2).
    #[arg(long, default_value_t = 1e-2)]
    pub alpha_threshold: f64,
    /// SNL: clamp α to [0, 1] after every step (not in SNL).
    #[arg(long)]
    pub alpha_clamp: bool,
    /// SNL: stop the search after the first epoch (SNL) or step within budget.
    #[arg(long, value_enum, default_value = "epoch")]
    pub snl_stop: snl::Stop,
    /// SNL: final mask: α > threshold (SNL) or exactly the budget's largest α.
    #[arg(long, value_enum, default_value = "threshold")]
    pub snl_select: snl::Select,
    /// AutoReP: replacement polynomial degree: 2 (DaPa), 1 (first-order ablation), 0 (identity).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub poly: u8,
    /// AutoReP: hysteresis threshold t_h (paper: 0.003).
    #[arg(long, default_value_t = 0.003)]
    pub hysteresis: f64,
    /// AutoReP: ReLU-count penalty weight on the density (the code's λ, default 10; μ = λ / #indicators).
    #[arg(long, default_value_t = 10.0)]
    pub mu: f64,
    /// AutoReP: replacement epochs (paper: 150).
    #[arg(long, default_value_t = 150)]
    pub replace_epochs: usize,
    /// AutoReP: Adam learning rate of the weights (paper: 1e-4).
    #[arg(long, default_value_t = 1e-4)]
    pub replace_lr: f64,
    /// AutoReP: Adam learning rate of the indicators' auxiliary parameters (paper: 1e-3).
    #[arg(long, default_value_t = 1e-3)]
    pub indicator_lr: f64,
    /// AutoReP: iterations during which DaPa recomputes the coefficients (code: 500).
    #[arg(long, default_value_t = 500)]
    pub dapa_iterations: usize,
    /// ReLUPruner / PrivShap: epochs of the pruning phase (ReLUPruner: 150 on CIFAR-10; default: --epochs).
    #[arg(long)]
    pub prune_epochs: Option<usize>,
    /// ReLUPruner / PrivShap: learning rate of the pruning phase (ReLUPruner SGD 0.1, PrivShap Adam 1e-3).
    #[arg(long)]
    pub prune_lr: Option<f64>,
    /// ReLUPruner: Taylor order of the unit importance (its Table 4 ablation).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub taylor_order: u8,
    /// ReLUPruner: weight units by layer importance (its Table 5 ablation).
    #[arg(long, value_enum, default_value = "on")]
    pub layer_weight: OnOff,
    /// ReLUPruner: EMA momentum of the importance (paper 0.9; its code 0.95).
    #[arg(long, default_value_t = 0.9)]
    pub ema: f64,
    /// ReLUPruner: warm-up epochs before pruning starts (code: 5).
    #[arg(long, default_value_t = 5)]
    pub warmup_epochs: usize,
    /// ReLUPruner: batches between mask updates (code: 100).
    #[arg(long, default_value_t = 100)]
    pub mask_update_interval: usize,
    /// ReLUPruner: β of the PRAM loss while fine-tuning (paper: 1000).
    #[arg(long, default_value_t = 1000.0)]
    pub pram_beta: f64,
    /// PrivShap: Shapley estimator.
    #[arg(long, value_enum, default_value = "tree")]
    pub shapley: methods::privshap::Estimator,
    /// PrivShap: tree-trimming threshold on validation accuracy (paper: 5 %).
    #[arg(long, default_value_t = 0.05)]
    pub shapley_threshold: f64,
    /// PrivShap: Monte-Carlo permutations.
    #[arg(long, default_value_t = 100)]
    pub mc_samples: usize,
    /// PrivShap: also log the Monte-Carlo estimate for comparison.
    #[arg(long)]
    pub shapley_compare: bool,
    /// Coarse methods: criticality order, least to most critical (e.g. 1,4,2,3); skips the probes.
    #[arg(long, value_delimiter = ',')]
    pub criticality_order: Option<Vec<usize>>,
    /// Coarse methods: train and write every candidate (the Pareto set).
    #[arg(long)]
    pub pareto: bool,
    /// Coarse methods: start candidates of unchanged width from the teacher's weights.
    #[arg(long)]
    pub warm_start: bool,
    /// Checkpoint folder (per phase); default `<out>.ckpt/`.
    #[arg(long)]
    pub checkpoint_dir: Option<PathBuf>,
    /// Resume from the checkpoint folder (finished phases are restored, a
    /// partial one continues at its next epoch with its optimiser state).
    #[arg(long)]
    pub resume: bool,
    /// JSON log; default `<out>.log.json`.
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Seed for initialisation, shuffling, augmentation, the validation split and tie-breaking.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// CPU threads for libtorch (default: libtorch's choice).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Hide progress bars.
    #[arg(long)]
    pub no_progress: bool,
    /// Calibrate the exported file's per-site magnitude bounds on this many
    /// training images spread evenly over the split (what `pibench
    /// calibrate` does; 0 = write no bounds).
    #[arg(long, default_value_t = 1000)]
    pub calibrate_images: usize,
    /// Margin of the calibrated bounds in bits (bounds = maxima × 2^margin).
    #[arg(long, default_value_t = pibench_models::calibrate::DEFAULT_MARGIN_BITS,
          value_parser = clap::value_parser!(u32).range(0..=16))]
    pub calibrate_margin_bits: u32,
    /// Stop after this many epochs (all phases together), leaving a partial
    /// checkpoint to --resume from (tests and pre-emptible machines).
    #[arg(long)]
    pub interrupt_after: Option<usize>,
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

impl PruneCli {
    /// The counting convention of the run.
    ///
    /// SNL, AutoReP and ReLUPruner have no stem ReLU (their sites the
    /// convention does not count are made the identity); ReLUPruner masks
    /// (and counts) the final BN-ReLU of WRNs; the others count the stem.
    pub fn convention(&self) -> Convention {
        let stem = self.count_stem.unwrap_or(!self.identity_uncounted());
        Convention {
            stem_relu: stem,
            final_relu: self.method == Method::Relupruner,
        }
    }

    /// Whether uncounted sites are the identity (the method's published network).
    pub fn identity_uncounted(&self) -> bool {
        matches!(
            self.method,
            Method::Snl | Method::Autorep | Method::Relupruner
        )
    }

    fn coarse(&self) -> bool {
        matches!(self.method, Method::Deepreduce | Method::Deepreshape)
    }

    /// The phase settings of teacher/probes/candidates/fine-tuning.
    pub fn train_config(&self) -> TrainConfig {
        let schedule = match self.schedule {
            Some(ScheduleKind::Cosine) => Schedule::Cosine,
            Some(ScheduleKind::Constant) => Schedule::Constant,
            Some(ScheduleKind::Step) => Schedule::Step {
                every: self.step_every,
                gamma: self.step_gamma,
            },
            None if self.coarse() && self.dataset != DatasetKind::Cifar10 => Schedule::Step {
                every: self.step_every,
                gamma: self.step_gamma,
            },
            None => Schedule::Cosine,
        };
        TrainConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            momentum: self.momentum,
            nesterov: self.nesterov,
            weight_decay: self
                .weight_decay
                .unwrap_or(if self.coarse() { 4e-4 } else { 5e-4 }),
            optimizer: self.optimizer,
            schedule,
            max_steps: self.max_steps,
            amp: self.amp,
            seed: self.seed,
            method_lr: None,
        }
    }
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
    if !(0.0..1.0).contains(&args.val_fraction) {
        anyhow::bail!("--val-fraction must be in [0, 1)");
    }
    let convention = args.convention();
    let factory = SpecFactory {
        model: args.model.clone(),
        base_channels: args.base_channels,
        width: args.width_multiplier,
        native: args.dataset.input(),
        classes: args.dataset.classes(),
        convention,
    };
    let base = factory.base()?;
    let budget_graph = if args.identity_uncounted() {
        methods::uncounted_identity(&base, convention)
    } else {
        base.clone()
    };
    methods::check_budget(&budget_graph, convention, args.budget)?;
    if args.method == Method::Deepreshape && !args.model.to_ascii_lowercase().starts_with("hrn") {
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
        let stages = methods::deepreduce::stages(&base);
        let floor = methods::deepreduce_floor(&factory, &stages)?;
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
    let all_train = dataset.train.take(args.train_limit.unwrap_or(usize::MAX));
    let n_val = (all_train.len() as f64 * args.val_fraction).round() as usize;
    let (train, val) = all_train.split_validation(n_val, args.seed);
    let test = dataset.test.take(args.test_limit.unwrap_or(usize::MAX));
    eprintln!(
        "{}: {} train / {} validation / {} test images; device {device:?}; {} with {} counted ReLUs",
        args.dataset.name(),
        train.len(),
        val.len(),
        test.len(),
        base.name,
        pibench_models::count::relu_count(&budget_graph, convention)
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
    let train_cfg = args.train_config();
    let pre = Preprocess::new(args.dataset, base.input.h as i64, device);
    let checkpoints = Checkpoints {
        dir: args
            .checkpoint_dir
            .clone()
            .unwrap_or_else(|| with_suffix(&args.out, ".ckpt")),
        resume: args.resume,
    };
    let trainer = Trainer {
        train: &train,
        val: &val,
        test: &test,
        pre,
        log: &mut log,
        checkpoints: Some(checkpoints),
        progress: !args.no_progress,
        interrupt_after: args.interrupt_after,
        epochs_run: 0,
    };
    let teacher = args.teacher.clone().map(|path| TeacherFile {
        path,
        scheme: match args.teacher_scheme {
            TeacherScheme::Plain => Scheme::Plain,
            TeacherScheme::Snl => Scheme::Snl,
            TeacherScheme::Autorep => Scheme::Autorep,
            TeacherScheme::Relupruner => Scheme::Relupruner,
        },
    });
    let mut ctx = Context {
        trainer,
        train: train_cfg.clone(),
        kd: KdConfig::hinton(args.kd_temperature, args.kd_weight),
        device,
        dataset: args.dataset,
        teacher,
        convention,
    };
    let coarse = CoarseRun {
        budget: args.budget,
        order: args.criticality_order.clone(),
        pareto: args.pareto,
        warm_start: args.warm_start,
    };
    let produced = match args.method {
        Method::Snl => {
            let mut cfg = snl::SnlConfig::published(args.budget, args.seed);
            cfg.lambda = args.lambda;
            cfg.lambda_growth = args.lambda_growth;
            cfg.schedule = args.lambda_schedule;
            cfg.patience = args.lambda_patience;
            cfg.threshold = args.alpha_threshold;
            cfg.clamp = args.alpha_clamp;
            cfg.stop = args.snl_stop;
            cfg.select = args.snl_select;
            let mut search = snl::search_config(&train_cfg, args.search_epochs, args.search_lr);
            search.method_lr = args.alpha_lr;
            let run = SnlRun {
                snl: cfg,
                search,
                finetune: snl::finetune_config(
                    &train_cfg,
                    args.finetune_epochs.unwrap_or(args.epochs),
                    args.finetune_lr,
                ),
            };
            vec![methods::run_snl(&mut ctx, &base, &run)?]
        }
        Method::Deepreduce => methods::run_deepreduce(&mut ctx, &factory, &coarse)?,
        Method::Deepreshape => methods::run_deepreshape(&mut ctx, &factory, &coarse)?,
        Method::Autorep => {
            let replace = TrainConfig {
                epochs: args.replace_epochs,
                lr: args.replace_lr,
                optimizer: OptimizerKind::Adam,
                weight_decay: 0.0,
                schedule: Schedule::Cosine,
                method_lr: Some(args.indicator_lr),
                ..train_cfg.clone()
            };
            let finetune = TrainConfig {
                epochs: args.epochs,
                method_lr: None,
                ..replace.clone()
            };
            let run = methods::AutorepRun {
                cfg: methods::autorep::AutorepConfig {
                    budget: args.budget,
                    threshold: args.hysteresis,
                    mu: args.mu,
                    poly: args.poly,
                    dapa_iterations: args.dapa_iterations,
                    dapa_every: 10,
                    var_min: 0.04,
                    seed: args.seed,
                },
                replace,
                finetune,
            };
            vec![methods::run_autorep(&mut ctx, &base, &run)?]
        }
        Method::Relupruner => {
            let prune_epochs = args.prune_epochs.unwrap_or(args.epochs);
            let prune = TrainConfig {
                epochs: prune_epochs,
                lr: args.prune_lr.unwrap_or(0.1),
                optimizer: OptimizerKind::Sgd,
                momentum: 0.9,
                ..train_cfg.clone()
            };
            let run = methods::ReluprunerRun {
                cfg: methods::relupruner::ReluprunerConfig {
                    budget: args.budget,
                    taylor_order: args.taylor_order,
                    layer_weight: args.layer_weight == OnOff::On,
                    ema: args.ema,
                    window: 10,
                    warmup: args.warmup_epochs,
                    target_fraction: 0.6,
                    interval: args.mask_update_interval,
                    epochs: prune_epochs,
                },
                prune,
                finetune: train_cfg.clone(),
                beta: args.pram_beta,
            };
            vec![methods::run_relupruner(&mut ctx, &base, &run)?]
        }
        Method::Privshap => {
            let prune = TrainConfig {
                epochs: args.prune_epochs.unwrap_or(args.epochs),
                lr: args.prune_lr.unwrap_or(1e-3),
                optimizer: OptimizerKind::Adam,
                weight_decay: 0.0,
                schedule: Schedule::Cosine,
                ..train_cfg.clone()
            };
            let run = methods::PrivshapRun {
                budget: args.budget,
                estimator: args.shapley,
                threshold: args.shapley_threshold,
                mc_samples: args.mc_samples,
                compare: args.shapley_compare,
                prune,
                finetune: train_cfg.clone(),
                seed: args.seed,
            };
            vec![methods::run_privshap(&mut ctx, &base, &run)?]
        }
    };
    drop(ctx);

    let mut written = Vec::new();
    for (i, p) in produced.iter().enumerate() {
        let path = if i == 0 {
            args.out.clone()
        } else {
            with_suffix(&args.out, &format!(".{}.safetensors", p.label))
        };
        let cal = export::Calibration {
            data: &args.data,
            dataset: args.dataset.dataset(),
            images: args.calibrate_images,
            margin_bits: args.calibrate_margin_bits,
            threads: args.threads.map_or_else(
                || std::thread::available_parallelism().map_or(1, |n| n.get()),
                |t| t.max(1) as usize,
            ),
        };
        let (relus, calibration) =
            export::save_calibrated(&p.net, args.dataset.name(), &path, Some(&cal))?;
        eprintln!(
            "wrote {} ({}, {relus} ReLUs, validation accuracy {:.4}, test accuracy {:.4})",
            path.display(),
            p.label,
            p.result.val_acc,
            p.result.test_acc
        );
        let calibration = match calibration {
            export::CalibrationOutcome::Skipped => serde_json::json!("skipped"),
            export::CalibrationOutcome::Stored {
                points,
                max_bits,
                images,
            } => {
                eprintln!(
                    "  calibrated bounds stored: {points} truncation points on {images} training images, largest ℓ = {max_bits} bits (margin {} bit(s))",
                    args.calibrate_margin_bits
                );
                serde_json::json!({ "points": points, "max_bits": max_bits, "images": images })
            }
            export::CalibrationOutcome::Failed(why) => {
                eprintln!(
                    "  warning: no calibrated bounds stored ({why}); `pibench run` needs --trunc exact or --uncalibrated for this file"
                );
                serde_json::json!({ "failed": why })
            }
        };
        written.push(serde_json::json!({
            "file": path.display().to_string(),
            "label": p.label,
            "relus": relus,
            "val_acc": p.result.val_acc,
            "test_acc": p.result.test_acc,
            "budget": args.budget,
            "exact": relus as i64 == args.budget,
            "calibration": calibration,
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
                "{}: {relus} ReLUs (budget {}; {})",
                args.out.display(),
                args.budget,
                match args.method {
                    Method::Snl => "SNL keeps the alphas above its threshold",
                    _ => "nearest achievable",
                }
            );
        }
    }
    Ok(())
}
