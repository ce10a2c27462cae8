//! Residual quantization of the distribution embeddings x_b (paper §2.3, SPEC §2): the
//! HMDRR module that turns x_b into the gate input g of the hmdn-* models, plus its loss L_rq.
//!
//! Shapes: `B` rows, `P` distribution fields, `e` embedding width, `D` levels, `K` codes per
//! codebook, `w` code width (`z = P·e` implicit, `e` explicit). The gate input g is `[B, w]`.
//!
//! * **Implicit** (default): `r_0 = x_b`; level d (0-based here, `1..=D` in the paper) picks
//!   `c_d = argmin_k ||r_{d} − C_k||²` and passes on `r_{d+1} = r_d − sg(C[c_d])`;
//!   `s_D = Σ_d C[c_d]`. One codebook `rq.codebook.weight` `[K, z]` shared by all levels, or
//!   `rq.codebooks.<d>.weight` per level.
//! * **Explicit**: `D = P` levels; level d quantizes the d-th e-wide slice `x_b^{(d)}` with its
//!   own codebook `rq.codebooks.<d>.weight` `[K, e]` (always one per level, whatever
//!   `per_level_codebooks` says); `s_D = Σ_d C_d[c_d] ∈ R^e`.
//!
//! In both modes `u_d` denotes the input of level d (`r_d` resp. `x_b^{(d)}`), and
//! `L_rq = Σ_d mean_B( ||C[c_d] − sg(u_d)||² + β·||sg(C[c_d]) − u_d||² )`.
//!
//! Stop-gradients and gradient checks: a forward pass with `RqCache::frozen` set reuses the
//! codes and every `sg(·)` value of the previous unfrozen pass instead of recomputing them, so
//! a finite difference sees exactly the function whose derivative [`ResidualQuantizer::backward`]
//! computes (SPEC §2). At the point where those values were taken, the frozen pass reproduces
//! the unfrozen one bit for bit (same operations in the same order).

use crate::config::{RqConfig, RqGradient, RqMode};
use crate::error::{Error, Result};
use crate::model::distinct::gather_rows;
use crate::model::kmeans::{assign_nearest, lloyd, seed_distinct_rows, CentroidSums};
use crate::params::{Grads, Init, ParamId, ParamKind, ParamStore};
use hmdn_kernels::vq::{argmin_sq_l2, sq_norms};
use hmdn_kernels::Real;
use rand::Rng;

/// Standard deviation of the random-normal codebook initialisation. Matches the default
/// embedding initialisation (`embed_init_std`), so that random codes live at the scale of x_b
/// before k-means (or training) moves them.
pub const CODEBOOK_INIT_STD: f64 = 0.05;

/// The residual quantizer: codebook handles and dimensions. Holds no per-batch state (that is
/// in [`RqCache`]), so one quantizer serves any number of concurrent caches.
#[derive(Clone, Debug)]
pub struct ResidualQuantizer {
    /// Implicit or explicit extraction.
    pub mode: RqMode,
    /// How the task loss reaches the quantizer (`ste` or `direct`).
    pub gradient: RqGradient,
    /// Codebooks `[K, w]`: one (shared by every level) or one per level.
    pub books: Vec<ParamId>,
    /// Codebook size K.
    pub k: usize,
    /// Depth D (explicit: P).
    pub depth: usize,
    /// Number of distribution fields P.
    pub p: usize,
    /// Embedding width e.
    pub e: usize,
    /// Code width w: z = P·e (implicit) or e (explicit); also the gate width.
    pub w: usize,
    /// Commitment weight β.
    pub beta: f64,
    /// Steps without use after which [`ResidualQuantizer::restart_dead_codes`] re-seeds a
    /// code (0 = never).
    pub dead_code_restart_steps: usize,
}

/// Per-batch state of one quantizer pass: what backward needs, and the frozen values a
/// gradient check reuses. Buffers are `[D, B, w]` / `[B, w]` laid out with `B` = rows of the
/// last forward (capacity grows once in [`RqCache::ensure_batch`], never shrinks).
#[derive(Clone, Debug)]
pub struct RqCache<T> {
    /// Set by [`ResidualQuantizer::freeze`]: [`ResidualQuantizer::forward`] keeps the codes
    /// and `sg(·)` values of the previous unfrozen forward (gradient checks; SPEC §2).
    frozen: bool,
    /// Rows of the last forward.
    pub bsz: usize,
    /// Codes `c_d` `[D, B]` of the last unfrozen forward.
    pub codes: Vec<u32>,
    /// Level inputs `u_d` `[D, B, w]` as computed by the last forward (frozen or not).
    pub u: Vec<T>,
    /// `sg(u_d)` `[D, B, w]`: level inputs at the last unfrozen forward. Written only by
    /// [`ResidualQuantizer::freeze`]: while unfrozen, `sg(u_d)` has the value of `u_d` itself
    /// and training reads that (copying it every step would be wasted work).
    pub sg_u: Vec<T>,
    /// `sg(C[c_d])` `[D, B, w]`: the selected code rows at the last unfrozen forward (also the
    /// values subtracted along the residual chain). Written only by
    /// [`ResidualQuantizer::freeze`]; while unfrozen they are read from the codebook.
    pub sg_c: Vec<T>,
    /// `s_D = Σ_d C[c_d]` `[B, w]` from the current codebook values.
    pub s: Vec<T>,
    /// `sg(s_D − x̄)` `[B, w]` of the last unfrozen forward, x̄ = x_b (implicit) or
    /// Σ_d x_b^{(d)} (explicit); used by the `ste` gate input.
    pub sg_gate: Vec<T>,
    /// Squared code norms `[n_books, K]` (argmin scratch).
    norms: Vec<T>,
    /// Set by the first unfrozen forward: frozen values exist.
    filled: bool,
    cap: usize,
    depth: usize,
    w: usize,
}

