//! Varti's message store: where every message, its state and its evidence live.
//!
//! * [`Store`] — the one interface the access point uses. Two implementations fit it: the
//!   embedded [`SledStore`] (the default) and, later, a PostgreSQL store shared by two active
//!   instances. Everything an instance needs to coordinate with another one goes through it:
//!   unique message ids (duplicate detection), leases on outbound work, compare-and-set state
//!   transitions, exactly-once delivery marks.
//! * `state` — the message state machine, written once; stores only ask it.
//! * [`PayloadStore`] — payload bytes, streamed in and out, never whole in memory.
//! * The embedded store's safety net: [`SledStore::open_checked`] and [`check_store`] (the
//!   integrity check), [`recover_store`] (a clean store rebuilt from a damaged one, using
//!   the sidecars: every message's last acknowledged state, in append-only bucket files), [`SledStore::backup`] and [`restore_backup`].
//! * `contract` (feature `testing`) — the test suite every `Store` implementation must pass.
//!
//! # Durability contract
//!
//! **When a mutating `Store` method returns `Ok`, its effect is durable** (on disk, fsync'd;
//! for a replicated database, committed as the configuration demands). The access point
//! relies on this: it answers a partner with a receipt only after
//! [`Store::insert_inbound`] returned, and tells a backend "sent" only after
//! [`Store::record_attempt`] returned. Likewise [`PayloadStore::put`] returns only once the
//! payload is durable, so payloads are written first and the record that names them second.
//!
//! # Sync, not async
//!
//! The trait is blocking on purpose. Its work is a short database step plus an fsync; sled
//! and file I/O are blocking anyway, and payloads stream through [`std::io::Read`]. An async
//! caller (the hyper server) wraps each call in `tokio::task::spawn_blocking`. A PostgreSQL
//! implementation can use the blocking `postgres` client with a connection pool (or keep
//! tokio-postgres and `block_on` a runtime handle inside the blocking call). Keeping tokio out
//! of the trait also keeps the state machine and the contract suite runtime-free.
//!
//! # Time
//!
//! Every method that depends on time takes `now` explicitly (tests move the clock; two
//! instances sharing a database must have NTP-synchronised clocks, which lease durations of
//! minutes tolerate easily).

#![warn(missing_docs)]
#![warn(unreachable_pub)]

mod audit;
mod backup;
mod console;
mod outbox;
mod payload;
pub mod postgres;
mod record;
mod sidecar;
mod sled_check;
mod sled_recover;
mod sled_store;
mod state;

#[cfg(feature = "testing")]
pub mod contract;

use std::time::Duration;
use time::OffsetDateTime;

pub use audit::{
    AuditEntry, AuditFilter, AuditOutcome, AuditPage, NewAuditEntry, MAX_AUDIT_DETAILS_BYTES,
    MAX_AUDIT_PAGE,
};
pub use backup::{restore_backup, BackupSummary};
pub use console::{ConsoleSession, ConsoleUser};
pub use outbox::{OutboxClaim, OutboxEvent};
pub use payload::{
    FileEncoding, FilePayloadStore, PayloadRef, PayloadStore, INLINE_MESSAGE_MAX,
    INLINE_PAYLOAD_MAX,
};
pub use record::{
    AttemptOutcome, HistoryEntry, InsertOutcome, Lease, ListCursor, ListFilter, MessageMeta,
    MessageProperty, MessageRecord, NewInbound, NewOutbound, Page, PayloadEntry, TransitionOutcome,
    CONNECTIVITY_SERVICE, MAX_PREFIX_MATCHES, TEST_ACTION, TEST_SERVICE,
};
pub use sled_check::{
    check_store, damage_summary, CheckOptions, CheckReport, CheckedOpenError, Finding, FindingKind,
    Severity,
};
pub use sled_recover::{recover_store, RecoverReport};
pub use sled_store::{sled_config, SledStore};
pub use state::{transition, Direction, Event, InvalidTransition, State};

