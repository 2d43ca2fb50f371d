//! Opening a model (file → tensor index → configuration + tokenizer) and
//! each architecture's forward pass, written once against [`ops`]:
//! - [`llama`]: Llama, Qwen2, Qwen3, Mixtral, Qwen2-MoE, Qwen3-MoE
//!   (grouped-query attention);
//! - [`deepseek2`]: DeepSeek-V2/V3 (latent attention, DeepSeekMoE);
//! - [`gemma3`]: Gemma 3 (sliding-window attention, four norms, GeGLU);
//! - [`decoder`]: the pre-norm decoder both are, around their attention
//!   (embedding, layers, feed-forward blocks, LM head);
//! - [`names`]: each weight's name in each file format.

pub mod decoder;
pub mod deepseek2;
pub mod gemma3;
pub mod llama;
pub mod names;
pub mod ops;

use crate::config::{Arch, Mla, ModelConfig};
use crate::error::{Error, Result};
use crate::format::{self, TensorIndex, TensorReader};
use crate::source::{model_files, FileSource, ModelPath, WeightSource};
use crate::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
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
        ModelIndex::open(path)?.into_files()
    }

    /// A GGUF from any byte source (a file, or a browser download).
    pub fn from_gguf(name: String, src: Arc<dyn WeightSource>) -> Result<Self> {
        let index = format::gguf::parse(src)?;
        ModelIndex { name, index, hf_dir: None }.into_files()
    }
}

/// A model's tensor index alone, its configuration and tokenizer not yet
/// read: enough to list any well-formed file (`baleen inspect`), also one
/// whose architecture baleen cannot run.
pub struct ModelIndex {
    /// A short name for output (the file or folder name).
    pub name: String,
    pub index: TensorIndex,
    /// The Hugging Face folder the index came from; None for a GGUF.
    pub hf_dir: Option<PathBuf>,
}

impl ModelIndex {
    /// Read the tensor headers of a `.gguf` file or a Hugging Face folder.
    pub fn open(path: &Path) -> Result<Self> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match model_files(path)? {
            ModelPath::Gguf(file) => {
                let file_name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                if let Some((prefix, no, count)) = format::gguf::split_name(&file_name) {
                    // A split GGUF: open it by its first split; all of them lie beside it.
                    let first = format::gguf::split_file_name(prefix, 1, count);
                    if no != 1 {
                        return Err(Error::Input(format!("{}: split {no} of {count}; open the first, {first}", file.display())));
                    }
                    let dir = file.parent().unwrap_or(Path::new("."));
                    let srcs = (1..=count)
                        .map(|i| {
                            let p = dir.join(format::gguf::split_file_name(prefix, i, count));
                            if !p.is_file() {
                                return Err(Error::Input(format!("{}: split {i} of {count} is missing beside {first}; all {count} splits are needed", p.display())));
                            }
                            Ok(Arc::new(FileSource::open(&p)?) as Arc<dyn WeightSource>)
                        })
                        .collect::<Result<Vec<_>>>()?;
                    return Ok(ModelIndex { name, index: format::gguf::parse_splits(srcs)?, hf_dir: None });
                }
                let src: Arc<dyn WeightSource> = Arc::new(FileSource::open(&file)?);
                Ok(ModelIndex { name, index: format::gguf::parse(src)?, hf_dir: None })
            }
            ModelPath::HfFolder(dir) => {
                let index = format::safetensors::open_folder(&dir)?;
                Ok(ModelIndex { name, index, hf_dir: Some(dir) })
            }
        }
    }

    /// A Hugging Face folder's `config.json`, parsed; None for a GGUF.
    pub fn hf_config(&self) -> Option<Result<serde_json::Value>> {
        let path = self.hf_dir.as_ref()?.join("config.json");
        let read = || {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
            serde_json::from_str(&text).map_err(|e| Error::Config(format!("{} is not valid JSON: {e}", path.display())))
        };
        Some(read())
    }

    /// The hyper-parameters, or why baleen cannot run this model.
    pub fn config(&self) -> Result<ModelConfig> {
        match self.hf_config() {
            None => ModelConfig::from_gguf(&self.index),
            Some(json) => ModelConfig::from_hf_json(&json?, &self.index),
        }
    }

    pub fn tokenizer(&self) -> Result<Tokenizer> {
        match &self.hf_dir {
            None => Tokenizer::from_gguf(&self.index.metadata),
            Some(dir) => Tokenizer::from_hf_folder(dir),
        }
    }

    /// Read the configuration and tokenizer: everything a backend needs.
    pub fn into_files(self) -> Result<ModelFiles> {
        let config = self.config()?;
        let tokenizer = self.tokenizer()?;
        Ok(ModelFiles { name: self.name, config, index: self.index, tokenizer })
    }
}

/// A model's graph over one backend's weights.
pub enum Model<W: ops::Weights> {
    Llama(llama::Llama<W>),
    DeepSeek2(deepseek2::DeepSeek2<W>),
    Gemma3(gemma3::Gemma3<W>),
}

impl<W: ops::Weights> Model<W> {
    /// Open the weights `cfg`'s architecture declares through `l`.
    pub async fn load<L: ops::Load<W = W>>(l: &mut L, cfg: &ModelConfig) -> Result<Self> {
        Ok(match cfg.arch {
            Arch::DeepSeek2 => Model::DeepSeek2(deepseek2::load(l, cfg).await?),
            Arch::Gemma3 => Model::Gemma3(gemma3::load(l, cfg).await?),
            Arch::Llama | Arch::Qwen2 | Arch::Qwen2Moe | Arch::Qwen3 | Arch::Qwen3Moe => Model::Llama(llama::load(l, cfg).await?),
        })
    }

    /// Embedding and layers: the residual stream `[n, hidden]`.
    pub fn body<O: ops::Ops<W = W>>(&self, o: &mut O) -> Result<O::Act> {
        match self {
            Model::Llama(m) => m.body(o),
            Model::DeepSeek2(m) => m.body(o),
            Model::Gemma3(m) => m.body(o),
        }
    }

    /// Final norm and LM head of the rows the head runs on: logits.
    pub fn head<O: ops::Ops<W = W>>(&self, o: &mut O, x: &O::Act) -> Result<O::Act> {
        match self {
            Model::Llama(m) => m.head(o, x),
            Model::DeepSeek2(m) => m.head(o, x),
            Model::Gemma3(m) => m.head(o, x),
        }
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
