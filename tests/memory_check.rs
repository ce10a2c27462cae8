//! The memory check's measuring copy (`hmdn_cpu::memory::batch_bytes_per_row`: small tables,
//! the same per-row buffers) adds as many heap bytes per batch row as the real model does, for
//! every model kind at the reference shape, training and inference, on 1 and 2 threads.

use hmdn_cpu::bench::aliccp_shape_config;
use hmdn_cpu::config::ModelKind;
use hmdn_cpu::gradcheck::RandomBatch;
use hmdn_cpu::memory::{batch_bytes_per_row, set_live_bytes_probe};
use hmdn_cpu::model::Model;
use hmdn_cpu::optim::{OptimConfig, Optimizer};
use hmdn_cpu::train::train_step;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Live heap bytes.
static LIVE: AtomicUsize = AtomicUsize::new(0);

struct LiveBytes;

// SAFETY: forwards every call to the system allocator unchanged; only keeps the byte total.
unsafe impl GlobalAlloc for LiveBytes {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::SeqCst);
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::SeqCst);
        System.alloc_zeroed(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::SeqCst);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n, Ordering::SeqCst);
        LIVE.fetch_sub(l.size(), Ordering::SeqCst);
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static GLOBAL: LiveBytes = LiveBytes;

/// The live-bytes total is process-wide: the tests take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Bytes per row the real model's buffers grow by between batches of 16384 and 32768 rows
/// (both with the most row chunks), as `batch_bytes_per_row` measures on its copy.
fn real_bytes_per_row(kind: ModelKind, training: bool) -> f64 {
    let cfg = aliccp_shape_config(kind);
    let mut rng = StdRng::seed_from_u64(9);
    let mut m = Model::<f32>::new(&cfg, 4).expect("valid config");
    let mut opt = Optimizer::new(&m.params, OptimConfig::default());
    let rows = [16_384, 32_768];
    let data = RandomBatch::new(&cfg, rows[1], &mut rng);
    let mut live = [0usize; 2];
    for (i, &r) in rows.iter().enumerate() {
        let b = data.head(r);
        if i == 0 && training && cfg.model.uses_rq() {
            m.kmeans_init(&b, &mut rng);
        }
        if training {
            train_step(&mut m, &mut opt, &b).expect("finite loss");
        }
        m.infer(&b);
        m.infer_keeping_chunks(&b);
        live[i] = LIVE.load(Ordering::SeqCst);
    }
    (live[1] - live[0]) as f64 / (rows[1] - rows[0]) as f64
}

#[test]
fn measuring_copy_has_the_real_models_bytes_per_row() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    set_live_bytes_probe(|| LIVE.load(Ordering::SeqCst));
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            for kind in ModelKind::ALL {
                for training in [true, false] {
                    let cfg = aliccp_shape_config(kind);
                    let measured = batch_bytes_per_row(&cfg, &OptimConfig::default(), training)
                        .expect("measurement runs")
                        .expect("probe registered");
                    let real = real_bytes_per_row(kind, training);
                    // Equal but for allocations of the run that do not grow with the rows.
                    let rel = (measured - real).abs() / real;
                    assert!(
                        rel < 0.01,
                        "{} training {training} on {threads} thread(s): measured {measured:.0} \
                         bytes per row, the real model {real:.0}",
                        kind.name()
                    );
                    assert!(real > 1000.0, "{}: {real} bytes per row", kind.name());
                }
            }
        });
    }
}

/// `ModelConfig::param_counts` (what the memory check of a model counts before building it)
/// agrees with the parameters `Model::new` registers, tables and the rest, for every model
/// kind and the settings that change the shapes.
#[test]
fn param_counts_match_the_built_models() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    use hmdn_cpu::config::{FieldSpec, RqMode};
    use hmdn_cpu::params::ParamKind;
    let mut cases = Vec::new();
    for kind in ModelKind::ALL {
        cases.push(aliccp_shape_config(kind));
        // Two tasks, numeric inputs, other widths.
        let mut c = aliccp_shape_config(kind);
        c.tasks = vec!["click".into(), "purchase".into()];
        c.numeric = vec!["price".into(), "age".into()];
        c.hidden = vec![24, 8];
        c.embed_dim = 4;
        c.n_experts = 2;
        c.gatenu_hidden = 5;
        c.cross_layers = 2;
        c.domain = Some("f2".into());
        cases.push(c);
    }
    for (mode, per_level, share) in [
        (RqMode::Explicit, false, false),
        (RqMode::Implicit, true, false),
        (RqMode::Implicit, false, true),
    ] {
        for kind in [ModelKind::HmdnMmoe, ModelKind::HmdnPepnet, ModelKind::Mmoe] {
            let mut c = aliccp_shape_config(kind);
            c.rq.mode = mode;
            c.rq.depth = if mode == RqMode::Explicit { 0 } else { 3 };
            c.rq.per_level_codebooks = per_level;
            c.share_dist_embeddings = share;
            c.fields.push(FieldSpec {
                name: "extra".into(),
                vocab_size: 7,
            });
            cases.push(c);
        }
    }
    for cfg in cases {
        let m = Model::<f32>::new(&cfg, 1).expect("valid config");
        let tables: usize = m
            .params
            .specs
            .iter()
            .filter(|s| s.kind == ParamKind::Embedding)
            .map(|s| s.len)
            .sum();
        let (t, d) = cfg.param_counts();
        let what = format!(
            "{} {:?}",
            cfg.model.name(),
            (cfg.rq.mode, cfg.share_dist_embeddings)
        );
        assert_eq!(t, tables as f64, "{what}: table elements");
        assert_eq!(t + d, m.params.len() as f64, "{what}: all elements");
    }
}
