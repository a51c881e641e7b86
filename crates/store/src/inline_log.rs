//! The inline payload log: the bytes of small payloads, appended to a few large segment
//! files beside the database instead of written into it.
//!
//! Layout: `<store>/inline/<seq>.log`, `<seq>` sixteen hex digits. A payload's bytes are
//! appended to the newest segment as they are, without framing; the database names them by
//! their place ([`Loc`]: segment, offset, length) in its `inline_at` tree (payload id →
//! place), written in the transaction of the record that first names the payload. The
//! record's SHA-256 of each payload checks the bytes read back.
//!
//! Why: sled rewrites a whole B-tree page after ten changes of it, and its segment cleaner
//! moves every page that still lives in a segment that is half dead. Payload bytes of ten
//! KiB, kept in a sled tree, made every page of that tree some 100-170 KiB, and those pages
//! were rewritten over and over as the records around them changed: a message of 10 KiB
//! made the sender's store write about 400 KB (`docs/benchmarks.md`). Here they are written
//! once.
//!
//! Durability: the bytes are appended and the segment's data synced (one `fdatasync`
//! shared by concurrent writers) *before* the transaction that names them, so that no
//! record on disk ever points at bytes that are not. A segment file is created under a new
//! name and the directory synced; a full segment is synced once more when the next one
//! starts. A process never appends to a segment an earlier process wrote: it starts a new
//! one, so no torn tail is ever appended to.
//!
//! Erasure: bytes must leave the disk when their payload is purged or their message removed
//! (as payload files do). The change that drops a payload removes its place from
//! `inline_at` and hands the place to [`InlineLog::mark_erased`]; at the end of the purge
//! run ([`InlineLog::erase_marked`]) a segment none of whose bytes is still named is
//! deleted, and in any other the erased ranges are overwritten with zeros and synced.
//! Retention purges by age, so whole segments die together and most erasures are deletions.
//! Bytes appended for a change that then did not happen (a duplicate, an error) are
//! released the same way.
//!
//! A store written before this log keeps its inline bytes in sled's `inline` tree; they
//! are read from there as before, and the log only receives new payloads.

use crate::payload::sync_dir;
use crate::sled_store::GroupCommit;
use crate::StoreError;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Where a new segment starts: past this size the next append opens a new file. Small
/// enough that retention frees space soon after the messages in a segment are purged.
const SEGMENT_MAX: u64 = 32 << 20;

/// The directory of the log, under the store directory.
pub(crate) const DIR: &str = "inline";

/// The place of one payload's bytes in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Loc {
    seq: u64,
    offset: u64,
    len: u32,
}

impl Loc {
    /// The 20 bytes the database keeps: segment, offset, length, big-endian.
    pub(crate) fn encode(&self) -> [u8; 20] {
        let mut out = [0u8; 20];
        out[..8].copy_from_slice(&self.seq.to_be_bytes());
        out[8..16].copy_from_slice(&self.offset.to_be_bytes());
        out[16..].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    /// The place encoded by [`Loc::encode`]; `None` for anything else.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Loc> {
        let bytes: &[u8; 20] = bytes.try_into().ok()?;
        Some(Loc {
            seq: u64::from_be_bytes(bytes[..8].try_into().ok()?),
            offset: u64::from_be_bytes(bytes[8..16].try_into().ok()?),
            len: u32::from_be_bytes(bytes[16..].try_into().ok()?),
        })
    }
}

/// The segment being appended to.
#[derive(Default)]
struct Writer {
    /// Its number; the next segment gets the next one.
    seq: u64,
    /// Its file, once the first append of this process created it.
    file: Option<Arc<File>>,
    /// Its size.
    len: u64,
}

/// The log of a store: appends, reads, erasures.
pub(crate) struct InlineLog {
    dir: PathBuf,
    writer: Mutex<Writer>,
    /// Segments opened for reading (and the one being written).
    files: Mutex<HashMap<u64, Arc<File>>>,
    /// Shares the `fdatasync` of the segment being written between concurrent appenders.
    sync: GroupCommit,
    /// Per segment, how many of its payloads are named by the database or about to be (an
    /// append whose change is under way); a segment at zero can go.
    live: Mutex<BTreeMap<u64, u64>>,
    /// Places dropped by changes since the last [`InlineLog::erase_marked`].
    marked: Mutex<Vec<Loc>>,
}

