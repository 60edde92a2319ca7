//! GGUF files, the format llama.cpp and most deployable open models ship in: a header, typed
//! metadata, a tensor table and aligned tensor data.
//!
//! The file is read, not memory-mapped: a mapped file that shrinks underneath (another process
//! truncating a model being loaded) is a SIGBUS, while a read of a shrunken file is an error
//! that names the tensor. Each tensor is read once, when the model loads it.
//!
//! The header is parsed here (every length and offset bounds-checked, errors that name the
//! key or tensor at fault); the quantised blocks are decoded by candle's GGML kernels.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::quantized::{ggml_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// More array elements than any real vocabulary or merge list; a larger count is corruption.
const MAX_ARRAY: u64 = 1 << 24;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// Integers of any width that fit a `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Value::U8(_) | Value::U16(_) | Value::U32(_) | Value::U64(_) => "an unsigned integer",
            Value::I8(_) | Value::I16(_) | Value::I32(_) | Value::I64(_) => "an integer",
            Value::F32(_) | Value::F64(_) => "a float",
            Value::Bool(_) => "a bool",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
        }
    }
}

/// The tensor types this reader decodes, with their GGML ids.
const TYPES: &[(u32, &str, GgmlDType)] = &[
    (0, "F32", GgmlDType::F32),
    (1, "F16", GgmlDType::F16),
    (2, "Q4_0", GgmlDType::Q4_0),
    (3, "Q4_1", GgmlDType::Q4_1),
    (6, "Q5_0", GgmlDType::Q5_0),
    (7, "Q5_1", GgmlDType::Q5_1),
    (8, "Q8_0", GgmlDType::Q8_0),
    (9, "Q8_1", GgmlDType::Q8_1),
    (10, "Q2_K", GgmlDType::Q2K),
    (11, "Q3_K", GgmlDType::Q3K),
    (12, "Q4_K", GgmlDType::Q4K),
    (13, "Q5_K", GgmlDType::Q5K),
    (14, "Q6_K", GgmlDType::Q6K),
    (15, "Q8_K", GgmlDType::Q8K),
    (30, "BF16", GgmlDType::BF16),
];

/// A tensor's type: one of the types in `TYPES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorType {
    pub id: u32,
    pub name: &'static str,
    pub ggml: GgmlDType,
}

impl TensorType {
    fn from_id(id: u32) -> Option<Self> {
        TYPES
            .iter()
            .find(|t| t.0 == id)
            .map(|&(id, name, ggml)| Self { id, name, ggml })
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Row-major shape, outermost first (GGUF stores it innermost first; reversed here), so a
    /// `[d_out, d_in]` projection reads like a PyTorch `nn.Linear` weight.
    pub shape: Vec<usize>,
    pub kind: TensorType,
    /// Byte range in the file.
    start: u64,
    len: usize,
}

impl TensorInfo {
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn bytes(&self) -> usize {
        self.len
    }
}

/// An open GGUF file.
pub struct GgufFile {
    path: PathBuf,
    file: std::fs::File,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, TensorInfo>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Whether `path` is a file that starts with the GGUF magic.
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    path.is_file()
        && std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
        && &magic == MAGIC
}

/// A bounds-checked little-endian reader over the first bytes of a file of `total` bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
    total: u64,
    /// Set when a read ran past `bytes` but not past the file: read more and parse again.
    short: bool,
}

