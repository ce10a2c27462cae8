//! Optimisers (SPEC §4): Adam for dense parameters and codebooks, lazy row-sparse Adam
//! (`torch.optim.SparseAdam` semantics) or dense Adam for embedding tables.
//!
//! The moments live in arenas with the same layout as [`ParamStore::values`], so a
//! checkpoint stores them under the parameter names.

use crate::params::{ParamId, ParamKind, ParamStore};
use hmdn_kernels::optim::{adam_step, lazy_adam_rows, AdamParams};
use hmdn_kernels::Real;
use serde::{Deserialize, Serialize};

/// How embedding tables are updated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EmbeddingOptim {
    /// Only rows seen in the batch move (`torch.optim.SparseAdam`). Default.
    Lazy,
    /// Adam over the whole table with a dense gradient (`torch.optim.Adam`).
    Dense,
}

/// Optimiser settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// Learning rate.
    pub lr: f64,
    /// Adam β1.
    pub beta1: f64,
    /// Adam β2.
    pub beta2: f64,
    /// Adam ε.
    pub eps: f64,
    /// Embedding-table update rule.
    pub embedding: EmbeddingOptim,
    /// L2 weight on the embedding rows seen in the batch (0 = off).
    pub embedding_l2: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            embedding: EmbeddingOptim::Lazy,
            embedding_l2: 0.0,
        }
    }
}

impl OptimConfig {
    /// The Adam hyper-parameters.
    pub fn adam(&self) -> AdamParams {
        AdamParams {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
        }
    }
}

/// Row-sparse gradient of one embedding table as the optimiser consumes it.
#[derive(Clone, Copy, Debug)]
pub struct SparseRows<'a, T> {
    /// The table.
    pub table: ParamId,
    /// Distinct rows, ascending.
    pub rows: &'a [u32],
    /// Summed gradients `[rows.len(), e]`.
    pub grad: &'a [T],
}

/// Adam state for every parameter of a model.
#[derive(Clone, Debug)]
pub struct Optimizer<T> {
    /// Settings.
    pub cfg: OptimConfig,
    /// First moments, arena layout.
    pub m: Vec<T>,
    /// Second moments, arena layout.
    pub v: Vec<T>,
    /// Completed steps (Adam's `t` before the next step).
    pub step: u64,
}

impl<T: Real> Optimizer<T> {
    /// Zero moments for every parameter of `ps`.
    pub fn new(ps: &ParamStore<T>, cfg: OptimConfig) -> Self {
        Optimizer {
            cfg,
            m: written_zeros(ps.len()),
            v: written_zeros(ps.len()),
            step: 0,
        }
    }

    /// One update. Dense parameters use `ps.grads`; embedding tables use `sparse` (one entry
    /// per table that received gradient this step, seen through `view`: e.g. the model's
    /// row gradients, without building a list).
    pub fn step<R: Sync>(
        &mut self,
        ps: &mut ParamStore<T>,
        sparse: &[R],
        view: impl Fn(&R) -> SparseRows<'_, T> + Sync,
    ) {
        self.step += 1;
        let h = self.cfg.adam();
        let t = self.step;
        // Worth splitting: about as many updated values as the kernels' own threshold.
        let values: usize = sparse.iter().map(|s| view(s).grad.len()).sum();
        let par = values >= 1 << 15 && hmdn_kernels::par::threads() > 1;
        let ordered = sparse.windows(2).all(|w| {
            ps.specs[view(&w[0]).table.0].range().end <= ps.specs[view(&w[1]).table.0].offset
        });
        let lazy_par = self.cfg.embedding == EmbeddingOptim::Lazy && ordered && par;
        // The usual layout (tables first, then every dense tensor): the dense tail's Adam,
        // bound by memory bandwidth, runs alongside the tables' lazy Adam, bound by the
        // latency of their scattered rows. Every element gets the same update either way.
        let dt = ps.dense_tail();
        let crate::params::ParamParts {
            specs,
            values,
            grads,
        } = ps.parts_mut();
        let tail_only = specs
            .iter()
            .all(|s| (s.kind == ParamKind::Dense) == (s.offset >= dt));
        if lazy_par && tail_only {
            let first = specs[view(&sparse[0]).table.0].offset;
            let (vt, vd) = values.split_at_mut(dt);
            let (mt, md) = self.m.split_at_mut(dt);
            let (wt, wd) = self.v.split_at_mut(dt);
            let gd = &grads[dt..];
            let l2 = self.cfg.embedding_l2;
            rayon::join(
                || adam_step(vd, gd, md, wd, &h, t),
                || {
                    let arenas = (&mut vt[first..], &mut mt[first..], &mut wt[first..]);
                    lazy_tables(specs, arenas, first, sparse, &view, &h, t, l2);
                },
            );
            return;
        }
        // Dense Adam is elementwise: one call per run of adjacent dense tensors (the whole
        // dense tail at once) updates each element exactly as one call per tensor would, and
        // is long enough for the kernel to split across threads.
        let mut run: Option<std::ops::Range<usize>> = None;
        let mut flush = |r: std::ops::Range<usize>| {
            adam_step(
                &mut values[r.clone()],
                &grads[r.clone()],
                &mut self.m[r.clone()],
                &mut self.v[r],
                &h,
                t,
            );
        };
        for spec in specs {
            let r = spec.range();
            run = match (run, spec.kind == ParamKind::Dense) {
                (Some(cur), true) if cur.end == r.start => Some(cur.start..r.end),
                (cur, dense) => {
                    if let Some(cur) = cur {
                        flush(cur);
                    }
                    dense.then_some(r)
                }
            };
        }
        if let Some(cur) = run {
            flush(cur);
        }
        if lazy_par {
            // Tables are disjoint ranges of the arena: update them in parallel (every row of
            // every table once, so the result does not depend on the split).
            let first = specs[view(&sparse[0]).table.0].offset;
            let arenas = (
                &mut values[first..],
                &mut self.m[first..],
                &mut self.v[first..],
            );
            let l2 = self.cfg.embedding_l2;
            lazy_tables(specs, arenas, first, sparse, &view, &h, t, l2);
            return;
        }
        self.sparse_serial(ps, sparse.iter().map(view), &h, t);
    }

