//! The `fxproxy` command: parses the arguments, runs the chosen command and turns its outcome
//! into an exit code (0 clean stop, 2 bad configuration or arguments, 1 anything else).

use fxproxy::{cli, commands};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match cli::parse(&args) {
        Ok(command) => commands::run_command(command),
        Err(e) => {
            eprintln!("fxproxy: {e}\n\n{}", cli::USAGE);
            ExitCode::from(2)
        }
    }
}
