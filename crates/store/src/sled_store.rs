//! The embedded store: sled 0.34.7 for records and indexes, files for payloads.
//!
//! Layout of a store directory:
//!
//! ```text
//! <dir>/db/          sled database
//! <dir>/payloads/    payload files (see FilePayloadStore)
//! <dir>/messages/    sidecars: the acknowledged states of the messages, in 256 bucket
//!                    files of JSON lines (see `sidecar`)
//! ```
//!
//! Trees (each index key ends with the message id, so keys are unique and the id can be read
//! back from the key; timestamps are 8-byte big-endian, sign-flipped nanoseconds, so byte
//! order is time order):
//!
//! | tree        | key                                   | holds                            |
//! |-------------|---------------------------------------|----------------------------------|
//! | `records`   | id                                    | the record, JSON                 |
//! | `due`       | due time ‖ id                         | outbound work ([`MessageRecord::due_at`]) |
//! | `created`   | created ‖ id                          | every record, for listing        |
//! | `owner`     | owner ‖ 0x00 ‖ created ‖ id           | listing by backend               |
//! | `settled`   | settled ‖ id                          | metadata retention               |
//! | `unpurged`  | settled ‖ id                          | settled records still holding payloads |
//! | `partner`   | ‹partner› ‖ created ‖ id              | search by partner                |
//! | `conversation` | ‹conversation id› ‖ created ‖ id   | search by conversation           |
//! | `service`   | ‹service› ‖ created ‖ id              | search by service                |
//! | `action`    | ‹action› ‖ created ‖ id               | search by action                 |
//! | `property`  | ‹name› ‖ ‹value› ‖ created ‖ id       | search by message property       |
//! | `regular`   | created ‖ id                          | every record but test traffic    |
//! | `test`      | created ‖ id                          | test traffic, for its retention  |
//! | `meta`      | name                                  | the store's own markers          |
//!
//! ‹v› is a value with its length in front (4 bytes, big-endian), so that one value's key
//! range never holds another's (`ab` is not a prefix of `a` ‖ `b…`). A search walks the
//! index of its most selective field from the newest key down, exactly as the plain listing
//! walks `created`; the id itself is the `records` key, so an id prefix is a range there.
//! Stores written before the search indexes existed get them built once when opened
//! (`meta` notes that it was done).
//! | `audit`     | seq (8-byte big-endian)               | the audit trail, JSON entries (append only) |
//!
//! Every change to a record runs in one sled transaction over all trees: the record is read,
//! changed by the shared logic in [`crate::record`], and written with exactly the index keys
//! it now needs (index keys are a pure function of the record). sled transactions are
//! serializable, which gives the atomic duplicate check and the state compare-and-set.
//!
//! sled flushes its log only every 500 ms by default, so every mutating method waits for a
//! `flush()` (an fsync) before it returns (the crate's durability contract). Concurrent
//! callers share those flushes (group commit, see [`GroupCommit`]): one flush that starts
//! after a write makes it durable, so the callers that wrote while a flush was running are
//! all covered by the next one. An fsync costs milliseconds; sharing it is what lets many
//! messages per second be stored durably.

use crate::audit::{AuditEntry, AuditFilter, AuditPage, NewAuditEntry};
use crate::console::{ConsoleSession, ConsoleUser};
use crate::outbox::{self, OutboxClaim, OutboxEvent, StoredEvent};
use crate::payload::{FilePayloadStore, PayloadStore};
use crate::record::InlineBytesById;
use crate::record::{validate_id, MessageRecord, MAX_PREFIX_MATCHES};
use crate::sidecar::Sidecars;
use crate::state::{Direction, Event, State};
use crate::{
    AttemptOutcome, InsertOutcome, ListCursor, ListFilter, NewInbound, NewOutbound, Page, Store,
    StoreError, TransitionOutcome, MAX_MESSAGE_ID_LEN, MAX_OWNER_LEN,
};
use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};
use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use time::OffsetDateTime;

const RECORDS: usize = 0;
const DUE: usize = 1;
const CREATED: usize = 2;
const OWNER: usize = 3;
const SETTLED: usize = 4;
const UNPURGED: usize = 5;
/// Signal ids noted by [`Store::note_signal`]: id → when.
const SIGNALS: usize = 6;
/// The trees a record's writes rebuild completely: the records and their indexes (keys a
/// pure function of the record, see `index_keys`). Recovery and backup carry records and
/// rebuild these; every other tree (signal ids, other features' own data) is copied as it
/// is. **A new index derived from records belongs here; a tree holding data of its own
/// must not be listed.**
pub(crate) fn is_rebuilt_from_records(tree: &str) -> bool {
    matches!(
        tree,
        "__sled__default"
            | "records"
            | "due"
            | "created"
            | "owner"
            | "settled"
            | "unpurged"
            | "partner"
            | "conversation"
            | "service"
            | "action"
            | "property"
            | "regular"
            | "test"
            // Only the marker that the search indexes were built: a rebuilt store has them
            // (its records are written with their index keys) and sets it again when opened.
            | "meta"
            // The bytes of inline payloads: written with the records that carry them.
            | "inline"
    )
}

const PARTNER: usize = 7;
const CONVERSATION: usize = 8;
const SERVICE: usize = 9;
const ACTION: usize = 10;
const PROPERTY: usize = 11;
const REGULAR: usize = 12;
const TEST: usize = 13;
/// The store's own markers (not an index).
const META: usize = 14;
/// The webhook outbox (issue 18): `message_id 0x00 seq` → [`StoredEvent`] (JSON). Data of
/// its own, not an index: not rebuilt from records.
const OUTBOX: usize = 15;
/// The bytes of inline payloads: payload id → bytes. A record in `records` names its inline
/// payloads with their bytes left out, so that the many rewrites of a record (claim,
/// attempt, acknowledgement) do not rewrite its payloads: sled writes a B-tree leaf of
/// records larger than 128 KiB as a file of its own (a "blob"), created and deleted on
/// every rewrite of the leaf, which made a 10 KiB payload cost more than all the
/// cryptography of its message. Written when the record first names the bytes, removed
/// with them (purge, deletion); rebuilt from records like an index.
const INLINE: usize = 16;
const TREE_NAMES: [&str; 17] = [
    "records",
    "due",
    "created",
    "owner",
    "settled",
    "unpurged",
    "signals",
    "partner",
    "conversation",
    "service",
    "action",
    "property",
    "regular",
    "test",
    "meta",
    "outbox",
    "inline",
];

/// The `meta` key set once the search indexes cover every record, and its value.
const SEARCH_INDEX_MARK: &[u8] = b"search_index_version";
const SEARCH_INDEX_VERSION: &[u8] = b"1";

/// How many index entries one `list` call examines at most, so that a selective filter over
/// a large store cannot make one request scan everything; the page then ends early with a
/// cursor to continue.
const MAX_LIST_SCAN: usize = 10_000;

/// How many candidates a purge or claim reads from an index per batch.
const BATCH: usize = 256;

/// The audit trail's tree (kept apart from the message trees: nothing but
/// [`Store::append_audit`] writes to it).
const AUDIT_TREE: &str = "audit";
/// The console's accounts (name → JSON) and sessions (cookie hash → JSON).
const CONSOLE_USERS_TREE: &str = "console_users";
const CONSOLE_SESSIONS_TREE: &str = "console_sessions";
/// Preview records (issue 18): id → keep-until (8 bytes, [`ts`]) followed by the data.
const PREVIEW_TREE: &str = "preview_records";

/// The embedded store. Cheap to share between threads (`Arc<SledStore>`); one process at a
/// time may open a directory (sled locks it).
pub struct SledStore {
    db: sled::Db,
    trees: Vec<sled::Tree>,
    payloads: FilePayloadStore,
    /// Shares flushes between concurrent callers; `None`: each call flushes on its own.
    group_commit: Option<GroupCommit>,
    /// The sidecar bucket files, a line appended after each durable change.
    sidecars: Sidecars,
    /// Changes to one message (transaction, flush, sidecar) run under the lock of its
    /// stripe, so that its sidecar is written in the order its changes were committed.
    stripes: Vec<Mutex<()>>,
    /// Records read by `list` so far: what a search costs, for tests and benchmarks.
    records_read: std::sync::atomic::AtomicU64,
    /// The audit trail: seq → entry.
    audit: sled::Tree,
    /// Held while an audit entry is numbered and inserted, so entries become visible in
    /// the order of their numbers (a reader paging by number never skips one).
    audit_append: Mutex<()>,
    /// The console's accounts.
    console_users: sled::Tree,
    /// The console's sessions.
    console_sessions: sled::Tree,
    /// Held while outbox events are claimed, extended or removed (claims are
    /// read-check-write).
    outbox_lock: Mutex<()>,
    /// Whose events the outbox keeps.
    outbox_owners: outbox::Owners,
    /// Preview records (see [`PREVIEW_TREE`]).
    previews: sled::Tree,
}

/// How many locks order sidecar writes (messages hash onto them; only messages sharing
/// one wait for each other).
const STRIPES: usize = 256;

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("payloads", &self.payloads.dir())
            .finish_non_exhaustive()
    }
}

/// What a change function decided.
enum Write {
    /// Store this record (with its index keys).
    Put(Box<MessageRecord>),
    /// Remove the record and all its index keys.
    Delete,
    /// Leave everything as it is.
    Unchanged,
}

