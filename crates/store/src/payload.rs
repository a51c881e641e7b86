//! Payload bytes: streamed in and out, never held whole in memory (beyond a small bound).
//!
//! **Small payloads are kept inline.** A payload of at most [`INLINE_PAYLOAD_MAX`] bytes is
//! not written anywhere by [`PayloadStore::put`]: its bytes travel in the returned
//! [`PayloadRef`] and are stored *with the message record* that names it, in the same
//! transaction (and the same fsync) as the record itself (the embedded store keeps them in
//! a tree beside its records, written once; see `sled_store`). Creating, fsyncing and deleting a
//! file per small payload was the largest per-message cost of the access point (see
//! `docs/benchmarks.md`); a record write is needed anyway. Callers do not see the
//! difference: [`PayloadStore::open`] reads either kind, [`PayloadStore::remove`] of an inline
//! payload has nothing to do (its bytes go with the record, or with
//! [`Store::purge_payloads`](crate::Store::purge_payloads), which clears them), and the
//! durability contract holds because a caller always stores the record naming its payloads
//! before it acknowledges anything. A record holds at most [`INLINE_MESSAGE_MAX`] inline bytes
//! in all: the stores move the excess of a message with many small payloads to the payload
//! store proper when the record is inserted, so records stay small.
//!
//! [`FilePayloadStore`] keeps each larger payload as one file beside the database. A write
//! goes to a temporary name, is fsync'd, renamed into place, and the directory is fsync'd,
//! so that when [`PayloadStore::put`] returns the payload survives a crash, and a crash
//! mid-write leaves only a temporary file (removed at the next start), never a truncated
//! payload under a real name.
//!
//! **A file may hold its payload gzip-compressed** ([`FileEncoding::Gzip`]): a large part
//! received compressed is kept as it travelled, taken over by [`PayloadStore::adopt`],
//! instead of being inflated into a file of its own. Writing the inflated copy (four times
//! the bytes of an XML document) was most of what a receiver spent on a 1 GiB message
//! (`docs/benchmarks.md`). [`PayloadStore::open`] inflates such a file as it reads it, so
//! readers see the payload's bytes either way; the reference's size and SHA-256 are always
//! those of the payload's bytes, not of the file.

use crate::StoreError;
use openssl::sha::Sha256;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

/// Largest payload kept inline in its message record instead of a payload file (or chunk
/// rows) of its own: 64 KiB covers the typical business document (an XML of a few KiB)
/// while keeping the cost of rewriting a record (every state change rewrites it) small.
pub const INLINE_PAYLOAD_MAX: usize = 64 * 1024;

/// Most inline payload bytes one message record holds; the stores move the excess to the
/// payload store proper at insertion (a message may have up to a thousand payloads).
pub const INLINE_MESSAGE_MAX: usize = 256 * 1024;

/// Where a payload's bytes are stored. Opaque to callers; recorded in the message record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadRef {
    /// The store's identifier for the bytes.
    pub id: String,
    /// Their length in bytes.
    pub size: u64,
    /// SHA-256 of the bytes, lower-case hex, computed while they were stored. The embedded
    /// store's integrity check compares the file against it; `None` for payloads stored
    /// before it was recorded (or by a store that does not compute it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The bytes themselves, for a payload kept inline in its record (see the module
    /// documentation); `None` for one in the payload store proper, and once purged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) inline: Option<InlineBytes>,
    /// How the payload's file holds its bytes (see the module documentation).
    #[serde(default, skip_serializing_if = "FileEncoding::is_plain")]
    pub(crate) encoding: FileEncoding,
}

/// How a payload file holds the payload's bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileEncoding {
    /// The bytes as they are.
    #[default]
    Plain,
    /// A gzip stream (one member or several, one after the other) that inflates to the
    /// bytes: a part kept as it was received.
    Gzip,
}

impl FileEncoding {
    fn is_plain(&self) -> bool {
        *self == FileEncoding::Plain
    }
}

impl PayloadRef {
    /// A reference to a payload stored under `id` in a payload store (not inline).
    pub fn stored(id: impl Into<String>, size: u64, sha256: Option<String>) -> PayloadRef {
        PayloadRef {
            id: id.into(),
            size,
            sha256,
            inline: None,
            encoding: FileEncoding::Plain,
        }
    }

    /// A payload kept inline: its bytes, with a fresh id and their SHA-256.
    pub(crate) fn inline(bytes: Vec<u8>) -> PayloadRef {
        PayloadRef {
            id: uuid::Uuid::new_v4().simple().to_string(),
            size: bytes.len() as u64,
            sha256: Some(hex(&openssl::sha::sha256(&bytes))),
            inline: Some(InlineBytes(bytes.into())),
            encoding: FileEncoding::Plain,
        }
    }

    /// How the payload's file holds its bytes.
    pub fn encoding(&self) -> FileEncoding {
        self.encoding
    }

    /// The reference of a copy written with the payload's bytes as they are (a backup, a
    /// store rebuilt by recovery): the same id, size and SHA-256, in a plain file.
    pub(crate) fn copied_plain(&mut self) {
        self.encoding = FileEncoding::Plain;
    }

