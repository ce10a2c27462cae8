//! Embedding gather and deterministic row-gradient accumulation.

use crate::cast::{f32s, f32s_mut, is_f32};
use crate::{reference, simd, Real};
use rayon::prelude::*;

/// Batch rows per rayon task in [`gather_rows`].
const GATHER_ROWS: usize = 256;

/// `out[b, off .. off+e] = table[idx[b], :]` for every row b; `out` rows have width `stride`.
///
/// Large batches are split over threads in fixed groups of rows (each task copies disjoint
/// output rows, so the result is the same for any thread count).
///
/// # Panics
/// If an index is outside the table (callers map unknown values to 0 beforehand) or `out` is
/// too short.
#[track_caller]
pub fn gather_rows<T: Real>(
    out: &mut [T],
    stride: usize,
    off: usize,
    table: &[T],
    e: usize,
    idx: &[u32],
) {
    let b = idx.len();
    if off + e > stride || e == 0 {
        return reference::gather_rows(out, stride, off, table, e, idx);
    }
    if b < 2 * GATHER_ROWS || crate::par::threads() < 2 {
        return gather_serial(out, stride, off, table, e, idx);
    }
    let vrows = table.len() / e;
    assert!(
        idx.iter().all(|&i| (i as usize) < vrows),
        "gather_rows: an index is outside the table ({vrows} rows)"
    );
    let need = (b - 1) * stride + off + e;
    assert!(
        out.len() >= need,
        "gather_rows: out has {} values, needs {need}",
        out.len()
    );
    let len = need.max((b * stride).min(out.len()));
    let out = &mut out[..len];
    out.par_chunks_mut(GATHER_ROWS * stride)
        .zip(idx.par_chunks(GATHER_ROWS))
        .for_each(|(o, ix)| gather_serial(o, stride, off, table, e, ix));
}

/// [`gather_rows`] on the calling thread. Common row widths are fixed-size copies (a call
/// to `memcpy` per 64-byte row costs more than the copy).
fn gather_serial<T: Real>(
    out: &mut [T],
    stride: usize,
    off: usize,
    table: &[T],
    e: usize,
    idx: &[u32],
) {
    #[inline(always)]
    fn fixed<T: Real, const E: usize>(
        out: &mut [T],
        stride: usize,
        off: usize,
        table: &[T],
        idx: &[u32],
    ) {
        for (b, &i) in idx.iter().enumerate() {
            if let Some(&ahead) = idx.get(b + PREFETCH_ROWS) {
                let row = table.as_ptr().wrapping_add(ahead as usize * E);
                crate::simd::prefetch(row as *const f32);
            }
            let i = i as usize;
            let src: &[T; E] = table[i * E..(i + 1) * E].try_into().expect("E wide");
            let dst: &mut [T; E] = (&mut out[b * stride + off..b * stride + off + E])
                .try_into()
                .expect("E wide");
            *dst = *src;
        }
    }
    match e {
        8 => fixed::<T, 8>(out, stride, off, table, idx),
        16 => fixed::<T, 16>(out, stride, off, table, idx),
        32 => fixed::<T, 32>(out, stride, off, table, idx),
        _ => reference::gather_rows(out, stride, off, table, e, idx),
    }
}

