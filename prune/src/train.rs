//! Training loop: SGD/Adam with parameter groups ([`crate::optim`]), cosine
//! and step schedules, knowledge distillation, mixed precision, per-phase
//! checkpoints with optimiser state and resume, validation-split
//! evaluation, progress bars and a JSON log.
//!
//! Decisions inside a run (stopping, Pareto choices, criticality, Shapley
//! values) see the validation split only; the test split is evaluated once at
//! the end of every phase, for reporting.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Reduction, Tensor};
use thiserror::Error;

use crate::data::{batch_indices, Preprocess, Split};
use crate::net::{is_method_var, Net};
use crate::optim::{Algorithm, Group, Optimizer};

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
    /// The run was interrupted on purpose ([`Trainer::interrupt_after`]); the
    /// checkpoint of the partial phase is on disk.
    #[error("interrupted in phase {phase} after {epochs} epoch(s); resume with --resume")]
    Interrupted {
        /// Phase.
        phase: String,
        /// Epochs done in this phase.
        epochs: usize,
    },
    /// Training diverged.
    #[error("loss became non-finite in phase {phase}, epoch {epoch}, step {step}")]
    Diverged {
        /// Phase.
        phase: String,
        /// Epoch (0-based).
        epoch: usize,
        /// Step within the epoch.
        step: usize,
    },
}

/// Optimiser choice on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    /// SGD with momentum and weight decay.
    Sgd,
    /// Adam (L2 weight decay).
    Adam,
}

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// Cosine annealing from the base rate to 0 over the phase (`CosineAnnealingLR`, η_min = 0).
    Cosine,
    /// Multiply by `gamma` every `every` epochs (`StepLR`).
    Step {
        /// Period in epochs.
        every: usize,
        /// Factor.
        gamma: f64,
    },
    /// Constant rate.
    Constant,
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
            Schedule::Constant => base,
        }
    }
}

/// Distillation loss `ce·CE(s, y) + kd·T²·KL(softmax(t/T) ‖ softmax(s/T))`.
///
/// DeepReDuce (Hinton): `ce = 0.1, kd = 0.9, T = 4`; SNL's code
/// (`criterion(outputs, targets) + SoftTarget(4)(outputs, outputs_t)`):
/// `ce = 1, kd = 1, T = 4`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KdConfig {
    /// Softmax temperature.
    pub temperature: f64,
    /// Weight of the cross-entropy on the labels.
    pub ce_weight: f64,
    /// Weight of the distillation term.
    pub kd_weight: f64,
}

impl KdConfig {
    /// Hinton KD with relative weight `w` of the soft targets (`(1−w)·CE + w·T²·KL`).
    pub fn hinton(temperature: f64, w: f64) -> Self {
        KdConfig {
            temperature,
            ce_weight: 1.0 - w,
            kd_weight: w,
        }
    }
}

impl Default for KdConfig {
    fn default() -> Self {
        KdConfig::hinton(4.0, 0.9)
    }
}

/// Hyper-parameters of one training phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Epochs.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Base learning rate of the weights.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Nesterov momentum (PyTorch's default is off).
    pub nesterov: bool,
    /// Weight decay of the weights.
    pub weight_decay: f64,
    /// Optimiser.
    pub optimizer: OptimizerKind,
    /// Schedule.
    pub schedule: Schedule,
    /// Steps per epoch cap (tests and smoke runs); `None` = full epochs.
    pub max_steps: Option<usize>,
    /// Mixed precision (fp16 + loss scaling on CUDA, bf16 on CPU).
    pub amp: bool,
    /// RNG seed for shuffling and augmentation.
    pub seed: u64,
    /// Learning rate of method variables (SNL's α, AutoReP's auxiliary
    /// parameters, polynomial coefficients); `None` = the weights' rate.
    /// They never get weight decay.
    pub method_lr: Option<f64>,
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
    /// Validation top-1 accuracy (held out from the training set).
    pub val_acc: f64,
    /// Counted ReLUs at the end of the epoch.
    pub relus: i64,
    /// Wall time of the epoch's training steps, seconds.
    pub seconds: f64,
    /// Training images per second.
    pub images_per_second: f64,
    /// Method-specific values (e.g. SNL's λ and α-count).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub extra: serde_json::Value,
}

