//! Opening a model: file → tensor index → configuration + tokenizer, and the
//! names of each architecture's weights in each file format.

pub mod names;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::format::{self, TensorIndex};
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
