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
use crate::model::rq::RqUsage;
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
    // The whole step is a chain of short parallel sections: the other workers poll for
    // them instead of sleeping in between (see `keep_workers_awake`).
    hmdn_kernels::par::keep_workers_awake(|| {
        // Forward and backward in one pass over the row chunks; a non-finite loss stops
        // before the optimiser touches the weights.
        let loss = model.forward_backward(batch);
        if !loss.total.is_finite() {
            return Err(Error::Diverged {
                step: opt.step + 1,
                what: format!("loss = {} (task {}, rq {})", loss.total, loss.task, loss.rq),
            });
        }
        let (params, row_grads) = model.params_and_row_grads();
        opt.step(params, row_grads, |r| SparseRows {
            table: r.table,
            rows: &r.rows,
            grad: &r.grad,
        });
        Ok(loss)
    })
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
        let text = crate::error::read_settings_file(path)?;
        toml::from_str(&text).map_err(|e| {
            // `e.to_string()` draws a multi-line source excerpt; the error is printed as one
            // line, so report the position and the bare message instead.
            let (line, column) = match e.span() {
                Some(span) => {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    (Some(line), Some(column))
                }
                None => (None, None),
            };
            Error::Data {
                file: path.to_path_buf(),
                line,
                column,
                msg: format!("invalid configuration: {}", e.message().trim()),
            }
        })
    }
}

/// Position and history of a run, saved with every checkpoint (`state.json`).
///
/// Everything a resumed run needs to continue bit-identically that is not in the weights or
/// the optimiser file. Floating-point values are stored as decimal *strings* (Rust's shortest
/// round-trip form, parsed back exactly by `str::parse`) and history lines as their JSON text,
/// because a JSON number read back by serde_json may differ from the written `f64` in the
/// last bit, and a resumed run must print and compare exactly the same values.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RunState {
    /// Epoch to run next (or the current one when `batch` > 0).
    pub epoch: u64,
    /// Batches of `epoch` already trained.
    pub batch: usize,
    /// Optimiser steps taken.
    pub step: u64,
    /// Best validation AUC so far (first task).
    #[serde(with = "exact_f64_opt")]
    pub best_auc: Option<f64>,
    /// Epoch that produced it.
    pub best_epoch: Option<u64>,
    /// Epochs since the last improvement.
    pub epochs_without_improvement: usize,
    /// Early stopping or the epoch limit ended the run.
    pub finished: bool,
    /// Sum of training losses in the current epoch (for its mean).
    #[serde(with = "exact_f64")]
    pub epoch_loss_sum: f64,
    /// Batches counted in `epoch_loss_sum`.
    pub epoch_loss_batches: u64,
    /// Seconds that earlier runs spent in the current epoch, up to their last checkpoint: a
    /// resumed epoch's `epoch_seconds` includes them (the time between that checkpoint and
    /// the interruption is lost with the run).
    #[serde(with = "exact_f64")]
    pub epoch_seconds_before: f64,
    /// Code-usage histogram `[D, K]` of the quantizer over the current epoch's training
    /// batches (reported per epoch; empty without a quantizer).
    pub rq_usage: Vec<u64>,
    /// Idle-step counters of the dead-code tracker (empty when restarts are off).
    pub dead_code_idle: Vec<u64>,
    /// One JSON object (as text) per finished epoch: the lines of metrics.jsonl.
    pub history: Vec<String>,
    /// Rows of the training and validation files the run was started with (a resumed run
    /// must see the same data; the configuration text alone cannot tell).
    pub data_rows: [usize; 2],
}

