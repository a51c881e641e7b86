//! Certificate revocation lists (RFC 5280 §5) for the signer's chain.
//!
//! An operator names CRL files for a partner in the PMode (`crls = [...]` on the party).
//! When any are named, the signer certificate must be covered by one of them (a CRL from
//! its issuer), and every other certificate of the verified chain is checked against a
//! CRL from its issuer when one is configured. A configured CRL is only believed when:
//! * its signature verifies with the key of the CA that issued it (the next certificate of
//!   the verified chain, or a trust anchor with the CRL's issuer name);
//! * it is current: `thisUpdate <= at <= nextUpdate`. A stale CRL is refused rather than
//!   ignored: an outdated list cannot show a recent revocation.
//!
//! This module does not fetch CRLs (no network access on the receive path); the operator
//! refreshes the files, e.g. from the URL in the certificate's CRL Distribution Points.
//! Files are looked at when a message is checked, so a replaced file takes effect at once
//! (a signer found trusted is remembered for a few minutes, but only while the CRL files
//! keep their size, modification time and inode: `token::validate_signer_with_crl_files`).
//! Every failure is `EBMS:0101` (FailedAuthentication) with a reason naming the file.

use std::path::{Path, PathBuf};

use openssl::asn1::Asn1Time;
use openssl::x509::{CrlStatus, ReasonCode, X509Crl, X509NameRef, X509Ref, X509};
use time::OffsetDateTime;

use super::token::distinguished_name_string;
use crate::error::{EbmsError, ErrorCode};

/// One CRL, with the file it came from (for error messages).
pub(crate) struct Crl {
    /// Where the CRL was read from.
    pub source: PathBuf,
    crl: X509Crl,
}

impl std::fmt::Debug for Crl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Crl")
            .field("source", &self.source)
            .field("issuer", &self.issuer())
            .finish()
    }
}

