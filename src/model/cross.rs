//! DCN-v1 cross network: `x_{l+1} = x_0·(x_lᵀ w_l) + b_l + x_l` for `l = 0..L`, with
//! parameters `cross.<l>.weight` `[d]` and `cross.<l>.bias` `[d]` (a rank-one feature
//! crossing per layer; Wang et al., 2017).

use crate::params::{Grads, Init, ParamId, ParamKind, ParamStore};
use hmdn_kernels::Real;
use rand::Rng;

/// `L` cross layers over a `d`-wide input.
#[derive(Clone, Debug)]
pub struct Cross {
    /// Per layer weight vector `w_l` `[d]`.
    pub w: Vec<ParamId>,
    /// Per layer bias `b_l` `[d]`.
    pub b: Vec<ParamId>,
    /// Input (and output) width.
    pub d: usize,
}

/// Activations and scratch of a [`Cross`] network for one batch.
#[derive(Clone, Debug, Default)]
pub struct CrossCache<T> {
    /// Outputs `x_1 … x_L`, each `[B, d]` (`xs[l]` is `x_{l+1}`).
    pub xs: Vec<Vec<T>>,
    /// Per layer the row scalars `s_l[b] = ⟨x_l[b], w_l⟩`, each `[B]`.
    pub s: Vec<Vec<T>>,
    /// Backward scratch: the running `∂L/∂x_l` and the one being built, each `[B, d]`.
    pub dcur: Vec<T>,
    /// See `dcur`.
    pub dnext: Vec<T>,
    /// Batch size the buffers are sized for.
    cap: usize,
}

impl<T: Real> CrossCache<T> {
    /// Sizes the buffers for `bsz` rows of `net` (reallocates only when `bsz` grows).
    pub fn ensure_batch(&mut self, net: &Cross, bsz: usize) {
        let nl = net.w.len();
        if bsz <= self.cap && self.xs.len() == nl {
            return;
        }
        self.xs = vec![vec![T::ZERO; bsz * net.d]; nl];
        self.s = vec![vec![T::ZERO; bsz]; nl];
        self.dcur = vec![T::ZERO; bsz * net.d];
        self.dnext = vec![T::ZERO; bsz * net.d];
        self.cap = bsz;
    }
}

impl Cross {
    /// Registers `cross.<l>.weight` `[d]` (normal with Xavier's std `sqrt(2/(d+1))`, the
    /// fan-in/fan-out of a `d×1` kernel) and `cross.<l>.bias` `[d]` (zeros), `l = 0..n_layers`.
    pub fn new<T: Real, R: Rng>(
        ps: &mut ParamStore<T>,
        prefix: &str,
        d: usize,
        n_layers: usize,
        rng: &mut R,
    ) -> Self {
        let std = (2.0 / (d as f64 + 1.0)).sqrt();
        let (mut w, mut b) = (Vec::new(), Vec::new());
        for l in 0..n_layers {
            w.push(ps.add(
                &format!("{prefix}.{l}.weight"),
                &[d],
                ParamKind::Dense,
                Init::Normal(std),
                rng,
            ));
            b.push(ps.add(
                &format!("{prefix}.{l}.bias"),
                &[d],
                ParamKind::Dense,
                Init::Zeros,
                rng,
            ));
        }
        Cross { w, b, d }
    }

    /// Runs the `L` layers on `x0` `[B, d]`; the result is [`Cross::output`].
    pub fn forward<T: Real>(
        &self,
        cache: &mut CrossCache<T>,
        x0: &[T],
        ps: &ParamStore<T>,
        bsz: usize,
    ) {
        cache.ensure_batch(self, bsz);
        let d = self.d;
        for l in 0..self.w.len() {
            let (w, bias) = (ps.value(self.w[l]), ps.value(self.b[l]));
            let (done, rest) = cache.xs.split_at_mut(l);
            let xl: &[T] = if l == 0 { x0 } else { &done[l - 1] };
            let out = &mut rest[0];
            let s = &mut cache.s[l];
            for (b, s_b) in s[..bsz].iter_mut().enumerate() {
                let r = b * d..(b + 1) * d;
                let sb = dot(&xl[r.clone()], w);
                *s_b = sb;
                for (((o, &x0v), &bv), &xv) in out[r.clone()]
                    .iter_mut()
                    .zip(&x0[r.clone()])
                    .zip(bias)
                    .zip(&xl[r])
                {
                    *o = x0v * sb + bv + xv;
                }
            }
        }
    }

