//! The OOTS EDM parser, writing back what it read, and the model validator.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| varti_oots::fuzzing::edm(data));
