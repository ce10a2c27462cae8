//! The MMoE experts' first layer, factored by field over the batch's distinct ids.
//!
//! Every expert's first layer computes `u = x·Wᵀ + b` on `x = [E_1[i_1], …, E_F[i_F],
//! numerics]`. Split by field, `x·Wᵀ = Σ_f E_f[i_f]·W_fᵀ`, `W_f` being `W`'s `e` columns of
//! field `f`. A field whose ids take only `n_f` distinct values in the batch (gender, age
//! bucket, city level… — the reference workload has twelve fields of at most 256 values)
//! contributes only `n_f` different terms. They are computed once each,
//! `P_f = E_f[ids_f]·W_fᵀ` (`n_f·e·d` multiply-adds instead of `B·e·d`), and each row adds its
//! id's term. The backward does the same in reverse: with `G_f[s] = Σ_{b: i_f(b) = ids_f[s]}
//! ∂L/∂u_b` (the rows' pre-activation gradients summed per id first), `dW_f += G_fᵀ·E_f[ids_f]`
//! and the gradient of embedding row `ids_f[s]` is `G_f[s]·W_f`: `n_f` rows instead of `B`.
//! All experts share the ids (and the distinct-id bookkeeping); each expert has its own
//! table of terms and of gradient sums, so that its forward and backward touch only its own.
//!
//! The other fields (and the numeric features) go through the ordinary GEMM on a compact
//! `x_rest` `[B, k_rest]` with the matching columns of `W` copied out (`W_rest`).
//!
//! This is the same function in exact arithmetic; in floating point the sums are grouped
//! differently (per id, then over ids), so results differ from the unfactored layer by
//! rounding only: the model tests check both ways against each other, and the whole-model
//! gradient checks run through it.
//!
//! Which fields are factored is fixed per model (vocabulary at most [`MAX_FACTOR_VOCAB`]),
//! not chosen per batch: a row's logits must not depend on the batch it came in (`eval` at
//! any batch size and thread count gives the same bits), and with a fixed split each row's
//! sums are grouped the same way in every batch. Every gradient sum runs in batch order, so
//! the thread count never changes a bit either.

use super::embedding::{MultiEmbedding, RowGrad};
use super::mlp::Mlp;
use crate::params::{Grads, ParamStore};
use hmdn_kernels::act::bias_grad;
use hmdn_kernels::embed::{add_rows_indexed_bias_relu, gather_fields, scatter_add_rows_indexed};
use hmdn_kernels::gemm::{gemm_packed_b, pack_b_for, packed_b_len};
use hmdn_kernels::par::serial;
use hmdn_kernels::{gemm, with_path, Real, Trans};
use rayon::prelude::*;

/// Fields with at most this many ids are factored. Their per-id terms cost at most this many
/// rows of `e·d` multiply-adds per batch, and their term tables (one `d`-wide row per id and
/// expert) stay in L2, so that each row's additions hit the cache. With the 1000-id fields
/// too, the tables outgrow L2 and the gain at batch 1024 vanished (`benches/RESULTS.md`,
/// seventh session: limits of 100 to 5000 ids compared). Its id → slot table is one `u32`
/// per id, rebuilt per batch by a scan over the vocabulary.
pub const MAX_FACTOR_VOCAB: usize = 256;

/// Batches from this many rows run the per-field work in parallel.
const PAR_MIN_ROWS: usize = 256;

/// Rows per block of an inference pass's `row_idx` (see [`FieldFactoring::prepare`]).
const ROW_IDX_BLOCK: usize = 256;

/// One field's id → slot table, distinct ids and row slots, as the per-field loop gets them.
type FieldBufs<'a> = ((&'a mut Vec<u32>, &'a mut Vec<u32>), &'a mut Vec<u32>);

/// One expert's blocks of `w_fields`, `w_rest` and the two packed copies of `W_rest`.
type ExpertBufs<'a, T> = (((&'a mut [T], &'a mut [T]), &'a mut [f32]), &'a mut [f32]);

/// Marks an id absent from the batch.
const ABSENT: u32 = u32::MAX;

