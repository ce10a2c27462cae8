//! The end-to-end `bench` command: steady-state training and inference throughput on
//! synthetic data shaped like processed Ali-CCP ("aliccp-shape").

use crate::config::{FieldSpec, ModelConfig, ModelKind};
use crate::error::Result;
use crate::model::profile::PhaseTimes;
use crate::model::Model;
use crate::optim::{OptimConfig, Optimizer};
use crate::train::train_step;
use crate::Batch;
use rand::{Rng, SeedableRng};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Vocabulary sizes of the 23 categorical fields of processed Ali-CCP (torch-rechub layout).
pub const ALICCP_VOCABS: [usize; 23] = [
    238635, 467298, 9, 14, 3, 8, 4, 4, 3, 5, 100000, 50000, 20000, 10000, 5000, 1000, 1000, 1000,
    500, 200, 100, 50, 20,
];
/// Indices (into [`ALICCP_VOCABS`]) of the three distribution fields (vocab 3, 5, 3).
pub const ALICCP_DIST_FIELDS: [usize; 3] = [4, 9, 8];
/// Click rate of the synthetic labels.
pub const ALICCP_CTR: f64 = 0.04;

/// The aliccp-shape model configuration: e = 16 (x = 368), z = 48, K = 64, D = 6, 3 experts,
/// MLP 128-64-32.
pub fn aliccp_shape_config(model: ModelKind) -> ModelConfig {
    let fields: Vec<FieldSpec> = ALICCP_VOCABS
        .iter()
        .enumerate()
        .map(|(i, &v)| FieldSpec {
            name: format!("f{i}"),
            vocab_size: v,
        })
        .collect();
    let distribution = ALICCP_DIST_FIELDS
        .iter()
        .map(|&i| format!("f{i}"))
        .collect();
    ModelConfig {
        model,
        fields,
        distribution,
        ..ModelConfig::default()
    }
}

/// Pre-generated batches with uniform random ids and Bernoulli(4%) clicks.
pub struct SyntheticBatches {
    /// Rows per batch.
    pub batch: usize,
    cat: Vec<Vec<u32>>,
    labels: Vec<Vec<f32>>,
}

impl SyntheticBatches {
    /// Bytes that [`SyntheticBatches::new`] allocates for `n` batches of `batch` rows (ids
    /// and labels), for memory checks made before it runs.
    pub fn bytes_for(cfg: &ModelConfig, batch: usize, n: usize) -> f64 {
        4.0 * (n * (cfg.fields.len() + cfg.tasks.len())) as f64 * batch as f64
    }

    /// `n` batches of `batch` rows for a model configuration.
    pub fn new(cfg: &ModelConfig, batch: usize, n: usize, seed: u64) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let f = cfg.fields.len();
        let t = cfg.tasks.len();
        let mut cat = Vec::with_capacity(n);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let mut c = vec![0u32; batch * f];
            for row in c.chunks_exact_mut(f) {
                for (v, spec) in row.iter_mut().zip(&cfg.fields) {
                    *v = rng.gen_range(0..spec.vocab_size as u32);
                }
            }
            let l: Vec<f32> = (0..batch * t)
                .map(|_| if rng.gen_bool(ALICCP_CTR) { 1.0 } else { 0.0 })
                .collect();
            cat.push(c);
            labels.push(l);
        }
        SyntheticBatches { batch, cat, labels }
    }

    /// Batch `i` (cycling).
    pub fn get(&self, i: usize) -> Batch<'_> {
        let k = i % self.cat.len();
        Batch {
            rows: self.batch,
            cat: &self.cat[k],
            num: &[],
            labels: &self.labels[k],
        }
    }
}

