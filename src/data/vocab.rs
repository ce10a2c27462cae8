//! Vocabularies and numeric statistics built on the training split, saved as `vocab.json`.
//!
//! Categorical field, vocabulary encoding: values seen at least `min_count` times in training
//! get indices 1..=n, most frequent first (ties by raw value, byte order), so index assignment
//! is deterministic; index 0 is empty cells, rare values and values unseen in training.
//! Categorical field, hashed encoding (`hash_buckets = N`): index = 1 + fnv1a64(raw) mod N, and
//! 0 for empty cells; table size N + 1.
//! Numeric field: mean and population standard deviation (ddof 0, as scikit-learn's
//! `StandardScaler`) over the training rows; a zero std is stored as 1 so constant columns
//! become 0 instead of NaN.
//!
//! `vocab.json` layout:
//! ```json
//! {"format":1,"schema_fingerprint":"<16 hex>","min_count":2,
//!  "categorical":[{"name":"gender","size":3,"values":{"M":1,"F":2}},
//!                 {"name":"zip3","size":1001,"hash_buckets":1000}],
//!  "numeric":[{"name":"price","mean":12.5,"std":3.25}]}
//! ```
//! `values` maps raw value → index and is written in index order.

use crate::config::FieldSpec;
use crate::data::csv::data_err;
use crate::data::hash::{content_hash, fnv1a64, hex64, FastHash};
use crate::data::schema::Schema;
use crate::error::{Error, Result};
use serde::de::Error as _;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::HashMap;
use std::path::Path;

/// `vocab.json` format version.
const FORMAT: u32 = 1;

/// Marker for an empty categorical cell in provisional ids.
pub(crate) const EMPTY: u32 = u32::MAX;

/// How one categorical field maps raw values to indices.
#[derive(Clone, Debug)]
enum Encoding {
    /// `values[i - 1]` has index i.
    Values {
        values: Vec<String>,
        lookup: HashMap<Box<str>, u32, FastHash>,
    },
    /// Index = 1 + fnv1a64(raw) mod buckets.
    Hashed { buckets: u32 },
}

/// The encoding of one categorical field.
#[derive(Clone, Debug)]
pub struct CategoricalVocab {
    name: String,
    encoding: Encoding,
}

impl CategoricalVocab {
    fn from_values(name: String, values: Vec<String>) -> Self {
        let lookup = values
            .iter()
            .enumerate()
            .map(|(i, v)| (Box::from(v.as_str()), i as u32 + 1))
            .collect();
        CategoricalVocab {
            name,
            encoding: Encoding::Values { values, lookup },
        }
    }

    /// Field name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Rows of the field's embedding table (including index 0).
    pub fn size(&self) -> usize {
        match &self.encoding {
            Encoding::Values { values, .. } => values.len() + 1,
            Encoding::Hashed { buckets } => *buckets as usize + 1,
        }
    }

    /// Number of hash buckets, if the field is hashed.
    pub fn hash_buckets(&self) -> Option<u32> {
        match self.encoding {
            Encoding::Hashed { buckets } => Some(buckets),
            Encoding::Values { .. } => None,
        }
    }

    /// Index of a raw value: 0 for an empty cell or a value without its own index.
    #[inline]
    pub fn index(&self, raw: &str) -> u32 {
        if raw.is_empty() {
            return 0;
        }
        match &self.encoding {
            Encoding::Values { lookup, .. } => lookup.get(raw).copied().unwrap_or(0),
            Encoding::Hashed { buckets } => hash_bucket(raw, *buckets),
        }
    }

    /// Raw value of an index (`None` for 0, out-of-range indices and hashed fields).
    pub fn value(&self, index: u32) -> Option<&str> {
        match &self.encoding {
            Encoding::Values { values, .. } if index > 0 => {
                values.get(index as usize - 1).map(String::as_str)
            }
            _ => None,
        }
    }
}

/// The bucket (1..=buckets) of a non-empty raw value.
#[inline]
pub(crate) fn hash_bucket(raw: &str, buckets: u32) -> u32 {
    1 + (fnv1a64(raw.as_bytes()) % u64::from(buckets)) as u32
}

