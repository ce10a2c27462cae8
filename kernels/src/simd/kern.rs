//! The f32 fast kernels, written once against [`Vf`] and instantiated per SIMD path by the
//! entry points in `mod.rs`. Everything here is `#[inline(always)]` so that it is compiled
//! inside the `#[target_feature]` entry that calls it (see the module docs of `simd`).
//!
//! Contracts shared by all kernels: slices have the lengths the kernel's doc states (the
//! public wrappers check or trim them); outputs never alias inputs (guaranteed by `&mut`).
//!
//! Exactness: kernels without a reduction or transcendental do the same IEEE operations in the
//! same order as `crate::reference`, without fusing (no FMA), so they are bit-identical to it.
//! `exp`-based kernels (sigmoid, softmax, BCE backward) and reductions (softmax sums, norms,
//! dots, GEMM) differ by a few ulp / by summation order; `tests/equivalence.rs` states the bounds.

use super::Vf;
use std::mem::MaybeUninit;
use std::ptr;

/// `LANES` of the widest vector type; sizes the stack buffers used for tails.
const MAX_LANES: usize = 16;

/// Loads `n < LANES` values from `p`, filling the other lanes with `fill`.
#[inline(always)]
unsafe fn load_part<V: Vf>(p: *const f32, n: usize, fill: f32) -> V {
    let mut buf = [fill; MAX_LANES];
    ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n);
    V::load(buf.as_ptr())
}

/// Sum of the lanes as a fixed pairwise tree (same order on every call).
#[inline(always)]
unsafe fn reduce_add<V: Vf>(v: V) -> f32 {
    let mut buf = [0.0f32; MAX_LANES];
    v.store(buf.as_mut_ptr());
    let mut w = V::LANES;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            buf[i] += buf[i + w];
        }
    }
    buf[0]
}

/// Maximum of the lanes (order-independent for non-NaN values).
#[inline(always)]
unsafe fn reduce_max<V: Vf>(v: V) -> f32 {
    let mut buf = [0.0f32; MAX_LANES];
    v.store(buf.as_mut_ptr());
    let mut m = buf[0];
    for &x in &buf[1..V::LANES] {
        m = m.max(x);
    }
    m
}

/// Elementwise loop over `n` positions: runs `$body` with each named pointer advanced to the
/// current vector, then once more on stack copies for the `n % LANES` tail, so the tail goes
/// through the very same vector code (results do not depend on a value's position).
/// `[$o..]` are read-write pointers (copied back after the tail), `[$i..]` read-only.
macro_rules! ew {
    ($n:expr, [$($o:ident),+], [$($i:ident),*], $body:block) => {{
        let n: usize = $n;
        let l = V::LANES;
        let mut j = 0usize;
        while j + l <= n {
            $(let $o = $o.add(j);)+
            $(let $i = $i.add(j);)*
            $body
            j += l;
        }
        if j < n {
            let r = n - j;
            $(
                let mut buf = [0.0f32; MAX_LANES];
                ptr::copy_nonoverlapping($o.add(j), buf.as_mut_ptr(), r);
                let $o = (buf, $o.add(j));
            )+
            $(
                let mut buf = [0.0f32; MAX_LANES];
                ptr::copy_nonoverlapping($i.add(j), buf.as_mut_ptr(), r);
                let $i = buf;
            )*
            {
                $(let mut $o = $o;)+
                {
                    $(let $o: *mut f32 = $o.0.as_mut_ptr();)+
                    $(let $i: *const f32 = $i.as_ptr();)*
                    $body
                }
                $(ptr::copy_nonoverlapping($o.0.as_ptr(), $o.1, r);)+
            }
        }
    }};
}

/// `e^x` for `x <= 0` (the only range the kernels need: `exp(-|x|)`, `exp(x - max)`), to about
/// 2 ulp, including the subnormal range, and exactly 0 below −104 where `expf` rounds to 0.
///
/// Method: `x = n·ln2 + r` with `n = round(x/ln2)` and `|r| <= ln2/2`; `ln2` is split into a
/// 9-bit head (so `n·LN2_HI` is exact) and a tail. `e^r` by its degree-7 Taylor polynomial
/// (truncation `r^8/8! < 6e-9`, below 0.1 ulp) in Horner form, then scaled by `2^n` with one
/// rounding (`Vf::mul_pow2`: AVX-512's `vscalefps`, else one or two multiplies by normal powers
/// of two), so subnormal results are rounded once too.
#[inline(always)]
pub(crate) unsafe fn exp_nonpos<V: Vf>(x: V) -> V {
    exp_nonpos_group([x])[0]
}

/// Numerically stable logistic function, the same case split as `reference::sigmoid`:
/// `1/(1+e^-x)` for `x >= 0`, `e^x/(1+e^x)` otherwise, both from `e = exp(-|x|)`.
#[inline(always)]
unsafe fn sigmoid<V: Vf>(x: V) -> V {
    let one = V::splat(1.0);
    let e = exp_nonpos(x.neg_abs());
    // Select the numerator first: one divide instead of two, same IEEE operations per lane.
    V::select_ge(x, V::splat(0.0), one, e).div(one.add(e))
}

/// [`exp_nonpos`] on `G` vectors at once, each operation applied to all `G` before the
/// next: the same operations per lane, so the same bits, but `G` independent dependency
/// chains side by side. One `e^x` is a chain of ~15 dependent operations (~70 cycles); one
/// vector after another, the epilogue ran at ~20 cycles per vector where its operations
/// need ~11 on two ports, which we read as the scheduler filling with operations waiting on
/// their chain (a GEMM's sigmoid epilogue at 512 × 64 → 368 ran ~20% faster grouped by 8,
/// `benches/RESULTS.md`). The final scaling tests the group once ([`Vf::mul_pow2_group`]);
/// with a test and a branch per vector the epilogue cost ~50% more. (In the compiled code
/// the Horner steps still run one vector's chain after another's; written out side by side
/// in `asm!` they were no faster, twenty-second session: the out-of-order core overlaps
/// the chains by itself.)
#[inline(always)]
unsafe fn exp_nonpos_group<V: Vf, const G: usize>(x: [V; G]) -> [V; G] {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4; // 355/512, exact in 9 bits
    const LN2_LO: f32 = -2.121_944_4e-4; // ln 2 − LN2_HI
    const FLOOR: f32 = -104.0;
    // Plain loops: a first version with `array::map` closures ran 4× slower.
    let mut xc = x;
    for v in xc.iter_mut() {
        *v = v.max(V::splat(FLOOR));
    }
    let mut n = xc;
    for v in n.iter_mut() {
        *v = v.mul(V::splat(LOG2E)).round_even();
    }
    let mut r = xc;
    for g in 0..G {
        r[g] = n[g].mul_add(V::splat(-LN2_HI), r[g]);
    }
    for g in 0..G {
        r[g] = n[g].mul_add(V::splat(-LN2_LO), r[g]);
    }
    let mut p = [V::splat(1.0 / 5040.0); G];
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        for g in 0..G {
            p[g] = p[g].mul_add(r[g], V::splat(c));
        }
    }
    // Below FLOOR, x is clamped to it: e^r·2^-150 with r ≈ -0.028, under half the smallest
    // subnormal, rounds to exactly 0, as expf does there.
    V::mul_pow2_group(&mut p, &n);
    p
}

/// `y[b, j] = max(y[b, j] + bias[j], 0)` (as `reference`: `s > 0 ? s : 0`) over whole rows.
#[inline(always)]
pub(crate) unsafe fn bias_relu<V: Vf>(y: &mut [f32], bias: &[f32]) {
    let n = bias.len();
    let zero = V::splat(0.0);
    for row in y.chunks_exact_mut(n) {
        let (yp, bp) = (row.as_mut_ptr(), bias.as_ptr());
        ew!(n, [yp], [bp], {
            let s = V::load(yp).add(V::load(bp));
            V::select_gt(s, zero, s, zero).store(yp);
        });
    }
}

