//! `compare`: several models over several seeds on the same data, in the paper's Table-1 layout
//! (validation AUC mean ± std, RelaImpr), the per-partition AUC gain of the best HMDN model over
//! its backbone, and, with `--sweep`, the Figure-2 study of one residual-quantizer setting.
//!
//! The data are opened once; every run gets its own model directory:
//! ```text
//! OUT/results.csv            one row per run (model, variant, seed, auc, logloss, ...)
//! OUT/summary.csv            the table: one row per model (or sweep variant)
//! OUT/results.svg            bar chart (or, with --sweep, AUC against the swept value)
//! OUT/partition_gain.csv     per-cell AUC of the best hmdn-* model and its backbone
//! OUT/<model>/seed-<s>/      a normal `fit` model directory (sweep: <model>-depth<d>/seed-<s>)
//! ```
//!
//! Seeds are `1..=N`. The seed fixes initialisation *and* the batch order, so seed `s` of every
//! model sees the same batches in the same order: differences between models at equal seed are
//! paired, not confounded by shuffling. A `[train] seed` in `--config` is overridden.
//!
//! "AUC" is the first task's validation AUC of each run's best epoch (the weights `fit` keeps).

use crate::app;
use crate::checkpoint::write_atomic;
use crate::cli::{CompareArgs, FitArgs};
use crate::config::{ModelKind, RqMode};
use crate::data::{self, Dataset, LoadOptions, Schema};
use crate::error::{Error, Result};
use crate::metrics::CellMetrics;
use crate::train::{self, FitInputs, RunConfig};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

/// Most seeds `compare` accepts per model.
pub const MAX_SEEDS: usize = 1000;

/// One row per run.
pub const RESULTS_CSV: &str = "results.csv";
/// One row per model / sweep variant (the printed table).
pub const SUMMARY_CSV: &str = "summary.csv";
/// The plot.
pub const PLOT_SVG: &str = "results.svg";
/// Per-partition-cell AUC of the best hmdn-* model and its backbone.
pub const PARTITION_CSV: &str = "partition_gain.csv";

/// A residual-quantizer setting `--sweep` can vary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SweepKey {
    /// Depth D (`rq.depth`), the paper's Figure 2.
    Depth,
    /// Codebook size K (`rq.codebook_size`).
    CodebookSize,
}

impl SweepKey {
    /// Every sweepable key.
    pub const ALL: [SweepKey; 2] = [SweepKey::Depth, SweepKey::CodebookSize];

    /// Name used in `--sweep KEY=...`, in results.csv and in the tables.
    pub fn name(self) -> &'static str {
        match self {
            SweepKey::Depth => "depth",
            SweepKey::CodebookSize => "codebook_size",
        }
    }

    /// Names accepted on the command line (the config key and the paper's letter).
    fn aliases(self) -> [&'static str; 2] {
        match self {
            SweepKey::Depth => ["depth", "D"],
            SweepKey::CodebookSize => ["codebook_size", "K"],
        }
    }

    /// Short tag in run directory names (`hmdn-mmoe-depth3`, `hmdn-mmoe-K64`).
    fn dir_tag(self) -> &'static str {
        match self {
            SweepKey::Depth => "depth",
            SweepKey::CodebookSize => "K",
        }
    }

    /// x-axis label of the sweep plot.
    fn axis_label(self) -> &'static str {
        match self {
            SweepKey::Depth => "codebook depth D",
            SweepKey::CodebookSize => "codebook size K",
        }
    }

    /// Sets this key in a run configuration.
    fn apply(self, run: &mut RunConfig, value: usize) {
        match self {
            SweepKey::Depth => run.model.rq.depth = value,
            SweepKey::CodebookSize => run.model.rq.codebook_size = value,
        }
    }
}

/// A parsed `--sweep KEY=v1,v2,...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sweep {
    /// What varies.
    pub key: SweepKey,
    /// Its values, in the order given (the plot's x order).
    pub values: Vec<usize>,
}

