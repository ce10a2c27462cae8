//! The one place with `unsafe` around matrix multiply: a checked, row-major GEMM.
//!
//! - `f32` runs our own packed GEMM: operands are packed into buffers from two global pools
//!   (see "Packing buffers" below), and a register-tiled micro-kernel per SIMD path
//!   (AVX-512 12×32, AVX2 6×16, portable 4×8; see `simd/kern.rs`) does the multiply-adds.
//!   With A row-major in place (forwards, input gradients), AVX2's 6×16 tile runs its k
//!   loop as written-out assembly (`simd/x86.rs`, `kloop_6x16`): compiled from the generic
//!   loop, LLVM spent up to 34 instructions per 12 FMAs (stride reloads from the stack,
//!   accumulator shuffles); the same FMAs in the same order, so the same bits
//!   (`gemm_is_one_fma_chain_per_k_block`).
//!   A partial panel at C's edge (e.g. the last 4 of 64 rows) runs on a smaller tile (4 or 8
//!   rows, one vector of columns), so no multiply-adds go to rows or columns outside C.
//!   `matrixmultiply` 0.3 is not used for f32 because it allocates its packing buffer on every
//!   call (`gemm_loop` → `make_packing_buffer` → `Alloc::new`), and the workspace builds it
//!   without its `avx512` feature.
//! - `f64` (gradient checks only) runs `matrixmultiply::dgemm` via [`gemm_matrixmultiply`].
//! - [`gemm_epilogue`]: a forward layer's bias and activation (ReLU, GateNU's `γ·σ`, and the
//!   product with the input a gate scales) applied by the micro-kernel to each register tile
//!   as it stores it, with the bits of the GEMM followed by the activation's own pass.
//!
//! Blocking: `k` is cut into equal blocks of depth `kc <= KC` (a function of `k` only); C is
//! tiled into row × column tasks (whole-width row blocks of up to `MC` rows when there are
//! enough, else column blocks too). Per k-block a task runs the micro-kernel over its panels.
//! A is always read in place — p-major when `ta == T` (the `dYᵀ` of a weight gradient),
//! row-major with its stored row stride when `ta == N` — and so is `op(B)` when `tb == N`
//! (input and weight gradients); only a last partial panel is packed, so the kernel never
//! reads past the matrix. `op(B)` with `tb == T` (a forward's `Wᵀ`) is packed once per call in
//! parallel and shared by all row blocks, or, with a single row block, packed by each task for
//! its own columns — or it comes packed already ([`pack_b_for`] / [`gemm_packed_b`]: the
//! model packs every weight once per forward and all its row chunks read that; reading `Wᵀ`
//! in place instead was slower, its power-of-two row strides thrash L1 sets).
//!
//! Determinism: every element of C is computed as one FMA chain over each k-block in order,
//! then added to C block after block; neither the chain nor the block order depends on which
//! task computes the element, so the result is bit-identical for any thread count and any
//! task grid. We never split `k` across threads.
//!
//! Packing buffers (no allocation after the first call at a shape, whatever `m` and the
//! scheduling): every buffer request is bounded by a size that depends on `n` only (task
//! buffers: packed A block + packed B columns at full depth `KC`) or, for the shared packed
//! `op(B)` of `tb == T`, on `(n, k)` only — never on `m`, so never on the batch size in any
//! orientation of a Linear layer (forward `n = d_out, k = d_in`; input grad `n = d_in`; weight
//! grad `n = d_in` with `tb == N`, so its `k` = batch size does not matter). Buffers live in
//! two global pools (not per thread, so it does not matter which worker runs which task);
//! all buffers of a pool have the pool's high-water capacity, and each pool holds
//! `threads + 1` of them. Every call first runs [`reserve_gemm`] for its shape (two atomic
//! loads when nothing changes). A task holds one task buffer and runs no rayon work while it
//! holds it, so at most one per thread is out at a time and the pool never runs dry. The
//! shared-B pool can run dry (a thread waiting in one GEMM may steal another GEMM's job), so a
//! shared B is optional: without a free one, each task packs its own B columns (the same
//! values and FMA chains, so the same bits).