    /// Whether the bytes are kept inline in the record (not in a file or chunk rows of
    /// their own). A purged inline payload is no longer inline: it has no bytes anywhere.
    pub fn is_inline(&self) -> bool {
        self.inline.is_some()
    }

    /// The inline bytes, if kept inline.
    pub(crate) fn inline_bytes(&self) -> Option<&[u8]> {
        self.inline.as_ref().map(|b| &b.0[..])
    }

    /// For an inline payload, whether its bytes still have the recorded size and SHA-256
    /// (`Err` says how they differ); `None` for one stored elsewhere.
    pub(crate) fn check_inline(&self) -> Option<Result<(), String>> {
        let bytes = self.inline_bytes()?;
        let digest = hex(&openssl::sha::sha256(bytes));
        if bytes.len() as u64 != self.size {
            return Some(Err(format!(
                "inline payload {} holds {} bytes, not the {} recorded",
                self.id,
                bytes.len(),
                self.size
            )));
        }
        match &self.sha256 {
            Some(h) if *h != digest => Some(Err(format!(
                "inline payload {} has SHA-256 {digest}, not the {h} recorded",
                self.id
            ))),
            _ => Some(Ok(())),
        }
    }

    /// Drops the inline bytes (the payload is purged).
    pub(crate) fn drop_inline(&mut self) {
        self.inline = None;
    }

    /// Takes the inline bytes out, leaving the payload inline with none (the embedded
    /// store keeps the bytes beside the record; see `sled_store`).
    pub(crate) fn take_inline(&mut self) -> Option<Arc<[u8]>> {
        self.inline
            .as_mut()
            .map(|b| std::mem::replace(&mut b.0, Arc::from(&[][..])))
    }

    /// Whether the payload is inline but its bytes were taken out by
    /// [`PayloadRef::take_inline`] (or it is empty).
    pub(crate) fn inline_bytes_apart(&self) -> bool {
        self.inline.as_ref().is_some_and(|b| b.0.is_empty())
    }

    /// Puts inline bytes taken out by [`PayloadRef::take_inline`] back.
    pub(crate) fn put_inline(&mut self, bytes: &[u8]) {
        self.inline = Some(InlineBytes(bytes.into()));
    }

    /// A reader over the inline bytes, if kept inline.
    pub(crate) fn open_inline(&self) -> Option<Box<dyn Read + Send>> {
        self.inline
            .as_ref()
            .map(|b| Box::new(io::Cursor::new(Arc::clone(&b.0))) as Box<dyn Read + Send>)
    }
}

/// Inline payload bytes: shared (records are cloned), base64 in the record's JSON, and
/// shown by their length only (so that logs and test failures stay readable).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct InlineBytes(Arc<[u8]>);

impl std::fmt::Debug for InlineBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InlineBytes({} bytes)", self.0.len())
    }
}

impl Serialize for InlineBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for InlineBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine as _;
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(|b| InlineBytes(b.into()))
            .map_err(serde::de::Error::custom)
    }
}

/// Reads the start of a payload: all of it when it is at most [`INLINE_PAYLOAD_MAX`] bytes
/// (`true`), else the first `INLINE_PAYLOAD_MAX + 1` bytes (`false`; the rest is still in
/// `reader`).
pub(crate) fn read_head(reader: &mut dyn Read) -> Result<(Vec<u8>, bool), StoreError> {
    let mut head = Vec::new();
    loop {
        match Read::take(&mut *reader, (INLINE_PAYLOAD_MAX + 1 - head.len()) as u64)
            .read_to_end(&mut head)
        {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(StoreError::io(
                    "cannot read the payload being stored (nothing was kept)",
                    e,
                ))
            }
        }
    }
    let whole = head.len() <= INLINE_PAYLOAD_MAX;
    Ok((head, whole))
}

/// Keeps at most [`INLINE_MESSAGE_MAX`] inline bytes in `payloads` (a message being
/// inserted): the inline payloads past that are stored with `spill` (into the payload store
/// proper) and their references replaced. Returns the references `spill` created, for the
/// caller to remove if the record is not stored after all.
pub(crate) fn bound_inline(
    payloads: &mut [crate::PayloadEntry],
    spill: impl Fn(&mut dyn Read) -> Result<PayloadRef, StoreError>,
    remove: impl Fn(&PayloadRef),
) -> Result<Vec<PayloadRef>, StoreError> {
    let mut kept = 0usize;
    let mut spilled = Vec::new();
    for entry in payloads.iter_mut() {
        let Some(bytes) = entry.stored.inline.clone() else {
            continue;
        };
        if kept + bytes.0.len() <= INLINE_MESSAGE_MAX {
            kept += bytes.0.len();
            continue;
        }
        match spill(&mut &bytes.0[..]) {
            Ok(mut r) => {
                r.sha256 = entry.stored.sha256.clone().or(r.sha256);
                spilled.push(r.clone());
                entry.stored = r;
            }
            Err(e) => {
                spilled.iter().for_each(&remove);
                return Err(e);
            }
        }
    }
    Ok(spilled)
}

