//! The one place with target features and intrinsics: runtime SIMD selection and the f32 fast
//! paths of every kernel.
//!
//! Layout of this folder:
//! - `mod.rs` (this file): [`SimdPath`], detection (once, `OnceLock`), the `HMDN_SIMD`
//!   environment override, the per-thread [`with_path`] test hook, [`simd_info`], the
//!   vector trait `Vf` the kernels are written against, and the path dispatchers the public
//!   kernels call.
//! - `kern.rs`: every fast kernel, written once, generic over `Vf`, `#[inline(always)]`.
//! - `x86.rs`: `Vf` for `__m512` (AVX-512F) and `__m256` (AVX2+FMA); the `entries!` macro
//!   below generates the `#[target_feature]` entry points that instantiate `kern.rs` for them.
//! - `portable.rs`: `Vf` for a plain `[f32; 8]`, the guaranteed fallback on every CPU and
//!   architecture.
//!
//! Why generic + `#[inline(always)]`: an intrinsic only compiles to its instruction inside a
//! function that enables the feature. Each entry point is a `#[target_feature]` function whose
//! body is one call to a generic kernel; forced inlining pulls the kernel and every `Vf`
//! method into that function, so the whole loop is compiled with the feature on.
//!
//! Dispatch is by value: a public kernel reads [`simd_path`] once on the calling thread and
//! passes it to every chunk it hands to rayon, so a test's [`with_path`] override reaches the
//! worker threads too, and one call never mixes paths.

use std::cell::Cell;
use std::sync::OnceLock;

pub(crate) mod kern;
mod portable;
#[cfg(target_arch = "x86_64")]
mod x86;

/// Which instruction set the f32 fast paths use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SimdPath {
    /// Plain Rust on `[f32; 8]` lanes (whatever the compiler's baseline target gives, e.g.
    /// SSE2 on x86_64). Always available.
    Portable,
    /// 256-bit AVX2 with fused multiply-add.
    Avx2,
    /// 512-bit AVX-512F.
    Avx512,
}

impl SimdPath {
    /// Every path, weakest first.
    pub const ALL: [SimdPath; 3] = [SimdPath::Portable, SimdPath::Avx2, SimdPath::Avx512];

    /// Short name, as accepted by `HMDN_SIMD` and printed by `hmdn-cpu info`.
    pub fn name(self) -> &'static str {
        match self {
            SimdPath::Portable => "portable",
            SimdPath::Avx2 => "avx2",
            SimdPath::Avx512 => "avx512",
        }
    }

    /// Parses a name as written by [`SimdPath::name`].
    pub fn from_name(s: &str) -> Option<SimdPath> {
        SimdPath::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s.trim()))
    }

    /// Whether this CPU can run the path.
    pub fn supported(self) -> bool {
        match self {
            SimdPath::Portable => true,
            #[cfg(target_arch = "x86_64")]
            SimdPath::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            SimdPath::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// The paths this CPU supports, weakest first (always starts with `Portable`).
pub fn available_paths() -> Vec<SimdPath> {
    SimdPath::ALL
        .into_iter()
        .filter(|p| p.supported())
        .collect()
}

/// The process-wide choice: the best supported path, lowered by `HMDN_SIMD` if set. Also the
/// raw override string, for [`simd_info`].
fn default_choice() -> &'static (SimdPath, Option<String>) {
    static CHOICE: OnceLock<(SimdPath, Option<String>)> = OnceLock::new();
    CHOICE.get_or_init(|| {
        let best = *available_paths().last().unwrap_or(&SimdPath::Portable);
        let env = std::env::var("HMDN_SIMD").ok();
        let path = match env.as_deref().and_then(SimdPath::from_name) {
            // Never pick a path the CPU lacks: fall back to the best one not above the request.
            Some(req) => available_paths()
                .into_iter()
                .rfind(|p| *p <= req)
                .unwrap_or(SimdPath::Portable),
            None => best,
        };
        (path, env)
    })
}

thread_local! {
    static OVERRIDE: Cell<Option<SimdPath>> = const { Cell::new(None) };
}

/// The path kernels called from this thread use: the [`with_path`] override if one is active,
/// else the process-wide choice (detected once; see [`simd_info`]).
pub fn simd_path() -> SimdPath {
    OVERRIDE
        .with(|o| o.get())
        .unwrap_or_else(|| default_choice().0)
}

/// Runs `f` with kernels called from this thread using `path` (restored afterwards, also on
/// panic). Meant for tests and benchmarks that must exercise every path in one process,
/// without the ordering hazards of environment variables.
///
/// # Panics
/// If the CPU does not support `path` (a programmer error: iterate [`available_paths`]).
#[track_caller]
pub fn with_path<R>(path: SimdPath, f: impl FnOnce() -> R) -> R {
    assert!(
        path.supported(),
        "with_path: this CPU does not support SIMD path {}",
        path.name()
    );
    struct Restore(Option<SimdPath>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDE.with(|o| o.set(self.0));
        }
    }
    let _restore = Restore(OVERRIDE.with(|o| o.replace(Some(path))));
    f()
}