/// Per-batch state and buffers of the factored first layer of a set of MMoE experts. Sized
/// once per batch shape ([`FieldFactoring::ensure_batch`]); a training step does not allocate.
#[derive(Clone, Debug)]
pub struct FieldFactoring<T> {
    /// Embedding width.
    e: usize,
    /// Number of categorical fields and numeric features.
    nf: usize,
    nn: usize,
    /// Experts and their first layer's width: the tables are `n_exp·d0` wide.
    n_exp: usize,
    d0: usize,
    /// Width of x.
    d_in: usize,
    /// Number of factored fields.
    n_cand: usize,
    /// Vocabulary of every field; `candidate[f]` says whether it may be factored.
    vocab: Vec<usize>,
    candidate: Vec<bool>,
    /// The factored fields (ascending) and the others (ascending), fixed per model.
    active: Vec<usize>,
    rest: Vec<usize>,
    /// Column of each rest field in `x_rest`, `None` for factored fields (per field).
    rest_col: Vec<Option<usize>>,
    /// Position of each factored field in `active`, `None` for the others (per field).
    slot_in_active: Vec<Option<usize>>,
    /// Per candidate field: id → slot table (`ABSENT` between batches), the distinct ids in
    /// ascending order, and each row's slot `[B]`.
    slot_of: Vec<Vec<u32>>,
    ids: Vec<Vec<u32>>,
    slots: Vec<Vec<u32>>,
    /// Each row's table row for every active field, `[B, active]` (`off[j] + slot`).
    row_idx: Vec<u32>,
    /// First table row of each active field (prefix sums of the distinct counts; one more
    /// entry than `active`).
    off: Vec<usize>,
    /// `E_f[ids_f]` of every active field, stacked `[Σn, e]`.
    emb_rows: Vec<T>,
    /// Every expert's `W_f` for every factored field, expert-major: `[d0, e]` blocks at
    /// `(expert · n_cand + field position) · d0 · e`.
    w_fields: Vec<T>,
    /// Per expert, `W`'s rest columns `[d0, k_rest]`.
    w_rest: Vec<T>,
    /// `W_rest` packed for the forward GEMMs (f32; one block of `w_rest_plen` per expert),
    /// and the SIMD path it was packed for: packed once per forward instead of once per
    /// chunk, as the other layers' weights are (`ParamStore::packed_weight`).
    w_rest_packed: Vec<f32>,
    w_rest_plen: usize,
    /// `W_rest` packed as the B of the backward's `∂L/∂x_rest = dpre·W_rest` (one block of
    /// `w_rest_plen_n` per expert; same path).
    w_rest_packed_n: Vec<f32>,
    w_rest_plen_n: usize,
    w_rest_path: Option<hmdn_kernels::SimdPath>,
    /// Per-id terms `P`, one table `[tab_rows, d0]` per expert (rows `off[j]..off[j+1]` of
    /// each are field `j`'s): an expert's forward touches only its own table. The per-id
    /// gradient sums `G` have the same layout, one set per row chunk, in the model's buffers
    /// ([`FieldFactoring::partial_len`]).
    proj: Vec<T>,
    /// Rows of each expert's table (the most distinct ids a batch can have).
    tab_rows: usize,
    /// Per active field, `G_fᵀ·E_f[ids_f]` `[n_exp·d0, e]` (scratch of the backward).
    dw_fields: Vec<T>,
    /// Rows and distinct-row capacity the buffers are sized for.
    cap: usize,
    /// Rows of the last prepared batch.
    bsz: usize,
    /// Inference: the per-id terms of every id (not only the batch's), kept across
    /// forwards while the weights stay the same.
    all: AllIds<T>,
    /// Whether the last [`FieldFactoring::prepare`] used `all` (an inference pass).
    uses_all: bool,
}

/// [`FieldFactoring`]'s tables for every id of the factored fields, for inference: `P_f` of
/// the whole vocabulary depends on the weights only, so a model that answers many batches
/// with unchanged weights computes it once (the batch side is then each row's table rows).
/// The reference workload's twelve factored fields have 420 ids in all.
#[derive(Clone, Debug, Default)]
struct AllIds<T> {
    /// First row of each active field (prefix sums of the vocabularies; one more entry
    /// than `active`).
    off: Vec<usize>,
    /// Σ of the active fields' vocabularies: rows of each expert's table.
    rows: usize,
    /// Every active field's whole table, stacked `[rows, e]`.
    emb_rows: Vec<T>,
    /// Per expert, `[rows, d0]`: `proj[ei][off[j] + id] = E_f[id]·W_fᵀ`.
    proj: Vec<T>,
    /// The [`ParamStore::version`] and SIMD path the tables were computed for, if any.
    key: Option<(u64, hmdn_kernels::SimdPath)>,
}

impl<T: Real> FieldFactoring<T> {
    /// For `experts` (all of the same shape) on `x` made of `embedding`'s fields (vocabularies
    /// `vocab`) and `nn` numeric features.
    pub fn new(embedding: &MultiEmbedding, vocab: &[usize], nn: usize, experts: &[Mlp]) -> Self {
        let nf = embedding.n_fields();
        let d0 = experts.first().map_or(0, |m| m.layers[0].d_out);
        let candidate: Vec<bool> = (0..nf).map(|f| vocab[f] <= MAX_FACTOR_VOCAB).collect();
        let slot_of = (0..nf)
            .map(|f| {
                if candidate[f] {
                    vec![ABSENT; vocab[f]]
                } else {
                    Vec::new()
                }
            })
            .collect();
        // Weight-shaped buffers, whatever the batch.
        let n_cand = candidate.iter().filter(|&&c| c).count();
        let wsz = n_cand * experts.len() * d0 * embedding.e;
        let d_in = nf * embedding.e + nn;
        // The factored fields and the others are fixed per model (see the module docs).
        let active: Vec<usize> = (0..nf).filter(|&f| candidate[f]).collect();
        let rest: Vec<usize> = (0..nf).filter(|&f| !candidate[f]).collect();
        let mut rest_col = vec![None; nf];
        for (p, &f) in rest.iter().enumerate() {
            rest_col[f] = Some(p * embedding.e);
        }
        let mut slot_in_active = vec![None; nf];
        for (j, &f) in active.iter().enumerate() {
            slot_in_active[f] = Some(j);
        }
        let mut all_off = Vec::with_capacity(active.len() + 1);
        all_off.push(0);
        for &f in &active {
            all_off.push(all_off.last().copied().unwrap_or(0) + vocab[f]);
        }
        let all_rows = all_off.last().copied().unwrap_or(0);
        let all = AllIds {
            off: all_off,
            rows: all_rows,
            emb_rows: vec![T::ZERO; all_rows * embedding.e],
            proj: vec![T::ZERO; experts.len() * all_rows * d0],
            key: None,
        };
        FieldFactoring {
            w_fields: vec![T::ZERO; wsz],
            n_cand,
            dw_fields: vec![T::ZERO; wsz],
            w_rest: vec![T::ZERO; experts.len() * d0 * d_in],
            w_rest_packed: Vec::new(),
            w_rest_plen: 0,
            w_rest_packed_n: Vec::new(),
            w_rest_plen_n: 0,
            w_rest_path: None,
            e: embedding.e,
            nf,
            nn,
            n_exp: experts.len(),
            d0,
            d_in,
            vocab: vocab.to_vec(),
            candidate,
            active,
            rest,
            rest_col,
            slot_in_active,
            slot_of,
            ids: vec![Vec::new(); nf],
            slots: vec![Vec::new(); nf],
            off: Vec::with_capacity(nf + 1),
            row_idx: Vec::new(),
            emb_rows: Vec::new(),
            proj: Vec::new(),
            tab_rows: 0,
            cap: 0,
            bsz: 0,
            all,
            uses_all: false,
        }
    }

