//! Layers (one file each, `forward` and `backward` side by side) and the models built from them.

pub mod cross;
pub mod distinct;
pub mod embedding;
pub mod factored;
pub mod gate;
pub mod gatenu;
pub mod head;
pub mod kmeans;
pub mod linear;
pub mod mlp;
pub mod profile;
pub mod rq;
pub mod wide;

use crate::config::{ModelConfig, ModelKind};
use crate::error::Result;
use crate::params::{GradSlice, Grads, ParamStore};
use crate::Batch;
use cross::{Cross, CrossCache};
use distinct::{DistinctKeys, Gathered};
use embedding::{MultiEmbedding, RowGrad};
use factored::{FieldFactoring, MAX_FACTOR_VOCAB};
use gate::{mixture_accumulate, mixture_backward, Gate, GateCache};
use gatenu::{FieldSplit, GTerm, GateNu, GateNuCache, GateOutput, SplitW1};
use head::{
    task_loss_backward, task_loss_backward_rows, task_loss_forward, DomainTowers, TowerCache,
    Towers,
};
use hmdn_kernels::act::{relu_backward, scaled_sigmoid_mul_backward};
use hmdn_kernels::Real;
use linear::InputGrad;
use mlp::{Mlp, MlpCache};
use profile::{Laps, Phase, PhaseTimes};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use rq::{DeadCodes, ResidualQuantizer, RqCache};
use std::ops::Range;
use wide::{Wide, WideCache};

/// The loss of one forward pass.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossParts<T> {
    /// `Σ_t mean_B BCE(logit_t, y_t)` (0 when the batch has no labels).
    pub task: T,
    /// `L_rq` of the residual quantizer, not multiplied by α (0 without one).
    pub rq: T,
    /// `task + α·rq`, the loss `backward` differentiates.
    pub total: T,
}

/// Batch-level buffers of a [`Model`]: what the embedding gathers, the quantizer and the loss
/// work on (whole batch), plus the row chunks the backbone runs on. Sized once per batch size
/// (they grow when a larger batch arrives and are reused afterwards; a training step never
/// allocates).
#[derive(Clone, Debug, Default)]
struct Buffers<T> {
    /// Rows the buffers can hold.
    cap: usize,
    /// Rows of the last forward.
    bsz: usize,
    /// Row-chunk layout of the last forward: rows per chunk (the last may have fewer) and
    /// number of chunks (see [`chunk_layout`]).
    chunk_rows: usize,
    n_chunks: usize,
    /// Categorical indices, field-major `[F, B]` (the batch's `[B, F]` transposed).
    idx: Vec<u32>,
    /// Model input `x` `[B, d_x]` and its gradient.
    x: Vec<T>,
    dx: Vec<T>,
    /// Distribution embeddings `x_b` `[B, P·e]` and their gradient. `x_b` is not written by
    /// a forward that ran the quantizer per distinct key (`gathered`): only the quantizer
    /// reads it.
    xb: Vec<T>,
    dxb: Vec<T>,
    /// Gate input `g` from the quantizer `[B, gz]` (without a quantizer, g is `x_b` itself) and
    /// `∂L/∂g` `[B, gz]` (the gradient of `x_b` when there is no quantizer).
    g: Vec<T>,
    dg: Vec<T>,
    /// Labels `[B, T]` as `T`.
    labels: Vec<T>,
    /// Whether the last forward loaded labels (a labeled `forward`, not `infer`): `backward`
    /// reads `labels`, which would otherwise be a previous batch's.
    labeled: bool,
    /// Whether every row chunk's caches hold its rows of the last forward (`false` after
    /// [`Model::infer`], whose lanes reuse a few chunks' buffers): what reads them per chunk
    /// (gate statistics, quantizer codes, ReLU patterns) checks it.
    chunk_state: bool,
    /// Logits `[B, T]` and their gradient.
    logits: Vec<T>,
    dlogits: Vec<T>,
    /// Wide part: cache, logit `[B]`, its gradient `[B]`.
    wide: WideCache<T>,
    wide_out: Vec<T>,
    dwide: Vec<T>,
    /// Row chunks (at least `n_chunks`; more when an earlier batch needed them).
    chunks: Vec<Chunk<T>>,
    /// The batch's distinct distribution keys and the quantizer's results on them (hmdn-*
    /// models whose distribution fields have at most [`distinct::MAX_DIST_KEYS`]
    /// combinations).
    distinct: Option<DistinctKeys<T>>,
    /// Whether the last forward's chunks copied the quantizer's results from `distinct`
    /// (else each quantized its own rows).
    gathered: bool,
    /// Turned off by [`Model::set_distinct_keys`]: every row is quantized.
    distinct_off: bool,
    /// PEPNet: each GateNU's first-layer weight split into its g and x columns (EPNet, then
    /// the PPNet gates), refreshed before every forward.
    gatenu_w1: Vec<SplitW1<T>>,
    /// MMoE: the experts' first layer factored over the batch's distinct ids of its
    /// low-cardinality fields ([`factored`]); `None` for other models.
    factor: Option<FieldFactoring<T>>,
    /// Turned off by [`Model::set_field_factoring`].
    factor_off: bool,
    /// Whether the last forward ran factored: `x` and `dx` then hold `x_rest` `[B, k_rest]`
    /// and its gradient instead of the whole x.
    factored: bool,
    /// A factored backward's per-id sums of the experts' layer-0 pre-activation gradients,
    /// one block of [`FieldFactoring::partial_len`] per row chunk (each written by its
    /// chunk; `backward_fields` adds them in chunk order).
    gpart: Vec<T>,
    /// Activation buffers of a training pass's lanes (one per thread), used when a batch
    /// has more chunks than threads: each lane runs chunk after chunk in the same buffers,
    /// which stay in its core's cache, while every chunk keeps its own gradient arena and
    /// quantizer cache (swapped into the lane for the chunk's turn). Turned off by
    /// [`Model::set_training_lanes`].
    lanes: Vec<Chunk<T>>,
    lanes_off: bool,
    /// Rows per piece of an inference pass ([`Model::infer`]), capped at the chunk's rows
    /// where used; 0: the training layout's chunks. See [`Model::set_inference_chunk_rows`].
    infer_rows: usize,
    /// Whether every chunk holds its quantizer cache of the last forward (also after a
    /// training pass on lanes, which keeps no other per-chunk activations).
    rq_state: bool,
}

/// One row chunk of a batch: the backbone's activations for its rows, its own gradient arena
/// over the store's dense tail, and its own phase clock. Chunks run in parallel; their
/// gradients are summed in chunk order afterwards, so the result does not depend on which
/// thread ran which chunk.
#[derive(Clone, Debug, Default)]
struct Chunk<T> {
    /// Rows the buffers can hold.
    cap: usize,
    /// Gradients of the arena's dense tail (`ParamStore::dense_tail()..`), this chunk's rows
    /// only.
    grads: Vec<T>,
    /// Whether `grads` is all zeros: [`sum_chunk_grads`] zeroes each arena as it reads it
    /// (the lines are in cache then), so the next backward need not clear it first.
    arena_clean: bool,
    /// Phase times of this chunk's work when the model is profiled.
    profile: Option<PhaseTimes>,
    b: ChunkBuffers<T>,
}

/// Backbone activations and gradients of one [`Chunk`], `[rows, ·]` each.
#[derive(Clone, Debug, Default)]
struct ChunkBuffers<T> {
    /// Quantizer cache of this chunk's rows (hmdn-*).
    rq: Option<RqCache<T>>,
    /// This chunk's share of `L_rq` in the last forward.
    rq_loss: T,
    /// Gradient of the bottom MLP's output / a tower input `[B, h]`.
    dh: Vec<T>,
    /// Tower scratch.
    tower: TowerCache<T>,
    /// Bottom MLP (`dnn`).
    dnn: MlpCache<T>,
    /// DCN: cross cache, `[x_L, MLP(x)]` `[B, d_x + h]`, its gradient, and `∂L/∂x_L` `[B, d_x]`.
    cross: CrossCache<T>,
    cat: Vec<T>,
    dcat: Vec<T>,
    dxl: Vec<T>,
    /// MMoE: expert caches, per-task mixtures `[T][B, h]`, `∂L/∂mixture` `[B, h]`, per-expert
    /// output gradients `[n][B, h]`, gate caches.
    experts: Vec<MlpCache<T>>,
    mix: Vec<Vec<T>>,
    dmix: Vec<T>,
    dexp: Vec<Vec<T>>,
    gates: Vec<GateCache<T>>,
    /// PEPNet: EPNet cache, `x' = δ_ep ⊙ x` `[B, d_x]` and its gradient, PPNet caches, per
    /// layer post-ReLU `a_l` and scaled `h_l = δ_l ⊙ a_l` `[B, h_l]` with gradients. The
    /// GateNUs read their inputs `[g, sg(x)]` / `[g, sg(x')]` in place
    /// ([`GateNu::forward_split`]); in gradient-check mode the `sg(·)` values are the copies
    /// `sg_x`, `sg_xp` taken by [`Model::set_frozen`] (`sg_frozen`).
    sg_x: Vec<T>,
    sg_xp: Vec<T>,
    sg_frozen: bool,
    ep: GateNuCache<T>,
    xp: Vec<T>,
    dxp: Vec<T>,
    pp: Vec<GateNuCache<T>>,
    a: Vec<Vec<T>>,
    hs: Vec<Vec<T>>,
    dhs: Vec<Vec<T>>,
    da: Vec<T>,
    dpre: Vec<T>,
    /// MMoE factored first layer: the rest columns' weight gradient `[d0, k_rest]` (scratch).
    fdw: Vec<T>,
}

/// Batches below this many rows run as one chunk.
const MIN_SPLIT_ROWS: usize = 128;
/// Rows per chunk aimed at. 512 against 256 measured +3–5% training throughput for hmdn-mmoe
/// and hmdn-pepnet at batches 1024 and 4096 on 2 cores (in-process alternating steps,
/// `benches/RESULTS.md`): half as many arenas to clear and sum, deeper `k` in the
/// weight-gradient GEMMs; 128 was 1–3% slower. A batch of 1024 rows is then 2 chunks: on
/// more cores than chunks the kernels inside each chunk split their work instead.
const CHUNK_TARGET_ROWS: usize = 512;
/// Most chunks per batch (each holds a dense gradient arena, summed after every backward).
pub const MAX_CHUNKS: usize = 16;
/// Rows per piece of an inference pass, by default ([`Model::set_inference_chunk_rows`]). An
/// inference pass keeps no per-chunk state and its rows do not interact, so its lanes may take
/// the batch in smaller pieces than training's chunks: a piece's activations then fit a
/// smaller L2. On an AMD EPYC (Zen 3, 512 KiB L2 per core, AVX2), 256-row pieces against
/// 512-row chunks measured 1.057× (twice) hmdn-pepnet's inference throughput at batch 4096 and
/// 1.048× at 1024, and 1.013× / 0.996× hmdn-mmoe's; 128-row pieces 1.065× and 0.997× at 4096
/// (in-process A/B, `ab.py --switch infer-pieces --infer`; twentieth session,
/// `benches/RESULTS.md`).
pub const INFER_CHUNK_ROWS: usize = 256;

/// `(rows per chunk, chunks)` for a batch of `bsz` rows (no chunk for an empty batch). A function of `bsz` only — never of
/// the thread count — so the gradient sums, and hence the weights, are the same on any number
/// of threads. Batches of at least `MIN_SPLIT_ROWS` (128) get at least two chunks (two cores have
/// work even at batch 256), and ~512 rows per chunk up to 16 chunks.
pub fn chunk_layout(bsz: usize) -> (usize, usize) {
    if bsz < MIN_SPLIT_ROWS {
        return (bsz, usize::from(bsz > 0));
    }
    let n = bsz.div_ceil(CHUNK_TARGET_ROWS).clamp(2, MAX_CHUNKS);
    let rows = bsz.div_ceil(n).next_multiple_of(8);
    (rows, bsz.div_ceil(rows))
}

/// Largest rows per chunk and chunk count of any batch of at most `bsz` rows, so that buffers
/// sized for a batch also fit every smaller one (an epoch's short last batch).
fn chunk_capacity(bsz: usize) -> (usize, usize) {
    let (mut rows, mut n) = (0, 0);
    for b in 1..=bsz {
        let (r, c) = chunk_layout(b);
        rows = rows.max(r);
        n = n.max(c);
    }
    (rows, n)
}

/// Mutable row-major arrays handed out to chunks by rows: `(data, row width)`.
type RowArrays<'a, T, const N: usize> = [(&'a mut [T], usize); N];

