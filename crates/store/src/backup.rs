//! Backups of the embedded store: one streamed file, written while the store is in use,
//! read back into a new store directory (`varti db backup` / `varti db restore`).
//!
//! Format (version 1): lines of JSON, each payload's bytes right after its line:
//!
//! ```text
//! {"format":"varti-backup","version":1,"created_at":"…"}
//! {"record":{…MessageRecord…}}
//! {"payload":{"id":…,"size":N,"sha256":…}}   then exactly N bytes
//! {"tree":"audit","key":"<base64>","value":"<base64>"}   trees of other features
//! {"end":{"messages":M,"payloads":P,"sha256":"<SHA-256 of every byte before this line>"}}
//! ```
//!
//! A payload kept inline in its record (see [`crate::INLINE_PAYLOAD_MAX`]) has no line of its own: its
//! bytes are in the record's line, and it is not counted in the summary's `payloads`.
//!
//! Consistency: each message is written as one consistent unit — its record, then the
//! payloads that record names, read from files opened before anything is written (an open
//! file stays readable on Unix even if a purge unlinks it meanwhile). Messages are
//! independent of each other, so a backup taken under load is a valid store: every message
//! as it was at some moment during the backup. A message stored after the backup passed
//! its key is not in it.

use crate::payload::{sync_dir, PayloadRef, PayloadStore};
use crate::record::MessageRecord;
use crate::sled_store::is_rebuilt_from_records;
use crate::{SledStore, StoreError};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use time::OffsetDateTime;

const FORMAT: &str = "varti-backup";
const VERSION: u32 = 1;
/// Longest JSON line a restore accepts (a record with its receipt and history).
const MAX_LINE: usize = 64 * 1024 * 1024;

/// What a backup holds (or a restore read).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupSummary {
    /// Messages.
    pub messages: u64,
    /// Payloads written after their records, bytes included (those kept inline travel in
    /// their records and are not counted here).
    pub payloads: u64,
    /// SHA-256 of the backup up to its last line.
    pub sha256: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    Record(Box<MessageRecord>),
    Payload(PayloadRef),
    Tree(TreeEntry),
    End(BackupSummary),
}

#[derive(Serialize, Deserialize)]
struct TreeEntry {
    name: String,
    key: String,
    value: String,
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
}

