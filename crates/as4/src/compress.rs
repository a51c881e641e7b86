//! The AS4 compression feature: gzip per payload part.
//!
//! The AS4 profile (§3.1) compresses each payload separately with gzip before it is signed
//! and encrypted, and tells the receiver through the part's `eb:PartProperties`:
//!
//! * `CompressionType` = `application/gzip` (the only value AS4 defines);
//! * `MimeType` = the media type of the payload before compression (required then);
//! * `CharacterSet` = the payload's character set (recommended for XML).
//!
//! Both directions stream: [`gzip`] compresses a reader into a writer without holding the
//! payload, and `DecompressingReader` decompresses one with a **size cap** chosen by the
//! caller (from the PMode), so a small "zip bomb" cannot expand without bound. A stream
//! that is not valid gzip, or that would exceed the cap, fails with
//! `EBMS:0303 DecompressionFailure` carrying the reason.
//!
//! A large part is compressed in pieces of [`MEMBER_SIZE`] on a few threads, each piece one
//! gzip member, written in order: a gzip file may be a series of members (RFC 1952 §2.2) and
//! receivers read them as one stream (Java's `GZIPInputStream` in Domibus and phase4, and
//! `DecompressingReader` here). One core deflates at about 40 MB/s, which alone bounded
//! the sending of a 1 GiB part. A piece that does not compress is stored (deflate's stored
//! blocks) rather than compressed for nothing. A leg may also leave parts of
//! already-compressed media types uncompressed ([`DEFAULT_UNCOMPRESSED_TYPES`],
//! [`leaves_uncompressed`]).
//!
//! The property helpers take plain `(name, value)` pairs so they work with any model of
//! the ebMS header.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::{mpsc, Mutex};

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

use crate::error::{EbmsError, ErrorCode};

/// The only `CompressionType` AS4 defines.
pub(crate) const GZIP_MIME_TYPE: &str = "application/gzip";

/// PartProperty name of the compression type.
pub(crate) const PROP_COMPRESSION_TYPE: &str = "CompressionType";
/// PartProperty name of the original media type.
pub(crate) const PROP_MIME_TYPE: &str = "MimeType";
/// PartProperty name of the original character set.
pub(crate) const PROP_CHARACTER_SET: &str = "CharacterSet";

/// The media types a leg sends uncompressed unless its PMode says otherwise
/// (`[compression.NAME] uncompressed_types`): formats that are compressed already, where
/// gzip costs CPU time and gains nothing. A trailing `*` matches any rest (`video/*`).
pub const DEFAULT_UNCOMPRESSED_TYPES: &[&str] = &[
    "application/gzip",
    "application/x-gzip",
    "application/zip",
    "application/x-zip-compressed",
    "application/zstd",
    "application/x-xz",
    "application/x-bzip2",
    "application/x-7z-compressed",
    "application/vnd.rar",
    "application/pdf",
    "application/vnd.etsi.asic-e+zip",
    "application/vnd.etsi.asic-s+zip",
    "application/vnd.openxmlformats-officedocument.*",
    "application/vnd.oasis.opendocument.*",
    "image/jpeg",
    "image/png",
    "image/gif",
    "image/webp",
    "image/avif",
    "audio/*",
    "video/*",
];

/// Whether a part of media type `mime_type` (parameters ignored, case-insensitive) matches
/// one of `patterns` (a media type, or a prefix ending in `*`): such a part is sent
/// uncompressed, without `CompressionType`, on a leg that compresses the others.
pub fn leaves_uncompressed<S: AsRef<str>>(mime_type: &str, patterns: &[S]) -> bool {
    let essence = mime_type.split(';').next().unwrap_or_default().trim();
    patterns.iter().any(|p| {
        let p = p.as_ref().trim();
        match p.strip_suffix('*') {
            Some(prefix) => essence
                .get(..prefix.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(prefix)),
            None => essence.eq_ignore_ascii_case(p),
        }
    })
}

/// Why a media-type pattern of `uncompressed_types` is not one, or `None` when it is.
pub fn check_uncompressed_type(pattern: &str) -> Option<&'static str> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "!#$&^_.+-".contains(c);
    let well_formed = pattern.split_once('/').is_some_and(|(kind, rest)| {
        let body = rest.strip_suffix('*').unwrap_or(rest);
        !kind.is_empty()
            && kind.chars().all(ok_char)
            && body.chars().all(ok_char)
            && (!body.is_empty() || rest.ends_with('*'))
    });
    (!well_formed).then_some(
        "give a media type such as `application/pdf`, or a prefix ending in `*` such as `video/*`",
    )
}

