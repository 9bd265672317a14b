//! fxbench: a load generator and benchmark for fxproxy and anything speaking its protocol.
//! See `fxbench --help` and ../BENCHMARKS.md.

#![recursion_limit = "256"]

mod args;
mod clients;
mod clock;
mod feed;
mod miniproxy;
mod procstat;
mod report;
mod run;
mod scrape;
mod target;
mod tls;

use std::process::ExitCode;

fn main() -> ExitCode {
    let cmd = match args::parse(std::env::args().skip(1).collect()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fxbench: {e}");
            return ExitCode::from(2);
        }
    };
    match cmd {
        args::Command::Help => {
            print!("{}", args::USAGE);
            ExitCode::SUCCESS
        }
        args::Command::MiniProxy(o) => match miniproxy::run(o) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mini-proxy: {e}");
                ExitCode::FAILURE
            }
        },
        args::Command::Bench(o) => match run::run(&o) {
            Ok(r) => {
                print!("{}", r.to_text());
                if let Some(p) = &o.json {
                    if let Err(e) = r.append_json(p) {
                        eprintln!("fxbench: {}: {e}", p.display());
                        return ExitCode::FAILURE;
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fxbench: {e}");
                if let Some(p) = &o.json {
                    // A failed run is a result too: the sweep's table shows it.
                    if let Err(e) = report::append_error(p, &o, &e) {
                        eprintln!("fxbench: {}: {e}", p.display());
                    }
                }
                ExitCode::FAILURE
            }
        },
    }
}
