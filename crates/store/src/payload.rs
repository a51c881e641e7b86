//! Payload bytes: streamed in and out, never held whole in memory.
//!
//! [`FilePayloadStore`] keeps each payload as one file beside the database. A write goes to a
//! temporary name, is fsync'd, renamed into place, and the directory is fsync'd, so that when
//! [`PayloadStore::put`] returns the payload survives a crash, and a crash mid-write leaves
//! only a temporary file (removed at the next start), never a truncated payload under a
//! real name.

use crate::StoreError;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

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
}

/// Streaming storage for payload bytes. Implementations: files beside the embedded store
/// ([`FilePayloadStore`]); chunked rows in PostgreSQL later.
pub trait PayloadStore: Send + Sync {
    /// Streams `reader` into a new payload. Returns once the bytes are durable.
    fn put(&self, reader: &mut dyn Read) -> Result<PayloadRef, StoreError>;

    /// Streams a payload out. [`StoreError::NotFound`] if it was purged (or never existed).
    fn open(&self, payload: &PayloadRef) -> Result<Box<dyn Read + Send>, StoreError>;

    /// Removes a payload. Removing one that is already gone is not an error (purges are
    /// retried after crashes).
    fn remove(&self, payload: &PayloadRef) -> Result<(), StoreError>;
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

impl PayloadStore for FilePayloadStore {
    fn put(&self, reader: &mut dyn Read) -> Result<PayloadRef, StoreError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let tmp_path = self.dir.join("tmp").join(format!("{id}.part"));
        let payload = PayloadRef {
            id,
            size: 0,
            sha256: None,
        };
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
            let shard = final_path
                .parent()
                .expect("payload path has a shard directory");
            let shard_is_new = !shard.exists();
            fs::create_dir_all(shard)
                .map_err(|e| StoreError::io(format!("cannot create {}", shard.display()), e))?;
            fs::rename(&tmp_path, &final_path).map_err(|e| {
                StoreError::io(
                    format!("cannot move payload to {}", final_path.display()),
                    e,
                )
            })?;
            // The rename is durable only once the directory entry is.
            sync_dir(shard)?;
            if shard_is_new {
                sync_dir(&self.dir)?;
            }
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

    fn open(&self, payload: &PayloadRef) -> Result<Box<dyn Read + Send>, StoreError> {
        let path = self.path_of(payload)?;
        match File::open(&path) {
            Ok(file) => Ok(Box::new(io::BufReader::with_capacity(COPY_BUFFER, file))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NotFound {
                message_id: format!("payload {}", payload.id),
            }),
            Err(e) => Err(StoreError::io(format!("cannot open {}", path.display()), e)),
        }
    }

    fn remove(&self, payload: &PayloadRef) -> Result<(), StoreError> {
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
}

/// Copies with a fixed buffer (no whole-payload buffering), retrying interrupted reads.
/// Returns the length and the SHA-256 (hex) of what was copied.
fn copy_stream(reader: &mut dyn Read, out: &mut File) -> io::Result<(u64, String)> {
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
        out.write_all(&buf[..n])?;
        hasher.update(&buf[..n]);
        total += n as u64;
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
            let r = PayloadRef {
                id: id.into(),
                size: 0,
                sha256: None,
            };
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
