//! Tiny random-weight mixture-of-experts models — DeepSeek-V3, V2 and
//! V2-Lite-style, Mixtral, Qwen2-MoE, Qwen3-MoE (tests/fixtures/tiny-*, made by
//! tests/scripts/make_tiny_moe.py with a pinned transformers, and converted to
//! GGUF by llama.cpp's converter)
//! through the reference: logits at every position within 2e-3 of transformers'
//! float32 from both files, greedy tokens identical wherever transformers'
//! top-2 margin exceeds 0.01, and the router against transformers' router.

mod common;
use baleen::config::{GroupScore, Moe, Scoring};
use baleen::engine::{generate, Backend, GenerateParams};
use baleen::model::ModelFiles;
use baleen::reference::{route, Reference};
use baleen::sample::SamplingParams;

const MODELS: [&str; 6] = ["tiny-deepseek-v3", "tiny-deepseek-v2", "tiny-deepseek-v2-lite", "tiny-mixtral", "tiny-qwen2-moe", "tiny-qwen3-moe"];
/// The bound; both files measure ~1e-5 (float32, different summation orders).
const LOGIT_TOL: f32 = 2e-3;
const MARGIN: f64 = 0.01;


#[test]
fn configs_from_both_files_agree() {
    for name in MODELS {
        let [(_, hf), (_, gguf)] = common::both_files(name);
        let (a, b) = (ModelFiles::open(&hf).unwrap().config, ModelFiles::open(&gguf).unwrap().config);
        // GGUF stores YaRN's log multiplier as f32: the softmax scale agrees to ~1e-8.
        if let (Some(ma), Some(mb)) = (a.mla.clone(), b.mla.clone()) {
            assert!((ma.softmax_mscale - mb.softmax_mscale).abs() < 1e-6, "{name}");
            assert_eq!(baleen::config::Mla { softmax_mscale: 0.0, ..ma }, baleen::config::Mla { softmax_mscale: 0.0, ..mb }, "{name}");
        } else {
            assert_eq!(a.mla, b.mla, "{name}");
        }
        assert_eq!((a.arch, a.qkv_bias, a.n_kv_heads), (b.arch, b.qkv_bias, b.n_kv_heads), "{name}");
        assert_eq!(a.moe, b.moe, "{name}");
        // llama.cpp permutes llama's (Mixtral's) q/k rows: its GGUF pairs adjacent dims.
        if a.arch != baleen::config::Arch::Llama {
            assert_eq!(a.rope_pairing, b.rope_pairing, "{name}");
        }
        assert_eq!(a.rope_inv_freq(None), b.rope_inv_freq(None), "{name}");
        assert_eq!(a.rope_attention_factor(), b.rope_attention_factor(), "{name}");
    }
    let v3 = ModelFiles::open(&common::fixture("tiny-deepseek-v3")).unwrap().config;
    let moe = v3.moe.as_ref().unwrap();
    assert_eq!((moe.scoring, moe.group_score, moe.groups, moe.topk_groups), (Scoring::Sigmoid, GroupScore::TopTwoSum, 4, 2));
    assert!(moe.norm_topk && moe.scale == 2.5 && moe.first_dense == 1);
    let v2 = ModelFiles::open(&common::fixture("tiny-deepseek-v2")).unwrap().config;
    let moe = v2.moe.as_ref().unwrap();
    assert_eq!((moe.scoring, moe.group_score, moe.groups, moe.topk_groups), (Scoring::Softmax, GroupScore::Max, 4, 2));
    assert!(v2.mla.as_ref().unwrap().q_lora_rank.is_none());
    let lite = ModelFiles::open(&common::fixture("tiny-deepseek-v2-lite")).unwrap().config;
    assert_eq!(lite.moe.as_ref().unwrap().groups, 1);
    let mixtral = ModelFiles::open(&common::fixture("tiny-mixtral")).unwrap().config;
    let moe = mixtral.moe.as_ref().unwrap();
    assert_eq!((moe.n_experts, moe.top_k, moe.norm_topk, moe.shared_ffn), (4, 2, true, 0));
    let qwen = ModelFiles::open(&common::fixture("tiny-qwen2-moe")).unwrap().config;
    let moe = qwen.moe.as_ref().unwrap();
    assert_eq!((moe.n_experts, moe.norm_topk, moe.shared_ffn, moe.shared_gate), (8, false, 64, true));
    assert!(qwen.qkv_bias);
}

