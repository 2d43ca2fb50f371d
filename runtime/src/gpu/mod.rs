//! The GPU engine: device setup, pipelines, buffers, and ops.
//!
//! bytes → index → **GPU buffers → graph** → tokens → text
//!
//! - [`Gpu`]: a device made from the adapter's own limits with no required
//!   feature; a pipeline cache keyed by [`PipelineKey`].
//! - [`weights`]: block formats repacked into u32-aligned layouts, split into
//!   row chunks that fit the binding limit.
//! - [`ops`]: one launcher per kernel family, each building an [`Op`]
//!   (pipeline + bind group, made once) that a pass encodes.
//! - [`model`]: a model's graph (`crate::model`) recorded into ops at load,
//!   and the [`Backend`](crate::engine::Backend) that runs them.

#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
pub mod model;
pub mod ops;
pub mod paging;
pub mod weights;

use crate::error::{Error, Result};
use baleen_shaders as shaders;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use wgpu::util::DeviceExt;

/// Per-pass parameters, one small uniform buffer every kernel reads
/// (mirrors `struct Step` in the WGSL).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Step {
    pub n_tokens: u32,
    pub pos: u32,
    pub seed_lo: u32,
    pub seed_hi: u32,
    pub draw: u32,
    pub top_k: u32,
    pub temperature: f32,
    pub top_p: f32,
    /// Entries of the penalised-token list (0: no penalties this step).
    pub n_penalized: u32,
    pub repetition: f32,
    pub frequency: f32,
    pub presence: f32,
    /// The sampler also reports log-probabilities: 1 + the alternatives (0: no).
    pub logprobs: u32,
    pub pad0: u32,
    pub pad1: u32,
    pub pad2: u32,
}

/// How matrix kernels spread a row over threads; chosen from the adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatmulShape {
    /// One thread per row: CPU adapters (lavapipe, SwiftShader), where
    /// barriers and workgroup memory cost more than they save.
    RowPerThread,
    /// One workgroup per row with a reduction: real GPUs.
    RowPerWorkgroup,
}

impl MatmulShape {
    /// The shape as a flag: embed.wgsl's, naming the layout its rows lie in
    /// (the matmul families take the shape from their file instead).
    pub fn flag(self) -> &'static str {
        match self {
            MatmulShape::RowPerThread => "ROW_PER_THREAD",
            MatmulShape::RowPerWorkgroup => "ROW_PER_WORKGROUP",
        }
    }

    /// Rows per group in the weight layout this shape's kernels read for a
    /// weight type (see `weights::Placement`).
    pub fn row_group(self, dtype: crate::quant::DType) -> u32 {
        shaders::row_group(self.flag(), dtype.name())
    }
}

/// A kernel family (one WGSL file of the shaders crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    Copy,
    /// The matmul family of a kernel shape (matmul_thread.wgsl,
    /// matmul_workgroup.wgsl).
    Matmul(MatmulShape),
    Embed,
    Norm,
    Rope,
    Attention,
    Elementwise,
    Sample,
    Moe,
    Mla,
}

impl Kernel {
    pub fn family(self) -> &'static shaders::Family {
        match self {
            Kernel::Copy => &shaders::COPY,
            Kernel::Matmul(MatmulShape::RowPerThread) => &shaders::MATMUL_THREAD,
            Kernel::Matmul(MatmulShape::RowPerWorkgroup) => &shaders::MATMUL_WORKGROUP,
            Kernel::Embed => &shaders::EMBED,
            Kernel::Norm => &shaders::NORM,
            Kernel::Rope => &shaders::ROPE,
            Kernel::Attention => &shaders::ATTENTION,
            Kernel::Elementwise => &shaders::ELEMENTWISE,
            Kernel::Sample => &shaders::SAMPLE,
            Kernel::Moe => &shaders::MOE,
            Kernel::Mla => &shaders::MLA,
        }
    }
}

