//! Synthetic click data with a known hierarchical multi-distribution structure (`gen`).
//!
//! The world (drawn once from the seed):
//! - **Population** p = gender × age group (2 × 4 = 8), with fixed population shares.
//! - **Users** (4,000): a population, an **interest cluster** c ∈ 0..4 drawn from a
//!   population-specific distribution, an activity level (numeric), a small bias, and a
//!   Zipf-like visit frequency.
//! - **Items** (1,500): a category k ∈ 0..12, a latent vector v ∈ R⁴ (not in the file; learnable
//!   through `item_id`), a popularity bias and a price (numeric, category-dependent).
//! - **Scenario** s ∈ {home, search, cart} per impression, drawn from a population-specific
//!   distribution; it also shifts which categories are shown.
//!
//! A row's cell is (p, s, c): 8 × 3 × 4 = 96 cells. Each level of the hierarchy adds to both the
//! click propensity and the feature effects, so a gate that knows the cell helps:
//! ```text
//! logit = base + α_p + β_ps + γ_psc                      (propensity: one shift per level)
//!       + ⟨w_p + w_ps + w_psc, v_item⟩                   (item-vector weights per level)
//!       + (θ_p + θ_ps + θ_psc) · z(log price)            (price sensitivity per level)
//!       + π_c[k]                                          (interest cluster × category affinity)
//!       + b_item + b_user + 0.2 · z(activity)
//! p_true = sigmoid(logit),  label ~ Bernoulli(p_true)
//! ```
//! `p_flat` ([`SynthRow::p_flat`], not written to the file) is the same logit with every
//! cell-dependent term (α+β+γ, the w's, the θ's and π) replaced by its average over cells
//! weighted by how often each cell occurs: the best a model could do if it used the same item
//! and user effects but ignored the hierarchy. The gap between AUC(p_true) and AUC(p_flat) is
//! what modelling the hierarchy can win.
//!
//! File columns: `label,p_true,user_id,item_id,item_cat,gender,age,scenario,interest,price,activity`.

use crate::data::rng::SplitMix64;
use crate::data::schema::{builtin_origin, Schema, DEFAULT_MIN_COUNT};
use crate::error::{Error, Result};
use std::io::{BufWriter, Write};
use std::path::Path;

const GENDERS: [&str; 2] = ["F", "M"];
const GENDER_SHARE: [f64; 2] = [0.45, 0.55];
const AGES: [&str; 4] = ["18-24", "25-34", "35-49", "50+"];
const AGE_SHARE: [f64; 4] = [0.25, 0.35, 0.25, 0.15];
const SCENARIOS: [&str; 3] = ["home", "search", "cart"];
const SCENARIO_BASE: [f64; 3] = [0.55, 0.3, 0.15];
const N_POP: usize = 8;
const N_SCEN: usize = 3;
const N_CLUSTER: usize = 4;
const N_CELLS: usize = N_POP * N_SCEN * N_CLUSTER;
const N_USERS: usize = 4000;
const N_ITEMS: usize = 1500;
const N_CATS: usize = 12;
/// Width of the latent item vector.
const D: usize = 4;
/// Intercept; sets the base click rate (measured CTR ≈ 0.17).
const BASE: f64 = -2.3;
/// Standard deviations of the per-level terms (population, scenario, cluster).
const SHIFT_SD: f64 = 0.35;
const W_SD: f64 = 0.45;
const THETA_SD: f64 = 0.3;
const AFFINITY_SD: f64 = 0.8;

/// The columns written by [`generate`].
pub const SYNTH_COLUMNS: [&str; 11] = [
    "label", "p_true", "user_id", "item_id", "item_cat", "gender", "age", "scenario", "interest",
    "price", "activity",
];

/// The schema of files written by [`generate`]: distribution fields gender → age → scenario →
/// interest, Shared-Bottom domain `scenario`, partition cells gender × age × scenario, gAUC per
/// `user_id`; `p_true` is read only for the Bayes AUC.
pub fn synth_schema() -> Schema {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let schema = Schema {
        label: s(&["label"]),
        categorical: s(&[
            "user_id", "item_id", "item_cat", "gender", "age", "scenario", "interest",
        ]),
        numeric: s(&["price", "activity"]),
        distribution: s(&["gender", "age", "scenario", "interest"]),
        domain: Some("scenario".into()),
        partition: Some(s(&["gender", "age", "scenario"])),
        ignore: s(&["p_true"]),
        user: Some("user_id".into()),
        min_count: DEFAULT_MIN_COUNT,
        hash_buckets: Default::default(),
        delimiter: Some("comma".into()),
        header: true,
        columns: Vec::new(),
    };
    schema
        .validate(&builtin_origin("synth"))
        .expect("the built-in synth schema is valid");
    schema
}

