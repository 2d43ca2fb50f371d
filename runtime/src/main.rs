//! The `baleen` command line. See design.md, "The CLI contract".

use baleen::engine::{generate, Backend, GenerateParams, Generation};
use baleen::gpu::model::GpuModel;
use baleen::gpu::{Gpu, GpuOptions, MatmulShape};
use baleen::model::ModelFiles;
use baleen::reference::Reference;
use baleen::sample::SamplingParams;
use baleen::tokenizer::Message;
use baleen::{Error, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "baleen", version, about = "Run LLMs on WebGPU (and natively, through wgpu)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendKind {
    /// WGSL kernels on the first GPU adapter wgpu finds.
    Gpu,
    /// The plain-Rust f32 forward pass.
    Reference,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate text from a prompt.
    Run(RunArgs),
    /// Chat in the terminal (multi-turn, reusing the KV cache between turns).
    Chat(ChatArgs),
    /// Measure prefill and decode speed.
    Bench(BenchArgs),
    /// Each kernel's bandwidth beside a copy kernel's on this adapter.
    BenchKernels {
        #[arg(long)]
        json: bool,
        /// Bytes of weights per kernel run.
        #[arg(long, default_value_t = 32 << 20)]
        bytes: u64,
        /// Only these weight formats and kernels (comma-separated, e.g.
        /// Q4_1,Q8_0,attention; the others: rms_norm, swiglu, rope, embed, sample).
        #[arg(long)]
        only: Option<String>,
    },
    /// Run a prompt through both backends and diff every named intermediate
    /// (max |Δ| and RMS at the last position, in graph order); exit 1 when
    /// one exceeds --tolerance.
    Compare(CompareArgs),
    /// Describe a model file: architecture, hyper-parameters, metadata, tensors
    /// (also of a model whose architecture baleen cannot run).
    Inspect {
        /// A .gguf file or a Hugging Face model folder.
        path: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Print a kernel variant's WGSL exactly as the GPU receives it, or list
    /// the kernel families, their flags and choices.
    Shader {
        /// A kernel family (none: list them).
        family: Option<String>,
        /// The variant's flags: one of each choice group and any free flags
        /// (e.g. Q4_1,SUBGROUPS for matmul_thread).
        #[arg(long, value_delimiter = ',')]
        flags: Vec<String>,
        /// List the families with their flags and choice groups.
        #[arg(long, conflicts_with_all = ["family", "flags"])]
        list: bool,
    },
    /// Serve the chat page (web/), the wasm package (pkg/) and a models folder on 127.0.0.1.
    Serve {
        /// 0 picks a free port.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// The folder served at /models/.
        #[arg(long, default_value = "models")]
        models: PathBuf,
        #[arg(long, default_value = "web")]
        web: PathBuf,
        #[arg(long, default_value = "pkg")]
        pkg: PathBuf,
    },
}

/// The KV cache's element type on the GPU.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum KvCache {
    /// Half the memory and the attention's reads; needs shader-f16.
    F16,
    F32,
}

/// `--kv-cache`, `--context` and `--expert-cache`, shared by the commands
/// that load a model.
#[derive(clap::Args)]
struct KvArgs {
    /// The GPU's KV cache (default: f16 where the device has shader-f16).
    /// DeepSeek's latent cache is always f32.
    #[arg(long, value_enum)]
    kv_cache: Option<KvCache>,
    /// Positions the KV cache holds, at most the model's own context length
    /// (default on the GPU: the model's own where the whole cache takes at
    /// most 1 GiB, and at least 4096; the reference: the model's own).
    #[arg(long, value_name = "N")]
    context: Option<usize>,
    #[command(flatten)]
    experts: ExpertCacheArg,
}

/// `--expert-cache`, shared by the commands that load a model.
#[derive(clap::Args)]
struct ExpertCacheArg {
    /// GPU memory for a mixture-of-experts model's routed experts, in bytes
    /// (suffixes K, M, G: 512M, 4G): below their total size they are paged
    /// on demand from the model file, with results identical to all of them
    /// resident (default: all resident).
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    expert_cache: Option<u64>,
}

