//! [`Dataset`]: a CSV file encoded once into a binary columnar cache and memory-mapped.
//!
//! First run over a CSV (one streaming pass, memory flat in the number of rows):
//! 1. parse each line, encode it (categorical → provisional id or final index, numeric → f64,
//!    labels → f32, partition cell and user → dense per-file ids) and append it as a fixed-size
//!    record to a row-major *spill* file; the content hash is computed on the same bytes;
//! 2. for the training split, turn the value counts into the vocabulary and the numeric
//!    statistics;
//! 3. transpose the spill into the columnar cache (remapping provisional ids, standardising
//!    numerics), written through one small buffer per column into a temporary file that is
//!    then renamed over the cache (atomic: readers never see a half-written cache).
//!
//! What stays in RAM is proportional to the number of *distinct* categorical values, users and
//! partition cells, never to the number of rows.
//!
//! Later runs: the cache header names the CSV's size and content hash, the schema's cache
//! fingerprint and the vocabulary's fingerprint; if all match, the file is memory-mapped and
//! nothing is parsed. The content (not the mtime) decides: `touch` keeps the cache, any edit
//! rebuilds it. Hashing reads the CSV once (3–4 GB/s from the page cache), much cheaper than
//! parsing it; `LoadOptions::trust_mtime` skips it when size and mtime are unchanged.
//!
//! Cache file layout (little-endian):
//! ```text
//! "HMDNCOL1" | meta_len: u64 | meta JSON (meta_len bytes) | pad to 64
//! columns, each rows × 4 bytes padded to 64, in this order:
//!   categorical f = 0..F (u32 index) | numeric n = 0..N (f32, standardised) |
//!   label t = 0..T (f32 0/1) | partition cell (u32) | user (u32, if `user`) | p_true (f32, if present)
//! ```
//!
//! Location: `<csv>.hmdn-cache` next to the CSV; if that directory is not writable (or
//! `LoadOptions::cache_dir` is set) `<dir>/<csv name>.<path hash>.hmdn-cache`, where the
//! default fallback dir is `$TMPDIR/hmdn-cpu-cache`.

use crate::data::csv::{data_err, hash_file, CsvReader};
use crate::data::hash::{fnv1a64, hex64, FastHash};
use crate::data::schema::{Schema, P_TRUE_COLUMN};
use crate::data::vocab::{Vocab, VocabBuilder, EMPTY};
use crate::error::{Error, Result};
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const MAGIC: &[u8; 8] = b"HMDNCOL1";
const FORMAT: u32 = 1;
/// Column alignment in the cache file (a cache line; keeps every column 4-byte aligned too).
const ALIGN: u64 = 64;
/// Per-column write buffer while transposing.
const COL_BUF: usize = 1 << 16;
/// Spill read / write buffer.
const SPILL_BUF: usize = 1 << 20;

/// How [`Dataset::open_train`] / [`Dataset::open`] find and use the cache.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Put caches here instead of next to the CSV.
    pub cache_dir: Option<PathBuf>,
    /// Rebuild the cache even if it looks valid.
    pub rebuild: bool,
    /// Accept a file without the label columns (prediction input); the dataset then has T = 0.
    pub allow_missing_labels: bool,
    /// Skip hashing the CSV when its size and modification time equal the cache's record
    /// (fast for huge files on slow disks; misses an edit that keeps both, e.g. `cp -p`). The
    /// recorded mtime is the one at build time, so after a `touch` the hash is checked again.
    pub trust_mtime: bool,
}

/// Whether opening a dataset parsed the CSV.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// A valid cache was memory-mapped; the CSV was only hashed.
    Reused,
    /// The CSV was parsed and the cache (re)written; the reason says why.
    Built {
        /// "no cache", "the CSV changed", "the schema changed", ...
        reason: String,
    },
}

/// Everything in a cache file besides the columns.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Meta {
    format: u32,
    csv_bytes: u64,
    /// Modification time when built (informational; the content hash decides validity).
    csv_mtime_ns: Option<u64>,
    csv_hash: String,
    /// The delimiter used (forced or detected).
    delimiter: char,
    cache_key: String,
    vocab_fingerprint: String,
    rows: u64,
    categorical: Vec<String>,
    numeric: Vec<String>,
    labels: Vec<String>,
    partition_fields: Vec<String>,
    /// Cell names in id order (`gender=M|age=18-24`).
    partition_cells: Vec<String>,
    user_field: Option<String>,
    users: u64,
    has_p_true: bool,
    /// The vocabulary built from this file (training caches only), as `vocab.json` text.
    vocab: Option<String>,
}

