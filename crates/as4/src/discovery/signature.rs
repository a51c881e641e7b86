//! The enveloped XML-DSig signature of an SMP answer (SMP 1.0 §3.6.2, SMP 2.0 §5.6.2).
//!
//! What [`verify_enveloped`] checks: the document element carries a `ds:Signature` as a
//! direct child; its `SignedInfo` uses c14n 1.0, 1.1 or exclusive c14n (whatever it names:
//! Peppol SMPs differ, see `docs/discovery.md`), RSA-SHA256, ECDSA-SHA256 or Ed25519; it
//! has exactly one `Reference`, `URI=""`, whose transforms are the enveloped-signature
//! transform (optionally followed by a c14n) and whose SHA-256 digest matches the whole
//! document without that signature; the `SignatureValue` verifies with the first
//! `X509Certificate` of `KeyInfo`; and that certificate chains to the SMP trust anchors at
//! the given time (validity, key usage, chain: `security::token`'s checks). Other
//! certificates in `KeyInfo` only help build the chain. It does not check revocation.
//!
//! Signature wrapping cannot redirect the check: the digest covers the whole document
//! the caller then reads (the signature only excluded), never an element found by id.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use openssl::memcmp;
use openssl::pkey::{PKey, Private};
use openssl::sha::sha256;
use openssl::x509::X509;
use time::OffsetDateTime;

use super::DiscoveryError;
use crate::security::c14n::{self, Canonicalization, C14N_10};
use crate::security::dom::{Element, XmlDocument};
use crate::security::profile::{
    EcdsaP256Sha256, Ed25519, RsaSha256, SignatureAlgorithm, DIGEST_SHA256, SIG_ECDSA_SHA256,
    SIG_EDDSA_ED25519, SIG_RSA_SHA256,
};
use crate::security::token::{
    decode_base64, distinguished_name_string, validate_signer_certificate, NS_DS,
};

/// The enveloped-signature transform.
pub(crate) const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";

fn bad(detail: impl Into<String>) -> DiscoveryError {
    DiscoveryError::BadSignature(detail.into())
}

fn required<'d>(parent: &Element<'d>, name: &str) -> Result<Element<'d>, DiscoveryError> {
    parent
        .child(NS_DS, name)
        .ok_or_else(|| bad(format!("ds:{} has no ds:{name}", parent.local_name())))
}

fn algorithm<'d>(e: &Element<'d>) -> Result<&'d str, DiscoveryError> {
    e.attribute("Algorithm")
        .ok_or_else(|| bad(format!("ds:{} has no Algorithm", e.local_name())))
}

fn c14n_of(uri: &str) -> Result<Canonicalization, DiscoveryError> {
    Canonicalization::from_uri(uri).ok_or_else(|| {
        bad(format!(
            "canonicalization `{uri}` is not supported (c14n 1.0, 1.1 and exclusive c14n are)"
        ))
    })
}

fn signature_algorithm(uri: &str) -> Result<&'static dyn SignatureAlgorithm, DiscoveryError> {
    match uri {
        SIG_RSA_SHA256 => Ok(&RsaSha256),
        SIG_ECDSA_SHA256 => Ok(&EcdsaP256Sha256),
        SIG_EDDSA_ED25519 => Ok(&Ed25519),
        other => Err(bad(format!(
            "signature method `{other}` is not accepted (RSA-SHA256, ECDSA-SHA256 or Ed25519 are; SHA-1 is refused)"
        ))),
    }
}

/// The signer of a verified answer.
#[derive(Debug, Clone)]
pub struct SmpSigner {
    /// The signer certificate (from `KeyInfo`).
    pub certificate: X509,
    /// Its subject, as text.
    pub subject: String,
    /// Its issuer, as text.
    pub issuer: String,
    /// The signature method URI.
    pub algorithm: String,
    /// Whether its chain to the trust anchors was checked (false: only the signature).
    pub trusted: bool,
}