impl Sweep {
    /// Parses `KEY=v1,v2,...`; keys are `depth` (or `D`) and `codebook_size` (or `K`), values
    /// distinct positive integers.
    pub fn parse(text: &str) -> Result<Sweep> {
        let supported = || {
            SweepKey::ALL
                .iter()
                .map(|k| {
                    let [a, b] = k.aliases();
                    format!("{a} (or {b})")
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (key, list) = text.split_once('=').ok_or_else(|| {
            Error::Config(format!(
                "--sweep expects KEY=v1,v2,... (e.g. depth=1,2,3,6,9), got `{text}`; supported keys: {}",
                supported()
            ))
        })?;
        let key = key.trim();
        let key = SweepKey::ALL
            .iter()
            .copied()
            .find(|k| k.aliases().contains(&key))
            .ok_or_else(|| {
                Error::Config(format!(
                    "--sweep: unknown key `{key}`; supported keys: {}",
                    supported()
                ))
            })?;
        let mut values = Vec::new();
        for v in list.split(',').map(str::trim).filter(|v| !v.is_empty()) {
            let n: usize = v.parse().map_err(|_| {
                Error::Config(format!(
                    "--sweep {}: `{v}` is not a positive integer",
                    key.name()
                ))
            })?;
            if n == 0 {
                return Err(Error::Config(format!(
                    "--sweep {}: values must be at least 1, got 0",
                    key.name()
                )));
            }
            if values.contains(&n) {
                return Err(Error::Config(format!(
                    "--sweep {}: value {n} is listed twice",
                    key.name()
                )));
            }
            values.push(n);
        }
        if values.is_empty() {
            return Err(Error::Config(format!(
                "--sweep {}: no values given (e.g. {}=1,2,3)",
                key.name(),
                key.name()
            )));
        }
        Ok(Sweep { key, values })
    }
}

/// One trained configuration: a model, optionally with a swept setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Variant {
    /// The model.
    pub model: ModelKind,
    /// The swept key and its value (hmdn-* models in a sweep only).
    pub setting: Option<(SweepKey, usize)>,
}

impl Variant {
    /// The unswept model.
    pub fn plain(model: ModelKind) -> Variant {
        Variant {
            model,
            setting: None,
        }
    }

    /// `depth=3`, or empty without a setting (the `variant` column of results.csv).
    pub fn setting_text(&self) -> String {
        match self.setting {
            Some((k, v)) => format!("{}={v}", k.name()),
            None => String::new(),
        }
    }

    /// `hmdn-mmoe (depth=3)`, or the model name.
    pub fn label(&self) -> String {
        match self.setting {
            Some(_) => format!("{} ({})", self.model, self.setting_text()),
            None => self.model.name().to_string(),
        }
    }

    /// Directory of its runs inside the output directory: `hmdn-mmoe-depth3`, or the model name.
    pub fn dir_name(&self) -> String {
        match self.setting {
            Some((k, v)) => format!("{}-{}{v}", self.model, k.dir_tag()),
            None => self.model.name().to_string(),
        }
    }
}

/// The backbone an hmdn-* model adds residual quantization to.
pub fn backbone(model: ModelKind) -> Option<ModelKind> {
    match model {
        ModelKind::HmdnMmoe => Some(ModelKind::Mmoe),
        ModelKind::HmdnPepnet => Some(ModelKind::Pepnet),
        _ => None,
    }
}

/// What a comparison will train, checked before any data are read.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Models in the order `--models` listed them.
    pub models: Vec<ModelKind>,
    /// Seeds `1..=N`.
    pub seeds: Vec<u64>,
    /// The parameter sweep, if any.
    pub sweep: Option<Sweep>,
    /// Everything to train, in table order (the paper's model order, then sweep values).
    pub variants: Vec<Variant>,
}

impl Plan {
    /// Validates the model list, seed count and sweep of `a`.
    pub fn new(a: &CompareArgs) -> Result<Plan> {
        let valid = || ModelKind::ALL.map(|m| m.name()).join(", ");
        let names: Vec<&str> = a
            .models
            .iter()
            .map(|m| m.trim())
            .filter(|m| !m.is_empty())
            .collect();
        if names.is_empty() {
            return Err(Error::Config(format!(
                "`compare` needs --models with at least one model (comma-separated, from: {})",
                valid()
            )));
        }
        let mut models = Vec::new();
        for n in names {
            let m = ModelKind::parse(n)?;
            if models.contains(&m) {
                return Err(Error::Config(format!("--models lists `{m}` twice")));
            }
            models.push(m);
        }
        if a.seeds == 0 {
            return Err(Error::Config(
                "--seeds must be at least 1 (runs use seeds 1..=N)".into(),
            ));
        }
        // Every seed is a full training run per model (and sweep value); the plan of runs is
        // written out in advance, so an absurd count must not reach it.
        if a.seeds > MAX_SEEDS {
            return Err(Error::Config(format!(
                "--seeds must be at most {MAX_SEEDS}, got {} (each seed is a full training run of every model)",
                a.seeds
            )));
        }
        let sweep = a.sweep.as_deref().map(Sweep::parse).transpose()?;
        if sweep.is_some() && !models.iter().any(|m| m.uses_rq()) {
            return Err(Error::Config(
                "--sweep varies a residual-quantizer setting, so --models needs at least one of hmdn-mmoe, hmdn-pepnet".into(),
            ));
        }
        let mut variants = Vec::new();
        for m in ModelKind::ALL.into_iter().filter(|m| models.contains(m)) {
            match (&sweep, m.uses_rq()) {
                (Some(s), true) => variants.extend(s.values.iter().map(|&v| Variant {
                    model: m,
                    setting: Some((s.key, v)),
                })),
                _ => variants.push(Variant::plain(m)),
            }
        }
        Ok(Plan {
            models,
            seeds: (1..=a.seeds as u64).collect(),
            sweep,
            variants,
        })
    }

