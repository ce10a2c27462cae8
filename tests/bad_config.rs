//! Bad model configurations give a clear `Error::Config`, never a panic (issue: explicit mode
//! with mismatched dims, K = 0, D = 0, unknown model or field name, a distribution field that
//! is not categorical).

mod temp_dir;
use temp_dir::TempDir;

use hmdn_cpu::config::{ModelConfig, ModelKind, RqMode};
use hmdn_cpu::error::Error;
use hmdn_cpu::gradcheck::tiny_config;
use hmdn_cpu::model::Model;

fn build_err(cfg: &ModelConfig) -> String {
    match Model::<f32>::new(cfg, 1) {
        Ok(_) => panic!("configuration {cfg:?} was accepted"),
        Err(e) => {
            assert!(
                matches!(e, Error::Config(_)),
                "not a configuration error: {e:?}"
            );
            e.to_string()
        }
    }
}

#[test]
fn codebook_size_zero() {
    let mut cfg = tiny_config(ModelKind::HmdnMmoe);
    cfg.rq.codebook_size = 0;
    let msg = build_err(&cfg);
    assert!(msg.contains("codebook_size") && msg.contains("K"), "{msg}");
}

#[test]
fn depth_zero() {
    let mut cfg = tiny_config(ModelKind::HmdnPepnet);
    cfg.rq.depth = 0;
    let msg = build_err(&cfg);
    assert!(msg.contains("depth") && msg.contains("D"), "{msg}");
}

#[test]
fn explicit_mode_with_mismatched_depth() {
    let mut cfg = tiny_config(ModelKind::HmdnMmoe);
    cfg.rq.mode = RqMode::Explicit;
    cfg.rq.depth = cfg.distribution.len() + 2;
    let msg = build_err(&cfg);
    assert!(
        msg.contains("explicit") && msg.contains(&cfg.distribution.len().to_string()),
        "{msg}"
    );
    // depth 0 (automatic) and depth = P are fine.
    cfg.rq.depth = 0;
    Model::<f32>::new(&cfg, 1).unwrap();
    cfg.rq.depth = cfg.distribution.len();
    Model::<f32>::new(&cfg, 1).unwrap();
}

#[test]
fn unknown_model_name() {
    let e = ModelKind::parse("hmdn-transformer")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("hmdn-transformer") && e.contains("hmdn-mmoe") && e.contains("dnn"),
        "{e}"
    );
}

#[test]
fn unknown_distribution_field() {
    let mut cfg = tiny_config(ModelKind::Mmoe);
    cfg.distribution.push("no_such_field".into());
    let msg = build_err(&cfg);
    assert!(
        msg.contains("no_such_field") && msg.contains("city"),
        "{msg}"
    );
}

#[test]
fn unknown_domain_field() {
    let mut cfg = tiny_config(ModelKind::SharedBottom);
    cfg.domain = Some("nope".into());
    let msg = build_err(&cfg);
    assert!(msg.contains("nope"), "{msg}");
}

#[test]
fn distribution_field_that_is_numeric_is_rejected() {
    // "price" is a numeric input of the tiny configuration, not a categorical field.
    let mut cfg = tiny_config(ModelKind::HmdnMmoe);
    cfg.distribution = vec!["price".into()];
    let msg = build_err(&cfg);
    assert!(
        msg.contains("price") && msg.contains("not a categorical field"),
        "{msg}"
    );
}

#[test]
fn gated_model_without_distribution_fields() {
    for kind in [
        ModelKind::Mmoe,
        ModelKind::Pepnet,
        ModelKind::HmdnMmoe,
        ModelKind::HmdnPepnet,
    ] {
        let mut cfg = tiny_config(kind);
        cfg.distribution.clear();
        let msg = build_err(&cfg);
        assert!(msg.contains("distribution field"), "{kind}: {msg}");
    }
}

#[test]
fn zero_sizes() {
    let mut cfg = tiny_config(ModelKind::Dnn);
    cfg.embed_dim = 0;
    assert!(build_err(&cfg).contains("embed_dim"));
    let mut cfg = tiny_config(ModelKind::Dnn);
    cfg.hidden = vec![4, 0];
    assert!(build_err(&cfg).contains("hidden"));
    let mut cfg = tiny_config(ModelKind::Mmoe);
    cfg.n_experts = 0;
    assert!(build_err(&cfg).contains("n_experts"));
    let mut cfg = tiny_config(ModelKind::Dnn);
    cfg.tasks.clear();
    assert!(build_err(&cfg).contains("task"));
    let mut cfg = tiny_config(ModelKind::Dnn);
    cfg.fields[0].vocab_size = 0;
    assert!(build_err(&cfg).contains("vocabulary"));
}

#[test]
fn config_file_with_unknown_key_is_a_located_error() {
    let dir = TempDir::new("badcfg");
    let p = dir.write("run.toml", "[model]\nembed_dim = 8\ncodebok_size = 3\n");
    let e = hmdn_cpu::train::RunConfig::load(&p)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("run.toml:3:") && e.contains("codebok_size"),
        "{e}"
    );
}
