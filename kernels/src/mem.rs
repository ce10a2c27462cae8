//! Large buffers backed by transparent huge pages, where the OS offers them.
//!
//! Embedding lookups and lazy Adam touch rows at random across tables of tens of megabytes
//! (aliccp-shape: ~59 MB of values, twice that of Adam moments). With 4 KiB pages nearly
//! every row is a different page, beyond what the TLB holds, and each access pays a page walk
//! on top of its cache miss; 2 MiB pages cover the tables with a few dozen TLB entries.
//! Linux backs anonymous memory with huge pages either always or, on many distributions, only
//! where a program asked for it with `madvise(MADV_HUGEPAGE)` (the `madvise` setting of
//! `/sys/kernel/mm/transparent_hugepage/enabled`) — and only for pages not yet touched, so
//! the advice must come between allocation and first write. These helpers do that. Elsewhere
//! (other systems, THP off) they are plain allocations: the contents are the same either way.

/// Huge page size the advice aims at (x86-64 and most aarch64 Linux kernels).
pub const HUGE_PAGE_BYTES: usize = 2 << 20;

/// Buffers smaller than this are left alone (a huge page would be mostly padding).
pub const MIN_ADVISED_BYTES: usize = 4 * HUGE_PAGE_BYTES;

/// Advises the OS to back the whole huge pages inside `buf` with huge pages. Returns whether
/// the advice was given (Linux, a buffer of at least [`MIN_ADVISED_BYTES`], and the call
/// succeeded). Only pages first touched after the call are affected; the caller decides when
/// that is.
pub fn advise_huge_pages<T>(buf: &[T]) -> bool {
    advise_range(buf.as_ptr() as usize, std::mem::size_of_val(buf))
}

/// [`advise_huge_pages`] on `bytes` bytes from address `start` (memory of this process,
/// possibly not yet initialised).
fn advise_range(start: usize, bytes: usize) -> bool {
    bytes >= MIN_ADVISED_BYTES && advise(start, bytes)
}

#[cfg(target_os = "linux")]
fn advise(start: usize, bytes: usize) -> bool {
    // madvise wants a page-aligned start; the whole huge pages inside the buffer are what
    // can be backed by huge pages anyway.
    let lo = start.next_multiple_of(HUGE_PAGE_BYTES);
    let hi = (start + bytes) / HUGE_PAGE_BYTES * HUGE_PAGE_BYTES;
    if hi <= lo {
        return false;
    }
    // SAFETY: [lo, hi) lies inside `buf`, memory this process owns for the call's duration;
    // MADV_HUGEPAGE changes how future faults are served, never the contents.
    let rc = unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE) };
    rc == 0
}

#[cfg(not(target_os = "linux"))]
fn advise(_start: usize, _bytes: usize) -> bool {
    false
}

/// An empty vector with room for `n` elements, the room advised ([`advise_huge_pages`])
/// before anything is written to it.
fn advised_with_capacity<T>(n: usize) -> Vec<T> {
    let v: Vec<T> = Vec::with_capacity(n);
    advise_range(v.as_ptr() as usize, n * std::mem::size_of::<T>());
    v
}

/// A vector of `n` copies of `fill`, its buffer advised ([`advise_huge_pages`]) before any
/// element is written, and then written element by element (so every page is mapped now,
/// not at some later first write in a training step).
pub fn huge_page_vec<T: Copy>(n: usize, fill: T) -> Vec<T> {
    let mut v = advised_with_capacity(n);
    v.extend((0..n).map(|_| std::hint::black_box(fill)));
    v
}

/// A copy of `src` in a buffer advised as [`huge_page_vec`]'s.
pub fn huge_page_copy<T: Copy>(src: &[T]) -> Vec<T> {
    let mut v = advised_with_capacity(src.len());
    v.extend_from_slice(src);
    v
}

/// Allocations of at least this many bytes get a cache-line (64-byte) aligned start from
/// [`LineAligned`].
pub const LINE_ALIGN_MIN_BYTES: usize = 4096;

/// Cache line size the alignment aims at (x86-64; also a multiple of aarch64's 64).
pub const LINE_BYTES: usize = 64;

/// A global allocator: the system allocator, with every block of at least
/// [`LINE_ALIGN_MIN_BYTES`] starting on a cache line.
///
/// Why: the f32 GEMM's micro-kernel loads the packed weights 64 bytes at a time (one AVX-512
/// vector) and stores C's register tiles likewise. glibc's `malloc` aligns blocks to 16 bytes
/// only (large blocks start 16 bytes into a page), so in a plain `Vec` every such load and
/// store straddles two cache lines. With the start of a packed weight and of each activation
/// buffer on a line (their row lengths are multiples of 16 floats, so every row is then too),
/// `chunk_gemms` at the model's shapes ran 3.5% (368 × 64, 368 × 128) to 6% (64 × 368)
/// faster (see `benches/RESULTS.md`, fifteenth session). Only the placement changes, never a
/// value. The binary installs it (`#[global_allocator]` in `src/main.rs`), as do the benches.
#[derive(Clone, Copy, Debug, Default)]
pub struct LineAligned;

