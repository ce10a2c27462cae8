//! Finite-difference checks of every layer's backward, in f64.
//!
//! Each layer is wrapped as `out = layer(params, inputs)` and checked on the scalar
//! `L = Σ dout ⊙ out` with a random upstream gradient `dout`, so every output element's
//! gradient path is exercised with a distinct weight. Every parameter tensor and every
//! continuous input is checked coordinate by coordinate (the sizes are small: B = 5, odd
//! widths) against central differences (`hmdn_cpu::gradcheck`), and must agree to a relative
//! error ≤ 1e-6.
//!
//! ReLU kinks: a coordinate whose ±1e-6 perturbation switches a ReLU sees a central
//! difference that mixes two slopes. `check_coords_kinks` detects that from the two one-sided
//! slopes disagreeing by more than 1 % and skips the coordinate; the test prints how many were
//! skipped and fails if that is more than a small fraction of a tensor, or all of it.
//!
//! The harness also runs backward twice without zeroing and requires the parameter gradients
//! to double: backward passes must accumulate (`+=`), never overwrite.

use hmdn_cpu::config::FieldSpec;
use hmdn_cpu::gradcheck::{check_coords_kinks, GradReport, TOLERANCE};
use hmdn_cpu::model::cross::{Cross, CrossCache};
use hmdn_cpu::model::embedding::MultiEmbedding;
use hmdn_cpu::model::gate::{mixture_accumulate, mixture_backward, Gate, GateCache};
use hmdn_cpu::model::gatenu::{scale_backward, scale_forward, GTerm, GateNu, GateNuCache, SplitW1};
use hmdn_cpu::model::head::{
    task_loss_backward, task_loss_forward, DomainTowers, TowerCache, Towers,
};
use hmdn_cpu::model::linear::{InputGrad, Linear};
use hmdn_cpu::model::mlp::{Mlp, MlpCache};
use hmdn_cpu::model::wide::{Wide, WideCache};
use hmdn_cpu::params::ParamStore;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

const B: usize = 5;

/// A continuous input of a layer: name, shape, values.
struct Input {
    name: &'static str,
    shape: Vec<usize>,
    v: Vec<f64>,
}

fn input(name: &'static str, shape: &[usize], rng: &mut StdRng) -> Input {
    let n = shape.iter().product();
    Input {
        name,
        shape: shape.to_vec(),
        v: randn(n, rng),
    }
}

fn randn(n: usize, rng: &mut StdRng) -> Vec<f64> {
    (0..n)
        .map(|_| rng.sample::<f64, _>(StandardNormal))
        .collect()
}

/// Forward (`dout = None`) or forward + backward (`Some(dout)`): returns the flattened output
/// and, for backward, `∂L/∂input` for every input (same order and shapes as `inputs`).
type Run<'a> =
    dyn FnMut(&mut ParamStore<f64>, &[Input], Option<&[f64]>) -> (Vec<f64>, Vec<Vec<f64>>) + 'a;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Checks every parameter tensor of `ps` and every input; prints one line per tensor and
