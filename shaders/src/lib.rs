//! baleen's WGSL kernels: one file per kernel family, specialised by a tiny
//! preprocessor so each variant is a plain WGSL module.
//!
//! Specialisation has two parts, both produced from Rust values so the Rust
//! launch code and the WGSL loops can never disagree:
//! - **flags** select code between `#if FLAG` / `#if !FLAG` / `#else` / `#endif`
//!   lines, nested; a condition may join terms with `||` (`#if !A || B`);
//! - **constants** are emitted as `const NAME: u32 = V;` (or `: f32`) ahead of
//!   the body, so workgroup sizes and tile sizes are WGSL constants.
//!
//! `enable f16;` (any `HALF_*` flag) and `enable subgroups;` (flags `SUBGROUPS` and
//! `ENABLE_SUBGROUPS`, the latter for browsers only) go first, as WGSL requires.
//!
//! A loop bounded by a uniform value that is small (≤ 32 iterations) is a
//! trap on Mesa 22.3's lavapipe (Debian 12, our CI): it inlines the value,
//! unrolls, and compiles the shader again at every dispatch (3 ms each).
//! Such bounds go through `min(v, arrayLength(&buffer))` (see moe.wgsl); a
//! `BALEEN_PROFILE=1` op costing milliseconds for little work is the symptom.
//!
//! Lavapipe also ends all of an invocation's loops, silently, once they have
//! run 65535 iterations together (gallivm's LP_MAX_TGSI_LOOP_ITERATIONS): a
//! long loop there returns a wrong result, not an error. Kernels for CPU
//! adapters keep under half of that (`gpu::ops::CPU_LOOP_BUDGET`: attention
//! sizes its splits by it, sampling scans eight logits per iteration).
//!
//! What a storage load costs on lavapipe (measured, and read in Mesa 22.3's
//! gallivm): an address that is not a constant or push constant, or made
//! only from those, is loaded by a loop over the SIMD lanes, one 32-bit
//! word per lane at a time, each behind a branch. A loop counter, a
//! workgroup id, a uniform-buffer value: all count as per-lane. So on CPU
//! adapters a kernel's speed follows the words each thread loads, and where
//! they lie: thread per row reads weights laid out in groups of 8 rows, so
//! the lanes' loads of one step fall side by side (`row_group`; rows whole,
//! each lane reading its own distant stream, were 10-20% slower, and rows
//! interleaved across the whole matrix 2-3x slower), a subgroup shares x
//! (matmul_thread.wgsl), and no lane should idle (attention.wgsl's flat grid).
//! A texel fetch is no such loop: gallivm gathers every lane's texel at
//! once. So thread per row reads quantised weights from textures where the
//! device allows (`QUAD_TEXTURE`; runtime/src/gpu/weights.rs).

pub mod kernels;

/// A kernel family: its name and WGSL text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Family {
    pub name: &'static str,
    pub source: &'static str,
    /// Every flag a variant may set, for enumerating them (the file may
    /// test more: matmul_workgroup.wgsl's fragments test QUAD_TEXTURE,
    /// which only thread per row sets).
    pub flags: &'static [&'static str],
    /// Flags that are mutually exclusive choices (one of each group is set).
    pub choices: &'static [&'static [&'static str]],
}

macro_rules! family {
    ($name:literal, flags: [$($f:literal),*], choices: [$($c:expr),*]) => {
        Family {
            name: $name,
            source: include_str!(concat!("../wgsl/", $name, ".wgsl")),
            flags: &[$($f),*],
            choices: &[$($c),*],
        }
    };
}

pub mod formats;
pub use formats::{block_layout, BlockFormat, BlockLayout, GpuBlock, ThreadRows, FORMATS, WEIGHT_FORMATS};

/// The matrix kernels' shapes (the runtime's `MatmulShape`), as flags:
/// the layouts of a weight's rows that each shape reads (`row_group`).
const MATMUL_SHAPES: &[&str] = &["ROW_PER_THREAD", "ROW_PER_WORKGROUP"];

pub const COPY: Family = family!("copy", flags: [], choices: []);
// The matmul is two families, one per kernel shape (ARCHITECTURE.md, "Two
// kernel shapes"), sharing matmul_common.wgsl: the shape is the file, not a
// flag. Weights lie in textures only for thread per row.
pub const MATMUL_THREAD: Family = family!("matmul_thread",
    flags: ["BIAS", "ACC", "SUBGROUPS", "QUAD_TEXTURE", "PAGED"],
    choices: [WEIGHT_FORMATS]);
pub const MATMUL_WORKGROUP: Family = family!("matmul_workgroup",
    flags: ["BIAS", "ACC", "SUBGROUPS", "PAGED"],
    choices: [WEIGHT_FORMATS]);