impl SledStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(dir.as_ref(), true)
    }

    /// Opens the store like [`SledStore::open`], but every mutating call runs its own flush
    /// instead of sharing one with concurrent callers: the behaviour before group commit,
    /// much slower under concurrency. It exists to measure against
    /// (`examples/store_bench.rs`); there is no other reason to use it.
    pub fn open_without_group_commit(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(dir.as_ref(), false)
    }

    fn open_with(dir: &Path, group_commit: bool) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::io(format!("cannot create {}", dir.display()), e))?;
        let db = open_sled(&dir.join("db")).map_err(|e| {
            StoreError::Database(format!(
                "cannot open the sled database in {}: {e} (is another Varti process using it?)",
                dir.join("db").display()
            ))
        })?;
        let trees = TREE_NAMES
            .iter()
            .map(|name| db.open_tree(name))
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_error)?;
        let audit = db.open_tree(AUDIT_TREE).map_err(db_error)?;
        let console_users = db.open_tree(CONSOLE_USERS_TREE).map_err(db_error)?;
        let console_sessions = db.open_tree(CONSOLE_SESSIONS_TREE).map_err(db_error)?;
        let previews = db.open_tree(PREVIEW_TREE).map_err(db_error)?;
        let payloads = FilePayloadStore::open(dir.join("payloads"))?;
        let sidecars = Sidecars::open(dir, true)?;
        let store = SledStore {
            db,
            trees,
            payloads,
            group_commit: group_commit.then(GroupCommit::default),
            sidecars,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            records_read: std::sync::atomic::AtomicU64::new(0),
            audit,
            audit_append: Mutex::new(()),
            console_users,
            console_sessions,
            outbox_lock: Mutex::new(()),
            outbox_owners: outbox::Owners::default(),
            previews,
        };
        store.build_search_indexes()?;
        Ok(store)
    }

    /// How many records [`Store::list`] has read since the store was opened. Each listed
    /// record is read once; a search served by its index reads little more than it
    /// returns (tests and `examples/search_bench.rs` check this).
    pub fn records_read_by_list(&self) -> u64 {
        self.records_read.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Gives the records of a store written before the search indexes existed their index
    /// keys, once. Inserting a key that exists is harmless, so a crash half-way only means
    /// doing it again at the next start.
    fn build_search_indexes(&self) -> Result<(), StoreError> {
        let meta = &self.trees[META];
        if meta.get(SEARCH_INDEX_MARK).map_err(db_error)?.is_some() {
            return Ok(());
        }
        let mut built = 0usize;
        for item in self.trees[RECORDS].iter() {
            let (_, bytes) = item.map_err(db_error)?;
            let record = decode(&bytes)?;
            for (tree, key) in index_keys(&record) {
                self.trees[tree]
                    .insert(key, &[] as &[u8])
                    .map_err(db_error)?;
            }
            built += 1;
        }
        self.db.flush().map_err(db_error)?;
        meta.insert(SEARCH_INDEX_MARK, SEARCH_INDEX_VERSION)
            .map_err(db_error)?;
        self.db.flush().map_err(db_error)?;
        if built > 0 {
            tracing::info!(
                records = built,
                "built the search indexes of an older store"
            );
        }
        Ok(())
    }

    /// Stores many new records in one transaction with one flush: for loading test data
    /// (`examples/search_bench.rs` loads a million). Records whose id exists are skipped.
    /// Returns how many were inserted.
    #[doc(hidden)]
    pub fn insert_inbound_batch(
        &self,
        batch: Vec<NewInbound>,
        now: OffsetDateTime,
    ) -> Result<usize, StoreError> {
        let mut batch = batch;
        for m in &mut batch {
            self.bound_inline(&mut m.meta.payloads)?;
        }
        let records = batch
            .into_iter()
            .map(|m| MessageRecord::new_inbound(m, now))
            .collect::<Result<Vec<_>, _>>()?;
        let inserted = self
            .trees
            .as_slice()
            .transaction(|trees| {
                let mut n = 0;
                for record in &records {
                    if trees[RECORDS].get(record.id().as_bytes())?.is_some() {
                        continue;
                    }
                    write_record(trees, record.id(), None, Some(record))
                        .map_err(TxError::into_conflictable)?;
                    n += 1;
                }
                Ok(n)
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => db_error(e),
            })?;
        self.flush()?;
        Ok(inserted)
    }

    /// Moves the inline payloads of a message being inserted past
    /// [`INLINE_MESSAGE_MAX`](crate::payload::INLINE_MESSAGE_MAX) into payload files, so
    /// that its record stays small; returns the files made.
    fn bound_inline(
        &self,
        payloads: &mut [crate::PayloadEntry],
    ) -> Result<Vec<crate::PayloadRef>, StoreError> {
        crate::payload::bound_inline(
            payloads,
            |r| self.payloads.put_file(r),
            |r| {
                let _ = self.payloads.remove(r);
            },
        )
    }

    /// Passes `outcome` on; when it is an error, first removes the payload files
    /// [`SledStore::bound_inline`] made (the caller only knows its own references, inline).
    fn forget_spilled_on_error<T>(
        &self,
        outcome: Result<T, StoreError>,
        spilled: &[crate::PayloadRef],
    ) -> Result<T, StoreError> {
        if outcome.is_err() {
            for r in spilled {
                let _ = self.payloads.remove(r);
            }
        }
        outcome
    }

    /// The sled database (for the integrity check, recovery and backup).
    pub(crate) fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Decodes every record in the database: `(key, record or why not)`.
    pub(crate) fn scan_records(
        &self,
    ) -> impl Iterator<Item = Result<(Vec<u8>, Result<MessageRecord, StoreError>), StoreError>> + '_
    {
        self.trees[RECORDS].iter().map(|item| {
            let (key, value) = item.map_err(db_error)?;
            Ok((key.to_vec(), self.decode_attached(&value)))
        })
    }

    /// Whether the index entries `record` needs are all present.
    pub(crate) fn missing_index_entries(
        &self,
        record: &MessageRecord,
    ) -> Result<Vec<&'static str>, StoreError> {
        let mut missing = Vec::new();
        for (tree, key) in index_keys(record) {
            if !self.trees[tree].contains_key(&key).map_err(db_error)? {
                missing.push(TREE_NAMES[tree]);
            }
        }
        Ok(missing)
    }

    /// Writes `record` as it is (no state machine: it is a copy of a record another store
    /// held) with its index keys and its sidecar. For recovery and restore into a new store;
    /// call [`SledStore::finish_rebuild`] when done.
    pub(crate) fn put_record_as_is(&self, record: &MessageRecord) -> Result<(), StoreError> {
        let id = record.id().to_owned();
        let _order = self.stripe(&id);
        self.trees
            .as_slice()
            .transaction(|trees| {
                let old = read_in_tx(trees, &id)?;
                write_record(trees, &id, old.as_ref(), Some(record))
                    .map_err(TxError::into_conflictable)?;
                Ok(())
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => db_error(e),
            })?;
        // No flush or fsync per record: the caller builds a new store in a scratch
        // directory and makes it durable once at the end (`finish_rebuild`); a half-built
        // store is discarded, never used.
        self.sidecars.write_unsynced(record)
    }

    /// Makes a store rebuilt with [`SledStore::put_record_as_is`] and imported payloads
    /// durable as a whole: sled's flush, then one sync of the file system.
    pub(crate) fn finish_rebuild(&self, dir: &Path) -> Result<(), StoreError> {
        self.flush()?;
        crate::payload::sync_filesystem(dir)
    }

    /// The lock that orders the changes of message `id`.
    fn stripe(&self, id: &str) -> MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut h);
        self.stripes[(h.finish() as usize) % STRIPES]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The concrete payload store (files).
    pub fn file_payloads(&self) -> &FilePayloadStore {
        &self.payloads
    }

    /// Returns once everything this caller wrote so far is durable: a flush that started
    /// after its writes has completed (shared with concurrent callers).
    fn flush(&self) -> Result<(), StoreError> {
        let flush = || {
            self.db
                .flush()
                .map(|_| ())
                .map_err(|e| format!("sled: {e}"))
        };
        match &self.group_commit {
            Some(group) => group.sync(flush),
            None => flush().map_err(|e| StoreError::Database(format!("sled: {e}"))),
        }
    }

    /// Runs `change` on the record `id` (or `None`) in a transaction, writes what it decides
    /// with the matching index keys, and flushes if anything was written.
    fn update<T>(
        &self,
        id: &str,
        change: impl Fn(Option<MessageRecord>) -> Result<(Write, T), StoreError>,
    ) -> Result<T, StoreError> {
        let _order = self.stripe(id);
        let (wrote, out) = self
            .trees
            .as_slice()
            .transaction(|trees| {
                let old = read_in_tx(trees, id)?;
                let (write, out) =
                    change(old.clone()).map_err(ConflictableTransactionError::Abort)?;
                let new = match write {
                    Write::Unchanged => return Ok((None, out)),
                    Write::Delete => None,
                    Write::Put(record) => Some(*record),
                };
                let purged = new.as_ref().is_some_and(|n| {
                    n.payloads_purged_at.is_some()
                        && old.as_ref().is_some_and(|o| o.payloads_purged_at.is_none())
                });
                write_record(trees, id, old.as_ref(), new.as_ref())
                    .map_err(TxError::into_conflictable)?;
                if let Some(event) = new.as_ref().and_then(|n| {
                    outbox::new_event(old.as_ref().map(|o| o.state), n, &self.outbox_owners)
                }) {
                    let seq = trees[OUTBOX].generate_id()?;
                    let stored = StoredEvent {
                        event,
                        holder: None,
                        lease_until: None,
                    };
                    let bytes = serde_json::to_vec(&stored).map_err(|e| {
                        ConflictableTransactionError::Abort(StoreError::Database(format!(
                            "cannot encode an outbox event: {e}"
                        )))
                    })?;
                    trees[OUTBOX].insert(outbox_key(id, seq), bytes)?;
                }
                Ok((Some((new, purged)), out))
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => db_error(e),
            })?;
        if let Some((new, purged)) = wrote {
            self.flush()?;
            // The sidecar follows the durable change before the caller hears of it. A lease
            // claim is not worth an extra fsync: a store rebuilt without it sends again.
            match new {
                Some(record) if record.state != State::Sending => self.sidecars.write(&record)?,
                Some(_) => {}
                None => self.sidecars.remove(id)?,
            }
            // The purged bytes leave the sidecar at the end of the caller's purge run
            // (`Sidecars::compact_marked`).
            if purged {
                self.sidecars.mark_purged(id);
            }
        }
        Ok(out)
    }

    /// Up to `max` message ids from the index `tree` whose key starts with a timestamp
    /// before `before` (exclusive), oldest first.
    fn ids_before(
        &self,
        tree: usize,
        before: OffsetDateTime,
        max: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mut ids = Vec::new();
        for item in self.trees[tree].range(..ts(before).to_vec()).take(max) {
            let (key, _) = item.map_err(db_error)?;
            ids.push(id_from_key(&key[8..])?);
        }
        Ok(ids)
    }

    /// A record read for a listing (counted in [`SledStore::records_read_by_list`]).
    fn read_listed(&self, id: &str) -> Result<Option<MessageRecord>, StoreError> {
        self.records_read
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.read(id)
    }

    /// A listing driven by an id prefix: the `records` keys in the prefix's range are the
    /// candidates; at most [`MAX_PREFIX_MATCHES`] of them are read and put in listing order.
    fn list_by_id_prefix(&self, filter: &ListFilter, limit: usize) -> Result<Page, StoreError> {
        let prefix = filter.id_prefix.as_deref().unwrap_or_default();
        let mut ids = Vec::new();
        for item in self.trees[RECORDS].scan_prefix(prefix.as_bytes()) {
            let (key, _) = item.map_err(db_error)?;
            if ids.len() == MAX_PREFIX_MATCHES {
                return Err(StoreError::InvalidInput(format!(
                    "the id prefix `{prefix}` matches more than {MAX_PREFIX_MATCHES} messages: \
                     give more of the id, or search by partner, conversation or property too"
                )));
            }
            ids.push(id_from_key(&key)?);
        }
        let mut matched = Vec::new();
        for id in ids {
            if let Some(record) = self.read_listed(&id)? {
                if filter.matches(&record) && after_cursor(&record, &filter.after) {
                    matched.push(record);
                }
            }
        }
        matched.sort_by(|a, b| (b.created_at, b.id()).cmp(&(a.created_at, a.id())));
        let more = matched.len() > limit;
        matched.truncate(limit);
        let next = match (more, matched.last()) {
            (true, Some(last)) => Some(ListCursor {
                created_at: last.created_at,
                message_id: last.id().to_owned(),
            }),
            _ => None,
        };
        Ok(Page {
            records: matched,
            next,
        })
    }

    /// A record as the `records` tree holds it, with its inline payloads' bytes.
    fn decode_attached(&self, bytes: &[u8]) -> Result<MessageRecord, StoreError> {
        let mut record = decode(bytes)?;
        attach_inline(&mut record, |k| self.trees[INLINE].get(k)).map_err(db_error)?;
        Ok(record)
    }

    fn read(&self, id: &str) -> Result<Option<MessageRecord>, StoreError> {
        match self.trees[RECORDS].get(id.as_bytes()).map_err(db_error)? {
            Some(bytes) => self.decode_attached(&bytes).map(Some),
            None => Ok(None),
        }
    }
}