/// Verifies the enveloped signature of `doc` (see the module documentation). With
/// `anchors` `None` only the cryptography is checked and the signer is reported with
/// `trusted: false` (for diagnosis); with anchors the signer must chain to them at `at`.
pub fn verify_enveloped(
    doc: &XmlDocument,
    anchors: Option<&[X509]>,
    at: OffsetDateTime,
) -> Result<SmpSigner, DiscoveryError> {
    let root = doc
        .root()
        .ok_or_else(|| DiscoveryError::Malformed("the document has no element".into()))?;
    let signatures: Vec<Element<'_>> = root.children_named(NS_DS, "Signature").collect();
    let signature = match signatures.as_slice() {
        [] => return Err(DiscoveryError::Unsigned),
        [first, ..] => *first,
    };
    let signed_info = required(&signature, "SignedInfo")?;
    let c14n_method = required(&signed_info, "CanonicalizationMethod")?;
    let si_c14n = c14n_of(algorithm(&c14n_method)?)?;
    let method = algorithm(&required(&signed_info, "SignatureMethod")?)?;
    let alg = signature_algorithm(method)?;

    let references: Vec<Element<'_>> = signed_info.children_named(NS_DS, "Reference").collect();
    let [reference] = references.as_slice() else {
        return Err(bad(format!(
            "SignedInfo must have exactly one Reference (the whole answer), it has {}",
            references.len()
        )));
    };
    let uri = reference.attribute("URI").unwrap_or("");
    if !uri.is_empty() {
        return Err(bad(format!(
            "the Reference must cover the whole answer (URI=\"\"), not `{uri}`"
        )));
    }
    let transforms: Vec<Element<'_>> = reference
        .child(NS_DS, "Transforms")
        .map(|t| t.children_named(NS_DS, "Transform").collect())
        .unwrap_or_default();
    let mut transform_uris = Vec::new();
    for t in &transforms {
        transform_uris.push(algorithm(t)?);
    }
    let ref_c14n = match transform_uris.as_slice() {
        [ENVELOPED] => Canonicalization::Inclusive10,
        [ENVELOPED, c] => c14n_of(c)?,
        other => {
            return Err(bad(format!(
                "the Reference's transforms must be the enveloped-signature transform (and at most a c14n), not {other:?}"
            )))
        }
    };
    let digest_method = algorithm(&required(reference, "DigestMethod")?)?;
    if digest_method != DIGEST_SHA256 {
        return Err(bad(format!(
            "digest method `{digest_method}` is not accepted (SHA-256 is)"
        )));
    }
    let expected = decode_base64(
        &required(reference, "DigestValue")?.text(),
        "ds:DigestValue",
    )
    .map_err(|e| bad(e.detail))?;

    // The signer and its helpers from KeyInfo.
    let key_info = required(&signature, "KeyInfo")?;
    let mut certs = Vec::new();
    for data in key_info.children_named(NS_DS, "X509Data") {
        for c in data.children_named(NS_DS, "X509Certificate") {
            let der = decode_base64(&c.text(), "ds:X509Certificate").map_err(|e| bad(e.detail))?;
            certs.push(
                X509::from_der(&der)
                    .map_err(|e| bad(format!("a KeyInfo X509Certificate cannot be read: {e}")))?,
            );
        }
    }
    let Some(signer) = certs.first().cloned() else {
        return Err(bad(
            "KeyInfo holds no X509Data/X509Certificate (SMP 2.0 §5.6.2 requires one)",
        ));
    };
    let subject = distinguished_name_string(signer.subject_name());
    let issuer = distinguished_name_string(signer.issuer_name());

    let value = decode_base64(
        &required(&signature, "SignatureValue")?.text(),
        "ds:SignatureValue",
    )
    .map_err(|e| bad(e.detail))?;
    let canonical_si = c14n::canonicalize_element_with(doc, signed_info, si_c14n, &[])
        .map_err(|e| bad(e.detail))?;
    let key = signer
        .public_key()
        .map_err(|e| bad(format!("the signer's public key cannot be read: {e}")))?;
    if !alg
        .verify(&key, &canonical_si, &value)
        .map_err(|e| bad(e.detail))?
    {
        return Err(bad(format!(
            "the SignatureValue does not verify with the key of '{subject}': SignedInfo was altered or signed with another key"
        )));
    }
    let canonical =
        c14n::canonicalize_enveloped(doc, signature, ref_c14n, &[]).map_err(|e| bad(e.detail))?;
    let actual = sha256(&canonical);
    if expected.len() != actual.len() || !memcmp::eq(&expected, &actual) {
        return Err(bad(
            "the digest of the answer does not match its signature: the answer was changed after it was signed",
        ));
    }
    let trusted = match anchors {
        None => false,
        Some(anchors) => {
            if anchors.is_empty() {
                return Err(DiscoveryError::UntrustedSmp(
                    "no SMP trust anchor is configured".into(),
                ));
            }
            validate_signer_certificate(&signer, &certs[1..], anchors, at)
                .map_err(|e| DiscoveryError::UntrustedSmp(e.detail))?;
            true
        }
    };
    Ok(SmpSigner {
        certificate: signer,
        subject,
        issuer,
        algorithm: method.to_owned(),
        trusted,
    })
}