/// Size of the pieces a large part is compressed in, each one gzip member. Fixed, not
/// tuned to the machine: sealing a message again must yield the same bytes (the
/// signature's digests cover the compressed parts), whatever the number of cores. 1 MiB
/// keeps the cost of restarting deflate's 32 KiB window negligible.
pub const MEMBER_SIZE: usize = 1 << 20;

/// Pieces compressed on the calling thread before a part is handed to the pool: below
/// 32 MiB the threads' buffers and allocator arenas would cost more memory (about 15 MiB
/// more peak RSS, measured) than the time they save.
pub const SERIAL_PIECES: usize = 32;

/// Gzip-compresses everything `input` yields into `output`; returns the compressed size.
///
/// Each [`MEMBER_SIZE`] piece is one member. The first [`SERIAL_PIECES`] are compressed on
/// the calling thread; the rest of a larger part a piece at a time on up to four threads,
/// with at most one piece more than there are threads in memory at once (each thread busy,
/// one read ahead).
pub fn gzip<R: Read, W: Write>(input: R, output: W) -> io::Result<u64> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    gzip_members(input, output, MEMBER_SIZE, threads, SERIAL_PIECES)
}

/// [`gzip`] with the piece size, thread count and serial pieces given (the tests use small
/// pieces and go parallel at once).
fn gzip_members<R: Read, W: Write>(
    mut input: R,
    mut output: W,
    piece_size: usize,
    threads: usize,
    serial_pieces: usize,
) -> io::Result<u64> {
    // The first pieces on this thread: a part of up to that size costs no threads and no
    // more memory than one piece; only a larger one is worth the pool.
    let mut serial_total = 0;
    let mut done = 0;
    let mut piece = read_piece(&mut input, piece_size)?;
    while threads < 2 || done < serial_pieces {
        let last = piece.len() < piece_size;
        let member = gzip_member(&piece)?;
        output.write_all(&member)?;
        serial_total += member.len() as u64;
        done += 1;
        if !last {
            piece = read_piece(&mut input, piece_size)?;
        }
        if last || piece.is_empty() {
            output.flush()?;
            return Ok(serial_total);
        }
    }
    let first = piece;
    let in_flight = threads + 1;
    let (jobs, queue) = mpsc::sync_channel::<(u64, Vec<u8>)>(threads);
    let queue = Mutex::new(queue);
    let (done_tx, done) = mpsc::channel::<(u64, io::Result<Vec<u8>>)>();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (queue, done_tx) = (&queue, done_tx.clone());
            scope.spawn(move || loop {
                let job = queue
                    .lock()
                    .map_err(drop)
                    .and_then(|q| q.recv().map_err(drop));
                let Ok((index, piece)) = job else { break };
                if done_tx.send((index, gzip_member(&piece))).is_err() {
                    break;
                }
            });
        }
        drop(done_tx);
        let run = || -> io::Result<u64> {
            // Pieces are numbered as read and written in that order, whichever thread
            // finishes first.
            let (mut sent, mut written, mut total) = (0u64, 0u64, 0u64);
            let mut finished: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
            let mut next = Some(first);
            loop {
                while sent - written >= in_flight as u64 || (next.is_none() && written < sent) {
                    let (index, member) = done
                        .recv()
                        .map_err(|_| io::Error::other("a compression thread stopped"))?;
                    finished.insert(index, member?);
                    while let Some(member) = finished.remove(&written) {
                        output.write_all(&member)?;
                        total += member.len() as u64;
                        written += 1;
                    }
                }
                let Some(piece) = next.take() else { break };
                let last = piece.len() < piece_size;
                jobs.send((sent, piece))
                    .map_err(|_| io::Error::other("the compression threads stopped"))?;
                sent += 1;
                if !last {
                    let piece = read_piece(&mut input, piece_size)?;
                    next = (!piece.is_empty()).then_some(piece);
                }
            }
            output.flush()?;
            Ok(serial_total + total)
        };
        let result = run();
        // Closing the queue ends the threads (after their current piece, on an error).
        drop(jobs);
        result
    })
}

/// Reads up to `size` bytes: fewer only at the end of `input`.
fn read_piece<R: Read>(input: &mut R, size: usize) -> io::Result<Vec<u8>> {
    let mut piece = Vec::with_capacity(size);
    input.take(size as u64).read_to_end(&mut piece)?;
    Ok(piece)
}

