//! Mini-batches from a [`Dataset`] into caller-owned buffers.
//!
//! The order of an epoch is a Fisher–Yates shuffle driven by `SplitMix64::derive(seed, epoch)`,
//! so it depends only on `(seed, epoch)`: a resumed run calls [`Batcher::seek`] with the saved
//! epoch and batch index and sees exactly the rows it would have seen. Buffers are sized once
//! ([`BatchBuffers::new`]); filling a batch allocates nothing.

use crate::data::cache::Dataset;
use crate::data::rng::SplitMix64;
use crate::Batch;

/// Preallocated batch storage, reused for every batch.
#[derive(Clone, Debug)]
pub struct BatchBuffers {
    capacity: usize,
    f: usize,
    n: usize,
    t: usize,
    len: usize,
    /// Categorical indices `[B, F]`, row-major.
    cat: Vec<u32>,
    /// Standardised numerics `[B, N]`.
    num: Vec<f32>,
    /// Labels `[B, T]`.
    labels: Vec<f32>,
    /// Dataset row of each batch row `[B]`.
    row_ids: Vec<u32>,
}

impl BatchBuffers {
    /// Buffers for up to `batch_size` rows of `ds`'s shape: no more than `ds` has (a batch
    /// size larger than the data set is one batch of all its rows).
    ///
    /// # Panics
    /// If `batch_size == 0` (programmer error).
    #[track_caller]
    pub fn new(batch_size: usize, ds: &Dataset) -> Self {
        assert!(batch_size > 0, "batch size must be positive");
        let batch_size = batch_size.min(ds.rows().max(1));
        let (f, n, t) = (ds.n_categorical(), ds.n_numeric(), ds.n_tasks());
        BatchBuffers {
            capacity: batch_size,
            f,
            n,
            t,
            len: 0,
            cat: vec![0; batch_size * f],
            num: vec![0.0; batch_size * n],
            labels: vec![0.0; batch_size * t],
            row_ids: vec![0; batch_size],
        }
    }

    /// Bytes that [`BatchBuffers::new`] allocates for `rows` rows of `ds` (ids, numerics,
    /// labels, row ids), for memory checks made before it runs.
    pub fn bytes_for(ds: &Dataset, rows: usize) -> f64 {
        4.0 * rows as f64 * (ds.n_categorical() + ds.n_numeric() + ds.n_tasks() + 1) as f64
    }

    /// The current batch (B = rows filled by the last [`Batcher::next_batch`]).
    pub fn batch(&self) -> Batch<'_> {
        let b = self.len;
        Batch {
            rows: b,
            cat: &self.cat[..b * self.f],
            num: &self.num[..b * self.n],
            labels: &self.labels[..b * self.t],
        }
    }

    /// Dataset row index of each row of the current batch `[B]` (for per-row partition cells,
    /// users, domains or writing predictions back in dataset order).
    pub fn row_ids(&self) -> &[u32] {
        &self.row_ids[..self.len]
    }

    /// Rows in the current batch.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the current batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies rows `rows` of `ds` into the buffers (gathers column by column).
    ///
    /// # Panics
    /// If there are more rows than the capacity or the dataset's shape differs from the one the
    /// buffers were made for (programmer errors).
    #[track_caller]
    pub fn fill(&mut self, ds: &Dataset, rows: &[u32]) {
        assert!(rows.len() <= self.capacity, "batch larger than the buffers");
        assert!(
            (ds.n_categorical(), ds.n_numeric(), ds.n_tasks()) == (self.f, self.n, self.t),
            "buffers were made for another dataset shape"
        );
        let b = rows.len();
        self.len = b;
        self.row_ids[..b].copy_from_slice(rows);
        for f in 0..self.f {
            let col = ds.cat(f);
            for (i, &r) in rows.iter().enumerate() {
                self.cat[i * self.f + f] = col.get(r as usize);
            }
        }
        for n in 0..self.n {
            let col = ds.num(n);
            for (i, &r) in rows.iter().enumerate() {
                self.num[i * self.n + n] = col.get(r as usize);
            }
        }
        for t in 0..self.t {
            let col = ds.label(t);
            for (i, &r) in rows.iter().enumerate() {
                self.labels[i * self.t + t] = col.get(r as usize);
            }
        }
    }
}

/// Walks a dataset's rows in batches: shuffled per epoch, or in file order.
#[derive(Clone, Debug)]
pub struct Batcher {
    order: Vec<u32>,
    batch_size: usize,
    seed: u64,
    shuffle: bool,
    epoch: u64,
    /// Next position in `order`.
    pos: usize,
}

impl Batcher {
    /// Batches of `rows` rows in a shuffled order per epoch; starts at epoch 0.
    ///
    /// # Panics
    /// If `batch_size == 0` or `rows` does not fit in u32 (programmer errors; datasets are
    /// limited to u32 rows when they are built).
    #[track_caller]
    pub fn shuffled(rows: usize, batch_size: usize, seed: u64) -> Self {
        let mut b = Batcher::sequential(rows, batch_size);
        b.shuffle = true;
        b.seed = seed;
        b.set_epoch(0);
        b
    }

    /// Batches in file order (evaluation).
    ///
    /// # Panics
    /// As [`Batcher::shuffled`].
    #[track_caller]
    pub fn sequential(rows: usize, batch_size: usize) -> Self {
        assert!(batch_size > 0, "batch size must be positive");
        assert!(rows < u32::MAX as usize, "too many rows");
        Batcher {
            order: (0..rows as u32).collect(),
            batch_size,
            seed: 0,
            shuffle: false,
            epoch: 0,
            pos: 0,
        }
    }

    /// Starts epoch `epoch` from its first batch (recomputes the order from `(seed, epoch)`).
    pub fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.pos = 0;
        if self.shuffle {
            for (i, o) in self.order.iter_mut().enumerate() {
                *o = i as u32;
            }
            SplitMix64::derive(self.seed, epoch).shuffle(&mut self.order);
        }
    }

    /// Jumps to batch `batch_index` of epoch `epoch` (resuming a run).
    pub fn seek(&mut self, epoch: u64, batch_index: usize) {
        self.set_epoch(epoch);
        self.pos = batch_index
            .saturating_mul(self.batch_size)
            .min(self.order.len());
    }

    /// `(epoch, index of the next batch)`.
    pub fn position(&self) -> (u64, usize) {
        (self.epoch, self.pos.div_ceil(self.batch_size))
    }

    /// Batches per epoch (the last one may be smaller).
    pub fn batches_per_epoch(&self) -> usize {
        self.order.len().div_ceil(self.batch_size)
    }

    /// The row order of the current epoch.
    pub fn order(&self) -> &[u32] {
        &self.order
    }

    /// Fills `buf` with the next batch of the current epoch; false when the epoch is done
    /// (call [`Batcher::set_epoch`] for the next one).
    ///
    /// # Panics
    /// If `ds` has a different number of rows than the batcher was made for (programmer error).
    #[track_caller]
    pub fn next_batch(&mut self, ds: &Dataset, buf: &mut BatchBuffers) -> bool {
        assert_eq!(
            ds.rows(),
            self.order.len(),
            "batcher made for another dataset"
        );
        if self.pos >= self.order.len() {
            buf.len = 0;
            return false;
        }
        let end = self
            .pos
            .saturating_add(self.batch_size)
            .min(self.order.len());
        buf.fill(ds, &self.order[self.pos..end]);
        self.pos = end;
        true
    }
}