    /// The RelaImpr reference: `dnn` if compared, else the first model listed (its first sweep
    /// value when swept). The flag says whether it is `dnn`.
    pub fn base(&self) -> (Variant, bool) {
        if self.models.contains(&ModelKind::Dnn) {
            return (Variant::plain(ModelKind::Dnn), true);
        }
        let first = self.models[0];
        let v = self
            .variants
            .iter()
            .copied()
            .find(|v| v.model == first)
            .expect("every listed model has a variant");
        (v, false)
    }
}

/// The outcome of one training run.
#[derive(Clone, Debug)]
pub struct RunRecord {
    /// What was trained.
    pub variant: Variant,
    /// Its seed.
    pub seed: u64,
    /// Best validation AUC of the first task (`None` if the validation labels have one class).
    pub auc: Option<f64>,
    /// Validation logloss of the first task at the best epoch.
    pub logloss: Option<f64>,
    /// Best epoch (0-based).
    pub best_epoch: Option<u64>,
    /// Epochs run (early stopping may end a run before `--epochs`).
    pub epochs: u64,
    /// Wall-clock seconds of the run (training and validation).
    pub seconds: f64,
    /// Partition fields of the cells.
    pub partition: Vec<String>,
    /// First task's per-partition-cell metrics at the best epoch.
    pub cells: Vec<CellMetrics>,
}

/// Mean and sample standard deviation (n − 1; `None` for one value); `None` for no values.
pub fn mean_std(xs: &[f64]) -> Option<(f64, Option<f64>)> {
    if xs.is_empty() {
        return None;
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let std = (xs.len() > 1)
        .then(|| (xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0)).sqrt());
    Some((mean, std))
}

/// RelaImpr = (AUC − 0.5) / (AUC_base − 0.5) − 1 (a fraction; ×100 for %), the usual
/// definition (Yan et al. 2014, DIN): improvement over random guessing. `None` when the base is
/// no better than random, where the ratio means nothing.
///
/// Note: the RelaImpr column of the HMDN paper's Table 1 matches AUC / AUC_base − 1 instead
/// (Ali-CCP DCN: 0.6231 / 0.6183 − 1 = +0.78% as printed, whereas this formula gives +4.06%),
/// so our percentages are larger than the paper's for the same AUCs.
pub fn rela_impr(auc: f64, base: f64) -> Option<f64> {
    (base > 0.5).then(|| (auc - 0.5) / (base - 0.5) - 1.0)
}

/// One row of the table.
#[derive(Clone, Debug)]
pub struct VariantSummary {
    /// The model / sweep variant.
    pub variant: Variant,
    /// Runs trained.
    pub runs: usize,
    /// Runs with an AUC (the mean and std are over these).
    pub with_auc: usize,
    /// Mean AUC.
    pub mean: Option<f64>,
    /// Sample standard deviation of the AUC (`None` with fewer than two runs).
    pub std: Option<f64>,
    /// RelaImpr of the mean AUC against the base's mean AUC (a fraction).
    pub rela_impr: Option<f64>,
}

/// Aggregates runs per variant, in the order of `variants`, with RelaImpr against `base`.
pub fn summarize(variants: &[Variant], runs: &[RunRecord], base: Variant) -> Vec<VariantSummary> {
    let mut rows: Vec<VariantSummary> = variants
        .iter()
        .map(|&v| {
            let mine: Vec<&RunRecord> = runs.iter().filter(|r| r.variant == v).collect();
            let aucs: Vec<f64> = mine.iter().filter_map(|r| r.auc).collect();
            let ms = mean_std(&aucs);
            VariantSummary {
                variant: v,
                runs: mine.len(),
                with_auc: aucs.len(),
                mean: ms.map(|m| m.0),
                std: ms.and_then(|m| m.1),
                rela_impr: None,
            }
        })
        .collect();
    let base_mean = rows.iter().find(|r| r.variant == base).and_then(|r| r.mean);
    for r in &mut rows {
        r.rela_impr = match (r.mean, base_mean) {
            (Some(a), Some(b)) => rela_impr(a, b),
            _ => None,
        };
    }
    rows
}

/// Mean AUC of one partition cell for the hmdn-* model and its backbone.
#[derive(Clone, Debug)]
pub struct CellGain {
    /// Cell key, e.g. `gender=M|age=25`.
    pub cell: String,
    /// Validation rows in the cell.
    pub rows: usize,
    /// Mean over seeds of the backbone's AUC in the cell.
    pub backbone: Option<f64>,
    /// Mean over seeds of the hmdn-* model's AUC in the cell.
    pub hmdn: Option<f64>,
}

impl CellGain {
    /// hmdn − backbone.
    pub fn gain(&self) -> Option<f64> {
        Some(self.hmdn? - self.backbone?)
    }
}

/// Per-partition AUC of the best hmdn-* variant and its backbone.
#[derive(Clone, Debug)]
pub struct PartitionGain {
    /// The hmdn-* variant with the highest mean AUC.
    pub hmdn: Variant,
    /// Its backbone (`mmoe` or `pepnet`).
    pub backbone: Variant,
    /// Fields that define the cells.
    pub partition: Vec<String>,
    /// One entry per cell, sorted by key.
    pub cells: Vec<CellGain>,
}

/// Whether the per-partition gain could be computed.
#[derive(Clone, Debug)]
pub enum GainOutcome {
    /// Computed.
    Computed(PartitionGain),
    /// Not computed, and why.
    Skipped(String),
}

/// Picks the best hmdn-* variant and compares it cell by cell with its backbone.
pub fn partition_gain(summary: &[VariantSummary], runs: &[RunRecord]) -> GainOutcome {
    let best = summary
        .iter()
        .filter(|s| s.variant.model.uses_rq())
        .filter_map(|s| s.mean.map(|m| (s.variant, m)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    let Some((hmdn, _)) = best else {
        return GainOutcome::Skipped(
            if summary.iter().any(|s| s.variant.model.uses_rq()) {
                "no hmdn-* run has a validation AUC"
            } else {
                "no hmdn-* model among the models"
            }
            .into(),
        );
    };
    let bb = Variant::plain(backbone(hmdn.model).expect("hmdn-* models have a backbone"));
    if !summary.iter().any(|s| s.variant == bb) {
        return GainOutcome::Skipped(format!(
            "{} (the backbone of {}) is not among the models",
            bb.model, hmdn.model
        ));
    }
    // cell -> (rows, backbone AUCs, hmdn AUCs)
    let mut cells: BTreeMap<String, (usize, Vec<f64>, Vec<f64>)> = BTreeMap::new();
    let mut partition = Vec::new();
    for r in runs.iter().filter(|r| r.variant == hmdn || r.variant == bb) {
        partition.clone_from(&r.partition);
        for c in &r.cells {
            let e = cells.entry(c.cell.clone()).or_default();
            e.0 = c.rows;
            if let Some(a) = c.auc {
                if r.variant == bb {
                    e.1.push(a);
                } else {
                    e.2.push(a);
                }
            }
        }
    }
    let mean = |v: &[f64]| mean_std(v).map(|m| m.0);
    GainOutcome::Computed(PartitionGain {
        hmdn,
        backbone: bb,
        partition,
        cells: cells
            .into_iter()
            .map(|(cell, (rows, b, h))| CellGain {
                cell,
                rows,
                backbone: mean(&b),
                hmdn: mean(&h),
            })
            .collect(),
    })
}

/// A finished comparison.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// Output directory.
    pub out: PathBuf,
    /// What was trained.
    pub plan: Plan,
    /// Maximum epochs per run.
    pub epochs: usize,
    /// Rows per mini-batch.
    pub batch_size: usize,
    /// Name of the first task (whose AUC is reported).
    pub task: String,
    /// Every run, in training order.
    pub runs: Vec<RunRecord>,
    /// The table, in the paper's model order.
    pub summary: Vec<VariantSummary>,
    /// The RelaImpr reference and whether it is `dnn`.
    pub base: (Variant, bool),
    /// Per-partition gain of the best hmdn-* model over its backbone.
    pub gain: GainOutcome,
}

fn fmt_auc(a: Option<f64>) -> String {
    a.map(|v| format!("{v:.4}")).unwrap_or_else(|| "n/a".into())
}

fn fmt_mean_std(s: &VariantSummary) -> String {
    match (s.mean, s.std) {
        (None, _) => "n/a".into(),
        (Some(m), Some(sd)) => format!("{m:.4} ± {sd:.4}"),
        (Some(m), None) => format!("{m:.4} ± n/a"),
    }
}

fn fmt_pct(f: Option<f64>) -> String {
    f.map(|v| format!("{:+.2}%", v * 100.0))
        .unwrap_or_else(|| "n/a".into())
}

/// An aligned text table: columns flagged in `right` are right-aligned.
fn text_table(header: &[&str], rows: &[Vec<String>], right: &[bool]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = " ".repeat(w[i] - c.chars().count());
            if i > 0 {
                l.push_str("  ");
            }
            if right[i] {
                l.push_str(&pad);
                l.push_str(c);
            } else {
                l.push_str(c);
                l.push_str(&pad);
            }
        }
        out.push_str("  ");
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    let rule: Vec<String> = w.iter().map(|&n| "-".repeat(n)).collect();
    line(rule.iter().map(String::as_str).collect());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

impl Comparison {
    fn seeds_text(&self) -> String {
        match self.plan.seeds.len() {
            1 => "seed 1".into(),
            n => format!("seeds 1..={n}"),
        }
    }

    /// The Table-1 layout: model, AUC mean ± std, RelaImpr, runs.
    pub fn table_text(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .summary
            .iter()
            .map(|s| {
                vec![
                    s.variant.label(),
                    fmt_mean_std(s),
                    fmt_pct(s.rela_impr),
                    s.runs.to_string(),
                ]
            })
            .collect();
        let (base, is_dnn) = self.base;
        let mut t = format!(
            "Validation AUC of task `{}` over {} (at most {} epochs, batch {}; best epoch per run):\n",
            self.task,
            self.seeds_text(),
            self.epochs,
            self.batch_size
        );
        t.push_str(&text_table(
            &["model", "AUC (mean ± std)", "RelaImpr", "runs"],
            &rows,
            &[false, false, true, true],
        ));
        if is_dnn {
            t.push_str("  RelaImpr = (AUC − 0.5) / (AUC_dnn − 0.5) − 1, on mean AUCs.\n");
        } else {
            let _ = writeln!(
                t,
                "  NOTE: dnn is not among the models, so RelaImpr is relative to {}, the first model listed:\n  RelaImpr = (AUC − 0.5) / (AUC_{} − 0.5) − 1, on mean AUCs.",
                base.label(),
                base.model
            );
        }
        t
    }

    /// The sweep table: mean ± std per swept value for each hmdn-* model, then the baselines.
    pub fn sweep_text(&self) -> Option<String> {
        let sweep = self.plan.sweep.as_ref()?;
        let hmdn: Vec<ModelKind> = ModelKind::ALL
            .into_iter()
            .filter(|m| m.uses_rq() && self.plan.models.contains(m))
            .collect();
        let find = |v: Variant| self.summary.iter().find(|s| s.variant == v);
        let rows: Vec<Vec<String>> = sweep
            .values
            .iter()
            .map(|&val| {
                let mut r = vec![val.to_string()];
                for &m in &hmdn {
                    let v = Variant {
                        model: m,
                        setting: Some((sweep.key, val)),
                    };
                    r.push(find(v).map(fmt_mean_std).unwrap_or_else(|| "-".into()));
                }
                r
            })
            .collect();
        let mut header = vec![sweep.key.name()];
        header.extend(hmdn.iter().map(|m| m.name()));
        let mut right = vec![true];
        right.extend(hmdn.iter().map(|_| false));
        let mut t = format!(
            "Effect of {} (validation AUC, mean ± std over {}):\n",
            sweep.key.axis_label(),
            self.seeds_text()
        );
        t.push_str(&text_table(&header, &rows, &right));
        let baselines: Vec<String> = self
            .summary
            .iter()
            .filter(|s| s.variant.setting.is_none())
            .map(|s| format!("{} {}", s.variant.model, fmt_mean_std(s)))
            .collect();
        if !baselines.is_empty() {
            let _ = writeln!(t, "  baselines: {}", baselines.join(", "));
        }
        Some(t)
    }

    /// The per-partition comparison of the best hmdn-* model and its backbone.
    pub fn gain_text(&self) -> String {
        let g = match &self.gain {
            GainOutcome::Skipped(why) => {
                return format!("Per-partition AUC gain: not computed: {why}.\n")
            }
            GainOutcome::Computed(g) => g,
        };
        let (h, b) = (g.hmdn.label(), g.backbone.label());
        let mut t = format!(
            "Per-partition validation AUC ({}), best hmdn model {} vs its backbone {}, mean over {}:\n",
            if g.partition.is_empty() {
                "no partition fields".to_string()
            } else {
                g.partition.join(" × ")
            },
            h,
            b,
            self.seeds_text()
        );
        if g.cells.is_empty() {
            t.push_str("  (no partition cells)\n");
            return t;
        }
        let rows: Vec<Vec<String>> = g
            .cells
            .iter()
            .map(|c| {
                vec![
                    c.cell.clone(),
                    c.rows.to_string(),
                    fmt_auc(c.backbone),
                    fmt_auc(c.hmdn),
                    c.gain()
                        .map(|d| format!("{d:+.4}"))
                        .unwrap_or_else(|| "n/a".into()),
                ]
            })
            .collect();
        t.push_str(&text_table(
            &["cell", "rows", &b, &h, "gain"],
            &rows,
            &[false, true, true, true, true],
        ));
        let both: Vec<(usize, f64)> = g
            .cells
            .iter()
            .filter_map(|c| c.gain().map(|d| (c.rows, d)))
            .collect();
        if !both.is_empty() {
            let better = both.iter().filter(|x| x.1 > 0.0).count();
            let mean = both.iter().map(|x| x.1).sum::<f64>() / both.len() as f64;
            let rows: usize = both.iter().map(|x| x.0).sum();
            let weighted = both.iter().map(|x| x.0 as f64 * x.1).sum::<f64>() / rows.max(1) as f64;
            let _ = writeln!(
                t,
                "  {h} is better in {better} of {} cells; mean gain {mean:+.4} (row-weighted {weighted:+.4})",
                both.len()
            );
        }
        t
    }

    /// Everything `compare` prints: the table, the sweep table and the per-partition gain.
    pub fn report(&self) -> String {
        let mut t = self.table_text();
        if let Some(s) = self.sweep_text() {
            t.push('\n');
            t.push_str(&s);
        }
        t.push('\n');
        t.push_str(&self.gain_text());
        t
    }

    /// `results.csv`: one row per run.
    pub fn results_csv(&self) -> String {
        let mut s = String::from("model,variant,seed,auc,logloss,best_epoch,epochs,seconds\n");
        let opt = |v: Option<String>| v.unwrap_or_default();
        for r in &self.runs {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{:.3}",
                r.variant.model,
                r.variant.setting_text(),
                r.seed,
                opt(r.auc.map(|v| v.to_string())),
                opt(r.logloss.map(|v| v.to_string())),
                opt(r.best_epoch.map(|v| v.to_string())),
                r.epochs,
                r.seconds
            );
        }
        s
    }

    /// `summary.csv`: the table with full precision; RelaImpr in percent.
    pub fn summary_csv(&self) -> String {
        let mut s =
            String::from("model,variant,runs,auc_mean,auc_std,relaimpr_pct,relaimpr_base\n");
        let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
        let base = self.base.0;
        for r in &self.summary {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{}",
                r.variant.model,
                r.variant.setting_text(),
                r.runs,
                opt(r.mean),
                opt(r.std),
                opt(r.rela_impr.map(|x| x * 100.0)),
                csv_field(&base.label())
            );
        }
        s
    }