/// Counts and hashes what passes through.
struct Hashing<W> {
    inner: W,
    hasher: openssl::sha::Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn write_err(e: io::Error) -> StoreError {
    StoreError::io("cannot write the backup", e)
}

impl SledStore {
    /// Streams a backup of this store to `out` (see the [module docs](self)); the store
    /// stays in use meanwhile.
    pub fn backup(
        &self,
        out: &mut dyn Write,
        now: OffsetDateTime,
    ) -> Result<BackupSummary, StoreError> {
        let mut out = Hashing {
            inner: out,
            hasher: openssl::sha::Sha256::new(),
        };
        let header = Header {
            format: FORMAT.into(),
            version: VERSION,
            created_at: now,
        };
        serde_json::to_writer(&mut out, &header)
            .map_err(|e| StoreError::io("cannot write the backup", e.into()))?;
        out.write_all(b"\n").map_err(write_err)?;
        let mut summary = BackupSummary::default();
        for item in self.scan_records() {
            let (key, record) = item?;
            let mut record = record?;
            // Open every payload first; a purge racing with us shows as a missing file,
            // and then the record is read again (it says purged now, or it is gone).
            let mut files = Vec::new();
            for _attempt in 0..3 {
                files.clear();
                let mut missing = false;
                if record.payloads_purged_at.is_none() {
                    // Inline payloads travel inside their record's line.
                    for entry in record
                        .meta
                        .payloads
                        .iter()
                        .filter(|e| !e.stored.is_inline())
                    {
                        match self.file_payloads().open(&entry.stored) {
                            Ok(reader) => files.push((entry.stored.clone(), reader)),
                            Err(StoreError::NotFound { .. }) => missing = true,
                            Err(e) => return Err(e),
                        }
                    }
                }
                if !missing {
                    break;
                }
                let id = String::from_utf8_lossy(&key).into_owned();
                match crate::Store::get(self, &id)? {
                    Some(newer) => record = newer,
                    None => {
                        files.clear();
                        break;
                    }
                }
            }
            let stored_apart = record
                .meta
                .payloads
                .iter()
                .filter(|e| !e.stored.is_inline())
                .count();
            if record.payloads_purged_at.is_none() && files.len() != stored_apart {
                if crate::Store::get(self, record.id())?.is_none() {
                    continue; // purged away while we read it
                }
                return Err(StoreError::Corrupt(format!(
                    "message `{}` names a payload that is missing; run `varti db check`",
                    record.id()
                )));
            }
            // A backup carries each payload's bytes as they are (a file kept in gzip is
            // read inflated), so the record it carries names plain files.
            for entry in &mut record.meta.payloads {
                entry.stored.copied_plain();
            }
            write_line(&mut out, &Line::Record(Box::new(record)))?;
            summary.messages += 1;
            for (mut stored, mut reader) in files {
                stored.copied_plain();
                write_line(&mut out, &Line::Payload(stored.clone()))?;
                let copied =
                    io::copy(&mut (&mut reader).take(stored.size), &mut out).map_err(write_err)?;
                if copied != stored.size {
                    return Err(StoreError::Corrupt(format!(
                        "payload {} is shorter ({copied} bytes) than recorded ({}); run `varti \
                         db check`",
                        stored.id, stored.size
                    )));
                }
                summary.payloads += 1;
            }
        }
        let engine = base64::engine::general_purpose::STANDARD;
        for name in self.db().tree_names() {
            let name = String::from_utf8_lossy(&name).into_owned();
            if is_rebuilt_from_records(&name) {
                continue;
            }
            let tree = self
                .db()
                .open_tree(&name)
                .map_err(|e| StoreError::Database(format!("sled: {e}")))?;
            for item in tree.iter() {
                let (k, v) = item.map_err(|e| StoreError::Database(format!("sled: {e}")))?;
                write_line(
                    &mut out,
                    &Line::Tree(TreeEntry {
                        name: name.clone(),
                        key: engine.encode(&k),
                        value: engine.encode(&v),
                    }),
                )?;
            }
        }
        summary.sha256 = crate::payload::hex(&out.hasher.clone().finish());
        let end = serde_json::to_vec(&Line::End(summary.clone()))
            .map_err(|e| StoreError::io("cannot write the backup", e.into()))?;
        out.inner.write_all(&end).map_err(write_err)?;
        out.inner.write_all(b"\n").map_err(write_err)?;
        out.inner.flush().map_err(write_err)?;
        Ok(summary)
    }
}

fn write_line(out: &mut impl Write, line: &Line) -> Result<(), StoreError> {
    serde_json::to_writer(&mut *out, line)
        .map_err(|e| StoreError::io("cannot write the backup", e.into()))?;
    out.write_all(b"\n").map_err(write_err)
}

/// Reads a backup, hashing every byte it consumes.
struct Frames<R> {
    inner: BufReader<R>,
    hasher: openssl::sha::Sha256,
    line: usize,
}

impl<R: Read> Frames<R> {
    /// The next line (without its newline), hashed only once `accept` is called.
    fn next_line(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        let mut buf = Vec::new();
        let n = (&mut self.inner)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| StoreError::io("cannot read the backup", e))?;
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        if buf.last() != Some(&b'\n') {
            return Err(bad(format!(
                "line {} is cut off or longer than {MAX_LINE} bytes: the backup is truncated or \
                 not a Varti backup",
                self.line
            )));
        }
        Ok(Some(buf))
    }

    fn accept(&mut self, line: &[u8]) {
        self.hasher.update(line);
    }
}

/// Reader of exactly `left` payload bytes that hashes them.
struct PayloadBytes<'a, R> {
    frames: &'a mut Frames<R>,
    left: u64,
}

impl<R: Read> Read for PayloadBytes<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.frames.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the backup ends inside a payload (truncated)",
            ));
        }
        self.frames.hasher.update(&buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

fn bad(why: String) -> StoreError {
    StoreError::InvalidInput(format!("cannot restore: {why}"))
}

/// Restores the backup read from `input` into the new store directory `dir` (which must
/// not exist or be empty). Everything is checked (each payload's size and SHA-256, the
/// whole file's SHA-256 in its last line); on any error nothing is left at `dir`.
pub fn restore_backup(
    input: &mut dyn Read,
    dir: impl AsRef<Path>,
) -> Result<BackupSummary, StoreError> {
    let dir = dir.as_ref();
    if dir.exists()
        && fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(StoreError::InvalidInput(format!(
            "{} already exists and is not empty: restore into a new directory (a restore \
             never overwrites a store)",
            dir.display()
        )));
    }
    let mut partial = dir.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    if partial.exists() {
        fs::remove_dir_all(&partial).map_err(|e| {
            StoreError::io(
                format!("cannot remove the leftover {}", partial.display()),
                e,
            )
        })?;
    }
    let result = restore_into(input, &partial);
    match result {
        Ok(summary) => {
            fs::rename(&partial, dir).map_err(|e| {
                StoreError::io(
                    format!("cannot move {} to {}", partial.display(), dir.display()),
                    e,
                )
            })?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
            Ok(summary)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&partial);
            Err(e)
        }
    }
}

