//! Routed experts paged on demand: a mixture-of-experts model whose experts
//! exceed the GPU budget keeps its dense part resident and its routed
//! experts in a cache of slots, loading each miss from the weight file.
//!
//! A slot holds one expert's gate, up and down in the layout resident
//! experts have ([`GpuMatrix::slots`]); layers whose experts are stored
//! alike share a pool of slots, so the budget is not split layer by layer.
//! Per paged layer a pass stops after the router: its expert ids come back
//! (one readback), the misses are uploaded into free or least recently used
//! slots, `slot_of[expert]` (the layer's `[n_experts]` u32) is written, and
//! the pass goes on with the same kernels reading slots instead of experts
//! (matmul_common.wgsl's PAGED), so results are bit-identical to the
//! resident run. A pass needing more of a layer's experts than its pool
//! holds (prefill) runs that layer's expert matmuls in rounds, each on the
//! experts resident in it; the outputs land where one round would put them
//! and are combined once, in the same order.

use super::model::ExpertGateUp;
use super::weights::{expert_bytes, expert_pair_bytes, repacked_row_bytes, GpuMatrix, Placement};
use super::Gpu;
use crate::error::{Error, Result};
use crate::format::{Sources, TensorInfo, TensorReader};
use crate::quant::DType;
use std::future::Future;
use std::pin::Pin;

/// `slot_of`'s value for an expert not resident (in this round).
pub const NO_SLOT: u32 = u32::MAX;

/// The GPU memory given to routed experts unasked: models whose experts
/// take more are paged with this budget (a tab gets a few GiB of GPU
/// memory, and the dense part and the KV cache come first; no GPU API says
/// how much there is). `--expert-cache` / `expertCacheBytes` override it.
pub const DEFAULT_EXPERT_BYTES: u64 = 2 << 30;

/// The expert cache's budget when none is asked for: None (all resident)
/// while the routed experts' `total` bytes fit [`DEFAULT_EXPERT_BYTES`].
pub fn default_budget(total: u64) -> Option<u64> {
    (total > DEFAULT_EXPERT_BYTES).then_some(DEFAULT_EXPERT_BYTES)
}

/// GPU bytes of every routed expert of `cfg`'s MoE layers, as `index`
/// stores them.
pub fn routed_bytes(index: &crate::format::TensorIndex, cfg: &crate::config::ModelConfig, moe: &crate::config::Moe) -> Result<u64> {
    use crate::model::names::Expert;
    let mut total = 0;
    for l in (0..cfg.n_layers).filter(|&l| moe.is_moe_layer(l)) {
        let t = |w| super::model::expert_tensors(index, cfg.arch, l, moe.n_experts, w);
        let (gate, up, down) = (t(Expert::Gate)?, t(Expert::Up)?, t(Expert::Down)?);
        let dtype = |ts: &[&TensorInfo]| match ts.first() {
            Some(t) => super::weights::layout(t.dtype).map(|_| t.dtype),
            None => Err(Error::Config(format!("layer {l}: no expert tensors"))),
        };
        let kind = Kind { gate: dtype(&gate)?, up: dtype(&up)?, down: dtype(&down)?, ffn: moe.expert_ffn as u32, hidden: cfg.hidden as u32 };
        total += moe.n_experts as u64 * kind.slot_bytes();
    }
    Ok(total)
}

/// Where a missed expert's bytes come from: natively the model's files, in
/// the page its chunk cache or Range requests (`web.rs`).
pub trait ExpertSource {
    fn read<'a>(&'a self, t: &'a TensorInfo, start: u64, len: u64) -> Pin<Box<dyn Future<Output = Result<Vec<u8>>> + 'a>>;
    /// Start fetching bytes a later `read` will likely ask for, without
    /// waiting (the page: into its chunk cache). Natively the file is local:
    /// nothing to do.
    fn prefetch(&self, _t: &TensorInfo, _start: u64, _len: u64) {}
}

