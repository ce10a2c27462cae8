//! The f32 kernels allocate nothing once warmed up at a shape: GEMM's packing buffers live in
//! per-thread pools, argmin packs on the stack, row-gradient sorting reuses the caller's
//! vectors. A counting global allocator checks a second round of calls.
//!
//! Runs inside a 2-thread pool's `install`, so rayon jobs go to the workers' local deques (an
//! injection from outside a pool may allocate inside rayon itself, which is not ours to test).

use hmdn_kernels::optim::AdamParams;
use hmdn_kernels::{act, embed, gemm, optim, softmax, vq, Trans};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn second_round_allocates_nothing() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let v =
        |n: usize, s: f32| -> Vec<f32> { (0..n).map(|i| ((i % 97) as f32 - 48.0) * s).collect() };
    let (b, din, dout) = (1024usize, 368usize, 128usize);
    let (x, w, dy) = (v(b * din, 0.01), v(dout * din, 0.02), v(b * dout, 0.03));
    let (mut y, mut dx, mut dw) = (
        vec![0.0f32; b * dout],
        vec![0.0f32; b * din],
        vec![0.0f32; dout * din],
    );
    let bias = v(dout, 0.1);
    let mut db = vec![0.0f32; dout];
    let mut s = vec![0.0f32; b * din];
    let cb = v(64 * 48, 0.05);
    let mut norms = vec![0.0f32; 64];
    let mut codes = vec![0u32; b];
    let idx: Vec<u32> = (0..b as u32).map(|i| (i * 7919) % 5000).collect();
    let table = v(5000 * 16, 0.01);
    let (mut m, mut vv) = (vec![0.0f32; table.len()], vec![0.0f32; table.len()]);
    let mut t = table.clone();
    let (mut rows, mut grad, mut order) = (Vec::new(), Vec::new(), Vec::new());
    let (mut p, mut pm, mut pv) = (x.clone(), vec![0.0f32; x.len()], vec![0.0f32; x.len()]);
    let h = AdamParams::default();
    let mut step = || {
        gemm(
            b,
            dout,
            din,
            1.0f32,
            &x,
            Trans::N,
            &w,
            Trans::T,
            0.0,
            &mut y,
        );
        gemm(
            b,
            din,
            dout,
            1.0f32,
            &dy,
            Trans::N,
            &w,
            Trans::N,
            0.0,
            &mut dx,
        );
        gemm(
            dout,
            din,
            b,
            1.0f32,
            &dy,
            Trans::T,
            &x,
            Trans::N,
            1.0,
            &mut dw,
        );
        act::bias_relu_forward(&mut y, &bias);
        act::bias_grad(&mut db, &dy);
        act::scaled_sigmoid_forward(&mut s, &dx, 2.0);
        softmax::softmax_rows_forward(&mut s, &dx, din);
        vq::sq_norms(&mut norms, &cb, 48);
        vq::argmin_sq_l2(&mut codes, &x[..b * 48], &cb, &norms, 48);
        embed::gather_rows(&mut s, din, 0, &table, 16, &idx);
        embed::gather_fields(&mut s, din, 0, 2, |_| (&table[..], &idx[..]), 16, idx.len());
        embed::accumulate_row_grads(&mut rows, &mut grad, &mut order, &idx, &dx, din, 0, 16);
        optim::lazy_adam_rows(&mut t, &mut m, &mut vv, 16, &rows, &grad, &h, 1, 0.0);
        optim::adam_step(&mut p, &dx, &mut pm, &mut pv, &h, 1);
    };
    let counted = pool.install(|| {
        for _ in 0..3 {
            step();
        }
        let before = ALLOCS.load(Ordering::SeqCst);
        for _ in 0..5 {
            step();
        }
        ALLOCS.load(Ordering::SeqCst) - before
    });
    assert_eq!(counted, 0, "allocations in warmed-up kernel calls");
}
