//! What does it cost two threads to read memory they share (as the two row chunks of a
//! training step read the same weights, packed copies and per-id tables), compared with each
//! reading its own copy (as two separate one-thread processes do)?
//!
//! Why: a two-thread step's row chunks run slower beside each other than one after the other,
//! while two one-thread processes do not slow each other (`benches/RESULTS.md`). The threads
//! of one process share cache lines that two processes do not. Each thread here, pass after
//! pass, reads a "weights" buffer and then its own "activations" buffer (by default 768 KiB
//! and 1 MiB: together most of the 2 MiB L2, as a chunk's weights and activations are). Four
//! ways to share the weights, each timed (the reading only, in µs per pass):
//! - `read-only`: one buffer, written once before the timing, read by both threads;
//! - `own`: each thread rewrites its own copy before each pass;
//! - `one-writes`: thread 0 rewrites the shared buffer before each pass (as one thread packs
//!   weights that both then read);
//! - `halves`: each thread rewrites half of the shared buffer before each pass (as the packs
//!   and per-id tables are split over the threads).
//!
//! `cargo run --release -p hmdn-kernels --example shared_reads -- [weights KiB] [activations
//! KiB] [passes]` (defaults: 768 1024 2000).

mod common;

use std::hint::black_box;
use std::sync::Barrier;
use std::time::Instant;

/// XOR of every word, eight independent lanes (so that the loop is bandwidth-bound).
#[inline(never)]
fn xor_all(v: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    for c in v.chunks_exact(8) {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a ^= x;
        }
    }
    acc.iter().fold(0, |a, b| a ^ b)
}

/// Overwrites `v` with values that depend on `seed` (so no pass is skipped).
#[inline(never)]
fn write_all(v: &mut [u64], seed: u64) {
    for (i, x) in v.iter_mut().enumerate() {
        *x = i as u64 ^ seed;
    }
}

/// Who writes the weights before each pass.
#[derive(Clone, Copy, PartialEq)]
enum Sharing {
    ReadOnly,
    Own,
    OneWrites,
    Halves,
}

/// The shared weights, written by the threads between barriers (each writes only its own
/// part, and nobody reads while anybody writes).
struct Shared(*mut u64, usize);
// SAFETY: the threads' writes and reads of the buffer are separated by barriers, and
// concurrent writes touch disjoint halves.
unsafe impl Sync for Shared {}

/// Reading µs per pass of each of two threads.
fn run(sharing: Sharing, w_words: usize, act_words: usize, passes: usize) -> [f64; 2] {
    let mut weights: Vec<u64> = (0..w_words as u64).collect();
    let shared = Shared(weights.as_mut_ptr(), w_words);
    let barrier = Barrier::new(2);
    let warm = 10;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..2usize)
            .map(|t| {
                let (shared, barrier) = (&shared, &barrier);
                s.spawn(move || {
                    let mut own: Vec<u64> = (0..w_words as u64).collect();
                    let act: Vec<u64> = (0..act_words as u64).map(|i| i * 3 + t as u64).collect();
                    let (mut r, mut read_s) = (0u64, 0.0f64);
                    // The part of the shared buffer this thread rewrites before each pass.
                    let half = w_words / 2;
                    let (lo, hi) = match (sharing, t) {
                        (Sharing::OneWrites, 0) => (0, w_words),
                        (Sharing::Halves, 0) => (0, half),
                        (Sharing::Halves, _) => (half, w_words),
                        _ => (0, 0),
                    };
                    for pass in 0..warm + passes {
                        if sharing == Sharing::Own {
                            write_all(&mut own, pass as u64);
                        } else if hi > lo {
                            // SAFETY: lo..hi lies in the buffer, and no other thread touches it
                            // until the barrier (the threads' parts are disjoint, and all
                            // reading happens between the two barriers).
                            let part = unsafe {
                                std::slice::from_raw_parts_mut(shared.0.add(lo), hi - lo)
                            };
                            write_all(part, pass as u64);
                        }
                        barrier.wait();
                        let t0 = Instant::now();
                        // SAFETY: between the barriers nobody writes the buffer.
                        let w = unsafe { std::slice::from_raw_parts(shared.0, shared.1) };
                        let src: &[u64] = if sharing == Sharing::Own { &own } else { w };
                        r ^= xor_all(src) ^ xor_all(&act);
                        if pass >= warm {
                            read_s += t0.elapsed().as_secs_f64();
                        }
                        barrier.wait();
                    }
                    black_box(r);
                    read_s / passes as f64 * 1e6
                })
            })
            .collect();
        let us: Vec<f64> = handles
            .into_iter()
            .map(|h| h.join().expect("reader thread"))
            .collect();
        [us[0], us[1]]
    })
}

fn main() {
    let arg = |i: usize, default: usize| -> usize {
        std::env::args()
            .nth(i)
            .map(|s| {
                s.parse()
                    .expect("arguments: weights KiB, activations KiB, passes")
            })
            .unwrap_or(default)
    };
    let (w_kib, a_kib, passes) = (arg(1, 768), arg(2, 1024), arg(3, 2000));
    let (w_words, act_words) = (w_kib * 1024 / 8, a_kib * 1024 / 8);
    println!("weights {w_kib} KiB, activations {a_kib} KiB per thread, {passes} passes");
    for round in 1..=2 {
        println!("round {round}: reading µs per pass (thread 0 / thread 1)");
        for (name, sharing) in [
            ("read-only", Sharing::ReadOnly),
            ("own", Sharing::Own),
            ("one-writes", Sharing::OneWrites),
            ("halves", Sharing::Halves),
        ] {
            let [a, b] = run(sharing, w_words, act_words, passes);
            println!("  {name:<12} {a:6.1} / {b:6.1}");
        }
    }
}
