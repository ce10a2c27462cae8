//! Schema parsing, defaults, fingerprints, the presets, and filling a model configuration.

mod data_common;
use data_common::*;
use hmdn_cpu::config::{ModelConfig, ModelKind};
use hmdn_cpu::data::{configure_model, synth_schema, Dataset, Schema, DEFAULT_MIN_COUNT};
use std::path::Path;

#[test]
fn defaults_and_one_or_many() {
    let s = schema(
        "label = \"click\"\ncategorical = [\"a\", \"b\", \"c\"]\ndistribution = [\"a\", \"b\"]\n",
    );
    assert_eq!(s.label, ["click"]);
    assert_eq!(s.min_count, DEFAULT_MIN_COUNT);
    assert!(s.header);
    assert_eq!(s.domain_field(), Some("b")); // last distribution field
    assert_eq!(s.partition_fields(), ["a", "b"]); // the distribution fields
    assert_eq!(s.delimiter_byte(), None); // detect
    let m = schema(
        "label = [\"click\", \"buy\"]\ncategorical = [\"a\", \"b\"]\ndistribution = [\"a\", \"b\"]\ndomain = \"a\"\npartition = \"b\"\ndelimiter = \"tab\"\n",
    );
    assert_eq!(m.label, ["click", "buy"]);
    assert_eq!(m.domain_field(), Some("a"));
    assert_eq!(m.partition_fields(), ["b"]);
    assert_eq!(m.delimiter_byte(), Some(b'\t'));
    let none = schema("label = \"y\"\nnumeric = [\"x\"]\n");
    assert_eq!(none.domain_field(), None);
    assert!(none.partition_fields().is_empty());
    // TOML round trip.
    for x in [&s, &m, &none, &synth_schema()] {
        let back = Schema::from_toml(&x.to_toml(), Path::new("rt")).unwrap();
        assert_eq!(&back, x);
    }
}

#[test]
fn fingerprints_track_what_they_cover() {
    let base =
        "label = \"y\"\ncategorical = [\"a\", \"b\"]\nnumeric = [\"x\"]\ndistribution = [\"a\"]\n";
    let s = schema(base);
    let with = |extra: &str| schema(&format!("{base}{extra}"));
    // Encoding: categorical order, min_count, hashing change it; distribution, user do not.
    let e = s.encoding_fingerprint();
    assert_ne!(
        e,
        schema(&base.replace("[\"a\", \"b\"]", "[\"b\", \"a\"]")).encoding_fingerprint()
    );
    assert_ne!(e, with("min_count = 5\n").encoding_fingerprint());
    assert_ne!(e, with("[hash_buckets]\nb = 10\n").encoding_fingerprint());
    assert_eq!(
        e,
        schema(&base.replace(
            "distribution = [\"a\"]",
            "distribution = [\"b\"]\npartition = [\"a\"]"
        ))
        .encoding_fingerprint()
    );
    assert_eq!(e, with("user = \"a\"\n").encoding_fingerprint());
    // Cache: also partition, user and reading options.
    let c = s.cache_fingerprint();
    assert_ne!(c, with("user = \"a\"\n").cache_fingerprint());
    assert_ne!(c, with("partition = [\"b\"]\n").cache_fingerprint());
    assert_ne!(c, with("delimiter = \"tab\"\n").cache_fingerprint());
    assert_eq!(c, with("partition = [\"a\"]\n").cache_fingerprint()); // = the default
}

#[test]
fn presets_and_synth_schema_are_valid() {
    for name in [
        "movielens_100k_ctr.toml",
        "ali_ccp_aread.toml",
        "ali_ccp_torch_rechub.toml",
        "ali_ccp_aitm.toml",
    ] {
        let s = preset(name);
        assert!(!s.distribution.is_empty(), "{name}");
    }
    let rechub = preset("ali_ccp_torch_rechub.toml");
    assert_eq!((rechub.categorical.len(), rechub.numeric.len()), (23, 8));
    assert_eq!(preset("ali_ccp_aitm.toml").categorical.len(), 18);
    assert_eq!(preset("ali_ccp_aread.toml").domain_field(), Some("301"));
    let s = synth_schema();
    assert_eq!(s.domain_field(), Some("scenario"));
    assert!(s.ignore.contains(&"p_true".to_string()));
}

#[test]
fn configure_model_from_movielens() {
    let dir = TempDir::new("cfg");
    let schema = preset("movielens_100k_ctr.toml");
    let (_, vocab) = Dataset::open_train(
        shared("movielens_100k_ctr/train.csv"),
        &schema,
        &opts_in(&dir),
    )
    .unwrap();
    for kind in ModelKind::ALL {
        let mut cfg = ModelConfig {
            model: kind,
            ..ModelConfig::default()
        };
        configure_model(&mut cfg, &schema, &vocab).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.fields.len(), 10);
        assert_eq!(cfg.distribution, ["gender", "age", "occupation"]);
        assert_eq!(cfg.domain.as_deref(), Some("occupation"));
        assert_eq!(cfg.tasks, ["label"]);
        assert_eq!(cfg.fields[2].vocab_size, 3); // gender: M, F, unknown
    }
    // A vocabulary from another schema is refused.
    let mut cfg = ModelConfig::default();
    assert!(configure_model(&mut cfg, &preset("ali_ccp_aread.toml"), &vocab).is_err());
}
