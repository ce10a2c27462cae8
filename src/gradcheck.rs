//! Finite-difference gradient checking (central differences, in `f64`).
//!
//! Relative error is `|a − n| / max(|a|, |n|, REL_FLOOR)`: for gradient entries smaller than
//! `REL_FLOOR` in magnitude it degrades to an absolute error scaled by `1/REL_FLOOR`, so exact
//! zeros (dead ReLUs, unselected codes) are checked without dividing round-off by zero.

/// Step of the central difference. With f64 the truncation error is O(EPS²)·|f'''| ≈ 1e-12
/// and the round-off error ≈ 1e-16·|L|/EPS ≈ 1e-10·|L|.
pub const EPS: f64 = 1e-6;
/// Denominator floor of the relative error (see module docs).
pub const REL_FLOOR: f64 = 1e-6;
/// Tolerance on the maximum relative error for a check to pass (issue: ≤ 1e-6).
pub const TOLERANCE: f64 = 1e-6;

/// One row of a gradient-check report.
#[derive(Clone, Debug)]
pub struct GradReport {
    /// Parameter or input name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Entries compared.
    pub checked: usize,
    /// Largest |analytic − numeric|.
    pub max_abs: f64,
    /// Largest relative error (see module docs).
    pub max_rel: f64,
}

impl GradReport {
    /// `true` when the maximum relative error is within [`TOLERANCE`].
    pub fn passes(&self) -> bool {
        self.max_rel <= TOLERANCE && self.max_rel.is_finite()
    }
}

impl std::fmt::Display for GradReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<40} {:<14} n={:<6} max_abs={:.3e} max_rel={:.3e}",
            self.name,
            format!("{:?}", self.shape),
            self.checked,
            self.max_abs,
            self.max_rel
        )
    }
}

/// Relative error with a floor (see module docs).
pub fn rel_err(analytic: f64, numeric: f64) -> f64 {
    (analytic - numeric).abs() / analytic.abs().max(numeric.abs()).max(REL_FLOOR)
}

/// Central-difference derivative of `loss` at `x` along coordinate `i`; `x` is restored.
pub fn central_diff(x: &mut [f64], i: usize, loss: &mut impl FnMut(&[f64]) -> f64) -> f64 {
    let orig = x[i];
    x[i] = orig + EPS;
    let lp = loss(x);
    x[i] = orig - EPS;
    let lm = loss(x);
    x[i] = orig;
    (lp - lm) / (2.0 * EPS)
}

/// Compares `analytic[i]` with the central difference of `loss` for each `i` in `indices`.
/// Returns `(max_abs, max_rel)`.
pub fn check_coords(
    x: &mut [f64],
    analytic: &[f64],
    indices: impl IntoIterator<Item = usize>,
    mut loss: impl FnMut(&[f64]) -> f64,
) -> (f64, f64, usize) {
    let (mut max_abs, mut max_rel, mut n) = (0.0f64, 0.0f64, 0usize);
    for i in indices {
        let num = central_diff(x, i, &mut loss);
        max_abs = max_abs.max((analytic[i] - num).abs());
        max_rel = max_rel.max(rel_err(analytic[i], num));
        n += 1;
    }
    (max_abs, max_rel, n)
}

/// Up to `max` coordinates of `0..len`, evenly spread (all of them when `len <= max`).
pub fn sample_indices(len: usize, max: usize) -> Vec<usize> {
    if len <= max {
        return (0..len).collect();
    }
    (0..max).map(|j| j * len / max).collect()
}
