//! Area under the ROC curve (ties get the average rank).

/// AUC of `scores` against 0/1 `labels` (Mann–Whitney U with average ranks for ties).
/// `None` when only one class is present.
pub fn auc(scores: &[f32], labels: &[f32]) -> Option<f64> {
    let n = scores.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut pos, mut rank_sum) = (0.0f64, 0.0f64);
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        // ranks i+1 ..= j+1 share their average
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &o in &order[i..=j] {
            if labels[o] > 0.5 {
                pos += 1.0;
                rank_sum += avg;
            }
        }
        i = j + 1;
    }
    let neg = n as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return None;
    }
    Some((rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg))
}