impl ExpertSource for Sources {
    fn read<'a>(&'a self, t: &'a TensorInfo, start: u64, len: u64) -> Pin<Box<dyn Future<Output = Result<Vec<u8>>> + 'a>> {
        Box::pin(self.read_range(t, start, len))
    }
}

/// An [`ExpertSource`] read as a [`TensorReader`].
struct Reader<'a>(&'a dyn ExpertSource);

impl TensorReader for Reader<'_> {
    async fn read_range(&self, t: &TensorInfo, start: u64, len: u64) -> Result<Vec<u8>> {
        self.0.read(t, start, len).await
    }
}

/// One MoE layer's routed expert tensors, as the file holds them: one
/// tensor of each kind holding every expert, or one per expert.
pub struct ExpertTensors {
    pub layer: usize,
    pub gate: Vec<TensorInfo>,
    pub up: Vec<TensorInfo>,
    pub down: Vec<TensorInfo>,
    pub n: u32,
    pub ffn: u32,
    pub hidden: u32,
}

/// What a pool's slots hold: the types and shape of one expert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Kind {
    gate: DType,
    up: DType,
    down: DType,
    ffn: u32,
    hidden: u32,
}

impl Kind {
    /// GPU bytes of one slot.
    fn slot_bytes(&self) -> u64 {
        let (f, h) = (self.ffn as u64, self.hidden as u64);
        f * (repacked_row_bytes(self.gate, h) + repacked_row_bytes(self.up, h)) + h * repacked_row_bytes(self.down, f)
    }
}

impl ExpertTensors {
    fn kind(&self) -> Kind {
        Kind { gate: self.gate[0].dtype, up: self.up[0].dtype, down: self.down[0].dtype, ffn: self.ffn, hidden: self.hidden }
    }

    /// File bytes of one expert of one kind of tensors.
    fn per_expert(&self, ts: &[TensorInfo]) -> u64 {
        if ts.len() == 1 {
            ts[0].nbytes / self.n as u64
        } else {
            ts[0].nbytes
        }
    }
}

fn refs(ts: &[TensorInfo]) -> Vec<&TensorInfo> {
    ts.iter().collect()
}

/// Slots shared by the layers whose experts are alike.
struct Pool {
    kind: Kind,
    gate_up: ExpertGateUp,
    down: GpuMatrix,
    /// Per slot: the (layer, expert) it holds, and when it was last used.
    owner: Vec<Option<(usize, u32)>>,
    used: Vec<u64>,
}

struct Layer {
    tensors: ExpertTensors,
    pool: usize,
    /// `[n_experts]` u32 on the GPU: the slots of this round's experts.
    slot_of: wgpu::Buffer,
    /// Each expert's slot, NO_SLOT where not resident.
    resident: Vec<u32>,
    /// The experts the last pass chose here, and those prefetched for the next.
    last: Vec<u32>,
    prefetched: Vec<u32>,
}

/// What the cache did, for `run --json`, `bench --json` and the page.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExpertStats {
    pub budget_bytes: u64,
    /// The smallest budget this model takes, and every routed expert's bytes.
    pub minimum_bytes: u64,
    pub total_bytes: u64,
    pub slots: u64,
    /// Of each paged layer's experts a pass needed: resident already,
    /// loaded, and loaded into a slot another expert had to leave.
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    /// File bytes read for misses.
    pub bytes_loaded: u64,
    /// Passes stopped for a layer's expert ids (the readbacks).
    pub readbacks: u64,
    /// Layers whose expert matmuls ran in more than one round.
    pub extra_rounds: u64,
    /// Routed experts in the cache's slots, of all of them.
    pub resident: u64,
    pub experts: u64,
    /// Misses whose bytes had been asked for ahead: once a layer's experts
    /// are submitted, the next paged layer's choices at the previous pass
    /// are prefetched (the page's chunk cache; natively a no-op, counted
    /// all the same).
    pub prefetch_hits: u64,
}

