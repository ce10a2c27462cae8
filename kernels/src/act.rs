//! Elementwise activations: fused bias + ReLU, ReLU backward, sigmoid, and bias column sums.
//!
//! For `f32` these run the SIMD paths of [`crate::simd`] (bit-identical to
//! [`crate::reference`] except sigmoid, which uses a SIMD `exp` within a few ulp), split over
//! rayon in fixed-size chunks of rows for large inputs; other types run the reference.

use crate::cast::{f32s, f32s_mut, f32v, is_f32};
use crate::par::{rows_per_task, worth, CHUNK};
use crate::{reference, simd, Real};
use rayon::prelude::*;

/// `y[b, j] = max(y[b, j] + bias[j], 0)` in place over rows of width `n = bias.len()`.
pub fn bias_relu_forward<T: Real>(y: &mut [T], bias: &[T]) {
    let n = bias.len();
    if n == 0 {
        return;
    }
    if !is_f32::<T>() {
        return reference::bias_relu_forward(y, bias);
    }
    let (y, bias) = (f32s_mut(y), f32s(bias));
    let path = simd::simd_path();
    let rows = y.len() / n;
    let y = &mut y[..rows * n];
    if worth(y.len()) {
        y.par_chunks_mut(rows_per_task(n) * n)
            .for_each(|c| simd::bias_relu(path, c, bias));
    } else {
        simd::bias_relu(path, y, bias);
    }
}

/// `y[b, j] += bias[j]` in place (a bias without activation).
pub fn bias_add<T: Real>(y: &mut [T], bias: &[T]) {
    let n = bias.len();
    if n == 0 {
        return;
    }
    if !is_f32::<T>() {
        return reference::bias_add(y, bias);
    }
    let (y, bias) = (f32s_mut(y), f32s(bias));
    let path = simd::simd_path();
    let rows = y.len() / n;
    let y = &mut y[..rows * n];
    if worth(y.len()) {
        y.par_chunks_mut(rows_per_task(n) * n)
            .for_each(|c| simd::bias_add(path, c, bias));
    } else {
        simd::bias_add(path, y, bias);
    }
}

/// ReLU backward through its *output*: `dpre[i] = dy[i]` where `y[i] > 0`, else 0 (writes).
pub fn relu_backward<T: Real>(dpre: &mut [T], dy: &[T], y: &[T]) {
    if !is_f32::<T>() {
        return reference::relu_backward(dpre, dy, y);
    }
    let len = dpre.len().min(dy.len()).min(y.len());
    let (d, g, v) = (
        &mut f32s_mut(dpre)[..len],
        &f32s(dy)[..len],
        &f32s(y)[..len],
    );
    let path = simd::simd_path();
    if worth(len) {
        d.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
            .for_each(|(d, (g, v))| simd::relu_backward(path, d, g, v));
    } else {
        simd::relu_backward(path, d, g, v);
    }
}

/// Numerically stable logistic function (scalar; the slice kernels below vectorise it).
#[inline]
pub fn sigmoid<T: Real>(x: T) -> T {
    reference::sigmoid(x)
}

/// `y[i] = scale · sigmoid(x[i])` (GateNU output with scale γ).
pub fn scaled_sigmoid_forward<T: Real>(y: &mut [T], x: &[T], scale: T) {
    if !is_f32::<T>() {
        return reference::scaled_sigmoid_forward(y, x, scale);
    }
    let len = y.len().min(x.len());
    let (y, x, s) = (&mut f32s_mut(y)[..len], &f32s(x)[..len], f32v(scale));
    let path = simd::simd_path();
    if worth(len) {
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(y, x)| simd::scaled_sigmoid_forward(path, y, x, s));
    } else {
        simd::scaled_sigmoid_forward(path, y, x, s);
    }
}

/// Backward of [`scaled_sigmoid_forward`] through its output:
/// `dx[i] += dy[i] · y[i] · (1 − y[i]/scale)` (since d(γσ)/dx = γσ(1−σ) and σ = y/γ).
pub fn scaled_sigmoid_backward<T: Real>(dx: &mut [T], dy: &[T], y: &[T], scale: T) {
    if !is_f32::<T>() {
        return reference::scaled_sigmoid_backward(dx, dy, y, scale);
    }
    let len = dx.len().min(dy.len()).min(y.len());
    let (d, g, v) = (&mut f32s_mut(dx)[..len], &f32s(dy)[..len], &f32s(y)[..len]);
    let s = f32v(scale);
    let path = simd::simd_path();
    if worth(len) {
        d.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
            .for_each(|(d, (g, v))| simd::scaled_sigmoid_backward(path, d, g, v, s));
    } else {
        simd::scaled_sigmoid_backward(path, d, g, v, s);
    }
}

