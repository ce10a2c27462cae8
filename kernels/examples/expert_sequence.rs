//! The expert GEMMs of a whole training step in their real order and memory footprint, on one
//! thread: `CHUNKS` row chunks of `M` rows (defaults 2 × 256, one thread's share of a 1024-row
//! batch), each running the forward of 3 experts (368-128-64-32, bias + ReLU), then each chunk
//! the backward (ReLU mask, weight gradient into the chunk's own arena, input gradient).
//! Prints the step's achieved GFLOP/s (best and median of `REPS` steps) beside the FMA peak, to
//! compare with `chunk_gemms` (the same GEMMs alone, hot in cache).
//!
//! `cargo run --release -p hmdn-kernels --example expert_sequence` (`M`, `CHUNKS`, `REPS`;
//! `FUSED=1` runs each chunk's backward right after its forward, `FWD=1` forwards only,
//! `FRESH=1` rewrites every chunk's input before each step).

mod common;

use hmdn_kernels::act::{bias_relu_forward, relu_backward};
use hmdn_kernels::gemm::{gemm, gemm_packed_b, pack_b_for, packed_b_len};
use hmdn_kernels::{simd, Trans};
use std::time::Instant;

const EXPERTS: usize = 3;
const WIDTHS: [usize; 4] = [368, 128, 64, 32];

struct ChunkBufs {
    x: Vec<f32>,
    dx: Vec<f32>,
    /// Per expert, per layer: output h, its gradient dh, and the pre-activation gradient.
    h: Vec<Vec<Vec<f32>>>,
    dh: Vec<Vec<Vec<f32>>>,
    dpre: Vec<f32>,
    /// Weight-gradient arena: per expert, per layer.
    dw: Vec<Vec<Vec<f32>>>,
}

