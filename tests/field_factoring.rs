//! MMoE's experts with their first layer factored over the batch's distinct ids
//! (`model::factored`), and PEPNet's EPNet gate with its first layer factored by field
//! (`gatenu::FieldSplit`), against the same models run unfactored: the same function, summed in
//! another order, so equal up to rounding (checked in f64 to 1e-12 relative) — loss, logits,
//! every dense gradient and every embedding row gradient; and, because which fields are
//! factored is fixed per model, a row's logits do not depend on the batch it comes in.

use hmdn_cpu::bench::aliccp_shape_config;
use hmdn_cpu::config::{ModelConfig, ModelKind};
use hmdn_cpu::gradcheck::{tiny_config, RandomBatch};
use hmdn_cpu::model::Model;
use hmdn_cpu::Batch;
use hmdn_kernels::Real;
use rand::rngs::StdRng;
use rand::SeedableRng;

/// Dense gradients followed by every table's row gradients made dense.
fn grads<T: Real>(m: &mut Model<T>) -> Vec<f64> {
    let (ps, rgs) = m.params_and_row_grads();
    let mut g: Vec<f64> = ps.grads.iter().map(|v| v.to_f64()).collect();
    for rg in rgs {
        let mut dense = vec![T::ZERO; ps.range(rg.table).len()];
        rg.add_to_dense(&mut dense);
        g.extend(dense.iter().map(|v| v.to_f64()));
    }
    g
}

/// `max |a − b| <= tol · max(1, max |b|)`.
#[track_caller]
fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f64, f64::max);
    assert!(
        worst <= tol * scale,
        "{what}: max difference {worst:e} (scale {scale:e})"
    );
}

fn configs() -> Vec<(String, ModelConfig)> {
    let mut out = Vec::new();
    let kinds = [
        ModelKind::Mmoe,
        ModelKind::HmdnMmoe,
        ModelKind::Pepnet,
        ModelKind::HmdnPepnet,
    ];
    for kind in kinds {
        out.push((format!("{kind} tiny"), tiny_config(kind)));
        let mut c = aliccp_shape_config(kind);
        for f in &mut c.fields {
            f.vocab_size = f.vocab_size.min(3000);
        }
        out.push((format!("{kind} aliccp-shape"), c));
    }
    out
}

#[test]
fn factored_forward_backward_matches_unfactored_in_f64() {
    for (name, cfg) in configs() {
        for rows in [1, 7, 300, 1100] {
            let data = RandomBatch::new(&cfg, rows, &mut StdRng::seed_from_u64(5));
            let mut on = Model::<f64>::new(&cfg, 3).unwrap();
            let mut off = Model::<f64>::new(&cfg, 3).unwrap();
            off.set_field_factoring(false);
            let lon = on.forward_backward(&data.batch());
            let loff = off.forward_backward(&data.batch());
            assert!(on.factored_fields(), "{name} B={rows}: not factored");
            assert!(
                !off.factored_fields(),
                "{name} B={rows}: factored while off"
            );
            let what = format!("{name} B={rows}");
            assert_close(&[lon.total], &[loff.total], 1e-12, &format!("{what}: loss"));
            let (lo, lf): (Vec<f64>, Vec<f64>) = (on.logits().to_vec(), off.logits().to_vec());
            assert_close(&lo, &lf, 1e-12, &format!("{what}: logits"));
            let (gon, goff) = (grads(&mut on), grads(&mut off));
            assert!(goff.iter().any(|&v| v != 0.0), "{what}: no gradient");
            assert_close(&gon, &goff, 1e-12, &format!("{what}: gradients"));

            // Forward then backward separately, and predictions.
            on.forward(&data.batch());
            on.backward(&data.batch());
            assert_close(&grads(&mut on), &goff, 1e-12, &format!("{what}: backward"));
            on.infer(&data.batch());
            assert_close(on.logits(), &lf, 1e-12, &format!("{what}: infer"));
        }
    }
}

