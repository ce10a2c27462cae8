//! Binary cross-entropy with logits, finite for any finite logit.

use crate::act::sigmoid;
use crate::Real;

/// `Σ_i [max(x,0) − x·y + ln(1 + e^{−|x|})]` — the stable form of `−y ln σ(x) − (1−y) ln(1−σ(x))`.
/// Returns the *sum*; callers divide by the batch size.
pub fn bce_with_logits_sum<T: Real>(logits: &[T], labels: &[T]) -> T {
    let mut s = T::ZERO;
    for (&x, &y) in logits.iter().zip(labels) {
        s += x.max(T::ZERO) - x * y + (-x.abs()).exp().ln_1p();
    }
    s
}

/// `dx[i] += scale · (σ(x_i) − y_i)`.
pub fn bce_with_logits_backward<T: Real>(dx: &mut [T], logits: &[T], labels: &[T], scale: T) {
    for ((d, &x), &y) in dx.iter_mut().zip(logits).zip(labels) {
        *d += scale * (sigmoid(x) - y);
    }
}
