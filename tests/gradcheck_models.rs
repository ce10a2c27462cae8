//! Whole-model gradient checks in f64, for every model and the quantizer's variants, plus
//! structural checks of the models (parameter names and shapes of SPEC §5, f32/f64 agreement,
//! batch-size changes).
//!
//! The gradient check (`hmdn_cpu::gradcheck::check_model`) differentiates the *total* loss
//! `Σ_t mean_B BCE + α·L_rq` with T = 2 tasks on a tiny configuration (e = 3, hidden
//! [5, 4, 3], K = 5, D = 3, B = 6), with argmin codes and stop-gradient values frozen at the
//! unperturbed pass (SPEC §2). Every parameter tensor is checked (up to 40 coordinates each;
//! embedding tables on the rows the batch touched plus one untouched row) against a
//! least-squares fit of central differences at steps up to 2e-3 (see `check_model` for why
//! not a single 1e-6 step). Coordinates whose perturbation changes the sign of any ReLU are
//! skipped and counted; at most 10 % of a model's coordinates may be skipped.

use hmdn_cpu::config::{ModelConfig, ModelKind, RqGradient, RqMode};
use hmdn_cpu::gradcheck::{check_model, check_model_with, GradReport, RandomBatch, TOLERANCE};
use hmdn_cpu::model::{Model, INFER_CHUNK_ROWS};
use hmdn_cpu::Batch;
use rand::rngs::StdRng;
use rand::SeedableRng;
mod alloc_counter;
use alloc_counter::{allocs, CountingAlloc};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Batch rows of every check.
const B: usize = 6;

fn tiny(model: ModelKind) -> ModelConfig {
    hmdn_cpu::gradcheck::tiny_config(model)
}

fn run_check(title: &str, cfg: &ModelConfig, seed: u64) -> Vec<GradReport> {
    let mut model = Model::<f64>::new(cfg, seed).expect("valid config");
    let mut rng = StdRng::seed_from_u64(seed + 100);
    let data = RandomBatch::new(cfg, B, &mut rng);
    let reports = check_model(&mut model, &data.batch());
    let worst = reports.iter().map(|r| r.max_rel).fold(0.0, f64::max);
    let checked: usize = reports.iter().map(|r| r.checked).sum();
    let skipped: usize = reports.iter().map(|r| r.skipped).sum();
    println!("== {title}: {} tensors, {checked} coords checked, {skipped} skipped (kinks), max rel {worst:.3e}", reports.len());
    for r in &reports {
        println!("   {r}");
    }
    assert_eq!(
        reports.len(),
        model.params.specs.len(),
        "every tensor reported"
    );
    for r in &reports {
        assert!(
            r.passes(),
            "{title}: {} max rel {:.3e} > {TOLERANCE:e}",
            r.name,
            r.max_rel
        );
        assert!(r.checked > 0, "{title}: {}: nothing checked", r.name);
    }
    assert!(
        skipped * 10 <= checked + skipped,
        "{title}: {skipped} kink skips for {checked} checked coordinates"
    );
    reports
}

#[test]
fn dnn() {
    run_check("dnn", &tiny(ModelKind::Dnn), 1);
}

#[test]
fn wide_deep() {
    run_check("wide-deep", &tiny(ModelKind::WideDeep), 2);
}

#[test]
fn dcn() {
    run_check("dcn", &tiny(ModelKind::Dcn), 3);
}

#[test]
fn shared_bottom() {
    run_check("shared-bottom", &tiny(ModelKind::SharedBottom), 4);
}

#[test]
fn mmoe() {
    run_check("mmoe", &tiny(ModelKind::Mmoe), 5);
}

#[test]
fn mmoe_shared_dist_embeddings() {
    let mut cfg = tiny(ModelKind::Mmoe);
    cfg.share_dist_embeddings = true;
    run_check("mmoe shared x_b tables", &cfg, 6);
}

#[test]
fn pepnet() {
    run_check("pepnet", &tiny(ModelKind::Pepnet), 7);
}

#[test]
fn hmdn_mmoe() {
    run_check(
        "hmdn-mmoe (implicit, shared codebook, ste)",
        &tiny(ModelKind::HmdnMmoe),
        8,
    );
}

#[test]
fn hmdn_pepnet() {
    run_check(
        "hmdn-pepnet (implicit, shared codebook, ste)",
        &tiny(ModelKind::HmdnPepnet),
        9,
    );
}

