//! PEPNet's GateNU, `δ(v) = γ·sigmoid(W2·ReLU(W1·v + b1) + b2)` (`<prefix>.fc1`, `.fc2`),
//! and the elementwise scaling `y = δ ⊙ x` it drives (EPNet on the input, PPNet on every
//! hidden layer). With γ = 2 a neutral gate (logit 0) leaves its input unchanged.

use crate::model::linear::{InputGrad, Linear};
use crate::params::{Grads, ParamStore};
use hmdn_kernels::act::bias_grad;
use hmdn_kernels::act::{bias_relu_forward, relu_backward, scaled_sigmoid_backward};
use hmdn_kernels::embed::{add_rows_indexed, add_rows_indexed_bias_relu, scatter_add_rows_indexed};
use hmdn_kernels::gemm::{gemm_epilogue, gemm_packed_b, pack_b_for, packed_b_len, Epilogue};
use hmdn_kernels::{gemm, Real, SimdPath, Trans};
use rand::Rng;

/// A two-layer gate `d_in → hidden → d_out` with output in `(0, γ)`.
#[derive(Clone, Debug)]
pub struct GateNu {
    /// First layer `d_in → hidden`, followed by ReLU.
    pub fc1: Linear,
    /// Second layer `hidden → d_out`, followed by `γ·sigmoid`.
    pub fc2: Linear,
    /// Output scale γ.
    pub gamma: f64,
}

/// Activations and scratch of one [`GateNu`] for one batch.
#[derive(Clone, Debug, Default)]
pub struct GateNuCache<T> {
    /// Hidden activations `ReLU(v·W1ᵀ + b1)` `[B, hidden]`.
    pub a1: Vec<T>,
    /// Gate output `δ` `[B, d_out]`.
    pub delta: Vec<T>,
    /// Upstream gradient `∂L/∂δ` `[B, d_out]`; callers accumulate into it (after
    /// [`GateNuCache::zero_ddelta`]) before [`GateNu::backward`].
    pub ddelta: Vec<T>,
    /// Scratch: `∂L/∂(fc2 pre-activation)` `[B, d_out]` (the forward does not store the
    /// pre-activation: its GEMM applies the sigmoid as it stores δ).
    pub u2: Vec<T>,
    /// Scratch: `∂L/∂a1` `[B, hidden]`.
    pub da1: Vec<T>,
    /// Scratch: `∂L/∂(fc1 pre-activation)` `[B, hidden]`.
    pub du1: Vec<T>,
    /// Scratch: the leading input columns of `W1` `[hidden, cols]`, when only those columns
    /// of `∂L/∂v` are wanted ([`GateNu::backward`]); one block of `dW1`'s columns in
    /// [`GateNu::backward_split`].
    pub w1_cols: Vec<T>,
    /// With a [`FieldSplit`]: the rows' rest columns of `x` `[B, k_rest]`, and the per-id
    /// sums of `∂L/∂u1` `[proj_rows, hidden]`.
    pub x_rest: Vec<T>,
    /// See `x_rest`.
    pub id_sums: Vec<T>,
}

impl<T: Real> GateNuCache<T> {
    /// Sizes the buffers for `bsz` rows of `gate` (reallocates only to grow).
    pub fn ensure_batch(&mut self, gate: &GateNu, bsz: usize) {
        let (h, d) = (gate.fc1.d_out, gate.fc2.d_out);
        if self.a1.len() < bsz * h || self.delta.len() < bsz * d {
            self.a1.resize(bsz * h, T::ZERO);
            self.da1.resize(bsz * h, T::ZERO);
            self.du1.resize(bsz * h, T::ZERO);
            self.delta.resize(bsz * d, T::ZERO);
            self.ddelta.resize(bsz * d, T::ZERO);
            self.u2.resize(bsz * d, T::ZERO);
        }
        let w1 = h * gate.fc1.d_in;
        if self.w1_cols.len() < w1 {
            self.w1_cols.resize(w1, T::ZERO);
        }
    }

    /// Sizes `x_rest` and `id_sums` for a forward factored by `fs` on `bsz` rows of a gate
    /// with `hidden` units (reallocates only to grow).
    pub fn ensure_split(&mut self, fs: &FieldSplit<T>, hidden: usize, bsz: usize) {
        if self.x_rest.len() < bsz * fs.k_rest {
            self.x_rest.resize(bsz * fs.k_rest, T::ZERO);
        }
        if self.id_sums.len() < fs.proj_rows * hidden {
            self.id_sums.resize(fs.proj_rows * hidden, T::ZERO);
        }
    }

    /// Sets `ddelta[..B·d_out]` to zero.
    pub fn zero_ddelta(&mut self, bsz: usize, d_out: usize) {
        self.ddelta[..bsz * d_out].fill(T::ZERO);
    }
}

