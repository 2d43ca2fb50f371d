//! Hyper-parameters, from GGUF metadata (`{arch}.*` keys) or a Hugging Face
//! `config.json`. One struct serves both, so a model runs the same whichever
//! file it came in.

use crate::error::{Error, Result};
use crate::format::{FileKind, TensorIndex};
use crate::model::names::{self, Global, Layer};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3, SmolLM2, DeepSeek-R1-Distill-Llama: no biases.
    Llama,
    /// Qwen2/2.5, DeepSeek-R1-Distill-Qwen: q/k/v biases.
    Qwen2,
    /// DeepSeek-V2, V2-Lite, V3: multi-head latent attention and DeepSeekMoE
    /// (llama.cpp's `deepseek2`).
    DeepSeek2,
    /// Qwen1.5-MoE / Qwen2-MoE: qwen2 attention, softmax top-k experts and a
    /// sigmoid-gated shared expert. (Mixtral is `Llama` with experts, as GGUF has it.)
    Qwen2Moe,
    /// Qwen3: per-head RMSNorm on q and k before RoPE, no q/k/v bias, a
    /// head_dim of its own (not hidden / heads).
    Qwen3,
    /// Qwen3-MoE: qwen3 attention, softmax top-k experts renormalised, no
    /// shared expert.
    Qwen3Moe,
    /// Gemma 3: q/k norms, four norms a layer (post-attention and
    /// post-feed-forward on the branch, before the residual add), GeGLU
    /// (tanh GELU), √hidden embedding scale, sliding-window attention on
    /// the local layers.
    Gemma3,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::DeepSeek2 => "deepseek2",
            Arch::Qwen2Moe => "qwen2moe",
            Arch::Qwen3 => "qwen3",
            Arch::Qwen3Moe => "qwen3moe",
            Arch::Gemma3 => "gemma3",
        }
    }

    /// q and k are RMS-normed per head before RoPE.
    pub fn qk_norm(self) -> bool {
        matches!(self, Arch::Qwen3 | Arch::Qwen3Moe | Arch::Gemma3)
    }
}

/// Multi-head latent attention (DeepSeek-V2/V3).
#[derive(Debug, Clone, PartialEq)]
pub struct Mla {
    /// Queries through a low-rank bottleneck (`W_qb · RMSNorm(W_qa x)`); None: one `W_q`.
    pub q_lora_rank: Option<usize>,
    /// The latent `c_kv` the cache holds.
    pub kv_lora_rank: usize,
    pub qk_nope: usize,
    pub qk_rope: usize,
    pub v_head_dim: usize,
    /// The softmax scale is `softmax_mscale / sqrt(qk_nope + qk_rope)` (YaRN's
    /// `mscale(factor, mscale_all_dim)²`; 1 without scaling).
    pub softmax_mscale: f64,
}

/// How a router turns its logits into expert scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scoring {
    Softmax,
    Sigmoid,
}

/// A group's score in group-limited routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupScore {
    /// Its best expert (DeepSeek-V2 `group_limited_greedy`).
    Max,
    /// The sum of its best two (DeepSeek-V3 `noaux_tc`).
    TopTwoSum,
}

/// A mixture-of-experts feed-forward block.
#[derive(Debug, Clone, PartialEq)]
pub struct Moe {
    pub n_experts: usize,
    pub top_k: usize,
    /// SwiGLU width of one routed expert.
    pub expert_ffn: usize,
    /// SwiGLU width of the shared expert(s) (all of them as one MLP); 0: none.
    pub shared_ffn: usize,
    /// Layers before this one are dense.
    pub first_dense: usize,
    /// Of the other layers, those with `layer % every == phase` are MoE
    /// (DeepSeek's `moe_layer_freq`: phase 0; Qwen2-MoE's `decoder_sparse_step`
    /// s: every s, phase s − 1).
    pub every: usize,
    pub phase: usize,
    pub scoring: Scoring,
    /// Experts split into `groups`; only the best `topk_groups` groups compete.
    pub groups: usize,
    pub topk_groups: usize,
    pub group_score: GroupScore,
    /// Chosen weights divided by their sum.
    pub norm_topk: bool,
    /// Chosen weights multiplied by this (`routed_scaling_factor`).
    pub scale: f32,
    /// The shared expert's output is scaled by `sigmoid(w · x)` (Qwen2-MoE).
    pub shared_gate: bool,
}

