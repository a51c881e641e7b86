//! Signatures of common-services answers.
//!
//! The OOTS common services do not sign the XML itself (the recorded answers carry no
//! `ds:Signature`): they sign the HTTP response. Each answer comes with a `digest` header
//! (`SHA-256=<base64>` of the body) and an `oots-response-sig` header holding a JAdES
//! (ETSI TS 119 182-1) detached JWS: compact serialization with an empty payload part,
//! `b64: false`, `crit: ["b64", "sigD"]`, and `sigD` with mechanism
//! `http://uri.etsi.org/19182/HttpHeaders` naming the signed headers (`pars`). The signed
//! payload is those headers written as `name: value` lines (lower-case names, joined by
//! `\n`), so the signature covers the digest and the digest covers the body. The signer's
//! certificate chain is in `x5c`.
//!
//! [`verify_response`] checks all of it: the JWS against the signer certificate, the
//! certificate against the configured trust anchors at a given time (chain, validity, key
//! usage, through `varti-as4`'s certificate checks), and the digest against the body.
//! [`ResponseSigner`] produces the same headers, for the local stand-in and for tests.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use openssl::hash::{hash, MessageDigest};
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Private, Public};
use openssl::rsa::Padding;
use openssl::sign::{RsaPssSaltlen, Signer, Verifier};
use openssl::x509::X509;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use varti_as4::security::profile::{ecdsa_der_to_raw, ecdsa_raw_to_der};
use varti_as4::security::token::{distinguished_name_string, validate_signer_certificate};

/// The response header carrying the JAdES signature.
pub const SIGNATURE_HEADER: &str = "oots-response-sig";
/// The JAdES `sigD` mechanism signing HTTP headers.
pub(crate) const HTTP_HEADERS_MECHANISM: &str = "http://uri.etsi.org/19182/HttpHeaders";

/// Why an answer's signature is refused. Each says what to check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `oots-response-sig` header.
    #[error("the answer has no {SIGNATURE_HEADER} header, but signature verification is configured; is the base URL that of the real common services (or a stand-in started with a signing key)?")]
    Missing,
    /// The header is not a detached JWS or its JOSE header cannot be read.
    #[error("the {SIGNATURE_HEADER} header is not a JAdES detached JWS: {0}")]
    Malformed(String),
    /// A JWS feature Varti does not implement (algorithm, critical parameter, mechanism).
    #[error("the {SIGNATURE_HEADER} signature uses something Varti does not support: {0}")]
    Unsupported(String),
    /// A header the signature covers is absent.
    #[error("the signed header `{0}` is not in the answer")]
    MissingSignedHeader(String),
    /// The signature covers no digest of the body.
    #[error("the signature covers no digest of the body (neither `digest` nor `content-digest` is among its signed headers), so it proves nothing about the answer")]
    BodyNotCovered,
    /// The body does not match the signed digest.
    #[error("the answer's body does not match its signed {header} header ({algorithm}): the answer was altered in transit or by a proxy")]
    DigestMismatch {
        /// The digest header.
        header: String,
        /// The digest algorithm.
        algorithm: String,
    },
    /// The cryptographic check failed.
    #[error("the {SIGNATURE_HEADER} signature does not verify with the signer's certificate '{0}': the signed headers were altered")]
    BadSignature(String),
    /// The signer's certificate is not trusted (chain, validity, key usage).
    #[error("the common-services signer certificate is not trusted: {0}; configure the common services' CA (or their signing certificate) as trust anchor")]
    Untrusted(String),
    /// No trust anchor is configured.
    #[error("no trust anchor is configured for common-services signatures; give the common services' CA certificate (PEM)")]
    NoAnchors,
}

/// What a verified signature says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSignature {
    /// The JWS `alg`, e.g. `ES256`.
    pub algorithm: String,
    /// The signer certificate's subject.
    pub signer: String,
    /// The `iat` claim (signing time), when present.
    pub signed_at: Option<OffsetDateTime>,
    /// The signed header names.
    pub signed_headers: Vec<String>,
}

/// The certificates common-services signatures must chain to (a CA, or the signing
/// certificate itself, pinned).
#[derive(Clone, Default)]
pub struct TrustAnchors {
    certs: Vec<X509>,
}

