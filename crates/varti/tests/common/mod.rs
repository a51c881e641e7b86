//! Shared helpers for the integration tests: where the third-party vectors and the
//! specifications are, and running the built binary.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

#[path = "../../../as4/tests/common/mod.rs"]
mod as4_common;

use as4_common::shared_dir;
#[allow(unused_imports)] // each test binary uses a different subset
pub use as4_common::{read, vectors};

/// The shared specifications directory: `$VARTI_SPECS`, or `../shared/specs`; absent, as
/// [`vectors`].
pub fn specs() -> Option<PathBuf> {
    shared_dir("VARTI_SPECS", "specs", "conformance.md")
}

/// The specifications directory as the OOTS tests need it: with the EDM artefacts
/// (`oots-edm-v1/`); absent, as [`vectors`].
pub fn oots_specs() -> Option<PathBuf> {
    shared_dir("VARTI_SPECS", "specs", "oots-edm-v1")
}

/// Runs the built `varti` with `args`: its exit code (-1 when a signal ended it), stdout
/// and stderr.
pub fn varti(args: &[&str]) -> (i32, String, String) {
    run(Command::new(env!("CARGO_BIN_EXE_varti")).args(args))
}

/// Runs `command` to its end: its exit code (-1 when a signal ended it), stdout and
/// stderr.
pub fn run(command: &mut Command) -> (i32, String, String) {
    let out = command.output().expect("run varti");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