impl std::fmt::Debug for InlineLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineLog").field("dir", &self.dir).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No lock here is held across a call that could panic half-way through a change.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.log")
}

/// The segment numbers of the files in `dir` (none when it does not exist).
fn segments(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(format!("cannot read {}", dir.display()), e)),
    };
    let mut seqs = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| StoreError::io(format!("cannot read {}", dir.display()), e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".log")) else {
            continue;
        };
        if stem.len() == 16 {
            if let Ok(seq) = u64::from_str_radix(stem, 16) {
                seqs.push(seq);
            }
        }
    }
    Ok(seqs)
}

impl InlineLog {
    /// Opens the log of the store in `store_dir`, given the places the database names
    /// (`named`). Nothing is written or removed: the first append creates a new segment,
    /// and segments nothing names go at the next [`InlineLog::erase_marked`].
    pub(crate) fn open(
        store_dir: &Path,
        named: impl Iterator<Item = Loc>,
    ) -> Result<Self, StoreError> {
        let dir = store_dir.join(DIR);
        let mut live: BTreeMap<u64, u64> = segments(&dir)?.into_iter().map(|s| (s, 0)).collect();
        for loc in named {
            *live.entry(loc.seq).or_default() += 1;
        }
        let next = live.keys().next_back().map_or(1, |s| s + 1);
        Ok(InlineLog {
            dir,
            writer: Mutex::new(Writer {
                seq: next,
                file: None,
                len: 0,
            }),
            files: Mutex::new(HashMap::new()),
            sync: GroupCommit::default(),
            live: Mutex::new(live),
            marked: Mutex::new(Vec::new()),
        })
    }

    /// Reads the places of a store without opening it for writing (recovery reads a
    /// damaged store this way and never changes it).
    pub(crate) fn reader(store_dir: &Path) -> Self {
        Self::open(store_dir, std::iter::empty()).unwrap_or_else(|_| InlineLog {
            dir: store_dir.join(DIR),
            writer: Mutex::new(Writer::default()),
            files: Mutex::new(HashMap::new()),
            sync: GroupCommit::default(),
            live: Mutex::new(BTreeMap::new()),
            marked: Mutex::new(Vec::new()),
        })
    }

    /// Appends `bytes` to the newest segment (not yet durable: see [`InlineLog::sync`])
    /// and counts them as named until [`InlineLog::release`] or an erasure says otherwise.
    pub(crate) fn append(&self, bytes: &[u8]) -> Result<Loc, StoreError> {
        let len = u32::try_from(bytes.len()).map_err(|_| {
            StoreError::InvalidInput("an inline payload is larger than 4 GiB".into())
        })?;
        let mut w = lock(&self.writer);
        let file = match &w.file {
            Some(file) if w.len + u64::from(len) <= SEGMENT_MAX || w.len == 0 => file.clone(),
            _ => self.start_segment(&mut w)?,
        };
        let offset = w.len;
        file.write_all_at(bytes, offset)
            .map_err(|e| self.io_error("cannot write", w.seq, e))?;
        w.len += u64::from(len);
        let loc = Loc {
            seq: w.seq,
            offset,
            len,
        };
        *lock(&self.live).entry(loc.seq).or_default() += 1;
        Ok(loc)
    }

