//! Verifying the WS-Security signature of an incoming AS4 message.
//!
//! The verifier works on the libxml2 tree the caller keeps ([`XmlDocument`]) and
//! reports, for every `ds:Reference`, *which node* it digested. Signature-wrapping
//! defences:
//! * identifiers (`wsu:Id`, `Id`, `id`, `xml:id`) must be unique in the whole document —
//!   a duplicate is refused outright;
//! * a document with more than one `eb:Messaging` or SOAP `Body` is refused;
//! * a reference counts as covering eb:Messaging / the Body only when the digested
//!   element sits at the canonical place (`/Envelope/Header/Messaging`,
//!   `/Envelope/Body`); the report hands back the element nodes so the caller can check
//!   that what it processes is what was verified.
//!
//! `cid:` references (attachments) are checked in a second step, [`XmlVerified::finish`],
//! because encrypted attachments are digested over their plaintext: the caller decrypts
//! (sign-then-encrypt, so decrypt-then-verify) and passes the plaintext sources.

use std::collections::HashMap;

use openssl::memcmp;
use openssl::sha::Sha256;
use openssl::x509::X509;

use super::c14n::{self, EXC_C14N};
use super::dom::{Element, XmlDocument};
use super::profile::Profile;
use super::swa::{self, AttachmentSource, ATTACHMENT_CONTENT_SIGNATURE_TRANSFORM};
use super::token::{self, ResolvedToken, NS_DS, NS_WSSE};
use crate::error::{EbmsError, ErrorCode};

pub use crate::ns::{EBMS_NS as NS_EBMS, SOAP11_NS as NS_SOAP11, SOAP12_NS as NS_SOAP12};

/// What the verifier needs besides the message.
#[derive(Debug, Clone, Copy)]
pub struct VerifyOptions<'a> {
    /// The algorithm suite the PMode agreed; anything else is refused (`EBMS:0103`).
    pub profile: &'a Profile,
    /// Certificates a Key Identifier or IssuerSerial reference may name (the PMode's
    /// partner signing certificate). Not needed for BST references.
    pub candidate_certificates: &'a [X509],
}

/// What a reference pointed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignedPart {
    /// The `eb:Messaging` header at `/Envelope/Header/Messaging`.
    Messaging,
    /// The SOAP Body at `/Envelope/Body`.
    Body,
    /// A MIME attachment, by its `cid:` URI.
    Attachment {
        /// The reference URI (`cid:...`).
        uri: String,
    },
    /// Any other element (or Messaging/Body somewhere they should not be).
    Element {
        /// Where it is, e.g. `/Envelope/Header/Security/BinarySecurityToken`.
        path: String,
    },
}

/// One verified `ds:Reference`.
#[derive(Debug, Clone)]
pub struct VerifiedReference<'d> {
    /// The `URI` attribute as written.
    pub uri: String,
    /// The digest method URI.
    pub digest_method: String,
    /// The digest value (decoded).
    pub digest: Vec<u8>,
    /// What it covered.
    pub part: SignedPart,
    /// The element digested (same-document references only).
    pub element: Option<Element<'d>>,
    /// The `ds:Reference` element itself, exclusive-canonicalized: what an NRR receipt
    /// copies into `ebbp:MessagePartNRInformation`.
    pub reference_xml: Vec<u8>,
}

/// The result of [`verify_signature`]: the SignatureValue and all same-document
/// references verified; attachment references still to check with [`finish`](Self::finish).
#[derive(Debug)]
pub struct XmlVerified<'d> {
    token: ResolvedToken,
    signature_algorithm: &'static str,
    xml_references: Vec<VerifiedReference<'d>>,
    attachment_references: Vec<VerifiedReference<'d>>,
}

/// A fully verified signature.
#[derive(Debug)]
pub struct SignatureReport<'d> {
    /// The signer's certificate and how it was referenced.
    pub token: ResolvedToken,
    /// The signature method URI.
    pub signature_algorithm: &'static str,
    /// Every reference, in SignedInfo order, all verified.
    pub references: Vec<VerifiedReference<'d>>,
    /// Content-IDs of the attachments whose verified digest is the SHA-256 of their
    /// content's octets, with that digest: see [`SignatureReport::content_sha256`].
    content_sha256: Vec<(String, [u8; 32])>,
}

fn auth(detail: impl Into<String>) -> EbmsError {
    EbmsError::new(ErrorCode::FailedAuthentication, detail)
}
fn policy(detail: impl Into<String>) -> EbmsError {
    EbmsError::new(ErrorCode::PolicyNoncompliance, detail)
}

/// Reads the optional `ec:InclusiveNamespaces/@PrefixList` under a c14n method/transform.
fn prefix_list<'d>(method: &Element<'d>) -> Vec<&'d str> {
    method
        .child(EXC_C14N, "InclusiveNamespaces")
        .and_then(|e| e.attribute("PrefixList"))
        .map(c14n::parse_prefix_list)
        .unwrap_or_default()
}