/// Training mean and standard deviation of one numeric field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumericStats {
    /// Field name.
    pub name: String,
    /// Training mean.
    pub mean: f64,
    /// Training standard deviation (1 where it was 0).
    pub std: f64,
}

impl NumericStats {
    /// `(x − mean) / std`, computed in f64 and rounded once to f32.
    #[inline]
    pub fn standardize(&self, x: f64) -> f32 {
        ((x - self.mean) / self.std) as f32
    }
}

/// Every field's encoding, tied to the schema it was built for.
#[derive(Clone, Debug)]
pub struct Vocab {
    schema_fingerprint: u64,
    min_count: u64,
    categorical: Vec<CategoricalVocab>,
    numeric: Vec<NumericStats>,
    /// Hash of the canonical JSON form; part of every cache key built with this vocabulary.
    fingerprint: u64,
}

/// `values` of one field: serialised as a map raw → index in index order.
struct OrderedValues(Vec<String>);

impl Serialize for OrderedValues {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (i, v) in self.0.iter().enumerate() {
            m.serialize_entry(v, &(i + 1))?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for OrderedValues {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map: HashMap<String, u64> = HashMap::deserialize(d)?;
        let n = map.len();
        let mut values: Vec<Option<String>> = vec![None; n];
        for (v, i) in map {
            if i == 0 || i as usize > n {
                return Err(D::Error::custom(format!(
                    "value {v:?} has index {i}; indices must be 1..={n} (0 is reserved for unknown)"
                )));
            }
            let slot = &mut values[i as usize - 1];
            if slot.is_some() {
                return Err(D::Error::custom(format!("index {i} is used twice")));
            }
            *slot = Some(v);
        }
        Ok(OrderedValues(
            values
                .into_iter()
                .map(|v| v.expect("all indices filled"))
                .collect(),
        ))
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatFile {
    name: String,
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hash_buckets: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    values: Option<OrderedValues>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VocabFile {
    format: u32,
    schema_fingerprint: String,
    min_count: u64,
    categorical: Vec<CatFile>,
    numeric: Vec<NumericStats>,
}

impl Vocab {
    fn new(
        schema_fingerprint: u64,
        min_count: u64,
        categorical: Vec<CategoricalVocab>,
        numeric: Vec<NumericStats>,
    ) -> Vocab {
        let mut v = Vocab {
            schema_fingerprint,
            min_count,
            categorical,
            numeric,
            fingerprint: 0,
        };
        v.fingerprint = content_hash(v.to_json().as_bytes());
        v
    }

    fn to_file(&self) -> VocabFile {
        VocabFile {
            format: FORMAT,
            schema_fingerprint: hex64(self.schema_fingerprint),
            min_count: self.min_count,
            categorical: self
                .categorical
                .iter()
                .map(|c| match &c.encoding {
                    Encoding::Values { values, .. } => CatFile {
                        name: c.name.clone(),
                        size: c.size() as u64,
                        hash_buckets: None,
                        values: Some(OrderedValues(values.clone())),
                    },
                    Encoding::Hashed { buckets } => CatFile {
                        name: c.name.clone(),
                        size: c.size() as u64,
                        hash_buckets: Some(u64::from(*buckets)),
                        values: None,
                    },
                })
                .collect(),
            numeric: self.numeric.clone(),
        }
    }

    /// Canonical JSON text (what [`Vocab::save`] writes).
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.to_file()).expect("a vocabulary always serialises")
    }

    /// Parses `vocab.json` text; `origin` names the source in errors.
    pub fn from_json(text: &str, origin: &Path) -> Result<Vocab> {
        let bad = |m: String| data_err(origin, None, None, m);
        let f: VocabFile = serde_json::from_str(text).map_err(|e| Error::Data {
            file: origin.to_path_buf(),
            line: Some(e.line()),
            column: Some(e.column()),
            msg: format!("invalid vocabulary file: {e}"),
        })?;
        if f.format != FORMAT {
            return Err(bad(format!(
                "vocabulary format {} is not supported (expected {FORMAT})",
                f.format
            )));
        }
        let schema_fingerprint = u64::from_str_radix(&f.schema_fingerprint, 16)
            .map_err(|_| bad(format!("bad schema_fingerprint {:?}", f.schema_fingerprint)))?;
        let mut categorical = Vec::with_capacity(f.categorical.len());
        for c in f.categorical {
            let field = match (c.hash_buckets, c.values) {
                (Some(b), None) if b >= 1 && b < u64::from(u32::MAX) => CategoricalVocab {
                    name: c.name,
                    encoding: Encoding::Hashed { buckets: b as u32 },
                },
                (None, Some(v)) => CategoricalVocab::from_values(c.name, v.0),
                _ => {
                    return Err(bad(format!(
                        "field `{}` needs exactly one of `values` or a valid `hash_buckets`",
                        c.name
                    )))
                }
            };
            if field.size() as u64 != c.size {
                return Err(bad(format!(
                    "field `{}` says size {} but has {} indices",
                    field.name,
                    c.size,
                    field.size()
                )));
            }
            categorical.push(field);
        }
        for n in &f.numeric {
            if !(n.mean.is_finite() && n.std.is_finite() && n.std > 0.0) {
                return Err(bad(format!(
                    "numeric field `{}` has mean {} and std {}; need finite values and std > 0",
                    n.name, n.mean, n.std
                )));
            }
        }
        Ok(Vocab::new(
            schema_fingerprint,
            f.min_count,
            categorical,
            f.numeric,
        ))
    }

    /// Writes `vocab.json` atomically (temporary file, then rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let tmp = crate::data::cache::temp_path(path);
        std::fs::write(&tmp, self.to_json()).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }

    /// Reads `vocab.json`.
    pub fn load(path: impl AsRef<Path>) -> Result<Vocab> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Vocab::from_json(&text, path)
    }

    /// Hash of the canonical JSON form (equal vocabularies have equal fingerprints).
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Encoding fingerprint of the schema this vocabulary was built for.
    pub fn schema_fingerprint(&self) -> u64 {
        self.schema_fingerprint
    }

    /// Categorical fields in schema order.
    pub fn categorical(&self) -> &[CategoricalVocab] {
        &self.categorical
    }

    /// Numeric statistics in schema order.
    pub fn numeric(&self) -> &[NumericStats] {
        &self.numeric
    }

    /// `min_count` used to build the vocabulary.
    pub fn min_count(&self) -> u64 {
        self.min_count
    }

    /// Model field specs (name, table rows) in schema order.
    pub fn field_specs(&self) -> Vec<FieldSpec> {
        self.categorical
            .iter()
            .map(|c| FieldSpec {
                name: c.name.clone(),
                vocab_size: c.size(),
            })
            .collect()
    }

    /// Errors unless this vocabulary was built for a schema with the same encoding (labels,
    /// categorical and numeric fields in order, `min_count`, `hash_buckets`).
    pub fn check_schema(&self, schema: &Schema, vocab_origin: &Path) -> Result<()> {
        if self.schema_fingerprint == schema.encoding_fingerprint() {
            return Ok(());
        }
        let names: Vec<&str> = self.categorical.iter().map(|c| c.name.as_str()).collect();
        let nums: Vec<&str> = self.numeric.iter().map(|n| n.name.as_str()).collect();
        let mut why = Vec::new();
        if names
            != schema
                .categorical
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        {
            why.push(format!(
                "categorical fields {names:?} vs schema {:?}",
                schema.categorical
            ));
        }
        if nums
            != schema
                .numeric
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        {
            why.push(format!(
                "numeric fields {nums:?} vs schema {:?}",
                schema.numeric
            ));
        }
        if self.min_count != schema.min_count {
            why.push(format!(
                "min_count {} vs schema {}",
                self.min_count, schema.min_count
            ));
        }
        if why.is_empty() {
            why.push("labels or hash_buckets differ".into());
        }
        Err(data_err(
            vocab_origin,
            None,
            None,
            format!(
                "this vocabulary was built for a different schema: {}",
                why.join("; ")
            ),
        ))
    }
}

/// Welford running mean / variance in f64 (sequential, so deterministic).
#[derive(Clone, Debug, Default)]
struct Welford {
    n: u64,
    mean: f64,
    m2: f64,
}

impl Welford {
    #[inline]
    fn push(&mut self, x: f64) {
        self.n += 1;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
    }
}

