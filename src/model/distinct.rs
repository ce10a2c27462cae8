//! Distinct distribution keys of a batch: which rows share their distribution-field ids.
//!
//! The quantizer's input `x_b` is the lookup of a row's distribution fields only (user
//! gender, city, domain… in the paper), and its output — codes, `s_D`, the gate input, the
//! `L_rq` terms — is a function of `x_b` alone. Those fields have few values, so a batch has
//! far fewer distinct combinations than rows (the reference workload's 3 × 5 × 3 = 45 against
//! 1024 rows). [`DistinctKeys`] numbers the combinations of a batch in order of first
//! appearance; the model then quantizes one row per combination
//! ([`super::rq::ResidualQuantizer::forward_distinct`]), runs MMoE's gates on it (their
//! softmax weights depend on the gate input only), and each chunk copies its rows' results
//! ([`super::rq::ResidualQuantizer::forward_gathered`], [`Gathered::gate_probs`]) instead of
//! running the argmin and the gates over every row. The backward still runs per row, on the
//! copied values.

use super::embedding::MultiEmbedding;
use super::gate::{Gate, GateCache};
use super::gatenu::{GateNu, SplitW1};
use super::rq::{DistinctRows, ResidualQuantizer};
use crate::params::ParamStore;
use hmdn_kernels::Real;

/// Largest product of the distribution fields' vocabularies keyed by a dense table (one
/// `u32` per combination, 256 KiB at most); models with more combinations quantize every row.
pub const MAX_DIST_KEYS: usize = 1 << 16;

/// `out[b] = src[slots[b]]` for rows of width `w`: a batch row's copy of its distinct
/// row's values (gate input, codes, level inputs, gate weights…).
pub(crate) fn gather_rows<T: Copy>(out: &mut [T], src: &[T], slots: &[u32], w: usize) {
    for (orow, &s) in out.chunks_exact_mut(w.max(1)).zip(slots) {
        let s = s as usize;
        orow.copy_from_slice(&src[s * w..(s + 1) * w]);
    }
}

/// Largest number of combinations an inference pass quantizes all of, once per version of
/// the weights ([`DistinctKeys::assign_all`]); the reference workload has 45.
pub const MAX_ALL_KEYS: usize = 4096;

/// Marks a key without a slot in [`DistinctKeys::slot_of_key`].
const NO_SLOT: u32 = u32::MAX;

/// The distinct distribution-id combinations of a batch and each row's one, plus the
/// quantizer's results on them. Sized once per batch shape; reused batch after batch.
#[derive(Clone, Debug)]
pub struct DistinctKeys<T> {
    /// `(index column, vocabulary, stride)` of each distribution field: the key of a row is
    /// `Σ_p id_p · stride_p` (mixed radix, so distinct id tuples get distinct keys).
    radix: Vec<(usize, usize, usize)>,
    /// Slot of every key seen in the current batch, [`NO_SLOT`] for the others
    /// `[Π_p V_p]`. Only the batch's own keys are reset afterwards.
    slot_of_key: Vec<u32>,
    /// Key of every slot, in slot order.
    keys: Vec<u32>,
    /// First row of the batch holding each slot's key.
    first_row: Vec<u32>,
    /// Slot of every row `[B]`.
    pub slots: Vec<u32>,
    /// `x_b` of the distinct rows `[U, P·e]`.
    xb: Vec<T>,
    /// The quantizer's results on the distinct rows.
    pub rq: DistinctRows<T>,
    /// MMoE: each task's gate on the distinct rows' gate input (its weights depend on g
    /// only), `probs` `[U, n]`.
    pub gates: Vec<GateCache<T>>,
    /// PEPNet: each GateNU's first-layer term `g·W1_gᵀ` of the distinct rows `[U, hidden]`
    /// (EPNet, then the PPNet gates).
    pub gatenu_g: Vec<Vec<T>>,
    /// When the results above are those of every combination (slot = key, see
    /// [`Self::assign_all`]): the [`ParamStore::version`] and SIMD path they were computed
    /// for. `None` while they are one batch's distinct rows.
    all_for: Option<(u64, hmdn_kernels::SimdPath)>,
}

impl<T: Real> DistinctKeys<T> {
    /// Keys for the distribution fields in `cols` (columns of the index matrix) with
    /// vocabularies `vocab`, or `None` when their combinations exceed [`MAX_DIST_KEYS`] (then
    /// every row is quantized).
    pub fn new(cols: &[usize], vocab: &[usize], q: &ResidualQuantizer) -> Option<Self> {
        let mut total = 1usize;
        let mut radix = Vec::with_capacity(cols.len());
        for (&c, &v) in cols.iter().zip(vocab) {
            radix.push((c, v, total));
            total = total.checked_mul(v)?;
            if total > MAX_DIST_KEYS {
                return None;
            }
        }
        Some(DistinctKeys {
            radix,
            slot_of_key: vec![NO_SLOT; total],
            keys: Vec::new(),
            first_row: Vec::new(),
            slots: Vec::new(),
            xb: Vec::new(),
            rq: DistinctRows::new(q, 0),
            gates: Vec::new(),
            gatenu_g: Vec::new(),
            all_for: None,
        })
    }

