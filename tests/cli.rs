//! The command line end to end: `gen` → `fit` → `eval` → `predict` on synthetic data, the help
//! of every subcommand, `gradcheck` of every model, `info`, and the no-argument demo.

mod cli_common;
use clap::CommandFactory;
use cli_common::*;
use hmdn_cpu::metrics::EvalReport;
use std::path::Path;

const TRAIN_ROWS: usize = 4000;
const VAL_ROWS: usize = 1500;

/// Reads a predictions CSV: header fields and one row of probabilities per line.
fn read_predictions(path: &Path) -> (Vec<String>, Vec<Vec<f64>>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header = lines
        .next()
        .expect("a header line")
        .split(',')
        .map(str::to_string)
        .collect();
    let rows = lines
        .map(|l| l.split(',').map(|v| v.parse::<f64>().unwrap()).collect())
        .collect();
    (header, rows)
}

/// AUC by the Mann–Whitney rank statistic with tied scores given their average rank (written
/// here independently of the library's implementation).
fn auc(scores: &[f64], labels: &[bool]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].partial_cmp(&scores[b]).unwrap());
    let mut ranks = vec![0.0; scores.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            ranks[k] = avg;
        }
        i = j + 1;
    }
    let pos = labels.iter().filter(|&&l| l).count() as f64;
    let neg = labels.len() as f64 - pos;
    let rank_sum: f64 = ranks
        .iter()
        .zip(labels)
        .filter(|(_, &l)| l)
        .map(|(r, _)| r)
        .sum();
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

/// A CSV's header and data rows as fields.
fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header = lines
        .next()
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect();
    let rows = lines
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    (header, rows)
}

