//! Do two threads slow each other down when they re-read the *same* memory (as the two row
//! chunks of a training step re-read the same weights), compared with each reading its own
//! copy (as two separate one-thread processes do)?
//!
//! Why: a two-thread step's row chunks run slower beside each other than one after the other,
//! while two one-thread processes do not slow each other (`benches/RESULTS.md`). One
//! difference between the two setups is that the threads of one process share the weights'
//! cache lines. Each thread here alternately streams through a "weights" buffer (shared by the
//! threads, or one private copy per thread) and a private "activations" buffer; the two
//! together exceed the 2 MiB L2, so the weights come back from L3 (or the other core) on
//! every pass, as they do in the model.
//!
//! `cargo run --release -p hmdn-kernels --example shared_reads -- [weights KiB] [activations
//! KiB] [passes]` (defaults: 1536 1536 2000). Prints µs per pass (one read of each buffer)
//! for one thread alone, then two threads with shared and with private weights, in turn.

mod common;

use std::hint::black_box;
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

/// µs per pass of `threads` threads, each reading `weights` (shared) or its own copy of it,
/// then its own activations buffer, `passes` times after 20 warm-up passes.
fn run(threads: usize, shared: bool, weights: &[u64], act_words: usize, passes: usize) -> Vec<f64> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let own: Vec<u64> = if shared { Vec::new() } else { weights.to_vec() };
                    let w: &[u64] = if shared { weights } else { &own };
                    let act: Vec<u64> = (0..act_words as u64).map(|i| i * 3 + t as u64).collect();
                    let mut r = 0;
                    for _ in 0..20 {
                        r ^= xor_all(w) ^ xor_all(&act);
                    }
                    let t0 = Instant::now();
                    for _ in 0..passes {
                        r ^= xor_all(w);
                        r ^= xor_all(&act);
                    }
                    black_box(r);
                    t0.elapsed().as_secs_f64() / passes as f64 * 1e6
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("reader thread"))
            .collect()
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
    let (w_kib, a_kib, passes) = (arg(1, 1536), arg(2, 1536), arg(3, 2000));
    let weights: Vec<u64> = (0..(w_kib * 1024 / 8) as u64).collect();
    let act_words = a_kib * 1024 / 8;
    println!("weights {w_kib} KiB, activations {a_kib} KiB per thread, {passes} passes");
    let show = |label: &str, us: Vec<f64>| {
        let v: Vec<String> = us.iter().map(|u| format!("{u:.1}")).collect();
        println!("{label:<28} {} µs per pass", v.join(" / "));
    };
    for round in 1..=2 {
        println!("round {round}");
        show("  one thread", run(1, true, &weights, act_words, passes));
        show(
            "  two threads, shared",
            run(2, true, &weights, act_words, passes),
        );
        show(
            "  two threads, private",
            run(2, false, &weights, act_words, passes),
        );
    }
}
