//! Message sidecars: the last acknowledged state of every message, one small file per
//! message beside the payload files, so that a store whose sled files are damaged or gone
//! can be rebuilt (`varti db recover`).
//!
//! Layout: `<store>/messages/<SHA-256 of the message id>.json`. The file name is a hash so
//! that any message id (any bytes) maps to a safe name. The directory is flat (ext4 and XFS
//! index large directories) so that concurrent writers share the fsync of its entries
//! (group commit, as for sled's flushes).
//!
//! A sidecar is a sequence of lines, each `{"format": 2, "record": <MessageRecord>}`, one
//! per durable change; the last complete line is the message's state. The record carries
//! the payload references with their SHA-256, the receipt, the state and the history:
//! everything the store knows. The first line (and a rewrite) carries the bytes of inline
//! payloads; the lines appended after it leave them out (payload bytes never change under
//! their id), and a reader takes them from the line that has them. A file of format 1 (one
//! record, no line end), as earlier versions wrote, is read the same way.
//!
//! Why lines: a change appends one line and syncs the file's data, where replacing the
//! file (temporary name, fsync, rename) created a file and deleted one on every change —
//! on a file system without a journal the allocation of inodes then slows down with every
//! inode recently deleted, which made the sidecars the most expensive step of a small
//! exchange (`docs/benchmarks.md`). A line torn by a crash belongs to a change nobody was
//! told about (the sync had not returned): it is ignored, and the next append starts a new
//! line after it. A sidecar is written whole again (temporary name, fsync, rename, fsync of
//! the directory) when it is new, when it has grown past [`REWRITE_AT`], and when the
//! message's payloads are purged (so that no line keeps their bytes).
//!
//! A sidecar is written *after* sled made the change durable and *before* the store method
//! returns: when a caller is told "stored", "delivered" or "acknowledged", the sidecar says
//! so too. Lease claims by [`Store::claim_due`](crate::Store::claim_due) do not write
//! sidecars (a store rebuilt from sidecars sends such a message again, which AS4 duplicate
//! detection absorbs); every other change does.

use crate::payload::{hex, sync_dir};
use crate::record::MessageRecord;
use crate::StoreError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The sidecar line format written by this version (lines of records; format 1 was one
/// record per file).
const FORMAT: u32 = 2;

/// Size past which a sidecar is written whole again instead of appended to (a message
/// retried many times, or one with large inline payloads).
const REWRITE_AT: u64 = 1024 * 1024;

#[derive(Serialize, Deserialize)]
struct SidecarFile {
    format: u32,
    record: MessageRecord,
}

/// The sidecar directory of a store.
pub(crate) struct Sidecars {
    dir: PathBuf,
    /// Shares the directory fsyncs that make renamed sidecars durable.
    dir_sync: crate::sled_store::GroupCommit,
}

impl std::fmt::Debug for Sidecars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sidecars").field("dir", &self.dir).finish()
    }
}

