//! The PostgreSQL store: one database shared by several active Varti instances.
//!
//! [`PgStore`] implements the same synchronous [`Store`] trait as the embedded sled store,
//! and [`PgPayloadStore`] the [`PayloadStore`], with the blocking `postgres` client and a
//! small pool of its own. Everything two instances must agree on is decided by the
//! database, never by memory:
//!
//! | contract | how |
//! |---|---|
//! | duplicate detection | `messages.message_id` is the primary key: `INSERT … ON CONFLICT DO NOTHING`, then the original row is read `FOR UPDATE` |
//! | outbound work | `SELECT … WHERE due_at <= now … FOR UPDATE SKIP LOCKED` and the lease written in the same transaction; `due_at` always equals `MessageRecord::due_at` |
//! | transitions | the row is read `FOR UPDATE`, changed by the shared logic in `crate::record` (state machine, leases, history), written back with `UPDATE … WHERE state = $read` |
//! | exactly-once delivery | [`Store::mark_delivered`] is one conditional statement, `UPDATE … WHERE state = 'received'` plus its history row: one row back means this call won |
//! | payloads | chunked `bytea` rows (256 KiB), streamed in one transaction, read one chunk per query |
//! | audit trail | `audit_log` (append-only by trigger); appends serialised by an advisory lock so numbers commit in order |
//!
//! # Durability
//!
//! Every mutating method returns after its transaction's `COMMIT` returned, so its effect is
//! durable as the server's `synchronous_commit` defines: with the default `on` it is flushed
//! to the primary's WAL. [`PgStore::connect`] refuses a server where `synchronous_commit`
//! is `off` (an acknowledged message could vanish in a crash). For an active-active pair
//! with a synchronous standby, set `synchronous_standby_names` on the primary and
//! `synchronous_commit = remote_apply` (or `on`) for Varti's role: then no message
//! acknowledged to a partner is lost when the standby is promoted. The trade-off: while the
//! synchronous standby is down, commits wait (the pair stops accepting messages) until it
//! is back or an operator removes it from `synchronous_standby_names`.
//!
//! # Failover and retries
//!
//! A connection string may list several hosts (`host=db1,db2 target_session_attrs=read-write`):
//! new connections go to the first one that accepts writes. When an operation fails because
//! its connection broke (server gone, shut down, demoted to read-only), the pool drops every
//! idle connection and runs the *whole* operation again on a fresh one, a bounded number of
//! times with exponential backoff ([`PgOptions::retry_attempts`]).
//!
//! All operations are safe to retry, because each is one transaction that is either
//! idempotent or a compare-and-set — with one subtlety: the connection may break after the
//! server committed but before the answer arrived. Every operation therefore carries an
//! operation id (a UUID) written with its effect (`messages.created_op`,
//! `message_history.op`), and a retry first looks for its own earlier effect: a retried
//! insert finds its own row (not a "duplicate"), a retried `mark_delivered` still returns
//! `true`, a retried `record_attempt`/`transition` returns what its first attempt did, a
//! retried `claim_due` returns the messages its first attempt leased. Two exceptions, both
//! harmless: a retried duplicate insert may count the duplicate twice, and
//! [`PayloadStore::put`] is not retried (its input stream is consumed; nothing of a failed
//! upload is kept, so the caller simply uploads again).
//!
//! # Time
//!
//! PostgreSQL keeps microseconds: every time passed in (`now`, retry times, lease durations)
//! is truncated to whole microseconds first, so the record a method returns is exactly the
//! one [`Store::get`] reads back.

mod audit;
mod console;
mod migrations;
mod payloads;
mod pool;
#[cfg(feature = "testing")]
pub mod testing;

pub use migrations::SCHEMA_VERSION;
pub use payloads::{PgPayloadStore, CHUNK_SIZE};

use crate::outbox::{self, OutboxClaim, OutboxEvent};
use crate::payload::{PayloadRef, PayloadStore};
use crate::record::{validate_id, HistoryEntry, Lease, MessageMeta, MessageRecord, MAX_HISTORY};
use crate::state::{transition, Direction, Event, State};
use crate::{
    AttemptOutcome, InsertOutcome, ListCursor, ListFilter, NewInbound, NewOutbound, Page, Store,
    StoreError, TransitionOutcome, MAX_MESSAGE_ID_LEN, MAX_OWNER_LEN, MAX_PAGE_SIZE,
};
use pool::{Attempt, Fail, Pool, Tx};
use postgres::Row;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use uuid::Uuid;

/// How a [`PgStore`] connects. `Default` suits one Varti instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOptions {
    /// The schema holding Varti's tables (`search_path` of every connection); `None` uses
    /// the server's default (`public`). Plain identifiers only (`a-z`, `0-9`, `_`).
    pub schema: Option<String>,
    /// Most connections the pool opens (each running operation or payload chunk uses one).
    pub max_connections: usize,
    /// Connect timeout per host, unless the connection string sets `connect_timeout`.
    pub connect_timeout: Duration,
    /// How many times an operation is tried when its connection breaks (at least 1).
    pub retry_attempts: u32,
    /// Pause before the first retry; doubled each time.
    pub retry_backoff: Duration,
    /// Longest pause between retries.
    pub retry_backoff_max: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            schema: None,
            max_connections: 8,
            connect_timeout: Duration::from_secs(10),
            // 0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 3.2 + 5 + 5 s ≈ 16 s: long enough to ride
            // over a standby promotion, short enough to surface a dead database.
            retry_attempts: 9,
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(5),
        }
    }
}

/// Applies the schema migrations the database at `url` lacks, in order, in one transaction.
/// Returns the versions applied (empty: already current). This is what
/// `varti db migrate --database URL` runs.
pub fn migrate(url: &str) -> Result<Vec<i32>, StoreError> {
    migrate_with(url, &PgOptions::default())
}

/// [`migrate`] into `options.schema` (created if missing).
pub fn migrate_with(url: &str, options: &PgOptions) -> Result<Vec<i32>, StoreError> {
    let pool = Pool::new(
        url,
        &PgOptions {
            max_connections: 1,
            ..options.clone()
        },
    )?;
    migrations::apply(&pool, options.schema.as_deref())
}

/// The PostgreSQL store. Cheap to share between threads (`Arc<PgStore>`); any number of
/// instances, in any number of processes, may use the same database at once.
pub struct PgStore {
    pool: Arc<Pool>,
    payloads: PgPayloadStore,
    /// Whose events the outbox keeps.
    outbox_owners: outbox::Owners,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

/// The `payloads` column of the message row being updated without the bytes of inline
/// payloads (they are purged with the others'), in message order.
const WITHOUT_INLINE: &str = "COALESCE((SELECT jsonb_agg(p #- '{stored,inline}' ORDER BY n) \
     FROM jsonb_array_elements(m.payloads) WITH ORDINALITY AS e(p, n)), '[]'::jsonb)";

impl PgStore {
    /// Moves the inline payloads of a message being inserted past
    /// [`INLINE_MESSAGE_MAX`](crate::payload::INLINE_MESSAGE_MAX) into chunk rows, so that
    /// its row stays small; returns the payloads made.
    fn bound_inline(
        &self,
        payloads: &mut [crate::PayloadEntry],
    ) -> Result<Vec<PayloadRef>, StoreError> {
        crate::payload::bound_inline(
            payloads,
            |r| self.payloads.put_chunks(r),
            |r| {
                let _ = self.payloads.remove(r);
            },
        )
    }

    /// Passes `outcome` on; when it is an error, first removes the payloads
    /// [`PgStore::bound_inline`] made (the caller only knows its own references, inline).
    fn forget_spilled_on_error<T>(
        &self,
        outcome: Result<T, StoreError>,
        spilled: &[PayloadRef],
    ) -> Result<T, StoreError> {
        if outcome.is_err() {
            for r in spilled {
                let _ = self.payloads.remove(r);
            }
        }
        outcome
    }

