//! Cross-check of whole models against an independent PyTorch implementation
//! (`fixtures/gen_reference.py`, float64): logits, losses, codes and every parameter gradient
//! to 1e-5 relative, the 10-step Adam/SparseAdam loss trajectory to 1e-4, and the weights
//! after those 10 steps.

use hmdn_cpu::checkpoint::{assign_params, TensorFile};
use hmdn_cpu::config::ModelConfig;
use hmdn_cpu::model::Model;
use hmdn_cpu::optim::{OptimConfig, Optimizer};
use hmdn_cpu::params::ParamKind;
use hmdn_cpu::train::train_step;
use hmdn_cpu::{Batch, Real};
use std::path::Path;

/// Relative error with a floor (gradients of exactly 0 compare by absolute error / 1e-6).
fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(1e-6)
}

fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| rel(x, y))
        .fold(0.0, f64::max)
}

struct Fixture {
    file: TensorFile,
    cfg: ModelConfig,
    cat: Vec<u32>,
    num: Vec<f32>,
    labels: Vec<f32>,
    rows: usize,
    lr: f64,
}

fn load(name: &str) -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    let file = TensorFile::read(&path).expect("fixture readable");
    let cfg: ModelConfig = serde_json::from_str(&file.metadata["config"]).expect("config JSON");
    let lr: f64 = file.metadata["lr"].parse().expect("lr");
    let cat_t = file.get("input.cat").unwrap();
    let rows = cat_t.shape[0];
    let cat = cat_t.data.iter().map(|&v| v as u32).collect();
    let num = file
        .get("input.num")
        .unwrap()
        .data
        .iter()
        .map(|&v| v as f32)
        .collect();
    let labels = file
        .get("input.labels")
        .unwrap()
        .data
        .iter()
        .map(|&v| v as f32)
        .collect();
    Fixture {
        file,
        cfg,
        cat,
        num,
        labels,
        rows,
        lr,
    }
}

fn build<T: Real>(fx: &Fixture) -> Model<T> {
    let mut m = Model::<T>::new(&fx.cfg, 0).expect("model builds");
    assign_params(&mut m.params, &fx.file, "param.", true).expect("fixture has every parameter");
    m
}

fn check_forward_backward(name: &str) {
    let fx = load(name);
    let mut m = build::<f64>(&fx);
    let batch = Batch {
        rows: fx.rows,
        cat: &fx.cat,
        num: &fx.num,
        labels: &fx.labels,
    };
    let loss = m.forward(&batch);
    let logits_ref = &fx.file.get("out.logits").unwrap().data;
    let e_logits = max_rel(
        &m.logits()[..logits_ref.len()]
            .iter()
            .map(|v| v.to_f64())
            .collect::<Vec<_>>(),
        logits_ref,
    );
    let e_loss = rel(loss.total, fx.file.get("out.loss").unwrap().data[0]);
    let e_task = rel(loss.task, fx.file.get("out.task_loss").unwrap().data[0]);
    let e_rq = rel(loss.rq, fx.file.get("out.rq_loss").unwrap().data[0]);
    println!("{name}: logits max rel {e_logits:.2e}, loss {e_loss:.2e}, task {e_task:.2e}, rq {e_rq:.2e}");
    let codes_ref: Vec<u32> = fx
        .file
        .get("out.codes")
        .unwrap()
        .data
        .iter()
        .map(|&v| v as u32)
        .collect();
    assert_eq!(m.rq_caches().count(), 1, "a small batch is one row chunk");
    let cache = m.rq_caches().next().expect("hmdn model has a quantizer");
    assert_eq!(
        &cache.codes[..codes_ref.len()],
        &codes_ref[..],
        "argmin codes differ from PyTorch"
    );
    assert!(e_logits <= 1e-5 && e_loss <= 1e-5 && e_task <= 1e-5 && e_rq <= 1e-5);

    m.backward(&batch);
    let mut dense = m.params.grads.clone();
    for s in &m.params.specs {
        if s.kind == ParamKind::Embedding {
            dense[s.range()].fill(0.0);
        }
    }
    for rg in m.row_grads() {
        let r = m.params.range(rg.table);
        rg.add_to_dense(&mut dense[r]);
    }
    let mut worst = 0.0f64;
    for s in &m.params.specs {
        let g_ref = &fx.file.get(&format!("grad.{}", s.name)).unwrap().data;
        let e = max_rel(&dense[s.range()], g_ref);
        println!(
            "  grad {:<32} {:<10} max rel {e:.2e}",
            s.name,
            format!("{:?}", s.shape)
        );
        worst = worst.max(e);
    }
    println!("{name}: worst gradient max rel {worst:.2e}");
    assert!(
        worst <= 1e-5,
        "gradients differ from PyTorch by {worst:.2e}"
    );
}

fn check_trajectory(name: &str) {
    let fx = load(name);
    let mut m = build::<f64>(&fx);
    let mut opt = Optimizer::new(
        &m.params,
        OptimConfig {
            lr: fx.lr,
            ..OptimConfig::default()
        },
    );
    let batch = Batch {
        rows: fx.rows,
        cat: &fx.cat,
        num: &fx.num,
        labels: &fx.labels,
    };
    let traj = &fx.file.get("traj.loss").unwrap().data;
    let mut worst = 0.0f64;
    for (s, &want) in traj.iter().enumerate() {
        let l = train_step(&mut m, &mut opt, &batch)
            .expect("finite loss")
            .total;
        let e = rel(l, want);
        println!("{name}: step {s} loss {l:.12} torch {want:.12} rel {e:.2e}");
        worst = worst.max(e);
    }
    assert!(worst <= 1e-4, "loss trajectory differs by {worst:.2e}");
    let mut wf = 0.0f64;
    for s in &m.params.specs {
        let want = &fx.file.get(&format!("final.{}", s.name)).unwrap().data;
        wf = wf.max(max_rel(&m.params.values()[s.range()], want));
    }
    println!("{name}: weights after 10 steps max rel {wf:.2e}");
    assert!(wf <= 1e-5, "weights after 10 Adam steps differ by {wf:.2e}");

    // The f32 training path follows the same trajectory to f32 accuracy.
    let mut m32 = build::<f32>(&fx);
    let mut opt32 = Optimizer::new(
        &m32.params,
        OptimConfig {
            lr: fx.lr,
            ..OptimConfig::default()
        },
    );
    let mut w32 = 0.0f64;
    for &want in traj.iter() {
        let l = train_step(&mut m32, &mut opt32, &batch)
            .expect("finite loss")
            .total;
        w32 = w32.max(rel(l as f64, want));
    }
    println!("{name}: f32 trajectory max rel {w32:.2e}");
    assert!(w32 <= 1e-4, "f32 loss trajectory differs by {w32:.2e}");
}

#[test]
fn hmdn_mmoe_matches_pytorch() {
    check_forward_backward("reference_hmdn_mmoe.safetensors");
}

#[test]
fn hmdn_pepnet_matches_pytorch() {
    check_forward_backward("reference_hmdn_pepnet.safetensors");
}

#[test]
fn hmdn_mmoe_adam_trajectory_matches_pytorch() {
    check_trajectory("reference_hmdn_mmoe.safetensors");
}

#[test]
fn hmdn_pepnet_adam_trajectory_matches_pytorch() {
    check_trajectory("reference_hmdn_pepnet.safetensors");
}
