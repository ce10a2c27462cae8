//! The GEMMs of one model row chunk (an MMoE expert 368-128-64-32 on `M` rows, default 256),
//! each timed best-of-N on one thread, with the FMA peak measured in the same run: the harness
//! for tuning the micro-kernel at the sizes a training step actually runs.
//!
//! `cargo run --release -p hmdn-kernels --example chunk_gemms` (`M=<rows>`, `REPS=<n>`,
//! `COLD=<MiB>`, `SHAPES=<d_in>x<d_out>,…`).

mod common;

use hmdn_kernels::gemm::{gemm, gemm_packed_b, pack_b_for, packed_b_len};
use hmdn_kernels::{simd, Trans};
use std::time::Instant;

fn main() {
    let env = common::env_usize;
    let (m, reps) = (env("M", 256), env("REPS", 300));
    // COLD=<MiB>: write that much other memory before every call (evicts the operands).
    let mut junk = vec![0u8; env("COLD", 0) << 20];
    let pool = common::one_thread_pool();
    pool.install(|| {
        let path = simd::simd_path();
        let mut total_flop = 0.0;
        let mut total_s = 0.0;
        let mut total_med = 0.0;
        // SHAPES="368x128,128x64": other layers (d_in x d_out) instead of the expert's.
        let shapes: Vec<(usize, usize)> = std::env::var("SHAPES").map_or_else(
            |_| vec![(368, 128), (128, 64), (64, 32)],
            |s| {
                s.split(',')
                    .map(|p| {
                        let (a, b) = p.split_once('x').expect("SHAPES: d_inxd_out,…");
                        (a.parse().expect("d_in"), b.parse().expect("d_out"))
                    })
                    .collect()
            },
        );
        for (din, dout) in shapes {
            let x: Vec<f32> = (0..m * din).map(|i| (i % 7) as f32 * 0.1).collect();
            let w: Vec<f32> = (0..dout * din).map(|i| (i % 5) as f32 * 0.1).collect();
            let dy: Vec<f32> = (0..m * dout).map(|i| (i % 3) as f32 * 0.1).collect();
            let mut wp = vec![0.0f32; packed_b_len(dout, din, path)];
            pack_b_for(&mut wp, dout, din, &w, Trans::T, path);
            let mut y = vec![0.0f32; m * dout];
            let mut dx = vec![0.0f32; m * din];
            let mut dw = vec![0.0f32; dout * din];
            let flop = 2.0 * (m * din * dout) as f64;
            let mut time = |name: &str, f: &mut dyn FnMut()| {
                let mut times = Vec::with_capacity(reps);
                for r in 0..reps {
                    junk.iter_mut().for_each(|b| *b = b.wrapping_add(r as u8));
                    let t = Instant::now();
                    f();
                    times.push(t.elapsed().as_secs_f64());
                }
                times.sort_by(f64::total_cmp);
                let (best, med) = (times[0], times[times.len() / 2]);
                total_med += med;
                total_flop += flop;
                total_s += best;
                println!(
                    "{name:>4} {din:>3}x{dout:<3} {:>6.1} GFLOP/s best, {:>6.1} median ({:.1} us)",
                    flop / best / 1e9,
                    flop / med / 1e9,
                    best * 1e6
                );
            };
            {
                let mut best = f64::MAX;
                for _ in 0..reps {
                    let t = Instant::now();
                    pack_b_for(&mut wp, dout, din, &w, Trans::T, path);
                    best = best.min(t.elapsed().as_secs_f64());
                }
                println!(
                    "pack {din:>3}x{dout:<3} {:>6.2} ns per element",
                    best * 1e9 / (din * dout) as f64
                );
            }
            time("fwd", &mut || {
                gemm_packed_b(
                    m,
                    dout,
                    din,
                    1.0,
                    &x,
                    Trans::N,
                    &w,
                    Trans::T,
                    Some((&wp, path)),
                    0.0,
                    &mut y,
                )
            });
            time("dx", &mut || {
                gemm(m, din, dout, 1.0, &dy, Trans::N, &w, Trans::N, 1.0, &mut dx)
            });
            time("dw", &mut || {
                gemm(dout, din, m, 1.0, &dy, Trans::T, &x, Trans::N, 1.0, &mut dw)
            });
        }
        let rates = common::fma_peak_gflops(100, 1 << 14);
        let peak = rates[0];
        println!(
            "peak loop: best {peak:.1}, median {:.1}, 90th percentile time {:.1} GFLOP/s",
            rates[50], rates[90]
        );
        println!(
            "all at median times: {:.1} GFLOP/s",
            total_flop / total_med / 1e9
        );
        let all = total_flop / total_s / 1e9;
        println!(
            "all {all:.1} GFLOP/s = {:.0}% of peak {peak:.1} (M={m}, {})",
            100.0 * all / peak,
            path.name()
        );
    });
}
