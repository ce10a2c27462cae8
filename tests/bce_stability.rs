//! BCE-with-logits stays finite and exact for |logit| ≥ 100 (issue: "numerically stable
//! BCE-with-logits, finite for |logit| ≥ 100"), in f32 and f64.

use hmdn_cpu::model::head::{task_loss_backward, task_loss_forward};

/// Exact reference in f64 for one logit: softplus(x) − x·y, with softplus evaluated stably.
fn bce_exact(x: f64, y: f64) -> f64 {
    let softplus = if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    };
    softplus - x * y
}

#[test]
fn bce_is_finite_and_exact_at_extreme_logits() {
    let logits = [-1e4, -1000.0, -100.0, -30.0, 0.0, 30.0, 100.0, 1000.0, 1e4];
    for &y in &[0.0, 1.0] {
        for &x in &logits {
            let want = bce_exact(x, y);
            let l64 = task_loss_forward(&[x], &[y], 1, 1);
            let l32 = task_loss_forward(&[x as f32], &[y as f32], 1, 1) as f64;
            assert!(
                l64.is_finite() && l32.is_finite(),
                "x={x} y={y}: {l64} {l32}"
            );
            assert!(
                (l64 - want).abs() <= 1e-12 * want.abs().max(1.0),
                "f64 x={x} y={y}: {l64} vs {want}"
            );
            assert!(
                (l32 - want).abs() <= 1e-6 * want.abs().max(1.0),
                "f32 x={x} y={y}: {l32} vs {want}"
            );
            // d/dx = sigmoid(x) − y: exactly 0 or ±1 in the tails, never NaN.
            let mut d64 = [0.0f64];
            task_loss_backward(&mut d64, &[x], &[y], 1, 1);
            let mut d32 = [0.0f32];
            task_loss_backward(&mut d32, &[x as f32], &[y as f32], 1, 1);
            let sig = 1.0 / (1.0 + (-x).exp());
            assert!(d64[0].is_finite() && d32[0].is_finite(), "x={x} y={y}");
            assert!(
                (d64[0] - (sig - y)).abs() <= 1e-15,
                "f64 grad x={x} y={y}: {}",
                d64[0]
            );
            assert!(
                (d32[0] as f64 - (sig - y)).abs() <= 1e-7,
                "f32 grad x={x} y={y}: {}",
                d32[0]
            );
        }
    }
}
