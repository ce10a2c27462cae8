//! What a GEMM epilogue costs at a GateNU's second-layer shapes: one `M`-row chunk (default
//! 512) times `64 → 368` (EPNet) and `64 → 128` (PPNet's first gate), on one thread, as the
//! plain GEMM, with bias + ReLU, with `γ·σ(· + b)`, and with only the gated product
//! `γ·σ(· + b) ⊙ x` (inference). Best and median of `REPS` calls (default 400) each, µs.
//!
//! `cargo run --release -p hmdn-kernels --example epi_cost` (`M=<rows>`, `REPS=<n>`,
//! `ONLY=plain|relu|sig|scaledby`).

mod common;

use hmdn_kernels::gemm::{gemm_epilogue, gemm_packed_b, pack_b_for, packed_b_len, Epilogue};
use hmdn_kernels::{simd, Trans};
use std::time::Instant;

fn main() {
    let env = common::env_usize;
    let (m, reps) = (env("M", 512), env("REPS", 400).max(1));
    let only = std::env::var("ONLY").ok();
    let pool = common::one_thread_pool();
    pool.install(|| {
        let path = simd::simd_path();
        println!("{} rows, {reps} calls each, path {path:?}", m);
        for (din, dout) in [(64usize, 368usize), (64, 128)] {
            let a: Vec<f32> = (0..m * din).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect();
            let w: Vec<f32> = (0..dout * din)
                .map(|i| ((i % 5) as f32 - 2.0) * 0.1)
                .collect();
            let bias: Vec<f32> = (0..dout).map(|i| (i % 3) as f32 * 0.1).collect();
            let x: Vec<f32> = (0..m * dout).map(|i| (i % 11) as f32 * 0.1).collect();
            let mut wp = vec![0.0f32; packed_b_len(dout, din, path)];
            pack_b_for(&mut wp, dout, din, &w, Trans::T, path);
            let pk = Some((&wp[..], path));
            let (mut c, mut y) = (vec![0.0f32; m * dout], vec![0.0f32; m * dout]);
            let mut time = |name: &str, f: &mut dyn FnMut(&mut [f32], &mut [f32])| {
                if only.as_deref().is_some_and(|o| o != name) {
                    return;
                }
                let mut t: Vec<f64> = (0..reps)
                    .map(|_| {
                        let s = Instant::now();
                        f(&mut c, &mut y);
                        s.elapsed().as_secs_f64() * 1e6
                    })
                    .collect();
                t.sort_by(f64::total_cmp);
                let (best, med) = (t[0], t[t.len() / 2]);
                println!("{din} x {dout} {name:>9}: best {best:.1} µs, median {med:.1} µs");
            };
            time("plain", &mut |c, _| {
                gemm_packed_b(m, dout, din, 1.0, &a, Trans::N, &w, Trans::T, pk, 0.0, c)
            });
            time("relu", &mut |c, _| {
                let epi = Epilogue::BiasRelu(&bias);
                gemm_epilogue(m, dout, din, &a, Trans::N, &w, Trans::T, pk, c, epi)
            });
            time("sig", &mut |c, _| {
                let (bias, scale) = (&bias[..], 2.0);
                let epi = Epilogue::BiasScaledSigmoid {
                    bias,
                    scale,
                    mul: None,
                };
                gemm_epilogue(m, dout, din, &a, Trans::N, &w, Trans::T, pk, c, epi)
            });
            time("scaledby", &mut |c, y| {
                let (bias, scale, x) = (&bias[..], 2.0, &x[..]);
                let epi = Epilogue::ScaledBySigmoid { bias, scale, y, x };
                gemm_epilogue(m, dout, din, &a, Trans::N, &w, Trans::T, pk, c, epi)
            });
            std::hint::black_box((&c, &y));
        }
    });
}