use crate::cast::{f32s, f32s_mut, f32v, is_f32};
use crate::simd::kern::{Epi, EpiKind, GemmBlock, A_STRIDE, KC};
use crate::{simd, Real};
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Whether an operand is used as stored (`N`) or transposed (`T`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trans {
    /// Use the matrix as stored (row-major).
    N,
    /// Use the transpose of the stored row-major matrix.
    T,
}

/// Most steps of `k` in one k-block of the f32 GEMM: `k` is cut into `⌈k / K_BLOCK⌉` blocks
/// of equal depth `⌈k / ⌈k / K_BLOCK⌉⌉` (the last may be shorter), and every element of C is
/// one fused multiply-add chain per block, the blocks added to C in order (module docs,
/// "Determinism"). Public so that a test can rebuild C's bits from those chains.
pub const K_BLOCK: usize = KC;

/// Rows of C handed to one rayon task by [`gemm_matrixmultiply`].
const ROWS_PER_TASK: usize = 64;
/// Below this many multiply-adds a GEMM runs on the calling thread.
const PAR_MIN_FLOPS: usize = 1 << 18;
/// Most rows of C in one task of the f32 GEMM: the A rows a task streams (`MC` rows of a k-block,
/// ~100–150 KiB) stay in L2. A multiple of every path's `MR` (12, 6, 4).
const MC: usize = 144;

#[track_caller]
fn check(m: usize, n: usize, k: usize, a: usize, b: usize, c: usize) {
    assert!(a >= m * k, "gemm: A has {a} elements, needs {m}x{k}");
    assert!(b >= k * n, "gemm: B has {b} elements, needs {k}x{n}");
    assert!(c >= m * n, "gemm: C has {c} elements, needs {m}x{n}");
}

/// `C = beta·C` (C not read when `beta == 0`): the whole product when `k == 0`.
fn scale_c<T: Real>(c: &mut [T], beta: T) {
    for v in c.iter_mut() {
        *v = if beta == T::ZERO { T::ZERO } else { beta * *v };
    }
}

/// `C[m×n] = alpha · op(A) · op(B) + beta · C`, all row-major and contiguous.
///
/// `op(A)` is `m×k`: `A` is stored `m×k` when `ta == N` and `k×m` when `ta == T`; likewise
/// `op(B)` is `k×n`. When `beta == 0`, C is not read (it may hold garbage or NaN).
///
/// For a Linear layer `Y[B×out] = X[B×in]·Wᵀ` with `W[out×in]`: forward is
/// `gemm(B, out, in, 1, X, N, W, T, 0, Y)`, input grad `gemm(B, in, out, 1, dY, N, W, N, 1, dX)`,
/// weight grad `gemm(out, in, B, 1, dY, T, X, N, 1, dW)`.
///
/// Runs on the current rayon pool (never a second pool); bit-identical for any thread count.
///
/// # Panics
/// If a slice is shorter than its shape requires (a programmer error).
#[track_caller]
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
    check(m, n, k, a.len(), b.len(), c.len());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        return scale_c(&mut c[..m * n], beta);
    }
    if is_f32::<T>() {
        let (a, b, c) = (f32s(a), f32s(b), f32s_mut(c));
        return sgemm(
            m,
            n,
            k,
            f32v(alpha),
            &a[..m * k],
            ta,
            &b[..k * n],
            tb,
            f32v(beta),
            &mut c[..m * n],
        );
    }
    gemm_matrixmultiply(m, n, k, alpha, a, ta, b, tb, beta, c)
}

/// The same contract as [`gemm`], computed by `matrixmultiply` (rayon over fixed blocks of 64
/// rows of C, each block one `sgemm`/`dgemm` call). Used for `f64`, and kept public as the
/// baseline the benchmarks and tests compare the f32 GEMM against. Allocates a packing buffer
/// inside every `matrixmultiply` call.
///
/// # Panics
/// If a slice is shorter than its shape requires.
#[track_caller]
#[allow(clippy::too_many_arguments)]
pub fn gemm_matrixmultiply<T: Real>(
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
    check(m, n, k, a.len(), b.len(), c.len());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        return scale_c(&mut c[..m * n], beta);
    }
    let (rsa, csa) = match ta {
        Trans::N => (k as isize, 1),
        Trans::T => (1, m as isize),
    };
    let (rsb, csb) = match tb {
        Trans::N => (n as isize, 1),
        Trans::T => (1, k as isize),
    };
    let par = m * n * k >= PAR_MIN_FLOPS && m > ROWS_PER_TASK && crate::par::threads() > 1;
    let block = |r0: usize, cblk: &mut [T]| {
        let rows = cblk.len() / n;
        // Offset of row r0 of op(A): N → r0*k, T → column r0 of the k×m storage.
        let a_off = match ta {
            Trans::N => r0 * k,
            Trans::T => r0,
        };
        // SAFETY: rows r0..r0+rows of op(A) lie inside `a` (checked above); cblk is a
        // disjoint row block of C; strides describe the row-major layouts.
        unsafe {
            T::gemm_raw(
                rows,
                k,
                n,
                alpha,
                a.as_ptr().add(a_off),
                rsa,
                csa,
                b.as_ptr(),
                rsb,
                csb,
                beta,
                cblk.as_mut_ptr(),
                n as isize,
                1,
            )
        };
    };
    if par {
        // Fixed-size row blocks, independent of the thread count.
        c[..m * n]
            .par_chunks_mut(ROWS_PER_TASK * n)
            .enumerate()
            .for_each(|(blk, cblk)| block(blk * ROWS_PER_TASK, cblk));
    } else {
        block(0, &mut c[..m * n]);
    }
}

/// A pool of packing buffers shared by all threads. Every buffer has at least `cap` f32
/// (plus 16 for alignment); `made` counts the buffers the pool owns (in it or lent out).
struct Pool {
    bufs: Vec<Vec<f32>>,
    cap: usize,
    made: usize,
}