/// A byte count: digits, then optionally K, M or G (powers of 1024),
/// optionally followed by B or iB.
fn parse_bytes(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let shift = match unit.to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        _ => return Err(format!("{s:?} is not a byte count: give digits and optionally K, M or G (512M, 4G)")),
    };
    let n: u64 = n.parse().map_err(|_| format!("{s:?} is not a byte count: give digits and optionally K, M or G (512M, 4G)"))?;
    n.checked_mul(1 << shift).ok_or_else(|| format!("{s:?} is more bytes than a 64-bit count holds"))
}

/// The prompt, shared by `run` and `compare`.
#[derive(clap::Args)]
struct PromptArgs {
    /// The prompt text.
    #[arg(long, conflicts_with = "prompt_ids")]
    prompt: Option<String>,
    /// Token ids, fed as given (no BOS is added): 1,2,3
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    chat: bool,
    /// A system message (implies --chat).
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    template: TemplateArgsCli,
}

/// `--template-arg`, shared by `run` and `chat`.
#[derive(clap::Args)]
struct TemplateArgsCli {
    /// A chat template variable, KEY=VALUE (VALUE as JSON where it parses:
    /// `enable_thinking=false`); repeatable.
    #[arg(long = "template-arg", value_name = "KEY=VALUE")]
    template_arg: Vec<String>,
}

impl TemplateArgsCli {
    fn parse(&self) -> Result<baleen::tokenizer::TemplateArgs> {
        self.template_arg.iter().map(|kv| baleen::tokenizer::template_arg(kv)).collect()
    }
}

impl PromptArgs {
    fn ids(&self, m: &ModelFiles) -> Result<Vec<u32>> {
        let chat = self.chat || self.system.is_some();
        match (&self.prompt, &self.prompt_ids) {
            (_, Some(_)) if chat => Err(Error::Input("--prompt-ids feeds ids as given; it cannot be combined with --chat/--system".into())),
            _ if !chat && !self.template.template_arg.is_empty() => Err(Error::Input("--template-arg needs --chat (or --system)".into())),
            (_, Some(ids)) => Ok(ids.clone()),
            (Some(text), None) if chat => {
                let mut msgs = Vec::new();
                if let Some(s) = &self.system {
                    msgs.push(Message::new("system", s));
                }
                msgs.push(Message::new("user", text));
                m.tokenizer.encode_chat_with(&msgs, true, &self.template.parse()?)
            }
            (Some(text), None) => m.tokenizer.encode(text, true),
            (None, None) => Err(Error::Input("give a prompt: --prompt TEXT or --prompt-ids 1,2,3".into())),
        }
    }
}

#[derive(clap::Args)]
struct CompareArgs {
    /// A .gguf file or a Hugging Face model folder (an hf:owner/repo/file.gguf name is answered with its download URL).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    prompt: PromptArgs,
    /// The largest max |Δ| an intermediate may have.
    #[arg(long, default_value_t = 1e-3)]
    tolerance: f32,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// The GPU's KV cache (default here: f32, as the reference's).
    #[arg(long, value_enum, default_value = "f32")]
    kv_cache: KvCache,
    #[command(flatten)]
    experts: ExpertCacheArg,
}

#[derive(clap::Args)]
struct RunArgs {
    /// A .gguf file or a Hugging Face model folder (an hf:owner/repo/file.gguf name is answered with its download URL).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    prompt: PromptArgs,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[arg(long, value_enum, default_value = "gpu")]
    backend: BackendKind,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Write the last prompt position's logits (little-endian f32) to FILE.
    #[arg(long)]
    dump_logits: Option<PathBuf>,
    #[command(flatten)]
    kv: KvArgs,
}