impl GateNu {
    /// Registers `<prefix>.fc1` (`d_in → hidden`) and `<prefix>.fc2` (`hidden → d_out`) with
    /// `nn.Linear` initialisation.
    pub fn new<T: Real, R: Rng>(
        ps: &mut ParamStore<T>,
        prefix: &str,
        d_in: usize,
        hidden: usize,
        d_out: usize,
        gamma: f64,
        rng: &mut R,
    ) -> Self {
        // fc1 is not packed per forward: the model reads it split by input columns
        // (`SplitW1`, which packs its `W1_x` block itself).
        let fc1 = Linear::new_unpacked(ps, &format!("{prefix}.fc1"), d_in, hidden, rng);
        let fc2 = Linear::new(ps, &format!("{prefix}.fc2"), hidden, d_out, rng);
        GateNu { fc1, fc2, gamma }
    }

    /// Output width.
    pub fn d_out(&self) -> usize {
        self.fc2.d_out
    }

    /// `cache.delta[B×d_out] = γ·sigmoid(ReLU(v·W1ᵀ + b1)·W2ᵀ + b2)` for `v` `[B, d_in]`.
    pub fn forward<T: Real>(
        &self,
        cache: &mut GateNuCache<T>,
        v: &[T],
        ps: &ParamStore<T>,
        bsz: usize,
    ) {
        cache.ensure_batch(self, bsz);
        let f1 = &self.fc1;
        let a1 = &mut cache.a1[..bsz * f1.d_out];
        gemm_epilogue(
            bsz,
            f1.d_out,
            f1.d_in,
            v,
            Trans::N,
            ps.value(f1.w),
            Trans::T,
            ps.packed_weight(f1.w),
            a1,
            Epilogue::BiasRelu(ps.value(f1.b)),
        );
        self.second_layer_forward(cache, ps, bsz);
    }

    /// The second layer from `cache.a1` (the first layer's output, after its ReLU):
    /// `cache.delta = γ·sigmoid(a1·W2ᵀ + b2)`.
    fn second_layer_forward<T: Real>(
        &self,
        cache: &mut GateNuCache<T>,
        ps: &ParamStore<T>,
        bsz: usize,
    ) {
        self.second_layer_forward_scaled(cache, ps, GateOutput::Delta, bsz);
    }

    /// [`Self::second_layer_forward`], writing what `out` says: δ, and/or `y = δ ⊙ x` in the
    /// same pass (EPNet's `x' = δ ⊙ x`, PPNet's `h_l = δ_l ⊙ a_l`).
    fn second_layer_forward_scaled<T: Real>(
        &self,
        cache: &mut GateNuCache<T>,
        ps: &ParamStore<T>,
        out: GateOutput<'_, T>,
        bsz: usize,
    ) {
        let f2 = &self.fc2;
        let a1 = &cache.a1[..bsz * self.fc1.d_out];
        let (bias, scale) = (ps.value(f2.b), T::from_f64(self.gamma));
        // δ = γ·σ(a1·W2ᵀ + b2), applied as the GEMM stores each tile: the pre-activation is
        // never stored.
        let epi = match out {
            GateOutput::Delta => Epilogue::BiasScaledSigmoid {
                bias,
                scale,
                mul: None,
            },
            GateOutput::DeltaAndScaled(y, x) => Epilogue::BiasScaledSigmoid {
                bias,
                scale,
                mul: Some((y, x)),
            },
            GateOutput::Scaled(y, x) => Epilogue::ScaledBySigmoid { bias, scale, y, x },
        };
        gemm_epilogue(
            bsz,
            f2.d_out,
            f2.d_in,
            a1,
            Trans::N,
            ps.value(f2.w),
            Trans::T,
            ps.packed_weight(f2.w),
            &mut cache.delta[..bsz * f2.d_out],
            epi,
        );
    }

    /// Backward from `cache.ddelta` through the sigmoid, the second layer (its gradients
    /// accumulated) and the ReLU: leaves `∂L/∂u1` in `cache.du1`.
    fn backward_to_u1<T: Real>(
        &self,
        cache: &mut GateNuCache<T>,
        ps: &mut Grads<'_, T>,
        bsz: usize,
    ) {
        let nd = bsz * self.fc2.d_out;
        let du2 = &mut cache.u2[..nd];
        du2.fill(T::ZERO);
        scaled_sigmoid_backward(
            du2,
            &cache.ddelta[..nd],
            &cache.delta[..nd],
            T::from_f64(self.gamma),
        );
        self.backward_du2_to_u1(cache, ps, bsz);
    }