/// asserts the tolerance and the kink budget.
fn check_layer(
    title: &str,
    ps: &mut ParamStore<f64>,
    mut inputs: Vec<Input>,
    run: &mut Run,
    rng: &mut StdRng,
) -> Vec<GradReport> {
    let (out, _) = run(ps, &inputs, None);
    assert!(!out.is_empty(), "{title}: empty output");
    let dout = randn(out.len(), rng);

    ps.zero_grads(true);
    let (_, dins) = run(ps, &inputs, Some(&dout));
    let grads = ps.grads.clone();
    // Accumulation: a second backward without zeroing doubles every parameter gradient (up
    // to rounding: the second pass adds its terms one by one onto the first total).
    let _ = run(ps, &inputs, Some(&dout));
    for (i, (&g2, &g1)) in ps.grads.iter().zip(&grads).enumerate() {
        assert!(
            (g2 - 2.0 * g1).abs() <= 1e-12 * g1.abs().max(1e-12),
            "{title}: grad entry {i} not accumulated: {g2} after two passes, {g1} after one"
        );
    }
    assert_eq!(dins.len(), inputs.len(), "{title}: one gradient per input");

    let mut reports = Vec::new();
    let mut push = |name: &str, shape: &[usize], st: hmdn_cpu::gradcheck::CoordStats| {
        reports.push(GradReport {
            name: format!("{title}/{name}"),
            shape: shape.to_vec(),
            checked: st.checked,
            skipped: st.skipped,
            max_abs: st.max_abs,
            max_rel: st.max_rel,
        })
    };
    for p in 0..ps.specs.len() {
        let spec = ps.specs[p].clone();
        let r = spec.range();
        let mut x = ps.values()[r.clone()].to_vec();
        let analytic = grads[r.clone()].to_vec();
        let st = check_coords_kinks(&mut x, &analytic, 0..spec.len, |xv| {
            ps.values_mut()[r.clone()].copy_from_slice(xv);
            dot(&run(ps, &inputs, None).0, &dout)
        });
        ps.values_mut()[r.clone()].copy_from_slice(&x);
        push(&spec.name, &spec.shape, st);
    }
    for i in 0..inputs.len() {
        let mut x = inputs[i].v.clone();
        let len = x.len();
        let st = check_coords_kinks(&mut x, &dins[i], 0..len, |xv| {
            inputs[i].v.copy_from_slice(xv);
            dot(&run(ps, &inputs, None).0, &dout)
        });
        inputs[i].v = x;
        push(
            &format!("input:{}", inputs[i].name),
            &inputs[i].shape.clone(),
            st,
        );
    }
    for r in &reports {
        println!("{r}");
    }
    for r in &reports {
        assert!(
            r.passes(),
            "{}: max rel {:.3e} > {TOLERANCE:e}",
            r.name,
            r.max_rel
        );
        assert!(r.checked > 0, "{}: every coordinate was skipped", r.name);
        assert!(
            r.skipped * 10 <= r.checked + r.skipped,
            "{}: {} of {} coordinates skipped as kinks",
            r.name,
            r.skipped,
            r.checked + r.skipped
        );
    }
    reports
}

#[test]
fn linear() {
    let mut rng = StdRng::seed_from_u64(1);
    let mut ps = ParamStore::new();
    let lin = Linear::new(&mut ps, "lin", 7, 3, &mut rng);
    let inputs = vec![input("x", &[B, 7], &mut rng)];
    let mut run = |ps: &mut ParamStore<f64>, inp: &[Input], dout: Option<&[f64]>| {
        let mut out = vec![0.0; B * 3];
        lin.forward(&mut out, &inp[0].v, ps, B);
        let mut dx = vec![0.0; B * 7];
        if let Some(d) = dout {
            lin.backward(Some(&mut dx[..]), &mut ps.grads_view(), d, &inp[0].v, B);
        }
        (out, vec![dx])
    };
    check_layer("linear", &mut ps, inputs, &mut run, &mut rng);
}

/// `InputGrad::Write` overwrites whatever the buffer held with what `Add` puts into a zeroed
/// one (the whole MLP's backward and the GateNUs rely on it instead of zeroing first), and
/// `Skip` leaves the parameter gradients as `Add` does.
#[test]
fn linear_input_grad_write_equals_add_into_zeros() {
    let mut rng = StdRng::seed_from_u64(11);
    let mut ps = ParamStore::<f64>::new();
    let lin = Linear::new(&mut ps, "lin", 7, 3, &mut rng);
    let inp: Vec<f64> = (0..B * 7).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let dout: Vec<f64> = (0..B * 3).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let mut added = vec![0.0; B * 7];
    lin.backward(Some(&mut added[..]), &mut ps.grads_view(), &dout, &inp, B);
    let g_added = ps.grads.clone();
    ps.zero_grads(true);
    let mut written = vec![f64::NAN; B * 7];
    let w = InputGrad::Write(&mut written[..]);
    lin.backward(w, &mut ps.grads_view(), &dout, &inp, B);
    assert_eq!(written, added);
    assert_eq!(ps.grads, g_added);
    ps.zero_grads(true);
    lin.backward(InputGrad::Skip, &mut ps.grads_view(), &dout, &inp, B);
    assert_eq!(ps.grads, g_added);
}

fn fields(vocab: &[usize]) -> Vec<FieldSpec> {
    vocab
        .iter()
        .enumerate()
        .map(|(i, &v)| FieldSpec {
            name: format!("f{i}"),
            vocab_size: v,
        })
        .collect()
}

