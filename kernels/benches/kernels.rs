//! Kernel benchmarks at the model's shapes.
//!
//! Run: `cargo bench -p hmdn-kernels --bench kernels` (a few minutes; filter with a name
//! substring, e.g. `-- gemm/`). GEMM and argmin report FLOP/s (`Throughput::Elements` set to
//! `2·m·n·k`), so criterion's "elem/s" column reads as FLOP/s; `fma_peak` gives the
//! single-core denominator. Everything runs on the global rayon pool unless the name says
//! `t1` (a one-thread pool).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hmdn_kernels::gemm::gemm_matrixmultiply;
use hmdn_kernels::optim::AdamParams;
use hmdn_kernels::{act, embed, gemm, optim, simd, softmax, vq, Trans};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// Large buffers start on a cache line, as in the `hmdn-cpu` binary
/// ([`hmdn_kernels::mem::LineAligned`]), so the numbers are the binary's.
#[global_allocator]
static ALLOC: hmdn_kernels::mem::LineAligned = hmdn_kernels::mem::LineAligned;

fn rand_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// Linear layers of the model's MLP (in, out): 368 = 23 fields × 16.
const LAYERS: [(usize, usize); 3] = [(368, 128), (128, 64), (64, 32)];

#[derive(Clone, Copy)]
enum Orient {
    /// `Y[B×out] = X[B×in] · Wᵀ`
    Fwd,
    /// `dX[B×in] = dY[B×out] · W`
    Dx,
    /// `dW[out×in] = dYᵀ · X`
    Dw,
}

impl Orient {
    fn name(self) -> &'static str {
        match self {
            Orient::Fwd => "fwd",
            Orient::Dx => "dx",
            Orient::Dw => "dw",
        }
    }
    /// `(m, n, k, ta, tb)` for a layer `(din, dout)` at batch `b`.
    fn shape(self, b: usize, din: usize, dout: usize) -> (usize, usize, usize, Trans, Trans) {
        match self {
            Orient::Fwd => (b, dout, din, Trans::N, Trans::T),
            Orient::Dx => (b, din, dout, Trans::N, Trans::N),
            Orient::Dw => (dout, din, b, Trans::T, Trans::N),
        }
    }
}

type GemmFn = fn(usize, usize, usize, f32, &[f32], Trans, &[f32], Trans, f32, &mut [f32]);

fn bench_gemm(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let mut g = c.benchmark_group("gemm");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1000));
    let impls: [(&str, GemmFn); 2] = [("ours", gemm::<f32>), ("mm", gemm_matrixmultiply::<f32>)];
    let t1 = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    for b in [256usize, 1024, 4096] {
        for (din, dout) in LAYERS {
            for o in [Orient::Fwd, Orient::Dx, Orient::Dw] {
                let (m, n, k, ta, tb) = o.shape(b, din, dout);
                let a = rand_vec(&mut rng, m * k);
                let bm = rand_vec(&mut rng, k * n);
                let mut cm = vec![0.0f32; m * n];
                g.throughput(Throughput::Elements((2 * m * n * k) as u64));
                for (name, f) in impls {
                    let id = format!("{}/{din}x{dout}/B{b}/{name}", o.name());
                    g.bench_function(BenchmarkId::from_parameter(&id), |bch| {
                        bch.iter(|| f(m, n, k, 1.0, &a, ta, &bm, tb, 0.0, black_box(&mut cm)))
                    });
                    // Single-thread numbers for the largest layer at the largest batch.
                    if b == 4096 && din == 368 {
                        let id = format!("{id}/t1");
                        g.bench_function(BenchmarkId::from_parameter(&id), |bch| {
                            t1.install(|| {
                                bch.iter(|| {
                                    f(m, n, k, 1.0, &a, ta, &bm, tb, 0.0, black_box(&mut cm))
                                })
                            })
                        });
                    }
                }
            }
        }
    }
    g.finish();
}