    /// Deletes the messages `selection` picks (a WHERE condition on `messages` with `$1`
    /// bound to `bound`, and its ORDER BY), with their payloads unless already purged, in
    /// batches of [`PURGE_BATCH`] (rows other instances hold are skipped, not waited for).
    /// Returns how many were deleted.
    fn delete_in_batches(
        &self,
        what: &'static str,
        selection: &str,
        bound: OffsetDateTime,
    ) -> Result<usize, StoreError> {
        let sql = format!(
            "WITH batch AS ( \
                 SELECT message_id FROM messages WHERE {selection} \
                 LIMIT $2 FOR UPDATE SKIP LOCKED), \
             removed AS ( \
                 DELETE FROM messages m USING batch \
                 WHERE m.message_id = batch.message_id \
                 RETURNING m.payloads, m.payloads_purged_at), \
             gone AS ( \
                 DELETE FROM payloads WHERE payload_id IN ( \
                     SELECT p -> 'stored' ->> 'id' \
                     FROM removed, jsonb_array_elements(removed.payloads) AS p \
                     WHERE removed.payloads_purged_at IS NULL)) \
             SELECT count(*) FROM removed"
        );
        let mut removed = 0;
        loop {
            let n: i64 = self.pool.run(what, |client, _| {
                Ok(client
                    .query_one(sql.as_str(), &[&bound, &PURGE_BATCH])?
                    .get(0))
            })?;
            if n == 0 {
                return Ok(removed);
            }
            removed += n as usize;
        }
    }

    /// The query plan PostgreSQL chooses for [`Store::list`] with `filter` (`EXPLAIN`), with
    /// sequential scans discouraged as on a large table (a tiny test table would otherwise
    /// be read whole because that is cheapest): tests check that each search has an index.
    #[cfg(feature = "testing")]
    pub fn explain_list(&self, filter: &ListFilter) -> Result<String, StoreError> {
        let query = ListQuery::new(filter, filter.page_size() as i64 + 1);
        self.pool.run("explaining a listing", |client, _| {
            let mut tx = client.transaction()?;
            tx.batch_execute("SET LOCAL enable_seqscan = off")?;
            let rows = tx.query(&format!("EXPLAIN {}", query.sql), &query.params())?;
            tx.commit()?;
            Ok(rows
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
                .join("\n"))
        })
    }

    /// The query plan PostgreSQL chooses (`EXPLAIN`) for the statement with which
    /// [`Store::claim_due`] picks and locks at most `limit` messages due at `now`: tests
    /// check that it walks the `messages_due` index and stops at the limit, whatever the
    /// backlog.
    #[cfg(feature = "testing")]
    pub fn explain_pick_due(&self, now: OffsetDateTime, limit: i64) -> Result<String, StoreError> {
        let now = micros(now);
        self.pool.run("explaining a claim", |client, _| {
            let rows = client.query(&format!("EXPLAIN {PICK_DUE}"), &[&now, &limit])?;
            Ok(rows
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
                .join("\n"))
        })
    }

    /// Connects to `url` (libpq `key=value` string or `postgresql://` URL, several hosts
    /// allowed) with default options. Fails unless the schema is exactly at
    /// [`SCHEMA_VERSION`] (run [`migrate`] first; a newer schema is refused) and commits are
    /// durable (`synchronous_commit` is not `off`).
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, PgOptions::default())
    }

    /// [`connect`](Self::connect) with explicit options.
    pub fn connect_with(url: &str, options: PgOptions) -> Result<Self, StoreError> {
        let pool = Arc::new(Pool::new(url, &options)?);
        pool.run("checking the database at start-up", |client, _| {
            migrations::check(client)?;
            let sync: String = client.query_one("SHOW synchronous_commit", &[])?.get(0);
            if sync == "off" {
                return Err(Fail::Store(StoreError::Database(
                    "the server runs with synchronous_commit = off, so a message Varti \
                     acknowledged could be lost in a crash: set it to `on` (or \
                     `remote_apply` with a synchronous standby) for Varti's role or database"
                        .into(),
                )));
            }
            Ok(())
        })?;
        Ok(PgStore {
            payloads: PgPayloadStore::new(Arc::clone(&pool)),
            pool,
            outbox_owners: outbox::Owners::default(),
        })
    }

    /// The concrete payload store (chunk rows in the same database).
    pub fn pg_payloads(&self) -> &PgPayloadStore {
        &self.payloads
    }

    /// Reads a record `FOR UPDATE`, lets `change` decide, writes the result (row and new
    /// history entries) and commits — one transaction, retried as a whole.
    fn modify<T>(
        &self,
        what: &str,
        message_id: &str,
        mut change: impl FnMut(&mut Loaded, Attempt, Uuid) -> Result<Change<T>, StoreError>,
    ) -> Result<T, StoreError> {
        let op = Uuid::new_v4();
        self.pool.run(what, |client, attempt| {
            let mut tx = client.begin()?;
            let row = tx.query_opt(
                &format!("SELECT {COLUMNS} FROM messages WHERE message_id = $1 FOR UPDATE"),
                &[&message_id],
            )?;
            let Some(row) = row else {
                return Err(not_found(message_id).into());
            };
            let mut loaded = load_with_history(&mut tx, vec![row])?
                .pop()
                .expect("one row, one record");
            let before = loaded.record.state;
            let decision = change(&mut loaded, attempt, op)?;
            if decision.write {
                update_row(&mut tx, &loaded.record, before)?;
                insert_outbox(
                    &mut tx,
                    outbox::new_event(Some(before), &loaded.record, &self.outbox_owners),
                )?;
                append_history(&mut tx, &loaded, decision.new_entries, op)?;
                tx.commit()?;
            }
            Ok(decision.out)
        })
    }

    fn insert(
        &self,
        what: &str,
        record: &MessageRecord,
    ) -> Result<Option<(InsertOutcome, Vec<PayloadRef>)>, StoreError> {
        let op = Uuid::new_v4();
        let id = record.id();
        self.pool.run(what, |client, _| {
            let mut tx = client.begin()?;
            // A concurrent purge may remove the conflicting row between the two statements:
            // then the insert is simply tried again.
            for _ in 0..3 {
                if insert_row(&mut tx, record, op)? {
                    insert_outbox(
                        &mut tx,
                        outbox::new_event(None, record, &self.outbox_owners),
                    )?;
                    tx.commit()?;
                    return Ok(None);
                }
                let Some(row) = tx.query_opt(
                    "SELECT direction, state, receipt, payloads::text, created_op \
                     FROM messages WHERE message_id = $1 FOR UPDATE",
                    &[&id],
                )?
                else {
                    continue;
                };
                let direction = parse_direction(row.get(0))?;
                let created_op: Uuid = row.get(4);
                if created_op == op {
                    // Our own insert, committed by an attempt whose answer was lost.
                    return Ok(None);
                }
                if direction != Direction::Inbound || record.direction != Direction::Inbound {
                    return Err(StoreError::AlreadyExists {
                        message_id: id.to_owned(),
                        direction,
                    }
                    .into());
                }
                tx.execute(
                    "UPDATE messages SET duplicates = duplicates + 1 WHERE message_id = $1",
                    &[&id],
                )?;
                tx.commit()?;
                let kept: Vec<crate::PayloadEntry> = parse_json(row.get(3))?;
                let answer = InsertOutcome::Duplicate {
                    original_receipt: row.get::<_, Option<Vec<u8>>>(2).unwrap_or_default(),
                    state: parse_state(row.get(1))?,
                };
                return Ok(Some((answer, kept.into_iter().map(|p| p.stored).collect())));
            }
            Err(StoreError::Database(format!(
                "message `{id}` kept appearing and vanishing while it was inserted (a purge \
                 is racing with it); try again"
            ))
            .into())
        })
    }
}

