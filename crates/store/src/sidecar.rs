//! Message sidecars: the last acknowledged state of every message, kept in small
//! append-only files beside the payload files, so that a store whose sled files are
//! damaged or gone can be rebuilt (`varti db recover`).
//!
//! Layout: `<store>/messages/<b>.log`, where `<b>` is the first two hex digits of the
//! SHA-256 of the message id: 256 bucket files at most, each holding the messages whose id
//! hashes there. A bucket is a sequence of JSON lines, one per durable change:
//! `{"format": 3, "record": <MessageRecord>}`, or `{"format": 3, "removed": "<id>"}` when
//! the message left the store. The last line of a message is its state. The record carries
//! the payload references with their SHA-256, the receipt, the state and the history:
//! everything the store knows. The bytes of inline payloads are carried by the first line
//! of a message written since the process started or the bucket was last compacted; later
//! lines leave them out, and a reader takes them from a line that has them (payload bytes
//! never change under their id).
//!
//! Why buckets: a file of its own per message cost the creation of a file (an inode, a
//! directory entry, their syncs) for every message received or submitted, which made the
//! sidecars the most expensive step of a small exchange on a file system without a journal
//! (`docs/benchmarks.md`). A change now appends a line to a file that exists already and
//! syncs its data. There are few buckets so that a store creates them all with its first
//! thousand messages or so (a bucket created is an inode allocated, the very cost avoided),
//! and enough that compacting one stays short (a 256th of the sidecars).
//!
//! A bucket is **compacted** — each message's last line, preceded by the line with its
//! bytes when the last one leaves them out, copied as they are to a temporary file, synced,
//! renamed into place — when it has grown to twice its size after the last compaction (and
//! to at least [`COMPACT_AT_LEAST`]), and when a purge or a removal asks for it
//! ([`Sidecars::compact_marked`], at the end of a purge run: each bucket once), so that no
//! line keeps the bytes of a purged payload or a removed message. The first line of a
//! compacted bucket records the size of the lines after it, `{"format": 3, "live": N}`,
//! from which the next compaction is planned.
//!
//! A line torn by a crash belongs to a change nobody was told about (its sync had not
//! returned): it is skipped, and the next append starts a line of its own after it.
//!
//! Earlier versions wrote one file per message, `<store>/messages/<SHA-256 of the id>.json`
//! (format 1: one record; format 2: lines of records). Such files are still read, as older
//! than the bucket their name falls in, and the compaction of that bucket takes them in and
//! removes them.
//!
//! A sidecar line is written *after* sled made the change durable and *before* the store
//! method returns: when a caller is told "stored", "delivered" or "acknowledged", the
//! sidecar says so too. Lease claims by [`Store::claim_due`](crate::Store::claim_due) do not
//! write sidecars (a store rebuilt from sidecars sends such a message again, which AS4
//! duplicate detection absorbs); every other change does.

use crate::payload::{hex, sync_dir};
use crate::record::MessageRecord;
use crate::StoreError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// The line format of bucket files (formats 1 and 2 were files of one message).
const FORMAT: u32 = 3;

/// Bucket files: the first two hex digits of the id's SHA-256.
const BUCKETS: usize = 256;

/// The least size at which a bucket is compacted (below it, rewriting gains little).
const COMPACT_AT_LEAST: u64 = 256 * 1024;

/// A line as read: a record, a removal, or the header of a compacted bucket.
#[derive(Deserialize)]
struct Line {
    format: u32,
    #[serde(default)]
    record: Option<MessageRecord>,
    #[serde(default)]
    removed: Option<String>,
    #[serde(default)]
    live: Option<u64>,
}

#[derive(Serialize)]
struct RecordLine<'a> {
    format: u32,
    record: &'a MessageRecord,
}

#[derive(Serialize)]
struct RemovedLine<'a> {
    format: u32,
    removed: &'a str,
}

/// What this process knows of one bucket file.
#[derive(Default)]
struct Bucket {
    /// The size of its records after its last compaction (0 if never compacted); read from
    /// its header at the first touch.
    live: Option<u64>,
    /// The messages (SHA-256 of the id) whose inline payload bytes a line written since the
    /// bucket was opened or compacted carries, so that later lines may leave them out.
    carried: HashSet<[u8; 32]>,
    /// A purge or removal left bytes in the file that must leave it.
    erase: bool,
}

/// The sidecar directory of a store.
pub(crate) struct Sidecars {
    dir: PathBuf,
    /// Shares the directory fsyncs that make new and renamed bucket files durable.
    dir_sync: crate::sled_store::GroupCommit,
    /// One lock per bucket file: appends and compactions of a bucket run one at a time.
    buckets: Box<[Mutex<Bucket>]>,
    /// Whether the directory held files of an earlier version when it was opened (none
    /// are written since, so a compaction only looks for them when there were some).
    legacy_at_open: bool,
}

