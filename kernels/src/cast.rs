//! Routing from the generic public kernels to the f32 fast paths.
//!
//! Every public kernel is generic over [`Real`] (so gradient checks run it in f64) but only
//! the f32 instantiation has SIMD code. `TypeId` comparison is a compile-time constant after
//! monomorphisation, so `if is_f32::<T>()` costs nothing and the f64 build keeps only the
//! scalar reference body.

use crate::Real;
use std::any::TypeId;

/// Whether `T` is `f32`.
#[inline(always)]
pub(crate) fn is_f32<T: Real>() -> bool {
    TypeId::of::<T>() == TypeId::of::<f32>()
}

/// Views a `[T]` as `[f32]`.
///
/// # Panics
/// If `T` is not `f32` (a programmer error: guard with [`is_f32`]).
#[inline(always)]
#[track_caller]
pub(crate) fn f32s<T: Real>(s: &[T]) -> &[f32] {
    assert!(is_f32::<T>(), "f32s on {}", T::NAME);
    // SAFETY: T is f32 (checked above), so the layouts are identical.
    unsafe { &*(s as *const [T] as *const [f32]) }
}

/// Views a `[T]` as `[f32]`, mutably. Panics unless `T` is `f32` (see [`f32s`]).
#[inline(always)]
#[track_caller]
pub(crate) fn f32s_mut<T: Real>(s: &mut [T]) -> &mut [f32] {
    assert!(is_f32::<T>(), "f32s_mut on {}", T::NAME);
    // SAFETY: T is f32 (checked above), so the layouts are identical.
    unsafe { &mut *(s as *mut [T] as *mut [f32]) }
}

/// The f32 value of a scalar (exact when `T` is `f32`).
#[inline(always)]
pub(crate) fn f32v<T: Real>(x: T) -> f32 {
    x.to_f64() as f32
}
