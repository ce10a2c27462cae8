//! The real data sets in ../shared/data, read end to end with the preset schemas.

mod data_common;
use data_common::*;
use hmdn_cpu::data::{BatchBuffers, Batcher, CacheStatus, Dataset, LoadOptions};
use hmdn_cpu::metrics::evaluate;

/// Data lines of a CSV (non-empty lines minus the header), counted independently of the reader.
fn data_lines(path: &std::path::Path, header: bool) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().filter(|l| !l.is_empty()).count() - usize::from(header)
}

#[test]
fn movielens_end_to_end() {
    let dir = TempDir::new("ml");
    let opts = opts_in(&dir);
    let schema = preset("movielens_100k_ctr.toml");
    let train_csv = shared("movielens_100k_ctr/train.csv");
    let val_csv = shared("movielens_100k_ctr/val.csv");
    let (train, vocab) = Dataset::open_train(&train_csv, &schema, &opts).unwrap();
    let val = Dataset::open(&val_csv, &schema, &vocab, &opts).unwrap();
    assert_eq!(train.rows(), 80_000);
    assert_eq!(val.rows(), 10_000);
    assert_eq!(train.rows(), data_lines(&train_csv, true));
    assert_eq!(train.n_categorical(), 10);
    assert_eq!(train.n_numeric(), 0);
    assert_eq!(train.n_tasks(), 1);
    assert_eq!(train.delimiter(), ',');
    // 943 users exist in MovieLens-100K; the training split holds at most that many.
    assert!(
        train.n_users() <= 943 && train.n_users() > 700,
        "{}",
        train.n_users()
    );
    let gender = &vocab.categorical()[2];
    assert_eq!(gender.name(), "gender");
    // M has more ratings than F, so it gets index 1; index 0 stays "unknown".
    assert_eq!(gender.size(), 3);
    assert_eq!(
        (gender.index("M"), gender.index("F"), gender.index("X")),
        (1, 2, 0)
    );
    // Positive rate of the training split, recomputed from the text.
    let text = std::fs::read_to_string(&train_csv).unwrap();
    let pos_text = text.lines().skip(1).filter(|l| l.starts_with("1,")).count();
    let pos_ds = train.label(0).iter().filter(|&y| y == 1.0).count();
    assert_eq!(pos_ds, pos_text);
    // Domain = occupation (last distribution field); cells = gender x age.
    assert_eq!(train.domain_field_index(), Some(4));
    assert!(train
        .partition_cells()
        .iter()
        .any(|c| c == "gender=M|age=25-34"));
    // Unseen validation values map to 0 and every index is within its table.
    for (f, c) in vocab.categorical().iter().enumerate() {
        assert!(val.cat(f).iter().all(|i| (i as usize) < c.size()));
    }
    // A constant predictor has AUC 0.5 in every cell and logloss = binary entropy of the CTR.
    let ctr = train.label(0).iter().sum::<f32>() / train.rows() as f32;
    let report = evaluate(&val, &vec![ctr; val.rows()]);
    let t = &report.tasks[0];
    assert_eq!(t.auc, Some(0.5));
    assert!(t
        .cells
        .iter()
        .all(|c| c.auc.is_none() || c.auc == Some(0.5)));
    assert_eq!(t.cells.iter().map(|c| c.rows).sum::<usize>(), 10_000);
    // Second open: cache reused.
    let (train2, vocab2) = Dataset::open_train(&train_csv, &schema, &opts).unwrap();
    assert_eq!(*train2.cache_status(), CacheStatus::Reused);
    assert_eq!(vocab2.fingerprint(), vocab.fingerprint());
    // Batches cover the data set.
    let mut b = Batcher::shuffled(train.rows(), 4096, 1);
    let mut buf = BatchBuffers::new(4096, &train);
    let mut seen = 0;
    while b.next_batch(&train, &mut buf) {
        seen += buf.batch().rows;
    }
    assert_eq!(seen, 80_000);
}

