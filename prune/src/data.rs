//! Datasets in their official on-disk layouts, augmentation and batching.
//!
//! * CIFAR-10 binary (`cifar-10-batches-bin/`: `data_batch_1..5.bin`,
//!   `test_batch.bin`, records of 1 label byte + 3072 pixel bytes);
//! * CIFAR-100 binary (`cifar-100-binary/`: `train.bin`, `test.bin`, records
//!   of 2 label bytes (coarse, fine) + 3072 pixel bytes; the fine label is used);
//! * Tiny-ImageNet (`wnids.txt`, `train/<wnid>/images/*.JPEG`,
//!   `val/images/*.JPEG` + `val/val_annotations.txt`).
//!
//! `--data DIR` may point at the dataset folder itself or at its parent.
//! Images are held as `u8` tensors `[N, 3, H, W]` on the CPU; batches are
//! moved to the device, converted to `f32`, augmented (random crop with
//! 4-pixel zero padding, horizontal flip) and normalised there.

use std::fs;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::Rng;
use tch::{Device, Kind, Tensor};
use thiserror::Error;

/// Bytes of one 32×32 RGB image in the CIFAR binary formats.
pub const CIFAR_IMAGE_BYTES: usize = 3 * 32 * 32;

/// Errors of dataset loading.
#[derive(Debug, Error)]
pub enum DataError {
    /// A file or folder the layout requires is absent.
    #[error("{dataset}: missing {path}")]
    Missing {
        /// Dataset being loaded.
        dataset: &'static str,
        /// The path that was expected.
        path: PathBuf,
    },
    /// Reading a file failed.
    #[error("{dataset}: cannot read {path}: {source}")]
    Io {
        /// Dataset being loaded.
        dataset: &'static str,
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A binary file's size is not a whole number of records.
    #[error("{dataset}: {path} has {len} bytes, not a multiple of the {record}-byte record size")]
    RecordSize {
        /// Dataset being loaded.
        dataset: &'static str,
        /// The file.
        path: PathBuf,
        /// File length in bytes.
        len: usize,
        /// Expected record size in bytes.
        record: usize,
    },
    /// A label is outside the dataset's class range.
    #[error("{dataset}: {path}: label {label} at byte offset {offset} is not below {classes}")]
    Label {
        /// Dataset being loaded.
        dataset: &'static str,
        /// The file.
        path: PathBuf,
        /// The label value.
        label: u32,
        /// Byte offset of the label.
        offset: usize,
        /// Number of classes.
        classes: usize,
    },
    /// An image could not be decoded or has the wrong size.
    #[error("{dataset}: image {path}: {reason}")]
    Image {
        /// Dataset being loaded.
        dataset: &'static str,
        /// The image file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A text index file is malformed.
    #[error("{dataset}: {path} line {line}: {reason}")]
    Index {
        /// Dataset being loaded.
        dataset: &'static str,
        /// The index file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        reason: String,
    },
    /// The dataset holds no images.
    #[error("{dataset}: {split} split is empty")]
    Empty {
        /// Dataset being loaded.
        dataset: &'static str,
        /// Split name.
        split: &'static str,
    },
}

/// The supported datasets.
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
    /// Number of classes.
    pub fn classes(self) -> usize {
        match self {
            DatasetKind::Cifar10 => 10,
            DatasetKind::Cifar100 => 100,
            DatasetKind::TinyImagenet => 200,
        }
    }

    /// Image side length in pixels.
    pub fn image_size(self) -> i64 {
        match self {
            DatasetKind::Cifar10 | DatasetKind::Cifar100 => 32,
            DatasetKind::TinyImagenet => 64,
        }
    }

    /// Input shape `3 × side × side`.
    pub fn input(self) -> pibench_models::graph::FeatureShape {
        let s = self.image_size() as usize;
        pibench_models::graph::FeatureShape::new(3, s, s)
    }

    /// Name used in model files and logs (as in `pibench_models::file`).
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100 => "cifar100",
            DatasetKind::TinyImagenet => "tinyimagenet",
        }
    }

    /// Per-channel mean and standard deviation used for normalisation.
    pub fn normalisation(self) -> ([f32; 3], [f32; 3]) {
        match self {
            DatasetKind::Cifar10 => ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
            DatasetKind::Cifar100 => ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
            DatasetKind::TinyImagenet => ([0.4802, 0.4481, 0.3975], [0.2302, 0.2265, 0.2262]),
        }
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
    /// Loads `kind` from `dir` (the dataset folder or its parent).
    pub fn load(kind: DatasetKind, dir: &Path) -> Result<Dataset, DataError> {
        let (train, test) = match kind {
            DatasetKind::Cifar10 => {
                let root = locate(dir, "cifar-10-batches-bin", "data_batch_1.bin");
                let train: Vec<PathBuf> = (1..=5)
                    .map(|i| root.join(format!("data_batch_{i}.bin")))
                    .collect();
                let test = vec![root.join("test_batch.bin")];
                (
                    read_cifar("cifar10", &train, 1, 0, 10)?,
                    read_cifar("cifar10", &test, 1, 0, 10)?,
                )
            }
            DatasetKind::Cifar100 => {
                let root = locate(dir, "cifar-100-binary", "train.bin");
                (
                    read_cifar("cifar100", &[root.join("train.bin")], 2, 1, 100)?,
                    read_cifar("cifar100", &[root.join("test.bin")], 2, 1, 100)?,
                )
            }
            DatasetKind::TinyImagenet => {
                let root = locate(dir, "tiny-imagenet-200", "wnids.txt");
                read_tiny(&root)?
            }
        };
        let name = kind.name();
        if train.is_empty() {
            return Err(DataError::Empty {
                dataset: name,
                split: "train",
            });
        }
        if test.is_empty() {
            return Err(DataError::Empty {
                dataset: name,
                split: "test",
            });
        }
        Ok(Dataset { kind, train, test })
    }
}