/// Runs `f(r0, rows, chunk, arrays)` on every chunk (rows `r0..r0 + rows` of the batch) in
/// parallel, handing each its rows of the `arrays`; splits in halves with `rayon::join`, so
/// no per-call allocation.
fn run_chunks<T: Send, C: Send, F, const N: usize>(
    chunks: &mut [C],
    chunk_rows: usize,
    r0: usize,
    bsz: usize,
    arrays: RowArrays<'_, T, N>,
    f: &F,
) where
    F: Fn(usize, usize, &mut C, RowArrays<'_, T, N>) + Sync,
{
    match chunks.len() {
        0 => {}
        1 => f(r0, chunk_rows.min(bsz - r0), &mut chunks[0], arrays),
        len => {
            let mid = len / 2;
            let split = (mid * chunk_rows).min(bsz - r0);
            let (cl, cr) = chunks.split_at_mut(mid);
            let mut right: RowArrays<'_, T, N> = std::array::from_fn(|_| (&mut [][..], 0));
            let mut k = 0;
            let left = arrays.map(|(a, w)| {
                let (l, r) = a.split_at_mut(split * w);
                right[k] = (r, w);
                k += 1;
                (l, w)
            });
            rayon::join(
                || run_chunks(cl, chunk_rows, r0, bsz, left, f),
                || run_chunks(cr, chunk_rows, r0 + split, bsz, right, f),
            );
        }
    }
}

/// A raw pointer that may cross threads: [`run_lanes`] hands out disjoint row ranges of one
/// array (and a training pass on lanes disjoint chunks) to several threads, which the
/// borrow checker cannot see through an atomic counter.
struct SendPtr<T>(*mut T);
// Not derived: a derive would require `T: Copy`.
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
impl<T> SendPtr<T> {
    /// The pointer (a method, so that a closure captures the whole `SendPtr`, not its field).
    fn ptr(self) -> *mut T {
        self.0
    }

    /// Block `i` of `len` elements of the array this points into.
    ///
    /// # Safety
    /// The block lies inside the array, which outlives `'a`, and no one else touches it
    /// meanwhile (each chunk's block goes to the one thread running that chunk).
    unsafe fn block<'a>(self, i: usize, len: usize) -> &'a mut [T] {
        // SAFETY: as the caller guarantees.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(i * len), len) }
    }
}
// SAFETY: only used by `run_lanes` and its callers, which give each row range (each chunk) to
// exactly one thread.
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above; the pointer is only copied between threads, never dereferenced jointly.
unsafe impl<T: Send> Sync for SendPtr<T> {}

/// Runs `f(r0, rows, lane, arrays)` on every one of `n_chunks` chunks of `chunk_rows` rows
/// like [`run_chunks`], but on `lanes.len()` lanes in parallel that each reuse their one
/// buffer for every chunk they take (chunks are claimed in order from a shared counter, so
/// a slower thread simply takes fewer). The buffers stay hot in the core's cache from chunk
/// to chunk; what a chunk leaves in its buffer is overwritten by the lane's next chunk.
fn run_lanes<T: Send, C: Send, F, const N: usize>(
    lanes: &mut [C],
    n_chunks: usize,
    chunk_rows: usize,
    bsz: usize,
    arrays: RowArrays<'_, T, N>,
    f: &F,
) where
    F: Fn(usize, usize, &mut C, RowArrays<'_, T, N>) + Sync,
{
    for (a, w) in &arrays {
        assert!(
            a.len() >= bsz * w,
            "run_lanes: an array is shorter than the batch"
        );
    }
    let raw = arrays.map(|(a, w)| (SendPtr(a.as_mut_ptr()), w));
    let next = std::sync::atomic::AtomicUsize::new(0);
    fn lane<T: Send, C: Send, F, const N: usize>(
        lanes: &mut [C],
        raw: &[(SendPtr<T>, usize); N],
        next: &std::sync::atomic::AtomicUsize,
        (n_chunks, chunk_rows, bsz): (usize, usize, usize),
        f: &F,
    ) where
        F: Fn(usize, usize, &mut C, RowArrays<'_, T, N>) + Sync,
    {
        match lanes.len() {
            0 => {}
            1 => loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n_chunks {
                    break;
                }
                let r0 = i * chunk_rows;
                let rows = chunk_rows.min(bsz - r0);
                // SAFETY: chunk i is claimed by this lane alone (fetch_add), its rows
                // r0..r0+rows lie inside every array (checked against bsz above), and the
                // arrays outlive this call (borrowed by `run_lanes` for its duration).
                let arrays = raw.map(|(p, w)| {
                    (
                        unsafe { std::slice::from_raw_parts_mut(p.0.add(r0 * w), rows * w) },
                        w,
                    )
                });
                f(r0, rows, &mut lanes[0], arrays);
            },
            len => {
                let (l, r) = lanes.split_at_mut(len / 2);
                let g = (n_chunks, chunk_rows, bsz);
                rayon::join(|| lane(l, raw, next, g, f), || lane(r, raw, next, g, f));
            }
        }
    }
    lane(lanes, &raw, &next, (n_chunks, chunk_rows, bsz), f);
}

/// The Shared-Bottom domain index of every row (column `domain_col` of the field-major `idx`),
/// empty for the other models.
fn domain_rows<'a>(cfg: &ModelConfig, idx: &'a [u32], domain_col: usize, bsz: usize) -> &'a [u32] {
    if cfg.model == ModelKind::SharedBottom {
        &idx[domain_col * bsz..(domain_col + 1) * bsz]
    } else {
        &[]
    }
}

/// How a parallel chunk section runs each chunk's work, fixed on the calling thread.
#[derive(Clone, Copy)]
struct ChunkCtx {
    /// The caller's SIMD path: kernels on the workers use it too (the packed weights' layout).
    path: hmdn_kernels::SimdPath,
    /// At least one chunk per thread: kernels inside a chunk stay on its thread.
    serial: bool,
}

impl ChunkCtx {
    /// Starts a chunk section: resets the chunks' phase clocks (on when the model is
    /// profiled) and reads the calling thread's settings.
    fn start<T>(chunks: &mut [Chunk<T>], profiled: bool) -> Self {
        for c in chunks.iter_mut() {
            c.profile = profiled.then(PhaseTimes::default);
        }
        ChunkCtx {
            path: hmdn_kernels::simd_path(),
            serial: chunks.len() >= rayon::current_num_threads(),
        }
    }

    /// Runs one chunk's work `f` on the current (worker) thread with these settings.
    fn run(self, f: impl FnOnce()) {
        hmdn_kernels::with_path(self.path, || {
            if self.serial {
                hmdn_kernels::par::serial(f);
            } else {
                f();
            }
        });
    }
}

/// The layers a chunk runs (everything between the embeddings / quantizer and the logits),
/// borrowed from a [`Model`].
struct Net<'a> {
    cfg: &'a ModelConfig,
    dnn: Option<&'a Mlp>,
    experts: &'a [Mlp],
    gates: &'a [Gate],
    epnet: Option<&'a GateNu>,
    ppnet: &'a [GateNu],
    cross: Option<&'a Cross>,
    towers: Option<&'a Towers>,
    domain_towers: Option<&'a DomainTowers>,
    /// Residual quantizer (hmdn-*), run per chunk from x_b to g, or its results copied from the
    /// batch's distinct keys.
    rq: Option<&'a ResidualQuantizer>,
    /// First arena element of the dense tail (where chunk gradient arenas start).
    dense_base: usize,
}

impl<'a> Net<'a> {
    /// An empty [`Chunk`] with the caches this net needs.
    fn new_chunk<T: Real>(&self) -> Chunk<T> {
        let nt = self.cfg.tasks.len();
        let b = ChunkBuffers {
            dnn: self.dnn.map_or_else(MlpCache::default, MlpCache::new),
            experts: self.experts.iter().map(MlpCache::new).collect(),
            gates: vec![GateCache::default(); self.gates.len()],
            mix: vec![Vec::new(); if self.experts.is_empty() { 0 } else { nt }],
            dexp: vec![Vec::new(); self.experts.len()],
            pp: vec![GateNuCache::default(); self.ppnet.len()],
            a: vec![Vec::new(); self.ppnet.len()],
            hs: vec![Vec::new(); self.ppnet.len()],
            dhs: vec![Vec::new(); self.ppnet.len()],
            rq: self.rq.map(|q| q.new_cache(0)),
            ..ChunkBuffers::default()
        };
        Chunk {
            b,
            ..Chunk::default()
        }
    }

    /// Sizes `c` for `rows` rows and a dense tail of `dense_len` gradients.
    fn ensure_chunk<T: Real>(&self, c: &mut Chunk<T>, rows: usize, dense_len: usize) {
        if c.grads.len() < dense_len {
            c.grads.resize(dense_len, T::ZERO);
        }
        if rows <= c.cap {
            return;
        }
        let cfg = self.cfg;
        let dx = cfg.x_dim();
        let h = *cfg.hidden.last().expect("validated");
        let b = &mut c.b;
        if let Some(rc) = &mut b.rq {
            rc.ensure_batch(rows);
        }
        grow(&mut b.dh, rows * h);
        b.tower.ensure_batch(rows);
        if self.dnn.is_some() {
            b.dnn.ensure_batch(rows);
        }
        if let Some(cr) = self.cross {
            b.cross.ensure_batch(cr, rows);
            grow(&mut b.cat, rows * (dx + h));
            grow(&mut b.dcat, rows * (dx + h));
            grow(&mut b.dxl, rows * dx);
        }
        for ec in &mut b.experts {
            ec.ensure_batch(rows);
        }
        if let Some(m) = self.experts.first() {
            grow(&mut b.fdw, m.layers[0].d_out * m.d_in());
        }
        for v in b.mix.iter_mut().chain(b.dexp.iter_mut()) {
            grow(v, rows * h);
        }
        if !self.experts.is_empty() {
            grow(&mut b.dmix, rows * h);
        }
        for (g, gc) in self.gates.iter().zip(&mut b.gates) {
            gc.ensure_batch(rows, g.n());
        }
        if let Some(ep) = self.epnet {
            b.ep.ensure_batch(ep, rows);
            grow(&mut b.xp, rows * dx);
            grow(&mut b.dxp, rows * dx);
            let widest = cfg.hidden.iter().copied().max().unwrap_or(0);
            grow(&mut b.da, rows * widest);
            grow(&mut b.dpre, rows * widest);
            for (l, (pn, pc)) in self.ppnet.iter().zip(&mut b.pp).enumerate() {
                pc.ensure_batch(pn, rows);
                let hl = cfg.hidden[l];
                grow(&mut b.a[l], rows * hl);
                grow(&mut b.hs[l], rows * hl);
                grow(&mut b.dhs[l], rows * hl);
            }
        }
        c.cap = rows;
    }
}

/// Rows of a transposing copy per block of [`transpose_indices`]: a block's rows of `cat`
/// (`nf` indices each) stay in L1 while each field's run of `out` is written.
const TRANSPOSE_BLOCK_ROWS: usize = 64;

/// `out[f·bsz + b] = cat[b·nf + f]`: the row-major `[B, F]` indices field-major, in blocks of
/// rows. Row by row, the `F` writes of a row are `B` elements apart; with `B = 1024` that
/// is 4 KiB, so all of a row's writes fall in the same L1 set and evict each other (the
/// row-by-row loop took ~90 µs for 1024 × 26 indices, most of a step's batch-level setup).
///
/// Large batches split the rows over the threads (each reads its own rows of `cat`; the copy
/// is bound by moving `cat` in from L3).
fn transpose_indices(out: &mut [u32], cat: &[u32], bsz: usize, nf: usize) {
    assert!(out.len() >= nf * bsz && cat.len() >= bsz * nf);
    let threads = hmdn_kernels::par::threads();
    if bsz * nf < TRANSPOSE_PAR_MIN || threads < 2 {
        // SAFETY: `out` holds the whole [F, B] array (asserted) and is borrowed mutably.
        unsafe { transpose_rows(SendPtr(out.as_mut_ptr()), cat, bsz, nf, 0..bsz) };
        return;
    }
    let per = bsz.div_ceil(threads).next_multiple_of(TRANSPOSE_BLOCK_ROWS);
    let outp = SendPtr(out.as_mut_ptr());
    (0..bsz.div_ceil(per)).into_par_iter().for_each(|t| {
        let rows = t * per..((t + 1) * per).min(bsz);
        // SAFETY: `out` holds the whole [F, B] array and is borrowed mutably for the call;
        // the tasks' row ranges are disjoint, so no two write the same element.
        unsafe { transpose_rows(outp, cat, bsz, nf, rows) };
    });
}

/// Indices from which [`transpose_indices`] splits the rows over threads.
const TRANSPOSE_PAR_MIN: usize = 1 << 15;

/// [`transpose_indices`] for the batch rows `rows` only.
///
/// # Safety
/// `out` points to an `[nf, bsz]` array that nothing else reads or writes in `rows`' columns
/// meanwhile; `rows` lies within `0..bsz` and `cat` holds `[bsz, nf]`.
unsafe fn transpose_rows(
    out: SendPtr<u32>,
    cat: &[u32],
    bsz: usize,
    nf: usize,
    rows: std::ops::Range<usize>,
) {
    for b0 in rows.clone().step_by(TRANSPOSE_BLOCK_ROWS) {
        let b1 = (b0 + TRANSPOSE_BLOCK_ROWS).min(rows.end);
        let block = &cat[b0 * nf..b1 * nf];
        for f in 0..nf {
            // SAFETY: elements f·bsz + b0 .. f·bsz + b1 of `out`, inside it and ours alone
            // (the caller's guarantee).
            let col =
                unsafe { std::slice::from_raw_parts_mut(out.ptr().add(f * bsz + b0), b1 - b0) };
            for (o, row) in col.iter_mut().zip(block.chunks_exact(nf)) {
                *o = row[f];
            }
        }
    }
}

/// Grows `v` to at least `n` elements (never shrinks, so capacity is kept across batches).
fn grow<T: Real>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::ZERO);
    }
}

/// `dst[b, off..off+w] = src[b, 0..w]` over `bsz` rows (`dst` rows `ds` wide, `src` rows `w`
/// wide).
fn copy_columns<T: Real>(dst: &mut [T], ds: usize, off: usize, src: &[T], w: usize, bsz: usize) {
    if w == 0 {
        return;
    }
    for (drow, srow) in dst.chunks_exact_mut(ds).zip(src.chunks_exact(w)).take(bsz) {
        drow[off..off + w].copy_from_slice(srow);
    }
}

/// `dst[b, 0..w] = src[b, off..off+w]` over `bsz` rows (`src` rows `ss` wide).
fn take_columns<T: Real>(dst: &mut [T], w: usize, src: &[T], ss: usize, off: usize, bsz: usize) {
    if w == 0 {
        return;
    }
    for (drow, srow) in dst.chunks_exact_mut(w).zip(src.chunks_exact(ss)).take(bsz) {
        drow.copy_from_slice(&srow[off..off + w]);
    }
}