/// One complete gzip member of `piece`: deflated at the fastest level, or stored when a
/// sample of it does not compress.
fn gzip_member(piece: &[u8]) -> io::Result<Vec<u8>> {
    let level = if incompressible(piece) {
        Compression::none()
    } else {
        // Level 1: level 6 (the default) bound the sending of a large attachment (a
        // profile of a 64 MiB exchange spent 79% of the servers' CPU in deflate); level 1
        // is several times faster and still takes most of the redundancy out of XML.
        Compression::fast()
    };
    let mut enc = GzEncoder::new(Vec::with_capacity(piece.len() / 2 + 64), level);
    enc.write_all(piece)?;
    enc.finish()
}

/// Bytes of a piece deflated to judge whether the piece compresses.
const SAMPLE: usize = 32 * 1024;

/// Whether `piece` looks like it would not compress: its first [`SAMPLE`] bytes deflate to
/// more than 95% of their size (random, encrypted or already compressed data). Judged on
/// the piece's own bytes only, so the output stays the same from one sealing to the next.
fn incompressible(piece: &[u8]) -> bool {
    if piece.len() < 2 * SAMPLE {
        return false;
    }
    let sample = &piece[..SAMPLE];
    let mut enc =
        flate2::write::DeflateEncoder::new(Vec::with_capacity(SAMPLE + 64), Compression::fast());
    let deflated = enc.write_all(sample).and_then(|()| enc.finish());
    deflated.is_ok_and(|d| d.len() * 100 > sample.len() * 95)
}

/// A reader over the decompressed content of a gzip stream, refusing to yield more than a
/// cap. Its I/O errors carry an [`EbmsError`] (`EBMS:0303`); recover it with
/// [`decompression_error`].
pub(crate) struct DecompressingReader<R: Read> {
    inner: MultiGzDecoder<R>,
    cap: u64,
    produced: u64,
    probe: bool,
}

impl<R: Read> DecompressingReader<R> {
    /// Decompresses `inner`, allowing at most `cap` bytes of output.
    pub(crate) fn new(inner: R, cap: u64) -> Self {
        DecompressingReader {
            inner: MultiGzDecoder::new(inner),
            cap,
            produced: 0,
            probe: false,
        }
    }
}

fn ebms_io(reason: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        EbmsError::new(ErrorCode::DecompressionFailure, reason),
    )
}

impl<R: Read> Read for DecompressingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let room = self.cap - self.produced;
        if room == 0 {
            // At the cap: the stream must end here, or it is over the limit.
            if !self.probe {
                self.probe = true;
                let mut one = [0u8; 1];
                let n = self.read_inner(&mut one)?;
                if n == 0 {
                    return Ok(0);
                }
            }
            return Err(ebms_io(format!(
                "the decompressed part is larger than the limit of {} bytes; raise the \
                 PMode's decompression limit if the payload is legitimate",
                self.cap
            )));
        }
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.read_inner(&mut buf[..want])?;
        self.produced += n as u64;
        Ok(n)
    }
}

impl<R: Read> DecompressingReader<R> {
    fn read_inner(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => Err(ebms_io(format!(
                "the part is not a valid gzip stream ({e}); it must be compressed with gzip \
                 as its CompressionType says"
            ))),
        }
    }
}

/// The [`EbmsError`] inside an I/O error from a [`DecompressingReader`], or an
/// `EBMS:0303` describing any other I/O error.
pub(crate) fn decompression_error(e: io::Error) -> EbmsError {
    let text = e.to_string();
    match e.into_inner().map(|inner| inner.downcast::<EbmsError>()) {
        Some(Ok(ebms)) => *ebms,
        _ => EbmsError::new(
            ErrorCode::DecompressionFailure,
            format!("reading the compressed part failed: {text}"),
        ),
    }
}

/// Decompresses `input` into `output`, at most `cap` bytes; returns the size written.
pub fn gunzip<R: Read, W: Write>(input: R, mut output: W, cap: u64) -> Result<u64, EbmsError> {
    let mut dec = DecompressingReader::new(input, cap);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match dec.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(decompression_error(e)),
        };
        output.write_all(&buf[..n]).map_err(|e| {
            EbmsError::new(
                ErrorCode::DecompressionFailure,
                format!("writing the decompressed part failed: {e}"),
            )
        })?;
        total += n as u64;
    }
    Ok(total)
}

/// What a part's PartProperties say about compression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartCompression {
    /// Whether the part is gzip-compressed (`CompressionType=application/gzip`).
    pub compressed: bool,
    /// The `MimeType` property: the payload's media type (before compression).
    pub mime_type: Option<String>,
    /// The `CharacterSet` property, if any.
    pub character_set: Option<String>,
}

