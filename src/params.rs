//! The parameter arena: every trainable tensor of a model lives in one `Vec<T>` with named
//! views; gradients (and the optimiser's moments) share its layout, so "the gradient of
//! parameter `p`" is always `grads[p.range()]`.
//!
//! Embedding tables are stored here too, but their gradient is *row-sparse* in training
//! (see [`crate::model::embedding`]); their slice of `grads` is only written when a dense
//! view is needed (dense Adam, gradient checks).

use hmdn_kernels::Real;
use rand::Rng;
use rand_distr::{Distribution, Normal};
use std::ops::Range;

/// How a parameter is updated and how its gradient is represented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// A dense tensor with a dense gradient (linear layers, gates, codebooks, cross layers).
    Dense,
    /// An embedding table `[V, e]` whose gradient arrives as a list of touched rows.
    Embedding,
}

/// How a parameter is initialised. Values are drawn in `f64` and rounded to `T`, so an `f32`
/// and an `f64` model built with the same seed hold the same (rounded) weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// Uniform on `[-bound, bound)` (PyTorch's `nn.Linear` default uses `1/sqrt(fan_in)`).
    Uniform(f64),
    /// Normal with mean 0 and this standard deviation.
    Normal(f64),
}

/// Handle to one parameter tensor inside a [`ParamStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamId(pub usize);

/// Name, shape and place of one parameter tensor.
#[derive(Clone, Debug)]
pub struct ParamSpec {
    /// PyTorch `state_dict` name, e.g. `experts.0.layers.1.weight` (SPEC §5).
    pub name: String,
    /// Shape in PyTorch convention (`nn.Linear` weight is `[out, in]`).
    pub shape: Vec<usize>,
    /// First element inside the arena.
    pub offset: usize,
    /// Number of elements (product of `shape`).
    pub len: usize,
    /// Dense or row-sparse gradient.
    pub kind: ParamKind,
}

impl ParamSpec {
    /// Element range of this tensor in the arena.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len
    }
}

/// All parameters of a model and their gradients, in one arena each.
#[derive(Clone, Debug)]
pub struct ParamStore<T> {
    /// One entry per tensor, in registration order (also the checkpoint order).
    pub specs: Vec<ParamSpec>,
    /// Parameter values, `specs[i].range()` is tensor `i`. Private: every write goes through
    /// a method that moves [`ParamStore::version`] on.
    values: Vec<T>,
    /// See [`ParamStore::version`].
    version: u64,
    /// Gradients, same layout as `values`.
    pub grads: Vec<T>,
    /// f32 stores only: the weights marked with [`ParamStore::mark_packed`], each as
    /// `Wᵀ` packed in the GEMM micro-kernel's layout for `t_path` (see
    /// [`hmdn_kernels::gemm::pack_b_for`]), one after the other; rewritten from `values` by
    /// [`ParamStore::refresh_packed`].
    values_t: Vec<f32>,
    /// Offset of each tensor's packed copy in `values_t` (`usize::MAX`: none).
    t_offset: Vec<usize>,
    /// Tensors with a packed copy, in `values_t` order.
    t_ids: Vec<ParamId>,
    /// SIMD path the packed copies were laid out for (`None`: not laid out yet).
    t_path: Option<hmdn_kernels::SimdPath>,
    /// [`ParamStore::version`] the packed copies were written from, if they are current.
    t_version: Option<u64>,
}

/// [`ParamStore::parts_mut`]: the store's fields borrowed apart.
#[derive(Debug)]
pub struct ParamParts<'a, T> {
    /// One entry per tensor.
    pub specs: &'a [ParamSpec],
    /// Parameter values.
    pub values: &'a mut [T],
    /// Gradients, same layout as `values`.
    pub grads: &'a mut [T],
}

