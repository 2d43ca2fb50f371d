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

fn fails_with(args: &[&str], want: &str) -> Output {
    let out = baleen(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "baleen {args:?} succeeded");
    assert!(err.contains(want), "baleen {args:?}: stderr {err:?} lacks {want:?}");
    assert!(!err.contains("panicked"), "baleen {args:?} panicked: {err}");
    out
}

/// Plain stdout of a command that must succeed.
fn ok_text(args: &[&str]) -> String {
    let out = baleen(args);
    assert!(out.status.success(), "baleen {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
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
    fails_with(&["run", "--model", "hf:owner/repo/m.gguf", "--prompt", "hi"], "download https://huggingface.co/owner/repo/resolve/main/m.gguf");
    fails_with(&["run", "--model", tiny, "--prompt", "hi", "--temperature=-1", r[0], r[1]], "temperature");
    fails_with(&["run", "--model", tiny, "--prompt", "hi", "--top-p", "0", r[0], r[1]], "top-p");
    fails_with(&["run", "--model", tiny, "--prompt-ids", "1,2", "--chat", r[0], r[1]], "cannot be combined");
    fails_with(&["run", "--model", tiny, "--prompt-ids", "1,99999", r[0], r[1]], "outside the vocabulary");
    fails_with(&["run", "--model", tiny, r[0], r[1]], "give a prompt");
    fails_with(&["bench-kernels", "--bytes", "10"], "at least 65536 bytes");
    fails_with(&["bench", "--model", tiny, "--prompt-tokens", "18446744073709551615", "--gen-tokens", "5", r[0], r[1]], "exceed the model's context");
    fails_with(&["run", "--model", tiny, "--prompt-ids", "1,x", r[0], r[1]], "invalid digit");
    fails_with(&["run", "--model", tiny, "--prompt", "hi", "--logit-bias", "5", r[0], r[1]], "give ID=BIAS");
    fails_with(&["run", "--model", tiny, "--prompt", "hi", "--logit-bias", "5=inf", r[0], r[1]], "give ID=BIAS");
    fails_with(&["run", "--model", tiny, "--prompt", "hi", "--repeat-penalty", "0", r[0], r[1]], "repetition penalty must be a number > 0");
    fails_with(&["run", "--model", tiny, "--prompt", "hi", "--presence-penalty", "3", r[0], r[1]], "presence penalty must be in [-2, 2]");
    fails_with(&["run", "--model", tiny, "--prompt", "hi", "--repeat-last-n", "5000", r[0], r[1]], "longer than the 4096");

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
    // (inspect lists these; see inspect_lists_what_baleen_cannot_run.)
    let run_hf = ["run", "--model", hf.to_str().unwrap(), "--prompt", "hi", r[0], r[1]];
    std::fs::write(hf.join("config.json"), r#"{"architectures": ["GPTNeoXForCausalLM"], "hidden_size": 64}"#).unwrap();
    fails_with(&run_hf, "unsupported: architecture \"GPTNeoXForCausalLM\"");
    std::fs::write(hf.join("config.json"), "{not json").unwrap();
    fails_with(&run_hf, "not valid JSON");
    std::fs::write(hf.join("config.json"), r#"{"architectures": ["LlamaForCausalLM"]}"#).unwrap();
    fails_with(&run_hf, "missing \"hidden_size\"");
}

#[test]
fn context_is_chosen_asked_for_and_refused_past_the_model() {
    let tiny = common::fixture("tiny-qwen3");
    let tiny = tiny.to_str().unwrap();
    for backend in ["reference", "gpu"] {
        // The default: the tiny model's own 256 positions (its cache is small).
        let j = ok_json(&["run", "--model", tiny, "--prompt-ids", "1,2,3", "--max-tokens", "2", "--temperature", "0", "--backend", backend, "--json"]);
        assert_eq!(j["context"], 256, "{backend}");
        // Asked for: generation stops when the 8 positions are full.
        let j = ok_json(&["run", "--model", tiny, "--prompt-ids", "1,2,3", "--max-tokens", "50", "--temperature", "0", "--context", "8", "--backend", backend, "--json"]);
        assert_eq!((j["context"].as_u64(), j["stop_reason"].as_str()), (Some(8), Some("context_full")), "{backend}: {j}");
        // 3 + 5 positions fed; the sixth token comes from the last position's logits.
        assert_eq!(j["token_ids"].as_array().unwrap().len(), 6, "{backend}");
        let run = |ctx: &str| ["run", "--model", tiny, "--prompt-ids", "1,2,3", "--context", ctx, "--backend", backend].map(String::from);
        let r = run("257");
        fails_with(&r.each_ref().map(String::as_str), "longer than the model's own (256); ask for at most 256");
        let r = run("0");
        fails_with(&r.each_ref().map(String::as_str), "at least 1");
        let r = run("lots");
        fails_with(&r.each_ref().map(String::as_str), "invalid digit");
    }
}

#[test]
fn run_json_reports_logprobs_when_asked() {
    let tiny = common::fixture("tiny-qwen3");
    let tiny = tiny.to_str().unwrap();
    for backend in ["reference", "gpu"] {
        let j = ok_json(&["run", "--model", tiny, "--prompt-ids", "1,2,3", "--max-tokens", "4", "--temperature", "0", "--logprobs", "3", "--backend", backend, "--json"]);
        let lps = j["logprobs"].as_array().unwrap();
        assert_eq!(lps.len(), j["token_ids"].as_array().unwrap().len(), "{backend}: {j}");
        for (lp, id) in lps.iter().zip(j["token_ids"].as_array().unwrap()) {
            assert_eq!(&lp["token"], id);
            let top = lp["top_logprobs"].as_array().unwrap();
            assert_eq!(top.len(), 3);
            // Greedy: the chosen token is the most likely.
            assert_eq!(&top[0]["token"], id);
            assert!((lp["logprob"].as_f64().unwrap() - top[0]["logprob"].as_f64().unwrap()).abs() < 1e-6);
            assert!(top.windows(2).all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64()));
        }
        let plain = ok_json(&["run", "--model", tiny, "--prompt-ids", "1,2,3", "--max-tokens", "2", "--backend", backend, "--json"]);
        assert!(plain.get("logprobs").is_none());
    }
    fails_with(&["run", "--model", tiny, "--prompt-ids", "1", "--logprobs", "21", "--backend", "reference"], "at most 20 top log-probabilities");
}

#[test]
fn template_args_reach_the_chat_template() {
    let tiny = common::fixture("tiny-qwen3");
    let tiny = tiny.to_str().unwrap();
    let fx = common::json("tiny-qwen3/expected.json");
    let off = &fx["chat_cases"][1];
    assert_eq!(off["kwargs"]["enable_thinking"], false);
    let j = ok_json(&[
        "run", "--model", tiny, "--chat", "--system", "Be brief.", "--prompt", "hello there", "--template-arg", "enable_thinking=false",
        "--max-tokens", "1", "--backend", "reference", "--json",
    ]);
    assert_eq!(j["prompt_ids"], off["ids"]);
    let r = ["--backend", "reference"];
    fails_with(&["run", "--model", tiny, "--prompt", "hi", "--template-arg", "enable_thinking=false", r[0], r[1]], "--template-arg needs --chat");
    fails_with(&["run", "--model", tiny, "--chat", "--prompt", "hi", "--template-arg", "enable_thinking", r[0], r[1]], "not KEY=VALUE");
}

/// `inspect --json`'s tensors are the index's, in order, and `total_bytes`
/// is the sum of their bytes.
fn check_tensors(j: &serde_json::Value, index: &baleen::format::TensorIndex) {
    let tensors = j["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), index.tensors.len());
    for (jt, t) in tensors.iter().zip(&index.tensors) {
        assert_eq!(jt["name"], t.name.as_str());
        assert_eq!(jt["type"], t.dtype.name());
        assert_eq!(jt["shape"], serde_json::json!(t.shape));
        assert_eq!(jt["bytes"], t.nbytes);
    }
    let sum: u64 = tensors.iter().map(|t| t["bytes"].as_u64().unwrap()).sum();
    assert_eq!(j["total_bytes"].as_u64(), Some(sum));
    assert_eq!(sum, index.total_bytes());
}

fn open_gguf(path: &std::path::Path) -> baleen::format::TensorIndex {
    baleen::format::gguf::parse(std::sync::Arc::new(baleen::source::FileSource::open(path).unwrap())).unwrap()
}

#[test]
fn inspect_json_lists_config_metadata_and_tensors() {
    // A Hugging Face folder: metadata is its config.json.
    let llama = common::fixture("tiny-llama");
    let j = ok_json(&["inspect", llama.to_str().unwrap(), "--json"]);
    assert_eq!((&j["architecture"], &j["supported"], &j["format"]), (&"llama".into(), &true.into(), &"safetensors".into()), "{j}");
    assert!(j.get("unsupported").is_none());
    let cfg = common::json("tiny-llama/config.json");
    assert_eq!(j["metadata"], cfg);
    assert_eq!(j["config"]["hidden"], cfg["hidden_size"]);
    assert_eq!(j["config"]["n_layers"], cfg["num_hidden_layers"]);
    assert_eq!(j["config"]["n_kv_heads"], cfg["num_key_value_heads"]);
    assert_eq!(j["config"]["rms_eps"], 1e-5, "an f32 as its shortest decimal");
    assert_eq!(j["config"]["mla"], serde_json::Value::Null);
    assert_eq!(j["tokenizer"]["vocab"], cfg["vocab_size"]);
    check_tensors(&j, &baleen::format::safetensors::open_folder(&llama).unwrap());

    // A GGUF: its key/values, long arrays summarised.
    let ds = common::fixture("tiny-deepseek-v3/model.gguf");
    let j = ok_json(&["inspect", "--json", ds.to_str().unwrap()]);
    assert_eq!((&j["architecture"], &j["supported"], &j["format"]), (&"deepseek2".into(), &true.into(), &"GGUF".into()), "{j}");
    let (meta, c) = (&j["metadata"], &j["config"]);
    assert_eq!(meta["general.architecture"], "deepseek2");
    assert_eq!(c["mla"]["kv_lora_rank"], meta["deepseek2.attention.kv_lora_rank"]);
    assert_eq!(c["moe"]["n_experts"], meta["deepseek2.expert_count"]);
    assert_eq!(meta["deepseek2.attention.layer_norm_rms_epsilon"], 1e-6);
    let tokens = &meta["tokenizer.ggml.tokens"];
    assert_eq!((&tokens["type"], &tokens["len"]), (&"array".into(), &c["vocab"]), "{tokens}");
    assert_eq!(tokens["first"].as_array().unwrap().len(), 5);
    assert!(tokens["first"][0].is_string());
    let text = serde_json::to_string(&j).unwrap();
    assert!(text.len() < 64 << 10, "inspect --json is {} bytes: long arrays are not summarised", text.len());
    check_tensors(&j, &open_gguf(&ds));
}

/// `src`'s tensors and metadata in a new GGUF in `dir` whose architecture is
/// `to` (`general.architecture` and the `{from}.*` keys renamed).
fn as_architecture(src: &std::path::Path, from: &str, to: &str, dir: &common::TempDir) -> std::path::PathBuf {
    use baleen::format::{gguf::writer, MetaValue};
    let idx = open_gguf(src);
    let tensors: Vec<writer::Tensor> = idx
        .tensors
        .iter()
        .map(|t| writer::Tensor { name: t.name.clone(), dtype: t.dtype, shape: t.shape.clone(), data: idx.read(t).unwrap() })
        .collect();
    let meta: Vec<(String, MetaValue)> = idx
        .metadata
        .iter()
        .map(|(k, v)| match k.strip_prefix(&format!("{from}.")) {
            Some(rest) => (format!("{to}.{rest}"), v.clone()),
            None if k == "general.architecture" => (k.clone(), MetaValue::String(to.into())),
            None => (k.clone(), v.clone()),
        })
        .collect();
    let path = dir.0.join(format!("{to}.gguf"));
    std::fs::write(&path, writer::write(&meta, &tensors)).unwrap();
    path
}

#[test]
fn inspect_lists_what_baleen_cannot_run() {
    let dir = common::TempDir::new("cli-unsupported");
    let phi = as_architecture(&common::fixture("tiny-mixtral/model.gguf"), "llama", "phi3", &dir);
    let path = phi.to_str().unwrap();
    let j = ok_json(&["inspect", path, "--json"]);
    assert_eq!((&j["architecture"], &j["supported"]), (&"phi3".into(), &false.into()), "{j}");
    assert!(j["unsupported"].as_str().unwrap().contains("architecture \"phi3\""), "{j}");
    assert!(j.get("config").is_none());
    assert_eq!(j["metadata"]["general.architecture"], "phi3");
    assert!(j["metadata"]["phi3.block_count"].is_u64(), "{j}");
    check_tensors(&j, &open_gguf(&phi));
    let text = ok_text(&["inspect", path]);
    for want in ["architecture    phi3", "baleen cannot run this model: unsupported: architecture \"phi3\"", "phi3.block_count", "blk.0.attn_q.weight"] {
        assert!(text.contains(want), "inspect output lacks {want:?}:\n{text}");
    }
    fails_with(&["run", "--model", path, "--prompt", "hi", "--backend", "reference"], "unsupported: architecture \"phi3\"");
    // Gemma 3 with experts (a Mixtral renamed) is no Gemma 3 baleen knows.
    let gemma = as_architecture(&common::fixture("tiny-mixtral/model.gguf"), "llama", "gemma3", &dir);
    fails_with(&["run", "--model", gemma.to_str().unwrap(), "--prompt", "hi", "--backend", "reference"], "unsupported: gemma3 with routed experts");

    // A Hugging Face folder whose config.json baleen cannot use.
    let hf = dir.0.join("hf");
    std::fs::create_dir(&hf).unwrap();
    for f in ["model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(common::fixture("tiny-llama").join(f), hf.join(f)).unwrap();
    }
    let index = baleen::format::safetensors::open_folder(&hf).unwrap();
    let hf = hf.to_str().unwrap();
    for (config, arch, why) in [
        (r#"{"architectures": ["GPTNeoXForCausalLM"], "hidden_size": 64}"#, "GPTNeoXForCausalLM".into(), "unsupported: architecture \"GPTNeoXForCausalLM\""),
        (r#"{"architectures": ["LlamaForCausalLM"]}"#, "LlamaForCausalLM".into(), "missing \"hidden_size\""),
        ("{not json", serde_json::Value::Null, "not valid JSON"),
    ] {
        std::fs::write(std::path::Path::new(hf).join("config.json"), config).unwrap();
        let j = ok_json(&["inspect", "--json", hf]);
        assert_eq!((&j["architecture"], &j["supported"]), (&arch, &false.into()), "{j}");
        assert!(j["unsupported"].as_str().unwrap().contains(why), "{j}");
        check_tensors(&j, &index);
        let text = ok_text(&["inspect", hf]);
        assert!(text.contains("baleen cannot run this model") && text.contains(why) && text.contains("model.embed_tokens.weight"), "{text}");
    }
}

#[test]
fn inspect_fails_clearly_on_what_is_not_a_model() {
    let dir = common::TempDir::new("cli-not-a-model");
    let cut = dir.0.join("cut.gguf");
    let bytes = std::fs::read(common::fixture("tiny-deepseek-v3/model.gguf")).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let missing = dir.0.join("missing.gguf");
    for json in [false, true] {
        let flag = if json { "--json" } else { "--" };
        for (path, want) in [(&cut, "runs past the end of the file"), (&missing, "no such file or folder")] {
            let out = fails_with(&["inspect", flag, path.to_str().unwrap()], want);
            assert_eq!(out.status.code(), Some(1));
            assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
        }
    }
}

#[test]
fn shader_prints_the_variant_the_gpu_compiles() {
    let flags = ["Q4_1", "SUBGROUPS"];
    let text = ok_text(&["shader", "matmul_thread", "--flags", &flags.join(",")]);
    let family = &baleen_shaders::MATMUL_THREAD;
    let want = baleen_shaders::specialise(family, &flags, &baleen_shaders::consts(family, &flags)).unwrap();
    assert_eq!(text, want);
    assert!(text.contains("@compute") && text.contains("const WG: u32 = ") && !text.contains("#if"));
    assert!(ok_text(&["shader", "rope", "--flags", "HALF_K,ADJACENT"]).starts_with("enable f16;"));

    for args in [&["shader"][..], &["shader", "--list"]] {
        let list = ok_text(args);
        for family in baleen_shaders::FAMILIES {
            assert!(list.contains(family.name), "{args:?} lacks {}:\n{list}", family.name);
        }
        assert!(list.contains("one of ROW_PER_THREAD|ROW_PER_WORKGROUP") && list.contains("HALF_KV"), "{list}");
    }

    for (args, want) in [
        (&["shader", "matmul_thread", "--flags", "Q4_1,NOPE"][..], "matmul_thread.wgsl has no flag NOPE"),
        // A matmul family's shape is its file: no shape flag.
        (&["shader", "matmul_thread", "--flags", "Q4_1,ROW_PER_THREAD"], "matmul_thread.wgsl has no flag ROW_PER_THREAD"),
        (&["shader", "matmul_thread", "--flags", "SUBGROUPS"], "needs exactly one of [\"F32\""),
        (&["shader", "matmul_thread", "--flags", "NOPE"], "matmul_thread takes flags BIAS,ACC,SUBGROUPS,QUAD_TEXTURE,PAGED; one of F32|"),
        (&["shader", "matmul_workgroup", "--flags", "Q4_1,QUAD_TEXTURE"], "matmul_workgroup takes flags BIAS,ACC,SUBGROUPS,PAGED; one of F32|"),
        (&["shader", "copy", "--flags", "BIAS"], "copy takes no flags"),
        (&["shader", "matmull"], "no kernel family \"matmull\""),
        (&["shader", "matmull"], "  attention        flags HALF_KV"),
    ] {
        assert_eq!(fails_with(args, want).status.code(), Some(1));
    }
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

#[test]
fn expert_cache_pages_experts_and_refuses_what_it_cannot_do() {
    let moe = common::fixture("tiny-deepseek-v3/model.gguf");
    let moe = moe.to_str().unwrap();
    let run = |extra: &[&'static str]| -> Vec<&str> { [&["run", "--model", moe, "--prompt-ids", "1,2,3,4,5,6", "--max-tokens", "8", "--temperature", "0", "--json"], extra].concat() };
    // The minimum (2 experts of 24 KiB), with a suffix: the reply of the
    // resident run, with the cache's counts.
    let resident = ok_json(&run(&[]));
    assert!(resident["expert_cache"].is_null());
    let paged = ok_json(&run(&["--expert-cache", "48K"]));
    assert_eq!(paged["token_ids"], resident["token_ids"]);
    assert_eq!(paged["logits_top"], resident["logits_top"]);
    let e = &paged["expert_cache"];
    assert_eq!((e["budget_bytes"].as_u64(), e["slots"].as_u64(), e["minimum_bytes"].as_u64()), (Some(48 << 10), Some(2), Some(48 << 10)), "{e}");
    assert!(e["misses"].as_u64() > Some(0) && e["evictions"].as_u64() > Some(0) && e["bytes_loaded"].as_u64() > Some(0), "{e}");
    let bench = ok_json(&["bench", "--model", moe, "--prompt-tokens", "4", "--gen-tokens", "4", "--runs", "1", "--json", "--expert-cache", "49152"]);
    assert_eq!(bench["expert_cache"]["slots"], 2, "{bench}");
    // Too small, not a size, the wrong backend, a dense model.
    fails_with(&run(&["--expert-cache", "40K"]), "it needs at least 49152 bytes (--expert-cache 49152)");
    for bad in ["lots", "12X", "", "1.5G", "K"] {
        fails_with(&run(&["--expert-cache", bad]), "is not a byte count: give digits and optionally K, M or G");
    }
    fails_with(&run(&["--expert-cache", "99999999999G"]), "more bytes than a 64-bit count holds");
    fails_with(&run(&["--expert-cache", "1G", "--backend", "reference"]), "--expert-cache pages experts on the GPU");
    let dense = common::fixture("tiny-llama");
    fails_with(&["run", "--model", dense.to_str().unwrap(), "--prompt-ids", "1,2", "--expert-cache", "1M"], "no routed experts; leave --expert-cache out");
}