/// `out[b, ..w] += table[rows[b·k]·w ..][..w] + … + table[rows[b·k + k − 1]·w ..][..w]` for
/// every row `b` of `out` (`k = per_row`), added left to right into the output value as
/// [`crate::reference::add_rows_indexed`] does, one vector of columns at a time held in a
/// register across the `k` table rows. The caller checks every index.
#[inline(always)]
pub(crate) unsafe fn add_rows_indexed<V: Vf>(
    out: &mut [f32],
    w: usize,
    table: &[f32],
    rows: &[u32],
    per_row: usize,
) {
    add_rows_indexed_impl::<V, false>(out, w, table, rows, per_row, &[]);
}

/// [`add_rows_indexed`], then `max(· + bias[j], 0)` on each sum before it is stored (as
/// [`bias_relu`] would do afterwards; one pass over `out` instead of two).
#[inline(always)]
pub(crate) unsafe fn add_rows_indexed_bias_relu<V: Vf>(
    out: &mut [f32],
    w: usize,
    table: &[f32],
    rows: &[u32],
    per_row: usize,
    bias: &[f32],
) {
    add_rows_indexed_impl::<V, true>(out, w, table, rows, per_row, bias);
}

/// Vectors of columns [`add_rows_indexed_impl`] keeps in registers across a row's indices.
const ADD_ROWS_BLOCK: usize = 8;

#[inline(always)]
unsafe fn add_rows_indexed_impl<V: Vf, const BIAS_RELU: bool>(
    out: &mut [f32],
    w: usize,
    table: &[f32],
    rows: &[u32],
    per_row: usize,
    bias: &[f32],
) {
    if w == 0 {
        return;
    }
    let l = V::LANES;
    let (tp, bp) = (table.as_ptr(), bias.as_ptr());
    for (b, orow) in out.chunks_exact_mut(w).enumerate() {
        let idx = &rows[b * per_row..(b + 1) * per_row];
        let op = orow.as_mut_ptr();
        let mut c = 0;
        // (`bp` offset with wrapping_add: without BIAS_RELU the bias is empty and unread.)
        // ADD_ROWS_BLOCK vectors of columns at a time: each index is read and turned into an
        // address once per block rather than once per vector (the loads and additions were
        // a few instructions each behind that address arithmetic); then single vectors.
        while c + ADD_ROWS_BLOCK * l <= w {
            let bc = bp.wrapping_add(c);
            add_rows_block::<V, BIAS_RELU, ADD_ROWS_BLOCK>(op.add(c), tp.add(c), bc, idx, w);
            c += ADD_ROWS_BLOCK * l;
        }
        while c + l <= w {
            add_rows_block::<V, BIAS_RELU, 1>(op.add(c), tp.add(c), bp.wrapping_add(c), idx, w);
            c += l;
        }
        for c in c..w {
            let mut acc = *op.add(c);
            for &i in idx {
                acc += *tp.add(i as usize * w + c);
            }
            if BIAS_RELU {
                let s = acc + *bp.add(c);
                acc = if s > 0.0 { s } else { 0.0 };
            }
            *op.add(c) = acc;
        }
    }
}

/// `N` vectors of one output row from `op` on: each adds the table rows `idx` (rows `w` wide,
/// `tp` at the same column) in index order, then (`BIAS_RELU`) `max(· + bias, 0)` with the
/// bias from `bp` (read only then).
#[inline(always)]
unsafe fn add_rows_block<V: Vf, const BIAS_RELU: bool, const N: usize>(
    op: *mut f32,
    tp: *const f32,
    bp: *const f32,
    idx: &[u32],
    w: usize,
) {
    let (l, zero) = (V::LANES, V::splat(0.0));
    let mut acc: [V; N] = std::array::from_fn(|v| V::load(op.add(v * l)));
    for &i in idx {
        let p = tp.add(i as usize * w);
        for (v, a) in acc.iter_mut().enumerate() {
            *a = a.add(V::load(p.add(v * l)));
        }
    }
    for (v, a) in acc.into_iter().enumerate() {
        let a = if BIAS_RELU {
            let s = a.add(V::load(bp.add(v * l)));
            V::select_gt(s, zero, s, zero)
        } else {
            a
        };
        a.store(op.add(v * l));
    }
}

/// `table[rows[b·k + j]·w ..][..w] += src[b·src_stride + src_off ..][..w]` for every `b` and
/// `j < k = per_row`, in increasing `b` then `j` (each table element receives its terms in
/// that order, as [`crate::reference::scatter_add_rows_indexed`]); the source row's vectors
/// are loaded once per `b`. The caller checks the bounds, and that a row's `k` indices are
/// distinct (else the order per element would still be the reference's).
#[inline(always)]
pub(crate) unsafe fn scatter_add_rows_indexed<V: Vf>(
    table: &mut [f32],
    w: usize,
    src: &[f32],
    src_stride: usize,
    src_off: usize,
    rows: &[u32],
    per_row: usize,
) {
    if w == 0 || per_row == 0 {
        return;
    }
    let l = V::LANES;
    let tp = table.as_mut_ptr();
    let n_src = rows.len() / per_row;
    for (b, idx) in rows.chunks_exact(per_row).enumerate() {
        let sp = src.as_ptr().add(b * src_stride + src_off);
        // The source rows are a strided walk (an embedding's 16 columns of each row of a
        // `[B, 368]` gradient: a new 4 KiB page every few rows), which the hardware
        // prefetchers did not cover: three quarters of this loop's samples sat on the
        // source load (`perf annotate`, hmdn-pepnet at 4096).
        if b + SCATTER_PREFETCH_ROWS < n_src {
            let ahead = sp.add(SCATTER_PREFETCH_ROWS * src_stride);
            super::prefetch(ahead);
            super::prefetch(ahead.add(w - 1));
        }
        let mut c = 0;
        while c + l <= w {
            let v = V::load(sp.add(c));
            for &i in idx {
                let t = tp.add(i as usize * w + c);
                V::load(t).add(v).store(t);
            }
            c += l;
        }
        for c in c..w {
            let v = *sp.add(c);
            for &i in idx {
                *tp.add(i as usize * w + c) += v;
            }
        }
    }
}

/// Source rows ahead of the current one that [`scatter_add_rows_indexed`] prefetches.
const SCATTER_PREFETCH_ROWS: usize = 8;

/// `y[b, j] += bias[j]` over whole rows.
#[inline(always)]
pub(crate) unsafe fn bias_add<V: Vf>(y: &mut [f32], bias: &[f32]) {
    let n = bias.len();
    for row in y.chunks_exact_mut(n) {
        let (yp, bp) = (row.as_mut_ptr(), bias.as_ptr());
        ew!(n, [yp], [bp], {
            V::load(yp).add(V::load(bp)).store(yp);
        });
    }
}

/// `dpre[i] = y[i] > 0 ? dy[i] : 0`; all three slices have the same length.
#[inline(always)]
pub(crate) unsafe fn relu_backward<V: Vf>(dpre: &mut [f32], dy: &[f32], y: &[f32]) {
    let zero = V::splat(0.0);
    let (dp, gp, yp) = (dpre.as_mut_ptr(), dy.as_ptr(), y.as_ptr());
    ew!(dpre.len(), [dp], [gp, yp], {
        V::select_gt(V::load(yp), zero, V::load(gp), zero).store(dp);
    });
}