/// A new [`ParamStore::version`]: never the same twice in a process.
fn next_version() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl<T: Real> Default for ParamStore<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Real> ParamStore<T> {
    /// An empty store.
    pub fn new() -> Self {
        ParamStore {
            specs: Vec::new(),
            values: Vec::new(),
            version: next_version(),
            grads: Vec::new(),
            values_t: Vec::new(),
            t_offset: Vec::new(),
            t_ids: Vec::new(),
            t_path: None,
            t_version: None,
        }
    }

    /// Registers a tensor and initialises it from `rng`. Called only while building a model.
    ///
    /// # Panics
    /// If `name` is already registered (a programmer error).
    #[track_caller]
    pub fn add<R: Rng>(
        &mut self,
        name: &str,
        shape: &[usize],
        kind: ParamKind,
        init: Init,
        rng: &mut R,
    ) -> ParamId {
        assert!(
            self.find(name).is_none(),
            "parameter `{name}` registered twice"
        );
        let len: usize = shape.iter().product();
        let offset = self.values.len();
        self.version = next_version();
        match init {
            Init::Zeros => self.values.extend(std::iter::repeat_n(T::ZERO, len)),
            Init::Ones => self.values.extend(std::iter::repeat_n(T::ONE, len)),
            Init::Uniform(b) => {
                for _ in 0..len {
                    self.values.push(T::from_f64(rng.gen_range(-b..b)));
                }
            }
            Init::Normal(std) => {
                let nd = Normal::new(0.0, std).expect("finite std");
                for _ in 0..len {
                    self.values.push(T::from_f64(nd.sample(rng)));
                }
            }
        }
        self.grads.resize(self.values.len(), T::ZERO);
        self.t_offset.push(usize::MAX);
        self.specs.push(ParamSpec {
            name: name.to_string(),
            shape: shape.to_vec(),
            offset,
            len,
            kind,
        });
        ParamId(self.specs.len() - 1)
    }

    /// Looks a tensor up by its `state_dict` name.
    pub fn find(&self, name: &str) -> Option<ParamId> {
        self.specs.iter().position(|s| s.name == name).map(ParamId)
    }

    /// Spec of a tensor.
    pub fn spec(&self, id: ParamId) -> &ParamSpec {
        &self.specs[id.0]
    }

    /// Element range of a tensor in the arena.
    pub fn range(&self, id: ParamId) -> Range<usize> {
        self.specs[id.0].range()
    }

    /// Values of one tensor.
    pub fn value(&self, id: ParamId) -> &[T] {
        &self.values[self.range(id)]
    }

    /// Mutable values of one tensor (moves [`ParamStore::version`] on).
    pub fn value_mut(&mut self, id: ParamId) -> &mut [T] {
        let r = self.range(id);
        &mut self.values_mut()[r]
    }

    /// All values, `specs[i].range()` being tensor `i`.
    pub fn values(&self) -> &[T] {
        &self.values
    }

    /// All values, mutably (moves [`ParamStore::version`] on).
    pub fn values_mut(&mut self) -> &mut [T] {
        self.version = next_version();
        &mut self.values
    }

    /// The specs, the values (mutably: moves [`ParamStore::version`] on) and the gradients,
    /// borrowed apart (for an optimiser step, which reads some and writes others).
    pub fn parts_mut(&mut self) -> ParamParts<'_, T> {
        self.version = next_version();
        ParamParts {
            specs: &self.specs,
            values: &mut self.values,
            grads: &mut self.grads,
        }
    }

    /// A number that changes whenever the values may have changed: every mutable access
    /// ([`ParamStore::values_mut`], [`ParamStore::value_mut`], [`ParamStore::parts_mut`],
    /// registering a tensor) takes a new one, from a process-wide counter, so two stores
    /// share a version only when one is an unmodified clone of the other. What is derived
    /// from the weights alone (packed copies, per-id tables) can be kept while it stays the
    /// same.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Moves the values to a buffer advised for transparent huge pages before it is written
    /// ([`hmdn_kernels::mem`]): the embedding tables, most of the values, are read and
    /// updated at random rows. Same contents, same version.
    pub fn use_huge_pages(&mut self) {
        self.values = hmdn_kernels::mem::huge_page_copy(&self.values);
    }

    /// Gradient of one tensor.
    pub fn grad(&self, id: ParamId) -> &[T] {
        &self.grads[self.range(id)]
    }

    /// Sets every dense gradient to zero (once per step; backward passes accumulate).
    /// Embedding tables' dense gradient slices are zeroed too only when `include_embeddings`.
    pub fn zero_grads(&mut self, include_embeddings: bool) {
        for s in &self.specs {
            if s.kind == ParamKind::Dense || include_embeddings {
                self.grads[s.range()].fill(T::ZERO);
            }
        }
    }

    /// Total number of scalar parameters.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// `true` when no parameter is registered.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Converts every value to another precision (used by gradient checks and fixtures).
    pub fn cast<U: Real>(&self) -> ParamStore<U> {
        ParamStore {
            specs: self.specs.clone(),
            values: self
                .values
                .iter()
                .map(|v| U::from_f64(v.to_f64()))
                .collect(),
            version: next_version(),
            grads: self.grads.iter().map(|v| U::from_f64(v.to_f64())).collect(),
            values_t: Vec::new(),
            t_offset: vec![usize::MAX; self.t_offset.len()],
            t_ids: self.t_ids.clone(),
            t_path: None,
            t_version: None,
        }
    }

    /// Keeps a packed copy of the transpose of the 2-D tensor `id` (`[out, in]`), the `op(B)`
    /// of `X·Wᵀ`, so that the GEMMs of a forward (one per row chunk) read it instead of each
    /// packing `W` again. f32 stores only (f64 runs plain GEMMs). Called once per weight while
    /// building a model.
    ///
    /// # Panics
    /// If the tensor is not 2-D or already marked (programmer errors).
    #[track_caller]
    pub fn mark_packed(&mut self, id: ParamId) {
        let spec = &self.specs[id.0];
        assert_eq!(
            spec.shape.len(),
            2,
            "{}: only matrices are packed",
            spec.name
        );
        assert!(!self.t_ids.contains(&id), "{}: marked twice", spec.name);
        self.t_ids.push(id);
        self.t_path = None;
    }

    /// Undoes [`ParamStore::mark_packed`] (a no-op for an unmarked weight): forwards stop
    /// packing a copy of `W` (for a layer that stops reading it, such as MMoE's factored
    /// first layer, `model::factored`).
    pub fn unmark_packed(&mut self, id: ParamId) {
        if let Some(p) = self.t_ids.iter().position(|&t| t == id) {
            self.t_ids.remove(p);
            if let Some(o) = self.t_offset.get_mut(id.0) {
                *o = usize::MAX;
            }
            self.t_path = None;
        }
    }

    /// Whether `id` is marked with [`ParamStore::mark_packed`].
    pub fn is_marked_packed(&self, id: ParamId) -> bool {
        self.t_ids.contains(&id)
    }

    /// The packed `Wᵀ` of a marked weight and the SIMD path it was packed for, as of the last
    /// [`ParamStore::refresh_packed`] (the model refreshes at the start of every forward);
    /// `None` for unmarked weights and f64 stores. Pass it to
    /// [`hmdn_kernels::gemm::gemm_packed_b`], which falls back to `W` itself when the path
    /// differs.
    pub fn packed_weight(&self, id: ParamId) -> Option<(&[f32], hmdn_kernels::SimdPath)> {
        let path = self.t_path?;
        let off = *self.t_offset.get(id.0)?;
        if off == usize::MAX {
            return None;
        }
        let spec = &self.specs[id.0];
        let len = hmdn_kernels::gemm::packed_b_len(spec.shape[0], spec.shape[1], path);
        Some((&self.values_t[off..off + len], path))
    }

    /// Rewrites every packed copy from `values` (after the weights changed: an optimiser
    /// step, a checkpoint load, a perturbation; nothing to do when the [`ParamStore::version`]
    /// and the SIMD path are those of the last refresh), for this thread's SIMD path; the matrices are
    /// split over threads. Lays the copies out (allocating) only when the path changes.
    pub fn refresh_packed(&mut self) {
        if T::NAME != "f32" || self.t_ids.is_empty() {
            return;
        }
        let path = hmdn_kernels::simd_path();
        // Unchanged weights (inference after inference): the copies are current.
        if self.t_path == Some(path) && self.t_version == Some(self.version) {
            return;
        }
        if self.t_path != Some(path) {
            let mut off = 0;
            for id in &self.t_ids {
                let spec = &self.specs[id.0];
                self.t_offset[id.0] = off;
                off += hmdn_kernels::gemm::packed_b_len(spec.shape[0], spec.shape[1], path);
            }
            self.values_t.clear();
            self.values_t.resize(off, 0.0);
            self.t_path = Some(path);
        }
        pack_all(
            &self.specs,
            &self.values,
            &self.t_offset,
            &self.t_ids,
            &mut self.values_t,
            0,
            path,
        );
        self.t_version = Some(self.version);
    }
}

