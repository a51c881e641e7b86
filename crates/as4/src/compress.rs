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
//! `DecompressingReader` here). Deflating on one core alone bounded the sending of a 1 GiB
//! part (at 42 MB/s for data that does not compress, with the first design). A piece that
//! does not compress is stored (deflate's stored blocks) rather than compressed for
//! nothing. A leg may also leave parts of
//! already-compressed media types uncompressed ([`DEFAULT_UNCOMPRESSED_TYPES`],
//! [`leaves_uncompressed`]).
//!
//! Each member we write says its own size in an extra field of its header (RFC 1952
//! §2.3.1.1, subfield [`SIZE_SUBFIELD`]), as BGZF does for genomics data. Every gzip reader
//! skips extra fields, so to a peer this is plain multi-member gzip. To us it marks where
//! the next member starts without inflating this one: [`gunzip`] reads such members whole
//! and inflates them on several threads, written back in order; from the first member
//! without that field (another sender's gzip) it inflates as one stream.
//!
//! Whole members are deflated by ISA-L's igzip and inflated by libdeflate, each made for
//! whole buffers and the fastest here at its task; streams (and any member libdeflate
//! cannot take exactly as one member) by flate2.
//!
//! The property helpers take plain `(name, value)` pairs so they work with any model of
//! the ebMS header.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::panic::AssertUnwindSafe;
use std::sync::{mpsc, Mutex};

use flate2::read::MultiGzDecoder;
use isal_sys::igzip_lib as igzip;

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
    gzip_members(input, output, MEMBER_SIZE, pool_threads(), SERIAL_PIECES)
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
    // The rest on the pool, a piece at a time, written in the order read.
    let mut next = Some(piece);
    let mut total = serial_total;
    in_order_on_threads(
        threads,
        || {
            let Some(piece) = next.take() else {
                return Ok(None);
            };
            if piece.len() == piece_size {
                let following = read_piece(&mut input, piece_size)?;
                next = (!following.is_empty()).then_some(following);
            }
            Ok(Some(piece))
        },
        |piece: Vec<u8>| gzip_member(&piece),
        |member: io::Result<Vec<u8>>| {
            let member = member?;
            output.write_all(&member)?;
            total += member.len() as u64;
            Ok(())
        },
    )?;
    output.flush()?;
    Ok(total)
}

/// Runs `work` on up to `threads` threads over the items `next` yields until it yields
/// `None`, and hands each result to `sink` in the order the items came, whichever thread
/// finishes first. At most one item more than there are threads is read ahead: with every
/// thread busy, memory holds `threads + 1` items and their results.
fn in_order_on_threads<T: Send, U: Send>(
    threads: usize,
    mut next: impl FnMut() -> io::Result<Option<T>>,
    work: impl Fn(T) -> U + Sync,
    mut sink: impl FnMut(U) -> io::Result<()>,
) -> io::Result<()> {
    let in_flight = threads as u64 + 1;
    let (jobs, queue) = mpsc::sync_channel::<(u64, T)>(threads);
    let queue = Mutex::new(queue);
    // A result, or the panic of the work on that item: a worker that died without a
    // result would leave this thread waiting for it forever.
    let (done_tx, done) = mpsc::channel::<(u64, std::thread::Result<U>)>();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (queue, done_tx, work) = (&queue, done_tx.clone(), &work);
            scope.spawn(move || loop {
                let job = queue
                    .lock()
                    .map_err(drop)
                    .and_then(|q| q.recv().map_err(drop));
                let Ok((index, item)) = job else { break };
                let result = std::panic::catch_unwind(AssertUnwindSafe(|| work(item)));
                if done_tx.send((index, result)).is_err() {
                    break;
                }
            });
        }
        drop(done_tx);
        let mut run = || -> io::Result<()> {
            let (mut sent, mut handed, mut more) = (0u64, 0u64, true);
            let mut finished: BTreeMap<u64, U> = BTreeMap::new();
            while more || handed < sent {
                if more && sent - handed < in_flight {
                    match next()? {
                        Some(item) => {
                            jobs.send((sent, item))
                                .map_err(|_| io::Error::other("the worker threads stopped"))?;
                            sent += 1;
                        }
                        None => more = false,
                    }
                    continue;
                }
                let (index, result) = done
                    .recv()
                    .map_err(|_| io::Error::other("a worker thread stopped"))?;
                let result =
                    result.map_err(|_| io::Error::other("a worker thread failed (it panicked)"))?;
                finished.insert(index, result);
                while let Some(result) = finished.remove(&handed) {
                    handed += 1;
                    sink(result)?;
                }
            }
            Ok(())
        };
        let result = run();
        // Closing the queue ends the threads (after their current item, on an error).
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

/// The extra-field subfield (RFC 1952 §2.3.1.1: two identifier bytes, a two-byte length,
/// the data) in which each member we write gives its own size in bytes, header to trailer,
/// as a little-endian `u32`. `gunzip` relies on it only to cut the stream into members; a
/// member that does not end where it says is refused like any broken gzip.
pub const SIZE_SUBFIELD: [u8; 2] = *b"Vm";

