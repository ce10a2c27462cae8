//! Output heads: the per-task logit layers ("towers") and the task loss
//! `Σ_t mean_B BCEWithLogits(logit_t, y_t)` (SPEC §2, Eq. 11 without the RQ term).
//!
//! Logits and labels are `[B, T]` row-major (one column per task).

use crate::model::linear::Linear;
use crate::params::{Grads, ParamStore};
use hmdn_kernels::loss::{bce_with_logits_backward, bce_with_logits_sum};
use hmdn_kernels::Real;
use rand::Rng;

/// `Σ_t mean_b BCE(logits[b, t], labels[b, t])` = (sum over all `B·T` entries) / B.
pub fn task_loss_forward<T: Real>(logits: &[T], labels: &[T], bsz: usize, n_tasks: usize) -> T {
    let n = bsz * n_tasks;
    if bsz == 0 {
        return T::ZERO;
    }
    bce_with_logits_sum(&logits[..n], &labels[..n]) / T::from_usize(bsz)
}

/// `dlogits[b, t] += (σ(logits[b, t]) − labels[b, t]) / B`.
///
/// Derivation: `d/dx [max(x,0) − x·y + ln(1 + e^{−|x|})] = σ(x) − y`, and every task's mean
/// divides by the same B.
pub fn task_loss_backward<T: Real>(
    dlogits: &mut [T],
    logits: &[T],
    labels: &[T],
    bsz: usize,
    n_tasks: usize,
) {
    task_loss_backward_rows(dlogits, logits, labels, bsz, n_tasks, bsz);
}

/// [`task_loss_backward`] for `rows` rows of a batch of `batch_rows` (a row chunk's part:
/// the mean still divides by the whole batch).
pub fn task_loss_backward_rows<T: Real>(
    dlogits: &mut [T],
    logits: &[T],
    labels: &[T],
    rows: usize,
    n_tasks: usize,
    batch_rows: usize,
) {
    if rows == 0 {
        return;
    }
    let n = rows * n_tasks;
    bce_with_logits_backward(
        &mut dlogits[..n],
        &logits[..n],
        &labels[..n],
        T::ONE / T::from_usize(batch_rows),
    );
}

/// One logit layer per task, `towers.<t>` (`nn.Linear(h, 1)`), each writing its column of
/// the `[B, T]` logits.
#[derive(Clone, Debug)]
pub struct Towers {
    /// Task `t`'s layer `[1, h]` / `[1]`.
    pub towers: Vec<Linear>,
}

/// Scratch of [`Towers`]: one task's logit column `[B]` and its gradient `[B]`.
#[derive(Clone, Debug, Default)]
pub struct TowerCache<T> {
    /// One column of logits `[B]`.
    pub col: Vec<T>,
    /// Its gradient `[B]`.
    pub dcol: Vec<T>,
}

impl<T: Real> TowerCache<T> {
    /// Sizes the buffers for `bsz` rows (reallocates only to grow).
    pub fn ensure_batch(&mut self, bsz: usize) {
        if self.col.len() < bsz {
            self.col.resize(bsz, T::ZERO);
            self.dcol.resize(bsz, T::ZERO);
        }
    }
}

impl Towers {
    /// Registers `<prefix>.<t>` (`h → 1`) for `t = 0..n_tasks`.
    pub fn new<T: Real, R: Rng>(
        ps: &mut ParamStore<T>,
        prefix: &str,
        h: usize,
        n_tasks: usize,
        rng: &mut R,
    ) -> Self {
        Towers {
            towers: (0..n_tasks)
                .map(|t| Linear::new(ps, &format!("{prefix}.{t}"), h, 1, rng))
                .collect(),
        }
    }

    /// Number of tasks.
    pub fn n_tasks(&self) -> usize {
        self.towers.len()
    }

    /// `logits[b, t] = ⟨h[b, :], w_t⟩ + b_t` for task `t` with input `h` `[B, d_in]`.
    pub fn forward<T: Real>(
        &self,
        t: usize,
        logits: &mut [T],
        cache: &mut TowerCache<T>,
        h: &[T],
        ps: &ParamStore<T>,
        bsz: usize,
    ) {
        cache.ensure_batch(bsz);
        let nt = self.n_tasks();
        self.towers[t].forward(&mut cache.col, h, ps, bsz);
        for (b, &v) in cache.col[..bsz].iter().enumerate() {
            logits[b * nt + t] = v;
        }
    }

