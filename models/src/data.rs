//! Test images for the references: the datasets in their official on-disk
//! layouts, normalised exactly as training normalised them, and input files.
//!
//! * CIFAR-10 binary (`cifar-10-batches-bin/`: `data_batch_1..5.bin`,
//!   `test_batch.bin`; records of 1 label byte + 3072 pixel bytes, planes R,
//!   G, B of 32×32);
//! * CIFAR-100 binary (`cifar-100-binary/`: `train.bin`, `test.bin`; records
//!   of 2 label bytes (coarse, fine) + 3072 pixel bytes; the fine label is used);
//! * Tiny-ImageNet (`tiny-imagenet-200/`: `wnids.txt`,
//!   `train/<wnid>/images/*.JPEG`, `val/images/*.JPEG` +
//!   `val/val_annotations.txt`); the validation images are the test split.
//!
//! `dir` may be the dataset folder itself or its parent (as `piprune --data`).
//! Only the selected records are read ([`ImageSet::load`] with a limit reads
//! `limit` records spread evenly over the split), pixels stay `u8` in memory,
//! and [`ImageSet::normalised`] gives one image as `[3, H, W]` `f32`:
//! `(pixel/255 − mean_c) / std_c` with the per-channel constants of
//! [`Dataset::normalisation`] — the one definition of those numbers (the
//! training front-end must use the same). When the network's input side
//! differs from the dataset's (DeepReDuce's ρ), the image is first resized
//! bilinearly as PyTorch's `upsample_bilinear2d(align_corners=False)` does
//! (the normalisation is affine per channel, so its order does not matter).
//!
//! [`read_inputs`] / [`write_inputs`] handle a safetensors file with a tensor
//! `input` of shape `[C, H, W]` or `[N, C, H, W]` (`pibench run --input`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use thiserror::Error;

use crate::arch::Dataset;
use crate::graph::FeatureShape;

/// Bytes of one 32×32 RGB image in the CIFAR binary formats.
pub const CIFAR_IMAGE_BYTES: usize = 3 * 32 * 32;

/// Errors of dataset and input-file reading. Each names the file and, for
/// records, the record index and byte offset.
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
    #[error("{dataset}: {path} has {len} bytes, not a positive multiple of the {record}-byte record size")]
    RecordSize {
        /// Dataset being loaded.
        dataset: &'static str,
        /// The file.
        path: PathBuf,
        /// File length in bytes.
        len: u64,
        /// Expected record size in bytes.
        record: usize,
    },
    /// A label is outside the dataset's class range.
    #[error("{dataset}: {path}: record {record}: label {label} at byte offset {offset} is not below {classes}")]
    Label {
        /// Dataset being loaded.
        dataset: &'static str,
        /// The file.
        path: PathBuf,
        /// Record index in the file.
        record: usize,
        /// The label value.
        label: u32,
        /// Byte offset of the label.
        offset: u64,
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
    /// The split holds no images.
    #[error("{dataset}: the {split} split is empty")]
    Empty {
        /// Dataset being loaded.
        dataset: &'static str,
        /// Split name.
        split: &'static str,
    },
    /// The network cannot take this dataset's images.
    #[error("{dataset}: images cannot feed a network with input {input}: {reason}")]
    Shape {
        /// Dataset.
        dataset: &'static str,
        /// The network's input shape.
        input: String,
        /// Why.
        reason: String,
    },
    /// An image index past the end of the split.
    #[error("{dataset}: the {split} split has {total} images, there is no image {index}")]
    NoSuchImage {
        /// Dataset being loaded.
        dataset: &'static str,
        /// Split name.
        split: &'static str,
        /// The requested index.
        index: usize,
        /// Images in the split.
        total: usize,
    },
    /// An input file is malformed.
    #[error("{file}: input file: {reason}")]
    Input {
        /// The file.
        file: String,
        /// What was wrong.
        reason: String,
    },
}

impl Dataset {
    /// Per-channel mean and standard deviation (of `pixel / 255`, channels
    /// R, G, B) used to normalise images for training and inference.
    ///
    /// CIFAR-10 and CIFAR-100: the training-set statistics used by the
    /// pruning papers' CIFAR pipelines; Tiny-ImageNet: its training-set
    /// statistics. These are the numbers `piprune` trains with.
    pub fn normalisation(self) -> ([f32; 3], [f32; 3]) {
        match self {
            Dataset::Cifar10 => ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
            Dataset::Cifar100 => ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
            Dataset::TinyImageNet => ([0.4802, 0.4481, 0.3975], [0.2302, 0.2265, 0.2262]),
        }
    }

