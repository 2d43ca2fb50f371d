//! GGUF v2/v3 headers: metadata key/values, tensor infos, alignment.
//!
//! Layout (little-endian): `"GGUF"`, version u32, tensor count u64, kv count
//! u64, the kvs (`string key, u32 type, value`), the tensor infos (`string name,
//! u32 n_dims, u64 dims[n_dims] (innermost first), u32 type, u64 offset`), then
//! padding to `general.alignment` (default 32) and the tensor data.
//!
//! Every count and length is checked against the bytes left in the file before
//! anything is allocated, so a corrupt or hostile header gives an error, never a
//! panic or a huge allocation.

use super::{FileKind, MetaValue, TensorIndex, TensorInfo};
use crate::error::{Error, Result};
use crate::quant::DType;
use crate::source::WeightSource;
use std::collections::BTreeMap;
use std::sync::Arc;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal; nothing real nests deeper than this.
const MAX_NESTING: u32 = 4;
/// Header bytes fetched per read.
const CHUNK: u64 = 1 << 20;
/// No single metadata string or array is larger than this (real tokenizer
/// arrays are a few MB); it bounds what a hostile header can make us allocate.
const MAX_VALUE_BYTES: u64 = 256 << 20;
/// Up-front capacity for counts read from the file; vectors grow past it only
/// as real items are parsed.
const MAX_PREALLOC: u64 = 4096;

fn err(msg: impl std::fmt::Display) -> Error {
    Error::format("GGUF", msg)
}

/// Buffered sequential reads over a random-access source.
struct Reader<'a> {
    src: &'a dyn WeightSource,
    pos: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        self.src.len().saturating_sub(self.pos)
    }

    fn bytes(&mut self, n: u64, what: &str) -> Result<&[u8]> {
        if n > self.remaining() {
            return Err(err(format!(
                "{what} at offset {} needs {n} bytes but the file ends at {} (truncated file?)",
                self.pos,
                self.src.len()
            )));
        }
        let buf_end = self.buf_start + self.buf.len() as u64;
        if self.pos < self.buf_start || self.pos + n > buf_end {
            let want = n.max(CHUNK).min(self.remaining());
            let len = usize::try_from(want).map_err(|_| err(format!("{what}: {want} bytes do not fit in memory")))?;
            let mut buf = vec![0u8; len];
            match self.src.read_at(self.pos, &mut buf) {
                Ok(()) => {}
                // A partial source: read only what is needed, so the error (if
                // any) names the bytes really required.
                Err(Error::NeedBytes { .. }) if want > n => {
                    buf.truncate(n as usize);
                    self.src.read_at(self.pos, &mut buf)?;
                }
                Err(e) => return Err(e),
            }
            self.buf = buf;
            self.buf_start = self.pos;
        }
        let start = (self.pos - self.buf_start) as usize;
        self.pos += n;
        Ok(&self.buf[start..start + n as usize])
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.bytes(N as u64, what)?.try_into().expect("N bytes"))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let len = self.u64(what)?;
        if len > self.remaining() {
            return Err(err(format!(
                "{what} at offset {at} claims {len} bytes, past the end of the file ({} bytes)",
                self.src.len()
            )));
        }
        if len > MAX_VALUE_BYTES {
            return Err(err(format!("{what} at offset {at} claims {len} bytes (over the {MAX_VALUE_BYTES}-byte limit)")));
        }
        let bytes = self.bytes(len, what)?;
        // Token strings of a few converters are not valid UTF-8; keep them usable.
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>(key)?[0]),
            1 => MetaValue::I8(self.array::<1>(key)?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(key)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(key)?)),
            4 => MetaValue::U32(self.u32(key)?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(key)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(err(format!("key {key:?}: boolean byte is {b}, not 0 or 1"))),
            },
            8 => MetaValue::String(self.string(key)?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err(err(format!("key {key:?}: arrays nested more than {MAX_NESTING} deep")));
                }
                let at = self.pos;
                let elem = self.u32(key)?;
                let count = self.u64(key)?;
                let min = min_value_size(elem)
                    .ok_or_else(|| err(format!("key {key:?}: array of unknown value type {elem}")))?;
                if count.checked_mul(min).is_none_or(|n| n > self.remaining() || n > MAX_VALUE_BYTES) {
                    return Err(err(format!(
                        "key {key:?}: array at offset {at} claims {count} items, more than the file's remaining {} bytes can hold",
                        self.remaining()
                    )));
                }
                let mut items = Vec::with_capacity(count.min(MAX_PREALLOC) as usize);
                for _ in 0..count {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64(key)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(key)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(key)?)),
            t => return Err(err(format!("key {key:?} has unknown value type {t}"))),
        })
    }
}

/// Smallest encoding of a value of GGUF type `ty`, for bounding array counts.
fn min_value_size(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4 | 5 | 6 => 4,
        8 | 10 | 11 | 12 => 8,
        9 => 12,
        _ => return None,
    })
}

