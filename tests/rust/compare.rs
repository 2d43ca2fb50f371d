//! `baleen compare`: the GPU's graph against the reference's, intermediate
//! by intermediate, on every tiny fixture and on SmolLM2; a kernel made
//! wrong on purpose is found by name; the command's JSON and exit status.

mod common;
use baleen::compare::compare;
use baleen::gpu::{Gpu, GpuOptions, MatmulShape};
use baleen::model::ModelFiles;
use std::process::Command;
use std::sync::Arc;

const TOL: f32 = 1e-3;

const TINY: [&str; 10] = [
    "tiny-llama",
    "tiny-qwen2",
    "tiny-qwen3",
    "tiny-gemma3",
    "tiny-mixtral",
    "tiny-qwen2-moe",
    "tiny-qwen3-moe",
    "tiny-deepseek-v3",
    "tiny-deepseek-v2",
    "tiny-deepseek-v2-lite",
];

fn gpu() -> Arc<Gpu> {
    Arc::new(Gpu::new_blocking().expect("a wgpu adapter (install mesa-vulkan-drivers for lavapipe)"))
}

fn prompt(m: &ModelFiles, n: u32) -> Vec<u32> {
    (0..n).map(|i| (i * 37 + 5) % m.config.vocab as u32).collect()
}

#[test]
fn every_intermediate_agrees_on_the_tiny_models() {
    let gpu = gpu();
    for name in TINY {
        for file in [common::fixture(name), common::fixture(name).join("model.gguf")] {
            if !file.exists() {
                continue;
            }
            let m = ModelFiles::open(&file).unwrap();
            // Passes of 4 tokens: the prompt's last pass runs the GEMM paths.
            for shape in [MatmulShape::RowPerThread, MatmulShape::RowPerWorkgroup] {
                let opts = GpuOptions { shape: Some(shape), max_pass_tokens: 4, ..Default::default() };
                let c = compare(&m, &prompt(&m, 11), gpu.clone(), &opts).unwrap();
                let names: Vec<&str> = c.intermediates.iter().map(|d| d.name.as_str()).collect();
                assert_eq!(names.first(), Some(&"token_embd"));
                assert_eq!(names.last(), Some(&"logits"));
                assert!(names.contains(&"blk.0.attn_norm") && names.contains(&"blk.1.ffn_out"), "{names:?}");
                let worst = c.worst().unwrap();
                assert!(c.first_over(TOL).is_none(), "{} {shape:?}: {} max |Δ| {}", file.display(), worst.name, worst.max_abs);
                eprintln!("{} {shape:?}: {} intermediates, worst {} {:e}", file.display(), names.len(), worst.name, worst.max_abs);
            }
        }
    }
}

#[test]
fn every_intermediate_agrees_on_smollm2() {
    let m = ModelFiles::open(&common::smollm2()).unwrap();
    let fx = common::json("smollm2/expected.json");
    let ids = common::u32s(&fx["prompts"][0]["prompt_ids"]);
    let c = compare(&m, &ids, gpu(), &GpuOptions::default()).unwrap();
    assert_eq!(c.intermediates.len(), 1 + 30 * 7 + 2, "embedding, 7 a layer, output norm and logits");
    let worst = c.worst().unwrap();
    assert!(c.first_over(TOL).is_none(), "{} max |Δ| {}", worst.name, worst.max_abs);
    eprintln!("SmolLM2: worst {} {:e}", worst.name, worst.max_abs);
}

#[test]
fn a_wrong_kernel_is_named() {
    // One op's output scaled by 1.01 on purpose: compare names that
    // intermediate, and everything before it agrees.
    let gpu = gpu();
    for (name, target) in [("tiny-llama", "blk.1.attn"), ("tiny-deepseek-v3", "blk.1.router_logits"), ("tiny-qwen2-moe", "blk.0.ffn_out")] {
        let m = ModelFiles::open(&common::fixture(name)).unwrap();
        let opts = GpuOptions { scale_output: Some((target.into(), 1.01)), ..Default::default() };
        let c = compare(&m, &prompt(&m, 6), gpu.clone(), &opts).unwrap();
        let first = c.first_over(TOL).unwrap_or_else(|| panic!("{name}: scaling {target} went unseen"));
        assert_eq!(first.name, target, "{name}");
        let at = c.intermediates.iter().position(|d| d.name == target).unwrap();
        assert!(c.intermediates[..at].iter().all(|d| d.max_abs <= TOL), "{name}");
    }
}

#[test]
fn compare_json_and_exit_status() {
    let model = common::fixture("tiny-qwen2");
    let run = |tol: &str| Command::new(env!("CARGO_BIN_EXE_baleen"))
        .args(["compare", "--model", model.to_str().unwrap(), "--prompt-ids", "1,2,3,4,5", "--json", "--tolerance", tol])
        .output()
        .unwrap();
    let out = run("1e-3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["model", "adapter", "intermediates", "worst"] {
        assert!(j.get(key).is_some(), "missing {key}: {j}");
    }
    let first = &j["intermediates"][0];
    assert!(first["name"].is_string() && first["max_abs"].is_number() && first["rms"].is_number(), "{first}");
    assert!(j["worst"]["name"].is_string() && j["worst"]["max_abs"].as_f64().unwrap() <= 1e-3);
    assert!(j["first_over"].is_null());
    // A tolerance nothing meets: exit status 1, the first intermediate over it named.
    let out = run("1e-12");
    assert_eq!(out.status.code(), Some(1));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(j["first_over"].is_string(), "{j}");
    // A bad prompt is an error, not a panic.
    let out = Command::new(env!("CARGO_BIN_EXE_baleen")).args(["compare", "--model", model.to_str().unwrap(), "--prompt-ids", "999999"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("outside the vocabulary") && !err.contains("panicked"), "{err}");
}