impl std::fmt::Debug for Sidecars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sidecars").field("dir", &self.dir).finish()
    }
}

/// One message's sidecar state read back: the file it came from and its record, or why a
/// file cannot be read.
pub(crate) struct ReadSidecar {
    pub(crate) path: PathBuf,
    pub(crate) record: Result<MessageRecord, String>,
}

/// Where a message's sidecar lines go.
struct Place {
    hash: [u8; 32],
    index: usize,
}

impl Place {
    fn of(message_id: &str) -> Self {
        let hash = openssl::sha::sha256(message_id.as_bytes());
        let index = usize::from(hash[0]);
        Place { hash, index }
    }
}

/// The name of bucket `index` (two hex digits, as the start of a hash in hex).
fn bucket_name(index: usize) -> String {
    format!("{index:02x}")
}

impl Sidecars {
    /// Opens (creating if `create`) `<store>/messages`; removes temporary files a crash left.
    pub(crate) fn open(store_dir: &Path, create: bool) -> Result<Self, StoreError> {
        let dir = store_dir.join("messages");
        if create {
            let tmp = dir.join("tmp");
            fs::create_dir_all(&tmp)
                .map_err(|e| StoreError::io(format!("cannot create {}", tmp.display()), e))?;
            if let Ok(entries) = fs::read_dir(&tmp) {
                for entry in entries.flatten() {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        let mut sidecars = Sidecars {
            dir,
            dir_sync: Default::default(),
            buckets: (0..BUCKETS).map(|_| Mutex::default()).collect(),
            legacy_at_open: true,
        };
        sidecars.legacy_at_open = !sidecars.legacy_files(None)?.is_empty();
        Ok(sidecars)
    }

    /// The bucket file that holds the sidecar lines of `message_id`.
    #[cfg(test)]
    pub(crate) fn path_for(&self, message_id: &str) -> PathBuf {
        self.bucket_path(Place::of(message_id).index)
    }

    fn bucket_path(&self, index: usize) -> PathBuf {
        self.dir.join(format!("{}.log", bucket_name(index)))
    }

    /// Where an earlier version kept the sidecar of the message hashed to `hash`.
    fn legacy_path(&self, hash: &[u8; 32]) -> PathBuf {
        self.dir.join(format!("{}.json", hex(hash)))
    }

    fn lock(&self, index: usize) -> MutexGuard<'_, Bucket> {
        self.buckets[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes the state `record` holds to its bucket durably: a line appended and the
    /// file's data synced (and the directory, for a new bucket file).
    pub(crate) fn write(&self, record: &MessageRecord) -> Result<(), StoreError> {
        self.write_with(record, true)
    }

    /// Writes the sidecar line of `record` without any fsync: for a store being rebuilt,
    /// made durable as a whole at the end.
    pub(crate) fn write_unsynced(&self, record: &MessageRecord) -> Result<(), StoreError> {
        self.write_with(record, false)
    }

    fn write_with(&self, record: &MessageRecord, durable: bool) -> Result<(), StoreError> {
        let place = Place::of(record.id());
        let mut bucket = self.lock(place.index);
        let path = self.bucket_path(place.index);
        // Changes to one message are written in the order the store committed them (it
        // holds the message's lock across the change and this write).
        let carry = !bucket.carried.contains(&place.hash);
        let apart = if carry { None } else { record.inline_apart() };
        let line = serialise(&RecordLine {
            format: FORMAT,
            record: apart.as_ref().map_or(record, |(apart, _)| apart),
        })?;
        let len = self.append(&mut bucket, &path, &line, durable)?;
        if carry && record.meta.payloads.iter().any(|p| p.stored.is_inline()) {
            bucket.carried.insert(place.hash);
        }
        self.compact_if_grown(place.index, &mut bucket, len, durable);
        Ok(())
    }

    /// Records durably that `message_id` left the store; its lines (and an earlier
    /// version's file) leave the bucket at its next compaction: see
    /// [`Sidecars::compact_marked`].
    pub(crate) fn remove(&self, message_id: &str) -> Result<(), StoreError> {
        let place = Place::of(message_id);
        let mut bucket = self.lock(place.index);
        let path = self.bucket_path(place.index);
        let legacy = self.legacy_path(&place.hash);
        let in_bucket = path.exists();
        if in_bucket {
            let line = serialise(&RemovedLine {
                format: FORMAT,
                removed: message_id,
            })?;
            self.append(&mut bucket, &path, &line, true)?;
        }
        if self.legacy_at_open {
            match fs::remove_file(&legacy) {
                Ok(()) => self.sync_dir()?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(StoreError::io(
                        format!("cannot remove {}", legacy.display()),
                        e,
                    ))
                }
            }
        }
        bucket.carried.remove(&place.hash);
        bucket.erase |= in_bucket;
        Ok(())
    }

    /// Marks the bucket of `message_id` for compaction by [`Sidecars::compact_marked`]:
    /// the message's payloads were purged, and no line may keep their bytes.
    pub(crate) fn mark_purged(&self, message_id: &str) {
        let place = Place::of(message_id);
        let mut bucket = self.lock(place.index);
        bucket.carried.remove(&place.hash);
        bucket.erase = true;
    }

    /// Compacts every bucket marked by a purge or a removal since the last call, so that
    /// the bytes of purged payloads and removed messages leave the disk. The store calls it
    /// at the end of a purge run (a bucket is rewritten once per run, not once per message).
    pub(crate) fn compact_marked(&self) -> Result<(), StoreError> {
        for index in 0..BUCKETS {
            let mut bucket = self.lock(index);
            if bucket.erase {
                self.compact(index, &mut bucket, true)?;
            }
        }
        Ok(())
    }

    /// Appends `line` (and its line end) to the bucket file at `path`, creating it if
    /// needed, and syncs when `durable`. Returns the file's new size.
    fn append(
        &self,
        bucket: &mut Bucket,
        path: &Path,
        line: &[u8],
        durable: bool,
    ) -> Result<u64, StoreError> {
        let io_err = |e| StoreError::io(format!("cannot write {}", path.display()), e);
        let (file, created) = match OpenOptions::new().append(true).read(true).open(path) {
            Ok(file) => (file, false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let file = OpenOptions::new()
                    .append(true)
                    .read(true)
                    .create(true)
                    .open(path)
                    .map_err(io_err)?;
                (file, true)
            }
            Err(e) => return Err(io_err(e)),
        };
        let len = file.metadata().map_err(io_err)?.len();
        if bucket.live.is_none() {
            bucket.live = Some(if created { 0 } else { header_of(&file) });
        }
        let mut bytes = Vec::with_capacity(line.len() + 2);
        // A line torn by a crash has no line end: the new line starts after it.
        if len > 0 {
            let mut last = [0u8; 1];
            file.read_exact_at(&mut last, len - 1).map_err(io_err)?;
            if last[0] != b'\n' {
                bytes.push(b'\n');
            }
        }
        bytes.extend_from_slice(line);
        bytes.push(b'\n');
        (&file).write_all(&bytes).map_err(io_err)?;
        if durable {
            file.sync_data().map_err(io_err)?;
            if created {
                self.sync_dir()?;
            }
        }
        Ok(len + bytes.len() as u64)
    }

    /// Compacts bucket `index`, now `len` bytes, if it has grown to twice its compacted
    /// size. A failure is logged, not returned: the change that triggered it is durable,
    /// and the next change of the bucket tries again.
    fn compact_if_grown(&self, index: usize, bucket: &mut Bucket, len: u64, durable: bool) {
        let live = bucket.live.unwrap_or(0);
        if len >= COMPACT_AT_LEAST.max(live.saturating_mul(2)) {
            if let Err(e) = self.compact(index, bucket, durable) {
                tracing::warn!(bucket = %bucket_name(index), error = %e,
                    "cannot compact a sidecar bucket; the next change to it tries again");
            }
        }
    }

    /// Writes bucket `index` whole: the last line of each of its messages, preceded by the
    /// line that carries the bytes of its inline payloads when the last one leaves them
    /// out; an earlier version's files of the same bucket are taken in. The lines are
    /// copied as they are (only glanced at for the message id and the bytes), in their
    /// order, so a compaction costs little more than reading and writing the file.
    fn compact(&self, index: usize, bucket: &mut Bucket, durable: bool) -> Result<(), StoreError> {
        let path = self.bucket_path(index);
        let legacy = if self.legacy_at_open {
            self.legacy_files(Some(&bucket_name(index)))?
        } else {
            Vec::new()
        };
        // Lines made from the earlier files: older than any line of the bucket.
        let mut earlier = Vec::new();
        // (One that cannot be read stays where it is, and `varti db check` names it.)
        let (records, unreadable) = read_legacy(&legacy);
        let legacy: Vec<PathBuf> = legacy
            .into_iter()
            .filter(|p| !unreadable.iter().any(|(u, _)| u == p))
            .collect();
        for record in records.finish().values() {
            earlier.extend(serialise(&RecordLine {
                format: FORMAT,
                record,
            })?);
            earlier.push(b'\n');
        }
        let mut kept = Kept::default();
        for_each_line(&earlier, |at, line| {
            kept.take(line, Span::earlier(at, line))
        });
        let file = match File::open(&path) {
            Ok(file) => Some(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(StoreError::io(format!("cannot open {}", path.display()), e)),
        };
        if let Some(file) = &file {
            let mut reader = io::BufReader::with_capacity(256 * 1024, file);
            let (mut at, mut line) = (0u64, Vec::new());
            loop {
                line.clear();
                let n = reader
                    .read_until(b'\n', &mut line)
                    .map_err(|e| StoreError::io(format!("cannot read {}", path.display()), e))?;
                if n == 0 {
                    break;
                }
                let text = line.strip_suffix(b"\n").unwrap_or(&line);
                kept.take(text, Span::in_bucket(at, text));
                at += n as u64;
            }
        }
        let tmp = self
            .dir
            .join("tmp")
            .join(format!("{}.part", uuid::Uuid::new_v4().simple()));
        let result = (|| {
            let io_err = |e| StoreError::io(format!("cannot write {}", tmp.display()), e);
            let out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(|e| StoreError::io(format!("cannot create {}", tmp.display()), e))?;
            let mut writer = io::BufWriter::with_capacity(256 * 1024, &out);
            // The header states the size of the lines after it; it is written last, over
            // a placeholder of the same width (JSON allows the trailing spaces).
            writer.write_all(&header_line(0)).map_err(io_err)?;
            let mut live = 0u64;
            let mut buf = Vec::new();
            for span in kept.spans() {
                let line = match (span.in_bucket, &file) {
                    (false, _) => &earlier[span.at as usize..span.at as usize + span.len],
                    (true, Some(file)) => {
                        buf.resize(span.len, 0);
                        file.read_exact_at(&mut buf, span.at).map_err(|e| {
                            StoreError::io(format!("cannot read {}", path.display()), e)
                        })?;
                        &buf[..]
                    }
                    (true, None) => continue,
                };
                writer.write_all(line).map_err(io_err)?;
                writer.write_all(b"\n").map_err(io_err)?;
                live += span.len as u64 + 1;
            }
            writer.flush().map_err(io_err)?;
            drop(writer);
            out.write_all_at(&header_line(live), 0).map_err(io_err)?;
            if durable {
                out.sync_all().map_err(io_err)?;
            }
            drop(out);
            fs::rename(&tmp, &path)
                .map_err(|e| StoreError::io(format!("cannot move {}", path.display()), e))?;
            if durable {
                self.sync_dir()?;
            }
            Ok(live)
        })();
        let live = match result {
            Ok(live) => live,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        // The compacted file holds what the earlier files held: they can go.
        for old in &legacy {
            let _ = fs::remove_file(old);
        }
        if durable && !legacy.is_empty() {
            self.sync_dir()?;
        }
        bucket.live = Some(live);
        bucket.carried.clear();
        bucket.erase = false;
        Ok(())
    }

    /// Returns once a directory fsync that started after the caller's creation, rename or
    /// removal has completed (shared with concurrent callers).
    fn sync_dir(&self) -> Result<(), StoreError> {
        self.dir_sync
            .sync(|| sync_dir(&self.dir).map_err(|e| e.to_string()))
    }

    /// An earlier version's per-message files, sorted; only those of bucket `prefix` when
    /// given.
    fn legacy_files(&self, prefix: Option<&str>) -> Result<Vec<PathBuf>, StoreError> {
        let mut paths = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(paths),
            Err(e) => {
                return Err(StoreError::io(
                    format!("cannot list {}", self.dir.display()),
                    e,
                ))
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".json") && prefix.is_none_or(|p| name.starts_with(p)) {
                paths.push(entry.path());
            }
        }
        paths.sort();
        Ok(paths)
    }

    /// The state of every message in the sidecars, read one bucket at a time (so that a
    /// large store is never held in memory whole); a file that cannot be read comes with
    /// its error.
    pub(crate) fn read_all(&self) -> Result<impl Iterator<Item = ReadSidecar>, StoreError> {
        // Buckets (and earlier per-message files) by their two-digit prefix.
        let mut groups: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        for path in self.legacy_files(None)? {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let prefix = name.get(..2).unwrap_or_default().to_owned();
            groups.entry(prefix).or_default().push(path);
        }
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(stem) = name.strip_suffix(".log") {
                    groups.entry(stem.to_owned()).or_default();
                }
            }
        }
        let dir = self.dir.clone();
        Ok(groups.into_iter().flat_map(move |(prefix, legacy)| {
            let path = dir.join(format!("{prefix}.log"));
            let (records, problems) = read_bucket(&path, &legacy);
            let path_of = path.clone();
            problems
                .into_iter()
                .map(|(path, why)| ReadSidecar {
                    path,
                    record: Err(why),
                })
                .chain(records.into_values().map(move |record| ReadSidecar {
                    path: path_of.clone(),
                    record: Ok(record),
                }))
                .collect::<Vec<_>>()
        }))
    }
}

/// The header line of a compacted bucket, padded to a fixed width so that it can be
/// written over its placeholder.
fn header_line(live: u64) -> Vec<u8> {
    const WIDTH: usize = 48;
    let mut line = format!("{{\"format\":{FORMAT},\"live\":{live}}}").into_bytes();
    line.resize(WIDTH - 1, b' ');
    line.push(b'\n');
    line
}

/// Calls `f` with the offset and the text (without its line end) of each line of `text`.
fn for_each_line(text: &[u8], mut f: impl FnMut(u64, &[u8])) {
    let mut at = 0;
    for line in text.split_inclusive(|b| *b == b'\n') {
        f(at as u64, line.strip_suffix(b"\n").unwrap_or(line));
        at += line.len();
    }
}

/// What a compaction needs to know of a line: its message and the state of the bytes of
/// its inline payloads (the rest of the record is skipped, not decoded).
#[derive(Deserialize)]
struct Glance<'a> {
    format: u32,
    #[serde(default, borrow)]
    record: Option<GlanceRecord<'a>>,
    #[serde(default, borrow)]
    removed: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct GlanceRecord<'a> {
    #[serde(borrow)]
    meta: GlanceMeta<'a>,
}

#[derive(Deserialize)]
struct GlanceMeta<'a> {
    #[serde(borrow)]
    message_id: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    payloads: Vec<GlancePayload<'a>>,
}

