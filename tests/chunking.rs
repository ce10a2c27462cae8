//! Row chunks: a batch large enough to be split into chunks (run in parallel, each with its
//! own gradient arena) gives the same logits, loss and gradients as the same rows run as
//! separate single-chunk batches and combined — the single-chunk path being the one the
//! gradient checks and the PyTorch cross-check verify. f64, every model kind.
//!
//! Every loss term is a mean over rows, so for row blocks `S_i` of the batch `S`:
//! `∇L_S = Σ_i |S_i|/|S| · ∇L_{S_i}` and `L_S = Σ_i |S_i|/|S| · L_{S_i}`.

use hmdn_cpu::config::ModelKind;
use hmdn_cpu::gradcheck::{tiny_config, RandomBatch};
use hmdn_cpu::model::{chunk_layout, Model};
use hmdn_cpu::Batch;
use rand::rngs::StdRng;
use rand::SeedableRng;

/// Rows of the whole batch: 3 chunks of 352, 352 and 336 rows.
const B: usize = 1040;
/// Rows of each separate batch: below the split threshold, so one chunk each.
const PART: usize = 104;

/// Dense gradient of every parameter (row gradients of the tables added in).
fn dense_grads(m: &mut Model<f64>) -> Vec<f64> {
    let (ps, rgs) = m.params_and_row_grads();
    let mut g = ps.grads.clone();
    for rg in rgs {
        let r = ps.range(rg.table);
        rg.add_to_dense(&mut g[r]);
    }
    g
}

#[test]
fn chunked_batch_matches_separate_single_chunk_batches() {
    assert_eq!(chunk_layout(B), (352, 3));
    assert_eq!(chunk_layout(PART).1, 1);
    for kind in ModelKind::ALL {
        let cfg = tiny_config(kind);
        let data = RandomBatch::new(&cfg, B, &mut StdRng::seed_from_u64(17));
        let nf = cfg.fields.len();
        let (nn, nt) = (cfg.numeric.len(), cfg.tasks.len());

        let mut whole = Model::<f64>::new(&cfg, 5).unwrap();
        let l = whole.forward(&data.batch());
        whole.backward(&data.batch());
        let logits = whole.logits().to_vec();
        let g_whole = dense_grads(&mut whole);

        let mut part = Model::<f64>::new(&cfg, 5).unwrap();
        let mut g_sum = vec![0.0; g_whole.len()];
        let mut loss = 0.0;
        for p in 0..B / PART {
            let r = p * PART..(p + 1) * PART;
            let batch = Batch {
                rows: PART,
                cat: &data.cat[r.start * nf..r.end * nf],
                num: &data.num[r.start * nn..r.end * nn],
                labels: &data.labels[r.start * nt..r.end * nt],
            };
            let lp = part.forward(&batch);
            part.backward(&batch);
            loss += lp.total * PART as f64 / B as f64;
            for (a, b) in logits[r.start * nt..r.end * nt].iter().zip(part.logits()) {
                assert!(
                    (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
                    "{kind}: logit {a} vs {b}"
                );
            }
            for (s, g) in g_sum.iter_mut().zip(dense_grads(&mut part)) {
                *s += g * PART as f64 / B as f64;
            }
        }
        assert!((l.total - loss).abs() <= 1e-12 * loss.abs(), "{kind}: loss");
        let scale = g_whole.iter().fold(0.0f64, |m, g| m.max(g.abs()));
        assert!(scale > 0.0, "{kind}: no gradient");
        for (i, (a, b)) in g_whole.iter().zip(&g_sum).enumerate() {
            assert!(
                (a - b).abs() <= 1e-12 * scale,
                "{kind}: gradient element {i}: chunked {a} vs combined {b}"
            );
        }
    }
}

#[test]
fn fused_forward_backward_is_forward_then_backward_bit_for_bit() {
    // `forward_backward` runs each chunk's backward right after its forward (what training
    // uses); `forward` then `backward` run all forwards first. Same loss, logits, dense and
    // row gradients, bit for bit: f32 (the training precision, on this machine's SIMD path),
    // every model, 2200 rows (5 chunks) on 1, 2 and 3 threads, and two batches in a row so
    // that the second reuses arenas the first left.
    for kind in ModelKind::ALL {
        let cfg = tiny_config(kind);
        let mut rng = StdRng::seed_from_u64(23);
        let data = [
            RandomBatch::new(&cfg, 2200, &mut rng),
            RandomBatch::new(&cfg, 2200, &mut rng),
        ];
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let state = |m: &mut Model<f32>| {
            let (ps, rgs) = m.params_and_row_grads();
            let rows: Vec<(Vec<u32>, Vec<u32>)> = rgs
                .iter()
                .map(|r| (r.rows.clone(), bits(&r.grad)))
                .collect();
            (bits(&ps.grads), rows)
        };
        let mut reference = Model::<f32>::new(&cfg, 9).unwrap();
        let want: Vec<_> = data
            .iter()
            .map(|d| {
                let l = reference.forward(&d.batch());
                reference.backward(&d.batch());
                let logits = bits(reference.logits());
                (l.total.to_bits(), logits, state(&mut reference))
            })
            .collect();
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut m = Model::<f32>::new(&cfg, 9).unwrap();
                for (d, w) in data.iter().zip(&want) {
                    let l = m.forward_backward(&d.batch());
                    assert_eq!(l.total.to_bits(), w.0, "{kind} {threads} threads: loss");
                    assert_eq!(bits(m.logits()), w.1, "{kind} {threads} threads: logits");
                    let got = state(&mut m);
                    assert!(got.0 == w.2 .0, "{kind} {threads} threads: dense gradients");
                    assert!(got.1 == w.2 .1, "{kind} {threads} threads: row gradients");
                }
            });
        }
    }
}
