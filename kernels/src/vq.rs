//! Nearest-code search for vector quantization.
//!
//! Two f32 fast paths, both computing `d_k = ||C_k||² − 2⟨r, C_k⟩` with SIMD dot products and
//! cached code norms, ties to the lowest index:
//! - [`argmin_sq_l2`] (use this one): register-blocked dots of `ARGMIN_R` rows against blocks
//!   of `2·LANES` codes packed transposed on the stack, with a running per-lane minimum fused
//!   into the loop — a GEMM micro-kernel whose epilogue is the argmin, so the `[B, K]` dots are
//!   never stored. No scratch, no allocation.
//! - [`argmin_sq_l2_scratch`]: the GEMM-based variant — `r · Cᵀ` in blocks of 256 rows by
//!   [`crate::gemm()`] into caller-provided scratch ([`argmin_scratch_len`]), then a SIMD scan.
//!   Measured slower than [`argmin_sq_l2`] at every shape tried (B = 4096, K 64…16384,
//!   z 16…256; 1.3–4× slower, see `benches/RESULTS.md`), so there is no K above which the
//!   kernels switch to it; it stays for experiments and as a second, independently blocked
//!   fast path in the equivalence tests.
//!
//! Fast and reference may disagree only on near-ties: the dot products are summed in a
//! different order (FMA, lanes, k-blocks), so two codes whose distances differ by about the
//! rounding error (~`z·ε·Σ|r_i c_i|`) may swap. Exact ties (e.g. duplicate codes) always go to
//! the lowest index on every path, because duplicates are computed by identical operations.

use crate::cast::{f32s, f32s_mut, is_f32};
use crate::simd::kern::{ARGMIN_ROWS, ARGMIN_ZMAX};
use crate::{gemm, reference, simd, Real, Trans};
use rayon::prelude::*;

/// `out[k] = ||m[k, :]||²` over rows of width `z`.
pub fn sq_norms<T: Real>(out: &mut [T], m: &[T], z: usize) {
    if z == 0 || !is_f32::<T>() {
        return reference::sq_norms(out, m, z);
    }
    let rows = out.len().min(m.len() / z);
    let (out, m) = (&mut f32s_mut(out)[..rows], &f32s(m)[..rows * z]);
    simd::sq_norms(simd::simd_path(), out, m, z);
}

/// Whether the f32 kernels take this shape (else the reference runs).
fn fast_ok<T: Real>(k: usize, z: usize) -> bool {
    is_f32::<T>() && k > 0 && (1..=ARGMIN_ZMAX).contains(&z)
}

#[track_caller]
fn check_shapes(b: usize, r: usize, codebook: usize, k: usize, z: usize) {
    assert!(r >= b * z, "argmin_sq_l2: r has {r} values, needs {b}x{z}");
    assert!(
        codebook >= k * z,
        "argmin_sq_l2: codebook has {codebook} values, needs {k}x{z}"
    );
}

/// For each row `r[b, :]` (width `z`), the index of the code minimising
/// `||r − C_k||² = ||r||² − 2⟨r, C_k⟩ + ||C_k||²`, computed as `||C_k||² − 2⟨r, C_k⟩` (the
/// row norm does not change the argmin). Ties go to the lowest index. `codes.len()` = B,
/// `code_norms.len()` = K (from [`sq_norms`] of the codebook `[K, z]`).
///
/// # Panics
/// If `r` or `codebook` is shorter than its shape.
#[track_caller]
pub fn argmin_sq_l2<T: Real>(
    codes: &mut [u32],
    r: &[T],
    codebook: &[T],
    code_norms: &[T],
    z: usize,
) {
    let (b, k) = (codes.len(), code_norms.len());
    if !fast_ok::<T>(k, z) {
        return reference::argmin_sq_l2(codes, r, codebook, code_norms, z);
    }
    check_shapes(b, r.len(), codebook.len(), k, z);
    let (r, cb, nm) = (
        &f32s(r)[..b * z],
        &f32s(codebook)[..k * z],
        f32s(code_norms),
    );
    let path = simd::simd_path();
    let threads = crate::par::threads();
    if b * k * z >= 1 << 18 && threads > 1 && b > 8 {
        // Each row's result is independent of the chunking, so the chunk size may follow
        // the thread count; smaller chunks repack the code blocks more often.
        let rows = b
            .div_ceil(4 * threads)
            .next_multiple_of(8)
            .clamp(32, ARGMIN_ROWS);
        codes
            .par_chunks_mut(rows)
            .zip(r.par_chunks(rows * z))
            .for_each(|(c, r)| simd::argmin_rows(path, c, r, cb, nm, z));
    } else {
        for (c, r) in codes.chunks_mut(ARGMIN_ROWS).zip(r.chunks(ARGMIN_ROWS * z)) {
            simd::argmin_rows(path, c, r, cb, nm, z);
        }
    }
}