    /// Backward from `cache.u2 = ∂L/∂u2` (the fc2 pre-activation) to `cache.du1`, fc2's
    /// parameter gradients accumulated on the way.
    fn backward_du2_to_u1<T: Real>(
        &self,
        cache: &mut GateNuCache<T>,
        ps: &mut Grads<'_, T>,
        bsz: usize,
    ) {
        let (nh, nd) = (bsz * self.fc1.d_out, bsz * self.fc2.d_out);
        let du2 = &cache.u2[..nd];
        let da1 = &mut cache.da1[..nh];
        self.fc2
            .backward(InputGrad::Write(&mut *da1), ps, du2, &cache.a1[..nh], bsz);
        relu_backward(&mut cache.du1[..nh], da1, &cache.a1[..nh]);
    }

    /// Backward from `cache.ddelta = ∂L/∂δ`: accumulates the parameter gradients of both
    /// layers and, when given, the first `dv_cols` columns of `∂L/∂v` into `dv`
    /// (`[B, dv_cols]`, `+=`). PEPNet's gate inputs are `[g, sg(x)]`: only g's columns carry
    /// gradient on, so computing the `sg(x)` columns would be wasted work.
    ///
    /// Derivation: with `u1 = v·W1ᵀ + b1`, `a1 = ReLU(u1)`, `u2 = a1·W2ᵀ + b2`, `δ = γσ(u2)`:
    /// `∂δ/∂u2 = γσ(1−σ) = δ(1 − δ/γ)`, so `∂L/∂u2 = dδ ⊙ δ ⊙ (1 − δ/γ)`; fc2's backward gives
    /// `dW2 += (∂L/∂u2)ᵀ a1`, `db2 += Σ_b ∂L/∂u2`, `∂L/∂a1 = (∂L/∂u2)·W2`; then
    /// `∂L/∂u1 = ∂L/∂a1 ⊙ [a1 > 0]` and fc1's backward gives `dW1`, `db1`, and
    /// `∂L/∂v[:, :c] = (∂L/∂u1)·W1[:, :c]`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<T: Real>(
        &self,
        dv: Option<&mut [T]>,
        dv_cols: usize,
        cache: &mut GateNuCache<T>,
        ps: &mut Grads<'_, T>,
        v: &[T],
        bsz: usize,
    ) {
        let f1 = &self.fc1;
        let nh = bsz * f1.d_out;
        self.backward_to_u1(cache, ps, bsz);
        let du1 = &mut cache.du1[..nh];
        match dv {
            Some(dv) if dv_cols < f1.d_in => {
                // W1[:, :c] copied to a contiguous [hidden, c] (a few KB) for the GEMM.
                let (h, din, c) = (f1.d_out, f1.d_in, dv_cols);
                let w1 = ps.value(f1.w);
                let wc = &mut cache.w1_cols[..h * c];
                for (dst, src) in wc.chunks_exact_mut(c.max(1)).zip(w1.chunks_exact(din)) {
                    dst.copy_from_slice(&src[..c]);
                }
                gemm(bsz, c, h, T::ONE, du1, Trans::N, wc, Trans::N, T::ONE, dv);
                f1.backward(None, ps, du1, v, bsz);
            }
            dv => f1.backward(dv, ps, du1, v, bsz),
        }
    }
}

/// A GateNU's first-layer weight split by input columns, `W1 = [W1_g | W1_x]` for PEPNet's
/// inputs `v = [g, sg(x)]`, as contiguous copies (`W1_x` also packed for the GEMM
/// micro-kernel), so that [`GateNu::forward_split`] reads `g` and `x` where they are instead
/// of a concatenated `[g, x]` copy. Refreshed from the parameters before every forward
/// ([`SplitW1::refresh`]); sized once.
#[derive(Clone, Debug, Default)]
pub struct SplitW1<T> {
    /// Columns of `g`.
    pub gz: usize,
    /// `W1_g` `[hidden, gz]`.
    pub w1g: Vec<T>,
    /// `W1_x` `[hidden, d_in − gz]`.
    pub w1x: Vec<T>,
    /// `W1_x` packed as the B operand of `x·W1_xᵀ` (f32 only), and the SIMD path it was
    /// packed for.
    w1x_packed: Vec<f32>,
    path: Option<SimdPath>,
    /// EPNet: `W1_x` split further by field ([`FieldSplit`]), when set up.
    pub fields: Option<FieldSplit<T>>,
    /// What the copies were last refreshed for: the weights' [`ParamStore::version`], the
    /// SIMD path, `gz` and the `fields` flag. The same again: nothing to do.
    key: Option<(u64, SimdPath, usize, bool)>,
}

