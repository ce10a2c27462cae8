//! Multi-layer perceptron with ReLU after every layer (the paper's 128-64-32 towers of hidden
//! units, §3.1.3). The 1-output logit layer is a separate [`Linear`] owned by the model.
//!
//! Besides whole-MLP `forward` / `backward`, single layers are exposed
//! ([`Mlp::layer_forward`], [`Mlp::layer_backward`]) because PEPNet's PPNet rescales every
//! hidden output between layers.

use crate::model::linear::{InputGrad, Linear};
use crate::params::{Grads, ParamStore};
use hmdn_kernels::act::relu_backward;
use hmdn_kernels::gemm::{gemm_epilogue, Epilogue};
use hmdn_kernels::{Real, Trans};
use rand::Rng;

/// Layers `<prefix>.layers.<l>` (`nn.Linear`), each followed by ReLU.
#[derive(Clone, Debug)]
pub struct Mlp {
    /// The linear layers, input side first.
    pub layers: Vec<Linear>,
}

/// Activations and gradient scratch of one [`Mlp`] for one batch.
#[derive(Clone, Debug, Default)]
pub struct MlpCache<T> {
    /// Post-ReLU output of each layer, `h[l]` is `[B, h_l]`.
    pub h: Vec<Vec<T>>,
    /// Gradient w.r.t. each `h[l]` below the top layer, `[B, h_l]` (scratch of `backward`).
    pub dh: Vec<Vec<T>>,
    /// Gradient w.r.t. a layer's pre-activation, `[B, max_l h_l]` (scratch).
    pub dpre: Vec<T>,
    /// Output width of each layer.
    widths: Vec<usize>,
    /// Batch size the buffers are sized for.
    cap: usize,
}

impl<T: Real> MlpCache<T> {
    /// Buffers for `mlp`, empty until [`MlpCache::ensure_batch`].
    pub fn new(mlp: &Mlp) -> Self {
        let n = mlp.layers.len();
        MlpCache {
            h: vec![Vec::new(); n],
            dh: vec![Vec::new(); n],
            dpre: Vec::new(),
            widths: mlp.layers.iter().map(|l| l.d_out).collect(),
            cap: 0,
        }
    }

    /// Sizes every buffer for `bsz` rows (reallocates only when `bsz` grows).
    pub fn ensure_batch(&mut self, bsz: usize) {
        if bsz <= self.cap {
            return;
        }
        let mut widest = 0;
        for (l, &w) in self.widths.iter().enumerate() {
            self.h[l].resize(bsz * w, T::ZERO);
            self.dh[l].resize(bsz * w, T::ZERO);
            widest = widest.max(w);
        }
        self.dpre.resize(bsz * widest, T::ZERO);
        self.cap = bsz;
    }

    /// Output of the last layer, `[B, h_last]` (valid after `forward`).
    pub fn out(&self, bsz: usize) -> &[T] {
        let w = *self.widths.last().expect("an MLP has at least one layer");
        &self.h[self.widths.len() - 1][..bsz * w]
    }
}

impl Mlp {
    /// Registers `<prefix>.layers.<l>` for `l = 0..hidden.len()`, widths `d_in → hidden[0] →
    /// … → hidden[last]`, with `nn.Linear`'s default initialisation.
    ///
    /// # Panics
    /// If `hidden` is empty (validated configs never are).
    #[track_caller]
    pub fn new<T: Real, R: Rng>(
        ps: &mut ParamStore<T>,
        prefix: &str,
        d_in: usize,
        hidden: &[usize],
        rng: &mut R,
    ) -> Self {
        assert!(!hidden.is_empty(), "an MLP needs at least one layer");
        let mut layers = Vec::with_capacity(hidden.len());
        let mut d = d_in;
        for (l, &h) in hidden.iter().enumerate() {
            layers.push(Linear::new(ps, &format!("{prefix}.layers.{l}"), d, h, rng));
            d = h;
        }
        Mlp { layers }
    }

    /// Input width.
    pub fn d_in(&self) -> usize {
        self.layers[0].d_in
    }

    /// Output width (last hidden width).
    pub fn d_out(&self) -> usize {
        self.layers.last().map_or(0, |l| l.d_out)
    }

    /// Layer `l` alone: `out[B×h_l] = ReLU(inp[B×d_in_l] · W_lᵀ + b_l)`. Overwrites `out`.
    pub fn layer_forward<T: Real>(
        &self,
        l: usize,
        out: &mut [T],
        inp: &[T],
        ps: &ParamStore<T>,
        bsz: usize,
    ) {
        let lin = &self.layers[l];
        let out = &mut out[..bsz * lin.d_out];
        // Bias and ReLU applied as the GEMM stores each tile (one pass over `out`).
        gemm_epilogue(
            bsz,
            lin.d_out,
            lin.d_in,
            inp,
            Trans::N,
            ps.value(lin.w),
            Trans::T,
            ps.packed_weight(lin.w),
            out,
            Epilogue::BiasRelu(ps.value(lin.b)),
        );
    }

