//! `varti`: the eDelivery AS4 access point and OOTS gateway.
//!
//! Exit codes are the same for every command: 0 success, 1 the command ran and found
//! problems (invalid PModes, a message that fails verification, …), 2 it could not run
//! (bad arguments, unreadable files).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    if !args.configures_own_logging() {
        cli::init_logging(args.verbose);
    }
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            cli::exit_cannot_run()
        }
    }
}