/// What a [`PgStore::modify`] change decided.
struct Change<T> {
    /// Write the record back (else roll back and write nothing).
    write: bool,
    /// How many history entries the change appended.
    new_entries: usize,
    /// The method's result.
    out: T,
}

impl<T> Change<T> {
    fn keep(out: T) -> Self {
        Change {
            write: false,
            new_entries: 0,
            out,
        }
    }
}

/// A record as read from the database, with what a write-back needs to know.
struct Loaded {
    record: MessageRecord,
    /// The sequence number of its newest history row (-1 if none).
    last_seq: i64,
    /// The operation id of each history entry (same order as `record.history`).
    ops: Vec<Uuid>,
}

impl Loaded {
    /// The history entry written by operation `op`, if it committed.
    fn entry_by(&self, op: Uuid) -> Option<&HistoryEntry> {
        self.ops
            .iter()
            .position(|o| *o == op)
            .map(|i| &self.record.history[i])
    }
}

impl Store for PgStore {
    fn payloads(&self) -> &dyn PayloadStore {
        &self.payloads
    }

    fn append_audit(
        &self,
        entry: crate::NewAuditEntry,
        now: OffsetDateTime,
    ) -> Result<crate::AuditEntry, StoreError> {
        audit::append(&self.pool, entry, now)
    }

    fn list_audit(&self, filter: &crate::AuditFilter) -> Result<crate::AuditPage, StoreError> {
        audit::list(&self.pool, filter)
    }

    fn insert_inbound(
        &self,
        msg: NewInbound,
        now: OffsetDateTime,
    ) -> Result<InsertOutcome, StoreError> {
        let mut msg = msg;
        let spilled = self.bound_inline(&mut msg.meta.payloads)?;
        let new_payloads: Vec<PayloadRef> =
            msg.meta.payloads.iter().map(|p| p.stored.clone()).collect();
        let record = MessageRecord::new_inbound(msg, micros(now))?;
        let inserted = self.insert("storing an inbound message", &record);
        match self.forget_spilled_on_error(inserted, &spilled)? {
            None => Ok(InsertOutcome::Inserted),
            Some((answer, kept)) => {
                // The duplicate's own copy of the payloads is not needed: the original's are.
                for payload in new_payloads.iter().filter(|p| !kept.contains(p)) {
                    if let Err(e) = self.payloads.remove(payload) {
                        tracing::warn!(message_id = %record.id(), error = %e,
                            "cannot remove a duplicate's payload");
                    }
                }
                Ok(answer)
            }
        }
    }

    fn insert_outbound(&self, msg: NewOutbound, now: OffsetDateTime) -> Result<(), StoreError> {
        let msg = NewOutbound {
            not_before: micros(msg.not_before),
            ..msg
        };
        let mut msg = msg;
        let spilled = self.bound_inline(&mut msg.meta.payloads)?;
        let record = MessageRecord::new_outbound(msg, micros(now))?;
        let inserted = self.insert("storing an outbound message", &record);
        match self.forget_spilled_on_error(inserted, &spilled)? {
            None => Ok(()),
            Some(_) => unreachable!("an outbound insert never reports a duplicate"),
        }
    }

    fn claim_due(
        &self,
        holder: &str,
        lease_for: Duration,
        limit: usize,
        now: OffsetDateTime,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        validate_id("lease holder", holder, MAX_OWNER_LEN)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = micros(now);
        let lease_for = Duration::from_micros(lease_for.as_micros().min(u64::MAX as u128) as u64);
        let limit = limit.min(MAX_PAGE_SIZE);
        let op = Uuid::new_v4();
        self.pool.run("claiming due messages", |client, attempt| {
            let mut tx = client.begin()?;
            let mut claimed = Vec::new();
            if attempt.retrying {
                // An earlier attempt may have committed its claims: they are leased to us
                // until exactly now + lease_for, with a history entry carrying our op id.
                let rows = tx.query(
                    &format!(
                        "SELECT {COLUMNS} FROM messages WHERE due_at = $1 AND state = 'sending' \
                         AND lease_holder = $2 FOR UPDATE"
                    ),
                    &[&(now + lease_for), &holder],
                )?;
                for loaded in load_with_history(&mut tx, rows)? {
                    if loaded.entry_by(op).is_some() {
                        claimed.push(loaded.record);
                    }
                }
            }
            let wanted = (limit - claimed.len().min(limit)) as i64;
            // The due messages are picked and locked by their id alone, in the order of the
            // `messages_due` index; only then are the picked rows read whole. Selecting the
            // whole rows in the ordered, locking scan made PostgreSQL build every due row
            // (inline payloads turned into JSON text, then sorted, spilling to disk) on
            // every claim: with a backlog of a few thousand messages that was a fifth of the
            // database's CPU, and it kept the claiming transaction (and the row locks it
            // holds) open long enough to stall the other instance's receipts. The second
            // statement takes a new snapshot (read committed), so it reads the versions
            // that were locked, as the single statement did.
            let ids: Vec<String> = tx
                .query(PICK_DUE, &[&now, &wanted])?
                .iter()
                .map(|row| row.get(0))
                .collect();
            let rows = if ids.is_empty() {
                Vec::new()
            } else {
                tx.query(
                    &format!(
                        "SELECT {COLUMNS} FROM messages WHERE message_id = ANY($1) \
                         ORDER BY due_at, message_id"
                    ),
                    &[&ids],
                )?
            };
            for mut loaded in load_with_history(&mut tx, rows)? {
                // The row lock re-checked `due_at` against the newest version; this is the
                // same rule once more, from the record's own point of view.
                if !loaded.record.is_claimable(now) {
                    continue;
                }
                let before = loaded.record.state;
                loaded.record.claim(holder, lease_for, now)?;
                // A takeover adds LeaseExpired before the Claim.
                let new_entries = if before == State::Sending { 2 } else { 1 };
                update_row(&mut tx, &loaded.record, before)?;
                append_history(&mut tx, &loaded, new_entries, op)?;
                claimed.push(loaded.record);
            }
            tx.commit()?;
            Ok(claimed)
        })
    }

    fn claim_message(
        &self,
        message_id: &str,
        holder: &str,
        lease_for: Duration,
        now: OffsetDateTime,
    ) -> Result<Option<MessageRecord>, StoreError> {
        validate_id("lease holder", holder, MAX_OWNER_LEN)?;
        if message_id.is_empty() || message_id.len() > MAX_MESSAGE_ID_LEN {
            return Err(not_found(message_id));
        }
        let now = micros(now);
        let lease_for = Duration::from_micros(lease_for.as_micros().min(u64::MAX as u128) as u64);
        let op = Uuid::new_v4();
        self.pool.run("claiming a message", |client, attempt| {
            let mut tx = client.begin()?;
            // SKIP LOCKED: a row another transaction is changing right now (another
            // instance claiming it, or recording its receipt) is not claimable; nobody waits.
            let row = tx.query_opt(
                &format!(
                    "SELECT {COLUMNS} FROM messages WHERE message_id = $1 \
                     FOR UPDATE SKIP LOCKED"
                ),
                &[&message_id],
            )?;
            let Some(row) = row else {
                let exists = tx
                    .query_opt(
                        "SELECT 1 FROM messages WHERE message_id = $1",
                        &[&message_id],
                    )?
                    .is_some();
                return if exists {
                    Ok(None)
                } else {
                    Err(not_found(message_id).into())
                };
            };
            let mut loaded = load_with_history(&mut tx, vec![row])?
                .pop()
                .expect("one row, one record");
            if attempt.retrying && loaded.entry_by(op).is_some() {
                // Our first attempt committed the claim; its answer was lost.
                return Ok(Some(loaded.record));
            }
            if !loaded.record.is_claimable_ignoring_due(now) {
                return Ok(None);
            }
            let before = loaded.record.state;
            loaded.record.claim(holder, lease_for, now)?;
            // A takeover adds LeaseExpired before the Claim.
            let new_entries = if before == State::Sending { 2 } else { 1 };
            update_row(&mut tx, &loaded.record, before)?;
            append_history(&mut tx, &loaded, new_entries, op)?;
            tx.commit()?;
            Ok(Some(loaded.record))
        })
    }

