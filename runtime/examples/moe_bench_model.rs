//! Writes a random-weight DeepSeek-V3-shaped GGUF for the mixture-of-experts
//! benchmark: the same model with any number of routed experts, so that
//! `baleen bench` shows whether decode cost follows the active experts or all
//! of them (tests/scripts/bench.sh runs it with 8 and 64).
//!
//!   cargo run --release --example moe_bench_model -- OUT.gguf EXPERTS [GROUPS [TOP_K]]
//!
//! Shape: hidden 512, 4 layers (the first dense), 8 heads, q-LoRA 256, latent
//! rank 128, nope 64 + rope 32, v 64, experts of width 256 (top 6 unless told, one shared),
//! Q4_0 matrices; the tokenizer is the tiny fixtures' (tests/fixtures/tiny-deepseek-v3).

use baleen::format::gguf::{self, writer};
use baleen::format::MetaValue;
use baleen::quant::{random_blocks, DType};
use baleen::source::FileSource;
use std::sync::Arc;

const HIDDEN: u64 = 512;
const LAYERS: u64 = 4;
const HEADS: u64 = 8;
const Q_RANK: u64 = 256;
const RANK: u64 = 128;
const NOPE: u64 = 64;
const ROPE: u64 = 32;
const V: u64 = 64;
const FFN: u64 = 1024;
const EXPERT_FFN: u64 = 256;
const VOCAB: u64 = 384;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = |s: &str, what: &str| s.parse::<u64>().unwrap_or_else(|_| panic!("{what} is a number"));
    let (out, experts, groups, top_k) = match args.as_slice() {
        [_, out, e] => (out.clone(), n(e, "EXPERTS"), None, 6),
        [_, out, e, g] => (out.clone(), n(e, "EXPERTS"), Some(n(g, "GROUPS")), 6),
        [_, out, e, g, k] => (out.clone(), n(e, "EXPERTS"), Some(n(g, "GROUPS")), n(k, "TOP_K")),
        _ => {
            eprintln!("usage: moe_bench_model OUT.gguf EXPERTS [GROUPS [TOP_K]]");
            std::process::exit(2);
        }
    };
    write(&out, experts, groups, top_k);
}

