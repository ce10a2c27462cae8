//! Bad input through the binary: every case exits with code 2 and prints one line starting
//! with `error:` that names the file (and line / column where there is one) and what was
//! expected; never a panic, never a half-written output.

mod cli_common;
use cli_common::*;
use std::path::Path;

const SCHEMA: &str = r#"
label = "click"
categorical = ["user", "item", "city"]
numeric = ["price"]
distribution = ["city"]
"#;

const HEADER: &str = "click,user,item,city,price\n";

/// A small valid data set in the layout of [`SCHEMA`] (both labels present).
fn good_rows() -> String {
    let mut s = String::from(HEADER);
    for i in 0..40 {
        s.push_str(&format!(
            "{},u{},i{},c{},{}.5\n",
            i % 2,
            i % 7,
            i % 5,
            i % 3,
            i % 11
        ));
    }
    s
}

/// Checks the shape of a failure and returns its error line: exit code 2, no panic, exactly
/// one `error:` line, which is the last line of stderr and contains every `needle`.
#[track_caller]
fn failure(r: &Run, needles: &[&str]) -> String {
    assert_eq!(
        r.code,
        Some(2),
        "expected exit code 2\nstdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
    assert!(!r.stderr.contains("panicked"), "panic:\n{}", r.stderr);
    let errors: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{}", r.stderr);
    assert_eq!(
        r.stderr.lines().last(),
        Some(errors[0]),
        "the error is the last line:\n{}",
        r.stderr
    );
    for n in needles {
        assert!(errors[0].contains(n), "{:?} lacks {n:?}", errors[0]);
    }
    errors[0].to_string()
}

/// As [`failure`], and nothing else on stderr (errors found before any progress output).
#[track_caller]
fn only_error(r: &Run, needles: &[&str]) -> String {
    let e = failure(r, needles);
    assert_eq!(r.stderr.lines().count(), 1, "only the error:\n{}", r.stderr);
    e
}

struct Fixture {
    dir: TempDir,
    schema: String,
    good: String,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let dir = TempDir::new(tag);
        let schema = dir.write("schema.toml", SCHEMA).display().to_string();
        let good = dir.write("good.csv", &good_rows()).display().to_string();
        Fixture { dir, schema, good }
    }

    /// `fit` of a dnn on `train` (validated on the good file) into `out`.
    fn fit(&self, train: &str, schema: &str, out: &Path) -> Run {
        self.dir.run(&[
            "fit",
            "--train",
            train,
            "--val",
            &self.good,
            "--schema",
            schema,
            "--model",
            "dnn",
            "--epochs",
            "1",
            "--out",
            &out.display().to_string(),
        ])
    }

    /// `fit` of `model` on the good file (also the validation file) into `out`, plus `extra`
    /// flags.
    fn fit_good(&self, model: &str, out: &Path, extra: &[&str]) -> Run {
        let out = out.display().to_string();
        let mut args = vec![
            "fit",
            "--train",
            &self.good,
            "--val",
            &self.good,
            "--schema",
            &self.schema,
            "--model",
            model,
            "--out",
            &out,
        ];
        args.extend_from_slice(extra);
        self.dir.run(&args)
    }

    /// `predict` with the model directory `model` on `data` into `out`, plus `extra` flags.
    fn predict(&self, model: &str, data: &str, out: &Path, extra: &[&str]) -> Run {
        let out = out.display().to_string();
        let mut args = vec![
            "predict",
            "--model-dir",
            model,
            "--data",
            data,
            "--out",
            &out,
        ];
        args.extend_from_slice(extra);
        self.dir.run(&args)
    }

    /// Trains a small dnn on the good file into `<dir>/model` and returns its path.
    fn model(&self) -> String {
        let out = self.dir.path("model");
        self.fit(&self.good, &self.schema, &out).ok();
        out.display().to_string()
    }
}

/// One training file with a defect: `fit` fails naming it (and line / column), creates no
/// model directory, and leaves no temporary files in the cache.
#[track_caller]
fn bad_training_file(name: &str, text: &str, needles: &[&str]) {
    let f = Fixture::new("bad-train");
    let csv = f.dir.write(name, text);
    let out = f.dir.path("out");
    let r = f.fit(&csv.display().to_string(), &f.schema, &out);
    let mut all = vec![csv.to_str().unwrap()];
    all.extend_from_slice(needles);
    only_error(&r, &all);
    assert!(!out.exists(), "{name}: a model directory was created");
    let left = temp_leftovers(&f.dir.path("cache"));
    assert!(left.is_empty(), "{name}: temp files left: {left:?}");
}