/// Multiply-adds ×2 per sample of the model's dense layers, forward only, and for a training
/// step (forward + backward ≈ 3× the forward GEMM work), counted analytically from the shapes.
/// The quantizer's argmin counts `quantized_share` of a row per sample: the fraction of a
/// batch's rows it actually ran on (1 when every row is quantized; the number of distinct
/// distribution keys over the batch size when the model quantizes those only, see
/// [`Model::quantized_rows`]), so that no work that was not done is counted. For the same
/// reason, MMoE's expert first layers (PEPNet: EPNet's first layer, its `x` part) count
/// `factored` instead of their unfactored multiply-adds when the model ran them factored
/// ([`Model::factored_flops_per_sample`]).
pub fn flops_per_sample(
    cfg: &ModelConfig,
    quantized_share: f64,
    factored: Option<(f64, f64)>,
) -> (f64, f64) {
    let lin = |i: usize, o: usize| 2.0 * (i * o) as f64;
    let mlp = |mut d: usize| {
        let mut s = 0.0;
        for &h in &cfg.hidden {
            s += lin(d, h);
            d = h;
        }
        s
    };
    let x = cfg.x_dim();
    let g = cfg.gate_dim();
    let t = cfg.tasks.len() as f64;
    let last = *cfg.hidden.last().unwrap_or(&1);
    let mut fwd = match cfg.model {
        ModelKind::Dnn | ModelKind::WideDeep | ModelKind::SharedBottom => mlp(x) + t * lin(last, 1),
        ModelKind::Dcn => mlp(x) + cfg.cross_layers as f64 * 4.0 * x as f64 + t * lin(x + last, 1),
        ModelKind::Mmoe | ModelKind::HmdnMmoe => {
            cfg.n_experts as f64 * mlp(x) + t * (lin(g, cfg.n_experts) + lin(last, 1))
        }
        ModelKind::Pepnet | ModelKind::HmdnPepnet => {
            let gn = |i: usize, o: usize| lin(i, cfg.gatenu_hidden) + lin(cfg.gatenu_hidden, o);
            let mut s = gn(g + x, x) + mlp(x) + t * lin(last, 1);
            for &h in &cfg.hidden {
                s += gn(g + x, h);
            }
            s
        }
    };
    let mut train = 3.0 * fwd;
    if matches!(cfg.model, ModelKind::Pepnet | ModelKind::HmdnPepnet) {
        // GateNU inputs are [g, sg(x)]: no input gradient for their x columns.
        train -= (1 + cfg.hidden.len()) as f64 * lin(x, cfg.gatenu_hidden);
    }
    match (factored, cfg.model) {
        (Some((f_fwd, f_train)), ModelKind::Mmoe | ModelKind::HmdnMmoe) => {
            let first = cfg.n_experts as f64 * lin(x, cfg.hidden[0]);
            fwd += f_fwd - first;
            train += f_train - 3.0 * first;
        }
        (Some((f_fwd, f_train)), ModelKind::Pepnet | ModelKind::HmdnPepnet) => {
            // EPNet's first layer, x part: forward and dW (no input gradient).
            let xpart = lin(x, cfg.gatenu_hidden);
            fwd += f_fwd - xpart;
            train += f_train - 2.0 * xpart;
        }
        _ => {}
    }
    if cfg.model.uses_rq() {
        // argmin over K codes of width z at each of D levels (forward only).
        let rq =
            2.0 * (cfg.rq.codebook_size * cfg.xb_dim() * cfg.rq_depth()) as f64 * quantized_share;
        fwd += rq;
        train += rq;
    }
    (fwd, train)
}

/// Results of one `bench` run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchReport {
    /// Model name.
    pub model: String,
    /// Rows per batch.
    pub batch: usize,
    /// Rayon threads.
    pub threads: usize,
    /// Median training throughput (samples/s).
    pub train_samples_per_s: f64,
    /// Median inference throughput (samples/s).
    pub infer_samples_per_s: f64,
    /// Achieved GFLOP/s in training (analytic FLOP count / time).
    pub train_gflops: f64,
    /// Achieved GFLOP/s in inference.
    pub infer_gflops: f64,
    /// Peak resident set size of the process (MiB).
    pub peak_rss_mib: f64,
    /// Every training sample (samples/s) the median was taken from.
    pub train_samples: Vec<f64>,
    /// SIMD path.
    pub simd: String,
    /// Share of a training step's time per phase (name, fraction), when measured: the
    /// model's phases (see [`crate::model::profile::Phase`]) and `optimizer` (the rest of
    /// `train_step`: the Adam updates). Phases a model does not have are left out.
    pub phases: Vec<(String, f64)>,
    /// Mean time of one training step in the profiled pass (ms).
    pub profiled_step_ms: f64,
    /// Share of an inference forward's time per phase (name, fraction).
    pub infer_phases: Vec<(String, f64)>,
}

