//! Helpers shared by the `data_*` integration tests.
#![allow(dead_code)]

use hmdn_cpu::data::{LoadOptions, Schema};
use std::path::Path;

#[path = "../temp_dir/mod.rs"]
mod temp_dir;
#[allow(unused_imports)] // not every test crate reads the real data
pub use temp_dir::{shared, TempDir};

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

/// `fixtures/schemas/<name>` in the crate.
pub fn preset(name: &str) -> Schema {
    Schema::load(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/schemas")
            .join(name),
    )
    .unwrap()
}
