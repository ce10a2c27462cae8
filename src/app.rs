//! What each CLI command does. `main.rs` only parses arguments and prints errors.

use crate::bench;
use crate::checkpoint::{self, write_atomic, CONFIG_FILE, WEIGHTS_FILE};
use crate::cli::{
    BenchArgs, Cli, Command, EvalArgs, FitArgs, GenArgs, GradcheckArgs, Precision, PredictArgs,
};
use crate::config::ModelKind;
use crate::data::{self, BatchBuffers, Batcher, Dataset, LoadOptions, Schema, Vocab};
use crate::error::{Error, Result};
use crate::gradcheck::{self, GradReport, RandomBatch, TOLERANCE};
use crate::metrics::{self, EvalReport};
use crate::model::Model;
use crate::train::{self, FitInputs, FitSummary, RunConfig, SCHEMA_FILE, VOCAB_FILE};
use rand::SeedableRng;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where columnar caches go: `$HMDN_CACHE_DIR`, else `$XDG_CACHE_HOME/hmdn-cpu`, else
/// `~/.cache/hmdn-cpu`, else the system temp directory. Never next to the input CSV by
/// default, so read-only or shared data directories stay untouched.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HMDN_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("hmdn-cpu");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".cache").join("hmdn-cpu");
    }
    std::env::temp_dir().join("hmdn-cpu-cache")
}

fn load_options() -> LoadOptions {
    LoadOptions {
        cache_dir: Some(default_cache_dir()),
        ..LoadOptions::default()
    }
}

/// Upper bound of `--threads`: far above any useful count, far below the count at which
/// creating the pool exhausts memory (every worker reserves a stack).
pub const MAX_THREADS: usize = 1024;

/// Runs `f` on a rayon pool of `threads` workers (all cores when `None` or 0).
pub fn with_threads<R: Send>(
    threads: Option<usize>,
    f: impl FnOnce() -> Result<R> + Send,
) -> Result<R> {
    let n = threads.unwrap_or(0);
    if n > MAX_THREADS {
        return Err(Error::Config(format!(
            "--threads {n} is more than {MAX_THREADS} worker threads (0 means all cores)"
        )));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .map_err(|e| Error::Other(format!("cannot start {n} worker threads: {e}")))?;
    pool.install(f)
}

/// Runs a parsed command line. `Ok(false)` means "ran, but the result is a failure" (a
/// gradient check above tolerance): exit code 1 without an error message.
pub fn run(cli: Cli) -> Result<bool> {
    match cli.command {
        None => fit(FitArgs::default()).map(|_| true),
        Some(Command::Fit(a)) => fit(a).map(|_| true),
        Some(Command::Eval(a)) => eval(a).map(|_| true),
        Some(Command::Predict(a)) => predict(a).map(|_| true),
        Some(Command::Compare(a)) => crate::compare::run(a).map(|_| true),
        Some(Command::Gen(a)) => gen(a).map(|_| true),
        Some(Command::Gradcheck(a)) => gradcheck(a),
        Some(Command::Bench(a)) => bench_cmd(a).map(|_| true),
        Some(Command::Info) => {
            info();
            Ok(true)
        }
    }
}

fn required<'a, T>(v: &'a Option<T>, flag: &str) -> Result<&'a T> {
    v.as_ref().ok_or_else(|| {
        Error::Config(format!(
            "`fit` needs {flag} (or run `hmdn-cpu fit` with no arguments for the demo)"
        ))
    })
}