/// `dir/sub` if it holds `marker`, else `dir`.
fn locate(dir: &Path, sub: &str, marker: &str) -> PathBuf {
    let nested = dir.join(sub);
    if nested.join(marker).exists() {
        nested
    } else {
        dir.to_path_buf()
    }
}

fn read_file(dataset: &'static str, path: &Path) -> Result<Vec<u8>, DataError> {
    if !path.exists() {
        return Err(DataError::Missing {
            dataset,
            path: path.to_path_buf(),
        });
    }
    fs::read(path).map_err(|source| DataError::Io {
        dataset,
        path: path.to_path_buf(),
        source,
    })
}

/// Reads CIFAR binary files whose records are `label_bytes` labels followed
/// by 3072 pixels; the label used is byte `label_index` of the record.
fn read_cifar(
    dataset: &'static str,
    files: &[PathBuf],
    label_bytes: usize,
    label_index: usize,
    classes: usize,
) -> Result<Split, DataError> {
    let record = label_bytes + CIFAR_IMAGE_BYTES;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for path in files {
        let bytes = read_file(dataset, path)?;
        if bytes.is_empty() || bytes.len() % record != 0 {
            return Err(DataError::RecordSize {
                dataset,
                path: path.clone(),
                len: bytes.len(),
                record,
            });
        }
        for (i, rec) in bytes.chunks_exact(record).enumerate() {
            let label = rec[label_index] as usize;
            if label >= classes {
                return Err(DataError::Label {
                    dataset,
                    path: path.clone(),
                    label: label as u32,
                    offset: i * record + label_index,
                    classes,
                });
            }
            labels.push(label as i64);
            pixels.extend_from_slice(&rec[label_bytes..]);
        }
    }
    let n = labels.len() as i64;
    Ok(Split {
        images: Tensor::from_slice(&pixels).view([n, 3, 32, 32]),
        labels: Tensor::from_slice(&labels),
    })
}

fn read_lines(dataset: &'static str, path: &Path) -> Result<Vec<String>, DataError> {
    let bytes = read_file(dataset, path)?;
    let text = String::from_utf8(bytes).map_err(|e| DataError::Index {
        dataset,
        path: path.to_path_buf(),
        line: 0,
        reason: format!("not UTF-8: {e}"),
    })?;
    Ok(text.lines().map(|l| l.trim().to_string()).collect())
}