/// `y[i] = scale · sigmoid(x[i])`; equal lengths.
#[inline(always)]
pub(crate) unsafe fn scaled_sigmoid_forward<V: Vf>(y: &mut [f32], x: &[f32], scale: f32) {
    let s = V::splat(scale);
    let (yp, xp) = (y.as_mut_ptr(), x.as_ptr());
    ew!(y.len(), [yp], [xp], {
        s.mul(sigmoid(V::load(xp))).store(yp);
    });
}

/// `delta[b, j] = scale · sigmoid(u[b, j] + bias[j])` over whole rows of width `bias.len()`:
/// a GateNU's output layer (the bias add and the sigmoid in one pass).
#[inline(always)]
pub(crate) unsafe fn bias_scaled_sigmoid<V: Vf>(
    delta: &mut [f32],
    u: &[f32],
    bias: &[f32],
    scale: f32,
) {
    let (n, s) = (bias.len(), V::splat(scale));
    for (drow, urow) in delta.chunks_exact_mut(n).zip(u.chunks_exact(n)) {
        let (dp, up, bp) = (drow.as_mut_ptr(), urow.as_ptr(), bias.as_ptr());
        ew!(n, [dp], [up, bp], {
            s.mul(sigmoid(V::load(up).add(V::load(bp)))).store(dp);
        });
    }
}

/// [`bias_scaled_sigmoid`] that also writes `y = delta ⊙ x` (PEPNet's EPNet: the gate and the
/// input it scales in one pass).
#[inline(always)]
pub(crate) unsafe fn bias_scaled_sigmoid_mul<V: Vf>(
    delta: &mut [f32],
    y: &mut [f32],
    u: &[f32],
    bias: &[f32],
    x: &[f32],
    scale: f32,
) {
    let (n, s) = (bias.len(), V::splat(scale));
    let rows = delta.chunks_exact_mut(n).zip(y.chunks_exact_mut(n));
    for ((drow, yrow), (urow, xrow)) in rows.zip(u.chunks_exact(n).zip(x.chunks_exact(n))) {
        let (dp, yp) = (drow.as_mut_ptr(), yrow.as_mut_ptr());
        let (up, bp, xp) = (urow.as_ptr(), bias.as_ptr(), xrow.as_ptr());
        ew!(n, [dp, yp], [up, bp, xp], {
            let d = s.mul(sigmoid(V::load(up).add(V::load(bp))));
            d.store(dp);
            d.mul(V::load(xp)).store(yp);
        });
    }
}

/// `Some(1/s)` when dividing by `s` is exactly multiplying by `1/s`: `s` a power of two whose
/// reciprocal is a normal number (both then give the correctly rounded `x/s`, subnormal
/// results included). GateNU's γ = 2 is one; a multiply is several times cheaper than a divide.
#[inline(always)]
fn exact_reciprocal(s: f32) -> Option<f32> {
    let r = 1.0 / s;
    let pow2 = |v: f32| v.is_normal() && v.to_bits() & 0x007f_ffff == 0;
    (pow2(s) && pow2(r)).then_some(r)
}

/// `v / s`, as a multiply by `recip = 1/s` when [`exact_reciprocal`] found one (`RECIP`).
#[inline(always)]
unsafe fn div_by<V: Vf, const RECIP: bool>(v: V, s: V, recip: V) -> V {
    if RECIP {
        v.mul(recip)
    } else {
        v.div(s)
    }
}

/// Backward of `y = delta ⊙ x` with `delta = scale·sigmoid(u)`, both written:
/// `du[i] = dy[i]·x[i] · delta[i] · (1 − delta[i]/scale)` and `dx[i] = dy[i]·delta[i]`, in the
/// reference's operation order; equal lengths.
#[inline(always)]
pub(crate) unsafe fn scaled_sigmoid_mul_backward<V: Vf>(
    du: &mut [f32],
    dx: &mut [f32],
    dy: &[f32],
    x: &[f32],
    delta: &[f32],
    scale: f32,
) {
    match exact_reciprocal(scale) {
        Some(r) => sigmoid_mul_backward_impl::<V, true>(du, dx, dy, x, delta, scale, r),
        None => sigmoid_mul_backward_impl::<V, false>(du, dx, dy, x, delta, scale, 0.0),
    }
}

#[inline(always)]
unsafe fn sigmoid_mul_backward_impl<V: Vf, const RECIP: bool>(
    du: &mut [f32],
    dx: &mut [f32],
    dy: &[f32],
    x: &[f32],
    delta: &[f32],
    scale: f32,
    recip: f32,
) {
    let (one, s, r) = (V::splat(1.0), V::splat(scale), V::splat(recip));
    let (up, dxp) = (du.as_mut_ptr(), dx.as_mut_ptr());
    let (gp, xp, yp) = (dy.as_ptr(), x.as_ptr(), delta.as_ptr());
    ew!(du.len(), [up, dxp], [gp, xp, yp], {
        let (g, d) = (V::load(gp), V::load(yp));
        let q = div_by::<V, RECIP>(d, s, r);
        g.mul(V::load(xp)).mul(d).mul(one.sub(q)).store(up);
        g.mul(d).store(dxp);
    });
}

/// `dx[i] += dy[i] · y[i] · (1 − y[i]/scale)`, in the reference's operation order; equal lengths.
#[inline(always)]
pub(crate) unsafe fn scaled_sigmoid_backward<V: Vf>(
    dx: &mut [f32],
    dy: &[f32],
    y: &[f32],
    scale: f32,
) {
    match exact_reciprocal(scale) {
        Some(r) => sigmoid_backward_impl::<V, true>(dx, dy, y, scale, r),
        None => sigmoid_backward_impl::<V, false>(dx, dy, y, scale, 0.0),
    }
}

#[inline(always)]
unsafe fn sigmoid_backward_impl<V: Vf, const RECIP: bool>(
    dx: &mut [f32],
    dy: &[f32],
    y: &[f32],
    scale: f32,
    recip: f32,
) {
    let (one, s, r) = (V::splat(1.0), V::splat(scale), V::splat(recip));
    let (dp, gp, yp) = (dx.as_mut_ptr(), dy.as_ptr(), y.as_ptr());
    ew!(dx.len(), [dp], [gp, yp], {
        let v = V::load(yp);
        let t = V::load(gp).mul(v).mul(one.sub(div_by::<V, RECIP>(v, s, r)));
        V::load(dp).add(t).store(dp);
    });
}

/// `db[j] += Σ_b dy[b, c0 + j]` for the column range `c0 .. c0 + db.len()` of `[rows, n]` rows,
/// each column summed in row order (bit-identical to the reference's per-column order).
#[inline(always)]
pub(crate) unsafe fn bias_grad_cols<V: Vf>(db: &mut [f32], dy: &[f32], n: usize, c0: usize) {
    let l = V::LANES;
    let rows = dy.len() / n;
    let w = db.len();
    let dbp = db.as_mut_ptr();
    let base = dy.as_ptr().add(c0);
    let mut j = 0;
    // Four independent accumulators hide the add latency.
    while j + 4 * l <= w {
        let mut a = [V::splat(0.0); 4];
        for (q, acc) in a.iter_mut().enumerate() {
            *acc = V::load(dbp.add(j + q * l));
        }
        for b in 0..rows {
            let src = base.add(b * n + j);
            for (q, acc) in a.iter_mut().enumerate() {
                *acc = acc.add(V::load(src.add(q * l)));
            }
        }
        for (q, acc) in a.iter().enumerate() {
            acc.store(dbp.add(j + q * l));
        }
        j += 4 * l;
    }
    while j + l <= w {
        let mut acc = V::load(dbp.add(j));
        for b in 0..rows {
            acc = acc.add(V::load(base.add(b * n + j)));
        }
        acc.store(dbp.add(j));
        j += l;
    }
    for jj in j..w {
        let mut acc = *dbp.add(jj);
        for b in 0..rows {
            acc += *base.add(b * n + jj);
        }
        *dbp.add(jj) = acc;
    }
}