impl Moe {
    pub fn is_moe_layer(&self, layer: usize) -> bool {
        layer >= self.first_dense && layer % self.every.max(1) == self.phase
    }

    /// Softmax top-k routing (Mixtral, Qwen2-MoE).
    pub fn softmax_top_k(n_experts: usize, top_k: usize, expert_ffn: usize, norm_topk: bool) -> Self {
        Moe {
            n_experts,
            top_k,
            expert_ffn,
            shared_ffn: 0,
            first_dense: 0,
            every: 1,
            phase: 0,
            scoring: Scoring::Softmax,
            groups: 1,
            topk_groups: 1,
            group_score: GroupScore::Max,
            norm_topk,
            scale: 1.0,
            shared_gate: false,
        }
    }
}

/// Which elements RoPE rotates together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// what llama.cpp's converter writes for Llama 3 scaling): tensor data,
    /// which the model reads ([`ModelConfig::rope_inv_freq`]).
    FreqFactors,
    /// YaRN (DeepSeek-V2/V3): interpolated and extrapolated frequencies blended
    /// by a linear ramp between the `beta_fast` and `beta_slow` rotations;
    /// cos and sin multiplied by `attention_factor`.
    Yarn { factor: f64, original_max_position: f64, beta_fast: f64, beta_slow: f64, attention_factor: f64 },
}

/// YaRN's magnitude correction `0.1·m·ln(factor) + 1` (1 when not scaling up).
pub fn yarn_mscale(factor: f64, m: f64) -> f64 {
    if factor <= 1.0 {
        1.0
    } else {
        0.1 * m * factor.ln() + 1.0
    }
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
    /// DeepSeek's attention; None: grouped-query attention.
    pub mla: Option<Mla>,
    /// Mixture-of-experts layers; None: every layer is a dense SwiGLU MLP.
    pub moe: Option<Moe>,
    /// Sliding-window attention on some layers (Gemma 3); None: every
    /// layer attends to the whole context.
    pub swa: Option<Swa>,
    /// The attention's softmax scale; None: `1/√head_dim`.
    pub attn_scale: Option<f32>,
}

/// Sliding-window attention: the local layers' queries see their own
/// position and the `window − 1` before it; the global layers see all.
#[derive(Debug, Clone, PartialEq)]
pub struct Swa {
    pub window: usize,
    /// Per layer: local (windowed).
    pub local: Vec<bool>,
    /// The local layers' RoPE base (the global layers': `rope_theta`, with
    /// its scaling; the local layers' are unscaled).
    pub local_theta: f64,
}

impl Swa {
    /// llama.cpp's default layer pattern: every `n`th layer global.
    pub fn every(n: usize, layers: usize, window: usize, local_theta: f64) -> Self {
        Swa { window, local: (0..layers).map(|i| n == 0 || i % n < n - 1).collect(), local_theta }
    }

    pub fn is_local(&self, layer: usize) -> bool {
        self.local.get(layer).copied().unwrap_or(false)
    }
}

fn cfg_err(msg: impl std::fmt::Display) -> Error {
    Error::Config(msg.to_string())
}