impl Store for SledStore {
    fn payloads(&self) -> &dyn PayloadStore {
        &self.payloads
    }

    fn insert_inbound(
        &self,
        msg: NewInbound,
        now: OffsetDateTime,
    ) -> Result<InsertOutcome, StoreError> {
        let mut msg = msg;
        let spilled = self.bound_inline(&mut msg.meta.payloads)?;
        let new_payloads = msg.meta.payloads.clone();
        let record = MessageRecord::new_inbound(msg, now)?;
        let id = record.id().to_owned();
        let outcome = self.update(&id, |old| match old {
            None => Ok((Write::Put(Box::new(record.clone())), None)),
            Some(original) if original.direction == Direction::Inbound => {
                let answer = InsertOutcome::Duplicate {
                    original_receipt: original.receipt.clone().unwrap_or_default(),
                    state: original.state,
                };
                let kept = original.meta.payloads.clone();
                let mut counted = original;
                counted.duplicates = counted.duplicates.saturating_add(1);
                Ok((Write::Put(Box::new(counted)), Some((answer, kept))))
            }
            Some(other) => Err(StoreError::AlreadyExists {
                message_id: id.clone(),
                direction: other.direction,
            }),
        });
        let outcome = self.forget_spilled_on_error(outcome, &spilled)?;
        match outcome {
            None => Ok(InsertOutcome::Inserted),
            Some((answer, kept)) => {
                // The duplicate's own copy of the payloads is not needed: the original's are.
                for entry in new_payloads.iter().filter(|p| !kept.contains(p)) {
                    if let Err(e) = self.payloads.remove(&entry.stored) {
                        tracing::warn!(message_id = %id, error = %e, "cannot remove a duplicate's payload");
                    }
                }
                Ok(answer)
            }
        }
    }

    fn insert_outbound(&self, msg: NewOutbound, now: OffsetDateTime) -> Result<(), StoreError> {
        let mut msg = msg;
        let spilled = self.bound_inline(&mut msg.meta.payloads)?;
        let record = MessageRecord::new_outbound(msg, now)?;
        let id = record.id().to_owned();
        let outcome = self.update(&id, |old| match old {
            None => Ok((Write::Put(Box::new(record.clone())), ())),
            Some(other) => Err(StoreError::AlreadyExists {
                message_id: id.clone(),
                direction: other.direction,
            }),
        });
        self.forget_spilled_on_error(outcome, &spilled)
    }

    fn claim_due(
        &self,
        holder: &str,
        lease_for: Duration,
        limit: usize,
        now: OffsetDateTime,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        validate_id("lease holder", holder, MAX_OWNER_LEN)?;
        let mut claimed = Vec::new();
        if limit == 0 {
            return Ok(claimed);
        }
        // Due means due_at <= now, i.e. key time < now + 1 ns.
        let before = now + Duration::from_nanos(1);
        let candidates = self.ids_before(DUE, before, limit.saturating_add(BATCH))?;
        for id in candidates {
            if claimed.len() == limit {
                break;
            }
            // Claims are written without flushing each one; one flush below covers the batch.
            let got = self
                .trees
                .as_slice()
                .transaction(|trees| {
                    let Some(old) = read_in_tx(trees, &id)? else {
                        return Ok(None);
                    };
                    // Someone else may have claimed it since we read the index.
                    if !old.is_claimable(now) {
                        return Ok(None);
                    }
                    let mut new = old.clone();
                    new.claim(holder, lease_for, now)
                        .map_err(ConflictableTransactionError::Abort)?;
                    write_record(trees, &id, Some(&old), Some(&new))
                        .map_err(TxError::into_conflictable)?;
                    Ok(Some(new))
                })
                .map_err(|e| match e {
                    TransactionError::Abort(e) => e,
                    TransactionError::Storage(e) => db_error(e),
                })?;
            claimed.extend(got);
        }
        if !claimed.is_empty() {
            self.flush()?;
        }
        Ok(claimed)
    }

    fn claim_message(
        &self,
        message_id: &str,
        holder: &str,
        lease_for: Duration,
        now: OffsetDateTime,
    ) -> Result<Option<MessageRecord>, StoreError> {
        validate_id("lease holder", holder, MAX_OWNER_LEN)?;
        self.update(message_id, |old| {
            let mut record = old.ok_or_else(|| not_found(message_id))?;
            if !record.is_claimable_ignoring_due(now) {
                return Ok((Write::Unchanged, None));
            }
            record.claim(holder, lease_for, now)?;
            Ok((Write::Put(Box::new(record.clone())), Some(record)))
        })
    }

    fn record_attempt(
        &self,
        message_id: &str,
        holder: &str,
        outcome: AttemptOutcome,
        now: OffsetDateTime,
    ) -> Result<MessageRecord, StoreError> {
        self.update(message_id, |old| {
            let mut record = old.ok_or_else(|| not_found(message_id))?;
            let changed = record.record_attempt(holder, outcome.clone(), now)?;
            let write = if changed {
                Write::Put(Box::new(record.clone()))
            } else {
                Write::Unchanged
            };
            Ok((write, record))
        })
    }

    fn transition(
        &self,
        message_id: &str,
        expected: State,
        event: Event,
        now: OffsetDateTime,
    ) -> Result<TransitionOutcome, StoreError> {
        self.update(message_id, |old| {
            let mut record = old.ok_or_else(|| not_found(message_id))?;
            if event == Event::Resend && record.payloads_purged_at.is_some() {
                return Err(StoreError::InvalidInput(format!(
                    "message `{message_id}` cannot be resent: its payloads were purged after \
                     the retention period; submit it again as a new message"
                )));
            }
            let outcome = record.cas_transition(expected, event, now)?;
            let write = match outcome {
                TransitionOutcome::Applied(_) => Write::Put(Box::new(record)),
                TransitionOutcome::AlreadyApplied(_) => Write::Unchanged,
            };
            Ok((write, outcome))
        })
    }