/// One of the eight models of SPEC §3, with its parameters and all per-batch buffers.
///
/// Data flow: categorical indices → `x = [E_1[i_1], …, E_F[i_F], numerics]` (and
/// `x_b = [Eb_1[j_1], …]` for the models with a gate) → backbone → one logit per task.
/// Layers are `Option`s / `Vec`s that are empty for models without them.
#[derive(Clone, Debug)]
pub struct Model<T: Real> {
    /// The configuration the model was built from.
    pub cfg: ModelConfig,
    /// Every parameter and its dense gradient.
    pub params: ParamStore<T>,
    /// Tables `embedding.<field>` for every categorical field (→ x).
    pub embedding: MultiEmbedding,
    /// Tables for x_b: `dist_embedding.<field>`, or views of `embedding`'s tables when
    /// `share_dist_embeddings`. `None` for models without a gate.
    pub dist_embedding: Option<MultiEmbedding>,
    /// Wide part (wide-deep).
    pub wide: Option<Wide>,
    /// Residual quantizer (hmdn-*).
    pub rq: Option<ResidualQuantizer>,
    /// The bottom MLP `dnn` (dnn, wide-deep, dcn, shared-bottom, pepnet, hmdn-pepnet).
    pub dnn: Option<Mlp>,
    /// MMoE experts `experts.<i>`.
    pub experts: Vec<Mlp>,
    /// MMoE gates `gates.<t>`, one per task.
    pub gates: Vec<Gate>,
    /// PEPNet EPNet GateNU `epnet`.
    pub epnet: Option<GateNu>,
    /// PEPNet PPNet GateNUs `ppnet.<l>`, one per hidden layer.
    pub ppnet: Vec<GateNu>,
    /// DCN cross network `cross`.
    pub cross: Option<Cross>,
    /// Per-task logit layers `towers.<t>` (all but shared-bottom).
    pub towers: Option<Towers>,
    /// Shared-Bottom's per-task, per-domain logit layers `towers.<t>.<k>`.
    pub domain_towers: Option<DomainTowers>,
    /// Phase timing of `forward` and `backward`: `None` (the default) costs one branch per
    /// phase; `Some` accumulates wall time per [`Phase`] until taken.
    pub profile: Option<PhaseTimes>,
    /// Field index of each distribution field (columns of the index matrix).
    dist_cols: Vec<usize>,
    /// Field index of the Shared-Bottom domain field.
    domain_col: usize,
    /// Width of x_b (P·e; 0 for models without a gate).
    xb_dim: usize,
    /// Width of the gate input g (x_b's, or the quantizer's; 0 without a gate).
    gate_dim: usize,
    /// Row gradients of every embedding table: `embedding` tables, then separate
    /// `dist_embedding` tables, then `wide` tables.
    row_grads: Vec<RowGrad<T>>,
    /// Where each group lives in `row_grads`.
    rg_emb: Range<usize>,
    rg_dist: Range<usize>,
    rg_wide: Range<usize>,
    /// Gradient-check mode: reuse the cached codes and stop-gradient values.
    frozen: bool,
    /// Idle-step counters for dead-code restarts (when enabled).
    dead: Option<DeadCodes>,
    /// Sums of gate weights `[T, n]` and rows summed, from [`Model::record_gates`].
    gate_sums: Vec<f64>,
    gate_rows: u64,
    buf: Buffers<T>,
}

impl<T: Real> Model<T> {
    /// Builds the model described by `cfg` (validated first) with parameters drawn from a
    /// generator seeded by `seed`. Parameters are registered in a fixed order — embedding
    /// tables, distribution tables, wide part, quantizer, backbone, towers — so a seed always
    /// gives the same weights.
    pub fn new(cfg: &ModelConfig, seed: u64) -> Result<Self> {
        cfg.validate()?;
        crate::memory::check_model_memory(cfg, std::mem::size_of::<T>())?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut ps = ParamStore::new();
        let (e, nf) = (cfg.embed_dim, cfg.fields.len());
        let kind = cfg.model;
        let all_cols: Vec<usize> = (0..nf).collect();
        let embedding = MultiEmbedding::new(
            &mut ps,
            "embedding",
            &cfg.fields,
            &all_cols,
            e,
            cfg.embed_init_std,
            &mut rng,
        );
        let dist_cols = if kind.uses_dist() {
            cfg.dist_indices()?
        } else {
            Vec::new()
        };
        let dist_embedding = if !kind.uses_dist() {
            None
        } else if cfg.share_dist_embeddings {
            Some(MultiEmbedding {
                tables: dist_cols.iter().map(|&c| embedding.tables[c]).collect(),
                cols: dist_cols.clone(),
                e,
            })
        } else {
            let fields: Vec<_> = dist_cols.iter().map(|&c| cfg.fields[c].clone()).collect();
            Some(MultiEmbedding::new(
                &mut ps,
                "dist_embedding",
                &fields,
                &dist_cols,
                e,
                cfg.embed_init_std,
                &mut rng,
            ))
        };
        let wide = (kind == ModelKind::WideDeep).then(|| {
            Wide::new(
                &mut ps,
                &cfg.fields,
                &all_cols,
                cfg.embed_init_std,
                &mut rng,
            )
        });
        let rq = if kind.uses_rq() {
            Some(ResidualQuantizer::new(
                &mut ps,
                &cfg.rq,
                dist_cols.len(),
                e,
                &mut rng,
            )?)
        } else {
            None
        };
        let xb_dim = if kind.uses_dist() { cfg.xb_dim() } else { 0 };
        let gate_dim = rq.as_ref().map_or(xb_dim, |q| q.gate_dim());
        let dx = cfg.x_dim();
        let h = *cfg.hidden.last().expect("validated: hidden is non-empty");
        let nt = cfg.tasks.len();

        let (mut dnn, mut experts, mut gates) = (None, Vec::new(), Vec::new());
        let (mut epnet, mut ppnet, mut cross) = (None, Vec::new(), None);
        let (mut towers, mut domain_towers, mut domain_col) = (None, None, 0);
        match kind {
            ModelKind::Dnn | ModelKind::WideDeep => {
                dnn = Some(Mlp::new(&mut ps, "dnn", dx, &cfg.hidden, &mut rng));
                towers = Some(Towers::new(&mut ps, "towers", h, nt, &mut rng));
            }
            ModelKind::Dcn => {
                cross = Some(Cross::new(&mut ps, "cross", dx, cfg.cross_layers, &mut rng));
                dnn = Some(Mlp::new(&mut ps, "dnn", dx, &cfg.hidden, &mut rng));
                towers = Some(Towers::new(&mut ps, "towers", dx + h, nt, &mut rng));
            }
            ModelKind::SharedBottom => {
                domain_col = cfg.domain_index()?;
                let nd = cfg.fields[domain_col].vocab_size;
                dnn = Some(Mlp::new(&mut ps, "dnn", dx, &cfg.hidden, &mut rng));
                domain_towers = Some(DomainTowers::new(&mut ps, "towers", h, nt, nd, &mut rng));
            }
            ModelKind::Mmoe | ModelKind::HmdnMmoe => {
                for i in 0..cfg.n_experts {
                    let p = format!("experts.{i}");
                    experts.push(Mlp::new(&mut ps, &p, dx, &cfg.hidden, &mut rng));
                }
                for t in 0..nt {
                    let p = format!("gates.{t}");
                    gates.push(Gate::new(&mut ps, &p, gate_dim, cfg.n_experts, &mut rng));
                }
                towers = Some(Towers::new(&mut ps, "towers", h, nt, &mut rng));
            }
            ModelKind::Pepnet | ModelKind::HmdnPepnet => {
                let (gh, gamma) = (cfg.gatenu_hidden, cfg.gatenu_gamma);
                let vin = gate_dim + dx;
                epnet = Some(GateNu::new(&mut ps, "epnet", vin, gh, dx, gamma, &mut rng));
                dnn = Some(Mlp::new(&mut ps, "dnn", dx, &cfg.hidden, &mut rng));
                for (l, &hl) in cfg.hidden.iter().enumerate() {
                    let p = format!("ppnet.{l}");
                    ppnet.push(GateNu::new(&mut ps, &p, vin, gh, hl, gamma, &mut rng));
                }
                towers = Some(Towers::new(&mut ps, "towers", h, nt, &mut rng));
            }
        }

        let mut row_grads = embedding.new_row_grads();
        let rg_emb = 0..row_grads.len();
        if let (Some(d), false) = (&dist_embedding, cfg.share_dist_embeddings) {
            row_grads.extend(d.new_row_grads());
        }
        let rg_dist = rg_emb.end..row_grads.len();
        if let Some(w) = &wide {
            row_grads.extend(w.emb.new_row_grads());
        }
        let rg_wide = rg_dist.end..row_grads.len();

        let distinct = match (&rq, &dist_embedding) {
            (Some(q), Some(de)) => {
                let vocab: Vec<usize> = dist_cols
                    .iter()
                    .map(|&c| cfg.fields[c].vocab_size)
                    .collect();
                DistinctKeys::new(&de.cols, &vocab, q)
            }
            _ => None,
        };
        let factor = match cfg.model {
            ModelKind::Mmoe | ModelKind::HmdnMmoe if !cfg.share_dist_embeddings => {
                let vocab: Vec<usize> = cfg.fields.iter().map(|f| f.vocab_size).collect();
                Some(FieldFactoring::new(
                    &embedding,
                    &vocab,
                    cfg.numeric.len(),
                    &experts,
                ))
            }
            _ => None,
        };
        if factor.is_some() {
            // Factored (the default): see `set_field_factoring`.
            for m in &experts {
                ps.unmark_packed(m.layers[0].w);
            }
        }
        let buf = Buffers {
            distinct,
            factor,
            infer_rows: INFER_CHUNK_ROWS,
            ..Buffers::default()
        };
        let dead = rq
            .as_ref()
            .filter(|_| cfg.rq.dead_code_restart_steps > 0)
            .map(|q| q.dead_codes());
        ps.use_huge_pages();
        Ok(Model {
            cfg: cfg.clone(),
            params: ps,
            embedding,
            dist_embedding,
            wide,
            rq,
            dnn,
            experts,
            gates,
            epnet,
            ppnet,
            cross,
            towers,
            domain_towers,
            profile: None,
            dist_cols,
            domain_col,
            xb_dim,
            gate_dim,
            row_grads,
            rg_emb,
            rg_dist,
            rg_wide,
            dead,
            gate_sums: vec![0.0; cfg.tasks.len() * cfg.n_experts],
            gate_rows: 0,
            frozen: false,
            buf,
        })
    }