impl Meta {
    fn n_columns(&self) -> usize {
        self.categorical.len()
            + self.numeric.len()
            + self.labels.len()
            + 1
            + usize::from(self.user_field.is_some())
            + usize::from(self.has_p_true)
    }
}

fn align(x: u64) -> u64 {
    x.div_ceil(ALIGN) * ALIGN
}

/// Byte offset of the first column and the stride between columns.
fn column_layout(meta_len: u64, rows: u64) -> (u64, u64) {
    (align(16 + meta_len), align(rows * 4))
}

/// A unique temporary path next to `path` (same directory, so a rename is atomic).
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}.{n}", std::process::id()));
    path.with_file_name(name)
}

/// Deletes a file when dropped unless [`TempFile::keep`] was called (cleanup on error paths).
struct TempFile(Option<PathBuf>);

impl TempFile {
    fn keep(&mut self) {
        self.0 = None;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A value type a column can hold (4 bytes, little-endian in the cache).
pub trait ColumnValue: Copy {
    /// Decodes 4 little-endian bytes.
    fn from_le(b: [u8; 4]) -> Self;
}

impl ColumnValue for u32 {
    #[inline(always)]
    fn from_le(b: [u8; 4]) -> Self {
        u32::from_le_bytes(b)
    }
}

impl ColumnValue for f32 {
    #[inline(always)]
    fn from_le(b: [u8; 4]) -> Self {
        f32::from_le_bytes(b)
    }
}

/// A read-only view of one cached column (`rows` values).
///
/// Values are decoded from little-endian bytes on access, so no `unsafe` cast of the mapped
/// memory is needed; the compiler turns `get` into a plain load.
#[derive(Clone, Copy, Debug)]
pub struct Column<'a, T> {
    bytes: &'a [u8],
    _t: PhantomData<T>,
}

impl<'a, T: ColumnValue> Column<'a, T> {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.bytes.len() / 4
    }

    /// True if there are no values.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Value at row `i`.
    ///
    /// # Panics
    /// If `i >= len()` (programmer error).
    #[inline]
    #[track_caller]
    pub fn get(&self, i: usize) -> T {
        let b: [u8; 4] = self.bytes[4 * i..4 * i + 4].try_into().expect("4 bytes");
        T::from_le(b)
    }

    /// All values in row order.
    pub fn iter(&self) -> impl Iterator<Item = T> + 'a {
        self.bytes
            .chunks_exact(4)
            .map(|c| T::from_le(c.try_into().expect("4 bytes")))
    }

    /// The values copied into a vector.
    pub fn to_vec(&self) -> Vec<T> {
        self.iter().collect()
    }
}

/// An encoded, memory-mapped CSV file.
pub struct Dataset {
    csv: PathBuf,
    cache_path: PathBuf,
    map: Mmap,
    meta: Meta,
    data_start: u64,
    stride: u64,
    status: CacheStatus,
    domain_field: Option<usize>,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("csv", &self.csv)
            .field("cache", &self.cache_path)
            .field("rows", &self.meta.rows)
            .field("status", &self.status)
            .finish()
    }
}

/// What the vocabulary comes from.
enum VocabSource<'v> {
    /// Build it from this (training) file.
    Build,
    /// Use a given one.
    Given(&'v Vocab),
}

/// Column positions of the schema's roles in the file.
struct Roles {
    cat: Vec<usize>,
    num: Vec<usize>,
    labels: Vec<usize>,
    partition: Vec<usize>,
    user: Option<usize>,
    p_true: Option<usize>,
}

