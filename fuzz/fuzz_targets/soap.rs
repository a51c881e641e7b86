//! The SOAP / ebMS3 header reader, and writing back what it read.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| varti_as4::fuzzing::soap(data));
