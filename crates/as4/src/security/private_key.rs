//! Our private keys, wherever they live: a PEM file (held by OpenSSL in memory) or a
//! PKCS#11 token ([`super::pkcs11`], where the key material never leaves the token).
//!
//! Every use of a private key in Varti goes through [`KeyOperations`]: the signature of a
//! message, receipt or signal ([`super::profile`]), the recovery of a content key
//! (RSA-OAEP / RSA PKCS#1 v1.5 decryption, or the (EC)DH agreement that feeds HKDF and the
//! AES key wrap in software, [`super::encrypt`]), and the TLS handshake signature (the
//! access point's rustls adapter). A [`PrivateKey`] is the owned, shareable handle.
//!
//! This module does not check that a key is strong enough ([`super::keys`]) nor that it
//! belongs to a certificate (the callers compare [`KeyOperations::public_key`]).

use std::fmt;
use std::sync::Arc;

use openssl::derive::Deriver;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, PKeyRef, Private, Public};
use openssl::pkey_ctx::PkeyCtx;
use openssl::rsa::Padding;
use openssl::sign::{RsaPssSaltlen, Signer};

/// A signature operation a key can be asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignMechanism {
    /// RSASSA-PKCS1-v1_5 with SHA-256 over the data.
    RsaPkcs1Sha256,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt, over the data.
    RsaPssSha256,
    /// ECDSA with SHA-256 over the data; the result is a DER `ECDSA-Sig-Value`.
    EcdsaSha256,
    /// Pure Ed25519 over the data (RFC 8032).
    Ed25519,
}

/// A key-recovery decryption with an RSA key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RsaDecryption {
    /// RSA-OAEP with the given digest and MGF1 digest (no label).
    Oaep {
        /// The OAEP digest.
        sha256: bool,
        /// The MGF1 digest: SHA-256 when `true`, SHA-1 otherwise.
        mgf1_sha256: bool,
    },
    /// RSAES-PKCS1-v1_5 (legacy peers only).
    Pkcs1v15,
}

/// What kind of key this is, enough to check it against a profile without the key
/// material.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyKind {
    /// The OpenSSL key type (`RSA`, `EC`, `ED25519`, `X25519`).
    pub id: Id,
    /// The key size in bits (RSA modulus length, curve size).
    pub bits: u32,
    /// The named curve of an EC key.
    pub curve: Option<Nid>,
}

/// Why a private-key operation failed.
#[derive(Debug, Clone)]
pub struct KeyError {
    detail: String,
    transient: bool,
}

impl KeyError {
    /// A permanent failure (wrong key type, refused mechanism, bad input).
    pub fn permanent(detail: impl Into<String>) -> Self {
        KeyError {
            detail: detail.into(),
            transient: false,
        }
    }

    /// A failure that may pass: the token is absent, its module restarted, its session
    /// was closed. The next attempt re-opens the session.
    pub fn transient(detail: impl Into<String>) -> Self {
        KeyError {
            detail: detail.into(),
            transient: true,
        }
    }

