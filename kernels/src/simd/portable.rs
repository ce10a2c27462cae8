//! [`Vf`] for a plain `[f32; 8]`: the fallback on every CPU. Lane loops that the compiler
//! turns into whatever vector instructions the baseline target has.

use super::Vf;

/// 8 × f32 in an ordinary array.
#[derive(Clone, Copy)]
pub(crate) struct P8([f32; 8]);

#[inline(always)]
fn map2(a: P8, b: P8, f: impl Fn(f32, f32) -> f32) -> P8 {
    let mut o = [0.0f32; 8];
    for ((o, &x), &y) in o.iter_mut().zip(&a.0).zip(&b.0) {
        *o = f(x, y);
    }
    P8(o)
}

#[inline(always)]
fn sel(a: P8, b: P8, x: P8, y: P8, f: impl Fn(f32, f32) -> bool) -> P8 {
    let mut o = y.0;
    for (i, o) in o.iter_mut().enumerate() {
        if f(a.0[i], b.0[i]) {
            *o = x.0[i];
        }
    }
    P8(o)
}

impl Vf for P8 {
    const LANES: usize = 8;
    const GEMM_MR: usize = super::kern::MR_P;
    const GEMM_NV: usize = super::kern::NR_P / 8;
    const ARGMIN_R: usize = 4;
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        P8([x; 8])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        P8(std::ptr::read_unaligned(p as *const [f32; 8]))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        std::ptr::write_unaligned(p as *mut [f32; 8], self.0)
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        map2(self, b, |x, y| x + y)
    }
    #[inline(always)]
    unsafe fn sub(self, b: Self) -> Self {
        map2(self, b, |x, y| x - y)
    }
    #[inline(always)]
    unsafe fn mul(self, b: Self) -> Self {
        map2(self, b, |x, y| x * y)
    }
    #[inline(always)]
    unsafe fn div(self, b: Self) -> Self {
        map2(self, b, |x, y| x / y)
    }
    #[inline(always)]
    unsafe fn mul_add(self, b: Self, c: Self) -> Self {
        // Unfused on purpose: `f32::mul_add` is a slow libm call without hardware FMA.
        self.mul(b).add(c)
    }
    #[inline(always)]
    unsafe fn max(self, b: Self) -> Self {
        map2(self, b, f32::max)
    }
    #[inline(always)]
    unsafe fn sqrt(self) -> Self {
        let mut o = self.0;
        for x in o.iter_mut() {
            *x = x.sqrt();
        }
        P8(o)
    }
    #[inline(always)]
    unsafe fn neg_abs(self) -> Self {
        let mut o = self.0;
        for x in o.iter_mut() {
            *x = -x.abs();
        }
        P8(o)
    }
    #[inline(always)]
    unsafe fn select_gt(a: Self, b: Self, x: Self, y: Self) -> Self {
        sel(a, b, x, y, |p, q| p > q)
    }
    #[inline(always)]
    unsafe fn select_ge(a: Self, b: Self, x: Self, y: Self) -> Self {
        sel(a, b, x, y, |p, q| p >= q)
    }
    #[inline(always)]
    unsafe fn select_lt(a: Self, b: Self, x: Self, y: Self) -> Self {
        sel(a, b, x, y, |p, q| p < q)
    }
    #[inline(always)]
    unsafe fn any_lt(self, b: Self) -> bool {
        self.0.iter().zip(&b.0).any(|(p, q)| p < q)
    }
    #[inline(always)]
    unsafe fn pow2i(self) -> Self {
        let mut o = self.0;
        for x in o.iter_mut() {
            *x = f32::from_bits((((*x as i32) + 127) as u32) << 23);
        }
        P8(o)
    }
}
