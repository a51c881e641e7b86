//! Signing an outgoing AS4 message: a `wsse:Security` header with one `ds:Signature`
//! over eb:Messaging, the SOAP Body and every attachment.
//!
//! Canonicalization must see the elements as they are in the *final* document, so the
//! caller (the SOAP builder) produces the envelope with [`SECURITY_HEADER_PLACEHOLDER`]
//! in `S12:Header` before `eb:Messaging`, and with `wsu:Id` on eb:Messaging and the
//! Body. We parse it with libxml2, digest the two elements (exclusive c14n, no
//! PrefixList — exc-c14n then depends on nothing outside the element, so the digests
//! hold once the header is inserted), digest the attachments while streaming them,
//! write SignedInfo in its canonical form, sign it with the profile's algorithm, and
//! replace the placeholder. The placeholder must be a comment directly in the SOAP
//! Header (checked on the parsed document), so the insertion adds a sibling of
//! eb:Messaging and changes neither signed element nor their ancestors: their exclusive
//! canonical forms, and so the digests, are those of the final document by construction.
//! (Whether our key belongs to our certificate is checked when the access point loads
//! them, not on every message.)

use base64::Engine;
use openssl::sha::Sha256;
use openssl::x509::X509Ref;

use super::c14n::{self, EXC_C14N};
use super::dom::{XmlDocument, NS_WSU};
use super::private_key::KeyOperations;
use super::profile::Profile;
use super::swa::{self, AttachmentSource, ATTACHMENT_CONTENT_SIGNATURE_TRANSFORM};
use super::token::{self, TokenReference, ENC_BASE64, NS_DS, NS_WSSE, VT_SKI, VT_X509V3};
use super::verify::{self, NS_EBMS, NS_SOAP11, NS_SOAP12};
use crate::error::{EbmsError, ErrorCode};

/// The comment the SOAP builder puts where the `wsse:Security` header goes (first in
/// `S12:Header`, before `eb:Messaging`).
pub const SECURITY_HEADER_PLACEHOLDER: &str = "<!--varti:wsse:Security-->";

/// What signs: the profile, the key and certificate, and how the certificate is referenced.
#[derive(Clone, Copy)]
pub struct SigningIdentity<'a> {
    /// The algorithm suite (from the PMode).
    pub profile: &'a Profile,
    /// The private signing key.
    pub key: &'a dyn KeyOperations,
    /// Its certificate.
    pub certificate: &'a X509Ref,
    /// How the signature names the certificate (per partner, from the PMode).
    /// [`TokenReference::PkiPath`] is not used for sending.
    pub token_reference: TokenReference,
}

/// One reference we signed: what a receipt's NRR must echo back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedReference {
    /// `#id` or `cid:...`.
    pub uri: String,
    /// Digest method URI.
    pub digest_method: String,
    /// Digest value.
    pub digest: Vec<u8>,
}

/// A signed envelope.
#[derive(Debug, Clone)]
pub struct SignedEnvelope {
    /// The envelope with the security header in place of the placeholder.
    pub envelope: String,
    /// The `wsse:Security` element alone, as inserted.
    pub security_header: String,
    /// The references signed, in SignedInfo order.
    pub references: Vec<SignedReference>,
}

fn fail(detail: impl Into<String>) -> EbmsError {
    EbmsError::new(ErrorCode::Other, detail)
}

/// Escapes text for an XML attribute value or element content.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// SignedInfo in its exclusive canonical form, around `refs_xml` (from [`reference_xml`]).
fn signed_info_xml(signature_method: &str, refs_xml: &str) -> String {
    format!(
        r#"<ds:SignedInfo xmlns:ds="{NS_DS}"><ds:CanonicalizationMethod Algorithm="{}"></ds:CanonicalizationMethod><ds:SignatureMethod Algorithm="{}"></ds:SignatureMethod>{refs_xml}</ds:SignedInfo>"#,
        c14n::escape_attribute(EXC_C14N),
        c14n::escape_attribute(signature_method)
    )
}

/// A `ds:Reference` in canonical form (see [`signed_info_xml`]).
fn reference_xml(uri: &str, transform: &str, digest_method: &str, digest: &[u8]) -> String {
    format!(
        r#"<ds:Reference URI="{}"><ds:Transforms><ds:Transform Algorithm="{}"></ds:Transform></ds:Transforms><ds:DigestMethod Algorithm="{}"></ds:DigestMethod><ds:DigestValue>{}</ds:DigestValue></ds:Reference>"#,
        c14n::escape_attribute(uri),
        c14n::escape_attribute(transform),
        c14n::escape_attribute(digest_method),
        b64(digest)
    )
}