/// The unique-id map of a document; refuses duplicates (signature wrapping).
pub(crate) fn id_map(doc: &XmlDocument) -> Result<HashMap<&str, Element<'_>>, EbmsError> {
    let mut map: HashMap<&str, Element<'_>> = HashMap::new();
    for el in doc.elements() {
        for id in el.ids() {
            if let Some(first) = map.insert(id, el) {
                return Err(auth(format!(
                    "the identifier '{id}' appears on both {} and {}; duplicate ids are refused \
                     (possible signature-wrapping attack)",
                    first.path(),
                    el.path()
                )));
            }
        }
    }
    Ok(map)
}

/// The SOAP envelope parts the verifier relies on.
struct Envelope<'d> {
    root: Element<'d>,
    soap_ns: &'static str,
    header: Option<Element<'d>>,
}

fn envelope(doc: &XmlDocument) -> Result<Envelope<'_>, EbmsError> {
    let root = doc.root().ok_or_else(|| auth("empty document"))?;
    let soap_ns = if root.is(NS_SOAP12, "Envelope") {
        NS_SOAP12
    } else if root.is(NS_SOAP11, "Envelope") {
        NS_SOAP11
    } else {
        return Err(EbmsError::new(
            ErrorCode::InvalidHeader,
            format!("the document element is {:?}, not a SOAP Envelope", root),
        ));
    };
    let headers: Vec<_> = root.children_named(soap_ns, "Header").collect();
    if headers.len() > 1 {
        return Err(auth("the SOAP envelope has more than one Header"));
    }
    // Wrapping defence: exactly one eb:Messaging and one Body anywhere in the document.
    let (mut messagings, mut bodies) = (0, 0);
    for e in doc.elements() {
        messagings += usize::from(e.is(NS_EBMS, "Messaging"));
        bodies += usize::from(e.is(soap_ns, "Body"));
    }
    if messagings > 1 || bodies > 1 {
        return Err(auth(format!(
            "the document holds {messagings} eb:Messaging and {bodies} SOAP Body elements; exactly one of \
             each is allowed (possible signature-wrapping attack)"
        )));
    }
    Ok(Envelope {
        root,
        soap_ns,
        header: headers.first().copied(),
    })
}

impl Envelope<'_> {
    fn classify(&self, el: &Element<'_>) -> SignedPart {
        let parent = el.parent();
        if el.is(NS_EBMS, "Messaging")
            && self
                .header
                .is_some_and(|h| parent.is_some_and(|p| p.as_ptr() == h.as_ptr()))
        {
            return SignedPart::Messaging;
        }
        if el.is(self.soap_ns, "Body") && parent.is_some_and(|p| p.as_ptr() == self.root.as_ptr()) {
            return SignedPart::Body;
        }
        SignedPart::Element { path: el.path() }
    }
}

/// Finds the `wsse:Security` header meant for us (no role/actor) and its signature.
fn find_signature<'d>(env: &Envelope<'d>) -> Result<(Element<'d>, Element<'d>), EbmsError> {
    let header = env.header.ok_or_else(|| {
        policy(
            "the message has no SOAP Header, so it is not signed; the PMode requires a signature",
        )
    })?;
    let ours: Vec<_> = header
        .children_named(NS_WSSE, "Security")
        .filter(|s| {
            s.attribute_ns(Some(env.soap_ns), "role").is_none()
                && s.attribute_ns(Some(env.soap_ns), "actor").is_none()
        })
        .collect();
    let security = match ours.as_slice() {
        [] => {
            return Err(policy(
                "the message has no wsse:Security header; the PMode requires a signature",
            ))
        }
        [one] => *one,
        _ => {
            return Err(auth(
                "the message has more than one wsse:Security header for this receiver",
            ))
        }
    };
    let sigs: Vec<_> = security.children_named(NS_DS, "Signature").collect();
    match sigs.as_slice() {
        [] => Err(policy(
            "the wsse:Security header holds no ds:Signature; the PMode requires a signature",
        )),
        [one] => Ok((security, *one)),
        _ => Err(auth(
            "the wsse:Security header holds more than one ds:Signature; only one is supported",
        )),
    }
}

fn required<'d>(parent: &Element<'d>, ns: &str, name: &str) -> Result<Element<'d>, EbmsError> {
    parent
        .child(ns, name)
        .ok_or_else(|| auth(format!("{} has no {name} element", parent.path())))
}

fn algorithm<'d>(el: &Element<'d>) -> Result<&'d str, EbmsError> {
    el.attribute("Algorithm")
        .ok_or_else(|| auth(format!("{} has no Algorithm attribute", el.path())))
}

