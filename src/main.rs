//! The `hmdn-cpu` command: parse, run, print the error, exit with its code.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
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