/// Row softmax of `[rows, n]` (`n >= 1`): max, `exp(x − max)`, sum, scale by `1/sum`.
#[inline(always)]
pub(crate) unsafe fn softmax_forward<V: Vf>(y: &mut [f32], x: &[f32], n: usize) {
    let l = V::LANES;
    for (yr, xr) in y.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
        let (yp, xp) = (yr.as_mut_ptr(), xr.as_ptr());
        let mut mv = V::splat(f32::NEG_INFINITY);
        let mut j = 0;
        while j + l <= n {
            mv = mv.max(V::load(xp.add(j)));
            j += l;
        }
        if j < n {
            mv = mv.max(load_part::<V>(xp.add(j), n - j, f32::NEG_INFINITY));
        }
        let mx = V::splat(reduce_max(mv));
        {
            let (yp, xp) = (yp, xp);
            ew!(n, [yp], [xp], {
                exp_nonpos(V::load(xp).sub(mx)).store(yp);
            });
        }
        // Sum the stored exponentials; the tail is loaded with zero padding.
        let mut sv = V::splat(0.0);
        let mut j = 0;
        while j + l <= n {
            sv = sv.add(V::load(yp.add(j)));
            j += l;
        }
        if j < n {
            sv = sv.add(load_part::<V>(yp.add(j), n - j, 0.0));
        }
        let inv = V::splat(1.0 / reduce_add(sv));
        let yp2 = yp;
        ew!(n, [yp2], [], {
            V::load(yp2).mul(inv).store(yp2);
        });
    }
}

/// `dx[b, :] += y ⊙ (dy − ⟨dy, y⟩)` over `[rows, n]` rows (`n >= 1`).
#[inline(always)]
pub(crate) unsafe fn softmax_backward<V: Vf>(dx: &mut [f32], dy: &[f32], y: &[f32], n: usize) {
    let l = V::LANES;
    for ((dr, gr), yr) in dx
        .chunks_exact_mut(n)
        .zip(dy.chunks_exact(n))
        .zip(y.chunks_exact(n))
    {
        let (dp, gp, yp) = (dr.as_mut_ptr(), gr.as_ptr(), yr.as_ptr());
        let mut acc = V::splat(0.0);
        let mut j = 0;
        while j + l <= n {
            acc = V::load(gp.add(j)).mul_add(V::load(yp.add(j)), acc);
            j += l;
        }
        if j < n {
            acc = load_part::<V>(gp.add(j), n - j, 0.0)
                .mul_add(load_part::<V>(yp.add(j), n - j, 0.0), acc);
        }
        let dot = V::splat(reduce_add(acc));
        ew!(n, [dp], [gp, yp], {
            let t = V::load(yp).mul(V::load(gp).sub(dot));
            V::load(dp).add(t).store(dp);
        });
    }
}

/// `dx[i] += scale · (sigmoid(x[i]) − y[i])`; equal lengths.
#[inline(always)]
pub(crate) unsafe fn bce_backward<V: Vf>(
    dx: &mut [f32],
    logits: &[f32],
    labels: &[f32],
    scale: f32,
) {
    let s = V::splat(scale);
    let (dp, xp, yp) = (dx.as_mut_ptr(), logits.as_ptr(), labels.as_ptr());
    ew!(dx.len(), [dp], [xp, yp], {
        let t = s.mul(sigmoid(V::load(xp)).sub(V::load(yp)));
        V::load(dp).add(t).store(dp);
    });
}

/// Adam constants in the parameter precision, derived once per step by the caller.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AdamConsts {
    /// `1 − β1`.
    pub b1c: f32,
    /// `β2`.
    pub b2: f32,
    /// `1 − β2`.
    pub b2c: f32,
    /// ε.
    pub eps: f32,
    /// Dense: `lr / bc1`; sparse: `lr·sqrt(bc2)/bc1`.
    pub step_size: f32,
    /// `sqrt(bc2)` (dense only).
    pub bc2_sqrt: f32,
    /// L2 coefficient added to sparse rows' gradients (0 = none).
    pub l2: f32,
}

/// Dense Adam in `reference::adam_step`'s exact operation order; equal lengths.
#[inline(always)]
pub(crate) unsafe fn adam<V: Vf>(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    h: &AdamConsts,
) {
    let (b1c, b2, b2c) = (V::splat(h.b1c), V::splat(h.b2), V::splat(h.b2c));
    let (eps, ss, bc2s) = (V::splat(h.eps), V::splat(h.step_size), V::splat(h.bc2_sqrt));
    let (pp, mp, vp, gp) = (p.as_mut_ptr(), m.as_mut_ptr(), v.as_mut_ptr(), g.as_ptr());
    ew!(p.len(), [pp, mp, vp], [gp], {
        let gi = V::load(gp);
        let mi = V::load(mp);
        let mi = flush_subnormal(mi.add(b1c.mul(gi.sub(mi))));
        let vi = flush_subnormal(b2.mul(V::load(vp)).add(b2c.mul(gi).mul(gi)));
        let denom = vi.sqrt().div(bc2s).add(eps);
        V::load(pp).sub(ss.mul(mi).div(denom)).store(pp);
        mi.store(mp);
        vi.store(vp);
    });
}

/// `x`, or +0 in the lanes where `x` is subnormal, as `reference::flush_subnormal`.
#[inline(always)]
unsafe fn flush_subnormal<V: Vf>(x: V) -> V {
    // -|x| > -MIN_POSITIVE ⇔ |x| < MIN_POSITIVE (false for NaN, which stays).
    V::select_gt(x.neg_abs(), V::splat(-f32::MIN_POSITIVE), V::splat(0.0), x)
}

/// SparseAdam on one contiguous run of parameters (a table row), in
/// `reference::lazy_adam_rows`'s exact operation order; equal lengths.
#[inline(always)]
pub(crate) unsafe fn sparse_adam<V: Vf>(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    h: &AdamConsts,
) {
    let (b1c, b2c, eps, ss, l2) = (
        V::splat(h.b1c),
        V::splat(h.b2c),
        V::splat(h.eps),
        V::splat(h.step_size),
        V::splat(h.l2),
    );
    let use_l2 = h.l2 != 0.0;
    let (pp, mp, vp, gp) = (p.as_mut_ptr(), m.as_mut_ptr(), v.as_mut_ptr(), g.as_ptr());
    ew!(p.len(), [pp, mp, vp], [gp], {
        let pi = V::load(pp);
        let mut gi = V::load(gp);
        if use_l2 {
            gi = gi.add(l2.mul(pi));
        }
        let mi = V::load(mp);
        let mi = flush_subnormal(mi.add(b1c.mul(gi.sub(mi))));
        let vi = V::load(vp);
        let vi = flush_subnormal(vi.add(b2c.mul(gi.mul(gi).sub(vi))));
        pi.sub(ss.mul(mi).div(vi.sqrt().add(eps))).store(pp);
        mi.store(mp);
        vi.store(vp);
    });
}

