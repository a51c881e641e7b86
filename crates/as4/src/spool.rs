//! The disk budget of receptions in progress.
//!
//! While a message is received its bytes sit in temporary files in the spool directory:
//! attachments spilled by the MIME parser, parts decrypted, payloads decompressed. One
//! [`SpoolBudget`] bounds all of them together, over every request in flight, so that
//! many large messages at once — or compression bombs, which inflate a few megabytes
//! into gigabytes — cannot fill the disk. Each temporary file carries a [`SpoolCharge`]:
//! the bytes it holds, given back when the file is dropped (deleted, or its content taken
//! over by the message store).
//!
//! **Small parts stay in memory.** A [`SpoolBuffer`] holds up to [`SPOOL_MEMORY_MAX`] bytes
//! in memory and moves to a temporary file only past that, so that a typical message (a few
//! KiB) is received without creating and deleting files (which, with ext4's inode
//! allocator, was the largest per-message kernel cost); large parts still stream through
//! files with flat memory. Memory held is bounded per part and charged to the same budget.
//!
//! A write the budget cannot take fails with [`io::ErrorKind::StorageFull`]; the receive
//! pipeline answers it with a transient error ([`EbmsError::retry_later`]) — the sender
//! tries again later — except while decompressing: there it keeps inflating without
//! writing, so that a part over its size cap is still refused as a bomb (`EBMS:0303`).
//! The first inflation of a part writes at most 16 MiB anyway (a larger part within its
//! cap is inflated a second time, its whole size reserved first), so that a bomb takes
//! little of the budget and the other receptions in flight keep their room.
//!
//! [`EbmsError::retry_later`]: crate::error::EbmsError::retry_later

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Where one reception's temporary files go, and the budget they are charged to.
#[derive(Debug, Clone, Default)]
pub struct Spool {
    /// The directory (`None`: the system's temporary directory). Best on the store's file
    /// system, so that keeping a payload is a rename.
    pub dir: Option<PathBuf>,
    /// The budget shared by every reception in flight (`None`: unbounded).
    pub budget: Option<Arc<SpoolBudget>>,
    /// Whether the store takes a delivered payload over as the very file it was spooled
    /// into (a rename). The file's writeback then starts while the payload is written, so
    /// that the store's sync before the receipt has little left to wait for. Without it
    /// the spool file is read back and removed, and writing it to the disk would be
    /// wasted.
    pub write_behind: bool,
    /// Whether a large part received encrypted is delivered as the spool file it was
    /// decrypted into, for a store that takes that file over: still compressed when it
    /// travelled compressed (checked by inflating it once without writing;
    /// [`DeliveredPayload::content_is_gzip`](crate::inbound::DeliveredPayload::content_is_gzip)),
    /// else as it is (hashed without writing). The payload is then written once, instead
    /// of a second time inflated or copied.
    pub keep_decrypted: bool,
}

/// How many bytes all receptions in progress may hold on disk together.
#[derive(Debug)]
pub struct SpoolBudget {
    limit: u64,
    used: AtomicU64,
    peak: AtomicU64,
}

impl SpoolBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<SpoolBudget> {
        Arc::new(SpoolBudget {
            limit,
            used: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        })
    }

    /// The limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// The most bytes ever held at once.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }

    /// Takes `n` bytes if the limit allows.
    fn take(&self, n: u64) -> bool {
        let taken = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(n).filter(|total| *total <= self.limit)
            });
        match taken {
            Ok(before) => {
                self.peak.fetch_max(before + n, Ordering::SeqCst);
                true
            }
            Err(_) => false,
        }
    }

    fn give_back(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::SeqCst);
    }
}

/// Two budgets are equal when they are the same budget.
impl PartialEq for SpoolBudget {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for SpoolBudget {}

/// Bytes one temporary file holds against a budget (none when there is no budget); given
/// back when dropped.
#[derive(Debug, Default)]
pub struct SpoolCharge {
    budget: Option<Arc<SpoolBudget>>,
    bytes: u64,
    ran_out: bool,
}

impl SpoolCharge {
    /// An empty charge against `budget`.
    pub(crate) fn new(budget: Option<&Arc<SpoolBudget>>) -> SpoolCharge {
        SpoolCharge {
            budget: budget.cloned(),
            bytes: 0,
            ran_out: false,
        }
    }

    /// The bytes held.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether the budget once refused this charge more bytes (a writer over it failed for
    /// want of room, whatever its caller made of the error).
    pub(crate) fn ran_out(&self) -> bool {
        self.ran_out
    }

