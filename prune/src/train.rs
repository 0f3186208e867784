//! Training loop: SGD/Adam, cosine and step schedules, Hinton KD, mixed
//! precision on CUDA, per-phase checkpoints with resume, top-1 evaluation,
//! progress bars and a JSON log.

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Reduction, Tensor};
use thiserror::Error;

use crate::data::{batch_indices, Preprocess, Split};
use crate::net::Network;

/// Errors of training.
#[derive(Debug, Error)]
pub enum TrainError {
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A checkpoint or log file could not be written or read.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Training diverged.
    #[error("loss became non-finite at epoch {epoch}, step {step}")]
    Diverged {
        /// Epoch (0-based).
        epoch: usize,
        /// Step within the epoch.
        step: usize,
    },
}

/// Optimiser choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    /// SGD with momentum and weight decay.
    Sgd,
    /// Adam with weight decay.
    Adam,
}

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// Cosine annealing from the base rate to 0 over the phase.
    Cosine,
    /// Multiply by `gamma` every `every` epochs.
    Step {
        /// Period in epochs.
        every: usize,
        /// Factor.
        gamma: f64,
    },
}

impl Schedule {
    /// Learning rate at `epoch` of `epochs`.
    pub fn lr(&self, base: f64, epoch: usize, epochs: usize) -> f64 {
        match *self {
            Schedule::Cosine => {
                let t = epoch as f64 / epochs.max(1) as f64;
                0.5 * base * (1.0 + (std::f64::consts::PI * t).cos())
            }
            Schedule::Step { every, gamma } => base * gamma.powi((epoch / every.max(1)) as i32),
        }
    }
}

/// Hinton knowledge distillation settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KdConfig {
    /// Softmax temperature (4 in DeepReDuce and SNL).
    pub temperature: f64,
    /// Weight of the distillation term; `1 − weight` goes to cross-entropy.
    pub weight: f64,
}

impl Default for KdConfig {
    fn default() -> Self {
        KdConfig {
            temperature: 4.0,
            weight: 0.9,
        }
    }
}

/// Hyper-parameters of one training phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Epochs.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Base learning rate.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Optimiser.
    pub optimizer: OptimizerKind,
    /// Schedule.
    pub schedule: Schedule,
    /// Steps per epoch cap (tests and smoke runs); `None` = full epochs.
    pub max_steps: Option<usize>,
    /// Mixed precision (used only on CUDA).
    pub amp: bool,
    /// RNG seed for shuffling and augmentation.
    pub seed: u64,
    /// Learning rate of SNL's `α` (optimiser group 1), when present.
    pub alpha_lr: f64,
}

/// One epoch's record in the JSON log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Phase label.
    pub phase: String,
    /// Epoch (0-based).
    pub epoch: usize,
    /// Learning rate used.
    pub lr: f64,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training top-1 accuracy (on augmented batches).
    pub train_acc: f64,
    /// Test top-1 accuracy.
    pub test_acc: f64,
    /// Kept ReLUs at the end of the epoch.
    pub relus: i64,
    /// Wall time of the epoch's training steps, seconds.
    pub seconds: f64,
    /// Training images per second.
    pub images_per_second: f64,
    /// Method-specific values (e.g. SNL's λ and α-count).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub extra: serde_json::Value,
}

/// The run log: configuration, per-epoch records, results; rewritten after every epoch.
#[derive(Debug, Default, Serialize)]
pub struct RunLog {
    /// Where it is written (none: kept in memory).
    #[serde(skip)]
    pub path: Option<PathBuf>,
    /// The command line's settings.
    pub config: serde_json::Value,
    /// Epoch records of all phases.
    pub epochs: Vec<EpochRecord>,
    /// Results (networks produced, counts, accuracies).
    pub results: Vec<serde_json::Value>,
}