/// `out[k] = Σ_p mat[k, p]²` over `[out.len(), z]` rows (`z >= 1`), lane-parallel sums.
#[inline(always)]
pub(crate) unsafe fn sq_norms<V: Vf>(out: &mut [f32], mat: &[f32], z: usize) {
    let l = V::LANES;
    for (o, row) in out.iter_mut().zip(mat.chunks_exact(z)) {
        let rp = row.as_ptr();
        let mut acc = V::splat(0.0);
        let mut j = 0;
        while j + l <= z {
            let x = V::load(rp.add(j));
            acc = x.mul_add(x, acc);
            j += l;
        }
        if j < z {
            let x = load_part::<V>(rp.add(j), z - j, 0.0);
            acc = x.mul_add(x, acc);
        }
        *o = reduce_add(acc);
    }
}

/// Most rows [`argmin_rows`] takes per call (its per-lane best state lives on the stack).
pub(crate) const ARGMIN_ROWS: usize = 256;
/// Largest code width [`argmin_rows`] takes (its packed code block lives on the stack).
pub(crate) const ARGMIN_ZMAX: usize = 512;

/// For each of `codes.len() <= ARGMIN_ROWS` rows of `r` (`[rows, z]`, `1 <= z <= ARGMIN_ZMAX`)
/// the index of the code minimising `norms[k] − 2⟨r, C_k⟩`, ties to the lowest index.
///
/// Blocks of `2·LANES` codes are packed transposed (`[z, 2·LANES]`) on the stack; `ARGMIN_R`
/// rows at a time accumulate their dots against the block in registers (one broadcast per row
/// and step, one FMA per vector). Each row keeps a per-lane running best (distance, index)
/// updated with a strict `<`: lane `l` sees codes `l, l+LANES, …` in increasing order, so it
/// keeps the lowest index among its minima; the final lane reduction picks the smallest
/// distance and, among equal ones, the smallest index. Padding codes get distance +inf and are
/// never chosen.
#[inline(always)]
pub(crate) unsafe fn argmin_rows<V: Vf>(
    codes: &mut [u32],
    r: &[f32],
    codebook: &[f32],
    norms: &[f32],
    z: usize,
) {
    match V::ARGMIN_R {
        8 => argmin_impl::<V, 8>(codes, r, codebook, norms, z),
        _ => argmin_impl::<V, 4>(codes, r, codebook, norms, z),
    }
}

#[inline(always)]
unsafe fn argmin_impl<V: Vf, const R: usize>(
    codes: &mut [u32],
    r: &[f32],
    codebook: &[f32],
    norms: &[f32],
    z: usize,
) {
    let l = V::LANES;
    let cw = 2 * l;
    let rows = codes.len();
    let k = norms.len();
    debug_assert!(rows <= ARGMIN_ROWS && (1..=ARGMIN_ZMAX).contains(&z));
    debug_assert!(r.len() >= rows * z && codebook.len() >= k * z);
    let mut ct = MaybeUninit::<[f32; ARGMIN_ZMAX * 2 * MAX_LANES]>::uninit();
    let ct = ct.as_mut_ptr() as *mut f32;
    let mut best_d = MaybeUninit::<[f32; ARGMIN_ROWS * MAX_LANES]>::uninit();
    let best_d = best_d.as_mut_ptr() as *mut f32;
    let mut best_i = MaybeUninit::<[f32; ARGMIN_ROWS * MAX_LANES]>::uninit();
    let best_i = best_i.as_mut_ptr() as *mut f32;
    for q in 0..rows * l {
        *best_d.add(q) = f32::INFINITY;
        *best_i.add(q) = 0.0;
    }
    let mut nb = [0.0f32; 2 * MAX_LANES];
    let mut iota = [0.0f32; 2 * MAX_LANES];
    for (j, x) in iota.iter_mut().enumerate() {
        *x = j as f32;
    }
    let (cbp, rp0) = (codebook.as_ptr(), r.as_ptr());
    let mut c0 = 0;
    while c0 < k {
        let w = (k - c0).min(cw);
        for j in 0..cw {
            if j < w {
                let src = cbp.add((c0 + j) * z);
                for p in 0..z {
                    *ct.add(p * cw + j) = *src.add(p);
                }
                nb[j] = norms[c0 + j];
            } else {
                for p in 0..z {
                    *ct.add(p * cw + j) = 0.0;
                }
                nb[j] = f32::INFINITY;
            }
        }
        let (n0, n1) = (V::load(nb.as_ptr()), V::load(nb.as_ptr().add(l)));
        let base = V::splat(c0 as f32);
        let (i0, i1) = (
            base.add(V::load(iota.as_ptr())),
            base.add(V::load(iota.as_ptr().add(l))),
        );
        let mut g = 0;
        while g < rows {
            let valid = (rows - g).min(R);
            let mut rp = [rp0; R];
            for (i, p) in rp.iter_mut().enumerate() {
                *p = rp0.add((g + i.min(valid - 1)) * z);
            }
            let mut acc = [[V::splat(0.0); 2]; R];
            for p in 0..z {
                let b0 = V::load(ct.add(p * cw));
                let b1 = V::load(ct.add(p * cw + l));
                for i in 0..R {
                    let a = V::splat(*rp[i].add(p));
                    acc[i][0] = a.mul_add(b0, acc[i][0]);
                    acc[i][1] = a.mul_add(b1, acc[i][1]);
                }
            }
            for (i, a) in acc.iter().enumerate().take(valid) {
                let bd = best_d.add((g + i) * l);
                let bi = best_i.add((g + i) * l);
                let (mut d_best, mut i_best) = (V::load(bd), V::load(bi));
                // Same form as the reference: norm − (dot + dot).
                let d0 = n0.sub(a[0].add(a[0]));
                i_best = V::select_lt(d0, d_best, i0, i_best);
                d_best = V::select_lt(d0, d_best, d0, d_best);
                let d1 = n1.sub(a[1].add(a[1]));
                i_best = V::select_lt(d1, d_best, i1, i_best);
                d_best = V::select_lt(d1, d_best, d1, d_best);
                d_best.store(bd);
                i_best.store(bi);
            }
            g += R;
        }
        c0 += cw;
    }
    for (row, c) in codes.iter_mut().enumerate() {
        *c = lane_best(best_d.add(row * l), best_i.add(row * l), l);
    }
}

/// Reduces per-lane (distance, index) bests: smallest distance, ties to the smallest index.
#[inline(always)]
unsafe fn lane_best(d: *const f32, i: *const f32, l: usize) -> u32 {
    let (mut bd, mut bi) = (*d, *i);
    for q in 1..l {
        let (dq, iq) = (*d.add(q), *i.add(q));
        if dq < bd || (dq == bd && iq < bi) {
            bd = dq;
            bi = iq;
        }
    }
    bi as u32
}

/// Argmin over precomputed dots: for each row of `dots` (`[codes.len(), K]`,
/// `K = norms.len() >= 1`) the index minimising `norms[k] − (dot + dot)`, ties lowest.
#[inline(always)]
pub(crate) unsafe fn argmin_scan<V: Vf>(codes: &mut [u32], dots: &[f32], norms: &[f32]) {
    let l = V::LANES;
    let k = norms.len();
    let mut iota = [0.0f32; MAX_LANES];
    for (j, x) in iota.iter_mut().enumerate() {
        *x = j as f32;
    }
    let iota = V::load(iota.as_ptr());
    let np = norms.as_ptr();
    for (c, row) in codes.iter_mut().zip(dots.chunks_exact(k)) {
        let dp = row.as_ptr();
        let (mut bd, mut bi) = (V::splat(f32::INFINITY), V::splat(0.0));
        let mut j = 0;
        while j < k {
            let (nv, dv) = if j + l <= k {
                (V::load(np.add(j)), V::load(dp.add(j)))
            } else {
                (
                    load_part::<V>(np.add(j), k - j, f32::INFINITY),
                    load_part::<V>(dp.add(j), k - j, 0.0),
                )
            };
            let d = nv.sub(dv.add(dv));
            let idx = V::splat(j as f32).add(iota);
            bi = V::select_lt(d, bd, idx, bi);
            bd = V::select_lt(d, bd, d, bd);
            j += l;
        }
        let mut bufd = [0.0f32; MAX_LANES];
        let mut bufi = [0.0f32; MAX_LANES];
        bd.store(bufd.as_mut_ptr());
        bi.store(bufi.as_mut_ptr());
        *c = lane_best(bufd.as_ptr(), bufi.as_ptr(), l);
    }
}