/// One generated impression.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthRow {
    /// User id (0..4000).
    pub user: u32,
    /// Item id (0..1500).
    pub item: u32,
    /// Item category (0..12).
    pub category: u32,
    /// Index into ["F", "M"].
    pub gender: u8,
    /// Index into ["18-24", "25-34", "35-49", "50+"].
    pub age: u8,
    /// Index into ["home", "search", "cart"].
    pub scenario: u8,
    /// Interest cluster (0..4).
    pub interest: u8,
    /// Item price.
    pub price: f64,
    /// User activity level.
    pub activity: f64,
    /// True click probability.
    pub p_true: f64,
    /// Click probability with the hierarchy averaged out (see the module docs).
    pub p_flat: f64,
    /// Sampled click (0 or 1).
    pub label: u8,
}

struct User {
    pop: usize,
    cluster: usize,
    bias: f64,
    z_activity: f64,
    activity: f64,
}

struct Item {
    v: [f64; D],
    bias: f64,
    price: f64,
    z_price: f64,
}

/// Cumulative distribution of non-negative weights, sampled by binary search.
struct Cdf(Vec<f64>);

impl Cdf {
    fn new(w: &[f64]) -> Self {
        let total: f64 = w.iter().sum();
        let mut acc = 0.0;
        Cdf(w
            .iter()
            .map(|x| {
                acc += x / total;
                acc
            })
            .collect())
    }

    fn sample(&self, rng: &mut SplitMix64) -> usize {
        let u = rng.uniform();
        self.0.partition_point(|&c| c <= u).min(self.0.len() - 1)
    }
}