    fn record_attempt(
        &self,
        message_id: &str,
        holder: &str,
        outcome: AttemptOutcome,
        now: OffsetDateTime,
    ) -> Result<MessageRecord, StoreError> {
        let now = micros(now);
        let outcome = match outcome {
            AttemptOutcome::Retry { at, error } => AttemptOutcome::Retry {
                at: micros(at),
                error,
            },
            other => other,
        };
        self.modify("recording an attempt", message_id, |loaded, attempt, op| {
            if attempt.retrying && loaded.entry_by(op).is_some() {
                return Ok(Change::keep(loaded.record.clone()));
            }
            let changed = loaded.record.record_attempt(holder, outcome.clone(), now)?;
            Ok(Change {
                write: changed,
                new_entries: usize::from(changed),
                out: loaded.record.clone(),
            })
        })
    }

    fn transition(
        &self,
        message_id: &str,
        expected: State,
        event: Event,
        now: OffsetDateTime,
    ) -> Result<TransitionOutcome, StoreError> {
        let now = micros(now);
        self.modify(
            "changing a message's state",
            message_id,
            |loaded, attempt, op| {
                if attempt.retrying {
                    if let Some(entry) = loaded.entry_by(op) {
                        return Ok(Change::keep(TransitionOutcome::Applied(entry.to)));
                    }
                }
                if event == Event::Resend && loaded.record.payloads_purged_at.is_some() {
                    return Err(StoreError::InvalidInput(format!(
                        "message `{message_id}` cannot be resent: its payloads were purged after \
                     the retention period; submit it again as a new message"
                    )));
                }
                let outcome = loaded.record.cas_transition(expected, event, now)?;
                let applied = matches!(outcome, TransitionOutcome::Applied(_));
                Ok(Change {
                    write: applied,
                    new_entries: usize::from(applied),
                    out: outcome,
                })
            },
        )
    }

    fn mark_delivered(&self, message_id: &str, now: OffsetDateTime) -> Result<bool, StoreError> {
        let now = micros(now);
        let delivered = transition(State::Received, Event::Deliver)
            .expect("the state machine delivers received messages");
        let op = Uuid::new_v4();
        self.pool
            .run("marking a message delivered", |client, attempt| {
                // One statement, so one atomic step: the state moves only if it is still
                // `received`, and its history row is written with it. A `received` message's
                // history is its arrival and download notes (trimmed as they were written),
                // so this entry may pass MAX_HISTORY by one at most; not trimmed here.
                let won = client.query_opt(
                    "WITH moved AS ( \
                     UPDATE messages SET state = $3, updated_at = $2, \
                         settled_at = CASE WHEN $5 THEN coalesce(settled_at, $2) END \
                     WHERE message_id = $1 AND state = 'received' \
                     RETURNING message_id), \
                 next AS ( \
                     SELECT coalesce(max(seq), -1) + 1 AS seq FROM message_history \
                     WHERE message_id = $1) \
                 INSERT INTO message_history \
                     (message_id, seq, at, event, from_state, to_state, note, op) \
                 SELECT moved.message_id, next.seq, $2, 'deliver', 'received', $3, NULL, $4 \
                 FROM moved, next \
                 RETURNING seq",
                    &[
                        &message_id,
                        &now,
                        &delivered.as_str(),
                        &op,
                        &delivered.is_settled(),
                    ],
                )?;
                if won.is_some() {
                    return Ok(true);
                }
                let Some(row) = client.query_opt(
                    "SELECT direction, state, EXISTS (SELECT 1 FROM message_history \
                     WHERE message_id = $1 AND op = $2) \
                 FROM messages WHERE message_id = $1",
                    &[&message_id, &op],
                )?
                else {
                    return Err(not_found(message_id).into());
                };
                if attempt.retrying && row.get::<_, bool>(2) {
                    // Our first attempt committed; its answer was lost with the connection.
                    return Ok(true);
                }
                if parse_direction(row.get(0))? != Direction::Inbound {
                    return Err(StoreError::InvalidInput(format!(
                        "message `{message_id}` is outbound: only inbound messages are delivered \
                     to a backend"
                    ))
                    .into());
                }
                let state = parse_state(row.get(1))?;
                match transition(state, Event::Deliver) {
                    Ok(_) => Ok(false),
                    Err(source) => Err(StoreError::InvalidTransition {
                        message_id: message_id.to_owned(),
                        source,
                    }
                    .into()),
                }
            })
    }

    fn get(&self, message_id: &str) -> Result<Option<MessageRecord>, StoreError> {
        if message_id.is_empty() || message_id.len() > MAX_MESSAGE_ID_LEN {
            return Ok(None);
        }
        self.pool.run("reading a message", |client, _| {
            let mut tx = client.begin()?;
            let row = tx.query_opt(
                &format!("SELECT {COLUMNS} FROM messages WHERE message_id = $1"),
                &[&message_id],
            )?;
            let Some(row) = row else { return Ok(None) };
            // One snapshot for the row and its history.
            let mut loaded = load_with_history(&mut tx, vec![row])?;
            tx.commit()?;
            Ok(loaded.pop().map(|l| l.record))
        })
    }

    fn list(&self, filter: &ListFilter) -> Result<Page, StoreError> {
        filter.validate()?;
        let limit = filter.page_size();
        let query = ListQuery::new(filter, limit as i64 + 1);
        self.pool.run("listing messages", |client, _| {
            let mut tx = client.begin()?;
            let mut rows = tx.query_once(&query.sql, &query.params())?;
            let more = rows.len() > limit;
            rows.truncate(limit);
            let records: Vec<MessageRecord> = load_with_history(&mut tx, rows)?
                .into_iter()
                .map(|l| l.record)
                .collect();
            tx.commit()?;
            let next = match (more, records.last()) {
                (true, Some(last)) => Some(ListCursor {
                    created_at: last.created_at,
                    message_id: last.meta.message_id.clone(),
                }),
                _ => None,
            };
            Ok(Page { records, next })
        })
    }

    fn record_download(
        &self,
        message_id: &str,
        index: usize,
        by: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let now = micros(now);
        self.modify("recording a download", message_id, |loaded, attempt, op| {
            if attempt.retrying && loaded.entry_by(op).is_some() {
                return Ok(Change::keep(()));
            }
            loaded.record.record_download(index, by, now)?;
            Ok(Change {
                write: true,
                new_entries: 1,
                out: (),
            })
        })
    }

    fn retry_now(
        &self,
        message_id: &str,
        by: &str,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let now = micros(now);
        self.modify(
            "making a message due now",
            message_id,
            |loaded, attempt, op| {
                if attempt.retrying && loaded.entry_by(op).is_some() {
                    return Ok(Change::keep(true));
                }
                let changed = loaded.record.retry_now(by, now)?;
                Ok(Change {
                    write: changed,
                    new_entries: usize::from(changed),
                    out: changed,
                })
            },
        )
    }