    /// Holds `n` more bytes, or fails with [`io::ErrorKind::StorageFull`] when the budget
    /// cannot give them.
    pub(crate) fn grow(&mut self, n: u64) -> io::Result<()> {
        if let Some(budget) = &self.budget {
            if !budget.take(n) {
                self.ran_out = true;
                return Err(spool_full(budget));
            }
        }
        self.bytes += n;
        Ok(())
    }
}

impl Drop for SpoolCharge {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.give_back(self.bytes);
        }
    }
}

fn spool_full(budget: &SpoolBudget) -> io::Error {
    io::Error::new(
        io::ErrorKind::StorageFull,
        format!(
            "the spool budget of {} bytes for messages being received is used up",
            budget.limit
        ),
    )
}

/// Most bytes a [`SpoolBuffer`] keeps in memory before it moves to a temporary file: the
/// same bound as the message store's inline payloads, so that what is received small is
/// stored small without touching a file.
pub const SPOOL_MEMORY_MAX: usize = 64 * 1024;

/// The bytes of one part being received (decrypted, or delivered): in memory up to
/// [`SPOOL_MEMORY_MAX`], else in a named temporary file of the spool directory (named, so
/// that a large payload can be kept by a rename). Written once, then read any number of
/// times from the start.
#[derive(Debug)]
pub struct SpoolBuffer {
    dir: Option<PathBuf>,
    body: Body,
    /// Set for bytes that will be kept: their file's writeback starts as they are written.
    write_behind: Option<WriteBehind>,
}

#[derive(Debug)]
enum Body {
    Memory(Vec<u8>),
    File(tempfile::NamedTempFile),
}

impl SpoolBuffer {
    /// An empty buffer whose file, if it needs one, goes to `dir` (`None`: the system's
    /// temporary directory).
    pub fn new(dir: Option<&Path>) -> SpoolBuffer {
        SpoolBuffer {
            dir: dir.map(Path::to_path_buf),
            body: Body::Memory(Vec::new()),
            write_behind: None,
        }
    }

    /// Marks the bytes as bound for the disk (a payload the store will take over, and sync
    /// before it says so): once they are in a file, its writeback starts as they are
    /// written (see [`WriteBehind`]), so that the sync finds little left to write.
    pub(crate) fn bound_for_disk(mut self) -> SpoolBuffer {
        self.write_behind = Some(WriteBehind::default());
        self
    }

    /// The temporary file holding the bytes, if they outgrew memory.
    pub fn file(&self) -> Option<&tempfile::NamedTempFile> {
        match &self.body {
            Body::Memory(_) => None,
            Body::File(f) => Some(f),
        }
    }

    /// The bytes, if they are held in memory.
    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.body {
            Body::Memory(b) => Some(b),
            Body::File(_) => None,
        }
    }

    /// Reads the bytes from the start.
    pub fn open(&self) -> io::Result<Box<dyn Read + Send + '_>> {
        match &self.body {
            Body::Memory(b) => Ok(Box::new(&b[..])),
            Body::File(f) => {
                let mut file: &File = f.as_file();
                file.seek(SeekFrom::Start(0))?;
                Ok(Box::new(io::BufReader::with_capacity(64 * 1024, file)))
            }
        }
    }

    /// Keeps the bytes as the file `path`: a rename when they are in a file on the same
    /// file system, else written there.
    pub fn persist(self, path: &Path) -> io::Result<File> {
        match self.body {
            Body::Memory(b) => {
                let mut file = File::create(path)?;
                file.write_all(&b)?;
                Ok(file)
            }
            Body::File(f) => f.persist(path).map_err(|e| e.error),
        }
    }

    /// Lets `keep` move the file holding the bytes (when they outgrew memory) elsewhere by
    /// its path: the message store takes a large received payload over by a rename instead
    /// of copying it. Once `keep` returns `Ok(Some(_))` the file is no longer this buffer's
    /// (dropping the buffer deletes nothing, whatever holds the old name by then) and the
    /// buffer is empty. Bytes held in memory are left alone: `Ok(None)`.
    pub fn hand_over<T, E>(
        &mut self,
        keep: impl FnOnce(&Path) -> Result<Option<T>, E>,
    ) -> Result<Option<T>, E> {
        let Body::File(f) = &self.body else {
            return Ok(None);
        };
        let kept = keep(f.path())?;
        if kept.is_some() {
            if let Body::File(f) = std::mem::replace(&mut self.body, Body::Memory(Vec::new())) {
                let (_file, path) = f.into_parts();
                // Disarmed, not deleted: the name now belongs to whoever took the file.
                let _ = path.keep();
            }
        }
        Ok(kept)
    }

    /// Forgets everything written (to write it again).
    pub(crate) fn clear(&mut self) -> io::Result<()> {
        match &mut self.body {
            Body::Memory(b) => b.clear(),
            Body::File(f) => {
                let file = f.as_file_mut();
                file.set_len(0)?;
                file.rewind()?;
            }
        }
        if let Some(behind) = &mut self.write_behind {
            *behind = WriteBehind::default();
        }
        Ok(())
    }
}