/// One specialisation of a kernel family (a `#if` flag of its WGSL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flag {
    /// A weight format's layout (`Q4_1`, …).
    Format(crate::quant::DType),
    /// The kernel shape whose weight layout embed.wgsl reads.
    Shape(MatmulShape),
    Pairing(crate::config::RopePairing),
    Bias,
    Acc,
    Subgroups,
    /// `enable subgroups;`, which browsers require and naga rejects.
    EnableSubgroups,
    QuadTexture,
    /// A workgroup (not a thread) per row or token.
    Workgroup,
    HalfK,
    HalfKv,
    /// RoPE norms each q and k head first (Qwen3).
    QkNorm,
    /// GeGLU (tanh GELU) instead of SwiGLU.
    Gelu,
    Latent,
    SharedGate,
    Permuted,
    /// The routed experts' matmul reads an expert cache (`slot_of`).
    Paged,
}

impl Flag {
    /// The flag as the WGSL spells it.
    pub fn wgsl(self) -> &'static str {
        match self {
            Flag::Format(d) => d.name(),
            Flag::Shape(s) => s.flag(),
            Flag::Pairing(crate::config::RopePairing::Halves) => "HALVES",
            Flag::Pairing(crate::config::RopePairing::Adjacent) => "ADJACENT",
            Flag::Bias => "BIAS",
            Flag::Acc => "ACC",
            Flag::Subgroups => "SUBGROUPS",
            Flag::EnableSubgroups => "ENABLE_SUBGROUPS",
            Flag::QuadTexture => "QUAD_TEXTURE",
            Flag::Workgroup => "WORKGROUP",
            Flag::HalfK => "HALF_K",
            Flag::QkNorm => "QK_NORM",
            Flag::Gelu => "GELU",
            Flag::HalfKv => "HALF_KV",
            Flag::Latent => "LATENT",
            Flag::SharedGate => "SHARED_GATE",
            Flag::Permuted => "PERMUTED",
            Flag::Paged => "PAGED",
        }
    }
}

/// Identifies one compiled variant: family, entry point, flags.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PipelineKey {
    pub kernel: Kernel,
    pub entry: &'static str,
    pub flags: Vec<Flag>,
}

impl PipelineKey {
    pub fn new(kernel: Kernel, entry: &'static str, flags: Vec<Flag>) -> Self {
        PipelineKey { kernel, entry, flags }
    }

    /// The flags as the WGSL spells them.
    pub fn wgsl_flags(&self) -> Vec<&'static str> {
        self.flags.iter().map(|f| f.wgsl()).collect()
    }
}

#[derive(Debug, Clone)]
pub struct GpuOptions {
    /// Positions the KV cache holds. None: [`default_context`]'s choice.
    pub context: Option<usize>,
    /// Most tokens one pass (a prefill chunk) runs.
    pub max_pass_tokens: usize,
    /// Override the matrix kernel shape (tests run both).
    pub shape: Option<MatmulShape>,
    /// Pretend the binding limit is this small (tests of row-chunked tensors).
    pub max_binding: Option<u64>,
    /// Most bytes of one weight chunk held in memory while it uploads (in
    /// the browser, one download piece); chunks also keep within the
    /// binding limit. None: the binding limit alone.
    pub max_staging: Option<u64>,
    /// Use subgroup operations if the device has them (default: yes).
    pub subgroups: bool,
    /// Keep the KV cache in f16 (half the memory and attention reads); needs
    /// shader-f16. None: whenever the device has it.
    pub kv_f16: Option<bool>,
    /// Run a prefill pass's routed experts grouped by expert (each expert's
    /// weights read once per tile of its tokens) rather than per slot. None:
    /// the device's choice, [`Gpu::grouped_experts`] (tests run both).
    pub grouped_experts: Option<bool>,
    /// Put weights' quant planes in textures where the kernels read them so
    /// (see `weights::Placement`). None: the device's choice,
    /// [`Gpu::quad_textures`] (tests run both).
    pub quad_textures: Option<bool>,
    /// Test hook: multiply the named intermediate by this factor after
    /// the op that makes it (a kernel made wrong on purpose, which
    /// `baleen compare` must find).
    pub scale_output: Option<(String, f32)>,
    /// GPU bytes for the routed experts' weights (`--expert-cache`,
    /// `expertCacheBytes`): under their total, they are paged on demand
    /// from the weight file into a cache of this size (`paging`). None:
    /// every expert resident.
    pub expert_cache: Option<u64>,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            context: None,
            max_pass_tokens: 64,
            shape: None,
            max_binding: None,
            max_staging: None,
            subgroups: true,
            kv_f16: None,
            grouped_experts: None,
            quad_textures: None,
            scale_output: None,
            expert_cache: None,
        }
    }
}

