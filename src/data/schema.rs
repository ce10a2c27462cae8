//! The data schema: which CSV columns are labels, categorical inputs, numeric inputs,
//! distribution fields, and how they are read. Written by the user as TOML:
//!
//! ```toml
//! label = "click"                      # or ["click", "purchase"]: one task per 0/1 column
//! categorical = ["user_id", "item_id", "gender", "age"]
//! numeric = ["price"]                  # standardised with the training mean / std
//! distribution = ["gender", "age"]     # x_b fields, a subset of `categorical`
//! domain = "age"                       # Shared-Bottom tower field (default: last distribution field)
//! partition = ["gender", "age"]        # per-cell AUC in reports (default: the distribution fields)
//! user = "user_id"                     # gAUC groups (optional)
//! ignore = ["timestamp"]               # columns in the file that are not used
//! min_count = 2                        # values seen fewer times in training map to index 0
//! delimiter = "comma"                  # "comma" | "tab" | any one character; default: detected
//! header = true                        # false: the file has no header line; then give `columns`
//! # columns = ["click", "user_id", ...]
//!
//! [hash_buckets]                       # hash these fields' raw values into N buckets
//! user_id = 100000
//! ```
//!
//! Column policy: every column of the file must be accounted for — a label, categorical,
//! numeric or ignored column, the `user` field, a `partition` field, or the reserved column
//! `p_true` (true click probability of the first task, read for the Bayes AUC of synthetic
//! data). Any other column is an error that lists them, so a typo or a forgotten feature is never
//! silently dropped.
//!
//! `min_count` defaults to 2: values seen only once in training map to index 0 together with
//! empty cells, so row 0 of every embedding table is trained on rare values and is a sensible
//! embedding for values first seen at evaluation (which also map to 0). With `min_count = 1` row
//! 0 would only ever see empty cells.

use crate::data::hash::fnv1a64;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// Name of the reserved column holding the true click probability (synthetic data).
pub const P_TRUE_COLUMN: &str = "p_true";

/// Default [`Schema::min_count`].
pub const DEFAULT_MIN_COUNT: u64 = 2;

/// A TOML value that may be one string or a list of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl From<OneOrMany> for Vec<String> {
    fn from(v: OneOrMany) -> Self {
        match v {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(OneOrMany::deserialize(d)?.into())
}

fn opt_one_or_many<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<String>>, D::Error> {
    Ok(Some(OneOrMany::deserialize(d)?.into()))
}

fn default_min_count() -> u64 {
    DEFAULT_MIN_COUNT
}

fn default_true() -> bool {
    true
}

/// A validated description of a CSV file's columns (see the module docs for the TOML form).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    /// Task columns with 0/1 values, one model output each.
    #[serde(default, deserialize_with = "one_or_many")]
    pub label: Vec<String>,
    /// Categorical input fields, in model input order (F).
    #[serde(default)]
    pub categorical: Vec<String>,
    /// Numeric input fields, in model input order (N).
    #[serde(default)]
    pub numeric: Vec<String>,
    /// Distribution fields x_b (P), a subset of `categorical`.
    #[serde(default)]
    pub distribution: Vec<String>,
    /// Field whose values select Shared-Bottom towers (default: the last distribution field).
    #[serde(default)]
    pub domain: Option<String>,
    /// Fields whose value combinations get their own AUC (default: the distribution fields).
    #[serde(
        default,
        deserialize_with = "opt_one_or_many",
        skip_serializing_if = "Option::is_none"
    )]
    pub partition: Option<Vec<String>>,
    /// Columns present in the file but not used.
    #[serde(default)]
    pub ignore: Vec<String>,
    /// Column identifying the user, for gAUC.
    #[serde(default)]
    pub user: Option<String>,
    /// Minimum training count for a value to get its own index (default 2).
    #[serde(default = "default_min_count")]
    pub min_count: u64,
    /// Categorical fields hashed into this many buckets instead of a vocabulary.
    #[serde(default)]
    pub hash_buckets: BTreeMap<String, u64>,
    /// "comma", "tab" or a single character; `None` = detect from the header line.
    #[serde(default)]
    pub delimiter: Option<String>,
    /// Whether the first line is a header (default true).
    #[serde(default = "default_true")]
    pub header: bool,
    /// Column names of a file without a header (`header = false`).
    #[serde(default)]
    pub columns: Vec<String>,
}