/// Parse a GGUF file's header into a tensor index.
pub fn parse(src: Arc<dyn WeightSource>) -> Result<TensorIndex> {
    let (tensors, metadata) = parse_header(src.as_ref())?;
    TensorIndex::new(FileKind::Gguf, vec![src], tensors, metadata)
}

/// A split GGUF's name, as llama.cpp's gguf-split writes it:
/// `PREFIX-00001-of-00003.gguf` → (PREFIX, 1, 3).
pub fn split_name(file_name: &str) -> Option<(&str, usize, usize)> {
    let stem = file_name.strip_suffix(".gguf")?;
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (prefix, no) = rest.rsplit_once('-')?;
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(no) || !digits(count) {
        return None;
    }
    let (no, count) = (no.parse().ok()?, count.parse().ok()?);
    (no >= 1 && no <= count).then_some((prefix, no, count))
}

/// The name of split `no` of `count` with `prefix`.
pub fn split_file_name(prefix: &str, no: usize, count: usize) -> String {
    format!("{prefix}-{no:05}-of-{count:05}.gguf")
}

/// A split GGUF from its splits' sources, in order: every split's tensors
/// (each reading its own file), the first split's metadata.
pub fn parse_splits(srcs: Vec<Arc<dyn WeightSource>>) -> Result<TensorIndex> {
    let mut tensors = Vec::new();
    let mut metadata = None;
    for (i, src) in srcs.iter().enumerate() {
        let (ts, meta) = parse_header(src.as_ref())?;
        if let Some(n) = meta.get("split.count").and_then(|v| v.as_u64()) {
            if n as usize != srcs.len() {
                return Err(err(format!("{} says the model has {n} splits, not the {} found", src.name(), srcs.len())));
            }
        }
        tensors.extend(ts.into_iter().map(|t| TensorInfo { file: i, ..t }));
        metadata.get_or_insert(meta);
    }
    TensorIndex::new(FileKind::Gguf, srcs, tensors, metadata.unwrap_or_default())
}

fn parse_header(src: &dyn WeightSource) -> Result<(Vec<TensorInfo>, BTreeMap<String, MetaValue>)> {
    let mut r = Reader { src, pos: 0, buf: Vec::new(), buf_start: 0 };
    if src.len() < 4 {
        return Err(err(format!("{} is {} bytes long, too short to be a GGUF file", src.name(), src.len())));
    }
    let magic = r.array::<4>("magic")?;
    if &magic != MAGIC {
        let hint = match &magic {
            b"lmgg" | b"fmgg" | b"tjgg" | b"algg" => " (an old pre-GGUF ggml file: re-convert it with a current llama.cpp)",
            [b'{', ..] | [_, _, _, 0] => " (looks like a safetensors file or JSON, not GGUF)",
            _ => "",
        };
        return Err(err(format!("{} does not start with \"GGUF\" (found {:?}){hint}", src.name(), String::from_utf8_lossy(&magic))));
    }
    let version = r.u32("version")?;
    match version {
        2 | 3 => {}
        1 => return Err(Error::Unsupported("GGUF version 1 (2023); re-convert the model with a current llama.cpp".into())),
        v if v.swap_bytes() <= 3 => {
            return Err(Error::Unsupported("big-endian GGUF; use the little-endian file".into()))
        }
        v => return Err(Error::Unsupported(format!("GGUF version {v}; baleen reads versions 2 and 3"))),
    }
    let n_tensors = r.u64("tensor count")?;
    let n_kv = r.u64("metadata count")?;
    // Each kv takes at least 13 bytes, each tensor info at least 24.
    if n_kv.checked_mul(13).is_none_or(|n| n > r.remaining()) {
        return Err(err(format!("header claims {n_kv} metadata entries, more than the file can hold")));
    }
    if n_tensors.checked_mul(24).is_none_or(|n| n > r.remaining()) {
        return Err(err(format!("header claims {n_tensors} tensors, more than the file can hold")));
    }

    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = r.string(&format!("key of metadata entry {i}"))?;
        let ty = r.u32(&key)?;
        let value = r.value(ty, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(err(format!("metadata key {key:?} appears twice")));
        }
    }

    struct Raw {
        name: String,
        dtype: DType,
        shape: Vec<u64>,
        rel_offset: u64,
        nbytes: u64,
    }
    let mut raws = Vec::with_capacity(n_tensors.min(MAX_PREALLOC) as usize);
    for i in 0..n_tensors {
        let name = r.string(&format!("name of tensor {i}"))?;
        let n_dims = r.u32(&name)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(err(format!("tensor {name:?} has {n_dims} dimensions (GGUF allows 1 to {MAX_DIMS})")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64(&name)?);
        }
        let ty = r.u32(&name)?;
        let dtype = DType::from_ggml(ty).ok_or_else(|| err(format!("tensor {name:?} has unknown type id {ty}")))?;
        let rel_offset = r.u64(&name)?;
        if dims.contains(&0) {
            return Err(err(format!("tensor {name:?} has a zero dimension {dims:?}")));
        }
        let n = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n < 1 << 53)
            .ok_or_else(|| err(format!("tensor {name:?} dimensions {dims:?} overflow")))?;
        if dims[0] % dtype.block_size() != 0 {
            return Err(err(format!(
                "tensor {name:?}: row length {} is not a multiple of {}'s block of {}",
                dims[0],
                dtype.name(),
                dtype.block_size()
            )));
        }
        let nbytes = dtype.bytes_for(n).map_err(|e| err(format!("tensor {name:?}: {e}")))?;
        dims.reverse();
        raws.push(Raw { name, dtype, shape: dims, rel_offset, nbytes });
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() => a,
            _ => return Err(err(format!("general.alignment is {}, not a power of two", v.summary()))),
        },
    };
    let data_start = r.pos.div_ceil(alignment) * alignment;
    let file_len = src.len();
    let mut tensors = Vec::with_capacity(raws.len());
    for t in raws {
        if t.rel_offset % alignment != 0 {
            return Err(err(format!("tensor {:?} offset {} is not aligned to {alignment}", t.name, t.rel_offset)));
        }
        let end = data_start.checked_add(t.rel_offset).and_then(|o| o.checked_add(t.nbytes));
        if end.is_none_or(|e| e > file_len) {
            return Err(err(format!(
                "tensor {:?} ({} bytes at data offset {}) runs past the end of the file ({file_len} bytes): \
                 the file is truncated (incomplete download?) or its header is corrupt",
                t.name, t.nbytes, t.rel_offset
            )));
        }
        tensors.push(TensorInfo {
            name: t.name,
            dtype: t.dtype,
            shape: t.shape,
            file: 0,
            offset: data_start + t.rel_offset,
            nbytes: t.nbytes,
        });
    }
    Ok((tensors, metadata))
}