impl<T: Real> RqCache<T> {
    /// Whether the cache is frozen (see [`ResidualQuantizer::freeze`]).
    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    /// Ends gradient-check mode: the next forward recomputes codes and `sg(·)` values.
    pub fn unfreeze(&mut self) {
        self.frozen = false;
    }

    /// Grows the buffers to hold `bsz` rows (no-op when they already do). Call once per batch
    /// shape, outside the training step; [`ResidualQuantizer::forward`] calls it too.
    pub fn ensure_batch(&mut self, bsz: usize) {
        if bsz <= self.cap {
            return;
        }
        let (d, w) = (self.depth, self.w);
        self.codes.resize(d * bsz, 0);
        for v in [&mut self.u, &mut self.sg_u, &mut self.sg_c] {
            v.resize(d * bsz * w, T::ZERO);
        }
        self.s.resize(bsz * w, T::ZERO);
        self.sg_gate.resize(bsz * w, T::ZERO);
        self.cap = bsz;
    }

    /// Codes of level `d` `[B]` from the last unfrozen forward.
    pub fn level_codes(&self, d: usize) -> &[u32] {
        &self.codes[d * self.bsz..(d + 1) * self.bsz]
    }

    /// Level input `u_d` `[B, w]` of the last forward.
    pub fn level_input(&self, d: usize) -> &[T] {
        let n = self.bsz * self.w;
        &self.u[d * n..(d + 1) * n]
    }
}

/// Lanes of the partial sums in [`row_loss`]: two SSE / one AVX register of f32.
const LOSS_LANES: usize = 8;