    /// Sizes every buffer for batches of up to `bsz` rows.
    pub fn ensure_batch(&mut self, bsz: usize) {
        if bsz <= self.cap {
            return;
        }
        let mut rows = 0;
        for f in 0..self.nf {
            if self.candidate[f] {
                let n = self.vocab[f].min(bsz);
                rows += n;
                self.ids[f].clear();
                self.ids[f].reserve(n);
                self.slots[f].resize(bsz, 0);
            }
        }
        let w = self.n_exp * self.d0;
        self.emb_rows.resize(rows * self.e, T::ZERO);
        self.proj.resize(rows * w, T::ZERO);
        self.tab_rows = rows;
        let n_cand = self.candidate.iter().filter(|&&c| c).count();
        self.row_idx.resize(bsz * n_cand, 0);
        self.cap = bsz;
    }

    /// Whether the model has a field to factor (else the experts run unfactored on the
    /// whole x).
    pub fn is_active(&self) -> bool {
        !self.active.is_empty()
    }

    /// Width of `x_rest`: the unfactored fields' columns, then the numeric features.
    pub fn k_rest(&self) -> usize {
        self.rest.len() * self.e + self.nn
    }

    /// Width of every expert's tables side by side (`n_exp·d0`).
    pub fn table_width(&self) -> usize {
        self.n_exp * self.d0
    }

    /// Length of one row chunk's per-id gradient sums (every expert's `[tab_rows, d0]`
    /// table) for batches up to the size of the last [`FieldFactoring::ensure_batch`]: the
    /// model keeps one such block per chunk, each written by its chunk's
    /// [`FieldFactoring::layer0_backward`] and summed in chunk order by
    /// [`FieldFactoring::backward_fields`].
    pub fn partial_len(&self) -> usize {
        self.n_exp * self.tab_rows * self.d0
    }