#[test]
fn ragged_row() {
    bad_training_file(
        "ragged.csv",
        &format!("{HEADER}1,u1,i1,c1,2.5\n0,u2,i2,3.0\n"),
        &["ragged.csv:3:", "4 fields", "header has 5"],
    );
}

#[test]
fn non_numeric_cell() {
    bad_training_file(
        "nonnum.csv",
        &format!("{HEADER}1,u1,i1,c1,2.5\n0,u2,i2,c2,abc\n"),
        &["nonnum.csv:3:5:", "price", "expected a number", "abc"],
    );
}

#[test]
fn labels_other_than_zero_or_one() {
    for (i, bad) in ["2", "yes", "0.5", "-1"].iter().enumerate() {
        let line = 3 + i;
        let mut text = format!("{HEADER}1,u1,i1,c1,2.5\n");
        for _ in 0..i {
            text.push_str("0,u2,i2,c2,1.0\n");
        }
        text.push_str(&format!("{bad},u2,i2,c2,1.0\n"));
        bad_training_file(
            "labels.csv",
            &text,
            &[
                &format!("labels.csv:{line}:1:"),
                "click",
                "0 or 1",
                &format!("`{bad}`"),
            ],
        );
    }
}

#[test]
fn schema_columns_missing_from_the_csv() {
    bad_training_file(
        "missing.csv",
        "click,user,item,price\n1,u1,i1,2.5\n",
        &["missing.csv:1", "missing", "`city`"],
    );
}

#[test]
fn empty_file_and_header_only() {
    bad_training_file("empty.csv", "", &["empty.csv", "empty"]);
    bad_training_file("header.csv", HEADER, &["header.csv", "no data rows"]);
}

#[test]
fn nan_and_inf() {
    for (i, bad) in ["NaN", "inf", "-inf", "1e999"].iter().enumerate() {
        bad_training_file(
            &format!("nonfinite{i}.csv"),
            &format!("{HEADER}1,u1,i1,c1,{bad}\n"),
            &[&format!("nonfinite{i}.csv:2:5:"), "price", "finite"],
        );
    }
}

#[test]
fn schema_without_label_and_broken_schema() {
    let f = Fixture::new("schema");
    let out = f.dir.path("out");
    let nolabel = f
        .dir
        .write("nolabel.toml", "categorical = [\"user\", \"item\"]\n");
    let r = f.fit(&f.good, nolabel.to_str().unwrap(), &out);
    only_error(&r, &[nolabel.to_str().unwrap(), "label"]);
    let broken = f
        .dir
        .write("broken.toml", "label = \"click\"\ncategorical = [\n");
    let r = f.fit(&f.good, broken.to_str().unwrap(), &out);
    only_error(&r, &[broken.to_str().unwrap()]);
    let unknown = f.dir.write(
        "unknown.toml",
        "label = \"click\"\ncategorical = [\"user\"]\nlabels = 3\n",
    );
    let r = f.fit(&f.good, unknown.to_str().unwrap(), &out);
    only_error(&r, &[unknown.to_str().unwrap(), "labels"]);
    assert!(!out.exists());
}

#[test]
fn bad_validation_file_is_named() {
    let f = Fixture::new("bad-val");
    let val = f.dir.write("val.csv", &format!("{HEADER}1,u1,i1,c1,x\n"));
    let out = f.dir.path("out");
    let r = f.dir.run(&[
        "fit",
        "--train",
        &f.good,
        "--val",
        val.to_str().unwrap(),
        "--schema",
        &f.schema,
        "--model",
        "dnn",
        "--out",
        out.to_str().unwrap(),
    ]);
    only_error(
        &r,
        &[&format!("{}:2:5:", val.display()), "expected a number"],
    );
    assert!(!out.exists());
}