/// Signs `envelope` (which holds [`SECURITY_HEADER_PLACEHOLDER`] once, and `wsu:Id`
/// on eb:Messaging and the SOAP Body) and every attachment.
pub fn sign_envelope(
    envelope: &str,
    identity: &SigningIdentity<'_>,
    attachments: &[&dyn AttachmentSource],
) -> Result<SignedEnvelope, EbmsError> {
    let profile = identity.profile;
    if envelope.matches(SECURITY_HEADER_PLACEHOLDER).count() != 1 {
        return Err(fail(format!(
            "the envelope to sign must contain the placeholder {SECURITY_HEADER_PLACEHOLDER} exactly once"
        )));
    }
    let doc = XmlDocument::parse(envelope.as_bytes())?;
    verify::id_map(&doc)?; // unique ids, or the receiver will refuse the message
    let root = doc.root().ok_or_else(|| fail("empty envelope"))?;
    let soap_ns = if root.is(NS_SOAP12, "Envelope") {
        NS_SOAP12
    } else if root.is(NS_SOAP11, "Envelope") {
        NS_SOAP11
    } else {
        return Err(fail("the document to sign is not a SOAP envelope"));
    };
    let header = root
        .child(soap_ns, "Header")
        .ok_or_else(|| fail("the envelope to sign has no SOAP Header"))?;
    let messaging = header
        .child(NS_EBMS, "Messaging")
        .ok_or_else(|| fail("the envelope to sign has no eb:Messaging in its Header"))?;
    let body = root
        .child(soap_ns, "Body")
        .ok_or_else(|| fail("the envelope to sign has no SOAP Body"))?;
    // The placeholder occurs once in the text; this is that occurrence (not text in an
    // attribute or a CDATA section), and it sits where the header goes.
    let placeholder_text = SECURITY_HEADER_PLACEHOLDER
        .strip_prefix("<!--")
        .and_then(|t| t.strip_suffix("-->"))
        .unwrap_or(SECURITY_HEADER_PLACEHOLDER);
    if !header.has_comment_child(placeholder_text) {
        return Err(fail(
            "the placeholder of the security header is not a comment directly in the SOAP \
             Header; put it there, before eb:Messaging",
        ));
    }

    let mut refs_xml = String::new();
    let mut references = Vec::new();
    for (el, what) in [(messaging, "eb:Messaging"), (body, "the SOAP Body")] {
        let id = el
            .attribute_ns(Some(NS_WSU), "Id")
            .ok_or_else(|| fail(format!("{what} needs a wsu:Id attribute to be signed")))?;
        let canonical = c14n::canonicalize_element(&doc, el, &[])?;
        let mut h = Sha256::new();
        h.update(&canonical);
        let digest = h.finish().to_vec();
        let uri = format!("#{id}");
        refs_xml.push_str(&reference_xml(&uri, profile.c14n, profile.digest, &digest));
        references.push(SignedReference {
            uri,
            digest_method: profile.digest.to_string(),
            digest,
        });
    }
    for att in attachments {
        let digest = swa::attachment_digest(*att)?.to_vec();
        let cid = att
            .content_id()
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>');
        // RFC 2392: a cid URL percent-encodes characters not allowed in URLs.
        let uri = format!(
            "cid:{}",
            percent_encoding::utf8_percent_encode(cid, CID_ESCAPE)
        );
        refs_xml.push_str(&reference_xml(
            &uri,
            ATTACHMENT_CONTENT_SIGNATURE_TRANSFORM,
            profile.digest,
            &digest,
        ));
        references.push(SignedReference {
            uri,
            digest_method: profile.digest.to_string(),
            digest,
        });
    }

    // SignedInfo is written in its exclusive canonical form: its own ds declaration and
    // no other, no PrefixList, empty elements written as start and end tags, attribute
    // values escaped as c14n escapes them, no whitespace between elements. Inside the
    // final header it canonicalizes to these very bytes, which are what is signed: no
    // parse and canonicalization of what was just built (a debug build checks them
    // against libxml2's c14n all the same).
    let signed_info = signed_info_xml(profile.signature.uri(), &refs_xml);
    debug_assert_eq!(
        c14n::canonicalize_bytes(signed_info.as_bytes(), &[])
            .ok()
            .as_deref(),
        Some(signed_info.as_bytes()),
        "SignedInfo is not written in its canonical form"
    );
    let signature_value = profile
        .signature
        .sign(identity.key, signed_info.as_bytes())?;

    let uid = || uuid::Uuid::new_v4().to_string();
    let (bst, str_content) = match identity.token_reference {
        TokenReference::BinarySecurityToken | TokenReference::PkiPath => {
            let bst_id = format!("X509-{}", uid());
            let der = identity
                .certificate
                .to_der()
                .map_err(|e| fail(format!("encoding the signing certificate: {e}")))?;
            (
                format!(
                    r#"<wsse:BinarySecurityToken EncodingType="{ENC_BASE64}" ValueType="{VT_X509V3}" wsu:Id="{bst_id}">{}</wsse:BinarySecurityToken>"#,
                    b64(&der)
                ),
                format!(r##"<wsse:Reference URI="#{bst_id}" ValueType="{VT_X509V3}"/>"##),
            )
        }
        TokenReference::SubjectKeyIdentifier => {
            let ski = token::subject_key_identifier(identity.certificate)?;
            (
                String::new(),
                format!(
                    r#"<wsse:KeyIdentifier EncodingType="{ENC_BASE64}" ValueType="{VT_SKI}">{}</wsse:KeyIdentifier>"#,
                    b64(&ski)
                ),
            )
        }
        TokenReference::IssuerSerial => (
            String::new(),
            format!(
                r#"<ds:X509Data><ds:X509IssuerSerial><ds:X509IssuerName>{}</ds:X509IssuerName><ds:X509SerialNumber>{}</ds:X509SerialNumber></ds:X509IssuerSerial></ds:X509Data>"#,
                esc(&token::distinguished_name_string(
                    identity.certificate.issuer_name()
                )),
                token::serial_decimal(identity.certificate)?
            ),
        ),
    };
    let must_understand = if soap_ns == NS_SOAP12 { "true" } else { "1" };
    // The signed SignedInfo text is inserted as is (no redeclaration differences:
    // exc-c14n renders xmlns:ds on SignedInfo either way).
    let security_header = format!(
        r#"<wsse:Security xmlns:wsse="{NS_WSSE}" xmlns:wsu="{NS_WSU}" xmlns:soapenv="{soap_ns}" soapenv:mustUnderstand="{must_understand}">{bst}<ds:Signature xmlns:ds="{NS_DS}" Id="SIG-{}">{signed_info}<ds:SignatureValue>{}</ds:SignatureValue><ds:KeyInfo Id="KI-{}"><wsse:SecurityTokenReference wsu:Id="STR-{}">{str_content}</wsse:SecurityTokenReference></ds:KeyInfo></ds:Signature></wsse:Security>"#,
        uid(),
        b64(&signature_value),
        uid(),
        uid()
    );
    let signed = envelope.replacen(SECURITY_HEADER_PLACEHOLDER, &security_header, 1);

    Ok(SignedEnvelope {
        envelope: signed,
        security_header,
        references,
    })
}

/// Characters percent-encoded in a `cid:` URL (RFC 2392 / RFC 3986 non-unreserved,
/// keeping the characters Content-IDs commonly hold: `@ . - _ ~ $ + ! * ' ( ) , ; = : /`).
const CID_ESCAPE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_info_is_written_in_its_exclusive_canonical_form() {
        // Every character c14n escapes in an attribute, and `>` and `'` it leaves alone.
        let refs = [
            reference_xml("#_messaging", EXC_C14N, "urn:digest", b"\x01\x02"),
            reference_xml(
                "cid:a&b<c>d\"e'f\tg\nh\ri@x",
                ATTACHMENT_CONTENT_SIGNATURE_TRANSFORM,
                "urn:digest",
                &[0xff; 32],
            ),
        ]
        .concat();
        let signed_info = signed_info_xml("urn:signature", &refs);
        let canonical = c14n::canonicalize_bytes(signed_info.as_bytes(), &[]).unwrap();
        assert_eq!(
            String::from_utf8(canonical).unwrap(),
            signed_info,
            "what is signed must be what a verifier canonicalizes"
        );
        assert!(signed_info.contains("a&amp;b&lt;c>d&quot;e'f&#x9;g&#xA;h&#xD;i@x"));
    }
}
