//! The `baleen` binary: the CLI contract (design.md) and its errors.

mod common;
use std::process::{Command, Output};

fn baleen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_baleen")).args(args).output().unwrap()
}

fn ok_json(args: &[&str]) -> serde_json::Value {
    let out = baleen(args);
    assert!(out.status.success(), "baleen {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn fails_with(args: &[&str], want: &str) {
    let out = baleen(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "baleen {args:?} succeeded");
    assert!(err.contains(want), "baleen {args:?}: stderr {err:?} lacks {want:?}");
    assert!(!err.contains("panicked"), "baleen {args:?} panicked: {err}");
}

#[test]
fn run_json_follows_the_contract() {
    let fx = common::json("tiny-llama/expected.json");
    let ids: Vec<String> = common::u32s(&fx["prompt_ids"]).iter().map(|i| i.to_string()).collect();
    let dir = common::TempDir::new("cli-json");
    let dump = dir.0.join("logits.bin");
    let model = common::fixture("tiny-llama");
    let j = ok_json(&[
        "run", "--model", model.to_str().unwrap(), "--prompt-ids", &ids.join(","), "--temperature", "0",
        "--max-tokens", "6", "--backend", "reference", "--json", "--dump-logits", dump.to_str().unwrap(),
    ]);
    for key in ["model", "adapter", "prompt_ids", "token_ids", "text", "prefill_ms", "decode_tokens_per_s", "logits_top"] {
        assert!(j.get(key).is_some(), "missing {key}: {j}");
    }
    assert!(j["adapter"]["name"].is_string() && j["adapter"]["backend"].is_string());
    assert_eq!(common::u32s(&j["prompt_ids"]), common::u32s(&fx["prompt_ids"]), "--prompt-ids adds no BOS");
    assert_eq!(common::u32s(&j["token_ids"]), common::u32s(&fx["greedy_ids"])[..6]);
    let last = common::f32s(fx["logits"].as_array().unwrap().last().unwrap());
    let dumped: Vec<f32> =
        std::fs::read(&dump).unwrap().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert!(common::max_abs_diff(&dumped, &last) < 1e-4);
    let top = j["logits_top"].as_array().unwrap();
    assert_eq!(top.len(), 10);
    let (best, _) = last.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
    assert_eq!(top[0][0].as_u64().unwrap() as usize, best);
}

#[test]
fn run_chat_on_the_real_model() {
    let model = common::smollm2();
    let j = ok_json(&[
        "run", "--model", model.to_str().unwrap(), "--chat", "--prompt", "What is the capital of France?",
        "--temperature", "0", "--max-tokens", "12", "--backend", "reference", "--json",
    ]);
    let fx = common::json("smollm2/expected.json");
    assert_eq!(j["prompt_ids"], fx["prompts"][0]["prompt_ids"]);
    assert!(j["text"].as_str().unwrap().starts_with("The capital of France is Paris"), "{j}");
    assert_eq!(j["stop_reason"], "eos");
}

#[test]
fn inspect_describes_the_model() {
    let out = baleen(&["inspect", common::smollm2().to_str().unwrap()]);
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    for want in ["architecture    llama", "layers          30", "blk.0.attn_q.weight", "Q4_1", "tokenizer.ggml.pre = \"smollm\""] {
        assert!(s.contains(want), "inspect output lacks {want:?}");
    }
    let out = baleen(&["inspect", common::fixture("tiny-qwen2").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("architecture    qwen2"));
}

#[test]
fn bad_input_gives_clear_errors() {
    let tiny = common::fixture("tiny-llama");
    let tiny = tiny.to_str().unwrap();
    let r = ["--backend", "reference"];
    fails_with(&["run", "--model", "/nonexistent/model.gguf", "--prompt", "hi"], "no such file or folder");
    fails_with(&["run", "--model", tiny, "--prompt", "hi", "--temperature=-1", r[0], r[1]], "temperature");
    fails_with(&["run", "--model", tiny, "--prompt", "hi", "--top-p", "0", r[0], r[1]], "top-p");
    fails_with(&["run", "--model", tiny, "--prompt-ids", "1,2", "--chat", r[0], r[1]], "cannot be combined");
    fails_with(&["run", "--model", tiny, "--prompt-ids", "1,99999", r[0], r[1]], "outside the vocabulary");
    fails_with(&["run", "--model", tiny, r[0], r[1]], "give a prompt");
    fails_with(&["bench-kernels", "--bytes", "10"], "at least 65536 bytes");
    fails_with(&["bench", "--model", tiny, "--prompt-tokens", "18446744073709551615", "--gen-tokens", "5", r[0], r[1]], "exceed the model's context");
    fails_with(&["run", "--model", tiny, "--prompt-ids", "1,x", r[0], r[1]], "invalid digit");

    let dir = common::TempDir::new("cli-bad");
    // A truncated download of the real model.
    let cut = dir.0.join("cut.gguf");
    let head = std::fs::read(common::smollm2()).unwrap()[..4 << 20].to_vec();
    std::fs::write(&cut, head).unwrap();
    fails_with(&["inspect", cut.to_str().unwrap()], "runs past the end of the file");
    // Not a model at all.
    let txt = dir.0.join("notes.gguf");
    std::fs::write(&txt, "hello, I am text").unwrap();
    fails_with(&["inspect", txt.to_str().unwrap()], "does not start with \"GGUF\"");
    // A folder with nothing in it.
    fails_with(&["inspect", dir.0.join("..").join(dir.0.file_name().unwrap()).to_str().unwrap()], "several .gguf files");
    let empty = dir.0.join("empty");
    std::fs::create_dir(&empty).unwrap();
    fails_with(&["inspect", empty.to_str().unwrap()], "neither config.json");
    // An unsupported architecture in config.json.
    let hf = dir.0.join("hf");
    std::fs::create_dir(&hf).unwrap();
    for f in ["model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(common::fixture("tiny-llama").join(f), hf.join(f)).unwrap();
    }
    std::fs::write(hf.join("config.json"), r#"{"architectures": ["GPTNeoXForCausalLM"], "hidden_size": 64}"#).unwrap();
    fails_with(&["inspect", hf.to_str().unwrap()], "unsupported: architecture \"GPTNeoXForCausalLM\"");
    std::fs::write(hf.join("config.json"), "{not json").unwrap();
    fails_with(&["inspect", hf.to_str().unwrap()], "not valid JSON");
    std::fs::write(hf.join("config.json"), r#"{"architectures": ["LlamaForCausalLM"]}"#).unwrap();
    fails_with(&["inspect", hf.to_str().unwrap()], "missing \"hidden_size\"");
}

#[test]
fn bench_reports_medians() {
    let j = ok_json(&[
        "bench", "--model", common::fixture("tiny-qwen2").to_str().unwrap(), "--prompt-tokens", "16",
        "--gen-tokens", "8", "--runs", "2", "--backend", "reference", "--json",
    ]);
    assert!(j["prefill_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(j["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(j.get("peak_gpu_bytes").is_some());
}

#[test]
fn bench_kernels_reports_each_kernel_beside_the_copy() {
    let j = ok_json(&["bench-kernels", "--json", "--bytes", "1048576", "--only", "Q4_1,rms_norm,swiglu,rope,attention,embed,sample"]);
    assert!(j["copy_gbps"].as_f64().unwrap() > 0.0);
    let names: Vec<&str> = j["kernels"].as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap()).collect();
    let want = [
        "matmul_gemv_Q4_1", "matmul_gemm_Q4_1", "rms_norm", "swiglu", "rope_scatter", "attention_decode", "attention_prefill", "embed_Q4_1", "sample_greedy",
    ];
    assert_eq!(names, want);
    for k in j["kernels"].as_array().unwrap() {
        let (gbps, f) = (k["gbps"].as_f64().unwrap(), k["fraction_of_copy"].as_f64().unwrap());
        assert!(gbps > 0.0 && f.is_finite() && f > 0.0, "{k}");
        // Matmuls (only they) also give their arithmetic rate.
        let name = k["name"].as_str().unwrap();
        assert_eq!(k["gflops"].as_f64().is_some_and(|g| g > 0.0), name.starts_with("matmul_"), "{k}");
    }
}
