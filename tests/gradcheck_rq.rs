//! Residual quantizer (SPEC §2): f64 finite-difference checks of backward with codes and
//! sg(·) values frozen, an independent brute-force forward, exact ties, explicit-mode s_D,
//! k-means initialisation, code usage / perplexity, dead-code restarts, validation errors and
//! "no allocation in a step".
//!
//! Run with `--nocapture` to see one line per checked tensor.

use hmdn_cpu::config::{RqConfig, RqGradient, RqMode};
use hmdn_cpu::error::Error;
use hmdn_cpu::gradcheck::{check_coords, rel_err, EPS, TOLERANCE};
use hmdn_cpu::model::rq::{ResidualQuantizer, RqCache, RqUsage};
use hmdn_cpu::params::ParamStore;
use hmdn_cpu::Real;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
mod alloc_counter;
use alloc_counter::{allocs, CountingAlloc};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

// ---------------------------------------------------------------------------------------------
// Helpers.

fn rq_cfg(mode: RqMode, per_level: bool, gradient: RqGradient, k: usize, depth: usize) -> RqConfig {
    RqConfig {
        mode,
        codebook_size: k,
        depth,
        per_level_codebooks: per_level,
        gradient,
        beta: 0.25,
        ..RqConfig::default()
    }
}

fn normals(rng: &mut StdRng, n: usize, scale: f64) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let v: f64 = StandardNormal.sample(rng);
            scale * v
        })
        .collect::<Vec<f64>>()
}

/// Builds a quantizer in `T` and overwrites its codebooks with N(0, scale²) values (at the scale
/// of x_b, so that different rows and levels pick different codes).
fn build<T: Real>(
    cfg: &RqConfig,
    p: usize,
    e: usize,
    scale: f64,
    rng: &mut StdRng,
) -> (ParamStore<T>, ResidualQuantizer) {
    let mut ps = ParamStore::<T>::new();
    let rq = ResidualQuantizer::new(&mut ps, cfg, p, e, rng).expect("valid config");
    let n = ps.values().len();
    for (v, x) in ps.values_mut().iter_mut().zip(normals(rng, n, scale)) {
        *v = T::from_f64(x);
    }
    (ps, rq)
}

fn to_t<T: Real>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::from_f64(x)).collect()
}

/// Brute-force argmin with exact squared distances; strict `<` so ties go to the lowest index.
fn brute_argmin(r: &[f64], book: &[f64], w: usize) -> (usize, Vec<f64>) {
    let dists: Vec<f64> = book
        .chunks_exact(w)
        .map(|c| c.iter().zip(r).map(|(a, b)| (a - b) * (a - b)).sum())
        .collect();
    let mut best = 0;
    for (k, &d) in dists.iter().enumerate() {
        if d < dists[best] {
            best = k;
        }
    }
    (best, dists)
}

/// Independent forward straight from SPEC §2 (no stop-gradients needed: values only).
/// Returns (codes [D][B], g [B, w], L_rq).
fn naive_forward(
    rq: &ResidualQuantizer,
    ps: &ParamStore<f64>,
    xb: &[f64],
    bsz: usize,
) -> (Vec<Vec<usize>>, Vec<f64>, f64) {
    let (p, e, w, dd) = (rq.p, rq.e, rq.w, rq.depth);
    let pe = p * e;
    let mut codes = vec![vec![0usize; bsz]; dd];
    let mut g = vec![0.0; bsz * w];
    let mut loss = 0.0;
    for b in 0..bsz {
        let x = &xb[b * pe..(b + 1) * pe];
        let mut s = vec![0.0; w];
        let mut r: Vec<f64> = x[..w].to_vec();
        for (d, level_codes) in codes.iter_mut().enumerate() {
            let book = ps.value(rq.book(d));
            let u: Vec<f64> = match rq.mode {
                RqMode::Implicit => r.clone(),
                RqMode::Explicit => x[d * e..(d + 1) * e].to_vec(),
            };
            let (c, dists) = brute_argmin(&u, book, w);
            level_codes[b] = c;
            loss += (1.0 + rq.beta) * dists[c] / bsz as f64;
            for i in 0..w {
                s[i] += book[c * w + i];
                r[i] = u[i] - book[c * w + i];
            }
        }
        let xbar: Vec<f64> = match rq.mode {
            RqMode::Implicit => x.to_vec(),
            RqMode::Explicit => (0..e).map(|i| (0..p).map(|d| x[d * e + i]).sum()).collect(),
        };
        for i in 0..w {
            g[b * w + i] = match rq.gradient {
                RqGradient::Direct => s[i],
                RqGradient::Ste => xbar[i] + (s[i] - xbar[i]),
            };
        }
    }
    (codes, g, loss)
}