#[derive(Deserialize)]
struct GlancePayload<'a> {
    #[serde(borrow)]
    stored: GlanceStored<'a>,
}

#[derive(Deserialize)]
struct GlanceStored<'a> {
    /// The bytes in base64; empty when the line leaves them out.
    #[serde(default, borrow)]
    inline: Option<std::borrow::Cow<'a, str>>,
}

/// Where a line kept by a compaction is: in the bucket file, or in the lines made from an
/// earlier version's files (which come first); its offset and length without line end.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Span {
    in_bucket: bool,
    at: u64,
    len: usize,
}

impl Span {
    fn earlier(at: u64, line: &[u8]) -> Self {
        Span {
            in_bucket: false,
            at,
            len: line.len(),
        }
    }

    fn in_bucket(at: u64, line: &[u8]) -> Self {
        Span {
            in_bucket: true,
            at,
            len: line.len(),
        }
    }
}

/// The lines a compaction keeps, by message: its last line, and the last line carrying the
/// bytes of its inline payloads when the last line leaves them out.
#[derive(Default)]
struct Kept {
    by_id: HashMap<String, KeptLines>,
}

#[derive(Clone, Copy)]
struct KeptLines {
    last: Span,
    bytes: Option<Span>,
    needs_bytes: bool,
}

