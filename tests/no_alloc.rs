//! No allocation inside a training step (STYLE habit 3): once the model has trained on a
//! batch size (and run k-means for hmdn-*), further `train::train_step` calls — forward,
//! backward, optimiser — allocate nothing, on any thread, for every model at the aliccp shape,
//! with batch sizes changing between steps. The fit loop's per-step book-keeping
//! (`Model::after_step`: code usage, dead-code restarts) and a prediction pass
//! (`Model::infer`) are checked the same way.
//!
//! A counting global allocator counts allocations (and reallocations) while a window is open:
//! globally over all threads — rayon's workers run most of the kernels — and per thread. The
//! tests take turns (the counter is process-wide). Every step runs inside one `install` of a
//! 2-thread pool, so rayon jobs go to the workers' deques (injecting a job from outside a pool
//! allocates inside rayon, which is not a training-step allocation).
//!
//! To find an offender, run with `HMDN_ALLOC_TRACE=1` (and `-- --nocapture`): every counted
//! allocation prints its size, thread and backtrace.

use hmdn_cpu::bench::aliccp_shape_config;
use hmdn_cpu::config::{ModelConfig, ModelKind, RqMode};
use hmdn_cpu::gradcheck::RandomBatch;
use hmdn_cpu::model::Model;
use hmdn_cpu::optim::{EmbeddingOptim, OptimConfig, Optimizer};
use hmdn_cpu::train::train_step;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

struct Counting;

/// Whether a counting window is open.
static ARMED: AtomicBool = AtomicBool::new(false);
/// Allocations in open windows, all threads.
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
/// Print a backtrace for every counted allocation.
static TRACE: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Allocations of this thread in open windows.
    static MINE: Cell<usize> = const { Cell::new(0) };
    /// Set while this thread prints a trace (whose own allocations are not counted).
    static TRACING: Cell<bool> = const { Cell::new(false) };
}

