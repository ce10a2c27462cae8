//! Training: one optimisation step, and the `fit` loop with validation, early stopping,
//! atomic resumable checkpoints and per-epoch metrics.
//!
//! Resumability: every random stream is derived from `(seed, epoch)` (the shuffle) or
//! `(seed, step)` (dead-code restarts), so the "RNG state" of a run is its seed plus its
//! position; a checkpoint stores weights, optimiser moments, position and history, and a
//! resumed run continues bit-identically.

use crate::checkpoint::{self, write_atomic, CONFIG_FILE, OPTIMIZER_FILE, WEIGHTS_FILE};
use crate::config::ModelConfig;
use crate::data::{BatchBuffers, Batcher, Dataset, Schema, Vocab};
use crate::error::{Error, Result};
use crate::metrics::{self, EvalReport};
use crate::model::{LossParts, Model};
use crate::optim::{OptimConfig, Optimizer, SparseRows};
use crate::{Batch, Real};
use serde::{Deserialize, Serialize};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Schema copy inside a model directory (so `eval` / `predict` read CSVs the same way).
pub const SCHEMA_FILE: &str = "schema.toml";
/// Vocabulary inside a model directory.
pub const VOCAB_FILE: &str = "vocab.json";
/// Per-epoch metrics, one JSON object per line.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Resumable state lives under this sub-directory of the model directory.
pub const STATE_DIR: &str = "state";

/// One optimisation step: forward, divergence check, backward, optimiser update.
/// A non-finite loss stops with [`Error::Diverged`] *before* any weight changes.
pub fn train_step<T: Real>(
    model: &mut Model<T>,
    opt: &mut Optimizer<T>,
    batch: &Batch,
) -> Result<LossParts<T>> {
    let loss = model.forward(batch);
    if !loss.total.is_finite() {
        return Err(Error::Diverged {
            step: opt.step + 1,
            what: format!("loss = {} (task {}, rq {})", loss.total, loss.task, loss.rq),
        });
    }
    model.backward(batch);
    let (params, row_grads) = model.params_and_row_grads();
    opt.step(
        params,
        row_grads.iter().map(|r| SparseRows {
            table: r.table,
            rows: &r.rows,
            grad: &r.grad,
        }),
    );
    Ok(loss)
}

/// Settings of the training loop (`[train]` in a config file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Maximum epochs.
    pub epochs: usize,
    /// Rows per mini-batch.
    pub batch_size: usize,
    /// Seed of initialisation, shuffling and every other random choice.
    pub seed: u64,
    /// Epochs without validation-AUC improvement before stopping.
    pub patience: usize,
    /// Save a resumable checkpoint every this many steps (and at every epoch end).
    pub checkpoint_every: u64,
    /// Rows per batch when scoring the validation set.
    pub eval_batch_size: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            batch_size: 1024,
            seed: 42,
            patience: 2,
            checkpoint_every: 1000,
            eval_batch_size: 4096,
        }
    }
}

/// The whole configuration of a run, as read from `--config FILE.toml`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Model settings (fields, vocabularies and tasks are filled in from the schema and data).
    pub model: ModelConfig,
    /// Optimiser.
    pub optim: OptimConfig,
    /// Training loop.
    pub train: TrainConfig,
}

impl RunConfig {
    /// Reads a TOML config file; unknown keys are errors with their location.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text).map_err(|e| Error::Data {
            file: path.to_path_buf(),
            line: None,
            column: None,
            msg: e.to_string().trim().to_string(),
        })
    }
}

/// Position and history of a run, saved with every checkpoint (`state.json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunState {
    /// Epoch to run next (or the current one when `batch` > 0).
    pub epoch: u64,
    /// Batches of `epoch` already trained.
    pub batch: usize,
    /// Optimiser steps taken.
    pub step: u64,
    /// Best validation AUC so far (first task).
    pub best_auc: Option<f64>,
    /// Epoch that produced it.
    pub best_epoch: Option<u64>,
    /// Epochs since the last improvement.
    pub epochs_without_improvement: usize,
    /// Early stopping or the epoch limit ended the run.
    pub finished: bool,
    /// Sum of training losses in the current epoch (for its mean).
    pub epoch_loss_sum: f64,
    /// Batches counted in `epoch_loss_sum`.
    pub epoch_loss_batches: u64,
    /// One JSON object per finished epoch (rewritten into metrics.jsonl).
    pub history: Vec<serde_json::Value>,
}