impl Crl {
    /// Reads a CRL file: one or more PEM `X509 CRL` blocks, or one DER CRL. The error
    /// says what is wrong with the file, for `varti pmode check` and for the refusal.
    pub(crate) fn load(path: &Path) -> Result<Vec<Crl>, String> {
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!(
                "CRL file '{}' not found; put the CA's current CRL there or fix the path",
                path.display()
            ),
            _ => format!(
                "cannot read CRL file '{}': {e}; make it readable by the user running varti",
                path.display()
            ),
        })?;
        Crl::parse(&bytes, path)
    }

    /// Parses CRL bytes (PEM blocks or DER); `source` names them in messages.
    pub(crate) fn parse(bytes: &[u8], source: &Path) -> Result<Vec<Crl>, String> {
        let wrap = |crl| Crl {
            source: source.to_path_buf(),
            crl,
        };
        if find(bytes, b"-----BEGIN ").is_some() {
            const BEGIN: &[u8] = b"-----BEGIN X509 CRL-----";
            const END: &[u8] = b"-----END X509 CRL-----";
            let mut out = Vec::new();
            let mut rest = bytes;
            while let Some(start) = find(rest, BEGIN) {
                let Some(len) = find(&rest[start..], END) else {
                    break;
                };
                let block = &rest[start..start + len + END.len()];
                let crl = X509Crl::from_pem(block).map_err(|e| {
                    format!(
                        "CRL file '{}' holds a PEM block that is not a valid CRL ({e}); \
                         download it again from the CA",
                        source.display()
                    )
                })?;
                out.push(wrap(crl));
                rest = &rest[start + len + END.len()..];
            }
            if out.is_empty() {
                return Err(format!(
                    "CRL file '{}' is PEM but holds no `-----BEGIN X509 CRL-----` block; \
                     give the CA's CRL, not a certificate or key",
                    source.display()
                ));
            }
            return Ok(out);
        }
        X509Crl::from_der(bytes)
            .map(|c| vec![wrap(c)])
            .map_err(|_| {
                format!(
                    "CRL file '{}' is neither a PEM (-----BEGIN X509 CRL-----) nor a DER CRL; \
                 download it again from the CA",
                    source.display()
                )
            })
    }

    /// Loads every file; the first unreadable one is the error.
    pub(crate) fn load_all(paths: &[PathBuf]) -> Result<Vec<Crl>, String> {
        let mut out = Vec::new();
        for p in paths {
            out.extend(Crl::load(p)?);
        }
        Ok(out)
    }

    /// The issuer's distinguished name, RFC 2253 style.
    pub(crate) fn issuer(&self) -> String {
        distinguished_name_string(self.crl.issuer_name())
    }

    /// Whether `at` is past the CRL's `nextUpdate` (a CRL without one never expires).
    pub(crate) fn is_stale(&self, at: OffsetDateTime) -> bool {
        let Ok(at) = Asn1Time::from_unix(at.unix_timestamp() as _) else {
            return true;
        };
        self.crl
            .next_update()
            .is_some_and(|next| next.compare(&at).is_ok_and(|o| o.is_lt()))
    }

    /// The CRL's `nextUpdate`, as text.
    pub(crate) fn next_update(&self) -> Option<String> {
        self.crl.next_update().map(|t| t.to_string())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn same_name(a: &X509NameRef, b: &X509NameRef) -> bool {
    matches!((a.to_der(), b.to_der()), (Ok(x), Ok(y)) if x == y)
}

fn auth(detail: String) -> EbmsError {
    EbmsError::new(ErrorCode::FailedAuthentication, detail)
}

/// Where to get a fresh CRL for `cert`: its CRL Distribution Point URLs, if any.
fn distribution_points(cert: &X509Ref) -> String {
    let urls: Vec<String> = cert
        .crl_distribution_points()
        .map(|points| {
            points
                .iter()
                .filter_map(|p| p.distpoint())
                .filter_map(|d| d.fullname())
                .flat_map(|names| names.iter().filter_map(|n| n.uri().map(str::to_owned)))
                .collect()
        })
        .unwrap_or_default();
    if urls.is_empty() {
        "from the CA that issued it".to_owned()
    } else {
        format!("from {}", urls.join(" or "))
    }
}

/// Checks a verified chain (`chain[0]` the signer, each next certificate the issuer of
/// the one before, as OpenSSL built it) against `crls`. `anchors` supply the issuer
/// certificate when the chain stops at a pinned certificate. With no CRLs this does
/// nothing: revocation checking is opt-in per partner.
pub(crate) fn check_chain(
    chain: &[X509],
    anchors: &[X509],
    crls: &[Crl],
    at: OffsetDateTime,
) -> Result<(), EbmsError> {
    if crls.is_empty() {
        return Ok(());
    }
    let at_asn1 = Asn1Time::from_unix(at.unix_timestamp() as _)
        .map_err(|e| EbmsError::new(ErrorCode::Other, e.to_string()))?;
    for (i, cert) in chain.iter().enumerate() {
        let issuer_name = cert.issuer_name();
        // A self-signed anchor is trusted as configured; no CRL speaks for it.
        if same_name(issuer_name, cert.subject_name()) && i + 1 == chain.len() {
            continue;
        }
        let what = if i == 0 {
            format!(
                "the signer certificate '{}'",
                distinguished_name_string(cert.subject_name())
            )
        } else {
            format!(
                "the CA certificate '{}' in the signer's chain",
                distinguished_name_string(cert.subject_name())
            )
        };
        let issuer_dn = distinguished_name_string(issuer_name);
        let matching: Vec<&Crl> = crls
            .iter()
            .filter(|c| same_name(c.crl.issuer_name(), issuer_name))
            .collect();
        if matching.is_empty() {
            if i == 0 {
                let files: Vec<String> = crls
                    .iter()
                    .map(|c| format!("{} (from '{}')", c.source.display(), c.issuer()))
                    .collect();
                return Err(auth(format!(
                    "revocation of {what} cannot be checked: CRLs are configured for this \
                     partner ({}) but none is from its issuer '{issuer_dn}'; add that CA's \
                     CRL to the party's `crls` in the PMode",
                    files.join(", ")
                )));
            }
            continue;
        }
        // The issuer's certificate: next in the chain, else an anchor with that name
        // whose key verifies the certificate.
        let issuer = chain
            .get(i + 1)
            .filter(|c| same_name(c.subject_name(), issuer_name))
            .or_else(|| {
                anchors.iter().find(|a| {
                    same_name(a.subject_name(), issuer_name)
                        && a.public_key()
                            .and_then(|k| cert.verify(&k))
                            .unwrap_or(false)
                })
            });
        for crl in matching {
            let file = crl.source.display();
            let Some(issuer) = issuer else {
                return Err(auth(format!(
                    "the CRL in '{file}' from '{issuer_dn}' cannot be verified: that CA's \
                     certificate is not among the trust anchors or in the signer's chain; \
                     add the CA certificate to the trust anchors"
                )));
            };
            let genuine = issuer
                .public_key()
                .and_then(|k| crl.crl.verify(&k))
                .unwrap_or(false);
            if !genuine {
                return Err(auth(format!(
                    "the CRL in '{file}' names '{issuer_dn}' as its issuer but its signature \
                     does not verify with that CA's key: it was not issued by this CA (forged, \
                     or from another CA of the same name); replace it with the CRL {}",
                    distribution_points(cert)
                )));
            }
            if crl
                .crl
                .last_update()
                .compare(&at_asn1)
                .is_ok_and(|o| o.is_gt())
            {
                return Err(auth(format!(
                    "the CRL in '{file}' from '{issuer_dn}' is not valid yet (thisUpdate {}, \
                     checked at {at}); check this machine's clock",
                    crl.crl.last_update()
                )));
            }
            if crl.is_stale(at) {
                return Err(auth(format!(
                    "the CRL in '{file}' from '{issuer_dn}' is out of date: its nextUpdate was \
                     {}, and a stale CRL cannot show recent revocations; download the current \
                     CRL {} and replace the file (it is read again for every message)",
                    crl.next_update().unwrap_or_default(),
                    distribution_points(cert)
                )));
            }
            if let CrlStatus::Revoked(entry) = crl.crl.get_by_cert(cert) {
                let reason = entry
                    .extension::<ReasonCode>()
                    .ok()
                    .flatten()
                    .and_then(|(_, r)| r.get_i64().ok())
                    .map(|r| format!(", reason {}", reason_name(r)))
                    .unwrap_or_default();
                let serial = cert
                    .serial_number()
                    .to_bn()
                    .and_then(|b| b.to_hex_str().map(|s| s.to_string()))
                    .unwrap_or_default();
                return Err(auth(format!(
                    "{what} (serial {serial}) was revoked by '{issuer_dn}' on {}{reason}, \
                     according to the CRL in '{file}'; the partner must sign with a new \
                     certificate, and the PMode must name it",
                    entry.revocation_date()
                )));
            }
        }
    }
    Ok(())
}

/// RFC 5280 §5.3.1 reason names.
fn reason_name(code: i64) -> &'static str {
    match code {
        1 => "keyCompromise",
        2 => "cACompromise",
        3 => "affiliationChanged",
        4 => "superseded",
        5 => "cessationOfOperation",
        6 => "certificateHold",
        8 => "removeFromCRL",
        9 => "privilegeWithdrawn",
        10 => "aACompromise",
        _ => "unspecified",
    }
}