/// Sampling flags shared by `run` and `chat` (llama.cpp's defaults).
#[derive(clap::Args)]
struct SamplingArgs {
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Keep the K most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Random seed (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Divide a repeated token's logit by this (multiply, if negative); 1: off.
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Subtract this times a token's count in the window (OpenAI's; [-2, 2]).
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f32,
    /// Subtract this from every token in the window (OpenAI's; [-2, 2]).
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    /// The penalties' window: the last N tokens of the context (0: none).
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    /// Report each token's log-probability and its N most likely alternatives
    /// (0–20) in `run --json`'s "logprobs".
    #[arg(long, value_name = "N")]
    logprobs: Option<usize>,
    /// Add BIAS to token ID's logit, ID=BIAS (−100 bans it); repeatable.
    #[arg(long = "logit-bias", value_name = "ID=BIAS")]
    logit_bias: Vec<String>,
}

impl SamplingArgs {
    fn logit_bias(&self) -> Result<Vec<(u32, f32)>> {
        let bad = |kv: &str| Error::Input(format!("--logit-bias {kv:?}: give ID=BIAS, a token id and a number (−100 bans the token)"));
        self.logit_bias
            .iter()
            .map(|kv| {
                let (id, b) = kv.split_once('=').ok_or_else(|| bad(kv))?;
                let b: f32 = b.trim().parse().map_err(|_| bad(kv))?;
                if !b.is_finite() {
                    return Err(bad(kv));
                }
                Ok((id.trim().parse().map_err(|_| bad(kv))?, b))
            })
            .collect()
    }

    fn params(&self) -> Result<SamplingParams> {
        let p = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed.unwrap_or_else(clock_seed),
            repetition_penalty: self.repeat_penalty,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            penalty_last_n: self.repeat_last_n,
            logprobs: self.logprobs,
        };
        p.validate()?;
        Ok(p)
    }
}

#[derive(clap::Args)]
struct ChatArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    template: TemplateArgsCli,
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[arg(long, value_enum, default_value = "gpu")]
    backend: BackendKind,
    #[command(flatten)]
    kv: KvArgs,
}

#[derive(clap::Args)]
struct BenchArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 64)]
    gen_tokens: usize,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[arg(long, value_enum, default_value = "gpu")]
    backend: BackendKind,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    kv: KvArgs,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::Chat(a) => chat(a),
        Cmd::Bench(a) => bench(a),
        Cmd::Compare(a) => compare(a),
        Cmd::Inspect { path, json } => inspect(&path, json),
        Cmd::Shader { family, flags, list: _ } => shader(family.as_deref(), &flags),
        Cmd::Serve { port, models, web, pkg } => baleen::serve::serve(baleen::serve::ServeOptions { port, web, pkg, models }, |url| {
            println!("baleen: serving the chat page at {url}");
        }),
        Cmd::BenchKernels { json, bytes, only } => bench_kernels(json, bytes, only.as_deref()),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// The first adapter, with the choices the environment overrides for
/// measuring: BALEEN_SUBGROUPS=0 (a device without subgroups),
/// BALEEN_MATMUL_SHAPE=thread|workgroup, BALEEN_GROUPED_EXPERTS=0|1,
/// BALEEN_QUAD_TEXTURES=0 (every weight in buffers).
fn open_gpu() -> Result<Gpu> {
    let var = |k: &str| std::env::var(k).ok();
    let mut gpu = pollster::block_on(Gpu::with_subgroups(var("BALEEN_SUBGROUPS").as_deref() != Some("0")))?;
    match var("BALEEN_MATMUL_SHAPE").as_deref() {
        Some("thread") => gpu.shape = MatmulShape::RowPerThread,
        Some("workgroup") => gpu.shape = MatmulShape::RowPerWorkgroup,
        _ => {}
    }
    match var("BALEEN_GROUPED_EXPERTS").as_deref() {
        Some("1") => gpu.grouped_experts = true,
        Some("0") => gpu.grouped_experts = false,
        _ => {}
    }
    if var("BALEEN_QUAD_TEXTURES").as_deref() == Some("0") {
        gpu.quad_textures = false;
    }
    Ok(gpu)
}

fn gpu_options(kv: Option<KvCache>, context: Option<usize>, experts: &ExpertCacheArg) -> GpuOptions {
    GpuOptions { kv_f16: kv.map(|k| k == KvCache::F16), context, expert_cache: experts.expert_cache, ..Default::default() }
}