/// Write the model with `experts` routed experts (in `groups` groups; by
/// default 8 from 16 experts on, else 1), `top_k` a token (the benchmark's
/// 6), to `out`. (Also called by the paging test, which includes this file.)
pub fn write(out: &str, experts: u64, groups: Option<u64>, top_k: u64) {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny-deepseek-v3/model.gguf");
    let src = Arc::new(FileSource::open(std::path::Path::new(fixture)).expect("the tiny DeepSeek fixture"));
    let tiny = gguf::parse(src).expect("a GGUF");
    let mut metadata: Vec<(String, MetaValue)> =
        tiny.metadata.iter().filter(|(k, _)| !k.starts_with("deepseek2.")).map(|(k, v)| (k.clone(), v.clone())).collect();
    let u = |k: &str, v: u64| (format!("deepseek2.{k}"), MetaValue::U32(v as u32));
    let groups = groups.unwrap_or(if experts >= 16 { 8 } else { 1 });
    metadata.extend([
        u("block_count", LAYERS),
        u("context_length", 4096),
        u("embedding_length", HIDDEN),
        u("feed_forward_length", FFN),
        u("attention.head_count", HEADS),
        u("attention.head_count_kv", 1),
        u("attention.q_lora_rank", Q_RANK),
        u("attention.kv_lora_rank", RANK),
        u("attention.key_length", RANK + ROPE),
        u("attention.value_length", RANK),
        u("attention.key_length_mla", NOPE + ROPE),
        u("attention.value_length_mla", V),
        u("rope.dimension_count", ROPE),
        u("expert_count", experts),
        u("expert_used_count", top_k),
        u("expert_shared_count", 1),
        u("expert_feed_forward_length", EXPERT_FFN),
        u("leading_dense_block_count", 1),
        u("expert_gating_func", 2),
        u("expert_group_count", groups),
        u("expert_group_used_count", groups.min(4)),
        ("deepseek2.expert_weights_norm".into(), MetaValue::Bool(true)),
        ("deepseek2.expert_weights_scale".into(), MetaValue::F32(2.5)),
        ("deepseek2.attention.layer_norm_rms_epsilon".into(), MetaValue::F32(1e-6)),
        ("deepseek2.rope.freq_base".into(), MetaValue::F32(10000.0)),
    ]);
    let mut seed = 1u64;
    let mut matrix = |name: String, shape: Vec<u64>| {
        seed += 1;
        let n: u64 = shape.iter().product();
        writer::Tensor { name, dtype: DType::Q4_0, data: random_blocks(DType::Q4_0, (n / 32) as usize, seed), shape }
    };
    let ones = |name: String, n: u64| writer::Tensor {
        name,
        dtype: DType::F32,
        shape: vec![n],
        data: (0..n).flat_map(|_| 1f32.to_le_bytes()).collect(),
    };
    let mut tensors = vec![matrix("token_embd.weight".into(), vec![VOCAB, HIDDEN]), matrix("output.weight".into(), vec![VOCAB, HIDDEN])];
    tensors.push(ones("output_norm.weight".into(), HIDDEN));
    for l in 0..LAYERS {
        let b = |s: &str| format!("blk.{l}.{s}");
        tensors.extend([
            ones(b("attn_norm.weight"), HIDDEN),
            ones(b("ffn_norm.weight"), HIDDEN),
            ones(b("attn_q_a_norm.weight"), Q_RANK),
            ones(b("attn_kv_a_norm.weight"), RANK),
        ]);
        tensors.extend([
            matrix(b("attn_q_a.weight"), vec![Q_RANK, HIDDEN]),
            matrix(b("attn_q_b.weight"), vec![HEADS * (NOPE + ROPE), Q_RANK]),
            matrix(b("attn_kv_a_mqa.weight"), vec![RANK + ROPE, HIDDEN]),
            matrix(b("attn_k_b.weight"), vec![HEADS, RANK, NOPE]),
            matrix(b("attn_v_b.weight"), vec![HEADS, V, RANK]),
            matrix(b("attn_output.weight"), vec![HIDDEN, HEADS * V]),
        ]);
        if l == 0 {
            tensors.extend([
                matrix(b("ffn_gate.weight"), vec![FFN, HIDDEN]),
                matrix(b("ffn_up.weight"), vec![FFN, HIDDEN]),
                matrix(b("ffn_down.weight"), vec![HIDDEN, FFN]),
            ]);
        } else {
            let mut router = matrix(b("ffn_gate_inp.weight"), vec![experts, HIDDEN]);
            // The router in f32, as converters write it.
            router.dtype = DType::F32;
            router.data = (0..experts * HIDDEN).flat_map(|i| (((i * 7919) % 1000) as f32 / 1000.0 - 0.5).to_le_bytes()).collect();
            tensors.push(router);
            tensors.push(writer::Tensor {
                name: b("exp_probs_b.bias"),
                dtype: DType::F32,
                shape: vec![experts],
                data: (0..experts).flat_map(|_| 0f32.to_le_bytes()).collect(),
            });
            tensors.extend([
                matrix(b("ffn_gate_exps.weight"), vec![experts, EXPERT_FFN, HIDDEN]),
                matrix(b("ffn_up_exps.weight"), vec![experts, EXPERT_FFN, HIDDEN]),
                matrix(b("ffn_down_exps.weight"), vec![experts, HIDDEN, EXPERT_FFN]),
                matrix(b("ffn_gate_shexp.weight"), vec![EXPERT_FFN, HIDDEN]),
                matrix(b("ffn_up_shexp.weight"), vec![EXPERT_FFN, HIDDEN]),
                matrix(b("ffn_down_shexp.weight"), vec![HIDDEN, EXPERT_FFN]),
            ]);
        }
    }
    std::fs::write(out, writer::write(&metadata, &tensors)).expect("write the model");
    eprintln!("{out}: {experts} experts, {} tensors", tensors.len());
}
