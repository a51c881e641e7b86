//! The MIME multipart/related reader, over message dumps.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| varti_as4::fuzzing::mime(data));