/// Why a store operation failed. Each message says what is wrong and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No message with this id is stored (never was, or its metadata was purged).
    #[error("no message with id `{message_id}` is stored (check the id; metadata older than the retention period is purged)")]
    NotFound {
        /// The id that was looked up.
        message_id: String,
    },
    /// A message with this id already exists and a new one cannot take its id.
    #[error("a {direction} message with id `{message_id}` already exists: message ids must be unique (generate a new one)")]
    AlreadyExists {
        /// The contested id.
        message_id: String,
        /// The direction of the message that already has it.
        direction: Direction,
    },
    /// The state machine refuses the event in the message's current state.
    #[error("message `{message_id}`: {source}")]
    InvalidTransition {
        /// The message.
        message_id: String,
        /// What was refused.
        source: InvalidTransition,
    },
    /// Compare-and-set failed: the message is no longer in the state the caller read.
    #[error("message `{message_id}` is in state `{actual}`, not `{expected}` as the caller assumed: someone else moved it; re-read it and decide again")]
    StateConflict {
        /// The message.
        message_id: String,
        /// The state the caller expected.
        expected: State,
        /// The state it is really in.
        actual: State,
    },
    /// The caller no longer holds the lease on an outbound message it tries to update.
    #[error("message `{message_id}`: this instance no longer holds its sending lease (now held by {holder:?}); drop the attempt, the lease holder owns the message")]
    LeaseLost {
        /// The message.
        message_id: String,
        /// Who holds the lease now, if anyone.
        holder: Option<String>,
    },
    /// The caller passed something the store cannot accept.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A file-system operation failed.
    #[error("{context}: {source} (check that the store directory exists, is writable and the disk is not full)")]
    Io {
        /// What the store was doing.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The database engine failed.
    #[error("database error: {0}")]
    Database(String),
    /// Stored data cannot be read back: the store is damaged or was written by an
    /// incompatible version.
    #[error(
        "stored data is corrupt: {0} (restore the store from a backup or check the Varti version)"
    )]
    Corrupt(String),
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }
}

/// The message store. See the [crate documentation](crate) for the durability contract:
/// every mutating method's effect is durable when it returns `Ok`.
///
/// Records are keyed by ebMS MessageId, unique across both directions. The store does not
/// authorise: callers serving a backend must filter by [`ListFilter::owner`] and compare
/// [`MessageMeta::owner`] on records they fetch, so that a backend sees only its own messages.
pub trait Store: Send + Sync {
    /// Where this store keeps payload bytes. Write a message's payloads here *before*
    /// inserting the record that names them.
    fn payloads(&self) -> &dyn PayloadStore;

    /// Stores a message received from a partner, with the receipt that will answer it.
    ///
    /// Atomic duplicate detection: if an inbound message with the same id is stored (the
    /// duplicate-detection window is the metadata retention, so it is at least as long as any
    /// PMode's window), nothing is inserted and [`InsertOutcome::Duplicate`] carries the
    /// original receipt to send again; the duplicate's own payloads (`msg.meta.payloads`) are
    /// removed by the store. If the id belongs to an outbound message,
    /// [`StoreError::AlreadyExists`]. On `Ok(Inserted)` the record is durable: only then may
    /// the receipt leave. On any `Err` the caller still owns the payloads it wrote.
    fn insert_inbound(
        &self,
        msg: NewInbound,
        now: OffsetDateTime,
    ) -> Result<InsertOutcome, StoreError>;

    /// Stores a message submitted by a backend, in state `Submitted`, due at
    /// `msg.not_before`. [`StoreError::AlreadyExists`] if the id is taken.
    fn insert_outbound(&self, msg: NewOutbound, now: OffsetDateTime) -> Result<(), StoreError>;

    /// Claims up to `limit` outbound messages that are due at `now`, oldest due first: those
    /// `Submitted` or `WaitingForRetry` whose next attempt time has come, and those `Sending`
    /// whose lease expired (their sender died; they go through `LeaseExpired` first). Each
    /// returned record is now `Sending`, leased to `holder` until `now + lease_for`, with its
    /// attempt count incremented. Two concurrent claimers never get the same message while
    /// its lease is valid. (PostgreSQL: `SELECT … FOR UPDATE SKIP LOCKED` then `UPDATE`.)
    fn claim_due(
        &self,
        holder: &str,
        lease_for: Duration,
        limit: usize,
        now: OffsetDateTime,
    ) -> Result<Vec<MessageRecord>, StoreError>;

    /// Claims the one outbound message `message_id`, whether or not its next attempt is due:
    /// for a partner pulling it (one-way/pull), which decides when it is sent. Claimable are
    /// messages `Submitted` or `WaitingForRetry` (at any due time) and `Sending` under an
    /// expired lease (a pulled message whose receipt never came). The effects are those of
    /// [`Store::claim_due`] on it: now `Sending`, leased to `holder` until `now + lease_for`,
    /// attempt count incremented. `Ok(None)` when it is not claimable (inbound, settled,
    /// leased, or being changed by someone else right now); [`StoreError::NotFound`] when no
    /// such message is stored. Two concurrent claimers never both get it.
    /// (PostgreSQL: the row is read `FOR UPDATE SKIP LOCKED`.)
    fn claim_message(
        &self,
        message_id: &str,
        holder: &str,
        lease_for: Duration,
        now: OffsetDateTime,
    ) -> Result<Option<MessageRecord>, StoreError>;

