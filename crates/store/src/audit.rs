//! The audit trail: every administrative act, appended once and never rewritten.
//!
//! An entry says who ([`AuditEntry::actor`]) did what ([`AuditEntry::action`]) to what
//! ([`AuditEntry::subject`]), on which instance, when (the runtime's clock), how it ended
//! ([`AuditOutcome`]) and the particulars ([`AuditEntry::details`], JSON: file hashes,
//! errors, counts). Entries are numbered by the store ([`AuditEntry::seq`]); the number
//! orders them and is the paging cursor. Both stores keep the trail beside the messages, so
//! the two instances of a pair on PostgreSQL share one trail.
//!
//! There is no update or delete path, in the trait or in the stores: sled keeps the entries
//! in a tree only [`Store::append_audit`](crate::Store::append_audit) writes to, and the
//! PostgreSQL table refuses `UPDATE`, `DELETE` and `TRUNCATE` with a trigger. No retention
//! applies: the trail is small (administrative acts, not messages) and kept for good.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::record::validate_id;
use crate::StoreError;

/// Longest actor, instance or action name, in bytes.
const MAX_NAME_LEN: usize = 256;
/// Longest subject, in bytes.
const MAX_SUBJECT_LEN: usize = 4096;
/// Largest details document (serialised JSON), in bytes.
pub const MAX_AUDIT_DETAILS_BYTES: usize = 256 * 1024;
/// Most entries one [`Store::list_audit`](crate::Store::list_audit) page returns.
pub const MAX_AUDIT_PAGE: usize = 1000;

/// How an audited act ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditOutcome {
    /// It was done.
    Ok,
    /// It was refused before anything changed (invalid input, not allowed); the details say
    /// why.
    Refused,
    /// It was tried and failed; the details say how.
    Failed,
}

impl AuditOutcome {
    /// `ok`, `refused` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Ok => "ok",
            AuditOutcome::Refused => "refused",
            AuditOutcome::Failed => "failed",
        }
    }

    /// The outcome named `name` (as [`as_str`](Self::as_str) writes it).
    pub fn parse(name: &str) -> Option<AuditOutcome> {
        match name {
            "ok" => Some(AuditOutcome::Ok),
            "refused" => Some(AuditOutcome::Refused),
            "failed" => Some(AuditOutcome::Failed),
            _ => None,
        }
    }
}

impl std::fmt::Display for AuditOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An act to append to the trail (the store numbers and dates it).
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEntry {
    /// The instance that did it (`sender.instance`).
    pub instance: String,
    /// Who: a backend client's name, `admin` clients by their name too, `local` for the
    /// serving process itself (start-up, SIGHUP).
    pub actor: String,
    /// What, as a dotted name (`config.load`, `config.reload`, `messages.purge`, …).
    pub action: String,
    /// What it was done to (a message id, a file, a client name); may be empty.
    pub subject: String,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// The particulars, JSON (an object by convention; `null` when there are none).
    pub details: serde_json::Value,
}

impl NewAuditEntry {
    /// Checks the entry before anything is written.
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        validate_id("audit instance", &self.instance, MAX_NAME_LEN)?;
        validate_id("audit actor", &self.actor, MAX_NAME_LEN)?;
        validate_id("audit action", &self.action, MAX_NAME_LEN)?;
        if self.subject.len() > MAX_SUBJECT_LEN || self.subject.contains('\0') {
            return Err(StoreError::InvalidInput(format!(
                "audit subject must be at most {MAX_SUBJECT_LEN} bytes without NUL characters"
            )));
        }
        let size = serde_json::to_vec(&self.details)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > MAX_AUDIT_DETAILS_BYTES {
            return Err(StoreError::InvalidInput(format!(
                "audit details must be at most {MAX_AUDIT_DETAILS_BYTES} bytes of JSON (got {size})"
            )));
        }
        Ok(())
    }

    /// The stored entry this becomes, numbered `seq`, at `at`.
    pub(crate) fn into_entry(self, seq: u64, at: OffsetDateTime) -> AuditEntry {
        AuditEntry {
            seq,
            at,
            instance: self.instance,
            actor: self.actor,
            action: self.action,
            subject: self.subject,
            outcome: self.outcome,
            details: self.details,
        }
    }
}

/// One entry of the trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Its number: unique, increasing in the order entries were appended (gaps possible).
    pub seq: u64,
    /// When, by the appending instance's clock.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The instance that appended it.
    pub instance: String,
    /// Who did it.
    pub actor: String,
    /// What was done.
    pub action: String,
    /// To what.
    pub subject: String,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// The particulars.
    pub details: serde_json::Value,
}

/// Which entries [`Store::list_audit`](crate::Store::list_audit) returns: oldest first.
/// `Default` is the first 100 entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only entries at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Only entries numbered above this (the previous page's [`AuditPage::next`]).
    pub after: Option<u64>,
    /// Page size (clamped to 1..=[`MAX_AUDIT_PAGE`]).
    pub limit: usize,
}

impl Default for AuditFilter {
    fn default() -> Self {
        AuditFilter {
            since: None,
            after: None,
            limit: 100,
        }
    }
}

impl AuditFilter {
    /// The page size actually used.
    pub(crate) fn page_size(&self) -> usize {
        self.limit.clamp(1, MAX_AUDIT_PAGE)
    }
}

/// One page of the trail.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditPage {
    /// The entries, oldest (lowest number) first.
    pub entries: Vec<AuditEntry>,
    /// Pass as [`AuditFilter::after`] for the next page; `None` when this was the last.
    pub next: Option<u64>,
}