impl Kept {
    /// Takes the next line in order (torn lines, headers and lines of another format are
    /// dropped, as a reader skips them).
    fn take(&mut self, line: &[u8], span: Span) {
        let Ok(glance) = serde_json::from_slice::<Glance>(line) else {
            return;
        };
        if glance.format != FORMAT {
            return;
        }
        if let Some(record) = glance.record {
            let payloads = &record.meta.payloads;
            let apart = payloads
                .iter()
                .any(|p| p.stored.inline.as_deref() == Some(""));
            let carries = !apart && payloads.iter().any(|p| p.stored.inline.is_some());
            let id = record.meta.message_id.into_owned();
            let previous = self.by_id.get(&id).and_then(|k| k.bytes);
            self.by_id.insert(
                id,
                KeptLines {
                    last: span,
                    bytes: if carries { Some(span) } else { previous },
                    needs_bytes: apart,
                },
            );
        } else if let Some(id) = glance.removed {
            self.by_id.remove(&*id);
        }
    }

    /// The lines to write, in their original order.
    fn spans(&self) -> Vec<Span> {
        let mut spans = Vec::with_capacity(self.by_id.len() * 2);
        for k in self.by_id.values() {
            if let (true, Some(bytes)) = (k.needs_bytes, k.bytes) {
                spans.push(bytes);
            }
            spans.push(k.last);
        }
        spans.sort_unstable();
        spans
    }
}