struct Case {
    name: &'static str,
    mode: RqMode,
    per_level: bool,
    gradient: RqGradient,
    p: usize,
    e: usize,
    k: usize,
    depth: usize,
    bsz: usize,
    /// Cache capacity (> bsz exercises the batch-size-strided layout).
    cap: usize,
}

fn cases() -> Vec<Case> {
    use RqGradient::{Direct, Ste};
    use RqMode::{Explicit, Implicit};
    let c = |name, mode, per_level, gradient, depth, cap| Case {
        name,
        mode,
        per_level,
        gradient,
        p: 3,
        e: 3,
        k: 5,
        depth,
        bsz: 7,
        cap,
    };
    vec![
        c("implicit/shared/ste", Implicit, false, Ste, 4, 7),
        c("implicit/shared/direct", Implicit, false, Direct, 4, 11),
        c("implicit/per-level/ste", Implicit, true, Ste, 3, 7),
        c("implicit/per-level/direct", Implicit, true, Direct, 3, 7),
        c("explicit/ste", Explicit, false, Ste, 0, 9),
        c("explicit/direct", Explicit, false, Direct, 3, 7),
    ]
}

// ---------------------------------------------------------------------------------------------
// Gradient checks.

/// One checked tensor: errors of the central difference with the crate's step [`EPS`] and with
/// [`WIDE_STEP`].
struct Report {
    name: String,
    shape: Vec<usize>,
    checked: usize,
    /// (max_abs, max_rel) with step EPS = 1e-6 (`gradcheck::check_coords`).
    eps: (f64, f64),
    /// (max_abs, max_rel) with step WIDE_STEP.
    wide: (f64, f64),
}

/// With codes and every sg(·) value frozen, the checked total Σ dg⊙g + α·L_rq is a polynomial
/// of degree ≤ 2 in every single coordinate (g is linear, L_rq quadratic), so the central
/// difference has no truncation error at any step: its only error is round-off,
/// ≈ 1e-16·|L|/step. With |L| ≈ 10–100 the crate's EPS = 1e-6 leaves ≈ 1e-8 absolute error,
/// which is > 1e-6 relative on gradient entries of size 1e-3..1e-2; a step of 1e-3 cuts the
/// round-off by 1000 while measuring the same derivative. Both are reported; the assertion uses
/// this one.
const WIDE_STEP: f64 = 1e-3;

/// `check_coords` with an explicit step (see [`WIDE_STEP`]); returns (max_abs, max_rel, n).
fn check_coords_step(
    x: &mut [f64],
    analytic: &[f64],
    step: f64,
    mut loss: impl FnMut(&[f64]) -> f64,
) -> (f64, f64, usize) {
    let (mut max_abs, mut max_rel) = (0.0f64, 0.0f64);
    for i in 0..x.len() {
        let orig = x[i];
        x[i] = orig + step;
        let lp = loss(x);
        x[i] = orig - step;
        let lm = loss(x);
        x[i] = orig;
        let num = (lp - lm) / (2.0 * step);
        max_abs = max_abs.max((analytic[i] - num).abs());
        max_rel = max_rel.max(rel_err(analytic[i], num));
    }
    (max_abs, max_rel, x.len())
}

