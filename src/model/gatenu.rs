//! PEPNet's GateNU, `δ(v) = γ·sigmoid(W2·ReLU(W1·v + b1) + b2)` (`<prefix>.fc1`, `.fc2`),
//! and the elementwise scaling `y = δ ⊙ x` it drives (EPNet on the input, PPNet on every
//! hidden layer). With γ = 2 a neutral gate (logit 0) leaves its input unchanged.

use crate::model::linear::Linear;
use crate::params::{Grads, ParamStore};
use hmdn_kernels::act::{bias_add, scaled_sigmoid_forward};
use hmdn_kernels::act::{bias_relu_forward, relu_backward, scaled_sigmoid_backward};
use hmdn_kernels::gemm::gemm_packed_b;
use hmdn_kernels::{gemm, Real, Trans};
use rand::Rng;

/// A two-layer gate `d_in → hidden → d_out` with output in `(0, γ)`.
#[derive(Clone, Debug)]
pub struct GateNu {
    /// First layer `d_in → hidden`, followed by ReLU.
    pub fc1: Linear,
    /// Second layer `hidden → d_out`, followed by `γ·sigmoid`.
    pub fc2: Linear,
    /// Output scale γ.
    pub gamma: f64,
}

/// Activations and scratch of one [`GateNu`] for one batch.
#[derive(Clone, Debug, Default)]
pub struct GateNuCache<T> {
    /// Hidden activations `ReLU(v·W1ᵀ + b1)` `[B, hidden]`.
    pub a1: Vec<T>,
    /// Gate output `δ` `[B, d_out]`.
    pub delta: Vec<T>,
    /// Upstream gradient `∂L/∂δ` `[B, d_out]`; callers accumulate into it (after
    /// [`GateNuCache::zero_ddelta`]) before [`GateNu::backward`].
    pub ddelta: Vec<T>,
    /// Scratch: `∂L/∂(fc2 pre-activation)` `[B, d_out]`; in forward, the pre-activation.
    pub u2: Vec<T>,
    /// Scratch: `∂L/∂a1` `[B, hidden]`.
    pub da1: Vec<T>,
    /// Scratch: `∂L/∂(fc1 pre-activation)` `[B, hidden]`.
    pub du1: Vec<T>,
    /// Scratch: the leading input columns of `W1` `[hidden, cols]`, when only those columns
    /// of `∂L/∂v` are wanted.
    pub w1_cols: Vec<T>,
}

impl<T: Real> GateNuCache<T> {
    /// Sizes the buffers for `bsz` rows of `gate` (reallocates only to grow).
    pub fn ensure_batch(&mut self, gate: &GateNu, bsz: usize) {
        let (h, d) = (gate.fc1.d_out, gate.fc2.d_out);
        if self.a1.len() < bsz * h || self.delta.len() < bsz * d {
            self.a1.resize(bsz * h, T::ZERO);
            self.da1.resize(bsz * h, T::ZERO);
            self.du1.resize(bsz * h, T::ZERO);
            self.delta.resize(bsz * d, T::ZERO);
            self.ddelta.resize(bsz * d, T::ZERO);
            self.u2.resize(bsz * d, T::ZERO);
        }
        let w1 = h * gate.fc1.d_in;
        if self.w1_cols.len() < w1 {
            self.w1_cols.resize(w1, T::ZERO);
        }
    }

    /// Sets `ddelta[..B·d_out]` to zero.
    pub fn zero_ddelta(&mut self, bsz: usize, d_out: usize) {
        self.ddelta[..bsz * d_out].fill(T::ZERO);
    }
}

impl GateNu {
    /// Registers `<prefix>.fc1` (`d_in → hidden`) and `<prefix>.fc2` (`hidden → d_out`) with
    /// `nn.Linear` initialisation.
    pub fn new<T: Real, R: Rng>(
        ps: &mut ParamStore<T>,
        prefix: &str,
        d_in: usize,
        hidden: usize,
        d_out: usize,
        gamma: f64,
        rng: &mut R,
    ) -> Self {
        let fc1 = Linear::new(ps, &format!("{prefix}.fc1"), d_in, hidden, rng);
        let fc2 = Linear::new(ps, &format!("{prefix}.fc2"), hidden, d_out, rng);
        GateNu { fc1, fc2, gamma }
    }

    /// Output width.
    pub fn d_out(&self) -> usize {
        self.fc2.d_out
    }