/// Streaming storage for payload bytes. Implementations: files beside the embedded store
/// ([`FilePayloadStore`]); chunked rows in PostgreSQL.
pub trait PayloadStore: Send + Sync {
    /// Streams `reader` into a new payload. Returns once the bytes are durable — or, for a
    /// payload of at most [`INLINE_PAYLOAD_MAX`] bytes, with the bytes inline in the
    /// reference, durable with the record that will name it (see the module documentation).
    fn put(&self, reader: &mut dyn Read) -> Result<PayloadRef, StoreError>;

    /// Streams a payload out. [`StoreError::NotFound`] if it was purged (or never existed).
    fn open(&self, payload: &PayloadRef) -> Result<Box<dyn Read + Send>, StoreError>;

    /// Removes a payload. Removing one that is already gone is not an error (purges are
    /// retried after crashes).
    fn remove(&self, payload: &PayloadRef) -> Result<(), StoreError>;

    /// Streams a payload out as it is kept: the gzip stream of a file kept in gzip
    /// ([`FileEncoding::Gzip`]), else the payload's bytes; with which of the two it is.
    /// A sender whose leg compresses the part sends the gzip as it is, instead of
    /// inflating it to compress it again.
    fn open_as_kept(
        &self,
        payload: &PayloadRef,
    ) -> Result<(Box<dyn Read + Send>, FileEncoding), StoreError> {
        self.open(payload).map(|r| (r, FileEncoding::Plain))
    }

    /// Takes over the complete file at `file` as a new payload without copying its bytes:
    /// the file holds the payload's bytes in `encoding` (gzip: the file inflates to them);
    /// `size` and `sha256` are those of the payload's bytes, which the caller counted and
    /// hashed while writing or checking the file (the store records them as they are; its
    /// integrity check compares the file with them later). Returns `Ok(None)`, leaving the file where it is, when this store cannot
    /// take a file over — it keeps payloads elsewhere than in files, the file is on
    /// another file system, or the payload is small enough to be kept inline — and the
    /// caller then streams it in with [`PayloadStore::put`]. On `Ok(Some(_))` the file is
    /// gone from `file` and the payload is as durable as one [`PayloadStore::put`] stored.
    ///
    /// Why: a large part received from a partner is already a file in the spool (written
    /// once while it was decrypted and inflated, and hashed then); copying it into the
    /// store read, hashed and wrote every byte a second time (a third of the receiver's
    /// CPU for a 1 GiB payload, `docs/benchmarks.md`).
    fn adopt(
        &self,
        file: &Path,
        encoding: FileEncoding,
        size: u64,
        sha256: &[u8; 32],
    ) -> Result<Option<PayloadRef>, StoreError> {
        let _ = (file, encoding, size, sha256);
        Ok(None)
    }

    /// Whether [`PayloadStore::adopt`] may take a file over: this store keeps payloads as
    /// files. A caller spooling bytes it will hand over may then start writing them to
    /// the disk early (the adoption syncs them), and keep a part received compressed as it
    /// is; otherwise its spool file is read back and removed, and writing it to the disk
    /// would be wasted.
    fn adopts_files(&self) -> bool {
        false
    }
}

/// Payload files in a directory: `<dir>/<first two id chars>/<id>`, written through
/// `<dir>/tmp/`.
#[derive(Debug)]
pub struct FilePayloadStore {
    dir: PathBuf,
}

/// Copy buffer size: large enough for throughput, small enough that memory stays flat.
const COPY_BUFFER: usize = 64 * 1024;

impl FilePayloadStore {
    /// Opens (creating if needed) the payload directory `dir`, and removes temporary files
    /// left by a crash mid-write (no record can name them).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        let tmp = dir.join("tmp");
        fs::create_dir_all(&tmp).map_err(|e| {
            StoreError::io(
                format!("cannot create payload directory {}", tmp.display()),
                e,
            )
        })?;
        let entries = fs::read_dir(&tmp)
            .map_err(|e| StoreError::io(format!("cannot list {}", tmp.display()), e))?;
        for entry in entries.flatten() {
            // Best effort: a leftover temporary file wastes space but harms nothing.
            let _ = fs::remove_file(entry.path());
        }
        sync_dir(&dir)?;
        Ok(FilePayloadStore { dir })
    }

    /// The payload directory `dir` as it is: nothing created, nothing cleaned (for the
    /// integrity check and recovery, which must not change a damaged store).
    pub(crate) fn at(dir: impl Into<PathBuf>) -> Self {
        FilePayloadStore { dir: dir.into() }
    }

    /// Stores `reader` as the payload `payload` (same id), checking it against the
    /// recorded size and SHA-256: for copying payloads into a store being rebuilt (recovery,
    /// restore). Not fsync'd: the rebuild makes the whole new store durable at once at the
    /// end ([`sync_filesystem`]) before it is renamed into place. A mismatch stores nothing
    /// and is an error.
    pub(crate) fn import(
        &self,
        payload: &PayloadRef,
        reader: &mut dyn Read,
    ) -> Result<(), StoreError> {
        let final_path = self.path_of(payload)?;
        let tmp_path = self
            .dir
            .join("tmp")
            .join(format!("{}.part", uuid::Uuid::new_v4().simple()));
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp_path)
                .map_err(|e| StoreError::io(format!("cannot create {}", tmp_path.display()), e))?;
            let (size, digest) = copy_stream(reader, &mut file)
                .map_err(|e| StoreError::io(format!("cannot copy payload {}", payload.id), e))?;
            if size != payload.size || payload.sha256.as_ref().is_some_and(|h| *h != digest) {
                return Err(StoreError::Corrupt(format!(
                    "payload {} is {size} bytes with SHA-256 {digest}, not the {} bytes{} recorded",
                    payload.id,
                    payload.size,
                    payload
                        .sha256
                        .as_ref()
                        .map(|h| format!(" with SHA-256 {h}"))
                        .unwrap_or_default()
                )));
            }
            drop(file);
            let shard = final_path
                .parent()
                .expect("payload path has a shard directory");
            fs::create_dir_all(shard)
                .map_err(|e| StoreError::io(format!("cannot create {}", shard.display()), e))?;
            fs::rename(&tmp_path, &final_path).map_err(|e| {
                StoreError::io(
                    format!("cannot move payload to {}", final_path.display()),
                    e,
                )
            })?;
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp_path);
        }
        result
    }

    /// The directory the payloads live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file holding a payload (it need not exist). Ids are validated, so a hostile
    /// reference cannot point outside the directory.
    pub fn path_of(&self, payload: &PayloadRef) -> Result<PathBuf, StoreError> {
        let id = &payload.id;
        let well_formed = id.len() >= 3
            && id.len() <= 64
            && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
        if !well_formed {
            return Err(StoreError::InvalidInput(format!(
                "payload id `{}` is not one this store issued (expected a UUID)",
                id.escape_debug()
            )));
        }
        Ok(self.dir.join(&id[..2]).join(id))
    }
}

