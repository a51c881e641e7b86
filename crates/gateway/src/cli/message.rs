//! `varti message …` (in progress).

use std::process::ExitCode;

use clap::Subcommand;

/// The `message` command group.
#[derive(Debug, Subcommand)]
pub enum MessageCommand {}

/// Runs a `message` command.
pub fn run(cmd: MessageCommand) -> anyhow::Result<ExitCode> {
    match cmd {}
}
