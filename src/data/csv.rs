//! A streaming CSV reader: one reusable line buffer, fields as slices into it, the file's
//! content hash computed on the bytes as they are read.
//!
//! Dialect: one record per line (`\n` or `\r\n`); the delimiter is forced by the schema or
//! detected from the first line (tab if it has more tabs than commas, else comma); fields may be
//! double-quoted with `""` as an escaped quote, but a quoted field cannot span lines; blank lines
//! are skipped; a UTF-8 byte-order mark before the header is dropped. Cells are used exactly as
//! written (no trimming), except that numeric and label parsing accept surrounding spaces.

use crate::data::hash::ContentHasher;
use crate::error::{Error, Result};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// Read buffer size: large enough that syscalls are a negligible part of parsing.
const READ_BUF: usize = 1 << 20;
/// Longest line the reader accepts, in bytes. A CTR row is at most a few KiB; the cap turns a
/// file without line breaks (a binary file, `/dev/zero`) into an error at its first line
/// instead of an ever-growing buffer.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// An [`Error::Data`] at a place in a file.
pub(crate) fn data_err(
    file: &Path,
    line: Option<usize>,
    column: Option<usize>,
    msg: impl Into<String>,
) -> Error {
    Error::Data {
        file: file.to_path_buf(),
        line,
        column,
        msg: msg.into(),
    }
}

/// A `Read` adapter that feeds every byte it passes on into a [`ContentHasher`].
struct HashingReader<R> {
    inner: R,
    hasher: ContentHasher,
    bytes: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Streams the records of one CSV file.
pub(crate) struct CsvReader {
    input: BufReader<HashingReader<File>>,
    path: PathBuf,
    delim: u8,
    /// Column names (from the header line or the schema).
    header: Vec<String>,
    /// 1-based number of the line in `line`.
    line_no: usize,
    /// The current line without its line ending.
    line: Vec<u8>,
    /// `line` holds a record that has not been handed out yet (header-less files).
    pending: bool,
    /// Field boundaries `[start, end)` into `line` or `unquoted`.
    ranges: Vec<(usize, usize)>,
    /// Field contents of a line that had quotes, with quotes removed.
    unquoted: Vec<u8>,
    quoted_line: bool,
}

/// One record; fields borrow the reader's buffers.
pub(crate) struct Record<'a> {
    text: &'a str,
    ranges: &'a [(usize, usize)],
    /// 1-based line number in the file.
    pub line: usize,
}

impl<'a> Record<'a> {
    /// Field `i` (0-based column).
    #[inline]
    pub fn get(&self, i: usize) -> &'a str {
        let (s, e) = self.ranges[i];
        &self.text[s..e]
    }
}

/// Tab if the line has more tabs than commas, else comma.
fn detect_delimiter(line: &[u8]) -> u8 {
    let tabs = line.iter().filter(|&&b| b == b'\t').count();
    let commas = line.iter().filter(|&&b| b == b',').count();
    if tabs > commas {
        b'\t'
    } else {
        b','
    }
}

