//! Best-of-N timings that are robust to a shared, noisy machine (criterion reports means):
//! f32 GEMM (ours vs matrixmultiply) at the largest Linear layer's three orientations and the
//! smallest layer's forward / weight-gradient, argmin direct vs GEMM-based, and the FMA peak.
//!
//! `cargo run --release -p hmdn-kernels --example probe -- [threads]` (default 1 thread);
//! `M=<rows>` in the environment sets the batch rows of the GEMM shapes (default 4096).

mod common;

use hmdn_kernels::{gemm, gemm::gemm_matrixmultiply, Trans};
use std::time::Instant;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let m_rows: usize = std::env::var("M")
        .ok()
        .map(|s| s.parse().unwrap())
        .unwrap_or(4096);
    pool.install(|| {
        for (name, m, n, k, ta, tb) in [
            ("fwd", m_rows, 128, 368, Trans::N, Trans::T),
            ("fwd-wt", m_rows, 128, 368, Trans::N, Trans::N),
            ("dx", m_rows, 368, 128, Trans::N, Trans::N),
            ("dw", 128, 368, m_rows, Trans::T, Trans::N),
            ("fwd64", m_rows, 32, 64, Trans::N, Trans::T),
            ("dw64", 32, 64, m_rows, Trans::T, Trans::N),
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
            let mut c = vec![0.0f32; m * n];
            for (iname, f) in [
                (
                    "ours",
                    gemm::<f32> as fn(_, _, _, _, &[f32], _, &[f32], _, _, &mut [f32]),
                ),
                ("mm", gemm_matrixmultiply::<f32>),
            ] {
                let mut best = f64::MAX;
                for _ in 0..20 {
                    let t = Instant::now();
                    f(m, n, k, 1.0, &a, ta, &b, tb, 0.0, &mut c);
                    best = best.min(t.elapsed().as_secs_f64());
                }
                println!(
                    "{name} {iname} {:.1} GFLOP/s",
                    2.0 * (m * n * k) as f64 / best / 1e9
                );
            }
        }
        for (k, z) in [64usize, 256, 1024, 4096, 8192]
            .iter()
            .flat_map(|&k| [(k, 16usize), (k, 48), (k, 256)])
        {
            let b = 4096;
            let r: Vec<f32> = (0..b * z)
                .map(|i| ((i * 7919) % 1000) as f32 * 1e-3)
                .collect();
            let cb: Vec<f32> = (0..k * z)
                .map(|i| ((i * 104729) % 997) as f32 * 1e-3)
                .collect();
            let mut norms = vec![0.0f32; k];
            hmdn_kernels::vq::sq_norms(&mut norms, &cb, z);
            let mut codes = vec![0u32; b];
            let mut dots = vec![0.0f32; 256 * k];
            let (mut t1, mut t2) = (f64::MAX, f64::MAX);
            for _ in 0..7 {
                let t = Instant::now();
                hmdn_kernels::vq::argmin_sq_l2(&mut codes, &r, &cb, &norms, z);
                t1 = t1.min(t.elapsed().as_secs_f64());
                let t = Instant::now();
                for (cc, rb) in codes.chunks_mut(256).zip(r.chunks(256 * z)) {
                    gemm(
                        cc.len(),
                        k,
                        z,
                        1.0f32,
                        rb,
                        Trans::N,
                        &cb,
                        Trans::T,
                        0.0,
                        &mut dots,
                    );
                    hmdn_kernels::vq::argmin_from_dots(cc, &dots[..cc.len() * k], &norms);
                }
                t2 = t2.min(t.elapsed().as_secs_f64());
            }
            println!(
                "argmin K{k} z{z}: direct {:.2} ms, gemm {:.2} ms",
                t1 * 1e3,
                t2 * 1e3
            );
        }
        println!(
            "peak {:.1} GFLOP/s",
            common::fma_peak_gflops(30, 1 << 18)[0]
        );
    });
}
