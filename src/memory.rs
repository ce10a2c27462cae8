//! Whether a batch size fits in memory, checked before anything of that size is allocated.
//!
//! A model's batch buffers (activations, their gradients, chunk and lane buffers, the
//! optimiser's per-batch lists) grow linearly with the batch rows. A batch far too large for
//! the machine would otherwise end in an allocation failure (the process aborts) or the
//! kernel's out-of-memory killer, long after the command started. [`check_batch_memory`]
//! measures the bytes per row instead of estimating them from a formula that would drift from
//! the code: it trains one step and runs the two kinds of inference forward on a throwaway
//! copy of the model at two batch sizes and takes the difference of the live heap bytes.
//!
//! The live heap bytes come from the binary: `main.rs` installs a counting global allocator
//! and registers it with [`set_live_bytes_probe`]. A library user who registers nothing gets
//! no check (and no cost).

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::gradcheck::RandomBatch;
use crate::model::Model;
use crate::optim::{OptimConfig, Optimizer};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::sync::OnceLock;

/// Batches of at most this many rows are never checked: their buffers stay below ~600 MiB for
/// every model at the reference shape, and measuring costs two training steps.
pub const CHECK_MIN_ROWS: usize = 16_384;

/// Rows of the two measuring batches. Both have the most row chunks a batch can have (16 of
/// 512 rows and 16 of 1024), so every buffer beyond them grows in proportion to the rows.
const MEASURE_ROWS: [usize; 2] = [8_192, 16_384];

/// Vocabulary that the measuring copy gives a field with more ids. It keeps every field on the
/// same side of [`crate::model::factored::MAX_FACTOR_VOCAB`] (which decides what is factored
/// by field), and the distribution and domain fields keep theirs, so the per-row buffers are
/// those of the real model while its tables stay small.
const MEASURE_VOCAB_CAP: usize = crate::model::factored::MAX_FACTOR_VOCAB + 1;

static LIVE_BYTES: OnceLock<fn() -> usize> = OnceLock::new();

/// Registers the function that returns the process's live heap bytes (a counting global
/// allocator's total). Only the first registration counts.
pub fn set_live_bytes_probe(f: fn() -> usize) {
    let _ = LIVE_BYTES.set(f);
}

/// `MemAvailable` of `/proc/meminfo` in bytes, when the system reports it.
pub fn available_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&s)
}

/// The `MemAvailable:` line of a `/proc/meminfo` text, in bytes.
fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut it = line.split_whitespace().skip(1);
    let kb: u64 = it.next()?.parse().ok()?;
    match it.next() {
        Some("kB") | None => kb.checked_mul(1024),
        Some(_) => None,
    }
}

/// Heap bytes per batch row that `cfg`'s model with `optim` adds on the current rayon pool
/// (a training step when `training`, then `infer` and `infer_keeping_chunks`), measured on a
/// throwaway copy with small tables; `None` when no live-bytes probe is registered.
pub fn batch_bytes_per_row(
    cfg: &ModelConfig,
    optim: &OptimConfig,
    training: bool,
) -> Result<Option<f64>> {
    let Some(&live) = LIVE_BYTES.get() else {
        return Ok(None);
    };
    let c = measuring_config(cfg);
    let mut rng = StdRng::seed_from_u64(0x6d656d);
    let mut m = Model::<f32>::new(&c, 1)?;
    let mut opt = Optimizer::new(&m.params, optim.clone());
    let data = RandomBatch::new(&c, MEASURE_ROWS[1], &mut rng);
    if c.model.uses_rq() && c.rq.kmeans_init {
        m.kmeans_init(&data.head(MEASURE_ROWS[0]), &mut rng);
    }
    let mut live_after = [0usize; 2];
    for (i, &rows) in MEASURE_ROWS.iter().enumerate() {
        let b = data.head(rows);
        // The loss of random data on fresh weights is finite; a non-finite one would only
        // mean the measurement step diverged, which does not change the buffers' sizes.
        if training {
            let _ = crate::train::train_step(&mut m, &mut opt, &b);
        }
        m.infer(&b);
        m.infer_keeping_chunks(&b);
        live_after[i] = live();
    }
    let grown = live_after[1].saturating_sub(live_after[0]) as f64;
    Ok(Some(grown / (MEASURE_ROWS[1] - MEASURE_ROWS[0]) as f64))
}

