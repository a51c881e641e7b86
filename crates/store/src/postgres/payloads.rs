//! Payload bytes in PostgreSQL: chunked `bytea` rows, streamed in and out.
//!
//! A payload of at most [`INLINE_PAYLOAD_MAX`](crate::payload::INLINE_PAYLOAD_MAX) bytes is
//! kept inline instead: no rows here, its bytes go into the message row (`payloads`
//! column) in the transaction that inserts the message, which saves a commit (a WAL flush)
//! per small payload. Larger ones: [`PgPayloadStore::put`] reads its input [`CHUNK_SIZE`] bytes at a time and inserts one
//! `payload_chunks` row per chunk, all in one transaction with the `payloads` row, so a
//! payload is visible complete or not at all. [`PgPayloadStore::open`] returns a reader that
//! fetches one chunk per query, on whatever pooled connection is free, so at most one chunk
//! of a payload is in memory at a time, and a long download holds no connection between
//! reads (and survives a failover between two chunks: each fetch is retried).

use super::pool::{database_error, Pool};
use crate::payload::{read_head, PayloadRef, PayloadStore};
use crate::StoreError;
use std::io::{self, Read};
use std::sync::Arc;

/// Bytes per chunk row: large enough that per-row overhead is negligible, small enough that
/// memory stays flat (one chunk buffer per running upload or download).
pub const CHUNK_SIZE: usize = 256 * 1024;

/// Payloads stored in the database (shared by every instance using it).
#[derive(Clone)]
pub struct PgPayloadStore {
    pool: Arc<Pool>,
}

impl std::fmt::Debug for PgPayloadStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgPayloadStore").finish_non_exhaustive()
    }
}

impl PgPayloadStore {
    pub(crate) fn new(pool: Arc<Pool>) -> Self {
        PgPayloadStore { pool }
    }
}

/// Checks that a payload id is one this store issues (32 hex digits), so hostile
/// references are refused with a clear error before they reach a query.
fn validate_payload_id(id: &str) -> Result<(), StoreError> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(StoreError::InvalidInput(format!(
            "payload id `{}` is not one this store issued (expected 32 hex digits)",
            id.escape_debug()
        )))
    }
}

