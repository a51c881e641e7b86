//! The WS-Security receive path (decrypt, verify, policy, trust) around the fixed keys of
//! the test PKI in `certs/`: varti-a signs, varti-b decrypts.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use varti_as4::fuzzing::SecurityFixture;

static FIXTURE: LazyLock<SecurityFixture> = LazyLock::new(|| {
    let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../certs");
    SecurityFixture::from_certs_dir(&certs).expect("the test PKI in certs/")
});

libfuzzer_sys::fuzz_target!(|data: &[u8]| varti_as4::fuzzing::ws_security(data, &FIXTURE));
