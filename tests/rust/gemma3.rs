//! Tiny random-weight Gemma 3 (tests/fixtures/tiny-gemma3, made by
//! tests/scripts/make_tiny_moe.py with a pinned transformers, and converted
//! to GGUF by llama.cpp's converter): five sliding-window layers (window 6,
//! shorter than the 20-token prompt) and a global one, from both files,
//! through both backends: logits at every position within 1e-3 of
//! transformers' float32, greedy tokens identical wherever transformers'
//! top-2 margin exceeds 0.01, and the GPU's ring caches through decode
//! steps that wrap them many times against the reference's full cache.

mod common;
use baleen::config::Arch;
use baleen::engine::Backend;
use baleen::gpu::model::{ring_rows, GpuModel};
use baleen::gpu::{Gpu, GpuOptions, MatmulShape};
use baleen::model::ModelFiles;
use baleen::reference::Reference;
use std::sync::Arc;

const NAME: &str = "tiny-gemma3";
const TOL: f32 = 1e-3;


fn gpu() -> Arc<Gpu> {
    Arc::new(Gpu::new_blocking().expect("a wgpu adapter (install mesa-vulkan-drivers for lavapipe)"))
}

#[test]
fn configs_from_both_files_agree() {
    let [(_, hf), (_, gguf)] = common::both_files(NAME);
    let (a, b) = (ModelFiles::open(&hf).unwrap().config, ModelFiles::open(&gguf).unwrap().config);
    assert_eq!(a.arch, Arch::Gemma3);
    assert_eq!((a.arch, a.head_dim, a.n_kv_heads, a.tie_embeddings), (b.arch, b.head_dim, b.n_kv_heads, b.tie_embeddings));
    assert!(a.tie_embeddings);
    let swa = a.swa.as_ref().unwrap();
    assert_eq!((swa.window, swa.local.as_slice(), swa.local_theta), (6, &[true, true, true, true, true, false][..], 10000.0));
    assert_eq!(a.swa, b.swa);
    assert_eq!((a.rope_theta, a.rope_pairing), (b.rope_theta, b.rope_pairing));
    assert_eq!(a.rope_theta, 1e6);
    // query_pre_attn_scalar = head_dim here, which is llama.cpp's scale.
    assert_eq!(a.attn_scale, Some(1.0 / 32f32.sqrt()));
    assert_eq!(b.attn_scale.unwrap_or(1.0 / 32f32.sqrt()), 1.0 / 32f32.sqrt());
}

#[test]
fn reference_matches_transformers_from_both_files() {
    let fx = common::json(&format!("{NAME}/expected.json"));
    let clear = common::clear_steps(&fx);
    assert!(clear >= 8, "the fixture's first near-tie is at step {clear}");
    for (kind, path) in common::both_files(NAME) {
        let m = ModelFiles::open(&path).unwrap();
        let mut r = Reference::load(&m).unwrap();
        common::check_tiny(&mut r, &fx, TOL, clear, &format!("{NAME} ({kind}) reference"));
    }
}

#[test]
fn gpu_matches_transformers_from_both_files_on_both_kernel_shapes() {
    let gpu = gpu();
    let fx = common::json(&format!("{NAME}/expected.json"));
    let clear = common::clear_steps(&fx);
    for (kind, path) in common::both_files(NAME) {
        let m = ModelFiles::open(&path).unwrap();
        for (shape, subgroups, textures) in [
            (MatmulShape::RowPerThread, true, true),
            (MatmulShape::RowPerThread, false, false),
            (MatmulShape::RowPerWorkgroup, true, false),
            (MatmulShape::RowPerWorkgroup, false, false),
        ] {
            // Passes of 5 tokens: the prompt's passes straddle the window.
            let opts = GpuOptions { shape: Some(shape), max_pass_tokens: 5, subgroups, kv_f16: Some(false), quad_textures: Some(textures), ..Default::default() };
            let mut g = GpuModel::load(gpu.clone(), &m, &opts).unwrap();
            common::check_tiny(&mut g, &fx, TOL, clear, &format!("{NAME} ({kind}) {shape:?} subgroups {subgroups} textures {textures}"));
        }
    }
}