    /// The layers a chunk runs, borrowed from this model (see [`Net`]).
    fn net(&self) -> Net<'_> {
        Net {
            cfg: &self.cfg,
            dnn: self.dnn.as_ref(),
            experts: &self.experts,
            gates: &self.gates,
            epnet: self.epnet.as_ref(),
            ppnet: &self.ppnet,
            cross: self.cross.as_ref(),
            towers: self.towers.as_ref(),
            domain_towers: self.domain_towers.as_ref(),
            rq: self.rq.as_ref(),
            dense_base: self.params.dense_tail(),
        }
    }

    /// Sizes every buffer for `bsz` rows (a no-op unless `bsz` exceeds every earlier batch),
    /// and for every smaller batch too. `forward` calls it; calling it up front keeps the
    /// model's own buffers from growing in the first step too (the kernels' GEMM packing
    /// buffers still grow on first use).
    pub fn ensure_batch(&mut self, bsz: usize) {
        if bsz <= self.buf.cap {
            return;
        }
        let (rows, n) = chunk_capacity(bsz);
        let dense_len = self.params.len() - self.params.dense_tail();
        let mut chunks = std::mem::take(&mut self.buf.chunks);
        {
            let net = self.net();
            while chunks.len() < n {
                chunks.push(net.new_chunk());
            }
            for c in &mut chunks {
                net.ensure_chunk(c, rows, dense_len);
            }
        }
        let cfg = &self.cfg;
        let (nf, nt, dx) = (cfg.fields.len(), cfg.tasks.len(), cfg.x_dim());
        let (xbd, gz) = (self.xb_dim, self.gate_dim);
        let b = &mut self.buf;
        b.chunks = chunks;
        b.idx.resize(nf * bsz, 0);
        for v in [&mut b.x, &mut b.dx] {
            grow(v, bsz * dx);
        }
        if self.dist_embedding.is_some() {
            for v in [&mut b.xb, &mut b.dxb, &mut b.g, &mut b.dg] {
                grow(v, bsz * xbd.max(gz));
            }
        }
        for v in [&mut b.labels, &mut b.logits, &mut b.dlogits] {
            grow(v, bsz * nt);
        }
        if let Some(w) = &self.wide {
            b.wide.ensure_batch(bsz, w.emb.n_fields());
            grow(&mut b.wide_out, bsz);
            grow(&mut b.dwide, bsz);
        }
        for g in &mut self.row_grads {
            g.reserve(bsz);
        }
        if let Some(ff) = &mut b.factor {
            ff.ensure_batch(bsz);
            grow(&mut b.gpart, n * ff.partial_len());
        }
        if let (Some(dk), Some(q)) = (&mut b.distinct, &self.rq) {
            let hidden: Vec<usize> = self
                .epnet
                .iter()
                .chain(&self.ppnet)
                .map(|g| g.fc1.d_out)
                .collect();
            dk.ensure_batch(bsz, xbd, q, &self.gates, &hidden);
        }
        b.cap = bsz;
    }

    /// Gradient-check mode (SPEC §2): while frozen, `forward` reuses the argmin codes and
    /// every stop-gradient value (`sg(x)`, `sg(x')` in PEPNet's gate inputs, the quantizer's
    /// `sg(·)` terms) cached by the last unfrozen forward, so finite differences see exactly
    /// the function `backward` differentiates. Freeze only after an unfrozen forward on the
    /// same batch.
    pub fn set_frozen(&mut self, frozen: bool) {
        self.frozen = frozen;
        let n = self.buf.n_chunks;
        let (rows, bsz, dx) = (self.buf.chunk_rows, self.buf.bsz, self.cfg.x_dim());
        for (i, c) in self.buf.chunks[..n].iter_mut().enumerate() {
            if self.epnet.is_some() {
                // PEPNet's sg(x) and sg(x') of the chunk's rows, from the last forward.
                let r = rows.min(bsz - i * rows) * dx;
                if frozen {
                    let x = &self.buf.x[i * rows * dx..][..r];
                    c.b.sg_x.clear();
                    c.b.sg_x.extend_from_slice(x);
                    c.b.sg_xp.clear();
                    c.b.sg_xp.extend_from_slice(&c.b.xp[..r]);
                }
                c.b.sg_frozen = frozen;
            }
            if let (Some(q), Some(rc)) = (&self.rq, &mut c.b.rq) {
                if frozen {
                    q.freeze(rc, &self.params);
                } else {
                    rc.unfreeze();
                }
            }
        }
    }

    /// Whether gradient-check mode is on.
    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    /// Logits `[B, T]` of the last forward.
    pub fn logits(&self) -> &[T] {
        &self.buf.logits[..self.buf.bsz * self.cfg.tasks.len()]
    }

    /// Row-sparse gradients of every embedding table from the last backward: `embedding`
    /// tables, then separate `dist_embedding` tables, then `wide` tables.
    pub fn row_grads(&self) -> &[RowGrad<T>] {
        &self.row_grads
    }

    /// Mutable access to the row gradients (e.g. for L2 on the rows seen).
    pub fn row_grads_mut(&mut self) -> &mut [RowGrad<T>] {
        &mut self.row_grads
    }

    /// The quantizer's caches of the last forward, one per row chunk in batch order (codes per
    /// level, for usage statistics); empty without a quantizer.
    pub fn rq_caches(&self) -> impl Iterator<Item = &RqCache<T>> + Clone {
        assert!(
            self.buf.rq_state,
            "rq_caches reads the per-chunk quantizer caches of the last forward, which infer \
             does not keep: use forward or infer_keeping_chunks"
        );
        self.buf.chunks[..self.buf.n_chunks]
            .iter()
            .filter_map(|c| c.b.rq.as_ref())
    }

    /// Panics unless every row chunk holds its part of the last forward (not after
    /// [`Model::infer`], nor after a training pass on lanes, see
    /// [`Model::set_training_lanes`]).
    #[track_caller]
    fn assert_chunk_state(&self, what: &str) {
        assert!(
            self.buf.chunk_state,
            "{what} reads the per-chunk caches of the last forward, which infer and a training \
             pass on lanes do not keep: use forward or infer_keeping_chunks"
        );
    }

    /// Rows of the last forward.
    pub fn batch_rows(&self) -> usize {
        self.buf.bsz
    }

    /// Appends to `out` (after clearing it) whether each ReLU of the last forward was active
    /// (output > 0): every hidden unit of every MLP and GateNU, for every row. Gradient checks
    /// compare it before and after a perturbation: a change means the step crossed a kink of
    /// the piecewise-smooth loss, where finite differences do not measure the derivative.
    /// (Softmax, sigmoid, the cross network and BCE are smooth; argmins are frozen.)
    pub fn relu_pattern(&self, out: &mut Vec<bool>) {
        self.assert_chunk_state("relu_pattern");
        out.clear();
        let b = &self.buf;
        let chunks = &b.chunks[..b.n_chunks];
        let rows = |i: usize| b.chunk_rows.min(b.bsz - i * b.chunk_rows);
        let mut push = |v: &[T], w: usize, r: usize| {
            out.extend(v[..r * w].iter().map(|&a| a > T::ZERO));
        };
        let pepnet = self.epnet.is_some();
        for (i, c) in chunks.iter().enumerate() {
            let (r, cb) = (rows(i), &c.b);
            if let (Some(m), false) = (&self.dnn, pepnet) {
                for (l, lin) in m.layers.iter().enumerate() {
                    push(&cb.dnn.h[l], lin.d_out, r);
                }
            }
            for (m, ec) in self.experts.iter().zip(&cb.experts) {
                for (l, lin) in m.layers.iter().enumerate() {
                    push(&ec.h[l], lin.d_out, r);
                }
            }
            if let (Some(m), Some(ep)) = (&self.dnn, &self.epnet) {
                for (l, lin) in m.layers.iter().enumerate() {
                    push(&cb.a[l], lin.d_out, r);
                }
                push(&cb.ep.a1, ep.fc1.d_out, r);
                for (pn, pc) in self.ppnet.iter().zip(&cb.pp) {
                    push(&pc.a1, pn.fc1.d_out, r);
                }
            }
        }
    }

    /// The parameters (mutable) together with the row gradients of the last backward, for an
    /// optimiser step that reads the latter while updating the former.
    pub fn params_and_row_grads(&mut self) -> (&mut ParamStore<T>, &[RowGrad<T>]) {
        (&mut self.params, &self.row_grads)
    }

    /// Clears the per-epoch gate statistics (the trainer keeps the code-usage histogram,
    /// because it must survive a resume).
    pub fn reset_stats(&mut self) {
        self.gate_sums.fill(0.0);
        self.gate_rows = 0;
    }

    /// Book-keeping after a training step: when `dead_code_restart_steps > 0`, re-seeds codes
    /// idle for that long from this batch's residuals. The restart generator is derived from `(seed, step)`, so a resumed
    /// run makes the same choices.
    pub fn after_step(&mut self, step: u64, seed: u64) {
        let (Some(q), Some(dead)) = (&self.rq, &mut self.dead) else {
            return;
        };
        assert!(
            self.buf.rq_state,
            "after_step needs the chunk caches of a training forward (infer keeps none)"
        );
        let mut rng =
            StdRng::seed_from_u64(seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x6465_6164);
        let chunks = &self.buf.chunks[..self.buf.n_chunks];
        let caches = || chunks.iter().filter_map(|c| c.b.rq.as_ref());
        q.restart_dead_codes_in(&mut self.params, dead, caches, &mut rng);
    }

    /// Idle counters of the dead-code tracker (saved with resumable checkpoints).
    pub fn dead_code_state(&self) -> Option<&[u64]> {
        self.dead.as_ref().map(|d| d.idle.as_slice())
    }

    /// Restores the idle counters saved by [`Model::dead_code_state`].
    pub fn set_dead_code_state(&mut self, idle: &[u64]) {
        if let Some(d) = &mut self.dead {
            if d.idle.len() == idle.len() {
                d.idle.copy_from_slice(idle);
            }
        }
    }

    /// Whether the quantizer may run once per distinct distribution key of a batch and copy
    /// the results to the rows ([`distinct`]; on by default, used when a batch has at most
    /// half as many distinct keys as rows), or must quantize every row (`false`: the
    /// reference the tests compare the gathered pass with). Models without a quantizer, or
    /// with more than [`distinct::MAX_DIST_KEYS`] key combinations, always do the latter.
    pub fn set_distinct_keys(&mut self, on: bool) {
        self.buf.distinct_off = !on;
    }

    /// Whether a training pass ([`Model::forward_backward`]) with more row chunks than
    /// threads may run them on lanes, one per thread, each reusing one set of activation
    /// buffers for chunk after chunk (on by default: the buffers stay in the core's cache),
    /// or must give every chunk its own buffers (`false`). The arithmetic is the same either
    /// way: every chunk keeps its own gradient arena, summed in chunk order. After a pass on
    /// lanes the chunks keep only their quantizer caches, so what reads other per-chunk
    /// activations (`relu_pattern`, `record_gates`) needs a `forward` first.
    pub fn set_training_lanes(&mut self, on: bool) {
        self.buf.lanes_off = !on;
    }

    /// Rows per piece in which [`Model::infer`]'s lanes take a batch: `rows` (rounded up to a
    /// multiple of 8) when that is fewer than a training chunk's rows, else the training
    /// chunks; 0 means the training chunks always. The default is [`INFER_CHUNK_ROWS`]. The
    /// logits are the same bit for bit whatever the pieces: no row's arithmetic depends on the
    /// others in its piece.
    pub fn set_inference_chunk_rows(&mut self, rows: usize) {
        // (Saturating: a request beyond any batch just means the training chunks.)
        self.buf.infer_rows = rows.checked_next_multiple_of(8).unwrap_or(usize::MAX);
    }

    /// Whether MMoE's experts may factor their first layer over the batch's distinct ids of
    /// low-cardinality fields ([`factored`]; on by default, for every field of at most
    /// [`factored::MAX_FACTOR_VOCAB`] ids, in every batch), or must run it on every row's whole x
    /// (`false`: the reference the tests compare the factored pass with). The same switch
    /// covers PEPNet's EPNet first layer (`gatenu::FieldSplit`: the same fields, each id's
    /// term computed for the whole vocabulary), except in a gradient check's frozen pass.
    /// Other models, and MMoE with shared distribution tables, never factor.
    pub fn set_field_factoring(&mut self, on: bool) {
        self.buf.factor_off = !on;
        if self.buf.factor.is_some() {
            // The factored layer reads its own packed copy of W's rest columns: the full W
            // is packed per forward only for the unfactored layer.
            for m in &self.experts {
                let w = m.layers[0].w;
                match (on, self.params.is_marked_packed(w)) {
                    (true, true) => self.params.unmark_packed(w),
                    (false, false) => self.params.mark_packed(w),
                    _ => {}
                }
            }
        }
    }

    /// `FieldFactoring::flops_per_sample` (PEPNet: `FieldSplit::flops_per_sample` of EPNet's
    /// first layer) of the last forward, `None` unless it factored.
    pub fn factored_flops_per_sample(&self) -> Option<(f64, f64)> {
        if !self.buf.factored {
            return None;
        }
        if let Some(ff) = self.buf.factor.as_ref() {
            return Some(ff.flops_per_sample());
        }
        // PEPNet: EPNet's first layer, its x part.
        let fs = self.buf.gatenu_w1.first()?.fields.as_ref()?;
        Some(fs.flops_per_sample(self.cfg.gatenu_hidden, self.buf.bsz))
    }

    /// Whether the last forward factored MMoE's experts' (PEPNet: EPNet's) first layer (see
    /// [`Model::set_field_factoring`]).
    pub fn factored_fields(&self) -> bool {
        self.buf.factored
    }

    /// Whether the last forward copied the quantizer's results from the batch's distinct
    /// distribution keys (see [`Model::set_distinct_keys`]).
    pub fn gathered_distinct_keys(&self) -> bool {
        self.buf.gathered
    }

    /// Rows the quantizer's argmin ran on in the last forward: the batch's distinct
    /// distribution keys when it gathered ([`Model::gathered_distinct_keys`]), else every row
    /// (0 for models without a quantizer, and in a frozen pass, which reuses stored codes).
    pub fn quantized_rows(&self) -> usize {
        match (&self.rq, &self.buf.distinct) {
            (None, _) => 0,
            _ if self.frozen => 0,
            (Some(_), Some(dk)) if self.buf.gathered => dk.rq.n,
            (Some(_), _) => self.buf.bsz,
        }
    }

    /// Whether the model has MMoE gates (whose statistics [`Model::record_gates`] keeps).
    pub fn has_gates(&self) -> bool {
        !self.gates.is_empty()
    }

    /// Adds the gate weights of the last forward to the running means (MMoE models).
    ///
    /// # Panics
    /// After [`Model::infer`], which keeps no per-chunk gates (use
    /// [`Model::infer_keeping_chunks`]).
    #[track_caller]
    pub fn record_gates(&mut self) {
        let n = self.cfg.n_experts;
        let b = &self.buf;
        if self.gates.is_empty() || b.bsz == 0 {
            return;
        }
        self.assert_chunk_state("record_gates");
        // Rows in batch order (chunk by chunk), so the sums do not depend on the split.
        for t in 0..self.gates.len() {
            for (i, c) in b.chunks[..b.n_chunks].iter().enumerate() {
                let rows = b.chunk_rows.min(b.bsz - i * b.chunk_rows);
                for row in c.b.gates[t].probs[..rows * n].chunks_exact(n) {
                    for (e, &p) in row.iter().enumerate() {
                        self.gate_sums[t * n + e] += p.to_f64();
                    }
                }
            }
        }
        self.gate_rows += b.bsz as u64;
    }

    /// Mean gate weight per task and expert since the last reset, as JSON (MMoE models).
    pub fn gate_report(&self) -> Option<serde_json::Value> {
        if self.gates.is_empty() || self.gate_rows == 0 {
            return None;
        }
        let n = self.cfg.n_experts;
        let rows = self.gate_rows as f64;
        let per_task: Vec<Vec<f64>> = self
            .gate_sums
            .chunks_exact(n)
            .map(|c| c.iter().map(|s| s / rows).collect())
            .collect();
        Some(serde_json::json!(per_task))
    }

    /// Initialises the quantizer's codebooks by k-means on this batch's distribution
    /// embeddings (SPEC §2: the first training batch). No-op without a quantizer. Allocates
    /// (once, before training).
    pub fn kmeans_init<R: Rng>(&mut self, batch: &Batch, rng: &mut R) {
        if self.rq.is_none() {
            return;
        }
        let bsz = batch.rows;
        self.ensure_batch(bsz);
        self.load_indices(batch);
        let nb = bsz * self.cfg.xb_dim();
        let d = self
            .dist_embedding
            .as_ref()
            .expect("a quantizer implies x_b");
        d.forward(
            &mut self.buf.xb,
            self.cfg.xb_dim(),
            0,
            &self.buf.idx,
            &self.params,
            bsz,
        );
        let q = self.rq.as_ref().expect("checked above");
        q.kmeans_init(
            &mut self.params,
            &self.buf.xb[..nb],
            bsz,
            self.cfg.rq.kmeans_iters,
            rng,
        );
    }

    /// Checks the batch's shapes and transposes its indices into `buf.idx` `[F, B]`.
    ///
    /// # Panics
    /// If the batch's slices do not match the configuration (a programmer error: the batcher
    /// builds batches from the same schema).
    #[track_caller]
    fn load_indices(&mut self, batch: &Batch) {
        let (bsz, nf) = (batch.rows, self.cfg.fields.len());
        assert_eq!(batch.cat.len(), bsz * nf, "batch.cat is not [B, F]");
        assert_eq!(
            batch.num.len(),
            bsz * self.cfg.numeric.len(),
            "batch.num is not [B, N]"
        );
        transpose_indices(
            &mut self.buf.idx[..nf * bsz],
            &batch.cat[..bsz * nf],
            bsz,
            nf,
        );
    }

    /// Runs the forward pass on `batch`, caching what `backward` needs; computes the loss
    /// when the batch has labels (`task` is 0 otherwise).
    ///
    /// Row chunks run in parallel ([`chunk_layout`]), each looking up its rows' embeddings,
    /// then running the quantizer, the backbone and the towers; the wide part and the loss
    /// run on the whole batch.
    ///
    /// # Panics
    /// If the batch does not match the configuration (shapes, index out of a vocabulary), or
    /// a frozen forward runs on another batch size than the unfrozen one before it.
    #[track_caller]
    pub fn forward(&mut self, batch: &Batch) -> LossParts<T> {
        self.forward_impl(batch, true, false, false)
    }

    /// The forward pass for predictions only: the same logits as [`Model::forward`] (bit for
    /// bit), without the losses: labels are ignored and the quantizer's `L_rq` (a pass over
    /// every level's rows) is not computed. `backward` must not follow it.
    ///
    /// The row chunks run on one lane per thread, each lane reusing one chunk's buffers for
    /// every chunk it takes, so they stay in the core's cache; no per-chunk state is kept
    /// (see [`Model::infer_keeping_chunks`]).
    ///
    /// # Panics
    /// As [`Model::forward`].
    #[track_caller]
    pub fn infer(&mut self, batch: &Batch) {
        // Short parallel sections: see `keep_workers_awake`.
        hmdn_kernels::par::keep_workers_awake(|| {
            self.forward_impl(
                &Batch {
                    labels: &[],
                    ..*batch
                },
                false,
                true,
                false,
            )
        });
    }

    /// [`Model::infer`] keeping every row chunk's caches of the batch, for what reads them
    /// afterwards: [`Model::record_gates`], [`Model::rq_caches`], [`Model::relu_pattern`].
    /// (`infer` runs its chunks on a few lanes that reuse their buffers, which is faster at
    /// large batches but leaves no per-chunk state.) The logits are the same bit for bit.
    ///
    /// # Panics
    /// As [`Model::forward`].
    #[track_caller]
    pub fn infer_keeping_chunks(&mut self, batch: &Batch) {
        self.forward_impl(
            &Batch {
                labels: &[],
                ..*batch
            },
            false,
            false,
            false,
        );
    }

    /// [`Model::forward`] followed by [`Model::backward`] on the same batch, with each row
    /// chunk's backward right after its own forward, while its activations are still in the
    /// core's cache (and one parallel section instead of two). The loss, the gradients and
    /// the row gradients are those of `forward` then `backward`, bit for bit.
    ///
    /// # Panics
    /// As [`Model::forward`]; also if the batch has no labels.
    #[track_caller]
    pub fn forward_backward(&mut self, batch: &Batch) -> LossParts<T> {
        let nt = self.cfg.tasks.len();
        assert_eq!(
            batch.labels.len(),
            batch.rows * nt,
            "forward_backward needs labels [B, T]"
        );
        let loss = self.forward_impl(batch, true, false, true);
        self.backward_tail(batch.rows);
        loss
    }

    /// [`Model::forward`], computing `L_rq` only when `losses` is set; with `lanes`, the
    /// chunks run on [`run_lanes`] (no losses, no per-chunk state kept); with `fused`, each
    /// chunk also runs its backward (then [`Model::backward_tail`] finishes the backward).
    #[track_caller]
    fn forward_impl(
        &mut self,
        batch: &Batch,
        losses: bool,
        lanes: bool,
        fused: bool,
    ) -> LossParts<T> {
        debug_assert!(!(losses && lanes), "lanes keep no per-chunk loss");
        debug_assert!(
            !fused || (losses && !lanes),
            "a fused pass is a training pass"
        );
        let bsz = batch.rows;
        let nt = self.cfg.tasks.len();
        assert!(
            batch.labels.is_empty() || batch.labels.len() == bsz * nt,
            "batch.labels is not [B, T]"
        );
        if self.frozen {
            assert_eq!(
                bsz, self.buf.bsz,
                "a frozen forward must reuse the batch size"
            );
        }
        self.ensure_batch(bsz);
        let mut laps = Laps::start(&self.profile);
        // The weights may have changed since the last forward (optimiser step, checkpoint
        // load, a gradient check's perturbation): refresh the packed copies the layers'
        // forward GEMMs read.
        self.params.refresh_packed();
        if let Some(ep) = &self.epnet {
            let gz = self.gate_dim;
            let b = &mut self.buf;
            if b.gatenu_w1.is_empty() {
                b.gatenu_w1
                    .resize_with(1 + self.ppnet.len(), SplitW1::default);
                // EPNet reads sg(x): its first layer can be factored by field.
                let vocab: Vec<usize> = self.cfg.fields.iter().map(|f| f.vocab_size).collect();
                let (emb, dx) = (&self.embedding, self.cfg.x_dim());
                b.gatenu_w1[0].fields = FieldSplit::new(emb, &vocab, dx, MAX_FACTOR_VOCAB);
            }
            // EPNet's per-id terms only when this forward runs it factored (as decided
            // below: not with factoring off, not in a frozen pass).
            let fields = !b.factor_off && !self.frozen;
            let ps = &self.params;
            let ppnet = &self.ppnet;
            let refresh = |(i, sp): (usize, &mut SplitW1<T>)| {
                let gate = if i == 0 { ep } else { &ppnet[i - 1] };
                sp.refresh(gate, gz, ps, fields);
            };
            // The gates' copies and packs are independent: one task each, when there is
            // enough to copy to be worth a fork (not for tiny test models, whose forward
            // then stays on the calling thread).
            let work: usize = std::iter::once(ep)
                .chain(ppnet.iter())
                .map(|g| g.fc1.d_in * g.fc1.d_out)
                .sum();
            if work >= 1 << 15 && hmdn_kernels::par::threads() > 1 {
                b.gatenu_w1.par_iter_mut().enumerate().for_each(refresh);
            } else {
                b.gatenu_w1.iter_mut().enumerate().for_each(refresh);
            }
        }
        laps.lap(&mut self.profile, Phase::Other);
        self.load_indices(batch);
        let (chunk_rows, n_chunks) = chunk_layout(bsz);
        self.buf.bsz = bsz;
        self.buf.chunk_rows = chunk_rows;
        self.buf.n_chunks = n_chunks;
        if fused {
            self.params.zero_grads(false);
        }
        let dense_base = self.params.dense_tail();
        let Model {
            cfg,
            params: ps,
            embedding,
            dist_embedding,
            wide,
            rq,
            dnn,
            experts,
            gates,
            epnet,
            ppnet,
            cross,
            towers,
            domain_towers,
            domain_col,
            xb_dim,
            gate_dim,
            frozen,
            profile,
            buf: b,
            ..
        } = self;
        if let Some(p) = profile.as_mut() {
            p.forwards += 1;
            p.backwards += u64::from(fused);
        }
        laps.lap(profile, Phase::Other);
        let (nf, e, dx) = (cfg.fields.len(), cfg.embed_dim, cfg.x_dim());
        let (xbd, gz) = (*xb_dim, *gate_dim);
        let idx = &b.idx[..nf * bsz];

        // Row chunks in parallel, each: its rows of x = [E_1[i_1], …, E_F[i_F], numerics]
        // [B, d_x] and of x_b (the embedding lookups, written just before the chunk's layers
        // read them, so they are still in the core's cache), then the quantizer (x_b → g;
        // otherwise the gate input g is x_b itself), the backbone and the towers.
        let nn = cfg.numeric.len();
        let (embedding, dist_embedding) = (&*embedding, dist_embedding.as_ref());
        // MMoE: the experts' first layer factored over the batch's distinct ids of its
        // low-cardinality fields; x then holds only the other fields' columns (x_rest).
        //
        // The quantizer runs once per distinct distribution key of the batch, when they are
        // few (the chunks then copy each row's results); not in a frozen pass, which reuses
        // every chunk's stored codes and sg(·) values. Without a profile to attribute their
        // time, it runs alongside the factored layer's preparation (both read only the
        // weights and the indices, and write their own buffers): the preparation's two
        // halves are uneven, and the quantizer fills the gap.
        let want_distinct = rq.is_some() && dist_embedding.is_some() && !*frozen && !b.distinct_off;
        let want_factor = !b.factor_off;
        let prep_together = profile.is_none()
            && want_distinct
            && want_factor
            && b.factor.is_some()
            && b.distinct.is_some()
            && bsz >= embedding::PAR_MIN_ROWS
            && hmdn_kernels::par::threads() > 1;
        // An inference pass quantizes every combination (few enough), once per version of
        // the weights: later batches then only look up their rows' keys.
        let quantize = |dk: &mut DistinctKeys<T>, splits: &[SplitW1<T>]| -> Option<usize> {
            let (q, de) = (rq.as_ref()?, dist_embedding?);
            if !losses {
                if let Some(n_all) = dk.assign_all(idx, bsz) {
                    dk.quantize_all(q, de, ps, gates, splits);
                    return Some(n_all);
                }
            }
            let n_u = dk.assign(idx, bsz)?;
            dk.quantize(q, de, idx, bsz, n_u, ps, losses, gates, splits);
            Some(n_u)
        };
        let mut quantized: Option<Option<usize>> = None;
        let fac: Option<&FieldFactoring<T>> = match b.factor.as_mut() {
            Some(ff) if want_factor => {
                let on = match b.distinct.as_mut() {
                    Some(dk) if prep_together => {
                        let splits = &b.gatenu_w1;
                        let (on, n_u) = rayon::join(
                            || ff.prepare(embedding, experts, idx, bsz, ps, !losses),
                            || quantize(dk, splits),
                        );
                        quantized = Some(n_u);
                        on
                    }
                    _ => ff.prepare(embedding, experts, idx, bsz, ps, !losses),
                };
                on.then_some(&*ff)
            }
            _ => None,
        };
        // EPNet's first layer by field (not in a gradient check's frozen pass: its sg(x) is a
        // copy there, while the factored terms read the tables).
        let epnet_fields = match b.gatenu_w1.first_mut().and_then(|s| s.fields.as_mut()) {
            Some(fs) if !b.factor_off && !*frozen => {
                fs.prepare_rows(idx, &embedding.cols, bsz);
                true
            }
            _ => false,
        };
        b.factored = fac.is_some() || epnet_fields;
        let xw = fac.map_or(dx, |f| f.k_rest());
        // A fused pass's chunks write their per-id gradient sums into their own blocks.
        let plen = match fac {
            Some(f) if fused => f.partial_len(),
            _ => 0,
        };
        assert!(b.gpart.len() >= n_chunks * plen);
        let gpart = SendPtr(b.gpart.as_mut_ptr());
        laps.lap(profile, Phase::Backbone);
        let net = Net {
            cfg,
            dnn: dnn.as_ref(),
            experts,
            gates,
            epnet: epnet.as_ref(),
            ppnet,
            cross: cross.as_ref(),
            towers: towers.as_ref(),
            domain_towers: domain_towers.as_ref(),
            rq: rq.as_ref(),
            dense_base,
        };
        // Labels, and the wide logit (added to every task's logit by each chunk), first:
        // a fused pass needs both before a chunk's backward.
        b.labeled = batch.labels.len() == bsz * nt;
        if b.labeled {
            for (o, &y) in b.labels.iter_mut().zip(&batch.labels[..bsz * nt]) {
                *o = T::from_f64(y as f64);
            }
        }
        let wide_out: &[T] = match wide {
            Some(w) => {
                w.forward(&mut b.wide_out, &mut b.wide, idx, ps, bsz);
                laps.lap(profile, Phase::Embeddings);
                &b.wide_out[..bsz]
            }
            None => &[],
        };
        // The quantizer on the distinct keys (see above), if it did not run already.
        let distinct = match b.distinct.as_mut() {
            Some(dk) if want_distinct => {
                let n_u = match quantized {
                    Some(n_u) => n_u,
                    None => quantize(dk, &b.gatenu_w1),
                };
                n_u.map(|_| &*dk)
            }
            _ => None,
        };
        b.gathered = distinct.is_some();
        if b.gathered {
            laps.lap(profile, Phase::Rq);
        }
        let labels = &b.labels[..if b.labeled { bsz * nt } else { 0 }];
        let dom = domain_rows(cfg, idx, *domain_col, bsz);
        let splits: &[SplitW1<T>] = &b.gatenu_w1;
        // A training pass with more chunks than threads runs them on lanes (see
        // `Model::set_training_lanes`); not a gradient check's frozen pass, whose chunks hold
        // their stored values.
        let n_threads = rayon::current_num_threads();
        let train_lanes =
            (fused && !*frozen && !b.lanes_off && n_chunks > n_threads).then_some(n_threads);
        if let Some(n) = train_lanes {
            while b.lanes.len() < n {
                b.lanes.push(net.new_chunk());
            }
            for l in &mut b.lanes[..n] {
                net.ensure_chunk(l, chunk_rows, 0);
                l.profile = profile.is_some().then(PhaseTimes::default);
            }
        }
        // EPNet's factored first layer sizes its buffers here, for every chunk and lane
        // alike (a chunk that ran on a lane last time must not grow them in a later pass).
        if let (Some(ep), Some(fs), true) = (epnet.as_ref(), splits[..].first(), epnet_fields) {
            let fs = fs
                .fields
                .as_ref()
                .expect("epnet_fields implies a FieldSplit");
            let lanes = &mut b.lanes[..train_lanes.unwrap_or(0)];
            for c in b.chunks[..n_chunks].iter_mut().chain(lanes) {
                c.b.ep.ensure_split(fs, ep.fc1.d_out, chunk_rows);
            }
        }
        let chunks = &mut b.chunks[..n_chunks];
        let ctx = ChunkCtx::start(chunks, profile.is_some());
        let psr = &*ps;
        let alpha = T::from_f64(cfg.rq.alpha);
        let has_rq = rq.is_some();
        let gq: &mut [T] = if has_rq {
            &mut b.g[..bsz * gz]
        } else {
            &mut []
        };
        let gqw = if has_rq { gz } else { 0 };
        // The backward's per-row outputs, only for a fused pass (else empty).
        let (dlw, dxw, dgw) = if fused { (nt, xw, gz) } else { (0, 0, 0) };
        let dxbw = if fused && has_rq { xbd } else { 0 };
        let arrays = [
            (&mut b.logits[..bsz * nt], nt),
            (gq, gqw),
            (&mut b.x[..bsz * xw], xw),
            (&mut b.xb[..bsz * xbd], xbd),
            (&mut b.dlogits[..bsz * dlw], dlw),
            (&mut b.dx[..bsz * dxw], dxw),
            (&mut b.dg[..bsz * dgw], dgw),
            (&mut b.dxb[..bsz * dxbw], dxbw),
        ];
        let num = &batch.num[..bsz * nn];
        let per_chunk = |r0: usize, rows: usize, c: &mut Chunk<T>, a: RowArrays<'_, T, 8>| {
            let [(logits, _), (gq, _), (xr, _), (xbr, _), (dl, _), (dxr, _), (dgr, _), (dxbr, _)] =
                a;
            // SAFETY: chunk r0 / chunk_rows (< n_chunks) is run once, and its block is
            // inside `gpart` (asserted above), which is not touched otherwise meanwhile. An
            // inference pass on pieces may run two pieces of one chunk at once, but it is
            // never fused, so `plen` is 0 and every block is empty.
            let part = unsafe { gpart.block(r0 / chunk_rows, plen) };
            let dr = if dom.is_empty() {
                dom
            } else {
                &dom[r0..r0 + rows]
            };
            ctx.run(|| {
                let mut laps = Laps::start(&c.profile);
                let nr = &num[r0 * nn..(r0 + rows) * nn];
                if let Some(ff) = fac {
                    ff.gather_rest(xr, embedding, idx, bsz, r0, rows, nr, psr);
                } else {
                    embedding.forward_rows(xr, dx, 0, idx, bsz, r0, rows, psr);
                    if nn > 0 {
                        for (xrow, nrow) in xr.chunks_exact_mut(dx).zip(nr.chunks_exact(nn)) {
                            for (o, &v) in xrow[nf * e..].iter_mut().zip(nrow) {
                                *o = T::from_f64(v as f64);
                            }
                        }
                    }
                }
                // x_b's only reader is the quantizer: a chunk that copies its results from
                // the distinct keys (whose x_b `quantize` looked up) needs no rows of it.
                if let (Some(de), None) = (dist_embedding, distinct) {
                    de.forward_rows(xbr, xbd, 0, idx, bsz, r0, rows, psr);
                }
                laps.lap(&mut c.profile, Phase::Embeddings);
                let cr = ChunkRows {
                    rows,
                    batch_rows: bsz,
                };
                let gather = distinct.map(|dk| dk.chunk(r0, rows));
                let mode = ForwardMode {
                    losses,
                    keep: !lanes,
                    epnet_r0: epnet_fields.then_some(r0),
                };
                let fr = fac.map(|f| (f, r0));
                chunk_forward(
                    &net, psr, c, xr, xbr, gq, dr, logits, cr, gather, splits, mode, fr,
                );
                let mut laps = Laps::start(&c.profile);
                if !wide_out.is_empty() {
                    for (lr, &wv) in logits.chunks_exact_mut(nt).zip(&wide_out[r0..r0 + rows]) {
                        for l in lr {
                            *l += wv;
                        }
                    }
                }
                if !fused {
                    laps.lap(&mut c.profile, Phase::Embeddings);
                    return;
                }
                // ∂L/∂logits = (σ(logit) − y)/B for this chunk's rows, then its backward.
                dl.fill(T::ZERO);
                let lab = &labels[r0 * nt..(r0 + rows) * nt];
                task_loss_backward_rows(dl, logits, lab, rows, nt, bsz);
                laps.lap(&mut c.profile, Phase::Head);
                let io = ChunkIo {
                    x: xr,
                    g: if has_rq { &*gq } else { &*xbr },
                    xb: xbr,
                    dom: dr,
                    dx: dxr,
                    dg: dgr,
                    dxb: dxbr,
                    splits,
                    fac: fr,
                    part,
                    epnet_r0: epnet_fields.then_some(r0),
                };
                chunk_backward(&net, psr, c, io, dl, rows, bsz, alpha);
            });
        };
        if lanes {
            // Pieces no larger than the chunks, so every chunk-sized buffer holds one, and
            // `r0 / chunk_rows` (above) still names a chunk; its `gpart` block is empty here
            // (`plen` is 0 outside a fused pass), so pieces sharing a chunk share nothing.
            debug_assert_eq!(plen, 0, "an inference pass writes no per-id sums");
            let piece_rows = match b.infer_rows {
                0 => chunk_rows,
                r => r.min(chunk_rows),
            };
            let n_pieces = bsz.div_ceil(piece_rows);
            let n_lanes = rayon::current_num_threads().min(n_pieces).min(n_chunks);
            run_lanes(
                &mut chunks[..n_lanes],
                n_pieces,
                piece_rows,
                bsz,
                arrays,
                &per_chunk,
            );
        } else if let Some(n_lanes) = train_lanes {
            // Chunk i's own state (gradient arena, quantizer cache) goes into the lane for
            // its turn and back afterwards, with its share of L_rq.
            let kept = SendPtr(chunks.as_mut_ptr());
            let per_lane = |r0: usize, rows: usize, lane: &mut Chunk<T>, a: RowArrays<'_, T, 8>| {
                // SAFETY: `run_lanes` hands chunk r0 / chunk_rows (< n_chunks) to one lane
                // only, and `chunks` is borrowed mutably for the whole call.
                let k = unsafe { &mut *kept.ptr().add(r0 / chunk_rows) };
                let swap = |lane: &mut Chunk<T>, k: &mut Chunk<T>| {
                    std::mem::swap(&mut lane.grads, &mut k.grads);
                    std::mem::swap(&mut lane.arena_clean, &mut k.arena_clean);
                    std::mem::swap(&mut lane.b.rq, &mut k.b.rq);
                };
                swap(lane, k);
                per_chunk(r0, rows, lane, a);
                swap(lane, k);
                k.b.rq_loss = lane.b.rq_loss;
            };
            let lanes = &mut b.lanes[..n_lanes];
            run_lanes(lanes, n_chunks, chunk_rows, bsz, arrays, &per_lane);
        } else {
            run_chunks(chunks, chunk_rows, 0, bsz, arrays, &per_chunk);
        }
        b.chunk_state = !lanes && train_lanes.is_none();
        b.rq_state = !lanes;
        match train_lanes {
            Some(n) => laps.lap_shared(
                profile,
                b.lanes[..n].iter().filter_map(|c| c.profile.as_ref()),
            ),
            None => laps.lap_shared(profile, chunks.iter().filter_map(|c| c.profile.as_ref())),
        }
        let rq_loss = if lanes {
            T::ZERO
        } else {
            chunks.iter().fold(T::ZERO, |s, c| s + c.b.rq_loss)
        };

        let logits = &b.logits[..bsz * nt];
        let rq_part = if has_rq { rq_loss } else { T::ZERO };
        let task = if b.labeled {
            task_loss_forward(logits, &b.labels, bsz, nt)
        } else {
            T::ZERO
        };
        laps.lap(profile, Phase::Head);
        LossParts {
            task,
            rq: rq_part,
            total: task + alpha * rq_part,
        }
    }

    /// The backward after its chunk section (shared by [`Model::backward`] and
    /// [`Model::forward_backward`]): the chunk arenas summed into `params.grads` in chunk
    /// order, then the wide part and the embedding tables' row gradients, which need the
    /// whole batch's `∂L/∂logits`, `∂L/∂x` and `∂L/∂x_b` (the main tables' alongside the sum
    /// when nothing is factored).
    fn backward_tail(&mut self, bsz: usize) {
        let mut laps = Laps::start(&self.profile);
        let dense_base = self.params.dense_tail();
        let nt = self.cfg.tasks.len();
        let Model {
            cfg,
            params: ps,
            embedding,
            dist_embedding,
            wide,
            rq,
            dist_cols,
            xb_dim,
            row_grads,
            rg_emb,
            rg_dist,
            rg_wide,
            profile,
            experts,
            buf: b,
            ..
        } = self;
        let (nf, e, dx) = (cfg.fields.len(), cfg.embed_dim, cfg.x_dim());
        let xbd = *xb_dim;
        // Without MMoE's factored layer (whose backward adds into the dense gradients) and
        // without x_b sharing the field tables (its gradient is added into ∂L/∂x below), the
        // tables' row gradients read only ∂L/∂x and the indices: they run alongside the sum
        // of the chunk arenas, which is short and memory-bound.
        let factored = b.factor.is_some() && b.factored;
        let shared_xb = dist_embedding.is_some() && cfg.share_dist_embeddings;
        let par = bsz >= embedding::PAR_MIN_ROWS && hmdn_kernels::par::threads() > 1;
        let emb_alongside = par && !factored && !shared_xb;
        // The factored layer's row gradients do not touch the parameters: with nothing else
        // adding into the dense gradients in between (no wide part), the chunk arenas are
        // summed alongside them below (the same additions in the same order).
        let sum_alongside_fields = par && factored && wide.is_none();
        if emb_alongside {
            let rg = &mut row_grads[rg_emb.clone()];
            let (dxs, idx) = (&b.dx[..bsz * dx], &b.idx[..nf * bsz]);
            let chunks = &mut b.chunks[..b.n_chunks];
            rayon::join(
                || sum_chunk_grads(&mut ps.grads[dense_base..], chunks),
                || embedding.backward(rg, dxs, dx, 0, idx, bsz),
            );
            laps.lap(profile, Phase::Embeddings);
        } else if !sum_alongside_fields {
            sum_chunk_grads(&mut ps.grads[dense_base..], &mut b.chunks[..b.n_chunks]);
            laps.lap(profile, Phase::Other);
        }
        let idx = &b.idx[..nf * bsz];
        let dlogits = &b.dlogits[..bsz * nt];

        if let Some(w) = wide {
            // logit_t = tower_t + wide for every task: ∂L/∂wide = Σ_t ∂L/∂logit_t.
            for (d, lr) in b.dwide[..bsz].iter_mut().zip(dlogits.chunks_exact(nt)) {
                *d = lr.iter().fold(T::ZERO, |a, &v| a + v);
            }
            let rg = &mut row_grads[rg_wide.clone()];
            w.backward(rg, &mut b.wide, ps, &b.dwide[..bsz], idx, bsz);
            laps.lap(profile, Phase::Embeddings);
        }

        // Distribution embeddings: ∂L/∂x_b through the quantizer (or g = x_b directly).
        // Their own tables' row gradients run alongside the factored fields' below, when
        // those run alongside the arena sum (the sum is the shorter side).
        let dist_alongside =
            sum_alongside_fields && dist_embedding.is_some() && !cfg.share_dist_embeddings;
        // With a quantizer, the chunks already ran its backward into dxb.
        let dxb: &[T] = if rq.is_some() {
            &b.dxb[..bsz * xbd]
        } else {
            &b.dg[..bsz * xbd]
        };
        if let Some(de) = dist_embedding.as_ref().filter(|_| !dist_alongside) {
            if cfg.share_dist_embeddings {
                // x_b reuses E_p: its gradient joins that field's block of ∂L/∂x.
                for (p, &c) in dist_cols.iter().enumerate() {
                    for (dr, sr) in
                        b.dx.chunks_exact_mut(dx)
                            .zip(dxb.chunks_exact(xbd))
                            .take(bsz)
                    {
                        for (d, &s) in dr[c * e..(c + 1) * e]
                            .iter_mut()
                            .zip(&sr[p * e..(p + 1) * e])
                        {
                            *d += s;
                        }
                    }
                }
            } else {
                de.backward(&mut row_grads[rg_dist.clone()], dxb, xbd, 0, idx, bsz);
            }
        }
        match b.factor.as_mut().filter(|_| b.factored) {
            Some(ff) => {
                // The factored fields' row gradients and W columns from the per-id sums,
                // the other fields' row gradients from ∂L/∂x_rest.
                let dx_rest = &b.dx[..bsz * ff.k_rest()];
                let nc = b.n_chunks;
                let rg_all = &mut row_grads[..];
                if sum_alongside_fields {
                    let (grads, chunks, gpart) = (
                        &mut ps.grads[dense_base..],
                        &mut b.chunks[..nc],
                        &mut b.gpart,
                    );
                    let (rg_fields, rg_rest) = rg_all.split_at_mut(rg_dist.start);
                    let rg = &mut rg_fields[rg_emb.clone()];
                    let rg_d = &mut rg_rest[..rg_dist.len()];
                    rayon::join(
                        || {
                            sum_chunk_grads(grads, chunks);
                            if let Some(de) = dist_embedding.as_ref().filter(|_| dist_alongside) {
                                de.backward(rg_d, dxb, xbd, 0, idx, bsz);
                            }
                        },
                        || ff.field_row_grads(embedding, gpart, nc, dx_rest, idx, rg),
                    );
                    ff.add_field_weight_grads(experts, ps);
                } else {
                    let rg = &mut rg_all[rg_emb.clone()];
                    ff.backward_fields(experts, embedding, &mut b.gpart, nc, dx_rest, idx, ps, rg);
                }
            }
            None if emb_alongside => {}
            None => embedding.backward(
                &mut row_grads[rg_emb.clone()],
                &b.dx[..bsz * dx],
                dx,
                0,
                idx,
                bsz,
            ),
        }
        laps.lap(profile, Phase::Embeddings);
    }

    /// Zeroes the dense gradients, then accumulates the gradients of the last forward's total
    /// loss: dense ones into `params.grads`, embedding tables' into [`Model::row_grads`].
    ///
    /// Each row chunk accumulates into its own arena; the arenas are then added to
    /// `params.grads` in chunk order (a fixed order, so any thread count gives the same sums).
    ///
    /// # Panics
    /// If `batch` is not the batch of the last forward (rows differ) or has no labels.
    #[track_caller]
    pub fn backward(&mut self, batch: &Batch) {
        // Derivation: the mirror image of `forward`, top to bottom. Each layer's backward
        // carries its own derivation; what is added here is the wiring:
        // * ∂L/∂logit = (σ(logit) − y)/B (task loss) — every tower, the wide logit and the
        //   domain towers start from it; Wide&Deep adds the wide logit to every task, so the
        //   wide part receives Σ_t ∂L/∂logit_t.
        // * Concatenations split their gradient (DCN: [x_L, MLP(x)]); values used several
        //   times sum their gradients (x feeds the MLP / every expert / the cross network /
        //   EPNet's product; g feeds every gate or GateNU).
        // * PEPNet's GateNU inputs are [g, sg(x)] and [g, sg(x')]: only their g columns pass
        //   gradient on.
        // * ∂L/∂g reaches x_b directly (g = x_b) or through the quantizer, whose backward
        //   also adds α·∂L_rq/∂(x_b, codebooks).
        // * Shared distribution tables: x_b's gradient joins ∂L/∂x at its field's columns
        //   before the single scatter into row gradients.
        // * Row chunks: every parameter gradient is a sum over rows, so it is the sum of the
        //   chunks' sums; ∂L/∂x and ∂L/∂g are per row, each chunk writes its own rows.
        let bsz = batch.rows;
        let nt = self.cfg.tasks.len();
        assert_eq!(
            bsz, self.buf.bsz,
            "backward needs the batch of the last forward"
        );
        assert_eq!(batch.labels.len(), bsz * nt, "backward needs labels [B, T]");
        assert!(
            self.buf.labeled,
            "backward needs a forward on the labeled batch first (infer and unlabeled forwards \
             load no labels)"
        );
        let mut laps = Laps::start(&self.profile);
        let dense_base = self.params.dense_tail();
        let Model {
            cfg,
            params: ps,
            rq,
            dnn,
            experts,
            gates,
            epnet,
            ppnet,
            cross,
            towers,
            domain_towers,
            domain_col,
            xb_dim,
            gate_dim,
            profile,
            buf: b,
            ..
        } = self;
        if let Some(p) = profile.as_mut() {
            p.backwards += 1;
        }
        ps.zero_grads(false);
        laps.lap(profile, Phase::Other);
        let (nf, dx) = (cfg.fields.len(), cfg.x_dim());
        let (xbd, gz) = (*xb_dim, *gate_dim);
        let (chunk_rows, n_chunks) = (b.chunk_rows, b.n_chunks);
        let idx = &b.idx[..nf * bsz];
        let fac = b.factor.as_ref().filter(|_| b.factored);
        // PEPNet: the forward ran EPNet's first layer by field.
        let epnet_fields = b.factored && b.gatenu_w1.first().is_some_and(|s| s.fields.is_some());
        let xw = fac.map_or(dx, |f| f.k_rest());
        let plen = fac.map_or(0, |f| f.partial_len());
        assert!(b.gpart.len() >= n_chunks * plen);
        let gpart = SendPtr(b.gpart.as_mut_ptr());
        let x = &b.x[..bsz * xw];
        let xb = &b.xb[..bsz * xbd];
        let g: &[T] = if rq.is_some() { &b.g[..bsz * gz] } else { xb };

        // ∂L/∂logits = (σ(logit) − y)/B   [B, T]
        let dlogits = &mut b.dlogits[..bsz * nt];
        dlogits.fill(T::ZERO);
        task_loss_backward(dlogits, &b.logits, &b.labels, bsz, nt);
        laps.lap(profile, Phase::Head);
        let dlogits = &b.dlogits[..bsz * nt];

        // Backbone and towers, chunk by chunk: ∂L/∂x and ∂L/∂g rows, chunk gradient arenas.
        let net = Net {
            cfg,
            dnn: dnn.as_ref(),
            experts,
            gates,
            epnet: epnet.as_ref(),
            ppnet,
            cross: cross.as_ref(),
            towers: towers.as_ref(),
            domain_towers: domain_towers.as_ref(),
            rq: rq.as_ref(),
            dense_base,
        };
        let dom = domain_rows(cfg, idx, *domain_col, bsz);
        let splits: &[SplitW1<T>] = &b.gatenu_w1;
        let chunks = &mut b.chunks[..n_chunks];
        let ctx = ChunkCtx::start(chunks, profile.is_some());
        let alpha = T::from_f64(cfg.rq.alpha);
        {
            let psr = &*ps;
            let dxbq: &mut [T] = if rq.is_some() {
                &mut b.dxb[..bsz * xbd]
            } else {
                &mut []
            };
            let arrays = [
                (&mut b.dx[..bsz * xw], xw),
                (&mut b.dg[..bsz * gz], gz),
                (dxbq, if rq.is_some() { xbd } else { 0 }),
            ];
            run_chunks(chunks, chunk_rows, 0, bsz, arrays, &|r0, rows, c, a| {
                let [(dxr, _), (dgr, _), (dxbr, _)] = a;
                // SAFETY: as in `forward_impl`: chunk r0 / chunk_rows's own block.
                let part = unsafe { gpart.block(r0 / chunk_rows, plen) };
                let xr = &x[r0 * xw..(r0 + rows) * xw];
                let gr = &g[r0 * gz..(r0 + rows) * gz];
                let xbr = &xb[r0 * xbd..(r0 + rows) * xbd];
                let dr = if dom.is_empty() {
                    dom
                } else {
                    &dom[r0..r0 + rows]
                };
                let dl = &dlogits[r0 * nt..(r0 + rows) * nt];
                ctx.run(|| {
                    let bufs = ChunkIo {
                        x: xr,
                        g: gr,
                        xb: xbr,
                        dom: dr,
                        dx: dxr,
                        dg: dgr,
                        dxb: dxbr,
                        splits,
                        fac: fac.map(|f| (f, r0)),
                        part,
                        epnet_r0: epnet_fields.then_some(r0),
                    };
                    chunk_backward(&net, psr, c, bufs, dl, rows, bsz, alpha);
                });
            });
        }
        laps.lap_shared(profile, chunks.iter().filter_map(|c| c.profile.as_ref()));
        self.backward_tail(bsz);
    }
}

