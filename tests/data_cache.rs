//! Vocabulary, standardisation, hashing, delimiters and the columnar cache's reuse and
//! invalidation, on small files whose expected encodings are worked out by hand.

mod data_common;
use data_common::*;
use hmdn_cpu::data::hash::fnv1a64;
use hmdn_cpu::data::{BatchBuffers, Batcher, CacheStatus, Dataset, LoadOptions, Vocab};

const SCHEMA: &str = r#"
label = "y"
categorical = ["user", "city"]
numeric = ["price"]
distribution = ["city"]
user = "user"
"#;

// user counts: a 3, b 2, c 1; city counts: x 3, y 2, "" 1. price 1..6.
const TRAIN: &str = "y,user,city,price\n1,a,x,1\n0,b,y,2\n1,a,x,3\n0,c,,4\n0,b,y,5\n1,a,x,6\n";

/// Every stored column: (categorical, numeric, labels, partition cells).
type Columns = (Vec<Vec<u32>>, Vec<Vec<f32>>, Vec<Vec<f32>>, Vec<u32>);

fn all_columns(ds: &Dataset) -> Columns {
    (
        (0..ds.n_categorical())
            .map(|f| ds.cat(f).to_vec())
            .collect(),
        (0..ds.n_numeric()).map(|n| ds.num(n).to_vec()).collect(),
        (0..ds.n_tasks()).map(|t| ds.label(t).to_vec()).collect(),
        ds.partition().to_vec(),
    )
}

#[test]
fn vocabulary_min_count_order_and_unseen() {
    let dir = TempDir::new("vocab");
    let csv = dir.write("train.csv", TRAIN);
    let (ds, vocab) = Dataset::open_train(&csv, &schema(SCHEMA), &opts_in(&dir)).unwrap();
    let user = &vocab.categorical()[0];
    // min_count 2 (default): a (3) -> 1, b (2) -> 2, c (1) -> 0. Table size 3.
    assert_eq!(user.size(), 3);
    assert_eq!(
        (user.index("a"), user.index("b"), user.index("c")),
        (1, 2, 0)
    );
    assert_eq!((user.index("zzz"), user.index("")), (0, 0));
    assert_eq!(
        (user.value(1), user.value(2), user.value(0)),
        (Some("a"), Some("b"), None)
    );
    assert_eq!(ds.cat(0).to_vec(), vec![1, 2, 1, 0, 2, 1]);
    // The empty city cell maps to 0.
    assert_eq!(ds.cat(1).to_vec(), vec![1, 2, 1, 0, 2, 1]);
    assert_eq!(ds.label(0).to_vec(), vec![1.0, 0.0, 1.0, 0.0, 0.0, 1.0]);

    // min_count 1 keeps c; equal counts are ordered by raw value.
    let s1 = schema(&format!("{SCHEMA}min_count = 1\n"));
    let csv2 = dir.write("t2.csv", "y,user,city,price\n1,q,x,1\n0,p,x,1\n");
    let (_, v1) = Dataset::open_train(&csv2, &s1, &opts_in(&dir)).unwrap();
    assert_eq!(
        (
            v1.categorical()[0].index("p"),
            v1.categorical()[0].index("q")
        ),
        (1, 2)
    );

    // Round trip through vocab.json.
    let path = dir.path("vocab.json");
    vocab.save(&path).unwrap();
    let back = Vocab::load(&path).unwrap();
    assert_eq!(back.to_json(), vocab.to_json());
    assert_eq!(back.fingerprint(), vocab.fingerprint());
    assert_eq!(back.categorical()[0].index("b"), 2);
    assert_eq!(back.numeric(), vocab.numeric());
    // The file is the documented map raw -> index.
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(v["categorical"][0]["values"]["a"], 1);
    assert_eq!(v["categorical"][0]["size"], 3);

    // Validation file: unseen user d -> 0.
    let val = dir.write("val.csv", "y,user,city,price\n0,d,x,3.5\n1,b,z,0\n");
    let vds = Dataset::open(&val, &schema(SCHEMA), &back, &opts_in(&dir)).unwrap();
    assert_eq!(vds.cat(0).to_vec(), vec![0, 2]);
    assert_eq!(vds.cat(1).to_vec(), vec![1, 0]);
}