/// Rows per GEMM block in [`argmin_sq_l2_scratch`].
const ARGMIN_GEMM_ROWS: usize = 256;

/// Scratch values [`argmin_sq_l2_scratch`] needs for `b` rows and `k` codes of width `z`
/// (one block of dots, `min(b, 256) × k`; 0 when it will run the direct kernel instead).
pub fn argmin_scratch_len(b: usize, k: usize, z: usize) -> usize {
    if k > 0 && (1..=ARGMIN_ZMAX).contains(&z) {
        b.min(ARGMIN_GEMM_ROWS) * k
    } else {
        0
    }
}

/// [`argmin_sq_l2`] computed the GEMM way, with caller-provided scratch (at least
/// [`argmin_scratch_len`] values; overwritten): f32 dots are computed block by block as
/// `r_blk · Cᵀ` with [`crate::gemm()`] into `scratch` and scanned with SIMD. Slower than
/// [`argmin_sq_l2`] in every measurement so far (see the module docs). Other types, `K = 0`
/// and `z` outside `1..=512` run [`argmin_sq_l2`]. Never allocates beyond GEMM's per-thread
/// packing buffers.
///
/// # Panics
/// If `scratch` is too short, or `r`/`codebook` is shorter than its shape.
#[track_caller]
pub fn argmin_sq_l2_scratch<T: Real>(
    codes: &mut [u32],
    scratch: &mut [T],
    r: &[T],
    codebook: &[T],
    code_norms: &[T],
    z: usize,
) {
    let (b, k) = (codes.len(), code_norms.len());
    let need = argmin_scratch_len(b, k, z);
    assert!(
        scratch.len() >= need,
        "argmin_sq_l2_scratch: scratch has {} values, needs {need}",
        scratch.len()
    );
    if need == 0 || !fast_ok::<T>(k, z) {
        return argmin_sq_l2(codes, r, codebook, code_norms, z);
    }
    check_shapes(b, r.len(), codebook.len(), k, z);
    let (r, cb, nm) = (
        &f32s(r)[..b * z],
        &f32s(codebook)[..k * z],
        f32s(code_norms),
    );
    let scratch = f32s_mut(scratch);
    let path = simd::simd_path();
    for (c, rb) in codes
        .chunks_mut(ARGMIN_GEMM_ROWS)
        .zip(r.chunks(ARGMIN_GEMM_ROWS * z))
    {
        let rows = c.len();
        let dots = &mut scratch[..rows * k];
        gemm(rows, k, z, 1.0f32, rb, Trans::N, cb, Trans::T, 0.0, dots);
        let dots = &*dots;
        if rows * k >= 1 << 15 && crate::par::threads() > 1 {
            c.par_chunks_mut(16)
                .zip(dots.par_chunks(16 * k))
                .for_each(|(c, d)| simd::argmin_scan(path, c, d, nm));
        } else {
            simd::argmin_scan(path, c, dots, nm);
        }
    }
}

/// For each row of precomputed dots `dots[b, :] = ⟨r_b, C_k⟩` (`[codes.len(), K]`,
/// `K = code_norms.len()`), the index minimising `||C_k||² − 2·dot`, ties to the lowest index
/// (the scan half of the GEMM-based argmin, for callers that have the dots already).
///
/// # Panics
/// If `dots` is shorter than `codes.len() · K`.
#[track_caller]
pub fn argmin_from_dots<T: Real>(codes: &mut [u32], dots: &[T], code_norms: &[T]) {
    let (b, k) = (codes.len(), code_norms.len());
    assert!(
        dots.len() >= b * k,
        "argmin_from_dots: dots has {} values, needs {b}x{k}",
        dots.len()
    );
    if !is_f32::<T>() || k == 0 {
        return reference::argmin_from_dots(codes, dots, code_norms);
    }
    simd::argmin_scan(
        simd::simd_path(),
        codes,
        &f32s(dots)[..b * k],
        f32s(code_norms),
    );
}