fn serialise(line: &impl Serialize) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(line)
        .map_err(|e| StoreError::Corrupt(format!("cannot serialise a sidecar line: {e}")))
}

/// The size the header of a compacted bucket states (0 for a bucket never compacted or a
/// header that cannot be read: the bucket is then compacted early, which is harmless).
fn header_of(file: &File) -> u64 {
    let mut start = [0u8; 128];
    let n = file.read_at(&mut start, 0).unwrap_or(0);
    let first = start[..n].split(|b| *b == b'\n').next().unwrap_or_default();
    serde_json::from_slice::<Line>(first)
        .ok()
        .and_then(|l| l.live)
        .unwrap_or(0)
}

/// The last state of each message of a bucket: the earlier version's files `legacy` first
/// (older), then the lines of the bucket file at `path`; the bytes of inline payloads from
/// whichever line carries them. Files that cannot be read are returned apart.
fn read_bucket(
    path: &Path,
    legacy: &[PathBuf],
) -> (BTreeMap<String, MessageRecord>, Vec<(PathBuf, String)>) {
    let (mut merged, mut problems) = read_legacy(legacy);
    match read_lines(path, &[FORMAT]) {
        Ok(lines) => lines.into_iter().for_each(|l| merged.take(l)),
        Err(why) if why.is_empty() => {}
        Err(why) => problems.push((path.to_owned(), why)),
    }
    (merged.finish(), problems)
}

