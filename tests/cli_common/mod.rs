//! Helpers shared by the tests that run the `hmdn-cpu` binary (`cli`, `bad_input`, `resume`,
//! `real_data`): private temp directories, a command builder that points the child's cache at
//! one of them, and output capture.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The binary under test, built by cargo for this test profile.
pub const BIN: &str = env!("CARGO_BIN_EXE_hmdn-cpu");

#[path = "../temp_dir/mod.rs"]
mod temp_dir;
#[allow(unused_imports)] // not every test crate reads the real data
pub use temp_dir::{shared, TempDir};

impl TempDir {
    /// A command running the binary with `HMDN_CACHE_DIR` inside this directory.
    pub fn cmd<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args).env("HMDN_CACHE_DIR", self.path("cache"));
        c
    }

    /// Runs the binary to completion and captures its output.
    pub fn run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Run {
        Run::from(self.cmd(args).output().expect("cannot start hmdn-cpu"))
    }
}

/// Exit code and decoded output of one run.
pub struct Run {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Panics with the whole output unless the run exited with 0.
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code,
            Some(0),
            "hmdn-cpu failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

/// `fixtures/schemas/<name>`.
pub fn schema_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/schemas")
        .join(name)
}

/// Writes a synthetic train / validation split of one world (seed 7) and its schema into
/// `dir`; returns `(train, val, schema)`.
pub fn synth_split(
    dir: &TempDir,
    train_rows: usize,
    val_rows: usize,
) -> (PathBuf, PathBuf, PathBuf) {
    let (train, val, schema) = (
        dir.path("train.csv"),
        dir.path("val.csv"),
        dir.path("schema.toml"),
    );
    hmdn_cpu::data::synth::generate_split(train_rows, val_rows, 7, &train, &val).unwrap();
    std::fs::write(&schema, hmdn_cpu::data::synth_schema().to_toml()).unwrap();
    (train, val, schema)
}

/// Data lines of a CSV file (header excluded).
pub fn data_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().skip(1).map(str::to_string).collect()
}

/// Files left in `dir` (recursively) whose names mark an unfinished atomic write.
pub fn temp_leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(temp_leftovers(&p));
        } else if e.file_name().to_string_lossy().contains(".tmp-") {
            out.push(p);
        }
    }
    out
}