impl FilePayloadStore {
    /// Opens the file of a payload kept in a file of its own.
    fn open_file(&self, payload: &PayloadRef) -> Result<File, StoreError> {
        let path = self.path_of(payload)?;
        File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::NotFound {
                message_id: format!("payload {}", payload.id),
            },
            _ => StoreError::io(format!("cannot open {}", path.display()), e),
        })
    }

    /// Creates the shard directory of the payload file `final_path` if it is missing:
    /// returns it, and whether it was created (its own entry then needs a sync too).
    fn make_shard<'p>(&self, final_path: &'p Path) -> Result<(&'p Path, bool), StoreError> {
        let shard = final_path
            .parent()
            .expect("payload path has a shard directory");
        let shard_is_new = !shard.exists();
        fs::create_dir_all(shard)
            .map_err(|e| StoreError::io(format!("cannot create {}", shard.display()), e))?;
        Ok((shard, shard_is_new))
    }

    /// Makes a payload file just renamed into `shard` durable: a rename is durable only
    /// once the directory entry is (and a new shard's entry in the payload directory).
    fn sync_entry(&self, shard: &Path, shard_is_new: bool) -> Result<(), StoreError> {
        sync_dir(shard)?;
        if shard_is_new {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Stores `reader` as a payload file, whatever its size (for [`PayloadStore::put`] past
    /// the inline bound, and for inline payloads a record has no room for).
    pub(crate) fn put_file(&self, reader: &mut dyn Read) -> Result<PayloadRef, StoreError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let tmp_path = self.dir.join("tmp").join(format!("{id}.part"));
        let payload = PayloadRef::stored(id, 0, None);
        let final_path = self.path_of(&payload)?;
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp_path)
                .map_err(|e| StoreError::io(format!("cannot create {}", tmp_path.display()), e))?;
            let (size, digest) = copy_stream(reader, &mut file)
                .map_err(|e| StoreError::io(format!("cannot write {}", tmp_path.display()), e))?;
            file.sync_all()
                .map_err(|e| StoreError::io(format!("cannot fsync {}", tmp_path.display()), e))?;
            drop(file);
            let (shard, shard_is_new) = self.make_shard(&final_path)?;
            fs::rename(&tmp_path, &final_path).map_err(|e| {
                StoreError::io(
                    format!("cannot move payload to {}", final_path.display()),
                    e,
                )
            })?;
            self.sync_entry(shard, shard_is_new)?;
            Ok((size, digest))
        })();
        match result {
            Ok((size, digest)) => Ok(PayloadRef {
                size,
                sha256: Some(digest),
                ..payload
            }),
            Err(e) => {
                let _ = fs::remove_file(&tmp_path);
                Err(e)
            }
        }
    }
}

impl PayloadStore for FilePayloadStore {
    fn put(&self, reader: &mut dyn Read) -> Result<PayloadRef, StoreError> {
        let (head, whole) = read_head(reader)?;
        if whole {
            return Ok(PayloadRef::inline(head));
        }
        self.put_file(&mut io::Cursor::new(head).chain(reader))
    }

    fn open(&self, payload: &PayloadRef) -> Result<Box<dyn Read + Send>, StoreError> {
        if let Some(reader) = payload.open_inline() {
            return Ok(reader);
        }
        Ok(file_reader(self.open_file(payload)?, payload.encoding))
    }

    fn open_as_kept(
        &self,
        payload: &PayloadRef,
    ) -> Result<(Box<dyn Read + Send>, FileEncoding), StoreError> {
        if let Some(reader) = payload.open_inline() {
            return Ok((reader, FileEncoding::Plain));
        }
        let file = self.open_file(payload)?;
        Ok((file_reader(file, FileEncoding::Plain), payload.encoding))
    }

