//! Shared helpers for the integration tests: where the third-party vectors and the
//! official EDM artefacts are. Both are read in place, never copied into the project.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "../../../as4/tests/common/mod.rs"]
mod as4_common;

/// The interop vectors directory: `$VARTI_VECTORS`, or `../shared/vectors` beside the
/// project root.
#[allow(unused_imports)] // each test binary uses a different subset
pub use as4_common::vectors;

/// The specs directory: `$VARTI_SPECS`, or `../shared/specs` beside the project root.
pub fn specs() -> Option<PathBuf> {
    as4_common::shared_dir("VARTI_SPECS", "specs", "oots-edm-v1")
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

/// Whether the Saxon oracle can run; installs `saxonche` from PyPI when missing. Under CI
/// a missing oracle fails the test; locally it is a loud skip.
pub fn oracle_available() -> bool {
    let has = || {
        Command::new("python3")
            .args(["-c", "import saxonche"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if has() {
        return true;
    }
    let _ = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "saxonche"])
        .status();
    if has() {
        return true;
    }
    let msg = "SAXON ORACLE MISSING: python3 with saxonche (pip install saxonche) not available";
    if std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    eprintln!("\n!!!!!!!! {msg} — oracle test NOT run !!!!!!!!\n");
    false
}

/// Runs the oracle on one rule file and many documents: per document, the set of
/// (rule id, location) it reports.
pub fn oracle(sch: &Path, docs: &[PathBuf]) -> Vec<BTreeSet<(String, String)>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schematron_oracle.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(sch)
        .args(docs)
        .output()
        .expect("running python3");
    assert!(
        out.status.success(),
        "oracle failed on {}: {}",
        sch.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut result: Vec<BTreeSet<(String, String)>> = Vec::new();
    for line in text.lines() {
        if line.starts_with("== ") {
            result.push(BTreeSet::new());
        } else if let Some((id, loc)) = line.split_once('\t') {
            result
                .last_mut()
                .expect("oracle output starts with a document header")
                .insert((id.to_string(), loc.to_string()));
        }
    }
    assert_eq!(result.len(), docs.len(), "oracle output: {text}");
    result
}