    /// Most distinct rows the buffers hold for a batch of `bsz` rows: what the batch can
    /// have, or every combination when an inference pass may quantize them all.
    fn max_distinct(&self, bsz: usize) -> usize {
        let total = self.slot_of_key.len();
        let all = if total <= MAX_ALL_KEYS { total } else { 0 };
        bsz.min(total).max(all)
    }

    /// Grows the buffers for batches of `bsz` rows (no-op when they already fit).
    /// `gatenu_hidden`: the hidden width of each PEPNet GateNU (none for other models).
    pub fn ensure_batch(
        &mut self,
        bsz: usize,
        xbd: usize,
        q: &ResidualQuantizer,
        gates: &[Gate],
        gatenu_hidden: &[usize],
    ) {
        let n_u = self.max_distinct(bsz);
        self.gatenu_g.resize_with(gatenu_hidden.len(), Vec::new);
        for (t, &h) in self.gatenu_g.iter_mut().zip(gatenu_hidden) {
            if t.len() < n_u * h {
                t.resize(n_u * h, T::ZERO);
            }
        }
        self.gates.resize_with(gates.len(), GateCache::default);
        for (c, g) in self.gates.iter_mut().zip(gates) {
            c.ensure_batch(n_u, g.n());
        }
        if self.slots.len() < bsz {
            self.slots.resize(bsz, 0);
        }
        // `reserve` counts from the length: ask for room beyond whatever the last batch left.
        self.keys.reserve(n_u.saturating_sub(self.keys.len()));
        self.first_row
            .reserve(n_u.saturating_sub(self.first_row.len()));
        if self.xb.len() < n_u * xbd {
            self.xb.resize(n_u * xbd, T::ZERO);
        }
        self.rq.ensure(q, n_u);
    }

    /// Numbers the distinct distribution-id combinations of the batch (field-major `idx`
    /// `[F, B]`) in order of first appearance into [`Self::slots`], and returns how many
    /// there are — or `None` when gathering would not pay (an empty batch, or more than half
    /// the rows distinct) or an id lies outside its vocabulary (the row-wise lookups report
    /// that).
    pub fn assign(&mut self, idx: &[u32], bsz: usize) -> Option<usize> {
        self.keys.clear();
        self.first_row.clear();
        let mut ok = true;
        for b in 0..bsz {
            let mut key = 0usize;
            for &(c, v, stride) in &self.radix {
                let id = idx[c * bsz + b] as usize;
                ok &= id < v;
                key += id.min(v - 1) * stride;
            }
            let slot = &mut self.slot_of_key[key];
            if *slot == NO_SLOT {
                *slot = self.keys.len() as u32;
                self.keys.push(key as u32);
                self.first_row.push(b as u32);
            }
            self.slots[b] = *slot;
        }
        for &k in &self.keys {
            self.slot_of_key[k as usize] = NO_SLOT;
        }
        let n_u = self.keys.len();
        (ok && bsz > 0 && n_u * 2 <= bsz).then_some(n_u)
    }

    /// After [`Self::assign`] returned `n_u`: looks up the distinct rows' `x_b` from the
    /// distribution tables `de`, runs the quantizer on them
    /// ([`ResidualQuantizer::forward_distinct`]) and then MMoE's `gates` on their gate input,
    /// or the `g·W1_gᵀ` terms of PEPNet's GateNUs (`splits`, refreshed from the current
    /// weights).
    #[allow(clippy::too_many_arguments)]
    pub fn quantize(
        &mut self,
        q: &ResidualQuantizer,
        de: &MultiEmbedding,
        idx: &[u32],
        bsz: usize,
        n_u: usize,
        ps: &ParamStore<T>,
        with_loss: bool,
        gates: &[Gate],
        splits: &[SplitW1<T>],
    ) {
        self.all_for = None;
        let e = de.e;
        let xbd = de.tables.len() * e;
        let xb = &mut self.xb[..n_u * xbd];
        for (xrow, &r) in xb.chunks_exact_mut(xbd.max(1)).zip(&self.first_row) {
            for (j, (&table, &c)) in de.tables.iter().zip(&de.cols).enumerate() {
                let id = idx[c * bsz + r as usize] as usize;
                let src = &ps.value(table)[id * e..(id + 1) * e];
                xrow[j * e..(j + 1) * e].copy_from_slice(src);
            }
        }
        self.run_rows(q, ps, n_u, with_loss, gates, splits);
    }