    /// `partition_gain.csv`, when the gain was computed.
    pub fn partition_csv(&self) -> Option<String> {
        let GainOutcome::Computed(g) = &self.gain else {
            return None;
        };
        let mut s = format!(
            "cell,rows,{},{},gain\n",
            csv_field(&format!("auc_{}", g.backbone.label())),
            csv_field(&format!("auc_{}", g.hmdn.label()))
        );
        let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
        for c in &g.cells {
            let _ = writeln!(
                s,
                "{},{},{},{},{}",
                csv_field(&c.cell),
                c.rows,
                opt(c.backbone),
                opt(c.hmdn),
                opt(c.gain())
            );
        }
        Some(s)
    }

    /// `results.svg`: bars of mean AUC ± std per model, or with a sweep, AUC against the swept
    /// value per hmdn-* model with the other models as horizontal lines.
    pub fn svg(&self) -> String {
        match &self.plan.sweep {
            None => svg_bars(&self.summary, &self.seeds_text()),
            Some(s) => svg_sweep(&self.summary, s, &self.seeds_text()),
        }
    }

    /// Writes results.csv, summary.csv, results.svg and partition_gain.csv (each atomically).
    pub fn write_files(&self) -> Result<()> {
        write_atomic(&self.out.join(RESULTS_CSV), self.results_csv().as_bytes())?;
        write_atomic(&self.out.join(SUMMARY_CSV), self.summary_csv().as_bytes())?;
        write_atomic(&self.out.join(PLOT_SVG), self.svg().as_bytes())?;
        if let Some(p) = self.partition_csv() {
            write_atomic(&self.out.join(PARTITION_CSV), p.as_bytes())?;
        }
        Ok(())
    }
}