impl std::fmt::Debug for TrustAnchors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let subjects: Vec<String> = self
            .certs
            .iter()
            .map(|c| distinguished_name_string(c.subject_name()))
            .collect();
        f.debug_struct("TrustAnchors")
            .field("subjects", &subjects)
            .finish()
    }
}

/// Keys or certificates that cannot serve: unreadable PEM, or material of the wrong kind.
#[derive(Debug, thiserror::Error)]
pub enum KeyMaterialError {
    /// The PEM text cannot be read.
    #[error("cannot read the {what} PEM: {source}")]
    Pem {
        /// Which PEM (trust-anchor, signing key, signing certificate).
        what: &'static str,
        /// OpenSSL's errors.
        source: openssl::error::ErrorStack,
    },
    /// The material was read but cannot be used, and why.
    #[error("{0}")]
    Unusable(&'static str),
}

impl TrustAnchors {
    /// Anchors from certificates.
    pub fn new(certs: Vec<X509>) -> Self {
        TrustAnchors { certs }
    }

    /// Anchors from PEM text holding one or more certificates.
    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyMaterialError> {
        let certs = X509::stack_from_pem(pem).map_err(|source| KeyMaterialError::Pem {
            what: "trust-anchor",
            source,
        })?;
        if certs.is_empty() {
            return Err(KeyMaterialError::Unusable(
                "the trust-anchor PEM holds no certificate",
            ));
        }
        Ok(TrustAnchors { certs })
    }

    /// The certificates.
    pub fn certificates(&self) -> &[X509] {
        &self.certs
    }
}

fn header_values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

fn b64url(s: &str) -> Result<Vec<u8>, SignatureError> {
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|e| SignatureError::Malformed(format!("bad base64url: {e}")))
}

fn digest_for(alg: &str) -> Option<MessageDigest> {
    Some(match alg {
        "ES256" | "RS256" | "PS256" => MessageDigest::sha256(),
        "ES384" | "RS384" | "PS384" => MessageDigest::sha384(),
        "ES512" | "RS512" | "PS512" => MessageDigest::sha512(),
        _ => return None,
    })
}

fn malformed(s: impl Into<String>) -> SignatureError {
    SignatureError::Malformed(s.into())
}

/// The JAdES signing input: the protected header's base64url, `.`, and the signed headers
/// as `name: value` lines.
fn signing_input(
    protected_b64: &str,
    names: &[String],
    headers: &[(String, String)],
) -> Result<Vec<u8>, SignatureError> {
    let mut lines = Vec::with_capacity(names.len());
    for n in names {
        let n = n.to_ascii_lowercase();
        if n.starts_with('(') {
            return Err(SignatureError::Unsupported(format!(
                "the pseudo-header `{n}` (only response headers can be signed)"
            )));
        }
        let values = header_values(headers, &n);
        if values.is_empty() {
            return Err(SignatureError::MissingSignedHeader(n));
        }
        lines.push(format!("{n}: {}", values.join(", ")));
    }
    let mut input = protected_b64.as_bytes().to_vec();
    input.push(b'.');
    input.extend_from_slice(lines.join("\n").as_bytes());
    Ok(input)
}

/// Checks the body against a signed digest header: `digest` (RFC 3230,
/// `SHA-256=<base64>`) or `content-digest` (RFC 9530, `sha-256=:<base64>:`). Every
/// algorithm Varti knows must match, and at least one must be present.
fn check_digest(header: &str, value: &str, body: &[u8]) -> Result<(), SignatureError> {
    let mut checked = false;
    for item in value.split(',') {
        let Some((alg, v)) = item.trim().split_once('=') else {
            continue;
        };
        let md = match alg.trim().to_ascii_lowercase().as_str() {
            "sha-256" => MessageDigest::sha256(),
            "sha-512" => MessageDigest::sha512(),
            _ => continue,
        };
        let v = v.trim().trim_matches(':');
        let expected = STANDARD
            .decode(v)
            .map_err(|e| malformed(format!("the {header} value is not base64: {e}")))?;
        let actual = hash(md, body).map_err(|e| malformed(e.to_string()))?;
        if actual.as_ref() != expected.as_slice() {
            return Err(SignatureError::DigestMismatch {
                header: header.to_owned(),
                algorithm: alg.trim().to_owned(),
            });
        }
        checked = true;
    }
    if checked {
        Ok(())
    } else {
        Err(SignatureError::Unsupported(format!(
            "the {header} header `{value}` has no SHA-256 or SHA-512 digest"
        )))
    }
}