/// Matches the header against the schema: missing schema columns and unlisted file columns
/// are errors that list every offender.
fn resolve_roles(
    header: &[String],
    schema: &Schema,
    csv: &Path,
    header_line: Option<usize>,
    allow_missing_labels: bool,
) -> Result<Roles> {
    let pos: HashMap<&str, usize> = header
        .iter()
        .enumerate()
        .map(|(i, h)| (h.as_str(), i))
        .collect();
    let mut missing = Vec::new();
    let mut find = |name: &String, what: &str| -> usize {
        match pos.get(name.as_str()) {
            Some(&i) => i,
            None => {
                missing.push(format!("`{name}` ({what})"));
                usize::MAX
            }
        }
    };
    let cat: Vec<usize> = schema
        .categorical
        .iter()
        .map(|n| find(n, "categorical"))
        .collect();
    let num: Vec<usize> = schema.numeric.iter().map(|n| find(n, "numeric")).collect();
    let partition: Vec<usize> = schema
        .partition_fields()
        .iter()
        .map(|n| find(n, "partition"))
        .collect();
    let user = schema.user.as_ref().map(|u| find(u, "user"));
    let labels_present: Vec<bool> = schema
        .label
        .iter()
        .map(|l| pos.contains_key(l.as_str()))
        .collect();
    let labels: Vec<usize> = if allow_missing_labels && !labels_present.iter().any(|&p| p) {
        Vec::new()
    } else {
        schema.label.iter().map(|n| find(n, "label")).collect()
    };
    if !missing.is_empty() {
        return Err(data_err(
            csv,
            header_line,
            None,
            format!(
                "schema columns missing from the file: {}; the file has: {}",
                missing.join(", "),
                header.join(", ")
            ),
        ));
    }
    let mut listed: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for l in [
        &schema.label,
        &schema.categorical,
        &schema.numeric,
        &schema.ignore,
    ] {
        listed.extend(l.iter().map(String::as_str));
    }
    listed.extend(schema.partition_fields().iter().map(String::as_str));
    listed.extend(schema.user.as_deref());
    listed.insert(P_TRUE_COLUMN);
    let unlisted: Vec<&str> = header
        .iter()
        .map(String::as_str)
        .filter(|h| !listed.contains(h))
        .collect();
    if !unlisted.is_empty() {
        return Err(data_err(
            csv,
            header_line,
            None,
            format!(
                "columns in the file but in no schema list: {}; add each to `categorical`, `numeric` or `ignore`",
                unlisted.join(", ")
            ),
        ));
    }
    Ok(Roles {
        cat,
        num,
        labels,
        partition,
        user,
        p_true: pos.get(P_TRUE_COLUMN).copied(),
    })
}

/// Record layout of the spill file: `[F u32 | N f64 | T f32 | cell u32 | user u32? | p f32?]`.
struct SpillLayout {
    f: usize,
    n: usize,
    t: usize,
    user: bool,
    p_true: bool,
}

impl SpillLayout {
    fn record_len(&self) -> usize {
        4 * self.f
            + 8 * self.n
            + 4 * self.t
            + 4
            + 4 * usize::from(self.user)
            + 4 * usize::from(self.p_true)
    }
}

/// Parses a numeric cell (surrounding spaces allowed; must be finite).
fn parse_number(cell: &str) -> std::result::Result<f64, String> {
    match cell.trim().parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        Ok(_) => Err(format!("expected a finite number, found `{cell}`")),
        Err(_) if cell.trim().is_empty() => Err(
            "expected a number, found an empty cell (numeric fields need a value in every row)"
                .into(),
        ),
        Err(_) => Err(format!("expected a number, found `{cell}`")),
    }
}

/// Parses a label cell: 0 or 1 (also written as 0.0 / 1.0).
fn parse_label(cell: &str) -> std::result::Result<f32, String> {
    match cell.trim() {
        "0" => Ok(0.0),
        "1" => Ok(1.0),
        t => match t.parse::<f64>() {
            Ok(x) if x == 0.0 || x == 1.0 => Ok(x as f32),
            _ => Err(format!("expected a label 0 or 1, found `{cell}`")),
        },
    }
}

/// Modification time in ns since the epoch, if the platform reports it.
fn mtime_ns(md: &std::fs::Metadata) -> Option<u64> {
    md.modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_nanos() as u64)
}

/// Is this an error that means "cannot write here" (so another directory may work)?
fn is_unwritable(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), PermissionDenied | ReadOnlyFilesystem | NotFound)
}

/// Cache path inside a shared cache directory: unique per CSV path.
fn path_in_dir(dir: &Path, csv: &Path) -> PathBuf {
    let abs = std::fs::canonicalize(csv).unwrap_or_else(|_| csv.to_path_buf());
    let name = csv.file_name().unwrap_or_default().to_string_lossy();
    dir.join(format!(
        "{name}.{}.hmdn-cache",
        &hex64(fnv1a64(abs.to_string_lossy().as_bytes()))[..12]
    ))
}

/// Candidate cache paths, preferred first.
fn cache_candidates(csv: &Path, opts: &LoadOptions) -> Vec<PathBuf> {
    if let Some(d) = &opts.cache_dir {
        return vec![path_in_dir(d, csv)];
    }
    let mut name = csv.file_name().unwrap_or_default().to_os_string();
    name.push(".hmdn-cache");
    vec![
        csv.with_file_name(name),
        path_in_dir(&std::env::temp_dir().join("hmdn-cpu-cache"), csv),
    ]
}