/// The routed experts of every MoE layer in pools of slots.
pub struct ExpertCache {
    pools: Vec<Pool>,
    layers: Vec<Layer>,
    reader: Box<dyn ExpertSource>,
    stats: ExpertStats,
    clock: u64,
}

impl ExpertCache {
    /// The smallest budget the cache takes: `top_k` slots of each kind of
    /// expert (one decode step's layer at a time), in bytes.
    pub fn minimum_bytes(layers: &[ExpertTensors], top_k: u32) -> u64 {
        let mut kinds: Vec<Kind> = Vec::new();
        for l in layers {
            if !kinds.contains(&l.kind()) {
                kinds.push(l.kind());
            }
        }
        kinds.iter().map(|k| top_k as u64 * k.slot_bytes()).sum()
    }

    /// GPU bytes of every routed expert, resident.
    pub fn total_bytes(layers: &[ExpertTensors]) -> u64 {
        layers.iter().map(|l| l.n as u64 * l.kind().slot_bytes()).sum()
    }

    /// Pools within `budget` bytes for `layers`' experts (each pool's share
    /// of the budget its share of the experts' bytes, at least `top_k`
    /// slots, at most every expert of its layers), laid out for `place`. A
    /// pool holding all its layers' experts loads them now and never pages.
    pub async fn new(gpu: &Gpu, layers: Vec<ExpertTensors>, budget: u64, top_k: u32, place: Placement, reader: Box<dyn ExpertSource>) -> Result<Self> {
        let minimum = Self::minimum_bytes(&layers, top_k);
        if budget < minimum {
            return Err(Error::Input(format!(
                "an expert cache of {budget} bytes holds fewer than one token's {top_k} experts a layer; it needs at least {minimum} bytes (--expert-cache {minimum})"
            )));
        }
        let total = Self::total_bytes(&layers);
        let mut kinds: Vec<(Kind, u64)> = Vec::new(); // (kind, experts of its layers)
        for l in &layers {
            match kinds.iter_mut().find(|(k, _)| *k == l.kind()) {
                Some((_, n)) => *n += l.n as u64,
                None => kinds.push((l.kind(), l.n as u64)),
            }
        }
        let mut pools = Vec::new();
        for (i, (kind, experts)) in kinds.iter().enumerate() {
            let demand = experts * kind.slot_bytes();
            let share = (budget as u128 * demand as u128 / total.max(1) as u128) as u64;
            let slots = (share / kind.slot_bytes()).clamp(top_k as u64, *experts);
            let name = format!("expert cache {i}");
            let (f, h) = (kind.ffn as u64, kind.hidden as u64);
            let gate_up = if kind.gate == kind.up {
                ExpertGateUp::Stacked(GpuMatrix::slots(gpu, &format!("{name} gate+up"), kind.gate, slots, 2 * f, h, place)?)
            } else {
                ExpertGateUp::Apart(
                    GpuMatrix::slots(gpu, &format!("{name} gate"), kind.gate, slots, f, h, place)?,
                    GpuMatrix::slots(gpu, &format!("{name} up"), kind.up, slots, f, h, place)?,
                )
            };
            let down = GpuMatrix::slots(gpu, &format!("{name} down"), kind.down, slots, h, f, place)?;
            pools.push(Pool { kind: *kind, gate_up, down, owner: vec![None; slots as usize], used: vec![0; slots as usize] });
        }
        let layers = layers
            .into_iter()
            .map(|t| {
                let pool = pools.iter().position(|p| p.kind == t.kind()).expect("a pool for every kind");
                let slot_of = gpu.storage(&format!("blk.{} expert slots", t.layer), t.n as u64 * 4)?;
                Ok(Layer { resident: vec![NO_SLOT; t.n as usize], tensors: t, pool, slot_of, last: Vec::new(), prefetched: Vec::new() })
            })
            .collect::<Result<Vec<_>>>()?;
        let slots = pools.iter().map(|p| p.owner.len() as u64).sum();
        let experts = layers.iter().map(|l| l.tensors.n as u64).sum();
        let fresh = ExpertStats { budget_bytes: budget, minimum_bytes: minimum, total_bytes: total, slots, experts, ..Default::default() };
        let mut cache = ExpertCache { pools, layers, reader, stats: fresh.clone(), clock: 0 };
        // Pools holding every expert of their layers: loaded once, here.
        for l in 0..cache.layers.len() {
            if !cache.pages(l) {
                let all: Vec<u32> = (0..cache.layers[l].tensors.n).collect();
                cache.load(gpu, l, &all).await?;
            }
        }
        cache.stats = fresh;
        Ok(cache)
    }