/// Every field's table row for each output row, row by row: for `b < rows` and
/// `j < n_fields`, with `(table, idx) = field(j)`,
/// `out[b·stride + off + j·e ..][..e] = table[idx[b], :]`.
///
/// The same copies as [`gather_rows`] once per field, in another order: each output row is
/// written whole (`n_fields · e` contiguous values) before the next, and every field's row
/// `FIELD_PREFETCH_ROWS` (4) output rows ahead is prefetched. Field by field, each pass writes
/// one cache line per output row across the whole block instead, so each output line is
/// fetched for ownership once per field.
///
/// # Panics
/// If an index is outside its table, a field has fewer than `rows` indices, or `out` is too
/// short.
#[track_caller]
#[allow(clippy::too_many_arguments)]
pub fn gather_fields<'t, T: Real + 't>(
    out: &mut [T],
    stride: usize,
    off: usize,
    n_fields: usize,
    field: impl Fn(usize) -> (&'t [T], &'t [u32]),
    e: usize,
    rows: usize,
) {
    if rows == 0 || n_fields == 0 || e == 0 {
        return;
    }
    assert!(
        off + n_fields * e <= stride,
        "gather_fields: {n_fields} rows of {e} from column {off} overflow a row of {stride}"
    );
    assert!(
        out.len() >= (rows - 1) * stride + off + n_fields * e,
        "gather_fields: out is too short for {rows} rows"
    );
    for j in 0..n_fields {
        assert!(
            field(j).1.len() >= rows,
            "gather_fields: field {j} has too few indices"
        );
    }
    // The fields' (table, indices) pairs, looked up once per group of up to FIELD_GROUP
    // fields rather than once per copied row.
    let mut pairs: [(&[T], &[u32]); FIELD_GROUP] = [(&[], &[]); FIELD_GROUP];
    let mut j0 = 0;
    while j0 < n_fields {
        let n = (n_fields - j0).min(FIELD_GROUP);
        for (j, p) in pairs[..n].iter_mut().enumerate() {
            *p = field(j0 + j);
        }
        let off = off + j0 * e;
        match e {
            8 => gather_group::<T, 8>(out, stride, off, &pairs[..n], rows),
            16 => gather_group::<T, 16>(out, stride, off, &pairs[..n], rows),
            32 => gather_group::<T, 32>(out, stride, off, &pairs[..n], rows),
            _ => {
                for (j, &(table, idx)) in pairs[..n].iter().enumerate() {
                    reference::gather_rows(out, stride, off + j * e, table, e, &idx[..rows]);
                }
            }
        }
        j0 += n;
    }
}

/// Fields per pass of [`gather_fields`] (a stack array of their tables and indices).
const FIELD_GROUP: usize = 64;

/// [`gather_fields`] for one group of fields with rows of a fixed width `E`.
#[inline(always)]
fn gather_group<T: Real, const E: usize>(
    out: &mut [T],
    stride: usize,
    off: usize,
    pairs: &[(&[T], &[u32])],
    rows: usize,
) {
    let n = pairs.len();
    for b in 0..rows {
        if b + FIELD_PREFETCH_ROWS < rows {
            for &(table, idx) in pairs {
                let ahead = idx[b + FIELD_PREFETCH_ROWS] as usize;
                crate::simd::prefetch(table.as_ptr().wrapping_add(ahead * E) as *const f32);
            }
        }
        let o = &mut out[b * stride + off..b * stride + off + n * E];
        for (&(table, idx), dst) in pairs.iter().zip(o.chunks_exact_mut(E)) {
            let i = idx[b] as usize;
            let src: &[T; E] = table[i * E..(i + 1) * E].try_into().expect("E wide");
            let dst: &mut [T; E] = dst.try_into().expect("E wide");
            *dst = *src;
        }
    }
}

/// How many output rows ahead [`gather_fields`] prefetches (each row is `n_tables` table rows).
const FIELD_PREFETCH_ROWS: usize = 8;

/// How many rows ahead the gather prefetches (enough to cover a memory access).
const PREFETCH_ROWS: usize = 16;

/// Radix digit width of the batch-position sort in [`accumulate_row_grads`].
const RADIX_BITS: u32 = 11;
/// Below this batch size a comparison sort is cheaper than the radix passes.
const RADIX_MIN: usize = 256;

