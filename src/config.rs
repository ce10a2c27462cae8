//! Model configuration: everything needed to rebuild a model (written as `config.toml` in a
//! model directory, SPEC §5), with validation that turns bad settings into clear errors.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// The model families (same names on the CLI).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// Plain MLP.
    Dnn,
    /// MLP + wide (1-dim tables) logit.
    WideDeep,
    /// DCN-v1: cross network beside the MLP.
    Dcn,
    /// One MLP, one tower per value of the domain field.
    SharedBottom,
    /// Multi-gate mixture of experts, gate input x_b.
    Mmoe,
    /// EPNet + PPNet with GateNU on x_b.
    Pepnet,
    /// MMoE with gate input from residual quantization.
    HmdnMmoe,
    /// PEPNet with GateNU input from residual quantization.
    HmdnPepnet,
}

impl ModelKind {
    /// Every model, in the paper's Table-1 order.
    pub const ALL: [ModelKind; 8] = [
        ModelKind::Dnn,
        ModelKind::Dcn,
        ModelKind::WideDeep,
        ModelKind::SharedBottom,
        ModelKind::Pepnet,
        ModelKind::HmdnPepnet,
        ModelKind::Mmoe,
        ModelKind::HmdnMmoe,
    ];

    /// CLI / config name.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Dnn => "dnn",
            ModelKind::WideDeep => "wide-deep",
            ModelKind::Dcn => "dcn",
            ModelKind::SharedBottom => "shared-bottom",
            ModelKind::Mmoe => "mmoe",
            ModelKind::Pepnet => "pepnet",
            ModelKind::HmdnMmoe => "hmdn-mmoe",
            ModelKind::HmdnPepnet => "hmdn-pepnet",
        }
    }

    /// Parses a CLI name; the error lists the valid names.
    pub fn parse(s: &str) -> Result<Self> {
        ModelKind::ALL
            .iter()
            .copied()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = ModelKind::ALL.iter().map(|m| m.name()).collect();
                Error::Config(format!(
                    "unknown model `{s}`; expected one of: {}",
                    names.join(", ")
                ))
            })
    }

    /// Uses the distribution embeddings x_b (gate / GateNU input).
    pub fn uses_dist(self) -> bool {
        matches!(
            self,
            ModelKind::Mmoe | ModelKind::Pepnet | ModelKind::HmdnMmoe | ModelKind::HmdnPepnet
        )
    }

    /// Has a residual quantizer.
    pub fn uses_rq(self) -> bool {
        matches!(self, ModelKind::HmdnMmoe | ModelKind::HmdnPepnet)
    }
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Implicit (one codebook space over all of x_b) or explicit (one level per distribution field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RqMode {
    /// z = P·e, D levels over the whole x_b (default).
    Implicit,
    /// D = P levels, level d quantizes field d's embedding (z = e).
    Explicit,
}

/// How the task loss reaches the quantizer (SPEC §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RqGradient {
    /// Straight-through: g = x_b + sg(s_D − x_b).
    Ste,
    /// g = s_D; the task loss reaches the selected codebook rows.
    Direct,
}

/// Residual-quantizer settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RqConfig {
    /// Implicit or explicit representation extraction.
    pub mode: RqMode,
    /// Codebook size K.
    pub codebook_size: usize,
    /// Depth D (ignored in explicit mode, where D = P).
    pub depth: usize,
    /// One codebook per level instead of one shared codebook.
    pub per_level_codebooks: bool,
    /// Gradient path for the gate input.
    pub gradient: RqGradient,
    /// Commitment weight β in L_rq.
    pub beta: f64,
    /// Weight α of L_rq in the total loss.
    pub alpha: f64,
    /// Initialise codebooks by k-means on the first training batch.
    pub kmeans_init: bool,
    /// Lloyd iterations for the k-means initialisation.
    pub kmeans_iters: usize,
    /// Re-seed codes unused for this many steps from batch residuals (0 = off).
    pub dead_code_restart_steps: usize,
}

impl Default for RqConfig {
    fn default() -> Self {
        RqConfig {
            mode: RqMode::Implicit,
            codebook_size: 64,
            depth: 6,
            per_level_codebooks: false,
            gradient: RqGradient::Ste,
            beta: 0.25,
            alpha: 1.0,
            kmeans_init: true,
            kmeans_iters: 10,
            dead_code_restart_steps: 0,
        }
    }
}

/// A categorical input field and its vocabulary size (index 0 = unknown).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldSpec {
    /// Column name.
    pub name: String,
    /// Rows of its embedding table (including index 0).
    pub vocab_size: usize,
}