/// Where the size goes in a member's header: after the 10 fixed bytes, the extra field's
/// two-byte length, and the subfield's identifier and length.
const SIZE_AT: usize = 10 + 2 + 4;

/// The header of a member we write (RFC 1952 §2.3): deflate, only the extra field flagged
/// (`FEXTRA`), no modification time, "fastest" in `XFL`, an unknown OS (so that the bytes
/// are the same on every machine), then the extra field with [`SIZE_SUBFIELD`], its size
/// left zero until the member is complete.
const MEMBER_HEADER: [u8; SIZE_AT + 4] = [
    0x1f,
    0x8b,
    8,
    0x04,
    0,
    0,
    0,
    0,
    4,
    255,
    8,
    0,
    SIZE_SUBFIELD[0],
    SIZE_SUBFIELD[1],
    4,
    0,
    0,
    0,
    0,
    0,
];

/// One complete gzip member of `piece`, its size in its header ([`SIZE_SUBFIELD`]):
/// deflated at the fastest level, or stored when a sample of it does not compress.
///
/// The piece is deflated whole by ISA-L's igzip at its level 1: it holds the piece in
/// memory anyway, and igzip, written in assembly for whole buffers, deflates XML about
/// 2.4 times as fast as libdeflate's level 1 here, 6 % larger (`docs/benchmarks.md`).
/// Its output depends only on the bytes, the level, the size of its working memory and
/// igzip's version (pinned) on any x86-64 with SSE4.2, where each of its code paths hashes
/// with the `crc32` instruction; so sealing a message again yields the same member. A
/// release that changes it says so (`deploy/pair/README.md`, upgrading), and
/// `compress::tests::members_are_the_bytes_this_release_seals` pins the bytes.
fn gzip_member(piece: &[u8]) -> io::Result<Vec<u8>> {
    DEFLATING.with(|state| {
        let mut state = state.borrow_mut();
        let state = state.get_or_insert_with(Deflating::new);
        // Level 1: level 6 (the default) bound the sending of a large attachment (a
        // profile of a 64 MiB exchange spent 79% of the servers' CPU in deflate); level 1
        // is several times faster and still takes most of the redundancy out of XML.
        // Stored blocks (libdeflate's level 0) when a sample does not compress.
        let bound = Igzip::bound(piece.len());
        if state.out.len() < bound {
            state.out.resize(bound, 0);
        }
        let deflated = if state.incompressible(piece)? {
            let stored = state.stored.get_or_insert_with(|| compressor(0));
            let room = stored.deflate_compress_bound(piece.len());
            if state.out.len() < room {
                state.out.resize(room, 0);
            }
            stored
                .deflate_compress(piece, &mut state.out)
                .map_err(|e| io::Error::other(format!("deflate failed: {e}")))?
        } else {
            state.igzip.deflate(piece, &mut state.out)?
        };
        let mut member = Vec::with_capacity(MEMBER_HEADER.len() + deflated + 8);
        member.extend_from_slice(&MEMBER_HEADER);
        member.extend_from_slice(&state.out[..deflated]);
        // The trailer: CRC-32 and the size modulo 2^32 of the content.
        member.extend_from_slice(&libdeflater::crc32(piece).to_le_bytes());
        member.extend_from_slice(&(piece.len() as u32).to_le_bytes());
        let size = u32::try_from(member.len())
            .map_err(|_| io::Error::other("a gzip member is larger than 4 GiB"))?;
        member[SIZE_AT..SIZE_AT + 4].copy_from_slice(&size.to_le_bytes());
        Ok(member)
    })
}

thread_local! {
    /// What [`gzip_member`] works with on this thread, kept from one member to the next.
    static DEFLATING: RefCell<Option<Deflating>> = const { RefCell::new(None) };
}

/// A thread's compressors and buffers for [`gzip_member`]. Made fresh for every member,
/// they cost an allocation, its first touch and its zeroing per MiB of payload (a profile
/// of a 1 GiB upload found memset and page faults beside the deflating). Kept, they give
/// the very same bytes: igzip's stateless call starts its hash table afresh, and a
/// libdeflate compressor holds no state between calls.
///
/// What is needed only for an incompressible piece is made at the first one: a thread that
/// seals small messages keeps igzip's working memory and a buffer of their size.
struct Deflating {
    igzip: Igzip,
    stored: Option<libdeflater::Compressor>,
    /// Room for one deflated piece (or sample), written by the deflater and copied out.
    out: Vec<u8>,
}

/// A libdeflate compressor at `level` (0: stored blocks).
fn compressor(level: i32) -> libdeflater::Compressor {
    let level = libdeflater::CompressionLvl::new(level).expect("level 0 exists");
    libdeflater::Compressor::new(level)
}

impl Deflating {
    fn new() -> Self {
        Deflating {
            igzip: Igzip::new(),
            stored: None,
            out: Vec::new(),
        }
    }