#[test]
fn bad_arguments() {
    let f = Fixture::new("args");
    let out = f.dir.path("out");
    let o = out.to_str().unwrap();
    let base = [
        "fit", "--train", &f.good, "--val", &f.good, "--schema", &f.schema,
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    let r = f.dir.run(&with(&["--model", "nope", "--out", o]));
    only_error(&r, &["unknown model `nope`", "hmdn-mmoe"]);
    let r = f.dir.run(&with(&["--out", o]));
    only_error(&r, &["--model"]);
    let r = f.dir.run(&with(&["--model", "dnn"]));
    only_error(&r, &["--out"]);
    for (flag, v, needle) in [
        ("--lr", "0", "learning rate must be positive"),
        ("--lr=-1", "", "learning rate must be positive"),
        ("--batch-size", "0", "--batch-size must be at least 1"),
        ("--epochs", "0", "--epochs must be at least 1"),
        (
            "--seed",
            "18446744073709551615",
            "--seed 18446744073709551615 is larger than",
        ),
        (
            "--batch-size",
            "9223372036854775808",
            "the largest integer a config file",
        ),
        (
            "--patience",
            "18446744073709551615",
            "--patience 18446744073709551615",
        ),
        (
            "--checkpoint-every",
            "9223372036854775808",
            "--checkpoint-every",
        ),
    ] {
        let mut args = with(&["--model", "dnn", "--out", o, flag]);
        if !v.is_empty() {
            args.push(v.to_string());
        }
        let r = f.dir.run(&args);
        only_error(&r, &[needle]);
    }
    let r = f.dir.run(&with(&[
        "--model",
        "dnn",
        "--out",
        o,
        "--threads",
        "100000",
    ]));
    only_error(&r, &["--threads 100000"]);
    let cfg = f.dir.write("cfg.toml", "[train]\nepochz = 3\n");
    let r = f
        .dir
        .run(&with(&["--config", cfg.to_str().unwrap(), "--out", o]));
    only_error(&r, &[cfg.to_str().unwrap(), "epochz"]);
    assert!(!out.exists());
    // Clap usage errors exit with 2 as well and print no panic.
    let r = f.dir.run(&["fit", "--epochs", "many"]);
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.starts_with("error:") && !r.stderr.contains("panicked"));
}

#[test]
fn model_directory_from_another_schema() {
    let f = Fixture::new("other-schema");
    let model = f.model();
    let weights = std::fs::read(Path::new(&model).join("weights.safetensors")).unwrap();
    let config = std::fs::read(Path::new(&model).join("config.toml")).unwrap();
    let aread = shared("ali_ccp_aread/val.csv");
    let aread_s = aread.to_str().unwrap();

    // eval / predict of a CSV of another data set: names the CSV and the missing columns.
    let r = f
        .dir
        .run(&["eval", "--model-dir", &model, "--data", aread_s]);
    only_error(&r, &[&format!("{aread_s}:1"), "missing", "`user`"]);
    let pred = f.dir.path("pred.csv");
    let r = f.predict(&model, aread_s, &pred, &[]);
    only_error(&r, &[aread_s, "missing"]);
    assert!(!pred.exists());
    assert!(temp_leftovers(&f.dir.0).is_empty());

    // fit --resume of this directory with another schema and data: refused, nothing changed.
    let r = f.dir.run(&[
        "fit",
        "--train",
        shared("ali_ccp_aread/train.csv").to_str().unwrap(),
        "--val",
        aread_s,
        "--schema",
        schema_fixture("ali_ccp_aread.toml").to_str().unwrap(),
        "--model",
        "dnn",
        "--epochs",
        "1",
        "--resume",
        &model,
    ]);
    failure(&r, &["config.toml", "different configuration"]);
    assert_eq!(
        std::fs::read(Path::new(&model).join("weights.safetensors")).unwrap(),
        weights
    );
    assert_eq!(
        std::fs::read(Path::new(&model).join("config.toml")).unwrap(),
        config
    );

    // fit --resume with the same configuration, schema and vocabulary but another validation
    // file (which does not enter the configuration text): refused.
    let more = f.dir.write(
        "more.csv",
        &format!("{}{}", good_rows(), &good_rows()[HEADER.len()..]),
    );
    let r = f.dir.run(&[
        "fit",
        "--train",
        &f.good,
        "--val",
        more.to_str().unwrap(),
        "--schema",
        &f.schema,
        "--model",
        "dnn",
        "--epochs",
        "1",
        "--resume",
        &model,
    ]);
    failure(
        &r,
        &["cannot resume", "number of training / validation rows"],
    );
    assert_eq!(
        std::fs::read(Path::new(&model).join("weights.safetensors")).unwrap(),
        weights
    );

    // A model directory whose files do not belong together (vocab.json of another run).
    let g = Fixture::new("other-vocab");
    // More distinct users, so its vocabulary has another size.
    let mut other_rows = String::from(HEADER);
    for i in 0..40 {
        other_rows.push_str(&format!("{},u{},i1,c1,1.0\n", i % 2, i % 20));
    }
    let other = g.dir.write("other.csv", &other_rows);
    let out2 = g.dir.path("model2");
    g.fit(other.to_str().unwrap(), &g.schema, &out2).ok();
    std::fs::copy(
        out2.join("vocab.json"),
        Path::new(&model).join("vocab.json"),
    )
    .unwrap();
    let r = f
        .dir
        .run(&["eval", "--model-dir", &model, "--data", &f.good]);
    failure(&r, &[&model]);

    // Not a model directory at all.
    let empty = f.dir.path("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let r = f.dir.run(&[
        "eval",
        "--model-dir",
        empty.to_str().unwrap(),
        "--data",
        &f.good,
    ]);
    only_error(&r, &[empty.to_str().unwrap(), "not a model directory"]);
}