#[test]
fn standardisation_uses_training_stats() {
    let dir = TempDir::new("std");
    let csv = dir.write("train.csv", TRAIN);
    let (ds, vocab) = Dataset::open_train(&csv, &schema(SCHEMA), &opts_in(&dir)).unwrap();
    // price 1..6: mean 3.5, population variance 17.5 / 6.
    let (mean, std) = (3.5f64, (17.5f64 / 6.0).sqrt());
    let st = &vocab.numeric()[0];
    assert!(
        (st.mean - mean).abs() < 1e-12 && (st.std - std).abs() < 1e-12,
        "{st:?}"
    );
    let want: Vec<f32> = (1..=6).map(|x| ((x as f64 - mean) / std) as f32).collect();
    assert_eq!(ds.num(0).to_vec(), want);
    let val = dir.write("val.csv", "y,user,city,price\n0,a,x,10\n");
    let vds = Dataset::open(&val, &schema(SCHEMA), &vocab, &opts_in(&dir)).unwrap();
    assert_eq!(vds.num(0).get(0), ((10.0 - mean) / std) as f32);
    // A constant column has std 0, stored as 1: values become x - mean = 0.
    let c = dir.write("const.csv", "y,user,city,price\n1,a,x,7\n0,a,x,7\n");
    let (cds, cv) = Dataset::open_train(&c, &schema(SCHEMA), &opts_in(&dir)).unwrap();
    assert_eq!((cv.numeric()[0].mean, cv.numeric()[0].std), (7.0, 1.0));
    assert_eq!(cds.num(0).to_vec(), vec![0.0, 0.0]);
}

#[test]
fn hashed_fields() {
    let dir = TempDir::new("hash");
    let s = schema(&format!("{SCHEMA}[hash_buckets]\nuser = 7\n"));
    let csv = dir.write("train.csv", TRAIN);
    let (ds, vocab) = Dataset::open_train(&csv, &s, &opts_in(&dir)).unwrap();
    let want = |raw: &str| 1 + (fnv1a64(raw.as_bytes()) % 7) as u32;
    assert_eq!(vocab.categorical()[0].size(), 8);
    assert_eq!(vocab.categorical()[0].hash_buckets(), Some(7));
    // Hashing ignores min_count: c (seen once) still gets its bucket.
    let expect: Vec<u32> = ["a", "b", "a", "c", "b", "a"]
        .iter()
        .map(|r| want(r))
        .collect();
    assert_eq!(ds.cat(0).to_vec(), expect);
    // Values never seen in training hash too; empty cells are 0.
    let val = dir.write("val.csv", "y,user,city,price\n0,never-seen,x,1\n0,,x,1\n");
    let vds = Dataset::open(&val, &s, &vocab, &opts_in(&dir)).unwrap();
    assert_eq!(vds.cat(0).to_vec(), vec![want("never-seen"), 0]);
    // The hashed field is stored as hash_buckets in vocab.json and survives a round trip.
    let back = Vocab::from_json(&vocab.to_json(), std::path::Path::new("v")).unwrap();
    assert_eq!(back.categorical()[0].index("zz"), want("zz"));
}