/// Builds the run configuration of `fit`: defaults, then `--config`, then flags.
pub fn run_config(a: &FitArgs) -> Result<RunConfig> {
    let mut run = match &a.config {
        Some(p) => RunConfig::load(p)?,
        None => RunConfig::default(),
    };
    if let Some(m) = &a.model {
        run.model.model = ModelKind::parse(m)?;
    }
    if let Some(v) = a.epochs {
        run.train.epochs = v;
    }
    if let Some(v) = a.batch_size {
        run.train.batch_size = v;
    }
    if let Some(v) = a.lr {
        run.optim.lr = v;
    }
    if let Some(v) = a.seed {
        run.train.seed = v;
    }
    if let Some(v) = a.patience {
        run.train.patience = v;
    }
    if let Some(v) = a.checkpoint_every {
        run.train.checkpoint_every = v;
    }
    if !(run.optim.lr.is_finite() && run.optim.lr > 0.0) {
        return Err(Error::Config(format!(
            "the learning rate must be positive, got {}",
            run.optim.lr
        )));
    }
    if run.train.batch_size == 0 {
        return Err(Error::Config("--batch-size must be at least 1".into()));
    }
    if run.train.epochs == 0 {
        return Err(Error::Config("--epochs must be at least 1".into()));
    }
    // The model directory's config.toml records these, and TOML integers end at 2^63 - 1.
    let t = &run.train;
    for (flag, v) in [
        ("--epochs", t.epochs as u64),
        ("--batch-size", t.batch_size as u64),
        ("--seed", t.seed),
        ("--patience", t.patience as u64),
        ("--checkpoint-every", t.checkpoint_every),
    ] {
        if v > i64::MAX as u64 {
            return Err(Error::Config(format!(
                "{flag} {v} is larger than {}, the largest integer a config file can hold",
                i64::MAX
            )));
        }
    }
    Ok(run)
}

/// Opens train and validation data with a schema and trains; the shared core of `fit`,
/// `compare` and the demo.
pub fn fit_files(
    run: &mut RunConfig,
    train_csv: &Path,
    val_csv: &Path,
    schema: &Schema,
    out: &Path,
    resume: bool,
    quiet: bool,
) -> Result<FitSummary> {
    let opts = load_options();
    let (train_ds, vocab) = Dataset::open_train(train_csv, schema, &opts)?;
    let val_ds = Dataset::open(val_csv, schema, &vocab, &opts)?;
    if !quiet {
        eprintln!(
            "data: {} training rows ({}), {} validation rows ({})",
            train_ds.rows(),
            cache_note(train_ds.cache_status()),
            val_ds.rows(),
            cache_note(val_ds.cache_status())
        );
    }
    data::configure_model(&mut run.model, schema, &vocab)?;
    train::fit(
        run,
        &FitInputs {
            train: &train_ds,
            val: &val_ds,
            schema,
            vocab: &vocab,
            out,
            resume,
            quiet,
        },
    )
}

fn cache_note(s: &data::CacheStatus) -> String {
    match s {
        data::CacheStatus::Reused => "cached".into(),
        data::CacheStatus::Built { reason } => format!("parsed; {reason}"),
    }
}

fn fit(a: FitArgs) -> Result<()> {
    if a.train.is_none() && a.schema.is_none() && a.val.is_none() && a.resume.is_none() {
        return demo(&a);
    }
    let mut run = run_config(&a)?;
    let out = match (&a.out, &a.resume) {
        (Some(o), Some(r)) if o != r => {
            return Err(Error::Config(format!(
                "--out {} and --resume {} differ; resume continues in the directory it resumes",
                o.display(),
                r.display()
            )))
        }
        (_, Some(r)) => r.clone(),
        (Some(o), None) => o.clone(),
        (None, None) => return Err(Error::Config("`fit` needs --out DIR".into())),
    };
    if a.model.is_none() && a.config.is_none() && a.resume.is_none() {
        return Err(Error::Config(format!(
            "`fit` needs --model NAME (one of: {})",
            ModelKind::ALL.map(|m| m.name()).join(", ")
        )));
    }
    let train_csv = required(&a.train, "--train FILE")?.clone();
    let val_csv = required(&a.val, "--val FILE")?.clone();
    let mut schema = Schema::load(required(&a.schema, "--schema FILE")?)?;
    if let Some(d) = a.delimiter {
        schema.delimiter = Some(d.to_string());
    }
    let quiet = a.quiet;
    let resume = a.resume.is_some();
    let summary = with_threads(a.threads, || {
        fit_files(&mut run, &train_csv, &val_csv, &schema, &out, resume, quiet)
    })?;
    print_summary(&run, &summary);
    Ok(())
}

fn fmt_auc(a: Option<f64>) -> String {
    a.map(|v| format!("{v:.4}")).unwrap_or_else(|| "n/a".into())
}

