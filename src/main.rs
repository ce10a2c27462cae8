//! The `hmdn-cpu` command: parse, run, print the error, exit with its code.

use clap::Parser;
use std::process::ExitCode;

/// Large buffers start on a cache line (see [`hmdn_kernels::mem::LineAligned`]).
#[global_allocator]
static ALLOC: hmdn_kernels::mem::LineAligned = hmdn_kernels::mem::LineAligned;

fn main() -> ExitCode {
    restore_sigpipe();
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