impl RunLog {
    /// Writes the log if it has a path.
    pub fn flush(&self) -> Result<(), TrainError> {
        if let Some(path) = &self.path {
            let text = serde_json::to_string_pretty(self).map_err(|e| TrainError::File {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            std::fs::write(path, text).map_err(|e| TrainError::File {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }
}

/// What a per-epoch hook tells the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Keep training.
    Continue,
    /// Stop after this epoch.
    Stop,
}

/// Method hooks of a training phase.
pub trait PhaseHooks {
    /// Extra loss added to the task loss (e.g. SNL's λ‖α‖₁).
    fn extra_loss(&mut self, _net: &Network) -> Option<Tensor> {
        None
    }
    /// Called after every optimiser step; `Stop` ends the phase after this step.
    fn after_step(&mut self, _net: &Network) -> Control {
        Control::Continue
    }
    /// Called after every epoch; its value is logged as the record's `extra`.
    fn after_epoch(&mut self, _epoch: usize, _net: &mut Network) -> (Control, serde_json::Value) {
        (Control::Continue, serde_json::Value::Null)
    }
    /// State to store in the checkpoint.
    fn state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Restores state from a checkpoint.
    fn restore(&mut self, _state: &serde_json::Value) {}
}

/// Hooks that do nothing.
#[derive(Debug, Default)]
pub struct NoHooks;
impl PhaseHooks for NoHooks {}

/// Per-phase checkpoint state stored beside the weights.
#[derive(Debug, Serialize, Deserialize)]
struct PhaseState {
    phase: String,
    epochs_done: usize,
    finished: bool,
    hooks: serde_json::Value,
}

/// Checkpoint folder and whether to resume from it.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    /// Folder holding `<phase>.safetensors` and `<phase>.json`.
    pub dir: PathBuf,
    /// Resume finished/partial phases found there.
    pub resume: bool,
}

impl Checkpoints {
    fn weights(&self, phase: &str) -> PathBuf {
        self.dir.join(format!("{phase}.safetensors"))
    }
    fn state(&self, phase: &str) -> PathBuf {
        self.dir.join(format!("{phase}.json"))
    }
}

/// The training context shared by a run's phases.
pub struct Trainer<'a> {
    /// Training split.
    pub train: &'a Split,
    /// Test split.
    pub test: &'a Split,
    /// Preprocessing to the network's input.
    pub pre: Preprocess,
    /// Teacher preprocessing (native resolution).
    pub teacher_pre: Preprocess,
    /// Log.
    pub log: &'a mut RunLog,
    /// Checkpoints.
    pub checkpoints: Option<Checkpoints>,
    /// Show progress bars.
    pub progress: bool,
}

impl std::fmt::Debug for Trainer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("train", &self.train.len())
            .field("test", &self.test.len())
            .finish()
    }
}

/// Hinton KD loss: `(1−w)·CE(s, y) + w·T²·KL(softmax(t/T) ‖ softmax(s/T))`.
pub fn kd_loss(student: &Tensor, teacher: &Tensor, labels: &Tensor, kd: &KdConfig) -> Tensor {
    let t = kd.temperature;
    let ce = student.cross_entropy_for_logits(labels);
    let log_p = (student / t).log_softmax(-1, Kind::Float);
    let q = (teacher / t).softmax(-1, Kind::Float);
    let batch = student.size()[0] as f64;
    let kl = log_p.kl_div(&q, Reduction::Sum, false) / batch;
    ce * (1.0 - kd.weight) + kl * (kd.weight * t * t)
}