fn load_gpu_model(m: &ModelFiles, kv: &KvArgs) -> Result<GpuModel> {
    let g = GpuModel::load(Arc::new(open_gpu()?), m, &gpu_options(kv.kv_cache, kv.context, &kv.experts))?;
    if let (None, Some(s)) = (kv.experts.expert_cache, g.expert_stats()) {
        eprintln!(
            "{}: its routed experts ({} MiB) exceed the default expert budget; paging them in {} MiB ({} slots). --expert-cache BYTES changes it.",
            m.name,
            s.total_bytes >> 20,
            s.budget_bytes >> 20,
            s.slots
        );
    }
    Ok(g)
}

fn load_reference(m: &ModelFiles, kv: &KvArgs) -> Result<Reference> {
    if kv.experts.expert_cache.is_some() {
        return Err(Error::Input("--expert-cache pages experts on the GPU; the reference backend holds every weight in memory (leave it out, or use --backend gpu)".into()));
    }
    let r = Reference::load(m)?;
    match kv.context {
        Some(n) => r.with_context(n),
        None => Ok(r),
    }
}

fn open_backend(kind: BackendKind, m: &ModelFiles, kv: &KvArgs) -> Result<Box<dyn Backend>> {
    match kind {
        BackendKind::Reference => Ok(Box::new(load_reference(m, kv)?)),
        BackendKind::Gpu => Ok(Box::new(load_gpu_model(m, kv)?)),
    }
}

fn compare(a: CompareArgs) -> Result<()> {
    let m = ModelFiles::open(&a.model)?;
    let ids = a.prompt.ids(&m)?;
    let c = baleen::compare::compare(&m, &ids, Arc::new(open_gpu()?), &gpu_options(Some(a.kv_cache), None, &a.experts))?;
    let over = c.first_over(a.tolerance);
    let mut out = String::new();
    if a.json {
        let worst = c.worst().map(|d| serde_json::json!({ "name": d.name, "max_abs": d.max_abs }));
        let json = serde_json::json!({
            "model": m.name,
            "adapter": { "name": c.adapter.0, "backend": c.adapter.1 },
            "prompt_ids": ids,
            "tolerance": a.tolerance,
            "intermediates": c.intermediates,
            "worst": worst,
            "first_over": over.map(|d| d.name.clone()),
        });
        out = json.to_string() + "\n";
    } else {
        use std::fmt::Write as _;
        let _ = writeln!(out, "{} on {} ({}), {} prompt tokens: GPU − reference at the last position", m.name, c.adapter.0, c.adapter.1, ids.len());
        for d in &c.intermediates {
            let flag = if d.max_abs <= a.tolerance { "" } else { "  > tolerance" };
            let _ = writeln!(out, "  {:<28} max |Δ| {:>10.3e}  rms {:>10.3e}{flag}", d.name, d.max_abs, d.rms);
        }
        match over {
            Some(d) => _ = writeln!(out, "first over {:e}: {} (max |Δ| {:e})", a.tolerance, d.name, d.max_abs),
            None => _ = writeln!(out, "every intermediate within {:e}", a.tolerance),
        }
    }
    std::io::stdout().write_all(out.as_bytes()).map_err(|e| Error::io("stdout", e))?;
    if over.is_some() {
        std::process::exit(1);
    }
    Ok(())
}