/// `cfg` with every field of more than [`MEASURE_VOCAB_CAP`] ids, other than the distribution
/// and domain fields, cut to that many.
fn measuring_config(cfg: &ModelConfig) -> ModelConfig {
    let mut c = cfg.clone();
    for f in &mut c.fields {
        let keep = cfg.distribution.contains(&f.name) || cfg.domain.as_ref() == Some(&f.name);
        if !keep {
            f.vocab_size = f.vocab_size.min(MEASURE_VOCAB_CAP);
        }
    }
    c
}

/// Fails with a message naming `flag` when a batch of `rows` rows of `cfg`'s model (trained
/// on when `training`, else only predicted), plus `extra_bytes` of other data of that batch
/// size, would not fit in the memory the system reports as available. Batches of at most
/// [`CHECK_MIN_ROWS`] rows pass unmeasured, and so does everything when the live heap bytes
/// or the available memory are unknown.
///
/// Call it on the rayon pool the run will use: the buffers depend on the thread count.
pub fn check_batch_memory(
    cfg: &ModelConfig,
    optim: &OptimConfig,
    training: bool,
    rows: usize,
    extra_bytes: f64,
    flag: &str,
) -> Result<()> {
    if rows <= CHECK_MIN_ROWS {
        return Ok(());
    }
    let Some(avail) = available_bytes() else {
        return Ok(());
    };
    let Some(per_row) = batch_bytes_per_row(cfg, optim, training)? else {
        return Ok(());
    };
    let need = per_row * rows as f64 + extra_bytes;
    // Leave a tenth of what is available to everything else the run allocates.
    let budget = 0.9 * avail as f64;
    if need <= budget {
        return Ok(());
    }
    let extra_per_row = extra_bytes / rows as f64;
    let fits = (budget / (per_row + extra_per_row)).floor() as u64;
    let gib = |b: f64| b / (1u64 << 30) as f64;
    let extra = if extra_bytes > 0.0 {
        format!(" and {:.1} GiB of batch data", gib(extra_bytes))
    } else {
        String::new()
    };
    Err(Error::Memory(format!(
        "{flag} {rows}: a batch of {rows} rows needs about {:.1} GiB for {}'s buffers on {} \
         thread(s) ({:.1} KiB per row, measured){extra}, and the system has {:.1} GiB \
         available; use {flag} {} or less",
        gib(per_row * rows as f64),
        cfg.model.name(),
        rayon::current_num_threads(),
        per_row / 1024.0,
        gib(avail as f64),
        fits.max(1)
    )))
}

/// Fails when the parameters of `cfg`'s model, with `elem_bytes` bytes per element, would
/// not fit in the memory the system reports as available, before any of them is allocated.
/// Counted per element of [`ModelConfig::param_counts`]: the value, its gradient and Adam's
/// two moments; for the dense parameters also their packed copy and a gradient arena per row
/// chunk (up to 16). Passes when the available memory is unknown.
pub fn check_model_memory(cfg: &ModelConfig, elem_bytes: usize) -> Result<()> {
    let Some(avail) = available_bytes() else {
        return Ok(());
    };
    let (tables, dense) = cfg.param_counts();
    let chunks = crate::model::MAX_CHUNKS as f64;
    let need = elem_bytes as f64 * (4.0 * (tables + dense) + (1.0 + chunks) * dense);
    if need <= 0.9 * avail as f64 {
        return Ok(());
    }
    let gib = |b: f64| b / (1u64 << 30) as f64;
    Err(Error::Memory(format!(
        "the {} model needs about {:.1} GiB for its {:.3e} parameters ({:.3e} in embedding \
         tables) with their gradients and Adam's moments, and the system has {:.1} GiB \
         available; use a smaller embed_dim, hidden, gatenu_hidden, n_experts or \
         rq.codebook_size, or fewer ids per field (schema `min_count`, `hash_buckets`)",
        cfg.model.name(),
        gib(need),
        tables + dense,
        tables,
        gib(avail as f64)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_parsed_in_bytes() {
        let s = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(parse_mem_available(s), Some(20_000_000 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: lots kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: 5 MB\n"), None);
    }

    #[test]
    fn measuring_config_keeps_small_distribution_and_domain_fields() {
        let mut cfg = crate::bench::aliccp_shape_config(crate::config::ModelKind::HmdnMmoe);
        cfg.domain = Some("f1".into());
        let c = measuring_config(&cfg);
        for (a, b) in cfg.fields.iter().zip(&c.fields) {
            let kept = cfg.distribution.contains(&a.name) || a.name == "f1";
            if kept || a.vocab_size <= MEASURE_VOCAB_CAP {
                assert_eq!(a.vocab_size, b.vocab_size, "{}", a.name);
            } else {
                assert_eq!(b.vocab_size, MEASURE_VOCAB_CAP, "{}", a.name);
            }
        }
    }
}
