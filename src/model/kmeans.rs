//! Lloyd's k-means on the rows of a matrix, used to initialise RQ codebooks (SPEC §2).
//!
//! Runs once, on the first training batch, so it may allocate. Everything is deterministic
//! given the rng: seeding draws from the rng in a fixed order, assignment is the VQ argmin
//! kernel (ties → lowest index) and centroid sums run over rows in order, in `f64`.
//!
//! Shapes: `data` `[N, w]`, `centroids` `[K, w]`, `assign` `[N]`.

use hmdn_kernels::vq::{argmin_sq_l2, sq_norms};
use hmdn_kernels::Real;
use rand::Rng;

/// Overwrites `centroids` `[K, w]` with `K` distinct rows of `data` `[N, w]` picked in random
/// order (a partial Fisher–Yates shuffle driven by `rng`). "Distinct" compares values bit for
/// bit. When `data` has fewer than `K` distinct rows, the remaining centroids are copies of
/// rows drawn uniformly at random: they duplicate an earlier centroid, lose every tie to it,
/// and stay unused (dead) until something re-seeds them.
///
/// # Panics
/// If `data` has no rows while `K > 0`, or the slices are not multiples of `w` (programmer
/// errors).
#[track_caller]
pub fn seed_distinct_rows<T: Real, R: Rng>(centroids: &mut [T], data: &[T], w: usize, rng: &mut R) {
    assert!(w > 0, "k-means: row width must be positive");
    assert!(
        centroids.len().is_multiple_of(w) && data.len().is_multiple_of(w),
        "k-means: buffers are not whole rows of width {w}"
    );
    let k = centroids.len() / w;
    let n = data.len() / w;
    if k == 0 {
        return;
    }
    assert!(n > 0, "k-means: no data rows to seed {k} centroids from");
    let row = |i: usize| &data[i * w..(i + 1) * w];
    let same = |a: &[T], b: &[T]| a.iter().zip(b).all(|(x, y)| x.to_f64() == y.to_f64());
    let mut order: Vec<usize> = (0..n).collect();
    let mut picked = 0usize;
    let mut next = 0usize;
    while picked < k && next < n {
        // Partial Fisher–Yates: position `next` receives a uniformly drawn remaining index.
        let j = rng.gen_range(next..n);
        order.swap(next, j);
        let cand = row(order[next]);
        next += 1;
        let dup = (0..picked).any(|c| same(&centroids[c * w..(c + 1) * w], cand));
        if !dup {
            centroids[picked * w..(picked + 1) * w].copy_from_slice(cand);
            picked += 1;
        }
    }
    for c in picked..k {
        let i = rng.gen_range(0..n);
        centroids[c * w..(c + 1) * w].copy_from_slice(row(i));
    }
}

/// Nearest-centroid assignment: `assign[i] = argmin_k ||data_i − centroid_k||²` (ties → lowest
/// k). `norms` `[K]` is scratch for the centroid norms.
pub fn assign_nearest<T: Real>(
    assign: &mut [u32],
    norms: &mut [T],
    data: &[T],
    centroids: &[T],
    w: usize,
) {
    sq_norms(norms, centroids, w);
    argmin_sq_l2(assign, data, centroids, norms, w);
}

/// Running per-centroid sums for one Lloyd update (`f64`, so an `f32` batch of a few
/// thousand rows does not lose the small residuals of deep levels to rounding).
#[derive(Clone, Debug)]
pub struct CentroidSums {
    w: usize,
    /// Sum of assigned rows `[K, w]`.
    sums: Vec<f64>,
    /// Rows assigned to each centroid `[K]`.
    counts: Vec<usize>,
}

impl CentroidSums {
    /// Zeroed sums for `k` centroids of width `w`.
    pub fn new(k: usize, w: usize) -> Self {
        CentroidSums {
            w,
            sums: vec![0.0; k * w],
            counts: vec![0; k],
        }
    }

    /// Forgets everything added so far.
    pub fn clear(&mut self) {
        self.sums.fill(0.0);
        self.counts.fill(0);
    }

    /// Adds every row of `data` `[N, w]` to the centroid it is assigned to (`assign` `[N]`).
    pub fn add<T: Real>(&mut self, data: &[T], assign: &[u32]) {
        let w = self.w;
        for (row, &a) in data.chunks_exact(w).zip(assign) {
            let a = a as usize;
            for (s, &v) in self.sums[a * w..(a + 1) * w].iter_mut().zip(row) {
                *s += v.to_f64();
            }
            self.counts[a] += 1;
        }
    }

    /// Moves every centroid that received rows to their mean; centroids with no rows keep
    /// their previous value (an empty cluster is left where it was rather than re-seeded, so
    /// one Lloyd step never moves a centroid without data behind it). Returns how many
    /// clusters were empty.
    pub fn update<T: Real>(&self, centroids: &mut [T]) -> usize {
        let w = self.w;
        let mut empty = 0;
        for (c, (cent, &n)) in centroids.chunks_exact_mut(w).zip(&self.counts).enumerate() {
            if n == 0 {
                empty += 1;
                continue;
            }
            let inv = 1.0 / n as f64;
            for (v, &s) in cent.iter_mut().zip(&self.sums[c * w..(c + 1) * w]) {
                *v = T::from_f64(s * inv);
            }
        }
        empty
    }
}

/// Plain k-means on `data` `[N, w]`: seeds `centroids` `[K, w]` with distinct random rows
/// ([`seed_distinct_rows`]), then runs `iters` Lloyd iterations (assign, move to means).
/// Leaves the final assignment in `assign` `[N]` (consistent with the returned centroids).
pub fn lloyd<T: Real, R: Rng>(
    centroids: &mut [T],
    assign: &mut [u32],
    data: &[T],
    w: usize,
    iters: usize,
    rng: &mut R,
) {
    let k = centroids.len() / w.max(1);
    seed_distinct_rows(centroids, data, w, rng);
    let mut norms = vec![T::ZERO; k];
    let mut sums = CentroidSums::new(k, w);
    for _ in 0..iters {
        assign_nearest(assign, &mut norms, data, centroids, w);
        sums.clear();
        sums.add(data, assign);
        sums.update(centroids);
    }
    assign_nearest(assign, &mut norms, data, centroids, w);
}

/// Mean over rows of the squared distance to the assigned centroid (the k-means objective).
pub fn distortion<T: Real>(data: &[T], centroids: &[T], assign: &[u32], w: usize) -> f64 {
    let n = data.len() / w.max(1);
    if n == 0 {
        return 0.0;
    }
    let mut acc = 0.0f64;
    for (row, &a) in data.chunks_exact(w).zip(assign) {
        let c = &centroids[a as usize * w..(a as usize + 1) * w];
        for (&x, &y) in row.iter().zip(c) {
            let t = x.to_f64() - y.to_f64();
            acc += t * t;
        }
    }
    acc / n as f64
}