impl Counting {
    fn count(&self, size: usize) {
        if !ARMED.load(Ordering::SeqCst) || TRACING.try_with(|t| t.get()).unwrap_or(true) {
            return;
        }
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        let _ = MINE.try_with(|c| c.set(c.get() + 1));
        if TRACE.load(Ordering::Relaxed) {
            TRACING.with(|t| t.set(true));
            let bt = std::backtrace::Backtrace::force_capture();
            let th = std::thread::current();
            eprintln!("allocation of {size} bytes on {:?}:\n{bt}", th.name());
            TRACING.with(|t| t.set(false));
        }
    }
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        self.count(l.size());
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        self.count(l.size());
        System.alloc_zeroed(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        self.count(n);
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations counted while `f` runs: (all threads, the calling thread).
fn counted<R>(f: impl FnOnce() -> R) -> (usize, usize, R) {
    let (g0, m0) = (ALLOCS.load(Ordering::SeqCst), MINE.with(|c| c.get()));
    ARMED.store(true, Ordering::SeqCst);
    let r = f();
    ARMED.store(false, Ordering::SeqCst);
    let (g1, m1) = (ALLOCS.load(Ordering::SeqCst), MINE.with(|c| c.get()));
    (g1 - g0, m1 - m0, r)
}

/// Rows of the counted steps: a large batch, smaller ones (one below every parallel
/// threshold), and back.
const SIZES: [usize; 6] = [2048, 512, 1000, 2048, 7, 1024];
/// Rows of the largest batch.
const LARGEST: usize = 2048;

/// The allocation counter is process-wide: tests take turns.
static SERIAL: Mutex<()> = Mutex::new(());

/// Allocations while training one case: after k-means (hmdn-*) and warm-up steps at the
/// batch sizes `warm_sizes`, one counted step per entry of [`SIZES`] and an `infer` on its
/// batch, each followed by the fit loop's `after_step`. Returns (train steps all threads, train steps on the stepping
/// thread, after_step all threads).
fn step_allocations(
    cfg: &ModelConfig,
    optim: OptimConfig,
    warm_sizes: &[usize],
) -> (usize, usize, usize) {
    let mut rng = StdRng::seed_from_u64(5);
    let data: Vec<_> = (0..SIZES.len())
        .map(|_| RandomBatch::new(cfg, LARGEST, &mut rng))
        .collect();
    let mut m = Model::<f32>::new(cfg, 6).expect("valid config");
    let mut opt = Optimizer::new(&m.params, optim);
    if cfg.model.uses_rq() {
        m.kmeans_init(&data[0].batch(), &mut rng);
    }
    let mut step = 0;
    for (i, &rows) in warm_sizes.iter().enumerate() {
        let d = &data[i % data.len()];
        train_step(&mut m, &mut opt, &d.head(rows)).expect("finite loss");
        step += 1;
        m.after_step(step, 6);
    }
    let (mut all, mut mine, mut after) = (0, 0, 0);
    for (d, &rows) in data.iter().zip(&SIZES).rev() {
        let b = d.head(rows);
        let (g, t, r) = counted(|| train_step(&mut m, &mut opt, &b));
        r.expect("finite loss");
        step += 1;
        after += counted(|| m.after_step(step, 6)).0;
        // Then prediction passes on the same batch: `infer` (as `predict` runs) and
        // `infer_keeping_chunks` (as evaluation runs for models with gates).
        let (gi, ti, ()) = counted(|| m.infer(&b));
        let (gk, tk, ()) = counted(|| m.infer_keeping_chunks(&b));
        all += g + gi + gk;
        mine += t + ti + tk;
    }
    (all, mine, after)
}

/// Every model kind at the aliccp shape, plus quantizer variants (per-level codebooks with
/// dead-code restarts every step; explicit RQ with two tasks) and dense embedding Adam.
fn cases() -> Vec<(String, ModelConfig, OptimConfig)> {
    let mut cases: Vec<(String, ModelConfig, OptimConfig)> = ModelKind::ALL
        .iter()
        .map(|&k| {
            (
                k.name().to_string(),
                aliccp_shape_config(k),
                OptimConfig::default(),
            )
        })
        .collect();
    let mut c = aliccp_shape_config(ModelKind::HmdnMmoe);
    c.rq.per_level_codebooks = true;
    c.rq.dead_code_restart_steps = 1;
    cases.push((
        "hmdn-mmoe per-level, restarts".into(),
        c,
        OptimConfig::default(),
    ));
    let mut c = aliccp_shape_config(ModelKind::HmdnPepnet);
    c.rq.mode = RqMode::Explicit;
    c.rq.depth = 0;
    c.tasks = vec!["click".into(), "purchase".into()];
    cases.push((
        "hmdn-pepnet explicit, 2 tasks".into(),
        c,
        OptimConfig::default(),
    ));
    let dense = OptimConfig {
        embedding: EmbeddingOptim::Dense,
        embedding_l2: 1e-5,
        ..OptimConfig::default()
    };
    cases.push((
        "wide-deep dense Adam".into(),
        aliccp_shape_config(ModelKind::WideDeep),
        dense,
    ));
    cases
}

/// Runs every case in a fresh 2-thread pool (fresh workers: empty per-thread scratch, if any)
/// and fails listing the cases that allocated.
fn check_all(warm_sizes: &[usize]) {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    TRACE.store(
        std::env::var_os("HMDN_ALLOC_TRACE").is_some(),
        Ordering::Relaxed,
    );
    let mut bad = Vec::new();
    for (name, cfg, optim) in cases() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("thread pool");
        let (all, mine, after) = pool.install(|| step_allocations(&cfg, optim, warm_sizes));
        println!(
            "{name}: {} counted steps allocated {all} times ({mine} on the stepping thread, {} on \
             the other worker); after_step {after}",
            SIZES.len(),
            all - mine
        );
        if all + after > 0 {
            bad.push((name, all, mine, after));
        }
    }
    assert!(
        bad.is_empty(),
        "allocations (case, all threads, stepping thread, after_step): {bad:?}"
    );
}

#[test]
fn training_steps_allocate_nothing_once_each_batch_size_was_seen() {
    // The rule as stated: buffers are sized once per batch shape. Warm up twice at every
    // size, then count steps that mix the sizes.
    let warm: Vec<usize> = SIZES.iter().chain(&SIZES).copied().collect();
    check_all(&warm);
}

#[test]
fn training_steps_allocate_nothing_after_one_step_at_the_largest_batch() {
    // Stricter: one warm-up step at the largest batch only; smaller batches must not
    // allocate either (GEMM packing buffers are bounded independently of the batch size and
    // pooled across threads).
    check_all(&[LARGEST]);
}

#[test]
fn gemm_allocates_nothing_after_one_call_per_shape_at_the_smallest_batch() {
    // The GEMM's packing buffers are bounded independently of the batch size and pooled
    // across threads: one call per Linear orientation at 7 rows (below every parallel
    // threshold: one task, no shared packed B) must cover later calls at any batch size on
    // a 2-thread pool. The layer is wider than any model layer here, so no other test has
    // already reserved buffers this large.
    use hmdn_kernels::{gemm, Trans};
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (d_in, d_out) = (1000, 600);
    let x = vec![0.5f32; LARGEST * d_in];
    let dy = vec![0.25f32; LARGEST * d_out];
    let w = vec![0.125f32; d_out * d_in];
    let (mut y, mut dx, mut dw) = (
        vec![0f32; LARGEST * d_out],
        vec![0f32; LARGEST * d_in],
        vec![0f32; d_out * d_in],
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("thread pool");
    let mut step = |bsz: usize| {
        gemm(
            bsz,
            d_out,
            d_in,
            1.0,
            &x,
            Trans::N,
            &w,
            Trans::T,
            0.0,
            &mut y,
        );
        gemm(
            bsz,
            d_in,
            d_out,
            1.0,
            &dy,
            Trans::N,
            &w,
            Trans::N,
            1.0,
            &mut dx,
        );
        gemm(
            d_out,
            d_in,
            bsz,
            1.0,
            &dy,
            Trans::T,
            &x,
            Trans::N,
            1.0,
            &mut dw,
        );
    };
    pool.install(|| {
        step(7);
        let (all, _, ()) = counted(|| {
            for &bsz in &SIZES {
                step(bsz);
            }
        });
        assert_eq!(
            all, 0,
            "GEMM calls at batch sizes {SIZES:?} allocated {all} times"
        );
    });
}
