//! Reading the certificates out of a Java keystore (JKS) or a PKCS#12 file, for
//! `varti pmode import-domibus --keystore`.
//!
//! Domibus keeps its partners' certificates in a truststore, one entry per party, under the
//! party's name. Only certificates are read: the private key of a key entry is never
//! decrypted or written.
//!
//! PKCS#12 goes through OpenSSL. JKS is Sun's own format, which OpenSSL does not read; its
//! certificate entries are plain DER behind a length, so reading them takes a short parser
//! (below) rather than a dependency. The file's integrity digest is checked, so a wrong
//! store password is reported as such rather than exporting from an unverified file.

use std::fmt;

use openssl::hash::{hash, MessageDigest};
use openssl::pkcs12::Pkcs12;
use openssl::x509::X509;

/// The largest keystore read (Domibus truststores are a few KiB per partner).
const MAX_KEYSTORE: u64 = 64 << 20;
/// JKS magic number.
const JKS_MAGIC: u32 = 0xFEED_FEED;
/// JCEKS magic number (same layout for certificates, but secret-key entries we cannot skip).
const JCEKS_MAGIC: u32 = 0xCECE_CECE;

/// One certificate of a keystore, under the entry's alias.
#[derive(Debug)]
pub struct Entry {
    /// The alias (Domibus: the party name), as stored (JKS stores it lower-cased).
    pub alias: String,
    /// The certificate (for a key entry: the first of its chain, the entry's own).
    pub cert: X509,
}

/// Why a keystore could not be read.
#[derive(Debug)]
pub struct KeystoreError(String);

impl fmt::Display for KeystoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeystoreError {}

fn fail<T>(msg: impl Into<String>) -> Result<T, KeystoreError> {
    Err(KeystoreError(msg.into()))
}

/// Reads every certificate of the keystore at `path` (JKS, or PKCS#12 by anything else).
pub fn read(path: &std::path::Path, storepass: &str) -> Result<Vec<Entry>, KeystoreError> {
    let size = std::fs::metadata(path)
        .map_err(|e| KeystoreError(format!("cannot read {}: {e}", path.display())))?
        .len();
    if size > MAX_KEYSTORE {
        return fail(format!(
            "{} is {size} bytes, more than a keystore holds; is it the right file?",
            path.display()
        ));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| KeystoreError(format!("cannot read {}: {e}", path.display())))?;
    match bytes.get(..4).map(|m| u32::from_be_bytes([m[0], m[1], m[2], m[3]])) {
        Some(JKS_MAGIC) => read_jks(&bytes, storepass),
        Some(JCEKS_MAGIC) => fail(
            "this is a JCEKS keystore, which Varti does not read; convert it with \
             `keytool -importkeystore -srcstoretype JCEKS -deststoretype PKCS12 …` and pass the .p12",
        ),
        _ => read_pkcs12(&bytes, storepass),
    }
}

fn read_pkcs12(bytes: &[u8], storepass: &str) -> Result<Vec<Entry>, KeystoreError> {
    let p12 = Pkcs12::from_der(bytes).map_err(|_| {
        KeystoreError(
            "not a JKS or PKCS#12 keystore (give the Domibus truststore or keystore, .jks or .p12)"
                .into(),
        )
    })?;
    let parsed = p12.parse2(storepass).map_err(|_| {
        KeystoreError(
            "the PKCS#12 file cannot be opened with this --storepass (wrong password, or an algorithm OpenSSL refuses)"
                .into(),
        )
    })?;
    let mut certs = Vec::new();
    certs.extend(parsed.cert);
    if let Some(ca) = parsed.ca {
        certs.extend(ca);
    }
    Ok(certs
        .into_iter()
        .filter_map(|cert| {
            let alias = cert
                .alias()
                .map(|a| String::from_utf8_lossy(a).into_owned())?;
            Some(Entry { alias, cert })
        })
        .collect())
}

/// A cursor over the big-endian JKS layout.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], KeystoreError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.at..end];
                self.at = end;
                Ok(s)
            }
            None => fail("the JKS file is truncated"),
        }
    }
    fn u16(&mut self) -> Result<u16, KeystoreError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, KeystoreError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// Java's `writeUTF`: a 16-bit length, then (modified) UTF-8.
    fn utf(&mut self) -> Result<String, KeystoreError> {
        let n = self.u16()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn blob(&mut self) -> Result<&'a [u8], KeystoreError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    /// A certificate: in version 2 its type first (only X.509 is read), then its DER.
    fn cert(&mut self, version: u32) -> Result<X509, KeystoreError> {
        if version == 2 {
            let kind = self.utf()?;
            if kind != "X.509" {
                return fail(format!(
                    "a certificate of type '{kind}' (only X.509 is read)"
                ));
            }
        }
        X509::from_der(self.blob()?)
            .map_err(|e| KeystoreError(format!("a certificate of the JKS file is not DER: {e}")))
    }
}

fn read_jks(bytes: &[u8], storepass: &str) -> Result<Vec<Entry>, KeystoreError> {
    // The last 20 bytes are SHA-1(password as UTF-16BE ‖ "Mighty Aphrodite" ‖ everything
    // before them): keytool's integrity check, which also tells a wrong password.
    let Some(body_len) = bytes.len().checked_sub(20) else {
        return fail("the JKS file is truncated");
    };
    let (body, digest) = bytes.split_at(body_len);
    let mut input: Vec<u8> = storepass
        .encode_utf16()
        .flat_map(|u| u.to_be_bytes())
        .collect();
    input.extend_from_slice(b"Mighty Aphrodite");
    input.extend_from_slice(body);
    let computed = hash(MessageDigest::sha1(), &input)
        .map_err(|e| KeystoreError(format!("cannot compute the JKS digest: {e}")))?;
    if computed.as_ref() != digest {
        return fail(
            "the JKS file's integrity check fails: wrong --storepass (Domibus' samples use test123), or a damaged file",
        );
    }
    let mut r = Reader { bytes: body, at: 4 };
    let version = r.u32()?;
    if version != 1 && version != 2 {
        return fail(format!("JKS version {version} is unknown"));
    }
    let count = r.u32()?;
    let mut entries = Vec::new();
    for _ in 0..count {
        let tag = r.u32()?;
        let alias = r.utf()?;
        let _created = r.take(8)?;
        match tag {
            // A private key entry: the protected key (skipped, never decrypted), then its chain.
            1 => {
                r.blob()?;
                let chain = r.u32()?;
                for i in 0..chain {
                    let cert = r.cert(version)?;
                    if i == 0 {
                        entries.push(Entry {
                            alias: alias.clone(),
                            cert,
                        });
                    }
                }
            }
            // A trusted certificate entry.
            2 => {
                let cert = r.cert(version)?;
                entries.push(Entry { alias, cert });
            }
            other => return fail(format!("entry '{alias}' has the unknown JKS tag {other}")),
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_and_foreign_files_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short.jks");
        std::fs::write(&short, JKS_MAGIC.to_be_bytes()).unwrap();
        let err = read(&short, "x").unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        let other = dir.path().join("other.p12");
        std::fs::write(&other, b"not a keystore at all").unwrap();
        let err = read(&other, "x").unwrap_err().to_string();
        assert!(err.contains("not a JKS or PKCS#12"), "{err}");
    }
}
