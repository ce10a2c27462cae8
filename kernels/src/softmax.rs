//! Row-wise softmax and its backward.

use crate::Real;

/// `y[b, :] = softmax(x[b, :])` over rows of width `n` (max-subtracted for stability).
pub fn softmax_rows_forward<T: Real>(y: &mut [T], x: &[T], n: usize) {
    if n == 0 {
        return;
    }
    for (yr, xr) in y.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
        let mut mx = xr[0];
        for &v in xr {
            mx = mx.max(v);
        }
        let mut s = T::ZERO;
        for (o, &v) in yr.iter_mut().zip(xr) {
            *o = (v - mx).exp();
            s += *o;
        }
        let inv = T::ONE / s;
        for o in yr.iter_mut() {
            *o *= inv;
        }
    }
}

/// `dx[b, :] += y ⊙ (dy − ⟨dy, y⟩)` (Jacobian of softmax is diag(y) − y yᵀ).
pub fn softmax_rows_backward<T: Real>(dx: &mut [T], dy: &[T], y: &[T], n: usize) {
    if n == 0 {
        return;
    }
    for ((dxr, dyr), yr) in dx
        .chunks_exact_mut(n)
        .zip(dy.chunks_exact(n))
        .zip(y.chunks_exact(n))
    {
        let mut dot = T::ZERO;
        for (&g, &v) in dyr.iter().zip(yr) {
            dot += g * v;
        }
        for ((d, &g), &v) in dxr.iter_mut().zip(dyr).zip(yr) {
            *d += v * (g - dot);
        }
    }
}