fn bench_fma_peak(c: &mut Criterion) {
    let mut g = c.benchmark_group("fma_peak");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1000));
    let iters = 1 << 16;
    for p in hmdn_kernels::available_paths() {
        let flops = hmdn_kernels::with_path(p, || simd::fma_peak_loop(1).1) * iters as u64;
        g.throughput(Throughput::Elements(flops));
        g.bench_function(BenchmarkId::from_parameter(p.name()), |bch| {
            hmdn_kernels::with_path(p, || bch.iter(|| simd::fma_peak_loop(black_box(iters)).0))
        });
    }
    g.finish();
}

fn bench_argmin(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(2);
    let mut g = c.benchmark_group("argmin");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(800));
    let b = 4096;
    for z in [16usize, 48, 256] {
        let r = rand_vec(&mut rng, b * z);
        for k in [64usize, 256, 1024, 4096] {
            let cb = rand_vec(&mut rng, k * z);
            let mut norms = vec![0.0f32; k];
            vq::sq_norms(&mut norms, &cb, z);
            let mut codes = vec![0u32; b];
            g.throughput(Throughput::Elements((2 * b * k * z) as u64));
            g.bench_function(
                BenchmarkId::from_parameter(format!("direct/K{k}/z{z}")),
                |bch| bch.iter(|| vq::argmin_sq_l2(black_box(&mut codes), &r, &cb, &norms, z)),
            );
            // The GEMM-based path, forced for every K (the scratch API only takes it for
            // K >= ARGMIN_GEMM_MIN_K): dots r·Cᵀ in 256-row blocks, then a SIMD scan.
            let mut dots = vec![0.0f32; 256 * k];
            g.bench_function(
                BenchmarkId::from_parameter(format!("gemm/K{k}/z{z}")),
                |bch| {
                    bch.iter(|| {
                        for (cc, rb) in codes.chunks_mut(256).zip(r.chunks(256 * z)) {
                            let rows = cc.len();
                            gemm(
                                rows,
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
                            vq::argmin_from_dots(cc, &dots[..rows * k], &norms);
                        }
                    })
                },
            );
        }
    }
    g.finish();
}

fn bench_embed(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(3);
    let mut g = c.benchmark_group("embed");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(800));
    let (b, fields, e, vocab) = (4096usize, 23usize, 16usize, 100_000usize);
    let stride = fields * e;
    let tables: Vec<Vec<f32>> = (0..fields).map(|_| rand_vec(&mut rng, vocab * e)).collect();
    // Zipf-like skew: many repeats of small indices, as in CTR data.
    let idx: Vec<Vec<u32>> = (0..fields)
        .map(|_| {
            (0..b)
                .map(|_| (rng.gen_range(0.0f64..1.0).powi(3) * vocab as f64) as u32)
                .collect()
        })
        .collect();
    let mut x = vec![0.0f32; b * stride];
    g.bench_function("gather/B4096/F23/e16", |bch| {
        bch.iter(|| {
            for f in 0..fields {
                embed::gather_rows(&mut x, stride, f * e, &tables[f], e, &idx[f]);
            }
        })
    });
    g.bench_function("gather_fields/B4096/F23/e16", |bch| {
        bch.iter(|| {
            embed::gather_fields(
                &mut x,
                stride,
                0,
                fields,
                |f| (&tables[f][..], &idx[f][..]),
                e,
                b,
            )
        })
    });
    let dx = rand_vec(&mut rng, b * stride);
    let (mut rows, mut grad, mut order) = (Vec::new(), Vec::new(), Vec::new());
    g.bench_function("row_grads/B4096/F23/e16", |bch| {
        bch.iter(|| {
            for (f, ix) in idx.iter().enumerate() {
                embed::accumulate_row_grads(
                    &mut rows,
                    &mut grad,
                    &mut order,
                    ix,
                    &dx,
                    stride,
                    f * e,
                    e,
                );
            }
        })
    });
    g.bench_function("row_grads_reference/B4096/F23/e16", |bch| {
        bch.iter(|| {
            for (f, ix) in idx.iter().enumerate() {
                hmdn_kernels::reference::accumulate_row_grads(
                    &mut rows,
                    &mut grad,
                    &mut order,
                    ix,
                    &dx,
                    stride,
                    f * e,
                    e,
                );
            }
        })
    });
    // A factored MMoE expert's first layer on one 512-row chunk: each row adds its 12 small
    // fields' per-id terms (tables of the batch's distinct ids, 128 wide) to the rest GEMM's
    // output, then bias and ReLU (`model::factored`).
    let (rows_c, k, w, tab_rows) = (512usize, 12usize, 128usize, 420usize);
    let table = rand_vec(&mut rng, tab_rows * w);
    let bias = rand_vec(&mut rng, w);
    let row_idx: Vec<u32> = (0..rows_c * k)
        .map(|_| rng.gen_range(0..tab_rows as u32))
        .collect();
    // Each call adds onto the last one's output (bias and ReLU keep the values finite for
    // the few thousand calls a measurement makes).
    let mut u = rand_vec(&mut rng, rows_c * w);
    g.throughput(Throughput::Elements(rows_c as u64));
    g.bench_function("add_rows_indexed_bias_relu/B512/k12/w128", |bch| {
        bch.iter(|| embed::add_rows_indexed_bias_relu(&mut u, &table, &row_idx, k, &bias))
    });
    g.bench_function(
        "add_rows_indexed_bias_relu_reference/B512/k12/w128",
        |bch| {
            bch.iter(|| {
                hmdn_kernels::reference::add_rows_indexed_bias_relu(
                    &mut u, w, &table, &row_idx, k, &bias,
                )
            })
        },
    );
    g.finish();
}

