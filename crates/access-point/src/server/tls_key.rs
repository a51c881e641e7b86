//! The TLS private key, wherever it lives: a PEM file (rustls' own signer) or a key in a
//! PKCS#11 token named by a `pkcs11:` URI, whose handshake signatures the token makes
//! through [`TokenTlsKey`], a rustls `SigningKey` adapter. Used for the server's key and
//! for our client certificate alike.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use openssl::pkey::Id;
use openssl::x509::X509;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, SubjectPublicKeyInfoDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};
use varti_as4::security::pkcs11::is_pkcs11_uri;
use varti_as4::security::private_key::{self, KeyOperations, PrivateKey, SignMechanism};

use super::tls::{load_key, provider, TlsError};

/// A TLS key in a token: rustls asks it for a scheme, the token signs.
pub(crate) struct TokenTlsKey {
    key: PrivateKey,
    schemes: &'static [SignatureScheme],
    algorithm: SignatureAlgorithm,
    spki: Vec<u8>,
}

impl fmt::Debug for TokenTlsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenTlsKey({})", self.key.location())
    }
}

impl TokenTlsKey {
    fn new(key: PrivateKey) -> Result<TokenTlsKey, String> {
        let kind = key.kind();
        let (schemes, algorithm): (&'static [SignatureScheme], _) = match kind.id {
            // TLS 1.3 signs with PSS; TLS 1.2 peers may still ask for PKCS#1 v1.5.
            Id::RSA => (
                &[
                    SignatureScheme::RSA_PSS_SHA256,
                    SignatureScheme::RSA_PKCS1_SHA256,
                ],
                SignatureAlgorithm::RSA,
            ),
            Id::EC if kind.curve == Some(openssl::nid::Nid::X9_62_PRIME256V1) => (
                &[SignatureScheme::ECDSA_NISTP256_SHA256],
                SignatureAlgorithm::ECDSA,
            ),
            Id::ED25519 => (&[SignatureScheme::ED25519], SignatureAlgorithm::ED25519),
            other => {
                return Err(format!(
                    "a {other:?} key cannot sign TLS handshakes here (RSA, EC P-256 or Ed25519)"
                ))
            }
        };
        let spki = key
            .public_key()
            .and_then(|p| {
                p.public_key_to_der()
                    .map_err(|e| private_key::KeyError::permanent(e.to_string()))
            })
            .map_err(|e| e.to_string())?;
        Ok(TokenTlsKey {
            key,
            schemes,
            algorithm,
            spki,
        })
    }
}

impl SigningKey for TokenTlsKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let scheme = *self.schemes.iter().find(|s| offered.contains(s))?;
        Some(Box::new(TokenSigner {
            key: self.key.clone(),
            scheme,
        }))
    }
    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.spki.as_slice()))
    }
    fn algorithm(&self) -> SignatureAlgorithm {
        self.algorithm
    }
}

struct TokenSigner {
    key: PrivateKey,
    scheme: SignatureScheme,
}

impl fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenSigner({:?})", self.scheme)
    }
}

impl Signer for TokenSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let mechanism = match self.scheme {
            SignatureScheme::RSA_PSS_SHA256 => SignMechanism::RsaPssSha256,
            SignatureScheme::RSA_PKCS1_SHA256 => SignMechanism::RsaPkcs1Sha256,
            SignatureScheme::ECDSA_NISTP256_SHA256 => SignMechanism::EcdsaSha256,
            _ => SignMechanism::Ed25519,
        };
        self.key.sign(mechanism, message).map_err(|e| {
            tracing::warn!(key = %self.key.location(), error = %e, "the TLS key could not sign the handshake");
            rustls::Error::General(format!("TLS key: {e}"))
        })
    }
    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}

/// Reads a TLS private key: a PEM file, or a `pkcs11:` URI (module from `[pkcs11]`, else
/// `VARTI_PKCS11_MODULE`) with `chain`'s leaf as its certificate; the key must fit it.
pub(crate) fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: &Path,
    what: &'static str,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let text = key.to_string_lossy();
    let signing: Arc<dyn SigningKey> = if is_pkcs11_uri(&text) {
        let problem = |problem: String| {
            TlsError::File {
            what,
            path: varti_as4::security::pkcs11::Pkcs11Uri::parse(&text)
                .map(|u| u.redacted().into())
                .unwrap_or_else(|_| "pkcs11:(unparsable URI)".into()),
            problem,
            fix: "name a private key of the token (`varti keys list`) and make the module available ([pkcs11] module or VARTI_PKCS11_MODULE)",
        }
        };
        let leaf = chain
            .first()
            .and_then(|c| X509::from_der(c).ok())
            .ok_or_else(|| problem("its certificate is unreadable".into()))?;
        let key = private_key::load(key, None, Some(&leaf)).map_err(|e| problem(e.to_string()))?;
        Arc::new(TokenTlsKey::new(key).map_err(problem)?)
    } else {
        let der = load_key(key, what)?;
        provider()
            .key_provider
            .load_private_key(der)
            .map_err(|source| TlsError::Rustls {
                context: "the TLS key is not usable",
                source,
            })?
    };
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|source| TlsError::Rustls {
        context: "the TLS key does not fit the certificate",
        source,
    })?;
    Ok(Arc::new(certified))
}

/// Always the same certificate and key, as server and as client.
#[derive(Debug)]
pub(crate) struct OneCert(pub(crate) Arc<CertifiedKey>);

impl ResolvesServerCert for OneCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl ResolvesClientCert for OneCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}
