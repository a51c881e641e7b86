//! The `multipart/related` MIME package of an AS4 message (SOAP with Attachments).
//!
//! An AS4 message with payloads travels as `multipart/related` (RFC 2046 §5.1, RFC 2387):
//! a root part holding the SOAP envelope and one part per payload, each payload named by a
//! `Content-ID` that the ebMS header references as a `cid:` URI (RFC 2392).
//!
//! # Reading
//!
//! The reader is a **push-style state machine**, [`MimeParser`]: the caller feeds it byte
//! chunks in whatever sizes the transport delivers ([`MimeParser::feed`]) and ends with
//! [`MimeParser::finish`]. Nothing in it blocks on input, so an async server can drive it
//! from its body stream; [`MimePackage::parse`] is the synchronous driver over any
//! [`std::io::Read`].
//!
//! The parser never holds more than a bounded window of the input: it scans for the
//! delimiter with `memchr`'s substring finder and hands every byte that cannot be part of a
//! delimiter straight to the current part's sink. The sinks are:
//!
//! * the **root part** (the part named by the `start` parameter, or the first part when
//!   `start` is absent, as RFC 2387 says) is kept in memory, bounded by
//!   [`MimeLimits::max_root_size`];
//! * an **attachment** is kept in memory up to [`MimeLimits::spill_threshold`] bytes and
//!   beyond it is moved to a temporary file, so memory stays flat whatever the payload size;
//! * or, past that threshold, a [`PartTap`] given to the parse takes the attachment's
//!   content over as it arrives: the receiver decrypts an encrypted payload so
//!   ([`crate::receive::EarlyDecryption`]), instead of spilling the cipher text to a file
//!   and reading it back.
//!
//! While a part streams through, its `Content-Transfer-Encoding` is undone (`binary`, `8bit`
//! and `7bit` are identity; `base64` is decoded on the fly) and the length of the content is
//! counted (its SHA-256 is read back only when asked, [`Attachment::sha256`]). Every limit
//! of [`MimeLimits`] is checked as bytes arrive, so hostile input (endless headers, a
//! million parts, a truncated body, a forged length) ends in a [`MimeError`] — which maps to
//! `EBMS:0007 MimeInconsistency` — never in a panic or unbounded allocation.
//!
//! Line endings: RFC 2046 requires CRLF, but message dumps and some senders use bare LF.
//! The parser decides per message from the first boundary line, and then requires the
//! delimiter in that form, so binary content ending in `\r` is never altered.
//!
//! # Writing
//!
//! [`MimeWriter`] streams a package to any [`std::io::Write`]: the root SOAP 1.2 part first,
//! then each attachment copied from a reader, all with `Content-Transfer-Encoding: binary`.
//! The boundary is random (122 bits from a v4 UUID), so a payload colliding with it is not a
//! practical concern; [`MimeWriter::content_type`] gives the top-level header value.

use std::any::Any;
use std::collections::HashSet;
use std::fmt;
use std::io::{self, Read, Seek, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use memchr::memmem;
use openssl::sha::Sha256;

use crate::error::{EbmsError, ErrorCode};
use crate::spool::{SpoolBudget, SpoolCharge};

// ---------------------------------------------------------------------------------------
// Errors and limits
// ---------------------------------------------------------------------------------------

/// Why a MIME package could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MimeError {
    /// The package breaks the MIME rules (bad header, missing boundary, truncated input,
    /// duplicate Content-ID, …). Maps to `EBMS:0007 MimeInconsistency`.
    #[error("malformed MIME package: {0}")]
    Malformed(String),
    /// The package exceeds one of the configured [`MimeLimits`]. Maps to `EBMS:0007`.
    #[error("MIME package over limit: {0}")]
    LimitExceeded(String),
    /// The package uses a feature this reader does not support (e.g. quoted-printable).
    /// Maps to `EBMS:0008 FeatureNotSupportedInconsistency`.
    #[error("unsupported MIME feature: {0}")]
    Unsupported(String),
    /// Reading the input or writing a spill file failed. Maps to `EBMS:0004 Other`.
    #[error("I/O error while handling the MIME package: {0}")]
    Io(#[from] io::Error),
}

impl MimeError {
    /// The ebMS error a peer should receive for this failure.
    pub fn to_ebms(&self) -> EbmsError {
        let code = match self {
            MimeError::Malformed(_) | MimeError::LimitExceeded(_) => ErrorCode::MimeInconsistency,
            MimeError::Unsupported(_) => ErrorCode::FeatureNotSupportedInconsistency,
            MimeError::Io(e) if e.kind() == io::ErrorKind::StorageFull => {
                return EbmsError::retry_later(self.to_string())
            }
            MimeError::Io(_) => ErrorCode::Other,
        };
        EbmsError::new(code, self.to_string())
    }
}

impl From<MimeError> for EbmsError {
    fn from(e: MimeError) -> Self {
        e.to_ebms()
    }
}

fn malformed(msg: impl Into<String>) -> MimeError {
    MimeError::Malformed(msg.into())
}

/// Bounds on what a parsed package may contain. Every limit is enforced while streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MimeLimits {
    /// Largest header block (of one part, or of a message dump), in bytes.
    pub max_header_block: usize,
    /// Most parts in one package, root included.
    pub max_parts: usize,
    /// Largest root part (the SOAP envelope), in bytes; it is held in memory.
    pub max_root_size: usize,
    /// Largest attachment, in decoded bytes.
    pub max_part_size: u64,
    /// Largest whole package, in bytes as received.
    pub max_total_size: u64,
    /// An attachment larger than this many bytes moves from memory to a temporary file.
    pub spill_threshold: usize,
    /// Where spill files go; `None` means the system temporary directory.
    pub temp_dir: Option<PathBuf>,
    /// The disk budget spill files are charged to, shared with every request in flight;
    /// `None`: unbounded. A spill it cannot take fails with
    /// [`io::ErrorKind::StorageFull`], which [`MimeError::to_ebms`] makes a transient
    /// error.
    pub spool_budget: Option<Arc<SpoolBudget>>,
}

