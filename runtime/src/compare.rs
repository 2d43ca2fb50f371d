//! `baleen compare`: one prompt through both backends, every named
//! intermediate of the graph diffed at the last position, in graph order,
//! so a wrong kernel is found by the name of what it made.

use crate::error::{Error, Result};
use crate::gpu::model::GpuModel;
use crate::gpu::{Gpu, GpuOptions};
use crate::model::ModelFiles;
use crate::reference::Reference;
use std::sync::Arc;

/// GPU − reference over one intermediate's last row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Diff {
    pub name: String,
    pub max_abs: f32,
    pub rms: f32,
}

#[derive(Debug, Clone)]
pub struct Comparison {
    /// (name, backend) of the GPU adapter.
    pub adapter: (String, String),
    /// In graph order.
    pub intermediates: Vec<Diff>,
}

impl Comparison {
    /// The intermediate with the largest max |Δ|.
    pub fn worst(&self) -> Option<&Diff> {
        self.intermediates.iter().max_by(|a, b| a.max_abs.total_cmp(&b.max_abs))
    }

    /// The first intermediate, in graph order, whose max |Δ| exceeds `tolerance`.
    pub fn first_over(&self, tolerance: f32) -> Option<&Diff> {
        self.intermediates.iter().find(|d| !(d.max_abs <= tolerance))
    }
}

/// |a − b|, where a NaN on one side only is infinitely far.
fn distance(a: f32, b: f32) -> f32 {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => 0.0,
        (false, false) if a == b => 0.0,
        (false, false) => (a - b).abs(),
        _ => f32::INFINITY,
    }
}

pub fn diff(name: &str, gpu: &[f32], reference: &[f32]) -> Result<Diff> {
    if gpu.len() != reference.len() {
        return Err(Error::Gpu(format!("{name}: the GPU made {} values, the reference {}", gpu.len(), reference.len())));
    }
    let d: Vec<f32> = gpu.iter().zip(reference).map(|(a, b)| distance(*a, *b)).collect();
    let max_abs = d.iter().copied().fold(0.0, f32::max);
    let rms = (d.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / d.len().max(1) as f64).sqrt() as f32;
    Ok(Diff { name: name.to_string(), max_abs, rms })
}

/// Run `ids` through the reference and through the GPU (`opts`, with an
/// f32 KV cache unless `opts` says otherwise) and diff every intermediate.
pub fn compare(m: &ModelFiles, ids: &[u32], gpu: Arc<Gpu>, opts: &GpuOptions) -> Result<Comparison> {
    let want = Reference::load(m)?.intermediates(ids)?;
    let opts = GpuOptions { kv_f16: Some(opts.kv_f16.unwrap_or(false)), ..opts.clone() };
    let mut g = GpuModel::load(gpu, m, &opts)?;
    let got = g.intermediates(ids)?;
    let mut reference: std::collections::HashMap<&str, &[f32]> = want.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
    let mut intermediates = Vec::with_capacity(got.len());
    for (name, values) in &got {
        let r = reference.remove(name.as_str()).ok_or_else(|| Error::Gpu(format!("the GPU's graph has {name}, the reference's does not")))?;
        intermediates.push(diff(name, values, r)?);
    }
    if let Some(name) = want.iter().map(|(n, _)| n).find(|n| reference.contains_key(n.as_str())) {
        return Err(Error::Gpu(format!("the reference's graph has {name}, the GPU's does not")));
    }
    let (adapter, backend) = crate::engine::Backend::describe(&g);
    Ok(Comparison { adapter: (adapter, backend), intermediates })
}
