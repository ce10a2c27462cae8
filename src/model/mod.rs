//! Layers (one file each, `forward` and `backward` side by side) and the models built from them.

pub mod cross;
pub mod embedding;
pub mod gate;
pub mod gatenu;
pub mod head;
pub mod kmeans;
pub mod linear;
pub mod mlp;
pub mod profile;
pub mod rq;
pub mod wide;

use crate::config::{ModelConfig, ModelKind};
use crate::error::Result;
use crate::params::ParamStore;
use crate::Batch;
use cross::{Cross, CrossCache};
use embedding::{MultiEmbedding, RowGrad};
use gate::{mixture_accumulate, mixture_backward, Gate, GateCache};
use gatenu::{scale_backward, scale_forward, GateNu, GateNuCache};
use head::{task_loss_backward, task_loss_forward, DomainTowers, TowerCache, Towers};
use hmdn_kernels::Real;
use mlp::{Mlp, MlpCache};
use profile::{Laps, Phase, PhaseTimes};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rq::{DeadCodes, ResidualQuantizer, RqCache};
use std::ops::Range;
use wide::{Wide, WideCache};

/// The loss of one forward pass.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossParts<T> {
    /// `Σ_t mean_B BCE(logit_t, y_t)` (0 when the batch has no labels).
    pub task: T,
    /// `L_rq` of the residual quantizer, not multiplied by α (0 without one).
    pub rq: T,
    /// `task + α·rq`, the loss `backward` differentiates.
    pub total: T,
}

/// Activation and gradient buffers of a [`Model`], sized once per batch size (they grow when a
/// larger batch arrives and are reused afterwards; a training step never allocates).
#[derive(Clone, Debug, Default)]
struct Buffers<T> {
    /// Rows the buffers can hold.
    cap: usize,
    /// Rows of the last forward.
    bsz: usize,
    /// Categorical indices, field-major `[F, B]` (the batch's `[B, F]` transposed).
    idx: Vec<u32>,
    /// Model input `x` `[B, d_x]` and its gradient.
    x: Vec<T>,
    dx: Vec<T>,
    /// Distribution embeddings `x_b` `[B, P·e]` and their gradient.
    xb: Vec<T>,
    dxb: Vec<T>,
    /// Gate input `g` from the quantizer `[B, gz]` (without a quantizer, g is `x_b` itself) and
    /// `∂L/∂g` `[B, gz]` (the gradient of `x_b` when there is no quantizer).
    g: Vec<T>,
    dg: Vec<T>,
    /// Labels `[B, T]` as `T`.
    labels: Vec<T>,
    /// Logits `[B, T]` and their gradient.
    logits: Vec<T>,
    dlogits: Vec<T>,
    /// Gradient of the bottom MLP's output / a tower input `[B, h]`.
    dh: Vec<T>,
    /// Tower scratch.
    tower: TowerCache<T>,
    /// Bottom MLP (`dnn`).
    dnn: MlpCache<T>,
    /// Wide part: cache, logit `[B]`, its gradient `[B]`.
    wide: WideCache<T>,
    wide_out: Vec<T>,
    dwide: Vec<T>,
    /// DCN: cross cache, `[x_L, MLP(x)]` `[B, d_x + h]`, its gradient, and `∂L/∂x_L` `[B, d_x]`.
    cross: CrossCache<T>,
    cat: Vec<T>,
    dcat: Vec<T>,
    dxl: Vec<T>,
    /// MMoE: expert caches, per-task mixtures `[T][B, h]`, `∂L/∂mixture` `[B, h]`, per-expert
    /// output gradients `[n][B, h]`, gate caches.
    experts: Vec<MlpCache<T>>,
    mix: Vec<Vec<T>>,
    dmix: Vec<T>,
    dexp: Vec<Vec<T>>,
    gates: Vec<GateCache<T>>,
    /// PEPNet: GateNU inputs `[g, sg(x)]` / `[g, sg(x')]` `[B, gz + d_x]`, their gradient
    /// scratch, EPNet cache, `x' = δ_ep ⊙ x` `[B, d_x]` and its gradient, PPNet caches, per
    /// layer post-ReLU `a_l` and scaled `h_l = δ_l ⊙ a_l` `[B, h_l]` with gradients.
    v_ep: Vec<T>,
    v_pp: Vec<T>,
    dv: Vec<T>,
    ep: GateNuCache<T>,
    xp: Vec<T>,
    dxp: Vec<T>,
    pp: Vec<GateNuCache<T>>,
    a: Vec<Vec<T>>,
    hs: Vec<Vec<T>>,
    dhs: Vec<Vec<T>>,
    da: Vec<T>,
    dpre: Vec<T>,
}

/// Grows `v` to at least `n` elements (never shrinks, so capacity is kept across batches).
fn grow<T: Real>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::ZERO);
    }
}

/// `dst[b, off..off+w] = src[b, 0..w]` over `bsz` rows (`dst` rows `ds` wide, `src` rows `w`
/// wide).
fn copy_columns<T: Real>(dst: &mut [T], ds: usize, off: usize, src: &[T], w: usize, bsz: usize) {
    if w == 0 {
        return;
    }
    for (drow, srow) in dst.chunks_exact_mut(ds).zip(src.chunks_exact(w)).take(bsz) {
        drow[off..off + w].copy_from_slice(srow);
    }
}

/// `dst[b, 0..w] = src[b, off..off+w]` over `bsz` rows (`src` rows `ss` wide).
fn take_columns<T: Real>(dst: &mut [T], w: usize, src: &[T], ss: usize, off: usize, bsz: usize) {
    if w == 0 {
        return;
    }
    for (drow, srow) in dst.chunks_exact_mut(w).zip(src.chunks_exact(ss)).take(bsz) {
        drow.copy_from_slice(&srow[off..off + w]);
    }
}

