//! Evaluation metrics: AUC, logloss, gAUC, per-partition-cell AUC, Bayes AUC, and the
//! serialisable [`EvalReport`] written to `metrics.jsonl` / printed by `eval --json`.
//!
//! Conventions:
//! - AUC is the Mann–Whitney statistic with tied scores sharing their average rank
//!   ([`hmdn_kernels::auc::auc`]); `None` when a set has only one class.
//! - logloss is the mean binary cross-entropy in nats with probabilities clamped to
//!   [1e-7, 1 − 1e-7], so one confident mistake costs at most ln(1e7) ≈ 16.1 instead of ∞.
//! - gAUC = Σ_u n_u · AUC_u / Σ_u n_u over the users u whose rows hold both classes, n_u their
//!   row count (impression-weighted, as in the DIN paper); other users are left out.
//! - Partition cells are keyed by raw values, `gender=M|age=18-24`, and listed sorted by key.
//! - The Bayes AUC / logloss use the file's `p_true` column (true probability of the first
//!   task) as the prediction: the best any model can do on these rows.

use crate::data::Dataset;
use serde::{Deserialize, Serialize};

/// Probability clamp of [`logloss`].
pub const LOGLOSS_EPS: f64 = 1e-7;

/// AUC of `scores` against 0/1 `labels`; `None` with only one class.
///
/// # Panics
/// If the lengths differ (programmer error).
#[track_caller]
pub fn auc(scores: &[f32], labels: &[f32]) -> Option<f64> {
    assert_eq!(
        scores.len(),
        labels.len(),
        "scores and labels differ in length"
    );
    hmdn_kernels::auc::auc(scores, labels)
}

/// Mean binary cross-entropy of probabilities `probs` against 0/1 `labels` (0 for no rows).
///
/// # Panics
/// If the lengths differ (programmer error).
#[track_caller]
pub fn logloss(probs: &[f32], labels: &[f32]) -> f64 {
    assert_eq!(
        probs.len(),
        labels.len(),
        "probs and labels differ in length"
    );
    if probs.is_empty() {
        return 0.0;
    }
    let sum: f64 = probs
        .iter()
        .zip(labels)
        .map(|(&p, &y)| {
            let p = f64::from(p).clamp(LOGLOSS_EPS, 1.0 - LOGLOSS_EPS);
            if y > 0.5 {
                -p.ln()
            } else {
                -(1.0 - p).ln()
            }
        })
        .sum();
    sum / probs.len() as f64
}

/// Rows of each group: `(offsets [G+1], rows sorted by group, stable)` by counting sort.
fn group_rows(groups: &[u32], n_groups: usize) -> (Vec<usize>, Vec<u32>) {
    let mut offsets = vec![0usize; n_groups + 1];
    for &g in groups {
        offsets[g as usize + 1] += 1;
    }
    for i in 0..n_groups {
        offsets[i + 1] += offsets[i];
    }
    let mut next = offsets.clone();
    let mut rows = vec![0u32; groups.len()];
    for (r, &g) in groups.iter().enumerate() {
        rows[next[g as usize]] = r as u32;
        next[g as usize] += 1;
    }
    (offsets, rows)
}

/// Per-group AUCs: `(group, rows, positives, auc)` for each non-empty group.
fn group_aucs(
    scores: &[f32],
    labels: &[f32],
    groups: &[u32],
    n_groups: usize,
) -> Vec<(usize, usize, usize, Option<f64>)> {
    let (offsets, rows) = group_rows(groups, n_groups);
    let (mut s, mut l) = (Vec::new(), Vec::new());
    let mut out = Vec::new();
    for g in 0..n_groups {
        let members = &rows[offsets[g]..offsets[g + 1]];
        if members.is_empty() {
            continue;
        }
        s.clear();
        l.clear();
        s.extend(members.iter().map(|&r| scores[r as usize]));
        l.extend(members.iter().map(|&r| labels[r as usize]));
        let pos = l.iter().filter(|&&y| y > 0.5).count();
        out.push((g, members.len(), pos, hmdn_kernels::auc::auc(&s, &l)));
    }
    out
}

/// gAUC over groups (users) `groups[i] ∈ 0..n_groups`: `(gAUC, groups used, rows used)`, or
/// `None` if no group has both classes.
///
/// # Panics
/// If lengths differ or a group id is `>= n_groups` (programmer errors).
#[track_caller]
pub fn gauc(
    scores: &[f32],
    labels: &[f32],
    groups: &[u32],
    n_groups: usize,
) -> Option<(f64, usize, usize)> {
    assert_eq!(
        scores.len(),
        labels.len(),
        "scores and labels differ in length"
    );
    assert_eq!(
        scores.len(),
        groups.len(),
        "scores and groups differ in length"
    );
    let (mut num, mut rows, mut used) = (0.0f64, 0usize, 0usize);
    for (_, n, _, a) in group_aucs(scores, labels, groups, n_groups) {
        if let Some(a) = a {
            num += n as f64 * a;
            rows += n;
            used += 1;
        }
    }
    (used > 0).then(|| (num / rows as f64, used, rows))
}