    /// Whether `piece` looks like it would not compress: its first [`SAMPLE`] bytes deflate
    /// to more than 95% of their size (random, encrypted or already compressed data).
    /// Judged on the piece's own bytes only, so the output stays the same from one sealing
    /// to the next.
    fn incompressible(&mut self, piece: &[u8]) -> io::Result<bool> {
        if piece.len() < 2 * SAMPLE {
            return Ok(false);
        }
        let sample = &piece[..SAMPLE];
        let deflated = self.igzip.deflate(sample, &mut self.out)?;
        Ok(deflated * 100 > sample.len() * 95)
    }
}

/// Bytes of a piece deflated to judge whether the piece compresses.
const SAMPLE: usize = 32 * 1024;

/// ISA-L's igzip at level 1, deflating whole buffers into raw deflate (the member's header
/// and trailer are ours), with its working memory (hash table and token buffer) kept
/// between calls.
struct Igzip {
    level_buf: Box<[u8]>,
}

impl Igzip {
    /// igzip's working memory for level 1: its hash table and a buffer of 32 K tokens,
    /// the "medium" size. Its deflate blocks end when the buffer is full, so the size is
    /// part of what fixes the bytes. Medium deflated XML as fast as the default (large,
    /// 64 K tokens) and to the same size here, with half the memory per thread (148 KiB);
    /// small (16 K) was 5 to 10 % slower.
    const LEVEL_BUF: usize = igzip::ISAL_DEF_LVL1_MEDIUM as usize;

    fn new() -> Self {
        Igzip {
            level_buf: vec![0u8; Self::LEVEL_BUF].into_boxed_slice(),
        }
    }

    /// The output room [`Igzip::deflate`] needs for `len` bytes: that of stored blocks (a
    /// 5-byte header per 65,535 bytes). igzip falls back to stored blocks when deflating
    /// would come out larger, but only when the room for them is given, so always giving
    /// it keeps the output a function of the input alone.
    fn bound(len: usize) -> usize {
        len + 5 * (len / 65_535 + 1) + 64
    }

    /// Deflates `input` whole into `out` (at least [`Igzip::bound`] long); returns the
    /// size written.
    fn deflate(&mut self, input: &[u8], out: &mut [u8]) -> io::Result<usize> {
        let too_large = || io::Error::other("a piece is too large for igzip");
        let avail_in = u32::try_from(input.len()).map_err(|_| too_large())?;
        let avail_out = u32::try_from(out.len()).map_err(|_| too_large())?;
        if out.len() < Self::bound(input.len()) {
            return Err(io::Error::other("igzip was given too little room"));
        }
        // SAFETY: `isal_zstream` is a plain C struct of integers, raw pointers and nested
        // structs of the same: all zeros is a valid value, which the init call then sets up.
        let mut stream: igzip::isal_zstream = unsafe { std::mem::zeroed() };
        // SAFETY: a valid, exclusively borrowed stream.
        unsafe { igzip::isal_deflate_stateless_init(&mut stream) };
        stream.level = 1;
        stream.level_buf = self.level_buf.as_mut_ptr();
        stream.level_buf_size = Self::LEVEL_BUF as u32;
        stream.end_of_stream = 1;
        stream.flush = igzip::NO_FLUSH as u16;
        stream.gzip_flag = igzip::IGZIP_DEFLATE as u16;
        // igzip reads through `next_in` only (its type lacks the `const`).
        stream.next_in = input.as_ptr().cast_mut();
        stream.avail_in = avail_in;
        stream.next_out = out.as_mut_ptr();
        stream.avail_out = avail_out;
        // SAFETY: the stream points at three distinct live buffers, each with its own
        // length (the input, read only; the output; the working memory, this value's own
        // and borrowed mutably for the call), and the stream does not outlive the call.
        let result = unsafe { igzip::isal_deflate_stateless(&mut stream) };
        if result != igzip::COMP_OK as i32 || stream.avail_in != 0 {
            return Err(io::Error::other(format!(
                "igzip failed to deflate (code {result})"
            )));
        }
        Ok(stream.total_out as usize)
    }
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

/// The `EBMS:0303` of a part that inflates to more than `cap` bytes.
fn over_cap(cap: u64) -> io::Error {
    ebms_io(format!(
        "the decompressed part is larger than the limit of {cap} bytes; raise the PMode's \
         decompression limit if the payload is legitimate"
    ))
}

/// The `EBMS:0303` of a part that is not valid gzip (`e`, the decoder's error).
fn not_gzip(e: &io::Error) -> io::Error {
    ebms_io(format!(
        "the part is not a valid gzip stream ({e}); it must be compressed with gzip as its \
         CompressionType says"
    ))
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
            return Err(over_cap(self.cap));
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
            Err(e) => Err(not_gzip(&e)),
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
///
/// Members that give their size ([`SIZE_SUBFIELD`], as [`gzip`] writes them) are read
/// whole: the first [`SERIAL_PIECES`] inflated on the calling thread, the rest on up to four
/// threads and written in order. From the first member that does not, the rest of the
/// stream is inflated as it is read.
pub fn gunzip<R: Read, W: Write>(input: R, output: W, cap: u64) -> Result<u64, EbmsError> {
    gunzip_members(input, output, cap, pool_threads(), SERIAL_PIECES)
}

/// Threads a large part is compressed or inflated on: one per core, at most four.
///
/// Asked once per process: on Linux `available_parallelism` reads the cgroup's CPU quota
/// from `/proc` and `/sys` on every call (several files opened, read and closed), which a
/// profile of small exchanges found to be 2 % of the receiver's CPU when it was asked for
/// every part. A process moved to fewer cores keeps its first answer; the pool only sizes
/// how many members are in flight, never whether a part can be read.
fn pool_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(4)))
}