/// The files of an earlier version, merged (those that cannot be read apart).
fn read_legacy(legacy: &[PathBuf]) -> (Merge, Vec<(PathBuf, String)>) {
    let mut merged = Merge::default();
    let mut problems = Vec::new();
    for file in legacy {
        match read_lines(file, &[1, 2]) {
            Ok(lines) => lines.into_iter().for_each(|l| merged.take(l)),
            Err(why) => problems.push((file.clone(), why)),
        }
    }
    (merged, problems)
}

/// The lines of `path` in one of `formats`, skipping torn ones. `Err("")` when the file
/// does not exist; `Err(why)` when it cannot be read or holds no line that can.
fn read_lines(path: &Path, formats: &[u32]) -> Result<Vec<Line>, String> {
    let mut text = Vec::new();
    match File::open(path) {
        Ok(mut f) => f.read_to_end(&mut text).map_err(|e| e.to_string())?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(String::new()),
        Err(e) => return Err(e.to_string()),
    };
    let (mut lines, mut problem) = (Vec::new(), None);
    for raw in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<Line>(raw) {
            Ok(line) if formats.contains(&line.format) => lines.push(line),
            Ok(line) => {
                problem = Some(format!(
                    "sidecar format {} (this Varti reads formats 1 to {FORMAT})",
                    line.format
                ))
            }
            // A torn line (a crash during an append nobody was told about) is skipped.
            Err(e) => problem = Some(e.to_string()),
        }
    }
    if lines.is_empty() {
        if let Some(why) = problem {
            return Err(why);
        }
    }
    Ok(lines)
}

/// Folds sidecar lines, oldest first, into the last state of each message.
#[derive(Default)]
struct Merge {
    records: BTreeMap<String, MessageRecord>,
    /// The bytes of inline payloads, by payload id, from whichever line carried them.
    inline: HashMap<String, Arc<[u8]>>,
}

impl Merge {
    fn take(&mut self, line: Line) {
        if let Some(record) = line.record {
            for p in &record.meta.payloads {
                if let Some(bytes) = p.stored.inline_bytes().filter(|b| !b.is_empty()) {
                    self.inline.insert(p.stored.id.clone(), bytes.into());
                }
            }
            self.records.insert(record.id().to_owned(), record);
        } else if let Some(id) = line.removed {
            self.records.remove(&id);
        }
    }

    fn finish(mut self) -> BTreeMap<String, MessageRecord> {
        for record in self.records.values_mut() {
            for p in &mut record.meta.payloads {
                if p.stored.inline_bytes_apart() {
                    if let Some(bytes) = self.inline.get(&p.stored.id) {
                        p.stored.put_inline(bytes);
                    }
                }
            }
        }
        self.records
    }
}

/// What the comparison of a database record with its sidecar needs of a record (small, so
/// the check can keep one per message).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Version {
    pub(crate) updated_at: time::OffsetDateTime,
    pub(crate) history_len: usize,
    pub(crate) purged: bool,
    pub(crate) state: crate::State,
}

impl From<&MessageRecord> for Version {
    fn from(r: &MessageRecord) -> Self {
        Version {
            updated_at: r.updated_at,
            history_len: r.history.len(),
            purged: r.payloads_purged_at.is_some(),
            state: r.state,
        }
    }
}