/// EPNet's first layer factored by field (the GateNU reads `sg(x)`, and `x` is the fields'
/// embedding rows): for every field of at most [`crate::model::factored::MAX_FACTOR_VOCAB`]
/// ids, each id's term `E_f[id]·W1_fᵀ` is computed once per forward for the whole
/// vocabulary (`proj`), and a row adds its ids' terms to a GEMM over the other columns
/// (`x_rest`). The backward sums `∂L/∂u1` per id (`scatter_add_rows_indexed`) and gets
/// `dW1_f = Gᵀ·E_f` from the sums. The same function, summed in another order.
#[derive(Clone, Debug, Default)]
pub struct FieldSplit<T> {
    /// Per factored field: its first column in `x`, its vocabulary, its table, and its first
    /// row in `proj`.
    fac: Vec<(usize, usize, crate::params::ParamId, usize)>,
    /// Column runs of `x` that stay in the GEMM: (first column in x, width).
    rest: Vec<(usize, usize)>,
    /// Columns of `x_rest` (Σ of the runs' widths).
    pub k_rest: usize,
    /// Embedding width.
    e: usize,
    /// Rows of `proj` (Σ of the factored vocabularies).
    pub proj_rows: usize,
    /// `W1_x`'s rest columns `[hidden, k_rest]`, and packed for the GEMM.
    w1_rest: Vec<T>,
    w1_rest_packed: Vec<f32>,
    path: Option<SimdPath>,
    /// `proj[off_f + id] = E_f[id]·W1_fᵀ` `[proj_rows, hidden]`.
    proj: Vec<T>,
    /// Scratch: one field's columns of `W1_x` `[hidden, e]`.
    wf: Vec<T>,
    /// Each batch row's `proj` rows, fields in order `[B, fac.len()]`.
    row_idx: Vec<u32>,
}

impl<T: Real> FieldSplit<T> {
    /// The split for `x = [E_1[i_1], …, E_F[i_F], numerics]` (`d_x` columns) of `emb`, or
    /// `None` when no field has at most `max_vocab` ids.
    pub fn new(
        emb: &crate::model::embedding::MultiEmbedding,
        vocab: &[usize],
        d_x: usize,
        max_vocab: usize,
    ) -> Option<Self> {
        let e = emb.e;
        let (mut fac, mut rest, mut off) = (Vec::new(), Vec::new(), 0);
        let mut run: Option<(usize, usize)> = None;
        for (f, (&t, &v)) in emb.tables.iter().zip(vocab).enumerate() {
            if v <= max_vocab {
                fac.push((f * e, v, t, off));
                off += v;
                rest.extend(run.take());
            } else {
                run = Some(match run {
                    Some((c, w)) => (c, w + e),
                    None => (f * e, e),
                });
            }
        }
        let tail = emb.tables.len() * e;
        if d_x > tail {
            run = Some(match run {
                Some((c, w)) => (c, w + d_x - tail),
                None => (tail, d_x - tail),
            });
        }
        rest.extend(run);
        if fac.is_empty() {
            return None;
        }
        let k_rest = rest.iter().map(|r| r.1).sum();
        Some(FieldSplit {
            fac,
            rest,
            k_rest,
            e,
            proj_rows: off,
            ..Default::default()
        })
    }

    /// Floating-point operations per sample of the `x` part of the first layer (`hidden`
    /// outputs), factored, for batches of `bsz` rows: `(forward, training step)`. The
    /// training step adds `dW1_x` (no input gradient: the gate reads `sg(x)`).
    /// Multiply-adds count 2, the per-row additions of the terms and per-id sums 1, the
    /// per-forward `proj` and per-chunk `dW1_f` GEMMs are shared out over the rows.
    pub fn flops_per_sample(&self, hidden: usize, bsz: usize) -> (f64, f64) {
        let (kr, h, e) = (self.k_rest as f64, hidden as f64, self.e as f64);
        let rows = bsz.max(1) as f64;
        let per_vocab = 2.0 * self.proj_rows as f64 * e * h / rows;
        let adds = self.fac.len() as f64 * h;
        let fwd = 2.0 * kr * h + adds + per_vocab;
        (fwd, fwd + 2.0 * kr * h + adds + per_vocab)
    }

    /// Copies `W1_x`'s rest columns (and packs them) and computes `proj` from the current
    /// tables; `w1x` is `[hidden, d_x]`.
    fn refresh(&mut self, w1x: &[T], h: usize, ps: &ParamStore<T>) {
        let (kr, e) = (self.k_rest, self.e);
        let dx = w1x.len() / h.max(1);
        self.w1_rest.resize(h * kr, T::ZERO);
        copy_runs(&mut self.w1_rest, kr, w1x, dx, &self.rest);
        if T::NAME == "f32" {
            let path = hmdn_kernels::simd_path();
            self.w1_rest_packed.resize(packed_b_len(h, kr, path), 0.0);
            pack_b_for(
                &mut self.w1_rest_packed,
                h,
                kr,
                &self.w1_rest,
                Trans::T,
                path,
            );
            self.path = Some(path);
        }
        self.proj.resize(self.proj_rows * h, T::ZERO);
        self.wf.resize(h * e, T::ZERO);
        for &(c, v, t, off) in &self.fac {
            for (dst, src) in self.wf.chunks_exact_mut(e).zip(w1x.chunks_exact(dx)) {
                dst.copy_from_slice(&src[c..c + e]);
            }
            let out = &mut self.proj[off * h..(off + v) * h];
            gemm(
                v,
                h,
                e,
                T::ONE,
                ps.value(t),
                Trans::N,
                &self.wf,
                Trans::T,
                T::ZERO,
                out,
            );
        }
    }