/// Elements of the dense gradient per task of [`sum_chunk_grads`] (fixed, so the split
/// never depends on the thread count; each element's sum runs over chunks in order anyway).
const SUM_BLOCK: usize = 1 << 14;

/// `out[j] += Σ_c chunks[c].grads[j]`, chunks in order; each arena is zeroed as it is read
/// (and marked clean), which is cheaper than a separate clear before the next backward.
fn sum_chunk_grads<T: Real>(out: &mut [T], chunks: &mut [Chunk<T>]) {
    let n = out.len();
    assert!(
        chunks.len() <= MAX_CHUNKS && chunks.iter().all(|c| c.grads.len() >= n),
        "sum_chunk_grads: chunk arenas do not match the dense gradient"
    );
    let mut arenas = [SendPtr(std::ptr::null_mut::<T>()); MAX_CHUNKS];
    for (p, c) in arenas.iter_mut().zip(chunks.iter_mut()) {
        *p = SendPtr(c.grads.as_mut_ptr());
    }
    let arenas = &arenas[..chunks.len()];
    let add = |j0: usize, o: &mut [T]| {
        for p in arenas {
            // SAFETY: each task owns elements j0..j0 + o.len() of every arena (the tasks
            // split `out` into disjoint blocks at the same offsets), inside its length
            // (asserted above); `chunks` is borrowed mutably for the whole call.
            let a = unsafe { std::slice::from_raw_parts_mut(p.0.add(j0), o.len()) };
            for (s, v) in o.iter_mut().zip(a.iter_mut()) {
                *s += *v;
                *v = T::ZERO;
            }
        }
    };
    if out.len() >= 2 * SUM_BLOCK && rayon::current_num_threads() > 1 {
        out.par_chunks_mut(SUM_BLOCK)
            .enumerate()
            .for_each(|(q, o)| add(q * SUM_BLOCK, o));
    } else {
        add(0, out);
    }
    for c in chunks.iter_mut() {
        c.grads[n..].fill(T::ZERO);
        c.arena_clean = true;
    }
}