/// Buffers for one task of a GEMM (packed A rows and, when B is not shared, packed B).
/// Mandatory: when the pool is empty a task allocates one (see [`reserve`] for why that does
/// not happen after the first call at a shape).
static TASK_POOL: Mutex<Pool> = Mutex::new(Pool::new());
/// Buffers for the shared packed `op(B)` of a GEMM with several row blocks. Optional: when
/// the pool is empty the GEMM runs without one (each task packs its own B), never allocating.
static SHARED_POOL: Mutex<Pool> = Mutex::new(Pool::new());
/// Lock-free copies of the pools' `cap` and `made`, so that [`reserve`] costs two atomic loads
/// when nothing changes.
static TASK_CAP: AtomicUsize = AtomicUsize::new(0);
static TASK_MADE: AtomicUsize = AtomicUsize::new(0);
static SHARED_CAP: AtomicUsize = AtomicUsize::new(0);
static SHARED_MADE: AtomicUsize = AtomicUsize::new(0);

impl Pool {
    const fn new() -> Pool {
        Pool {
            bufs: Vec::new(),
            cap: 0,
            made: 0,
        }
    }
}

/// Locks a pool; a panic in another GEMM cannot leave a pool inconsistent (buffers are only
/// pushed or popped under the lock), so poisoning is ignored.
fn lock(pool: &Mutex<Pool>) -> MutexGuard<'_, Pool> {
    pool.lock().unwrap_or_else(|e| e.into_inner())
}

/// Raises `pool` to at least `count` buffers of at least `len` f32 each, growing the buffers
/// it holds now (lent-out ones grow when they come back, in [`put`]).
fn reserve(pool: &Mutex<Pool>, cap: &AtomicUsize, made: &AtomicUsize, len: usize, count: usize) {
    if len <= cap.load(Ordering::Acquire) && count <= made.load(Ordering::Acquire) {
        return;
    }
    let mut p = lock(pool);
    p.cap = p.cap.max(len);
    let want = p.cap + 16;
    for v in p.bufs.iter_mut() {
        if v.len() < want {
            v.resize(want, 0.0);
        }
    }
    while p.made < count {
        p.bufs.push(vec![0.0; want]);
        p.made += 1;
    }
    cap.store(p.cap, Ordering::Release);
    made.store(p.made, Ordering::Release);
}

/// Returns a buffer to `pool`, first growing it to the pool's current capacity.
fn put(pool: &Mutex<Pool>, mut v: Vec<f32>) {
    let mut p = lock(pool);
    if v.len() < p.cap + 16 {
        v.resize(p.cap + 16, 0.0);
    }
    p.bufs.push(v);
}

/// Runs `f` on a 64-byte-aligned slice of `len` f32 of `v` (which has `len + 16` or more).
fn aligned<R>(v: &mut [f32], len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let off = v.as_ptr().align_offset(64).min(16);
    f(&mut v[off..off + len])
}

/// Runs `f` on a task buffer of `len` f32 from [`TASK_POOL`]. Allocates only if the pool is
/// empty or its capacity is below `len`, which [`reserve_gemm`] rules out.
fn with_task_buf<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let v = lock(&TASK_POOL).bufs.pop();
    let mut v = v.unwrap_or_else(|| {
        let mut p = lock(&TASK_POOL);
        p.made += 1;
        TASK_MADE.store(p.made, Ordering::Release);
        Vec::new()
    });
    if v.len() < len + 16 {
        v.resize(len + 16, 0.0);
    }
    let r = aligned(&mut v, len, f);
    put(&TASK_POOL, v);
    r
}

/// Runs `f` on a shared-B buffer of `len` f32 from [`SHARED_POOL`], or on `None` when the pool
/// has no buffer of that size free (never allocates).
fn with_shared_buf<R>(len: usize, f: impl FnOnce(Option<&mut [f32]>) -> R) -> R {
    let v = {
        let mut p = lock(&SHARED_POOL);
        if p.cap >= len {
            p.bufs.pop()
        } else {
            None
        }
    };
    match v {
        Some(mut v) => {
            let r = aligned(&mut v, len, |s| f(Some(s)));
            put(&SHARED_POOL, v);
            r
        }
        None => f(None),
    }
}

/// Task-buffer bound for a GEMM with `n` columns of C on micro-kernel `(mr, nr)`: A's packed
/// partial last panel (`mr` rows at `A_STRIDE`, or `mr × KC` p-major; full panels are read in
/// place) plus packed B for all `⌈n/nr⌉` panels at full depth `KC`. Independent of `m` and
/// `k`, hence of the batch size in every orientation of a Linear layer.
fn task_bound(n: usize, mr: usize, nr: usize) -> usize {
    (mr * A_STRIDE).max(mr * KC) + KC * n.div_ceil(nr) * nr
}

/// Shared-B bound: all k-blocks of packed `op(B)`, `nkb · npan · kc · nr` (depends on n, k).
fn shared_bound(n: usize, k: usize, nr: usize) -> usize {
    let nkb = k.div_ceil(KC);
    nkb * k.div_ceil(nkb) * n.div_ceil(nr) * nr
}