#[test]
fn eval_needs_labels() {
    let f = Fixture::new("nolabels");
    let model = f.model();
    let unl = f
        .dir
        .write("unl.csv", "user,item,city,price\nu1,i1,c1,2.5\n");
    let r = f.dir.run(&[
        "eval",
        "--model-dir",
        &model,
        "--data",
        unl.to_str().unwrap(),
    ]);
    only_error(&r, &[unl.to_str().unwrap(), "click"]);
}

#[test]
fn unwritable_out() {
    let f = Fixture::new("unwritable");
    let model = f.model();
    let file = f.dir.write("a-file", "not a directory\n");
    let under_file = file.join("sub");

    // fit --out below a regular file.
    let r = f.fit(&f.good, &f.schema, &under_file);
    failure(&r, &[under_file.to_str().unwrap()]);

    // predict --out below a regular file, in a missing directory, or onto a directory.
    for out in [
        file.join("p.csv"),
        f.dir.path("no-such-dir/p.csv"),
        f.dir.0.clone(),
    ] {
        let r = f.predict(&model, &f.good, &out, &[]);
        only_error(&r, &[out.to_str().unwrap()]);
    }
    // gen --out in a missing directory.
    let out = f.dir.path("no-such-dir/g.csv");
    let r = f
        .dir
        .run(&["gen", "--rows", "10", "--out", out.to_str().unwrap()]);
    only_error(&r, &[out.to_str().unwrap()]);
    assert!(temp_leftovers(&f.dir.0).is_empty());
}

#[test]
fn predict_failure_keeps_the_previous_output() {
    let f = Fixture::new("predict-fail");
    let model = f.model();
    let out = f.dir.write("pred.csv", "previous output\n");
    // A defect on the last line of an otherwise valid file.
    let mut text = good_rows();
    for _ in 0..200 {
        text.push_str("1,u1,i1,c1,2.5\n");
    }
    text.push_str("1,u1,i1,c1\n");
    let bad = f.dir.write("bad.csv", &text);
    let line = text.lines().count();
    let r = f.predict(&model, bad.to_str().unwrap(), &out, &["--batch-size", "16"]);
    only_error(&r, &[&format!("{}:{line}:", bad.display())]);
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "previous output\n",
        "a failed predict replaced the previous output"
    );
    assert!(temp_leftovers(&f.dir.0).is_empty());
}

