//! The body of this crate's fuzz target, shared by the fuzzer (`fuzz/` at the repository
//! root) and by the corpus test (`tests/fuzz_corpus.rs`), so a corpus file means the same
//! thing to both. Not part of Varti's API: hidden from the documentation and free to
//! change.

pub use crate::api::submit::fuzzing::api_multipart;
