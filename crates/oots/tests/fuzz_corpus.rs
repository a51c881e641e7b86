//! The fuzz corpus of the EDM target (`fuzz/corpus/edm/`) and the reproducers of every
//! crash the fuzzer found (`fuzz/regressions/edm/`), run as an ordinary test: no file may
//! make the target panic or hang. The target body is the one the fuzzer runs
//! (`varti_oots::fuzzing::edm`); see docs/security.md ("Fuzzing").

use std::path::Path;
use std::time::Duration;

#[test]
fn edm_corpus() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    varti_as4::fuzzing::replay_corpus(
        &[fuzz.join("corpus/edm"), fuzz.join("regressions/edm")],
        Duration::from_secs(5),
        varti_oots::fuzzing::edm,
    );
}