    fn mark_delivered(&self, message_id: &str, now: OffsetDateTime) -> Result<bool, StoreError> {
        self.update(message_id, |old| {
            let mut record = old.ok_or_else(|| not_found(message_id))?;
            if record.direction != Direction::Inbound {
                return Err(StoreError::InvalidInput(format!(
                    "message `{message_id}` is outbound: only inbound messages are delivered \
                     to a backend"
                )));
            }
            let changed = record.apply(Event::Deliver, now, None).map_err(|source| {
                StoreError::InvalidTransition {
                    message_id: message_id.to_owned(),
                    source,
                }
            })?;
            if changed {
                Ok((Write::Put(Box::new(record)), true))
            } else {
                Ok((Write::Unchanged, false))
            }
        })
    }

    fn record_download(
        &self,
        message_id: &str,
        index: usize,
        by: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.update(message_id, |old| {
            let mut record = old.ok_or_else(|| not_found(message_id))?;
            record.record_download(index, by, now)?;
            Ok((Write::Put(Box::new(record)), ()))
        })
    }

    fn retry_now(
        &self,
        message_id: &str,
        by: &str,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.update(message_id, |old| {
            let mut record = old.ok_or_else(|| not_found(message_id))?;
            if record.retry_now(by, now)? {
                Ok((Write::Put(Box::new(record)), true))
            } else {
                Ok((Write::Unchanged, false))
            }
        })
    }

    fn retry_waiting(
        &self,
        partner: Option<&str>,
        owner: Option<&str>,
        by: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<String>, StoreError> {
        // The `due` index holds exactly the outbound messages in progress; a message
        // waiting past `now` is keyed after it.
        let after_now = ts(now + Duration::from_nanos(1));
        let mut candidates = Vec::new();
        for item in self.trees[DUE].range(after_now.to_vec()..) {
            let (key, _) = item.map_err(db_error)?;
            candidates.push(id_from_key(&key[8..])?);
        }
        let mut made_due = Vec::new();
        for id in candidates {
            let changed = self.update(&id, |old| {
                let Some(mut record) = old else {
                    return Ok((Write::Unchanged, false));
                };
                let wanted = record.state == State::WaitingForRetry
                    && partner.is_none_or(|p| p == record.partner())
                    && owner.is_none_or(|o| o == record.meta.owner);
                if wanted && record.retry_now(by, now)? {
                    Ok((Write::Put(Box::new(record)), true))
                } else {
                    Ok((Write::Unchanged, false))
                }
            })?;
            if changed {
                made_due.push(id);
            }
        }
        Ok(made_due)
    }

    fn queue_depth(&self) -> Result<u64, StoreError> {
        // The `due` index holds exactly the outbound messages in progress.
        Ok(self.trees[DUE].len() as u64)
    }

    fn purge_test(&self, created_before: OffsetDateTime) -> Result<usize, StoreError> {
        let mut ids = Vec::new();
        for item in self.trees[TEST].range(..ts(created_before).to_vec()) {
            let (key, _) = item.map_err(db_error)?;
            ids.push(id_from_key(&key[8..])?);
        }
        let removable = |r: &MessageRecord| {
            r.meta.is_test()
                && r.created_at < created_before
                && (r.direction == Direction::Inbound || r.settled_at.is_some())
        };
        let mut removed = 0;
        for id in ids {
            let Some(record) = self.read(&id)? else {
                continue;
            };
            if !removable(&record) {
                continue;
            }
            if record.payloads_purged_at.is_none() {
                for entry in &record.meta.payloads {
                    self.payloads.remove(&entry.stored)?;
                }
            }
            let done = self.update(&id, |old| match old {
                Some(r) if removable(&r) => Ok((Write::Delete, true)),
                _ => Ok((Write::Unchanged, false)),
            })?;
            removed += usize::from(done);
        }
        self.sidecars.compact_marked()?;
        Ok(removed)
    }

    fn note_signal(
        &self,
        message_id: &str,
        now: OffsetDateTime,
        forget_before: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        validate_id("MessageId", message_id, MAX_MESSAGE_ID_LEN)?;
        let signals = &self.trees[SIGNALS];
        // The tree holds only the ids of one freshness window (PullRequests, a few a
        // minute per partner), so a full pass to forget the old ones stays small. Forget
        // first: an id older than `forget_before` counts as new.
        let old = ts(forget_before);
        for item in signals.iter() {
            let (id, at) = item.map_err(db_error)?;
            if at.as_ref() < &old[..] {
                signals
                    .compare_and_swap(&id, Some(at), None::<&[u8]>)
                    .map_err(db_error)?
                    .ok();
            }
        }
        let first = signals
            .compare_and_swap(message_id.as_bytes(), None::<&[u8]>, Some(&ts(now)[..]))
            .map_err(db_error)?
            .is_ok();
        self.flush()?;
        Ok(first)
    }

    fn get(&self, message_id: &str) -> Result<Option<MessageRecord>, StoreError> {
        if message_id.is_empty() || message_id.len() > MAX_MESSAGE_ID_LEN {
            return Ok(None);
        }
        self.read(message_id)
    }

    fn append_audit(
        &self,
        entry: NewAuditEntry,
        now: OffsetDateTime,
    ) -> Result<AuditEntry, StoreError> {
        entry.validate()?;
        let stored = {
            let _numbering = self
                .audit_append
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let seq = match self.audit.last().map_err(db_error)? {
                Some((key, _)) => seq_decode(&key)? + 1,
                None => 1,
            };
            let stored = entry.into_entry(seq, now);
            let bytes = serde_json::to_vec(&stored).map_err(|e| {
                StoreError::Corrupt(format!("cannot serialise an audit entry: {e}"))
            })?;
            self.audit
                .insert(seq.to_be_bytes(), bytes)
                .map_err(db_error)?;
            stored
        };
        self.flush()?;
        Ok(stored)
    }

    fn list_audit(&self, filter: &AuditFilter) -> Result<AuditPage, StoreError> {
        let limit = filter.page_size();
        let start = filter.after.map_or(0, |a| a.saturating_add(1));
        let mut entries = Vec::new();
        let mut next = None;
        for (scanned, item) in self.audit.range(start.to_be_bytes()..).enumerate() {
            let (key, bytes) = item.map_err(db_error)?;
            let seq = seq_decode(&key)?;
            if entries.len() == limit || scanned == MAX_LIST_SCAN {
                // More to come: continue after the last entry looked at.
                next = Some(seq - 1);
                break;
            }
            let entry: AuditEntry = serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Corrupt(format!("audit entry {seq}: {e}")))?;
            if filter.since.is_none_or(|t| entry.at >= t) {
                entries.push(entry);
            }
        }
        Ok(AuditPage { entries, next })
    }

    fn list(&self, filter: &ListFilter) -> Result<Page, StoreError> {
        filter.validate()?;
        let limit = filter.page_size();
        if filter.id_prefix.is_some()
            && filter.properties.is_empty()
            && filter.conversation_id.is_none()
            && filter.partner.is_none()
        {
            return self.list_by_id_prefix(filter, limit);
        }
        let (tree, prefix) = search_index(filter);
        let with_prefix = |tail: &[u8]| {
            let mut key = prefix.clone();
            key.extend_from_slice(tail);
            key
        };
        let lower = with_prefix(&filter.created_from.map(ts).unwrap_or([0; 8]));
        let mut upper = match filter.created_until {
            Some(t) => with_prefix(&ts(t)),
            None => with_prefix(&[0xff; 9]),
        };
        if let Some(cursor) = &filter.after {
            let mut at = with_prefix(&ts(cursor.created_at));
            at.extend_from_slice(cursor.message_id.as_bytes());
            upper = upper.min(at);
        }
        let mut records = Vec::new();
        let mut last_key: Option<(OffsetDateTime, String)> = None;
        let mut more = false;
        for (scanned, item) in self.trees[tree].range(lower..upper).rev().enumerate() {
            let (key, _) = item.map_err(db_error)?;
            if records.len() == limit || scanned == MAX_LIST_SCAN {
                more = true;
                break;
            }
            let tail = &key[prefix.len()..];
            let created = ts_decode(&tail[..8])?;
            let id = id_from_key(&tail[8..])?;
            last_key = Some((created, id.clone()));
            if filter
                .id_prefix
                .as_ref()
                .is_some_and(|p| !id.starts_with(p.as_str()))
            {
                continue;
            }
            // The index and the record are written in one transaction; a missing record
            // here means it was purged after we read the key.
            if let Some(record) = self.read_listed(&id)? {
                if filter.matches(&record) {
                    records.push(record);
                }
            }
        }
        let next = match (more, last_key) {
            (true, Some((created_at, message_id))) => Some(ListCursor {
                created_at,
                message_id,
            }),
            _ => None,
        };
        Ok(Page { records, next })
    }

