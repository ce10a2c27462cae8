//! Scalar twins of every kernel: the specification, the portable fallback and the oracle the
//! equivalence tests compare fast paths against. Plain loops, no `unsafe`, no SIMD, no threads.
//! The public kernels run exactly these bodies for `f64` (gradient checks); for `f32` they run
//! the SIMD paths in `crate::simd`, which `tests/equivalence.rs` holds to these.

use crate::optim::AdamParams;
use crate::{Real, Trans};

/// Element `(r, c)` of `op(X)`, a `rows × cols` matrix, with `X` stored row-major as given
/// (`t == T`: `X` is `cols × rows`): how [`gemm`] and the tests index an operand.
#[inline]
pub fn op_at<T: Copy>(x: &[T], t: Trans, rows: usize, cols: usize, r: usize, c: usize) -> T {
    match t {
        Trans::N => x[r * cols + c],
        Trans::T => x[c * rows + r],
    }
}

/// Reference for [`crate::gemm::gemm`]: triple loop, `k` summed in increasing order.
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    a: &[T],
    ta: Trans,
    b: &[T],
    tb: Trans,
    beta: T,
    c: &mut [T],
) {
    for i in 0..m {
        for j in 0..n {
            let mut acc = T::ZERO;
            for p in 0..k {
                acc += op_at(a, ta, m, k, i, p) * op_at(b, tb, k, n, p, j);
            }
            let old = if beta == T::ZERO {
                T::ZERO
            } else {
                beta * c[i * n + j]
            };
            c[i * n + j] = alpha * acc + old;
        }
    }
}

/// Reference for [`crate::act::bias_relu_forward`].
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

/// Reference for [`crate::act::bias_add`].
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

/// Reference for [`crate::act::relu_backward`].
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

/// Reference for [`crate::act::scaled_sigmoid_forward`].
pub fn scaled_sigmoid_forward<T: Real>(y: &mut [T], x: &[T], scale: T) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = scale * sigmoid(v);
    }
}

/// Reference for [`crate::act::scaled_sigmoid_backward`].
pub fn scaled_sigmoid_backward<T: Real>(dx: &mut [T], dy: &[T], y: &[T], scale: T) {
    for ((d, &g), &v) in dx.iter_mut().zip(dy).zip(y) {
        *d += g * v * (T::ONE - v / scale);
    }
}

/// Reference for [`crate::act::bias_scaled_sigmoid_forward`].
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
    for (drow, urow) in delta.chunks_exact_mut(n).zip(u.chunks_exact(n)) {
        for ((d, &v), &b) in drow.iter_mut().zip(urow).zip(bias) {
            *d = scale * sigmoid(v + b);
        }
    }
    if let Some((y, x)) = scaled {
        for ((o, &d), &v) in y.iter_mut().zip(delta.iter()).zip(x) {
            *o = d * v;
        }
    }
}

/// Reference for [`crate::act::scaled_sigmoid_mul_backward`].
pub fn scaled_sigmoid_mul_backward<T: Real>(
    du: &mut [T],
    dx: &mut [T],
    dy: &[T],
    x: &[T],
    delta: &[T],
    scale: T,
) {
    for (((u, &g), &v), &d) in du.iter_mut().zip(dy).zip(x).zip(delta) {
        *u = g * v * d * (T::ONE - d / scale);
    }
    for ((o, &g), &d) in dx.iter_mut().zip(dy).zip(delta) {
        *o = g * d;
    }
}

/// Reference for [`crate::act::bias_grad`]: each column summed in row order.
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

/// Reference for [`crate::softmax::softmax_rows_forward`].
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

/// Reference for [`crate::softmax::softmax_rows_backward`].
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

/// Reference for [`crate::loss::bce_with_logits_sum`].
pub fn bce_with_logits_sum<T: Real>(logits: &[T], labels: &[T]) -> T {
    let mut s = T::ZERO;
    for (&x, &y) in logits.iter().zip(labels) {
        s += x.max(T::ZERO) - x * y + (-x.abs()).exp().ln_1p();
    }
    s
}