/// One sidecar read back: its path and its record, or why it cannot be read.
pub(crate) struct ReadSidecar {
    pub(crate) path: PathBuf,
    pub(crate) record: Result<MessageRecord, String>,
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
        Ok(Sidecars {
            dir,
            dir_sync: Default::default(),
        })
    }

    /// Where the sidecar of `message_id` lives.
    pub(crate) fn path_for(&self, message_id: &str) -> PathBuf {
        let name = hex(&openssl::sha::sha256(message_id.as_bytes()));
        self.dir.join(format!("{name}.json"))
    }

    /// Writes the state `record` holds to its sidecar durably (a line appended, or the
    /// file written whole: see the module documentation).
    pub(crate) fn write(&self, record: &MessageRecord) -> Result<(), StoreError> {
        self.write_with(record, true)
    }

    /// Writes the sidecar of `record` without any fsync: for a store being rebuilt, made
    /// durable as a whole at the end.
    pub(crate) fn write_unsynced(&self, record: &MessageRecord) -> Result<(), StoreError> {
        self.write_with(record, false)
    }

    fn write_with(&self, record: &MessageRecord, durable: bool) -> Result<(), StoreError> {
        let path = self.path_for(record.id());
        // Changes to one message are written one at a time (the store orders them under
        // the message's lock), so nobody else appends to this file meanwhile.
        if record.payloads_purged_at.is_none() {
            match OpenOptions::new().append(true).read(true).open(&path) {
                Ok(file) => {
                    let len = file
                        .metadata()
                        .map_err(|e| StoreError::io(format!("cannot read {}", path.display()), e))?
                        .len();
                    if len > 0 && len < REWRITE_AT {
                        return append(&file, &path, len, record, durable);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io(format!("cannot open {}", path.display()), e)),
            }
        }
        self.rewrite(&path, record, durable)
    }

    /// Writes the sidecar whole (every inline payload's bytes in its one line) under a
    /// temporary name and renames it into place.
    fn rewrite(
        &self,
        path: &Path,
        record: &MessageRecord,
        durable: bool,
    ) -> Result<(), StoreError> {
        let mut bytes = line_of(record)?;
        bytes.push(b'\n');
        let tmp = self
            .dir
            .join("tmp")
            .join(format!("{}.part", uuid::Uuid::new_v4().simple()));
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(|e| StoreError::io(format!("cannot create {}", tmp.display()), e))?;
            file.write_all(&bytes)
                .and_then(|()| if durable { file.sync_all() } else { Ok(()) })
                .map_err(|e| StoreError::io(format!("cannot write {}", tmp.display()), e))?;
            drop(file);
            fs::rename(&tmp, path)
                .map_err(|e| StoreError::io(format!("cannot move {}", path.display()), e))?;
            if durable {
                self.sync_dir()?;
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Removes the sidecar of `message_id` durably (gone already is fine).
    pub(crate) fn remove(&self, message_id: &str) -> Result<(), StoreError> {
        let path = self.path_for(message_id);
        match fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(
                format!("cannot remove {}", path.display()),
                e,
            )),
        }
    }

    /// Returns once a directory fsync that started after the caller's rename or removal
    /// has completed (shared with concurrent callers).
    fn sync_dir(&self) -> Result<(), StoreError> {
        self.dir_sync
            .sync(|| sync_dir(&self.dir).map_err(|e| e.to_string()))
    }

    /// Every sidecar file, read one at a time (an unreadable one comes with its error), so
    /// that a large store is never held in memory whole.
    pub(crate) fn read_all(&self) -> Result<impl Iterator<Item = ReadSidecar>, StoreError> {
        let mut paths = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => Some(entries),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(StoreError::io(
                    format!("cannot list {}", self.dir.display()),
                    e,
                ))
            }
        };
        for entry in entries.into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                paths.push(path);
            }
        }
        paths.sort();
        Ok(paths.into_iter().map(|path| {
            let record = read_one(&path);
            ReadSidecar { path, record }
        }))
    }
}

/// One line of a sidecar: `record` as JSON, without a line end.
fn line_of(record: &MessageRecord) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(&SidecarFile {
        format: FORMAT,
        record: record.clone(),
    })
    .map_err(|e| StoreError::Corrupt(format!("cannot serialise a sidecar: {e}")))
}

/// Appends the line of `record`, without the bytes of its inline payloads (an earlier line
/// has them), to the sidecar `file` of `len` bytes, and syncs its data when `durable`.
fn append(
    file: &File,
    path: &Path,
    len: u64,
    record: &MessageRecord,
    durable: bool,
) -> Result<(), StoreError> {
    let io_err = |e| StoreError::io(format!("cannot write {}", path.display()), e);
    let mut bytes = Vec::new();
    // A line torn by a crash has no line end: the new line starts after it.
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1).map_err(io_err)?;
    if last[0] != b'\n' {
        bytes.push(b'\n');
    }
    match record.inline_apart() {
        Some((apart, _)) => bytes.extend(line_of(&apart)?),
        None => bytes.extend(line_of(record)?),
    }
    bytes.push(b'\n');
    let mut writer = file;
    writer.write_all(&bytes).map_err(io_err)?;
    if durable {
        file.sync_data().map_err(io_err)?;
    }
    Ok(())
}