fn print_summary(run: &RunConfig, s: &FitSummary) {
    println!(
        "{}: best validation AUC {} at epoch {} ({} epochs, {} steps); best weights kept in {}",
        run.model.model,
        fmt_auc(s.best_auc),
        s.best_epoch
            .map(|e| e.to_string())
            .unwrap_or_else(|| "-".into()),
        s.epochs_run,
        s.steps,
        s.out.join(WEIGHTS_FILE).display()
    );
}

/// `hmdn-cpu fit` with no arguments: synthetic data, `mmoe` and `hmdn-mmoe`, and the Bayes AUC.
fn demo(a: &FitArgs) -> Result<()> {
    // Flags and --config checked before anything is written.
    run_config(&FitArgs {
        model: Some(ModelKind::Mmoe.name().into()),
        ..a.clone()
    })?;
    let dir = a
        .out
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("hmdn-cpu-demo"));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let (train_csv, val_csv) = (dir.join("train.csv"), dir.join("val.csv"));
    let (n_train, n_val) = (150_000, 30_000);
    data::synth::generate_split(n_train, n_val, 7, &train_csv, &val_csv)?;
    println!(
        "demo: synthetic hierarchical data (population → scenario → interest) in {}: {n_train} train / {n_val} validation rows",
        dir.display()
    );
    let schema = data::synth_schema();
    let mut rows = Vec::new();
    let mut bayes = None;
    for kind in [ModelKind::Mmoe, ModelKind::HmdnMmoe] {
        let mut args = FitArgs {
            model: Some(kind.name().into()),
            ..a.clone()
        };
        // Small data, few epochs: a larger step than the default 1e-3 converges in seconds.
        args.epochs = args.epochs.or(Some(4));
        args.batch_size = args.batch_size.or(Some(512));
        args.lr = args.lr.or(Some(3e-3));
        let mut run = run_config(&args)?;
        let out = dir.join(kind.name());
        let t0 = std::time::Instant::now();
        let s = with_threads(a.threads, || {
            fit_files(&mut run, &train_csv, &val_csv, &schema, &out, false, true)
        })?;
        let secs = t0.elapsed().as_secs_f64();
        if let Some(r) = &s.best_report {
            bayes = r.tasks.first().and_then(|t| t.bayes_auc);
        }
        println!(
            "  trained {:<10} in {secs:5.1} s: validation AUC {}",
            kind.name(),
            fmt_auc(s.best_auc)
        );
        rows.push((kind, s.best_auc));
    }
    println!();
    println!("  {:<12} {:>8}", "model", "val AUC");
    for (k, auc) in &rows {
        println!("  {:<12} {:>8}", k.name(), fmt_auc(*auc));
    }
    println!(
        "  {:<12} {:>8}   (AUC of the true click probability)",
        "Bayes",
        fmt_auc(bayes)
    );
    println!();
    println!("Next: `hmdn-cpu fit --help`, or train on your own CSV with --train/--val/--schema/--model/--out.");
    Ok(())
}

/// A trained model directory: configuration, schema, vocabulary and weights.
pub struct ModelDir {
    /// Run configuration saved by `fit`.
    pub run: RunConfig,
    /// Schema the model was trained with.
    pub schema: Schema,
    /// Training vocabulary.
    pub vocab: Vocab,
    /// The model with its best weights.
    pub model: Model<f32>,
}

/// Loads `config.toml`, `schema.toml`, `vocab.json` and `weights.safetensors` from `dir`.
pub fn load_model_dir(dir: &Path) -> Result<ModelDir> {
    if !dir.is_dir() {
        return Err(Error::Checkpoint(format!(
            "{} is not a model directory (run `hmdn-cpu fit --out DIR` first)",
            dir.display()
        )));
    }
    if !dir.join(CONFIG_FILE).is_file() {
        return Err(Error::Checkpoint(format!(
            "{} is not a model directory: it has no {CONFIG_FILE} (run `hmdn-cpu fit --out DIR` first)",
            dir.display()
        )));
    }
    let run = RunConfig::load(&dir.join(CONFIG_FILE))?;
    let schema = Schema::load(dir.join(SCHEMA_FILE))?;
    let vocab = Vocab::load(dir.join(VOCAB_FILE))?;
    let mut check = run.model.clone();
    data::configure_model(&mut check, &schema, &vocab)?;
    if check != run.model {
        return Err(Error::Checkpoint(format!(
            "{}: config.toml, schema.toml and vocab.json do not belong together",
            dir.display()
        )));
    }
    let mut model = Model::<f32>::new(&run.model, 0)?;
    let w = dir.join(WEIGHTS_FILE);
    if !w.exists() {
        return Err(Error::Checkpoint(format!(
            "{} has no weights yet (training did not finish an epoch)",
            dir.display()
        )));
    }
    checkpoint::load_weights(&w, &mut model.params)?;
    Ok(ModelDir {
        run,
        schema,
        vocab,
        model,
    })
}

