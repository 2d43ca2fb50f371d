//! Helpers shared by the integration tests.
#![allow(dead_code)]

use baleen::engine::{generate, Backend, GenerateParams};
use baleen::sample::SamplingParams;
use std::path::PathBuf;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(rel)
}

pub fn json(rel: &str) -> serde_json::Value {
    let p = fixture(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

pub fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// The real test model, fetched by tests/scripts/fetch-models.sh (never committed).
pub fn smollm2() -> PathBuf {
    let p = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "{} is missing: run tests/scripts/fetch-models.sh (make test does)",
        p.display()
    );
    p
}

/// A fixture's Hugging Face folder and the GGUF llama.cpp's converter made
/// of it.
pub fn both_files(name: &str) -> [(&'static str, PathBuf); 2] {
    let dir = fixture(name);
    [("safetensors", dir.clone()), ("gguf", dir.join("model.gguf"))]
}

/// The second real test model, Gemma 3 270M Q4_K_M (fetched likewise).
pub fn gemma3_270m() -> PathBuf {
    let p = root().join("models/gemma-3-270m-q4_k_m.gguf");
    assert!(p.is_file(), "{} is missing: run tests/scripts/fetch-models.sh (make test does)", p.display());
    p
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The largest max |Δ| between `logits` (`[positions, vocab]`) and a
/// fixture's logits at every position, each asserted ≤ `tol` (`what` names
/// the case when one is not).
pub fn check_positions(logits: &[f32], vocab: usize, fx: &serde_json::Value, tol: f32, what: &str) -> f32 {
    let mut worst = 0f32;
    for (pos, want) in fx["logits"].as_array().unwrap().iter().enumerate() {
        let d = max_abs_diff(&logits[pos * vocab..(pos + 1) * vocab], &f32s(want));
        assert!(d <= tol, "{what} position {pos}: max |Δlogit| {d} > {tol}");
        worst = worst.max(d);
    }
    worst
}

/// A tiny model on a backend against its fixture: every position's logits
/// in one pass within `tol`; then the prompt again through `generate` (on
/// the GPU: a prefill in chunks of the model's pass size), its last logits
/// within `tol`, and greedy decoding equal to transformers' for the first
/// `clear` tokens.
pub fn check_tiny(b: &mut impl Backend, fx: &serde_json::Value, tol: f32, clear: usize, what: &str) {
    let ids = u32s(&fx["prompt_ids"]);
    let want_greedy = u32s(&fx["greedy_ids"]);
    let all = b.forward(&ids, true).unwrap();
    let worst = check_positions(&all, b.vocab(), fx, tol, what);
    b.truncate(0);
    let params = GenerateParams { max_tokens: want_greedy.len(), sampling: SamplingParams::default(), stop_ids: vec![], ..Default::default() };
    let gen = generate(b, &ids, &params, |_| true).unwrap();
    let last = f32s(fx["logits"].as_array().unwrap().last().unwrap());
    let d = max_abs_diff(&gen.prompt_logits, &last);
    assert!(d <= tol, "{what}: prompt through generate: max |Δ| {d}");
    assert_eq!(gen.tokens[..clear], want_greedy[..clear], "{what}: greedy");
    eprintln!("{what}: max |Δlogit| {worst:e} (one pass), {d:e} (generate's prefill)");
}

/// Greedy steps before transformers' first near-tie (top-2 margin ≤ 0.01),
/// at most the fixture's greedy length.
pub fn clear_steps(fx: &serde_json::Value) -> usize {
    let margins = fx["greedy_margins"].as_array().unwrap();
    margins.iter().position(|m| m.as_f64().unwrap() <= 0.01).unwrap_or(margins.len())
}

pub fn rms_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    (a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>() / a.len() as f64).sqrt() as f32
}

/// A temporary folder removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("baleen-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
