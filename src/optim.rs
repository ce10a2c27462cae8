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
            m: vec![T::ZERO; ps.len()],
            v: vec![T::ZERO; ps.len()],
            step: 0,
        }
    }

    /// One update. Dense parameters use `ps.grads`; embedding tables use `sparse` (one entry
    /// per table that received gradient this step).
    pub fn step<'a>(
        &mut self,
        ps: &mut ParamStore<T>,
        sparse: impl IntoIterator<Item = SparseRows<'a, T>>,
    ) where
        T: 'a,
    {
        self.step += 1;
        let h = self.cfg.adam();
        let t = self.step;
        for spec in &ps.specs {
            if spec.kind == ParamKind::Dense {
                let r = spec.range();
                adam_step(
                    &mut ps.values[r.clone()],
                    &ps.grads[r.clone()],
                    &mut self.m[r.clone()],
                    &mut self.v[r],
                    &h,
                    t,
                );
            }
        }
        for s in sparse {
            let spec = &ps.specs[s.table.0];
            debug_assert_eq!(spec.kind, ParamKind::Embedding);
            let e = spec.shape[1];
            let r = spec.range();
            match self.cfg.embedding {
                EmbeddingOptim::Lazy => lazy_adam_rows(
                    &mut ps.values[r.clone()],
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
                    let g = &mut ps.grads[r.clone()];
                    g.fill(T::ZERO);
                    let l2 = T::from_f64(self.cfg.embedding_l2);
                    for (j, &row) in s.rows.iter().enumerate() {
                        let base = row as usize * e;
                        for c in 0..e {
                            g[base + c] += s.grad[j * e + c] + l2 * ps.values[r.start + base + c];
                        }
                    }
                    adam_step(
                        &mut ps.values[r.clone()],
                        &ps.grads[r.clone()],
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