impl LineAligned {
    /// The layout actually requested from the system for `layout`.
    fn widen(layout: std::alloc::Layout) -> std::alloc::Layout {
        if layout.size() >= LINE_ALIGN_MIN_BYTES && layout.align() < LINE_BYTES {
            layout.align_to(LINE_BYTES).unwrap_or(layout)
        } else {
            layout
        }
    }
}

// SAFETY: every block is allocated and freed by `System` with the same widened layout (a
// function of the caller's layout alone), which satisfies the caller's alignment and size.
unsafe impl std::alloc::GlobalAlloc for LineAligned {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        std::alloc::System.alloc(Self::widen(layout))
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        std::alloc::System.alloc_zeroed(Self::widen(layout))
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        std::alloc::System.dealloc(ptr, Self::widen(layout))
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let old = Self::widen(layout);
        let Ok(new) = std::alloc::Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        let new = Self::widen(new);
        if new.align() == old.align() {
            // `System` keeps a block's alignment across a reallocation.
            return std::alloc::System.realloc(ptr, old, new_size);
        }
        // Crossing the threshold changes the alignment: a new block, then the copy.
        let fresh = std::alloc::System.alloc(new);
        if !fresh.is_null() {
            std::ptr::copy_nonoverlapping(ptr, fresh, layout.size().min(new_size));
            std::alloc::System.dealloc(ptr, old);
        }
        fresh
    }
}

/// Whether the running program's global allocator starts large blocks on a cache line (as
/// [`LineAligned`] does): allocates (without touching) a few buffers above
/// [`LINE_ALIGN_MIN_BYTES`] and checks where they start. For `hmdn-cpu info`.
pub fn large_blocks_line_aligned() -> bool {
    [LINE_ALIGN_MIN_BYTES, 100_000, (1 << 20) + 4]
        .iter()
        .all(|&n| {
            let v = Vec::<u8>::with_capacity(n);
            (v.as_ptr() as usize).is_multiple_of(LINE_BYTES)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_page_buffers_hold_what_was_asked() {
        for n in [0usize, 1, 7, 1023, 3 << 20] {
            let v = huge_page_vec(n, 1.5f32);
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|&x| x == 1.5));
            let src: Vec<u32> = (0..n as u32).collect();
            assert_eq!(huge_page_copy(&src), src);
        }
    }

    #[test]
    fn line_aligned_blocks_start_on_a_line_and_keep_their_contents() {
        use std::alloc::{GlobalAlloc, Layout};
        let a = LineAligned;
        // SAFETY: every block is freed with the allocator and layout it was made with, and
        // only the bytes of its current size are read or written.
        unsafe {
            // Below the threshold: the caller's alignment only (and still usable).
            let small = Layout::from_size_align(100, 4).unwrap();
            let p = a.alloc(small);
            assert!(!p.is_null());
            p.write_bytes(7, 100);
            // Growing across the threshold moves the block onto a line, contents kept.
            let q = a.realloc(p, small, 3 * LINE_ALIGN_MIN_BYTES + 4);
            assert_eq!(q as usize % LINE_BYTES, 0);
            assert!((0..100).all(|i| *q.add(i) == 7));
            let big = Layout::from_size_align(3 * LINE_ALIGN_MIN_BYTES + 4, 4).unwrap();
            for i in 0..big.size() {
                *q.add(i) = (i % 251) as u8;
            }
            // Growing above it stays on a line; shrinking below it leaves it.
            let r = a.realloc(q, big, 64 * LINE_ALIGN_MIN_BYTES);
            assert_eq!(r as usize % LINE_BYTES, 0);
            assert!((0..big.size()).all(|i| *r.add(i) == (i % 251) as u8));
            let huge = Layout::from_size_align(64 * LINE_ALIGN_MIN_BYTES, 4).unwrap();
            let s = a.realloc(r, huge, 10);
            assert!(!s.is_null());
            assert!((0..10).all(|i| *s.add(i) == (i % 251) as u8));
            a.dealloc(s, Layout::from_size_align(10, 4).unwrap());
            // Blocks at and above the threshold, zeroed or not, start on a line; a caller's
            // larger alignment is kept.
            for (size, align) in [(LINE_ALIGN_MIN_BYTES, 1), (1 << 20, 16), (5000, 4096)] {
                let l = Layout::from_size_align(size, align).unwrap();
                let p = a.alloc(l);
                let z = a.alloc_zeroed(l);
                assert_eq!(p as usize % LINE_BYTES.max(align), 0);
                assert_eq!(z as usize % LINE_BYTES.max(align), 0);
                assert!((0..size).all(|i| *z.add(i) == 0));
                a.dealloc(p, l);
                a.dealloc(z, l);
            }
        }
    }

    #[test]
    fn small_buffers_are_not_advised() {
        assert!(!advise_huge_pages(&[0u8; 4096]));
        assert!(!advise_huge_pages::<f32>(&[]));
    }
}