#[test]
fn factored_logits_do_not_depend_on_the_batch() {
    for (name, cfg) in configs() {
        let data = RandomBatch::new(&cfg, 1100, &mut StdRng::seed_from_u64(6));
        let full = data.batch();
        let mut m = Model::<f32>::new(&cfg, 3).unwrap();
        m.infer(&full);
        let all: Vec<u32> = m.logits().iter().map(|v| v.to_bits()).collect();
        let nf = cfg.fields.len();
        let nn = cfg.numeric.len();
        let nt = cfg.tasks.len();
        // Rows 13..20 as a batch of their own.
        let part = Batch {
            rows: 7,
            cat: &full.cat[13 * nf..20 * nf],
            num: &full.num[13 * nn..20 * nn],
            labels: &[],
        };
        m.infer(&part);
        assert!(m.factored_fields(), "{name}");
        let some: Vec<u32> = m.logits().iter().map(|v| v.to_bits()).collect();
        assert_eq!(some, all[13 * nt..20 * nt], "{name}: rows 13..20");
    }
}

/// Something done to a model's weights.
type WeightChange<'a> = dyn Fn(&mut Model<f32>) + 'a;

#[test]
fn inference_caches_follow_every_change_of_the_weights() {
    // Inference keeps what depends on the weights alone (packed weight copies, per-id
    // tables of the whole vocabulary, GateNU weight splits) while the weights' version stays
    // the same. Whatever changes the weights (a tensor written through `value_mut`, all
    // values through `values_mut`), the next `infer` must give the logits of a freshly built
    // model holding the new weights, bit for bit; stale copies would not (the change moves
    // the logits, checked too).
    for (name, cfg) in configs() {
        let data = RandomBatch::new(&cfg, 700, &mut StdRng::seed_from_u64(8));
        let batch = data.batch();
        let mut m = Model::<f32>::new(&cfg, 4).unwrap();
        let bits = |m: &Model<f32>| m.logits().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        m.infer(&batch);
        let first = bits(&m);
        m.infer(&batch);
        assert_eq!(bits(&m), first, "{name}: a second infer");
        m.forward(&batch);
        assert_eq!(bits(&m), first, "{name}: forward");
        // A table of a small (factored) field, the first and the last dense tensors, then
        // everything.
        let small = cfg
            .fields
            .iter()
            .find(|f| f.vocab_size <= 256)
            .expect("a small field");
        let table = m
            .params
            .find(&format!("embedding.{}.weight", small.name))
            .unwrap();
        let dense: Vec<_> = (0..m.params.specs.len())
            .filter(|&i| m.params.specs[i].kind == hmdn_cpu::params::ParamKind::Dense)
            .map(|i| m.params.find(&m.params.specs[i].name.clone()).unwrap())
            .collect();
        let (d_first, d_last) = (dense[0], dense[dense.len() - 1]);
        let changes: [&WeightChange<'_>; 4] = [
            &|m| {
                m.params
                    .value_mut(table)
                    .iter_mut()
                    .for_each(|v| *v = -*v * 1.5)
            },
            &|m| {
                m.params
                    .value_mut(d_first)
                    .iter_mut()
                    .for_each(|v| *v *= 0.75)
            },
            &|m| m.params.value_mut(d_last).iter_mut().for_each(|v| *v = -*v),
            &|m| m.params.values_mut().iter_mut().for_each(|v| *v *= 1.25),
        ];
        let mut before = first;
        for (k, change) in changes.iter().enumerate() {
            m.infer(&batch);
            change(&mut m);
            m.infer(&batch);
            let after = bits(&m);
            assert_ne!(after, before, "{name}: change {k} moved no logit");
            let mut fresh = Model::<f32>::new(&cfg, 4).unwrap();
            fresh.params.values_mut().copy_from_slice(m.params.values());
            fresh.infer(&batch);
            assert_eq!(
                bits(&fresh),
                after,
                "{name}: change {k}: stale inference state"
            );
            before = after;
        }
    }
}

#[test]
#[should_panic(expected = "outside its vocabulary")]
fn inference_rejects_an_id_outside_a_factored_vocabulary() {
    let cfg = tiny_config(ModelKind::Mmoe);
    let data = RandomBatch::new(&cfg, 300, &mut StdRng::seed_from_u64(9));
    let f = cfg
        .fields
        .iter()
        .position(|f| f.vocab_size <= 256)
        .expect("a small field");
    let mut cat = data.batch().cat.to_vec();
    cat[5 * cfg.fields.len() + f] = cfg.fields[f].vocab_size as u32;
    let mut m = Model::<f32>::new(&cfg, 4).unwrap();
    m.infer(&Batch {
        cat: &cat,
        ..data.batch()
    });
}
