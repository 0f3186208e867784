//! pibench-prune: trains and ReLU-masks networks on libtorch and exports them
//! as pibench model files.
//!
//! * [`data`]: CIFAR-10/100 binary and Tiny-ImageNet folders, augmentation;
//! * [`net`]: ResNet-family networks with per-element ReLU masks;
//! * [`train`]: the training loop (SGD/Adam, schedules, KD, AMP, checkpoints);
//! * [`methods`]: SNL, DeepReDuce, DeepReShape;
//! * [`export`]: model files for `pibench_models`;
//! * [`cli`]: the `piprune` command.

pub mod cli;
pub mod data;
pub mod export;
pub mod methods;
pub mod net;
pub mod train;