/// [`gunzip`] with the thread count and serial members given (the tests go parallel at
/// once).
fn gunzip_members<R: Read, W: Write>(
    mut input: R,
    mut output: W,
    cap: u64,
    threads: usize,
    serial_members: usize,
) -> Result<u64, EbmsError> {
    let mut written = 0u64;
    let mut sink = |inflated: Inflated| -> io::Result<()> {
        match inflated {
            Inflated::Whole(bytes) => {
                if written + bytes.len() as u64 > cap {
                    return Err(over_cap(cap));
                }
                output.write_all(&bytes).map_err(write_failed)?;
                written += bytes.len() as u64;
            }
            // Larger than a member we write: inflated here as a stream, under the cap left.
            Inflated::TooLarge(member) => {
                written += stream(&member[..], &mut output, cap - written)?;
            }
            Inflated::Failed(e) => return Err(e),
        }
        Ok(())
    };
    let mut run = || -> io::Result<Option<Vec<u8>>> {
        let mut members = 0;
        while threads < 2 || members < serial_members {
            match next_member(&mut input)? {
                Member::Sized(member) => sink(inflate_member(&member))?,
                Member::End if members > 0 => return Ok(None),
                Member::End => return Ok(Some(Vec::new())),
                Member::Other(head) => return Ok(Some(head)),
            }
            members += 1;
        }
        let mut rest = None;
        in_order_on_threads(
            threads,
            || {
                if rest.is_some() {
                    return Ok(None);
                }
                match next_member(&mut input)? {
                    Member::Sized(member) => Ok(Some(member)),
                    Member::End => Ok(None),
                    Member::Other(head) => {
                        rest = Some(head);
                        Ok(None)
                    }
                }
            },
            |member: Vec<u8>| inflate_member(&member),
            &mut sink,
        )?;
        Ok(rest)
    };
    let outcome = run().and_then(|rest| match rest {
        // A member without its size (or none at all): the rest as one stream.
        Some(head) => stream(
            io::Cursor::new(head).chain(&mut input),
            &mut output,
            cap - written,
        )
        .map(|n| written += n),
        None => Ok(()),
    });
    outcome.map_err(decompression_error)?;
    output
        .flush()
        .map_err(|e| decompression_error(write_failed(e)))?;
    Ok(written)
}

/// The largest member [`gunzip`] reads whole, and the most it inflates one to in memory:
/// twice what [`gzip`] writes. A member that says it is larger is inflated as a stream.
const MEMBER_LIMIT: usize = 2 * MEMBER_SIZE;

/// What [`next_member`] found.
enum Member {
    /// A whole member that gave its size.
    Sized(Vec<u8>),
    /// The start of a member that did not (or of bytes that are not gzip at all): the bytes
    /// read of it so far.
    Other(Vec<u8>),
    /// The end of the input.
    End,
}

/// Reads the next member whole if its header gives its size ([`SIZE_SUBFIELD`]) and that
/// size is plausible; otherwise returns the bytes read so far. Only a stream that ends
/// inside a member that gave its size is an error here.
fn next_member<R: Read>(input: &mut R) -> io::Result<Member> {
    const FEXTRA: u8 = 0x04;
    let mut head = Vec::with_capacity(32);
    if read_up_to(input, &mut head, 12)? == 0 {
        return Ok(Member::End);
    }
    if head.len() < 12 || head[..3] != [0x1f, 0x8b, 8] || head[3] & FEXTRA == 0 {
        return Ok(Member::Other(head));
    }
    let xlen = usize::from(u16::from_le_bytes([head[10], head[11]]));
    if read_up_to(input, &mut head, xlen)? < xlen {
        return Ok(Member::Other(head));
    }
    let Some(size) = size_subfield(&head[12..]) else {
        return Ok(Member::Other(head));
    };
    // Header, an empty deflate stream (2 bytes) and the trailer (8) at the least.
    if size < head.len() + 10 || size > MEMBER_LIMIT {
        return Ok(Member::Other(head));
    }
    let missing = size - head.len();
    if read_up_to(input, &mut head, missing)? < missing {
        return Err(not_gzip(&io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("it ends inside a member of {size} bytes"),
        )));
    }
    Ok(Member::Sized(head))
}

