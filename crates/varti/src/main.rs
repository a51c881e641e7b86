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
    if !args.runs_servers() {
        end_quietly_on_closed_stdout();
    }
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

/// Restores the default action of SIGPIPE (the Rust runtime ignores it), so that a
/// command whose stdout is a closed pipe (`varti pmode show … | head`) ends quietly like
/// other Unix tools (the shell reports status 141) instead of panicking in `println!`.
///
/// Chosen over a writer that turns `BrokenPipe` into an exit: every command prints with
/// `println!`, and one line here covers all of them, present and future. The commands
/// that run servers (`serve`, `demo`) keep SIGPIPE ignored: there a peer closing a
/// socket or a pipe must fail that one write, never end the process.
fn end_quietly_on_closed_stdout() {
    #[cfg(unix)]
    // SAFETY: called once at start-up, before any thread is spawned; SIG_DFL is a valid
    // disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