/// One of the eight models of SPEC §3, with its parameters and all per-batch buffers.
///
/// Data flow: categorical indices → `x = [E_1[i_1], …, E_F[i_F], numerics]` (and
/// `x_b = [Eb_1[j_1], …]` for the models with a gate) → backbone → one logit per task.
/// Layers are `Option`s / `Vec`s that are empty for models without them.
#[derive(Clone, Debug)]
pub struct Model<T: Real> {
    /// The configuration the model was built from.
    pub cfg: ModelConfig,
    /// Every parameter and its dense gradient.
    pub params: ParamStore<T>,
    /// Tables `embedding.<field>` for every categorical field (→ x).
    pub embedding: MultiEmbedding,
    /// Tables for x_b: `dist_embedding.<field>`, or views of `embedding`'s tables when
    /// `share_dist_embeddings`. `None` for models without a gate.
    pub dist_embedding: Option<MultiEmbedding>,
    /// Wide part (wide-deep).
    pub wide: Option<Wide>,
    /// Residual quantizer (hmdn-*).
    pub rq: Option<ResidualQuantizer>,
    /// The bottom MLP `dnn` (dnn, wide-deep, dcn, shared-bottom, pepnet, hmdn-pepnet).
    pub dnn: Option<Mlp>,
    /// MMoE experts `experts.<i>`.
    pub experts: Vec<Mlp>,
    /// MMoE gates `gates.<t>`, one per task.
    pub gates: Vec<Gate>,
    /// PEPNet EPNet GateNU `epnet`.
    pub epnet: Option<GateNu>,
    /// PEPNet PPNet GateNUs `ppnet.<l>`, one per hidden layer.
    pub ppnet: Vec<GateNu>,
    /// DCN cross network `cross`.
    pub cross: Option<Cross>,
    /// Per-task logit layers `towers.<t>` (all but shared-bottom).
    pub towers: Option<Towers>,
    /// Shared-Bottom's per-task, per-domain logit layers `towers.<t>.<k>`.
    pub domain_towers: Option<DomainTowers>,
    /// Phase timing of `forward` and `backward`: `None` (the default) costs one branch per
    /// phase; `Some` accumulates wall time per [`Phase`] until taken.
    pub profile: Option<PhaseTimes>,
    /// Field index of each distribution field (columns of the index matrix).
    dist_cols: Vec<usize>,
    /// Field index of the Shared-Bottom domain field.
    domain_col: usize,
    /// Width of x_b (P·e; 0 for models without a gate).
    xb_dim: usize,
    /// Width of the gate input g (x_b's, or the quantizer's; 0 without a gate).
    gate_dim: usize,
    /// Row gradients of every embedding table: `embedding` tables, then separate
    /// `dist_embedding` tables, then `wide` tables.
    row_grads: Vec<RowGrad<T>>,
    /// Where each group lives in `row_grads`.
    rg_emb: Range<usize>,
    rg_dist: Range<usize>,
    rg_wide: Range<usize>,
    /// Quantizer cache (codes and stop-gradient values of the last forward).
    rq_cache: Option<RqCache<T>>,
    /// Gradient-check mode: reuse the cached codes and stop-gradient values.
    frozen: bool,
    /// Idle-step counters for dead-code restarts (when enabled).
    dead: Option<DeadCodes>,
    /// Sums of gate weights `[T, n]` and rows summed, from [`Model::record_gates`].
    gate_sums: Vec<f64>,
    gate_rows: u64,
    buf: Buffers<T>,
}

