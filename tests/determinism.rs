//! Determinism: the same seed gives bit-identical parameters, Adam moments and losses after
//! [`STEPS`] training steps whether the steps run on 1, 2, 3 or 8 rayon threads, and two fresh
//! runs on the same thread count agree too. Every model kind is covered, plus the quantizer's
//! variants (per-level codebooks, explicit RQ, direct gradient, dead-code restarts), shared
//! distribution tables and dense embedding Adam with L2.
//!
//! The backbone runs on row chunks in parallel (3 chunks of 512 rows at B = 1536; the small
//! batch has 2), each accumulating its own gradients, summed in chunk order. With at most as
//! many threads as chunks the kernels inside a chunk run serially; on 8 threads they split
//! their work as well. The configuration is sized so that the kernels' parallel paths are
//! then taken (see the constants in `hmdn-kernels`): GEMMs need `m·n·k ≥ 2^18` multiply-adds
//! (512·128·258 for a chunk's first layers), elementwise kernels and dense Adam `≥ 2^15`
//! elements (512·128 activations; the 128×258 first-layer weights); on the whole batch, the
//! gather needs `B ≥ 512`, the argmin `B·K·z ≥ 2^18` (1536·64·96), and lazy Adam
//! `rows·e ≥ 2^15` (≈1530 distinct rows of the 200 000-row table × e = 32); the row-gradient
//! sort takes its radix path (`B ≥ 256`). Only the gates' softmax (B·3 values) stays below
//! its threshold. Any reduction whose split depended on the thread count would show up as a
//! mismatch in the bit-for-bit comparison.

use hmdn_cpu::config::{FieldSpec, ModelConfig, ModelKind, RqGradient, RqMode};
use hmdn_cpu::gradcheck::RandomBatch;
use hmdn_cpu::model::Model;
use hmdn_cpu::optim::{EmbeddingOptim, OptimConfig, Optimizer};
use hmdn_cpu::params::ParamStore;
use hmdn_cpu::train::train_step;
use rand::rngs::StdRng;
use rand::SeedableRng;

/// Training steps per run.
const STEPS: usize = 5;
/// Rows per batch; the fourth step uses a smaller batch ([`SMALL`]) so that buffer reuse at a
/// second shape is covered too.
const B: usize = 1536;
const SMALL: usize = 1000;
/// Seed of the model (initialisation, k-means, dead-code restarts).
const SEED: u64 = 2024;

/// `(name, vocabulary)` of the categorical fields: one large table (parallel lazy Adam), a
/// few mid-sized ones, three distribution fields with enough distinct combinations
/// (100·50·9) for k-means to see more than K distinct rows, and a 4-valued domain.
const FIELDS: [(&str, usize); 8] = [
    ("user", 200_000),
    ("item", 20_000),
    ("shop", 5_000),
    ("brand", 1_000),
    ("city", 100),
    ("age_level", 50),
    ("gender", 9),
    ("domain", 4),
];

/// One model configuration and optimiser setting under test.
struct Case {
    name: String,
    cfg: ModelConfig,
    optim: OptimConfig,
}

fn config(kind: ModelKind) -> ModelConfig {
    ModelConfig {
        model: kind,
        fields: FIELDS
            .iter()
            .map(|&(n, v)| FieldSpec {
                name: n.into(),
                vocab_size: v,
            })
            .collect(),
        numeric: vec!["price".into(), "age".into()],
        distribution: vec!["city".into(), "age_level".into(), "gender".into()],
        domain: Some("domain".into()),
        tasks: vec!["click".into(), "purchase".into()],
        embed_dim: 32,
        hidden: vec![128, 64, 32],
        ..ModelConfig::default()
    }
}

fn case(kind: ModelKind) -> Case {
    Case {
        name: kind.name().into(),
        cfg: config(kind),
        optim: OptimConfig::default(),
    }
}

/// The batches of a run: [`STEPS`] batches drawn from a fixed seed, the fourth one smaller.
fn batches(cfg: &ModelConfig) -> Vec<RandomBatch> {
    let mut rng = StdRng::seed_from_u64(SEED ^ 0xba7c);
    (0..STEPS)
        .map(|s| RandomBatch::new(cfg, if s == 3 { SMALL } else { B }, &mut rng))
        .collect()
}

/// What a run leaves behind, compared bit for bit.
struct Outcome {
    params: ParamStore<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    /// `total` loss of every step, as bits.
    losses: Vec<u32>,
    adam_steps: u64,
}