#[test]
fn ali_ccp_aread_end_to_end() {
    let dir = TempDir::new("aread");
    let opts = opts_in(&dir);
    let schema = preset("ali_ccp_aread.toml");
    let (train, vocab) =
        Dataset::open_train(shared("ali_ccp_aread/train.csv"), &schema, &opts).unwrap();
    let val = Dataset::open(shared("ali_ccp_aread/val.csv"), &schema, &vocab, &opts).unwrap();
    let test = Dataset::open(shared("ali_ccp_aread/test.csv"), &schema, &vocab, &opts).unwrap();
    assert_eq!((train.rows(), val.rows(), test.rows()), (1_562, 816, 813));
    assert_eq!(train.n_categorical(), 31);
    // PROVENANCE: 124 has 3 values, 301 has 3 (1, 2, 3); domain 301 is the last distribution field.
    let idx = |n: &str| schema.categorical.iter().position(|c| c == n).unwrap();
    assert_eq!(train.domain_field_index(), Some(idx("301")));
    assert!(vocab.categorical()[idx("124")].size() <= 4);
    // Partition cells are gender x city x scenario; the file holds 30 non-empty cells overall.
    let cells: usize = [&train, &val, &test]
        .iter()
        .flat_map(|d| d.partition_cells().iter().cloned())
        .collect::<std::collections::HashSet<_>>()
        .len();
    assert_eq!(cells, 30);
    // Click rate of train from PROVENANCE: 4.42% (69 of 1,562).
    let pos = train.label(0).iter().filter(|&y| y == 1.0).count();
    assert_eq!(pos, 69);
}

#[test]
fn ali_ccp_processed_layouts_parse() {
    let dir = TempDir::new("rechub");
    let opts = opts_in(&dir);
    let schema = preset("ali_ccp_torch_rechub.toml");
    let (train, vocab) = Dataset::open_train(
        shared("ali_ccp_torch_rechub/ali_ccp_train_sample.csv"),
        &schema,
        &opts,
    )
    .unwrap();
    assert_eq!(
        (
            train.rows(),
            train.n_categorical(),
            train.n_numeric(),
            train.n_tasks()
        ),
        (100, 23, 8, 2)
    );
    let val = Dataset::open(
        shared("ali_ccp_torch_rechub/ali_ccp_val_sample.csv"),
        &schema,
        &vocab,
        &opts,
    )
    .unwrap();
    assert_eq!(val.rows(), 50);
    // Standardised numerics have mean 0 on the training split.
    for n in 0..8 {
        let m = train.num(n).iter().map(f64::from).sum::<f64>() / 100.0;
        assert!(m.abs() < 1e-5, "{n}: {m}");
    }

    let mut aitm = preset("ali_ccp_aitm.toml");
    let (tr, vocab) = Dataset::open_train(
        shared("ali_ccp_aitm_format/ctr_cvr_train_sample.csv"),
        &aitm,
        &opts,
    )
    .unwrap();
    assert_eq!((tr.rows(), tr.n_categorical(), tr.n_tasks()), (48, 18, 2));
    // The header-less test sample, read with the column list from the preset's comment.
    aitm.header = false;
    aitm.columns = [
        "click", "purchase", "101", "121", "122", "124", "125", "126", "127", "128", "129", "205",
        "206", "207", "216", "508", "509", "702", "853", "301",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    aitm.validate(std::path::Path::new("aitm")).unwrap();
    let te = Dataset::open(
        shared("ali_ccp_aitm_format/ctr_cvr_test_sample_noheader.csv"),
        &aitm,
        &vocab,
        &LoadOptions {
            cache_dir: Some(dir.path("c2")),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(te.rows(), 50);
    // PROVENANCE: 3 clicks of 50 in the test sample.
    assert_eq!(te.label(0).iter().filter(|&y| y == 1.0).count(), 3);
}