/// `eval` / `predict`: whether prediction batches of `bs` rows of `ds` (no more than it has)
/// fit in memory with `md`'s model ([`crate::memory::check_batch_memory`]).
fn check_prediction_memory(md: &ModelDir, ds: &Dataset, bs: usize) -> Result<()> {
    let rows = bs.min(ds.rows());
    let extra = BatchBuffers::bytes_for(ds, rows);
    let (cfg, optim) = (&md.run.model, &md.run.optim);
    crate::memory::check_batch_memory(cfg, optim, false, rows, extra, "--batch-size")
}

fn eval(a: EvalArgs) -> Result<()> {
    let mut md = load_model_dir(&a.model_dir)?;
    let bs = a.batch_size.unwrap_or(4096).max(1);
    let report = with_threads(a.threads, || {
        let ds = Dataset::open(&a.data, &md.schema, &md.vocab, &load_options())?;
        if ds.n_tasks() == 0 {
            return Err(Error::Data {
                file: a.data.clone(),
                line: Some(1),
                column: None,
                msg: "no label columns: `eval` needs labels (use `predict` for unlabelled data)"
                    .into(),
            });
        }
        check_prediction_memory(&md, &ds, bs)?;
        let mut preds = Vec::new();
        train::predict_dataset(&mut md.model, &ds, bs, &mut preds);
        Ok(metrics::evaluate(&ds, &preds))
    })?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| Error::Other(e.to_string()))?
        );
    } else {
        print_report(&report);
    }
    Ok(())
}

/// Prints an evaluation report as text.
pub fn print_report(r: &EvalReport) {
    println!("rows: {}", r.rows);
    for t in &r.tasks {
        println!(
            "task {}: AUC {}  logloss {:.5}  gAUC {} ({} users)  CTR {:.4}  mean prediction {:.4}",
            t.task,
            fmt_auc(t.auc),
            t.logloss,
            fmt_auc(t.gauc),
            t.gauc_users,
            t.ctr,
            t.mean_pred
        );
        if let Some(b) = t.bayes_auc {
            println!(
                "  Bayes-optimal (p_true): AUC {b:.4}  logloss {:.5}",
                t.bayes_logloss.unwrap_or(f64::NAN)
            );
        }
        if !t.cells.is_empty() {
            println!("  per partition cell ({}):", r.partition.join(" × "));
            println!("    {:<40} {:>8} {:>8} {:>8}", "cell", "rows", "pos", "AUC");
            for c in &t.cells {
                println!(
                    "    {:<40} {:>8} {:>8} {:>8}",
                    c.cell,
                    c.rows,
                    c.positives,
                    fmt_auc(c.auc)
                );
            }
        }
    }
}

