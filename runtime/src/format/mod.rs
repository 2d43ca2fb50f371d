//! Model file formats, parsed into one tensor index.
//!
//! bytes → **index** → GPU buffers → graph → tokens → text
//!
//! A [`TensorIndex`] is what a loader needs and nothing more: for each tensor its
//! name (as the checkpoint spells it), element type, shape and the byte range
//! that holds it, plus the file's metadata. Building it reads only headers.

pub mod gguf;
pub mod safetensors;

use crate::error::{Error, Result};
use crate::quant::DType;
use crate::source::WeightSource;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A GGUF metadata value (safetensors folders have config.json instead).
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            MetaValue::I8(v) => Some(v as f64),
            MetaValue::I16(v) => Some(v as f64),
            MetaValue::I32(v) => Some(v as f64),
            MetaValue::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Short display for `inspect`: long arrays are summarised.
    pub fn summary(&self) -> String {
        match self {
            MetaValue::String(s) if s.chars().count() > 80 => {
                format!("{:?}… ({} bytes)", s.chars().take(60).collect::<String>(), s.len())
            }
            MetaValue::String(s) => format!("{s:?}"),
            MetaValue::Array(a) if a.len() > 8 => {
                let head: Vec<String> = a.iter().take(4).map(|v| v.summary()).collect();
                format!("[{}, …] ({} items)", head.join(", "), a.len())
            }
            MetaValue::Array(a) => {
                format!("[{}]", a.iter().map(|v| v.summary()).collect::<Vec<_>>().join(", "))
            }
            MetaValue::F32(v) => format!("{v}"),
            MetaValue::F64(v) => format!("{v}"),
            MetaValue::Bool(v) => format!("{v}"),
            other => other.as_u64().map(|v| v.to_string()).unwrap_or_else(|| format!("{other:?}")),
        }
    }

    /// The value as JSON for `inspect --json`: numbers as numbers (an f32 as
    /// its shortest decimal, `1e-5` not `9.99999974737875e-6`; NaN and
    /// infinities as null), strings in full, arrays of up to
    /// [`MetaValue::JSON_ARRAY_MAX`] items in full. A longer array (a 50k-token
    /// vocabulary, its merges) is summarised as `{"type": "array", "len": N,
    /// "first": [its first 5 items]}`, so the output stays small.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::{json, Value};
        let float = |v: f64| serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number);
        match self {
            MetaValue::U8(v) => json!(v),
            MetaValue::I8(v) => json!(v),
            MetaValue::U16(v) => json!(v),
            MetaValue::I16(v) => json!(v),
            MetaValue::U32(v) => json!(v),
            MetaValue::I32(v) => json!(v),
            MetaValue::U64(v) => json!(v),
            MetaValue::I64(v) => json!(v),
            MetaValue::F32(v) => float(v.to_string().parse().unwrap_or(*v as f64)),
            MetaValue::F64(v) => float(*v),
            MetaValue::Bool(v) => json!(v),
            MetaValue::String(s) => json!(s),
            MetaValue::Array(a) if a.len() > Self::JSON_ARRAY_MAX => {
                let first: Vec<Value> = a.iter().take(5).map(|v| v.to_json()).collect();
                json!({ "type": "array", "len": a.len(), "first": first })
            }
            MetaValue::Array(a) => Value::Array(a.iter().map(|v| v.to_json()).collect()),
        }
    }

    /// The longest array [`MetaValue::to_json`] writes in full.
    pub const JSON_ARRAY_MAX: usize = 16;
}