fn restore_into(input: &mut dyn Read, dir: &Path) -> Result<BackupSummary, StoreError> {
    let mut frames = Frames {
        inner: BufReader::with_capacity(64 * 1024, input),
        hasher: openssl::sha::Sha256::new(),
        line: 0,
    };
    let first = frames
        .next_line()?
        .ok_or_else(|| bad("the file is empty".into()))?;
    let header: Header = serde_json::from_slice(&first).map_err(|_| {
        bad("the file is not a Varti backup (its first line is not the header)".into())
    })?;
    if header.format != FORMAT || header.version != VERSION {
        return Err(bad(format!(
            "format {} version {} is not one this Varti reads ({FORMAT} {VERSION})",
            header.format, header.version
        )));
    }
    frames.accept(&first);
    let store = SledStore::open(dir)?;
    let engine = base64::engine::general_purpose::STANDARD;
    let mut counted = BackupSummary::default();
    let mut pending: Option<MessageRecord> = None;
    loop {
        let Some(raw) = frames.next_line()? else {
            return Err(bad(
                "the backup ends before its last line: it is truncated (was the backup \
                 interrupted?)"
                    .into(),
            ));
        };
        let line: Line = serde_json::from_slice(&raw)
            .map_err(|e| bad(format!("line {} cannot be read: {e}", frames.line)))?;
        if !matches!(line, Line::Payload(_)) {
            if let Some(record) = pending.take() {
                store.put_record_as_is(&record)?;
            }
        }
        match line {
            Line::Record(record) => {
                counted.messages += 1;
                pending = Some(*record);
            }
            Line::Payload(stored) => {
                let named = pending.as_ref().is_some_and(|r| {
                    r.payloads_purged_at.is_none()
                        && r.meta.payloads.iter().any(|p| p.stored == stored)
                });
                if !named {
                    return Err(bad(format!(
                        "line {}: payload {} belongs to no message before it",
                        frames.line, stored.id
                    )));
                }
                frames.accept(&raw);
                let mut bytes = PayloadBytes {
                    frames: &mut frames,
                    left: stored.size,
                };
                store
                    .file_payloads()
                    .import(&stored, &mut bytes)
                    .map_err(|e| bad(format!("payload {}: {e}", stored.id)))?;
                counted.payloads += 1;
                continue;
            }
            Line::Tree(entry) => {
                let decode = |s: &str| {
                    engine
                        .decode(s)
                        .map_err(|e| bad(format!("line {}: {e}", frames.line)))
                };
                let (k, v) = (decode(&entry.key)?, decode(&entry.value)?);
                store
                    .db()
                    .open_tree(&entry.name)
                    .and_then(|t| t.insert(k, v))
                    .map_err(|e| StoreError::Database(format!("sled: {e}")))?;
            }
            Line::End(end) => {
                let digest = crate::payload::hex(&frames.hasher.clone().finish());
                if end.sha256 != digest
                    || end.messages != counted.messages
                    || end.payloads != counted.payloads
                {
                    return Err(bad(format!(
                        "the backup is damaged: its last line promises {} messages, {} payloads, \
                         SHA-256 {}; read {} messages, {} payloads, SHA-256 {digest}",
                        end.messages, end.payloads, end.sha256, counted.messages, counted.payloads
                    )));
                }
                // Every message must have come with all its payloads.
                let page = store.scan_records();
                for item in page {
                    let (_, record) = item?;
                    let record = record?;
                    if record.payloads_purged_at.is_none() {
                        for p in &record.meta.payloads {
                            let present = match p.stored.check_inline() {
                                Some(check) => {
                                    check.map_err(bad)?;
                                    true
                                }
                                None => store.file_payloads().path_of(&p.stored)?.exists(),
                            };
                            if !present {
                                return Err(bad(format!(
                                    "message `{}` came without its payload {}",
                                    record.id(),
                                    p.content_id
                                )));
                            }
                        }
                    }
                }
                store.finish_rebuild(dir)?;
                counted.sha256 = digest;
                return Ok(counted);
            }
        }
        frames.accept(&raw);
    }
}
