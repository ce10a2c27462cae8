//! Finite-difference gradient checking (central differences, in `f64`).
//!
//! Relative error is `|a − n| / max(|a|, |n|, REL_FLOOR)`: for gradient entries smaller than
//! `REL_FLOOR` in magnitude it degrades to an absolute error scaled by `1/REL_FLOOR`, so exact
//! zeros (dead ReLUs, unselected codes) are checked without dividing round-off by zero.

use crate::model::Model;
use crate::params::ParamKind;
use crate::{Batch, Real};

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
        st.add(analytic[i], f0, lp, lm, EPS, EPS);
    }
    st
}

impl CoordStats {
    /// Folds one coordinate in: `f0`, `lp`, `lm` are the loss at the point and after moving
    /// the coordinate up by `hp` and down by `hm` (steps as actually taken, which differ from
    /// the nominal one after rounding to a lower precision). Applies the kink rule of
    /// [`check_coords_kinks`].
    pub fn add(&mut self, analytic: f64, f0: f64, lp: f64, lm: f64, hp: f64, hm: f64) {
        let num = (lp - lm) / (hp + hm);
        let rel = rel_err(analytic, num);
        if rel > TOLERANCE {
            let (sp, sm) = ((lp - f0) / hp, (f0 - lm) / hm);
            let scale = sp.abs().max(sm.abs()).max(KINK_FLOOR);
            if (sp - sm).abs() > KINK_GAP * scale {
                self.skipped += 1;
                return;
            }
        }
        self.max_abs = self.max_abs.max((analytic - num).abs());
        self.max_rel = self.max_rel.max(rel);
        self.checked += 1;
    }
}

/// Coordinates checked per parameter tensor by [`check_model`].
pub const MODEL_COORDS_PER_TENSOR: usize = 40;
/// Largest step `h` of the whole-model check (see [`check_model`]).
pub const MODEL_STEP: f64 = 2e-3;
/// Symmetric pairs of evaluations per coordinate in the whole-model check.
pub const STENCIL_PAIRS: usize = 8;

/// Least-squares slope at 0 of an odd function sampled as `d_k = f(t_k)` (t in (0, 1]):
/// fits `d = α·t + β·t³ + γ·t⁵` and returns α. With several sample pairs the fit averages the
/// rounding noise of the individual evaluations while the cubic and quintic terms absorb the
/// truncation error of a plain central difference.
fn odd_poly_slope(d: &[f64], t: &[f64]) -> f64 {
    // Normal equations M·c = r with basis (t, t³, t⁵).
    let mut m = [[0.0f64; 3]; 3];
    let mut r = [0.0f64; 3];
    for (&dk, &tk) in d.iter().zip(t) {
        let phi = [tk, tk * tk * tk, tk.powi(5)];
        for a in 0..3 {
            r[a] += phi[a] * dk;
            for b in 0..3 {
                m[a][b] += phi[a] * phi[b];
            }
        }
    }
    // Gaussian elimination with partial pivoting on the 3×3 system.
    for col in 0..3 {
        let piv = (col..3)
            .max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))
            .expect("non-empty");
        m.swap(col, piv);
        r.swap(col, piv);
        for row in col + 1..3 {
            let f = m[row][col] / m[col][col];
            let pivot = m[col];
            for (v, &p) in m[row][col..].iter_mut().zip(&pivot[col..]) {
                *v -= f * p;
            }
            r[row] -= f * r[col];
        }
    }
    let mut c = [0.0f64; 3];
    for row in (0..3).rev() {
        let mut v = r[row];
        for k in row + 1..3 {
            v -= m[row][k] * c[k];
        }
        c[row] = v / m[row][row];
    }
    c[0]
}

