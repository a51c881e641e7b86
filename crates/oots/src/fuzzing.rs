//! The body of this crate's fuzz target, shared by the fuzzer (`fuzz/` at the repository
//! root) and by the corpus test (`tests/fuzz_corpus.rs`), so a corpus file means the same
//! thing to both. Not part of Varti's API: hidden from the documentation and free to
//! change.

use crate::edm::EdmDocument;
use crate::validate::model::ModelValidator;

/// The EDM parser: `data` is an EDM document (request, response or error response). A
/// document that was read must read back equal from what Varti writes of it (the
/// promise of [`crate::edm`]), and the model validator must judge it without failing.
pub fn edm(data: &[u8]) {
    let Ok(doc) = EdmDocument::parse(data) else {
        return;
    };
    let written = doc.to_xml();
    let again = EdmDocument::parse(written.as_bytes())
        .unwrap_or_else(|e| panic!("Varti cannot read the EDM document it wrote: {e}\n{written}"));
    assert_eq!(
        again, doc,
        "the document changed when written and read again:\n{written}"
    );
    let _ = doc.version();
    let _ = ModelValidator::default().validate(&doc);
}