/// Reads the header and meta of a cache file (no mapping).
fn read_meta(path: &Path) -> std::result::Result<(Meta, u64, u64), String> {
    let mut f = File::open(path).map_err(|_| "no cache".to_string())?;
    let file_len = f.metadata().map_err(|e| e.to_string())?.len();
    let mut head = [0u8; 16];
    f.read_exact(&mut head)
        .map_err(|_| "the cache is truncated".to_string())?;
    if &head[..8] != MAGIC {
        return Err("the cache file has a different format".into());
    }
    let meta_len = u64::from_le_bytes(head[8..].try_into().expect("8 bytes"));
    if meta_len > file_len {
        return Err("the cache is truncated".into());
    }
    let mut buf = vec![0u8; meta_len as usize];
    f.read_exact(&mut buf)
        .map_err(|_| "the cache is truncated".to_string())?;
    let meta: Meta =
        serde_json::from_slice(&buf).map_err(|_| "the cache header is unreadable".to_string())?;
    if meta.format != FORMAT {
        return Err("the cache format changed".into());
    }
    if meta.rows >= u64::from(u32::MAX) {
        return Err("the cache header is unreadable".into());
    }
    let (start, stride) = column_layout(meta_len, meta.rows);
    if file_len < start + stride * meta.n_columns() as u64 {
        return Err("the cache is truncated".into());
    }
    Ok((meta, start, stride))
}

impl Dataset {
    /// Opens a *training* file: its vocabulary and numeric statistics are built from it (or
    /// taken from its valid cache). Returns the dataset and that vocabulary.
    pub fn open_train(
        csv: impl AsRef<Path>,
        schema: &Schema,
        opts: &LoadOptions,
    ) -> Result<(Dataset, Vocab)> {
        let (mut ds, built) = Dataset::open_impl(csv.as_ref(), schema, VocabSource::Build, opts)?;
        // The embedded copy is only needed to recover the vocabulary from a reused cache.
        let text = ds
            .meta
            .vocab
            .take()
            .expect("training caches embed their vocabulary");
        let vocab = match built {
            Some(v) => v,
            None => Vocab::from_json(&text, &ds.cache_path)?,
        };
        Ok((ds, vocab))
    }

    /// Opens a validation / test / prediction file encoded with a given vocabulary (values
    /// unseen in it map to index 0). The vocabulary must belong to the schema.
    pub fn open(
        csv: impl AsRef<Path>,
        schema: &Schema,
        vocab: &Vocab,
        opts: &LoadOptions,
    ) -> Result<Dataset> {
        vocab.check_schema(schema, Path::new("vocab.json"))?;
        Ok(Dataset::open_impl(csv.as_ref(), schema, VocabSource::Given(vocab), opts)?.0)
    }

    fn open_impl(
        csv: &Path,
        schema: &Schema,
        source: VocabSource<'_>,
        opts: &LoadOptions,
    ) -> Result<(Dataset, Option<Vocab>)> {
        let md = std::fs::metadata(csv).map_err(|e| Error::io(csv, e))?;
        if md.is_dir() {
            return Err(data_err(
                csv,
                None,
                None,
                "expected a CSV file, found a directory",
            ));
        }
        let candidates = cache_candidates(csv, opts);
        let mut reason = if opts.rebuild {
            "a rebuild was requested".to_string()
        } else {
            "no cache".to_string()
        };
        if !opts.rebuild {
            // Hash the CSV at most once, and only if some cache file exists.
            let mut csv_id: Option<(u64, u64)> = None;
            for path in &candidates {
                if !path.exists() {
                    continue;
                }
                let (meta, start, stride) = match read_meta(path) {
                    Ok(m) => m,
                    Err(r) => {
                        reason = r;
                        continue;
                    }
                };
                if let Err(r) = Dataset::check_meta(&meta, schema, &source, opts, md.len()) {
                    reason = r;
                    continue;
                }
                let same_mtime = meta.csv_mtime_ns.is_some() && meta.csv_mtime_ns == mtime_ns(&md);
                if opts.trust_mtime && same_mtime {
                    let ds =
                        Dataset::map(csv, path, meta, start, stride, CacheStatus::Reused, schema)?;
                    return Ok((ds, None));
                }
                if csv_id.is_none() {
                    csv_id = Some(hash_file(csv)?);
                }
                let (bytes, hash) = csv_id.expect("just set");
                if bytes != meta.csv_bytes || hex64(hash) != meta.csv_hash {
                    reason = "the CSV changed".into();
                    continue;
                }
                let ds = Dataset::map(csv, path, meta, start, stride, CacheStatus::Reused, schema)?;
                return Ok((ds, None));
            }
        }
        Dataset::build(csv, schema, source, opts, &candidates, md, reason)
    }