/// Signs `xml` with an enveloped signature as SMPs do (c14n 1.0 inclusive by default,
/// RSA-SHA256 for RSA keys, ECDSA-SHA256 for P-256, Ed25519), the `ds:Signature` placed
/// last in the document element with the certificate in `KeyInfo`. For stand-ins and
/// tests; `xml` must be a complete document whose element ends with its closing tag.
pub fn sign_enveloped(
    xml: &[u8],
    key: &PKey<Private>,
    certificate: &X509,
    c14n_uri: Option<&str>,
) -> Result<Vec<u8>, DiscoveryError> {
    let c14n_uri = c14n_uri.unwrap_or(C14N_10);
    let algorithm = c14n_of(c14n_uri)?;
    let alg: &dyn SignatureAlgorithm = match key.id() {
        openssl::pkey::Id::RSA => &RsaSha256,
        openssl::pkey::Id::EC => &EcdsaP256Sha256,
        openssl::pkey::Id::ED25519 => &Ed25519,
        _ => return Err(bad("the signing key is neither RSA, EC nor Ed25519")),
    };
    let text = std::str::from_utf8(xml)
        .map_err(|_| DiscoveryError::Malformed("the document is not UTF-8".into()))?;
    let doc = XmlDocument::parse(xml).map_err(|e| DiscoveryError::Malformed(e.to_string()))?;
    let root = doc
        .root()
        .ok_or_else(|| DiscoveryError::Malformed("the document has no element".into()))?;
    // Without the signature, the enveloped node-set is the whole document.
    let _ = root;
    let whole = c14n::canonicalize_document_with(&doc, algorithm).map_err(|e| bad(e.detail))?;
    let digest = STANDARD.encode(sha256(&whole));
    let cert_b64 = STANDARD.encode(
        certificate
            .to_der()
            .map_err(|e| bad(format!("the certificate cannot be encoded: {e}")))?,
    );
    let transforms = if c14n_uri == C14N_10 {
        format!(r#"<ds:Transform Algorithm="{ENVELOPED}"/>"#)
    } else {
        format!(r#"<ds:Transform Algorithm="{ENVELOPED}"/><ds:Transform Algorithm="{c14n_uri}"/>"#)
    };
    let signed_info = format!(
        r#"<ds:SignedInfo><ds:CanonicalizationMethod Algorithm="{c14n_uri}"/><ds:SignatureMethod Algorithm="{}"/><ds:Reference URI=""><ds:Transforms>{transforms}</ds:Transforms><ds:DigestMethod Algorithm="{DIGEST_SHA256}"/><ds:DigestValue>{digest}</ds:DigestValue></ds:Reference></ds:SignedInfo>"#,
        alg.uri()
    );
    let close = text.rfind("</").ok_or_else(|| {
        DiscoveryError::Malformed("the document element has no closing tag".into())
    })?;
    let assemble = |value: &str| {
        format!(
            r#"{}<ds:Signature xmlns:ds="{NS_DS}">{signed_info}<ds:SignatureValue>{value}</ds:SignatureValue><ds:KeyInfo><ds:X509Data><ds:X509Certificate>{cert_b64}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></ds:Signature>{}"#,
            &text[..close],
            &text[close..]
        )
    };
    // SignedInfo is canonicalized in place (inclusive c14n takes in-scope namespaces).
    let draft = assemble("");
    let draft_doc = XmlDocument::parse(draft.as_bytes())
        .map_err(|e| DiscoveryError::Malformed(e.to_string()))?;
    let draft_root = draft_doc.root().expect("parsed above");
    let si = draft_root
        .child(NS_DS, "Signature")
        .and_then(|s| s.child(NS_DS, "SignedInfo"))
        .ok_or_else(|| {
            DiscoveryError::Malformed("the signature did not land in the document element".into())
        })?;
    let canonical_si = c14n::canonicalize_element_with(&draft_doc, si, algorithm, &[])
        .map_err(|e| bad(e.detail))?;
    let value = alg.sign(key, &canonical_si).map_err(|e| bad(e.detail))?;
    Ok(assemble(&STANDARD.encode(value)).into_bytes())
}
