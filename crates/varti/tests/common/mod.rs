//! Shared helpers for the integration tests: where the third-party vectors are.
#![allow(dead_code)]

use std::path::PathBuf;

/// The interop vectors directory: `$VARTI_VECTORS`, or `../shared/vectors` beside the
/// project root. When the vectors are absent the test says so loudly; under CI
/// (`CI` set) it fails, so a missing checkout can never pass as green.
pub fn vectors() -> Option<PathBuf> {
    shared_dir("VARTI_VECTORS", "vectors", "README.md")
}

/// The shared specifications directory: `$VARTI_SPECS`, or `../shared/specs`; absent, as
/// [`vectors`].
pub fn specs() -> Option<PathBuf> {
    shared_dir("VARTI_SPECS", "specs", "conformance.md")
}

fn shared_dir(env: &str, name: &str, marker: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os(env) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared")
            .join(name),
    };
    if dir.join(marker).is_file() {
        return Some(dir);
    }
    let msg = format!(
        "SHARED {} MISSING: {} not found; set {env} to the shared {name} directory",
        name.to_uppercase(),
        dir.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    eprintln!("\n!!!!!!!! {msg} — interop test NOT run !!!!!!!!\n");
    None
}

/// Reads a vector file, panicking with its path when it cannot be read.
pub fn read(rel: &str) -> Option<Vec<u8>> {
    let dir = vectors()?;
    let path = dir.join(rel);
    Some(std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display())))
}
