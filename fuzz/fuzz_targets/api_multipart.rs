//! The backend API's multipart/form-data reader of submissions.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| varti_access_point::fuzzing::api_multipart(data));