    /// For the batch `idx` (field-major `[F, B]` with `embedding`'s columns): the factored
    /// fields' distinct ids and each row's, and every expert's per-id terms from the current
    /// weights (with `W_rest` copied and packed). Returns [`FieldFactoring::is_active`].
    ///
    /// With `all_ids` (a pass no backward follows: inference), the terms of every id of the
    /// factored fields instead, computed only when the weights' [`ParamStore::version`] or
    /// the SIMD path differ from the last time they were (`AllIds`); the batch's side is
    /// then only each row's table rows. A row's terms are the same bits either way (one
    /// GEMM row per id, whatever the other rows).
    ///
    /// # Panics
    /// If an id of a factored field is outside its vocabulary.
    pub fn prepare(
        &mut self,
        embedding: &MultiEmbedding,
        experts: &[Mlp],
        idx: &[u32],
        bsz: usize,
        ps: &ParamStore<T>,
        all_ids: bool,
    ) -> bool {
        self.ensure_batch(bsz);
        self.bsz = bsz;
        self.uses_all = false;
        if self.active.is_empty() {
            return false;
        }
        let e = self.e;
        let (d0, d_in) = (self.d0, self.d_in);
        let kr = self.k_rest();
        let ne = self.nf * e;
        let path = hmdn_kernels::simd_path();
        let packs = T::NAME == "f32" && kr > 0 && d0 > 0;
        let (plen, plen_n) = if packs {
            (packed_b_len(d0, kr, path), packed_b_len(kr, d0, path))
        } else {
            (0, 0)
        };
        // Blocks of at least one element, so that every expert gets one (f64: unused).
        let (cp, cpn) = (plen.max(1), plen_n.max(1));
        if self.w_rest_packed.len() != self.n_exp * cp {
            // Only on the first forward (or a change of SIMD path).
            self.w_rest_packed.resize(self.n_exp * cp, 0.0);
            self.w_rest_packed_n.resize(self.n_exp * cpn, 0.0);
        }
        self.w_rest_plen = plen;
        self.w_rest_plen_n = plen_n;
        self.w_rest_path = packs.then_some(path);
        let (wf_len, n_exp) = (self.n_cand * d0 * e, self.n_exp);
        let par = bsz >= PAR_MIN_ROWS && rayon::current_num_threads() > 1;
        let key = (ps.version(), path);
        let all_fresh = all_ids && self.all.key == Some(key);
        let FieldFactoring {
            slot_of,
            ids,
            slots,
            off,
            row_idx,
            emb_rows,
            w_fields,
            w_rest,
            w_rest_packed,
            w_rest_packed_n,
            active,
            rest,
            all,
            proj,
            tab_rows,
            ..
        } = self;
        let (active, rest) = (&*active, &*rest);
        // The batch's side: distinct ids per factored field, each row's table rows, and the
        // ids' embeddings.
        let mut batch_side = || {
            // Fields in parallel (each field's result is its own).
            let work = |(f, ((so, ids), slots)): (usize, FieldBufs<'_>)| {
                if so.is_empty() {
                    return;
                }
                let c = embedding.cols[f];
                distinct_ids(so, ids, &mut slots[..bsz], &idx[c * bsz..(c + 1) * bsz]);
            };
            // Small batches: one piece, on the calling thread (see the weight side).
            let n_fields = slot_of.len();
            slot_of
                .par_iter_mut()
                .zip(ids.par_iter_mut())
                .zip(slots.par_iter_mut())
                .enumerate()
                .with_min_len(if par { 1 } else { n_fields.max(1) })
                .for_each(work);
            off.clear();
            off.push(0);
            for &f in active {
                let last = *off.last().expect("pushed");
                off.push(last + ids[f].len());
            }
            // Every row's table rows, row-major (what the forward adds per row).
            let na = active.len();
            for (b, dst) in row_idx[..bsz * na].chunks_exact_mut(na).enumerate() {
                for ((d, &f), &o) in dst.iter_mut().zip(active).zip(off.iter()) {
                    *d = o as u32 + slots[f][b];
                }
            }
            // E_f[ids_f], stacked.
            for (j, &f) in active.iter().enumerate() {
                let table = ps.value(embedding.tables[f]);
                let dst = &mut emb_rows[off[j] * e..off[j + 1] * e];
                for (row, &id) in dst.chunks_exact_mut(e.max(1)).zip(&ids[f]) {
                    let id = id as usize;
                    row.copy_from_slice(&table[id * e..(id + 1) * e]);
                }
            }
        };
        // The weights' side, per expert (in parallel; each writes its own blocks): its W_f
        // for every factored field, its W_rest, and W_rest packed for the forward and
        // input-gradient GEMMs (f32 only; `gemm_packed_b` falls back to plain `gemm`
        // otherwise).
        let mut weight_side = || {
            let per_expert = |(ei, (((wf, wr), pk), pkn)): (usize, ExpertBufs<'_, T>)| {
                hmdn_kernels::with_path(path, || {
                    let wv = ps.value(experts[ei].layers[0].w);
                    for (j, &f) in active.iter().enumerate() {
                        let blk = &mut wf[j * d0 * e..(j + 1) * d0 * e];
                        for (o, row) in blk.chunks_exact_mut(e.max(1)).enumerate() {
                            row.copy_from_slice(&wv[o * d_in + f * e..o * d_in + (f + 1) * e]);
                        }
                    }
                    for (o, dst) in wr.chunks_exact_mut(kr.max(1)).take(d0).enumerate() {
                        let src = &wv[o * d_in..(o + 1) * d_in];
                        for (p, &f) in rest.iter().enumerate() {
                            dst[p * e..(p + 1) * e].copy_from_slice(&src[f * e..(f + 1) * e]);
                        }
                        dst[rest.len() * e..].copy_from_slice(&src[ne..]);
                    }
                    if packs {
                        pack_b_for(&mut pk[..plen], d0, kr, wr, Trans::T, path);
                        pack_b_for(&mut pkn[..plen_n], kr, d0, wr, Trans::N, path);
                    }
                })
            };
            // In parallel only for large batches: otherwise one piece, run on the calling
            // thread. (Split from outside the pool, the tasks would go through the pool's
            // queue, which now and then allocates a block; the no-allocation tests step small
            // batches from their own thread.)
            w_fields[..n_exp * wf_len]
                .par_chunks_mut(wf_len.max(1))
                .zip(w_rest[..n_exp * d0 * kr].par_chunks_mut((d0 * kr).max(1)))
                .zip(w_rest_packed.par_chunks_mut(cp))
                .zip(w_rest_packed_n.par_chunks_mut(cpn))
                .enumerate()
                .with_min_len(if par { 1 } else { n_exp.max(1) })
                .for_each(per_expert);
        };
        if all_ids {
            if !all_fresh {
                all.key = None;
                weight_side();
                // Every id's embedding: the active fields' whole tables, stacked.
                for (j, &f) in active.iter().enumerate() {
                    let (r0, r1) = (all.off[j], all.off[j + 1]);
                    let table = ps.value(embedding.tables[f]);
                    all.emb_rows[r0 * e..r1 * e].copy_from_slice(&table[..(r1 - r0) * e]);
                }
                let tables = (&all.off[..], &all.emb_rows[..], &mut all.proj[..], all.rows);
                field_terms(tables, w_fields, n_exp, self.n_cand, d0, e, path, par);
                all.key = Some(key);
            }
            // Each row's table rows: its ids, offset by their fields' first rows (blocks of
            // rows, so that a block's rows of `row_idx` stay in L1 while every field's ids
            // are written into them; in parallel for large batches).
            let (na, vocab, all) = (active.len(), &self.vocab, &*all);
            let rows_of = |(q, block): (usize, &mut [u32])| -> bool {
                let (b0, mut ok) = (q * ROW_IDX_BLOCK, true);
                for (j, &f) in active.iter().enumerate() {
                    let (c, v, o) = (embedding.cols[f], vocab[f], all.off[j] as u32);
                    let col = &idx[c * bsz + b0..][..block.len() / na];
                    for (dst, &id) in block.chunks_exact_mut(na).zip(col) {
                        ok &= (id as usize) < v;
                        dst[j] = o + id;
                    }
                }
                ok
            };
            let blocks = row_idx[..bsz * na].chunks_mut(ROW_IDX_BLOCK * na);
            let ok = if par {
                let blocks = row_idx[..bsz * na].par_chunks_mut(ROW_IDX_BLOCK * na);
                blocks
                    .enumerate()
                    .map(rows_of)
                    .reduce(|| true, |a, b| a && b)
            } else {
                // Every block (not `all`, which would stop at a bad one).
                let mut ok = true;
                for block in blocks.enumerate() {
                    ok &= rows_of(block);
                }
                ok
            };
            if !ok {
                for &f in active {
                    let (c, v) = (embedding.cols[f], vocab[f]);
                    if let Some(&id) = idx[c * bsz..(c + 1) * bsz]
                        .iter()
                        .find(|&&i| i as usize >= v)
                    {
                        panic!("field {f}: id {id} is outside its vocabulary of {v}");
                    }
                }
            }
            self.uses_all = true;
            return true;
        }
        // The two sides are independent: side by side.
        if par {
            rayon::join(batch_side, weight_side);
        } else {
            batch_side();
            weight_side();
        }
        // P_f = E_f[ids_f]·W_fᵀ `[n_f, d0]` for every expert.
        let tables = (&off[..], &emb_rows[..], &mut proj[..], *tab_rows);
        field_terms(tables, w_fields, n_exp, self.n_cand, d0, e, path, par);
        true
    }