#[test]
fn tab_and_comma_detection() {
    let dir = TempDir::new("delim");
    let s = schema(SCHEMA);
    let (c, cv) = Dataset::open_train(dir.write("c.csv", TRAIN), &s, &opts_in(&dir)).unwrap();
    let tsv = TRAIN.replace(',', "\t");
    let (t, tv) = Dataset::open_train(dir.write("t.tsv", &tsv), &s, &opts_in(&dir)).unwrap();
    assert_eq!((c.delimiter(), t.delimiter()), (',', '\t'));
    assert_eq!(all_columns(&c), all_columns(&t));
    assert_eq!(cv.to_json(), tv.to_json());
    // CRLF line ends, a byte-order mark, blank lines and no final newline change nothing.
    let messy = format!(
        "\u{feff}{}",
        TRAIN
            .replace('\n', "\r\n")
            .replace("\r\n0,c", "\r\n\r\n0,c")
    );
    let messy = messy.trim_end().to_string();
    let (m, _) = Dataset::open_train(dir.write("m.csv", &messy), &s, &opts_in(&dir)).unwrap();
    assert_eq!(all_columns(&m), all_columns(&c));
    // Quoted fields may hold the delimiter; a forced tab wins over the comma count.
    let quoted = "y,user,city,price\n1,\"a\",\"x,1\",1\n0,\"b \"\"q\"\"\",x,2\n1,\"a\",\"x,1\",3\n";
    let sq = schema(&format!("{SCHEMA}min_count = 1\n"));
    let (q, qv) = Dataset::open_train(dir.write("q.csv", quoted), &sq, &opts_in(&dir)).unwrap();
    assert_eq!(q.rows(), 3);
    assert_eq!(qv.categorical()[1].value(1), Some("x,1"));
    assert_eq!(qv.categorical()[0].value(2), Some("b \"q\""));
    let forced = schema(&format!("{SCHEMA}delimiter = \"tab\"\n"));
    let tab_commas = "y\tuser\tcity\tprice\n1\ta,b,c\tx,y,z\t1\n";
    let (f, fv) =
        Dataset::open_train(dir.write("f.txt", tab_commas), &forced, &opts_in(&dir)).unwrap();
    assert_eq!(f.delimiter(), '\t');
    assert_eq!(fv.categorical()[1].index("x,y,z"), 0); // seen once: below min_count 2
                                                       // Detection looks at the header only (3 tabs, no commas), so it picks tab here too.
    let (d, _) = Dataset::open_train(dir.path("f.txt"), &s, &opts_in(&dir)).unwrap();
    assert_eq!(all_columns(&d), all_columns(&f));
    // Forcing the wrong delimiter fails loudly: the header is then one column.
    let comma = schema(&format!("{SCHEMA}delimiter = \"comma\"\n"));
    let e = Dataset::open_train(dir.path("t.tsv"), &comma, &opts_in(&dir)).unwrap_err();
    assert!(e.to_string().contains("missing from the file"), "{e}");
}

