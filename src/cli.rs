//! Command-line interface definitions (clap). `main.rs` parses, dispatches and prints errors.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// hmdn-cpu: train and serve HMDN click-through-rate models and their baselines on the CPU.
///
/// Run with no arguments to generate a small synthetic data set, train `mmoe` and `hmdn-mmoe`
/// on it, and compare both AUCs with the Bayes-optimal AUC.
#[derive(Parser, Debug)]
#[command(name = "hmdn-cpu", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to do (default: the built-in demo, `fit` with no arguments).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model on a CSV (or, with no --train, run the built-in synthetic demo).
    Fit(FitArgs),
    /// Print metrics of a trained model on a labelled CSV.
    Eval(EvalArgs),
    /// Write one probability per task for every row of a CSV, in input order.
    Predict(PredictArgs),
    /// Train several models over several seeds and print the paper's Table-1 layout.
    Compare(CompareArgs),
    /// Write a synthetic data set with a known hierarchical multi-distribution structure.
    Gen(GenArgs),
    /// Check every parameter gradient of a model against central finite differences.
    Gradcheck(GradcheckArgs),
    /// Measure training and inference throughput on synthetic Ali-CCP-shaped data.
    Bench(BenchArgs),
    /// Print the SIMD path, thread count and build profile in use.
    Info,
}

/// Arguments of `fit`.
#[derive(Args, Debug, Default, Clone)]
pub struct FitArgs {
    /// Training CSV (header row; comma or tab separated).
    #[arg(long)]
    pub train: Option<PathBuf>,
    /// Validation CSV (same columns), used for early stopping and metrics.
    #[arg(long)]
    pub val: Option<PathBuf>,
    /// Schema TOML describing the columns (see README "Schema").
    #[arg(long)]
    pub schema: Option<PathBuf>,
    /// Model: dnn, wide-deep, dcn, shared-bottom, mmoe, pepnet, hmdn-mmoe, hmdn-pepnet.
    #[arg(long)]
    pub model: Option<String>,
    /// Output model directory (weights.safetensors, config.toml, vocab.json, metrics.jsonl).
    #[arg(long)]
    pub out: Option<PathBuf>,
    // The brackets are TOML table names in `--help`, not doc links.
    #[allow(rustdoc::broken_intra_doc_links)]
    /// TOML file with [model], [optim] and [train] tables; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Maximum epochs [default: 10].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Rows per mini-batch [default: 1024].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Adam learning rate [default: 0.001].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Seed for initialisation and shuffling [default: 42].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Worker threads (0 = all cores) [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Continue an interrupted run in this model directory from its last checkpoint; give the
    /// first run's arguments again. With no checkpoint yet, the run starts there from scratch.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Only print errors and the final summary.
    #[arg(long)]
    pub quiet: bool,
    /// Stop after this many epochs without validation-AUC improvement [default: 2].
    #[arg(long)]
    pub patience: Option<usize>,
    /// Field delimiter (default: detected from the header: tab if it has tabs, else comma).
    #[arg(long)]
    pub delimiter: Option<char>,
    /// Save a resumable checkpoint every N steps [default: 1000 and every epoch end].
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
}

/// Arguments of `eval`.
#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// Model directory written by `fit`.
    #[arg(long)]
    pub model_dir: PathBuf,
    /// Labelled CSV with the training schema's columns.
    #[arg(long)]
    pub data: PathBuf,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Rows per inference batch [default: 4096].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Worker threads (0 = all cores) [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Arguments of `predict`.
#[derive(Args, Debug, Clone)]
pub struct PredictArgs {
    /// Model directory written by `fit`.
    #[arg(long)]
    pub model_dir: PathBuf,
    /// CSV to score (label columns optional).
    #[arg(long)]
    pub data: PathBuf,
    /// Output CSV: a header of task names and one probability per task per input row.
    #[arg(long)]
    pub out: PathBuf,
    /// Rows per inference batch [default: 4096].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Worker threads (0 = all cores) [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Arguments of `compare`.
#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// Training CSV.
    #[arg(long)]
    pub train: PathBuf,
    /// Validation CSV.
    #[arg(long)]
    pub val: PathBuf,
    /// Schema TOML.
    #[arg(long)]
    pub schema: PathBuf,
    /// Comma-separated models, e.g. dnn,mmoe,hmdn-mmoe (dnn is the RelaImpr base).
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Seeds per model (1 to 1000; each is a full training run of every model).
    #[arg(long, default_value_t = 3)]
    pub seeds: usize,
    /// Output directory (results.csv, plot SVG, one model directory per run).
    #[arg(long)]
    pub out: PathBuf,
    /// Parameter sweep for the hmdn-* models, e.g. depth=1,2,3,6,9.
    #[arg(long)]
    pub sweep: Option<String>,
    /// TOML config shared by every run.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Maximum epochs per run.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Rows per mini-batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Worker threads (0 = all cores) [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Arguments of `gen`.
#[derive(Args, Debug, Clone)]
pub struct GenArgs {
    /// Number of rows.
    #[arg(long)]
    pub rows: usize,
    /// Output CSV path.
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the synthetic world and its rows.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Also write the data set's schema (TOML) here, for `fit --schema`.
    #[arg(long)]
    pub schema_out: Option<PathBuf>,
    /// Also write this many validation rows from the same world (the rows that follow the
    /// training rows in its stream) to --val-out.
    #[arg(long, requires = "val_out")]
    pub val_rows: Option<usize>,
    /// Output CSV of the validation rows.
    #[arg(long, requires = "val_rows")]
    pub val_out: Option<PathBuf>,
}

/// Floating-point precision for `gradcheck`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Double precision (the meaningful check; tolerance 1e-6).
    F64,
    /// Single precision (the training precision; errors are expectedly larger).
    F32,
}

/// Arguments of `gradcheck`.
#[derive(Args, Debug, Clone)]
pub struct GradcheckArgs {
    /// Model name.
    #[arg(long)]
    pub model: String,
    /// Precision of the analytic pass.
    #[arg(long, value_enum, default_value_t = Precision::F64)]
    pub precision: Precision,
    /// Seed for the random tiny configuration and batch.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Arguments of `bench`.
#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Environment: HMDN_NO_FIELD_FACTORING=1 runs MMoE's expert first \
layers and PEPNet's EPNet first layer unfactored (the plain GEMM on all of x; for A/B \
comparisons of model::factored and gatenu::FieldSplit). \
HMDN_SIMD=portable|avx2|avx512 picks the SIMD path."
)]
pub struct BenchArgs {
    /// Model name.
    #[arg(long, default_value = "hmdn-mmoe")]
    pub model: String,
    /// Rows per batch.
    #[arg(long, default_value_t = 1024)]
    pub batch: usize,
    /// Worker threads (0 = all cores) [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Timed training steps (after warm-up).
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Serve timed bursts on request instead: after set-up and warm-up, print a `ready` line,
    /// then answer each input line `train N` / `infer N` with one JSON line of N step times
    /// (`quit` or end of input stops). For drivers that alternate hmdn-cpu and PyTorch in
    /// short bursts (`benches/records/paired.py`); `--steps` and `--json` do not apply.
    #[arg(long)]
    pub serve: bool,
}