#[test]
fn diverging_run_names_the_step_and_keeps_the_last_good_state() {
    let f = Fixture::new("diverge");
    let (train, val, schema) = synth_split(&f.dir, 256, 500);
    let out = f.dir.path("model");
    // One batch per epoch; an absurd learning rate finishes an epoch or two with huge but
    // finite weights and then overflows.
    let r = f.dir.run(
        &[
            "fit",
            "--train",
            train.to_str().unwrap(),
            "--val",
            val.to_str().unwrap(),
            "--schema",
            schema.to_str().unwrap(),
            "--model",
            "dnn",
            "--batch-size",
            "256",
            "--lr",
            "1e5",
            "--epochs",
            "20",
            "--patience",
            "20",
            "--checkpoint-every",
            "1",
            "--quiet",
        ]
        .into_iter()
        .chain(["--out", out.to_str().unwrap()])
        .collect::<Vec<_>>(),
    );
    let e = only_error(&r, &["training diverged at step "]);
    let step: u64 = e["error: training diverged at step ".len()..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(step >= 2, "{e}");

    // The last good checkpoint is the step before, named in the message, complete and finite.
    let ckpt = out.join(format!("state/step-{:012}", step - 1));
    assert!(e.contains(ckpt.to_str().unwrap()), "{e}");
    assert_eq!(
        std::fs::read_to_string(out.join("state/LATEST"))
            .unwrap()
            .trim(),
        format!("step-{:012}", step - 1)
    );
    for file in ["weights.safetensors", "optimizer.safetensors"] {
        let t = hmdn_cpu::checkpoint::TensorFile::read(&ckpt.join(file)).unwrap();
        assert!(!t.tensors.is_empty());
        for (name, v) in &t.tensors {
            assert!(
                v.data.iter().all(|x| x.is_finite()),
                "{file}: {name} is not finite"
            );
        }
    }
    // Epochs finished before the divergence: their best weights are kept and usable.
    let epochs_done = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(epochs_done as u64, step - 1, "one step per epoch");
    let r = f.dir.run(&[
        "eval",
        "--model-dir",
        out.to_str().unwrap(),
        "--data",
        val.to_str().unwrap(),
        "--json",
    ]);
    let r = r.ok();
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["rows"], 500);
    assert!(temp_leftovers(&out).is_empty());
}

#[test]
fn predict_removes_the_temp_file_of_a_killed_predict_only() {
    // A killed `predict` leaves `.pred.csv.tmp-PID`. The next `predict` into the same file
    // removes it when that process is gone, but not a live process's (a concurrent run) nor
    // another output's. PID u32::MAX cannot exist (Linux caps PIDs at 2^22).
    let f = Fixture::new("predict-stale");
    let model = f.model();
    let dead = f.dir.write(".pred.csv.tmp-4294967295", "half a file\n");
    let live = f.dir.write(
        &format!(".pred.csv.tmp-{}", std::process::id()),
        "running\n",
    );
    let other = f.dir.write(".other.csv.tmp-4294967295", "not ours\n");
    let out = f.dir.path("pred.csv");
    f.predict(&model, &f.good, &out, &[]).ok();
    assert!(out.exists());
    if cfg!(target_os = "linux") {
        assert!(!dead.exists(), "the dead run's temp file is still there");
    }
    assert!(live.exists(), "a live process's temp file was removed");
    assert!(other.exists(), "another output's temp file was removed");
}

/// A batch size larger than the data set is one batch of all its rows, up to the largest a
/// config file holds (no allocation of the asked-for size, no overflow; `eval` and `predict`
/// take any `usize`): `fit`, `eval` and `predict` run, and `predict` gives the predictions of
/// the default batch size.
#[test]
fn batch_size_beyond_the_data() {
    let f = Fixture::new("huge-batch");
    let model = f.model();
    let base = f.dir.path("base.csv");
    f.predict(&model, &f.good, &base, &[]).ok();
    for bs in ["99999999999", &i64::MAX.to_string()] {
        let out = f.dir.path("out");
        f.fit_good("dnn", &out, &["--epochs", "2", "--batch-size", bs])
            .ok();
        let preds = f.dir.path("p.csv");
        f.predict(&model, &f.good, &preds, &["--batch-size", bs])
            .ok();
        assert_eq!(
            std::fs::read_to_string(&preds).unwrap(),
            std::fs::read_to_string(&base).unwrap(),
            "--batch-size {bs}"
        );
        f.dir
            .run(&[
                "eval",
                "--model-dir",
                &model,
                "--data",
                &f.good,
                "--batch-size",
                bs,
            ])
            .ok();
        let max = usize::MAX.to_string();
        f.predict(&model, &f.good, &preds, &["--batch-size", &max])
            .ok();
        assert_eq!(
            std::fs::read_to_string(&preds).unwrap(),
            std::fs::read_to_string(&base).unwrap(),
        );
        std::fs::remove_dir_all(&out).unwrap();
    }
}