/// Preallocates the f32 GEMM's packing buffers for products with `n` columns of C and depth
/// `k`, run on up to `threads` threads at once, so that later GEMMs of that `(n, k)` (with any
/// `m`, any `k` when `op(B)` is not transposed) allocate nothing. [`gemm`] calls it itself with
/// the current rayon pool's size, so every shape reserves at its first call; call it directly
/// to reserve before then (e.g. for a pool size not yet used).
///
/// Guarantee: a task holds one task buffer while it runs and runs no rayon work inside, so
/// at most one per thread is lent out at any time; `threads + 1` task buffers (the extra one
/// for a caller outside the pool) of capacity `task_bound` therefore always suffice. The
/// shared-B buffers (`threads + 1` as well) are an optimisation only: a GEMM that finds none
/// free lets each task pack its own B columns instead (same values, same FMA chains, so the
/// result is bit-identical).
///
/// Only `tb == T` uses a shared B (its size depends on `k`); with `tb == N` the reservation is
/// independent of `k`, which is what makes a weight gradient (`k` = batch size) free of
/// allocations at every batch size once its `n` was seen.
pub fn reserve_gemm(n: usize, k: usize, tb: Trans, threads: usize) {
    let (mr, nr) = simd::gemm_dims(simd::simd_path());
    let count = threads.max(1) + 1;
    reserve(
        &TASK_POOL,
        &TASK_CAP,
        &TASK_MADE,
        task_bound(n, mr, nr),
        count,
    );
    if tb == Trans::T {
        let len = shared_bound(n, k, nr);
        reserve(&SHARED_POOL, &SHARED_CAP, &SHARED_MADE, len, count);
    }
}

/// C shared by the tasks of one GEMM; each task writes only its own tile.
#[derive(Clone, Copy)]
struct CPtr(*mut f32);
// SAFETY: tasks write disjoint tiles of C, and C outlives the parallel section.
unsafe impl Send for CPtr {}
// SAFETY: see above.
unsafe impl Sync for CPtr {}
impl CPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Geometry of one f32 GEMM call (everything but the data).
#[derive(Clone, Copy)]
struct Plan {
    n: usize,
    k: usize,
    /// Micro-kernel tile.
    mr: usize,
    nr: usize,
    /// Depth of every k-block but possibly the last.
    kc: usize,
    /// Number of k-blocks.
    nkb: usize,
    /// Column panels of width `nr` covering n.
    npan: usize,
    /// Rows per task (multiple of `mr`).
    rb: usize,
    /// Column panels per task.
    cpan: usize,
}

impl Plan {
    fn new(m: usize, n: usize, k: usize, path: simd::SimdPath, par: bool) -> Plan {
        let (mr, nr) = simd::gemm_dims(path);
        let nkb = k.div_ceil(KC);
        let kc = k.div_ceil(nkb);
        let npan = n.div_ceil(nr);
        let mut rt = m.div_ceil(MC);
        let mut ct = 1;
        if par {
            // Aim for two tasks per thread. Prefer whole-width row blocks (each streams the
            // shared packed B once); when there are too few rows, split columns (each column
            // task re-packs its A rows) and only then shrink the row blocks.
            let want = 2 * crate::par::threads();
            if rt < want {
                ct = want.div_ceil(rt).min(npan);
                if rt * ct < want {
                    rt = want.div_ceil(ct).min(m.div_ceil(mr));
                }
            }
        }
        let rb = m.div_ceil(rt).next_multiple_of(mr).min(MC);
        let cpan = npan.div_ceil(ct);
        Plan {
            n,
            k,
            mr,
            nr,
            kc,
            nkb,
            npan,
            rb,
            cpan,
        }
    }
    /// Depth of k-block `kb`.
    fn kcur(&self, kb: usize) -> usize {
        self.kc.min(self.k - kb * self.kc)
    }
    /// Offset of k-block `kb` in the packed B buffer (panel `q` then at `+ q·kcur·nr`).
    fn b_block(&self, kb: usize) -> usize {
        kb * self.npan * self.kc * self.nr
    }
}

/// `dst.copy_from_slice(src)` for the short panel-width copies of packing: the tile widths
/// become fixed-size moves instead of a `memcpy` call per 48–128 bytes.
#[inline(always)]
fn copy_small(dst: &mut [f32], src: &[f32]) {
    #[inline(always)]
    fn fixed<const N: usize>(dst: &mut [f32], src: &[f32]) {
        let d: &mut [f32; N] = dst.try_into().expect("copy_small: length");
        let s: &[f32; N] = src.try_into().expect("copy_small: length");
        *d = *s;
    }
    match dst.len() {
        32 => fixed::<32>(dst, src),
        16 => fixed::<16>(dst, src),
        12 => fixed::<12>(dst, src),
        8 => fixed::<8>(dst, src),
        6 => fixed::<6>(dst, src),
        4 => fixed::<4>(dst, src),
        _ => dst.copy_from_slice(src),
    }
}

