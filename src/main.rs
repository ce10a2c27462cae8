//! The `hmdn-cpu` command: parse, run, print the error, exit with its code.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = hmdn_cpu::cli::Cli::parse();
    match hmdn_cpu::app::run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            // The message already carries its cause (file, line, column, OS error).
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
