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
    fn small_buffers_are_not_advised() {
        assert!(!advise_huge_pages(&[0u8; 4096]));
        assert!(!advise_huge_pages::<f32>(&[]));
    }
}