#[test]
fn cache_reuse_and_invalidation() {
    let dir = TempDir::new("cache");
    let s = schema(SCHEMA);
    let opts = opts_in(&dir);
    let csv = dir.write("train.csv", TRAIN);
    let (first, vocab) = Dataset::open_train(&csv, &s, &opts).unwrap();
    assert_eq!(
        *first.cache_status(),
        CacheStatus::Built {
            reason: "no cache".into()
        }
    );
    let fresh = all_columns(&first);
    let (again, v2) = Dataset::open_train(&csv, &s, &opts).unwrap();
    assert_eq!(*again.cache_status(), CacheStatus::Reused);
    assert_eq!(all_columns(&again), fresh);
    assert_eq!(v2.to_json(), vocab.to_json());
    assert_eq!(again.partition_cells(), first.partition_cells());
    assert_eq!(again.n_users(), 3);

    // Same size and mtime but other content: trust_mtime reuses the (now stale) cache, the
    // default hashes and rebuilds. Restore the file afterwards.
    let stamp = std::fs::metadata(&csv).unwrap().modified().unwrap();
    let edited = TRAIN.replace("0,c,,4", "0,c,,8");
    std::fs::write(&csv, &edited).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&csv)
        .unwrap()
        .set_modified(stamp)
        .unwrap();
    let trusting = LoadOptions {
        trust_mtime: true,
        ..opts.clone()
    };
    let (st, _) = Dataset::open_train(&csv, &s, &trusting).unwrap();
    assert_eq!(*st.cache_status(), CacheStatus::Reused);
    assert_eq!(st.num(0).to_vec(), fresh.1[0]); // old values: the documented risk
    let (hashed, _) = Dataset::open_train(&csv, &s, &opts).unwrap();
    assert_eq!(
        *hashed.cache_status(),
        CacheStatus::Built {
            reason: "the CSV changed".into()
        }
    );
    std::fs::write(&csv, TRAIN).unwrap();
    let (_, _) = Dataset::open_train(&csv, &s, &opts).unwrap();
    // With trust_mtime and a new mtime the content hash still decides: touch -> reused.
    std::fs::File::options()
        .write(true)
        .open(&csv)
        .unwrap()
        .set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(60))
        .unwrap();
    let (tt, _) = Dataset::open_train(&csv, &s, &trusting).unwrap();
    assert_eq!(*tt.cache_status(), CacheStatus::Reused);

    // touch: new mtime, same content -> still reused.
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&csv)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let (t, _) = Dataset::open_train(&csv, &s, &opts).unwrap();
    assert_eq!(*t.cache_status(), CacheStatus::Reused);

    // Same size, different content -> rebuilt, and the new value is there.
    std::fs::write(&csv, TRAIN.replace("0,c,,4", "0,c,,9")).unwrap();
    let (m, mv) = Dataset::open_train(&csv, &s, &opts).unwrap();
    assert_eq!(
        *m.cache_status(),
        CacheStatus::Built {
            reason: "the CSV changed".into()
        }
    );
    assert!((mv.numeric()[0].mean - 26.0 / 6.0).abs() < 1e-12);
    // Appended row -> rebuilt.
    std::fs::write(&csv, format!("{TRAIN}1,c,y,2\n")).unwrap();
    let (a, av) = Dataset::open_train(&csv, &s, &opts).unwrap();
    assert!(matches!(a.cache_status(), CacheStatus::Built { .. }));
    assert_eq!(a.rows(), 7);
    assert_eq!(av.categorical()[0].index("c"), 3); // now seen twice

    // Schema change (min_count) -> rebuilt.
    let s1 = schema(&format!("{SCHEMA}min_count = 3\n"));
    let (b, _) = Dataset::open_train(&csv, &s1, &opts).unwrap();
    assert_eq!(
        *b.cache_status(),
        CacheStatus::Built {
            reason: "the schema changed".into()
        }
    );
    let (b2, _) = Dataset::open_train(&csv, &s1, &opts).unwrap();
    assert_eq!(*b2.cache_status(), CacheStatus::Reused);
    // A schema change that touches neither the encoding nor the stored keys reuses the cache:
    // distribution moves to `user` while the partition stays `city`.
    let s2 = schema(&format!(
        "{}partition = [\"city\"]\nmin_count = 3\n",
        SCHEMA.replace("distribution = [\"city\"]", "distribution = [\"user\"]")
    ));
    let (d, _) = Dataset::open_train(&csv, &s2, &opts).unwrap();
    assert_eq!(*d.cache_status(), CacheStatus::Reused);
    // Changing the partition changes the stored cell ids: rebuilt.
    let s3 = schema(&format!("{SCHEMA}partition = [\"user\"]\nmin_count = 3\n"));
    let (e, _) = Dataset::open_train(&csv, &s3, &opts).unwrap();
    assert_eq!(
        *e.cache_status(),
        CacheStatus::Built {
            reason: "the schema changed".into()
        }
    );
    assert_eq!(e.partition_cells(), ["user=a", "user=b", "user=c"]);

    // Eval file: a different vocabulary -> rebuilt; the same -> reused.
    let val = dir.write("val.csv", "y,user,city,price\n0,a,x,1\n");
    let (_, va) = Dataset::open_train(&csv, &s, &opts).unwrap();
    let v1 = Dataset::open(&val, &s, &va, &opts).unwrap();
    assert!(matches!(v1.cache_status(), CacheStatus::Built { .. }));
    assert_eq!(
        *Dataset::open(&val, &s, &va, &opts).unwrap().cache_status(),
        CacheStatus::Reused
    );
    let (_, vb) = Dataset::open_train(dir.write("other.csv", TRAIN), &s, &opts).unwrap();
    let v3 = Dataset::open(&val, &s, &vb, &opts).unwrap();
    assert_eq!(
        *v3.cache_status(),
        CacheStatus::Built {
            reason: "the vocabulary changed".into()
        }
    );

    // Forced rebuild; a truncated cache file is rebuilt, not trusted.
    let r = Dataset::open_train(
        &csv,
        &s,
        &LoadOptions {
            rebuild: true,
            ..opts.clone()
        },
    )
    .unwrap()
    .0;
    assert!(matches!(r.cache_status(), CacheStatus::Built { .. }));
    let cache = r.cache_path().to_path_buf();
    drop(r);
    let len = std::fs::metadata(&cache).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&cache)
        .unwrap()
        .set_len(len - 8)
        .unwrap();
    let (tr, _) = Dataset::open_train(&csv, &s, &opts).unwrap();
    assert_eq!(
        *tr.cache_status(),
        CacheStatus::Built {
            reason: "the cache is truncated".into()
        }
    );
    std::fs::write(&cache, b"garbage").unwrap();
    let (g, _) = Dataset::open_train(&csv, &s, &opts).unwrap();
    assert!(matches!(g.cache_status(), CacheStatus::Built { .. }));
    assert_eq!(g.rows(), 7);
}

