//! Tiny random-weight Qwen3 and Qwen3-MoE (tests/fixtures/tiny-qwen3*, made
//! by tests/scripts/make_tiny_moe.py with a pinned transformers, and
//! converted to GGUF by llama.cpp's converter), from both files, through
//! both backends: logits at every position within 1e-3 of transformers'
//! float32 (the bound; measured ~1e-5), greedy tokens identical
//! wherever transformers' top-2 margin exceeds 0.01. What is new in them:
//! per-head RMSNorm of q and k before RoPE (fused into the GPU's RoPE
//! kernel), a head_dim that is not hidden / heads, no q/k/v bias, and
//! (Qwen3-MoE) softmax top-k renormalised without a shared expert.

mod common;
use baleen::config::Arch;
use baleen::gpu::model::GpuModel;
use baleen::gpu::{Gpu, GpuOptions, MatmulShape};
use baleen::model::ModelFiles;
use baleen::reference::Reference;
use std::sync::Arc;

const MODELS: [&str; 2] = ["tiny-qwen3", "tiny-qwen3-moe"];
const TOL: f32 = 1e-3;


#[test]
fn configs_from_both_files_agree() {
    for name in MODELS {
        let [(_, hf), (_, gguf)] = common::both_files(name);
        let (a, b) = (ModelFiles::open(&hf).unwrap().config, ModelFiles::open(&gguf).unwrap().config);
        assert!(a.arch.qk_norm(), "{name}");
        assert_eq!((a.arch, a.qkv_bias, a.n_heads, a.n_kv_heads, a.head_dim), (b.arch, b.qkv_bias, b.n_heads, b.n_kv_heads, b.head_dim), "{name}");
        // head_dim is its own (32), not hidden / heads (16).
        assert_eq!((a.hidden, a.n_heads, a.head_dim, a.qkv_bias), (64, 4, 32, false), "{name}");
        assert_eq!((a.rope_pairing, a.rope_inv_freq(None)), (b.rope_pairing, b.rope_inv_freq(None)), "{name}");
        assert_eq!(a.moe, b.moe, "{name}");
    }
    let dense = ModelFiles::open(&common::fixture("tiny-qwen3")).unwrap().config;
    assert_eq!((dense.arch, dense.moe.is_none()), (Arch::Qwen3, true));
    let moe = ModelFiles::open(&common::fixture("tiny-qwen3-moe")).unwrap().config;
    let m = moe.moe.as_ref().unwrap();
    assert_eq!(moe.arch, Arch::Qwen3Moe);
    assert_eq!((m.n_experts, m.top_k, m.expert_ffn, m.norm_topk, m.shared_ffn, m.shared_gate), (8, 2, 32, true, 0, false));
}

#[test]
fn reference_matches_transformers_from_both_files() {
    for name in MODELS {
        let fx = common::json(&format!("{name}/expected.json"));
        let clear = common::clear_steps(&fx);
        assert!(clear >= 8, "{name}: the fixture's first near-tie is at step {clear}");
        for (kind, path) in common::both_files(name) {
            let m = ModelFiles::open(&path).unwrap();
            let mut r = Reference::load(&m).unwrap();
            common::check_tiny(&mut r, &fx, TOL, clear, &format!("{name} ({kind}) reference"));
        }
    }
}

#[test]
fn gpu_matches_transformers_from_both_files_on_both_kernel_shapes() {
    let gpu = Arc::new(Gpu::new_blocking().expect("a wgpu adapter (install mesa-vulkan-drivers for lavapipe)"));
    for name in MODELS {
        let fx = common::json(&format!("{name}/expected.json"));
        let clear = common::clear_steps(&fx);
        for (kind, path) in common::both_files(name) {
            let m = ModelFiles::open(&path).unwrap();
            for (shape, subgroups, textures, kv_f16) in [
                (MatmulShape::RowPerThread, true, true, false),
                (MatmulShape::RowPerThread, false, false, false),
                (MatmulShape::RowPerWorkgroup, true, false, false),
                (MatmulShape::RowPerWorkgroup, false, false, false),
            ] {
                let opts = GpuOptions { shape: Some(shape), max_pass_tokens: 5, subgroups, kv_f16: Some(kv_f16), quad_textures: Some(textures), ..Default::default() };
                let mut g = GpuModel::load(gpu.clone(), &m, &opts).unwrap();
                let what = format!("{name} ({kind}) {shape:?} subgroups {subgroups} textures {textures}");
                common::check_tiny(&mut g, &fx, TOL, clear, &what);
            }
        }
    }
}

#[test]
fn a_missing_qk_norm_is_a_clear_error() {
    // A Qwen3 GGUF without blk.1.attn_k_norm.weight: named, not a panic.
    let dir = common::TempDir::new("qwen3-no-k-norm");
    let src = std::fs::read(common::fixture("tiny-qwen3/model.gguf")).unwrap();
    let needle = b"blk.1.attn_k_norm.weight";
    let at = src.windows(needle.len()).position(|w| w == needle).unwrap();
    let mut bytes = src.clone();
    bytes[at..at + needle.len()].copy_from_slice(b"blk.1.attn_k_nrom.weight");
    let path = dir.0.join("model.gguf");
    std::fs::write(&path, bytes).unwrap();
    let m = ModelFiles::open(&path).unwrap();
    let e = Reference::load(&m).err().expect("a missing norm is refused").to_string();
    assert!(e.contains("blk.1.attn_k_norm.weight"), "{e}");
}

#[test]
fn the_thinking_switch_renders_as_transformers_renders_it() {
    // The fixtures' template has Qwen3's switch: enable_thinking=false adds
    // an empty <think></think> block. transformers' renderings, from both
    // files (config's tokenizer_config.json, GGUF's tokenizer.chat_template).
    use baleen::tokenizer::{template_arg, Message, TemplateArgs};
    for name in MODELS {
        let fx = common::json(&format!("{name}/expected.json"));
        for (kind, path) in common::both_files(name) {
            let m = ModelFiles::open(&path).unwrap();
            for case in fx["chat_cases"].as_array().unwrap() {
                let msgs: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
                let args: TemplateArgs = serde_json::from_value(case["kwargs"].clone()).unwrap();
                let text = m.tokenizer.apply_chat_template_with(&msgs, true, &args).unwrap();
                assert_eq!(text, case["text"].as_str().unwrap(), "{name} ({kind}) {args:?}");
                assert_eq!(m.tokenizer.encode_chat_with(&msgs, true, &args).unwrap(), common::u32s(&case["ids"]), "{name} ({kind}) {args:?}");
            }
            // <|im_end|> ends a turn.
            let im_end = m.tokenizer.encode("<|im_end|>", false).unwrap();
            assert!(im_end.len() == 1 && m.tokenizer.stop_ids.contains(&im_end[0]), "{name} ({kind})");
        }
    }
    // KEY=VALUE: JSON where it parses, else a string; bad names refused.
    assert_eq!(template_arg("enable_thinking=false").unwrap(), ("enable_thinking".into(), serde_json::json!(false)));
    assert_eq!(template_arg("tools_hint=use a tool").unwrap().1, serde_json::json!("use a tool"));
    for (bad, why) in [("enable_thinking", "not KEY=VALUE"), ("=1", "not an identifier"), ("a-b=1", "not an identifier"), ("messages=[]", "set by baleen")] {
        let e = template_arg(bad).unwrap_err().to_string();
        assert!(e.contains(why), "{bad}: {e}");
    }
}