    /// Output `x_L` `[B, d]` of the last forward (`x0` itself when there are no layers).
    pub fn output<'a, T: Real>(
        &self,
        cache: &'a CrossCache<T>,
        x0: &'a [T],
        bsz: usize,
    ) -> &'a [T] {
        match cache.xs.last() {
            Some(x) => &x[..bsz * self.d],
            None => &x0[..bsz * self.d],
        }
    }

    /// Backward from `dout = ∂L/∂x_L` (`[B, d]`): accumulates `dw_l`, `db_l` and
    /// `dx0[B×d] +=`.
    ///
    /// Derivation, per row, with `s_l = ⟨x_l, w_l⟩` and `g = ∂L/∂x_{l+1}`:
    /// `∂L/∂b_l += g`; `∂L/∂s_l = ⟨g, x_0⟩`; `∂L/∂w_l += (∂L/∂s_l)·x_l`;
    /// `∂L/∂x_0 += s_l·g` (the explicit `x_0` factor); `∂L/∂x_l = g + (∂L/∂s_l)·w_l` (the
    /// identity path and `s_l`). At `l = 0`, `x_l` is `x_0`, so that last term also lands in
    /// `dx0`.
    pub fn backward<T: Real>(
        &self,
        dx0: &mut [T],
        cache: &mut CrossCache<T>,
        ps: &mut Grads<'_, T>,
        dout: &[T],
        x0: &[T],
        bsz: usize,
    ) {
        let d = self.d;
        let n = bsz * d;
        let nl = self.w.len();
        if nl == 0 {
            for (a, &g) in dx0[..n].iter_mut().zip(&dout[..n]) {
                *a += g;
            }
            return;
        }
        let CrossCache {
            xs, s, dcur, dnext, ..
        } = cache;
        dcur[..n].copy_from_slice(&dout[..n]);
        for l in (0..nl).rev() {
            let xl: &[T] = if l == 0 { x0 } else { &xs[l - 1] };
            let (wr, br) = (ps.range(self.w[l]), ps.range(self.b[l]));
            let g = &dcur[..n];
            // Bias and weight gradients, summed over rows in batch order.
            for (b, &sb) in s[l][..bsz].iter().enumerate() {
                let r = b * d..(b + 1) * d;
                let ds = dot(&g[r.clone()], &x0[r.clone()]);
                for (acc, &v) in ps.grads[br.clone()].iter_mut().zip(&g[r.clone()]) {
                    *acc += v;
                }
                for (acc, &v) in ps.grads[wr.clone()].iter_mut().zip(&xl[r.clone()]) {
                    *acc += ds * v;
                }
                let w = &ps.values[wr.clone()];
                for (((dn, d0), &gv), &wv) in dnext[r.clone()]
                    .iter_mut()
                    .zip(&mut dx0[r.clone()])
                    .zip(&g[r])
                    .zip(w)
                {
                    *d0 += sb * gv;
                    *dn = gv + ds * wv;
                }
            }
            std::mem::swap(dcur, dnext);
        }
        // dcur now holds ∂L/∂x_0 through the layer-0 input path.
        for (a, &g) in dx0[..n].iter_mut().zip(&dcur[..n]) {
            *a += g;
        }
    }
}

/// Dot product in index order.
fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    a.iter().zip(b).fold(T::ZERO, |acc, (&x, &y)| acc + x * y)
}