fn verify_with(
    alg: &str,
    key: &PKey<Public>,
    input: &[u8],
    sig: &[u8],
) -> Result<bool, SignatureError> {
    let md = digest_for(alg)
        .ok_or_else(|| SignatureError::Unsupported(format!("the algorithm `{alg}`")))?;
    let crypto = |e: openssl::error::ErrorStack| malformed(e.to_string());
    if alg.starts_with("ES") {
        let curve = match alg {
            "ES256" => Nid::X9_62_PRIME256V1,
            "ES384" => Nid::SECP384R1,
            _ => Nid::SECP521R1,
        };
        let on_curve = key.id() == Id::EC
            && key.ec_key().ok().and_then(|k| k.group().curve_name()) == Some(curve);
        if !on_curve {
            return Err(SignatureError::Unsupported(format!(
                "`{alg}` with a key that is not on its curve"
            )));
        }
        let Ok(der) = ecdsa_raw_to_der(sig) else {
            return Ok(false);
        };
        let mut v = Verifier::new(md, key).map_err(crypto)?;
        v.update(input).map_err(crypto)?;
        return Ok(v.verify(&der).unwrap_or(false));
    }
    if key.id() != Id::RSA {
        return Err(SignatureError::Unsupported(format!(
            "`{alg}` with a key that is not RSA"
        )));
    }
    let mut v = Verifier::new(md, key).map_err(crypto)?;
    if alg.starts_with("PS") {
        v.set_rsa_padding(Padding::PKCS1_PSS).map_err(crypto)?;
        v.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)
            .map_err(crypto)?;
        v.set_rsa_mgf1_md(md).map_err(crypto)?;
    }
    v.update(input).map_err(crypto)?;
    Ok(v.verify(sig).unwrap_or(false))
}

