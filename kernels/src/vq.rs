//! Nearest-code search for vector quantization.

use crate::Real;

/// `out[k] = ||m[k, :]||²` over rows of width `z`.
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

/// For each row `r[b, :]` (width `z`), the index of the code minimising
/// `||r − C_k||² = ||r||² − 2⟨r, C_k⟩ + ||C_k||²`, computed as `||C_k||² − 2⟨r, C_k⟩` (the
/// row norm does not change the argmin). Ties go to the lowest index. `codes.len()` = B,
/// `code_norms.len()` = K (from [`sq_norms`] of the codebook `[K, z]`).
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
