//! The GPU backend on real models: the tiny llama/qwen2 fixtures and the tiny
//! mixture-of-experts models (Mixtral, Qwen2-MoE, DeepSeek-V3/V2/V2-Lite with
//! latent attention) against transformers (1e-3),
//! both matrix kernel shapes, chunked prefill, row-split tensors; SmolLM2 Q4_1
//! against transformers (RMS 1e-2, greedy tokens).

mod common;
use baleen::engine::{generate, Backend, GenerateParams};
use baleen::gpu::model::GpuModel;
use baleen::gpu::{Gpu, GpuOptions, MatmulShape};
use baleen::model::ModelFiles;
use baleen::sample::SamplingParams;
use std::sync::Arc;

const TINY_TOL: f32 = 1e-3;

// The benchmark's synthetic DeepSeek-shaped model, written by the paging test.
#[allow(dead_code)]
#[path = "../../runtime/examples/moe_bench_model.rs"]
mod moe_bench_model;

fn gpu() -> Arc<Gpu> {
    Arc::new(Gpu::new_blocking().expect("a wgpu adapter (install mesa-vulkan-drivers for lavapipe)"))
}

#[test]
fn tiny_models_match_transformers_on_both_kernel_shapes() {
    let gpu = gpu();
    for name in ["tiny-llama", "tiny-qwen2"] {
        let fx = common::json(&format!("{name}/expected.json"));
        let m = ModelFiles::open(&common::fixture(name)).unwrap();
        let greedy_len = fx["greedy_ids"].as_array().unwrap().len();
        // Thread per row with weights in textures and in buffers.
        for (shape, subgroups, textures) in [
            (MatmulShape::RowPerThread, false, true),
            (MatmulShape::RowPerThread, true, true),
            (MatmulShape::RowPerThread, false, false),
            (MatmulShape::RowPerThread, true, false),
            (MatmulShape::RowPerWorkgroup, false, false),
            (MatmulShape::RowPerWorkgroup, true, false),
        ] {
            let opts = GpuOptions { shape: Some(shape), max_pass_tokens: 5, subgroups, kv_f16: Some(false), quad_textures: Some(textures), ..Default::default() };
            let mut g = GpuModel::load(gpu.clone(), &m, &opts).unwrap();
            let what = format!("{name} {shape:?} subgroups {subgroups} textures {textures}");
            common::check_tiny(&mut g, &fx, TINY_TOL, greedy_len, &what);
        }
    }
}

#[test]
fn moe_and_mla_models_match_transformers_on_the_gpu() {
    // Experts routed on the GPU (Mixtral, Qwen2-MoE, DeepSeek), and DeepSeek's
    // latent attention with weight absorption over the latent cache.
    let gpu = gpu();
    for name in ["tiny-mixtral", "tiny-qwen2-moe", "tiny-deepseek-v3", "tiny-deepseek-v2", "tiny-deepseek-v2-lite"] {
        let fx = common::json(&format!("{name}/expected.json"));
        let clear = common::clear_steps(&fx);
        for file in [common::fixture(name), common::fixture(name).join("model.gguf")] {
            let m = ModelFiles::open(&file).unwrap();
            // Small bindings: the experts' weights split into chunks of whole
            // experts. Prefill's experts per slot, and grouped by expert.
            for (shape, max_binding, grouped, textures) in [
                (MatmulShape::RowPerThread, None, false, true),
                (MatmulShape::RowPerThread, Some(40 << 10), true, true),
                (MatmulShape::RowPerThread, None, true, false),
                (MatmulShape::RowPerWorkgroup, Some(40 << 10), true, false),
            ] {
                let opts = GpuOptions { shape: Some(shape), max_pass_tokens: 5, kv_f16: Some(false), max_binding, grouped_experts: Some(grouped), quad_textures: Some(textures), ..Default::default() };
                let mut g = GpuModel::load(gpu.clone(), &m, &opts).unwrap();
                common::check_tiny(&mut g, &fx, TINY_TOL, clear, &format!("{name} ({}) {shape:?} grouped {grouped} textures {textures}", file.display()));
            }
        }
    }
}