/// Whole-model gradient check in `f64` (SPEC §2): one unfrozen forward + backward on `batch`
/// gives the analytic gradient of the total loss; then, with the model frozen (argmin codes
/// and stop-gradient values fixed), every parameter tensor has up to
/// [`MODEL_COORDS_PER_TENSOR`] coordinates compared with a numeric derivative of the total
/// loss. Embedding tables are checked on the rows the batch touched (their row-sparse
/// gradient made dense with
/// [`RowGrad::add_to_dense`](crate::model::embedding::RowGrad::add_to_dense)) plus one
/// untouched row, whose gradient must be exactly zero. Parameters are restored, the model is
/// left unfrozen and its caches hold an ordinary forward of `batch`.
///
/// Numeric derivative: central differences `(L(x+s) − L(x−s))/2` at [`STENCIL_PAIRS`] steps
/// `s = h·k/8`, `k = 1..8`, `h` = [`MODEL_STEP`], fitted by least squares with
/// `α·s + β·s³ + γ·s⁵` (`odd_poly_slope`); α is the derivative. Why not one central
/// difference at 1e-6: a whole model's total loss is only known to about one ulp (≈ 4e-16
/// for L ≈ 3), so a step `s` leaves ≈ ulp/s of error — ≈ 1e-9 at 1e-6, far above 1e-6
/// relative on the many gradient entries of order 1e-5 … 1e-6 of a small model. A step of
/// 2e-3 brings that to ≈ 1e-13 … 1e-12, and the cubic and quintic terms absorb the
/// truncation error that a plain central difference would have at that step.
///
/// Kinks: a coordinate whose perturbations change any ReLU's sign
/// ([`Model::relu_pattern`]) is skipped and counted, not compared — an exact test, not a
/// heuristic.
///
/// # Panics
/// If `batch` has no labels (there is no loss to differentiate).
pub fn check_model(model: &mut Model<f64>, batch: &Batch) -> Vec<GradReport> {
    check_model_with(model, batch, MODEL_STEP, MODEL_COORDS_PER_TENSOR)
}

/// [`check_model`] for any precision, with largest step `h` and up to `max_coords`
/// coordinates per tensor. In `f32` the loss itself is only known to ≈ 1e-7 relative, so use
/// `h` ≈ 3e-2 and read the absolute errors (≈ 1e-5 is good) as a smoke test of the f32 build,
/// not the relative ones against [`TOLERANCE`].
///
/// # Panics
/// If `batch` has no labels.
pub fn check_model_with<T: Real>(
    model: &mut Model<T>,
    batch: &Batch,
    h: f64,
    max_coords: usize,
) -> Vec<GradReport> {
    assert!(!batch.labels.is_empty(), "a gradient check needs labels");
    model.set_frozen(false);
    model.forward(batch);
    model.backward(batch);
    // Dense view of every gradient: embedding tables from their row gradients.
    for s in &model.params.specs {
        if s.kind == ParamKind::Embedding {
            model.params.grads[s.range()].fill(T::ZERO);
        }
    }
    let mut touched: Vec<Vec<u32>> = vec![Vec::new(); model.params.specs.len()];
    for rg in model.row_grads() {
        touched[rg.table.0].extend_from_slice(&rg.rows);
    }
    let row_grads = model.row_grads().to_vec();
    for rg in &row_grads {
        rg.add_to_store(&mut model.params);
    }
    let analytic: Vec<f64> = model.params.grads.iter().map(|g| g.to_f64()).collect();

    model.set_frozen(true);
    model.forward(batch);
    let (mut pattern0, mut pattern) = (Vec::new(), Vec::new());
    model.relu_pattern(&mut pattern0);
    let mut reports = Vec::new();
    for (p, spec) in model.params.specs.clone().iter().enumerate() {
        let coords: Vec<usize> = match spec.kind {
            ParamKind::Dense => sample_indices(spec.len, max_coords),
            ParamKind::Embedding => {
                let e = spec.shape.get(1).copied().unwrap_or(1).max(1);
                let mut rows = touched[p].clone();
                rows.sort_unstable();
                rows.dedup();
                let all: Vec<usize> = rows
                    .iter()
                    .flat_map(|&r| (r as usize * e)..(r as usize + 1) * e)
                    .collect();
                let mut pick: Vec<usize> =
                    sample_indices(all.len(), max_coords.saturating_sub(1).max(1))
                        .into_iter()
                        .map(|j| all[j])
                        .collect();
                let untouched =
                    (0..spec.len / e).find(|&r| rows.binary_search(&(r as u32)).is_err());
                if let Some(r) = untouched {
                    pick.push(r * e);
                }
                pick
            }
        };
        let mut st = CoordStats::default();
        'coords: for &j in &coords {
            let i = spec.offset + j;
            let orig = model.params.values()[i];
            // Antisymmetric differences d_k = (L(x + s_k) − L(x − s_k)) / 2 at
            // s_k = h·k/STENCIL_PAIRS, with the steps actually taken after rounding to T.
            let mut d = [0.0f64; STENCIL_PAIRS];
            let mut t = [0.0f64; STENCIL_PAIRS];
            for k in 0..STENCIL_PAIRS {
                let s = h * (k + 1) as f64 / STENCIL_PAIRS as f64;
                let mut l = [0.0f64; 2];
                let mut taken = [0.0f64; 2];
                for (side, sign) in [1.0, -1.0].into_iter().enumerate() {
                    let v = T::from_f64(orig.to_f64() + sign * s);
                    model.params.values_mut()[i] = v;
                    l[side] = model.forward(batch).total.to_f64();
                    taken[side] = v.to_f64() - orig.to_f64();
                    model.relu_pattern(&mut pattern);
                    if pattern != pattern0 {
                        model.params.values_mut()[i] = orig;
                        st.skipped += 1;
                        continue 'coords;
                    }
                }
                // Rounding may make the two steps differ slightly; use their mean.
                let sk = (taken[0] - taken[1]) / 2.0;
                d[k] = (l[0] - l[1]) / 2.0;
                t[k] = sk / h;
            }
            model.params.values_mut()[i] = orig;
            let num = odd_poly_slope(&d, &t) / h;
            let a = analytic[i];
            st.max_abs = st.max_abs.max((a - num).abs());
            st.max_rel = st.max_rel.max(rel_err(a, num));
            st.checked += 1;
        }
        reports.push(GradReport {
            name: spec.name.clone(),
            shape: spec.shape.clone(),
            checked: st.checked,
            skipped: st.skipped,
            max_abs: st.max_abs,
            max_rel: st.max_rel,
        });
    }
    model.set_frozen(false);
    model.forward(batch);
    reports
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