/// Peak RSS of this process in MiB (Linux `VmHWM`), 0 when unknown.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// The benchmark's model (f32, seed 1), optimiser and 16 synthetic batches (seed 2), k-means
/// initialised on the first batch for hmdn-* as in training.
fn setup(
    model: ModelKind,
    batch: usize,
) -> Result<(ModelConfig, Model<f32>, Optimizer<f32>, SyntheticBatches)> {
    let cfg = aliccp_shape_config(model);
    let mut m = Model::<f32>::new(&cfg, 1)?;
    // For A/B runs of the factored expert layer (`hmdn-cpu bench` documents the variable).
    if std::env::var_os("HMDN_NO_FIELD_FACTORING").is_some() {
        m.set_field_factoring(false);
    }
    let optim = OptimConfig::default();
    let opt = Optimizer::new(&m.params, optim.clone());
    // 16 batches of ids and labels, then the model's buffers: refused up front if they
    // cannot fit, rather than aborting in an allocation.
    let data_bytes = SyntheticBatches::bytes_for(&cfg, batch, 16);
    crate::memory::check_batch_memory(&cfg, &optim, true, batch, data_bytes, "--batch")?;
    let data = SyntheticBatches::new(&cfg, batch, 16, 2);
    if cfg.model.uses_rq() && cfg.rq.kmeans_init {
        m.kmeans_init(&data.get(0), &mut rand::rngs::StdRng::seed_from_u64(3));
    }
    Ok((cfg, m, opt, data))
}

/// Most steps one `bench --serve` request may ask for.
pub const MAX_SERVE_STEPS: usize = 1_000_000;

