//! Embedding gather and deterministic row-gradient accumulation.

use crate::Real;

/// `out[b, off .. off+e] = table[idx[b], :]` for every row b; `out` rows have width `stride`.
///
/// # Panics
/// If an index is outside the table (callers map unknown values to 0 beforehand).
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

/// Row-sparse gradient of one table from per-row gradients `g[b, off .. off+e]` (rows of width
/// `stride`) at indices `idx[b]`: `rows` receives the distinct indices in ascending order and
/// `grad` their summed gradients `[rows.len(), e]`, each sum taken in batch order (so the result
/// is deterministic). `order` is scratch. All three vectors are cleared and refilled; they do not
/// allocate once their capacity has reached the batch size.
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
    // Stable sort by index keeps equal indices in batch order.
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