/// Row-sparse gradient of one table from per-row gradients `g[b, off .. off+e]` (rows of width
/// `stride`) at indices `idx[b]`: `rows` receives the distinct indices in ascending order and
/// `grad` their summed gradients `[rows.len(), e]`, each sum taken in batch order (so the result
/// is deterministic). `order` is scratch (it ends up holding `2·B` values). All three vectors are
/// cleared and refilled; they do not allocate once their capacity has reached the batch size
/// (`2·B` for `order`).
///
/// The batch positions are ordered by index with a stable LSD radix sort (11-bit digits, as
/// many passes as the largest index needs, ping-ponging between the halves of `order`) — the
/// same order as a stable comparison sort, without its allocation. The sums are then taken
/// walking the batch in order, each position adding into its row's slot.
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
    let n = idx.len();
    order.resize(2 * n, 0);
    let (lo, hi) = order.split_at_mut(n);
    for (i, x) in lo.iter_mut().enumerate() {
        *x = i as u32;
    }
    // `sorted`: batch positions by index (stable); `slot`: the other half, reused below.
    let (sorted, slot): (&[u32], &mut [u32]) = if n < RADIX_MIN {
        // Position as the tie-break makes the unstable (allocation-free) sort stable.
        lo.sort_unstable_by_key(|&p| (idx[p as usize], p));
        (lo, hi)
    } else if radix_sort_positions(lo, hi, idx) {
        (hi, lo)
    } else {
        (lo, hi)
    };
    // Distinct indices in ascending order, and for every batch position its output row.
    for &p in sorted {
        let i = idx[p as usize];
        if rows.last() != Some(&i) {
            rows.push(i);
        }
        slot[p as usize] = (rows.len() - 1) as u32;
    }
    let slot = &*slot;
    grad.resize(rows.len() * e, T::ZERO);
    // Accumulate in batch order: each output row still receives its contributions in
    // increasing position (the documented order), while `g` is read sequentially instead of
    // in index order (its rows are far apart; the output rows are few and stay in cache).
    // The SIMD scatter (one vector add per row of 16 floats with AVX-512) does this; the
    // plain loop it replaced compiled to one scalar add per element.
    scatter_add_rows_indexed(grad, e, g, stride, off, slot, 1);
}

/// Stable LSD radix sort of the positions in `a` by `idx[pos]`, ping-ponging with `b`.
/// Returns `true` when the result ended up in `b`.
fn radix_sort_positions(a: &mut [u32], b: &mut [u32], idx: &[u32]) -> bool {
    let max = idx.iter().copied().max().unwrap_or(0);
    let bits = 32 - max.leading_zeros();
    // As few passes as RADIX_BITS allows, each of equal width: a field of 3 ids sorts on
    // 2 bits (4 counters, not 2048), one of 467k ids in two passes of 10 bits.
    let passes = bits.div_ceil(RADIX_BITS);
    let digit = bits.div_ceil(passes.max(1));
    let mask = (1u32 << digit) - 1;
    let (mut src, mut dst) = (a, b);
    let mut in_b = false;
    let mut shift = 0;
    while shift < bits {
        let mut count = [0u32; 1 << RADIX_BITS];
        let count = &mut count[..1 << digit];
        for &p in src.iter() {
            count[((idx[p as usize] >> shift) & mask) as usize] += 1;
        }
        let mut sum = 0;
        for c in count.iter_mut() {
            let t = *c;
            *c = sum;
            sum += t;
        }
        for &p in src.iter() {
            let d = ((idx[p as usize] >> shift) & mask) as usize;
            dst[count[d] as usize] = p;
            count[d] += 1;
        }
        std::mem::swap(&mut src, &mut dst);
        in_b = !in_b;
        shift += digit;
    }
    in_b
}

/// Panics unless every slot's row `[s·stride + off, +w)` lies inside a table of `len`.
#[track_caller]
fn check_slot_rows(what: &str, len: usize, stride: usize, off: usize, w: usize, slots: &[u32]) {
    if w == 0 {
        return;
    }
    let max = slots.iter().copied().max().map_or(0, |s| s as usize);
    assert!(
        slots.is_empty() || max * stride + off + w <= len,
        "{what}: slot {max} (row of {w} at column {off}, stride {stride}) is outside a table of {len}"
    );
}

/// `out[b, ..w] += Σ_j table[rows[b·per_row + j]·w ..][..w]` for every row `b` of `out` (rows
/// of width `w`, as many as `rows` holds groups of `per_row`), the terms added in `j` order
/// into the output value: each row adds several rows of one table (the factored MMoE layer
/// adds all its fields' per-id terms at once). Same IEEE additions as
/// [`reference::add_rows_indexed`] (bit-identical), and as `per_row` calls with one index per
/// row, one per `j`.
///
/// # Panics
/// If `out` or `rows` is too short for the other, or an index leaves `table`.
#[track_caller]
pub fn add_rows_indexed<T: Real>(
    out: &mut [T],
    w: usize,
    table: &[T],
    rows: &[u32],
    per_row: usize,
) {
    add_rows_indexed_checked("add_rows_indexed", out, w, table, rows, per_row, None);
}