    fn purge_payloads(
        &self,
        settled_before: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<usize, StoreError> {
        let mut purged = 0;
        loop {
            let ids = self.ids_before(UNPURGED, settled_before, BATCH)?;
            if ids.is_empty() {
                self.sidecars.compact_marked()?;
                return Ok(purged);
            }
            let mut progress = false;
            for id in ids {
                let Some(record) = self.read(&id)? else {
                    continue;
                };
                // Files first: if we crash after this, the record still lists the payloads
                // as present and the next purge removes them (removing is idempotent).
                for entry in &record.meta.payloads {
                    self.payloads.remove(&entry.stored)?;
                }
                let done = self.update(&id, |old| {
                    let Some(mut record) = old else {
                        return Ok((Write::Unchanged, false));
                    };
                    if record.payloads_purged_at.is_some() {
                        return Ok((Write::Unchanged, false));
                    }
                    record.mark_payloads_purged(now);
                    record.updated_at = now;
                    Ok((Write::Put(Box::new(record)), true))
                })?;
                purged += usize::from(done);
                progress |= done;
            }
            // Index keys are written with their records, so every listed id is purged or
            // vanished; if a whole batch changed nothing, stop rather than spin.
            if !progress {
                self.sidecars.compact_marked()?;
                return Ok(purged);
            }
        }
    }

    fn purge_payloads_of(&self, message_id: &str, now: OffsetDateTime) -> Result<bool, StoreError> {
        let purgeable = |r: &MessageRecord| {
            r.settled_at.is_some() && r.payloads_purged_at.is_none() && !r.meta.payloads.is_empty()
        };
        let record = self.read(message_id)?.ok_or_else(|| StoreError::NotFound {
            message_id: message_id.to_owned(),
        })?;
        if !purgeable(&record) {
            return Ok(false);
        }
        // Files first, as in purge_payloads: a crash in between leaves the record listing
        // them, and the next purge removes them again (idempotent).
        for entry in &record.meta.payloads {
            self.payloads.remove(&entry.stored)?;
        }
        let purged = self.update(message_id, |old| match old {
            Some(mut r) if purgeable(&r) => {
                r.mark_payloads_purged(now);
                r.updated_at = now;
                Ok((Write::Put(Box::new(r)), true))
            }
            _ => Ok((Write::Unchanged, false)),
        })?;
        self.sidecars.compact_marked()?;
        Ok(purged)
    }

    fn purge_metadata(&self, settled_before: OffsetDateTime) -> Result<usize, StoreError> {
        let mut removed = 0;
        loop {
            let ids = self.ids_before(SETTLED, settled_before, BATCH)?;
            if ids.is_empty() {
                self.sidecars.compact_marked()?;
                return Ok(removed);
            }
            let mut progress = false;
            for id in ids {
                let Some(record) = self.read(&id)? else {
                    continue;
                };
                if record.payloads_purged_at.is_none() {
                    for entry in &record.meta.payloads {
                        self.payloads.remove(&entry.stored)?;
                    }
                }
                // The sidecar goes before the record: a cut in between leaves a record
                // without a sidecar (harmless), never a sidecar of a purged message (which
                // the integrity check would take for a lost message).
                if record.settled_at.is_some_and(|t| t < settled_before) {
                    self.sidecars.remove(&id)?;
                }
                let done = self.update(&id, |old| match old {
                    Some(r) if r.settled_at.is_some_and(|t| t < settled_before) => {
                        Ok((Write::Delete, true))
                    }
                    _ => Ok((Write::Unchanged, false)),
                })?;
                removed += usize::from(done);
                progress |= done;
            }
            if !progress {
                self.sidecars.compact_marked()?;
                return Ok(removed);
            }
        }
    }

    fn put_console_user(&self, user: &ConsoleUser) -> Result<(), StoreError> {
        user.validate()?;
        let bytes = console_json(user)?;
        self.console_users
            .insert(user.name.as_bytes(), bytes)
            .map_err(db_error)?;
        self.flush()
    }

    fn console_user(&self, name: &str) -> Result<Option<ConsoleUser>, StoreError> {
        match self.console_users.get(name.as_bytes()).map_err(db_error)? {
            Some(bytes) => Ok(Some(console_decode(&bytes)?)),
            None => Ok(None),
        }
    }

    fn list_console_users(&self) -> Result<Vec<ConsoleUser>, StoreError> {
        self.console_users
            .iter()
            .map(|item| console_decode(&item.map_err(db_error)?.1))
            .collect()
    }

    fn remove_console_user(&self, name: &str) -> Result<bool, StoreError> {
        let removed = self
            .console_users
            .remove(name.as_bytes())
            .map_err(db_error)?
            .is_some();
        // Its sessions end with it (a handful of sessions: a full pass is fine).
        for item in self.console_sessions.iter() {
            let (key, bytes) = item.map_err(db_error)?;
            let session: ConsoleSession = console_decode(&bytes)?;
            if session.user == name {
                self.console_sessions.remove(key).map_err(db_error)?;
            }
        }
        self.flush()?;
        Ok(removed)
    }

    fn put_console_session(&self, session: &ConsoleSession) -> Result<(), StoreError> {
        session.validate()?;
        if !self
            .console_users
            .contains_key(session.user.as_bytes())
            .map_err(db_error)?
        {
            return Err(StoreError::InvalidInput(format!(
                "console user `{}` does not exist (removed meanwhile?)",
                session.user
            )));
        }
        let bytes = console_json(session)?;
        self.console_sessions
            .insert(session.id_sha256.as_bytes(), bytes)
            .map_err(db_error)?;
        self.flush()
    }

    fn console_session(&self, id_sha256: &str) -> Result<Option<ConsoleSession>, StoreError> {
        match self
            .console_sessions
            .get(id_sha256.as_bytes())
            .map_err(db_error)?
        {
            Some(bytes) => Ok(Some(console_decode(&bytes)?)),
            None => Ok(None),
        }
    }

    fn remove_console_session(&self, id_sha256: &str) -> Result<bool, StoreError> {
        let removed = self
            .console_sessions
            .remove(id_sha256.as_bytes())
            .map_err(db_error)?
            .is_some();
        self.flush()?;
        Ok(removed)
    }

    fn purge_console_sessions(
        &self,
        idle_before: OffsetDateTime,
        created_before: OffsetDateTime,
    ) -> Result<usize, StoreError> {
        let mut removed = 0;
        for item in self.console_sessions.iter() {
            let (key, bytes) = item.map_err(db_error)?;
            let session: ConsoleSession = console_decode(&bytes)?;
            if session.last_seen < idle_before || session.created_at < created_before {
                self.console_sessions.remove(key).map_err(db_error)?;
                removed += 1;
            }
        }
        if removed > 0 {
            self.flush()?;
        }
        Ok(removed)
    }

    // --- Two data centres (issue 18): the webhook outbox. ---

    fn claim_outbox_event(
        &self,
        message_id: &str,
        kind: &str,
        holder: &str,
        lease_for: Duration,
        now: OffsetDateTime,
    ) -> Result<OutboxClaim, StoreError> {
        let _lock = self
            .outbox_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let tree = &self.trees[OUTBOX];
        let mut prefix = message_id.as_bytes().to_vec();
        prefix.push(0);
        // The message's events, oldest first: only the first pending one may be claimed.
        let Some(item) = tree.scan_prefix(&prefix).next() else {
            return Ok(OutboxClaim::Absent);
        };
        let (key, bytes) = item.map_err(db_error)?;
        let mut stored = decode_event(&bytes)?;
        if stored.event.kind != kind || !stored.claimable(now) {
            return Ok(OutboxClaim::Busy);
        }
        stored.holder = Some(holder.to_owned());
        stored.lease_until = Some(now + lease_for);
        tree.insert(key, encode_event(&stored)?).map_err(db_error)?;
        Ok(OutboxClaim::Claimed(stored.event))
    }

    fn claim_outbox_due(
        &self,
        holder: &str,
        lease_for: Duration,
        unclaimed_for: Duration,
        limit: usize,
        now: OffsetDateTime,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let _lock = self
            .outbox_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let tree = &self.trees[OUTBOX];
        let unclaimed_before = now - unclaimed_for;
        let mut candidates = Vec::new();
        let mut last_message: Option<Vec<u8>> = None;
        for item in tree.iter() {
            let (key, bytes) = item.map_err(db_error)?;
            let message = key.split(|b| *b == 0).next().unwrap_or_default().to_vec();
            if last_message.as_ref() == Some(&message) {
                // Not the message's first pending event: it waits for the earlier one.
                continue;
            }
            last_message = Some(message);
            let stored = decode_event(&bytes)?;
            if stored.due(now, unclaimed_before) {
                candidates.push((key, stored));
            }
        }
        candidates.sort_by_key(|c| c.1.event.at);
        candidates.truncate(limit);
        let mut claimed = Vec::with_capacity(candidates.len());
        for (key, mut stored) in candidates {
            stored.holder = Some(holder.to_owned());
            stored.lease_until = Some(now + lease_for);
            tree.insert(key, encode_event(&stored)?).map_err(db_error)?;
            claimed.push(stored.event);
        }
        Ok(claimed)
    }

    fn extend_outbox_lease(
        &self,
        event: &OutboxEvent,
        holder: &str,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let _lock = self
            .outbox_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some((key, mut stored)) = self.find_event(event)? else {
            return Ok(false);
        };
        if stored.holder.as_deref() != Some(holder) {
            return Ok(false);
        }
        stored.lease_until = Some(until);
        self.trees[OUTBOX]
            .insert(key, encode_event(&stored)?)
            .map_err(db_error)?;
        Ok(true)
    }

    fn complete_outbox_events(&self, events: &[OutboxEvent]) -> Result<(), StoreError> {
        let _lock = self
            .outbox_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut removed = false;
        for event in events {
            if let Some((key, _)) = self.find_event(event)? {
                self.trees[OUTBOX].remove(key).map_err(db_error)?;
                removed = true;
            }
        }
        if removed {
            self.flush()?;
        }
        Ok(())
    }

    fn set_outbox_owners(&self, owners: Option<HashSet<String>>) {
        self.outbox_owners.set(owners);
    }

    fn outbox_depth(&self) -> Result<u64, StoreError> {
        Ok(self.trees[OUTBOX].len() as u64)
    }

    fn probe_writable(&self, instance: &str, now: OffsetDateTime) -> Result<(), StoreError> {
        let mut key = b"probe:".to_vec();
        key.extend_from_slice(instance.as_bytes());
        self.trees[META].insert(key, &ts(now)).map_err(db_error)?;
        self.flush()
    }

    // --- Previews in the shared store (issue 18). ---

    fn put_preview_record(
        &self,
        id: &str,
        data: &[u8],
        keep_until: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.previews
            .insert(id.as_bytes(), preview_value(data, keep_until))
            .map_err(db_error)?;
        self.flush()
    }

    fn preview_record(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.previews.get(id.as_bytes()).map_err(db_error)? {
            Some(value) if value.len() >= 8 => Ok(Some(value[8..].to_vec())),
            Some(_) => Err(StoreError::Corrupt(format!(
                "preview record `{id}` is shorter than its 8-byte header"
            ))),
            None => Ok(None),
        }
    }

    fn swap_preview_record(
        &self,
        id: &str,
        expected: &[u8],
        data: &[u8],
        keep_until: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let Some(current) = self.previews.get(id.as_bytes()).map_err(db_error)? else {
            return Ok(false);
        };
        if current.get(8..) != Some(expected) {
            return Ok(false);
        }
        let swapped = self
            .previews
            .compare_and_swap(
                id.as_bytes(),
                Some(current),
                Some(preview_value(data, keep_until)),
            )
            .map_err(db_error)?
            .is_ok();
        if swapped {
            self.flush()?;
        }
        Ok(swapped)
    }

    fn remove_preview_records(&self, prefix: &str) -> Result<usize, StoreError> {
        let mut removed = 0;
        for item in self.previews.scan_prefix(prefix.as_bytes()) {
            let (key, _) = item.map_err(db_error)?;
            if self.previews.remove(key).map_err(db_error)?.is_some() {
                removed += 1;
            }
        }
        if removed > 0 {
            self.flush()?;
        }
        Ok(removed)
    }

    fn purge_preview_records(&self, now: OffsetDateTime) -> Result<usize, StoreError> {
        let now = ts(now);
        let mut removed = 0;
        for item in self.previews.iter() {
            let (key, value) = item.map_err(db_error)?;
            if value.get(..8).is_none_or(|until| until <= &now[..]) {
                // Removed only if unchanged since read (a concurrent put keeps its record).
                if self
                    .previews
                    .compare_and_swap(key, Some(value), None as Option<&[u8]>)
                    .map_err(db_error)?
                    .is_ok()
                {
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            self.flush()?;
        }
        Ok(removed)
    }
}

/// A preview record's value in sled: its keep-until, then its data.
fn preview_value(data: &[u8], keep_until: OffsetDateTime) -> Vec<u8> {
    let mut value = Vec::with_capacity(8 + data.len());
    value.extend_from_slice(&ts(keep_until));
    value.extend_from_slice(data);
    value
}

fn console_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value)
        .map_err(|e| StoreError::InvalidInput(format!("cannot serialise a console record: {e}")))
}

fn console_decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("a console record: {e}")))
}

