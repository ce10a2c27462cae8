//! Adam (as `torch.optim.Adam`) and lazy row-sparse Adam (as `torch.optim.SparseAdam`).

use crate::Real;

/// Adam hyper-parameters.
#[derive(Clone, Copy, Debug)]
pub struct AdamParams {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
}

impl Default for AdamParams {
    fn default() -> Self {
        AdamParams {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// One dense Adam step at (1-based) `step`, following `torch.optim.Adam` (single-tensor path):
/// `m ← lerp(m, g, 1−β1)`, `v ← β2·v + (1−β2)·g²`,
/// `p ← p − (lr / bc1) · m / (sqrt(v)/sqrt(bc2) + eps)`.
pub fn adam_step<T: Real>(
    p: &mut [T],
    g: &[T],
    m: &mut [T],
    v: &mut [T],
    h: &AdamParams,
    step: u64,
) {
    let bc1 = 1.0 - h.beta1.powi(step as i32);
    let bc2 = 1.0 - h.beta2.powi(step as i32);
    let step_size = T::from_f64(h.lr / bc1);
    let bc2_sqrt = T::from_f64(bc2.sqrt());
    let (b1c, b2, b2c, eps) = (
        T::from_f64(1.0 - h.beta1),
        T::from_f64(h.beta2),
        T::from_f64(1.0 - h.beta2),
        T::from_f64(h.eps),
    );
    for i in 0..p.len() {
        let gi = g[i];
        m[i] += b1c * (gi - m[i]);
        v[i] = b2 * v[i] + b2c * gi * gi;
        let denom = v[i].sqrt() / bc2_sqrt + eps;
        p[i] -= step_size * m[i] / denom;
    }
}

/// One lazy Adam step on the `rows` of a table `[V, e]` (moments `m`, `v` have the table's
/// shape), following `torch.optim.SparseAdam`: only the listed rows change,
/// `m_r ← m_r + (1−β1)(g − m_r)`, `v_r ← v_r + (1−β2)(g² − v_r)`,
/// `p_r ← p_r − lr·sqrt(bc2)/bc1 · m_r / (sqrt(v_r) + eps)`. When `l2 > 0`, `l2·p_r` is added to
/// each row's gradient first (L2 on the rows seen in the batch).
#[allow(clippy::too_many_arguments)]
pub fn lazy_adam_rows<T: Real>(
    table: &mut [T],
    m: &mut [T],
    v: &mut [T],
    e: usize,
    rows: &[u32],
    grad: &[T],
    h: &AdamParams,
    step: u64,
    l2: f64,
) {
    let bc1 = 1.0 - h.beta1.powi(step as i32);
    let bc2 = 1.0 - h.beta2.powi(step as i32);
    let step_size = T::from_f64(h.lr * bc2.sqrt() / bc1);
    let (b1c, b2c, eps, l2) = (
        T::from_f64(1.0 - h.beta1),
        T::from_f64(1.0 - h.beta2),
        T::from_f64(h.eps),
        T::from_f64(l2),
    );
    for (j, &r) in rows.iter().enumerate() {
        let base = r as usize * e;
        for c in 0..e {
            let i = base + c;
            let mut gi = grad[j * e + c];
            if l2 != T::ZERO {
                gi += l2 * table[i];
            }
            m[i] += b1c * (gi - m[i]);
            v[i] += b2c * (gi * gi - v[i]);
            table[i] -= step_size * m[i] / (v[i].sqrt() + eps);
        }
    }
}
