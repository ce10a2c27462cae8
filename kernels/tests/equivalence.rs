//! Fast kernels == scalar reference (`hmdn_kernels::reference`) on awkward sizes, unaligned
//! starts and awkward values, for every SIMD path this CPU supports (via `with_path`, a
//! per-thread override, so tests running in parallel do not disturb each other).
//!
//! Where the fast path does the reference's IEEE operations in the same order (no reduction,
//! no transcendental) we demand bit equality. Elsewhere the bound is stated at each check:
//! - `exp`: our vector `exp` is within ~2 ulp of libm's `expf`; sigmoid adds one add and one
//!   divide (≤ 1 ulp each), so sigmoid-based outputs are held to a few ulp.
//! - sums (softmax, norms, dots, GEMM): both results satisfy the classical bound
//!   `|ŝ − s| <= γ_n Σ|terms|` with `γ_n ≈ n·u`, `u = 2^-24`, for their own summation order, so
//!   they differ by at most `2·γ_n·Σ|terms|`.

use hmdn_kernels::optim::AdamParams;
use hmdn_kernels::{
    act, auc, embed, gemm, loss, optim, reference, softmax, vq, with_path, SimdPath, Trans,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SIZES: [usize; 12] = [0, 1, 7, 8, 9, 17, 31, 33, 255, 256, 257, 1023];
const U: f64 = 1.0 / (1u64 << 24) as f64;

/// Runs `f` once per SIMD path this CPU has.
fn for_paths(mut f: impl FnMut(SimdPath)) {
    for p in hmdn_kernels::available_paths() {
        with_path(p, || f(p));
    }
}

/// Which SIMD paths the tests in this file compare with the scalar reference: every path this
/// CPU has ([`for_paths`]). A path the CPU lacks cannot run here, so this test names it on
/// stderr (`cargo test -- --nocapture` shows it), and fails if `HMDN_REQUIRE_SIMD` (a
/// comma-separated list of path names, e.g. `avx2,avx512`) asks for a path the CPU lacks, so
/// that a CI machine known to have a path can insist that it was tested.
#[test]
fn simd_paths_under_test() {
    let have = hmdn_kernels::available_paths();
    for p in SimdPath::ALL {
        let state = if have.contains(&p) {
            "tested"
        } else {
            "NOT tested: this CPU lacks it"
        };
        eprintln!("simd path {}: {state}", p.name());
    }
    let required = std::env::var("HMDN_REQUIRE_SIMD").unwrap_or_default();
    for name in required.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let p = SimdPath::from_name(name).unwrap_or_else(|| {
            let known: Vec<_> = SimdPath::ALL.iter().map(|p| p.name()).collect();
            panic!("HMDN_REQUIRE_SIMD: unknown path {name:?} (known: {known:?})")
        });
        assert!(
            have.contains(&p),
            "HMDN_REQUIRE_SIMD asks for {name}, which this CPU lacks"
        );
    }
}

/// Random values with awkward ones mixed in: exact zeros, negative zeros, large magnitudes.
fn awkward(rng: &mut StdRng, n: usize, big: f32) -> Vec<f32> {
    (0..n)
        .map(|_| match rng.gen_range(0..10) {
            0 => 0.0,
            1 => -0.0,
            2 => rng.gen_range(-1.0..1.0) * big,
            _ => rng.gen_range(-3.0f32..3.0),
        })
        .collect()
}

