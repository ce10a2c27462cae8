//! Data: schema, CSV reading, vocabularies, the columnar cache, batching and synthetic data.
//!
//! Typical use:
//! ```no_run
//! use hmdn_cpu::data::{Batcher, BatchBuffers, Dataset, LoadOptions, Schema};
//! # fn main() -> hmdn_cpu::error::Result<()> {
//! let schema = Schema::load("schema.toml")?;
//! let opts = LoadOptions::default();
//! let (train, vocab) = Dataset::open_train("train.csv", &schema, &opts)?;
//! let val = Dataset::open("val.csv", &schema, &vocab, &opts)?;
//! vocab.save("model/vocab.json")?;
//! let mut batcher = Batcher::shuffled(train.rows(), 256, 42);
//! let mut buf = BatchBuffers::new(256, &train);
//! for epoch in 0..3 {
//!     batcher.set_epoch(epoch);
//!     while batcher.next_batch(&train, &mut buf) {
//!         let batch = buf.batch(); // cat [B, F], num [B, N], labels [B, T]
//!         # let _ = batch;
//!     }
//! }
//! # let _ = val;
//! # Ok(()) }
//! ```

mod batcher;
mod cache;
mod csv;
pub mod hash;
pub mod rng;
mod schema;
pub mod synth;
mod vocab;

pub use batcher::{BatchBuffers, Batcher};
pub use cache::{CacheStatus, Column, ColumnValue, Dataset, LoadOptions};
pub use schema::{Schema, DEFAULT_MIN_COUNT, P_TRUE_COLUMN};
pub use synth::{generate, synth_schema};
pub use vocab::{CategoricalVocab, NumericStats, Vocab};

use crate::config::ModelConfig;
use crate::error::Result;

/// Copies the input description of `schema` + `vocab` into a model configuration: categorical
/// fields with their table sizes, numeric fields, distribution fields, domain and tasks.
/// Errors if the vocabulary does not belong to the schema.
pub fn configure_model(cfg: &mut ModelConfig, schema: &Schema, vocab: &Vocab) -> Result<()> {
    vocab.check_schema(schema, std::path::Path::new("vocab.json"))?;
    cfg.fields = vocab.field_specs();
    cfg.numeric = schema.numeric.clone();
    cfg.distribution = schema.distribution.clone();
    cfg.domain = schema.domain_field().map(str::to_string);
    cfg.tasks = schema.label.clone();
    Ok(())
}
