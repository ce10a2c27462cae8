//! Fixed-size work splitting shared by the elementwise and row kernels, and the serial scope.
//!
//! Chunk sizes are constants (never derived from the thread count), and every kernel that
//! uses them writes disjoint outputs, so a result never depends on how many threads ran it.

use std::cell::Cell;

/// Elements per rayon task for streaming kernels: 64 KiB of f32, enough to amortise a task.
pub(crate) const CHUNK: usize = 1 << 14;

thread_local! {
    /// Set inside [`serial`]: kernels on this thread run on the calling thread only.
    static SERIAL: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with every kernel it calls on this thread kept on this thread (no rayon tasks).
///
/// For callers that already run one task per core (the model's row chunks): splitting each
/// kernel again would only add scheduling and re-packing. Results are unchanged — every kernel
/// is bit-identical for any split, serial included.
pub fn serial<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            SERIAL.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SERIAL.with(|s| s.replace(true)));
    f()
}

/// Threads a kernel may use here: 1 inside [`serial`], else the current rayon pool's size.
#[inline]
pub fn threads() -> usize {
    if SERIAL.with(|s| s.get()) {
        1
    } else {
        rayon::current_num_threads()
    }
}

/// Whether a kernel over `len` elements is worth splitting across threads.
#[inline]
pub(crate) fn worth(len: usize) -> bool {
    len >= 2 * CHUNK && threads() > 1
}

/// Rows of width `n` per task so that a task covers about [`CHUNK`] elements.
#[inline]
pub(crate) fn rows_per_task(n: usize) -> usize {
    (CHUNK / n.max(1)).max(1)
}