fn bench_optim(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(4);
    let mut g = c.benchmark_group("optim");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(800));
    let h = AdamParams::default();
    let n = 1 << 20;
    let (mut p, gr) = (rand_vec(&mut rng, n), rand_vec(&mut rng, n));
    let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("adam/1M", |bch| {
        bch.iter(|| optim::adam_step(&mut p, &gr, &mut m, &mut v, &h, 10))
    });
    let (vocab, e) = (100_000usize, 16usize);
    let mut rows: Vec<u32> = (0..4096).map(|_| rng.gen_range(0..vocab as u32)).collect();
    rows.sort_unstable();
    rows.dedup();
    let grad = rand_vec(&mut rng, rows.len() * e);
    let mut t = rand_vec(&mut rng, vocab * e);
    let (mut m, mut v) = (vec![0.0f32; vocab * e], vec![0.0f32; vocab * e]);
    g.throughput(Throughput::Elements((rows.len() * e) as u64));
    g.bench_function("lazy_adam/4096x16", |bch| {
        bch.iter(|| optim::lazy_adam_rows(&mut t, &mut m, &mut v, e, &rows, &grad, &h, 10, 0.0))
    });
    g.finish();
}

fn bench_act(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(5);
    let mut g = c.benchmark_group("act");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(800));
    let b = 4096;
    let x = rand_vec(&mut rng, b * 368);
    let mut y = vec![0.0f32; b * 368];
    let bias = rand_vec(&mut rng, 128);
    g.throughput(Throughput::Elements((b * 128) as u64));
    g.bench_function("bias_relu/B4096x128", |bch| {
        bch.iter(|| {
            y[..b * 128].copy_from_slice(&x[..b * 128]);
            act::bias_relu_forward(&mut y[..b * 128], &bias)
        })
    });
    let mut db = vec![0.0f32; 128];
    g.bench_function("bias_grad/B4096x128", |bch| {
        bch.iter(|| act::bias_grad(&mut db, &x[..b * 128]))
    });
    g.throughput(Throughput::Elements((b * 368) as u64));
    g.bench_function("sigmoid/B4096x368", |bch| {
        bch.iter(|| act::scaled_sigmoid_forward(&mut y, &x, 2.0))
    });
    g.throughput(Throughput::Elements((b * 64) as u64));
    g.bench_function("softmax/B4096x64", |bch| {
        bch.iter(|| softmax::softmax_rows_forward(&mut y[..b * 64], &x[..b * 64], 64))
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_fma_peak,
    bench_gemm,
    bench_argmin,
    bench_embed,
    bench_optim,
    bench_act
);
criterion_main!(benches);
