//! Message dump files: an AS4 message as captured on disk, for `varti message inspect`
//! and for the interop vectors.
//!
//! Two shapes are accepted:
//!
//! * **HTTP-style**: an optional status or request line (`HTTP/1.1 200 OK`,
//!   `POST /as4 HTTP/1.1`), header lines ending in CRLF or LF (folded lines allowed), a
//!   blank line, then the body: a `multipart/related` package or a bare SOAP envelope,
//!   depending on the `Content-Type` header. Capture tools often record
//!   `Transfer-Encoding: chunked` while saving the de-chunked body; the body is de-chunked
//!   only if it really starts with a chunk-size line.
//! * **Bare XML**: the envelope alone, possibly after a UTF-8 byte order mark, whitespace
//!   and XML comments (some vectors carry a licence comment before the XML declaration).
//!   The BOM and such leading comments are removed, so the root is well-formed XML.
//!
//! The body is streamed from the file into the [`MimeParser`](super::mime::MimeParser):
//! a dump of several gigabytes is read with the same bounded memory as a message from the
//! network. A bare envelope is held in memory, bounded by
//! [`MimeLimits::max_root_size`].

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use super::mime::{ContentType, Headers, MimeError, MimeLimits, MimePackage};

/// A message read from a dump file.
#[derive(Debug)]
pub struct MessageDump {
    /// The HTTP status or request line, if the dump has one.
    pub start_line: Option<String>,
    /// The HTTP / MIME headers (empty for a bare XML envelope).
    pub headers: Headers,
    /// The message: a MIME package, or a package with only a root part for a bare
    /// envelope.
    pub package: MimePackage,
}

/// Reads a dump file (see the module documentation).
pub fn read_dump_file(path: &Path, limits: &MimeLimits) -> Result<MessageDump, MimeError> {
    let file = File::open(path).map_err(|e| {
        MimeError::Io(io::Error::new(
            e.kind(),
            format!("cannot open {}: {e}", path.display()),
        ))
    })?;
    read_dump(BufReader::with_capacity(64 * 1024, file), limits)
}

/// Reads a dump from any buffered reader.
pub fn read_dump<R: BufRead>(mut reader: R, limits: &MimeLimits) -> Result<MessageDump, MimeError> {
    skip_bom(&mut reader)?;
    let first = peek_first_non_ws(&mut reader)?;
    if first == Some(b'<') {
        let content = read_bounded(&mut reader, limits.max_root_size)?;
        let content = strip_leading_comments(&content).to_vec();
        let ct = ContentType::parse("application/soap+xml")?;
        return Ok(MessageDump {
            start_line: None,
            headers: Headers::new(),
            package: MimePackage::single(ct, Headers::new(), content),
        });
    }
    if first.is_none() {
        return Err(MimeError::Malformed("the dump file is empty".into()));
    }

    let block = read_header_block(&mut reader, limits.max_header_block)?;
    let (start_line, block) = split_start_line(&block);
    let headers = Headers::parse_block(block)?;
    let ct_value = headers.get("Content-Type").ok_or_else(|| {
        MimeError::Malformed(
            "the dump's headers have no Content-Type; add the message's Content-Type header".into(),
        )
    })?;
    let ct = ContentType::parse(ct_value)?;

    let declared_len = match headers.get("Content-Length") {
        Some(v) => {
            let n: u64 = v.trim().parse().map_err(|_| {
                MimeError::Malformed(format!("Content-Length `{v}` is not a number"))
            })?;
            if n > limits.max_total_size {
                return Err(MimeError::LimitExceeded(format!(
                    "Content-Length {n} is more than the limit of {} bytes",
                    limits.max_total_size
                )));
            }
            Some(n)
        }
        None => None,
    };
    let chunked = headers
        .get("Transfer-Encoding")
        .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"))
        && starts_with_chunk_size(&mut reader)?;
    let mut body: Box<dyn Read + '_> = if chunked {
        Box::new(ChunkedReader::new(reader))
    } else {
        Box::new(reader)
    };
    let mut counted = CountingReader {
        inner: &mut body,
        count: 0,
    };

    let package = if ct.mime_type.starts_with("multipart/") {
        MimePackage::parse(&mut counted, ct_value, limits)?
    } else {
        let content = read_bounded(&mut counted, limits.max_root_size)?;
        MimePackage::single(ct, Headers::new(), content)
    };
    if let Some(n) = declared_len {
        if !chunked && counted.count != n {
            return Err(MimeError::Malformed(format!(
                "Content-Length says {n} bytes but the body has {}; the dump is truncated or \
                 the header is wrong",
                counted.count
            )));
        }
    }
    Ok(MessageDump {
        start_line,
        headers,
        package,
    })
}

fn skip_bom<R: BufRead>(r: &mut R) -> io::Result<()> {
    let buf = r.fill_buf()?;
    if buf.starts_with(&[0xEF, 0xBB, 0xBF]) {
        r.consume(3);
    }
    Ok(())
}

/// The first byte that is not ASCII whitespace, without consuming anything but whitespace
/// (leading blank lines carry no meaning in either shape).
fn peek_first_non_ws<R: BufRead>(r: &mut R) -> io::Result<Option<u8>> {
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(None);
        }
        match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => {
                let b = buf[i];
                r.consume(i);
                return Ok(Some(b));
            }
            None => {
                let n = buf.len();
                r.consume(n);
            }
        }
    }
}

fn read_bounded<R: Read>(r: &mut R, max: usize) -> Result<Vec<u8>, MimeError> {
    let mut out = Vec::new();
    let n = r.take(max as u64 + 1).read_to_end(&mut out)?;
    if n > max {
        return Err(MimeError::LimitExceeded(format!(
            "the SOAP envelope is larger than {max} bytes"
        )));
    }
    Ok(out)
}

