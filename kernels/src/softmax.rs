//! Row-wise softmax and its backward.
//!
//! For `f32`: SIMD per row (vector `exp`, lane-parallel sums), rayon over fixed-size groups of
//! rows; results differ from [`crate::reference`] by the `exp` error and summation order only.

use crate::cast::{f32s, f32s_mut, is_f32};
use crate::par::{rows_per_task, worth};
use crate::{reference, simd, Real};
use rayon::prelude::*;

/// `y[b, :] = softmax(x[b, :])` over rows of width `n` (max-subtracted for stability).
pub fn softmax_rows_forward<T: Real>(y: &mut [T], x: &[T], n: usize) {
    if n == 0 {
        return;
    }
    if !is_f32::<T>() {
        return reference::softmax_rows_forward(y, x, n);
    }
    let rows = (y.len() / n).min(x.len() / n);
    let (y, x) = (&mut f32s_mut(y)[..rows * n], &f32s(x)[..rows * n]);
    let path = simd::simd_path();
    if worth(y.len()) {
        let c = rows_per_task(n) * n;
        y.par_chunks_mut(c)
            .zip(x.par_chunks(c))
            .for_each(|(y, x)| simd::softmax_forward(path, y, x, n));
    } else {
        simd::softmax_forward(path, y, x, n);
    }
}

/// `dx[b, :] += y ⊙ (dy − ⟨dy, y⟩)` (Jacobian of softmax is diag(y) − y yᵀ).
pub fn softmax_rows_backward<T: Real>(dx: &mut [T], dy: &[T], y: &[T], n: usize) {
    if n == 0 {
        return;
    }
    if !is_f32::<T>() {
        return reference::softmax_rows_backward(dx, dy, y, n);
    }
    let rows = (dx.len() / n).min(dy.len() / n).min(y.len() / n);
    let (d, g, v) = (
        &mut f32s_mut(dx)[..rows * n],
        &f32s(dy)[..rows * n],
        &f32s(y)[..rows * n],
    );
    let path = simd::simd_path();
    if worth(d.len()) {
        let c = rows_per_task(n) * n;
        d.par_chunks_mut(c)
            .zip(g.par_chunks(c).zip(v.par_chunks(c)))
            .for_each(|(d, (g, v))| simd::softmax_backward(path, d, g, v, n));
    } else {
        simd::softmax_backward(path, d, g, v, n);
    }
}