/// Categorical fields of the tiny gradient-check configuration (name, vocabulary size).
pub const TINY_FIELDS: [(&str, usize); 4] = [
    ("user_gender", 3),
    ("city", 5),
    ("item", 7),
    ("domain_id", 4),
];

/// The small configuration gradient checks run on: 4 fields (3 of them distribution fields),
/// 2 numerics, 2 tasks, e = 3, hidden [5, 4, 3], K = 5, D = 3, random-normal codebooks.
pub fn tiny_config(model: crate::config::ModelKind) -> crate::config::ModelConfig {
    use crate::config::{FieldSpec, ModelConfig};
    let mut cfg = ModelConfig {
        model,
        fields: TINY_FIELDS
            .iter()
            .map(|&(n, v)| FieldSpec {
                name: n.to_string(),
                vocab_size: v,
            })
            .collect(),
        numeric: vec!["price".into(), "age".into()],
        distribution: vec!["user_gender".into(), "city".into(), "domain_id".into()],
        domain: None,
        tasks: vec!["click".into(), "purchase".into()],
        embed_dim: 3,
        hidden: vec![5, 4, 3],
        n_experts: 3,
        gatenu_hidden: 4,
        cross_layers: 3,
        // Embeddings at the scale of the other activations, so that their gradients are not
        // tiny next to the loss's rounding error.
        embed_init_std: 0.25,
        ..ModelConfig::default()
    };
    cfg.rq.codebook_size = 5;
    cfg.rq.depth = 3;
    cfg.rq.kmeans_init = false;
    cfg
}

/// Owned data of one random batch for a configuration (uniform ids, normal numerics, 0/1
/// labels).
#[derive(Clone, Debug)]
pub struct RandomBatch {
    /// Rows.
    pub rows: usize,
    /// `[B, F]` indices.
    pub cat: Vec<u32>,
    /// `[B, N]` numerics.
    pub num: Vec<f32>,
    /// `[B, T]` labels.
    pub labels: Vec<f32>,
}

impl RandomBatch {
    /// Draws `rows` rows for `cfg` from `rng`.
    pub fn new<R: rand::Rng>(cfg: &crate::config::ModelConfig, rows: usize, rng: &mut R) -> Self {
        let mut cat = Vec::with_capacity(rows * cfg.fields.len());
        for _ in 0..rows {
            for f in &cfg.fields {
                cat.push(rng.gen_range(0..f.vocab_size) as u32);
            }
        }
        let num = (0..rows * cfg.numeric.len())
            .map(|_| rng.sample::<f64, _>(rand_distr::StandardNormal) as f32)
            .collect();
        let labels = (0..rows * cfg.tasks.len())
            .map(|_| rng.gen_range(0..2) as f32)
            .collect();
        RandomBatch {
            rows,
            cat,
            num,
            labels,
        }
    }

    /// The batch view.
    pub fn batch(&self) -> Batch<'_> {
        self.head(self.rows)
    }

    /// The view of the first `rows` rows (a smaller batch from the same draw).
    ///
    /// # Panics
    /// If `rows` is more than the batch has.
    pub fn head(&self, rows: usize) -> Batch<'_> {
        assert!(rows <= self.rows, "head: {rows} rows of {}", self.rows);
        let per_row = |len: usize| len.checked_div(self.rows).unwrap_or(0);
        Batch {
            rows,
            cat: &self.cat[..rows * per_row(self.cat.len())],
            num: &self.num[..rows * per_row(self.num.len())],
            labels: &self.labels[..rows * per_row(self.labels.len())],
        }
    }
}
