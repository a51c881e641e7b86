//! The audit trail in PostgreSQL (`audit_log`, migration 4), shared by every instance.
//!
//! Numbers come from a sequence, which hands them out in the order transactions *ask*, not
//! the order they commit: a reader paging by number could read past a number whose
//! transaction commits later. So an append first takes a transaction-scoped advisory lock:
//! appends commit one at a time, in number order. Audit appends are rare (administrative
//! acts), so the serialisation costs nothing that matters.

use super::micros;
use super::pool::{Fail, Pool};
use crate::audit::{AuditEntry, AuditFilter, AuditOutcome, AuditPage, NewAuditEntry};
use crate::StoreError;
use postgres::Row;
use time::OffsetDateTime;
use uuid::Uuid;

/// Advisory lock key of audit appends (an arbitrary constant: "VARTI_AU").
const APPEND_LOCK: i64 = 0x5641_5254_495f_4155;

const COLUMNS: &str = "seq, at, instance, actor, action, subject, outcome, details::text";

pub(super) fn append(
    pool: &Pool,
    entry: NewAuditEntry,
    now: OffsetDateTime,
) -> Result<AuditEntry, StoreError> {
    entry.validate()?;
    let now = micros(now);
    let details = serde_json::to_string(&entry.details)
        .map_err(|e| StoreError::InvalidInput(format!("audit details: {e}")))?;
    let op = Uuid::new_v4();
    pool.run("appending to the audit trail", |client, attempt| {
        let mut tx = client.transaction()?;
        if attempt.retrying {
            // The first attempt may have committed before its connection broke.
            if let Some(row) = tx.query_opt(
                &format!("SELECT {COLUMNS} FROM audit_log WHERE op = $1"),
                &[&op],
            )? {
                return entry_of(&row);
            }
        }
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&APPEND_LOCK])?;
        let row = tx.query_one(
            &format!(
                "INSERT INTO audit_log (at, instance, actor, action, subject, outcome, details, op) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8) RETURNING {COLUMNS}"
            ),
            &[
                &now,
                &entry.instance,
                &entry.actor,
                &entry.action,
                &entry.subject,
                &entry.outcome.as_str(),
                &details,
                &op,
            ],
        )?;
        tx.commit()?;
        entry_of(&row)
    })
}

pub(super) fn list(pool: &Pool, filter: &AuditFilter) -> Result<AuditPage, StoreError> {
    let limit = filter.page_size();
    let after = filter.after.map(|a| a.min(i64::MAX as u64) as i64);
    let since = filter.since.map(micros);
    let fetch = limit as i64 + 1;
    pool.run("reading the audit trail", |client, _| {
        let rows = client.query(
            &format!(
                "SELECT {COLUMNS} FROM audit_log \
                 WHERE ($1::bigint IS NULL OR seq > $1) \
                   AND ($2::timestamptz IS NULL OR at >= $2) \
                 ORDER BY seq LIMIT $3"
            ),
            &[&after, &since, &fetch],
        )?;
        let more = rows.len() > limit;
        let entries = rows
            .iter()
            .take(limit)
            .map(entry_of)
            .collect::<Result<Vec<_>, _>>()?;
        let next = if more {
            entries.last().map(|e| e.seq)
        } else {
            None
        };
        Ok(AuditPage { entries, next })
    })
}

fn entry_of(row: &Row) -> Result<AuditEntry, Fail> {
    let seq: i64 = row.get(0);
    let outcome: &str = row.get(6);
    let details: &str = row.get(7);
    Ok(AuditEntry {
        seq: seq as u64,
        at: row.get(1),
        instance: row.get(2),
        actor: row.get(3),
        action: row.get(4),
        subject: row.get(5),
        outcome: AuditOutcome::parse(outcome).ok_or_else(|| {
            StoreError::Corrupt(format!("audit entry {seq}: unknown outcome `{outcome}`"))
        })?,
        details: serde_json::from_str(details)
            .map_err(|e| StoreError::Corrupt(format!("audit entry {seq}: {e}")))?,
    })
}
