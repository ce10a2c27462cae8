//! Embedding lookups over several categorical fields, and their row-sparse gradients.
//!
//! A [`MultiEmbedding`] owns one table `<prefix>.<field>.weight` `[V_f, e]` per field and writes
//! the looked-up rows side by side into a wider activation (`x`, `x_b` or the wide part). Its
//! gradient is *row-sparse*: one [`RowGrad`] per table lists the distinct rows a batch touched
//! and their summed gradients, which the optimiser applies lazily (SPEC §4). The tables' slices
//! of `ParamStore::grads` are only written on request ([`RowGrad::add_to_dense`]).
//!
//! Indices come **field-major**, `idx[c·B + b]` = row `b`'s index in column `c`, because the
//! model transposes the batch's `[B, F]` matrix once and every table then reads a contiguous
//! column.

use crate::config::FieldSpec;
use crate::params::{Init, ParamId, ParamKind, ParamStore};
use hmdn_kernels::embed::{accumulate_row_grads, gather_fields};
use hmdn_kernels::Real;
use rand::Rng;
use rayon::prelude::*;

/// The gradient of one embedding table from one batch, as a list of touched rows.
#[derive(Clone, Debug)]
pub struct RowGrad<T> {
    /// The table this gradient belongs to.
    pub table: ParamId,
    /// Row width of the table.
    pub e: usize,
    /// Distinct row indices touched by the batch, ascending.
    pub rows: Vec<u32>,
    /// Summed gradient of each listed row, `[rows.len(), e]` (sums taken in batch order).
    pub grad: Vec<T>,
    /// Scratch for the stable sort in `accumulate_row_grads` (`[2·B]`).
    order: Vec<u32>,
}

impl<T: Real> RowGrad<T> {
    /// An empty gradient for `table` with rows of width `e`.
    pub fn new(table: ParamId, e: usize) -> Self {
        RowGrad {
            table,
            e,
            rows: Vec::new(),
            grad: Vec::new(),
            order: Vec::new(),
        }
    }

    /// Reserves room for a batch of `bsz` rows so that refilling never allocates.
    pub fn reserve(&mut self, bsz: usize) {
        // `reserve` counts from the current length; clear first so capacity ≥ bsz afterwards.
        self.rows.clear();
        self.grad.clear();
        self.order.clear();
        self.rows.reserve(bsz);
        self.grad.reserve(bsz * self.e);
        self.order.reserve(2 * bsz);
    }

    /// Refills this gradient from `dout[b, off..off + e]` (`[B, stride]`) for the rows `idx`
    /// (`[B]`) looked up: the distinct rows in ascending order, each summing its batch rows in
    /// batch order (`accumulate_row_grads`).
    pub fn accumulate_from(&mut self, idx: &[u32], dout: &[T], stride: usize, off: usize) {
        let bsz = idx.len();
        accumulate_row_grads(
            &mut self.rows,
            &mut self.grad,
            &mut self.order,
            idx,
            &dout[..bsz * stride],
            stride,
            off,
            self.e,
        );
    }

    /// Empties the gradient (no rows touched).
    pub fn clear(&mut self) {
        self.rows.clear();
        self.grad.clear();
    }

    /// `dense[r, :] += grad[j, :]` for every listed row `r = rows[j]`; `dense` is the whole
    /// table's gradient `[V, e]` (dense Adam, gradient checks).
    ///
    /// # Panics
    /// If a row lies outside `dense` (a programmer error: wrong slice).
    #[track_caller]
    pub fn add_to_dense(&self, dense: &mut [T]) {
        let e = self.e;
        for (&r, g) in self.rows.iter().zip(self.grad.chunks_exact(e.max(1))) {
            let r = r as usize;
            for (d, &v) in dense[r * e..(r + 1) * e].iter_mut().zip(g) {
                *d += v;
            }
        }
    }

    /// Adds this gradient into the table's slice of `ps.grads`.
    pub fn add_to_store(&self, ps: &mut ParamStore<T>) {
        let r = ps.range(self.table);
        self.add_to_dense(&mut ps.grads[r]);
    }
}

/// Embedding tables for a list of fields, looked up side by side.
#[derive(Clone, Debug)]
pub struct MultiEmbedding {
    /// One table per field, `[V_f, e]`.
    pub tables: Vec<ParamId>,
    /// For each table, the column of the field-major index matrix `[F_all, B]` it reads.
    pub cols: Vec<usize>,
    /// Row width of every table.
    pub e: usize,
}

impl MultiEmbedding {
    /// Registers `<prefix>.<field>.weight` `[V_f, e]` (kind `Embedding`, normal init with
    /// `init_std`) for each field; table `j` reads column `cols[j]` of the index matrix.
    ///
    /// # Panics
    /// If `fields` and `cols` differ in length (a programmer error).
    #[track_caller]
    pub fn new<T: Real, R: Rng>(
        ps: &mut ParamStore<T>,
        prefix: &str,
        fields: &[FieldSpec],
        cols: &[usize],
        e: usize,
        init_std: f64,
        rng: &mut R,
    ) -> Self {
        assert_eq!(fields.len(), cols.len(), "one index column per field");
        let tables = fields
            .iter()
            .map(|f| {
                ps.add(
                    &format!("{prefix}.{}.weight", f.name),
                    &[f.vocab_size, e],
                    ParamKind::Embedding,
                    Init::Normal(init_std),
                    rng,
                )
            })
            .collect();
        MultiEmbedding {
            tables,
            cols: cols.to_vec(),
            e,
        }
    }

    /// Number of fields (tables).
    pub fn n_fields(&self) -> usize {
        self.tables.len()
    }

