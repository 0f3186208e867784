//! PyTorch checkpoints (`torch.save`, `.pth` / `.pth.tar`) without Python.
//!
//! Since PyTorch 1.6 `torch.save` writes a zip archive (entries stored, not
//! compressed): `<name>/data.pkl` is a pickle (protocol 2) of the saved
//! object whose tensors are `torch._utils._rebuild_tensor_v2(storage,
//! offset, size, stride, …)` calls; each storage is a *persistent id*
//! `('storage', torch.FloatStorage, key, location, numel)` whose bytes are the
//! entry `<name>/data/<key>` (little-endian, see `<name>/byteorder`).
//!
//! The pickle opcodes are interpreted by `candle_core::pickle::Stack`
//! (Hugging Face candle's reader), driven one opcode at a time so that this
//! module can bound what a file may make it do: `data.pkl` is at most
//! [`MAX_PICKLE_BYTES`], a string may not claim more bytes than remain, a
//! `LONG1` has at most 8 bytes, the value stack holds at most
//! [`MAX_STACK`] objects, nested objects are at most [`MAX_DEPTH`] deep,
//! and the objects copied by memo/container opcodes (a "billion laughs"
//! pickle doubles them) are counted against [`MAX_NODES`]. The resulting
//! object tree is then turned into a [`PyValue`] here, including the storage
//! types candle does not know (`BoolStorage`, `IntStorage`, …), strided
//! (non-contiguous) tensors and storages shared by several tensors. Tensor
//! indices are bounds-checked against their storage; nothing panics on a
//! corrupt file.
//!
//! [`write_pth`] writes the same layout (used by the tests to produce
//! checkpoints in the three naming schemes without a Python installation, and
//! usable to hand a state dict back to PyTorch).

use std::collections::HashMap;
use std::io::{Cursor, Read, Seek, Write};
use std::path::Path;

use candle_core::pickle::{Object, Stack};

use super::ImportError;

/// Largest `data.pkl` accepted (state dicts of the networks here are < 1 MiB).
pub const MAX_PICKLE_BYTES: u64 = 16 << 20;
/// Largest number of objects on the pickle machine's stack.
pub const MAX_STACK: usize = 1 << 20;
/// Deepest object nesting accepted.
pub const MAX_DEPTH: usize = 256;
/// Object nodes that memo and container opcodes may copy or build, in total.
pub const MAX_NODES: u64 = 1 << 22;
/// Largest tensor (elements).
pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 31;

/// Element type of a torch storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    /// `FloatStorage` (f32).
    Float,
    /// `DoubleStorage` (f64).
    Double,
    /// `HalfStorage` (f16).
    Half,
    /// `BFloat16Storage`.
    BFloat16,
    /// `ByteStorage` (u8).
    Byte,
    /// `CharStorage` (i8).
    Char,
    /// `ShortStorage` (i16).
    Short,
    /// `IntStorage` (i32).
    Int,
    /// `LongStorage` (i64).
    Long,
    /// `BoolStorage` (one byte, 0 or 1).
    Bool,
}

impl StorageKind {
    fn from_class(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::Float,
            "DoubleStorage" => Self::Double,
            "HalfStorage" => Self::Half,
            "BFloat16Storage" => Self::BFloat16,
            "ByteStorage" => Self::Byte,
            "CharStorage" => Self::Char,
            "ShortStorage" => Self::Short,
            "IntStorage" => Self::Int,
            "LongStorage" => Self::Long,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    /// The torch class name.
    pub fn class_name(self) -> &'static str {
        match self {
            Self::Float => "FloatStorage",
            Self::Double => "DoubleStorage",
            Self::Half => "HalfStorage",
            Self::BFloat16 => "BFloat16Storage",
            Self::Byte => "ByteStorage",
            Self::Char => "CharStorage",
            Self::Short => "ShortStorage",
            Self::Int => "IntStorage",
            Self::Long => "LongStorage",
            Self::Bool => "BoolStorage",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::Float | Self::Int => 4,
            Self::Double | Self::Long => 8,
            Self::Half | Self::BFloat16 | Self::Short => 2,
            Self::Byte | Self::Char | Self::Bool => 1,
        }
    }

    /// Whether the elements are floating point.
    pub fn is_float(self) -> bool {
        matches!(
            self,
            Self::Float | Self::Double | Self::Half | Self::BFloat16
        )
    }