/// The KV cache's default share of GPU memory: a context longer than
/// [`MIN_DEFAULT_CONTEXT`] is chosen unasked only while the whole cache stays
/// within it (a tab gets a few GiB of GPU memory, and the weights come first).
pub const DEFAULT_KV_BYTES: u64 = 1 << 30;
/// The context chosen unasked whatever the cache costs (the model's own if
/// shorter), as long as one layer's cache fits a binding.
pub const MIN_DEFAULT_CONTEXT: usize = 4096;

/// The positions a KV cache holds: `asked` (checked by
/// [`crate::config::ModelConfig::check_context`]), if it fits, else the
/// model's own length where the whole cache (`per_token` bytes a position,
/// all layers) stays within [`DEFAULT_KV_BYTES`], but at least
/// [`MIN_DEFAULT_CONTEXT`]. Either way at most `model` (the length it was
/// trained for) and `binding_fit` (one layer's cache is one binding).
pub fn choose_context(model: usize, asked: Option<usize>, binding_fit: usize, per_token: u64, max_binding: u64) -> Result<usize> {
    let most = model.min(binding_fit);
    if most == 0 {
        return Err(gpu_err(format!("one position of one layer's KV cache exceeds the GPU's binding limit of {max_binding} bytes")));
    }
    match asked {
        Some(n) if n > binding_fit => Err(Error::Unsupported(format!(
            "a context of {n} positions does not fit this GPU: each layer's KV cache is one binding of at most {max_binding} bytes, \
             which holds {binding_fit} positions; ask for at most {binding_fit} (an f16 cache, where the device has shader-f16, holds twice as many)"
        ))),
        Some(n) => Ok(n),
        None => {
            let in_budget = (DEFAULT_KV_BYTES / per_token.max(1)) as usize;
            Ok(most.min(in_budget.max(MIN_DEFAULT_CONTEXT)))
        }
    }
}

/// A device and its queue, with what the adapter offers.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    pub shape: MatmulShape,
    /// Prefill groups the routed experts by expert. GPUs read each expert's
    /// weights once per tile instead of once per token; CPU adapters are
    /// bound by arithmetic, not reads, and the tiles' padding only costs
    /// (lavapipe: per slot 1.5–2× faster at 6 slots per expert, equal at 48).
    pub grouped_experts: bool,
    /// Thread-per-row kernels read weights' quant planes from textures
    /// (see `weights::Placement`): CPU adapters fetch a texel for every lane
    /// at once, where a storage load is a loop over the lanes.
    pub quad_textures: bool,
    pipelines: Mutex<HashMap<PipelineKey, Arc<wgpu::ComputePipeline>>>,
    /// Errors reported outside an error scope, and device loss.
    failure: Arc<Mutex<Option<String>>>,
    /// The device was lost (its lost callback ran): nothing on it works again.
    lost: Arc<std::sync::atomic::AtomicBool>,
    /// Bytes of every buffer made through this `Gpu` (none is freed while a model lives).
    allocated: std::sync::atomic::AtomicU64,
}

fn gpu_err(msg: impl std::fmt::Display) -> Error {
    Error::Gpu(msg.to_string())
}