// The embedding's shape flag names the layout of its rows: the one the
// matmul of that shape reads (a tied LM head reads the same matrix).
pub const EMBED: Family = family!("embed",
    flags: ["QUAD_TEXTURE"],
    choices: [WEIGHT_FORMATS, MATMUL_SHAPES]);
pub const NORM: Family = family!("norm", flags: ["WORKGROUP", "ACC"], choices: []);
pub const ROPE: Family = family!("rope", flags: ["HALF_K", "QK_NORM"], choices: [&["HALVES", "ADJACENT"]]);
pub const ATTENTION: Family = family!("attention", flags: ["HALF_KV", "LATENT", "SUBGROUPS", "WORKGROUP"], choices: []);
pub const ELEMENTWISE: Family = family!("elementwise", flags: ["GELU"], choices: []);
pub const SAMPLE: Family = family!("sample", flags: [], choices: []);
pub const MOE: Family = family!("moe", flags: ["BIAS", "SHARED_GATE", "PERMUTED"], choices: []);
pub const MLA: Family = family!("mla", flags: ["WORKGROUP"], choices: [&["HALVES", "ADJACENT"]]);

pub const FAMILIES: &[Family] = &[COPY, MATMUL_THREAD, MATMUL_WORKGROUP, EMBED, NORM, ROPE, ATTENTION, ELEMENTWISE, SAMPLE, MOE, MLA];

/// Fragments pulled in by `#include NAME` (processed with the includer's flags).
const FRAGMENTS: &[(&str, &str)] = &[
    ("block_units", include_str!("../wgsl/block_units.wgsl")),
    ("cos_sin", include_str!("../wgsl/cos_sin.wgsl")),
    ("dequant", include_str!("../wgsl/dequant.wgsl")),
    ("dequant_body", include_str!("../wgsl/dequant_body.wgsl")),
    ("dequant_block", include_str!("../wgsl/dequant_block.wgsl")),
    ("kquant_values", include_str!("../wgsl/kquant_values.wgsl")),
    ("matmul_common", include_str!("../wgsl/matmul_common.wgsl")),
    ("step", include_str!("../wgsl/step.wgsl")),
    ("workgroup_reduce", include_str!("../wgsl/workgroup_reduce.wgsl")),
];

