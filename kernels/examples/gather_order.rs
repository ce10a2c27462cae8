//! The embedding gather of one aliccp-shape batch (23 tables, e = 16, uniform random ids), on
//! one thread: table by table ([`gather_rows`] per table, over blocks of `BLOCK` rows, as the
//! model did) against row by row ([`gather_fields`]). Prints ns per output row (23 table rows)
//! best and median of `REPS` batches, alternating the two orders.
//!
//! `cargo run --release -p hmdn-kernels --example gather_order` (`B`, `BLOCK`, `REPS`).

mod common;

use hmdn_kernels::embed::{gather_fields, gather_rows};
use std::time::Instant;

const VOCABS: [usize; 23] = common::ALICCP_VOCABS;
const E: usize = 16;

fn main() {
    let env = common::env_usize;
    let (b, block, reps) = (env("B", 4096), env("BLOCK", 128), env("REPS", 40));
    let nf = VOCABS.len();
    let stride = nf * E;
    let tables: Vec<Vec<f32>> = VOCABS
        .iter()
        .map(|&v| (0..v * E).map(|i| (i % 97) as f32).collect())
        .collect();
    // A different batch each repetition (xorshift ids), field-major as the model stores them.
    let batches = common::random_batches(&VOCABS, 8, b);
    let mut x = vec![0.0f32; b * stride];
    let mut y = vec![0.0f32; b * stride];
    let (mut by_table, mut by_row) = (Vec::new(), Vec::new());
    for r in 0..reps {
        let idx = &batches[r % batches.len()];
        let t0 = Instant::now();
        for (q, o) in x.chunks_mut(block * stride).enumerate() {
            let (r0, rows) = (q * block, o.len() / stride);
            for (f, t) in tables.iter().enumerate() {
                gather_rows(o, stride, f * E, t, E, &idx[f * b + r0..f * b + r0 + rows]);
            }
        }
        by_table.push(t0.elapsed().as_secs_f64() * 1e9 / b as f64);
        let t0 = Instant::now();
        gather_fields(
            &mut y,
            stride,
            0,
            nf,
            |j| (&tables[j][..], &idx[j * b..]),
            E,
            b,
        );
        by_row.push(t0.elapsed().as_secs_f64() * 1e9 / b as f64);
        assert!(x == y, "the two orders disagree");
    }
    if env("PER_TABLE", 0) == 1 {
        for (f, t) in tables.iter().enumerate() {
            let mut best = f64::MAX;
            for r in 0..reps {
                let idx = &batches[r % batches.len()];
                let t0 = Instant::now();
                gather_rows(&mut x, stride, f * E, t, E, &idx[f * b..(f + 1) * b]);
                best = best.min(t0.elapsed().as_secs_f64() * 1e9 / b as f64);
            }
            println!("table {f:2} ({:>6} rows): {best:.1} ns/row", VOCABS[f]);
        }
    }
    for (name, v) in [
        ("table by table", &mut by_table),
        ("row by row", &mut by_row),
    ] {
        v.sort_by(f64::total_cmp);
        println!(
            "{name:>15}: best {:.0} ns/row, median {:.0} ns/row (B {b}, block {block})",
            v[0],
            v[v.len() / 2]
        );
    }
}