/// Depth of one packed k-block (`kc <= KC`). A k-block's B panel (`kc` rows of `NR` = 32
/// floats, 24 KiB at 192) and the A panel streaming past it must share the 48 KiB L1: at 256
/// the weight gradient (A = dYᵀ read at its row stride) ran at 63–80 GFLOP/s instead of
/// 124–137 at 4096 × 368 × 128 on one core, and 135 instead of 147 at a 256-row chunk's
/// shape. The experts' forward and input-gradient GEMMs are unchanged (their depths 368, 128
/// and 64 are cut the same way or not at all).
pub(crate) const KC: usize = 192;
/// Row stride of a row-major packed A panel; padded past `KC` so that the `MR` rows of a panel
/// do not all map to the same L1 sets.
pub(crate) const A_STRIDE: usize = KC + 16;
/// Register tile, AVX-512: 12 rows × 32 columns (24 zmm accumulators).
pub(crate) const MR_512: usize = 12;
/// See [`MR_512`].
pub(crate) const NR_512: usize = 32;
/// Register tile, AVX2: 6 rows × 16 columns (12 ymm accumulators).
pub(crate) const MR_256: usize = 6;
/// See [`MR_256`].
pub(crate) const NR_256: usize = 16;
/// Register tile, portable: 4 rows × 8 columns.
pub(crate) const MR_P: usize = 4;
/// See [`MR_P`].
pub(crate) const NR_P: usize = 8;

/// One block of work for the GEMM micro-kernel: `C[rows, cols] (+)= alpha · Ã · B̃` for one
/// k-block of depth `kc`. The operands are packed by `gemm.rs` or, where the stored layout
/// already fits, read in place:
/// - A, `rows` rows in panels of `MR` rows, panel `q` at `ap + q·a_pan`. Row-major
///   (`a_pmajor == false`): element (i, p) at `i·a_ps + p` (`a_ps = A_STRIDE` when packed, the
///   stored row length when read in place). P-major: element (i, p) at `p·a_ps + i`
///   (`a_ps = MR` when packed, the stored row length when read in place).
/// - B, `cols` columns in panels of `NR` columns, panel `q` at `bp + q·b_pan`, element (p, j)
///   at `p·ldb + j`. Every panel must have `NR` readable columns (the last one is packed when
///   the stored matrix has fewer).
/// - C, row-major with leading dimension `ldc`. On the first k-block (`first`),
///   `C = alpha·acc + beta·C` (C not read when `beta == 0`); on later ones `C = C + alpha·acc`.
///
/// Every element of C is one FMA chain over p in increasing order per k-block, whatever the
/// block's position, so results do not depend on how C is tiled across threads.
pub(crate) struct GemmBlock {
    pub kc: usize,
    pub ap: *const f32,
    pub a_pmajor: bool,
    pub a_pan: usize,
    pub a_ps: usize,
    pub bp: *const f32,
    pub b_pan: usize,
    pub ldb: usize,
    pub c: *mut f32,
    pub ldc: usize,
    pub rows: usize,
    pub cols: usize,
    pub alpha: f32,
    pub beta: f32,
    pub first: bool,
    /// Applied to each element of C as it is stored, by [`gemm_block_epi`] (the caller gives
    /// one only with the last k-block, and runs that entry for it).
    pub epi: Epi,
}

/// Which elementwise function the GEMM micro-kernel applies as it stores C (`gemm::Epilogue`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EpiKind {
    /// C as computed.
    None,
    /// `max(c + bias[j], 0)`, as [`bias_relu`].
    BiasRelu,
    /// `scale·σ(c + bias[j])`, as [`bias_scaled_sigmoid`].
    BiasScaledSigmoid,
    /// That, and `y = that ⊙ x` (x, y laid out as C), as [`bias_scaled_sigmoid_mul`].
    BiasScaledSigmoidMul,
    /// Only `y` of [`EpiKind::BiasScaledSigmoidMul`]: C is not written on the last k-block.
    ScaledBySigmoid,
}

/// A [`GemmBlock`]'s epilogue: the function and its operands, each pointer at the block's
/// first column (`bias`) or first element (`x`, `y`, with C's leading dimension).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Epi {
    pub kind: EpiKind,
    pub bias: *const f32,
    pub scale: f32,
    pub x: *const f32,
    pub y: *mut f32,
}

// SAFETY: an `Epi` is only built by `gemm::gemm_epilogue` from slices that outlive the GEMM
// call; its tasks read `bias` and `x` and write disjoint tiles of `y` (those of their C tiles).
unsafe impl Send for Epi {}
// SAFETY: see above.
unsafe impl Sync for Epi {}

impl Epi {
    /// No epilogue.
    pub const NONE: Epi = Epi {
        kind: EpiKind::None,
        bias: ptr::null(),
        scale: 0.0,
        x: ptr::null(),
        y: ptr::null_mut(),
    };

    /// The same epilogue for the part of C starting `rows` rows and `cols` columns further
    /// (leading dimension `ld`).
    pub fn at(&self, rows: usize, cols: usize, ld: usize) -> Epi {
        if self.kind == EpiKind::None {
            return *self;
        }
        let off = rows * ld + cols;
        Epi {
            bias: self.bias.wrapping_add(cols),
            x: self.x.wrapping_add(off),
            y: self.y.wrapping_add(off),
            ..*self
        }
    }
}

/// One vector of the epilogue `K` (an [`EpiKind`] as `u8`) on `s`: the bias at `bias`, and
/// for the `Mul` kind `x` read and `y` written at `x`, `y`. The same operations, in the same
/// order, as the separate passes [`bias_relu`], [`bias_scaled_sigmoid`] and
/// [`bias_scaled_sigmoid_mul`], so the same bits.
#[inline(always)]
unsafe fn epi_vec<V: Vf, const K: u8>(
    s: V,
    bias: *const f32,
    scale: f32,
    x: *const f32,
    y: *mut f32,
) -> V {
    if K == EpiKind::BiasRelu as u8 {
        let z = V::splat(0.0);
        let r = s.add(V::load(bias));
        V::select_gt(r, z, r, z)
    } else {
        let d = V::splat(scale).mul(sigmoid(s.add(V::load(bias))));
        if K >= EpiKind::BiasScaledSigmoidMul as u8 {
            d.mul(V::load(x)).store(y);
        }
        d
    }
}

