//! Optional wall-clock breakdown of a model's forward and backward passes by phase.
//!
//! When [`Model::profile`](super::Model::profile) is `Some`, `forward` and `backward` read
//! the clock between phases and charge each interval to one [`Phase`]; consecutive laps cover
//! the passes end to end, so the phases add up to the time spent in them. When it is `None`,
//! the stopwatch holds no `Instant` and every lap is one branch (no clock reads).

use std::time::{Duration, Instant};

/// Where a stretch of forward or backward work is charged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Index transpose, numeric columns, embedding gathers (x, x_b, the wide part's 1-wide
    /// tables and its sum) and, in backward, row-gradient accumulation.
    Embeddings,
    /// Residual quantizer: per-level argmin, `L_rq`, and its backward.
    Rq,
    /// MMoE gates and the expert mixture; PEPNet's GateNUs (EPNet, PPNet) and their scaling.
    Gates,
    /// MMoE experts, or the bottom MLP, plus DCN's cross network.
    Backbone,
    /// Towers (logit layers), labels and the task loss.
    Head,
    /// Gradient zeroing and glue: buffer fills, column copies of concatenations.
    Other,
}

/// Accumulated time per [`Phase`] since the profile was created.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PhaseTimes {
    /// [`Phase::Embeddings`].
    pub embeddings: Duration,
    /// [`Phase::Rq`].
    pub rq: Duration,
    /// [`Phase::Gates`].
    pub gates: Duration,
    /// [`Phase::Backbone`].
    pub backbone: Duration,
    /// [`Phase::Head`].
    pub head: Duration,
    /// [`Phase::Other`].
    pub other: Duration,
    /// Forward passes timed.
    pub forwards: u64,
    /// Backward passes timed.
    pub backwards: u64,
}

impl PhaseTimes {
    /// Adds `d` to `phase`.
    pub fn add(&mut self, phase: Phase, d: Duration) {
        let slot = match phase {
            Phase::Embeddings => &mut self.embeddings,
            Phase::Rq => &mut self.rq,
            Phase::Gates => &mut self.gates,
            Phase::Backbone => &mut self.backbone,
            Phase::Head => &mut self.head,
            Phase::Other => &mut self.other,
        };
        *slot += d;
    }

    /// Every phase with its report name, in data-flow order.
    pub fn entries(&self) -> [(&'static str, Duration); 6] {
        self.phases().map(|(p, d)| (p.name(), d))
    }

    /// Time of all phases together (= time spent inside forward and backward).
    pub fn total(&self) -> Duration {
        self.entries().iter().map(|&(_, d)| d).sum()
    }
}

/// Stopwatch for a [`PhaseTimes`]: each `lap` charges the time since the previous lap (or
/// the start) to a phase. Inert when the profile is off.
pub(crate) struct Laps(Option<Instant>);

impl Laps {
    /// Starts timing if `profile` is on.
    #[inline]
    pub(crate) fn start(profile: &Option<PhaseTimes>) -> Self {
        Laps(profile.as_ref().map(|_| Instant::now()))
    }

    /// Charges the time since the last lap to `phase`.
    #[inline]
    pub(crate) fn lap(&mut self, profile: &mut Option<PhaseTimes>, phase: Phase) {
        if let (Some(t0), Some(p)) = (self.0, profile.as_mut()) {
            let now = Instant::now();
            p.add(phase, now - t0);
            self.0 = Some(now);
        }
    }
}

impl Phase {
    /// Report name (`hmdn-cpu bench`).
    pub fn name(self) -> &'static str {
        match self {
            Phase::Embeddings => "embeddings",
            Phase::Rq => "rq",
            Phase::Gates => "gates",
            Phase::Backbone => "experts/mlp",
            Phase::Head => "towers+loss",
            Phase::Other => "other",
        }
    }
}

impl PhaseTimes {
    /// Every phase with its time, in data-flow order.
    pub fn phases(&self) -> [(Phase, Duration); 6] {
        [
            (Phase::Embeddings, self.embeddings),
            (Phase::Rq, self.rq),
            (Phase::Gates, self.gates),
            (Phase::Backbone, self.backbone),
            (Phase::Head, self.head),
            (Phase::Other, self.other),
        ]
    }
}

impl Laps {
    /// Charges the wall time since the last lap — a parallel section — to the phases in the
    /// proportions of the summed per-task `shares` (each task timed its own phases, so their
    /// sum is thread time; the wall time is what the section cost the step). All to
    /// [`Phase::Other`] when the shares are empty.
    pub(crate) fn lap_shared<'a>(
        &mut self,
        profile: &mut Option<PhaseTimes>,
        shares: impl Iterator<Item = &'a PhaseTimes>,
    ) {
        if let (Some(t0), Some(p)) = (self.0, profile.as_mut()) {
            let now = Instant::now();
            let wall = now - t0;
            let mut sum = PhaseTimes::default();
            for s in shares {
                for (ph, d) in s.phases() {
                    sum.add(ph, d);
                }
            }
            let total = sum.total().as_secs_f64();
            if total > 0.0 {
                for (ph, d) in sum.phases() {
                    p.add(ph, wall.mul_f64(d.as_secs_f64() / total));
                }
            } else {
                p.add(Phase::Other, wall);
            }
            self.0 = Some(now);
        }
    }
}