/// `Σ_j (c_j − su_j)² + β·(sc_j − ul_j)²` over one row of width w, for the L_rq term of one
/// level and row.
///
/// Summed in [`LOSS_LANES`] interleaved partial sums (element j goes to sum `j mod 8`, in
/// order) that are combined pairwise in a fixed order: a fixed function of w, so the result
/// does not depend on threads, and the frozen pass reproduces the unfrozen one bit for bit.
/// The independent sums let the compiler vectorise the loop and break the add-latency chain
/// that one running sum has.
#[inline]
fn row_loss<T: Real>(c: &[T], su: &[T], sc: &[T], ul: &[T], beta: T) -> T {
    let mut acc = [T::ZERO; LOSS_LANES];
    let it = c
        .chunks_exact(LOSS_LANES)
        .zip(su.chunks_exact(LOSS_LANES))
        .zip(sc.chunks_exact(LOSS_LANES))
        .zip(ul.chunks_exact(LOSS_LANES));
    let full = c.len() / LOSS_LANES * LOSS_LANES;
    for (((c, su), sc), ul) in it {
        for j in 0..LOSS_LANES {
            let t1 = c[j] - su[j];
            let t2 = sc[j] - ul[j];
            acc[j] += t1 * t1 + beta * t2 * t2;
        }
    }
    for j in full..c.len() {
        let t1 = c[j] - su[j];
        let t2 = sc[j] - ul[j];
        acc[j - full] += t1 * t1 + beta * t2 * t2;
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

impl ResidualQuantizer {
    /// Registers the codebooks (random normal, std [`CODEBOOK_INIT_STD`]) for `n_dist_fields`
    /// = P fields of width `e`. Errors ([`Error::Config`]) for K = 0, e = 0, P = 0, D = 0
    /// (implicit), explicit depth other than P or 0 (= automatic), or β not finite and ≥ 0.
    pub fn new<T: Real, R: Rng>(
        ps: &mut ParamStore<T>,
        cfg: &RqConfig,
        n_dist_fields: usize,
        e: usize,
        rng: &mut R,
    ) -> Result<Self> {
        let bad = |m: String| Err(Error::Config(m));
        let (k, p) = (cfg.codebook_size, n_dist_fields);
        if k == 0 {
            return bad("rq.codebook_size (K) must be at least 1".into());
        }
        if k > u32::MAX as usize {
            return bad(format!(
                "rq.codebook_size (K) = {k} does not fit a u32 code"
            ));
        }
        if e == 0 {
            return bad(
                "the embedding width e must be at least 1 for residual quantization".into(),
            );
        }
        if p == 0 {
            return bad("residual quantization needs at least one distribution field".into());
        }
        if !(cfg.beta.is_finite() && cfg.beta >= 0.0) {
            return bad(format!("rq.beta must be finite and >= 0, got {}", cfg.beta));
        }
        let (depth, w) = match cfg.mode {
            RqMode::Implicit => {
                if cfg.depth == 0 {
                    return bad("rq.depth (D) must be at least 1".into());
                }
                (cfg.depth, p * e)
            }
            RqMode::Explicit => {
                if cfg.depth != 0 && cfg.depth != p {
                    return bad(format!(
                        "explicit RQ has one level per distribution field: depth must be {p} (or 0 = automatic), got {}",
                        cfg.depth
                    ));
                }
                (p, e)
            }
        };
        let init = Init::Normal(CODEBOOK_INIT_STD);
        let books = if cfg.mode == RqMode::Implicit && !cfg.per_level_codebooks {
            vec![ps.add("rq.codebook.weight", &[k, w], ParamKind::Dense, init, rng)]
        } else {
            (0..depth)
                .map(|d| {
                    ps.add(
                        &format!("rq.codebooks.{d}.weight"),
                        &[k, w],
                        ParamKind::Dense,
                        init,
                        rng,
                    )
                })
                .collect()
        };
        Ok(ResidualQuantizer {
            mode: cfg.mode,
            gradient: cfg.gradient,
            books,
            k,
            depth,
            p,
            e,
            w,
            beta: cfg.beta,
            dead_code_restart_steps: cfg.dead_code_restart_steps,
        })
    }

    /// Starts gradient-check mode on `cache` (SPEC §2): stores the stop-gradient values of its
    /// last (unfrozen) forward — `sg(u_d)` and the selected rows `sg(C[c_d])` of the codebooks
    /// in `ps`, which must be the values that forward used — and makes later forwards reuse
    /// them and the codes. Call right after that forward, before perturbing anything.
    ///
    /// # Panics
    /// If the cache holds no forward yet.
    #[track_caller]
    pub fn freeze<T: Real>(&self, cache: &mut RqCache<T>, ps: &ParamStore<T>) {
        assert!(cache.filled, "rq freeze: no forward to freeze");
        let (bsz, w) = (cache.bsz, self.w);
        let n = bsz * w;
        cache.sg_u[..self.depth * n].copy_from_slice(&cache.u[..self.depth * n]);
        for d in 0..self.depth {
            let book = ps.value(self.book(d));
            let codes = &cache.codes[d * bsz..(d + 1) * bsz];
            let sg_c = &mut cache.sg_c[d * n..(d + 1) * n];
            for (row, &c) in sg_c.chunks_exact_mut(w.max(1)).zip(codes) {
                let c = c as usize;
                row.copy_from_slice(&book[c * w..(c + 1) * w]);
            }
        }
        cache.frozen = true;
    }

    /// Width of the gate input g: z = P·e (implicit) or e (explicit).
    pub fn gate_dim(&self) -> usize {
        self.w
    }

    /// Index into [`Self::books`] of the codebook level `d` uses.
    pub fn book_of_level(&self, d: usize) -> usize {
        if self.books.len() == 1 {
            0
        } else {
            d
        }
    }

    /// Codebook handle of level `d`.
    pub fn book(&self, d: usize) -> ParamId {
        self.books[self.book_of_level(d)]
    }

    /// A cache with room for `bsz` rows.
    pub fn new_cache<T: Real>(&self, bsz: usize) -> RqCache<T> {
        let mut c = RqCache {
            frozen: false,
            bsz: 0,
            codes: Vec::new(),
            u: Vec::new(),
            sg_u: Vec::new(),
            sg_c: Vec::new(),
            s: Vec::new(),
            sg_gate: Vec::new(),
            norms: vec![T::ZERO; self.books.len() * self.k],
            filled: false,
            cap: 0,
            depth: self.depth,
            w: self.w,
        };
        c.ensure_batch(bsz);
        c
    }

    /// Writes the gate input `g` `[B, w]` for `xb` `[B, P·e]` and returns `L_rq` (not
    /// multiplied by α). With `cache.frozen` the codes and `sg(·)` values of the previous
    /// unfrozen forward are reused (see module docs); otherwise they are recomputed and stored.
    /// Returns 0 for an empty batch.
    ///
    /// # Panics
    /// On short buffers, or a frozen forward without a previous unfrozen one on the same batch
    /// size (programmer errors).
    #[track_caller]
    pub fn forward<T: Real>(
        &self,
        g: &mut [T],
        cache: &mut RqCache<T>,
        xb: &[T],
        ps: &ParamStore<T>,
        bsz: usize,
    ) -> T {
        self.forward_part(g, cache, xb, ps, bsz, bsz, true)
    }

    /// [`Self::forward`] on `bsz` rows that are part of a batch of `batch_rows` rows (a row
    /// chunk): returns this part's share of `L_rq`, `Σ_rows loss / batch_rows`, so that the
    /// parts of a batch add up to its `L_rq`. Without `with_loss` (predictions only) the loss
    /// is not computed and 0 is returned; `g` and the cache are the same.
    #[track_caller]
    #[allow(clippy::too_many_arguments)]
    pub fn forward_part<T: Real>(
        &self,
        g: &mut [T],
        cache: &mut RqCache<T>,
        xb: &[T],
        ps: &ParamStore<T>,
        bsz: usize,
        batch_rows: usize,
        with_loss: bool,
    ) -> T {
        let (w, e, k) = (self.w, self.e, self.k);
        let pe = self.p * e;
        assert!(xb.len() >= bsz * pe, "rq forward: xb shorter than [B, P·e]");
        assert!(g.len() >= bsz * w, "rq forward: g shorter than [B, w]");
        let frozen = cache.frozen;
        if frozen {
            assert!(
                cache.filled && cache.bsz == bsz,
                "rq forward: a frozen pass needs an unfrozen pass on the same batch size first"
            );
        } else {
            cache.ensure_batch(bsz);
            cache.bsz = bsz;
            cache.filled = true;
        }
        if bsz == 0 {
            return T::ZERO;
        }
        let n = bsz * w;
        if !frozen {
            for (i, &id) in self.books.iter().enumerate() {
                sq_norms(&mut cache.norms[i * k..(i + 1) * k], ps.value(id), w);
            }
        }
        let beta = T::from_f64(self.beta);
        let mut loss = 0.0f64;
        let RqCache {
            codes: all_codes,
            u,
            sg_u: all_sg_u,
            sg_c: all_sg_c,
            norms,
            ..
        } = cache;
        for d in 0..self.depth {
            let bi = self.book_of_level(d);
            let book = ps.value(self.books[bi]);
            let (u_prev, u_rest) = u.split_at_mut(d * n);
            let u_d = &mut u_rest[..n];
            // Level input u_d [B, w].
            match self.mode {
                RqMode::Implicit if d == 0 => u_d.copy_from_slice(&xb[..n]),
                RqMode::Implicit => {
                    // u_d = u_{d-1} − sg(C[c_{d-1}]): the residual chain. Frozen: the stored
                    // selected rows; unfrozen: the same values, read from the codebook.
                    let up = &u_prev[(d - 1) * n..];
                    if frozen {
                        let cp = &all_sg_c[(d - 1) * n..d * n];
                        for ((u, &a), &c) in u_d.iter_mut().zip(up).zip(cp) {
                            *u = a - c;
                        }
                    } else {
                        let pbook = ps.value(self.book(d - 1));
                        let pcodes = &all_codes[(d - 1) * bsz..d * bsz];
                        let rows = u_d.chunks_exact_mut(w).zip(up.chunks_exact(w));
                        for ((urow, prow), &c) in rows.zip(pcodes) {
                            let c = c as usize;
                            let crow = &pbook[c * w..(c + 1) * w];
                            for ((u, &a), &cv) in urow.iter_mut().zip(prow).zip(crow) {
                                *u = a - cv;
                            }
                        }
                    }
                }
                RqMode::Explicit => {
                    for (u, x) in u_d.chunks_exact_mut(e).zip(xb.chunks_exact(pe)) {
                        u.copy_from_slice(&x[d * e..(d + 1) * e]);
                    }
                }
            }
            let codes = &mut all_codes[d * bsz..(d + 1) * bsz];
            if !frozen {
                argmin_sq_l2(codes, u_d, book, &norms[bi * k..(bi + 1) * k], w);
            }
            if !with_loss {
                continue;
            }
            // ||C[c_d] − sg(u_d)||² + β·||sg(C[c_d]) − u_d||², live values where no sg(·).
            // Unfrozen, sg(u_d) = u_d and sg(C[c_d]) = C[c_d].
            let mut acc = 0.0f64;
            for (b, &c) in codes.iter().enumerate() {
                let c = c as usize;
                let r = b * w..(b + 1) * w;
                let live = &book[c * w..(c + 1) * w];
                let (su, sc) = if frozen {
                    (
                        &all_sg_u[d * n + r.start..d * n + r.end],
                        &all_sg_c[d * n + r.start..d * n + r.end],
                    )
                } else {
                    (&u_d[r.clone()], live)
                };
                acc += row_loss(live, su, sc, &u_d[r], beta).to_f64();
            }
            loss += acc / batch_rows as f64;
        }
        // s_D [B, w] = Σ_d C[c_d] from the live codebooks (the `direct` gate input).
        let s = &mut cache.s[..n];
        s.fill(T::ZERO);
        for d in 0..self.depth {
            let book = ps.value(self.book(d));
            let codes = &cache.codes[d * bsz..(d + 1) * bsz];
            for (srow, &c) in s.chunks_exact_mut(w).zip(codes) {
                let c = c as usize;
                for (sv, &cv) in srow.iter_mut().zip(&book[c * w..(c + 1) * w]) {
                    *sv += cv;
                }
            }
        }
        let g = &mut g[..n];
        match self.gradient {
            RqGradient::Direct => g.copy_from_slice(s),
            RqGradient::Ste => {
                // g = x̄ + sg(s_D − x̄): the value of s_D, the gradient of x̄.
                let sg_gate = &mut cache.sg_gate[..n];
                for b in 0..bsz {
                    let xrow = &xb[b * pe..(b + 1) * pe];
                    let grow = &mut g[b * w..(b + 1) * w];
                    // x̄ first (into g), then g = x̄ + sg(s − x̄).
                    match self.mode {
                        RqMode::Implicit => grow.copy_from_slice(xrow),
                        RqMode::Explicit => {
                            grow.copy_from_slice(&xrow[..e]);
                            for xd in xrow.chunks_exact(e).skip(1) {
                                for (gv, &xv) in grow.iter_mut().zip(xd) {
                                    *gv += xv;
                                }
                            }
                        }
                    }
                    let srow = &s[b * w..(b + 1) * w];
                    let sgrow = &mut sg_gate[b * w..(b + 1) * w];
                    if !frozen {
                        for ((sg, &sv), &xv) in sgrow.iter_mut().zip(srow).zip(grow.iter()) {
                            *sg = sv - xv;
                        }
                    }
                    for (gv, &sg) in grow.iter_mut().zip(sgrow.iter()) {
                        *gv += sg;
                    }
                }
            }
        }
        T::from_f64(loss)
    }

    /// The quantizer on the batch's distinct rows of `x_b` only ([`DistinctRows`]): an
    /// unfrozen [`Self::forward_part`] on `xb_u` `[U, P·e]` (its `U` distinct rows) into
    /// `distinct.cache` and `distinct.g`, plus every level's per-row `L_rq` term into
    /// `distinct.row_loss` when `with_loss` is set. [`Self::forward_gathered`] then hands
    /// each batch row its distinct row's results.
    ///
    /// Rows with the same distribution ids have the same `x_b`, and each row's codes, level
    /// inputs, `s_D`, gate input and loss terms are functions of its own `x_b` only; so the
    /// gathered values are those a pass over every row computes, bit for bit
    /// (`tests/distinct_keys.rs`).
    #[track_caller]
    pub fn forward_distinct<T: Real>(
        &self,
        distinct: &mut DistinctRows<T>,
        xb_u: &[T],
        ps: &ParamStore<T>,
        n_u: usize,
        with_loss: bool,
    ) {
        let w = self.w;
        distinct.n = n_u;
        distinct.ensure(self, n_u);
        let DistinctRows {
            cache,
            g,
            row_loss: terms,
            ..
        } = distinct;
        cache.frozen = false;
        self.forward_part(&mut g[..n_u * w], cache, xb_u, ps, n_u, n_u, false);
        if !with_loss {
            return;
        }
        let beta = T::from_f64(self.beta);
        let n = n_u * w;
        for d in 0..self.depth {
            let book = ps.value(self.book(d));
            let u_d = &cache.u[d * n..(d + 1) * n];
            let codes = &cache.codes[d * n_u..(d + 1) * n_u];
            let out = &mut terms[d * n_u..(d + 1) * n_u];
            // The unfrozen term of `forward_part`: sg(u_d) = u_d, sg(C[c_d]) = C[c_d].
            for ((o, &c), u) in out.iter_mut().zip(codes).zip(u_d.chunks_exact(w)) {
                let live = &book[c as usize * w..(c as usize + 1) * w];
                *o = row_loss(live, u, live, u, beta);
            }
        }
    }

    /// [`Self::forward_part`] for a chunk of `bsz` rows of a batch of `batch_rows`, copying
    /// each row's results from its distinct row `slots[b]` of the last
    /// [`Self::forward_distinct`] instead of quantizing it again. `L_rq`'s share is summed
    /// as `forward_part` sums it (per level, rows in order, in f64), from the same per-row
    /// terms. With `keep` the cache gets everything `forward_part` leaves there (codes,
    /// level inputs, `s_D`, `sg(s_D − x̄)`: what backward, gradient checks and code-usage
    /// statistics read); without it (predictions whose chunk state is dropped) only `g` is
    /// written.
    ///
    /// # Panics
    /// On short buffers, a slot outside the distinct rows, or a frozen cache (a frozen pass
    /// reuses its own stored values; it never gathers).
    #[track_caller]
    #[allow(clippy::too_many_arguments)]
    pub fn forward_gathered<T: Real>(
        &self,
        g: &mut [T],
        cache: &mut RqCache<T>,
        distinct: &DistinctRows<T>,
        slots: &[u32],
        bsz: usize,
        batch_rows: usize,
        with_loss: bool,
        keep: bool,
    ) -> T {
        assert!(!cache.frozen, "rq forward: a frozen pass does not gather");
        assert!(slots.len() >= bsz, "rq forward: fewer slots than rows");
        let w = self.w;
        let n_u = distinct.n;
        assert!(g.len() >= bsz * w, "rq forward: g shorter than [B, w]");
        let slots = &slots[..bsz];
        assert!(
            slots.iter().all(|&s| (s as usize) < n_u),
            "rq forward: a slot outside the distinct rows"
        );
        let src = &distinct.cache;
        gather_rows(&mut g[..bsz * w], &distinct.g[..n_u * w], slots, w);
        if keep {
            cache.ensure_batch(bsz);
            cache.bsz = bsz;
            cache.filled = true;
            let (n, nu) = (bsz * w, n_u * w);
            for d in 0..self.depth {
                let codes = &mut cache.codes[d * bsz..(d + 1) * bsz];
                gather_rows(codes, &src.codes[d * n_u..(d + 1) * n_u], slots, 1);
                let (u, su) = (
                    &mut cache.u[d * n..(d + 1) * n],
                    &src.u[d * nu..(d + 1) * nu],
                );
                gather_rows(u, su, slots, w);
            }
            gather_rows(&mut cache.s[..n], &src.s[..nu], slots, w);
            if self.gradient == RqGradient::Ste {
                gather_rows(&mut cache.sg_gate[..n], &src.sg_gate[..nu], slots, w);
            }
        }
        if !with_loss {
            return T::ZERO;
        }
        let mut loss = 0.0f64;
        for d in 0..self.depth {
            let terms = &distinct.row_loss[d * n_u..(d + 1) * n_u];
            let mut acc = 0.0f64;
            for &s in slots {
                acc += terms[s as usize].to_f64();
            }
            loss += acc / batch_rows as f64;
        }
        T::from_f64(loss)
    }

    /// Accumulates (+=) `dxb` `[B, P·e]` and the codebook gradients, given `dg` `[B, w]` =
    /// ∂L_task/∂g and `alpha` (the weight of L_rq in the total loss), for the last forward
    /// recorded in `cache`.
    ///
    /// # Panics
    /// On short buffers or a cache whose last forward had another batch size.
    #[track_caller]
    #[allow(clippy::too_many_arguments)]
    pub fn backward<T: Real>(
        &self,
        dxb: &mut [T],
        ps: &mut ParamStore<T>,
        dg: &[T],
        xb: &[T],
        cache: &RqCache<T>,
        alpha: T,
        bsz: usize,
    ) {
        self.backward_part(dxb, &mut ps.grads_view(), dg, xb, cache, alpha, bsz, bsz);
    }

    /// [`Self::backward`] for `bsz` rows that are part of a batch of `batch_rows` rows (a row
    /// chunk, see [`Self::forward_part`]): `L_rq` is a mean over the whole batch, so its
    /// gradient is scaled by `1/batch_rows`.
    #[track_caller]
    #[allow(clippy::too_many_arguments)]
    pub fn backward_part<T: Real>(
        &self,
        dxb: &mut [T],
        ps: &mut Grads<'_, T>,
        dg: &[T],
        xb: &[T],
        cache: &RqCache<T>,
        alpha: T,
        bsz: usize,
        batch_rows: usize,
    ) {
        // Derivation. Total loss L = L_task(g) + α·L_rq; everything under sg(·) and the codes
        // are constants. With u_d the input of level d and n_d = mean over the B rows:
        //
        //   L_rq = Σ_d (1/B) Σ_b [ ||C[c_db] − sg(u_db)||² + β·||sg(C[c_db]) − u_db||² ]
        //
        // * ∂L_rq/∂C_k (codebook of level d) = (2/B) Σ_{b: c_db = k} (C_k − sg(u_db)): the first
        //   term only (the second sees C through sg). A shared codebook sums over all levels.
        // * ∂L_rq/∂u_db = (2β/B)(u_db − sg(C[c_db])): the second term only.
        //   Implicit: u_d = r_d = x_b − Σ_{j<d} sg(C[c_j]), so ∂u_d/∂x_b = I and ∂u_d/∂C = 0:
        //   dx_b gets Σ_d (2β/B)(u_d − C[c_d]). Explicit: u_d = x_b^{(d)}, so slice d of dx_b
        //   gets level d's term.
        // * Gate, ste: g = x̄ + sg(s_D − x̄) with x̄ = x_b (implicit) or Σ_d x_b^{(d)}
        //   (explicit), so dx_b += dg (implicit) / every slice d of dx_b += dg (explicit); the
        //   codebooks get nothing from the task loss.
        // * Gate, direct: g = s_D = Σ_d C[c_d], so dC[c_db] += dg_b for every level d; x_b gets
        //   nothing from the task loss.
        let (w, e) = (self.w, self.e);
        let pe = self.p * e;
        assert!(
            cache.filled && cache.bsz == bsz,
            "rq backward: the cache holds a forward of another batch size"
        );
        assert!(
            xb.len() >= bsz * pe,
            "rq backward: xb shorter than [B, P·e]"
        );
        assert!(
            dxb.len() >= bsz * pe,
            "rq backward: dxb shorter than [B, P·e]"
        );
        assert!(dg.len() >= bsz * w, "rq backward: dg shorter than [B, w]");
        if bsz == 0 {
            return;
        }
        let n = bsz * w;
        let inv_b = T::ONE / T::from_usize(batch_rows);
        let two = T::from_f64(2.0);
        let scale_c = alpha * two * inv_b;
        let scale_u = alpha * two * T::from_f64(self.beta) * inv_b;
        let direct = self.gradient == RqGradient::Direct;
        for d in 0..self.depth {
            let r = ps.range(self.book(d));
            let (book, gbook) = (&ps.values[r.clone()], &mut ps.grads[r]);
            let codes = &cache.codes[d * bsz..(d + 1) * bsz];
            let u = &cache.u[d * n..(d + 1) * n];
            // Unfrozen, sg(u_d) = u_d and sg(C[c_d]) = C[c_d] (see RqCache::sg_u).
            let frozen = cache.frozen;
            let sg_u = if frozen {
                &cache.sg_u[d * n..(d + 1) * n]
            } else {
                u
            };
            let sg_c = &cache.sg_c[if frozen { d * n..(d + 1) * n } else { 0..0 }];
            let off = match self.mode {
                RqMode::Implicit => 0,
                RqMode::Explicit => d * e,
            };
            for (b, &c) in codes.iter().enumerate() {
                let c = c as usize;
                let rb = b * w..(b + 1) * w;
                let gc = &mut gbook[c * w..(c + 1) * w];
                let cl = &book[c * w..(c + 1) * w];
                for (gv, (&cv, &su)) in gc.iter_mut().zip(cl.iter().zip(&sg_u[rb.clone()])) {
                    *gv += scale_c * (cv - su);
                }
                if direct {
                    for (gv, &dv) in gc.iter_mut().zip(&dg[rb.clone()]) {
                        *gv += dv;
                    }
                }
                let dx = &mut dxb[b * pe + off..b * pe + off + w];
                let sc = if frozen { &sg_c[rb.clone()] } else { cl };
                for (dv, (&uv, &sc)) in dx.iter_mut().zip(u[rb.clone()].iter().zip(sc)) {
                    *dv += scale_u * (uv - sc);
                }
            }
        }
        if !direct {
            for (dxrow, dgrow) in dxb.chunks_exact_mut(pe).zip(dg.chunks_exact(w)).take(bsz) {
                for slice in dxrow.chunks_exact_mut(w) {
                    // Implicit: one slice of width z = P·e; explicit: P slices of width e.
                    for (dv, &gv) in slice.iter_mut().zip(dgrow) {
                        *dv += gv;
                    }
                }
            }
        }
    }

    /// Initialises the codebooks by k-means on one batch `xb` `[B, P·e]` (the first training
    /// batch), level by level, deterministically given `rng`:
    ///
    /// * one codebook per level (explicit, or implicit with `per_level_codebooks`): level d
    ///   runs [`lloyd`] (`iters` iterations from K distinct random rows) on its inputs u_d —
    ///   `x_b^{(d)}` (explicit) or the residuals `r_d` left by the levels already initialised
    ///   (implicit);
    /// * one shared codebook (implicit): the codebook must serve every level at once, so it is
    ///   seeded with K distinct rows of `r_0 = x_b`, and each Lloyd iteration re-runs the
    ///   residual chain with the current codebook and moves every code to the mean of all
    ///   residuals (of any level) assigned to it.
    ///
    /// Allocates (it runs once, outside the training loop). No-op for an empty batch.
    pub fn kmeans_init<T: Real, R: Rng>(
        &self,
        ps: &mut ParamStore<T>,
        xb: &[T],
        bsz: usize,
        iters: usize,
        rng: &mut R,
    ) {
        let (w, e, k) = (self.w, self.e, self.k);
        let pe = self.p * e;
        assert!(
            xb.len() >= bsz * pe,
            "rq kmeans_init: xb shorter than [B, P·e]"
        );
        if bsz == 0 {
            return;
        }
        let n = bsz * w;
        let mut u = vec![T::ZERO; n];
        let mut assign = vec![0u32; bsz];
        let mut norms = vec![T::ZERO; k];
        let mut book = vec![T::ZERO; k * w];
        if self.books.len() == 1 && self.depth > 1 {
            let mut sums = CentroidSums::new(k, w);
            u.copy_from_slice(&xb[..n]);
            seed_distinct_rows(&mut book, &u, w, rng);
            for _ in 0..iters {
                sums.clear();
                u.copy_from_slice(&xb[..n]);
                for _ in 0..self.depth {
                    assign_nearest(&mut assign, &mut norms, &u, &book, w);
                    sums.add(&u, &assign);
                    subtract_assigned(&mut u, &book, &assign, w);
                }
                sums.update(&mut book);
            }
            ps.value_mut(self.books[0]).copy_from_slice(&book);
            return;
        }
        for d in 0..self.depth {
            match self.mode {
                RqMode::Implicit if d == 0 => u.copy_from_slice(&xb[..n]),
                RqMode::Implicit => subtract_assigned(&mut u, &book, &assign, w),
                RqMode::Explicit => {
                    for (ur, x) in u.chunks_exact_mut(e).zip(xb.chunks_exact(pe)) {
                        ur.copy_from_slice(&x[d * e..(d + 1) * e]);
                    }
                }
            }
            lloyd(&mut book, &mut assign, &u, w, iters, rng);
            ps.value_mut(self.book(d)).copy_from_slice(&book);
        }
    }

    /// A fresh (empty) per-level code-usage accumulator for this quantizer.
    pub fn usage(&self) -> RqUsage {
        RqUsage::new(self.depth, self.k)
    }

    /// A fresh dead-code tracker for [`Self::restart_dead_codes`].
    pub fn dead_codes(&self) -> DeadCodes {
        DeadCodes {
            idle: vec![0; self.books.len() * self.k],
        }
    }

    /// Counts one training step for dead-code detection and re-seeds dead codes; returns how
    /// many were re-seeded. Call after the step's unfrozen forward, with its cache.
    ///
    /// Every code not selected at any level of this batch gets one more idle step; codes
    /// selected are reset to 0. A code idle for `dead_code_restart_steps` steps (0 = feature
    /// off, nothing happens) is overwritten by a row of the current batch's level inputs
    /// u_d (the residuals its level quantizes), chosen with `rng`: for a per-level codebook,
    /// a uniformly random row of that level; for the shared codebook, a uniformly random
    /// (level, row) pair. Codes are visited in (codebook, index) order, so the result is
    /// deterministic given the rng. Optimiser moments of the re-seeded rows are left alone.
    pub fn restart_dead_codes<T: Real, R: Rng>(
        &self,
        ps: &mut ParamStore<T>,
        tracker: &mut DeadCodes,
        cache: &RqCache<T>,
        rng: &mut R,
    ) -> usize {
        self.restart_dead_codes_in(ps, tracker, || std::iter::once(cache), rng)
    }

    /// [`Self::restart_dead_codes`] for a batch whose rows are spread over several caches
    /// (row chunks, in batch order): the same rule, with rows numbered across the caches.
    pub fn restart_dead_codes_in<'c, T: Real, R: Rng, I>(
        &self,
        ps: &mut ParamStore<T>,
        tracker: &mut DeadCodes,
        caches: impl Fn() -> I,
        rng: &mut R,
    ) -> usize
    where
        I: Iterator<Item = &'c RqCache<T>>,
    {
        let steps = self.dead_code_restart_steps;
        let bsz: usize = caches().map(|c| c.bsz).sum();
        if steps == 0 || bsz == 0 || caches().any(|c| !c.filled) {
            return 0;
        }
        let (k, w) = (self.k, self.w);
        for v in tracker.idle.iter_mut() {
            *v = v.saturating_add(1);
        }
        for cache in caches() {
            for d in 0..self.depth {
                let base = self.book_of_level(d) * k;
                for &c in cache.level_codes(d) {
                    tracker.idle[base + c as usize] = 0;
                }
            }
        }
        let mut restarted = 0;
        for (bi, &id) in self.books.iter().enumerate() {
            for c in 0..k {
                if tracker.idle[bi * k + c] < steps as u64 {
                    continue;
                }
                let d = if self.books.len() == 1 {
                    rng.gen_range(0..self.depth)
                } else {
                    bi
                };
                let mut b = rng.gen_range(0..bsz);
                let cache = caches()
                    .find(|c| {
                        let here = b < c.bsz;
                        if !here {
                            b -= c.bsz;
                        }
                        here
                    })
                    .expect("b < total rows");
                let src = &cache.level_input(d)[b * w..(b + 1) * w];
                ps.value_mut(id)[c * w..(c + 1) * w].copy_from_slice(src);
                tracker.idle[bi * k + c] = 0;
                restarted += 1;
            }
        }
        restarted
    }
}

/// The quantizer's results on a batch's distinct rows of `x_b` ([`ResidualQuantizer::forward_distinct`]):
/// a cache and gate input `[U, w]` for the `U` distinct rows, and the per-row `L_rq` terms
/// `[D, U]`. Sized once per batch shape, like the chunk caches.
#[derive(Clone, Debug)]
pub struct DistinctRows<T> {
    /// Distinct rows of the last pass.
    pub n: usize,
    /// The quantizer's cache of the distinct rows.
    pub cache: RqCache<T>,
    /// Gate input of the distinct rows `[U, w]`.
    pub g: Vec<T>,
    /// The (unfrozen) `L_rq` term of every level and distinct row `[D, U]`, before the
    /// batch mean.
    pub row_loss: Vec<T>,
}

impl<T: Real> DistinctRows<T> {
    /// Room for `n_u` distinct rows of `q`'s shapes.
    pub fn new(q: &ResidualQuantizer, n_u: usize) -> Self {
        let mut d = DistinctRows {
            n: 0,
            cache: q.new_cache(n_u),
            g: Vec::new(),
            row_loss: Vec::new(),
        };
        d.ensure(q, n_u);
        d
    }

    /// Grows the buffers to hold `n_u` distinct rows (no-op when they already do).
    pub fn ensure(&mut self, q: &ResidualQuantizer, n_u: usize) {
        self.cache.ensure_batch(n_u);
        if self.g.len() < n_u * q.w {
            self.g.resize(n_u * q.w, T::ZERO);
        }
        if self.row_loss.len() < n_u * q.depth {
            self.row_loss.resize(n_u * q.depth, T::ZERO);
        }
    }
}

/// `u[b] −= book[assign[b]]` for every row (`u` `[B, w]`, `book` `[K, w]`).
fn subtract_assigned<T: Real>(u: &mut [T], book: &[T], assign: &[u32], w: usize) {
    for (row, &a) in u.chunks_exact_mut(w).zip(assign) {
        let a = a as usize;
        for (v, &c) in row.iter_mut().zip(&book[a * w..(a + 1) * w]) {
            *v -= c;
        }
    }
}

/// Steps since each code was last selected, `[n_books, K]` (see
/// [`ResidualQuantizer::restart_dead_codes`]).
#[derive(Clone, Debug)]
pub struct DeadCodes {
    /// Idle steps per code, codebook-major.
    pub idle: Vec<u64>,
}

/// Usage figures of one level over the batches recorded so far.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LevelUsage {
    /// Rows recorded.
    pub total: u64,
    /// Distinct codes selected at least once.
    pub distinct: usize,
    /// `exp(H)` with `H = −Σ_k p_k ln p_k` the entropy of the code distribution (in nats):
    /// K for uniform use of K codes, 1 when one code takes everything; 0 when nothing was
    /// recorded.
    pub perplexity: f64,
}