impl SledStore {
    /// The outbox entry of `event_id` (a scan: the outbox holds only pending events).
    /// `event` as stored, with its key: looked up among its message's events only (a
    /// message has a handful; the outbox may hold many thousands).
    fn find_event(
        &self,
        event: &OutboxEvent,
    ) -> Result<Option<(sled::IVec, StoredEvent)>, StoreError> {
        let mut prefix = event.message_id.as_bytes().to_vec();
        prefix.push(0);
        for item in self.trees[OUTBOX].scan_prefix(&prefix) {
            let (key, bytes) = item.map_err(db_error)?;
            let stored = decode_event(&bytes)?;
            if stored.event.event_id == event.event_id {
                return Ok(Some((key, stored)));
            }
        }
        Ok(None)
    }
}

/// The outbox key of event number `seq` of message `id`: the message's events sort
/// together, oldest first.
fn outbox_key(id: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(id.len() + 9);
    key.extend_from_slice(id.as_bytes());
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn encode_event(stored: &StoredEvent) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(stored)
        .map_err(|e| StoreError::Database(format!("cannot encode an outbox event: {e}")))
}

fn decode_event(bytes: &[u8]) -> Result<StoredEvent, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Database(format!("an outbox event cannot be read: {e}")))
}

/// Group commit: concurrent callers that need their writes durable share fsyncs.
///
/// sled's `flush()` makes durable everything written before it was called. A caller whose
/// write is applied therefore needs a flush that *started after* the write. Flushes are
/// numbered; the caller notes the number the next flush will get, then either runs that
/// flush itself (when none is running) or waits. Callers arriving while a flush runs all
/// wait for the next one, which one of them runs for everybody: N concurrent writers cost
/// one fsync per round instead of N, and nobody returns before its write is on disk.
#[derive(Default)]
pub(crate) struct GroupCommit {
    state: Mutex<FlushState>,
    finished: Condvar,
}

#[derive(Default)]
struct FlushState {
    /// The number of the latest flush started (flushes run one at a time, numbered from 1).
    started: u64,
    /// The number of the latest flush finished, whether it succeeded or not.
    finished: u64,
    /// The number of the latest flush that succeeded.
    succeeded: u64,
    /// Whether a flush is running now.
    running: bool,
    /// Why the latest failed flush failed.
    last_error: Option<String>,
}

impl GroupCommit {
    /// Returns once a `flush` that started after this call has succeeded (running it here
    /// when no flush is running), or with the error of the flush that should have covered
    /// this caller.
    pub(crate) fn sync(
        &self,
        flush: impl FnOnce() -> Result<(), String>,
    ) -> Result<(), StoreError> {
        let mut flush = Some(flush);
        let mut state = self.lock();
        // The caller's write is applied: the next flush to start covers it.
        let needed = state.started + 1;
        loop {
            if state.succeeded >= needed {
                return Ok(());
            }
            if state.finished >= needed {
                // The flush that covered this write failed (and none since succeeded).
                let why = state.last_error.clone().unwrap_or_default();
                return Err(StoreError::Database(format!(
                    "cannot make the write durable: {why}"
                )));
            }
            if state.running {
                state = self
                    .finished
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            // Nobody is flushing: this caller flushes for everyone waiting. The flush that
            // covers it is the next one, so it always has its closure left here.
            let Some(flush) = flush.take() else {
                unreachable!("a caller runs at most the one flush it needs");
            };
            state.running = true;
            state.started += 1;
            let mut round = FlushRound {
                commit: self,
                number: state.started,
                result: None,
            };
            drop(state);
            round.result = Some(flush());
            drop(round);
            state = self.lock();
        }
    }

    fn lock(&self) -> MutexGuard<'_, FlushState> {
        // The lock is never held across a call that could panic; recover anyway.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One running flush; dropping it publishes its result (also when the flush panicked, so
/// that waiting callers are not left waiting forever).
struct FlushRound<'a> {
    commit: &'a GroupCommit,
    number: u64,
    result: Option<Result<(), String>>,
}

impl Drop for FlushRound<'_> {
    fn drop(&mut self) {
        let mut state = self.commit.lock();
        state.running = false;
        state.finished = self.number;
        match self.result.take() {
            Some(Ok(())) => state.succeeded = self.number,
            Some(Err(why)) => state.last_error = Some(why),
            None => state.last_error = Some("the flush panicked".to_owned()),
        }
        self.commit.finished.notify_all();
    }
}

/// A transaction-body error: a storage failure (retryable by sled) or a store error (abort).
enum TxError {
    Storage(sled::transaction::UnabortableTransactionError),
    Store(StoreError),
}

impl TxError {
    fn into_conflictable(self) -> ConflictableTransactionError<StoreError> {
        match self {
            TxError::Storage(e) => e.into(),
            TxError::Store(e) => ConflictableTransactionError::Abort(e),
        }
    }
}

/// Replaces record `id` (`old`, if any) by `new` (or removes it) inside a transaction,
/// adjusting the index keys to exactly those `new` needs.
fn write_record(
    trees: &[TransactionalTree],
    id: &str,
    old: Option<&MessageRecord>,
    new: Option<&MessageRecord>,
) -> Result<(), TxError> {
    let old_keys = old.map(index_keys).unwrap_or_default();
    let new_keys = new.map(index_keys).unwrap_or_default();
    for key in old_keys.difference(&new_keys) {
        trees[key.0]
            .remove(key.1.as_slice())
            .map_err(TxError::Storage)?;
    }
    for key in new_keys.difference(&old_keys) {
        trees[key.0]
            .insert(key.1.as_slice(), &[] as &[u8])
            .map_err(TxError::Storage)?;
    }
    let mut kept_inline = BTreeSet::new();
    match new {
        Some(record) => {
            let (bytes, inline) = encode(record).map_err(TxError::Store)?;
            trees[RECORDS]
                .insert(id.as_bytes(), bytes)
                .map_err(TxError::Storage)?;
            // Payload bytes never change under their id: written once, when a record
            // first names them. (None for an empty payload, or for bytes the tree lost and
            // the record could not be given back: nothing to write.)
            for (payload_id, bytes) in inline {
                let key = payload_id.as_bytes();
                if !bytes.is_empty() && trees[INLINE].get(key).map_err(TxError::Storage)?.is_none()
                {
                    trees[INLINE]
                        .insert(key, &*bytes)
                        .map_err(TxError::Storage)?;
                }
                kept_inline.insert(payload_id);
            }
        }
        None => {
            trees[RECORDS]
                .remove(id.as_bytes())
                .map_err(TxError::Storage)?;
        }
    }
    // Inline bytes the old record had and the new one no longer has (purged, or the
    // record deleted) go with it.
    for p in old.into_iter().flat_map(|r| &r.meta.payloads) {
        if p.stored.is_inline() && !kept_inline.contains(p.stored.id.as_str()) {
            trees[INLINE]
                .remove(p.stored.id.as_bytes())
                .map_err(TxError::Storage)?;
        }
    }
    Ok(())
}