fn arch_from_name(name: &str) -> Result<Arch> {
    match name {
        "llama" | "LlamaForCausalLM" => Ok(Arch::Llama),
        "qwen2" | "Qwen2ForCausalLM" => Ok(Arch::Qwen2),
        "qwen2moe" | "Qwen2MoeForCausalLM" | "qwen2_moe" => Ok(Arch::Qwen2Moe),
        "qwen3" | "Qwen3ForCausalLM" => Ok(Arch::Qwen3),
        "qwen3moe" | "Qwen3MoeForCausalLM" | "qwen3_moe" => Ok(Arch::Qwen3Moe),
        "gemma3" | "Gemma3ForCausalLM" | "gemma3_text" => Ok(Arch::Gemma3),
        "MixtralForCausalLM" | "mixtral" => Ok(Arch::Llama),
        "deepseek2" | "DeepseekV2ForCausalLM" | "DeepseekV3ForCausalLM" | "deepseek_v2" | "deepseek_v3" => Ok(Arch::DeepSeek2),
        other => Err(Error::Unsupported(format!(
            "architecture {other:?}; baleen runs llama (Llama, SmolLM2, DeepSeek-R1-Distill-Llama), qwen2 \
             (Qwen2, DeepSeek-R1-Distill-Qwen), qwen3, gemma3, deepseek2 (DeepSeek-V2, V2-Lite, V3), \
             qwen2moe, qwen3moe and Mixtral"
        ))),
    }
}