/// `v` copied behind one leading element, so `&buf[1..]` starts unaligned.
fn unaligned(v: &[f32]) -> Vec<f32> {
    let mut buf = vec![7.0f32; v.len() + 1];
    buf[1..].copy_from_slice(v);
    buf
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[track_caller]
fn assert_bits_eq(fast: &[f32], refr: &[f32], what: &str) {
    assert_eq!(fast.len(), refr.len(), "{what}: length");
    for (i, (a, b)) in fast.iter().zip(refr).enumerate() {
        assert_eq!(
            a.to_bits(),
            b.to_bits(),
            "{what}: [{i}] fast {a:e} vs reference {b:e}"
        );
    }
}

/// Distance in units in the last place between two finite f32 (0 for +0 vs -0).
fn ulps(a: f32, b: f32) -> u64 {
    if a == b {
        return 0;
    }
    let key = |x: f32| {
        let i = x.to_bits() as i32;
        if i < 0 {
            i64::from(i32::MIN) - i64::from(i)
        } else {
            i64::from(i)
        }
    };
    (key(a) - key(b)).unsigned_abs()
}

// ---------------------------------------------------------------- elementwise, exact

#[test]
fn bias_relu_bias_add_relu_backward_exact() {
    let mut rng = StdRng::seed_from_u64(1);
    for_paths(|p| {
        for &n in &SIZES {
            for rows in [0usize, 1, 3, 70] {
                let bias = awkward(&mut rng, n, 100.0);
                let y0 = awkward(&mut rng, rows * n + 2, 100.0); // +2: ragged tail is ignored
                let (yb, bb) = (unaligned(&y0), unaligned(&bias));
                let mut f = yb.clone();
                act::bias_relu_forward(&mut f[1..], &bb[1..]);
                let mut r = y0.clone();
                reference::bias_relu_forward(&mut r, &bias);
                assert_bits_eq(&f[1..], &r, &format!("{p:?} bias_relu n={n} rows={rows}"));

                let mut f = yb.clone();
                act::bias_add(&mut f[1..], &bb[1..]);
                let mut r = y0.clone();
                reference::bias_add(&mut r, &bias);
                assert_bits_eq(&f[1..], &r, &format!("{p:?} bias_add n={n}"));
            }
            let (dy, y) = (awkward(&mut rng, n, 100.0), awkward(&mut rng, n, 100.0));
            let mut f = unaligned(&vec![f32::NAN; n]);
            act::relu_backward(&mut f[1..], &unaligned(&dy)[1..], &y);
            let mut r = vec![f32::NAN; n];
            reference::relu_backward(&mut r, &dy, &y);
            assert_bits_eq(&f[1..], &r, &format!("{p:?} relu_backward n={n}"));
        }
        // Large enough for the rayon split.
        let (rows, n) = (600, 128);
        let bias = awkward(&mut rng, n, 10.0);
        let y0 = awkward(&mut rng, rows * n, 10.0);
        let mut f = y0.clone();
        act::bias_relu_forward(&mut f, &bias);
        let mut r = y0.clone();
        reference::bias_relu_forward(&mut r, &bias);
        assert_bits_eq(&f, &r, &format!("{p:?} bias_relu large"));
    });
}

#[test]
fn bias_grad_exact() {
    let mut rng = StdRng::seed_from_u64(2);
    for_paths(|p| {
        for &n in &SIZES {
            for rows in [0usize, 1, 5, 300] {
                let dy = awkward(&mut rng, rows * n, 50.0);
                let db0 = awkward(&mut rng, n, 1.0);
                let mut f = unaligned(&db0);
                act::bias_grad(&mut f[1..], &unaligned(&dy)[1..]);
                let mut r = db0.clone();
                reference::bias_grad(&mut r, &dy);
                assert_bits_eq(&f[1..], &r, &format!("{p:?} bias_grad n={n} rows={rows}"));
            }
        }
        for n in [368, 100, 33] {
            let rows = 1000;
            let dy = awkward(&mut rng, rows * n, 50.0);
            let mut f = vec![0.5f32; n];
            let mut r = f.clone();
            act::bias_grad(&mut f, &dy);
            reference::bias_grad(&mut r, &dy);
            assert_bits_eq(&f, &r, &format!("{p:?} bias_grad large n={n}"));
        }
    });
}

#[test]
fn scaled_sigmoid_backward_exact() {
    let mut rng = StdRng::seed_from_u64(3);
    for_paths(|p| {
        for &n in SIZES.iter().chain(&[40_000]) {
            let dy = awkward(&mut rng, n, 100.0);
            let y: Vec<f32> = (0..n).map(|_| rng.gen_range(0.0f32..2.0)).collect();
            let dx0 = awkward(&mut rng, n, 1.0);
            // 2 and 0.25: the divide done as a multiply by the exact reciprocal; 3 and 1e-39
            // (subnormal): a true divide.
            for scale in [2.0f32, 0.25, 3.0, 1e-39] {
                let mut f = unaligned(&dx0);
                act::scaled_sigmoid_backward(&mut f[1..], &dy, &unaligned(&y)[1..], scale);
                let mut r = dx0.clone();
                reference::scaled_sigmoid_backward(&mut r, &dy, &y, scale);
                let what = format!("{p:?} sigmoid_backward n={n} scale={scale}");
                assert_bits_eq(&f[1..], &r, &what);
            }
        }
    });
}

#[test]
fn scaled_sigmoid_mul_backward_exact() {
    let mut rng = StdRng::seed_from_u64(31);
    for_paths(|p| {
        for &n in SIZES.iter().chain(&[40_000]) {
            let dy = awkward(&mut rng, n, 100.0);
            let x = awkward(&mut rng, n, 100.0);
            let d: Vec<f32> = (0..n).map(|_| rng.gen_range(0.0f32..2.0)).collect();
            let (xb, db) = (unaligned(&x), unaligned(&d));
            for scale in [2.0f32, 3.0] {
                let (mut fu, mut fx) = (unaligned(&vec![f32::NAN; n]), vec![f32::NAN; n]);
                let (u, v) = (&mut fu[1..], &mut fx[..]);
                act::scaled_sigmoid_mul_backward(u, v, &dy, &xb[1..], &db[1..], scale);
                let (mut ru, mut rx) = (vec![f32::NAN; n], vec![f32::NAN; n]);
                reference::scaled_sigmoid_mul_backward(&mut ru, &mut rx, &dy, &x, &d, scale);
                let what = format!("{p:?} sigmoid_mul_backward n={n} scale={scale}");
                assert_bits_eq(&fu[1..], &ru, &format!("{what} du"));
                assert_bits_eq(&fx, &rx, &format!("{what} dx"));
            }
            let (mut fu, mut fx) = (unaligned(&vec![f32::NAN; n]), vec![f32::NAN; n]);
            act::scaled_sigmoid_mul_backward(&mut fu[1..], &mut fx, &dy, &xb[1..], &db[1..], 2.0);
            // The unfused chain it replaces: ∂L/∂delta = dy ⊙ x, then the sigmoid backward
            // into zeros. Equal up to the sign of zero (0 + −0 = +0).
            let dd: Vec<f32> = dy.iter().zip(&x).map(|(g, v)| g * v).collect();
            let mut chain = vec![0.0f32; n];
            act::scaled_sigmoid_backward(&mut chain, &dd, &d, 2.0);
            for (i, (a, b)) in fu[1..].iter().zip(&chain).enumerate() {
                assert!(a == b, "{p:?} fused vs chain [{i}]: {a:e} vs {b:e}");
            }
        }
    });
}

#[test]
fn bias_scaled_sigmoid_forward_within_ulps_and_equal_to_the_chain() {
    let mut rng = StdRng::seed_from_u64(32);
    for_paths(|p| {
        for &n in &SIZES {
            for rows in [0usize, 1, 3, 70] {
                let bias = awkward(&mut rng, n, 60.0);
                let u = awkward(&mut rng, rows * n, 60.0);
                let x = awkward(&mut rng, rows * n, 100.0);
                let (ub, bb, xb) = (unaligned(&u), unaligned(&bias), unaligned(&x));
                for scale in [1.0f32, 2.0] {
                    let mut fd = unaligned(&vec![f32::NAN; rows * n]);
                    act::bias_scaled_sigmoid_forward(&mut fd[1..], &ub[1..], &bb[1..], scale, None);
                    let (mut gd, mut gy) = (vec![f32::NAN; rows * n], vec![f32::NAN; rows * n]);
                    let sc = Some((&mut gy[..], &xb[1..]));
                    act::bias_scaled_sigmoid_forward(&mut gd, &ub[1..], &bb[1..], scale, sc);
                    let (mut rd, mut ry) = (vec![f32::NAN; rows * n], vec![f32::NAN; rows * n]);
                    let sc = Some((&mut ry[..], &x[..]));
                    reference::bias_scaled_sigmoid_forward(&mut rd, &u, &bias, scale, sc);
                    let what = format!("{p:?} n={n} rows={rows} scale={scale}");
                    // Both fused forms give the same delta bits.
                    assert_bits_eq(&fd[1..], &gd, &what);
                    for i in 0..rows * n {
                        // sigmoid within 4 ulp (see scaled_sigmoid_forward_within_ulps); the
                        // product adds one rounding.
                        assert!(ulps(gd[i], rd[i]) <= 4, "{what} delta [{i}]");
                        assert!(ulps(gy[i], ry[i]) <= 5 || gy[i] == ry[i], "{what} y [{i}]");
                        assert_eq!(gy[i].to_bits(), (gd[i] * x[i]).to_bits(), "{what} y=δ·x");
                    }
                    // The unfused chain it replaces (bias add, then the sigmoid kernel): the
                    // same bits on this path.
                    let mut pre = u.clone();
                    act::bias_add(&mut pre, &bias);
                    let mut chain = vec![0.0f32; rows * n];
                    act::scaled_sigmoid_forward(&mut chain, &pre, scale);
                    assert_bits_eq(&gd, &chain, &format!("{what} vs chain"));
                }
            }
        }
    });
}

#[test]
fn adam_exact() {
    let mut rng = StdRng::seed_from_u64(4);
    let h = AdamParams::default();
    for_paths(|p| {
        for &n in SIZES.iter().chain(&[100_003]) {
            let g = awkward(&mut rng, n, 100.0);
            let p0 = awkward(&mut rng, n, 1.0);
            let m0 = awkward(&mut rng, n, 0.1);
            let v0: Vec<f32> = (0..n).map(|_| rng.gen_range(0.0f32..0.5)).collect();
            for step in [1u64, 2, 1000] {
                let (mut pf, mut mf, mut vf) = (unaligned(&p0), m0.clone(), unaligned(&v0));
                optim::adam_step(&mut pf[1..], &g, &mut mf, &mut vf[1..], &h, step);
                let (mut pr, mut mr, mut vr) = (p0.clone(), m0.clone(), v0.clone());
                reference::adam_step(&mut pr, &g, &mut mr, &mut vr, &h, step);
                let what = format!("{p:?} adam n={n} step={step}");
                assert_bits_eq(&pf[1..], &pr, &what);
                assert_bits_eq(&mf, &mr, &what);
                assert_bits_eq(&vf[1..], &vr, &what);
            }
        }
    });
}

/// `[p, m, v]` after an Adam step against the reference's, bit for bit, and no moment
/// stored subnormal.
#[track_caller]
fn same_bits_no_subnormal_moments(fast: [&[f32]; 3], refr: [&[f32]; 3], what: &str) {
    for (f, r) in fast.iter().zip(&refr) {
        assert_bits_eq(f, r, what);
    }
    for (i, x) in fast[1].iter().chain(fast[2]).enumerate() {
        assert!(!x.is_subnormal(), "{what}: moment {i} is subnormal ({x:e})");
    }
}

/// Moments that decay towards zero (zero gradients, as a dead ReLU unit's weights get) are
/// stored as +0 once subnormal, on every path and in the reference alike, and the weights
/// and moments keep the reference's bits all the way. Fails with IEEE moments: `m` would
/// stop a few ulps above zero (`(1−β1)·m` rounds to zero there) and stay subnormal.
#[test]
fn adam_moments_never_subnormal() {
    let h = AdamParams::default();
    let tiny = f32::MIN_POSITIVE;
    // Decaying moments from the normal range, from the boundary, from subnormals; a gradient
    // small enough that g² is subnormal; NaN stays NaN.
    let m0 = [
        1e-30,
        -3e-37,
        2.0 * tiny,
        tiny,
        -tiny,
        1e-40,
        -1e-45,
        0.0,
        -0.0,
        0.5,
        1e-36,
        f32::NAN,
        7e-38,
        -2e-38,
        1e-44,
        3e-39,
        1e-30,
    ];
    let g: Vec<f32> = (0..m0.len())
        .map(|i| if i == 9 { 1e-21 } else { 0.0 })
        .collect();
    let v0: Vec<f32> = (0..m0.len())
        .map(|i| [0.0, 1e-30, 3e-38, 1e-41][i % 4])
        .collect();
    let p0: Vec<f32> = (0..m0.len()).map(|i| 0.1 * i as f32 - 0.7).collect();
    for_paths(|path| {
        let (mut pf, mut mf, mut vf) = (p0.clone(), m0.to_vec(), v0.clone());
        let (mut pr, mut mr, mut vr) = (p0.clone(), m0.to_vec(), v0.clone());
        for step in 1..=800u64 {
            optim::adam_step(&mut pf, &g, &mut mf, &mut vf, &h, step);
            reference::adam_step(&mut pr, &g, &mut mr, &mut vr, &h, step);
            let what = format!("{path:?} adam step {step}");
            same_bits_no_subnormal_moments([&pf, &mf, &vf], [&pr, &mr, &vr], &what);
        }
        for (i, &x) in mf.iter().enumerate() {
            if i == 11 {
                assert!(x.is_nan(), "{path:?}: a NaN moment stays NaN");
            } else if i != 9 {
                assert_eq!(
                    x.to_bits(),
                    0,
                    "{path:?}: m[{i}] = {x:e} after 800 zero gradients"
                );
            }
        }
        // The same rule in lazy Adam: the one row of a 17-wide table, 400 steps.
        let e = 17;
        let rows: Vec<u32> = vec![0];
        let (mut tf, mut mf, mut vf) = (p0.clone(), m0.to_vec(), v0.clone());
        let (mut tr, mut mr, mut vr) = (p0.clone(), m0.to_vec(), v0.clone());
        for step in 1..=400u64 {
            optim::lazy_adam_rows(&mut tf, &mut mf, &mut vf, e, &rows, &g, &h, step, 0.0);
            reference::lazy_adam_rows(&mut tr, &mut mr, &mut vr, e, &rows, &g, &h, step, 0.0);
            let what = format!("{path:?} lazy adam step {step}");
            same_bits_no_subnormal_moments([&tf, &mf, &vf], [&tr, &mr, &vr], &what);
        }
        assert_eq!(mf[0].to_bits(), 0, "{path:?}: lazy m[0] = {:e}", mf[0]);
    });
}

#[test]
fn lazy_adam_exact() {
    let mut rng = StdRng::seed_from_u64(5);
    let h = AdamParams::default();
    for_paths(|p| {
        for e in [1usize, 7, 16, 17, 33] {
            for nrows in [0usize, 1, 9, 300, 3000] {
                let v = 4000;
                let mut rows: Vec<u32> = (0..nrows).map(|_| rng.gen_range(0..v as u32)).collect();
                rows.sort_unstable();
                rows.dedup();
                let g = awkward(&mut rng, rows.len() * e, 10.0);
                let t0 = awkward(&mut rng, v * e, 1.0);
                let m0 = awkward(&mut rng, v * e, 0.1);
                let v0: Vec<f32> = (0..v * e).map(|_| rng.gen_range(0.0f32..0.5)).collect();
                for l2 in [0.0, 1e-4] {
                    let (mut tf, mut mf, mut vf) = (t0.clone(), m0.clone(), v0.clone());
                    optim::lazy_adam_rows(&mut tf, &mut mf, &mut vf, e, &rows, &g, &h, 3, l2);
                    let (mut tr, mut mr, mut vr) = (t0.clone(), m0.clone(), v0.clone());
                    reference::lazy_adam_rows(&mut tr, &mut mr, &mut vr, e, &rows, &g, &h, 3, l2);
                    let what = format!("{p:?} lazy_adam e={e} rows={} l2={l2}", rows.len());
                    assert_bits_eq(&tf, &tr, &what);
                    assert_bits_eq(&mf, &mr, &what);
                    assert_bits_eq(&vf, &vr, &what);
                }
            }
        }
        // Unsorted rows with repeats run serially, in order, like the reference.
        let (e, v) = (16, 50);
        let rows = [3u32, 1, 3, 49, 0];
        let g = awkward(&mut rng, rows.len() * e, 1.0);
        let t0 = awkward(&mut rng, v * e, 1.0);
        let (mut tf, mut mf, mut vf) = (t0.clone(), vec![0.0; v * e], vec![0.0; v * e]);
        optim::lazy_adam_rows(&mut tf, &mut mf, &mut vf, e, &rows, &g, &h, 1, 0.0);
        let (mut tr, mut mr, mut vr) = (t0.clone(), vec![0.0; v * e], vec![0.0; v * e]);
        reference::lazy_adam_rows(&mut tr, &mut mr, &mut vr, e, &rows, &g, &h, 1, 0.0);
        assert_bits_eq(&tf, &tr, "lazy_adam repeats");
        assert_bits_eq(&vf, &vr, "lazy_adam repeats");
    });
}

#[test]
fn gather_and_row_grads_exact() {
    let mut rng = StdRng::seed_from_u64(6);
    for &b in SIZES.iter().chain(&[4096]) {
        let shapes = [
            (16usize, 368usize, 32usize),
            (1, 1, 0),
            (17, 40, 23),
            (8, 8, 0),
            (32, 70, 38),
        ];
        for (e, stride, off) in shapes {
            for vmax in [1u32, 5, 3000, 5_000_000] {
                let vrows = vmax as usize;
                let table: Vec<f32> = if vrows * e <= 1 << 22 {
                    awkward(&mut rng, vrows * e, 10.0)
                } else {
                    continue;
                };
                let idx: Vec<u32> = (0..b).map(|_| rng.gen_range(0..vmax)).collect();
                let mut f = vec![-1.0f32; b * stride];
                embed::gather_rows(&mut f, stride, off, &table, e, &idx);
                let mut r = vec![-1.0f32; b * stride];
                reference::gather_rows(&mut r, stride, off, &table, e, &idx);
                assert_bits_eq(&f, &r, &format!("gather b={b} e={e}"));
            }
            // Row grads; 3000 ids sort in two passes of 6 bits, 467298 in two of 10, up to
            // 2^31 in three of 11.
            for vmax in [1u32, 7, 3000, 467_298, 1 << 31] {
                let idx: Vec<u32> = (0..b).map(|_| rng.gen_range(0..vmax)).collect();
                let g = awkward(&mut rng, b * stride, 10.0);
                let (mut rf, mut gf, mut of) = (vec![9], vec![9.0f32], vec![]);
                embed::accumulate_row_grads(&mut rf, &mut gf, &mut of, &idx, &g, stride, off, e);
                let (mut rr, mut gr, mut or) = (vec![], vec![], vec![]);
                reference::accumulate_row_grads(
                    &mut rr, &mut gr, &mut or, &idx, &g, stride, off, e,
                );
                assert_eq!(rf, rr, "row_grads rows b={b} vmax={vmax}");
                assert_bits_eq(&gf, &gr, &format!("row_grads b={b} vmax={vmax}"));
            }
        }
    }
}

#[test]
fn gather_fields_is_gather_rows_per_field() {
    let mut rng = StdRng::seed_from_u64(16);
    // 70 fields cross the 64-field group of `gather_fields`; e = 5 takes the generic path.
    for rows in SIZES {
        for (e, n_fields, off, pad) in [
            (16usize, 23usize, 0usize, 0usize),
            (8, 3, 7, 5),
            (32, 2, 0, 1),
            (5, 4, 3, 2),
            (16, 70, 16, 0),
            (1, 9, 0, 0),
        ] {
            let stride = off + n_fields * e + pad;
            let vocab: Vec<usize> = (0..n_fields).map(|j| [1, 3, 17, 3000][j % 4]).collect();
            let tables: Vec<Vec<f32>> = vocab
                .iter()
                .map(|&v| awkward(&mut rng, v * e, 10.0))
                .collect();
            // Field-major indices with a leading row offset, as the model slices a chunk.
            let (ld, r0) = (rows + 3, 2);
            let idx: Vec<Vec<u32>> = vocab
                .iter()
                .map(|&v| (0..ld + r0).map(|_| rng.gen_range(0..v as u32)).collect())
                .collect();
            let mut f = vec![-1.0f32; rows * stride];
            embed::gather_fields(
                &mut f,
                stride,
                off,
                n_fields,
                |j| (&tables[j][..], &idx[j][r0..r0 + rows]),
                e,
                rows,
            );
            let mut r = vec![-1.0f32; rows * stride];
            for j in 0..n_fields {
                let ix = &idx[j][r0..r0 + rows];
                reference::gather_rows(&mut r, stride, off + j * e, &tables[j], e, ix);
            }
            assert_bits_eq(
                &f,
                &r,
                &format!("gather_fields rows={rows} e={e} fields={n_fields}"),
            );
        }
    }
}

// ---------------------------------------------------------------- exp-based, few ulp

/// The vector `exp` scales by `2^n` with one rounding however it gets there (AVX-512's
/// `vscalefps`; elsewhere one multiply when every lane's result is normal, two when a lane's
/// may be subnormal). Checked through the sigmoid: the same inputs alone, and with one lane of
/// every vector pushed into the subnormal range (the two-multiply case for its whole vector),
/// agree bit for bit on the other lanes; and the AVX2 and AVX-512 paths (the same FMAs) agree
/// bit for bit on all inputs, subnormal results included.
#[test]
fn exp_same_bits_on_both_scaling_paths() {
    let mut rng = StdRng::seed_from_u64(71);
    let n = 4096;
    // Inputs whose e^-|x| is normal, down to its smallest values (x near -87.3).
    let mut x: Vec<f32> = (0..n).map(|_| rng.gen_range(-87.3f32..87.3)).collect();
    for (i, v) in [-87.33f32, -87.0, -86.5, -80.0, -0.0, 0.0]
        .iter()
        .enumerate()
    {
        x[i * 13 + 1] = *v;
    }
    let mut per_path = Vec::new();
    for_paths(|p| {
        let mut alone = vec![0.0f32; n];
        act::scaled_sigmoid_forward(&mut alone, &x, 1.0);
        // Subnormal and underflowing results too, for the comparison across paths.
        let deep: Vec<f32> = (0..n).map(|i| -86.0 - 20.0 * i as f32 / n as f32).collect();
        let mut deep_y = vec![0.0f32; n];
        act::scaled_sigmoid_forward(&mut deep_y, &deep, 1.0);
        per_path.push((p, alone.clone(), deep_y));
        // Every 8th lane (a lane of every 8- and 16-wide vector) at -100: its e^x is subnormal.
        let mut mixed_x = x.clone();
        for v in mixed_x.iter_mut().step_by(8) {
            *v = -100.0;
        }
        let mut mixed = vec![0.0f32; n];
        act::scaled_sigmoid_forward(&mut mixed, &mixed_x, 1.0);
        for i in (0..n).filter(|i| i % 8 != 0) {
            assert_eq!(
                alone[i].to_bits(),
                mixed[i].to_bits(),
                "{p:?} x={:e}: {:e} alone vs {:e} beside a subnormal lane",
                x[i],
                alone[i],
                mixed[i]
            );
        }
    });
    // Below −104 (where expf rounds to 0) exactly 0, on every path.
    for_paths(|p| {
        let x = [-104.0f32, -104.5, -150.0, -1e30, f32::NEG_INFINITY];
        let mut y = [1.0f32; 5];
        act::scaled_sigmoid_forward(&mut y, &x, 2.0);
        for (v, o) in x.iter().zip(y) {
            assert_eq!(o.to_bits(), 0, "{p:?} sigmoid({v:e}) = {o:e}, not +0");
        }
    });
    let fused: Vec<_> = per_path
        .iter()
        .filter(|r| r.0 != SimdPath::Portable)
        .collect();
    for w in fused.windows(2) {
        assert_bits_eq(&w[0].1, &w[1].1, &format!("{:?} vs {:?}", w[0].0, w[1].0));
        assert_bits_eq(
            &w[0].2,
            &w[1].2,
            &format!("{:?} vs {:?}, deep", w[0].0, w[1].0),
        );
    }
}

#[test]
fn scaled_sigmoid_forward_within_ulps() {
    let mut rng = StdRng::seed_from_u64(7);
    // Every f32 exponent the kernel can meet, plus the subnormal-result range and the
    // underflow threshold of expf (~-103.97).
    let mut special: Vec<f32> = vec![0.0, -0.0, 1e-30, -1e-30, 87.0, -87.0, -88.5, -100.0, 100.0];
    special.extend([
        -103.0, -103.9, -103.98, -104.0, -110.0, 150.0, -150.0, 1e30, -1e30,
    ]);
    for_paths(|p| {
        for &n in SIZES.iter().chain(&[50_000]) {
            let mut x = awkward(&mut rng, n, 120.0);
            for (i, s) in special.iter().enumerate() {
                if i < n {
                    x[(i * 7919) % n] = *s;
                }
            }
            for scale in [1.0f32, 2.0] {
                let mut f = unaligned(&vec![0.0; n]);
                act::scaled_sigmoid_forward(&mut f[1..], &unaligned(&x)[1..], scale);
                let mut r = vec![0.0; n];
                reference::scaled_sigmoid_forward(&mut r, &x, scale);
                for i in 0..n {
                    // exp ≤ 2 ulp, 1+e and the divide ≤ 1 ulp each, scale exact (power of 2).
                    let d = ulps(f[1 + i], r[i]);
                    assert!(
                        d <= 4,
                        "{p:?} sigmoid x={:e}: {:e} vs {:e} ({d} ulp)",
                        x[i],
                        f[1 + i],
                        r[i]
                    );
                }
            }
        }
    });
}

#[test]
fn bce_backward_within_bound() {
    let mut rng = StdRng::seed_from_u64(8);
    for_paths(|p| {
        for &n in SIZES.iter().chain(&[40_000]) {
            let x = awkward(&mut rng, n, 120.0);
            let y: Vec<f32> = (0..n).map(|_| rng.gen_range(0..2) as f32).collect();
            let dx0 = awkward(&mut rng, n, 1.0);
            let mut f = unaligned(&dx0);
            loss::bce_with_logits_backward(&mut f[1..], &x, &y, 0.25);
            let mut r = dx0.clone();
            reference::bce_with_logits_backward(&mut r, &x, &y, 0.25);
            for i in 0..n {
                // σ differs by ≤ 4 ulp(σ) (see sigmoid); the subtraction, scale and add then
                // round once each relative to their results.
                let s = reference::sigmoid(x[i]) as f64;
                let tol = 0.25 * 4.0 * 2.0 * U * s
                    + 4.0 * U * (r[i].abs() as f64 + dx0[i].abs() as f64)
                    + 1e-44;
                let d = (f[1 + i] as f64 - r[i] as f64).abs();
                assert!(
                    d <= tol,
                    "{p:?} bce_backward x={:e}: {} vs {} (tol {tol:e})",
                    x[i],
                    f[1 + i],
                    r[i]
                );
            }
        }
    });
}

#[test]
fn softmax_within_bound() {
    let mut rng = StdRng::seed_from_u64(9);
    for_paths(|p| {
        for &n in &SIZES[1..] {
            for rows in [1usize, 3, 40] {
                let mut x = awkward(&mut rng, rows * n, 150.0);
                if n > 2 {
                    x[1] = x[0]; // a tie for the maximum
                }
                let mut f = unaligned(&vec![0.0; rows * n]);
                softmax::softmax_rows_forward(&mut f[1..], &unaligned(&x)[1..], n);
                let mut r = vec![0.0; rows * n];
                reference::softmax_rows_forward(&mut r, &x, n);
                for i in 0..rows * n {
                    // y = e_i / Σe: each e_i within ~2 ulp of expf, the positive sum within
                    // γ_n of the true sum for either order, then one multiply.
                    let tol = (2.0 * n as f64 + 8.0) * U * r[i] as f64 + 1e-44;
                    let d = (f[1 + i] as f64 - r[i] as f64).abs();
                    assert!(
                        d <= tol,
                        "{p:?} softmax n={n} [{i}]: {} vs {}",
                        f[1 + i],
                        r[i]
                    );
                }
                // Backward, with the reference forward's output as y.
                let dy = awkward(&mut rng, rows * n, 10.0);
                let dx0 = awkward(&mut rng, rows * n, 1.0);
                let mut f = unaligned(&dx0);
                softmax::softmax_rows_backward(&mut f[1..], &dy, &r, n);
                let mut rb = dx0.clone();
                reference::softmax_rows_backward(&mut rb, &dy, &r, n);
                for b in 0..rows {
                    let row = b * n..(b + 1) * n;
                    let sabs: f64 = row.clone().map(|i| (dy[i] * r[i]).abs() as f64).sum();
                    for i in row {
                        // dot differs by ≤ 2γ_n Σ|g y|; it is multiplied by y_i; the rest
                        // (subtract, multiply, add) rounds relative to its values.
                        let dot_err = 2.0 * (n as f64 + 2.0) * U * sabs;
                        let mag = dx0[i].abs() as f64
                            + (r[i] as f64 * (dy[i] as f64).abs())
                            + r[i] as f64 * sabs;
                        let tol = r[i] as f64 * dot_err + 4.0 * U * mag + 1e-44;
                        let d = (f[1 + i] as f64 - rb[i] as f64).abs();
                        assert!(
                            d <= tol,
                            "{p:?} softmax_bwd n={n} [{i}]: {} vs {}",
                            f[1 + i],
                            rb[i]
                        );
                    }
                }
            }
        }
        // Large, for the rayon split.
        let (rows, n) = (1000, 64);
        let x = awkward(&mut rng, rows * n, 5.0);
        let mut f = vec![0.0; rows * n];
        softmax::softmax_rows_forward(&mut f, &x, n);
        let mut r = vec![0.0; rows * n];
        reference::softmax_rows_forward(&mut r, &x, n);
        for i in 0..rows * n {
            assert!(
                (f[i] as f64 - r[i] as f64).abs()
                    <= (2.0 * n as f64 + 8.0) * U * r[i] as f64 + 1e-44
            );
        }
    });
}

// ---------------------------------------------------------------- argmin

/// Exact distance `||C_k||² − 2⟨r, C_k⟩` in f64 and the magnitude its f32 error scales with.
fn dist64(r: &[f32], c: &[f32]) -> (f64, f64) {
    let (mut d, mut mag) = (0.0f64, 0.0f64);
    for (&a, &b) in r.iter().zip(c) {
        d += (b as f64) * (b as f64) - 2.0 * (a as f64) * (b as f64);
        mag += (b as f64) * (b as f64) + 2.0 * ((a as f64) * (b as f64)).abs();
    }
    (d, mag)
}

/// Checks fast codes against reference codes: equal, or a near-tie — the two candidates'
/// exact distances agree within the f32 error of the computation (both the norm and the dot
/// are sums of z terms: ≤ 2·γ_{z+2}·magnitude for each of the two results).
#[track_caller]
fn check_codes(fast: &[u32], refc: &[u32], r: &[f32], cb: &[f32], z: usize, what: &str) {
    for (b, (&f, &c)) in fast.iter().zip(refc).enumerate() {
        if f == c {
            continue;
        }
        let row = &r[b * z..(b + 1) * z];
        let (df, mf) = dist64(row, &cb[f as usize * z..(f as usize + 1) * z]);
        let (dr, mr) = dist64(row, &cb[c as usize * z..(c as usize + 1) * z]);
        let tol = 4.0 * (z as f64 + 2.0) * U * (mf + mr);
        assert!(
            (df - dr).abs() <= tol,
            "{what}: row {b}: fast code {f} (d={df}) vs reference {c} (d={dr}), tol {tol:e}"
        );
    }
}

#[test]
fn argmin_near_ties_only() {
    let mut rng = StdRng::seed_from_u64(10);
    for_paths(|p| {
        for &z in &[1usize, 3, 16, 17, 48, 100] {
            for &k in &[1usize, 7, 17, 33, 64, 100] {
                for &b in &[0usize, 1, 7, 9, 31, 257, 1023] {
                    let cb = awkward(&mut rng, k * z, 4.0);
                    let r = awkward(&mut rng, b * z, 4.0);
                    let mut norms = vec![0.0f32; k];
                    reference::sq_norms(&mut norms, &cb, z);
                    let mut f = vec![u32::MAX; b];
                    vq::argmin_sq_l2(&mut f, &unaligned(&r)[1..], &unaligned(&cb)[1..], &norms, z);
                    let mut c = vec![0u32; b];
                    reference::argmin_sq_l2(&mut c, &r, &cb, &norms, z);
                    check_codes(
                        &f,
                        &c,
                        &r,
                        &cb,
                        z,
                        &format!("{p:?} argmin z={z} k={k} b={b}"),
                    );
                }
            }
        }
    });
}

#[test]
fn argmin_exact_ties_lowest_index() {
    let mut rng = StdRng::seed_from_u64(11);
    for_paths(|p| {
        for &z in &[1usize, 16, 17, 48] {
            for &k in &[2usize, 40, 1024, 1100] {
                // Only 5 distinct codes, repeated: every minimum is an exact tie, which every
                // path must resolve to the first copy (duplicates are computed identically).
                let base = awkward(&mut rng, 5 * z, 3.0);
                let pick: Vec<usize> = (0..k).map(|_| rng.gen_range(0..5)).collect();
                let cb: Vec<f32> = pick
                    .iter()
                    .flat_map(|&q| base[q * z..(q + 1) * z].to_vec())
                    .collect();
                let b = 300;
                let r = awkward(&mut rng, b * z, 3.0);
                let mut norms = vec![0.0f32; k];
                vq::sq_norms(&mut norms, &cb, z);
                let mut f = vec![0u32; b];
                vq::argmin_sq_l2(&mut f, &r, &cb, &norms, z);
                let mut scratch = vec![0.0f32; vq::argmin_scratch_len(b, k, z)];
                let mut g = vec![0u32; b];
                vq::argmin_sq_l2_scratch(&mut g, &mut scratch, &r, &cb, &norms, z);
                for (row, (&c1, &c2)) in f.iter().zip(&g).enumerate() {
                    for c in [c1, c2] {
                        let first = pick.iter().position(|&q| q == pick[c as usize]).unwrap();
                        assert_eq!(
                            c as usize, first,
                            "{p:?} z={z} k={k} row {row}: not the first copy"
                        );
                    }
                }
                let mut c = vec![0u32; b];
                reference::argmin_sq_l2(&mut c, &r, &cb, &norms, z);
                check_codes(
                    &f,
                    &c,
                    &r,
                    &cb,
                    z,
                    &format!("{p:?} ties direct z={z} k={k}"),
                );
                check_codes(&g, &c, &r, &cb, z, &format!("{p:?} ties gemm z={z} k={k}"));
            }
        }
    });
}

#[test]
fn argmin_gemm_path_and_norms() {
    let mut rng = StdRng::seed_from_u64(12);
    for_paths(|p| {
        for &(b, k, z) in &[
            (9usize, 1024usize, 16usize),
            (300, 1031, 48),
            (257, 2048, 7),
            (1, 1024, 256),
        ] {
            let cb = awkward(&mut rng, k * z, 2.0);
            let r = awkward(&mut rng, b * z, 2.0);
            let mut nf = vec![0.0f32; k];
            vq::sq_norms(&mut nf, &cb, z);
            let mut nr = vec![0.0f32; k];
            reference::sq_norms(&mut nr, &cb, z);
            for (a, c) in nf.iter().zip(&nr) {
                // Positive terms: both sums within γ_z of the exact one.
                assert!((a - c).abs() as f64 <= 2.0 * (z as f64 + 1.0) * U * *c as f64);
            }
            let need = vq::argmin_scratch_len(b, k, z);
            assert!(need >= b.min(256) * k, "GEMM path expected for k={k}");
            let mut scratch = vec![f32::NAN; need];
            let mut f = vec![0u32; b];
            vq::argmin_sq_l2_scratch(&mut f, &mut scratch, &r, &cb, &nr, z);
            let mut c = vec![0u32; b];
            reference::argmin_sq_l2(&mut c, &r, &cb, &nr, z);
            check_codes(
                &f,
                &c,
                &r,
                &cb,
                z,
                &format!("{p:?} argmin gemm b={b} k={k} z={z}"),
            );
        }
    });
}

// ---------------------------------------------------------------- GEMM

fn stored(rng: &mut StdRng, rows: usize, cols: usize) -> Vec<f32> {
    awkward(rng, rows * cols, 20.0)
}

/// Runs fast GEMM (and matrixmultiply) against the reference with the γ_k bound.
#[allow(clippy::too_many_arguments)]
fn check_gemm(
    rng: &mut StdRng,
    m: usize,
    n: usize,
    k: usize,
    ta: Trans,
    tb: Trans,
    alpha: f32,
    beta: f32,
    what: &str,
) {
    let a = stored(rng, m, k);
    let b = stored(rng, k, n);
    let c0 = if beta == 0.0 {
        vec![f32::NAN; m * n]
    } else {
        stored(rng, m, n)
    };
    let mut f = unaligned(&c0);
    gemm(
        m,
        n,
        k,
        alpha,
        &unaligned(&a)[1..],
        ta,
        &unaligned(&b)[1..],
        tb,
        beta,
        &mut f[1..],
    );
    let mut mm = c0.clone();
    hmdn_kernels::gemm::gemm_matrixmultiply(m, n, k, alpha, &a, ta, &b, tb, beta, &mut mm);
    let mut r = c0.clone();
    reference::gemm(m, n, k, alpha, &a, ta, &b, tb, beta, &mut r);
    for i in 0..m {
        for j in 0..n {
            let mut mag = 0.0f64;
            for p in 0..k {
                let av = reference::op_at(&a, ta, m, k, i, p);
                let bv = reference::op_at(&b, tb, k, n, p, j);
                mag += (av as f64 * bv as f64).abs();
            }
            let cmag = if beta == 0.0 {
                0.0
            } else {
                (beta as f64 * c0[i * n + j] as f64).abs()
            };
            // Each result within γ_{k+2}(|α|Σ|a||b| + |βc|) of the exact value.
            let tol = 2.0 * (k as f64 + 2.0) * U * (alpha.abs() as f64 * mag + cmag) + 1e-40;
            let rv = r[i * n + j] as f64;
            for (name, v) in [
                ("fast", f[1 + i * n + j]),
                ("matrixmultiply", mm[i * n + j]),
            ] {
                let d = (v as f64 - rv).abs();
                assert!(
                    d <= tol,
                    "{what} {name} [{i},{j}]: {v} vs {rv} (tol {tol:e})"
                );
            }
        }
    }
}

/// The four orientations of a GEMM's operands, `(op(A), op(B))`.
const ORIENTS: [(Trans, Trans); 4] = [
    (Trans::N, Trans::N),
    (Trans::N, Trans::T),
    (Trans::T, Trans::N),
    (Trans::T, Trans::T),
];

#[test]
fn gemm_awkward_shapes() {
    let mut rng = StdRng::seed_from_u64(13);
    let dims = [0usize, 1, 7, 8, 9, 14, 17, 31, 33];
    for_paths(|p| {
        for &m in &dims {
            for &n in &dims {
                for &k in &dims {
                    let (ta, tb) = ORIENTS[(m + 2 * n + 3 * k) % 4];
                    let (alpha, beta) = [(1.0, 0.0), (1.0, 1.0), (-0.5, 2.0)][(m + n + k) % 3];
                    check_gemm(
                        &mut rng,
                        m,
                        n,
                        k,
                        ta,
                        tb,
                        alpha,
                        beta,
                        &format!("{p:?} {m}x{n}x{k} {ta:?}{tb:?}"),
                    );
                }
            }
        }
        for &(m, n, k) in &[
            (17usize, 257usize, 33usize),
            (257, 17, 70),
            (63, 49, 260),
            (300, 370, 600),
            (13, 5, 1031),
            (145, 40, 7),
        ] {
            for &(ta, tb) in &ORIENTS {
                check_gemm(
                    &mut rng,
                    m,
                    n,
                    k,
                    ta,
                    tb,
                    1.0,
                    1.0,
                    &format!("{p:?} {m}x{n}x{k} {ta:?}{tb:?}"),
                );
            }
        }
    });
}

/// On the x86 paths (fused multiply-add in hardware) the GEMM's result is, bit for bit, one
/// FMA chain per k-block for every element of C (`gemm::K_BLOCK`), the blocks added to C in
/// order: the property determinism rests on (no thread count or task grid changes a chain),
/// and the one that lets a micro-kernel's k loop be rewritten (AVX2's written-out loop for
/// row-major A) without changing any model's weights. Shapes: whole 6- and
/// 12-row tiles and partial ones, A in place in both layouts, B packed and in place, one and
/// several k-blocks.
#[test]
fn gemm_is_one_fma_chain_per_k_block() {
    let mut rng = StdRng::seed_from_u64(29);
    for_paths(|p| {
        if p == SimdPath::Portable {
            return; // its `mul_add` may round twice (see `Vf::mul_add`)
        }
        for &(m, n, k) in &[
            (6usize, 16usize, 1usize),
            (12, 32, 5),
            (13, 33, 192),
            (64, 128, 193),
            (150, 48, 368),
            (61, 17, 400),
        ] {
            for &(ta, tb) in &ORIENTS {
                for &(alpha, beta) in &[(1.0f32, 0.0f32), (1.0, 1.0), (-0.5, 2.0)] {
                    let a: Vec<f32> = (0..m * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
                    let b: Vec<f32> = (0..k * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
                    let c0: Vec<f32> = (0..m * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
                    let mut c = c0.clone();
                    gemm(m, n, k, alpha, &a, ta, &b, tb, beta, &mut c);
                    let nkb = k.div_ceil(gemm::K_BLOCK);
                    let kc = k.div_ceil(nkb);
                    for i in 0..m {
                        for j in 0..n {
                            let mut want = c0[i * n + j];
                            for kb in 0..nkb {
                                let mut acc = 0.0f32;
                                for q in kb * kc..((kb + 1) * kc).min(k) {
                                    let (av, bv) = (
                                        reference::op_at(&a, ta, m, k, i, q),
                                        reference::op_at(&b, tb, k, n, q, j),
                                    );
                                    acc = av.mul_add(bv, acc);
                                }
                                let s = acc * alpha;
                                want = if kb > 0 {
                                    want + s
                                } else if beta == 0.0 {
                                    s
                                } else {
                                    s + beta * want
                                };
                            }
                            assert_eq!(
                                c[i * n + j].to_bits(),
                                want.to_bits(),
                                "{p:?} {m}x{n}x{k} {ta:?}{tb:?} alpha {alpha} beta {beta} \
                                 [{i},{j}]: {} vs the chains' {want}",
                                c[i * n + j]
                            );
                        }
                    }
                }
            }
        }
    });
}

#[test]
fn gemm_k_zero_scales_c() {
    let mut c = vec![1.0f32, -2.0, f32::NAN];
    gemm(1, 3, 0, 1.0f32, &[], Trans::N, &[], Trans::N, 0.0, &mut c);
    assert_eq!(bits(&c), bits(&[0.0, 0.0, 0.0]));
    let mut c = vec![1.0f32, -2.0];
    gemm(2, 1, 0, 1.0f32, &[], Trans::N, &[], Trans::N, 3.0, &mut c);
    assert_eq!(c, vec![3.0, -6.0]);
}

// ---------------------------------------------------------------- determinism over threads

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

#[test]
fn thread_count_does_not_change_bits() {
    let mut rng = StdRng::seed_from_u64(14);
    // Linear-layer shapes in all three orientations, big enough for the parallel paths.
    let (bsz, din, dout) = (1000usize, 368usize, 128usize);
    let x = stored(&mut rng, bsz, din);
    let w = stored(&mut rng, dout, din);
    let dy = stored(&mut rng, bsz, dout);
    let bias = awkward(&mut rng, dout, 1.0);
    let h = AdamParams::default();
    let cb = awkward(&mut rng, 64 * 48, 2.0);
    let big_cb = awkward(&mut rng, 1024 * 48, 2.0);
    let rq = awkward(&mut rng, bsz * 48, 2.0);
    let table = awkward(&mut rng, 5000 * 16, 1.0);
    let idx: Vec<u32> = (0..4096).map(|_| rng.gen_range(0..5000)).collect();
    let run = || {
        let mut out: Vec<Vec<u32>> = Vec::new();
        for p in hmdn_kernels::available_paths() {
            with_path(p, || {
                let mut y = vec![0.0f32; bsz * dout];
                gemm(bsz, dout, din, 1.0, &x, Trans::N, &w, Trans::T, 0.0, &mut y);
                out.push(bits(&y));
                let mut dx = vec![0.0f32; bsz * din];
                gemm(
                    bsz,
                    din,
                    dout,
                    1.0,
                    &dy,
                    Trans::N,
                    &w,
                    Trans::N,
                    0.0,
                    &mut dx,
                );
                out.push(bits(&dx));
                let mut dw = vec![0.0f32; dout * din];
                gemm(
                    dout,
                    din,
                    bsz,
                    1.0,
                    &dy,
                    Trans::T,
                    &x,
                    Trans::N,
                    0.0,
                    &mut dw,
                );
                out.push(bits(&dw));
                act::bias_relu_forward(&mut y, &bias);
                out.push(bits(&y));
                let mut s = vec![0.0f32; bsz * din];
                act::scaled_sigmoid_forward(&mut s, &dx, 2.0);
                out.push(bits(&s));
                softmax::softmax_rows_forward(&mut s, &dx, din);
                out.push(bits(&s));
                let mut db = vec![0.0f32; din];
                act::bias_grad(&mut db, &dx);
                out.push(bits(&db));
                let (mut pp, mut m, mut v) =
                    (x.clone(), vec![0.0f32; x.len()], vec![0.0f32; x.len()]);
                optim::adam_step(&mut pp, &dx, &mut m, &mut v, &h, 1);
                out.push(bits(&pp));
                let mut norms = vec![0.0f32; 1024];
                vq::sq_norms(&mut norms[..64], &cb, 48);
                let mut codes = vec![0u32; bsz];
                vq::argmin_sq_l2(&mut codes, &rq, &cb, &norms[..64], 48);
                out.push(codes.clone());
                vq::sq_norms(&mut norms, &big_cb, 48);
                let mut scratch = vec![0.0f32; vq::argmin_scratch_len(bsz, 1024, 48)];
                vq::argmin_sq_l2_scratch(&mut codes, &mut scratch, &rq, &big_cb, &norms, 48);
                out.push(codes);
                let mut g = vec![0.0f32; 4096 * 368];
                embed::gather_rows(&mut g, 368, 16, &table, 16, &idx);
                out.push(bits(&g));
                let (mut rows, mut grad, mut order) = (vec![], vec![], vec![]);
                embed::accumulate_row_grads(&mut rows, &mut grad, &mut order, &idx, &g, 368, 0, 16);
                let (mut t, mut m, mut v) = (
                    table.clone(),
                    vec![0.0f32; table.len()],
                    vec![0.0f32; table.len()],
                );
                optim::lazy_adam_rows(&mut t, &mut m, &mut v, 16, &rows, &grad, &h, 1, 0.0);
                out.push(bits(&t));
            });
        }
        out
    };
    let one = in_pool(1, run);
    let two = in_pool(2, run);
    let three = in_pool(3, run);
    assert_eq!(one.len(), two.len());
    for (i, (a, b)) in one.iter().zip(&two).enumerate() {
        assert!(a == b, "output {i} differs between 1 and 2 threads");
    }
    for (i, (a, b)) in one.iter().zip(&three).enumerate() {
        assert!(a == b, "output {i} differs between 1 and 3 threads");
    }
}

// ---------------------------------------------------------------- AUC

/// Independent O(n²) AUC: fraction of (positive, negative) pairs ranked correctly, ties ½.
fn auc_pairs(s: &[f32], y: &[f32]) -> Option<f64> {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for i in 0..s.len() {
        for j in 0..s.len() {
            if y[i] > 0.5 && y[j] <= 0.5 {
                den += 1.0;
                num += if s[i] > s[j] {
                    1.0
                } else if s[i] == s[j] {
                    0.5
                } else {
                    0.0
                };
            }
        }
    }
    (den > 0.0).then(|| num / den)
}

#[test]
fn auc_matches_reference_and_pair_count() {
    let mut rng = StdRng::seed_from_u64(15);
    for &n in SIZES.iter().chain(&[2000, 100_000]) {
        for levels in [2u32, 10, 1 << 20] {
            // Quantised scores create many ties; ±0 are equal scores.
            let s: Vec<f32> = (0..n)
                .map(|i| {
                    let q = rng.gen_range(0..levels) as f32 / levels as f32;
                    if i % 13 == 0 {
                        -0.0
                    } else if i % 17 == 0 {
                        0.0
                    } else {
                        q
                    }
                })
                .collect();
            let y: Vec<f32> = (0..n).map(|_| rng.gen_range(0..2) as f32).collect();
            let f = auc::auc(&s, &y);
            let r = reference::auc(&s, &y);
            assert_eq!(
                f.map(f64::to_bits),
                r.map(f64::to_bits),
                "auc n={n} levels={levels}"
            );
            if n <= 2000 {
                let pc = auc_pairs(&s, &y);
                assert_eq!(f.is_some(), pc.is_some());
                if let (Some(a), Some(b)) = (f, pc) {
                    assert!((a - b).abs() < 1e-12, "auc n={n}: {a} vs pairs {b}");
                }
            }
        }
    }
    assert_eq!(auc::auc(&[0.1, 0.2], &[1.0, 1.0]), None);
    assert_eq!(auc::auc(&[0.1, 0.9], &[0.0, 1.0]), Some(1.0));
    assert_eq!(auc::auc(&[0.5, 0.5], &[0.0, 1.0]), Some(0.5));
}

// ---------------------------------------------------------------- dispatch

#[test]
fn path_override_and_info() {
    let paths = hmdn_kernels::available_paths();
    assert_eq!(paths[0], SimdPath::Portable);
    let before = hmdn_kernels::simd_path();
    for &p in &paths {
        with_path(p, || {
            assert_eq!(hmdn_kernels::simd_path(), p);
            assert!(hmdn_kernels::simd_info().starts_with(&format!("simd: {} ", p.name())));
        });
    }
    assert_eq!(hmdn_kernels::simd_path(), before);
    assert_eq!(SimdPath::from_name("AVX2"), Some(SimdPath::Avx2));
    assert_eq!(SimdPath::from_name("sse"), None);
}

#[test]
fn argmin_from_dots_exact() {
    // Same dots in, same IEEE ops per candidate (norm − (dot + dot)), strict-< first minimum:
    // the scan must agree exactly, ties included.
    let mut rng = StdRng::seed_from_u64(16);
    for_paths(|p| {
        for &k in &SIZES[1..] {
            for &b in &[1usize, 9, 33] {
                let mut dots: Vec<f32> = (0..b * k)
                    .map(|_| rng.gen_range(-4i32..4) as f32 * 0.5)
                    .collect();
                let norms: Vec<f32> = (0..k).map(|_| rng.gen_range(0i32..4) as f32).collect();
                if k > 3 {
                    dots[2] = f32::INFINITY;
                }
                let mut f = vec![0u32; b];
                vq::argmin_from_dots(&mut f, &unaligned(&dots)[1..], &norms);
                let mut r = vec![0u32; b];
                reference::argmin_from_dots(&mut r, &dots, &norms);
                assert_eq!(f, r, "{p:?} argmin_from_dots k={k} b={b}");
            }
        }
    });
}

/// A GEMM on a pre-packed `op(B)` gives the same bits as the GEMM that packs (or reads) B
/// itself, on every path, both B orientations, awkward sizes, 1 and 2 threads; a packing made
/// for another path is ignored (plain GEMM on B).
#[test]
fn gemm_packed_b_same_bits() {
    use hmdn_kernels::gemm::{gemm_packed_b, pack_b_for, packed_b_len};
    let mut rng = StdRng::seed_from_u64(29);
    let shapes = [
        (1usize, 1usize, 1usize),
        (7, 9, 17),
        (33, 31, 300),
        (256, 128, 368),
        (13, 64, 416),
    ];
    for threads in [1, 2] {
        in_pool(threads, || {
            for_paths(|p| {
                for &(m, n, k) in &shapes {
                    for tb in [Trans::N, Trans::T] {
                        let a = awkward(&mut rng, m * k, 4.0);
                        let b = awkward(&mut rng, k * n, 4.0);
                        let c0 = awkward(&mut rng, m * n, 4.0);
                        let mut packed = vec![0.0f32; packed_b_len(n, k, p)];
                        pack_b_for(&mut packed, n, k, &b, tb, p);
                        let mut want = c0.clone();
                        gemm(m, n, k, 0.5, &a, Trans::N, &b, tb, 1.0, &mut want);
                        let mut got = c0.clone();
                        let pk = Some((&packed[..], p));
                        gemm_packed_b(m, n, k, 0.5, &a, Trans::N, &b, tb, pk, 1.0, &mut got);
                        let what = format!("{p:?} {m}x{n}x{k} {tb:?} threads {threads}");
                        assert_bits_eq(&got, &want, &what);
                        // Packed for a different path: ignored.
                        let other = SimdPath::Portable;
                        if other != p {
                            let mut got = c0.clone();
                            let pk = Some((&packed[..], other));
                            gemm_packed_b(m, n, k, 0.5, &a, Trans::N, &b, tb, pk, 1.0, &mut got);
                            assert_bits_eq(&got, &want, &format!("{what}, stale path"));
                        }
                    }
                }
            });
        });
    }
}

/// The sigmoid epilogue decides how to scale `e^r` by `2^n` once per group of tile vectors
/// (two multiplies for the whole group when any lane's result is subnormal); the separate
/// pass decides per vector. One column's bias at −100 puts one subnormal lane in one vector
/// of every tile row, beside vectors without one: every element, that lane's included, must
/// keep the separate pass's bits. (Taking the one-multiply form for the whole group would
/// give that lane a wrong power of two; a per-vector decision is not what is tested here.)
#[test]
fn gemm_sigmoid_epilogue_same_bits_beside_a_subnormal_lane() {
    use hmdn_kernels::gemm::{gemm_epilogue, gemm_packed_b, Epilogue};
    let mut rng = StdRng::seed_from_u64(37);
    for_paths(|p| {
        for (m, n, k) in [(12usize, 64usize, 9usize), (7, 368, 64), (25, 40, 3)] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.gen_range(-0.3f32..0.3)).collect();
            let b: Vec<f32> = (0..n * k).map(|_| rng.gen_range(-0.3f32..0.3)).collect();
            let x = awkward(&mut rng, m * n, 10.0);
            for deep_col in [3usize, n - 1] {
                let mut bias: Vec<f32> = (0..n).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
                bias[deep_col] = -100.0;
                let mut u = vec![f32::NAN; m * n];
                gemm_packed_b(m, n, k, 1.0, &a, Trans::N, &b, Trans::T, None, 0.0, &mut u);
                let (mut want, mut want_y) = (vec![0.0; m * n], vec![0.0; m * n]);
                let mul = Some((&mut want_y[..], &x[..]));
                act::bias_scaled_sigmoid_forward(&mut want, &u, &bias, 2.0, mul);
                // The deep lane's result is subnormal and not zero: the case under test.
                let d = want[deep_col];
                assert!(d > 0.0 && !d.is_normal(), "{p:?} σ lane is {d:e}");
                let (mut got, mut got_y) = (vec![f32::NAN; m * n], vec![0.0; m * n]);
                let epi = Epilogue::BiasScaledSigmoid {
                    bias: &bias,
                    scale: 2.0,
                    mul: Some((&mut got_y[..], &x[..])),
                };
                gemm_epilogue(m, n, k, &a, Trans::N, &b, Trans::T, None, &mut got, epi);
                let what = format!("{p:?} {m}x{n}x{k} deep column {deep_col}");
                assert_bits_eq(&got, &want, &what);
                assert_bits_eq(&got_y, &want_y, &format!("{what}, y"));
            }
        }
    });
}

/// A GEMM with an epilogue gives the bits of the plain GEMM followed by the activation's own
/// pass (`bias_relu_forward`, `bias_scaled_sigmoid_forward` with and without the product), on
/// every path, both B orientations, pre-packed or not, 1 and 2 threads, on awkward shapes:
/// empty, partial register tiles in both directions, several k-blocks.
#[test]
fn gemm_epilogue_same_bits_as_gemm_then_activation() {
    use hmdn_kernels::gemm::{gemm_epilogue, gemm_packed_b, pack_b_for, packed_b_len, Epilogue};
    let mut rng = StdRng::seed_from_u64(31);
    let shapes = [
        (0usize, 5usize, 3usize),
        (4, 0, 3),
        (5, 6, 0),
        (1, 1, 1),
        (7, 9, 17),
        (13, 33, 300),
        (17, 47, 64),
        (130, 368, 64),
        (25, 64, 1023),
    ];
    for threads in [1, 2] {
        in_pool(threads, || {
            for_paths(|p| {
                for &(m, n, k) in &shapes {
                    for (tb, prepack) in [(Trans::N, false), (Trans::T, false), (Trans::T, true)] {
                        let a = awkward(&mut rng, m * k, 4.0);
                        let b = awkward(&mut rng, k * n, 4.0);
                        let bias = awkward(&mut rng, n, 30.0);
                        let x = awkward(&mut rng, m * n, 1e3);
                        let mut packed = vec![0.0f32; packed_b_len(n, k, p)];
                        pack_b_for(&mut packed, n, k, &b, tb, p);
                        let pk = prepack.then_some((&packed[..], p));
                        let mut u = vec![f32::NAN; m * n];
                        gemm_packed_b(m, n, k, 1.0, &a, Trans::N, &b, tb, pk, 0.0, &mut u);
                        let what =
                            format!("{p:?} {m}x{n}x{k} {tb:?} packed {prepack} threads {threads}");
                        // Bias + ReLU.
                        let mut want = u.clone();
                        act::bias_relu_forward(&mut want, &bias);
                        let mut got = vec![f32::NAN; m * n];
                        let epi = Epilogue::BiasRelu(&bias);
                        gemm_epilogue(m, n, k, &a, Trans::N, &b, tb, pk, &mut got, epi);
                        assert_bits_eq(&got, &want, &format!("bias relu {what}"));
                        // γ·σ(· + bias), alone and with the product.
                        for with_mul in [false, true] {
                            let (mut want, mut want_y) = (vec![0.0; m * n], vec![0.0; m * n]);
                            let mul = with_mul.then_some((&mut want_y[..], &x[..]));
                            act::bias_scaled_sigmoid_forward(&mut want, &u, &bias, 2.0, mul);
                            let (mut got, mut got_y) = (vec![f32::NAN; m * n], vec![0.0; m * n]);
                            let epi = Epilogue::BiasScaledSigmoid {
                                bias: &bias,
                                scale: 2.0,
                                mul: with_mul.then_some((&mut got_y[..], &x[..])),
                            };
                            gemm_epilogue(m, n, k, &a, Trans::N, &b, tb, pk, &mut got, epi);
                            let w = format!("sigmoid (product {with_mul}) {what}");
                            assert_bits_eq(&got, &want, &w);
                            assert_bits_eq(&got_y, &want_y, &format!("{w}, y"));
                            if with_mul {
                                // The product alone (C scratch).
                                let (mut c, mut y) = (vec![f32::NAN; m * n], vec![0.0; m * n]);
                                let epi = Epilogue::ScaledBySigmoid {
                                    bias: &bias,
                                    scale: 2.0,
                                    y: &mut y,
                                    x: &x,
                                };
                                gemm_epilogue(m, n, k, &a, Trans::N, &b, tb, pk, &mut c, epi);
                                assert_bits_eq(&y, &want_y, &format!("product only {what}"));
                            }
                        }
                    }
                }
            });
        });
    }
    // f64 (gradient checks): the reference GEMM and activations.
    let (m, n, k) = (5usize, 7usize, 3usize);
    let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
    let b: Vec<f64> = (0..n * k).map(|i| (i as f64 * 0.71).cos()).collect();
    let bias: Vec<f64> = (0..n).map(|j| j as f64 * 0.1 - 0.3).collect();
    let mut u = vec![0.0f64; m * n];
    gemm::gemm(m, n, k, 1.0, &a, Trans::N, &b, Trans::T, 0.0, &mut u);
    let mut want = u.clone();
    reference::bias_relu_forward(&mut want, &bias);
    let mut got = vec![0.0f64; m * n];
    gemm_epilogue(
        m,
        n,
        k,
        &a,
        Trans::N,
        &b,
        Trans::T,
        None,
        &mut got,
        Epilogue::BiasRelu(&bias),
    );
    assert_eq!(got, want, "f64 bias relu");
}

#[test]
fn add_rows_indexed_exact_and_equal_to_one_field_at_a_time() {
    let mut rng = StdRng::seed_from_u64(43);
    for_paths(|path| {
        for &w in &SIZES {
            for (rows, per_row) in [(0usize, 3usize), (1, 1), (7, 12), (17, 5), (130, 2)] {
                let n_tab = 9usize;
                let table = awkward(&mut rng, n_tab * w, 1e3);
                let idx: Vec<u32> = (0..rows * per_row)
                    .map(|_| rng.gen_range(0..n_tab as u32))
                    .collect();
                let out0 = awkward(&mut rng, rows * w + 1, 1e3);
                let mut fast = out0.clone();
                embed::add_rows_indexed(&mut fast[1..], w, &table, &idx, per_row);
                let mut refr = out0.clone();
                reference::add_rows_indexed(&mut refr[1..], w, &table, &idx, per_row);
                let what = format!("add_rows_indexed {path:?} w={w} rows={rows} k={per_row}");
                assert_bits_eq(&fast, &refr, &what);
                // The same sums as adding one index column at a time.
                let mut by_field = out0.clone();
                for j in 0..per_row {
                    let col: Vec<u32> = (0..rows).map(|b| idx[b * per_row + j]).collect();
                    embed::add_rows_indexed(&mut by_field[1..], w, &table, &col, 1);
                }
                assert_bits_eq(&fast, &by_field, &format!("{what} vs one at a time"));
                // With the bias + ReLU epilogue: the reference, and the two-pass form.
                let bias = awkward(&mut rng, w, 1e3);
                let mut fused = out0.clone();
                embed::add_rows_indexed_bias_relu(&mut fused[1..], &table, &idx, per_row, &bias);
                let mut refr = out0.clone();
                let r = &mut refr[1..];
                reference::add_rows_indexed_bias_relu(r, w, &table, &idx, per_row, &bias);
                assert_bits_eq(&fused, &refr, &format!("{what} bias_relu"));
                let mut two_pass = fast.clone();
                act::bias_relu_forward(&mut two_pass[1..rows * w + 1], &bias);
                assert_bits_eq(
                    &fused,
                    &two_pass,
                    &format!("{what} bias_relu vs two passes"),
                );
            }
        }
    });
}

#[test]
fn scatter_add_rows_indexed_exact() {
    let mut rng = StdRng::seed_from_u64(44);
    for_paths(|path| {
        for &w in &SIZES {
            for (rows, per_row) in [(0usize, 3usize), (1, 1), (7, 12), (17, 5), (130, 2)] {
                // Distinct indices within a row (one table block per "field"), as the model
                // uses it; blocks of 4 rows.
                let n_tab = 4 * per_row;
                let table = awkward(&mut rng, n_tab * w, 1e3);
                let idx: Vec<u32> = (0..rows * per_row)
                    .map(|k| (4 * (k % per_row) + rng.gen_range(0..4)) as u32)
                    .collect();
                let (ss, so) = (w + 3, 2usize);
                let src = awkward(&mut rng, rows * ss + so + w, 1e3);
                let mut fast = table.clone();
                embed::scatter_add_rows_indexed(&mut fast, w, &src, ss, so, &idx, per_row);
                let mut refr = table.clone();
                reference::scatter_add_rows_indexed(&mut refr, w, &src, ss, so, &idx, per_row);
                let what = format!("scatter_add_rows_indexed {path:?} w={w} rows={rows}");
                assert_bits_eq(&fast, &refr, &what);
            }
        }
    });
}

#[test]
#[should_panic(expected = "outside a table")]
fn add_rows_indexed_rejects_an_index_outside_the_table() {
    let table = vec![0.0f32; 8];
    let mut out = vec![0.0f32; 4];
    embed::add_rows_indexed(&mut out, 4, &table, &[2], 1);
}
