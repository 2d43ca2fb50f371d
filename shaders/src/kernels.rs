//! What the Rust launch code and the WGSL share besides constants: each
//! family's uniform `Params`, field for field, and its binding numbers. The
//! tests below check both against every variant of the WGSL through naga's
//! reflection, so a field or a binding moved on one side fails there.
//!
//! Every family binds the pass's `Step` at 0 and its `Params` at 1.

/// A family's `Params` uniform, mirrored.
pub trait Uniform: bytemuck::Pod {
    /// The families whose `struct Params` this mirrors (the two matmul
    /// families share theirs).
    const FAMILIES: &'static [&'static str];
    /// Its fields in order: (name, type).
    const FIELDS: &'static [(&'static str, &'static str)];
    fn bytes(&self) -> &[u8] {
        bytemuck::bytes_of(self)
    }
}

macro_rules! uniform {
    ($(#[$m:meta])* $name:ident for $($family:literal),+ { $($(#[$fm:meta])* $field:ident: $ty:ident),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
        pub struct $name { $($(#[$fm])* pub $field: $ty),* }
        impl Uniform for $name {
            const FAMILIES: &'static [&'static str] = &[$($family),+];
            const FIELDS: &'static [(&'static str, &'static str)] = &[$((stringify!($field), stringify!($ty))),*];
        }
    };
}

uniform!(
    /// matmul_common.wgsl (both matmul families): one row chunk of a weight.
    MatmulParams for "matmul_thread", "matmul_workgroup" {
        /// Rows in this chunk.
        rows: u32,
        /// Values per row.
        cols: u32,
        /// First row of this chunk in y.
        row_offset: u32,
        /// y's row length (all chunks' rows).
        y_stride: u32,
        /// 1: one token (x row 0 → y row 0), e.g. the LM head.
        single: u32,
        x_stride: u32,
        pad1: u32,
        /// Word offset of the scale plane in the weight buffer.
        scale_offset: u32,
        /// `experts`: rows of one expert.
        expert_rows: u32,
        /// `experts`: x row of slot s is s / x_div (top_k, or 1).
        x_div: u32,
        /// `experts`: slots per token.
        top_k: u32,
        pad0: u32,
    }
);

uniform!(
    /// embed.wgsl: one row chunk of the embedding.
    EmbedParams for "embed" { rows: u32, cols: u32, row_start: u32, scale_offset: u32 }
);

uniform!(
    /// norm.wgsl.
    NormParams for "norm" {
        cols: u32,
        /// 1: only the pass's last token, written to row 0.
        last_only: u32,
        eps: f32,
        pad: u32,
    }
);

uniform!(
    /// rope.wgsl's `scatter`.
    RopeParams for "rope" {
        head_dim: u32,
        n_q_heads: u32,
        n_k_heads: u32,
        /// `QK_NORM`'s epsilon.
        eps: f32,
        /// Rows in the caches: position p is row p % ring.
        ring: u32,
        pad0: u32,
        pad1: u32,
        pad2: u32,
    }
);

uniform!(
    /// attention.wgsl.
    AttentionParams for "attention" {
        n_heads: u32,
        n_kv_heads: u32,
        head_dim: u32,
        split_len: u32,
        max_splits: u32,
        scale: f32,
        v_dim: u32,
        /// A query sees its latest `window` positions; 0: all.
        window: u32,
        /// Rows in the caches: position p is row p % ring.
        ring: u32,
        pad0: u32,
        pad1: u32,
        pad2: u32,
    }
);

uniform!(
    /// elementwise.wgsl.
    ElementwiseParams for "elementwise" {
        cols: u32,
        /// `swiglu`: rows per token (0: every row of out); `scale`: 1 every token's row, 0 row 0.
        rows_per_token: u32,
        /// `swiglu`: gate and up side by side in one buffer.
        stacked: u32,
        /// `scale`'s factor.
        factor: f32,
    }
);

uniform!(
    /// sample.wgsl.
    SampleParams for "sample" {
        vocab: u32,
        /// Where in `ids` the log-probabilities go (past the pass's ids).
        out_at: u32,
        pad1: u32,
        pad2: u32,
    }
);

uniform!(
    /// moe.wgsl: routing, and the grouped experts' schedule and combine.
    MoeParams for "moe" {
        n_experts: u32,
        top_k: u32,
        groups: u32,
        topk_groups: u32,
        /// 1: sigmoid scores; 0: softmax.
        sigmoid: u32,
        /// Group score: 1 the sum of its best two; 0 its best.
        top_two_sum: u32,
        norm_topk: u32,
        scale: f32,
        /// `gather`, `combine`: row length of x.
        hidden: u32,
        /// `combine`: 1: add the shared expert's output.
        has_shared: u32,
        pad0: u32,
        pad1: u32,
    }
);

uniform!(
    /// mla.wgsl.
    MlaParams for "mla" { heads: u32, rank: u32, rope: u32, nope: u32, v_dim: u32, eps: f32, rope_factor: f32, pad0: u32 }
);

macro_rules! bindings {
    ($(#[$m:meta])* $module:ident for $($family:literal),+ { $($(#[$bm:meta])* $name:ident = $n:literal as [$($wgsl:literal),+]),* $(,)? }) => {
        $(#[$m])*
        pub mod $module {
            $($(#[$bm])* pub const $name: u32 = $n;)*
            /// The families, and each binding with the names their variants give it.
            pub const ALL: super::Bindings = (&[$($family),+], &[$(($n, &[$($wgsl),+])),*]);
        }
    };
}

/// Binding numbers, family by family (0 `step` and 1 `p` everywhere).
pub mod binding {
    /// Families that share their bindings, and each binding number with
    /// the names their variants give it.
    pub type Bindings = (&'static [&'static str], &'static [(u32, &'static [&'static str])]);

    bindings!(matmul for "matmul_thread", "matmul_workgroup" {
        /// The quant plane: a buffer, or a texture.
        W = 2 as ["w", "wq"],
        X = 3 as ["x"],
        Y = 4 as ["y"],
        BIAS = 5 as ["b"],
        /// The scale plane: the quant plane's buffer again, or a texture.
        SCALES = 6 as ["ws", "wst"],
        IDS = 7 as ["ids"],
        TILES = 8 as ["tiles"],
        /// PAGED: each expert's slot in the expert cache.
        SLOT_OF = 9 as ["slot_of"],
    });
    bindings!(embed for "embed" { W = 2 as ["w", "wq"], IDS = 3 as ["ids"], OUT = 4 as ["out"], SCALES = 5 as ["ws", "wst"] });
    bindings!(norm for "norm" { X = 2 as ["x"], W = 3 as ["w"], OUT = 4 as ["out"] });
    bindings!(rope for "rope" {
        INV_FREQ = 2 as ["inv_freq"],
        Q = 3 as ["q"],
        K = 4 as ["k"],
        V = 5 as ["v"],
        QKV = 6 as ["qkv"],
        Q_NORM = 7 as ["q_norm"],
        K_NORM = 8 as ["k_norm"],
    });
    bindings!(attention for "attention" {
        Q = 2 as ["q"],
        K_CACHE = 3 as ["k_cache"],
        V_CACHE = 4 as ["v_cache"],
        PART_ML = 5 as ["part_ml"],
        PART_O = 6 as ["part_o"],
        OUT = 7 as ["out"],
    });
    bindings!(elementwise for "elementwise" { GATE = 2 as ["gate"], UP = 3 as ["up"], OUT = 4 as ["out"] });
    bindings!(sample for "sample" { LOGITS = 2 as ["logits"], IDS = 3 as ["ids"], PENALIZED = 4 as ["penalized"] });
    bindings!(moe for "moe" {
        LOGITS = 2 as ["logits"],
        IDS = 3 as ["ids"],
        WEIGHTS = 4 as ["weights"],
        BIAS = 5 as ["bias"],
        X = 6 as ["x"],
        Y = 7 as ["y"],
        SHARED_OUT = 8 as ["shared_out"],
        GATE = 9 as ["gate"],
        SLOT_POS = 11 as ["slot_pos"],
        TILES = 12 as ["tiles"],
        COUNTS = 13 as ["counts"],
        SORTED = 14 as ["sorted"],
    });
    bindings!(mla for "mla" { INV_FREQ = 2 as ["inv_freq"], SRC = 3 as ["src"], W = 4 as ["w"], DST = 5 as ["dst"] });
    bindings!(copy for "copy" { SRC = 0 as ["src"], DST = 1 as ["dst"] });

    /// Every family's bindings.
    pub const FAMILIES: &[Bindings] =
        &[matmul::ALL, embed::ALL, norm::ALL, rope::ALL, attention::ALL, elementwise::ALL, sample::ALL, moe::ALL, mla::ALL, copy::ALL];
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{consts, specialise, variants, FAMILIES};
    use naga::{AddressSpace, Module, ScalarKind, TypeInner};

    fn modules(family: &str) -> Vec<(Vec<&'static str>, Module)> {
        let f = FAMILIES.iter().find(|f| f.name == family).unwrap_or_else(|| panic!("no family {family}"));
        variants(f)
            .into_iter()
            .map(|flags| {
                let src = specialise(f, &flags, &consts(f, &flags)).unwrap();
                let m = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| panic!("{family} {flags:?}: {}", e.emit_to_string(&src)));
                (flags, m)
            })
            .collect()
    }

    fn check_uniform<U: Uniform>() {
        for family in U::FAMILIES {
            for (flags, m) in modules(family) {
                let var = m
                    .global_variables
                    .iter()
                    .map(|(_, v)| v)
                    .find(|v| v.binding.as_ref().is_some_and(|b| b.group == 0 && b.binding == 1))
                    .unwrap_or_else(|| panic!("{family} {flags:?}: no uniform at binding 1"));
                assert_eq!(var.space, AddressSpace::Uniform, "{family} {flags:?}");
                let TypeInner::Struct { members, span } = &m.types[var.ty].inner else { panic!("{family}: Params is not a struct") };
                assert_eq!(*span as usize, std::mem::size_of::<U>(), "{family} {flags:?}: Params' size");
                let wgsl: Vec<(String, &'static str)> = members
                    .iter()
                    .map(|mb| {
                        let ty = match m.types[mb.ty].inner {
                            TypeInner::Scalar(s) if s.kind == ScalarKind::Uint && s.width == 4 => "u32",
                            TypeInner::Scalar(s) if s.kind == ScalarKind::Float && s.width == 4 => "f32",
                            ref other => panic!("{family}: field {:?} of type {other:?}", mb.name),
                        };
                        (mb.name.clone().unwrap_or_default(), ty)
                    })
                    .collect();
                let rust: Vec<(String, &'static str)> = U::FIELDS.iter().map(|(n, t)| (n.to_string(), *t)).collect();
                assert_eq!(wgsl, rust, "{family} {flags:?}: Params field for field");
            }
        }
    }

    #[test]
    fn every_params_struct_mirrors_its_wgsl() {
        check_uniform::<MatmulParams>();
        check_uniform::<EmbedParams>();
        check_uniform::<NormParams>();
        check_uniform::<RopeParams>();
        check_uniform::<AttentionParams>();
        check_uniform::<ElementwiseParams>();
        check_uniform::<SampleParams>();
        check_uniform::<MoeParams>();
        check_uniform::<MlaParams>();
    }

    #[test]
    fn every_binding_number_names_the_wgsl_binding() {
        for f in FAMILIES {
            assert!(binding::FAMILIES.iter().any(|(families, _)| families.contains(&f.name)), "{}: no binding numbers", f.name);
        }
        for (families, bindings) in binding::FAMILIES {
            for family in *families {
                let mut seen = vec![false; bindings.len()];
                for (flags, m) in modules(family) {
                    for (_, v) in m.global_variables.iter() {
                        let Some(b) = &v.binding else { continue };
                        let name = v.name.as_deref().unwrap_or("");
                        if *family != "copy" && b.binding <= 1 {
                            assert_eq!(name, if b.binding == 0 { "step" } else { "p" }, "{family} {flags:?}");
                            continue;
                        }
                        let i = bindings.iter().position(|(n, _)| *n == b.binding).unwrap_or_else(|| panic!("{family} {flags:?}: binding {} ({name}) has no Rust constant", b.binding));
                        assert!(bindings[i].1.contains(&name), "{family} {flags:?}: binding {} is {name}, not one of {:?}", b.binding, bindings[i].1);
                        seen[i] = true;
                    }
                }
                for ((n, names), seen) in bindings.iter().zip(seen) {
                    assert!(seen, "{family}: no variant has binding {n} ({names:?})");
                }
            }
        }
    }
}