#[test]
fn ring_caches_through_many_wraps_match_the_reference() {
    // 40 decode steps after the prompt: the local layers' rings (window 6 +
    // pass 5 − 1 = 10 rows) wrap six times. Each step's logits against the
    // reference's, which keeps every position and masks the window.
    let gpu = gpu();
    let m = ModelFiles::open(&common::fixture(NAME).join("model.gguf")).unwrap();
    let ids = common::u32s(&common::json(&format!("{NAME}/expected.json"))["prompt_ids"]);
    let mut r = Reference::load(&m).unwrap();
    let want_prefill = r.forward(&ids, false).unwrap();
    for (shape, kv_f16) in [(MatmulShape::RowPerThread, false), (MatmulShape::RowPerWorkgroup, false), (MatmulShape::RowPerThread, true)] {
        if kv_f16 && !gpu.has_f16() {
            continue;
        }
        let opts = GpuOptions { shape: Some(shape), max_pass_tokens: 5, kv_f16: Some(kv_f16), ..Default::default() };
        let mut g = GpuModel::load(gpu.clone(), &m, &opts).unwrap();
        assert_eq!(ring_rows(6, 5, g.context_length()), 10);
        // An f16 cache rounds keys and values: a looser bound.
        let tol = if kv_f16 { 2e-2 } else { TOL };
        let what = format!("{shape:?} f16 cache {kv_f16}");
        let mut pos = 0;
        for chunk in ids.chunks(5) {
            let got = g.forward(chunk, false).unwrap();
            pos += chunk.len();
            if pos == ids.len() {
                let d = common::max_abs_diff(&got, &want_prefill);
                assert!(d <= tol, "{what}: prefill in passes of 5: max |Δ| {d}");
            }
        }
        let mut rr = Reference::load(&m).unwrap();
        rr.forward(&ids, false).unwrap();
        for step in 0..40u32 {
            // Tokens spread over the vocabulary, not the greedy ones (which repeat).
            let t = (step * 97 + 11) % m.config.vocab as u32;
            let (got, want) = (g.forward(&[t], false).unwrap(), rr.forward(&[t], false).unwrap());
            let d = common::max_abs_diff(&got, &want);
            assert!(d <= tol, "{what}: decode step {step}: max |Δ| {d}");
        }
        eprintln!("{what}: 40 decode steps through the rings within {tol:e}");
    }
}

#[test]
fn the_kv_cache_grows_only_on_the_global_layer() {
    // One global layer of six: the reported bytes are its [context] rows
    // plus five rings of 10 rows (f32, k and v, 2 kv heads of 32).
    let m = ModelFiles::open(&common::fixture(NAME)).unwrap();
    let opts = GpuOptions { max_pass_tokens: 5, kv_f16: Some(false), ..Default::default() };
    let g = GpuModel::load(gpu(), &m, &opts).unwrap();
    let info = g.info();
    let row = 2 * 32 * 4 * 2;
    assert_eq!(info.kv_cache_bytes, (row * info.context + 5 * row * 10) as u64, "{info:?}");
}

// ---- The real model: Gemma 3 270M Q4_K_M (tests/scripts/fetch-models.sh)
// against transformers' float32 forward over the dequantised GGUF
// (tests/fixtures/gemma3-270m, made by tests/scripts/make_gemma3_expected.py).

/// transformers and baleen dequantise the same blocks to the same f32s:
/// what is left is summation order. (Measured: see the eprintln lines.)
const REAL_TOL: f32 = 1e-2;

fn real_fixture() -> serde_json::Value {
    common::json("gemma3-270m/expected.json")
}

/// The last position's logits against the fixture's top 256 (max |Δ| ≤
/// `tol`), and against all of them where the fixture has the file (RMS ≤
/// `tol` / 10).
fn check_last_logits(got: &[f32], p: &serde_json::Value, tol: f32, what: &str) -> f32 {
    let ids = common::u32s(&p["top_ids"]);
    let want = common::f32s(&p["top_logits"]);
    let worst = ids.iter().zip(&want).map(|(&i, w)| (got[i as usize] - w).abs()).fold(0f32, f32::max);
    assert!(worst <= tol, "{what}: top-256 logits max |Δ| {worst} > {tol}");
    if let Some(f) = p["logits_file"].as_str() {
        let b = std::fs::read(common::fixture(&format!("gemma3-270m/{f}"))).unwrap();
        let all: Vec<f32> = b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let rms = common::rms_diff(got, &all);
        assert!(rms <= tol / 10.0, "{what}: logits RMS {rms}");
    }
    worst
}

/// Greedy steps before transformers' first near-tie (≤ `margin`).
fn sure_steps(p: &serde_json::Value, margin: f32) -> usize {
    common::f32s(&p["greedy_margins"]).iter().take_while(|&&m| m >= margin).count()
}