    /// The batch's `row_idx` from the field-major index matrix `idx` (`[F_all, B]`, field
    /// `f` in column `cols[f]`).
    pub fn prepare_rows(&mut self, idx: &[u32], cols: &[usize], bsz: usize) {
        let nfac = self.fac.len();
        self.row_idx.resize(bsz * nfac, 0);
        for (j, &(c, _, _, off)) in self.fac.iter().enumerate() {
            let col = &idx[cols[c / self.e] * bsz..][..bsz];
            for (r, &id) in col.iter().enumerate() {
                self.row_idx[r * nfac + j] = (off + id as usize) as u32;
            }
        }
    }

    fn packed(&self) -> Option<(&[f32], SimdPath)> {
        self.path.map(|p| (&self.w1_rest_packed[..], p))
    }

    /// `x_rest` rows of the chunk: the rest column runs of `x` `[rows, d_x]`.
    fn copy_rest(&self, x_rest: &mut [T], x: &[T], rows: usize) {
        let kr = self.k_rest;
        let dx = x.len() / rows.max(1);
        copy_runs(&mut x_rest[..rows * kr], kr, x, dx, &self.rest);
    }
}

/// Row by row, the column runs `(first column, width)` of `src` (rows of `src_w`) side by side
/// into `dst` (rows of `dst_w`, the runs' total width).
fn copy_runs<T: Copy>(
    dst: &mut [T],
    dst_w: usize,
    src: &[T],
    src_w: usize,
    runs: &[(usize, usize)],
) {
    for (d, s) in dst
        .chunks_exact_mut(dst_w.max(1))
        .zip(src.chunks_exact(src_w.max(1)))
    {
        let mut p = 0;
        for &(c, w) in runs {
            d[p..p + w].copy_from_slice(&s[c..c + w]);
            p += w;
        }
    }
}

impl<T: Real> SplitW1<T> {
    /// Copies (and packs) `gate`'s `W1` from `ps`, its first `gz` input columns apart; with
    /// `fields`, also refreshes the [`FieldSplit`] (if any) for a factored forward.
    /// Nothing to do when the weights' [`ParamStore::version`], the SIMD path, `gz` and
    /// `fields` are those of the last refresh (inference after inference).
    pub fn refresh(&mut self, gate: &GateNu, gz: usize, ps: &ParamStore<T>, fields: bool) {
        let key = (ps.version(), hmdn_kernels::simd_path(), gz, fields);
        if self.key == Some(key) {
            return;
        }
        let (h, din) = (gate.fc1.d_out, gate.fc1.d_in);
        let dx = din - gz;
        self.gz = gz;
        self.w1g.resize(h * gz, T::ZERO);
        self.w1x.resize(h * dx, T::ZERO);
        let w1 = ps.value(gate.fc1.w);
        for ((row, g), x) in w1
            .chunks_exact(din)
            .zip(self.w1g.chunks_exact_mut(gz.max(1)))
            .zip(self.w1x.chunks_exact_mut(dx.max(1)))
        {
            g.copy_from_slice(&row[..gz]);
            x.copy_from_slice(&row[gz..]);
        }
        // A factored forward multiplies only W1_x's rest columns (packed by the FieldSplit):
        // the whole W1_x is packed only for an unfactored one (without a pack, `packed`
        // says so and the forward's GEMM reads W1_x as it is).
        let factored = fields && self.fields.is_some();
        self.path = None;
        if T::NAME == "f32" && !factored {
            let path = hmdn_kernels::simd_path();
            self.w1x_packed.resize(packed_b_len(h, dx, path), 0.0);
            pack_b_for(&mut self.w1x_packed, h, dx, &self.w1x, Trans::T, path);
            self.path = Some(path);
        }
        if let Some(fs) = self.fields.as_mut().filter(|_| fields) {
            fs.refresh(&self.w1x, h, ps);
        }
        self.key = Some(key);
    }

    fn packed(&self) -> Option<(&[f32], SimdPath)> {
        self.path.map(|p| (&self.w1x_packed[..], p))
    }
}