    fn remove(&self, payload: &PayloadRef) -> Result<(), StoreError> {
        if payload.is_inline() {
            // Its bytes live in the record: they go with it (or with a purge).
            return Ok(());
        }
        let path = self.path_of(payload)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(StoreError::io(
                    format!("cannot remove {}", path.display()),
                    e,
                ))
            }
        }
        // Make the removal durable too: purged evidence must not come back after a crash.
        sync_dir(path.parent().expect("payload path has a shard directory"))
    }

    /// A rename into place: the file's data synced first, then the directory entry (as
    /// [`FilePayloadStore::put_file`] does for a file it wrote itself).
    fn adopt(
        &self,
        file: &Path,
        encoding: FileEncoding,
        size: u64,
        sha256: &[u8; 32],
    ) -> Result<Option<PayloadRef>, StoreError> {
        if size <= INLINE_PAYLOAD_MAX as u64 {
            return Ok(None);
        }
        // On another file system no rename can take it: leave it to `put` before syncing
        // anything (a bind mount of the same file system still fails the rename below).
        let device = |path: &Path| {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(path).map(|m| m.dev())
        };
        if device(file).ok() != device(&self.dir).ok() {
            return Ok(None);
        }
        let payload = PayloadRef::stored(uuid::Uuid::new_v4().simple().to_string(), size, None);
        let final_path = self.path_of(&payload)?;
        // The bytes must be on disk before a name in the store points at them.
        File::open(file)
            .and_then(|f| f.sync_all())
            .map_err(|e| StoreError::io(format!("cannot fsync {}", file.display()), e))?;
        let (shard, shard_is_new) = self.make_shard(&final_path)?;
        match fs::rename(file, &final_path) {
            Ok(()) => {}
            // Another mount of the file system: the caller copies.
            Err(e) if e.kind() == io::ErrorKind::CrossesDevices => return Ok(None),
            Err(e) => {
                return Err(StoreError::io(
                    format!("cannot move payload to {}", final_path.display()),
                    e,
                ))
            }
        }
        if let Err(e) = self.sync_entry(shard, shard_is_new) {
            // Nothing will name it: it must not stay as an orphan.
            let _ = fs::remove_file(&final_path);
            return Err(e);
        }
        Ok(Some(PayloadRef {
            sha256: Some(hex(sha256)),
            encoding,
            ..payload
        }))
    }

    fn adopts_files(&self) -> bool {
        true
    }
}

/// A reader of a payload file's bytes: the payload's bytes, inflated as they are read from
/// a gzip file. A gzip file that does not inflate to what it was (damaged on disk: its
/// members' CRC-32 no longer match) fails the read.
pub(crate) fn file_reader(file: File, encoding: FileEncoding) -> Box<dyn Read + Send> {
    let file = io::BufReader::with_capacity(COPY_BUFFER, file);
    match encoding {
        FileEncoding::Plain => Box::new(file),
        FileEncoding::Gzip => Box::new(io::BufReader::with_capacity(
            COPY_BUFFER,
            flate2::bufread::MultiGzDecoder::new(file),
        )),
    }
}

/// Copies with a fixed buffer (no whole-payload buffering), retrying interrupted reads.
/// Returns the length and the SHA-256 (hex) of what was copied.
fn copy_stream(reader: &mut dyn Read, out: &mut File) -> io::Result<(u64, String)> {
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut total = 0u64;
    let mut digest = StreamDigest::default();
    let mut behind = WriteBehind::default();
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok((total, hex(&digest.finish()?))),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all(&buf[..n])?;
        behind.after_write(out, n);
        digest.update(&mut buf, n);
        total += n as u64;
    }
}

/// Bytes written to a payload file before their writeback is started.
const WRITE_BEHIND_STEP: u64 = 8 << 20;

/// Starts the writeback of a payload file being written, every [`WRITE_BEHIND_STEP`]
/// bytes, without waiting for it (`sync_file_range(2)` with `SYNC_FILE_RANGE_WRITE`).
/// Left alone, the kernel writes nothing of a file of a GiB or so until the dirty pages
/// pass its background threshold (a tenth of the free memory by default) or expire
/// (30 s), so the `fsync` that makes the payload durable waits for all of it while
/// the cores idle (0.45 s per GiB on the benchmark machine); started early, the disk writes
/// while the bytes arrive. It promises nothing: durability is still the `fsync`'s.
/// The AS4 spool does the same for a received payload the store will adopt
/// (`varti_as4::spool`); the two crates share no lower one to hold it.
#[derive(Default)]
struct WriteBehind {
    /// Where the range not yet handed to writeback starts.
    started: u64,
    /// Bytes written so far.
    written: u64,
}

impl WriteBehind {
    /// Notes `n` more bytes written in order; returns the range whose writeback is to start
    /// now (offset, length), once the range not yet started is [`WRITE_BEHIND_STEP`] long.
    fn wrote(&mut self, n: usize) -> Option<(u64, u64)> {
        self.written += n as u64;
        let len = self.written - self.started;
        (len >= WRITE_BEHIND_STEP).then(|| {
            let from = std::mem::replace(&mut self.started, self.written);
            (from, len)
        })
    }