/// `bench --serve`: sets the benchmark up as [`run`] does (plus 5 warm-up training steps and
/// inference forwards), prints `{"ready":true,...}`, then answers one request per input line
/// with one JSON line, until `quit` or the end of the input:
///
/// - `train N` → `{"op":"train","batch":B,"step_s":[…]}`: `N` training steps, each timed;
/// - `infer N` → the same for `N` inference forwards ([`Model::infer`]) on training batches;
/// - `ab N SWITCH` → `{"op":"ab","switch":S,"off_s":[…],"on_s":[…]}`: `N` training steps
///   with the model switch `SWITCH` (`lanes`: [`Model::set_training_lanes`], `factoring`:
///   [`Model::set_field_factoring`], `distinct`: [`Model::set_distinct_keys`], `awake`:
///   [`hmdn_kernels::par::set_keep_workers_awake`], `infer-pieces`:
///   [`Model::set_inference_chunk_rows`] at [`crate::model::INFER_CHUNK_ROWS`] or 0) off and on
///   in turn, step by step, each timed, the switch left on afterwards. Steps a few
///   milliseconds apart see the same host speed, so their medians compare two engine
///   variants far more finely than separate runs can (an in-process A/B);
/// - `ab-infer N SWITCH` → the same with inference forwards instead of training steps.
///
/// A line it cannot read, or one asking for more than [`MAX_SERVE_STEPS`] steps, gets
/// `{"error":"line L: …"}` and the loop goes on. This lets a
/// driver (`benches/records/paired.py`) alternate short bursts of hmdn-cpu and PyTorch steps,
/// so that both see the same host speed — the host's drift over minutes is larger than the
/// differences being measured.
pub fn serve(
    model: ModelKind,
    batch: usize,
    input: impl std::io::BufRead,
    mut out: impl std::io::Write,
) -> Result<()> {
    let (_, mut m, mut opt, data) = setup(model, batch)?;
    let mut k = 0;
    for _ in 0..5 {
        train_step(&mut m, &mut opt, &data.get(k))?;
        m.infer(&data.get(k));
        k += 1;
    }
    let io = |e: std::io::Error| crate::error::Error::Other(format!("bench --serve: {e}"));
    let ready = serde_json::json!({
        "ready": true,
        "model": model.name(),
        "batch": batch,
        "threads": rayon::current_num_threads(),
    });
    writeln!(out, "{ready}").map_err(io)?;
    out.flush().map_err(io)?;
    for (no, line) in input.lines().enumerate() {
        let line = line.map_err(io)?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let request = match words.as_slice() {
            [] => continue,
            ["quit"] => break,
            [op @ ("train" | "infer"), n] => n.parse::<usize>().ok().map(|n| (*op, n, None)),
            [op @ ("ab" | "ab-infer"), n, switch @ ("lanes" | "factoring" | "distinct" | "awake" | "infer-pieces")] => {
                n.parse::<usize>().ok().map(|n| (*op, n, Some(*switch)))
            }
            _ => None,
        };
        let request = match request {
            // Each request answers its step times in one line, kept in memory until then.
            Some((_, n, _)) if n > MAX_SERVE_STEPS => Err(format!(
                "at most {MAX_SERVE_STEPS} steps per request, got {n}"
            )),
            Some(r) => Ok(r),
            None => Err(
                "expected `train N`, `infer N`, `ab N SWITCH`, `ab-infer N SWITCH` \
                 (SWITCH: lanes, factoring, distinct or awake) or `quit`"
                    .to_string(),
            ),
        };
        let (op, n, switch) = match request {
            Ok(r) => r,
            Err(what) => {
                let msg = format!("line {}: {what}", no + 1);
                writeln!(out, "{}", serde_json::json!({ "error": msg })).map_err(io)?;
                out.flush().map_err(io)?;
                continue;
            }
        };
        if let Some(switch) = switch {
            let set = |m: &mut Model<f32>, on: bool| match switch {
                "lanes" => m.set_training_lanes(on),
                "factoring" => m.set_field_factoring(on),
                "awake" => hmdn_kernels::par::set_keep_workers_awake(on),
                "infer-pieces" => m.set_inference_chunk_rows(if on {
                    crate::model::INFER_CHUNK_ROWS
                } else {
                    0
                }),
                _ => m.set_distinct_keys(on),
            };
            let (mut off_s, mut on_s) = (Vec::with_capacity(n), Vec::with_capacity(n));
            for i in 0..n {
                let on = i % 2 == 1;
                set(&mut m, on);
                let t0 = Instant::now();
                if op == "ab" {
                    train_step(&mut m, &mut opt, &data.get(k))?;
                } else {
                    m.infer(&data.get(k));
                }
                let dt = t0.elapsed().as_secs_f64();
                if on {
                    on_s.push(dt);
                } else {
                    off_s.push(dt);
                }
                k += 1;
            }
            set(&mut m, true);
            let reply = serde_json::json!({
                "op": op, "batch": batch, "switch": switch, "off_s": off_s, "on_s": on_s,
            });
            writeln!(out, "{reply}").map_err(io)?;
            out.flush().map_err(io)?;
            continue;
        }
        let mut step_s = Vec::with_capacity(n);
        for _ in 0..n {
            let t0 = Instant::now();
            if op == "train" {
                train_step(&mut m, &mut opt, &data.get(k))?;
            } else {
                m.infer(&data.get(k));
            }
            step_s.push(t0.elapsed().as_secs_f64());
            k += 1;
        }
        let reply = serde_json::json!({ "op": op, "batch": batch, "step_s": step_s });
        writeln!(out, "{reply}").map_err(io)?;
        out.flush().map_err(io)?;
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

/// Trains `steps` steps on `data` from batch `*k` on with the model's phase profile on, and
/// returns each phase's share of the step time plus the mean step time. The profile times
/// forward and backward; the rest of `train_step` — the optimiser update — is the step time
/// minus the profiled phases.
fn profile_steps(
    m: &mut Model<f32>,
    opt: &mut Optimizer<f32>,
    data: &SyntheticBatches,
    k: &mut usize,
    steps: usize,
) -> Result<(Vec<(String, f64)>, Duration)> {
    m.profile = Some(PhaseTimes::default());
    let t0 = Instant::now();
    for _ in 0..steps {
        train_step(m, opt, &data.get(*k))?;
        *k += 1;
    }
    let total = t0.elapsed();
    let p = m.profile.take().expect("profile set above");
    let optimizer = total.saturating_sub(p.total());
    let secs = total.as_secs_f64().max(f64::MIN_POSITIVE);
    let phases = p
        .entries()
        .into_iter()
        .chain([("optimizer", optimizer)])
        .filter(|(_, d)| !d.is_zero())
        .map(|(name, d)| (name.to_string(), d.as_secs_f64() / secs))
        .collect();
    // (A `u32` divisor would wrap at 2^32 steps.)
    let per_step = Duration::from_secs_f64(total.as_secs_f64() / steps.max(1) as f64);
    Ok((phases, per_step))
}

/// One line on a terminal's stderr saying where a long benchmark is, rewritten in place
/// between the timed loops (never inside them) and cleared when dropped, so that an error
/// or the report starts on a clean line. Silent when stderr is not a terminal.
struct StatusLine {
    prefix: String,
    tty: bool,
}

impl StatusLine {
    fn new(prefix: String) -> Self {
        StatusLine {
            prefix,
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn show(&self, what: &str) {
        if self.tty {
            eprint!("\r\x1b[2K{}: {what}", self.prefix);
        }
    }
}

impl Drop for StatusLine {
    fn drop(&mut self) {
        if self.tty {
            eprint!("\r\x1b[2K");
        }
    }
}

/// Runs the benchmark on the current rayon pool: `steps` timed training steps split into 5
/// samples after a warm-up (k-means on the first batch for hmdn-*, as in training), one
/// profiled pass of `steps / 5` steps for the phase breakdown, then the same timing for
/// inference.
pub fn run(model: ModelKind, batch: usize, steps: usize) -> Result<BenchReport> {
    let status = StatusLine::new(format!("bench {} at batch {batch}", model.name()));
    status.show("setting up the model and the data");
    let (cfg, mut m, mut opt, data) = setup(model, batch)?;
    let warmup = 5.max(steps / 10);
    status.show("warm-up");
    for i in 0..warmup {
        train_step(&mut m, &mut opt, &data.get(i))?;
    }
    let rounds = 5;
    let per = steps.div_ceil(rounds).max(1);
    let mut train = Vec::new();
    let mut k = warmup;
    for r in 0..rounds {
        status.show(&format!("training, round {} of {rounds}", r + 1));
        let t0 = Instant::now();
        for _ in 0..per {
            train_step(&mut m, &mut opt, &data.get(k))?;
            k += 1;
        }
        train.push((per * batch) as f64 / t0.elapsed().as_secs_f64());
    }
    status.show("training, phase profile");
    let (phases, step_time) = profile_steps(&mut m, &mut opt, &data, &mut k, per)?;
    let train_share = m.quantized_rows() as f64 / batch.max(1) as f64;
    let train_factored = m.factored_flops_per_sample();
    let mut infer = Vec::new();
    for i in 0..warmup {
        m.infer(&data.get(i));
    }
    for r in 0..rounds {
        status.show(&format!("inference, round {} of {rounds}", r + 1));
        let t0 = Instant::now();
        for _ in 0..per {
            m.infer(&data.get(k));
            k += 1;
        }
        infer.push((per * batch) as f64 / t0.elapsed().as_secs_f64());
    }
    // Inference breakdown: forwards only, so the phases cover the whole time.
    status.show("inference, phase profile");
    m.profile = Some(PhaseTimes::default());
    let t0 = Instant::now();
    for _ in 0..per {
        m.infer(&data.get(k));
        k += 1;
    }
    let total = t0.elapsed().as_secs_f64().max(f64::MIN_POSITIVE);
    let p = m.profile.take().expect("profile set above");
    let infer_phases = p
        .entries()
        .into_iter()
        .filter(|(_, d)| !d.is_zero())
        .map(|(name, d)| (name.to_string(), d.as_secs_f64() / total))
        .collect();
    drop(status);
    let infer_share = m.quantized_rows() as f64 / batch.max(1) as f64;
    let ff = flops_per_sample(&cfg, infer_share, m.factored_flops_per_sample()).0;
    let tf = flops_per_sample(&cfg, train_share, train_factored).1;
    let samples = train.clone();
    let ts = median(&mut train);
    let is = median(&mut infer);
    Ok(BenchReport {
        model: model.name().to_string(),
        batch,
        threads: rayon::current_num_threads(),
        train_samples_per_s: ts,
        infer_samples_per_s: is,
        train_gflops: ts * tf / 1e9,
        infer_gflops: is * ff / 1e9,
        peak_rss_mib: peak_rss_mib(),
        train_samples: samples,
        simd: String::new(),
        phases,
        profiled_step_ms: step_time.as_secs_f64() * 1e3,
        infer_phases,
    })
}