impl<T: Real> Model<T> {
    /// Builds the model described by `cfg` (validated first) with parameters drawn from a
    /// generator seeded by `seed`. Parameters are registered in a fixed order — embedding
    /// tables, distribution tables, wide part, quantizer, backbone, towers — so a seed always
    /// gives the same weights.
    pub fn new(cfg: &ModelConfig, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut ps = ParamStore::new();
        let (e, nf) = (cfg.embed_dim, cfg.fields.len());
        let kind = cfg.model;
        let all_cols: Vec<usize> = (0..nf).collect();
        let embedding = MultiEmbedding::new(
            &mut ps,
            "embedding",
            &cfg.fields,
            &all_cols,
            e,
            cfg.embed_init_std,
            &mut rng,
        );
        let dist_cols = if kind.uses_dist() {
            cfg.dist_indices()?
        } else {
            Vec::new()
        };
        let dist_embedding = if !kind.uses_dist() {
            None
        } else if cfg.share_dist_embeddings {
            Some(MultiEmbedding {
                tables: dist_cols.iter().map(|&c| embedding.tables[c]).collect(),
                cols: dist_cols.clone(),
                e,
            })
        } else {
            let fields: Vec<_> = dist_cols.iter().map(|&c| cfg.fields[c].clone()).collect();
            Some(MultiEmbedding::new(
                &mut ps,
                "dist_embedding",
                &fields,
                &dist_cols,
                e,
                cfg.embed_init_std,
                &mut rng,
            ))
        };
        let wide = (kind == ModelKind::WideDeep).then(|| {
            Wide::new(
                &mut ps,
                &cfg.fields,
                &all_cols,
                cfg.embed_init_std,
                &mut rng,
            )
        });
        let rq = if kind.uses_rq() {
            Some(ResidualQuantizer::new(
                &mut ps,
                &cfg.rq,
                dist_cols.len(),
                e,
                &mut rng,
            )?)
        } else {
            None
        };
        let xb_dim = if kind.uses_dist() { cfg.xb_dim() } else { 0 };
        let gate_dim = rq.as_ref().map_or(xb_dim, |q| q.gate_dim());
        let dx = cfg.x_dim();
        let h = *cfg.hidden.last().expect("validated: hidden is non-empty");
        let nt = cfg.tasks.len();

        let (mut dnn, mut experts, mut gates) = (None, Vec::new(), Vec::new());
        let (mut epnet, mut ppnet, mut cross) = (None, Vec::new(), None);
        let (mut towers, mut domain_towers, mut domain_col) = (None, None, 0);
        match kind {
            ModelKind::Dnn | ModelKind::WideDeep => {
                dnn = Some(Mlp::new(&mut ps, "dnn", dx, &cfg.hidden, &mut rng));
                towers = Some(Towers::new(&mut ps, "towers", h, nt, &mut rng));
            }
            ModelKind::Dcn => {
                cross = Some(Cross::new(&mut ps, "cross", dx, cfg.cross_layers, &mut rng));
                dnn = Some(Mlp::new(&mut ps, "dnn", dx, &cfg.hidden, &mut rng));
                towers = Some(Towers::new(&mut ps, "towers", dx + h, nt, &mut rng));
            }
            ModelKind::SharedBottom => {
                domain_col = cfg.domain_index()?;
                let nd = cfg.fields[domain_col].vocab_size;
                dnn = Some(Mlp::new(&mut ps, "dnn", dx, &cfg.hidden, &mut rng));
                domain_towers = Some(DomainTowers::new(&mut ps, "towers", h, nt, nd, &mut rng));
            }
            ModelKind::Mmoe | ModelKind::HmdnMmoe => {
                for i in 0..cfg.n_experts {
                    let p = format!("experts.{i}");
                    experts.push(Mlp::new(&mut ps, &p, dx, &cfg.hidden, &mut rng));
                }
                for t in 0..nt {
                    let p = format!("gates.{t}");
                    gates.push(Gate::new(&mut ps, &p, gate_dim, cfg.n_experts, &mut rng));
                }
                towers = Some(Towers::new(&mut ps, "towers", h, nt, &mut rng));
            }
            ModelKind::Pepnet | ModelKind::HmdnPepnet => {
                let (gh, gamma) = (cfg.gatenu_hidden, cfg.gatenu_gamma);
                let vin = gate_dim + dx;
                epnet = Some(GateNu::new(&mut ps, "epnet", vin, gh, dx, gamma, &mut rng));
                dnn = Some(Mlp::new(&mut ps, "dnn", dx, &cfg.hidden, &mut rng));
                for (l, &hl) in cfg.hidden.iter().enumerate() {
                    let p = format!("ppnet.{l}");
                    ppnet.push(GateNu::new(&mut ps, &p, vin, gh, hl, gamma, &mut rng));
                }
                towers = Some(Towers::new(&mut ps, "towers", h, nt, &mut rng));
            }
        }

        let mut row_grads = embedding.new_row_grads();
        let rg_emb = 0..row_grads.len();
        if let (Some(d), false) = (&dist_embedding, cfg.share_dist_embeddings) {
            row_grads.extend(d.new_row_grads());
        }
        let rg_dist = rg_emb.end..row_grads.len();
        if let Some(w) = &wide {
            row_grads.extend(w.emb.new_row_grads());
        }
        let rg_wide = rg_dist.end..row_grads.len();

        let buf = Buffers {
            dnn: dnn.as_ref().map_or_else(MlpCache::default, MlpCache::new),
            experts: experts.iter().map(MlpCache::new).collect(),
            gates: vec![GateCache::default(); gates.len()],
            mix: vec![Vec::new(); if experts.is_empty() { 0 } else { nt }],
            dexp: vec![Vec::new(); experts.len()],
            pp: vec![GateNuCache::default(); ppnet.len()],
            a: vec![Vec::new(); ppnet.len()],
            hs: vec![Vec::new(); ppnet.len()],
            dhs: vec![Vec::new(); ppnet.len()],
            ..Buffers::default()
        };
        let rq_cache = rq.as_ref().map(|q| q.new_cache::<T>(0));
        let dead = rq
            .as_ref()
            .filter(|_| cfg.rq.dead_code_restart_steps > 0)
            .map(|q| q.dead_codes());
        Ok(Model {
            cfg: cfg.clone(),
            params: ps,
            embedding,
            dist_embedding,
            wide,
            rq,
            dnn,
            experts,
            gates,
            epnet,
            ppnet,
            cross,
            towers,
            domain_towers,
            profile: None,
            dist_cols,
            domain_col,
            xb_dim,
            gate_dim,
            row_grads,
            rg_emb,
            rg_dist,
            rg_wide,
            dead,
            gate_sums: vec![0.0; cfg.tasks.len() * cfg.n_experts],
            gate_rows: 0,
            rq_cache,
            frozen: false,
            buf,
        })
    }

    /// Sizes every buffer for `bsz` rows (a no-op unless `bsz` exceeds every earlier batch).
    /// `forward` calls it; calling it up front keeps the model's own buffers from growing in
    /// the first step too (the kernels' per-thread GEMM scratch still grows on first use).
    pub fn ensure_batch(&mut self, bsz: usize) {
        if bsz <= self.buf.cap {
            return;
        }
        let cfg = &self.cfg;
        let (nf, nt, dx) = (cfg.fields.len(), cfg.tasks.len(), cfg.x_dim());
        let (xbd, gz) = (self.xb_dim, self.gate_dim);
        let h = *cfg.hidden.last().expect("validated");
        let b = &mut self.buf;
        b.idx.resize(nf * bsz, 0);
        for v in [&mut b.x, &mut b.dx] {
            grow(v, bsz * dx);
        }
        if self.dist_embedding.is_some() {
            for v in [&mut b.xb, &mut b.dxb, &mut b.g, &mut b.dg] {
                grow(v, bsz * xbd.max(gz));
            }
        }
        for v in [&mut b.labels, &mut b.logits, &mut b.dlogits] {
            grow(v, bsz * nt);
        }
        grow(&mut b.dh, bsz * h);
        b.tower.ensure_batch(bsz);
        if self.dnn.is_some() {
            b.dnn.ensure_batch(bsz);
        }
        if let Some(w) = &self.wide {
            b.wide.ensure_batch(bsz, w.emb.n_fields());
            grow(&mut b.wide_out, bsz);
            grow(&mut b.dwide, bsz);
        }
        if let Some(c) = &self.cross {
            b.cross.ensure_batch(c, bsz);
            grow(&mut b.cat, bsz * (dx + h));
            grow(&mut b.dcat, bsz * (dx + h));
            grow(&mut b.dxl, bsz * dx);
        }
        for c in &mut b.experts {
            c.ensure_batch(bsz);
        }
        for v in b.mix.iter_mut().chain(b.dexp.iter_mut()) {
            grow(v, bsz * h);
        }
        if !self.experts.is_empty() {
            grow(&mut b.dmix, bsz * h);
        }
        for (g, c) in self.gates.iter().zip(&mut b.gates) {
            c.ensure_batch(bsz, g.n());
        }
        if let Some(ep) = &self.epnet {
            b.ep.ensure_batch(ep, bsz);
            for v in [&mut b.v_ep, &mut b.v_pp, &mut b.dv] {
                grow(v, bsz * (gz + dx));
            }
            grow(&mut b.xp, bsz * dx);
            grow(&mut b.dxp, bsz * dx);
            let widest = cfg.hidden.iter().copied().max().unwrap_or(0);
            grow(&mut b.da, bsz * widest);
            grow(&mut b.dpre, bsz * widest);
            for (l, (pn, c)) in self.ppnet.iter().zip(&mut b.pp).enumerate() {
                c.ensure_batch(pn, bsz);
                let hl = cfg.hidden[l];
                grow(&mut b.a[l], bsz * hl);
                grow(&mut b.hs[l], bsz * hl);
                grow(&mut b.dhs[l], bsz * hl);
            }
        }
        for g in &mut self.row_grads {
            g.reserve(bsz);
        }
        if let Some(c) = &mut self.rq_cache {
            c.ensure_batch(bsz);
        }
        b.cap = bsz;
    }

