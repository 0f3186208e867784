//! Datasets for training, augmentation and batching.
//!
//! Reading is `pibench_models::data`'s (one reader for the CLI's `accuracy`,
//! `calibrate` and `client --data` and for training): CIFAR-10/100 binary and
//! Tiny-ImageNet folders, `--data DIR` at the dataset folder or its parent,
//! every malformed record an error naming file, record and byte offset. Here
//! the images are held as `u8` tensors `[N, 3, H, W]` on the CPU; batches are
//! moved to the device, converted to `f32`, augmented (random crop with
//! 4-pixel zero padding, horizontal flip) and normalised there with the same
//! constants (`Dataset::normalisation`).

use std::path::Path;

use pibench_models::arch::Dataset as ModelDataset;
use pibench_models::data::{ImageSet, Split as DataSplit};
use rand::seq::SliceRandom;
use rand::Rng;
use tch::{Device, Kind, Tensor};

pub use pibench_models::data::DataError;

/// Bytes of one 32×32 RGB image in the CIFAR binary formats.
pub const CIFAR_IMAGE_BYTES: usize = 3 * 32 * 32;

/// The supported datasets (the command-line names of [`ModelDataset`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// CIFAR-10, binary version.
    Cifar10,
    /// CIFAR-100, binary version.
    Cifar100,
    /// Tiny-ImageNet-200.
    #[value(alias = "tinyimagenet")]
    TinyImagenet,
}

impl DatasetKind {
    /// The models crate's dataset.
    pub fn dataset(self) -> ModelDataset {
        match self {
            DatasetKind::Cifar10 => ModelDataset::Cifar10,
            DatasetKind::Cifar100 => ModelDataset::Cifar100,
            DatasetKind::TinyImagenet => ModelDataset::TinyImageNet,
        }
    }

    /// Number of classes.
    pub fn classes(self) -> usize {
        self.dataset().num_classes()
    }

    /// Image side length in pixels.
    pub fn image_size(self) -> i64 {
        self.dataset().native_side() as i64
    }

    /// Input shape `3 × side × side`.
    pub fn input(self) -> pibench_models::graph::FeatureShape {
        self.dataset().input()
    }

    /// Name used in model files and logs (as in `pibench_models::file`).
    pub fn name(self) -> &'static str {
        self.dataset().name()
    }

    /// Per-channel mean and standard deviation used for normalisation.
    pub fn normalisation(self) -> ([f32; 3], [f32; 3]) {
        self.dataset().normalisation()
    }
}

/// One split of a dataset, in memory.
#[derive(Debug)]
pub struct Split {
    /// Images, `u8`, `[N, 3, H, W]`, on the CPU.
    pub images: Tensor,
    /// Labels, `i64`, `[N]`, on the CPU.
    pub labels: Tensor,
}

impl Split {
    /// The images of `set` as tensors.
    fn of(set: &ImageSet) -> Split {
        let n = set.len() as i64;
        let side = set.side() as i64;
        let labels: Vec<i64> = set.labels().iter().map(|&l| l as i64).collect();
        Split {
            images: Tensor::from_slice(set.pixels()).view([n, 3, side, side]),
            labels: Tensor::from_slice(&labels),
        }
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.size()[0] as usize
    }

    /// Whether the split is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The examples at `indices`.
    pub fn select(&self, indices: &[i64]) -> Split {
        let idx = Tensor::from_slice(indices);
        Split {
            images: self.images.index_select(0, &idx),
            labels: self.labels.index_select(0, &idx),
        }
    }

    /// Holds out `n` examples chosen by a seeded shuffle as a validation
    /// split: returns `(train, validation)`. With `n = 0` the validation
    /// split is empty. Criticality, Pareto choices and Shapley values are
    /// measured on it, never on the test split.
    pub fn split_validation(&self, n: usize, seed: u64) -> (Split, Split) {
        use rand::SeedableRng;
        let n = n.min(self.len().saturating_sub(1));
        let mut order: Vec<i64> = (0..self.len() as i64).collect();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
            seed ^ 0x7a11_da7e,
        ));
        let (val, train) = order.split_at(n);
        let mut train = train.to_vec();
        let mut val = val.to_vec();
        train.sort_unstable();
        val.sort_unstable();
        (self.select(&train), self.select(&val))
    }

    /// The first `n` examples (all if fewer).
    pub fn take(&self, n: usize) -> Split {
        let n = n.min(self.len()) as i64;
        Split {
            images: self.images.narrow(0, 0, n),
            labels: self.labels.narrow(0, 0, n),
        }
    }
}

/// A loaded dataset: train and test splits.
#[derive(Debug)]
pub struct Dataset {
    /// Which dataset.
    pub kind: DatasetKind,
    /// Training split.
    pub train: Split,
    /// Test (CIFAR) or validation (Tiny-ImageNet) split.
    pub test: Split,
}

