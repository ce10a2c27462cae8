//! Training lanes (`Model::set_training_lanes`): a training pass with more row chunks than
//! threads runs its chunks on one lane per thread, each lane reusing one set of activation
//! buffers while every chunk keeps its own gradient arena and quantizer cache. That must be
//! the pass with one buffer set per chunk bit for bit — loss, logits, gradients, quantizer
//! codes, and the weights after training steps — for every model, on 1 and 2 threads.

use hmdn_cpu::config::ModelKind;
use hmdn_cpu::gradcheck::{tiny_config, RandomBatch};
use hmdn_cpu::model::{chunk_layout, Model};
use hmdn_cpu::optim::{OptimConfig, Optimizer};
use hmdn_cpu::train::train_step;
use hmdn_kernels::Real;
use rand::rngs::StdRng;
use rand::SeedableRng;

mod model_common;
use model_common::{bits, grad_bits};

/// Rows per batch: 3 chunks, more than either pool's threads.
const B: usize = 1040;

/// Every chunk's quantizer codes, in chunk order (empty without a quantizer).
fn codes<T: Real>(m: &Model<T>) -> Vec<u32> {
    match &m.rq {
        Some(q) => m
            .rq_caches()
            .flat_map(|c| c.codes[..c.bsz * q.depth].to_vec())
            .collect(),
        None => Vec::new(),
    }
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

#[test]
fn lanes_give_the_per_chunk_pass_bit_for_bit() {
    assert_eq!(chunk_layout(B).1, 3);
    for threads in [1, 2] {
        pool(threads).install(|| {
            for kind in ModelKind::ALL {
                let cfg = tiny_config(kind);
                let data = RandomBatch::new(&cfg, B, &mut StdRng::seed_from_u64(5));
                let mut on = Model::<f64>::new(&cfg, 9).unwrap();
                let mut off = Model::<f64>::new(&cfg, 9).unwrap();
                on.set_training_lanes(true);
                off.set_training_lanes(false);
                let name = format!("{kind}, {threads} thread(s)");
                // Twice: the second pass starts from the lanes' and arenas' leftovers.
                for pass in 0..2 {
                    let lon = on.forward_backward(&data.batch());
                    let loff = off.forward_backward(&data.batch());
                    assert_eq!(lon.total.to_bits(), loff.total.to_bits(), "{name}: loss");
                    assert_eq!(lon.rq.to_bits(), loff.rq.to_bits(), "{name}: L_rq");
                    assert_eq!(bits(on.logits()), bits(off.logits()), "{name}: logits");
                    assert_eq!(codes(&on), codes(&off), "{name}: codes, pass {pass}");
                    assert_eq!(
                        grad_bits(&mut on),
                        grad_bits(&mut off),
                        "{name}: gradients, pass {pass}"
                    );
                }
                // A forward after a pass on lanes fills every chunk again.
                on.forward(&data.batch());
                let mut pattern = Vec::new();
                on.relu_pattern(&mut pattern);
            }
        });
    }
}

#[test]
fn lanes_train_the_same_weights_in_f32() {
    for kind in [ModelKind::HmdnMmoe, ModelKind::HmdnPepnet, ModelKind::Dcn] {
        let cfg = tiny_config(kind);
        let mut rng = StdRng::seed_from_u64(6);
        let batches: Vec<_> = (0..3)
            .map(|_| RandomBatch::new(&cfg, B, &mut rng))
            .collect();
        let weights = |lanes: bool| {
            pool(2).install(|| {
                let mut m = Model::<f32>::new(&cfg, 3).unwrap();
                m.set_training_lanes(lanes);
                let mut opt = Optimizer::new(&m.params, OptimConfig::default());
                for (i, b) in batches.iter().enumerate() {
                    train_step(&mut m, &mut opt, &b.batch()).unwrap();
                    m.after_step(i as u64 + 1, 2);
                }
                bits(m.params.values())
            })
        };
        assert_eq!(
            weights(true),
            weights(false),
            "{kind}: weights after 3 steps"
        );
    }
}

#[test]
#[should_panic(expected = "a training pass on lanes do not keep")]
fn relu_pattern_after_a_pass_on_lanes_is_refused() {
    let cfg = tiny_config(ModelKind::Pepnet);
    let data = RandomBatch::new(&cfg, B, &mut StdRng::seed_from_u64(8));
    pool(1).install(|| {
        let mut m = Model::<f64>::new(&cfg, 9).unwrap();
        m.forward_backward(&data.batch());
        let mut pattern = Vec::new();
        m.relu_pattern(&mut pattern);
    });
}