    /// Gradient-check mode (SPEC §2): while frozen, `forward` reuses the argmin codes and
    /// every stop-gradient value (`sg(x)`, `sg(x')` in PEPNet's gate inputs, the quantizer's
    /// `sg(·)` terms) cached by the last unfrozen forward, so finite differences see exactly
    /// the function `backward` differentiates. Freeze only after an unfrozen forward on the
    /// same batch.
    pub fn set_frozen(&mut self, frozen: bool) {
        self.frozen = frozen;
        if let Some(c) = &mut self.rq_cache {
            c.frozen = frozen;
        }
    }

    /// Whether gradient-check mode is on.
    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    /// Logits `[B, T]` of the last forward.
    pub fn logits(&self) -> &[T] {
        &self.buf.logits[..self.buf.bsz * self.cfg.tasks.len()]
    }

    /// Row-sparse gradients of every embedding table from the last backward: `embedding`
    /// tables, then separate `dist_embedding` tables, then `wide` tables.
    pub fn row_grads(&self) -> &[RowGrad<T>] {
        &self.row_grads
    }

    /// Mutable access to the row gradients (e.g. for L2 on the rows seen).
    pub fn row_grads_mut(&mut self) -> &mut [RowGrad<T>] {
        &mut self.row_grads
    }

    /// The quantizer's cache of the last forward (codes per level, for usage statistics).
    pub fn rq_cache(&self) -> Option<&RqCache<T>> {
        self.rq_cache.as_ref()
    }

    /// Rows of the last forward.
    pub fn batch_rows(&self) -> usize {
        self.buf.bsz
    }

    /// Appends to `out` (after clearing it) whether each ReLU of the last forward was active
    /// (output > 0): every hidden unit of every MLP and GateNU, for every row. Gradient checks
    /// compare it before and after a perturbation: a change means the step crossed a kink of
    /// the piecewise-smooth loss, where finite differences do not measure the derivative.
    /// (Softmax, sigmoid, the cross network and BCE are smooth; argmins are frozen.)
    pub fn relu_pattern(&self, out: &mut Vec<bool>) {
        out.clear();
        let (b, bsz) = (&self.buf, self.buf.bsz);
        let mut push = |v: &[T], w: usize| out.extend(v[..bsz * w].iter().map(|&a| a > T::ZERO));
        let pepnet = self.epnet.is_some();
        if let (Some(m), false) = (&self.dnn, pepnet) {
            for (l, lin) in m.layers.iter().enumerate() {
                push(&b.dnn.h[l], lin.d_out);
            }
        }
        for (m, c) in self.experts.iter().zip(&b.experts) {
            for (l, lin) in m.layers.iter().enumerate() {
                push(&c.h[l], lin.d_out);
            }
        }
        if let (Some(m), Some(ep)) = (&self.dnn, &self.epnet) {
            for (l, lin) in m.layers.iter().enumerate() {
                push(&b.a[l], lin.d_out);
            }
            push(&b.ep.a1, ep.fc1.d_out);
            for (pn, c) in self.ppnet.iter().zip(&b.pp) {
                push(&c.a1, pn.fc1.d_out);
            }
        }
    }

    /// The parameters (mutable) together with the row gradients of the last backward, for an
    /// optimiser step that reads the latter while updating the former.
    pub fn params_and_row_grads(&mut self) -> (&mut ParamStore<T>, &[RowGrad<T>]) {
        (&mut self.params, &self.row_grads)
    }

    /// Clears the per-epoch gate statistics (the trainer keeps the code-usage histogram,
    /// because it must survive a resume).
    pub fn reset_stats(&mut self) {
        self.gate_sums.fill(0.0);
        self.gate_rows = 0;
    }

    /// Book-keeping after a training step: when `dead_code_restart_steps > 0`, re-seeds codes
    /// idle for that long from this batch's residuals. The restart generator is derived from `(seed, step)`, so a resumed
    /// run makes the same choices.
    pub fn after_step(&mut self, step: u64, seed: u64) {
        let (Some(q), Some(cache)) = (&self.rq, &self.rq_cache) else {
            return;
        };
        if let Some(dead) = &mut self.dead {
            let mut rng = StdRng::seed_from_u64(
                seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x6465_6164,
            );
            q.restart_dead_codes(&mut self.params, dead, cache, &mut rng);
        }
    }

    /// Idle counters of the dead-code tracker (saved with resumable checkpoints).
    pub fn dead_code_state(&self) -> Option<&[u64]> {
        self.dead.as_ref().map(|d| d.idle.as_slice())
    }

    /// Restores the idle counters saved by [`Model::dead_code_state`].
    pub fn set_dead_code_state(&mut self, idle: &[u64]) {
        if let Some(d) = &mut self.dead {
            if d.idle.len() == idle.len() {
                d.idle.copy_from_slice(idle);
            }
        }
    }

    /// Adds the gate weights of the last forward to the running means (MMoE models).
    pub fn record_gates(&mut self) {
        let n = self.cfg.n_experts;
        let bsz = self.buf.bsz;
        if self.gates.is_empty() || bsz == 0 {
            return;
        }
        for (t, c) in self.buf.gates.iter().enumerate() {
            for row in c.probs[..bsz * n].chunks_exact(n) {
                for (i, &p) in row.iter().enumerate() {
                    self.gate_sums[t * n + i] += p.to_f64();
                }
            }
        }
        self.gate_rows += bsz as u64;
    }

