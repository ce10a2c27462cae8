//! How often, and for how long, each CPU stops running this process: one spinning thread per
//! CPU reads the clock in a tight loop and records every gap above 2 µs (time in which the
//! thread did not run: a hypervisor or kernel preemption, an interrupt).
//!
//! Why: a two-thread training step waits at every join for the slower thread, so a stall on
//! either CPU stalls the step, while a one-thread run only loses its own CPU's stalls. This
//! measures the stall budget the host imposes, apart from anything the engine does.
//!
//! `cargo run --release -p hmdn-kernels --example vcpu_stalls -- [seconds] [threads]`
//! (defaults: 10 s, one thread per available CPU). Threads are not pinned; with as many
//! threads as CPUs the scheduler keeps one on each.

use std::time::{Duration, Instant};

/// Upper bounds (exclusive) of the gap histogram's bins, in nanoseconds.
const BINS_NS: [u64; 7] = [
    5_000, 20_000, 100_000, 500_000, 1_000_000, 5_000_000, 20_000_000,
];

/// Names of the histogram's bins: [`BINS_NS`]'s ranges, then everything above the last.
const BIN_LABELS: [&str; BINS_NS.len() + 1] = [
    "2-5us",
    "5-20us",
    "20-100us",
    "0.1-0.5ms",
    "0.5-1ms",
    "1-5ms",
    "5-20ms",
    ">20ms",
];

/// Gaps longer than this count as stalls (a clock read takes ~20 ns).
const MIN_GAP_NS: u64 = 2_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: f64 = args.get(1).map_or(10.0, |s| s.parse().expect("seconds"));
    let threads: usize = args.get(2).map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |s| s.parse().expect("threads"),
    );
    let run = Duration::from_secs_f64(secs);
    let handles: Vec<_> = (0..threads)
        .map(|_| std::thread::spawn(move || spin(run)))
        .collect();
    for (t, h) in handles.into_iter().enumerate() {
        let s = h.join().expect("spinner");
        let hist: Vec<String> = BIN_LABELS
            .iter()
            .zip(&s.bins)
            .map(|(l, n)| format!("{l} {n}"))
            .collect();
        println!(
            "thread {t}: {:.2}% of {:.1} s lost in gaps > 2 us, longest {:.2} ms; gaps: {}",
            100.0 * s.lost_ns as f64 / s.total_ns as f64,
            s.total_ns as f64 * 1e-9,
            s.max_ns as f64 * 1e-6,
            hist.join(", ")
        );
    }
}

/// One thread's record.
struct Stalls {
    total_ns: u64,
    lost_ns: u64,
    max_ns: u64,
    bins: [u64; BINS_NS.len() + 1],
}

/// Reads the clock until `run` has passed, recording every gap between two reads above
/// [`MIN_GAP_NS`].
fn spin(run: Duration) -> Stalls {
    let start = Instant::now();
    let mut prev = start;
    let mut s = Stalls {
        total_ns: 0,
        lost_ns: 0,
        max_ns: 0,
        bins: [0; BINS_NS.len() + 1],
    };
    loop {
        let now = Instant::now();
        let gap = now.duration_since(prev).as_nanos() as u64;
        prev = now;
        if gap > MIN_GAP_NS {
            s.lost_ns += gap;
            s.max_ns = s.max_ns.max(gap);
            let bin = BINS_NS
                .iter()
                .position(|&b| gap < b)
                .unwrap_or(BINS_NS.len());
            s.bins[bin] += 1;
        }
        if now.duration_since(start) >= run {
            s.total_ns = now.duration_since(start).as_nanos() as u64;
            return s;
        }
    }
}
