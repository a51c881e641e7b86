//! Shared helpers for the integration tests: where the third-party vectors are. The other
//! crates' tests include this file too (`#[path]`), for the vectors and the specs.
#![allow(dead_code)]

use std::path::PathBuf;

/// The interop vectors directory: `$VARTI_VECTORS`, or `../shared/vectors` beside the
/// project root; absent, as [`shared_dir`].
pub fn vectors() -> Option<PathBuf> {
    shared_dir("VARTI_VECTORS", "vectors", "README.md")
}

/// The shared directory `name`: `$ENV`, or `../shared/NAME` beside the project root, when
/// it holds `marker`. When it is absent the test says so loudly; under CI (`CI` set) it
/// fails, so a missing checkout can never pass as green.
pub fn shared_dir(env: &str, name: &str, marker: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os(env) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared")
            .join(name),
    };
    if dir.join(marker).exists() {
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
