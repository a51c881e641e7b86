//! A large compressed payload's length and SHA-256, taken on a thread of its own from the
//! plaintext of its part while [`EarlyPart`](super::EarlyPart) decrypts the part as it
//! arrives.
//!
//! Why: once the body had ended, the receiver's check of a part kept as it travelled
//! inflated it and hashed the inflated bytes in order, on one core, before the receipt
//! could go out. For a compressible payload that SHA-256 was the floor of the whole step
//! after the body (`docs/benchmarks.md`, eighteenth round). Taken while the body arrives,
//! it overlaps the network read instead of following it.
//!
//! Only where it pays: a part that inflates to at least [`LEAST_RATIO`] times its size,
//! where the step after the body is long against the body itself (XML: six times). For
//! bytes that barely compress, and for uncompressed parts, it was measured to cost the
//! receiver more CPU than it saved time (`docs/benchmarks.md`, nineteenth round): the
//! worker gives up once [`JUDGED_AFTER`] bytes show such a part, and is not started for an
//! uncompressed one.
//!
//! Nothing is trusted earlier than before. The outcome is used by `deliver` only:
//! - after the signature, policy and trust checks have passed over the very bytes it was
//!   taken from (the decrypted file, written from the same buffers);
//! - and only when it is a clean success. Any failure (a gzip error, a part over the
//!   decompression cap, a cancelled or failed part, a worker that could not keep up its
//!   bound) leaves `deliver` to make its own pass, as before, which names the error.
//!
//! The worker inflates before the signature is checked, so it is bounded: it stops at
//! [`INFLATE_RATIO`](super::INFLATE_RATIO) times the bytes it has been fed, plus
//! [`INFLATE_PROBE`](super::INFLATE_PROBE). An unauthenticated sender can make it do no more
//! than that before it gives up. The feed blocks when the worker is behind (a few hundred
//! KiB are in flight), so memory stays bounded; the body is then read at the worker's pace,
//! which is work the receiver would have done after the body anyway.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{DigestSink, INFLATE_PROBE, INFLATE_RATIO};
use crate::compress;

/// How many bytes the feed gathers before it hands them to the worker.
const CHUNK: usize = 256 * 1024;

/// How many chunks may wait for the worker before the feed blocks.
const IN_FLIGHT: usize = 4;

/// How many bytes of the part the worker reads before it judges the part's ratio.
const JUDGED_AFTER: u64 = 4 * 1024 * 1024;

/// The least ratio of inflated to received bytes at which the worker goes on.
const LEAST_RATIO: u64 = 2;

/// The inflated payload's length and SHA-256.
type Digest = (u64, [u8; 32]);

/// One hand-over to the worker: bytes, or the end of the part.
enum Feed {
    Bytes(Vec<u8>),
    End,
}

/// The plaintext of a part on its way to the worker.
pub(super) struct DigestFeed {
    /// `None` once the worker has stopped (then the rest is not sent).
    tx: Option<SyncSender<Feed>>,
    pending: Vec<u8>,
    /// Chunks the worker has read, given back to be filled again: the first touch of fresh
    /// pages is costly on these virtual machines (`docs/benchmarks.md`, fifth round).
    spent: Receiver<Vec<u8>>,
}

impl DigestFeed {
    /// Hands `bytes` on, in order. Blocks while the worker is [`IN_FLIGHT`] chunks behind.
    pub(super) fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.tx.is_some() {
            let take = (CHUNK - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.pending.len() == CHUNK {
                let next = match self.spent.try_recv() {
                    Ok(mut spent) => {
                        spent.clear();
                        spent
                    }
                    Err(_) => Vec::with_capacity(CHUNK),
                };
                let full = std::mem::replace(&mut self.pending, next);
                self.send(Feed::Bytes(full));
            }
        }
    }

    /// The part is complete: the worker may finish. (A feed dropped without this ends the
    /// worker's input with an error, so a cut-off part never yields a digest.)
    pub(super) fn end(mut self) {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            self.send(Feed::Bytes(rest));
        }
        self.send(Feed::End);
    }

    fn send(&mut self, feed: Feed) {
        if let Some(tx) = &self.tx {
            if tx.send(feed).is_err() {
                // The worker stopped (it failed or was cancelled): nothing more to send.
                self.tx = None;
            }
        }
    }
}

/// The worker's outcome, for `deliver`.
pub(super) struct EarlyDigest {
    worker: Mutex<Option<JoinHandle<Option<Digest>>>>,
    cancelled: Arc<AtomicBool>,
}