impl Gpu {
    /// The first adapter wgpu finds (high-performance preferred), with its
    /// own limits and whichever optional features it has.
    pub async fn new() -> Result<Gpu> {
        Self::with_subgroups(true).await
    }

    /// As [`Gpu::new`]; without `subgroups` the device leaves them out even
    /// where the adapter has them (for measuring the kernels that run where
    /// there are none, such as the browser's).
    pub async fn with_subgroups(subgroups: bool) -> Result<Gpu> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                gpu_err(format!(
                    "no GPU adapter found ({e}). Natively baleen needs Vulkan, Metal or DX12 \
                     (on Linux without a GPU: apt-get install mesa-vulkan-drivers); in a browser, WebGPU"
                ))
            })?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let offered = adapter.features();
        let mut features = offered & (wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP);
        if !subgroups {
            features.remove(wgpu::Features::SUBGROUP);
        }
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("baleen"),
                required_features: features,
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| gpu_err(format!("cannot open the GPU device {}: {e}", info.name)))?;
        let failure: Arc<Mutex<Option<String>>> = Arc::default();
        let f = failure.clone();
        device.on_uncaptured_error(Arc::new(move |e| {
            f.lock().unwrap().get_or_insert_with(|| e.to_string());
        }));
        let f = failure.clone();
        let lost: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let l = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            l.store(true, std::sync::atomic::Ordering::Relaxed);
            f.lock().unwrap().get_or_insert_with(|| {
                format!("the GPU device was lost ({reason:?}: {msg}); reload the model (a driver reset or a tab in the background can cause this)")
            });
        });
        let cpu = info.device_type == wgpu::DeviceType::Cpu;
        let shape = if cpu { MatmulShape::RowPerThread } else { MatmulShape::RowPerWorkgroup };
        Ok(Gpu {
            device,
            queue,
            info,
            limits,
            features,
            shape,
            grouped_experts: !cpu,
            quad_textures: true,
            pipelines: Mutex::default(),
            failure,
            lost,
            allocated: 0.into(),
        })
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking() -> Result<Gpu> {
        pollster::block_on(Self::new())
    }

    /// Bytes allocated on the device so far.
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn has_subgroups(&self) -> bool {
        self.features.contains(wgpu::Features::SUBGROUP)
    }

    pub fn has_f16(&self) -> bool {
        self.features.contains(wgpu::Features::SHADER_F16)
    }

    pub fn adapter_name(&self) -> String {
        // Browsers may hide the adapter's name.
        let name = if self.info.name.is_empty() { "unnamed adapter" } else { &self.info.name };
        format!("{name} ({:?})", self.info.device_type)
    }

    pub fn backend_name(&self) -> String {
        format!("{:?}", self.info.backend).to_lowercase()
    }

    /// Whether the device was lost (a driver reset, a destroyed device):
    /// the model must be loaded again on a new one.
    pub fn is_lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Fail if the device reported an error or was lost since the last check.
    pub fn check(&self) -> Result<()> {
        match self.failure.lock().unwrap().take() {
            Some(msg) => Err(gpu_err(msg)),
            None => Ok(()),
        }
    }

    /// The largest buffer one binding may see.
    pub fn max_binding(&self) -> u64 {
        (self.limits.max_storage_buffer_binding_size as u64).min(self.limits.max_buffer_size)
    }

    /// The compiled pipeline for a variant, built on first use.
    pub fn pipeline(&self, key: &PipelineKey) -> Result<Arc<wgpu::ComputePipeline>> {
        if let Some(p) = self.pipelines.lock().unwrap().get(key) {
            return Ok(p.clone());
        }
        let (family, flags) = (key.kernel.family(), key.wgsl_flags());
        // The variants the shaders crate enumerates (naga validates them,
        // the browser test compiles them) are all the launchers may ask for.
        if !shaders::reachable(family.name, &flags) {
            return Err(gpu_err(format!("kernel {}:{} {flags:?} is not among the enumerated variants (baleen_shaders::reachable)", family.name, key.entry)));
        }
        let source = shaders::specialise(family, &flags, &shaders::consts(family, &flags)).map_err(gpu_err)?;
        let label = format!("{}:{} {:?}", family.name, key.entry, flags);
        let pipeline = self
            .scoped(wgpu::ErrorFilter::Validation, || {
                let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(&label),
                    source: wgpu::ShaderSource::Wgsl(source.into()),
                });
                self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(&label),
                    layout: None,
                    module: &module,
                    entry_point: Some(key.entry),
                    compilation_options: Default::default(),
                    cache: None,
                })
            })
            .map_err(|e| gpu_err(format!("kernel {label} does not compile on {}: {e}", self.info.name)))?;
        let p = Arc::new(pipeline);
        self.pipelines.lock().unwrap().insert(key.clone(), p.clone());
        Ok(p)
    }

    /// A storage buffer holding `bytes` (padded to 4).
    pub fn storage_init(&self, label: &str, bytes: &[u8]) -> Result<wgpu::Buffer> {
        self.checked_alloc(label, bytes.len() as u64, || {
            let mut padded;
            let contents = if bytes.len() % 4 != 0 || bytes.is_empty() {
                padded = bytes.to_vec();
                padded.resize(bytes.len().div_ceil(4).max(1) * 4, 0);
                &padded[..]
            } else {
                bytes
            };
            self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            })
        })
    }

    /// An Rgba32Uint texture of `width` × `height` texels holding `bytes`
    /// (16 a texel, row after row), as the view a shader binds.
    pub fn texture_init(&self, label: &str, width: u32, height: u32, bytes: &[u8]) -> Result<wgpu::TextureView> {
        let side = self.limits.max_texture_dimension_2d;
        if width == 0 || height == 0 || width > side || height > side || bytes.len() as u64 != width as u64 * height as u64 * 16 {
            return Err(gpu_err(format!(
                "{label}: {} bytes do not make a {width} × {height} texture of 16-byte texels ({} allows {side} a side)",
                bytes.len(),
                self.info.name
            )));
        }
        let size = wgpu::Extent3d { width, height, depth_or_array_layers: 1 };
        let texture = self.allocate(label, bytes.len() as u64, || {
            self.device.create_texture(&wgpu::TextureDescriptor {
                label: Some(label),
                size,
                mip_level_count: 1,
                sample_count: 1,
                dimension: wgpu::TextureDimension::D2,
                format: wgpu::TextureFormat::Rgba32Uint,
                usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
                view_formats: &[],
            })
        })?;
        self.queue.write_texture(
            wgpu::TexelCopyTextureInfo { texture: &texture, mip_level: 0, origin: wgpu::Origin3d::ZERO, aspect: wgpu::TextureAspect::All },
            bytes,
            wgpu::TexelCopyBufferLayout { offset: 0, bytes_per_row: Some(width * 16), rows_per_image: Some(height) },
            size,
        );
        Ok(texture.create_view(&wgpu::TextureViewDescriptor::default()))
    }

    /// A zeroed storage buffer of `size` bytes.
    pub fn storage(&self, label: &str, size: u64) -> Result<wgpu::Buffer> {
        self.checked_alloc(label, size, || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: size.div_ceil(4).max(1) * 4,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            })
        })
    }

    pub fn uniform(&self, label: &str, bytes: &[u8]) -> wgpu::Buffer {
        self.allocated.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytes,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        })
    }

    fn checked_alloc(&self, label: &str, size: u64, make: impl FnOnce() -> wgpu::Buffer) -> Result<wgpu::Buffer> {
        if size > self.limits.max_buffer_size {
            return Err(gpu_err(format!(
                "{label} needs a {size}-byte buffer; {} allows {} bytes",
                self.info.name, self.limits.max_buffer_size
            )));
        }
        self.allocate(label, size, make)
    }

    /// Make a `size`-byte allocation (`make`: a buffer or a texture),
    /// counted in [`Gpu::allocated_bytes`], out of memory an error.
    fn allocate<T>(&self, label: &str, size: u64, make: impl FnOnce() -> T) -> Result<T> {
        self.allocated.fetch_add(size, std::sync::atomic::Ordering::Relaxed);
        self.scoped(wgpu::ErrorFilter::OutOfMemory, make).map_err(|e| {
            gpu_err(format!(
                "out of GPU memory allocating {label} ({size} bytes): {e}. Try a smaller model or quantisation, \
                 or a shorter context"
            ))
        })
    }

    /// Run `make` inside an error scope and report what it caught. Natively
    /// the scope is awaited at once; in the browser it resolves on the event
    /// loop, so errors there surface through [`Gpu::check`] instead.
    fn scoped<T>(&self, filter: wgpu::ErrorFilter, make: impl FnOnce() -> T) -> std::result::Result<T, String> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let scope = self.device.push_error_scope(filter);
            let value = make();
            match pollster::block_on(scope.pop()) {
                Some(e) => Err(e.to_string()),
                None => Ok(value),
            }
        }
        #[cfg(target_arch = "wasm32")]
        {
            let _ = filter;
            Ok(make())
        }
    }

    /// Copy `size` bytes of `src` at `offset` back to the CPU. The returned
    /// future resolves when the GPU has finished: in the browser, await it;
    /// natively, [`Gpu::read`] drives the device to completion.
    pub fn read_async(&self, src: &wgpu::Buffer, offset: u64, size: u64) -> impl std::future::Future<Output = Result<Vec<u8>>> {
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(src, offset, &staging, 0, size);
        self.queue.submit([enc.finish()]);
        let mapped = Mapped::default();
        let m = mapped.clone();
        staging.map_async(wgpu::MapMode::Read, .., move |r| m.finish(r));
        async move {
            match mapped.await {
                Ok(()) => {}
                Err(e) => return Err(gpu_err(format!("reading a GPU buffer back failed: {e}"))),
            }
            let bytes = staging.get_mapped_range(..).map_err(|e| gpu_err(format!("{e:?}")))?.to_vec();
            staging.unmap();
            Ok(bytes)
        }
    }

    /// [`Gpu::read_async`], blocking until the GPU is done (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read(&self, src: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        let fut = self.read_async(src, offset, size);
        self.device
            .poll(wgpu::PollType::Wait { submission_index: None, timeout: None })
            .map_err(|e| gpu_err(format!("waiting for the GPU: {e}")))?;
        self.check()?;
        pollster::block_on(fut)
    }

    /// Encode `ops` into one command buffer with `step` as the pass parameters
    /// and submit it.
    pub fn run(&self, step_buf: &wgpu::Buffer, step: &Step, ops: &[&Op]) -> Result<()> {
        self.check()?;
        self.queue.write_buffer(step_buf, 0, bytemuck::bytes_of(step));
        let mut enc = self.device.create_command_encoder(&Default::default());
        encode(&mut enc, step, ops);
        self.queue.submit([enc.finish()]);
        Ok(())
    }
}

