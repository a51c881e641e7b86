//! The key-strength policy: which keys and certificate signatures Varti accepts, for its
//! own keys and its partners' alike.
//!
//! One policy, applied by `varti pmode check` (partners' and our published
//! certificates), `varti certs check` (everything in use) and `varti serve` at start-up:
//!
//! * RSA keys of at least `MIN_RSA_BITS` bits;
//! * EC keys on P-256, P-384 or P-521 only;
//! * Ed25519 and X25519 (the AS4 2.0 EdDSA profile);
//! * nothing else (DSA, Ed448, X448, other curves: no AS4 profile uses them);
//! * certificate signatures not made with SHA-1, MD5, MD4 or MD2.
//!
//! The signature of a self-signed certificate is not judged: it proves nothing (the
//! certificate is trusted because it is configured, not because it signed itself), so a
//! root or pinned certificate self-signed with SHA-1 is not refused for that. Its key is.
//!
//! This checks keys and signature digests; it does not check validity periods, key usage
//! or chains (see [`crate::pmode::check`]).

use std::fmt;

use openssl::nid::Nid;
use openssl::pkey::{HasPublic, Id, PKeyRef};
use openssl::x509::X509Ref;

/// The smallest RSA modulus accepted, in bits (eDelivery AS4 and ENISA/BSI guidance).
pub(crate) const MIN_RSA_BITS: u32 = 2048;

/// Why a key or certificate is too weak for the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WeakKey {
    /// An RSA key shorter than `MIN_RSA_BITS`.
    ShortRsa {
        /// The modulus length.
        bits: u32,
    },
    /// An EC key on a curve that is not P-256, P-384 or P-521.
    Curve {
        /// The curve's short name (`secp256k1`, `brainpoolP256r1`, …) or `unnamed`.
        curve: String,
    },
    /// A key type no AS4 profile uses (DSA, Ed448, X448, …).
    KeyType {
        /// Its name.
        name: String,
    },
    /// A certificate signed with a broken digest.
    SignatureDigest {
        /// The signature algorithm (`sha1WithRSAEncryption`, `md5WithRSAEncryption`, …).
        algorithm: String,
    },
}

impl WeakKey {
    /// How to fix it (without the PMode exception, which the caller knows about).
    pub fn hint(&self) -> &'static str {
        match self {
            WeakKey::ShortRsa { .. } | WeakKey::Curve { .. } | WeakKey::KeyType { .. } => {
                "issue a new key and certificate: RSA of at least 2048 bits (3072 recommended), EC P-256/P-384/P-521, or Ed25519/X25519 for the AS4 2.0 profiles"
            }
            WeakKey::SignatureDigest { .. } => {
                "have the CA re-issue the certificate signed with SHA-256 or stronger"
            }
        }
    }
}

impl fmt::Display for WeakKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeakKey::ShortRsa { bits } => write!(
                f,
                "an RSA key of {bits} bits (at least {MIN_RSA_BITS} are required)"
            ),
            WeakKey::Curve { curve } => write!(
                f,
                "an EC key on curve {curve} (only P-256, P-384 and P-521 are accepted)"
            ),
            WeakKey::KeyType { name } => write!(
                f,
                "a {name} key, which no AS4 profile uses (RSA, EC P-256/P-384/P-521, Ed25519 and X25519 are accepted)"
            ),
            WeakKey::SignatureDigest { algorithm } => write!(
                f,
                "a certificate signature made with {algorithm} (SHA-1 and MD5 signatures can be forged)"
            ),
        }
    }
}

impl std::error::Error for WeakKey {}

/// Checks a key (public, or the public half of a private key) against the policy.
pub fn check_key<T: HasPublic>(key: &PKeyRef<T>) -> Result<(), WeakKey> {
    match key.id() {
        Id::RSA | Id::RSA_PSS if key.bits() < MIN_RSA_BITS => {
            Err(WeakKey::ShortRsa { bits: key.bits() })
        }
        Id::RSA | Id::RSA_PSS | Id::ED25519 | Id::X25519 => Ok(()),
        Id::EC => {
            let curve = key.ec_key().ok().and_then(|k| k.group().curve_name());
            match curve {
                Some(Nid::X9_62_PRIME256V1 | Nid::SECP384R1 | Nid::SECP521R1) => Ok(()),
                Some(n) => Err(WeakKey::Curve {
                    curve: n.short_name().unwrap_or("unknown").to_owned(),
                }),
                None => Err(WeakKey::Curve {
                    curve: "unnamed (explicit parameters)".to_owned(),
                }),
            }
        }
        Id::DSA => Err(WeakKey::KeyType { name: "DSA".into() }),
        Id::ED448 => Err(WeakKey::KeyType {
            name: "Ed448".into(),
        }),
        Id::X448 => Err(WeakKey::KeyType {
            name: "X448".into(),
        }),
        Id::DH => Err(WeakKey::KeyType { name: "DH".into() }),
        _ => Err(WeakKey::KeyType {
            name: "unknown".into(),
        }),
    }
}