/// The message state a sidecar holds: its last complete line, with the bytes of inline
/// payloads from whichever line carries them.
fn read_one(path: &Path) -> Result<MessageRecord, String> {
    let text = fs::read(path).map_err(|e| e.to_string())?;
    let mut inline: HashMap<String, Arc<[u8]>> = HashMap::new();
    let (mut last, mut problem) = (None, None);
    for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<SidecarFile>(line) {
            Ok(parsed) if parsed.format == 1 || parsed.format == FORMAT => {
                for p in &parsed.record.meta.payloads {
                    if let Some(bytes) = p.stored.inline_bytes().filter(|b| !b.is_empty()) {
                        inline.insert(p.stored.id.clone(), bytes.into());
                    }
                }
                last = Some(parsed.record);
            }
            Ok(parsed) => {
                problem = Some(format!(
                    "sidecar format {} (this Varti reads formats 1 and {FORMAT})",
                    parsed.format
                ))
            }
            // A torn line (a crash during an append nobody was told about) is skipped.
            Err(e) => problem = Some(e.to_string()),
        }
    }
    let mut record = last.ok_or_else(|| problem.unwrap_or_else(|| "empty sidecar".into()))?;
    for p in &mut record.meta.payloads {
        if p.stored.inline_bytes_apart() {
            if let Some(bytes) = inline.get(&p.stored.id) {
                p.stored.put_inline(bytes);
            }
        }
    }
    Ok(record)
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

    fn record_with_inline(bytes: &[u8]) -> MessageRecord {
        let mut meta = crate::contract::meta("m1@varti.test", "backend");
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

    /// Records a download (a change of the message), writes its sidecar and reads it
    /// back; the history read back is the record's.
    fn change_and_read_back(
        sidecars: &Sidecars,
        record: &mut MessageRecord,
        path: &Path,
    ) -> MessageRecord {
        record
            .record_download(0, "backend", crate::contract::t0())
            .unwrap();
        sidecars.write(record).unwrap();
        let read = read_one(path).unwrap();
        assert_eq!(read.history.len(), record.history.len());
        read
    }

    fn bytes_of(r: &MessageRecord) -> Option<Vec<u8>> {
        r.meta.payloads[0].stored.inline_bytes().map(<[u8]>::to_vec)
    }

    #[test]
    fn changes_are_appended_and_the_last_complete_line_wins_with_the_first_lines_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let sidecars = Sidecars::open(dir.path(), true).unwrap();
        let payload = vec![7u8; 5000];
        let mut record = record_with_inline(&payload);
        sidecars.write(&record).unwrap();
        let path = sidecars.path_for(record.id());
        let first = fs::metadata(&path).unwrap().len();
        let read = change_and_read_back(&sidecars, &mut record, &path);
        assert_eq!(bytes_of(&read), Some(payload.clone()));
        let text = fs::read(&path).unwrap();
        assert_eq!(text.iter().filter(|b| **b == b'\n').count(), 2);
        // The appended line leaves the payload's bytes out.
        assert!(
            ((text.len() as u64) - first) < 2000,
            "appended {} bytes",
            text.len() as u64 - first
        );

        // A torn append (a crash before its sync) is ignored, and the next append starts
        // a line of its own after it.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"format\":2,\"record\":{\"meta").unwrap();
        drop(f);
        assert_eq!(read_one(&path).unwrap().history.len(), record.history.len());
        let read = change_and_read_back(&sidecars, &mut record, &path);
        assert_eq!(bytes_of(&read), Some(payload.clone()));

        // A purge writes the sidecar whole again: no line keeps the bytes.
        record.mark_payloads_purged(crate::contract::t0());
        sidecars.write(&record).unwrap();
        let text = fs::read(&path).unwrap();
        assert_eq!(text.iter().filter(|b| **b == b'\n').count(), 1);
        assert!(text.len() < 4000, "{} bytes", text.len());
        assert_eq!(bytes_of(&read_one(&path).unwrap()), None);
    }

    #[test]
    fn a_sidecar_of_format_1_is_read_and_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let sidecars = Sidecars::open(dir.path(), true).unwrap();
        let payload = b"<doc>written by an earlier Varti</doc>".to_vec();
        let mut record = record_with_inline(&payload);
        let path = sidecars.path_for(record.id());
        // As format 1 was written: one record, no line end.
        let old = serde_json::json!({"format": 1, "record": &record});
        fs::write(&path, serde_json::to_vec(&old).unwrap()).unwrap();
        assert_eq!(bytes_of(&read_one(&path).unwrap()), Some(payload.clone()));
        let read = change_and_read_back(&sidecars, &mut record, &path);
        assert_eq!(bytes_of(&read), Some(payload));
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