fn describe(part: &SignedPart) -> String {
    match part {
        SignedPart::Messaging => "eb:Messaging".into(),
        SignedPart::Body => "the SOAP Body".into(),
        SignedPart::Attachment { uri } => format!("attachment {uri}"),
        SignedPart::Element { path } => path.clone(),
    }
}

/// Verifies the message signature: algorithms against the profile, the signer token,
/// the SignatureValue over the canonical SignedInfo, and every same-document reference.
pub fn verify_signature<'d>(
    doc: &'d XmlDocument,
    options: &VerifyOptions<'_>,
) -> Result<XmlVerified<'d>, EbmsError> {
    let profile = options.profile;
    let env = envelope(doc)?;
    let ids = id_map(doc)?;
    let (security, signature) = find_signature(&env)?;
    let signed_info = required(&signature, NS_DS, "SignedInfo")?;

    let c14n_method = required(&signed_info, NS_DS, "CanonicalizationMethod")?;
    profile.check_c14n_method(algorithm(&c14n_method)?)?;
    let sig_method = required(&signed_info, NS_DS, "SignatureMethod")?;
    let alg = profile.check_signature_method(algorithm(&sig_method)?)?;

    // Algorithms of every reference first, so a policy violation is reported as such.
    let references: Vec<_> = signed_info.children_named(NS_DS, "Reference").collect();
    if references.is_empty() {
        return Err(auth("ds:SignedInfo has no ds:Reference"));
    }
    for r in &references {
        profile.check_digest_method(algorithm(&required(r, NS_DS, "DigestMethod")?)?)?;
    }

    // The signer and the SignatureValue.
    let key_info = required(&signature, NS_DS, "KeyInfo")?;
    let token = token::resolve_key_info(security, key_info, &ids, options.candidate_certificates)?;
    let public_key = token.certificate.public_key().map_err(|e| {
        auth(format!(
            "the signer certificate's public key cannot be read: {e}"
        ))
    })?;
    let signature_value = token::decode_base64(
        &required(&signature, NS_DS, "SignatureValue")?.text(),
        "ds:SignatureValue",
    )?;
    let canonical_si = c14n::canonicalize_element(doc, signed_info, &prefix_list(&c14n_method))?;
    if !alg.verify(&public_key, &canonical_si, &signature_value)? {
        return Err(auth(format!(
            "the ds:SignatureValue does not verify with the key of certificate '{}': the signed header \
             was altered or signed with another key",
            token::distinguished_name_string(token.certificate.subject_name())
        )));
    }

    let mut xml_references = Vec::new();
    let mut attachment_references = Vec::new();
    for r in references {
        let uri = r.attribute("URI").unwrap_or("").to_string();
        let digest_method = algorithm(&required(&r, NS_DS, "DigestMethod")?)?.to_string();
        let digest = token::decode_base64(
            &required(&r, NS_DS, "DigestValue")?.text(),
            "ds:DigestValue",
        )?;
        let transforms: Vec<Element<'d>> = r
            .child(NS_DS, "Transforms")
            .map(|t| t.children_named(NS_DS, "Transform").collect())
            .unwrap_or_default();
        let reference_xml = c14n::canonicalize_element(doc, r, &[])?;
        if let Some(id) = uri.strip_prefix('#') {
            let [transform] = transforms.as_slice() else {
                return Err(policy(format!(
                    "reference '{uri}' must have exactly one transform (exclusive c14n), it has {}",
                    transforms.len()
                )));
            };
            profile.check_c14n_method(algorithm(transform)?)?;
            let target = ids.get(id).copied().ok_or_else(|| {
                auth(format!(
                    "reference '{uri}' does not resolve: no element carries the id '{id}'"
                ))
            })?;
            let mut hasher = Sha256::new();
            let mut sink = DigestSink(&mut hasher);
            c14n::canonicalize_element_into(doc, target, &prefix_list(transform), &mut sink)?;
            let actual = hasher.finish();
            let part = env.classify(&target);
            if digest.len() != actual.len() || !memcmp::eq(&digest, &actual) {
                return Err(auth(format!(
                    "the digest of reference '{uri}' ({}) does not match: the element was changed after signing",
                    describe(&part)
                )));
            }
            xml_references.push(VerifiedReference {
                uri,
                digest_method,
                digest,
                part,
                element: Some(target),
                reference_xml,
            });
        } else if uri.starts_with("cid:") {
            match transforms.as_slice() {
                [t] if algorithm(t)? == ATTACHMENT_CONTENT_SIGNATURE_TRANSFORM => {}
                _ => {
                    return Err(policy(format!(
                        "attachment reference '{uri}' must use exactly the transform {ATTACHMENT_CONTENT_SIGNATURE_TRANSFORM}"
                    )))
                }
            }
            attachment_references.push(VerifiedReference {
                part: SignedPart::Attachment { uri: uri.clone() },
                uri,
                digest_method,
                digest,
                element: None,
                reference_xml,
            });
        } else {
            return Err(policy(format!(
                "reference URI '{uri}' is not supported: AS4 signs elements by '#id' and attachments by 'cid:'"
            )));
        }
    }
    Ok(XmlVerified {
        token,
        signature_algorithm: alg.uri(),
        xml_references,
        attachment_references,
    })
}