    /// Records how an attempt by the lease `holder` ended, and releases the lease.
    ///
    /// * [`AttemptOutcome::Acknowledged`] stores the receipt and moves the message to
    ///   `Acknowledged`. A receipt is the truth whoever holds the lease, so this is accepted
    ///   from `Sending` or `WaitingForRetry` regardless of the holder, and is a no-op on an
    ///   acknowledged message.
    /// * [`AttemptOutcome::Retry`] → `WaitingForRetry`, due at `at`.
    /// * [`AttemptOutcome::Failed`] → `Failed` (report EBMS:0301 to the backend after this
    ///   returns).
    ///
    /// `Retry` and `Failed` require `holder` to hold the lease, else
    /// [`StoreError::LeaseLost`]. Returns the updated record.
    fn record_attempt(
        &self,
        message_id: &str,
        holder: &str,
        outcome: AttemptOutcome,
        now: OffsetDateTime,
    ) -> Result<MessageRecord, StoreError>;

    /// Applies `event` if the message is in state `expected` (compare-and-set).
    ///
    /// If the message is elsewhere but the event's effect is already in place (acknowledging
    /// an acknowledged message), returns [`TransitionOutcome::AlreadyApplied`] and writes
    /// nothing; otherwise [`StoreError::StateConflict`]. Events that need data or a lease
    /// (`Claim`, `AttemptFailed`, `LeaseExpired`) are refused with
    /// [`StoreError::InvalidInput`]: use [`Store::claim_due`] / [`Store::record_attempt`].
    /// `Resend` makes a failed message due again at `now` with its attempt count reset.
    fn transition(
        &self,
        message_id: &str,
        expected: State,
        event: Event,
        now: OffsetDateTime,
    ) -> Result<TransitionOutcome, StoreError>;

    /// Marks an inbound message delivered to its backend. Returns `true` only for the one
    /// call that moved it from `Received` to `Delivered`; every other call (concurrent, or
    /// on another instance, or later) gets `false`. Hand the message to the backend only on
    /// `true`; retry a failed hand-over with the webhook's own retries, not by re-marking.
    fn mark_delivered(&self, message_id: &str, now: OffsetDateTime) -> Result<bool, StoreError>;