fn predict(a: PredictArgs) -> Result<()> {
    let mut md = load_model_dir(&a.model_dir)?;
    let bs = a.batch_size.unwrap_or(4096).max(1);
    let out = a.out.clone();
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("predictions.csv");
    if out.is_dir() {
        return Err(Error::Other(format!(
            "{}: --out is a directory; give the path of the CSV file to write",
            out.display()
        )));
    }
    // The output is written to a temporary file next to it and renamed over it at the end, so
    // a failure (bad row, full disk) never leaves a half-written file. It is created before
    // the data is read so that an unwritable --out fails at once.
    remove_dead_temp_files(dir, name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&out, e))?;
    let res = with_threads(a.threads, || {
        let opts = LoadOptions {
            allow_missing_labels: true,
            ..load_options()
        };
        let ds = Dataset::open(&a.data, &md.schema, &md.vocab, &opts)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        let io = |e: std::io::Error| Error::io(&out, e);
        let tasks = &md.run.model.tasks;
        writeln!(w, "{}", tasks.join(",")).map_err(io)?;
        let t = tasks.len();
        check_prediction_memory(&md, &ds, bs)?;
        let mut batcher = Batcher::sequential(ds.rows(), bs);
        let mut buf = BatchBuffers::new(bs, &ds);
        let mut line = String::new();
        while batcher.next_batch(&ds, &mut buf) {
            let b = buf.batch();
            md.model.infer(&b);
            for row in md.model.logits()[..b.rows * t].chunks_exact(t) {
                line.clear();
                for (i, &l) in row.iter().enumerate() {
                    if i > 0 {
                        line.push(',');
                    }
                    use std::fmt::Write as _;
                    let _ = write!(line, "{:.6}", hmdn_kernels::act::sigmoid(l));
                }
                line.push('\n');
                w.write_all(line.as_bytes()).map_err(io)?;
            }
        }
        let f = w.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &out).map_err(io)?;
        Ok(ds.rows())
    });
    match res {
        Ok(rows) => {
            eprintln!("wrote {rows} predictions to {}", out.display());
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn gen(a: GenArgs) -> Result<()> {
    if a.rows == 0 || a.val_rows == Some(0) {
        return Err(Error::Config(
            "--rows and --val-rows must be at least 1".into(),
        ));
    }
    let summary = |rows: usize, clicks: usize, mean_p: f64| {
        format!(
            "{rows} rows ({clicks} clicks, CTR {:.4}, mean p_true {mean_p:.4})",
            clicks as f64 / rows as f64
        )
    };
    match (a.val_rows, &a.val_out) {
        (Some(n), Some(vp)) => {
            let (t, v) = data::synth::generate_split(a.rows, n, a.seed, &a.out, vp)?;
            println!(
                "wrote {} to {}",
                summary(t.rows, t.positives, t.mean_p_true),
                a.out.display()
            );
            println!(
                "wrote {} from the same world to {}",
                summary(v.rows, v.positives, v.mean_p_true),
                vp.display()
            );
        }
        _ => {
            let t = data::generate(a.rows, a.seed, &a.out)?;
            println!(
                "wrote {} to {}",
                summary(t.rows, t.positives, t.mean_p_true),
                a.out.display()
            );
        }
    }
    if let Some(p) = &a.schema_out {
        write_atomic(p, data::synth_schema().to_toml().as_bytes())?;
        println!("wrote its schema to {}", p.display());
    }
    Ok(())
}

/// Runs the gradient check of `hmdn-cpu gradcheck` and returns the report rows.
pub fn gradcheck_reports(
    kind: ModelKind,
    precision: Precision,
    seed: u64,
) -> Result<Vec<GradReport>> {
    let cfg = gradcheck::tiny_config(kind);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(100));
    let data = RandomBatch::new(&cfg, 6, &mut rng);
    Ok(match precision {
        Precision::F64 => {
            let mut m = Model::<f64>::new(&cfg, seed)?;
            gradcheck::check_model(&mut m, &data.batch())
        }
        Precision::F32 => {
            let mut m = Model::<f32>::new(&cfg, seed)?;
            gradcheck::check_model_with(&mut m, &data.batch(), 3e-2, 40)
        }
    })
}

fn gradcheck(a: GradcheckArgs) -> Result<bool> {
    let kind = ModelKind::parse(&a.model)?;
    let reports = gradcheck_reports(kind, a.precision, a.seed)?;
    println!(
        "{:<40} {:<14} {:>6} {:>7} {:>11} {:>11}",
        "parameter", "shape", "coords", "kinks", "max abs", "max rel"
    );
    for r in &reports {
        println!(
            "{:<40} {:<14} {:>6} {:>7} {:>11.3e} {:>11.3e}",
            r.name,
            format!("{:?}", r.shape),
            r.checked,
            r.skipped,
            r.max_abs,
            r.max_rel
        );
    }
    let worst = reports.iter().map(|r| r.max_rel).fold(0.0, f64::max);
    match a.precision {
        Precision::F64 => {
            let ok = reports.iter().all(|r| r.passes() && r.checked > 0);
            println!(
                "{kind}: max relative error {worst:.3e} (tolerance {TOLERANCE:e}): {}",
                if ok { "PASS" } else { "FAIL" }
            );
            Ok(ok)
        }
        Precision::F32 => {
            let worst_abs = reports.iter().map(|r| r.max_abs).fold(0.0, f64::max);
            // f32: the loss is only known to ~1e-7 relative; absolute errors are the signal.
            let ok = worst_abs <= 1e-3;
            println!(
                "{kind} (f32 smoke test): max abs error {worst_abs:.3e} (bound 1e-3), max rel {worst:.3e}: {}",
                if ok { "PASS" } else { "FAIL" }
            );
            Ok(ok)
        }
    }
}

fn bench_cmd(a: BenchArgs) -> Result<()> {
    let kind = ModelKind::parse(&a.model)?;
    if a.batch == 0 || a.steps == 0 {
        return Err(Error::Config(
            "--batch and --steps must be at least 1".into(),
        ));
    }
    if a.serve {
        let (stdin, stdout) = (std::io::stdin(), std::io::stdout());
        return with_threads(a.threads, || {
            bench::serve(kind, a.batch, stdin.lock(), stdout.lock())
        });
    }
    let mut r = with_threads(a.threads, || bench::run(kind, a.batch, a.steps))?;
    r.simd = hmdn_kernels::simd_info();
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&r).map_err(|e| Error::Other(e.to_string()))?
        );
    } else {
        println!(
            "{} batch {} threads {}: train {:.0} samples/s ({:.1} GFLOP/s), inference {:.0} samples/s ({:.1} GFLOP/s), peak RSS {:.0} MiB [{}]",
            r.model, r.batch, r.threads, r.train_samples_per_s, r.train_gflops, r.infer_samples_per_s, r.infer_gflops, r.peak_rss_mib, r.simd
        );
        println!(
            "  training samples/s per timed round: {:?}",
            r.train_samples
                .iter()
                .map(|v| v.round())
                .collect::<Vec<_>>()
        );
        if !r.phases.is_empty() {
            println!("  where a training step's time goes:");
            for (name, frac) in &r.phases {
                println!("    {name:<12} {:5.1}%", frac * 100.0);
            }
        }
        if !r.infer_phases.is_empty() {
            println!("  where an inference forward's time goes:");
            for (name, frac) in &r.infer_phases {
                println!("    {name:<12} {:5.1}%", frac * 100.0);
            }
        }
    }
    Ok(())
}