fn write_csv(path: &Path, header: &[String], rows: &[Vec<String>], sep: &str) {
    let mut s = header.join(sep);
    s.push('\n');
    for r in rows {
        s.push_str(&r.join(sep));
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

/// Runs `eval --json` and parses the report.
fn eval_json(dir: &TempDir, model: &Path, data: &Path, extra: &[&str]) -> EvalReport {
    let mut args = vec![
        "eval",
        "--model-dir",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    let r = dir.run(&args).ok();
    serde_json::from_str(r.stdout.trim()).expect("eval --json prints one JSON object")
}

/// Runs `predict` into `out` and returns the parsed predictions.
fn predict(
    dir: &TempDir,
    model: &Path,
    data: &Path,
    out: &Path,
    extra: &[&str],
) -> (Vec<String>, Vec<Vec<f64>>) {
    let mut args = vec![
        "predict",
        "--model-dir",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    dir.run(&args).ok();
    read_predictions(out)
}

#[track_caller]
fn assert_close_rows(a: &[Vec<f64>], b: &[Vec<f64>], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: row counts");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.len(), y.len());
        for (u, v) in x.iter().zip(y) {
            assert!((u - v).abs() <= tol, "{what}: row {i}: {u} vs {v}");
        }
    }
}

#[test]
fn gen_fit_eval_predict() {
    let dir = TempDir::new("e2e");
    let (train, val, schema) = (
        dir.path("train.csv"),
        dir.path("val.csv"),
        dir.path("schema.toml"),
    );
    let p = |p: &Path| p.display().to_string();

    // gen: a training file, a validation file of the same world, and the schema.
    let r = dir
        .run(&[
            "gen",
            "--rows",
            &TRAIN_ROWS.to_string(),
            "--out",
            &p(&train),
            "--val-rows",
            &VAL_ROWS.to_string(),
            "--val-out",
            &p(&val),
            "--schema-out",
            &p(&schema),
        ])
        .ok();
    assert!(r.stdout.contains(&p(&val)), "{}", r.stdout);
    assert_eq!(data_lines(&train).len(), TRAIN_ROWS);
    assert_eq!(data_lines(&val).len(), VAL_ROWS);
    // The validation rows continue the training file's stream: the same generator with more
    // rows starts with exactly the training rows, followed by the validation rows.
    let both = dir.path("both.csv");
    dir.run(&[
        "gen",
        "--rows",
        &(TRAIN_ROWS + VAL_ROWS).to_string(),
        "--out",
        &p(&both),
    ])
    .ok();
    let mut expected = data_lines(&train);
    expected.extend(data_lines(&val));
    assert!(
        data_lines(&both) == expected,
        "gen --val-out is not the stream's continuation"
    );

    // fit: hmdn-mmoe, small.
    let model = dir.path("model");
    let r = dir
        .run(&[
            "fit",
            "--train",
            &p(&train),
            "--val",
            &p(&val),
            "--schema",
            &p(&schema),
            "--model",
            "hmdn-mmoe",
            "--out",
            &p(&model),
            "--epochs",
            "3",
            "--batch-size",
            "128",
            "--lr",
            "0.003",
        ])
        .ok();
    assert!(
        r.stdout.contains("hmdn-mmoe: best validation AUC"),
        "{}",
        r.stdout
    );
    for f in [
        "weights.safetensors",
        "config.toml",
        "schema.toml",
        "vocab.json",
        "metrics.jsonl",
    ] {
        assert!(model.join(f).is_file(), "{f} missing");
    }
    assert!(temp_leftovers(&model).is_empty());

    // eval on the validation file reports exactly the metrics fit logged for its best epoch.
    let rep = eval_json(&dir, &model, &val, &[]);
    assert_eq!(rep.rows, VAL_ROWS);
    let metrics = std::fs::read_to_string(model.join("metrics.jsonl")).unwrap();
    let best = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .rfind(|v| v["best"] == true)
        .expect("a best epoch");
    let logged: EvalReport = serde_json::from_value(best["val"].clone()).unwrap();
    assert!(rep == logged, "eval differs from fit's validation report");
    let task = &rep.tasks[0];
    assert_eq!(task.task, "label");
    let model_auc = task.auc.unwrap();
    assert!(
        model_auc > 0.6,
        "the model learned nothing: AUC {model_auc}"
    );
    assert!(task.bayes_auc.is_some(), "synthetic data carries p_true");
    assert!(
        !task.cells.is_empty(),
        "per-cell AUCs from the schema's partition"
    );

    // The text report prints the same numbers.
    let r = dir
        .run(&["eval", "--model-dir", &p(&model), "--data", &p(&val)])
        .ok();
    assert!(
        r.stdout.contains(&format!("rows: {VAL_ROWS}")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&format!(
            "task label: AUC {model_auc:.4}  logloss {:.5}",
            task.logloss
        )),
        "{}",
        r.stdout
    );

    // Any CSV with the labels gives the same metrics: columns reordered, other batch sizes
    // and thread counts.
    let (header, rows) = read_csv(&val);
    let mut order: Vec<usize> = (0..header.len()).collect();
    order.reverse();
    let permute = |r: &Vec<String>| order.iter().map(|&i| r[i].clone()).collect::<Vec<_>>();
    let reordered = dir.path("val-reordered.csv");
    write_csv(
        &reordered,
        &permute(&header),
        &rows.iter().map(permute).collect::<Vec<_>>(),
        ",",
    );
    assert!(
        eval_json(&dir, &model, &reordered, &[]) == rep,
        "reordered columns"
    );
    assert!(
        eval_json(&dir, &model, &val, &["--batch-size", "7", "--threads", "1"]) == rep,
        "batch size 7, one thread"
    );

    // predict: a header of task names, one probability per input row, in input order.
    let out = dir.path("pred.csv");
    let (head, preds) = predict(&dir, &model, &val, &out, &[]);
    assert_eq!(head, vec!["label".to_string()]);
    assert_eq!(preds.len(), VAL_ROWS);
    assert!(preds
        .iter()
        .all(|r| r.len() == 1 && r[0] > 0.0 && r[0] < 1.0));
    // Row i's prediction belongs to row i: the AUC of the written probabilities against the
    // file's labels is eval's AUC (up to the 6 printed decimals).
    let li = header.iter().position(|h| h == "label").unwrap();
    let labels: Vec<bool> = rows.iter().map(|r| r[li] == "1").collect();
    let scores: Vec<f64> = preds.iter().map(|r| r[0]).collect();
    let a = auc(&scores, &labels);
    assert!(
        (a - model_auc).abs() < 1e-3,
        "predict AUC {a} vs eval {model_auc}"
    );
    // The mean prediction is eval's.
    let mean = scores.iter().sum::<f64>() / scores.len() as f64;
    assert!((mean - task.mean_pred).abs() < 1e-5);

    // Reversed rows give reversed predictions; batch size and threads change nothing.
    let reversed = dir.path("val-reversed.csv");
    let rev_rows: Vec<Vec<String>> = rows.iter().rev().cloned().collect();
    write_csv(&reversed, &header, &rev_rows, ",");
    let (_, rev) = predict(&dir, &model, &reversed, &dir.path("rev.csv"), &[]);
    let unreversed: Vec<Vec<f64>> = rev.into_iter().rev().collect();
    assert_close_rows(&unreversed, &preds, 1e-6, "reversed input");
    let (_, small) = predict(
        &dir,
        &model,
        &val,
        &dir.path("small.csv"),
        &["--batch-size", "7", "--threads", "1"],
    );
    assert_close_rows(&small, &preds, 0.0, "batch size 7");

    // Without label columns: the same predictions.
    let keep: Vec<usize> = (0..header.len())
        .filter(|&i| header[i] != "label")
        .collect();
    let strip = |r: &Vec<String>| keep.iter().map(|&i| r[i].clone()).collect::<Vec<_>>();
    let unlabelled = dir.path("unlabelled.csv");
    write_csv(
        &unlabelled,
        &strip(&header),
        &rows.iter().map(strip).collect::<Vec<_>>(),
        ",",
    );
    let (_, unl) = predict(&dir, &model, &unlabelled, &dir.path("unl.csv"), &[]);
    assert_close_rows(&unl, &preds, 0.0, "no label column");

    // Unseen categories map to index 0: two different never-seen values give the same
    // prediction, which in general differs from the prediction with the real value.
    let fields = ["user_id", "item_id", "item_cat"];
    let replace = |value: &str| -> Vec<Vec<String>> {
        rows.iter()
            .map(|r| {
                let mut r = r.clone();
                for f in fields {
                    let i = header.iter().position(|h| h == f).unwrap();
                    r[i] = format!("{value}-{f}");
                }
                r
            })
            .collect()
    };
    let (ua, ub) = (dir.path("unseen-a.csv"), dir.path("unseen-b.csv"));
    write_csv(&ua, &header, &replace("never-seen"), ",");
    write_csv(&ub, &header, &replace("also-unknown"), ",");
    let (_, pa) = predict(&dir, &model, &ua, &dir.path("pa.csv"), &[]);
    let (_, pb) = predict(&dir, &model, &ub, &dir.path("pb.csv"), &[]);
    assert_close_rows(&pa, &pb, 0.0, "two unseen values");
    let changed = pa.iter().zip(&preds).filter(|(x, y)| x[0] != y[0]).count();
    assert!(
        changed > VAL_ROWS / 2,
        "unseen ids changed only {changed} predictions"
    );
    assert!(temp_leftovers(&dir.0).is_empty());
}

#[test]
fn help_of_every_subcommand_lists_its_options() {
    let dir = TempDir::new("help");
    let r = dir.run(&["--help"]).ok();
    let cli = hmdn_cpu::cli::Cli::command();
    for sub in cli.get_subcommands() {
        let name = sub.get_name();
        assert!(r.stdout.contains(name), "top-level help lacks {name}");
        let h = dir.run(&[name, "--help"]).ok();
        for arg in sub.get_arguments() {
            if let Some(long) = arg.get_long() {
                assert!(
                    h.stdout.contains(&format!("--{long}")),
                    "`{name} --help` lacks --{long}:\n{}",
                    h.stdout
                );
            }
        }
        // Defaults are stated once.
        for line in h.stdout.lines() {
            assert!(
                line.matches("[default:").count() <= 1,
                "`{name} --help` repeats a default: {line}"
            );
        }
    }
    // The defaults `fit --help` states are the library's.
    let h = dir.run(&["fit", "--help"]).ok();
    let d = hmdn_cpu::train::RunConfig::default();
    for (flag, value) in [
        ("--epochs", d.train.epochs.to_string()),
        ("--batch-size", d.train.batch_size.to_string()),
        ("--lr", d.optim.lr.to_string()),
        ("--seed", d.train.seed.to_string()),
        ("--patience", d.train.patience.to_string()),
        ("--checkpoint-every", d.train.checkpoint_every.to_string()),
    ] {
        // The option's block: its line and the description lines up to the next option.
        let lines: Vec<&str> = h.stdout.lines().collect();
        let start = lines
            .iter()
            .position(|l| l.trim_start().starts_with(flag))
            .unwrap_or_else(|| panic!("no {flag} in fit --help"));
        let block: String = lines[start..]
            .iter()
            .enumerate()
            .take_while(|(i, l)| *i == 0 || !l.trim_start().starts_with('-'))
            .map(|(_, l)| *l)
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            block.contains(&format!("[default: {value}")),
            "{flag}: help says {block:?}, the library default is {value}"
        );
    }
    dir.run(&["--version"]).ok();
}

#[test]
fn gradcheck_every_model_in_f64() {
    let dir = TempDir::new("gradcheck");
    for kind in hmdn_cpu::config::ModelKind::ALL {
        let r = dir.run(&["gradcheck", "--model", kind.name()]).ok();
        let cfg = hmdn_cpu::gradcheck::tiny_config(kind);
        let m = hmdn_cpu::model::Model::<f64>::new(&cfg, 1).unwrap();
        let names: Vec<&str> = m.params.specs.iter().map(|s| s.name.as_str()).collect();
        // A header, one row per tensor, and the verdict.
        let lines: Vec<&str> = r.stdout.lines().collect();
        assert_eq!(lines.len(), names.len() + 2, "{kind}:\n{}", r.stdout);
        for (line, name) in lines[1..=names.len()].iter().zip(&names) {
            assert_eq!(line.split_whitespace().next(), Some(*name), "{kind}");
        }
        assert!(
            lines.last().unwrap().ends_with("PASS"),
            "{kind}: {}",
            r.stdout
        );
    }
}

#[test]
fn info_works() {
    let dir = TempDir::new("info");
    let r = dir.run(&["info"]).ok();
    assert!(r.stdout.contains(env!("CARGO_PKG_VERSION")));
    assert!(r.stdout.contains("threads:"));
    // The binary installs the cache-line-aligning allocator (its GEMMs depend on it).
    assert!(
        r.stdout.contains("large buffers: 64-byte aligned"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains(&dir.path("cache").display().to_string()));
}

#[test]
fn no_arguments_runs_the_demo() {
    let dir = TempDir::new("demo");
    let t0 = std::time::Instant::now();
    // The demo writes under the system temp dir; point it at ours.
    let r = Run::from(dir.cmd::<&str>(&[]).env("TMPDIR", &dir.0).output().unwrap()).ok();
    eprintln!("demo: {:.1} s", t0.elapsed().as_secs_f64());
    let auc_of = |name: &str| -> f64 {
        let line = r
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} row:\n{}", r.stdout));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let bayes = auc_of("Bayes");
    for m in ["mmoe", "hmdn-mmoe"] {
        let a = auc_of(m);
        assert!(a > 0.6 && a <= bayes + 0.01, "{m}: AUC {a}, Bayes {bayes}");
    }
    assert!(dir
        .path("hmdn-cpu-demo/hmdn-mmoe/weights.safetensors")
        .is_file());
}