    /// Starts a new segment: the full one (if any) synced, a new file created and its
    /// directory entry synced.
    fn start_segment(&self, w: &mut Writer) -> Result<Arc<File>, StoreError> {
        if let Some(full) = w.file.take() {
            full.sync_data()
                .map_err(|e| self.io_error("cannot sync", w.seq, e))?;
            w.seq += 1;
        }
        fs::create_dir_all(&self.dir)
            .map_err(|e| StoreError::io(format!("cannot create {}", self.dir.display()), e))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.dir.join(segment_name(w.seq)))
            .map_err(|e| self.io_error("cannot create", w.seq, e))?;
        sync_dir(&self.dir)?;
        let file = Arc::new(file);
        lock(&self.files).insert(w.seq, file.clone());
        lock(&self.live).entry(w.seq).or_default();
        w.file = Some(file.clone());
        w.len = 0;
        Ok(file)
    }

    /// Returns once everything appended so far is durable (a sync shared with concurrent
    /// callers; a full segment was synced when the next one started).
    pub(crate) fn sync(&self) -> Result<(), StoreError> {
        self.sync.sync(|| {
            let w = lock(&self.writer);
            let (file, seq) = (w.file.clone(), w.seq);
            drop(w);
            match file {
                Some(file) => file
                    .sync_data()
                    .map_err(|e| format!("cannot sync {}: {e}", self.path(seq).display())),
                None => Ok(()),
            }
        })
    }

    /// The bytes at `loc`; `None` when its segment is gone or shorter (the integrity check
    /// then finds the payload's size and SHA-256 wrong).
    pub(crate) fn read(&self, loc: Loc) -> Result<Option<Vec<u8>>, StoreError> {
        let file = {
            let mut files = lock(&self.files);
            match files.get(&loc.seq) {
                Some(file) => file.clone(),
                None => match File::open(self.path(loc.seq)) {
                    Ok(file) => files.entry(loc.seq).or_insert(Arc::new(file)).clone(),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(self.io_error("cannot open", loc.seq, e)),
                },
            }
        };
        let mut bytes = vec![0u8; loc.len as usize];
        match file.read_exact_at(&mut bytes, loc.offset) {
            Ok(()) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(self.io_error("cannot read", loc.seq, e)),
        }
    }

    /// Places appended for a change that did not name them after all: erased with the
    /// next [`InlineLog::erase_marked`].
    pub(crate) fn release(&self, locs: impl IntoIterator<Item = Loc>) {
        self.mark_erased(locs);
    }

    /// Places a committed change no longer names: erased with the next
    /// [`InlineLog::erase_marked`].
    pub(crate) fn mark_erased(&self, locs: impl IntoIterator<Item = Loc>) {
        let mut live = lock(&self.live);
        let mut marked = lock(&self.marked);
        for loc in locs {
            if let Some(n) = live.get_mut(&loc.seq) {
                *n = n.saturating_sub(1);
            }
            marked.push(loc);
        }
    }

    /// Makes the erasures marked so far happen: every segment before the one being written
    /// that nothing names any more is deleted; in the others the marked ranges are
    /// overwritten with zeros and synced. Called at the end of a purge run.
    pub(crate) fn erase_marked(&self) -> Result<(), StoreError> {
        let marked = std::mem::take(&mut *lock(&self.marked));
        // Appends go to the segment being written or later ones, never to an earlier one,
        // and an earlier one's count only falls: what is dead now stays dead. (Read under
        // the writer's lock, so that no segment is started meanwhile.)
        let dead: Vec<u64> = {
            let w = lock(&self.writer);
            lock(&self.live)
                .iter()
                .filter(|(seq, n)| **n == 0 && **seq < w.seq)
                .map(|(seq, _)| *seq)
                .collect()
        };
        let mut by_segment: BTreeMap<u64, Vec<Loc>> = BTreeMap::new();
        for loc in marked {
            if !dead.contains(&loc.seq) {
                by_segment.entry(loc.seq).or_default().push(loc);
            }
        }
        for (seq, locs) in by_segment {
            let file = match OpenOptions::new().write(true).open(self.path(seq)) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io_error("cannot open", seq, e)),
            };
            for loc in locs {
                let zeros = vec![0u8; loc.len as usize];
                file.write_all_at(&zeros, loc.offset)
                    .map_err(|e| self.io_error("cannot erase bytes in", seq, e))?;
            }
            file.sync_data()
                .map_err(|e| self.io_error("cannot sync", seq, e))?;
        }
        if !dead.is_empty() {
            for seq in &dead {
                lock(&self.files).remove(seq);
                match fs::remove_file(self.path(*seq)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(self.io_error("cannot remove", *seq, e)),
                }
                lock(&self.live).remove(seq);
            }
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(segment_name(seq))
    }

    fn io_error(&self, what: &str, seq: u64, e: io::Error) -> StoreError {
        StoreError::io(format!("{what} {}", self.path(seq).display()), e)
    }

    /// The segment files present, for tests.
    #[cfg(test)]
    pub(crate) fn segment_count(&self) -> usize {
        segments(&self.dir).map(|s| s.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_encode_and_decode() {
        let loc = Loc {
            seq: 7,
            offset: 1 << 33,
            len: 10240,
        };
        assert_eq!(Loc::decode(&loc.encode()), Some(loc));
        assert_eq!(Loc::decode(b"short"), None);
    }

    #[test]
    fn bytes_read_back_and_a_new_process_starts_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let log = InlineLog::open(dir.path(), std::iter::empty()).unwrap();
        assert_eq!(log.segment_count(), 0, "opening creates nothing");
        let a = log.append(b"first").unwrap();
        let b = log.append(b"second").unwrap();
        log.sync().unwrap();
        assert_eq!(log.read(a).unwrap().unwrap(), b"first");
        assert_eq!(log.read(b).unwrap().unwrap(), b"second");
        drop(log);
        let log = InlineLog::open(dir.path(), [a, b].into_iter()).unwrap();
        let c = log.append(b"third").unwrap();
        assert_ne!(
            c.seq, a.seq,
            "never appended to an earlier process's segment"
        );
        assert_eq!(log.read(a).unwrap().unwrap(), b"first");
        assert_eq!(log.read(c).unwrap().unwrap(), b"third");
    }

    #[test]
    fn erased_bytes_are_zeroed_and_a_dead_segment_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let log = InlineLog::open(dir.path(), std::iter::empty()).unwrap();
        let kept = log.append(b"kept").unwrap();
        let gone = log.append(b"gone").unwrap();
        log.sync().unwrap();
        log.mark_erased([gone]);
        log.erase_marked().unwrap();
        assert_eq!(log.read(kept).unwrap().unwrap(), b"kept");
        assert_eq!(log.read(gone).unwrap().unwrap(), vec![0u8; 4]);
        let whole = fs::read(log.path(kept.seq)).unwrap();
        assert!(!whole.windows(4).any(|w| w == b"gone"));
        drop(log);

        // A later process: the old segment dies with its last payload.
        let log = InlineLog::open(dir.path(), [kept].into_iter()).unwrap();
        let newer = log.append(b"newer").unwrap();
        log.sync().unwrap();
        log.mark_erased([kept]);
        log.erase_marked().unwrap();
        assert_eq!(log.read(kept).unwrap(), None);
        assert_eq!(log.segment_count(), 1, "the segment being written stays");
        assert_eq!(log.read(newer).unwrap().unwrap(), b"newer");
    }

    #[test]
    fn a_segment_nothing_names_goes_at_the_next_erasure() {
        let dir = tempfile::tempdir().unwrap();
        let log = InlineLog::open(dir.path(), std::iter::empty()).unwrap();
        let orphan = log.append(b"appended, then the process died").unwrap();
        log.sync().unwrap();
        drop(log);
        let log = InlineLog::open(dir.path(), std::iter::empty()).unwrap();
        assert_eq!(log.read(orphan).unwrap().unwrap().len(), 31);
        log.erase_marked().unwrap();
        assert_eq!(log.segment_count(), 0);
    }

    #[test]
    fn a_full_segment_is_followed_by_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let log = InlineLog::open(dir.path(), std::iter::empty()).unwrap();
        let chunk = vec![7u8; 1 << 20];
        let first = log.append(&chunk).unwrap();
        let mut last = first;
        for _ in 0..SEGMENT_MAX >> 20 {
            last = log.append(&chunk).unwrap();
        }
        log.sync().unwrap();
        assert_eq!(last.seq, first.seq + 1);
        assert_eq!(last.offset, 0);
        assert_eq!(log.read(first).unwrap().unwrap(), chunk);
        assert_eq!(log.read(last).unwrap().unwrap(), chunk);
    }
}