/// What a finished `fit` reports.
#[derive(Clone, Debug)]
pub struct FitSummary {
    /// Model directory.
    pub out: PathBuf,
    /// Best validation AUC of the first task.
    pub best_auc: Option<f64>,
    /// Its epoch (0-based).
    pub best_epoch: Option<u64>,
    /// Epochs run.
    pub epochs_run: u64,
    /// Optimiser steps.
    pub steps: u64,
    /// The best model's validation report.
    pub best_report: Option<EvalReport>,
}

/// Everything `fit` needs besides the configuration.
pub struct FitInputs<'a> {
    /// Training data (vocabulary built from it).
    pub train: &'a Dataset,
    /// Validation data.
    pub val: &'a Dataset,
    /// Schema both were read with.
    pub schema: &'a Schema,
    /// Vocabulary of the training split.
    pub vocab: &'a Vocab,
    /// Model directory.
    pub out: &'a Path,
    /// Continue from the last checkpoint in `out`.
    pub resume: bool,
    /// Print only the summary.
    pub quiet: bool,
}

fn state_dir(out: &Path) -> PathBuf {
    out.join(STATE_DIR)
}

/// Scores a dataset: probabilities `[rows, T]` in row order.
pub fn predict_dataset<T: Real>(
    model: &mut Model<T>,
    ds: &Dataset,
    batch_size: usize,
    preds: &mut Vec<f32>,
) {
    let t = model.cfg.tasks.len();
    preds.clear();
    preds.reserve(ds.rows() * t);
    let mut batcher = Batcher::sequential(ds.rows(), batch_size);
    let mut buf = BatchBuffers::new(batch_size, ds);
    while batcher.next_batch(ds, &mut buf) {
        let b = buf.batch();
        let nolabels = Batch { labels: &[], ..b };
        model.forward(&nolabels);
        model.record_gates();
        preds.extend(
            model.logits()[..b.rows * t]
                .iter()
                .map(|&l| hmdn_kernels::act::sigmoid(l).to_f64() as f32),
        );
    }
}

/// Progress output: a redrawn line on a terminal, plain lines otherwise.
struct Progress {
    tty: bool,
    quiet: bool,
    last: Instant,
}

impl Progress {
    fn new(quiet: bool) -> Self {
        Progress {
            tty: std::io::stderr().is_terminal(),
            quiet,
            last: Instant::now(),
        }
    }

    fn update(
        &mut self,
        epoch: u64,
        done: usize,
        total: usize,
        rows_per_s: f64,
        loss: f64,
        force: bool,
    ) {
        if self.quiet {
            return;
        }
        let interval = if self.tty { 0.2 } else { 10.0 };
        if !force && self.last.elapsed().as_secs_f64() < interval {
            return;
        }
        self.last = Instant::now();
        let frac = if total == 0 {
            1.0
        } else {
            done as f64 / total as f64
        };
        let eta = if rows_per_s > 0.0 && total > done {
            (total - done) as f64 / rows_per_s
        } else {
            0.0
        };
        if self.tty {
            let width = 30;
            let filled = (frac * width as f64) as usize;
            eprint!(
                "\repoch {epoch} [{}{}] {done}/{total} rows  {:.0} samples/s  ETA {:.0}s  loss {loss:.4}   ",
                "#".repeat(filled),
                "-".repeat(width - filled),
                rows_per_s,
                eta
            );
        } else {
            eprintln!(
                "epoch {epoch}: {done}/{total} rows, {:.0} samples/s, ETA {:.0}s, loss {loss:.4}",
                rows_per_s, eta
            );
        }
    }

    fn finish_line(&self) {
        if self.tty && !self.quiet {
            eprintln!();
        }
    }
}

/// Writes a resumable checkpoint: files into `state/step-N/`, then the `LATEST` pointer
/// (atomically), then older step directories are removed.
fn save_state(out: &Path, model: &Model<f32>, opt: &Optimizer<f32>, st: &RunState) -> Result<()> {
    let sd = state_dir(out);
    let name = format!("step-{:012}", st.step);
    let dir = sd.join(&name);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    write_atomic(
        &dir.join(WEIGHTS_FILE),
        &checkpoint::weights_to_bytes(&model.params)?,
    )?;
    write_atomic(
        &dir.join(OPTIMIZER_FILE),
        &checkpoint::optimizer_to_bytes(opt, &model.params)?,
    )?;
    let js = serde_json::to_vec_pretty(st).map_err(|e| Error::Other(e.to_string()))?;
    write_atomic(&dir.join("state.json"), &js)?;
    write_atomic(&sd.join("LATEST"), name.as_bytes())?;
    if let Ok(rd) = std::fs::read_dir(&sd) {
        for ent in rd.flatten() {
            let n = ent.file_name();
            let n = n.to_string_lossy();
            if n.starts_with("step-") && n != name {
                let _ = std::fs::remove_dir_all(ent.path());
            }
        }
    }
    Ok(())
}