    fn decode(self, b: &[u8]) -> f32 {
        match self {
            Self::Float => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            Self::Double => {
                let mut a = [0u8; 8];
                a.copy_from_slice(&b[..8]);
                f64::from_le_bytes(a) as f32
            }
            Self::Half => crate::import::f16_to_f32(u16::from_le_bytes([b[0], b[1]])),
            Self::BFloat16 => f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16),
            Self::Byte | Self::Bool => b[0] as f32,
            Self::Char => b[0] as i8 as f32,
            Self::Short => i16::from_le_bytes([b[0], b[1]]) as f32,
            Self::Int => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
            Self::Long => {
                let mut a = [0u8; 8];
                a.copy_from_slice(&b[..8]);
                i64::from_le_bytes(a) as f32
            }
        }
    }

    fn encode(self, v: f32, out: &mut Vec<u8>) {
        match self {
            Self::Float => out.extend_from_slice(&v.to_le_bytes()),
            Self::Double => out.extend_from_slice(&(v as f64).to_le_bytes()),
            Self::Half => out.extend_from_slice(&crate::import::f32_to_f16(v).to_le_bytes()),
            Self::BFloat16 => out.extend_from_slice(&((v.to_bits() >> 16) as u16).to_le_bytes()),
            Self::Byte | Self::Bool => out.push(v as u8),
            Self::Char => out.push(v as i8 as u8),
            Self::Short => out.extend_from_slice(&(v as i16).to_le_bytes()),
            Self::Int => out.extend_from_slice(&(v as i32).to_le_bytes()),
            Self::Long => out.extend_from_slice(&(v as i64).to_le_bytes()),
        }
    }
}

/// A tensor read from (or to be written to) a checkpoint, as `f32` values in
/// row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorData {
    /// Element type in the file.
    pub kind: StorageKind,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values.
    pub data: Vec<f32>,
}

impl TensorData {
    /// An `f32` tensor.
    pub fn float(shape: Vec<usize>, data: Vec<f32>) -> Self {
        Self {
            kind: StorageKind::Float,
            shape,
            data,
        }
    }
}

/// The saved Python object, as far as checkpoints use it.
#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    /// `None`.
    None,
    /// `bool`.
    Bool(bool),
    /// `int`.
    Int(i64),
    /// `float`.
    Float(f64),
    /// `str`.
    Str(String),
    /// `list`.
    List(Vec<PyValue>),
    /// `tuple`.
    Tuple(Vec<PyValue>),
    /// `dict` / `OrderedDict`. The order is not the file's: candle's
    /// `SETITEMS` pushes each batch of items in reverse; consumers look
    /// entries up by key.
    Dict(Vec<(PyValue, PyValue)>),
    /// A tensor (or `nn.Parameter`).
    Tensor(TensorData),
    /// Any other object, by its class (e.g. `argparse.Namespace`).
    Other(String),
}

impl PyValue {
    /// The entry `key` of a dict.
    pub fn get(&self, key: &str) -> Option<&PyValue> {
        match self {
            PyValue::Dict(items) => items
                .iter()
                .find(|(k, _)| matches!(k, PyValue::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Short type name for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            PyValue::None => "None",
            PyValue::Bool(_) => "bool",
            PyValue::Int(_) => "int",
            PyValue::Float(_) => "float",
            PyValue::Str(_) => "str",
            PyValue::List(_) => "list",
            PyValue::Tuple(_) => "tuple",
            PyValue::Dict(_) => "dict",
            PyValue::Tensor(_) => "tensor",
            PyValue::Other(_) => "object",
        }
    }
}

/// A loaded checkpoint.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The file it came from (for messages).
    pub label: String,
    /// The saved object.
    pub root: PyValue,
}

impl Checkpoint {
    /// Reads a `torch.save` zip archive.
    pub fn read(path: &Path) -> Result<Self, ImportError> {
        let label = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|source| ImportError::Io {
            file: label.clone(),
            source,
        })?;
        Self::from_reader(std::io::BufReader::new(file), &label)
    }

    /// [`Checkpoint::read`] from bytes.
    pub fn from_bytes(bytes: &[u8], label: &str) -> Result<Self, ImportError> {
        Self::from_reader(Cursor::new(bytes), label)
    }