/// What a GateNU's forward writes ([`GateNu::forward_split_scaled`]) besides its hidden
/// layer `cache.a1`.
#[derive(Debug)]
pub enum GateOutput<'a, T> {
    /// The gate δ, into `cache.delta`.
    Delta,
    /// δ, and `y = δ ⊙ x` (`y`, `x` `[B, d_out]`).
    DeltaAndScaled(&'a mut [T], &'a [T]),
    /// Only `y = δ ⊙ x`: δ is not stored (`cache.delta` is scratch), for a forward that keeps
    /// nothing for a backward (inference).
    Scaled(&'a mut [T], &'a [T]),
}

impl<'a, T> GateOutput<'a, T> {
    /// `y = δ ⊙ x`, with δ stored too when `keep_delta`.
    pub fn scaled(keep_delta: bool, y: &'a mut [T], x: &'a [T]) -> Self {
        if keep_delta {
            GateOutput::DeltaAndScaled(y, x)
        } else {
            GateOutput::Scaled(y, x)
        }
    }
}

/// The `g·W1_gᵀ` term of a GateNU's first layer for a chunk's rows: computed from the rows'
/// `g` `[B, gz]`, or copied by each row's slot from a table `[U, hidden]` computed once per
/// distinct gate input (`model::distinct`; the same values, bit for bit).
#[derive(Clone, Copy)]
pub enum GTerm<'a, T> {
    /// The rows' gate input `[B, gz]`.
    Rows(&'a [T]),
    /// `g·W1_gᵀ` of the distinct rows `[U, hidden]` and each row's slot.
    Gathered(&'a [T], &'a [u32]),
}

impl GateNu {
    /// `table[U×hidden] = g_u·W1_gᵀ` for the distinct rows' gate input `g_u` `[U, gz]`: what
    /// [`GTerm::Gathered`] copies from.
    pub fn g_term<T: Real>(split: &SplitW1<T>, table: &mut [T], g_u: &[T], n_u: usize) {
        let h = split.w1g.len() / split.gz.max(1);
        let (gz, t) = (split.gz, &mut table[..n_u * h]);
        gemm(
            n_u,
            h,
            gz,
            T::ONE,
            g_u,
            Trans::N,
            &split.w1g,
            Trans::T,
            T::ZERO,
            t,
        );
    }