impl CsvReader {
    /// Opens `path` and reads the header (or, with `columns`, takes the names from the schema).
    pub fn open(path: &Path, forced_delim: Option<u8>, columns: Option<&[String]>) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let input = BufReader::with_capacity(
            READ_BUF,
            HashingReader {
                inner: file,
                hasher: ContentHasher::new(),
                bytes: 0,
            },
        );
        let mut r = CsvReader {
            input,
            path: path.to_path_buf(),
            delim: b',',
            header: Vec::new(),
            line_no: 0,
            line: Vec::new(),
            pending: false,
            ranges: Vec::new(),
            unquoted: Vec::new(),
            quoted_line: false,
        };
        if !r.read_line()? {
            return Err(data_err(
                path,
                None,
                None,
                "the file is empty; expected a header line and data rows",
            ));
        }
        if r.line.starts_with(b"\xef\xbb\xbf") {
            r.line.drain(..3);
        }
        r.delim = forced_delim.unwrap_or_else(|| detect_delimiter(&r.line));
        match columns {
            None => {
                r.split_current()?;
                let text = std::str::from_utf8(r.current_bytes()).expect("checked in split");
                r.header = r
                    .ranges
                    .iter()
                    .map(|&(s, e)| text[s..e].trim().to_string())
                    .collect();
                let mut seen = std::collections::HashSet::new();
                for (i, h) in r.header.iter().enumerate() {
                    if h.is_empty() {
                        return Err(data_err(
                            path,
                            Some(r.line_no),
                            Some(i + 1),
                            "empty column name in the header",
                        ));
                    }
                    if !seen.insert(h.as_str()) {
                        return Err(data_err(
                            path,
                            Some(r.line_no),
                            Some(i + 1),
                            format!("column `{h}` appears twice in the header"),
                        ));
                    }
                }
            }
            Some(cols) => {
                r.header = cols.to_vec();
                r.pending = true;
            }
        }
        Ok(r)
    }

    /// Column names in file order.
    pub fn header(&self) -> &[String] {
        &self.header
    }

    /// The delimiter in use.
    pub fn delimiter(&self) -> u8 {
        self.delim
    }

    /// Line number of the last line read (the header line after `open`).
    pub fn line_no(&self) -> usize {
        self.line_no
    }

    /// Reads the next non-blank line into `self.line`; false at end of file.
    fn read_line(&mut self) -> Result<bool> {
        loop {
            self.line.clear();
            let n = Read::by_ref(&mut self.input)
                .take(MAX_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut self.line)
                .map_err(|e| Error::io(&self.path, e))?;
            if n == 0 {
                return Ok(false);
            }
            self.line_no += 1;
            if n > MAX_LINE_BYTES && self.line.last() != Some(&b'\n') {
                return Err(data_err(
                    &self.path,
                    Some(self.line_no),
                    None,
                    format!(
                        "the line is longer than {} MiB; expected one CSV row per line",
                        MAX_LINE_BYTES >> 20
                    ),
                ));
            }
            if self.line.last() == Some(&b'\n') {
                self.line.pop();
            }
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            if !self.line.is_empty() {
                return Ok(true);
            }
        }
    }

    fn current_bytes(&self) -> &[u8] {
        if self.quoted_line {
            &self.unquoted
        } else {
            &self.line
        }
    }

    /// Splits `self.line` into `self.ranges` (validating UTF-8 and quotes).
    fn split_current(&mut self) -> Result<()> {
        if std::str::from_utf8(&self.line).is_err() {
            return Err(data_err(
                &self.path,
                Some(self.line_no),
                None,
                "the line is not valid UTF-8",
            ));
        }
        self.ranges.clear();
        let d = self.delim;
        if !self.line.contains(&b'"') {
            self.quoted_line = false;
            let mut start = 0;
            for (i, &b) in self.line.iter().enumerate() {
                if b == d {
                    self.ranges.push((start, i));
                    start = i + 1;
                }
            }
            self.ranges.push((start, self.line.len()));
            return Ok(());
        }
        // Slow path: unquote every field into `unquoted`.
        self.quoted_line = true;
        self.unquoted.clear();
        let line = &self.line;
        let mut i = 0;
        let mut field = 1;
        loop {
            let start = self.unquoted.len();
            if i < line.len() && line[i] == b'"' {
                i += 1;
                loop {
                    if i >= line.len() {
                        return Err(data_err(
                            &self.path,
                            Some(self.line_no),
                            Some(field),
                            "unterminated quoted field (a quoted field must end on the same line)",
                        ));
                    }
                    if line[i] == b'"' {
                        if i + 1 < line.len() && line[i + 1] == b'"' {
                            self.unquoted.push(b'"');
                            i += 2;
                        } else {
                            i += 1;
                            break;
                        }
                    } else {
                        self.unquoted.push(line[i]);
                        i += 1;
                    }
                }
                if i < line.len() && line[i] != d {
                    return Err(data_err(
                        &self.path,
                        Some(self.line_no),
                        Some(field),
                        "unexpected character after a closing quote (expected the delimiter)",
                    ));
                }
            } else {
                while i < line.len() && line[i] != d {
                    self.unquoted.push(line[i]);
                    i += 1;
                }
            }
            self.ranges.push((start, self.unquoted.len()));
            if i >= line.len() {
                break;
            }
            i += 1; // the delimiter
            field += 1;
        }
        Ok(())
    }

    /// The next data record, or `None` at end of file. A record whose field count differs from
    /// the header is an error.
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>> {
        if self.pending {
            self.pending = false;
        } else if !self.read_line()? {
            return Ok(None);
        }
        self.split_current()?;
        if self.ranges.len() != self.header.len() {
            return Err(data_err(
                &self.path,
                Some(self.line_no),
                None,
                format!(
                    "the row has {} fields but the header has {} (delimiter {:?})",
                    self.ranges.len(),
                    self.header.len(),
                    self.delim as char
                ),
            ));
        }
        let bytes = self.current_bytes();
        Ok(Some(Record {
            text: std::str::from_utf8(bytes).expect("validated above"),
            ranges: &self.ranges,
            line: self.line_no,
        }))
    }

    /// Reads to the end (if not there yet) and returns `(bytes, content hash)` of the file.
    pub fn finish(mut self) -> Result<(u64, u64)> {
        let mut sink = [0u8; 1 << 16];
        loop {
            let n = self
                .input
                .read(&mut sink)
                .map_err(|e| Error::io(&self.path, e))?;
            if n == 0 {
                break;
            }
        }
        let h = self.input.get_ref();
        Ok((h.bytes, h.hasher.finish()))
    }
}

/// `(bytes, content hash)` of a whole file, streamed in 1 MiB reads.
pub(crate) fn hash_file(path: &Path) -> Result<(u64, u64)> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buf = vec![0u8; READ_BUF];
    let mut h = ContentHasher::new();
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, h.finish()))
}