    /// Whether retrying later may succeed (the token went away).
    pub fn is_transient(&self) -> bool {
        self.transient
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for KeyError {}

fn ossl(what: &str) -> impl Fn(openssl::error::ErrorStack) -> KeyError + '_ {
    move |e| KeyError::permanent(format!("{what}: {e}"))
}

/// The operations Varti performs with a private key. The key material itself is never
/// asked for: a token key can implement this without ever revealing it.
pub trait KeyOperations: Send + Sync {
    /// The key's type and size.
    fn kind(&self) -> KeyKind;
    /// The public half (for matching the key against its certificate).
    fn public_key(&self) -> Result<PKey<Public>, KeyError>;
    /// Whether `public` is this key's public half (the key belongs to that certificate).
    fn matches_public(&self, public: &PKeyRef<Public>) -> bool {
        self.public_key()
            .map(|k| k.public_eq(public))
            .unwrap_or(false)
    }
    /// Signs `data` with `mechanism`.
    fn sign(&self, mechanism: SignMechanism, data: &[u8]) -> Result<Vec<u8>, KeyError>;
    /// Decrypts an RSA-encrypted content key.
    fn rsa_decrypt(&self, scheme: RsaDecryption, data: &[u8]) -> Result<Vec<u8>, KeyError>;
    /// The raw (EC)DH shared secret with `peer` (X25519 or a NIST curve).
    fn derive(&self, peer: &PKeyRef<Public>) -> Result<Vec<u8>, KeyError>;
    /// Where the key lives, for logs and `varti certs list` (`file`, or the PKCS#11 URI
    /// without its PIN).
    fn location(&self) -> String;
}

/// The kind of an OpenSSL key.
pub fn kind_of<T: openssl::pkey::HasPublic>(key: &PKeyRef<T>) -> KeyKind {
    KeyKind {
        id: key.id(),
        bits: key.bits(),
        curve: if key.id() == Id::EC {
            key.ec_key().ok().and_then(|k| k.group().curve_name())
        } else {
            None
        },
    }
}

impl KeyOperations for PKeyRef<Private> {
    fn kind(&self) -> KeyKind {
        kind_of(self)
    }
    fn public_key(&self) -> Result<PKey<Public>, KeyError> {
        let der = self
            .public_key_to_der()
            .map_err(ossl("encoding the public key"))?;
        PKey::public_key_from_der(&der).map_err(ossl("decoding the public key"))
    }
    fn matches_public(&self, public: &PKeyRef<Public>) -> bool {
        // Compared in place: the DER round trip of `public_key` costs more than the
        // operation it guards on every received message.
        self.public_eq(public)
    }
    fn sign(&self, mechanism: SignMechanism, data: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut s = match mechanism {
            SignMechanism::Ed25519 => Signer::new_without_digest(self),
            _ => Signer::new(MessageDigest::sha256(), self),
        }
        .map_err(ossl("signer"))?;
        match mechanism {
            SignMechanism::RsaPkcs1Sha256 => {
                s.set_rsa_padding(Padding::PKCS1).map_err(ossl("padding"))?
            }
            SignMechanism::RsaPssSha256 => {
                s.set_rsa_padding(Padding::PKCS1_PSS)
                    .map_err(ossl("padding"))?;
                s.set_rsa_mgf1_md(MessageDigest::sha256())
                    .map_err(ossl("MGF1"))?;
                s.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)
                    .map_err(ossl("salt"))?;
            }
            SignMechanism::EcdsaSha256 | SignMechanism::Ed25519 => {}
        }
        s.sign_oneshot_to_vec(data).map_err(ossl("signing"))
    }
    fn rsa_decrypt(&self, scheme: RsaDecryption, data: &[u8]) -> Result<Vec<u8>, KeyError> {
        let err = ossl("RSA decryption");
        let mut ctx = PkeyCtx::new(self).map_err(&err)?;
        ctx.decrypt_init().map_err(&err)?;
        match scheme {
            RsaDecryption::Oaep {
                sha256,
                mgf1_sha256,
            } => {
                let md = |b| {
                    if b {
                        openssl::md::Md::sha256()
                    } else {
                        openssl::md::Md::sha1()
                    }
                };
                ctx.set_rsa_padding(Padding::PKCS1_OAEP).map_err(&err)?;
                ctx.set_rsa_oaep_md(md(sha256)).map_err(&err)?;
                ctx.set_rsa_mgf1_md(md(mgf1_sha256)).map_err(&err)?;
            }
            RsaDecryption::Pkcs1v15 => ctx.set_rsa_padding(Padding::PKCS1).map_err(&err)?,
        }
        let mut out = Vec::new();
        ctx.decrypt_to_vec(data, &mut out).map_err(&err)?;
        Ok(out)
    }
    fn derive(&self, peer: &PKeyRef<Public>) -> Result<Vec<u8>, KeyError> {
        let err = ossl("key agreement");
        let mut d = Deriver::new(self).map_err(&err)?;
        d.set_peer(peer).map_err(&err)?;
        d.derive_to_vec().map_err(&err)
    }
    fn location(&self) -> String {
        "file".to_string()
    }
}

impl KeyOperations for PKey<Private> {
    fn kind(&self) -> KeyKind {
        (**self).kind()
    }
    fn public_key(&self) -> Result<PKey<Public>, KeyError> {
        KeyOperations::public_key(&**self)
    }
    fn matches_public(&self, public: &PKeyRef<Public>) -> bool {
        KeyOperations::matches_public(&**self, public)
    }
    fn sign(&self, mechanism: SignMechanism, data: &[u8]) -> Result<Vec<u8>, KeyError> {
        KeyOperations::sign(&**self, mechanism, data)
    }
    fn rsa_decrypt(&self, scheme: RsaDecryption, data: &[u8]) -> Result<Vec<u8>, KeyError> {
        (**self).rsa_decrypt(scheme, data)
    }
    fn derive(&self, peer: &PKeyRef<Public>) -> Result<Vec<u8>, KeyError> {
        KeyOperations::derive(&**self, peer)
    }
    fn location(&self) -> String {
        (**self).location()
    }
}

/// An owned, cheaply cloned private key: a file key or a token key.
#[derive(Clone)]
pub struct PrivateKey(Arc<dyn KeyOperations>);

impl PrivateKey {
    /// Wraps any key implementation.
    pub fn new(ops: Arc<dyn KeyOperations>) -> Self {
        PrivateKey(ops)
    }

    /// Whether this key's public half equals `public` (the key belongs to that
    /// certificate).
    pub fn matches(&self, public: &PKeyRef<Public>) -> bool {
        self.0.matches_public(public)
    }
}

impl From<PKey<Private>> for PrivateKey {
    fn from(k: PKey<Private>) -> Self {
        PrivateKey(Arc::new(k))
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PrivateKey({:?} in {})",
            self.0.kind().id,
            self.0.location()
        )
    }
}