    fn retry_waiting(
        &self,
        partner: Option<&str>,
        owner: Option<&str>,
        by: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<String>, StoreError> {
        let now = micros(now);
        // The waiting messages are in the partial index of outbound work (`due_at IS NOT
        // NULL`); each is then changed on its own, as `retry_now` does.
        let ids: Vec<String> =
            self.pool
                .run("finding messages waiting for a retry", |client, _| {
                    Ok(client
                        .query(
                            "SELECT message_id FROM messages \
                     WHERE due_at IS NOT NULL AND due_at > $1 AND state = 'waiting_for_retry' \
                       AND ($2::text IS NULL OR partner = $2) \
                       AND ($3::text IS NULL OR owner = $3) \
                     ORDER BY due_at, message_id",
                            &[&now, &partner, &owner],
                        )?
                        .iter()
                        .map(|r| r.get(0))
                        .collect())
                })?;
        let mut made_due = Vec::new();
        for id in ids {
            match self.retry_now(&id, by, now) {
                Ok(true) => made_due.push(id),
                // Claimed, settled or purged since: not waiting any more.
                Ok(false) | Err(StoreError::StateConflict { .. } | StoreError::NotFound { .. }) => {
                }
                Err(e) => return Err(e),
            }
        }
        Ok(made_due)
    }

    fn queue_depth(&self) -> Result<u64, StoreError> {
        // `due_at` is set exactly while an outbound message is in progress: the partial
        // index of outbound work answers the count.
        self.pool.run("counting the send queue", |client, _| {
            let n: i64 = client
                .query_one(
                    "SELECT count(*) FROM messages WHERE due_at IS NOT NULL",
                    &[],
                )?
                .get(0);
            Ok(n.max(0) as u64)
        })
    }

    fn purge_test(&self, created_before: OffsetDateTime) -> Result<usize, StoreError> {
        self.delete_in_batches(
            "purging test messages",
            "is_test AND created_at < $1 \
             AND (direction = 'inbound' OR settled_at IS NOT NULL) ORDER BY created_at",
            micros(created_before),
        )
    }

    fn purge_payloads(
        &self,
        settled_before: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<usize, StoreError> {
        let (settled_before, now) = (micros(settled_before), micros(now));
        let mut purged = 0;
        loop {
            // One batch per transaction: the chunks go and the record says so atomically.
            // Locked rows (being changed right now) are left for the next run.
            let n = self.pool.run("purging payloads", |client, _| {
                Ok(client.execute(
                    format!(
                        "WITH batch AS ( \
                         SELECT message_id, payloads FROM messages \
                         WHERE settled_at < $1 AND payloads_purged_at IS NULL AND has_payloads \
                         ORDER BY settled_at LIMIT $3 FOR UPDATE SKIP LOCKED), \
                     gone AS ( \
                         DELETE FROM payloads WHERE payload_id IN ( \
                             SELECT p -> 'stored' ->> 'id' \
                             FROM batch, jsonb_array_elements(batch.payloads) AS p)) \
                     UPDATE messages m SET payloads_purged_at = $2, updated_at = $2, \
                         payloads = {WITHOUT_INLINE} \
                     FROM batch WHERE m.message_id = batch.message_id"
                    )
                    .as_str(),
                    &[&settled_before, &now, &PURGE_BATCH],
                )?)
            })?;
            if n == 0 {
                return Ok(purged);
            }
            purged += n as usize;
        }
    }

    fn purge_payloads_of(&self, message_id: &str, now: OffsetDateTime) -> Result<bool, StoreError> {
        let now = micros(now);
        let (found, purged) = self.pool.run("purging a message's payloads", |client, _| {
            // One statement: the chunks go and the record says so atomically; a row being
            // changed right now is waited for (its state decides).
            let purged = client.execute(
                format!(
                    "WITH one AS ( \
                     SELECT message_id, payloads FROM messages \
                     WHERE message_id = $1 AND settled_at IS NOT NULL \
                       AND payloads_purged_at IS NULL AND has_payloads \
                     FOR UPDATE), \
                 gone AS ( \
                     DELETE FROM payloads WHERE payload_id IN ( \
                         SELECT p -> 'stored' ->> 'id' \
                         FROM one, jsonb_array_elements(one.payloads) AS p)) \
                 UPDATE messages m SET payloads_purged_at = $2, updated_at = $2, \
                     payloads = {WITHOUT_INLINE} \
                 FROM one WHERE m.message_id = one.message_id"
                )
                .as_str(),
                &[&message_id, &now],
            )?;
            let found = purged > 0
                || client
                    .query_opt(
                        "SELECT 1 FROM messages WHERE message_id = $1",
                        &[&message_id],
                    )?
                    .is_some();
            Ok((found, purged > 0))
        })?;
        if !found {
            return Err(StoreError::NotFound {
                message_id: message_id.to_owned(),
            });
        }
        Ok(purged)
    }

    fn purge_metadata(&self, settled_before: OffsetDateTime) -> Result<usize, StoreError> {
        self.delete_in_batches(
            "purging message records",
            "settled_at < $1 ORDER BY settled_at",
            micros(settled_before),
        )
    }

    fn note_signal(
        &self,
        message_id: &str,
        now: OffsetDateTime,
        forget_before: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        validate_id("MessageId", message_id, MAX_MESSAGE_ID_LEN)?;
        let (now, forget_before) = (micros(now), micros(forget_before));
        self.pool.run("noting a signal's MessageId", |client, _| {
            client.execute(
                "DELETE FROM seen_signals WHERE seen_at < $1",
                &[&forget_before],
            )?;
            // The primary key decides between two instances noting the same id at once.
            let inserted = client.execute(
                "INSERT INTO seen_signals (message_id, seen_at) VALUES ($1, $2) \
                 ON CONFLICT (message_id) DO NOTHING",
                &[&message_id, &now],
            )?;
            Ok(inserted == 1)
        })
    }

    fn put_console_user(&self, user: &crate::ConsoleUser) -> Result<(), StoreError> {
        console::put_user(&self.pool, user)
    }

    fn console_user(&self, name: &str) -> Result<Option<crate::ConsoleUser>, StoreError> {
        console::user(&self.pool, name)
    }

    fn list_console_users(&self) -> Result<Vec<crate::ConsoleUser>, StoreError> {
        console::list_users(&self.pool)
    }

    fn remove_console_user(&self, name: &str) -> Result<bool, StoreError> {
        console::remove_user(&self.pool, name)
    }

    fn put_console_session(&self, session: &crate::ConsoleSession) -> Result<(), StoreError> {
        console::put_session(&self.pool, session)
    }

    fn console_session(
        &self,
        id_sha256: &str,
    ) -> Result<Option<crate::ConsoleSession>, StoreError> {
        console::session(&self.pool, id_sha256)
    }

    fn remove_console_session(&self, id_sha256: &str) -> Result<bool, StoreError> {
        console::remove_session(&self.pool, id_sha256)
    }

    fn purge_console_sessions(
        &self,
        idle_before: OffsetDateTime,
        created_before: OffsetDateTime,
    ) -> Result<usize, StoreError> {
        console::purge_sessions(&self.pool, idle_before, created_before)
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
        validate_id("lease holder", holder, MAX_OWNER_LEN)?;
        let now = micros(now);
        let until = micros(now + lease_for);
        self.pool.run("claiming a webhook event", |client, _| {
            let mut tx = client.transaction()?;
            // The message's oldest pending event: only it may be claimed (order per message).
            let Some(row) = tx.query_opt(
                "SELECT event_id, message_id, owner, kind, error, at, holder, lease_until, seq \
                 FROM webhook_outbox WHERE message_id = $1 ORDER BY seq LIMIT 1 FOR UPDATE",
                &[&message_id],
            )?
            else {
                return Ok(OutboxClaim::Absent);
            };
            let event = outbox_from_row(&row);
            let held_by: Option<String> = row.get(6);
            let lease_until: Option<OffsetDateTime> = row.get(7);
            if held_by.as_deref() == Some(holder) && lease_until == Some(until) {
                // Our own claim, committed by an attempt whose answer was lost.
                return Ok(OutboxClaim::Claimed(event));
            }
            if event.kind != kind || (held_by.is_some() && lease_until.is_none_or(|t| t > now)) {
                return Ok(OutboxClaim::Busy);
            }
            tx.execute(
                "UPDATE webhook_outbox SET holder = $2, lease_until = $3 WHERE seq = $1",
                &[&row.get::<_, i64>(8), &holder, &until],
            )?;
            tx.commit()?;
            Ok(OutboxClaim::Claimed(event))
        })
    }

    fn claim_outbox_due(
        &self,
        holder: &str,
        lease_for: Duration,
        unclaimed_for: Duration,
        limit: usize,
        now: OffsetDateTime,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        validate_id("lease holder", holder, MAX_OWNER_LEN)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = micros(now);
        let until = micros(now + lease_for);
        let unclaimed_before = micros(now - unclaimed_for);
        let limit = limit.min(MAX_PAGE_SIZE) as i64;
        self.pool.run("claiming due webhook events", |client, _| {
            let mut tx = client.transaction()?;
            // SKIP LOCKED: an event another instance is claiming right now is not ours.
            let rows = tx.query(
                "SELECT o.event_id, o.message_id, o.owner, o.kind, o.error, o.at, o.seq \
                 FROM webhook_outbox o \
                 WHERE ((o.holder IS NULL AND o.at <= $2) \
                        OR (o.holder IS NOT NULL AND o.lease_until <= $1)) \
                   AND NOT EXISTS (SELECT 1 FROM webhook_outbox p \
                        WHERE p.message_id = o.message_id AND p.seq < o.seq) \
                 ORDER BY o.seq LIMIT $3 FOR UPDATE OF o SKIP LOCKED",
                &[&now, &unclaimed_before, &limit],
            )?;
            let seqs: Vec<i64> = rows.iter().map(|r| r.get(6)).collect();
            tx.execute(
                "UPDATE webhook_outbox SET holder = $2, lease_until = $3 WHERE seq = ANY($1)",
                &[&seqs, &holder, &until],
            )?;
            tx.commit()?;
            Ok(rows.iter().map(outbox_from_row).collect())
        })
    }

    fn extend_outbox_lease(
        &self,
        event: &OutboxEvent,
        holder: &str,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let Ok(event_id) = Uuid::parse_str(&event.event_id) else {
            return Ok(false);
        };
        let until = micros(until);
        self.pool
            .run("extending a webhook event's lease", |client, _| {
                let n = client.execute(
                "UPDATE webhook_outbox SET lease_until = $3 WHERE event_id = $1 AND holder = $2",
                &[&event_id, &holder, &until],
            )?;
                Ok(n == 1)
            })
    }

    fn complete_outbox_events(&self, events: &[OutboxEvent]) -> Result<(), StoreError> {
        // An id that is no UUID names no stored event.
        let ids: Vec<Uuid> = events
            .iter()
            .filter_map(|e| Uuid::parse_str(&e.event_id).ok())
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        self.pool
            .run("removing finished webhook events", |client, _| {
                client.execute(
                    "DELETE FROM webhook_outbox WHERE event_id = ANY($1)",
                    &[&ids],
                )?;
                Ok(())
            })
    }

    fn set_outbox_owners(&self, owners: Option<std::collections::HashSet<String>>) {
        self.outbox_owners.set(owners);
    }

    fn probe_writable(&self, instance: &str, now: OffsetDateTime) -> Result<(), StoreError> {
        let now = micros(now);
        self.pool
            .run("probing the store with a write", |client, _| {
                // A commit: with synchronous replication it returns once the standby has it.
                client.execute(
                    "INSERT INTO instance_probes (instance, at) VALUES ($1, $2) \
                 ON CONFLICT (instance) DO UPDATE SET at = excluded.at",
                    &[&instance, &now],
                )?;
                Ok(())
            })
    }

    fn outbox_depth(&self) -> Result<u64, StoreError> {
        self.pool.run("counting webhook events", |client, _| {
            let row = client.query_one("SELECT count(*) FROM webhook_outbox", &[])?;
            Ok(row.get::<_, i64>(0).max(0) as u64)
        })
    }

    // --- Previews in the shared store (issue 18). ---

    fn put_preview_record(
        &self,
        id: &str,
        data: &[u8],
        keep_until: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let keep_until = micros(keep_until);
        self.pool.run("storing a preview record", |client, _| {
            client.execute(
                "INSERT INTO preview_records (id, data, keep_until) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO UPDATE SET data = excluded.data, keep_until = excluded.keep_until",
                &[&id, &data, &keep_until],
            )?;
            Ok(())
        })
    }

    fn preview_record(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.pool.run("reading a preview record", |client, _| {
            let row = client.query_opt("SELECT data FROM preview_records WHERE id = $1", &[&id])?;
            Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
        })
    }

    fn swap_preview_record(
        &self,
        id: &str,
        expected: &[u8],
        data: &[u8],
        keep_until: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let keep_until = micros(keep_until);
        self.pool.run("changing a preview record", |client, _| {
            let n = client.execute(
                "UPDATE preview_records SET data = $3, keep_until = $4 WHERE id = $1 AND data = $2",
                &[&id, &expected, &data, &keep_until],
            )?;
            Ok(n == 1)
        })
    }

    fn remove_preview_records(&self, prefix: &str) -> Result<usize, StoreError> {
        self.pool.run("removing preview records", |client, _| {
            // starts_with, not LIKE: the prefix may hold `%` or `_`.
            let n = client.execute(
                "DELETE FROM preview_records WHERE starts_with(id, $1)",
                &[&prefix],
            )?;
            Ok(n as usize)
        })
    }

    fn purge_preview_records(&self, now: OffsetDateTime) -> Result<usize, StoreError> {
        let now = micros(now);
        self.pool.run("purging preview records", |client, _| {
            let n = client.execute(
                "DELETE FROM preview_records WHERE keep_until <= $1",
                &[&now],
            )?;
            Ok(n as usize)
        })
    }
}

/// Records per purge transaction.
const PURGE_BATCH: i64 = 256;

/// The `messages` columns a record is built from, in [`record_from_row`]'s order.
const COLUMNS: &str = "message_id, direction, state, owner, from_party, to_party, service, \
    action, conversation_id, ref_to_message_id, pmode_id, payloads::text, attempts, \
    next_attempt_at, lease_holder, lease_expires_at, receipt, last_error, duplicates, \
    created_at, updated_at, settled_at, payloads_purged_at, properties::text";

/// Picks and locks the outbound messages due at `$1` that a claim takes, at most `$2`,
/// oldest due first: their ids only (see [`Store::claim_due`] of [`PgStore`]).
const PICK_DUE: &str = "SELECT message_id FROM messages \
    WHERE due_at <= $1 AND direction = 'outbound' \
    ORDER BY due_at, message_id LIMIT $2 FOR UPDATE SKIP LOCKED";

/// [`COLUMNS`] of the `messages` table aliased `m`, for queries that join it.
const M_COLUMNS: &str = "m.message_id, m.direction, m.state, m.owner, m.from_party, \
    m.to_party, m.service, m.action, m.conversation_id, m.ref_to_message_id, m.pmode_id, \
    m.payloads::text, m.attempts, m.next_attempt_at, m.lease_holder, m.lease_expires_at, \
    m.receipt, m.last_error, m.duplicates, m.created_at, m.updated_at, m.settled_at, \
    m.payloads_purged_at, m.properties::text";

/// A listing's SQL and its parameters, built from the filter: only the conditions the
/// filter sets are in the statement, each one a condition an index serves, so the planner
/// sees exactly what is asked. A property search walks `message_properties_search` and
/// joins the messages to it; other searches walk the messages' index of their field.
struct ListQuery {
    sql: String,
    params: Vec<Box<dyn postgres::types::ToSql + Sync + Send>>,
}

impl ListQuery {
    fn new(filter: &ListFilter, fetch: i64) -> ListQuery {
        let mut q = ListQuery {
            sql: String::new(),
            params: Vec::new(),
        };
        let mut conditions: Vec<String> = Vec::new();
        // The table whose (created_at, message_id) orders the page: the property rows when
        // a property is searched (the same values as the message's), else the messages.
        let mut order = "m";
        let mut from = "messages m".to_owned();
        for (i, (name, value)) in filter.properties.iter().enumerate() {
            let n = q.param(name.clone());
            let v = q.param(value.clone());
            let key = format!("md5(length({n}::text)::text || ':' || {n}::text || {v}::text)");
            if i == 0 {
                from = format!(
                    "message_properties p JOIN messages m ON m.message_id = p.message_id \
                     AND p.search_key = {key} AND p.name = {n} AND p.value = {v}"
                );
                order = "p";
            } else {
                conditions.push(format!(
                    "EXISTS (SELECT 1 FROM message_properties p{i} WHERE p{i}.message_id = \
                     m.message_id AND p{i}.search_key = {key} AND p{i}.name = {n} \
                     AND p{i}.value = {v})"
                ));
            }
        }
        if let Some(d) = filter.direction {
            let p = q.param(d.as_str().to_owned());
            conditions.push(format!("m.direction = {p}"));
        }
        if !filter.states.is_empty() {
            let states: Vec<String> = filter
                .states
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect();
            let p = q.param(states);
            conditions.push(format!("m.state = ANY({p})"));
        }
        if let Some(owner) = &filter.owner {
            let p = q.param(owner.clone());
            conditions.push(format!("m.owner = {p}"));
        }
        if let Some(partner) = &filter.partner {
            let p = q.param(partner.clone());
            conditions.push(format!("m.partner = {p}"));
        }
        if let Some(c) = &filter.conversation_id {
            let p = q.param(c.clone());
            conditions.push(format!(
                "md5(m.conversation_id) = md5({p}::text) AND m.conversation_id = {p}"
            ));
        }
        if let Some(s) = &filter.service {
            let p = q.param(s.clone());
            conditions.push(format!("m.service = {p}"));
        }
        if let Some(a) = &filter.action {
            let p = q.param(a.clone());
            conditions.push(format!("m.action = {p}"));
        }
        if let Some(prefix) = &filter.id_prefix {
            // message_id is COLLATE "C": the planner turns a LIKE prefix into a range of
            // the primary key.
            let escaped = prefix
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            let p = q.param(format!("{escaped}%"));
            conditions.push(format!("m.message_id LIKE {p}"));
        }
        if filter.exclude_test {
            conditions.push("NOT m.is_test".to_owned());
        }
        if let Some(t) = filter.created_from {
            let p = q.param(micros(t));
            conditions.push(format!("{order}.created_at >= {p}"));
        }
        if let Some(t) = filter.created_until {
            let p = q.param(micros(t));
            conditions.push(format!("{order}.created_at < {p}"));
        }
        if let Some(c) = &filter.after {
            let at = q.param(micros(c.created_at));
            let id = q.param(c.message_id.clone());
            conditions.push(format!(
                "({order}.created_at, {order}.message_id) < ({at}, {id}::text)"
            ));
        }
        let limit = q.param(fetch);
        let r#where = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        q.sql = format!(
            "SELECT {M_COLUMNS} FROM {from}{where} \
             ORDER BY {order}.created_at DESC, {order}.message_id DESC LIMIT {limit}",
            r#where = r#where
        );
        q
    }

    /// Adds a parameter; returns its placeholder (`$n`).
    fn param<T: postgres::types::ToSql + Sync + Send + 'static>(&mut self, value: T) -> String {
        self.params.push(Box::new(value));
        format!("${}", self.params.len())
    }