    /// Image side length on disk, in pixels.
    pub fn native_side(self) -> usize {
        self.input().h
    }
}

/// Which split to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// The training split.
    Train,
    /// The test split (Tiny-ImageNet: the validation images).
    Test,
}

impl Split {
    /// `train` or `test`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// Images of one split, as `u8` pixels `[3, side, side]` per image.
#[derive(Debug, Clone)]
pub struct ImageSet {
    /// Dataset.
    pub dataset: Dataset,
    /// Split.
    pub split: Split,
    /// Images in the whole split (before the selection).
    pub total: usize,
    side: usize,
    pixels: Vec<u8>,
    labels: Vec<usize>,
    origins: Vec<String>,
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

/// The dataset a folder holds, from its layout (the folder itself or its
/// `cifar-10-batches-bin`, `cifar-100-binary` or `tiny-imagenet-200`
/// subfolder): CIFAR-10's `data_batch_1.bin`, CIFAR-100's `train.bin`,
/// Tiny-ImageNet's `wnids.txt`. `None` when it is none of them.
pub fn detect(dir: &Path) -> Option<Dataset> {
    [
        (Dataset::Cifar10, "cifar-10-batches-bin", "data_batch_1.bin"),
        (Dataset::Cifar100, "cifar-100-binary", "train.bin"),
        (Dataset::TinyImageNet, "tiny-imagenet-200", "wnids.txt"),
    ]
    .into_iter()
    .find(|(_, sub, marker)| locate(dir, sub, marker).join(marker).is_file())
    .map(|(d, _, _)| d)
}

/// Which images of a split to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Select {
    /// `n` images spread evenly over the split ([`spread`]); all with `None`.
    Spread(Option<usize>),
    /// One image, by its index in the split.
    Index(usize),
}

impl Select {
    fn indices(
        self,
        dataset: &'static str,
        split: Split,
        total: usize,
    ) -> Result<Vec<usize>, DataError> {
        match self {
            Select::Spread(n) => Ok(spread(total, n)),
            Select::Index(i) if i < total => Ok(vec![i]),
            Select::Index(index) => Err(DataError::NoSuchImage {
                dataset,
                split: split.name(),
                index,
                total,
            }),
        }
    }
}

/// `n` indices spread evenly over `0..total` (all of them when `n ≥ total`).
pub fn spread(total: usize, n: Option<usize>) -> Vec<usize> {
    match n {
        Some(n) if n < total => (0..n)
            .map(|k| (k as u128 * total as u128 / n as u128) as usize)
            .collect(),
        _ => (0..total).collect(),
    }
}

impl ImageSet {
    /// Reads `split` of `dataset` from `dir` (the dataset folder or its
    /// parent). With `limit = Some(n)`, reads `n` images spread evenly over
    /// the split (indices `⌊k·total/n⌋`; Tiny-ImageNet's training folders are
    /// sorted by class, so the first `n` would be one class); `None` reads all.
    pub fn load(
        dataset: Dataset,
        dir: &Path,
        split: Split,
        limit: Option<usize>,
    ) -> Result<ImageSet, DataError> {
        Self::load_selected(dataset, dir, split, Select::Spread(limit))
    }

    /// Reads only image `index` of `split` (its position in the split: CIFAR
    /// record order, Tiny-ImageNet's sorted training files or the order of
    /// `val_annotations.txt`).
    pub fn load_one(
        dataset: Dataset,
        dir: &Path,
        split: Split,
        index: usize,
    ) -> Result<ImageSet, DataError> {
        Self::load_selected(dataset, dir, split, Select::Index(index))
    }

    fn load_selected(
        dataset: Dataset,
        dir: &Path,
        split: Split,
        limit: Select,
    ) -> Result<ImageSet, DataError> {
        let name = dataset.name();
        let set = match dataset {
            Dataset::Cifar10 => {
                let root = locate(dir, "cifar-10-batches-bin", "data_batch_1.bin");
                let files: Vec<PathBuf> = match split {
                    Split::Train => (1..=5)
                        .map(|i| root.join(format!("data_batch_{i}.bin")))
                        .collect(),
                    Split::Test => vec![root.join("test_batch.bin")],
                };
                read_cifar(dataset, split, &files, 1, 0, limit)?
            }
            Dataset::Cifar100 => {
                let root = locate(dir, "cifar-100-binary", "train.bin");
                let file = root.join(match split {
                    Split::Train => "train.bin",
                    Split::Test => "test.bin",
                });
                read_cifar(dataset, split, &[file], 2, 1, limit)?
            }
            Dataset::TinyImageNet => {
                let root = locate(dir, "tiny-imagenet-200", "wnids.txt");
                read_tiny(&root, split, limit)?
            }
        };
        if set.is_empty() {
            return Err(DataError::Empty {
                dataset: name,
                split: split.name(),
            });
        }
        Ok(set)
    }