#[test]
fn gradcheck_all_modes() {
    let alpha = 0.7;
    let mut failures = Vec::new();
    for (ci, case) in cases().iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(100 + ci as u64);
        let cfg = rq_cfg(case.mode, case.per_level, case.gradient, case.k, case.depth);
        let (mut ps, rq) = build::<f64>(&cfg, case.p, case.e, 1.0, &mut rng);
        let (bsz, pe, w) = (case.bsz, case.p * case.e, rq.gate_dim());
        let mut xb = normals(&mut rng, bsz * pe, 1.0);
        let dg = normals(&mut rng, bsz * w, 1.0);
        let mut cache: RqCache<f64> = rq.new_cache(case.cap);
        let mut g = vec![0.0; bsz * w];
        let l0 = rq.forward(&mut g, &mut cache, &xb, &ps, bsz);
        ps.zero_grads(true);
        let mut dxb = vec![0.0; bsz * pe];
        rq.backward(&mut dxb, &mut ps, &dg, &xb, &cache, alpha, bsz);

        let hist: Vec<usize> = (0..rq.depth)
            .map(|d| {
                let mut seen = [false; 64];
                cache
                    .level_codes(d)
                    .iter()
                    .for_each(|&c| seen[c as usize] = true);
                seen.iter().filter(|&&s| s).count()
            })
            .collect();
        println!(
            "-- {} (B={bsz}, P={}, e={}, K={}, D={}, alpha={alpha}, beta=0.25) L_rq={l0:.6} distinct codes per level {hist:?}",
            case.name, case.p, case.e, case.k, rq.depth
        );

        rq.freeze(&mut cache, &ps);
        let total = |g: &[f64], l: f64| -> f64 {
            g.iter().zip(&dg).map(|(a, b)| a * b).sum::<f64>() + alpha * l
        };
        let mut reports = Vec::new();
        for (bi, &id) in rq.books.iter().enumerate() {
            let analytic = ps.grad(id).to_vec();
            let mut x = ps.value(id).to_vec();
            let mut ps2 = ps.clone();
            let mut f = |v: &[f64]| {
                ps2.value_mut(id).copy_from_slice(v);
                let mut g2 = vec![0.0; bsz * w];
                let l = rq.forward(&mut g2, &mut cache, &xb, &ps2, bsz);
                total(&g2, l)
            };
            let (a1, r1, _) = check_coords(&mut x, &analytic, 0..analytic.len(), &mut f);
            let (a2, r2, n) = check_coords_step(&mut x, &analytic, WIDE_STEP, &mut f);
            let nonzero = analytic.iter().filter(|v| **v != 0.0).count();
            assert!(
                nonzero > 0,
                "{}: codebook {bi} gradient is all zero",
                case.name
            );
            reports.push(Report {
                name: format!("{}: {}", case.name, ps.spec(id).name),
                shape: ps.spec(id).shape.clone(),
                checked: n,
                eps: (a1, r1),
                wide: (a2, r2),
            });
        }
        let xb0 = xb.clone();
        let mut f = |v: &[f64]| {
            let mut g2 = vec![0.0; bsz * w];
            let l = rq.forward(&mut g2, &mut cache, v, &ps, bsz);
            total(&g2, l)
        };
        let (a1, r1, _) = check_coords(&mut xb, &dxb, 0..dxb.len(), &mut f);
        let (a2, r2, n) = check_coords_step(&mut xb, &dxb, WIDE_STEP, &mut f);
        assert_eq!(xb, xb0);
        assert!(
            dxb.iter().all(|v| *v != 0.0),
            "{}: dxb has zeros",
            case.name
        );
        reports.push(Report {
            name: format!("{}: x_b", case.name),
            shape: vec![bsz, pe],
            checked: n,
            eps: (a1, r1),
            wide: (a2, r2),
        });
        for r in &reports {
            let line = format!(
                "{:<44} {:<7} n={:<3} step 1e-3: max_abs={:.2e} max_rel={:.2e} | step {EPS:.0e}: max_abs={:.2e} max_rel={:.2e}",
                r.name,
                format!("{:?}", r.shape),
                r.checked,
                r.wide.0,
                r.wide.1,
                r.eps.0,
                r.eps.1
            );
            println!("{line}");
            if r.wide.1.is_nan() || r.wide.1 > TOLERANCE {
                failures.push(line);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "gradient checks failed:\n{}",
        failures.join("\n")
    );
}

/// The ste gate sends the task gradient to x_b only and direct to the codebooks only: with
/// α = 0 the split is visible on its own.
#[test]
fn task_gradient_routes_by_gate_mode() {
    for gradient in [RqGradient::Ste, RqGradient::Direct] {
        let mut rng = StdRng::seed_from_u64(7);
        let cfg = rq_cfg(RqMode::Implicit, false, gradient, 5, 3);
        let (mut ps, rq) = build::<f64>(&cfg, 2, 3, 1.0, &mut rng);
        let (bsz, pe, w) = (6, 6, rq.gate_dim());
        let xb = normals(&mut rng, bsz * pe, 1.0);
        let dg = normals(&mut rng, bsz * w, 1.0);
        let mut cache = rq.new_cache::<f64>(bsz);
        let mut g = vec![0.0; bsz * w];
        rq.forward(&mut g, &mut cache, &xb, &ps, bsz);
        ps.zero_grads(true);
        let mut dxb = vec![0.0; bsz * pe];
        rq.backward(&mut dxb, &mut ps, &dg, &xb, &cache, 0.0, bsz);
        let book_grad: f64 = ps.grad(rq.books[0]).iter().map(|v| v.abs()).sum();
        let x_grad: f64 = dxb.iter().map(|v| v.abs()).sum();
        match gradient {
            RqGradient::Ste => {
                assert_eq!(book_grad, 0.0);
                assert_eq!(dxb, dg, "ste: dx_b = dg exactly (implicit, alpha = 0)");
            }
            RqGradient::Direct => {
                assert!(book_grad > 0.0);
                assert_eq!(x_grad, 0.0);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Forward values.

#[test]
fn forward_matches_brute_force_reference() {
    for (ci, case) in cases().iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(200 + ci as u64);
        let cfg = rq_cfg(case.mode, case.per_level, case.gradient, 16, case.depth);
        let (ps, rq) = build::<f64>(&cfg, case.p, case.e, 1.0, &mut rng);
        let (bsz, pe, w) = (64, case.p * case.e, rq.gate_dim());
        let xb = normals(&mut rng, bsz * pe, 1.0);
        let mut cache = rq.new_cache::<f64>(bsz);
        let mut g = vec![0.0; bsz * w];
        let l = rq.forward(&mut g, &mut cache, &xb, &ps, bsz);
        let (codes, g_ref, l_ref) = naive_forward(&rq, &ps, &xb, bsz);
        for (d, level) in codes.iter().enumerate() {
            let got: Vec<usize> = cache.level_codes(d).iter().map(|&c| c as usize).collect();
            assert_eq!(&got, level, "{}: codes of level {d}", case.name);
        }
        let g_err = g
            .iter()
            .zip(&g_ref)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        let l_err = (l - l_ref).abs() / l_ref.abs();
        println!(
            "{:<28} codes match brute force (D={}, B={bsz}, K=16); max |g − g_ref| = {g_err:.2e}, L_rq rel err = {l_err:.2e}",
            case.name, rq.depth
        );
        assert!(g_err <= 1e-12 && l_err <= 1e-12, "{}", case.name);
    }
}

/// Exact ties resolve to the lowest index, in f32 and f64. The tie is real: the brute-force
/// distances of the tied codes are bit-for-bit equal.
#[test]
fn ties_go_to_lowest_index() {
    fn run<T: Real>() {
        let cfg = rq_cfg(RqMode::Implicit, false, RqGradient::Direct, 5, 1);
        let mut rng = StdRng::seed_from_u64(1);
        let mut ps = ParamStore::<T>::new();
        let rq = ResidualQuantizer::new(&mut ps, &cfg, 1, 2, &mut rng).unwrap();
        // Codes: 0 far away, 1 = 3 = (1, 0) duplicated, 2 = (0, 1), 4 = (−1, 0).
        let book = [5.0, 5.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, -1.0, 0.0];
        ps.value_mut(rq.books[0]).copy_from_slice(&to_t::<T>(&book));
        // Row 0 (½, ½): equidistant from 1, 2, 3; row 1, the origin: from 1..=4; row 2 sits
        // on the duplicated code 1 = 3; row 3 (−½, ½): equidistant from 2 and 4 only.
        let xb = [0.5, 0.5, 0.0, 0.0, 1.0, 0.0, -0.5, 0.5];
        let expect = [1u32, 1, 1, 2];
        let tied: [&[usize]; 4] = [&[1, 2, 3], &[1, 2, 3, 4], &[1, 3], &[2, 4]];
        for (b, t) in tied.iter().enumerate() {
            let (_, dists) = brute_argmin(&xb[b * 2..b * 2 + 2], &book, 2);
            let m = dists.iter().cloned().fold(f64::INFINITY, f64::min);
            let at_min: Vec<usize> = (0..5).filter(|&k| dists[k] == m).collect();
            assert_eq!(&at_min, t, "row {b}: constructed tie");
        }
        let mut cache = rq.new_cache::<T>(4);
        let mut g = vec![T::ZERO; 8];
        rq.forward(&mut g, &mut cache, &to_t::<T>(&xb), &ps, 4);
        assert_eq!(cache.level_codes(0), &expect, "{}", T::NAME);
    }
    run::<f32>();
    run::<f64>();
}

#[test]
fn explicit_sd_is_sum_of_selected_rows() {
    for gradient in [RqGradient::Direct, RqGradient::Ste] {
        let mut rng = StdRng::seed_from_u64(3);
        let cfg = rq_cfg(RqMode::Explicit, false, gradient, 6, 0);
        let (p, e, bsz) = (3, 4, 10);
        let (ps, rq) = build::<f64>(&cfg, p, e, 1.0, &mut rng);
        assert_eq!(rq.depth, p);
        assert_eq!(rq.gate_dim(), e);
        assert_eq!(rq.books.len(), p);
        for (d, &id) in rq.books.iter().enumerate() {
            assert_eq!(ps.spec(id).name, format!("rq.codebooks.{d}.weight"));
            assert_eq!(ps.spec(id).shape, vec![6, e]);
        }
        let xb = normals(&mut rng, bsz * p * e, 1.0);
        let mut cache = rq.new_cache::<f64>(bsz);
        let mut g = vec![0.0; bsz * e];
        rq.forward(&mut g, &mut cache, &xb, &ps, bsz);
        let mut max_err = 0.0f64;
        for b in 0..bsz {
            for i in 0..e {
                let mut s = 0.0;
                for d in 0..p {
                    let c = cache.level_codes(d)[b] as usize;
                    s += ps.value(rq.books[d])[c * e + i];
                    // Level d quantizes the d-th slice of x_b.
                    assert_eq!(cache.level_input(d)[b * e + i], xb[b * p * e + d * e + i]);
                }
                assert_eq!(cache.s[b * e + i], s, "s_D is the sum of the selected rows");
                max_err = max_err.max((g[b * e + i] - s).abs());
            }
        }
        println!("explicit {gradient:?}: max |g − Σ_d C_d[c_d]| = {max_err:.2e}");
        match gradient {
            RqGradient::Direct => assert_eq!(max_err, 0.0),
            // g = x̄ + (s − x̄) equals s up to the rounding of two additions.
            RqGradient::Ste => assert!(max_err < 1e-14),
        }
    }
}

/// A frozen forward at the unperturbed point is the unfrozen forward, bit for bit.
#[test]
fn frozen_forward_reproduces_unfrozen_bitwise() {
    fn run<T: Real>() {
        for (ci, case) in cases().iter().enumerate() {
            let mut rng = StdRng::seed_from_u64(300 + ci as u64);
            let cfg = rq_cfg(case.mode, case.per_level, case.gradient, 8, case.depth);
            let (ps, rq) = build::<T>(&cfg, case.p, case.e, 1.0, &mut rng);
            let (bsz, pe, w) = (33, case.p * case.e, rq.gate_dim());
            let xb = to_t::<T>(&normals(&mut rng, bsz * pe, 1.0));
            let mut cache = rq.new_cache::<T>(bsz);
            let (mut g0, mut g1) = (vec![T::ZERO; bsz * w], vec![T::ZERO; bsz * w]);
            let l0 = rq.forward(&mut g0, &mut cache, &xb, &ps, bsz);
            let u0 = cache.u.clone();
            rq.freeze(&mut cache, &ps);
            let l1 = rq.forward(&mut g1, &mut cache, &xb, &ps, bsz);
            assert_eq!(
                l0.to_f64().to_bits(),
                l1.to_f64().to_bits(),
                "{} {}",
                T::NAME,
                case.name
            );
            let bits = |v: &[T]| v.iter().map(|x| x.to_f64().to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&g0), bits(&g1), "{} {}", T::NAME, case.name);
            assert_eq!(bits(&u0), bits(&cache.u), "{} {}", T::NAME, case.name);
        }
    }
    run::<f32>();
    run::<f64>();
}

// ---------------------------------------------------------------------------------------------
// K-means initialisation.

/// Rows drawn around `n_clusters` centres (N(0, 1)) with N(0, noise²) jitter.
fn clustered(
    rng: &mut StdRng,
    bsz: usize,
    width: usize,
    n_clusters: usize,
    noise: f64,
) -> Vec<f64> {
    let centres = normals(rng, n_clusters * width, 1.0);
    let mut out = Vec::with_capacity(bsz * width);
    for _ in 0..bsz {
        let c = rng.gen_range(0..n_clusters);
        for i in 0..width {
            let v: f64 = StandardNormal.sample(rng);
            out.push(centres[c * width + i] + noise * v);
        }
    }
    out
}

/// mean_B ||x̄ − s_D||² after the quantizer's forward (the reconstruction error).
fn recon_error(rq: &ResidualQuantizer, ps: &ParamStore<f64>, xb: &[f64], bsz: usize) -> f64 {
    let (p, e, w) = (rq.p, rq.e, rq.w);
    let mut cache = rq.new_cache::<f64>(bsz);
    let mut g = vec![0.0; bsz * w];
    rq.forward(&mut g, &mut cache, xb, ps, bsz);
    let mut acc = 0.0;
    for b in 0..bsz {
        for i in 0..w {
            let xbar = match rq.mode {
                RqMode::Implicit => xb[b * p * e + i],
                RqMode::Explicit => (0..p).map(|d| xb[b * p * e + d * e + i]).sum(),
            };
            let t = xbar - cache.s[b * w + i];
            acc += t * t;
        }
    }
    acc / bsz as f64
}

#[test]
fn kmeans_init_beats_random_init_on_clustered_data() {
    let variants = [
        ("implicit/shared", RqMode::Implicit, false, 3),
        ("implicit/per-level", RqMode::Implicit, true, 3),
        ("explicit", RqMode::Explicit, false, 0),
    ];
    for (name, mode, per_level, depth) in variants {
        let (p, e, k, bsz) = (2, 4, 8, 400);
        let mut rng = StdRng::seed_from_u64(11);
        let xb = clustered(&mut rng, bsz, p * e, 8, 0.05);
        let cfg = rq_cfg(mode, per_level, RqGradient::Ste, k, depth);
        // Random-normal init, as registered by `new` (std CODEBOOK_INIT_STD) and rescaled to
        // the data scale (std 1), so the comparison is not won by scale alone.
        let mut ps_small = ParamStore::<f64>::new();
        let rq = ResidualQuantizer::new(&mut ps_small, &cfg, p, e, &mut rng).unwrap();
        let (ps_big, _) = build::<f64>(&cfg, p, e, 1.0, &mut StdRng::seed_from_u64(12));
        let err_small = recon_error(&rq, &ps_small, &xb, bsz);
        let err_big = recon_error(&rq, &ps_big, &xb, bsz);

        let run = |iters: usize| {
            let mut ps = ps_small.clone();
            rq.kmeans_init(&mut ps, &xb, bsz, iters, &mut StdRng::seed_from_u64(13));
            ps
        };
        let seeded = run(0);
        let km = run(10);
        let km_again = run(10);
        assert_eq!(
            km.values(),
            km_again.values(),
            "{name}: k-means is deterministic given the rng"
        );
        let err_seeded = recon_error(&rq, &seeded, &xb, bsz);
        let err_km = recon_error(&rq, &km, &xb, bsz);
        println!(
            "{name:<20} mean ||x − s_D||²: random N(0,0.05²) {err_small:.4}, random N(0,1) {err_big:.4}, distinct rows only {err_seeded:.4}, k-means (10 iters) {err_km:.5}; data variance per row {:.3}",
            xb.iter().map(|v| v * v).sum::<f64>() / bsz as f64
        );
        assert!(err_km < err_small && err_km < err_big, "{name}");
        assert!(
            err_km <= err_seeded,
            "{name}: Lloyd iterations made things worse"
        );
        // 8 well-separated clusters, K = 8 codes per level: with a codebook per level, level 0
        // can take the 8 centres and the later levels fit the noise, so the residual left is
        // noise-sized (per row ≈ w·0.05² = 0.02); allow a factor 3 for an unlucky local
        // minimum at level 0. (A shared 8-code book cannot: every level must pick one of the
        // same 8 rows, so codes for noise-sized residuals cost cluster centres.)
        if mode == RqMode::Implicit && per_level {
            assert!(
                err_km < 3.0 * (p * e) as f64 * 0.05 * 0.05,
                "{name}: {err_km}"
            );
        }
    }
}

/// Per-level k-means is Lloyd's algorithm on level 0: the level-0 objective never increases
/// with more iterations.
#[test]
fn lloyd_objective_is_monotone() {
    use hmdn_cpu::model::kmeans::{distortion, lloyd};
    let mut rng = StdRng::seed_from_u64(21);
    let (w, k) = (5, 6);
    let data = clustered(&mut rng, 300, w, 9, 0.3);
    let mut prev = f64::INFINITY;
    let mut figs = Vec::new();
    for iters in 0..8 {
        let mut cent = vec![0.0; k * w];
        let mut assign = vec![0u32; 300];
        lloyd(
            &mut cent,
            &mut assign,
            &data,
            w,
            iters,
            &mut StdRng::seed_from_u64(5),
        );
        let j = distortion(&data, &cent, &assign, w);
        assert!(j <= prev + 1e-12, "iters {iters}: {j} > {prev}");
        figs.push(format!("{j:.4}"));
        prev = j;
    }
    println!("Lloyd objective by iterations 0..8: {}", figs.join(" "));
}

#[test]
fn kmeans_seeding_picks_distinct_rows() {
    use hmdn_cpu::model::kmeans::seed_distinct_rows;
    // 3 distinct rows, each repeated: the first 3 centroids are those rows, the rest copies.
    let rows = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]];
    let data: Vec<f64> = (0..30).flat_map(|i| rows[i % 3]).collect();
    let mut cent = vec![0.0; 5 * 2];
    seed_distinct_rows(&mut cent, &data, 2, &mut StdRng::seed_from_u64(1));
    let mut first: Vec<[f64; 2]> = cent.chunks(2).take(3).map(|c| [c[0], c[1]]).collect();
    first.sort_by(|a, b| a[0].partial_cmp(&b[0]).unwrap());
    assert_eq!(first, rows.to_vec());
    for c in cent.chunks(2).skip(3) {
        assert!(rows.iter().any(|r| r[0] == c[0] && r[1] == c[1]));
    }
}

// ---------------------------------------------------------------------------------------------
// Usage, dead codes.

#[test]
fn usage_and_perplexity_on_known_histograms() {
    let mut u = RqUsage::new(3, 8);
    // Level 0 uniform over 4 codes, level 1 a single code, level 2 counts (2, 1, 1).
    let codes: Vec<u32> = [
        [0u32, 1, 2, 3, 3, 2, 1, 0],
        [5, 5, 5, 5, 5, 5, 5, 5],
        [7, 7, 7, 7, 4, 4, 6, 6],
    ]
    .concat();
    u.record_codes(&codes, 8);
    let l = u.levels();
    // Perplexities derived by hand: exp(ln 4) = 4; exp(0) = 1;
    // H(½, ¼, ¼) = ½ ln 2 + 2·¼ ln 4 = 1.5 ln 2 → 2^1.5.
    assert_eq!((l[0].distinct, l[0].total), (4, 8));
    assert!((l[0].perplexity - 4.0).abs() < 1e-12);
    assert_eq!(l[1].distinct, 1);
    assert!((l[1].perplexity - 1.0).abs() < 1e-12);
    assert_eq!(l[2].distinct, 3);
    assert!((l[2].perplexity - 2f64.powf(1.5)).abs() < 1e-12);
    println!(
        "usage: distinct {:?}, perplexity {:?}",
        l.iter().map(|x| x.distinct).collect::<Vec<_>>(),
        l.iter().map(|x| x.perplexity).collect::<Vec<_>>()
    );
    // A second batch accumulates; reset clears.
    u.record_codes(&codes, 8);
    assert_eq!(u.level(0).total, 16);
    assert!((u.level(0).perplexity - 4.0).abs() < 1e-12);
    u.reset();
    assert_eq!(
        u.level(0),
        hmdn_cpu::model::rq::LevelUsage {
            total: 0,
            distinct: 0,
            perplexity: 0.0
        }
    );

    // From a real forward: every level records B rows.
    let mut rng = StdRng::seed_from_u64(4);
    let cfg = rq_cfg(RqMode::Implicit, false, RqGradient::Ste, 8, 4);
    let (ps, rq) = build::<f32>(&cfg, 2, 3, 1.0, &mut rng);
    let xb = to_t::<f32>(&normals(&mut rng, 20 * 6, 1.0));
    let mut cache = rq.new_cache::<f32>(20);
    let mut g = vec![0.0f32; 20 * 6];
    rq.forward(&mut g, &mut cache, &xb, &ps, 20);
    let mut usage = rq.usage();
    usage.record(&cache);
    for d in 0..4 {
        let lv = usage.level(d);
        assert_eq!(lv.total, 20);
        let mut seen = std::collections::HashSet::new();
        cache.level_codes(d).iter().for_each(|c| {
            seen.insert(*c);
        });
        assert_eq!(lv.distinct, seen.len());
        assert!(lv.perplexity >= 1.0 && lv.perplexity <= lv.distinct as f64 + 1e-12);
    }
}

#[test]
fn dead_codes_are_reseeded_from_level_inputs() {
    for per_level in [false, true] {
        let mut cfg = rq_cfg(RqMode::Implicit, per_level, RqGradient::Ste, 4, 2);
        cfg.dead_code_restart_steps = 2;
        let run = |seed: u64| {
            let mut rng = StdRng::seed_from_u64(9);
            let (mut ps, rq) = build::<f64>(&cfg, 1, 2, 1.0, &mut rng);
            // Code 3 of every codebook is far from everything: never selected.
            for &id in &rq.books {
                ps.value_mut(id)[6..8].copy_from_slice(&[100.0, 100.0]);
            }
            let xb = normals(&mut rng, 8 * 2, 1.0);
            let mut cache = rq.new_cache::<f64>(8);
            let mut g = vec![0.0; 16];
            rq.forward(&mut g, &mut cache, &xb, &ps, 8);
            let mut tracker = rq.dead_codes();
            let mut rng = StdRng::seed_from_u64(seed);
            let n1 = rq.restart_dead_codes(&mut ps, &mut tracker, &cache, &mut rng);
            assert_eq!(n1, 0, "idle for 1 step < 2");
            let n2 = rq.restart_dead_codes(&mut ps, &mut tracker, &cache, &mut rng);
            assert!(n2 >= rq.books.len(), "code 3 of every codebook restarted");
            for (bi, &id) in rq.books.iter().enumerate() {
                let row = &ps.value(id)[6..8];
                let levels: Vec<usize> = if per_level { vec![bi] } else { vec![0, 1] };
                let found = levels
                    .iter()
                    .any(|&d| cache.level_input(d).chunks(2).any(|r| r == row));
                assert!(
                    found,
                    "re-seeded row {row:?} is a row of its level's inputs"
                );
                assert_eq!(tracker.idle[bi * 4 + 3], 0);
            }
            ps.values().to_vec()
        };
        assert_eq!(run(5), run(5), "deterministic given the rng");
    }
    // Off by default: nothing happens.
    let cfg = rq_cfg(RqMode::Implicit, false, RqGradient::Ste, 4, 2);
    let mut rng = StdRng::seed_from_u64(9);
    let (mut ps, rq) = build::<f64>(&cfg, 1, 2, 1.0, &mut rng);
    let xb = normals(&mut rng, 16, 1.0);
    let mut cache = rq.new_cache::<f64>(8);
    rq.forward(&mut [0.0; 16], &mut cache, &xb, &ps, 8);
    let mut tr = rq.dead_codes();
    for _ in 0..5 {
        assert_eq!(rq.restart_dead_codes(&mut ps, &mut tr, &cache, &mut rng), 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Validation, parameter names, allocation.

#[test]
fn invalid_configs_are_errors() {
    let mut rng = StdRng::seed_from_u64(0);
    let try_new = |cfg: &RqConfig, p: usize, e: usize, rng: &mut StdRng| {
        let mut ps = ParamStore::<f32>::new();
        ResidualQuantizer::new(&mut ps, cfg, p, e, rng)
    };
    let base = RqConfig::default();
    let cases: Vec<(&str, RqConfig, usize, usize)> = vec![
        (
            "K = 0",
            RqConfig {
                codebook_size: 0,
                ..base.clone()
            },
            3,
            16,
        ),
        (
            "D = 0",
            RqConfig {
                depth: 0,
                ..base.clone()
            },
            3,
            16,
        ),
        (
            "explicit depth != P",
            RqConfig {
                mode: RqMode::Explicit,
                depth: 2,
                ..base.clone()
            },
            3,
            16,
        ),
        ("e = 0", base.clone(), 3, 0),
        ("P = 0", base.clone(), 0, 16),
        (
            "beta < 0",
            RqConfig {
                beta: -1.0,
                ..base.clone()
            },
            3,
            16,
        ),
        (
            "beta NaN",
            RqConfig {
                beta: f64::NAN,
                ..base.clone()
            },
            3,
            16,
        ),
    ];
    for (what, cfg, p, e) in cases {
        match try_new(&cfg, p, e, &mut rng) {
            Err(Error::Config(msg)) => println!("{what:<20} -> {msg}"),
            other => panic!("{what}: expected Error::Config, got {other:?}"),
        }
    }
    // Valid neighbours of the bad cases.
    for depth in [0, 3] {
        let cfg = RqConfig {
            mode: RqMode::Explicit,
            depth,
            ..base.clone()
        };
        let rq = try_new(&cfg, 3, 16, &mut rng).expect("explicit depth 0 or P");
        assert_eq!(rq.depth, 3);
    }
    let mut ps = ParamStore::<f32>::new();
    let rq = ResidualQuantizer::new(&mut ps, &base, 3, 16, &mut rng).unwrap();
    assert_eq!((rq.depth, rq.gate_dim(), rq.books.len()), (6, 48, 1));
    assert_eq!(ps.spec(rq.books[0]).name, "rq.codebook.weight");
    assert_eq!(ps.spec(rq.books[0]).shape, vec![64, 48]);
    let mut ps = ParamStore::<f32>::new();
    let cfg = RqConfig {
        per_level_codebooks: true,
        ..base
    };
    let rq = ResidualQuantizer::new(&mut ps, &cfg, 3, 16, &mut rng).unwrap();
    let names: Vec<&str> = rq
        .books
        .iter()
        .map(|&id| ps.spec(id).name.as_str())
        .collect();
    assert_eq!(
        names,
        (0..6)
            .map(|d| format!("rq.codebooks.{d}.weight"))
            .collect::<Vec<_>>()
    );
}

#[test]
fn no_allocation_in_forward_backward() {
    for gradient in [RqGradient::Ste, RqGradient::Direct] {
        let mut rng = StdRng::seed_from_u64(17);
        let cfg = rq_cfg(RqMode::Implicit, false, gradient, 64, 6);
        let (mut ps, rq) = build::<f32>(&cfg, 3, 16, 0.3, &mut rng);
        let (bsz, pe) = (256, 48);
        let xb = to_t::<f32>(&normals(&mut rng, bsz * pe, 0.3));
        let dg = to_t::<f32>(&normals(&mut rng, bsz * pe, 1.0));
        let mut g = vec![0.0f32; bsz * pe];
        let mut dxb = vec![0.0f32; bsz * pe];
        let mut cache = rq.new_cache::<f32>(bsz);
        // Warm-up (lazy thread-pool or TLS set-up in kernels would show here, not below).
        rq.forward(&mut g, &mut cache, &xb, &ps, bsz);
        rq.backward(&mut dxb, &mut ps, &dg, &xb, &cache, 1.0, bsz);
        let before = allocs();
        for step in 0..3 {
            let b = if step == 2 { 100 } else { bsz }; // a smaller batch reuses the buffers
            ps.zero_grads(false);
            rq.forward(&mut g, &mut cache, &xb, &ps, b);
            rq.backward(&mut dxb, &mut ps, &dg, &xb, &cache, 1.0, b);
        }
        assert_eq!(
            allocs() - before,
            0,
            "{gradient:?}: allocations inside the step"
        );
    }
}