    /// Writes rows `r0..r0 + rows` of `x_rest` `[rows, k_rest]`: the rest fields' embeddings,
    /// then the numeric features (`num`, `[rows, nn]` of this chunk).
    #[allow(clippy::too_many_arguments)]
    pub fn gather_rest(
        &self,
        out: &mut [T],
        embedding: &MultiEmbedding,
        idx: &[u32],
        bsz: usize,
        r0: usize,
        rows: usize,
        num: &[f32],
        ps: &ParamStore<T>,
    ) {
        let kr = self.k_rest();
        let field = |p: usize| {
            let f = self.rest[p];
            let c = embedding.cols[f];
            (
                ps.value(embedding.tables[f]),
                &idx[c * bsz + r0..c * bsz + r0 + rows],
            )
        };
        gather_fields(out, kr, 0, self.rest.len(), field, self.e, rows);
        if self.nn > 0 {
            let c0 = self.rest.len() * self.e;
            for (xrow, nrow) in out.chunks_exact_mut(kr).zip(num.chunks_exact(self.nn)) {
                for (o, &v) in xrow[c0..].iter_mut().zip(nrow) {
                    *o = T::from_f64(v as f64);
                }
            }
        }
    }

    /// Expert `ei`'s first layer on rows `r0..r0 + rows`: `out = ReLU(x_rest·W_restᵀ + Σ_f
    /// P_f[slot_f] + b)` `[rows, d0]`.
    #[allow(clippy::too_many_arguments)]
    pub fn layer0_forward(
        &self,
        ei: usize,
        m: &Mlp,
        out: &mut [T],
        x_rest: &[T],
        ps: &ParamStore<T>,
        r0: usize,
        rows: usize,
    ) {
        let (d0, kr) = (self.d0, self.k_rest());
        let out = &mut out[..rows * d0];
        let pl = self.w_rest_plen;
        let packed = self
            .w_rest_path
            .map(|path| (&self.w_rest_packed[ei * pl..(ei + 1) * pl], path));
        gemm_packed_b(
            rows,
            d0,
            kr,
            T::ONE,
            &x_rest[..rows * kr],
            Trans::N,
            &self.w_rest[ei * d0 * kr..(ei + 1) * d0 * kr],
            Trans::T,
            packed,
            T::ZERO,
            out,
        );
        // + Σ_f P_f[slot_f], the fields in order, each row's sum kept in registers; from the
        // every-id tables in an inference pass.
        let (proj, tab_rows) = if self.uses_all {
            (&self.all.proj, self.all.rows)
        } else {
            (&self.proj, self.tab_rows)
        };
        let table = &proj[ei * tab_rows * d0..(ei + 1) * tab_rows * d0];
        let na = self.active.len();
        let idx = &self.row_idx[r0 * na..(r0 + rows) * na];
        add_rows_indexed_bias_relu(out, table, idx, na, ps.value(m.layers[0].b));
    }