#[test]
fn cache_next_to_csv_by_default() {
    let dir = TempDir::new("beside");
    let csv = dir.write("train.csv", TRAIN);
    let (ds, _) = Dataset::open_train(&csv, &schema(SCHEMA), &LoadOptions::default()).unwrap();
    assert_eq!(ds.cache_path(), dir.path("train.csv.hmdn-cache"));
    // Only the CSV and its cache are in the directory: no temporary files left.
    let mut names: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["train.csv", "train.csv.hmdn-cache"]);
}

#[test]
fn keys_p_true_headerless_and_unlabeled() {
    let dir = TempDir::new("keys");
    let s = schema(&format!("{SCHEMA}partition = [\"city\", \"user\"]\n"));
    let csv = dir.write(
        "d.csv",
        "y,p_true,user,city,price\n1,0.9,a,x,1\n0,0.25,b,y,2\n1,0.5,a,x,3\n",
    );
    let (ds, _) = Dataset::open_train(&csv, &s, &opts_in(&dir)).unwrap();
    assert_eq!(ds.partition_cells(), ["city=x|user=a", "city=y|user=b"]);
    assert_eq!(ds.partition().to_vec(), vec![0, 1, 0]);
    assert_eq!(ds.user().unwrap().to_vec(), vec![0, 1, 0]);
    assert_eq!(ds.p_true().unwrap().to_vec(), vec![0.9, 0.25, 0.5]);
    assert_eq!(ds.domain_field_index(), Some(1));

    // No header: names from the schema.
    let hs = schema(&format!(
        "{SCHEMA}header = false\ncolumns = [\"y\", \"user\", \"city\", \"price\"]\n"
    ));
    let body: String = TRAIN.lines().skip(1).map(|l| format!("{l}\n")).collect();
    let (h, _) = Dataset::open_train(dir.write("nh.csv", &body), &hs, &opts_in(&dir)).unwrap();
    let (c, _) =
        Dataset::open_train(dir.write("wh.csv", TRAIN), &schema(SCHEMA), &opts_in(&dir)).unwrap();
    assert_eq!(all_columns(&h), all_columns(&c));

    // Prediction input without labels.
    let (_, vocab) =
        Dataset::open_train(dir.path("wh.csv"), &schema(SCHEMA), &opts_in(&dir)).unwrap();
    let unl = dir.write("u.csv", "user,city,price\na,x,1\nb,q,2\n");
    assert!(Dataset::open(&unl, &schema(SCHEMA), &vocab, &opts_in(&dir)).is_err());
    let o = LoadOptions {
        allow_missing_labels: true,
        ..opts_in(&dir)
    };
    let u = Dataset::open(&unl, &schema(SCHEMA), &vocab, &o).unwrap();
    assert_eq!((u.rows(), u.n_tasks()), (2, 0));
    let mut buf = BatchBuffers::new(8, &u);
    let mut b = Batcher::sequential(u.rows(), 8);
    assert!(b.next_batch(&u, &mut buf));
    assert!(buf.batch().labels.is_empty());
    assert_eq!(buf.batch().cat, &[1, 1, 2, 0]);
}
