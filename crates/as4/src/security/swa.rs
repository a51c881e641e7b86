//! Attachments in signatures: the SwA profile's Attachment-Content-Signature-Transform.
//!
//! WS-Security SwA Profile 1.1.1 §5.3 / §5.4: a `cid:` reference with this transform
//! digests the attachment's *content* — the MIME part body after Content-Transfer-Encoding
//! is undone, without MIME headers — after the profile's content canonicalization
//! (§5.4.2): XML content types (`text/xml`, `application/xml`, `*/*+xml`) are
//! canonicalized with exclusive c14n without comments; other `text/*` types have their
//! line endings normalized to CRLF; every other type (e.g. AS4's `application/gzip`) is
//! digested as is. This matches WSS4J (phase4, Domibus).
//!
//! Digests are computed while reading: only XML attachments, which must be parsed to be
//! canonicalized, are held in memory (bounded by `MAX_XML_ATTACHMENT`).

use std::io::{self, Read, Write};

use openssl::sha::Sha256;

use super::c14n;
use crate::error::{EbmsError, ErrorCode};

/// The transform URI.
pub(crate) const ATTACHMENT_CONTENT_SIGNATURE_TRANSFORM: &str =
    "http://docs.oasis-open.org/wss/oasis-wss-SwAProfile-1.1#Attachment-Content-Signature-Transform";

/// Largest XML attachment we canonicalize in memory (64 MiB).
pub(crate) const MAX_XML_ATTACHMENT: u64 = 64 * 1024 * 1024;

/// A MIME attachment as the security layer sees it. The MIME parser (or a decryptor,
/// for encrypted parts) implements this; [`open`](AttachmentSource::open) may be called
/// more than once and must return the transfer-decoded content from the start.
pub trait AttachmentSource {
    /// The Content-ID without angle brackets, as `cid:` URIs name it.
    fn content_id(&self) -> &str;
    /// The part's Content-Type (of the plaintext, for a decrypted part).
    fn content_type(&self) -> &str;
    /// The content octets, transfer-decoded.
    fn open(&self) -> io::Result<Box<dyn Read + '_>>;
    /// The SHA-256 of the content octets, when the source knows it already (a payload
    /// whose store recorded it). [`attachment_digest`] then takes it for a type it digests
    /// as it is, instead of reading the content. `None`, the default, makes it read.
    fn known_sha256(&self) -> Option<[u8; 32]> {
        None
    }
}

/// An attachment held in memory (tests, small signals).
#[derive(Debug, Clone)]
pub struct MemoryAttachment {
    /// Content-ID without angle brackets.
    pub content_id: String,
    /// Content-Type.
    pub content_type: String,
    /// Content octets.
    pub data: Vec<u8>,
}

impl AttachmentSource for MemoryAttachment {
    fn content_id(&self) -> &str {
        &self.content_id
    }
    fn content_type(&self) -> &str {
        &self.content_type
    }
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(&self.data[..]))
    }
}

/// Whether `cid_uri` (`cid:...`, RFC 2392, percent-encoded) names `content_id`.
pub fn cid_matches(cid_uri: &str, content_id: &str) -> bool {
    let Some(rest) = cid_uri.strip_prefix("cid:") else {
        return false;
    };
    let decoded = percent_encoding::percent_decode_str(rest).decode_utf8_lossy();
    let id = content_id
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>');
    decoded == id
}

fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn is_xml(mt: &str) -> bool {
    mt == "text/xml" || mt == "application/xml" || mt.ends_with("+xml")
}

/// Whether the transform digests content of this type as it is (neither XML, which is
/// canonicalized, nor other text, whose line endings are normalized): then the digest
/// [`attachment_digest`] gives is the SHA-256 of the content's very octets.
pub(crate) fn digested_as_is(content_type: &str) -> bool {
    let mt = media_type(content_type);
    !is_xml(&mt) && !mt.starts_with("text/")
}

struct HashWriter<'a>(&'a mut Sha256);
impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Computes the SHA-256 digest of an attachment under the
/// Attachment-Content-Signature-Transform, streaming.
pub fn attachment_digest(att: &dyn AttachmentSource) -> Result<[u8; 32], EbmsError> {
    let io_err = |e: io::Error| {
        EbmsError::new(
            ErrorCode::ExternalPayloadError,
            format!("reading attachment cid:{} failed: {e}", att.content_id()),
        )
    };
    if let Some(known) = att
        .known_sha256()
        .filter(|_| digested_as_is(att.content_type()))
    {
        return Ok(known);
    }
    let mt = media_type(att.content_type());
    let mut reader = att.open().map_err(io_err)?;
    let mut hasher = Sha256::new();
    if is_xml(&mt) {
        let mut buf = Vec::new();
        reader
            .take(MAX_XML_ATTACHMENT + 1)
            .read_to_end(&mut buf)
            .map_err(io_err)?;
        if buf.len() as u64 > MAX_XML_ATTACHMENT {
            return Err(EbmsError::new(
                ErrorCode::PolicyNoncompliance,
                format!(
                    "XML attachment cid:{} exceeds {MAX_XML_ATTACHMENT} bytes; it cannot be canonicalized \
                     for its signature — send it compressed (application/gzip)",
                    att.content_id()
                ),
            ));
        }
        let canonical = c14n::canonicalize_bytes(&buf, &[]).map_err(|e| {
            EbmsError::new(
                ErrorCode::FailedAuthentication,
                format!(
                    "XML attachment cid:{} could not be canonicalized: {}",
                    att.content_id(),
                    e.detail
                ),
            )
        })?;
        hasher.update(&canonical);
    } else if mt.starts_with("text/") {
        // CRLF normalization (RFC 2045 canonical text): bare CR or LF become CRLF.
        let mut buf = [0u8; 64 * 1024];
        let mut out = Vec::with_capacity(buf.len() * 2);
        let mut prev_cr = false;
        loop {
            let n = reader.read(&mut buf).map_err(io_err)?;
            if n == 0 {
                break;
            }
            out.clear();
            for &b in &buf[..n] {
                match b {
                    b'\n' if prev_cr => {} // already emitted with the CR
                    b'\n' => out.extend_from_slice(b"\r\n"),
                    b'\r' => out.extend_from_slice(b"\r\n"),
                    _ => out.push(b),
                }
                prev_cr = b == b'\r';
            }
            hasher.update(&out);
        }
    } else {
        io::copy(&mut reader, &mut HashWriter(&mut hasher)).map_err(io_err)?;
    }
    Ok(hasher.finish())
}