/// Packs `op(B)[pc..pc+kcur, q·nr ..]` as panel `q` of one k-block: element (p, j) at
/// `p·nr + j`. Columns past n are left as they are (each output column is independent, so
/// their garbage only reaches discarded columns of the register tile).
#[allow(clippy::too_many_arguments)]
fn pack_b_panel(
    dst: &mut [f32],
    b: &[f32],
    tb: Trans,
    k: usize,
    n: usize,
    pc: usize,
    kcur: usize,
    j0: usize,
    nr: usize,
) {
    let w = nr.min(n - j0);
    match tb {
        Trans::N => {
            for p in 0..kcur {
                let s = (pc + p) * n + j0;
                copy_small(&mut dst[p * nr..p * nr + w], &b[s..s + w]);
            }
        }
        Trans::T if kcur > 0 && w > 0 => {
            // Columns of op(B) = Bᵀ are rows of the stored b. Stores in order, loads strided by
            // k, no bounds checks inside: 0.3 ns per element hot against 1.6 for the checked
            // loop over source rows that this replaced (the compiler vectorises neither).
            let src = &b[j0 * k + pc..];
            assert!(dst.len() >= (kcur - 1) * nr + w && src.len() >= (w - 1) * k + kcur);
            let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
            for p in 0..kcur {
                for j in 0..w {
                    // SAFETY: p < kcur and j < w, so both offsets are inside the lengths
                    // asserted above.
                    unsafe { *d.add(p * nr + j) = *s.add(j * k + p) };
                }
            }
        }
        Trans::T => {}
    }
}

/// Packs all of `op(B)` (see [`Plan::b_block`]).
fn pack_b(bp: &mut [f32], b: &[f32], tb: Trans, pl: &Plan, par: bool) {
    let blk = pl.npan * pl.kc * pl.nr;
    let one = |kb: usize, dst: &mut [f32]| {
        let kcur = pl.kcur(kb);
        let pan = kcur * pl.nr;
        let dst = &mut dst[..pl.npan * pan];
        if par {
            dst.par_chunks_mut(pan).enumerate().for_each(|(q, d)| {
                pack_b_panel(d, b, tb, pl.k, pl.n, kb * pl.kc, kcur, q * pl.nr, pl.nr)
            });
        } else {
            for (q, d) in dst.chunks_mut(pan).enumerate() {
                pack_b_panel(d, b, tb, pl.k, pl.n, kb * pl.kc, kcur, q * pl.nr, pl.nr);
            }
        }
    };
    if par {
        bp[..pl.nkb * blk]
            .par_chunks_mut(blk)
            .enumerate()
            .for_each(|(kb, d)| one(kb, d));
    } else {
        for (kb, d) in bp[..pl.nkb * blk].chunks_mut(blk).enumerate() {
            one(kb, d);
        }
    }
}

/// Packs rows `r0 .. r0+rows` of `op(A)[:, pc..pc+kcur]`. `ta == N`: row-major panels, row i
/// at `i·A_STRIDE` (contiguous copies of A's rows). `ta == T`: p-major panels of `mr` rows,
/// panel q at `q·mr·kcur`, element (i, p) at `p·mr + i` (contiguous copies of A's storage
/// rows). Rows past `rows` in the last panel are left as they are (each output row is
/// independent, so their garbage only reaches discarded rows of the register tile).
#[allow(clippy::too_many_arguments)]
fn pack_a(
    ap: &mut [f32],
    a: &[f32],
    ta: Trans,
    m: usize,
    k: usize,
    r0: usize,
    rows: usize,
    pc: usize,
    kcur: usize,
    mr: usize,
) {
    match ta {
        Trans::N => {
            for i in 0..rows {
                let s = (r0 + i) * k + pc;
                ap[i * A_STRIDE..i * A_STRIDE + kcur].copy_from_slice(&a[s..s + kcur]);
            }
        }
        Trans::T => {
            for q in 0..rows.div_ceil(mr) {
                let w = mr.min(rows - q * mr);
                let dst = &mut ap[q * mr * kcur..(q + 1) * mr * kcur];
                for p in 0..kcur {
                    let s = (pc + p) * m + r0 + q * mr;
                    copy_small(&mut dst[p * mr..p * mr + w], &a[s..s + w]);
                }
            }
        }
    }
}

/// f32 GEMM on our packed kernels (see the module docs). Shapes are already checked and the
/// slices trimmed to them; `m, n, k >= 1`.
#[allow(clippy::too_many_arguments)]
fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    ta: Trans,
    b: &[f32],
    tb: Trans,
    beta: f32,
    c: &mut [f32],
) {
    sgemm_impl(m, n, k, alpha, a, ta, b, tb, None, beta, c, Epi::NONE)
}