/// Reads up to and including the blank line ending the header block; returns the block
/// without the blank line.
fn read_header_block<R: BufRead>(r: &mut R, max: usize) -> Result<Vec<u8>, MimeError> {
    let mut block = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r
            .by_ref()
            .take(max as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Err(MimeError::Malformed(
                "the dump ends inside its header block; headers must end with a blank line".into(),
            ));
        }
        if line == b"\n" || line == b"\r\n" {
            return Ok(block);
        }
        if !line.ends_with(b"\n") && n > max {
            return Err(MimeError::LimitExceeded(format!(
                "the dump's header block is larger than {max} bytes"
            )));
        }
        block.extend_from_slice(&line);
        if block.len() > max {
            return Err(MimeError::LimitExceeded(format!(
                "the dump's header block is larger than {max} bytes"
            )));
        }
    }
}

/// Splits off an HTTP status line (`HTTP/…`) or request line (`METHOD target HTTP/…`).
fn split_start_line(block: &[u8]) -> (Option<String>, &[u8]) {
    let end = memchr::memchr(b'\n', block).unwrap_or(block.len());
    let line = String::from_utf8_lossy(&block[..end]);
    let line = line.trim_end_matches('\r');
    let is_status = line.starts_with("HTTP/");
    let is_request = {
        let mut words = line.split(' ');
        matches!(
            (words.next(), words.next(), words.next(), words.next()),
            (Some(m), Some(_), Some(v), None)
                if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) && v.starts_with("HTTP/")
        )
    };
    if is_status || is_request {
        let rest = if end < block.len() {
            &block[end + 1..]
        } else {
            &[][..]
        };
        (Some(line.to_string()), rest)
    } else {
        (None, block)
    }
}

/// Whether the body starts like a chunked body: hex digits, optional `;ext`, line end.
fn starts_with_chunk_size<R: BufRead>(r: &mut R) -> io::Result<bool> {
    let buf = r.fill_buf()?;
    let hex_len = buf.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if hex_len == 0 || hex_len > 16 {
        return Ok(false);
    }
    let rest = &buf[hex_len..];
    Ok(rest.starts_with(b"\r\n") || rest.starts_with(b"\n") || rest.starts_with(b";"))
}

/// Removes leading whitespace and `<!-- … -->` comments before the XML declaration or
/// root element.
fn strip_leading_comments(mut xml: &[u8]) -> &[u8] {
    loop {
        let ws = xml.iter().take_while(|b| b.is_ascii_whitespace()).count();
        let rest = &xml[ws..];
        if let Some(after) = rest.strip_prefix(b"<!--") {
            match memchr::memmem::find(after, b"-->") {
                Some(end) => xml = &after[end + 3..],
                None => return rest, // unterminated: leave it for the XML parser to refuse
            }
        } else {
            return rest;
        }
    }
}

struct CountingReader<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// De-chunks an HTTP/1.1 chunked body (RFC 9112 §7.1); trailers are skipped.
struct ChunkedReader<R: BufRead> {
    inner: R,
    remaining: u64,
    done: bool,
}

impl<R: BufRead> ChunkedReader<R> {
    fn new(inner: R) -> Self {
        ChunkedReader {
            inner,
            remaining: 0,
            done: false,
        }
    }

    fn line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        self.inner
            .by_ref()
            .take(4096)
            .read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\n") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "chunked body: a chunk-size line is missing or too long",
            ));
        }
        Ok(String::from_utf8_lossy(&line).trim().to_string())
    }
}

impl<R: BufRead> Read for ChunkedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.remaining == 0 {
            let line = self.line()?;
            let size = line.split(';').next().unwrap_or("").trim();
            self.remaining = u64::from_str_radix(size, 16).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("chunked body: `{size}` is not a chunk size"),
                )
            })?;
            if self.remaining == 0 {
                // Trailer section up to the empty line (or end of file).
                loop {
                    match self.line() {
                        Ok(l) if l.is_empty() => break,
                        Ok(_) => continue,
                        Err(_) => break,
                    }
                }
                self.done = true;
                return Ok(0);
            }
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "chunked body ends inside a chunk",
            ));
        }
        self.remaining -= n as u64;
        if self.remaining == 0 {
            let end = self.line()?;
            if !end.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "chunked body: a chunk is not followed by a line ending",
                ));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_envelope_with_bom_and_comment() {
        let data = b"\xEF\xBB\xBF\n<!-- licence -->\n<?xml version=\"1.0\"?><e/>";
        let d = read_dump(&data[..], &MimeLimits::default()).unwrap();
        assert!(d.headers.is_empty());
        assert_eq!(d.package.root().content, b"<?xml version=\"1.0\"?><e/>");
    }

    #[test]
    fn http_style_with_status_line_and_real_chunking() {
        let data = b"HTTP/1.1 200 OK\r\nContent-Type: application/soap+xml\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n<e/>\r\n0\r\n\r\n";
        let d = read_dump(&data[..], &MimeLimits::default()).unwrap();
        assert_eq!(d.start_line.as_deref(), Some("HTTP/1.1 200 OK"));
        assert_eq!(d.package.root().content, b"<e/>");
    }

    #[test]
    fn declared_length_mismatch_is_refused() {
        let data = b"Content-Type: application/soap+xml\nContent-Length: 2147483648\n\n<e/>";
        let e = read_dump(&data[..], &MimeLimits::default()).unwrap_err();
        assert!(e.to_string().contains("Content-Length"), "{e}");
    }
}