/// Per-field value counts gathered while streaming the training CSV.
enum Counter {
    /// raw value → provisional id (first-seen order); `counts[id]`.
    Values {
        ids: HashMap<Box<str>, u32, FastHash>,
        counts: Vec<u64>,
    },
    Hashed {
        buckets: u32,
    },
}

/// Builds a [`Vocab`] in one pass: rows are encoded with provisional ids that
/// [`VocabBuilder::finish`] turns into a remapping table.
pub(crate) struct VocabBuilder {
    fields: Vec<(String, Counter)>,
    numeric: Vec<(String, Welford)>,
}

impl VocabBuilder {
    pub fn new(schema: &Schema) -> Self {
        let fields = schema
            .categorical
            .iter()
            .map(|name| {
                let c = match schema.hash_buckets.get(name) {
                    Some(&b) => Counter::Hashed { buckets: b as u32 },
                    None => Counter::Values {
                        ids: HashMap::default(),
                        counts: Vec::new(),
                    },
                };
                (name.clone(), c)
            })
            .collect();
        let numeric = schema
            .numeric
            .iter()
            .map(|n| (n.clone(), Welford::default()))
            .collect();
        VocabBuilder { fields, numeric }
    }

    /// Counts a raw value of categorical field `f` and returns its provisional id: [`EMPTY`]
    /// for an empty cell, the final index for a hashed field.
    #[inline]
    pub fn observe(&mut self, f: usize, raw: &str) -> u32 {
        if raw.is_empty() {
            return EMPTY;
        }
        match &mut self.fields[f].1 {
            Counter::Hashed { buckets } => hash_bucket(raw, *buckets),
            Counter::Values { ids, counts } => {
                if let Some(&id) = ids.get(raw) {
                    counts[id as usize] += 1;
                    id
                } else {
                    let id = counts.len() as u32;
                    ids.insert(Box::from(raw), id);
                    counts.push(1);
                    id
                }
            }
        }
    }

    /// Adds a value of numeric field `n` to its running statistics.
    #[inline]
    pub fn observe_numeric(&mut self, n: usize, x: f64) {
        self.numeric[n].1.push(x);
    }

    /// Final vocabulary plus, per categorical field, `remap[provisional id] = final index`
    /// (empty for hashed fields, whose ids are already final).
    pub fn finish(self, schema: &Schema) -> (Vocab, Vec<Vec<u32>>) {
        let mut cats = Vec::with_capacity(self.fields.len());
        let mut remaps = Vec::with_capacity(self.fields.len());
        for (name, counter) in self.fields {
            match counter {
                Counter::Hashed { buckets } => {
                    cats.push(CategoricalVocab {
                        name,
                        encoding: Encoding::Hashed { buckets },
                    });
                    remaps.push(Vec::new());
                }
                Counter::Values { ids, counts } => {
                    let mut kept: Vec<(Box<str>, u32)> = ids
                        .into_iter()
                        .filter(|&(_, id)| counts[id as usize] >= schema.min_count)
                        .collect();
                    kept.sort_unstable_by(|a, b| {
                        counts[b.1 as usize]
                            .cmp(&counts[a.1 as usize])
                            .then_with(|| a.0.as_bytes().cmp(b.0.as_bytes()))
                    });
                    let mut remap = vec![0u32; counts.len()];
                    let mut values = Vec::with_capacity(kept.len());
                    for (i, (v, id)) in kept.into_iter().enumerate() {
                        remap[id as usize] = i as u32 + 1;
                        values.push(String::from(v));
                    }
                    cats.push(CategoricalVocab::from_values(name, values));
                    remaps.push(remap);
                }
            }
        }
        let numeric = self
            .numeric
            .into_iter()
            .map(|(name, w)| {
                let var = if w.n > 0 { w.m2 / w.n as f64 } else { 0.0 };
                let std = var.max(0.0).sqrt();
                NumericStats {
                    name,
                    mean: w.mean,
                    std: if std > 0.0 && std.is_finite() {
                        std
                    } else {
                        1.0
                    },
                }
            })
            .collect();
        let vocab = Vocab::new(
            schema.encoding_fingerprint(),
            schema.min_count,
            cats,
            numeric,
        );
        (vocab, remaps)
    }
}