/// Field-major indices `[F, B]` with repeats (so row sums are exercised).
fn indices(vocab: &[usize], rng: &mut StdRng) -> Vec<u32> {
    let mut idx = Vec::new();
    for &v in vocab {
        for _ in 0..B {
            idx.push(rng.gen_range(0..v) as u32);
        }
    }
    idx
}

#[test]
fn multi_embedding() {
    let mut rng = StdRng::seed_from_u64(2);
    let mut ps = ParamStore::new();
    let vocab = [4, 7, 2];
    // The tables read columns 2, 0, 1 of a 3-column index matrix, and write at offset 2 of
    // 13-wide rows: both indirections are exercised.
    let emb = MultiEmbedding::new(
        &mut ps,
        "embedding",
        &fields(&vocab),
        &[2, 0, 1],
        3,
        0.5,
        &mut rng,
    );
    let cols = [vocab[1], vocab[2], vocab[0]];
    let idx = indices(&cols, &mut rng);
    let (stride, off) = (13, 2);
    let mut grads = emb.new_row_grads::<f64>();
    let mut run = |ps: &mut ParamStore<f64>, _: &[Input], dout: Option<&[f64]>| {
        let mut out = vec![0.0; B * stride];
        emb.forward(&mut out, stride, off, &idx, ps, B);
        if let Some(d) = dout {
            emb.backward(&mut grads, d, stride, off, &idx, B);
            for g in &grads {
                assert!(
                    g.rows.windows(2).all(|w| w[0] < w[1]),
                    "rows ascending, unique"
                );
                g.add_to_store(ps);
            }
        }
        (out, vec![])
    };
    check_layer("embedding", &mut ps, vec![], &mut run, &mut rng);
}

#[test]
fn row_grads_list_each_touched_row_once() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut ps = ParamStore::<f64>::new();
    let emb = MultiEmbedding::new(&mut ps, "embedding", &fields(&[6]), &[0], 2, 0.1, &mut rng);
    let idx = [3u32, 1, 3, 0, 1];
    let dout: Vec<f64> = (0..10).map(|i| i as f64).collect();
    let mut g = emb.new_row_grads::<f64>();
    emb.backward(&mut g, &dout, 2, 0, &idx, 5);
    assert_eq!(g[0].rows, vec![0, 1, 3]);
    // Row 0 ← batch row 3; row 1 ← batch rows 1 and 4; row 3 ← batch rows 0 and 2.
    assert_eq!(
        g[0].grad,
        vec![6.0, 7.0, 2.0 + 8.0, 3.0 + 9.0, 0.0 + 4.0, 1.0 + 5.0]
    );
}

#[test]
fn wide() {
    let mut rng = StdRng::seed_from_u64(4);
    let mut ps = ParamStore::new();
    let vocab = [3, 5];
    let wide = Wide::new(&mut ps, &fields(&vocab), &[0, 1], 0.5, &mut rng);
    // Non-zero bias so its gradient path carries a real value.
    ps.value_mut(wide.bias)[0] = 0.3;
    let idx = indices(&vocab, &mut rng);
    let mut cache = WideCache::default();
    let mut grads = wide.emb.new_row_grads::<f64>();
    let mut run = |ps: &mut ParamStore<f64>, _: &[Input], dout: Option<&[f64]>| {
        let mut out = vec![0.0; B];
        wide.forward(&mut out, &mut cache, &idx, ps, B);
        if let Some(d) = dout {
            wide.backward(&mut grads, &mut cache, ps, d, &idx, B);
            for g in &grads {
                g.add_to_store(ps);
            }
        }
        (out, vec![])
    };
    check_layer("wide", &mut ps, vec![], &mut run, &mut rng);
}

#[test]
fn mlp() {
    let mut rng = StdRng::seed_from_u64(5);
    let mut ps = ParamStore::new();
    let mlp = Mlp::new(&mut ps, "dnn", 7, &[9, 5, 3], &mut rng);
    let mut cache = MlpCache::new(&mlp);
    let inputs = vec![input("x", &[B, 7], &mut rng)];
    let mut run = |ps: &mut ParamStore<f64>, inp: &[Input], dout: Option<&[f64]>| {
        mlp.forward(&mut cache, &inp[0].v, ps, B);
        let out = cache.out(B).to_vec();
        let mut dx = vec![0.0; B * 7];
        if let Some(d) = dout {
            mlp.backward(
                Some(&mut dx),
                &mut cache,
                &mut ps.grads_view(),
                d,
                &inp[0].v,
                B,
            );
        }
        (out, vec![dx])
    };
    check_layer("mlp", &mut ps, inputs, &mut run, &mut rng);
}