impl Default for MimeLimits {
    fn default() -> Self {
        MimeLimits {
            max_header_block: 64 * 1024,
            max_parts: 1000,
            max_root_size: 32 * 1024 * 1024,
            max_part_size: 4 * 1024 * 1024 * 1024,
            max_total_size: 8 * 1024 * 1024 * 1024,
            spill_threshold: 1024 * 1024,
            temp_dir: None,
            spool_budget: None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Headers and Content-Type
// ---------------------------------------------------------------------------------------

/// An ordered list of header fields; names compare case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// An empty header list.
    pub fn new() -> Self {
        Headers(Vec::new())
    }

    /// Appends a field (the name as written, the value with folding removed).
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    /// The value of the first field called `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The values of every field called `name` (case-insensitive), in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every field as `(name, value)`, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no field.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses a header block (without its terminating blank line): `Name: value` lines
    /// ending in CRLF or LF, continuation lines starting with a space or tab folded into the
    /// previous field (RFC 5322 §2.2.3). Values are read as UTF-8 (RFC 6532); invalid
    /// sequences are replaced, never rejected with a panic.
    pub(crate) fn parse_block(block: &[u8]) -> Result<Headers, MimeError> {
        let mut headers = Headers::new();
        for raw in block.split(|&b| b == b'\n') {
            let line = raw.strip_suffix(b"\r").unwrap_or(raw);
            if line.is_empty() {
                continue;
            }
            let text = String::from_utf8_lossy(line);
            if line[0] == b' ' || line[0] == b'\t' {
                match headers.0.last_mut() {
                    Some((_, v)) => {
                        v.push(' ');
                        v.push_str(text.trim());
                    }
                    None => {
                        return Err(malformed(format!(
                            "header block starts with a continuation line `{}`",
                            clip(&text)
                        )))
                    }
                }
                continue;
            }
            let Some((name, value)) = text.split_once(':') else {
                return Err(malformed(format!(
                    "header line `{}` has no `:`; each header must be `Name: value`",
                    clip(&text)
                )));
            };
            let name = name.trim_end();
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                return Err(malformed(format!(
                    "header name `{}` is not a valid field name",
                    clip(name)
                )));
            }
            headers.push(name, value.trim());
        }
        Ok(headers)
    }
}

fn clip(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let mut c: String = s.chars().take(MAX).collect();
        c.push('…');
        c
    }
}

/// A parsed `Content-Type` value: the media type and its parameters (RFC 2045 §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentType {
    /// `type/subtype`, lower-cased.
    pub mime_type: String,
    /// Parameters in order: names lower-cased, values unquoted and unescaped.
    pub params: Vec<(String, String)>,
}

impl ContentType {
    /// Parses a `Content-Type` header value. Parameter names are case-insensitive; values
    /// may be tokens or quoted strings with `\` escapes; a trailing `;` is tolerated.
    pub fn parse(value: &str) -> Result<ContentType, MimeError> {
        let bad = |why: &str| malformed(format!("Content-Type `{}`: {why}", clip(value)));
        let (mt, mut rest) = match value.find(';') {
            Some(i) => (&value[..i], &value[i..]),
            None => (value, ""),
        };
        let mime_type = mt.trim().to_ascii_lowercase();
        match mime_type.split_once('/') {
            Some((t, s)) if is_token(t) && is_token(s) => {}
            _ => return Err(bad("the media type must be `type/subtype`")),
        }
        let mut params = Vec::new();
        loop {
            rest = rest.trim_start();
            if rest.is_empty() {
                break;
            }
            let Some(r) = rest.strip_prefix(';') else {
                return Err(bad("parameters must be separated by `;`"));
            };
            rest = r.trim_start();
            if rest.is_empty() {
                break; // a trailing `;` is common and harmless
            }
            let eq = rest
                .find('=')
                .ok_or_else(|| bad("a parameter has no `=`"))?;
            let name = rest[..eq].trim();
            if !is_token(name) {
                return Err(bad("a parameter name is not a token"));
            }
            rest = rest[eq + 1..].trim_start();
            let val;
            if let Some(r) = rest.strip_prefix('"') {
                let mut out = String::new();
                let mut chars = r.char_indices();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some((_, e)) => out.push(e),
                            None => break,
                        },
                        '"' => {
                            end = Some(i);
                            break;
                        }
                        c => out.push(c),
                    }
                }
                let end = end.ok_or_else(|| bad("a quoted parameter value is not closed"))?;
                rest = &r[end + 1..];
                val = out;
            } else {
                let end = rest.find([';', ' ', '\t']).unwrap_or(rest.len());
                val = rest[..end].to_string();
                if val.is_empty() {
                    return Err(bad("a parameter value is empty"));
                }
                rest = &rest[end..];
            }
            params.push((name.to_ascii_lowercase(), val));
        }
        Ok(ContentType { mime_type, params })
    }

    /// The value of parameter `name` (case-insensitive), if present.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `boundary` parameter.
    pub fn boundary(&self) -> Option<&str> {
        self.param("boundary")
    }

    /// The `type` parameter (the root part's media type in `multipart/related`).
    pub fn root_type(&self) -> Option<&str> {
        self.param("type")
    }

    /// The `start` parameter (the root part's Content-ID), if present.
    pub fn start(&self) -> Option<&str> {
        self.param("start")
    }

    /// The `start-info` parameter, if present.
    pub fn start_info(&self) -> Option<&str> {
        self.param("start-info")
    }

    /// Whether this is `multipart/related`.
    pub fn is_multipart_related(&self) -> bool {
        self.mime_type == "multipart/related"
    }
}

impl fmt::Display for ContentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.mime_type)?;
        for (n, v) in &self.params {
            if is_token(v) {
                write!(f, "; {n}={v}")?;
            } else {
                write!(
                    f,
                    "; {n}=\"{}\"",
                    v.replace('\\', "\\\\").replace('"', "\\\"")
                )?;
            }
        }
        Ok(())
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b))
}

/// Normalises a Content-ID: surrounding whitespace and angle brackets removed.
pub(crate) fn normalize_content_id(id: &str) -> &str {
    let id = id.trim();
    id.strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(id)
        .trim()
}

/// The Content-ID a `cid:` URI names (RFC 2392): scheme removed (case-insensitive),
/// percent-escapes decoded. `None` when `href` is not a `cid:` URI or decodes to
/// invalid UTF-8.
pub(crate) fn content_id_from_href(href: &str) -> Option<String> {
    let href = href.trim();
    if href.len() < 4 || !href[..4].eq_ignore_ascii_case("cid:") {
        return None;
    }
    let decoded = percent_encoding::percent_decode_str(&href[4..])
        .decode_utf8()
        .ok()?;
    Some(normalize_content_id(&decoded).to_string())
}