/// One line for `hmdn-cpu info`: the path in use, the CPU features detected and the
/// `HMDN_SIMD` override, e.g. `simd: avx512 (cpu: avx2 fma avx512f; HMDN_SIMD unset)`.
pub fn simd_info() -> String {
    let mut feats: Vec<&str> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            feats.push("avx2");
        }
        if std::arch::is_x86_feature_detected!("fma") {
            feats.push("fma");
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            feats.push("avx512f");
        }
    }
    if feats.is_empty() {
        feats.push("none");
    }
    let (_, env) = default_choice();
    let env = match env.as_deref().map(str::trim) {
        None | Some("") => "HMDN_SIMD unset".to_string(),
        Some(v) if SimdPath::from_name(v).is_none() => {
            format!("HMDN_SIMD={v} not recognised, ignored")
        }
        Some(v) => format!("HMDN_SIMD={v}"),
    };
    format!(
        "simd: {} (cpu: {}; {}; arch {})",
        simd_path().name(),
        feats.join(" "),
        env,
        std::env::consts::ARCH
    )
}

/// A vector of `LANES` f32 values. All methods are `unsafe` because the x86 implementations
/// may only run on CPUs with their feature (guaranteed by [`SimdPath::supported`] before any
/// entry point is called) and pointer methods read/write `LANES` values.
///
/// Every method is `#[inline(always)]` in its implementations (see module docs).
pub(crate) trait Vf: Copy {
    /// Number of f32 lanes.
    const LANES: usize;
    /// All lanes `x`.
    unsafe fn splat(x: f32) -> Self;
    /// Unaligned load of `LANES` values.
    unsafe fn load(p: *const f32) -> Self;
    /// Unaligned store of `LANES` values.
    unsafe fn store(self, p: *mut f32);
    /// Lane-wise `self + b`.
    unsafe fn add(self, b: Self) -> Self;
    /// Lane-wise `self - b`.
    unsafe fn sub(self, b: Self) -> Self;
    /// Lane-wise `self * b`.
    unsafe fn mul(self, b: Self) -> Self;
    /// Lane-wise `self / b` (IEEE, correctly rounded).
    unsafe fn div(self, b: Self) -> Self;
    /// `self * b + c`: one rounding where the hardware fuses (x86 paths), two on `Portable`.
    unsafe fn mul_add(self, b: Self, c: Self) -> Self;
    /// Lane-wise maximum (operands must not be NaN).
    unsafe fn max(self, b: Self) -> Self;
    /// Lane-wise square root (IEEE, correctly rounded).
    unsafe fn sqrt(self) -> Self;
    /// `-|self|` (sets the sign bit).
    unsafe fn neg_abs(self) -> Self;
    /// Lane-wise `if a > b { x } else { y }` (false when either is NaN).
    unsafe fn select_gt(a: Self, b: Self, x: Self, y: Self) -> Self;
    /// Lane-wise `if a >= b { x } else { y }` (false when either is NaN).
    unsafe fn select_ge(a: Self, b: Self, x: Self, y: Self) -> Self;
    /// Lane-wise `if a < b { x } else { y }` (false when either is NaN).
    unsafe fn select_lt(a: Self, b: Self, x: Self, y: Self) -> Self;
    /// `2^n` for lanes holding integers `n` in `[-126, 127]`.
    unsafe fn pow2i(self) -> Self;
    /// Whether any lane has `self < b` (false for a NaN lane).
    unsafe fn any_lt(self, b: Self) -> bool;
    /// Nearest integer, ties to even, for `|self| < 2^22` (a zero may keep its sign).
    #[inline(always)]
    unsafe fn round_even(self) -> Self {
        // Adding and subtracting 1.5·2^23 leaves no fraction bits.
        const MAGIC: f32 = 12_582_912.0;
        self.add(Self::splat(MAGIC)).sub(Self::splat(MAGIC))
    }
    /// The k loop of a 6-row × 2-vector GEMM register tile ([`kern`]'s `tile`), A element
    /// `(i, p)` at `a[i·si + p·sp]` and B's row `p` at `b + p·ldb`: for each of `kc` steps,
    /// `acc[i][v] = a(i, p)·b[p][v·LANES..] + acc[i][v]`, one fused multiply-add each, so the
    /// same bits as the generic loop. Returns false, doing nothing, where this type has no
    /// written-out loop (the caller then runs the generic one).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn kloop_6x2(
        _acc: &mut [[Self; 2]; 6],
        _kc: usize,
        _a: *const f32,
        _si: usize,
        _sp: usize,
        _b: *const f32,
        _ldb: usize,
    ) -> bool {
        false
    }
    /// `self · 2^n`, rounded once, for lanes `n` holding integers in `[-150, 0]` and `self`
    /// normal: one multiply by `2^n` when every lane's `2^n` is a normal number, else two by
    /// `2^n1 · 2^n2` (`n1 ≈ n/2`, both normal). The same bits either way: scaling by a normal
    /// power of two is exact while the product stays normal, and once it is subnormal both
    /// round the same exact product once. [`Vf::mul_pow2_group`] on one vector.
    #[inline(always)]
    unsafe fn mul_pow2(self, n: Self) -> Self {
        let mut p = [self];
        Self::mul_pow2_group(&mut p, &[n]);
        p[0]
    }
    /// [`Vf::mul_pow2`] on `G` vectors at once: `p[g] = p[g] · 2^n[g]`, the same bits. One
    /// test for the whole group (the two-multiply form where any lane of any vector needs
    /// it, the one-multiply form otherwise; both give every lane the same bits) instead of a
    /// test and a branch per vector: the GEMM's sigmoid epilogue cost ~30% less for it
    /// (`kern::EPI_GROUP`).
    #[inline(always)]
    unsafe fn mul_pow2_group<const G: usize>(p: &mut [Self; G], n: &[Self; G]) {
        let floor = Self::splat(-126.0);
        // `|`, not `||`: every vector tested, no branch per vector.
        let mut any = false;
        for v in n {
            any |= v.any_lt(floor);
        }
        if any {
            let half = Self::splat(0.5);
            for g in 0..G {
                let n1 = n[g].mul(half).round_even();
                let n2 = n[g].sub(n1);
                p[g] = p[g].mul(n1.pow2i()).mul(n2.pow2i());
            }
        } else {
            for g in 0..G {
                p[g] = p[g].mul(n[g].pow2i());
            }
        }
    }
    /// Rows of the GEMM register tile for this vector type (see `kern::gemm_block`).
    const GEMM_MR: usize;
    /// Vectors per row of the GEMM register tile (`NR = GEMM_NV * LANES`).
    const GEMM_NV: usize;
    /// Rows handled together by the argmin kernel (each holds two accumulators).
    const ARGMIN_R: usize;
}