/// Packs every tensor of `ids` into `out` (= `values_t` from element `base` on), halves of the
/// list in parallel when there is enough work.
fn pack_all<T: Real>(
    specs: &[ParamSpec],
    values: &[T],
    t_offset: &[usize],
    ids: &[ParamId],
    out: &mut [f32],
    base: usize,
    path: hmdn_kernels::SimdPath,
) {
    let work: usize = ids.iter().map(|id| specs[id.0].len).sum();
    if ids.len() > 1 && work >= 1 << 15 && rayon::current_num_threads() > 1 {
        let mid = ids.len() / 2;
        let cut = t_offset[ids[mid].0] - base;
        let (ol, or) = out.split_at_mut(cut);
        let (il, ir) = ids.split_at(mid);
        rayon::join(
            || pack_all(specs, values, t_offset, il, ol, base, path),
            || pack_all(specs, values, t_offset, ir, or, base + cut, path),
        );
        return;
    }
    for id in ids {
        let spec = &specs[id.0];
        let (d_out, d_in) = (spec.shape[0], spec.shape[1]);
        let off = t_offset[id.0] - base;
        let len = hmdn_kernels::gemm::packed_b_len(d_out, d_in, path);
        let w = &values[spec.range()];
        // op(B) = Wᵀ: k = d_in, n = d_out, stored as W (`tb = T`).
        hmdn_kernels::gemm::pack_b_for(
            &mut out[off..off + len],
            d_out,
            d_in,
            w,
            hmdn_kernels::Trans::T,
            path,
        );
    }
}