/// Builds an [`Error::Data`] about a schema file.
fn schema_err(origin: &Path, msg: impl Into<String>) -> Error {
    Error::Data {
        file: origin.to_path_buf(),
        line: None,
        column: None,
        msg: msg.into(),
    }
}

/// 1-based (line, column) of a byte offset in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |p| before.len() - p - 1)
        + 1;
    (line, col)
}

impl Schema {
    /// Reads and validates a schema TOML file.
    pub fn load(path: impl AsRef<Path>) -> Result<Schema> {
        let path = path.as_ref();
        let text = crate::error::read_settings_file(path)?;
        Schema::from_toml(&text, path)
    }

    /// Parses and validates schema TOML; `origin` names the source in errors.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Schema> {
        let schema: Schema = toml::from_str(text).map_err(|e| {
            let (line, column) = match e.span() {
                Some(span) => {
                    let (l, c) = line_col(text, span.start);
                    (Some(l), Some(c))
                }
                None => (None, None),
            };
            Error::Data {
                file: origin.to_path_buf(),
                line,
                column,
                msg: format!("invalid schema: {}", e.message().trim()),
            }
        })?;
        schema.validate(origin)?;
        Ok(schema)
    }

    /// The schema as TOML (e.g. to store next to a model).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a schema always serialises")
    }

    /// Checks the schema on its own (the CSV header is checked when a file is opened).
    pub fn validate(&self, origin: &Path) -> Result<()> {
        let err = |m: String| Err(schema_err(origin, m));
        if self.label.is_empty() {
            return err(
                "the schema has no `label`: list one or more 0/1 task columns, e.g. label = \"click\""
                    .into(),
            );
        }
        if self.categorical.is_empty() && self.numeric.is_empty() {
            return err(
                "the schema has no input fields: list `categorical` and/or `numeric` columns"
                    .into(),
            );
        }
        let lists: [(&str, &[String]); 4] = [
            ("label", &self.label),
            ("categorical", &self.categorical),
            ("numeric", &self.numeric),
            ("ignore", &self.ignore),
        ];
        let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
        for (list, names) in lists {
            for n in names {
                if n.is_empty() {
                    return err(format!("`{list}` contains an empty column name"));
                }
                if let Some(prev) = owner.insert(n, list) {
                    return err(if prev == list {
                        format!("column `{n}` is listed twice in `{list}`")
                    } else {
                        format!("column `{n}` is listed in both `{prev}` and `{list}`")
                    });
                }
            }
        }
        let cat: HashSet<&str> = self.categorical.iter().map(String::as_str).collect();
        let mut seen = HashSet::new();
        for d in &self.distribution {
            if !cat.contains(d.as_str()) {
                return err(format!(
                    "distribution field `{d}` is not in `categorical` (distribution fields are a subset of the categorical fields)"
                ));
            }
            if !seen.insert(d) {
                return err(format!("distribution field `{d}` is listed twice"));
            }
        }
        if let Some(d) = &self.domain {
            if !cat.contains(d.as_str()) {
                return err(format!("domain field `{d}` is not in `categorical`"));
            }
        }
        let labels: HashSet<&str> = self.label.iter().map(String::as_str).collect();
        if let Some(p) = &self.partition {
            let mut seen = HashSet::new();
            for f in p {
                if labels.contains(f.as_str()) {
                    return err(format!("partition field `{f}` is a label column"));
                }
                if !seen.insert(f) {
                    return err(format!("partition field `{f}` is listed twice"));
                }
            }
        }
        if let Some(u) = &self.user {
            if labels.contains(u.as_str()) {
                return err(format!("user field `{u}` is a label column"));
            }
        }
        if labels.contains(P_TRUE_COLUMN) {
            return err(format!(
                "`{P_TRUE_COLUMN}` is reserved for the true probability and cannot be a label"
            ));
        }
        if self.min_count == 0 {
            return err("min_count must be at least 1".into());
        }
        for (f, &n) in &self.hash_buckets {
            if !cat.contains(f.as_str()) {
                return err(format!("hash_buckets field `{f}` is not in `categorical`"));
            }
            if n == 0 || n >= u64::from(u32::MAX) {
                return err(format!(
                    "hash_buckets.{f} must be between 1 and {}, got {n}",
                    u32::MAX - 1
                ));
            }
        }
        if let Some(d) = &self.delimiter {
            if parse_delimiter(d).is_none() {
                return err(format!(
                    "delimiter must be \"comma\", \"tab\" or one character other than a quote or newline, got {d:?}"
                ));
            }
        }
        if self.header && !self.columns.is_empty() {
            return err(
                "`columns` names the columns of a file without a header; set header = false too"
                    .into(),
            );
        }
        if !self.header && self.columns.is_empty() {
            return err("header = false needs `columns`: the column names in file order".into());
        }
        Ok(())
    }

    /// The Shared-Bottom domain field: `domain`, else the last distribution field.
    pub fn domain_field(&self) -> Option<&str> {
        self.domain
            .as_deref()
            .or(self.distribution.last().map(String::as_str))
    }

    /// The partition fields for per-cell metrics: `partition`, else the distribution fields.
    pub fn partition_fields(&self) -> &[String] {
        self.partition.as_deref().unwrap_or(&self.distribution)
    }

    /// The forced delimiter byte, if any (`None` = detect).
    pub fn delimiter_byte(&self) -> Option<u8> {
        self.delimiter.as_deref().and_then(parse_delimiter)
    }

    /// Hash of what decides the encoded values: labels, categorical and numeric fields (in
    /// order), `min_count` and `hash_buckets`. A vocabulary is only valid for schemas with the
    /// same encoding fingerprint.
    pub fn encoding_fingerprint(&self) -> u64 {
        let key = serde_json::to_vec(&(
            "encoding-v1",
            &self.label,
            &self.categorical,
            &self.numeric,
            self.min_count,
            &self.hash_buckets,
        ))
        .expect("plain data serialises");
        fnv1a64(&key)
    }

    /// Hash of everything that decides the contents of a columnar cache: the encoding plus how
    /// the file is read and which per-row keys (partition cell, user) are stored.
    pub fn cache_fingerprint(&self) -> u64 {
        let key = serde_json::to_vec(&(
            "cache-v1",
            self.encoding_fingerprint(),
            self.partition_fields(),
            &self.user,
            &self.delimiter,
            self.header,
            &self.columns,
        ))
        .expect("plain data serialises");
        fnv1a64(&key)
    }
}

/// `"comma"`, `"tab"`, `"\t"` or any single ASCII character other than a quote or newline.
fn parse_delimiter(s: &str) -> Option<u8> {
    match s {
        "comma" => Some(b','),
        "tab" | "\\t" => Some(b'\t'),
        "semicolon" => Some(b';'),
        "pipe" => Some(b'|'),
        _ => {
            let b = s.as_bytes();
            (b.len() == 1 && b[0].is_ascii() && !matches!(b[0], b'"' | b'\n' | b'\r'))
                .then_some(b[0])
        }
    }
}

/// Where a schema that was not read from a file says it comes from in errors.
pub fn builtin_origin(name: &str) -> PathBuf {
    PathBuf::from(format!("<built-in schema {name}>"))
}