fn run(a: RunArgs) -> Result<()> {
    let m = ModelFiles::open(&a.model)?;
    let prompt_ids = a.prompt.ids(&m)?;
    let params = GenerateParams {
        max_tokens: a.max_tokens,
        sampling: a.sampling.params()?,
        stop_ids: m.tokenizer.stop_ids.clone(),
        logit_bias: a.sampling.logit_bias()?,
    };
    let seed = params.sampling.seed;
    let mut backend = open_backend(a.backend, &m, &a.kv)?;

    let mut stream = m.tokenizer.stream();
    let mut out = std::io::stdout().lock();
    let mut print_err = None;
    let g: Generation = generate(backend.as_mut(), &prompt_ids, &params, |id| {
        if !a.json {
            match stream.push(id) {
                Ok(piece) => {
                    let _ = write!(out, "{piece}");
                    let _ = out.flush();
                }
                Err(e) => print_err = Some(e),
            }
        }
        true
    })?;
    if let Some(e) = print_err {
        return Err(e);
    }
    if let Some(path) = &a.dump_logits {
        let bytes: Vec<u8> = g.prompt_logits.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(path, bytes).map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
    }
    if a.json {
        let (adapter, backend_name) = backend.describe();
        let text = m.tokenizer.decode(&g.tokens)?;
        let json = serde_json::json!({
            "model": m.name,
            "adapter": { "name": adapter, "backend": backend_name },
            "prompt_ids": prompt_ids,
            "token_ids": g.tokens,
            "text": text,
            "stop_reason": g.stop,
            "context": backend.context_length(),
            "seed": seed,
            "prefill_ms": g.prefill_ms,
            "decode_tokens_per_s": g.decode_tokens_per_s(),
            "logits_top": g.logits_top(10).iter().map(|&(i, l)| serde_json::json!([i, l])).collect::<Vec<_>>(),
            "expert_cache": backend.expert_cache(),
        });
        let mut json = json;
        if params.sampling.logprobs.is_some() {
            let text = |t: u32| m.tokenizer.decode(&[t]).unwrap_or_default();
            json["logprobs"] = g
                .logprobs
                .iter()
                .map(|lp| {
                    let top: Vec<_> = lp.top.iter().map(|&(t, l)| serde_json::json!({"token": t, "text": text(t), "logprob": l})).collect();
                    serde_json::json!({"token": lp.token, "text": text(lp.token), "logprob": lp.logprob, "top_logprobs": top})
                })
                .collect();
        }
        writeln!(out, "{json}").map_err(|e| Error::io("stdout", e))?;
    } else {
        let rest = stream.finish()?;
        writeln!(out, "{rest}").map_err(|e| Error::io("stdout", e))?;
    }
    Ok(())
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn chat(a: ChatArgs) -> Result<()> {
    use std::io::BufRead;
    let m = ModelFiles::open(&a.model)?;
    let mut backend = open_backend(a.backend, &m, &a.kv)?;
    let (adapter, _) = backend.describe();
    eprintln!("{} on {adapter}, context {}. Type a message; /reset starts over; Ctrl-D quits.", m.name, backend.context_length());
    let template_args = a.template.parse()?;
    let mut messages: Vec<Message> = a.system.iter().map(|s| Message::new("system", s)).collect();
    let mut session = baleen::engine::Session::new();
    let mut params = GenerateParams {
        max_tokens: a.max_tokens,
        sampling: a.sampling.params()?,
        stop_ids: m.tokenizer.stop_ids.clone(),
        logit_bias: a.sampling.logit_bias()?,
    };
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    let _ = write!(out, "> ");
    let _ = out.flush();
    for line in stdin.lock().lines() {
        let line = line.map_err(|e| Error::io("stdin", e))?;
        let line = line.trim();
        if line == "/reset" {
            messages.retain(|m| m.role == "system");
            session.reset(&mut baleen::engine::Ready(backend.as_mut()));
        } else if !line.is_empty() {
            messages.push(Message::new("user", line));
            let prompt = m.tokenizer.encode_chat_with(&messages, true, &template_args)?;
            let mut stream = m.tokenizer.stream();
            let mut reply = String::new();
            let result = session.generate(backend.as_mut(), &prompt, &params, |id| {
                if let Ok(piece) = stream.push(id) {
                    let _ = write!(out, "{piece}");
                    let _ = out.flush();
                    reply += &piece;
                }
                true
            });
            let (g, reused) = match result {
                Ok(r) => r,
                Err(e) => {
                    // The conversation stays usable: drop the turn, say why, go on.
                    eprintln!("\nerror: {e}\n(type /reset to start a new conversation)");
                    messages.pop();
                    let _ = write!(out, "> ");
                    let _ = out.flush();
                    continue;
                }
            };
            reply += &stream.finish()?;
            let _ = writeln!(out);
            params.sampling.seed = params.sampling.seed.wrapping_add(1);
            eprintln!(
                "\n[{} prompt tokens ({reused} cached), {} generated, {:.1} tok/s]",
                prompt.len(),
                g.tokens.len(),
                g.decode_tokens_per_s()
            );
            messages.push(Message::new("assistant", reply.trim()));
        }
        let _ = write!(out, "> ");
        let _ = out.flush();
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench(a: BenchArgs) -> Result<()> {
    if a.runs == 0 || a.prompt_tokens == 0 {
        return Err(Error::Input("--runs and --prompt-tokens must be at least 1".into()));
    }
    let m = ModelFiles::open(&a.model)?;
    // Concrete backends, so the GPU one can also be profiled after the runs.
    let (mut gpu_model, mut reference) = (None, None);
    let backend: &mut dyn Backend = match a.backend {
        BackendKind::Gpu => gpu_model.insert(load_gpu_model(&m, &a.kv)?),
        BackendKind::Reference => reference.insert(load_reference(&m, &a.kv)?),
    };
    let total = a.prompt_tokens.checked_add(a.gen_tokens).unwrap_or(usize::MAX);
    if total > backend.context_length() {
        return Err(Error::Input(format!(
            "--prompt-tokens + --gen-tokens ({total}) exceed the model's context ({})",
            backend.context_length()
        )));
    }
    // A fixed, ordinary token sequence (ids spread over the vocabulary).
    let vocab = backend.vocab() as u64;
    let prompt: Vec<u32> = (0..a.prompt_tokens as u64).map(|i| ((i * 7919 + 13) % vocab) as u32).collect();
    let params = GenerateParams {
        max_tokens: a.gen_tokens,
        sampling: SamplingParams::default(),
        stop_ids: Vec::new(), // never stop early: measure every step
        logit_bias: Vec::new(),
    };
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    for _ in 0..a.runs {
        backend.truncate(0);
        let g = generate(backend, &prompt, &params, |_| true)?;
        prefill.push(a.prompt_tokens as f64 / (g.prefill_ms / 1000.0));
        decode.push(g.decode_tokens_per_s());
    }
    let (adapter, backend_name) = backend.describe();
    let (gpu_bytes, context, expert_cache) = (backend.gpu_bytes(), backend.context_length(), backend.expert_cache());
    // At the runs' last step: the prompt and all but one generated token cached.
    let dispatches = gpu_model.as_ref().map(|g| g.dispatches_per_token(total - 1));
    let (p, d) = (median(prefill), median(decode));
    if let (Some(g), Some(v)) = (gpu_model.as_mut(), std::env::var_os("BALEEN_PROFILE")) {
        // Where a pass's time goes, by op kind (ms per pass): BALEEN_PROFILE=N
        // profiles a pass of N tokens after the prompt (1, or not a number: a
        // decode step).
        let n = v.to_str().and_then(|v| v.parse().ok()).unwrap_or(1);
        g.truncate(0);
        g.forward(&prompt, false)?;
        for (k, ms) in pollster::block_on(g.profile_by_kind(n, 5))? {
            eprintln!("{ms:8.2} ms  {k}");
        }
    }
    if a.json {
        let json = serde_json::json!({
            "model": m.name,
            "adapter": { "name": adapter, "backend": backend_name },
            "prompt_tokens": a.prompt_tokens,
            "gen_tokens": a.gen_tokens,
            "runs": a.runs,
            "context": context,
            "prefill_tokens_per_s": p,
            "decode_tokens_per_s": d,
            "peak_gpu_bytes": gpu_bytes,
            "dispatches_per_token": dispatches,
            "expert_cache": expert_cache,
        });
        writeln!(std::io::stdout(), "{json}").map_err(|e| Error::io("stdout", e))?;
    } else {
        let text = format!(
            "{} on {adapter} ({backend_name})\nprefill {p:.1} tok/s ({} tokens), decode {d:.1} tok/s ({} tokens), median of {}\n",
            m.name, a.prompt_tokens, a.gen_tokens, a.runs
        );
        std::io::stdout().write_all(text.as_bytes()).map_err(|e| Error::io("stdout", e))?;
    }
    Ok(())
}

fn bench_kernels(json: bool, bytes: u64, only: Option<&str>) -> Result<()> {
    let gpu = open_gpu()?;
    let r = baleen::gpu::bench::run(&gpu, bytes, only)?;
    let mut text = String::new();
    if json {
        text = serde_json::to_string(&r).map_err(|e| Error::Input(e.to_string()))? + "\n";
    } else {
        use std::fmt::Write as _;
        let _ = writeln!(text, "{} — copy {:.2} GB/s (median; each kernel is compared with the copy timed beside it)", r.adapter["name"].as_str().unwrap_or(""), r.copy_gbps);
        for k in &r.kernels {
            let flops = k.gflops.map(|g| format!("  {g:>8.2} GFLOP/s")).unwrap_or_default();
            let _ = writeln!(text, "  {:<22} {:<22} {:>7.2} GB/s  {:>5.2} of copy{flops}", k.name, k.shape, k.gbps, k.fraction_of_copy);
        }
    }
    std::io::stdout().write_all(text.as_bytes()).map_err(|e| Error::io("stdout", e))
}

/// One line per kernel family: its free flags and its choice groups.
fn shader_families() -> String {
    let mut out = String::new();
    for f in baleen_shaders::FAMILIES {
        out += &format!("  {:<16} {}\n", f.name, family_flags(f));
    }
    out + "  (any family: ENABLE_SUBGROUPS with SUBGROUPS adds `enable subgroups;`, as browsers need)"
}

/// A family's free flags and choice groups: "flags BIAS,ACC; one of F32|F16".
fn family_flags(f: &baleen_shaders::Family) -> String {
    let mut parts: Vec<String> = Vec::new();
    if !f.flags.is_empty() {
        parts.push(format!("flags {}", f.flags.join(",")));
    }
    parts.extend(f.choices.iter().map(|g| format!("one of {}", g.join("|"))));
    if parts.is_empty() {
        return "no flags".into();
    }
    parts.join("; ")
}

/// `baleen shader FAMILY --flags F1,F2`: the variant as `Gpu::pipeline`
/// builds it (specialised with the constants `consts` gives it); no family:
/// the list of families.
fn shader(family: Option<&str>, flags: &[String]) -> Result<()> {
    let Some(name) = family else {
        if !flags.is_empty() {
            return Err(Error::Input(format!("--flags needs a kernel family: baleen shader FAMILY --flags F1,F2,...\n{}", shader_families())));
        }
        let text = format!("kernel families (baleen shader FAMILY --flags F1,F2,...):\n{}\n", shader_families());
        return std::io::stdout().write_all(text.as_bytes()).map_err(|e| Error::io("stdout", e));
    };
    let family = baleen_shaders::FAMILIES.iter().find(|f| f.name == name).ok_or_else(|| {
        Error::Input(format!("no kernel family {name:?}; the families:\n{}", shader_families()))
    })?;
    let flags: Vec<&str> = flags.iter().map(|f| f.trim()).filter(|f| !f.is_empty()).collect();
    let source = baleen_shaders::specialise(family, &flags, &baleen_shaders::consts(family, &flags))
        .map_err(|e| Error::Input(format!("{e}\n{name} takes {} (--flags F1,F2,...)", family_flags(family))))?;
    std::io::stdout().write_all(source.as_bytes()).map_err(|e| Error::io("stdout", e))
}

fn inspect(path: &std::path::Path, json: bool) -> Result<()> {
    let i = baleen::inspect::Inspection::open(path)?;
    let text = if json { format!("{}\n", i.to_json()) } else { i.to_text() };
    std::io::stdout().write_all(text.as_bytes()).map_err(|e| Error::io("stdout", e))
}