    /// Expert `ei`'s first layer backward on one chunk's rows `r0..r0 + rows` from `dpre =
    /// ∂L/∂u` `[rows, d0]` (after the ReLU's mask): `db`, the rest columns of `dW` (through
    /// `scratch`, at least `[d0, k_rest]`), `∂L/∂x_rest` into `dx_rest` (written when `write`,
    /// else added), and this chunk's per-id sums of `dpre` into expert `ei`'s table of
    /// `part` (the chunk's block of [`FieldFactoring::partial_len`], overwritten; rows in
    /// batch order) for [`FieldFactoring::backward_fields`]. Summing per chunk here, while
    /// `dpre` is in the core's cache, leaves the serial end of the backward only the chunks'
    /// tables to add (`tab_rows` rows each, fewer than a chunk's rows).
    #[allow(clippy::too_many_arguments)]
    pub fn layer0_backward(
        &self,
        ei: usize,
        m: &Mlp,
        g: &mut Grads<'_, T>,
        dpre: &[T],
        x_rest: &[T],
        dx_rest: &mut [T],
        write: bool,
        scratch: &mut [T],
        part: &mut [T],
        r0: usize,
        rows: usize,
    ) {
        debug_assert!(!self.uses_all, "no backward after an inference pass");
        let (d0, kr, e) = (self.d0, self.k_rest(), self.e);
        let lin = &m.layers[0];
        let dpre = &dpre[..rows * d0];
        let (wr, br) = (g.range(lin.w), g.range(lin.b));
        bias_grad(&mut g.grads[br], dpre);
        let w_rest = &self.w_rest[ei * d0 * kr..(ei + 1) * d0 * kr];
        let pl = self.w_rest_plen_n;
        let packed = self
            .w_rest_path
            .map(|path| (&self.w_rest_packed_n[ei * pl..(ei + 1) * pl], path));
        gemm_packed_b(
            rows,
            kr,
            d0,
            T::ONE,
            dpre,
            Trans::N,
            w_rest,
            Trans::N,
            packed,
            if write { T::ZERO } else { T::ONE },
            &mut dx_rest[..rows * kr],
        );
        let scratch = &mut scratch[..d0 * kr];
        gemm(
            d0,
            kr,
            rows,
            T::ONE,
            dpre,
            Trans::T,
            &x_rest[..rows * kr],
            Trans::N,
            T::ZERO,
            scratch,
        );
        let dw = &mut g.grads[wr];
        let (d_in, ne, nr) = (self.d_in, self.nf * e, self.rest.len());
        for (o, srow) in scratch.chunks_exact(kr.max(1)).take(d0).enumerate() {
            let drow = &mut dw[o * d_in..(o + 1) * d_in];
            for (p, &f) in self.rest.iter().enumerate() {
                for (d, &s) in drow[f * e..(f + 1) * e].iter_mut().zip(&srow[p * e..]) {
                    *d += s;
                }
            }
            for (d, &s) in drow[ne..].iter_mut().zip(&srow[nr * e..]) {
                *d += s;
            }
        }
        let tab = self.tab_rows * d0;
        let used = *self.off.last().unwrap_or(&0) * d0;
        let g = &mut part[ei * tab..(ei + 1) * tab];
        g[..used].fill(T::ZERO);
        let na = self.active.len();
        let row_idx = &self.row_idx[r0 * na..(r0 + rows) * na];
        scatter_add_rows_indexed(g, d0, dpre, d0, 0, row_idx, na);
    }