    /// Mean gate weight per task and expert since the last reset, as JSON (MMoE models).
    pub fn gate_report(&self) -> Option<serde_json::Value> {
        if self.gates.is_empty() || self.gate_rows == 0 {
            return None;
        }
        let n = self.cfg.n_experts;
        let rows = self.gate_rows as f64;
        let per_task: Vec<Vec<f64>> = self
            .gate_sums
            .chunks_exact(n)
            .map(|c| c.iter().map(|s| s / rows).collect())
            .collect();
        Some(serde_json::json!(per_task))
    }

    /// Initialises the quantizer's codebooks by k-means on this batch's distribution
    /// embeddings (SPEC §2: the first training batch). No-op without a quantizer. Allocates
    /// (once, before training).
    pub fn kmeans_init<R: Rng>(&mut self, batch: &Batch, rng: &mut R) {
        if self.rq.is_none() {
            return;
        }
        let bsz = batch.rows;
        self.ensure_batch(bsz);
        self.load_indices(batch);
        let nb = bsz * self.cfg.xb_dim();
        let d = self
            .dist_embedding
            .as_ref()
            .expect("a quantizer implies x_b");
        d.forward(
            &mut self.buf.xb,
            self.cfg.xb_dim(),
            0,
            &self.buf.idx,
            &self.params,
            bsz,
        );
        let q = self.rq.as_ref().expect("checked above");
        q.kmeans_init(
            &mut self.params,
            &self.buf.xb[..nb],
            bsz,
            self.cfg.rq.kmeans_iters,
            rng,
        );
    }

    /// Checks the batch's shapes and transposes its indices into `buf.idx` `[F, B]`.
    ///
    /// # Panics
    /// If the batch's slices do not match the configuration (a programmer error: the batcher
    /// builds batches from the same schema).
    #[track_caller]
    fn load_indices(&mut self, batch: &Batch) {
        let (bsz, nf) = (batch.rows, self.cfg.fields.len());
        assert_eq!(batch.cat.len(), bsz * nf, "batch.cat is not [B, F]");
        assert_eq!(
            batch.num.len(),
            bsz * self.cfg.numeric.len(),
            "batch.num is not [B, N]"
        );
        let idx = &mut self.buf.idx[..nf * bsz];
        for (b, row) in batch.cat.chunks_exact(nf.max(1)).take(bsz).enumerate() {
            for (f, &i) in row.iter().enumerate() {
                idx[f * bsz + b] = i;
            }
        }
    }

