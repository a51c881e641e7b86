//! The fuzz corpus of the backend API's multipart target (`fuzz/corpus/api_multipart/`)
//! and the reproducers of every crash the fuzzer found (`fuzz/regressions/api_multipart/`),
//! run as an ordinary test: no file may make the target panic or hang. The target body is
//! the one the fuzzer runs (`varti_access_point::fuzzing::api_multipart`); see
//! docs/security.md ("Fuzzing").

use std::path::Path;
use std::time::Duration;

#[test]
fn api_multipart_corpus() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    varti_as4::fuzzing::replay_corpus(
        &[
            fuzz.join("corpus/api_multipart"),
            fuzz.join("regressions/api_multipart"),
        ],
        Duration::from_secs(5),
        varti_access_point::fuzzing::api_multipart,
    );
}