/// Serde adapter: an `f64` as its shortest round-trip decimal string.
mod exact_f64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Serde adapter: an `Option<f64>` as an optional shortest round-trip decimal string.
mod exact_f64_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(x) => s.serialize_some(&x.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| t.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
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
        // Gate statistics read every chunk's gates; models without gates take the faster
        // path that keeps no per-chunk state.
        if model.has_gates() {
            model.infer_keeping_chunks(&b);
        } else {
            model.infer(&b);
        }
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

/// Name of the checkpoint directory of step `step` under `state/`.
fn step_dir_name(step: u64) -> String {
    format!("step-{step:012}")
}

/// Writes a resumable checkpoint: files into `state/step-N/`, then the `LATEST` pointer
/// (atomically), then older step directories are removed. A kill at any point leaves `LATEST`
/// naming a complete checkpoint (the previous one until the new pointer is renamed in).
fn save_state(out: &Path, model: &Model<f32>, opt: &Optimizer<f32>, st: &RunState) -> Result<()> {
    let sd = state_dir(out);
    let name = step_dir_name(st.step);
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

/// The checkpoint directory `state/LATEST` names, if there is one.
fn latest_checkpoint(out: &Path) -> Option<PathBuf> {
    let sd = state_dir(out);
    let name = std::fs::read_to_string(sd.join("LATEST")).ok()?;
    Some(sd.join(name.trim()))
}

/// Loads the checkpoint `LATEST` points to.
fn load_state(out: &Path, model: &mut Model<f32>, opt: &mut Optimizer<f32>) -> Result<RunState> {
    let dir = latest_checkpoint(out).ok_or_else(|| {
        Error::Checkpoint(format!(
            "cannot resume from {}: no checkpoint",
            out.display()
        ))
    })?;
    checkpoint::load_weights(&dir.join(WEIGHTS_FILE), &mut model.params)?;
    checkpoint::load_optimizer(&dir.join(OPTIMIZER_FILE), opt, &model.params)?;
    let p = dir.join("state.json");
    let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Checkpoint(format!("{}: {e}", p.display())))
}

/// Decides how `fit --resume` starts: `Ok(true)` to continue from the latest checkpoint,
/// `Ok(false)` to start from the beginning because no checkpoint exists yet (a run killed
/// before its first checkpoint, or before it even created the directory, restarts cleanly),
/// and an error if the directory belongs to a different configuration, schema or vocabulary.
fn resume_from_checkpoint(out: &Path, cfg_text: &str) -> Result<bool> {
    let p = out.join(CONFIG_FILE);
    let has_checkpoint = state_dir(out).join("LATEST").exists();
    match std::fs::read_to_string(&p) {
        Ok(saved) if saved != cfg_text => Err(Error::Checkpoint(format!(
            "{} was written with a different configuration, schema or data vocabulary; \
             resume with the same arguments or use a new --out",
            p.display()
        ))),
        Ok(_) => Ok(has_checkpoint),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !has_checkpoint => Ok(false),
        Err(e) => Err(Error::io(&p, e)),
    }
}

/// Errors unless a resumed run reads its data as the interrupted one did: the same schema,
/// the same vocabulary and the same numbers of training and validation rows.
fn check_same_data(out: &Path, inp: &FitInputs, st: &RunState) -> Result<()> {
    let differs = |what: &str| {
        Err(Error::Checkpoint(format!(
            "cannot resume {}: {what} differs from the interrupted run's; resume with the same \
             files and arguments or use a new --out",
            out.display()
        )))
    };
    let schema_path = out.join(SCHEMA_FILE);
    let saved_schema = crate::error::read_settings_file(&schema_path)?;
    if saved_schema != inp.schema.to_toml() {
        return differs("the schema");
    }
    if Vocab::load(out.join(VOCAB_FILE))?.fingerprint() != inp.vocab.fingerprint() {
        return differs("the vocabulary built from the training file");
    }
    if st.data_rows != [inp.train.rows(), inp.val.rows()] {
        return differs(&format!(
            "the number of training / validation rows ({} / {}, before {} / {})",
            inp.train.rows(),
            inp.val.rows(),
            st.data_rows[0],
            st.data_rows[1]
        ));
    }
    Ok(())
}

/// True for files an interrupted atomic write or the writability probe leaves behind.
fn is_leftover(name: &str) -> bool {
    name == ".hmdn-write-test" || (name.starts_with('.') && name.contains(".tmp-"))
}

/// Creates `out` (and checks it is writable) with a clear error otherwise, and removes the
/// temporary files a killed run may have left in it and in its checkpoint directories.
pub fn prepare_out_dir(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let probe = out.join(".hmdn-write-test");
    std::fs::write(&probe, b"ok").map_err(|e| Error::io(out, e))?;
    let _ = std::fs::remove_file(probe);
    let mut dirs = vec![out.to_path_buf(), state_dir(out)];
    if let Ok(rd) = std::fs::read_dir(state_dir(out)) {
        dirs.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for ent in rd.flatten() {
            if is_leftover(&ent.file_name().to_string_lossy()) {
                let _ = std::fs::remove_file(ent.path());
            }
        }
    }
    Ok(())
}

/// Starts a run in `out` from nothing: removes the outputs of an earlier run there (its
/// checkpoints first, so they can never be resumed under the new configuration), then writes
/// the configuration, schema and vocabulary.
fn start_fresh(out: &Path, cfg_text: &str, inp: &FitInputs) -> Result<()> {
    let sd = state_dir(out);
    let _ = std::fs::remove_file(sd.join("LATEST"));
    if let Ok(rd) = std::fs::read_dir(&sd) {
        for ent in rd.flatten() {
            if ent.file_name().to_string_lossy().starts_with("step-") {
                std::fs::remove_dir_all(ent.path()).map_err(|e| Error::io(ent.path(), e))?;
            }
        }
    }
    for f in [WEIGHTS_FILE, METRICS_FILE] {
        match std::fs::remove_file(out.join(f)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(out.join(f), e))
            }
            _ => {}
        }
    }
    write_atomic(&out.join(CONFIG_FILE), cfg_text.as_bytes())?;
    write_atomic(&out.join(SCHEMA_FILE), inp.schema.to_toml().as_bytes())?;
    inp.vocab.save(out.join(VOCAB_FILE))
}