#[test]
fn mlp_single_layers_compose_like_the_whole() {
    // The per-layer API (used by PEPNet) gives the same outputs and gradients as the whole
    // MLP when nothing happens between layers.
    let mut rng = StdRng::seed_from_u64(6);
    let mut ps = ParamStore::<f64>::new();
    let mlp = Mlp::new(&mut ps, "dnn", 4, &[5, 3], &mut rng);
    let x = randn(B * 4, &mut rng);
    let dout = randn(B * 3, &mut rng);
    let mut cache = MlpCache::new(&mlp);
    mlp.forward(&mut cache, &x, &ps, B);
    let mut dx_whole = vec![0.0; B * 4];
    ps.zero_grads(true);
    mlp.backward(
        Some(&mut dx_whole),
        &mut cache,
        &mut ps.grads_view(),
        &dout,
        &x,
        B,
    );
    let g_whole = ps.grads.clone();

    let (mut h0, mut h1) = (vec![0.0; B * 5], vec![0.0; B * 3]);
    mlp.layer_forward(0, &mut h0, &x, &ps, B);
    mlp.layer_forward(1, &mut h1, &h0, &ps, B);
    assert_eq!(h1, cache.out(B));
    ps.zero_grads(true);
    let (mut dh0, mut dx, mut scratch) = (vec![0.0; B * 5], vec![0.0; B * 4], vec![0.0; B * 5]);
    mlp.layer_backward(
        1,
        Some(&mut dh0[..]),
        &mut scratch,
        &mut ps.grads_view(),
        &dout,
        &h1,
        &h0,
        B,
    );
    mlp.layer_backward(
        0,
        Some(&mut dx[..]),
        &mut scratch,
        &mut ps.grads_view(),
        &dh0,
        &h0,
        &x,
        B,
    );
    assert_eq!(dx, dx_whole);
    assert_eq!(ps.grads, g_whole);
}

#[test]
fn gate() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut ps = ParamStore::new();
    let (z, n) = (5, 3);
    let gate = Gate::new(&mut ps, "gates.0", z, n, &mut rng);
    let mut cache = GateCache::default();
    let inputs = vec![input("g", &[B, z], &mut rng)];
    let mut run = |ps: &mut ParamStore<f64>, inp: &[Input], dout: Option<&[f64]>| {
        gate.forward(&mut cache, &inp[0].v, ps, B);
        let out = cache.probs[..B * n].to_vec();
        let mut dg = vec![0.0; B * z];
        if let Some(d) = dout {
            cache.zero_dprobs(B, n);
            for (a, &v) in cache.dprobs.iter_mut().zip(d) {
                *a += v;
            }
            gate.backward(
                Some(&mut dg),
                &mut cache,
                &mut ps.grads_view(),
                &inp[0].v,
                B,
            );
        }
        (out, vec![dg])
    };
    check_layer("gate", &mut ps, inputs, &mut run, &mut rng);
}

#[test]
fn mixture() {
    let mut rng = StdRng::seed_from_u64(8);
    let mut ps = ParamStore::new();
    let (n, d) = (3, 7);
    // probs need not be normalised for the mixture's own derivative.
    let inputs = vec![
        input("probs", &[B, n], &mut rng),
        input("expert0", &[B, d], &mut rng),
        input("expert1", &[B, d], &mut rng),
        input("expert2", &[B, d], &mut rng),
    ];
    let mut run = |_: &mut ParamStore<f64>, inp: &[Input], dout: Option<&[f64]>| {
        let mut h = vec![0.0; B * d];
        for i in 0..n {
            mixture_accumulate(&mut h, &inp[0].v, &inp[1 + i].v, i, n, d, B);
        }
        let mut grads = vec![vec![0.0; B * n]];
        grads.extend((0..n).map(|_| vec![0.0; B * d]));
        if let Some(dh) = dout {
            let (dp, de) = grads.split_at_mut(1);
            for i in 0..n {
                mixture_backward(
                    &mut de[i],
                    &mut dp[0],
                    dh,
                    &inp[0].v,
                    &inp[1 + i].v,
                    i,
                    n,
                    d,
                    B,
                );
            }
        }
        (h, grads)
    };
    check_layer("mixture", &mut ps, inputs, &mut run, &mut rng);
}