#[test]
fn gemma3_270m_header_and_sentencepiece_tokenizer_match_transformers() {
    let m = ModelFiles::open(&common::gemma3_270m()).unwrap();
    let c = &m.config;
    assert_eq!((c.arch, c.n_layers, c.hidden, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab), (Arch::Gemma3, 18, 640, 4, 1, 256, 262_144));
    let swa = c.swa.as_ref().unwrap();
    let fx = real_fixture();
    assert_eq!(swa.window as u64, fx["sliding_window"].as_u64().unwrap());
    let local: Vec<bool> = fx["layer_types"].as_array().unwrap().iter().map(|t| t == "sliding_attention").collect();
    assert_eq!(swa.local, local, "llama.cpp's default pattern is transformers' layer_types");
    assert_eq!(m.tokenizer.bos, Some(fx["bos_token_id"].as_u64().unwrap() as u32));
    assert_eq!(m.tokenizer.eos, Some(fx["eos_token_id"].as_u64().unwrap() as u32));
    // A chat turn ends at <end_of_turn> as at <eos>.
    let eot = m.tokenizer.encode("<end_of_turn>", false).unwrap();
    assert!(eot.len() == 1 && m.tokenizer.stop_ids.contains(&eot[0]), "{eot:?} {:?}", m.tokenizer.stop_ids);
    for case in fx["text_cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = m.tokenizer.encode(text, true).unwrap();
        assert_eq!(ids, common::u32s(&case["ids"]), "{text:?}");
        assert_eq!(m.tokenizer.decode(&ids).unwrap(), case["decoded"].as_str().unwrap(), "decode {text:?}");
    }
    for p in fx["prompts"].as_array().unwrap() {
        assert_eq!(m.tokenizer.encode(p["text"].as_str().unwrap(), true).unwrap(), common::u32s(&p["prompt_ids"]));
    }
}

#[test]
fn gemma3_270m_reference_matches_transformers() {
    let m = ModelFiles::open(&common::gemma3_270m()).unwrap();
    let mut r = Reference::load(&m).unwrap();
    // The short prompts (the reference is slow; the long one runs on the GPU).
    for p in real_fixture()["prompts"].as_array().unwrap().iter().take(3) {
        r.truncate(0);
        let ids = common::u32s(&p["prompt_ids"]);
        let n = sure_steps(p, 0.01).min(8);
        let params = baleen::engine::GenerateParams { max_tokens: n, sampling: Default::default(), stop_ids: vec![], ..Default::default() };
        let g = baleen::engine::generate(&mut r, &ids, &params, |_| true).unwrap();
        let worst = check_last_logits(&g.prompt_logits, p, REAL_TOL, "reference");
        assert_eq!(g.tokens, common::u32s(&p["greedy_ids"])[..n], "reference greedy");
        eprintln!("reference, {} prompt tokens: top-256 max |Δ| {worst:e}; {n} greedy tokens", ids.len());
    }
}

#[test]
fn gemma3_270m_gpu_matches_transformers_past_the_window() {
    // The long prompt (past the 512-token window) in passes of 64: the
    // local layers' rings wrap; f32 and f16 caches.
    let gpu = gpu();
    let m = ModelFiles::open(&common::gemma3_270m()).unwrap();
    for (kv_f16, margin, tol) in [(false, 0.01, REAL_TOL), (true, 0.1, 5e-2)] {
        if kv_f16 && !gpu.has_f16() {
            continue;
        }
        let mut g = GpuModel::load(gpu.clone(), &m, &GpuOptions { kv_f16: Some(kv_f16), ..Default::default() }).unwrap();
        for p in real_fixture()["prompts"].as_array().unwrap() {
            g.truncate(0);
            let ids = common::u32s(&p["prompt_ids"]);
            let n = sure_steps(p, margin);
            let params = baleen::engine::GenerateParams { max_tokens: n, sampling: Default::default(), stop_ids: vec![], ..Default::default() };
            let gen = baleen::engine::generate(&mut g, &ids, &params, |_| true).unwrap();
            let worst = check_last_logits(&gen.prompt_logits, p, tol, &format!("gpu (f16 cache {kv_f16})"));
            assert_eq!(gen.tokens, common::u32s(&p["greedy_ids"])[..n], "gpu greedy (f16 cache {kv_f16})");
            eprintln!("gpu f16 cache {kv_f16}, {} prompt tokens: top-256 max |Δ| {worst:e}; {n} greedy tokens", ids.len());
        }
    }
}
