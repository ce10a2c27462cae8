//! Area under the ROC curve (ties get the average rank).

use crate::reference::auc_from_order;
use rayon::prelude::*;

/// AUC of `scores` against 0/1 `labels` (Mann–Whitney U with average ranks for ties).
/// `None` when only one class is present.
///
/// Sorts positions with rayon's parallel sort under the total order (score by
/// `f32::total_cmp`, then position), which has no ties, so the order — and every rank sum —
/// is the same for any thread count and equal to the reference's stable sort.
pub fn auc(scores: &[f32], labels: &[f32]) -> Option<f64> {
    let n = scores.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.par_sort_unstable_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    auc_from_order(&order, scores, labels)
}