#[test]
fn hmdn_mmoe_explicit() {
    let mut cfg = tiny(ModelKind::HmdnMmoe);
    cfg.rq.mode = RqMode::Explicit;
    cfg.rq.depth = 0;
    run_check("hmdn-mmoe (explicit)", &cfg, 10);
}

#[test]
fn hmdn_pepnet_explicit() {
    let mut cfg = tiny(ModelKind::HmdnPepnet);
    cfg.rq.mode = RqMode::Explicit;
    cfg.rq.depth = 0;
    run_check("hmdn-pepnet (explicit)", &cfg, 11);
}

#[test]
fn hmdn_mmoe_per_level_codebooks() {
    let mut cfg = tiny(ModelKind::HmdnMmoe);
    cfg.rq.per_level_codebooks = true;
    run_check("hmdn-mmoe (per-level codebooks)", &cfg, 12);
}

#[test]
fn hmdn_mmoe_direct() {
    let mut cfg = tiny(ModelKind::HmdnMmoe);
    cfg.rq.gradient = RqGradient::Direct;
    run_check("hmdn-mmoe (direct)", &cfg, 13);
}

#[test]
fn hmdn_pepnet_direct_per_level_shared_tables() {
    let mut cfg = tiny(ModelKind::HmdnPepnet);
    cfg.rq.gradient = RqGradient::Direct;
    cfg.rq.per_level_codebooks = true;
    cfg.share_dist_embeddings = true;
    cfg.rq.alpha = 0.5;
    run_check(
        "hmdn-pepnet (direct, per-level, shared x_b tables, α=0.5)",
        &cfg,
        14,
    );
}

#[test]
fn hmdn_mmoe_explicit_direct() {
    let mut cfg = tiny(ModelKind::HmdnMmoe);
    cfg.rq.mode = RqMode::Explicit;
    cfg.rq.depth = 0;
    cfg.rq.gradient = RqGradient::Direct;
    run_check("hmdn-mmoe (explicit, direct)", &cfg, 15);
}

/// Parameter names and shapes, in registration order, as `name [shape]` strings.
fn layout(cfg: &ModelConfig) -> Vec<String> {
    let m = Model::<f32>::new(cfg, 0).expect("valid config");
    m.params
        .specs
        .iter()
        .map(|s| format!("{} {:?}", s.name, s.shape))
        .collect()
}

fn has(layout: &[String], want: &str) -> bool {
    layout.iter().any(|s| s == want)
}

#[test]
fn parameter_names_and_shapes_follow_spec_section_5() {
    // d_x = 4 fields · 3 + 2 numerics = 14; z = 3 dist fields · 3 = 9; hidden [5, 4, 3].
    let dnn = layout(&tiny(ModelKind::Dnn));
    for want in [
        "embedding.user_gender.weight [3, 3]",
        "embedding.item.weight [7, 3]",
        "dnn.layers.0.weight [5, 14]",
        "dnn.layers.0.bias [5]",
        "dnn.layers.2.weight [3, 4]",
        "towers.0.weight [1, 3]",
        "towers.1.bias [1]",
    ] {
        assert!(has(&dnn, want), "dnn lacks `{want}`: {dnn:?}");
    }
    assert!(!dnn.iter().any(|s| s.starts_with("dist_embedding")));

    let wd = layout(&tiny(ModelKind::WideDeep));
    for want in [
        "wide.city.weight [5, 1]",
        "wide.domain_id.weight [4, 1]",
        "wide.bias [1]",
    ] {
        assert!(has(&wd, want), "wide-deep lacks `{want}`");
    }

    let dcn = layout(&tiny(ModelKind::Dcn));
    for want in [
        "cross.0.weight [14]",
        "cross.2.bias [14]",
        "towers.0.weight [1, 17]",
    ] {
        assert!(has(&dcn, want), "dcn lacks `{want}`: {dcn:?}");
    }

    let sb = layout(&tiny(ModelKind::SharedBottom));
    // Domain = last distribution field, domain_id (4 values) → towers.<t>.<k>, k = 0..4.
    for want in [
        "towers.0.0.weight [1, 3]",
        "towers.1.3.bias [1]",
        "dnn.layers.1.weight [4, 5]",
    ] {
        assert!(has(&sb, want), "shared-bottom lacks `{want}`: {sb:?}");
    }
    assert_eq!(
        sb.iter().filter(|s| s.starts_with("towers.")).count(),
        2 * 4 * 2
    );

    let mmoe = layout(&tiny(ModelKind::Mmoe));
    for want in [
        "dist_embedding.user_gender.weight [3, 3]",
        "dist_embedding.domain_id.weight [4, 3]",
        "experts.0.layers.0.weight [5, 14]",
        "experts.2.layers.2.bias [3]",
        "gates.0.weight [3, 9]",
        "gates.1.bias [3]",
        "towers.1.weight [1, 3]",
    ] {
        assert!(has(&mmoe, want), "mmoe lacks `{want}`: {mmoe:?}");
    }
    assert!(!has(&mmoe, "dist_embedding.item.weight [7, 3]"));

    let pep = layout(&tiny(ModelKind::Pepnet));
    for want in [
        "epnet.fc1.weight [4, 23]",
        "epnet.fc2.weight [14, 4]",
        "ppnet.0.fc2.weight [5, 4]",
        "ppnet.2.fc2.bias [3]",
        "dnn.layers.0.weight [5, 14]",
    ] {
        assert!(has(&pep, want), "pepnet lacks `{want}`: {pep:?}");
    }

    let hm = layout(&tiny(ModelKind::HmdnMmoe));
    assert!(has(&hm, "rq.codebook.weight [5, 9]"), "{hm:?}");
    let mut cfg = tiny(ModelKind::HmdnMmoe);
    cfg.rq.mode = RqMode::Explicit;
    cfg.rq.depth = 0;
    let hx = layout(&cfg);
    // Explicit: gate input is s_D ∈ R^e.
    for want in [
        "rq.codebooks.0.weight [5, 3]",
        "rq.codebooks.2.weight [5, 3]",
        "gates.0.weight [3, 3]",
    ] {
        assert!(has(&hx, want), "explicit hmdn-mmoe lacks `{want}`: {hx:?}");
    }

    let mut cfg = tiny(ModelKind::Mmoe);
    cfg.share_dist_embeddings = true;
    let shared = layout(&cfg);
    assert!(!shared.iter().any(|s| s.starts_with("dist_embedding")));

    // Names are unique within every model.
    for l in [&dnn, &wd, &dcn, &sb, &mmoe, &pep, &hm, &hx] {
        let mut names: Vec<_> = l.iter().map(|s| s.split(' ').next().unwrap()).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "duplicate names");
    }
}

