//! Shared helpers for the integration tests: where the third-party vectors and the
//! official EDM artefacts are. Both are read in place, never copied into the project.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

fn shared_dir(env: &str, default_rel: &str, marker: &str, what: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os(env) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(default_rel),
    };
    if dir.join(marker).exists() {
        return Some(dir);
    }
    let msg = format!(
        "{what} MISSING: {} not found; set {env} to the shared directory",
        dir.display()
    );
    // Under CI a missing checkout must fail, never pass as green.
    if std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    eprintln!("\n!!!!!!!! {msg} — test NOT run !!!!!!!!\n");
    None
}

/// The interop vectors directory: `$VARTI_VECTORS`, or `../shared/vectors` beside the
/// project root.
pub fn vectors() -> Option<PathBuf> {
    shared_dir(
        "VARTI_VECTORS",
        "../../../shared/vectors",
        "README.md",
        "INTEROP VECTORS",
    )
}

/// The specs directory: `$VARTI_SPECS`, or `../shared/specs` beside the project root.
pub fn specs() -> Option<PathBuf> {
    shared_dir(
        "VARTI_SPECS",
        "../../../shared/specs",
        "oots-edm-v1",
        "OOTS SPECS",
    )
}

/// Reads a file, panicking with its path when it cannot be read.
pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The EDM 1.0 request/response samples directory.
pub fn edm_v1_samples(specs: &Path) -> PathBuf {
    specs.join(
        "oots-edm-v1/xml/Request-Response Samples/4.5.4 - OOTS-EDM XML Examples of the Evidence Exchange",
    )
}

/// The first payload of a Domibus WS-plugin message (`incoming/`): the base64 `<value>`
/// of the first `<payload>`, decoded.
pub fn first_payload(ws_message: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let s = String::from_utf8_lossy(ws_message);
    let start = s.find("<value>").expect("a <value> payload") + "<value>".len();
    let end = start + s[start..].find("</value>").expect("</value>");
    let b64: String = s[start..end].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64 payload")
}
