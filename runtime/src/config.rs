//! Hyper-parameters, from GGUF metadata (`{arch}.*` keys) or a Hugging Face
//! `config.json`. One struct serves both, so a model runs the same whichever
//! file it came in.

use crate::error::{Error, Result};
use crate::format::{FileKind, TensorIndex};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3, SmolLM2, DeepSeek-R1-Distill-Llama: no biases.
    Llama,
    /// Qwen2/2.5, DeepSeek-R1-Distill-Qwen: q/k/v biases.
    Qwen2,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }
}

/// Which elements RoPE rotates together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopePairing {
    /// `(i, i + d/2)`: Hugging Face's `rotate_half` (GPT-NeoX style).
    Halves,
    /// `(2i, 2i + 1)`: the original RoPE; llama.cpp's converter permutes llama's
    /// q/k rows so GGUF llama models use this.
    Adjacent,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1: low frequencies divided by `factor`, a smooth ramp between.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position: f64 },
    /// Per-dimension frequency divisors stored in the file (GGUF `rope_freqs.weight`,
    /// what llama.cpp's converter writes for Llama 3 scaling).
    FreqFactors(Vec<f32>),
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// SwiGLU hidden width.
    pub ffn: usize,
    pub vocab: usize,
    pub rms_eps: f32,
    pub rope_theta: f64,
    pub rope_pairing: RopePairing,
    pub rope_scaling: RopeScaling,
    pub context_length: usize,
    pub tie_embeddings: bool,
    pub qkv_bias: bool,
}

fn cfg_err(msg: impl std::fmt::Display) -> Error {
    Error::Config(msg.to_string())
}

fn arch_from_name(name: &str) -> Result<Arch> {
    match name {
        "llama" | "LlamaForCausalLM" => Ok(Arch::Llama),
        "qwen2" | "Qwen2ForCausalLM" => Ok(Arch::Qwen2),
        other => Err(Error::Unsupported(format!(
            "architecture {other:?}; baleen runs llama (Llama, SmolLM2, DeepSeek-R1-Distill-Llama) and qwen2 \
             (Qwen2, DeepSeek-R1-Distill-Qwen)"
        ))),
    }
}

impl ModelConfig {
    /// The architecture's rope pairing for a given file kind.
    fn pairing(arch: Arch, kind: FileKind) -> RopePairing {
        match (arch, kind) {
            (Arch::Llama, FileKind::Gguf) => RopePairing::Adjacent,
            _ => RopePairing::Halves,
        }
    }

    pub fn from_gguf(index: &TensorIndex) -> Result<Self> {
        let arch_name = index
            .meta("general.architecture")
            .and_then(|v| v.as_str())
            .ok_or_else(|| cfg_err("GGUF has no general.architecture"))?;
        let arch = arch_from_name(arch_name)?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let get_u = |k: &str| -> Result<usize> {
            let v = index.meta(&key(k)).ok_or_else(|| cfg_err(format!("GGUF is missing {}", key(k))))?;
            v.as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .ok_or_else(|| cfg_err(format!("{} is {}, not a count", key(k), v.summary())))
        };
        let opt_f = |k: &str| index.meta(&key(k)).and_then(|v| v.as_f64());
        let hidden = get_u("embedding_length")?;
        let n_heads = get_u("attention.head_count")?;
        let n_kv_heads = if index.meta(&key("attention.head_count_kv")).is_some() {
            get_u("attention.head_count_kv")?
        } else {
            n_heads
        };
        let head_dim = if index.meta(&key("attention.key_length")).is_some() {
            get_u("attention.key_length")?
        } else {
            hidden / n_heads.max(1)
        };
        let embd = index.require("token_embd.weight")?;
        let vocab = match embd.shape.as_slice() {
            [v, _] => *v as usize,
            other => return Err(cfg_err(format!("token_embd.weight has shape {other:?}; expected [vocab, hidden]"))),
        };
        let rope_scaling = match index.meta(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
            None | Some("none") => RopeScaling::None,
            Some("linear") => RopeScaling::Linear {
                factor: opt_f("rope.scaling.factor").ok_or_else(|| cfg_err("linear rope scaling without a factor"))?,
            },
            Some(other) => return Err(Error::Unsupported(format!("rope scaling type {other:?} for {arch_name}"))),
        };
        let rope_scaling = match index.get("rope_freqs.weight") {
            Some(t) => RopeScaling::FreqFactors(index.read_f32(t)?),
            None => rope_scaling,
        };
        let cfg = ModelConfig {
            arch,
            hidden,
            n_layers: get_u("block_count")?,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn: get_u("feed_forward_length")?,
            vocab,
            rms_eps: opt_f("attention.layer_norm_rms_epsilon").unwrap_or(1e-5) as f32,
            rope_theta: opt_f("rope.freq_base").unwrap_or(10000.0),
            rope_pairing: Self::pairing(arch, FileKind::Gguf),
            rope_scaling,
            context_length: get_u("context_length")?,
            tie_embeddings: index.get("output.weight").is_none(),
            qkv_bias: index.get("blk.0.attn_q.bias").is_some(),
        };
        cfg.validate()
    }