fn softmax_weights(logits: &[f64]) -> Vec<f64> {
    let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The drawn world: populations, users, items and every cell's parameters.
struct World {
    users: Vec<User>,
    user_cdf: Cdf,
    items: Vec<Item>,
    items_by_cat: Vec<Vec<u32>>,
    scen_given_pop: Vec<Cdf>,
    cat_given_scen: Vec<Cdf>,
    /// Per cell (p, s, c) flattened as (p·3 + s)·4 + c: shift, w, θ.
    shift: Vec<f64>,
    w: Vec<[f64; D]>,
    theta: Vec<f64>,
    /// π_c[k].
    affinity: Vec<[f64; N_CATS]>,
    /// Cell-frequency-weighted averages of the cell terms.
    mean_shift: f64,
    mean_w: [f64; D],
    mean_theta: f64,
    mean_affinity: [f64; N_CATS],
}

fn cell(p: usize, s: usize, c: usize) -> usize {
    (p * N_SCEN + s) * N_CLUSTER + c
}

impl World {
    fn new(rng: &mut SplitMix64) -> World {
        let mut normal = |sd: f64| sd * rng.normal();
        // Level terms: per population, per (population, scenario), per full cell.
        let alpha: Vec<f64> = (0..N_POP).map(|_| normal(SHIFT_SD)).collect();
        let beta: Vec<f64> = (0..N_POP * N_SCEN).map(|_| normal(SHIFT_SD)).collect();
        let gamma: Vec<f64> = (0..N_CELLS).map(|_| normal(SHIFT_SD)).collect();
        let vec = |normal: &mut dyn FnMut(f64) -> f64| -> [f64; D] {
            std::array::from_fn(|_| normal(W_SD))
        };
        let w_p: Vec<[f64; D]> = (0..N_POP).map(|_| vec(&mut normal)).collect();
        let w_ps: Vec<[f64; D]> = (0..N_POP * N_SCEN).map(|_| vec(&mut normal)).collect();
        let w_psc: Vec<[f64; D]> = (0..N_CELLS).map(|_| vec(&mut normal)).collect();
        let th_p: Vec<f64> = (0..N_POP).map(|_| normal(THETA_SD)).collect();
        let th_ps: Vec<f64> = (0..N_POP * N_SCEN).map(|_| normal(THETA_SD)).collect();
        let th_psc: Vec<f64> = (0..N_CELLS).map(|_| normal(THETA_SD)).collect();
        let affinity: Vec<[f64; N_CATS]> = (0..N_CLUSTER)
            .map(|_| std::array::from_fn(|_| normal(AFFINITY_SD)))
            .collect();
        // Population-specific scenario and cluster mixes.
        let scen_probs: Vec<Vec<f64>> = (0..N_POP)
            .map(|_| {
                let l: Vec<f64> = SCENARIO_BASE.iter().map(|b| b.ln() + normal(0.4)).collect();
                softmax_weights(&l)
            })
            .collect();
        let clu_probs: Vec<Vec<f64>> = (0..N_POP)
            .map(|_| softmax_weights(&(0..N_CLUSTER).map(|_| normal(1.0)).collect::<Vec<_>>()))
            .collect();
        let cat_probs: Vec<Vec<f64>> = (0..N_SCEN)
            .map(|_| softmax_weights(&(0..N_CATS).map(|_| normal(0.7)).collect::<Vec<_>>()))
            .collect();

        let mut shift = vec![0.0; N_CELLS];
        let mut w = vec![[0.0; D]; N_CELLS];
        let mut theta = vec![0.0; N_CELLS];
        for p in 0..N_POP {
            for s in 0..N_SCEN {
                for c in 0..N_CLUSTER {
                    let i = cell(p, s, c);
                    let ps = p * N_SCEN + s;
                    shift[i] = alpha[p] + beta[ps] + gamma[i];
                    w[i] = std::array::from_fn(|j| w_p[p][j] + w_ps[ps][j] + w_psc[i][j]);
                    theta[i] = th_p[p] + th_ps[ps] + th_psc[i];
                }
            }
        }

        // Users. Visit frequency ∝ 1 / (rank + 20)^0.9 gives heavy and light users.
        let pop_share: Vec<f64> = (0..N_POP)
            .map(|p| GENDER_SHARE[p / 4] * AGE_SHARE[p % 4])
            .collect();
        let pop_cdf = Cdf::new(&pop_share);
        let clu_cdfs: Vec<Cdf> = clu_probs.iter().map(|p| Cdf::new(p)).collect();
        let mut users = Vec::with_capacity(N_USERS);
        for _ in 0..N_USERS {
            let pop = pop_cdf.sample(rng);
            let cluster = clu_cdfs[pop].sample(rng);
            let z = rng.normal();
            users.push(User {
                pop,
                cluster,
                bias: 0.2 * rng.normal(),
                z_activity: z,
                activity: (0.5 * z).exp() * 3.0,
            });
        }
        let freq: Vec<f64> = (0..N_USERS)
            .map(|r| 1.0 / (r as f64 + 20.0).powf(0.9))
            .collect();
        let user_cdf = Cdf::new(&freq);

        // Items: categories with uneven sizes, prices log-normal around a category level.
        let cat_size = Cdf::new(
            &(0..N_CATS)
                .map(|k| 1.0 / (k as f64 + 2.0))
                .collect::<Vec<_>>(),
        );
        let cat_price: Vec<f64> = (0..N_CATS).map(|_| 3.0 + 0.8 * rng.normal()).collect();
        let mut items = Vec::with_capacity(N_ITEMS);
        let mut items_by_cat = vec![Vec::new(); N_CATS];
        for i in 0..N_ITEMS {
            // Every category gets at least one item.
            let category = if i < N_CATS { i } else { cat_size.sample(rng) };
            let v = std::array::from_fn(|_| rng.normal());
            let z = rng.normal();
            items.push(Item {
                v,
                bias: 0.4 * rng.normal(),
                price: (cat_price[category] + 0.5 * z).exp(),
                z_price: z,
            });
            items_by_cat[category].push(i as u32);
        }

        // Cell frequencies P(p) P(s | p) P(c | p) weight the "flat" averages.
        let (mut mean_shift, mut mean_w, mut mean_theta) = (0.0, [0.0; D], 0.0);
        let mut mean_affinity = [0.0; N_CATS];
        for (p, (sp, cp)) in scen_probs.iter().zip(&clu_probs).enumerate() {
            for (s, ps) in sp.iter().enumerate() {
                for (c, pc) in cp.iter().enumerate() {
                    let q = pop_share[p] * ps * pc;
                    let i = cell(p, s, c);
                    mean_shift += q * shift[i];
                    mean_theta += q * theta[i];
                    for j in 0..D {
                        mean_w[j] += q * w[i][j];
                    }
                    for k in 0..N_CATS {
                        mean_affinity[k] += q * affinity[c][k];
                    }
                }
            }
        }
        World {
            users,
            user_cdf,
            items,
            items_by_cat,
            scen_given_pop: scen_probs.iter().map(|p| Cdf::new(p)).collect(),
            cat_given_scen: cat_probs.iter().map(|p| Cdf::new(p)).collect(),
            shift,
            w,
            theta,
            affinity,
            mean_shift,
            mean_w,
            mean_theta,
            mean_affinity,
        }
    }

    fn row(&self, rng: &mut SplitMix64) -> SynthRow {
        let uid = self.user_cdf.sample(rng);
        let u = &self.users[uid];
        let s = self.scen_given_pop[u.pop].sample(rng);
        let k = self.cat_given_scen[s].sample(rng);
        let pool = &self.items_by_cat[k];
        let iid = pool[rng.below(pool.len() as u64) as usize];
        let it = &self.items[iid as usize];
        let ci = cell(u.pop, s, u.cluster);
        let dot = |w: &[f64; D]| w.iter().zip(&it.v).map(|(a, b)| a * b).sum::<f64>();
        let common = BASE + it.bias + u.bias + 0.2 * u.z_activity;
        let logit = common
            + self.shift[ci]
            + dot(&self.w[ci])
            + self.theta[ci] * it.z_price
            + self.affinity[u.cluster][k];
        let flat = common
            + self.mean_shift
            + dot(&self.mean_w)
            + self.mean_theta * it.z_price
            + self.mean_affinity[k];
        let p_true = sigmoid(logit);
        let label = u8::from(rng.uniform() < p_true);
        SynthRow {
            user: uid as u32,
            item: iid,
            category: k as u32,
            gender: (u.pop / 4) as u8,
            age: (u.pop % 4) as u8,
            scenario: s as u8,
            interest: u.cluster as u8,
            price: it.price,
            activity: u.activity,
            p_true,
            p_flat: sigmoid(flat),
            label,
        }
    }
}

/// An endless stream of rows of the world drawn from `seed` (the rows [`generate`] writes).
pub struct SynthRows {
    world: World,
    rng: SplitMix64,
}

impl SynthRows {
    /// The world of `seed` and its row stream.
    pub fn new(seed: u64) -> SynthRows {
        let world = World::new(&mut SplitMix64::derive(seed, 0));
        SynthRows {
            world,
            rng: SplitMix64::derive(seed, 1),
        }
    }
}

impl Iterator for SynthRows {
    type Item = SynthRow;

    fn next(&mut self) -> Option<SynthRow> {
        Some(self.world.row(&mut self.rng))
    }
}

/// Counts from one [`generate`] call.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthSummary {
    /// Rows written.
    pub rows: usize,
    /// Rows with label 1.
    pub positives: usize,
    /// Mean of `p_true`.
    pub mean_p_true: f64,
}