/// Quotes a CSV field when it contains a delimiter, quote or line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// SVG (hand-written: a few rects, lines and texts; no plotting dependency)

const SVG_W: f64 = 800.0;
const SVG_H: f64 = 450.0;
/// Bars: hmdn-* models stand out from the baselines.
const BAR_BASE: &str = "#4c72b0";
const BAR_HMDN: &str = "#dd8452";
/// Sweep series colours (hmdn-* models), then baseline colours.
const SERIES: [&str; 2] = ["#dd8452", "#c44e52"];
const BASELINES: [&str; 6] = [
    "#4c72b0", "#55a868", "#8172b3", "#937860", "#da8bc3", "#8c8c8c",
];

/// Escapes text and attribute values.
fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A linear y axis with "nice" ticks covering `[lo, hi]`.
struct YAxis {
    lo: f64,
    hi: f64,
    step: f64,
    decimals: usize,
}

impl YAxis {
    /// Ticks at multiples of 1, 2 or 5 × 10^k, about five of them, with 10% padding.
    fn new(lo: f64, hi: f64) -> YAxis {
        let (mut lo, mut hi) = if lo.is_finite() && hi.is_finite() && lo <= hi {
            (lo, hi)
        } else {
            (0.5, 1.0)
        };
        if hi - lo < 1e-3 {
            lo -= 5e-4;
            hi += 5e-4;
        }
        let pad = 0.1 * (hi - lo);
        lo -= pad;
        hi += pad;
        let raw = (hi - lo) / 5.0;
        let mag = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .iter()
            .map(|m| m * mag)
            .find(|&s| s >= raw)
            .unwrap_or(10.0 * mag);
        let decimals = (-step.log10().floor()).max(0.0) as usize;
        YAxis {
            lo: (lo / step).floor() * step,
            hi: (hi / step).ceil() * step,
            step,
            decimals,
        }
    }

    fn ticks(&self) -> Vec<f64> {
        let n = ((self.hi - self.lo) / self.step).round() as i64;
        (0..=n).map(|i| self.lo + i as f64 * self.step).collect()
    }
}

/// Plot area in pixels.
struct Frame {
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
}

impl Frame {
    fn y(&self, ax: &YAxis, v: f64) -> f64 {
        self.bottom - (v - ax.lo) / (ax.hi - ax.lo) * (self.bottom - self.top)
    }
}

