//! Resume and atomicity: a `fit` killed with SIGKILL at any moment and restarted with
//! `--resume DIR` ends with the same bytes as a run that was never interrupted.
//!
//! One uninterrupted reference run, then several chains of runs on the same data and
//! arguments, each killed at chosen moments (while loading data, as soon as the model
//! directory appears, right after a checkpoint mid-epoch, on the last batch of an epoch and
//! during its validation, a fraction of the reference's wall time after the start, and a few
//! milliseconds after a checkpoint, i.e. not aligned with any write) and restarted with
//! `--resume` until one finishes. Every chain must end with `weights.safetensors`, the
//! final `state/step-*` checkpoint (weights, optimiser state) and `metrics.jsonl` (all but the
//! wall-clock `epoch_seconds`) identical to the reference, and without leftover temp files.
//!
//! The model is hmdn-mmoe (k-means codebook init on the first batch, residual quantization)
//! with dead-code restarts switched on, so the tracker's idle counters and the per-epoch
//! code-usage statistics must survive a restart too. Checkpoints every 3 steps make a run
//! slow enough (each checkpoint is fsynced) to be killed mid-way.

mod cli_common;
use cli_common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const TRAIN_ROWS: usize = 6000;
const VAL_ROWS: usize = 2000;
const BATCH: usize = 64;
const EPOCHS: u64 = 3;
/// Batches per epoch.
const STEPS_PER_EPOCH: u64 = TRAIN_ROWS.div_ceil(BATCH) as u64;

const CONFIG: &str = r#"
[model.rq]
dead_code_restart_steps = 20
"#;

/// When to kill one attempt of a chain.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// Right after the process starts (while it parses arguments or reads the CSVs).
    AtStart,
    /// As soon as the model directory has a `config.toml`.
    WhenDirExists,
    /// As soon as the latest checkpoint has at least this many steps.
    AtStep(u64),
    /// As soon as `weights.safetensors` exists (the first epoch end is being written).
    WhenBestWeightsExist,
    /// After this fraction of the reference run's wall time.
    After(f64),
    /// This many milliseconds after the latest checkpoint has at least this many steps (a
    /// moment not aligned with checkpoint writes).
    AfterStep(u64, u64),
}

struct Setup {
    dir: TempDir,
    train: PathBuf,
    val: PathBuf,
    schema: PathBuf,
    config: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = TempDir::new("resume");
        let (train, val, schema) = synth_split(&dir, TRAIN_ROWS, VAL_ROWS);
        let config = dir.write("run.toml", CONFIG);
        Setup {
            dir,
            train,
            val,
            schema,
            config,
        }
    }

    /// Arguments of `fit`; `resume` continues `out` instead of starting it.
    fn args(&self, out: &Path, resume: bool) -> Vec<String> {
        let p = |p: &Path| p.display().to_string();
        let mut a: Vec<String> = vec![
            "fit".into(),
            "--train".into(),
            p(&self.train),
            "--val".into(),
            p(&self.val),
            "--schema".into(),
            p(&self.schema),
            "--config".into(),
            p(&self.config),
            "--model".into(),
            "hmdn-mmoe".into(),
            "--epochs".into(),
            EPOCHS.to_string(),
            "--batch-size".into(),
            BATCH.to_string(),
            "--patience".into(),
            "10".into(),
            "--checkpoint-every".into(),
            "3".into(),
            "--threads".into(),
            "1".into(),
        ];
        a.push(if resume { "--resume" } else { "--out" }.into());
        a.push(p(out));
        a
    }

    fn spawn(&self, out: &Path, resume: bool, cache: &Path) -> Child {
        let mut c = self.dir.cmd(&self.args(out, resume));
        c.env("HMDN_CACHE_DIR", cache)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c.spawn().expect("cannot start hmdn-cpu")
    }
}

/// Step count of the checkpoint `state/LATEST` points to, if any.
fn latest_step(out: &Path) -> Option<u64> {
    let name = std::fs::read_to_string(out.join("state/LATEST")).ok()?;
    name.trim().strip_prefix("step-")?.parse().ok()
}