    /// Builds a set from raw `u8` images `[3, side, side]` (tests, converters).
    pub fn from_raw(
        dataset: Dataset,
        split: Split,
        pixels: Vec<u8>,
        labels: Vec<usize>,
    ) -> Result<ImageSet, DataError> {
        let side = dataset.native_side();
        let per = 3 * side * side;
        if pixels.len() != labels.len() * per {
            return Err(DataError::Shape {
                dataset: dataset.name(),
                input: format!("3x{side}x{side}"),
                reason: format!(
                    "{} pixel bytes for {} labels ({per} per image)",
                    pixels.len(),
                    labels.len()
                ),
            });
        }
        if let Some(l) = labels.iter().find(|&&l| l >= dataset.num_classes()) {
            return Err(DataError::Shape {
                dataset: dataset.name(),
                input: format!("3x{side}x{side}"),
                reason: format!("label {l} is not below {}", dataset.num_classes()),
            });
        }
        let origins = (0..labels.len()).map(|i| format!("image {i}")).collect();
        Ok(ImageSet {
            dataset,
            split,
            total: labels.len(),
            side,
            pixels,
            labels,
            origins,
        })
    }

    /// All images' pixels, `u8` `[N, 3, side, side]` in image order.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// Side length of the images as stored (32 for CIFAR, 64 for Tiny-ImageNet).
    pub fn side(&self) -> usize {
        self.side
    }

    /// Number of images read.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether no image was read.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Label of image `i`.
    pub fn label(&self, i: usize) -> usize {
        self.labels[i]
    }

    /// All labels.
    pub fn labels(&self) -> &[usize] {
        &self.labels
    }

    /// Where image `i` came from (file and record, or image path).
    pub fn origin(&self, i: usize) -> &str {
        &self.origins[i]
    }

    /// Raw pixels of image `i`, `[3, side, side]`.
    pub fn raw(&self, i: usize) -> &[u8] {
        let per = 3 * self.side * self.side;
        &self.pixels[i * per..(i + 1) * per]
    }

    /// Checks that the images can feed a network with input `shape`
    /// (3 channels, square; any side: other sides are resized).
    pub fn check_input(&self, shape: FeatureShape) -> Result<(), DataError> {
        if shape.c != 3 || shape.h != shape.w || shape.h == 0 {
            return Err(DataError::Shape {
                dataset: self.dataset.name(),
                input: shape.to_string(),
                reason: "expected 3 channels and a square, non-empty plane".into(),
            });
        }
        Ok(())
    }

