//! The quantizer on a batch's distinct distribution keys (`model::distinct`): when a batch has
//! few distinct distribution-id combinations, the hmdn-* models quantize one row per
//! combination and copy the results to the rows. That pass must be the row-wise one (the
//! path the gradient checks and the PyTorch cross-check verify) bit for bit: loss, logits,
//! gradients, codes, and the weights after training steps, for every quantizer variant, in
//! f64 and in f32, for training and predictions.

use hmdn_cpu::bench::aliccp_shape_config;
use hmdn_cpu::config::{ModelConfig, ModelKind, RqGradient, RqMode};
use hmdn_cpu::gradcheck::{tiny_config, RandomBatch};
use hmdn_cpu::model::Model;
use hmdn_cpu::optim::{OptimConfig, Optimizer};
use hmdn_cpu::train::train_step;
use hmdn_cpu::Batch;
use hmdn_kernels::Real;
use rand::rngs::StdRng;
use rand::SeedableRng;

mod model_common;
use model_common::{bits, grad_bits};

/// Rows per batch: 3 chunks, against at most 3 · 5 · 4 = 60 distinct keys in the tiny
/// configuration.
const B: usize = 1040;

/// The hmdn-* models with every quantizer variant: implicit / explicit, `ste` / `direct`,
/// one shared / per-level codebooks; and with x_b read from the main tables
/// (`share_dist_embeddings`).
fn variants(base: impl Fn(ModelKind) -> ModelConfig) -> Vec<(String, ModelConfig)> {
    let mut out = Vec::new();
    for kind in [ModelKind::HmdnMmoe, ModelKind::HmdnPepnet] {
        for mode in [RqMode::Implicit, RqMode::Explicit] {
            for gradient in [RqGradient::Ste, RqGradient::Direct] {
                for per_level in [false, true] {
                    let mut c = base(kind);
                    c.rq.mode = mode;
                    c.rq.gradient = gradient;
                    c.rq.per_level_codebooks = per_level;
                    if mode == RqMode::Explicit {
                        c.rq.depth = 0;
                    }
                    let name = format!("{kind} {mode:?} {gradient:?} per-level={per_level}");
                    out.push((name, c));
                }
            }
        }
        let mut c = base(kind);
        c.share_dist_embeddings = true;
        out.push((format!("{kind} shared tables"), c));
    }
    out
}

/// Every chunk's codes, in chunk order.
fn codes<T: Real>(m: &Model<T>) -> Vec<u32> {
    m.rq_caches()
        .flat_map(|c| c.codes[..c.bsz * m.rq.as_ref().unwrap().depth].to_vec())
        .collect()
}

/// A model with distinct keys on and one with them off, same seed.
fn pair<T: Real>(cfg: &ModelConfig) -> [Model<T>; 2] {
    let mut on = Model::<T>::new(cfg, 9).unwrap();
    on.set_distinct_keys(true);
    let mut off = Model::<T>::new(cfg, 9).unwrap();
    off.set_distinct_keys(false);
    [on, off]
}

#[test]
fn gathered_forward_backward_is_the_rowwise_one_bit_for_bit() {
    for (name, cfg) in variants(tiny_config) {
        let data = RandomBatch::new(&cfg, B, &mut StdRng::seed_from_u64(3));
        let [mut on, mut off] = pair::<f64>(&cfg);
        let lon = on.forward_backward(&data.batch());
        let loff = off.forward_backward(&data.batch());
        assert!(
            on.gathered_distinct_keys(),
            "{name}: the batch was not gathered"
        );
        assert!(!off.gathered_distinct_keys(), "{name}: gathered while off");
        assert!(
            on.quantized_rows() <= 60 && on.quantized_rows() > 0,
            "{name}"
        );
        assert_eq!(off.quantized_rows(), B, "{name}");
        assert_eq!(lon.total.to_bits(), loff.total.to_bits(), "{name}: loss");
        assert_eq!(lon.rq.to_bits(), loff.rq.to_bits(), "{name}: L_rq");
        assert!(lon.rq > 0.0, "{name}: no L_rq");
        assert_eq!(bits(on.logits()), bits(off.logits()), "{name}: logits");
        assert_eq!(codes(&on), codes(&off), "{name}: codes");
        assert_eq!(grad_bits(&mut on), grad_bits(&mut off), "{name}: gradients");

        // Forward then backward (what the gradient checks run), and predictions.
        let (fon, foff) = (on.forward(&data.batch()), off.forward(&data.batch()));
        assert_eq!(fon.total.to_bits(), foff.total.to_bits(), "{name}: forward");
        on.backward(&data.batch());
        off.backward(&data.batch());
        assert_eq!(grad_bits(&mut on), grad_bits(&mut off), "{name}: backward");
        on.infer(&data.batch());
        off.infer(&data.batch());
        assert!(on.gathered_distinct_keys(), "{name}: infer did not gather");
        assert_eq!(bits(on.logits()), bits(off.logits()), "{name}: infer");
        on.infer_keeping_chunks(&data.batch());
        off.infer_keeping_chunks(&data.batch());
        assert_eq!(
            codes(&on),
            codes(&off),
            "{name}: infer_keeping_chunks codes"
        );
    }
}