/// Rows of one chunk and of the whole batch it belongs to (the batch-mean losses divide by
/// the latter).
#[derive(Clone, Copy)]
struct ChunkRows {
    rows: usize,
    batch_rows: usize,
}

/// How a chunk's forward runs.
#[derive(Clone, Copy)]
struct ForwardMode {
    /// Compute `L_rq`.
    losses: bool,
    /// Leave the chunk's caches complete (not a prediction whose chunk state is dropped,
    /// which also stores no gate values: [`GateOutput::Scaled`]).
    keep: bool,
    /// EPNet's first layer factored by field ([`gatenu::FieldSplit`]): the chunk's first row.
    epnet_r0: Option<usize>,
}

/// One chunk (`rows.rows` rows of a batch of `rows.batch_rows`): the quantizer (x_b → g,
/// written to `gq`; without a quantizer g is x_b and `gq` is empty; `L_rq` only with
/// `mode.losses`) — or, with `gather`, the quantizer's results copied from the batch's
/// distinct rows by each row's slot —, the backbone and the towers, from `x` and g to `logits`.
#[allow(clippy::too_many_arguments)]
fn chunk_forward<T: Real>(
    net: &Net<'_>,
    ps: &ParamStore<T>,
    c: &mut Chunk<T>,
    x: &[T],
    xb: &[T],
    gq: &mut [T],
    dom: &[u32],
    logits: &mut [T],
    rows: ChunkRows,
    gather: Option<Gathered<'_, T>>,
    splits: &[SplitW1<T>],
    mode: ForwardMode,
    fac: Option<(&FieldFactoring<T>, usize)>,
) {
    let ChunkRows {
        rows: bsz,
        batch_rows,
    } = rows;
    let ForwardMode {
        losses,
        keep,
        epnet_r0,
    } = mode;
    let Chunk { profile, b, .. } = c;
    let mut laps = Laps::start(profile);
    let g: &[T] = match (net.rq, b.rq.as_mut()) {
        (Some(q), Some(cache)) => {
            b.rq_loss = match gather {
                Some(gd) => {
                    q.forward_gathered(gq, cache, gd.rq, gd.slots, bsz, batch_rows, losses, keep)
                }
                None => q.forward_part(gq, cache, xb, ps, bsz, batch_rows, losses),
            };
            laps.lap(profile, Phase::Rq);
            gq
        }
        _ => xb,
    };
    let cfg = net.cfg;
    let (nt, dx) = (cfg.tasks.len(), cfg.x_dim());
    let h = *cfg.hidden.last().expect("validated");
    match cfg.model {
        ModelKind::Dnn | ModelKind::WideDeep => {
            let m = net.dnn.expect("dnn");
            m.forward(&mut b.dnn, x, ps, bsz);
            laps.lap(profile, Phase::Backbone);
            let tw = net.towers.expect("towers");
            for t in 0..nt {
                tw.forward(t, logits, &mut b.tower, b.dnn.out(bsz), ps, bsz);
            }
            laps.lap(profile, Phase::Head);
        }
        ModelKind::Dcn => {
            let (cr, m) = (net.cross.expect("cross"), net.dnn.expect("dnn"));
            cr.forward(&mut b.cross, x, ps, bsz);
            m.forward(&mut b.dnn, x, ps, bsz);
            laps.lap(profile, Phase::Backbone);
            // cat = [x_L, MLP(x)]   [B, d_x + h]
            let w = dx + h;
            copy_columns(&mut b.cat, w, 0, cr.output(&b.cross, x, bsz), dx, bsz);
            copy_columns(&mut b.cat, w, dx, b.dnn.out(bsz), h, bsz);
            laps.lap(profile, Phase::Other);
            let tw = net.towers.expect("towers");
            for t in 0..nt {
                tw.forward(t, logits, &mut b.tower, &b.cat[..bsz * w], ps, bsz);
            }
            laps.lap(profile, Phase::Head);
        }
        ModelKind::SharedBottom => {
            let m = net.dnn.expect("dnn");
            m.forward(&mut b.dnn, x, ps, bsz);
            laps.lap(profile, Phase::Backbone);
            let dt = net.domain_towers.expect("domain towers");
            dt.forward(logits, b.dnn.out(bsz), dom, ps, bsz);
            laps.lap(profile, Phase::Head);
        }
        ModelKind::Mmoe | ModelKind::HmdnMmoe => {
            let n = net.experts.len();
            for (ei, (m, ec)) in net.experts.iter().zip(b.experts.iter_mut()).enumerate() {
                match fac {
                    // x is x_rest; row r0 of the chunk is row r0 of the batch.
                    Some((ff, r0)) => {
                        ec.ensure_batch(bsz);
                        ff.layer0_forward(ei, m, &mut ec.h[0], x, ps, r0, bsz);
                        m.forward_above_first(ec, ps, bsz);
                    }
                    None => m.forward(ec, x, ps, bsz),
                }
            }
            laps.lap(profile, Phase::Backbone);
            let tw = net.towers.expect("towers");
            let per_task = net
                .gates
                .iter()
                .zip(b.gates.iter_mut())
                .zip(b.mix.iter_mut());
            for (t, ((gate, gc), mix)) in per_task.enumerate() {
                // h_t = Σ_i G_t,i(g)·E_i(x)   [B, h]; the gate weights copied from the
                // batch's distinct rows when the quantizer ran on those.
                match gather {
                    Some(gd) => {
                        gc.ensure_batch(bsz, n);
                        gd.gate_probs(t, &mut gc.probs[..bsz * n], n);
                    }
                    None => gate.forward(gc, g, ps, bsz),
                }
                let mix = &mut mix[..bsz * h];
                mix.fill(T::ZERO);
                for (i, ec) in b.experts.iter().enumerate() {
                    mixture_accumulate(mix, &gc.probs, ec.out(bsz), i, n, h, bsz);
                }
                laps.lap(profile, Phase::Gates);
                tw.forward(t, logits, &mut b.tower, mix, ps, bsz);
                laps.lap(profile, Phase::Head);
            }
        }
        ModelKind::Pepnet | ModelKind::HmdnPepnet => {
            let m = net.dnn.expect("dnn");
            let ep = net.epnet.expect("epnet");
            // The g·W1_gᵀ term of GateNU i: from the rows' g, or copied from the batch's
            // distinct rows.
            let g_term = |i: usize| match gather {
                Some(gd) => GTerm::Gathered(&gd.gatenu_g[i], gd.slots),
                None => GTerm::Rows(g),
            };
            // EPNet: x' = δ_ep([g, sg(x)]) ⊙ x. Frozen: sg(x) is the copy set_frozen took.
            let sg_x = if b.sg_frozen { &b.sg_x[..bsz * dx] } else { x };
            // A pass that keeps nothing for a backward (inference) needs no δ stored.
            let xp = GateOutput::scaled(keep, &mut b.xp[..bsz * dx], x);
            let (sp, gt) = (&splits[0], g_term(0));
            ep.forward_split_scaled(&mut b.ep, sp, gt, sg_x, ps, xp, epnet_r0, bsz);
            laps.lap(profile, Phase::Gates);
            // h_l = δ_l ⊙ ReLU(Linear_l(h_{l-1})), h_{-1} = x', with PPNet's gate δ_l on
            // [g, sg(x')]: each layer first, then its gate, whose GEMM also writes h_l as it
            // stores δ_l (no separate pass over δ_l).
            let sg_xp = if b.sg_frozen { &b.sg_xp } else { &b.xp };
            for l in 0..m.layers.len() {
                let hl = m.layers[l].d_out;
                let (hs_below, hs_rest) = b.hs.split_at_mut(l);
                let inp: &[T] = if l == 0 { &b.xp } else { &hs_below[l - 1] };
                m.layer_forward(l, &mut b.a[l], inp, ps, bsz);
                laps.lap(profile, Phase::Backbone);
                let n = bsz * hl;
                let (pn, pc, gt) = (&net.ppnet[l], &mut b.pp[l], g_term(l + 1));
                let scaled = GateOutput::scaled(keep, &mut hs_rest[0][..n], &b.a[l][..n]);
                let sx = &sg_xp[..bsz * dx];
                pn.forward_split_scaled(pc, &splits[l + 1], gt, sx, ps, scaled, None, bsz);
                laps.lap(profile, Phase::Gates);
            }
            let top = &b.hs[m.layers.len() - 1][..bsz * h];
            let tw = net.towers.expect("towers");
            for t in 0..nt {
                tw.forward(t, logits, &mut b.tower, top, ps, bsz);
            }
            laps.lap(profile, Phase::Head);
        }
    }
}