    pub fn from_hf_json(json: &Value, index: &TensorIndex) -> Result<Self> {
        let arch_name = json
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            .or_else(|| json.get("model_type").and_then(|m| m.as_str()))
            .ok_or_else(|| cfg_err("config.json names no architecture (\"architectures\" or \"model_type\")"))?;
        let arch = arch_from_name(arch_name)?;
        let u = |k: &str| -> Result<usize> {
            json.get(k)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| cfg_err(format!("config.json is missing {k:?} (a positive integer)")))
        };
        let opt_u = |k: &str| json.get(k).and_then(|v| v.as_u64()).map(|v| v as usize);
        let hidden = u("hidden_size")?;
        let n_heads = u("num_attention_heads")?;
        // transformers ≥ 5 writes `rope_parameters` (theta inside); hub configs
        // have `rope_theta` and `rope_scaling`.
        let rope_params = json.get("rope_parameters").filter(|v| v.is_object()).map(|p| {
            // Per-layer-type form: {"full_attention": {...}, ...}.
            if p.get("rope_type").is_none() && p.get("rope_theta").is_none() {
                p.get("full_attention").unwrap_or(p)
            } else {
                p
            }
        });
        let rope_theta = rope_params
            .and_then(|p| p.get("rope_theta"))
            .or_else(|| json.get("rope_theta"))
            .and_then(|v| v.as_f64())
            .unwrap_or(10000.0);
        let scaling = json.get("rope_scaling").filter(|v| v.is_object()).or(rope_params);
        let rope_scaling = match scaling {
            None => RopeScaling::None,
            Some(s) => {
                let ty = s.get("rope_type").or_else(|| s.get("type")).and_then(|t| t.as_str()).unwrap_or("default");
                let f = |k: &str| -> Result<f64> {
                    s.get(k)
                        .and_then(|v| v.as_f64())
                        .ok_or_else(|| cfg_err(format!("rope scaling {ty:?} is missing {k:?}")))
                };
                match ty {
                    "default" => RopeScaling::None,
                    "linear" => RopeScaling::Linear { factor: f("factor")? },
                    "llama3" => RopeScaling::Llama3 {
                        factor: f("factor")?,
                        low_freq_factor: f("low_freq_factor")?,
                        high_freq_factor: f("high_freq_factor")?,
                        original_max_position: f("original_max_position_embeddings")?,
                    },
                    other => return Err(Error::Unsupported(format!("rope scaling type {other:?} for {arch_name}"))),
                }
            }
        };
        let embd = index.require("model.embed_tokens.weight")?;
        let vocab = match embd.shape.as_slice() {
            [v, _] => *v as usize,
            other => return Err(cfg_err(format!("model.embed_tokens.weight has shape {other:?}; expected [vocab, hidden]"))),
        };
        let cfg = ModelConfig {
            arch,
            hidden,
            n_layers: u("num_hidden_layers")?,
            n_heads,
            n_kv_heads: opt_u("num_key_value_heads").unwrap_or(n_heads),
            head_dim: opt_u("head_dim").unwrap_or(hidden / n_heads.max(1)),
            ffn: u("intermediate_size")?,
            vocab,
            rms_eps: json.get("rms_norm_eps").and_then(|v| v.as_f64()).unwrap_or(1e-6) as f32,
            rope_theta,
            rope_pairing: Self::pairing(arch, FileKind::Safetensors),
            rope_scaling,
            context_length: opt_u("max_position_embeddings").unwrap_or(4096),
            tie_embeddings: json.get("tie_word_embeddings").and_then(|v| v.as_bool()).unwrap_or(false)
                || index.get("lm_head.weight").is_none(),
            qkv_bias: arch == Arch::Qwen2 || json.get("attention_bias").and_then(|v| v.as_bool()).unwrap_or(false),
        };
        cfg.validate()
    }

    fn validate(self) -> Result<Self> {
        let positive = [
            ("hidden size", self.hidden),
            ("layer count", self.n_layers),
            ("head count", self.n_heads),
            ("kv head count", self.n_kv_heads),
            ("head dim", self.head_dim),
            ("ffn size", self.ffn),
            ("vocab size", self.vocab),
            ("context length", self.context_length),
        ];
        for (what, v) in positive {
            if v == 0 || v > 1 << 24 {
                return Err(cfg_err(format!("{what} is {v}")));
            }
        }
        if self.n_heads % self.n_kv_heads != 0 {
            return Err(cfg_err(format!(
                "{} attention heads are not a multiple of {} kv heads",
                self.n_heads, self.n_kv_heads
            )));
        }
        if self.head_dim % 2 != 0 {
            return Err(cfg_err(format!("head dim {} is odd; RoPE needs pairs", self.head_dim)));
        }
        if let RopeScaling::FreqFactors(f) = &self.rope_scaling {
            if f.len() != self.head_dim / 2 {
                return Err(cfg_err(format!("rope_freqs has {} factors for head dim {}", f.len(), self.head_dim)));
            }
        }
        Ok(self)
    }

    /// RoPE inverse frequencies, one per rotated pair (`head_dim / 2`).
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim as f64;
        (0..self.head_dim / 2)
            .map(|i| {
                let base = 1.0 / self.rope_theta.powf(2.0 * i as f64 / d);
                let f = match &self.rope_scaling {
                    RopeScaling::None => base,
                    RopeScaling::Linear { factor } => base / factor,
                    RopeScaling::FreqFactors(f) => base / f[i] as f64,
                    &RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position } => {
                        let low_wavelen = original_max_position / low_freq_factor;
                        let high_wavelen = original_max_position / high_freq_factor;
                        let wavelen = 2.0 * std::f64::consts::PI / base;
                        if wavelen < high_wavelen {
                            base
                        } else if wavelen > low_wavelen {
                            base / factor
                        } else {
                            let smooth = (original_max_position / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * base / factor + smooth * base
                        }
                    }
                };
                f as f32
            })
            .collect()
    }

    /// Bytes of KV cache per token (f32 K and V, all layers).
    pub fn kv_bytes_per_token(&self) -> usize {
        2 * self.n_layers * self.n_kv_heads * self.head_dim * 4
    }
}