/// Whether the database's copy of a record is behind its sidecar: the sidecar holds a
/// change the caller was told about that the database lost.
pub(crate) fn database_is_behind(database: Version, sidecar: Version) -> bool {
    use crate::record::MAX_HISTORY;
    // Every state change adds a history entry: the longer history is the later record,
    // whatever the clock did between the changes (it may have been stepped back).
    if database.history_len != sidecar.history_len
        && database.history_len < MAX_HISTORY
        && sidecar.history_len < MAX_HISTORY
    {
        return database.history_len < sidecar.history_len;
    }
    // Same number of changes (or histories trimmed): changes without a state change
    // (a purge, a duplicate counted) are told apart by time.
    database.updated_at < sidecar.updated_at || (sidecar.purged && !database.purged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn v(history_len: usize, at: time::OffsetDateTime, purged: bool) -> Version {
        Version {
            updated_at: at,
            history_len,
            purged,
            state: crate::State::Received,
        }
    }

    fn record_with_inline(id: &str, bytes: &[u8]) -> MessageRecord {
        let mut meta = crate::contract::meta(id, "backend");
        meta.payloads.push(crate::PayloadEntry {
            content_id: "cid:p1".into(),
            mime_type: "application/xml".into(),
            stored: crate::PayloadRef::inline(bytes.to_vec()),
            properties: Vec::new(),
        });
        MessageRecord::new_inbound(
            crate::NewInbound {
                meta,
                receipt: b"<receipt/>".to_vec(),
                peer: None,
            },
            crate::contract::t0(),
        )
        .unwrap()
    }

    /// Records a download (a change of the message) and writes its sidecar line.
    fn change(sidecars: &Sidecars, record: &mut MessageRecord) {
        record
            .record_download(0, "backend", crate::contract::t0())
            .unwrap();
        sidecars.write(record).unwrap();
    }

    /// Every message state the sidecars hold, by id.
    fn read_back(sidecars: &Sidecars) -> BTreeMap<String, MessageRecord> {
        sidecars
            .read_all()
            .unwrap()
            .map(|s| {
                let r = s.record.unwrap();
                (r.id().to_owned(), r)
            })
            .collect()
    }

    fn bytes_of(r: &MessageRecord) -> Option<Vec<u8>> {
        r.meta.payloads[0].stored.inline_bytes().map(<[u8]>::to_vec)
    }

    fn lines(path: &Path) -> usize {
        fs::read(path)
            .unwrap()
            .iter()
            .filter(|b| **b == b'\n')
            .count()
    }

    #[test]
    fn changes_are_appended_and_the_last_line_wins_with_the_first_lines_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let sidecars = Sidecars::open(dir.path(), true).unwrap();
        let payload = vec![7u8; 5000];
        let mut record = record_with_inline("m1@varti.test", &payload);
        sidecars.write(&record).unwrap();
        let path = sidecars.path_for(record.id());
        let first = fs::metadata(&path).unwrap().len();
        change(&sidecars, &mut record);
        let read = &read_back(&sidecars)[record.id()];
        assert_eq!(read.history.len(), record.history.len());
        assert_eq!(bytes_of(read), Some(payload.clone()));
        assert_eq!(lines(&path), 2);
        // The appended line leaves the payload's bytes out.
        let appended = fs::metadata(&path).unwrap().len() - first;
        assert!(appended < 2000, "appended {appended} bytes");

        // A torn append (a crash before its sync) is skipped, and the next append starts
        // a line of its own after it.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"format\":3,\"record\":{\"meta").unwrap();
        drop(f);
        assert_eq!(
            read_back(&sidecars)[record.id()].history.len(),
            record.history.len()
        );
        change(&sidecars, &mut record);
        let read = &read_back(&sidecars)[record.id()];
        assert_eq!(read.history.len(), record.history.len());
        assert_eq!(bytes_of(read), Some(payload));
    }

    #[test]
    fn a_purge_or_a_removal_compacts_the_bucket_and_no_line_keeps_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let sidecars = Sidecars::open(dir.path(), true).unwrap();
        let payload = vec![b'x'; 20_000];
        let mut record = record_with_inline("m1@varti.test", &payload);
        sidecars.write(&record).unwrap();
        change(&sidecars, &mut record);
        let path = sidecars.path_for(record.id());

        record.mark_payloads_purged(crate::contract::t0());
        sidecars.write(&record).unwrap();
        sidecars.mark_purged(record.id());
        // Until the compaction the first line still holds the bytes.
        assert!(fs::metadata(&path).unwrap().len() > 20_000);
        sidecars.compact_marked().unwrap();
        let text = fs::read(&path).unwrap();
        assert_eq!(lines(&path), 2, "a header and the message's one line");
        assert!(text.len() < 4000, "{} bytes", text.len());
        let read = &read_back(&sidecars)[record.id()];
        assert_eq!(bytes_of(read), None);
        assert_eq!(read.history.len(), record.history.len());

        // A removal: the message is gone at once, its lines at the compaction.
        sidecars.remove(record.id()).unwrap();
        assert!(read_back(&sidecars).is_empty());
        sidecars.compact_marked().unwrap();
        assert!(read_back(&sidecars).is_empty());
        assert_eq!(lines(&path), 1, "only the header is left");
    }

    #[test]
    fn a_bucket_is_compacted_when_it_has_doubled_and_keeps_every_message_whole() {
        let dir = tempfile::tempdir().unwrap();
        let sidecars = Sidecars::open(dir.path(), true).unwrap();
        // Messages of one bucket: ids whose hash falls in the bucket of the first.
        let bucket = Place::of("m0@varti.test").index;
        let ids: Vec<String> = (0..)
            .map(|n| format!("m{n}@varti.test"))
            .filter(|id| Place::of(id).index == bucket)
            .take(4)
            .collect();
        let payload = vec![b'p'; 30_000];
        let mut records: Vec<_> = ids
            .iter()
            .map(|id| record_with_inline(id, &payload))
            .collect();
        for r in &records {
            sidecars.write(r).unwrap();
        }
        let path = sidecars.path_for(&ids[0]);
        // Changes until the bucket passes COMPACT_AT_LEAST and is rewritten.
        let mut compacted = false;
        for round in 0..400 {
            change(&sidecars, &mut records[round % ids.len()]);
            if header_of(&File::open(&path).unwrap()) > 0 {
                compacted = true;
                break;
            }
        }
        assert!(compacted, "the bucket was never compacted");
        let read = read_back(&sidecars);
        assert_eq!(read.len(), ids.len());
        for r in &records {
            assert_eq!(read[r.id()].history.len(), r.history.len());
            assert_eq!(bytes_of(&read[r.id()]), Some(payload.clone()));
        }
        // A second compaction, of a file compacted once, keeps them too: each message's
        // bytes line and last line are copied as they are.
        let first = header_of(&File::open(&path).unwrap());
        let mut again = false;
        for round in 0..800 {
            change(&sidecars, &mut records[round % ids.len()]);
            if header_of(&File::open(&path).unwrap()) != first {
                again = true;
                break;
            }
        }
        assert!(again, "the bucket was not compacted a second time");
        let read = read_back(&sidecars);
        for r in &records {
            assert_eq!(read[r.id()].history.len(), r.history.len());
            assert_eq!(bytes_of(&read[r.id()]), Some(payload.clone()));
        }
    }

    #[test]
    fn files_of_earlier_versions_are_read_and_taken_in_by_the_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let sidecars = Sidecars::open(dir.path(), true).unwrap();
        let payload = b"<doc>written by an earlier Varti</doc>".to_vec();
        // Format 1 (one record, no line end) and format 2 (lines of records).
        let mut one = record_with_inline("old-1@varti.test", &payload);
        let legacy_one = sidecars.legacy_path(&Place::of(one.id()).hash);
        fs::write(
            &legacy_one,
            serde_json::to_vec(&serde_json::json!({"format": 1, "record": &one})).unwrap(),
        )
        .unwrap();
        let mut two = record_with_inline("old-2@varti.test", &payload);
        let legacy_two = sidecars.legacy_path(&Place::of(two.id()).hash);
        let first = serde_json::json!({"format": 2, "record": &two});
        two.record_download(0, "backend", crate::contract::t0())
            .unwrap();
        let (apart, _) = two.inline_apart().unwrap();
        let second = serde_json::json!({"format": 2, "record": apart});
        fs::write(&legacy_two, format!("{first}\n{second}\n")).unwrap();
        // The store is opened again, as after an upgrade.
        let sidecars = Sidecars::open(dir.path(), true).unwrap();

        let read = read_back(&sidecars);
        assert_eq!(read.len(), 2);
        assert_eq!(read[two.id()].history.len(), two.history.len());
        assert_eq!(bytes_of(&read[two.id()]), Some(payload.clone()));

        // A change goes to the bucket and wins over the old file; a compaction of the
        // bucket takes the old file in and removes it.
        change(&sidecars, &mut one);
        assert_eq!(
            read_back(&sidecars)[one.id()].history.len(),
            one.history.len()
        );
        sidecars.mark_purged("another@varti.test");
        let bucket_of_one = Place::of(one.id()).index;
        sidecars.lock(bucket_of_one).erase = true;
        sidecars.compact_marked().unwrap();
        assert!(!legacy_one.exists());
        let read = read_back(&sidecars);
        assert_eq!(read[one.id()].history.len(), one.history.len());
        assert_eq!(bytes_of(&read[one.id()]), Some(payload.clone()));
        assert_eq!(bytes_of(&read[two.id()]), Some(payload));

        // A message of an earlier version's file leaves with it, whether or not its bucket
        // file exists yet.
        sidecars.remove(two.id()).unwrap();
        assert!(!legacy_two.exists());
        let read = read_back(&sidecars);
        assert!(!read.contains_key(two.id()));
        assert!(read.contains_key(one.id()));
    }

    #[test]
    fn the_longer_history_wins_whatever_the_clock_did() {
        let early = datetime!(2026-01-01 10:00 UTC);
        let late = datetime!(2026-01-01 11:00 UTC);
        // The database moved on after the clock was stepped back: not behind.
        assert!(!database_is_behind(v(3, early, false), v(2, late, false)));
        // The database lost a change: behind.
        assert!(database_is_behind(v(2, late, false), v(3, early, false)));
        // Same changes; a purge the database lost shows by flag and time.
        assert!(database_is_behind(v(3, early, false), v(3, late, true)));
        assert!(!database_is_behind(v(3, late, true), v(3, late, true)));
    }
}