    fn params(&self) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn postgres::types::ToSql + Sync))
            .collect()
    }
}

/// Builds records from `messages` rows and attaches their history (one query for all).
fn load_with_history(tx: &mut Tx<'_>, rows: Vec<Row>) -> Result<Vec<Loaded>, Fail> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let mut histories: HashMap<String, (Vec<HistoryEntry>, Vec<Uuid>, i64)> = HashMap::new();
    for h in tx.query(
        "SELECT message_id, seq, at, event, from_state, to_state, note, op \
         FROM message_history WHERE message_id = ANY($1) ORDER BY message_id, seq",
        &[&ids],
    )? {
        let entry = HistoryEntry {
            at: h.get(2),
            event: parse_event(h.get(3))?,
            from: parse_state(h.get(4))?,
            to: parse_state(h.get(5))?,
            note: h.get(6),
        };
        let slot = histories.entry(h.get(0)).or_default();
        slot.0.push(entry);
        slot.1.push(h.get(7));
        slot.2 = h.get(1);
    }
    rows.iter()
        .map(|row| {
            let mut record = record_from_row(row)?;
            let (history, ops, last_seq) =
                histories
                    .remove(record.id())
                    .unwrap_or((Vec::new(), Vec::new(), -1));
            record.history = history;
            Ok(Loaded {
                record,
                last_seq,
                ops,
            })
        })
        .collect()
}

