//! What `baleen inspect` prints: a model's architecture, hyper-parameters,
//! metadata and tensors, as text or as one JSON object.
//!
//! Only the tensor index has to parse. The configuration and tokenizer are
//! tried after it, so a well-formed file whose architecture baleen cannot
//! run yet (a `gemma3` GGUF) is still listed, with the reason it cannot run.

use crate::config::{GroupScore, ModelConfig, RopePairing, RopeScaling, Scoring};
use crate::error::Result;
use crate::format::MetaValue;
use crate::model::ModelIndex;
use crate::tokenizer::Tokenizer;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::Path;

/// A model's headers, read as far as they go.
pub struct Inspection {
    pub model: ModelIndex,
    /// The configuration and tokenizer, or why baleen cannot run the model.
    pub runnable: std::result::Result<(ModelConfig, Tokenizer), String>,
}

impl Inspection {
    /// Read `path`'s tensor index (an error if that fails: the file is
    /// missing, truncated or not a model), then try its configuration and
    /// tokenizer (a failure there is recorded in [`Inspection::runnable`]).
    pub fn open(path: &Path) -> Result<Self> {
        let model = ModelIndex::open(path)?;
        let runnable = model.config().and_then(|c| Ok((c, model.tokenizer()?))).map_err(|e| e.to_string());
        Ok(Inspection { model, runnable })
    }

    /// baleen's name for the architecture when it runs the model; otherwise
    /// the file's own (GGUF `general.architecture`, config.json's
    /// `architectures[0]` or `model_type`), if it has one.
    pub fn architecture(&self) -> Option<String> {
        if let Ok((c, _)) = &self.runnable {
            return Some(c.arch.name().to_string());
        }
        match self.model.hf_config() {
            None => self.model.index.meta("general.architecture").and_then(|v| v.as_str()).map(str::to_string),
            Some(json) => {
                let json = json.ok()?;
                let name = json["architectures"].get(0).or(json.get("model_type"))?;
                name.as_str().map(str::to_string)
            }
        }
    }