/// Reference for [`crate::loss::bce_with_logits_backward`].
pub fn bce_with_logits_backward<T: Real>(dx: &mut [T], logits: &[T], labels: &[T], scale: T) {
    for ((d, &x), &y) in dx.iter_mut().zip(logits).zip(labels) {
        *d += scale * (sigmoid(x) - y);
    }
}

/// Reference for [`crate::optim::adam_step`].
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
        m[i] = flush_subnormal(m[i] + b1c * (gi - m[i]));
        v[i] = flush_subnormal(b2 * v[i] + b2c * gi * gi);
        let denom = v[i].sqrt() / bc2_sqrt + eps;
        p[i] -= step_size * m[i] / denom;
    }
}

/// `x`, or zero when `x` is subnormal (`0 < |x| < MIN_POSITIVE`): how both Adams store their
/// moments (see [`crate::optim::adam_step`]).
#[inline(always)]
pub fn flush_subnormal<T: Real>(x: T) -> T {
    if x.abs() < T::MIN_POSITIVE {
        T::ZERO
    } else {
        x
    }
}

/// Reference for [`crate::optim::lazy_adam_rows`].
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
            m[i] = flush_subnormal(m[i] + b1c * (gi - m[i]));
            v[i] = flush_subnormal(v[i] + b2c * (gi * gi - v[i]));
            table[i] -= step_size * m[i] / (v[i].sqrt() + eps);
        }
    }
}

/// Reference for [`crate::vq::sq_norms`].
pub fn sq_norms<T: Real>(out: &mut [T], m: &[T], z: usize) {
    if z == 0 {
        out.fill(T::ZERO);
        return;
    }
    for (o, row) in out.iter_mut().zip(m.chunks_exact(z)) {
        let mut s = T::ZERO;
        for &v in row {
            s += v * v;
        }
        *o = s;
    }
}

/// Reference for [`crate::vq::argmin_sq_l2`]: `d_k = ||C_k||² − (⟨r, C_k⟩ + ⟨r, C_k⟩)`, dot
/// summed in increasing order, first strict minimum wins (ties → lowest index).
pub fn argmin_sq_l2<T: Real>(
    codes: &mut [u32],
    r: &[T],
    codebook: &[T],
    code_norms: &[T],
    z: usize,
) {
    let k = code_norms.len();
    for (b, c) in codes.iter_mut().enumerate() {
        let row = &r[b * z..(b + 1) * z];
        let mut best = 0u32;
        let mut best_d = T::ZERO;
        for j in 0..k {
            let cj = &codebook[j * z..(j + 1) * z];
            let mut dot = T::ZERO;
            for (&a, &bv) in row.iter().zip(cj) {
                dot += a * bv;
            }
            let d = code_norms[j] - (dot + dot);
            if j == 0 || d < best_d {
                best_d = d;
                best = j as u32;
            }
        }
        *c = best;
    }
}

/// Reference for [`crate::vq::argmin_from_dots`]: `d_k = ||C_k||² − (dot_k + dot_k)`, first
/// strict minimum wins.
pub fn argmin_from_dots<T: Real>(codes: &mut [u32], dots: &[T], code_norms: &[T]) {
    let k = code_norms.len();
    for (b, c) in codes.iter_mut().enumerate() {
        let mut best = 0u32;
        let mut best_d = T::ZERO;
        for j in 0..k {
            let dot = dots[b * k + j];
            let d = code_norms[j] - (dot + dot);
            if j == 0 || d < best_d {
                best_d = d;
                best = j as u32;
            }
        }
        *c = best;
    }
}

/// Reference for [`crate::embed::gather_rows`].
#[track_caller]
pub fn gather_rows<T: Real>(
    out: &mut [T],
    stride: usize,
    off: usize,
    table: &[T],
    e: usize,
    idx: &[u32],
) {
    for (b, &i) in idx.iter().enumerate() {
        let i = i as usize;
        out[b * stride + off..b * stride + off + e].copy_from_slice(&table[i * e..(i + 1) * e]);
    }
}

