//! # hmdn-cpu
//!
//! A framework-free CPU engine that trains and serves the HMDN click-through-rate model
//! (Hierarchical Multi-Distribution Network) and its baselines, with hand-written forward and
//! backward passes over preallocated buffers.
//!
//! Crate map: [`config`] model settings; [`params`] the parameter arena; [`model`] layers and
//! models; [`gradcheck`] finite-difference checks; [`error`] user-facing errors; [`memory`]
//! whether a batch size fits in memory; [`data`] schema,
//! CSV, vocabularies, columnar cache, batches and synthetic data; [`metrics`] AUC, gAUC, logloss.
//! Numeric kernels live in the `hmdn-kernels` crate.
//!
//! Dimension glossary: `B` batch rows, `F` categorical fields, `N` numeric fields, `e`
//! embedding width, `x` = F·e + N model input, `P` distribution fields, `z` = P·e quantized
//! width, `K` codebook size, `D` quantization depth, `n` experts, `T` tasks, `h` hidden width.
#![warn(missing_docs)]

pub mod app;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod compare;
pub mod config;
pub mod data;
pub mod error;
pub mod gradcheck;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod params;
pub mod train;

pub use hmdn_kernels::Real;

/// One mini-batch as the model consumes it (all row-major).
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    /// Rows in the batch (B).
    pub rows: usize,
    /// Categorical indices `[B, F]` (index 0 = unknown).
    pub cat: &'a [u32],
    /// Standardised numeric values `[B, N]`.
    pub num: &'a [f32],
    /// Labels `[B, T]` in {0, 1}; may be empty for inference.
    pub labels: &'a [f32],
}
