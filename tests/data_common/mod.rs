//! Helpers shared by the `data_*` integration tests.
#![allow(dead_code)]

use hmdn_cpu::data::{LoadOptions, Schema};
use std::path::{Path, PathBuf};

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "hmdn-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `text` to `name` and returns the path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Schema from TOML text (panics on error: tests of valid schemas).
pub fn schema(text: &str) -> Schema {
    Schema::from_toml(text, Path::new("test.toml")).unwrap()
}

/// Load options with caches in `dir`.
pub fn opts_in(dir: &TempDir) -> LoadOptions {
    LoadOptions {
        cache_dir: Some(dir.path("cache")),
        ..LoadOptions::default()
    }
}

/// `../shared/data/<rel>` relative to the crate root.
pub fn shared(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(rel)
}

/// `fixtures/schemas/<name>` in the crate.
pub fn preset(name: &str) -> Schema {
    Schema::load(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/schemas")
            .join(name),
    )
    .unwrap()
}