/// The end of a phase: validation and test accuracy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PhaseResult {
    /// Validation top-1 accuracy.
    pub val_acc: f64,
    /// Test top-1 accuracy (reported, never used for decisions).
    pub test_acc: f64,
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
    /// Phase summaries.
    pub phases: Vec<serde_json::Value>,
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

/// What a hook tells the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Keep training.
    Continue,
    /// Stop (after this step, or after this epoch).
    Stop,
}

/// Method hooks of a training phase.
pub trait PhaseHooks {
    /// Variables the method adds to the optimiser, with their group: 1 =
    /// the method learning rate, 2 = the weights' learning rate; neither
    /// gets weight decay. Called once when the phase starts.
    fn method_params(&mut self, _net: &Net) -> Vec<(String, Tensor, usize)> {
        Vec::new()
    }
    /// Whether the network's weights are trained in this phase.
    fn train_weights(&self) -> bool {
        true
    }
    /// Called before every forward pass with the batch size (e.g. to set gates).
    fn before_step(&mut self, _net: &mut Net, _batch: i64) {}
    /// Whether [`PhaseHooks::tap`] wants the site activations.
    fn wants_tap(&self) -> bool {
        false
    }
    /// Every site's input and output of the student (`teacher = false`) and,
    /// with a teacher, of the teacher (no gradient).
    fn tap(&mut self, _teacher: bool, _site: usize, _input: &Tensor, _output: &Tensor) {}
    /// Extra loss added to the task loss (e.g. SNL's λ‖α‖₁).
    fn extra_loss(&mut self, _net: &Net) -> Option<Tensor> {
        None
    }
    /// Called after the backward pass, before the update; gradients are
    /// multiplied by `grad_scale` (mixed-precision loss scaling).
    fn after_backward(&mut self, _net: &mut Net, _grad_scale: f64) {}
    /// Called after every optimiser step; `Stop` ends the phase after this step.
    fn after_step(&mut self, _net: &mut Net) -> Control {
        Control::Continue
    }
    /// Called after every epoch with the validation accuracy; its value is
    /// logged as the record's `extra`.
    fn after_epoch(
        &mut self,
        _epoch: usize,
        _net: &mut Net,
        _val_acc: f64,
    ) -> (Control, serde_json::Value) {
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
    optimizer_steps: i64,
    loss_scale: f64,
    hooks: serde_json::Value,
    result: Option<PhaseResult>,
}

/// Checkpoint folder and whether to resume from it.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    /// Folder holding `<phase>.safetensors` (variables + optimiser state) and `<phase>.json`.
    pub dir: PathBuf,
    /// Resume finished/partial phases found there.
    pub resume: bool,
}

impl Checkpoints {
    /// The variables file of `phase`.
    pub fn weights(&self, phase: &str) -> PathBuf {
        self.dir.join(format!("{phase}.safetensors"))
    }
    fn state(&self, phase: &str) -> PathBuf {
        self.dir.join(format!("{phase}.json"))
    }
}

/// The training context shared by a run's phases.
pub struct Trainer<'a> {
    /// Training split (without the validation images).
    pub train: &'a Split,
    /// Validation split (held out from the training set).
    pub val: &'a Split,
    /// Test split (reported only).
    pub test: &'a Split,
    /// Preprocessing to the student's input.
    pub pre: Preprocess,
    /// Log.
    pub log: &'a mut RunLog,
    /// Checkpoints.
    pub checkpoints: Option<Checkpoints>,
    /// Show progress bars.
    pub progress: bool,
    /// Stop with [`TrainError::Interrupted`] after this many epochs of this
    /// invocation (a deliberate crash, to exercise resuming a partial phase).
    pub interrupt_after: Option<usize>,
    /// Epochs run by this invocation (for `interrupt_after`).
    pub epochs_run: usize,
}

impl std::fmt::Debug for Trainer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("train", &self.train.len())
            .field("val", &self.val.len())
            .field("test", &self.test.len())
            .finish()
    }
}

/// Distillation loss (see [`KdConfig`]); KL with `batchmean` reduction.
pub fn kd_loss(student: &Tensor, teacher: &Tensor, labels: &Tensor, kd: &KdConfig) -> Tensor {
    let t = kd.temperature;
    let ce = student.cross_entropy_for_logits(labels);
    let log_p = (student / t).log_softmax(-1, Kind::Float);
    let q = (teacher / t).softmax(-1, Kind::Float);
    let batch = student.size()[0] as f64;
    let kl = log_p.kl_div(&q, Reduction::Sum, false) / batch;
    ce * kd.ce_weight + kl * (kd.kd_weight * t * t)
}