/// `bench` with a batch that no machine can hold is refused before it allocates, with the
/// measured bytes per row and the largest batch that fits (`hmdn_cpu::memory`), instead of
/// aborting in an allocation.
/// (Linux only: the check reads the available memory from `/proc/meminfo`.)
#[cfg(target_os = "linux")]
#[test]
fn bench_batch_too_large_for_memory() {
    let dir = TempDir::new("bench-mem");
    for batch in ["99999999999", &usize::MAX.to_string()] {
        let r = dir.run(&[
            "bench",
            "--model",
            "hmdn-pepnet",
            "--batch",
            batch,
            "--threads",
            "1",
        ]);
        let e = only_error(
            &r,
            &["not enough memory", "KiB per row", "available", "or less"],
        );
        // The suggested batch is a number between the check's threshold and the asked one.
        let fits: usize = e
            .rsplit("--batch ")
            .next()
            .and_then(|t| t.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no suggested batch in {e:?}"));
        assert!(fits > hmdn_cpu::memory::CHECK_MIN_ROWS, "{e}");
    }
}

/// Endless input (`/dev/zero`: no line breaks, no end) as the data, the schema or the config
/// file: an error at once naming it, not a buffer that grows until memory runs out.
#[cfg(target_os = "linux")]
#[test]
fn endless_files() {
    let f = Fixture::new("endless");
    let out = f.dir.path("out");
    let r = f.fit("/dev/zero", &f.schema, &out);
    only_error(
        &r,
        &["/dev/zero:1", "longer than 16 MiB", "one CSV row per line"],
    );
    let r = f.fit(&f.good, "/dev/zero", &out);
    only_error(&r, &["/dev/zero", "larger than 16 MiB", "TOML"]);
    let o = out.to_str().unwrap();
    let r = f.dir.run(&["fit", "--config", "/dev/zero", "--out", o]);
    only_error(&r, &["/dev/zero", "larger than 16 MiB"]);
    let model = f.model();
    let r = f.predict(&model, "/dev/zero", &f.dir.path("p.csv"), &[]);
    only_error(&r, &["/dev/zero:1", "longer than 16 MiB"]);
    assert!(!out.exists());
}

/// Model settings too large for any machine: refused before anything is allocated, naming
/// the setting or the memory it would need (was: an allocation abort, or tens of GB
/// allocated and initialised before the out-of-memory killer).
#[test]
fn model_too_large_for_memory() {
    let f = Fixture::new("huge-model");
    let out = f.dir.path("out");
    let cases: [(&str, &[&str]); 4] = [
        (
            "[model]\nrq.depth = 99999999\n",
            &["rq.depth (D) must be at most 64"],
        ),
        (
            "[model]\nn_experts = 99999999\n",
            &["n_experts must be at most 1024"],
        ),
        (
            "[model]\nembed_dim = 99999999\n",
            &["not enough memory", "GiB", "embed_dim"],
        ),
        (
            "[model]\nhidden = [99999999]\n",
            &["not enough memory", "parameters"],
        ),
    ];
    for (i, (text, needles)) in cases.iter().enumerate() {
        let text = text.replace("[model]\nrq.", "[model.rq]\n");
        let cfg = f.dir.write(&format!("cfg{i}.toml"), &text);
        let r = f.fit_good("hmdn-mmoe", &out, &["--config", cfg.to_str().unwrap()]);
        failure(&r, needles);
        assert!(!out.exists(), "{text}: a model directory was created");
    }
}

/// `compare --seeds` beyond any sensible count: refused with the limit (was: an allocation
/// abort for the plan of runs, or a capacity-overflow panic).
#[test]
fn compare_with_absurd_seed_counts() {
    let f = Fixture::new("compare-seeds");
    let out = f.dir.path("out");
    for seeds in ["99999999999", &usize::MAX.to_string()] {
        let r = f.dir.run(&[
            "compare",
            "--train",
            &f.good,
            "--val",
            &f.good,
            "--schema",
            &f.schema,
            "--models",
            "dnn,hmdn-mmoe",
            "--seeds",
            seeds,
            "--sweep",
            "depth=1",
            "--out",
            out.to_str().unwrap(),
        ]);
        only_error(&r, &["--seeds must be at most 1000"]);
    }
    assert!(!out.exists());
}
