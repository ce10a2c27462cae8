//! Real data end to end (`fit` → `eval` → `predict`) on the stored Ali-CCP sample (AREAD
//! split) and MovieLens-100K as CTR, with the schemas in `fixtures/schemas/`. The data is read
//! from `../shared/data` and never written to (caches go to a temp dir).
//!
//! MovieLens is split by time (validation = later ratings), which makes it hard; `hmdn-mmoe`
//! with the default settings must still reach a validation AUC of 0.69.

mod cli_common;
use cli_common::*;
use hmdn_cpu::metrics::EvalReport;
use std::path::Path;

/// Trains `model` with default settings (plus `extra`) and returns the `fit` output.
fn fit(dir: &TempDir, train: &Path, val: &Path, schema: &Path, model: &str, out: &Path) -> Run {
    let p = |p: &Path| p.display().to_string();
    dir.run(&[
        "fit".to_string(),
        "--train".into(),
        p(train),
        "--val".into(),
        p(val),
        "--schema".into(),
        p(schema),
        "--model".into(),
        model.into(),
        "--out".into(),
        p(out),
    ])
    .ok()
}

fn eval(dir: &TempDir, model: &Path, data: &Path) -> EvalReport {
    let r = dir
        .run(&[
            "eval",
            "--model-dir",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--json",
        ])
        .ok();
    serde_json::from_str(r.stdout.trim()).unwrap()
}

/// Runs `predict` and checks its shape: a header of task names and one probability in (0, 1)
/// per task for each input row. Returns the first task's probabilities.
fn predict(dir: &TempDir, model: &Path, data: &Path, tasks: &[&str]) -> Vec<f64> {
    let out = dir.path("pred.csv");
    dir.run(&[
        "predict",
        "--model-dir",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
    .ok();
    let text = std::fs::read_to_string(&out).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next().unwrap(), tasks.join(","));
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(
        rows.len(),
        data_lines(data).len(),
        "one prediction row per input row"
    );
    for r in &rows {
        assert_eq!(r.len(), tasks.len());
        assert!(r.iter().all(|&p| p > 0.0 && p < 1.0), "{r:?}");
    }
    rows.iter().map(|r| r[0]).collect()
}

/// The report logged by `fit` for its best epoch (the weights it kept).
fn best_logged(model: &Path) -> EvalReport {
    let text = std::fs::read_to_string(model.join("metrics.jsonl")).unwrap();
    let best = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .rfind(|v| v["best"] == true)
        .expect("a best epoch");
    serde_json::from_value(best["val"].clone()).unwrap()
}

#[test]
fn movielens_hmdn_mmoe_defaults() {
    let dir = TempDir::new("movielens");
    let (train, val) = (
        shared("movielens_100k_ctr/train.csv"),
        shared("movielens_100k_ctr/val.csv"),
    );
    let schema = schema_fixture("movielens_100k_ctr.toml");
    let model = dir.path("model");
    let t0 = std::time::Instant::now();
    let r = fit(&dir, &train, &val, &schema, "hmdn-mmoe", &model);
    eprintln!(
        "movielens fit: {:.1} s\n{}",
        t0.elapsed().as_secs_f64(),
        r.stdout
    );

    let rep = eval(&dir, &model, &val);
    assert_eq!(rep.rows, data_lines(&val).len());
    assert!(
        rep == best_logged(&model),
        "eval differs from fit's best epoch"
    );
    let auc = rep.tasks[0].auc.unwrap();
    assert!(
        auc >= 0.69,
        "hmdn-mmoe on MovieLens: validation AUC {auc:.4} < 0.69"
    );
    assert!(
        rep.tasks[0].gauc.is_some(),
        "gAUC over the schema's user field"
    );
    assert!(!rep.tasks[0].cells.is_empty(), "gender × age cells");

    let preds = predict(&dir, &model, &val, &["label"]);
    let mean = preds.iter().sum::<f64>() / preds.len() as f64;
    assert!((mean - rep.tasks[0].mean_pred).abs() < 1e-5);
    assert!(temp_leftovers(&dir.0).is_empty());
}

#[test]
fn ali_ccp_aread_end_to_end() {
    let dir = TempDir::new("aread");
    let (train, val, test) = (
        shared("ali_ccp_aread/train.csv"),
        shared("ali_ccp_aread/val.csv"),
        shared("ali_ccp_aread/test.csv"),
    );
    let schema = schema_fixture("ali_ccp_aread.toml");
    for kind in ["hmdn-mmoe", "shared-bottom"] {
        let model = dir.path(kind);
        // A 1,562-row sample: small batches so that an epoch has more than two steps.
        let r = dir
            .run(&[
                "fit",
                "--train",
                train.to_str().unwrap(),
                "--val",
                val.to_str().unwrap(),
                "--schema",
                schema.to_str().unwrap(),
                "--model",
                kind,
                "--out",
                model.to_str().unwrap(),
                "--batch-size",
                "128",
                "--epochs",
                "3",
            ])
            .ok();
        assert!(r.stdout.contains("best validation AUC"), "{}", r.stdout);
        let rep = eval(&dir, &model, &val);
        assert_eq!(rep.rows, data_lines(&val).len());
        assert!(rep == best_logged(&model), "{kind}: eval differs from fit");
        assert_eq!(rep.tasks.len(), 1, "`purchase` is ignored by the schema");
        // The held-out test split (never seen by fit) through eval and predict.
        let rt = eval(&dir, &model, &test);
        assert_eq!(rt.rows, data_lines(&test).len());
        let auc = rt.tasks[0].auc.unwrap();
        assert!((0.0..=1.0).contains(&auc));
        let preds = predict(&dir, &model, &test, &["click"]);
        let mean = preds.iter().sum::<f64>() / preds.len() as f64;
        assert!((mean - rt.tasks[0].mean_pred).abs() < 1e-5, "{kind}");
    }
    assert!(temp_leftovers(&dir.0).is_empty());
}