/// A GateNU's output layer in one pass: `delta[b, j] = scale · sigmoid(u[b, j] + bias[j])` over
/// rows of width `n = bias.len()`, and, with `scaled = Some((y, x))`, also `y = delta ⊙ x`
/// (the input the gate scales). `u` is only read.
///
/// The same values as [`bias_add`], [`scaled_sigmoid_forward`] and a product, one pass over
/// the rows instead of three.
pub fn bias_scaled_sigmoid_forward<T: Real>(
    delta: &mut [T],
    u: &[T],
    bias: &[T],
    scale: T,
    scaled: Option<(&mut [T], &[T])>,
) {
    let n = bias.len();
    if n == 0 {
        return;
    }
    let rows = delta.len().min(u.len()) / n;
    let len = rows * n;
    if !is_f32::<T>() {
        let scaled = scaled.map(|(y, x)| (&mut y[..len], &x[..len]));
        return reference::bias_scaled_sigmoid_forward(
            &mut delta[..len],
            &u[..len],
            bias,
            scale,
            scaled,
        );
    }
    let (d, u, b, s) = (
        &mut f32s_mut(delta)[..len],
        &f32s(u)[..len],
        f32s(bias),
        f32v(scale),
    );
    let path = simd::simd_path();
    let step = rows_per_task(n) * n;
    match scaled {
        None if worth(len) => d
            .par_chunks_mut(step)
            .zip(u.par_chunks(step))
            .for_each(|(d, u)| simd::bias_scaled_sigmoid(path, d, u, b, s)),
        None => simd::bias_scaled_sigmoid(path, d, u, b, s),
        Some((y, x)) => {
            let (y, x) = (&mut f32s_mut(y)[..len], &f32s(x)[..len]);
            if worth(len) {
                d.par_chunks_mut(step)
                    .zip(y.par_chunks_mut(step))
                    .zip(u.par_chunks(step).zip(x.par_chunks(step)))
                    .for_each(|((d, y), (u, x))| {
                        simd::bias_scaled_sigmoid_mul(path, d, y, u, b, x, s)
                    });
            } else {
                simd::bias_scaled_sigmoid_mul(path, d, y, u, b, x, s);
            }
        }
    }
}

/// Backward of `y = delta ⊙ x` with `delta = scale·sigmoid(u)`, both outputs written:
/// `du[i] = dy[i]·x[i] · delta[i]·(1 − delta[i]/scale)` (through the product, then the
/// sigmoid as in [`scaled_sigmoid_backward`]) and `dx[i] = dy[i]·delta[i]`.
///
/// The values [`scaled_sigmoid_backward`] gives from `∂L/∂delta = dy ⊙ x`, without that
/// intermediate array or zero-filled outputs.
pub fn scaled_sigmoid_mul_backward<T: Real>(
    du: &mut [T],
    dx: &mut [T],
    dy: &[T],
    x: &[T],
    delta: &[T],
    scale: T,
) {
    let len = du
        .len()
        .min(dx.len())
        .min(dy.len())
        .min(x.len())
        .min(delta.len());
    let (du, dx, dy, x, delta) = (
        &mut du[..len],
        &mut dx[..len],
        &dy[..len],
        &x[..len],
        &delta[..len],
    );
    if !is_f32::<T>() {
        return reference::scaled_sigmoid_mul_backward(du, dx, dy, x, delta, scale);
    }
    let (u, o) = (f32s_mut(du), f32s_mut(dx));
    let (g, v, d, s) = (f32s(dy), f32s(x), f32s(delta), f32v(scale));
    let path = simd::simd_path();
    if worth(len) {
        u.par_chunks_mut(CHUNK)
            .zip(o.par_chunks_mut(CHUNK))
            .zip(
                g.par_chunks(CHUNK)
                    .zip(v.par_chunks(CHUNK).zip(d.par_chunks(CHUNK))),
            )
            .for_each(|((u, o), (g, (v, d)))| {
                simd::scaled_sigmoid_mul_backward(path, u, o, g, v, d, s)
            });
    } else {
        simd::scaled_sigmoid_mul_backward(path, u, o, g, v, d, s);
    }
}

/// Columns of `db` per rayon task in [`bias_grad`] (one cache line of f32).
const BIAS_GRAD_COLS: usize = 16;

/// `db[j] += Σ_b dy[b, j]` over rows of width `n = db.len()`, summed in row order.
///
/// The reduction runs down each column in row order, so the f32 path is bit-identical to the
/// reference; large inputs are split over fixed groups of columns, never over rows.
pub fn bias_grad<T: Real>(db: &mut [T], dy: &[T]) {
    let n = db.len();
    if n == 0 {
        return;
    }
    if !is_f32::<T>() {
        return reference::bias_grad(db, dy);
    }
    let (db, dy) = (f32s_mut(db), f32s(dy));
    let rows = dy.len() / n;
    let dy = &dy[..rows * n];
    let path = simd::simd_path();
    if worth(dy.len()) && n >= 2 * BIAS_GRAD_COLS {
        db.par_chunks_mut(BIAS_GRAD_COLS)
            .enumerate()
            .for_each(|(q, d)| simd::bias_grad_cols(path, d, dy, n, q * BIAS_GRAD_COLS));
    } else {
        simd::bias_grad_cols(path, db, dy, n, 0);
    }
}
