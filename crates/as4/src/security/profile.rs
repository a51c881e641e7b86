//! Algorithm suites as values.
//!
//! A [`Profile`] bundles what one AS4 security profile allows for signatures: the
//! signature algorithm (with its openssl implementation), the digest and the
//! canonicalization. Sender and receiver are handed a profile (chosen by the PMode);
//! nothing in the signing or verification code branches on algorithm names, and any
//! algorithm a profile does not list is refused with `EBMS:0103`.
//!
//! Sources of the URIs:
//! * AS4 1.15 (eDelivery AS4 profile 1.15 §3.2.6, WS-Security 1.1.1 + XML-DSig):
//!   `xmldsig-more#rsa-sha256` (RFC 6931 §2.3.2), digest `xmlenc#sha256`, exc-c14n.
//! * AS4 2.0 common usage profile: Ed25519, `http://www.w3.org/2021/04/xmldsig-more#eddsa-ed25519`
//!   (RFC 9231 §2.3.13, the URI WSS4J and phase4's 2.0 profile emit).
//! * AS4 2.0 alternative EC enhancement: `xmldsig-more#ecdsa-sha256` (RFC 6931 §2.3.6)
//!   on P-256; XML-DSig 1.1 §6.4.3 encodes the value as raw `r || s` (each 32 bytes),
//!   whereas OpenSSL produces and expects DER `ECDSA-Sig-Value`; see `EcdsaP256Sha256`.

use openssl::bn::BigNum;
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKeyRef, Public};
use openssl::rsa::Padding;
use openssl::sign::Verifier;

use super::private_key::{KeyError, KeyKind, KeyOperations, SignMechanism};

use super::c14n::EXC_C14N;
use crate::error::{EbmsError, ErrorCode};

/// SHA-256 digest URI (XML Encryption 1.0).
pub const DIGEST_SHA256: &str = "http://www.w3.org/2001/04/xmlenc#sha256";
/// RSA PKCS#1 v1.5 with SHA-256.
pub(crate) const SIG_RSA_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256";
/// Ed25519 (RFC 9231).
pub const SIG_EDDSA_ED25519: &str = "http://www.w3.org/2021/04/xmldsig-more#eddsa-ed25519";
/// ECDSA with SHA-256.
pub(crate) const SIG_ECDSA_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256";

/// Smallest RSA modulus we accept or sign with (bits).
const MIN_RSA_BITS: u32 = 2048;

/// One signature algorithm: its URI and the openssl operations behind it.
pub trait SignatureAlgorithm: Send + Sync {
    /// The `ds:SignatureMethod/@Algorithm` URI.
    fn uri(&self) -> &'static str;
    /// Signs `data` (the canonical SignedInfo) and returns the XML-DSig signature value.
    fn sign(&self, key: &dyn KeyOperations, data: &[u8]) -> Result<Vec<u8>, EbmsError>;
    /// Verifies an XML-DSig signature value over `data`. `Ok(false)` means "does not verify".
    fn verify(&self, key: &PKeyRef<Public>, data: &[u8], sig: &[u8]) -> Result<bool, EbmsError>;
}

fn crypto_err(what: &str, e: openssl::error::ErrorStack) -> EbmsError {
    EbmsError::new(ErrorCode::FailedAuthentication, format!("{what}: {e}"))
}

fn key_err(what: &str, e: KeyError) -> EbmsError {
    if e.is_transient() {
        EbmsError::retry_later(format!("{what}: {e}"))
    } else {
        EbmsError::new(ErrorCode::Other, format!("{what}: {e}"))
    }
}

fn wrong_key(alg: &str, expected: &str) -> EbmsError {
    EbmsError::new(
        ErrorCode::FailedAuthentication,
        format!("the signing certificate's key is not {expected}, as {alg} requires"),
    )
}

/// RSASSA-PKCS1-v1_5 with SHA-256 (AS4 1.15).
pub(crate) struct RsaSha256;

impl RsaSha256 {
    fn check_key<T: openssl::pkey::HasPublic>(key: &PKeyRef<T>) -> Result<(), EbmsError> {
        Self::check_kind(super::private_key::kind_of(key))
    }
    fn check_kind(key: KeyKind) -> Result<(), EbmsError> {
        if key.id != Id::RSA {
            return Err(wrong_key(SIG_RSA_SHA256, "an RSA key"));
        }
        if key.bits < MIN_RSA_BITS {
            return Err(EbmsError::new(
                ErrorCode::PolicyNoncompliance,
                format!(
                    "RSA key of {} bits is below the {MIN_RSA_BITS}-bit minimum",
                    key.bits
                ),
            ));
        }
        Ok(())
    }
}