/// Encode ops into one compute pass.
pub fn encode(enc: &mut wgpu::CommandEncoder, step: &Step, ops: &[&Op]) {
    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("baleen"), timestamp_writes: None });
    dispatch(&mut pass, step, ops);
}

/// A named intermediate: `buf` holds its value (`width` values a row, the
/// pass's last token's row, or row 0 when `single`) once the first `at`
/// ops of its list have run.
pub struct Mark {
    pub at: usize,
    pub name: String,
    pub buf: wgpu::Buffer,
    pub width: u32,
    pub single: bool,
}

/// Encode `ops` as [`encode`] does, copying each mark's row into `dump`
/// from byte `offset` on, one after another, as the op before it finishes.
/// Returns the offset past the last row.
pub fn encode_keeping(enc: &mut wgpu::CommandEncoder, step: &Step, ops: &[&Op], marks: &[Mark], dump: &wgpu::Buffer, mut offset: u64) -> u64 {
    let mut done = 0;
    for m in marks {
        if m.at > done {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("baleen"), timestamp_writes: None });
            dispatch(&mut pass, step, &ops[done..m.at]);
            done = m.at;
        }
        let bytes = m.width as u64 * 4;
        let row = if m.single { 0 } else { step.n_tokens.saturating_sub(1) as u64 };
        enc.copy_buffer_to_buffer(&m.buf, row * bytes, dump, offset, bytes);
        offset += bytes;
    }
    if done < ops.len() {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("baleen"), timestamp_writes: None });
        dispatch(&mut pass, step, &ops[done..]);
    }
    offset
}

