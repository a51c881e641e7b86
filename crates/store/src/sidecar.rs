//! Message sidecars: the last acknowledged state of every message, one small JSON file per
//! message beside the payload files, so that a store whose sled files are damaged or gone
//! can be rebuilt (`varti db recover`).
//!
//! Layout: `<store>/messages/<SHA-256 of the message id>.json`, holding
//! `{"format": 1, "record": <MessageRecord>}`. The record carries the payload references
//! with their SHA-256, the receipt, the state and the history: everything the store knows.
//! The file name is a hash so that any message id (any bytes) maps to a safe name. The
//! directory is flat (ext4 and XFS index large directories) so that concurrent writers
//! share the fsync of its entries (group commit, as for sled's flushes).
//!
//! A sidecar is written like a payload (temporary name, fsync, rename, fsync of the
//! directory) *after* sled made the change durable and *before* the store method returns:
//! when a caller is told "stored", "delivered" or "acknowledged", the sidecar says so too.
//! Lease claims by [`Store::claim_due`](crate::Store::claim_due) do not rewrite sidecars (a
//! store rebuilt from sidecars sends such a message again, which AS4 duplicate detection
//! absorbs); every other change does.

use crate::payload::{hex, sync_dir};
use crate::record::MessageRecord;
use crate::StoreError;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The sidecar file format written by this version.
const FORMAT: u32 = 1;

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

    /// Writes the sidecar of `record` durably (replacing the previous one).
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
        let bytes = serde_json::to_vec(&SidecarFile {
            format: FORMAT,
            record: record.clone(),
        })
        .map_err(|e| StoreError::Corrupt(format!("cannot serialise a sidecar: {e}")))?;
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
            fs::rename(&tmp, &path)
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

fn read_one(path: &Path) -> Result<MessageRecord, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let parsed: SidecarFile =
        serde_json::from_reader(io::BufReader::new(file)).map_err(|e| e.to_string())?;
    if parsed.format != FORMAT {
        return Err(format!(
            "sidecar format {} (this Varti reads format {FORMAT})",
            parsed.format
        ));
    }
    Ok(parsed.record)
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