#[test]
fn gatenu() {
    let mut rng = StdRng::seed_from_u64(9);
    let mut ps = ParamStore::new();
    let (din, hid, dout_w) = (5, 7, 3);
    let g = GateNu::new(&mut ps, "epnet", din, hid, dout_w, 2.0, &mut rng);
    let mut cache = GateNuCache::default();
    let inputs = vec![input("v", &[B, din], &mut rng)];
    let mut run = |ps: &mut ParamStore<f64>, inp: &[Input], dout: Option<&[f64]>| {
        g.forward(&mut cache, &inp[0].v, ps, B);
        let out = cache.delta[..B * dout_w].to_vec();
        let mut dv = vec![0.0; B * din];
        if let Some(d) = dout {
            cache.zero_ddelta(B, dout_w);
            for (a, &v) in cache.ddelta.iter_mut().zip(d) {
                *a += v;
            }
            g.backward(
                Some(&mut dv),
                din,
                &mut cache,
                &mut ps.grads_view(),
                &inp[0].v,
                B,
            );
        }
        (out, vec![dv])
    };
    check_layer("gatenu", &mut ps, inputs, &mut run, &mut rng);
}

/// The leading-columns input gradient (PEPNet needs only g's columns of `[g, sg(x)]`) equals
/// those columns of the full one, and the parameter gradients are the same.
#[test]
fn gatenu_leading_columns() {
    let mut rng = StdRng::seed_from_u64(19);
    let mut ps = ParamStore::new();
    let (din, hid, dout_w, cols) = (9, 7, 3, 4);
    let g = GateNu::new(&mut ps, "epnet", din, hid, dout_w, 2.0, &mut rng);
    let mut cache = GateNuCache::default();
    let v = input("v", &[B, din], &mut rng).v;
    let d = input("d", &[B, dout_w], &mut rng).v;
    let mut run = |ps: &mut ParamStore<f64>, cols: usize| {
        ps.zero_grads(true);
        g.forward(&mut cache, &v, ps, B);
        cache.zero_ddelta(B, dout_w);
        cache.ddelta[..B * dout_w].copy_from_slice(&d);
        let mut dv = vec![0.5; B * cols];
        g.backward(Some(&mut dv), cols, &mut cache, &mut ps.grads_view(), &v, B);
        (dv, ps.grads.clone())
    };
    let (full, g_full) = run(&mut ps, din);
    let (part, g_part) = run(&mut ps, cols);
    assert_eq!(g_full, g_part);
    for (fr, pr) in full.chunks_exact(din).zip(part.chunks_exact(cols)) {
        for (a, b) in fr[..cols].iter().zip(pr) {
            assert!((a - b).abs() <= 1e-14, "{a} vs {b}");
        }
    }
}

/// The split form PEPNet runs (`forward_split` / `backward_split`: `[g, x]` read in place,
/// x a stop-gradient input): checked by finite differences for its parameters and g.
#[test]
fn gatenu_split() {
    let mut rng = StdRng::seed_from_u64(29);
    let mut ps = ParamStore::new();
    let (gz, dx, hid, dout_w) = (4, 5, 7, 3);
    let g = GateNu::new(&mut ps, "epnet", gz + dx, hid, dout_w, 2.0, &mut rng);
    let mut cache = GateNuCache::default();
    let mut split = SplitW1::default();
    let x = input("x", &[B, dx], &mut rng).v;
    let inputs = vec![input("g", &[B, gz], &mut rng)];
    let mut run = |ps: &mut ParamStore<f64>, inp: &[Input], dout: Option<&[f64]>| {
        split.refresh(&g, gz, ps, true);
        g.forward_split(&mut cache, &split, GTerm::Rows(&inp[0].v), &x, ps, B);
        let out = cache.delta[..B * dout_w].to_vec();
        let mut dg = vec![0.0; B * gz];
        if let Some(d) = dout {
            cache.zero_ddelta(B, dout_w);
            cache.ddelta[..B * dout_w].copy_from_slice(d);
            let grads = &mut ps.grads_view();
            g.backward_split(&mut dg, &mut cache, &split, grads, &inp[0].v, &x, B);
        }
        (out, vec![dg])
    };
    check_layer("gatenu split", &mut ps, inputs, &mut run, &mut rng);
}

