//! Shared by the measuring examples (`probe`, `chunk_gemms`, `expert_sequence`, `huge_pages`,
//! `gather_order`, `argmin_rq`, `shared_reads`, `epi_cost`); a directory without `main.rs`, so
//! Cargo does not build it as an example of its own.

// Each example uses only some of these helpers.
#![allow(dead_code)]

use std::time::Instant;

/// Large buffers start on a cache line, as in the `hmdn-cpu` binary
/// ([`hmdn_kernels::mem::LineAligned`]), so the numbers are the binary's.
#[global_allocator]
static ALLOC: hmdn_kernels::mem::LineAligned = hmdn_kernels::mem::LineAligned;

/// A rayon pool of one thread: the examples time single-core kernels inside it, so that no
/// kernel splits its work.
pub fn one_thread_pool() -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool")
}

/// Times `reps` runs of the register-resident FMA loop (`iters` rounds each) on the current
/// thread's SIMD path and returns their rates in GFLOP/s, fastest first.
pub fn fma_peak_gflops(reps: usize, iters: usize) -> Vec<f64> {
    let mut rates: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            let (sink, flops) = hmdn_kernels::simd::fma_peak_loop(iters);
            let secs = t.elapsed().as_secs_f64();
            std::hint::black_box(sink);
            flops as f64 / secs / 1e9
        })
        .collect();
    rates.sort_by(|a, b| b.total_cmp(a));
    rates
}

/// The environment variable `key` as a number, or `default` when unset.
///
/// # Panics
/// If it is set but not a number (these are measuring tools: fail loudly).
pub fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key).ok().map_or(default, |s| {
        s.parse()
            .unwrap_or_else(|_| panic!("{key}={s} is not a number"))
    })
}

/// The aliccp-shape vocabulary sizes of the 23 categorical fields (the reference workload).
pub const ALICCP_VOCABS: [usize; 23] = [
    238635, 467298, 9, 14, 3, 8, 4, 4, 3, 5, 100000, 50000, 20000, 10000, 5000, 1000, 1000, 1000,
    500, 200, 100, 50, 20,
];

/// `n` batches of `b` rows of uniform random ids (xorshift, fixed seed) for the fields of
/// `vocabs`, each field-major (`[F, b]`) as the model stores them.
pub fn random_batches(vocabs: &[usize], n: usize, b: usize) -> Vec<Vec<u32>> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|_| {
            let mut idx = vec![0u32; vocabs.len() * b];
            for (f, &v) in vocabs.iter().enumerate() {
                for i in &mut idx[f * b..(f + 1) * b] {
                    *i = (next() % v as u64) as u32;
                }
            }
            idx
        })
        .collect()
}