/// Copies the statistics a resumed run needs (epoch code usage, dead-code idle counters)
/// into `st` before it is saved.
fn snapshot_stats(st: &mut RunState, model: &Model<f32>, usage: &Option<RqUsage>) {
    st.rq_usage.clear();
    if let Some(u) = usage {
        st.rq_usage.extend_from_slice(&u.counts);
    }
    st.dead_code_idle.clear();
    if let Some(idle) = model.dead_code_state() {
        st.dead_code_idle.extend_from_slice(idle);
    }
}

/// Per quantizer level: rows recorded, distinct codes used and perplexity, as JSON.
fn usage_json(u: &RqUsage) -> serde_json::Value {
    serde_json::Value::Array(
        u.levels()
            .iter()
            .enumerate()
            .map(|(d, l)| {
                serde_json::json!({
                    "level": d,
                    "rows": l.total,
                    "codes_used": l.distinct,
                    "perplexity": l.perplexity,
                })
            })
            .collect(),
    )
}

/// Writes metrics.jsonl from the history (atomically).
fn write_metrics(out: &Path, st: &RunState) -> Result<()> {
    let mut text = String::new();
    for h in &st.history {
        text.push_str(h);
        text.push('\n');
    }
    write_atomic(&out.join(METRICS_FILE), text.as_bytes())
}

/// Where the last good state of a diverged run is, for its error message.
fn divergence_note(out: &Path, st: &RunState) -> String {
    let ckpt = match latest_checkpoint(out) {
        Some(d) if d.is_dir() => format!("the last good checkpoint is kept in {}", d.display()),
        _ => "no checkpoint was written before it".to_string(),
    };
    let best = match st.best_epoch {
        Some(e) => format!(
            "best weights (epoch {e}) in {}",
            out.join(WEIGHTS_FILE).display()
        ),
        None => "no epoch finished, so there are no best weights".to_string(),
    };
    format!("{ckpt}; {best}; try a lower --lr")
}

/// Fails with [`Error::Diverged`] at `step` if any parameter or optimiser moment is not
/// finite. Checked before every checkpoint and best-weights write, so none ever holds NaN or
/// infinity (an overflowing gradient shows up in Adam's second moment first, while the
/// weights and the loss may still be finite).
fn check_finite(
    model: &Model<f32>,
    opt: &Optimizer<f32>,
    step: u64,
    out: &Path,
    st: &RunState,
) -> Result<()> {
    let ps = &model.params;
    for (what, buf) in [
        ("the weights", ps.values()),
        ("Adam's first moment", &opt.m[..]),
        ("Adam's second moment", &opt.v[..]),
    ] {
        if let Some(spec) = ps
            .specs
            .iter()
            .find(|s| buf[s.range()].iter().any(|v| !v.is_finite()))
        {
            return Err(Error::Diverged {
                step,
                what: format!(
                    "non-finite values in {what} of `{}` (checked before saving step {step}); {}",
                    spec.name,
                    divergence_note(out, st)
                ),
            });
        }
    }
    Ok(())
}