#[test]
fn tensors_over_the_binding_limit_are_split_into_row_chunks() {
    let gpu = gpu();
    let m = ModelFiles::open(&common::fixture("tiny-qwen2")).unwrap();
    let fx = common::json("tiny-qwen2/expected.json");
    // 8 KiB bindings: the 384 × 64 f32 embedding (tied LM head, 96 KiB) becomes
    // 12 chunks, the 128 × 64 MLP matrices 4 each.
    let opts = GpuOptions { max_binding: Some(8 << 10), kv_f16: Some(false), ..Default::default() };
    let mut g = GpuModel::load(gpu, &m, &opts).unwrap();
    let ids = common::u32s(&fx["prompt_ids"]);
    let logits = g.forward(&ids, false).unwrap();
    let want = common::f32s(fx["logits"].as_array().unwrap().last().unwrap());
    assert!(common::max_abs_diff(&logits, &want) <= TINY_TOL);
}

/// `name`'s GGUF with the tensors `to_f16` picks rewritten as F16, in `dir`.
fn with_f16_tensors(name: &str, dir: &common::TempDir, to_f16: impl Fn(&str) -> bool) -> std::path::PathBuf {
    use baleen::quant::DType;
    let f16 = |v: &[f32]| v.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
    rewritten(name, dir, "f16", |t| to_f16(&t.name).then_some(DType::F16), f16)
}

/// `name`'s GGUF with every matrix whose rows are whole 32-value blocks
/// quantised to Q8_0 here (d = max |v| / 127 a block), in `dir`.
fn with_q8_0_matrices(name: &str, dir: &common::TempDir) -> std::path::PathBuf {
    use baleen::quant::DType;
    rewritten(name, dir, "q8_0", |t| (t.shape.len() == 2 && t.shape[1] % 32 == 0).then_some(DType::Q8_0), q8_0)
}

/// f32 values as Q8_0 blocks (d = max |v| / 127 a block).
fn q8_0(v: &[f32]) -> Vec<u8> {
    v.chunks(32)
        .flat_map(|b| {
            let d = b.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
            let q = b.iter().map(move |v| if d > 0.0 { (v / d).round() as i8 as u8 } else { 0 });
            half::f16::from_f32(d).to_le_bytes().into_iter().chain(q)
        })
        .collect()
}