#[test]
fn gathered_training_gives_the_rowwise_weights_in_f32_at_the_aliccp_shape() {
    for (name, mut cfg) in variants(aliccp_shape_config) {
        // A smaller vocabulary elsewhere keeps the test quick; the distribution fields keep
        // theirs (3 · 5 · 3 = 45 keys).
        for f in &mut cfg.fields {
            f.vocab_size = f.vocab_size.min(1000);
        }
        let mut rng = StdRng::seed_from_u64(4);
        let batches: Vec<_> = (0..3)
            .map(|_| RandomBatch::new(&cfg, 1100, &mut rng))
            .collect();
        let [mut on, mut off] = pair::<f32>(&cfg);
        let mut opts = [&on, &off].map(|m| Optimizer::new(&m.params, OptimConfig::default()));
        for (i, m) in [&mut on, &mut off].into_iter().enumerate() {
            m.kmeans_init(&batches[0].batch(), &mut StdRng::seed_from_u64(1));
            for b in &batches {
                train_step(m, &mut opts[i], &b.batch()).unwrap();
                m.after_step(1, 2);
            }
        }
        assert!(on.gathered_distinct_keys(), "{name}");
        assert_eq!(
            bits(on.params.values()),
            bits(off.params.values()),
            "{name}: weights after 3 steps"
        );
        on.infer(&batches[1].batch());
        off.infer(&batches[1].batch());
        assert_eq!(bits(on.logits()), bits(off.logits()), "{name}: infer");
    }
}

#[test]
fn batches_with_many_distinct_keys_quantize_every_row() {
    let cfg = tiny_config(ModelKind::HmdnMmoe);
    let data = RandomBatch::new(&cfg, B, &mut StdRng::seed_from_u64(3));
    let nf = cfg.fields.len();
    // 10 rows with 10 distinct (gender, city, domain) keys: more than half distinct.
    let rows = 10;
    let mut cat = data.cat[..rows * nf].to_vec();
    for (r, row) in cat.chunks_exact_mut(nf).enumerate() {
        row[0] = (r % 3) as u32;
        row[1] = (r % 5) as u32;
        row[3] = (r / 5) as u32;
    }
    let batch = Batch {
        rows,
        cat: &cat,
        num: &data.num[..rows * cfg.numeric.len()],
        labels: &data.labels[..rows * cfg.tasks.len()],
    };
    let [mut on, mut off] = pair::<f64>(&cfg);
    let (a, b) = (on.forward(&batch), off.forward(&batch));
    assert!(!on.gathered_distinct_keys());
    assert_eq!(on.quantized_rows(), rows);
    assert_eq!(a.total.to_bits(), b.total.to_bits());

    // The same rows repeated: 10 keys in 40 rows, gathered.
    let cat4 = cat.repeat(4);
    let num4 = batch.num.repeat(4);
    let lab4 = batch.labels.repeat(4);
    let batch4 = Batch {
        rows: 4 * rows,
        cat: &cat4,
        num: &num4,
        labels: &lab4,
    };
    let (a, b) = (on.forward(&batch4), off.forward(&batch4));
    assert!(on.gathered_distinct_keys());
    assert_eq!(on.quantized_rows(), rows);
    assert_eq!(a.total.to_bits(), b.total.to_bits());
    assert_eq!(bits(on.logits()), bits(off.logits()));
}

#[test]
fn models_with_many_key_combinations_quantize_every_row() {
    let mut cfg = tiny_config(ModelKind::HmdnPepnet);
    // 300 · 300 combinations: more than a dense key table holds.
    cfg.fields[0].vocab_size = 300;
    cfg.fields[1].vocab_size = 300;
    let mut data = RandomBatch::new(&cfg, B, &mut StdRng::seed_from_u64(3));
    for row in data.cat.chunks_exact_mut(cfg.fields.len()) {
        row[0] = 1;
        row[1] = 2;
    }
    let mut m = Model::<f64>::new(&cfg, 9).unwrap();
    m.forward(&data.batch());
    assert!(!m.gathered_distinct_keys());
    assert_eq!(m.quantized_rows(), B);
}