impl SignatureAlgorithm for RsaSha256 {
    fn uri(&self) -> &'static str {
        SIG_RSA_SHA256
    }
    fn sign(&self, key: &dyn KeyOperations, data: &[u8]) -> Result<Vec<u8>, EbmsError> {
        Self::check_kind(key.kind())?;
        key.sign(SignMechanism::RsaPkcs1Sha256, data)
            .map_err(|e| key_err("RSA signing", e))
    }
    fn verify(&self, key: &PKeyRef<Public>, data: &[u8], sig: &[u8]) -> Result<bool, EbmsError> {
        Self::check_key(key)?;
        let mut v = Verifier::new(MessageDigest::sha256(), key)
            .map_err(|e| crypto_err("RSA verifier", e))?;
        v.set_rsa_padding(Padding::PKCS1)
            .map_err(|e| crypto_err("RSA padding", e))?;
        // A malformed signature is "does not verify", not an internal error.
        Ok(v.verify_oneshot(sig, data).unwrap_or(false))
    }
}

/// Ed25519 (AS4 2.0 common usage profile). The signature is the 64-byte RFC 8032 value.
pub struct Ed25519;

impl SignatureAlgorithm for Ed25519 {
    fn uri(&self) -> &'static str {
        SIG_EDDSA_ED25519
    }
    fn sign(&self, key: &dyn KeyOperations, data: &[u8]) -> Result<Vec<u8>, EbmsError> {
        if key.kind().id != Id::ED25519 {
            return Err(wrong_key(SIG_EDDSA_ED25519, "an Ed25519 key"));
        }
        key.sign(SignMechanism::Ed25519, data)
            .map_err(|e| key_err("Ed25519 signing", e))
    }
    fn verify(&self, key: &PKeyRef<Public>, data: &[u8], sig: &[u8]) -> Result<bool, EbmsError> {
        if key.id() != Id::ED25519 {
            return Err(wrong_key(SIG_EDDSA_ED25519, "an Ed25519 key"));
        }
        let mut v =
            Verifier::new_without_digest(key).map_err(|e| crypto_err("Ed25519 verifier", e))?;
        Ok(v.verify_oneshot(sig, data).unwrap_or(false))
    }
}

/// ECDSA on P-256 with SHA-256 (AS4 2.0 alternative EC enhancement).
pub(crate) struct EcdsaP256Sha256;

/// Byte length of one P-256 scalar.
const P256_LEN: usize = 32;

impl EcdsaP256Sha256 {
    fn check_key<T: openssl::pkey::HasPublic>(key: &PKeyRef<T>) -> Result<(), EbmsError> {
        Self::check_kind(super::private_key::kind_of(key))
    }
    fn check_kind(key: KeyKind) -> Result<(), EbmsError> {
        let ok = key.id == Id::EC && key.curve == Some(Nid::X9_62_PRIME256V1);
        if ok {
            Ok(())
        } else {
            Err(wrong_key(SIG_ECDSA_SHA256, "an EC key on P-256"))
        }
    }
}

/// Converts an OpenSSL DER `ECDSA-Sig-Value` into XML-DSig's raw `r || s`.
pub fn ecdsa_der_to_raw(der: &[u8], scalar_len: usize) -> Result<Vec<u8>, EbmsError> {
    let sig = EcdsaSig::from_der(der).map_err(|e| crypto_err("ECDSA DER signature", e))?;
    let mut out = sig
        .r()
        .to_vec_padded(scalar_len as i32)
        .map_err(|e| crypto_err("ECDSA r", e))?;
    out.extend(
        sig.s()
            .to_vec_padded(scalar_len as i32)
            .map_err(|e| crypto_err("ECDSA s", e))?,
    );
    Ok(out)
}