/// The index entries a record needs: a pure function of the record, so an update only has
/// to remove the old set's extra keys and add the new set's.
fn index_keys(record: &MessageRecord) -> BTreeSet<(usize, Vec<u8>)> {
    let id = record.id().as_bytes();
    let key = |parts: &[&[u8]]| -> Vec<u8> { parts.concat() };
    let created = ts(record.created_at);
    let mut keys = BTreeSet::new();
    keys.insert((CREATED, key(&[&created, id])));
    keys.insert((
        OWNER,
        key(&[record.meta.owner.as_bytes(), &[0], &created, id]),
    ));
    if let Some(due) = record.due_at() {
        keys.insert((DUE, key(&[&ts(due), id])));
    }
    let m = &record.meta;
    for (tree, value) in [
        (PARTNER, record.partner()),
        (CONVERSATION, m.conversation_id.as_str()),
        (SERVICE, m.service.as_str()),
        (ACTION, m.action.as_str()),
    ] {
        keys.insert((tree, key(&[&sized(value), &created, id])));
    }
    for p in &m.properties {
        keys.insert((
            PROPERTY,
            key(&[&sized(&p.name), &sized(&p.value), &created, id]),
        ));
    }
    let kind = if m.is_test() { TEST } else { REGULAR };
    keys.insert((kind, key(&[&created, id])));
    if let Some(settled) = record.settled_at {
        keys.insert((SETTLED, key(&[&ts(settled), id])));
        if record.payloads_purged_at.is_none() && !record.meta.payloads.is_empty() {
            keys.insert((UNPURGED, key(&[&ts(settled), id])));
        }
    }
    keys
}

/// A value with its length in front, so that no value's keys fall in another's range.
fn sized(value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + value.len());
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(value.as_bytes());
    out
}

/// The index (tree and key prefix) a search walks: the most selective field given. Every
/// index orders the records of one value by creation time and id, as `created` does.
fn search_index(filter: &ListFilter) -> (usize, Vec<u8>) {
    if let Some((name, value)) = filter.properties.first() {
        return (PROPERTY, [sized(name), sized(value)].concat());
    }
    if let Some(c) = &filter.conversation_id {
        return (CONVERSATION, sized(c));
    }
    if let Some(p) = &filter.partner {
        return (PARTNER, sized(p));
    }
    if let Some(owner) = &filter.owner {
        let mut p = owner.as_bytes().to_vec();
        p.push(0);
        return (OWNER, p);
    }
    if let Some(a) = &filter.action {
        return (ACTION, sized(a));
    }
    if let Some(s) = &filter.service {
        return (SERVICE, sized(s));
    }
    if filter.exclude_test {
        return (REGULAR, Vec::new());
    }
    (CREATED, Vec::new())
}

/// Whether `record` comes after `cursor` in listing order (newest first, then id
/// descending).
fn after_cursor(record: &MessageRecord, cursor: &Option<ListCursor>) -> bool {
    cursor
        .as_ref()
        .is_none_or(|c| (record.created_at, record.id()) < (c.created_at, c.message_id.as_str()))
}

/// A timestamp as 8 bytes whose byte order is time order (nanoseconds, clamped to the i64
/// range — years 1677 to 2262 — with the sign bit flipped).
fn seq_decode(key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| StoreError::Corrupt("an audit key is not 8 bytes".into()))?;
    Ok(u64::from_be_bytes(bytes))
}

fn ts(t: OffsetDateTime) -> [u8; 8] {
    let nanos = t
        .unix_timestamp_nanos()
        .clamp(i64::MIN as i128, i64::MAX as i128) as i64;
    ((nanos as u64) ^ (1 << 63)).to_be_bytes()
}

fn ts_decode(bytes: &[u8]) -> Result<OffsetDateTime, StoreError> {
    let raw: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("an index key is shorter than its timestamp".into()))?;
    let nanos = (u64::from_be_bytes(raw) ^ (1 << 63)) as i64;
    OffsetDateTime::from_unix_timestamp_nanos(nanos as i128)
        .map_err(|e| StoreError::Corrupt(format!("an index key holds an invalid time: {e}")))
}

fn id_from_key(bytes: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| StoreError::Corrupt("an index key holds a non-UTF-8 message id".into()))
}

/// A record as the `records` tree keeps it: its JSON with the bytes of its inline
/// payloads left out (an empty `inline`), and those bytes by payload id for the `inline`
/// tree.
fn encode(record: &MessageRecord) -> Result<(Vec<u8>, InlineBytesById), StoreError> {
    let (json, inline) = match record.inline_apart() {
        Some((apart, inline)) => (serde_json::to_vec(&apart), inline),
        None => (serde_json::to_vec(record), Vec::new()),
    };
    let json =
        json.map_err(|e| StoreError::Corrupt(format!("cannot serialise message record: {e}")))?;
    Ok((json, inline))
}

/// The record `id` as a transaction sees it, with its inline payloads' bytes.
fn read_in_tx(
    trees: &[TransactionalTree],
    id: &str,
) -> Result<Option<MessageRecord>, ConflictableTransactionError<StoreError>> {
    let Some(bytes) = trees[RECORDS].get(id.as_bytes())? else {
        return Ok(None);
    };
    let mut record = decode(&bytes).map_err(ConflictableTransactionError::Abort)?;
    attach_inline(&mut record, |k| trees[INLINE].get(k))?;
    Ok(Some(record))
}

/// Puts the bytes of `record`'s inline payloads back from the `inline` tree (`get`). A
/// record written before that tree existed carries them itself and is left as it is; bytes
/// missing from the tree are left empty, for the integrity check to report (their size and
/// SHA-256 no longer match).
pub(crate) fn attach_inline<E>(
    record: &mut MessageRecord,
    mut get: impl FnMut(&[u8]) -> Result<Option<sled::IVec>, E>,
) -> Result<(), E> {
    for p in &mut record.meta.payloads {
        if p.stored.inline_bytes_apart() && p.stored.size > 0 {
            if let Some(bytes) = get(p.stored.id.as_bytes())? {
                p.stored.put_inline(&bytes);
            }
        }
    }
    Ok(())
}

fn decode(bytes: &[u8]) -> Result<MessageRecord, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("cannot read a message record: {e}")))
}

/// How long opening a store waits for the database's file lock. sled lets go of it when
/// the last of its threads lets go of the file, which can be a moment after a store of
/// this process was dropped (its log-writing thread finishing its write): a store closed
/// and opened again in one process (a check after a run, a test) waits that moment out.
/// Another process's lock (a running `varti serve`) is still reported, after this wait.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// sled's segment size (the size of its log's IO buffers) for a database created from now
/// on.
///
/// sled writes a page larger than a quarter of a segment not into its log but into a file of
/// its own under `blobs/`, and it never syncs those files: a power cut can leave the page
/// the synced log points at empty. With sled's default of 512 KiB that quarter is 128 KiB,
/// which a leaf of the `inline` tree passes with 13 payloads of 10 KiB (leaves split only
/// past 16 entries). At 8 MiB the quarter is 2 MiB, above the largest leaf the store's
/// limits allow there (17 × [`INLINE_PAYLOAD_MAX`](crate::INLINE_PAYLOAD_MAX)), so those
/// pages stay in the synced log. sled cannot change the size of an existing database:
/// one keeps the size its `conf` file records (see [`sled_config`]).
const SEGMENT_SIZE: usize = 8 << 20;

/// The segment size every database had before [`SEGMENT_SIZE`]: sled's default.
const SLED_DEFAULT_SEGMENT_SIZE: usize = 512 * 1024;

/// The sled configuration of the database directory `db_dir` (a store's `db`): the
/// segment size its `conf` file records (sled refuses to open a database with another),
/// [`SEGMENT_SIZE`] for a new one, and sled's default for files without a readable `conf`
/// (every database before [`SEGMENT_SIZE`] had it). For tools and tests that open a store's
/// sled files themselves.
pub fn sled_config(db_dir: &Path) -> sled::Config {
    sled::Config::new()
        .path(db_dir)
        .segment_size(segment_size_of(db_dir))
}