/// Stores a tile's final values `vals` (`rows × cols` of an `MR × NV·LANES` tile, row stride
/// `NV·LANES`) through the epilogue `K` into C at `c` (leading dimension `ldc`), the tile's
/// epilogue operands at `e` (already offset to the tile).
#[inline(always)]
unsafe fn store_epi<V: Vf, const MR: usize, const NV: usize, const K: u8>(
    vals: *const f32,
    c: *mut f32,
    ldc: usize,
    e: &Epi,
    rows: usize,
    cols: usize,
) {
    let l = V::LANES;
    let nr = NV * l;
    if rows == MR && cols == nr {
        if K != EpiKind::BiasRelu as u8 {
            return store_sigmoid_tile::<V, MR, NV, K>(vals as *mut f32, c, ldc, e);
        }
        for i in 0..MR {
            for v in 0..NV {
                let off = i * ldc + v * l;
                let s = V::load(vals.add(i * nr + v * l));
                let d = epi_vec::<V, K>(s, e.bias.add(v * l), e.scale, e.x.add(off), e.y.add(off));
                if K != EpiKind::ScaledBySigmoid as u8 {
                    d.store(c.add(off));
                }
            }
        }
        return;
    }
    // A partial tile: each vector through padded copies (bias, x, y), then its valid lanes
    // stored; the padding lanes compute on zeros and are dropped.
    for i in 0..rows {
        let mut v = 0;
        while v * l < cols {
            let w = (cols - v * l).min(l);
            let off = i * ldc + v * l;
            let mut bias = [0.0f32; MAX_LANES];
            ptr::copy_nonoverlapping(e.bias.add(v * l), bias.as_mut_ptr(), w);
            let (mut x, mut y) = ([0.0f32; MAX_LANES], [0.0f32; MAX_LANES]);
            let mul = K >= EpiKind::BiasScaledSigmoidMul as u8;
            if mul {
                ptr::copy_nonoverlapping(e.x.add(off), x.as_mut_ptr(), w);
            }
            let s = V::load(vals.add(i * nr + v * l));
            let d = epi_vec::<V, K>(s, bias.as_ptr(), e.scale, x.as_ptr(), y.as_mut_ptr());
            if K != EpiKind::ScaledBySigmoid as u8 {
                let mut out = [0.0f32; MAX_LANES];
                d.store(out.as_mut_ptr());
                ptr::copy_nonoverlapping(out.as_ptr(), c.add(off), w);
            }
            if mul {
                ptr::copy_nonoverlapping(y.as_ptr(), e.y.add(off), w);
            }
            v += 1;
        }
    }
}

/// [`store_epi`] of a whole tile for the sigmoid kinds: the same operations as [`epi_vec`]
/// (so the same bits), `EPI_GROUP` vectors at a time through [`exp_nonpos_group`]. Each
/// pre-activation is written back to `vals` and read again for the sign test at the end, so
/// that it does not hold a register through the exponential.
#[inline(always)]
unsafe fn store_sigmoid_tile<V: Vf, const MR: usize, const NV: usize, const K: u8>(
    vals: *mut f32,
    c: *mut f32,
    ldc: usize,
    e: &Epi,
) {
    const G: usize = EPI_GROUP;
    let (l, total) = (V::LANES, MR * NV);
    let (one, zero) = (V::splat(1.0), V::splat(0.0));
    // Tile vector `t` is row t / NV, vector t % NV; `vals` has row stride NV·LANES.
    let pos = |t: usize| ((t / NV) * ldc + (t % NV) * l, t * l, (t % NV) * l);
    let mut t0 = 0;
    while t0 < total {
        let g_n = G.min(total - t0);
        let mut a = [zero; G];
        for (g, ag) in a.iter_mut().enumerate().take(g_n) {
            let (_, vo, bo) = pos(t0 + g);
            let u = V::load(vals.add(vo)).add(V::load(e.bias.add(bo)));
            u.store(vals.add(vo));
            *ag = u.neg_abs();
        }
        let ex = exp_nonpos_group(a);
        for (g, &eg) in ex.iter().enumerate().take(g_n) {
            let (off, vo, _) = pos(t0 + g);
            let num = V::select_ge(V::load(vals.add(vo)), zero, one, eg);
            let d = V::splat(e.scale).mul(num.div(one.add(eg)));
            if K >= EpiKind::BiasScaledSigmoidMul as u8 {
                d.mul(V::load(e.x.add(off))).store(e.y.add(off));
            }
            if K != EpiKind::ScaledBySigmoid as u8 {
                d.store(c.add(off));
            }
        }
        t0 += G;
    }
}

/// Vectors [`store_sigmoid_tile`] runs side by side: enough independent chains to keep the
/// FMA ports busy, few enough to keep their values in registers. Since the scaling by `2^n`
/// tests once per group ([`Vf::mul_pow2_group`]), 6 is the fastest on AVX2 (`epi_cost`,
/// 64 → 368 on 256 rows, best of five interleaved runs: 175 µs with the sigmoid against 179
/// at 4, 183 at 8, 182 at 12, and 199 with 8 and a test per vector; the plain GEMM 129), and
/// it divides the 12 vectors of the 6 × 16 tile.
const EPI_GROUP: usize = 6;

/// Runs a [`GemmBlock`] with this vector type's register tile.
#[inline(always)]
pub(crate) unsafe fn gemm_block<V: Vf>(t: &GemmBlock) {
    gemm_block_on_tile::<V, false>(t);
}

/// [`gemm_block`] for a last k-block with an epilogue (`t.epi.kind` not `None`): a
/// separate entry, so that the plain one's code stays as it was (a per-tile branch and the
/// epilogue's code inside it slowed the small plain GEMMs by 3–4%).
#[inline(always)]
pub(crate) unsafe fn gemm_block_epi<V: Vf>(t: &GemmBlock) {
    gemm_block_on_tile::<V, true>(t);
}

/// [`gemm_block_impl`] on this vector type's register tile (`GEMM_MR × GEMM_NV` vectors):
/// the one list of tile shapes both entries use.
#[inline(always)]
unsafe fn gemm_block_on_tile<V: Vf, const EPI: bool>(t: &GemmBlock) {
    match (V::GEMM_MR, V::GEMM_NV) {
        (12, 2) => gemm_block_impl::<V, 12, 2, EPI>(t),
        (6, 2) => gemm_block_impl::<V, 6, 2, EPI>(t),
        _ => gemm_block_impl::<V, 4, 1, EPI>(t),
    }
}

#[inline(always)]
unsafe fn gemm_block_impl<V: Vf, const MR: usize, const NV: usize, const EPI: bool>(t: &GemmBlock) {
    let nr = NV * V::LANES;
    let mut q = 0;
    while q * nr < t.cols {
        let bq = t.bp.add(q * t.b_pan);
        let cw = (t.cols - q * nr).min(nr);
        let mut pa = 0;
        while pa * MR < t.rows {
            let rh = (t.rows - pa * MR).min(MR);
            let cp = t.c.add(pa * MR * t.ldc + q * nr);
            let ap = t.ap.add(pa * t.a_pan);
            let e = if EPI {
                t.epi.at(pa * MR, q * nr, t.ldc)
            } else {
                Epi::NONE
            };
            // A partial panel (the last rows of C, or its last columns) runs on a smaller
            // register tile, so that no multiply-adds are spent on rows or vectors outside C
            // (e.g. C with 64 rows: 5 full 12-row panels and one of 4). Every element's FMA
            // chain over k is the same whatever the tile, so the results are too.
            let rows = if rh <= 4 && MR > 4 {
                4
            } else if rh <= 8 && MR > 8 {
                8
            } else {
                MR
            };
            match (rows, cw <= V::LANES && NV > 1) {
                (4, false) => panel::<V, 4, NV, EPI>(t, ap, bq, cp, &e, rh, cw),
                (4, true) => panel::<V, 4, 1, EPI>(t, ap, bq, cp, &e, rh, cw),
                (8, false) => panel::<V, 8, NV, EPI>(t, ap, bq, cp, &e, rh, cw),
                (8, true) => panel::<V, 8, 1, EPI>(t, ap, bq, cp, &e, rh, cw),
                (_, false) => panel::<V, MR, NV, EPI>(t, ap, bq, cp, &e, rh, cw),
                (_, true) => panel::<V, MR, 1, EPI>(t, ap, bq, cp, &e, rh, cw),
            }
            pa += 1;
        }
        q += 1;
    }
}