impl Trainer<'_> {
    /// Trains `net` for one phase. With `teacher`, the loss is Hinton KD.
    /// Returns the final test accuracy.
    pub fn run_phase(
        &mut self,
        phase: &str,
        net: &mut Network,
        teacher: Option<&Network>,
        kd: KdConfig,
        cfg: &TrainConfig,
        hooks: &mut dyn PhaseHooks,
    ) -> Result<f64, TrainError> {
        let mut start_epoch = 0;
        if let Some(ck) = self.checkpoints.clone() {
            let state_path = ck.state(phase);
            if ck.resume && state_path.exists() {
                let text = std::fs::read_to_string(&state_path).map_err(|e| TrainError::File {
                    path: state_path.clone(),
                    reason: e.to_string(),
                })?;
                let state: PhaseState =
                    serde_json::from_str(&text).map_err(|e| TrainError::File {
                        path: state_path.clone(),
                        reason: e.to_string(),
                    })?;
                net.load(&ck.weights(phase))?;
                hooks.restore(&state.hooks);
                if state.finished {
                    eprintln!("phase {phase}: restored finished checkpoint");
                    return self.evaluate(net);
                }
                start_epoch = state.epochs_done;
                eprintln!("phase {phase}: resuming at epoch {start_epoch}");
            }
        }

        let device = net.vs.device();
        let mut opt = match cfg.optimizer {
            OptimizerKind::Sgd => nn::Sgd {
                momentum: cfg.momentum,
                dampening: 0.0,
                wd: cfg.weight_decay,
                nesterov: cfg.momentum > 0.0,
            }
            .build(&net.vs, cfg.lr)?,
            OptimizerKind::Adam => nn::Adam {
                wd: cfg.weight_decay,
                ..Default::default()
            }
            .build(&net.vs, cfg.lr)?,
        };
        // Registers the store's variables (creating optimiser group 1 when
        // SNL's α exist) so that per-group settings can be applied.
        opt.zero_grad();
        let has_alpha_group = net.vs.variables().keys().any(|k| k.starts_with("alphas."));
        if has_alpha_group {
            opt.set_weight_decay_group(1, 0.0);
        }
        let amp = cfg.amp && device.is_cuda();
        let mut scaler = LossScaler::new(amp);
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ hash_phase(phase));
        // Skip the RNG ahead for resumed epochs so shuffles stay reproducible.
        for _ in 0..start_epoch {
            let _ = batch_indices(self.train.len(), cfg.batch_size, true, &mut rng);
        }
        let mut acc = 0.0;
        for epoch in start_epoch..cfg.epochs {
            let lr = cfg.schedule.lr(cfg.lr, epoch, cfg.epochs);
            opt.set_lr_group(0, lr);
            if has_alpha_group {
                opt.set_lr_group(1, cfg.alpha_lr);
            }
            let batches = batch_indices(self.train.len(), cfg.batch_size, true, &mut rng);
            let steps = cfg
                .max_steps
                .map_or(batches.len(), |m| m.min(batches.len()));
            let bar = self.bar(
                steps as u64,
                &format!("{phase} {}/{}", epoch + 1, cfg.epochs),
            );
            let (mut loss_sum, mut seen) = (0.0, 0i64);
            let mut correct: Option<Tensor> = None;
            let started = Instant::now();
            let mut stopped_early = false;
            let mut steps_done = 0usize;
            for (step, idx) in batches.iter().take(steps).enumerate() {
                let raw = self.train.images.index_select(0, idx);
                let labels = self.train.labels.index_select(0, idx).to_device(device);
                let x = self.pre.apply(&raw, true, &mut rng);
                let teacher_logits = teacher.map(|t| {
                    let tx = if self.teacher_pre.out_size == self.pre.out_size {
                        x.shallow_clone()
                    } else {
                        self.teacher_pre.apply(&raw, false, &mut rng)
                    };
                    tch::no_grad(|| with_amp(amp, || t.forward_t(&tx, false)))
                });
                let logits = with_amp(amp, || net.forward_t(&x, true)).to_kind(Kind::Float);
                let mut loss = match &teacher_logits {
                    Some(t) => kd_loss(&logits, &t.to_kind(Kind::Float), &labels, &kd),
                    None => logits.cross_entropy_for_logits(&labels),
                };
                if let Some(extra) = hooks.extra_loss(net) {
                    loss += extra;
                }
                scaler.step(&mut opt, &net.vs, &loss);
                // One host synchronisation per step (the loss), as in the
                // PyTorch reference loop; the hit count stays on the device.
                let loss_value = loss.double_value(&[]);
                if !loss_value.is_finite() && !amp {
                    return Err(TrainError::Diverged { epoch, step });
                }
                let step_control = hooks.after_step(net);
                steps_done += 1;
                loss_sum += loss_value;
                let hits = logits
                    .detach()
                    .argmax(-1, false)
                    .eq_tensor(&labels)
                    .sum(Kind::Int64);
                correct = Some(match correct {
                    Some(c) => c + hits,
                    None => hits,
                });
                seen += labels.size()[0];
                if let Some(bar) = &bar {
                    bar.inc(1);
                    if step % 25 == 0 {
                        let c = correct.as_ref().map_or(0, |c| c.int64_value(&[]));
                        bar.set_message(format!(
                            "loss {:.3} acc {:.3}",
                            loss_sum / (step + 1) as f64,
                            c as f64 / seen.max(1) as f64
                        ));
                    }
                }
                if step_control == Control::Stop {
                    stopped_early = true;
                    break;
                }
            }
            let seconds = started.elapsed().as_secs_f64();
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            let (control, extra) = hooks.after_epoch(epoch, net);
            let control = if stopped_early {
                Control::Stop
            } else {
                control
            };
            acc = self.evaluate(net)?;
            let record = EpochRecord {
                phase: phase.to_string(),
                epoch,
                lr,
                train_loss: loss_sum / steps_done.max(1) as f64,
                train_acc: correct.map_or(0, |c| c.int64_value(&[])) as f64 / seen.max(1) as f64,
                test_acc: acc,
                relus: net.relu_count(),
                seconds,
                images_per_second: seen as f64 / seconds.max(1e-9),
                extra,
            };
            eprintln!(
                "{phase} epoch {}/{}: loss {:.4} train acc {:.4} test acc {:.4} relus {} ({:.1} s, {:.0} img/s)",
                epoch + 1,
                cfg.epochs,
                record.train_loss,
                record.train_acc,
                record.test_acc,
                record.relus,
                seconds,
                record.images_per_second
            );
            self.log.epochs.push(record);
            self.log.flush()?;
            let done = control == Control::Stop || epoch + 1 == cfg.epochs;
            self.save_checkpoint(phase, net, epoch + 1, done, hooks)?;
            if control == Control::Stop {
                break;
            }
        }
        if start_epoch >= cfg.epochs {
            acc = self.evaluate(net)?;
        }
        Ok(acc)
    }

    fn save_checkpoint(
        &self,
        phase: &str,
        net: &Network,
        epochs_done: usize,
        finished: bool,
        hooks: &dyn PhaseHooks,
    ) -> Result<(), TrainError> {
        let Some(ck) = &self.checkpoints else {
            return Ok(());
        };
        std::fs::create_dir_all(&ck.dir).map_err(|e| TrainError::File {
            path: ck.dir.clone(),
            reason: e.to_string(),
        })?;
        net.save(&ck.weights(phase))?;
        let state = PhaseState {
            phase: phase.to_string(),
            epochs_done,
            finished,
            hooks: hooks.state(),
        };
        let path = ck.state(phase);
        let text = serde_json::to_string_pretty(&state).map_err(|e| TrainError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        std::fs::write(&path, text).map_err(|e| TrainError::File {
            path,
            reason: e.to_string(),
        })
    }

    fn bar(&self, len: u64, prefix: &str) -> Option<ProgressBar> {
        if !self.progress {
            return None;
        }
        let bar = ProgressBar::new(len);
        if let Ok(style) =
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(prefix.to_string());
        Some(bar)
    }

    /// Top-1 accuracy of `net` on the test split.
    pub fn evaluate(&self, net: &Network) -> Result<f64, TrainError> {
        evaluate(net, self.test, &self.pre, 256)
    }
}