/// Waits until `kill` says so (or the child exits). Returns true if the child was killed.
fn kill_when(child: &mut Child, kill: Kill, out: &Path, reference_secs: f64) -> bool {
    let t0 = Instant::now();
    loop {
        let now = match kill {
            Kill::AtStart => true,
            Kill::WhenDirExists => out.join("config.toml").exists(),
            Kill::AtStep(s) => latest_step(out).is_some_and(|l| l >= s),
            Kill::WhenBestWeightsExist => out.join("weights.safetensors").exists(),
            Kill::After(f) => t0.elapsed().as_secs_f64() >= f * reference_secs,
            Kill::AfterStep(s, ms) => {
                if latest_step(out).is_some_and(|l| l >= s) {
                    std::thread::sleep(Duration::from_millis(ms));
                    true
                } else {
                    false
                }
            }
        };
        if now {
            // Child::kill sends SIGKILL on Unix; it fails only if the child already exited.
            let killed = child.kill().is_ok();
            let status = child.wait().unwrap();
            return killed && status.code().is_none();
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// metrics.jsonl without the wall-clock field, one JSON value per line.
fn metrics_lines(out: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("epoch_seconds");
            v
        })
        .collect()
}

/// Asserts equal metrics lines, naming the first line and keys that differ.
#[track_caller]
fn assert_same_metrics(got: &[serde_json::Value], want: &[serde_json::Value], name: &str) {
    assert_eq!(got.len(), want.len(), "{name}: metrics.jsonl line count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g.as_object().unwrap(), w.as_object().unwrap());
        let keys: Vec<&String> = g
            .keys()
            .chain(w.keys())
            .filter(|k| g.get(*k) != w.get(*k))
            .collect();
        assert!(
            keys.is_empty(),
            "{name}: metrics.jsonl line {} differs in {keys:?}",
            i + 1
        );
    }
}

/// The single checkpoint directory left under `out/state`.
fn final_state_dir(out: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(out.join("state"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(
        dirs.len(),
        1,
        "{}: expected one checkpoint: {dirs:?}",
        out.display()
    );
    dirs.into_iter().next().unwrap()
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Asserts two files are byte-identical without dumping their bytes.
#[track_caller]
fn assert_same_bytes(a: &Path, b: &Path, what: &str) {
    let (x, y) = (bytes(a), bytes(b));
    assert!(
        x == y,
        "{what}: {} ({} bytes) and {} ({} bytes) differ",
        a.display(),
        x.len(),
        b.display(),
        y.len()
    );
}

/// The line of the final summary (stdout) that names the best AUC.
fn summary_line(stdout: &str) -> String {
    stdout
        .lines()
        .find(|l| l.contains("best validation AUC"))
        .unwrap_or_else(|| panic!("no summary in {stdout:?}"))
        .to_string()
}

/// `(epoch, epoch_seconds_before)` of the latest checkpoint when it was taken mid-epoch.
fn mid_epoch_checkpoint(out: &Path) -> Option<(u64, f64)> {
    let latest = std::fs::read_to_string(out.join("state/LATEST")).ok()?;
    let js = std::fs::read_to_string(out.join("state").join(latest.trim()).join("state.json"));
    let v: serde_json::Value = serde_json::from_str(&js.ok()?).ok()?;
    if v["batch"].as_u64()? == 0 {
        return None;
    }
    let before: f64 = v["epoch_seconds_before"].as_str()?.parse().ok()?;
    Some((v["epoch"].as_u64()?, before))
}

/// Runs one chain: attempts killed as `kills` says, then resumed until a run completes.
/// Returns the final run's stdout and how many attempts were really killed. Checks on the
/// way that each mid-epoch checkpoint the killed attempts leave carries the seconds spent in
/// its epoch so far, and that the epoch's final `epoch_seconds` includes them.
fn chain(s: &Setup, name: &str, kills: &[Kill], reference_secs: f64) -> (PathBuf, String, usize) {
    let out = s.dir.path(name);
    let cache = s.dir.path(&format!("cache-{name}"));
    let mut killed = 0;
    let mut started = false;
    let mut carried: Vec<(u64, f64)> = Vec::new();
    for (i, &k) in kills.iter().enumerate() {
        // The first attempt starts the run; later ones resume it. (A resume of a directory
        // the killed attempt never created starts the run there.)
        let mut child = s.spawn(&out, i > 0, &cache);
        started = true;
        if kill_when(&mut child, k, &out, reference_secs) {
            killed += 1;
            carried.extend(mid_epoch_checkpoint(&out));
        } else {
            let o = child.wait_with_output().unwrap();
            panic!(
                "{name}: attempt {i} ({k:?}) finished before it could be killed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
    // Resume until one attempt completes (it should be the first).
    let o = s.spawn(&out, started, &cache).wait_with_output().unwrap();
    let r = Run::from(o).ok();
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    for (epoch, before) in carried {
        assert!(
            before > 0.0,
            "{name}: a mid-epoch checkpoint of epoch {epoch} carries no time"
        );
        let line: serde_json::Value = metrics
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["epoch"].as_u64() == Some(epoch))
            .unwrap_or_else(|| panic!("{name}: no metrics line for epoch {epoch}"));
        let secs = line["epoch_seconds"].as_f64().unwrap();
        assert!(
            secs >= before,
            "{name}: epoch {epoch} reports {secs} s, but earlier runs had spent {before} s in it"
        );
    }
    (out, r.stdout, killed)
}

#[test]
fn killed_runs_resume_bit_identically() {
    let s = Setup::new();
    let t0 = Instant::now();
    let reference = s.dir.path("reference");
    let r = s.dir.run(&s.args(&reference, false)).ok();
    let reference_secs = t0.elapsed().as_secs_f64();
    eprintln!("reference run: {reference_secs:.2} s");
    let ref_summary = summary_line(&r.stdout);
    let ref_state = final_state_dir(&reference);
    assert_eq!(
        ref_state.file_name().unwrap().to_string_lossy(),
        format!("step-{:012}", EPOCHS * STEPS_PER_EPOCH)
    );
    let ref_metrics = metrics_lines(&reference);
    assert_eq!(ref_metrics.len(), EPOCHS as usize);

    let spe = STEPS_PER_EPOCH;
    // The last checkpoint (every 3 steps) before the end of epoch `e`: a kill as soon as it
    // appears lands on the epoch's last batches, its validation or its end-of-epoch writes.
    let before_end = |e: u64| (e * spe - 1) / 3 * 3;
    let chains: [(&str, Vec<Kill>); 4] = [
        (
            "early",
            vec![Kill::AtStart, Kill::WhenDirExists, Kill::AtStep(3)],
        ),
        (
            "mid-epoch",
            vec![Kill::AtStep(spe / 2), Kill::AtStep(spe + spe / 2)],
        ),
        (
            "epoch-end",
            vec![
                Kill::AtStep(before_end(1)),
                Kill::WhenBestWeightsExist,
                Kill::AtStep(before_end(2)),
                Kill::AtStep(before_end(3)),
            ],
        ),
        (
            "timed",
            vec![
                Kill::After(0.1),
                Kill::AfterStep(spe / 3, 5),
                Kill::AfterStep(spe + spe / 3, 11),
                Kill::AfterStep(2 * spe + spe / 3, 17),
            ],
        ),
    ];
    for (name, kills) in &chains {
        let t = Instant::now();
        let (out, stdout, killed) = chain(&s, name, kills, reference_secs);
        eprintln!(
            "chain {name}: {killed} of {} attempts killed, {:.2} s",
            kills.len(),
            t.elapsed().as_secs_f64()
        );
        assert_eq!(killed, kills.len(), "{name}: not every attempt was killed");
        assert_same_bytes(
            &out.join("weights.safetensors"),
            &reference.join("weights.safetensors"),
            &format!("{name}: best weights"),
        );
        let st = final_state_dir(&out);
        assert_eq!(st.file_name(), ref_state.file_name(), "{name}: final step");
        for f in ["weights.safetensors", "optimizer.safetensors"] {
            assert_same_bytes(
                &st.join(f),
                &ref_state.join(f),
                &format!("{name}: final checkpoint's {f}"),
            );
        }
        assert_same_metrics(&metrics_lines(&out), &ref_metrics, name);
        assert_eq!(
            summary_line(&stdout),
            ref_summary.replace(&reference.display().to_string(), &out.display().to_string(),),
            "{name}: summary differs"
        );
        for f in ["config.toml", "schema.toml"] {
            assert_eq!(text(&out.join(f)), text(&reference.join(f)), "{name}: {f}");
        }
        // vocab.json: the same mapping (its key order is not fixed between processes).
        let vocab = |d: &Path| -> serde_json::Value {
            serde_json::from_str(&text(&d.join("vocab.json"))).unwrap()
        };
        assert!(
            vocab(&out) == vocab(&reference),
            "{name}: vocab.json differs"
        );
        let left = temp_leftovers(&out);
        assert!(left.is_empty(), "{name}: temp files left behind: {left:?}");
    }

    // Resuming a finished run changes nothing and reports the same summary.
    let out = s.dir.path("mid-epoch");
    let before = bytes(&out.join("weights.safetensors"));
    let r = s.dir.run(&s.args(&out, true)).ok();
    assert_eq!(
        summary_line(&r.stdout),
        ref_summary.replace(&reference.display().to_string(), &out.display().to_string())
    );
    assert!(bytes(&out.join("weights.safetensors")) == before);
    assert_same_metrics(
        &metrics_lines(&out),
        &ref_metrics,
        "resumed after finishing",
    );
}