    /// Whether layer `l`'s experts are paged (else all resident: its pass
    /// does not stop for them).
    pub fn pages(&self, l: usize) -> bool {
        let p = &self.pools[self.layers[l].pool];
        let experts: usize = self.layers.iter().filter(|o| o.pool == self.layers[l].pool).map(|o| o.tensors.n as usize).sum();
        p.owner.len() < experts
    }

    /// Layer `l`'s pool matrices and its `slot_of` buffer, which its expert
    /// matmuls bind.
    pub fn matrices(&self, l: usize) -> (&ExpertGateUp, &GpuMatrix, &wgpu::Buffer) {
        let layer = &self.layers[l];
        let p = &self.pools[layer.pool];
        (&p.gate_up, &p.down, &layer.slot_of)
    }

    pub fn stats(&self) -> ExpertStats {
        let resident = self.pools.iter().map(|p| p.owner.iter().filter(|o| o.is_some()).count() as u64).sum();
        ExpertStats { resident, ..self.stats.clone() }
    }

    /// Once layer `l`'s experts are submitted: fetch ahead the experts the
    /// next paged layer chose at the previous pass that are not resident.
    pub fn prefetch_next(&mut self, l: usize) {
        let next = (l + 1) % self.layers.len();
        let layer = &self.layers[next];
        let want: Vec<u32> = layer.last.iter().copied().filter(|&e| layer.resident[e as usize] == NO_SLOT).collect();
        let t = &layer.tensors;
        for &e in &want {
            for ts in [&t.gate, &t.up, &t.down] {
                let per = t.per_expert(ts);
                let (tensor, at) = if ts.len() == 1 { (&ts[0], e as u64 * per) } else { (&ts[e as usize], 0) };
                self.reader.prefetch(tensor, at, per);
            }
        }
        self.layers[next].prefetched = want;
    }

    /// Layer `l`'s distinct experts among a pass's expert `ids`, in rounds
    /// of at most its pool's slots: those resident first (no upload), then
    /// the rest by id.
    pub fn rounds(&mut self, l: usize, ids: &[u32]) -> Result<Vec<Vec<u32>>> {
        let layer = &self.layers[l];
        let n = layer.tensors.n;
        let mut need = vec![false; n as usize];
        for &e in ids {
            *need.get_mut(e as usize).ok_or_else(|| Error::Gpu(format!("layer {}'s router chose expert {e} of {n}", layer.tensors.layer)))? = true;
        }
        let (mut order, misses): (Vec<u32>, Vec<u32>) = (0..n).filter(|&e| need[e as usize]).partition(|&e| layer.resident[e as usize] != NO_SLOT);
        self.stats.prefetch_hits += misses.iter().filter(|e| layer.prefetched.contains(e)).count() as u64;
        order.extend(misses);
        let layer = &mut self.layers[l];
        layer.last = order.clone();
        layer.prefetched.clear();
        let cap = self.pools[self.layers[l].pool].owner.len();
        self.stats.readbacks += 1;
        self.stats.extra_rounds += (order.len() > cap) as u64;
        Ok(order.chunks(cap).map(|c| c.to_vec()).collect())
    }