    /// `cache.delta[B×d_out] = γ·sigmoid(ReLU(v·W1ᵀ + b1)·W2ᵀ + b2)` for `v` `[B, d_in]`.
    pub fn forward<T: Real>(
        &self,
        cache: &mut GateNuCache<T>,
        v: &[T],
        ps: &ParamStore<T>,
        bsz: usize,
    ) {
        cache.ensure_batch(self, bsz);
        let (f1, f2) = (&self.fc1, &self.fc2);
        let a1 = &mut cache.a1[..bsz * f1.d_out];
        gemm_packed_b(
            bsz,
            f1.d_out,
            f1.d_in,
            T::ONE,
            v,
            Trans::N,
            ps.value(f1.w),
            Trans::T,
            ps.packed_weight(f1.w),
            T::ZERO,
            a1,
        );
        bias_relu_forward(a1, ps.value(f1.b));
        let u2 = &mut cache.u2[..bsz * f2.d_out];
        gemm_packed_b(
            bsz,
            f2.d_out,
            f2.d_in,
            T::ONE,
            a1,
            Trans::N,
            ps.value(f2.w),
            Trans::T,
            ps.packed_weight(f2.w),
            T::ZERO,
            u2,
        );
        bias_add(u2, ps.value(f2.b));
        scaled_sigmoid_forward(
            &mut cache.delta[..bsz * f2.d_out],
            u2,
            T::from_f64(self.gamma),
        );
    }

    /// Backward from `cache.ddelta = ∂L/∂δ`: accumulates the parameter gradients of both
    /// layers and, when given, the first `dv_cols` columns of `∂L/∂v` into `dv`
    /// (`[B, dv_cols]`, `+=`). PEPNet's gate inputs are `[g, sg(x)]`: only g's columns carry
    /// gradient on, so computing the `sg(x)` columns would be wasted work.
    ///
    /// Derivation: with `u1 = v·W1ᵀ + b1`, `a1 = ReLU(u1)`, `u2 = a1·W2ᵀ + b2`, `δ = γσ(u2)`:
    /// `∂δ/∂u2 = γσ(1−σ) = δ(1 − δ/γ)`, so `∂L/∂u2 = dδ ⊙ δ ⊙ (1 − δ/γ)`; fc2's backward gives
    /// `dW2 += (∂L/∂u2)ᵀ a1`, `db2 += Σ_b ∂L/∂u2`, `∂L/∂a1 = (∂L/∂u2)·W2`; then
    /// `∂L/∂u1 = ∂L/∂a1 ⊙ [a1 > 0]` and fc1's backward gives `dW1`, `db1`, and
    /// `∂L/∂v[:, :c] = (∂L/∂u1)·W1[:, :c]`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<T: Real>(
        &self,
        dv: Option<&mut [T]>,
        dv_cols: usize,
        cache: &mut GateNuCache<T>,
        ps: &mut Grads<'_, T>,
        v: &[T],
        bsz: usize,
    ) {
        let (f1, f2) = (&self.fc1, &self.fc2);
        let (nh, nd) = (bsz * f1.d_out, bsz * f2.d_out);
        let du2 = &mut cache.u2[..nd];
        du2.fill(T::ZERO);
        scaled_sigmoid_backward(
            du2,
            &cache.ddelta[..nd],
            &cache.delta[..nd],
            T::from_f64(self.gamma),
        );
        let da1 = &mut cache.da1[..nh];
        da1.fill(T::ZERO);
        f2.backward(Some(da1), ps, du2, &cache.a1[..nh], bsz);
        let du1 = &mut cache.du1[..nh];
        relu_backward(du1, da1, &cache.a1[..nh]);
        match dv {
            Some(dv) if dv_cols < f1.d_in => {
                // W1[:, :c] copied to a contiguous [hidden, c] (a few KB) for the GEMM.
                let (h, din, c) = (f1.d_out, f1.d_in, dv_cols);
                let w1 = ps.value(f1.w);
                let wc = &mut cache.w1_cols[..h * c];
                for (dst, src) in wc.chunks_exact_mut(c.max(1)).zip(w1.chunks_exact(din)) {
                    dst.copy_from_slice(&src[..c]);
                }
                gemm(bsz, c, h, T::ONE, du1, Trans::N, wc, Trans::N, T::ONE, dv);
                f1.backward(None, ps, du1, v, bsz);
            }
            dv => f1.backward(dv, ps, du1, v, bsz),
        }
    }
}

/// `y = δ ⊙ x` elementwise (all three the same length).
pub fn scale_forward<T: Real>(y: &mut [T], delta: &[T], x: &[T]) {
    for ((o, &d), &v) in y.iter_mut().zip(delta).zip(x) {
        *o = d * v;
    }
}

/// Backward of [`scale_forward`] from `dy`: `ddelta += dy ⊙ x` and, when given, `dx += dy ⊙ δ`.
///
/// Derivation: `∂y_i/∂δ_i = x_i`, `∂y_i/∂x_i = δ_i`, all cross terms zero.
pub fn scale_backward<T: Real>(
    ddelta: &mut [T],
    dx: Option<&mut [T]>,
    dy: &[T],
    delta: &[T],
    x: &[T],
) {
    for ((dd, &g), &v) in ddelta.iter_mut().zip(dy).zip(x) {
        *dd += g * v;
    }
    if let Some(dx) = dx {
        for ((d, &g), &dl) in dx.iter_mut().zip(dy).zip(delta) {
            *d += g * dl;
        }
    }
}