/// The size a member's extra field gives in [`SIZE_SUBFIELD`], if it has that subfield.
fn size_subfield(mut extra: &[u8]) -> Option<usize> {
    while extra.len() >= 4 {
        let len = usize::from(u16::from_le_bytes([extra[2], extra[3]]));
        let data = extra.get(4..4 + len)?;
        if extra[..2] == SIZE_SUBFIELD && len == 4 {
            let size = u32::from_le_bytes(data.try_into().ok()?);
            return usize::try_from(size).ok();
        }
        extra = &extra[4 + len..];
    }
    None
}

/// Appends up to `n` bytes of `input` to `buf`: fewer only at its end. Returns how many.
fn read_up_to<R: Read>(input: &mut R, buf: &mut Vec<u8>, n: usize) -> io::Result<usize> {
    let before = buf.len();
    input.take(n as u64).read_to_end(buf)?;
    Ok(buf.len() - before)
}

/// A member inflated by a worker thread.
enum Inflated {
    /// Its content.
    Whole(Vec<u8>),
    /// It inflates to more than [`MEMBER_LIMIT`]: the member itself, to inflate as a stream.
    TooLarge(Vec<u8>),
    /// It is not valid gzip, or holds more than the member its size marks.
    Failed(io::Error),
}

/// Inflates one member read whole. It must be exactly one or more complete members: a size
/// that cuts a member short fails, as any broken gzip does.
fn inflate_member(member: &[u8]) -> Inflated {
    // The trailer's ISIZE (the content's size modulo 2^32) is only a hint, and the sender
    // writes it: no more than deflate could yield from these bytes (at most 1032 to 1), so
    // a small member that lies costs no large buffer.
    let hint = member
        .len()
        .checked_sub(4)
        .and_then(|at| member[at..].try_into().ok())
        .map_or(0, |b| u32::from_le_bytes(b) as usize);
    let most = member.len().saturating_mul(1032).min(MEMBER_LIMIT);
    if hint <= most {
        if let Some(content) = Inflater::new().and_then(|mut i| i.exactly_one(member, hint)) {
            return Inflated::Whole(content);
        }
    }
    // Not one member inflating to its ISIZE (several members under one size, a lying
    // ISIZE, broken gzip): flate2, which reads a series of members and names what is wrong.
    let mut content = Vec::with_capacity(hint.min(most) + 1);
    let read = MultiGzDecoder::new(member)
        .take(MEMBER_LIMIT as u64 + 1)
        .read_to_end(&mut content);
    match read {
        Ok(_) if content.len() > MEMBER_LIMIT => Inflated::TooLarge(member.to_vec()),
        Ok(_) => Inflated::Whole(content),
        Err(e) => Inflated::Failed(not_gzip(&e)),
    }
}

/// A libdeflate decompressor, for members read whole: about twice as fast as flate2's
/// backend here (`docs/benchmarks.md`). Used only where the result is certain: exactly one
/// member, ending where the bytes end, inflating to exactly the size its trailer gives
/// (libdeflate checks the CRC-32 and that size itself). Anything else goes to flate2.
struct Inflater(std::ptr::NonNull<libdeflate_sys::libdeflate_decompressor>);

impl Inflater {
    /// A new decompressor (about 10 KB), or `None` if it cannot be allocated.
    fn new() -> Option<Self> {
        // SAFETY: no arguments; a null result (out of memory) is handled.
        let raw = unsafe { libdeflate_sys::libdeflate_alloc_decompressor() };
        std::ptr::NonNull::new(raw).map(Inflater)
    }

    /// The content of `member` if it is exactly one gzip member of `size` bytes of content.
    fn exactly_one(&mut self, member: &[u8], size: usize) -> Option<Vec<u8>> {
        let mut content = vec![0u8; size];
        let (mut read, mut made) = (0usize, 0usize);
        // SAFETY: the decompressor is live and used by this thread alone (`&mut self`); the
        // input and output are two distinct live buffers passed with their own lengths, which
        // libdeflate never reads or writes past; the two counts are valid places to write.
        let result = unsafe {
            libdeflate_sys::libdeflate_gzip_decompress_ex(
                self.0.as_ptr(),
                member.as_ptr().cast(),
                member.len(),
                content.as_mut_ptr().cast(),
                content.len(),
                &mut read,
                &mut made,
            )
        };
        (result == libdeflate_sys::libdeflate_result_LIBDEFLATE_SUCCESS
            && read == member.len()
            && made == size)
            .then_some(content)
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        // SAFETY: allocated by `libdeflate_alloc_decompressor`, freed once, here.
        unsafe { libdeflate_sys::libdeflate_free_decompressor(self.0.as_ptr()) }
    }
}

/// Inflates `input` into `output` as it is read, at most `cap` bytes; returns the size.
fn stream<R: Read, W: Write>(input: R, output: &mut W, cap: u64) -> io::Result<u64> {
    let mut dec = DecompressingReader::new(input, cap);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match dec.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        output.write_all(&buf[..n]).map_err(write_failed)?;
        total += n as u64;
    }
}