/// Generates, for each kernel in `kern.rs`, one `#[target_feature]` entry per x86 path, one
/// portable entry, and a dispatcher `name(path, args..)` that picks among them.
macro_rules! entries {
    ($( fn $name:ident ( $($arg:ident : $ty:ty),* $(,)? ) $(-> $ret:ty)? ; )*) => {
        #[cfg(target_arch = "x86_64")]
        mod avx512_entry {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[target_feature(enable = "avx512f")]
                pub(super) unsafe fn $name($($arg: $ty),*) $(-> $ret)? {
                    kern::$name::<x86::Z>($($arg),*)
                }
            )*
        }
        #[cfg(target_arch = "x86_64")]
        mod avx2_entry {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[target_feature(enable = "avx2,fma")]
                pub(super) unsafe fn $name($($arg: $ty),*) $(-> $ret)? {
                    kern::$name::<x86::Y>($($arg),*)
                }
            )*
        }
        mod portable_entry {
            #[allow(unused_imports)]
            use super::*;
            $(
                pub(super) fn $name($($arg: $ty),*) $(-> $ret)? {
                    // SAFETY: the portable vector type has no CPU requirement; the kernel's
                    // own pointer arithmetic is bounds-checked by its callers (see kern.rs).
                    unsafe { kern::$name::<portable::P8>($($arg),*) }
                }
            )*
        }
        $(
            #[allow(clippy::too_many_arguments)]
            pub(crate) fn $name(path: SimdPath, $($arg: $ty),*) $(-> $ret)? {
                match path {
                    // SAFETY: a path is only ever chosen (by `default_choice`/`with_path`)
                    // when `SimdPath::supported` says the CPU has its features.
                    #[cfg(target_arch = "x86_64")]
                    SimdPath::Avx512 => unsafe { avx512_entry::$name($($arg),*) },
                    #[cfg(target_arch = "x86_64")]
                    SimdPath::Avx2 => unsafe { avx2_entry::$name($($arg),*) },
                    _ => portable_entry::$name($($arg),*),
                }
            }
        )*
    };
}

