//! `varti oots …` (in progress).

use std::process::ExitCode;

use clap::Subcommand;

/// The `oots` command group.
#[derive(Debug, Subcommand)]
pub enum OotsCommand {}

/// Runs a `oots` command.
pub fn run(cmd: OotsCommand) -> anyhow::Result<ExitCode> {
    match cmd {}
}