    /// The table updates of [`Optimizer::step`], one table after the other.
    fn sparse_serial<'a>(
        &mut self,
        ps: &mut ParamStore<T>,
        sparse: impl Iterator<Item = SparseRows<'a, T>>,
        h: &AdamParams,
        t: u64,
    ) where
        T: 'a,
    {
        let h = *h;
        let crate::params::ParamParts {
            specs,
            values,
            grads,
        } = ps.parts_mut();
        for s in sparse {
            let spec = &specs[s.table.0];
            debug_assert_eq!(spec.kind, ParamKind::Embedding);
            let e = spec.shape[1];
            let r = spec.range();
            match self.cfg.embedding {
                EmbeddingOptim::Lazy => lazy_adam_rows(
                    &mut values[r.clone()],
                    &mut self.m[r.clone()],
                    &mut self.v[r],
                    e,
                    s.rows,
                    s.grad,
                    &h,
                    t,
                    self.cfg.embedding_l2,
                ),
                EmbeddingOptim::Dense => {
                    // Densify into the table's slice of the gradient arena, then plain Adam.
                    let g = &mut grads[r.clone()];
                    g.fill(T::ZERO);
                    let l2 = T::from_f64(self.cfg.embedding_l2);
                    for (j, &row) in s.rows.iter().enumerate() {
                        let base = row as usize * e;
                        for c in 0..e {
                            g[base + c] += s.grad[j * e + c] + l2 * values[r.start + base + c];
                        }
                    }
                    adam_step(
                        &mut values[r.clone()],
                        &grads[r.clone()],
                        &mut self.m[r.clone()],
                        &mut self.v[r],
                        &h,
                        t,
                    );
                }
            }
        }
    }
}

/// `n` zeros written one by one. `vec![0.0; n]` would get zeroed pages from the OS that are
/// mapped on first write — and lazy Adam first writes a table row's moments in whichever
/// step first sees that row, so training would page-fault (and flush TLBs) for hundreds of
/// steps. Writing them here moves that cost to start-up. The buffer is advised for huge
/// pages first ([`hmdn_kernels::mem`]): lazy Adam reads and writes the moments of rows
/// spread over the whole tables.
fn written_zeros<T: Real>(n: usize) -> Vec<T> {
    hmdn_kernels::mem::huge_page_vec(n, T::ZERO)
}

/// Lazy Adam on every table of `sparse` (ascending, disjoint arena ranges), in parallel:
/// `arenas` are (values, m, v) from arena element `base` on; the table list is cut where the
/// two parts have about as many rows to update, and they run under `rayon::join` on the
/// two sides of a split of the arenas.
#[allow(clippy::too_many_arguments)]
fn lazy_tables<T: Real, R: Sync>(
    specs: &[crate::params::ParamSpec],
    arenas: (&mut [T], &mut [T], &mut [T]),
    base: usize,
    sparse: &[R],
    view: &(impl Fn(&R) -> SparseRows<'_, T> + Sync),
    h: &AdamParams,
    t: u64,
    l2: f64,
) {
    let (values, m, v) = arenas;
    match sparse {
        [] => {}
        [one] => {
            let s = view(one);
            let spec = &specs[s.table.0];
            let r = spec.offset - base..spec.offset - base + spec.len;
            let (vals, m, v) = (&mut values[r.clone()], &mut m[r.clone()], &mut v[r]);
            lazy_adam_rows(vals, m, v, spec.shape[1], s.rows, s.grad, h, t, l2);
        }
        _ => {
            // Split where the two sides have about the same number of rows to update (the
            // tables' row counts differ by hundreds of times), at least one table each.
            let total: usize = sparse.iter().map(|s| view(s).rows.len()).sum();
            let mut mid = 1;
            let mut left = view(&sparse[0]).rows.len();
            while mid + 1 < sparse.len() && 2 * (left + view(&sparse[mid]).rows.len()) <= total {
                left += view(&sparse[mid]).rows.len();
                mid += 1;
            }
            let cut = specs[view(&sparse[mid]).table.0].offset - base;
            let (vl, vr) = values.split_at_mut(cut);
            let (ml, mr) = m.split_at_mut(cut);
            let (wl, wr) = v.split_at_mut(cut);
            let (sl, sr) = sparse.split_at(mid);
            rayon::join(
                || lazy_tables(specs, (vl, ml, wl), base, sl, view, h, t, l2),
                || lazy_tables(specs, (vr, mr, wr), base + cut, sr, view, h, t, l2),
            );
        }
    }
}