/// The split form gives the concatenated form's output and gradients (to rounding: the two
/// input blocks are summed apart), and its gathered g term (a table per distinct g row,
/// copied by slot) gives the row-wise one bit for bit.
#[test]
fn gatenu_split_matches_concatenated_and_gathered_matches_rows() {
    let mut rng = StdRng::seed_from_u64(31);
    let mut ps = ParamStore::new();
    let (gz, dx, hid, dout_w) = (4, 6, 7, 5);
    let gate = GateNu::new(&mut ps, "epnet", gz + dx, hid, dout_w, 2.0, &mut rng);
    let mut cache = GateNuCache::default();
    let mut split = SplitW1::default();
    split.refresh(&gate, gz, &ps, true);
    // 3 distinct g rows, each row picks one.
    let g_u = randn(3 * gz, &mut rng);
    let slots: Vec<u32> = (0..B as u32).map(|r| (r * 2 + 1) % 3).collect();
    let g: Vec<f64> = slots
        .iter()
        .flat_map(|&s| g_u[s as usize * gz..(s as usize + 1) * gz].to_vec())
        .collect();
    let x = randn(B * dx, &mut rng);
    let v: Vec<f64> = (0..B)
        .flat_map(|r| [&g[r * gz..(r + 1) * gz], &x[r * dx..(r + 1) * dx]].concat())
        .collect();
    let d = randn(B * dout_w, &mut rng);

    let backward = |ps: &mut ParamStore<f64>, cache: &mut GateNuCache<f64>, split: bool| {
        cache.zero_ddelta(B, dout_w);
        cache.ddelta[..B * dout_w].copy_from_slice(&d);
        let mut dg = vec![0.25; B * gz];
        ps.zero_grads(true);
        if split {
            let sp = {
                let mut s = SplitW1::default();
                s.refresh(&gate, gz, ps, true);
                s
            };
            gate.backward_split(&mut dg, cache, &sp, &mut ps.grads_view(), &g, &x, B);
        } else {
            gate.backward(Some(&mut dg), gz, cache, &mut ps.grads_view(), &v, B);
        }
        (dg, ps.grads.clone())
    };

    gate.forward(&mut cache, &v, &ps, B);
    let want = cache.delta[..B * dout_w].to_vec();
    let (dg_want, grads_want) = backward(&mut ps, &mut cache, false);

    gate.forward_split(&mut cache, &split, GTerm::Rows(&g), &x, &ps, B);
    let rows = cache.delta[..B * dout_w].to_vec();
    for (a, b) in rows.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-14, "output {a} vs {b}");
    }
    let (dg, grads) = backward(&mut ps, &mut cache, true);
    for (a, b) in dg.iter().zip(&dg_want).chain(grads.iter().zip(&grads_want)) {
        assert!(
            (a - b).abs() <= 1e-13 * (1.0 + b.abs()),
            "gradient {a} vs {b}"
        );
    }

    let mut table = vec![0.0; 3 * hid];
    GateNu::g_term(&split, &mut table, &g_u, 3);
    gate.forward_split(
        &mut cache,
        &split,
        GTerm::Gathered(&table, &slots),
        &x,
        &ps,
        B,
    );
    let gathered = cache.delta[..B * dout_w].to_vec();
    assert_eq!(
        gathered.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        rows.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
}

#[test]
fn gatenu_scaling() {
    let mut rng = StdRng::seed_from_u64(10);
    let mut ps = ParamStore::new();
    let d = 7;
    let inputs = vec![
        input("delta", &[B, d], &mut rng),
        input("x", &[B, d], &mut rng),
    ];
    let mut run = |_: &mut ParamStore<f64>, inp: &[Input], dout: Option<&[f64]>| {
        let mut y = vec![0.0; B * d];
        scale_forward(&mut y, &inp[0].v, &inp[1].v);
        let (mut dd, mut dx) = (vec![0.0; B * d], vec![0.0; B * d]);
        if let Some(dy) = dout {
            scale_backward(&mut dd, Some(&mut dx), dy, &inp[0].v, &inp[1].v);
        }
        (y, vec![dd, dx])
    };
    check_layer("scale", &mut ps, inputs, &mut run, &mut rng);
}