    /// [`GateNu::forward`] on `v = [g, x]` without building `v`: `u1 = x·W1_xᵀ + g·W1_gᵀ +
    /// b1` (the two products computed apart and added, in that order), then as `forward`.
    /// `x` is `[B, d_in − gz]`; `split` must be refreshed from the current weights.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_split<T: Real>(
        &self,
        cache: &mut GateNuCache<T>,
        split: &SplitW1<T>,
        g: GTerm<'_, T>,
        x: &[T],
        ps: &ParamStore<T>,
        bsz: usize,
    ) {
        self.forward_split_scaled(cache, split, g, x, ps, GateOutput::Delta, None, bsz);
    }

    /// [`GateNu::forward_split`] that also writes `y = δ ⊙ s` (`[B, d_out]`) in the pass that
    /// computes δ when `out` says so (EPNet's `x' = δ ⊙ x`, PPNet's `h_l = δ_l ⊙ a_l`; the same
    /// values as [`scale_forward`] afterwards), and δ itself unless it says `Scaled` only.
    ///
    /// `fac_r0 = Some(r0)` (the chunk's first row in the batch) runs the `x` part factored by
    /// field ([`FieldSplit`], which must be set up, refreshed and prepared for this batch).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_split_scaled<T: Real>(
        &self,
        cache: &mut GateNuCache<T>,
        split: &SplitW1<T>,
        g: GTerm<'_, T>,
        x: &[T],
        ps: &ParamStore<T>,
        out: GateOutput<'_, T>,
        fac_r0: Option<usize>,
        bsz: usize,
    ) {
        cache.ensure_batch(self, bsz);
        let f1 = &self.fc1;
        let (h, gz) = (f1.d_out, split.gz);
        let dx = f1.d_in - gz;
        // x·W1_xᵀ: whole, or (by field) its rest columns, then the rows' per-id terms.
        let fac = split.fields.as_ref().zip(fac_r0);
        let (xin, k, w, pk) = match fac {
            Some((fs, _)) => {
                let kr = fs.k_rest;
                cache.ensure_split(fs, h, bsz);
                fs.copy_rest(&mut cache.x_rest, &x[..bsz * dx], bsz);
                (&cache.x_rest[..bsz * kr], kr, &fs.w1_rest, fs.packed())
            }
            None => (x, dx, &split.w1x, split.packed()),
        };
        let a1 = &mut cache.a1[..bsz * h];
        gemm_packed_b(
            bsz,
            h,
            k,
            T::ONE,
            xin,
            Trans::N,
            w,
            Trans::T,
            pk,
            T::ZERO,
            a1,
        );
        if let Some((fs, r0)) = fac {
            // + Σ_f proj[id_f], the fields in order, each row's sum kept in registers.
            let nfac = fs.fac.len();
            let idx = &fs.row_idx[r0 * nfac..(r0 + bsz) * nfac];
            add_rows_indexed(a1, h, &fs.proj, idx, nfac);
        }
        let a1 = &mut cache.a1[..bsz * h];
        let b1 = ps.value(f1.b);
        match g {
            GTerm::Rows(g) => {
                // The g term apart (du1 is free until backward), then added: the same
                // values as a gathered table row.
                let gt = &mut cache.du1[..bsz * h];
                gemm(
                    bsz,
                    h,
                    gz,
                    T::ONE,
                    g,
                    Trans::N,
                    &split.w1g,
                    Trans::T,
                    T::ZERO,
                    gt,
                );
                for (a, &t) in a1.iter_mut().zip(gt.iter()) {
                    *a += t;
                }
                bias_relu_forward(a1, b1);
            }
            // Each row's g term, bias and ReLU in one pass (the same additions as adding
            // the row, then `bias_relu_forward`).
            GTerm::Gathered(table, slots) => {
                add_rows_indexed_bias_relu(a1, table, &slots[..bsz], 1, b1);
            }
        }
        self.second_layer_forward_scaled(cache, ps, out, bsz);
    }

    /// [`GateNu::backward`] after [`GateNu::forward_split`], with `dv_cols = gz`: the
    /// parameter gradients, and `dg[B×gz] += ∂L/∂g`. `dW1 = (∂L/∂u1)ᵀ·[g, x]` is computed in
    /// two parts, each added into its columns of the gradient.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_split<T: Real>(
        &self,
        dg: &mut [T],
        cache: &mut GateNuCache<T>,
        split: &SplitW1<T>,
        ps: &mut Grads<'_, T>,
        g: &[T],
        x: &[T],
        bsz: usize,
    ) {
        self.backward_to_u1(cache, ps, bsz);
        self.backward_split_from_u1(dg, cache, split, ps, g, x, None, bsz);
    }

    /// [`GateNu::backward_split`] from `cache.u2` holding `∂L/∂u2`, the gradient at fc2's
    /// pre-activation (instead of `cache.ddelta = ∂L/∂δ`): for callers that compute it in
    /// the pass that also differentiates what δ scales
    /// ([`hmdn_kernels::act::scaled_sigmoid_mul_backward`]).
    ///
    /// `fac_r0`: as in [`GateNu::forward_split_scaled`], and the same as in its forward.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_split_from_du2<T: Real>(
        &self,
        dg: &mut [T],
        cache: &mut GateNuCache<T>,
        split: &SplitW1<T>,
        ps: &mut Grads<'_, T>,
        g: &[T],
        x: &[T],
        fac_r0: Option<usize>,
        bsz: usize,
    ) {
        self.backward_du2_to_u1(cache, ps, bsz);
        self.backward_split_from_u1(dg, cache, split, ps, g, x, fac_r0, bsz);
    }

    /// The first layer's part of [`GateNu::backward_split`], from `cache.du1`.
    #[allow(clippy::too_many_arguments)]
    fn backward_split_from_u1<T: Real>(
        &self,
        dg: &mut [T],
        cache: &mut GateNuCache<T>,
        split: &SplitW1<T>,
        ps: &mut Grads<'_, T>,
        g: &[T],
        x: &[T],
        fac_r0: Option<usize>,
        bsz: usize,
    ) {
        let f1 = &self.fc1;
        let (h, din, gz) = (f1.d_out, f1.d_in, split.gz);
        let dx = din - gz;
        let nh = bsz * h;
        let du1 = &cache.du1[..nh];
        // ∂L/∂g = (∂L/∂u1)·W1_g.
        gemm(
            bsz,
            gz,
            h,
            T::ONE,
            du1,
            Trans::N,
            &split.w1g,
            Trans::N,
            T::ONE,
            dg,
        );
        // dW1 = (∂L/∂u1)ᵀ·[g, x], each part into scratch, then added into its columns.
        let (wr, br) = (ps.range(f1.w), ps.range(f1.b));
        let scratch = &mut cache.w1_cols[..h * dx.max(gz)];
        let fac = split.fields.as_ref().zip(fac_r0);
        let parts: &[(usize, &[T], usize)] = match fac {
            Some(_) => &[(gz, g, 0)],
            None => &[(gz, g, 0), (dx, x, gz)],
        };
        for &(cols, inp, off) in parts {
            let s = &mut scratch[..h * cols];
            gemm(
                h,
                cols,
                bsz,
                T::ONE,
                du1,
                Trans::T,
                inp,
                Trans::N,
                T::ZERO,
                s,
            );
            let dw = &mut ps.grads[wr.clone()];
            for (drow, srow) in dw.chunks_exact_mut(din).zip(s.chunks_exact(cols.max(1))) {
                for (d, &v) in drow[off..off + cols].iter_mut().zip(srow) {
                    *d += v;
                }
            }
        }
        if let Some((fs, r0)) = fac {
            // The x part by field: the rest columns from x_rest; a factored field's from the
            // per-id sums of ∂L/∂u1 (rows in order) times its table, `dW1_f = Gᵀ·E_f`.
            let (kr, nfac, e) = (fs.k_rest, fs.fac.len(), fs.e);
            let xr = &cache.x_rest[..bsz * kr];
            let s = &mut scratch[..h * kr];
            gemm(h, kr, bsz, T::ONE, du1, Trans::T, xr, Trans::N, T::ZERO, s);
            let dw = &mut ps.grads[wr.clone()];
            for (drow, srow) in dw.chunks_exact_mut(din).zip(s.chunks_exact(kr.max(1))) {
                let mut p = 0;
                for &(c, w) in &fs.rest {
                    for (d, &v) in drow[gz + c..gz + c + w].iter_mut().zip(&srow[p..p + w]) {
                        *d += v;
                    }
                    p += w;
                }
            }
            let sums = &mut cache.id_sums[..fs.proj_rows * h];
            sums.fill(T::ZERO);
            let idx = &fs.row_idx[r0 * nfac..(r0 + bsz) * nfac];
            scatter_add_rows_indexed(sums, h, du1, h, 0, idx, nfac);
            for &(c, v, t, off) in &fs.fac {
                let s = &mut scratch[..h * e];
                let gsum = &sums[off * h..(off + v) * h];
                gemm(
                    h,
                    e,
                    v,
                    T::ONE,
                    gsum,
                    Trans::T,
                    ps.value(t),
                    Trans::N,
                    T::ZERO,
                    s,
                );
                let dw = &mut ps.grads[wr.clone()];
                for (drow, srow) in dw.chunks_exact_mut(din).zip(s.chunks_exact(e)) {
                    for (d, &v) in drow[gz + c..gz + c + e].iter_mut().zip(srow) {
                        *d += v;
                    }
                }
            }
        }
        bias_grad(&mut ps.grads[br], du1);
    }
}