/// [`sgemm`], optionally with `op(B)` already packed (`prepacked`, made by [`pack_b_for`] on
/// this thread's SIMD path): then no task packs or reads `b`. The micro-kernel applies `epi`
/// to C's final values as it stores them (its pointers at C's first element and column).
#[allow(clippy::too_many_arguments)]
fn sgemm_impl(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    ta: Trans,
    b: &[f32],
    tb: Trans,
    prepacked: Option<&[f32]>,
    beta: f32,
    c: &mut [f32],
    epi: Epi,
) {
    let path = simd::simd_path();
    // Buffers for every thread of the pool, even inside `serial`: several serial callers
    // (the model's row chunks) may each hold one at once.
    reserve_gemm(n, k, tb, rayon::current_num_threads());
    let par = m * n * k >= PAR_MIN_FLOPS && crate::par::threads() > 1;
    let pl = Plan::new(m, n, k, path, par);
    let cptr = CPtr(c.as_mut_ptr());
    let ntr = m.div_ceil(pl.rb);
    let ntc = pl.npan.div_ceil(pl.cpan);
    let (mr, nr) = (pl.mr, pl.nr);
    // Operands whose stored layout already is a micro-kernel layout are read in place:
    // op(A) with ta == T (p-major rows, stride m) and op(B) with tb == N (rows of stride n);
    // only their last partial panel is packed, so the kernel never reads past the matrix.
    let (a_direct, b_direct) = (ta == Trans::T, tb == Trans::N && prepacked.is_none());
    // One task's work. Packed B (tb == T) is `shared` when several row blocks reuse it;
    // otherwise (a single row block) the task packs its own columns per k-block, right
    // before use, so they are still in cache.
    let task = |t: usize, shared: Option<&[f32]>| {
        let (r0, p0) = ((t / ntc) * pl.rb, (t % ntc) * pl.cpan);
        let rows = pl.rb.min(m - r0);
        let cols = (pl.cpan * nr).min(n - p0 * nr);
        let full_rows = rows / mr * mr;
        let full_cols = if b_direct { cols / nr * nr } else { cols };
        let a_len = if a_direct { mr * pl.kc } else { mr * A_STRIDE };
        let b_len = match (b_direct, shared) {
            (true, _) => pl.kc * nr,
            (false, None) => pl.kc * pl.cpan * nr,
            (false, Some(_)) => 0,
        };
        with_task_buf(a_len + b_len, |buf| {
            let (ap, own) = buf.split_at_mut(a_len);
            for kb in 0..pl.nkb {
                let (pc, kcur) = (kb * pl.kc, pl.kcur(kb));
                // (A pointer, p-major?, panel offset, stride (p-major: per p, row-major: per
                // row), rows, first row in task)
                let mut aparts = [(ap.as_ptr(), false, 0, 0, 0, 0); 2];
                if a_direct {
                    // SAFETY (offset): row pc of A's k×m storage, column r0 < m.
                    let a0 = unsafe { a.as_ptr().add(pc * m + r0) };
                    aparts[0] = (a0, true, mr, m, full_rows, 0);
                    if full_rows < rows {
                        let r = rows - full_rows;
                        pack_a(ap, a, ta, m, k, r0 + full_rows, r, pc, kcur, mr);
                        aparts[1] = (ap.as_ptr(), true, mr * kcur, mr, r, full_rows);
                    }
                } else {
                    // Row-major A is read in place (row stride k) for its full panels of `mr`
                    // rows; a last partial panel is packed, so the kernel never reads past A.
                    // SAFETY (offset): row r0 < m, column pc < k of A's m×k storage.
                    let a0 = unsafe { a.as_ptr().add(r0 * k + pc) };
                    aparts[0] = (a0, false, mr * k, k, full_rows, 0);
                    if full_rows < rows {
                        let r = rows - full_rows;
                        pack_a(ap, a, ta, m, k, r0 + full_rows, r, pc, kcur, mr);
                        aparts[1] = (ap.as_ptr(), false, mr * A_STRIDE, A_STRIDE, r, full_rows);
                    }
                }
                // (B pointer, panel offset, row stride, columns, first column in task)
                let mut bparts = [(own.as_ptr(), 0, 0, 0, 0); 2];
                if b_direct {
                    // SAFETY (offset): row pc of op(B) = B's k×n storage, column p0·nr < n.
                    let b0 = unsafe { b.as_ptr().add(pc * n + p0 * nr) };
                    bparts[0] = (b0, nr, n, full_cols, 0);
                    if full_cols < cols {
                        let j0 = p0 * nr + full_cols;
                        pack_b_panel(own, b, tb, k, n, pc, kcur, j0, nr);
                        bparts[1] = (own.as_ptr(), 0, nr, cols - full_cols, full_cols);
                    }
                } else {
                    let pan = kcur * nr;
                    let bp = match shared {
                        Some(bp) => &bp[pl.b_block(kb) + p0 * pan..],
                        None => {
                            for (q, d) in own.chunks_mut(pan).take(cols.div_ceil(nr)).enumerate() {
                                pack_b_panel(d, b, tb, k, n, pc, kcur, (p0 + q) * nr, nr);
                            }
                            &own[..]
                        }
                    };
                    bparts[0] = (bp.as_ptr(), pan, nr, cols, 0);
                }
                for &(ap, a_pmajor, a_pan, a_ps, rws, roff) in &aparts {
                    for &(bp, b_pan, ldb, cls, coff) in &bparts {
                        if rws == 0 || cls == 0 {
                            continue;
                        }
                        let blk = GemmBlock {
                            kc: kcur,
                            ap,
                            a_pmajor,
                            a_pan,
                            a_ps,
                            bp,
                            b_pan,
                            ldb,
                            // SAFETY (offset): the part's first row and column are inside C.
                            c: unsafe { cptr.get().add((r0 + roff) * n + p0 * nr + coff) },
                            ldc: n,
                            rows: rws,
                            cols: cls,
                            alpha,
                            beta,
                            first: kb == 0,
                            // The epilogue goes with the last k-block only.
                            epi: if kb + 1 == pl.nkb {
                                epi.at(r0 + roff, p0 * nr + coff, n)
                            } else {
                                Epi::NONE
                            },
                        };
                        // The block reads `rws` rows of A and `cls` columns of B (all NR-wide
                        // panels readable: in place only for full panels, else packed above)
                        // for `kcur` steps, and writes only this task's part of C.
                        if blk.epi.kind != EpiKind::None {
                            simd::gemm_block_epi(path, &blk);
                        } else {
                            simd::gemm_block(path, &blk);
                        }
                    }
                }
            }
        });
    };
    let run = |shared: Option<&[f32]>| {
        if par && ntr * ntc > 1 {
            (0..ntr * ntc).into_par_iter().for_each(|t| task(t, shared));
        } else {
            (0..ntr * ntc).for_each(|t| task(t, shared));
        }
    };
    if let Some(bp) = prepacked {
        run(Some(bp));
    } else if ntr > 1 && !b_direct {
        with_shared_buf(pl.nkb * pl.npan * pl.kc * pl.nr, |bp| match bp {
            Some(bp) => {
                pack_b(bp, b, tb, &pl, par && k * n >= 1 << 15);
                run(Some(&*bp));
            }
            None => run(None),
        });
    } else {
        run(None);
    }
}