/// Everything needed to build a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Which model.
    pub model: ModelKind,
    /// Categorical fields in input column order.
    pub fields: Vec<FieldSpec>,
    /// Names of the numeric inputs appended to x.
    pub numeric: Vec<String>,
    /// Distribution fields (x_b), names from `fields`.
    pub distribution: Vec<String>,
    /// Field whose values select Shared-Bottom towers (default: last distribution field).
    pub domain: Option<String>,
    /// Task (label) names; one logit each.
    pub tasks: Vec<String>,
    /// Embedding width e.
    pub embed_dim: usize,
    /// Hidden widths of every MLP.
    pub hidden: Vec<usize>,
    /// Number of experts (MMoE).
    pub n_experts: usize,
    /// GateNU hidden width.
    pub gatenu_hidden: usize,
    /// GateNU output scale γ.
    pub gatenu_gamma: f64,
    /// DCN cross layers.
    pub cross_layers: usize,
    /// Reuse E_p for x_b instead of separate `dist_embedding` tables.
    pub share_dist_embeddings: bool,
    /// Standard deviation of the normal initialisation of embedding tables.
    pub embed_init_std: f64,
    /// Residual quantizer (hmdn-* models).
    pub rq: RqConfig,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            model: ModelKind::HmdnMmoe,
            fields: Vec::new(),
            numeric: Vec::new(),
            distribution: Vec::new(),
            domain: None,
            tasks: vec!["click".to_string()],
            embed_dim: 16,
            hidden: vec![128, 64, 32],
            n_experts: 3,
            gatenu_hidden: 64,
            gatenu_gamma: 2.0,
            cross_layers: 3,
            share_dist_embeddings: false,
            embed_init_std: 0.05,
            rq: RqConfig::default(),
        }
    }
}

impl ModelConfig {
    /// Index (into `fields`) of a field name, or a clear error naming the known fields.
    pub fn field_index(&self, name: &str) -> Result<usize> {
        self.fields
            .iter()
            .position(|f| f.name == name)
            .ok_or_else(|| {
                let known: Vec<_> = self.fields.iter().map(|f| f.name.as_str()).collect();
                Error::Config(format!(
                    "field `{name}` is not a categorical field; categorical fields are: {}",
                    known.join(", ")
                ))
            })
    }

    /// Indices of the distribution fields.
    pub fn dist_indices(&self) -> Result<Vec<usize>> {
        self.distribution
            .iter()
            .map(|n| self.field_index(n))
            .collect()
    }

    /// Index of the Shared-Bottom domain field.
    pub fn domain_index(&self) -> Result<usize> {
        match &self.domain {
            Some(d) => self.field_index(d),
            None => match self.distribution.last() {
                Some(d) => self.field_index(d),
                None => Err(Error::Config(
                    "shared-bottom needs a `domain` field (or at least one distribution field)"
                        .into(),
                )),
            },
        }
    }

    /// Width of x = F·e + N.
    pub fn x_dim(&self) -> usize {
        self.fields.len() * self.embed_dim + self.numeric.len()
    }

    /// Width of x_b = P·e.
    pub fn xb_dim(&self) -> usize {
        self.distribution.len() * self.embed_dim
    }

    /// Number of RQ levels actually used (explicit: one per distribution field).
    pub fn rq_depth(&self) -> usize {
        match self.rq.mode {
            RqMode::Implicit => self.rq.depth,
            RqMode::Explicit => self.distribution.len(),
        }
    }

    /// Width of the gate input g (x_b, or s_D: z in implicit mode, e in explicit mode).
    pub fn gate_dim(&self) -> usize {
        if self.model.uses_rq() && self.rq.mode == RqMode::Explicit {
            self.embed_dim
        } else {
            self.xb_dim()
        }
    }