    fn from_reader<R: Read + Seek>(reader: R, label: &str) -> Result<Self, ImportError> {
        let zerr = |reason: String| ImportError::Archive {
            file: label.to_string(),
            reason,
        };
        let mut zip = zip::ZipArchive::new(reader).map_err(|e| {
            zerr(format!(
                "not a zip archive ({e}); checkpoints written by torch.save before PyTorch 1.6 \
                 (the legacy tar/pickle format) are not supported: re-save them with a current PyTorch"
            ))
        })?;
        let pkl_names: Vec<String> = zip
            .file_names()
            .filter(|n| n.ends_with("/data.pkl") || *n == "data.pkl")
            .map(str::to_string)
            .collect();
        let pkl_name = match pkl_names.as_slice() {
            [one] => one.clone(),
            [] => return Err(zerr("no data.pkl entry (not a torch.save archive)".into())),
            many => {
                return Err(zerr(format!(
                    "{} data.pkl entries ({many:?}); expected one",
                    many.len()
                )))
            }
        };
        let prefix = pkl_name.strip_suffix("data.pkl").unwrap_or("").to_string();
        if let Ok(mut f) = zip.by_name(&format!("{prefix}byteorder")) {
            let mut s = String::new();
            f.by_ref()
                .take(16)
                .read_to_string(&mut s)
                .map_err(|e| zerr(format!("byteorder entry: {e}")))?;
            if s.trim() != "little" {
                return Err(zerr(format!(
                    "byte order {:?}: only little-endian checkpoints are supported",
                    s.trim()
                )));
            }
        }
        let pkl = read_entry(&mut zip, &pkl_name, MAX_PICKLE_BYTES, label)?;
        let object = run_pickle(&pkl, label)?;
        let mut conv = Converter {
            zip: &mut zip,
            prefix,
            label,
            storages: HashMap::new(),
        };
        let root = conv.value(object, 0)?;
        Ok(Checkpoint {
            label: label.to_string(),
            root,
        })
    }
}

fn read_entry<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    limit: u64,
    label: &str,
) -> Result<Vec<u8>, ImportError> {
    let zerr = |reason: String| ImportError::Archive {
        file: label.to_string(),
        reason,
    };
    let mut f = zip
        .by_name(name)
        .map_err(|e| zerr(format!("entry {name}: {e}")))?;
    if f.compression() != zip::CompressionMethod::Stored {
        return Err(zerr(format!(
            "entry {name} is compressed ({:?}); torch.save stores entries uncompressed",
            f.compression()
        )));
    }
    let size = f.size();
    if size > limit {
        return Err(zerr(format!(
            "entry {name} has {size} bytes, more than the limit of {limit}"
        )));
    }
    let mut buf = Vec::with_capacity(size as usize);
    f.by_ref()
        .take(limit)
        .read_to_end(&mut buf)
        .map_err(|e| zerr(format!("entry {name}: {e}")))?;
    Ok(buf)
}

/// Object nodes and nesting depth of `obj` (iteratively: no recursion on hostile input).
fn measure(obj: &Object) -> (u64, usize) {
    let mut nodes = 0u64;
    let mut depth = 0usize;
    let mut todo: Vec<(&Object, usize)> = vec![(obj, 1)];
    while let Some((o, d)) = todo.pop() {
        nodes += 1;
        depth = depth.max(d);
        if depth > MAX_DEPTH {
            break;
        }
        match o {
            Object::Tuple(v) | Object::List(v) => todo.extend(v.iter().map(|x| (x, d + 1))),
            Object::Dict(kv) => {
                for (k, v) in kv {
                    todo.push((k, d + 1));
                    todo.push((v, d + 1));
                }
            }
            Object::Reduce { callable, args } | Object::Build { callable, args } => {
                todo.push((callable, d + 1));
                todo.push((args, d + 1));
            }
            Object::PersistentLoad(x) => todo.push((x, d + 1)),
            _ => {}
        }
    }
    (nodes, depth)
}

