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

/// Runs `f` on this thread while every other worker of the current rayon pool polls for
/// rayon jobs ([`rayon::yield_now`]) instead of going to sleep between them; returns `f`'s
/// result once they have all stopped.
///
/// Why: a training step is a chain of short parallel sections (the row chunks, the gradient
/// sums, the optimiser) with short serial stretches between them, long enough for an idle
/// rayon worker to go to sleep. Waking it again costs tens of microseconds on a virtual
/// machine (a futex wake, and an inter-processor interrupt to a halted virtual CPU): measured
/// on the reference machine, the second row chunk of a 1024-row step started ~40 µs after
/// the first. Polling workers pick a job up as soon as it is pushed.
///
/// The polling workers run whatever jobs they find, exactly as stealing workers would, so
/// results do not change (every kernel's result is independent of which thread runs what).
/// They burn their cores while `f` runs; between polls that found nothing they also yield to
/// the OS scheduler now and then, so that a thread outside the pool (a data loader) still
/// gets a turn. Outside a pool, inside [`serial`], with one thread or after
/// [`set_keep_workers_awake`]`(false)`, `f` just runs.
///
/// Measured in-process (`benches/records/ab.py --switch awake`, steps alternating with and
/// without it): hmdn-mmoe +7% at batch 256, +3% at 1024, +1% at 4096; hmdn-pepnet +3%, +1%,
/// −1%.
pub fn keep_workers_awake<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    let n = rayon::current_num_threads();
    let off = !KEEP_AWAKE.load(Ordering::Relaxed);
    if off || n < 2 || rayon::current_thread_index().is_none() || SERIAL.with(|s| s.get()) {
        return f();
    }
    let done = AtomicBool::new(false);
    // Set even if `f` panics, so that the pollers stop and the panic can propagate.
    struct Done<'a>(&'a AtomicBool);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let poll = || {
        let mut idle = 0u32;
        while !done.load(Ordering::Acquire) {
            match rayon::yield_now() {
                Some(rayon::Yield::Executed) => idle = 0,
                _ => {
                    idle = idle.wrapping_add(1);
                    if idle.is_multiple_of(POLLS_PER_OS_YIELD) {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
        }
    };
    let (r, ()) = rayon::join(
        || {
            let _done = Done(&done);
            f()
        },
        || pollers(n - 1, &poll),
    );
    r
}

/// Idle polls of [`keep_workers_awake`]'s workers between two yields to the OS scheduler.
const POLLS_PER_OS_YIELD: u32 = 256;

/// Runs `poll` on `k` workers (one here, the others through nested joins).
fn pollers(k: usize, poll: &(impl Fn() + Sync)) {
    if k <= 1 {
        poll();
    } else {
        rayon::join(poll, || pollers(k - 1, poll));
    }
}

/// Whether [`keep_workers_awake`] polls (on unless [`set_keep_workers_awake`] turned it off).
static KEEP_AWAKE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns [`keep_workers_awake`]'s polling on or off for the whole process (on by default;
/// off, it just runs its closure). For A/B measurements (`hmdn-cpu bench --serve`'s
/// `ab N awake`); results are the same bits either way.
pub fn set_keep_workers_awake(on: bool) {
    KEEP_AWAKE.store(on, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    fn pool(n: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
    }

    #[test]
    fn keep_workers_awake_runs_nested_parallel_work_and_returns_its_result() {
        for n in [1, 2, 3] {
            let got = pool(n).install(|| {
                keep_workers_awake(|| {
                    // Parallel sections inside: the pollers pick their jobs up.
                    let mut v: Vec<u64> = (0..100_000).collect();
                    v.par_chunks_mut(1000)
                        .for_each(|c| c.iter_mut().for_each(|x| *x *= 3));
                    let (a, b) = rayon::join(
                        || v[..50_000].iter().sum::<u64>(),
                        || v[50_000..].iter().sum::<u64>(),
                    );
                    a + b
                })
            });
            assert_eq!(got, 3 * (99_999 * 100_000 / 2), "{n} threads");
        }
        // Outside any pool it just runs.
        assert_eq!(keep_workers_awake(|| 7), 7);
    }

    #[test]
    fn keep_workers_awake_lets_a_panic_through_and_the_pool_goes_on() {
        let p = pool(2);
        let r = p.install(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                keep_workers_awake(|| -> u32 { panic!("inside") })
            }))
        });
        assert!(r.is_err());
        // The pollers stopped: the pool still runs work on both workers.
        let s: u64 = p.install(|| keep_workers_awake(|| (0..1000u64).into_par_iter().sum()));
        assert_eq!(s, 999 * 1000 / 2);
    }

    #[test]
    fn keep_workers_awake_can_be_switched_off() {
        set_keep_workers_awake(false);
        let got = pool(2).install(|| keep_workers_awake(rayon::current_thread_index));
        set_keep_workers_awake(true);
        assert!(got.is_some());
    }
}