fn record_from_row(row: &Row) -> Result<MessageRecord, StoreError> {
    let count = |i: usize| -> Result<u32, StoreError> {
        u32::try_from(row.get::<_, i64>(i))
            .map_err(|_| StoreError::Corrupt(format!("column {i} holds a negative count")))
    };
    let lease = match (
        row.get::<_, Option<String>>(14),
        row.get::<_, Option<OffsetDateTime>>(15),
    ) {
        (Some(holder), Some(expires_at)) => Some(Lease { holder, expires_at }),
        _ => None,
    };
    Ok(MessageRecord {
        meta: MessageMeta {
            message_id: row.get(0),
            owner: row.get(3),
            from_party: row.get(4),
            to_party: row.get(5),
            service: row.get(6),
            action: row.get(7),
            conversation_id: row.get(8),
            ref_to_message_id: row.get(9),
            pmode_id: row.get(10),
            payloads: parse_json(row.get(11))?,
            properties: parse_json(row.get(23))?,
        },
        direction: parse_direction(row.get(1))?,
        state: parse_state(row.get(2))?,
        attempts: count(12)?,
        next_attempt_at: row.get(13),
        lease,
        receipt: row.get(16),
        last_error: row.get(17),
        duplicates: count(18)?,
        created_at: row.get(19),
        updated_at: row.get(20),
        settled_at: row.get(21),
        payloads_purged_at: row.get(22),
        history: Vec::new(),
    })
}

/// Inserts a new record with its history (an inbound message's arrival), and its
/// properties into the search table. False if the id is taken.
fn insert_row(tx: &mut Tx<'_>, r: &MessageRecord, op: Uuid) -> Result<bool, Fail> {
    if !insert_message_row(tx, r, op)? {
        return Ok(false);
    }
    for (seq, h) in r.history.iter().enumerate() {
        tx.execute(
            "INSERT INTO message_history \
                 (message_id, seq, at, event, from_state, to_state, note, op) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &r.id(),
                &(seq as i64),
                &h.at,
                &h.event.as_str(),
                &h.from.as_str(),
                &h.to.as_str(),
                &h.note,
                &op,
            ],
        )?;
    }
    if !r.meta.properties.is_empty() {
        let properties = to_json(&r.meta.properties)?;
        tx.execute(
            "INSERT INTO message_properties (message_id, name, value, created_at) \
             SELECT DISTINCT $1, p ->> 'name', p ->> 'value', $2::timestamptz \
             FROM jsonb_array_elements($3::text::jsonb) AS p",
            &[&r.id(), &r.created_at, &properties],
        )?;
    }
    Ok(true)
}

