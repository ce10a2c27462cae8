//! The one place with `unsafe` around matrix multiply: a checked, row-major wrapper over
//! `matrixmultiply`, parallelised over row blocks of C with rayon.
//!
//! Determinism: every element of C is one dot product over the full `k` range in the order
//! matrixmultiply's fixed `kc` blocking gives it. Splitting the *rows* of C between threads
//! never splits that reduction, so the result is bit-identical for any thread count. We never
//! split `k` across threads.

use crate::Real;
use rayon::prelude::*;

/// Whether an operand is used as stored (`N`) or transposed (`T`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trans {
    /// Use the matrix as stored (row-major).
    N,
    /// Use the transpose of the stored row-major matrix.
    T,
}

/// Rows of C handed to one rayon task. A multiple of the sgemm micro-kernel heights (8/16),
/// large enough that packing B once per task is amortised.
const ROWS_PER_TASK: usize = 64;
/// Below this many multiply-adds a GEMM runs on the calling thread.
const PAR_MIN_FLOPS: usize = 1 << 18;

/// `C[m×n] = alpha · op(A) · op(B) + beta · C`, all row-major and contiguous.
///
/// `op(A)` is `m×k`: `A` is stored `m×k` when `ta == N` and `k×m` when `ta == T`; likewise
/// `op(B)` is `k×n`. When `beta == 0`, C is not read (it may hold garbage or NaN).
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
    assert!(
        a.len() >= m * k,
        "gemm: A has {} elements, needs {}x{}",
        a.len(),
        m,
        k
    );
    assert!(
        b.len() >= k * n,
        "gemm: B has {} elements, needs {}x{}",
        b.len(),
        k,
        n
    );
    assert!(
        c.len() >= m * n,
        "gemm: C has {} elements, needs {}x{}",
        c.len(),
        m,
        n
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // matrixmultiply handles k = 0, but make the beta semantics explicit.
        for v in c[..m * n].iter_mut() {
            *v = if beta == T::ZERO { T::ZERO } else { beta * *v };
        }
        return;
    }
    let (rsa, csa) = match ta {
        Trans::N => (k as isize, 1),
        Trans::T => (1, m as isize),
    };
    let (rsb, csb) = match tb {
        Trans::N => (n as isize, 1),
        Trans::T => (1, k as isize),
    };
    let par = m * n * k >= PAR_MIN_FLOPS && m > ROWS_PER_TASK && rayon::current_num_threads() > 1;
    if !par {
        // SAFETY: lengths checked above; strides describe the row-major layouts.
        unsafe {
            T::gemm_raw(
                m,
                k,
                n,
                alpha,
                a.as_ptr(),
                rsa,
                csa,
                b.as_ptr(),
                rsb,
                csb,
                beta,
                c.as_mut_ptr(),
                n as isize,
                1,
            )
        };
        return;
    }
    // Fixed-size row blocks, independent of the thread count (see module docs).
    c[..m * n]
        .par_chunks_mut(ROWS_PER_TASK * n)
        .enumerate()
        .for_each(|(blk, cblk)| {
            let r0 = blk * ROWS_PER_TASK;
            let rows = cblk.len() / n;
            // Offset of row r0 of op(A): N → r0*k, T → column r0 of the k×m storage.
            let a_off = match ta {
                Trans::N => r0 * k,
                Trans::T => r0,
            };
            // SAFETY: rows r0..r0+rows of op(A) lie inside `a` (checked above); cblk is a
            // disjoint row block of C.
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
        });
}