    /// The quantizer, MMoE's gates and PEPNet's `g·W1_gᵀ` terms on the first `n_u` rows of
    /// `xb`.
    fn run_rows(
        &mut self,
        q: &ResidualQuantizer,
        ps: &ParamStore<T>,
        n_u: usize,
        with_loss: bool,
        gates: &[Gate],
        splits: &[SplitW1<T>],
    ) {
        let xb = &self.xb[..n_u * q.p * q.e];
        q.forward_distinct(&mut self.rq, xb, ps, n_u, with_loss);
        let g = &self.rq.g[..n_u * q.w];
        for (gate, c) in gates.iter().zip(&mut self.gates) {
            gate.forward(c, g, ps, n_u);
        }
        for (split, table) in splits.iter().zip(&mut self.gatenu_g) {
            GateNu::g_term(split, table, g, n_u);
        }
    }

    /// For an inference pass: every row's slot is its key, and the results cover every
    /// combination ([`Self::quantize_all`]), so that they depend on the weights alone and
    /// outlive the batch. Returns the number of combinations, or `None` when there are more
    /// than [`MAX_ALL_KEYS`] or an id lies outside its vocabulary (as [`Self::assign`]).
    pub fn assign_all(&mut self, idx: &[u32], bsz: usize) -> Option<usize> {
        let total = self.slot_of_key.len();
        if total > MAX_ALL_KEYS || bsz == 0 {
            return None;
        }
        let slots = &mut self.slots[..bsz];
        slots.fill(0);
        let mut ok = true;
        for &(c, v, stride) in &self.radix {
            for (s, &id) in slots.iter_mut().zip(&idx[c * bsz..(c + 1) * bsz]) {
                ok &= (id as usize) < v;
                *s += id.min(v as u32 - 1) * stride as u32;
            }
        }
        ok.then_some(total)
    }

    /// After [`Self::assign_all`]: the quantizer, MMoE's gates and PEPNet's `g·W1_gᵀ` terms
    /// on every combination, as [`Self::quantize`] computes them for a batch's distinct rows
    /// (the same bits per combination) — only when the weights' [`ParamStore::version`] or
    /// the SIMD path changed since the last time, else nothing to do. No `L_rq` terms.
    pub fn quantize_all(
        &mut self,
        q: &ResidualQuantizer,
        de: &MultiEmbedding,
        ps: &ParamStore<T>,
        gates: &[Gate],
        splits: &[SplitW1<T>],
    ) {
        let key = (ps.version(), hmdn_kernels::simd_path());
        if self.all_for == Some(key) {
            return;
        }
        let total = self.slot_of_key.len();
        let e = de.e;
        let xbd = de.tables.len() * e;
        let xb = &mut self.xb[..total * xbd];
        // Combination k's ids: its mixed-radix digits.
        for (k, xrow) in xb.chunks_exact_mut(xbd.max(1)).enumerate() {
            for (j, (&table, &(_, v, stride))) in de.tables.iter().zip(&self.radix).enumerate() {
                let id = k / stride % v;
                xrow[j * e..(j + 1) * e].copy_from_slice(&ps.value(table)[id * e..(id + 1) * e]);
            }
        }
        self.run_rows(q, ps, total, false, gates, splits);
        self.all_for = Some(key);
    }

    /// The chunk of rows `r0..r0 + rows`'s view of the last [`Self::quantize`].
    pub fn chunk(&self, r0: usize, rows: usize) -> Gathered<'_, T> {
        Gathered {
            rq: &self.rq,
            gates: &self.gates,
            gatenu_g: &self.gatenu_g,
            slots: &self.slots[r0..r0 + rows],
        }
    }
}

/// What a row chunk copies from the batch's distinct rows: the quantizer's results, MMoE's
/// gate weights, and the slot of each of its rows.
#[derive(Clone, Copy)]
pub struct Gathered<'a, T> {
    /// The quantizer on the distinct rows.
    pub rq: &'a DistinctRows<T>,
    /// Each task's gate on the distinct rows (empty without MMoE gates).
    pub gates: &'a [GateCache<T>],
    /// Each PEPNet GateNU's `g·W1_gᵀ` on the distinct rows (empty for other models).
    pub gatenu_g: &'a [Vec<T>],
    /// Slot of each of the chunk's rows.
    pub slots: &'a [u32],
}

impl<T: Real> Gathered<'_, T> {
    /// `out[b, ..n] = gates[t].probs[slots[b], ..n]`: task `t`'s gate weights of the
    /// chunk's rows.
    pub fn gate_probs(&self, t: usize, out: &mut [T], n: usize) {
        gather_rows(out, &self.gates[t].probs, self.slots, n);
    }
}
