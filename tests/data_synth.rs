//! Synthetic data: statistics of the generator and its round trip through the data pipeline.

mod data_common;
use data_common::*;
use hmdn_cpu::data::synth::{generate, synth_schema, SynthRows};
use hmdn_cpu::data::Dataset;
use hmdn_cpu::metrics::auc;

#[test]
fn synth_statistics() {
    let rows: Vec<_> = SynthRows::new(7).take(200_000).collect();
    let labels: Vec<f32> = rows.iter().map(|r| f32::from(r.label)).collect();
    let p_true: Vec<f32> = rows.iter().map(|r| r.p_true as f32).collect();
    let p_flat: Vec<f32> = rows.iter().map(|r| r.p_flat as f32).collect();
    let ctr = labels.iter().sum::<f32>() as f64 / rows.len() as f64;
    let bayes = auc(&p_true, &labels).unwrap();
    let flat = auc(&p_flat, &labels).unwrap();
    println!("ctr {ctr:.4} bayes_auc {bayes:.4} flat_auc {flat:.4}");
    for seed in [1u64, 2, 3] {
        let rows: Vec<_> = SynthRows::new(seed).take(50_000).collect();
        let l: Vec<f32> = rows.iter().map(|r| f32::from(r.label)).collect();
        let t: Vec<f32> = rows.iter().map(|r| r.p_true as f32).collect();
        let f: Vec<f32> = rows.iter().map(|r| r.p_flat as f32).collect();
        println!(
            "seed {seed}: ctr {:.4} bayes {:.4} flat {:.4}",
            l.iter().sum::<f32>() / l.len() as f32,
            auc(&t, &l).unwrap(),
            auc(&f, &l).unwrap()
        );
    }
    let users: std::collections::HashSet<u32> = rows.iter().map(|r| r.user).collect();
    let cells: std::collections::HashSet<(u8, u8, u8, u8)> = rows
        .iter()
        .map(|r| (r.gender, r.age, r.scenario, r.interest))
        .collect();
    println!("users {} cells {}", users.len(), cells.len());
}