/// Inserts the `messages` row of a new record. False if the id is taken.
fn insert_message_row(tx: &mut Tx<'_>, r: &MessageRecord, op: Uuid) -> Result<bool, Fail> {
    let m = &r.meta;
    let payloads = to_json(&m.payloads)?;
    let properties = to_json(&m.properties)?;
    let n = tx.execute(
        "INSERT INTO messages (message_id, direction, state, owner, from_party, to_party, \
             service, action, conversation_id, ref_to_message_id, pmode_id, payloads, \
             has_payloads, attempts, next_attempt_at, receipt, created_at, updated_at, \
             due_at, created_op, properties) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::text::jsonb, $13, $14, \
             $15, $16, $17, $18, $19, $20, $21::text::jsonb) \
         ON CONFLICT (message_id) DO NOTHING",
        &[
            &m.message_id,
            &r.direction.as_str(),
            &r.state.as_str(),
            &m.owner,
            &m.from_party,
            &m.to_party,
            &m.service,
            &m.action,
            &m.conversation_id,
            &m.ref_to_message_id,
            &m.pmode_id,
            &payloads,
            &!m.payloads.is_empty(),
            &i64::from(r.attempts),
            &r.next_attempt_at,
            &r.receipt,
            &r.created_at,
            &r.updated_at,
            &r.due_at(),
            &op,
            &properties,
        ],
    )?;
    Ok(n == 1)
}

/// Writes the changeable columns of `r`, compare-and-set on the state it was read in.
fn update_row(tx: &mut Tx<'_>, r: &MessageRecord, read_state: State) -> Result<(), Fail> {
    let n = tx.execute(
        "UPDATE messages SET state = $2, attempts = $3, next_attempt_at = $4, \
             lease_holder = $5, lease_expires_at = $6, receipt = $7, last_error = $8, \
             duplicates = $9, updated_at = $10, settled_at = $11, payloads_purged_at = $12, \
             due_at = $13 \
         WHERE message_id = $1 AND state = $14",
        &[
            &r.meta.message_id,
            &r.state.as_str(),
            &i64::from(r.attempts),
            &r.next_attempt_at,
            &r.lease.as_ref().map(|l| l.holder.as_str()),
            &r.lease.as_ref().map(|l| l.expires_at),
            &r.receipt,
            &r.last_error,
            &i64::from(r.duplicates),
            &r.updated_at,
            &r.settled_at,
            &r.payloads_purged_at,
            &r.due_at(),
            &read_state.as_str(),
        ],
    )?;
    if n != 1 {
        // Impossible while we hold the row lock; refuse rather than write blindly.
        return Err(StoreError::Database(format!(
            "message `{}` changed under a row lock (expected state `{read_state}`); try again",
            r.id()
        ))
        .into());
    }
    Ok(())
}

/// Appends the last `count` entries of the record's history, then drops the oldest rows
/// after the first one beyond [`MAX_HISTORY`] — exactly what [`MessageRecord::apply`] did to
/// the in-memory history.
fn append_history(tx: &mut Tx<'_>, loaded: &Loaded, count: usize, op: Uuid) -> Result<(), Fail> {
    let history = &loaded.record.history;
    let id = loaded.record.id();
    for (i, h) in history[history.len() - count..].iter().enumerate() {
        tx.execute(
            "INSERT INTO message_history \
                 (message_id, seq, at, event, from_state, to_state, note, op) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &id,
                &(loaded.last_seq + 1 + i as i64),
                &h.at,
                &h.event.as_str(),
                &h.from.as_str(),
                &h.to.as_str(),
                &h.note,
                &op,
            ],
        )?;
    }
    let rows = loaded.ops.len() + count;
    if rows > MAX_HISTORY {
        tx.execute(
            "DELETE FROM message_history WHERE message_id = $1 AND seq IN ( \
                 SELECT seq FROM message_history WHERE message_id = $1 \
                 ORDER BY seq OFFSET 1 LIMIT $2)",
            &[&id, &((rows - MAX_HISTORY) as i64)],
        )?;
    }
    Ok(())
}

/// Writes `event` (if any) to the webhook outbox, in the caller's transaction.
fn insert_outbox(tx: &mut Tx<'_>, event: Option<OutboxEvent>) -> Result<(), Fail> {
    let Some(e) = event else {
        return Ok(());
    };
    let event_id = Uuid::parse_str(&e.event_id)
        .map_err(|err| StoreError::Database(format!("an outbox event id: {err}")))?;
    tx.execute(
        "INSERT INTO webhook_outbox (event_id, message_id, owner, kind, error, at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &event_id,
            &e.message_id,
            &e.owner,
            &e.kind,
            &e.error,
            &micros(e.at),
        ],
    )?;
    Ok(())
}

/// The outbox event of a `webhook_outbox` row (columns event_id, message_id, owner, kind,
/// error, at).
fn outbox_from_row(row: &Row) -> OutboxEvent {
    OutboxEvent {
        event_id: row.get::<_, Uuid>(0).to_string(),
        message_id: row.get(1),
        owner: row.get(2),
        kind: row.get(3),
        error: row.get(4),
        at: row.get(5),
    }
}

/// Truncates to whole microseconds, PostgreSQL's resolution.
fn micros(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(t.nanosecond() / 1000 * 1000)
        .expect("a truncated nanosecond is in range")
}

fn parse_state(name: &str) -> Result<State, StoreError> {
    State::parse(name).ok_or_else(|| {
        StoreError::Corrupt(format!("unknown message state `{name}` in the database"))
    })
}

fn parse_direction(name: &str) -> Result<Direction, StoreError> {
    [Direction::Inbound, Direction::Outbound]
        .into_iter()
        .find(|d| d.as_str() == name)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown direction `{name}` in the database")))
}

fn parse_event(name: &str) -> Result<Event, StoreError> {
    Event::ALL
        .into_iter()
        .find(|e| e.as_str() == name)
        .ok_or_else(|| {
            StoreError::Corrupt(format!("unknown history event `{name}` in the database"))
        })
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("cannot read stored payload list: {e}")))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Corrupt(format!("cannot serialise payload list: {e}")))
}

fn not_found(message_id: &str) -> StoreError {
    StoreError::NotFound {
        message_id: message_id.to_owned(),
    }
}

/// A pool failure outside [`Pool::run`] as a store error.
pub(crate) fn fail_to_store(what: &str, fail: Fail) -> StoreError {
    match fail {
        Fail::Store(e) => e,
        Fail::Pg(e) => pool::database_error(what, &e, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_truncated_to_microseconds() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_900_000_000_123_456_789).unwrap();
        assert_eq!(micros(t).nanosecond(), 123_456_000);
        assert_eq!(micros(micros(t)), micros(t));
    }

    #[test]
    fn names_parse_back() {
        for s in State::ALL {
            assert_eq!(parse_state(s.as_str()).unwrap(), s);
        }
        assert!(parse_state("limbo").is_err());
        assert_eq!(parse_direction("inbound").unwrap(), Direction::Inbound);
        assert_eq!(parse_event("lease_expired").unwrap(), Event::LeaseExpired);
        assert!(parse_event("explode").is_err());
    }
}