    /// The rest of the backward after every chunk's [`FieldFactoring::layer0_backward`]:
    /// `G`, the chunks' per-id sums in `parts` (`n_chunks` blocks of
    /// [`FieldFactoring::partial_len`]) added in chunk order into the first block; every
    /// expert's `dW_f += G_fᵀ·E_f[ids_f]` into `ps`'s gradients; and the embedding row
    /// gradients of every field (`row_grads`, one per table of `embedding`): a factored
    /// field's rows are `ids_f` with gradients `G_f·W_f` summed over the experts, the other
    /// fields' come from `dx_rest` `[B, k_rest]` (the chunks' `∂L/∂x_rest`). All of it runs
    /// in one parallel loop over the fields (a factored field's task first adds up its own
    /// rows of `G`), so that the large tables' sorts and the factored fields' small GEMMs
    /// share the threads without a barrier between them.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_fields(
        &mut self,
        experts: &[Mlp],
        embedding: &MultiEmbedding,
        parts: &mut [T],
        n_chunks: usize,
        dx_rest: &[T],
        idx: &[u32],
        ps: &mut ParamStore<T>,
        row_grads: &mut [RowGrad<T>],
    ) {
        self.field_row_grads(embedding, parts, n_chunks, dx_rest, idx, row_grads);
        self.add_field_weight_grads(experts, ps);
    }

    /// [`FieldFactoring::backward_fields`] without its last part
    /// ([`FieldFactoring::add_field_weight_grads`]): the per-id sums, every field's row
    /// gradients and the factored columns' `dW_f` in scratch. It does not touch the
    /// parameters, so the model sums the chunks' gradient arenas alongside.
    pub fn field_row_grads(
        &mut self,
        embedding: &MultiEmbedding,
        parts: &mut [T],
        n_chunks: usize,
        dx_rest: &[T],
        idx: &[u32],
        row_grads: &mut [RowGrad<T>],
    ) {
        let (bsz, e, d0, w) = (self.bsz, self.e, self.d0, self.table_width());
        let (active, off) = (&self.active, &self.off);
        let tab = self.tab_rows * d0;
        let plen = self.partial_len();
        assert!(
            parts.len() >= n_chunks * plen,
            "backward_fields: one block of per-id sums per chunk"
        );
        assert!(*off.last().unwrap_or(&0) <= self.tab_rows);
        assert_eq!(row_grads.len(), self.nf, "one RowGrad per field");
        assert!(self.dw_fields.len() >= active.len() * w * e);
        // (An empty batch has no chunk, and no ids: every table is empty.)
        let (first, later) = parts[..n_chunks * plen].split_at_mut(plen.min(n_chunks * plen));
        let (later, gsum) = (&*later, SendPtr(first.as_mut_ptr()));
        let path = hmdn_kernels::simd_path();
        let kr = self.k_rest();
        let (rest_col, slot_in_active) = (&self.rest_col, &self.slot_in_active);
        let (emb_rows, w_fields, ids) = (&self.emb_rows, &self.w_fields, &self.ids);
        let (n_cand, n_exp) = (self.n_cand, self.n_exp);
        let dwf = SendPtr(self.dw_fields.as_mut_ptr());
        let per_field_one = |f: usize, rg: &mut RowGrad<T>| {
            let Some(j) = slot_in_active[f] else {
                // Not factored: the row gradients from ∂L/∂x_rest.
                if let Some(col) = rest_col[f] {
                    let c = embedding.cols[f];
                    rg.accumulate_from(&idx[c * bsz..(c + 1) * bsz], dx_rest, kr, col);
                }
                return;
            };
            let (r0, r1) = (off[j], off[j + 1]);
            let n = r1 - r0;
            // G_f of every expert: chunk 0's sums + chunk 1's + … (chunk order: the chunk
            // layout depends on the batch size only).
            for ei in 0..n_exp {
                let a = ei * tab + r0 * d0;
                let p = gsum;
                // SAFETY: rows r0..r1 of every expert's table in the first block (inside
                // it: asserted above) are field j's, touched by this task alone.
                let g = unsafe { std::slice::from_raw_parts_mut(p.0.wrapping_add(a), n * d0) };
                for c in 0..n_chunks.saturating_sub(1) {
                    for (d, &s) in g.iter_mut().zip(&later[c * plen + a..][..n * d0]) {
                        *d += s;
                    }
                }
            }
            rg.rows.clear();
            rg.rows.extend_from_slice(&ids[f]);
            rg.grad.clear();
            rg.grad.resize(n * e, T::ZERO);
            let p = dwf;
            // SAFETY: block j of `dw_fields` (w·e elements, inside it: asserted above) is
            // written by field j's task alone.
            let blk = unsafe { std::slice::from_raw_parts_mut(p.0.add(j * w * e), w * e) };
            let er = &emb_rows[r0 * e..r1 * e];
            for ei in 0..n_exp {
                let p = gsum;
                // SAFETY: as above (now read only, by this task).
                let g = unsafe {
                    std::slice::from_raw_parts(p.0.wrapping_add(ei * tab + r0 * d0), n * d0)
                };
                let wf = &w_fields[(ei * n_cand + j) * d0 * e..][..d0 * e];
                let beta = if ei == 0 { T::ZERO } else { T::ONE };
                gemm(
                    n,
                    e,
                    d0,
                    T::ONE,
                    g,
                    Trans::N,
                    wf,
                    Trans::N,
                    beta,
                    &mut rg.grad,
                );
                let bk = &mut blk[ei * d0 * e..(ei + 1) * d0 * e];
                gemm(d0, e, n, T::ONE, g, Trans::T, er, Trans::N, T::ZERO, bk);
            }
        };
        // Each task's kernels stay on its thread, on the caller's SIMD path.
        let per_field = |(f, rg): (usize, &mut RowGrad<T>)| {
            with_path(path, || serial(|| per_field_one(f, rg)));
        };
        if bsz >= PAR_MIN_ROWS && rayon::current_num_threads() > 1 {
            row_grads.par_iter_mut().enumerate().for_each(per_field);
        } else {
            row_grads.iter_mut().enumerate().for_each(per_field);
        }
    }

    /// `dW_f` of every factored field (from [`FieldFactoring::field_row_grads`]) added into
    /// every expert's first-layer weight gradient in `ps`.
    pub fn add_field_weight_grads(&self, experts: &[Mlp], ps: &mut ParamStore<T>) {
        let (e, d0, w) = (self.e, self.d0, self.table_width());
        let active = &self.active;
        let d_in = self.d_in;
        for (ei, m) in experts.iter().enumerate() {
            let r = ps.range(m.layers[0].w);
            let dw = &mut ps.grads[r];
            for (j, &f) in active.iter().enumerate() {
                let blk = &self.dw_fields[j * w * e..(j + 1) * w * e];
                for o in 0..d0 {
                    let src = &blk[(ei * d0 + o) * e..(ei * d0 + o + 1) * e];
                    for (d, &s) in dw[o * d_in + f * e..o * d_in + (f + 1) * e]
                        .iter_mut()
                        .zip(src)
                    {
                        *d += s;
                    }
                }
            }
        }
    }

    /// Floating-point operations of every expert's first layer in the last prepared batch,
    /// per sample, `(forward, training step)`: multiply-adds count 2, the per-row additions
    /// of the terms (forward) and of the gradient sums (backward) 1. For the achieved-FLOP/s
    /// figures, which count the work done, not the unfactored layer's.
    pub fn flops_per_sample(&self) -> (f64, f64) {
        let rows = self.bsz.max(1) as f64;
        let (kr, d0, e) = (self.k_rest() as f64, self.d0 as f64, self.e as f64);
        let ne = self.n_exp as f64;
        let distinct = *self.off.last().unwrap_or(&0) as f64;
        let na = self.active.len() as f64;
        let gemm_rows = 2.0 * kr * d0 * ne; // per row: x_rest·W_restᵀ, dX_rest, dW_rest
        let terms = 2.0 * distinct * e * d0 * ne / rows; // P, and R, dW_f in training
        let adds = na * d0 * ne; // per row: the terms added / the gradients summed per id
        let fwd = gemm_rows + terms + adds;
        (fwd, fwd + 2.0 * gemm_rows + 2.0 * terms + adds)
    }

    /// Column of each unfactored field in `x_rest` (`None` for the factored ones), for the
    /// rest fields' embedding backward.
    pub fn rest_columns(&self) -> &[Option<usize>] {
        &self.rest_col
    }
}