/// Verifies an answer's JAdES header signature and body digest (see the module doc)
/// against `anchors` at time `at`.
pub fn verify_response(
    headers: &[(String, String)],
    body: &[u8],
    anchors: &TrustAnchors,
    at: OffsetDateTime,
) -> Result<VerifiedSignature, SignatureError> {
    if anchors.certs.is_empty() {
        return Err(SignatureError::NoAnchors);
    }
    let jws = match header_values(headers, SIGNATURE_HEADER).as_slice() {
        [] => return Err(SignatureError::Missing),
        [one] => *one,
        _ => {
            return Err(malformed(format!(
                "more than one {SIGNATURE_HEADER} header"
            )))
        }
    };
    let parts: Vec<&str> = jws.split('.').collect();
    let [protected_b64, payload, sig_b64] = parts.as_slice() else {
        return Err(malformed("not three dot-separated parts"));
    };
    if !payload.is_empty() {
        return Err(malformed(
            "the payload part is not empty (not a detached signature)",
        ));
    }
    let protected: Map<String, Value> = serde_json::from_slice(&b64url(protected_b64)?)
        .map_err(|e| malformed(format!("the protected header is not a JSON object: {e}")))?;
    let alg = protected
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("no `alg`"))?
        .to_owned();
    if digest_for(&alg).is_none() {
        return Err(SignatureError::Unsupported(format!(
            "the algorithm `{alg}`"
        )));
    }
    // RFC 7515 §4.1.11: every critical parameter must be understood.
    if let Some(crit) = protected.get("crit") {
        let crit = crit
            .as_array()
            .ok_or_else(|| malformed("`crit` is not an array"))?;
        for c in crit {
            match c.as_str() {
                Some("b64") | Some("sigD") => {}
                other => {
                    return Err(SignatureError::Unsupported(format!(
                        "the critical header parameter {}",
                        other.map_or_else(|| c.to_string(), |s| format!("`{s}`"))
                    )))
                }
            }
        }
    }
    if protected.get("b64") != Some(&Value::Bool(false)) {
        return Err(SignatureError::Unsupported(
            "a signature without `b64: false` (JAdES header signatures sign the headers unencoded)"
                .into(),
        ));
    }
    let sig_d = protected
        .get("sigD")
        .and_then(Value::as_object)
        .ok_or_else(|| malformed("no `sigD` (what is signed)"))?;
    let mechanism = sig_d.get("mId").and_then(Value::as_str).unwrap_or_default();
    if mechanism != HTTP_HEADERS_MECHANISM {
        return Err(SignatureError::Unsupported(format!(
            "the sigD mechanism `{mechanism}` (expected {HTTP_HEADERS_MECHANISM})"
        )));
    }
    let names: Vec<String> = sig_d
        .get("pars")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("`sigD` has no `pars`"))?
        .iter()
        .map(|p| {
            p.as_str()
                .map(str::to_ascii_lowercase)
                .ok_or_else(|| malformed("a `sigD.pars` entry is not a string"))
        })
        .collect::<Result<_, _>>()?;
    if names.is_empty() {
        return Err(malformed("`sigD.pars` is empty"));
    }
    let input = signing_input(protected_b64, &names, headers)?;
    let sig = b64url(sig_b64)?;

    // The signer: x5c[0] (chain in x5c[1..]) checked against the anchors, or without
    // x5c an anchor used directly (a pinned signing certificate).
    let chain: Vec<X509> = match protected.get("x5c") {
        Some(v) => v
            .as_array()
            .ok_or_else(|| malformed("`x5c` is not an array"))?
            .iter()
            .map(|c| {
                let der = c
                    .as_str()
                    .and_then(|s| STANDARD.decode(s).ok())
                    .ok_or_else(|| malformed("an `x5c` entry is not base64"))?;
                X509::from_der(&der).map_err(|e| malformed(format!("an `x5c` certificate: {e}")))
            })
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    let signer = if let Some(leaf) = chain.first() {
        check_thumbprint(&protected, leaf)?;
        let pk = leaf
            .public_key()
            .map_err(|e| malformed(format!("the signer key: {e}")))?;
        let subject = distinguished_name_string(leaf.subject_name());
        if !verify_with(&alg, &pk, &input, &sig)? {
            return Err(SignatureError::BadSignature(subject));
        }
        validate_signer_certificate(leaf, &chain[1..], &anchors.certs, at)
            .map_err(|e| SignatureError::Untrusted(e.detail))?;
        subject
    } else {
        let mut found = None;
        for a in &anchors.certs {
            let Ok(pk) = a.public_key() else { continue };
            if verify_with(&alg, &pk, &input, &sig).unwrap_or(false) {
                found = Some(a);
                break;
            }
        }
        let a = found.ok_or_else(|| {
            SignatureError::BadSignature(
                "(no x5c; none of the configured certificates verifies it)".into(),
            )
        })?;
        validate_signer_certificate(a, &[], &anchors.certs, at)
            .map_err(|e| SignatureError::Untrusted(e.detail))?;
        distinguished_name_string(a.subject_name())
    };

    let digest_header = names
        .iter()
        .find(|n| *n == "digest" || *n == "content-digest")
        .ok_or(SignatureError::BodyNotCovered)?;
    let value = header_values(headers, digest_header).join(", ");
    check_digest(digest_header, &value, body)?;

    Ok(VerifiedSignature {
        algorithm: alg,
        signer,
        signed_at: protected
            .get("iat")
            .and_then(Value::as_i64)
            .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok()),
        signed_headers: names,
    })
}

/// Checks `x5t#o` (JAdES: other-algorithm certificate digest) and `x5t#S256` when given.
fn check_thumbprint(protected: &Map<String, Value>, leaf: &X509) -> Result<(), SignatureError> {
    let der = leaf.to_der().map_err(|e| malformed(e.to_string()))?;
    let mut wanted: Vec<(MessageDigest, String)> = Vec::new();
    if let Some(o) = protected.get("x5t#o").and_then(Value::as_object) {
        let md = match o.get("digAlg").and_then(Value::as_str) {
            Some("S256") => MessageDigest::sha256(),
            Some("S384") => MessageDigest::sha384(),
            Some("S512") => MessageDigest::sha512(),
            other => {
                return Err(SignatureError::Unsupported(format!(
                    "the x5t#o digest algorithm {other:?}"
                )))
            }
        };
        let v = o
            .get("digVal")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("`x5t#o` has no `digVal`"))?;
        wanted.push((md, v.to_owned()));
    }
    if let Some(v) = protected.get("x5t#S256").and_then(Value::as_str) {
        wanted.push((MessageDigest::sha256(), v.to_owned()));
    }
    for (md, v) in wanted {
        let actual = hash(md, &der).map_err(|e| malformed(e.to_string()))?;
        if actual.as_ref() != b64url(&v)?.as_slice() {
            return Err(malformed(
                "the certificate thumbprint in the header does not match x5c[0]",
            ));
        }
    }
    Ok(())
}

