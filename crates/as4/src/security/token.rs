//! Security-token references (X.509 token profile 1.1) and signer-certificate checks.
//!
//! Incoming signatures name their key through a `wsse:SecurityTokenReference`:
//! * a direct `wsse:Reference` to a `wsse:BinarySecurityToken` (X509v3, or X509PKIPathv1
//!   whose last certificate is the signer's);
//! * a `wsse:KeyIdentifier` holding the Subject Key Identifier (Domibus's default);
//! * `ds:X509Data/ds:X509IssuerSerial`.
//!
//! The last two carry no certificate: they are resolved against the candidate
//! certificates the caller supplies (the PMode's partner certificate).
//!
//! Certificate *trust* (chain to an anchor, validity at a time, key usage) is a separate
//! step, [`validate_signer_certificate`], so a cryptographically valid signature by an
//! expired certificate can be reported as exactly that.

use base64::Engine;
use openssl::asn1::{Asn1Object, Asn1Time};
use openssl::bn::BigNum;
use openssl::hash::{hash, MessageDigest};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::{X509VerifyFlags, X509VerifyParam};
use openssl::x509::{X509KeyUsage, X509NameRef, X509Ref, X509StoreContext, X509};
use time::OffsetDateTime;

use super::dom::Element;
use crate::error::{EbmsError, ErrorCode};

pub use crate::ns::{DS_NS as NS_DS, WSSE_NS as NS_WSSE};
/// BST value type: one X.509 v3 certificate.
pub(crate) const VT_X509V3: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-x509-token-profile-1.0#X509v3";
/// BST value type: a PKIPath (ASN.1 sequence of certificates, anchor first).
pub(crate) const VT_PKIPATH: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-x509-token-profile-1.0#X509PKIPathv1";
/// KeyIdentifier value type: Subject Key Identifier.
pub(crate) const VT_SKI: &str = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-x509-token-profile-1.0#X509SubjectKeyIdentifier";
/// Base64 encoding type of BSTs and key identifiers.
pub(crate) const ENC_BASE64: &str = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary";

/// How a signature (or an EncryptedKey) refers to a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenReference {
    /// A `wsse:BinarySecurityToken` (X509v3) in the header, referenced directly.
    BinarySecurityToken,
    /// A `wsse:BinarySecurityToken` holding a PKIPath (on receipt only).
    PkiPath,
    /// A `wsse:KeyIdentifier` with the certificate's Subject Key Identifier.
    SubjectKeyIdentifier,
    /// `ds:X509IssuerSerial`: issuer distinguished name and serial number.
    IssuerSerial,
}

/// The certificate a signature was resolved to.
#[derive(Debug, Clone)]
pub struct ResolvedToken {
    /// The signer's certificate.
    pub certificate: X509,
    /// Further certificates carried with it (a PKIPath's issuers), nearest issuer first.
    pub chain: Vec<X509>,
    /// How it was referenced.
    pub reference: TokenReference,
}

fn auth(detail: impl Into<String>) -> EbmsError {
    EbmsError::new(ErrorCode::FailedAuthentication, detail)
}

/// Decodes base64 text that may contain line breaks.
pub(crate) fn decode_base64(text: &str, what: &str) -> Result<Vec<u8>, EbmsError> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|e| auth(format!("{what} is not valid base64: {e}")))
}

/// Reads one DER TLV: (tag, content, rest). Definite lengths only.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &b in &rest[..n] {
            len = (len << 8) | b as usize;
        }
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// Parses a PKIPath (`SEQUENCE OF Certificate`, trust anchor first, signer last) and
/// returns the certificates signer-first.
pub(crate) fn parse_pki_path(der: &[u8]) -> Result<Vec<X509>, EbmsError> {
    let bad = || auth("the PKIPath security token is not a DER sequence of certificates");
    let (tag, mut content, rest) = der_tlv(der).ok_or_else(bad)?;
    if tag != 0x30 || !rest.is_empty() {
        return Err(bad());
    }
    let mut certs = Vec::new();
    while !content.is_empty() {
        let (_, _, after) = der_tlv(content).ok_or_else(bad)?;
        let one = &content[..content.len() - after.len()];
        certs.push(X509::from_der(one).map_err(|e| auth(format!("PKIPath certificate: {e}")))?);
        content = after;
    }
    if certs.is_empty() {
        return Err(bad());
    }
    certs.reverse();
    Ok(certs)
}