/// Length in f32 of `op(B)` (`k × n`) packed by [`pack_b_for`] for SIMD path `path`.
pub fn packed_b_len(n: usize, k: usize, path: simd::SimdPath) -> usize {
    let (_, nr) = simd::gemm_dims(path);
    if n == 0 || k == 0 {
        return 0;
    }
    shared_bound(n, k, nr)
}

/// Packs `op(B)` (`k × n`; `b` stored `k×n` when `tb == N`, `n×k` when `tb == T`) in the
/// layout the f32 GEMM's micro-kernel reads on SIMD path `path`, into `dst` of
/// [`packed_b_len`] elements, for [`gemm_packed_b`]. For a weight used by many GEMMs with
/// the same B (the row chunks of a batch), packing once saves a packing per call. Does
/// nothing unless `T` is `f32`.
///
/// # Panics
/// If `dst` or `b` is too short (a programmer error).
#[track_caller]
pub fn pack_b_for<T: Real>(
    dst: &mut [f32],
    n: usize,
    k: usize,
    b: &[T],
    tb: Trans,
    path: simd::SimdPath,
) {
    if !is_f32::<T>() || n == 0 || k == 0 {
        return;
    }
    assert!(
        b.len() >= n * k,
        "pack_b_for: B has {} elements, needs {k}x{n}",
        b.len()
    );
    let len = packed_b_len(n, k, path);
    assert!(
        dst.len() >= len,
        "pack_b_for: dst has {}, needs {len}",
        dst.len()
    );
    let pl = Plan::new(1, n, k, path, false);
    pack_b(&mut dst[..len], f32s(&b[..n * k]), tb, &pl, false);
}

/// [`gemm`] whose `op(B)` may also come packed: when `packed` is `Some((buf, path))` with
/// `buf` made by [`pack_b_for`] from this same `b` on `path`, `T` is `f32` and `path` is this
/// thread's SIMD path, the GEMM reads `buf` and packs nothing; otherwise it is plain [`gemm`]
/// on `b`. Both give the same bits (same FMA chains).
#[track_caller]
#[allow(clippy::too_many_arguments)]
pub fn gemm_packed_b<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    a: &[T],
    ta: Trans,
    b: &[T],
    tb: Trans,
    packed: Option<(&[f32], simd::SimdPath)>,
    beta: T,
    c: &mut [T],
) {
    match packed {
        Some((buf, path))
            if is_f32::<T>() && path == simd::simd_path() && m > 0 && n > 0 && k > 0 =>
        {
            check(m, n, k, a.len(), b.len(), c.len());
            assert!(
                buf.len() >= packed_b_len(n, k, path),
                "gemm_packed_b: short buffer"
            );
            sgemm_impl(
                m,
                n,
                k,
                f32v(alpha),
                &f32s(a)[..m * k],
                ta,
                &f32s(b)[..k * n],
                tb,
                Some(buf),
                f32v(beta),
                &mut f32s_mut(c)[..m * n],
                Epi::NONE,
            );
        }
        _ => gemm(m, n, k, alpha, a, ta, b, tb, beta, c),
    }
}

