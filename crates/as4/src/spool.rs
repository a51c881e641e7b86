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
//! A write the budget cannot take fails with [`io::ErrorKind::StorageFull`]; the receive
//! pipeline answers it with a transient error ([`EbmsError::retry_later`]) — the sender
//! tries again later — except while decompressing: there it keeps inflating without
//! writing, so that a part over its size cap is still refused as a bomb (`EBMS:0303`).
//! The first inflation of a part writes at most 16 MiB anyway (a larger part within its
//! cap is inflated a second time, its whole size reserved first), so that a bomb takes
//! little of the budget and the other receptions in flight keep their room.
//!
//! [`EbmsError::retry_later`]: crate::error::EbmsError::retry_later

use std::io;
use std::path::PathBuf;
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

#[cfg(test)]
mod tests {
    use super::*;

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