fn dispatch(pass: &mut wgpu::ComputePass<'_>, step: &Step, ops: &[&Op]) {
    for op in ops.iter().filter(|op| op.dispatches(step)) {
        let [x, y, z] = op.grid.workgroups(step);
        pass.set_pipeline(&op.pipeline);
        pass.set_bind_group(0, &op.bind_group, &[]);
        pass.dispatch_workgroups(x, y, z);
    }
}

/// How many workgroups an op launches, given the pass.
#[derive(Debug, Clone, Copy)]
pub enum Grid {
    Fixed([u32; 3]),
    /// `x` threads of groups of `wg` along x for each token (y), e.g. matmul
    /// rows (with `tile` tokens per invocation) or embedding sub-blocks.
    /// With one token (`single`, or a pass of one), each thread takes
    /// `shared_rows` of the `x` (the thread-per-row matmul).
    PerToken { x: u32, wg: u32, tile: u32, single: bool, shared_rows: u32 },
    /// `x` threads (groups of `wg`) for each of a token's `slots_per_token`
    /// expert slots (y): the routed experts' matmul.
    PerSlot { x: u32, wg: u32, slots_per_token: u32 },
    /// `x` threads (groups of `wg`) for each tile of the grouped experts'
    /// matmul (y): [`expert_tiles`] of the pass's slots.
    ExpertTiles { x: u32, wg: u32, slots_per_token: u32, experts: u32 },
    /// A flat range of `per_row` threads for every row of those tiles
    /// (`TILE_T` rows each).
    TileRows { per_row: u32, wg: u32, slots_per_token: u32, experts: u32 },
    /// A flat range of `n_tokens · per_token` threads, spread over x and y.
    Flat { per_token: u32, wg: u32 },
    /// Attention splits: a flat range over (token, head, split), `per_item`
    /// threads each.
    AttnPartial { heads: u32, wg: u32, split: u32, per_item: u32, window: u32 },
    /// Attention combine: (head dim, heads, tokens).
    AttnCombine { heads: u32, head_dim: u32, wg: u32 },
}