/// Runs the pickle machine over `pkl` with the bounds of the module doc.
fn run_pickle(pkl: &[u8], label: &str) -> Result<Object, ImportError> {
    let perr = |offset: usize, reason: String| ImportError::Pickle {
        file: label.to_string(),
        offset,
        reason,
    };
    let mut cursor = Cursor::new(pkl);
    let mut stack = Stack::empty();
    let mut nodes = 0u64;
    loop {
        let pos = cursor.position() as usize;
        let Some(&op) = pkl.get(pos) else {
            return Err(perr(pos, "data.pkl ends without a STOP opcode".into()));
        };
        match op {
            b'X' => {
                let len = pkl
                    .get(pos + 1..pos + 5)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                    .ok_or_else(|| perr(pos, "truncated string length".into()))?;
                if len > pkl.len().saturating_sub(pos + 5) {
                    return Err(perr(
                        pos,
                        format!("string of {len} bytes runs past the end of data.pkl"),
                    ));
                }
            }
            0x8a => match pkl.get(pos + 1) {
                Some(&n) if n <= 8 => {}
                Some(&n) => return Err(perr(pos, format!("LONG1 with {n} bytes (at most 8)"))),
                None => return Err(perr(pos, "truncated LONG1".into())),
            },
            _ => {}
        }
        let done = stack
            .read(&mut cursor)
            .map_err(|e| perr(pos, format!("opcode 0x{op:02x}: {e}")))?;
        if done {
            break;
        }
        if stack.stack().len() > MAX_STACK {
            return Err(perr(
                pos,
                format!("more than {MAX_STACK} objects on the stack"),
            ));
        }
        // Opcodes that copy (memo) or nest objects.
        if matches!(
            op,
            b'h' | b'j'
                | b'q'
                | b'r'
                | b'a'
                | b'e'
                | b's'
                | b'u'
                | b't'
                | 0x85
                | 0x86
                | 0x87
                | b'd'
                | b'R'
                | b'b'
                | 0x81
                | b'Q'
        ) {
            if let Some(last) = stack.stack().last() {
                let (n, depth) = measure(last);
                nodes += n;
                if depth > MAX_DEPTH {
                    return Err(perr(
                        pos,
                        format!("objects nested deeper than {MAX_DEPTH} levels"),
                    ));
                }
                if nodes > MAX_NODES {
                    return Err(perr(
                        pos,
                        format!("the pickle builds or copies more than {MAX_NODES} objects"),
                    ));
                }
            }
        }
    }
    let end = cursor.position() as usize;
    stack
        .finalize()
        .map_err(|e| perr(end, format!("no result object: {e}")))
}

struct Converter<'a, R: Read + Seek> {
    zip: &'a mut zip::ZipArchive<R>,
    prefix: String,
    label: &'a str,
    storages: HashMap<String, (StorageKind, Vec<u8>)>,
}

fn class_of(o: &Object) -> Option<(&str, &str)> {
    match o {
        Object::Class {
            module_name,
            class_name,
        } => Some((module_name.as_str(), class_name.as_str())),
        _ => None,
    }
}