/// One panel of C (`rows <= MR`, `cols <= NV·LANES`) on an `MR × NV·LANES` register tile, A
/// read in the block's layout.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn panel<V: Vf, const MR: usize, const NV: usize, const EPI: bool>(
    t: &GemmBlock,
    ap: *const f32,
    bq: *const f32,
    cp: *mut f32,
    e: &Epi,
    rh: usize,
    cw: usize,
) {
    if t.a_pmajor {
        tile::<V, MR, NV, EPI, false>(t, ap, 1, t.a_ps, bq, cp, e, rh, cw);
    } else if t.a_ps == A_STRIDE {
        // Packed: the constant stride lets the compiler fold the row offsets.
        tile::<V, MR, NV, EPI, false>(t, ap, A_STRIDE, 1, bq, cp, e, rh, cw);
    } else {
        tile::<V, MR, NV, EPI, true>(t, ap, t.a_ps, 1, bq, cp, e, rh, cw);
    }
}

/// One `MR × NV·LANES` register tile; A element (i, p) at `ap[i·si + p·sp]`, B element (p, j)
/// at `bp[p·ldb + j]`. `WRITTEN`: run a 6 × 2-vector tile's k loop written out where the
/// path has one ([`Vf::kloop_6x2`]); the caller sets it for row-major A read in place at its
/// own stride only. (For p-major A, a weight gradient's `dYᵀ`, the written-out loop measured
/// slower than the compiled one in training, 0.91–0.98 by binary A/B, twenty-first session;
/// a packed partial panel is rare.)
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<V: Vf, const MR: usize, const NV: usize, const EPI: bool, const WRITTEN: bool>(
    t: &GemmBlock,
    ap: *const f32,
    si: usize,
    sp: usize,
    bp: *const f32,
    c: *mut f32,
    e: &Epi,
    rows: usize,
    cols: usize,
) {
    let l = V::LANES;
    let mut acc = [[V::splat(0.0); NV]; MR];
    // A 6 × 2-vector tile: the path's written-out k loop, if it has one (AVX2), the same
    // FMAs in the same order.
    if WRITTEN && MR == 6 && NV == 2 {
        // SAFETY: MR == 6 and NV == 2, so the two array types are the same.
        let acc6 = &mut *(&mut acc as *mut [[V; NV]; MR] as *mut [[V; 2]; 6]);
        if V::kloop_6x2(acc6, t.kc, ap, si, sp, bp, t.ldb) {
            return finish_tile::<V, MR, NV, EPI>(t, acc, c, e, rows, cols);
        }
    }
    let (mut a, mut b) = (ap, bp);
    for _ in 0..t.kc {
        let mut bv = [V::splat(0.0); NV];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = V::load(b.add(v * l));
        }
        for (i, row) in acc.iter_mut().enumerate() {
            let ai = V::splat(*a.add(i * si));
            for (x, bvv) in row.iter_mut().zip(bv.iter()) {
                *x = ai.mul_add(*bvv, *x);
            }
        }
        a = a.add(sp);
        b = b.add(t.ldb);
    }
    finish_tile::<V, MR, NV, EPI>(t, acc, c, e, rows, cols)
}

/// Stores a finished register tile `acc` into C (`alpha`, `beta`, accumulation over k-blocks,
/// partial tiles) and applies the epilogue: the part of [`tile`] after its k loop.
#[inline(always)]
unsafe fn finish_tile<V: Vf, const MR: usize, const NV: usize, const EPI: bool>(
    t: &GemmBlock,
    acc: [[V; NV]; MR],
    c: *mut f32,
    e: &Epi,
    rows: usize,
    cols: usize,
) {
    let l = V::LANES;
    let nr = NV * l;
    let (ldc, alpha, beta) = (t.ldc, t.alpha, t.beta);
    if EPI {
        // C's final values into a buffer (the same operations as the stores below), then
        // through the epilogue into C.
        let mut buf = MaybeUninit::<[f32; 12 * 32]>::uninit();
        let buf = buf.as_mut_ptr() as *mut f32;
        let (va, vb) = (V::splat(alpha), V::splat(beta));
        for (i, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                let (bp, cp) = (buf.add(i * nr + v * l), c.add(i * ldc + v * l));
                let s = x.mul(va);
                let full = i < rows && (v + 1) * l <= cols;
                let out = if t.first && beta == 0.0 {
                    s
                } else if full {
                    if !t.first {
                        V::load(cp).add(s)
                    } else {
                        s.add(vb.mul(V::load(cp)))
                    }
                } else {
                    // A partial tile: C read lane by lane, only inside C (it may end there).
                    s.store(bp);
                    if i < rows {
                        for j in 0..l.min(cols.saturating_sub(v * l)) {
                            let (o, cv) = (bp.add(j), *cp.add(j));
                            *o = if !t.first { cv + *o } else { *o + beta * cv };
                        }
                    }
                    V::load(bp)
                };
                out.store(bp);
            }
        }
        match e.kind {
            EpiKind::BiasRelu => {
                store_epi::<V, MR, NV, { EpiKind::BiasRelu as u8 }>(buf, c, ldc, e, rows, cols)
            }
            EpiKind::BiasScaledSigmoid => {
                store_epi::<V, MR, NV, { EpiKind::BiasScaledSigmoid as u8 }>(
                    buf, c, ldc, e, rows, cols,
                )
            }
            EpiKind::BiasScaledSigmoidMul => {
                store_epi::<V, MR, NV, { EpiKind::BiasScaledSigmoidMul as u8 }>(
                    buf, c, ldc, e, rows, cols,
                )
            }
            _ => store_epi::<V, MR, NV, { EpiKind::ScaledBySigmoid as u8 }>(
                buf, c, ldc, e, rows, cols,
            ),
        }
        return;
    }
    if rows == MR && cols == nr {
        let (va, vb) = (V::splat(alpha), V::splat(beta));
        for (i, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                let cp = c.add(i * ldc + v * l);
                let s = x.mul(va);
                let out = if !t.first {
                    V::load(cp).add(s)
                } else if beta == 0.0 {
                    s
                } else {
                    s.add(vb.mul(V::load(cp)))
                };
                out.store(cp);
            }
        }
    } else {
        let mut buf = MaybeUninit::<[f32; 12 * 32]>::uninit();
        let buf = buf.as_mut_ptr() as *mut f32;
        for (i, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                x.store(buf.add(i * nr + v * l));
            }
        }
        for i in 0..rows {
            for j in 0..cols {
                let cp = c.add(i * ldc + j);
                let s = *buf.add(i * nr + j) * alpha;
                *cp = if !t.first {
                    *cp + s
                } else if beta == 0.0 {
                    s
                } else {
                    s + beta * *cp
                };
            }
        }
    }
}

/// Independent accumulators in [`fma_loop`]: more than FMA latency × FMA ports (4 × 2), so
/// the loop is throughput-bound.
pub(crate) const FMA_ACCS: usize = 12;

/// `iters` rounds of [`FMA_ACCS`] independent FMAs on registers (no memory traffic).
#[inline(always)]
pub(crate) unsafe fn fma_loop<V: Vf>(iters: usize) -> f32 {
    let mut acc = [V::splat(0.0); FMA_ACCS];
    for (i, a) in acc.iter_mut().enumerate() {
        *a = V::splat(i as f32 * 1e-3);
    }
    let (x, y) = (V::splat(0.999_999), V::splat(1e-7));
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = a.mul_add(x, y);
        }
    }
    let mut s = V::splat(0.0);
    for a in acc {
        s = s.add(a);
    }
    reduce_add(s)
}
