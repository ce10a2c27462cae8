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
    unsafe fn mul_pow2_group<const G: usize>(p: &mut [Self; G], n: &[Self; G]) {
        // No branch to share: one vscalefps per vector.
        for g in 0..G {
            p[g] = p[g].mul_pow2(n[g]);
        }
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
    unsafe fn kloop_6x2(
        acc: &mut [[Self; 2]; 6],
        kc: usize,
        a: *const f32,
        si: usize,
        sp: usize,
        b: *const f32,
        ldb: usize,
    ) -> bool {
        kloop_6x16(acc, kc, a, si, sp, b, ldb);
        true
    }
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

/// [`Vf::kloop_6x2`] for AVX2 + FMA, written out: the twelve accumulators stay in fixed
/// `ymm` registers, B's two vectors and the broadcast take the other three, and A's rows 0–2
/// and 3–5 are each read from one pointer plus `0 / 1 / 2` times the row stride in bytes
/// (x86 addressing scales it for free), both pointers stepping `sp` floats per k. Compiled
/// from the generic loop, LLVM ran out of general registers for row-major A's six row
/// offsets: it reloaded the stride from the stack four times per k step, rebuilt addresses
/// with `lea`/`add` and shuffled accumulators with `vmovaps`, 34 instructions per 12 FMAs.
/// This is 25. The loop is correct for any `si`, `sp` (at e7cefbb p-major A took it too and
/// the bit-level GEMM test passed), but `kern`'s tile now routes only row-major A here: for
/// p-major A the compiled loop (26 instructions, constant offsets) trained faster.
///
/// Safety: the caller's tile reads `a[i·si + p·sp]` for `i < 6`, `p < kc` and 16 floats at
/// `b + p·ldb` for `p < kc`, all inside their matrices (the generic loop's reads).
#[target_feature(enable = "avx,avx2,fma")]
#[inline]
unsafe fn kloop_6x16(
    acc: &mut [[Y; 2]; 6],
    kc: usize,
    a: *const f32,
    si: usize,
    sp: usize,
    b: *const f32,
    ldb: usize,
) {
    if kc == 0 {
        return;
    }
    let [[c00, c01], [c10, c11], [c20, c21], [c30, c31], [c40, c41], [c50, c51]] = acc;
    let f = std::mem::size_of::<f32>();
    // SAFETY: see the function's contract; `a3` is row 3 of the tile, which exists (6 rows).
    unsafe {
        std::arch::asm!(
            "2:",
            "vmovups {b0}, ymmword ptr [{b}]",
            "vmovups {b1}, ymmword ptr [{b} + 32]",
            "vbroadcastss {t}, dword ptr [{a0}]",
            "vfmadd231ps {c00}, {t}, {b0}",
            "vfmadd231ps {c01}, {t}, {b1}",
            "vbroadcastss {t}, dword ptr [{a0} + {rs}]",
            "vfmadd231ps {c10}, {t}, {b0}",
            "vfmadd231ps {c11}, {t}, {b1}",
            "vbroadcastss {t}, dword ptr [{a0} + {rs}*2]",
            "vfmadd231ps {c20}, {t}, {b0}",
            "vfmadd231ps {c21}, {t}, {b1}",
            "vbroadcastss {t}, dword ptr [{a3}]",
            "vfmadd231ps {c30}, {t}, {b0}",
            "vfmadd231ps {c31}, {t}, {b1}",
            "vbroadcastss {t}, dword ptr [{a3} + {rs}]",
            "vfmadd231ps {c40}, {t}, {b0}",
            "vfmadd231ps {c41}, {t}, {b1}",
            "vbroadcastss {t}, dword ptr [{a3} + {rs}*2]",
            "vfmadd231ps {c50}, {t}, {b0}",
            "vfmadd231ps {c51}, {t}, {b1}",
            "add {a0}, {step}",
            "add {a3}, {step}",
            "add {b}, {ldb}",
            "dec {k}",
            "jnz 2b",
            c00 = inout(ymm_reg) c00.0,
            c01 = inout(ymm_reg) c01.0,
            c10 = inout(ymm_reg) c10.0,
            c11 = inout(ymm_reg) c11.0,
            c20 = inout(ymm_reg) c20.0,
            c21 = inout(ymm_reg) c21.0,
            c30 = inout(ymm_reg) c30.0,
            c31 = inout(ymm_reg) c31.0,
            c40 = inout(ymm_reg) c40.0,
            c41 = inout(ymm_reg) c41.0,
            c50 = inout(ymm_reg) c50.0,
            c51 = inout(ymm_reg) c51.0,
            b0 = out(ymm_reg) _,
            b1 = out(ymm_reg) _,
            t = out(ymm_reg) _,
            a0 = inout(reg) a => _,
            a3 = inout(reg) a.add(3 * si) => _,
            b = inout(reg) b => _,
            k = inout(reg) kc => _,
            rs = in(reg) si * f,
            step = in(reg) sp * f,
            ldb = in(reg) ldb * f,
            options(nostack, readonly),
        );
    }
}
