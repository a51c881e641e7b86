//! `varti pmode …` (in progress).

use std::process::ExitCode;

use clap::Subcommand;

/// The `pmode` command group.
#[derive(Debug, Subcommand)]
pub enum PmodeCommand {}

/// Runs a `pmode` command.
pub fn run(cmd: PmodeCommand) -> anyhow::Result<ExitCode> {
    match cmd {}
}