fn as_usize_vec(o: &Object) -> Option<Vec<usize>> {
    match o {
        Object::Tuple(v) | Object::List(v) => v
            .iter()
            .map(|x| match x {
                Object::Int(i) if *i >= 0 => Some(*i as usize),
                Object::Long(i) if *i >= 0 => usize::try_from(*i).ok(),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

fn as_usize(o: &Object) -> Option<usize> {
    match o {
        Object::Int(i) if *i >= 0 => Some(*i as usize),
        Object::Long(i) if *i >= 0 => usize::try_from(*i).ok(),
        _ => None,
    }
}

impl<R: Read + Seek> Converter<'_, R> {
    fn terr(&self, tensor: &str, reason: String) -> ImportError {
        ImportError::Tensor {
            file: self.label.to_string(),
            tensor: tensor.to_string(),
            reason,
        }
    }

    fn value(&mut self, obj: Object, depth: usize) -> Result<PyValue, ImportError> {
        if depth > MAX_DEPTH {
            return Err(ImportError::Pickle {
                file: self.label.to_string(),
                offset: 0,
                reason: format!("objects nested deeper than {MAX_DEPTH} levels"),
            });
        }
        Ok(match obj {
            Object::None => PyValue::None,
            Object::Bool(b) => PyValue::Bool(b),
            Object::Int(i) => PyValue::Int(i as i64),
            Object::Long(i) => PyValue::Int(i),
            Object::Float(f) => PyValue::Float(f),
            Object::Unicode(s) => PyValue::Str(s),
            Object::List(v) => PyValue::List(
                v.into_iter()
                    .map(|x| self.value(x, depth + 1))
                    .collect::<Result<_, _>>()?,
            ),
            Object::Tuple(v) => PyValue::Tuple(
                v.into_iter()
                    .map(|x| self.value(x, depth + 1))
                    .collect::<Result<_, _>>()?,
            ),
            Object::Dict(kv) => {
                let mut out = Vec::with_capacity(kv.len());
                for (k, v) in kv {
                    out.push((self.value(k, depth + 1)?, self.value(v, depth + 1)?));
                }
                PyValue::Dict(out)
            }
            Object::Reduce { callable, args } => self.reduce(*callable, *args, depth)?,
            Object::Build { callable, .. } => match *callable {
                Object::Reduce { callable, .. } => match class_of(&callable) {
                    Some((m, c)) => PyValue::Other(format!("{m}.{c}")),
                    None => PyValue::Other("object".into()),
                },
                other => match class_of(&other) {
                    Some((m, c)) => PyValue::Other(format!("{m}.{c}")),
                    None => PyValue::Other("object".into()),
                },
            },
            Object::Class {
                module_name,
                class_name,
            } => PyValue::Other(format!("{module_name}.{class_name}")),
            Object::PersistentLoad(_) => PyValue::Other("persistent id".into()),
            Object::Mark => PyValue::Other("mark".into()),
        })
    }

    fn reduce(
        &mut self,
        callable: Object,
        args: Object,
        depth: usize,
    ) -> Result<PyValue, ImportError> {
        let class = class_of(&callable).map(|(m, c)| (m.to_string(), c.to_string()));
        match class.as_ref().map(|(m, c)| (m.as_str(), c.as_str())) {
            Some(("torch._utils", "_rebuild_tensor_v2"))
            | Some(("torch._utils", "_rebuild_tensor")) => self.tensor(&args).map(PyValue::Tensor),
            Some(("torch._utils", "_rebuild_parameter"))
            | Some(("torch._utils", "_rebuild_parameter_with_state")) => match args {
                Object::Tuple(mut v) if !v.is_empty() => self.value(v.remove(0), depth + 1),
                _ => Err(self.terr(
                    "<parameter>",
                    "malformed _rebuild_parameter arguments".into(),
                )),
            },
            Some(("torch._tensor", "_rebuild_from_type_v2")) => match args {
                // (func, type, args, state): rebuild `func(*args)`.
                Object::Tuple(mut v) if v.len() >= 3 => {
                    let inner_args = v.remove(2);
                    let func = v.remove(0);
                    self.reduce(func, inner_args, depth + 1)
                }
                _ => Err(self.terr(
                    "<tensor>",
                    "malformed _rebuild_from_type_v2 arguments".into(),
                )),
            },
            Some((m, c)) => Ok(PyValue::Other(format!("{m}.{c}"))),
            None => Ok(PyValue::Other("object".into())),
        }
    }

    fn tensor(&mut self, args: &Object) -> Result<TensorData, ImportError> {
        let Object::Tuple(a) = args else {
            return Err(self.terr("<tensor>", "tensor arguments are not a tuple".into()));
        };
        if a.len() < 4 {
            return Err(self.terr(
                "<tensor>",
                format!("{} tensor arguments, expected at least 4", a.len()),
            ));
        }
        let Object::PersistentLoad(pid) = &a[0] else {
            return Err(self.terr("<tensor>", "storage is not a persistent id".into()));
        };
        let Object::Tuple(p) = pid.as_ref() else {
            return Err(self.terr("<tensor>", "persistent id is not a tuple".into()));
        };
        if p.len() < 5 {
            return Err(self.terr("<tensor>", "persistent id has fewer than 5 fields".into()));
        }
        let key = match &p[2] {
            Object::Unicode(s) => s.clone(),
            _ => return Err(self.terr("<tensor>", "storage key is not a string".into())),
        };
        let kind = match class_of(&p[1]) {
            Some((_, c)) => StorageKind::from_class(c)
                .ok_or_else(|| self.terr(&key, format!("unsupported storage type {c}")))?,
            None => return Err(self.terr(&key, "storage type is not a class".into())),
        };
        let numel = as_usize(&p[4]).ok_or_else(|| self.terr(&key, "bad storage size".into()))?;
        let offset = as_usize(&a[1]).ok_or_else(|| self.terr(&key, "bad storage offset".into()))?;
        let shape = as_usize_vec(&a[2]).ok_or_else(|| self.terr(&key, "bad tensor size".into()))?;
        let stride =
            as_usize_vec(&a[3]).ok_or_else(|| self.terr(&key, "bad tensor stride".into()))?;
        if shape.len() != stride.len() {
            return Err(self.terr(
                &key,
                format!("{} sizes but {} strides", shape.len(), stride.len()),
            ));
        }
        let count = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .filter(|&n| n <= MAX_TENSOR_ELEMENTS)
            .ok_or_else(|| {
                self.terr(
                    &key,
                    format!("shape {shape:?} has more than {MAX_TENSOR_ELEMENTS} elements"),
                )
            })? as usize;
        if !self.storages.contains_key(&key) {
            let bytes_needed = (numel as u64)
                .checked_mul(kind.size() as u64)
                .filter(|&b| b <= MAX_TENSOR_ELEMENTS * 8)
                .ok_or_else(|| {
                    self.terr(&key, format!("storage of {numel} elements is too large"))
                })?;
            let name = format!("{}data/{key}", self.prefix);
            let bytes = read_entry(self.zip, &name, bytes_needed, self.label)?;
            if (bytes.len() as u64) < bytes_needed {
                return Err(self.terr(
                    &key,
                    format!(
                        "storage entry has {} bytes, the pickle declares {numel} {} elements ({bytes_needed} bytes)",
                        bytes.len(),
                        kind.class_name()
                    ),
                ));
            }
            self.storages.insert(key.clone(), (kind, bytes));
        }
        let (skind, bytes) = &self.storages[&key];
        if *skind != kind {
            return Err(self.terr(
                &key,
                format!(
                    "storage used as {} and as {}",
                    skind.class_name(),
                    kind.class_name()
                ),
            ));
        }
        let elems = bytes.len() / kind.size();
        if count > 0 {
            let mut last = offset as u64;
            for (&d, &s) in shape.iter().zip(&stride) {
                last = (d as u64 - 1)
                    .checked_mul(s as u64)
                    .and_then(|x| x.checked_add(last))
                    .ok_or_else(|| self.terr(&key, "index overflow".into()))?;
            }
            if last >= elems as u64 {
                return Err(self.terr(
                    &key,
                    format!(
                        "size {shape:?}, stride {stride:?} and offset {offset} reach element {last}, but the storage holds {elems}"
                    ),
                ));
            }
        }
        let mut data = Vec::with_capacity(count);
        let es = kind.size();
        if count > 0 {
            let mut idx = vec![0usize; shape.len()];
            for _ in 0..count {
                let pos = offset + idx.iter().zip(&stride).map(|(i, s)| i * s).sum::<usize>();
                data.push(kind.decode(&bytes[pos * es..(pos + 1) * es]));
                for d in (0..shape.len()).rev() {
                    idx[d] += 1;
                    if idx[d] < shape[d] {
                        break;
                    }
                    idx[d] = 0;
                }
            }
        }
        Ok(TensorData { kind, shape, data })
    }
}

/// Writes `root` as a `torch.save` archive named `archive` (the folder inside the zip).
///
/// Every tensor gets its own storage (keys `0`, `1`, …) in its [`StorageKind`];
/// dicts, lists, tuples, strings, ints, floats, bools and `None` are pickled
/// with protocol 2 as `torch.save` does. [`PyValue::Other`] cannot be written.
pub fn write_pth(root: &PyValue, archive: &str) -> Result<Vec<u8>, ImportError> {
    let mut pkl = vec![0x80, 2];
    let mut storages: Vec<Vec<u8>> = Vec::new();
    pickle_value(root, &mut pkl, &mut storages)?;
    pkl.push(b'.');
    let werr = |e: zip::result::ZipError| ImportError::Archive {
        file: "<memory>".into(),
        reason: e.to_string(),
    };
    let ioerr = |e: std::io::Error| ImportError::Archive {
        file: "<memory>".into(),
        reason: e.to_string(),
    };
    let mut zw = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);
    zw.start_file(format!("{archive}/data.pkl"), opts)
        .map_err(werr)?;
    zw.write_all(&pkl).map_err(ioerr)?;
    zw.start_file(format!("{archive}/byteorder"), opts)
        .map_err(werr)?;
    zw.write_all(b"little").map_err(ioerr)?;
    for (i, s) in storages.iter().enumerate() {
        zw.start_file(format!("{archive}/data/{i}"), opts)
            .map_err(werr)?;
        zw.write_all(s).map_err(ioerr)?;
    }
    zw.start_file(format!("{archive}/version"), opts)
        .map_err(werr)?;
    zw.write_all(b"3\n").map_err(ioerr)?;
    Ok(zw.finish().map_err(werr)?.into_inner())
}

fn pickle_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'X');
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn pickle_int(v: i64, out: &mut Vec<u8>) {
    if (0..256).contains(&v) {
        out.extend_from_slice(&[b'K', v as u8]);
    } else if (0..65536).contains(&v) {
        out.push(b'M');
        out.extend_from_slice(&(v as u16).to_le_bytes());
    } else if i32::try_from(v).is_ok() {
        out.push(b'J');
        out.extend_from_slice(&(v as i32).to_le_bytes());
    } else {
        out.extend_from_slice(&[0x8a, 8]);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn pickle_global(module: &str, name: &str, out: &mut Vec<u8>) {
    out.push(b'c');
    out.extend_from_slice(module.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
}

fn pickle_value(
    v: &PyValue,
    out: &mut Vec<u8>,
    storages: &mut Vec<Vec<u8>>,
) -> Result<(), ImportError> {
    match v {
        PyValue::None => out.push(b'N'),
        PyValue::Bool(b) => out.push(if *b { 0x88 } else { 0x89 }),
        PyValue::Int(i) => pickle_int(*i, out),
        PyValue::Float(f) => {
            out.push(b'G');
            out.extend_from_slice(&f.to_be_bytes());
        }
        PyValue::Str(s) => pickle_str(s, out),
        PyValue::List(items) => {
            out.push(b']');
            if !items.is_empty() {
                out.push(b'(');
                for x in items {
                    pickle_value(x, out, storages)?;
                }
                out.push(b'e');
            }
        }
        PyValue::Tuple(items) => {
            out.push(b'(');
            for x in items {
                pickle_value(x, out, storages)?;
            }
            out.push(b't');
        }
        PyValue::Dict(items) => {
            out.push(b'}');
            if !items.is_empty() {
                out.push(b'(');
                for (k, x) in items {
                    pickle_value(k, out, storages)?;
                    pickle_value(x, out, storages)?;
                }
                out.push(b'u');
            }
        }
        PyValue::Tensor(t) => {
            let n: usize = t.shape.iter().product();
            if n != t.data.len() {
                return Err(ImportError::Tensor {
                    file: "<memory>".into(),
                    tensor: format!("storage {}", storages.len()),
                    reason: format!("shape {:?} but {} values", t.shape, t.data.len()),
                });
            }
            let key = storages.len();
            let mut bytes = Vec::with_capacity(n * t.kind.size());
            for &x in &t.data {
                t.kind.encode(x, &mut bytes);
            }
            storages.push(bytes);
            pickle_global("torch._utils", "_rebuild_tensor_v2", out);
            out.push(b'(');
            // Persistent id ('storage', torch.<Kind>Storage, key, 'cpu', numel).
            out.push(b'(');
            pickle_str("storage", out);
            pickle_global("torch", t.kind.class_name(), out);
            pickle_str(&key.to_string(), out);
            pickle_str("cpu", out);
            pickle_int(n as i64, out);
            out.push(b't');
            out.push(b'Q');
            pickle_int(0, out);
            out.push(b'(');
            for &d in &t.shape {
                pickle_int(d as i64, out);
            }
            out.push(b't');
            // Row-major strides.
            let mut strides = vec![1usize; t.shape.len()];
            for d in (0..t.shape.len().saturating_sub(1)).rev() {
                strides[d] = strides[d + 1] * t.shape[d + 1];
            }
            out.push(b'(');
            for s in strides {
                pickle_int(s as i64, out);
            }
            out.push(b't');
            out.push(0x89);
            pickle_global("collections", "OrderedDict", out);
            out.push(b')');
            out.push(b'R');
            out.push(b't');
            out.push(b'R');
        }
        PyValue::Other(class) => {
            return Err(ImportError::Archive {
                file: "<memory>".into(),
                reason: format!("cannot write an object of class {class}"),
            })
        }
    }
    Ok(())
}