const MAX_GROUPS: u32 = 65535;

/// `threads` threads in groups of `wg`, spread over x and y.
pub(super) fn flat(threads: u32, wg: u32) -> [u32; 3] {
    let groups = threads.div_ceil(wg);
    let gx = groups.min(MAX_GROUPS);
    [gx, groups.div_ceil(gx.max(1)), 1]
}

/// Most tiles of at most `TILE_T` slots of one expert that `slots` slots
/// over `experts` experts can need: every expert adds at most one part tile.
pub fn expert_tiles(slots: u32, experts: u32) -> u32 {
    slots.div_ceil(shaders::shape::TILE_T) + experts.min(slots)
}

impl Grid {
    pub fn workgroups(&self, s: &Step) -> [u32; 3] {
        let n = s.n_tokens;
        match *self {
            Grid::Fixed(g) => g,
            Grid::PerToken { x, wg, tile, single, shared_rows } => {
                let tokens = if single { 1 } else { n };
                let x = if tokens == 1 { x.div_ceil(shared_rows) } else { x };
                [x.div_ceil(wg), tokens.div_ceil(tile), 1]
            }
            Grid::PerSlot { x, wg, slots_per_token } => [x.div_ceil(wg), n * slots_per_token, 1],
            Grid::ExpertTiles { x, wg, slots_per_token, experts } => [x.div_ceil(wg), expert_tiles(n * slots_per_token, experts), 1],
            Grid::Flat { per_token, wg } => flat(n * per_token, wg),
            Grid::TileRows { per_row, wg, slots_per_token, experts } => {
                flat(expert_tiles(n * slots_per_token, experts) * shaders::shape::TILE_T * per_row, wg)
            }
            Grid::AttnPartial { heads, wg, split, per_item, window } => flat(attention_splits(s.pos, n, split, window) * heads * n * per_item, wg),
            Grid::AttnCombine { heads, head_dim, wg } => [head_dim.div_ceil(wg), heads, n],
        }
    }
}