    /// Image `i` normalised for a network whose input is `shape` (resized
    /// bilinearly first when `shape`'s side differs from the dataset's).
    pub fn normalised(&self, i: usize, shape: FeatureShape) -> Result<Vec<f32>, DataError> {
        self.check_input(shape)?;
        let (mean, std) = self.dataset.normalisation();
        let raw = self.raw(i);
        let plane_in = self.side * self.side;
        let mut out = Vec::with_capacity(shape.len());
        for c in 0..3 {
            let plane: Vec<f32> = raw[c * plane_in..(c + 1) * plane_in]
                .iter()
                .map(|&p| p as f32 / 255.0)
                .collect();
            let plane = if shape.h == self.side {
                plane
            } else {
                resize_bilinear(&plane, self.side, shape.h)
            };
            out.extend(plane.into_iter().map(|v| (v - mean[c]) / std[c]));
        }
        Ok(out)
    }
}

/// Bilinear resize of a square plane `side_in² → side_out²` with PyTorch's
/// `upsample_bilinear2d(align_corners=False)` source coordinates:
/// `src = (dst + ½)·(in/out) − ½`, clamped at 0, neighbours `⌊src⌋` and
/// `min(⌊src⌋ + 1, in − 1)` (no antialiasing).
pub fn resize_bilinear(plane: &[f32], side_in: usize, side_out: usize) -> Vec<f32> {
    let scale = side_in as f32 / side_out as f32;
    let coords: Vec<(usize, usize, f32)> = (0..side_out)
        .map(|d| {
            let src = ((d as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(side_in - 1);
            let i1 = (i0 + 1).min(side_in - 1);
            (i0, i1, src - i0 as f32)
        })
        .collect();
    let mut out = Vec::with_capacity(side_out * side_out);
    for &(y0, y1, ly) in &coords {
        for &(x0, x1, lx) in &coords {
            let at = |y: usize, x: usize| plane[y * side_in + x];
            let top = at(y0, x0) * (1.0 - lx) + at(y0, x1) * lx;
            let bottom = at(y1, x0) * (1.0 - lx) + at(y1, x1) * lx;
            out.push(top * (1.0 - ly) + bottom * ly);
        }
    }
    out
}

fn open(dataset: &'static str, path: &Path) -> Result<File, DataError> {
    if !path.exists() {
        return Err(DataError::Missing {
            dataset,
            path: path.to_path_buf(),
        });
    }
    File::open(path).map_err(|source| DataError::Io {
        dataset,
        path: path.to_path_buf(),
        source,
    })
}

/// Reads the selected records of CIFAR binary files whose records are
/// `label_bytes` labels followed by 3072 pixels; the label used is byte
/// `label_index` of the record. Only the selected records are read.
fn read_cifar(
    dataset: Dataset,
    split: Split,
    files: &[PathBuf],
    label_bytes: usize,
    label_index: usize,
    limit: Select,
) -> Result<ImageSet, DataError> {
    let name = dataset.name();
    let classes = dataset.num_classes();
    let record = label_bytes + CIFAR_IMAGE_BYTES;
    // Records per file, from the file sizes.
    let mut counts = Vec::with_capacity(files.len());
    for path in files {
        let f = open(name, path)?;
        let len = f
            .metadata()
            .map_err(|source| DataError::Io {
                dataset: name,
                path: path.clone(),
                source,
            })?
            .len();
        if len == 0 || len % record as u64 != 0 {
            return Err(DataError::RecordSize {
                dataset: name,
                path: path.clone(),
                len,
                record,
            });
        }
        counts.push((len / record as u64) as usize);
    }
    let total: usize = counts.iter().sum();
    let chosen = limit.indices(name, split, total)?;
    let mut pixels = Vec::with_capacity(chosen.len() * CIFAR_IMAGE_BYTES);
    let mut labels = Vec::with_capacity(chosen.len());
    let mut origins = Vec::with_capacity(chosen.len());
    let mut buf = vec![0u8; record];
    let mut first = 0usize; // global index of the current file's record 0
    let mut file_no = 0usize;
    let mut handle: Option<File> = None;
    for &g in &chosen {
        while g >= first + counts[file_no] {
            first += counts[file_no];
            file_no += 1;
            handle = None;
        }
        let path = &files[file_no];
        let io = |source| DataError::Io {
            dataset: name,
            path: path.clone(),
            source,
        };
        if handle.is_none() {
            handle = Some(open(name, path)?);
        }
        let f = handle.as_mut().ok_or_else(|| DataError::Missing {
            dataset: name,
            path: path.clone(),
        })?;
        let r = g - first;
        let offset = r as u64 * record as u64;
        f.seek(SeekFrom::Start(offset)).map_err(io)?;
        f.read_exact(&mut buf).map_err(io)?;
        let label = buf[label_index] as usize;
        if label >= classes {
            return Err(DataError::Label {
                dataset: name,
                path: path.clone(),
                record: r,
                label: label as u32,
                offset: offset + label_index as u64,
                classes,
            });
        }
        labels.push(label);
        pixels.extend_from_slice(&buf[label_bytes..]);
        let file = path.file_name().map_or_else(
            || path.display().to_string(),
            |f| f.to_string_lossy().into_owned(),
        );
        origins.push(format!("{file} record {r}"));
    }
    Ok(ImageSet {
        dataset,
        split,
        total,
        side: 32,
        pixels,
        labels,
        origins,
    })
}

const TINY: &str = "tinyimagenet";

fn read_lines(path: &Path) -> Result<Vec<String>, DataError> {
    let mut text = String::new();
    open(TINY, path)?
        .read_to_string(&mut text)
        .map_err(|e| DataError::Index {
            dataset: TINY,
            path: path.to_path_buf(),
            line: 0,
            reason: format!("not readable as UTF-8 text: {e}"),
        })?;
    Ok(text.lines().map(|l| l.trim().to_string()).collect())
}

fn read_tiny(root: &Path, split: Split, limit: Select) -> Result<ImageSet, DataError> {
    let wnids_path = root.join("wnids.txt");
    let wnids: Vec<String> = read_lines(&wnids_path)?
        .into_iter()
        .filter(|l| !l.is_empty())
        .collect();
    if wnids.len() != Dataset::TinyImageNet.num_classes() {
        return Err(DataError::Index {
            dataset: TINY,
            path: wnids_path,
            line: wnids.len(),
            reason: format!(
                "{} class ids, expected {}",
                wnids.len(),
                Dataset::TinyImageNet.num_classes()
            ),
        });
    }
    let class_of = |wnid: &str| wnids.iter().position(|w| w == wnid);
    let mut files: Vec<(PathBuf, usize)> = Vec::new();
    match split {
        Split::Train => {
            for (class, wnid) in wnids.iter().enumerate() {
                let folder = root.join("train").join(wnid).join("images");
                let entries = std::fs::read_dir(&folder).map_err(|_| DataError::Missing {
                    dataset: TINY,
                    path: folder.clone(),
                })?;
                let mut list: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.extension().is_some_and(|x| {
                            x.eq_ignore_ascii_case("jpeg") || x.eq_ignore_ascii_case("jpg")
                        })
                    })
                    .collect();
                list.sort();
                files.extend(list.into_iter().map(|f| (f, class)));
            }
        }
        Split::Test => {
            let ann = root.join("val").join("val_annotations.txt");
            for (i, line) in read_lines(&ann)?.iter().enumerate() {
                if line.is_empty() {
                    continue;
                }
                let mut fields = line.split('\t');
                let (Some(file), Some(wnid)) = (fields.next(), fields.next()) else {
                    return Err(DataError::Index {
                        dataset: TINY,
                        path: ann.clone(),
                        line: i + 1,
                        reason: "expected <file>\\t<wnid>".into(),
                    });
                };
                let class = class_of(wnid).ok_or_else(|| DataError::Index {
                    dataset: TINY,
                    path: ann.clone(),
                    line: i + 1,
                    reason: format!("class {wnid} is not in wnids.txt"),
                })?;
                files.push((root.join("val").join("images").join(file), class));
            }
        }
    }
    const SIDE: u32 = 64;
    let chosen = limit.indices(TINY, split, files.len())?;
    let selected: Vec<&(PathBuf, usize)> = chosen.iter().map(|&k| &files[k]).collect();
    let pixels = decode_tiny(&selected)?;
    let labels = selected.iter().map(|(_, c)| *c).collect();
    let origins = selected
        .iter()
        .map(|(p, _)| p.display().to_string())
        .collect();
    Ok(ImageSet {
        dataset: Dataset::TinyImageNet,
        split,
        total: files.len(),
        side: SIDE as usize,
        pixels,
        labels,
        origins,
    })
}

/// Decodes 64×64 JPEGs to CHW `u8` pixels, in order, on all available cores
/// (Tiny-ImageNet's 100,000 training images take seconds, not a minute).
fn decode_tiny(files: &[&(PathBuf, usize)]) -> Result<Vec<u8>, DataError> {
    const SIDE: u32 = 64;
    let per_image = (3 * SIDE * SIDE) as usize;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = files.len().div_ceil(threads).max(1);
    let decode = |part: &[&(PathBuf, usize)]| -> Result<Vec<u8>, DataError> {
        let mut out = Vec::with_capacity(part.len() * per_image);
        for (path, _) in part {
            let bad = |reason: String| DataError::Image {
                dataset: TINY,
                path: path.clone(),
                reason,
            };
            let img = image::open(path).map_err(|e| bad(e.to_string()))?;
            let rgb = img.to_rgb8();
            if rgb.width() != SIDE || rgb.height() != SIDE {
                return Err(bad(format!(
                    "is {}x{}, expected {SIDE}x{SIDE}",
                    rgb.width(),
                    rgb.height()
                )));
            }
            // HWC → CHW.
            let raw = rgb.as_raw();
            for c in 0..3 {
                out.extend(raw.iter().skip(c).step_by(3));
            }
        }
        Ok(out)
    };
    let parts: Vec<Result<Vec<u8>, DataError>> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| s.spawn(move || decode(part)))
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
    Ok(pixels)
}