/// Writes `rows` synthetic impressions for `seed` to the CSV file `path` (header
/// [`SYNTH_COLUMNS`]; read it with [`synth_schema`]).
pub fn generate(rows: usize, seed: u64, path: impl AsRef<Path>) -> Result<SynthSummary> {
    write_rows(SynthRows::new(seed).take(rows), path.as_ref())
}

/// Writes a training and a validation file drawn from the *same* world of `seed` (the first
/// `train_rows` rows of its stream, then the next `val_rows`).
pub fn generate_split(
    train_rows: usize,
    val_rows: usize,
    seed: u64,
    train: impl AsRef<Path>,
    val: impl AsRef<Path>,
) -> Result<(SynthSummary, SynthSummary)> {
    let mut stream = SynthRows::new(seed);
    let a = write_rows(stream.by_ref().take(train_rows), train.as_ref())?;
    let b = write_rows(stream.take(val_rows), val.as_ref())?;
    Ok((a, b))
}

/// Writes rows as CSV to a temporary file next to `path`, then renames it over `path`.
fn write_rows(rows_iter: impl Iterator<Item = SynthRow>, path: &Path) -> Result<SynthSummary> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("synth.csv"),
        std::process::id()
    ));
    let res = write_rows_to(rows_iter, &tmp, path).and_then(|s| {
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        Ok(s)
    });
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

fn write_rows_to(
    rows_iter: impl Iterator<Item = SynthRow>,
    tmp: &Path,
    path: &Path,
) -> Result<SynthSummary> {
    let io = |e: std::io::Error| Error::io(path, e);
    let file = std::fs::File::create(tmp).map_err(io)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    writeln!(out, "{}", SYNTH_COLUMNS.join(",")).map_err(io)?;
    let (mut rows, mut positives, mut sum_p) = (0usize, 0usize, 0.0f64);
    for r in rows_iter {
        rows += 1;
        positives += usize::from(r.label);
        sum_p += r.p_true;
        writeln!(
            out,
            "{},{:.6},{},{},{},{},{},{},{},{:.2},{:.3}",
            r.label,
            r.p_true,
            r.user,
            r.item,
            r.category,
            GENDERS[r.gender as usize],
            AGES[r.age as usize],
            SCENARIOS[r.scenario as usize],
            r.interest,
            r.price,
            r.activity
        )
        .map_err(io)?;
    }
    out.flush().map_err(io)?;
    Ok(SynthSummary {
        rows,
        positives,
        mean_p_true: if rows > 0 { sum_p / rows as f64 } else { 0.0 },
    })
}