/// A raw pointer that may cross to rayon's workers (each task touches its own elements).
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
unsafe impl<T: Send> Send for SendPtr<T> {}
unsafe impl<T: Send> Sync for SendPtr<T> {}

/// `P_f = E_f[ids_f]·W_fᵀ` `[n_f, d0]` of every active field `j` for every expert: `tables`
/// = (first row of each field, the stacked `E_f[ids_f]` `[rows, e]`, every expert's
/// `[rows, d0]` table, `rows`), `w_fields` as [`FieldFactoring`]'s. Fields in parallel when
/// `par` (each writes its own rows of every expert's table), each task's small GEMMs on its
/// own thread, on SIMD path `path`.
#[allow(clippy::too_many_arguments)]
fn field_terms<T: Real>(
    tables: (&[usize], &[T], &mut [T], usize),
    w_fields: &[T],
    n_exp: usize,
    n_cand: usize,
    d0: usize,
    e: usize,
    path: hmdn_kernels::SimdPath,
    par: bool,
) {
    let (off, emb_rows, proj, rows) = tables;
    let tab = rows * d0;
    assert!(
        proj.len() >= n_exp * tab && *off.last().expect("one entry per field and one more") <= rows
    );
    let proj = SendPtr(proj.as_mut_ptr());
    let field_terms_one = |j: usize| {
        let (r0, r1) = (off[j], off[j + 1]);
        for ei in 0..n_exp {
            let p = proj;
            // SAFETY: rows off[j]..off[j+1] of expert ei's table belong to field j alone
            // (`off` is increasing and ends within the table, asserted above); the table
            // outlives the loop.
            let pj = unsafe {
                std::slice::from_raw_parts_mut(p.0.add(ei * tab + r0 * d0), (r1 - r0) * d0)
            };
            let wf = &w_fields[(ei * n_cand + j) * d0 * e..][..d0 * e];
            let rows = &emb_rows[r0 * e..r1 * e];
            gemm(
                r1 - r0,
                d0,
                e,
                T::ONE,
                rows,
                Trans::N,
                wf,
                Trans::T,
                T::ZERO,
                pj,
            );
        }
    };
    let field_terms = |j: usize| {
        with_path(path, || serial(|| field_terms_one(j)));
    };
    let na = off.len() - 1;
    if par {
        (0..na).into_par_iter().for_each(field_terms);
    } else {
        (0..na).for_each(field_terms);
    }
}

/// The distinct values of `col` in ascending order (`ids`) and each row's index among them
/// (`slots`), through `slot_of` (one entry per id, all `ABSENT` on entry and on return).
fn distinct_ids(slot_of: &mut [u32], ids: &mut Vec<u32>, slots: &mut [u32], col: &[u32]) {
    ids.clear();
    for &i in col {
        slot_of[i as usize] = 0;
    }
    // Ascending ids: one scan of the (small) vocabulary.
    for (i, s) in slot_of.iter_mut().enumerate() {
        if *s != ABSENT {
            *s = ids.len() as u32;
            ids.push(i as u32);
        }
    }
    for (o, &i) in slots.iter_mut().zip(col) {
        *o = slot_of[i as usize];
    }
    for &i in ids.iter() {
        slot_of[i as usize] = ABSENT;
    }
}