/// The certificate's Subject Key Identifier: the extension's value, or when absent the
/// SHA-1 of the subjectPublicKey bits (RFC 5280 §4.2.1.2 method 1, as WSS4J computes it).
pub fn subject_key_identifier(cert: &X509Ref) -> Result<Vec<u8>, EbmsError> {
    if let Some(ski) = cert.subject_key_id() {
        return Ok(ski.as_slice().to_vec());
    }
    let spki = cert
        .public_key()
        .and_then(|k| k.public_key_to_der())
        .map_err(|e| auth(format!("reading the certificate's public key: {e}")))?;
    let bad = || auth("the certificate's SubjectPublicKeyInfo is malformed");
    let (_, seq, _) = der_tlv(&spki).ok_or_else(bad)?;
    let (_, _alg, rest) = der_tlv(seq).ok_or_else(bad)?;
    let (tag, bits, _) = der_tlv(rest).ok_or_else(bad)?;
    if tag != 0x03 || bits.is_empty() {
        return Err(bad());
    }
    // Skip the BIT STRING's unused-bits octet.
    let digest = hash(MessageDigest::sha1(), &bits[1..]).map_err(|e| auth(e.to_string()))?;
    Ok(digest.to_vec())
}

/// RFC 2253 short names we print (anything else is printed as a dotted OID, `#hex`).
const RFC2253_NAMES: &[&str] = &["CN", "L", "ST", "O", "OU", "C", "STREET", "DC", "UID"];

fn escape_dn_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, ch) in v.chars().enumerate() {
        let special = matches!(ch, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && (ch == '#' || ch == ' '))
            || (i == v.chars().count() - 1 && ch == ' ');
        if special {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

/// Formats a distinguished name as an RFC 2253 string (last RDN first), the form
/// `ds:X509IssuerName` carries.
pub fn distinguished_name_string(name: &X509NameRef) -> String {
    let mut parts: Vec<String> = Vec::new();
    for entry in name.entries() {
        let nid = entry.object().nid();
        let short = nid.short_name().unwrap_or("");
        let value = entry.data().to_string().unwrap_or_default();
        if RFC2253_NAMES.contains(&short) {
            parts.push(format!("{short}={}", escape_dn_value(&value)));
        } else {
            // Dotted OID with the DER-encoded value (RFC 2253 §2.4); IA5String for
            // emailAddress, UTF8String otherwise.
            let tag: u8 = if nid == openssl::nid::Nid::PKCS9_EMAILADDRESS {
                0x16
            } else {
                0x0c
            };
            let mut der = vec![tag];
            let bytes = value.as_bytes();
            if bytes.len() < 0x80 {
                der.push(bytes.len() as u8);
            } else {
                der.push(0x82);
                der.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
            }
            der.extend_from_slice(bytes);
            let hex: String = der.iter().map(|b| format!("{b:02X}")).collect();
            parts.push(format!("{}=#{hex}", entry.object()));
        }
    }
    parts.reverse();
    parts.join(",")
}

/// Splits a DN string on unescaped `sep` characters.
fn split_unescaped(s: &str, seps: &[char]) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.last_mut().unwrap().push(c);
            if let Some(n) = chars.next() {
                out.last_mut().unwrap().push(n);
            }
        } else if seps.contains(&c) {
            out.push(String::new());
        } else {
            out.last_mut().unwrap().push(c);
        }
    }
    out
}