#[test]
fn cross() {
    let mut rng = StdRng::seed_from_u64(11);
    let mut ps = ParamStore::new();
    let d = 5;
    let net = Cross::new(&mut ps, "cross", d, 3, &mut rng);
    // Non-zero biases so every term of the derivative carries a value.
    for &b in &net.b {
        let r = ps.range(b);
        for v in &mut ps.values_mut()[r] {
            *v = rng.sample::<f64, _>(StandardNormal);
        }
    }
    let mut cache = CrossCache::default();
    let inputs = vec![input("x0", &[B, d], &mut rng)];
    let mut run = |ps: &mut ParamStore<f64>, inp: &[Input], dout: Option<&[f64]>| {
        net.forward(&mut cache, &inp[0].v, ps, B);
        let out = net.output(&cache, &inp[0].v, B).to_vec();
        let mut dx = vec![0.0; B * d];
        if let Some(g) = dout {
            net.backward(&mut dx, &mut cache, &mut ps.grads_view(), g, &inp[0].v, B);
        }
        (out, vec![dx])
    };
    check_layer("cross", &mut ps, inputs, &mut run, &mut rng);
}

#[test]
fn task_loss() {
    let mut rng = StdRng::seed_from_u64(12);
    let mut ps = ParamStore::new();
    let t = 2;
    let labels: Vec<f64> = (0..B * t).map(|_| rng.gen_range(0..2) as f64).collect();
    let inputs = vec![input("logits", &[B, t], &mut rng)];
    let mut run = |_: &mut ParamStore<f64>, inp: &[Input], dout: Option<&[f64]>| {
        let l = task_loss_forward(&inp[0].v, &labels, B, t);
        let mut dl = vec![0.0; B * t];
        if let Some(d) = dout {
            task_loss_backward(&mut dl, &inp[0].v, &labels, B, t);
            // The loss is the layer's one output; chain the upstream gradient through it.
            for v in &mut dl {
                *v *= d[0];
            }
        }
        (vec![l], vec![dl])
    };
    check_layer("task_loss", &mut ps, inputs, &mut run, &mut rng);
}

#[test]
fn towers() {
    let mut rng = StdRng::seed_from_u64(13);
    let mut ps = ParamStore::new();
    let (h, t) = (5, 2);
    let towers = Towers::new(&mut ps, "towers", h, t, &mut rng);
    let mut cache = TowerCache::default();
    let inputs = vec![
        input("h0", &[B, h], &mut rng),
        input("h1", &[B, h], &mut rng),
    ];
    let mut run = |ps: &mut ParamStore<f64>, inp: &[Input], dout: Option<&[f64]>| {
        let mut logits = vec![0.0; B * t];
        for (k, hk) in inp.iter().enumerate() {
            towers.forward(k, &mut logits, &mut cache, &hk.v, ps, B);
        }
        let mut dh = vec![vec![0.0; B * h]; t];
        if let Some(d) = dout {
            for (k, dk) in dh.iter_mut().enumerate() {
                towers.backward(
                    k,
                    Some(dk),
                    &mut cache,
                    &mut ps.grads_view(),
                    d,
                    &inp[k].v,
                    B,
                );
            }
        }
        (logits, dh)
    };
    check_layer("towers", &mut ps, inputs, &mut run, &mut rng);
}

#[test]
fn domain_towers() {
    let mut rng = StdRng::seed_from_u64(14);
    let mut ps = ParamStore::new();
    let (h, t, k) = (5, 2, 3);
    let towers = DomainTowers::new(&mut ps, "towers", h, t, k, &mut rng);
    // Domains 0 and 2 used, domain 1 unused: its towers must get exactly zero gradient.
    let dom = [2u32, 0, 2, 2, 0];
    let inputs = vec![input("h", &[B, h], &mut rng)];
    let mut run = |ps: &mut ParamStore<f64>, inp: &[Input], dout: Option<&[f64]>| {
        let mut logits = vec![0.0; B * t];
        towers.forward(&mut logits, &inp[0].v, &dom, ps, B);
        let mut dh = vec![0.0; B * h];
        if let Some(d) = dout {
            towers.backward(&mut dh, &mut ps.grads_view(), d, &inp[0].v, &dom, B);
        }
        (logits, vec![dh])
    };
    check_layer("domain_towers", &mut ps, inputs, &mut run, &mut rng);
    for tt in 0..t {
        let lin = &towers.towers[tt * k + 1];
        assert!(ps.grad(lin.w).iter().all(|&g| g == 0.0));
    }
}
