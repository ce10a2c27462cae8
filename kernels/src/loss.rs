//! Binary cross-entropy with logits, finite for any finite logit.

use crate::cast::{f32s, f32s_mut, f32v, is_f32};
use crate::par::{worth, CHUNK};
use crate::{reference, simd, Real};
use rayon::prelude::*;

/// `Σ_i [max(x,0) − x·y + ln(1 + e^{−|x|})]` — the stable form of `−y ln σ(x) − (1−y) ln(1−σ(x))`.
/// Returns the *sum*; callers divide by the batch size.
///
/// Scalar for every type: it runs once per step over `B·T` logits (a few thousand), where a
/// SIMD `ln_1p` would not pay for its error analysis.
pub fn bce_with_logits_sum<T: Real>(logits: &[T], labels: &[T]) -> T {
    reference::bce_with_logits_sum(logits, labels)
}

/// `dx[i] += scale · (σ(x_i) − y_i)`.
pub fn bce_with_logits_backward<T: Real>(dx: &mut [T], logits: &[T], labels: &[T], scale: T) {
    if !is_f32::<T>() {
        return reference::bce_with_logits_backward(dx, logits, labels, scale);
    }
    let len = dx.len().min(logits.len()).min(labels.len());
    let (d, x, y) = (
        &mut f32s_mut(dx)[..len],
        &f32s(logits)[..len],
        &f32s(labels)[..len],
    );
    let s = f32v(scale);
    let path = simd::simd_path();
    if worth(len) {
        d.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK).zip(y.par_chunks(CHUNK)))
            .for_each(|(d, (x, y))| simd::bce_backward(path, d, x, y, s));
    } else {
        simd::bce_backward(path, d, x, y, s);
    }
}