impl<'a> Cursor<'a> {
    fn err(&self, msg: String) -> ModelError {
        ModelError::Weights {
            path: self.path.to_path_buf(),
            msg,
        }
    }

    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let out = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(out)
            }
            None => {
                self.short = (self.pos as u64).saturating_add(n as u64) <= self.total;
                Err(self.err(format!(
                    "truncated: {} needs {n} bytes at offset {}, the file has {}; re-download or reinstall it",
                    what(),
                    self.pos,
                    self.total
                )))
            }
        }
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let b = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn count(&mut self, what: &dyn Fn() -> String) -> Result<usize> {
        let n = self.u64(what)?;
        if n > MAX_ARRAY {
            return Err(self.err(format!(
                "{} claims {n} entries (more than {MAX_ARRAY}); the file is corrupt",
                what()
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let n = self.u64(what)?;
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n as u64 <= self.total)
            .ok_or_else(|| self.err(format!("{} has an impossible length {n}", what())))?;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec())
            .map_err(|e| self.err(format!("{} is not valid UTF-8 ({e})", what())))
    }

    fn value(&mut self, kind: u32, key: &str, depth: usize) -> Result<Value> {
        let what = || format!("metadata `{key}`");
        Ok(match kind {
            0 => Value::U8(self.array::<1>(&what)?[0]),
            1 => Value::I8(self.array::<1>(&what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => Value::U32(self.u32(&what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => match self.array::<1>(&what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(format!("metadata `{key}`: {b} is not a bool"))),
            },
            8 => Value::String(self.string(&what)?),
            9 if depth == 0 => {
                let inner = self.u32(&what)?;
                let n = self.count(&what)?;
                let mut items = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    items.push(self.value(inner, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(&what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            9 => return Err(self.err(format!("metadata `{key}`: nested arrays are not supported"))),
            other => {
                return Err(self.err(format!(
                    "metadata `{key}` has unknown value type {other}; the file is corrupt or from a newer GGUF version"
                )))
            }
        })
    }
}

/// What a GGUF file's header says: its metadata and where each tensor lies.
pub struct Header {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, TensorInfo>,
}

impl Header {
    /// Parses the header from `bytes`, the first bytes of a file of `total` bytes; tensors are
    /// checked to lie inside those `total` bytes. The error says whether the parse ran past
    /// `bytes` but not past the file (read more and try again).
    pub fn parse(
        bytes: &[u8],
        total: u64,
        path: &Path,
    ) -> std::result::Result<Header, (ModelError, bool)> {
        let mut c = Cursor {
            bytes,
            pos: 0,
            path,
            total,
            short: false,
        };
        Self::read(&mut c).map_err(|e| (e, c.short))
    }

    fn read(c: &mut Cursor<'_>) -> Result<Header> {
        let total = c.total;
        let magic = c.array::<4>(&|| "the GGUF magic".to_string())?;
        if &magic != MAGIC {
            return Err(c.err(format!(
                "not a GGUF file (starts with {magic:02x?}, expected \"GGUF\")"
            )));
        }
        let version = c.u32(&|| "the version".to_string())?;
        if !(2..=3).contains(&version) {
            return Err(c.err(format!(
                "GGUF version {version} is not supported (2 and 3 are)"
            )));
        }
        let n_tensors = c.count(&|| "the tensor count".to_string())?;
        let n_kv = c.count(&|| "the metadata count".to_string())?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&|| format!("metadata key {i}"))?;
            let kind = c.u32(&|| format!("the type of metadata `{key}`"))?;
            let value = c.value(kind, &key, 0)?;
            metadata.insert(key, value);
        }
        let mut table = Vec::with_capacity(n_tensors.min(1 << 16));
        for i in 0..n_tensors {
            let name = c.string(&|| format!("tensor name {i}"))?;
            let what = || format!("tensor `{name}`");
            let n_dims = c.u32(&what)? as usize;
            if !(1..=4).contains(&n_dims) {
                return Err(c.err(format!(
                    "tensor `{name}` has {n_dims} dimensions (1 to 4 are valid)"
                )));
            }
            let mut shape = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                shape.push(c.u64(&what)?);
            }
            let type_id = c.u32(&what)?;
            let offset = c.u64(&what)?;
            table.push((name, shape, type_id, offset));
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => v.as_u64().filter(|a| a.is_power_of_two()).ok_or_else(|| {
                c.err(format!(
                    "metadata `general.alignment` is {v:?}, not a power of two"
                ))
            })?,
        };
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let mut tensors = BTreeMap::new();
        for (name, dims, type_id, offset) in table {
            let kind = TensorType::from_id(type_id).ok_or_else(|| {
                c.err(format!(
                    "tensor `{name}` has quantisation type {type_id}, which Glassbox cannot decode; supported: {}",
                    TYPES.iter().map(|t| t.1).collect::<Vec<_>>().join(", ")
                ))
            })?;
            let elements = dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .filter(|&n| n > 0 && n < (1 << 40))
                .ok_or_else(|| {
                    c.err(format!("tensor `{name}` has an impossible shape {dims:?}"))
                })?;
            let block = kind.ggml.block_size() as u64;
            if elements % block != 0 || dims[0] % block != 0 {
                return Err(c.err(format!(
                    "tensor `{name}` of type {kind} has shape {dims:?}: rows must be whole blocks of {block}"
                )));
            }
            let len = elements / block * kind.ggml.type_size() as u64;
            let start = data_start
                .checked_add(offset)
                .filter(|_| offset % alignment == 0);
            let end = start.and_then(|s| s.checked_add(len));
            let (start, end) = match (start, end) {
                (Some(s), Some(e)) if e <= total => (s, e),
                _ => {
                    return Err(c.err(format!(
                        "tensor `{name}` ({len} bytes at data offset {offset}) lies outside the file's {total} bytes; the file is truncated — re-download or reinstall it"
                    )))
                }
            };
            let len = usize::try_from(end - start)
                .map_err(|_| c.err(format!("tensor `{name}` is too large for this machine")))?;
            let shape = dims.iter().rev().map(|&d| d as usize).collect();
            tensors.insert(
                name,
                TensorInfo {
                    shape,
                    kind,
                    start,
                    len,
                },
            );
        }
        Ok(Header {
            version,
            metadata,
            tensors,
        })
    }
}

impl GgufFile {
    /// Opens `path` and parses its header and tensor table (tensor data is read on demand).
    pub fn open(path: &Path) -> Result<Self> {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        let total = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
        // The header's size is known only once parsed: read a prefix, and a longer one if the
        // parse ran past it (vocabularies make headers of a few MB).
        let mut want = total.min(1 << 20);
        loop {
            let mut prefix = vec![0u8; want as usize];
            file.read_exact_at(&mut prefix, 0)
                .map_err(|e| ModelError::io(path, e))?;
            match Header::parse(&prefix, total, path) {
                Ok(h) => {
                    return Ok(Self {
                        path: path.to_path_buf(),
                        file,
                        version: h.version,
                        metadata: h.metadata,
                        tensors: h.tensors,
                    })
                }
                Err((e, short)) if !short || want >= total => return Err(e),
                Err(_) => want = total.min(want.saturating_mul(4)),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn err(&self, msg: impl Into<String>) -> ModelError {
        ModelError::Weights {
            path: self.path.clone(),
            msg: msg.into(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required metadata value, read with `as_`; errors name the key and what was found.
    pub fn require<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        as_: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<T> {
        match self.metadata.get(key) {
            None => Err(self.err(format!("metadata `{key}` is missing"))),
            Some(v) => as_(v).ok_or_else(|| {
                self.err(format!(
                    "metadata `{key}` should be {expected}, found {}",
                    v.kind()
                ))
            }),
        }
    }

    /// An optional metadata value; present but of the wrong type is an error.
    pub fn optional<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        as_: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<T>> {
        if self.metadata.contains_key(key) {
            self.require(key, expected, as_).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors
            .get(name)
            .ok_or_else(|| self.err(format!("tensor `{name}` is missing")))
    }

    /// The tensor's bytes, as stored, read from the file now.
    pub fn raw(&self, name: &str) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let t = self.info(name)?;
        let mut buf = vec![0u8; t.len];
        self.file.read_exact_at(&mut buf, t.start).map_err(|e| {
            self.err(format!(
                "tensor `{name}` ({} bytes at offset {}): {e}; the file changed or shrank since it was opened",
                t.len, t.start
            ))
        })?;
        Ok(buf)
    }

    /// The tensor as candle's quantised tensor (kept in its storage type).
    pub fn quantized(&self, name: &str, device: &Device) -> Result<QTensor> {
        let t = self.info(name)?;
        ggml_file::qtensor_from_ggml(t.kind.ggml, &self.raw(name)?, t.shape.clone(), device)
            .map_err(|e| self.err(format!("tensor `{name}` ({}): {e}", t.kind)))
    }

    /// The tensor dequantised to f32 on the CPU, checked for NaN and infinity.
    pub fn dequantize(&self, name: &str) -> Result<Tensor> {
        let q = self.quantized(name, &Device::Cpu)?;
        let t = q
            .dequantize(&Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| self.err(format!("tensor `{name}`: cannot dequantise ({e})")))?;
        if !t.sum_all()?.to_scalar::<f32>()?.is_finite() {
            return Err(self.err(format!("tensor `{name}` contains NaN or infinite values")));
        }
        Ok(t)
    }
}
