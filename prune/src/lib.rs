//! pibench-prune: trains and ReLU-prunes networks on libtorch and exports them
//! as pibench model files.
//!
//! * [`arch`]: model names → `pibench_models` architectures (the one definition);
//! * [`data`]: CIFAR-10/100 binary and Tiny-ImageNet folders, validation split, augmentation;
//! * [`net`]: libtorch modules built from the models graph, per-element masks;
//! * [`optim`]: SGD/Adam with checkpointable state;
//! * [`train`]: the training loop (schedules, KD, mixed precision, checkpoints);
//! * [`methods`]: SNL, DeepReDuce, DeepReShape, AutoReP, ReLUPruner, PrivShap;
//! * [`export`]: model files for `pibench_models`;
//! * [`cli`]: the `piprune` command.

pub mod arch;
pub mod cli;
pub mod data;
pub mod export;
pub mod methods;
pub mod net;
pub mod optim;
pub mod train;