// ---------------------------------------------------------------------------------------
// The parsed package
// ---------------------------------------------------------------------------------------

/// A part's `Content-Transfer-Encoding` (RFC 2045 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferEncoding {
    /// `binary` (also the default when the header is absent).
    Binary,
    /// `8bit`.
    EightBit,
    /// `7bit`.
    SevenBit,
    /// `base64`, decoded while streaming.
    Base64,
}

impl TransferEncoding {
    fn from_header(v: Option<&str>) -> Result<Self, MimeError> {
        let Some(v) = v else {
            return Ok(TransferEncoding::Binary);
        };
        match v.trim().to_ascii_lowercase().as_str() {
            "binary" => Ok(TransferEncoding::Binary),
            "8bit" => Ok(TransferEncoding::EightBit),
            "7bit" => Ok(TransferEncoding::SevenBit),
            "base64" => Ok(TransferEncoding::Base64),
            other => Err(MimeError::Unsupported(format!(
                "Content-Transfer-Encoding `{}`; send parts as binary or base64",
                clip(other)
            ))),
        }
    }

    /// The header value as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            TransferEncoding::Binary => "binary",
            TransferEncoding::EightBit => "8bit",
            TransferEncoding::SevenBit => "7bit",
            TransferEncoding::Base64 => "base64",
        }
    }
}

/// The root part: the SOAP envelope, held in memory.
#[derive(Debug, Clone)]
pub struct RootPart {
    /// The part's headers (empty for a bare envelope).
    pub headers: Headers,
    /// The normalised Content-ID, if the part has one.
    pub content_id: Option<String>,
    /// The part's `Content-Type` value (`application/soap+xml` when absent).
    pub content_type: String,
    /// The envelope bytes, transfer encoding undone.
    pub content: Vec<u8>,
}

#[derive(Debug)]
enum Storage {
    Memory(Vec<u8>),
    /// A spill file, and the bytes it holds against the spool budget.
    File {
        file: tempfile::NamedTempFile,
        _charge: SpoolCharge,
    },
    /// Taken over by a [`PartTap`] as it arrived: what the tap made of it, until its
    /// owner takes that ([`Attachment::take_tapped`]).
    Tapped(Mutex<Option<Box<dyn Any + Send>>>),
}

/// Takes attachments over while a package is parsed ([`MimePackage::read_http_body_tapped`]):
/// an attachment that outgrows memory ([`MimeLimits::spill_threshold`]) is offered to the
/// tap before it would be spilled to a file. The receiver decrypts encrypted payloads so,
/// as they arrive ([`crate::receive::EarlyDecryption`]).
pub trait PartTap {
    /// Attachment `content_id` of the package whose `root` part came before it has
    /// outgrown memory; `head` is its content so far (transfer encoding undone). `Some`
    /// takes the part: the rest of its content goes to the returned [`TappedPart`], not
    /// to a file. An attachment that comes before the root (a `start` parameter naming a
    /// later part) is never offered.
    fn take(
        &mut self,
        root: &RootPart,
        content_id: &str,
        head: &[u8],
    ) -> Option<Box<dyn TappedPart>>;
}

/// The receiving end of an attachment a [`PartTap`] took. It judges the content itself:
/// the MIME reader only checks the package's framing and limits.
pub trait TappedPart: Send {
    /// The next bytes of the part's content (transfer encoding undone).
    fn write(&mut self, data: &[u8]);

    /// The part ended: what the tap made of it, for [`Attachment::take_tapped`].
    fn finish(self: Box<Self>) -> Box<dyn Any + Send>;
}

/// One attachment part. Its content lives in memory or, past the spill threshold, in a
/// temporary file deleted when the attachment is dropped.
#[derive(Debug)]
pub struct Attachment {
    headers: Headers,
    content_id: Option<String>,
    content_type: String,
    transfer_encoding: TransferEncoding,
    len: u64,
    storage: Storage,
}

impl Attachment {
    /// The part's headers, as received.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The normalised Content-ID (angle brackets removed), if the part has one.
    pub fn content_id(&self) -> Option<&str> {
        self.content_id.as_deref()
    }

    /// The part's `Content-Type` value (`application/octet-stream` when absent).
    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    /// The part's transfer encoding.
    pub fn transfer_encoding(&self) -> TransferEncoding {
        self.transfer_encoding
    }

    /// Length of the content in bytes (transfer encoding undone; still compressed and
    /// encrypted if it was sent so).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the content is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// SHA-256 of the content as carried (transfer encoding undone, nothing else), read
    /// when asked: the receiving pipeline digests what it needs (the decrypted part) and
    /// never this, so parsing does not hash every attachment for nothing.
    pub fn sha256(&self) -> io::Result<[u8; 32]> {
        let mut body = self.body()?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match body.read(&mut buf) {
                Ok(0) => return Ok(hasher.finish()),
                Ok(n) => hasher.update(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// [`Attachment::sha256`] as lower-case hex.
    pub fn sha256_hex(&self) -> io::Result<String> {
        Ok(hex(&self.sha256()?))
    }

    /// Whether the content was moved to a temporary file.
    pub fn is_spilled(&self) -> bool {
        matches!(self.storage, Storage::File { .. })
    }

    /// Whether a [`PartTap`] took the content as it arrived: it is then not kept here, and
    /// [`body`](Self::body) fails.
    pub fn is_tapped(&self) -> bool {
        matches!(self.storage, Storage::Tapped(_))
    }

    /// What the [`PartTap`] that took this part made of it, once: `None` for a part no
    /// tap took, or when it was already taken.
    pub fn take_tapped(&self) -> Option<Box<dyn Any + Send>> {
        match &self.storage {
            Storage::Tapped(made) => made.lock().unwrap_or_else(|p| p.into_inner()).take(),
            _ => None,
        }
    }

    /// Opens a reader over the content. Each call starts from the beginning.
    pub fn body(&self) -> io::Result<Box<dyn Read + Send + '_>> {
        match &self.storage {
            Storage::Memory(v) => Ok(Box::new(v.as_slice())),
            Storage::File { file: f, .. } => {
                let mut file = f.reopen()?;
                file.rewind()?;
                Ok(Box::new(io::BufReader::with_capacity(64 * 1024, file)))
            }
            Storage::Tapped(_) => Err(io::Error::other(
                "the part's content was taken over as it arrived (decrypted into a file of \
                 its own), and is not kept as received",
            )),
        }
    }
}

/// Lower-case hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    ::hex::encode(bytes)
}

/// A parsed AS4 MIME package: the root SOAP part and the attachments.
#[derive(Debug)]
pub struct MimePackage {
    content_type: ContentType,
    root: RootPart,
    attachments: Vec<Attachment>,
}

impl MimePackage {
    /// Parses a package from `reader`, whose top-level `Content-Type` header value is
    /// `content_type`. Reads until the closing delimiter and then to the end of input.
    pub fn parse<R: Read>(
        reader: R,
        content_type: &str,
        limits: &MimeLimits,
    ) -> Result<MimePackage, MimeError> {
        MimePackage::parse_tapped(reader, content_type, limits, None)
    }

