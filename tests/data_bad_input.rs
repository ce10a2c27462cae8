//! Bad input gives one clear `Error::Data` (file, line, column, message), never a panic, and
//! leaves no temporary files behind.

mod data_common;
use data_common::*;
use hmdn_cpu::data::{Dataset, Schema, Vocab};
use hmdn_cpu::error::Error;
use std::path::{Path, PathBuf};

const SCHEMA: &str = r#"
label = "click"
categorical = ["user", "item", "city"]
numeric = ["price"]
distribution = ["city"]
"#;

/// Unpacks an `Error::Data`, failing the test on anything else.
fn data_err<T: std::fmt::Debug>(
    r: hmdn_cpu::error::Result<T>,
) -> (PathBuf, Option<usize>, Option<usize>, String) {
    match r {
        Err(Error::Data {
            file,
            line,
            column,
            msg,
        }) => (file, line, column, msg),
        other => panic!("expected Error::Data, got {other:?}"),
    }
}

/// Opens `csv_text` as a training file with `schema_text`; returns the error parts and checks
/// that the cache directory holds no leftovers.
fn train_err(schema_text: &str, csv_text: &str) -> (PathBuf, Option<usize>, Option<usize>, String) {
    let dir = TempDir::new("bad");
    let csv = dir.write("data.csv", csv_text);
    let opts = opts_in(&dir);
    let e = data_err(Dataset::open_train(&csv, &schema(schema_text), &opts));
    assert_eq!(e.0, csv, "the error names the CSV");
    let left: Vec<_> = std::fs::read_dir(dir.path("cache"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
    e
}

fn schema_err(text: &str) -> (PathBuf, Option<usize>, Option<usize>, String) {
    let e = data_err(Schema::from_toml(text, Path::new("bad.toml")));
    assert_eq!(e.0, Path::new("bad.toml"));
    e
}

#[test]
fn ragged_row() {
    let (_, line, _, msg) = train_err(
        SCHEMA,
        "click,user,item,city,price\n1,u1,i1,c1,2.5\n0,u2,i2,3.0\n",
    );
    assert_eq!(line, Some(3));
    assert!(
        msg.contains("4 fields") && msg.contains("header has 5"),
        "{msg}"
    );
}

#[test]
fn non_numeric_cell() {
    let (_, line, col, msg) = train_err(
        SCHEMA,
        "click,user,item,city,price\n1,u1,i1,c1,2.5\n0,u2,i2,c2,abc\n",
    );
    assert_eq!((line, col), (Some(3), Some(5)));
    assert!(
        msg.contains("`price`") && msg.contains("expected a number") && msg.contains("abc"),
        "{msg}"
    );
}

#[test]
fn empty_numeric_cell() {
    let (_, line, col, msg) = train_err(SCHEMA, "click,user,item,city,price\n1,u1,i1,c1,\n");
    assert_eq!((line, col), (Some(2), Some(5)));
    assert!(msg.contains("empty cell"), "{msg}");
}

#[test]
fn nan_and_inf() {
    for bad in ["NaN", "inf", "-infinity", "1e999"] {
        let (_, line, col, msg) = train_err(
            SCHEMA,
            &format!("click,user,item,city,price\n1,u1,i1,c1,2\n1,u1,i1,c1,{bad}\n"),
        );
        assert_eq!((line, col), (Some(3), Some(5)), "{bad}");
        assert!(msg.contains("finite"), "{bad}: {msg}");
    }
}

#[test]
fn label_not_zero_one() {
    for bad in ["2", "0.5", "yes", "-1", ""] {
        let (_, line, col, msg) = train_err(
            SCHEMA,
            &format!("click,user,item,city,price\n1,u1,i1,c1,2\n{bad},u1,i1,c1,2\n"),
        );
        assert_eq!((line, col), (Some(3), Some(1)), "{bad}");
        assert!(msg.contains("expected a label 0 or 1"), "{bad}: {msg}");
    }
    // 0.0 / 1.0 are accepted.
    let dir = TempDir::new("lab");
    let csv = dir.write(
        "d.csv",
        "click,user,item,city,price\n1.0,u,i,c,1\n0.0,u,i,c,2\n",
    );
    let (ds, _) = Dataset::open_train(&csv, &schema(SCHEMA), &opts_in(&dir)).unwrap();
    assert_eq!(ds.label(0).to_vec(), vec![1.0, 0.0]);
}

#[test]
fn schema_columns_missing_from_file() {
    let (_, line, _, msg) = train_err(SCHEMA, "click,user,price\n1,u1,2\n");
    assert_eq!(line, Some(1));
    assert!(
        msg.contains("`item` (categorical)") && msg.contains("`city` (categorical)"),
        "{msg}"
    );
}

#[test]
fn unlisted_columns() {
    let (_, line, _, msg) = train_err(
        SCHEMA,
        "click,user,item,extra1,city,price,extra2\n1,u,i,x,c,2,y\n",
    );
    assert_eq!(line, Some(1));
    assert!(
        msg.contains("extra1, extra2") && msg.contains("ignore"),
        "{msg}"
    );
    // Listed in `ignore`: fine.
    let dir = TempDir::new("ign");
    let csv = dir.write(
        "d.csv",
        "click,user,item,extra1,city,price,extra2\n1,u,i,x,c,2,y\n",
    );
    let s = schema(&format!("{SCHEMA}\nignore = [\"extra1\", \"extra2\"]"));
    assert_eq!(
        Dataset::open_train(&csv, &s, &opts_in(&dir))
            .unwrap()
            .0
            .rows(),
        1
    );
}

#[test]
fn empty_file_and_header_only() {
    let (_, line, _, msg) = train_err(SCHEMA, "");
    assert_eq!(line, None);
    assert!(msg.contains("empty"), "{msg}");
    let (_, _, _, msg) = train_err(SCHEMA, "\n\n");
    assert!(msg.contains("empty"), "{msg}");
    let (_, line, _, msg) = train_err(SCHEMA, "click,user,item,city,price\n");
    assert_eq!(line, Some(1));
    assert!(msg.contains("no data rows"), "{msg}");
}

#[test]
fn malformed_text() {
    let dir = TempDir::new("utf");
    let csv = dir.path("d.csv");
    std::fs::write(
        &csv,
        b"click,user,item,city,price\n1,u,i,c,2\n1,\xff\xfe,i,c,2\n",
    )
    .unwrap();
    let (_, line, _, msg) = data_err(Dataset::open_train(&csv, &schema(SCHEMA), &opts_in(&dir)));
    assert_eq!(line, Some(3));
    assert!(msg.contains("UTF-8"), "{msg}");
    let (_, line, col, msg) = train_err(SCHEMA, "click,user,item,city,price\n1,\"u,i,c,2\n");
    assert_eq!((line, col), (Some(2), Some(2)));
    assert!(msg.contains("unterminated"), "{msg}");
    let (_, line, col, msg) = train_err(SCHEMA, "click,user,user,city,price\n1,u,i,c,2\n");
    assert_eq!((line, col), (Some(1), Some(3)));
    assert!(msg.contains("twice"), "{msg}");
}

#[test]
fn p_true_out_of_range() {
    let (_, line, col, msg) = train_err(
        SCHEMA,
        "click,p_true,user,item,city,price\n1,0.5,u,i,c,2\n0,1.5,u,i,c,2\n",
    );
    assert_eq!((line, col), (Some(3), Some(2)));
    assert!(msg.contains("probability"), "{msg}");
}

#[test]
fn schema_errors() {
    let (_, _, _, msg) = schema_err("categorical = [\"a\"]\n");
    assert!(msg.contains("no `label`"), "{msg}");
    let (_, line, col, msg) = schema_err("label = \"y\"\ncategorical = [\"a\"]\nlables = 3\n");
    assert_eq!((line, col), (Some(3), Some(1)));
    assert!(msg.contains("unknown field `lables`"), "{msg}");
    let (_, _, _, msg) =
        schema_err("label = \"y\"\ncategorical = [\"a\"]\ndistribution = [\"b\"]\n");
    assert!(
        msg.contains("distribution field `b` is not in `categorical`"),
        "{msg}"
    );
    let (_, _, _, msg) = schema_err("label = \"y\"\ncategorical = [\"a\"]\nnumeric = [\"a\"]\n");
    assert!(msg.contains("both `categorical` and `numeric`"), "{msg}");
    let (_, _, _, msg) =
        schema_err("label = \"y\"\ncategorical = [\"a\"]\n[hash_buckets]\nb = 10\n");
    assert!(msg.contains("hash_buckets field `b`"), "{msg}");
    let (_, _, _, msg) = schema_err("label = \"y\"\ncategorical = [\"a\"]\nheader = false\n");
    assert!(msg.contains("columns"), "{msg}");
    let (_, _, _, msg) = schema_err("label = \"y\"\ncategorical = [\"a\"]\ndelimiter = \"ab\"\n");
    assert!(msg.contains("delimiter"), "{msg}");
    let (_, _, _, msg) = schema_err("label = \"y\"\ncategorical = [\"a\"]\nmin_count = 0\n");
    assert!(msg.contains("min_count"), "{msg}");
    let (_, _, _, msg) = schema_err("label = \"y\"\ncategorical = [\"a\"]\ndomain = \"z\"\n");
    assert!(msg.contains("domain field `z`"), "{msg}");
    let (_, line, _, msg) = schema_err("label = \"y\"\ncategorical = [\"a\"\n");
    assert!(line.is_some(), "{msg}");
    let (_, _, _, msg) = schema_err("label = \"y\"\n");
    assert!(msg.contains("no input fields"), "{msg}");
}

#[test]
fn vocab_mismatch_and_corrupt_vocab() {
    let dir = TempDir::new("voc");
    let csv = dir.write(
        "d.csv",
        "click,user,item,city,price\n1,u,i,c,2\n0,u,i,c,3\n",
    );
    let (_, vocab) = Dataset::open_train(&csv, &schema(SCHEMA), &opts_in(&dir)).unwrap();
    let other = schema(&SCHEMA.replace(
        "[\"user\", \"item\", \"city\"]",
        "[\"user\", \"city\"]\nignore = [\"item\"]",
    ));
    let (_, _, _, msg) = data_err(Dataset::open(&csv, &other, &vocab, &opts_in(&dir)));
    assert!(
        msg.contains("different schema") && msg.contains("categorical"),
        "{msg}"
    );
    let bad = dir.write("vocab.json", "{\"format\": 1,\n \"oops\": 2}");
    let (file, line, _, msg) = data_err(Vocab::load(&bad));
    assert_eq!(file, bad);
    assert_eq!(line, Some(2));
    assert!(msg.contains("oops"), "{msg}");
    let gap = dir.write(
        "v2.json",
        r#"{"format":1,"schema_fingerprint":"00","min_count":2,"categorical":[{"name":"a","size":3,"values":{"x":1,"y":3}}],"numeric":[]}"#,
    );
    let (_, _, _, msg) = data_err(Vocab::load(&gap));
    assert!(msg.contains("indices must be 1..=2"), "{msg}");
}

#[test]
fn missing_file_is_io_error() {
    let dir = TempDir::new("nofile");
    match Dataset::open_train(dir.path("nope.csv"), &schema(SCHEMA), &opts_in(&dir)) {
        Err(Error::Io { path, .. }) => assert_eq!(path, dir.path("nope.csv")),
        other => panic!("{other:?}"),
    }
}