const TINY: &str = "tiny-imagenet";

fn read_tiny(root: &Path) -> Result<(Split, Split), DataError> {
    let wnids_path = root.join("wnids.txt");
    let wnids: Vec<String> = read_lines(TINY, &wnids_path)?
        .into_iter()
        .filter(|l| !l.is_empty())
        .collect();
    if wnids.is_empty() {
        return Err(DataError::Index {
            dataset: TINY,
            path: wnids_path,
            line: 1,
            reason: "no class ids".into(),
        });
    }
    let class_of = |wnid: &str| wnids.iter().position(|w| w == wnid);

    let mut train_files = Vec::new();
    for (class, wnid) in wnids.iter().enumerate() {
        let folder = root.join("train").join(wnid).join("images");
        let entries = fs::read_dir(&folder).map_err(|_| DataError::Missing {
            dataset: TINY,
            path: folder.clone(),
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .map(|x| x.eq_ignore_ascii_case("jpeg") || x.eq_ignore_ascii_case("jpg"))
                    .unwrap_or(false)
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(DataError::Missing {
                dataset: TINY,
                path: folder.join("*.JPEG"),
            });
        }
        train_files.extend(files.into_iter().map(|f| (f, class)));
    }

    let ann_path = root.join("val").join("val_annotations.txt");
    let mut val_files = Vec::new();
    for (i, line) in read_lines(TINY, &ann_path)?.iter().enumerate() {
        if line.is_empty() {
            continue;
        }
        let mut fields = line.split('\t');
        let (Some(file), Some(wnid)) = (fields.next(), fields.next()) else {
            return Err(DataError::Index {
                dataset: TINY,
                path: ann_path.clone(),
                line: i + 1,
                reason: "expected <file>\\t<wnid>".into(),
            });
        };
        let class = class_of(wnid).ok_or_else(|| DataError::Index {
            dataset: TINY,
            path: ann_path.clone(),
            line: i + 1,
            reason: format!("class {wnid} is not in wnids.txt"),
        })?;
        val_files.push((root.join("val").join("images").join(file), class));
    }
    Ok((decode_all(&train_files)?, decode_all(&val_files)?))
}

/// Decodes 64×64 JPEGs on all available cores.
fn decode_all(files: &[(PathBuf, usize)]) -> Result<Split, DataError> {
    const SIDE: u32 = 64;
    let per_image = (3 * SIDE * SIDE) as usize;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let chunk = files.len().div_ceil(threads).max(1);
    let parts: Vec<Result<Vec<u8>, DataError>> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    let mut out = Vec::with_capacity(part.len() * per_image);
                    for (path, _) in part {
                        let img = image::open(path).map_err(|e| DataError::Image {
                            dataset: TINY,
                            path: path.clone(),
                            reason: e.to_string(),
                        })?;
                        let rgb = img.to_rgb8();
                        if rgb.width() != SIDE || rgb.height() != SIDE {
                            return Err(DataError::Image {
                                dataset: TINY,
                                path: path.clone(),
                                reason: format!(
                                    "is {}x{}, expected {SIDE}x{SIDE}",
                                    rgb.width(),
                                    rgb.height()
                                ),
                            });
                        }
                        // HWC → CHW.
                        let raw = rgb.as_raw();
                        for c in 0..3 {
                            out.extend(raw.iter().skip(c).step_by(3));
                        }
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(DataError::Image {
                        dataset: TINY,
                        path: PathBuf::new(),
                        reason: "decoder thread panicked".into(),
                    })
                })
            })
            .collect()
    });
    let mut pixels = Vec::with_capacity(files.len() * per_image);
    for p in parts {
        pixels.extend(p?);
    }
    let labels: Vec<i64> = files.iter().map(|(_, c)| *c as i64).collect();
    let n = labels.len() as i64;
    let side = SIDE as i64;
    Ok(Split {
        images: Tensor::from_slice(&pixels).view([n, 3, side, side]),
        labels: Tensor::from_slice(&labels),
    })
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