    /// Runs the forward pass on `batch`, caching what `backward` needs; computes the loss
    /// when the batch has labels (`task` is 0 otherwise).
    ///
    /// # Panics
    /// If the batch does not match the configuration (shapes, index out of a vocabulary), or
    /// a frozen forward runs on another batch size than the unfrozen one before it.
    #[track_caller]
    pub fn forward(&mut self, batch: &Batch) -> LossParts<T> {
        let bsz = batch.rows;
        let nt = self.cfg.tasks.len();
        assert!(
            batch.labels.is_empty() || batch.labels.len() == bsz * nt,
            "batch.labels is not [B, T]"
        );
        if self.frozen {
            assert_eq!(
                bsz, self.buf.bsz,
                "a frozen forward must reuse the batch size"
            );
        }
        self.ensure_batch(bsz);
        let mut laps = Laps::start(&self.profile);
        self.load_indices(batch);
        self.buf.bsz = bsz;
        let Model {
            cfg,
            params: ps,
            embedding,
            dist_embedding,
            wide,
            rq,
            dnn,
            experts,
            gates,
            epnet,
            ppnet,
            cross,
            towers,
            domain_towers,
            domain_col,
            xb_dim,
            gate_dim,
            rq_cache,
            frozen,
            profile,
            buf: b,
            ..
        } = self;
        if let Some(p) = profile.as_mut() {
            p.forwards += 1;
        }
        let (nf, e, dx) = (cfg.fields.len(), cfg.embed_dim, cfg.x_dim());
        let (xbd, gz) = (*xb_dim, *gate_dim);
        let h = *cfg.hidden.last().expect("validated");
        let idx = &b.idx[..nf * bsz];

        // x = [E_1[i_1], …, E_F[i_F], numerics]   [B, d_x]
        embedding.forward(&mut b.x, dx, 0, idx, ps, bsz);
        let nn = cfg.numeric.len();
        if nn > 0 {
            for (xr, nr) in b.x.chunks_exact_mut(dx).zip(batch.num.chunks_exact(nn)) {
                for (o, &v) in xr[nf * e..].iter_mut().zip(nr) {
                    *o = T::from_f64(v as f64);
                }
            }
        }
        let x = &b.x[..bsz * dx];

        // Gate input g: x_b, or the quantizer's output.
        let mut rq_loss = T::ZERO;
        if let Some(de) = dist_embedding {
            de.forward(&mut b.xb, xbd, 0, idx, ps, bsz);
            laps.lap(profile, Phase::Embeddings);
            if let (Some(q), Some(c)) = (rq.as_ref(), rq_cache.as_mut()) {
                rq_loss = q.forward(&mut b.g, c, &b.xb[..bsz * xbd], ps, bsz);
                laps.lap(profile, Phase::Rq);
            }
        }
        laps.lap(profile, Phase::Embeddings);
        let g: &[T] = if rq.is_some() {
            &b.g[..bsz * gz]
        } else {
            &b.xb[..bsz * xbd]
        };

        let logits = &mut b.logits[..bsz * nt];
        match cfg.model {
            ModelKind::Dnn | ModelKind::WideDeep => {
                let m = dnn.as_ref().expect("dnn");
                m.forward(&mut b.dnn, x, ps, bsz);
                laps.lap(profile, Phase::Backbone);
                let tw = towers.as_ref().expect("towers");
                for t in 0..nt {
                    tw.forward(t, logits, &mut b.tower, b.dnn.out(bsz), ps, bsz);
                }
                laps.lap(profile, Phase::Head);
                if let Some(w) = wide {
                    w.forward(&mut b.wide_out, &mut b.wide, idx, ps, bsz);
                    for (lr, &wv) in logits.chunks_exact_mut(nt).zip(&b.wide_out[..bsz]) {
                        for l in lr {
                            *l += wv;
                        }
                    }
                    laps.lap(profile, Phase::Embeddings);
                }
            }
            ModelKind::Dcn => {
                let (c, m) = (cross.as_ref().expect("cross"), dnn.as_ref().expect("dnn"));
                c.forward(&mut b.cross, x, ps, bsz);
                m.forward(&mut b.dnn, x, ps, bsz);
                laps.lap(profile, Phase::Backbone);
                // cat = [x_L, MLP(x)]   [B, d_x + h]
                let w = dx + h;
                copy_columns(&mut b.cat, w, 0, c.output(&b.cross, x, bsz), dx, bsz);
                copy_columns(&mut b.cat, w, dx, b.dnn.out(bsz), h, bsz);
                laps.lap(profile, Phase::Other);
                let tw = towers.as_ref().expect("towers");
                for t in 0..nt {
                    tw.forward(t, logits, &mut b.tower, &b.cat[..bsz * w], ps, bsz);
                }
                laps.lap(profile, Phase::Head);
            }
            ModelKind::SharedBottom => {
                let m = dnn.as_ref().expect("dnn");
                m.forward(&mut b.dnn, x, ps, bsz);
                laps.lap(profile, Phase::Backbone);
                let dom = &idx[*domain_col * bsz..(*domain_col + 1) * bsz];
                let dt = domain_towers.as_ref().expect("domain towers");
                dt.forward(logits, b.dnn.out(bsz), dom, ps, bsz);
                laps.lap(profile, Phase::Head);
            }
            ModelKind::Mmoe | ModelKind::HmdnMmoe => {
                let n = experts.len();
                for (m, c) in experts.iter().zip(b.experts.iter_mut()) {
                    m.forward(c, x, ps, bsz);
                }
                laps.lap(profile, Phase::Backbone);
                let tw = towers.as_ref().expect("towers");
                let per_task = gates.iter().zip(b.gates.iter_mut()).zip(b.mix.iter_mut());
                for (t, ((gate, gc), mix)) in per_task.enumerate() {
                    // h_t = Σ_i G_t,i(g)·E_i(x)   [B, h]
                    gate.forward(gc, g, ps, bsz);
                    let mix = &mut mix[..bsz * h];
                    mix.fill(T::ZERO);
                    for (i, c) in b.experts.iter().enumerate() {
                        mixture_accumulate(mix, &gc.probs, c.out(bsz), i, n, h, bsz);
                    }
                    laps.lap(profile, Phase::Gates);
                    tw.forward(t, logits, &mut b.tower, mix, ps, bsz);
                    laps.lap(profile, Phase::Head);
                }
            }
            ModelKind::Pepnet | ModelKind::HmdnPepnet => {
                let m = dnn.as_ref().expect("dnn");
                let ep = epnet.as_ref().expect("epnet");
                let vw = gz + dx;
                // EPNet: x' = δ_ep([g, sg(x)]) ⊙ x. Frozen: keep the cached sg(x) columns.
                copy_columns(&mut b.v_ep, vw, 0, g, gz, bsz);
                if !*frozen {
                    copy_columns(&mut b.v_ep, vw, gz, x, dx, bsz);
                }
                laps.lap(profile, Phase::Other);
                ep.forward(&mut b.ep, &b.v_ep[..bsz * vw], ps, bsz);
                scale_forward(&mut b.xp[..bsz * dx], &b.ep.delta[..bsz * dx], x);
                laps.lap(profile, Phase::Gates);
                // PPNet gates on [g, sg(x')], one per hidden layer.
                copy_columns(&mut b.v_pp, vw, 0, g, gz, bsz);
                if !*frozen {
                    copy_columns(&mut b.v_pp, vw, gz, &b.xp, dx, bsz);
                }
                laps.lap(profile, Phase::Other);
                for (pn, c) in ppnet.iter().zip(b.pp.iter_mut()) {
                    pn.forward(c, &b.v_pp[..bsz * vw], ps, bsz);
                }
                laps.lap(profile, Phase::Gates);
                // h_l = δ_l ⊙ ReLU(Linear_l(h_{l-1})), h_{-1} = x'.
                for l in 0..m.layers.len() {
                    let hl = m.layers[l].d_out;
                    let (hs_below, hs_rest) = b.hs.split_at_mut(l);
                    let inp: &[T] = if l == 0 { &b.xp } else { &hs_below[l - 1] };
                    m.layer_forward(l, &mut b.a[l], inp, ps, bsz);
                    laps.lap(profile, Phase::Backbone);
                    let n = bsz * hl;
                    scale_forward(&mut hs_rest[0][..n], &b.pp[l].delta[..n], &b.a[l][..n]);
                    laps.lap(profile, Phase::Gates);
                }
                let top = &b.hs[m.layers.len() - 1][..bsz * h];
                let tw = towers.as_ref().expect("towers");
                for t in 0..nt {
                    tw.forward(t, logits, &mut b.tower, top, ps, bsz);
                }
                laps.lap(profile, Phase::Head);
            }
        }

        let alpha = T::from_f64(cfg.rq.alpha);
        let rq_part = if rq.is_some() { rq_loss } else { T::ZERO };
        let task = if batch.labels.is_empty() {
            T::ZERO
        } else {
            for (o, &y) in b.labels.iter_mut().zip(&batch.labels[..bsz * nt]) {
                *o = T::from_f64(y as f64);
            }
            task_loss_forward(logits, &b.labels, bsz, nt)
        };
        laps.lap(profile, Phase::Head);
        LossParts {
            task,
            rq: rq_part,
            total: task + alpha * rq_part,
        }
    }

