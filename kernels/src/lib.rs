//! # hmdn-kernels
//!
//! Slice-in / slice-out numeric kernels for hmdn-cpu. No kernel knows about models; each has a
//! plain scalar twin in [`reference`](mod@reference), and `tests/equivalence.rs` makes them agree on awkward
//! sizes.
//!
//! Dimension glossary used throughout: `B` batch rows, `d`/`n` feature width, `K` codebook
//! size, `z` code width, `V` vocabulary rows, `e` embedding width, `m×k · k×n` GEMM shapes.
//!
//! Fast paths: every public kernel is generic over [`Real`]; for `f32` it runs SIMD code from
//! [`simd`] (AVX-512F, AVX2+FMA or a portable fallback, chosen once at run time, overridable
//! with `HMDN_SIMD=portable|avx2|avx512`; [`simd_info`] says which), for `f64` the scalar
//! [`reference`](mod@reference). f32 GEMM is our own packed kernel with pooled reusable buffers (see
//! [`gemm`](mod@gemm)); no kernel allocates after its first call at a given shape.
//!
//! Determinism rule: parallel kernels split work over *disjoint outputs* in fixed-size chunks;
//! any reduction is over fixed chunks merged in a fixed order, so results never depend on the
//! number of threads.
#![warn(missing_docs)]

pub mod act;
pub mod auc;
mod cast;
pub mod embed;
pub mod gemm;
pub mod loss;
pub mod mem;
pub mod optim;
pub mod par;
pub mod real;
pub mod reference;
pub mod simd;
pub mod softmax;
pub mod vq;

pub use gemm::{gemm, reserve_gemm, Trans};
pub use real::Real;
pub use simd::{available_paths, simd_info, simd_path, with_path, SimdPath};
