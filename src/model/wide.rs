//! The wide part of Wide&Deep: a linear model over the categorical fields,
//! `wide[b] = Σ_f W_f[i_f] + bias`, stored as one 1-wide embedding table per field
//! (`wide.<field>.weight` `[V_f, 1]`) plus `wide.bias` `[1]`.

use crate::config::FieldSpec;
use crate::model::embedding::{MultiEmbedding, RowGrad};
use crate::params::{Init, ParamId, ParamKind, ParamStore};
use hmdn_kernels::Real;
use rand::Rng;

/// Wide (linear) logit over categorical fields.
#[derive(Clone, Debug)]
pub struct Wide {
    /// The per-field weights as `[V_f, 1]` tables.
    pub emb: MultiEmbedding,
    /// Scalar bias `[1]`.
    pub bias: ParamId,
}

/// Activations of [`Wide`] for one batch.
#[derive(Clone, Debug, Default)]
pub struct WideCache<T> {
    /// Looked-up weights `[B, F]` (forward) and, in backward, the per-row upstream gradient
    /// broadcast over the fields `[B, F]`.
    pub w: Vec<T>,
}

impl<T: Real> WideCache<T> {
    /// Sizes the buffers for `bsz` rows over `n_fields` fields (reallocates only to grow).
    pub fn ensure_batch(&mut self, bsz: usize, n_fields: usize) {
        if self.w.len() < bsz * n_fields {
            self.w.resize(bsz * n_fields, T::ZERO);
        }
    }
}

impl Wide {
    /// Registers `wide.<field>.weight` `[V_f, 1]` (normal init with `init_std`) for each field,
    /// reading index columns `cols`, and `wide.bias` `[1]` (zero).
    pub fn new<T: Real, R: Rng>(
        ps: &mut ParamStore<T>,
        fields: &[FieldSpec],
        cols: &[usize],
        init_std: f64,
        rng: &mut R,
    ) -> Self {
        let emb = MultiEmbedding::new(ps, "wide", fields, cols, 1, init_std, rng);
        let bias = ps.add("wide.bias", &[1], ParamKind::Dense, Init::Zeros, rng);
        Wide { emb, bias }
    }

    /// `out[b] = Σ_f W_f[idx_f[b]] + bias` (`out` is `[B]`), indices field-major.
    pub fn forward<T: Real>(
        &self,
        out: &mut [T],
        cache: &mut WideCache<T>,
        idx: &[u32],
        ps: &ParamStore<T>,
        bsz: usize,
    ) {
        let nf = self.emb.n_fields();
        cache.ensure_batch(bsz, nf);
        self.emb.forward(&mut cache.w, nf, 0, idx, ps, bsz);
        let b = ps.value(self.bias)[0];
        for (o, row) in out[..bsz].iter_mut().zip(cache.w.chunks_exact(nf.max(1))) {
            // Summed in field order so the result does not depend on threading.
            *o = row.iter().fold(b, |acc, &v| acc + v);
        }
        if nf == 0 {
            out[..bsz].fill(b);
        }
    }

    /// From `dout[b]` (`[B]`): `d bias += Σ_b dout[b]` and the tables' row gradients
    /// (`grads`, one per field; refilled).
    ///
    /// Derivation: `∂out[b]/∂W_f[r] = [idx_f[b] = r]` and `∂out[b]/∂bias = 1`, so each row
    /// looked up by row `b` receives `dout[b]` once per field.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<T: Real>(
        &self,
        grads: &mut [RowGrad<T>],
        cache: &mut WideCache<T>,
        ps: &mut ParamStore<T>,
        dout: &[T],
        idx: &[u32],
        bsz: usize,
    ) {
        let nf = self.emb.n_fields();
        cache.ensure_batch(bsz, nf);
        let gb = &mut ps.grads[ps.specs[self.bias.0].range()];
        for &d in &dout[..bsz] {
            gb[0] += d;
        }
        if nf == 0 {
            return;
        }
        for (row, &d) in cache.w[..bsz * nf].chunks_exact_mut(nf).zip(dout) {
            row.fill(d);
        }
        self.emb.backward(grads, &cache.w, nf, 0, idx, bsz);
    }
}