impl KeyOperations for PrivateKey {
    fn kind(&self) -> KeyKind {
        self.0.kind()
    }
    fn public_key(&self) -> Result<PKey<Public>, KeyError> {
        self.0.public_key()
    }
    fn matches_public(&self, public: &PKeyRef<Public>) -> bool {
        self.0.matches_public(public)
    }
    fn sign(&self, mechanism: SignMechanism, data: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.0.sign(mechanism, data)
    }
    fn rsa_decrypt(&self, scheme: RsaDecryption, data: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.0.rsa_decrypt(scheme, data)
    }
    fn derive(&self, peer: &PKeyRef<Public>) -> Result<Vec<u8>, KeyError> {
        self.0.derive(peer)
    }
    fn location(&self) -> String {
        self.0.location()
    }
}

/// Opens the private key a setting names: an RFC 7512 `pkcs11:` URI (the key stays in
/// the token; `module` is the `[pkcs11] module` setting, else `VARTI_PKCS11_MODULE`) or
/// the path of a PEM file. `certificate` is the key's certificate, whose public key is
/// used when the token holds no public half of an EC or EdDSA key.
pub fn load(
    setting: &std::path::Path,
    module: Option<&std::path::Path>,
    certificate: Option<&openssl::x509::X509Ref>,
) -> Result<PrivateKey, KeyError> {
    let text = setting.to_string_lossy();
    if super::pkcs11::is_pkcs11_uri(&text) {
        let uri = super::pkcs11::Pkcs11Uri::parse(&text)
            .map_err(|e| KeyError::permanent(e.to_string()))?;
        let module = super::pkcs11::module_for(&uri, module)
            .map_err(|e| KeyError::permanent(e.to_string()))?;
        let cert_key = certificate.and_then(|c| c.public_key().ok());
        let key = super::pkcs11::TokenKey::open(&uri, &module, cert_key.as_deref())
            .map_err(|e| KeyError::permanent(e.to_string()))?;
        return Ok(PrivateKey::new(Arc::new(key)));
    }
    let pem = std::fs::read(setting).map_err(|e| KeyError::permanent(e.to_string()))?;
    PKey::private_key_from_pem(&pem)
        .map(PrivateKey::from)
        .map_err(|e| KeyError::permanent(format!("not a PEM private key ({e})")))
}

/// Whether `key` is the private half of `public` (a certificate's key), proven by using
/// it: a signature over a random challenge that `public` verifies, or, for a key that
/// only agrees keys (X25519, an ECDH-only EC key), the same shared secret with a fresh
/// ephemeral key from both sides. This works for token keys without reading them.
pub fn proves_possession(
    key: &dyn KeyOperations,
    public: &PKeyRef<Public>,
) -> Result<bool, KeyError> {
    let mut challenge = [0u8; 32];
    openssl::rand::rand_bytes(&mut challenge).map_err(ossl("random challenge"))?;
    let kind = key.kind();
    if kind.id != public.id() {
        return Ok(false);
    }
    let sign_with = match kind.id {
        Id::RSA => Some(SignMechanism::RsaPkcs1Sha256),
        Id::ED25519 => Some(SignMechanism::Ed25519),
        Id::EC => Some(SignMechanism::EcdsaSha256),
        _ => None,
    };
    if let Some(mechanism) = sign_with {
        match key.sign(mechanism, &challenge) {
            Ok(sig) => {
                let mut v = match mechanism {
                    SignMechanism::Ed25519 => openssl::sign::Verifier::new_without_digest(public),
                    _ => openssl::sign::Verifier::new(MessageDigest::sha256(), public),
                }
                .map_err(ossl("verifier"))?;
                if mechanism == SignMechanism::RsaPkcs1Sha256 {
                    v.set_rsa_padding(Padding::PKCS1).map_err(ossl("padding"))?;
                }
                return Ok(v.verify_oneshot(&sig, &challenge).unwrap_or(false));
            }
            // An EC key allowed to derive but not to sign: prove it by agreement below.
            Err(e) if kind.id == Id::EC && !e.is_transient() => {}
            Err(e) => return Err(e),
        }
    }
    let ephemeral = match kind.id {
        Id::X25519 => PKey::generate_x25519().map_err(ossl("ephemeral key"))?,
        Id::EC => {
            let ec = public.ec_key().map_err(ossl("EC key"))?;
            let eph = openssl::ec::EcKey::generate(ec.group()).map_err(ossl("ephemeral key"))?;
            PKey::from_ec_key(eph).map_err(ossl("ephemeral key"))?
        }
        _ => return Ok(false),
    };
    let eph_public = KeyOperations::public_key(&ephemeral)?;
    let ours = key.derive(&eph_public)?;
    let theirs = KeyOperations::derive(&ephemeral, public)?;
    Ok(ours == theirs)
}