/// Metrics of one partition cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CellMetrics {
    /// Cell key, e.g. `gender=M|age=18-24`.
    pub cell: String,
    /// Rows in the cell.
    pub rows: usize,
    /// Rows with label 1.
    pub positives: usize,
    /// AUC within the cell (`None` with one class).
    pub auc: Option<f64>,
}

/// Per-cell metrics for cells `cells[i]` (index into `names`), sorted by cell key.
///
/// # Panics
/// If lengths differ or a cell id is out of range (programmer errors).
#[track_caller]
pub fn cell_metrics(
    scores: &[f32],
    labels: &[f32],
    cells: &[u32],
    names: &[String],
) -> Vec<CellMetrics> {
    assert_eq!(
        scores.len(),
        labels.len(),
        "scores and labels differ in length"
    );
    assert_eq!(
        scores.len(),
        cells.len(),
        "scores and cells differ in length"
    );
    let mut out: Vec<CellMetrics> = group_aucs(scores, labels, cells, names.len())
        .into_iter()
        .map(|(g, rows, positives, auc)| CellMetrics {
            cell: names[g].clone(),
            rows,
            positives,
            auc,
        })
        .collect();
    out.sort_by(|a, b| a.cell.cmp(&b.cell));
    out
}

/// Metrics of one task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskMetrics {
    /// Task (label column) name.
    pub task: String,
    /// AUC over all rows.
    pub auc: Option<f64>,
    /// Mean clamped binary cross-entropy.
    pub logloss: f64,
    /// Fraction of rows with label 1.
    pub ctr: f64,
    /// Mean predicted probability (compare with `ctr` for calibration).
    pub mean_pred: f64,
    /// gAUC over the schema's `user` field.
    pub gauc: Option<f64>,
    /// Users with both classes (the ones gAUC averages over).
    pub gauc_users: usize,
    /// AUC of `p_true` (first task of files with a `p_true` column).
    pub bayes_auc: Option<f64>,
    /// Logloss of `p_true`.
    pub bayes_logloss: Option<f64>,
    /// Per partition cell, sorted by key.
    pub cells: Vec<CellMetrics>,
}

/// Everything `eval` reports for one dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Rows evaluated.
    pub rows: usize,
    /// The fields that define partition cells.
    pub partition: Vec<String>,
    /// One entry per task.
    pub tasks: Vec<TaskMetrics>,
}

/// Evaluates probabilities `preds` `[rows, T]` (row-major, dataset row order) on `ds`.
///
/// # Panics
/// If `preds.len() != rows · T` (programmer error).
#[track_caller]
pub fn evaluate(ds: &Dataset, preds: &[f32]) -> EvalReport {
    let (rows, t_count) = (ds.rows(), ds.n_tasks());
    assert_eq!(preds.len(), rows * t_count, "predictions must be [rows, T]");
    let cells = ds.partition().to_vec();
    let users = ds.user().map(|c| c.to_vec());
    let p_true = ds.p_true().map(|c| c.to_vec());
    let mut tasks = Vec::with_capacity(t_count);
    let mut scores = vec![0.0f32; rows];
    for t in 0..t_count {
        for (r, s) in scores.iter_mut().enumerate() {
            *s = preds[r * t_count + t];
        }
        let labels = ds.label(t).to_vec();
        let positives = labels.iter().filter(|&&y| y > 0.5).count();
        let g = users
            .as_ref()
            .and_then(|u| gauc(&scores, &labels, u, ds.n_users()));
        let bayes = p_true.as_ref().filter(|_| t == 0);
        tasks.push(TaskMetrics {
            task: ds.label_names()[t].clone(),
            auc: auc(&scores, &labels),
            logloss: logloss(&scores, &labels),
            ctr: positives as f64 / rows as f64,
            mean_pred: scores.iter().map(|&p| f64::from(p)).sum::<f64>() / rows as f64,
            gauc: g.map(|x| x.0),
            gauc_users: g.map_or(0, |x| x.1),
            bayes_auc: bayes.and_then(|p| auc(p, &labels)),
            bayes_logloss: bayes.map(|p| logloss(p, &labels)),
            cells: cell_metrics(&scores, &labels, &cells, ds.partition_cells()),
        });
    }
    EvalReport {
        rows,
        partition: ds.partition_fields().to_vec(),
        tasks,
    }
}