/// The arguments of `NAME(a, b, …);` split at top-level commas, if `line` is such a call.
fn macro_args<'a>(line: &'a str, name: &str) -> Option<Vec<&'a str>> {
    let inner = line.trim().strip_prefix(name)?.strip_prefix('(')?.strip_suffix(");")?;
    let (mut args, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, ch) in inner.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                args.push(inner[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    args.push(inner[start..].trim());
    Some(args)
}

/// Rewrite the value lines of dequant_body.wgsl for an include mode:
/// `EMIT(i, expr);` (values i·4 … i·4 + 3 of a sub-block), `EMIT_SCALED(i, q,
/// s, d, m);` (the values q·s·d + m, s a constant power-of-two scale per
/// component) and `EMIT_DONE(d, m);` (after a sub-block's last EMIT_SCALED;
/// `EMIT_DONE(d, m, a, b);` after EMITs a … b, where a sub-block's parts
/// have their own d and m, as Q6_K's halves). The thread-per-row dot
/// products (`dot_sg`, `dot_regs`) keep EMIT_SCALED's scales apart: they sum
/// q · (x·s) (into `accq`) and apply d and m once per sub-block or part, as
/// d·Σ q(x·s) + m·Σx, with x·s and Σx the same for all of a thread's rows
/// (held in registers; in `dot_sg`, the same broadcasts for every row, which
/// the compiler computes once when it unrolls the rows)
/// (on lavapipe, decode GEMV of copy Q4_0 0.46 → 0.52, Q4_K 0.54 → 0.60:
/// BENCHMARKS.md, session 8); every other mode takes the value itself.
fn emit(line: &str, mode: &str) -> Result<String, String> {
    // `MODE_unit`: as MODE, a block's scale words taken from the texels its
    // unit of 4 blocks fetched (`unit_sword(i)`, i the block's place in the
    // unit: weights in textures, matmul_thread.wgsl).
    if let Some(base) = mode.strip_suffix("_unit") {
        return emit(&line.replace("sword(b)", "unit_sword(i)"), base);
    }
    let t = line.trim();
    let malformed = || format!("malformed {t}");
    // (`s` 1: no scale; `m` 0: no offset.)
    if let Some(a) = macro_args(t, "EMIT_SCALED") {
        let [i, q, s, d, m] = a[..] else { return Err(malformed()) };
        if mode == "dot_sg" {
            let x = if s == "1" { format!("subgroupBroadcast(x4, {i}u)") } else { format!("subgroupBroadcast(x4, {i}u) * {s}") };
            return Ok(format!("    accq += dot({q}, {x});"));
        }
        // `dot_regs`: x held pre-scaled by BYTE_SCALE (`x4.scaled`), or as is for s 1.
        if mode == "dot_regs" {
            let x = match s {
                "BYTE_SCALE" => format!("x4.scaled.v{i}"),
                "1" => format!("x4.v.v{i}"),
                _ => return Err(format!("{t}: dot_regs holds x scaled by BYTE_SCALE only")),
            };
            return Ok(format!("    accq += dot({q}, {x});"));
        }
        let value = if s == "1" { format!("{q} * {d}") } else { format!("{q} * ({s} * {d})") };
        let value = if m == "0" { value } else { format!("{value} + {m}") };
        return emit(&format!("EMIT({i}, {value});"), mode);
    }
    if let Some(a) = macro_args(t, "EMIT_DONE") {
        let (d, m, range) = match a[..] {
            [d, m] => (d, m, 0..=7),
            [d, m, first, last] => {
                let n = |v: &str| v.parse::<u32>().ok().filter(|&v| v < 8).ok_or_else(malformed);
                (d, m, n(first)?..=n(last)?)
            }
            _ => return Err(malformed()),
        };
        if mode != "dot_sg" && mode != "dot_regs" {
            return Ok(String::new());
        }
        // Σx over the EMITs done: the whole sub-block's is kept (`sub_xsum`,
        // `x4.sum`), a part's summed here.
        let xsum = match (mode, range == (0..=7)) {
            ("dot_sg", true) => "sub_xsum(x4)".to_string(),
            ("dot_sg", false) => range.map(|i| format!("subgroupBroadcast(x4, {i}u)")).collect::<Vec<_>>().join(" + "),
            (_, true) => "x4.sum".to_string(),
            (_, false) => range.map(|i| format!("x4.v.v{i}")).collect::<Vec<_>>().join(" + "),
        };
        let xsum = if xsum.contains(" + ") { format!("dot({xsum}, vec4<f32>(1.0))") } else { xsum };
        let offset = if m == "0" { String::new() } else { format!(" + {m} * {xsum}") };
        return Ok(format!("    acc += {d} * accq{offset};\n    accq = 0.0;"));
    }
    let Some(rest) = t.strip_prefix("EMIT(").and_then(|r| r.strip_suffix(");")) else {
        return Ok(line.to_string());
    };
    let (i, expr) = rest.split_once(", ").ok_or_else(malformed)?;
    let i: u32 = i.parse().map_err(|_| malformed())?;
    Ok(match mode {
        "store" => format!("    r.v{i} = {expr};"),
        "dot" => format!("    acc += dot({expr}, x[x4 + {i}u]);"),
        // `_sg`: x shared across the subgroup, lane l holding vec4 l of the
        // sub-block: `x4` for `dot_sg`, `xl.v<j>` (token j) for `tile*_sg`.
        "dot_sg" => format!("    acc += dot({expr}, subgroupBroadcast(x4, {i}u));"),
        // `dot_regs`: the sub-block's x already in registers (`x4.v`).
        "dot_regs" => format!("    acc += dot({expr}, x4.v.v{i});"),
        // `tile`: 8 tokens; `tile4`, `tile2`: the first 4 or 2 of them.
        "tile" | "tile4" | "tile2" | "tile_sg" | "tile4_sg" | "tile2_sg" => {
            let (base, shared) = match mode.strip_suffix("_sg") {
                Some(b) => (b, true),
                None => (mode, false),
            };
            let n = base.strip_prefix("tile").and_then(|n| n.parse().ok()).unwrap_or(8);
            let mut s = format!("    {{\n        let wv = {expr};\n");
            for j in 0..n {
                let xv = if shared { format!("subgroupBroadcast(xl.v{j}, {i}u)") } else { format!("x[xb + {j}u * xs + {i}u]") };
                s += &format!("        (*tile).a{j} += dot(wv, {xv});\n");
            }
            s + "    }"
        }
        m => return Err(format!("unknown include mode {m}")),
    })
}

/// Expand `#include NAME [MODE]` lines, recursively (a few levels).
fn expand(family: &str, text: &str, mode: Option<&str>, depth: u32, out: &mut Vec<String>) -> Result<(), String> {
    if depth > 4 {
        return Err(format!("{family}.wgsl: includes nested too deep"));
    }
    for line in text.lines() {
        match line.trim().strip_prefix("#include ") {
            Some(args) => {
                let mut it = args.split_whitespace();
                let name = it.next().unwrap_or("");
                let (_, frag) = FRAGMENTS
                    .iter()
                    .find(|(n, _)| *n == name)
                    .ok_or(format!("{family}.wgsl: unknown include {name}"))?;
                // A nested include without a mode takes its includer's.
                expand(family, frag, it.next().or(mode), depth + 1, out)?;
            }
            None => match mode {
                Some(m) => out.push(emit(line, m)?),
                None => out.push(line.to_string()),
            },
        }
    }
    Ok(())
}

/// The numbers that shape kernels. The runtime's launch code reads these same
/// constants, and `consts` passes them into the WGSL, so the two always agree.
pub mod shape {
    /// Threads per workgroup of the thread-per-row matmul with subgroups
    /// (see `thread_wg`).
    pub const MATMUL_WG_THREAD: u32 = 16;
    /// The same without subgroups.
    pub const MATMUL_WG_THREAD_PLAIN: u32 = 8;
    /// Rows one thread computes in a single-token thread-per-row matmul,
    /// each x load shared by all of them (see `shared_rows`): with subgroups
    /// (x shared across the lanes too) for 32-value blocks and for the
    /// K-quants' 256, and without (the browser: SwiftShader decodes SmolLM2
    /// at 3.4 tok/s with 4, 4.0 with 8, 4.3-4.4 with 16).
    pub const MATMUL_SHARED_ROWS: u32 = 2;
    pub const MATMUL_SHARED_ROWS_K: u32 = 8;
    pub const MATMUL_SHARED_ROWS_PLAIN: u32 = 16;
    /// With subgroups and weights in textures (the quantised formats), each
    /// sub-block's x broadcast into registers once for all of them
    /// (lavapipe, decode GEMV of copy with 8 → 16: Q4_K 0.82 → 0.91, Q6_K
    /// 0.67 → 0.85).
    pub const MATMUL_SHARED_ROWS_TEXTURES: u32 = 16;
    /// Rows interleaved per group in the weight layout the thread-per-row
    /// matmul reads for most formats (see `row_group`): a subgroup's lanes
    /// on CPU adapters.
    pub const ROW_GROUP_THREAD: u32 = 8;
    /// Rows side by side in a weight texture (a band: see dequant.wgsl):
    /// at most half the 8192 texels a side WebGPU guarantees.
    pub const TEXTURE_ROWS: u32 = 4096;
    /// Threads sharing one row in the workgroup-per-row matmul.
    pub const MATMUL_WG_GROUP: u32 = 64;
    /// Tokens one matmul invocation computes (prefill), reusing each dequantised sub-block.
    pub const TILE_T: u32 = 8;
    /// The tiled GEMM (workgroup-per-row shape, passes of several tokens):
    /// rows and tokens of one workgroup's tile, and its threads (4 × 4 each).
    pub const GEMM_ROWS: u32 = 64;
    pub const GEMM_TOKENS: u32 = 64;
    pub const GEMM_WG: u32 = 256;
    /// Rows and tokens one thread computes in the thread-per-row GEMM with
    /// subgroups (CPU adapters).
    pub const LANE_TILE: u32 = 4;
    pub const ELEMENTWISE_WG: u32 = 64;
    pub const ATTENTION_WG: u32 = 32;
    /// Longest head the attention kernel's private accumulator holds.
    pub const MAX_HEAD_DIM: u32 = 256;
    /// Longest latent (`kv_lora_rank`) the MLA attention accumulator holds (DeepSeek-V2/V3: 512).
    pub const MAX_LATENT_RANK: u32 = 512;
    /// Positions one attention split covers on GPUs (a thread each).
    pub const ATTENTION_SPLIT: u32 = 64;
    /// Positions one split covers on CPU adapters, which need no more
    /// parallelism than their cores: a chat's context usually fits one
    /// split, and then attention needs no combining pass.
    pub const ATTENTION_SPLIT_CPU: u32 = 512;
    /// Elements of a head each lane holds in the subgroup attention, in
    /// chunks of 8 (heads up to 128 wide in a subgroup of 8).
    pub const ATTENTION_SG_DIMS: u32 = 16;
    pub const SAMPLE_WG: u32 = 256;
    /// Sampling considers at most this many of the most likely tokens (CPU and GPU alike).
    pub const MAX_CANDIDATES: u32 = 256;
    /// The most distinct tokens the penalties apply to in one step (the
    /// longest penalty window).
    pub const MAX_PENALIZED: u32 = 4096;
    pub const COPY_WG: u32 = 64;
    /// Most expert groups in group-limited routing (one bit each).
    pub const MAX_EXPERT_GROUPS: u32 = 32;
}

/// Rows per interleaved group in the weight layout that a matmul shape
/// (its flag, `ROW_PER_THREAD` or `ROW_PER_WORKGROUP`) reads for a weight
/// format: quad k of a group's rows side by side, then quad k + 1
/// (dequant.wgsl). Workgroup per row (GPUs) keeps rows whole, so a
/// workgroup's threads read one row's quads side by side. Thread per row
/// (CPU adapters) groups a subgroup's worth, so the lanes' loads, one row
/// each, fall in one place, for the formats where that measured faster
/// (the table's [`ThreadRows`]).
pub fn row_group(shape_flag: &str, format: &str) -> u32 {
    let whole = formats::format(format).and_then(|f| f.gpu).is_some_and(|g| g.thread_rows == ThreadRows::Whole);
    if shape_flag == "ROW_PER_THREAD" && !whole {
        shape::ROW_GROUP_THREAD
    } else {
        1
    }
}

/// Rows a thread of the single-token thread-per-row matmul computes, with
/// or without subgroups, for a weight format. With subgroups each lane loads
/// a vec4 of every sub-block's x, a whole block's before the rows: for the
/// K-quants eight loads, which sharing across 8 rows pays for (lavapipe,
/// decode GEMV of copy: Q4_K 0.42 → 0.54, Q5_K 0.34 → 0.51, Q6_K 0.39 →
/// 0.51); the 32-value formats' one load is cheaper than the rows'
/// unrolled code (Q4_1 0.61 → 0.46 and Q8_0 0.79 → 0.53 with 4 rows).
/// With weights in textures (`textures`), x is broadcast into registers
/// once for all of a thread's rows, which more rows then share.
pub fn shared_rows(subgroups: bool, textures: bool, format: &str) -> u32 {
    match block_layout(format) {
        _ if !subgroups => shape::MATMUL_SHARED_ROWS_PLAIN,
        _ if textures => shape::MATMUL_SHARED_ROWS_TEXTURES,
        Some(l) if l.block_values > 32 => shape::MATMUL_SHARED_ROWS_K,
        _ => shape::MATMUL_SHARED_ROWS,
    }
}

/// Threads per workgroup of the thread-per-row matmul. Without subgroups (the
/// browser's SwiftShader) each thread computes 16 rows, so a 576-row matrix
/// is 36 threads: in workgroups of 16, three for the adapter's cores; of 8,
/// five (SmolLM2 decode on SwiftShader 6.0-6.1 → 6.3-6.5 tok/s). With
/// subgroups (lavapipe) 8 and 64 measured level or slower than 16.
pub fn thread_wg(subgroups: bool) -> u32 {
    if subgroups {
        shape::MATMUL_WG_THREAD
    } else {
        shape::MATMUL_WG_THREAD_PLAIN
    }
}

/// The constants a variant needs, from [`shape`] and the weight format.
pub fn consts(family: &Family, flags: &[&str]) -> Vec<Const> {
    use shape::*;
    // The weight format's flag ("" for families without one) and its layout.
    let format_flag = flags.iter().copied().find(|f| block_layout(f).is_some()).unwrap_or("");
    let format = block_layout(format_flag);
    let mut c = Vec::new();
    let wg = match family.name {
        "matmul_workgroup" => MATMUL_WG_GROUP,
        "matmul_thread" => thread_wg(flags.contains(&"SUBGROUPS")),
        // A thread per position of a split.
        "attention" if flags.contains(&"WORKGROUP") => ATTENTION_SPLIT,
        "attention" => ATTENTION_WG,
        "sample" => SAMPLE_WG,
        "copy" => COPY_WG,
        _ => ELEMENTWISE_WG,
    };
    c.push(Const::U32("WG", wg));
    if let Some(l) = format {
        c.push(Const::U32("QUADS", l.quads));
        c.push(Const::U32("SCALE_WORDS", l.scale_words));
        c.push(Const::U32("SUBS", l.subs()));
        // The shape whose layout the rows lie in: the matmul family's own,
        // or the embedding's shape flag.
        let shape_flag = match family.name {
            "matmul_thread" => "ROW_PER_THREAD",
            "matmul_workgroup" => "ROW_PER_WORKGROUP",
            _ => flags.iter().copied().find(|f| MATMUL_SHAPES.contains(f)).unwrap_or("ROW_PER_WORKGROUP"),
        };
        // In textures (QUAD_TEXTURE) rows lie whole; ROW_GROUP then only
        // spreads a subgroup's lanes over neighbouring rows.
        let group = if flags.contains(&"QUAD_TEXTURE") { ROW_GROUP_THREAD } else { row_group(shape_flag, format_flag) };
        c.push(Const::U32("ROW_GROUP", group));
        c.push(Const::U32("TEX_ROWS", TEXTURE_ROWS));
    }
    match family.name {
        "matmul_thread" | "matmul_workgroup" => {
            c.push(Const::U32("TILE_T", TILE_T));
            c.push(Const::U32("SHARED_ROWS", shared_rows(flags.contains(&"SUBGROUPS"), flags.contains(&"QUAD_TEXTURE"), format_flag)));
            c.push(Const::U32("GEMM_ROWS", GEMM_ROWS));
            c.push(Const::U32("GEMM_TOKENS", GEMM_TOKENS));
            c.push(Const::U32("GEMM_WG", GEMM_WG));
            c.push(Const::U32("LANE_TILE", LANE_TILE));
        }
        "moe" => c.push(Const::U32("TILE_T", TILE_T)),
        "attention" => {
            c.push(Const::U32("MAX_HEAD_DIM", if flags.contains(&"LATENT") { MAX_LATENT_RANK } else { MAX_HEAD_DIM }));
            c.push(Const::U32("SG_DIMS", ATTENTION_SG_DIMS));
        }
        "sample" => c.push(Const::U32("MAX_CAND", MAX_CANDIDATES)),
        _ => {}
    }
    c
}

/// A constant emitted ahead of the shader body.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Const {
    U32(&'static str, u32),
    F32(&'static str, f32),
}

/// Specialise a family's source for `flags` and `consts`.
pub fn specialise(family: &Family, flags: &[&str], consts: &[Const]) -> Result<String, String> {
    for f in flags {
        if !family.flags.contains(f) && !family.choices.iter().any(|c| c.contains(f)) && !["SUBGROUPS", "ENABLE_SUBGROUPS"].contains(f) {
            return Err(format!("{}.wgsl has no flag {f}", family.name));
        }
    }
    for group in family.choices {
        let n = group.iter().filter(|c| flags.contains(c)).count();
        if n != 1 {
            return Err(format!("{}.wgsl needs exactly one of {group:?}, got {flags:?}", family.name));
        }
    }
    let mut out = String::new();
    // HALF_* flags keep a buffer in f16 and need the shader-f16 extension
    // (the F16 *weight format* does not: it unpacks halves with unpack2x16float).
    if flags.iter().any(|f| f.starts_with("HALF_")) {
        out.push_str("enable f16;\n");
    }
    // Browsers require `enable subgroups;`; naga 30 (native) rejects it and
    // takes subgroup operations from the device's features instead.
    if flags.contains(&"SUBGROUPS") && flags.contains(&"ENABLE_SUBGROUPS") {
        out.push_str("enable subgroups;\n");
    }
    for c in consts {
        match c {
            Const::U32(n, v) => out.push_str(&format!("const {n}: u32 = {v}u;\n")),
            Const::F32(n, v) => out.push_str(&format!("const {n}: f32 = {v:?};\n")),
        }
    }
    // Includes first (one level), then conditional lines: a stack of
    // (this branch active, parent active).
    let mut lines: Vec<String> = Vec::new();
    expand(family.name, family.source, None, 0, &mut lines)?;
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let active = |s: &Vec<(bool, bool)>| s.last().is_none_or(|&(a, p)| a && p);
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim();
        if let Some(cond) = t.strip_prefix("#if ") {
            let cond = cond.trim();
            let value = cond.split("||").any(|f| match f.trim().strip_prefix('!') {
                Some(f) => !flags.contains(&f.trim()),
                None => flags.contains(&f.trim()),
            });
            let parent = active(&stack);
            stack.push((value, parent));
        } else if t == "#else" {
            let top = stack.last_mut().ok_or(format!("{}.wgsl:{}: #else without #if", family.name, i + 1))?;
            top.0 = !top.0;
        } else if t == "#endif" {
            stack.pop().ok_or(format!("{}.wgsl:{}: #endif without #if", family.name, i + 1))?;
        } else if t.starts_with('#') {
            return Err(format!("{}.wgsl:{}: unknown directive {t}", family.name, i + 1));
        } else if active(&stack) {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !stack.is_empty() {
        return Err(format!("{}.wgsl: unterminated #if", family.name));
    }
    Ok(out)
}

/// Every flag combination of a family: one of each choice group × every
/// subset of the free flags.
pub fn variants(family: &Family) -> Vec<Vec<&'static str>> {
    let mut combos: Vec<Vec<&'static str>> = vec![vec![]];
    for group in family.choices {
        combos = combos.iter().flat_map(|c| group.iter().map(move |g| [c.clone(), vec![*g]].concat())).collect();
    }
    for f in family.flags {
        combos = combos.iter().flat_map(|c| [c.clone(), [c.clone(), vec![*f]].concat()]).collect();
    }
    combos.retain(|flags| reachable(family.name, flags));
    combos
}

/// Whether the runtime's launchers can ask for a variant: weights lie in
/// textures only for the thread-per-row kernels (matmul_workgroup has no
/// QUAD_TEXTURE flag; embed's needs ROW_PER_THREAD) and only when quantised;
/// MLA's latent cache is f32; attention's subgroup kernel is a CPU
/// adapter's, its workgroup kernel a GPU's; moe.wgsl's router takes BIAS,
/// its combine SHARED_GATE and PERMUTED; the routed experts' matmuls, the
/// only ones PAGED, have neither bias nor accumulation.
pub fn reachable(family: &str, flags: &[&str]) -> bool {
    let has = |f: &str| flags.contains(&f);
    let quantised = flags.iter().filter_map(|f| FORMATS.iter().find(|b| b.name == *f)).any(|b| b.quantised());
    let paged = !(has("PAGED") && (has("BIAS") || has("ACC")));
    match family {
        "matmul_thread" => (!has("QUAD_TEXTURE") || quantised) && paged,
        "matmul_workgroup" => paged,
        "embed" => !has("QUAD_TEXTURE") || (has("ROW_PER_THREAD") && quantised),
        "attention" => !(has("LATENT") && has("HALF_KV")) && !(has("SUBGROUPS") && has("WORKGROUP")),
        "moe" => !(has("BIAS") && (has("SHARED_GATE") || has("PERMUTED"))),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(name: &str, src: &str) -> Result<(), String> {
        let module = naga::front::wgsl::parse_str(src).map_err(|e| e.emit_to_string(src))?;
        let caps = naga::valid::Capabilities::default()
            | naga::valid::Capabilities::SHADER_FLOAT16
            | naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32
            | naga::valid::Capabilities::SUBGROUP;
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
            .validate(&module)
            .map_err(|e| format!("{name}: {}", e.emit_to_string(src)))?;
        Ok(())
    }

    #[test]
    fn every_variant_of_every_family_validates() {
        let mut n = 0;
        for f in FAMILIES {
            for flags in variants(f) {
                let src = specialise(f, &flags, &consts(f, &flags)).unwrap();
                validate(&format!("{} {flags:?}", f.name), &src).unwrap_or_else(|e| panic!("{e}\n{src}"));
                n += 1;
            }
        }
        assert!(n >= 60, "only {n} variants");
        eprintln!("{n} reachable variants validated");
    }

    #[test]
    fn every_format_with_a_gpu_layout_has_valid_kernels() {
        let formats: Vec<&str> = FORMATS.iter().filter(|f| f.layout().is_some()).map(|f| f.name).collect();
        for family in [&MATMUL_THREAD, &MATMUL_WORKGROUP, &EMBED] {
            assert_eq!(family.choices[0], formats, "{} takes its formats from the table", family.name);
            let mut seen = vec![0; formats.len()];
            for flags in variants(family) {
                let Some(i) = formats.iter().position(|f| flags.contains(f)) else { continue };
                let src = specialise(family, &flags, &consts(family, &flags)).unwrap();
                validate(&format!("{} {flags:?}", family.name), &src).unwrap_or_else(|e| panic!("{e}\n{src}"));
                // dequant.wgsl picks a block's scale unit by format (`#if Q5_0 || Q5_1`).
                let words = FORMATS.iter().find(|f| f.name == formats[i]).and_then(|f| f.layout()).unwrap().scale_words;
                assert_eq!(src.contains("alias ScaleUnit = vec2<u32>;"), words == 2, "{} {flags:?}: ScaleUnit of {words} words", family.name);
                seen[i] += 1;
            }
            assert!(seen.iter().all(|&n| n > 0), "{}: a format without variants", family.name);
        }
    }

    #[test]
    fn thread_per_row_groups_rows_as_the_table_says() {
        assert_eq!(row_group("ROW_PER_THREAD", "Q4_K"), shape::ROW_GROUP_THREAD);
        assert_eq!(row_group("ROW_PER_THREAD", "Q6_K"), 1);
        assert_eq!(row_group("ROW_PER_WORKGROUP", "Q4_K"), 1);
    }

    #[test]
    fn f16_extension_only_for_half_buffers() {
        let f = ["F16"];
        assert!(!specialise(&MATMUL_THREAD, &f, &consts(&MATMUL_THREAD, &f)).unwrap().contains("enable f16"));
        let f = ["HALVES", "HALF_K"];
        assert!(specialise(&ROPE, &f, &consts(&ROPE, &f)).unwrap().starts_with("enable f16;"));
    }

    #[test]
    fn preprocessor_errors_are_reported() {
        let bad = Family { name: "bad", source: "#if A\nx\n", flags: &["A"], choices: &[] };
        assert!(specialise(&bad, &[], &[]).unwrap_err().contains("unterminated"));
        let bad = Family { name: "bad", source: "#endif\n", flags: &[], choices: &[] };
        assert!(specialise(&bad, &[], &[]).unwrap_err().contains("without #if"));
        assert!(specialise(&MATMUL_THREAD, &[], &[]).unwrap_err().contains("exactly one of"));
        assert!(specialise(&MATMUL_THREAD, &["F32", "NOPE"], &[]).unwrap_err().contains("no flag NOPE"));
        // A matmul family's shape is its file, not a flag; only thread per row reads textures.
        assert!(specialise(&MATMUL_THREAD, &["F32", "ROW_PER_THREAD"], &[]).unwrap_err().contains("no flag ROW_PER_THREAD"));
        assert!(specialise(&MATMUL_WORKGROUP, &["Q4_0", "QUAD_TEXTURE"], &[]).unwrap_err().contains("no flag QUAD_TEXTURE"));
        let bad = Family { name: "bad", source: "#include nothing\n", flags: &[], choices: &[] };
        assert!(specialise(&bad, &[], &[]).unwrap_err().contains("unknown include"));
    }

    #[test]
    fn scaled_values_are_factored_only_in_the_thread_dots() {
        let line = "    EMIT_SCALED(3, nibs(q.w, 0u), BYTE_SCALE, d, m);";
        assert_eq!(emit(line, "dot_sg").unwrap(), "    accq += dot(nibs(q.w, 0u), subgroupBroadcast(x4, 3u) * BYTE_SCALE);");
        assert_eq!(emit(line, "dot_regs").unwrap(), "    accq += dot(nibs(q.w, 0u), x4.scaled.v3);");
        assert_eq!(emit(line, "dot").unwrap(), "    acc += dot(nibs(q.w, 0u) * (BYTE_SCALE * d) + m, x[x4 + 3u]);");
        assert_eq!(emit("EMIT_DONE(d, -m);", "dot_sg").unwrap(), "    acc += d * accq + -m * sub_xsum(x4);\n    accq = 0.0;");
        assert_eq!(emit("EMIT_DONE(d, -m);", "dot_regs").unwrap(), "    acc += d * accq + -m * x4.sum;\n    accq = 0.0;");
        // A part of a sub-block (Q6_K's halves): its own Σx.
        assert_eq!(
            emit("EMIT_DONE(d1, m1, 4, 5);", "dot_regs").unwrap(),
            "    acc += d1 * accq + m1 * dot(x4.v.v4 + x4.v.v5, vec4<f32>(1.0));\n    accq = 0.0;"
        );
        assert!(emit("EMIT_DONE(d, m, 4, 8);", "dot_sg").unwrap_err().contains("malformed"));
        // dot_regs holds x at one scale only.
        assert!(emit("EMIT_SCALED(0, v, HALF, d, m);", "dot_regs").unwrap_err().contains("BYTE_SCALE only"));
        assert_eq!(emit("EMIT_DONE(d, -m);", "store").unwrap(), "");
        // No scale, no offset: no multiply or add for them.
        assert_eq!(emit("EMIT_SCALED(0, v, 1, d, 0);", "store").unwrap(), "    r.v0 = v * d;");
        assert_eq!(emit("EMIT_DONE(d, 0);", "dot_sg").unwrap(), "    acc += d * accq;\n    accq = 0.0;");
        assert!(emit("EMIT_SCALED(0, v, 1, d);", "dot").unwrap_err().contains("malformed"));
        // `_unit` modes: a block's scale words from its unit's texels, as the mode otherwise.
        let scales = "    let dm = unpack2x16float(sword(b));";
        assert_eq!(emit(scales, "dot_regs_unit").unwrap(), "    let dm = unpack2x16float(unit_sword(i));");
        assert_eq!(emit(scales, "dot_regs").unwrap(), scales);
        assert_eq!(emit(line, "dot_regs_unit").unwrap(), emit(line, "dot_regs").unwrap());
    }

    #[test]
    fn shape_constants_reach_the_source() {
        let src = specialise(&MATMUL_THREAD, &["Q4_K"], &consts(&MATMUL_THREAD, &["Q4_K"])).unwrap();
        assert!(src.contains("const TILE_T: u32 = 8u;"));
        assert!(src.contains("const QUADS: u32 = 9u;"));
        assert!(!src.contains("#if"));
        // Each matmul family takes its shape's workgroup size and row layout.
        let wg = |f: &Family, flags: &[&str]| consts(f, flags).into_iter().find_map(|c| match c {
            Const::U32("WG", v) => Some(v),
            _ => None,
        });
        assert_eq!(wg(&MATMUL_WORKGROUP, &["Q4_K"]), Some(shape::MATMUL_WG_GROUP));
        assert_eq!(wg(&MATMUL_THREAD, &["Q4_K", "SUBGROUPS"]), Some(thread_wg(true)));
        assert!(consts(&MATMUL_THREAD, &["Q4_K"]).contains(&Const::U32("ROW_GROUP", shape::ROW_GROUP_THREAD)));
        assert!(consts(&MATMUL_WORKGROUP, &["Q4_K"]).contains(&Const::U32("ROW_GROUP", 1)));
    }
}