    /// Backward of task `t` from `dlogits` `[B, T]`: accumulates the tower's gradients and
    /// `dh[B×d_in] +=` (the linear layer's backward on column `t`).
    #[allow(clippy::too_many_arguments)]
    pub fn backward<T: Real>(
        &self,
        t: usize,
        dh: Option<&mut [T]>,
        cache: &mut TowerCache<T>,
        ps: &mut Grads<'_, T>,
        dlogits: &[T],
        h: &[T],
        bsz: usize,
    ) {
        cache.ensure_batch(bsz);
        let nt = self.n_tasks();
        for (b, d) in cache.dcol[..bsz].iter_mut().enumerate() {
            *d = dlogits[b * nt + t];
        }
        self.towers[t].backward(dh, ps, &cache.dcol[..bsz], h, bsz);
    }
}

/// Shared-Bottom heads: per task `t` and domain value `k` a layer `towers.<t>.<k>`
/// (`nn.Linear(h, 1)`); row `b` is scored by the tower of its own domain `dom[b]`.
#[derive(Clone, Debug)]
pub struct DomainTowers {
    /// Layer of task `t`, domain `k` at `t·n_domains + k`.
    pub towers: Vec<Linear>,
    /// Number of tasks T.
    pub n_tasks: usize,
    /// Number of domain values (the domain field's vocabulary, index 0 included).
    pub n_domains: usize,
    /// Input width.
    pub d_in: usize,
}

impl DomainTowers {
    /// Registers `<prefix>.<t>.<k>` (`h → 1`) for every task and domain value.
    pub fn new<T: Real, R: Rng>(
        ps: &mut ParamStore<T>,
        prefix: &str,
        h: usize,
        n_tasks: usize,
        n_domains: usize,
        rng: &mut R,
    ) -> Self {
        let mut towers = Vec::with_capacity(n_tasks * n_domains);
        for t in 0..n_tasks {
            for k in 0..n_domains {
                towers.push(Linear::new(ps, &format!("{prefix}.{t}.{k}"), h, 1, rng));
            }
        }
        DomainTowers {
            towers,
            n_tasks,
            n_domains,
            d_in: h,
        }
    }

    /// `logits[b, t] = ⟨h[b, :], w_{t, dom[b]}⟩ + b_{t, dom[b]}` for every task.
    ///
    /// # Panics
    /// If a domain index is outside the vocabulary (the data layer maps unknowns to 0).
    #[track_caller]
    pub fn forward<T: Real>(
        &self,
        logits: &mut [T],
        h: &[T],
        dom: &[u32],
        ps: &ParamStore<T>,
        bsz: usize,
    ) {
        let (d, nt) = (self.d_in, self.n_tasks);
        for b in 0..bsz {
            let k = dom[b] as usize;
            assert!(k < self.n_domains, "domain index {k} out of range");
            let hr = &h[b * d..(b + 1) * d];
            for t in 0..nt {
                let lin = &self.towers[t * self.n_domains + k];
                let w = ps.value(lin.w);
                let z = hr.iter().zip(w).fold(T::ZERO, |a, (&x, &y)| a + x * y);
                logits[b * nt + t] = z + ps.value(lin.b)[0];
            }
        }
    }

    /// Backward from `dlogits` `[B, T]`: accumulates each used tower's gradients and
    /// `dh[B×d] +=`.
    ///
    /// Derivation: row `b`'s logit for task `t` is `⟨h_b, w_{t,k_b}⟩ + b_{t,k_b}`, so
    /// `dw_{t,k} += Σ_{b: k_b = k} dlogit[b,t]·h_b`, `db_{t,k} += Σ_{b: k_b = k} dlogit[b,t]`,
    /// `dh_b += Σ_t dlogit[b,t]·w_{t,k_b}`. Rows are visited in batch order (deterministic).
    #[allow(clippy::too_many_arguments)]
    pub fn backward<T: Real>(
        &self,
        dh: &mut [T],
        ps: &mut Grads<'_, T>,
        dlogits: &[T],
        h: &[T],
        dom: &[u32],
        bsz: usize,
    ) {
        let (d, nt) = (self.d_in, self.n_tasks);
        for b in 0..bsz {
            let k = dom[b] as usize;
            let r = b * d..(b + 1) * d;
            for t in 0..nt {
                let lin = &self.towers[t * self.n_domains + k];
                let g = dlogits[b * nt + t];
                let (wr, br) = (ps.range(lin.w), ps.range(lin.b));
                ps.grads[br][0] += g;
                for (acc, &x) in ps.grads[wr.clone()].iter_mut().zip(&h[r.clone()]) {
                    *acc += g * x;
                }
                for (acc, &w) in dh[r.clone()].iter_mut().zip(&ps.values[wr]) {
                    *acc += g * w;
                }
            }
        }
    }
}