    /// Zeroes the dense gradients, then accumulates the gradients of the last forward's total
    /// loss: dense ones into `params.grads`, embedding tables' into [`Model::row_grads`].
    ///
    /// # Panics
    /// If `batch` is not the batch of the last forward (rows differ) or has no labels.
    #[track_caller]
    pub fn backward(&mut self, batch: &Batch) {
        // Derivation: the mirror image of `forward`, top to bottom. Each layer's backward
        // carries its own derivation; what is added here is the wiring:
        // * ∂L/∂logit = (σ(logit) − y)/B (task loss) — every tower, the wide logit and the
        //   domain towers start from it; Wide&Deep adds the wide logit to every task, so the
        //   wide part receives Σ_t ∂L/∂logit_t.
        // * Concatenations split their gradient (DCN: [x_L, MLP(x)]); values used several
        //   times sum their gradients (x feeds the MLP / every expert / the cross network /
        //   EPNet's product; g feeds every gate or GateNU).
        // * PEPNet's GateNU inputs are [g, sg(x)] and [g, sg(x')]: only their g columns pass
        //   gradient on.
        // * ∂L/∂g reaches x_b directly (g = x_b) or through the quantizer, whose backward
        //   also adds α·∂L_rq/∂(x_b, codebooks).
        // * Shared distribution tables: x_b's gradient joins ∂L/∂x at its field's columns
        //   before the single scatter into row gradients.
        let bsz = batch.rows;
        let nt = self.cfg.tasks.len();
        assert_eq!(
            bsz, self.buf.bsz,
            "backward needs the batch of the last forward"
        );
        assert_eq!(batch.labels.len(), bsz * nt, "backward needs labels [B, T]");
        let mut laps = Laps::start(&self.profile);
        let Model {
            cfg,
            params: ps,
            embedding,
            dist_embedding,
            wide,
            rq,
            dnn,
            experts,
            gates,
            epnet,
            ppnet,
            cross,
            towers,
            domain_towers,
            dist_cols,
            domain_col,
            xb_dim,
            gate_dim,
            row_grads,
            rg_emb,
            rg_dist,
            rg_wide,
            rq_cache,
            profile,
            buf: b,
            ..
        } = self;
        if let Some(p) = profile.as_mut() {
            p.backwards += 1;
        }
        ps.zero_grads(false);
        laps.lap(profile, Phase::Other);
        let (nf, e, dx) = (cfg.fields.len(), cfg.embed_dim, cfg.x_dim());
        let (xbd, gz) = (*xb_dim, *gate_dim);
        let h = *cfg.hidden.last().expect("validated");
        let idx = &b.idx[..nf * bsz];
        let x = &b.x[..bsz * dx];
        let g: &[T] = if rq.is_some() {
            &b.g[..bsz * gz]
        } else {
            &b.xb[..bsz * xbd]
        };

        // ∂L/∂logits = (σ(logit) − y)/B   [B, T]
        let dlogits = &mut b.dlogits[..bsz * nt];
        dlogits.fill(T::ZERO);
        task_loss_backward(dlogits, &b.logits, &b.labels, bsz, nt);
        laps.lap(profile, Phase::Head);
        let dlogits = &b.dlogits[..bsz * nt];
        let dxv = &mut b.dx[..bsz * dx];
        dxv.fill(T::ZERO);
        let dg = &mut b.dg[..bsz * gz];
        dg.fill(T::ZERO);
        laps.lap(profile, Phase::Other);

        match cfg.model {
            ModelKind::Dnn | ModelKind::WideDeep => {
                let dh = &mut b.dh[..bsz * h];
                dh.fill(T::ZERO);
                let tw = towers.as_ref().expect("towers");
                for t in 0..nt {
                    tw.backward(t, Some(dh), &mut b.tower, ps, dlogits, b.dnn.out(bsz), bsz);
                }
                laps.lap(profile, Phase::Head);
                let m = dnn.as_ref().expect("dnn");
                m.backward(Some(dxv), &mut b.dnn, ps, dh, x, bsz);
                laps.lap(profile, Phase::Backbone);
                if let Some(w) = wide {
                    // logit_t = tower_t + wide for every task: ∂L/∂wide = Σ_t ∂L/∂logit_t.
                    for (d, lr) in b.dwide[..bsz].iter_mut().zip(dlogits.chunks_exact(nt)) {
                        *d = lr.iter().fold(T::ZERO, |a, &v| a + v);
                    }
                    let rg = &mut row_grads[rg_wide.clone()];
                    w.backward(rg, &mut b.wide, ps, &b.dwide[..bsz], idx, bsz);
                    laps.lap(profile, Phase::Embeddings);
                }
            }
            ModelKind::Dcn => {
                let w = dx + h;
                let dcat = &mut b.dcat[..bsz * w];
                dcat.fill(T::ZERO);
                let tw = towers.as_ref().expect("towers");
                for t in 0..nt {
                    tw.backward(
                        t,
                        Some(dcat),
                        &mut b.tower,
                        ps,
                        dlogits,
                        &b.cat[..bsz * w],
                        bsz,
                    );
                }
                laps.lap(profile, Phase::Head);
                take_columns(&mut b.dxl, dx, dcat, w, 0, bsz);
                take_columns(&mut b.dh, h, dcat, w, dx, bsz);
                laps.lap(profile, Phase::Other);
                let (c, m) = (cross.as_ref().expect("cross"), dnn.as_ref().expect("dnn"));
                c.backward(dxv, &mut b.cross, ps, &b.dxl[..bsz * dx], x, bsz);
                m.backward(Some(dxv), &mut b.dnn, ps, &b.dh[..bsz * h], x, bsz);
                laps.lap(profile, Phase::Backbone);
            }
            ModelKind::SharedBottom => {
                let dh = &mut b.dh[..bsz * h];
                dh.fill(T::ZERO);
                let dom = &idx[*domain_col * bsz..(*domain_col + 1) * bsz];
                let dt = domain_towers.as_ref().expect("domain towers");
                dt.backward(dh, ps, dlogits, b.dnn.out(bsz), dom, bsz);
                laps.lap(profile, Phase::Head);
                let m = dnn.as_ref().expect("dnn");
                m.backward(Some(dxv), &mut b.dnn, ps, dh, x, bsz);
                laps.lap(profile, Phase::Backbone);
            }
            ModelKind::Mmoe | ModelKind::HmdnMmoe => {
                let n = experts.len();
                for d in b.dexp.iter_mut() {
                    d[..bsz * h].fill(T::ZERO);
                }
                laps.lap(profile, Phase::Other);
                let tw = towers.as_ref().expect("towers");
                let per_task = gates.iter().zip(b.gates.iter_mut()).zip(&b.mix);
                for (t, ((gate, gc), mix)) in per_task.enumerate() {
                    let dmix = &mut b.dmix[..bsz * h];
                    dmix.fill(T::ZERO);
                    let mix = &mix[..bsz * h];
                    tw.backward(t, Some(dmix), &mut b.tower, ps, dlogits, mix, bsz);
                    laps.lap(profile, Phase::Head);
                    gc.zero_dprobs(bsz, n);
                    for (i, (c, de)) in b.experts.iter().zip(b.dexp.iter_mut()).enumerate() {
                        let (dp, pr) = (&mut gc.dprobs, &gc.probs);
                        mixture_backward(de, dp, dmix, pr, c.out(bsz), i, n, h, bsz);
                    }
                    gate.backward(Some(dg), gc, ps, g, bsz);
                    laps.lap(profile, Phase::Gates);
                }
                for ((m, c), de) in experts.iter().zip(b.experts.iter_mut()).zip(&b.dexp) {
                    m.backward(Some(dxv), c, ps, &de[..bsz * h], x, bsz);
                }
                laps.lap(profile, Phase::Backbone);
            }
            ModelKind::Pepnet | ModelKind::HmdnPepnet => {
                let m = dnn.as_ref().expect("dnn");
                let ep = epnet.as_ref().expect("epnet");
                let nl = m.layers.len();
                let vw = gz + dx;
                let dtop = &mut b.dhs[nl - 1][..bsz * h];
                dtop.fill(T::ZERO);
                let tw = towers.as_ref().expect("towers");
                for t in 0..nt {
                    let top = &b.hs[nl - 1][..bsz * h];
                    tw.backward(t, Some(dtop), &mut b.tower, ps, dlogits, top, bsz);
                }
                laps.lap(profile, Phase::Head);
                let dxp = &mut b.dxp[..bsz * dx];
                dxp.fill(T::ZERO);
                for l in (0..nl).rev() {
                    let n = bsz * m.layers[l].d_out;
                    // h_l = δ_l ⊙ a_l: ∂L/∂δ_l = ∂L/∂h_l ⊙ a_l, ∂L/∂a_l = ∂L/∂h_l ⊙ δ_l.
                    let (dhs_below, dhs_rest) = b.dhs.split_at_mut(l);
                    let dh_l = &dhs_rest[0][..n];
                    let pc = &mut b.pp[l];
                    pc.zero_ddelta(bsz, m.layers[l].d_out);
                    let da = &mut b.da[..n];
                    da.fill(T::ZERO);
                    scale_backward(
                        &mut pc.ddelta[..n],
                        Some(da),
                        dh_l,
                        &pc.delta[..n],
                        &b.a[l][..n],
                    );
                    laps.lap(profile, Phase::Gates);
                    // Layer l (ReLU ∘ Linear) back to its input h_{l-1} (or x').
                    let (inp, dinp): (&[T], &mut [T]) = if l == 0 {
                        (&b.xp[..bsz * dx], &mut *dxp)
                    } else {
                        let nb = bsz * m.layers[l - 1].d_out;
                        (&b.hs[l - 1][..nb], &mut dhs_below[l - 1][..nb])
                    };
                    dinp.fill(T::ZERO);
                    m.layer_backward(l, Some(dinp), &mut b.dpre, ps, da, &b.a[l], inp, bsz);
                    laps.lap(profile, Phase::Backbone);
                    // δ_l = GateNU_l([g, sg(x')]): only the g columns pass gradient on.
                    let dv = &mut b.dv[..bsz * vw];
                    dv.fill(T::ZERO);
                    ppnet[l].backward(Some(dv), pc, ps, &b.v_pp[..bsz * vw], bsz);
                    add_columns_from(dg, gz, dv, vw, bsz);
                    laps.lap(profile, Phase::Gates);
                }
                // x' = δ_ep ⊙ x.
                let dxp = &b.dxp[..bsz * dx];
                b.ep.zero_ddelta(bsz, dx);
                scale_backward(
                    &mut b.ep.ddelta[..bsz * dx],
                    Some(&mut *dxv),
                    dxp,
                    &b.ep.delta[..bsz * dx],
                    x,
                );
                let dv = &mut b.dv[..bsz * vw];
                dv.fill(T::ZERO);
                ep.backward(Some(dv), &mut b.ep, ps, &b.v_ep[..bsz * vw], bsz);
                add_columns_from(dg, gz, dv, vw, bsz);
                laps.lap(profile, Phase::Gates);
            }
        }

        // Distribution embeddings: ∂L/∂x_b through the quantizer (or g = x_b directly).
        if let Some(de) = dist_embedding {
            let dxb: &[T] = if let (Some(q), Some(c)) = (rq.as_ref(), rq_cache.as_ref()) {
                let dxb = &mut b.dxb[..bsz * xbd];
                dxb.fill(T::ZERO);
                let alpha = T::from_f64(cfg.rq.alpha);
                q.backward(
                    dxb,
                    ps,
                    &b.dg[..bsz * gz],
                    &b.xb[..bsz * xbd],
                    c,
                    alpha,
                    bsz,
                );
                laps.lap(profile, Phase::Rq);
                &b.dxb[..bsz * xbd]
            } else {
                &b.dg[..bsz * xbd]
            };
            if cfg.share_dist_embeddings {
                // x_b reuses E_p: its gradient joins that field's block of ∂L/∂x.
                for (p, &c) in dist_cols.iter().enumerate() {
                    for (dr, sr) in
                        b.dx.chunks_exact_mut(dx)
                            .zip(dxb.chunks_exact(xbd))
                            .take(bsz)
                    {
                        for (d, &s) in dr[c * e..(c + 1) * e]
                            .iter_mut()
                            .zip(&sr[p * e..(p + 1) * e])
                        {
                            *d += s;
                        }
                    }
                }
            } else {
                de.backward(&mut row_grads[rg_dist.clone()], dxb, xbd, 0, idx, bsz);
            }
        }
        embedding.backward(
            &mut row_grads[rg_emb.clone()],
            &b.dx[..bsz * dx],
            dx,
            0,
            idx,
            bsz,
        );
        laps.lap(profile, Phase::Embeddings);
    }
}

/// `dst[b, 0..w] += src[b, 0..w]` where `src` rows are `ss` wide (`dst` rows `w` wide): the
/// gate-input part of a GateNU input gradient.
fn add_columns_from<T: Real>(dst: &mut [T], w: usize, src: &[T], ss: usize, bsz: usize) {
    if w == 0 {
        return;
    }
    for (drow, srow) in dst.chunks_exact_mut(w).zip(src.chunks_exact(ss)).take(bsz) {
        for (d, &s) in drow.iter_mut().zip(srow) {
            *d += s;
        }
    }
}