/// The reduced-precision type for `--amp` on `device`: fp16 on CUDA, bf16 on CPU.
pub fn amp_kind(device: Device) -> Kind {
    if device.is_cuda() {
        Kind::Half
    } else {
        Kind::BFloat16
    }
}

/// Dynamic loss scaling for fp16 (`torch.cuda.amp.GradScaler` defaults:
/// initial 2^16, ×2 after 2000 finite steps, ×0.5 and skip on overflow).
#[derive(Debug, Clone, Copy)]
pub struct LossScaler {
    /// Whether scaling is on.
    pub enabled: bool,
    /// Current scale.
    pub scale: f64,
    good_steps: usize,
}

impl LossScaler {
    /// A scaler (a no-op when disabled).
    pub fn new(enabled: bool) -> LossScaler {
        LossScaler {
            enabled,
            scale: if enabled { 65536.0 } else { 1.0 },
            good_steps: 0,
        }
    }

    /// Records whether the step's gradients were finite; returns whether to apply the step.
    pub fn update(&mut self, finite: bool) -> bool {
        if !self.enabled {
            return finite;
        }
        if finite {
            self.good_steps += 1;
            if self.good_steps >= 2000 {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale = (self.scale / 2.0).max(1.0);
            self.good_steps = 0;
        }
        finite
    }
}

impl Trainer<'_> {
    fn new_optimizer(&self, net: &Net, cfg: &TrainConfig, hooks: &mut dyn PhaseHooks) -> Optimizer {
        let algorithm = match cfg.optimizer {
            OptimizerKind::Sgd => Algorithm::sgd(cfg.momentum, cfg.nesterov),
            OptimizerKind::Adam => Algorithm::adam(),
        };
        let mut params: Vec<(String, Tensor, usize)> = Vec::new();
        if hooks.train_weights() {
            let mut vars: Vec<(String, Tensor)> = net
                .vs
                .variables()
                .into_iter()
                .filter(|(n, t)| !is_method_var(n) && t.requires_grad())
                .collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            params.extend(vars.into_iter().map(|(n, t)| (n, t, 0)));
        }
        params.extend(hooks.method_params(net));
        let groups = vec![
            Group {
                lr: cfg.lr,
                weight_decay: cfg.weight_decay,
            },
            Group {
                lr: cfg.method_lr.unwrap_or(cfg.lr),
                weight_decay: 0.0,
            },
            Group {
                lr: cfg.lr,
                weight_decay: 0.0,
            },
        ];
        Optimizer::new(algorithm, groups, params)
    }