use kern::{AdamConsts, GemmBlock};

entries! {
    fn bias_relu(y: &mut [f32], bias: &[f32]);
    fn bias_add(y: &mut [f32], bias: &[f32]);
    fn add_rows_indexed(out: &mut [f32], w: usize, table: &[f32], rows: &[u32], per_row: usize);
    fn add_rows_indexed_bias_relu(out: &mut [f32], w: usize, table: &[f32], rows: &[u32], per_row: usize, bias: &[f32]);
    fn scatter_add_rows_indexed(table: &mut [f32], w: usize, src: &[f32], src_stride: usize, src_off: usize, rows: &[u32], per_row: usize);
    fn relu_backward(dpre: &mut [f32], dy: &[f32], y: &[f32]);
    fn scaled_sigmoid_forward(y: &mut [f32], x: &[f32], scale: f32);
    fn scaled_sigmoid_backward(dx: &mut [f32], dy: &[f32], y: &[f32], scale: f32);
    fn bias_scaled_sigmoid(delta: &mut [f32], u: &[f32], bias: &[f32], scale: f32);
    fn bias_scaled_sigmoid_mul(delta: &mut [f32], y: &mut [f32], u: &[f32], bias: &[f32], x: &[f32], scale: f32);
    fn scaled_sigmoid_mul_backward(du: &mut [f32], dx: &mut [f32], dy: &[f32], x: &[f32], delta: &[f32], scale: f32);
    fn bias_grad_cols(db: &mut [f32], dy: &[f32], n: usize, c0: usize);
    fn softmax_forward(y: &mut [f32], x: &[f32], n: usize);
    fn softmax_backward(dx: &mut [f32], dy: &[f32], y: &[f32], n: usize);
    fn bce_backward(dx: &mut [f32], logits: &[f32], labels: &[f32], scale: f32);
    fn adam(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: &AdamConsts);
    fn sparse_adam(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: &AdamConsts);
    fn sq_norms(out: &mut [f32], mat: &[f32], z: usize);
    fn argmin_rows(codes: &mut [u32], r: &[f32], codebook: &[f32], norms: &[f32], z: usize);
    fn argmin_scan(codes: &mut [u32], dots: &[f32], norms: &[f32]);
    fn gemm_block(t: &GemmBlock);
    fn gemm_block_epi(t: &GemmBlock);
    fn fma_loop(iters: usize) -> f32;
}

/// Runs a register-resident loop of `iters × 12` independent vector FMAs on the current path
/// and returns `(sink, flops)`; `flops / time` is the single-core FMA peak the GEMM
/// benchmarks compare against. The sink only keeps the work from being optimised away.
pub fn fma_peak_loop(iters: usize) -> (f32, u64) {
    let path = simd_path();
    let lanes = match path {
        SimdPath::Avx512 => 16,
        _ => 8,
    };
    let sink = fma_loop(path, iters);
    (sink, (iters * kern::FMA_ACCS * lanes * 2) as u64)
}

/// Register tile of the GEMM micro-kernel on `path`: `(MR, NR)` rows × columns of C.
pub(crate) fn gemm_dims(path: SimdPath) -> (usize, usize) {
    match path {
        SimdPath::Avx512 => (kern::MR_512, kern::NR_512),
        SimdPath::Avx2 => (kern::MR_256, kern::NR_256),
        SimdPath::Portable => (kern::MR_P, kern::NR_P),
    }
}

/// Asks the CPU to start loading the cache line holding `p` (a hint: it changes no result,
/// and the instruction never faults, so any address is allowed). For the random row accesses
/// of embedding gathers and lazy Adam, whose latency otherwise dominates. No-op off x86-64.
#[inline(always)]
pub(crate) fn prefetch(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` does not access memory architecturally and cannot fault; SSE is
    // part of the x86-64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