/// Reads and checks the compression-related PartProperties of one part.
///
/// * `CompressionType`, when present, must be `application/gzip`; anything else is
///   `EBMS:0303 DecompressionFailure` (the receiver cannot decompress the part).
/// * A compressed part must carry `MimeType`; missing → `EBMS:0303`.
/// * `CharacterSet`, when present, must be a valid charset name (RFC 2978 `mime-charset`
///   characters); otherwise `EBMS:0003 ValueInconsistent`.
/// * Each of the three may appear at most once (`EBMS:0003`).
pub fn part_compression(properties: &[(&str, &str)]) -> Result<PartCompression, EbmsError> {
    let single = |name: &str| -> Result<Option<String>, EbmsError> {
        let mut values = properties.iter().filter(|(n, _)| *n == name);
        let first = values.next().map(|(_, v)| v.trim().to_string());
        if values.next().is_some() {
            return Err(EbmsError::new(
                ErrorCode::ValueInconsistent,
                format!("PartProperty `{name}` appears more than once; give it once per part"),
            ));
        }
        Ok(first)
    };
    let compression = single(PROP_COMPRESSION_TYPE)?;
    let mime_type = single(PROP_MIME_TYPE)?;
    let character_set = single(PROP_CHARACTER_SET)?;
    let compressed = match compression.as_deref() {
        None => false,
        Some(t) if t.eq_ignore_ascii_case(GZIP_MIME_TYPE) => true,
        Some(other) => {
            return Err(EbmsError::new(
                ErrorCode::DecompressionFailure,
                format!(
                    "CompressionType `{other}` is not supported; AS4 defines only \
                     `{GZIP_MIME_TYPE}`"
                ),
            ))
        }
    };
    if compressed && mime_type.as_deref().is_none_or(str::is_empty) {
        return Err(EbmsError::new(
            ErrorCode::DecompressionFailure,
            "a compressed part must have a `MimeType` PartProperty giving the payload's \
             media type before compression",
        ));
    }
    if let Some(cs) = &character_set {
        let ok = !cs.is_empty()
            && cs.len() <= 40
            && cs
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'+-^_`{}~".contains(&b));
        if !ok {
            return Err(EbmsError::new(
                ErrorCode::ValueInconsistent,
                format!("CharacterSet `{cs}` is not a character set name (e.g. UTF-8)"),
            ));
        }
    }
    Ok(PartCompression {
        compressed,
        mime_type,
        character_set,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_round_trips_and_cap_is_enforced() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut gz = Vec::new();
        gzip(&data[..], &mut gz).unwrap();
        assert_eq!(&gz[..2], &[0x1f, 0x8b]);
        let mut out = Vec::new();
        assert_eq!(
            gunzip(&gz[..], &mut out, data.len() as u64).unwrap(),
            200_000
        );
        assert_eq!(out, data);
        let err = gunzip(&gz[..], io::sink(), data.len() as u64 - 1).unwrap_err();
        assert_eq!(err.code, ErrorCode::DecompressionFailure);
        assert!(err.detail.contains("limit"), "{}", err.detail);
    }

    /// Bytes that do not compress (xorshift), deterministic.
    fn noise(len: usize, mut x: u32) -> Vec<u8> {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    /// Compressible text with some noise in it.
    fn text(len: usize) -> Vec<u8> {
        let n = noise(len, 7);
        (0..len)
            .map(|i| {
                if i % 9 == 0 {
                    b'a' + n[i] % 4
                } else {
                    b"<doc>x</doc>"[i % 12]
                }
            })
            .collect()
    }

    #[test]
    fn large_parts_are_several_members_that_decompress_as_one_stream() {
        let data = text(10_000);
        let mut gz = Vec::new();
        let n = gzip_members(&data[..], &mut gz, 1000, 3, 0).unwrap();
        assert_eq!(n, gz.len() as u64);
        // Ten members: a single-member reader stops after the first.
        let mut first = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut first)
            .unwrap();
        assert_eq!(first, data[..1000]);
        let mut out = Vec::new();
        assert_eq!(gunzip(&gz[..], &mut out, 10_000).unwrap(), 10_000);
        assert_eq!(out, data);
        // The same bytes whatever the number of threads (a second sealing signs the same
        // digests).
        // and however many pieces go before the pool.
        for (threads, serial) in [(1, 0), (2, 0), (4, 0), (2, 3), (3, 9), (2, 10)] {
            let mut again = Vec::new();
            gzip_members(&data[..], &mut again, 1000, threads, serial).unwrap();
            assert_eq!(again, gz, "{threads} threads after {serial} serial pieces");
        }
        // A part of exactly one piece, and an empty one.
        for len in [1000, 0] {
            let mut gz = Vec::new();
            gzip_members(&data[..len], &mut gz, 1000, 3, 0).unwrap();
            let mut out = Vec::new();
            gunzip(&gz[..], &mut out, 1 << 20).unwrap();
            assert_eq!(out, data[..len]);
        }
    }

    #[test]
    fn the_cap_holds_across_members() {
        let data = text(10_000);
        let mut gz = Vec::new();
        gzip_members(&data[..], &mut gz, 1000, 2, 0).unwrap();
        // Over the cap in the last member, and in a middle one.
        for cap in [9_999, 4_500] {
            let err = gunzip(&gz[..], io::sink(), cap).unwrap_err();
            assert_eq!(err.code, ErrorCode::DecompressionFailure);
            assert!(err.detail.contains("limit"), "{}", err.detail);
        }
        // Members of a bomb: each small, together over the cap.
        let zeros = vec![0u8; 1 << 20];
        let mut bomb = Vec::new();
        for _ in 0..8 {
            gzip_members(&zeros[..], &mut bomb, 1 << 20, 1, 0).unwrap();
        }
        assert!(bomb.len() < 128 * 1024, "{}", bomb.len());
        let err = gunzip(&bomb[..], io::sink(), 7 << 20).unwrap_err();
        assert!(err.detail.contains("limit"), "{}", err.detail);
        assert_eq!(gunzip(&bomb[..], io::sink(), 8 << 20).unwrap(), 8 << 20);
    }

    #[test]
    fn bytes_after_the_last_member_are_not_gzip() {
        let mut gz = Vec::new();
        gzip(&b"<a/>"[..], &mut gz).unwrap();
        gz.extend_from_slice(b"trailing garbage");
        let err = gunzip(&gz[..], io::sink(), 1 << 20).unwrap_err();
        assert!(err.detail.contains("not a valid gzip"), "{}", err.detail);
    }

    #[test]
    fn pieces_that_do_not_compress_are_stored() {
        let random = noise(300_000, 0x9e37_79b9);
        let mut gz = Vec::new();
        gzip_members(&random[..], &mut gz, 100_000, 2, 0).unwrap();
        // Stored blocks: the size plus a few bytes of framing per block and member.
        assert!(gz.len() < random.len() + random.len() / 100, "{}", gz.len());
        let mut out = Vec::new();
        gunzip(&gz[..], &mut out, 1 << 20).unwrap();
        assert_eq!(out, random);
        // Text still compresses.
        let t = text(300_000);
        let mut gz = Vec::new();
        gzip_members(&t[..], &mut gz, 100_000, 2, 0).unwrap();
        assert!(gz.len() < t.len() / 3, "{}", gz.len());
    }

    #[test]
    fn uncompressed_types_match_by_type_or_prefix() {
        let list = DEFAULT_UNCOMPRESSED_TYPES;
        assert!(leaves_uncompressed("application/pdf", list));
        assert!(leaves_uncompressed("Image/JPEG", list));
        assert!(leaves_uncompressed("video/mp4; codecs=avc1", list));
        assert!(leaves_uncompressed(
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            list
        ));
        assert!(!leaves_uncompressed("application/xml", list));
        assert!(!leaves_uncompressed("application/octet-stream", list));
        assert!(!leaves_uncompressed("application/pdfx", list));
        assert!(!leaves_uncompressed("application/pdf", &[] as &[&str]));
        for ok in list {
            assert_eq!(check_uncompressed_type(ok), None, "{ok}");
        }
        for bad in [
            "pdf",
            "application/",
            "*/*",
            "application/p df",
            "/pdf",
            "a/*b",
        ] {
            assert!(check_uncompressed_type(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn not_gzip_is_0303() {
        let err = gunzip(&b"plain text, not gzip"[..], io::sink(), 1 << 20).unwrap_err();
        assert_eq!(err.code, ErrorCode::DecompressionFailure);
        assert!(err.detail.contains("not a valid gzip"), "{}", err.detail);
    }

    #[test]
    fn properties_are_checked() {
        let p = part_compression(&[
            ("MimeType", "application/xml"),
            ("CompressionType", "application/gzip"),
            ("CharacterSet", "UTF-8"),
        ])
        .unwrap();
        assert!(p.compressed);
        assert_eq!(p.mime_type.as_deref(), Some("application/xml"));
        assert_eq!(p.character_set.as_deref(), Some("UTF-8"));
        assert!(!part_compression(&[]).unwrap().compressed);
        let e = part_compression(&[("CompressionType", "application/gzip")]).unwrap_err();
        assert_eq!(e.code, ErrorCode::DecompressionFailure);
        let e = part_compression(&[("CharacterSet", "UTF 8")]).unwrap_err();
        assert_eq!(e.code, ErrorCode::ValueInconsistent);
    }
}
