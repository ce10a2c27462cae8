//! Adam (as `torch.optim.Adam`) and lazy row-sparse Adam (as `torch.optim.SparseAdam`).
//!
//! For `f32` both run SIMD code that performs the reference's IEEE operations in the
//! reference's order without fusing (bit-identical results), split over rayon in fixed chunks.

use crate::cast::{f32s, f32s_mut, is_f32};
use crate::par::{worth, CHUNK};
use crate::simd::kern::AdamConsts;
use crate::{reference, simd, Real};
use rayon::prelude::*;

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
///
/// One departure from IEEE arithmetic (and from torch): a moment that comes out subnormal
/// (`0 < |m| < f32::MIN_POSITIVE`) is stored as +0, before the update uses it. A weight
/// whose gradient stays zero (a dead ReLU unit's, an unused code's) has its `m` shrink by
/// `β1` every step; in IEEE arithmetic it then spends hundreds of steps subnormal and sticks
/// at a few ulps above zero (`(1−β1)·m` rounds to zero there), and every step's operations on
/// it take the CPU's slow microcoded path: after ~600 steps of hmdn-mmoe at batch 1024 the
/// dense Adam took twice as long. The update such a moment gives is below
/// `lr · 1.2e-38 / eps`, which changes no weight larger than ~1e-26.
///
/// # Panics
/// If `g`, `m` or `v` is shorter than `p`.
#[track_caller]
pub fn adam_step<T: Real>(
    p: &mut [T],
    g: &[T],
    m: &mut [T],
    v: &mut [T],
    h: &AdamParams,
    step: u64,
) {
    if !is_f32::<T>() {
        return reference::adam_step(p, g, m, v, h, step);
    }
    let n = p.len();
    assert!(
        g.len() >= n && m.len() >= n && v.len() >= n,
        "adam_step: g/m/v shorter than p ({n})"
    );
    let bc1 = 1.0 - h.beta1.powi(step as i32);
    let bc2 = 1.0 - h.beta2.powi(step as i32);
    // The same f64 → f32 conversions as the reference.
    let c = AdamConsts {
        b1c: (1.0 - h.beta1) as f32,
        b2: h.beta2 as f32,
        b2c: (1.0 - h.beta2) as f32,
        eps: h.eps as f32,
        step_size: (h.lr / bc1) as f32,
        bc2_sqrt: bc2.sqrt() as f32,
        l2: 0.0,
    };
    let (p, g) = (f32s_mut(p), &f32s(g)[..n]);
    let (m, v) = (&mut f32s_mut(m)[..n], &mut f32s_mut(v)[..n]);
    let path = simd::simd_path();
    if worth(n) {
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
            .for_each(|((p, g), (m, v))| simd::adam(path, p, g, m, v, &c));
    } else {
        simd::adam(path, p, g, m, v, &c);
    }
}