/// Signs answers the way the common services do: a `digest` header and a JAdES
/// `oots-response-sig` header over it, with the certificate chain in `x5c`. For the local
/// stand-in and tests; production answers are signed by the EC.
pub struct ResponseSigner {
    key: PKey<Private>,
    chain: Vec<X509>,
    alg: &'static str,
}

impl ResponseSigner {
    /// A signer with a private key and its certificate chain (signer first). The
    /// algorithm follows the key: ES256/ES384/ES512 for EC P-256/P-384/P-521, RS256 for
    /// RSA.
    pub fn new(key: PKey<Private>, chain: Vec<X509>) -> Result<Self, KeyMaterialError> {
        let unusable = KeyMaterialError::Unusable;
        if chain.is_empty() {
            return Err(unusable("the signer needs its certificate"));
        }
        let alg = match key.id() {
            Id::RSA => "RS256",
            Id::EC => match key.ec_key().ok().and_then(|k| k.group().curve_name()) {
                Some(Nid::X9_62_PRIME256V1) => "ES256",
                Some(Nid::SECP384R1) => "ES384",
                Some(Nid::SECP521R1) => "ES512",
                _ => {
                    return Err(unusable(
                        "the EC signing key must be on P-256, P-384 or P-521",
                    ))
                }
            },
            _ => return Err(unusable("the signing key must be RSA or EC")),
        };
        Ok(ResponseSigner { key, chain, alg })
    }

    /// A signer from PEM files' contents: the private key, and the certificate chain.
    pub fn from_pem(key_pem: &[u8], chain_pem: &[u8]) -> Result<Self, KeyMaterialError> {
        let pem = |what| move |source| KeyMaterialError::Pem { what, source };
        let key = PKey::private_key_from_pem(key_pem).map_err(pem("signing key"))?;
        let chain = X509::stack_from_pem(chain_pem).map_err(pem("signing certificate"))?;
        Self::new(key, chain)
    }

    /// The headers to send with `body`, signed at `iat`: `digest` and `oots-response-sig`.
    pub fn sign(&self, body: &[u8], iat: OffsetDateTime) -> Result<Vec<(String, String)>, String> {
        let crypto = |e: openssl::error::ErrorStack| format!("signing the answer: {e}");
        let digest = format!(
            "SHA-256={}",
            STANDARD.encode(hash(MessageDigest::sha256(), body).map_err(crypto)?)
        );
        let x5c: Vec<String> = self
            .chain
            .iter()
            .map(|c| c.to_der().map(|d| STANDARD.encode(d)))
            .collect::<Result<_, _>>()
            .map_err(crypto)?;
        let leaf = self.chain[0].to_der().map_err(crypto)?;
        let header = json!({
            "alg": self.alg,
            "x5t#o": {
                "digAlg": "S512",
                "digVal": URL_SAFE_NO_PAD.encode(hash(MessageDigest::sha512(), &leaf).map_err(crypto)?),
            },
            "x5c": x5c,
            "typ": "jose",
            "b64": false,
            "iat": iat.unix_timestamp(),
            "sigD": {"mId": HTTP_HEADERS_MECHANISM, "pars": ["digest"]},
            "crit": ["b64", "sigD"],
        });
        let protected = URL_SAFE_NO_PAD.encode(header.to_string());
        let headers = vec![("digest".to_owned(), digest)];
        let input = signing_input(&protected, &["digest".to_owned()], &headers)
            .map_err(|e| e.to_string())?;
        let md = digest_for(self.alg).expect("the algorithm is one of ours");
        let mut s = Signer::new(md, &self.key).map_err(crypto)?;
        s.update(&input).map_err(crypto)?;
        let mut sig = s.sign_to_vec().map_err(crypto)?;
        if self.alg.starts_with("ES") {
            let scalar = match self.alg {
                "ES256" => 32,
                "ES384" => 48,
                _ => 66,
            };
            sig = ecdsa_der_to_raw(&sig, scalar).map_err(|e| e.detail)?;
        }
        let mut out = headers;
        out.push((
            SIGNATURE_HEADER.to_owned(),
            format!("{protected}..{}", URL_SAFE_NO_PAD.encode(sig)),
        ));
        Ok(out)
    }
}
