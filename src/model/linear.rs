//! Linear layer `y = x·Wᵀ + b` (PyTorch `nn.Linear`, weight stored `[out, in]`).

use crate::params::{Grads, Init, ParamId, ParamKind, ParamStore};
use hmdn_kernels::act::bias_grad;
use hmdn_kernels::gemm::gemm_packed_b;
use hmdn_kernels::{gemm, Real, Trans};
use rand::Rng;

/// Where a layer's backward puts the gradient of its input.
#[derive(Debug)]
pub enum InputGrad<'a, T> {
    /// Not wanted (nothing is computed for it).
    Skip,
    /// Added into the buffer: `dinp += …`, for an input with several consumers.
    Add(&'a mut [T]),
    /// Written into the buffer: `dinp = …`, for an input the layer is the only consumer of.
    /// The buffer need not be zeroed first (the GEMM then does not read it).
    Write(&'a mut [T]),
}

impl<'a, T> From<Option<&'a mut [T]>> for InputGrad<'a, T> {
    /// `None` skips, `Some` adds.
    fn from(d: Option<&'a mut [T]>) -> Self {
        d.map_or(InputGrad::Skip, InputGrad::Add)
    }
}

/// A fully connected layer. Parameters `<prefix>.weight` `[d_out, d_in]` and
/// `<prefix>.bias` `[d_out]`.
#[derive(Clone, Debug)]
pub struct Linear {
    /// Weight `[d_out, d_in]`.
    pub w: ParamId,
    /// Bias `[d_out]`.
    pub b: ParamId,
    /// Input width.
    pub d_in: usize,
    /// Output width.
    pub d_out: usize,
}

impl Linear {
    /// Registers `<prefix>.weight` and `<prefix>.bias` with PyTorch's default initialisation,
    /// `U(-1/sqrt(d_in), 1/sqrt(d_in))` for both, and marks the weight to be packed once per
    /// forward ([`ParamStore::mark_packed`]).
    pub fn new<T: Real, R: Rng>(
        ps: &mut ParamStore<T>,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        rng: &mut R,
    ) -> Self {
        let lin = Self::new_unpacked(ps, prefix, d_in, d_out, rng);
        ps.mark_packed(lin.w);
        lin
    }

    /// As [`Linear::new`], without marking the weight for packing: for a layer whose forward
    /// does not read `W` through [`ParamStore::packed_weight`] (a GateNU's first layer, which
    /// the model runs split by input columns with its own packed block,
    /// `gatenu::SplitW1`), so that no forward packs a copy nobody reads. [`Linear::forward`]
    /// still works on it: the GEMM then packs `W` itself.
    pub fn new_unpacked<T: Real, R: Rng>(
        ps: &mut ParamStore<T>,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        rng: &mut R,
    ) -> Self {
        let bound = 1.0 / (d_in.max(1) as f64).sqrt();
        let w = ps.add(
            &format!("{prefix}.weight"),
            &[d_out, d_in],
            ParamKind::Dense,
            Init::Uniform(bound),
            rng,
        );
        let b = ps.add(
            &format!("{prefix}.bias"),
            &[d_out],
            ParamKind::Dense,
            Init::Uniform(bound),
            rng,
        );
        Linear { w, b, d_in, d_out }
    }

    /// `out[B×d_out] = inp[B×d_in] · Wᵀ + b`. Overwrites `out`.
    pub fn forward<T: Real>(&self, out: &mut [T], inp: &[T], ps: &ParamStore<T>, bsz: usize) {
        let b = ps.value(self.b);
        let out = &mut out[..bsz * self.d_out];
        for row in out.chunks_exact_mut(self.d_out) {
            row.copy_from_slice(b);
        }
        gemm_packed_b(
            bsz,
            self.d_out,
            self.d_in,
            T::ONE,
            inp,
            Trans::N,
            ps.value(self.w),
            Trans::T,
            ps.packed_weight(self.w),
            T::ONE,
            out,
        );
    }

    /// Accumulates gradients from `dout[B×d_out]`:
    /// `dW += doutᵀ·inp` (`[d_out, d_in]`), `db += Σ_rows dout`, and `dout·W` into `dinp`
    /// (`[B×d_in]`; added, written or skipped, see [`InputGrad`]; an `Option` adds or skips).
    pub fn backward<'d, T: Real>(
        &self,
        dinp: impl Into<InputGrad<'d, T>>,
        ps: &mut Grads<'_, T>,
        dout: &[T],
        inp: &[T],
        bsz: usize,
    ) {
        let (wr, br) = (ps.range(self.w), ps.range(self.b));
        let (dinp, beta) = match dinp.into() {
            InputGrad::Skip => (None, T::ONE),
            InputGrad::Add(d) => (Some(d), T::ONE),
            InputGrad::Write(d) => (Some(d), T::ZERO),
        };
        if let Some(dinp) = dinp {
            gemm(
                bsz,
                self.d_in,
                self.d_out,
                T::ONE,
                dout,
                Trans::N,
                &ps.values[wr.clone()],
                Trans::N,
                beta,
                dinp,
            );
        }
        gemm(
            self.d_out,
            self.d_in,
            bsz,
            T::ONE,
            dout,
            Trans::T,
            inp,
            Trans::N,
            T::ONE,
            &mut ps.grads[wr],
        );
        // Bias: column sums added in row order onto the existing gradient (SIMD over columns,
        // parallel only over fixed column groups, so thread-count independent).
        bias_grad(&mut ps.grads[br], &dout[..bsz * self.d_out]);
    }
}