/// Where one tensor lives.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// The checkpoint's own name (`blk.0.attn_q.weight`, `model.layers.0.self_attn.q_proj.weight`).
    pub name: String,
    pub dtype: DType,
    /// Outermost dimension first (row-major, as numpy and PyTorch write it):
    /// a weight of a `x ↦ W x` layer is `[out, in]`. GGUF stores dimensions
    /// innermost first; the GGUF parser reverses them.
    pub shape: Vec<u64>,
    /// Index into [`TensorIndex::sources`].
    pub file: usize,
    /// Absolute byte offset in that file.
    pub offset: u64,
    pub nbytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }
    /// `[rows, cols]` of a matrix, treating every outer dimension as rows.
    pub fn rows_cols(&self) -> (u64, u64) {
        match self.shape.split_last() {
            Some((&cols, outer)) => (outer.iter().product(), cols),
            None => (1, 1),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Gguf,
    Safetensors,
}

/// Every tensor of a model and where it is.
pub struct TensorIndex {
    pub kind: FileKind,
    pub sources: Vec<Arc<dyn WeightSource>>,
    pub tensors: Vec<TensorInfo>,
    /// GGUF key/values (empty for safetensors).
    pub metadata: BTreeMap<String, MetaValue>,
    by_name: BTreeMap<String, usize>,
}

impl TensorIndex {
    pub fn new(
        kind: FileKind,
        sources: Vec<Arc<dyn WeightSource>>,
        tensors: Vec<TensorInfo>,
        metadata: BTreeMap<String, MetaValue>,
    ) -> Result<Self> {
        let mut by_name = BTreeMap::new();
        for (i, t) in tensors.iter().enumerate() {
            if by_name.insert(t.name.clone(), i).is_some() {
                return Err(Error::format(kind.label(), format!("tensor {:?} appears twice", t.name)));
            }
        }
        Ok(TensorIndex { kind, sources, tensors, metadata, by_name })
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    pub fn require(&self, name: &str) -> Result<&TensorInfo> {
        self.get(name).ok_or_else(|| Error::Config(format!("the model has no tensor named {name:?}")))
    }

    /// A `[rows, cols]` matrix (outer dimensions count as rows), or an error
    /// naming the shape the configuration implies.
    pub fn require_matrix(&self, name: &str, rows: u64, cols: u64) -> Result<&TensorInfo> {
        let t = self.require(name)?;
        if t.rows_cols() != (rows, cols) {
            return Err(Error::Config(format!(
                "tensor {name:?} has shape {:?}; the configuration implies [{rows}, {cols}]",
                t.shape
            )));
        }
        Ok(t)
    }

    /// A vector of `len` values, dequantised to f32.
    pub fn read_vector(&self, name: &str, len: u64) -> Result<Vec<f32>> {
        crate::support::run_ready(self.read_vector_from(self, name, len))
    }

    /// [`TensorIndex::read_vector`], its bytes from `reader`.
    pub async fn read_vector_from(&self, reader: &impl TensorReader, name: &str, len: u64) -> Result<Vec<f32>> {
        let t = self.require(name)?;
        if t.n_elements() != len {
            return Err(Error::Config(format!("tensor {name:?} has shape {:?}; expected {len} values", t.shape)));
        }
        self.read_f32_from(reader, t).await
    }

    /// Read a tensor's raw bytes.
    pub fn read(&self, t: &TensorInfo) -> Result<Vec<u8>> {
        self.sources[t.file].read_vec(t.offset, t.nbytes)
    }

    /// Read a tensor and dequantise it to f32.
    pub fn read_f32(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        crate::support::run_ready(self.read_f32_from(self, t))
    }

    /// [`TensorIndex::read_f32`], its bytes from `reader`.
    pub async fn read_f32_from(&self, reader: &impl TensorReader, t: &TensorInfo) -> Result<Vec<f32>> {
        t.dtype.check_supported(&format!("tensor {:?}", t.name))?;
        let bytes = reader.read_range(t, 0, t.nbytes).await?;
        let mut out = vec![0f32; t.n_elements() as usize];
        crate::quant::dequantize(t.dtype, &bytes, &mut out)?;
        Ok(out)
    }

    pub fn total_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.nbytes).sum()
    }

    pub fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }
}

/// Where a loader gets tensor bytes: natively the index's own files (ready at
/// once); in the browser a download, which resolves when the bytes arrive.
#[allow(async_fn_in_trait)]
pub trait TensorReader {
    /// Bytes `start..start + len` of tensor `t`'s data.
    async fn read_range(&self, t: &TensorInfo, start: u64, len: u64) -> Result<Vec<u8>>;
}

/// Checks a range of a tensor's data and returns its absolute file offset.
pub fn tensor_range(t: &TensorInfo, start: u64, len: u64) -> Result<u64> {
    match start.checked_add(len) {
        Some(end) if end <= t.nbytes => Ok(t.offset + start),
        _ => Err(Error::Input(format!("tensor {:?}: bytes {start}+{len} lie outside its {} bytes", t.name, t.nbytes))),
    }
}

impl TensorReader for TensorIndex {
    async fn read_range(&self, t: &TensorInfo, start: u64, len: u64) -> Result<Vec<u8>> {
        read_from(&self.sources, t, start, len)
    }
}

/// A model's files, read as [`TensorIndex`] reads them, without the index:
/// what reads routed experts on demand once the model is loaded.
#[derive(Clone)]
pub struct Sources(pub Vec<Arc<dyn WeightSource>>);

impl TensorReader for Sources {
    async fn read_range(&self, t: &TensorInfo, start: u64, len: u64) -> Result<Vec<u8>> {
        read_from(&self.0, t, start, len)
    }
}

fn read_from(sources: &[Arc<dyn WeightSource>], t: &TensorInfo, start: u64, len: u64) -> Result<Vec<u8>> {
    let offset = tensor_range(t, start, len)?;
    let src = sources.get(t.file).ok_or_else(|| Error::Input(format!("tensor {:?}: no file {}", t.name, t.file)))?;
    src.read_vec(offset, len)
}

impl FileKind {
    pub fn label(self) -> &'static str {
        match self {
            FileKind::Gguf => "GGUF",
            FileKind::Safetensors => "safetensors",
        }
    }
}
