//! Opening a model: file → tensor index → configuration + tokenizer, and the
//! names of each architecture's weights in each file format.

pub mod names;

use crate::config::{Mla, ModelConfig};
use crate::error::{Error, Result};
use crate::format::{self, TensorIndex, TensorReader};
use crate::source::{model_files, FileSource, ModelPath, WeightSource};
use crate::tokenizer::Tokenizer;
use std::path::Path;
use std::sync::Arc;

/// Everything read from a model's headers: enough to build any backend.
pub struct ModelFiles {
    /// A short name for output (the file or folder name).
    pub name: String,
    pub config: ModelConfig,
    pub index: TensorIndex,
    pub tokenizer: Tokenizer,
}

impl ModelFiles {
    /// Open a `.gguf` file or a Hugging Face folder.
    pub fn open(path: &Path) -> Result<Self> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match model_files(path)? {
            ModelPath::Gguf(file) => {
                let src: Arc<dyn WeightSource> = Arc::new(FileSource::open(&file)?);
                Self::from_gguf(name, src)
            }
            ModelPath::HfFolder(dir) => {
                let index = format::safetensors::open_folder(&dir)?;
                let cfg_path = dir.join("config.json");
                let text = std::fs::read_to_string(&cfg_path)
                    .map_err(|e| Error::io(format!("cannot read {}", cfg_path.display()), e))?;
                let json: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| Error::Config(format!("{} is not valid JSON: {e}", cfg_path.display())))?;
                let config = ModelConfig::from_hf_json(&json, &index)?;
                let tokenizer = Tokenizer::from_hf_folder(&dir)?;
                Ok(ModelFiles { name, config, index, tokenizer })
            }
        }
    }

    /// A GGUF from any byte source (a file, or a browser download).
    pub fn from_gguf(name: String, src: Arc<dyn WeightSource>) -> Result<Self> {
        let index = format::gguf::parse(src)?;
        let config = ModelConfig::from_gguf(&index)?;
        let tokenizer = Tokenizer::from_gguf(&index.metadata)?;
        Ok(ModelFiles { name, config, index, tokenizer })
    }
}

/// Layer `layer`'s MLA up-projection `W_kvb` in f32, `[heads · (nope + v), rank]`
/// (per head: the `nope` rows of `W_uk,h`, then the `v` rows of `W_uv,h`), from
/// one `kv_b` tensor (Hugging Face, older GGUF) or from llama.cpp's split
/// `k_b` `[heads, rank, nope]` (`W_uk,h` transposed) and `v_b` `[heads, v, rank]`.
/// Both backends read it this one way.
pub async fn mla_kv_b(index: &TensorIndex, reader: &impl TensorReader, layer: usize, heads: usize, m: &Mla) -> Result<Vec<f32>> {
    let (h, r, n, v) = (heads, m.kv_lora_rank, m.qk_nope, m.v_head_dim);
    let name = |w| names::layer(index.kind, layer, w);
    if index.get(&name(names::Layer::KvB)).is_some() {
        let t = index.require_matrix(&name(names::Layer::KvB), (h * (n + v)) as u64, r as u64)?;
        return index.read_f32_from(reader, t).await;
    }
    let (kb, vb) = (index.require(&name(names::Layer::KB))?, index.require(&name(names::Layer::VB))?);
    if kb.shape != [h as u64, r as u64, n as u64] || vb.shape != [h as u64, v as u64, r as u64] {
        return Err(Error::Config(format!(
            "{:?} {:?} / {:?} {:?} do not match {h} heads, rank {r}, nope {n}, v {v}",
            kb.name, kb.shape, vb.name, vb.shape
        )));
    }
    let (kb, vb) = (index.read_f32_from(reader, kb).await?, index.read_f32_from(reader, vb).await?);
    let mut w = vec![0f32; h * (n + v) * r];
    for hd in 0..h {
        for i in 0..n {
            for j in 0..r {
                w[(hd * (n + v) + i) * r + j] = kb[(hd * r + j) * n + i];
            }
        }
        let dst = (hd * (n + v) + n) * r;
        w[dst..dst + v * r].copy_from_slice(&vb[hd * v * r..][..v * r]);
    }
    Ok(w)
}
