//! The quantizer's argmin at one row chunk's shape, on one thread: `ROWS` rows (default 256)
//! of random residuals against `K` random codes of width `Z` (defaults 64 and 48, the
//! aliccp-shape HMDN), `LEVELS` calls in a row (6), as one chunk's forward makes them. Prints
//! ns per row and level (best and median of `REPS`) and the distance FLOP rate.
//!
//! `cargo run --release -p hmdn-kernels --example argmin_rq` (`ROWS`, `K`, `Z`, `LEVELS`, `REPS`).

mod common;

use hmdn_kernels::vq::{argmin_sq_l2, sq_norms};
use std::time::Instant;

fn main() {
    let env = common::env_usize;
    let (rows, k, z) = (env("ROWS", 256), env("K", 64), env("Z", 48));
    let (levels, reps) = (env("LEVELS", 6), env("REPS", 2000));
    let pool = common::one_thread_pool();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let r: Vec<Vec<f32>> = (0..levels)
        .map(|_| (0..rows * z).map(|_| uniform()).collect())
        .collect();
    let books: Vec<Vec<f32>> = (0..levels)
        .map(|_| (0..k * z).map(|_| uniform()).collect())
        .collect();
    let norms: Vec<Vec<f32>> = books
        .iter()
        .map(|b| {
            let mut n = vec![0.0f32; k];
            sq_norms(&mut n, b, z);
            n
        })
        .collect();
    let mut codes = vec![0u32; rows];
    let mut times: Vec<f64> = pool.install(|| {
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                for d in 0..levels {
                    argmin_sq_l2(&mut codes, &r[d], &books[d], &norms[d], z);
                }
                std::hint::black_box(&codes);
                t.elapsed().as_secs_f64()
            })
            .collect()
    });
    times.sort_by(f64::total_cmp);
    let per = |t: f64| t * 1e9 / (rows * levels) as f64;
    let flop = (2 * rows * k * z * levels) as f64;
    println!(
        "argmin {rows} rows x {levels} levels, K {k}, z {z}: best {:.1} ns/row-level \
         ({:.1} GFLOP/s), median {:.1} ns ({:.1} GFLOP/s)",
        per(times[0]),
        flop / times[0] / 1e9,
        per(times[reps / 2]),
        flop / times[reps / 2] / 1e9
    );
}