/// A chunk's rows of the batch-level inputs and gradients its backward reads and writes.
struct ChunkIo<'a, T> {
    /// Model input x, gate input g, distribution embeddings x_b, Shared-Bottom domains.
    x: &'a [T],
    g: &'a [T],
    xb: &'a [T],
    dom: &'a [u32],
    /// `∂L/∂x`, `∂L/∂g` and (with a quantizer) `∂L/∂x_b`: written.
    dx: &'a mut [T],
    dg: &'a mut [T],
    dxb: &'a mut [T],
    /// PEPNet's GateNU first-layer weights split by input columns (empty otherwise).
    splits: &'a [SplitW1<T>],
    /// MMoE factored first layer and the chunk's first row: x and dx are then x_rest and
    /// its gradient, and `part` (the chunk's block of [`FieldFactoring::partial_len`])
    /// receives the per-id sums of the experts' layer-0 gradients.
    fac: Option<(&'a FieldFactoring<T>, usize)>,
    part: &'a mut [T],
    /// As [`ForwardMode::epnet_r0`], the same as in the chunk's forward.
    epnet_r0: Option<usize>,
}

/// Backward of [`chunk_forward`] from this chunk's `dlogits`: writes its rows of `∂L/∂x`,
/// `∂L/∂g` and, through the quantizer (whose loss weighs `alpha`), `∂L/∂x_b`; accumulates
/// its parameter gradients into `c.grads`.
#[allow(clippy::too_many_arguments)]
fn chunk_backward<T: Real>(
    net: &Net<'_>,
    store: &ParamStore<T>,
    c: &mut Chunk<T>,
    io: ChunkIo<'_, T>,
    dlogits: &[T],
    bsz: usize,
    batch_rows: usize,
    alpha: T,
) {
    let ChunkIo {
        x,
        g,
        xb,
        dom,
        dx: dxv,
        dg,
        dxb,
        splits,
        fac,
        part,
        epnet_r0,
    } = io;
    let Chunk {
        profile,
        b,
        grads,
        arena_clean,
        ..
    } = c;
    let mut laps = Laps::start(profile);
    if !*arena_clean {
        grads.fill(T::ZERO);
    }
    // Until `sum_chunk_grads` has read and cleared it (also if this backward panics).
    *arena_clean = false;
    let mut gv = Grads {
        specs: &store.specs,
        values: store.values(),
        grads: GradSlice::new(net.dense_base, grads),
    };
    let ps = &mut gv;
    let cfg = net.cfg;
    // PEPNet writes ∂L/∂x whole (below); the other backbones accumulate into it.
    if !matches!(cfg.model, ModelKind::Pepnet | ModelKind::HmdnPepnet) {
        dxv.fill(T::ZERO);
    }
    dg.fill(T::ZERO);
    laps.lap(profile, Phase::Other);
    let (nt, dx) = (cfg.tasks.len(), cfg.x_dim());
    let h = *cfg.hidden.last().expect("validated");
    match cfg.model {
        ModelKind::Dnn | ModelKind::WideDeep => {
            let dh = &mut b.dh[..bsz * h];
            dh.fill(T::ZERO);
            let tw = net.towers.expect("towers");
            for t in 0..nt {
                tw.backward(t, Some(dh), &mut b.tower, ps, dlogits, b.dnn.out(bsz), bsz);
            }
            laps.lap(profile, Phase::Head);
            let m = net.dnn.expect("dnn");
            m.backward(Some(dxv), &mut b.dnn, ps, dh, x, bsz);
            laps.lap(profile, Phase::Backbone);
        }
        ModelKind::Dcn => {
            let w = dx + h;
            let dcat = &mut b.dcat[..bsz * w];
            dcat.fill(T::ZERO);
            let tw = net.towers.expect("towers");
            for t in 0..nt {
                tw.backward(
                    t,
                    Some(dcat),
                    &mut b.tower,
                    ps,
                    dlogits,
                    &b.cat[..bsz * w],
                    bsz,
                );
            }
            laps.lap(profile, Phase::Head);
            take_columns(&mut b.dxl, dx, dcat, w, 0, bsz);
            take_columns(&mut b.dh, h, dcat, w, dx, bsz);
            laps.lap(profile, Phase::Other);
            let (cr, m) = (net.cross.expect("cross"), net.dnn.expect("dnn"));
            cr.backward(dxv, &mut b.cross, ps, &b.dxl[..bsz * dx], x, bsz);
            m.backward(Some(dxv), &mut b.dnn, ps, &b.dh[..bsz * h], x, bsz);
            laps.lap(profile, Phase::Backbone);
        }
        ModelKind::SharedBottom => {
            let dh = &mut b.dh[..bsz * h];
            dh.fill(T::ZERO);
            let dt = net.domain_towers.expect("domain towers");
            dt.backward(dh, ps, dlogits, b.dnn.out(bsz), dom, bsz);
            laps.lap(profile, Phase::Head);
            let m = net.dnn.expect("dnn");
            m.backward(Some(dxv), &mut b.dnn, ps, dh, x, bsz);
            laps.lap(profile, Phase::Backbone);
        }
        ModelKind::Mmoe | ModelKind::HmdnMmoe => {
            let n = net.experts.len();
            for d in b.dexp.iter_mut() {
                d[..bsz * h].fill(T::ZERO);
            }
            laps.lap(profile, Phase::Other);
            let tw = net.towers.expect("towers");
            let per_task = net.gates.iter().zip(b.gates.iter_mut()).zip(&b.mix);
            for (t, ((gate, gc), mix)) in per_task.enumerate() {
                let dmix = &mut b.dmix[..bsz * h];
                dmix.fill(T::ZERO);
                let mix = &mix[..bsz * h];
                tw.backward(t, Some(dmix), &mut b.tower, ps, dlogits, mix, bsz);
                laps.lap(profile, Phase::Head);
                gc.zero_dprobs(bsz, n);
                for (i, (ec, de)) in b.experts.iter().zip(b.dexp.iter_mut()).enumerate() {
                    let (dp, pr) = (&mut gc.dprobs, &gc.probs);
                    mixture_backward(de, dp, dmix, pr, ec.out(bsz), i, n, h, bsz);
                }
                gate.backward(Some(dg), gc, ps, g, bsz);
                laps.lap(profile, Phase::Gates);
            }
            let per_expert = net.experts.iter().zip(b.experts.iter_mut()).zip(&b.dexp);
            for (ei, ((m, ec), de)) in per_expert.enumerate() {
                let de = &de[..bsz * h];
                let Some((ff, r0)) = fac else {
                    m.backward(Some(&mut *dxv), ec, ps, de, x, bsz);
                    continue;
                };
                m.backward_above_first(ec, ps, de, bsz);
                let d0 = m.layers[0].d_out;
                let MlpCache {
                    h: hs, dh, dpre, ..
                } = ec;
                let dh0: &[T] = if m.layers.len() == 1 {
                    de
                } else {
                    &dh[0][..bsz * d0]
                };
                relu_backward(&mut dpre[..bsz * d0], dh0, &hs[0][..bsz * d0]);
                let (dp, fdw) = (&dpre[..bsz * d0], &mut b.fdw);
                ff.layer0_backward(ei, m, ps, dp, x, dxv, ei == 0, fdw, part, r0, bsz);
            }
            laps.lap(profile, Phase::Backbone);
        }
        ModelKind::Pepnet | ModelKind::HmdnPepnet => {
            let m = net.dnn.expect("dnn");
            let ep = net.epnet.expect("epnet");
            let nl = m.layers.len();
            let dtop = &mut b.dhs[nl - 1][..bsz * h];
            dtop.fill(T::ZERO);
            let tw = net.towers.expect("towers");
            for t in 0..nt {
                let top = &b.hs[nl - 1][..bsz * h];
                tw.backward(t, Some(dtop), &mut b.tower, ps, dlogits, top, bsz);
            }
            laps.lap(profile, Phase::Head);
            // ∂L/∂x' is written (not added) by layer 0's backward, its only consumer (the
            // PPNet gates read sg(x')); `hidden` is never empty, so layer 0 exists.
            let dxp = &mut b.dxp[..bsz * dx];
            for l in (0..nl).rev() {
                let n = bsz * m.layers[l].d_out;
                // h_l = δ_l ⊙ a_l: ∂L/∂δ_l = ∂L/∂h_l ⊙ a_l, ∂L/∂a_l = ∂L/∂h_l ⊙ δ_l.
                let (dhs_below, dhs_rest) = b.dhs.split_at_mut(l);
                let dh_l = &dhs_rest[0][..n];
                // Both written, ∂L/∂δ_l taken on through the sigmoid to fc2's pre-activation
                // in the same pass (into pc.u2, what backward_split_from_du2 reads).
                let pc = &mut b.pp[l];
                let da = &mut b.da[..n];
                let gamma = T::from_f64(net.ppnet[l].gamma);
                let (du2, delta) = (&mut pc.u2[..n], &pc.delta[..n]);
                scaled_sigmoid_mul_backward(du2, da, dh_l, &b.a[l][..n], delta, gamma);
                laps.lap(profile, Phase::Gates);
                // Layer l (ReLU ∘ Linear) back to its input h_{l-1} (or x').
                let (inp, dinp): (&[T], &mut [T]) = if l == 0 {
                    (&b.xp[..bsz * dx], &mut *dxp)
                } else {
                    let nb = bsz * m.layers[l - 1].d_out;
                    (&b.hs[l - 1][..nb], &mut dhs_below[l - 1][..nb])
                };
                let dinp = InputGrad::Write(dinp);
                m.layer_backward(l, dinp, &mut b.dpre, ps, da, &b.a[l], inp, bsz);
                laps.lap(profile, Phase::Backbone);
                // δ_l = GateNU_l([g, sg(x')]): only the g columns pass gradient on.
                let sg_xp = if b.sg_frozen { &b.sg_xp } else { &b.xp };
                let (pn, sp) = (&net.ppnet[l], &splits[l + 1]);
                pn.backward_split_from_du2(dg, pc, sp, ps, g, &sg_xp[..bsz * dx], None, bsz);
                laps.lap(profile, Phase::Gates);
            }
            // x' = δ_ep ⊙ x: ∂L/∂x (written: the gate reads sg(x), so this is x's only
            // gradient) and ∂L/∂δ_ep, taken on to fc2's pre-activation in the same pass.
            let dxp = &b.dxp[..bsz * dx];
            let gamma = T::from_f64(ep.gamma);
            let (du2, delta) = (&mut b.ep.u2[..bsz * dx], &b.ep.delta[..bsz * dx]);
            scaled_sigmoid_mul_backward(du2, &mut dxv[..bsz * dx], dxp, x, delta, gamma);
            let sg_x = if b.sg_frozen { &b.sg_x[..bsz * dx] } else { x };
            let sp = &splits[0];
            ep.backward_split_from_du2(dg, &mut b.ep, sp, ps, g, sg_x, epnet_r0, bsz);
            laps.lap(profile, Phase::Gates);
        }
    }
    if let (Some(q), Some(cache)) = (net.rq, b.rq.as_ref()) {
        dxb.fill(T::ZERO);
        q.backward_part(dxb, ps, dg, xb, cache, alpha, bsz, batch_rows);
        laps.lap(profile, Phase::Rq);
    }
}

#[cfg(test)]
mod tests {
    use super::transpose_indices;

    /// The blocked transpose against the plain one, on batch sizes around the block.
    #[test]
    fn transpose_indices_matches_plain_transpose() {
        for (bsz, nf) in [
            (0, 3),
            (1, 1),
            (7, 5),
            (64, 26),
            (65, 26),
            (1023, 3),
            (1024, 26),
            // Split over threads (TRANSPOSE_PAR_MIN), with a last part of odd length.
            (4096, 23),
            (3001, 17),
        ] {
            let cat: Vec<u32> = (0..bsz * nf).map(|i| (i * 7919 % 10007) as u32).collect();
            let mut want = vec![0u32; bsz * nf];
            for b in 0..bsz {
                for f in 0..nf {
                    want[f * bsz + b] = cat[b * nf + f];
                }
            }
            let mut got = vec![u32::MAX; bsz * nf];
            transpose_indices(&mut got, &cat, bsz, nf);
            assert_eq!(got, want, "bsz {bsz}, nf {nf}");
        }
    }
}