    /// Notes `n` more bytes written in order to `file`, and starts a range's writeback
    /// when one is due.
    fn after_write(&mut self, file: &File, n: usize) {
        if let Some((from, len)) = self.wrote(n) {
            // A file system without it only leaves all the work to the `fsync`.
            let _ = start_writeback(file, from, len);
        }
    }
}

/// `sync_file_range(file, offset, len, SYNC_FILE_RANGE_WRITE)`: starts writing the dirty
/// pages of the range to the disk and returns without waiting for them.
fn start_writeback(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let (Ok(offset), Ok(len)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return Err(io::ErrorKind::InvalidInput.into());
    };
    // SAFETY: the descriptor is open for the duration of the call (borrowed from `file`),
    // and the call reads or writes no memory of this process.
    let rc = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bytes a [`StreamDigest`] hashes on the calling thread before it starts a thread.
const HASH_ON_CALLER: u64 = 8 << 20;

/// The SHA-256 of a stream that is being written: the first [`HASH_ON_CALLER`] bytes are
/// hashed on the calling thread, the rest on a thread of its own. SHA-256 costs about
/// 0.8 ns a byte, as much as writing the byte to the page cache; on one thread the two add
/// up, on two they overlap. A small payload never starts the thread.
#[derive(Default)]
struct StreamDigest {
    /// Hashing on the calling thread (until the thread starts).
    here: Sha256,
    hashed: u64,
    thread: Option<HashingThread>,
}

/// A hashing thread: the queue of chunks to it, the queue of the buffers it is done with
/// (so that a chunk reuses one instead of a new allocation), and the thread, which returns
/// the digest.
struct HashingThread {
    chunks: mpsc::SyncSender<Vec<u8>>,
    spent: mpsc::Receiver<Vec<u8>>,
    handle: std::thread::JoinHandle<[u8; 32]>,
}

impl StreamDigest {
    /// Hashes `buf[..n]`. Once the thread runs, `buf` is handed to it and replaced by a
    /// buffer of the same size, one the thread is done with when there is one.
    fn update(&mut self, buf: &mut Vec<u8>, n: usize) {
        self.hashed += n as u64;
        if self.thread.is_none() && self.hashed > HASH_ON_CALLER {
            let (chunks, queue) = mpsc::sync_channel::<Vec<u8>>(16);
            let (give_back, spent) = mpsc::channel::<Vec<u8>>();
            let mut state = std::mem::take(&mut self.here);
            let handle = std::thread::spawn(move || {
                for chunk in queue {
                    state.update(&chunk);
                    // Nobody to take it once the writer has finished: dropped then.
                    let _ = give_back.send(chunk);
                }
                state.finish()
            });
            self.thread = Some(HashingThread {
                chunks,
                spent,
                handle,
            });
        }
        match &self.thread {
            None => self.here.update(&buf[..n]),
            Some(thread) => {
                let size = buf.len();
                let mut next = thread
                    .spent
                    .try_recv()
                    .unwrap_or_else(|_| Vec::with_capacity(size));
                // Full length again (the bytes are overwritten by the next read).
                next.resize(size, 0);
                let mut chunk = std::mem::replace(buf, next);
                chunk.truncate(n);
                // A send fails only if the thread is gone; finish reports that.
                let _ = thread.chunks.send(chunk);
            }
        }
    }

    /// The digest of everything hashed.
    fn finish(self) -> io::Result<[u8; 32]> {
        match self.thread {
            None => Ok(self.here.finish()),
            Some(thread) => {
                drop(thread.chunks);
                thread
                    .handle
                    .join()
                    .map_err(|_| io::Error::other("the thread hashing the payload failed"))
            }
        }
    }
}

/// SHA-256 of everything `reader` yields, lower-case hex, and its length; streamed.
pub(crate) fn sha256_of(reader: &mut dyn Read) -> io::Result<(u64, String)> {
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut total = 0u64;
    let mut hasher = openssl::sha::Sha256::new();
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok((total, hex(&hasher.finish()))),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Makes everything written on the file system holding `dir` durable with one `syncfs`
/// (one journal commit instead of one per file): for a store rebuilt in a scratch
/// directory before it is renamed into place.
pub(crate) fn sync_filesystem(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::io::AsRawFd;
    let d =
        File::open(dir).map_err(|e| StoreError::io(format!("cannot open {}", dir.display()), e))?;
    // SAFETY: syncfs only reads the descriptor, which `d` keeps open for the call.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(StoreError::io(
            format!("cannot sync the file system of {}", dir.display()),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// fsyncs a directory so that entries created, renamed or removed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(format!("cannot fsync directory {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writeback_is_started_range_after_range_as_the_file_grows() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = File::create(dir.path().join("written")).unwrap();
        let mut behind = WriteBehind::default();
        let chunk = vec![7u8; (3 << 20) + 1];
        let mut started_to = 0;
        for _ in 0..10 {
            file.write_all(&chunk).unwrap();
            if let Some((from, len)) = behind.wrote(chunk.len()) {
                // Each range starts where the last one ended, once it is a step long.
                assert_eq!(from, started_to);
                assert!((WRITE_BEHIND_STEP..WRITE_BEHIND_STEP + chunk.len() as u64).contains(&len));
                // The call is accepted by this file system (wrong flags would be EINVAL).
                start_writeback(&file, from, len).unwrap();
                started_to = from + len;
            }
        }
        let written = 10 * chunk.len() as u64;
        assert_eq!(
            started_to,
            9 * chunk.len() as u64,
            "three ranges of three writes"
        );
        assert!(
            written - started_to < WRITE_BEHIND_STEP,
            "the tail is left to the fsync"
        );
    }

    #[test]
    fn a_large_file_is_taken_over_by_a_rename_and_a_small_one_is_left_to_put() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = FilePayloadStore::open(dir.path().join("payloads")).unwrap();
        assert!(store.adopts_files(), "a spool may write behind for it");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let spooled = dir.path().join("spooled");
        fs::write(&spooled, &data).unwrap();
        let inode = fs::metadata(&spooled).unwrap().ino();
        let sha = openssl::sha::sha256(&data);
        let r = store
            .adopt(&spooled, FileEncoding::Plain, data.len() as u64, &sha)
            .unwrap()
            .expect("a large file on the same file system is taken over");
        assert!(!spooled.exists());
        assert_eq!(r.size, data.len() as u64);
        assert_eq!(r.sha256.as_deref(), Some(hex(&sha).as_str()));
        assert!(!r.is_inline());
        // The very file, not a copy of it.
        let path = store.path_of(&r).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().ino(), inode);
        let mut back = Vec::new();
        store.open(&r).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
        store.remove(&r).unwrap();
        assert!(!path.exists());

        // On another file system (tmpfs here): left where it is, for `put` to copy.
        let shm = tempfile::tempdir_in("/dev/shm").expect("a tmpfs at /dev/shm");
        let elsewhere = shm.path().join("spooled");
        fs::write(&elsewhere, &data).unwrap();
        assert_ne!(
            fs::metadata(&elsewhere).unwrap().dev(),
            fs::metadata(dir.path()).unwrap().dev()
        );
        let sha = openssl::sha::sha256(&data);
        assert!(store
            .adopt(&elsewhere, FileEncoding::Plain, data.len() as u64, &sha)
            .unwrap()
            .is_none());
        assert!(elsewhere.exists());

        // At most the inline bound: left where it is, for `put` to keep inline.
        let small = dir.path().join("small");
        fs::write(&small, b"tiny").unwrap();
        let sha = openssl::sha::sha256(b"tiny");
        assert!(store
            .adopt(&small, FileEncoding::Plain, 4, &sha)
            .unwrap()
            .is_none());
        assert!(small.exists());
    }

    #[test]
    fn a_gzip_file_taken_over_reads_as_the_payload_it_inflates_to() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let store = FilePayloadStore::open(dir.path().join("payloads")).unwrap();
        let data: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
        // Two members, as a sender that compresses a large part in pieces writes them.
        let mut gz = Vec::new();
        for half in data.chunks(data.len() / 2) {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(half).unwrap();
            gz.extend(enc.finish().unwrap());
        }
        assert!(gz.len() < data.len() / 2, "the test data compresses");
        let spooled = dir.path().join("spooled.gz");
        fs::write(&spooled, &gz).unwrap();
        let sha = openssl::sha::sha256(&data);
        let r = store
            .adopt(&spooled, FileEncoding::Gzip, data.len() as u64, &sha)
            .unwrap()
            .expect("taken over");
        assert_eq!(r.encoding(), FileEncoding::Gzip);
        assert_eq!(
            r.size,
            data.len() as u64,
            "the payload's size, not the file's"
        );
        // The file is the gzip as it came; a reader gets the payload's bytes.
        let path = store.path_of(&r).unwrap();
        assert_eq!(fs::read(&path).unwrap(), gz);
        let mut back = Vec::new();
        store.open(&r).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
        // The reference says so in the record's JSON; a plain one says nothing new.
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["encoding"], "gzip");
        let back: PayloadRef = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
        let plain = PayloadRef::stored("ab12", 1, None);
        assert!(serde_json::to_value(&plain)
            .unwrap()
            .get("encoding")
            .is_none());

        // Damage on disk shows as a failed read, never as other bytes.
        let mut damaged = gz.clone();
        let at = damaged.len() / 3;
        damaged[at] ^= 0xff;
        fs::write(&path, &damaged).unwrap();
        let mut out = Vec::new();
        let read = store.open(&r).unwrap().read_to_end(&mut out);
        let err = read.expect_err("a damaged gzip file is not read as the payload");
        assert!(err.to_string().contains("corrupt"), "{err}");
    }

    #[test]
    fn a_large_payload_is_hashed_on_a_thread_to_the_same_digest() {
        // Past the bytes hashed on the caller (the thread starts), and below them.
        for len in [HASH_ON_CALLER as usize * 2 + 12_345, 100_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let dir = tempfile::tempdir().unwrap();
            let mut file = File::create(dir.path().join("copy")).unwrap();
            // A reader that yields odd-sized pieces, as an upload does.
            let mut reader = io::Read::chain(&data[..1000], &data[1000..]);
            let (size, digest) = copy_stream(&mut reader, &mut file).unwrap();
            assert_eq!(size, len as u64);
            assert_eq!(digest, hex(&openssl::sha::sha256(&data)), "{len} bytes");
            assert_eq!(fs::read(dir.path().join("copy")).unwrap(), data);
        }
    }

    #[test]
    fn put_open_remove_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = FilePayloadStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let r = store.put(&mut &data[..]).unwrap();
        assert_eq!(r.size, data.len() as u64);
        let mut back = Vec::new();
        store.open(&r).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
        assert!(store.path_of(&r).unwrap().exists());
        store.remove(&r).unwrap();
        assert!(!store.path_of(&r).unwrap().exists());
        store.remove(&r).unwrap();
        assert!(matches!(store.open(&r), Err(StoreError::NotFound { .. })));
        // Nothing is left in the temporary directory.
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    /// Payload files under `dir` (shard directories), not counting temporary ones.
    fn payload_files(dir: &Path) -> usize {
        fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != "tmp" && e.path().is_dir())
            .map(|e| fs::read_dir(e.path()).unwrap().count())
            .sum()
    }

    #[test]
    fn small_payloads_are_inline_and_large_ones_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = FilePayloadStore::open(dir.path()).unwrap();
        for size in [0, 1, 10 * 1024, INLINE_PAYLOAD_MAX] {
            let data: Vec<u8> = (0..size).map(|i| (i % 249) as u8).collect();
            let r = store.put(&mut &data[..]).unwrap();
            assert!(r.is_inline(), "{size}");
            assert_eq!(r.size, size as u64);
            assert_eq!(
                r.sha256.as_deref(),
                Some(hex(&openssl::sha::sha256(&data)).as_str())
            );
            let mut back = Vec::new();
            store.open(&r).unwrap().read_to_end(&mut back).unwrap();
            assert_eq!(back, data);
            // Nothing to remove: the bytes go with the record.
            store.remove(&r).unwrap();
            // The bytes travel in the record's JSON (base64) and come back whole.
            let json = serde_json::to_string(&r).unwrap();
            assert!(json.contains("\"inline\""), "{json}");
            let again: PayloadRef = serde_json::from_str(&json).unwrap();
            assert_eq!(again, r);
        }
        assert_eq!(payload_files(dir.path()), 0);
        // One byte more and the payload gets a file of its own, read back the same.
        let data: Vec<u8> = (0..=INLINE_PAYLOAD_MAX).map(|i| (i % 241) as u8).collect();
        let r = store.put(&mut &data[..]).unwrap();
        assert!(!r.is_inline());
        assert_eq!(r.size, data.len() as u64);
        assert!(store.path_of(&r).unwrap().exists());
        let mut back = Vec::new();
        store.open(&r).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(payload_files(dir.path()), 1);
        // A reference written before inline payloads existed reads as a stored one.
        let old: PayloadRef =
            serde_json::from_str(r#"{"id":"0123456789abcdef0123456789abcdef","size":3}"#).unwrap();
        assert!(!old.is_inline());
    }

    #[test]
    fn bound_inline_moves_the_excess_to_the_payload_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = FilePayloadStore::open(dir.path()).unwrap();
        let entry = |r: PayloadRef| crate::PayloadEntry {
            content_id: String::new(),
            mime_type: "application/xml".into(),
            stored: r,
            properties: Vec::new(),
        };
        let chunk = vec![7u8; INLINE_PAYLOAD_MAX];
        let per_message = INLINE_MESSAGE_MAX / INLINE_PAYLOAD_MAX;
        let mut payloads: Vec<_> = (0..per_message + 2)
            .map(|_| entry(store.put(&mut &chunk[..]).unwrap()))
            .collect();
        let before = payloads.clone();
        let spilled = bound_inline(&mut payloads, |r| store.put_file(r), |_| {}).unwrap();
        assert_eq!(spilled.len(), 2);
        let inline: usize = payloads
            .iter()
            .filter_map(|p| p.stored.inline_bytes())
            .map(<[u8]>::len)
            .sum();
        assert_eq!(inline, INLINE_MESSAGE_MAX);
        for (now, was) in payloads.iter().zip(&before) {
            assert_eq!(
                (now.stored.size, &now.stored.sha256),
                (was.stored.size, &was.stored.sha256)
            );
            let mut back = Vec::new();
            store
                .open(&now.stored)
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, chunk);
        }
        assert_eq!(payload_files(dir.path()), 2);
    }

    #[test]
    fn a_failing_reader_leaves_no_file() {
        struct Broken(usize);
        impl Read for Broken {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("peer reset"));
                }
                self.0 -= 1;
                buf[0] = 7;
                Ok(1)
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let store = FilePayloadStore::open(dir.path()).unwrap();
        let err = store.put(&mut Broken(10)).unwrap_err();
        assert!(err.to_string().contains("peer reset"), "{err}");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn hostile_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = FilePayloadStore::open(dir.path()).unwrap();
        for id in ["../../etc/passwd", "", "ab", "a/b/c/d", "zz99"] {
            let r = PayloadRef::stored(id, 0, None);
            assert!(
                matches!(store.open(&r), Err(StoreError::InvalidInput(_))),
                "{id}"
            );
        }
    }

    #[test]
    fn leftover_temporary_files_are_cleaned_at_open() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("tmp")).unwrap();
        fs::write(dir.path().join("tmp").join("x.part"), b"half").unwrap();
        FilePayloadStore::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
