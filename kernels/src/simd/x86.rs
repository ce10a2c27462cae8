//! [`Vf`] for x86_64 vector registers. Only ever executed inside the `#[target_feature]`
//! entries of `mod.rs` on CPUs that have the feature (see [`super::SimdPath::supported`]).

use super::Vf;
use std::arch::x86_64::*;

/// 16 × f32 in a `zmm` register (AVX-512F).
#[derive(Clone, Copy)]
pub(crate) struct Z(__m512);

impl Vf for Z {
    const LANES: usize = 16;
    const GEMM_MR: usize = super::kern::MR_512;
    const GEMM_NV: usize = super::kern::NR_512 / 16;
    const ARGMIN_R: usize = 8;
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Z(_mm512_set1_ps(x))
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Z(_mm512_loadu_ps(p))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm512_storeu_ps(p, self.0)
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        Z(_mm512_add_ps(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn sub(self, b: Self) -> Self {
        Z(_mm512_sub_ps(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn mul(self, b: Self) -> Self {
        Z(_mm512_mul_ps(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn div(self, b: Self) -> Self {
        Z(_mm512_div_ps(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn mul_add(self, b: Self, c: Self) -> Self {
        Z(_mm512_fmadd_ps(self.0, b.0, c.0))
    }
    #[inline(always)]
    unsafe fn max(self, b: Self) -> Self {
        Z(_mm512_max_ps(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn sqrt(self) -> Self {
        Z(_mm512_sqrt_ps(self.0))
    }
    #[inline(always)]
    unsafe fn neg_abs(self) -> Self {
        let sign = _mm512_set1_epi32(i32::MIN);
        Z(_mm512_castsi512_ps(_mm512_or_si512(
            _mm512_castps_si512(self.0),
            sign,
        )))
    }
    #[inline(always)]
    unsafe fn select_gt(a: Self, b: Self, x: Self, y: Self) -> Self {
        let k = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(a.0, b.0);
        Z(_mm512_mask_blend_ps(k, y.0, x.0))
    }
    #[inline(always)]
    unsafe fn select_ge(a: Self, b: Self, x: Self, y: Self) -> Self {
        let k = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(a.0, b.0);
        Z(_mm512_mask_blend_ps(k, y.0, x.0))
    }
    #[inline(always)]
    unsafe fn select_lt(a: Self, b: Self, x: Self, y: Self) -> Self {
        let k = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a.0, b.0);
        Z(_mm512_mask_blend_ps(k, y.0, x.0))
    }
    #[inline(always)]
    unsafe fn any_lt(self, b: Self) -> bool {
        _mm512_cmp_ps_mask::<_CMP_LT_OQ>(self.0, b.0) != 0
    }
    #[inline(always)]
    unsafe fn round_even(self) -> Self {
        // Imm 0x08: to nearest (ties to even), integers (scale 0), no exceptions.
        Z(_mm512_roundscale_ps::<0x08>(self.0))
    }
    #[inline(always)]
    unsafe fn mul_pow2(self, n: Self) -> Self {
        // vscalefps: self · 2^floor(n), correctly rounded (subnormal results included).
        Z(_mm512_scalef_ps(self.0, n.0))
    }
    #[inline(always)]
    unsafe fn pow2i(self) -> Self {
        let n = _mm512_cvtps_epi32(self.0);
        let e = _mm512_slli_epi32::<23>(_mm512_add_epi32(n, _mm512_set1_epi32(127)));
        Z(_mm512_castsi512_ps(e))
    }
}

/// 8 × f32 in a `ymm` register (AVX2 + FMA).
#[derive(Clone, Copy)]
pub(crate) struct Y(__m256);

impl Vf for Y {
    const LANES: usize = 8;
    const GEMM_MR: usize = super::kern::MR_256;
    const GEMM_NV: usize = super::kern::NR_256 / 8;
    const ARGMIN_R: usize = 4;
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Y(_mm256_set1_ps(x))
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Y(_mm256_loadu_ps(p))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm256_storeu_ps(p, self.0)
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        Y(_mm256_add_ps(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn sub(self, b: Self) -> Self {
        Y(_mm256_sub_ps(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn mul(self, b: Self) -> Self {
        Y(_mm256_mul_ps(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn div(self, b: Self) -> Self {
        Y(_mm256_div_ps(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn mul_add(self, b: Self, c: Self) -> Self {
        Y(_mm256_fmadd_ps(self.0, b.0, c.0))
    }
    #[inline(always)]
    unsafe fn max(self, b: Self) -> Self {
        Y(_mm256_max_ps(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn sqrt(self) -> Self {
        Y(_mm256_sqrt_ps(self.0))
    }
    #[inline(always)]
    unsafe fn neg_abs(self) -> Self {
        Y(_mm256_or_ps(self.0, _mm256_set1_ps(-0.0)))
    }
    #[inline(always)]
    unsafe fn select_gt(a: Self, b: Self, x: Self, y: Self) -> Self {
        let m = _mm256_cmp_ps::<_CMP_GT_OQ>(a.0, b.0);
        Y(_mm256_blendv_ps(y.0, x.0, m))
    }
    #[inline(always)]
    unsafe fn select_ge(a: Self, b: Self, x: Self, y: Self) -> Self {
        let m = _mm256_cmp_ps::<_CMP_GE_OQ>(a.0, b.0);
        Y(_mm256_blendv_ps(y.0, x.0, m))
    }
    #[inline(always)]
    unsafe fn select_lt(a: Self, b: Self, x: Self, y: Self) -> Self {
        let m = _mm256_cmp_ps::<_CMP_LT_OQ>(a.0, b.0);
        Y(_mm256_blendv_ps(y.0, x.0, m))
    }
    #[inline(always)]
    unsafe fn any_lt(self, b: Self) -> bool {
        _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(self.0, b.0)) != 0
    }
    #[inline(always)]
    unsafe fn round_even(self) -> Self {
        // Imm 0x08: to nearest (ties to even), no exceptions.
        Y(_mm256_round_ps::<0x08>(self.0))
    }
    #[inline(always)]
    unsafe fn pow2i(self) -> Self {
        let n = _mm256_cvtps_epi32(self.0);
        let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(n, _mm256_set1_epi32(127)));
        Y(_mm256_castsi256_ps(e))
    }
}