    /// [`parse`](Self::parse), offering large attachments to `tap`.
    fn parse_tapped<R: Read>(
        mut reader: R,
        content_type: &str,
        limits: &MimeLimits,
        mut tap: Option<&mut (dyn PartTap + '_)>,
    ) -> Result<MimePackage, MimeError> {
        let ct = ContentType::parse(content_type)?;
        let mut parser = MimeParser::new(&ct, limits.clone())?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            parser.feed_tapped(&buf[..n], tap.as_deref_mut())?;
        }
        parser.finish()
    }

    /// Reads an HTTP body whose `Content-Type` is `content_type`: a `multipart/related`
    /// package, or a bare SOAP envelope (`application/soap+xml`, `text/xml`; receipts, error
    /// signals and pull requests usually come so), bounded by `limits.max_root_size`.
    pub fn read_http_body<R: Read>(
        reader: R,
        content_type: &str,
        limits: &MimeLimits,
    ) -> Result<MimePackage, MimeError> {
        MimePackage::read_http_body_tapped(reader, content_type, limits, None)
    }

    /// [`read_http_body`](Self::read_http_body), offering each attachment that outgrows
    /// memory to `tap` ([`PartTap`]).
    pub fn read_http_body_tapped<R: Read>(
        mut reader: R,
        content_type: &str,
        limits: &MimeLimits,
        tap: Option<&mut (dyn PartTap + '_)>,
    ) -> Result<MimePackage, MimeError> {
        let ct = ContentType::parse(content_type)?;
        if ct.mime_type.starts_with("multipart/") {
            return MimePackage::parse_tapped(reader, content_type, limits, tap);
        }
        if !matches!(ct.mime_type.as_str(), "application/soap+xml" | "text/xml") {
            return Err(MimeError::Unsupported(format!(
                "Content-Type `{}` is neither multipart/related nor a SOAP envelope",
                ct.mime_type
            )));
        }
        let max = limits.max_root_size;
        let mut content = Vec::new();
        let n = reader
            .by_ref()
            .take(max as u64 + 1)
            .read_to_end(&mut content)?;
        if n > max {
            return Err(MimeError::LimitExceeded(format!(
                "the SOAP envelope is larger than {max} bytes"
            )));
        }
        Ok(MimePackage::single(ct, Headers::new(), content))
    }

    /// A package of just a root part: a bare SOAP envelope sent without MIME.
    pub fn single(content_type: ContentType, headers: Headers, content: Vec<u8>) -> MimePackage {
        let root = RootPart {
            content_id: headers
                .get("Content-ID")
                .map(|c| normalize_content_id(c).to_string()),
            content_type: content_type.to_string(),
            headers,
            content,
        };
        MimePackage {
            content_type,
            root,
            attachments: Vec::new(),
        }
    }

    /// The top-level Content-Type.
    pub fn content_type(&self) -> &ContentType {
        &self.content_type
    }

    /// The root part (the SOAP envelope).
    pub fn root(&self) -> &RootPart {
        &self.root
    }

    /// The attachments, in the order they were received.
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// The attachment with this Content-ID (angle brackets optional).
    pub(crate) fn attachment_by_content_id(&self, id: &str) -> Option<&Attachment> {
        let id = normalize_content_id(id);
        self.attachments
            .iter()
            .find(|a| a.content_id.as_deref() == Some(id))
    }

    /// The attachment a `cid:` href (from `eb:PartInfo/@href`) names, percent-decoding it.
    pub fn attachment_by_href(&self, href: &str) -> Option<&Attachment> {
        let id = content_id_from_href(href)?;
        self.attachment_by_content_id(&id)
    }
}

// ---------------------------------------------------------------------------------------
// The push parser
// ---------------------------------------------------------------------------------------

/// Incremental `multipart/related` reader: feed it chunks, then call
/// [`MimeParser::finish`]. See the module documentation for the design.
pub struct MimeParser {
    limits: MimeLimits,
    start: Option<String>,
    boundary: Vec<u8>,
    /// `\n--boundary`, or `\r\n--boundary` once the message's line ending is known.
    delimiter: Vec<u8>,
    finder: memmem::Finder<'static>,
    buf: Vec<u8>,
    pos: usize,
    state: State,
    /// Whether preamble bytes were already discarded (then `--boundary` only counts
    /// after a line ending).
    preamble_skipped: bool,
    total: u64,
    parts: usize,
    current: Option<PartSink>,
    root: Option<RootPart>,
    attachments: Vec<Attachment>,
    /// Every Content-ID seen so far, to refuse duplicates in constant time per part.
    seen_ids: HashSet<String>,
    content_type: ContentType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Preamble,
    /// Just after `--boundary`: either `--` (close) or padding and a line ending.
    AfterDelimiter,
    Headers,
    Body,
    Epilogue,
}

impl fmt::Debug for MimeParser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MimeParser")
            .field("state", &self.state)
            .field("parts", &self.parts)
            .field("total", &self.total)
            .finish()
    }
}

impl MimeParser {
    /// A parser for a package with top-level Content-Type `ct`, which must be
    /// `multipart/related` with a valid `boundary`.
    pub fn new(ct: &ContentType, limits: MimeLimits) -> Result<MimeParser, MimeError> {
        if !ct.mime_type.starts_with("multipart/") {
            return Err(malformed(format!(
                "Content-Type is `{}`, not multipart/related",
                ct.mime_type
            )));
        }
        let boundary = ct.boundary().ok_or_else(|| {
            malformed("the multipart Content-Type has no boundary parameter; add boundary=\"…\"")
        })?;
        // RFC 2046 §5.1.1: 1 to 70 characters.
        if boundary.is_empty() || boundary.len() > 70 || boundary.ends_with(' ') {
            return Err(malformed(format!(
                "boundary `{}` must be 1 to 70 characters and not end in a space",
                clip(boundary)
            )));
        }
        let boundary = boundary.as_bytes().to_vec();
        let mut delimiter = b"\n--".to_vec();
        delimiter.extend_from_slice(&boundary);
        Ok(MimeParser {
            limits,
            start: ct.start().map(|s| normalize_content_id(s).to_string()),
            finder: memmem::Finder::new(&delimiter).into_owned(),
            delimiter,
            boundary,
            buf: Vec::new(),
            pos: 0,
            state: State::Preamble,
            preamble_skipped: false,
            total: 0,
            parts: 0,
            current: None,
            root: None,
            attachments: Vec::new(),
            seen_ids: HashSet::new(),
            content_type: ct.clone(),
        })
    }