    /// Layer `l` alone, backward from `dout = ∂L/∂out` (`[B, h_l]`, post-ReLU): accumulates
    /// `dW_l`, `db_l` and puts `∂L/∂inp` into `dinp` (`[B×d_in_l]`; added, written or skipped,
    /// see [`InputGrad`]). `out` is the layer's forward output and `dpre` scratch of at least
    /// `[B, h_l]`.
    ///
    /// Derivation: `out = max(u, 0)` with `u = inp·Wᵀ + b`, so `∂L/∂u = dout ⊙ [out > 0]`
    /// (the subgradient at `u = 0` is taken as 0, like PyTorch), then the linear layer's
    /// backward: `dW += (∂L/∂u)ᵀ·inp`, `db += Σ_b ∂L/∂u`, `dinp += (∂L/∂u)·W`.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_backward<'d, T: Real>(
        &self,
        l: usize,
        dinp: impl Into<InputGrad<'d, T>>,
        dpre: &mut [T],
        ps: &mut Grads<'_, T>,
        dout: &[T],
        out: &[T],
        inp: &[T],
        bsz: usize,
    ) {
        let lin = &self.layers[l];
        let n = bsz * lin.d_out;
        let dpre = &mut dpre[..n];
        relu_backward(dpre, &dout[..n], &out[..n]);
        lin.backward(dinp, ps, dpre, inp, bsz);
    }

    /// Whole MLP: `cache.h[l]` = output of layer `l`; the result is `cache.out(bsz)`.
    pub fn forward<T: Real>(
        &self,
        cache: &mut MlpCache<T>,
        inp: &[T],
        ps: &ParamStore<T>,
        bsz: usize,
    ) {
        cache.ensure_batch(bsz);
        self.layer_forward(0, &mut cache.h[0], inp, ps, bsz);
        self.forward_above_first(cache, ps, bsz);
    }

    /// Layers `1..` on the output of layer 0 already in `cache.h[0]` (written by the caller,
    /// e.g. a factored first layer): `cache.h[l]` for `l ≥ 1`.
    pub fn forward_above_first<T: Real>(
        &self,
        cache: &mut MlpCache<T>,
        ps: &ParamStore<T>,
        bsz: usize,
    ) {
        for l in 1..self.layers.len() {
            let (below, here) = cache.h.split_at_mut(l);
            self.layer_forward(l, &mut here[0], &below[l - 1], ps, bsz);
        }
    }

    /// [`Mlp::backward`] of layers `last..1` only, leaving `∂L/∂h[0]` (post-ReLU output of layer
    /// 0) in `cache.dh[0]` — or, for a one-layer MLP, in `dout` itself — for the caller's own
    /// layer-0 backward.
    pub fn backward_above_first<T: Real>(
        &self,
        cache: &mut MlpCache<T>,
        ps: &mut Grads<'_, T>,
        dout: &[T],
        bsz: usize,
    ) {
        let nl = self.layers.len();
        let MlpCache { h, dh, dpre, .. } = cache;
        for l in (1..nl).rev() {
            let (dh_below, dh_here) = dh.split_at_mut(l);
            let dout_l: &[T] = if l + 1 == nl { dout } else { &dh_here[0] };
            let d_below = &mut dh_below[l - 1][..bsz * self.layers[l - 1].d_out];
            let d_below = InputGrad::Write(d_below);
            self.layer_backward(l, d_below, dpre, ps, dout_l, &h[l], &h[l - 1], bsz);
        }
    }

    /// Whole MLP backward from `dout = ∂L/∂(last output)` (`[B, h_last]`): accumulates every
    /// layer's parameter gradients and, when given, `dinp[B×d_in] +=`. Uses the activations
    /// cached by the last `forward` on the same `inp`.
    ///
    /// Derivation: the chain rule layer by layer from the top, each step as in
    /// [`Mlp::layer_backward`]; `∂L/∂h[l-1]` is the `dinp` of layer `l`, written (not added:
    /// layer `l` is its only consumer).
    pub fn backward<T: Real>(
        &self,
        dinp: Option<&mut [T]>,
        cache: &mut MlpCache<T>,
        ps: &mut Grads<'_, T>,
        dout: &[T],
        inp: &[T],
        bsz: usize,
    ) {
        self.backward_above_first(cache, ps, dout, bsz);
        let MlpCache { h, dh, dpre, .. } = cache;
        // ∂L/∂h[0]: what layer 1 wrote, or the caller's for a one-layer MLP.
        let dout0: &[T] = if self.layers.len() == 1 { dout } else { &dh[0] };
        self.layer_backward(0, dinp, dpre, ps, dout0, &h[0], inp, bsz);
    }
}