/// Reads the tensor `input` of a safetensors file: shape `[C, H, W]` (one
/// image) or `[N, C, H, W]` with `[C, H, W] = shape`, F32 or F64, every
/// element finite. Returns the images.
pub fn read_inputs(path: &Path, shape: FeatureShape) -> Result<Vec<Vec<f32>>, DataError> {
    let label = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| DataError::Input {
        file: label.clone(),
        reason: format!("cannot read: {e}"),
    })?;
    inputs_from_bytes(&bytes, &label, shape)
}

/// [`read_inputs`] from bytes; `label` names the source in errors.
pub fn inputs_from_bytes(
    bytes: &[u8],
    label: &str,
    shape: FeatureShape,
) -> Result<Vec<Vec<f32>>, DataError> {
    let bad = |reason: String| DataError::Input {
        file: label.into(),
        reason,
    };
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
    let t = st
        .tensor("input")
        .map_err(|_| bad("no tensor named `input`".into()))?;
    let dims = shape.dims();
    let n = match t.shape() {
        s if s == dims.as_slice() => 1,
        [n, rest @ ..] if rest == dims.as_slice() && *n > 0 => *n,
        s => {
            return Err(bad(format!(
                "tensor `input` has shape {s:?}, expected {dims:?} or [N, {}, {}, {}]",
                shape.c, shape.h, shape.w
            )))
        }
    };
    let width = match t.dtype() {
        Dtype::F32 => 4,
        Dtype::F64 => 8,
        d => return Err(bad(format!("tensor `input` is {d:?}, expected F32 or F64"))),
    };
    let data = t.data();
    if data.len() != n * shape.len() * width {
        return Err(bad(format!(
            "tensor `input` holds {} bytes, expected {}",
            data.len(),
            n * shape.len() * width
        )));
    }
    let values: Vec<f32> = if width == 4 {
        data.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        data.chunks_exact(8)
            .map(|c| {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                f64::from_le_bytes(a) as f32
            })
            .collect()
    };
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(bad(format!(
            "element {i} (image {}, byte offset {} of the tensor data) is not finite",
            i / shape.len(),
            i * width
        )));
    }
    Ok(values.chunks(shape.len()).map(|c| c.to_vec()).collect())
}