impl EarlyDigest {
    /// Starts a worker for a part that its `PartInfo` declares gzip-compressed (inflated
    /// under `cap`, as `deliver` would). `None` if no thread can be had: the part is then
    /// checked after the body, as before.
    pub(super) fn start(cap: u64) -> Option<(DigestFeed, EarlyDigest)> {
        let (tx, rx) = mpsc::sync_channel(IN_FLIGHT);
        // Room for every chunk there can be, so that giving one back never waits.
        let (give_back, spent) = mpsc::sync_channel(IN_FLIGHT + 2);
        let cancelled = Arc::new(AtomicBool::new(false));
        let stop = cancelled.clone();
        let worker = std::thread::Builder::new()
            .name("varti-digest".into())
            .spawn(move || digest(rx, give_back, cap, &stop))
            .ok()?;
        let feed = DigestFeed {
            tx: Some(tx),
            pending: Vec::with_capacity(CHUNK),
            spent,
        };
        let digest = EarlyDigest {
            worker: Mutex::new(Some(worker)),
            cancelled,
        };
        Some((feed, digest))
    }

    /// The inflated payload's length and SHA-256, if the worker took them cleanly from the
    /// whole part and the part is read as compressed now as well; `None` otherwise (or when
    /// asked a second time). Waits for the worker.
    pub(super) fn outcome(&self, compressed: bool) -> Option<Digest> {
        if !compressed {
            return None;
        }
        let worker = self.worker.lock().ok()?.take()?;
        match worker.join() {
            Ok(outcome) => outcome,
            // A panic in the worker is a bug: passed on as it is.
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for EarlyDigest {
    fn drop(&mut self) {
        // Not needed (a refused message, a failed part): the worker stops at its next
        // write instead of inflating the rest for nobody.
        self.cancelled.store(true, Ordering::Relaxed);
    }
}

/// The worker: reads the part from `rx` and counts and hashes the payload.
fn digest(
    rx: Receiver<Feed>,
    give_back: SyncSender<Vec<u8>>,
    cap: u64,
    cancelled: &AtomicBool,
) -> Option<Digest> {
    let fed = AtomicU64::new(0);
    let mut input = FeedReader {
        rx,
        give_back,
        chunk: Vec::new(),
        at: 0,
        ended: false,
        fed: &fed,
    };
    let mut sink = Bounded {
        digest: DigestSink::default(),
        fed: &fed,
        cancelled,
    };
    compress::gunzip(&mut input, &mut sink, cap).ok()?;
    // The decompressor stops at the end of the gzip data: a digest counts only if it was
    // the end of the part as well (trailing bytes are `deliver`'s to name).
    let mut rest = [0u8; 1];
    if !input.ended && input.read(&mut rest).ok()? != 0 {
        return None;
    }
    input
        .ended
        .then(|| (sink.digest.len, sink.digest.hash.finish()))
}

/// The part's bytes as the feed hands them over; an error if the feed goes away without
/// saying the part is complete.
struct FeedReader<'f> {
    rx: Receiver<Feed>,
    give_back: SyncSender<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
    ended: bool,
    /// Bytes read so far: what bounds the inflation.
    fed: &'f AtomicU64,
}

impl Read for FeedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Feed::Bytes(chunk)) => {
                    let spent = std::mem::replace(&mut self.chunk, chunk);
                    self.at = 0;
                    if spent.capacity() == CHUNK {
                        // Full, or the feed has gone: then it is simply dropped.
                        let _ = self.give_back.try_send(spent);
                    }
                }
                Ok(Feed::End) => self.ended = true,
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the part ended before it was complete",
                    ))
                }
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        self.fed.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The digest of the payload, refusing to grow past what the bytes fed so far allow, and
/// giving up on a part that inflates too little to gain from it.
struct Bounded<'f> {
    digest: DigestSink,
    fed: &'f AtomicU64,
    cancelled: &'f AtomicBool,
}