    /// Records in the history of inbound message `message_id` that `by` (a backend client)
    /// downloaded its payload `index` (a [`Event::Fetch`] entry). The state does not change:
    /// only the backend's acknowledgement ([`Event::Download`]) settles a received message.
    /// [`StoreError::NotFound`] when no such message is stored, [`StoreError::InvalidInput`]
    /// for an outbound one.
    fn record_download(
        &self,
        message_id: &str,
        index: usize,
        by: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError>;

    /// Makes the outbound message `message_id`, waiting for its next attempt, due at `now`
    /// (an operator's "retry now" after a partner's outage), recording by whom in the
    /// history ([`Event::RetryNow`]). Returns `true` when it changed, `false` when it was
    /// already due. A message in any other state is a [`StoreError::StateConflict`]
    /// (expected `waiting_for_retry`); [`StoreError::NotFound`] when none is stored.
    fn retry_now(
        &self,
        message_id: &str,
        by: &str,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// [`Store::retry_now`] for every outbound message waiting for its retry, optionally
    /// only those to `partner` ([`MessageRecord::partner`]) and owned by `owner`. Returns
    /// the ids of the messages made due (those already due are left alone and not
    /// counted). Reads only the messages in progress, never the whole store.
    fn retry_waiting(
        &self,
        partner: Option<&str>,
        owner: Option<&str>,
        by: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<String>, StoreError>;

    /// The message with its history, or `None`.
    fn get(&self, message_id: &str) -> Result<Option<MessageRecord>, StoreError>;

    /// Messages matching `filter`, newest first, one page at a time; pass the returned
    /// [`Page::next`] as [`ListFilter::after`] for the following page.
    ///
    /// Every search field is served by an index in both stores (no full scans): a page
    /// walks the index of the most selective field given and checks the others on the
    /// records it reads. The embedded store reads at most 10,000 index entries per page
    /// (the page then ends early with a cursor); a bare [`ListFilter::id_prefix`] matching
    /// more than [`MAX_PREFIX_MATCHES`] messages is refused with
    /// [`StoreError::InvalidInput`].
    fn list(&self, filter: &ListFilter) -> Result<Page, StoreError>;

    /// Removes the payloads of every message settled (delivered, acknowledged or failed)
    /// before `settled_before`, keeping its metadata; sets
    /// [`MessageRecord::payloads_purged_at`]. Returns how many messages were purged.
    fn purge_payloads(
        &self,
        settled_before: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<usize, StoreError>;

    /// Removes the payloads of the one message `message_id` now, whatever the retention,
    /// keeping its metadata; sets [`MessageRecord::payloads_purged_at`]. For data that must
    /// not outlive its hand-over (OOTS evidence). Only a settled message (delivered,
    /// acknowledged or failed) is purged: `Ok(false)` for one still in progress, one already
    /// purged or one without payloads; [`StoreError::NotFound`] when no such message is
    /// stored.
    fn purge_payloads_of(&self, message_id: &str, now: OffsetDateTime) -> Result<bool, StoreError>;

    /// Removes the records (and any payloads left) of messages settled before
    /// `settled_before`. Messages still in progress are never removed. Returns how many.
    fn purge_metadata(&self, settled_before: OffsetDateTime) -> Result<usize, StoreError>;

    /// Removes test traffic ([`MessageMeta::is_test`]) created before `created_before`,
    /// records and payloads, on its own schedule (`retention.test_days`): received test
    /// messages are never delivered, so they would otherwise never settle. Outbound test
    /// messages still in progress are kept. Returns how many were removed.
    fn purge_test(&self, created_before: OffsetDateTime) -> Result<usize, StoreError>;

    /// How many outbound messages are still to be sent: submitted, sending or waiting for
    /// a retry (the `varti_queue_depth` gauge). Counted from the index of outbound work,
    /// never by reading every record.
    fn queue_depth(&self) -> Result<u64, StoreError>;

    /// Notes that a signal with `message_id` (a PullRequest) was accepted at `now`: true the
    /// first time, false for an id already noted (a replay), atomically across every
    /// instance sharing the store. Ids noted before `forget_before` may be forgotten: the
    /// caller refuses signals that old by their timestamp anyway.
    fn note_signal(
        &self,
        message_id: &str,
        now: OffsetDateTime,
        forget_before: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// Appends `entry` to the audit trail at `now` (see [`audit`](crate::AuditEntry)) and
    /// returns it numbered. Entries are numbered in the order they become visible, so a
    /// reader paging with [`AuditFilter::after`] never skips one appended concurrently (by
    /// another thread or another instance sharing the store). Durable when it returns.
    /// Nothing can change or remove an entry afterwards.
    fn append_audit(
        &self,
        entry: NewAuditEntry,
        now: OffsetDateTime,
    ) -> Result<AuditEntry, StoreError>;

    /// The audit entries matching `filter`, oldest first, one page at a time.
    fn list_audit(&self, filter: &AuditFilter) -> Result<AuditPage, StoreError>;

    // The operations console's accounts and sessions (see [`ConsoleUser`]); shared by the
    // instances on one database. Every write is durable when it returns.

    /// Creates the console account `user.name`, or replaces it (role, password).
    fn put_console_user(&self, user: &ConsoleUser) -> Result<(), StoreError>;

    /// The console account `name`, or `None`.
    fn console_user(&self, name: &str) -> Result<Option<ConsoleUser>, StoreError>;

    /// Every console account, by name.
    fn list_console_users(&self) -> Result<Vec<ConsoleUser>, StoreError>;

    /// Removes the console account `name` and every session of it. `false` when there was
    /// none.
    fn remove_console_user(&self, name: &str) -> Result<bool, StoreError>;

    /// Stores a console session (a new one, or one whose `last_seen` moved).
    fn put_console_session(&self, session: &ConsoleSession) -> Result<(), StoreError>;

    /// The console session whose cookie hashes to `id_sha256`, or `None`.
    fn console_session(&self, id_sha256: &str) -> Result<Option<ConsoleSession>, StoreError>;

    /// Removes one console session (logout). `false` when there was none.
    fn remove_console_session(&self, id_sha256: &str) -> Result<bool, StoreError>;

    /// Removes the console sessions last used before `idle_before` or begun before
    /// `created_before` (expired). Returns how many.
    fn purge_console_sessions(
        &self,
        idle_before: OffsetDateTime,
        created_before: OffsetDateTime,
    ) -> Result<usize, StoreError>;
    // --- Two data centres (issue 18): the webhook outbox (see [`OutboxEvent`]). ---

    /// Claims the pending outbox event `kind` of `message_id` for `holder` until
    /// `now + lease_for`: what the instance that made the change does right after it.
    /// [`OutboxClaim::Busy`] when someone else holds it (or an earlier event of the message
    /// is still pending), [`OutboxClaim::Absent`] when there is none.
    fn claim_outbox_event(
        &self,
        message_id: &str,
        kind: &str,
        holder: &str,
        lease_for: Duration,
        now: OffsetDateTime,
    ) -> Result<OutboxClaim, StoreError>;

    /// Claims up to `limit` outbox events nobody is delivering, oldest first, for `holder`
    /// until `now + lease_for`: those never claimed though written more than `unclaimed_for`
    /// ago (their instance died before announcing them), and those whose lease expired
    /// (their deliverer died). An event waits while an earlier event of its message is
    /// pending. Two concurrent claimers never get the same event while its lease is valid.
    fn claim_outbox_due(
        &self,
        holder: &str,
        lease_for: Duration,
        unclaimed_for: Duration,
        limit: usize,
        now: OffsetDateTime,
    ) -> Result<Vec<OutboxEvent>, StoreError>;

    /// Extends `holder`'s lease on `event` to `until` (before a retry, so the lease covers
    /// the wait). `false` when the event is gone or leased to someone else.
    fn extend_outbox_lease(
        &self,
        event: &OutboxEvent,
        holder: &str,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// Removes `events` from the outbox in one durable step: they were delivered, given up
    /// on, or belong to a backend without a webhook. Removing an event that is gone is not
    /// an error.
    fn complete_outbox_events(&self, events: &[OutboxEvent]) -> Result<(), StoreError>;

    /// From now on, writes outbox events only for the messages of `owners`: the backends
    /// whose webhooks this process delivers (its webhook dispatcher says so at start).
    /// Nothing would deliver the events of other owners; unwritten, they cost nothing.
    /// `None`, the default: events of every owner.
    fn set_outbox_owners(&self, owners: Option<std::collections::HashSet<String>>);

    /// How many events are pending in the outbox (a gauge for operators and tests).
    fn outbox_depth(&self) -> Result<u64, StoreError>;

    /// Writes and commits a small record that `instance` is alive at `now`: proves the
    /// store takes writes (a read-only standby, an unreachable primary or a primary whose
    /// synchronous standby is cut off fails or hangs here). The readiness probe calls it
    /// under a timeout.
    fn probe_writable(&self, instance: &str, now: OffsetDateTime) -> Result<(), StoreError>;

    // --- Previews in the shared store (issue 18): opaque records keyed by id. ---
    // The store gives them no meaning (the OOTS gateway keeps its preview sessions, logins
    // and encrypted held evidence here, so that any instance of a pair can serve them).

    /// Stores `data` under `id`, replacing what was there; kept until `keep_until`, when
    /// [`Store::purge_preview_records`] removes it.
    fn put_preview_record(
        &self,
        id: &str,
        data: &[u8],
        keep_until: OffsetDateTime,
    ) -> Result<(), StoreError>;

    /// The record `id`, if there is one (expired or not: purging removes them).
    fn preview_record(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Replaces the record `id` with `data` (kept until `keep_until`) only if it still holds
    /// exactly `expected`: of two instances changing it at once, one wins. `false` when the
    /// record changed meanwhile or is gone.
    fn swap_preview_record(
        &self,
        id: &str,
        expected: &[u8],
        data: &[u8],
        keep_until: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// Removes every record whose id starts with `prefix`; how many.
    fn remove_preview_records(&self, prefix: &str) -> Result<usize, StoreError>;

    /// Removes the records kept until `now` or earlier; how many.
    fn purge_preview_records(&self, now: OffsetDateTime) -> Result<usize, StoreError>;
}

/// Longest accepted MessageId, in bytes (RFC 2822 msg-ids are far shorter; this bounds keys).
pub(crate) const MAX_MESSAGE_ID_LEN: usize = 1024;
/// Longest accepted owner (backend) id or lease holder id, in bytes.
pub(crate) const MAX_OWNER_LEN: usize = 256;
/// Most records one [`Store::list`] page returns, whatever the filter asks.
pub const MAX_PAGE_SIZE: usize = 1000;