#[test]
fn f32_and_f64_models_agree() {
    // Same seed → same (rounded) weights; the forward passes must agree to f32 accuracy.
    for kind in ModelKind::ALL {
        let cfg = tiny(kind);
        let mut m32 = Model::<f32>::new(&cfg, 21).unwrap();
        let mut m64 = Model::<f64>::new(&cfg, 21).unwrap();
        let mut rng = StdRng::seed_from_u64(22);
        let data = RandomBatch::new(&cfg, B, &mut rng);
        let (l32, l64) = (m32.forward(&data.batch()), m64.forward(&data.batch()));
        for (a, b) in m32.logits().iter().zip(m64.logits()) {
            assert!((*a as f64 - b).abs() < 1e-5, "{kind}: logit {a} vs {b}");
        }
        assert!((l32.total as f64 - l64.total).abs() < 1e-5, "{kind}: loss");
        m32.backward(&data.batch());
        m64.backward(&data.batch());
        for (a, b) in m32.params.grads.iter().zip(&m64.params.grads) {
            assert!((*a as f64 - b).abs() < 1e-5, "{kind}: grad {a} vs {b}");
        }
    }
}

#[test]
fn rows_are_independent_of_batch_size_and_buffers_are_reused() {
    // A large batch, then a smaller one reusing the grown buffers: the small batch's logits
    // equal those of a fresh model on that batch alone, and equal the first rows of the large
    // batch's logits (no cross-row coupling in the forward pass).
    for kind in ModelKind::ALL {
        let cfg = tiny(kind);
        let mut rng = StdRng::seed_from_u64(31);
        let data = RandomBatch::new(&cfg, 9, &mut rng);
        let small = Batch {
            rows: 4,
            cat: &data.cat[..4 * cfg.fields.len()],
            num: &data.num[..4 * cfg.numeric.len()],
            labels: &data.labels[..4 * cfg.tasks.len()],
        };
        let mut m = Model::<f64>::new(&cfg, 32).unwrap();
        m.forward(&data.batch());
        let big = m.logits()[..4 * cfg.tasks.len()].to_vec();
        m.forward(&small);
        let reused = m.logits().to_vec();
        let mut fresh = Model::<f64>::new(&cfg, 32).unwrap();
        fresh.forward(&small);
        assert_eq!(reused, fresh.logits(), "{kind}");
        for (a, b) in big.iter().zip(&reused) {
            assert!((a - b).abs() < 1e-12, "{kind}: {a} vs {b}");
        }
    }
}