    /// Width written into the output, `n_fields · e`.
    pub fn width(&self) -> usize {
        self.tables.len() * self.e
    }

    /// Empty row gradients, one per table, in table order.
    pub fn new_row_grads<T: Real>(&self) -> Vec<RowGrad<T>> {
        self.tables
            .iter()
            .map(|&t| RowGrad::new(t, self.e))
            .collect()
    }

    /// `out[b, off + j·e .. off + (j+1)·e] = table_j[idx[cols[j]·B + b], :]`, with `out` rows
    /// of width `stride` (`[B, stride]`); other columns of `out` are left alone.
    ///
    /// # Panics
    /// If an index is outside its table (the data layer maps unknown values to 0).
    #[track_caller]
    pub fn forward<T: Real>(
        &self,
        out: &mut [T],
        stride: usize,
        off: usize,
        idx: &[u32],
        ps: &ParamStore<T>,
        bsz: usize,
    ) {
        // Fixed blocks of rows in parallel, every table within a block (copies only, so the
        // split does not change the result).
        let block = |r0: usize, out: &mut [T]| {
            let rows = out.len() / stride.max(1);
            self.forward_rows(out, stride, off, idx, bsz, r0, rows, ps);
        };
        let out = &mut out[..bsz * stride];
        if bsz >= 2 * GATHER_BLOCK_ROWS && stride > 0 && hmdn_kernels::par::threads() > 1 {
            out.par_chunks_mut(GATHER_BLOCK_ROWS * stride)
                .enumerate()
                .for_each(|(q, o)| block(q * GATHER_BLOCK_ROWS, o));
        } else {
            block(0, out);
        }
    }

    /// Rows `r0 .. r0 + rows` of [`MultiEmbedding::forward`] into `out` (`[rows, stride]`,
    /// the first of them at `out[0]`); `idx` is the whole batch's field-major index matrix
    /// (`bsz` rows). Row by row: each output row is written whole (`gather_fields`).
    ///
    /// # Panics
    /// As [`MultiEmbedding::forward`].
    #[track_caller]
    #[allow(clippy::too_many_arguments)]
    pub fn forward_rows<T: Real>(
        &self,
        out: &mut [T],
        stride: usize,
        off: usize,
        idx: &[u32],
        bsz: usize,
        r0: usize,
        rows: usize,
        ps: &ParamStore<T>,
    ) {
        let field = |j: usize| {
            let c = self.cols[j];
            (
                ps.value(self.tables[j]),
                &idx[c * bsz + r0..c * bsz + r0 + rows],
            )
        };
        gather_fields(out, stride, off, self.tables.len(), field, self.e, rows);
    }

    /// Builds each table's row gradient from `dout[b, off + j·e ..]` (`[B, stride]`), writing
    /// `grads[j]` (one [`RowGrad`] per table, in table order; each is refilled, i.e. this is
    /// the whole batch's gradient for those tables).
    ///
    /// Derivation: `out[b, j-block] = T_j[i_b]`, so `∂L/∂T_j[r] = Σ_{b: i_b = r} dout[b, j-block]`
    /// — a sum over the rows that looked `r` up, taken in batch order by
    /// `accumulate_row_grads`.
    pub fn backward<T: Real>(
        &self,
        grads: &mut [RowGrad<T>],
        dout: &[T],
        stride: usize,
        off: usize,
        idx: &[u32],
        bsz: usize,
    ) {
        self.backward_where(grads, |j| Some(off + j * self.e), dout, stride, idx, bsz);
    }

    /// [`MultiEmbedding::backward`] for some of the tables: table `j` reads its gradient from
    /// `dout[b, cols[j] ..]` when `cols[j]` is `Some`, and its [`RowGrad`] is left alone when
    /// it is `None` (a table whose gradient is built elsewhere, see
    /// `factored::FieldFactoring::backward_fields`).
    pub fn backward_columns<T: Real>(
        &self,
        grads: &mut [RowGrad<T>],
        cols: &[Option<usize>],
        dout: &[T],
        stride: usize,
        idx: &[u32],
        bsz: usize,
    ) {
        assert_eq!(cols.len(), self.tables.len(), "one column entry per table");
        self.backward_where(grads, |j| cols[j], dout, stride, idx, bsz);
    }

    /// Row gradients of the tables `j` with a column `col(j)` in `dout` (the others' are left
    /// alone).
    fn backward_where<T: Real>(
        &self,
        grads: &mut [RowGrad<T>],
        col: impl Fn(usize) -> Option<usize> + Sync,
        dout: &[T],
        stride: usize,
        idx: &[u32],
        bsz: usize,
    ) {
        assert_eq!(grads.len(), self.tables.len(), "one RowGrad per table");
        // Tables are independent: one task each, when the batch is worth splitting.
        let table = |(j, (g, &c)): (usize, (&mut RowGrad<T>, &usize))| {
            debug_assert_eq!(g.table, self.tables[j]);
            let Some(off) = col(j) else { return };
            g.accumulate_from(&idx[c * bsz..(c + 1) * bsz], dout, stride, off);
        };
        if bsz >= PAR_MIN_ROWS && hmdn_kernels::par::threads() > 1 {
            grads
                .par_iter_mut()
                .zip(&self.cols)
                .enumerate()
                .for_each(table);
        } else {
            grads.iter_mut().zip(&self.cols).enumerate().for_each(table);
        }
    }
}

/// Batch rows per task of [`MultiEmbedding::forward`].
const GATHER_BLOCK_ROWS: usize = 128;

/// Batch rows from which the tables' row gradients run in parallel (one task per table).
pub(crate) const PAR_MIN_ROWS: usize = 2 * GATHER_BLOCK_ROWS;
