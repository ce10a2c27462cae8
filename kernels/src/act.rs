//! Elementwise activations: fused bias + ReLU, ReLU backward, sigmoid, and bias column sums.

use crate::Real;

/// `y[b, j] = max(y[b, j] + bias[j], 0)` in place over rows of width `n = bias.len()`.
pub fn bias_relu_forward<T: Real>(y: &mut [T], bias: &[T]) {
    let n = bias.len();
    if n == 0 {
        return;
    }
    for row in y.chunks_exact_mut(n) {
        for (v, &b) in row.iter_mut().zip(bias) {
            let s = *v + b;
            *v = if s > T::ZERO { s } else { T::ZERO };
        }
    }
}

/// `y[b, j] += bias[j]` in place (a bias without activation).
pub fn bias_add<T: Real>(y: &mut [T], bias: &[T]) {
    let n = bias.len();
    if n == 0 {
        return;
    }
    for row in y.chunks_exact_mut(n) {
        for (v, &b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// ReLU backward through its *output*: `dpre[i] = dy[i]` where `y[i] > 0`, else 0 (writes).
pub fn relu_backward<T: Real>(dpre: &mut [T], dy: &[T], y: &[T]) {
    for ((d, &g), &v) in dpre.iter_mut().zip(dy).zip(y) {
        *d = if v > T::ZERO { g } else { T::ZERO };
    }
}

/// Numerically stable logistic function.
#[inline]
pub fn sigmoid<T: Real>(x: T) -> T {
    if x >= T::ZERO {
        T::ONE / (T::ONE + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::ONE + e)
    }
}

/// `y[i] = scale · sigmoid(x[i])` (GateNU output with scale γ).
pub fn scaled_sigmoid_forward<T: Real>(y: &mut [T], x: &[T], scale: T) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = scale * sigmoid(v);
    }
}

/// Backward of [`scaled_sigmoid_forward`] through its output:
/// `dx[i] += dy[i] · y[i] · (1 − y[i]/scale)` (since d(γσ)/dx = γσ(1−σ)).
pub fn scaled_sigmoid_backward<T: Real>(dx: &mut [T], dy: &[T], y: &[T], scale: T) {
    for ((d, &g), &v) in dx.iter_mut().zip(dy).zip(y) {
        *d += g * v * (T::ONE - v / scale);
    }
}

/// `db[j] += Σ_b dy[b, j]` over rows of width `n = db.len()`, summed in row order.
pub fn bias_grad<T: Real>(db: &mut [T], dy: &[T]) {
    let n = db.len();
    if n == 0 {
        return;
    }
    for row in dy.chunks_exact(n) {
        for (g, &d) in db.iter_mut().zip(row) {
            *g += d;
        }
    }
}