/// Writes images `[C, H, W]` as the tensor `input` (`[N, C, H, W]` F32) of a
/// safetensors file.
pub fn write_inputs(
    path: &Path,
    shape: FeatureShape,
    images: &[Vec<f32>],
) -> Result<(), DataError> {
    let label = path.display().to_string();
    let bad = |reason: String| DataError::Input {
        file: label.clone(),
        reason,
    };
    if let Some(i) = images.iter().position(|x| x.len() != shape.len()) {
        return Err(bad(format!(
            "image {i} has {} values, the shape {shape} has {}",
            images[i].len(),
            shape.len()
        )));
    }
    let bytes: Vec<u8> = images
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let mut dims = vec![images.len()];
    dims.extend(shape.dims());
    let view = TensorView::new(Dtype::F32, dims, &bytes).map_err(|e| bad(e.to_string()))?;
    safetensors::serialize_to_file([("input", view)], &None, path).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_even_and_complete() {
        assert_eq!(spread(10, Some(5)), vec![0, 2, 4, 6, 8]);
        assert_eq!(spread(10, Some(3)), vec![0, 3, 6]);
        assert_eq!(spread(4, Some(9)), vec![0, 1, 2, 3]);
        assert_eq!(spread(4, None), vec![0, 1, 2, 3]);
        assert!(spread(5, Some(0)).is_empty());
    }

    #[test]
    fn bilinear_matches_pytorch() {
        // torch.nn.functional.interpolate(x, size=..., mode="bilinear",
        // align_corners=False) on x = arange(16).view(1,1,4,4):
        // to 2×2 → [[2.5, 4.5], [10.5, 12.5]].
        let plane: Vec<f32> = (0..16).map(|v| v as f32).collect();
        assert_eq!(resize_bilinear(&plane, 4, 2), vec![2.5, 4.5, 10.5, 12.5]);
        // Identity when the side is unchanged.
        assert_eq!(resize_bilinear(&plane, 4, 4), plane);
        // Up-sampling 2 → 4: src = (d + 0.5)/2 − 0.5 = −0.25 (→0), 0.25, 0.75, 1.25 (→ i0 = 1 = last).
        let small = vec![0.0f32, 1.0, 2.0, 3.0];
        let up = resize_bilinear(&small, 2, 4);
        assert_eq!(&up[..4], &[0.0, 0.25, 0.75, 1.0]);
        assert_eq!(&up[12..], &[2.0, 2.25, 2.75, 3.0]);
    }
}