/// Header, title, subtitle, y grid with tick labels, axes and axis labels.
fn svg_frame(s: &mut String, f: &Frame, ax: &YAxis, title: &str, sub: &str, xlabel: &str) {
    let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_W}" height="{SVG_H}" viewBox="0 0 {SVG_W} {SVG_H}" font-family="Helvetica, Arial, sans-serif">"#
    );
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{SVG_W}" height="{SVG_H}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="26" text-anchor="middle" font-size="18" font-weight="bold">{}</text>"#,
        SVG_W / 2.0,
        xml(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="45" text-anchor="middle" font-size="12" fill="#555555">{}</text>"##,
        SVG_W / 2.0,
        xml(sub)
    );
    let _ = writeln!(s, r#"<g class="grid" font-size="11">"#);
    for t in ax.ticks() {
        let y = f.y(ax, t);
        let _ = writeln!(
            s,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e0e0e0"/>"##,
            f.left, f.right
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{t:.*}</text>"#,
            f.left - 6.0,
            y + 4.0,
            ax.decimals
        );
    }
    let _ = writeln!(s, "</g>");
    let _ = writeln!(
        s,
        r#"<line x1="{l:.1}" y1="{t:.1}" x2="{l:.1}" y2="{b:.1}" stroke="black"/>"#,
        l = f.left,
        t = f.top,
        b = f.bottom
    );
    let _ = writeln!(
        s,
        r#"<line x1="{l:.1}" y1="{b:.1}" x2="{r:.1}" y2="{b:.1}" stroke="black"/>"#,
        l = f.left,
        r = f.right,
        b = f.bottom
    );
    let my = (f.top + f.bottom) / 2.0;
    let _ = writeln!(
        s,
        r#"<text x="22" y="{my:.1}" text-anchor="middle" font-size="13" transform="rotate(-90 22 {my:.1})">validation AUC</text>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="13">{}</text>"#,
        (f.left + f.right) / 2.0,
        SVG_H - 10.0,
        xml(xlabel)
    );
}

/// A vertical error bar with caps from `mean − std` to `mean + std`.
fn svg_error_bar(s: &mut String, f: &Frame, ax: &YAxis, x: f64, mean: f64, std: f64) {
    let (y0, y1) = (f.y(ax, mean - std), f.y(ax, mean + std));
    let _ = writeln!(
        s,
        r#"<path class="errorbar" d="M{:.1} {y0:.1} H{:.1} M{x:.1} {y0:.1} V{y1:.1} M{:.1} {y1:.1} H{:.1}" stroke="black" stroke-width="1.2" fill="none"/>"#,
        x - 6.0,
        x + 6.0,
        x - 6.0,
        x + 6.0
    );
}

/// The y range covering every mean ± std in `rows` (NaN when there is none).
fn value_range<'a>(rows: impl Iterator<Item = &'a VariantSummary>) -> (f64, f64) {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for r in rows {
        if let Some(m) = r.mean {
            let sd = r.std.unwrap_or(0.0);
            lo = lo.min(m - sd);
            hi = hi.max(m + sd);
        }
    }
    (lo, hi)
}

fn tooltip(r: &VariantSummary) -> String {
    format!(
        "{}: AUC {} ({} runs)",
        r.variant.label(),
        fmt_mean_std(r),
        r.with_auc
    )
}