/// Builds the model from [`SEED`] and trains it for [`STEPS`] steps inside a pool of
/// `threads` rayon threads (k-means on the first batch for hmdn-*, and the fit loop's
/// per-step book-keeping, which performs dead-code restarts when enabled).
fn run(case: &Case, data: &[RandomBatch], threads: usize) -> Outcome {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    pool.install(|| {
        assert_eq!(rayon::current_num_threads(), threads);
        let mut m = Model::<f32>::new(&case.cfg, SEED).expect("valid config");
        let mut opt = Optimizer::new(&m.params, case.optim.clone());
        if case.cfg.model.uses_rq() {
            m.kmeans_init(&data[0].batch(), &mut StdRng::seed_from_u64(SEED + 1));
        }
        let mut losses = Vec::new();
        for (step, b) in data.iter().enumerate() {
            let loss = train_step(&mut m, &mut opt, &b.batch()).expect("finite loss");
            m.after_step(step as u64 + 1, SEED);
            losses.push(loss.total.to_bits());
        }
        Outcome {
            params: m.params,
            m: opt.m,
            v: opt.v,
            losses,
            adam_steps: opt.step,
        }
    })
}

/// Names of the tensors whose values differ between `a` and `b` (bit for bit), with the
/// number of differing elements each.
fn differing(specs: &ParamStore<f32>, a: &[f32], b: &[f32]) -> Vec<(String, usize)> {
    assert_eq!(a.len(), b.len());
    specs
        .specs
        .iter()
        .filter_map(|s| {
            let r = s.range();
            let n = a[r.clone()]
                .iter()
                .zip(&b[r])
                .filter(|(x, y)| x.to_bits() != y.to_bits())
                .count();
            (n > 0).then(|| (s.name.clone(), n))
        })
        .collect()
}

#[track_caller]
fn assert_same(case: &Case, what: &str, a: &Outcome, b: &Outcome) {
    let name = &case.name;
    assert_eq!(a.losses, b.losses, "{name}: losses differ ({what})");
    assert_eq!(a.adam_steps, b.adam_steps, "{name}: ({what})");
    for (arena, x, y) in [
        ("values", a.params.values(), b.params.values()),
        ("Adam m", &a.m[..], &b.m[..]),
        ("Adam v", &a.v[..], &b.v[..]),
    ] {
        let d = differing(&a.params, x, y);
        assert!(d.is_empty(), "{name}: {arena} differ ({what}): {d:?}");
    }
}

/// Checks one case: 1 thread is the reference; 2 and 3 threads, and a second fresh 2-thread
/// run, must reproduce it exactly. Also checks that training moved every parameter tensor
/// (so the comparison covers every layer's backward and update, not untouched weights).
fn check(case: Case) {
    let data = batches(&case.cfg);
    let reference = run(&case, &data, 1);
    let init = Model::<f32>::new(&case.cfg, SEED).expect("valid config");
    let changed = differing(
        &init.params,
        init.params.values(),
        reference.params.values(),
    );
    for s in &init.params.specs {
        assert!(
            changed.iter().any(|(n, _)| *n == s.name),
            "{}: {} ({:?}) did not change in {STEPS} steps",
            case.name,
            s.name,
            s.kind
        );
    }
    let two = run(&case, &data, 2);
    assert_same(&case, "1 vs 2 threads", &reference, &two);
    let again = run(&case, &data, 2);
    assert_same(&case, "two fresh 2-thread runs", &two, &again);
    let three = run(&case, &data, 3);
    assert_same(&case, "1 vs 3 threads", &reference, &three);
    // More threads than the batch has row chunks (3 at B = 1536): the kernels inside each
    // chunk split their work across threads too (with fewer threads they run serially).
    let eight = run(&case, &data, 8);
    assert_same(&case, "1 vs 8 threads", &reference, &eight);
    println!(
        "{}: {} parameters, {} changed, identical on 1/2/3/8 threads; losses {:?}",
        case.name,
        init.params.len(),
        changed.iter().map(|(_, n)| n).sum::<usize>(),
        reference
            .losses
            .iter()
            .map(|&l| f32::from_bits(l))
            .collect::<Vec<_>>()
    );
}

#[test]
fn dnn() {
    check(case(ModelKind::Dnn));
}

#[test]
fn wide_deep() {
    check(case(ModelKind::WideDeep));
}

#[test]
fn dcn() {
    check(case(ModelKind::Dcn));
}

#[test]
fn shared_bottom() {
    check(case(ModelKind::SharedBottom));
}

#[test]
fn mmoe() {
    check(case(ModelKind::Mmoe));
}

#[test]
fn pepnet() {
    check(case(ModelKind::Pepnet));
}

#[test]
fn hmdn_mmoe() {
    check(case(ModelKind::HmdnMmoe));
}

#[test]
fn hmdn_pepnet() {
    check(case(ModelKind::HmdnPepnet));
}