/// Writes GGUF files: used by tests (malformed-file cases, tiny models) and tools.
pub mod writer {
    use super::MetaValue;
    use crate::quant::DType;

    pub struct Tensor {
        pub name: String,
        pub dtype: DType,
        /// Outermost first, as in [`crate::format::TensorInfo`].
        pub shape: Vec<u64>,
        pub data: Vec<u8>,
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    fn type_id(v: &MetaValue) -> u32 {
        match v {
            MetaValue::U8(_) => 0,
            MetaValue::I8(_) => 1,
            MetaValue::U16(_) => 2,
            MetaValue::I16(_) => 3,
            MetaValue::U32(_) => 4,
            MetaValue::I32(_) => 5,
            MetaValue::F32(_) => 6,
            MetaValue::Bool(_) => 7,
            MetaValue::String(_) => 8,
            MetaValue::Array(_) => 9,
            MetaValue::U64(_) => 10,
            MetaValue::I64(_) => 11,
            MetaValue::F64(_) => 12,
        }
    }

    fn put_value(out: &mut Vec<u8>, v: &MetaValue) {
        match v {
            MetaValue::U8(x) => out.push(*x),
            MetaValue::I8(x) => out.push(*x as u8),
            MetaValue::U16(x) => out.extend(x.to_le_bytes()),
            MetaValue::I16(x) => out.extend(x.to_le_bytes()),
            MetaValue::U32(x) => out.extend(x.to_le_bytes()),
            MetaValue::I32(x) => out.extend(x.to_le_bytes()),
            MetaValue::F32(x) => out.extend(x.to_le_bytes()),
            MetaValue::Bool(x) => out.push(*x as u8),
            MetaValue::String(s) => put_str(out, s),
            MetaValue::Array(a) => {
                let elem = a.first().map(type_id).unwrap_or(0);
                out.extend(elem.to_le_bytes());
                out.extend((a.len() as u64).to_le_bytes());
                a.iter().for_each(|x| put_value(out, x));
            }
            MetaValue::U64(x) => out.extend(x.to_le_bytes()),
            MetaValue::I64(x) => out.extend(x.to_le_bytes()),
            MetaValue::F64(x) => out.extend(x.to_le_bytes()),
        }
    }

    /// A GGUF v3 file with 32-byte alignment.
    pub fn write(metadata: &[(String, MetaValue)], tensors: &[Tensor]) -> Vec<u8> {
        const ALIGN: usize = 32;
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((tensors.len() as u64).to_le_bytes());
        out.extend((metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            put_str(&mut out, k);
            out.extend(type_id(v).to_le_bytes());
            put_value(&mut out, v);
        }
        let mut offset = 0usize;
        for t in tensors {
            put_str(&mut out, &t.name);
            out.extend((t.shape.len() as u32).to_le_bytes());
            t.shape.iter().rev().for_each(|d| out.extend(d.to_le_bytes()));
            out.extend(t.dtype.ggml_id().to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offset += t.data.len().div_ceil(ALIGN) * ALIGN;
        }
        out.resize(out.len().div_ceil(ALIGN) * ALIGN, 0);
        for t in tensors {
            out.extend(&t.data);
            out.resize(out.len().div_ceil(ALIGN) * ALIGN, 0);
        }
        out
    }
}