    /// Make `round` (layer `l`'s experts, at most its pool's slots)
    /// resident, uploading misses into free or least recently used slots
    /// outside the round, and point `slot_of` at them (the others NO_SLOT).
    pub async fn load(&mut self, gpu: &Gpu, l: usize, round: &[u32]) -> Result<()> {
        self.clock += 1;
        let now = self.clock;
        let pool_at = self.layers[l].pool;
        if round.len() > self.pools[pool_at].owner.len() {
            return Err(Error::Gpu(format!("a round of {} experts in a pool of {} slots", round.len(), self.pools[pool_at].owner.len())));
        }
        // Slots of this round's resident experts are not to be taken.
        for &e in round {
            let s = self.layers[l].resident[e as usize];
            if s != NO_SLOT {
                self.pools[pool_at].used[s as usize] = now;
                self.stats.hits += 1;
            }
        }
        for &e in round {
            if self.layers[l].resident[e as usize] != NO_SLOT {
                continue;
            }
            let pool = &mut self.pools[pool_at];
            let s = (0..pool.owner.len()).filter(|&s| pool.used[s] != now).min_by_key(|&s| (pool.owner[s].is_some(), pool.used[s])).expect("a round fits its pool");
            if let Some((ol, oe)) = pool.owner[s].take() {
                self.layers[ol].resident[oe as usize] = NO_SLOT;
                self.stats.evictions += 1;
            }
            let pool = &mut self.pools[pool_at];
            pool.owner[s] = Some((l, e));
            pool.used[s] = now;
            self.layers[l].resident[e as usize] = s as u32;
            self.stats.misses += 1;
            self.upload(gpu, l, e, s as u32).await?;
        }
        let layer = &self.layers[l];
        let mut slot_of = vec![NO_SLOT; layer.tensors.n as usize];
        for &e in round {
            slot_of[e as usize] = layer.resident[e as usize];
        }
        gpu.queue.write_buffer(&layer.slot_of, 0, bytemuck::cast_slice(&slot_of));
        Ok(())
    }

    /// Read expert `e` of layer `l` from the file into slot `s` of its pool.
    async fn upload(&mut self, gpu: &Gpu, l: usize, e: u32, s: u32) -> Result<()> {
        let reader = Reader(&*self.reader);
        let layer = &self.layers[l];
        let t = &layer.tensors;
        let pool = &self.pools[layer.pool];
        let (f, h) = (t.ffn, t.hidden);
        let (gate, up, down) = (refs(&t.gate), refs(&t.up), refs(&t.down));
        let mut bytes = 0u64;
        match &pool.gate_up {
            ExpertGateUp::Stacked(m) => {
                let b = expert_pair_bytes(&reader, &gate, &up, e as u64, t.per_expert(&t.gate)).await?;
                bytes += b.len() as u64;
                m.write_slot(gpu, s, 2 * f, &b)?;
            }
            ExpertGateUp::Apart(mg, mu) => {
                for (m, ts, raw) in [(mg, &gate, &t.gate), (mu, &up, &t.up)] {
                    let b = expert_bytes(&reader, ts, e as u64, t.per_expert(raw)).await?;
                    bytes += b.len() as u64;
                    m.write_slot(gpu, s, f, &b)?;
                }
            }
        }
        let b = expert_bytes(&reader, &down, e as u64, t.per_expert(&t.down)).await?;
        bytes += b.len() as u64;
        pool.down.write_slot(gpu, s, h, &b)?;
        self.stats.bytes_loaded += bytes;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{default_budget, DEFAULT_EXPERT_BYTES};

    #[test]
    fn experts_over_the_default_budget_are_paged_unasked() {
        assert_eq!(default_budget(1 << 20), None);
        assert_eq!(default_budget(DEFAULT_EXPERT_BYTES), None);
        // DeepSeek-V2-Lite's ~8.1 GB of Q4_K experts: paged with the default.
        assert_eq!(default_budget(8_100_000_000), Some(DEFAULT_EXPERT_BYTES));
    }
}
