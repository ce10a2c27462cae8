//! The embedding gather of aliccp-shape batches (23 tables, e = 16, uniform random ids, one
//! thread), with the tables in one buffer (as the model's parameter store holds them) backed
//! by ordinary 4 KiB pages against a copy advised for transparent huge pages
//! ([`hmdn_kernels::mem::huge_page_copy`]), alternating batch by batch. Prints ns per output
//! row (23 table rows), best and median of `REPS` batches each, and the kernel's THP setting.
//!
//! `cargo run --release -p hmdn-kernels --example huge_pages` (`B`, `REPS`).

mod common;

use hmdn_kernels::embed::gather_fields;
use hmdn_kernels::mem::huge_page_copy;
use std::time::Instant;

const VOCABS: [usize; 23] = common::ALICCP_VOCABS;
const E: usize = 16;

fn main() {
    let env = common::env_usize;
    let (b, reps) = (env("B", 512), env("REPS", 400));
    let nf = VOCABS.len();
    let stride = nf * E;
    let offsets: Vec<usize> = VOCABS
        .iter()
        .scan(0, |o, &v| {
            let at = *o;
            *o += v * E;
            Some(at)
        })
        .collect();
    let total: usize = VOCABS.iter().sum::<usize>() * E;
    // Written element by element: every 4 KiB page mapped now, none huge unless THP is
    // `always`.
    let plain: Vec<f32> = (0..total).map(|i| (i % 97) as f32).collect();
    let huge = huge_page_copy(&plain);
    let batches = common::random_batches(&VOCABS, 64, b);
    let mut x = vec![0.0f32; b * stride];
    let mut y = vec![0.0f32; b * stride];
    let (mut t_plain, mut t_huge) = (Vec::new(), Vec::new());
    for r in 0..reps {
        let idx = &batches[r % batches.len()];
        for (store, out, times) in [(&plain, &mut x, &mut t_plain), (&huge, &mut y, &mut t_huge)] {
            let table = |j: usize| {
                (
                    &store[offsets[j]..offsets[j] + VOCABS[j] * E],
                    &idx[j * b..],
                )
            };
            let t0 = Instant::now();
            gather_fields(out, stride, 0, nf, table, E, b);
            times.push(t0.elapsed().as_secs_f64() * 1e9 / b as f64);
        }
        assert!(x == y, "the two copies disagree");
    }
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .unwrap_or_else(|_| "unknown".into());
    let mapped = std::fs::read_to_string("/proc/self/smaps_rollup")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("AnonHugePages"))
                .map(str::to_owned)
        })
        .unwrap_or_default();
    println!(
        "transparent huge pages: {} ({})",
        thp.trim(),
        mapped.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    for (name, mut t) in [("4 KiB pages", t_plain), ("huge pages ", t_huge)] {
        t.sort_by(f64::total_cmp);
        println!(
            "{name}: best {:.0} ns/row, median {:.0} ns/row (B {b}, {} tables, {:.0} MB)",
            t[0],
            t[t.len() / 2],
            nf,
            (total * 4) as f64 / 1e6
        );
    }
}