/// Top-1 accuracy of `net` on `split`.
pub fn evaluate(
    net: &Network,
    split: &Split,
    pre: &Preprocess,
    batch: usize,
) -> Result<f64, TrainError> {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let device = net.vs.device();
    let mut correct = 0i64;
    tch::no_grad(|| {
        for idx in batch_indices(split.len(), batch, false, &mut rng) {
            let x = pre.apply(&split.images.index_select(0, &idx), false, &mut rng);
            let labels = split.labels.index_select(0, &idx).to_device(device);
            let pred = net.forward_t(&x, false).argmax(-1, false);
            correct += pred.eq_tensor(&labels).sum(Kind::Int64).int64_value(&[]);
        }
    });
    Ok(correct as f64 / split.len().max(1) as f64)
}

fn hash_phase(phase: &str) -> u64 {
    phase.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn with_amp<T>(amp: bool, f: impl FnOnce() -> T) -> T {
    if amp {
        tch::autocast(true, f)
    } else {
        f()
    }
}

/// Dynamic loss scaling for fp16 autocast (CUDA only); a plain step otherwise.
struct LossScaler {
    enabled: bool,
    scale: f64,
    good_steps: usize,
}

impl LossScaler {
    fn new(enabled: bool) -> LossScaler {
        LossScaler {
            enabled,
            scale: 65536.0,
            good_steps: 0,
        }
    }

    fn step(&mut self, opt: &mut nn::Optimizer, vs: &nn::VarStore, loss: &Tensor) {
        if !self.enabled {
            opt.backward_step(loss);
            return;
        }
        opt.zero_grad();
        (loss * self.scale).backward();
        let vars = vs.trainable_variables();
        let finite = tch::no_grad(|| {
            vars.iter().all(|v| {
                let g = v.grad();
                !g.defined() || g.isfinite().all().int64_value(&[]) == 1
            })
        });
        if finite {
            tch::no_grad(|| {
                for v in &vars {
                    let mut g = v.grad();
                    if g.defined() {
                        let _ = g.g_mul_scalar_(1.0 / self.scale);
                    }
                }
            });
            opt.step();
            self.good_steps += 1;
            if self.good_steps >= 2000 {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale = (self.scale / 2.0).max(1.0);
            self.good_steps = 0;
        }
    }
}

/// Picks the device for `--device`.
pub fn pick_device(name: &str) -> Result<Device, String> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            if tch::Cuda::is_available() {
                Ok(Device::Cuda(0))
            } else {
                Err("--device cuda: no CUDA device is usable (libtorch_cuda not linked or no GPU); build with --features cuda on a CUDA install".into())
            }
        }
        "auto" => Ok(Device::cuda_if_available()),
        other => Err(format!("unknown device {other:?} (cpu, cuda, auto)")),
    }
}

/// Whether `path` has a parent folder that exists (or none).
pub fn parent_exists(path: &Path) -> bool {
    path.parent()
        .map(|p| p.as_os_str().is_empty() || p.exists())
        .unwrap_or(true)
}