fn info() {
    println!("hmdn-cpu {}", env!("CARGO_PKG_VERSION"));
    println!("{}", hmdn_kernels::simd_info());
    println!(
        "threads: {} (rayon default; --threads N overrides)",
        rayon::current_num_threads()
    );
    println!(
        "build profile: {}",
        if cfg!(debug_assertions) {
            "debug (slow; use --release)"
        } else {
            "release"
        }
    );
    println!(
        "large buffers: {}",
        if hmdn_kernels::mem::large_blocks_line_aligned() {
            "64-byte aligned (allocator hmdn_kernels::mem::LineAligned)"
        } else {
            "not 64-byte aligned (another global allocator; the GEMMs run slower)"
        }
    );
    println!("cache dir: {}", default_cache_dir().display());
}

/// Removes `.{name}.tmp-PID` files in `dir` whose process is gone: what a killed `predict`
/// into the same output left behind (a kill cannot be caught). Files of live processes (a
/// concurrent `predict` into the same path) and every other file stay. Only where a
/// process's liveness can be read (`/proc`, Linux); elsewhere nothing is removed.
fn remove_dead_temp_files(dir: &Path, name: &str) {
    let prefix = format!(".{name}.tmp-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && process_is_gone(pid) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Whether process `pid` certainly no longer exists (never true where that cannot be told).
fn process_is_gone(pid: u32) -> bool {
    cfg!(target_os = "linux")
        && Path::new("/proc/self").exists()
        && !Path::new("/proc").join(pid.to_string()).exists()
}
