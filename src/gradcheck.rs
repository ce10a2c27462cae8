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
    /// Entries skipped because the loss has a kink (a ReLU or argmin switching) within one
    /// step of them (see [`check_coords_kinks`]).
    pub skipped: usize,
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
            "{:<40} {:<14} n={:<5} skipped={:<3} max_abs={:.3e} max_rel={:.3e}",
            self.name,
            format!("{:?}", self.shape),
            self.checked,
            self.skipped,
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

/// A one-sided-slope mismatch above this fraction of the slope marks a kink (see
/// [`check_coords_kinks`]).
pub const KINK_GAP: f64 = 1e-2;
/// Slope magnitude below which [`KINK_GAP`] is taken relative to this floor instead, so
/// round-off in tiny slopes is never mistaken for a kink.
pub const KINK_FLOOR: f64 = 1e-4;

/// Outcome of [`check_coords_kinks`] over a set of coordinates.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CoordStats {
    /// Largest |analytic − numeric| over the compared coordinates.
    pub max_abs: f64,
    /// Largest relative error ([`rel_err`]) over the compared coordinates.
    pub max_rel: f64,
    /// Coordinates compared.
    pub checked: usize,
    /// Coordinates skipped as kinks.
    pub skipped: usize,
}

/// Like [`check_coords`], but aware of non-smooth points: piecewise-smooth losses (ReLU) have
/// kinks, and a coordinate whose ±[`EPS`] perturbation crosses one gets a central difference
/// that averages two different slopes. Such a coordinate is *skipped* (and counted) when
///
/// 1. the central difference disagrees with the analytic value (`rel_err > TOLERANCE`), and
/// 2. the two one-sided slopes `(L(x+ε) − L(x))/ε` and `(L(x) − L(x−ε))/ε` differ by more
///    than [`KINK_GAP`]·max(|slopes|, [`KINK_FLOOR`]).
///
/// On a smooth loss the one-sided slopes differ by only ≈ ε·|L''| (≈ 1e-6 for O(1)
/// curvature), far below that threshold, so a wrong analytic gradient is still reported;
/// only a switching ReLU (or argmin) produces an O(1) change of slope inside the step.
pub fn check_coords_kinks(
    x: &mut [f64],
    analytic: &[f64],
    indices: impl IntoIterator<Item = usize>,
    mut loss: impl FnMut(&[f64]) -> f64,
) -> CoordStats {
    let mut st = CoordStats::default();
    let f0 = loss(x);
    for i in indices {
        let orig = x[i];
        x[i] = orig + EPS;
        let lp = loss(x);
        x[i] = orig - EPS;
        let lm = loss(x);
        x[i] = orig;
        let num = (lp - lm) / (2.0 * EPS);
        let rel = rel_err(analytic[i], num);
        if rel > TOLERANCE {
            let (sp, sm) = ((lp - f0) / EPS, (f0 - lm) / EPS);
            let scale = sp.abs().max(sm.abs()).max(KINK_FLOOR);
            if (sp - sm).abs() > KINK_GAP * scale {
                st.skipped += 1;
                continue;
            }
        }
        st.max_abs = st.max_abs.max((analytic[i] - num).abs());
        st.max_rel = st.max_rel.max(rel);
        st.checked += 1;
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relu(v: f64) -> f64 {
        v.max(0.0)
    }

    #[test]
    fn kinks_are_skipped_and_counted() {
        // L = 2·relu(x0) + 3·relu(x1) + x2²; x0 sits 0.3·EPS above the kink.
        let mut x = vec![0.3 * EPS, 0.7, -0.4];
        let analytic = vec![2.0, 3.0, -0.8];
        let st = check_coords_kinks(&mut x, &analytic, 0..3, |v| {
            2.0 * relu(v[0]) + 3.0 * relu(v[1]) + v[2] * v[2]
        });
        assert_eq!(st.skipped, 1);
        assert_eq!(st.checked, 2);
        assert!(st.max_rel <= TOLERANCE, "{st:?}");
        assert_eq!(x, vec![0.3 * EPS, 0.7, -0.4], "x restored");
    }

    #[test]
    fn wrong_gradients_of_smooth_losses_are_reported_not_skipped() {
        // L = Σ x_i²; analytic deliberately 1.5× too large on coordinate 1.
        let mut x = vec![0.5, -1.25, 2.0];
        let analytic = vec![1.0, -3.75, 4.0];
        let st = check_coords_kinks(&mut x, &analytic, 0..3, |v| v.iter().map(|a| a * a).sum());
        assert_eq!(st.skipped, 0);
        assert_eq!(st.checked, 3);
        assert!((st.max_rel - 1.0 / 3.0).abs() < 1e-6, "{st:?}");
    }
}