impl Write for SpoolBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Body::Memory(held) = &self.body {
            if held.len() + buf.len() > SPOOL_MEMORY_MAX {
                let mut builder = tempfile::Builder::new();
                builder.prefix(SPOOL_FILE_PREFIX);
                let mut file = match &self.dir {
                    Some(d) => builder.tempfile_in(d)?,
                    None => builder.tempfile()?,
                };
                file.write_all(held)?;
                if let Some(behind) = &mut self.write_behind {
                    behind.after_write(file.as_file(), held.len());
                }
                self.body = Body::File(file);
            }
        }
        match &mut self.body {
            Body::Memory(held) => {
                held.extend_from_slice(buf);
                Ok(buf.len())
            }
            Body::File(f) => {
                let n = f.write(buf)?;
                if let Some(behind) = &mut self.write_behind {
                    behind.after_write(f.as_file(), n);
                }
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.body {
            Body::Memory(_) => Ok(()),
            Body::File(f) => f.flush(),
        }
    }
}

/// Writes to a file that will be synced (a payload a store will take over), starting its
/// writeback as it goes: every [`WRITE_BEHIND_STEP`] bytes, as a [`SpoolBuffer`] bound for
/// the disk does.
#[derive(Debug)]
pub struct WritingBehind<'f> {
    file: &'f File,
    behind: WriteBehind,
}

impl<'f> WritingBehind<'f> {
    /// Writes to `file` from its current position.
    pub fn new(file: &'f File) -> WritingBehind<'f> {
        WritingBehind {
            file,
            behind: WriteBehind::default(),
        }
    }
}

impl Write for WritingBehind<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (&*self.file).write(buf)?;
        self.behind.after_write(self.file, n);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Bytes written to a spool file before its writeback is started.
const WRITE_BEHIND_STEP: u64 = 8 << 20;

/// Starts the writeback of a spool file being written, every [`WRITE_BEHIND_STEP`]
/// bytes, without waiting for it (`sync_file_range(2)` with `SYNC_FILE_RANGE_WRITE`), for
/// a payload the store will take over and sync. Left alone, the kernel writes nothing of a
/// file of a GiB or so until the dirty pages pass its background threshold (a tenth of
/// the free memory by default) or expire (30 s), so that sync waits for all of
/// it while the cores idle; started early, the disk writes while the part is inflated. It
/// promises nothing: durability is still the sync's. The store does the same for the
/// payloads it writes itself (`varti_store::payload`); the two crates share no lower one to
/// hold it.
#[derive(Debug, Default)]
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
            // A file system without it only leaves all the work to the sync.
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

/// A writer whose bytes are charged to a [`SpoolCharge`] before they are written.
pub(crate) struct Charged<'c, W> {
    pub(crate) inner: W,
    pub(crate) charge: &'c mut SpoolCharge,
}

impl<W: io::Write> io::Write for Charged<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.charge.grow(buf.len() as u64)?;
        self.inner.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// How the name of every temporary file a [`SpoolBuffer`] creates begins.
const SPOOL_FILE_PREFIX: &str = "varti-spool-";

/// Name of the lock file a serving process holds in its spool directory.
pub const SPOOL_LOCK_FILE: &str = ".varti-spool.lock";

/// A serving process's hold on its spool directory (an exclusive `flock` on
/// [`SPOOL_LOCK_FILE`]), released when dropped or when the process ends, however it ends.
#[derive(Debug)]
pub struct SpoolClaim {
    _lock: File,
}

/// What [`claim_spool_dir`] found.
#[derive(Debug)]
pub enum Claim {
    /// This process now holds the directory; the files an earlier run left there (a
    /// process killed while receiving or uploading) were removed.
    Held {
        /// Keep it for as long as the process serves.
        claim: SpoolClaim,
        /// Files removed.
        swept_files: u64,
        /// Their size in bytes.
        swept_bytes: u64,
    },
    /// Another live process holds the directory (two instances configured with one
    /// `data_dir`): its files are in use, and nothing was removed.
    HeldElsewhere,
}