struct DigestSink<'a>(&'a mut Sha256);
impl std::io::Write for DigestSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'d> XmlVerified<'d> {
    /// The resolved signer token.
    pub fn token(&self) -> &ResolvedToken {
        &self.token
    }
    /// The signature method URI.
    pub fn signature_algorithm(&self) -> &'static str {
        self.signature_algorithm
    }
    /// The verified same-document references.
    pub fn xml_references(&self) -> &[VerifiedReference<'d>] {
        &self.xml_references
    }
    /// The `cid:` references still to verify (their digests are not checked yet).
    pub fn attachment_references(&self) -> &[VerifiedReference<'d>] {
        &self.attachment_references
    }

    /// Verifies every `cid:` reference against `attachments` (plaintext content of
    /// decrypted parts), streaming. A referenced attachment that is absent, or whose
    /// digest differs, fails with `EBMS:0101`.
    pub fn finish(
        self,
        attachments: &[&dyn AttachmentSource],
    ) -> Result<SignatureReport<'d>, EbmsError> {
        let mut content_sha256 = Vec::new();
        for r in &self.attachment_references {
            let att = attachments
                .iter()
                .find(|a| swa::cid_matches(&r.uri, a.content_id()))
                .ok_or_else(|| {
                    auth(format!(
                        "the signature covers attachment '{}', but the message has no such MIME part",
                        r.uri
                    ))
                })?;
            let actual = swa::attachment_digest(*att)?;
            if r.digest.len() != actual.len() || !memcmp::eq(&r.digest, &actual) {
                return Err(auth(format!(
                    "the digest of attachment '{}' does not match: the attachment was changed after signing",
                    r.uri
                )));
            }
            if swa::digested_as_is(att.content_type()) {
                content_sha256.push((att.content_id().to_owned(), actual));
            }
        }
        let mut references = self.xml_references;
        references.extend(self.attachment_references);
        Ok(SignatureReport {
            token: self.token,
            signature_algorithm: self.signature_algorithm,
            references,
            content_sha256,
        })
    }
}

impl<'d> SignatureReport<'d> {
    /// The SHA-256 of the content of attachment `content_id` (without angle brackets), when
    /// the signature's verified digest of it is exactly that: an attachment the signature
    /// covers, of a type the transform digests as it is (not XML, not text). It was taken
    /// by [`XmlVerified::finish`] from the bytes the attachment source gave it, so a caller
    /// that handed it the very bytes it keeps need not hash them again.
    pub fn content_sha256(&self, content_id: &str) -> Option<[u8; 32]> {
        self.content_sha256
            .iter()
            .find(|(cid, _)| cid == content_id)
            .map(|(_, sha256)| *sha256)
    }

    /// The signer's certificate.
    pub fn signer(&self) -> &X509 {
        &self.token.certificate
    }

    /// Whether a verified reference covered `part`.
    pub fn covers(&self, part: &SignedPart) -> bool {
        self.references.iter().any(|r| &r.part == part)
    }

    /// The element verified as eb:Messaging or the Body — compare it (by identity) with
    /// the element you process.
    pub fn verified_element(&self, part: &SignedPart) -> Option<Element<'d>> {
        self.references
            .iter()
            .find(|r| &r.part == part)
            .and_then(|r| r.element)
    }

    /// Policy check: eb:Messaging, the Body and every listed attachment (Content-IDs of
    /// the message's payload parts) must be covered; `EBMS:0103` naming what is not.
    pub fn require_signed(&self, attachment_content_ids: &[&str]) -> Result<(), EbmsError> {
        for (part, what) in [
            (SignedPart::Messaging, "eb:Messaging"),
            (SignedPart::Body, "the SOAP Body"),
        ] {
            if !self.covers(&part) {
                return Err(policy(format!(
                    "{what} is not covered by the signature (or the signed copy is not the one in place); \
                     the PMode requires it signed"
                )));
            }
        }
        for cid in attachment_content_ids {
            let covered = self.references.iter().any(
                |r| matches!(&r.part, SignedPart::Attachment { uri } if swa::cid_matches(uri, cid)),
            );
            if !covered {
                return Err(policy(format!(
                    "attachment cid:{cid} is not covered by the signature; the PMode requires every payload signed"
                )));
            }
        }
        Ok(())
    }
}