/// Gradient slice of a [`ParamStore`] arena that may start past element 0: `grads[r]` takes
/// arena ranges `r` (as from [`ParamStore::range`]) and subtracts `base`. A full view has
/// `base == 0`; a row chunk of a batch owns one over the dense tail of the arena only (see
/// [`ParamStore::dense_tail`]), so it can accumulate its own gradients while other chunks do
/// the same on other threads.
#[derive(Debug)]
pub struct GradSlice<'a, T> {
    /// Arena index of `data[0]`.
    base: usize,
    data: &'a mut [T],
}

impl<'a, T> GradSlice<'a, T> {
    /// A view of `data` as arena elements `base..base + data.len()`.
    pub fn new(base: usize, data: &'a mut [T]) -> Self {
        GradSlice { base, data }
    }
}

impl<T> std::ops::Index<Range<usize>> for GradSlice<'_, T> {
    type Output = [T];
    #[track_caller]
    fn index(&self, r: Range<usize>) -> &[T] {
        assert!(
            r.start >= self.base,
            "gradient of arena range {r:?} is not in this view (starts at {})",
            self.base
        );
        &self.data[r.start - self.base..r.end - self.base]
    }
}

impl<T> std::ops::IndexMut<Range<usize>> for GradSlice<'_, T> {
    #[track_caller]
    fn index_mut(&mut self, r: Range<usize>) -> &mut [T] {
        assert!(
            r.start >= self.base,
            "gradient of arena range {r:?} is not in this view (starts at {})",
            self.base
        );
        &mut self.data[r.start - self.base..r.end - self.base]
    }
}

/// What a layer's `backward` needs of the parameters: read-only values and a (possibly
/// partial) gradient arena to accumulate into. Fields are public so a layer can borrow a
/// weight (`values`) and its gradient (`grads`) at the same time.
#[derive(Debug)]
pub struct Grads<'a, T> {
    /// Tensor specs of the store (for [`Grads::range`]).
    pub specs: &'a [ParamSpec],
    /// All parameter values of the store.
    pub values: &'a [T],
    /// Gradients, indexed by arena range.
    pub grads: GradSlice<'a, T>,
}

impl<'a, T> Grads<'a, T> {
    /// Element range of a tensor in the arena.
    pub fn range(&self, id: ParamId) -> Range<usize> {
        self.specs[id.0].range()
    }

    /// Values of one tensor (borrowed from the store, not from this view).
    pub fn value(&self, id: ParamId) -> &'a [T] {
        &self.values[self.specs[id.0].range()]
    }

    /// Gradient of one tensor.
    pub fn grad_mut(&mut self, id: ParamId) -> &mut [T] {
        let r = self.specs[id.0].range();
        &mut self.grads[r]
    }
}

impl<T: Real> ParamStore<T> {
    /// A [`Grads`] view of the whole store.
    pub fn grads_view(&mut self) -> Grads<'_, T> {
        Grads {
            specs: &self.specs,
            values: &self.values,
            grads: GradSlice::new(0, &mut self.grads),
        }
    }

    /// First arena element of the dense tail: every tensor at or after it is
    /// [`ParamKind::Dense`] (tables are registered first, so the tail holds the quantizer,
    /// the backbone and the towers). `len()` when the last tensor is a table.
    pub fn dense_tail(&self) -> usize {
        self.specs
            .iter()
            .rev()
            .find(|s| s.kind != ParamKind::Dense)
            .map_or(0, |s| s.offset + s.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn every_mutable_access_takes_a_new_version() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut ps = ParamStore::<f32>::new();
        let w = ps.add("w", &[2, 3], ParamKind::Dense, Init::Ones, &mut rng);
        let v0 = ps.version();
        // Reads keep it.
        let _ = (ps.values()[0], ps.value(w)[1], ps.grad(w)[0]);
        assert_eq!(ps.version(), v0);
        ps.value_mut(w)[0] = 2.0;
        let v1 = ps.version();
        assert_ne!(v1, v0);
        ps.values_mut()[1] = 3.0;
        let v2 = ps.version();
        assert!(v2 != v1 && v2 != v0);
        let _ = ps.parts_mut();
        let v3 = ps.version();
        assert!(![v0, v1, v2].contains(&v3));
        // A clone is the same weights: the same version, until one of them changes.
        let mut c = ps.clone();
        assert_eq!(c.version(), v3);
        c.values_mut()[0] = 5.0;
        assert_ne!(c.version(), ps.version());
        // Another store never shares a version with this one.
        let mut other = ParamStore::<f32>::new();
        other.add("w", &[2, 3], ParamKind::Dense, Init::Ones, &mut rng);
        assert_ne!(other.version(), ps.version());
        assert_ne!(ps.cast::<f64>().version(), ps.version());
    }
}