/// An elementwise function that [`gemm_epilogue`] applies to each element of `op(A)·op(B)` as
/// it stores it in C: a layer's bias and activation without a second pass over C.
#[derive(Debug)]
pub enum Epilogue<'a, T> {
    /// `C[i, j] = max(C[i, j] + bias[j], 0)`, as [`crate::act::bias_relu_forward`].
    BiasRelu(&'a [T]),
    /// `C[i, j] = scale·σ(C[i, j] + bias[j])`, and with `mul = Some((y, x))` (both `[m, n]`)
    /// also `y = C ⊙ x`, as [`crate::act::bias_scaled_sigmoid_forward`] (a GateNU's output
    /// layer, and the input it scales).
    BiasScaledSigmoid {
        /// Per column.
        bias: &'a [T],
        /// γ.
        scale: T,
        /// `(y, x)`: also write `y = C ⊙ x`, the input the gate scales times the gate.
        mul: Option<(&'a mut [T], &'a [T])>,
    },
    /// Only the product of [`Epilogue::BiasScaledSigmoid`]'s `mul`: `y = scale·σ(C + bias) ⊙ x`
    /// (`y`, `x` `[m, n]`), for a gate whose values are not needed afterwards (inference).
    /// C is then scratch: written only when `k` spans several of the micro-kernel's k-blocks
    /// (more than 192), its contents unspecified afterwards.
    ScaledBySigmoid {
        /// Per column.
        bias: &'a [T],
        /// γ.
        scale: T,
        /// Written.
        y: &'a mut [T],
        /// The input the gate scales.
        x: &'a [T],
    },
}

/// `C[m×n] = epi(op(A)·op(B))`: [`gemm_packed_b`] with `alpha = 1`, `beta = 0`, followed by
/// the epilogue's activation, with the same bits, but applied by the `f32` micro-kernel to
/// each register tile as it is stored (C is written once, not written, read and written again).
///
/// # Panics
/// If a slice is shorter than its shape requires (a programmer error).
#[track_caller]
#[allow(clippy::too_many_arguments)]
pub fn gemm_epilogue<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    ta: Trans,
    b: &[T],
    tb: Trans,
    packed: Option<(&[f32], simd::SimdPath)>,
    c: &mut [T],
    epi: Epilogue<'_, T>,
) {
    check(m, n, k, a.len(), b.len(), c.len());
    let (bias_len, yx) = match &epi {
        Epilogue::BiasRelu(bias) => (bias.len(), None),
        Epilogue::BiasScaledSigmoid { bias, mul, .. } => {
            (bias.len(), mul.as_ref().map(|(y, x)| (y.len(), x.len())))
        }
        Epilogue::ScaledBySigmoid { bias, y, x, .. } => (bias.len(), Some((y.len(), x.len()))),
    };
    if let Some((y, x)) = yx {
        assert!(
            y >= m * n && x >= m * n,
            "gemm_epilogue: y has {y}, x {x} elements, need {m}x{n}"
        );
    }
    assert!(
        bias_len >= n,
        "gemm_epilogue: bias has {bias_len} elements, needs {n}"
    );
    if m == 0 || n == 0 {
        return;
    }
    if !is_f32::<T>() || k == 0 {
        // The product, then the activation as its own pass (f64, or C = 0).
        gemm_packed_b(m, n, k, T::ONE, a, ta, b, tb, packed, T::ZERO, c);
        let c = &mut c[..m * n];
        // `ScaledBySigmoid` runs as the sigmoid with its product (C is scratch for it).
        let (bias, scale, mul) = match epi {
            Epilogue::BiasRelu(bias) => return crate::act::bias_relu_forward(c, &bias[..n]),
            Epilogue::BiasScaledSigmoid { bias, scale, mul } => (bias, scale, mul),
            Epilogue::ScaledBySigmoid { bias, scale, y, x } => (bias, scale, Some((y, x))),
        };
        let u = c.to_vec();
        let mul = mul.map(|(y, x)| (&mut y[..m * n], &x[..m * n]));
        return crate::act::bias_scaled_sigmoid_forward(c, &u, &bias[..n], scale, mul);
    }
    let f32p = |v: &[T]| f32s(v).as_ptr();
    let e = match epi {
        Epilogue::BiasRelu(bias) => Epi {
            kind: EpiKind::BiasRelu,
            bias: f32p(bias),
            ..Epi::NONE
        },
        Epilogue::BiasScaledSigmoid { bias, scale, mul } => {
            let (kind, x, y) = match mul {
                Some((y, x)) => (
                    EpiKind::BiasScaledSigmoidMul,
                    f32p(x),
                    f32s_mut(y).as_mut_ptr(),
                ),
                None => (
                    EpiKind::BiasScaledSigmoid,
                    std::ptr::null(),
                    std::ptr::null_mut(),
                ),
            };
            Epi {
                kind,
                bias: f32p(bias),
                scale: f32v(scale),
                x,
                y,
            }
        }
        Epilogue::ScaledBySigmoid { bias, scale, y, x } => Epi {
            kind: EpiKind::ScaledBySigmoid,
            bias: f32p(bias),
            scale: f32v(scale),
            x: f32p(x),
            y: f32s_mut(y).as_mut_ptr(),
        },
    };
    let prepacked = match packed {
        Some((buf, path)) if path == simd::simd_path() => {
            assert!(
                buf.len() >= packed_b_len(n, k, path),
                "gemm_epilogue: short buffer"
            );
            Some(buf)
        }
        _ => None,
    };
    sgemm_impl(
        m,
        n,
        k,
        1.0,
        &f32s(a)[..m * k],
        ta,
        &f32s(b)[..k * n],
        tb,
        prepacked,
        0.0,
        &mut f32s_mut(c)[..m * n],
        e,
    );
}