#[test]
fn infer_gives_the_logits_of_forward_bit_for_bit() {
    // `infer` skips the losses only: on a batch of several row chunks, in f32 (the training
    // precision, on this machine's SIMD path), its logits are the forward's, bit for bit,
    // for every model. (That it allocates nothing is checked in `tests/no_alloc.rs`.)
    //
    // `infer` runs its chunks on one lane per thread, each reusing one chunk's buffers: with
    // 2200 rows (5 chunks) on 1, 2 and 3 threads, lanes take several chunks each, in an order
    // that depends on timing, and the logits must not notice; nor must the size of the
    // pieces the lanes take (`set_inference_chunk_rows`).
    for kind in ModelKind::ALL {
        let cfg = tiny(kind);
        let mut rng = StdRng::seed_from_u64(72);
        for rows in [300, 2200] {
            let data = RandomBatch::new(&cfg, rows, &mut rng);
            let other = RandomBatch::new(&cfg, rows, &mut rng);
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    let mut m = Model::<f32>::new(&cfg, 71).unwrap();
                    let loss = m.forward(&data.batch());
                    assert!(loss.total > 0.0, "{kind}");
                    let logits = m.logits().to_vec();
                    let same = |m: &Model<f32>| {
                        m.logits()
                            .iter()
                            .zip(&logits)
                            .all(|(a, b)| a.to_bits() == b.to_bits())
                    };
                    // The lanes' pieces: the default, the training chunks (0), and sizes
                    // that do not divide the chunks (8, 40) or exceed them (1000, usize::MAX).
                    // (Another batch in between, in the training chunks, so that a row
                    // left unwritten shows.)
                    for piece in [INFER_CHUNK_ROWS, 0, 8, 40, 1000, usize::MAX] {
                        m.set_inference_chunk_rows(0);
                        m.infer(&other.batch());
                        m.set_inference_chunk_rows(piece);
                        m.infer(&data.batch());
                        assert!(
                            same(&m),
                            "{kind} {rows} rows {threads} threads, pieces of {piece}: infer differs"
                        );
                    }
                    m.set_inference_chunk_rows(INFER_CHUNK_ROWS);
                    m.infer_keeping_chunks(&data.batch());
                    assert!(same(&m), "{kind} {rows} rows: infer_keeping_chunks differs");
                });
            }
        }
    }
}

#[test]
fn gate_statistics_after_infer_keeping_chunks_match_forward_and_are_refused_after_infer() {
    // Gate means read every chunk's gates: after `infer_keeping_chunks` they are those of a
    // forward on the same batch; after `infer` (lanes reuse the buffers) reading them panics
    // instead of returning other rows' gates.
    let cfg = tiny(ModelKind::HmdnMmoe);
    let mut rng = StdRng::seed_from_u64(75);
    let data = RandomBatch::new(&cfg, 1100, &mut rng);
    let mut m = Model::<f32>::new(&cfg, 76).unwrap();
    m.forward(&data.batch());
    m.record_gates();
    let want = m.gate_report().unwrap();
    m.reset_stats();
    m.infer_keeping_chunks(&data.batch());
    m.record_gates();
    assert_eq!(m.gate_report().unwrap(), want);
    m.infer(&data.batch());
    let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m.record_gates()));
    let msg = refused.expect_err("record_gates after infer must panic");
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("infer_keeping_chunks"), "{msg}");
}

#[test]
#[should_panic(expected = "backward needs a forward on the labeled batch first")]
fn backward_after_infer_is_refused() {
    // `infer` loads no labels; a backward after it would read the previous batch's.
    let cfg = tiny(ModelKind::HmdnMmoe);
    let mut m = Model::<f64>::new(&cfg, 73).unwrap();
    let mut rng = StdRng::seed_from_u64(74);
    let (a, b) = (
        RandomBatch::new(&cfg, B, &mut rng),
        RandomBatch::new(&cfg, B, &mut rng),
    );
    m.forward(&a.batch());
    m.backward(&a.batch());
    m.infer(&b.batch());
    m.backward(&b.batch());
}

