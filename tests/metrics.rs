//! Metrics on cases small enough to work out by hand (expected values in the comments).

mod data_common;
use data_common::*;
use hmdn_cpu::data::Dataset;
use hmdn_cpu::metrics::*;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn auc_by_hand() {
    // Positives {0.35, 0.8}, negatives {0.1, 0.4}: 3 of 4 pairs ordered.
    assert_eq!(
        auc(&[0.1, 0.4, 0.35, 0.8], &[0.0, 0.0, 1.0, 1.0]),
        Some(0.75)
    );
    // A tie counts half.
    assert_eq!(auc(&[0.5, 0.5], &[0.0, 1.0]), Some(0.5));
    assert_eq!(auc(&[0.2, 0.5, 0.5], &[0.0, 0.0, 1.0]), Some(0.75));
    assert_eq!(auc(&[0.1, 0.2], &[1.0, 1.0]), None);
}

#[test]
fn logloss_by_hand() {
    let want = -(0.8f64.ln() + 0.7f64.ln()) / 2.0;
    assert!((logloss(&[0.8, 0.3], &[1.0, 0.0]) - want).abs() < 1e-7);
    // Clamped: a certain mistake costs -ln(1e-7).
    assert!((logloss(&[0.0], &[1.0]) - (-(1e-7f64).ln())).abs() < 1e-9);
    assert!((logloss(&[1.0], &[0.0]) - (-(1e-7f64).ln())).abs() < 1e-6);
    assert_eq!(logloss(&[], &[]), 0.0);
}

#[test]
fn gauc_by_hand() {
    // user 0: [0.9 (1), 0.1 (0)] -> 1, 2 rows; user 1: [0.2 (1), 0.6 (0), 0.4 (0)] -> 0, 3 rows;
    // user 2: positives only -> left out. gAUC = (2·1 + 3·0) / 5.
    let s = [0.9, 0.2, 0.1, 0.6, 0.4, 0.7];
    let y = [1.0, 1.0, 0.0, 0.0, 0.0, 1.0];
    let g = [0, 1, 0, 1, 1, 2];
    let (v, users, rows) = gauc(&s, &y, &g, 3).unwrap();
    assert!(close(v, 0.4));
    assert_eq!((users, rows), (2, 5));
    assert_eq!(gauc(&[0.1, 0.2], &[1.0, 0.0], &[0, 1], 2), None);
}

#[test]
fn cells_by_hand() {
    let names = vec!["k=b".to_string(), "k=a".to_string()];
    let m = cell_metrics(
        &[0.9, 0.1, 0.3, 0.2],
        &[1.0, 0.0, 1.0, 1.0],
        &[0, 0, 1, 1],
        &names,
    );
    assert_eq!(
        m,
        vec![
            CellMetrics {
                cell: "k=a".into(),
                rows: 2,
                positives: 2,
                auc: None
            },
            CellMetrics {
                cell: "k=b".into(),
                rows: 2,
                positives: 1,
                auc: Some(1.0)
            },
        ]
    );
}

#[test]
fn evaluate_a_dataset() {
    let dir = TempDir::new("eval");
    let s = schema(
        "label = \"y\"\ncategorical = [\"user\", \"city\"]\nnumeric = [\"price\"]\ndistribution = [\"city\"]\nuser = \"user\"\n",
    );
    let csv = dir.write(
        "d.csv",
        "y,p_true,user,city,price\n1,0.9,a,x,1\n0,0.2,a,x,2\n1,0.6,b,y,3\n0,0.7,b,y,4\n0,0.1,c,x,5\n",
    );
    let (ds, _) = Dataset::open_train(&csv, &s, &opts_in(&dir)).unwrap();
    let preds = [0.8f32, 0.3, 0.4, 0.6, 0.5];
    let r = evaluate(&ds, &preds);
    assert_eq!((r.rows, r.partition.clone()), (5, vec!["city".to_string()]));
    let t = &r.tasks[0];
    assert_eq!(t.task, "y");
    // Positives {0.8, 0.4} vs negatives {0.3, 0.6, 0.5}: 4 of 6 pairs.
    assert!(close(t.auc.unwrap(), 4.0 / 6.0));
    // Users a -> 1, b -> 0 (2 rows each), c has one class.
    assert!(close(t.gauc.unwrap(), 0.5));
    assert_eq!(t.gauc_users, 2);
    // p_true: positives {0.9, 0.6} vs negatives {0.2, 0.7, 0.1}: 5 of 6.
    assert!(close(t.bayes_auc.unwrap(), 5.0 / 6.0));
    // -mean(ln p) over positives and ln(1 - p) over negatives, with the f32 predictions.
    let p = |i: usize| f64::from(preds[i]);
    let ll =
        -(p(0).ln() + (1.0 - p(1)).ln() + p(2).ln() + (1.0 - p(3)).ln() + (1.0 - p(4)).ln()) / 5.0;
    assert!((t.logloss - ll).abs() < 1e-9);
    assert!(close(t.ctr, 0.4));
    assert!((t.mean_pred - 0.52).abs() < 1e-7);
    // city=x: [0.8 (1), 0.3, 0.5] -> 1; city=y: [0.4 (1), 0.6 (0)] -> 0.
    assert_eq!(t.cells.len(), 2);
    assert_eq!(
        (t.cells[0].cell.as_str(), t.cells[0].rows, t.cells[0].auc),
        ("city=x", 3, Some(1.0))
    );
    assert_eq!(
        (
            t.cells[1].cell.as_str(),
            t.cells[1].positives,
            t.cells[1].auc
        ),
        ("city=y", 1, Some(0.0))
    );
    // The report survives JSON.
    let json = serde_json::to_string(&r).unwrap();
    let back: EvalReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back, r);
}