    /// Feeds the next chunk of the body.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), MimeError> {
        self.feed_tapped(data, None)
    }

    /// [`feed`](Self::feed), offering attachments that outgrow memory to `tap`
    /// ([`PartTap`]); give the same tap with every chunk.
    pub fn feed_tapped(
        &mut self,
        data: &[u8],
        tap: Option<&mut (dyn PartTap + '_)>,
    ) -> Result<(), MimeError> {
        self.total += data.len() as u64;
        if self.total > self.limits.max_total_size {
            return Err(MimeError::LimitExceeded(format!(
                "the package is larger than {} bytes",
                self.limits.max_total_size
            )));
        }
        if self.state == State::Epilogue {
            return Ok(()); // the epilogue is ignored (RFC 2046 §5.1.1)
        }
        // Compact the window before growing it.
        if self.pos > 0 && (self.pos == self.buf.len() || self.pos > 64 * 1024) {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
        self.process(tap)
    }

    /// Ends the input and returns the package.
    pub fn finish(mut self) -> Result<MimePackage, MimeError> {
        if self.state != State::Epilogue {
            return Err(malformed(match self.state {
                State::Preamble => format!(
                    "no part starts with the boundary `--{}`; check the boundary parameter",
                    String::from_utf8_lossy(&self.boundary)
                ),
                _ => "the input ends before the closing delimiter `--boundary--`; the message \
                      is truncated"
                    .to_string(),
            }));
        }
        let root = match self.root.take() {
            Some(r) => r,
            None => {
                return Err(malformed(match &self.start {
                    Some(s) => {
                        format!("the start parameter names <{s}> but no part has that Content-ID")
                    }
                    None => "the package has no parts".to_string(),
                }))
            }
        };
        Ok(MimePackage {
            content_type: self.content_type,
            root,
            attachments: self.attachments,
        })
    }

    fn process(&mut self, mut tap: Option<&mut (dyn PartTap + '_)>) -> Result<(), MimeError> {
        loop {
            let progressed = match self.state {
                State::Preamble => self.step_preamble()?,
                State::AfterDelimiter => self.step_after_delimiter()?,
                State::Headers => self.step_headers()?,
                State::Body => self.step_body(tap.as_deref_mut())?,
                State::Epilogue => {
                    self.buf.clear();
                    self.pos = 0;
                    return Ok(());
                }
            };
            if !progressed {
                return Ok(());
            }
        }
    }

    fn window(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Finds the first `--boundary` at the start of the body or of a line.
    fn step_preamble(&mut self) -> Result<bool, MimeError> {
        let dash_boundary_len = self.boundary.len() + 2;
        let w = &self.buf[self.pos..];
        if !self.preamble_skipped {
            let prefix = w.len().min(dash_boundary_len);
            if b"--"
                .iter()
                .chain(&self.boundary)
                .take(prefix)
                .eq(&w[..prefix])
            {
                if prefix < dash_boundary_len {
                    return Ok(false); // could still be the boundary; wait for more
                }
                self.pos += dash_boundary_len;
                self.state = State::AfterDelimiter;
                return Ok(true);
            }
        }
        match self.finder.find(w) {
            Some(i) => {
                // `\n--boundary`: the line ending style is decided in AfterDelimiter.
                self.pos += i + self.delimiter.len();
                self.state = State::AfterDelimiter;
                Ok(true)
            }
            None => {
                let keep = self.delimiter.len().min(w.len());
                if keep < w.len() {
                    self.preamble_skipped = true;
                }
                self.pos = self.buf.len() - keep;
                Ok(false)
            }
        }
    }

    fn step_after_delimiter(&mut self) -> Result<bool, MimeError> {
        let w = self.window();
        if w.len() < 2 {
            return Ok(false);
        }
        if w.starts_with(b"--") {
            if self.current.is_none() && self.parts == 0 {
                return Err(malformed(
                    "the package has no parts before its closing delimiter",
                ));
            }
            self.state = State::Epilogue;
            self.buf.clear();
            self.pos = 0;
            return Ok(true);
        }
        // Transport padding, then a line ending.
        let Some(nl) = memchr::memchr(b'\n', w) else {
            if w.len() > 1024 {
                return Err(malformed(
                    "text after a boundary is not followed by a line ending; the boundary \
                     occurs inside a line",
                ));
            }
            return Ok(false);
        };
        let line = &w[..nl];
        let crlf = line.last() == Some(&b'\r');
        let padding = if crlf { &line[..line.len() - 1] } else { line };
        if !padding.iter().all(|&b| b == b' ' || b == b'\t') {
            return Err(malformed(format!(
                "unexpected text `{}` after a boundary delimiter",
                clip(&String::from_utf8_lossy(padding))
            )));
        }
        if self.parts == 0 && crlf {
            // The first boundary line sets the message's line ending.
            let mut d = b"\r\n--".to_vec();
            d.extend_from_slice(&self.boundary);
            self.finder = memmem::Finder::new(&d).into_owned();
            self.delimiter = d;
        }
        self.pos += nl + 1;
        self.parts += 1;
        if self.parts > self.limits.max_parts {
            return Err(MimeError::LimitExceeded(format!(
                "more than {} parts in the package",
                self.limits.max_parts
            )));
        }
        self.state = State::Headers;
        Ok(true)
    }

    fn step_headers(&mut self) -> Result<bool, MimeError> {
        let w = self.window();
        // The block ends at the first empty line; a part may also have no headers at all.
        let end = if w.starts_with(b"\r\n") {
            Some((0, 2))
        } else if w.starts_with(b"\n") {
            Some((0, 1))
        } else {
            find_blank_line(w)
        };
        let Some((block_len, sep_len)) = end else {
            if w.len() > self.limits.max_header_block {
                return Err(MimeError::LimitExceeded(format!(
                    "a part's header block is larger than {} bytes",
                    self.limits.max_header_block
                )));
            }
            return Ok(false);
        };
        if block_len > self.limits.max_header_block {
            return Err(MimeError::LimitExceeded(format!(
                "a part's header block is larger than {} bytes",
                self.limits.max_header_block
            )));
        }
        let headers = Headers::parse_block(&w[..block_len])?;
        self.pos += block_len + sep_len;
        self.begin_part(headers)?;
        self.state = State::Body;
        Ok(true)
    }

    fn begin_part(&mut self, headers: Headers) -> Result<(), MimeError> {
        let content_id = headers
            .get("Content-ID")
            .map(|c| normalize_content_id(c).to_string());
        if let Some(id) = &content_id {
            if id.is_empty() {
                return Err(malformed("a part has an empty Content-ID"));
            }
            if !self.seen_ids.insert(id.clone()) {
                return Err(malformed(format!(
                    "two parts have the Content-ID <{id}>; each Content-ID must be unique"
                )));
            }
        }
        let is_root = self.root.is_none()
            && match &self.start {
                Some(s) => content_id.as_deref() == Some(s.as_str()),
                None => self.attachments.is_empty(),
            };
        let encoding = TransferEncoding::from_header(headers.get("Content-Transfer-Encoding"))?;
        if let Some(cl) = headers.get("Content-Length") {
            let declared: u64 = cl
                .trim()
                .parse()
                .map_err(|_| malformed(format!("Content-Length `{}` is not a number", clip(cl))))?;
            let max = if is_root {
                self.limits.max_root_size as u64
            } else {
                self.limits.max_part_size
            };
            if declared > max {
                return Err(MimeError::LimitExceeded(format!(
                    "a part declares Content-Length {declared}, more than the limit of {max} bytes"
                )));
            }
        }
        self.current = Some(PartSink::new(headers, content_id, encoding, is_root));
        Ok(())
    }

    fn step_body(&mut self, tap: Option<&mut (dyn PartTap + '_)>) -> Result<bool, MimeError> {
        let start = self.pos;
        let found = self.finder.find(&self.buf[start..]);
        let (emit_end, next) = match found {
            Some(i) => (start + i, Some(start + i + self.delimiter.len())),
            None => {
                // Keep what could be the start of a delimiter straddling chunks.
                let keep = (self.delimiter.len() - 1).min(self.buf.len() - start);
                (self.buf.len() - keep, None)
            }
        };
        if emit_end > start {
            let sink = self.current.as_mut().expect("a part is open in Body state");
            let tap = tap.zip(self.root.as_ref());
            sink.write(&self.buf[start..emit_end], &self.limits, tap)?;
            self.pos = emit_end;
        }
        match next {
            Some(n) => {
                self.pos = n;
                let sink = self.current.take().expect("a part is open in Body state");
                self.close_part(sink)?;
                self.state = State::AfterDelimiter;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn close_part(&mut self, sink: PartSink) -> Result<(), MimeError> {
        let declared = sink
            .headers
            .get("Content-Length")
            .map(str::trim)
            .map(str::to_owned);
        let done = sink.finish()?;
        if let Some(d) = declared {
            // Content-Length is not a MIME header, but if a sender gives one it must hold.
            if d.parse::<u64>().ok() != Some(done.raw_len) {
                return Err(malformed(format!(
                    "a part declares Content-Length {d} but carries {} bytes",
                    done.raw_len
                )));
            }
        }
        match done.kind {
            Finished::Root(root) => self.root = Some(root),
            Finished::Attachment(a) => self.attachments.push(a),
        }
        Ok(())
    }
}

/// Finds `\n\r\n` or `\n\n` (the end of a header block); returns (block length incl. its
/// last line ending, separator length).
fn find_blank_line(w: &[u8]) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(i) = memchr::memchr(b'\n', &w[from..]) {
        let at = from + i + 1;
        if w[at..].starts_with(b"\n") {
            return Some((at, 1));
        }
        if w[at..].starts_with(b"\r\n") {
            return Some((at, 2));
        }
        from = at;
    }
    None
}

// ---------------------------------------------------------------------------------------
// Part sinks: transfer decoding, counting, memory/file storage
// ---------------------------------------------------------------------------------------

struct PartSink {
    headers: Headers,
    content_id: Option<String>,
    encoding: TransferEncoding,
    is_root: bool,
    raw_len: u64,
    len: u64,
    memory: Vec<u8>,
    file: Option<io::BufWriter<tempfile::NamedTempFile>>,
    /// Where a part a [`PartTap`] took goes instead of `memory` or `file`.
    tapped: Option<Box<dyn TappedPart>>,
    charge: SpoolCharge,
    b64: Base64Stream,
}

enum Finished {
    Root(RootPart),
    Attachment(Attachment),
}

struct FinishedPart {
    raw_len: u64,
    kind: Finished,
}

impl PartSink {
    fn new(
        headers: Headers,
        content_id: Option<String>,
        encoding: TransferEncoding,
        is_root: bool,
    ) -> Self {
        PartSink {
            headers,
            content_id,
            encoding,
            is_root,
            raw_len: 0,
            len: 0,
            memory: Vec::new(),
            file: None,
            tapped: None,
            charge: SpoolCharge::default(),
            b64: Base64Stream::default(),
        }
    }

    /// Takes the next raw bytes of the part; `tap`, with the root part read before this
    /// one, is offered the part if it outgrows memory.
    fn write(
        &mut self,
        raw: &[u8],
        limits: &MimeLimits,
        tap: Option<(&mut (dyn PartTap + '_), &RootPart)>,
    ) -> Result<(), MimeError> {
        self.raw_len += raw.len() as u64;
        if self.encoding == TransferEncoding::Base64 {
            let mut decoded = Vec::with_capacity(raw.len() / 4 * 3 + 3);
            self.b64.decode(raw, &mut decoded)?;
            self.store(&decoded, limits, tap)
        } else {
            self.store(raw, limits, tap)
        }
    }

    fn store(
        &mut self,
        data: &[u8],
        limits: &MimeLimits,
        tap: Option<(&mut (dyn PartTap + '_), &RootPart)>,
    ) -> Result<(), MimeError> {
        if data.is_empty() {
            return Ok(());
        }
        self.len += data.len() as u64;
        if self.is_root {
            if self.len > limits.max_root_size as u64 {
                return Err(MimeError::LimitExceeded(format!(
                    "the root part (SOAP envelope) is larger than {} bytes",
                    limits.max_root_size
                )));
            }
        } else if self.len > limits.max_part_size {
            return Err(MimeError::LimitExceeded(format!(
                "an attachment is larger than {} bytes",
                limits.max_part_size
            )));
        }
        if let Some(tapped) = &mut self.tapped {
            tapped.write(data);
            return Ok(());
        }
        if let Some(f) = &mut self.file {
            self.charge.grow(data.len() as u64)?;
            f.write_all(data)?;
            return Ok(());
        }
        if !self.is_root && self.memory.len() + data.len() > limits.spill_threshold {
            // Offered to the tap first (it has seen the root): taken, nothing is spilled.
            let taken = match (tap, &self.content_id) {
                (Some((tap, root)), Some(id)) => tap.take(root, id, &self.memory),
                _ => None,
            };
            if let Some(mut tapped) = taken {
                tapped.write(data);
                self.memory = Vec::new();
                self.tapped = Some(tapped);
                return Ok(());
            }
            self.charge = SpoolCharge::new(limits.spool_budget.as_ref());
            self.charge.grow((self.memory.len() + data.len()) as u64)?;
            let tmp = match &limits.temp_dir {
                Some(d) => tempfile::NamedTempFile::new_in(d)?,
                None => tempfile::NamedTempFile::new()?,
            };
            let mut f = io::BufWriter::with_capacity(256 * 1024, tmp);
            f.write_all(&self.memory)?;
            f.write_all(data)?;
            self.memory = Vec::new();
            self.file = Some(f);
            return Ok(());
        }
        self.memory.extend_from_slice(data);
        Ok(())
    }

    fn finish(mut self) -> Result<FinishedPart, MimeError> {
        if self.encoding == TransferEncoding::Base64 {
            let mut tail = Vec::new();
            self.b64.finish(&mut tail)?;
            // Limits were checked on every other byte; the tail is at most 2 bytes.
            self.len += tail.len() as u64;
            match (&mut self.tapped, &mut self.file) {
                (Some(tapped), _) => tapped.write(&tail),
                (None, Some(f)) => {
                    self.charge.grow(tail.len() as u64)?;
                    f.write_all(&tail)?
                }
                (None, None) => self.memory.extend_from_slice(&tail),
            }
        }
        let content_type = self.headers.get("Content-Type").map(str::to_owned);
        let kind = if self.is_root {
            Finished::Root(RootPart {
                content_type: content_type.unwrap_or_else(|| "application/soap+xml".into()),
                content_id: self.content_id,
                headers: self.headers,
                content: self.memory,
            })
        } else {
            let storage = match (self.tapped, self.file) {
                (Some(tapped), _) => Storage::Tapped(Mutex::new(Some(tapped.finish()))),
                (None, Some(f)) => {
                    let mut tmp = f.into_inner().map_err(|e| e.into_error())?;
                    tmp.flush()?;
                    Storage::File {
                        file: tmp,
                        _charge: self.charge,
                    }
                }
                (None, None) => Storage::Memory(self.memory),
            };
            Finished::Attachment(Attachment {
                content_type: content_type.unwrap_or_else(|| "application/octet-stream".into()),
                content_id: self.content_id,
                headers: self.headers,
                transfer_encoding: self.encoding,
                len: self.len,
                storage,
            })
        };
        Ok(FinishedPart {
            raw_len: self.raw_len,
            kind,
        })
    }
}

/// Streaming base64 decoder: skips line breaks and whitespace, decodes whole quanta, and
/// refuses data after the padding.
#[derive(Default)]
struct Base64Stream {
    pending: Vec<u8>,
    ended: bool,
}

impl Base64Stream {
    fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), MimeError> {
        for &b in input {
            if b.is_ascii_whitespace() {
                continue;
            }
            if self.ended {
                return Err(malformed(
                    "base64 part has data after its final `=` padding",
                ));
            }
            if !(b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=') {
                return Err(malformed(format!(
                    "base64 part contains the byte 0x{b:02x}, which is not base64"
                )));
            }
            self.pending.push(b);
            if self.pending.len() >= 4096 {
                self.flush_quanta(out)?;
            }
        }
        self.flush_quanta(out)
    }

    fn flush_quanta(&mut self, out: &mut Vec<u8>) -> Result<(), MimeError> {
        let whole = self.pending.len() / 4 * 4;
        if whole == 0 {
            return Ok(());
        }
        let chunk = &self.pending[..whole];
        if let Some(p) = chunk.iter().position(|&b| b == b'=') {
            // Padding may only appear in the last quantum.
            if p < whole - 4 {
                return Err(malformed(
                    "base64 part has `=` padding in the middle of its data",
                ));
            }
            self.ended = true;
        }
        let start = out.len();
        out.resize(start + whole / 4 * 3, 0);
        let n = base64::engine::general_purpose::STANDARD
            .decode_slice(chunk, &mut out[start..])
            .map_err(|e| malformed(format!("base64 part is not valid base64: {e}")))?;
        out.truncate(start + n);
        self.pending.drain(..whole);
        if self.ended && !self.pending.is_empty() {
            return Err(malformed(
                "base64 part has data after its final `=` padding",
            ));
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), MimeError> {
        self.flush_quanta(out)?;
        if !self.pending.is_empty() {
            return Err(malformed(
                "base64 part ends with an incomplete quantum (length not a multiple of 4)",
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The writer
// ---------------------------------------------------------------------------------------

/// Media type of the root part written by [`MimeWriter`].
pub(crate) const SOAP12_ROOT_CONTENT_TYPE: &str = "application/soap+xml; charset=UTF-8";

/// The names a `multipart/related` package is written under: its boundary and its root
/// part's Content-ID. Known before the first byte, so the package's `Content-Type` can be
/// sent ahead of a body that is still being written.
#[derive(Debug, Clone)]
pub struct PackageIds {
    boundary: String,
    root_content_id: String,
}

impl PackageIds {
    /// A random boundary and a random root Content-ID.
    pub fn random() -> PackageIds {
        PackageIds {
            boundary: format!("MIMEBoundary_{}", uuid::Uuid::new_v4().simple()),
            root_content_id: format!("root-{}@varti", uuid::Uuid::new_v4()),
        }
    }

    /// The boundary.
    pub fn boundary(&self) -> &str {
        &self.boundary
    }

    /// The root part's Content-ID (without angle brackets).
    pub fn root_content_id(&self) -> &str {
        &self.root_content_id
    }

    /// The top-level header value:
    /// `multipart/related; type="application/soap+xml"; boundary="…"; start="<…>"`.
    pub fn content_type(&self) -> String {
        format!(
            "multipart/related; type=\"application/soap+xml\"; boundary=\"{}\"; start=\"<{}>\"",
            self.boundary, self.root_content_id
        )
    }
}

/// Streams a `multipart/related` AS4 package: call [`MimeWriter::write_root`] once, then
/// [`MimeWriter::write_attachment`] per payload, then [`MimeWriter::finish`].
#[derive(Debug)]
pub struct MimeWriter<W: Write> {
    out: W,
    ids: PackageIds,
    root_written: bool,
    content_ids: Vec<String>,
}

impl<W: Write> MimeWriter<W> {
    /// A writer with a random boundary and a random root Content-ID.
    pub fn new(out: W) -> Self {
        MimeWriter::with_ids(out, PackageIds::random())
    }

    /// A writer under names chosen beforehand.
    pub fn with_ids(out: W, ids: PackageIds) -> Self {
        MimeWriter {
            out,
            ids,
            root_written: false,
            content_ids: Vec::new(),
        }
    }

    /// The boundary in use.
    pub fn boundary(&self) -> &str {
        self.ids.boundary()
    }

    /// The root part's Content-ID (without angle brackets).
    pub fn root_content_id(&self) -> &str {
        self.ids.root_content_id()
    }

    /// The top-level header value (see [`PackageIds::content_type`]).
    pub fn content_type(&self) -> String {
        self.ids.content_type()
    }

    /// Writes the root part (the SOAP 1.2 envelope). Must be called first, exactly once.
    pub fn write_root(&mut self, envelope: &[u8]) -> io::Result<()> {
        if self.root_written {
            return Err(invalid_input("the root part was already written"));
        }
        write!(
            self.out,
            "--{}\r\nContent-Type: {SOAP12_ROOT_CONTENT_TYPE}\r\nContent-Transfer-Encoding: binary\r\nContent-ID: <{}>\r\n\r\n",
            self.ids.boundary, self.ids.root_content_id
        )?;
        self.out.write_all(envelope)?;
        self.out.write_all(b"\r\n")?;
        self.root_written = true;
        Ok(())
    }

    /// Writes one attachment, copying its content from `body`; returns the bytes copied.
    /// `content_id` may be given with or without angle brackets; `extra_headers` are
    /// written after the standard ones (values must not contain line breaks).
    pub fn write_attachment(
        &mut self,
        content_id: &str,
        content_type: &str,
        extra_headers: &[(&str, &str)],
        body: &mut dyn Read,
    ) -> io::Result<u64> {
        self.write_attachment_with(content_id, content_type, extra_headers, &mut |out| {
            io::copy(body, out)
        })
    }

    /// Writes one attachment whose content `fill` writes (encrypting it on the way, say);
    /// returns what `fill` returns. Otherwise as [`write_attachment`](Self::write_attachment).
    pub fn write_attachment_with(
        &mut self,
        content_id: &str,
        content_type: &str,
        extra_headers: &[(&str, &str)],
        fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<u64>,
    ) -> io::Result<u64> {
        if !self.root_written {
            return Err(invalid_input("write the root part before any attachment"));
        }
        let id = normalize_content_id(content_id);
        if id.is_empty()
            || id == self.ids.root_content_id
            || self.content_ids.iter().any(|c| c == id)
        {
            return Err(invalid_input(format!(
                "attachment Content-ID `{id}` is empty or already used"
            )));
        }
        check_header_value(id)?;
        check_header_value(content_type)?;
        for (n, v) in extra_headers {
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                return Err(invalid_input(format!("`{n}` is not a valid header name")));
            }
            check_header_value(v)?;
        }
        write!(
            self.out,
            "--{}\r\nContent-Type: {content_type}\r\nContent-Transfer-Encoding: binary\r\nContent-ID: <{id}>\r\n",
            self.ids.boundary
        )?;
        for (n, v) in extra_headers {
            write!(self.out, "{n}: {v}\r\n")?;
        }
        self.out.write_all(b"\r\n")?;
        let n = fill(&mut self.out)?;
        self.out.write_all(b"\r\n")?;
        self.content_ids.push(id.to_string());
        Ok(n)
    }

    /// Writes the closing delimiter and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.root_written {
            return Err(invalid_input("a package needs a root part"));
        }
        write!(self.out, "--{}--\r\n", self.ids.boundary)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

fn invalid_input(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

fn check_header_value(v: &str) -> io::Result<()> {
    if v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(invalid_input(format!(
            "header value `{}` contains a line break or NUL",
            clip(v)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_params_are_case_insensitive_and_unquoted() {
        let ct = ContentType::parse(
            "Multipart/Related; TYPE=\"application/soap+xml\"; Boundary=\"a b\\\"c\"; start=<x@y>;",
        )
        .unwrap();
        assert_eq!(ct.mime_type, "multipart/related");
        assert_eq!(ct.root_type(), Some("application/soap+xml"));
        assert_eq!(ct.boundary(), Some("a b\"c"));
        assert_eq!(ct.start(), Some("<x@y>"));
        assert!(ContentType::parse("text").is_err());
        assert!(ContentType::parse("a/b; x=\"open").is_err());
    }

    #[test]
    fn cid_hrefs_are_percent_decoded() {
        assert_eq!(content_id_from_href("CID:a%40b").as_deref(), Some("a@b"));
        assert_eq!(content_id_from_href("http://x"), None);
        assert_eq!(normalize_content_id(" <a@b> "), "a@b");
    }

    #[test]
    fn base64_stream_handles_split_quanta_and_rejects_garbage() {
        let mut s = Base64Stream::default();
        let mut out = Vec::new();
        s.decode(b"aGVs\r\nbG", &mut out).unwrap();
        s.decode(b"8=", &mut out).unwrap();
        s.finish(&mut out).unwrap();
        assert_eq!(out, b"hello");
        let mut s = Base64Stream::default();
        assert!(s.decode(b"aGVs*", &mut Vec::new()).is_err());
        let mut s = Base64Stream::default();
        assert!(s.decode(b"aGU=aGVs", &mut Vec::new()).is_err());
    }
}