impl ModelConfig {
    /// The architecture's rope pairing for a given file kind.
    fn pairing(arch: Arch, kind: FileKind) -> RopePairing {
        match (arch, kind) {
            (Arch::Llama, FileKind::Gguf) | (Arch::DeepSeek2, _) => RopePairing::Adjacent,
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
        let gguf = |g| names::global(FileKind::Gguf, g);
        let embd = index.require(gguf(Global::TokenEmbd))?;
        let vocab = match embd.shape.as_slice() {
            [v, _] => *v as usize,
            other => return Err(cfg_err(format!("token_embd.weight has shape {other:?}; expected [vocab, hidden]"))),
        };
        let factor = || opt_f("rope.scaling.factor").ok_or_else(|| cfg_err("rope scaling without a factor"));
        let rope_scaling = match index.meta(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
            None | Some("none") => RopeScaling::None,
            Some("linear") => RopeScaling::Linear { factor: factor()? },
            Some("yarn") => RopeScaling::Yarn {
                factor: factor()?,
                original_max_position: opt_f("rope.scaling.original_context_length")
                    .ok_or_else(|| cfg_err("yarn rope scaling without rope.scaling.original_context_length"))?,
                beta_fast: opt_f("rope.scaling.yarn_beta_fast").unwrap_or(32.0),
                beta_slow: opt_f("rope.scaling.yarn_beta_slow").unwrap_or(1.0),
                // llama.cpp's converter keeps only mscale_all_dim; released
                // DeepSeek configs have mscale = mscale_all_dim, for which
                // transformers' attention factor is 1.
                attention_factor: opt_f("rope.scaling.yarn_attn_factor").unwrap_or(1.0),
            },
            Some(other) => return Err(Error::Unsupported(format!("rope scaling type {other:?} for {arch_name}"))),
        };
        let rope_scaling = match index.get(gguf(Global::RopeFreqs)) {
            Some(_) => RopeScaling::FreqFactors,
            None => rope_scaling,
        };
        let opt_u = |k: &str| index.meta(&key(k)).and_then(|v| v.as_u64()).map(|v| v as usize);
        let (mut n_kv_heads, mut head_dim, mut mla, mut moe) = (n_kv_heads, head_dim, None, None);
        if arch == Arch::DeepSeek2 {
            let qk_rope = get_u("rope.dimension_count")?;
            // Files from before llama.cpp split attn_kv_b give the per-head
            // sizes in key_length / value_length.
            let (qk, v_head_dim) = match (opt_u("attention.key_length_mla"), opt_u("attention.value_length_mla")) {
                (Some(k), Some(v)) => (k, v),
                _ => (get_u("attention.key_length")?, get_u("attention.value_length")?),
            };
            let softmax_mscale = match &rope_scaling {
                RopeScaling::Yarn { factor, .. } => {
                    let m = 1.0 + opt_f("rope.scaling.yarn_log_multiplier").unwrap_or(0.0) * factor.ln();
                    if *factor > 1.0 { m * m } else { 1.0 }
                }
                _ => 1.0,
            };
            mla = Some(Mla {
                q_lora_rank: opt_u("attention.q_lora_rank").filter(|&r| r > 0),
                kv_lora_rank: get_u("attention.kv_lora_rank")?,
                qk_nope: qk.checked_sub(qk_rope).ok_or_else(|| cfg_err(format!("key length {qk} < rope dims {qk_rope}")))?,
                qk_rope,
                v_head_dim,
                softmax_mscale,
            });
            (n_kv_heads, head_dim) = (n_heads, qk);
            if let Some(n_experts) = opt_u("expert_count").filter(|&e| e > 0) {
                let scoring = match opt_u("expert_gating_func") {
                    None | Some(1) => Scoring::Softmax,
                    Some(2) => Scoring::Sigmoid,
                    Some(other) => return Err(Error::Unsupported(format!("{arch_name}.expert_gating_func {other}"))),
                };
                let expert_ffn = get_u("expert_feed_forward_length")?;
                moe = Some(Moe {
                    n_experts,
                    top_k: get_u("expert_used_count")?,
                    expert_ffn,
                    shared_ffn: opt_u("expert_shared_count").unwrap_or(0) * expert_ffn,
                    first_dense: opt_u("leading_dense_block_count").unwrap_or(0),
                    every: 1,
                    phase: 0,
                    shared_gate: false,
                    scoring,
                    groups: opt_u("expert_group_count").unwrap_or(1).max(1),
                    topk_groups: opt_u("expert_group_used_count").unwrap_or(1).max(1),
                    // A softmax router is V2's (group = its best expert); a
                    // sigmoid one V3's (the sum of its best two).
                    group_score: if scoring == Scoring::Softmax { GroupScore::Max } else { GroupScore::TopTwoSum },
                    norm_topk: index.meta(&key("expert_weights_norm")).and_then(|v| v.as_bool()).unwrap_or(false),
                    scale: opt_f("expert_weights_scale").unwrap_or(1.0) as f32,
                });
            }
        }
        if arch != Arch::DeepSeek2 {
            if let Some(n_experts) = opt_u("expert_count").filter(|&e| e > 0) {
                // Mixtral (llama.*): experts as wide as feed_forward_length, weights
                // renormalised; qwen2moe: its own widths, a gated shared expert.
                let expert_ffn = opt_u("expert_feed_forward_length").map_or_else(|| get_u("feed_forward_length"), Ok)?;
                // (llama.cpp always renormalises qwen3moe's, as Qwen3-MoE
                // checkpoints' norm_topk_prob does.)
                let norm = arch == Arch::Llama
                    || arch == Arch::Qwen3Moe
                    || index.meta(&key("expert_weights_norm")).and_then(|v| v.as_bool()).unwrap_or(false);
                let mut m = Moe::softmax_top_k(n_experts, get_u("expert_used_count")?, expert_ffn, norm);
                m.shared_ffn = opt_u("expert_shared_feed_forward_length").unwrap_or(0);
                m.shared_gate = index.get(&names::layer(FileKind::Gguf, 0, Layer::SharedExpertGate)).is_some();
                moe = Some(m);
            }
        }
        let n_layers = get_u("block_count")?;
        let swa = match opt_u("attention.sliding_window").filter(|&w| w > 0) {
            // llama.cpp: a layer pattern from the metadata (one flag a layer, or
            // every nth global), 6 without; the local base 10000 without.
            Some(window) if arch == Arch::Gemma3 => {
                let theta = opt_f("rope.freq_base_swa").unwrap_or(10000.0);
                let pattern = index.meta(&key("attention.sliding_window_pattern"));
                let flags = pattern.and_then(|v| v.as_array()).and_then(|a| a.iter().map(|x| x.as_bool()).collect::<Option<Vec<bool>>>());
                Some(match (pattern, flags) {
                    (None, _) => Swa::every(6, n_layers, window, theta),
                    (Some(v), _) if v.as_u64().is_some() => Swa::every(v.as_u64().unwrap_or(6) as usize, n_layers, window, theta),
                    (_, Some(flags)) if flags.len() == n_layers => Swa { window, local: flags, local_theta: theta },
                    (Some(v), _) => {
                        let what = key("attention.sliding_window_pattern");
                        return Err(cfg_err(format!("{what} is {}, not a count or one flag per layer", v.summary())));
                    }
                })
            }
            Some(_) => return Err(Error::Unsupported(format!("sliding-window attention on {arch_name}"))),
            None => None,
        };
        if opt_f("final_logit_softcapping").is_some_and(|c| c != 0.0) {
            return Err(Error::Unsupported(format!("{arch_name} with final_logit_softcapping")));
        }
        // llama.cpp scales Gemma 3's queries by 1/√head_dim, except the 27B's
        // (62 layers), by 1/√(hidden / heads): query_pre_attn_scalar.
        let attn_scale = match arch {
            Arch::Gemma3 if n_layers == 62 => Some(1.0 / ((hidden / n_heads.max(1)) as f32).sqrt()),
            _ => None,
        };
        let cfg = ModelConfig {
            arch,
            hidden,
            n_layers,
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
            tie_embeddings: index.get(gguf(Global::Output)).is_none(),
            qkv_bias: index.get(&names::layer(FileKind::Gguf, 0, Layer::QBias)).is_some(),
            mla,
            moe,
            swa,
            attn_scale,
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
                    "yarn" => {
                        let factor = f("factor")?;
                        let opt = |k: &str| s.get(k).and_then(|v| v.as_f64()).filter(|v| *v != 0.0);
                        let attention_factor = match (opt("attention_factor"), opt("mscale"), opt("mscale_all_dim")) {
                            (Some(a), _, _) => a,
                            (None, Some(m), Some(all)) => yarn_mscale(factor, m) / yarn_mscale(factor, all),
                            _ => yarn_mscale(factor, 1.0),
                        };
                        RopeScaling::Yarn {
                            factor,
                            original_max_position: f("original_max_position_embeddings")?,
                            beta_fast: opt("beta_fast").unwrap_or(32.0),
                            beta_slow: opt("beta_slow").unwrap_or(1.0),
                            attention_factor,
                        }
                    }
                    other => return Err(Error::Unsupported(format!("rope scaling type {other:?} for {arch_name}"))),
                }
            }
        };
        // YaRN's softmax scale correction (DeepSeek): mscale(factor, mscale_all_dim)².
        let softmax_mscale = match (&rope_scaling, scaling.and_then(|s| s.get("mscale_all_dim")).and_then(|v| v.as_f64())) {
            (RopeScaling::Yarn { factor, .. }, Some(all)) if all != 0.0 => yarn_mscale(*factor, all).powi(2),
            _ => 1.0,
        };
        let embd = index.require(names::global(FileKind::Safetensors, Global::TokenEmbd))?;
        let vocab = match embd.shape.as_slice() {
            [v, _] => *v as usize,
            other => return Err(cfg_err(format!("model.embed_tokens.weight has shape {other:?}; expected [vocab, hidden]"))),
        };
        let (mut n_kv_heads, mut head_dim) =
            (opt_u("num_key_value_heads").unwrap_or(n_heads), opt_u("head_dim").unwrap_or(hidden / n_heads.max(1)));
        let (mut mla, mut moe) = (None, None);
        let mut rope_pairing = Self::pairing(arch, FileKind::Safetensors);
        if arch == Arch::DeepSeek2 {
            let v3 = arch_name == "DeepseekV3ForCausalLM" || arch_name == "deepseek_v3";
            let (qk_nope, qk_rope) = (u("qk_nope_head_dim")?, u("qk_rope_head_dim")?);
            mla = Some(Mla {
                q_lora_rank: opt_u("q_lora_rank").filter(|&r| r > 0),
                kv_lora_rank: u("kv_lora_rank")?,
                qk_nope,
                qk_rope,
                v_head_dim: u("v_head_dim")?,
                softmax_mscale,
            });
            (n_kv_heads, head_dim) = (n_heads, qk_nope + qk_rope);
            if v3 && json.get("rope_interleave").and_then(|v| v.as_bool()) == Some(false) {
                rope_pairing = RopePairing::Halves;
            }
            if let Some(n_experts) = opt_u("n_routed_experts").filter(|&e| e > 0) {
                let text = |k: &str| json.get(k).and_then(|v| v.as_str());
                // transformers 5 drops scoring_func / topk_method from saved
                // configs; each version's own defaults apply then.
                let scoring = match text("scoring_func").unwrap_or(if v3 { "sigmoid" } else { "softmax" }) {
                    "softmax" => Scoring::Softmax,
                    "sigmoid" => Scoring::Sigmoid,
                    other => return Err(Error::Unsupported(format!("scoring_func {other:?}"))),
                };
                let method = text("topk_method").unwrap_or(if v3 { "noaux_tc" } else { "greedy" });
                let (groups, topk_groups, group_score) = match method {
                    "greedy" => (1, 1, GroupScore::Max),
                    "group_limited_greedy" => (opt_u("n_group").unwrap_or(1), opt_u("topk_group").unwrap_or(1), GroupScore::Max),
                    "noaux_tc" => (opt_u("n_group").unwrap_or(1), opt_u("topk_group").unwrap_or(1), GroupScore::TopTwoSum),
                    other => return Err(Error::Unsupported(format!("topk_method {other:?}"))),
                };
                let expert_ffn = u("moe_intermediate_size")?;
                moe = Some(Moe {
                    n_experts,
                    top_k: u("num_experts_per_tok")?,
                    expert_ffn,
                    shared_ffn: opt_u("n_shared_experts").unwrap_or(0) * expert_ffn,
                    first_dense: opt_u("first_k_dense_replace").unwrap_or(0),
                    every: opt_u("moe_layer_freq").unwrap_or(1).max(1),
                    phase: 0,
                    shared_gate: false,
                    scoring,
                    groups: groups.max(1),
                    topk_groups: topk_groups.max(1),
                    group_score,
                    norm_topk: json.get("norm_topk_prob").and_then(|v| v.as_bool()).unwrap_or(v3),
                    scale: json.get("routed_scaling_factor").and_then(|v| v.as_f64()).unwrap_or(1.0) as f32,
                });
            }
        }
        if arch_name == "MixtralForCausalLM" || arch_name == "mixtral" {
            moe = Some(Moe::softmax_top_k(u("num_local_experts")?, u("num_experts_per_tok")?, u("intermediate_size")?, true));
        }
        if arch == Arch::Qwen2Moe || arch == Arch::Qwen3Moe {
            if json.get("mlp_only_layers").and_then(|v| v.as_array()).is_some_and(|a| !a.is_empty()) {
                return Err(Error::Unsupported(format!("{arch_name} with mlp_only_layers")));
            }
            let norm = json.get("norm_topk_prob").and_then(|v| v.as_bool()).unwrap_or(false);
            // Hub configs say num_experts; transformers 5 saves num_local_experts.
            let n_experts = match opt_u("num_experts") {
                Some(n) => n,
                None => u("num_local_experts")?,
            };
            let mut m = Moe::softmax_top_k(n_experts, u("num_experts_per_tok")?, u("moe_intermediate_size")?, norm);
            m.shared_ffn = opt_u("shared_expert_intermediate_size").unwrap_or(0);
            m.shared_gate = m.shared_ffn > 0;
            let step = opt_u("decoder_sparse_step").unwrap_or(1).max(1);
            (m.every, m.phase) = (step, step - 1);
            moe = Some(m);
        }
        if arch.qk_norm() && arch != Arch::Gemma3 && json.get("use_sliding_window").and_then(|v| v.as_bool()) == Some(true) {
            return Err(Error::Unsupported(format!("{arch_name} with use_sliding_window (sliding-window attention)")));
        }
        let n_layers = u("num_hidden_layers")?;
        let (mut swa, mut attn_scale) = (None, None);
        if arch == Arch::Gemma3 {
            for k in ["final_logit_softcapping", "attn_logit_softcapping"] {
                if json.get(k).and_then(|v| v.as_f64()).is_some_and(|c| c != 0.0) {
                    return Err(Error::Unsupported(format!("{arch_name} with {k}")));
                }
            }
            attn_scale = Some(1.0 / (json.get("query_pre_attn_scalar").and_then(|v| v.as_f64()).unwrap_or(head_dim as f64) as f32).sqrt());
            let local_theta = json
                .get("rope_parameters")
                .and_then(|p| p.get("sliding_attention"))
                .and_then(|p| p.get("rope_theta"))
                .or_else(|| json.get("rope_local_base_freq"))
                .and_then(|v| v.as_f64())
                .unwrap_or(10000.0);
            if let Some(window) = opt_u("sliding_window").filter(|&w| w > 0) {
                swa = Some(match json.get("layer_types").and_then(|v| v.as_array()) {
                    Some(types) if types.len() == n_layers => {
                        let local = types.iter().map(|t| t.as_str() == Some("sliding_attention")).collect();
                        Swa { window, local, local_theta }
                    }
                    Some(types) => return Err(cfg_err(format!("layer_types names {} layers, not {n_layers}", types.len()))),
                    None => {
                        let n = opt_u("sliding_window_pattern").or_else(|| opt_u("_sliding_window_pattern")).unwrap_or(6);
                        Swa::every(n, n_layers, window, local_theta)
                    }
                });
            }
        }
        let cfg = ModelConfig {
            arch,
            hidden,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn: u("intermediate_size")?,
            vocab,
            rms_eps: json.get("rms_norm_eps").and_then(|v| v.as_f64()).unwrap_or(1e-6) as f32,
            rope_theta,
            rope_pairing,
            rope_scaling,
            context_length: opt_u("max_position_embeddings").unwrap_or(4096),
            tie_embeddings: json.get("tie_word_embeddings").and_then(|v| v.as_bool()).unwrap_or(false)
                || index.get(names::global(FileKind::Safetensors, Global::Output)).is_none(),
            qkv_bias: arch == Arch::Qwen2
                || arch == Arch::Qwen2Moe
                || (arch != Arch::DeepSeek2 && json.get("attention_bias").and_then(|v| v.as_bool()).unwrap_or(false)),
            mla,
            moe,
            swa,
            attn_scale,
        };
        cfg.validate()
    }

    fn validate(self) -> Result<Self> {
        if self.moe.is_some() && !matches!(self.arch, Arch::Llama | Arch::DeepSeek2 | Arch::Qwen2Moe | Arch::Qwen3Moe) {
            return Err(Error::Unsupported(format!("{} with routed experts", self.arch.name())));
        }
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
        if let Some(m) = &self.mla {
            for (what, v) in [("kv_lora_rank", m.kv_lora_rank), ("qk_rope_head_dim", m.qk_rope), ("v_head_dim", m.v_head_dim)] {
                if v == 0 || v > 1 << 16 {
                    return Err(cfg_err(format!("{what} is {v}")));
                }
            }
            if m.qk_rope % 2 != 0 {
                return Err(cfg_err(format!("qk_rope_head_dim {} is odd; RoPE needs pairs", m.qk_rope)));
            }
        }
        if let Some(m) = &self.moe {
            if m.n_experts == 0 || m.n_experts > 1 << 16 || m.top_k == 0 || m.top_k > m.n_experts || m.expert_ffn == 0 {
                return Err(cfg_err(format!("{} experts, {} per token, width {}", m.n_experts, m.top_k, m.expert_ffn)));
            }
            if m.n_experts % m.groups != 0 || m.topk_groups > m.groups || m.top_k > m.topk_groups * (m.n_experts / m.groups) {
                return Err(cfg_err(format!(
                    "{} experts in {} groups (best {} kept) cannot give {} experts per token",
                    m.n_experts, m.groups, m.topk_groups, m.top_k
                )));
            }
        }
        Ok(self)
    }

    /// A context length asked for (`--context`, `contextLength`): at least
    /// one position, at most the model's own.
    pub fn check_context(&self, n: usize) -> Result<usize> {
        let own = self.context_length;
        match n {
            0 => Err(Error::Input("a context of 0 positions: ask for at least 1".into())),
            n if n > own => Err(Error::Input(format!(
                "a context of {n} positions is longer than the model's own ({own}); ask for at most {own}"
            ))),
            n => Ok(n),
        }
    }

    /// Dimensions RoPE rotates per head: all of it, or MLA's rope part.
    pub fn rope_dim(&self) -> usize {
        self.mla.as_ref().map_or(self.head_dim, |m| m.qk_rope)
    }

    /// What RoPE multiplies cos and sin by (YaRN's attention factor; else 1).
    pub fn rope_attention_factor(&self) -> f32 {
        match self.rope_scaling {
            RopeScaling::Yarn { attention_factor, .. } => attention_factor as f32,
            _ => 1.0,
        }
    }

    /// RoPE inverse frequencies, one per rotated pair (`rope_dim / 2`);
    /// `file_factors`: the divisors of [`RopeScaling::FreqFactors`], read
    /// from the file (`rope_dim / 2` of them; ignored for other scalings).
    pub fn rope_inv_freq(&self, file_factors: Option<&[f32]>) -> Vec<f32> {
        let d = self.rope_dim() as f64;
        let half = self.rope_dim() / 2;
        // YaRN's ramp: pairs below `low` keep their frequency, above `high`
        // are interpolated (divided by the factor), linear between.
        let yarn_ramp = |beta_fast: f64, beta_slow: f64, orig: f64| {
            let correction = |rot: f64| d * (orig / (rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * self.rope_theta.ln());
            let low = correction(beta_fast).floor().max(0.0);
            let mut high = correction(beta_slow).ceil().min(d - 1.0);
            if low == high {
                high += 0.001;
            }
            move |i: usize| ((i as f64 - low) / (high - low)).clamp(0.0, 1.0)
        };
        (0..half)
            .map(|i| {
                let base = 1.0 / self.rope_theta.powf(2.0 * i as f64 / d);
                let f = match &self.rope_scaling {
                    RopeScaling::None => base,
                    &RopeScaling::Yarn { factor, original_max_position, beta_fast, beta_slow, .. } => {
                        let extrapolate = 1.0 - yarn_ramp(beta_fast, beta_slow, original_max_position)(i);
                        base / factor * (1.0 - extrapolate) + base * extrapolate
                    }
                    RopeScaling::Linear { factor } => base / factor,
                    RopeScaling::FreqFactors => file_factors.and_then(|f| f.get(i)).map_or(base, |&f| base / f as f64),
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

    /// Bytes of KV cache per token (f32, all layers): K and V per kv head, or
    /// MLA's latent `c_kv` and shared `k_pe`.
    pub fn kv_bytes_per_token(&self) -> usize {
        match &self.mla {
            Some(m) => self.n_layers * (m.kv_lora_rank + m.qk_rope) * 4,
            None => 2 * self.n_layers * self.n_kv_heads * self.head_dim * 4,
        }
    }

    /// What an equivalent multi-head attention cache would hold per token (f32
    /// K and V of every head), for comparison with MLA's.
    pub fn mha_kv_bytes_per_token(&self) -> usize {
        let v = self.mla.as_ref().map_or(self.head_dim, |m| m.v_head_dim);
        self.n_layers * self.n_heads * (self.head_dim + v) * 4
    }
}