/// Takes the spool directory `dir` (created if missing) for this process, and removes what
/// an earlier run left in it.
///
/// Why: every file in the spool belongs to a reception or an upload in flight, and is
/// removed when it ends; a process killed meanwhile leaves its files behind, and nothing
/// else would ever remove them. Under the lock, no live process has a file there, so each
/// one is a leftover. A file in use by a process that runs without taking the lock (a CLI
/// command) fails that command, which keeps nothing it did not finish.
pub fn claim_spool_dir(dir: &Path) -> io::Result<Claim> {
    use std::os::fd::AsRawFd as _;
    std::fs::create_dir_all(dir)?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(SPOOL_LOCK_FILE))?;
    // SAFETY: the descriptor is open for the duration of the call (borrowed from `lock`),
    // and the call touches no memory of this process.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock {
            Ok(Claim::HeldElsewhere)
        } else {
            Err(e)
        };
    }
    let (mut swept_files, mut swept_bytes) = (0, 0);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() == SPOOL_LOCK_FILE {
            continue;
        }
        let meta = entry.metadata()?;
        if !meta.is_file() {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => {
                swept_files += 1;
                swept_bytes += meta.len();
            }
            // Removed meanwhile: nothing left to do.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Claim::Held {
        claim: SpoolClaim { _lock: lock },
        swept_files,
        swept_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writing_behind_leaves_the_file_as_a_plain_write_would() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kept");
        let file = File::create(&path).unwrap();
        let data: Vec<u8> = (0..(WRITE_BEHIND_STEP as usize * 2 + 777))
            .map(|i| (i * 31 % 253) as u8)
            .collect();
        let mut w = io::BufWriter::with_capacity(64 * 1024, WritingBehind::new(&file));
        for piece in data.chunks(1_000_003) {
            w.write_all(piece).unwrap();
        }
        w.flush().unwrap();
        drop(w);
        file.sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn claiming_the_spool_removes_what_an_earlier_run_left_unless_another_process_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        std::fs::create_dir_all(spool.join("sub")).unwrap();
        std::fs::write(spool.join("varti-spool-left"), vec![7u8; 1000]).unwrap();
        std::fs::write(spool.join(".tmpUpload"), vec![7u8; 24]).unwrap();
        let Claim::Held {
            claim,
            swept_files,
            swept_bytes,
        } = claim_spool_dir(&spool).unwrap()
        else {
            panic!("nobody else holds the directory")
        };
        assert_eq!((swept_files, swept_bytes), (2, 1024));
        let mut left: Vec<_> = std::fs::read_dir(&spool)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [SPOOL_LOCK_FILE, "sub"],
            "only the lock and directories stay"
        );

        // While held (flock is per open file, so this process counts as another), a file
        // in use is left alone.
        std::fs::write(spool.join("varti-spool-in-use"), b"x").unwrap();
        assert!(matches!(
            claim_spool_dir(&spool).unwrap(),
            Claim::HeldElsewhere
        ));
        assert!(spool.join("varti-spool-in-use").exists());

        // Released, the next claim takes it and sweeps.
        drop(claim);
        let Claim::Held { swept_files, .. } = claim_spool_dir(&spool).unwrap() else {
            panic!("the claim was released")
        };
        assert_eq!(swept_files, 1);
        assert!(!spool.join("varti-spool-in-use").exists());
    }

    #[test]
    fn a_spool_bound_for_disk_reads_back_what_was_written_and_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(WRITE_BEHIND_STEP as usize * 2 + 4321))
            .map(|i| (i * 13 % 251) as u8)
            .collect();
        let mut spool = SpoolBuffer::new(Some(dir.path())).bound_for_disk();
        // Twice, as a part larger than the inflate probe is written: cleared, then again.
        for _ in 0..2 {
            spool.clear().unwrap();
            for piece in data.chunks(100_003) {
                spool.write_all(piece).unwrap();
            }
            let mut back = Vec::new();
            spool.open().unwrap().read_to_end(&mut back).unwrap();
            assert!(back == data, "the spool reads back what was written");
        }
    }

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
            "the tail is left to the sync"
        );
    }

    #[test]
    fn a_spool_buffer_moves_to_a_file_only_past_its_memory_bound() {
        let dir = tempfile::tempdir().unwrap();
        let files = || std::fs::read_dir(dir.path()).unwrap().count();
        let mut small = SpoolBuffer::new(Some(dir.path()));
        small.write_all(&[1u8; SPOOL_MEMORY_MAX]).unwrap();
        assert!(small.file().is_none());
        assert_eq!(small.bytes().map(<[u8]>::len), Some(SPOOL_MEMORY_MAX));
        assert_eq!(files(), 0);
        let mut back = Vec::new();
        small.open().unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, vec![1u8; SPOOL_MEMORY_MAX]);

        let mut large = SpoolBuffer::new(Some(dir.path()));
        large.write_all(&[2u8; SPOOL_MEMORY_MAX]).unwrap();
        large.write_all(&[3u8]).unwrap();
        large.flush().unwrap();
        assert!(large.bytes().is_none());
        assert_eq!(files(), 1);
        for _ in 0..2 {
            let mut back = Vec::new();
            large.open().unwrap().read_to_end(&mut back).unwrap();
            assert_eq!(back.len(), SPOOL_MEMORY_MAX + 1);
            assert_eq!(back[SPOOL_MEMORY_MAX], 3);
        }
        large.clear().unwrap();
        let mut back = Vec::new();
        large.open().unwrap().read_to_end(&mut back).unwrap();
        assert!(back.is_empty());

        // Kept: by rename from its file, or written from memory.
        let kept = dir.path().join("kept-large");
        large.write_all(b"again").unwrap();
        large.persist(&kept).unwrap();
        assert_eq!(std::fs::read(&kept).unwrap(), b"again");
        let kept_small = dir.path().join("kept-small");
        small.persist(&kept_small).unwrap();
        assert_eq!(std::fs::read(&kept_small).unwrap().len(), SPOOL_MEMORY_MAX);
        assert_eq!(files(), 2, "no temporary file is left");
    }

    #[test]
    fn a_file_handed_over_is_no_longer_the_buffers_to_delete() {
        let dir = tempfile::tempdir().unwrap();
        let spooled = |byte: u8| {
            let mut buf = SpoolBuffer::new(Some(dir.path()));
            buf.write_all(&[byte; SPOOL_MEMORY_MAX + 1]).unwrap();
            buf.flush().unwrap();
            let path = buf.file().unwrap().path().to_path_buf();
            (buf, path)
        };
        // Taken: moved away by its path; a file that takes its old name afterwards is
        // not deleted with the buffer.
        let (mut buf, old) = spooled(4);
        let moved = dir.path().join("moved");
        let kept = buf
            .hand_over(|path| std::fs::rename(path, &moved).map(|()| Some("moved")))
            .unwrap();
        assert_eq!(kept, Some("moved"));
        assert!(buf.file().is_none());
        std::fs::write(&old, b"someone else's").unwrap();
        drop(buf);
        assert_eq!(std::fs::read(&old).unwrap(), b"someone else's");
        assert_eq!(std::fs::read(&moved).unwrap().len(), SPOOL_MEMORY_MAX + 1);

        // Declined: the buffer still owns its file, and deletes it when dropped.
        let (mut buf, path) = spooled(5);
        let kept = buf
            .hand_over(|_| Ok::<Option<()>, io::Error>(None))
            .unwrap();
        assert_eq!(kept, None);
        let mut back = Vec::new();
        buf.open().unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, vec![5u8; SPOOL_MEMORY_MAX + 1]);
        drop(buf);
        assert!(!path.exists());

        // In memory: nothing to hand over, `keep` is not asked.
        let mut small = SpoolBuffer::new(Some(dir.path()));
        small.write_all(b"small").unwrap();
        let kept = small
            .hand_over(|_| -> Result<Option<()>, io::Error> { panic!("asked for bytes in memory") })
            .unwrap();
        assert_eq!(kept, None);
    }

    #[test]
    fn charges_are_bounded_together_and_given_back_on_drop() {
        let budget = SpoolBudget::new(100);
        let mut a = SpoolCharge::new(Some(&budget));
        let mut b = SpoolCharge::new(Some(&budget));
        a.grow(60).unwrap();
        let e = b.grow(41).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        b.grow(40).unwrap();
        assert_eq!((budget.used(), budget.peak()), (100, 100));
        drop(a);
        assert_eq!(budget.used(), 40);
        b.grow(60).unwrap();
        drop(b);
        assert_eq!((budget.used(), budget.peak()), (0, 100));
        // Without a budget nothing is refused.
        SpoolCharge::new(None).grow(u64::MAX).unwrap();
    }
}