/// Reads into `buf` until it is full or the input ends; returns how many bytes it holds.
fn fill(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl PayloadStore for PgPayloadStore {
    /// Keeps a small payload inline; streams a larger one into chunk rows in one
    /// transaction. Not retried on a connection
    /// error: the input has been consumed, so the caller must start the upload again (the
    /// failed transaction left nothing behind).
    fn put(&self, reader: &mut dyn Read) -> Result<PayloadRef, StoreError> {
        let (head, whole) = read_head(reader)?;
        if whole {
            return Ok(PayloadRef::inline(head));
        }
        self.put_chunks(&mut io::Cursor::new(head).chain(reader))
    }

    fn open(&self, payload: &PayloadRef) -> Result<Box<dyn Read + Send>, StoreError> {
        if let Some(reader) = payload.open_inline() {
            return Ok(reader);
        }
        self.open_chunks(payload)
    }

    fn remove(&self, payload: &PayloadRef) -> Result<(), StoreError> {
        if payload.is_inline() {
            // Its bytes live in the message row: they go with it (or with a purge).
            return Ok(());
        }
        validate_payload_id(&payload.id)?;
        // Idempotent (deleting a deleted payload deletes nothing): safe to retry.
        self.pool.run("removing a payload", |client, _| {
            client.execute("DELETE FROM payloads WHERE payload_id = $1", &[&payload.id])?;
            Ok(())
        })
    }
}

impl PgPayloadStore {
    /// Stores `reader` as chunk rows, whatever its size (past the inline bound, and for
    /// inline payloads a message row has no room for).
    pub(crate) fn put_chunks(&self, reader: &mut dyn Read) -> Result<PayloadRef, StoreError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let what = "storing a payload";
        let mut conn = self.pool.get().map_err(|e| super::fail_to_store(what, e))?;
        let pg = |e: postgres::Error| database_error(what, &e, None);
        let mut tx = conn.transaction().map_err(pg)?;
        tx.execute(
            "INSERT INTO payloads (payload_id, size, chunks) VALUES ($1, 0, 0)",
            &[&id],
        )
        .map_err(pg)?;
        let insert = tx
            .prepare("INSERT INTO payload_chunks (payload_id, seq, data) VALUES ($1, $2, $3)")
            .map_err(pg)?;
        let mut buf = vec![0u8; CHUNK_SIZE];
        let mut size: i64 = 0;
        let mut seq: i32 = 0;
        loop {
            let n = fill(reader, &mut buf).map_err(|e| {
                StoreError::io("cannot read the payload being stored (nothing was kept)", e)
            })?;
            if n == 0 {
                break;
            }
            tx.execute(&insert, &[&id, &seq, &&buf[..n]]).map_err(pg)?;
            size += n as i64;
            seq = seq.checked_add(1).ok_or_else(|| {
                StoreError::InvalidInput("payload too large for the chunk counter".into())
            })?;
            if n < buf.len() {
                break;
            }
        }
        tx.execute(
            "UPDATE payloads SET size = $2, chunks = $3 WHERE payload_id = $1",
            &[&id, &size, &seq],
        )
        .map_err(pg)?;
        tx.commit().map_err(pg)?;
        Ok(PayloadRef::stored(id, size as u64, None))
    }

    fn open_chunks(&self, payload: &PayloadRef) -> Result<Box<dyn Read + Send>, StoreError> {
        validate_payload_id(&payload.id)?;
        let row = self.pool.run("opening a payload", |client, _| {
            Ok(client.query_opt(
                "SELECT chunks FROM payloads WHERE payload_id = $1",
                &[&payload.id],
            )?)
        })?;
        let Some(row) = row else {
            return Err(StoreError::NotFound {
                message_id: format!("payload {}", payload.id),
            });
        };
        Ok(Box::new(ChunkReader {
            pool: Arc::clone(&self.pool),
            id: payload.id.clone(),
            chunks: row.get(0),
            next: 0,
            buf: Vec::new(),
            pos: 0,
        }))
    }
}

/// Streams a payload out one chunk (one query) at a time.
struct ChunkReader {
    pool: Arc<Pool>,
    id: String,
    chunks: i32,
    next: i32,
    buf: Vec<u8>,
    pos: usize,
}

impl ChunkReader {
    /// Replaces the buffer with the next chunk; false at the end of the payload.
    fn fetch(&mut self) -> io::Result<bool> {
        if self.next >= self.chunks {
            return Ok(false);
        }
        let (id, seq) = (&self.id, self.next);
        let row = self
            .pool
            .run("reading a payload chunk", |client, _| {
                Ok(client.query_opt(
                    "SELECT data FROM payload_chunks WHERE payload_id = $1 AND seq = $2",
                    &[id, &seq],
                )?)
            })
            .map_err(io::Error::other)?;
        let Some(row) = row else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "payload {} was removed while it was being read (chunk {seq} is gone)",
                    self.id
                ),
            ));
        };
        self.buf = row.get(0);
        self.pos = 0;
        self.next += 1;
        Ok(true)
    }
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.pos == self.buf.len() {
            if !self.fetch()? {
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_issued_ids_are_accepted() {
        assert!(validate_payload_id(&uuid::Uuid::new_v4().simple().to_string()).is_ok());
        for bad in ["", "../x", "zz", &"g".repeat(32), &"a".repeat(33)] {
            assert!(validate_payload_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fill_collects_short_reads() {
        struct Trickle(u8);
        impl Read for Trickle {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Ok(0);
                }
                self.0 -= 1;
                buf[0] = self.0;
                Ok(1)
            }
        }
        let mut buf = [0u8; 4];
        assert_eq!(fill(&mut Trickle(6), &mut buf).unwrap(), 4);
        let mut t = Trickle(2);
        assert_eq!(fill(&mut t, &mut buf).unwrap(), 2);
        assert_eq!(fill(&mut t, &mut buf).unwrap(), 0);
    }
}