/// Converts XML-DSig's raw `r || s` into OpenSSL's DER `ECDSA-Sig-Value`.
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Result<Vec<u8>, EbmsError> {
    if raw.is_empty() || raw.len() % 2 != 0 {
        return Err(EbmsError::new(
            ErrorCode::FailedAuthentication,
            format!("ECDSA signature value of {} bytes is not r||s", raw.len()),
        ));
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let r = BigNum::from_slice(r).map_err(|e| crypto_err("ECDSA r", e))?;
    let s = BigNum::from_slice(s).map_err(|e| crypto_err("ECDSA s", e))?;
    let sig = EcdsaSig::from_private_components(r, s).map_err(|e| crypto_err("ECDSA value", e))?;
    sig.to_der().map_err(|e| crypto_err("ECDSA DER", e))
}

impl SignatureAlgorithm for EcdsaP256Sha256 {
    fn uri(&self) -> &'static str {
        SIG_ECDSA_SHA256
    }
    fn sign(&self, key: &dyn KeyOperations, data: &[u8]) -> Result<Vec<u8>, EbmsError> {
        Self::check_kind(key.kind())?;
        let der = key
            .sign(SignMechanism::EcdsaSha256, data)
            .map_err(|e| key_err("ECDSA signing", e))?;
        ecdsa_der_to_raw(&der, P256_LEN)
    }
    fn verify(&self, key: &PKeyRef<Public>, data: &[u8], sig: &[u8]) -> Result<bool, EbmsError> {
        Self::check_key(key)?;
        if sig.len() != 2 * P256_LEN {
            return Ok(false);
        }
        let der = ecdsa_raw_to_der(sig)?;
        let mut v = Verifier::new(MessageDigest::sha256(), key)
            .map_err(|e| crypto_err("ECDSA verifier", e))?;
        Ok(v.verify_oneshot(&der, data).unwrap_or(false))
    }
}

/// An AS4 signature profile: what is used when sending and allowed when receiving.
pub struct Profile {
    /// A short name for logs and errors, e.g. `AS4 1.15`.
    pub name: &'static str,
    /// The signature algorithm (used to sign; the only one accepted on receipt).
    pub signature: &'static dyn SignatureAlgorithm,
    /// The digest method URI (sha256 in every AS4 profile).
    pub digest: &'static str,
    /// The canonicalization URI for SignedInfo and XML references (exc-c14n).
    pub c14n: &'static str,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("name", &self.name)
            .field("signature", &self.signature.uri())
            .finish()
    }
}

/// eDelivery AS4 1.15: RSA-SHA256, SHA-256, exclusive c14n.
pub static AS4_1_15: Profile = Profile {
    name: "eDelivery AS4 1.15",
    signature: &RsaSha256,
    digest: DIGEST_SHA256,
    c14n: EXC_C14N,
};

/// eDelivery AS4 2.0 common usage profile: Ed25519, SHA-256, exclusive c14n.
pub static AS4_2_0_EDDSA: Profile = Profile {
    name: "eDelivery AS4 2.0 (EdDSA)",
    signature: &Ed25519,
    digest: DIGEST_SHA256,
    c14n: EXC_C14N,
};

/// eDelivery AS4 2.0 alternative EC enhancement: ECDSA P-256, SHA-256, exclusive c14n.
pub static AS4_2_0_ECDSA: Profile = Profile {
    name: "eDelivery AS4 2.0 (ECDSA P-256)",
    signature: &EcdsaP256Sha256,
    digest: DIGEST_SHA256,
    c14n: EXC_C14N,
};

fn not_allowed(profile: &Profile, what: &str, uri: &str, allowed: &str) -> EbmsError {
    EbmsError::new(
        ErrorCode::PolicyNoncompliance,
        format!(
            "{what} algorithm '{uri}' is not allowed by the {} profile (allowed: {allowed}); \
             the sender must use the algorithms of the agreed profile",
            profile.name
        ),
    )
}

impl Profile {
    /// Checks a `ds:SignatureMethod` URI against the allow-list (`EBMS:0103` otherwise).
    pub(crate) fn check_signature_method(
        &self,
        uri: &str,
    ) -> Result<&'static dyn SignatureAlgorithm, EbmsError> {
        if uri == self.signature.uri() {
            Ok(self.signature)
        } else {
            Err(not_allowed(self, "signature", uri, self.signature.uri()))
        }
    }

    /// Checks a `ds:DigestMethod` URI (`EBMS:0103` otherwise).
    pub(crate) fn check_digest_method(&self, uri: &str) -> Result<(), EbmsError> {
        if uri == self.digest {
            Ok(())
        } else {
            Err(not_allowed(self, "digest", uri, self.digest))
        }
    }

    /// Checks a canonicalization / XML transform URI (`EBMS:0103` otherwise).
    pub(crate) fn check_c14n_method(&self, uri: &str) -> Result<(), EbmsError> {
        if uri == self.c14n {
            Ok(())
        } else {
            Err(not_allowed(self, "canonicalization", uri, self.c14n))
        }
    }
}