impl Dataset {
    /// Loads both splits of `kind` from `dir` (the dataset folder or its parent).
    pub fn load(kind: DatasetKind, dir: &Path) -> Result<Dataset, DataError> {
        let d = kind.dataset();
        let train = ImageSet::load(d, dir, DataSplit::Train, None)?;
        let test = ImageSet::load(d, dir, DataSplit::Test, None)?;
        Ok(Dataset {
            kind,
            train: Split::of(&train),
            test: Split::of(&test),
        })
    }
}

/// Turns `u8` batches into normalised, optionally augmented `f32` batches on a device.
#[derive(Debug, Clone)]
pub struct Preprocess {
    mean: [f32; 3],
    std: [f32; 3],
    /// Output side length: the network's input resolution (ρ·native for
    /// DeepReDuce's feature-map scaling).
    pub out_size: i64,
    /// Device the batches go to.
    pub device: Device,
}

impl Preprocess {
    /// Preprocessing for `kind` at resolution `out_size` on `device`.
    pub fn new(kind: DatasetKind, out_size: i64, device: Device) -> Preprocess {
        let (mean, std) = kind.normalisation();
        Preprocess {
            mean,
            std,
            out_size,
            device,
        }
    }

    /// Converts an `u8` batch `[B,3,H,W]` to a normalised `f32` batch; with
    /// `augment`, applies a random 4-pixel-padded crop and a random flip per image.
    pub fn apply(&self, images: &Tensor, augment: bool, rng: &mut impl Rng) -> Tensor {
        let x = images.to_device(self.device).to_kind(Kind::Float) / 255.0;
        let x = if augment { self.augment(&x, rng) } else { x };
        let side = x.size()[2];
        let x = if side != self.out_size {
            x.upsample_bilinear2d([self.out_size, self.out_size], false, None, None)
        } else {
            x
        };
        self.normalise(&x)
    }

    /// One augmented view for a student at `self.out_size` and its teacher
    /// at `teacher_size`: the crop/flip is drawn once at the stored
    /// resolution and both inputs are made from it (the teacher sees the
    /// same augmented image as the student, resized for ρ < 1).
    pub fn apply_pair(
        &self,
        images: &Tensor,
        augment: bool,
        rng: &mut impl Rng,
        teacher_size: i64,
    ) -> (Tensor, Tensor) {
        let x = images.to_device(self.device).to_kind(Kind::Float) / 255.0;
        let x = if augment { self.augment(&x, rng) } else { x };
        let side = x.size()[2];
        let resize = |t: &Tensor, size: i64| {
            if size != side {
                t.upsample_bilinear2d([size, size], false, None, None)
            } else {
                t.shallow_clone()
            }
        };
        let student = self.normalise(&resize(&x, self.out_size));
        let teacher = if teacher_size == self.out_size {
            student.shallow_clone()
        } else {
            self.normalise(&resize(&x, teacher_size))
        };
        (student, teacher)
    }

    fn normalise(&self, x: &Tensor) -> Tensor {
        let mean = Tensor::from_slice(&self.mean)
            .view([1, 3, 1, 1])
            .to_device(self.device);
        let std = Tensor::from_slice(&self.std)
            .view([1, 3, 1, 1])
            .to_device(self.device);
        (x - mean) / std
    }

    fn augment(&self, x: &Tensor, rng: &mut impl Rng) -> Tensor {
        const PAD: i64 = 4;
        let size = x.size();
        let (b, h, w) = (size[0], size[2], size[3]);
        let padded = x
            .constant_pad_nd([PAD, PAD, PAD, PAD])
            .permute([0, 2, 3, 1]);
        let dy: Vec<i64> = (0..b).map(|_| rng.gen_range(0..=2 * PAD)).collect();
        let dx: Vec<i64> = (0..b).map(|_| rng.gen_range(0..=2 * PAD)).collect();
        let flip: Vec<bool> = (0..b).map(|_| rng.gen_bool(0.5)).collect();
        let dev = self.device;
        let rows = Tensor::from_slice(&dy).to_device(dev).view([b, 1, 1])
            + Tensor::arange(h, (Kind::Int64, dev)).view([1, h, 1]);
        let base_cols = Tensor::arange(w, (Kind::Int64, dev)).view([1, 1, w]);
        let flip_t = Tensor::from_slice(&flip).to_device(dev).view([b, 1, 1]);
        let cols_in_crop = base_cols.where_self(&flip_t.logical_not(), &((w - 1) - &base_cols));
        let cols = Tensor::from_slice(&dx).to_device(dev).view([b, 1, 1]) + cols_in_crop;
        let n = Tensor::arange(b, (Kind::Int64, dev)).view([b, 1, 1]);
        padded
            .index(&[Some(n), Some(rows), Some(cols)])
            .permute([0, 3, 1, 2])
            .contiguous()
    }
}

/// Shuffled (or sequential) mini-batch index lists over a split.
pub fn batch_indices(n: usize, batch: usize, shuffle: bool, rng: &mut impl Rng) -> Vec<Tensor> {
    let mut order: Vec<i64> = (0..n as i64).collect();
    if shuffle {
        order.shuffle(rng);
    }
    order.chunks(batch.max(1)).map(Tensor::from_slice).collect()
}
