//! Errors for everything that comes from the world (files, configurations, data), each with
//! the context a user needs to act on it.

use std::fmt;
use std::path::PathBuf;

/// Any error hmdn-cpu reports to a user.
#[derive(Debug)]
pub enum Error {
    /// The model configuration is inconsistent (dims, K = 0, unknown names...).
    Config(String),
    /// A data or schema problem at a known place in a file.
    Data {
        /// File the problem is in.
        file: PathBuf,
        /// 1-based line, if known.
        line: Option<usize>,
        /// 1-based column (field position), if known.
        column: Option<usize>,
        /// What was found and what was expected.
        msg: String,
    },
    /// An I/O failure on a named path.
    Io {
        /// Path being read or written.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A checkpoint or fixture that cannot be read or does not match the model.
    Checkpoint(String),
    /// Training diverged (non-finite loss) at a step.
    Diverged {
        /// Global step at which the loss was not finite.
        step: u64,
        /// What was non-finite.
        what: String,
    },
    /// The work asked for needs more memory than the system has available.
    Memory(String),
    /// Anything else with a message.
    Other(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(m) => write!(f, "invalid configuration: {m}"),
            Error::Data {
                file,
                line,
                column,
                msg,
            } => {
                write!(f, "{}", file.display())?;
                if let Some(l) = line {
                    write!(f, ":{l}")?;
                }
                if let Some(c) = column {
                    write!(f, ":{c}")?;
                }
                write!(f, ": {msg}")
            }
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Checkpoint(m) => write!(f, "checkpoint: {m}"),
            Error::Diverged { step, what } => write!(f, "training diverged at step {step}: {what}"),
            Error::Memory(m) => write!(f, "not enough memory: {m}"),
            Error::Other(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Largest settings file (schema or config TOML) [`read_settings_file`] reads, in bytes.
pub const MAX_SETTINGS_BYTES: u64 = 16 << 20;

/// Reads a settings file (schema or config TOML) as text. A file larger than
/// [`MAX_SETTINGS_BYTES`] (or endless, such as a device) is an error naming it rather than a
/// read that never ends.
pub fn read_settings_file(path: &std::path::Path) -> Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_SETTINGS_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > MAX_SETTINGS_BYTES {
        return Err(Error::Data {
            file: path.to_path_buf(),
            line: None,
            column: None,
            msg: format!(
                "larger than {} MiB; expected a small TOML file",
                MAX_SETTINGS_BYTES >> 20
            ),
        });
    }
    String::from_utf8(bytes).map_err(|e| Error::Data {
        file: path.to_path_buf(),
        line: None,
        column: None,
        msg: format!(
            "not valid UTF-8 text (at byte {}); expected a TOML file",
            e.utf8_error().valid_up_to()
        ),
    })
}

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