#[test]
fn logits_match_transformers_at_every_position() {
    for name in MODELS {
        let fx = common::json(&format!("{name}/expected.json"));
        let ids = common::u32s(&fx["prompt_ids"]);
        for (kind, path) in common::both_files(name) {
            let m = ModelFiles::open(&path).unwrap();
            let mut r = Reference::load(&m).unwrap();
            let logits = r.forward_tokens(&ids, true).unwrap();
            let worst = common::check_positions(&logits, m.config.vocab, &fx, LOGIT_TOL, &format!("{name} ({kind})"));
            eprintln!("{name} ({kind}): max |Δlogit| over {} positions = {worst:e}", ids.len());
        }
    }
}

#[test]
fn greedy_tokens_match_where_the_margin_is_clear() {
    for name in MODELS {
        let fx = common::json(&format!("{name}/expected.json"));
        let want = common::u32s(&fx["greedy_ids"]);
        let margins: Vec<f64> = fx["greedy_margins"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        // Past a near-tie the two continuations may part; compare up to it.
        let clear = margins.iter().position(|&m| m <= MARGIN).unwrap_or(want.len());
        assert!(clear >= 8, "{name}: the fixture's first near-tie is at step {clear}");
        for (kind, path) in common::both_files(name) {
            let m = ModelFiles::open(&path).unwrap();
            let mut r = Reference::load(&m).unwrap();
            let params = GenerateParams { max_tokens: want.len(), sampling: SamplingParams::default(), stop_ids: vec![], ..Default::default() };
            let g = generate(&mut r, &common::u32s(&fx["prompt_ids"]), &params, |_| true).unwrap();
            assert_eq!(g.tokens[..clear], want[..clear], "{name} ({kind})");
        }
    }
}

#[test]
fn latent_cache_decode_equals_one_pass() {
    // The prompt in pieces through the cache (c_kv, k_pe) gives the one-pass logits.
    let name = "tiny-deepseek-v3";
    let ids = common::u32s(&common::json(&format!("{name}/expected.json"))["prompt_ids"]);
    let m = ModelFiles::open(&common::fixture(name)).unwrap();
    let mut one = Reference::load(&m).unwrap();
    let want = one.forward_tokens(&ids, false).unwrap();
    let mut parts = Reference::load(&m).unwrap();
    parts.forward_tokens(&ids[..7], false).unwrap();
    parts.forward_tokens(&ids[7..8], false).unwrap();
    let got = parts.forward_tokens(&ids[8..], false).unwrap();
    assert!(common::max_abs_diff(&got, &want) < 1e-4);
    // And truncating the cache, then running the rest again, too.
    parts.truncate(5);
    let again = parts.forward_tokens(&ids[5..], false).unwrap();
    assert!(common::max_abs_diff(&again, &want) < 1e-4);
}

#[test]
fn router_matches_transformers() {
    for name in MODELS {
        let fx = common::json(&format!("{name}/expected.json"));
        let cfg = ModelFiles::open(&common::fixture(name)).unwrap().config;
        let moe = cfg.moe.as_ref().unwrap();
        let bias = fx["router_bias"].as_array().map(|_| common::f32s(&fx["router_bias"]));
        for (i, case) in fx["router_cases"].as_array().unwrap().iter().enumerate() {
            let mut got = route(&common::f32s(&case["logits"]), bias.as_deref(), moe);
            got.sort_by_key(|&(e, _)| e);
            let experts: Vec<usize> = got.iter().map(|&(e, _)| e).collect();
            let want_experts: Vec<usize> = case["experts"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            assert_eq!(experts, want_experts, "{name} case {i}");
            let weights: Vec<f32> = got.iter().map(|&(_, w)| w).collect();
            assert!(common::max_abs_diff(&weights, &common::f32s(&case["weights"])) < 1e-5, "{name} case {i}");
        }
    }
}

fn moe(scoring: Scoring, groups: usize, topk_groups: usize, group_score: GroupScore, top_k: usize) -> Moe {
    Moe {
        n_experts: 8,
        top_k,
        expert_ffn: 4,
        shared_ffn: 0,
        first_dense: 0,
        every: 1,
        phase: 0,
        scoring,
        groups,
        topk_groups,
        group_score,
        norm_topk: true,
        scale: 1.0,
        shared_gate: false,
    }
}

fn chosen(r: &[(usize, f32)]) -> Vec<usize> {
    let mut e: Vec<usize> = r.iter().map(|&(e, _)| e).collect();
    e.sort();
    e
}

#[test]
fn router_excludes_groups_with_minus_infinity_even_when_scores_are_negative() {
    // Sigmoid scores plus a large negative bias: every choice score is
    // negative. Groups 0 and 1 win on the top-two sum; masking the others with
    // 0 instead of −∞ would let experts 4..8 win.
    let m = moe(Scoring::Sigmoid, 4, 2, GroupScore::TopTwoSum, 2);
    let logits = [0.0f32; 8];
    let bias = [-1.0, -1.1, -1.2, -1.3, -5.0, -5.0, -5.0, -5.0];
    assert_eq!(chosen(&route(&logits, Some(&bias), &m)), vec![0, 1]);
    // Weights come from the scores without the bias: equal here, normalised.
    for (_, w) in route(&logits, Some(&bias), &m) {
        assert!((w - 0.5).abs() < 1e-6);
    }
}

#[test]
fn group_score_is_max_for_v2_and_top_two_sum_for_v3() {
    // Group 0 holds one high score, group 1 two medium ones.
    let logits = [3.0f32, -4.0, 2.0, 2.0, -4.0, -4.0, -4.0, -4.0];
    let v2 = moe(Scoring::Softmax, 4, 1, GroupScore::Max, 1);
    assert_eq!(chosen(&route(&logits, None, &v2)), vec![0]);
    let v3 = moe(Scoring::Sigmoid, 4, 1, GroupScore::TopTwoSum, 1);
    // Sigmoid: group 0 sums 0.95 + 0.02, group 1 sums 0.88 + 0.88.
    assert_eq!(chosen(&route(&logits, None, &v3)), vec![2]);
}

#[test]
fn router_ties_go_to_the_lower_index_and_nan_never_wins() {
    let m = moe(Scoring::Softmax, 1, 1, GroupScore::Max, 2);
    assert_eq!(chosen(&route(&[1.0; 8], None, &m)), vec![0, 1]);
    let logits = [f32::NAN, 0.0, 5.0, 0.0, 0.0, 0.0, 4.0, 0.0];
    let s = moe(Scoring::Sigmoid, 1, 1, GroupScore::Max, 2);
    assert_eq!(chosen(&route(&logits, None, &s)), vec![2, 6]);
}

#[test]
fn mla_cache_is_smaller_than_mha() {
    let cfg = ModelFiles::open(&common::fixture("tiny-deepseek-v3")).unwrap().config;
    let mla = cfg.mla.as_ref().unwrap();
    // c_kv (32) + k_pe (8) per layer, against 4 heads × (24 + 16).
    assert_eq!(cfg.kv_bytes_per_token(), cfg.n_layers * (mla.kv_lora_rank + mla.qk_rope) * 4);
    assert_eq!(cfg.mha_kv_bytes_per_token(), cfg.n_layers * 4 * (24 + 16) * 4);
}

#[test]
fn bad_moe_configs_are_refused_with_a_reason() {
    let src = common::fixture("tiny-deepseek-v3");
    for (key, value, want) in [
        ("num_experts_per_tok", serde_json::json!(9), "experts"),
        ("n_group", serde_json::json!(3), "groups"),
        ("topk_method", serde_json::json!("random"), "topk_method"),
        ("kv_lora_rank", serde_json::json!(0), "kv_lora_rank"),
    ] {
        let dir = common::TempDir::new("bad-moe");
        for f in ["model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(src.join(f), dir.0.join(f)).unwrap();
        }
        let mut cfg = common::json("tiny-deepseek-v3/config.json");
        cfg[key] = value;
        std::fs::write(dir.0.join("config.json"), cfg.to_string()).unwrap();
        let err = ModelFiles::open(&dir.0).err().unwrap_or_else(|| panic!("{key} accepted")).to_string();
        assert!(err.contains(want), "{key}: {err}");
    }
}