    /// GGUF's key/values (see [`crate::format::MetaValue::to_json`]: long
    /// arrays are summarised), or a Hugging Face folder's config.json as it
    /// is (empty if it does not parse: [`Inspection::runnable`] says why).
    pub fn metadata_json(&self) -> Value {
        match self.model.hf_config() {
            None => Value::Object(self.model.index.metadata.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
            Some(json) => json.unwrap_or_else(|_| json!({})),
        }
    }

    /// `{"model", "format", "architecture", "supported", "metadata",
    /// "tensors": [{"name", "type", "shape", "bytes"}], "total_bytes"}`, with
    /// `"config"` and `"tokenizer"` when baleen runs the model and
    /// `"unsupported"` (the reason) when it does not.
    pub fn to_json(&self) -> Value {
        let idx = &self.model.index;
        let tensors: Vec<Value> = idx
            .tensors
            .iter()
            .map(|t| json!({ "name": t.name, "type": t.dtype.name(), "shape": t.shape, "bytes": t.nbytes }))
            .collect();
        let mut j = json!({
            "model": self.model.name,
            "format": idx.kind.label(),
            "architecture": self.architecture(),
            "supported": self.runnable.is_ok(),
            "metadata": self.metadata_json(),
            "tensors": tensors,
            "total_bytes": idx.total_bytes(),
        });
        match &self.runnable {
            Ok((c, tok)) => {
                j["config"] = config_json(c);
                j["tokenizer"] = json!({ "vocab": tok.vocab_size(), "chat_template": tok.has_chat_template() });
            }
            Err(why) => j["unsupported"] = json!(why),
        }
        j
    }

    /// The plain listing: the hyper-parameters (or why baleen cannot run the
    /// model), then metadata and tensors.
    pub fn to_text(&self) -> String {
        let idx = &self.model.index;
        let mut out = String::new();
        let _ = writeln!(out, "{} ({}, {} tensors, {})", self.model.name, idx.kind.label(), idx.tensors.len(), human_bytes(idx.total_bytes()));
        match &self.runnable {
            Ok((c, tok)) => hyper_parameters(&mut out, c, tok),
            Err(why) => {
                let _ = writeln!(out, "architecture    {}", self.architecture().as_deref().unwrap_or("(not given)"));
                let _ = writeln!(out, "baleen cannot run this model: {why}");
            }
        }
        match self.model.hf_config() {
            None if !idx.metadata.is_empty() => {
                let _ = writeln!(out, "\nmetadata:");
                for (k, v) in &idx.metadata {
                    let _ = writeln!(out, "  {k} = {}", v.summary());
                }
            }
            Some(Ok(Value::Object(cfg))) => {
                let _ = writeln!(out, "\nconfig.json:");
                for (k, v) in &cfg {
                    let v = v.to_string();
                    let v = if v.chars().count() > 80 { format!("{}… ({} bytes)", v.chars().take(60).collect::<String>(), v.len()) } else { v };
                    let _ = writeln!(out, "  {k} = {v}");
                }
            }
            _ => {}
        }
        let _ = writeln!(out, "\ntensors:");
        for t in &idx.tensors {
            let _ = writeln!(out, "  {:<40} {:<5} {:<20} {}", t.name, t.dtype.name(), format!("{:?}", t.shape), human_bytes(t.nbytes));
        }
        out
    }
}

fn hyper_parameters(out: &mut String, c: &ModelConfig, tok: &Tokenizer) {
    let _ = writeln!(out, "architecture    {}", c.arch.name());
    let _ = writeln!(out, "layers          {}", c.n_layers);
    let _ = writeln!(out, "hidden          {}", c.hidden);
    let _ = writeln!(out, "heads           {} (kv {}, head dim {})", c.n_heads, c.n_kv_heads, c.head_dim);
    let _ = writeln!(out, "ffn             {}", c.ffn);
    let _ = writeln!(out, "vocab           {} (tokenizer: {})", c.vocab, tok.vocab_size());
    let _ = writeln!(out, "context         {}", c.context_length);
    let _ = writeln!(out, "rope            theta {} {:?} pairs, scaling {}", c.rope_theta, c.rope_pairing, match &c.rope_scaling {
        RopeScaling::FreqFactors => "per-dimension factors (rope_freqs)".to_string(),
        other => format!("{other:?}"),
    });
    let _ = writeln!(out, "rms eps         {}", c.rms_eps);
    let _ = writeln!(out, "tied embeddings {}", c.tie_embeddings);
    let _ = writeln!(out, "chat template   {}", if tok.has_chat_template() { "yes" } else { "no" });
    if let Some(a) = &c.mla {
        let q = a.q_lora_rank.map_or("direct".to_string(), |r| format!("LoRA rank {r}"));
        let _ = writeln!(
            out,
            "latent attn     kv rank {}, nope {} + rope {}, v {}, queries {q}, softmax mscale {:.4}",
            a.kv_lora_rank, a.qk_nope, a.qk_rope, a.v_head_dim, a.softmax_mscale
        );
    }
    if let Some(e) = &c.moe {
        let _ = writeln!(
            out,
            "experts         {} routed (top {}, width {}), shared width {}, dense layers < {}, {:?} scores, {} groups (best {}, {:?}), normalised {}, scale {}",
            e.n_experts, e.top_k, e.expert_ffn, e.shared_ffn, e.first_dense, e.scoring, e.groups, e.topk_groups, e.group_score, e.norm_topk, e.scale
        );
    }
    let _ = write!(out, "kv cache        {} per token (f32)", human_bytes(c.kv_bytes_per_token() as u64));
    if c.mla.is_some() {
        let _ = write!(out, "; multi-head attention would hold {}", human_bytes(c.mha_kv_bytes_per_token() as u64));
    }
    let _ = writeln!(out);
}

/// An f32 as its shortest decimal (`1e-5`, not `9.99999974737875e-6`).
fn f32_json(v: f32) -> Value {
    MetaValue::F32(v).to_json()
}

/// The hyper-parameters the plain listing shows, with [`ModelConfig`]'s names.
fn config_json(c: &ModelConfig) -> Value {
    let rope_scaling = match &c.rope_scaling {
        RopeScaling::None => json!({ "type": "none" }),
        RopeScaling::Linear { factor } => json!({ "type": "linear", "factor": factor }),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position } => json!({
            "type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor, "original_max_position": original_max_position,
        }),
        RopeScaling::FreqFactors => json!({ "type": "freq_factors", "tensor": "rope_freqs.weight" }),
        RopeScaling::Yarn { factor, original_max_position, beta_fast, beta_slow, attention_factor } => json!({
            "type": "yarn", "factor": factor, "original_max_position": original_max_position,
            "beta_fast": beta_fast, "beta_slow": beta_slow, "attention_factor": attention_factor,
        }),
    };
    let mla = c.mla.as_ref().map(|a| {
        json!({
            "q_lora_rank": a.q_lora_rank, "kv_lora_rank": a.kv_lora_rank, "qk_nope": a.qk_nope,
            "qk_rope": a.qk_rope, "v_head_dim": a.v_head_dim, "softmax_mscale": a.softmax_mscale,
        })
    });
    let moe = c.moe.as_ref().map(|e| {
        json!({
            "n_experts": e.n_experts, "top_k": e.top_k, "expert_ffn": e.expert_ffn, "shared_ffn": e.shared_ffn,
            "first_dense": e.first_dense, "every": e.every, "phase": e.phase,
            "scoring": match e.scoring { Scoring::Softmax => "softmax", Scoring::Sigmoid => "sigmoid" },
            "groups": e.groups, "topk_groups": e.topk_groups,
            "group_score": match e.group_score { GroupScore::Max => "max", GroupScore::TopTwoSum => "top_two_sum" },
            "norm_topk": e.norm_topk, "scale": f32_json(e.scale), "shared_gate": e.shared_gate,
        })
    });
    json!({
        "arch": c.arch.name(),
        "n_layers": c.n_layers,
        "hidden": c.hidden,
        "n_heads": c.n_heads,
        "n_kv_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "ffn": c.ffn,
        "vocab": c.vocab,
        "context_length": c.context_length,
        "rope_theta": c.rope_theta,
        "rope_pairing": match c.rope_pairing { RopePairing::Halves => "halves", RopePairing::Adjacent => "adjacent" },
        "rope_scaling": rope_scaling,
        "rms_eps": f32_json(c.rms_eps),
        "tie_embeddings": c.tie_embeddings,
        "qkv_bias": c.qkv_bias,
        "mla": mla,
        "moe": moe,
        "kv_bytes_per_token": c.kv_bytes_per_token(),
        "mha_kv_bytes_per_token": c.mla.as_ref().map(|_| c.mha_kv_bytes_per_token()),
    })
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}