/// `name`'s GGUF with the tensors `pick` gives a type rewritten in it
/// (`encode`: f32 values to that type's bytes), the others f32, in `dir`.
fn rewritten(
    name: &str,
    dir: &common::TempDir,
    tag: &str,
    pick: impl Fn(&baleen::format::TensorInfo) -> Option<baleen::quant::DType>,
    encode: impl Fn(&[f32]) -> Vec<u8>,
) -> std::path::PathBuf {
    use baleen::format::gguf::writer;
    use baleen::quant::DType;
    let m = ModelFiles::open(&common::fixture(&format!("{name}/model.gguf"))).unwrap();
    let idx = &m.index;
    let tensors: Vec<writer::Tensor> = idx
        .tensors
        .iter()
        .map(|t| {
            let values = idx.read_f32(t).unwrap();
            let (dtype, data) = match pick(t) {
                Some(dtype) => (dtype, encode(&values)),
                None => (DType::F32, values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            };
            writer::Tensor { name: t.name.clone(), dtype, shape: t.shape.clone(), data }
        })
        .collect();
    let meta: Vec<_> = idx.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let path = dir.0.join(format!("{name}-{tag}.gguf"));
    std::fs::write(&path, writer::write(&meta, &tensors)).unwrap();
    path
}

#[test]
fn quantised_models_read_from_textures_as_from_buffers() {
    // The tiny models with their matrices in Q8_0: thread per row with the
    // weights in textures (with and without subgroups) and in buffers,
    // against the reference backend on the same file, through decode and
    // chunked prefill (the MoE models' experts per slot and grouped).
    let gpu = gpu();
    let dir = common::TempDir::new("q8_0");
    for name in ["tiny-mixtral", "tiny-qwen2-moe", "tiny-deepseek-v3"] {
        let path = with_q8_0_matrices(name, &dir);
        let m = ModelFiles::open(&path).unwrap();
        let ids: Vec<u32> = (0..9).map(|i| (i * 37 + 5) % m.config.vocab as u32).collect();
        let want = baleen::reference::Reference::load(&m).unwrap().forward(&ids, true).unwrap();
        for (subgroups, textures, grouped) in [(true, true, false), (false, true, true), (true, false, true)] {
            let opts = GpuOptions {
                shape: Some(MatmulShape::RowPerThread),
                max_pass_tokens: 4,
                subgroups,
                kv_f16: Some(false),
                grouped_experts: Some(grouped),
                quad_textures: Some(textures),
                ..Default::default()
            };
            let mut g = GpuModel::load(gpu.clone(), &m, &opts).unwrap();
            let (in_textures, all) = g.matrices_in_textures();
            assert_eq!(in_textures > 0, textures, "{name}: {in_textures} of {all} matrices in textures");
            let got = g.forward(&ids, true).unwrap();
            let d = common::max_abs_diff(&got, &want);
            assert!(d <= TINY_TOL, "{name} subgroups {subgroups} textures {textures} grouped {grouped}: max |Δlogit| {d}");
            eprintln!("{name} Q8_0 subgroups {subgroups} textures {textures} ({in_textures} of {all} matrices): max |Δlogit| {d:e}");
        }
    }
}

#[test]
fn stacked_projections_of_two_types_match_the_reference() {
    // q, k, v (with qwen2's biases) and gate, up (dense, shared expert)
    // load as one stacked matrix per run of one type, the routed experts'
    // gate and up as one when their types agree. With v and every up in f16
    // and the rest in f32 each is two matrices writing side by side into one
    // row per token, and the experts' gate and up stay apart; 16 KiB
    // bindings split them into row chunks besides.
    let gpu = gpu();
    let dir = common::TempDir::new("stacks");
    for name in ["tiny-qwen2-moe", "tiny-deepseek-v3"] {
        let path = with_f16_tensors(name, &dir, |n| n.ends_with("attn_v.weight") || n.contains("ffn_up"));
        let m = ModelFiles::open(&path).unwrap();
        let ids: Vec<u32> = (0..9).map(|i| (i * 37 + 5) % m.config.vocab as u32).collect();
        let want = baleen::reference::Reference::load(&m).unwrap().forward(&ids, true).unwrap();
        for (shape, textures) in [(MatmulShape::RowPerThread, true), (MatmulShape::RowPerThread, false), (MatmulShape::RowPerWorkgroup, false)] {
            for max_binding in [None, Some(16 << 10)] {
                let opts = GpuOptions { shape: Some(shape), max_binding, kv_f16: Some(false), quad_textures: Some(textures), ..Default::default() };
                let mut g = GpuModel::load(gpu.clone(), &m, &opts).unwrap();
                let got = g.forward(&ids, true).unwrap();
                let d = common::max_abs_diff(&got, &want);
                assert!(d <= TINY_TOL, "{name} {shape:?} textures {textures} bindings {max_binding:?}: max |Δlogit| {d}");
            }
        }
    }
}

#[test]
fn the_context_is_the_models_own_where_the_cache_fits_else_capped() {
    use baleen::gpu::{choose_context, DEFAULT_KV_BYTES, MIN_DEFAULT_CONTEXT};
    let mb = 1u64 << 20;
    // A small cache: the model's own length.
    assert_eq!(choose_context(8192, None, 1 << 20, 23_040, 128 * mb).unwrap(), 8192);
    // Qwen3-0.6B at f16 (114,688 bytes a position): 40,960 positions would
    // take 4.7 GB; the default keeps the whole cache within 1 GiB.
    let per = 114_688;
    assert_eq!(choose_context(40_960, None, 1 << 20, per, 128 * mb).unwrap(), (DEFAULT_KV_BYTES / per) as usize);
    // A cache over budget even at 4096 positions still gets 4096.
    assert_eq!(choose_context(32_768, None, 1 << 20, 1 << 20, 128 * mb).unwrap(), MIN_DEFAULT_CONTEXT);
    // One layer's cache is one binding: never more than fits it, asked or not.
    assert_eq!(choose_context(32_768, None, 1000, 100, 128 * mb).unwrap(), 1000);
    assert_eq!(choose_context(32_768, Some(32_768), 1 << 20, 1 << 20, 128 * mb).unwrap(), 32_768);
    let e = choose_context(32_768, Some(2000), 1000, 100, 128 * mb).unwrap_err().to_string();
    assert!(e.contains("does not fit this GPU") && e.contains("ask for at most 1000"), "{e}");
    let e = choose_context(32_768, None, 0, 100, 128 * mb).unwrap_err().to_string();
    assert!(e.contains("exceeds the GPU's binding limit of 134217728 bytes"), "{e}");
}

#[test]
fn dispatches_per_decode_step_do_not_grow_unnoticed() {
    // A decode step's dispatches, per kernel shape: a change that adds one
    // fails here (update the counts when a fusion removes some). At
    // position 100, past one split of the workgroup shape's attention (its
    // combine runs), within one of the thread shape's (it does not).
    let gpu = gpu();
    let smollm2 = ModelFiles::open(&common::smollm2()).unwrap();
    let moe = ModelFiles::open(&common::fixture("tiny-deepseek-v3/model.gguf")).unwrap();
    let mut wrong = Vec::new();
    for (m, name, layers, want) in [(&smollm2, "SmolLM2", 30, [(MatmulShape::RowPerThread, 244), (MatmulShape::RowPerWorkgroup, 274)]), (&moe, "tiny DeepSeek-V3", 3, [(MatmulShape::RowPerThread, 55), (MatmulShape::RowPerWorkgroup, 58)])] {
        for (shape, n) in want {
            let opts = GpuOptions { shape: Some(shape), subgroups: false, quad_textures: Some(false), ..Default::default() };
            let g = GpuModel::load(gpu.clone(), m, &opts).unwrap();
            let got = g.dispatches_per_token(100);
            eprintln!("{name} {shape:?}: {got} dispatches a decode step ({:.1} a layer)", got as f64 / layers as f64);
            wrong.extend((got != n).then(|| format!("{name} {shape:?}: {got}, not {n}")));
        }
    }
    assert!(wrong.is_empty(), "{wrong:?}");
}

#[test]
fn penalties_on_the_gpu_match_the_reference_through_generation() {
    // Greedy and sampled, penalties over windows shorter and longer than the
    // prompt: the GPU's tokens are the reference's, and the penalties change
    // what greedy decoding repeats.
    let gpu = gpu();
    let m = ModelFiles::open(&common::fixture("tiny-gemma3")).unwrap();
    let ids = common::u32s(&common::json("tiny-gemma3/expected.json")["prompt_ids"]);
    let mut r = baleen::reference::Reference::load(&m).unwrap();
    let mut g = GpuModel::load(gpu, &m, &GpuOptions { kv_f16: Some(false), ..Default::default() }).unwrap();
    let plain = SamplingParams::default();
    let cases = [
        SamplingParams { repetition_penalty: 1.5, ..plain },
        SamplingParams { frequency_penalty: 1.0, presence_penalty: 0.5, penalty_last_n: 8, ..plain },
        SamplingParams { temperature: 0.9, top_k: 20, seed: 5, repetition_penalty: 1.2, frequency_penalty: 0.3, ..plain },
    ];
    let run_biased = |b: &mut dyn Backend, s: SamplingParams, logit_bias: Vec<(u32, f32)>| {
        b.truncate(0);
        let params = GenerateParams { max_tokens: 24, sampling: s, stop_ids: vec![], logit_bias };
        generate(b, &ids, &params, |_| true).unwrap().tokens
    };
    let run = |b: &mut dyn Backend, s: SamplingParams| run_biased(b, s, vec![]);
    let unpenalized = run(&mut r, plain);
    for s in cases {
        let want = run(&mut r, s);
        assert_eq!(run(&mut g, s), want, "{s:?}");
        if s.temperature == 0.0 {
            assert_ne!(want, unpenalized, "{s:?} changed nothing");
        }
    }
    // Log-probabilities: the GPU's (reduced on the device) are the CPU's
    // log-softmax of the same logits, greedy and sampled, penalised too.
    for s in [SamplingParams { logprobs: Some(5), ..plain }, SamplingParams { logprobs: Some(3), ..cases[2] }] {
        let gen = |b: &mut dyn Backend| {
            b.truncate(0);
            let params = GenerateParams { max_tokens: 12, sampling: s, ..Default::default() };
            generate(b, &ids, &params, |_| true).unwrap()
        };
        let (want, got) = (gen(&mut r), gen(&mut g));
        assert_eq!(got.tokens, want.tokens);
        assert_eq!((got.logprobs.len(), want.logprobs.len()), (12, 12));
        for (a, b) in got.logprobs.iter().zip(&want.logprobs) {
            assert_eq!(a.token, b.token);
            assert!((a.logprob - b.logprob).abs() < 1e-4 && a.logprob <= 0.0, "{a:?} vs {b:?}");
            assert_eq!(a.top.iter().map(|t| t.0).collect::<Vec<_>>(), b.top.iter().map(|t| t.0).collect::<Vec<_>>());
            assert!(a.top.iter().zip(&b.top).all(|(x, y)| (x.1 - y.1).abs() < 1e-4));
        }
    }
    // A bias of −100 bans the greedy reply's tokens; +5 on another favours it.
    let (first, other) = (unpenalized[0], (unpenalized[0] + 1) % m.config.vocab as u32);
    let bias = vec![(first, -100.0), (other, 5.0)];
    let want = run_biased(&mut r, plain, bias.clone());
    assert!(!want.contains(&first));
    assert_eq!(run_biased(&mut g, plain, bias), want, "logit bias");
    // The fixture's greedy reply repeats one token; a repetition penalty breaks the run.
    let longest_run = |t: &[u32]| t.chunk_by(|a, b| a == b).map(|c| c.len()).max().unwrap_or(0);
    assert!(longest_run(&run(&mut g, cases[0])) < longest_run(&unpenalized));
}

#[test]
fn gpu_errors_are_clear() {
    let gpu = gpu();
    let m = ModelFiles::open(&common::fixture("tiny-llama")).unwrap();
    let mut g = GpuModel::load(gpu, &m, &GpuOptions { context: Some(16), ..Default::default() }).unwrap();
    let e = g.forward(&[100_000], false).unwrap_err().to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");
    let e = g.forward(&[1; 17], false).unwrap_err().to_string();
    assert!(e.contains("do not fit the context of 16"), "{e}");
    assert_eq!(g.context_length(), 16);
    // A buffer past the device's limit is refused with the numbers, not a panic.
    let gpu = &g.gpu;
    let too_big = gpu.limits.max_buffer_size.saturating_add(4);
    let e = gpu.storage("huge", too_big).unwrap_err().to_string();
    assert!(e.contains("huge") && e.contains("allows"), "{e}");
}

#[test]
fn tiny_models_with_an_f16_kv_cache() {
    let gpu = gpu();
    if !gpu.has_f16() {
        eprintln!("no shader-f16 on {}: the KV cache stays f32", gpu.adapter_name());
        return;
    }
    for name in ["tiny-llama", "tiny-qwen2"] {
        let fx = common::json(&format!("{name}/expected.json"));
        let m = ModelFiles::open(&common::fixture(name)).unwrap();
        let mut g = GpuModel::load(gpu.clone(), &m, &GpuOptions { kv_f16: Some(true), ..Default::default() }).unwrap();
        assert!(g.kv_f16);
        let ids = common::u32s(&fx["prompt_ids"]);
        let params = GenerateParams { max_tokens: 20, sampling: SamplingParams::default(), stop_ids: vec![], ..Default::default() };
        let gen = generate(&mut g, &ids, &params, |_| true).unwrap();
        let last = common::f32s(fx["logits"].as_array().unwrap().last().unwrap());
        let d = common::max_abs_diff(&gen.prompt_logits, &last);
        // K and V rounded to f16 (relative 2^-11): logits move by ~1e-3 here.
        assert!(d <= 1e-2, "{name}: max |Δ| {d} with an f16 KV cache");
        assert_eq!(gen.tokens, common::u32s(&fx["greedy_ids"]), "{name} greedy with an f16 KV cache");
        eprintln!("{name} f16 KV: max |Δlogit| {d:e}");
    }
}

fn smollm2_check(opts: GpuOptions, margin: f32) {
    let gpu = gpu();
    let m = ModelFiles::open(&common::smollm2()).unwrap();
    let fx = common::json("smollm2/expected.json");
    let mut g = GpuModel::load(gpu, &m, &opts).unwrap();
    for p in fx["prompts"].as_array().unwrap() {
        g.truncate(0);
        let ids = common::u32s(&p["prompt_ids"]);
        let params = GenerateParams { max_tokens: 32, sampling: SamplingParams::default(), stop_ids: vec![], ..Default::default() };
        let gen = generate(&mut g, &ids, &params, |_| true).unwrap();
        let b = std::fs::read(common::fixture(&format!("smollm2/{}", p["logits_file"].as_str().unwrap()))).unwrap();
        let want: Vec<f32> = b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let rms = common::rms_diff(&gen.prompt_logits, &want);
        assert!(rms <= 1e-2, "logits RMS {rms}");
        // Greedy tokens agree wherever transformers' top-2 margin is at least
        // `margin`, up to the first step below it (past that either is right).
        let want_ids = common::u32s(&p["greedy_ids"]);
        let margins = common::f32s(&p["greedy_margins"]);
        let sure = margins.iter().take_while(|&&m| m >= margin).count().min(gen.tokens.len());
        assert_eq!(gen.tokens.len(), 32);
        assert_eq!(gen.tokens[..sure], want_ids[..sure], "greedy tokens");
        eprintln!("{} (f16 KV {}): RMS {rms:e}; {sure} of 32 tokens checked", p["logits_file"], g.kv_f16);
    }
}

#[test]
fn smollm2_matches_transformers() {
    // f32 KV cache: greedy tokens must agree down to a 0.01 top-2 margin.
    smollm2_check(GpuOptions { kv_f16: Some(false), ..Default::default() }, 0.01);
}

#[test]
fn smollm2_matches_transformers_with_the_default_cache() {
    // The default (f16 KV where the device has shader-f16): the bound,
    // identical tokens wherever transformers' top-2 margin is at least 0.1.
    smollm2_check(GpuOptions::default(), 0.1);
}

/// `m`'s logits, bit for bit, after each prefix of `prompt` (each prefix run
/// from an empty cache in passes of the options' length) and at each of
/// `steps` greedy decode steps after the whole prompt.
fn logits_through(g: &mut GpuModel, prompt: &[u32], steps: usize) -> Vec<Vec<u32>> {
    let bits = |l: Vec<f32>| l.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    let mut out = Vec::new();
    for p in 1..=prompt.len() {
        g.truncate(0);
        out.push(bits(g.forward(&prompt[..p], false).unwrap()));
    }
    for _ in 0..steps {
        let last = out.last().unwrap();
        let next = (0..last.len()).max_by(|&a, &b| f32::from_bits(last[a]).total_cmp(&f32::from_bits(last[b]))).unwrap() as u32;
        out.push(bits(g.forward(&[next], false).unwrap()));
    }
    out
}

#[test]
fn paged_experts_give_bit_identical_logits() {
    // Every tiny MoE fixture (HF and GGUF, and one with every matrix and
    // stacked experts in Q8_0) with its routed
    // experts in a cache of one token's worth (top-k slots a kind) and of
    // 30% of their bytes: the logits equal the resident run's bit for bit,
    // through prefill (passes of 5, the grouped path and per slot, several
    // rounds of uploads where a pass needs more experts than the cache
    // holds) and 32 greedy decode steps, on both kernel shapes, in buffers
    // and (Q8_0) textures.
    let gpu = gpu();
    let dir = common::TempDir::new("paged");
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    for name in ["tiny-mixtral", "tiny-qwen2-moe", "tiny-qwen3-moe", "tiny-deepseek-v3", "tiny-deepseek-v2", "tiny-deepseek-v2-lite"] {
        files.push(common::fixture(name));
        files.push(common::fixture(name).join("model.gguf"));
    }
    let quantised = |t: &baleen::format::TensorInfo| (t.shape.len() >= 2 && t.shape.last().unwrap() % 32 == 0).then_some(baleen::quant::DType::Q8_0);
    files.push(rewritten("tiny-deepseek-v3", &dir, "q8_0-experts", quantised, q8_0));
    let configs = [(MatmulShape::RowPerThread, true, true), (MatmulShape::RowPerThread, false, false), (MatmulShape::RowPerWorkgroup, true, false)];
    for file in &files {
        let m = ModelFiles::open(file).unwrap();
        let prompt: Vec<u32> = (0..12).map(|i| (i * 37 + 5) % m.config.vocab as u32).collect();
        // (HF folders hold the same weights as the GGUFs: one configuration.)
        let n = if file.extension().is_some() { configs.len() } else { 1 };
        for &(shape, grouped, textures) in &configs[..n] {
            let opts = GpuOptions { shape: Some(shape), max_pass_tokens: 5, kv_f16: Some(false), grouped_experts: Some(grouped), quad_textures: Some(textures), ..Default::default() };
            let what = format!("{} {shape:?} grouped {grouped} textures {textures}", file.display());
            let want = logits_through(&mut GpuModel::load(gpu.clone(), &m, &opts).unwrap(), &prompt, 32);
            // A budget over every expert: all resident in the cache, never paged.
            let all = GpuModel::load(gpu.clone(), &m, &GpuOptions { expert_cache: Some(u64::MAX), ..opts.clone() }).unwrap();
            let sizes = all.expert_stats().unwrap();
            drop(all);
            for budget in [sizes.minimum_bytes, sizes.total_bytes * 3 / 10] {
                let mut g = GpuModel::load(gpu.clone(), &m, &GpuOptions { expert_cache: Some(budget), ..opts.clone() }).unwrap();
                let got = logits_through(&mut g, &prompt, 32);
                let s = g.expert_stats().unwrap();
                let first = got.iter().zip(&want).position(|(a, b)| a != b);
                assert!(first.is_none(), "{what}, budget {budget}: logits differ at step {first:?}");
                assert!(s.misses > 0 && s.evictions > 0 && s.slots < sizes.slots, "{what}, budget {budget}: {s:?}");
                eprintln!("{what}: budget {budget} of {} bytes, {} slots: {} hits, {} misses, {} evictions, {} passes of several rounds", sizes.total_bytes, s.slots, s.hits, s.misses, s.evictions, s.extra_rounds);
            }
        }
    }
}

#[test]
fn an_expert_cache_too_small_or_for_a_dense_model_is_refused() {
    let gpu = gpu();
    let m = ModelFiles::open(&common::fixture("tiny-deepseek-v3/model.gguf")).unwrap();
    let opts = |b| GpuOptions { kv_f16: Some(false), expert_cache: Some(b), ..Default::default() };
    let sizes = GpuModel::load(gpu.clone(), &m, &opts(u64::MAX)).unwrap().expert_stats().unwrap();
    // f32 experts of 32 × 64: 24 KiB each; top 2; every layer's alike.
    assert_eq!(sizes.minimum_bytes, 2 * 24 << 10);
    let e = GpuModel::load(gpu.clone(), &m, &opts(sizes.minimum_bytes - 1)).err().unwrap().to_string();
    assert!(e.contains("fewer than one token's 2 experts") && e.contains(&format!("--expert-cache {}", sizes.minimum_bytes)), "{e}");
    let dense = ModelFiles::open(&common::fixture("tiny-llama")).unwrap();
    let e = GpuModel::load(gpu, &dense, &opts(1 << 20)).err().unwrap().to_string();
    assert!(e.contains("no routed experts"), "{e}");
}

#[test]
fn a_deepseek_shaped_model_four_times_over_its_expert_budget_pages_exactly() {
    // The benchmark's synthetic model (hidden 512, 3 MoE layers of 64 Q4_0
    // experts, top 6, grouped routing, a shared expert) with a quarter of its
    // experts' bytes: bit-identical logits, weights in buffers and in textures.
    let gpu = gpu();
    let dir = common::TempDir::new("paged-synthetic");
    let path = dir.0.join("moe-e64.gguf");
    moe_bench_model::write(path.to_str().unwrap(), 64, None, 6);
    let m = ModelFiles::open(&path).unwrap();
    let prompt: Vec<u32> = (0..6).map(|i| (i * 37 + 5) % m.config.vocab as u32).collect();
    for textures in [false, true] {
        let opts = GpuOptions { shape: Some(MatmulShape::RowPerThread), max_pass_tokens: 4, kv_f16: Some(false), grouped_experts: Some(true), quad_textures: Some(textures), ..Default::default() };
        let want = logits_through(&mut GpuModel::load(gpu.clone(), &m, &opts).unwrap(), &prompt, 16);
        let sizes = GpuModel::load(gpu.clone(), &m, &GpuOptions { expert_cache: Some(u64::MAX), ..opts.clone() }).unwrap().expert_stats().unwrap();
        let mut g = GpuModel::load(gpu.clone(), &m, &GpuOptions { expert_cache: Some(sizes.total_bytes / 4), ..opts.clone() }).unwrap();
        assert_eq!(g.matrices_in_textures().0 > 0, textures);
        let got = logits_through(&mut g, &prompt, 16);
        let first = got.iter().zip(&want).position(|(a, b)| a != b);
        assert!(first.is_none(), "textures {textures}: logits differ at step {first:?}");
        let s = g.expert_stats().unwrap();
        assert!(s.slots == sizes.slots / 4 && s.misses > 0 && s.evictions > 0, "{s:?} of {sizes:?}");
        eprintln!("synthetic DeepSeek, textures {textures}: {} of {} slots: {s:?}", s.slots, sizes.slots);
    }
}
