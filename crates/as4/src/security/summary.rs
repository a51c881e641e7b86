//! A read-only summary of a message's `wsse:Security` header, for people.
//!
//! This is what `varti message inspect` prints: which parts are signed, with which
//! algorithms, by which certificate, and which parts are encrypted. It verifies
//! nothing — [`crate::security::verify`] does that — so a summary is safe to show
//! for any message, including one that would fail verification.

use base64::Engine;
use openssl::x509::X509;
use serde::Serialize;

use crate::error::EbmsError;
use crate::security::dom::{Element, XmlDocument};
use crate::security::token::{distinguished_name_string, NS_DS, NS_WSSE, VT_PKIPATH};

use crate::ns::XENC_NS as NS_XENC;

/// What the security header of one message contains.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SecuritySummary {
    /// Whether the envelope has a `wsse:Security` header at all.
    pub present: bool,
    /// Each `ds:Signature` in the header (AS4 allows one; more are shown, not hidden).
    pub signatures: Vec<SignatureSummary>,
    /// Certificates carried in `wsse:BinarySecurityToken`s.
    pub certificates: Vec<CertificateSummary>,
    /// Key transport or agreement methods of `xenc:EncryptedKey`s.
    pub encrypted_keys: Vec<String>,
    /// Each `xenc:EncryptedData` (normally one per encrypted attachment).
    pub encrypted_data: Vec<EncryptedDataSummary>,
}

/// One signature's algorithms and references.
#[derive(Debug, Clone, Serialize)]
pub struct SignatureSummary {
    /// `ds:SignatureMethod/@Algorithm`.
    pub signature_method: String,
    /// `ds:CanonicalizationMethod/@Algorithm`.
    pub canonicalization: String,
    /// How the signing certificate is referenced (`BST`, `PKIPath BST`, `SKI`, `IssuerSerial`, …).
    pub key_reference: String,
    /// The signed references.
    pub references: Vec<ReferenceSummary>,
}

/// One `ds:Reference` of a signature.
#[derive(Debug, Clone, Serialize)]
pub struct ReferenceSummary {
    /// The reference URI (`#id` or `cid:…`).
    pub uri: String,
    /// What the URI points at in this message (`eb:Messaging`, `S12:Body`, an attachment…).
    pub target: String,
    /// `ds:DigestMethod/@Algorithm`.
    pub digest_method: String,
    /// The transforms' algorithms, in order.
    pub transforms: Vec<String>,
}

/// A certificate found in the header.
#[derive(Debug, Clone, Serialize)]
pub struct CertificateSummary {
    /// Subject distinguished name.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Start of validity, as OpenSSL prints it.
    pub not_before: String,
    /// End of validity, as OpenSSL prints it.
    pub not_after: String,
}

/// One encrypted part.
#[derive(Debug, Clone, Serialize)]
pub struct EncryptedDataSummary {
    /// `xenc:EncryptionMethod/@Algorithm`.
    pub algorithm: String,
    /// `xenc:CipherReference/@URI`: the attachment holding the ciphertext.
    pub cipher_reference: Option<String>,
    /// `@MimeType`: the part's type before encryption.
    pub mime_type: Option<String>,
}

/// Summarises the security header of a SOAP envelope.
///
/// Fails only when the envelope is not well-formed XML (or declares a DTD).
pub fn summarize(envelope: &[u8]) -> Result<SecuritySummary, EbmsError> {
    let doc = XmlDocument::parse(envelope)?;
    let mut summary = SecuritySummary::default();
    let elements: Vec<_> = doc.elements().collect();
    let Some(security) = elements.iter().find(|e| e.is(NS_WSSE, "Security")) else {
        return Ok(summary);
    };
    summary.present = true;
    for child in security.children() {
        match (child.namespace(), child.local_name()) {
            (Some(NS_WSSE), "BinarySecurityToken") => {
                summary.certificates.extend(bst_certificates(&child));
            }
            (Some(NS_DS), "Signature") => {
                summary
                    .signatures
                    .push(signature_summary(&child, &elements));
            }
            (Some(NS_XENC), "EncryptedKey") => {
                let alg = child
                    .child(NS_XENC, "EncryptionMethod")
                    .and_then(|m| m.attribute("Algorithm"))
                    .unwrap_or("(none)");
                summary.encrypted_keys.push(alg.to_string());
            }
            (Some(NS_XENC), "EncryptedData") => {
                summary.encrypted_data.push(encrypted_data_summary(&child));
            }
            _ => {}
        }
    }
    Ok(summary)
}

