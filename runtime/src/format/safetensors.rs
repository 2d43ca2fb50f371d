//! safetensors: one file, or shards listed by `model.safetensors.index.json`.
//!
//! Layout: u64 header length `n`, `n` bytes of JSON (`{"name": {"dtype",
//! "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`), then the
//! data. The JSON is parsed and validated by the `safetensors` crate (offsets
//! contiguous, sizes matching shapes); we check the data fits the file.

use super::{FileKind, TensorIndex, TensorInfo};
use crate::error::{Error, Result};
use crate::quant::DType;
use crate::source::{FileSource, WeightSource};
use ::safetensors::tensor::Metadata;
use ::safetensors::Dtype;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

/// The `safetensors` crate's own bound on header size.
const MAX_HEADER: u64 = 100_000_000;

fn err(msg: impl std::fmt::Display) -> Error {
    Error::format("safetensors", msg)
}

fn dtype(d: Dtype, name: &str) -> Result<DType> {
    Ok(match d {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F64 => DType::F64,
        Dtype::I8 => DType::I8,
        Dtype::I16 => DType::I16,
        Dtype::I32 => DType::I32,
        Dtype::I64 => DType::I64,
        other => {
            return Err(Error::Unsupported(format!(
                "tensor {name:?} has safetensors dtype {other:?}; baleen reads F32, F16 and BF16 checkpoints"
            )))
        }
    })
}

/// The tensors of one safetensors file; `file` is its index among the sources.
pub fn parse_file(src: &dyn WeightSource, file: usize) -> Result<Vec<TensorInfo>> {
    let len = src.len();
    if len < 8 {
        return Err(err(format!("{} is {len} bytes long, too short for a safetensors header", src.name())));
    }
    let mut n = [0u8; 8];
    src.read_at(0, &mut n)?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER || n > len - 8 {
        return Err(err(format!(
            "{}: header length {n} is larger than the file ({len} bytes) or the 100 MB limit: not a safetensors file, or truncated",
            src.name()
        )));
    }
    let header = src.read_vec(8, n)?;
    let header = std::str::from_utf8(&header).map_err(|e| err(format!("{}: header is not UTF-8: {e}", src.name())))?;
    let meta: Metadata = serde_json::from_str(header).map_err(|e| err(format!("{}: bad header: {e}", src.name())))?;
    let data_start = 8 + n;
    let data_len = meta.data_len() as u64;
    if data_start + data_len > len {
        return Err(err(format!(
            "{}: header describes {data_len} bytes of tensor data but the file holds {} after the header (truncated download?)",
            src.name(),
            len - data_start
        )));
    }
    let mut tensors = Vec::new();
    for name in meta.offset_keys() {
        let info = meta.info(&name).expect("offset_keys lists known tensors");
        let (begin, end) = info.data_offsets;
        tensors.push(TensorInfo {
            dtype: dtype(info.dtype, &name)?,
            shape: info.shape.iter().map(|&d| d as u64).collect(),
            file,
            offset: data_start + begin as u64,
            nbytes: (end - begin) as u64,
            name,
        });
    }
    Ok(tensors)
}

/// A single safetensors source.
pub fn parse(src: Arc<dyn WeightSource>) -> Result<TensorIndex> {
    let tensors = parse_file(src.as_ref(), 0)?;
    TensorIndex::new(FileKind::Safetensors, vec![src], tensors, BTreeMap::new())
}

/// A Hugging Face folder: `model.safetensors`, or the shards named by
/// `model.safetensors.index.json`, or else every `*.safetensors` in it.
pub fn open_folder(dir: &Path) -> Result<TensorIndex> {
    let index_path = dir.join("model.safetensors.index.json");
    let mut files: Vec<String> = if index_path.is_file() {
        let text = std::fs::read_to_string(&index_path)
            .map_err(|e| Error::io(format!("cannot read {}", index_path.display()), e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| err(format!("{}: {e}", index_path.display())))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| err(format!("{} has no \"weight_map\" object", index_path.display())))?;
        let mut set = BTreeSet::new();
        for (tensor, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| err(format!("{}: weight_map[{tensor:?}] is not a file name", index_path.display())))?;
            if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                return Err(err(format!("{}: shard name {file:?} must be a plain file name", index_path.display())));
            }
            set.insert(file.to_string());
        }
        set.into_iter().collect()
    } else if dir.join("model.safetensors").is_file() {
        vec!["model.safetensors".into()]
    } else {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(format!("cannot list {}", dir.display()), e))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".safetensors"))
            .collect();
        v.sort();
        v
    };
    if files.is_empty() {
        return Err(Error::Input(format!("{}: no .safetensors files in this folder", dir.display())));
    }
    files.dedup();
    let mut sources: Vec<Arc<dyn WeightSource>> = Vec::new();
    let mut tensors = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let src = FileSource::open(&dir.join(f))?;
        tensors.extend(parse_file(&src, i)?);
        sources.push(Arc::new(src));
    }
    TensorIndex::new(FileKind::Safetensors, sources, tensors, BTreeMap::new())
}
