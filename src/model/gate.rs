//! MMoE gating: a softmax gate `G = softmax(g·Wᵀ + b)` (`gates.<t>`, weight `[n, z]`) and the
//! expert mixture `h = Σ_i G_i·E_i` (paper Eq. 6–8).
//!
//! The mixture is written one expert at a time ([`mixture_accumulate`],
//! [`mixture_backward`]) so that each expert's output can stay in its own MLP cache — no list
//! of slices has to be built (and allocated) per step.

use crate::model::linear::Linear;
use crate::params::{Grads, ParamStore};
use hmdn_kernels::softmax::{softmax_rows_backward, softmax_rows_forward};
use hmdn_kernels::Real;
use rand::Rng;

/// Softmax gate over `n` experts from a `z`-wide gate input.
#[derive(Clone, Debug)]
pub struct Gate {
    /// The logit layer `z → n` (`<prefix>.weight` `[n, z]`, `<prefix>.bias` `[n]`).
    pub lin: Linear,
}

/// Activations of one [`Gate`] for one batch.
#[derive(Clone, Debug, Default)]
pub struct GateCache<T> {
    /// Gate logits `[B, n]` (forward) — reused as `∂L/∂logits` in backward.
    pub logits: Vec<T>,
    /// Gate weights `G = softmax(logits)` `[B, n]`.
    pub probs: Vec<T>,
    /// Upstream gradient `∂L/∂G` `[B, n]`; callers accumulate into it (zero it first,
    /// [`GateCache::zero_dprobs`]) before [`Gate::backward`].
    pub dprobs: Vec<T>,
}

impl<T: Real> GateCache<T> {
    /// Sizes the buffers for `bsz` rows and `n` experts (reallocates only to grow).
    pub fn ensure_batch(&mut self, bsz: usize, n: usize) {
        if self.probs.len() < bsz * n {
            self.logits.resize(bsz * n, T::ZERO);
            self.probs.resize(bsz * n, T::ZERO);
            self.dprobs.resize(bsz * n, T::ZERO);
        }
    }

    /// Sets `dprobs[..B·n]` to zero.
    pub fn zero_dprobs(&mut self, bsz: usize, n: usize) {
        self.dprobs[..bsz * n].fill(T::ZERO);
    }
}

impl Gate {
    /// Registers `<prefix>.weight` `[n, z]` and `<prefix>.bias` `[n]` (`nn.Linear` init).
    pub fn new<T: Real, R: Rng>(
        ps: &mut ParamStore<T>,
        prefix: &str,
        z: usize,
        n: usize,
        rng: &mut R,
    ) -> Self {
        Gate {
            lin: Linear::new(ps, prefix, z, n, rng),
        }
    }

    /// Number of experts.
    pub fn n(&self) -> usize {
        self.lin.d_out
    }

    /// `cache.probs[B×n] = softmax(g[B×z]·Wᵀ + b)` row by row.
    pub fn forward<T: Real>(
        &self,
        cache: &mut GateCache<T>,
        g: &[T],
        ps: &ParamStore<T>,
        bsz: usize,
    ) {
        let n = self.n();
        cache.ensure_batch(bsz, n);
        self.lin.forward(&mut cache.logits, g, ps, bsz);
        softmax_rows_forward(&mut cache.probs[..bsz * n], &cache.logits[..bsz * n], n);
    }

    /// Backward from `cache.dprobs = ∂L/∂G`: accumulates `dW`, `db` and, when given,
    /// `dg[B×z] +=`. Overwrites `cache.logits` (used as `∂L/∂logits` scratch).
    ///
    /// Derivation: `∂G_i/∂u_j = G_i(δ_ij − G_j)`, so `∂L/∂u_j = G_j·(dG_j − Σ_i dG_i G_i)`
    /// (`softmax_rows_backward`); then the linear layer `u = g·Wᵀ + b`.
    pub fn backward<T: Real>(
        &self,
        dg: Option<&mut [T]>,
        cache: &mut GateCache<T>,
        ps: &mut Grads<'_, T>,
        g: &[T],
        bsz: usize,
    ) {
        let n = self.n();
        let du = &mut cache.logits[..bsz * n];
        du.fill(T::ZERO);
        softmax_rows_backward(du, &cache.dprobs[..bsz * n], &cache.probs[..bsz * n], n);
        self.lin.backward(dg, ps, du, g, bsz);
    }
}

/// Adds expert `i`'s weighted output to the mixture: `h[b, :] += G[b, i] · expert[b, :]`.
/// `h` and `expert` are `[B, d]`, `probs` is `[B, n]`. Zero `h` and call for `i = 0..n` in
/// order (fixed order → deterministic sums).
#[allow(clippy::too_many_arguments)]
pub fn mixture_accumulate<T: Real>(
    h: &mut [T],
    probs: &[T],
    expert: &[T],
    i: usize,
    n: usize,
    d: usize,
    bsz: usize,
) {
    if d == 0 {
        return;
    }
    for (b, (hr, er)) in h[..bsz * d]
        .chunks_exact_mut(d)
        .zip(expert.chunks_exact(d))
        .enumerate()
    {
        let gi = probs[b * n + i];
        for (o, &v) in hr.iter_mut().zip(er) {
            *o += gi * v;
        }
    }
}

/// Backward of [`mixture_accumulate`] for expert `i`, from `dh = ∂L/∂h` (`[B, d]`):
/// `dexpert[b, :] += G[b, i]·dh[b, :]` and `dprobs[b, i] += ⟨dh[b, :], expert[b, :]⟩`.
///
/// Derivation: `h = Σ_i G_i E_i` is bilinear in `(G_i, E_i)`; the partial derivatives are
/// `∂h/∂E_i = G_i·I` and `∂h/∂G_i = E_i`.
#[allow(clippy::too_many_arguments)]
pub fn mixture_backward<T: Real>(
    dexpert: &mut [T],
    dprobs: &mut [T],
    dh: &[T],
    probs: &[T],
    expert: &[T],
    i: usize,
    n: usize,
    d: usize,
    bsz: usize,
) {
    if d == 0 {
        return;
    }
    for b in 0..bsz {
        let r = b * d..(b + 1) * d;
        let gi = probs[b * n + i];
        let mut dot = T::ZERO;
        for ((de, &g), &e) in dexpert[r.clone()]
            .iter_mut()
            .zip(&dh[r.clone()])
            .zip(&expert[r])
        {
            *de += gi * g;
            dot += g * e;
        }
        dprobs[b * n + i] += dot;
    }
}