#[test]
fn inference_without_labels_gives_logits_and_no_task_loss() {
    let cfg = tiny(ModelKind::HmdnMmoe);
    let mut rng = StdRng::seed_from_u64(41);
    let data = RandomBatch::new(&cfg, B, &mut rng);
    let mut m = Model::<f64>::new(&cfg, 42).unwrap();
    let with = m.forward(&data.batch());
    let logits = m.logits().to_vec();
    let nolabel = Batch {
        labels: &[],
        ..data.batch()
    };
    let without = m.forward(&nolabel);
    assert_eq!(m.logits(), &logits[..]);
    assert_eq!(without.task, 0.0);
    assert_eq!(without.rq, with.rq);
    assert!(with.task > 0.0 && with.rq > 0.0);
    assert!((with.total - (with.task + cfg.rq.alpha * with.rq)).abs() < 1e-15);
}

#[test]
fn f32_gradient_check_runs_with_a_coarse_step() {
    // The same check in f32 (what `hmdn-cpu gradcheck` can run on the training precision):
    // the loss is known to ≈ 1e-7 relative only, so with h = 3e-2 the absolute errors are
    // ≈ 1e-5 (≈ 1e-3 of the typical entry) — a smoke test that the f32 build computes the
    // same gradients, not a 1e-6 check.
    for kind in [ModelKind::Dcn, ModelKind::HmdnMmoe, ModelKind::HmdnPepnet] {
        let cfg = tiny(kind);
        let mut model = Model::<f32>::new(&cfg, 51).unwrap();
        let mut rng = StdRng::seed_from_u64(52);
        let data = RandomBatch::new(&cfg, B, &mut rng);
        let reports = check_model_with(&mut model, &data.batch(), 3e-2, 40);
        assert_eq!(reports.len(), model.params.specs.len());
        let worst = reports.iter().map(|r| r.max_abs).fold(0.0, f64::max);
        println!("{kind} f32: max abs {worst:.3e}");
        assert!(worst < 1e-4, "{kind}: f32 max abs error {worst:e}");
        assert!(reports.iter().all(|r| r.checked > 0));
    }
}

#[test]
fn empty_batch_is_harmless() {
    for kind in ModelKind::ALL {
        let cfg = tiny(kind);
        let mut m = Model::<f64>::new(&cfg, 61).unwrap();
        let empty = Batch {
            rows: 0,
            cat: &[],
            num: &[],
            labels: &[],
        };
        let l = m.forward(&empty);
        assert_eq!((l.task, l.rq, l.total), (0.0, 0.0, 0.0), "{kind}");
        assert!(m.logits().is_empty());
        m.backward(&empty);
        assert!(m.params.grads.iter().all(|&g| g == 0.0), "{kind}");
        assert!(m.row_grads().iter().all(|g| g.rows.is_empty()), "{kind}");
    }
}

/// Allocations of forward + backward on `batches` after one warm-up step on the first.
fn step_allocations(kind: ModelKind) -> Vec<usize> {
    let mut cfg = tiny(kind);
    cfg.share_dist_embeddings = kind == ModelKind::HmdnPepnet;
    let mut rng = StdRng::seed_from_u64(71);
    let data = RandomBatch::new(&cfg, 64, &mut rng);
    let small = Batch {
        rows: 40,
        cat: &data.cat[..40 * cfg.fields.len()],
        num: &data.num[..40 * cfg.numeric.len()],
        labels: &data.labels[..40 * cfg.tasks.len()],
    };
    let mut m = Model::<f32>::new(&cfg, 72).unwrap();
    m.forward(&data.batch());
    m.backward(&data.batch());
    let mut counts = Vec::new();
    for batch in [data.batch(), small, data.batch()] {
        let before = allocs();
        m.forward(&batch);
        m.backward(&batch);
        counts.push(allocs() - before);
    }
    counts
}

#[test]
fn buffers_do_not_grow_after_the_first_step() {
    // Every step after the first — same batch size or smaller — allocates the same number
    // of times: no model buffer is resized or rebuilt per step. (The number is 0, see
    // `training_steps_do_not_allocate`; this weaker check stays because it still holds if a
    // kernel ever allocates a fixed amount per call, and then tells the two apart.)
    for kind in ModelKind::ALL {
        let counts = step_allocations(kind);
        println!("{kind}: allocations per step {counts:?}");
        assert!(
            counts.windows(2).all(|w| w[0] == w[1]),
            "{kind}: {counts:?}"
        );
    }
}

#[test]
fn training_steps_do_not_allocate() {
    // The rule of the style guide: after the first step, a training step allocates nothing
    // (here on the test thread, at sizes below every parallel threshold; `tests/no_alloc.rs`
    // checks all threads at the aliccp shape, with the optimiser).
    for kind in ModelKind::ALL {
        assert_eq!(step_allocations(kind), vec![0, 0, 0], "{kind}");
    }
}