/// Reference for [`crate::embed::accumulate_row_grads`]: a stable comparison sort of the batch
/// positions by index, then sums in that order. (Allocates inside the stable sort; the fast
/// version does not.)
#[allow(clippy::too_many_arguments)]
pub fn accumulate_row_grads<T: Real>(
    rows: &mut Vec<u32>,
    grad: &mut Vec<T>,
    order: &mut Vec<u32>,
    idx: &[u32],
    g: &[T],
    stride: usize,
    off: usize,
    e: usize,
) {
    rows.clear();
    grad.clear();
    order.clear();
    order.extend(0..idx.len() as u32);
    order.sort_by_key(|&b| idx[b as usize]);
    for &b in order.iter() {
        let b = b as usize;
        let i = idx[b];
        if rows.last() != Some(&i) {
            rows.push(i);
            grad.extend(std::iter::repeat_n(T::ZERO, e));
        }
        let base = grad.len() - e;
        for (acc, &v) in grad[base..]
            .iter_mut()
            .zip(&g[b * stride + off..b * stride + off + e])
        {
            *acc += v;
        }
    }
}

/// Reference for [`crate::auc::auc`]: stable sort by score, average ranks for ties
/// (Mann–Whitney U).
pub fn auc(scores: &[f32], labels: &[f32]) -> Option<f64> {
    let n = scores.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    auc_from_order(&order, scores, labels)
}

/// Average-rank AUC from positions sorted by score (shared by the reference and fast AUC;
/// equal scores must be adjacent in `order`).
pub(crate) fn auc_from_order(order: &[usize], scores: &[f32], labels: &[f32]) -> Option<f64> {
    let n = order.len();
    let (mut pos, mut rank_sum) = (0.0f64, 0.0f64);
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        // ranks i+1 ..= j+1 share their average
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &o in &order[i..=j] {
            if labels[o] > 0.5 {
                pos += 1.0;
                rank_sum += avg;
            }
        }
        i = j + 1;
    }
    let neg = n as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return None;
    }
    Some((rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg))
}

/// Reference for [`crate::embed::add_rows_indexed`]: each output element adds its `per_row`
/// table values in index order.
pub fn add_rows_indexed<T: Real>(
    out: &mut [T],
    w: usize,
    table: &[T],
    rows: &[u32],
    per_row: usize,
) {
    if w == 0 {
        return;
    }
    for (b, orow) in out.chunks_exact_mut(w).enumerate() {
        for &i in &rows[b * per_row..(b + 1) * per_row] {
            let t = &table[i as usize * w..][..w];
            for (o, &v) in orow.iter_mut().zip(t) {
                *o += v;
            }
        }
    }
}

/// Reference for [`crate::embed::add_rows_indexed_bias_relu`]: [`add_rows_indexed`], then
/// [`bias_relu_forward`].
pub fn add_rows_indexed_bias_relu<T: Real>(
    out: &mut [T],
    w: usize,
    table: &[T],
    rows: &[u32],
    per_row: usize,
    bias: &[T],
) {
    add_rows_indexed(out, w, table, rows, per_row);
    bias_relu_forward(out, bias);
}

/// Reference for [`crate::embed::scatter_add_rows_indexed`]: rows `b` in order, then their
/// `per_row` indices in order.
pub fn scatter_add_rows_indexed<T: Real>(
    table: &mut [T],
    w: usize,
    src: &[T],
    src_stride: usize,
    src_off: usize,
    rows: &[u32],
    per_row: usize,
) {
    if w == 0 || per_row == 0 {
        return;
    }
    for (b, idx) in rows.chunks_exact(per_row).enumerate() {
        let s = &src[b * src_stride + src_off..][..w];
        for &i in idx {
            for (d, &v) in table[i as usize * w..][..w].iter_mut().zip(s) {
                *d += v;
            }
        }
    }
}