/// Checks a certificate against the policy: its key ([`check_key`]) and, unless it is
/// self-signed, the digest of its signature.
pub fn check_certificate(cert: &X509Ref) -> Result<(), WeakKey> {
    let key = cert.public_key().map_err(|_| WeakKey::KeyType {
        name: "unreadable".into(),
    })?;
    check_key(&key)?;
    let nid = cert.signature_algorithm().object().nid();
    let digest = nid.signature_algorithms().map(|a| a.digest);
    let weak_digest = matches!(digest, Some(Nid::SHA1 | Nid::MD5 | Nid::MD4 | Nid::MD2));
    if weak_digest && !self_signed(cert) {
        return Err(WeakKey::SignatureDigest {
            algorithm: nid
                .long_name()
                .or_else(|_| nid.short_name())
                .unwrap_or("unknown")
                .to_owned(),
        });
    }
    Ok(())
}

/// Subject and issuer are the same and the certificate's own key verifies it.
fn self_signed(cert: &X509Ref) -> bool {
    let same_name = cert
        .subject_name()
        .try_cmp(cert.issuer_name())
        .is_ok_and(|o| o.is_eq());
    same_name
        && cert
            .public_key()
            .and_then(|k| cert.verify(&k))
            .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::asn1::Asn1Time;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::pkey::{PKey, Private};
    use openssl::rsa::Rsa;
    use openssl::x509::{X509Name, X509};

    fn rsa(bits: u32) -> PKey<Private> {
        PKey::from_rsa(Rsa::generate(bits).unwrap()).unwrap()
    }

    fn ec(nid: Nid) -> PKey<Private> {
        PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(nid).unwrap()).unwrap())
            .unwrap()
    }

    fn name(cn: &str) -> X509Name {
        let mut n = X509Name::builder().unwrap();
        n.append_entry_by_text("CN", cn).unwrap();
        n.build()
    }

    /// A certificate for `key` named `cn`, signed by `signer` (named `issuer`) with `md`.
    fn cert(
        key: &PKey<Private>,
        cn: &str,
        signer: &PKey<Private>,
        issuer: &str,
        md: MessageDigest,
    ) -> X509 {
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name(cn)).unwrap();
        b.set_issuer_name(&name(issuer)).unwrap();
        b.set_pubkey(key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        b.sign(signer, md).unwrap();
        b.build()
    }

    #[test]
    fn rsa_below_2048_bits_is_weak_and_2048_is_not() {
        assert_eq!(check_key(&rsa(1024)), Err(WeakKey::ShortRsa { bits: 1024 }));
        assert_eq!(check_key(&rsa(2048)), Ok(()));
        let message = WeakKey::ShortRsa { bits: 1024 }.to_string();
        assert!(
            message.contains("1024 bits") && message.contains("2048"),
            "{message}"
        );
    }

    #[test]
    fn only_the_profiles_curves_are_accepted() {
        for ok in [Nid::X9_62_PRIME256V1, Nid::SECP384R1, Nid::SECP521R1] {
            assert_eq!(check_key(&ec(ok)), Ok(()), "{ok:?}");
        }
        assert_eq!(
            check_key(&ec(Nid::SECP256K1)),
            Err(WeakKey::Curve {
                curve: "secp256k1".into()
            })
        );
        assert_eq!(check_key(&PKey::generate_ed25519().unwrap()), Ok(()));
        assert_eq!(check_key(&PKey::generate_x25519().unwrap()), Ok(()));
        assert!(matches!(
            check_key(&PKey::generate_ed448().unwrap()),
            Err(WeakKey::KeyType { .. })
        ));
    }

    #[test]
    fn sha1_and_md5_signatures_are_weak_unless_self_signed() {
        let ca = rsa(2048);
        let leaf = ec(Nid::X9_62_PRIME256V1);
        let sha1 = cert(&leaf, "leaf", &ca, "ca", MessageDigest::sha1());
        match check_certificate(&sha1) {
            Err(WeakKey::SignatureDigest { algorithm }) => {
                assert!(algorithm.contains("sha1"), "{algorithm}")
            }
            other => panic!("a SHA-1 signed certificate passed: {other:?}"),
        }
        let md5 = cert(&rsa(2048), "leaf", &ca, "ca", MessageDigest::md5());
        assert!(matches!(
            check_certificate(&md5),
            Err(WeakKey::SignatureDigest { .. })
        ));
        let sha256 = cert(&leaf, "leaf", &ca, "ca", MessageDigest::sha256());
        assert_eq!(check_certificate(&sha256), Ok(()));
        // A root self-signed with SHA-1: the signature proves nothing, it is not judged.
        let root = cert(&ca, "ca", &ca, "ca", MessageDigest::sha1());
        assert_eq!(check_certificate(&root), Ok(()));
        // Same names but another key signed it: not self-signed, judged.
        let forged = cert(&leaf, "ca", &ca, "ca", MessageDigest::sha1());
        assert!(check_certificate(&forged).is_err());
    }

    #[test]
    fn a_weak_key_is_reported_before_the_signature() {
        let weak = rsa(1024);
        let c = cert(&weak, "leaf", &rsa(2048), "ca", MessageDigest::sha1());
        assert_eq!(check_certificate(&c), Err(WeakKey::ShortRsa { bits: 1024 }));
    }
}