    /// Why a cache cannot be used for this request, if it cannot.
    fn check_meta(
        meta: &Meta,
        schema: &Schema,
        source: &VocabSource<'_>,
        opts: &LoadOptions,
        csv_len: u64,
    ) -> std::result::Result<(), String> {
        if meta.csv_bytes != csv_len {
            return Err("the CSV changed".into());
        }
        if meta.cache_key != hex64(schema.cache_fingerprint()) {
            return Err("the schema changed".into());
        }
        if meta.labels.is_empty() && !opts.allow_missing_labels {
            return Err("the cache has no labels".into());
        }
        match source {
            VocabSource::Build => {
                if meta.vocab.is_none() {
                    return Err("the cache was encoded with another file's vocabulary".into());
                }
            }
            VocabSource::Given(v) => {
                if meta.vocab_fingerprint != hex64(v.fingerprint()) {
                    return Err("the vocabulary changed".into());
                }
            }
        }
        Ok(())
    }

    fn map(
        csv: &Path,
        path: &Path,
        meta: Meta,
        data_start: u64,
        stride: u64,
        status: CacheStatus,
        schema: &Schema,
    ) -> Result<Dataset> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: memmap2 requires that the mapped file is not modified or truncated while
        // mapped. Caches are only ever replaced by rename (a new inode), never written in
        // place, so a mapping keeps seeing the complete file it was opened on.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        if (map.len() as u64) < data_start + stride * meta.n_columns() as u64 {
            return Err(data_err(path, None, None, "the cache file is truncated"));
        }
        let domain_field = schema
            .domain_field()
            .and_then(|d| meta.categorical.iter().position(|c| c == d));
        Ok(Dataset {
            csv: csv.to_path_buf(),
            cache_path: path.to_path_buf(),
            map,
            meta,
            data_start,
            stride,
            status,
            domain_field,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        csv: &Path,
        schema: &Schema,
        source: VocabSource<'_>,
        opts: &LoadOptions,
        candidates: &[PathBuf],
        md: std::fs::Metadata,
        reason: String,
    ) -> Result<(Dataset, Option<Vocab>)> {
        // Pick the first candidate directory we can create a spill file in.
        let mut chosen = None;
        let mut last_err = None;
        for (i, path) in candidates.iter().enumerate() {
            // The CSV's own directory exists; a cache directory may have to be created.
            if opts.cache_dir.is_some() || i > 0 {
                if let Some(dir) = path.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
            }
            let spill = temp_path(path);
            match File::create(&spill) {
                Ok(f) => {
                    chosen = Some((path.clone(), spill, f));
                    break;
                }
                Err(e) if is_unwritable(&e) => last_err = Some((spill, e)),
                Err(e) => return Err(Error::io(&spill, e)),
            }
        }
        let (cache_path, spill_path, spill_file) = match chosen {
            Some(c) => c,
            None => {
                let (p, e) = last_err.expect("at least one candidate");
                return Err(Error::io(p, e));
            }
        };
        let mut spill_guard = TempFile(Some(spill_path.clone()));

        // ---- pass 1: CSV → spill -------------------------------------------------------
        let columns = (!schema.header).then_some(schema.columns.as_slice());
        let mut reader = CsvReader::open(csv, schema.delimiter_byte(), columns)?;
        let header_line = schema.header.then_some(reader.line_no());
        let roles = resolve_roles(
            reader.header(),
            schema,
            csv,
            header_line,
            opts.allow_missing_labels,
        )?;
        let header: Vec<String> = reader.header().to_vec();
        let delimiter = reader.delimiter();
        let layout = SpillLayout {
            f: roles.cat.len(),
            n: roles.num.len(),
            t: roles.labels.len(),
            user: roles.user.is_some(),
            p_true: roles.p_true.is_some(),
        };
        let mut builder = match source {
            VocabSource::Build => Some(VocabBuilder::new(schema)),
            VocabSource::Given(_) => None,
        };
        let given = match source {
            VocabSource::Given(v) => Some(v),
            VocabSource::Build => None,
        };
        let part_names: Vec<&str> = schema
            .partition_fields()
            .iter()
            .map(String::as_str)
            .collect();
        let mut cells: HashMap<Box<str>, u32, FastHash> = HashMap::default();
        let mut cell_names: Vec<String> = Vec::new();
        let mut users: HashMap<Box<str>, u32, FastHash> = HashMap::default();
        let mut key = String::new();
        let mut rec: Vec<u8> = Vec::with_capacity(layout.record_len());
        let mut spill = BufWriter::with_capacity(SPILL_BUF, spill_file);
        let mut rows: u64 = 0;
        let io_spill = |e: std::io::Error| Error::io(&spill_path, e);

        while let Some(r) = reader.next_record()? {
            rec.clear();
            let cell_err = |col: usize, msg: String| {
                data_err(
                    csv,
                    Some(r.line),
                    Some(col + 1),
                    format!("column `{}`: {msg}", header[col]),
                )
            };
            for (f, &c) in roles.cat.iter().enumerate() {
                let raw = r.get(c);
                let id = match (&mut builder, given) {
                    (Some(b), _) => b.observe(f, raw),
                    (None, Some(v)) => v.categorical()[f].index(raw),
                    (None, None) => unreachable!("one vocabulary source"),
                };
                rec.extend_from_slice(&id.to_le_bytes());
            }
            for (n, &c) in roles.num.iter().enumerate() {
                let x = parse_number(r.get(c)).map_err(|m| cell_err(c, m))?;
                if let Some(b) = &mut builder {
                    b.observe_numeric(n, x);
                }
                rec.extend_from_slice(&x.to_le_bytes());
            }
            for &c in &roles.labels {
                let y = parse_label(r.get(c)).map_err(|m| cell_err(c, m))?;
                rec.extend_from_slice(&y.to_le_bytes());
            }
            key.clear();
            for (i, &c) in roles.partition.iter().enumerate() {
                if i > 0 {
                    key.push('|');
                }
                key.push_str(part_names[i]);
                key.push('=');
                key.push_str(r.get(c));
            }
            let cell = match cells.get(key.as_str()) {
                Some(&id) => id,
                None => {
                    let id = cell_names.len() as u32;
                    cells.insert(Box::from(key.as_str()), id);
                    cell_names.push(key.clone());
                    id
                }
            };
            rec.extend_from_slice(&cell.to_le_bytes());
            if let Some(c) = roles.user {
                let raw = r.get(c);
                let id = match users.get(raw) {
                    Some(&id) => id,
                    None => {
                        let id = users.len() as u32;
                        users.insert(Box::from(raw), id);
                        id
                    }
                };
                rec.extend_from_slice(&id.to_le_bytes());
            }
            if let Some(c) = roles.p_true {
                let p = parse_number(r.get(c)).map_err(|m| cell_err(c, m))?;
                if !(0.0..=1.0).contains(&p) {
                    return Err(cell_err(
                        c,
                        format!("expected a probability in [0, 1], found {p}"),
                    ));
                }
                rec.extend_from_slice(&(p as f32).to_le_bytes());
            }
            spill.write_all(&rec).map_err(io_spill)?;
            rows += 1;
            if rows >= u64::from(u32::MAX) {
                return Err(data_err(
                    csv,
                    Some(r.line),
                    None,
                    "more than 4,294,967,294 rows are not supported",
                ));
            }
        }
        let data_lines = reader.line_no();
        let (csv_bytes, csv_hash) = reader.finish()?;
        if rows == 0 {
            return Err(data_err(
                csv,
                Some(data_lines.max(1)),
                None,
                "the file has no data rows (only a header)",
            ));
        }
        spill.flush().map_err(io_spill)?;
        drop(spill);

        // ---- vocabulary ---------------------------------------------------------------
        let (built, remaps) = match builder {
            Some(b) => {
                let (v, remaps) = b.finish(schema);
                (Some(v), remaps)
            }
            None => (None, vec![Vec::new(); layout.f]),
        };
        let vocab = built.as_ref().or(given).expect("one vocabulary source");
        let stats: Vec<(f64, f64)> = vocab.numeric().iter().map(|s| (s.mean, s.std)).collect();
        let vocab_fp = vocab.fingerprint();
        let vocab_json = built.as_ref().map(Vocab::to_json);

        // ---- pass 2: spill → columnar cache --------------------------------------------
        let meta = Meta {
            format: FORMAT,
            csv_bytes,
            csv_mtime_ns: mtime_ns(&md),
            csv_hash: hex64(csv_hash),
            delimiter: delimiter as char,
            cache_key: hex64(schema.cache_fingerprint()),
            vocab_fingerprint: hex64(vocab_fp),
            rows,
            categorical: schema.categorical.clone(),
            numeric: schema.numeric.clone(),
            labels: roles.labels.iter().map(|&c| header[c].clone()).collect(),
            partition_fields: schema.partition_fields().to_vec(),
            partition_cells: cell_names,
            user_field: schema.user.clone(),
            users: users.len() as u64,
            has_p_true: roles.p_true.is_some(),
            vocab: vocab_json,
        };
        drop(users);
        drop(cells);
        let meta_bytes = serde_json::to_vec(&meta).expect("meta serialises");
        let (data_start, stride) = column_layout(meta_bytes.len() as u64, rows);
        let n_cols = meta.n_columns();
        let total = data_start + stride * n_cols as u64;

        let out_path = temp_path(&cache_path);
        let mut out_guard = TempFile(Some(out_path.clone()));
        let io_out = |e: std::io::Error| Error::io(&out_path, e);
        let mut out = File::create(&out_path).map_err(io_out)?;
        out.set_len(total).map_err(io_out)?;
        out.write_all(MAGIC).map_err(io_out)?;
        out.write_all(&(meta_bytes.len() as u64).to_le_bytes())
            .map_err(io_out)?;
        out.write_all(&meta_bytes).map_err(io_out)?;

        let mut cols: Vec<ColWriter> = (0..n_cols)
            .map(|c| ColWriter {
                offset: data_start + stride * c as u64,
                buf: Vec::with_capacity(COL_BUF),
            })
            .collect();
        let mut input =
            BufReader::with_capacity(SPILL_BUF, File::open(&spill_path).map_err(io_spill)?);
        let rl = layout.record_len();
        let mut rec = vec![0u8; rl];
        for _ in 0..rows {
            input.read_exact(&mut rec).map_err(io_spill)?;
            let mut p = 0;
            let mut c = 0;
            for remap in &remaps {
                let id = u32::from_le_bytes(rec[p..p + 4].try_into().expect("4"));
                let fin = if id == EMPTY {
                    0
                } else if remap.is_empty() {
                    id
                } else {
                    remap[id as usize]
                };
                cols[c].push(&mut out, fin.to_le_bytes()).map_err(io_out)?;
                p += 4;
                c += 1;
            }
            for &(mean, std) in &stats {
                let x = f64::from_le_bytes(rec[p..p + 8].try_into().expect("8"));
                let z = ((x - mean) / std) as f32;
                cols[c].push(&mut out, z.to_le_bytes()).map_err(io_out)?;
                p += 8;
                c += 1;
            }
            // Labels, cell, user, p_true: copied as they are.
            while p < rl {
                let b: [u8; 4] = rec[p..p + 4].try_into().expect("4");
                cols[c].push(&mut out, b).map_err(io_out)?;
                p += 4;
                c += 1;
            }
        }
        for col in &mut cols {
            col.flush(&mut out).map_err(io_out)?;
        }
        out.flush().map_err(io_out)?;
        drop(out);
        drop(input);
        std::fs::rename(&out_path, &cache_path).map_err(|e| Error::io(&cache_path, e))?;
        out_guard.keep();
        if let Some(p) = spill_guard.0.take() {
            let _ = std::fs::remove_file(p);
        }
        let ds = Dataset::map(
            csv,
            &cache_path,
            meta,
            data_start,
            stride,
            CacheStatus::Built { reason },
            schema,
        )?;
        Ok((ds, built))
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.meta.rows as usize
    }

    /// The CSV file this dataset was read from.
    pub fn csv_path(&self) -> &Path {
        &self.csv
    }

    /// The cache file that is mapped.
    pub fn cache_path(&self) -> &Path {
        &self.cache_path
    }

    /// Whether this open parsed the CSV or reused a cache.
    pub fn cache_status(&self) -> &CacheStatus {
        &self.status
    }

    /// Categorical field names (F), in input order.
    pub fn categorical_names(&self) -> &[String] {
        &self.meta.categorical
    }

    /// Numeric field names (N), in input order.
    pub fn numeric_names(&self) -> &[String] {
        &self.meta.numeric
    }

    /// Task (label) names (T; empty for an unlabeled file).
    pub fn label_names(&self) -> &[String] {
        &self.meta.labels
    }

    /// F.
    pub fn n_categorical(&self) -> usize {
        self.meta.categorical.len()
    }

    /// N.
    pub fn n_numeric(&self) -> usize {
        self.meta.numeric.len()
    }

    /// T.
    pub fn n_tasks(&self) -> usize {
        self.meta.labels.len()
    }

    fn column<T: ColumnValue>(&self, c: usize) -> Column<'_, T> {
        let start = (self.data_start + self.stride * c as u64) as usize;
        Column {
            bytes: &self.map[start..start + 4 * self.rows()],
            _t: PhantomData,
        }
    }

    /// Categorical field `f`: vocabulary indices per row.
    ///
    /// # Panics
    /// If `f >= F` (programmer error).
    #[track_caller]
    pub fn cat(&self, f: usize) -> Column<'_, u32> {
        assert!(
            f < self.n_categorical(),
            "categorical field {f} out of range"
        );
        self.column(f)
    }

    /// Numeric field `n`: standardised values per row.
    ///
    /// # Panics
    /// If `n >= N` (programmer error).
    #[track_caller]
    pub fn num(&self, n: usize) -> Column<'_, f32> {
        assert!(n < self.n_numeric(), "numeric field {n} out of range");
        self.column(self.n_categorical() + n)
    }

    /// Labels of task `t` (0.0 / 1.0) per row.
    ///
    /// # Panics
    /// If `t >= T` (programmer error).
    #[track_caller]
    pub fn label(&self, t: usize) -> Column<'_, f32> {
        assert!(t < self.n_tasks(), "task {t} out of range");
        self.column(self.n_categorical() + self.n_numeric() + t)
    }

    fn aux_base(&self) -> usize {
        self.n_categorical() + self.n_numeric() + self.n_tasks()
    }

    /// The partition fields (cells are combinations of their raw values).
    pub fn partition_fields(&self) -> &[String] {
        &self.meta.partition_fields
    }

    /// Partition cell names in id order, e.g. `gender=M|age=18-24` (an empty partition gives
    /// one cell named "").
    pub fn partition_cells(&self) -> &[String] {
        &self.meta.partition_cells
    }

    /// Partition cell id per row (index into [`Dataset::partition_cells`]).
    pub fn partition(&self) -> Column<'_, u32> {
        self.column(self.aux_base())
    }

    /// The user field, if the schema names one.
    pub fn user_field(&self) -> Option<&str> {
        self.meta.user_field.as_deref()
    }

    /// Number of distinct users in this file.
    pub fn n_users(&self) -> usize {
        self.meta.users as usize
    }

    /// Dense user id per row (0..n_users, in first-seen order of this file), for gAUC.
    pub fn user(&self) -> Option<Column<'_, u32>> {
        self.meta
            .user_field
            .is_some()
            .then(|| self.column(self.aux_base() + 1))
    }

    /// True click probability of the first task per row, if the file has a `p_true` column.
    pub fn p_true(&self) -> Option<Column<'_, f32>> {
        self.meta
            .has_p_true
            .then(|| self.column(self.aux_base() + 1 + usize::from(self.meta.user_field.is_some())))
    }

    /// Position of the Shared-Bottom domain field among the categorical fields.
    pub fn domain_field_index(&self) -> Option<usize> {
        self.domain_field
    }

    /// Domain index (the domain field's vocabulary index) per row.
    pub fn domain(&self) -> Option<Column<'_, u32>> {
        self.domain_field.map(|f| self.cat(f))
    }

    /// The CSV delimiter that was used (forced by the schema or detected).
    pub fn delimiter(&self) -> char {
        self.meta.delimiter
    }

    /// Fingerprint of the vocabulary the rows were encoded with.
    pub fn vocab_fingerprint(&self) -> &str {
        &self.meta.vocab_fingerprint
    }
}

/// Buffered writer of one column at its own file offset.
struct ColWriter {
    offset: u64,
    buf: Vec<u8>,
}

impl ColWriter {
    #[inline]
    fn push(&mut self, out: &mut File, v: [u8; 4]) -> std::io::Result<()> {
        self.buf.extend_from_slice(&v);
        if self.buf.len() >= COL_BUF {
            self.flush(out)?;
        }
        Ok(())
    }

    fn flush(&mut self, out: &mut File) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        out.seek(SeekFrom::Start(self.offset))?;
        out.write_all(&self.buf)?;
        self.offset += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}