/// Bar chart: one bar (class `bar`) per row with a mean; the y axis is cut to the data range
/// because AUC differences between models are in the third decimal.
fn svg_bars(rows: &[VariantSummary], seeds: &str) -> String {
    let f = Frame {
        left: 80.0,
        right: SVG_W - 20.0,
        top: 60.0,
        bottom: SVG_H - 90.0,
    };
    let (lo, hi) = value_range(rows.iter());
    let ax = YAxis::new(lo, hi);
    let mut s = String::new();
    svg_frame(
        &mut s,
        &f,
        &ax,
        "Validation AUC per model",
        &format!("mean ± sample std over {seeds}; the y axis does not start at 0"),
        "model",
    );
    let slot = (f.right - f.left) / rows.len().max(1) as f64;
    let bw = (slot * 0.6).min(90.0);
    let rotate = rows.len() > 6;
    for (i, r) in rows.iter().enumerate() {
        let cx = f.left + (i as f64 + 0.5) * slot;
        let label_y = f.bottom + 18.0;
        if rotate {
            let _ = writeln!(
                s,
                r#"<text x="{lx:.1}" y="{label_y:.1}" text-anchor="end" font-size="12" transform="rotate(-30 {lx:.1} {label_y:.1})">{}</text>"#,
                xml(&r.variant.label()),
                // The rotated label ends just right of the bar centre, so it reads as the bar's.
                lx = cx + 6.0
            );
        } else {
            let _ = writeln!(
                s,
                r#"<text x="{cx:.1}" y="{label_y:.1}" text-anchor="middle" font-size="12">{}</text>"#,
                xml(&r.variant.label())
            );
        }
        let Some(m) = r.mean else { continue };
        let y = f.y(&ax, m);
        let colour = if r.variant.model.uses_rq() {
            BAR_HMDN
        } else {
            BAR_BASE
        };
        let _ = writeln!(
            s,
            r#"<rect class="bar" x="{:.1}" y="{y:.1}" width="{bw:.1}" height="{:.1}" fill="{colour}"><title>{}</title></rect>"#,
            cx - bw / 2.0,
            f.bottom - y,
            xml(&tooltip(r))
        );
        if let Some(sd) = r.std {
            svg_error_bar(&mut s, &f, &ax, cx, m, sd);
        }
        let top = f.y(&ax, m + r.std.unwrap_or(0.0));
        let _ = writeln!(
            s,
            r#"<text x="{cx:.1}" y="{:.1}" text-anchor="middle" font-size="11">{m:.4}</text>"#,
            top - 5.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Figure-2 style plot: AUC against the swept value (equally spaced categories), one line of
/// points (class `point`) per hmdn-* model, one dashed horizontal line (class `baseline`) per
/// other model.
fn svg_sweep(rows: &[VariantSummary], sweep: &Sweep, seeds: &str) -> String {
    let f = Frame {
        left: 80.0,
        right: SVG_W - 190.0,
        top: 60.0,
        bottom: SVG_H - 60.0,
    };
    let (lo, hi) = value_range(rows.iter());
    let ax = YAxis::new(lo, hi);
    let mut s = String::new();
    svg_frame(
        &mut s,
        &f,
        &ax,
        &format!("Effect of the {}", sweep.key.axis_label()),
        &format!("validation AUC, mean ± sample std over {seeds}"),
        sweep.key.axis_label(),
    );
    let n = sweep.values.len();
    let slot = (f.right - f.left) / n as f64;
    let x_of = |i: usize| f.left + (i as f64 + 0.5) * slot;
    for (i, v) in sweep.values.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="12">{v}</text>"#,
            x_of(i),
            f.bottom + 18.0
        );
    }
    let mut legend: Vec<(String, &str, bool)> = Vec::new();
    // Baselines first, so the series draw over them.
    for (j, r) in rows
        .iter()
        .filter(|r| r.variant.setting.is_none())
        .enumerate()
    {
        let Some(m) = r.mean else { continue };
        let colour = BASELINES[j % BASELINES.len()];
        let y = f.y(&ax, m);
        let _ = writeln!(
            s,
            r#"<line class="baseline" x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{colour}" stroke-width="1.5" stroke-dasharray="6 4"><title>{}</title></line>"#,
            f.left,
            f.right,
            xml(&tooltip(r))
        );
        legend.push((format!("{} {m:.4}", r.variant.model), colour, true));
    }
    let models: Vec<ModelKind> = {
        let mut v: Vec<ModelKind> = Vec::new();
        for r in rows.iter().filter(|r| r.variant.setting.is_some()) {
            if !v.contains(&r.variant.model) {
                v.push(r.variant.model);
            }
        }
        v
    };
    for (j, &model) in models.iter().enumerate() {
        let colour = SERIES[j % SERIES.len()];
        let pts: Vec<(f64, &VariantSummary)> = sweep
            .values
            .iter()
            .enumerate()
            .filter_map(|(i, &val)| {
                rows.iter()
                    .find(|r| {
                        r.variant.model == model && r.variant.setting == Some((sweep.key, val))
                    })
                    .filter(|r| r.mean.is_some())
                    .map(|r| (x_of(i), r))
            })
            .collect();
        let path: Vec<String> = pts
            .iter()
            .map(|(x, r)| format!("{x:.1},{:.1}", f.y(&ax, r.mean.unwrap_or(0.0))))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline class="series" points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for (x, r) in &pts {
            let m = r.mean.unwrap_or(0.0);
            if let Some(sd) = r.std {
                svg_error_bar(&mut s, &f, &ax, *x, m, sd);
            }
            let _ = writeln!(
                s,
                r#"<circle class="point" cx="{x:.1}" cy="{:.1}" r="4.5" fill="{colour}"><title>{}</title></circle>"#,
                f.y(&ax, m),
                xml(&tooltip(r))
            );
        }
        legend.push((model.name().to_string(), colour, false));
    }
    let lx = f.right + 20.0;
    for (i, (text, colour, dashed)) in legend.iter().enumerate() {
        let y = f.top + 10.0 + 22.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{lx:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{colour}" stroke-width="2"{}/>"#,
            lx + 26.0,
            if *dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="12">{}</text>"#,
            lx + 32.0,
            y + 4.0,
            xml(text)
        );
    }
    s.push_str("</svg>\n");
    s
}

// ---------------------------------------------------------------------------------------------
// Running

/// Builds the run configuration of one variant and seed: defaults, `--config`, the flags, the
/// data's fields and the sweep value, validated.
fn variant_config(
    a: &CompareArgs,
    v: Variant,
    seed: u64,
    schema: &Schema,
    vocab: &data::Vocab,
) -> Result<RunConfig> {
    let mut run = app::run_config(&FitArgs {
        model: Some(v.model.name().to_string()),
        seed: Some(seed),
        epochs: a.epochs,
        batch_size: a.batch_size,
        config: a.config.clone(),
        ..FitArgs::default()
    })?;
    data::configure_model(&mut run.model, schema, vocab)?;
    if let Some((key, value)) = v.setting {
        if key == SweepKey::Depth && run.model.rq.mode == RqMode::Explicit {
            return Err(Error::Config(
                "--sweep depth needs implicit residual quantization: in explicit mode the depth is the number of distribution fields (set rq.mode = \"implicit\" in --config)".into(),
            ));
        }
        key.apply(&mut run, value);
    }
    run.model
        .validate()
        .map_err(|e| Error::Config(format!("{}: {e}", v.label())))?;
    Ok(run)
}

/// Runs the comparison described by `a`, reading CSV caches as `opts` says, writes the result
/// files into `a.out` and returns everything measured. Nothing is trained if the arguments,
/// data or any run's configuration are invalid. Runs on the current rayon pool (`a.threads` is
/// applied by [`run`]); progress goes to stderr, one line per finished run.
pub fn compare(a: &CompareArgs, opts: &LoadOptions) -> Result<Comparison> {
    let plan = Plan::new(a)?;
    train::prepare_out_dir(&a.out)?;
    let schema = Schema::load(&a.schema)?;
    let (train_ds, vocab) = Dataset::open_train(&a.train, &schema, opts)?;
    let val_ds = Dataset::open(&a.val, &schema, &vocab, opts)?;
    let n_runs = plan.variants.len() * plan.seeds.len();
    eprintln!(
        "compare: {} training rows, {} validation rows; {} configurations × {} = {n_runs} runs into {}",
        train_ds.rows(),
        val_ds.rows(),
        plan.variants.len(),
        if plan.seeds.len() == 1 {
            "1 seed".to_string()
        } else {
            format!("{} seeds", plan.seeds.len())
        },
        a.out.display()
    );
    // Every configuration is built and checked before the first (possibly long) run starts.
    let mut jobs = Vec::with_capacity(n_runs);
    for &v in &plan.variants {
        for &seed in &plan.seeds {
            jobs.push((v, seed, variant_config(a, v, seed, &schema, &vocab)?));
        }
    }
    let first = &jobs[0].2;
    let mut cmp = Comparison {
        out: a.out.clone(),
        epochs: first.train.epochs,
        batch_size: first.train.batch_size,
        task: first.model.tasks.first().cloned().unwrap_or_default(),
        base: plan.base(),
        runs: Vec::with_capacity(n_runs),
        summary: Vec::new(),
        gain: GainOutcome::Skipped("no runs yet".into()),
        plan,
    };
    for (i, (v, seed, run)) in jobs.iter().enumerate() {
        let dir = a.out.join(v.dir_name()).join(format!("seed-{seed}"));
        let t0 = Instant::now();
        let s = train::fit(
            run,
            &FitInputs {
                train: &train_ds,
                val: &val_ds,
                schema: &schema,
                vocab: &vocab,
                out: &dir,
                resume: false,
                quiet: true,
            },
        )
        .map_err(|e| Error::Other(format!("compare: {} seed {seed}: {e}", v.label())))?;
        let seconds = t0.elapsed().as_secs_f64();
        let task = s.best_report.as_ref().and_then(|r| r.tasks.first());
        let rec = RunRecord {
            variant: *v,
            seed: *seed,
            auc: s.best_auc,
            logloss: task.map(|t| t.logloss),
            best_epoch: s.best_epoch,
            epochs: s.epochs_run,
            seconds,
            partition: s
                .best_report
                .as_ref()
                .map(|r| r.partition.clone())
                .unwrap_or_default(),
            cells: task.map(|t| t.cells.clone()).unwrap_or_default(),
        };
        eprintln!(
            "[{}/{n_runs}] {} seed {seed}: AUC {}, best epoch {} of {}, {seconds:.1} s",
            i + 1,
            v.label(),
            fmt_auc(rec.auc),
            rec.best_epoch
                .map(|e| e.to_string())
                .unwrap_or_else(|| "-".into()),
            rec.epochs
        );
        cmp.runs.push(rec);
        // Keep what is finished on disk, so an interrupted comparison loses at most one run.
        write_atomic(&a.out.join(RESULTS_CSV), cmp.results_csv().as_bytes())?;
    }
    cmp.summary = summarize(&cmp.plan.variants, &cmp.runs, cmp.base.0);
    cmp.gain = partition_gain(&cmp.summary, &cmp.runs);
    cmp.write_files()?;
    Ok(cmp)
}

/// `hmdn-cpu compare`: runs the comparison on `--threads` workers with the CLI's cache
/// directory, prints the tables and says where the files are.
pub fn run(a: CompareArgs) -> Result<()> {
    let opts = LoadOptions {
        cache_dir: Some(app::default_cache_dir()),
        ..LoadOptions::default()
    };
    let threads = a.threads;
    let cmp = app::with_threads(threads, || compare(&a, &opts))?;
    print!("{}", cmp.report());
    println!();
    println!(
        "wrote {}, {}, {}{} in {}",
        RESULTS_CSV,
        SUMMARY_CSV,
        PLOT_SVG,
        if matches!(cmp.gain, GainOutcome::Computed(_)) {
            format!(", {PARTITION_CSV}")
        } else {
            String::new()
        },
        cmp.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_std_by_hand() {
        // mean 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5; 5 / 3 -> sqrt = 1.29099...
        let (m, s) = mean_std(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert!((m - 2.5).abs() < 1e-15);
        assert!((s.unwrap() - (5.0f64 / 3.0).sqrt()).abs() < 1e-15);
        assert_eq!(mean_std(&[0.7]), Some((0.7, None)));
        assert_eq!(mean_std(&[]), None);
    }

    #[test]
    fn rela_impr_by_hand() {
        // (0.8 - 0.5) / (0.75 - 0.5) - 1 = 0.3 / 0.25 - 1 = 0.2.
        assert!((rela_impr(0.8, 0.75).unwrap() - 0.2).abs() < 1e-12);
        assert!((rela_impr(0.75, 0.75).unwrap()).abs() < 1e-15);
        assert_eq!(rela_impr(0.8, 0.5), None);
        assert_eq!(rela_impr(0.8, 0.4), None);
    }

    #[test]
    fn sweep_parsing() {
        let s = Sweep::parse("depth=1,2,3,6,9").unwrap();
        assert_eq!(s.key, SweepKey::Depth);
        assert_eq!(s.values, vec![1, 2, 3, 6, 9]);
        assert_eq!(
            Sweep::parse(" K = 16, 64 ").unwrap().key,
            SweepKey::CodebookSize
        );
        assert_eq!(Sweep::parse("D=3").unwrap().values, vec![3]);
        for bad in [
            "depth",
            "depth=",
            "depth=0",
            "depth=1,x",
            "depth=2,2",
            "alpha=1",
        ] {
            let e = Sweep::parse(bad).unwrap_err().to_string();
            assert!(e.contains("--sweep"), "{bad}: {e}");
        }
        let e = Sweep::parse("alpha=1").unwrap_err().to_string();
        assert!(e.contains("depth") && e.contains("codebook_size"), "{e}");
    }

    #[test]
    fn axis_ticks_cover_the_range() {
        for (lo, hi) in [(0.771, 0.779), (0.5, 0.95), (0.7, 0.7), (0.61, 0.6253)] {
            let ax = YAxis::new(lo, hi);
            let t = ax.ticks();
            assert!(ax.lo <= lo && ax.hi >= hi, "{lo} {hi}");
            assert!((3..=12).contains(&t.len()), "{lo} {hi}: {t:?}");
        }
    }

    #[test]
    fn text_table_aligns_columns() {
        let t = text_table(
            &["a", "bb"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["±".into(), "22".into()],
            ],
            &[false, true],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "  a    bb");
        assert_eq!(lines[1], "  ---  --");
        assert_eq!(lines[2], "  xyz   1");
        assert_eq!(lines[3], "  ±    22");
    }
}