    /// Elements of the parameters the model of this configuration registers: (embedding
    /// tables, everything else). In `f64`, so that no setting, however large, overflows; a
    /// mirror of `Model::new`'s shapes (`tests/memory_check.rs` checks that they agree), used
    /// to refuse a model that cannot fit before any of it is allocated.
    pub fn param_counts(&self) -> (f64, f64) {
        let kind = self.model;
        let e = self.embed_dim as f64;
        let vocab_sum = |names: &mut dyn Iterator<Item = &FieldSpec>| -> f64 {
            names.map(|f| f.vocab_size as f64).sum()
        };
        let all_vocab = vocab_sum(&mut self.fields.iter());
        let mut tables = all_vocab * e;
        if kind.uses_dist() && !self.share_dist_embeddings {
            let dist = &mut self
                .fields
                .iter()
                .filter(|f| self.distribution.contains(&f.name));
            tables += vocab_sum(dist) * e;
        }
        let lin = |d_in: f64, d_out: f64| d_in * d_out + d_out;
        let mut dense = 0.0;
        if kind == ModelKind::WideDeep {
            tables += all_vocab;
            dense += 1.0;
        }
        let p = self.distribution.len() as f64;
        let gate_dim = if kind.uses_rq() {
            let rq = &self.rq;
            let (depth, w) = match rq.mode {
                RqMode::Implicit => (rq.depth as f64, p * e),
                RqMode::Explicit => (p, e),
            };
            let books = if rq.mode == RqMode::Implicit && !rq.per_level_codebooks {
                1.0
            } else {
                depth
            };
            dense += books * rq.codebook_size as f64 * w;
            w
        } else if kind.uses_dist() {
            p * e
        } else {
            0.0
        };
        let dx = self.x_dim() as f64;
        let h = self.hidden.last().map_or(0.0, |&h| h as f64);
        let nt = self.tasks.len() as f64;
        let mlp = |d_in: f64| {
            let (mut d, mut sum) = (d_in, 0.0);
            for &w in &self.hidden {
                sum += lin(d, w as f64);
                d = w as f64;
            }
            sum
        };
        let towers = nt * lin(h, 1.0);
        dense += match kind {
            ModelKind::Dnn | ModelKind::WideDeep => mlp(dx) + towers,
            ModelKind::Dcn => 2.0 * self.cross_layers as f64 * dx + mlp(dx) + nt * lin(dx + h, 1.0),
            ModelKind::SharedBottom => {
                let nd = self
                    .domain_index()
                    .map_or(0.0, |c| self.fields[c].vocab_size as f64);
                mlp(dx) + nt * nd * lin(h, 1.0)
            }
            ModelKind::Mmoe | ModelKind::HmdnMmoe => {
                let n = self.n_experts as f64;
                n * mlp(dx) + nt * lin(gate_dim, n) + towers
            }
            ModelKind::Pepnet | ModelKind::HmdnPepnet => {
                let gh = self.gatenu_hidden as f64;
                let gatenu = |d_out: f64| lin(gate_dim + dx, gh) + lin(gh, d_out);
                let pp: f64 = self.hidden.iter().map(|&w| gatenu(w as f64)).sum();
                gatenu(dx) + mlp(dx) + pp + towers
            }
        };
        (tables, dense)
    }

    /// Checks the configuration; every inconsistency becomes an [`Error::Config`].
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.fields.is_empty() && self.numeric.is_empty() {
            return bad("the model has no input fields".into());
        }
        if self.embed_dim == 0 {
            return bad("embed_dim must be at least 1".into());
        }
        if self.tasks.is_empty() {
            return bad("at least one task (label column) is required".into());
        }
        if self.hidden.is_empty() || self.hidden.contains(&0) {
            return bad(format!(
                "hidden layer widths must be non-empty and positive, got {:?}",
                self.hidden
            ));
        }
        for f in &self.fields {
            if f.vocab_size == 0 {
                return bad(format!(
                    "field `{}` has an empty vocabulary (need at least index 0)",
                    f.name
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for f in &self.fields {
            if !seen.insert(f.name.as_str()) {
                return bad(format!("field `{}` is listed twice", f.name));
            }
        }
        self.dist_indices()?;
        if self.model.uses_dist() && self.distribution.is_empty() {
            return bad(format!(
                "model `{}` needs at least one distribution field",
                self.model
            ));
        }
        if self.model == ModelKind::SharedBottom {
            self.domain_index()?;
        }
        if matches!(self.model, ModelKind::Mmoe | ModelKind::HmdnMmoe) && self.n_experts == 0 {
            return bad("n_experts must be at least 1".into());
        }
        if matches!(self.model, ModelKind::Pepnet | ModelKind::HmdnPepnet)
            && self.gatenu_hidden == 0
        {
            return bad("gatenu_hidden must be at least 1".into());
        }
        // Upper bounds far beyond any model of the paper, so that the sizes derived from them
        // (per-level statistics, per-layer lists) stay small; whether the parameters fit in
        // memory is checked separately (`crate::memory::check_model_memory`).
        let caps = [
            ("hidden (number of layers)", self.hidden.len(), 64),
            ("n_experts", self.n_experts, 1024),
            ("cross_layers", self.cross_layers, 1024),
            ("rq.depth (D)", self.rq.depth, 64),
            ("rq.codebook_size (K)", self.rq.codebook_size, 1 << 20),
        ];
        for (key, v, max) in caps {
            if v > max {
                return bad(format!("{key} must be at most {max}, got {v}"));
            }
        }
        if self.model.uses_rq() {
            let rq = &self.rq;
            if rq.codebook_size == 0 {
                return bad("rq.codebook_size (K) must be at least 1".into());
            }
            if rq.mode == RqMode::Implicit && rq.depth == 0 {
                return bad("rq.depth (D) must be at least 1".into());
            }
            if rq.mode == RqMode::Explicit && rq.depth != 0 && rq.depth != self.distribution.len() {
                return bad(format!(
                    "explicit RQ has one level per distribution field: depth must be {} (or 0 = automatic), got {}",
                    self.distribution.len(),
                    rq.depth
                ));
            }
            let non_negative = |v: f64| v.is_finite() && v >= 0.0;
            if !non_negative(rq.beta) || !non_negative(rq.alpha) {
                return bad(format!(
                    "rq.beta and rq.alpha must be finite and >= 0, got {} and {}",
                    rq.beta, rq.alpha
                ));
            }
        }
        Ok(())
    }
}