/// One lazy Adam step on the `rows` of a table `[V, e]` (moments `m`, `v` have the table's
/// shape), following `torch.optim.SparseAdam`: only the listed rows change,
/// `m_r ← m_r + (1−β1)(g − m_r)`, `v_r ← v_r + (1−β2)(g² − v_r)`,
/// `p_r ← p_r − lr·sqrt(bc2)/bc1 · m_r / (sqrt(v_r) + eps)`. When `l2 > 0`, `l2·p_r` is added to
/// each row's gradient first (L2 on the rows seen in the batch). Subnormal moments are stored
/// as +0, as in [`adam_step`].
///
/// `rows` as produced by [`crate::embed::accumulate_row_grads`] (strictly ascending) are split
/// over threads; any other order (including repeats, applied one after another) runs serially.
///
/// # Panics
/// If a row is outside the table or `grad` is shorter than `rows.len() · e`.
#[allow(clippy::too_many_arguments)]
#[track_caller]
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
    if !is_f32::<T>() || e == 0 {
        return reference::lazy_adam_rows(table, m, v, e, rows, grad, h, step, l2);
    }
    let vrows = table.len().min(m.len()).min(v.len()) / e;
    assert!(
        rows.iter().all(|&r| (r as usize) < vrows),
        "lazy_adam_rows: a row index is outside the table ({vrows} rows)"
    );
    assert!(
        grad.len() >= rows.len() * e,
        "lazy_adam_rows: grad has {} values, needs {}x{}",
        grad.len(),
        rows.len(),
        e
    );
    let bc1 = 1.0 - h.beta1.powi(step as i32);
    let bc2 = 1.0 - h.beta2.powi(step as i32);
    let c = AdamConsts {
        b1c: (1.0 - h.beta1) as f32,
        b2: h.beta2 as f32,
        b2c: (1.0 - h.beta2) as f32,
        eps: h.eps as f32,
        step_size: (h.lr * bc2.sqrt() / bc1) as f32,
        bc2_sqrt: 0.0,
        l2: l2 as f32,
    };
    let (t, m, v) = (
        &mut f32s_mut(table)[..vrows * e],
        &mut f32s_mut(m)[..vrows * e],
        &mut f32s_mut(v)[..vrows * e],
    );
    let g = &f32s(grad)[..rows.len() * e];
    let path = simd::simd_path();
    let ascending = rows.windows(2).all(|w| w[0] < w[1]);
    if ascending && worth(rows.len() * e) {
        sparse_par(path, t, m, v, 0, e, rows, g, &c);
    } else {
        sparse_serial(path, t, m, v, 0, e, rows, g, &c);
    }
}

/// How many rows ahead [`sparse_serial`] prefetches.
const PREFETCH_ROWS: usize = 8;

/// Rows per leaf task of [`sparse_par`].
fn sparse_leaf_rows(e: usize) -> usize {
    (CHUNK / e).max(1)
}

/// Applies SparseAdam to `rows` (ascending) of the table slice that starts at table row `r0`.
#[allow(clippy::too_many_arguments)]
fn sparse_serial(
    path: simd::SimdPath,
    t: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    r0: usize,
    e: usize,
    rows: &[u32],
    g: &[f32],
    c: &AdamConsts,
) {
    for (j, &r) in rows.iter().enumerate() {
        if let Some(&ahead) = rows.get(j + PREFETCH_ROWS) {
            // Rows are far apart in big tables: start loading a later row's lines now.
            let s = (ahead as usize - r0) * e;
            for a in [t.as_ptr(), m.as_ptr(), v.as_ptr()] {
                simd::prefetch(a.wrapping_add(s));
            }
        }
        let s = (r as usize - r0) * e;
        simd::sparse_adam(
            path,
            &mut t[s..s + e],
            &g[j * e..(j + 1) * e],
            &mut m[s..s + e],
            &mut v[s..s + e],
            c,
        );
    }
}

/// Splits ascending `rows` in halves with `rayon::join`: the table is cut at the first row of
/// the right half, so both halves own disjoint table slices (no allocation, no locking).
#[allow(clippy::too_many_arguments)]
fn sparse_par(
    path: simd::SimdPath,
    t: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    r0: usize,
    e: usize,
    rows: &[u32],
    g: &[f32],
    c: &AdamConsts,
) {
    if rows.len() <= sparse_leaf_rows(e) {
        return sparse_serial(path, t, m, v, r0, e, rows, g, c);
    }
    let mid = rows.len() / 2;
    let cut_row = rows[mid] as usize;
    let cut = (cut_row - r0) * e;
    let (tl, tr) = t.split_at_mut(cut);
    let (ml, mr) = m.split_at_mut(cut);
    let (vl, vr) = v.split_at_mut(cut);
    let (gl, gr) = g.split_at(mid * e);
    rayon::join(
        || sparse_par(path, tl, ml, vl, r0, e, &rows[..mid], gl, c),
        || sparse_par(path, tr, mr, vr, cut_row, e, &rows[mid..], gr, c),
    );
}