fn unescape_dn_value(v: &str) -> String {
    let v = v.trim();
    if let Some(hex) = v.strip_prefix('#') {
        // A DER-encoded value: decode it and take the string's content octets.
        let bytes: Option<Vec<u8>> = (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect();
        if let Some((_, content, _)) = bytes.as_deref().and_then(der_tlv) {
            return String::from_utf8_lossy(content).into_owned();
        }
        return v.to_string();
    }
    let mut out = String::new();
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            // \XX hex pair or an escaped special character.
            let a = chars.next();
            match (a, chars.peek().copied()) {
                (Some(a), Some(b)) if a.is_ascii_hexdigit() && b.is_ascii_hexdigit() => {
                    chars.next();
                    out.push(u8::from_str_radix(&format!("{a}{b}"), 16).unwrap_or(b'?') as char);
                }
                (Some(a), _) => out.push(a),
                _ => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The OID of a DN attribute key (`CN`, `commonName`, `2.5.4.3`, and the common
/// Java/.NET aliases `E`, `EMAILADDRESS`, `S`).
fn attribute_oid(key: &str) -> Option<String> {
    let key = key.trim();
    let name = match key.to_ascii_uppercase().as_str() {
        "E" | "EMAILADDRESS" | "EMAIL" => "emailAddress",
        "S" | "ST" => "ST",
        "STREET" => "street",
        "SERIALNUMBER" => "serialNumber",
        "CN" => "CN",
        "L" => "L",
        "O" => "O",
        "OU" => "OU",
        "C" => "C",
        "DC" => "DC",
        "UID" => "UID",
        _ => key,
    };
    let obj = Asn1Object::from_str(name).ok()?;
    // Normalize to the long name (or dotted OID) so aliases compare equal.
    match obj.nid().long_name() {
        Ok(long) if obj.nid() != openssl::nid::Nid::UNDEF => Some(long.to_string()),
        _ => Some(obj.to_string()),
    }
}

fn normalize_value(v: &str) -> String {
    v.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Whether an RFC 2253 string names the same distinguished name as `name`.
/// Attribute keys may use any common alias; values compare case-insensitively with
/// whitespace collapsed (RFC 5280 §7.1 name matching, simplified).
pub fn distinguished_name_matches(dn: &str, name: &X509NameRef) -> bool {
    let mut parsed: Vec<(String, String)> = Vec::new();
    for rdn in split_unescaped(dn, &[',', ';']).into_iter().rev() {
        for ava in split_unescaped(&rdn, &['+']) {
            let Some((k, v)) = ava.split_once('=') else {
                return false;
            };
            let Some(oid) = attribute_oid(k) else {
                return false;
            };
            parsed.push((oid, normalize_value(&unescape_dn_value(v))));
        }
    }
    let actual: Vec<(String, String)> = name
        .entries()
        .map(|e| {
            let nid = e.object().nid();
            let key = nid
                .long_name()
                .map(str::to_string)
                .unwrap_or_else(|_| e.object().to_string());
            let v = e.data().to_string().unwrap_or_default();
            (key, normalize_value(&v))
        })
        .collect();
    parsed == actual
}

/// The certificate's serial number in decimal (`ds:X509SerialNumber`).
pub(crate) fn serial_decimal(cert: &X509Ref) -> Result<String, EbmsError> {
    cert.serial_number()
        .to_bn()
        .and_then(|bn| bn.to_dec_str().map(|s| s.to_string()))
        .map_err(|e| auth(format!("reading the certificate serial number: {e}")))
}

fn subject_of(cert: &X509Ref) -> String {
    distinguished_name_string(cert.subject_name())
}

/// The certificate a BinarySecurityToken carries. Usually it is one we already hold (the
/// partner's signing certificate from the PMode, or our own when checking what we just
/// signed): then that one is taken instead of decoding the token, since decoding a
/// certificate is among the costliest steps of verifying a small message (OpenSSL 3 looks
/// up a decoder for its public key each time). Equal DER bytes are the same certificate.
fn certificate_from_der(der: &[u8], candidates: &[X509]) -> Result<X509, EbmsError> {
    if let Some(known) = candidates
        .iter()
        .find(|c| c.to_der().is_ok_and(|d| d == der))
    {
        return Ok(known.clone());
    }
    X509::from_der(der).map_err(|e| {
        auth(format!(
            "the BinarySecurityToken is not an X.509 certificate: {e}"
        ))
    })
}

/// Resolves the `ds:KeyInfo` of a signature to the signer's certificate.
///
/// `security` is the `wsse:Security` header holding the signature (BSTs must be inside
/// it); `candidates` are the certificates a key identifier or issuer/serial may name.
pub(crate) fn resolve_key_info<'d>(
    security: Element<'d>,
    key_info: Element<'d>,
    ids: &std::collections::HashMap<&'d str, Element<'d>>,
    candidates: &[X509],
) -> Result<ResolvedToken, EbmsError> {
    let str_el = key_info.child(NS_WSSE, "SecurityTokenReference").ok_or_else(|| {
        auth("ds:KeyInfo has no wsse:SecurityTokenReference; the signer's certificate cannot be found")
    })?;
    if let Some(reference) = str_el.child(NS_WSSE, "Reference") {
        let uri = reference.attribute("URI").unwrap_or("");
        let id = uri.strip_prefix('#').ok_or_else(|| {
            auth(format!(
                "token reference URI '{uri}' is not a same-document '#id' reference"
            ))
        })?;
        let bst = ids.get(id).copied().ok_or_else(|| {
            auth(format!(
                "token reference '#{id}' does not resolve to any element"
            ))
        })?;
        if !bst.is(NS_WSSE, "BinarySecurityToken") || !bst.is_inside(&security) {
            return Err(auth(format!(
                "token reference '#{id}' points to {}, not to a wsse:BinarySecurityToken of this security header",
                bst.path()
            )));
        }
        let value_type = bst.attribute("ValueType").unwrap_or(VT_X509V3);
        if let Some(vt) = reference.attribute("ValueType") {
            if vt != value_type {
                return Err(auth(format!(
                    "token reference ValueType '{vt}' does not match the BinarySecurityToken's '{value_type}'"
                )));
            }
        }
        if let Some(enc) = bst.attribute("EncodingType") {
            if enc != ENC_BASE64 {
                return Err(auth(format!(
                    "BinarySecurityToken EncodingType '{enc}' is not supported (Base64Binary only)"
                )));
            }
        }
        let der = decode_base64(&bst.text(), "the BinarySecurityToken")?;
        return match value_type {
            VT_X509V3 => Ok(ResolvedToken {
                certificate: certificate_from_der(&der, candidates)?,
                chain: Vec::new(),
                reference: TokenReference::BinarySecurityToken,
            }),
            VT_PKIPATH => {
                let mut certs = parse_pki_path(&der)?;
                let leaf = certs.remove(0);
                Ok(ResolvedToken {
                    certificate: leaf,
                    chain: certs,
                    reference: TokenReference::PkiPath,
                })
            }
            other => Err(auth(format!(
                "BinarySecurityToken ValueType '{other}' is not supported (X509v3 or X509PKIPathv1)"
            ))),
        };
    }
    if let Some(ki) = str_el.child(NS_WSSE, "KeyIdentifier") {
        let vt = ki.attribute("ValueType").unwrap_or("");
        if vt != VT_SKI {
            return Err(auth(format!(
                "wsse:KeyIdentifier ValueType '{vt}' is not supported (X509SubjectKeyIdentifier only)"
            )));
        }
        let wanted = decode_base64(&ki.text(), "the Subject Key Identifier")?;
        for cert in candidates {
            if subject_key_identifier(cert)? == wanted {
                return Ok(ResolvedToken {
                    certificate: cert.clone(),
                    chain: Vec::new(),
                    reference: TokenReference::SubjectKeyIdentifier,
                });
            }
        }
        let hex: String = wanted.iter().map(|b| format!("{b:02x}")).collect();
        return Err(auth(format!(
            "the signature names its certificate by Subject Key Identifier {hex}, but none of the {} \
             configured partner certificate(s) has it; configure the sender's signing certificate in the PMode",
            candidates.len()
        )));
    }
    if let Some(is) = str_el
        .child(NS_DS, "X509Data")
        .and_then(|d| d.child(NS_DS, "X509IssuerSerial"))
    {
        let issuer = is
            .child(NS_DS, "X509IssuerName")
            .map(|e| e.text())
            .unwrap_or_default();
        let serial = is
            .child(NS_DS, "X509SerialNumber")
            .map(|e| e.text())
            .unwrap_or_default();
        let serial_bn = BigNum::from_dec_str(serial.trim()).map_err(|_| {
            auth(format!(
                "ds:X509SerialNumber '{serial}' is not a decimal integer"
            ))
        })?;
        for cert in candidates {
            let cert_serial = cert
                .serial_number()
                .to_bn()
                .map_err(|e| auth(e.to_string()))?;
            if cert_serial == serial_bn && distinguished_name_matches(&issuer, cert.issuer_name()) {
                return Ok(ResolvedToken {
                    certificate: cert.clone(),
                    chain: Vec::new(),
                    reference: TokenReference::IssuerSerial,
                });
            }
        }
        return Err(auth(format!(
            "the signature names its certificate by issuer '{issuer}' and serial {serial}, but none of the {} \
             configured partner certificate(s) matches; configure the sender's signing certificate in the PMode",
            candidates.len()
        )));
    }
    Err(auth(
        "wsse:SecurityTokenReference holds no supported reference (Reference, KeyIdentifier or X509IssuerSerial)",
    ))
}

fn asn1_at(at: OffsetDateTime) -> Result<Asn1Time, EbmsError> {
    Asn1Time::from_unix(at.unix_timestamp())
        .map_err(|e| EbmsError::new(ErrorCode::Other, format!("time {at}: {e}")))
}

/// Checks that `at` lies within the certificate's validity period (`EBMS:0101` otherwise,
/// saying whether it expired or is not yet valid).
pub fn check_validity_period(cert: &X509Ref, at: OffsetDateTime) -> Result<(), EbmsError> {
    let t = asn1_at(at)?;
    if cert.not_after() < t {
        return Err(auth(format!(
            "the signer certificate '{}' expired on {} (checked at {at}); the partner must renew it",
            subject_of(cert),
            cert.not_after()
        )));
    }
    if cert.not_before() > t {
        return Err(auth(format!(
            "the signer certificate '{}' is not valid before {} (checked at {at})",
            subject_of(cert),
            cert.not_before()
        )));
    }
    Ok(())
}

/// Checks that the certificate may sign: KeyUsage (when present) includes
/// digitalSignature or nonRepudiation.
pub(crate) fn check_signing_key_usage(cert: &X509Ref) -> Result<(), EbmsError> {
    match cert.key_usage() {
        None => Ok(()),
        Some(ku) if ku.intersects(X509KeyUsage::DIGITAL_SIGNATURE | X509KeyUsage::NON_REPUDIATION) => Ok(()),
        Some(_) => Err(auth(format!(
            "the certificate '{}' may not sign: its KeyUsage has neither digitalSignature nor nonRepudiation",
            subject_of(cert)
        ))),
    }
}

/// Full trust check of a signer certificate at time `at`: validity period, key usage,
/// and a chain to one of `anchors` (via OpenSSL's X509Store; an anchor need not be
/// self-signed — a pinned partner certificate is an anchor too). `intermediates` are
/// untrusted helpers for building the chain (e.g. from a PKIPath token).
pub fn validate_signer_certificate(
    cert: &X509Ref,
    intermediates: &[X509],
    anchors: &[X509],
    at: OffsetDateTime,
) -> Result<(), EbmsError> {
    check_validity_period(cert, at)?;
    check_signing_key_usage(cert)?;
    verified_chain(cert, intermediates, anchors, at).map(drop)
}

/// The chain part of [`validate_signer_certificate`] without the key-usage check: any
/// certificate (an encryption certificate a partner publishes, say) against `anchors` at
/// `at`, validity included.
pub fn validate_certificate_chain(
    cert: &X509Ref,
    intermediates: &[X509],
    anchors: &[X509],
    at: OffsetDateTime,
) -> Result<(), EbmsError> {
    check_validity_period(cert, at)?;
    verified_chain(cert, intermediates, anchors, at).map(drop)
}

/// The chain OpenSSL builds from `cert` through `intermediates` to one of `anchors` and
/// verifies at `at` (signer first), or why it cannot.
fn verified_chain(
    cert: &X509Ref,
    intermediates: &[X509],
    anchors: &[X509],
    at: OffsetDateTime,
) -> Result<Vec<X509>, EbmsError> {
    if anchors.is_empty() {
        return Err(EbmsError::new(
            ErrorCode::PolicyNoncompliance,
            "no trust anchor is configured for this partner; add the partner's CA or certificate to the PMode",
        ));
    }
    let internal = |e: openssl::error::ErrorStack| EbmsError::new(ErrorCode::Other, e.to_string());
    let mut builder = X509StoreBuilder::new().map_err(internal)?;
    for a in anchors {
        builder.add_cert(a.clone()).map_err(internal)?;
    }
    let mut param = X509VerifyParam::new().map_err(internal)?;
    param.set_time(at.unix_timestamp() as _);
    param
        .set_flags(X509VerifyFlags::PARTIAL_CHAIN)
        .map_err(internal)?;
    builder.set_param(&param).map_err(internal)?;
    let store = builder.build();
    let mut chain = Stack::new().map_err(internal)?;
    for c in intermediates {
        chain.push(c.clone()).map_err(internal)?;
    }
    let mut ctx = X509StoreContext::new().map_err(internal)?;
    let (ok, err, verified) = ctx
        .init(&store, cert, &chain, |c| {
            let ok = c.verify_cert()?;
            // The chain as OpenSSL built it (signer first), for the CRL check.
            let verified: Vec<X509> = c
                .chain()
                .map(|s| s.iter().map(|x| x.to_owned()).collect())
                .unwrap_or_default();
            Ok((ok, c.error(), verified))
        })
        .map_err(internal)?;
    if ok {
        Ok(verified)
    } else {
        Err(auth(format!(
            "the signer certificate '{}' (issuer '{}') is not trusted at {at}: {}; \
             check the trust anchors configured for this partner",
            subject_of(cert),
            distinguished_name_string(cert.issuer_name()),
            err.error_string()
        )))
    }
}

/// How long a signer found trusted is taken as trusted without checking again (when
/// nothing the decision rests on expires meanwhile: see [`validate_signer_with_crl_files`]).
const TRUSTED_FOR: time::Duration = time::Duration::minutes(5);

/// At most this many trust decisions are remembered (a partner signs with one or two
/// certificates; the set is emptied when full).
const TRUSTED_MAX: usize = 1024;

/// Recent trust decisions: the digest of everything a decision rests on, and when it was
/// made.
static TRUSTED: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<[u8; 32], OffsetDateTime>>,
> = std::sync::LazyLock::new(Default::default);

/// The full trust check of a message's signer ([`validate_signer_certificate`], then the
/// verified chain against the CRLs read from `crl_files`:
/// [`super::revocation::check_chain`]), remembered for a few minutes: a partner signs every
/// message with the same certificate, and building its chain, reading its CRLs and checking
/// them for each message cost more than verifying the signature. A decision is reused only
/// for the same signer, chain, anchors and CRL files (by path, size, modification time and
/// inode: a refreshed CRL file takes effect at once), at a time within [`TRUSTED_FOR`]
/// after it was made, and only when no certificate of the chain expires and no CRL goes
/// stale within that time. Refusals are never remembered.
pub(crate) fn validate_signer_with_crl_files(
    cert: &X509Ref,
    intermediates: &[X509],
    anchors: &[X509],
    crl_files: &[std::path::PathBuf],
    at: OffsetDateTime,
) -> Result<(), EbmsError> {
    let key = trust_key(cert, intermediates, anchors, crl_files);
    let lock = || TRUSTED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(key) = &key {
        if let Some(made) = lock().get(key) {
            if *made <= at && at <= *made + TRUSTED_FOR {
                return Ok(());
            }
        }
    }
    let crls = super::revocation::Crl::load_all(crl_files).map_err(|why| {
        auth(format!(
            "{why} (a CRL file of the sending party in the PMode; `varti pmode check` \
             lists them)"
        ))
    })?;
    check_validity_period(cert, at)?;
    check_signing_key_usage(cert)?;
    let verified = verified_chain(cert, intermediates, anchors, at)?;
    super::revocation::check_chain(&verified, anchors, &crls, at)?;
    let Some(key) = key else { return Ok(()) };
    let until = at + TRUSTED_FOR;
    let lasts = asn1_at(until).is_ok_and(|until| {
        verified
            .iter()
            .all(|c| c.not_after().compare(&until).is_ok_and(|o| o.is_ge()))
    }) && !crls.iter().any(|c| c.is_stale(until));
    if lasts {
        let mut trusted = lock();
        if trusted.len() >= TRUSTED_MAX {
            trusted.clear();
        }
        trusted.insert(key, at);
    }
    Ok(())
}

/// The digest of what a trust decision rests on: the certificates (DER) and the CRL files'
/// identity. `None` when a CRL file cannot be looked at (the check then reads it and says
/// why it cannot).
fn trust_key(
    cert: &X509Ref,
    intermediates: &[X509],
    anchors: &[X509],
    crl_files: &[std::path::PathBuf],
) -> Option<[u8; 32]> {
    use std::os::unix::fs::MetadataExt;
    let mut h = openssl::sha::Sha256::new();
    let mut put = |bytes: &[u8]| {
        h.update(&(bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    put(&cert.to_der().ok()?);
    for (label, certs) in [(b"chain", intermediates), (b"trust", anchors)] {
        put(label);
        for c in certs {
            put(&c.to_der().ok()?);
        }
    }
    for path in crl_files {
        let m = std::fs::metadata(path).ok()?;
        put(path.as_os_str().as_encoded_bytes());
        for n in [m.len(), m.ino(), m.dev()] {
            put(&n.to_be_bytes());
        }
        put(&m.mtime().to_be_bytes());
        put(&m.mtime_nsec().to_be_bytes());
    }
    Some(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_pki(file: &str) -> X509 {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../certs")
            .join(file);
        X509::from_pem(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn a_token_certificate_we_hold_is_taken_as_held_and_any_other_is_decoded() {
        let a = test_pki("varti-a/sign-ed25519.cert.pem");
        let b = test_pki("varti-b/sign-ed25519.cert.pem");
        let der = a.to_der().unwrap();
        let held = certificate_from_der(&der, &[b.clone(), a.clone()]).unwrap();
        assert!(
            std::ptr::eq::<X509Ref>(&*held, &*a),
            "the held certificate itself"
        );
        let decoded = certificate_from_der(&der, std::slice::from_ref(&b)).unwrap();
        assert!(!std::ptr::eq::<X509Ref>(&*decoded, &*a));
        assert_eq!(decoded.to_der().unwrap(), der);
        let e = certificate_from_der(b"not a certificate", &[a]).unwrap_err();
        assert_eq!(e.code, ErrorCode::FailedAuthentication);
    }
}