/// Loads the checkpoint `LATEST` points to.
fn load_state(out: &Path, model: &mut Model<f32>, opt: &mut Optimizer<f32>) -> Result<RunState> {
    let sd = state_dir(out);
    let latest = sd.join("LATEST");
    let name = std::fs::read_to_string(&latest).map_err(|e| {
        Error::Checkpoint(format!(
            "cannot resume from {}: no checkpoint ({e})",
            out.display()
        ))
    })?;
    let dir = sd.join(name.trim());
    checkpoint::load_weights(&dir.join(WEIGHTS_FILE), &mut model.params)?;
    checkpoint::load_optimizer(&dir.join(OPTIMIZER_FILE), opt, &model.params)?;
    let p = dir.join("state.json");
    let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Checkpoint(format!("{}: {e}", p.display())))
}

/// Creates `out` (and checks it is writable) with a clear error otherwise.
pub fn prepare_out_dir(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let probe = out.join(".hmdn-write-test");
    std::fs::write(&probe, b"ok").map_err(|e| Error::io(out, e))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Trains `cfg.model` on `inp.train`, validating on `inp.val` after every epoch; keeps the best
/// weights in `out/weights.safetensors` and a resumable checkpoint under `out/state/`.
pub fn fit(run: &RunConfig, inp: &FitInputs) -> Result<FitSummary> {
    let out = inp.out;
    let cfg = &run.model;
    cfg.validate()?;
    let tc = &run.train;
    if tc.batch_size == 0 {
        return Err(Error::Config("batch_size must be at least 1".into()));
    }
    if inp.train.rows() == 0 {
        return Err(Error::Config("the training file has no data rows".into()));
    }
    prepare_out_dir(out)?;
    let cfg_text = toml::to_string(run)
        .map_err(|e| Error::Other(format!("cannot serialise the config: {e}")))?;
    let mut model = Model::<f32>::new(cfg, tc.seed)?;
    let mut opt = Optimizer::new(&model.params, run.optim.clone());
    let mut st = RunState::default();
    if inp.resume {
        // The directory must belong to this exact configuration and schema.
        let p = out.join(CONFIG_FILE);
        let saved = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        if saved != cfg_text {
            return Err(Error::Checkpoint(format!(
                "{} was written with a different configuration, schema or data vocabulary; \
                 resume with the same arguments or use a new --out",
                p.display()
            )));
        }
        st = load_state(out, &mut model, &mut opt)?;
        if !inp.quiet {
            eprintln!(
                "resuming {} at epoch {}, batch {}, step {}",
                out.display(),
                st.epoch,
                st.batch,
                st.step
            );
        }
    } else {
        write_atomic(&out.join(CONFIG_FILE), cfg_text.as_bytes())?;
        write_atomic(&out.join(SCHEMA_FILE), inp.schema.to_toml().as_bytes())?;
        inp.vocab.save(out.join(VOCAB_FILE))?;
    }

    let mut batcher = Batcher::shuffled(inp.train.rows(), tc.batch_size, tc.seed);
    let mut buf = BatchBuffers::new(tc.batch_size, inp.train);
    let mut preds = Vec::new();
    let mut progress = Progress::new(inp.quiet);
    let mut best_report: Option<EvalReport> = None;
    let total_rows = inp.train.rows();

    while !st.finished && (st.epoch as usize) < tc.epochs {
        let epoch = st.epoch;
        batcher.seek(epoch, st.batch);
        model.reset_stats();
        let t0 = Instant::now();
        let mut rows_this_run = 0usize;
        while batcher.next_batch(inp.train, &mut buf) {
            let batch = buf.batch();
            if st.step == 0 && cfg.model.uses_rq() && cfg.rq.kmeans_init {
                let mut rng = derived_rng(tc.seed, 0x6b6d65616e73);
                model.kmeans_init(&batch, &mut rng);
            }
            let loss = match train_step(&mut model, &mut opt, &batch) {
                Ok(l) => l,
                Err(e) => {
                    progress.finish_line();
                    return Err(match e {
                        Error::Diverged { step, what } => Error::Diverged {
                            step,
                            what: format!(
                                "{what}; the last good checkpoint is kept in {} (best weights in {})",
                                state_dir(out).display(),
                                out.join(WEIGHTS_FILE).display()
                            ),
                        },
                        other => other,
                    });
                }
            };
            model.after_step(st.step, tc.seed);
            st.step += 1;
            st.batch += 1;
            st.epoch_loss_sum += loss.total as f64;
            st.epoch_loss_batches += 1;
            rows_this_run += batch.rows;
            let done = (st.batch * tc.batch_size).min(total_rows);
            let rate = rows_this_run as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            progress.update(
                epoch,
                done,
                total_rows,
                rate,
                st.epoch_loss_sum / st.epoch_loss_batches as f64,
                false,
            );
            if tc.checkpoint_every > 0 && st.step % tc.checkpoint_every == 0 {
                save_state(out, &model, &opt, &st)?;
            }
        }
        progress.update(
            epoch,
            total_rows,
            total_rows,
            0.0,
            st.epoch_loss_sum / st.epoch_loss_batches.max(1) as f64,
            true,
        );
        progress.finish_line();

        // Validation.
        predict_dataset(&mut model, inp.val, tc.eval_batch_size, &mut preds);
        let report = metrics::evaluate(inp.val, &preds);
        let auc = report.tasks.first().and_then(|t| t.auc);
        let improved = match (auc, st.best_auc) {
            (Some(a), Some(b)) => a > b,
            (Some(_), None) => true,
            _ => st.best_auc.is_none(),
        };
        let train_loss = st.epoch_loss_sum / st.epoch_loss_batches.max(1) as f64;
        let mut line = serde_json::json!({
            "epoch": epoch,
            "step": st.step,
            "train_loss": train_loss,
            "val": report,
            "epoch_seconds": t0.elapsed().as_secs_f64(),
        });
        if let Some(u) = model.usage_report() {
            line["rq_levels"] = u;
        }
        if let Some(g) = model.gate_report() {
            line["gate_mean"] = g;
        }
        if improved {
            st.best_auc = auc;
            st.best_epoch = Some(epoch);
            st.epochs_without_improvement = 0;
            checkpoint::save_weights(&out.join(WEIGHTS_FILE), &model.params)?;
            best_report = Some(report.clone());
            line["best"] = serde_json::Value::Bool(true);
        } else {
            st.epochs_without_improvement += 1;
        }
        st.history.push(line);
        if !inp.quiet {
            let fmt = |a: Option<f64>| a.map(|v| format!("{v:.4}")).unwrap_or_else(|| "n/a".into());
            eprintln!(
                "epoch {epoch}: train loss {train_loss:.4}, val AUC {}, logloss {:.4}{}",
                fmt(auc),
                report.tasks.first().map(|t| t.logloss).unwrap_or(f64::NAN),
                if improved {
                    "  (best so far; saved)"
                } else {
                    ""
                }
            );
        }
        st.epoch += 1;
        st.batch = 0;
        st.epoch_loss_sum = 0.0;
        st.epoch_loss_batches = 0;
        if st.epochs_without_improvement >= tc.patience.max(1) {
            if !inp.quiet {
                eprintln!(
                    "early stopping: no validation AUC improvement for {} epochs",
                    st.epochs_without_improvement
                );
            }
            st.finished = true;
        }
        if st.epoch as usize >= tc.epochs {
            st.finished = true;
        }
        save_state(out, &model, &opt, &st)?;
        let mut text = String::new();
        for h in &st.history {
            text.push_str(&h.to_string());
            text.push('\n');
        }
        write_atomic(&out.join(METRICS_FILE), text.as_bytes())?;
    }
    if best_report.is_none() {
        // Resumed after the best epoch: recompute its report from the saved best weights.
        if out.join(WEIGHTS_FILE).exists() {
            checkpoint::load_weights(&out.join(WEIGHTS_FILE), &mut model.params)?;
            predict_dataset(&mut model, inp.val, tc.eval_batch_size, &mut preds);
            best_report = Some(metrics::evaluate(inp.val, &preds));
        }
    }
    Ok(FitSummary {
        out: out.to_path_buf(),
        best_auc: st.best_auc,
        best_epoch: st.best_epoch,
        epochs_run: st.epoch,
        steps: st.step,
        best_report,
    })
}

/// A generator for one named random stream of a run.
pub fn derived_rng(seed: u64, stream: u64) -> rand::rngs::StdRng {
    use rand::SeedableRng;
    rand::rngs::StdRng::seed_from_u64(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}