/// One dispatch: pipeline, bind group (both made once), its grid, and the
/// passes it runs in.
pub struct Op {
    pub name: String,
    pub pipeline: Arc<wgpu::ComputePipeline>,
    pub bind_group: wgpu::BindGroup,
    pub grid: Grid,
    pub passes: Passes,
}

impl Op {
    /// The op, run only in `passes`.
    pub fn only(self, passes: Passes) -> Op {
        Op { passes, ..self }
    }

    /// Whether a pass of `step` dispatches this op (it runs in such passes
    /// and launches some workgroups).
    pub fn dispatches(&self, step: &Step) -> bool {
        self.passes.runs(step) && self.grid.workgroups(step).iter().all(|&n| n > 0)
    }
}

/// Which passes an op runs in. The routed experts run per slot in passes of
/// one token (decode) and grouped by expert in passes of several (prefill).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Passes {
    #[default]
    All,
    Single,
    Multi,
    /// Only when the pass's attention has more than one split (of `split`
    /// positions; `window`: a sliding window's, 0 none): attention's
    /// combining of its splits.
    AttnSplits { split: u32, window: u32 },
    /// Only when the step has penalised tokens.
    Penalized,
}

/// The splits of `split` positions a pass of `n` tokens at `pos` attends
/// over: from the one holding its first token's first visible position
/// (0, or the oldest in a `window`) to the one holding its last token.
/// attention.wgsl's `n_splits` is the same.
pub fn attention_splits(pos: u32, n: u32, split: u32, window: u32) -> u32 {
    let first = if window > 0 { (pos + 1).saturating_sub(window) } else { 0 };
    (pos + n).div_ceil(split) - first / split
}

impl Passes {
    pub fn runs(self, step: &Step) -> bool {
        match self {
            Passes::All => true,
            Passes::Single => step.n_tokens == 1,
            Passes::Multi => step.n_tokens > 1,
            Passes::AttnSplits { split, window } => attention_splits(step.pos, step.n_tokens, split, window) > 1,
            Passes::Penalized => step.n_penalized > 0,
        }
    }
}

/// The completion of a `map_async`, as a future (no executor assumed: the
/// callback wakes whoever awaits).
#[derive(Clone, Default)]
struct Mapped(Arc<Mutex<MappedState>>);

#[derive(Default)]
struct MappedState {
    result: Option<std::result::Result<(), wgpu::BufferAsyncError>>,
    waker: Option<std::task::Waker>,
}

impl Mapped {
    fn finish(&self, r: std::result::Result<(), wgpu::BufferAsyncError>) {
        let mut st = self.0.lock().unwrap();
        st.result = Some(r);
        if let Some(w) = st.waker.take() {
            w.wake();
        }
    }
}

impl std::future::Future for Mapped {
    type Output = std::result::Result<(), wgpu::BufferAsyncError>;
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let mut st = self.0.lock().unwrap();
        match st.result.take() {
            Some(r) => std::task::Poll::Ready(r),
            None => {
                st.waker = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        }
    }
}