/// `y = δ ⊙ x` elementwise (all three the same length).
pub fn scale_forward<T: Real>(y: &mut [T], delta: &[T], x: &[T]) {
    for ((o, &d), &v) in y.iter_mut().zip(delta).zip(x) {
        *o = d * v;
    }
}

/// Backward of [`scale_forward`] from `dy`: `ddelta += dy ⊙ x` and, when given, `dx += dy ⊙ δ`.
///
/// Derivation: `∂y_i/∂δ_i = x_i`, `∂y_i/∂x_i = δ_i`, all cross terms zero.
pub fn scale_backward<T: Real>(
    ddelta: &mut [T],
    dx: Option<&mut [T]>,
    dy: &[T],
    delta: &[T],
    x: &[T],
) {
    for ((dd, &g), &v) in ddelta.iter_mut().zip(dy).zip(x) {
        *dd += g * v;
    }
    if let Some(dx) = dx {
        for ((d, &g), &dl) in dx.iter_mut().zip(dy).zip(delta) {
            *d += g * dl;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// The model reads fc1 only through `SplitW1`, so `refresh_packed` must not pack fc1 (dead
    /// work before every forward); fc2 is read packed and must be packed.
    #[test]
    fn refresh_packs_fc2_but_not_fc1() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut ps = ParamStore::<f32>::new();
        let gate = GateNu::new(&mut ps, "g", 20, 8, 12, 2.0, &mut rng);
        ps.refresh_packed();
        assert!(ps.packed_weight(gate.fc1.w).is_none());
        assert!(ps.packed_weight(gate.fc2.w).is_some());
        // The unsplit forward still runs on the unpacked fc1 and agrees with the split one.
        let v: Vec<f32> = (0..3 * 20).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
        let mut full = GateNuCache::default();
        gate.forward(&mut full, &v, &ps, 3);
        let mut split = SplitW1::default();
        split.refresh(&gate, 5, &ps, true);
        let (g, x): (Vec<f32>, Vec<f32>) = (
            v.chunks(20).flat_map(|r| r[..5].to_vec()).collect(),
            v.chunks(20).flat_map(|r| r[5..].to_vec()).collect(),
        );
        let mut sc = GateNuCache::default();
        gate.forward_split(&mut sc, &split, GTerm::Rows(&g), &x, &ps, 3);
        for (a, b) in full.delta[..36].iter().zip(&sc.delta[..36]) {
            assert!((a - b).abs() <= 1e-6 * (1.0 + a.abs()), "{a} vs {b}");
        }
    }
}