impl Write for Bounded<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(io::Error::other("no longer needed"));
        }
        let fed = self.fed.load(Ordering::Relaxed);
        let allowed = INFLATE_PROBE.saturating_add(fed.saturating_mul(INFLATE_RATIO));
        if self.digest.len + buf.len() as u64 > allowed {
            return Err(io::Error::other(
                "inflates past the bound for a part not yet authenticated",
            ));
        }
        if fed >= JUDGED_AFTER && self.digest.len < fed.saturating_mul(LEAST_RATIO) {
            return Err(io::Error::other("compresses too little to gain from it"));
        }
        self.digest.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::sha::sha256;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        compress::gzip(data, &mut out).unwrap();
        out
    }

    /// Feeds `bytes` in pieces of `piece` and returns the outcome.
    fn run(bytes: &[u8], cap: u64, piece: usize) -> Option<Digest> {
        let (mut feed, digest) = EarlyDigest::start(cap).unwrap();
        for p in bytes.chunks(piece) {
            feed.push(p);
        }
        feed.end();
        digest.outcome(true)
    }

    #[test]
    fn a_compressed_part_yields_the_length_and_hash_of_the_inflated_payload() {
        // Rows of XML with random numbers, past the point where the ratio is judged: it
        // inflates a few times.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut payload = Vec::new();
        for i in 0u64.. {
            if payload.len() >= 64 << 20 {
                break;
            }
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let row = format!(
                "<row><id>{i}</id><value>{}</value></row>\n",
                state % 1_000_000_000
            );
            payload.extend_from_slice(row.as_bytes());
        }
        let wire = gzip(&payload);
        assert!((wire.len() as u64) > JUDGED_AFTER);
        assert!(wire.len() * LEAST_RATIO as usize <= payload.len());
        let want = Some((payload.len() as u64, sha256(&payload)));
        assert_eq!(run(&wire, u64::MAX, 7_919), want);
        assert_eq!(run(&wire, u64::MAX, 1 << 20), want);
        // Asked for a part read as uncompressed after all, or a second time: nothing.
        let (mut feed, digest) = EarlyDigest::start(u64::MAX).unwrap();
        feed.push(&wire);
        feed.end();
        assert_eq!(digest.outcome(false), None);
        assert_eq!(digest.outcome(true), want);
        assert_eq!(digest.outcome(true), None);
    }

    #[test]
    fn anything_but_a_clean_whole_part_yields_nothing() {
        let payload = vec![b'x'; 4 << 20];
        let wire = gzip(&payload);
        assert_eq!(
            run(&wire, u64::MAX, 65_536),
            Some((payload.len() as u64, sha256(&payload)))
        );
        // Over the decompression cap.
        assert_eq!(run(&wire, 1 << 20, 65_536), None);
        // Corrupt gzip.
        let mut bad = wire.clone();
        let at = bad.len() / 2;
        bad[at] ^= 0x55;
        assert_eq!(run(&bad, u64::MAX, 65_536), None);
        // Trailing bytes after the gzip data.
        let mut trailing = wire.clone();
        trailing.extend_from_slice(b"after");
        assert_eq!(run(&trailing, u64::MAX, 65_536), None);
        // A feed that goes away without the end: a part cut off.
        let (mut feed, digest) = EarlyDigest::start(u64::MAX).unwrap();
        feed.push(&wire);
        drop(feed);
        assert_eq!(digest.outcome(true), None);
    }

    #[test]
    fn a_part_that_barely_compresses_is_left_to_the_check_after_the_body() {
        // Random bytes: gzip keeps them in stored blocks, a ratio of about one.
        let mut noise = vec![0u8; 3 * JUDGED_AFTER as usize];
        openssl::rand::rand_bytes(&mut noise).unwrap();
        let wire = gzip(&noise);
        assert_eq!(run(&wire, u64::MAX, 65_536), None);
        // The same part shorter than the point where the ratio is judged: taken.
        let short = gzip(&noise[..JUDGED_AFTER as usize / 2]);
        assert_eq!(
            run(&short, u64::MAX, 65_536),
            Some((
                JUDGED_AFTER / 2,
                sha256(&noise[..JUDGED_AFTER as usize / 2])
            ))
        );
    }

    #[test]
    fn a_bomb_is_given_up_at_the_ratio_of_the_bytes_fed_so_far() {
        // 64 MiB of zeros gzip to about 64 KiB: valid gzip within the cap, but over
        // INFLATE_RATIO times what was fed, past the probe. The worker gives up rather than
        // inflating it all.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!((bomb.len() as u64) * INFLATE_RATIO + INFLATE_PROBE < 64 << 20);
        assert_eq!(
            compress::gunzip(&bomb[..], io::sink(), u64::MAX).unwrap(),
            64 << 20
        );
        assert_eq!(run(&bomb, u64::MAX, 65_536), None);
        // A feed whose worker has stopped sends nothing more rather than waiting for it.
        let (mut feed, digest) = EarlyDigest::start(0).unwrap();
        for _ in 0..(4 * IN_FLIGHT * CHUNK).div_ceil(bomb.len()) {
            feed.push(&bomb);
        }
        feed.end();
        assert_eq!(digest.outcome(true), None);
    }
}
