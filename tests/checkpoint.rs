//! Save → load round trips of weights and optimiser state are bit-exact, and mismatches are
//! reported as errors, not panics.

mod temp_dir;
use temp_dir::TempDir;

use hmdn_cpu::checkpoint::{
    load_optimizer, load_weights, optimizer_to_bytes, save_weights, write_atomic,
};
use hmdn_cpu::optim::{OptimConfig, Optimizer, SparseRows};
use hmdn_cpu::params::{Init, ParamKind, ParamStore};
use rand::SeedableRng;

fn store(seed: u64, rows: usize) -> ParamStore<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut ps = ParamStore::new();
    ps.add(
        "embedding.user.weight",
        &[rows, 4],
        ParamKind::Embedding,
        Init::Normal(0.5),
        &mut rng,
    );
    ps.add(
        "dnn.layers.0.weight",
        &[3, 4],
        ParamKind::Dense,
        Init::Uniform(0.5),
        &mut rng,
    );
    ps.add(
        "dnn.layers.0.bias",
        &[3],
        ParamKind::Dense,
        Init::Uniform(0.5),
        &mut rng,
    );
    // Awkward values must survive too.
    ps.values_mut()[0] = f32::MIN_POSITIVE / 2.0; // subnormal
    ps.values_mut()[1] = -0.0;
    ps.values_mut()[2] = f32::MAX;
    ps
}

#[test]
fn weights_round_trip_is_bit_exact() {
    let dir = TempDir::new("ckpt-w");
    let a = store(1, 5);
    let path = dir.path("weights.safetensors");
    save_weights(&path, &a).unwrap();
    let mut b = store(2, 5);
    assert_ne!(a.values(), b.values());
    load_weights(&path, &mut b).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(a.values()), bits(b.values()));
}

#[test]
fn optimizer_round_trip_is_bit_exact() {
    let dir = TempDir::new("ckpt-o");
    let mut ps = store(3, 5);
    let mut opt = Optimizer::new(&ps, OptimConfig::default());
    ps.values_mut()[2] = 0.25;
    for g in ps.grads.iter_mut().enumerate() {
        *g.1 = (g.0 as f32 * 0.37).sin();
    }
    let rows = [1u32, 3];
    let grad = [0.5f32; 8];
    let table = ps.find("embedding.user.weight").unwrap();
    opt.step(
        &mut ps,
        &[SparseRows {
            table,
            rows: &rows,
            grad: &grad,
        }],
        |s| *s,
    );
    let path = dir.path("optimizer.safetensors");
    write_atomic(&path, &optimizer_to_bytes(&opt, &ps).unwrap()).unwrap();
    let mut back = Optimizer::new(&ps, OptimConfig::default());
    load_optimizer(&path, &mut back, &ps).unwrap();
    assert_eq!(back.step, 1);
    assert_eq!(opt.m, back.m);
    assert_eq!(opt.v, back.v);
}

#[test]
fn shape_mismatch_is_an_error() {
    let dir = TempDir::new("ckpt-m");
    let path = dir.path("weights.safetensors");
    save_weights(&path, &store(1, 5)).unwrap();
    let mut other = store(1, 6);
    let err = load_weights(&path, &mut other).unwrap_err().to_string();
    assert!(
        err.contains("embedding.user.weight") && err.contains("[5, 4]"),
        "{err}"
    );
}

#[test]
fn garbage_file_is_an_error() {
    let dir = TempDir::new("ckpt-g");
    let path = dir.path("weights.safetensors");
    std::fs::write(&path, b"definitely not safetensors").unwrap();
    let mut ps = store(1, 5);
    let err = load_weights(&path, &mut ps).unwrap_err().to_string();
    assert!(err.contains("not a safetensors file"), "{err}");
}