/// Trains `cfg.model` on `inp.train`, validating on `inp.val` after every epoch; keeps the best
/// weights in `out/weights.safetensors` and a resumable checkpoint under `out/state/`.
///
/// With `inp.resume`, continues from the latest checkpoint in `out` (which must have been
/// written with the same configuration text), or starts from the beginning if there is none
/// yet; either way the result is bit-identical to a run that was never interrupted.
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
    // The largest batch the model will see: a training batch, or an evaluation batch of the
    // validation set (neither larger than its data set). Checked before the output directory
    // is touched.
    let rows = tc
        .batch_size
        .min(inp.train.rows())
        .max(tc.eval_batch_size.min(inp.val.rows()));
    crate::memory::check_batch_memory(
        cfg,
        &run.optim,
        true,
        rows,
        BatchBuffers::bytes_for(inp.train, rows),
        "--batch-size",
    )?;
    let cfg_text = toml::to_string(run)
        .map_err(|e| Error::Other(format!("cannot serialise the config: {e}")))?;
    let mut model = Model::<f32>::new(cfg, tc.seed)?;
    let mut opt = Optimizer::new(&model.params, run.optim.clone());
    // The epoch's code-usage histogram lives here rather than in the model so that it can be
    // saved with a checkpoint and a run resumed mid-epoch reports the whole epoch.
    let mut usage = model.rq.as_ref().map(|q| q.usage());
    let mut st = RunState::default();
    let from_checkpoint = inp.resume && resume_from_checkpoint(out, &cfg_text)?;
    prepare_out_dir(out)?;
    if from_checkpoint {
        st = load_state(out, &mut model, &mut opt)?;
        check_same_data(out, inp, &st)?;
        if let Some(u) = &mut usage {
            if st.rq_usage.len() == u.counts.len() {
                u.counts.copy_from_slice(&st.rq_usage);
            }
        }
        model.set_dead_code_state(&st.dead_code_idle);
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
        if inp.resume && !inp.quiet {
            eprintln!(
                "{} has no checkpoint yet: starting the run from the beginning",
                out.display()
            );
        }
        start_fresh(out, &cfg_text, inp)?;
        st.data_rows = [inp.train.rows(), inp.val.rows()];
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
        if st.batch == 0 {
            if let Some(u) = &mut usage {
                u.reset();
            }
        }
        let t0 = Instant::now();
        let seconds_before = st.epoch_seconds_before;
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
                            what: format!("{what}; {}", divergence_note(out, &st)),
                        },
                        other => other,
                    });
                }
            };
            if let Some(u) = &mut usage {
                for cache in model.rq_caches() {
                    u.record(cache);
                }
            }
            model.after_step(st.step, tc.seed);
            st.step += 1;
            st.batch += 1;
            st.epoch_loss_sum += loss.total as f64;
            st.epoch_loss_batches += 1;
            rows_this_run += batch.rows;
            let done = st.batch.saturating_mul(tc.batch_size).min(total_rows);
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
                check_finite(&model, &opt, st.step, out, &st)?;
                snapshot_stats(&mut st, &model, &usage);
                st.epoch_seconds_before = seconds_before + t0.elapsed().as_secs_f64();
                save_state(out, &model, &opt, &st)?;
            }
        }
        progress.update(
            epoch,
            total_rows,
            total_rows,
            rows_this_run as f64 / t0.elapsed().as_secs_f64().max(1e-9),
            st.epoch_loss_sum / st.epoch_loss_batches.max(1) as f64,
            true,
        );
        progress.finish_line();
        check_finite(&model, &opt, st.step, out, &st)?;

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
            "epoch_seconds": seconds_before + t0.elapsed().as_secs_f64(),
        });
        if let Some(u) = &usage {
            line["rq_levels"] = usage_json(u);
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
        st.history.push(line.to_string());
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
        st.epoch_seconds_before = 0.0;
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
        // metrics.jsonl first: if the run dies before the checkpoint below, the resumed run
        // repeats this epoch and rewrites the same lines.
        write_metrics(out, &st)?;
        snapshot_stats(&mut st, &model, &usage);
        save_state(out, &model, &opt, &st)?;
    }
    // A run resumed after it finished rewrites the file from its checkpoint (a no-op unless
    // the file was lost).
    write_metrics(out, &st)?;
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
