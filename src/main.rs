//! The `hmdn-cpu` command: parse, run, print the error, exit with its code.

use clap::Parser;
use hmdn_kernels::mem::LineAligned;
use std::alloc::{GlobalAlloc, Layout};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Large buffers start on a cache line (see [`hmdn_kernels::mem::LineAligned`]), and the live
/// heap bytes are counted, so that a batch too large for the machine is refused with a message
/// before it is allocated (`hmdn_cpu::memory`). Training allocates nothing per step, so the
/// count costs nothing in the hot loop.
#[global_allocator]
static ALLOC: LiveCounted = LiveCounted;

/// Bytes currently allocated through [`ALLOC`].
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// [`LineAligned`] with a running total of live bytes.
struct LiveCounted;

// SAFETY: every call is forwarded unchanged to `LineAligned`; only the byte total is kept
// (after a successful allocation, so a failed one counts nothing).
unsafe impl GlobalAlloc for LiveCounted {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = LineAligned.alloc(l);
        if !p.is_null() {
            LIVE.fetch_add(l.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = LineAligned.alloc_zeroed(l);
        if !p.is_null() {
            LIVE.fetch_add(l.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        LineAligned.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        let q = LineAligned.realloc(p, l, new_size);
        if !q.is_null() {
            LIVE.fetch_add(new_size, Ordering::Relaxed);
            LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        }
        q
    }
}

fn main() -> ExitCode {
    restore_sigpipe();
    hmdn_cpu::memory::set_live_bytes_probe(|| LIVE.load(Ordering::Relaxed));
    let cli = hmdn_cpu::cli::Cli::parse();
    match hmdn_cpu::app::run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            // The message already carries its cause (file, line, column, OS error). It is
            // printed as exactly one line (a message from a parser may span several), so
            // scripts can rely on `error:` plus one line.
            let text = e.to_string();
            let one_line: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!("error: {}", one_line.join("; "));
            ExitCode::from(2)
        }
    }
}

/// Makes a write to a closed pipe end the process quietly, as for other command-line tools
/// (`hmdn-cpu bench | head -3`). Rust's runtime ignores SIGPIPE, which turns such a write into
/// an error that `println!` reports as a panic with a backtrace.
#[cfg(unix)]
fn restore_sigpipe() {
    // The C library's `signal(2)`; SIGPIPE is 13 and SIG_DFL is 0 on every Unix that Rust targets.
    extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
    }
    const SIGPIPE: i32 = 13;
    const SIG_DFL: usize = 0;
    // SAFETY: installs the default disposition for one signal before any other thread exists;
    // no Rust state depends on SIGPIPE being ignored (we never write to sockets).
    unsafe {
        signal(SIGPIPE, SIG_DFL);
    }
}

#[cfg(not(unix))]
fn restore_sigpipe() {}