fn bst_certificates(bst: &Element<'_>) -> Vec<CertificateSummary> {
    let compact: String = bst
        .text()
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let Ok(der) = base64::engine::general_purpose::STANDARD.decode(compact) else {
        return Vec::new();
    };
    let certs = if bst.attribute("ValueType") == Some(VT_PKIPATH) {
        crate::security::token::parse_pki_path(&der).unwrap_or_default()
    } else {
        X509::from_der(&der).map(|c| vec![c]).unwrap_or_default()
    };
    certs
        .iter()
        .map(|c| CertificateSummary {
            subject: distinguished_name_string(c.subject_name()),
            issuer: distinguished_name_string(c.issuer_name()),
            not_before: c.not_before().to_string(),
            not_after: c.not_after().to_string(),
        })
        .collect()
}

fn signature_summary(sig: &Element<'_>, all: &[Element<'_>]) -> SignatureSummary {
    let signed_info = sig.child(NS_DS, "SignedInfo");
    let alg = |parent: Option<Element<'_>>, name: &str| {
        parent
            .and_then(|p| p.child(NS_DS, name))
            .and_then(|m| m.attribute("Algorithm"))
            .unwrap_or("(none)")
            .to_string()
    };
    let references = signed_info
        .map(|si| {
            si.children_named(NS_DS, "Reference")
                .map(|r| {
                    let uri = r.attribute("URI").unwrap_or("").to_string();
                    ReferenceSummary {
                        target: describe_target(&uri, all),
                        digest_method: alg(Some(r), "DigestMethod"),
                        transforms: r
                            .child(NS_DS, "Transforms")
                            .map(|t| {
                                t.children_named(NS_DS, "Transform")
                                    .filter_map(|t| t.attribute("Algorithm"))
                                    .map(str::to_string)
                                    .collect()
                            })
                            .unwrap_or_default(),
                        uri,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    SignatureSummary {
        signature_method: alg(signed_info, "SignatureMethod"),
        canonicalization: alg(signed_info, "CanonicalizationMethod"),
        key_reference: key_reference_kind(sig),
        references,
    }
}

fn describe_target(uri: &str, all: &[Element<'_>]) -> String {
    if let Some(cid) = uri.strip_prefix("cid:") {
        return format!("attachment <{cid}>");
    }
    let Some(id) = uri.strip_prefix('#') else {
        return "(external reference)".to_string();
    };
    let hits: Vec<_> = all.iter().filter(|e| e.ids().contains(&id)).collect();
    match hits.as_slice() {
        [] => "(no element has this id)".to_string(),
        [one] => one.path(),
        _ => format!("(ambiguous: {} elements have this id)", hits.len()),
    }
}

fn key_reference_kind(sig: &Element<'_>) -> String {
    let Some(str_) = sig
        .child(NS_DS, "KeyInfo")
        .and_then(|k| k.child(NS_WSSE, "SecurityTokenReference"))
    else {
        return "(no SecurityTokenReference)".to_string();
    };
    if let Some(r) = str_.child(NS_WSSE, "Reference") {
        return match r.attribute("ValueType") {
            Some(VT_PKIPATH) => "BinarySecurityToken (PKIPath)".to_string(),
            _ => "BinarySecurityToken".to_string(),
        };
    }
    if str_.child(NS_WSSE, "KeyIdentifier").is_some() {
        return "KeyIdentifier (SKI)".to_string();
    }
    if str_.child(NS_DS, "X509Data").is_some() {
        return "X509Data (IssuerSerial)".to_string();
    }
    "(unknown reference)".to_string()
}

fn encrypted_data_summary(ed: &Element<'_>) -> EncryptedDataSummary {
    EncryptedDataSummary {
        algorithm: ed
            .child(NS_XENC, "EncryptionMethod")
            .and_then(|m| m.attribute("Algorithm"))
            .unwrap_or("(none)")
            .to_string(),
        cipher_reference: ed
            .child(NS_XENC, "CipherData")
            .and_then(|c| c.child(NS_XENC, "CipherReference"))
            .and_then(|r| r.attribute("URI"))
            .map(str::to_string),
        mime_type: ed.attribute("MimeType").map(str::to_string),
    }
}
