//! TLS settings for the server and the outbound client (rustls with the `ring` provider).
//!
//! Policy, the same both ways: TLS 1.3 and TLS 1.2 only; forward-secret suites only (every
//! TLS 1.3 suite, and the ECDHE suites with AEAD ciphers for TLS 1.2). Certificates and keys
//! come from PEM files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, SupportedCipherSuite};

use crate::config::ClientAuth;

/// Why TLS settings could not be built. Messages name the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {path}: {problem}; {fix}")]
    File {
        /// What the file is for, e.g. "TLS certificate file (tls.cert)".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
        /// How to fix it.
        fix: &'static str,
    },
    /// rustls refused the combination (e.g. the key does not match the certificate).
    #[error("{context}: {source}")]
    Rustls {
        /// What was being built.
        context: &'static str,
        /// rustls' error.
        source: rustls::Error,
    },
    /// The client CA list could not be turned into a verifier.
    #[error("client certificate verifier from {path}: {problem}; check tls.client_ca")]
    Verifier {
        /// The CA file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// The cipher suites Varti offers: all forward secret.
fn forward_secret_suites() -> Vec<SupportedCipherSuite> {
    use rustls::crypto::ring::cipher_suite as cs;
    vec![
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ]
}

/// The crypto provider with Varti's suite policy (ring, forward-secret suites only).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: forward_secret_suites(),
        ..rustls::crypto::ring::default_provider()
    })
}

/// The protocol versions Varti speaks.
pub const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Reads every certificate from a PEM file (a chain: leaf first, then intermediates).
pub fn load_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |problem: String| {
        TlsError::File {
        what,
        path: path.to_owned(),
        problem,
        fix: "give a PEM file with `-----BEGIN CERTIFICATE-----` blocks (see certs/ for a test PKI script)",
    }
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(pem_problem(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(pem_problem(e)))?;
    if certs.is_empty() {
        return Err(file_error("contains no certificate".into()));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) from a PEM file.
pub fn load_key(path: &Path, what: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        what,
        path: path.to_owned(),
        problem: pem_problem(e),
        fix: "give an unencrypted PEM private key (`-----BEGIN PRIVATE KEY-----`, RSA or EC); keep it readable only by the varti user",
    })
}

fn pem_problem(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => format!("cannot read it ({io})"),
        rustls::pki_types::pem::Error::NoItemsFound => "contains no usable PEM item".into(),
        other => format!("is not valid PEM ({other:?})"),
    }
}

/// Builds a root store from PEM CA certificates.
pub(crate) fn root_store(
    certs: &[CertificateDer<'static>],
) -> Result<RootCertStore, rustls::Error> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert.clone())?;
    }
    Ok(roots)
}

/// The server's TLS settings: certificate chain from a PEM file and key from a PEM file
/// or a `pkcs11:` URI (the token signs the handshakes), client
/// authentication as configured (`client_ca` is read unless `client_auth` is `Off`), ALPN
/// offering HTTP/2 and HTTP/1.1.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_auth: ClientAuth,
    client_ca: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = load_certs(cert, "TLS certificate file (tls.cert)")?;
    let certified = super::tls_key::certified_key(chain, key, "TLS key file (tls.key)")?;
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(|source| TlsError::Rustls {
            context: "TLS protocol versions",
            source,
        })?;
    let builder = match client_auth {
        ClientAuth::Off => builder.with_no_client_auth(),
        ClientAuth::Optional | ClientAuth::Required => {
            let cas = load_certs(client_ca, "client CA file (tls.client_ca)")?;
            let roots = root_store(&cas).map_err(|e| TlsError::Verifier {
                path: client_ca.to_owned(),
                problem: e.to_string(),
            })?;
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = if client_auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier.build().map_err(|e| TlsError::Verifier {
                path: client_ca.to_owned(),
                problem: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(super::tls_key::OneCert(certified)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Client TLS settings for one partner: the CAs its server certificate must chain to, and
/// optionally our client certificate chain and key. ALPN is left to the HTTP connector.
pub fn client_config(
    trusted_cas: &[CertificateDer<'static>],
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = client_builder(trusted_cas)?;
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((chain, key)) => {
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|source| TlsError::Rustls {
                    context: "our client certificate and key do not fit together",
                    source,
                })
        }
    }
}

/// The client side shared by both: our provider and versions, trusting `trusted_cas`.
fn client_builder(
    trusted_cas: &[CertificateDer<'static>],
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, TlsError>
{
    let roots = root_store(trusted_cas).map_err(|source| TlsError::Rustls {
        context: "partner's trusted CA certificate",
        source,
    })?;
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|source| TlsError::Rustls {
            context: "TLS protocol versions",
            source,
        })?
        .with_root_certificates(roots))
}

/// Like [`client_config`], with our client certificate and key already loaded (a key file
/// or a token key, see `client::ClientIdentity`).
pub(crate) fn client_config_certified(
    trusted_cas: &[CertificateDer<'static>],
    identity: Option<Arc<rustls::sign::CertifiedKey>>,
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = client_builder(trusted_cas)?;
    Ok(match identity {
        None => builder.with_no_client_auth(),
        Some(certified) => {
            builder.with_client_cert_resolver(Arc::new(super::tls_key::OneCert(certified)))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_forward_secret_suites() {
        for suite in provider().cipher_suites.iter() {
            let name = format!("{:?}", suite.suite());
            assert!(
                name.starts_with("TLS13_") || name.starts_with("TLS_ECDHE_"),
                "{name}"
            );
        }
    }

    #[test]
    fn missing_files_are_named() {
        let err = server_config(
            Path::new("/nonexistent/tls.crt"),
            Path::new("/nonexistent/tls.key"),
            ClientAuth::Off,
            Path::new("/nonexistent/ca.crt"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("/nonexistent/tls.crt") && err.contains("tls.cert"),
            "{err}"
        );
    }
}