fn main() {
    let env = common::env_usize;
    let (m, chunks, reps) = (env("M", 256), env("CHUNKS", 2), env("REPS", 50));
    // FUSED=1: each chunk's backward right after its forward (instead of all forwards first).
    let fused = env("FUSED", 0) == 1;
    // FWD=1: forwards only (inference). FRESH=1: rewrite every chunk's x before each step, as
    // the embedding gather does for the whole batch before the first chunk runs.
    let (fwd_only, fresh) = (env("FWD", 0) == 1, env("FRESH", 0) == 1);
    let pool = common::one_thread_pool();
    pool.install(|| {
        let path = simd::simd_path();
        let fill = |n: usize, s: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * s) % 17) as f32 * 0.01 - 0.08)
                .collect()
        };
        // Weights W[l] [d_out, d_in], biases, and their packed Wᵀ.
        let mut w = Vec::new();
        let mut wp = Vec::new();
        let mut bias = Vec::new();
        for e in 0..EXPERTS {
            let (mut we, mut wpe, mut be) = (Vec::new(), Vec::new(), Vec::new());
            for l in 0..3 {
                let (din, dout) = (WIDTHS[l], WIDTHS[l + 1]);
                let wl = fill(din * dout, 7 + e + l);
                let mut p = vec![0.0f32; packed_b_len(dout, din, path)];
                pack_b_for(&mut p, dout, din, &wl, Trans::T, path);
                we.push(wl);
                wpe.push(p);
                be.push(fill(dout, 3));
            }
            w.push(we);
            wp.push(wpe);
            bias.push(be);
        }
        let mut bufs: Vec<ChunkBufs> = (0..chunks)
            .map(|c| ChunkBufs {
                x: fill(m * WIDTHS[0], 5 + c),
                dx: vec![0.0; m * WIDTHS[0]],
                h: (0..EXPERTS)
                    .map(|_| (1..4).map(|l| vec![0.0; m * WIDTHS[l]]).collect())
                    .collect(),
                dh: (0..EXPERTS)
                    .map(|_| (1..4).map(|l| fill(m * WIDTHS[l], 11)).collect())
                    .collect(),
                dpre: vec![0.0; m * WIDTHS[1]],
                dw: (0..EXPERTS)
                    .map(|_| {
                        (0..3)
                            .map(|l| vec![0.0; WIDTHS[l] * WIDTHS[l + 1]])
                            .collect()
                    })
                    .collect(),
            })
            .collect();
        let mut flop = 0.0;
        let passes = if fwd_only { 1.0 } else { 3.0 };
        for l in 0..3 {
            flop += passes * 2.0 * (m * WIDTHS[l] * WIDTHS[l + 1]) as f64;
        }
        flop *= (EXPERTS * chunks) as f64;
        let mut times = Vec::new();
        for rep in 0..reps {
            if fresh {
                for b in bufs.iter_mut() {
                    for (i, v) in b.x.iter_mut().enumerate() {
                        *v = ((i + rep) % 13) as f32 * 0.01;
                    }
                }
            }
            let t0 = Instant::now();
            let forward = |b: &mut ChunkBufs| {
                for e in 0..EXPERTS {
                    for l in 0..3 {
                        let (din, dout) = (WIDTHS[l], WIDTHS[l + 1]);
                        let (below, here) = b.h[e].split_at_mut(l);
                        let inp: &[f32] = if l == 0 { &b.x } else { &below[l - 1] };
                        gemm_packed_b(
                            m,
                            dout,
                            din,
                            1.0,
                            inp,
                            Trans::N,
                            &w[e][l],
                            Trans::T,
                            Some((&wp[e][l], path)),
                            0.0,
                            &mut here[0],
                        );
                        bias_relu_forward(&mut here[0], &bias[e][l]);
                    }
                }
            };
            let backward = |b: &mut ChunkBufs| {
                b.dx.fill(0.0);
                for arena in b.dw.iter_mut().flatten() {
                    arena.fill(0.0);
                }
                // `e` indexes the weights, the activations and the arena of one expert alike.
                #[allow(clippy::needless_range_loop)]
                for e in 0..EXPERTS {
                    for l in (0..3).rev() {
                        let (din, dout) = (WIDTHS[l], WIDTHS[l + 1]);
                        let n = m * dout;
                        let (dh_below, dh_here) = b.dh[e].split_at_mut(l);
                        relu_backward(&mut b.dpre[..n], &dh_here[0], &b.h[e][l]);
                        let inp: &[f32] = if l == 0 { &b.x } else { &b.h[e][l - 1] };
                        gemm(
                            dout,
                            din,
                            m,
                            1.0,
                            &b.dpre[..n],
                            Trans::T,
                            inp,
                            Trans::N,
                            1.0,
                            &mut b.dw[e][l],
                        );
                        let dinp: &mut [f32] = if l == 0 {
                            &mut b.dx
                        } else {
                            let d = &mut dh_below[l - 1];
                            d.fill(0.0);
                            d
                        };
                        gemm(
                            m,
                            din,
                            dout,
                            1.0,
                            &b.dpre[..n],
                            Trans::N,
                            &w[e][l],
                            Trans::N,
                            1.0,
                            dinp,
                        );
                    }
                }
            };
            if fwd_only {
                for b in bufs.iter_mut() {
                    forward(b);
                }
            } else if fused {
                for b in bufs.iter_mut() {
                    forward(b);
                    backward(b);
                }
            } else {
                for b in bufs.iter_mut() {
                    forward(b);
                }
                for b in bufs.iter_mut() {
                    backward(b);
                }
            }
            times.push(t0.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let peak = common::fma_peak_gflops(100, 1 << 14)[0];
        let (best, med) = (flop / times[0] / 1e9, flop / times[times.len() / 2] / 1e9);
        println!(
            "expert step, {chunks} chunks x {m} rows: best {best:.1} GFLOP/s ({:.0}% of peak \
             {peak:.1}), median {med:.1} ({:.0}%)",
            100.0 * best / peak,
            100.0 * med / peak
        );
    });
}