    /// Trains `net` for one phase. With `teacher`, the loss is [`kd_loss`].
    pub fn run_phase(
        &mut self,
        phase: &str,
        net: &mut Net,
        teacher: Option<&Net>,
        kd: KdConfig,
        cfg: &TrainConfig,
        hooks: &mut dyn PhaseHooks,
    ) -> Result<PhaseResult, TrainError> {
        let device = net.device();
        let amp = cfg.amp.then(|| amp_kind(device));
        let mut scaler = LossScaler::new(amp == Some(Kind::Half));
        let mut opt = self.new_optimizer(net, cfg, hooks);
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
                let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(ck.weights(phase))?
                    .into_iter()
                    .collect();
                load_vars(net, &tensors, &ck.weights(phase))?;
                opt.load_state(&tensors, state.optimizer_steps);
                hooks.restore(&state.hooks);
                if scaler.enabled {
                    scaler.scale = state.loss_scale;
                }
                if state.finished {
                    eprintln!("phase {phase}: restored finished checkpoint");
                    return match state.result {
                        Some(r) => Ok(r),
                        None => self.finish(phase, net),
                    };
                }
                start_epoch = state.epochs_done;
                eprintln!(
                    "phase {phase}: resuming at epoch {start_epoch} (optimiser state restored)"
                );
            }
        }

        let teacher_size = teacher.map_or(self.pre.out_size, |t| t.input().h as i64);
        for epoch in start_epoch..cfg.epochs {
            let factor = cfg.schedule.lr(1.0, epoch, cfg.epochs);
            let lr = cfg.lr * factor;
            opt.groups[0].lr = lr;
            opt.groups[1].lr = cfg.method_lr.unwrap_or(cfg.lr) * factor;
            opt.groups[2].lr = lr;
            // One RNG per epoch: a resumed phase draws the same batches.
            let mut rng = ChaCha8Rng::seed_from_u64(
                cfg.seed ^ hash_phase(phase) ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            );
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
                let (x, tx) = self.pre.apply_pair(&raw, true, &mut rng, teacher_size);
                hooks.before_step(net, labels.size()[0]);
                let tapped = hooks.wants_tap();
                let teacher_logits = teacher.map(|t| {
                    tch::no_grad(|| {
                        if tapped {
                            t.forward_tap(&tx, false, amp, &mut |i, a, b| hooks.tap(true, i, a, b))
                        } else {
                            t.forward_with(&tx, false, amp)
                        }
                    })
                });
                let logits = if tapped {
                    net.forward_tap(&x, true, amp, &mut |i, a, b| hooks.tap(false, i, a, b))
                } else {
                    net.forward_with(&x, true, amp)
                };
                let mut loss = match &teacher_logits {
                    Some(t) => kd_loss(&logits, t, &labels, &kd),
                    None => logits.cross_entropy_for_logits(&labels),
                };
                if let Some(extra) = hooks.extra_loss(net) {
                    loss += extra;
                }
                opt.zero_grad();
                if scaler.enabled {
                    (&loss * scaler.scale).backward();
                } else {
                    loss.backward();
                }
                hooks.after_backward(net, scaler.scale);
                // One host synchronisation per step: the loss and, with loss
                // scaling, whether every gradient is finite.
                let (loss_value, finite) = if scaler.enabled {
                    let grads = opt.grads();
                    let gsum = if grads.is_empty() {
                        Tensor::zeros([1], (Kind::Float, device))
                    } else {
                        Tensor::stack(
                            &grads.iter().map(|g| g.sum(Kind::Float)).collect::<Vec<_>>(),
                            0,
                        )
                        .sum(Kind::Float)
                        .view([1])
                    };
                    let both =
                        Tensor::cat(&[loss.detach().to_kind(Kind::Float).view([1]), gsum], 0)
                            .to_device(Device::Cpu);
                    let v = Vec::<f64>::try_from(&both.to_kind(Kind::Double)).unwrap_or_default();
                    (
                        v.first().copied().unwrap_or(f64::NAN),
                        v.get(1).is_some_and(|g| g.is_finite()),
                    )
                } else {
                    let l = loss.double_value(&[]);
                    (l, l.is_finite())
                };
                if !loss_value.is_finite() && !scaler.enabled {
                    return Err(TrainError::Diverged {
                        phase: phase.to_string(),
                        epoch,
                        step,
                    });
                }
                if scaler.update(finite) {
                    opt.step(scaler.scale);
                }
                let step_control = hooks.after_step(net);
                steps_done += 1;
                if loss_value.is_finite() {
                    loss_sum += loss_value;
                }
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
            let val_acc = self.evaluate_on(net, self.val)?;
            let (control, extra) = hooks.after_epoch(epoch, net, val_acc);
            let control = if stopped_early {
                Control::Stop
            } else {
                control
            };
            let record = EpochRecord {
                phase: phase.to_string(),
                epoch,
                lr,
                train_loss: loss_sum / steps_done.max(1) as f64,
                train_acc: correct.map_or(0, |c| c.int64_value(&[])) as f64 / seen.max(1) as f64,
                val_acc,
                relus: net.relu_count(),
                seconds,
                images_per_second: seen as f64 / seconds.max(1e-9),
                extra,
            };
            eprintln!(
                "{phase} epoch {}/{}: loss {:.4} train acc {:.4} val acc {:.4} relus {} ({:.1} s, {:.0} img/s)",
                epoch + 1,
                cfg.epochs,
                record.train_loss,
                record.train_acc,
                record.val_acc,
                record.relus,
                seconds,
                record.images_per_second
            );
            self.log.epochs.push(record);
            self.log.flush()?;
            let done = control == Control::Stop || epoch + 1 == cfg.epochs;
            let result = if done {
                Some(self.finish(phase, net)?)
            } else {
                None
            };
            self.save_checkpoint(phase, net, &opt, scaler.scale, epoch + 1, result, hooks)?;
            if let Some(r) = result {
                return Ok(r);
            }
            if let Some(n) = self.interrupt_after {
                self.epochs_run += 1;
                if self.epochs_run >= n {
                    return Err(TrainError::Interrupted {
                        phase: phase.to_string(),
                        epochs: epoch + 1,
                    });
                }
            }
        }
        self.finish(phase, net)
    }

    fn finish(&mut self, phase: &str, net: &Net) -> Result<PhaseResult, TrainError> {
        let r = PhaseResult {
            val_acc: self.evaluate_on(net, self.val)?,
            test_acc: self.evaluate_on(net, self.test)?,
        };
        eprintln!(
            "phase {phase}: val acc {:.4}, test acc {:.4}, {} ReLUs",
            r.val_acc,
            r.test_acc,
            net.relu_count()
        );
        self.log.phases.push(serde_json::json!({
            "phase": phase,
            "val_acc": r.val_acc,
            "test_acc": r.test_acc,
            "relus": net.relu_count(),
        }));
        self.log.flush()?;
        Ok(r)
    }

    #[allow(clippy::too_many_arguments)]
    fn save_checkpoint(
        &self,
        phase: &str,
        net: &Net,
        opt: &Optimizer,
        loss_scale: f64,
        epochs_done: usize,
        result: Option<PhaseResult>,
        hooks: &dyn PhaseHooks,
    ) -> Result<(), TrainError> {
        let Some(ck) = &self.checkpoints else {
            return Ok(());
        };
        std::fs::create_dir_all(&ck.dir).map_err(|e| TrainError::File {
            path: ck.dir.clone(),
            reason: e.to_string(),
        })?;
        let mut tensors: Vec<(String, Tensor)> = net.vs.variables().into_iter().collect();
        tensors.extend(opt.state_tensors());
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        Tensor::write_safetensors(&tensors, ck.weights(phase))?;
        let state = PhaseState {
            phase: phase.to_string(),
            epochs_done,
            finished: result.is_some(),
            optimizer_steps: opt.steps,
            loss_scale,
            hooks: hooks.state(),
            result,
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

    /// Top-1 accuracy of `net` on the validation split.
    pub fn evaluate(&self, net: &Net) -> Result<f64, TrainError> {
        self.evaluate_on(net, self.val)
    }

    fn evaluate_on(&self, net: &Net, split: &Split) -> Result<f64, TrainError> {
        let mut pre = self.pre.clone();
        pre.out_size = net.input().h as i64;
        evaluate(net, split, &pre, 256)
    }
}

/// Copies the variables of `net` from `tensors` (every variable must be there).
pub fn load_vars(
    net: &mut Net,
    tensors: &HashMap<String, Tensor>,
    path: &Path,
) -> Result<(), TrainError> {
    let mut vars = net.vs.variables();
    tch::no_grad(|| -> Result<(), TrainError> {
        for (name, var) in vars.iter_mut() {
            let src = tensors.get(name).ok_or_else(|| TrainError::File {
                path: path.to_path_buf(),
                reason: format!("checkpoint lacks variable {name}"),
            })?;
            if src.size() != var.size() {
                return Err(TrainError::File {
                    path: path.to_path_buf(),
                    reason: format!(
                        "variable {name} has shape {:?}, expected {:?}",
                        src.size(),
                        var.size()
                    ),
                });
            }
            var.copy_(&src.to_device(var.device()));
        }
        Ok(())
    })?;
    net.refresh_counts();
    Ok(())
}

/// Top-1 accuracy of `net` on `split` (0 for an empty split).
pub fn evaluate(
    net: &Net,
    split: &Split,
    pre: &Preprocess,
    batch: usize,
) -> Result<f64, TrainError> {
    if split.is_empty() {
        return Ok(0.0);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let device = net.device();
    let mut correct = 0i64;
    tch::no_grad(|| {
        for idx in batch_indices(split.len(), batch, false, &mut rng) {
            let x = pre.apply(&split.images.index_select(0, &idx), false, &mut rng);
            let labels = split.labels.index_select(0, &idx).to_device(device);
            let pred = net.forward_t(&x, false).argmax(-1, false);
            correct += pred.eq_tensor(&labels).sum(Kind::Int64).int64_value(&[]);
        }
    });
    Ok(correct as f64 / split.len() as f64)
}

fn hash_phase(phase: &str) -> u64 {
    phase.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
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