/// The error of a write of decompressed bytes, as an `EBMS:0303`.
fn write_failed(e: io::Error) -> io::Error {
    ebms_io(format!("writing the decompressed part failed: {e}"))
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

/// [`part_compression`] of a received `eb:PartInfo`'s properties.
pub(crate) fn part_info_compression(
    part: &crate::message::model::PartInfo,
) -> Result<PartCompression, EbmsError> {
    let props: Vec<(&str, &str)> = part
        .properties
        .iter()
        .map(|p| (p.name.as_str(), p.value.as_str()))
        .collect();
    part_compression(&props)
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
    use flate2::Compression;

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
        // Over the cap in the last member, and in a middle one; inflated here or on threads.
        for cap in [9_999, 4_500] {
            for (threads, serial) in [(1, 0), (2, 0), (2, 4)] {
                let err = gunzip_members(&gz[..], io::sink(), cap, threads, serial).unwrap_err();
                assert_eq!(err.code, ErrorCode::DecompressionFailure);
                assert!(err.detail.contains("limit"), "{}", err.detail);
            }
        }
        // Members of a bomb: each small, together over the cap.
        let zeros = vec![0u8; 1 << 20];
        let mut bomb = Vec::new();
        for _ in 0..8 {
            gzip_members(&zeros[..], &mut bomb, 1 << 20, 1, 0).unwrap();
        }
        assert!(bomb.len() < 128 * 1024, "{}", bomb.len());
        for threads in [1, 2] {
            let err = gunzip_members(&bomb[..], io::sink(), 7 << 20, threads, 0).unwrap_err();
            assert!(err.detail.contains("limit"), "{}", err.detail);
            let n = gunzip_members(&bomb[..], io::sink(), 8 << 20, threads, 0).unwrap();
            assert_eq!(n, 8 << 20);
        }
    }

    #[test]
    fn bytes_after_the_last_member_are_not_gzip() {
        let mut gz = Vec::new();
        gzip(&b"<a/>"[..], &mut gz).unwrap();
        gz.extend_from_slice(b"trailing garbage");
        let err = gunzip(&gz[..], io::sink(), 1 << 20).unwrap_err();
        assert!(err.detail.contains("not a valid gzip"), "{}", err.detail);
    }

    /// The members of a stream, cut by the sizes their headers give.
    fn sized_members(mut gz: &[u8]) -> Vec<&[u8]> {
        let mut members = Vec::new();
        while !gz.is_empty() {
            assert_eq!(gz[3] & 0x04, 0x04, "FEXTRA set");
            assert_eq!(gz[12..14], SIZE_SUBFIELD);
            let size = u32::from_le_bytes(gz[SIZE_AT..SIZE_AT + 4].try_into().unwrap());
            let (member, rest) = gz.split_at(size as usize);
            members.push(member);
            gz = rest;
        }
        members
    }

    #[test]
    fn members_give_their_size_and_inflate_on_threads_in_order() {
        let data = text(10_000);
        let mut gz = Vec::new();
        gzip_members(&data[..], &mut gz, 1000, 2, 0).unwrap();
        let members = sized_members(&gz);
        assert_eq!(members.len(), 10);
        // Each is a gzip member of its own to any reader.
        for (i, member) in members.iter().enumerate() {
            let mut one = Vec::new();
            flate2::read::GzDecoder::new(*member)
                .read_to_end(&mut one)
                .unwrap();
            assert_eq!(one, data[i * 1000..(i + 1) * 1000]);
        }
        for (threads, serial) in [(1, 0), (2, 0), (4, 0), (2, 3), (3, 10), (2, 11)] {
            let mut out = Vec::new();
            let n = gunzip_members(&gz[..], &mut out, 10_000, threads, serial).unwrap();
            assert_eq!(
                (n, &out),
                (10_000, &data),
                "{threads} threads after {serial}"
            );
        }
    }

    #[test]
    fn members_without_their_size_inflate_as_one_stream() {
        let data = text(6_000);
        let plain = |piece: &[u8]| {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), Compression::fast());
            enc.write_all(piece).unwrap();
            enc.finish().unwrap()
        };
        let mut ours = Vec::new();
        gzip_members(&data[..3000], &mut ours, 1000, 2, 0).unwrap();
        // Another sender's members only; ours, then another's (ours again after those).
        let others: Vec<u8> = data.chunks(1500).flat_map(plain).collect();
        let mut mixed = ours.clone();
        mixed.extend(plain(&data[3000..4000]));
        gzip_members(&data[4000..], &mut mixed, 1000, 2, 0).unwrap();
        for gz in [&others, &mixed] {
            for (threads, serial) in [(2, 0), (3, 1), (1, 0)] {
                let mut out = Vec::new();
                gunzip_members(&gz[..], &mut out, 6_000, threads, serial).unwrap();
                assert_eq!(out, data, "{threads} threads after {serial}");
                let err = gunzip_members(&gz[..], io::sink(), 5_999, threads, serial);
                assert!(err.unwrap_err().detail.contains("limit"));
            }
        }
    }

    #[test]
    fn a_size_that_does_not_end_its_member_is_refused() {
        let data = text(5_000);
        let mut gz = Vec::new();
        gzip_members(&data[..], &mut gz, 1000, 2, 0).unwrap();
        let second = sized_members(&gz)[0].len();
        let size_of_second = second + SIZE_AT;
        let true_size =
            u32::from_le_bytes(gz[size_of_second..size_of_second + 4].try_into().unwrap());
        // Too short, too long (into the third member), past the end of the stream.
        for size in [true_size - 3, true_size + 20, gz.len() as u32] {
            let mut bad = gz.clone();
            bad[size_of_second..size_of_second + 4].copy_from_slice(&size.to_le_bytes());
            for (threads, serial) in [(2, 0), (1, 0), (2, 5)] {
                let err =
                    gunzip_members(&bad[..], io::sink(), 1 << 20, threads, serial).unwrap_err();
                assert_eq!(err.code, ErrorCode::DecompressionFailure);
                assert!(
                    err.detail.contains("not a valid gzip"),
                    "{size}: {}",
                    err.detail
                );
                if size == gz.len() as u32 {
                    assert!(
                        err.detail.contains(&format!(
                            "(it ends inside a member of {size} bytes); it must be"
                        )),
                        "{}",
                        err.detail
                    );
                }
            }
        }
    }

    #[test]
    fn members_have_the_header_flate2_wrote_and_inflate_exactly_or_through_flate2() {
        let data = text(5_000);
        let mut gz = Vec::new();
        gzip_members(&data[..], &mut gz, 1000, 2, 0).unwrap();
        // The header is the one flate2's GzBuilder wrote for these members before libdeflate
        // deflated them: the same bytes up to the size.
        let mut old = flate2::GzBuilder::new()
            .extra(vec![b'V', b'm', 4, 0, 0, 0, 0, 0])
            .write(Vec::new(), Compression::fast());
        old.write_all(b"x").unwrap();
        let old = old.finish().unwrap();
        let members = sized_members(&gz);
        assert_eq!(members[0][..SIZE_AT], old[..SIZE_AT]);
        // One member: libdeflate, exactly.
        assert!(matches!(inflate_member(members[0]), Inflated::Whole(c) if c == data[..1000]));
        // A size that spans two whole members: both, in order (flate2 reads the series).
        let two = &gz[..members[0].len() + members[1].len()];
        assert!(Inflater::new().unwrap().exactly_one(two, 1000).is_none());
        assert!(matches!(inflate_member(two), Inflated::Whole(c) if c == data[..2000]));
        // A trailer whose size lies is broken gzip, whichever way it is read.
        let mut lying = members[0].to_vec();
        let at = lying.len() - 4;
        lying[at..].copy_from_slice(&999u32.to_le_bytes());
        assert!(Inflater::new().unwrap().exactly_one(&lying, 999).is_none());
        assert!(matches!(inflate_member(&lying), Inflated::Failed(_)));
        // So is a damaged body (the CRC-32 no longer matches).
        let mut damaged = members[0].to_vec();
        damaged[SIZE_AT + 10] ^= 0x55;
        assert!(matches!(inflate_member(&damaged), Inflated::Failed(_)));
    }

    /// libdeflate's exact path never accepts a damaged member that flate2 would refuse or
    /// read otherwise: thousands of members with a few bytes changed, each read both ways.
    #[test]
    fn damaged_members_read_the_same_by_libdeflate_and_flate2() {
        let data = text(3_000);
        let mut gz = Vec::new();
        gzip_members(&data[..], &mut gz, 3_000, 1, 1).unwrap();
        let mut x: u32 = 0x9e37_79b9;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as usize
        };
        let (mut exact, mut refused) = (0, 0);
        for round in 0..3_000 {
            let mut member = gz.clone();
            for _ in 0..1 + round % 3 {
                let at = next() % member.len();
                member[at] ^= 1 << (next() % 8);
            }
            let hint = u32::from_le_bytes(member[member.len() - 4..].try_into().unwrap());
            if (hint as usize) > MEMBER_LIMIT {
                // inflate_member never gives libdeflate a size past the limit.
                continue;
            }
            match Inflater::new().unwrap().exactly_one(&member, hint as usize) {
                Some(content) => {
                    exact += 1;
                    let mut by_flate2 = Vec::new();
                    MultiGzDecoder::new(&member[..])
                        .take(MEMBER_LIMIT as u64 + 1)
                        .read_to_end(&mut by_flate2)
                        .unwrap_or_else(|e| panic!("round {round}: flate2 refuses it: {e}"));
                    assert_eq!(by_flate2, content, "round {round}");
                }
                None => refused += 1,
            }
        }
        // Most changes break the member; some do not (the header's time, XFL and OS bytes,
        // the bytes of its extra field, which no reader checks).
        assert!(
            exact > 0 && refused > 2_000,
            "{exact} read, {refused} refused"
        );
    }

    #[test]
    fn a_member_larger_than_ours_inflates_as_a_stream_under_the_cap() {
        // One member of 5 MiB of zeros: a few KiB that say their size, more than a
        // worker inflates in memory.
        let zeros = vec![0u8; 5 << 20];
        let mut gz = Vec::new();
        gzip_members(&zeros[..], &mut gz, 5 << 20, 1, 0).unwrap();
        gzip_members(&b"tail"[..], &mut gz, 1000, 1, 0).unwrap();
        assert_eq!(sized_members(&gz).len(), 2);
        let mut out = Vec::new();
        gunzip_members(&gz[..], &mut out, 6 << 20, 2, 0).unwrap();
        assert_eq!(out.len(), (5 << 20) + 4);
        assert!(out.ends_with(b"\0tail"));
        let err = gunzip_members(&gz[..], io::sink(), 4 << 20, 2, 0).unwrap_err();
        assert!(err.detail.contains("limit"), "{}", err.detail);
    }

    #[test]
    fn a_worker_that_panics_is_an_error_not_a_wait() {
        let mut items = 0..10u32;
        let mut handed = Vec::new();
        let err = in_order_on_threads(
            2,
            || Ok(items.next()),
            |i: u32| {
                assert_ne!(i, 4, "the work fails on item 4");
                i
            },
            |i| {
                handed.push(i);
                Ok(())
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
        assert_eq!(handed, [0, 1, 2, 3]);
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

    /// A thread keeps its compressors from member to member; a member is the same bytes
    /// as one made by fresh compressors, whatever the thread compressed before (sealing a
    /// message again must give the same bytes).
    #[test]
    fn a_member_does_not_depend_on_what_its_thread_compressed_before() {
        let pieces = [
            text(300_000),
            noise(300_000, 0x9e37_79b9),
            text(1000),
            noise(200_000, 7),
            text(300_000)[1000..].to_vec(),
        ];
        let fresh: Vec<Vec<u8>> = pieces
            .iter()
            .map(|p| {
                let p = p.clone();
                std::thread::spawn(move || gzip_member(&p).unwrap())
                    .join()
                    .unwrap()
            })
            .collect();
        for _ in 0..2 {
            for (piece, fresh) in pieces.iter().zip(&fresh) {
                assert_eq!(&gzip_member(piece).unwrap(), fresh);
            }
        }
        // Both levels were used: the random pieces are stored, the text deflated.
        assert!(fresh[1].len() > 300_000 && fresh[0].len() < 100_000);
    }

    /// Bytes that deflating would make larger come out of igzip as stored blocks, and
    /// exactly as large as [`Igzip::bound`] allows for them (without that room it would
    /// fail instead, so the output would depend on the buffer, not the bytes).
    #[test]
    fn igzip_stores_what_deflating_would_enlarge() {
        let noise = noise(100_000, 3);
        let mut igzip = Igzip::new();
        let mut out = vec![0u8; Igzip::bound(noise.len())];
        let n = igzip.deflate(&noise, &mut out).unwrap();
        // Two stored blocks: a 5-byte header each (RFC 1951 §3.2.4), then the bytes.
        assert_eq!(n, noise.len() + 2 * 5);
        assert_eq!(out[0] & 0b111, 0b000, "a stored block, not the final one");
        let mut back = Vec::new();
        flate2::read::DeflateDecoder::new(&out[..n])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == noise);
        let err = igzip.deflate(&noise, &mut out[..noise.len()]).unwrap_err();
        assert!(err.to_string().contains("too little room"), "{err}");
    }

    /// The bytes this release seals for a fixed part: pinned, because a retry (on this
    /// instance or the other one of a pair) seals a message again and the partner's
    /// receipt for the first copy must match. A change here is a release that seals
    /// differently (`deploy/pair/README.md`, upgrading), or a machine on which igzip
    /// deflates differently: either must be known before a release.
    #[test]
    fn members_are_the_bytes_this_release_seals() {
        let mut part = text(2 << 20);
        // A piece that is stored (its sample does not compress), and one whose sample
        // compresses but whose rest does not (deflated by igzip all the same).
        part.extend(noise(MEMBER_SIZE, 0x9e37_79b9));
        part.extend(text(40_000));
        part.extend(noise(MEMBER_SIZE - 40_000, 11));
        part.extend(text(123_456));
        let mut gz = Vec::new();
        gzip(&part[..], &mut gz).unwrap();
        let mut back = Vec::new();
        gunzip(&gz[..], &mut back, u64::MAX).unwrap();
        assert!(back == part, "the members inflate to the part");
        assert_eq!(
            hex::encode(openssl::sha::sha256(&gz)),
            "76bfa0a9576849c45049fa6bbf9652315c9e9d4a09205447226094cc6aeccb4a",
            "{} bytes sealed",
            gz.len()
        );
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