fn segment_size_of(db_dir: &Path) -> usize {
    // `conf` is lines of `key: value`, then a 4-byte checksum (sled's storage parameters).
    match std::fs::read(db_dir.join("conf")) {
        Ok(bytes) => String::from_utf8_lossy(&bytes)
            .lines()
            .find_map(|line| line.strip_prefix("segment_size: "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(SLED_DEFAULT_SEGMENT_SIZE),
        Err(_) if db_dir.join("db").exists() => SLED_DEFAULT_SEGMENT_SIZE,
        Err(_) => SEGMENT_SIZE,
    }
}

/// Opens the sled database at `path`, waiting up to [`LOCK_WAIT`] for its file lock.
fn open_sled(path: &Path) -> sled::Result<sled::Db> {
    let started = std::time::Instant::now();
    loop {
        match sled_config(path).open() {
            // sled says so only in the message (an `Other` I/O error).
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && started.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

fn db_error(e: sled::Error) -> StoreError {
    StoreError::Database(format!("sled: {e}"))
}

fn not_found(message_id: &str) -> StoreError {
    StoreError::NotFound {
        message_id: message_id.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MessageMeta, PayloadRef};
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

    /// A stand-in for sled: a write bumps `written`; a flush makes durable what had been
    /// written when it started, after a pause (the fsync).
    #[derive(Default)]
    struct FakeDisk {
        written: AtomicU64,
        durable: AtomicU64,
        flushes: AtomicU64,
    }

    impl FakeDisk {
        fn write_and_sync(&self, group: &GroupCommit) {
            let mine = self.written.fetch_add(1, SeqCst) + 1;
            group
                .sync(|| {
                    let covers = self.written.load(SeqCst);
                    std::thread::sleep(Duration::from_millis(2));
                    self.durable.fetch_max(covers, SeqCst);
                    self.flushes.fetch_add(1, SeqCst);
                    Ok(())
                })
                .unwrap();
            assert!(
                self.durable.load(SeqCst) >= mine,
                "sync returned before write {mine} was flushed"
            );
        }
    }

    fn read_all(store: &SledStore, stored: &PayloadRef) -> Vec<u8> {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut store.payloads().open(stored).unwrap(), &mut out).unwrap();
        out
    }

    #[test]
    fn inline_bytes_live_beside_their_record_are_written_once_and_go_with_a_purge() {
        use crate::contract::{meta, payload, t0};
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let bytes: Vec<u8> = (0..10 * 1024).map(|i| (i % 251) as u8).collect();
        let mut m = meta("m1@varti.test", "backend");
        m.payloads.push(payload(&store, &bytes));
        let inbound = |m: MessageMeta| NewInbound {
            meta: m,
            receipt: b"<receipt/>".to_vec(),
            peer: None,
        };
        store.insert_inbound(inbound(m), t0()).unwrap();
        // The record itself is small: its payload's bytes are in the `inline` tree.
        let raw = store.trees[RECORDS].get("m1@varti.test").unwrap().unwrap();
        assert!(raw.len() < 2048, "record of {} bytes", raw.len());
        assert_eq!(store.trees[INLINE].len(), 1);
        let record = store.get("m1@varti.test").unwrap().unwrap();
        assert!(record.meta.payloads[0].stored.is_inline());
        assert_eq!(read_all(&store, &record.meta.payloads[0].stored), bytes);
        // A change of state rewrites the record, not the bytes.
        let before = store.trees[INLINE]
            .get(record.meta.payloads[0].stored.id.as_bytes())
            .unwrap();
        assert!(store.mark_delivered("m1@varti.test", t0()).unwrap());
        let after = store.trees[INLINE]
            .get(record.meta.payloads[0].stored.id.as_bytes())
            .unwrap();
        assert_eq!(before, after);
        let record = store.get("m1@varti.test").unwrap().unwrap();
        assert_eq!(read_all(&store, &record.meta.payloads[0].stored), bytes);
        // The sidecar carries the bytes: a store rebuilt from it needs no `inline` tree.
        let sidecar = std::fs::read_to_string(store.sidecars.path_for("m1@varti.test")).unwrap();
        assert!(
            sidecar.len() > bytes.len(),
            "sidecar of {} bytes",
            sidecar.len()
        );
        // A purge takes the bytes away.
        assert!(store.purge_payloads_of("m1@varti.test", t0()).unwrap());
        assert_eq!(store.trees[INLINE].len(), 0);
        assert!(
            !store.get("m1@varti.test").unwrap().unwrap().meta.payloads[0]
                .stored
                .is_inline()
        );
        // ... from the sidecar too: its bucket was compacted (base64 would be 13,654 bytes).
        let sidecar = std::fs::read(store.sidecars.path_for("m1@varti.test")).unwrap();
        assert!(
            sidecar.len() < bytes.len(),
            "the purge left {} bytes in the sidecar",
            sidecar.len()
        );
    }

    #[test]
    fn a_record_written_with_its_inline_bytes_inside_is_read_and_moves_them_out_when_changed() {
        use crate::contract::{meta, payload, t0};
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let bytes = b"<doc>small and old</doc>".to_vec();
        let mut m = meta("old@varti.test", "backend");
        m.payloads.push(payload(&store, &bytes));
        let mut record = MessageRecord::new_inbound(
            NewInbound {
                meta: m,
                receipt: b"<receipt/>".to_vec(),
                peer: None,
            },
            t0(),
        )
        .unwrap();
        // As a store before the `inline` tree wrote it: the bytes in the record's JSON.
        record.meta.payloads[0].stored = PayloadRef::inline(bytes.clone());
        store.trees[RECORDS]
            .insert("old@varti.test", serde_json::to_vec(&record).unwrap())
            .unwrap();
        for (tree, key) in index_keys(&record) {
            store.trees[tree].insert(key, &[] as &[u8]).unwrap();
        }
        let read = store.get("old@varti.test").unwrap().unwrap();
        assert_eq!(read_all(&store, &read.meta.payloads[0].stored), bytes);
        assert_eq!(store.trees[INLINE].len(), 0);
        assert!(store.mark_delivered("old@varti.test", t0()).unwrap());
        assert_eq!(store.trees[INLINE].len(), 1);
        let read = store.get("old@varti.test").unwrap().unwrap();
        assert_eq!(read_all(&store, &read.meta.payloads[0].stored), bytes);
    }

    #[test]
    fn group_commit_returns_after_a_flush_that_started_after_the_write() {
        let group = GroupCommit::default();
        let disk = FakeDisk::default();
        const THREADS: u64 = 16;
        const WRITES: u64 = 40;
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| {
                    for _ in 0..WRITES {
                        disk.write_and_sync(&group);
                    }
                });
            }
        });
        let flushes = disk.flushes.load(SeqCst);
        assert!(
            flushes <= THREADS * WRITES / 2,
            "{flushes} flushes for {} writes: concurrent callers did not share them",
            THREADS * WRITES
        );
    }

    #[test]
    fn group_commit_alone_flushes_once_per_call() {
        let group = GroupCommit::default();
        let disk = FakeDisk::default();
        for _ in 0..5 {
            disk.write_and_sync(&group);
        }
        assert_eq!(disk.flushes.load(SeqCst), 5);
    }

    /// A store this process holds is reported in use after a bounded wait for its lock;
    /// once dropped, it opens again at once (the wait covers sled's threads letting go).
    #[test]
    fn a_held_store_is_in_use_after_a_bounded_wait_and_opens_once_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let held = SledStore::open(dir.path()).unwrap();
        let started = std::time::Instant::now();
        let err = SledStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("could not acquire lock"), "{err}");
        assert!(
            started.elapsed() >= LOCK_WAIT,
            "gave up after {:?}",
            started.elapsed()
        );
        drop(held);
        SledStore::open(dir.path()).unwrap();
    }

    #[test]
    fn a_failed_flush_fails_its_callers_and_the_next_one_recovers() {
        let group = GroupCommit::default();
        let err = group.sync(|| Err("disk on fire".into())).unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
        group.sync(|| Ok(())).unwrap();
    }

    #[test]
    fn a_panicking_flush_leaves_nobody_waiting() {
        let group = std::sync::Arc::new(GroupCommit::default());
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            group.sync(|| panic!("flush panicked on purpose"))
        }));
        assert!(result.is_err());
        // Would wait forever if the panicked flush still counted as running.
        let (tx, rx) = std::sync::mpsc::channel();
        let other = group.clone();
        std::thread::spawn(move || tx.send(other.sync(|| Ok(())).is_ok()));
        let answered = rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(answered, Ok(true), "the next caller was left waiting");
    }

    /// A store written before the search indexes existed (its records in `records` and
    /// the old trees only) gets them built when opened, once.
    #[test]
    fn an_older_store_gets_its_search_indexes_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            let mut meta = crate::contract::meta("old@them", "alpha");
            meta.from_party = "lv".into();
            store
                .insert_inbound(
                    crate::NewInbound {
                        meta,
                        receipt: b"r".to_vec(),
                        peer: None,
                    },
                    now,
                )
                .unwrap();
            // Make it look like an older version's store.
            for tree in [
                PARTNER,
                CONVERSATION,
                SERVICE,
                ACTION,
                PROPERTY,
                REGULAR,
                TEST,
            ] {
                store.trees[tree].clear().unwrap();
            }
            store.trees[META].remove(SEARCH_INDEX_MARK).unwrap();
            store.db.flush().unwrap();
            let by_partner = ListFilter {
                partner: Some("lv".into()),
                ..ListFilter::default()
            };
            assert!(store.list(&by_partner).unwrap().records.is_empty());
        }
        let store = SledStore::open(dir.path()).unwrap();
        let found = store
            .list(&ListFilter {
                partner: Some("lv".into()),
                exclude_test: true,
                ..ListFilter::default()
            })
            .unwrap();
        assert_eq!(found.records.len(), 1);
        assert_eq!(found.records[0].id(), "old@them");
        assert!(store.trees[META].get(SEARCH_INDEX_MARK).unwrap().is_some());
    }

    #[test]
    fn timestamp_keys_sort_in_time_order() {
        let times = [
            OffsetDateTime::from_unix_timestamp(-1_000).unwrap(),
            OffsetDateTime::from_unix_timestamp(0).unwrap(),
            OffsetDateTime::from_unix_timestamp(1).unwrap(),
            OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
        ];
        for pair in times.windows(2) {
            assert!(ts(pair[0]) < ts(pair[1]));
        }
        for t in times {
            assert_eq!(ts_decode(&ts(t)).unwrap(), t);
        }
    }
}