/// Per-level code histogram `[D, K]`, accumulated over batches and reset every epoch.
#[derive(Clone, Debug)]
pub struct RqUsage {
    depth: usize,
    k: usize,
    /// Selections per (level, code), level-major `[D, K]`.
    pub counts: Vec<u64>,
}

impl RqUsage {
    /// An empty histogram for `depth` levels of `k` codes.
    pub fn new(depth: usize, k: usize) -> Self {
        RqUsage {
            depth,
            k,
            counts: vec![0; depth * k],
        }
    }

    /// Zeroes the histogram (start of an epoch).
    pub fn reset(&mut self) {
        self.counts.fill(0);
    }

    /// Adds the codes of the cache's last forward.
    pub fn record<T: Real>(&mut self, cache: &RqCache<T>) {
        self.record_codes(&cache.codes[..self.depth * cache.bsz], cache.bsz);
    }

    /// Adds codes `[D, B]` (level-major).
    ///
    /// # Panics
    /// If `codes` is not `D·B` long or holds a code ≥ K (programmer errors).
    #[track_caller]
    pub fn record_codes(&mut self, codes: &[u32], bsz: usize) {
        assert_eq!(codes.len(), self.depth * bsz, "usage: codes are not [D, B]");
        for d in 0..self.depth {
            let hist = &mut self.counts[d * self.k..(d + 1) * self.k];
            for &c in &codes[d * bsz..(d + 1) * bsz] {
                hist[c as usize] += 1;
            }
        }
    }

    /// Figures of level `d`.
    pub fn level(&self, d: usize) -> LevelUsage {
        let hist = &self.counts[d * self.k..(d + 1) * self.k];
        let total: u64 = hist.iter().sum();
        let distinct = hist.iter().filter(|&&c| c > 0).count();
        if total == 0 {
            return LevelUsage {
                total,
                distinct,
                perplexity: 0.0,
            };
        }
        let t = total as f64;
        let entropy: f64 = hist
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / t;
                -p * p.ln()
            })
            .sum();
        LevelUsage {
            total,
            distinct,
            perplexity: entropy.exp(),
        }
    }

    /// Figures of every level, in level order.
    pub fn levels(&self) -> Vec<LevelUsage> {
        (0..self.depth).map(|d| self.level(d)).collect()
    }
}
