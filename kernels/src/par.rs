//! Fixed-size work splitting shared by the elementwise and row kernels.
//!
//! Chunk sizes are constants (never derived from the thread count), and every kernel that
//! uses them writes disjoint outputs, so a result never depends on how many threads ran it.

/// Elements per rayon task for streaming kernels: 64 KiB of f32, enough to amortise a task.
pub(crate) const CHUNK: usize = 1 << 14;

/// Whether a kernel over `len` elements is worth splitting across threads.
#[inline]
pub(crate) fn worth(len: usize) -> bool {
    len >= 2 * CHUNK && rayon::current_num_threads() > 1
}

/// Rows of width `n` per task so that a task covers about [`CHUNK`] elements.
#[inline]
pub(crate) fn rows_per_task(n: usize) -> usize {
    (CHUNK / n.max(1)).max(1)
}
