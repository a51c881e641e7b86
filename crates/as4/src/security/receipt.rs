//! Non-repudiation of receipt (AS4 profile §5.1.8 / ebBP signals 2.0).
//!
//! The receiver proves what it received by copying the `ds:Reference` elements of the
//! message's signature into `ebbp:NonRepudiationInformation`; the sender checks that the
//! receipt echoes exactly the references (URI and digest) it signed.

use super::dom::{Element, XmlDocument};
use super::sign::SignedReference;
use super::token::{decode_base64, NS_DS};
use super::verify::VerifiedReference;
use crate::error::{EbmsError, ErrorCode};

pub use crate::ns::EBBP_NS as NS_EBBP;

/// Builds `ebbp:NonRepudiationInformation` from the references of a verified signature
/// (pass [`SignatureReport::references`](super::verify::SignatureReport) — all of them,
/// after attachments were checked). Each `ds:Reference` is copied in its exclusive
/// canonical form, which carries its own namespace declarations.
pub fn non_repudiation_information(references: &[VerifiedReference<'_>]) -> String {
    let mut out = format!(r#"<ebbp:NonRepudiationInformation xmlns:ebbp="{NS_EBBP}">"#);
    for r in references {
        out.push_str("<ebbp:MessagePartNRInformation>");
        // Canonical XML is UTF-8 by definition.
        out.push_str(&String::from_utf8_lossy(&r.reference_xml));
        out.push_str("</ebbp:MessagePartNRInformation>");
    }
    out.push_str("</ebbp:NonRepudiationInformation>");
    out
}

fn invalid(detail: impl Into<String>) -> EbmsError {
    EbmsError::new(ErrorCode::InvalidReceipt, detail)
}

fn read_reference(r: &Element<'_>) -> Result<SignedReference, EbmsError> {
    let uri = r.attribute("URI").unwrap_or("").to_string();
    let digest_method = r
        .child(NS_DS, "DigestMethod")
        .and_then(|d| d.attribute("Algorithm"))
        .ok_or_else(|| invalid(format!("ds:Reference '{uri}' has no DigestMethod")))?
        .to_string();
    let value = r
        .child(NS_DS, "DigestValue")
        .ok_or_else(|| invalid(format!("ds:Reference '{uri}' has no DigestValue")))?;
    let digest = decode_base64(&value.text(), "ds:DigestValue").map_err(|e| invalid(e.detail))?;
    Ok(SignedReference {
        uri,
        digest_method,
        digest,
    })
}

/// The references of the (first) `ds:Signature/ds:SignedInfo` in a message, as signed.
/// For the sender's own stored copy of a request; this does not verify anything.
pub fn signed_references(message: &XmlDocument) -> Result<Vec<SignedReference>, EbmsError> {
    let si = message
        .elements()
        .find(|e| e.is(NS_DS, "SignedInfo"))
        .ok_or_else(|| invalid("the message has no ds:SignedInfo"))?;
    si.children_named(NS_DS, "Reference")
        .map(|r| read_reference(&r))
        .collect()
}

/// The references a receipt's `ebbp:NonRepudiationInformation` lists.
pub(crate) fn nrr_references(receipt: &XmlDocument) -> Result<Vec<SignedReference>, EbmsError> {
    let nris: Vec<_> = receipt
        .elements()
        .filter(|e| e.is(NS_EBBP, "NonRepudiationInformation"))
        .collect();
    let [nri] = nris.as_slice() else {
        return Err(invalid(format!(
            "the receipt has {} ebbp:NonRepudiationInformation elements; exactly one is required for a \
             non-repudiation receipt",
            nris.len()
        )));
    };
    let mut out = Vec::new();
    for part in nri.children_named(NS_EBBP, "MessagePartNRInformation") {
        let r = part
            .child(NS_DS, "Reference")
            .ok_or_else(|| invalid("ebbp:MessagePartNRInformation holds no ds:Reference"))?;
        out.push(read_reference(&r)?);
    }
    Ok(out)
}

/// Sender side: checks that `receipt` (already signature-verified) acknowledges exactly
/// the references we signed — same URIs, digest methods and digests, none missing and
/// none extra. `EBMS:0302 InvalidReceipt` otherwise.
pub fn check_receipt_nrr(receipt: &XmlDocument, sent: &[SignedReference]) -> Result<(), EbmsError> {
    same_references(&nrr_references(receipt)?, sent)
}

/// The comparison of [`check_receipt_nrr`], over the references a receipt lists (`got`,
/// from [`nrr_references`]).
pub(crate) fn same_references(
    got: &[SignedReference],
    sent: &[SignedReference],
) -> Result<(), EbmsError> {
    for s in sent {
        match got.iter().find(|g| g.uri == s.uri) {
            None => {
                return Err(invalid(format!(
                    "the receipt's non-repudiation information does not list the signed part '{}'",
                    s.uri
                )))
            }
            Some(g) if g.digest_method != s.digest_method || g.digest != s.digest => {
                return Err(invalid(format!(
                    "the receipt acknowledges '{}' with a different digest than the one we signed: \
                     the receiver got different content",
                    s.uri
                )))
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = got.iter().find(|g| !sent.iter().any(|s| s.uri == g.uri)) {
        return Err(invalid(format!(
            "the receipt acknowledges '{}', which we did not sign: it is not a receipt for this message",
            extra.uri
        )));
    }
    Ok(())
}