/// [`add_rows_indexed`] followed by a bias and ReLU on the sums,
/// `out[b, j] = max(out[b, j] + Σ_i table[rows[b·per_row + i], j] + bias[j], 0)` with
/// `w = bias.len()`, in one pass over `out` (the factored MMoE layer's pre-activation, its
/// bias and ReLU). The same IEEE operations as [`add_rows_indexed`] then
/// [`crate::act::bias_relu_forward`] (bit-identical).
///
/// # Panics
/// As [`add_rows_indexed`].
#[track_caller]
pub fn add_rows_indexed_bias_relu<T: Real>(
    out: &mut [T],
    table: &[T],
    rows: &[u32],
    per_row: usize,
    bias: &[T],
) {
    let (name, w) = ("add_rows_indexed_bias_relu", bias.len());
    add_rows_indexed_checked(name, out, w, table, rows, per_row, Some(bias));
}

/// The checks and dispatch of [`add_rows_indexed`] and, with `bias`,
/// [`add_rows_indexed_bias_relu`].
#[track_caller]
fn add_rows_indexed_checked<T: Real>(
    name: &str,
    out: &mut [T],
    w: usize,
    table: &[T],
    rows: &[u32],
    per_row: usize,
    bias: Option<&[T]>,
) {
    if w == 0 {
        return;
    }
    if per_row == 0 {
        // No terms: only the epilogue, if any.
        if let Some(b) = bias {
            crate::act::bias_relu_forward(out, b);
        }
        return;
    }
    let n = rows.len() / per_row;
    assert!(
        rows.len() == n * per_row && out.len() >= n * w,
        "{name}: {} indices in groups of {per_row} for {} output values of rows of {w}",
        rows.len(),
        out.len()
    );
    check_slot_rows(name, table.len(), w, 0, w, rows);
    let out = &mut out[..n * w];
    let path = simd::simd_path();
    match bias {
        None if !is_f32::<T>() => reference::add_rows_indexed(out, w, table, rows, per_row),
        Some(b) if !is_f32::<T>() => {
            reference::add_rows_indexed_bias_relu(out, w, table, rows, per_row, b)
        }
        None => {
            let (o, t) = (f32s_mut(out), f32s(table));
            simd::add_rows_indexed(path, o, w, t, rows, per_row)
        }
        Some(b) => {
            let (o, t) = (f32s_mut(out), f32s(table));
            simd::add_rows_indexed_bias_relu(path, o, w, t, rows, per_row, f32s(b))
        }
    }
}

/// `table[rows[b·per_row + j]·w ..][..w] += src[b·src_stride + src_off ..][..w]` for every
/// row `b` (as many as `rows` holds groups of `per_row`) and every `j`, in increasing `b` then
/// `j`: each source row added to several rows of one table (the factored MMoE layer's per-id
/// gradient sums, all fields at once), every table element summing its terms in batch order.
/// Same IEEE additions as [`reference::scatter_add_rows_indexed`] (bit-identical).
///
/// # Panics
/// If `src` has too few rows or an index leaves `table`.
#[track_caller]
pub fn scatter_add_rows_indexed<T: Real>(
    table: &mut [T],
    w: usize,
    src: &[T],
    src_stride: usize,
    src_off: usize,
    rows: &[u32],
    per_row: usize,
) {
    if w == 0 || per_row == 0 || rows.is_empty() {
        return;
    }
    let n = rows.len() / per_row;
    assert_eq!(
        rows.len(),
        n * per_row,
        "scatter_add_rows_indexed: ragged index groups"
    );
    assert!(
        n == 0 || src.len() >= (n - 1) * src_stride + src_off + w,
        "scatter_add_rows_indexed: src is too short"
    );
    check_slot_rows("scatter_add_rows_indexed", table.len(), w, 0, w, rows);
    if !is_f32::<T>() {
        return reference::scatter_add_rows_indexed(
            table, w, src, src_stride, src_off, rows, per_row,
        );
    }
    simd::scatter_add_rows_indexed(
        simd::simd_path(),
        f32s_mut(table),
        w,
        f32s(src),
        src_stride,
        src_off,
        &rows[..n * per_row],
        per_row,
    );
}
