//! Whole training steps (forward, backward, optimiser) at the aliccp shape
//! (`bench::aliccp_shape_config`: 23 fields, e = 16, MLP 128-64-32, K = 64, D = 6), one per
//! model at batch 1024, and hmdn-mmoe also at 256 and 4096. Throughput is in samples
//! (`Throughput::Elements(batch)`), so criterion's "elem/s" column reads as samples/s.
//!
//! Run: `cargo bench --bench train_step` (about two minutes; filter with a name substring,
//! e.g. `-- hmdn-mmoe`). Runs on the global rayon pool (`RAYON_NUM_THREADS` sets its size).
//! The `hmdn-cpu bench` command measures the same step with a phase breakdown.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hmdn_cpu::bench::{aliccp_shape_config, SyntheticBatches};
use hmdn_cpu::config::ModelKind;
use hmdn_cpu::model::Model;
use hmdn_cpu::optim::{OptimConfig, Optimizer};
use hmdn_cpu::train::train_step;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::time::Duration;

/// Large buffers start on a cache line, as in the `hmdn-cpu` binary
/// ([`hmdn_kernels::mem::LineAligned`]), so the numbers are the binary's.
#[global_allocator]
static ALLOC: hmdn_kernels::mem::LineAligned = hmdn_kernels::mem::LineAligned;

/// Distinct batches cycled through (ids drawn uniformly, so the touched embedding rows
/// change from step to step as in training).
const BATCHES: usize = 8;

fn bench_train_step(c: &mut Criterion) {
    let mut g = c.benchmark_group("train_step");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let mut cases: Vec<(ModelKind, usize)> = ModelKind::ALL.iter().map(|&k| (k, 1024)).collect();
    cases.extend([(ModelKind::HmdnMmoe, 256), (ModelKind::HmdnMmoe, 4096)]);
    for (kind, batch) in cases {
        let cfg = aliccp_shape_config(kind);
        let mut m = Model::<f32>::new(&cfg, 1).expect("valid config");
        let mut opt = Optimizer::new(&m.params, OptimConfig::default());
        let data = SyntheticBatches::new(&cfg, batch, BATCHES, 2);
        if cfg.model.uses_rq() {
            m.kmeans_init(&data.get(0), &mut StdRng::seed_from_u64(3));
        }
        let mut i = 0;
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(BenchmarkId::new(kind.name(), batch), |b| {
            b.iter(|| {
                let loss = train_step(&mut m, &mut opt, &data.get(i)).expect("finite loss");
                i += 1;
                loss.total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_train_step);
criterion_main!(benches);
