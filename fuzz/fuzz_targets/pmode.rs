//! The PMode loader: TOML files (separated by NUL bytes) as if in `pmodes/`, so that
//! certificate paths such as `../certs/varti-a/sign.cert.pem` resolve.
#![no_main]

use std::path::Path;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pmodes");
    varti_as4::fuzzing::pmode(data, &dir)
});