#[test]
fn hmdn_mmoe_per_level_codebooks() {
    let mut c = case(ModelKind::HmdnMmoe);
    c.cfg.rq.per_level_codebooks = true;
    c.name += " per-level codebooks";
    check(c);
}

#[test]
fn hmdn_mmoe_explicit() {
    let mut c = case(ModelKind::HmdnMmoe);
    c.cfg.rq.mode = RqMode::Explicit;
    c.cfg.rq.depth = 0;
    c.name += " explicit";
    check(c);
}

#[test]
fn hmdn_pepnet_explicit_direct() {
    let mut c = case(ModelKind::HmdnPepnet);
    c.cfg.rq.mode = RqMode::Explicit;
    c.cfg.rq.depth = 0;
    c.cfg.rq.gradient = RqGradient::Direct;
    c.name += " explicit direct";
    check(c);
}

#[test]
fn hmdn_mmoe_dead_code_restarts() {
    // Restarts every code idle for one step: the restart draws from a (seed, step) generator
    // and must not depend on the thread count either.
    let mut c = case(ModelKind::HmdnMmoe);
    c.cfg.rq.dead_code_restart_steps = 1;
    c.name += " dead-code restarts";
    check(c);
}

#[test]
fn mmoe_shared_dist_embeddings() {
    let mut c = case(ModelKind::Mmoe);
    c.cfg.share_dist_embeddings = true;
    c.name += " shared distribution tables";
    check(c);
}

#[test]
fn dnn_dense_embedding_adam_with_l2() {
    let mut c = case(ModelKind::Dnn);
    c.optim.embedding = EmbeddingOptim::Dense;
    c.optim.embedding_l2 = 1e-4;
    c.name += " dense embedding Adam + L2";
    check(c);
}

#[test]
fn other_data_gives_other_weights() {
    // The bit-for-bit comparisons above are meaningful only if the outcome depends on its
    // inputs at all: other batches must change every trained tensor.
    let c = case(ModelKind::HmdnMmoe);
    let data = batches(&c.cfg);
    let a = run(&c, &data, 2);
    let mut rng = StdRng::seed_from_u64(SEED ^ 0x5eed);
    let other: Vec<_> = data
        .iter()
        .map(|b| RandomBatch::new(&c.cfg, b.rows, &mut rng))
        .collect();
    let b = run(&c, &other, 2);
    let d = differing(&a.params, a.params.values(), b.params.values());
    assert_eq!(d.len(), a.params.specs.len(), "{d:?}");
    assert_ne!(a.losses, b.losses);
}

#[test]
fn phase_profiling_changes_no_result_and_charges_the_phases_each_model_has() {
    // The profile only reads the clock: training with it on gives the same bits. Phases a
    // model does not have get no time (no quantizer → no `rq`; no gates in dnn, dcn,
    // wide-deep, shared-bottom), the ones it has get some, and together they account for at
    // most the wall time of forward + backward.
    for kind in ModelKind::ALL {
        let cfg = hmdn_cpu::gradcheck::tiny_config(kind);
        let mut rng = StdRng::seed_from_u64(9);
        let data: Vec<_> = (0..3)
            .map(|_| RandomBatch::new(&cfg, 64, &mut rng))
            .collect();
        let train = |profile: bool| {
            let mut m = Model::<f32>::new(&cfg, 10).unwrap();
            let mut opt = Optimizer::new(&m.params, OptimConfig::default());
            if profile {
                m.profile = Some(Default::default());
            }
            let mut wall = std::time::Duration::ZERO;
            for b in &data {
                let b = b.batch();
                let t0 = std::time::Instant::now();
                m.forward(&b);
                m.backward(&b);
                wall += t0.elapsed();
                let (ps, rg) = m.params_and_row_grads();
                opt.step(ps, rg, |r| hmdn_cpu::optim::SparseRows {
                    table: r.table,
                    rows: &r.rows,
                    grad: &r.grad,
                });
            }
            (m.params.values().to_vec(), m.profile, wall)
        };
        let (plain, none, _) = train(false);
        let (profiled, times, wall) = train(true);
        assert!(none.is_none());
        let same = plain
            .iter()
            .zip(&profiled)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{kind}: profiling changed the trained weights");
        let p = times.expect("profile kept");
        assert_eq!((p.forwards, p.backwards), (3, 3), "{kind}");
        let has_gates = kind.uses_dist();
        for (name, d) in p.entries() {
            let expected = match name {
                "rq" => kind.uses_rq(),
                "gates" => has_gates,
                _ => true,
            };
            assert_eq!(!d.is_zero(), expected, "{kind}: phase {name} took {d:?}");
        }
        assert!(p.total() <= wall, "{kind}: {:?} > {wall:?}", p.total());
    }
}
